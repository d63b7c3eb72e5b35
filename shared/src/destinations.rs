//! Where artifacts are stored: one [`Destination`] per contract name
//! (`local`, `s3`, `gcs`, `azure`, `r2`, `minio`, `backblaze`), each an
//! OpenDAL operator built from `[destinations.<name>]` in the configuration.
//!
//! `r2`, `minio` and `backblaze` are S3-compatible endpoints (OpenDAL's own
//! B2 service has no endpoint setting, so nothing could test it). `local` is
//! always there (default `<data dir>/backups`); the others exist only when
//! configured. Writes go through OpenDAL's writer in chunks, which is a
//! multipart upload on S3, so memory stays flat whatever the size; on the
//! local filesystem a write lands in a temporary file that is renamed into
//! place only when it completes. Local artifacts are written by
//! [`LocalWriter`], not OpenDAL's `fs` service, which creates files and
//! folders with the process's default modes: a backup holds a full dump and
//! the project's `.env`, so ours are `0600` in `0700` folders from the start
//! (see [`crate::private_fs`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use opendal::{ErrorKind, Operator};
use serde::{Deserialize, Serialize};

use crate::domain::{DestinationName, Vocabulary};
use crate::private_fs;
use crate::secret::Secret;

pub mod gcs_credentials;
pub mod health;
pub mod multipart;
pub mod object_lock;
pub mod permanent_io;

use multipart::{PendingUpload, S3Target};
use object_lock::{Immutability, LockMode};

/// Default upload chunk: 8 MiB parts, 4 in flight (S3 allows 10,000 parts,
/// so 80 GB before the chunk must grow; see `chunk_bytes`).
pub const DEFAULT_CHUNK_BYTES: usize = 8 * 1024 * 1024;
pub const DEFAULT_CONCURRENCY: usize = 4;

/// `[destinations.<name>]`: every field is optional; which ones a
/// destination needs depends on its kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationConfig {
    /// `local`: the directory (default `<data dir>/backups`); `prefix`
    /// is a folder inside it.
    pub root: Option<String>,
    /// Object stores: a key prefix inside the bucket or container.
    pub prefix: Option<String>,
    pub bucket: Option<String>,
    /// `azure`: the blob container.
    pub container: Option<String>,
    /// Required for `r2`, `minio`, `backblaze`; optional elsewhere.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub secret_access_key_file: Option<PathBuf>,
    /// `azure`: storage account and key.
    pub account_name: Option<String>,
    pub account_key: Option<Secret>,
    pub account_key_file: Option<PathBuf>,
    /// `gcs`: path of a service-account JSON file.
    pub credential_file: Option<PathBuf>,
    /// `gcs`: a bearer token instead of a service account.
    pub token: Option<Secret>,
    /// Upload part size in bytes.
    pub chunk_bytes: Option<usize>,
    /// Parts uploaded at once.
    pub concurrency: Option<usize>,
    /// S3-kind destinations: every artifact written here is locked (S3
    /// Object Lock) for this many days; the bucket must have Object Lock
    /// enabled. Refused on `local`, `azure` and `gcs`.
    pub immutable_days: Option<u32>,
    /// `governance` (default) or `compliance` (nobody, not even the
    /// account's root, can delete or shorten it).
    pub immutable_mode: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("destination {name}: {reason}")]
    Config { name: String, reason: String },
    #[error("destination {name} is not configured (configured: {configured})")]
    NotConfigured { name: String, configured: String },
    #[error("{0}")]
    Storage(#[from] opendal::Error),
    #[error("{0}")]
    Multipart(#[from] multipart::MultipartError),
}

impl DestinationError {
    /// Worth trying again (a timeout, a throttled request), as opposed to a
    /// permanent refusal (no such bucket, no permission).
    pub fn is_temporary(&self) -> bool {
        match self {
            DestinationError::Storage(e) => e.is_temporary(),
            DestinationError::Multipart(e) => e.temporary,
            _ => false,
        }
    }
}

/// What a destination says of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub size: u64,
    pub etag: Option<String>,
    pub content_md5: Option<String>,
}

