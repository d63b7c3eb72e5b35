//! The HTTP server's edges: what a hostile or broken client gets. Every
//! 4xx carries the error shape, malformed headers are refused, and slow
//! clients are cut off within the configured timeouts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use supascale_tests::{Backend, Launch, TestApp, make_project, register, status_and_body};

/// `{"success": false, "error": <non-empty>}` with a JSON content type.
async fn assert_error_shape(response: reqwest::Response, status: u16) -> String {
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let (got, body) = status_and_body(response).await;
    assert_eq!(got, status, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert_eq!(body["success"], false, "{body}");
    let error = body["error"].as_str().unwrap_or_default().to_string();
    assert!(!error.is_empty(), "{body}");
    error
}

/// A request target past 8 KiB, a path whose `%XX` bytes are not UTF-8, an
/// unknown route and a wrong method all answer the error shape with a
/// message that says what is wrong.
#[tokio::test]
async fn every_4xx_carries_the_error_shape() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let long = format!("/api/v1/backups/{}", "a".repeat(10 * 1024));
    let error = assert_error_shape(app.get(&long).send().await.unwrap(), 414).await;
    assert!(error.contains("the limit is 8192"), "{error}");

    for path in ["/api/v1/backups/%FF", "/api/v1/jobs/%FF%FE/events", "/%FF"] {
        let error = assert_error_shape(app.get(path).send().await.unwrap(), 400).await;
        assert!(error.contains("Invalid path"), "{path}: {error}");
    }
    let error = assert_error_shape(app.get("/api/v1/nothing").send().await.unwrap(), 404).await;
    assert_eq!(error, "Not found");
    let put = app
        .client
        .put(app.url("/api/v1/backups"))
        .header("X-API-Key", &app.admin_key);
    let error = assert_error_shape(put.send().await.unwrap(), 405).await;
    assert_eq!(error, "Method not allowed");
}

/// An `Idempotency-Key` that is not 1 to 255 visible ASCII characters is a
/// 400 naming the header, and starts nothing (it used to be dropped when
/// not ASCII, so a retry started a second backup).
#[tokio::test]
async fn a_malformed_idempotency_key_is_refused() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let long = "k".repeat(256);
    let values: [&[u8]; 4] = [b"caf\xc3\xa9-1", b"\xff\xfe", long.as_bytes(), b""];
    for value in values {
        let response = app
            .post("/api/v1/backups?async=true")
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(value).unwrap(),
            )
            .json(&json!({"projectId": "p", "type": "config"}))
            .send()
            .await
            .unwrap();
        let error = assert_error_shape(response, 400).await;
        assert!(error.contains("Idempotency-Key"), "{error}");
    }
    let (_, jobs) = app.get_json("/api/v1/jobs").await;
    assert_eq!(jobs["pagination"]["total"], 0, "{jobs}");
    let (_, backups) = app.get_json("/api/v1/backups").await;
    assert_eq!(backups["pagination"]["total"], 0, "{backups}");

    // A good key still works.
    let response = app
        .post("/api/v1/backups?async=true")
        .header("Idempotency-Key", "retry-safe-1")
        .json(&json!({"projectId": "p", "type": "config"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// Slow-client limits short enough for a test (seconds).
const HEADER_TIMEOUT: u64 = 1;
const BODY_TIMEOUT: u64 = 2;
const IDLE_TIMEOUT: u64 = 3;
/// A close later than this counts as never.
const GENEROUS: Duration = Duration::from_secs(20);

async fn app_with_short_timeouts() -> TestApp {
    TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default()
            .env(
                "SUPASCALE_HTTP_HEADER_TIMEOUT_SECONDS",
                HEADER_TIMEOUT.to_string(),
            )
            .env(
                "SUPASCALE_HTTP_BODY_TIMEOUT_SECONDS",
                BODY_TIMEOUT.to_string(),
            )
            .env(
                "SUPASCALE_HTTP_IDLE_TIMEOUT_SECONDS",
                IDLE_TIMEOUT.to_string(),
            ),
    )
    .await
}

/// Opens a raw connection to the app and sends `bytes`, then nothing more.
fn send_and_stall(app: &TestApp, bytes: &[u8]) -> (TcpStream, Instant) {
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(bytes).unwrap();
    (stream, Instant::now())
}

/// Reads until the server closes the connection; returns what it sent and
/// when it closed, or panics if it is still open after [`GENEROUS`].
async fn wait_for_close(stream: TcpStream, since: Instant, what: &str) -> (String, Duration) {
    let what = what.to_string();
    tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        stream.set_read_timeout(Some(GENEROUS)).unwrap();
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "{what}: the connection was still open after {:?} ({e}); got {:?}",
                    since.elapsed(),
                    String::from_utf8_lossy(&received)
                ),
            }
        }
        (
            String::from_utf8_lossy(&received).into_owned(),
            since.elapsed(),
        )
    })
    .await
    .unwrap()
}

