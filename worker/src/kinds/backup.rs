//! The backup job: the project's components, streamed through the artifact
//! builder (on a blocking thread) into the destination's writer, then
//! confirmed by the destination before the row says `completed`.
//!
//! Memory stays flat: the builder hands 1 MiB chunks through a channel of
//! four. The database dump is spooled to a temporary file, because a tar
//! entry needs its size up front; the file is removed afterwards. The files
//! are archived while `pg_dump` runs, and the database entries come last.
//! The spool is compressed as `pg_dump` writes it, with the artifact's own
//! compression, so that compressing the dump overlaps dumping it; its
//! blocks are then copied into the artifact as they are.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, IdenStatic, Iterable,
    QueryFilter, QueryTrait, Statement,
};

use crate::JobContext;
use crate::reporter::Reporter;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use supascale_shared::artifact::artifact_of;
use supascale_shared::artifact::{
    ArtifactBuilder, ArtifactSummary, Compression, ManifestMeta, Precompressed,
};
use supascale_shared::disk::{Need, TEMPORARY_AREA};
use supascale_shared::domain::CONFIG_ALLOWLIST;
use supascale_shared::domain::{BackupType, Component, Vocabulary};
use supascale_shared::entities::{backup, backup_copy, job, project};
use supascale_shared::jobs::params::BackupPayload;
use supascale_shared::jobs::{AbortOnDrop, JobError, io_error};
use supascale_shared::pgtools;
use supascale_shared::pgtools::child;
use supascale_shared::project_folders::{Create, PinnedFolders};

mod dump;

use dump::{CompressedDump, DumpStarted, start_dump, stop_dump};

/// The order of the components inside the artifact: the database last,
/// so that the files are archived while it is being dumped.
fn artifact_order(wanted: &[Component]) -> Vec<Component> {
    let mut order: Vec<_> = wanted
        .iter()
        .copied()
        .filter(|c| *c != Component::Database)
        .collect();
    if wanted.contains(&Component::Database) {
        order.push(Component::Database);
    }
    order
}

/// An UPDATE of the backup row `id` with `changes`.
fn backup_update(
    id: &str,
    changes: Vec<(backup::Column, sea_orm::sea_query::SimpleExpr)>,
) -> sea_orm::UpdateMany<backup::Entity> {
    changes.into_iter().fold(
        backup::Entity::update_many().filter(backup::Column::Id.eq(id)),
        |update, (column, value)| update.col_expr(column, value),
    )
}

/// [`backup_update`] for a write made while the job runs: its commit need
/// not wait for the disk, since the job's end follows and commits durably.
fn running_update(
    backend: DbBackend,
    id: &str,
    changes: Vec<(backup::Column, sea_orm::sea_query::SimpleExpr)>,
) -> sea_orm::UpdateMany<backup::Entity> {
    let update = backup_update(id, changes);
    match supascale_shared::jobs::store::relaxed_commit(backend) {
        Some(relaxed) => update.filter(relaxed),
        None => update,
    }
}

/// Writes the backup row now (see [`running_update`]).
async fn set_backup(
    ctx: &JobContext,
    id: &str,
    changes: Vec<(backup::Column, sea_orm::sea_query::SimpleExpr)>,
) -> Result<(), JobError> {
    running_update(ctx.db.get_database_backend(), id, changes)
        .exec(&ctx.db)
        .await
        .map(|_| ())
        .map_err(JobError::from)
}

