//! Storage objects from an uploaded archive, staged into a project's
//! `volumes/storage` (the Storage API's file backend) and merged with what
//! is there.
//!
//! # Backend layout
//!
//! Each object is the file `stub/stub/<bucket>/<key>/<version>`, `<key>`
//! possibly holding `/`, with the xattrs `user.supabase.content-type`,
//! `user.supabase.cache-control` and `user.supabase.etag` (without them the
//! API answers 500). The etag is `"` + lowercase hex MD5 + `"`.
//!
//! # Accepted archives
//!
//! `./` prefixes are dropped; macOS's `__MACOSX/` folder and `.DS_Store`
//! files are skipped without a word. Then, in this order:
//!
//! 1. **A copy of the storage folder**: every entry is `stub/stub/...` or a
//!    folder above it, all under the same prefix, none, `storage/` or
//!    `volumes/storage/`, and at least one file is deep enough to be an
//!    object (`stub/stub/<bucket>/<key>/<version>`). It is kept as it is:
//!    same paths, folder modes, file modes without set-ID or execute bits
//!    (an object is data), and the xattrs the tar carries (PAX
//!    `SCHILY.xattr.user.supabase.*`); the missing ones are computed as
//!    below. When it has several versions of one key, all are staged and
//!    the last in the archive is the object returned. A file directly in
//!    a bucket folder (no version) is skipped with a warning. A bucket
//!    named `stub` downloaded as `stub/stub/...` is read as this layout.
//! 2. **Downloaded buckets**: `<bucket>/<key...>`, each file an object.
//!    Wrapper rule: when the root holds exactly one folder and nothing
//!    else, that folder holds only folders (no file directly inside), and
//!    its name is not a bucket of `existing`, it is a wrapper (a ZIP of a
//!    `buckets/` folder) and skipped: its subfolders are the buckets. Each
//!    object lands at `stub/stub/<bucket>/<key>/<new UUID v4>` with mode
//!    0644 and the three xattrs: content type and cache control from
//!    `existing` when it has the object, else from the name (`mime_guess`,
//!    `application/octet-stream` when unknown) and `no-cache`. Files at the
//!    root belong to no bucket: skipped with a warning. Folders are not
//!    objects (an object store has none): empty ones are dropped. A key
//!    written twice keeps the last entry.
//!
//! Symlinks are refused (an object is a file); hard links too, except in
//! a copy of the storage folder, to an earlier object of the archive. A
//! bucket named `.supascale-*` is refused (`.`, `..` and empty names never
//! get this far). An archive without a single object is refused.
//!
//! # Merge
//!
//! The staged `stub` starts as a hard-link copy of the project's
//! ([`StagedTree::link_from_target`]): no byte copied, each file the same
//! inode with its xattrs. The versions of every key the archive brings are
//! removed from the copy (the new object replaces them; the originals are
//! only unlinked from the copy), then the archive's objects are added, and
//! [`Ready::merge_in`] swaps the one child `stub` in a single
//! `RENAME_EXCHANGE`: a reader sees all of the old objects or all of the
//! new. Other children of the storage folder stay. An object uploaded to
//! the project between the copy and the swap is not in the copy: the caller
//! keeps the project's storage quiet meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use md5::{Digest, Md5};
use xattr::FileExt;

use super::ImportError;
use super::archive::{Detected, EntryInfo, EntryKind, declared_bytes, list_entries, stage_entries};
use crate::restore::staging::{Limits, Options, Ready, StagedTree, SymlinkPolicy};

pub const CONTENT_TYPE_XATTR: &str = "user.supabase.content-type";
pub const CACHE_CONTROL_XATTR: &str = "user.supabase.cache-control";
pub const ETAG_XATTR: &str = "user.supabase.etag";
pub const DEFAULT_CACHE_CONTROL: &str = "no-cache";
/// The file backend's two fixed levels above the buckets.
pub(crate) const STUB: [&str; 2] = ["stub", "stub"];

/// An object the project has now (a `storage.objects` row).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistingObject {
    pub version: Option<String>,
    pub mimetype: Option<String>,
    pub cache_control: Option<String>,
}

