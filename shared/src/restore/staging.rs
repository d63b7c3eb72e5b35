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
use xattr::FileExt;

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

/// An I/O error that says which path it was about.
fn about(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Folders

/// One folder component (storage or functions) being restored beside its
/// target. Dropping it removes the staging folder.
pub struct StagedTree {
    staging: StagingDir,
    options: Options,
    budget: Budget,
    /// Applied at `finish`: writing a child changes its folder's mtime, and
    /// a read-only folder would refuse the children still to come.
    dirs: BTreeMap<PathBuf, DeferredDir>,
    root: Option<NodeMeta>,
    buffer: Vec<u8>,
    /// Whether the archive's owners are applied (see [`StagedTree::ignore_owners`]).
    owners: bool,
    disk: Option<DiskGuard>,
}

#[derive(Debug, Clone, Copy)]
struct DeferredDir {
    mode: u32,
    mtime: u64,
}

impl StagedTree {
    /// Starts restoring into `target` (created if missing) with the default
    /// [`Options`]: escaping symlinks refused, no limits, no hard links.
    pub fn begin(target: &Path, job_id: &str) -> io::Result<StagedTree> {
        Self::begin_with(target, job_id, Options::default())
    }

    pub fn begin_with(target: &Path, job_id: &str, options: Options) -> io::Result<StagedTree> {
        check_job_id(job_id)?;
        fs::create_dir_all(target).map_err(|e| about(target, e))?;
        let old = target.join(old_name(job_id));
        if exists(&old)? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{}: left by an interrupted swap of this job; it may hold the only copy of \
                     the previous content, so look at it before removing it",
                    old.display()
                ),
            ));
        }
        let target_mtime = fs::metadata(target)
            .and_then(|m| m.modified())
            .map_err(|e| about(target, e))?;
        let path = target.join(staging_name(job_id));
        // Only this job writes this name: what is there is an earlier attempt's.
        remove_tree(&path).map_err(|e| about(&path, e))?;
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| about(&path, e))?;
        Ok(StagedTree {
            staging: StagingDir {
                target: target.to_path_buf(),
                path,
                job_id: job_id.to_string(),
                target_mtime,
                swapped: false,
            },
            budget: Budget {
                limits: options.limits,
                ..Budget::default()
            },
            disk: options
                .limits
                .disk
                .map(|d| DiskGuard::new(target, d.area, d.reserve)),
            options,
            dirs: BTreeMap::new(),
            root: None,
            buffer: vec![0; COPY_BUFFER],
            owners: true,
        })
    }

    pub fn target(&self) -> &Path {
        &self.staging.target
    }

    /// Checks, before the first entry, that `bytes` (what the archive
    /// declares it will write) fit beside the reserve.
    pub fn expect_bytes(&mut self, bytes: u64) -> io::Result<()> {
        match &mut self.disk {
            Some(guard) => guard.expect(bytes),
            None => Ok(()),
        }
    }

    /// The folder being filled. A caller that writes into it itself (an
    /// import setting a storage object's xattrs) must not follow symlinks
    /// in it: only entries staged by [`add`](Self::add) were checked.
    pub fn staging_dir(&self) -> &Path {
        &self.staging.path
    }

    /// Stages the target's current child `name` as a hard-link copy: the
    /// same folders (modes, owners, `user.*` xattrs and mtimes applied at
    /// [`finish`](Self::finish)) whose files are hard links to the current
    /// ones, so no byte is copied and each file keeps its inode, xattrs
    /// included. Entries added afterwards replace files of the copy without
    /// touching the originals (a staged name is unlinked, never written
    /// through). Returns how many files were linked; none when `name` does
    /// not exist.
    pub fn link_from_target(&mut self, name: &OsStr) -> io::Result<u64> {
        let rel = PathBuf::from(name);
        if rel.components().count() != 1
            || !matches!(rel.components().next(), Some(Component::Normal(_)))
            || name == staging_name(&self.staging.job_id)
            || name == old_name(&self.staging.job_id)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a child name of the target", rel.display()),
            ));
        }
        let source = self.staging.target.join(&rel);
        if !exists(&source)? {
            return Ok(0);
        }
        let dest = self.staging.path.join(&rel);
        self.clear(&dest, &rel, false)
            .map_err(|e| about(&dest, e))?;
        let mut linked = 0;
        let mut stack = vec![rel];
        while let Some(rel) = stack.pop() {
            let from = self.staging.target.join(&rel);
            let to = self.staging.path.join(&rel);
            let metadata = fs::symlink_metadata(&from).map_err(|e| about(&from, e))?;
            if !metadata.is_dir() {
                // `link` does not follow a symlink: the link itself is shared.
                fs::hard_link(&from, &to).map_err(|e| about(&from, e))?;
                linked += 1;
                continue;
            }
            DirBuilder::new()
                .mode(0o700)
                .create(&to)
                .map_err(|e| about(&to, e))?;
            let dir = open_dir_nofollow(&to).map_err(|e| about(&to, e))?;
            chown_quietly(std::os::unix::fs::fchown(
                &dir,
                Some(metadata.uid()),
                Some(metadata.gid()),
            ))
            .map_err(|e| about(&to, e))?;
            for (xattr_name, value) in user_xattrs_nofollow(&from)? {
                dir.set_xattr(&xattr_name, &value)
                    .map_err(|e| about(&to, e))?;
            }
            self.dirs.insert(
                rel.clone(),
                DeferredDir {
                    mode: dir_mode(metadata.mode()),
                    mtime: u64::try_from(metadata.mtime()).unwrap_or(0),
                },
            );
            for child in fs::read_dir(&from).map_err(|e| about(&from, e))? {
                let child = child.map_err(|e| about(&from, e))?;
                stack.push(rel.join(child.file_name()));
            }
        }
        Ok(linked)
    }

    /// Stages one entry. `relative` is its archive path without the
    /// component prefix; empty is the target folder itself.
    pub fn add<R: Read>(
        &mut self,
        relative: &Path,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<Added, StageError> {
        let shown = entry_path(entry);
        let rel = clean_relative(relative, &shown)?;
        self.budget.count_entry(&shown)?;
        // A block at least, whatever the entry's size: thousands of tiny
        // files fill a disk that their bytes alone never would.
        if let Some(disk) = &mut self.disk {
            disk.wrote(ENTRY_BLOCK).map_err(io_at(&shown))?;
        }
        let kind = entry.header().entry_type();
        refuse_special(kind, &shown)?;
        if let Some(Component::Normal(first)) = rel.components().next() {
            let job = &self.staging.job_id;
            if first == staging_name(job).as_os_str() || first == old_name(job).as_os_str() {
                return Err(StageError::Reserved { path: shown });
            }
        }
        if rel.as_os_str().is_empty() {
            if !kind.is_dir() {
                return Err(StageError::Unsupported {
                    path: shown,
                    kind: format!("{kind:?} as the restored folder itself"),
                });
            }
            self.root = Some(self.meta(entry, &shown)?);
            return Ok(Added::Dir);
        }
        let root = self.staging.path.clone();
        check_parents(&root, &rel, &shown, true)?;
        let dest = root.join(&rel);
        match kind {
            EntryType::Directory => {
                let meta = self.meta(entry, &shown)?;
                self.clear(&dest, &rel, true).map_err(io_at(&shown))?;
                match DirBuilder::new().mode(0o755).create(&dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_at(&shown)(e)),
                }
                let dir = open_dir_nofollow(&dest).map_err(io_at(&shown))?;
                own(&dir, &meta).map_err(io_at(&shown))?;
                set_xattrs(&dir, &meta).map_err(io_at(&shown))?;
                self.dirs.insert(
                    rel,
                    DeferredDir {
                        mode: dir_mode(meta.mode),
                        mtime: meta.mtime,
                    },
                );
                Ok(Added::Dir)
            }
            EntryType::Symlink => {
                let meta = self.meta(entry, &shown)?;
                let target = link_target(entry, &shown)?;
                if self.options.symlinks == SymlinkPolicy::RejectEscaping
                    && !stays_inside(&rel, &target)
                {
                    return Err(StageError::EscapingSymlink {
                        path: shown,
                        target,
                    });
                }
                self.clear(&dest, &rel, false).map_err(io_at(&shown))?;
                if let Err(e) = make_symlink(&target, &dest, &meta) {
                    let _ = fs::remove_file(&dest);
                    return Err(io_at(&shown)(e));
                }
                Ok(Added::Symlink { target })
            }
            EntryType::Link => {
                let to = self.hard_link_source(entry, &rel, &shown)?;
                self.clear(&dest, &rel, false).map_err(io_at(&shown))?;
                fs::hard_link(root.join(&to), &dest).map_err(io_at(&shown))?;
                Ok(Added::HardLink { to })
            }
            kind if is_file(kind) => {
                let mut meta = self.meta(entry, &shown)?;
                if self.options.drop_exec_bits {
                    meta.mode &= !0o111;
                }
                self.budget.would_fit(&shown, entry.size())?;
                self.clear(&dest, &rel, false).map_err(io_at(&shown))?;
                let written = write_file(
                    &dest,
                    entry,
                    &meta,
                    Sinks {
                        budget: &mut self.budget,
                        disk: self.disk.as_mut(),
                        buffer: &mut self.buffer,
                    },
                    &shown,
                    false,
                );
                // A caller that goes on after an error must not swap in a
                // partial file.
                if written.is_err() {
                    let _ = fs::remove_file(&dest);
                }
                let (size, sha256) = written?;
                Ok(Added::File { size, sha256 })
            }
            kind => Err(StageError::Unsupported {
                path: shown,
                kind: format!("{kind:?}"),
            }),
        }
    }

    /// Leaves the owners in the archive's headers unapplied: an upload's
    /// user and group ids mean nothing on this host, and a root worker would
    /// otherwise hand the files to whoever has those ids here.
    pub fn ignore_owners(&mut self) {
        self.owners = false;
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        shown: &Path,
    ) -> Result<NodeMeta, StageError> {
        let mut meta = entry_meta(entry, shown)?;
        if !self.owners {
            meta.uid = None;
            meta.gid = None;
        }
        Ok(meta)
    }

    /// Makes room at `dest` for a new entry; later entries win, as in tar.
    fn clear(&mut self, dest: &Path, rel: &Path, keep_dir: bool) -> io::Result<()> {
        let metadata = match fs::symlink_metadata(dest) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if metadata.is_dir() {
            if keep_dir {
                return Ok(());
            }
            remove_tree(dest)?;
            self.dirs.retain(|path, _| !path.starts_with(rel));
            Ok(())
        } else {
            fs::remove_file(dest)
        }
    }

    fn hard_link_source<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
        shown: &Path,
    ) -> Result<PathBuf, StageError> {
        let Some(prefix) = &self.options.archive_prefix else {
            return Err(StageError::Unsupported {
                path: shown.to_path_buf(),
                kind: "hard link (no archive prefix given)".into(),
            });
        };
        let target = link_target(entry, shown)?;
        let refuse = |reason| StageError::HardLink {
            path: shown.to_path_buf(),
            target: target.clone(),
            reason,
        };
        let clean = clean_relative(&target, shown).map_err(|_| refuse("not a plain path"))?;
        let to = clean
            .strip_prefix(prefix)
            .map_err(|_| refuse("outside the restored folder"))?
            .to_path_buf();
        if to.as_os_str().is_empty() {
            return Err(refuse("names the folder itself"));
        }
        if to == rel {
            return Err(refuse("names itself"));
        }
        check_parents(&self.staging.path, &to, shown, false)?;
        match fs::symlink_metadata(self.staging.path.join(&to)) {
            Ok(m) if m.is_file() => Ok(to),
            Ok(_) => Err(refuse("not a regular file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(refuse("not an earlier entry of the archive"))
            }
            Err(e) => Err(io_at(shown)(e)),
        }
    }

    /// Applies the folders' modes and mtimes, now that nothing more will be
    /// written below them.
    pub fn finish(self) -> io::Result<Ready> {
        // Deepest first: a path sorts before everything below it.
        for (rel, dir) in self.dirs.iter().rev() {
            let path = self.staging.path.join(rel);
            if check_parents(&self.staging.path, rel, rel, false).is_err() {
                continue;
            }
            let file = match open_dir_nofollow(&path) {
                Ok(f) => f,
                // Replaced by a later entry of another kind.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(about(&path, e)),
            };
            file.set_permissions(Permissions::from_mode(dir.mode))
                .map_err(|e| about(&path, e))?;
            set_mtime(&file, dir.mtime).map_err(|e| about(&path, e))?;
        }
        Ok(Ready {
            staging: self.staging,
            root: self.root,
        })
    }
}

