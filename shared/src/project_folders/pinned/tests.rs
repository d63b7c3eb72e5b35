//! A project's folders swapped for symlinks after the job pinned them: what
//! the backup reads and the restore writes stays the registered folders.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;

use super::*;
use crate::config::Config;
use crate::entities::project;
use crate::project_folders::FolderRules;
use crate::restore::staging::StagedTree;

const SECRET: &[u8] = b"the secret outside the project";

/// A project under `allowed/p` with storage, functions and a `.env`, its
/// row as registered, and rules allowing it.
struct Project {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    root: PathBuf,
    /// Holds `secret.txt`, outside the project.
    outside: PathBuf,
    row: project::Model,
    rules: FolderRules,
}

fn project() -> Project {
    let data = tempfile::tempdir().unwrap();
    let allowed = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(allowed.path()).unwrap();
    let root = base.join("p");
    fs::create_dir_all(root.join("volumes/storage/stub/bucket")).unwrap();
    fs::create_dir_all(root.join("volumes/functions/hello")).unwrap();
    fs::write(
        root.join("volumes/storage/stub/bucket/photo.jpg"),
        b"original",
    )
    .unwrap();
    fs::write(root.join("volumes/functions/hello/index.ts"), b"serve()").unwrap();
    fs::write(root.join(".env"), b"POSTGRES_PASSWORD=x\n").unwrap();
    let outside = base.join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret.txt"), SECRET).unwrap();
    let config = Config {
        data_dir: data.path().to_path_buf(),
        project_roots: Some(base.to_string_lossy().into_owned()),
        ..Config::default()
    };
    let row = project::Model {
        id: "p".into(),
        name: "P".into(),
        database_url_enc: String::new(),
        db_host: String::new(),
        db_port: 5432,
        db_name: String::new(),
        db_user: String::new(),
        root_dir: root.to_string_lossy().into(),
        storage_dir: root.join("volumes/storage").to_string_lossy().into(),
        functions_dir: root.join("volumes/functions").to_string_lossy().into(),
        config_paths: "[]".into(),
        post_restore_command: None,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    };
    Project {
        _dirs: (data, allowed),
        rules: FolderRules::from_config(&config),
        root,
        outside,
        row,
    }
}

impl Project {
    /// Renames `relative` away (to `<relative>.moved`) and puts a symlink to
    /// the outside folder in its place; returns where it went.
    fn swap_for_symlink(&self, relative: &str) -> PathBuf {
        let live = self.root.join(relative);
        let moved = self.root.join(format!("{relative}.moved"));
        fs::rename(&live, &moved).unwrap();
        symlink(&self.outside, &live).unwrap();
        moved
    }
}

/// Path → content (folders and links with none) of a gzip'd artifact.
fn entries_of(artifact: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(artifact));
    let mut entries = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        entries.insert(path, data);
    }
    entries
}

#[test]
fn a_backup_reads_the_pinned_folders_not_a_symlink_put_in_their_place() {
    let p = project();
    let pinned = p.rules.pin(&p.row, Create::default()).unwrap();
    // Whatever writes into the project's volumes swaps them after the pin.
    p.swap_for_symlink("volumes/storage");
    p.swap_for_symlink("volumes/functions");
    let (artifact, summary) =
        crate::jobs::backup::build_files(pinned, vec!["storage", "functions", "config"]).unwrap();
    let entries = entries_of(&artifact);
    assert_eq!(
        entries
            .get("storage/stub/bucket/photo.jpg")
            .map(Vec::as_slice),
        Some(&b"original"[..])
    );
    assert_eq!(
        entries.get("functions/hello/index.ts").map(Vec::as_slice),
        Some(&b"serve()"[..])
    );
    assert!(entries.contains_key("config/.env"), "{:?}", entries.keys());
    assert!(
        !entries.keys().any(|k| k.contains("secret")),
        "{:?}",
        entries.keys()
    );
    assert!(!entries.values().any(|v| v.as_slice() == SECRET));
    assert!(
        summary.manifest.warnings.is_empty(),
        "{:?}",
        summary.manifest.warnings
    );
}

#[test]
fn a_config_folder_reached_through_a_symlink_is_left_out_with_a_warning() {
    let p = project();
    fs::write(p.outside.join("kong.yml"), SECRET).unwrap();
    fs::create_dir_all(p.root.join("volumes")).unwrap();
    symlink(&p.outside, p.root.join("volumes/api")).unwrap();
    let pinned = p.rules.pin(&p.row, Create::default()).unwrap();
    let (artifact, summary) = crate::jobs::backup::build_files(pinned, vec!["config"]).unwrap();
    let entries = entries_of(&artifact);
    assert!(!entries.values().any(|v| v.as_slice() == SECRET));
    assert!(
        summary
            .manifest
            .warnings
            .iter()
            .any(|w| w.contains("config/volumes/api/kong.yml") && w.contains("symbolic link")),
        "{:?}",
        summary.manifest.warnings
    );
}

/// A one-file archive for `storage`: `stub/bucket/new.jpg`.
fn new_storage() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(3);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "stub/bucket/new.jpg", &b"new"[..])
        .unwrap();
    builder.into_inner().unwrap()
}