pub async fn run(ctx: &JobContext, job: &job::Model, reporter: &Reporter) -> Result<(), JobError> {
    let payload: BackupPayload = supascale_shared::jobs::params::read(job)?;
    let started = Instant::now();
    let (row, project) = start(ctx, &payload.backup_id).await?;
    // `copyTo`: the copies this job makes once the artifact is stored. An
    // earlier run's copies are of an artifact this run makes anew: every
    // one is made again (also on attempt 1, which a job handed back at
    // shutdown runs again).
    let copies = payload.copy_to.clone();
    if !copies.is_empty() {
        backup_copy::Entity::update_many()
            .col_expr(
                backup_copy::Column::Status,
                Expr::value(supascale_shared::jobs::STATUS_PENDING),
            )
            .filter(backup_copy::Column::BackupId.eq(row.id.clone()))
            .filter(backup_copy::Column::JobId.eq(job.id.clone()))
            .exec(&ctx.db)
            .await
            .map_err(JobError::from)?;
    }
    let result = match &project {
        Some(project) => produce(ctx, job, &row, project, reporter, copies.len() as u32).await,
        None => Err(JobError::Record("the project no longer exists".into())),
    };
    match result {
        Ok(Produced {
            summary,
            locked_until,
        }) => {
            for warning in &summary.manifest.warnings {
                reporter.warning(warning).await;
            }
            let manifest = serde_json::to_string(&summary.manifest).unwrap_or_default();
            let completed = vec![
                (
                    backup::Column::Status,
                    Expr::value(supascale_shared::jobs::STATUS_COMPLETED),
                ),
                (backup::Column::Size, Expr::value(summary.bytes as i64)),
                (backup::Column::Sha256, Expr::value(summary.sha256.clone())),
                (backup::Column::Manifest, Expr::value(manifest)),
                (backup::Column::Error, Expr::value(Option::<String>::None)),
                (
                    backup::Column::DurationSecs,
                    Expr::value(started.elapsed().as_secs() as i64),
                ),
                (
                    backup::Column::CompletedAt,
                    Expr::value(supascale_shared::jobs::store::now()),
                ),
                (backup::Column::LockedUntil, Expr::value(locked_until)),
            ];
            if !copies.is_empty() {
                // The copies read the artifact as the row will say it is;
                // the row itself completes with the job, so that a request
                // waiting for the backup sees its copies done too.
                let stored = backup::Model {
                    status: supascale_shared::jobs::STATUS_COMPLETED.into(),
                    size: summary.bytes as i64,
                    sha256: Some(summary.sha256.clone()),
                    locked_until,
                    ..row.clone()
                };
                if let Err(e) = make_copies(ctx, job, &stored, &copies, reporter).await {
                    // A cancel, or the control plane gone: the backup is
                    // whole and, if the job ends here, completed; the copies
                    // not made fail with the job (`fail_open_copies`). A
                    // retry makes the backup again.
                    reporter.record_with_end(backup_update(&row.id, completed).into_query());
                    return Err(e);
                }
            }
            // Written with the job's end, in its commit.
            reporter.record_with_end(backup_update(&row.id, completed).into_query());
            Ok(())
        }
        Err(e) => {
            let retry = e.will_retry(job);
            let status = if retry {
                supascale_shared::jobs::STATUS_PENDING
            } else {
                supascale_shared::jobs::STATUS_FAILED
            };
            let ended = vec![
                (backup::Column::Status, Expr::value(status)),
                (backup::Column::Error, Expr::value(e.to_string())),
                (
                    backup::Column::DurationSecs,
                    Expr::value(started.elapsed().as_secs() as i64),
                ),
            ];
            if retry {
                // Back to pending at once; the job is released after this.
                set_backup(ctx, &row.id, ended).await?;
            } else {
                // Failed for good with the job's end, in its commit.
                reporter.record_with_end(backup_update(&row.id, ended).into_query());
            }
            Err(e)
        }
    }
}

/// The backup's `copyTo`, one after the other, each its own step after the
/// artifact's. A copy that fails is a warning and a failed copy row; the
/// backup itself is complete.
async fn make_copies(
    ctx: &JobContext,
    job: &job::Model,
    row: &backup::Model,
    copies: &[String],
    reporter: &Reporter,
) -> Result<(), JobError> {
    use super::copy::{completed, copy_to, failed, set_copy};
    let wanted = BackupType::parse(&row.backup_type)
        .map_err(JobError::Record)?
        .parts()
        .len() as u32;
    let total = wanted + 1 + copies.len() as u32;
    for (i, destination) in copies.iter().enumerate() {
        let status = vec![(
            backup_copy::Column::Status,
            Expr::value(supascale_shared::jobs::STATUS_IN_PROGRESS),
        )];
        set_copy(ctx, &row.id, destination, status).await?;
        let step = (wanted + 2 + i as u32, total);
        match copy_to(ctx, job, row, destination, reporter, step).await {
            Ok(copied) => set_copy(ctx, &row.id, destination, completed(&copied)).await?,
            Err(JobError::Cancelled) => return Err(JobError::Cancelled),
            Err(e) => {
                reporter
                    .warning(&format!("Copy to {destination} failed: {e}"))
                    .await;
                set_copy(ctx, &row.id, destination, failed(&e.to_string())).await?;
            }
        }
    }
    Ok(())
}

