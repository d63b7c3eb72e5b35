//! Objects fetched from the source, staged into the project's storage
//! folder the way a storage import stages an archive's
//! ([`crate::import::storage`]): the staged `stub` starts as a hard-link
//! copy of the project's, the versions of every key the migration brings
//! are dropped from the copy, and each fetched file is hard-linked in at
//! `stub/stub/<bucket>/<key>/<new version>` (the fetched file already
//! carries the backend's `user.supabase.*` xattrs, and a hard link shares
//! them). Nothing is copied, and [`Ready::merge_in`] swaps the one child
//! `stub` in.
//!
//! Bucket and key come from the source and are hostile: a name with an
//! empty, `.` or `..` segment, a NUL, or a bucket named like our own
//! folders is skipped with a warning, and no folder on the way may be a
//! symlink (the copy keeps the project's links as links).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::import::storage::{STUB, remove_versions};
use crate::restore::staging::{Ready, StagedTree};

const FETCH_PREFIX: &str = ".supascale-fetch-";

/// The name of a job's download folder beside the storage folder's `stub`
/// (kept across attempts, so a resumed job fetches only what is missing).
pub fn fetch_dir_name(job_id: &str) -> String {
    format!("{FETCH_PREFIX}{job_id}")
}

/// The download folders in `storage_dir`: `(job id, folder)`. One whose job
/// is over is a leftover (its worker died before removing it).
pub fn fetch_dirs(storage_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(storage_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let job = name.strip_prefix(FETCH_PREFIX)?.to_string();
            Some((job, e.path()))
        })
        .collect()
}

/// One fetched object: its file in the job's download folder.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bucket: String,
    pub name: String,
    pub path: PathBuf,
}

/// What [`stage_fetched`] did.
pub struct Staged {
    pub ready: Ready,
    /// (index into the input, version) of every object staged.
    pub staged: Vec<(usize, String)>,
    pub warnings: Vec<String>,
}

/// Why a bucket or key cannot be a path of the file backend, if it cannot.
pub fn unsafe_name(bucket: &str, key: &str) -> Option<&'static str> {
    let segment_bad = |s: &str| s.is_empty() || s == "." || s == ".." || s.len() > 255;
    if bucket.contains('/') || segment_bad(bucket) {
        return Some("the bucket name is not a folder name");
    }
    if bucket.starts_with(".supascale") {
        return Some("the bucket name is reserved");
    }
    if bucket.contains('\0') || key.contains('\0') {
        return Some("the name holds a NUL byte");
    }
    if key.split('/').any(segment_bad) {
        return Some("the key has an empty, `.` or `..` segment");
    }
    None
}

/// Stages `objects` into `storage_dir` (see the module); `version` names
/// each new version.
pub fn stage_fetched(
    storage_dir: &Path,
    job_id: &str,
    objects: &[Fetched],
    mut version: impl FnMut() -> String,
) -> io::Result<Staged> {
    let mut tree = StagedTree::begin(storage_dir, job_id)?;
    tree.ignore_owners();
    tree.link_from_target(std::ffi::OsStr::new("stub"))?;
    let root = tree.staging_dir().to_path_buf();
    let mut staged = Vec::with_capacity(objects.len());
    let mut warnings = Vec::new();
    let mut folders = Folders::default();
    for (index, object) in objects.iter().enumerate() {
        if let Some(why) = unsafe_name(&object.bucket, &object.name) {
            warnings.push(format!(
                "storage: {}/{} was not migrated: {why}",
                object.bucket, object.name
            ));
            continue;
        }
        let rel: PathBuf = STUB
            .iter()
            .copied()
            .chain([object.bucket.as_str()])
            .chain(object.name.split('/'))
            .collect();
        match folders.prepare(&root, &rel) {
            Ok(true) => remove_versions(&root, &object.bucket, &object.name)?,
            Ok(false) => {}
            Err(why) => {
                warnings.push(format!(
                    "storage: {}/{} was not migrated: {why}",
                    object.bucket, object.name
                ));
                continue;
            }
        }
        let name = version();
        fs::hard_link(&object.path, root.join(&rel).join(&name))?;
        staged.push((index, name));
    }
    Ok(Staged {
        ready: tree.finish()?,
        staged,
        warnings,
    })
}

