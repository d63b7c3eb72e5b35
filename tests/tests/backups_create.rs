//! `POST /api/v1/backups` end to end: the API writes the rows and queues the
//! job, a worker (in-process on the embedded default; a separate
//! `supascale-worker` with PostgreSQL and Redis) builds the artifact and
//! stores it, and the answer is the completed backup.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use supascale_tests::{
    Backend, Launch, RedisQueue, TempDatabase, TestApp, make_project, psql, register,
    status_and_body,
};

fn artifact_path(backup: &Value) -> PathBuf {
    let url = backup["path"].as_str().unwrap();
    PathBuf::from(url.strip_prefix("file://").expect("a local artifact"))
}

fn extract(artifact: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "-xzf"])
        .arg(artifact)
        .arg("-C")
        .arg(into)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_full_backup_holds_the_database_and_the_files() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let project = make_project().await;
    register(&app, &project, "my-project").await;
    let (status, body) = app.backups().create(json!({"projectId": "my-project", "type": "full", "destination": "local", "encrypt": false})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    let backup = &body["backup"];
    assert_eq!(backup["status"], "completed");
    assert_eq!(backup["type"], "full");
    assert_eq!(backup["projectId"], "my-project");
    assert_eq!(backup["destination"], "local");
    assert!(backup["duration"].is_i64());
    assert!(backup["createdAt"].as_str().unwrap().ends_with('Z'));
    let path = artifact_path(backup);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(backup["size"], bytes.len());
    use sha2::Digest;
    assert_eq!(backup["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));

    let out = tempfile::tempdir().unwrap();
    extract(&path, out.path());
    let x = out.path();
    assert_eq!(
        std::fs::read(x.join("functions/hello-world/index.ts")).unwrap(),
        b"Deno.serve(() => new Response('hi'));\n"
    );
    let object = x.join("storage/stub/stub/avatars/me.png/9f8e7d6c");
    assert_eq!(std::fs::read(&object).unwrap(), vec![42u8; 70_000]);
    assert_eq!(
        xattr::get(&object, "user.supabase.content-type")
            .unwrap()
            .as_deref(),
        Some(&b"image/png"[..])
    );
    assert!(x.join("config/.env").exists() && x.join("config/volumes/api/kong.yml").exists());
    assert!(
        !x.join("config/volumes/db/data").exists(),
        "the live PGDATA must never be backed up"
    );
    // The dump restores into a new database with every row.
    let target = TempDatabase::create("supascale_restored").await;
    let restore = Command::new("pg_restore")
        .args(["--no-owner", "--dbname", &target.url])
        .arg(x.join("database/database.dump"))
        .output()
        .unwrap();
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    assert_eq!(
        psql(&target.url, "SELECT count(*) FROM public.posts"),
        "500"
    );

    // The list and the details show it.
    let (_, details) = app.backups().get(backup["id"].as_str().unwrap()).await;
    assert_eq!(details["status"], "completed");
    assert_eq!(details["sha256"], backup["sha256"]);
    // The spooled dump is gone.
    assert_eq!(app.spool_files(), Vec::<std::ffi::OsString>::new());
}

#[tokio::test]
async fn bad_backup_requests_answer_400_and_create_nothing() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    for (body, expected) in [
        (json!({"projectId": "nope"}), "Project not found"),
        (json!({"projectId": "p", "type": "everything"}), "type"),
        (
            json!({"projectId": "p", "destination": "ftp"}),
            "destination",
        ),
        (
            json!({"projectId": "p", "destination": "s3"}),
            "destination s3 is not configured",
        ),
        (json!({"projectId": "p", "encrypt": true}), "encrypt"),
        (
            json!({"projectId": "p", "compression": "brotli"}),
            "compression",
        ),
        (json!({"projectId": "p", "kind": "full"}), "kind"),
        (json!({"type": "full"}), "projectId"),
    ] {
        let (status, response) = app.backups().create(body.clone()).await;
        assert_eq!(status, 400, "{body} -> {response}");
        assert!(
            response["error"].as_str().unwrap().contains(expected),
            "{body} -> {response}"
        );
    }
    let (status, response) = app.backups().create(json!({"projectId": "nope"})).await;
    assert_eq!(
        (status, response),
        (400, json!({"success": false, "error": "Project not found"}))
    );
    let (_, list) = app.backups().list("").await;
    assert_eq!(list["pagination"]["total"], 0);
    // A read-only key may not start one.
    let (_, key) = app
        .api_keys()
        .create(json!({"name": "ro", "permissions": ["backups:read"]}))
        .await;
    let (status, body) = app
        .as_key(key["apiKey"]["key"].as_str().unwrap())
        .backups()
        .create(json!({"projectId": "p"}))
        .await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn an_async_backup_answers_202_and_finishes() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let response = app
        .post("/api/v1/backups")
        .header("Prefer", "respond-async")
        .json(&json!({"projectId": "p", "type": "config", "compression": "zstd"}))
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(location, body["job"]["jobUrl"]);
    assert!(location.starts_with("/api/v1/jobs/job-"));
    let backup_id = body["backup"]["id"].as_str().unwrap().to_string();
    let job = app.wait_for_job(&location, Duration::from_secs(10)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempt"], 1);
    assert!(job["durationMs"].is_i64());
    let (_, backup) = app.backups().get(&backup_id).await;
    assert_eq!(backup["status"], "completed");
    assert!(backup["path"].as_str().unwrap().ends_with(".tar.zst"));
    let listing = Command::new("tar")
        .args(["--zstd", "-tf"])
        .arg(artifact_path(&backup))
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(listing.lines().any(|l| l == "config/.env"), "{listing}");
    assert!(
        !listing.contains("database/"),
        "a config backup holds only config"
    );
}

#[tokio::test]
async fn a_backup_of_an_unreachable_database_fails_with_the_cause() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default().env("SUPASCALE_JOB_ATTEMPTS", "2"),
    )
    .await;
    let root = tempfile::tempdir().unwrap();
    let (status, _) = app.projects().register(json!({"id": "down", "name": "Down", "rootDir": root.path().to_str().unwrap(),
                          "databaseUrl": "postgres://supabase_admin:hunter22@127.0.0.1:1/postgres"})).await;
    assert_eq!(status, 201);
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "down", "type": "database"}))
        .await;
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("Backup failed: project database is not reachable"),
        "{error}"
    );
    assert!(!error.contains("hunter22"));
    let (_, list) = app.backups().list("status=failed").await;
    assert_eq!(list["pagination"]["total"], 1);
    assert!(
        !app.logs().contains("hunter22"),
        "a log line shows the project's password"
    );
}

