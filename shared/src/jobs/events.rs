//! Job events: what `GET /jobs/{id}/events` streams.
//!
//! Every event is first a row in `job_events`, numbered per job from 1 (the
//! SSE `id`). The [`EventBus`] only wakes the streams that watch a job: it
//! carries the job id, never the event, because pub/sub drops messages (a
//! reconnecting subscriber, a Redis restart) and the table does not. A
//! stream subscribes first, then replays the table from where its client
//! stands, then reads the table again on every wake-up, so it never misses
//! an event and never sends one twice.
//!
//! Who writes events: the worker holding a job (all of them, while it runs)
//! and the API for a job that ends without a worker (cancelled while
//! pending, or never queued). A job has one writer at a time; the sequence
//! is still taken with a retry on conflict, so that a stale writer cannot
//! corrupt it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, TransactionTrait,
};
use tokio::sync::broadcast;

use crate::config::Config;
use crate::entities::{job, job_event};

pub const START: &str = "start";
pub const STEP: &str = "step";
pub const WARNING: &str = "warning";
pub const COMPLETE: &str = "complete";
pub const ERROR: &str = "error";

/// The `error` event's data: `{success: false, error: "<Kind> failed:
/// <cause>", duration, durationMs}` (`duration` as the contract's lift &
/// shift example names it, `durationMs` as every other event does; both
/// milliseconds).
pub fn failure(kind: &str, cause: &str, duration_ms: i64) -> serde_json::Value {
    serde_json::json!({
        "success": false,
        "error": format!("{}: {cause}", super::failure_prefix(kind)),
        "duration": duration_ms,
        "durationMs": duration_ms,
    })
}

/// Whether `event` ends its job's stream.
pub fn is_final(event: &str) -> bool {
    event == COMPLETE || event == ERROR
}

/// Wakes the streams watching a job: in-process in the embedded default,
/// Redis pub/sub when `SUPASCALE_REDIS_URL` is set (workers in other
/// processes publish, every API process listens).
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    local: broadcast::Sender<String>,
    redis: Option<RedisBus>,
}

struct RedisBus {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    channel: String,
}

impl EventBus {
    /// The in-process bus.
    pub fn local() -> Self {
        Self {
            inner: Arc::new(Inner {
                local: broadcast::channel(1024).0,
                redis: None,
            }),
        }
    }

    /// The configured bus: Redis pub/sub on `<queue name>:events` when Redis
    /// is configured, in-process otherwise.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let Some(url) = &config.redis_url else {
            return Ok(Self::local());
        };
        let (client, conn) = crate::redis_connection::connect(url).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                local: broadcast::channel(1024).0,
                redis: Some(RedisBus {
                    client,
                    conn,
                    channel: format!("{}:events", config.queue_name),
                }),
            }),
        })
    }

    /// Tells every listener that `job_id` has a new event. Best effort: a
    /// stream that misses it still finds the event on its next read.
    pub async fn publish(&self, job_id: &str) {
        match &self.inner.redis {
            None => {
                let _ = self.inner.local.send(job_id.to_string());
            }
            Some(bus) => {
                let mut conn = bus.conn.clone();
                let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(&bus.channel)
                    .arg(job_id)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = published {
                    tracing::warn!(job = %job_id, error = %e, "cannot publish a job event");
                }
            }
        }
    }

    /// Job ids as their events arrive, in this process.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.inner.local.subscribe()
    }

    /// Forwards Redis messages to this process' subscribers, reconnecting
    /// after a failure. Returns at once for the in-process bus.
    pub async fn listen(self) {
        let Some(bus) = &self.inner.redis else {
            return;
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            match bus.client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&bus.channel).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(200);
                        tracing::debug!(channel = %bus.channel, "listening for job events");
                        // Streams re-read their tables: anything published
                        // while we were away is found now.
                        let _ = self.inner.local.send(String::new());
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            if let Ok(job_id) = message.get_payload::<String>() {
                                let _ = self.inner.local.send(job_id);
                            }
                        }
                        tracing::warn!("lost the Redis job-event subscription; reconnecting");
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot subscribe to job events"),
                },
                Err(e) => tracing::warn!(
                    error = %crate::redact::redact_urls(&e.to_string()),
                    "cannot reach Redis for job events"
                ),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// How much an event must survive a crash of the control-plane database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The end of a job (`complete`, `error`): committed to disk before
    /// anyone is told.
    Durable,
    /// Progress: on PostgreSQL committed without waiting for the disk
    /// (`synchronous_commit = off`). The write-ahead log stays in order, so
    /// the job's next durable write (its end) makes it durable too; a crash
    /// before then loses at most the last fraction of a second of progress,
    /// never an ending.
    Progress,
}

/// An event that has happened and is not written yet.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: String,
    /// One line of JSON.
    pub data: String,
    /// When it happened (its `created_at`), not when it is written.
    pub at: DateTime<Utc>,
}

impl NewEvent {
    pub fn now(event: &str, data: &serde_json::Value) -> Self {
        Self {
            event: event.to_string(),
            data: data.to_string(),
            at: super::now(),
        }
    }
}

/// Events of one job written in one commit, with what they change in the
/// job's row.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub events: Vec<NewEvent>,
    /// The job's `progress` after these events.
    pub progress: Option<String>,
    /// The job's whole `warnings` list after these events.
    pub warnings: Option<String>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.progress.is_none() && self.warnings.is_none()
    }

    /// The events as one JSON array, for PostgreSQL's `jsonb_array_elements`.
    pub(crate) fn events_json(&self) -> String {
        serde_json::Value::Array(
            self.events
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "event": e.event,
                        "data": e.data,
                        "at": e.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    })
                })
                .collect(),
        )
        .to_string()
    }
}

