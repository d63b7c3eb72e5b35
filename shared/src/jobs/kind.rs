//! The kinds of job: the one place that says each kind's name in the
//! database (`jobs.kind`), whether it excludes the project's other jobs,
//! and how its failure is worded for its client. The worker's dispatch
//! matches on [`JobKind`], so a kind added here without a module is a
//! compile error there, and a row naming a kind this build does not know is
//! a clear permanent failure instead of a silent skip.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobKind {
    Backup,
    Restore,
    ImportDatabase,
    ImportStorage,
    ImportFunctions,
    LiftShift,
    Verify,
    Copy,
}

/// A `jobs.kind` this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job kind {0:?}")]
pub struct UnknownKind(pub String);

impl JobKind {
    /// Every kind, in the order lists and metrics show them.
    pub const ALL: [JobKind; 8] = [
        JobKind::Backup,
        JobKind::Restore,
        JobKind::ImportDatabase,
        JobKind::ImportStorage,
        JobKind::ImportFunctions,
        JobKind::LiftShift,
        JobKind::Verify,
        JobKind::Copy,
    ];

    /// The three imports of `POST /projects/{id}/import/*`.
    pub const IMPORTS: [JobKind; 3] = [
        JobKind::ImportDatabase,
        JobKind::ImportStorage,
        JobKind::ImportFunctions,
    ];

    /// Its name in `jobs.kind`, the API and the metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
            JobKind::ImportDatabase => "import_database",
            JobKind::ImportStorage => "import_storage",
            JobKind::ImportFunctions => "import_functions",
            JobKind::LiftShift => "lift_shift",
            JobKind::Verify => "verify",
            JobKind::Copy => "copy",
        }
    }

    /// Kinds that write into a project: one of them never runs beside any
    /// other job of the same project. Other kinds (backups) only read, and
    /// may run beside each other.
    pub const fn is_exclusive(self) -> bool {
        matches!(
            self,
            JobKind::Restore
                | JobKind::ImportDatabase
                | JobKind::ImportStorage
                | JobKind::ImportFunctions
                | JobKind::LiftShift
        )
    }

    /// Kinds that carry a project only so that keys limited to other
    /// projects cannot see them: they read an artifact, never the project,
    /// so they neither wait for the project's other jobs nor hold any of
    /// them up.
    pub const fn is_independent(self) -> bool {
        matches!(self, JobKind::Verify | JobKind::Copy)
    }

    pub const fn is_import(self) -> bool {
        matches!(
            self,
            JobKind::ImportDatabase | JobKind::ImportStorage | JobKind::ImportFunctions
        )
    }

    /// How a failed job of this kind is worded for its client:
    /// `Backup failed: <cause>`.
    pub const fn failure_prefix(self) -> &'static str {
        match self {
            JobKind::Backup => "Backup failed",
            JobKind::Restore => "Restore failed",
            JobKind::LiftShift => "Migration failed",
            JobKind::Verify => "Verification failed",
            JobKind::Copy => "Copy failed",
            JobKind::ImportDatabase => "Database import failed",
            JobKind::ImportStorage => "Storage import failed",
            JobKind::ImportFunctions => "Functions import failed",
        }
    }

    /// The names of the kinds `keep` picks, for SQL lists and filters.
    pub fn names(keep: impl Fn(JobKind) -> bool) -> Vec<&'static str> {
        Self::ALL
            .into_iter()
            .filter(|k| keep(*k))
            .map(JobKind::as_str)
            .collect()
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// How a failed job of the kind named `kind` is worded; a kind this build
/// does not know still gets a wording (its row outlived a downgrade).
pub fn failure_prefix(kind: &str) -> &'static str {
    kind.parse::<JobKind>()
        .map(JobKind::failure_prefix)
        .unwrap_or("Job failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name() {
        for kind in JobKind::ALL {
            assert_eq!(kind.as_str().parse::<JobKind>(), Ok(kind));
        }
        assert_eq!("fulll".parse::<JobKind>(), Err(UnknownKind("fulll".into())));
        assert_eq!(failure_prefix("import_storage"), "Storage import failed");
        assert_eq!(failure_prefix("from_the_future"), "Job failed");
    }

    #[test]
    fn what_writes_a_project_excludes_and_verify_stands_apart() {
        assert_eq!(
            JobKind::names(JobKind::is_exclusive),
            [
                "restore",
                "import_database",
                "import_storage",
                "import_functions",
                "lift_shift"
            ]
        );
        assert_eq!(JobKind::names(JobKind::is_independent), ["verify", "copy"]);
        assert!(
            JobKind::IMPORTS
                .iter()
                .all(|k| k.is_import() && k.is_exclusive())
        );
        assert!(!JobKind::Backup.is_exclusive() && !JobKind::Backup.is_independent());
    }
}
