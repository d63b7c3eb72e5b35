//! Why a job did not finish. Each variant names a *cause*; whether another
//! attempt can help, and whether the caller is to blame, is asked of the
//! cause ([`JobError::outcome`]), never chosen at the place that fails.
//! The text of each variant is what the job row's `error` and the waiting
//! request show, so a variant's `Display` is its message as written.

use crate::destinations::DestinationError;

/// What a failed attempt means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Another attempt may succeed (a timeout, a restarting database).
    Temporary,
    /// Retrying repeats it: the environment or the artifact is wrong.
    Permanent,
    /// Permanent, and the caller's fault: the waiting request answers 400.
    InvalidInput,
    /// Stopped on request.
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The control plane did not answer; the job's row is still there
    /// when it comes back.
    #[error("control plane: {0}")]
    ControlPlane(#[from] sea_orm::DbErr),
    /// A destination refused or failed; OpenDAL says whether that is
    /// temporary, a full disk never is.
    #[error("{}", destination_text(.0))]
    Destination(#[from] DestinationError),
    /// A destination failed its probe before anything was written to it
    /// (see `destinations::health`): the job fails at once with the
    /// store's answer instead of after every retry.
    #[error("{0}")]
    DestinationDown(String),
    /// A destination answered, but not with what was written or read (a
    /// short object, other bytes, a stream cut in the middle): the next
    /// attempt writes or reads again.
    #[error("{0}")]
    DestinationUnsure(String),
    /// The project's database did not answer (restarting, unreachable).
    #[error("{0}")]
    ProjectUnreachable(String),
    /// A local file or folder; a full disk too, since a retry fills it again.
    #[error("{}", super::io_error_text(.0))]
    Io(#[from] std::io::Error),
    /// `pg_dump`, `pg_restore` or `psql` could not run or failed.
    #[error("{0}")]
    Tool(String),
    /// `pg_restore` cannot read the dump's table of contents: not a dump,
    /// or a damaged one.
    #[error("{0}")]
    UnreadableDump(String),
    /// Our configuration cannot serve the job: a destination that is not
    /// configured, no encryption recipients or decryption key, a master
    /// key that does not open what it sealed.
    #[error("{0}")]
    Configuration(String),
    /// The job's own record or subject is not what it must be: a payload
    /// that does not parse, a row or project gone, a backup without manifest.
    #[error("{0}")]
    Record(String),
    /// The target project cannot take the job: not running, missing
    /// parts, a database that is not empty.
    #[error("{0}")]
    Target(String),
    /// The artifact is damaged or not what its manifest says.
    #[error("{0}")]
    Artifact(String),
    /// What the caller handed in (an upload) is not what it claims.
    #[error("{0}")]
    InvalidInput(String),
    /// A migration's source refused or cannot be reached (a wrong
    /// password, a rejected key, a host without a route): the caller's to
    /// fix, said within seconds rather than after every retry.
    #[error("{0}")]
    Source(String),
    /// A task of the job panicked, or an invariant of ours broke.
    #[error("{0}")]
    Internal(String),
    /// Stopped on request (`POST /jobs/{id}/cancel`).
    #[error("Cancelled")]
    Cancelled,
}

impl JobError {
    /// The one place that says what each cause means for the job.
    pub fn outcome(&self) -> Outcome {
        match self {
            JobError::ControlPlane(_)
            | JobError::DestinationUnsure(_)
            | JobError::ProjectUnreachable(_) => Outcome::Temporary,
            JobError::Destination(e) if e.is_temporary() && !is_full(e) => Outcome::Temporary,
            JobError::InvalidInput(_) | JobError::Source(_) => Outcome::InvalidInput,
            JobError::Cancelled => Outcome::Cancelled,
            JobError::Destination(_)
            | JobError::DestinationDown(_)
            | JobError::Io(_)
            | JobError::Tool(_)
            | JobError::UnreadableDump(_)
            | JobError::Configuration(_)
            | JobError::Record(_)
            | JobError::Target(_)
            | JobError::Artifact(_)
            | JobError::Internal(_) => Outcome::Permanent,
        }
    }

    pub fn is_temporary(&self) -> bool {
        self.outcome() == Outcome::Temporary
    }

    /// Out of disk space here or on a local destination: never retried,
    /// and never blamed on what was being read.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            JobError::Io(e) => {
                crate::disk::is_out_of_space(e) || crate::disk::find_out_of_space(e).is_some()
            }
            JobError::Destination(e) => is_full(e),
            _ => false,
        }
    }

    /// Whether `job` gets another attempt after this error: the one rule
    /// for the job row, the kind's own row and the queue.
    pub fn will_retry(&self, job: &crate::entities::job::Model) -> bool {
        self.is_temporary() && job.attempt < job.max_attempts
    }
}

