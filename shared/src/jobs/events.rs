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

use futures::StreamExt;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use tokio::sync::broadcast;

use super::store;
use crate::config::Config;
use crate::entities::job_event;

pub const START: &str = "start";
pub const STEP: &str = "step";
pub const WARNING: &str = "warning";
pub const COMPLETE: &str = "complete";
pub const ERROR: &str = "error";

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
        let client = redis::Client::open(url.expose())
            .map_err(|_| anyhow::anyhow!("SUPASCALE_REDIS_URL is not a valid Redis URL"))?;
        let conn = client
            .get_connection_manager_with_config(
                redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_connection_timeout(Some(Duration::from_secs(5))),
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "SUPASCALE_REDIS_URL: cannot connect to Redis: {}",
                    crate::redact::redact_urls(&e.to_string())
                )
            })?;
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

/// Appends an event to `job_id`'s record and wakes its streams. Returns the
/// event's sequence number.
pub async fn append(
    db: &impl ConnectionTrait,
    bus: &EventBus,
    job_id: &str,
    event: &str,
    data: serde_json::Value,
) -> Result<i64, DbErr> {
    let data = data.to_string();
    let mut tries = 0;
    let seq = loop {
        let last: Option<i64> = job_event::Entity::find()
            .select_only()
            .expr(Expr::col(job_event::Column::Seq).max())
            .filter(job_event::Column::JobId.eq(job_id))
            .into_tuple::<Option<i64>>()
            .one(db)
            .await?
            .flatten();
        let seq = last.unwrap_or(0) + 1;
        let row = job_event::ActiveModel {
            job_id: Set(job_id.to_string()),
            seq: Set(seq),
            event: Set(event.to_string()),
            data: Set(data.clone()),
            created_at: Set(store::now()),
        };
        match job_event::Entity::insert(row)
            .exec_without_returning(db)
            .await
        {
            Ok(_) => break seq,
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
    bus.publish(job_id).await;
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