/// Marks the backup running and reads it with its project (`None` when the
/// project is gone). On PostgreSQL that is one round trip, the UPDATE's
/// returned row joined to the project, in a commit that need not wait for
/// the disk (the job's end does).
async fn start(
    ctx: &JobContext,
    backup_id: &str,
) -> Result<(backup::Model, Option<project::Model>), JobError> {
    let gone = || JobError::Record("the backup row is gone".into());
    let backend = ctx.db.get_database_backend();
    let running = running_update(
        backend,
        backup_id,
        vec![(
            backup::Column::Status,
            Expr::value(supascale_shared::jobs::STATUS_IN_PROGRESS),
        )],
    );
    if backend != DbBackend::Postgres {
        let row = running
            .exec_with_returning(&ctx.db)
            .await
            .map_err(JobError::from)?
            .pop()
            .ok_or_else(gone)?;
        let project = project::Entity::find_by_id(row.project_id.clone())
            .one(&ctx.db)
            .await
            .map_err(JobError::from)?;
        return Ok((row, project));
    }
    let update = backend.build(running.into_query().returning_all());
    // Prefixed as sea-orm reads two models from one row.
    let sql = format!(
        "WITH b AS ({}) SELECT {}, {} FROM b LEFT JOIN projects p ON p.id = b.project_id",
        update.sql,
        prefixed("b", "A_", backup::Column::iter().map(|c| c.as_str())),
        prefixed("p", "B_", project::Column::iter().map(|c| c.as_str())),
    );
    let found = ctx
        .db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            update.values.map(|v| v.0).unwrap_or_default(),
        ))
        .await
        .map_err(JobError::from)?
        .ok_or_else(gone)?;
    let row = backup::Model::from_query_result(&found, "A_").map_err(JobError::from)?;
    let project = match found
        .try_get::<Option<String>>("", "B_id")
        .map_err(JobError::from)?
    {
        Some(_) => Some(project::Model::from_query_result(&found, "B_").map_err(JobError::from)?),
        None => None,
    };
    Ok((row, project))
}

