//! Puts the file components of an artifact (storage, functions, config) back
//! into a project: everything is written aside first, then swapped in with
//! renames, and the previous content is kept until the caller commits.
//!
//! # Folders: [`StagedTree`]
//!
//! Entries are written into a staging folder *inside* the folder they
//! restore (`volumes/storage/.supascale-restore-<job>/`), so it is on the same
//! filesystem and the swap is renames, never copies. The folder itself is
//! never renamed: Supabase's containers bind-mount `volumes/storage` and
//! `volumes/functions`, and a container keeps the inode it mounted, so a
//! renamed-away folder would go on being served. Its *children* are swapped.
//!
//! [`Ready::swap_in`] takes every top-level name present before or in the
//! archive, moves the current child to `.supascale-old-<job>/<name>` and the
//! staged one to `<name>`. [`Ready::merge_in`] takes only the names in the
//! archive, so the target's other children stay (an import adds functions
//! or buckets to a project; a restore replaces the project). On Linux the two trade places in one
//! `renameat2(RENAME_EXCHANGE)`, so the name never disappears; elsewhere (or
//! on a filesystem without it) it is two renames with a moment in between.
//!
//! What "atomic" means here:
//! - per top-level child, a reader sees the whole old subtree or the whole
//!   new one, never a half-written file: every file is complete (and flushed
//!   with `syncfs`) before the first rename. Storage has one child (`stub`),
//!   so a storage restore flips at once;
//! - across children it is not: functions has one child per function and
//!   they flip one after the other;
//! - until [`Swapped::commit`] the old content stays in `.supascale-old-<job>`
//!   and [`Swapped::roll_back`] renames it back: same inodes, so bytes, modes,
//!   owners, xattrs and mtimes are exactly as they were; the folder's own
//!   mode, owner, xattrs and mtime are put back too;
//! - a crash in the middle of a swap is not undone by itself: some children
//!   are new, the rest are in the two hidden folders. [`StagedTree::begin`]
//!   then refuses to start for that job (the old copy may be the only one)
//!   until someone has looked and called [`remove_leftovers`].
//!
//! # Single files: [`StagedFiles`]
//!
//! Config files live at paths the caller chooses (project root + relative
//! path, or the project's extra absolute paths). Each is written next to its
//! destination as `.<name>.supascale-<job>`, then swapped with it; the old one
//! stays as `.<name>.supascale-old-<job>` until commit.
//!
//! # Hostile archives
//!
//! The same code will restore user-uploaded archives, so no entry is trusted:
//! paths with `..` or a root are refused; nothing is written through a
//! symlink or file the archive created (parents are checked with
//! `symlink_metadata`, files opened with `O_NOFOLLOW | O_EXCL`); symlinks
//! whose target leaves the restored folder are refused under
//! [`SymlinkPolicy::RejectEscaping`]; hard links must point at a file already
//! staged; device files and FIFOs are refused; set-user-ID and set-group-ID
//! bits of files are dropped (execute bits too with
//! [`Options::drop_exec_bits`]) and only `user.*` extended attributes are
//! restored (`security.capability` or `trusted.*` from an upload would hand
//! out privileges); [`Limits`] caps bytes and entries. A refused entry fails
//! the whole staging, which leaves the target untouched.
//!
//! The checks assume nothing else writes into the staging folder while it is
//! filled (it is created `0700`); a root process racing inside it could still
//! swap a folder for a symlink between check and use.
//!
//! # Pinned targets
//!
//! Jobs give a project's folders as pinned
//! ([`crate::project_folders::pinned`]): `/proc/self/fd/<fd>` of the folder
//! opened beneath the project's root, so the target itself (and, for
//! config files, the root they are found under) cannot be redirected by a
//! symlink put at its registered path: swaps and roll-backs happen in the
//! opened folder. Staging objects hold a clone of the pin while they use
//! its path (the fd number is never reused under them), and every message
//! names the registered path (`about` and friends go through
//! [`pinned::shown`]), never `/proc/self/fd/…`. Below the target, the
//! checks above still work by path: a folder of the live content swapped
//! for a symlink by a root process between `lstat` and use is not caught.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::disk::DiskGuard;
use crate::project_folders::{PinnedDir, pinned};
use xattr::FileExt;

