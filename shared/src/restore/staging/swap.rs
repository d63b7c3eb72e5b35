//! Swapping names (one `renameat2(RENAME_EXCHANGE)` where the kernel can),
//! flushing, and a folder's own mode, times and xattrs.

use super::*;

/// Moves `live` to `kept` and `new` to `live` (whichever exist). On error
/// nothing has moved.
pub(super) fn swap_paths(
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
pub(super) fn unswap_paths(
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
pub(super) fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
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
pub(super) fn exchange(_a: &Path, _b: &Path) -> io::Result<bool> {
    Ok(false)
}

/// Writes the staged data to disk before it is renamed into place, so a
/// crash after the swap cannot leave empty files under the final names. One
/// `syncfs` costs far less than an fsync per storage object.
pub(super) fn flush_filesystem(path: &Path) -> io::Result<()> {
    crate::disk::sync_file_system(&File::open(path)?)
}

/// The target folder's own metadata, read before the swap to put back on
/// roll back, or taken from the archive's entry for the folder.
#[derive(Debug, Clone)]
pub(super) struct DirState {
    pub(super) mode: u32,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    pub(super) xattrs: Vec<(OsString, Vec<u8>)>,
    pub(super) mtime: Option<SystemTime>,
}

impl DirState {
    pub(super) fn from_entry(meta: &NodeMeta) -> DirState {
        DirState {
            mode: dir_mode(meta.mode),
            uid: meta.uid,
            gid: meta.gid,
            xattrs: meta.xattrs.clone(),
            mtime: mtime_of(meta.mtime),
        }
    }
}

pub(super) fn read_dir_state(path: &Path) -> io::Result<DirState> {
    let metadata = fs::metadata(path)?;
    Ok(DirState {
        mode: metadata.mode() & 0o7777,
        uid: Some(metadata.uid()),
        gid: Some(metadata.gid()),
        xattrs: user_xattrs(path)?,
        mtime: Some(metadata.modified()?),
    })
}

pub(super) fn write_dir_state(path: &Path, state: &DirState) -> io::Result<()> {
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
pub(super) fn user_xattrs_nofollow(path: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
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

pub(super) fn user_xattrs(path: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
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
