//! API keys and permissions through HTTP, against both control planes.

use chrono::{Duration, Utc};
use serde_json::{Value, json};
use supascale_tests::{Backend, BackupRow, SendJson, TestApp, both_backends};

both_backends!(
    requests_without_a_valid_key_answer_401,
    bearer_tokens_work_like_x_api_key,
    permissions_are_enforced_with_403,
    keys_are_shown_once_and_stored_as_hashes,
    revoked_and_expired_keys_stop_working,
    keys_limited_to_projects_see_nothing_else,
    key_management_is_for_unrestricted_admins,
    bad_key_requests_answer_400,
);

async fn create_key(app: &TestApp, body: Value) -> (String, String) {
    let (status, body) = app.api_keys().create(body).await;
    assert_eq!(status, 201, "{body}");
    (
        body["apiKey"]["id"].as_str().unwrap().to_string(),
        body["apiKey"]["key"].as_str().unwrap().to_string(),
    )
}

async fn requests_without_a_valid_key_answer_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let nobody = app.anonymous();
    for request in [
        nobody.get("/api/v1/backups"),
        app.as_key("ssk_wrong").get("/api/v1/backups"),
        nobody
            .get("/api/v1/backups")
            .header("Authorization", "Bearer ssk_wrong"),
        nobody
            .get("/api/v1/projects")
            .header("Authorization", "Basic Zm9vOmJhcg=="),
        nobody.post("/api/v1/projects").json(&json!({})),
        nobody.get("/api/v1/api-keys"),
    ] {
        let (status, body) = request.send_json().await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["success"], false);
        assert!(
            body["error"].as_str().unwrap().contains("API key"),
            "{body}"
        );
    }
}

async fn bearer_tokens_work_like_x_api_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .anonymous()
        .get("/api/v1/backups")
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

async fn permissions_are_enforced_with_403(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, reader) = create_key(
        &app,
        json!({"name": "reader", "permissions": ["backups:read"]}),
    )
    .await;
    let (_, projects) = create_key(
        &app,
        json!({"name": "projects", "permissions": ["projects:read", "projects:write"]}),
    )
    .await;
    use reqwest::Method;
    let ok = |s: u16| s == 200 || s == 201;
    let cases: Vec<(&str, Method, &str, Option<Value>, bool)> = vec![
        (&reader, Method::GET, "/api/v1/backups", None, true),
        (&reader, Method::GET, "/api/v1/projects", None, false),
        (&reader, Method::GET, "/api/v1/api-keys", None, false),
        (&projects, Method::GET, "/api/v1/backups", None, false),
        (&projects, Method::GET, "/api/v1/projects", None, true),
        (
            &projects,
            Method::POST,
            "/api/v1/projects",
            Some(json!({"id": "p1", "name": "P", "rootDir": "/srv/p1",
                        "databaseUrl": "postgres://u:p@127.0.0.1:1/db"})),
            // Folders and database URLs are an admin's to name unless the
            // operator set SUPASCALE_PROJECT_ROOTS (tests/tests/security.rs).
            false,
        ),
        (
            &projects,
            Method::POST,
            "/api/v1/api-keys",
            Some(json!({"name": "x", "permissions": ["admin"]})),
            false,
        ),
    ];
    for (key, method, path, body, allowed) in cases {
        let mut request = app.as_key(key).request(method.clone(), path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, body) = request.send_json().await;
        if allowed {
            assert!(ok(status), "{method} {path}: {status} {body}");
        } else {
            assert_eq!(status, 403, "{method} {path}: {body}");
            assert_eq!(body["success"], false);
            assert!(
                body["error"].as_str().unwrap().contains("permission"),
                "{body}"
            );
        }
    }
}

async fn keys_are_shown_once_and_stored_as_hashes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (id, key) = create_key(
        &app,
        json!({"name": "ci", "permissions": ["backups:read", "backups:write"]}),
    )
    .await;
    assert!(key.starts_with("ssk_") && key.len() >= 36);
    let listing = app
        .get("/api/v1/api-keys")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listing.contains(&key), "the listing shows a key");
    assert!(
        !listing.contains(&app.admin_key),
        "the listing shows the admin key"
    );
    let listing: Value = serde_json::from_str(&listing).unwrap();
    let entry = listing["apiKeys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(entry["name"], "ci");
    assert_eq!(
        entry["permissions"],
        json!(["backups:read", "backups:write"])
    );
    assert!(key.starts_with(entry["prefix"].as_str().unwrap()));
    // The key works.
    let (status, body) = app.as_key(&key).backups().list("").await;
    assert_eq!(status, 200, "{body}");
    // Nothing in the control plane holds the key itself.
    let cp = app.control_plane().await;
    let dump = match &cp {
        supascale_tests::ControlPlane::Sqlite(pool) => {
            sqlx::query_scalar::<_, String>("SELECT key_hash || key_prefix FROM api_keys")
                .fetch_all(pool)
                .await
                .unwrap()
        }
        supascale_tests::ControlPlane::Postgres(pool) => {
            sqlx::query_scalar::<_, String>("SELECT key_hash || key_prefix FROM api_keys")
                .fetch_all(pool)
                .await
                .unwrap()
        }
    };
    assert!(
        dump.iter()
            .all(|row| !row.contains(&key) && !row.contains(&app.admin_key))
    );
    assert!(!app.logs().contains(&key), "a log line shows the key");
}