/// PostgreSQL: the CTEs that number and insert a [`Batch`]'s events after
/// the job's last one: `$1` is the job, `${events}` the events as JSON;
/// `gate` names CTEs the insert waits on (their rows multiply it, so each
/// must yield one row or none).
pub(crate) fn insert_events_cte(events: usize, gate: &str) -> String {
    format!(
        "next AS (SELECT COALESCE(MAX(seq), 0) AS seq FROM job_events WHERE job_id = $1), \
         ins AS (INSERT INTO job_events (job_id, seq, event, data, created_at) \
                 SELECT $1, next.seq + e.ord, e.v->>'event', e.v->>'data', (e.v->>'at')::timestamptz \
                 FROM next{gate}, jsonb_array_elements(${events}::jsonb) WITH ORDINALITY AS e(v, ord) \
                 RETURNING seq)"
    )
}

/// Appends an event to `job_id`'s record (with the job's new `progress`,
/// when given, in the same commit) and wakes its streams. Returns the
/// event's sequence number.
pub async fn append(
    db: &DatabaseConnection,
    bus: &EventBus,
    job_id: &str,
    event: &str,
    data: serde_json::Value,
    progress: Option<String>,
    durability: Durability,
) -> Result<i64, DbErr> {
    let batch = Batch {
        events: vec![NewEvent::now(event, &data)],
        progress,
        warnings: None,
    };
    append_batch(db, bus, job_id, &batch, durability).await
}

/// Appends the batch's events in one commit (one statement on PostgreSQL)
/// and wakes the job's streams. Returns the last event's sequence number.
pub async fn append_batch(
    db: &DatabaseConnection,
    bus: &EventBus,
    job_id: &str,
    batch: &Batch,
    durability: Durability,
) -> Result<i64, DbErr> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut tries = 0;
    let seq = loop {
        let appended = match db.get_database_backend() {
            DbBackend::Postgres => append_postgres(db, job_id, batch, durability).await,
            backend => {
                let txn = db.begin().await?;
                match append_sqlite(&txn, backend, job_id, batch).await {
                    Ok(seq) => txn.commit().await.map(|_| seq),
                    Err(e) => Err(e),
                }
            }
        };
        match appended {
            Ok(seq) => break seq,
            // The primary key refused a number taken twice: take the next.
            Err(e)
                if tries < 5
                    && matches!(
                        e.sql_err(),
                        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                    ) =>
            {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    };
    if !batch.events.is_empty() {
        bus.publish(job_id).await;
    }
    Ok(seq)
}

/// PostgreSQL: one statement (one round trip) numbers and inserts the
/// events, updates the job's progress and warnings, and, for progress, sets
/// `synchronous_commit` for its own implicit transaction only.
async fn append_postgres(
    db: &DatabaseConnection,
    job_id: &str,
    batch: &Batch,
    durability: Durability,
) -> Result<i64, DbErr> {
    let sql = format!(
        "WITH relaxed AS (SELECT set_config('synchronous_commit', $5, true)), {}, \
         upd AS (UPDATE jobs SET progress = COALESCE($3::text, progress), \
                 warnings = COALESCE($4::text, warnings) \
                 WHERE id = $1 AND ($3::text IS NOT NULL OR $4::text IS NOT NULL)) \
         SELECT COALESCE(MAX(seq), 0) FROM ins",
        insert_events_cte(2, ", relaxed")
    );
    let commit = match durability {
        Durability::Durable => "on",
        Durability::Progress => "off",
    };
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [
                job_id.into(),
                batch.events_json().into(),
                batch.progress.clone().into(),
                batch.warnings.clone().into(),
                commit.into(),
            ],
        ))
        .await?
        .ok_or(DbErr::RecordNotInserted)?;
    row.try_get_by_index(0)
}

/// SQLite (embedded; commits do not wait for the disk): the inserts and the
/// row's changes, in the caller's transaction. Returns the last sequence
/// number.
pub(crate) async fn append_sqlite(
    txn: &impl ConnectionTrait,
    backend: DbBackend,
    job_id: &str,
    batch: &Batch,
) -> Result<i64, DbErr> {
    const SQL: &str = "INSERT INTO job_events (job_id, seq, event, data, created_at) \
         SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4 FROM job_events WHERE job_id = ?1 \
         RETURNING seq";
    let mut seq = 0;
    for event in &batch.events {
        let row = txn
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                SQL,
                [
                    job_id.into(),
                    event.event.clone().into(),
                    event.data.clone().into(),
                    event.at.into(),
                ],
            ))
            .await?
            .ok_or(DbErr::RecordNotInserted)?;
        seq = row.try_get_by_index(0)?;
    }
    let mut update = job::Entity::update_many().filter(job::Column::Id.eq(job_id));
    if let Some(progress) = &batch.progress {
        update = update.col_expr(job::Column::Progress, Expr::value(progress.clone()));
    }
    if let Some(warnings) = &batch.warnings {
        update = update.col_expr(job::Column::Warnings, Expr::value(warnings.clone()));
    }
    if batch.progress.is_some() || batch.warnings.is_some() {
        update.exec(txn).await?;
    }
    Ok(seq)
}

/// `job_id`'s events after `after`, in order.
pub async fn since(
    db: &impl ConnectionTrait,
    job_id: &str,
    after: i64,
) -> Result<Vec<job_event::Model>, DbErr> {
    job_event::Entity::find()
        .filter(job_event::Column::JobId.eq(job_id))
        .filter(job_event::Column::Seq.gt(after))
        .order_by_asc(job_event::Column::Seq)
        .limit(500)
        .all(db)
        .await
}
