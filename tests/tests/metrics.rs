//! `GET /metrics` as Prometheus reads it: the scrape is parsed with a real
//! parser (`prometheus-parse`) and checked for what an operator's panels
//! and alerts would show, on the embedded default and in scale-out.

use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;
use supascale_tests::{Backend, Cluster, Deployment, Launch, TestApp, make_project, register};

const JOB_KINDS: &[&str] = &[
    "backup",
    "restore",
    "import_database",
    "import_storage",
    "import_functions",
    "lift_shift",
];

const FAMILIES: &[(&str, &str)] = &[
    ("supascale_queue_depth", "gauge"),
    ("supascale_queue_backlog", "gauge"),
    ("supascale_jobs_in_flight", "gauge"),
    ("supascale_jobs_finished_total", "counter"),
    ("supascale_job_duration_seconds", "histogram"),
    ("supascale_bytes_processed_total", "counter"),
    ("supascale_workers_live", "gauge"),
    ("supascale_worker_slots", "gauge"),
    (
        "supascale_last_successful_backup_timestamp_seconds",
        "gauge",
    ),
    ("supascale_destination_up", "gauge"),
    ("supascale_destination_probe_duration_seconds", "gauge"),
    (
        "supascale_destination_last_probe_timestamp_seconds",
        "gauge",
    ),
    ("supascale_http_requests_total", "counter"),
    ("supascale_http_request_duration_seconds", "histogram"),
];

/// One scrape, without an API key, as Prometheus does it.
async fn scrape(app: &TestApp) -> (String, Scrape) {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("a valid scrape");
    (text, parsed)
}

/// Scrapes until `ready` holds (or 20 s pass); returns the last scrape.
async fn scrape_until(app: &TestApp, ready: impl Fn(&Scrape) -> bool) -> (String, Scrape) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (text, parsed) = scrape(app).await;
        if ready(&parsed) || Instant::now() > deadline {
            return (text, parsed);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn matches(sample: &Sample, metric: &str, labels: &[(&str, &str)]) -> bool {
    sample.metric == metric && labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v))
}

/// The value of the one series of `metric` with `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| matches(s, metric, labels))
        .filter_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    assert!(found.len() <= 1, "{metric} {labels:?}: {found:?}");
    found.first().copied()
}

