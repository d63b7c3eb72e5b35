//! Read-side throughput of `GET /api/v1/backups` on a control plane with
//! 1,000,000 backups across 1,000 projects (PostgreSQL), each scenario
//! compared with `GET /healthz` of the same server.
//!
//! Build and run (release):
//!   cargo build --release -p supascale-api -p supascale-bench
//!   target/release/bench-backups-list [--rows 1000000] [--seconds 10] [--concurrency 32]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use supascale_tests::{Backend, Launch, TestApp, start};

struct Args {
    rows: u64,
    projects: u64,
    seconds: u64,
    concurrency: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        rows: 1_000_000,
        projects: 1000,
        seconds: 10,
        concurrency: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rows" => args.rows = value.parse().expect("--rows N"),
            "--projects" => args.projects = value.parse().expect("--projects N"),
            "--seconds" => args.seconds = value.parse().expect("--seconds N"),
            "--concurrency" => args.concurrency = value.parse().expect("--concurrency N"),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// The request path a client sends as its n-th request.
type PathFn = Arc<dyn Fn(u64) -> String + Send + Sync>;

struct Outcome {
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `concurrency` clients for `seconds`, each sending the request that
/// `path(n)` names for its n-th request; every answer must be 200.
async fn load(base: &str, key: &str, seconds: u64, concurrency: usize, path: PathFn) -> Outcome {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    // Warm-up: connections and caches.
    for n in 0..concurrency as u64 * 2 {
        let response = client
            .get(format!("{base}{}", path(n)))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", path(n));
        response.bytes().await.unwrap();
    }
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let counter = counter.clone();
        let path = path.clone();
        let base = base.to_string();
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let response = client
                    .get(format!("{base}{}", path(n)))
                    .header("X-API-Key", &key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
                latencies.push(t.elapsed().as_micros() as u64);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)] as f64 / 1000.0;
    Outcome {
        requests: all.len() as u64,
        rps: all.len() as f64 / elapsed,
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
    }
}

async fn fill(app: &TestApp, rows: u64, projects: u64) {
    let url = &app.database.as_ref().expect("PostgreSQL control plane").url;
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let chunk = 100_000u64;
    let mut start = 1u64;
    while start <= rows {
        let end = (start + chunk - 1).min(rows);
        let sql = format!(
            "INSERT INTO backups (id, project_id, project_name, backup_type, status, destination, \
             path, size, encrypted, compression, created_at, completed_at, duration_secs) \
             SELECT 'backup-' || lpad(g::text, 8, '0'), 'project-' || (g % {projects}), \
                    'Project ' || (g % {projects}), \
                    (ARRAY['full','database','storage','functions','config'])[1 + g % 5], \
                    CASE WHEN g % 10 < 7 THEN 'completed' WHEN g % 10 = 7 THEN 'failed' \
                         WHEN g % 10 = 8 THEN 'pending' ELSE 'in_progress' END, \
                    (ARRAY['local','s3','gcs','azure','r2','minio','backblaze'])[1 + (g / 7) % 7], \
                    's3://bucket/project-' || (g % {projects}) || '/' || g || '.tar.gz', \
                    (g::bigint * 7919) % 100000000, false, 'gzip', \
                    timestamptz '2024-01-01 00:00:00+00' + g * interval '30 seconds', \
                    timestamptz '2024-01-01 00:02:00+00' + g * interval '30 seconds', 120 \
             FROM generate_series({start}, {end}) g"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
        start = end + 1;
    }
    sqlx::raw_sql("ANALYZE backups; ANALYZE backup_stats;")
        .execute(&pool)
        .await
        .unwrap();
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    app.get(path).send().await.unwrap().json().await.unwrap()
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let app = TestApp::spawn(Backend::Postgres).await;
    let t = Instant::now();
    fill(&app, args.rows, args.projects).await;
    println!(
        "filled {} backups across {} projects in {:.1} s",
        args.rows,
        args.projects,
        t.elapsed().as_secs_f64()
    );

    let deep = args.rows.saturating_sub(100_000).max(50);
    let before: Value = get_json(
        &app,
        &format!("/api/v1/backups?limit=50&offset={}", deep - 50),
    )
    .await;
    let cursor = before["pagination"]["nextCursor"]
        .as_str()
        .expect("a next cursor")
        .to_string();
    let by_offset = get_json(&app, &format!("/api/v1/backups?limit=50&offset={deep}")).await;
    let by_cursor = get_json(&app, &format!("/api/v1/backups?limit=50&cursor={cursor}")).await;
    assert_eq!(
        by_offset["backups"], by_cursor["backups"],
        "the cursor page must be the offset page"
    );
    let total = get_json(&app, "/api/v1/backups?limit=1").await["pagination"]["total"].clone();
    assert_eq!(total, args.rows, "pagination.total");

    let projects = args.projects;
    let scenarios: Vec<(String, PathFn)> = vec![
        ("GET /healthz".into(), Arc::new(|_| "/healthz".to_string())),
        (
            "GET /api/v1/backups?limit=50".into(),
            Arc::new(|_| "/api/v1/backups?limit=50".to_string()),
        ),
        (
            "…?limit=50&projectId=X&status=completed".into(),
            Arc::new(move |n| {
                format!(
                    "/api/v1/backups?limit=50&projectId=project-{}&status=completed",
                    (n * 7919) % projects
                )
            }),
        ),
        (
            format!("…?limit=50&offset={deep}"),
            Arc::new(move |_| format!("/api/v1/backups?limit=50&offset={deep}")),
        ),
        ("…?limit=50&cursor=<same page>".into(), {
            let cursor = cursor.clone();
            Arc::new(move |_| format!("/api/v1/backups?limit=50&cursor={cursor}"))
        }),
        (
            "…?limit=50&stats=true".into(),
            Arc::new(|_| "/api/v1/backups?limit=50&stats=true".to_string()),
        ),
    ];
    // A second API process on the same control plane, without the list
    // cache: what every request costs when the data keeps changing.
    let uncached = {
        let data = app.data_dir.path();
        let launch = Launch::default()
            .env("SUPASCALE_LISTEN", "127.0.0.1:0")
            .env("SUPASCALE_DATA_DIR", data.to_str().unwrap())
            .env(
                "SUPASCALE_MASTER_KEY_FILE",
                data.join("master.key").to_str().unwrap(),
            )
            .env(
                "SUPASCALE_DATABASE_URL",
                app.database.as_ref().unwrap().url.clone(),
            )
            .env("SUPASCALE_LIST_CACHE", "false");
        let mut started = start("supascale-api", &launch);
        let line = started
            .wait_for_stdout("listening on http://", Duration::from_secs(30))
            .unwrap();
        let address = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .to_string();
        (started, address)
    };
    println!(
        "\n{} s per scenario, {} concurrent clients, keep-alive, client on the same machine\n",
        args.seconds, args.concurrency
    );
    println!(
        "{:<44} {:>9} {:>10} {:>9} {:>9} {:>9}",
        "scenario", "requests", "req/s", "p50 ms", "p99 ms", "vs healthz"
    );
    for (label, address) in [
        ("list cache on (the default)", app.address.clone()),
        (
            "list cache off (SUPASCALE_LIST_CACHE=false)",
            uncached.1.clone(),
        ),
    ] {
        println!("{label}");
        let mut healthz = None;
        for (name, path) in &scenarios {
            let outcome = load(
                &address,
                &app.admin_key,
                args.seconds,
                args.concurrency,
                path.clone(),
            )
            .await;
            let base = *healthz.get_or_insert(outcome.rps);
            println!(
                "  {:<42} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>8.0}%",
                name,
                outcome.requests,
                outcome.rps,
                outcome.p50_ms,
                outcome.p99_ms,
                outcome.rps / base * 100.0
            );
        }
    }
    drop(uncached);
}
