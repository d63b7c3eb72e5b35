//! Restores through the API into real projects (reference-project
//! generator, real PostgreSQL, real files with xattrs): what comes back is
//! exactly what was backed up, and a restore that fails changes nothing.

use std::path::Path;

use serde_json::{Value, json};
use supascale_tests::refproject::{
    self, RefProject, register, schema_of, table_fingerprints, tree_snapshot,
};
use supascale_tests::{Backend, TestApp, psql, status_and_body};

/// What a user would compare: every table's rows, the schema, the files.
#[derive(Debug, PartialEq)]
struct ProjectState {
    tables: Vec<String>,
    schema: String,
    storage: Vec<String>,
    functions: Vec<String>,
    env: String,
}

fn state_of(project: &RefProject) -> ProjectState {
    let root = project.root.path();
    ProjectState {
        tables: table_fingerprints(&project.database.url),
        schema: schema_of(&project.database.url),
        storage: tree_snapshot(&root.join("volumes/storage")),
        functions: tree_snapshot(&root.join("volumes/functions")),
        env: std::fs::read_to_string(root.join(".env")).unwrap(),
    }
}

async fn backup(app: &TestApp, project_id: &str, kind: &str) -> String {
    let (status, body) = app
        .post_json(
            "/api/v1/backups",
            &json!({"projectId": project_id, "type": kind}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["backup"]["id"].as_str().unwrap().to_string()
}

async fn restore(app: &TestApp, backup_id: &str, request: Value) -> (u16, Value) {
    app.post_json(&format!("/api/v1/backups/{backup_id}/restore"), &request)
        .await
}

/// Changes of every kind a restore must undo.
fn change_everything(project: &RefProject) {
    psql(
        &project.database.url,
        "DELETE FROM public.comments WHERE id % 3 = 0; \
         UPDATE public.posts SET title = 'changed' WHERE id % 5 = 0; \
         INSERT INTO public.\"Über Tabelle ✓\" VALUES (1000, 'neu'); \
         DROP TABLE public.attachments; \
         CREATE TABLE public.after_backup (id int); \
         CREATE FUNCTION public.after_backup_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'; \
         CREATE POLICY \"new policy\" ON public.posts FOR SELECT TO anon USING (true);",
    );
    let root = project.root.path();
    let (first, _) = &project.objects[0];
    std::fs::write(root.join(first), b"overwritten").unwrap();
    std::fs::remove_file(root.join(&project.objects[1].0)).unwrap();
    let added = root.join("volumes/storage/stub/stub/avatars/new.png/v1");
    std::fs::create_dir_all(added.parent().unwrap()).unwrap();
    std::fs::write(&added, b"new").unwrap();
    std::fs::remove_dir_all(root.join("volumes/functions/stripe-sync")).unwrap();
    std::fs::write(root.join("volumes/functions/main/index.ts"), "changed").unwrap();
    std::fs::write(root.join(".env"), "JWT_SECRET=changed\n").unwrap();
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".supascale-"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_changed_project_comes_back_exactly_as_it_was_backed_up() {
    let project = refproject::make(0.05, 11, false).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &project, "alpha").await;
    // Large objects: pg_restore wraps them in a transaction of their own
    // unless told otherwise, which would commit the restore half-way.
    psql(
        &project.database.url,
        "SELECT lo_from_bytea(0, convert_to('large object at backup time', 'UTF8'))",
    );
    let large_objects = "SELECT string_agg(convert_from(lo_get(oid), 'UTF8'), ',' ORDER BY oid) \
                         FROM pg_largeobject_metadata";
    let before = state_of(&project);
    let backup_id = backup(&app, "alpha", "full").await;
    change_everything(&project);
    psql(
        &project.database.url,
        "SELECT lo_from_bytea(0, convert_to('made after the backup', 'UTF8'))",
    );
    assert_ne!(state_of(&project), before);

    let (status, body) = restore(&app, &backup_id, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    let restored = &body["restore"];
    assert_eq!(restored["backupId"], backup_id.as_str());
    assert_eq!(restored["projectId"], "alpha");
    assert!(restored["duration"].as_i64().is_some(), "{body}");
    assert!(restored["restoredAt"].as_str().is_some(), "{body}");
    assert!(restored["warnings"].is_array(), "{body}");

    let after = state_of(&project);
    assert_eq!(after.tables, before.tables);
    assert_eq!(after.schema, before.schema);
    assert_eq!(after.storage, before.storage);
    assert_eq!(after.functions, before.functions);
    assert_eq!(after.env, before.env);
    assert_eq!(
        psql(&project.database.url, large_objects).trim(),
        "large object at backup time"
    );
    let root = project.root.path();
    assert!(leftovers(&root.join("volumes/storage")).is_empty());
    assert!(leftovers(&root.join("volumes/functions")).is_empty());

    // The restore is in the backup's history.
    let (status, details) = app.get_json(&format!("/api/v1/backups/{backup_id}")).await;
    assert_eq!(status, 200);
    let history = details["restoreHistory"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{details}");
    assert_eq!(history[0]["restoredAt"], restored["restoredAt"]);
    assert_eq!(history[0]["duration"], restored["duration"]);
}

#[tokio::test]
async fn a_backup_restores_into_a_freshly_initialised_project() {
    let source = refproject::make(0.05, 12, false).await;
    let fresh = refproject::make(0.05, 13, true).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &source, "source").await;
    register(&app, &fresh, "fresh").await;
    let at_backup = state_of(&source);
    let fresh_env = std::fs::read_to_string(fresh.root.path().join(".env")).unwrap();
    std::fs::write(
        fresh.root.path().join(".env"),
        format!("{fresh_env}# fresh\n"),
    )
    .unwrap();
    let backup_id = backup(&app, "source", "full").await;

    let (status, body) = restore(&app, &backup_id, json!({"targetProjectId": "fresh"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restore"]["projectId"], "fresh");
    let warnings = body["restore"]["warnings"].to_string();
    assert!(warnings.contains("Config was not restored"), "{warnings}");

    let restored = state_of(&fresh);
    assert_eq!(restored.tables, at_backup.tables);
    assert_eq!(restored.schema, at_backup.schema);
    assert_eq!(restored.storage, at_backup.storage);
    assert_eq!(restored.functions, at_backup.functions);
    // B keeps its own identity.
    assert_eq!(restored.env, format!("{fresh_env}# fresh\n"));
}

#[tokio::test]
async fn each_restore_type_alone_restores_only_that_component() {
    let project = refproject::make(0.05, 14, false).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &project, "solo").await;
    let before = state_of(&project);
    let backup_id = backup(&app, "solo", "full").await;

    change_everything(&project);
    let changed = state_of(&project);
    let (status, body) = restore(&app, &backup_id, json!({"restoreTypes": ["storage"]})).await;
    assert_eq!(status, 200, "{body}");
    let after = state_of(&project);
    assert_eq!(after.storage, before.storage);
    assert_eq!(after.tables, changed.tables);
    assert_eq!(after.functions, changed.functions);
    assert_eq!(after.env, changed.env);

    let (status, body) = restore(&app, &backup_id, json!({"restoreTypes": ["database"]})).await;
    assert_eq!(status, 200, "{body}");
    let after = state_of(&project);
    assert_eq!(after.tables, before.tables);
    assert_eq!(after.schema, before.schema);
    assert_eq!(after.functions, changed.functions);
    assert_eq!(after.env, changed.env);

    let (status, body) = restore(
        &app,
        &backup_id,
        json!({"restoreTypes": ["functions", "config"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_of(&project), before);

    // The contract's own example: `["full"]` is every component.
    change_everything(&project);
    let (status, body) = restore(
        &app,
        &backup_id,
        json!({"restoreTypes": ["full"], "forceRestore": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_of(&project), before);
}

/// A failed restore answers 500 `Restore failed: <cause>` and the project is
/// exactly as it was before the request.
async fn assert_fails_and_changes_nothing(
    app: &TestApp,
    project: &RefProject,
    backup_id: &str,
    request: Value,
    causes: &[&str],
) {
    let before = state_of(project);
    let (status, body) = restore(app, backup_id, request).await;
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("Restore failed: "), "{error}");
    assert!(causes.iter().any(|c| error.contains(c)), "{error}");
    assert_eq!(state_of(project), before);
    let root = project.root.path();
    assert!(leftovers(&root.join("volumes/storage")).is_empty());
    assert!(leftovers(&root.join("volumes/functions")).is_empty());
}

#[tokio::test]
async fn a_damaged_artifact_or_manifest_fails_the_restore_and_changes_nothing() {
    let project = refproject::make(0.05, 15, false).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &project, "damaged").await;
    let backup_id = backup(&app, "damaged", "full").await;
    change_everything(&project);

    // A file whose bytes are not what the manifest says.
    let control = app.control_plane().await;
    let stored = app
        .get(&format!("/api/v1/backups/{backup_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    let (object, _) = project
        .objects
        .iter()
        .find(|(_, size)| *size > 1000)
        .expect("a non-empty object");
    let object = object.strip_prefix("volumes/").unwrap();
    let entry = format!("{}", object.display());
    control
        .execute(&format!(
            "UPDATE backups SET manifest = replace(manifest, \
             (SELECT value ->> 'sha256' FROM json_each(json_extract(manifest, '$.entries')) \
              WHERE value ->> 'path' = '{}'), '{}') WHERE id = '{backup_id}'",
            entry.replace('\'', "''"),
            "0".repeat(64)
        ))
        .await;
    assert_fails_and_changes_nothing(
        &app,
        &project,
        &backup_id,
        json!({}),
        &[&format!("checksum mismatch in {entry}")],
    )
    .await;

    // Bytes damaged on the destination (same size), after the database
    // was checked and loaded: nothing is committed.
    let second = backup(&app, "damaged", "full").await;
    let path = artifact_path_of(&app, &second);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    assert_fails_and_changes_nothing(
        &app,
        &project,
        &second,
        json!({}),
        &["the artifact cannot be read", "checksum mismatch in"],
    )
    .await;
}

/// The artifact of one backup, by its id in the file name.
fn artifact_path_of(app: &TestApp, backup_id: &str) -> std::path::PathBuf {
    fn find(dir: &Path, id: &str) -> Option<std::path::PathBuf> {
        for entry in std::fs::read_dir(dir).ok()? {
            let path = entry.ok()?.path();
            if path.is_dir() {
                if let Some(found) = find(&path, id) {
                    return Some(found);
                }
            } else if path.to_string_lossy().contains(&id[id.len() - 8..]) {
                return Some(path);
            }
        }
        None
    }
    find(&app.data_dir.path().join("backups"), backup_id)
        .unwrap_or_else(|| panic!("no artifact of {backup_id}"))
}

/// Another session holding a lock on the target: the restore waits the
/// configured bound, then fails naming that session, and the project is
/// unchanged; with `forceRestore` such sessions are ended and it succeeds.
#[tokio::test]
async fn sessions_that_hold_locks_are_named_or_ended_with_force() {
    let project = refproject::make(0.05, 16, false).await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        supascale_tests::Launch::default().env("SUPASCALE_RESTORE_LOCK_TIMEOUT_SECONDS", "2"),
    )
    .await;
    register(&app, &project, "locked").await;
    let before = state_of(&project);
    let backup_id = backup(&app, "locked", "full").await;
    change_everything(&project);

    let lock = supascale_tests::TableLock::hold_shared(&project.database.url).await;
    assert_fails_and_changes_nothing(
        &app,
        &project,
        &backup_id,
        json!({}),
        &["other sessions hold locks on the project database (waited 2 s): pid "],
    )
    .await;

    let (status, body) = restore(&app, &backup_id, json!({"forceRestore": true})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_of(&project), before);
    drop(lock);
}

/// The target's database connection dies half-way through the load (its
/// backend is ended while the restore waits for a lock): the transaction
/// is gone, and so is every staged file.
#[tokio::test]
async fn a_database_that_goes_away_mid_restore_leaves_the_project_as_it_was() {
    let project = refproject::make(0.05, 17, false).await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        supascale_tests::Launch::default().env("SUPASCALE_RESTORE_LOCK_TIMEOUT_SECONDS", "60"),
    )
    .await;
    register(&app, &project, "vanishing").await;
    let backup_id = backup(&app, "vanishing", "full").await;
    change_everything(&project);
    let before = state_of(&project);
    let lock = supascale_tests::TableLock::hold_shared(&project.database.url).await;

    let (accepted, job_id) =
        supascale_tests::start_restore_behind_lock(&app, &project.database.url, &backup_id).await;
    psql(
        &project.database.url,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'supascale-job-{job_id}'"
        ),
    );
    let job = app
        .wait_for_job(
            accepted["job"]["jobUrl"].as_str().unwrap(),
            std::time::Duration::from_secs(60),
        )
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("rolled back"),
        "{job}"
    );
    lock.release().await;
    assert_eq!(state_of(&project), before);
    let root = project.root.path();
    assert!(leftovers(&root.join("volumes/storage")).is_empty());
}

/// A restore ends with its job, and only by the worker that holds the job.
/// Here the job is taken from its worker while the restore waits for a
/// lock (as when its heartbeat goes stale): that worker finishes the
/// restore but records nothing, and the restore is never `completed` while
/// its job is not. The worker that takes the job over restores again and
/// records both.
#[tokio::test]
async fn a_restore_is_recorded_only_by_the_worker_holding_its_job() {
    let project = refproject::make(0.02, 23, false).await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        supascale_tests::Launch::default().env("SUPASCALE_RESTORE_LOCK_TIMEOUT_SECONDS", "60"),
    )
    .await;
    register(&app, &project, "handover").await;
    let before = state_of(&project);
    let backup_id = backup(&app, "handover", "full").await;
    change_everything(&project);
    let lock = supascale_tests::TableLock::hold_shared(&project.database.url).await;
    let (_, job_id) =
        supascale_tests::start_restore_behind_lock(&app, &project.database.url, &backup_id).await;
    let control = app.control_plane().await;
    control
        .execute(&format!(
            "UPDATE jobs SET worker_id = 'a-worker-that-died' WHERE id = '{job_id}'"
        ))
        .await;
    lock.release().await;

    let state = format!(
        "SELECT r.status || ' ' || j.status || ' ' || COALESCE(j.worker_id, '-') \
         FROM restores r JOIN jobs j ON j.id = r.job_id WHERE r.job_id = '{job_id}'"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut seen = Vec::new();
    loop {
        let now = control.text(&state).await.expect("the restore row");
        let fields: Vec<&str> = now.split(' ').collect();
        let (restore_status, job_status) = (fields[0], fields[1]);
        assert!(
            restore_status != "completed" || job_status == "completed",
            "the restore was recorded completed while its job was {job_status} (held by {}); seen: {seen:?}",
            fields[2]
        );
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if job_status == "completed" || job_status == "failed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job never ended: {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let job = app
        .wait_for_job(
            &format!("/api/v1/jobs/{job_id}"),
            std::time::Duration::from_secs(5),
        )
        .await;
    assert_eq!(job["status"], "completed", "{job}; seen: {seen:?}");
    assert_eq!(job["attempt"], 2, "{job}; seen: {seen:?}");
    assert!(
        seen.iter().any(|s| s.ends_with("a-worker-that-died")),
        "{seen:?}"
    );
    assert_eq!(state_of(&project), before);
}

/// Every check that needs no artifact answers at once, in the contract's
/// error shape, and starts nothing.
#[tokio::test]
async fn safety_checks_answer_4xx_before_anything_starts() {
    let project = refproject::make(0.02, 18, false).await;
    let other = refproject::make(0.02, 19, true).await;
    let keys = tempfile::tempdir().unwrap();
    let (_, recipient) = supascale_tests::emulators::age_keypair(keys.path(), "key.txt");
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        supascale_tests::Launch::default().env("SUPASCALE_ENCRYPTION_RECIPIENTS", recipient),
    )
    .await;
    register(&app, &project, "checked").await;
    register(&app, &other, "other").await;
    let full = backup(&app, "checked", "full").await;
    let config_only = backup(&app, "checked", "config").await;

    let refused = |status: u16, body: &Value, wanted: &str| {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["success"], false, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(wanted), "{error:?} should say {wanted:?}");
    };
    let (status, body) = restore(&app, "backup-missing", json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("Backup not found"))
    );
    let (status, body) = restore(&app, &full, json!({"targetProjectId": "nope"})).await;
    refused(status, &body, "Project not found");
    let (status, body) = restore(&app, &full, json!({"restoreTypes": ["everything"]})).await;
    refused(status, &body, "restoreTypes");
    let (status, body) = restore(&app, &full, json!({"forceRestore": "yes"})).await;
    refused(status, &body, "forceRestore");
    let (status, body) = restore(
        &app,
        &config_only,
        json!({"restoreTypes": ["database", "storage"]}),
    )
    .await;
    refused(status, &body, "Backup does not contain: database, storage");
    let (status, body) = restore(
        &app,
        &full,
        json!({"restoreTypes": ["config"], "targetProjectId": "other"}),
    )
    .await;
    refused(status, &body, "set forceRestore");

    // Config into another project with forceRestore: that project's
    // identity is replaced, as asked.
    let (status, body) = restore(
        &app,
        &config_only,
        json!({"restoreTypes": ["config"], "targetProjectId": "other", "forceRestore": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A backup that is not completed.
    let control = app.control_plane().await;
    control
        .execute(&format!(
            "UPDATE backups SET status = 'failed' WHERE id = '{config_only}'"
        ))
        .await;
    let (status, body) = restore(&app, &config_only, json!({})).await;
    refused(status, &body, "is not completed (status: failed)");

    // A backup of a newer PostgreSQL than the target's.
    control
        .execute(&format!(
            "UPDATE backups SET manifest = json_set(manifest, '$.postgresVersion', '99.1') \
             WHERE id = '{full}'"
        ))
        .await;
    let (status, body) = restore(&app, &full, json!({"restoreTypes": ["database"]})).await;
    refused(
        status,
        &body,
        "Backup is of PostgreSQL 99, newer than project checked's",
    );
    control
        .execute(&format!(
            "UPDATE backups SET manifest = json_set(manifest, '$.postgresVersion', '15.0') \
             WHERE id = '{full}'"
        ))
        .await;

    // An encrypted backup without a decryption key.
    let (status, body) = app
        .post_json(
            "/api/v1/backups",
            &json!({"projectId": "checked", "type": "config", "encrypt": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let encrypted = body["backup"]["id"].as_str().unwrap().to_string();
    let (status, body) = restore(&app, &encrypted, json!({})).await;
    refused(
        status,
        &body,
        "Backup is encrypted and no decryption key is configured",
    );

    // The artifact gone from its destination.
    std::fs::remove_file(artifact_path_of(&app, &encrypted)).unwrap();
    let (status, body) = restore(&app, &encrypted, json!({})).await;
    refused(
        status,
        &body,
        "Backup artifact is missing from destination local",
    );

    // A target whose database does not answer.
    psql(
        supascale_tests::PG_ADMIN_URL,
        &format!("DROP DATABASE \"{}\" WITH (FORCE)", other.database.name),
    );
    let (status, body) = restore(
        &app,
        &full,
        json!({"restoreTypes": ["database"], "targetProjectId": "other"}),
    )
    .await;
    refused(status, &body, "Project other is not running: ");

    // Nothing ran: the only restore rows are the two that succeeded... and
    // no restore job was created for a refused request.
    let (_, jobs) = app.get_json("/api/v1/jobs?kind=restore").await;
    assert_eq!(jobs["pagination"]["total"], 1, "{jobs}");
}

/// A database owner without superuser is refused up front, with the role
/// and what it lacks named.
#[tokio::test]
async fn a_role_without_superuser_is_refused_with_what_it_lacks() {
    let project = refproject::make(0.02, 20, false).await;
    let role = format!("owner_{}", supascale_tests::random_suffix(8).to_lowercase());
    psql(
        &project.database.url,
        &format!(
            "CREATE ROLE {role} LOGIN NOSUPERUSER; \
             ALTER DATABASE \"{}\" OWNER TO {role};",
            project.database.name
        ),
    );
    let app = TestApp::spawn(Backend::Sqlite).await;
    let url = project
        .database
        .url
        .replace("postgres://postgres@", &format!("postgres://{role}@"));
    // The same project, registered as a superuser first, makes the backup;
    // then it is registered again with the owner role (two projects never
    // share folders or a database).
    register(&app, &project, "owned-admin").await;
    let backup_id = backup(&app, "owned-admin", "full").await;
    let response = app
        .delete("/api/v1/projects/owned-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, body) = app
        .post_json(
            "/api/v1/projects",
            &json!({"id": "owned", "name": "Owned",
                "rootDir": project.root.path().to_str().unwrap(), "databaseUrl": url}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = restore(
        &app,
        &backup_id,
        json!({"targetProjectId": "owned", "restoreTypes": ["database"]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "Project owned: role {role} cannot restore the database: it is not a superuser"
        )),
        "{error}"
    );
    // Files need no database privilege.
    let (status, body) = restore(
        &app,
        &backup_id,
        json!({"targetProjectId": "owned", "restoreTypes": ["storage"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    psql(
        &project.database.url,
        &format!(
            "ALTER DATABASE \"{}\" OWNER TO postgres; DROP ROLE {role};",
            project.database.name
        ),
    );
}

/// An encrypted backup restores with the configured identity, and not with
/// another one.
#[tokio::test]
async fn an_encrypted_backup_restores_only_with_its_key() {
    let project = refproject::make(0.02, 21, false).await;
    let keys = tempfile::tempdir().unwrap();
    let (identity, recipient) = supascale_tests::emulators::age_keypair(keys.path(), "right.txt");
    let (wrong, _) = supascale_tests::emulators::age_keypair(keys.path(), "wrong.txt");
    let launch = supascale_tests::Launch::default()
        .env("SUPASCALE_ENCRYPTION_RECIPIENTS", recipient)
        .env(
            "SUPASCALE_ENCRYPTION_IDENTITY_FILE",
            wrong.to_str().unwrap(),
        );
    let mut app = TestApp::spawn_with(Backend::Sqlite, launch).await;
    register(&app, &project, "sealed").await;
    let before = state_of(&project);
    let (status, body) = app
        .post_json(
            "/api/v1/backups",
            &json!({"projectId": "sealed", "type": "full", "encrypt": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let backup_id = body["backup"]["id"].as_str().unwrap().to_string();
    change_everything(&project);
    assert_fails_and_changes_nothing(
        &app,
        &project,
        &backup_id,
        json!({}),
        &["the configured decryption key does not open this backup"],
    )
    .await;

    app.set_env(
        "SUPASCALE_ENCRYPTION_IDENTITY_FILE",
        identity.to_str().unwrap(),
    );
    app.restart();
    let (status, body) = restore(&app, &backup_id, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_of(&project), before);
}

/// A worker killed with SIGKILL while its restore holds an open
/// transaction: its `psql` dies with it, PostgreSQL rolls the transaction
/// back, nothing of the project changed meanwhile, and another worker (or
/// the restarted one) restores the backup in full.
async fn a_worker_killed_mid_restore(deployment: supascale_tests::Deployment) {
    let project = refproject::make(0.05, 22, false).await;
    let mut cluster = supascale_tests::Cluster::start(
        deployment,
        supascale_tests::Launch::default().env("SUPASCALE_RESTORE_LOCK_TIMEOUT_SECONDS", "120"),
    )
    .await;
    register(&cluster.app, &project, "killed").await;
    let before = state_of(&project);
    let backup_id = backup(&cluster.app, "killed", "full").await;
    change_everything(&project);
    let changed = state_of(&project);
    let lock = supascale_tests::TableLock::hold_shared(&project.database.url).await;
    let (status, accepted) = status_and_body(
        cluster
            .app
            .post(&format!("/api/v1/backups/{backup_id}/restore?async=true"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let job_id = accepted["job"]["id"].as_str().unwrap().to_string();
    let job_url = accepted["job"]["jobUrl"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while supascale_tests::job_sessions(&project.database.url, &job_id).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the restore never connected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, job) = cluster.app.get_json(&job_url).await;
    cluster.kill_worker_of(&job);
    // The dead attempt's session goes with it (or, waiting for a lock, is
    // ended by the next attempt); the project is untouched meanwhile.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while supascale_tests::job_sessions(&project.database.url, &job_id).await > 0 {
        if std::time::Instant::now() > deadline {
            break; // the next attempt may have connected already
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The files users see are unchanged (the dead attempt's hidden staging
    // folder aside, which the next attempt removes). The database is not
    // read here: the next attempt may be queued for its exclusive locks
    // behind ours, and a reader would queue behind it (its transaction
    // guarantees the database anyway, checked at the end).
    let root = project.root.path();
    let files = |dir: &str| {
        let mut lines = tree_snapshot(&root.join(dir));
        lines.retain(|line| !line.starts_with(".supascale-"));
        lines
    };
    assert_eq!(files("volumes/storage"), changed.storage);
    assert_eq!(files("volumes/functions"), changed.functions);
    assert_eq!(
        std::fs::read_to_string(root.join(".env")).unwrap(),
        changed.env
    );
    lock.release().await;
    let job = cluster
        .app
        .wait_for_job(&job_url, std::time::Duration::from_secs(90))
        .await;
    assert_eq!(job["status"], "completed", "{job}");
    assert!(job["attempt"].as_i64().unwrap() >= 2, "{job}");
    assert_eq!(state_of(&project), before);
    let root = project.root.path();
    assert!(leftovers(&root.join("volumes/storage")).is_empty());
    assert!(leftovers(&root.join("volumes/functions")).is_empty());
}

#[tokio::test]
async fn a_worker_killed_mid_restore_embedded() {
    a_worker_killed_mid_restore(supascale_tests::Deployment::Embedded).await;
}

#[tokio::test]
async fn a_worker_killed_mid_restore_scale_out() {
    a_worker_killed_mid_restore(supascale_tests::Deployment::ScaleOut).await;
}

/// Staging folders of restores that will not run again are removed by the
/// workers' housekeeping; content a crashed swap replaced stays (it may be
/// the only copy) and is named in the log.
#[tokio::test]
async fn dead_restores_staging_folders_are_removed_and_replaced_content_kept() {
    let project = refproject::make(0.0, 23, true).await;
    let mut app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &project, "tidy").await;
    let storage = project.root.path().join("volumes/storage");
    let staging = storage.join(".supascale-restore-job-0123456789abcdef");
    let kept = storage.join(".supascale-old-job-0123456789abcdef");
    std::fs::create_dir_all(staging.join("stub/stub")).unwrap();
    std::fs::create_dir_all(kept.join("stub")).unwrap();
    // Config files are staged beside themselves.
    let kong = project.root.path().join("volumes/api");
    let staged_file = kong.join(".kong.yml.supascale-job-0123456789abcdef");
    let kept_file = kong.join(".kong.yml.supascale-old-job-0123456789abcdef");
    std::fs::write(&staged_file, "staged").unwrap();
    std::fs::write(&kept_file, "the only copy").unwrap();
    app.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while staging.exists() || staged_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the staging folder stayed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The same round logs the kept folder (the log may lag a moment).
    while !app.logs().contains(".supascale-old-job-0123456789abcdef") {
        assert!(std::time::Instant::now() < deadline, "{}", app.logs());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(kept.join("stub").is_dir());
    while !app
        .logs()
        .contains(".kong.yml.supascale-old-job-0123456789abcdef")
    {
        assert!(std::time::Instant::now() < deadline, "{}", app.logs());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&kept_file).unwrap(),
        "the only copy"
    );
}

/// `POST /backups/{id}/verify` reads the artifact back and checks every
/// entry and the dump; a damaged or missing artifact is reported on the
/// backup, and a project is never touched.
#[tokio::test]
async fn verification_finds_a_whole_backup_valid_and_a_damaged_one_not() {
    let project = refproject::make(0.02, 24, false).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &project, "verified").await;
    let backup_id = backup(&app, "verified", "full").await;
    let before = state_of(&project);
    let verify = |id: String| {
        let request = app.post(&format!("/api/v1/backups/{id}/verify"));
        async move { status_and_body(request.send().await.unwrap()).await }
    };

    let (status, body) = verify(backup_id.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["verification"]["valid"], true, "{body}");
    let verified_at = body["verification"]["verifiedAt"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, details) = app.get_json(&format!("/api/v1/backups/{backup_id}")).await;
    assert_eq!(details["verifiedAt"], verified_at.as_str());

    let path = artifact_path_of(&app, &backup_id);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 3;
    for b in &mut bytes[at..at + 32] {
        *b ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();
    let (status, body) = verify(backup_id.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["verification"]["valid"], false, "{body}");
    let error = body["verification"]["error"].as_str().unwrap();
    assert!(
        error.contains("artifact cannot be read") || error.contains("checksum mismatch"),
        "{error}"
    );
    // The last good verification is kept beside the new finding.
    let (_, details) = app.get_json(&format!("/api/v1/backups/{backup_id}")).await;
    assert_eq!(details["verifiedAt"], verified_at.as_str());
    assert_eq!(details["verifyError"], error);

    std::fs::remove_file(&path).unwrap();
    let (status, body) = verify(backup_id.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["verification"]["error"]
            .as_str()
            .unwrap()
            .contains("missing from destination local"),
        "{body}"
    );
    let (status, _) = verify("backup-nope".into()).await;
    assert_eq!(status, 404);
    assert_eq!(state_of(&project), before);
}

/// A project's post-restore command runs in its folder after a database
/// restore, its output in the job's events; one that fails is a warning
/// (the restore is committed by then). Only an admin key may set it.
#[tokio::test]
async fn the_post_restore_command_runs_after_a_database_restore() {
    let project = refproject::make(0.02, 25, false).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &project, "hooked").await;
    let command = json!([
        "sh",
        "-c",
        "echo restarted >> post-restore.log; echo services restarted"
    ]);
    let (status, body) = app
        .patch_json(
            "/api/v1/projects/hooked",
            &json!({"postRestoreCommand": command}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["project"]["postRestoreCommand"], command, "{body}");
    let backup_id = backup(&app, "hooked", "database").await;

    let (status, body) = restore(&app, &backup_id, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restore"]["warnings"], json!([]), "{body}");
    let log = std::fs::read_to_string(project.root.path().join("post-restore.log")).unwrap();
    assert_eq!(log, "restarted\n");
    let (_, jobs) = app.get_json("/api/v1/jobs?kind=restore").await;
    let job_id = jobs["jobs"][0]["id"].as_str().unwrap().to_string();
    let events = supascale_tests::read_events(
        app.get(&format!("/api/v1/jobs/{job_id}/events"))
            .send()
            .await
            .unwrap(),
        std::time::Duration::from_secs(10),
        |e| e.event == "complete",
    )
    .await;
    assert!(
        events
            .iter()
            .any(|e| e.data["message"] == "services restarted"),
        "{events:?}"
    );

    // A failing command is a warning; a storage-only restore runs nothing.
    app.patch("/api/v1/projects/hooked")
        .json(&json!({"postRestoreCommand": ["sh", "-c", "echo cannot restart; exit 3"]}))
        .send()
        .await
        .unwrap();
    let (status, body) = restore(&app, &backup_id, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let warnings = body["restore"]["warnings"].to_string();
    assert!(
        warnings.contains("The post-restore command ended with exit status: 3: cannot restart"),
        "{warnings}"
    );

    // A key that is not an unrestricted admin may not set it.
    let (status, key) = app
        .post_json(
            "/api/v1/api-keys",
            &json!({"name": "ops", "permissions": ["projects:write"]}),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let (status, body) = status_and_body(
        app.client
            .patch(app.url("/api/v1/projects/hooked"))
            .header("X-API-Key", key["apiKey"]["key"].as_str().unwrap())
            .json(&json!({"postRestoreCommand": ["rm", "-rf", "/"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("admin"), "{body}");
}