impl From<crate::restore::source::OpenError> for JobError {
    fn from(e: crate::restore::source::OpenError) -> Self {
        use crate::restore::source::OpenError;
        match e {
            OpenError::NoIdentity | OpenError::WrongKey => JobError::Configuration(e.to_string()),
            OpenError::NotAge(_) | OpenError::Io(_) => JobError::Artifact(e.to_string()),
        }
    }
}

/// A destination that is out of space, whichever layer says so.
fn is_full(e: &DestinationError) -> bool {
    use crate::destinations::permanent_io;
    matches!(e, DestinationError::Storage(e) if permanent_io::is_storage_full(e))
        || crate::disk::out_of_space_in(e).is_some()
}

/// A destination's error in the job's words: a full local destination in
/// the contract's wording (like a full spool), any other as it is.
pub fn destination_text(e: &DestinationError) -> String {
    use crate::destinations::permanent_io;
    if matches!(e, DestinationError::Storage(e) if permanent_io::is_storage_full(e)) {
        return "Insufficient disk space".into();
    }
    if let Some(io) = crate::disk::out_of_space_in(e) {
        return format!("destination: {}", super::io_error_text(io));
    }
    format!("destination: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn opendal_error(
        kind: opendal::ErrorKind,
        temporary: bool,
        source: Option<io::Error>,
    ) -> JobError {
        let mut e = opendal::Error::new(kind, "write failed");
        if temporary {
            e = e.set_temporary();
        }
        if let Some(source) = source {
            e = e.set_source(source);
        }
        JobError::Destination(DestinationError::Storage(e))
    }

    #[test]
    fn the_cause_says_whether_another_attempt_can_help() {
        assert_eq!(
            JobError::ControlPlane(sea_orm::DbErr::Custom("gone".into())).outcome(),
            Outcome::Temporary
        );
        assert_eq!(
            opendal_error(opendal::ErrorKind::Unexpected, true, None).outcome(),
            Outcome::Temporary
        );
        assert_eq!(
            opendal_error(opendal::ErrorKind::PermissionDenied, false, None).outcome(),
            Outcome::Permanent
        );
        assert_eq!(
            JobError::ProjectUnreachable("no answer".into()).outcome(),
            Outcome::Temporary
        );
        assert_eq!(
            JobError::Tool("pg_dump: error".into()).outcome(),
            Outcome::Permanent
        );
        assert_eq!(
            JobError::InvalidInput("not a dump".into()).outcome(),
            Outcome::InvalidInput
        );
        assert_eq!(JobError::Cancelled.outcome(), Outcome::Cancelled);
    }

    #[test]
    fn a_full_disk_is_never_temporary_and_says_so() {
        // Even when OpenDAL marks the write temporary, a full disk fills again.
        let full = opendal_error(
            opendal::ErrorKind::Unexpected,
            true,
            Some(io::Error::from(io::ErrorKind::StorageFull)),
        );
        assert_eq!(full.outcome(), Outcome::Permanent);
        assert!(full.is_out_of_space());
        assert_eq!(full.to_string(), "Insufficient disk space");
        let local = JobError::Io(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(local.outcome(), Outcome::Permanent);
        assert!(local.is_out_of_space());
        assert!(
            local.to_string().starts_with(crate::disk::INSUFFICIENT),
            "{local}"
        );
        assert!(!JobError::Io(io::Error::from(io::ErrorKind::NotFound)).is_out_of_space());
    }

    #[test]
    fn an_artifact_that_does_not_open_is_blamed_on_the_key_or_the_bytes() {
        use crate::restore::source::OpenError;
        assert!(matches!(
            JobError::from(OpenError::WrongKey),
            JobError::Configuration(_)
        ));
        assert!(matches!(
            JobError::from(OpenError::NotAge("header".into())),
            JobError::Artifact(_)
        ));
        assert_eq!(
            JobError::from(OpenError::NoIdentity).to_string(),
            "Backup is encrypted and no decryption key is configured"
        );
    }
}
