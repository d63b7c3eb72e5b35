//! Folders: [`StagedTree`] stages a component's tree beside its target,
//! [`Ready`] swaps or merges it in, [`Swapped`] commits or rolls back; and
//! what crashed attempts leave behind.

use super::*;

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
pub(super) struct DeferredDir {
    pub(super) mode: u32,
    pub(super) mtime: u64,
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
                    shown(&old).display()
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
                pin: pinned::hold(target),
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

    pub(super) fn meta<R: Read>(
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
    pub(super) fn clear(&mut self, dest: &Path, rel: &Path, keep_dir: bool) -> io::Result<()> {
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

    pub(super) fn hard_link_source<R: Read>(
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

    pub(super) fn swap(mut self, merge: bool) -> io::Result<Swapped> {
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
            _pin: self.staging.pin.clone(),
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
    /// See [`StagingDir::pin`].
    _pin: Option<PinnedDir>,
}

#[derive(Debug, Clone)]
pub(super) struct Step {
    pub(super) name: OsString,
    pub(super) had_old: bool,
    pub(super) has_new: bool,
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
pub(super) fn undo_steps(
    target: &Path,
    trash: &Path,
    old: &Path,
    steps: &[Step],
) -> io::Result<()> {
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
pub(super) fn child_names(dirs: &[&Path], job_id: &str) -> io::Result<BTreeSet<OsString>> {
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
                format!("{}: not a kept file", shown(old).display()),
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
pub(super) struct StagingDir {
    pub(super) target: PathBuf,
    pub(super) path: PathBuf,
    pub(super) job_id: String,
    /// Making and removing the staging folder changes it.
    pub(super) target_mtime: SystemTime,
    pub(super) swapped: bool,
    /// A pinned target's folder kept open while its path is in use.
    pub(super) pin: Option<PinnedDir>,
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
