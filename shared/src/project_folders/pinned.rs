//! A project's folders opened once, beneath its root, at the moment a job
//! starts to use them: later renames or symlinks along the stored paths no
//! longer change what the job reads or writes.
//!
//! The root is opened with `openat2(RESOLVE_NO_SYMLINKS)` (a stored root is
//! already resolved, so any symlink in its path now is a refusal), storage
//! and functions with `openat2(root, relative, RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`. On a kernel without `openat2` (before 5.6) the
//! same is a walk of `openat(O_PATH | O_NOFOLLOW | O_DIRECTORY)`, one
//! component at a time.
//!
//! Jobs then work through [`PinnedDir::path`], `/proc/self/fd/<fd>`: the
//! kernel resolves that link to the opened folder itself, whatever has been
//! renamed or symlinked since, so code written for paths (staging, swaps)
//! keeps working unchanged beneath it. Users never see those paths:
//! [`shown`] turns one back into the registered path while its pin lives
//! (staging's messages go through it).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use rustix::fs::{CWD, Mode, OFlags, ResolveFlags};

/// Each open pin by its fd (an fd number is unique while it is open).
static PINS: Mutex<BTreeMap<i32, Weak<Pin>>> = Mutex::new(BTreeMap::new());

const FD_DIR: &str = "/proc/self/fd";

#[derive(Debug)]
struct Pin {
    fd: OwnedFd,
    shown: PathBuf,
}

impl Drop for Pin {
    fn drop(&mut self) {
        // Before the fd closes (after this body): its number may be reused
        // at once.
        pins().remove(&self.fd.as_raw_fd());
    }
}

fn pins() -> std::sync::MutexGuard<'static, BTreeMap<i32, Weak<Pin>>> {
    PINS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A folder held open (`O_PATH`); the registered path is what messages
/// show. Clones share the fd, which closes with the last of them: whatever
/// still works under [`path`](Self::path) (a staging folder, a swap that
/// may be rolled back, a thread a cancelled job left running) holds a clone
/// ([`hold`]), so the number is never reused under it.
#[derive(Debug, Clone)]
pub struct PinnedDir(Arc<Pin>);

impl PinnedDir {
    fn new(fd: OwnedFd, shown: &Path) -> Self {
        let pin = Arc::new(Pin {
            fd,
            shown: shown.to_path_buf(),
        });
        pins().insert(pin.fd.as_raw_fd(), Arc::downgrade(&pin));
        Self(pin)
    }

    /// `/proc/self/fd/<fd>`: the opened folder, as a base path for later
    /// operations. Never shown to users (see [`shown`]).
    pub fn path(&self) -> PathBuf {
        Path::new(FD_DIR).join(self.0.fd.as_raw_fd().to_string())
    }

    /// The folder as registered.
    pub fn shown(&self) -> &Path {
        &self.0.shown
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.fd.as_fd()
    }
}

/// The live pin `path` lies under (`/proc/self/fd/<fd>/…`), and the rest of
/// `path` below it.
fn pin_of(path: &Path) -> Option<(Arc<Pin>, PathBuf)> {
    let rest = path.strip_prefix(FD_DIR).ok()?;
    let mut components = rest.components();
    let fd = components
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .and_then(|n| n.parse::<i32>().ok())?;
    let pin = pins().get(&fd)?.upgrade()?;
    Some((pin, components.as_path().to_path_buf()))
}

/// `path` as users know it: a path under a live pin's
/// `/proc/self/fd/<fd>` becomes the same path under the registered folder;
/// any other path is returned as it is.
pub fn shown(path: &Path) -> PathBuf {
    match pin_of(path) {
        Some((pin, rest)) if rest.as_os_str().is_empty() => pin.shown.clone(),
        Some((pin, rest)) => pin.shown.join(rest),
        None => path.to_path_buf(),
    }
}

/// The pin `path` lies under, held: for code that keeps working under a
/// path it was given.
pub fn hold(path: &Path) -> Option<PinnedDir> {
    pin_of(path).map(|(pin, _)| PinnedDir(pin))
}

/// The flags every folder of ours is held with.
fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// Opens `path` (absolute) with no symlink anywhere in it.
pub fn open_no_symlinks(path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    match openat2_retrying(CWD, path, flags, ResolveFlags::NO_SYMLINKS) {
        Err(e) if without_openat2(&e) => {
            let root = rustix::fs::open("/", dir_flags(), Mode::empty())?;
            walk(root.as_fd(), path.strip_prefix("/").unwrap_or(path), flags)
        }
        other => other,
    }
}

/// Opens `relative` beneath `dir`, with no symlink and no `..` on the way.
pub fn open_beneath(dir: BorrowedFd<'_>, relative: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
    match openat2_retrying(dir, relative, flags, how) {
        Err(e) if without_openat2(&e) => walk(dir, relative, flags),
        other => other,
    }
}

/// The kernel has no `openat2` (`ENOSYS`), or a seccomp filter written
/// before it refuses it (some answer `EPERM`, which `openat2` itself never
/// does for a folder opened `O_PATH`).
fn without_openat2(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM))
}

/// `openat2`, again when the kernel saw a rename race (`EAGAIN`, which
/// `RESOLVE_BENEATH` answers rather than risk an escape).
fn openat2_retrying(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: OFlags,
    how: ResolveFlags,
) -> io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags | OFlags::CLOEXEC, Mode::empty(), how) {
            Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
            result => return result.map_err(io::Error::from),
        }
    }
}

