//! The HTTP server's edges: what a hostile or broken client gets. Every
//! 4xx carries the error shape (those hyper answers before our code runs
//! too), malformed headers are refused, and slow clients are cut off
//! within the configured timeouts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use supascale_tests::{
    Backend, Launch, SendJson, TestApp, make_project, register, status_and_body,
};

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
    let (_, jobs) = app.jobs().list("").await;
    assert_eq!(jobs["pagination"]["total"], 0, "{jobs}");
    let (_, backups) = app.backups().list("").await;
    assert_eq!(backups["pagination"]["total"], 0, "{backups}");

    // A good key still works.
    let (status, body) = app
        .post("/api/v1/backups?async=true")
        .header("Idempotency-Key", "retry-safe-1")
        .json(&json!({"projectId": "p", "type": "config"}))
        .send_json()
        .await;
    assert_eq!(status, 202, "{body}");
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
    let (_, jobs) = app.jobs().list("").await;
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

/// An answer read off a raw connection: status, headers (names in lower
/// case) and body, split by hand so that nothing is taken on trust.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads one response, its body by `Content-Length`, off `stream`.
    fn read(stream: &mut impl std::io::BufRead) -> RawResponse {
        let mut line = String::new();
        stream.read_line(&mut line).unwrap();
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            stream.read_line(&mut line).unwrap();
            let Some((name, value)) = line.trim_end().split_once(':') else {
                break;
            };
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let length: usize = response
            .header("content-length")
            .expect("a content-length")
            .parse()
            .unwrap();
        response.body = vec![0; length];
        stream.read_exact(&mut response.body).unwrap();
        response
    }

    /// The error shape with `Connection: close`, a JSON content type and
    /// a `Content-Length` that is the body's; returns the message.
    fn refusal(&self, status: u16, what: &str) -> String {
        assert_eq!(self.status, status, "{what}: {:?}", self.headers);
        assert_eq!(self.header("connection"), Some("close"), "{what}");
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("application/json"), "{what}");
        let body: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{what}: {e}: {:?}", String::from_utf8_lossy(&self.body)));
        assert_eq!(body["success"], false, "{what}: {body}");
        body["error"].as_str().unwrap_or_default().to_string()
    }
}

/// What hyper refuses before any of our code runs (a head that does not
/// arrive in time, that is not HTTP, a request target or headers over its
/// limits) is answered in the error shape, says which limit applies, and
/// the connection is closed.
#[tokio::test]
async fn requests_the_http_server_refuses_get_the_error_shape() {
    let app = app_with_short_timeouts().await;
    let long_target = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(500 * 1024)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\n{}\r\n",
        (0..120)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: [(&str, Vec<u8>, u16, &str); 6] = [
        (
            "half the headers",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-API-".to_vec(),
            408,
            "did not arrive within 1 s (SUPASCALE_HTTP_HEADER_TIMEOUT_SECONDS)",
        ),
        (
            "a garbage request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            400,
            "Malformed request: invalid HTTP method",
        ),
        (
            "a bad version",
            b"GET /healthz HTTP/7.0\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "Malformed request: invalid HTTP version",
        ),
        (
            "a 100 KiB request target",
            long_target.into_bytes(),
            414,
            "longer than 65534 bytes; the limit is 8192",
        ),
        (
            "a 500 KiB header",
            big_header.into_bytes(),
            431,
            "the limit is 417792 bytes",
        ),
        (
            "120 header fields",
            many_headers.into_bytes(),
            431,
            "and 100 header fields",
        ),
    ];
    for (what, request, status, says) in cases {
        let (stream, since) = send_and_stall(&app, &request);
        let (answer, after) = wait_for_close(stream, since, what).await;
        let response = RawResponse::read(&mut answer.as_bytes());
        let error = response.refusal(status, what);
        assert!(error.contains(says), "{what}: {error}");
        let whole = format!(
            "{}{}",
            answer.split_inclusive("\r\n\r\n").next().unwrap(),
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(answer, whole, "{what}: nothing follows the answer");
        if status == 408 {
            assert!(after >= Duration::from_millis(900), "{what}: {after:?}");
        } else {
            assert!(
                after < Duration::from_secs(HEADER_TIMEOUT),
                "{what}: {after:?}"
            );
        }
    }
}

/// Ordinary keep-alive traffic is not touched by the refusal answers: a
/// download, the app's own 404 (its body and request id) and a HEAD with
/// no body are answered as before, one after the other on one connection,
/// and the download is the artifact byte for byte.
#[tokio::test]
async fn keep_alive_traffic_is_answered_by_the_app() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let project = make_project().await;
    // Incompressible, so that the download is about a MiB.
    let mut block = Sha256::digest(b"seed").to_vec();
    let mut blob = Vec::with_capacity(1 << 20);
    while blob.len() < 1 << 20 {
        block = Sha256::digest(&block).to_vec();
        blob.extend_from_slice(&block);
    }
    std::fs::write(
        project
            .root
            .path()
            .join("volumes/functions/hello-world/blob.bin"),
        &blob,
    )
    .unwrap();
    register(&app, &project, "p").await;
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "p", "type": "full"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["backup"]["id"].as_str().unwrap().to_string();
    let size = body["backup"]["size"].as_u64().unwrap();
    let sha = body["backup"]["sha256"].as_str().unwrap().to_string();
    assert!(size > 1 << 20, "{body}");

    let address = app.address.trim_start_matches("http://").to_string();
    let key = app.admin_key.clone();
    tokio::task::spawn_blocking(move || {
        let stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(GENEROUS)).unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        fn ask(
            writer: &mut TcpStream,
            reader: &mut std::io::BufReader<TcpStream>,
            request: &str,
        ) -> RawResponse {
            writer.write_all(request.as_bytes()).unwrap();
            RawResponse::read(reader)
        }

        let download = ask(
            &mut writer,
            &mut reader,
            &format!(
                "GET /api/v1/backups/{id}/download HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n"
            ),
        );
        assert_eq!(download.status, 200);
        assert_eq!(download.body.len() as u64, size);
        assert_eq!(hex::encode(Sha256::digest(&download.body)), sha);

        let missing = ask(
            &mut writer,
            &mut reader,
            "GET /api/v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(missing.status, 404);
        assert!(
            missing.header("x-request-id").is_some(),
            "{:?}",
            missing.headers
        );
        assert_eq!(missing.header("connection"), None);
        assert_eq!(missing.body, br#"{"error":"Not found","success":false}"#);

        // A response with no body: what hyper's own refusals look like.
        writer
            .write_all(b"HEAD /api/v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert!(head.contains("x-request-id"), "{head}");

        let health = ask(
            &mut writer,
            &mut reader,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(health.status, 200);
        assert_eq!(health.body, br#"{"status":"ok"}"#);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    })
    .await
    .unwrap();
}
