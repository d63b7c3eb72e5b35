//! Copies of a backup on a second destination (3-2-1): made by
//! `POST /backups/{id}/copy` and by `copyTo`, byte for byte the primary,
//! read by restores and downloads when the primary is gone, deleted with
//! the backup. Against real stores: a local folder, moto (S3) and
//! fake-gcs-server.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use supascale_shared::destinations::{Destination, DestinationConfig};
use supascale_tests::emulators::{self, Store, key_of};
use supascale_tests::refproject::{self, tree_snapshot};
use supascale_tests::{Backend, Launch, TestApp, make_project, register};

async fn bytes_of(destination: &Destination, key: &str) -> Vec<u8> {
    destination.operator().read(key).await.unwrap().to_vec()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The app (on `backend`'s control plane) with every store configured.
async fn app_on(backend: Backend, stores: &[&Store]) -> TestApp {
    let launch = stores
        .iter()
        .fold(Launch::default(), |launch, store| store.launch(launch));
    TestApp::spawn_with(backend, launch).await
}

async fn app_with(stores: &[&Store]) -> TestApp {
    app_on(Backend::Sqlite, stores).await
}

/// `GET /backups/{id}/download<query>`, which must answer 200: the
/// destination served, the `Warning` header, the bytes.
async fn download(app: &TestApp, id: &str, query: &str) -> (String, Option<String>, Vec<u8>) {
    let response = app
        .get(&format!("/api/v1/backups/{id}/download{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (served, warning) = (header("x-backup-destination").unwrap(), header("warning"));
    (served, warning, response.bytes().await.unwrap().to_vec())
}

fn copy_on<'a>(backup: &'a Value, destination: &str) -> &'a Value {
    backup["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["destination"] == destination)
        .unwrap_or_else(|| panic!("no copy on {destination}: {backup}"))
}

/// A local backup copied to S3 is the same bytes there; a restore whose
/// primary object was deleted behind our back reads the copy and says so,
/// and the download does too; deleting the backup deletes the copy.
#[tokio::test]
async fn a_restore_reads_the_s3_copy_when_the_local_artifact_is_gone() {
    let s3 = emulators::store("s3").await;
    let app = app_with(&[&s3]).await;
    let local =
        Destination::new("local", &DestinationConfig::default(), app.data_dir.path()).unwrap();
    let on_s3 = Destination::new("s3", &s3.config, app.data_dir.path()).unwrap();
    let project = refproject::make(0.02, 7, false).await;
    refproject::register(&app, &project, "copied").await;
    let before = (
        refproject::table_fingerprints(&project.database.url),
        tree_snapshot(&project.root.path().join("volumes/storage")),
    );
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "copied", "type": "full"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["backup"]["id"].as_str().unwrap().to_string();
    assert_eq!(body["backup"]["copies"], json!([]), "{body}");
    let key = key_of(body["backup"]["path"].as_str().unwrap());
    let primary = bytes_of(&local, &key).await;

    let (status, body) = app
        .post_json(
            &format!("/api/v1/backups/{id}/copy"),
            &json!({"destination": "s3"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let copy = copy_on(&body["backup"], "s3");
    assert_eq!(copy["status"], "completed", "{body}");
    assert_eq!(copy["size"], body["backup"]["size"], "{body}");
    assert_eq!(copy["sha256"], body["backup"]["sha256"], "{body}");
    assert_eq!(
        copy["path"].as_str().unwrap(),
        format!("s3://backups/supabase/{key}")
    );
    // Byte for byte, as the store itself gives it back.
    let copied = bytes_of(&on_s3, &key).await;
    assert_eq!(copied.len(), primary.len());
    assert_eq!(sha256(&copied), sha256(&primary));
    let (_, listed) = app.backups().list("").await;
    assert_eq!(copy_on(&listed["backups"][0], "s3")["status"], "completed");

    // What cannot be copied is refused, and nothing changes.
    for (body, status, needle) in [
        (
            json!({"destination": "s3"}),
            409,
            "already has a copy on s3",
        ),
        (json!({"destination": "local"}), 400, "on local already"),
        (json!({"destination": "gcs"}), 400, "not configured"),
        (json!({"destination": "ftp"}), 400, "must be one of"),
        (json!({}), 400, "destination"),
    ] {
        let (got, answer) = app
            .post_json(&format!("/api/v1/backups/{id}/copy"), &body)
            .await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{body}: {answer}"
        );
    }
    let (_, details) = app.backups().get(&id).await;
    assert_eq!(details["copies"].as_array().unwrap().len(), 1, "{details}");

    // Either replica downloads on request, and says which it is.
    let (served, warning, bytes) = download(&app, &id, "?destination=s3").await;
    assert_eq!((served.as_str(), warning), ("s3", None));
    assert_eq!(bytes, primary);

    // The project changes; then the local artifact disappears.
    supascale_tests::psql(
        &project.database.url,
        "DELETE FROM public.comments WHERE id % 3 = 0; \
         UPDATE public.posts SET title = 'changed after the backup'",
    );
    let (first, _) = &project.objects[0];
    std::fs::write(project.root.path().join(first), b"overwritten").unwrap();
    // A primary cut short is not served: the copy is, saying why.
    let on_disk = app.data_dir.path().join("backups").join(&key);
    std::fs::write(&on_disk, &primary[..primary.len() / 2]).unwrap();
    let (served, warning, bytes) = download(&app, &id, "").await;
    assert_eq!(served, "s3");
    let warning = warning.unwrap();
    assert!(
        warning.contains(&format!("not the {} recorded", primary.len())),
        "{warning}"
    );
    assert_eq!(bytes, primary);
    local.delete(&key).await.unwrap();

    let (served, warning, bytes) = download(&app, &id, "").await;
    assert_eq!(served, "s3");
    let warning = warning.unwrap();
    assert!(
        warning.contains("missing from destination local"),
        "{warning}"
    );
    assert_eq!(bytes, primary);
    // Asked for the primary alone, there is nothing to serve.
    let (status, body) = app
        .get_json(&format!("/api/v1/backups/{id}/download?destination=local"))
        .await;
    assert_eq!(status, 409, "{body}");

    let (status, body) = app
        .post_json(&format!("/api/v1/backups/{id}/restore"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let warnings = body["restore"]["warnings"].to_string();
    assert!(
        warnings.contains("missing from destination local")
            && warnings.contains("read the copy on s3"),
        "{body}"
    );
    assert_eq!(
        (
            refproject::table_fingerprints(&project.database.url),
            tree_snapshot(&project.root.path().join("volumes/storage")),
        ),
        before
    );
    // Only from the primary, the restore is refused before it starts.
    let (status, body) = app
        .post_json(
            &format!("/api/v1/backups/{id}/restore?destination=local"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("missing"),
        "{body}"
    );

    let (status, body) = app.backups().delete(&id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(on_s3.stat(&key).await.unwrap(), None, "the copy is left");
}

/// `copyTo` makes the copies in the backup's own job: an S3 backup copied
/// to GCS is the same bytes there. Bad `copyTo` values are refused before
/// anything is written; deleting the backup deletes both objects. On the
/// scale-out control plane (PostgreSQL).
#[tokio::test]
async fn a_backup_to_s3_is_copied_to_gcs_in_the_same_request() {
    let s3 = emulators::store("s3").await;
    let gcs = emulators::store("gcs").await;
    let app = app_on(Backend::Postgres, &[&s3, &gcs]).await;
    let on_s3 = Destination::new("s3", &s3.config, app.data_dir.path()).unwrap();
    let on_gcs = Destination::new("gcs", &gcs.config, app.data_dir.path()).unwrap();
    let project = make_project().await;
    register(&app, &project, "three-two-one").await;

    for (copy_to, needle) in [
        (json!(["s3"]), "the backup's own destination"),
        (json!(["gcs", "gcs"]), "named twice"),
        (json!(["azure"]), "not configured"),
        (json!(["tape"]), "must be one of"),
    ] {
        let (status, body) = app
            .backups()
            .create(json!({"projectId": "three-two-one", "destination": "s3", "copyTo": copy_to}))
            .await;
        assert_eq!(status, 400, "{copy_to}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{copy_to}: {body}"
        );
    }
    let (_, listed) = app.backups().list("").await;
    assert_eq!(listed["pagination"]["total"], 0, "{listed}");

    let (status, body) = app
        .backups()
        .create(json!({"projectId": "three-two-one", "destination": "s3", "copyTo": ["gcs"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    let backup = &body["backup"];
    let id = backup["id"].as_str().unwrap().to_string();
    let copy = copy_on(backup, "gcs");
    assert_eq!(copy["status"], "completed", "{body}");
    assert_eq!(copy["sha256"], backup["sha256"], "{body}");
    let key = key_of(backup["path"].as_str().unwrap());
    assert_eq!(
        copy["path"].as_str().unwrap(),
        format!("gs://backups/supabase/{key}")
    );
    let (primary, copied) = (bytes_of(&on_s3, &key).await, bytes_of(&on_gcs, &key).await);
    assert_eq!(primary.len() as u64, backup["size"].as_u64().unwrap());
    assert_eq!(sha256(&copied), sha256(&primary));
    assert_eq!(sha256(&primary), backup["sha256"].as_str().unwrap());

    let (status, body) = app.backups().delete(&id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(on_s3.stat(&key).await.unwrap(), None);
    assert_eq!(on_gcs.stat(&key).await.unwrap(), None);
}

/// A primary whose bytes were changed behind our back (same size) is not
/// copied: the copy fails naming the damage, and nothing is left on the
/// target.
#[tokio::test]
async fn a_damaged_primary_is_not_copied() {
    let s3 = emulators::store("s3").await;
    let app = app_with(&[&s3]).await;
    let local =
        Destination::new("local", &DestinationConfig::default(), app.data_dir.path()).unwrap();
    let on_s3 = Destination::new("s3", &s3.config, app.data_dir.path()).unwrap();
    let project = make_project().await;
    register(&app, &project, "damaged").await;
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "damaged", "type": "full"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["backup"]["id"].as_str().unwrap().to_string();
    let key = key_of(body["backup"]["path"].as_str().unwrap());
    let mut bytes = bytes_of(&local, &key).await;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let file = app.data_dir.path().join("backups").join(&key);
    std::fs::write(&file, &bytes).unwrap();

    let (status, body) = app
        .post_json(
            &format!("/api/v1/backups/{id}/copy"),
            &json!({"destination": "s3"}),
        )
        .await;
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("Copy failed: ") && error.contains("damaged"),
        "{body}"
    );
    assert_eq!(on_s3.stat(&key).await.unwrap(), None);
    let (_, details) = app.backups().get(&id).await;
    let copy = copy_on(&details, "s3");
    assert_eq!(copy["status"], "failed", "{details}");
    assert!(
        copy["error"].as_str().unwrap().contains("damaged"),
        "{details}"
    );
}

/// A `copyTo` copy that cannot be made (its destination is down) is a
/// failed entry and a warning of the job; the backup itself completes.
#[tokio::test]
async fn a_failed_copy_to_leaves_the_backup_complete() {
    let mut s3 = emulators::store("s3").await;
    let app = app_with(&[&s3]).await;
    let project = make_project().await;
    register(&app, &project, "half").await;
    s3.emulator = None;
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "half", "copyTo": ["s3"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backup"]["status"], "completed", "{body}");
    let copy = copy_on(&body["backup"], "s3");
    assert_eq!(copy["status"], "failed", "{body}");
    assert!(
        copy["error"].as_str().unwrap().contains("not usable"),
        "{body}"
    );
    let (_, jobs) = app.jobs().list("kind=backup").await;
    let job = &jobs["jobs"][0];
    assert_eq!(job["status"], "completed", "{jobs}");
    assert!(
        job["warnings"].to_string().contains("Copy to s3 failed"),
        "{job}"
    );
    // The primary is whole and served as ever.
    let id = body["backup"]["id"].as_str().unwrap();
    let (served, warning, _) = download(&app, id, "").await;
    assert_eq!((served.as_str(), warning), ("local", None));
}