/// What `openat2` does, for kernels without it: each folder on the way
/// opened with `O_NOFOLLOW` from the one before, the last with `flags`
/// and `O_NOFOLLOW` too. `..` and absolute paths are refused (`EXDEV`, as
/// `RESOLVE_BENEATH` answers); a symlink anywhere is `ELOOP`.
pub fn walk(dir: BorrowedFd<'_>, relative: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let mut names = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(name) => names.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
        }
    }
    let Some((last, folders)) = names.split_last() else {
        return Ok(rustix::fs::openat(
            dir,
            ".",
            flags | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
    };
    let mut at: Option<OwnedFd> = None;
    for name in folders {
        let from = at.as_ref().map_or(dir, |fd| fd.as_fd());
        at = Some(open_no_follow(from, name, dir_flags())?);
    }
    let from = at.as_ref().map_or(dir, |fd| fd.as_fd());
    open_no_follow(from, last, flags)
}

/// `name` in `dir` opened with `O_NOFOLLOW`; a symlink is `ELOOP` whatever
/// the flags (`O_PATH | O_NOFOLLOW` would open the link itself, and
/// `O_DIRECTORY` answer `ENOTDIR`).
fn open_no_follow(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) if is_symlink(rustix::fs::fstat(&fd)?.st_mode) => {
            Err(io::Error::from_raw_os_error(libc::ELOOP))
        }
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::NOTDIR)
            if rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|s| is_symlink(s.st_mode)) =>
        {
            Err(io::Error::from_raw_os_error(libc::ELOOP))
        }
        Err(e) => Err(e.into()),
    }
}

fn is_symlink(mode: u32) -> bool {
    rustix::fs::FileType::from_raw_mode(mode).is_symlink()
}

/// Opens the folder `relative` beneath `dir`, creating what is missing of
/// it one folder at a time (`mkdirat`, then opened with `O_NOFOLLOW`: a
/// symlink put in the new name's place is refused, never followed).
pub fn open_or_create_beneath(dir: BorrowedFd<'_>, relative: &Path) -> io::Result<OwnedFd> {
    match open_beneath(dir, relative, dir_flags()) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut at = rustix::fs::openat(dir, ".", dir_flags(), Mode::empty())?;
    for component in relative.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::CurDir => continue,
            _ => return Err(io::Error::from_raw_os_error(libc::EXDEV)),
        };
        match rustix::fs::mkdirat(&at, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let next = open_beneath(at.as_fd(), Path::new(name), dir_flags())?;
        at = next;
    }
    Ok(at)
}

/// Which missing folders a pin creates (a restore or an import into a
/// fresh project) rather than leaving out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Create {
    pub storage: bool,
    pub functions: bool,
}

/// A project's folders, pinned: see the module's documentation.
#[derive(Debug)]
pub struct PinnedFolders {
    pub root: PinnedDir,
    /// `None`: the folder does not exist (and was not to be created).
    pub storage: Option<PinnedDir>,
    pub functions: Option<PinnedDir>,
    /// The config paths as registered; each is opened at its use through
    /// [`PinnedFolders::open_parent`].
    pub config: Vec<PathBuf>,
}

/// Why a pin failed: `field` and `path` as registered.
fn refused(project: &str, field: &str, path: &Path, e: &io::Error) -> String {
    let why = match e.raw_os_error() {
        Some(libc::ELOOP) => {
            "a symbolic link is now in its path (it was registered without one)".to_string()
        }
        Some(libc::EXDEV) => "it now leads out of the project's folder".to_string(),
        Some(libc::ENOTDIR) => "a part of its path is no longer a folder".to_string(),
        _ => e.kind().to_string(),
    };
    format!(
        "project {project}'s {field} {} cannot be opened: {why}; register the folder again",
        path.display()
    )
}

impl PinnedFolders {
    /// Opens `folders` (stored, checked by the rules just before): the
    /// root with no symlinks in its path, storage and functions beneath it.
    pub(super) fn open(
        project: &str,
        folders: &super::ProjectFolders,
        create: Create,
    ) -> Result<Self, String> {
        let root_fd = open_no_symlinks(&folders.root, dir_flags())
            .map_err(|e| refused(project, "rootDir", &folders.root, &e))?;
        let root = PinnedDir::new(root_fd, &folders.root);
        let beneath = |field: &str, path: &Path, create: bool| {
            let relative = path.strip_prefix(&folders.root).map_err(|_| {
                format!(
                    "project {project}'s {field} {} must lie inside rootDir",
                    path.display()
                )
            })?;
            let opened = if create {
                open_or_create_beneath(root.fd(), relative)
            } else {
                open_beneath(root.fd(), relative, dir_flags())
            };
            match opened {
                Ok(fd) => Ok(Some(PinnedDir::new(fd, path))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(refused(project, field, path, &e)),
            }
        };
        let storage = beneath("storageDir", &folders.storage, create.storage)?;
        let functions = beneath("functionsDir", &folders.functions, create.functions)?;
        Ok(Self {
            root,
            storage,
            functions,
            config: folders.config.clone(),
        })
    }

    /// The folder holding `path` and its last name: `path` relative to the
    /// root is opened beneath the pinned root; an absolute path outside it
    /// (a config path only an admin sets) with no symlinks from `/`.
    /// `Ok(None)` when the folder does not exist.
    pub fn open_parent(&self, path: &Path) -> io::Result<Option<(OwnedFd, OsString)>> {
        let Some(name) = path.file_name().map(OsStr::to_os_string) else {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        };
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let opened = if path.is_relative() {
            open_beneath(self.root.fd(), parent, dir_flags())
        } else if let Ok(inside) = parent.strip_prefix(self.root.shown()) {
            let inside = if inside.as_os_str().is_empty() {
                Path::new(".")
            } else {
                inside
            };
            open_beneath(self.root.fd(), inside, dir_flags())
        } else {
            open_no_symlinks(parent, dir_flags())
        };
        match opened {
            Ok(fd) => Ok(Some((fd, name))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
