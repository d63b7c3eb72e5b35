//! A full backup of a reference project, opened with standard tools only:
//! the system `tar` extracts it (with xattrs), `pg_restore` loads its dump
//! into a new database with the same rows and content per table, and every
//! file comes back with its bytes and `user.supabase.*` xattrs.

use std::path::Path;
use std::process::Command;

use serde_json::json;
use supascale_tests::refproject::{self, table_fingerprints};
use supascale_tests::{Backend, TempDatabase, TestApp};

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn same_tree(source: &Path, copy: &Path) -> usize {
    let mut files = 0;
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        let there = copy.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            assert!(there.is_dir(), "{} is missing", there.display());
            files += same_tree(&entry.path(), &there);
        } else if kind.is_file() {
            assert_eq!(
                std::fs::read(entry.path()).unwrap(),
                std::fs::read(&there).unwrap_or_else(|_| panic!("{} is missing", there.display())),
                "{}",
                there.display()
            );
            for name in xattr::list(entry.path()).unwrap() {
                assert_eq!(
                    xattr::get(entry.path(), &name).unwrap(),
                    xattr::get(&there, &name).unwrap(),
                    "{} {name:?}",
                    there.display()
                );
            }
            files += 1;
        }
    }
    files
}

#[tokio::test]
async fn a_full_backup_of_the_reference_project_opens_with_standard_tools() {
    let project = refproject::make(0.1, 7, false).await;
    assert!(!project.objects.is_empty());
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (status, body) = app
        .projects()
        .register(json!({"id": "ref", "name": "Reference ✓",
                "rootDir": project.root.path().to_str().unwrap(),
                "databaseUrl": project.database.url}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "ref", "type": "full"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["backup"]["id"].as_str().unwrap();
    let download = app
        .get(&format!("/api/v1/backups/{id}/download"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let artifact = work.path().join("backup.tar.gz");
    std::fs::write(&artifact, &download).unwrap();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "-xzf"])
        .arg(&artifact)
        .arg("-C")
        .arg(&out));

    // The database: every table, row for row.
    let copy = TempDatabase::create("supascale_copy").await;
    supascale_tests::psql(
        &copy.url,
        "CREATE SCHEMA IF NOT EXISTS extensions; CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA extensions;",
    );
    run(Command::new("pg_restore")
        .args([
            "--no-owner",
            "--exit-on-error",
            "--clean",
            "--if-exists",
            "--dbname",
        ])
        .arg(&copy.url)
        .arg(out.join("database/database.dump")));
    let source = table_fingerprints(&project.database.url);
    assert!(source.len() >= 8, "{source:?}");
    assert_eq!(table_fingerprints(&copy.url), source);

    // The files: bytes and xattrs, empty folders too.
    let storage = same_tree(
        &project.root.path().join("volumes/storage"),
        &out.join("storage"),
    );
    assert_eq!(storage, project.objects.len());
    assert!(
        out.join("storage/stub/stub/documents/empty-folder")
            .is_dir()
    );
    let object = out.join("storage").join(
        project.objects[0]
            .0
            .strip_prefix("volumes/storage")
            .unwrap(),
    );
    assert!(
        xattr::get(&object, "user.supabase.content-type")
            .unwrap()
            .is_some()
    );
    assert!(
        same_tree(
            &project.root.path().join("volumes/functions"),
            &out.join("functions")
        ) >= 6
    );
    assert_eq!(
        std::fs::read(out.join("config/.env")).unwrap(),
        std::fs::read(project.root.path().join(".env")).unwrap()
    );
    assert!(out.join("config/volumes/db/init-roles.sql").exists());
    assert!(!out.join("config/volumes/db/data").exists());
}
