//! A project's folders swapped for symlinks after the job pinned them: what
//! the backup reads and the restore writes stays the registered folders.

use std::fs;
use std::os::unix::fs::symlink;

use super::*;
use crate::project_folders::testing::{SECRET, project};
use crate::restore::staging::StagedTree;

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