/// A client that stops half-way through its headers, or half-way through
/// a body (a JSON request, a multipart upload), is cut off once the
/// configured time passes without a byte; the body case is told why in the
/// error shape.
#[tokio::test]
async fn stalled_clients_are_cut_off() {
    let app = app_with_short_timeouts().await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let key = app.admin_key.clone();

    let (stream, since) =
        send_and_stall(&app, b"GET /api/v1/backups HTTP/1.1\r\nHost: x\r\nX-API-");
    let (_, after) = wait_for_close(stream, since, "half the headers").await;
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );

    let json = format!(
        "POST /api/v1/backups HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"projectId\""
    );
    let boundary = "supascaleboundary";
    let upload = format!(
        "POST /api/v1/projects/p/import/database HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 1000000\r\n\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.sql\"\r\n\
         Content-Type: application/octet-stream\r\n\r\nCREATE TABLE half_way ("
    );
    for (what, request) in [("half a JSON body", json), ("half an upload", upload)] {
        let (stream, since) = send_and_stall(&app, request.as_bytes());
        let (answer, after) = wait_for_close(stream, since, what).await;
        assert!(
            after >= Duration::from_millis(BODY_TIMEOUT * 1000 - 100),
            "{what}: closed after {after:?}"
        );
        assert!(answer.starts_with("HTTP/1.1 408"), "{what}: {answer}");
        assert!(answer.contains("\"success\":false"), "{what}: {answer}");
        assert!(
            answer.contains("SUPASCALE_HTTP_BODY_TIMEOUT_SECONDS"),
            "{what}: {answer}"
        );
    }
    // Nothing was started by either.
    let (_, jobs) = app.get_json("/api/v1/jobs").await;
    assert_eq!(jobs["pagination"]["total"], 0, "{jobs}");
}

/// The body limit is between bytes, not on the whole body: a body that
/// trickles in for longer than the limit, a byte at a time, is served.
#[tokio::test]
async fn a_slow_but_steady_body_is_served() {
    let app = app_with_short_timeouts().await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let body = json!({"projectId": "p", "type": "config"}).to_string();
    let head = format!(
        "POST /api/v1/backups?async=true HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        app.admin_key,
        body.len()
    );
    let (mut stream, since) = send_and_stall(&app, head.as_bytes());
    let trickle = Duration::from_secs(BODY_TIMEOUT * 2) / body.len() as u32;
    for byte in body.as_bytes() {
        tokio::time::sleep(trickle).await;
        stream.write_all(&[*byte]).unwrap();
    }
    let (answer, after) = wait_for_close(stream, since, "a steady body").await;
    assert!(after > Duration::from_secs(BODY_TIMEOUT), "{after:?}");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
}

/// A connection on which nothing moves (here an HTTP/2 client that sends
/// its preface and then nothing) is closed after the idle limit.
#[tokio::test]
async fn an_idle_connection_is_closed() {
    let app = app_with_short_timeouts().await;
    let (stream, since) = send_and_stall(&app, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let (_, after) = wait_for_close(stream, since, "an idle HTTP/2 connection").await;
    assert!(
        after >= Duration::from_millis(IDLE_TIMEOUT * 1000 - 100),
        "closed after {after:?}"
    );
}