/// The folders of the staged tree known to be real folders, so that each
/// is looked at once however many keys it holds (a look and a `mkdir` per
/// segment of every key took about 1 s of 10,000 objects: bench-lift-shift).
#[derive(Default)]
struct Folders {
    known: HashSet<PathBuf>,
}

impl Folders {
    /// Makes every folder of `rel` under `root`, refusing to go through a
    /// symlink or a file. True when the last one was there already (it
    /// may hold versions of the key).
    fn prepare(&mut self, root: &Path, rel: &Path) -> Result<bool, String> {
        let mut at = PathBuf::with_capacity(rel.as_os_str().len());
        let mut existed = true;
        for part in rel.components() {
            at.push(part);
            if self.known.contains(&at) {
                continue;
            }
            let full = root.join(&at);
            // Below a folder made just now, nothing is there yet.
            let found = if existed {
                match fs::symlink_metadata(&full) {
                    Ok(m) if m.is_dir() => true,
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err("a folder on its path is a symlink in the project".into());
                    }
                    Ok(_) => return Err("a file of the project is where its folder goes".into()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(e.to_string()),
                }
            } else {
                false
            };
            if !found {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&full)
                    .map_err(|e| e.to_string())?;
                existed = false;
            }
            self.known.insert(at.clone());
        }
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        assert!(unsafe_name("avatars", "u1/me.png").is_none());
        assert!(unsafe_name("avatars", "résumé 2026 (1).pdf").is_none());
        assert!(unsafe_name("avatars", "../../etc/passwd").is_some());
        assert!(unsafe_name("avatars", "a//b").is_some());
        assert!(unsafe_name("avatars", "a/./b").is_some());
        assert!(unsafe_name("..", "x").is_some());
        assert!(unsafe_name("a/b", "x").is_some());
        assert!(unsafe_name(".supascale-restore-job-1", "x").is_some());
        assert!(unsafe_name("avatars", "x\0y").is_some());
    }

    #[test]
    fn fetched_files_are_linked_in_beside_the_projects_objects() {
        let storage = tempfile::tempdir().unwrap();
        let fetch = storage.path().join(fetch_dir_name("job-1"));
        fs::create_dir_all(&fetch).unwrap();
        let keep = storage.path().join("stub/stub/docs/keep.txt");
        fs::create_dir_all(&keep).unwrap();
        fs::write(keep.join("v-old"), b"kept").unwrap();
        let replaced = storage.path().join("stub/stub/avatars/me.png");
        fs::create_dir_all(&replaced).unwrap();
        fs::write(replaced.join("v-old"), b"old").unwrap();
        // A link the project has must not lead the staging out.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), storage.path().join("stub/stub/linked"))
            .unwrap();
        let mut objects = Vec::new();
        for (bucket, name, bytes) in [
            ("avatars", "me.png", &b"new"[..]),
            ("avatars", "deep/er/x.bin", b"x"),
            ("linked", "escape.txt", b"no"),
            ("avatars", "../up", b"no"),
        ] {
            let path = fetch.join(format!("{}", objects.len()));
            fs::write(&path, bytes).unwrap();
            objects.push(Fetched {
                bucket: bucket.into(),
                name: name.into(),
                path,
            });
        }
        let mut n = 0;
        let staged = stage_fetched(storage.path(), "job-1", &objects, || {
            n += 1;
            format!("v{n}")
        })
        .unwrap();
        assert_eq!(
            staged.staged,
            vec![(0, "v1".to_string()), (1, "v2".to_string())]
        );
        assert_eq!(staged.warnings.len(), 2, "{:?}", staged.warnings);
        let swapped = staged.ready.merge_in().unwrap();
        swapped.commit().unwrap();
        let stub = storage.path().join("stub/stub");
        assert_eq!(fs::read(stub.join("avatars/me.png/v1")).unwrap(), b"new");
        assert!(!stub.join("avatars/me.png/v-old").exists());
        assert_eq!(
            fs::read(stub.join("avatars/deep/er/x.bin/v2")).unwrap(),
            b"x"
        );
        assert_eq!(fs::read(stub.join("docs/keep.txt/v-old")).unwrap(), b"kept");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
