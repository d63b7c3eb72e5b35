//! Issue 16's findings, replayed as the attacker did, against the real
//! binaries: keys below admin reaching the server's files, a functions
//! import aimed outside the project, the control plane as a project's
//! database, a limited key crossing into another project. Each is refused
//! with a clear 4xx and nothing is read, written or dropped.

use std::path::Path;
use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};
use supascale_tests::{
    Backend, Launch, TableLock, TempDatabase, TestApp, make_project, psql, register,
    status_and_body,
};

/// A new key with `permissions` (and `projectIds` when given).
async fn key(app: &TestApp, permissions: &[&str], projects: Option<&[&str]>) -> String {
    let mut body = json!({"name": "attacker", "permissions": permissions});
    if let Some(projects) = projects {
        body["projectIds"] = json!(projects);
    }
    let admin = app.admin_key.clone();
    let (status, created) = send(app, &admin, Method::POST, "/api/v1/api-keys", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created["apiKey"]["key"].as_str().unwrap().to_string()
}

async fn send(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .client
        .request(method, app.url(path))
        .header("X-API-Key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    status_and_body(request.send().await.unwrap()).await
}

async fn project_ids(app: &TestApp) -> Vec<String> {
    let (_, body) = app.get_json("/api/v1/projects").await;
    body["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

/// Finding 1: with no project roots configured, a `projects:write` key
/// names no folder at all, and even the admin cannot name a system folder
/// or Supascale's own data. The errors read the same whether the path
/// exists or not.
async fn keys_below_admin_cannot_point_a_project_at_the_servers_files(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let writer = key(&app, &["projects:write", "projects:read"], None).await;
    let root = tempfile::tempdir().unwrap();
    let root = root.path().to_str().unwrap();
    let url = "postgres://u:p@127.0.0.1:1/db";
    for body in [
        json!({"id": "p", "name": "P", "rootDir": "/etc", "databaseUrl": url}),
        json!({"id": "p", "name": "P", "rootDir": root}),
        json!({"id": "p", "name": "P", "rootDir": root, "configPaths": ["/etc/shadow"]}),
        json!({"id": "p", "name": "P", "rootDir": root, "functionsDir": "/var/spool/crontabs"}),
    ] {
        let (status, answer) = send(
            &app,
            &writer,
            Method::POST,
            "/api/v1/projects",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 403, "{body} -> {answer}");
        assert!(error_of(&answer).contains("admin"), "{answer}");
    }

    let data = app.data_dir.path();
    let admin = app.admin_key.clone();
    for (body, rule) in [
        (
            json!({"id": "p", "name": "P", "rootDir": "/etc", "databaseUrl": url}),
            "system folder",
        ),
        (
            json!({"id": "p", "name": "P", "rootDir": "/", "databaseUrl": url}),
            "system folder",
        ),
        (
            json!({"id": "p", "name": "P", "rootDir": root, "databaseUrl": url,
                   "configPaths": ["/etc/shadow"]}),
            "system folder",
        ),
        (
            json!({"id": "p", "name": "P", "rootDir": root, "databaseUrl": url,
                   "storageDir": "/var/spool/cron"}),
            "system folder",
        ),
        (
            json!({"id": "p", "name": "P", "rootDir": data.to_str().unwrap(), "databaseUrl": url}),
            "Supascale's own data",
        ),
        (
            json!({"id": "p", "name": "P", "rootDir": root, "databaseUrl": url,
                   "configPaths": [data.join("master.key").to_str().unwrap()]}),
            "Supascale's own data",
        ),
        (
            json!({"id": "p", "name": "P", "rootDir": root, "databaseUrl": url,
                   "functionsDir": "/srv/elsewhere/functions"}),
            "inside rootDir",
        ),
    ] {
        let (status, answer) = send(
            &app,
            &admin,
            Method::POST,
            "/api/v1/projects",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert!(error_of(&answer).contains(rule), "{body} -> {answer}");
    }
    // A path that exists and one that does not are refused alike.
    let mut errors = Vec::new();
    for path in ["/etc/passwd", "/etc/no-such-file-here"] {
        let body = json!({"id": "p", "name": "P", "rootDir": root, "databaseUrl": url,
                          "configPaths": [path]});
        let (status, answer) =
            send(&app, &admin, Method::POST, "/api/v1/projects", Some(body)).await;
        assert_eq!(status, 400);
        errors.push(error_of(&answer).replace(path, "PATH"));
    }
    assert_eq!(errors[0], errors[1]);
    assert!(project_ids(&app).await.is_empty(), "nothing was registered");
}

/// Findings 1 and 4 with `SUPASCALE_PROJECT_ROOTS`: a `projects:write` key
/// registers projects under the roots only, never over another project's
/// folder, never through a symlink that leads out; a key limited to its
/// project changes neither its database URL nor config paths outside it.
async fn with_project_roots_a_limited_key_keeps_to_its_own_project(backend: Backend) {
    let roots = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(
        backend,
        Launch::default().env("SUPASCALE_PROJECT_ROOTS", roots.path().to_str().unwrap()),
    )
    .await;
    // Two projects an operator set up under the roots, each with its .env.
    for name in ["proj-a", "proj-c"] {
        let dir = roots.path().join(name);
        std::fs::create_dir_all(dir.join("volumes/functions")).unwrap();
        std::fs::write(
            dir.join(".env"),
            format!(
                "POSTGRES_PASSWORD=secret-{name}\nPOSTGRES_PORT=1\nPOSTGRES_DB={}\n\
                 JWT_SECRET=jwt-{name}\n",
                name.replace('-', "_")
            ),
        )
        .unwrap();
    }
    let a_root = roots.path().join("proj-a");
    let writer = key(&app, &["projects:write", "projects:read"], None).await;
    let (status, body) = send(
        &app,
        &writer,
        Method::POST,
        "/api/v1/projects",
        Some(json!({"id": "proj-a", "name": "A", "rootDir": a_root.to_str().unwrap()})),
    )
    .await;
    assert_eq!(
        status, 201,
        "a projects:write key registers under the roots: {body}"
    );
    assert_eq!(
        body["project"]["database"]["port"], 1,
        "the URL came from its .env"
    );

    let limited = key(
        &app,
        &[
            "projects:write",
            "projects:read",
            "backups:read",
            "backups:write",
        ],
        Some(&["proj-c"]),
    )
    .await;
    std::os::unix::fs::symlink(outside.path(), roots.path().join("escape")).unwrap();
    for (body, code, rule) in [
        (
            json!({"rootDir": a_root.to_str().unwrap()}),
            400,
            "another project",
        ),
        (
            json!({"rootDir": a_root.join("volumes").to_str().unwrap()}),
            400,
            "another project",
        ),
        (
            json!({"rootDir": roots.path().to_str().unwrap()}),
            400,
            "another project",
        ),
        (
            json!({"rootDir": outside.path().to_str().unwrap()}),
            400,
            "SUPASCALE_PROJECT_ROOTS",
        ),
        (
            json!({"rootDir": roots.path().join("escape/x").to_str().unwrap()}),
            400,
            "SUPASCALE_PROJECT_ROOTS",
        ),
        (
            json!({"rootDir": roots.path().join("proj-c").to_str().unwrap(),
                   "storageDir": a_root.join("volumes/storage").to_str().unwrap()}),
            400,
            "inside rootDir",
        ),
        (
            json!({"rootDir": roots.path().join("proj-c").to_str().unwrap(),
                   "databaseUrl": "postgres://postgres@127.0.0.1:5432/postgres"}),
            403,
            "databaseUrl",
        ),
    ] {
        let mut body = body;
        body["id"] = json!("proj-c");
        body["name"] = json!("C");
        let (status, answer) = send(
            &app,
            &limited,
            Method::POST,
            "/api/v1/projects",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, code, "{body} -> {answer}");
        assert!(error_of(&answer).contains(rule), "{body} -> {answer}");
    }
    assert_eq!(project_ids(&app).await, vec!["proj-a"]);

    let c_root = roots.path().join("proj-c");
    let (status, body) = send(
        &app,
        &limited,
        Method::POST,
        "/api/v1/projects",
        Some(json!({"id": "proj-c", "name": "C", "rootDir": c_root.to_str().unwrap()})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for (patch, code) in [
        (
            json!({"databaseUrl": "postgres://postgres@127.0.0.1:5432/postgres"}),
            403,
        ),
        (
            json!({"configPaths": [outside.path().join("db-config").to_str().unwrap()]}),
            403,
        ),
        (
            json!({"configPaths": [a_root.join(".env").to_str().unwrap()]}),
            403,
        ),
        (
            json!({"functionsDir": outside.path().to_str().unwrap()}),
            400,
        ),
        (json!({"rootDir": a_root.to_str().unwrap()}), 400),
    ] {
        let (status, answer) = send(
            &app,
            &limited,
            Method::PATCH,
            "/api/v1/projects/proj-c",
            Some(patch.clone()),
        )
        .await;
        assert_eq!(status, code, "{patch} -> {answer}");
    }
    let (_, c) = send(&app, &limited, Method::GET, "/api/v1/projects/proj-c", None).await;
    assert_eq!(c["rootDir"], c_root.to_str().unwrap(), "{c}");
    assert_eq!(c["configPaths"], json!([]));
    assert_eq!(c["database"]["port"], 1);
}

/// A tar.gz holding one function, `evil/index.ts`.
fn functions_archive(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("evil")).unwrap();
    std::fs::write(
        dir.join("evil/index.ts"),
        "Deno.serve(() => new Response('x'));\n",
    )
    .unwrap();
    let archive = dir.join("functions.tar.gz");
    let out = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(dir)
        .arg("evil")
        .output()
        .unwrap();
    assert!(out.status.success());
    archive
}

/// Finding 2: a project's functions folder replaced by a symlink after it
/// was registered (say, to `/var/spool`): the import refuses to follow it,
/// and nothing is written where it leads.
async fn a_functions_import_never_writes_outside_the_project(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let target = tempfile::tempdir().unwrap();
    let functions = project.root.path().join("volumes/functions");
    std::fs::remove_dir_all(&functions).unwrap();
    std::os::unix::fs::symlink(target.path(), &functions).unwrap();
    let work = tempfile::tempdir().unwrap();
    let archive = functions_archive(work.path());
    let part = reqwest::multipart::Part::bytes(std::fs::read(&archive).unwrap())
        .file_name("functions.tar.gz");
    let (status, body) = status_and_body(
        app.post("/api/v1/projects/p/import/functions")
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_ne!(status, 200, "{body}");
    assert!(error_of(&body).contains("no longer resolves"), "{body}");
    assert_eq!(
        std::fs::read_dir(target.path()).unwrap().count(),
        0,
        "nothing was written through the symlink"
    );
    // A backup of the files is refused the same way: it would read there.
    let (status, body) = app
        .post_json(
            "/api/v1/backups",
            &json!({"projectId": "p", "type": "functions"}),
        )
        .await;
    assert_eq!(status, 500, "{body}");
    assert!(error_of(&body).contains("no longer resolves"), "{body}");
}

/// The tables that make a database look like a Supascale control plane.
const CONTROL_PLANE_LOOKALIKE: &str = "CREATE TABLE seaql_migrations (version text); \
     CREATE TABLE job_events (id int); CREATE TABLE api_keys (id int); \
     CREATE TABLE backup_totals (id int);";

/// Finding 3: the control plane as a project's database is refused at
/// registration however it is spelled; a database that holds our tables is
/// never backed up, restored or imported into, even with `forceRestore`.
/// A database that is not shaped like a Supabase project's is only
/// replaced with `forceRestore`.
#[tokio::test]
async fn the_control_plane_is_never_a_projects_database() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let control_plane = app.database.as_ref().unwrap().name.clone();
    let admin = app.admin_key.clone();
    let root = tempfile::tempdir().unwrap();
    let root = root.path().to_str().unwrap();
    for url in [
        format!("postgres://postgres@127.0.0.1:5432/{control_plane}"),
        format!("postgres://postgres@localhost:5432/{control_plane}"),
        format!("postgresql://postgres:pw@[::1]:5432/{control_plane}"),
        format!(
            "postgres://postgres@127.0.0.1:5432/postgres?host=/var/run/postgresql&dbname={control_plane}"
        ),
    ] {
        let body = json!({"id": "cp", "name": "CP", "rootDir": root, "databaseUrl": url});
        let (status, answer) =
            send(&app, &admin, Method::POST, "/api/v1/projects", Some(body)).await;
        assert_eq!(status, 400, "{url} -> {answer}");
        assert!(
            error_of(&answer).contains("control-plane") || error_of(&answer).contains("parameter"),
            "{url} -> {answer}"
        );
    }
    assert!(project_ids(&app).await.is_empty());

    // A project database that comes to hold a control plane's tables.
    let project = make_project().await;
    register(&app, &project, "p").await;
    let (status, body) = app
        .post_json(
            "/api/v1/backups",
            &json!({"projectId": "p", "type": "database"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let backup = body["backup"]["id"].as_str().unwrap().to_string();
    psql(&project.database.url, CONTROL_PLANE_LOOKALIKE);
    for force in [false, true] {
        let (status, answer) = send(
            &app,
            &admin,
            Method::POST,
            &format!("/api/v1/backups/{backup}/restore"),
            Some(json!({"forceRestore": force})),
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert!(error_of(&answer).contains("control plane"), "{answer}");
    }
    let (status, answer) = app
        .post_json(
            "/api/v1/backups",
            &json!({"projectId": "p", "type": "database"}),
        )
        .await;
    assert_eq!(status, 500, "{answer}");
    assert!(error_of(&answer).contains("control plane"), "{answer}");
    let tables = psql(
        &project.database.url,
        "SELECT count(*) FROM pg_tables WHERE tablename IN \
         ('seaql_migrations', 'job_events', 'api_keys', 'backup_totals', 'posts')",
    );
    assert_eq!(tables.trim(), "5", "nothing was dropped");

    // Another application's database, registered by mistake.
    let stranger = TempDatabase::create("supascale_stranger").await;
    psql(
        &stranger.url,
        "CREATE TABLE invoices (id int); INSERT INTO invoices VALUES (1);",
    );
    let stranger_root = tempfile::tempdir().unwrap();
    let body = json!({"id": "stranger", "name": "S", "databaseUrl": stranger.url,
                      "rootDir": stranger_root.path().to_str().unwrap()});
    let (status, answer) = send(&app, &admin, Method::POST, "/api/v1/projects", Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    let restore_path = format!("/api/v1/backups/{backup}/restore");
    let restore = |force: bool| {
        send(
            &app,
            &admin,
            Method::POST,
            &restore_path,
            Some(json!({"targetProjectId": "stranger", "forceRestore": force})),
        )
    };
    let (status, answer) = restore(false).await;
    assert_eq!(status, 400, "{answer}");
    assert!(error_of(&answer).contains("forceRestore"), "{answer}");
    assert_eq!(
        psql(&stranger.url, "SELECT count(*) FROM invoices").trim(),
        "1"
    );
    let (status, answer) = restore(true).await;
    assert_eq!(status, 200, "forceRestore lets an operator do it: {answer}");
}

/// Finding 7: a password given as `?password=` reaches `pg_dump` through
/// its environment, never its command line (which `ps` shows everyone).
#[tokio::test]
async fn a_query_string_password_never_reaches_a_command_line() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let project = make_project().await;
    let password = format!("pw-{}", supascale_tests::random_suffix(16));
    let url = format!("{}?password={password}", project.database.url);
    let body = json!({"id": "p", "name": "P", "databaseUrl": url,
                      "rootDir": project.root.path().to_str().unwrap()});
    let (status, answer) = app.post_json("/api/v1/projects", &body).await;
    assert_eq!(status, 201, "{answer}");
    // pg_dump waits on the lock while its command line is read.
    let lock = TableLock::hold(&project.database.url).await;
    let accepted =
        supascale_tests::start_backup(&app, json!({"projectId": "p", "type": "database"})).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let command_line = loop {
        let found = std::fs::read_dir("/proc").unwrap().find_map(|entry| {
            let cmdline = std::fs::read(entry.ok()?.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("pg_dump") && cmdline.contains(&project.database.name))
                .then_some(cmdline)
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pg_dump never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    lock.release().await;
    assert!(!command_line.contains(&password), "{command_line}");
    let job = app
        .wait_for_job(
            accepted["job"]["jobUrl"].as_str().unwrap(),
            std::time::Duration::from_secs(60),
        )
        .await;
    assert_eq!(job["status"], "completed", "{job}");
}

/// A project whose folder is gone since it was registered (moved away,
/// a volume not mounted): a backup of its files fails saying which folder,
/// instead of completing with nothing in it.
#[tokio::test]
async fn a_backup_of_a_folder_gone_since_registration_fails_naming_it() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let project = make_project().await;
    supascale_tests::register(&app, &project, "p").await;
    let root = project.root.path().to_path_buf();
    let moved = root.with_extension("moved");
    std::fs::rename(&root, &moved).unwrap();
    let (status, answer) = app
        .post_json(
            "/api/v1/backups",
            &json!({"projectId": "p", "type": "config"}),
        )
        .await;
    std::fs::rename(&moved, &root).unwrap();
    assert_eq!(status, 500, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.starts_with("Backup failed: "), "{error}");
    assert!(error.contains(root.to_str().unwrap()), "{error}");
    let (_, backups) = app.get_json("/api/v1/backups?status=completed").await;
    assert_eq!(backups["pagination"]["total"], 0, "{backups}");
}

supascale_tests::both_backends!(
    keys_below_admin_cannot_point_a_project_at_the_servers_files,
    with_project_roots_a_limited_key_keeps_to_its_own_project,
    a_functions_import_never_writes_outside_the_project,
);