/// `table.col AS "<prefix>col", …`
fn prefixed<'a>(table: &str, prefix: &str, columns: impl Iterator<Item = &'a str>) -> String {
    columns
        .map(|c| format!("{table}.\"{c}\" AS \"{prefix}{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds and uploads the artifact; the object exists and is confirmed on
/// success, and nothing is left behind on failure.
///
/// Longer than our ~150-line bound on purpose: the dump, the builder and
/// the upload run at once here, and one `select!` with one cleanup path
/// watches all three; split, each part would need every handle of the others.
async fn produce(
    ctx: &JobContext,
    job: &job::Model,
    row: &backup::Model,
    project: &project::Model,
    reporter: &Reporter,
    copies: u32,
) -> Result<Produced, JobError> {
    // The API accepts only gzip and zstd.
    let (key, compression) = artifact_of(row);
    let destination = ctx
        .destinations
        .get(&row.destination)
        .map_err(|e| JobError::Configuration(e.to_string()))?
        .clone();
    // Before the dump starts: a destination that takes no object fails the
    // backup in seconds, saying why, not after the upload's retries. One
    // that takes it but will not give it back or delete it (a retention
    // policy, a write-only key) still gets the backup, with a warning.
    let probe = destination.probe().await;
    if let Some(error) = probe.error.as_deref() {
        if !probe.writable() {
            return Err(JobError::DestinationDown(format!(
                "Destination {} is not usable: {error}",
                row.destination
            )));
        }
        reporter
            .warning(&format!("destination {}: {error}", row.destination))
            .await;
    }
    // An earlier attempt may have stored the whole artifact before it
    // failed: `gcs` writes are create-only, so it goes first.
    if job.attempt > 1 {
        destination.delete(&key).await?;
    }
    let recipients = recipients_of(ctx, row)?;
    let wanted = BackupType::parse(&row.backup_type)
        .map_err(JobError::Record)?
        .parts();
    // Opened now, beneath the project's root: the builder reads through
    // these, never the stored paths again.
    let folders = wanted
        .iter()
        .any(|c| *c != Component::Database)
        .then(|| {
            supascale_shared::project_folders::FolderRules::from_config(&ctx.config)
                .pin(project, Create::default())
        })
        .transpose()
        .map_err(JobError::Target)?;
    // The files go into the artifact while `pg_dump` writes its spool, and
    // the database comes last, once its size is known: dump and archiving
    // overlap instead of following each other (restores do not depend on
    // entry order).
    let order = artifact_order(wanted);
    let steps = Steps {
        order: &order,
        total: wanted.len() as u32 + 1 + copies,
    };
    let total = steps.total;
    // The artifact's confirmation; the copies (`copyTo`) come after it.
    let confirm_step = wanted.len() as u32 + 1;

    // Where the time goes, for the log (`debug`): `bench-backup` prints it.
    let started = Instant::now();
    let spool_dir = ctx.config.data_dir.join("tmp");
    supascale_shared::private_fs::create_dir_all(&spool_dir)
        .map_err(|e| JobError::Internal(format!("cannot create {}: {e}", spool_dir.display())))?;
    let DumpStarted {
        mut dumping,
        dump_ready,
        ready_rx,
        dump_url,
        roles,
        postgres_version,
        mut database_reported,
    } = if wanted.contains(&Component::Database) {
        let first = order.first() == Some(&Component::Database);
        start_dump(
            ctx,
            job,
            project,
            &destination,
            &spool_dir,
            compression,
            reporter,
            first.then(|| (steps.of(Component::Database), total)),
        )
        .await?
    } else {
        DumpStarted::default()
    };
    let mut dump_ready = dump_ready;

    let meta = ManifestMeta {
        project_id: project.id.clone(),
        project_name: project.name.clone(),
        backup_type: row.backup_type.clone(),
        components: wanted.iter().map(|c| c.to_string()).collect(),
        postgres_version,
        created_at: row
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<Component>();
    let sources = Sources {
        folders,
        dump: ready_rx,
        roles: roles.as_ref().map(|d| d.path.clone()),
        components: order.clone(),
        started: started_tx,
    };

    let mut writer = match destination.writer(&key).await {
        Ok(writer) => writer,
        Err(e) => {
            stop_dump(&mut dumping, dump_url.as_deref(), &job.id).await;
            return Err(JobError::from(e));
        }
    };
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let builder = tokio::task::spawn_blocking(move || {
        build_artifact(sources, meta, compression, &recipients, sender)
    });
    let Pumped {
        dump,
        upload_error,
        dumped_after,
    } = pump(
        &mut writer,
        &mut receiver,
        &mut started_rx,
        &mut dumping,
        &mut dump_ready,
        &mut database_reported,
        reporter,
        &steps,
        started,
    )
    .await;
    // The builder may be waiting for the dump: this tells it there will be
    // none (it then fails, and the error above is the one reported).
    drop(dump_ready);
    drop(receiver);
    stop_dump(&mut dumping, dump_url.as_deref(), &job.id).await;
    let uploaded_after = started.elapsed();
    let built = builder
        .await
        .map_err(|e| JobError::Internal(format!("artifact builder panicked: {e}")))?;
    drop(dump);
    drop(roles);
    let summary = match (built, upload_error) {
        (Ok(summary), None) => summary,
        (Err(e), None) => {
            let _ = writer.abort().await;
            return Err(io_error(e));
        }
        (_, Some(e)) => {
            let _ = writer.abort().await;
            return Err(e);
        }
    };
    if let Err(e) = writer.close().await {
        return Err(JobError::Destination(e.into()));
    }
    let closed_after = started.elapsed();
    let summary = confirm_stored(
        ctx,
        &destination,
        &key,
        summary,
        reporter,
        (confirm_step, total),
    )
    .await?;
    // Last: a lock cannot be taken back, so only a confirmed artifact gets one.
    let locked_until = match destination.lock(&key).await {
        Ok(until) => until,
        Err(e) => {
            let _ = destination.delete(&key).await;
            return Err(JobError::Destination(e));
        }
    };
    if locked_until.is_some() {
        // Said at once: whatever ends this job, the object is locked, and
        // the record must not let anyone believe it can be deleted.
        set_backup(
            ctx,
            &row.id,
            vec![(backup::Column::LockedUntil, Expr::value(locked_until))],
        )
        .await?;
    }
    tracing::debug!(
        job = %job.id,
        dumped_ms = dumped_after.map(|d| d.as_millis() as u64),
        uploaded_ms = uploaded_after.as_millis() as u64,
        closed_ms = closed_after.as_millis() as u64,
        confirmed_ms = started.elapsed().as_millis() as u64,
        "backup timeline"
    );
    Ok(Produced {
        summary,
        locked_until,
    })
}

/// A stored, confirmed artifact.
struct Produced {
    summary: ArtifactSummary,
    /// Until when the destination refuses to delete it (`immutable_days`).
    locked_until: Option<chrono::DateTime<chrono::Utc>>,
}

/// One step per component, in artifact order, then the destination's
/// confirmation.
struct Steps<'a> {
    order: &'a [Component],
    total: u32,
}

impl Steps<'_> {
    fn of(&self, component: Component) -> u32 {
        self.order
            .iter()
            .position(|c| *c == component)
            .map(|i| i as u32 + 1)
            .unwrap_or(0)
    }
}

/// What [`pump`] ends with.
#[derive(Default)]
struct Pumped {
    /// The finished dump's spool (removed when dropped).
    dump: Option<CompressedDump>,
    /// Why the upload stopped early.
    upload_error: Option<JobError>,
    dumped_after: Option<std::time::Duration>,
}

/// Writes the builder's chunks to the destination as they come, reports
/// each component's step as the builder starts it, and hands the dump to
/// the builder when `pg_dump` ends; stops at the first failure or a cancel.
#[allow(clippy::too_many_arguments)]
async fn pump(
    writer: &mut supascale_shared::destinations::ObjectWriter,
    receiver: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
    started_rx: &mut tokio::sync::mpsc::UnboundedReceiver<Component>,
    dumping: &mut Option<AbortOnDrop<Result<CompressedDump, JobError>>>,
    dump_ready: &mut Option<tokio::sync::oneshot::Sender<(PathBuf, Precompressed)>>,
    database_reported: &mut bool,
    reporter: &Reporter,
    steps: &Steps<'_>,
    started: Instant,
) -> Pumped {
    let mut pumped = Pumped::default();
    let mut uploaded = 0u64;
    let mut step = (steps.order.first().map_or("archive", |c| c.as_str()), 1u32);
    loop {
        tokio::select! {
            chunk = receiver.recv() => {
                let Some(chunk) = chunk else { break };
                uploaded += chunk.len() as u64;
                if let Err(e) = writer.write(chunk).await {
                    pumped.upload_error = Some(JobError::Destination(e.into()));
                    break;
                }
                reporter
                    .bytes(step.0, "Writing the artifact", step.1, steps.total, uploaded)
                    .await;
            }
            Some(component) = started_rx.recv() => {
                step = (component.as_str(), steps.of(component));
                if component != Component::Database {
                    reporter
                        .step(step.0, &format!("Archiving {component}"), step.1, steps.total)
                        .await;
                } else if !*database_reported {
                    *database_reported = true;
                    let message = if dumping.is_some() {
                        "Dumping the database"
                    } else {
                        "Archiving the database dump"
                    };
                    reporter.step(step.0, message, step.1, steps.total).await;
                }
            }
            // In an `async` block: select! evaluates every branch's
            // expression, even one whose condition is false.
            dumped = async { dumping.as_mut().expect("guarded").await }, if dumping.is_some() => {
                *dumping = None;
                pumped.dumped_after = Some(started.elapsed());
                let dumped = dumped.unwrap_or_else(|e| {
                    Err(JobError::Internal(format!("the dump task failed: {e}")))
                });
                match dumped {
                    Ok(spooled) => {
                        if let Some(ready) = dump_ready.take() {
                            let _ = ready.send((spooled.spool.path.clone(), spooled.entry.clone()));
                        }
                        pumped.dump = Some(spooled);
                    }
                    Err(e) => {
                        pumped.upload_error = Some(e);
                        break;
                    }
                }
            }
            _ = reporter.cancelled() => {
                pumped.upload_error = Some(JobError::Cancelled);
                break;
            }
        }
    }
    pumped
}

/// The age recipients of an encrypted backup (none for a plain one).
fn recipients_of(
    ctx: &JobContext,
    row: &backup::Model,
) -> Result<Vec<age::x25519::Recipient>, JobError> {
    if !row.encrypted {
        return Ok(Vec::new());
    }
    let recipients = ctx
        .config
        .recipients()
        .map_err(|e| JobError::Configuration(e.to_string()))?;
    if recipients.is_empty() {
        return Err(JobError::Configuration(
            "the backup is to be encrypted and no encryption recipients are configured".into(),
        ));
    }
    Ok(recipients)
}

/// The destination itself must confirm what was written: its size, then
/// (unless turned off) the bytes it gives back, hashed. What it cannot
/// confirm is deleted.
async fn confirm_stored(
    ctx: &JobContext,
    destination: &supascale_shared::destinations::Destination,
    key: &str,
    summary: ArtifactSummary,
    reporter: &Reporter,
    (current, total): (u32, u32),
) -> Result<ArtifactSummary, JobError> {
    reporter
        .step(
            "verify",
            if ctx.config.verify_readback {
                "Reading the stored artifact back"
            } else {
                "Confirming the stored artifact"
            },
            current,
            total,
        )
        .await;
    match destination.stat(key).await {
        Ok(Some(stored)) if stored.size == summary.bytes => {
            if ctx.config.verify_readback {
                let read = tokio::select! {
                    read = read_back_sha256(destination, key, stored.size) => read,
                    _ = reporter.cancelled() => {
                        let _ = destination.delete(key).await;
                        return Err(JobError::Cancelled);
                    }
                };
                match read {
                    Ok(sha) if sha == summary.sha256 => {}
                    Ok(sha) => {
                        let _ = destination.delete(key).await;
                        return Err(JobError::DestinationUnsure(format!(
                            "the destination gave back other bytes than were written \
                             (SHA-256 {sha}, expected {})",
                            summary.sha256
                        )));
                    }
                    Err(e) => {
                        let _ = destination.delete(key).await;
                        return Err(JobError::from(e));
                    }
                }
            }
            Ok(summary)
        }
        Ok(Some(stored)) => {
            let _ = destination.delete(key).await;
            Err(JobError::DestinationUnsure(format!(
                "the destination stored {} bytes of {}",
                stored.size, summary.bytes
            )))
        }
        Ok(None) => Err(JobError::DestinationUnsure(
            "the destination does not show the artifact".into(),
        )),
        Err(e) => Err(JobError::from(e)),
    }
}

/// Up to this size a read-back is hashed on the task that reads it.
const HASH_HERE_UP_TO: u64 = 1024 * 1024;

/// SHA-256 of the object as the destination serves it. The hashing runs on
/// a thread of its own, so that reading the next chunk overlaps hashing
/// this one; one chunk waits between them at most (a chunk is the
/// destination's `chunk_bytes`, 8 MiB by default: more would show in the
/// worker's peak RSS).
pub(crate) async fn read_back_sha256(
    destination: &supascale_shared::destinations::Destination,
    key: &str,
    size: u64,
) -> Result<String, supascale_shared::destinations::DestinationError> {
    use futures::StreamExt;
    use sha2::Digest;
    let reader = destination.reader(key).await?;
    if size <= HASH_HERE_UP_TO {
        // A small artifact (a config-only backup) is hashed where it is
        // read: handing it to a hashing thread costs more than hashing it.
        let read = reader
            .read(0..size)
            .await
            .map_err(supascale_shared::destinations::DestinationError::from)?;
        let mut hasher = sha2::Sha256::new();
        for chunk in read {
            hasher.update(&chunk);
        }
        return Ok(hex::encode(hasher.finalize()));
    }
    let (chunks, mut to_hash) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let hashing = tokio::task::spawn_blocking(move || {
        let mut hasher = sha2::Sha256::new();
        while let Some(chunk) = to_hash.blocking_recv() {
            hasher.update(&chunk);
        }
        hex::encode(hasher.finalize())
    });
    let mut stream = reader
        .into_bytes_stream(0..size)
        .await
        .map_err(supascale_shared::destinations::DestinationError::from)?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            supascale_shared::destinations::DestinationError::from(opendal::Error::new(
                opendal::ErrorKind::Unexpected,
                e.to_string(),
            ))
        })?;
        if chunks.send(chunk).await.is_err() {
            break;
        }
    }
    drop(chunks);
    hashing.await.map_err(|e| {
        supascale_shared::destinations::DestinationError::from(opendal::Error::new(
            opendal::ErrorKind::Unexpected,
            format!("hashing the read-back failed: {e}"),
        ))
    })
}

