//! The HTTP server's edges: what a hostile or broken client gets. Every
//! 4xx carries the error shape, malformed headers are refused, and slow
//! clients are cut off within the configured timeouts.

use serde_json::json;
use supascale_tests::{Backend, TestApp, make_project, register, status_and_body};

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
    let (_, jobs) = status_and_body(app.get("/api/v1/jobs").send().await.unwrap()).await;
    assert_eq!(jobs["pagination"]["total"], 0, "{jobs}");
    let (_, backups) = status_and_body(app.get("/api/v1/backups").send().await.unwrap()).await;
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
