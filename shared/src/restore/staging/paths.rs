//! Paths of hostile archives: clean relative paths, parents that are
//! real folders, links that stay inside, and our own reserved names.

use super::*;

/// `relative` with `.` dropped; `..` and roots refused.
pub(super) fn clean_relative(relative: &Path, shown: &Path) -> Result<PathBuf, StageError> {
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
pub(super) fn check_parents(
    root: &Path,
    rel: &Path,
    shown: &Path,
    create: bool,
) -> Result<(), StageError> {
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
pub(super) fn stays_inside(link: &Path, target: &Path) -> bool {
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

pub(super) fn exists(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(about(path, e)),
    }
}

pub(super) fn remove_file_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes a folder and everything below it, never following symlinks.
pub(super) fn remove_tree(path: &Path) -> io::Result<()> {
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

pub(super) fn make_writable(path: &Path) {
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

pub(super) fn staging_name(job_id: &str) -> OsString {
    format!("{STAGING_PREFIX}{job_id}").into()
}

pub(super) fn old_name(job_id: &str) -> OsString {
    format!("{OLD_PREFIX}{job_id}").into()
}

/// The job id becomes part of file names.
pub(super) fn check_job_id(job_id: &str) -> io::Result<()> {
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