// The module is split at its seams; the parts share the helpers above and
// each other's through these globs.
mod entries;
mod files;
mod paths;
mod swap;
#[cfg(test)]
mod tests;
mod tree;

use entries::*;
pub use files::*;
use paths::*;
use swap::*;
pub use tree::*;

const STAGING_PREFIX: &str = ".supascale-restore-";
const OLD_PREFIX: &str = ".supascale-old-";
const COPY_BUFFER: usize = 64 * 1024;
/// What one entry takes on disk at the least (a file system block).
const ENTRY_BLOCK: u64 = 4096;
const PAX_XATTR: &[u8] = b"SCHILY.xattr.";

/// What to do with a symlink whose target is absolute or climbs out of the
/// restored folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SymlinkPolicy {
    /// Restore it as it was: a backup of a real project may point anywhere.
    KeepAsIs,
    /// Refuse it: what an uploaded archive gets, since a server reading the
    /// restored folder would follow the link out of it.
    #[default]
    RejectEscaping,
}

/// Caps on what one staging may write; `None` is no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// File bytes, summed over all entries.
    pub max_bytes: Option<u64>,
    /// Entries of any kind, the folder itself included.
    pub max_entries: Option<u64>,
    /// File bytes as a multiple of the upload's size.
    pub expansion: Option<Expansion>,
    /// Free space kept while writing; `None` does not look.
    pub disk: Option<DiskReserve>,
}

/// At most `ratio` times `upload_bytes`: a bomb is stopped at a size that
/// grows with what was sent, not at one absolute cap for every upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expansion {
    pub ratio: u64,
    pub upload_bytes: u64,
}

impl Limits {
    /// Refuses `total` file bytes, `shown` being the entry that reaches it.
    pub fn check_bytes(&self, shown: &Path, total: u64) -> Result<(), StageError> {
        if let Some(limit) = self.max_bytes
            && total > limit
        {
            return Err(StageError::TooLarge {
                path: shown.to_path_buf(),
                limit,
                unit: "bytes",
            });
        }
        if let Some(expansion) = self.expansion
            && total > expansion.upload_bytes.saturating_mul(expansion.ratio)
        {
            return Err(StageError::Expands {
                path: shown.to_path_buf(),
                ratio: expansion.ratio,
                upload_bytes: expansion.upload_bytes,
            });
        }
        Ok(())
    }
}

/// Keep `reserve` bytes free where the staging writes (see [`crate::disk`]);
/// `area` names it in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskReserve {
    pub area: &'static str,
    pub reserve: u64,
    /// Free bytes there when the job began, if measured: an archive's
    /// headers are held against it before any entry's data is read.
    pub free: Option<u64>,
}

