//! The artifact read back in one pass: opened from its destination
//! (decrypted, decompressed), every entry checked against the manifest's
//! size and SHA-256, and what the restore needs staged beside its target
//! as it streams by. Verification reads the same way and stages nothing.

use super::*;

/// Where an artifact is and how to open it.
pub(in crate::kinds) struct Artifact {
    pub(in crate::kinds) destination: supascale_shared::destinations::Destination,
    pub(in crate::kinds) key: String,
    pub(in crate::kinds) size: u64,
    pub(in crate::kinds) compression: supascale_shared::artifact::Compression,
    pub(in crate::kinds) encrypted: bool,
    pub(in crate::kinds) identities: Vec<age::x25519::Identity>,
}

/// The one streaming pass: download, decrypt, decompress, and [`unpack`] on
/// a blocking thread; a cancel stops it between entries.
pub(in crate::kinds) async fn read_artifact(
    artifact: Artifact,
    plan: UnpackPlan,
    reporter: &Reporter,
) -> Result<Unpacked, JobError> {
    let (download, raw, failed) =
        source::download(artifact.destination, artifact.key, artifact.size);
    let stop = plan.stop.clone();
    let (compression, encrypted, identities) = (
        artifact.compression,
        artifact.encrypted,
        artifact.identities,
    );
    let unpacking = tokio::task::spawn_blocking(move || {
        let reader =
            source::open(raw, compression, encrypted, &identities).map_err(JobError::from)?;
        unpack(reader, plan)
    });
    let unpacked = tokio::select! {
        done = unpacking => done.map_err(|e| JobError::Internal(format!("the artifact's reader panicked: {e}")))?,
        _ = reporter.cancelled() => {
            stop.store(true, Ordering::Relaxed);
            download.abort();
            return Err(JobError::Cancelled);
        }
    };
    download.abort();
    match (unpacked, failed.get()) {
        // Whatever the layers above made of it, the destination failed,
        // not the artifact: worth another attempt.
        (Err(e), _) if e.is_out_of_space() => Err(e),
        (Err(e), Some(cause)) if e.outcome() == supascale_shared::jobs::Outcome::Permanent => {
            Err(JobError::DestinationUnsure(format!(
                "destination: reading the artifact failed: {cause}"
            )))
        }
        (unpacked, _) => unpacked,
    }
}

/// A pass that only checks the artifact of `backup_row` against `manifest`
/// (every component, every file's SHA-256), spooling its dump to `spool`.
pub(in crate::kinds) async fn check_artifact(
    artifact: Artifact,
    manifest: &Manifest,
    spool: PathBuf,
    job_id: &str,
    reserve: u64,
    reporter: &Reporter,
) -> Result<Unpacked, JobError> {
    let plan = UnpackPlan {
        wanted: manifest.meta.components.iter().cloned().collect(),
        entries: entries_by_path(manifest),
        root: PathBuf::new(),
        storage: PathBuf::new(),
        functions: PathBuf::new(),
        spool,
        job_id: job_id.to_string(),
        stop: Arc::new(AtomicBool::new(false)),
        stage: false,
        skip_extra_config: false,
        reserve,
    };
    read_artifact(artifact, plan, reporter).await
}

/// The manifest's entries by path, folders without their `/`.
pub(in crate::kinds) fn entries_by_path(manifest: &Manifest) -> HashMap<String, ManifestEntry> {
    manifest
        .entries
        .iter()
        .map(|e| (e.path.trim_end_matches('/').to_string(), e.clone()))
        .collect()
}