/// One configured place to keep artifacts.
#[derive(Clone, Debug)]
pub struct Destination {
    name: String,
    operator: Operator,
    /// How `path` is shown to users: `s3://bucket/prefix`, `file:///dir`, …
    url_base: String,
    chunk_bytes: usize,
    concurrency: usize,
    /// S3-kind destinations: the bucket as S3 sees it, for what OpenDAL
    /// cannot do (abandoned multipart uploads).
    s3: Option<S3Target>,
    /// Writes must never replace an object (`gcs`): see [`Self::writer`].
    create_only: bool,
    /// The same store without retries and with short timeouts, for
    /// [`Self::probe`].
    probe_operator: Operator,
    location: Location,
    /// `immutable_days`: set only on S3-kind destinations.
    immutability: Option<Immutability>,
    /// `gcs` with a key file: why its last token exchange failed.
    token_error: Option<TokenError>,
}

/// Where a key file's provider keeps its last failure.
type TokenError = Arc<std::sync::Mutex<Option<String>>>;

/// Where a destination keeps artifacts, as operators name it (never a
/// credential or an endpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// `s3`, `r2`, `minio`, `backblaze`, `gcs`.
    pub bucket: Option<String>,
    /// `azure`.
    pub container: Option<String>,
    /// `local`: the folder.
    pub path: Option<String>,
    pub prefix: Option<String>,
}

fn install_transport() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(opendal::install_default);
}

fn read_secret(
    name: &str,
    inline: &Option<Secret>,
    file: &Option<PathBuf>,
    what: &str,
) -> Result<Option<String>, DestinationError> {
    if let Some(path) = file {
        let value = std::fs::read_to_string(path).map_err(|e| DestinationError::Config {
            name: name.into(),
            reason: format!("{what}_file {}: {e}", path.display()),
        })?;
        return Ok(Some(value.trim().to_string()));
    }
    Ok(inline.as_ref().map(|s| s.expose().to_string()))
}

fn trim_slashes(s: &str) -> &str {
    s.trim_matches('/')
}

/// A destination's configuration error.
fn config_error(name: &str, reason: &str) -> DestinationError {
    DestinationError::Config {
        name: name.into(),
        reason: reason.into(),
    }
}

/// The local destination: a folder (the data dir's `backups/` by default)
/// whose `.incomplete` holds what is being written.
fn local_operator(
    name: &str,
    config: &DestinationConfig,
    data_dir: &Path,
    prefix: &str,
) -> Result<(Operator, String), DestinationError> {
    let bad = |reason: &str| config_error(name, reason);
    let dir = match &config.root {
        Some(root) => PathBuf::from(root),
        None => data_dir.join("backups"),
    }
    .join(prefix);
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir()
            .map_err(|e| bad(&format!("cannot resolve {}: {e}", dir.display())))?
            .join(dir)
    };
    let tmp = dir.join(INCOMPLETE);
    // Before OpenDAL's builder, which would create them `0755`.
    private_fs::create_dir_all(&tmp)
        .map_err(|e| bad(&format!("cannot create {}: {e}", tmp.display())))?;
    let builder = opendal::services::Fs::default()
        .root(&dir.to_string_lossy())
        .atomic_write_dir(&tmp.to_string_lossy());
    Ok((Operator::new(builder)?, format!("file://{}", dir.display())))
}