/// An object the import brings, for the caller's `storage.objects` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageObject {
    pub bucket: String,
    pub name: String,
    pub version: String,
    pub size: u64,
    pub etag: String,
    pub mimetype: String,
    pub cache_control: String,
    pub last_modified: SystemTime,
}

/// Staged objects, ready for [`Ready::merge_in`].
pub struct StorageImport {
    pub ready: Ready,
    /// One per (bucket, name), sorted.
    pub objects: Vec<StorageObject>,
    /// The buckets of `objects`, sorted.
    pub buckets: Vec<String>,
    /// What was skipped, for the user.
    pub warnings: Vec<String>,
    /// Whether the archive was a copy of the storage folder.
    pub backend_layout: bool,
}

/// Stages the objects of `archive` into `storage_dir`, merged with the
/// project's (see the module doc). `existing` maps (bucket, object name) to
/// the project's rows.
pub fn stage_storage(
    archive: &Path,
    detected: &Detected,
    storage_dir: &Path,
    job_id: &str,
    limits: Limits,
    existing: &HashMap<(String, String), ExistingObject>,
    stop: &AtomicBool,
) -> Result<StorageImport, ImportError> {
    let entries = list_entries(archive, *detected, limits, stop)?;
    let mut plan = plan(&entries, existing)?;
    let options = Options {
        symlinks: SymlinkPolicy::RejectEscaping,
        limits,
        archive_prefix: plan.backend.then(|| plan.prefix.clone()),
        drop_exec_bits: true,
    };
    let mut tree = StagedTree::begin_with(storage_dir, job_id, options)?;
    tree.expect_bytes(declared_bytes(&entries))?;
    tree.ignore_owners();
    tree.link_from_target(OsStr::new("stub"))?;
    let keys: BTreeSet<&(String, String)> = plan.objects.values().map(|o| &o.key).collect();
    for (bucket, key) in keys {
        remove_versions(tree.staging_dir(), bucket, key)?;
    }
    let mut staged_files = HashSet::new();
    let staged = stage_entries(archive, *detected, &mut tree, stop, |info| {
        let rel = plan.place(info, &staged_files)?;
        if let Some(rel) = &rel
            && info.kind != EntryKind::Dir
        {
            staged_files.insert(rel.clone());
        }
        Ok(rel)
    })?;
    let mut objects = Vec::new();
    for entry in &staged {
        if let Some(object) = plan.objects.remove(&entry.info.index) {
            let stored = finish_object(
                tree.staging_dir(),
                &entry.rel,
                &object,
                plan.backend,
                existing,
            )
            .map_err(|e| match e {
                ObjectError::NotAFile => ImportError::Invalid(format!(
                    "{}: refused: a later entry of the archive put a folder where this object is",
                    entry.info.shown
                )),
                ObjectError::Io(e) => ImportError::Io(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", entry.info.shown),
                )),
            })?;
            objects.push(stored);
        }
    }
    let ready = tree.finish()?;
    objects.sort_by(|a, b| (&a.bucket, &a.name).cmp(&(&b.bucket, &b.name)));
    let buckets: BTreeSet<String> = objects.iter().map(|o| o.bucket.clone()).collect();
    Ok(StorageImport {
        ready,
        objects,
        buckets: buckets.into_iter().collect(),
        warnings: plan.warnings,
        backend_layout: plan.backend,
    })
}

/// An archive entry that becomes an object.
#[derive(Debug, Clone)]
struct PlannedObject {
    /// (bucket, object name)
    key: (String, String),
    version: String,
}

struct Plan {
    backend: bool,
    /// What comes before the layout's own paths.
    prefix: PathBuf,
    /// By entry index; only the entry that wins for its key.
    objects: BTreeMap<usize, PlannedObject>,
    warnings: Vec<String>,
}