/// What the pass over the artifact needs.
pub(in crate::kinds) struct UnpackPlan {
    pub(in crate::kinds) wanted: BTreeSet<String>,
    /// The manifest's entries by path (folders without their `/`).
    pub(in crate::kinds) entries: HashMap<String, ManifestEntry>,
    pub(in crate::kinds) root: PathBuf,
    pub(in crate::kinds) storage: PathBuf,
    pub(in crate::kinds) functions: PathBuf,
    pub(in crate::kinds) spool: PathBuf,
    pub(in crate::kinds) job_id: String,
    pub(in crate::kinds) stop: Arc<AtomicBool>,
    /// `false` to only check every entry against the manifest (verify):
    /// nothing is staged, the dump is still spooled for `pg_restore -l`.
    pub(in crate::kinds) stage: bool,
    /// Leave out `config/extra/…`: those paths are the source project's
    /// own (its db-config volume), not the target's.
    pub(in crate::kinds) skip_extra_config: bool,
    /// Disk kept free wherever the pass writes.
    pub(in crate::kinds) reserve: u64,
}

/// What the pass produced; dropping it removes every staged file.
pub(in crate::kinds) struct Unpacked {
    pub(in crate::kinds) dump: Option<SpooledDump>,
    /// Files checked against the manifest.
    pub(in crate::kinds) files: u64,
    pub(in crate::kinds) roles: Option<String>,
    pub(in crate::kinds) storage: Option<Ready>,
    pub(in crate::kinds) functions: Option<Ready>,
    pub(in crate::kinds) config: Option<StagedFiles>,
}

/// Reads every entry, stages those of the wanted components and checks
/// each file against the manifest.
pub(in crate::kinds) fn unpack(
    reader: Box<dyn Read + Send>,
    plan: UnpackPlan,
) -> Result<Unpacked, JobError> {
    let mut archive = tar::Archive::new(reader);
    let mut staged = Staging::default();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut files = 0u64;
    for entry in archive.entries().map_err(corrupt)? {
        if plan.stop.load(Ordering::Relaxed) {
            return Err(JobError::Cancelled);
        }
        let mut entry = entry.map_err(corrupt)?;
        let path = entry
            .path()
            .map_err(corrupt)?
            .to_string_lossy()
            .into_owned();
        let path = path.trim_end_matches('/').to_string();
        if path == "manifest.json" {
            continue;
        }
        let component = path.split('/').next().unwrap_or("").to_string();
        if !plan.wanted.contains(&component)
            || (plan.skip_extra_config && path.starts_with("config/extra/"))
        {
            continue;
        }
        let expected = plan.entries.get(&path).ok_or_else(|| {
            JobError::Artifact(format!(
                "the artifact holds {path}, which its manifest does not list"
            ))
        })?;
        let rest = path
            .strip_prefix(&component)
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string();
        let Some(added) = staged.add(&plan, &component, &rest, &mut entry)? else {
            continue;
        };
        // Each entry must be what the manifest says it is, once: a file
        // with its bytes, a link to its target, a folder. Our builder never
        // writes hard links or the same path twice.
        if !seen.insert(path.clone()) {
            return Err(JobError::Artifact(format!(
                "{path} appears twice in the artifact"
            )));
        }
        check_against_manifest(&path, expected, &added)?;
        if matches!(added, Added::File { .. }) {
            files += 1;
        }
    }
    check_nothing_lacking(&plan, &seen)?;
    staged.finish(files)
}

/// What the pass has staged and spooled so far; dropping it removes it.
#[derive(Default)]
struct Staging {
    storage: Option<StagedTree>,
    functions: Option<StagedTree>,
    config: Option<StagedFiles>,
    dump: Option<SpooledDump>,
    roles: Option<String>,
}

