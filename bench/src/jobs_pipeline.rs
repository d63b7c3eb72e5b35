//! The job pipeline on PostgreSQL + Redis with two `supascale-worker`s:
//!
//! 1. throughput: `--jobs` (2,000) config-only backups of a small project to
//!    the local destination, created through the API (`?async=true`), beside
//!    the same count of bare apalis jobs doing the same work (tar.gz of the
//!    project's config files, written and confirmed through the same
//!    OpenDAL destination) without our rows, events or API;
//! 2. latency at a low arrival rate (`--rate` 10 jobs/s for `--seconds`
//!    10 s, queue empty): enqueue→start (the job row's `enqueued_at` to
//!    `started_at`) and worker-event→SSE-client (an event's `created_at`,
//!    stamped by the worker when the event happens, to the moment a client
//!    following the job's SSE stream has parsed it; this includes the up to
//!    25 ms an event waits to be written with the ones that follow it).
//!
//! The throughput of both varies from run to run on a shared 2-core machine
//! (bare apalis by up to ±30 %), so it runs `--runs` (3) times, ours and
//! bare apalis taking turns, and the ratio is that of the medians.
//!
//! Build and run (release):
//!   cargo build --release -p supascale-api -p supascale-worker -p supascale-bench
//!   target/release/bench-jobs-pipeline [--jobs 2000] [--rate 10] [--seconds 10] [--runs 3]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use serde_json::{Value, json};
use supascale_shared::artifact::{ArtifactBuilder, Compression, ManifestMeta};
use supascale_shared::destinations::{DestinationConfig, Destinations};
use supascale_shared::domain::CONFIG_ALLOWLIST;
use supascale_tests::{Backend, Launch, RedisQueue, TestApp, make_project, register};

