//! Starting, configuring and operating the binaries: health, readiness,
//! the error shape outside endpoints, OpenAPI, master key, first start.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::json;
use supascale_tests::{
    Backend, Launch, RedisServer, SendJson, TempDatabase, TestApp, both_backends, start,
};

both_backends!(
    health_and_readiness_answer,
    errors_outside_endpoints_have_the_contract_shape,
    every_response_carries_a_request_id,
    the_openapi_document_is_served_and_committed,
);

async fn health_and_readiness_answer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = app.anonymous().get_json("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.anonymous().get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["database"], "ok");
}

async fn errors_outside_endpoints_have_the_contract_shape(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Launch::default().env("SUPASCALE_MAX_BODY_BYTES", "2000"),
    )
    .await;
    let (status, body) = app.get_json("/api/v1/nothing-here").await;
    assert_eq!(
        (status, body),
        (404, json!({"success": false, "error": "Not found"}))
    );
    let (status, body) = app.anonymous().get_json("/no/such/route").await;
    assert_eq!((status, body["success"].clone()), (404, json!(false)));
    let (status, body) = app
        .as_admin()
        .request(reqwest::Method::PUT, "/api/v1/backups")
        .send_json()
        .await;
    assert_eq!(
        (status, body),
        (
            405,
            json!({"success": false, "error": "Method not allowed"})
        )
    );
    let big = json!({"id": "x", "name": "y".repeat(5000), "rootDir": "/srv/x"});
    let (status, body) = app.projects().register(big.clone()).await;
    assert_eq!(
        (status, body),
        (
            413,
            json!({"success": false, "error": "Request body is too large"})
        )
    );
    // The same without Content-Length (chunked). The server answers 413 as
    // soon as it has read past the limit and closes the connection, so the
    // client sees either that answer or the connection closing under it.
    let stream = futures_stream(big.to_string().into_bytes());
    let outcome = app
        .post("/api/v1/projects")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    match outcome {
        Ok(response) => assert_eq!(response.status(), 413),
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }
    let (_, body) = app.projects().list().await;
    assert_eq!(body["pagination"]["total"], 0);
}

fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let chunks: Vec<_> = bytes.chunks(100).map(|c| Ok(c.to_vec())).collect();
    futures::stream::iter(chunks)
}

async fn every_response_carries_a_request_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app.get("/api/v1/backups").send().await.unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(generated.len() >= 16);
    let response = app
        .get("/api/v1/backups")
        .header("X-Request-Id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = app.logs();
    assert!(
        logs.contains("trace-abc-123"),
        "the request id is not in the log"
    );
    assert!(
        !logs.contains(&app.admin_key),
        "a log line shows the admin key"
    );
}

async fn the_openapi_document_is_served_and_committed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .client
        .get(app.url("/api/v1/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let served = response.text().await.unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml"))
            .expect("openapi.yaml at the top of the repository");
    assert!(
        served == committed,
        "openapi.yaml is stale: run scripts/gen-openapi and commit the result"
    );
    // One path item per path: poem-openapi writes one per API struct, and a
    // repeated key is invalid YAML to strict parsers (and client generators).
    let paths: Vec<&str> = served.lines().filter(|l| l.starts_with("  /")).collect();
    let unique: std::collections::HashSet<&&str> = paths.iter().collect();
    assert_eq!(
        unique.len(),
        paths.len(),
        "a path appears twice in openapi.yaml"
    );
    for needle in [
        "X-API-Key",
        "/backups/{id}",
        "'401'",
        "'403'",
        "'404'",
        "'500'",
        "listBackups",
    ] {
        assert!(served.contains(needle), "the document lacks {needle}");
    }
    let response = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("<html")
    );
}

#[tokio::test]
async fn readiness_fails_when_redis_goes_away() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn_with(
        Backend::Postgres,
        Launch::default().env("SUPASCALE_REDIS_URL", redis.url()),
    )
    .await;
    let (status, body) = app.anonymous().get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    redis.stop();
    let (status, body) = app.anonymous().get_json("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["success"], false);
    assert!(body["error"].as_str().unwrap().contains("Redis"), "{body}");
    // Liveness does not depend on Redis.
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_bad_setting_fails_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for (key, value) in [
        ("SUPASCALE_WORKERS", "many"),
        ("SUPASCALE_LISTEN", "everywhere"),
        ("SUPASCALE_DATABASE_URL", "mysql://root@localhost/x"),
        ("SUPASCALE_REDIS_URL", "http://localhost"),
        ("SUPASCALE_CONFIG", "/nonexistent/supascale.toml"),
        ("SUPASCALE_DESTINATIONS__FTP__BUCKET", "b"),
    ] {
        for binary in ["supascale-api", "supascale-worker"] {
            let mut process = start(
                binary,
                &Launch::default()
                    .env("SUPASCALE_DATA_DIR", data)
                    .env(key, value),
            );
            let (code, stderr) = process.wait_exit(Duration::from_secs(20));
            assert_eq!(code, Some(2), "{binary} {key}={value}: {stderr}");
            // A nested key is named down to the part that is wrong.
            let named = key.strip_suffix("__BUCKET").unwrap_or(key);
            assert!(stderr.contains(named), "{binary} {key}={value}: {stderr}");
        }
    }
    // A config file's bad value is named too.
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "max_body_bytes = \"lots\"\n").unwrap();
    let mut process = start(
        "supascale-api",
        &Launch::default()
            .env("SUPASCALE_DATA_DIR", data)
            .env("SUPASCALE_CONFIG", file.to_str().unwrap()),
    );
    let (code, stderr) = process.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("MAX_BODY_BYTES"), "{stderr}");

    // A destination that cannot work is refused at start, naming what is missing.
    let file = dir.path().join("dest.toml");
    std::fs::write(&file, "[destinations.minio]\nbucket = \"backups\"\n").unwrap();
    for binary in ["supascale-api", "supascale-worker"] {
        let mut process = start(
            binary,
            &Launch::default()
                .env("SUPASCALE_DATA_DIR", data)
                .env("SUPASCALE_CONFIG", file.to_str().unwrap()),
        );
        let (code, stderr) = process.wait_exit(Duration::from_secs(20));
        assert_ne!(code, Some(0), "{binary}");
        assert!(
            stderr.contains("minio") && stderr.contains("endpoint"),
            "{binary}: {stderr}"
        );
    }
}

