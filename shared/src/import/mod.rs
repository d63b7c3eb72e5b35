//! Imports of user-uploaded archives (from Supabase Cloud or another host)
//! into a project: what the upload is, and its files staged beside the
//! project's with the restore's hostile-archive checks
//! ([`crate::restore::staging`]).

pub mod archive;
pub mod functions;
pub mod storage;
#[cfg(test)]
mod testing;

use std::io;

use crate::restore::staging::StageError;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The user's input is wrong (answered 400); the message names the
    /// problem and, when there is one, the archive entry.
    #[error("{0}")]
    Invalid(String),
    /// Our side failed (disk full, a folder we cannot write).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The caller's stop flag was raised between two entries.
    #[error("the import was cancelled")]
    Cancelled,
}

impl From<StageError> for ImportError {
    fn from(e: StageError) -> Self {
        match &e {
            StageError::Io { source, .. } if is_ours(source) => {
                ImportError::Io(io::Error::new(source.kind(), e.to_string()))
            }
            _ => ImportError::Invalid(e.to_string()),
        }
    }
}

/// Whether an I/O error met while reading an archive and writing its
/// entries is ours. Decoders (gzip, tar, zip) report broken input as errors
/// without an OS error code; the kernel's codes are about our disk, except
/// the few an entry's own name causes.
pub(crate) fn is_ours(e: &io::Error) -> bool {
    e.raw_os_error()
        .is_some_and(|code| !matches!(code, libc::ENAMETOOLONG | libc::EILSEQ))
}

/// An error met while reading the archive, judged by [`is_ours`].
pub(crate) fn reading(what: &str, e: io::Error) -> ImportError {
    if is_ours(&e) {
        ImportError::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        ImportError::Invalid(format!("{what}: {e}"))
    }
}