impl Plan {
    fn place(
        &self,
        info: &EntryInfo,
        staged_files: &HashSet<PathBuf>,
    ) -> Result<Option<PathBuf>, ImportError> {
        if is_junk(info) {
            return Ok(None);
        }
        let Ok(rest) = info.path.strip_prefix(&self.prefix) else {
            return Ok(None);
        };
        if self.backend {
            if info.kind == EntryKind::HardLink {
                let to = info
                    .link
                    .as_ref()
                    .and_then(|link| link.strip_prefix(&self.prefix).ok());
                if !to.is_some_and(|to| staged_files.contains(to)) {
                    return Err(ImportError::Invalid(format!(
                        "{}: refused: a hard link must name an earlier object of the archive",
                        info.shown
                    )));
                }
            }
            let depth = rest.components().count();
            return Ok(match info.kind {
                // `stub` and `stub/stub` keep the project's folders.
                EntryKind::Dir if depth > 2 => Some(rest.to_path_buf()),
                _ if self.objects.contains_key(&info.index) => Some(rest.to_path_buf()),
                // An older version of a key the archive holds twice.
                EntryKind::File | EntryKind::HardLink if depth >= 5 => Some(rest.to_path_buf()),
                _ => None,
            });
        }
        Ok(self.objects.get(&info.index).map(|object| {
            let mut rel: PathBuf = STUB.iter().collect();
            rel.push(&object.key.0);
            rel.extend(object.key.1.split('/'));
            rel.push(&object.version);
            rel
        }))
    }
}

fn is_junk(info: &EntryInfo) -> bool {
    let names = info.names();
    names.first() == Some(&"__MACOSX") || names.last() == Some(&".DS_Store")
}

fn plan(
    entries: &[EntryInfo],
    existing: &HashMap<(String, String), ExistingObject>,
) -> Result<Plan, ImportError> {
    let useful: Vec<&EntryInfo> = entries.iter().filter(|e| !is_junk(e)).collect();
    for info in &useful {
        if info.kind == EntryKind::Symlink {
            return Err(ImportError::Invalid(format!(
                "{}: refused: a symlink is not a storage object",
                info.shown
            )));
        }
    }
    if let Some(prefix) = backend_prefix(&useful) {
        return plan_backend(&useful, prefix);
    }
    let mut plan = Plan {
        backend: false,
        prefix: PathBuf::new(),
        objects: BTreeMap::new(),
        warnings: Vec::new(),
    };
    let names: Vec<Vec<&str>> = useful.iter().map(|e| e.names()).collect();
    let tops: BTreeSet<&str> = names.iter().filter_map(|n| n.first().copied()).collect();
    if let [wrapper] = tops.iter().copied().collect::<Vec<_>>().as_slice() {
        let is_folder_only = useful
            .iter()
            .zip(&names)
            .all(|(info, n)| n.len() > 2 || info.kind == EntryKind::Dir);
        let is_bucket = existing.keys().any(|(bucket, _)| bucket == wrapper);
        if is_folder_only && !is_bucket {
            plan.prefix.push(wrapper);
        }
    }
    let depth = plan.prefix.components().count();
    let mut by_key: HashMap<(String, String), usize> = HashMap::new();
    for (info, names) in useful.iter().zip(&names) {
        let Some(rest) = names.get(depth..) else {
            continue;
        };
        match info.kind {
            EntryKind::Dir => continue,
            EntryKind::HardLink => {
                return Err(ImportError::Invalid(format!(
                    "{}: refused: a hard link is not a storage object",
                    info.shown
                )));
            }
            _ => {}
        }
        let [bucket, key @ ..] = rest else {
            continue;
        };
        if key.is_empty() {
            plan.warnings.push(format!(
                "{}: a file at the root belongs to no bucket; not imported",
                info.shown
            ));
            continue;
        }
        check_bucket(bucket, info)?;
        by_key.insert((bucket.to_string(), key.join("/")), info.index);
    }
    for (key, index) in by_key {
        let version = uuid::Uuid::new_v4().to_string();
        plan.objects.insert(index, PlannedObject { key, version });
    }
    if plan.objects.is_empty() {
        return Err(no_objects());
    }
    Ok(plan)
}

fn no_objects() -> ImportError {
    ImportError::Invalid(
        "the archive holds no storage object: expected <bucket>/<path of the object> files, or \
         a copy of the storage folder (stub/stub/<bucket>/...)"
            .into(),
    )
}

fn check_bucket(bucket: &str, info: &EntryInfo) -> Result<(), ImportError> {
    if bucket.is_empty() || bucket == "." || bucket == ".." || bucket.starts_with(".supascale-") {
        return Err(ImportError::Invalid(format!(
            "{}: refused: {bucket:?} is not a bucket name",
            info.shown
        )));
    }
    Ok(())
}