#[tokio::test]
async fn the_first_start_prints_an_admin_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let launch = Launch::default()
        .env("SUPASCALE_DATA_DIR", dir.path().to_str().unwrap())
        .env("SUPASCALE_LISTEN", "127.0.0.1:0");
    let mut first = start("supascale-api", &launch);
    let line = first
        .wait_for_stdout("admin API key", Duration::from_secs(30))
        .unwrap();
    let key = line
        .split_whitespace()
        .find(|w| w.starts_with("ssk_"))
        .unwrap()
        .to_string();
    let address = first
        .wait_for_stdout("listening on", Duration::from_secs(5))
        .unwrap();
    let address = address
        .split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{address}/api/v1/backups"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The master key was made private.
    let mode = std::fs::metadata(dir.path().join("master.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The key reached stdout once and never the log.
    assert!(!first.stderr.lock().unwrap().join("\n").contains(&key));
    first.signal("TERM");
    let (code, _) = first.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "SIGTERM must end the API cleanly");

    let mut second = start("supascale-api", &launch);
    let address = second
        .wait_for_stdout("listening on", Duration::from_secs(30))
        .unwrap();
    let address = address
        .split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !second
            .stdout
            .lock()
            .unwrap()
            .join("\n")
            .contains("admin API key")
    );
    let response = client
        .get(format!("{address}/api/v1/backups"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the first key survives a restart");
    second.signal("TERM");
    second.wait_exit(Duration::from_secs(20));
}

#[tokio::test]
async fn scale_out_processes_must_share_the_master_key() {
    let db = TempDatabase::create("supascale_keys").await;
    let dir = tempfile::tempdir().unwrap();
    let key_a = dir.path().join("a.key");
    let key_b = dir.path().join("b.key");
    std::fs::write(&key_a, "11".repeat(32)).unwrap();
    std::fs::write(&key_b, "22".repeat(32)).unwrap();
    // The URL carries a password (trust auth ignores it): it must not be printed.
    let url = db.url.replace("postgres@", "postgres:c0ntrol-plane-pw@");
    let url_file = dir.path().join("db-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let base = Launch::default()
        .env("SUPASCALE_DATA_DIR", dir.path().to_str().unwrap())
        .env("SUPASCALE_LISTEN", "127.0.0.1:0")
        .env("SUPASCALE_DATABASE_URL_FILE", url_file.to_str().unwrap())
        .env(
            "SUPASCALE_BOOTSTRAP_API_KEY",
            "ssk_bootstrap_key_for_this_test_0001",
        );

    // Scale-out never invents a key.
    let mut process = start("supascale-worker", &base);
    let (code, stderr) = process.wait_exit(Duration::from_secs(30));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("SUPASCALE_MASTER_KEY_FILE"), "{stderr}");
    assert!(!dir.path().join("master.key").exists());

    let mut api = start(
        "supascale-api",
        &base
            .clone()
            .env("SUPASCALE_MASTER_KEY_FILE", key_a.to_str().unwrap()),
    );
    api.wait_for_stdout("listening on", Duration::from_secs(30))
        .unwrap();
    let mut worker = start(
        "supascale-worker",
        &base
            .clone()
            .env("SUPASCALE_MASTER_KEY_FILE", key_a.to_str().unwrap()),
    );
    worker
        .wait_for_stdout("waiting for jobs", Duration::from_secs(30))
        .unwrap();

    for binary in ["supascale-api", "supascale-worker"] {
        let mut wrong = start(
            binary,
            &base
                .clone()
                .env("SUPASCALE_MASTER_KEY_FILE", key_b.to_str().unwrap()),
        );
        let (code, stderr) = wrong.wait_exit(Duration::from_secs(30));
        assert_ne!(code, Some(0), "{binary} started with another master key");
        assert!(stderr.contains("master key"), "{binary}: {stderr}");
    }

    worker.signal("TERM");
    let (code, worker_log) = worker.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "SIGTERM must end the worker cleanly");
    api.signal("TERM");
    let (_, api_log) = api.wait_exit(Duration::from_secs(20));
    for log in [worker_log, api_log] {
        assert!(
            !log.contains("c0ntrol-plane-pw"),
            "a log line shows the database password"
        );
    }
}