/// Scale-out: PostgreSQL control plane, Redis queue, the API without
/// workers and a separate `supascale-worker`.
#[tokio::test]
async fn scale_out_backups_run_on_a_separate_worker() {
    let queue = RedisQueue::new();
    let app = TestApp::spawn_with(
        Backend::Postgres,
        Launch::default()
            .env("SUPASCALE_REDIS_URL", "redis://127.0.0.1:6379")
            .env("SUPASCALE_QUEUE_NAME", queue.name.clone())
            .env("SUPASCALE_WORKERS", "0"),
    )
    .await;
    let mut worker = app.start_worker(
        Launch::default()
            .env("SUPASCALE_REDIS_URL", "redis://127.0.0.1:6379")
            .env("SUPASCALE_QUEUE_NAME", queue.name.clone()),
    );
    let project = make_project().await;
    register(&app, &project, "scaled").await;
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "scaled", "type": "full"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backup"]["status"], "completed");
    let path = artifact_path(&body["backup"]);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        body["backup"]["size"].as_u64().unwrap()
    );
    // The worker logs the job's end just after the backup row says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = worker.stderr.lock().unwrap().join("\n");
        if log.contains("job completed") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the separate worker did not run it: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.signal("TERM");
    let (code, _) = worker.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0));
}

/// The database component carries the cluster's own roles (Supabase's
/// reserved ones left out) beside the dump.
#[tokio::test]
async fn a_database_backup_holds_the_clusters_own_roles() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let suffix = supascale_tests::random_suffix(8);
    let own = format!("app_reader_{suffix}");
    let reserved = format!("supabase_extra_{suffix}");
    psql(
        &project.database.url,
        &format!("CREATE ROLE {own} LOGIN; CREATE ROLE {reserved}; GRANT {reserved} TO {own};"),
    );
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "p", "type": "database"}))
        .await;
    psql(
        &project.database.url,
        &format!("DROP ROLE {own}; DROP ROLE {reserved};"),
    );
    assert_eq!(status, 200, "{body}");
    let out = tempfile::tempdir().unwrap();
    extract(&artifact_path(&body["backup"]), out.path());
    let roles = std::fs::read_to_string(out.path().join("database/roles.sql")).unwrap();
    assert!(roles.contains(&format!("CREATE ROLE {own};")), "{roles}");
    assert!(
        roles.contains(&format!("GRANT {reserved} TO {own}")),
        "{roles}"
    );
    assert!(
        !roles.contains(&format!("CREATE ROLE {reserved};")),
        "{roles}"
    );
    assert!(!roles.contains("CREATE ROLE postgres;"), "{roles}");
    assert!(!roles.contains("PASSWORD"), "{roles}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    let entries: Vec<&str> = manifest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(entries.contains(&"database/roles.sql"), "{entries:?}");
    assert_eq!(
        manifest["postgresVersion"].as_str().map(|v| &v[..2]),
        Some("15")
    );
}

