//! Uploads waiting for their import job.
//!
//! The API streams the multipart part straight into an OpenDAL location
//! (never whole into memory) under `.supascale-uploads/<job id>`; the worker
//! that runs the job reads it from there, so any worker can. In the embedded
//! default that location is `<data dir>/uploads` and the worker reads the
//! file in place; elsewhere (`SUPASCALE_UPLOAD_DESTINATION=s3`, …) it copies
//! it to its own spool first, since `pg_restore` and zip need to seek.
//!
//! An upload is removed when its job ends, whatever the outcome (the worker
//! does it; the reconciler sweeps what a dead process left).

use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;

use crate::config::Config;
use crate::destinations::{
    Destination, DestinationConfig, DestinationError, Destinations, ObjectWriter,
};
use crate::disk::{DiskGuard, TEMPORARY_AREA};
use crate::private_fs;

const PREFIX: &str = ".supascale-uploads/";
/// Part size of an upload to an object store (S3's minimum is 5 MiB).
const UPLOAD_PART: usize = 8 * 1024 * 1024;

/// Where uploads are kept.
#[derive(Clone, Debug)]
pub struct UploadStore {
    destination: Destination,
}

/// An upload as a local file the job may read and seek.
pub struct LocalUpload {
    pub path: PathBuf,
    /// A copy made for this job (removed with it), not the upload itself.
    copied: bool,
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if self.copied {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl UploadStore {
    /// The configured location; an unknown destination name is an error
    /// that names the setting.
    pub fn new(config: &Config, destinations: &Destinations) -> Result<Self, String> {
        let destination = match config.upload_destination.as_deref() {
            Some(name) => destinations
                .get(name)
                .map_err(|e| format!("SUPASCALE_UPLOAD_DESTINATION: {e}"))?
                .clone(),
            None => {
                let root = config.data_dir.join("uploads");
                private_fs::create_dir_all(&root)
                    .map_err(|e| format!("uploads folder {}: {e}", root.display()))?;
                let local = DestinationConfig {
                    root: Some(root.to_string_lossy().into_owned()),
                    ..Default::default()
                };
                Destination::new("local", &local, &config.data_dir).map_err(|e| e.to_string())?
            }
        };
        Ok(Self { destination })
    }

    /// The folder uploads are written to, when it is on this machine.
    pub fn local_root(&self) -> Option<PathBuf> {
        self.destination.local_root()
    }

    pub fn key(job_id: &str) -> String {
        format!("{PREFIX}{job_id}")
    }

    /// A streaming writer for `job_id`'s upload: nothing is visible until
    /// `close()`, and `abort()` leaves nothing. A local folder is written
    /// straight through; an object store gets 8 MiB parts, two in flight:
    /// the API holds what is in flight for every upload at once, so less
    /// than a backup's writer (measured with `bench-upload`).
    pub async fn writer(&self, job_id: &str) -> Result<ObjectWriter, DestinationError> {
        let key = Self::key(job_id);
        if self.destination.local_root().is_some() {
            return self.destination.writer(&key).await;
        }
        Ok(ObjectWriter::Store(
            self.destination
                .operator()
                .writer_with(&key)
                .chunk(UPLOAD_PART)
                .concurrent(2)
                .await?,
        ))
    }

    /// The upload's size, if it is there.
    pub async fn size(&self, job_id: &str) -> Result<Option<u64>, DestinationError> {
        Ok(self
            .destination
            .stat(&Self::key(job_id))
            .await?
            .map(|s| s.size))
    }

    /// The upload as a local file: in place when the store is a local
    /// folder, else copied into `spool`, keeping `reserve` bytes free there.
    pub async fn local(
        &self,
        job_id: &str,
        spool: &Path,
        reserve: u64,
    ) -> Result<LocalUpload, String> {
        let key = Self::key(job_id);
        if let Some(root) = self.destination.local_root() {
            let path = root.join(&key);
            return if path.is_file() {
                Ok(LocalUpload {
                    path,
                    copied: false,
                })
            } else {
                Err("the uploaded file is gone from the upload area".into())
            };
        }
        private_fs::create_dir_all(spool).map_err(|e| e.to_string())?;
        let mut guard = DiskGuard::new(spool, TEMPORARY_AREA, reserve);
        if let Some(size) = self.size(job_id).await.map_err(|e| e.to_string())? {
            guard.expect(size).map_err(|e| e.to_string())?;
        }
        let path = spool.join(format!("{job_id}.upload"));
        let copy = LocalUpload { path, copied: true };
        let reader = self
            .destination
            .reader(&key)
            .await
            .map_err(|e| format!("cannot read the upload: {e}"))?;
        let mut stream = reader
            .into_bytes_stream(..)
            .await
            .map_err(|e| format!("cannot read the upload: {e}"))?;
        let mut file = tokio::fs::File::from_std(
            private_fs::create_file(&copy.path).map_err(|e| e.to_string())?,
        );
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| format!("cannot read the upload: {e}"))?
        {
            let written = match file.write_all(&chunk).await {
                Ok(()) => guard.wrote(chunk.len() as u64),
                Err(e) => Err(e),
            };
            written.map_err(|e| {
                if crate::disk::is_out_of_space(&e) {
                    crate::disk::out_of_space_message(&e, TEMPORARY_AREA, spool)
                } else {
                    format!("cannot copy the upload: {e}")
                }
            })?;
        }
        file.flush().await.map_err(|e| e.to_string())?;
        Ok(copy)
    }

    /// How long ago `job_id`'s upload was written, when the store says.
    pub async fn age(&self, job_id: &str) -> Option<std::time::Duration> {
        let meta = self
            .destination
            .operator()
            .stat(&Self::key(job_id))
            .await
            .ok()?;
        let modified: std::time::SystemTime = meta.last_modified()?.into();
        modified.elapsed().ok()
    }

    /// Removes `job_id`'s upload; one already gone is fine.
    pub async fn remove(&self, job_id: &str) -> Result<(), DestinationError> {
        self.destination.delete(&Self::key(job_id)).await
    }

    /// The job ids that have an upload here.
    pub async fn list(&self) -> Result<Vec<String>, DestinationError> {
        let entries = match self.destination.operator().list(PREFIX).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(entries
            .into_iter()
            .filter_map(|e| {
                let name = e.name().trim_end_matches('/');
                (!name.is_empty() && !e.path().ends_with('/')).then(|| name.to_string())
            })
            .collect())
    }
}