struct Sources {
    /// The project's folders, pinned (`None` for a database-only backup).
    folders: Option<PinnedFolders>,
    /// The spooled dump's path, sent once `pg_dump` has finished (dropped
    /// unsent when it fails or the job is cancelled).
    dump: Option<tokio::sync::oneshot::Receiver<(PathBuf, Precompressed)>>,
    /// The cluster's own roles (`pg_dumpall --roles-only`, Supabase's left out).
    roles: Option<PathBuf>,
    components: Vec<Component>,
    /// Told each component as the builder starts it.
    started: tokio::sync::mpsc::UnboundedSender<Component>,
}

/// Forwards what the builder writes to the upload, 1 MiB at a time.
struct ChannelWriter {
    buffer: Vec<u8>,
    sender: tokio::sync::mpsc::Sender<Vec<u8>>,
}

const CHUNK: usize = 1024 * 1024;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.sender
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload stopped"))
    }
}

fn build_artifact(
    mut sources: Sources,
    meta: ManifestMeta,
    compression: Compression,
    recipients: &[age::x25519::Recipient],
    sender: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> std::io::Result<ArtifactSummary> {
    let sink = ChannelWriter {
        buffer: Vec::with_capacity(CHUNK),
        sender,
    };
    let mut builder = ArtifactBuilder::sealed(sink, compression, recipients)?;
    for component in std::mem::take(&mut sources.components) {
        let _ = sources.started.send(component);
        match component {
            Component::Database => {
                if let Some(path) = &sources.roles {
                    let file = std::fs::File::open(path)?;
                    let size = file.metadata()?.len();
                    builder.add_reader("database/roles.sql", file, size, None)?;
                }
                if let Some(ready) = sources.dump.take() {
                    let (path, entry) = ready
                        .blocking_recv()
                        .map_err(|_| std::io::Error::other("the database dump did not finish"))?;
                    let file =
                        std::io::BufReader::with_capacity(256 * 1024, std::fs::File::open(path)?);
                    builder.add_precompressed("database/database.dump", file, &entry)?;
                }
            }
            Component::Storage | Component::Functions | Component::Config => {
                let Some(folders) = &sources.folders else {
                    continue;
                };
                let folder = match component {
                    Component::Storage => &folders.storage,
                    Component::Functions => &folders.functions,
                    _ => {
                        add_config(&mut builder, folders)?;
                        continue;
                    }
                };
                // A missing folder adds nothing.
                if let Some(folder) = folder {
                    builder.add_folder(folder.fd(), component.as_str())?;
                }
            }
        }
    }
    let (mut sink, summary) = builder.finish(meta)?;
    sink.flush()?;
    Ok(summary)
}

/// The config allowlist (never the live `volumes/db/data`), then the
/// project's extra paths under `config/extra/<absolute path>`. Each file is
/// opened from its folder, itself opened beneath the pinned root (or, for
/// an extra path outside it, with no symlinks from `/`): a folder reached
/// through a symbolic link is left out with a warning.
fn add_config<W: Write>(
    builder: &mut ArtifactBuilder<W>,
    folders: &PinnedFolders,
) -> std::io::Result<()> {
    for pattern in CONFIG_ALLOWLIST {
        match pattern.strip_suffix("/*.sql") {
            Some(dir) => {
                let Some((parent, name)) =
                    open_config_folder(builder, folders, Path::new(dir), &format!("config/{dir}"))?
                else {
                    continue;
                };
                let folder = rustix::fs::openat(
                    &parent,
                    &name,
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                );
                let folder = match folder {
                    Ok(folder) => folder,
                    Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => continue,
                    Err(rustix::io::Errno::LOOP) => {
                        through_symlink(builder, &format!("config/{dir}/*.sql"));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let mut names = Vec::new();
                for entry in rustix::fs::Dir::read_from(&folder)? {
                    let name = entry?.file_name().to_bytes().to_vec();
                    if name.ends_with(b".sql") {
                        names.push(name);
                    }
                }
                names.sort();
                for name in names {
                    let name = std::ffi::OsStr::from_bytes(&name);
                    let shown = format!("config/{dir}/{}", name.to_string_lossy());
                    builder.add_at(folder.as_fd(), name, &shown)?;
                }
            }
            None => {
                let shown = format!("config/{pattern}");
                if let Some((parent, name)) =
                    open_config_folder(builder, folders, Path::new(pattern), &shown)?
                {
                    builder.add_at(parent.as_fd(), &name, &shown)?;
                }
            }
        }
    }
    for extra in &folders.config {
        let shown = format!("config/extra{}", extra.display());
        if let Some((parent, name)) = open_config_folder(builder, folders, extra, &shown)? {
            builder.add_at(parent.as_fd(), &name, shown.trim_end_matches('/'))?;
        }
    }
    Ok(())
}

/// The folder holding the config path `path` (see
/// [`PinnedFolders::open_parent`]); `None` when it is missing, or reached
/// through a symbolic link (with a warning).
fn open_config_folder<W: Write>(
    builder: &mut ArtifactBuilder<W>,
    folders: &PinnedFolders,
    path: &Path,
    shown: &str,
) -> std::io::Result<Option<(std::os::fd::OwnedFd, std::ffi::OsString)>> {
    match folders.open_parent(path) {
        Ok(found) => Ok(found),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EXDEV)) => {
            through_symlink(builder, shown);
            Ok(None)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

fn through_symlink<W: Write>(builder: &mut ArtifactBuilder<W>, shown: &str) {
    builder.warn(format!(
        "{shown}: left out: its folder is reached through a symbolic link"
    ));
}

/// The files of a backup (no database) built from pinned folders, as the
/// job builds them: the artifact's bytes and its summary.
#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) fn build_files(
    folders: PinnedFolders,
    components: Vec<Component>,
) -> std::io::Result<(Vec<u8>, ArtifactSummary)> {
    let (started, _) = tokio::sync::mpsc::unbounded_channel();
    let (sender, mut receiver) = tokio::sync::mpsc::channel(1024);
    let meta = ManifestMeta {
        project_id: "p".into(),
        project_name: "P".into(),
        backup_type: "full".into(),
        components: components.iter().map(|c| c.to_string()).collect(),
        postgres_version: None,
        created_at: "2026-01-01T00:00:00Z".into(),
    };
    let sources = Sources {
        folders: Some(folders),
        dump: None,
        roles: None,
        components,
        started,
    };
    let summary = build_artifact(sources, meta, Compression::Gzip, &[], sender)?;
    let mut bytes = Vec::new();
    while let Ok(chunk) = receiver.try_recv() {
        bytes.extend(chunk);
    }
    Ok((bytes, summary))
}

/// A dump file that is removed when dropped.
pub(crate) struct SpooledDump {
    pub(crate) path: PathBuf,
}

impl Drop for SpooledDump {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Fails early when the places a job writes to cannot take what it will
/// write and still keep `reserve` bytes free.
pub(crate) fn check_free_space(
    needs: &[supascale_shared::disk::Need],
    reserve: u64,
) -> Result<(), JobError> {
    supascale_shared::disk::check_all(needs, reserve).map_err(io_error)
}