struct Args {
    jobs: u64,
    rate: u64,
    seconds: u64,
    runs: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        jobs: 2000,
        rate: 10,
        seconds: 10,
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--jobs" => args.jobs = value.parse().expect("--jobs N"),
            "--rate" => args.rate = value.parse().expect("--rate N"),
            "--seconds" => args.seconds = value.parse().expect("--seconds N"),
            "--runs" => args.runs = value.parse().expect("--runs N"),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let project = make_project().await;
    let queue = RedisQueue::new();
    let shared = Launch::default()
        .env("SUPASCALE_REDIS_URL", "redis://127.0.0.1:6379")
        .env("SUPASCALE_QUEUE_NAME", queue.name.clone())
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        );
    let app = TestApp::spawn_with(
        Backend::Postgres,
        shared
            .clone()
            .env("SUPASCALE_WORKERS", "0")
            .env("SUPASCALE_DATABASE_MAX_CONNECTIONS", "32"),
    )
    .await;
    let _workers: Vec<_> = (0..2).map(|_| app.start_worker(shared.clone())).collect();
    register(&app, &project, "bench").await;
    let db = sqlx::PgPool::connect(&app.database.as_ref().unwrap().url)
        .await
        .unwrap();
    // An experiment's change to the control plane (a trigger, an index),
    // made before the first run: `BENCH_SQL_FILE=change.sql`.
    if let Ok(file) = std::env::var("BENCH_SQL_FILE") {
        let sql = std::fs::read_to_string(&file).expect("BENCH_SQL_FILE");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&db)
            .await
            .expect("BENCH_SQL_FILE runs");
        println!("ran {file} on the control plane");
    }
    println!(
        "jobs pipeline: PostgreSQL + Redis, 2 supascale-worker processes (concurrency 2 each), \
         config-only backups of a small project to the local destination"
    );

    // 1. Throughput: ours and bare apalis, taking turns.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .unwrap();
    let mut ours_rates = Vec::new();
    let mut bare_rates = Vec::new();
    // Bare apalis' artifacts stay until the end, as ours do. This machine's
    // ext4 has no journal, and without one every file created scans past
    // the inodes of its group deleted in the last minutes: removing 2,000
    // artifacts between two runs made the next run's file creations a
    // fifth of a worker's CPU (`find_inode_bit`/`recently_deleted`).
    let mut kept = Vec::new();
    for run in 1..=args.runs {
        let meter = CpuMeter::start();
        let ours = ours_throughput(&app, &client, &db, args.jobs, run).await;
        meter.report("ours", args.jobs);
        let meter = CpuMeter::start();
        let (bare, written) = bare_apalis(args.jobs, project.root.path().to_path_buf()).await;
        kept.push(written);
        meter.report("bare apalis", args.jobs);
        let (ours_rate, bare_rate) = (
            args.jobs as f64 / ours.as_secs_f64(),
            args.jobs as f64 / bare.as_secs_f64(),
        );
        println!(
            "  run {run}: ours {} jobs in {:>6.2} s = {:>7.1} jobs/s; bare apalis {:>6.2} s = {:>7.1} jobs/s ({:.0}%)",
            args.jobs,
            ours.as_secs_f64(),
            ours_rate,
            bare.as_secs_f64(),
            bare_rate,
            100.0 * ours_rate / bare_rate
        );
        ours_rates.push(ours_rate);
        bare_rates.push(bare_rate);
    }
    ours_rates.sort_by(f64::total_cmp);
    bare_rates.sort_by(f64::total_cmp);
    let (ours_rate, bare_rate) = (percentile(&ours_rates, 0.5), percentile(&bare_rates, 0.5));
    println!(
        "  median of {} runs: ours {:>7.1} jobs/s, bare apalis {:>7.1} jobs/s -> ours = {:.0}% of bare apalis",
        args.runs,
        ours_rate,
        bare_rate,
        100.0 * ours_rate / bare_rate
    );
    if std::env::var("BENCH_FLOOR").is_ok() {
        job_row_floor(&db, args.jobs).await;
    }
    if std::env::var("BENCH_PHASES").is_ok() {
        let phases: Vec<(String, f64)> = sqlx::query_as(
            "SELECT e.event || ':' || coalesce(e.data::json->>'step', ''), \
                    avg(extract(epoch FROM e.created_at - j.started_at) * 1000)::float8 \
             FROM job_events e JOIN jobs j ON j.id = e.job_id GROUP BY 1 ORDER BY 2",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        for (phase, ms) in phases {
            println!("               {phase:<20} at {ms:>7.1} ms after the claim");
        }
    }

    // 2. Latency at a low arrival rate, queue empty.
    let count = args.rate * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut followers = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    for _ in 0..count {
        ticker.tick().await;
        let response = client
            .post(app.url("/api/v1/backups?async=true"))
            .header("X-API-Key", &app.admin_key)
            .json(&json!({"projectId": "bench", "type": "config"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let accepted: Value = response.json().await.unwrap();
        let job_id = accepted["job"]["id"].as_str().unwrap().to_string();
        let events_url = app.url(accepted["job"]["eventsUrl"].as_str().unwrap());
        let key = app.admin_key.clone();
        let client = client.clone();
        followers.push(tokio::spawn(async move {
            follow(client, events_url, key, job_id).await
        }));
    }
    let mut sse_ms = Vec::new();
    let mut job_ids = Vec::new();
    for follower in followers {
        let (job_id, received) = follower.await.unwrap();
        for (seq, at) in received {
            let created: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
                "SELECT created_at FROM job_events WHERE job_id = $1 AND seq = $2",
            )
            .bind(&job_id)
            .bind(seq)
            .fetch_one(&db)
            .await
            .unwrap();
            sse_ms.push((at - created).num_microseconds().unwrap() as f64 / 1000.0);
        }
        job_ids.push(job_id);
    }
    let mut start_ms: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM started_at - enqueued_at) * 1000)::float8 FROM jobs \
         WHERE id = ANY($1)",
    )
    .bind(&job_ids)
    .fetch_all(&db)
    .await
    .unwrap();
    start_ms.sort_by(f64::total_cmp);
    sse_ms.sort_by(f64::total_cmp);
    println!(
        "  at {} jobs/s for {} s ({} jobs, queue empty):",
        args.rate, args.seconds, count
    );
    println!(
        "    enqueue -> start:          p50 {:>7.1} ms   p99 {:>7.1} ms   ({} jobs)",
        percentile(&start_ms, 0.5),
        percentile(&start_ms, 0.99),
        start_ms.len()
    );
    println!(
        "    worker event -> SSE client: p50 {:>7.1} ms   p99 {:>7.1} ms   ({} events)",
        percentile(&sse_ms, 0.5),
        percentile(&sse_ms, 0.99),
        sse_ms.len()
    );
}

/// With `BENCH_CPU`, where a phase's CPU went: per program, in CPU
/// milliseconds per job (the machine's 2 cores give 2,000 ms a second).
struct CpuMeter(Option<(Vec<f64>, u64)>);

/// Context switches on the whole machine since boot (`ctxt` in /proc/stat).
fn context_switches() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// `/proc/<pid>/comm` is cut to 15 characters.
const PROGRAMS: [&str; 5] = [
    "postgres",
    "supascale-api",
    "supascale-worke",
    "redis-server",
    "bench-jobs-pipe",
];

impl CpuMeter {
    fn start() -> Self {
        if std::env::var("BENCH_CPU").is_ok() {
            Self::always()
        } else {
            CpuMeter(None)
        }
    }

