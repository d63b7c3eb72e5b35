//! The job row is the record: a job survives losing its queue entry.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use supascale_tests::{Backend, Launch, RedisServer, TestApp, make_project, register};

/// Redis restarted empty while a job waits: the reconciler re-delivers it
/// from its row and it completes.
#[tokio::test]
async fn a_job_survives_redis_losing_everything() {
    let redis = RedisServer::start().await;
    let port = redis.port;
    let redis_url = redis.url();
    // The API alone: nothing takes the job yet.
    let app = TestApp::spawn_with(
        Backend::Postgres,
        Launch::default()
            .env("SUPASCALE_REDIS_URL", redis_url.clone())
            .env("SUPASCALE_WORKERS", "0"),
    )
    .await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let response = app
        .post("/api/v1/backups?async=true")
        .json(&json!({"projectId": "p", "type": "config"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let job_url = accepted["job"]["jobUrl"].as_str().unwrap().to_string();

    // Redis loses the queued job.
    let flushed = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "FLUSHALL"])
        .output()
        .unwrap();
    assert!(flushed.status.success());

    let mut worker = app.start_worker(Launch::default().env("SUPASCALE_REDIS_URL", redis_url));
    let job = app.wait_for_job(&job_url, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let backup: Value = app
        .get(&format!(
            "/api/v1/backups/{}",
            accepted["backup"]["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(backup["status"], "completed");
    let log = worker.stderr.lock().unwrap().join("\n");
    assert!(
        log.contains("re-delivered a job the queue had lost"),
        "{log}"
    );
    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(30));
}