/// A histogram's buckets `(le, cumulative count)`.
fn buckets(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    scrape
        .samples
        .iter()
        .find_map(|s| match &s.value {
            Value::Histogram(h) if matches(s, metric, labels) => {
                Some(h.iter().map(|b| (b.less_than, b.count)).collect())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no histogram {metric} {labels:?}"))
}

fn every_family_is_documented(text: &str, scrape: &Scrape) {
    for (family, kind) in FAMILIES {
        assert!(
            scrape.docs.contains_key(*family),
            "no HELP for {family}:\n{text}"
        );
        assert!(
            text.lines().any(|l| l == format!("# TYPE {family} {kind}")),
            "no TYPE {kind} for {family}:\n{text}"
        );
    }
}

/// The `route` labels of the HTTP counter.
fn routes(scrape: &Scrape) -> Vec<String> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "supascale_http_requests_total")
        .map(|s| s.labels.get("route").unwrap().to_string())
        .collect()
}

async fn a_completed_backup_shows_in_the_metrics(deployment: Deployment) {
    let cluster = Cluster::start(deployment, Launch::default()).await;
    let app = &cluster.app;
    let project = make_project().await;
    register(app, &project, "metrics-p").await;
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "metrics-p", "type": "config"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let backup = &body["backup"];
    assert_eq!(backup["status"], "completed");
    let (_, jobs) = app.jobs().list("kind=backup").await;
    let job = &jobs["jobs"][0];
    assert_eq!(job["status"], "completed", "{jobs}");

    let (live, slots) = match deployment {
        // The API's own worker loop, SUPASCALE_WORKERS=2.
        Deployment::Embedded => (1.0, 2.0),
        // Two supascale-worker processes of the default concurrency (2).
        Deployment::ScaleOut => (2.0, 4.0),
    };
    // Workers announce themselves every 2 s; the queue acknowledges
    // asynchronously.
    let (text, m) = scrape_until(app, |m| {
        value(m, "supascale_workers_live", &[]) == Some(live)
            && value(m, "supascale_queue_backlog", &[]) == Some(0.0)
    })
    .await;
    every_family_is_documented(&text, &m);

    assert_eq!(
        value(
            &m,
            "supascale_jobs_finished_total",
            &[("kind", "backup"), ("status", "completed")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &m,
            "supascale_jobs_finished_total",
            &[("kind", "backup"), ("status", "failed")]
        ),
        Some(0.0)
    );
    for kind in JOB_KINDS {
        assert_eq!(
            value(&m, "supascale_queue_depth", &[("kind", kind)]),
            Some(0.0),
            "{kind}: {text}"
        );
        assert_eq!(
            value(&m, "supascale_jobs_in_flight", &[("kind", kind)]),
            Some(0.0),
            "{kind}: {text}"
        );
    }
    assert_eq!(value(&m, "supascale_queue_backlog", &[]), Some(0.0));

    // One duration observed, equal to the job's own start-to-end time.
    let labels = [("kind", "backup")];
    assert_eq!(
        value(&m, "supascale_job_duration_seconds_count", &labels),
        Some(1.0)
    );
    let histogram = buckets(&m, "supascale_job_duration_seconds", &labels);
    assert_eq!(
        histogram.last(),
        Some(&(f64::INFINITY, 1.0)),
        "{histogram:?}"
    );
    assert!(
        histogram.windows(2).all(|w| w[0].1 <= w[1].1),
        "{histogram:?}"
    );
    let sum = value(&m, "supascale_job_duration_seconds_sum", &labels).unwrap();
    let expected = job["durationMs"].as_f64().unwrap() / 1000.0;
    assert!((sum - expected).abs() < 0.01, "sum {sum}, job {expected}");
    let first_bucket_holding_it = histogram.iter().find(|(le, _)| sum <= *le).unwrap();
    assert_eq!(first_bucket_holding_it.1, 1.0, "{histogram:?}");
    // Other kinds have empty histograms, not missing ones.
    assert_eq!(
        value(
            &m,
            "supascale_job_duration_seconds_count",
            &[("kind", "restore")]
        ),
        Some(0.0)
    );

    assert_eq!(
        value(&m, "supascale_bytes_processed_total", &[("kind", "backup")]),
        Some(backup["size"].as_f64().unwrap())
    );
    assert!(backup["size"].as_i64().unwrap() > 0);
    let completed_at = chrono::DateTime::parse_from_rfc3339(backup["completedAt"].as_str().unwrap())
        .unwrap()
        .timestamp() as f64;
    assert_eq!(
        value(
            &m,
            "supascale_last_successful_backup_timestamp_seconds",
            &[("project", "metrics-p")]
        ),
        Some(completed_at),
        "{text}"
    );

    assert_eq!(
        value(&m, "supascale_workers_live", &[]),
        Some(live),
        "{text}"
    );
    assert_eq!(
        value(&m, "supascale_worker_slots", &[]),
        Some(slots),
        "{text}"
    );

    let created = value(
        &m,
        "supascale_http_requests_total",
        &[
            ("route", "createBackup"),
            ("method", "POST"),
            ("status", "200"),
        ],
    );
    assert!(created.is_some_and(|n| n >= 1.0), "{text}");
    let latency = buckets(
        &m,
        "supascale_http_request_duration_seconds",
        &[("route", "createBackup")],
    );
    assert!(latency.last().unwrap().1 >= 1.0, "{latency:?}");

    // The ids a client used never become labels.
    let backup_id = backup["id"].as_str().unwrap();
    let job_id = job["id"].as_str().unwrap();
    for route in routes(&m) {
        assert!(
            !route.contains(backup_id) && !route.contains(job_id) && !route.contains("metrics-p"),
            "{route}"
        );
    }
    // Nothing secret is shown.
    assert!(!text.contains("postgres://"), "{text}");
    assert!(!text.contains(&app.admin_key));
}

#[tokio::test]
async fn a_completed_backup_shows_in_the_metrics_embedded() {
    a_completed_backup_shows_in_the_metrics(Deployment::Embedded).await;
}

#[tokio::test]
async fn a_completed_backup_shows_in_the_metrics_scale_out() {
    a_completed_backup_shows_in_the_metrics(Deployment::ScaleOut).await;
}

#[tokio::test]
async fn a_job_without_a_worker_is_queued() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default().env("SUPASCALE_WORKERS", "0"),
    )
    .await;
    let project = make_project().await;
    register(&app, &project, "waiting").await;
    let (_, m) = scrape(&app).await;
    // A project that was never backed up is as stale as can be.
    assert_eq!(
        value(
            &m,
            "supascale_last_successful_backup_timestamp_seconds",
            &[("project", "waiting")]
        ),
        Some(0.0)
    );
    let (status, accepted) = app
        .backups()
        .start(json!({"projectId": "waiting", "type": "config"}))
        .await;
    assert_eq!(status, 202, "{accepted}");

    let (text, m) = scrape(&app).await;
    every_family_is_documented(&text, &m);
    assert_eq!(
        value(&m, "supascale_queue_depth", &[("kind", "backup")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&m, "supascale_queue_depth", &[("kind", "restore")]),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "supascale_jobs_in_flight", &[("kind", "backup")]),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "supascale_queue_backlog", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&m, "supascale_workers_live", &[]), Some(0.0));
    assert_eq!(value(&m, "supascale_worker_slots", &[]), Some(0.0));
    assert_eq!(
        value(
            &m,
            "supascale_jobs_finished_total",
            &[("kind", "backup"), ("status", "completed")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &m,
            "supascale_job_duration_seconds_count",
            &[("kind", "backup")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "supascale_bytes_processed_total", &[("kind", "backup")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &m,
            "supascale_http_requests_total",
            &[
                ("route", "createBackup"),
                ("method", "POST"),
                ("status", "202")
            ]
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn routes_are_templates_never_raw_paths() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for (path, expected) in [
        ("/api/v1/backups/bk-rawid-1234", 404),
        ("/api/v1/jobs/job-rawid-5678", 404),
        ("/api/v1/projects/rawid-project", 404),
        ("/api/v1/nothing-rawid-here", 404),
        ("/no/such/rawid/path", 404),
        ("/healthz", 200),
    ] {
        let response = app.get(path).send().await.unwrap();
        assert_eq!(response.status(), expected, "{path}");
    }
    let response = app
        .client
        .put(app.url("/api/v1/backups"))
        .header("X-API-Key", &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    // Without a key: counted under its operation, with its status.
    let response = app
        .client
        .get(app.url("/api/v1/backups"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // The first scrape counts itself only once it has answered.
    scrape(&app).await;

    let (text, m) = scrape(&app).await;
    let routes = routes(&m);
    for route in &routes {
        assert!(!route.contains("rawid"), "a raw path as a route: {text}");
    }
    for (route, method, status, n) in [
        ("getBackup", "GET", "404", 1.0),
        ("getJob", "GET", "404", 1.0),
        ("getProject", "GET", "404", 1.0),
        ("unmatched", "GET", "404", 2.0),
        ("/healthz", "GET", "200", 1.0),
        ("listBackups", "GET", "401", 1.0),
        ("/metrics", "GET", "200", 1.0),
    ] {
        assert_eq!(
            value(
                &m,
                "supascale_http_requests_total",
                &[("route", route), ("method", method), ("status", status)]
            ),
            Some(n),
            "{route} {method} {status}: {text}"
        );
    }
    // The wrong method on a known path is counted under that path's
    // template, not as unmatched.
    let not_allowed: Vec<&Sample> = m
        .samples
        .iter()
        .filter(|s| {
            s.metric == "supascale_http_requests_total" && s.labels.get("status") == Some("405")
        })
        .collect();
    assert_eq!(not_allowed.len(), 1, "{text}");
    assert_eq!(not_allowed[0].labels.get("method"), Some("PUT"));
    assert_ne!(not_allowed[0].labels.get("route"), Some("unmatched"));
}
