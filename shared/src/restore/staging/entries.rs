//! Writing one archive entry: its file, link or folder with its mode,
//! owner, times and `user.*` xattrs, hashed as it is written.

use super::*;

/// What the header and PAX records say about an entry.
#[derive(Debug, Clone)]
pub(super) struct NodeMeta {
    pub(super) mode: u32,
    pub(super) mtime: u64,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    /// `user.*` only.
    pub(super) xattrs: Vec<(OsString, Vec<u8>)>,
}

pub(super) fn entry_meta<R: Read>(
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
pub(super) struct Sinks<'a> {
    pub(super) budget: &'a mut Budget,
    pub(super) disk: Option<&'a mut DiskGuard>,
    pub(super) buffer: &'a mut [u8],
}

/// Streams the entry's bytes into a new file at `dest` (never through a
/// symlink), applies its metadata, and returns size and SHA-256 (hex).
pub(super) fn write_file<R: Read>(
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

pub(super) fn make_symlink(target: &Path, dest: &Path, meta: &NodeMeta) -> io::Result<()> {
    std::os::unix::fs::symlink(target, dest)?;
    if meta.uid.is_some() || meta.gid.is_some() {
        chown_quietly(std::os::unix::fs::lchown(dest, meta.uid, meta.gid))?;
    }
    // Linux refuses user.* xattrs on symlinks, so only the mtime.
    set_symlink_mtime(dest, meta.mtime)
}

pub(super) fn set_symlink_mtime(path: &Path, mtime: u64) -> io::Result<()> {
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

pub(super) fn own(file: &File, meta: &NodeMeta) -> io::Result<()> {
    if meta.uid.is_none() && meta.gid.is_none() {
        return Ok(());
    }
    chown_quietly(std::os::unix::fs::fchown(file, meta.uid, meta.gid))
}

/// Only root may give files away; anyone else keeps them as their own.
pub(super) fn chown_quietly(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL)) => Ok(()),
        other => other,
    }
}

pub(super) fn set_xattrs(file: &File, meta: &NodeMeta) -> io::Result<()> {
    for (name, value) in &meta.xattrs {
        file.set_xattr(name, value)?;
    }
    Ok(())
}

pub(super) fn set_mtime(file: &File, mtime: u64) -> io::Result<()> {
    match mtime_of(mtime) {
        Some(time) => file.set_times(FileTimes::new().set_modified(time)),
        None => Ok(()),
    }
}

pub(super) fn mtime_of(seconds: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// Set-ID bits on a restored file could hand an uploaded binary someone
/// else's rights; storage objects and functions never need them.
pub(super) fn file_mode(mode: u32) -> u32 {
    mode & 0o1777
}

/// Set-group-ID on a folder only makes new files inherit its group; keep it.
pub(super) fn dir_mode(mode: u32) -> u32 {
    mode & 0o3777
}

pub(super) fn is_file(kind: EntryType) -> bool {
    matches!(
        kind,
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
    )
}

pub(super) fn refuse_special(kind: EntryType, shown: &Path) -> Result<(), StageError> {
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

pub(super) fn link_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    shown: &Path,
) -> Result<PathBuf, StageError> {
    match entry.link_name_bytes() {
        Some(bytes) if !bytes.is_empty() => Ok(PathBuf::from(OsStr::from_bytes(&bytes))),
        _ => Err(StageError::Unsupported {
            path: shown.to_path_buf(),
            kind: "link without a target".into(),
        }),
    }
}

pub(super) fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&entry.path_bytes()))
}

pub(super) fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}