/// S3 and the services that speak it (R2, MinIO, Backblaze B2).
fn s3_operator(
    name: &str,
    config: &DestinationConfig,
    prefix: &str,
    root: &str,
) -> Result<(Operator, String, S3Target), DestinationError> {
    let bad = |reason: &str| config_error(name, reason);
    let bucket = config
        .bucket
        .as_deref()
        .ok_or_else(|| bad("bucket is required"))?;
    let region = config.region.as_deref().unwrap_or(match name {
        "r2" => "auto",
        _ => "us-east-1",
    });
    let mut builder = opendal::services::S3::default()
        .bucket(bucket)
        .root(root)
        .region(region);
    match (&config.endpoint, name) {
        (Some(endpoint), _) => builder = builder.endpoint(endpoint),
        (None, "s3") => {}
        (None, _) => return Err(bad("endpoint is required")),
    }
    if let Some(id) = &config.access_key_id {
        builder = builder.access_key_id(id);
    }
    let secret = read_secret(
        name,
        &config.secret_access_key,
        &config.secret_access_key_file,
        "secret_access_key",
    )?
    .map(Secret::new);
    if let Some(secret) = &secret {
        builder = builder.secret_access_key(secret.expose());
    }
    let target = S3Target::new(
        config.endpoint.as_deref(),
        bucket,
        region,
        prefix,
        config.access_key_id.as_deref().zip(secret.as_ref()),
    );
    // Only what the configuration says: never the ambient
    // ~/.aws profile or the EC2 metadata of the host.
    builder = builder.disable_config_load().disable_ec2_metadata();
    if config.immutable_days.is_some() {
        // S3 refuses an upload without a checksum into a bucket whose
        // default retention rule locks it on arrival.
        builder = builder.checksum_algorithm("crc32c");
    }
    Ok((
        Operator::new(builder)?,
        format!("s3://{bucket}{}", slash_prefix(prefix)),
        target,
    ))
}

/// Google Cloud Storage.
fn gcs_operator(
    name: &str,
    config: &DestinationConfig,
    prefix: &str,
    root: &str,
) -> Result<(Operator, String, Option<TokenError>), DestinationError> {
    let bad = |reason: &str| config_error(name, reason);
    let bucket = config
        .bucket
        .as_deref()
        .ok_or_else(|| bad("bucket is required"))?;
    let mut builder = opendal::services::Gcs::default()
        .bucket(bucket)
        .root(root)
        .disable_vm_metadata()
        .disable_config_load();
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint(endpoint);
    }
    let (mut token_uri, mut token_error) = (None, None);
    if let Some(path) = &config.credential_file {
        token_uri = gcs_credentials::token_uri_of(path).map_err(|e| bad(&e))?;
        let provider = gcs_credentials::token_provider(path);
        token_error = Some(provider.last_error());
        builder = builder.credential_provider(provider);
    }
    if let Some(token) = &config.token {
        builder = builder.token(token.expose().to_string());
    }
    let mut operator = Operator::new(builder)?;
    if let Some(token_uri) = token_uri {
        let transport = gcs_credentials::TokenUriTransport {
            token_uri,
            inner: opendal::HttpTransporter::default(),
        };
        operator = operator.with_context(
            opendal::OperationContext::new()
                .with_http_transport(opendal::HttpTransporter::new(transport)),
        );
    }
    Ok((
        operator,
        format!("gs://{bucket}{}", slash_prefix(prefix)),
        token_error,
    ))
}

/// Azure Blob Storage.
fn azure_operator(
    name: &str,
    config: &DestinationConfig,
    prefix: &str,
    root: &str,
) -> Result<(Operator, String), DestinationError> {
    let bad = |reason: &str| config_error(name, reason);
    let container = config
        .container
        .as_deref()
        .ok_or_else(|| bad("container is required"))?;
    let account = config
        .account_name
        .as_deref()
        .ok_or_else(|| bad("account_name is required"))?;
    let mut builder = opendal::services::Azblob::default()
        .container(container)
        .root(root)
        .account_name(account)
        .endpoint(
            config
                .endpoint
                .as_deref()
                .map(str::to_string)
                .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"))
                .as_str(),
        );
    if let Some(key) = read_secret(
        name,
        &config.account_key,
        &config.account_key_file,
        "account_key",
    )? {
        builder = builder.account_key(&key);
    }
    Ok((
        Operator::new(builder)?,
        format!("azure://{account}/{container}{}", slash_prefix(prefix)),
    ))
}

