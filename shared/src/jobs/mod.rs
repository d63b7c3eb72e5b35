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

pub mod error;
pub mod events;
pub mod kind;
pub mod params;
pub mod queue;
pub mod store;

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};

use serde::{Deserialize, Serialize};

pub use error::{JobError, Outcome, destination_text};
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

// The status words as the rows store them, spelled once by [`Status`].
use crate::domain::Status;
pub const STATUS_PENDING: &str = Status::Pending.word();
pub const STATUS_IN_PROGRESS: &str = Status::InProgress.word();
pub const STATUS_COMPLETED: &str = Status::Completed.word();
pub const STATUS_FAILED: &str = Status::Failed.word();

/// `jobs.error_kind` of a job that failed with [`Outcome::InvalidInput`].
pub const ERROR_KIND_INVALID_INPUT: &str = "invalid_input";

/// [`JobError::from`] an I/O error, for `map_err`.
pub fn io_error(e: std::io::Error) -> JobError {
    JobError::Io(e)
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

/// The time as the control plane stores it (microseconds).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
