//! Immutable backups: an S3 destination with `immutable_days` locks every
//! artifact it stores (S3 Object Lock, on moto), the API refuses to delete
//! a locked backup naming the date it unlocks, and the object stays.
//! Where no lock can be kept, the setting is refused: at start on other
//! kinds, and by the probe on a bucket without Object Lock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use supascale_shared::destinations::{Destination, DestinationConfig};
use supascale_tests::emulators::{self, Store, key_of};
use supascale_tests::{Backend, Launch, TestApp, make_project, register};

/// moto refuses anonymous requests on a bucket with Object Lock; it
/// checks that a request names a key, not its signature.
const SIGNED: &str = "AWS4-HMAC-SHA256 Credential=test/20261203/us-east-1/s3/aws4_request, \
                      SignedHeaders=host, Signature=0";

/// The object's lock as S3 reports it (`HeadObject`): mode, retain-until
/// date, and the version it holds.
async fn retention_of(store: &Store, key: &str) -> (String, DateTime<Utc>, String) {
    let endpoint = &store.emulator.as_ref().unwrap().endpoint;
    let response = reqwest::Client::new()
        .head(format!("{endpoint}/backups/supabase/{key}"))
        .header("authorization", SIGNED)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name}: {:?}", response.headers()))
            .to_str()
            .unwrap()
            .to_string()
    };
    let until = DateTime::parse_from_rfc3339(&header("x-amz-object-lock-retain-until-date"))
        .unwrap()
        .with_timezone(&Utc);
    (
        header("x-amz-object-lock-mode"),
        until,
        header("x-amz-version-id"),
    )
}

fn locked_store(emulator: emulators::Emulator, days: &str, mode: &str) -> Store {
    let mut store = emulators::s3_store(emulator, "supabase");
    store.env.push((
        "SUPASCALE_DESTINATIONS__S3__IMMUTABLE_DAYS".into(),
        days.into(),
    ));
    store.env.push((
        "SUPASCALE_DESTINATIONS__S3__IMMUTABLE_MODE".into(),
        mode.into(),
    ));
    store
}

#[tokio::test]
async fn a_locked_backup_cannot_be_deleted_until_its_date() {
    let store = locked_store(emulators::s3_locked("backups").await, "3", "compliance");
    let app = TestApp::spawn_with(Backend::Sqlite, store.launch(Launch::default())).await;
    let on_s3 = Destination::new("s3", &store.config, app.data_dir.path()).unwrap();
    let project = make_project().await;
    register(&app, &project, "kept").await;

    let asked = Utc::now();
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "kept", "destination": "s3"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let backup = &body["backup"];
    let id = backup["id"].as_str().unwrap().to_string();
    let key = key_of(backup["path"].as_str().unwrap());
    let locked_until = DateTime::parse_from_rfc3339(backup["lockedUntil"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc);
    let three_days = chrono::Duration::days(3);
    assert!(
        locked_until >= asked + three_days - chrono::Duration::seconds(2)
            && locked_until <= Utc::now() + three_days,
        "{body}"
    );
    // The store itself holds the lock, as we recorded it.
    let (mode, until, version) = retention_of(&store, &key).await;
    assert_eq!(mode, "COMPLIANCE");
    assert_eq!(until, locked_until);
    // And refuses to delete that version, whoever asks (the same request
    // headers that just read it).
    let endpoint = &store.emulator.as_ref().unwrap().endpoint;
    let refused = reqwest::Client::new()
        .delete(format!(
            "{endpoint}/backups/supabase/{key}?versionId={version}"
        ))
        .header("authorization", SIGNED)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403, "{}", refused.text().await.unwrap());

    let (status, body) = app.backups().delete(&id).await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    let date = locked_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(
        error.contains(&date) && error.contains("immutable"),
        "{body}"
    );
    // Nothing was deleted: not the record, not the object.
    let (status, _) = app.backups().get(&id).await;
    assert_eq!(status, 200);
    assert_eq!(
        on_s3.stat(&key).await.unwrap().map(|o| o.size),
        backup["size"].as_u64()
    );

    // A copy onto the immutable destination is locked as well, and keeps
    // its backup from being deleted.
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "kept", "copyTo": ["s3"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    let local_backup = body["backup"]["id"].as_str().unwrap().to_string();
    assert!(body["backup"].get("lockedUntil").is_none(), "{body}");
    let copy = &body["backup"]["copies"][0];
    assert_eq!(copy["status"], "completed", "{body}");
    assert!(copy["lockedUntil"].is_string(), "{body}");
    let copy_key = key_of(copy["path"].as_str().unwrap());
    assert_eq!(retention_of(&store, &copy_key).await.0, "COMPLIANCE");
    let (status, body) = app.backups().delete(&local_backup).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("destination s3"),
        "{body}"
    );
    assert!(on_s3.stat(&copy_key).await.unwrap().is_some());
}

/// `immutable_days` on a bucket without Object Lock: the probe says so and
/// a backup fails at once, before anything is written.
#[tokio::test]
async fn a_bucket_without_object_lock_fails_an_immutable_backup_at_once() {
    let store = locked_store(emulators::s3("backups").await, "1", "governance");
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        store
            .launch(Launch::default())
            .env("SUPASCALE_JOB_ATTEMPTS", "1"),
    )
    .await;
    let project = make_project().await;
    register(&app, &project, "unlocked").await;
    let (status, body) = app.get_json("/api/v1/destinations").await;
    assert_eq!(status, 200, "{body}");
    let s3 = body["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "s3")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(s3["immutableDays"], 1, "{body}");
    assert_eq!(s3["immutableMode"], "governance", "{body}");
    assert_eq!(s3["probe"]["up"], false, "{body}");
    assert!(
        s3["probe"]["error"]
            .as_str()
            .unwrap()
            .contains("no Object Lock"),
        "{body}"
    );
    let started = std::time::Instant::now();
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "unlocked", "destination": "s3"}))
        .await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no Object Lock"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let on_s3 = Destination::new(
        "s3",
        &DestinationConfig {
            immutable_days: None,
            immutable_mode: None,
            ..store.config.clone()
        },
        app.data_dir.path(),
    )
    .unwrap();
    let listed = on_s3
        .operator()
        .list_with("/")
        .recursive(true)
        .await
        .unwrap();
    assert!(
        listed.iter().all(|e| !e.path().ends_with(".tar.gz")),
        "{listed:?}"
    );
}

/// Where no lock can be set and kept, `immutable_days` stops the service
/// at start, naming the destination and why.
#[test]
fn immutable_days_is_refused_where_nothing_can_lock() {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra) in [
        ("AZURE", vec![("CONTAINER", "c"), ("ACCOUNT_NAME", "a")]),
        ("GCS", vec![("BUCKET", "b")]),
        ("LOCAL", vec![]),
    ] {
        let mut launch = Launch::default()
            .env("SUPASCALE_DATA_DIR", dir.path().to_str().unwrap())
            .env(
                &format!("SUPASCALE_DESTINATIONS__{name}__IMMUTABLE_DAYS"),
                "7",
            );
        for (field, value) in extra {
            launch = launch.env(&format!("SUPASCALE_DESTINATIONS__{name}__{field}"), value);
        }
        let mut api = supascale_tests::start("supascale-api", &launch);
        let (code, stderr) = api.wait_exit(Duration::from_secs(20));
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains("immutable_days") && stderr.contains("S3 Object Lock"),
            "{name}: {stderr}"
        );
    }
}
