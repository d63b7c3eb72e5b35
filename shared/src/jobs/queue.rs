//! The two queues behind one type. apalis facts that shape this (see
//! docs/apalis-1.0.md): the queue name is set explicitly (its default is a
//! Rust type name), prefetch (`batch_size`) is the worker's concurrency, the
//! SQLite storage gets its own database file because its setup turns
//! `synchronous` off, and idle workers poll every 50 ms because apalis only
//! looks for work on heartbeats otherwise.

use std::time::Duration;

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use apalis_sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteStorage};

use super::JobEnvelope;
use crate::config::Config;

/// How often an idle worker looks for work (a push does not wake apalis'
/// workers): the mean wait of a job that arrives at an idle worker is half
/// of it.
pub const POLL: Duration = Duration::from_millis(50);
/// Wakes an idle worker every [`POLL`]. apalis' own `IntervalStrategy`
/// arms its next timer without polling it, so nothing is registered to
/// wake the worker after an empty fetch that completes at once: an idle
/// embedded worker then slept until its next queue heartbeat, and jobs
/// waited up to 2 s to start (seen in `bench-backup` with
/// `BENCH_LOG=apalis_core=debug`). This one leaves its timer registered
/// after every poll.
pub struct EveryPoll(tokio::time::Interval);

impl EveryPoll {
    pub fn new() -> Self {
        let mut interval = tokio::time::interval(POLL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self(interval)
    }
}

impl Default for EveryPoll {
    fn default() -> Self {
        Self::new()
    }
}

impl PollStrategy for EveryPoll {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _: &PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        let mut fired = false;
        // Until it is pending: that is what registers the waker.
        while self.0.poll_tick(cx).is_ready() {
            fired = true;
        }
        if fired {
            std::task::Poll::Ready(Some(()))
        } else {
            std::task::Poll::Pending
        }
    }
}

/// apalis' own liveness: a dead worker's deliveries go back to the queue
/// after `QUEUE_HEARTBEAT × QUEUE_MISSED_HEARTBEATS`.
pub const QUEUE_HEARTBEAT: Duration = Duration::from_secs(2);
pub const QUEUE_MISSED_HEARTBEATS: usize = 3;

#[derive(Clone)]
pub enum JobQueue {
    Sqlite(SqliteStorage<JobEnvelope>),
    Redis(RedisStorage<JobEnvelope>),
}

