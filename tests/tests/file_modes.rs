//! File modes of what a restore or an import puts into a project: no
//! set-ID bits, and storage objects no execute bits.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use supascale_tests::refproject;
use supascale_tests::{Backend, TestApp, start_backup, status_and_body};

const MINUTE: Duration = Duration::from_secs(60);

/// The permission bits in octal, as `ls` and `chmod` show them.
fn mode_of(path: &Path) -> String {
    let mode = std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode();
    format!("{:o}", mode & 0o7777)
}

/// `tar -czf <out> -C <dir> <name>`: GNU tar keeps every mode bit.
fn tar_gz(out: &Path, dir: &Path, name: &str) {
    let tar = Command::new("tar")
        .arg("-czf")
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg(name)
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
}

fn write_with_mode(path: &Path, content: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    assert_eq!(
        mode_of(path),
        format!("{mode:o}"),
        "this test needs set-ID bits on files"
    );
}

/// `POST /projects/<id>/import/<what>` with the file; `query` as given.
async fn import(app: &TestApp, id: &str, what: &str, query: &str, file: &Path) -> (u16, Value) {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let part = reqwest::multipart::Part::bytes(std::fs::read(file).unwrap()).file_name(name);
    status_and_body(
        app.post(&format!("/api/v1/projects/{id}/import/{what}{query}"))
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn completed(app: &TestApp, job: &Value) {
    let job_url = job["jobUrl"].as_str().unwrap();
    let ended = app.wait_for_job(job_url, MINUTE).await;
    assert_eq!(ended["status"], "completed", "{ended}");
}

/// A restore of files that had set-ID bits, and imports of archives whose
/// entries carry them: functions land without them (execute bits kept),
/// storage objects without them and without execute bits.
#[tokio::test]
async fn restored_and_imported_files_carry_no_set_id_bits_and_objects_no_execute_bits() {
    let project = refproject::make(0.0, 131, true).await;
    let volumes = project.root.path().join("volumes");
    let object = volumes.join("storage/stub/stub/avatars/run.sh/v1");
    let function = volumes.join("functions/tool/index.ts");
    write_with_mode(&object, "#!/bin/sh\n", 0o6755);
    write_with_mode(
        &function,
        "Deno.serve(() => new Response('tool'));\n",
        0o6755,
    );
    let app = TestApp::spawn(Backend::Sqlite).await;
    refproject::register(&app, &project, "t").await;

    let backup = start_backup(&app, json!({"projectId": "t", "destination": "local"})).await;
    completed(&app, &backup["job"]).await;
    let backup_id = backup["backup"]["id"].as_str().unwrap();
    std::fs::remove_file(&object).unwrap();
    std::fs::remove_file(&function).unwrap();
    let (status, body) = status_and_body(
        app.post(&format!("/api/v1/backups/{backup_id}/restore"))
            .json(&json!({"restoreTypes": ["storage", "functions"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(std::fs::read_to_string(&object).unwrap(), "#!/bin/sh\n");
    assert_eq!(mode_of(&object), "644", "restored object");
    assert_eq!(mode_of(&function), "755", "restored function");

    // A copy of a storage folder keeps its file modes, less those bits.
    let work = tempfile::tempdir().unwrap();
    write_with_mode(
        &work.path().join("storage/stub/stub/documents/tool.sh/v2"),
        "#!/bin/sh\necho hi\n",
        0o6755,
    );
    let storage = work.path().join("storage.tar.gz");
    tar_gz(&storage, work.path(), "storage");
    let (status, body) = import(&app, "t", "storage", "", &storage).await;
    assert_eq!(status, 200, "{body}");
    let imported = volumes.join("storage/stub/stub/documents/tool.sh/v2");
    assert_eq!(
        std::fs::read_to_string(&imported).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    assert_eq!(mode_of(&imported), "644", "imported object");

    write_with_mode(
        &work.path().join("upload/functions/script/index.ts"),
        "Deno.serve(() => new Response('script'));\n",
        0o6755,
    );
    let functions = work.path().join("functions.tar.gz");
    tar_gz(&functions, &work.path().join("upload"), "functions");
    let (status, body) = import(&app, "t", "functions", "", &functions).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        mode_of(&volumes.join("functions/script/index.ts")),
        "755",
        "imported function"
    );
}
