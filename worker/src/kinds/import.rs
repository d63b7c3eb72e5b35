//! What the three import jobs share: the payload, the upload as a local
//! file, the target project and its database, and how the job's result is
//! recorded (imports have no row of their own; `jobs.result` holds it).
//!
//! The upload belongs to the job until the job ends, whatever the outcome:
//! the worker removes it then ([`remove_upload`]), not the job module, so a
//! retry still finds it.

use std::path::PathBuf;

use sea_orm::EntityTrait;

use crate::JobContext;
use supascale_shared::domain::Component;
use supascale_shared::entities::{job, project};
use supascale_shared::import::archive::Detected;
use supascale_shared::jobs::JobError;
pub use supascale_shared::jobs::params::ImportPayload;
use supascale_shared::pgtools::child;
use supascale_shared::project_folders::{Create, FolderRules, PinnedDir};
use supascale_shared::restore::database::{self, TargetFacts};
use supascale_shared::uploads::{LocalUpload, UploadStore};

/// What `POST /import/database` takes (gzip of either too).
pub const DATABASE_FORMATS: &[Detected] = &[
    Detected::CustomDump,
    Detected::GzipCustomDump,
    Detected::PlainSql,
    Detected::GzipPlainSql,
];

/// What storage and functions imports take.
pub const ARCHIVE_FORMATS: &[Detected] = &[Detected::Zip, Detected::TarGz, Detected::Tar];

/// The import's job row, the project and the upload, ready to work on.
pub struct ImportStart {
    pub payload: ImportPayload,
    pub project: project::Model,
    pub upload: LocalUpload,
    /// What the upload is, read from its content and one of the formats
    /// the import takes.
    pub detected: Detected,
    pub spool: PathBuf,
}

/// Reads the payload, the project and the upload, and checks that the
/// upload is one of `formats` and what its name claims (400 otherwise).
pub async fn start(
    ctx: &JobContext,
    job: &job::Model,
    formats: &[Detected],
) -> Result<ImportStart, JobError> {
    let payload: ImportPayload = supascale_shared::jobs::params::read(job)?;
    let project_id = job
        .project_id
        .clone()
        .ok_or_else(|| JobError::Record("the import names no project".into()))?;
    let project = project::Entity::find_by_id(project_id)
        .one(&ctx.db)
        .await
        .map_err(JobError::from)?
        .ok_or_else(|| JobError::Record("Project not found".into()))?;
    let spool = ctx.config.data_dir.join("tmp");
    let store =
        UploadStore::new(&ctx.config, &ctx.destinations).map_err(JobError::Configuration)?;
    let upload = store
        .local(&job.id, &spool, ctx.config.disk_reserve_bytes)
        .await
        .map_err(JobError::Internal)?;
    let path = upload.path.clone();
    let detected =
        tokio::task::spawn_blocking(move || supascale_shared::import::archive::detect(&path))
            .await
            .map_err(|e| JobError::Internal(e.to_string()))?
            .map_err(|e| JobError::Record(format!("cannot read the upload: {e}")))?;
    supascale_shared::import::archive::check_claim(&payload.file_name, &detected, formats)
        .map_err(JobError::InvalidInput)?;
    Ok(ImportStart {
        payload,
        project,
        upload,
        detected,
        spool,
    })
}

/// The project's database: it must answer and its role must be allowed to
/// load a dump (as for a restore). A retry first ends what a dead attempt
/// left running.
pub async fn target_database(
    ctx: &JobContext,
    job: &job::Model,
    project: &project::Model,
    force: bool,
) -> Result<(String, TargetFacts), JobError> {
    let url = ctx
        .master_key
        .decrypt(&project.database_url_enc)
        .map_err(|e| JobError::Configuration(e.to_string()))?;
    let facts = database::target_facts(&url).await.map_err(|cause| {
        JobError::Target(format!("Project {} is not running: {cause}", project.id))
    })?;
    if let Some(missing) = database::missing_privilege(&facts) {
        return Err(JobError::Target(missing));
    }
    if let Some(problem) = database::identity_problem(&facts, force) {
        return Err(JobError::InvalidInput(format!(
            "Project {}: {problem}",
            project.id
        )));
    }
    if job.attempt > 1 {
        child::end_leftover_sessions(&url, &job.id).await;
    }
    Ok((url, facts))
}

/// Removes an ended import's upload (the worker calls it once the job will
/// not run again).
pub async fn remove_upload(ctx: &JobContext, job: &job::Model) {
    if !job
        .kind
        .parse()
        .is_ok_and(supascale_shared::jobs::JobKind::is_import)
    {
        return;
    }
    let removed = match UploadStore::new(&ctx.config, &ctx.destinations) {
        Ok(store) => store.remove(&job.id).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        tracing::warn!(job = %job.id, error = %e, "cannot remove the job's upload; the reconciler will");
    }
}

