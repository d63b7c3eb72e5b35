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
        // Our own message says which area and how much; keep it whole.
        if let StageError::Io { source, .. } = &e
            && crate::disk::find_out_of_space(source).is_some()
        {
            let StageError::Io { source, .. } = e else {
                unreachable!()
            };
            return ImportError::Io(source);
        }
        match &e {
            StageError::Io { source, .. } if archive::is_ours(source) => {
                ImportError::Io(io::Error::new(source.kind(), e.to_string()))
            }
            _ => ImportError::Invalid(e.to_string()),
        }
    }
}