/// A staged folder with its metadata applied, ready to swap in. Dropping it
/// removes the staging folder.
pub struct Ready {
    staging: StagingDir,
    root: Option<NodeMeta>,
}

impl Ready {
    pub fn target(&self) -> &Path {
        &self.staging.target
    }

    /// Swaps every top-level child of the target with its staged version
    /// (a child absent from the archive is moved out; one new in it is moved
    /// in). On error, what was already swapped is put back.
    pub fn swap_in(self) -> io::Result<Swapped> {
        self.swap(false)
    }

    /// Like [`swap_in`](Self::swap_in), but only the staged top-level
    /// children: the target's children absent from the archive stay where
    /// they are, untouched by the swap and by [`Swapped::roll_back`].
    pub fn merge_in(self) -> io::Result<Swapped> {
        self.swap(true)
    }

    fn swap(mut self, merge: bool) -> io::Result<Swapped> {
        let target = self.staging.target.clone();
        let staging = self.staging.path.clone();
        let job_id = self.staging.job_id.clone();
        let old = target.join(old_name(&job_id));
        flush_filesystem(&staging).map_err(|e| about(&staging, e))?;
        let previous = DirState {
            // Before the staging folder was made in it.
            mtime: Some(self.staging.target_mtime),
            ..read_dir_state(&target).map_err(|e| about(&target, e))?
        };
        let names = if merge {
            child_names(&[&staging], &job_id)?
        } else {
            child_names(&[&target, &staging], &job_id)?
        };
        DirBuilder::new()
            .mode(0o700)
            .create(&old)
            .map_err(|e| about(&old, e))?;
        let mut steps = Vec::with_capacity(names.len());
        for name in names {
            let outcome = (|| -> io::Result<Step> {
                let step = Step {
                    had_old: exists(&target.join(&name))?,
                    has_new: exists(&staging.join(&name))?,
                    name: name.clone(),
                };
                swap_paths(
                    &staging.join(&name),
                    &target.join(&name),
                    &old.join(&name),
                    step.had_old,
                    step.has_new,
                )?;
                Ok(step)
            })();
            match outcome {
                Ok(step) => steps.push(step),
                Err(e) => {
                    // The staged content goes back to staging, which is then
                    // removed with `self`.
                    let _ = undo_steps(&target, &staging, &old, &steps);
                    let _ = fs::remove_dir(&old);
                    let _ = write_dir_state(&target, &previous);
                    return Err(e);
                }
            }
        }
        let _ = fs::remove_dir(&staging);
        self.staging.swapped = true;
        let wanted = match &self.root {
            Some(root) => DirState::from_entry(root),
            // Nothing but the mtime changed, and that only by the swap.
            None => previous.clone(),
        };
        let swapped = Swapped {
            target: target.clone(),
            old,
            trash: staging,
            steps,
            previous,
            mtime_after: wanted.mtime,
        };
        if let Err(e) = write_dir_state(&target, &wanted) {
            let _ = swapped.roll_back();
            return Err(about(&target, e));
        }
        let _ = File::open(&target).and_then(|d| d.sync_all());
        Ok(swapped)
    }
}

/// The new content is in place and the previous one kept aside. Dropping it
/// without [`commit`](Self::commit) or [`roll_back`](Self::roll_back) keeps
/// both as they are (see [`remove_leftovers`]).
#[must_use = "commit or roll back, or the previous content stays in the target"]
pub struct Swapped {
    target: PathBuf,
    old: PathBuf,
    /// Where roll_back parks the new content before removing it.
    trash: PathBuf,
    steps: Vec<Step>,
    previous: DirState,
    mtime_after: Option<SystemTime>,
}

#[derive(Debug, Clone)]
struct Step {
    name: OsString,
    had_old: bool,
    has_new: bool,
}

impl Swapped {
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Removes the previous content.
    pub fn commit(self) -> io::Result<()> {
        remove_tree(&self.old).map_err(|e| about(&self.old, e))?;
        // Removing the old copy changed the folder's mtime again.
        if let Some(mtime) = self.mtime_after {
            File::open(&self.target)
                .and_then(|d| d.set_times(FileTimes::new().set_modified(mtime)))
                .map_err(|e| about(&self.target, e))?;
        }
        Ok(())
    }

    /// Puts the previous content back as it was and removes the new one.
    /// If a rename fails the rest are still tried, and the two hidden folders
    /// are left in place so nothing is lost.
    pub fn roll_back(self) -> io::Result<()> {
        match DirBuilder::new().mode(0o700).create(&self.trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(about(&self.trash, e)),
        }
        undo_steps(&self.target, &self.trash, &self.old, &self.steps)?;
        remove_tree(&self.trash).map_err(|e| about(&self.trash, e))?;
        fs::remove_dir(&self.old).map_err(|e| about(&self.old, e))?;
        write_dir_state(&self.target, &self.previous).map_err(|e| about(&self.target, e))?;
        let _ = File::open(&self.target).and_then(|d| d.sync_all());
        Ok(())
    }
}

/// Undoes `steps` last first, moving new content to `trash/<name>`; returns
/// the first error after trying them all.
fn undo_steps(target: &Path, trash: &Path, old: &Path, steps: &[Step]) -> io::Result<()> {
    let mut first = None;
    for step in steps.iter().rev() {
        if let Err(e) = unswap_paths(
            &trash.join(&step.name),
            &target.join(&step.name),
            &old.join(&step.name),
            step.had_old,
            step.has_new,
        ) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Names to swap: the children of `dirs` (the target's, but this job's
/// hidden folders, and the staged ones). Other jobs' leftovers are swapped
/// out like any child.
fn child_names(dirs: &[&Path], job_id: &str) -> io::Result<BTreeSet<OsString>> {
    let skip = [staging_name(job_id), old_name(job_id)];
    let mut names = BTreeSet::new();
    for dir in dirs.iter().copied() {
        for entry in fs::read_dir(dir).map_err(|e| about(dir, e))? {
            let name = entry.map_err(|e| about(dir, e))?.file_name();
            if !skip.contains(&name) {
                names.insert(name);
            }
        }
    }
    Ok(names)
}

/// Removes what interrupted restores left in `target`: staging folders and
/// kept previous content (`.supascale-restore-*`, `.supascale-old-*`). The
/// latter may be the only copy of what was there before a crashed swap, so
/// the caller decides when. Returns what was removed.
pub fn remove_leftovers(target: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(target) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(about(target, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| about(target, e))?;
        let name = entry.file_name();
        let bytes = name.as_bytes();
        if !(bytes.starts_with(STAGING_PREFIX.as_bytes())
            || bytes.starts_with(OLD_PREFIX.as_bytes()))
        {
            continue;
        }
        let path = entry.path();
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            remove_tree(&path).map_err(|e| about(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// What interrupted restores left in `target`: `(job id, folder, kept
/// previous content?)` for each `.supascale-restore-<job>` (staging, never
/// the only copy of anything) and `.supascale-old-<job>` (the content a
/// swap replaced).
pub fn leftovers_by_job(target: &Path) -> Vec<(String, PathBuf, bool)> {
    let Ok(entries) = fs::read_dir(target) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let (job, old) = match name.strip_prefix(STAGING_PREFIX) {
                Some(job) => (job.to_string(), false),
                None => (name.strip_prefix(OLD_PREFIX)?.to_string(), true),
            };
            Some((job, entry.path(), old))
        })
        .collect()
}

/// Undoes a swap whose process died before it committed or rolled back:
/// every child kept in `old` (a `.supascale-old-<job>` folder of `target`)
/// replaces the one now in `target`, and `old` is removed. Children the
/// swap added that were not there before cannot be told apart from the
/// project's own and stay (a restore that runs again replaces them).
pub fn put_back(target: &Path, old: &Path) -> io::Result<()> {
    for entry in fs::read_dir(old).map_err(|e| about(old, e))? {
        let entry = entry.map_err(|e| about(old, e))?;
        let name = entry.file_name();
        let current = target.join(&name);
        if fs::symlink_metadata(&current).is_ok() {
            let meta = fs::symlink_metadata(&current).map_err(|e| about(&current, e))?;
            if meta.is_dir() {
                remove_tree(&current).map_err(|e| about(&current, e))?;
            } else {
                fs::remove_file(&current).map_err(|e| about(&current, e))?;
            }
        }
        fs::rename(entry.path(), &current).map_err(|e| about(&current, e))?;
    }
    fs::remove_dir(old).map_err(|e| about(old, e))
}

/// What interrupted restores left among the files of `dir` (config files
/// are staged beside themselves): `(job id, file, kept previous content?)`
/// for each `.<name>.supascale-<job>` (a staged file, never the only copy of
/// anything) and `.<name>.supascale-old-<job>` (the file a swap replaced).
pub fn file_leftovers_by_job(dir: &Path) -> Vec<(String, PathBuf, bool)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                return None;
            }
            let (_, suffix) = name.rsplit_once(".supascale-")?;
            let (job, old) = match suffix.strip_prefix("old-") {
                Some(job) => (job, true),
                None => (suffix, false),
            };
            job.starts_with("job-")
                .then(|| (job.to_string(), entry.path(), old))
        })
        .collect()
}

/// Puts a file a dead swap replaced (`.<name>.supascale-old-<job>`) back
/// at `<name>`, over whatever the swap put there.
pub fn put_back_file(old: &Path) -> io::Result<()> {
    let name = old
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let live = name
        .strip_prefix('.')
        .and_then(|n| n.rsplit_once(".supascale-old-"))
        .map(|(live, _)| live.to_string())
        .filter(|live| !live.is_empty())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a kept file", old.display()),
            )
        })?;
    let live = old.with_file_name(live);
    fs::rename(old, &live).map_err(|e| about(&live, e))
}