impl Destination {
    /// Builds the destination `name` from its configuration.
    pub fn new(
        name: &str,
        config: &DestinationConfig,
        data_dir: &Path,
    ) -> Result<Self, DestinationError> {
        install_transport();
        let bad = |reason: &str| config_error(name, reason);
        let prefix = config.prefix.as_deref().map(trim_slashes).unwrap_or("");
        let root = if prefix.is_empty() {
            "/".to_string()
        } else {
            format!("/{prefix}/")
        };
        let (mut s3, mut token_error) = (None, None);
        let (operator, url_base) = match name {
            "local" => local_operator(name, config, data_dir, prefix)?,
            "s3" | "r2" | "minio" | "backblaze" => {
                let (operator, url_base, target) = s3_operator(name, config, prefix, &root)?;
                s3 = Some(target);
                (operator, url_base)
            }
            "gcs" => {
                let (operator, url_base, error) = gcs_operator(name, config, prefix, &root)?;
                token_error = error;
                (operator, url_base)
            }
            "azure" => azure_operator(name, config, prefix, &root)?,
            other => {
                return Err(bad(&format!(
                    "{other:?} is not a destination; use one of {}",
                    DestinationName::names().join(", ")
                )));
            }
        };
        let immutability = immutability_of(name, config)?;
        let probe_operator = operator.clone().layer(
            opendal::layers::TimeoutLayer::new()
                .with_timeout(health::PROBE_TIMEOUT)
                .with_io_timeout(health::PROBE_TIMEOUT),
        );
        let location = Location {
            bucket: config
                .bucket
                .clone()
                .filter(|_| name != "local" && name != "azure"),
            container: config.container.clone().filter(|_| name == "azure"),
            path: url_base.strip_prefix("file://").map(str::to_string),
            prefix: Some(prefix.to_string()).filter(|p| !p.is_empty()),
        };
        // Under the retry layer, so that it never retries a full disk.
        let operator = operator
            .layer(permanent_io::PermanentIoLayer)
            .layer(
                opendal::layers::RetryLayer::new()
                    .with_max_times(4)
                    .with_jitter()
                    .with_notify(permanent_io::RetryLog),
            )
            .layer(
                opendal::layers::TimeoutLayer::new()
                    .with_timeout(std::time::Duration::from_secs(120))
                    .with_io_timeout(std::time::Duration::from_secs(60)),
            );
        Ok(Self {
            name: name.to_string(),
            operator,
            url_base,
            chunk_bytes: config
                .chunk_bytes
                .unwrap_or(DEFAULT_CHUNK_BYTES)
                .max(5 * 1024 * 1024),
            concurrency: config.concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
            s3,
            create_only: name == "gcs",
            probe_operator,
            location,
            immutability,
            token_error,
        })
    }

    /// Why the last token exchange of a `gcs` key file failed, if it did.
    pub fn token_problem(&self) -> Option<String> {
        self.token_error
            .as_ref()
            .and_then(|e| e.lock().expect("token error lock").clone())
    }

    /// Whether `other` keeps its objects where this one does (the same
    /// folder, bucket and prefix; for S3 kinds the same endpoint too).
    pub fn same_place(&self, other: &Destination) -> bool {
        let s3_base = |d: &Destination| d.s3.as_ref().map(|t| t.bucket_url().to_string());
        self.url_base == other.url_base && s3_base(self) == s3_base(other)
    }

    /// `immutable_days` and its mode, when artifacts here are locked.
    pub fn immutability(&self) -> Option<Immutability> {
        self.immutability
    }

