//! What a backup reads when the project's folders are swapped for
//! symlinks after the job pinned them: the registered folders, never what
//! the symlinks lead to.

use std::fs;
use std::os::unix::fs::symlink;

use supascale_shared::domain::Component;
use supascale_shared::project_folders::Create;
use supascale_shared::project_folders::testing::{SECRET, entries_of, project};

use super::build_files;

#[test]
fn a_backup_reads_the_pinned_folders_not_a_symlink_put_in_their_place() {
    let p = project();
    let pinned = p.rules.pin(&p.row, Create::default()).unwrap();
    // Whatever writes into the project's volumes swaps them after the pin.
    p.swap_for_symlink("volumes/storage");
    p.swap_for_symlink("volumes/functions");
    let (artifact, summary) = build_files(
        pinned,
        vec![Component::Storage, Component::Functions, Component::Config],
    )
    .unwrap();
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
    let (artifact, summary) = build_files(pinned, vec![Component::Config]).unwrap();
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