/// Removes one leftover folder of [`leftovers_by_job`].
pub fn remove_leftover(path: &Path) -> io::Result<()> {
    remove_tree(path).map_err(|e| about(path, e))
}

/// The staging folder; removed when dropped, and the target's mtime put
/// back, unless it was swapped in.
struct StagingDir {
    target: PathBuf,
    path: PathBuf,
    job_id: String,
    /// Making and removing the staging folder changes it.
    target_mtime: SystemTime,
    swapped: bool,
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if self.swapped {
            return;
        }
        if remove_tree(&self.path).is_ok() {
            let _ = File::open(&self.target)
                .and_then(|d| d.set_times(FileTimes::new().set_modified(self.target_mtime)));
        }
    }
}

// ---------------------------------------------------------------------------
// Single files

/// Config files being restored, each beside its destination. Dropping it
/// removes the staged files and the folders it created.
pub struct StagedFiles {
    job_id: String,
    options: Options,
    budget: Budget,
    buffer: Vec<u8>,
    staged: Vec<StagedFile>,
    /// In creation order, so removal goes the other way.
    created_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
struct StagedFile {
    dest: PathBuf,
    temp: PathBuf,
    symlink: bool,
}

impl StagedFiles {
    /// With the default [`Options`] (escaping symlinks refused, no limits).
    pub fn begin(job_id: &str) -> io::Result<StagedFiles> {
        Self::begin_with(job_id, Options::default())
    }

    pub fn begin_with(job_id: &str, options: Options) -> io::Result<StagedFiles> {
        check_job_id(job_id)?;
        Ok(StagedFiles {
            job_id: job_id.to_string(),
            budget: Budget {
                limits: options.limits,
                ..Budget::default()
            },
            options,
            buffer: vec![0; COPY_BUFFER],
            staged: Vec::new(),
            created_dirs: Vec::new(),
        })
    }

    /// Stages the entry for `base/relative`. `base` is the caller's (project
    /// root, or `/` for extra paths) and trusted, symlinks included;
    /// `relative` comes from the archive and is checked. Folders named by
    /// the archive are created right away (a swap has nothing to replace);
    /// files and symlinks wait for [`swap_in`](Self::swap_in).
    pub fn add<R: Read>(
        &mut self,
        base: &Path,
        relative: &Path,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<Added, StageError> {
        let shown = entry_path(entry);
        let rel = clean_relative(relative, &shown)?;
        self.budget.count_entry(&shown)?;
        let kind = entry.header().entry_type();
        refuse_special(kind, &shown)?;
        let Some(name) = rel.file_name() else {
            return Err(StageError::Unsupported {
                path: shown,
                kind: "nameless".into(),
            });
        };
        if is_reserved_file_name(name, &self.job_id) {
            return Err(StageError::Reserved { path: shown });
        }
        let dest = base.join(&rel);
        // Staged destinations are not in place until the swap: an entry
        // below one would land in whatever is there now.
        for staged in &self.staged {
            if dest != staged.dest && dest.starts_with(&staged.dest) {
                return Err(if staged.symlink {
                    StageError::ThroughSymlink {
                        path: shown,
                        link: staged.dest.clone(),
                    }
                } else {
                    StageError::Conflict {
                        path: shown,
                        other: staged.dest.clone(),
                    }
                });
            }
            if dest != staged.dest && staged.dest.starts_with(&dest) && !kind.is_dir() {
                return Err(StageError::Conflict {
                    path: shown,
                    other: staged.dest.clone(),
                });
            }
        }
        self.ensure_parents(base, &rel, &shown)?;
        match kind {
            EntryType::Directory => {
                if self.staged.iter().any(|s| s.dest == dest) {
                    return Err(StageError::Conflict {
                        path: shown,
                        other: dest,
                    });
                }
                let meta = entry_meta(entry, &shown)?;
                match fs::metadata(&dest) {
                    Ok(m) if m.is_dir() => Ok(Added::Dir),
                    Ok(_) => Err(StageError::NotADirectory {
                        path: shown,
                        parent: rel,
                    }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        DirBuilder::new()
                            .mode(0o700)
                            .create(&dest)
                            .map_err(io_at(&shown))?;
                        self.created_dirs.push(dest.clone());
                        let dir = open_dir_nofollow(&dest).map_err(io_at(&shown))?;
                        own(&dir, &meta).map_err(io_at(&shown))?;
                        set_xattrs(&dir, &meta).map_err(io_at(&shown))?;
                        dir.set_permissions(Permissions::from_mode(dir_mode(meta.mode)))
                            .map_err(io_at(&shown))?;
                        Ok(Added::Dir)
                    }
                    Err(e) => Err(io_at(&shown)(e)),
                }
            }
            EntryType::Symlink => {
                let meta = entry_meta(entry, &shown)?;
                let target = link_target(entry, &shown)?;
                if self.options.symlinks == SymlinkPolicy::RejectEscaping
                    && !stays_inside(&rel, &target)
                {
                    return Err(StageError::EscapingSymlink {
                        path: shown,
                        target,
                    });
                }
                let temp = with_suffix(&dest, "", &self.job_id);
                remove_file_if_present(&temp).map_err(io_at(&shown))?;
                self.record(&dest, &temp, true);
                if let Err(e) = make_symlink(&target, &temp, &meta) {
                    self.staged.retain(|s| s.dest != dest);
                    let _ = fs::remove_file(&temp);
                    return Err(io_at(&shown)(e));
                }
                Ok(Added::Symlink { target })
            }
            kind if is_file(kind) => {
                let meta = entry_meta(entry, &shown)?;
                self.budget.would_fit(&shown, entry.size())?;
                let temp = with_suffix(&dest, "", &self.job_id);
                remove_file_if_present(&temp).map_err(io_at(&shown))?;
                self.record(&dest, &temp, false);
                let mut disk = self
                    .options
                    .limits
                    .disk
                    .map(|d| DiskGuard::new(dest.parent().unwrap_or(base), d.area, d.reserve));
                let written = write_file(
                    &temp,
                    entry,
                    &meta,
                    Sinks {
                        budget: &mut self.budget,
                        disk: disk.as_mut(),
                        buffer: &mut self.buffer,
                    },
                    &shown,
                    true,
                );
                // A caller that goes on after an error must not swap in a
                // partial file.
                if written.is_err() {
                    self.staged.retain(|s| s.dest != dest);
                    let _ = fs::remove_file(&temp);
                }
                let (size, sha256) = written?;
                Ok(Added::File { size, sha256 })
            }
            EntryType::Link => Err(StageError::Unsupported {
                path: shown,
                kind: "hard link".into(),
            }),
            kind => Err(StageError::Unsupported {
                path: shown,
                kind: format!("{kind:?}"),
            }),
        }
    }

    /// Recorded before writing, so a failed write's partial file is removed
    /// on drop too. A repeated destination keeps its place: later wins.
    fn record(&mut self, dest: &Path, temp: &Path, symlink: bool) {
        let file = StagedFile {
            dest: dest.to_path_buf(),
            temp: temp.to_path_buf(),
            symlink,
        };
        match self.staged.iter_mut().find(|s| s.dest == dest) {
            Some(slot) => *slot = file,
            None => self.staged.push(file),
        }
    }

    fn ensure_parents(&mut self, base: &Path, rel: &Path, shown: &Path) -> Result<(), StageError> {
        let mut at = base.to_path_buf();
        let mut so_far = PathBuf::new();
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        for component in parent.components() {
            at.push(component);
            so_far.push(component);
            // The host's own symlinks (a `volumes` on another disk) are
            // followed: `base` and what is already below it are trusted.
            match fs::metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(StageError::NotADirectory {
                        path: shown.to_path_buf(),
                        parent: so_far,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&at)
                        .map_err(io_at(shown))?;
                    self.created_dirs.push(at.clone());
                }
                Err(e) => return Err(io_at(shown)(e)),
            }
        }
        Ok(())
    }

    /// Replaces each destination with its staged file, keeping the old one
    /// beside it. On error, what was already replaced is put back.
    pub fn swap_in(mut self) -> io::Result<SwappedFiles> {
        for staged in &self.staged {
            let old = with_suffix(&staged.dest, "old-", &self.job_id);
            if exists(&old)? {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{}: left by an interrupted swap of this job; it may be the only copy \
                         of the previous file",
                        old.display()
                    ),
                ));
            }
            if fs::symlink_metadata(&staged.dest).is_ok_and(|m| m.is_dir()) {
                return Err(io::Error::other(format!(
                    "{}: is a folder; the archive has a file there",
                    staged.dest.display()
                )));
            }
        }
        let mut done: Vec<FileStep> = Vec::with_capacity(self.staged.len());
        for staged in &self.staged {
            let outcome = (|| -> io::Result<FileStep> {
                let step = FileStep {
                    dest: staged.dest.clone(),
                    temp: staged.temp.clone(),
                    old: with_suffix(&staged.dest, "old-", &self.job_id),
                    existed: exists(&staged.dest)?,
                };
                swap_paths(&step.temp, &step.dest, &step.old, step.existed, true)?;
                Ok(step)
            })();
            match outcome {
                Ok(step) => done.push(step),
                Err(e) => {
                    // Back to the temp names, which `self` removes when dropped.
                    for step in done.iter().rev() {
                        let _ = unswap_paths(&step.temp, &step.dest, &step.old, step.existed, true);
                    }
                    return Err(e);
                }
            }
        }
        let parents: BTreeSet<&Path> = done.iter().filter_map(|s| s.dest.parent()).collect();
        for parent in parents {
            // Durability of the renames; the swap has happened either way.
            let _ = File::open(parent).and_then(|d| d.sync_all());
        }
        self.staged.clear();
        Ok(SwappedFiles {
            steps: done,
            created_dirs: std::mem::take(&mut self.created_dirs),
        })
    }
}