    fn always() -> Self {
        CpuMeter(Some((
            supascale_bench::cpu_seconds_of_programs(&PROGRAMS),
            context_switches(),
        )))
    }

    fn report(self, phase: &str, jobs: u64) {
        let Some((before, switches_before)) = self.0 else {
            return;
        };
        let after = supascale_bench::cpu_seconds_of_programs(&PROGRAMS);
        let switches = context_switches() - switches_before;
        let parts: Vec<String> = PROGRAMS
            .iter()
            .zip(after.iter().zip(&before))
            .map(|(name, (a, b))| format!("{name} {:.2}", (a - b) * 1000.0 / jobs as f64))
            .collect();
        let total: f64 = after.iter().sum::<f64>() - before.iter().sum::<f64>();
        println!(
            "    {phase}: CPU ms per job: {} = {:.2}; {:.0} context switches per job",
            parts.join(", "),
            total * 1000.0 / jobs as f64,
            switches as f64 / jobs as f64
        );
    }
}

/// What PostgreSQL needs for a job row alone, with nothing of ours in the
/// loop: `jobs` rows written the way a job's life writes them at the
/// least (inserted `pending`; taken; ended with three events: `start`, a
/// `step`, `complete`), from 4 connections at once (the two workers'
/// concurrency), each write its own durable commit. No backup row, no
/// summary, no HTTP, no queue. The rows are removed after.
async fn job_row_floor(db: &sqlx::PgPool, jobs: u64) {
    let meter = CpuMeter::always();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (db, next) = (db.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= jobs {
                    break;
                }
                let id = format!("floor-{n}");
                sqlx::query(
                    "INSERT INTO jobs (id, kind, project_id, status, attempt, max_attempts, \
                     payload, warnings, enqueued_at) \
                     VALUES ($1, 'backup', 'bench', 'pending', 0, 3, '{}', '[]', now())",
                )
                .bind(&id)
                .execute(&db)
                .await
                .unwrap();
                sqlx::query(
                    "UPDATE jobs SET status = 'in_progress', attempt = attempt + 1, \
                     worker_id = 'floor', started_at = now(), heartbeat_at = now() \
                     WHERE id = $1 AND status = 'pending'",
                )
                .bind(&id)
                .execute(&db)
                .await
                .unwrap();
                sqlx::query(
                    "WITH fin AS (UPDATE jobs SET status = 'completed', finished_at = now() \
                     WHERE id = $1 AND worker_id = 'floor' RETURNING id) \
                     INSERT INTO job_events (job_id, seq, event, data, created_at) \
                     SELECT fin.id, e.seq, e.event, '{}', now() FROM fin, \
                     (VALUES (1, 'start'), (2, 'step'), (3, 'complete')) AS e(seq, event)",
                )
                .bind(&id)
                .execute(&db)
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "  job-row floor (PostgreSQL alone: insert, take, end with 3 events; 4 connections): \
         {jobs} in {:.2} s = {:.1} jobs/s",
        elapsed.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64()
    );
    meter.report("job-row floor", jobs);
    sqlx::query("DELETE FROM job_events WHERE job_id LIKE 'floor-%'")
        .execute(db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM jobs WHERE id LIKE 'floor-%'")
        .execute(db)
        .await
        .unwrap();
}

/// `jobs` config-only backups through the API with 16 clients, until all
/// of them are completed: the time from the first request.
async fn ours_throughput(
    app: &TestApp,
    client: &reqwest::Client,
    db: &sqlx::PgPool,
    jobs: u64,
    run: usize,
) -> Duration {
    let (before,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
        .fetch_one(db)
        .await
        .unwrap();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let client = client.clone();
        let next = next.clone();
        let url = app.url("/api/v1/backups?async=true");
        let key = app.admin_key.clone();
        clients.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                let response = client
                    .post(&url)
                    .header("X-API-Key", &key)
                    .json(&json!({"projectId": "bench", "type": "config"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                response.bytes().await.unwrap();
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let enqueued = started.elapsed();
    loop {
        let (done, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'completed'), \
                    count(*) FILTER (WHERE status = 'failed') FROM jobs",
        )
        .fetch_one(db)
        .await
        .unwrap();
        assert_eq!(failed, 0, "jobs failed");
        if done >= before + jobs as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let (run_ms, wait_ms): (f64, f64) = sqlx::query_as(
        "SELECT avg(extract(epoch FROM finished_at - started_at) * 1000)::float8, \
                avg(extract(epoch FROM started_at - enqueued_at) * 1000)::float8 FROM \
         (SELECT * FROM jobs ORDER BY enqueued_at DESC LIMIT $1) latest",
    )
    .bind(jobs as i64)
    .fetch_one(db)
    .await
    .unwrap();
    println!(
        "  run {run}: ours: all enqueued after {:.2} s; mean run {run_ms:.1} ms per job, mean wait {wait_ms:.0} ms",
        enqueued.as_secs_f64()
    );
    elapsed
}

/// Follows a job's SSE stream to its end; returns when each event arrived.
async fn follow(
    client: reqwest::Client,
    url: String,
    key: String,
    job_id: String,
) -> (String, Vec<(i64, chrono::DateTime<chrono::Utc>)>) {
    use futures::{StreamExt, TryStreamExt};
    let response = client
        .get(&url)
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    let bytes = response
        .bytes_stream()
        .map_err(std::io::Error::other)
        .into_async_read();
    let mut events = sse_codec::decode_stream(bytes);
    let mut received = Vec::new();
    while let Some(Ok(event)) = events.next().await {
        if let sse_codec::Event::Message { id, event, .. } = event {
            let at = chrono::Utc::now();
            received.push((id.unwrap().parse().unwrap(), at));
            if event == "complete" || event == "error" {
                break;
            }
        }
    }
    (job_id, received)
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct BareJob {
    n: u64,
}

struct BareContext {
    root: PathBuf,
    destinations: Destinations,
    done: AtomicU64,
}

/// The same work as a config-only backup, straight from an apalis handler.
async fn bare_handle(job: BareJob, ctx: Data<Arc<BareContext>>) -> Result<(), BoxDynError> {
    let destination = ctx.destinations.get("local")?.clone();
    let key = format!("bare/{}.tar.gz", job.n);
    let root = ctx.root.clone();
    let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut builder = ArtifactBuilder::new(Vec::new(), Compression::Gzip)?;
        for pattern in CONFIG_ALLOWLIST {
            if pattern.contains('*') {
                continue;
            }
            builder.add_tree(&root.join(pattern), &format!("config/{pattern}"))?;
        }
        let (mut sink, _) = builder.finish(ManifestMeta {
            project_id: "bench".into(),
            project_name: "bench".into(),
            backup_type: "config".into(),
            components: vec!["config".into()],
            postgres_version: None,
            created_at: chrono::Utc::now().to_rfc3339(),
        })?;
        sink.flush()?;
        Ok(sink)
    })
    .await??;
    let size = bytes.len() as u64;
    let mut writer = destination.writer(&key).await?;
    writer.write(bytes).await?;
    writer.close().await?;
    let stored = destination.stat(&key).await?.ok_or("not stored")?;
    assert_eq!(stored.size, size);
    ctx.done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// `jobs` bare apalis jobs through 2 workers of concurrency 2 on Redis;
/// the time, and the folder they wrote (for the caller to remove).
async fn bare_apalis(jobs: u64, root: PathBuf) -> (Duration, tempfile::TempDir) {
    let queue = RedisQueue::new();
    let data = tempfile::tempdir().unwrap();
    let conn = apalis_redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let config = apalis_redis::Config::default()
        .queue(&queue.name)
        .batch_size(2)
        .heartbeat_interval(Duration::from_secs(2))
        .missed_heartbeats(3);
    let storage = apalis_redis::RedisStorage::<BareJob>::new(conn).with_config(config);
    let ctx = Arc::new(BareContext {
        root,
        destinations: Destinations::from_config(
            &std::collections::BTreeMap::<String, DestinationConfig>::new(),
            data.path(),
        )
        .unwrap(),
        done: AtomicU64::new(0),
    });
    let started = Instant::now();
    let mut pusher = storage.clone();
    for n in 0..jobs {
        pusher.push(BareJob { n }).await.unwrap();
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut monitors = Vec::new();
    for w in 0..2 {
        let storage = storage.clone();
        let ctx = ctx.clone();
        let mut rx = stop_rx.clone();
        let name = format!("{}-bare-{w}", queue.name);
        monitors.push(tokio::spawn(async move {
            Monitor::new()
                .register(move |_| {
                    WorkerBuilder::new(name.clone())
                        .backend(
                            storage
                                .clone()
                                .poll_with_interval(Duration::from_millis(100)),
                        )
                        .concurrency(2)
                        .data(ctx.clone())
                        .build(bare_handle)
                })
                .shutdown_timeout(Duration::from_secs(10))
                .run_with_signal(async move {
                    let _ = rx.wait_for(|s| *s).await;
                    Ok(())
                })
                .await
                .unwrap();
        }));
    }
    while ctx.done.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    let _ = stop_rx.changed().await;
    for m in monitors {
        let _ = m.await;
    }
    (elapsed, data)
}