/// Before any work: a backup fails at once, without retries, when no
/// `pg_dump` of the server's major is configured, or when the disk would
/// be left with less than the reserve.
#[tokio::test]
async fn a_backup_that_cannot_succeed_fails_before_it_starts() {
    let tools = tempfile::tempdir().unwrap();
    for program in ["pg_dump", "pg_dumpall"] {
        let fake = tools.path().join(program);
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho '{program} (PostgreSQL) 14.9'\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let old_tools = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default().env(
            "SUPASCALE_POSTGRES_BIN_DIRS",
            tools.path().to_str().unwrap(),
        ),
    )
    .await;
    let full_disk = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default().env("SUPASCALE_DISK_RESERVE_BYTES", "1000000000000000000"),
    )
    .await;
    let project = make_project().await;
    for (app, expected) in [
        (&old_tools, "Backup failed: no pg_dump for PostgreSQL 15 ("),
        (&full_disk, "Backup failed: Insufficient disk space"),
    ] {
        register(app, &project, "p").await;
        let (status, body) = app
            .backups()
            .create(json!({"projectId": "p", "type": "full"}))
            .await;
        assert_eq!(status, 500, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.starts_with(expected), "{error}");
        let (_, jobs) = app.jobs().list("").await;
        assert_eq!(jobs["jobs"][0]["attempt"], 1, "{jobs}");
        let leftovers = app.spool_files();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// `encrypt: true` wraps the compressed stream in the age format for the
/// configured recipients: the `age` command-line tool decrypts the
/// download with nothing of ours running, and the result is the usual tar.
#[tokio::test]
async fn an_encrypted_backup_opens_with_the_age_tool() {
    let tools = supascale_tests::emulators::tools_dir().join("age/usr/bin");
    let keys = tempfile::tempdir().unwrap();
    let (identity, recipient) = supascale_tests::emulators::age_keypair(keys.path(), "key.txt");
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default().env("SUPASCALE_ENCRYPTION_RECIPIENTS", recipient),
    )
    .await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "p", "type": "full", "encrypt": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    let backup = &body["backup"];
    assert_eq!(backup["encrypted"], true);
    let response = app
        .get(&format!(
            "/api/v1/backups/{}/download",
            backup["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(disposition.ends_with(".tar.gz.age\""), "{disposition}");
    let bytes = response.bytes().await.unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        backup["sha256"].as_str().unwrap()
    );
    assert_eq!(bytes.len() as u64, backup["size"].as_u64().unwrap());
    let sealed = keys.path().join("backup.tar.gz.age");
    std::fs::write(&sealed, &bytes).unwrap();
    let opened = keys.path().join("backup.tar.gz");
    let decrypted = Command::new(tools.join("age"))
        .arg("-d")
        .arg("-i")
        .arg(&identity)
        .arg("-o")
        .arg(&opened)
        .arg(&sealed)
        .output()
        .unwrap();
    assert!(
        decrypted.status.success(),
        "{}",
        String::from_utf8_lossy(&decrypted.stderr)
    );
    let out = keys.path().join("out");
    extract(&opened, &out);
    assert!(out.join("manifest.json").exists());
    assert!(out.join("database/database.dump").exists());
    assert_eq!(
        std::fs::read(out.join("config/.env")).unwrap(),
        std::fs::read(project.root.path().join(".env")).unwrap()
    );
    // Another key cannot open it.
    let other = keys.path().join("other.txt");
    assert!(
        Command::new(tools.join("age-keygen"))
            .arg("-o")
            .arg(&other)
            .output()
            .unwrap()
            .status
            .success()
    );
    let refused = Command::new(tools.join("age"))
        .arg("-d")
        .arg("-i")
        .arg(&other)
        .arg(&sealed)
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

/// A recipient that is not an age public key stops the service at start,
/// naming the setting.
#[test]
fn a_bad_recipient_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = supascale_tests::start(
        "supascale-api",
        &Launch::default()
            .env("SUPASCALE_DATA_DIR", dir.path().to_str().unwrap())
            .env("SUPASCALE_ENCRYPTION_RECIPIENTS", "age1notakey"),
    );
    let (code, stderr) = api.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("SUPASCALE_ENCRYPTION_RECIPIENTS"),
        "{stderr}"
    );
}
