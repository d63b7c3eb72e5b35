//! File modes on disk, through the running service: what it keeps for
//! itself (artifacts on `local`, spooled dumps, uploads, staging folders,
//! the data dir with `master.key` and the SQLite files) is readable by its
//! own user only, although the tests run with umask 022 (where a file made
//! without a mode comes out 0644); and files put into a project by a restore
//! or an import carry no set-ID bits, storage objects no execute bits.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use supascale_tests::refproject;
use supascale_tests::{
    Backend, Launch, SendJson, TableLock, TestApp, make_project, register, start_backup,
    start_restore_behind_lock,
};

const MINUTE: Duration = Duration::from_secs(60);

/// Every path below `root` (itself included, symlinks not followed) with
/// its permission bits.
fn modes_below(root: &Path) -> BTreeMap<PathBuf, u32> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        // A job may remove what was just listed.
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        found.insert(path.clone(), metadata.mode() & 0o7777);
        if metadata.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    found
}

/// What anyone but the owner may read, write or enter, in octal.
fn not_private(modes: &BTreeMap<PathBuf, u32>) -> Vec<String> {
    modes
        .iter()
        .filter(|(_, mode)| *mode & 0o077 != 0)
        .map(|(path, mode)| format!("{:o} {}", mode, path.display()))
        .collect()
}

/// The permission bits in octal, as `ls` and `chmod` show them.
fn mode_of(path: &Path) -> String {
    let mode = std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode();
    format!("{:o}", mode & 0o7777)
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + MINUTE;
    while !done() {
        assert!(Instant::now() < deadline, "waited a minute for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    app.imports(id).request(what, query, file).send_json().await
}

async fn completed(app: &TestApp, job: &Value) {
    let job_url = job["jobUrl"].as_str().unwrap();
    let ended = app.wait_for_job(job_url, MINUTE).await;
    assert_eq!(ended["status"], "completed", "{ended}");
}

/// A backup to `local` (its dump spooled, the artifact half-written), an
/// import's upload, a restore's staging folders, and the data dir after
/// them all: nothing is open to the group or others. Each is looked at
/// while it exists: the backup waits for a table lock with its files on
/// disk, the import waits behind it (one writer per project), and the
/// restore has staged its files when it waits for a lock of its own.
#[tokio::test]
async fn what_the_service_keeps_on_disk_is_private_to_its_user() {
    let project = make_project().await;
    let parent = tempfile::tempdir().unwrap();
    // Neither folder exists: the service makes both.
    let data = parent.path().join("service/data");
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default().env("SUPASCALE_DATA_DIR", data.to_str().unwrap()),
    )
    .await;
    register(&app, &project, "p").await;
    let mut seen = modes_below(&data);

    // 1. A backup held up while pg_dump waits for the lock.
    let lock = TableLock::hold(&project.database.url).await;
    let backup = start_backup(&app, json!({"projectId": "p", "destination": "local"})).await;
    let (spool, partial) = (data.join("tmp"), data.join("backups/.incomplete"));
    wait_until("the spooled dump and the partial artifact", || {
        files_in(&spool).iter().any(|f| f.contains(".dump.")) && !files_in(&partial).is_empty()
    })
    .await;
    // 2. An import of the same project waits behind it, its upload stored.
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("functions/greet")).unwrap();
    std::fs::write(
        work.path().join("functions/greet/index.ts"),
        "Deno.serve(() => new Response('hello'));\n",
    )
    .unwrap();
    let functions = work.path().join("functions.tar.gz");
    tar_gz(&functions, work.path(), "functions");
    let (status, import_accepted) = import(&app, "p", "functions", "async=true", &functions).await;
    assert_eq!(status, 202, "{import_accepted}");
    let import_job = import_accepted["job"]["id"].as_str().unwrap();
    let upload = data.join("uploads/.supascale-uploads").join(import_job);
    assert!(upload.is_file(), "{}", upload.display());
    seen.extend(modes_below(&data));
    lock.release().await;
    completed(&app, &backup["job"]).await;
    completed(&app, &import_accepted["job"]).await;

    // 3. A restore waiting for a lock, with its files staged.
    let lock = TableLock::hold_shared(&project.database.url).await;
    let backup_id = backup["backup"]["id"].as_str().unwrap();
    let (restore, restore_job) =
        start_restore_behind_lock(&app, &project.database.url, backup_id).await;
    let staging_name = format!(".supascale-restore-{restore_job}");
    let volumes = project.root.path().join("volumes");
    let staging = [
        volumes.join("storage").join(&staging_name),
        volumes.join("functions").join(&staging_name),
    ];
    for folder in &staging {
        // The folder is ours while it is filled; what is in it already has
        // the modes it will have in the project.
        assert_eq!(mode_of(folder), "700", "{}", folder.display());
    }
    seen.extend(modes_below(&data));
    lock.release().await;
    completed(&app, &restore["job"]).await;
    seen.extend(modes_below(&data));

    // It looked at what it means to.
    let backup_job = backup["job"]["id"].as_str().unwrap();
    let names: Vec<String> = seen
        .keys()
        .map(|p| p.strip_prefix(&data).unwrap().display().to_string())
        .collect();
    for expected in [
        "",
        "master.key",
        "supascale.db",
        "supascale.db-wal",
        "queue.db",
        "backups",
        "backups/p",
        "uploads/.supascale-uploads",
        &format!("uploads/.supascale-uploads/{import_job}"),
        &format!("tmp/{backup_job}.roles.sql"),
        &format!("tmp/{restore_job}.restore.dump"),
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
    }
    // The artifact itself, and one being written.
    assert!(
        names.iter().any(|n| n.starts_with("backups/p/")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("backups/.incomplete/")));
    assert!(
        names
            .iter()
            .any(|n| n.starts_with(&format!("tmp/{backup_job}.dump.")))
    );

    let open = not_private(&seen);
    assert!(open.is_empty(), "open to others:\n{}", open.join("\n"));
    assert_eq!(mode_of(&parent.path().join("service")), "700");
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
    let (status, body) = app
        .backups()
        .restore(backup_id, json!({"restoreTypes": ["storage", "functions"]}))
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
