//! `GET /api/v1/destinations`: every configured destination with where it
//! keeps artifacts (never a credential or an endpoint) and a probe run now
//! against the real servers; the workers' own probes feed
//! `supascale_destination_up`; a destination that goes down says so in
//! both, in the log, and fails a backup at once with the store's answer,
//! and comes back when its server does.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use supascale_tests::emulators::{self, AZURITE_ACCOUNT, AZURITE_KEY, Emulator};
use supascale_tests::{Backend, Launch, TestApp, make_project, register};

const S3_SECRET: &str = "s3-secret-never-shown";
const GCS_TOKEN: &str = "gcs-token-never-shown";

fn destination<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {body}"))
}

fn launch_for(s3: &str, azure: &str, gcs: &str) -> Launch {
    Launch::default()
        .env("SUPASCALE_DESTINATIONS__S3__BUCKET", "backups")
        .env("SUPASCALE_DESTINATIONS__S3__PREFIX", "team/prod")
        .env("SUPASCALE_DESTINATIONS__S3__ENDPOINT", s3)
        .env("SUPASCALE_DESTINATIONS__S3__ACCESS_KEY_ID", "s3-access-key")
        .env("SUPASCALE_DESTINATIONS__S3__SECRET_ACCESS_KEY", S3_SECRET)
        .env("SUPASCALE_DESTINATIONS__AZURE__CONTAINER", "vault")
        .env("SUPASCALE_DESTINATIONS__AZURE__ENDPOINT", azure)
        .env(
            "SUPASCALE_DESTINATIONS__AZURE__ACCOUNT_NAME",
            AZURITE_ACCOUNT,
        )
        .env("SUPASCALE_DESTINATIONS__AZURE__ACCOUNT_KEY", AZURITE_KEY)
        .env("SUPASCALE_DESTINATIONS__GCS__BUCKET", "gcs-backups")
        .env("SUPASCALE_DESTINATIONS__GCS__ENDPOINT", gcs)
        .env("SUPASCALE_DESTINATIONS__GCS__TOKEN", GCS_TOKEN)
}

/// The API with `s3` (moto), `azure` (azurite) and `gcs` (fake-gcs-server)
/// configured, its workers probing every `probe_seconds`, and those servers.
async fn spawn(probe_seconds: &str) -> (TestApp, Emulator, Emulator, Emulator) {
    let s3 = emulators::s3("backups").await;
    let azure = emulators::azure("vault").await;
    let gcs = emulators::gcs("gcs-backups").await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        launch_for(&s3.endpoint, &azure.endpoint, &gcs.endpoint)
            .env("SUPASCALE_DESTINATION_PROBE_SECONDS", probe_seconds),
    )
    .await;
    (app, s3, azure, gcs)
}

