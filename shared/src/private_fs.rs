//! Files and folders of our own — artifacts on a local destination, spooled
//! dumps, uploads, the data dir with `master.key` and the SQLite files — are
//! private to the service's user: files `0600`, folders `0700`.
//!
//! A backup holds a full dump and the project's `.env`, so the mode is set
//! when the file or folder is created, never by a `chmod` once the content is
//! there (a reader that opened it in between keeps reading). Files are also
//! given `0600` with `fchmod` right after `open`, before any byte, so that a
//! file an older version left with other modes, or an unusual umask, changes
//! nothing. Existing folders are left as they are: they may be the operator's.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Creates `path` and its missing parents with mode `0700`; folders that
/// exist are not touched.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Creates (or truncates) `path` for writing, `0600` before anything is
/// written to it.
pub fn create_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Creates `path`, which must not exist, for writing, `0600`.
pub fn create_new_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Writes `contents` to a private file at `path` (see [`create_file`]).
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> io::Result<()> {
    create_file(path)?.write_all(contents.as_ref())
}

/// Makes sure a file exists at `path` without changing one that does: an
/// empty `0600` file for a program that creates its files with looser modes
/// (SQLite makes a new database `0644`, and its `-wal` and `-shm` files take
/// the database file's mode).
pub fn ensure_file(path: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(file) => file.set_permissions(Permissions::from_mode(FILE_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn what_it_creates_is_private_and_what_exists_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, Permissions::from_mode(0o755)).unwrap();
        create_dir_all(&existing.join("a/b")).unwrap();
        assert_eq!(mode(&existing), 0o755);
        assert_eq!(mode(&existing.join("a")), 0o700);
        assert_eq!(mode(&existing.join("a/b")), 0o700);

        let file = existing.join("a/file");
        std::fs::write(&file, "old").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        write(&file, "new").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");

        let db = existing.join("a/db");
        ensure_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        std::fs::write(&db, "data").unwrap();
        std::fs::set_permissions(&db, Permissions::from_mode(0o640)).unwrap();
        ensure_file(&db).unwrap();
        assert_eq!(mode(&db), 0o640);
        assert_eq!(std::fs::read_to_string(&db).unwrap(), "data");
    }
}
