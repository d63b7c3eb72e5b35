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
//! One module per kind: [`backup`] so far.

pub mod backup;
pub mod queue;
pub mod reconciler;
pub mod store;
pub mod worker;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use queue::JobQueue;

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
}

impl JobError {
    /// Whether `job` gets another attempt after this error: the one rule
    /// for the job row, the kind's own row and the queue.
    pub fn will_retry(&self, job: &crate::entities::job::Model) -> bool {
        matches!(self, JobError::Retry(_)) && job.attempt < job.max_attempts
    }
}