/// The prefix under which the archive is a copy of the storage folder.
fn backend_prefix(useful: &[&EntryInfo]) -> Option<PathBuf> {
    let candidates: [&[&str]; 3] = [&[], &["storage"], &["volumes", "storage"]];
    candidates.into_iter().find_map(|prefix| {
        let base: Vec<&str> = prefix.iter().chain(STUB.iter()).copied().collect();
        let mut has_object = false;
        for info in useful {
            let names = info.names();
            if names.starts_with(&base) {
                has_object |= info.kind != EntryKind::Dir && names.len() >= base.len() + 3;
            } else if !(info.kind == EntryKind::Dir && base.starts_with(&names)) {
                return None;
            }
        }
        has_object.then(|| prefix.iter().collect())
    })
}

fn plan_backend(useful: &[&EntryInfo], prefix: PathBuf) -> Result<Plan, ImportError> {
    let mut plan = Plan {
        backend: true,
        prefix,
        objects: BTreeMap::new(),
        warnings: Vec::new(),
    };
    let depth = plan.prefix.components().count();
    let mut by_key: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
    let mut versions: BTreeMap<(String, String), usize> = BTreeMap::new();
    for info in useful {
        let names = info.names();
        let Some(rest) = names.get(depth + STUB.len()..) else {
            continue;
        };
        let Some(bucket) = rest.first() else {
            continue;
        };
        check_bucket(bucket, info)?;
        if info.kind == EntryKind::Dir {
            continue;
        }
        let [_, key @ .., version] = rest else {
            plan.warnings.push(format!(
                "{}: a file outside any object folder; not imported",
                info.shown
            ));
            continue;
        };
        if key.is_empty() {
            plan.warnings.push(format!(
                "{}: a file directly in a bucket folder is not an object (no version); not \
                 imported",
                info.shown
            ));
            continue;
        }
        let key = (bucket.to_string(), key.join("/"));
        *versions.entry(key.clone()).or_default() += 1;
        by_key.insert(key, (info.index, version.to_string()));
    }
    for (key, (index, version)) in by_key {
        if versions.get(&key).is_some_and(|&n| n > 1) {
            plan.warnings.push(format!(
                "{}/{}: several versions in the archive; the last one ({version}) is the object",
                key.0, key.1
            ));
        }
        plan.objects.insert(index, PlannedObject { key, version });
    }
    if plan.objects.is_empty() {
        return Err(no_objects());
    }
    Ok(plan)
}

