//! Single files: [`StagedFiles`] stages config files beside their
//! destinations, [`SwappedFiles`] commits or rolls them back.

use super::*;

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
    /// The pinned folders `add` was given as bases, kept open while their
    /// paths are in use.
    pins: Vec<PinnedDir>,
}

#[derive(Debug, Clone)]
pub(super) struct StagedFile {
    pub(super) dest: PathBuf,
    pub(super) temp: PathBuf,
    pub(super) symlink: bool,
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
            pins: Vec::new(),
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
        if let Some(pin) = pinned::hold(base)
            && !self.pins.iter().any(|p| p.path() == pin.path())
        {
            self.pins.push(pin);
        }
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
    pub(super) fn record(&mut self, dest: &Path, temp: &Path, symlink: bool) {
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

    pub(super) fn ensure_parents(
        &mut self,
        base: &Path,
        rel: &Path,
        shown: &Path,
    ) -> Result<(), StageError> {
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
                        shown(&old).display()
                    ),
                ));
            }
            if fs::symlink_metadata(&staged.dest).is_ok_and(|m| m.is_dir()) {
                return Err(io::Error::other(format!(
                    "{}: is a folder; the archive has a file there",
                    shown(&staged.dest).display()
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
            _pins: std::mem::take(&mut self.pins),
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
    /// See [`StagedFiles::pins`].
    _pins: Vec<PinnedDir>,
}

#[derive(Debug, Clone)]
pub(super) struct FileStep {
    pub(super) dest: PathBuf,
    pub(super) temp: PathBuf,
    pub(super) old: PathBuf,
    pub(super) existed: bool,
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
pub(super) fn with_suffix(dest: &Path, kind: &str, job_id: &str) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(dest.file_name().unwrap_or_default());
    name.push(format!(".supascale-{kind}{job_id}"));
    dest.with_file_name(name)
}

pub(super) fn is_reserved_file_name(name: &OsStr, job_id: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.ends_with(format!(".supascale-{job_id}").as_bytes())
        || bytes.ends_with(format!(".supascale-old-{job_id}").as_bytes())
}
