//! The queue only delivers; the job rows are the record. The reconciler
//! re-delivers what the queue lost: `pending` rows that no worker took
//! within [`PENDING_GRACE`] (Redis restarted empty, a push that failed
//! after the row was written) and `in_progress` rows whose worker stopped
//! beating. A second delivery is harmless: a worker claims a row only if it
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
    let pending_before = now - chrono::Duration::from_std(PENDING_GRACE)?;
    let stale_before = now - chrono::Duration::from_std(STALE_AFTER)?;
    let ids: Vec<String> = job::Entity::find()
        .select_only()
        .column(job::Column::Id)
        .filter(
            Condition::any()
                .add(
                    job::Column::Status
                        .eq(STATUS_PENDING)
                        .and(job::Column::EnqueuedAt.lt(pending_before)),
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
    for id in ids {
        if pushed.contains_key(&id) {
            continue;
        }
        queue.push(&id).await?;
        tracing::info!(job = %id, "re-delivered a job the queue had lost");
        pushed.insert(id, Instant::now());
    }
    Ok(())
}