async fn revoked_and_expired_keys_stop_working(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (id, key) = create_key(
        &app,
        json!({"name": "temp", "permissions": ["backups:read"]}),
    )
    .await;
    let get = || app.as_key(&key).backups().list("");
    let (status, body) = get().await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.api_keys().revoke(&id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"success": true, "message": "API key revoked"}));
    let (status, body) = get().await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    let (status, _) = app.api_keys().revoke("key-nope").await;
    assert_eq!(status, 404);

    let soon = (Utc::now() + Duration::seconds(2)).to_rfc3339();
    let (_, short) = create_key(
        &app,
        json!({"name": "short", "permissions": ["backups:read"], "expiresAt": soon}),
    )
    .await;
    let get = || app.as_key(&short).backups().list("");
    let (status, body) = get().await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, body) = get().await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("expired"),
        "{body}"
    );
}

async fn keys_limited_to_projects_see_nothing_else(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for id in ["mine", "theirs"] {
        let (status, body) = app
            .projects()
            .register(
                json!({"id": id, "name": id, "rootDir": format!("/srv/{id}"),
                             "databaseUrl": format!("postgres://u:p@127.0.0.1:1/{id}")}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let cp = app.control_plane().await;
    for (i, project) in ["mine", "theirs", "mine"].iter().enumerate() {
        cp.insert_backup(&BackupRow {
            id: format!("backup-{project}-{i}"),
            project_id: project.to_string(),
            project_name: project.to_string(),
            backup_type: "full".into(),
            status: "completed".into(),
            destination: "local".into(),
            size: 10,
            created_at: Utc::now(),
        })
        .await;
    }
    let (_, key) = create_key(
        &app,
        json!({"name": "mine only", "permissions": ["backups:read", "projects:read", "projects:write"],
               "projectIds": ["mine"]}),
    )
    .await;
    let as_key = app.as_key(&key);
    let (status, body) = as_key.backups().list("stats=true").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| id.contains("mine")));
    assert_eq!(body["pagination"]["total"], 2);
    assert_eq!(body["stats"]["totalBackups"], 2);
    // Asking for the other project explicitly gives nothing either.
    let (_, body) = as_key.backups().list("projectId=theirs").await;
    assert_eq!(body["backups"], json!([]));
    assert_eq!(body["pagination"]["total"], 0);
    // Their backup is not there for this key.
    let (status, body) = as_key.backups().get("backup-theirs-1").await;
    assert_eq!(
        (status, body),
        (404, json!({"success": false, "error": "Backup not found"}))
    );
    let (status, _) = as_key.backups().get("backup-mine-0").await;
    assert_eq!(status, 200);
    // Projects: the same.
    let (_, body) = as_key.projects().list().await;
    assert_eq!(body["projects"].as_array().unwrap().len(), 1);
    assert_eq!(body["projects"][0]["id"], "mine");
    for (status, _) in [
        as_key.projects().get("theirs").await,
        as_key.projects().delete("theirs").await,
    ] {
        assert_eq!(status, 404);
    }
    let (status, _) = app.projects().get("theirs").await;
    assert_eq!(status, 200, "the limited key must not have deleted it");
}

async fn key_management_is_for_unrestricted_admins(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, limited_admin) = create_key(
        &app,
        json!({"name": "la", "permissions": ["admin"], "projectIds": ["p"]}),
    )
    .await;
    let (status, body) = app
        .as_key(&limited_admin)
        .api_keys()
        .create(json!({"name": "escalate", "permissions": ["admin"]}))
        .await;
    assert_eq!(status, 403, "{body}");
    let (_, admin) = create_key(&app, json!({"name": "a2", "permissions": ["admin"]})).await;
    // admin implies every permission.
    for path in ["/api/v1/backups", "/api/v1/projects", "/api/v1/api-keys"] {
        let (status, body) = app.as_key(&admin).get_json(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
}

async fn bad_key_requests_answer_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let past = (Utc::now() - Duration::hours(1)).to_rfc3339();
    for (body, word) in [
        (json!({"name": "x", "permissions": ["root"]}), "permissions"),
        (json!({"name": "x", "permissions": []}), "permissions"),
        (json!({"name": "", "permissions": ["admin"]}), "name"),
        (json!({"permissions": ["admin"]}), "name"),
        (json!({"name": "x", "permissions": "admin"}), "permissions"),
        (
            json!({"name": "x", "permissions": ["admin"], "expiresAt": past}),
            "expiresAt",
        ),
        (
            json!({"name": "x", "permissions": ["admin"], "expiresAt": "tomorrow"}),
            "expiresAt",
        ),
        (
            json!({"name": "x", "permissions": ["admin"], "projectIds": ["Not A Slug"]}),
            "projectIds",
        ),
        (
            json!({"name": "x", "permissions": ["admin"], "scope": "all"}),
            "scope",
        ),
    ] {
        let (status, response) = app.api_keys().create(body.clone()).await;
        assert_eq!(status, 400, "{body} -> {response}");
        assert!(
            response["error"].as_str().unwrap().contains(word),
            "{body} -> {response}"
        );
    }
    let (_, listing) = app.api_keys().list().await;
    assert_eq!(
        listing["apiKeys"].as_array().unwrap().len(),
        1,
        "a rejected request created a key"
    );
}
