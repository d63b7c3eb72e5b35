//! Projects through HTTP, against both control planes.

use serde_json::{Value, json};
use supascale_tests::{Backend, BackupRow, SendJson, TempDatabase, TestApp, both_backends};

both_backends!(
    a_project_is_registered_without_showing_its_password,
    the_database_url_defaults_from_the_project_env,
    invalid_projects_answer_400_and_change_nothing,
    status_reports_whether_the_database_answers,
    updates_change_only_what_is_given,
    deleting_a_project_keeps_its_backups,
);

const PASSWORD: &str = "pr0ject-pa55word";

async fn create(app: &TestApp, body: Value) -> (u16, Value) {
    app.projects().register(body).await
}

async fn project_count(app: &TestApp) -> u64 {
    let (_, body) = app.projects().list().await;
    body["pagination"]["total"].as_u64().unwrap()
}

async fn a_project_is_registered_without_showing_its_password(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = create(
        &app,
        json!({"id": "my-project", "name": "My Project", "rootDir": "/srv/supabase/my-project",
               "databaseUrl": format!("postgres://supabase_admin:{PASSWORD}@127.0.0.3:6543/app"),
               "configPaths": ["/srv/db-config"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["success"], true);
    let project = &body["project"];
    assert_eq!(project["id"], "my-project");
    assert_eq!(project["name"], "My Project");
    assert_eq!(
        project["storageDir"],
        "/srv/supabase/my-project/volumes/storage"
    );
    assert_eq!(
        project["functionsDir"],
        "/srv/supabase/my-project/volumes/functions"
    );
    assert_eq!(project["configPaths"], json!(["/srv/db-config"]));
    assert_eq!(
        project["database"],
        json!({"host": "127.0.0.3", "port": 6543, "database": "app", "user": "supabase_admin"})
    );
    assert!(project.get("databaseUrl").is_none());
    for path in ["/api/v1/projects", "/api/v1/projects/my-project"] {
        let text = app.get(path).send().await.unwrap().text().await.unwrap();
        assert!(!text.contains(PASSWORD), "{path} shows the password");
        assert!(text.contains("127.0.0.3"));
    }
    // At rest the URL is sealed; the logs never saw it.
    let cp = app.control_plane().await;
    let stored: String = match &cp {
        supascale_tests::ControlPlane::Sqlite(pool) => {
            sqlx::query_scalar("SELECT database_url_enc FROM projects")
                .fetch_one(pool)
                .await
                .unwrap()
        }
        supascale_tests::ControlPlane::Postgres(pool) => {
            sqlx::query_scalar("SELECT database_url_enc FROM projects")
                .fetch_one(pool)
                .await
                .unwrap()
        }
    };
    assert!(stored.starts_with("v1:") && !stored.contains(PASSWORD));
    assert!(
        !app.logs().contains(PASSWORD),
        "a log line shows the password"
    );
}

async fn the_database_url_defaults_from_the_project_env(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join(".env"),
        format!("POSTGRES_HOST=db\nPOSTGRES_PORT=5433\nPOSTGRES_DB=postgres\nPOSTGRES_PASSWORD={PASSWORD}\nJWT_SECRET=x\n"),
    )
    .unwrap();
    let (status, body) = create(
        &app,
        json!({"id": "from-env", "name": "From env", "rootDir": root.path().to_str().unwrap()}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["project"]["database"],
        json!({"host": "127.0.0.1", "port": 5433, "database": "postgres", "user": "supabase_admin"})
    );
    assert!(!body.to_string().contains(PASSWORD));

    // No URL and no usable .env: a 400 that says what is missing.
    let empty = tempfile::tempdir().unwrap();
    let (status, body) = create(
        &app,
        json!({"id": "no-env", "name": "x", "rootDir": empty.path().to_str().unwrap()}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("databaseUrl"),
        "{body}"
    );
    std::fs::write(empty.path().join(".env"), "JWT_SECRET=x\n").unwrap();
    let (status, body) = create(
        &app,
        json!({"id": "no-env", "name": "x", "rootDir": empty.path().to_str().unwrap()}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("POSTGRES_PASSWORD"),
        "{body}"
    );
}

async fn invalid_projects_answer_400_and_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = "postgres://u:p@127.0.0.1:5432/db";
    let (status, _) = create(
        &app,
        json!({"id": "taken", "name": "x", "rootDir": "/srv/x", "databaseUrl": url}),
    )
    .await;
    assert_eq!(status, 201);
    for (body, word, code) in [
        (
            json!({"id": "Bad_Id", "name": "x", "rootDir": "/srv/x", "databaseUrl": url}),
            "id",
            400,
        ),
        (
            json!({"id": "-x", "name": "x", "rootDir": "/srv/x", "databaseUrl": url}),
            "id",
            400,
        ),
        (
            json!({"id": "ok", "name": "  ", "rootDir": "/srv/x", "databaseUrl": url}),
            "name",
            400,
        ),
        (
            json!({"id": "ok", "name": "x", "rootDir": "relative/dir", "databaseUrl": url}),
            "rootDir",
            400,
        ),
        (
            json!({"id": "ok", "name": "x", "rootDir": "/srv/../etc", "databaseUrl": url}),
            "rootDir",
            400,
        ),
        (
            json!({"id": "ok", "name": "x", "rootDir": "/srv/x", "storageDir": "st", "databaseUrl": url}),
            "storageDir",
            400,
        ),
        (
            json!({"id": "ok", "name": "x", "rootDir": "/srv/x", "configPaths": ["a"], "databaseUrl": url}),
            "configPaths",
            400,
        ),
        (
            json!({"id": "ok", "name": "x", "rootDir": "/srv/x", "databaseUrl": "mysql://u:secret@h/db"}),
            "databaseUrl",
            400,
        ),
        (
            json!({"id": "ok", "name": "x", "rootDir": "/srv/x", "databaseUrl": "postgres://h/db"}),
            "databaseUrl",
            400,
        ),
        (
            json!({"id": "ok", "name": "x", "rootDir": "/srv/x", "databaseUrl": 5}),
            "databaseUrl",
            400,
        ),
        (
            json!({"id": "ok", "name": "x", "rootDir": "/srv/x", "databaseUrl": url, "rootdir": "/y"}),
            "rootdir",
            400,
        ),
        (
            json!({"name": "x", "rootDir": "/srv/x", "databaseUrl": url}),
            "id",
            400,
        ),
        (
            json!({"id": "taken", "name": "x", "rootDir": "/srv/x", "databaseUrl": url}),
            "taken",
            409,
        ),
    ] {
        let (status, response) = create(&app, body.clone()).await;
        assert_eq!(status, code, "{body} -> {response}");
        assert_eq!(response["success"], false);
        assert!(
            response["error"].as_str().unwrap().contains(word),
            "{body} -> {response}"
        );
        assert!(!response.to_string().contains("secret"), "{response}");
    }
    // Malformed JSON and a wrong content type.
    let (status, body) = app
        .post("/api/v1/projects")
        .header("content-type", "application/json")
        .body("{\"id\": ")
        .send_json()
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Invalid request body"),
        "{body}"
    );
    let response = app
        .post("/api/v1/projects")
        .body("id=x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(project_count(&app).await, 1);
}

async fn status_reports_whether_the_database_answers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let db = TempDatabase::create("supascale_project").await;
    let (status, _) = create(
        &app,
        json!({"id": "up", "name": "Up", "rootDir": "/srv/up", "databaseUrl": db.url}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = create(
        &app,
        json!({"id": "down", "name": "Down", "rootDir": "/srv/down",
               "databaseUrl": format!("postgres://supabase_admin:{PASSWORD}@127.0.0.1:1/postgres")}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = app.projects().get("up").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "running", "{body}");
    assert!(body.get("statusDetail").is_none());
    let (_, body) = app.projects().get("down").await;
    assert_eq!(body["status"], "stopped");
    assert!(!body["statusDetail"].as_str().unwrap().is_empty());
    assert!(!body.to_string().contains(PASSWORD));
    let (status, body) = app.projects().get("missing").await;
    assert_eq!(
        (status, body),
        (404, json!({"success": false, "error": "Project not found"}))
    );
}

async fn updates_change_only_what_is_given(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, _) = create(
        &app,
        json!({"id": "p", "name": "Old", "rootDir": "/srv/old", "functionsDir": "/srv/old/app/functions",
               "databaseUrl": "postgres://u:p@127.0.0.1:5432/db"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = app
        .projects()
        .patch("p", json!({"name": "New", "rootDir": "/srv/old/app"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let project = &body["project"];
    assert_eq!(project["name"], "New");
    assert_eq!(project["rootDir"], "/srv/old/app");
    assert_eq!(
        project["storageDir"], "/srv/old/app/volumes/storage",
        "a default path follows the root"
    );
    assert_eq!(
        project["functionsDir"], "/srv/old/app/functions",
        "an explicit path stays"
    );
    assert_eq!(project["database"]["database"], "db");

    let (status, body) = app
        .projects()
        .patch("p", json!({"name": "Newer", "databaseUrl": "not a url"}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (_, body) = app.projects().get("p").await;
    assert_eq!(body["name"], "New", "a rejected update changed the name");

    let (status, body) = app
        .projects()
        .patch(
            "p",
            json!({"databaseUrl": "postgres://admin:x@127.0.0.5:5433/other"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["project"]["database"],
        json!({"host": "127.0.0.5", "port": 5433, "database": "other", "user": "admin"})
    );
    let (status, _) = app.projects().patch("nope", json!({"name": "x"})).await;
    assert_eq!(status, 404);
}

async fn deleting_a_project_keeps_its_backups(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, _) = create(
        &app,
        json!({"id": "gone", "name": "Gone Project", "rootDir": "/srv/gone",
               "databaseUrl": "postgres://u:p@127.0.0.1:5432/db"}),
    )
    .await;
    assert_eq!(status, 201);
    let cp = app.control_plane().await;
    cp.insert_backup(&BackupRow {
        id: "backup-gone-1".into(),
        project_id: "gone".into(),
        project_name: "Gone Project".into(),
        backup_type: "full".into(),
        status: "completed".into(),
        destination: "local".into(),
        size: 42,
        created_at: chrono::Utc::now(),
    })
    .await;
    let (status, body) = app.projects().delete("gone").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"success": true, "message": "Project deleted"}));
    let (status, _) = app.projects().get("gone").await;
    assert_eq!(status, 404);
    let (status, body) = app.backups().get("backup-gone-1").await;
    assert_eq!(status, 200);
    assert_eq!(body["projectName"], "Gone Project");
    let (status, _) = app.projects().delete("gone").await;
    assert_eq!(status, 404);
}
