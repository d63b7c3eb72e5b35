//! The worker loop, shared by `supascale-worker` and the in-process workers
//! of `supascale-api`: takes envelopes from the queue, claims the job row,
//! keeps its heartbeat, runs the kind's module and ends the row.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, EntityTrait};

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ExprTrait, QueryFilter};
use serde_json::json;

use crate::context::JobContext;
use crate::kinds::backup;
use crate::reporter::Reporter;
use supascale_shared::entities::{job, worker};
use supascale_shared::jobs::events;
use supascale_shared::jobs::events::NewEvent;
use supascale_shared::jobs::queue::EveryPoll;
use supascale_shared::jobs::store::{Claim, Ending};
use supascale_shared::jobs::{
    AbortOnDrop, HEARTBEAT, JobEnvelope, JobError, JobKind, JobQueue, store,
};

/// Runs `concurrency` jobs at a time until `shutdown` resolves, then stops
/// taking jobs and lets running ones finish (up to
/// `shutdown_grace_seconds`, 60 s by default);
/// what is still running then is handed back for another worker.
///
/// apalis ends a worker when its backend fails (Redis restarted empty
/// answers "worker not registered"): the worker is then started again,
/// under a new apalis name, after a backoff, for as long as the process
/// runs. Jobs it was running are taken over once their heartbeat is stale.
pub async fn run(
    ctx: Arc<JobContext>,
    concurrency: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let concurrency = concurrency.max(1);
    let queue = ctx.queue.clone();
    let reconciler = tokio::spawn(crate::reconciler::run(ctx.clone()));
    let _stop_reconciler = AbortOnDrop(reconciler);
    let probes = tokio::spawn(crate::health::run(ctx.clone()));
    let _stop_probes = AbortOnDrop(probes);
    let registry = tokio::spawn(announce(ctx.clone(), concurrency));
    let _stop_registry = AbortOnDrop(registry);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut restarts = 0u32;
    loop {
        let name = match restarts {
            0 => ctx.worker_id.clone(),
            n => format!("{}-r{n}", ctx.worker_id),
        };
        let signal = stopped(stop_rx.clone());
        let grace = Duration::from_secs(ctx.config.shutdown_grace_seconds);
        run_monitor(
            ctx.clone(),
            queue.clone(),
            name,
            concurrency,
            grace,
            async move {
                signal.await;
                Ok(())
            },
        )
        .await;
        if *stop_rx.borrow() {
            break;
        }
        restarts += 1;
        let wait = Duration::from_millis(500 * 2u64.pow(Ord::min(restarts, 6)));
        tracing::warn!(
            restarts,
            wait_ms = wait.as_millis() as u64,
            "the queue ended this worker (see the error above); starting it again"
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(stop_rx.clone()) => break,
        }
    }
    // Jobs still running when the grace period ran out were dropped (their
    // children killed with them): hand them back at once, without counting
    // the attempt, instead of letting them go stale.
    match store::hand_back(&ctx.db, &ctx.worker_id).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(jobs = n, "handed back jobs that did not finish in time"),
        Err(e) => tracing::warn!(error = %e, "cannot hand back running jobs"),
    }
    // A worker that stops cleanly leaves the registry at once; a dead one
    // ages out of `/metrics`' live count.
    let _ = worker::Entity::delete_by_id(ctx.worker_id.clone())
        .exec(&ctx.db)
        .await;
    Ok(())
}

/// One apalis monitor with one worker, until `signal` or until the worker
/// fails.
async fn run_monitor(
    ctx: Arc<JobContext>,
    queue: JobQueue,
    name: String,
    concurrency: usize,
    grace: Duration,
    signal: impl Future<Output = std::io::Result<()>> + Send + 'static,
) {
    let ended = match queue {
        JobQueue::Sqlite(storage) => {
            Monitor::new()
                .register(move |_| {
                    WorkerBuilder::new(name.clone())
                        .backend(storage.clone().poll_with_strategy(EveryPoll::new()))
                        .concurrency(concurrency)
                        .data(ctx.clone())
                        .build(handle)
                })
                .shutdown_timeout(grace)
                .run_with_signal(signal)
                .await
        }
        JobQueue::Redis(storage) => {
            Monitor::new()
                .register(move |_| {
                    WorkerBuilder::new(name.clone())
                        .backend(storage.clone().poll_with_strategy(EveryPoll::new()))
                        .concurrency(concurrency)
                        .data(ctx.clone())
                        .build(handle)
                })
                .shutdown_timeout(grace)
                .run_with_signal(signal)
                .await
        }
    };
    if let Err(e) = ended {
        tracing::warn!(error = %e, "the worker monitor failed");
    }
}