impl DiskReserve {
    /// Refuses `total` declared bytes that would not leave the reserve.
    pub fn check_declared(&self, total: u64) -> io::Result<()> {
        match self.free {
            Some(free) if free < total.saturating_add(self.reserve) => {
                Err(crate::disk::OutOfSpace {
                    area: self.area.to_string(),
                    free,
                    needed: total.saturating_add(self.reserve),
                }
                .into())
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub symlinks: SymlinkPolicy,
    pub limits: Limits,
    /// The component's folder in the archive (`storage`). Hard links name
    /// their target by its archive path, so without this they are refused.
    pub archive_prefix: Option<PathBuf>,
    /// Files are data, never programs (storage objects): their execute bits
    /// are dropped too, beside the set-ID bits every file loses.
    pub drop_exec_bits: bool,
}

/// What one entry became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// `sha256` is hex, as in the manifest.
    File {
        size: u64,
        sha256: String,
    },
    Dir,
    Symlink {
        target: PathBuf,
    },
    /// A second name for `to` (relative to the restored folder).
    HardLink {
        to: PathBuf,
    },
}

/// Why an entry was not staged. `path` is the entry's path in the archive.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{}: refused: `..` would climb out of the restored folder", .path.display())]
    ParentDir { path: PathBuf },
    #[error("{}: refused: absolute path", .path.display())]
    Absolute { path: PathBuf },
    #[error("{}: refused: goes through {}, a symlink from the same archive", .path.display(), .link.display())]
    ThroughSymlink { path: PathBuf, link: PathBuf },
    #[error("{}: refused: {} is not a folder", .path.display(), .parent.display())]
    NotADirectory { path: PathBuf, parent: PathBuf },
    #[error("{}: refused: conflicts with {} from the same archive", .path.display(), .other.display())]
    Conflict { path: PathBuf, other: PathBuf },
    #[error("{}: refused: symlink to {} leads out of the restored folder", .path.display(), .target.display())]
    EscapingSymlink { path: PathBuf, target: PathBuf },
    #[error("{}: refused: hard link to {}: {reason}", .path.display(), .target.display())]
    HardLink {
        path: PathBuf,
        target: PathBuf,
        reason: &'static str,
    },
    #[error("{}: refused: {kind} entries are not restored", .path.display())]
    Unsupported { path: PathBuf, kind: String },
    #[error("{}: refused: the name is reserved for the restore's own temporary files", .path.display())]
    Reserved { path: PathBuf },
    #[error("{}: the archive goes over the limit of {limit} {unit}", .path.display())]
    TooLarge {
        path: PathBuf,
        limit: u64,
        unit: &'static str,
    },
    #[error(
        "{}: the archive expands past the limit of {ratio} times the upload's size ({})",
        .path.display(),
        crate::disk::human_bytes(*.upload_bytes)
    )]
    Expands {
        path: PathBuf,
        ratio: u64,
        upload_bytes: u64,
    },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl StageError {
    /// The entry's path in the archive.
    pub fn path(&self) -> &Path {
        match self {
            Self::ParentDir { path }
            | Self::Absolute { path }
            | Self::ThroughSymlink { path, .. }
            | Self::NotADirectory { path, .. }
            | Self::Conflict { path, .. }
            | Self::EscapingSymlink { path, .. }
            | Self::HardLink { path, .. }
            | Self::Unsupported { path, .. }
            | Self::Reserved { path }
            | Self::TooLarge { path, .. }
            | Self::Expands { path, .. }
            | Self::Io { path, .. } => path,
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StageError + '_ {
    move |source| StageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An I/O error that says which path it was about (as users know it: a
/// pinned folder's `/proc/self/fd/…` shows as the registered path).
fn about(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", shown(path).display()))
}

/// `path` as users know it (see [`crate::project_folders::pinned::shown`]).
fn shown(path: &Path) -> PathBuf {
    crate::project_folders::pinned::shown(path)
}

// ---------------------------------------------------------------------------
// Limits

#[derive(Debug, Default)]
struct Budget {
    limits: Limits,
    bytes: u64,
    entries: u64,
}

impl Budget {
    fn count_entry(&mut self, shown: &Path) -> Result<(), StageError> {
        self.entries += 1;
        match self.limits.max_entries {
            Some(limit) if self.entries > limit => Err(StageError::TooLarge {
                path: shown.to_path_buf(),
                limit,
                unit: "entries",
            }),
            _ => Ok(()),
        }
    }

    /// Refuses before writing when the header already says it will not fit.
    fn would_fit(&self, shown: &Path, more: u64) -> Result<(), StageError> {
        self.limits
            .check_bytes(shown, self.bytes.saturating_add(more))
    }

    fn add_bytes(&mut self, shown: &Path, n: u64) -> Result<(), StageError> {
        self.would_fit(shown, n)?;
        self.bytes += n;
        Ok(())
    }
}

/// A previous attempt of `job_id` that died left its staging folder in
/// `dir` (and, if it died between swapping in and committing, the content
/// it replaced): the replaced content comes back first, so that a failure
/// of this attempt leaves the project's own files, then this attempt starts
/// over. Returns a warning (`what` names the job: restore, import) when
/// something was put back.
pub fn recover_dead_attempt(dir: &Path, job_id: &str, what: &str) -> io::Result<Option<String>> {
    let mut warning = None;
    for (owner, path, old) in leftovers_by_job(dir) {
        if owner != job_id {
            continue;
        }
        if old {
            put_back(dir, &path)?;
            warning = Some(format!(
                "An earlier attempt of this {what} stopped after swapping its files in; they \
                 were put back and the {what} done again from the start"
            ));
        } else {
            remove_leftover(&path)?;
        }
    }
    Ok(warning)
}
