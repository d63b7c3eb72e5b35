//! Free disk space: what every writer of large files (uploads, staging,
//! spools) keeps free, and the one message that says it ran out.
//!
//! A writer checks before it starts, against what it knows it will write
//! (a `Content-Length`, a manifest's sizes, an archive's declared sizes),
//! and again every [`CHECK_EVERY`] bytes while it writes, since what was
//! declared may lie and other writers share the disk. Either way it stops
//! while `SUPASCALE_DISK_RESERVE_BYTES` are still free, with an
//! [`OutOfSpace`] error, never at the kernel's ENOSPC.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// How every out-of-space message starts (the contract's words).
pub const INSUFFICIENT: &str = "Insufficient disk space";

/// The areas named in messages.
pub const TEMPORARY_AREA: &str = "the temporary area";
pub const UPLOAD_AREA: &str = "the upload area";
pub const STORAGE_AREA: &str = "the storage folder";
pub const FUNCTIONS_AREA: &str = "the functions folder";
pub const CONFIG_AREA: &str = "the config folder";

/// How many bytes a [`DiskGuard`] lets through between two looks at the
/// free space: small beside the 256 MiB reserve, and a `statvfs` every
/// 8 MiB costs nothing beside writing them.
pub const CHECK_EVERY: u64 = 8 * 1024 * 1024;

/// Bytes free for an unprivileged writer on the filesystem of `path`.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a path with a NUL byte"))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed struct that statvfs fills in.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// `1536` → `1.5 KiB`: sizes in messages.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A writer stopped (or refused to start) to keep the reserve free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfSpace {
    /// Which area, in words (`the upload area`); never a path, since the
    /// message reaches API clients.
    pub area: String,
    /// Free bytes when it stopped.
    pub free: u64,
    /// What it still had to write, the reserve included.
    pub needed: u64,
}

impl fmt::Display for OutOfSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{INSUFFICIENT} on {}: {} left, {} needed",
            self.area,
            human_bytes(self.free),
            human_bytes(self.needed)
        )
    }
}

impl std::error::Error for OutOfSpace {}

impl From<OutOfSpace> for io::Error {
    fn from(e: OutOfSpace) -> io::Error {
        io::Error::new(io::ErrorKind::StorageFull, e)
    }
}

/// Whether `e` says a disk is full: our own [`OutOfSpace`] or the
/// kernel's ENOSPC / EDQUOT. Never worth a retry.
pub fn is_out_of_space(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// The out-of-space I/O error somewhere in `e`'s chain of causes (an
/// OpenDAL error over the file system's, say).
pub fn out_of_space_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cause = Some(e);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            if is_out_of_space(io) {
                return Some(io);
            }
            // `io::Error::source` skips the error it wraps.
            if let Some(inner) = io.get_ref() {
                cause = Some(inner);
                continue;
            }
        }
        cause = error.source();
    }
    None
}

/// The message for an out-of-space `e` met while writing to `area`: ours
/// as it is, the kernel's with the free space now.
pub fn out_of_space_message(e: &io::Error, area: &str, path: &Path) -> String {
    if let Some(ours) = find_out_of_space(e) {
        return ours.to_string();
    }
    OutOfSpace {
        area: area.to_string(),
        free: available_bytes(path).unwrap_or(0),
        needed: 0,
    }
    .to_string()
}

/// Our [`OutOfSpace`] inside `e`, however many layers of context wrap it.
pub fn find_out_of_space(e: &io::Error) -> Option<&OutOfSpace> {
    let mut inner: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(error) = inner {
        if let Some(ours) = error.downcast_ref::<OutOfSpace>() {
            return Some(ours);
        }
        if let Some(io) = error.downcast_ref::<io::Error>()
            && let Some(ours) = io.get_ref().and_then(|r| r.downcast_ref::<OutOfSpace>())
        {
            return Some(ours);
        }
        inner = error.source();
    }
    None
}

/// Flushes the file system holding `handle` (an open file or folder): data
/// and metadata, in one call that costs far less than an fsync per file.
/// An error written back since `handle` was opened is reported, so open it
/// before the writes it must cover.
#[cfg(target_os = "linux")]
pub fn sync_file_system(handle: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `handle` is an open descriptor for the whole call.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn sync_file_system(_handle: &std::fs::File) -> io::Result<()> {
    // SAFETY: no arguments, no memory.
    unsafe { libc::sync() };
    Ok(())
}

/// The bytes of the files below `dir` (symlinks not followed); what cannot
/// be read counts as nothing.
pub fn used_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// Fails when `path`'s filesystem cannot take `bytes` more and still keep
/// `reserve` free.
pub fn check_room(path: &Path, area: &str, bytes: u64, reserve: u64) -> io::Result<()> {
    let free = available_bytes(path)?;
    let needed = bytes.saturating_add(reserve);
    if free < needed {
        tracing::warn!(path = %crate::project_folders::pinned::shown(path).display(), area, free, needed, reserve, "not enough disk space");
        return Err(OutOfSpace {
            area: area.to_string(),
            free,
            needed,
        }
        .into());
    }
    Ok(())
}

/// One place that will be written, for [`check_all`].
#[derive(Debug, Clone)]
pub struct Need {
    pub area: &'static str,
    pub path: PathBuf,
    pub bytes: u64,
}

/// Checks every place at once, adding up the needs of places on the same
/// filesystem (a spool and a staging folder on one disk both take from
/// it). Each place is created when missing.
pub fn check_all(needs: &[Need], reserve: u64) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut by_device: Vec<(u64, &Need, u64)> = Vec::new();
    for need in needs {
        crate::private_fs::create_dir_all(&need.path)?;
        let device = std::fs::metadata(&need.path)?.dev();
        match by_device.iter_mut().find(|(d, _, _)| *d == device) {
            Some((_, _, total)) => *total = total.saturating_add(need.bytes),
            None => by_device.push((device, need, need.bytes)),
        }
    }
    for (_, need, total) in by_device {
        check_room(&need.path, need.area, total, reserve)?;
    }
    Ok(())
}

