//! Jobs: every long operation runs as one. The `jobs` row is the record;
//! the queue (apalis: SQLite embedded, Redis in scale-out) only delivers
//! `JobEnvelope { job_id }`, never a parameter and never a secret.
//!
//! Who may do what:
//! - the API creates the job row (`pending`), then pushes the envelope;
//! - a worker claims the row (`in_progress`, attempt + 1, its id, a
//!   heartbeat every [`HEARTBEAT`]), runs the kind's module, and ends the row
//!   (`completed`, or `failed` with the cause); a retryable failure below the
//!   attempt limit puts the row back to `pending` and lets the queue retry;
//! - a row whose heartbeat is older than [`STALE_AFTER`] belongs to a dead
//!   worker: the next delivery may claim it again.
//!
//! - the queue's own retries are never used: a retry is the row put back to
//!   `pending` with a `run_after` time (backoff), which the reconciler
//!   re-delivers; a job that waits behind another job of its project is
//!   put back untouched, without using an attempt;
//! - every change a client can see is also an event (`job_events`, see
//!   [`events`]), appended by whoever made the change.
//!
//! This module is the job *record*, which the API and the workers share:
//! the row's lifecycle ([`store`]), the queue ([`queue`]), the events
//! ([`events`]), the kinds ([`JobKind`]) and their typed parameters
//! ([`params`]). The job *engine* (the worker loop, the reconciler, and one
//! module per kind) is the `supascale-worker` crate.

pub mod events;
pub mod kind;
pub mod params;
pub mod queue;
pub mod store;

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};

use serde::{Deserialize, Serialize};

pub use kind::{JobKind, failure_prefix};
pub use queue::JobQueue;

/// A spawned task that is aborted when its handle is dropped: what a job
/// or a worker starts beside itself must not outlive it. Awaiting it gives
/// the task's output (or why it did not finish).
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often a running job proves its worker alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A running job without a heartbeat for this long has lost its worker.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// What the queue carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobEnvelope {
    pub job_id: String,
}

pub const STATUS_PENDING: &str = "pending";
pub const STATUS_IN_PROGRESS: &str = "in_progress";
pub const STATUS_COMPLETED: &str = "completed";
pub const STATUS_FAILED: &str = "failed";

/// Why a job did not finish, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Temporary: a destination that timed out, a database that restarts.
    #[error("{0}")]
    Retry(String),
    /// Permanent: the input or the environment is wrong; retrying repeats it.
    #[error("{0}")]
    Abort(String),
    /// Permanent, and the caller's fault: an upload that is not what it
    /// claims, a hostile archive. The waiting request answers 400, not 500.
    #[error("{0}")]
    Invalid(String),
    /// Stopped on request (`POST /jobs/{id}/cancel`).
    #[error("Cancelled")]
    Cancelled,
}

/// `jobs.error_kind` of a job that failed with [`JobError::Invalid`].
pub const ERROR_KIND_INVALID_INPUT: &str = "invalid_input";

impl From<std::io::Error> for JobError {
    /// Every I/O failure is permanent, a full disk included (a retry fills
    /// it again).
    fn from(e: std::io::Error) -> Self {
        JobError::Abort(io_error_text(&e))
    }
}

impl From<sea_orm::DbErr> for JobError {
    /// The control plane not answering is temporary: the job's row is
    /// still there when it comes back.
    fn from(e: sea_orm::DbErr) -> Self {
        JobError::Retry(format!("control plane: {e}"))
    }
}

/// [`JobError::from`] an I/O error, for `map_err`.
pub fn io_error(e: std::io::Error) -> JobError {
    e.into()
}

/// A full disk in the contract's words (ours says which area and how
/// much); any other error as it is.
pub fn io_error_text(e: &std::io::Error) -> String {
    if let Some(ours) = crate::disk::find_out_of_space(e) {
        ours.to_string()
    } else if crate::disk::is_out_of_space(e) {
        format!("{}: {e}", crate::disk::INSUFFICIENT)
    } else {
        e.to_string()
    }
}

/// How long a job waits before attempt `attempt + 1`: 2 s, 4 s, 8 s, … up
/// to a minute.
pub fn backoff(attempt: i32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempt.clamp(1, 6) as u32).min(60))
}

impl JobError {
    /// Whether `job` gets another attempt after this error: the one rule
    /// for the job row, the kind's own row and the queue.
    pub fn will_retry(&self, job: &crate::entities::job::Model) -> bool {
        matches!(self, JobError::Retry(_)) && job.attempt < job.max_attempts
    }
}

/// A destination's error as a job error: a full disk is permanent and says
/// so; otherwise OpenDAL's `is_temporary()` decides.
pub fn destination_error(e: &crate::destinations::DestinationError) -> JobError {
    use crate::destinations::{DestinationError, permanent_io};
    // A full local destination has the contract's wording, like a full spool.
    if matches!(e, DestinationError::Storage(e) if permanent_io::is_storage_full(e)) {
        return JobError::Abort("Insufficient disk space".into());
    }
    // Any other full disk under it: retrying fills it again.
    if let Some(io) = crate::disk::out_of_space_in(e) {
        return JobError::Abort(format!("destination: {}", io_error_text(io)));
    }
    if e.is_temporary() {
        JobError::Retry(format!("destination: {e}"))
    } else {
        JobError::Abort(format!("destination: {e}"))
    }
}

/// The time as the control plane stores it (microseconds).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
