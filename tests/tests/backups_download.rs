//! Create, download (whole, ranges, If-Range, 416), and delete a backup on
//! every destination that runs here: a directory, moto (S3), azurite and
//! fake-gcs-server; and a project restored from a backup on GCS.

use serde_json::json;
use sha2::{Digest, Sha256};
use supascale_shared::destinations::{Destination, DestinationConfig};
use supascale_tests::emulators::{self, Emulator};
use supascale_tests::refproject::{self, tree_snapshot};
use supascale_tests::{Backend, Launch, TestApp, make_project, register};

/// The server's configuration for `name`, the same as a test-side
/// `Destination` to look at the objects directly, and the emulator.
async fn setup(name: &str) -> (Launch, DestinationConfig, Option<Emulator>) {
    let store = emulators::store(name).await;
    (
        store.launch(Launch::default()),
        store.config,
        store.emulator,
    )
}

async fn create_download_delete(name: &str, scheme: &str) {
    let (launch, config, _emulator) = setup(name).await;
    let app = TestApp::spawn_with(Backend::Sqlite, launch).await;
    let project = make_project().await;
    register(&app, &project, "my-project").await;
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "my-project", "type": "full", "destination": name}))
        .await;
    assert_eq!(status, 200, "{body}");
    let backup = body["backup"].clone();
    let id = backup["id"].as_str().unwrap().to_string();
    let path = backup["path"].as_str().unwrap();
    assert!(path.starts_with(scheme), "{path}");
    let size = backup["size"].as_u64().unwrap();
    let sha = backup["sha256"].as_str().unwrap().to_string();

    // The object, as the destination itself has it.
    let direct = Destination::new(name, &config, app.data_dir.path()).unwrap();
    let key = path
        .split("/my-project/")
        .nth(1)
        .map(|rest| format!("my-project/{rest}"))
        .unwrap();
    assert_eq!(direct.stat(&key).await.unwrap().unwrap().size, size);

    let url = format!("/api/v1/backups/{id}/download");
    let response = app.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/gzip");
    assert_eq!(headers["content-length"], size.to_string().as_str());
    assert_eq!(headers["etag"], format!("\"{sha}\"").as_str());
    assert_eq!(headers["accept-ranges"], "bytes");
    assert!(headers.get("content-encoding").is_none());
    let today = chrono::Utc::now().format("%Y-%m-%d");
    assert_eq!(
        headers["content-disposition"],
        format!("attachment; filename=\"my-project-{today}-full.tar.gz\"").as_str()
    );
    let whole = response.bytes().await.unwrap();
    assert_eq!(whole.len() as u64, size);
    assert_eq!(hex::encode(Sha256::digest(&whole)), sha);

    // A resumed download.
    let response = app
        .get(&url)
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 100-199/{size}").as_str()
    );
    assert_eq!(response.bytes().await.unwrap(), whole.slice(100..200));
    let response = app
        .get(&url)
        .header("Range", "bytes=-10")
        .header("If-Range", format!("\"{sha}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.bytes().await.unwrap(),
        whole.slice(whole.len() - 10..)
    );
    // A changed artifact: the range no longer applies, the whole comes back.
    let response = app
        .get(&url)
        .header("Range", "bytes=0-9")
        .header("If-Range", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().len() as u64, size);
    let response = app
        .get(&url)
        .header("Range", format!("bytes={size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 416);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes */{size}").as_str()
    );

    // Delete: the object, then the record.
    let (status, body) = app.backups().delete(&id).await;
    assert_eq!(
        (status, body),
        (200, json!({"success": true, "message": "Backup deleted"}))
    );
    assert_eq!(
        direct.stat(&key).await.unwrap(),
        None,
        "the artifact is still there"
    );
    for path in [format!("/api/v1/backups/{id}"), url.clone()] {
        let (status, body) = app.get_json(&path).await;
        assert_eq!(
            (status, body),
            (404, json!({"success": false, "error": "Backup not found"}))
        );
    }
    let (status, _) = app.backups().delete(&id).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn local_create_download_delete() {
    create_download_delete("local", "file://").await;
}

#[tokio::test]
async fn s3_create_download_delete() {
    create_download_delete("s3", "s3://backups/supabase/my-project/").await;
}

#[tokio::test]
async fn azure_create_download_delete() {
    create_download_delete("azure", "azure://devstoreaccount1/backups/my-project/").await;
}

#[tokio::test]
async fn gcs_create_download_delete() {
    create_download_delete("gcs", "gs://backups/supabase/my-project/").await;
}

/// A changed project comes back as it was from a backup kept on GCS (the
/// artifact read back through the JSON API, in ranges).
#[tokio::test]
async fn a_project_restores_from_a_backup_on_gcs() {
    let (launch, config, _emulator) = setup("gcs").await;
    let app = TestApp::spawn_with(Backend::Sqlite, launch).await;
    let project = refproject::make(0.02, 5, false).await;
    refproject::register(&app, &project, "on-gcs").await;
    let before = (
        refproject::table_fingerprints(&project.database.url),
        tree_snapshot(&project.root.path().join("volumes/storage")),
    );
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "on-gcs", "type": "full", "destination": "gcs"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["backup"]["id"].as_str().unwrap().to_string();
    let path = body["backup"]["path"].as_str().unwrap().to_string();
    assert!(path.starts_with("gs://backups/supabase/on-gcs/"), "{path}");
    // Written through the server's resumable uploads: it is there, whole.
    let direct = Destination::new("gcs", &config, app.data_dir.path()).unwrap();
    let key = format!("on-gcs/{}", path.rsplit_once("/on-gcs/").unwrap().1);
    assert_eq!(
        direct.stat(&key).await.unwrap().unwrap().size,
        body["backup"]["size"].as_u64().unwrap()
    );

    supascale_tests::psql(
        &project.database.url,
        "DELETE FROM public.comments WHERE id % 2 = 0; \
         UPDATE public.posts SET title = 'changed after the backup'",
    );
    let (first, _) = &project.objects[0];
    std::fs::write(project.root.path().join(first), b"overwritten").unwrap();
    assert_ne!(
        refproject::table_fingerprints(&project.database.url),
        before.0
    );

    let (status, body) = app
        .post_json(&format!("/api/v1/backups/{id}/restore"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(
        (
            refproject::table_fingerprints(&project.database.url),
            tree_snapshot(&project.root.path().join("volumes/storage")),
        ),
        before
    );
}

#[tokio::test]
async fn only_a_completed_backup_downloads_and_a_gone_artifact_still_deletes() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default().env("SUPASCALE_JOB_ATTEMPTS", "1"),
    )
    .await;
    let root = tempfile::tempdir().unwrap();
    let (status, body) = app
        .projects()
        .register(
            json!({"id": "down", "name": "Down", "rootDir": root.path().to_str().unwrap(),
                         "databaseUrl": "postgres://u:p@127.0.0.1:1/postgres"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = app
        .backups()
        .create(json!({"projectId": "down", "type": "database"}))
        .await;
    assert_eq!(status, 500);
    let (_, list) = app.backups().list("").await;
    let failed = list["backups"][0]["id"].as_str().unwrap().to_string();
    let (status, body) = app
        .get_json(&format!("/api/v1/backups/{failed}/download"))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("failed"), "{body}");

    // A completed backup whose artifact vanished from the destination.
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "down", "type": "config"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["backup"]["id"].as_str().unwrap();
    let file = body["backup"]["path"]
        .as_str()
        .unwrap()
        .strip_prefix("file://")
        .unwrap()
        .to_string();
    std::fs::remove_file(&file).unwrap();
    let (status, _) = app
        .get_json(&format!("/api/v1/backups/{id}/download"))
        .await;
    assert_eq!(status, 409);
    for id in [id, failed.as_str()] {
        let (status, body) = app.backups().delete(id).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, list) = app.backups().list("").await;
    assert_eq!(list["pagination"]["total"], 0);
}

/// A `gcs` destination with a service-account key (`credential_file`):
/// the key's JWT is exchanged for a token at the key's `token_uri` (a
/// double of Google's endpoint here) and the backup goes through. A key
/// the endpoint does not accept fails the backup at once, with the
/// endpoint's answer.
#[tokio::test]
async fn a_gcs_service_account_key_gets_its_token_from_its_token_uri() {
    use supascale_tests::google_oauth::{JWT_BEARER, ServiceAccount, TokenEndpoint};
    let store = emulators::store("gcs").await;
    let account = ServiceAccount::new("supascale-backups");
    let endpoint = TokenEndpoint::start(&account).await;
    let launch_with = |key: &std::path::Path| {
        store
            .env
            .iter()
            .filter(|(name, _)| !name.ends_with("__TOKEN"))
            .fold(Launch::default(), |launch, (name, value)| {
                launch.env(name, value.clone())
            })
            .env(
                "SUPASCALE_DESTINATIONS__GCS__CREDENTIAL_FILE",
                key.to_str().unwrap(),
            )
            .env("SUPASCALE_JOB_ATTEMPTS", "1")
    };
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        launch_with(&account.key_file(&endpoint.uri)),
    )
    .await;
    let project = make_project().await;
    register(&app, &project, "keyed").await;
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "keyed", "destination": "gcs"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let exchanges = endpoint.exchanges();
    assert!(!exchanges.is_empty(), "no token was asked for");
    for exchange in &exchanges {
        assert_eq!(exchange.grant_type, JWT_BEARER);
        assert!(exchange.signature_valid, "{exchange:?}");
        assert_eq!(exchange.header["alg"], "RS256");
        assert_eq!(exchange.claims["iss"], account.client_email.as_str());
        assert_eq!(
            exchange.claims["aud"],
            "https://oauth2.googleapis.com/token"
        );
        assert!(
            exchange.claims["scope"]
                .as_str()
                .unwrap()
                .contains("devstorage"),
            "{exchange:?}"
        );
    }
    // Cached: not one exchange per request.
    assert!(exchanges.len() <= 2, "{} exchanges", exchanges.len());
    drop(app);

    // Another account's key, sent to the same endpoint: refused there.
    let stranger = ServiceAccount::new("stranger");
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        launch_with(&stranger.key_file(&endpoint.uri)),
    )
    .await;
    register(&app, &project, "keyed").await;
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "keyed", "destination": "gcs"}))
        .await;
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("not usable") && error.contains("invalid_grant"),
        "{body}"
    );
    assert!(
        endpoint
            .exchanges()
            .iter()
            .any(|e| e.claims["iss"] == stranger.client_email.as_str() && !e.signature_valid)
    );
}
