//! What a running job says about itself: its steps (the job row's
//! `progress` and a `step` event), its warnings (the row's `warnings` and a
//! `warning` event), and whether it has been asked to stop.
//!
//! Only the worker holding the job uses its reporter. A report that cannot
//! be written is logged, never fatal: losing a progress line must not fail
//! a backup.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::events::{self, Durability, EventBus};
use crate::entities::job;

pub struct Reporter {
    db: DatabaseConnection,
    bus: EventBus,
    job_id: String,
    warnings: Mutex<Vec<String>>,
    cancel: CancellationToken,
    /// When the last byte-count step was sent (they are throttled).
    last_bytes: Mutex<Option<Instant>>,
}

/// How often a long step reports its byte count.
const BYTES_EVERY: Duration = Duration::from_secs(1);

impl Reporter {
    pub fn new(db: DatabaseConnection, bus: EventBus, job_id: &str, warnings: Vec<String>) -> Self {
        Self {
            db,
            bus,
            job_id: job_id.to_string(),
            warnings: Mutex::new(warnings),
            cancel: CancellationToken::new(),
            last_bytes: Mutex::new(None),
        }
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// Step `current` of `total`: `step` names it, `message` says it to a person.
    pub async fn step(&self, step: &str, message: &str, current: u32, total: u32) {
        let progress = json!({
            "step": step,
            "message": message,
            "current": current,
            "total": total,
        });
        self.progress(progress).await;
    }

    /// Bytes done within a step; sent at most once a second.
    pub async fn bytes(&self, step: &str, message: &str, current: u32, total: u32, bytes: u64) {
        {
            // The first report comes a second into the work: a small job
            // says nothing it would not say with its next step anyway.
            let mut last = self.last_bytes.lock().expect("reporter lock");
            let since = *last.get_or_insert_with(Instant::now);
            if since.elapsed() < BYTES_EVERY {
                return;
            }
            *last = Some(Instant::now());
        }
        let progress = json!({
            "step": step,
            "message": message,
            "current": current,
            "total": total,
            "bytesDone": bytes,
        });
        self.progress(progress).await;
    }

    /// The row's `progress` and a `step` event, in one commit.
    async fn progress(&self, progress: serde_json::Value) {
        let mut data = progress.clone();
        data["status"] = json!("running");
        let appended = events::append(
            &self.db,
            &self.bus,
            &self.job_id,
            events::STEP,
            data,
            Some(progress.to_string()),
            Durability::Progress,
        )
        .await;
        if let Err(e) = appended {
            tracing::warn!(job = %self.job_id, error = %e, "cannot record progress");
        }
    }

    /// Something the user should know that does not stop the job.
    pub async fn warning(&self, message: &str) {
        let all = {
            let mut warnings = self.warnings.lock().expect("reporter lock");
            warnings.push(message.to_string());
            serde_json::to_string(&*warnings).unwrap_or_else(|_| "[]".into())
        };
        let saved = job::Entity::update_many()
            .col_expr(job::Column::Warnings, Expr::value(all))
            .filter(job::Column::Id.eq(self.job_id.clone()))
            .exec(&self.db)
            .await;
        if let Err(e) = saved {
            tracing::warn!(job = %self.job_id, error = %e, "cannot record a warning");
        }
        self.event(events::WARNING, json!({ "message": message }))
            .await;
    }

    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().expect("reporter lock").clone()
    }

    /// Resolves when the job has been asked to stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub(crate) fn cancel(&self) {
        self.cancel.cancel()
    }

    /// Records an event; the ones that end a job are durable.
    pub(crate) async fn event(&self, event: &str, data: serde_json::Value) {
        let durability = if events::is_final(event) {
            Durability::Durable
        } else {
            Durability::Progress
        };
        let appended = events::append(
            &self.db,
            &self.bus,
            &self.job_id,
            event,
            data,
            None,
            durability,
        )
        .await;
        if let Err(e) = appended {
            tracing::warn!(job = %self.job_id, error = %e, "cannot record a job event");
        }
    }
}