impl Staging {
    /// What one entry of `component` became; `None` for an entry the pass
    /// leaves out. `rest` is its path without the component.
    fn add<R: Read>(
        &mut self,
        plan: &UnpackPlan,
        component: &str,
        rest: &str,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<Option<Added>, JobError> {
        match component {
            "storage" | "functions" | "config" if !plan.stage => only_checked(entry).map(Some),
            "database" => self.add_database(plan, rest, entry),
            "storage" | "functions" => self.add_tree(plan, component, rest, entry).map(Some),
            "config" => self.add_config(plan, rest, entry),
            _ => Ok(None),
        }
    }

    /// Spools the dump (checked or not: `pg_restore -l` reads it) and keeps
    /// the roles' SQL.
    fn add_database<R: Read>(
        &mut self,
        plan: &UnpackPlan,
        rest: &str,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<Option<Added>, JobError> {
        match rest {
            "database.dump" => {
                let spooled = SpooledDump {
                    path: plan.spool.clone(),
                };
                let spool_dir = plan.spool.parent().unwrap_or(Path::new("/"));
                let mut guard = DiskGuard::new(spool_dir, TEMPORARY_AREA, plan.reserve);
                guard.expect(entry.size()).map_err(io_error)?;
                let file = GuardedWriter {
                    inner: supascale_shared::private_fs::create_file(&spooled.path)
                        .map_err(io_error)?,
                    guard,
                };
                let (size, sha256) = copy_hashed(entry, file).map_err(spooling)?;
                self.dump = Some(spooled);
                Ok(Some(Added::File { size, sha256 }))
            }
            "roles.sql" => {
                let mut text = Vec::new();
                let (size, sha256) = copy_hashed(entry, &mut text).map_err(corrupt)?;
                self.roles = Some(String::from_utf8_lossy(&text).into_owned());
                Ok(Some(Added::File { size, sha256 }))
            }
            _ => Ok(None),
        }
    }

    /// Stages an entry of storage or functions beside its target folder.
    fn add_tree<R: Read>(
        &mut self,
        plan: &UnpackPlan,
        component: &str,
        rest: &str,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<Added, JobError> {
        let (slot, target, area) = if component == "storage" {
            (&mut self.storage, &plan.storage, STORAGE_AREA)
        } else {
            (&mut self.functions, &plan.functions, FUNCTIONS_AREA)
        };
        if slot.is_none() {
            let options = Options {
                archive_prefix: Some(PathBuf::from(component)),
                drop_exec_bits: component == "storage",
                limits: Limits {
                    disk: Some(plan.disk(area)),
                    ..Limits::default()
                },
                ..own()
            };
            *slot = Some(StagedTree::begin_with(target, &plan.job_id, options).map_err(io_error)?);
        }
        let tree = slot.as_mut().expect("just set");
        tree.add(Path::new(rest), entry).map_err(stage_error)
    }

    /// Stages a config file beside itself: in the project's folder, or at
    /// its absolute path for `config/extra/…`.
    fn add_config<R: Read>(
        &mut self,
        plan: &UnpackPlan,
        rest: &str,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<Option<Added>, JobError> {
        if rest.is_empty() {
            return Ok(None);
        }
        if self.config.is_none() {
            let options = Options {
                limits: Limits {
                    disk: Some(plan.disk(CONFIG_AREA)),
                    ..Limits::default()
                },
                ..own()
            };
            self.config = Some(StagedFiles::begin_with(&plan.job_id, options).map_err(io_error)?);
        }
        let files = self.config.as_mut().expect("just set");
        let (base, relative) = match rest.strip_prefix("extra/") {
            Some(absolute) => (PathBuf::from("/"), absolute.to_string()),
            None => (plan.root.clone(), rest.to_string()),
        };
        files
            .add(&base, Path::new(&relative), entry)
            .map(Some)
            .map_err(stage_error)
    }

    /// The staged trees finished, ready to swap in.
    fn finish(self, files: u64) -> Result<Unpacked, JobError> {
        let finish = |tree: Option<StagedTree>| -> Result<Option<Ready>, JobError> {
            tree.map(|t| t.finish().map_err(io_error)).transpose()
        };
        Ok(Unpacked {
            dump: self.dump,
            files,
            roles: self.roles,
            storage: finish(self.storage)?,
            functions: finish(self.functions)?,
            config: self.config,
        })
    }
}

impl UnpackPlan {
    /// The disk reserve kept in `area` while staging.
    fn disk(&self, area: &'static str) -> DiskReserve {
        DiskReserve {
            area,
            reserve: self.reserve,
            free: None,
        }
    }
}

/// The staging options of every component.
fn own() -> Options {
    Options {
        // A backup of a real project may hold absolute links; it is ours.
        symlinks: SymlinkPolicy::KeepAsIs,
        ..Options::default()
    }
}

/// What a file, folder or link entry is, read but staged nowhere (verify).
fn only_checked<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Added, JobError> {
    let kind = entry.header().entry_type();
    Ok(if kind.is_file() {
        let (size, sha256) = copy_hashed(entry, std::io::sink()).map_err(corrupt)?;
        Added::File { size, sha256 }
    } else if kind.is_dir() {
        Added::Dir
    } else if kind.is_symlink() {
        Added::Symlink {
            target: entry
                .link_name()
                .map_err(corrupt)?
                .map(|l| l.into_owned())
                .unwrap_or_default(),
        }
    } else {
        Added::HardLink {
            to: PathBuf::from("?"),
        }
    })
}

/// The entry at `path` became what the manifest lists there.
fn check_against_manifest(
    path: &str,
    expected: &ManifestEntry,
    added: &Added,
) -> Result<(), JobError> {
    let matches = match added {
        Added::File { size, sha256 } => {
            if expected.kind == "file"
                && (Some(sha256) != expected.sha256.as_ref() || *size != expected.size)
            {
                return Err(JobError::Artifact(format!("checksum mismatch in {path}")));
            }
            expected.kind == "file"
        }
        Added::Dir => expected.kind == "dir",
        Added::Symlink { target } => {
            expected.kind == "symlink"
                && expected.link.as_deref() == Some(target.to_string_lossy().as_ref())
        }
        Added::HardLink { .. } => false,
    };
    if !matches {
        return Err(JobError::Artifact(format!(
            "{path} in the artifact is not the {} its manifest lists",
            expected.kind
        )));
    }
    Ok(())
}

/// Every file the manifest lists for the wanted components was `seen`.
fn check_nothing_lacking(plan: &UnpackPlan, seen: &BTreeSet<String>) -> Result<(), JobError> {
    for (path, entry) in &plan.entries {
        let component = path.split('/').next().unwrap_or("");
        if plan.wanted.contains(component)
            && !(plan.skip_extra_config && path.starts_with("config/extra/"))
            && entry.kind == "file"
            && path != "manifest.json"
            && !seen.contains(path)
        {
            return Err(JobError::Artifact(format!(
                "the artifact lacks {path}, which its manifest lists (truncated?)"
            )));
        }
    }
    Ok(())
}

fn corrupt(e: std::io::Error) -> JobError {
    JobError::Artifact(format!(
        "the artifact cannot be read (corrupt or truncated): {e}"
    ))
}

/// Out of space while spooling is ours to say, not a corrupt artifact.
fn spooling(e: std::io::Error) -> JobError {
    if supascale_shared::disk::is_out_of_space(&e) {
        io_error(e)
    } else {
        corrupt(e)
    }
}

fn stage_error(e: supascale_shared::restore::staging::StageError) -> JobError {
    match e {
        supascale_shared::restore::staging::StageError::Io { source, .. }
            if supascale_shared::disk::is_out_of_space(&source) =>
        {
            io_error(source)
        }
        other => JobError::Artifact(other.to_string()),
    }
}

/// Copies `reader` to `sink`, returning the size and SHA-256 of the bytes.
fn copy_hashed(reader: &mut impl Read, mut sink: impl Write) -> std::io::Result<(u64, String)> {
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        sink.write_all(&buffer[..n])?;
        size += n as u64;
    }
    sink.flush()?;
    Ok((size, hex::encode(hasher.finalize())))
}