/// Unlinks from the staged copy every version of `key`: the regular files
/// directly in its folder (subfolders are longer keys). Nothing is removed
/// when a folder on the way is not a real folder: the staging of the
/// archive's object then refuses to go through it.
pub(crate) fn remove_versions(staging: &Path, bucket: &str, key: &str) -> io::Result<()> {
    let mut dir = staging.to_path_buf();
    for part in STUB.iter().copied().chain([bucket]).chain(key.split('/')) {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

enum ObjectError {
    NotAFile,
    Io(io::Error),
}

impl From<io::Error> for ObjectError {
    fn from(e: io::Error) -> Self {
        ObjectError::Io(e)
    }
}

/// Sets the object's missing xattrs and reads what the row needs.
fn finish_object(
    staging: &Path,
    rel: &Path,
    object: &PlannedObject,
    backend: bool,
    existing: &HashMap<(String, String), ExistingObject>,
) -> Result<StorageObject, ObjectError> {
    let path = staging.join(rel);
    let metadata = fs::symlink_metadata(&path)?;
    if !metadata.is_file() {
        return Err(ObjectError::NotAFile);
    }
    let mode = metadata.mode() & 0o7777;
    let final_mode = if backend { mode } else { 0o644 };
    // Writing user.* xattrs needs write permission, hashing read permission,
    // whatever mode the archive gave; the file is ours.
    fs::set_permissions(&path, Permissions::from_mode(mode | 0o600))?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    let known = existing.get(&object.key);
    let kept = |name: &str| -> io::Result<Option<String>> {
        if !backend {
            return Ok(None);
        }
        Ok(file
            .get_xattr(name)?
            .and_then(|value| String::from_utf8(value).ok()))
    };
    let etag = match kept(ETAG_XATTR)? {
        Some(etag) => etag,
        None => format!("\"{}\"", md5_hex(&file)?),
    };
    let mimetype = match kept(CONTENT_TYPE_XATTR)? {
        Some(mimetype) => mimetype,
        None => known
            .and_then(|o| o.mimetype.clone())
            .unwrap_or_else(|| guess_type(&object.key.1)),
    };
    let cache_control = match kept(CACHE_CONTROL_XATTR)? {
        Some(cache_control) => cache_control,
        None => known
            .and_then(|o| o.cache_control.clone())
            .unwrap_or_else(|| DEFAULT_CACHE_CONTROL.to_string()),
    };
    file.set_xattr(ETAG_XATTR, etag.as_bytes())?;
    file.set_xattr(CONTENT_TYPE_XATTR, mimetype.as_bytes())?;
    file.set_xattr(CACHE_CONTROL_XATTR, cache_control.as_bytes())?;
    file.set_permissions(Permissions::from_mode(final_mode))?;
    Ok(StorageObject {
        bucket: object.key.0.clone(),
        name: object.key.1.clone(),
        version: object.version.clone(),
        size: metadata.len(),
        etag,
        mimetype,
        cache_control,
        last_modified: metadata.modified()?,
    })
}

fn md5_hex(mut file: &fs::File) -> io::Result<String> {
    let mut hasher = Md5::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(hasher.finalize().as_slice()))
}

/// The content type the Storage API would give an upload of this name.
pub fn guess_type(name: &str) -> String {
    mime_guess::from_path(name)
        .first_or_octet_stream()
        .essence_str()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::archive::detect;
    use crate::import::testing::*;
    use std::os::unix::fs::PermissionsExt;
    use tar::EntryType;

    struct Project {
        _root: tempfile::TempDir,
        uploads: tempfile::TempDir,
        storage: PathBuf,
    }

    const OLD_README: &str = "stub/stub/docs/readme.txt/11111111-1111-4111-8111-111111111111";
    const OTHER: &str = "stub/stub/docs/other.txt/22222222-2222-4222-8222-222222222222";
    const AVATAR: &str = "stub/stub/avatars/a/b.png/33333333-3333-4333-8333-333333333333";

    /// A storage folder with three objects and a child that is not `stub`.
    fn project() -> Project {
        let root = tempfile::tempdir().unwrap();
        assert_user_xattrs_work(root.path());
        let storage = root.path().join("storage");
        for (path, data) in [
            (OLD_README, "old readme"),
            (OTHER, "other"),
            (AVATAR, "png"),
        ] {
            let path = storage.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, data).unwrap();
            xattr::set(&path, ETAG_XATTR, b"\"old\"").unwrap();
            xattr::set(&path, CONTENT_TYPE_XATTR, b"text/plain").unwrap();
            xattr::set(&path, CACHE_CONTROL_XATTR, b"max-age=60").unwrap();
        }
        fs::create_dir_all(storage.join("other-child")).unwrap();
        fs::write(storage.join("other-child/x"), "x").unwrap();
        Project {
            _root: root,
            uploads: tempfile::tempdir().unwrap(),
            storage,
        }
    }

    fn existing() -> HashMap<(String, String), ExistingObject> {
        HashMap::from([(
            ("docs".to_string(), "readme.txt".to_string()),
            ExistingObject {
                version: Some("11111111-1111-4111-8111-111111111111".into()),
                mimetype: Some("text/x-readme".into()),
                cache_control: Some("max-age=3600".into()),
            },
        )])
    }

    fn stage(
        project: &Project,
        name: &str,
        bytes: &[u8],
        limits: Limits,
    ) -> Result<StorageImport, ImportError> {
        let archive = upload(project.uploads.path(), name, bytes);
        let detected = detect(&archive).unwrap();
        stage_storage(
            &archive,
            &detected,
            &project.storage,
            JOB,
            limits,
            &existing(),
            &GO,
        )
    }

    fn md5_etag(data: &[u8]) -> String {
        format!("\"{}\"", hex::encode(Md5::digest(data).as_slice()))
    }

    fn xattr_of(path: &Path, name: &str) -> String {
        String::from_utf8(xattr::get(path, name).unwrap().expect(name)).unwrap()
    }

    fn object<'a>(objects: &'a [StorageObject], bucket: &str, name: &str) -> &'a StorageObject {
        objects
            .iter()
            .find(|o| o.bucket == bucket && o.name == name)
            .unwrap_or_else(|| panic!("{bucket}/{name} in {objects:?}"))
    }

    #[test]
    fn bucket_folders_become_objects_with_xattrs_merged_with_the_project() {
        let project = project();
        let before = snapshot(&project.storage);
        let unicode = "photos/ünïcödé ñame \"quoted\" it's.jpg";
        let bytes = Zip::new()
            .dir("avatars/")
            .file(&format!("avatars/{unicode}"), b"jpeg bytes")
            .file("docs/readme.txt", b"new readme")
            .file("notes.txt", b"at the root")
            .file("docs/data.unknownext", b"?")
            .bytes();
        let import = stage(&project, "buckets.zip", &bytes, no_limits()).unwrap();
        assert!(!import.backend_layout);
        assert_eq!(import.buckets, ["avatars", "docs"]);
        assert_eq!(import.objects.len(), 3);
        assert_eq!(import.warnings.len(), 1);
        assert!(
            import.warnings[0].starts_with("notes.txt: "),
            "{:?}",
            import.warnings
        );
        // Nothing visible before the swap: the staging folder is the only change.
        let mut staging_only = snapshot(&project.storage);
        staging_only.retain(|rel, _| !rel.starts_with(format!(".supascale-restore-{JOB}")));
        staging_only.remove(Path::new(""));
        let mut unchanged = before.clone();
        unchanged.remove(Path::new(""));
        assert_eq!(staging_only, unchanged);

        let swapped = import.ready.merge_in().unwrap();
        let photo = object(&import.objects, "avatars", unicode);
        assert!(uuid::Uuid::parse_str(&photo.version).is_ok_and(|v| v.get_version_num() == 4));
        let path = project
            .storage
            .join("stub/stub/avatars")
            .join(unicode)
            .join(&photo.version);
        assert_eq!(fs::read(&path).unwrap(), b"jpeg bytes");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(xattr_of(&path, ETAG_XATTR), md5_etag(b"jpeg bytes"));
        assert_eq!(photo.etag, md5_etag(b"jpeg bytes"));
        assert_eq!(xattr_of(&path, CONTENT_TYPE_XATTR), "image/jpeg");
        assert_eq!(xattr_of(&path, CACHE_CONTROL_XATTR), "no-cache");
        assert_eq!((photo.size, photo.mimetype.as_str()), (10, "image/jpeg"));

        // The project's metadata for the object it replaces.
        let readme = object(&import.objects, "docs", "readme.txt");
        let folder = project.storage.join("stub/stub/docs/readme.txt");
        assert_eq!(names(&folder), std::slice::from_ref(&readme.version));
        let path = folder.join(&readme.version);
        assert_eq!(fs::read(&path).unwrap(), b"new readme");
        assert_eq!(xattr_of(&path, CONTENT_TYPE_XATTR), "text/x-readme");
        assert_eq!(xattr_of(&path, CACHE_CONTROL_XATTR), "max-age=3600");
        assert_eq!(xattr_of(&path, ETAG_XATTR), md5_etag(b"new readme"));
        let unknown = object(&import.objects, "docs", "data.unknownext");
        assert_eq!(unknown.mimetype, "application/octet-stream");

        // The other objects are the same files (hard links), untouched.
        for rel in [OTHER, AVATAR] {
            let now = fs::metadata(project.storage.join(rel)).unwrap();
            assert_eq!(now.ino(), before[Path::new(rel)].inode, "{rel}");
            assert_eq!(xattr_of(&project.storage.join(rel), ETAG_XATTR), "\"old\"");
        }
        assert_eq!(
            fs::read(project.storage.join("other-child/x")).unwrap(),
            b"x"
        );
        swapped.roll_back().unwrap();
        assert_eq!(snapshot(&project.storage), before);

        // And committed: the old version is gone, no hidden folder stays.
        let import = stage(&project, "buckets.zip", &bytes, no_limits()).unwrap();
        import.ready.merge_in().unwrap().commit().unwrap();
        assert_eq!(names(&project.storage), ["other-child", "stub"]);
        assert!(!project.storage.join(OLD_README).exists());
        assert_eq!(
            fs::metadata(project.storage.join(OTHER)).unwrap().ino(),
            before[Path::new(OTHER)].inode
        );
    }

    #[test]
    fn a_wrapper_folder_is_skipped_unless_it_is_a_bucket() {
        let project = project();
        let bytes = Tar::new()
            .dir("export/")
            .file("export/avatars/x.png", b"x")
            .file("export/docs/y.txt", b"y")
            .gz();
        let import = stage(&project, "b.tar.gz", &bytes, no_limits()).unwrap();
        assert_eq!(import.buckets, ["avatars", "docs"]);
        drop(import);
        // `docs` is a bucket of the project: its folders are keys.
        let bytes = Tar::new().file("docs/2024/y.txt", b"y").gz();
        let import = stage(&project, "b.tar.gz", &bytes, no_limits()).unwrap();
        assert_eq!(import.buckets, ["docs"]);
        assert_eq!(import.objects[0].name, "2024/y.txt");
        drop(import);
        // A file directly inside: a bucket, not a wrapper.
        let bytes = Tar::new()
            .file("pics/a/x.png", b"x")
            .file("pics/y.png", b"y")
            .gz();
        let import = stage(&project, "b.tar.gz", &bytes, no_limits()).unwrap();
        assert_eq!(import.buckets, ["pics"]);
    }

    #[test]
    fn buckets_tarred_by_the_real_tar_from_inside_their_folder() {
        let project = project();
        let src = tempfile::tempdir().unwrap();
        for (path, data) in [("avatars/me/ça va.png", "png"), ("docs/readme.txt", "r")] {
            let path = src.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
        fs::create_dir_all(src.path().join("docs/empty folder")).unwrap();
        let archive = project.uploads.path().join("buckets.tar.gz");
        let status = std::process::Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(src.path())
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        let detected = detect(&archive).unwrap();
        let import = stage_storage(
            &archive,
            &detected,
            &project.storage,
            JOB,
            no_limits(),
            &existing(),
            &GO,
        )
        .unwrap();
        let names: Vec<(&str, &str)> = import
            .objects
            .iter()
            .map(|o| (o.bucket.as_str(), o.name.as_str()))
            .collect();
        assert_eq!(names, [("avatars", "me/ça va.png"), ("docs", "readme.txt")]);
        let png = object(&import.objects, "avatars", "me/ça va.png");
        let path = format!("stub/stub/avatars/me/ça va.png/{}", png.version);
        import.ready.merge_in().unwrap().commit().unwrap();
        assert_eq!(fs::read(project.storage.join(path)).unwrap(), b"png");
        assert!(!project.storage.join("stub/stub/docs/empty folder").exists());
    }

    #[test]
    fn a_copy_of_the_storage_folder_is_kept_as_it_is() {
        let project = project();
        let before = snapshot(&project.storage);
        let kept = "stub/stub/docs/readme.txt/44444444-4444-4444-8444-444444444444";
        let bare = "stub/stub/imported/deep/k.bin/55555555-5555-4555-8555-555555555555";
        let bytes = Tar::new()
            .dir("volumes/")
            .dir("volumes/storage/")
            .dir("volumes/storage/stub/")
            .dir("volumes/storage/stub/stub/")
            .file_with_xattrs(
                &format!("volumes/storage/{kept}"),
                b"kept readme",
                &[
                    (ETAG_XATTR, b"\"from-the-tar\""),
                    (CONTENT_TYPE_XATTR, b"text/x-kept"),
                    (CACHE_CONTROL_XATTR, b"max-age=1"),
                ],
            )
            .file(&format!("volumes/storage/{bare}"), b"bare")
            .gz();
        let import = stage(&project, "storage.tar.gz", &bytes, no_limits()).unwrap();
        assert!(import.backend_layout);
        assert_eq!(import.buckets, ["docs", "imported"]);
        let readme = object(&import.objects, "docs", "readme.txt");
        assert_eq!(readme.version, "44444444-4444-4444-8444-444444444444");
        assert_eq!(
            (
                readme.etag.as_str(),
                readme.mimetype.as_str(),
                readme.cache_control.as_str()
            ),
            ("\"from-the-tar\"", "text/x-kept", "max-age=1")
        );
        let swapped = import.ready.merge_in().unwrap();
        let path = project.storage.join(kept);
        assert_eq!(fs::read(&path).unwrap(), b"kept readme");
        assert_eq!(xattr_of(&path, ETAG_XATTR), "\"from-the-tar\"");
        assert!(!project.storage.join(OLD_README).exists());
        let path = project.storage.join(bare);
        assert_eq!(xattr_of(&path, ETAG_XATTR), md5_etag(b"bare"));
        assert_eq!(
            xattr_of(&path, CONTENT_TYPE_XATTR),
            "application/octet-stream"
        );
        assert_eq!(xattr_of(&path, CACHE_CONTROL_XATTR), "no-cache");
        assert_eq!(
            fs::metadata(project.storage.join(OTHER)).unwrap().ino(),
            before[Path::new(OTHER)].inode
        );
        swapped.roll_back().unwrap();
        assert_eq!(snapshot(&project.storage), before);
    }

    #[test]
    fn hostile_archives_are_refused_and_change_nothing() {
        let zeros = vec![0u8; 2 << 20];
        let limits = Limits {
            max_bytes: Some(1 << 20),
            max_entries: Some(10),
            ..Limits::default()
        };
        let many = (0..20).fold(Tar::new(), |tar, i| tar.file(&format!("b/f{i}"), b""));
        let cases: Vec<(&str, &str, Vec<u8>, Vec<&str>)> = vec![
            (
                "zip ..",
                "s.zip",
                Zip::new()
                    .file("b/ok", b"")
                    .file("b/../../evil", b"x")
                    .bytes(),
                vec!["b/../../evil", "`..`"],
            ),
            (
                "tar ..",
                "s.tar",
                Tar::new()
                    .file("b/ok", b"")
                    .raw("../evil", EntryType::Regular, b"x")
                    .bytes(),
                vec!["../evil", "`..`"],
            ),
            (
                "absolute",
                "s.tar",
                Tar::new().raw("/b/evil", EntryType::Regular, b"x").bytes(),
                vec!["/b/evil", "absolute"],
            ),
            (
                "drive letter",
                "s.zip",
                Zip::new().file("C:/b/evil", b"x").bytes(),
                vec!["C:/b/evil", "drive letter"],
            ),
            (
                "symlink",
                "s.tar",
                Tar::new()
                    .file("b/ok", b"")
                    .link(EntryType::Symlink, "b/link", "../../../etc/passwd")
                    .bytes(),
                vec!["b/link", "symlink"],
            ),
            (
                "hard link",
                "s.tar",
                Tar::new()
                    .file("b/ok", b"")
                    .raw_link("b/pw", "../etc/passwd")
                    .bytes(),
                vec!["b/pw", "hard link"],
            ),
            (
                "backend hard link",
                "s.tar",
                Tar::new()
                    .file("stub/stub/b/k/v1", b"")
                    .raw_link(
                        "stub/stub/b/k2/v2",
                        "stub/stub/docs/other.txt/22222222-2222-4222-8222-222222222222",
                    )
                    .bytes(),
                vec!["b/k2/v2", "hard link"],
            ),
            (
                "reserved bucket",
                "s.zip",
                Zip::new().file(".supascale-old-import-1/k", b"x").bytes(),
                vec![".supascale-old-import-1", "bucket"],
            ),
            (
                "gzip bomb",
                "s.tar.gz",
                Tar::new().file("b/zeros", &zeros).gz(),
                vec!["b/zeros", "limit of 1048576 bytes"],
            ),
            (
                "zip bomb",
                "s.zip",
                Zip::new().file("b/zeros", &zeros).bytes(),
                vec!["b/zeros", "limit of 1048576 bytes"],
            ),
            (
                "too many entries",
                "s.tar",
                many.bytes(),
                vec!["limit of 10 entries"],
            ),
            (
                "no object",
                "s.zip",
                Zip::new().dir("b/").file("root.txt", b"").bytes(),
                vec!["no storage object"],
            ),
        ];
        for (what, name, bytes, words) in cases {
            let project = project();
            let before = snapshot(&project.storage);
            let message = assert_refused(
                stage(&project, name, &bytes, limits),
                &project.storage,
                &before,
                &words,
            );
            eprintln!("{what}: {message}");
        }
    }
}
