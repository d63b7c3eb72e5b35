//! The queue only delivers; the job rows are the record. The reconciler
//! re-delivers what the queue lost: `pending` rows that no worker took
//! within [`PENDING_GRACE`] (Redis restarted empty, a push that failed
//! after the row was written, a job that waited behind another job of its
//! project) and `in_progress` rows whose worker stopped beating. It also
//! delivers retries: a failed attempt puts its row back with a `run_after`
//! time instead of using the queue's own retries. A second delivery is harmless: a worker claims a row only if it
//! is still there to take.
//!
//! Every process that runs workers runs one; each re-delivers a given job
//! at most once per [`REPUSH_EVERY`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sea_orm::sea_query::ExprTrait;
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};

use std::sync::Arc;

use crate::JobContext;
use supascale_shared::entities::job;
use supascale_shared::jobs::{JobQueue, STALE_AFTER, STATUS_IN_PROGRESS, STATUS_PENDING, store};
use supascale_shared::project_folders::Create;

pub const PENDING_GRACE: Duration = Duration::from_secs(5);
/// How old a pending row must be to be re-delivered while the queue is busy.
pub const BACKLOG_GRACE: Duration = Duration::from_secs(600);
pub const REPUSH_EVERY: Duration = Duration::from_secs(30);
const SWEEP_EVERY: Duration = Duration::from_secs(2);

pub async fn run(ctx: Arc<JobContext>) {
    let mut pushed: HashMap<String, Instant> = HashMap::new();
    let mut last_cleanup: Option<Instant> = None;
    loop {
        if last_cleanup.is_none_or(|at| at.elapsed() >= CLEANUP_EVERY) {
            last_cleanup = Some(Instant::now());
            remove_leftovers(&ctx).await;
        }
        tokio::time::sleep(SWEEP_EVERY).await;
        if let Err(e) = sweep(&ctx.db, &ctx.queue, &mut pushed).await {
            tracing::warn!(error = %e, "reconciler sweep failed");
        }
    }
}

/// How often (and at start) files left by dead attempts are looked for.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);
/// A partial object in a local destination untouched this long belongs to
/// an upload that died.
const INCOMPLETE_AFTER: Duration = Duration::from_secs(3600);

/// The queue's finished deliveries are forgotten (see `JobQueue::vacuum`).
/// A worker killed mid-job cannot clean up after itself: its spooled dump
/// (`<data dir>/tmp/<job id>.*`) stays, and so does the partial object a
/// local destination was writing (`<root>/.incomplete/`). Spool files of
/// jobs that no live worker holds, and partial objects untouched for an
/// hour, are removed.
async fn remove_leftovers(ctx: &JobContext) {
    remove_restore_leftovers(ctx).await;
    remove_ended_uploads(ctx).await;
    abort_stale_multipart_uploads(ctx).await;
    match ctx.queue.vacuum().await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(removed = n, "forgot finished queue entries"),
        Err(e) => tracing::warn!(error = %e, "cannot clean the queue"),
    }
    let spool = ctx.config.data_dir.join("tmp");
    if let Ok(entries) = std::fs::read_dir(&spool) {
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(job_id) = name.split('.').next().filter(|id| id.starts_with("job-")) else {
                continue;
            };
            let alive = job_is_alive(ctx, job_id, false).await;
            if !alive && std::fs::remove_file(entry.path()).is_ok() {
                tracing::info!(file = %entry.path().display(), "removed a dead job's temporary file");
            }
        }
    }
    if let Ok(local) = ctx.destinations.get("local")
        && let Some(root) = local.local_root()
        && let Ok(entries) = std::fs::read_dir(root.join(".incomplete"))
    {
        for entry in entries.filter_map(|e| e.ok()) {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age >= INCOMPLETE_AFTER);
            if stale && std::fs::remove_file(entry.path()).is_ok() {
                tracing::info!(file = %entry.path().display(), "removed an abandoned partial artifact");
            }
        }
    }
}

