//! The worker loop, shared by `supascale-worker` and the in-process workers
//! of `supascale-api`: takes envelopes from the queue, claims the job row,
//! keeps its heartbeat, runs the kind's module and ends the row.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use sea_orm::DatabaseConnection;

use super::queue::POLL;
use super::{HEARTBEAT, JobEnvelope, JobError, JobQueue, backup, store};
use crate::config::Config;
use crate::destinations::Destinations;
use crate::master_key::MasterKey;

/// What a job module may use.
pub struct JobContext {
    pub db: DatabaseConnection,
    pub destinations: Destinations,
    pub master_key: MasterKey,
    pub config: Arc<Config>,
    /// This worker's name: host, process and a random part, so a restarted
    /// process never collides with its former self in apalis' registry.
    pub worker_id: String,
}

pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// Runs `concurrency` jobs at a time until `shutdown` resolves, then stops
/// taking jobs and lets running ones finish (up to 60 s).
pub async fn run(
    ctx: Arc<JobContext>,
    queue: JobQueue,
    concurrency: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let concurrency = concurrency.max(1);
    let reconciler = tokio::spawn(super::reconciler::run(ctx.db.clone(), queue.clone()));
    let _stop_reconciler = AbortOnDrop(reconciler);
    let name = ctx.worker_id.clone();
    let signal = async move {
        shutdown.await;
        Ok(())
    };
    match queue {
        JobQueue::Sqlite(storage) => {
            Monitor::new()
                .register(move |_| {
                    WorkerBuilder::new(name.clone())
                        .backend(storage.clone().poll_with_interval(POLL))
                        .concurrency(concurrency)
                        .data(ctx.clone())
                        .build(handle)
                })
                .shutdown_timeout(Duration::from_secs(60))
                .run_with_signal(signal)
                .await?
        }
        JobQueue::Redis(storage) => {
            Monitor::new()
                .register(move |_| {
                    WorkerBuilder::new(name.clone())
                        .backend(storage.clone().poll_with_interval(POLL))
                        .concurrency(concurrency)
                        .data(ctx.clone())
                        .build(handle)
                })
                .shutdown_timeout(Duration::from_secs(60))
                .run_with_signal(signal)
                .await?
        }
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One delivery. An `AbortError` (outermost, as apalis checks it) stops the
/// queue's own retries; any other error lets it deliver again.
async fn handle(envelope: JobEnvelope, ctx: Data<Arc<JobContext>>) -> Result<(), BoxDynError> {
    let ctx: Arc<JobContext> = (*ctx).clone();
    let job = match store::claim(&ctx.db, &envelope.job_id, &ctx.worker_id).await {
        Ok(Some(job)) => job,
        // Finished, or running elsewhere with a live heartbeat: nothing to do.
        Ok(None) => return Ok(()),
        Err(e) => return Err(format!("control plane: {e}").into()),
    };
    tracing::info!(job = %job.id, kind = %job.kind, attempt = job.attempt, "job started");
    let beat = {
        let ctx = ctx.clone();
        let id = job.id.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                if let Err(e) = store::heartbeat(&ctx.db, &id, &ctx.worker_id).await {
                    tracing::warn!(job = %id, error = %e, "heartbeat failed");
                }
            }
        })
    };
    let outcome = match job.kind.as_str() {
        "backup" => backup::run(&ctx, &job).await,
        other => Err(JobError::Abort(format!("unknown job kind {other}"))),
    };
    beat.abort();
    let ended = match &outcome {
        Ok(()) => store::finish(&ctx.db, &job.id, &ctx.worker_id, None).await,
        Err(e) if e.will_retry(&job) => {
            store::release(&ctx.db, &job.id, &ctx.worker_id, &e.to_string()).await
        }
        Err(e) => store::finish(&ctx.db, &job.id, &ctx.worker_id, Some(&e.to_string())).await,
    };
    if let Err(e) = ended {
        // The row stays in_progress; its heartbeat stops, so the job is retried.
        return Err(format!("control plane: {e}").into());
    }
    match outcome {
        Ok(()) => {
            tracing::info!(job = %job.id, "job completed");
            Ok(())
        }
        Err(e) if e.will_retry(&job) => {
            tracing::warn!(job = %job.id, cause = %e, "job failed; it will be retried");
            Err(e.to_string().into())
        }
        Err(e) => {
            tracing::warn!(job = %job.id, cause = %e, "job failed");
            Err(AbortError::new(e.to_string()).into())
        }
    }
}