impl Drop for StagedFiles {
    fn drop(&mut self) {
        for staged in &self.staged {
            let _ = fs::remove_file(&staged.temp);
        }
        for dir in self.created_dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Config files in place, previous ones kept beside them. Dropping it
/// without commit or roll_back keeps both.
#[must_use = "commit or roll back, or the previous files stay beside the new ones"]
pub struct SwappedFiles {
    steps: Vec<FileStep>,
    created_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
struct FileStep {
    dest: PathBuf,
    temp: PathBuf,
    old: PathBuf,
    existed: bool,
}

impl SwappedFiles {
    /// Removes the previous files; tries them all, returns the first error.
    pub fn commit(self) -> io::Result<()> {
        let mut first = None;
        for step in self.steps.iter().filter(|s| s.existed) {
            if let Err(e) = fs::remove_file(&step.old) {
                first.get_or_insert(about(&step.old, e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Puts the previous files back (and removes the ones that did not exist,
    /// and the folders created for them); tries them all, returns the first
    /// error.
    pub fn roll_back(self) -> io::Result<()> {
        let mut first = None;
        for step in self.steps.iter().rev() {
            let undone = unswap_paths(&step.temp, &step.dest, &step.old, step.existed, true)
                .and_then(|()| fs::remove_file(&step.temp).map_err(|e| about(&step.temp, e)));
            if let Err(e) = undone {
                first.get_or_insert(e);
            }
        }
        for dir in self.created_dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
        first.map_or(Ok(()), Err)
    }
}

/// `<parent>/.<name>.supascale-<kind><job>`
fn with_suffix(dest: &Path, kind: &str, job_id: &str) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(dest.file_name().unwrap_or_default());
    name.push(format!(".supascale-{kind}{job_id}"));
    dest.with_file_name(name)
}

fn is_reserved_file_name(name: &OsStr, job_id: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.ends_with(format!(".supascale-{job_id}").as_bytes())
        || bytes.ends_with(format!(".supascale-old-{job_id}").as_bytes())
}

// ---------------------------------------------------------------------------
// Swapping

/// Moves `live` to `kept` and `new` to `live` (whichever exist). On error
/// nothing has moved.
fn swap_paths(
    new: &Path,
    live: &Path,
    kept: &Path,
    had_old: bool,
    has_new: bool,
) -> io::Result<()> {
    match (had_old, has_new) {
        (true, true) => {
            if exchange(new, live).map_err(|e| about(live, e))? {
                if let Err(e) = fs::rename(new, kept) {
                    let _ = exchange(new, live);
                    return Err(about(kept, e));
                }
            } else {
                fs::rename(live, kept).map_err(|e| about(live, e))?;
                if let Err(e) = fs::rename(new, live) {
                    let _ = fs::rename(kept, live);
                    return Err(about(live, e));
                }
            }
        }
        (true, false) => fs::rename(live, kept).map_err(|e| about(live, e))?,
        (false, true) => fs::rename(new, live).map_err(|e| about(live, e))?,
        (false, false) => {}
    }
    Ok(())
}

/// The reverse of [`swap_paths`]: `live` goes back to `new`, `kept` to `live`.
fn unswap_paths(
    new: &Path,
    live: &Path,
    kept: &Path,
    had_old: bool,
    has_new: bool,
) -> io::Result<()> {
    match (had_old, has_new) {
        (true, true) => {
            if exchange(kept, live).map_err(|e| about(live, e))? {
                fs::rename(kept, new).map_err(|e| about(kept, e))?;
            } else {
                fs::rename(live, new).map_err(|e| about(live, e))?;
                fs::rename(kept, live).map_err(|e| about(kept, e))?;
            }
        }
        (true, false) => fs::rename(kept, live).map_err(|e| about(kept, e))?,
        (false, true) => fs::rename(live, new).map_err(|e| about(live, e))?,
        (false, false) => {}
    }
    Ok(())
}

/// Trades the names of `a` and `b` in one step, so neither is ever missing.
/// `Ok(false)` where the kernel or filesystem cannot; the caller then uses
/// two renames.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> io::Result<bool> {
    Ok(false)
}

/// Writes the staged data to disk before it is renamed into place, so a
/// crash after the swap cannot leave empty files under the final names. One
/// `syncfs` costs far less than an fsync per storage object.
#[cfg(target_os = "linux")]
fn flush_filesystem(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(path)?;
    // SAFETY: the descriptor stays open for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn flush_filesystem(_path: &Path) -> io::Result<()> {
    // SAFETY: no arguments, no memory.
    unsafe { libc::sync() };
    Ok(())
}

/// The target folder's own metadata, read before the swap to put back on
/// roll back, or taken from the archive's entry for the folder.
#[derive(Debug, Clone)]
struct DirState {
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    xattrs: Vec<(OsString, Vec<u8>)>,
    mtime: Option<SystemTime>,
}

impl DirState {
    fn from_entry(meta: &NodeMeta) -> DirState {
        DirState {
            mode: dir_mode(meta.mode),
            uid: meta.uid,
            gid: meta.gid,
            xattrs: meta.xattrs.clone(),
            mtime: mtime_of(meta.mtime),
        }
    }
}

fn read_dir_state(path: &Path) -> io::Result<DirState> {
    let metadata = fs::metadata(path)?;
    Ok(DirState {
        mode: metadata.mode() & 0o7777,
        uid: Some(metadata.uid()),
        gid: Some(metadata.gid()),
        xattrs: user_xattrs(path)?,
        mtime: Some(metadata.modified()?),
    })
}

fn write_dir_state(path: &Path, state: &DirState) -> io::Result<()> {
    if state.uid.is_some() || state.gid.is_some() {
        chown_quietly(std::os::unix::fs::chown(path, state.uid, state.gid))?;
    }
    fs::set_permissions(path, Permissions::from_mode(state.mode))?;
    for (name, _) in user_xattrs(path)? {
        if !state.xattrs.iter().any(|(wanted, _)| *wanted == name) {
            xattr::remove_deref(path, &name)?;
        }
    }
    for (name, value) in &state.xattrs {
        xattr::set_deref(path, name, value)?;
    }
    if let Some(mtime) = state.mtime {
        File::open(path)?.set_times(FileTimes::new().set_modified(mtime))?;
    }
    Ok(())
}

/// The `user.*` xattrs of `path` itself, a folder of the target being
/// copied.
fn user_xattrs_nofollow(path: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(about(path, e)),
    };
    let mut out = Vec::new();
    for name in names {
        if name.as_bytes().starts_with(b"user.")
            && let Some(value) = xattr::get(path, &name).map_err(|e| about(path, e))?
        {
            out.push((name, value));
        }
    }
    Ok(out)
}

fn user_xattrs(path: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    // The target may be a symlink to the real folder (the caller's choice);
    // its xattrs are the folder's, as its mode and mtime are.
    let names = match xattr::list_deref(path) {
        Ok(names) => names,
        // A filesystem without xattrs has none to keep.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if name.as_bytes().starts_with(b"user.")
            && let Some(value) = xattr::get_deref(path, &name)?
        {
            out.push((name, value));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Writing entries

/// What the header and PAX records say about an entry.
#[derive(Debug, Clone)]
struct NodeMeta {
    mode: u32,
    mtime: u64,
    uid: Option<u32>,
    gid: Option<u32>,
    /// `user.*` only.
    xattrs: Vec<(OsString, Vec<u8>)>,
}

fn entry_meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    shown: &Path,
) -> Result<NodeMeta, StageError> {
    let header = entry.header();
    let mode = header.mode().map_err(io_at(shown))?;
    let mtime = header.mtime().map_err(io_at(shown))?;
    let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok());
    let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok());
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions().map_err(io_at(shown))? {
        for extension in extensions {
            let extension = extension.map_err(io_at(shown))?;
            let Some(name) = extension.key_bytes().strip_prefix(PAX_XATTR) else {
                continue;
            };
            if name.starts_with(b"user.") {
                xattrs.push((
                    OsStr::from_bytes(name).to_os_string(),
                    extension.value_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(NodeMeta {
        mode,
        mtime,
        uid,
        gid,
        xattrs,
    })
}

/// What a file's bytes are counted against while [`write_file`] copies them.
struct Sinks<'a> {
    budget: &'a mut Budget,
    disk: Option<&'a mut DiskGuard>,
    buffer: &'a mut [u8],
}

/// Streams the entry's bytes into a new file at `dest` (never through a
/// symlink), applies its metadata, and returns size and SHA-256 (hex).
fn write_file<R: Read>(
    dest: &Path,
    entry: &mut tar::Entry<'_, R>,
    meta: &NodeMeta,
    sinks: Sinks<'_>,
    shown: &Path,
    sync: bool,
) -> Result<(u64, String), StageError> {
    let Sinks {
        budget,
        mut disk,
        buffer,
    } = sinks;
    let declared = entry.size();
    let sparse = entry.header().entry_type() == EntryType::GNUSparse;
    // A large file is checked against the disk before its first byte; the
    // guard's periodic look catches what headers do not say.
    if declared >= crate::disk::CHECK_EVERY
        && let Some(disk) = disk.as_deref_mut()
    {
        disk.check_next(declared).map_err(io_at(shown))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(io_at(shown))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = match entry.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_at(shown)(e)),
        };
        budget.add_bytes(shown, n as u64)?;
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n]).map_err(io_at(shown))?;
        if let Some(disk) = disk.as_deref_mut() {
            disk.wrote(n as u64).map_err(io_at(shown))?;
        }
        size += n as u64;
    }
    if !sparse && size != declared {
        return Err(io_at(shown)(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the archive ends after {size} of {declared} bytes"),
        )));
    }
    // Owner before mode: chown clears set-ID bits.
    own(&file, meta).map_err(io_at(shown))?;
    file.set_permissions(Permissions::from_mode(file_mode(meta.mode)))
        .map_err(io_at(shown))?;
    set_xattrs(&file, meta).map_err(io_at(shown))?;
    set_mtime(&file, meta.mtime).map_err(io_at(shown))?;
    if sync {
        file.sync_all().map_err(io_at(shown))?;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

fn make_symlink(target: &Path, dest: &Path, meta: &NodeMeta) -> io::Result<()> {
    std::os::unix::fs::symlink(target, dest)?;
    if meta.uid.is_some() || meta.gid.is_some() {
        chown_quietly(std::os::unix::fs::lchown(dest, meta.uid, meta.gid))?;
    }
    // Linux refuses user.* xattrs on symlinks, so only the mtime.
    set_symlink_mtime(dest, meta.mtime)
}

fn set_symlink_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: libc::time_t::try_from(mtime).unwrap_or(libc::time_t::MAX),
            tv_nsec: 0,
        },
    ];
    // SAFETY: a NUL-terminated path and a two-element array, both alive for
    // the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn own(file: &File, meta: &NodeMeta) -> io::Result<()> {
    if meta.uid.is_none() && meta.gid.is_none() {
        return Ok(());
    }
    chown_quietly(std::os::unix::fs::fchown(file, meta.uid, meta.gid))
}

/// Only root may give files away; anyone else keeps them as their own.
fn chown_quietly(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL)) => Ok(()),
        other => other,
    }
}

fn set_xattrs(file: &File, meta: &NodeMeta) -> io::Result<()> {
    for (name, value) in &meta.xattrs {
        file.set_xattr(name, value)?;
    }
    Ok(())
}

fn set_mtime(file: &File, mtime: u64) -> io::Result<()> {
    match mtime_of(mtime) {
        Some(time) => file.set_times(FileTimes::new().set_modified(time)),
        None => Ok(()),
    }
}

fn mtime_of(seconds: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// Set-ID bits on a restored file could hand an uploaded binary someone
/// else's rights; storage objects and functions never need them.
fn file_mode(mode: u32) -> u32 {
    mode & 0o1777
}

/// Set-group-ID on a folder only makes new files inherit its group; keep it.
fn dir_mode(mode: u32) -> u32 {
    mode & 0o3777
}

fn is_file(kind: EntryType) -> bool {
    matches!(
        kind,
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
    )
}

fn refuse_special(kind: EntryType, shown: &Path) -> Result<(), StageError> {
    let name = match kind {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO",
        _ => return Ok(()),
    };
    Err(StageError::Unsupported {
        path: shown.to_path_buf(),
        kind: name.into(),
    })
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, shown: &Path) -> Result<PathBuf, StageError> {
    match entry.link_name_bytes() {
        Some(bytes) if !bytes.is_empty() => Ok(PathBuf::from(OsStr::from_bytes(&bytes))),
        _ => Err(StageError::Unsupported {
            path: shown.to_path_buf(),
            kind: "link without a target".into(),
        }),
    }
}

fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&entry.path_bytes()))
}

fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

// ---------------------------------------------------------------------------
// Paths

/// `relative` with `.` dropped; `..` and roots refused.
fn clean_relative(relative: &Path, shown: &Path) -> Result<PathBuf, StageError> {
    let mut clean = PathBuf::new();
    for component in relative.components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(StageError::ParentDir {
                    path: shown.to_path_buf(),
                });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(StageError::Absolute {
                    path: shown.to_path_buf(),
                });
            }
        }
    }
    Ok(clean)
}

/// Checks that every folder above `rel` under `root` is a real folder, never
/// a symlink; creates the missing ones when `create`.
fn check_parents(root: &Path, rel: &Path, shown: &Path, create: bool) -> Result<(), StageError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut at = root.to_path_buf();
    let mut so_far = PathBuf::new();
    for component in parent.components() {
        at.push(component);
        so_far.push(component);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(StageError::ThroughSymlink {
                    path: shown.to_path_buf(),
                    link: so_far,
                });
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StageError::NotADirectory {
                    path: shown.to_path_buf(),
                    parent: so_far,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                match DirBuilder::new().mode(0o755).create(&at) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_at(shown)(e)),
                }
            }
            Err(e) => return Err(io_at(shown)(e)),
        }
    }
    Ok(())
}

/// Whether a symlink at `link` (relative to the restored folder) pointing at
/// `target` resolves inside that folder. The kernel resolves `..` after
/// following earlier components, so `a/..` is not `.` when `a` is a link:
/// only leading `..`s are accepted, no more than the link's depth, then
/// plain names. Every other symlink obeys the same rule, so a plain name
/// that is a link stays inside too.
fn stays_inside(link: &Path, target: &Path) -> bool {
    let depth = link.components().count().saturating_sub(1);
    let mut ups = 0;
    let mut named = false;
    for component in target.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir if named => return false,
            Component::ParentDir => ups += 1,
            Component::Normal(_) => named = true,
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    ups <= depth
}

fn exists(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(about(path, e)),
    }
}