/// Whether `job_id` runs on a live worker (or, with `or_pending`, will run
/// again); unsure counts as alive.
async fn job_is_alive(ctx: &JobContext, job_id: &str, or_pending: bool) -> bool {
    match job::Entity::find_by_id(job_id.to_string())
        .one(&ctx.db)
        .await
    {
        Ok(Some(row)) => {
            (or_pending && row.status == STATUS_PENDING)
                || (row.status == STATUS_IN_PROGRESS
                    && row.heartbeat_at.is_some_and(|at| {
                        store::now() - at < chrono::Duration::from_std(STALE_AFTER).expect("small")
                    }))
        }
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Whether a job is over (or gone): nothing of it will run again.
async fn job_is_over(ctx: &JobContext, job_id: &str) -> bool {
    match job::Entity::find_by_id(job_id.to_string())
        .one(&ctx.db)
        .await
    {
        Ok(Some(row)) => row.status != STATUS_PENDING && row.status != STATUS_IN_PROGRESS,
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Uploads whose import has ended (its worker died before removing it, or
/// it was cancelled before it started), and uploads without a job an hour
/// after they were written (the API died between the two).
async fn remove_ended_uploads(ctx: &JobContext) {
    let Ok(store) = supascale_shared::uploads::UploadStore::new(&ctx.config, &ctx.destinations)
    else {
        return;
    };
    let Ok(job_ids) = store.list().await else {
        return;
    };
    for job_id in job_ids {
        let ended = match job::Entity::find_by_id(job_id.clone()).one(&ctx.db).await {
            Ok(Some(row)) => row.status != STATUS_PENDING && row.status != STATUS_IN_PROGRESS,
            Ok(None) => store
                .age(&job_id)
                .await
                .is_some_and(|age| age >= INCOMPLETE_AFTER),
            Err(_) => false,
        };
        if ended && store.remove(&job_id).await.is_ok() {
            tracing::info!(job = %job_id, "removed an ended import's upload");
        }
    }
}

/// Multipart uploads that dead workers started on S3-kind destinations and
/// that nothing will finish: their parts are billed until aborted. (Azure
/// drops uncommitted blocks after 7 days and GCS resumable uploads expire
/// after a week: nothing to do there.) Several workers may sweep at once;
/// an upload another one aborted first is not an error.
async fn abort_stale_multipart_uploads(ctx: &JobContext) {
    let older_than = Duration::from_secs(ctx.config.stale_upload_seconds);
    for name in ctx.destinations.names() {
        let Ok(destination) = ctx.destinations.get(name) else {
            continue;
        };
        match destination.abort_stale_uploads(older_than).await {
            Ok((aborted, errors)) => {
                for upload in aborted {
                    tracing::info!(
                        destination = name,
                        key = %upload.key,
                        upload_id = %upload.upload_id,
                        initiated = %upload.initiated,
                        "aborted an abandoned multipart upload"
                    );
                }
                for e in errors {
                    tracing::warn!(destination = name, error = %e, "cannot abort a multipart upload");
                }
            }
            Err(e) => {
                tracing::warn!(destination = name, error = %e, "cannot list multipart uploads")
            }
        }
    }
}

/// Staging folders that restores which will not run again left in their
/// projects' storage and functions folders. The content a crashed swap
/// replaced (`.supascale-old-<job>`) may be the only copy of it: it stays,
/// and the log says where.
async fn remove_restore_leftovers(ctx: &JobContext) {
    let Ok(projects) = supascale_shared::entities::project::Entity::find()
        .all(&ctx.db)
        .await
    else {
        return;
    };
    let rules = supascale_shared::project_folders::FolderRules::from_config(&ctx.config);
    for project in projects {
        // A folder that no longer resolves to itself may now lead anywhere:
        // nothing is removed there (the project's next job says why). The
        // others are opened beneath the root and cleaned through that.
        let Ok(folders) = rules.pin(&project, Create::default()) else {
            continue;
        };
        if let Some(storage) = &folders.storage {
            for (job_id, path) in supascale_shared::lift_shift::stage::fetch_dirs(&storage.path()) {
                // Kept while the job may still run (even with a stale
                // heartbeat: the next attempt resumes from it).
                if job_is_over(ctx, &job_id).await {
                    crate::kinds::lift_shift::storage::remove_fetch_dir(&path);
                    tracing::info!(job = %job_id, "removed an ended migration's download folder");
                }
            }
        }
        for dir in [&folders.storage, &folders.functions].into_iter().flatten() {
            for (job_id, path, old) in
                supascale_shared::restore::staging::leftovers_by_job(&dir.path())
            {
                let shown = supascale_shared::project_folders::pinned::shown(&path);
                if job_is_alive(ctx, &job_id, true).await {
                    continue;
                }
                if old {
                    tracing::warn!(
                        folder = %shown.display(),
                        job = %job_id,
                        "an interrupted restore left the content it replaced here; \
                         remove it once the project is checked"
                    );
                } else if supascale_shared::restore::staging::remove_leftover(&path).is_ok() {
                    tracing::info!(folder = %shown.display(), "removed a dead restore's staging folder");
                }
            }
        }
        let extra: Vec<String> = serde_json::from_str(&project.config_paths).unwrap_or_default();
        for dir in supascale_shared::domain::config_dirs(&folders.root.path(), &extra) {
            for (job_id, path, old) in
                supascale_shared::restore::staging::file_leftovers_by_job(&dir)
            {
                let shown = supascale_shared::project_folders::pinned::shown(&path);
                if job_is_alive(ctx, &job_id, true).await {
                    continue;
                }
                if old {
                    tracing::warn!(
                        file = %shown.display(),
                        job = %job_id,
                        "an interrupted restore left the config file it replaced here; \
                         remove it once the project is checked"
                    );
                } else if std::fs::remove_file(&path).is_ok() {
                    tracing::info!(file = %shown.display(), "removed a dead restore's staged config file");
                }
            }
        }
    }
}

async fn sweep(
    db: &DatabaseConnection,
    queue: &JobQueue,
    pushed: &mut HashMap<String, Instant>,
) -> anyhow::Result<()> {
    let now = store::now();
    // A pending row has lost its delivery when the queue holds nothing at
    // all; while the queue has a backlog, its rows are most likely in it
    // (re-pushing them all would double a busy queue), so only rows far
    // older than any backlog are re-delivered then.
    let grace = if queue.backlog().await? == 0 {
        PENDING_GRACE
    } else {
        BACKLOG_GRACE
    };
    let pending_before = now - chrono::Duration::from_std(grace)?;
    let stale_before = now - chrono::Duration::from_std(STALE_AFTER)?;
    let due: Vec<(String, i32, Option<chrono::DateTime<chrono::Utc>>)> = job::Entity::find()
        .select_only()
        .column(job::Column::Id)
        .column(job::Column::Attempt)
        .column(job::Column::RunAfter)
        .filter(
            Condition::any()
                .add(
                    job::Column::Status
                        .eq(STATUS_PENDING)
                        .and(job::Column::RunAfter.is_null())
                        .and(job::Column::EnqueuedAt.lt(pending_before)),
                )
                // A retry whose backoff is over.
                .add(
                    job::Column::Status
                        .eq(STATUS_PENDING)
                        .and(job::Column::RunAfter.lte(now)),
                )
                .add(
                    job::Column::Status
                        .eq(STATUS_IN_PROGRESS)
                        .and(job::Column::HeartbeatAt.lt(stale_before)),
                ),
        )
        .limit(100)
        .into_tuple()
        .all(db)
        .await?;
    pushed.retain(|_, at| at.elapsed() < REPUSH_EVERY);
    for (id, attempt, run_after) in due {
        // Per attempt and wait: a retry (or a job waiting behind another)
        // is delivered as soon as its time comes, even if it was delivered
        // moments ago for an earlier one.
        let key = format!("{id}#{attempt}#{run_after:?}");
        if pushed.contains_key(&key) {
            continue;
        }
        queue.push(&id).await?;
        if attempt == 0 {
            tracing::info!(job = %id, "re-delivered a job the queue had lost");
        } else {
            tracing::info!(job = %id, attempt, "re-delivered a job for its next attempt");
        }
        pushed.insert(key, Instant::now());
    }
    Ok(())
}