/// Records the result and sends the warnings as events.
pub async fn finish(
    ctx: &JobContext,
    job: &job::Model,
    reporter: &crate::reporter::Reporter,
    mut result: serde_json::Value,
    warnings: &[String],
) -> Result<(), JobError> {
    for warning in warnings {
        reporter.warning(warning).await;
    }
    result["warnings"] = serde_json::json!(warnings);
    supascale_shared::jobs::store::set_result(&ctx.db, &job.id, &result)
        .await
        .map_err(JobError::from)
}

/// What an uploaded archive of `upload_bytes` may expand to: the
/// configured caps, a multiple of its own size, and what `area` (at `dir`)
/// has free beyond the reserve.
pub fn limits(
    ctx: &JobContext,
    upload_bytes: u64,
    area: &'static str,
    dir: &std::path::Path,
) -> Result<supascale_shared::restore::staging::Limits, JobError> {
    use supascale_shared::restore::staging::{DiskReserve, Expansion, Limits};
    std::fs::create_dir_all(dir).map_err(supascale_shared::jobs::io_error)?;
    let free =
        supascale_shared::disk::available_bytes(dir).map_err(supascale_shared::jobs::io_error)?;
    Ok(Limits {
        max_bytes: Some(ctx.config.import_max_expanded_bytes),
        max_entries: Some(ctx.config.import_max_entries),
        expansion: Some(Expansion {
            ratio: ctx.config.import_max_expansion_ratio,
            upload_bytes,
        }),
        disk: Some(DiskReserve {
            area,
            reserve: ctx.config.disk_reserve_bytes,
            free: Some(free),
        }),
    })
}

/// An archive import's own failure, in the job's terms; a problem of the
/// upload names it.
pub fn archive_error(e: supascale_shared::import::ImportError, file_name: &str) -> JobError {
    match e {
        supascale_shared::import::ImportError::Invalid(message) => {
            JobError::InvalidInput(format!("{file_name}: {message}"))
        }
        supascale_shared::import::ImportError::Cancelled => JobError::Cancelled,
        supascale_shared::import::ImportError::Io(e) => supascale_shared::jobs::io_error(e),
    }
}

/// Runs `stage` (reading the archive, writing the staging folder) on a
/// blocking thread; a cancel raises its stop flag, so it ends at the next
/// entry and its staging folder goes with it. A problem of the upload
/// names `file_name`.
pub async fn stage_off_thread<T: Send + 'static>(
    reporter: &crate::reporter::Reporter,
    file_name: &str,
    stage: impl FnOnce(
        &std::sync::atomic::AtomicBool,
    ) -> Result<T, supascale_shared::import::ImportError>
    + Send
    + 'static,
) -> Result<T, JobError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let work = tokio::task::spawn_blocking(move || stage(&flag));
    let staged = tokio::select! {
        staged = work => staged.map_err(|e| JobError::Internal(e.to_string()))?,
        _ = reporter.cancelled() => {
            stop.store(true, Ordering::Relaxed);
            return Err(JobError::Cancelled);
        }
    };
    staged.map_err(|e| archive_error(e, file_name))
}

/// The folder an archive import writes into (`Storage` or `Functions`),
/// opened beneath the project's root (created there when missing): the
/// import writes through it, never the stored path again. Also puts back
/// what a dead attempt of this job left swapped in, with its warning. The
/// folder is only reachable (through [`PinnedDir::path`]) while the
/// returned pin lives.
pub fn open_target_folder(
    ctx: &JobContext,
    job: &job::Model,
    project: &project::Model,
    which: Component,
) -> Result<(PinnedDir, Vec<String>), JobError> {
    let (create, field, stored) = match which {
        Component::Storage => (
            Create {
                storage: true,
                ..Default::default()
            },
            "storageDir",
            &project.storage_dir,
        ),
        _ => (
            Create {
                functions: true,
                ..Default::default()
            },
            "functionsDir",
            &project.functions_dir,
        ),
    };
    let folders = FolderRules::from_config(&ctx.config)
        .pin(project, create)
        .map_err(JobError::Target)?;
    let pinned = match which {
        Component::Storage => folders.storage,
        _ => folders.functions,
    }
    .ok_or_else(|| {
        JobError::Target(format!(
            "project {}'s {field} {stored} could not be created",
            project.id
        ))
    })?;
    let warnings =
        supascale_shared::restore::staging::recover_dead_attempt(&pinned.path(), &job.id, "import")
            .map_err(supascale_shared::jobs::io_error)?
            .into_iter()
            .collect();
    Ok((pinned, warnings))
}