#[test]
fn a_restore_swaps_into_the_pinned_folder_and_leaves_a_symlinks_target_alone() {
    let p = project();
    let pinned = p.rules.pin(&p.row, Create::default()).unwrap();
    let storage = pinned.storage.as_ref().unwrap();
    let mut tree = StagedTree::begin(&storage.path(), "job-1").unwrap();
    let moved = p.swap_for_symlink("volumes/storage");
    let archive = new_storage();
    let mut archive = tar::Archive::new(archive.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        tree.add(&path, &mut entry).unwrap();
    }
    let swapped = tree.finish().unwrap().swap_in().unwrap();
    swapped.commit().unwrap();
    assert_eq!(
        fs::read(moved.join("stub/bucket/new.jpg")).unwrap(),
        b"new".to_vec()
    );
    assert!(!moved.join("stub/bucket/photo.jpg").exists());
    let outside: Vec<_> = fs::read_dir(&p.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("secret.txt")]);
    assert_eq!(fs::read(p.outside.join("secret.txt")).unwrap(), SECRET);
}

#[test]
fn a_folder_to_restore_into_is_created_beneath_the_root() {
    let p = project();
    fs::remove_dir_all(p.root.join("volumes/storage")).unwrap();
    let skipped = p.rules.pin(&p.row, Create::default()).unwrap();
    assert!(skipped.storage.is_none());
    assert!(!p.root.join("volumes/storage").exists());
    let created = Create {
        storage: true,
        functions: false,
    };
    let pinned = p.rules.pin(&p.row, created).unwrap();
    assert!(pinned.storage.is_some());
    assert!(p.root.join("volumes/storage").is_dir());
}

#[test]
fn a_pin_is_refused_when_a_part_of_its_path_became_a_symlink() {
    let p = project();
    let folders = super::super::ProjectFolders::of(&p.row);
    // A component of the root: the project's folder moved, a link in its
    // place (what `at_use` would catch too, had it run a moment earlier).
    let moved = p.swap_for_symlink("volumes");
    fs::rename(&moved, p.outside.join("volumes")).unwrap();
    let refusal = PinnedFolders::open("p", &folders, Create::default()).unwrap_err();
    assert!(refusal.contains("storageDir"), "{refusal}");
    assert!(refusal.contains(&p.row.storage_dir), "{refusal}");
    assert!(refusal.contains("symbolic link"), "{refusal}");
    assert!(
        !refusal.contains(&*p.outside.to_string_lossy()),
        "{refusal}"
    );
    // The root itself.
    let root_moved = p.root.with_extension("moved");
    fs::rename(&p.root, &root_moved).unwrap();
    symlink(&root_moved, &p.root).unwrap();
    let refusal = PinnedFolders::open("p", &folders, Create::default()).unwrap_err();
    assert!(refusal.contains("rootDir"), "{refusal}");
    assert!(refusal.contains(&p.row.root_dir), "{refusal}");
    assert!(!refusal.contains("moved"), "{refusal}");
    // Through the rules, the check before the pin says it first.
    let refusal = p.rules.pin(&p.row, Create::default()).unwrap_err();
    assert!(refusal.contains("no longer resolves"), "{refusal}");
}

#[test]
fn the_walk_for_kernels_without_openat2_refuses_links_and_climbing() {
    let p = project();
    let root = rustix::fs::open(&p.root, dir_flags(), Mode::empty()).unwrap();
    let flags = dir_flags();
    assert!(walk(root.as_fd(), Path::new("volumes/storage/stub"), flags).is_ok());
    let climb = walk(root.as_fd(), Path::new("volumes/../.."), flags).unwrap_err();
    assert_eq!(climb.raw_os_error(), Some(libc::EXDEV));
    symlink(&p.outside, p.root.join("volumes/link")).unwrap();
    for through in ["volumes/link", "volumes/link/secret.txt"] {
        let e = walk(root.as_fd(), Path::new(through), OFlags::PATH).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{through}");
    }
    // openat2 answers the same.
    let e = open_beneath(
        root.as_fd(),
        Path::new("volumes/link/secret.txt"),
        OFlags::PATH,
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
}

#[test]
fn messages_name_the_registered_folder_never_the_fd() {
    let p = project();
    let pinned = p.rules.pin(&p.row, Create::default()).unwrap();
    let storage = pinned.storage.as_ref().unwrap();
    assert_eq!(
        shown(&storage.path().join("stub/x")),
        p.root.join("volumes/storage/stub/x")
    );
    // A staging refusal about a leftover in the pinned folder.
    fs::create_dir(p.root.join("volumes/storage/.supascale-old-job-1")).unwrap();
    let Err(refusal) = StagedTree::begin(&storage.path(), "job-1") else {
        panic!("a leftover of an interrupted swap must stop the staging");
    };
    let refusal = refusal.to_string();
    assert!(refusal.contains(&p.row.storage_dir), "{refusal}");
    assert!(!refusal.contains("/proc/self/fd"), "{refusal}");
    // Once the pin is gone, its path is no longer translated.
    let path = storage.path();
    drop(pinned);
    assert_eq!(shown(&path), path);
}