    /// Locks the stored object `key` for `immutable_days` (S3 Object
    /// Lock); returns until when, or `None` on a destination that does not
    /// lock. Called once the object is confirmed: what is locked cannot be
    /// taken back.
    pub async fn lock(
        &self,
        key: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, DestinationError> {
        let (Some(immutability), Some(s3)) = (self.immutability, &self.s3) else {
            return Ok(None);
        };
        let until = immutability.until_from(chrono::Utc::now());
        // A stored, confirmed artifact is worth two more tries of one
        // small request before the job gives it up.
        let mut wait = std::time::Duration::from_secs(1);
        loop {
            match s3.put_retention(key, immutability.mode, until).await {
                Ok(()) => return Ok(Some(until)),
                Err(e) if e.temporary && wait <= std::time::Duration::from_secs(2) => {
                    tracing::warn!(destination = %self.name, error = %e, "setting the lock failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The directory of a local destination (for its free-space check).
    pub fn local_root(&self) -> Option<PathBuf> {
        self.url_base.strip_prefix("file://").map(PathBuf::from)
    }

    /// The object's address as users see it (the backup's `path`).
    pub fn url_for(&self, key: &str) -> String {
        format!(
            "{}/{}",
            self.url_base.trim_end_matches('/'),
            trim_slashes(key)
        )
    }

    /// A streaming writer: chunks of `chunk_bytes`, `concurrency` in flight
    /// (an object store's multipart upload); a local folder is written
    /// straight through, since buffering chunks there only costs memory
    /// (8 MiB × 4 of a backup's peak RSS, measured with `bench-backup`).
    /// Nothing is visible under `key` until `close()` succeeds; `abort()`
    /// (or an error) leaves nothing behind.
    ///
    /// `gcs` writes only where no object is (`ifGenerationMatch=0`): an
    /// artifact's key is new, and OpenDAL 0.59 sends a conditional write
    /// through GCS's JSON resumable upload, 8 MiB at a time, where an
    /// unconditional one of more than a chunk goes through the XML
    /// multipart API, which GCS-compatible servers (fake-gcs-server) lack.
    pub async fn writer(&self, key: &str) -> Result<ObjectWriter, DestinationError> {
        if let Some(root) = self.local_root() {
            return Ok(ObjectWriter::Local(LocalWriter::create(&root, key).await?));
        }
        let writer = self
            .operator
            .writer_with(key)
            .chunk(self.chunk_bytes)
            .concurrent(self.concurrency);
        let writer = if self.create_only {
            writer.if_not_exists(true).await?
        } else {
            writer.await?
        };
        Ok(ObjectWriter::Store(writer))
    }

    /// What the destination itself reports of `key`; `None` when absent.
    pub async fn stat(&self, key: &str) -> Result<Option<StoredObject>, DestinationError> {
        match self.operator.stat(key).await {
            Ok(meta) => Ok(Some(StoredObject {
                size: meta.content_length(),
                etag: meta.etag().map(str::to_string),
                content_md5: meta.content_md5().map(str::to_string),
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A reader for streaming `key` (whole or in ranges).
    pub async fn reader(&self, key: &str) -> Result<opendal::Reader, DestinationError> {
        Ok(self
            .operator
            .reader_with(key)
            .chunk(self.chunk_bytes)
            .await?)
    }

    /// Removes `key`; an object that is already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), DestinationError> {
        match self.operator.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    /// The bucket of an S3-kind destination (`s3`, `r2`, `minio`,
    /// `backblaze`) as S3 itself sees it; `None` for the others.
    pub fn s3_target(&self) -> Option<&S3Target> {
        self.s3.as_ref()
    }

    /// Aborts the multipart uploads under this destination's prefix that
    /// were started, and last received a part, more than `older_than` ago:
    /// uploads of workers that died. Returns those aborted, and what went
    /// wrong with the others. Only S3-kind destinations keep such uploads
    /// forever: Azure drops uncommitted blocks after 7 days and GCS expires
    /// a resumable upload after a week, so for them this does nothing.
    pub async fn abort_stale_uploads(
        &self,
        older_than: std::time::Duration,
    ) -> Result<(Vec<PendingUpload>, Vec<multipart::MultipartError>), DestinationError> {
        match &self.s3 {
            Some(target) => Ok(target.abort_stale(older_than).await?),
            None => Ok((Vec::new(), Vec::new())),
        }
    }
}

/// Where a local destination keeps the objects it is writing (the
/// reconciler removes those untouched for an hour).
pub const INCOMPLETE: &str = ".incomplete";

/// A writer of one object: OpenDAL's for object stores, [`LocalWriter`] for
/// a local folder.
pub enum ObjectWriter {
    Store(opendal::Writer),
    Local(LocalWriter),
}

impl ObjectWriter {
    pub async fn write(&mut self, bytes: impl Into<opendal::Buffer>) -> opendal::Result<()> {
        match self {
            Self::Store(writer) => writer.write(bytes).await,
            Self::Local(writer) => writer.write(bytes.into()).await,
        }
    }

    /// Completes the object: only now is it visible under its key.
    pub async fn close(&mut self) -> opendal::Result<()> {
        match self {
            Self::Store(writer) => writer.close().await.map(drop),
            Self::Local(writer) => writer.close().await,
        }
    }

    /// Gives the object up; nothing stays behind.
    pub async fn abort(&mut self) -> opendal::Result<()> {
        match self {
            Self::Store(writer) => writer.abort().await,
            Self::Local(writer) => writer.abort().await,
        }
    }
}

/// An object being written to a local destination: a `0600` file in
/// `<root>/.incomplete/` (created `0700`), renamed to `<root>/<key>` once
/// complete and flushed; the folders of the key are created `0700`. Dropped
/// before `close()`, it removes its file.
pub struct LocalWriter {
    temp: PathBuf,
    target: PathBuf,
    /// `None` once closed or aborted.
    file: Option<Arc<std::fs::File>>,
}

impl LocalWriter {
    async fn create(root: &Path, key: &str) -> opendal::Result<LocalWriter> {
        let relative = Path::new(key.trim_start_matches('/'));
        let name = match relative.file_name() {
            Some(name)
                if relative
                    .components()
                    .all(|c| matches!(c, Component::Normal(_))) =>
            {
                name.to_string_lossy().into_owned()
            }
            _ => {
                return Err(opendal::Error::new(
                    opendal::ErrorKind::Unexpected,
                    format!("{key:?} is not an object key inside the destination"),
                ));
            }
        };
        let incomplete = root.join(INCOMPLETE);
        let temp = incomplete.join(format!("{name}.{}", uuid::Uuid::new_v4().simple()));
        let target = root.join(relative);
        let opened = temp.clone();
        let file = blocking(move || {
            private_fs::create_dir_all(&incomplete)?;
            private_fs::create_new_file(&opened)
        })
        .await?;
        Ok(LocalWriter {
            temp,
            target,
            file: Some(Arc::new(file)),
        })
    }

    fn file(&self) -> opendal::Result<Arc<std::fs::File>> {
        self.file.clone().ok_or_else(|| {
            opendal::Error::new(
                opendal::ErrorKind::Unexpected,
                "the writer is already closed",
            )
        })
    }

    async fn write(&mut self, bytes: opendal::Buffer) -> opendal::Result<()> {
        let file = self.file()?;
        // The buffer's chunks are moved, not copied, to the blocking thread.
        let chunks: Vec<bytes::Bytes> = bytes.collect();
        blocking(move || {
            for chunk in chunks {
                (&*file).write_all(&chunk)?;
            }
            Ok(())
        })
        .await
    }

    async fn close(&mut self) -> opendal::Result<()> {
        let file = self.file()?;
        let (temp, target) = (self.temp.clone(), self.target.clone());
        blocking(move || {
            file.sync_all()?;
            if let Some(parent) = target.parent() {
                private_fs::create_dir_all(parent)?;
            }
            std::fs::rename(&temp, &target)?;
            if let Some(parent) = target.parent() {
                // The rename's durability; the object is in place either way.
                let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
            }
            Ok(())
        })
        .await?;
        self.file = None;
        Ok(())
    }

    async fn abort(&mut self) -> opendal::Result<()> {
        self.file = None;
        let temp = self.temp.clone();
        blocking(move || match std::fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Runs file I/O off the async threads, with OpenDAL's reading of
/// `std::io` errors (which ones are worth a retry).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> opendal::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| {
            opendal::Error::new(opendal::ErrorKind::Unexpected, "a file task failed").set_source(e)
        })?
        // OpenDAL calls every I/O error it does not name temporary; a full
        // disk is not (see `permanent_io`).
        .map_err(|e| permanent_io::classify(opendal::raw::new_std_io_error(e)))
}

/// `immutable_days`/`immutable_mode`, checked: only where a lock can be
/// set and kept.
pub fn immutability_of(
    name: &str,
    config: &DestinationConfig,
) -> Result<Option<Immutability>, DestinationError> {
    let Some(days) = config.immutable_days else {
        if config.immutable_mode.is_some() {
            return Err(config_error(name, "immutable_mode needs immutable_days"));
        }
        return Ok(None);
    };
    if !matches!(name, "s3" | "minio" | "backblaze") {
        return Err(config_error(
            name,
            &format!(
                "immutable_days: {name} cannot lock artifacts here (S3 Object Lock is used, on \
                 s3, minio and backblaze; R2 has bucket lock rules instead, set in Cloudflare); \
                 remove it, or keep immutable backups on one of those"
            ),
        ));
    }
    if days == 0 || days > 36_500 {
        return Err(config_error(
            name,
            "immutable_days must be between 1 and 36500",
        ));
    }
    let mode = match config.immutable_mode.as_deref() {
        None => LockMode::default(),
        Some(word) => LockMode::parse(word).ok_or_else(|| {
            config_error(
                name,
                &format!("immutable_mode must be governance or compliance, not {word:?}"),
            )
        })?,
    };
    Ok(Some(Immutability { days, mode }))
}

fn slash_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("/{prefix}")
    }
}

/// Every configured destination, plus `local`.
#[derive(Clone, Debug)]
pub struct Destinations {
    by_name: BTreeMap<String, Destination>,
}

impl Destinations {
    pub fn from_config(
        configs: &BTreeMap<String, DestinationConfig>,
        data_dir: &Path,
    ) -> Result<Self, DestinationError> {
        let mut by_name = BTreeMap::new();
        if !configs.contains_key("local") {
            by_name.insert(
                "local".to_string(),
                Destination::new("local", &DestinationConfig::default(), data_dir)?,
            );
        }
        for (name, config) in configs {
            by_name.insert(name.clone(), Destination::new(name, config, data_dir)?);
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Result<&Destination, DestinationError> {
        self.by_name
            .get(name)
            .ok_or_else(|| DestinationError::NotConfigured {
                name: name.to_string(),
                configured: self.names().join(", "),
            })
    }

    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// Every configured destination, by name.
    pub fn all(&self) -> impl Iterator<Item = &Destination> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// In octal, as `ls` shows it.
    fn mode(path: &Path) -> String {
        format!("{:o}", std::fs::metadata(path).unwrap().mode() & 0o7777)
    }

    fn partial_files(root: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(root.join(INCOMPLETE))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    #[tokio::test]
    async fn a_local_object_is_private_while_written_and_after() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("backups");
        let config = DestinationConfig {
            root: Some(root.to_string_lossy().into_owned()),
            ..Default::default()
        };
        let destination = Destination::new("local", &config, dir.path()).unwrap();
        assert_eq!(mode(&root), "700");
        assert_eq!(mode(&root.join(INCOMPLETE)), "700");

        let mut writer = destination.writer("project/a.tar.gz").await.unwrap();
        writer.write(b"first".to_vec()).await.unwrap();
        let partial = partial_files(&root);
        assert_eq!(partial.len(), 1, "{partial:?}");
        assert_eq!(mode(&partial[0]), "600");
        assert!(!root.join("project").exists(), "visible before close");
        writer.write(b" second".to_vec()).await.unwrap();
        writer.close().await.unwrap();
        let object = root.join("project/a.tar.gz");
        assert_eq!(std::fs::read(&object).unwrap(), b"first second");
        assert_eq!(mode(&object), "600");
        assert_eq!(mode(&root.join("project")), "700");
        assert!(partial_files(&root).is_empty());

        // A writer dropped half-way (a cancelled job) leaves nothing.
        let mut writer = destination.writer("project/b.tar.gz").await.unwrap();
        writer.write(b"half".to_vec()).await.unwrap();
        drop(writer);
        assert!(partial_files(&root).is_empty());
        assert!(!root.join("project/b.tar.gz").exists());
        assert!(destination.writer("../outside").await.is_err());
    }

    /// Two names for one bucket and prefix are one place: a copy from one
    /// to the other would delete the artifact it copies.
    #[test]
    fn two_names_for_one_bucket_are_the_same_place() {
        let dir = tempfile::tempdir().unwrap();
        let s3 = |prefix: &str, endpoint: &str| DestinationConfig {
            bucket: Some("backups".into()),
            prefix: Some(prefix.into()),
            endpoint: Some(endpoint.into()),
            ..Default::default()
        };
        let here = "http://127.0.0.1:9000";
        let a = Destination::new("s3", &s3("supabase", here), dir.path()).unwrap();
        let b = Destination::new("minio", &s3("/supabase/", here), dir.path()).unwrap();
        let elsewhere =
            Destination::new("minio", &s3("supabase", "http://10.0.0.2:9000"), dir.path()).unwrap();
        let other_prefix = Destination::new("minio", &s3("other", here), dir.path()).unwrap();
        let local = Destination::new("local", &DestinationConfig::default(), dir.path()).unwrap();
        assert!(a.same_place(&b));
        assert!(!a.same_place(&elsewhere));
        assert!(!a.same_place(&other_prefix));
        assert!(!a.same_place(&local));
    }

    /// A 256 KiB tmpfs, unmounted when dropped.
    struct TinyFs(tempfile::TempDir);

    impl TinyFs {
        fn mount() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mounted = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
                .arg(dir.path())
                .status()
                .expect("run mount");
            assert!(
                mounted.success(),
                "this test mounts a tiny tmpfs to fill it, which needs root"
            );
            Self(dir)
        }
    }

    impl Drop for TinyFs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0.path()).status();
        }
    }

    /// A local destination on a full disk fails at once with a permanent
    /// error: OpenDAL called ENOSPC temporary, and its retry layer spent
    /// 15 s and more on it before the job retried it again.
    #[tokio::test]
    async fn a_full_disk_is_not_retried() {
        let disk = TinyFs::mount();
        let config = DestinationConfig {
            root: Some(disk.0.path().join("backups").to_string_lossy().into()),
            ..Default::default()
        };
        let destination = Destination::new("local", &config, disk.0.path()).unwrap();
        let started = Instant::now();
        let written = async {
            let mut writer = destination.writer("too-big").await?;
            writer.write(vec![7u8; 1024 * 1024]).await?;
            writer.close().await?;
            Ok::<_, DestinationError>(())
        }
        .await;
        let elapsed = started.elapsed();
        let error = written.expect_err("1 MiB does not fit in 256 KiB");
        assert!(!error.is_temporary(), "{error}");
        assert!(
            error.to_string().to_lowercase().contains("no space")
                || error.to_string().contains("StorageFull")
                || error.to_string().contains("storage full"),
            "{error}"
        );
        assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
        // A backup says so in the contract's words.
        assert_eq!(
            crate::jobs::destination_text(&error),
            "Insufficient disk space"
        );
    }
}