/// `supascale_destination_up{destination="<name>"}` once it is `want`
/// (scraped for up to 20 s).
async fn wait_for_gauge(app: &TestApp, name: &str, want: u8) {
    let sample = format!("supascale_destination_up{{destination=\"{name}\"}} {want}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|l| l == sample) {
            return;
        }
        assert!(Instant::now() < deadline, "never saw {sample}:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn destinations_are_listed_with_their_health_and_never_a_credential() {
    let (app, s3, azure, gcs) = spawn("300").await;

    let (status, body) = app.get_json("/api/v1/destinations").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    let names: Vec<&str> = body["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["azure", "gcs", "local", "s3"]);
    let s3_entry = destination(&body, "s3");
    assert_eq!(s3_entry["kind"], "s3");
    assert_eq!(s3_entry["bucket"], "backups");
    assert_eq!(s3_entry["prefix"], "team/prod");
    assert_eq!(destination(&body, "azure")["container"], "vault");
    assert_eq!(destination(&body, "gcs")["bucket"], "gcs-backups");
    assert!(
        destination(&body, "local")["path"]
            .as_str()
            .unwrap()
            .starts_with(app.data_dir.path().to_str().unwrap())
    );
    for entry in body["destinations"].as_array().unwrap() {
        let probe = &entry["probe"];
        assert_eq!(probe["up"], true, "{entry}");
        assert!(probe["latencyMs"].as_u64().unwrap() < 10_000, "{entry}");
        assert!(probe["checkedAt"].as_str().unwrap().ends_with('Z'));
        assert!(probe.get("error").is_none(), "{entry}");
    }
    let text = body.to_string();
    for secret in [S3_SECRET, "s3-access-key", AZURITE_KEY, GCS_TOKEN] {
        assert!(!text.contains(secret), "{secret} is in {text}");
    }
    for endpoint in [&s3.endpoint, &azure.endpoint, &gcs.endpoint] {
        assert!(!text.contains(endpoint.as_str()), "{endpoint} is in {text}");
    }
    // The probes left nothing behind.
    for (name, config) in [
        (
            "s3",
            supascale_shared::destinations::DestinationConfig {
                bucket: Some("backups".into()),
                endpoint: Some(s3.endpoint.clone()),
                access_key_id: Some("s3-access-key".into()),
                secret_access_key: Some(supascale_shared::Secret::new(S3_SECRET)),
                ..Default::default()
            },
        ),
        (
            "gcs",
            supascale_shared::destinations::DestinationConfig {
                bucket: Some("gcs-backups".into()),
                endpoint: Some(gcs.endpoint.clone()),
                token: Some(supascale_shared::Secret::new(GCS_TOKEN)),
                ..Default::default()
            },
        ),
    ] {
        let direct =
            supascale_shared::destinations::Destination::new(name, &config, app.data_dir.path())
                .unwrap();
        let listed = direct
            .operator()
            .list_with("")
            .recursive(true)
            .await
            .unwrap();
        let left: Vec<String> = listed
            .iter()
            .map(|e| e.path().to_string())
            .filter(|p| !p.ends_with('/'))
            .collect();
        assert!(left.is_empty(), "{name} holds {left:?}");
    }

    // Asked again within 10 s: the same probe (times are whole seconds, so
    // a new one would show a later time), not a new write to every bucket.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, again) = app.get_json("/api/v1/destinations").await;
    for name in ["s3", "gcs", "azure", "local"] {
        assert_eq!(
            destination(&again, name)["probe"]["checkedAt"],
            destination(&body, name)["probe"]["checkedAt"],
            "{again}"
        );
    }

    // Without probes: the same list, no probe.
    let (status, body) = app.get_json("/api/v1/destinations?probe=false").await;
    assert_eq!(status, 200);
    assert!(
        body["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d.get("probe").is_none()),
        "{body}"
    );
    let (status, body) = app.get_json("/api/v1/destinations?probe=perhaps").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["success"], false);

    // backups:read is needed.
    let (status, created) = app
        .api_keys()
        .create(json!({"name": "projects only", "permissions": ["projects:read"]}))
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["apiKey"]["key"].as_str().unwrap();
    let (status, body) = app.as_key(key).get_json("/api/v1/destinations").await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn a_destination_that_goes_down_says_so_and_fails_backups_at_once() {
    let (app, s3, _azure, _gcs) = spawn("1").await;
    let port: u16 = s3.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let project = make_project().await;
    register(&app, &project, "my-project").await;
    // The workers probed at start.
    wait_for_gauge(&app, "s3", 1).await;
    wait_for_gauge(&app, "gcs", 1).await;
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "my-project", "type": "full", "destination": "s3"}))
        .await;
    assert_eq!(status, 200, "{body}");

    drop(s3);
    // The workers see it (before anyone asks the API), and log why.
    wait_for_gauge(&app, "s3", 0).await;
    let logs = app.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("destination probe failed") && l.contains("s3")),
        "{logs}"
    );
    assert!(!logs.contains(S3_SECRET));
    let started = Instant::now();
    let (status, body) = app.get_json("/api/v1/destinations").await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(12));
    let probe = &destination(&body, "s3")["probe"];
    assert_eq!(probe["up"], false, "{body}");
    let error = probe["error"].as_str().unwrap();
    assert!(error.starts_with("writing a test object failed"), "{error}");
    assert!(!error.contains(S3_SECRET), "{error}");
    // The others are unaffected.
    assert_eq!(destination(&body, "gcs")["probe"]["up"], true, "{body}");

    let started = Instant::now();
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "my-project", "type": "full", "destination": "s3"}))
        .await;
    let took = started.elapsed();
    assert_ne!(status, 200, "{body}");
    assert!(took < Duration::from_secs(15), "failed after {took:?}");
    let text = body.to_string();
    assert!(
        text.contains("Destination s3 is not usable: writing a test object failed"),
        "{text}"
    );
    assert!(!text.contains(S3_SECRET), "{text}");

    // Back when the server is.
    let _s3 = emulators::s3_at(port, "backups").await;
    wait_for_gauge(&app, "s3", 1).await;
    assert!(app.logs().contains("destination is up again"));
    let (_, body) = app.get_json("/api/v1/destinations").await;
    assert_eq!(destination(&body, "s3")["probe"]["up"], true, "{body}");
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "my-project", "type": "full", "destination": "s3"}))
        .await;
    assert_eq!(status, 200, "{body}");
}