impl JobQueue {
    /// Opens the configured queue: Redis when `redis_url` is set, otherwise a
    /// SQLite file beside the control plane (`<data dir>/queue.db`).
    pub async fn open(config: &Config, prefetch: usize) -> anyhow::Result<Self> {
        let prefetch = prefetch.max(1);
        match &config.redis_url {
            Some(url) => {
                let (_, conn) = crate::redis_connection::connect(url).await?;
                let queue_config = apalis_redis::Config::default()
                    .queue(&config.queue_name)
                    .batch_size(prefetch)
                    .heartbeat_interval(QUEUE_HEARTBEAT)
                    .missed_heartbeats(QUEUE_MISSED_HEARTBEATS);
                Ok(Self::Redis(
                    RedisStorage::new(conn).with_config(queue_config),
                ))
            }
            None => {
                crate::private_fs::create_dir_all(&config.data_dir)?;
                let file = config.data_dir.join("queue.db");
                crate::private_fs::ensure_file(&file)?;
                let options = SqliteConnectOptions::new()
                    .filename(file)
                    .create_if_missing(true)
                    .busy_timeout(Duration::from_secs(10));
                // setup() sets its pragmas on one pooled connection only:
                // run it on a pool of one, then open the real pool.
                let setup = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options.clone())
                    .await?;
                SqliteStorage::setup(&setup).await?;
                setup.close().await;
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options.synchronous(sqlx::sqlite::SqliteSynchronous::Normal))
                    .await?;
                let queue_config = apalis_sqlite::Config::default()
                    .queue(&config.queue_name)
                    .batch_size(prefetch)
                    .heartbeat_interval(QUEUE_HEARTBEAT)
                    .missed_heartbeats(QUEUE_MISSED_HEARTBEATS);
                Ok(Self::Sqlite(
                    SqliteStorage::new(&pool).with_config(queue_config),
                ))
            }
        }
    }

    /// Deliveries waiting in the queue (not yet taken by a worker's fetch):
    /// apalis-redis' own stats calls are broken in 1.0, so this reads its
    /// keys (`<queue>:active` + `<queue>:scheduled`) or its SQLite table.
    pub async fn backlog(&self) -> anyhow::Result<u64> {
        match self {
            Self::Sqlite(storage) => {
                // `queue.db` holds our one queue.
                let count: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM Jobs WHERE status IN ('Pending', 'Queued') \
                     OR (status = 'Failed' AND attempts < max_attempts)",
                )
                .fetch_one(storage.pool())
                .await?;
                Ok(count as u64)
            }
            Self::Redis(storage) => {
                let config = storage.get_config();
                let mut conn = storage.clone().get_connection().clone();
                let (active, scheduled): (u64, u64) = redis::pipe()
                    .cmd("LLEN")
                    .arg(config.active_jobs_list())
                    .cmd("ZCARD")
                    .arg(config.scheduled_jobs_set())
                    .query_async(&mut conn)
                    .await?;
                Ok(active + scheduled)
            }
        }
    }

    /// Forgets deliveries that are over. apalis keeps every finished task
    /// (Redis: its payload in `<queue>:data`, its metadata in
    /// `<queue>:meta:<id>`, its id in `<queue>:done`/`:dead`, none of it
    /// expiring; SQLite: its row), while the job rows are our record, so
    /// without this the queue only grows. Returns how many were removed.
    pub async fn vacuum(&self) -> anyhow::Result<u64> {
        match self {
            Self::Sqlite(storage) => {
                let done = sqlx::query("DELETE FROM Jobs WHERE status IN ('Done', 'Killed')")
                    .execute(storage.pool())
                    .await?;
                Ok(done.rows_affected())
            }
            Self::Redis(storage) => {
                let config = storage.get_config().clone();
                let mut conn = storage.clone().get_connection().clone();
                let meta = config.job_meta_hash();
                let mut removed = 0u64;
                for set in [config.done_jobs_set(), config.dead_jobs_set()] {
                    loop {
                        let ids: Vec<String> = redis::cmd("SRANDMEMBER")
                            .arg(&set)
                            .arg(500)
                            .query_async(&mut conn)
                            .await?;
                        if ids.is_empty() {
                            break;
                        }
                        let mut pipe = redis::pipe();
                        pipe.cmd("HDEL")
                            .arg(config.job_data_hash())
                            .arg(&ids)
                            .ignore();
                        pipe.cmd("HDEL")
                            .arg(format!("{meta}:result"))
                            .arg(&ids)
                            .ignore();
                        for id in &ids {
                            pipe.cmd("DEL").arg(format!("{meta}:{id}")).ignore();
                        }
                        pipe.cmd("SREM").arg(&set).arg(&ids).ignore();
                        pipe.query_async::<()>(&mut conn).await?;
                        removed += ids.len() as u64;
                    }
                }
                Ok(removed)
            }
        }
    }

    /// Delivers `job_id` to a worker, at least once.
    pub async fn push(&self, job_id: &str) -> anyhow::Result<()> {
        let envelope = JobEnvelope {
            job_id: job_id.to_string(),
        };
        match self.clone() {
            Self::Sqlite(mut storage) => storage
                .push(envelope)
                .await
                .map_err(|e| anyhow::anyhow!("queue: {e}"))?,
            Self::Redis(mut storage) => storage
                .push(envelope)
                .await
                .map_err(|e| anyhow::anyhow!("queue: {e}"))?,
        }
        Ok(())
    }
}

/// Delivers again the project's jobs that waited behind another one: the
/// job that just ended (in a worker, or in the API) may have been it.
/// Taking them is still decided by the claim.
pub async fn redeliver_waiting(db: &sea_orm::DatabaseConnection, queue: &JobQueue, project: &str) {
    match super::store::wake_waiting(db, project).await {
        Ok(ids) => {
            for id in ids {
                if let Err(e) = queue.push(&id).await {
                    tracing::warn!(job = %id, error = %e, "cannot re-deliver a waiting job");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot look for waiting jobs"),
    }
}