/// Keeps this worker's row in `workers` fresh (what `/metrics` counts).
async fn announce(ctx: Arc<JobContext>, concurrency: usize) {
    let started_at = store::now();
    loop {
        let row = worker::ActiveModel {
            id: Set(ctx.worker_id.clone()),
            concurrency: Set(concurrency as i32),
            started_at: Set(started_at),
            last_seen_at: Set(store::now()),
        };
        let upsert = worker::Entity::insert(row)
            .on_conflict(
                OnConflict::column(worker::Column::Id)
                    .update_column(worker::Column::LastSeenAt)
                    .to_owned(),
            )
            .exec(&ctx.db)
            .await;
        if let Err(e) = upsert {
            tracing::warn!(error = %e, "cannot update the worker registry");
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// One delivery. Every outcome is written to the job row by us, so the
/// queue's own retries are never wanted: a delivery is acknowledged unless
/// the control plane itself cannot be written (then the queue may deliver
/// it again, and the stale heartbeat lets the next worker take it).
async fn handle(envelope: JobEnvelope, ctx: Data<Arc<JobContext>>) -> Result<(), BoxDynError> {
    let ctx: Arc<JobContext> = (*ctx).clone();
    let (job, lost) = match store::claim(&ctx.db, &envelope.job_id, &ctx.worker_id).await {
        Ok(Claim::Taken(job)) => (job, false),
        Ok(Claim::Lost(job)) => (job, true),
        Ok(Claim::Busy { blocker }) => {
            wait_behind(&ctx, &envelope.job_id, &blocker).await;
            return Ok(());
        }
        Ok(Claim::NotNow) => return Ok(()),
        Err(e) => return Err(format!("control plane: {e}").into()),
    };
    let warnings = serde_json::from_str(&job.warnings).unwrap_or_default();
    let reporter = Reporter::start(ctx.db.clone(), ctx.events.clone(), &job.id, warnings);
    tracing::info!(job = %job.id, kind = %job.kind, attempt = job.attempt, "job started");
    let outcome = if job.cancel_requested {
        Err(JobError::Cancelled)
    } else if lost {
        Err(JobError::Internal(format!(
            "the worker running it stopped during attempt {} of {}{}",
            job.max_attempts,
            job.max_attempts,
            job.error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        )))
    } else {
        if job.attempt == 1 {
            let data = if job.kind == JobKind::LiftShift.as_str() {
                crate::kinds::lift_shift::start_event(&ctx, &job).await
            } else {
                json!({
                    "message": format!("Starting {}...", job.kind.replace('_', " ")),
                    "jobId": job.id,
                    "kind": job.kind,
                    "projectId": job.project_id,
                    "attempt": job.attempt,
                    "maxAttempts": job.max_attempts,
                })
            };
            reporter.event(events::START, data);
        } else {
            let message = format!("Attempt {} of {}", job.attempt, job.max_attempts);
            reporter.step("attempt", &message, 0, 0).await;
        }
        // Stops beating when this delivery ends, or is dropped at shutdown.
        let watch = AbortOnDrop(tokio::spawn(watch_job(
            ctx.clone(),
            job.id.clone(),
            reporter.clone(),
        )));
        let outcome = run_kind(&ctx, &job, &reporter).await;
        drop(watch);
        match outcome {
            Err(_) if reporter.is_cancelled() => Err(JobError::Cancelled),
            other => other,
        }
    };
    end(&ctx, &job, &reporter, outcome).await
}

/// The module of the job's kind. A kind this build does not know, or one
/// without a module yet, fails the job for good, saying so.
async fn run_kind(ctx: &JobContext, job: &job::Model, reporter: &Reporter) -> Result<(), JobError> {
    let kind: JobKind = job
        .kind
        .parse()
        .map_err(|e: supascale_shared::jobs::kind::UnknownKind| JobError::Record(e.to_string()))?;
    match kind {
        JobKind::Backup => backup::run(ctx, job, reporter).await,
        JobKind::Restore => crate::kinds::restore::run(ctx, job, reporter).await,
        JobKind::Verify => crate::kinds::verify::run(ctx, job, reporter).await,
        JobKind::Copy => crate::kinds::copy::run(ctx, job, reporter).await,
        JobKind::ImportDatabase => crate::kinds::import_database::run(ctx, job, reporter).await,
        JobKind::ImportStorage => crate::kinds::import_storage::run(ctx, job, reporter).await,
        JobKind::ImportFunctions => crate::kinds::import_functions::run(ctx, job, reporter).await,
        JobKind::LiftShift => crate::kinds::lift_shift::run(ctx, job, reporter).await,
    }
}

/// Keeps the job's heartbeat and watches for a cancel request.
async fn watch_job(ctx: Arc<JobContext>, job_id: String, reporter: Arc<Reporter>) {
    let mut last_beat = std::time::Instant::now();
    loop {
        tokio::time::sleep(CANCEL_CHECK).await;
        if last_beat.elapsed() >= HEARTBEAT {
            last_beat = std::time::Instant::now();
            if let Err(e) = store::heartbeat(&ctx.db, &job_id, &ctx.worker_id).await {
                tracing::warn!(job = %job_id, error = %e, "heartbeat failed");
            }
        }
        if let Ok(true) = store::cancel_requested(&ctx.db, &job_id).await {
            tracing::info!(job = %job_id, "cancel requested; stopping the job");
            reporter.cancel();
            return;
        }
    }
}

/// How often a running job looks for a cancel request.
const CANCEL_CHECK: Duration = Duration::from_millis(500);

/// Ends the row (done, retry later, or failed) together with the job's
/// last events, and delivers again the jobs of the project that waited for
/// this one.
async fn end(
    ctx: &JobContext,
    job: &job::Model,
    reporter: &Reporter,
    outcome: Result<(), JobError>,
) -> Result<(), BoxDynError> {
    let duration_ms = job
        .started_at
        .map(|at| (store::now() - at).num_milliseconds())
        .unwrap_or(0);
    let retry = matches!(&outcome, Err(e) if e.will_retry(job));
    let cause = outcome.as_ref().err().map(|e| e.to_string());
    match (&outcome, &cause) {
        (Ok(()), _) => tracing::info!(job = %job.id, duration_ms, "job completed"),
        (Err(_), Some(cause)) if retry => {
            tracing::warn!(job = %job.id, cause = %cause, "job failed; it will be retried");
            reporter
                .warning(&format!(
                    "Attempt {} of {} failed: {cause}; trying again in {} s",
                    job.attempt,
                    job.max_attempts,
                    supascale_shared::jobs::backoff(job.attempt).as_secs()
                ))
                .await;
        }
        (Err(_), cause) => {
            let cause = cause.as_deref().unwrap_or_default();
            tracing::warn!(job = %job.id, cause = %cause, "job failed");
        }
    }
    // The row the job works for ends with the job, in its commit: what the
    // module recorded, or, when it recorded nothing (a failure it did not
    // see, such as a cancel), that row failed with the cause. A waiting
    // request that reads that row then always finds the job over too.
    let result = reporter
        .take_result_write()
        .or_else(|| match (&outcome, &cause) {
            (Err(_), Some(cause)) if !retry => store::owned_row_failure(job, cause),
            _ => None,
        });
    let (mut batch, writing) = reporter.take().await;
    let ending = match &outcome {
        Ok(()) => {
            batch.events.push(NewEvent::now(
                events::COMPLETE,
                &json!({ "durationMs": duration_ms }),
            ));
            Ending::Finish(None)
        }
        Err(_) if retry => Ending::Release {
            error: cause.as_deref().unwrap_or_default(),
            wait: supascale_shared::jobs::backoff(job.attempt),
        },
        Err(e) => {
            batch.events.push(NewEvent::now(
                events::ERROR,
                &events::failure(&job.kind, cause.as_deref().unwrap_or_default(), duration_ms),
            ));
            Ending::Finish(Some(e))
        }
    };
    let ended = store::end_job(&ctx.db, job, &ctx.worker_id, ending, &batch, result).await;
    drop(writing);
    let ended = match ended {
        Ok(ended) => ended,
        // The row stays in_progress; its heartbeat has stopped, so the job
        // is taken over once it is stale.
        Err(e) => return Err(format!("control plane: {e}").into()),
    };
    // The upload goes before anyone is told the job ended: a client that
    // hears of the end finds nothing of it left.
    if !retry {
        crate::kinds::import::remove_upload(ctx, job).await;
    }
    // Copies a backup's `copyTo` had not finished when its job ended.
    if let (Err(_), false, true) = (&outcome, retry, ended.ours)
        && let Err(e) =
            store::fail_open_copies(&ctx.db, job, cause.as_deref().unwrap_or("the job ended")).await
    {
        tracing::warn!(job = %job.id, error = %e, "cannot fail the job's open copies");
    }
    if !ended.ours {
        tracing::warn!(job = %job.id, "the job was taken over by another worker; its end is theirs");
    } else if !batch.events.is_empty() {
        ctx.events.publish(&job.id).await;
    }
    for id in ended.woken {
        if let Err(e) = ctx.queue.push(&id).await {
            tracing::warn!(job = %id, error = %e, "cannot re-deliver a waiting job");
        }
    }
    give_back_freed_memory(duration_ms);
    Ok(())
}

/// Returns what the ended job freed to the system. glibc keeps freed
/// memory in each thread's arena, so a worker's RSS otherwise climbs with
/// every job it has run (measured with `bench-backup`: 32 → 163 MiB over
/// seven backups) and one job's peak sits on top of all the earlier ones.
/// Short jobs free little and come many a second: for them, once a second
/// is enough.
fn give_back_freed_memory(duration_ms: i64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_TRIM_MS: AtomicU64 = AtomicU64::new(0);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let last = LAST_TRIM_MS.load(Ordering::Relaxed);
    if duration_ms < 1000 && now_ms.saturating_sub(last) < 1000 {
        return;
    }
    LAST_TRIM_MS.store(now_ms, Ordering::Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it takes no
    // pointers and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How soon a job that waits behind another is looked at again.
const WAIT_RECHECK: Duration = Duration::from_secs(3);

/// Says in the waiting job's progress what it waits for (once).
async fn wait_behind(ctx: &JobContext, job_id: &str, blocker: &job::Model) {
    let message = format!(
        "Waiting for job {} ({}) on project {} to finish",
        blocker.id,
        blocker.kind,
        blocker.project_id.as_deref().unwrap_or("")
    );
    let progress = json!({
        "step": store::WAITING_STEP,
        "message": message,
        "current": 0,
        "total": 0,
    });
    // Looked at again in a few seconds (the reconciler delivers it), in
    // case the blocker's own wake-up is lost.
    let recheck = store::now() + chrono::Duration::from_std(WAIT_RECHECK).expect("small");
    let _ = job::Entity::update_many()
        .col_expr(job::Column::RunAfter, Expr::value(recheck))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Status.eq(supascale_shared::jobs::STATUS_PENDING))
        .exec(&ctx.db)
        .await;
    let changed = job::Entity::update_many()
        .col_expr(job::Column::Progress, Expr::value(progress.to_string()))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Status.eq(supascale_shared::jobs::STATUS_PENDING))
        .filter(
            job::Column::Progress
                .is_null()
                .or(job::Column::Progress.ne(progress.to_string())),
        )
        .exec(&ctx.db)
        .await;
    if let Ok(result) = changed
        && result.rows_affected > 0
    {
        tracing::info!(job = %job_id, blocker = %blocker.id, "job waits for another job of its project");
        let mut data = progress;
        data["status"] = json!("waiting");
        let appended = events::append(
            &ctx.db,
            &ctx.events,
            job_id,
            events::STEP,
            data,
            None,
            events::Durability::Progress,
        )
        .await;
        if let Err(e) = appended {
            tracing::warn!(job = %job_id, error = %e, "cannot record a job event");
        }
    }
}
