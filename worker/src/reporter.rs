//! What a running job says about itself: its steps (the job row's
//! `progress` and a `step` event), its warnings (the row's `warnings` and a
//! `warning` event), and whether it has been asked to stop.
//!
//! Only the worker holding the job uses its reporter. Reports are not
//! written one by one: they wait up to [`FLUSH_AFTER`] and go together in
//! one statement, and whatever is still waiting when the job ends goes with
//! its end ([`Reporter::take`]). A short job thus writes its `start`, its
//! steps and its `complete` in one commit instead of one each (measured:
//! that sequence of round trips was most of a short job's time). Each event
//! keeps the time it happened as its `created_at`.
//!
//! A report that cannot be written is logged, never fatal: losing a
//! progress line must not fail a backup.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;
use sea_orm::sea_query::UpdateStatement;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use supascale_shared::jobs::events::{self, Batch, Durability, EventBus, NewEvent};

pub struct Reporter {
    db: DatabaseConnection,
    bus: EventBus,
    job_id: String,
    warnings: Mutex<Vec<String>>,
    cancel: CancellationToken,
    /// When the last byte-count step was sent (they are throttled).
    last_bytes: Mutex<Option<Instant>>,
    /// Reports not written yet.
    pending: Mutex<Batch>,
    /// Held while a batch is written, so that batches (and the job's end)
    /// are numbered in the order their events happened.
    writing: tokio::sync::Mutex<()>,
    /// Wakes the flusher when the first report of a batch arrives.
    wake: Arc<tokio::sync::Notify>,
    /// See [`Reporter::record_with_end`].
    result_write: Mutex<Option<UpdateStatement>>,
}

/// How often a long step reports its byte count.
const BYTES_EVERY: Duration = Duration::from_secs(1);

/// How long a report may wait for others to be written with it: well
/// under what a person watching notices, and longer than a short job's
/// steps are apart.
pub const FLUSH_AFTER: Duration = Duration::from_millis(25);

impl Reporter {
    /// A reporter with its flusher, which stops when the reporter is
    /// dropped.
    pub fn start(
        db: DatabaseConnection,
        bus: EventBus,
        job_id: &str,
        warnings: Vec<String>,
    ) -> Arc<Self> {
        let reporter = Arc::new(Self {
            db,
            bus,
            job_id: job_id.to_string(),
            warnings: Mutex::new(warnings),
            cancel: CancellationToken::new(),
            last_bytes: Mutex::new(None),
            pending: Mutex::new(Batch::default()),
            writing: tokio::sync::Mutex::new(()),
            wake: Arc::new(tokio::sync::Notify::new()),
            result_write: Mutex::new(None),
        });
        tokio::spawn(flusher(Arc::downgrade(&reporter), reporter.wake.clone()));
        reporter
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The write that ends the row a job works for (a backup or a restore,
    /// `completed` or failed for good), to be made by the job's end in the
    /// same commit, and only if the job is still this worker's: the row
    /// and the job end together, and a worker whose job was taken over
    /// does not overwrite what the new one records.
    pub fn record_with_end(&self, update: UpdateStatement) {
        *self.result_write.lock().expect("reporter lock") = Some(update);
    }

    /// What [`Reporter::record_with_end`] left for the job's end.
    pub fn take_result_write(&self) -> Option<UpdateStatement> {
        self.result_write.lock().expect("reporter lock").take()
    }

    /// Step `current` of `total`: `step` names it, `message` says it to a person.
    pub async fn step(&self, step: &str, message: &str, current: u32, total: u32) {
        let progress = json!({
            "step": step,
            "message": message,
            "current": current,
            "total": total,
        });
        self.progress(progress);
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
        self.step_with_bytes(step, message, current, total, bytes)
            .await;
    }

    /// A step with its bytes done, sent as it is (the caller paces it).
    pub async fn step_with_bytes(
        &self,
        step: &str,
        message: &str,
        current: u32,
        total: u32,
        bytes: u64,
    ) {
        self.progress(json!({
            "step": step,
            "message": message,
            "current": current,
            "total": total,
            "bytesDone": bytes,
        }));
    }

    /// The row's `progress` and a `step` event, in one commit.
    fn progress(&self, progress: serde_json::Value) {
        let mut data = progress.clone();
        data["status"] = json!("running");
        self.report(NewEvent::now(events::STEP, &data), |batch| {
            batch.progress = Some(progress.to_string())
        });
    }

    /// Something the user should know that does not stop the job.
    pub async fn warning(&self, message: &str) {
        let all = {
            let mut warnings = self.warnings.lock().expect("reporter lock");
            warnings.push(message.to_string());
            serde_json::to_string(&*warnings).unwrap_or_else(|_| "[]".into())
        };
        self.report(
            NewEvent::now(events::WARNING, &json!({ "message": message })),
            |batch| batch.warnings = Some(all),
        );
    }

    /// Records an event that does not end the job (those go with the
    /// job's end: see [`Reporter::take`]).
    pub(crate) fn event(&self, event: &str, data: serde_json::Value) {
        debug_assert!(!events::is_final(event));
        self.report(NewEvent::now(event, &data), |_| {});
    }

    fn report(&self, event: NewEvent, change: impl FnOnce(&mut Batch)) {
        let first = {
            let mut pending = self.pending.lock().expect("reporter lock");
            pending.events.push(event);
            change(&mut pending);
            pending.events.len() == 1
        };
        if first {
            self.wake.notify_one();
        }
    }

    /// Writes what waits now.
    pub async fn flush(&self) {
        let _writing = self.writing.lock().await;
        let batch = std::mem::take(&mut *self.pending.lock().expect("reporter lock"));
        if batch.is_empty() {
            return;
        }
        let written = events::append_batch(
            &self.db,
            &self.bus,
            &self.job_id,
            &batch,
            Durability::Progress,
        )
        .await;
        if let Err(e) = written {
            tracing::warn!(job = %self.job_id, error = %e, "cannot record progress");
        }
    }

    /// Takes what waits, to be written with the job's end; the returned
    /// guard keeps the flusher from writing anything until that is done.
    pub(crate) async fn take(&self) -> (Batch, tokio::sync::MutexGuard<'_, ()>) {
        let writing = self.writing.lock().await;
        let batch = std::mem::take(&mut *self.pending.lock().expect("reporter lock"));
        (batch, writing)
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
}

/// Writes a reporter's reports [`FLUSH_AFTER`] after the first of each
/// batch, until the reporter is gone (its drop wakes this one last time).
async fn flusher(reporter: Weak<Reporter>, wake: Arc<tokio::sync::Notify>) {
    loop {
        wake.notified().await;
        tokio::time::sleep(FLUSH_AFTER).await;
        let Some(reporter) = reporter.upgrade() else {
            return;
        };
        reporter.flush().await;
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}