/// Watches the free space of one area while a writer fills it: every
/// [`CHECK_EVERY`] bytes, [`DiskGuard::wrote`] fails once the reserve
/// would be touched.
#[derive(Debug, Clone)]
pub struct DiskGuard {
    path: PathBuf,
    area: String,
    reserve: u64,
    unchecked: u64,
    /// What the writer still expects to write, when it knows.
    remaining: Option<u64>,
}

impl DiskGuard {
    pub fn new(path: &Path, area: &str, reserve: u64) -> DiskGuard {
        DiskGuard {
            path: path.to_path_buf(),
            area: area.to_string(),
            reserve,
            unchecked: 0,
            remaining: None,
        }
    }

    /// Checks that `bytes` more fit now, and remembers them as what is
    /// still to come (the message's "needed").
    pub fn expect(&mut self, bytes: u64) -> io::Result<()> {
        self.remaining = Some(bytes);
        self.unchecked = 0;
        check_room(&self.path, &self.area, bytes, self.reserve)
    }

    /// Checks that the next `bytes` fit, unless they are part of what an
    /// [`expect`](Self::expect) already checked.
    pub fn check_next(&mut self, bytes: u64) -> io::Result<()> {
        if self.remaining.is_some_and(|remaining| remaining >= bytes) {
            return Ok(());
        }
        check_room(&self.path, &self.area, bytes, self.reserve)
    }

    /// Counts `n` bytes written; looks at the disk every [`CHECK_EVERY`].
    pub fn wrote(&mut self, n: u64) -> io::Result<()> {
        self.unchecked += n;
        if let Some(remaining) = &mut self.remaining {
            *remaining = remaining.saturating_sub(n);
        }
        if self.unchecked < CHECK_EVERY {
            return Ok(());
        }
        self.unchecked = 0;
        let free = available_bytes(&self.path)?;
        if free < self.reserve {
            let to_come = self.remaining.unwrap_or(CHECK_EVERY).max(1);
            tracing::warn!(path = %crate::project_folders::pinned::shown(&self.path).display(), area = %self.area, free, reserve = self.reserve,
                "stopped writing to keep the disk reserve free");
            return Err(OutOfSpace {
                area: self.area.clone(),
                free,
                needed: to_come.saturating_add(self.reserve),
            }
            .into());
        }
        Ok(())
    }
}

/// A writer that counts what it writes into a [`DiskGuard`].
pub struct GuardedWriter<W> {
    pub inner: W,
    pub guard: DiskGuard,
}

impl<W: io::Write> io::Write for GuardedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.guard.wrote(n as u64)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A small filesystem of its own for tests: a tmpfs when this process may
/// mount one (root), else a folder of the test's disk whose free space is
/// made "small" by a reserve relative to what it has now.
#[cfg(test)]
pub(crate) struct SmallDisk {
    pub dir: tempfile::TempDir,
    mounted: bool,
}

#[cfg(test)]
impl SmallDisk {
    pub fn new(bytes: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        SmallDisk { dir, mounted }
    }

    /// The reserve that leaves `room` bytes to write.
    pub fn reserve_leaving(&self, room: u64) -> u64 {
        available_bytes(self.dir.path())
            .unwrap()
            .saturating_sub(room)
    }
}

#[cfg(test)]
impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(256 * 1024 * 1024), "256.0 MiB");
        assert_eq!(human_bytes(100 << 30), "100.0 GiB");
    }

    #[test]
    fn our_error_is_found_under_context_and_is_out_of_space() {
        let ours = OutOfSpace {
            area: "the upload area".into(),
            free: 10 << 20,
            needed: 300 << 20,
        };
        let e: io::Error = ours.clone().into();
        let wrapped = io::Error::new(e.kind(), format!("a/b: {e}"));
        assert!(is_out_of_space(&e) && is_out_of_space(&wrapped));
        assert_eq!(find_out_of_space(&e), Some(&ours));
        assert_eq!(
            ours.to_string(),
            "Insufficient disk space on the upload area: 10.0 MiB left, 300.0 MiB needed"
        );
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(libc::EIO)));
    }

    #[test]
    fn a_guard_stops_once_the_reserve_would_be_touched() {
        let dir = tempfile::tempdir().unwrap();
        let free = available_bytes(dir.path()).unwrap();
        let mut roomy = DiskGuard::new(dir.path(), "the test area", 0);
        roomy.expect(1).unwrap();
        roomy.wrote(CHECK_EVERY * 3).unwrap();
        // A reserve above what is free: the first look fails.
        let mut tight = DiskGuard::new(dir.path(), "the test area", free.saturating_mul(2));
        tight.wrote(CHECK_EVERY - 1).unwrap();
        let e = tight.wrote(1).unwrap_err();
        assert!(is_out_of_space(&e), "{e}");
        assert!(
            e.to_string()
                .starts_with("Insufficient disk space on the test area: ")
        );
        assert!(tight.expect(1).is_err());
    }
}