fn remove_file_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes a folder and everything below it, never following symlinks.
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // Read-only folders from the archive stop a non-root process
            // from emptying them.
            make_writable(path);
            match fs::remove_dir_all(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

fn make_writable(path: &Path) {
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(metadata) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !metadata.is_dir() {
            continue;
        }
        let _ = fs::set_permissions(
            &dir,
            Permissions::from_mode((metadata.mode() & 0o7777) | 0o700),
        );
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
}

fn staging_name(job_id: &str) -> OsString {
    format!("{STAGING_PREFIX}{job_id}").into()
}

fn old_name(job_id: &str) -> OsString {
    format!("{OLD_PREFIX}{job_id}").into()
}

/// The job id becomes part of file names.
fn check_job_id(job_id: &str) -> io::Result<()> {
    let fine = !job_id.is_empty()
        && job_id.len() <= 64
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fine {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("job id {job_id:?}: only letters, digits, '-' and '_' (1 to 64)"),
        ))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;
    use tar::Header;

    const JOB: &str = "job-1";
    const UID: u64 = 1234;
    const GID: u64 = 2345;
    const T: u64 = 1_600_000_000;

    fn is_root() -> bool {
        // SAFETY: no arguments, cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// Storage is useless without `user.*` xattrs; a test filesystem without
    /// them must fail the tests, not skip the checks.
    fn assert_user_xattrs_work(dir: &Path) {
        let probe = dir.join("probe");
        fs::write(&probe, b"").unwrap();
        xattr::set(&probe, "user.probe", b"1")
            .expect("the test filesystem must support user.* xattrs");
        fs::remove_file(probe).unwrap();
    }

    /// Archives as the backup writes them, plus what only a hostile one has.
    struct Archive(tar::Builder<Vec<u8>>);

    impl Archive {
        fn new() -> Self {
            Archive(tar::Builder::new(Vec::new()))
        }

        fn header(kind: EntryType, size: u64, mode: u32, mtime: u64) -> Header {
            let mut header = Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(size);
            header.set_mode(mode);
            header.set_mtime(mtime);
            header.set_uid(UID);
            header.set_gid(GID);
            header
        }

        fn xattrs(&mut self, xattrs: &[(&str, &[u8])]) {
            let keys: Vec<String> = xattrs
                .iter()
                .map(|(k, _)| format!("SCHILY.xattr.{k}"))
                .collect();
            self.0
                .append_pax_extensions(
                    keys.iter()
                        .map(String::as_str)
                        .zip(xattrs.iter().map(|(_, v)| *v)),
                )
                .unwrap();
        }

        fn dir(mut self, path: &str, mode: u32, mtime: u64, xattrs: &[(&str, &[u8])]) -> Self {
            self.xattrs(xattrs);
            let mut header = Self::header(EntryType::Directory, 0, mode, mtime);
            self.0.append_data(&mut header, path, io::empty()).unwrap();
            self
        }

        fn file(
            mut self,
            path: &str,
            data: &[u8],
            mode: u32,
            mtime: u64,
            xattrs: &[(&str, &[u8])],
        ) -> Self {
            self.xattrs(xattrs);
            let mut header = Self::header(EntryType::Regular, data.len() as u64, mode, mtime);
            self.0.append_data(&mut header, path, data).unwrap();
            self
        }

        fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
            let mut header = Self::header(kind, 0, 0o777, T);
            self.0.append_link(&mut header, path, target).unwrap();
            self
        }

        fn symlink(self, path: &str, target: &str) -> Self {
            self.link(EntryType::Symlink, path, target)
        }

        /// A name `tar::Builder` refuses (`..`, absolute), written straight
        /// into the header.
        fn raw(mut self, name: &[u8], kind: EntryType, data: &[u8]) -> Self {
            let mut header = Self::header(kind, data.len() as u64, 0o644, T);
            let slot = &mut header.as_old_mut().name;
            slot.fill(0);
            slot[..name.len()].copy_from_slice(name);
            if matches!(kind, EntryType::Char | EntryType::Block) {
                header.set_device_major(1).unwrap();
                header.set_device_minor(3).unwrap();
            }
            header.set_cksum();
            self.0.append(&header, data).unwrap();
            self
        }

        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    type Staged = (StagedTree, Vec<(PathBuf, Added)>);

    /// Stages every entry as the restore job will: `storage/` stripped.
    fn stage(target: &Path, options: Options, tar: &[u8]) -> Result<Staged, StageError> {
        let mut tree = StagedTree::begin_with(target, JOB, options).unwrap();
        let mut archive = tar::Archive::new(tar);
        let mut added = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            let relative = path.strip_prefix("storage").unwrap_or(&path).to_path_buf();
            let what = tree.add(&relative, &mut entry)?;
            added.push((relative, what));
        }
        Ok((tree, added))
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Node {
        kind: char,
        mode: u32,
        mtime: (i64, i64),
        owner: (u32, u32),
        ino: u64,
        bytes: Vec<u8>,
        xattrs: Vec<(OsString, Vec<u8>)>,
    }

    /// Everything below `root` (itself included, as ""), links unfollowed.
    fn snapshot(root: &Path, dir_mtimes: bool) -> BTreeMap<PathBuf, Node> {
        let mut out = BTreeMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let path = root.join(&rel);
            let m = fs::symlink_metadata(&path).unwrap();
            let (kind, bytes) = if m.file_type().is_symlink() {
                (
                    'l',
                    fs::read_link(&path).unwrap().into_os_string().into_vec(),
                )
            } else if m.is_dir() {
                for entry in fs::read_dir(&path).unwrap() {
                    stack.push(rel.join(entry.unwrap().file_name()));
                }
                ('d', Vec::new())
            } else {
                ('f', fs::read(&path).unwrap())
            };
            let mut xattrs = Vec::new();
            if kind != 'l' {
                for name in xattr::list(&path).unwrap() {
                    let value = xattr::get(&path, &name).unwrap().unwrap();
                    xattrs.push((name, value));
                }
                xattrs.sort();
            }
            let mtime = if kind == 'd' && !dir_mtimes {
                (0, 0)
            } else {
                (m.mtime(), m.mtime_nsec())
            };
            out.insert(
                rel,
                Node {
                    kind,
                    mode: m.mode() & 0o7777,
                    mtime,
                    owner: (m.uid(), m.gid()),
                    ino: m.ino(),
                    bytes,
                    xattrs,
                },
            );
        }
        out
    }

    fn set_mtime_of(path: &Path, seconds: u64) {
        File::open(path)
            .unwrap()
            .set_times(FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(seconds)))
            .unwrap();
    }

    fn mtime(path: &Path) -> i64 {
        fs::symlink_metadata(path).unwrap().mtime()
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    /// A project's storage folder with content of every kind.
    fn populate(target: &Path) {
        fs::create_dir_all(target.join("stub/stub/old bucket/empty")).unwrap();
        let object = target.join("stub/stub/old bucket/obj");
        fs::write(&object, b"old object").unwrap();
        xattr::set(&object, "user.supabase.etag", b"\"old\"").unwrap();
        fs::set_permissions(&object, Permissions::from_mode(0o604)).unwrap();
        set_mtime_of(&object, T - 50);
        std::os::unix::fs::symlink("stub/old bucket/obj", target.join("stub/link")).unwrap();
        fs::create_dir(target.join("only old")).unwrap();
        fs::write(target.join("only old/x"), b"x").unwrap();
        xattr::set(target, "user.mark", b"old").unwrap();
        fs::set_permissions(target, Permissions::from_mode(0o751)).unwrap();
        for dir in [
            "stub/stub/old bucket/empty",
            "stub/stub/old bucket",
            "stub/stub",
            "stub",
            "only old",
            "",
        ] {
            set_mtime_of(&target.join(dir), T - 100);
        }
    }

    fn new_content() -> Vec<u8> {
        Archive::new()
            .dir("storage/", 0o700, T, &[("user.mark", b"new")])
            .dir("storage/stub/", 0o755, T, &[])
            .file("storage/stub/new.txt", b"new", 0o644, T, &[])
            .dir("storage/only new/", 0o755, T, &[])
            .bytes()
    }

    #[test]
    fn round_trip_keeps_names_modes_mtimes_xattrs_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        assert_user_xattrs_work(tmp.path());
        let target = tmp.path().join("storage");
        populate(&target);
        fs::write(target.join("stale.txt"), b"stale").unwrap();

        let key = "stub/stub/bucket one/naïve \"quoted\" it's.txt";
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let etag: &[u8] = b"\"9a0364b9e99bb480dd25e1f0284c8555\"";
        let tar = Archive::new()
            .dir("storage/", 0o750, T, &[("user.mark", b"root")])
            .dir("storage/stub/", 0o755, T + 100, &[])
            .dir("storage/stub/stub/", 0o755, T + 200, &[])
            .dir("storage/stub/stub/bucket one/", 0o700, T + 300, &[])
            .dir(&format!("storage/{key}/"), 0o755, T + 400, &[])
            .file(
                &format!("storage/{key}/v1"),
                b"hello storage",
                0o640,
                T + 500,
                &[
                    ("user.supabase.content-type", b"text/plain"),
                    ("user.supabase.cache-control", b"max-age=3600"),
                    ("user.supabase.etag", etag),
                ],
            )
            .dir(
                "storage/stub/stub/bucket one/empty folder/",
                0o711,
                T + 600,
                &[],
            )
            .symlink(
                "storage/stub/stub/bucket one/latest",
                "naïve \"quoted\" it's.txt/v1",
            )
            .symlink("storage/stub/stub/abs", "/etc/hostname")
            .file("storage/stub/big.bin", &big, 0o600, T + 700, &[])
            .bytes();
        let options = Options {
            symlinks: SymlinkPolicy::KeepAsIs,
            ..Options::default()
        };
        let (tree, added) = stage(&target, options, &tar).unwrap();
        assert_eq!(fs::read(target.join("stale.txt")).unwrap(), b"stale");
        assert_eq!(added[0], (PathBuf::new(), Added::Dir));
        let found = |path: &str| {
            added
                .iter()
                .find(|(p, _)| p == Path::new(path))
                .map(|(_, a)| a.clone())
                .unwrap()
        };
        assert_eq!(
            found(&format!("{key}/v1")),
            Added::File {
                size: 13,
                sha256: sha(b"hello storage")
            }
        );
        assert_eq!(
            found("stub/big.bin"),
            Added::File {
                size: big.len() as u64,
                sha256: sha(&big)
            }
        );
        assert_eq!(
            found("stub/stub/abs"),
            Added::Symlink {
                target: "/etc/hostname".into()
            }
        );

        tree.finish().unwrap().swap_in().unwrap().commit().unwrap();

        let names: Vec<_> = fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![OsString::from("stub")],
            "absent children and hidden folders are gone"
        );
        assert!(!target.join("stub/link").exists());
        assert!(!target.join("stub/stub/old bucket").exists());

        let v1 = target.join(key).join("v1");
        assert_eq!(fs::read(&v1).unwrap(), b"hello storage");
        assert_eq!((mode(&v1), mtime(&v1)), (0o640, (T + 500) as i64));
        for (name, value) in [
            ("user.supabase.content-type", &b"text/plain"[..]),
            ("user.supabase.cache-control", b"max-age=3600"),
            ("user.supabase.etag", etag),
        ] {
            assert_eq!(
                xattr::get(&v1, name).unwrap().as_deref(),
                Some(value),
                "{name}"
            );
        }
        assert_eq!(fs::read(target.join("stub/big.bin")).unwrap(), big);
        // Folder mtimes survive the children written after them.
        for (dir, mode_bits, time) in [
            ("stub", 0o755, T + 100),
            ("stub/stub", 0o755, T + 200),
            ("stub/stub/bucket one", 0o700, T + 300),
            (key, 0o755, T + 400),
            ("stub/stub/bucket one/empty folder", 0o711, T + 600),
        ] {
            let path = target.join(dir);
            assert_eq!(
                (mode(&path), mtime(&path)),
                (mode_bits, time as i64),
                "{dir}"
            );
        }
        let empty = target.join("stub/stub/bucket one/empty folder");
        assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
        let latest = target.join("stub/stub/bucket one/latest");
        assert!(
            fs::symlink_metadata(&latest)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs::read_link(&latest).unwrap(),
            Path::new("naïve \"quoted\" it's.txt/v1")
        );
        assert_eq!(fs::read(&latest).unwrap(), b"hello storage");
        let abs = target.join("stub/stub/abs");
        assert_eq!(fs::read_link(&abs).unwrap(), Path::new("/etc/hostname"));
        assert_eq!(mtime(&abs), T as i64);
        // The folder itself: the archive's, though it was never renamed.
        assert_eq!((mode(&target), mtime(&target)), (0o750, T as i64));
        assert_eq!(xattr::get(&target, "user.mark").unwrap().unwrap(), b"root");
        if is_root() {
            let m = fs::metadata(&v1).unwrap();
            assert_eq!((m.uid(), m.gid()), (UID as u32, GID as u32));
        }
    }

    #[test]
    fn roll_back_restores_the_original_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        assert_user_xattrs_work(tmp.path());
        let target = tmp.path().join("storage");
        populate(&target);
        let before = snapshot(&target, true);

        let (tree, _) = stage(&target, Options::default(), &new_content()).unwrap();
        let swapped = tree.finish().unwrap().swap_in().unwrap();
        assert_eq!(fs::read(target.join("stub/new.txt")).unwrap(), b"new");
        assert!(target.join("only new").is_dir());
        assert!(!target.join("only old").exists());
        assert_eq!(mode(&target), 0o700);
        swapped.roll_back().unwrap();

        assert_eq!(snapshot(&target, true), before);
    }

    #[test]
    fn dropping_without_swap_leaves_the_target_alone() {
        let tmp = tempfile::tempdir().unwrap();
        assert_user_xattrs_work(tmp.path());
        let target = tmp.path().join("storage");
        populate(&target);
        let before = snapshot(&target, true);

        let (tree, _) = stage(&target, Options::default(), &new_content()).unwrap();
        assert!(target.join(staging_name(JOB)).is_dir());
        drop(tree);
        assert_eq!(snapshot(&target, true), before);

        let (tree, _) = stage(&target, Options::default(), &new_content()).unwrap();
        drop(tree.finish().unwrap());
        assert_eq!(snapshot(&target, true), before);
    }

    #[test]
    fn later_entries_win_and_hard_links_stay_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("storage");
        let tar = Archive::new()
            .file("storage/a", b"one", 0o644, T, &[])
            .file("storage/a", b"two", 0o644, T, &[])
            .dir("storage/d/", 0o555, T, &[])
            .file("storage/d/x", b"x", 0o644, T, &[])
            .file("storage/d", b"now a file", 0o644, T, &[])
            .file("storage/h.txt", b"hard", 0o644, T, &[])
            .link(EntryType::Link, "storage/h2", "storage/h.txt")
            .bytes();
        let options = Options {
            archive_prefix: Some("storage".into()),
            ..Options::default()
        };
        let (tree, added) = stage(&target, options, &tar).unwrap();
        assert_eq!(
            added.last().unwrap().1,
            Added::HardLink { to: "h.txt".into() }
        );
        tree.finish().unwrap().swap_in().unwrap().commit().unwrap();
        assert_eq!(fs::read(target.join("a")).unwrap(), b"two");
        assert_eq!(fs::read(target.join("d")).unwrap(), b"now a file");
        assert_eq!(
            fs::metadata(target.join("h2")).unwrap().ino(),
            fs::metadata(target.join("h.txt")).unwrap().ino()
        );
    }

    /// Stages a hostile archive (built knowing the path of a folder outside
    /// the target) and checks nothing changed anywhere around the target.
    fn refused(options: Options, build: impl FnOnce(&Path) -> Vec<u8>) -> StageError {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("storage");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(target.join("stub")).unwrap();
        fs::write(target.join("stub/keep.txt"), b"keep").unwrap();
        fs::create_dir(&outside).unwrap();
        let before = snapshot(tmp.path(), true);
        let tar = build(&outside);
        let error = match stage(&target, options, &tar) {
            Ok(_) => panic!("a hostile archive was staged"),
            Err(e) => e,
        };
        assert_eq!(snapshot(tmp.path(), true), before, "after {error}");
        error
    }

    fn keep_links() -> Options {
        Options {
            symlinks: SymlinkPolicy::KeepAsIs,
            ..Options::default()
        }
    }

    #[test]
    fn refuses_climbing_and_absolute_paths() {
        let e = refused(Options::default(), |_| {
            Archive::new()
                .raw(b"storage/../x", EntryType::Regular, b"evil")
                .bytes()
        });
        assert!(
            matches!(&e, StageError::ParentDir { path } if path == Path::new("storage/../x")),
            "{e}"
        );
        assert!(e.to_string().contains("storage/../x"), "{e}");

        let e = refused(Options::default(), |_| {
            Archive::new()
                .raw(b"/etc/x", EntryType::Regular, b"evil")
                .bytes()
        });
        assert!(
            matches!(&e, StageError::Absolute { path } if path == Path::new("/etc/x")),
            "{e}"
        );
    }

    #[test]
    fn refuses_escaping_symlinks_unless_kept_as_is() {
        for (name, target) in [
            ("storage/up", "../x"),
            ("storage/abs", "/etc/passwd"),
            ("storage/a/deep", "../../x"),
            ("storage/a/back", "b/../../.."),
        ] {
            let e = refused(Options::default(), |_| {
                Archive::new().symlink(name, target).bytes()
            });
            assert!(
                matches!(&e, StageError::EscapingSymlink { path, .. } if path == Path::new(name)),
                "{name}: {e}"
            );

            let tmp = tempfile::tempdir().unwrap();
            let restored = tmp.path().join("storage");
            let tar = Archive::new().symlink(name, target).bytes();
            let (tree, _) = stage(&restored, keep_links(), &tar).unwrap();
            tree.finish().unwrap().swap_in().unwrap().commit().unwrap();
            let link = restored.join(name.strip_prefix("storage/").unwrap());
            assert_eq!(fs::read_link(link).unwrap(), Path::new(target));
        }
    }

    #[test]
    fn refuses_writing_through_a_staged_symlink() {
        let e = refused(keep_links(), |outside| {
            Archive::new()
                .symlink("storage/link", outside.to_str().unwrap())
                .file("storage/link/evil", b"evil", 0o644, T, &[])
                .bytes()
        });
        assert!(
            matches!(&e, StageError::ThroughSymlink { link, .. } if link == Path::new("link")),
            "{e}"
        );

        let e = refused(keep_links(), |outside| {
            Archive::new()
                .symlink("storage/a/link", outside.to_str().unwrap())
                .dir("storage/a/link/sub/", 0o755, T, &[])
                .bytes()
        });
        assert!(
            matches!(&e, StageError::ThroughSymlink { link, .. } if link == Path::new("a/link")),
            "{e}"
        );

        let e = refused(keep_links(), |_| {
            Archive::new()
                .file("storage/f", b"f", 0o644, T, &[])
                .file("storage/f/x", b"x", 0o644, T, &[])
                .bytes()
        });
        assert!(matches!(&e, StageError::NotADirectory { .. }), "{e}");
    }

    #[test]
    fn refuses_devices_fifos_and_stray_hard_links() {
        for kind in [EntryType::Fifo, EntryType::Char, EntryType::Block] {
            let e = refused(Options::default(), |_| {
                Archive::new().raw(b"storage/dev", kind, b"").bytes()
            });
            assert!(
                matches!(&e, StageError::Unsupported { .. }),
                "{kind:?}: {e}"
            );
        }
        let e = refused(Options::default(), |_| {
            Archive::new()
                .file("storage/h", b"h", 0o644, T, &[])
                .link(EntryType::Link, "storage/h2", "storage/h")
                .bytes()
        });
        assert!(
            matches!(&e, StageError::Unsupported { .. }),
            "no prefix: {e}"
        );
        let with_prefix = || Options {
            archive_prefix: Some("storage".into()),
            ..Options::default()
        };
        for to in [
            "storage/../etc/passwd",
            "/etc/passwd",
            "database/x",
            "storage/missing",
        ] {
            let e = refused(with_prefix(), |_| {
                Archive::new()
                    .link(EntryType::Link, "storage/h2", to)
                    .bytes()
            });
            assert!(matches!(&e, StageError::HardLink { .. }), "{to}: {e}");
        }
    }

    #[test]
    fn refuses_reserved_names_and_enforces_limits() {
        let e = refused(Options::default(), |_| {
            Archive::new()
                .dir(&format!("storage/{OLD_PREFIX}{JOB}/"), 0o755, T, &[])
                .bytes()
        });
        assert!(matches!(&e, StageError::Reserved { .. }), "{e}");

        let limited = |max_bytes, max_entries| Options {
            limits: Limits {
                max_bytes,
                max_entries,
                ..Limits::default()
            },
            ..Options::default()
        };
        let three = || {
            Archive::new()
                .dir("storage/", 0o755, T, &[])
                .file("storage/a", b"123456", 0o644, T, &[])
                .file("storage/b", b"123456", 0o644, T, &[])
                .bytes()
        };
        let e = refused(limited(None, Some(2)), |_| three());
        assert!(
            matches!(&e, StageError::TooLarge { unit: "entries", limit: 2, path } if path == Path::new("storage/b")),
            "{e}"
        );
        let e = refused(limited(Some(10), None), |_| three());
        assert!(
            matches!(&e, StageError::TooLarge { unit: "bytes", limit: 10, path } if path == Path::new("storage/b")),
            "{e}"
        );
        let e = refused(limited(Some(5), None), |_| three());
        assert!(
            matches!(&e, StageError::TooLarge { unit: "bytes", path, .. } if path == Path::new("storage/a")),
            "{e}"
        );
    }

    #[test]
    fn expansion_past_the_ratio_is_refused_naming_the_entry() {
        let limits = Limits {
            expansion: Some(Expansion {
                ratio: 200,
                upload_bytes: 1000,
            }),
            ..Limits::default()
        };
        let e = refused(
            Options {
                limits,
                ..Options::default()
            },
            |_| {
                Archive::new()
                    .file("storage/a", &[0; 150_000], 0o644, T, &[])
                    .file("storage/b", &[0; 60_000], 0o644, T, &[])
                    .bytes()
            },
        );
        assert_eq!(
            e.to_string(),
            "storage/b: the archive expands past the limit of 200 times the upload's size \
             (1000 B)"
        );
    }

    /// Files that fill the disk are stopped at the reserve, by the header's
    /// size or while they are written, and nothing stays behind.
    #[test]
    fn staging_stops_at_the_disk_reserve_and_leaves_nothing() {
        const MIB: usize = 1024 * 1024;
        let disk = crate::disk::SmallDisk::new(48 * MIB as u64);
        let target = disk.dir.path().join("storage");
        fs::create_dir_all(&target).unwrap();
        let free_before = crate::disk::available_bytes(&target).unwrap();
        // Room for 12 MiB: the look after 8 MiB passes, the one after 16
        // MiB does not.
        let reserve = disk.reserve_leaving(12 * MIB as u64);
        let options = Options {
            limits: Limits {
                disk: Some(DiskReserve {
                    area: "the storage folder",
                    reserve,
                    free: None,
                }),
                ..Limits::default()
            },
            ..Options::default()
        };
        let chunk = vec![7u8; 4 * MIB];
        let small_files = (0..6).fold(Archive::new(), |tar, i| {
            tar.file(&format!("storage/f{i}"), &chunk, 0o644, T, &[])
        });
        let one_large = Archive::new().file("storage/big", &vec![7u8; 16 * MIB], 0o644, T, &[]);
        for (what, tar) in [("small files", small_files), ("one large file", one_large)] {
            let e = match stage(&target, options.clone(), &tar.bytes()) {
                Err(e) => e,
                Ok(_) => panic!("{what}: staged past the reserve"),
            };
            let StageError::Io { source, .. } = &e else {
                panic!("{what}: {e}")
            };
            assert!(crate::disk::is_out_of_space(source), "{what}: {e}");
            let message = crate::disk::find_out_of_space(source).unwrap().to_string();
            assert!(
                message.starts_with("Insufficient disk space on the storage folder: "),
                "{what}: {message}"
            );
            assert_eq!(names(&target), Vec::<String>::new(), "{what}");
            let free_after = crate::disk::available_bytes(&target).unwrap();
            assert!(
                free_after + MIB as u64 >= free_before,
                "{what}: {free_after} of {free_before} bytes free afterwards"
            );
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn symlink_targets_inside_and_out() {
        for (link, target) in [
            ("l", "x"),
            ("l", "."),
            ("a/l", ".."),
            ("a/l", "../b/c"),
            ("a/b/l", "../../c"),
            ("a/l", "./b"),
        ] {
            assert!(
                stays_inside(Path::new(link), Path::new(target)),
                "{link} -> {target}"
            );
        }
        for (link, target) in [
            ("l", ".."),
            ("l", "/x"),
            ("a/l", "../.."),
            ("a/l", "b/../.."),
            ("a/l", "b/../c"),
        ] {
            assert!(
                !stays_inside(Path::new(link), Path::new(target)),
                "{link} -> {target}"
            );
        }
    }

    #[test]
    fn begin_refuses_an_interrupted_swap_and_leftovers_can_be_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("functions");
        fs::create_dir_all(target.join(staging_name(JOB)).join("half")).unwrap();
        fs::create_dir_all(target.join("hello")).unwrap();

        // A stale staging folder of the same job is just replaced.
        let tree = StagedTree::begin(&target, JOB).unwrap();
        assert!(!target.join(staging_name(JOB)).join("half").exists());
        drop(tree);
        assert!(!target.join(staging_name(JOB)).exists());

        fs::create_dir_all(target.join(old_name(JOB)).join("hello")).unwrap();
        fs::create_dir_all(target.join(format!("{STAGING_PREFIX}other"))).unwrap();
        let e = StagedTree::begin(&target, JOB).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(target.join(old_name(JOB)).join("hello").is_dir());

        let mut removed = remove_leftovers(&target).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            vec![
                target.join(old_name(JOB)),
                target.join(format!("{STAGING_PREFIX}other"))
            ]
        );
        assert!(target.join("hello").is_dir());
        StagedTree::begin(&target, JOB).unwrap();
        assert!(StagedTree::begin(&target, "../x").is_err());
    }

    /// Stages `config/...` entries as the restore job will: project files
    /// under `root`, `config/extra/<absolute>` under `host` (standing in
    /// for `/`).
    fn stage_config(
        root: &Path,
        host: &Path,
        options: Options,
        tar: &[u8],
    ) -> Result<(StagedFiles, Vec<Added>), StageError> {
        let mut files = StagedFiles::begin_with(JOB, options).unwrap();
        let mut archive = tar::Archive::new(tar);
        let mut added = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            let relative = path.strip_prefix("config").unwrap_or(&path);
            let what = match relative.strip_prefix("extra") {
                Ok(extra) => files.add(host, extra, &mut entry)?,
                Err(_) => files.add(root, relative, &mut entry)?,
            };
            added.push(what);
        }
        Ok((files, added))
    }

    fn config_archive() -> Vec<u8> {
        Archive::new()
            .file(
                "config/.env",
                b"NEW=1\n",
                0o640,
                T,
                &[("user.mark", b"new")],
            )
            .file("config/volumes/api/kong.yml", b"kong", 0o644, T, &[])
            .file(
                "config/extra/etc/supabase/root.key",
                b"NEWKEY",
                0o400,
                T,
                &[],
            )
            .bytes()
    }

    fn config_setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        assert_user_xattrs_work(tmp.path());
        let root = tmp.path().join("project");
        let host = tmp.path().join("host");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join(".env"), b"OLD=1\n").unwrap();
        xattr::set(root.join(".env"), "user.mark", b"old").unwrap();
        fs::set_permissions(root.join(".env"), Permissions::from_mode(0o600)).unwrap();
        set_mtime_of(&root.join(".env"), T - 100);
        fs::create_dir_all(host.join("etc/supabase")).unwrap();
        fs::write(host.join("etc/supabase/root.key"), b"OLDKEY").unwrap();
        (tmp, root, host)
    }

    #[test]
    fn config_files_swap_in_roll_back_and_commit() {
        let (tmp, root, host) = config_setup();
        let before = snapshot(tmp.path(), false);

        let (files, added) =
            stage_config(&root, &host, Options::default(), &config_archive()).unwrap();
        assert_eq!(
            added[0],
            Added::File {
                size: 6,
                sha256: sha(b"NEW=1\n")
            }
        );
        assert_eq!(fs::read(root.join(".env")).unwrap(), b"OLD=1\n");
        assert_eq!(
            fs::read(root.join(format!("..env.supascale-{JOB}"))).unwrap(),
            b"NEW=1\n"
        );

        let swapped = files.swap_in().unwrap();
        let env = root.join(".env");
        assert_eq!(fs::read(&env).unwrap(), b"NEW=1\n");
        assert_eq!((mode(&env), mtime(&env)), (0o640, T as i64));
        assert_eq!(xattr::get(&env, "user.mark").unwrap().unwrap(), b"new");
        assert_eq!(
            fs::read(root.join(format!("..env.supascale-old-{JOB}"))).unwrap(),
            b"OLD=1\n"
        );
        assert_eq!(
            fs::read(root.join("volumes/api/kong.yml")).unwrap(),
            b"kong"
        );
        assert_eq!(
            fs::read(host.join("etc/supabase/root.key")).unwrap(),
            b"NEWKEY"
        );
        swapped.roll_back().unwrap();
        assert_eq!(snapshot(tmp.path(), false), before);

        let (files, _) = stage_config(&root, &host, Options::default(), &config_archive()).unwrap();
        files.swap_in().unwrap().commit().unwrap();
        let after = snapshot(tmp.path(), false);
        assert!(
            after
                .keys()
                .all(|p| !p.to_string_lossy().contains(".supascale-")),
            "{:?}",
            after.keys().collect::<Vec<_>>()
        );
        assert_eq!(fs::read(root.join(".env")).unwrap(), b"NEW=1\n");
        assert_eq!(
            fs::read(host.join("etc/supabase/root.key")).unwrap(),
            b"NEWKEY"
        );
    }

    #[test]
    fn config_files_dropped_without_swap_leave_nothing() {
        let (tmp, root, host) = config_setup();
        let before = snapshot(tmp.path(), false);
        let (files, _) = stage_config(&root, &host, Options::default(), &config_archive()).unwrap();
        assert!(root.join("volumes/api").is_dir());
        drop(files);
        assert_eq!(snapshot(tmp.path(), false), before);
    }

    #[test]
    fn config_files_refuse_hostile_entries() {
        type Expected = fn(&StageError) -> bool;
        let cases: Vec<(Options, Vec<u8>, Expected)> = vec![
            (
                Options::default(),
                Archive::new()
                    .raw(b"config/../x", EntryType::Regular, b"evil")
                    .bytes(),
                |e| matches!(e, StageError::ParentDir { .. }),
            ),
            (
                Options::default(),
                Archive::new()
                    .raw(b"/etc/x", EntryType::Regular, b"evil")
                    .bytes(),
                |e| matches!(e, StageError::Absolute { .. }),
            ),
            (
                Options::default(),
                Archive::new()
                    .raw(b"config/fifo", EntryType::Fifo, b"")
                    .bytes(),
                |e| matches!(e, StageError::Unsupported { .. }),
            ),
            (
                Options::default(),
                Archive::new().symlink("config/.env", "/etc/shadow").bytes(),
                |e| matches!(e, StageError::EscapingSymlink { .. }),
            ),
            (
                keep_links(),
                Archive::new()
                    .symlink("config/volumes", "/tmp")
                    .file("config/volumes/x", b"evil", 0o644, T, &[])
                    .bytes(),
                |e| matches!(e, StageError::ThroughSymlink { .. }),
            ),
            (
                Options::default(),
                Archive::new()
                    .file(
                        &format!("config/.env.supascale-old-{JOB}"),
                        b"x",
                        0o644,
                        T,
                        &[],
                    )
                    .bytes(),
                |e| matches!(e, StageError::Reserved { .. }),
            ),
        ];
        for (options, tar, expected) in cases {
            let (tmp, root, host) = config_setup();
            let before = snapshot(tmp.path(), false);
            let e = match stage_config(&root, &host, options, &tar) {
                Ok(_) => panic!("a hostile config entry was staged"),
                Err(e) => e,
            };
            assert!(expected(&e), "{e}");
            assert_eq!(snapshot(tmp.path(), false), before, "after {e}");
        }
    }

    #[test]
    fn merge_in_swaps_only_the_staged_names_and_rolls_back_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        assert_user_xattrs_work(tmp.path());
        let target = tmp.path().join("functions");
        populate(&target);
        let before = snapshot(&target, true);
        let archive = Archive::new()
            .dir("storage/only new/", 0o755, T, &[])
            .file("storage/only new/f", b"new", 0o644, T, &[])
            .file("storage/only old/y", b"y", 0o644, T, &[])
            .bytes();

        let (tree, _) = stage(&target, Options::default(), &archive).unwrap();
        let swapped = tree.finish().unwrap().merge_in().unwrap();
        let after = snapshot(&target, false);
        assert_eq!(fs::read(target.join("only new/f")).unwrap(), b"new");
        // Brought by the archive: replaced wholesale.
        assert_eq!(fs::read(target.join("only old/y")).unwrap(), b"y");
        assert!(!target.join("only old/x").exists());
        // Absent from the archive: not moved, not touched.
        for (rel, node) in &after {
            if rel.starts_with("stub") {
                let was = &before[rel];
                assert_eq!(
                    (node.kind, node.mode, node.ino, &node.bytes, &node.xattrs),
                    (was.kind, was.mode, was.ino, &was.bytes, &was.xattrs),
                    "{}",
                    rel.display()
                );
            }
        }
        assert_eq!(
            mode(&target),
            0o751,
            "no root entry, so the folder keeps its mode"
        );
        swapped.roll_back().unwrap();
        assert_eq!(snapshot(&target, true), before);

        let (tree, _) = stage(&target, Options::default(), &archive).unwrap();
        tree.finish().unwrap().merge_in().unwrap().commit().unwrap();
        let mut names: Vec<_> = fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["only new", "only old", "stub"]);
        assert_eq!(fs::read(target.join("only old/y")).unwrap(), b"y");
        let stub = snapshot(&target.join("stub"), true);
        for (rel, node) in stub {
            assert_eq!(node.ino, before[&Path::new("stub").join(&rel)].ino);
        }
    }

    #[test]
    fn link_from_target_shares_inodes_and_new_entries_never_write_through() {
        let tmp = tempfile::tempdir().unwrap();
        assert_user_xattrs_work(tmp.path());
        let target = tmp.path().join("storage");
        populate(&target);
        let before = snapshot(&target, true);
        let archive = Archive::new()
            .file(
                "storage/stub/stub/old bucket/obj",
                b"replaced",
                0o644,
                T,
                &[],
            )
            .file("storage/stub/stub/new bucket/o", b"o", 0o644, T, &[])
            .bytes();

        let mut tree = StagedTree::begin(&target, JOB).unwrap();
        assert_eq!(tree.link_from_target(OsStr::new("stub")).unwrap(), 2);
        assert_eq!(tree.link_from_target(OsStr::new("absent")).unwrap(), 0);
        assert!(tree.link_from_target(OsStr::new("..")).is_err());
        assert!(tree.link_from_target(OsStr::new("a/b")).is_err());
        let staged = tree.staging_dir().to_path_buf();
        let link = fs::symlink_metadata(staged.join("stub/link")).unwrap();
        assert!(link.file_type().is_symlink());
        assert_eq!(link.ino(), before[Path::new("stub/link")].ino);
        let mut archive = tar::Archive::new(archive.as_slice());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            tree.add(path.strip_prefix("storage").unwrap(), &mut entry)
                .unwrap();
        }
        let swapped = tree.finish().unwrap().merge_in().unwrap();
        assert_eq!(
            fs::read(target.join("stub/stub/old bucket/obj")).unwrap(),
            b"replaced"
        );
        assert_eq!(
            fs::read(target.join("stub/stub/new bucket/o")).unwrap(),
            b"o"
        );
        let now = snapshot(&target, true);
        for rel in ["stub", "stub/stub", "stub/stub/old bucket/empty"] {
            let (was, is) = (&before[Path::new(rel)], &now[Path::new(rel)]);
            assert_eq!(
                (is.mode, is.owner, &is.xattrs),
                (was.mode, was.owner, &was.xattrs),
                "{rel}"
            );
            assert_ne!(is.ino, was.ino, "{rel}: a copy, not the folder itself");
        }
        assert_eq!(
            now[Path::new("stub/stub/old bucket/empty")].mtime,
            before[Path::new("stub/stub/old bucket/empty")].mtime
        );
        assert_eq!(now[Path::new("stub/link")], before[Path::new("stub/link")]);
        assert!(
            target.join("only old/x").exists(),
            "merge leaves other children"
        );
        swapped.roll_back().unwrap();
        // The original object's inode was never written through.
        assert_eq!(snapshot(&target, true), before);
    }

    #[test]
    fn ignore_owners_keeps_the_files_our_own() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("functions");
        let archive = Archive::new()
            .dir("storage/f/", 0o755, T, &[])
            .file("storage/f/index.ts", b"x", 0o644, T, &[])
            .symlink("storage/f/l", "index.ts")
            .bytes();
        let (mut tree, _) = stage(&target, Options::default(), b"").unwrap();
        tree.ignore_owners();
        let mut entries = tar::Archive::new(archive.as_slice());
        for entry in entries.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            tree.add(path.strip_prefix("storage").unwrap(), &mut entry)
                .unwrap();
        }
        tree.finish().unwrap().swap_in().unwrap().commit().unwrap();
        // SAFETY: no arguments, cannot fail.
        let me = unsafe { (libc::geteuid(), libc::getegid()) };
        for path in ["f", "f/index.ts", "f/l"] {
            let m = fs::symlink_metadata(target.join(path)).unwrap();
            assert_eq!((m.uid(), m.gid()), me, "{path}");
        }
        if is_root() {
            let (tree, _) = stage(&target, Options::default(), &archive).unwrap();
            tree.finish().unwrap().swap_in().unwrap().commit().unwrap();
            let m = fs::metadata(target.join("f/index.ts")).unwrap();
            assert_eq!((u64::from(m.uid()), u64::from(m.gid())), (UID, GID));
        }
    }

    /// A dead restore's config leftovers are found by job, and the file a
    /// swap replaced goes back over the one it put there.
    #[test]
    fn config_file_leftovers_are_found_and_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join(".env");
        fs::write(&live, "restored").unwrap();
        fs::write(dir.path().join("..env.supascale-old-job-abc"), "previous").unwrap();
        fs::write(dir.path().join("..env.supascale-job-abc"), "staged").unwrap();
        fs::write(dir.path().join("kong.yml.supascale-job-abc"), "not hidden").unwrap();
        fs::write(dir.path().join(".other.supascale-old-notajob"), "x").unwrap();
        let mut found = file_leftovers_by_job(dir.path());
        found.sort();
        assert_eq!(
            found,
            vec![
                (
                    "job-abc".to_string(),
                    dir.path().join("..env.supascale-job-abc"),
                    false
                ),
                (
                    "job-abc".to_string(),
                    dir.path().join("..env.supascale-old-job-abc"),
                    true
                ),
            ]
        );
        put_back_file(&dir.path().join("..env.supascale-old-job-abc")).unwrap();
        assert_eq!(fs::read_to_string(&live).unwrap(), "previous");
        assert!(!dir.path().join("..env.supascale-old-job-abc").exists());
        assert!(put_back_file(&dir.path().join("kong.yml.supascale-job-abc")).is_err());
    }
}
