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

use super::{JobQueue, STALE_AFTER, STATUS_IN_PROGRESS, STATUS_PENDING, store};
use crate::entities::job;

pub const PENDING_GRACE: Duration = Duration::from_secs(5);
/// How old a pending row must be to be re-delivered while the queue is busy.
pub const BACKLOG_GRACE: Duration = Duration::from_secs(600);
pub const REPUSH_EVERY: Duration = Duration::from_secs(30);
const SWEEP_EVERY: Duration = Duration::from_secs(2);

pub async fn run(db: DatabaseConnection, queue: JobQueue) {
    let mut pushed: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        if let Err(e) = sweep(&db, &queue, &mut pushed).await {
            tracing::warn!(error = %e, "reconciler sweep failed");
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
