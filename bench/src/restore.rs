//! A full restore of the reference project (`refproject::make`): ours
//! beside what an operator does with standard tools, on the same artifact.
//!
//! 1. Ours: the embedded default (SQLite control plane, in-process
//!    workers) restores a full backup of the project through
//!    `POST /api/v1/backups/{id}/restore` (it answers 200 when done), after
//!    the project was changed a little (rows deleted and updated, storage
//!    objects deleted and added). Wall time from the request to the 200;
//!    the API process's peak RSS meanwhile (it runs the workers; the
//!    `pg_restore`/`psql` children are other processes, so not in it),
//!    both sampled every 50 ms and as the kernel's high-water mark
//!    (`VmHWM`, reset just before); the job's steps; and what the
//!    restoring session on PostgreSQL was doing, sampled every 50 ms.
//! 2. Baseline: the same artifact, downloaded first (not timed), then,
//!    after the same change, `tar -xzf --xattrs` into a fresh folder and
//!    `pg_restore --clean --if-exists --single-transaction` of its dump into
//!    the project database, one after the other; then the check an
//!    operator would do to match ours: `sha256sum -c` of every file against
//!    the manifest's SHA-256s. Shown with and without that check.
//!
//! The project is `refproject::make(scale, seed, false)`'s.
//!
//! Build and run (release):
//!   cargo build --release -p supascale-api -p supascale-worker -p supascale-bench
//!   target/release/bench-restore [--scale 10] [--seed 7] [--runs 1]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use supascale_bench::{cpu_seconds, load_average, status_kib};
use supascale_shared::artifact::Manifest;
use supascale_tests::refproject::{RefProject, table_fingerprints, tree_snapshot};
use supascale_tests::{Backend, ControlPlane, Launch, PG_ADMIN_URL, TestApp, psql};

struct Args {
    scale: f64,
    seed: u64,
    runs: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        scale: 10.0,
        seed: 7,
        runs: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--scale" => args.scale = value.parse().expect("--scale X"),
            "--seed" => args.seed = value.parse().expect("--seed N"),
            "--runs" => args.runs = value.parse().expect("--runs N"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(args.runs >= 1, "--runs is at least 1");
    args
}

const MIB: f64 = 1024.0 * 1024.0;
/// The interval of both samplers.
const SAMPLE: Duration = Duration::from_millis(50);

#[tokio::main]
async fn main() {
    let args = parse_args();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "restore: full backup of the reference project, scale {} (seed {}), {} run(s)",
        args.scale, args.seed, args.runs
    );
    println!("machine: nproc {nproc}, load average {}", load_average());

    let supascale_bench::Reference {
        project,
        database_bytes,
        file_count,
        file_bytes,
    } = supascale_bench::make_reference(args.scale, args.seed).await;
    let url = project.database.url.clone();
    let root = project.root.path().to_path_buf();
    let db_bytes = database_bytes as i64;
    let tables_before = table_fingerprints(&url);
    let tree_before = tree_snapshot(&root);

    let launch = supascale_bench::with_bench_env(
        Launch::default().env("SUPASCALE_JOB_WAIT_SECONDS", "3600"),
    );
    let app = TestApp::spawn_with(Backend::Sqlite, launch).await;
    let pid = app.pid();
    let response = app
        .post("/api/v1/projects")
        .json(&json!({"id": "bench", "name": "Bench",
            "rootDir": root.to_str().unwrap(), "databaseUrl": url}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let started = Instant::now();
    let response = app
        .post("/api/v1/backups")
        .json(&json!({"projectId": "bench", "type": "full"}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backup"]["status"], "completed", "{body}");
    let backup_id = body["backup"]["id"].as_str().unwrap().to_string();
    let artifact_bytes = body["backup"]["size"].as_u64().unwrap_or(0);
    println!(
        "artifact: {:.1} MiB (full backup, gzip, made in {:.1} s)",
        artifact_bytes as f64 / MIB,
        started.elapsed().as_secs_f64()
    );

    // The artifact for the baseline, downloaded before anything is timed.
    let work = tempfile::tempdir().unwrap();
    let artifact = work.path().join("backup.tar.gz");
    download(&app, &backup_id, &artifact).await;
    assert_eq!(std::fs::metadata(&artifact).unwrap().len(), artifact_bytes);

    let control = app.control_plane().await;
    let pg = sqlx::PgPool::connect(PG_ADMIN_URL).await.unwrap();
    let mut ours_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    for run in 1..=args.runs {
        println!(
            "\nrun {run} of {}  (load average {})",
            args.runs,
            load_average()
        );
        change_project(&project);
        let ours = restore_ours(&app, pid, &backup_id, &control, &pg, &project).await;
        let tables_ok = same_tables(&url, &tables_before);
        let tree_after = tree_snapshot(&root);
        let tree_ok = tree_after == tree_before;
        println!(
            "  ours:     {:>7.2} s   tables {}   files {}",
            ours.seconds,
            ok(tables_ok),
            ok(tree_ok)
        );
        if !tree_ok {
            print_first_difference(&tree_before, &tree_after);
        }
        ours.print();
        ours_runs.push(ours);

        change_project(&project);
        let baseline = restore_baseline(&artifact, work.path(), &url, &pg, &project).await;
        let tables_ok = same_tables(&url, &tables_before);
        println!(
            "  baseline: {:>7.2} s   (tar {:.2} s + pg_restore {:.2} s) + sha256sum -c {:.2} s \
             = {:.2} s   tables {}   checksums {}",
            baseline.without_checksums(),
            baseline.tar,
            baseline.pg_restore,
            baseline.checksums,
            baseline.with_checksums(),
            ok(tables_ok),
            ok(baseline.checksums_ok)
        );
        baseline.print_activity();
        baseline_runs.push(baseline);
    }

    let ours = ours_runs
        .iter()
        .map(|r| r.seconds)
        .fold(f64::INFINITY, f64::min);
    let with = baseline_runs
        .iter()
        .map(Baseline::with_checksums)
        .fold(f64::INFINITY, f64::min);
    let without = baseline_runs
        .iter()
        .map(Baseline::without_checksums)
        .fold(f64::INFINITY, f64::min);
    let peak_sampled = ours_runs.iter().map(|r| r.peak_sampled).max().unwrap_or(0);
    let peak_hwm = ours_runs.iter().map(|r| r.peak_hwm).max().unwrap_or(0);
    let best = if args.runs > 1 { " (best of runs)" } else { "" };
    println!("\nsummary, scale {} on {nproc} cores{best}:", args.scale);
    println!(
        "  database {:.1} MiB, {} files ({:.1} MiB), artifact {:.1} MiB",
        db_bytes as f64 / MIB,
        file_count,
        file_bytes as f64 / MIB,
        artifact_bytes as f64 / MIB
    );
    println!("  ours                                {ours:>7.2} s");
    println!(
        "  baseline, checksums included        {with:>7.2} s   ours/baseline = {:.2}  (target <= 1.2)",
        ours / with
    );
    println!(
        "  baseline, tar + pg_restore only     {without:>7.2} s   ours/baseline = {:.2}",
        ours / without
    );
    println!(
        "  worker (API process) peak RSS       {:>7.1} MiB (VmHWM), {:.1} MiB sampled every 50 ms \
         (target <= 100); before the restore: {:.1} MiB peak (VmHWM), {:.1} MiB at its start",
        peak_hwm as f64 / 1024.0,
        peak_sampled as f64 / 1024.0,
        ours_runs[0].hwm_before as f64 / 1024.0,
        ours_runs[0].rss_before as f64 / 1024.0
    );
    drop(app);
}

fn ok(good: bool) -> &'static str {
    if good { "OK" } else { "FAILED" }
}

/// Whether the tables are as `before`; a check that cannot run (its
/// `psql` panics, e.g. the session was ended) counts as failed, and the
/// benchmark goes on.
fn same_tables(url: &str, before: &[String]) -> bool {
    std::panic::catch_unwind(|| table_fingerprints(url)).is_ok_and(|now| now == before)
}

fn print_first_difference(before: &[String], after: &[String]) {
    let missing = before.iter().find(|l| !after.contains(l));
    let extra = after.iter().find(|l| !before.contains(l));
    println!("            first line lost: {missing:?}\n            first line new:  {extra:?}");
}

/// A little change, so that the restore has work: rows deleted and
/// updated, storage objects deleted, one added.
fn change_project(project: &RefProject) {
    psql(
        &project.database.url,
        "DELETE FROM public.comments WHERE id % 10 = 0; \
         UPDATE public.posts SET title = 'changed' WHERE id % 100 = 0; \
         DELETE FROM storage.objects WHERE ctid IN (SELECT ctid FROM storage.objects LIMIT 5);",
    );
    for (path, _) in project.objects.iter().take(5) {
        let _ = std::fs::remove_file(project.root.path().join(path));
    }
    let added = project
        .root
        .path()
        .join("volumes/storage/stub/stub/documents/added-after-the-backup.txt");
    std::fs::create_dir_all(&added).unwrap();
    std::fs::write(added.join("v1"), "new\n").unwrap();
}

async fn download(app: &TestApp, backup_id: &str, to: &Path) {
    let mut response = app
        .get(&format!("/api/v1/backups/{backup_id}/download"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut file = std::io::BufWriter::new(std::fs::File::create(to).unwrap());
    while let Some(chunk) = response.chunk().await.unwrap() {
        file.write_all(&chunk).unwrap();
    }
    file.flush().unwrap();
}

/// One sample of a process's memory, KiB: seconds from the start, `VmRSS`,
/// and its anonymous and file-backed parts.
#[derive(Clone, Copy, Default)]
struct RssSample {
    at: f64,
    rss: u64,
    anon: u64,
    file: u64,
}

/// Samples a process's memory every 50 ms until stopped.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<RssSample>> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut samples = Vec::new();
        loop {
            let done = stop.load(Ordering::Relaxed);
            samples.push(RssSample {
                at: started.elapsed().as_secs_f64(),
                rss: status_kib(pid, "VmRSS"),
                anon: status_kib(pid, "RssAnon"),
                file: status_kib(pid, "RssFile"),
            });
            if done {
                return samples;
            }
            std::thread::sleep(SAMPLE);
        }
    })
}

/// What kind of work was seen, how often, and when first and last.
#[derive(Default)]
struct Activity {
    /// kind → (samples, first seen, last seen), seconds from the start.
    seen: BTreeMap<String, (u32, f64, f64)>,
}

impl Activity {
    fn print(&self) {
        let mut rows: Vec<_> = self.seen.iter().collect();
        rows.sort_by(|a, b| a.1.1.total_cmp(&b.1.1));
        for (what, (n, first, last)) in rows {
            println!(
                "              {:>6.2} s  seen {first:>6.2} .. {last:>6.2} s  {what}",
                *n as f64 * SAMPLE.as_secs_f64()
            );
        }
    }
}

/// Samples, every 50 ms, what the sessions on `database` are doing (one
/// sample is about 50 ms of it).
fn sample_activity(
    pg: sqlx::PgPool,
    database: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Activity> {
    tokio::spawn(async move {
        let mut activity = Activity::default();
        let started = Instant::now();
        let mut ticker = tokio::time::interval(SAMPLE);
        while !stop.load(Ordering::Relaxed) {
            ticker.tick().await;
            type Row = (
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            );
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT state, wait_event_type, wait_event, query FROM pg_stat_activity \
                 WHERE datname = $1 AND backend_type = 'client backend' \
                 AND pid <> pg_backend_pid()",
            )
            .bind(&database)
            .fetch_all(&pg)
            .await
            .unwrap_or_default();
            let at = started.elapsed().as_secs_f64();
            for (state, wait_type, wait, query) in rows {
                let (n, _, last) = activity
                    .seen
                    .entry(classify(state, wait_type, wait, query))
                    .or_insert((0, at, at));
                *n += 1;
                *last = at;
            }
        }
        activity
    })
}

fn classify(
    state: Option<String>,
    wait_type: Option<String>,
    wait: Option<String>,
    query: Option<String>,
) -> String {
    let state = state.unwrap_or_default();
    let query = query.unwrap_or_default();
    let q = query.trim_start();
    if state.starts_with("idle in transaction") {
        return "idle in transaction (waiting for its client)".into();
    }
    if state != "active" {
        return format!("{state} (between statements)");
    }
    let what = if q.starts_with("COPY ") {
        "COPY (table data)".to_string()
    } else if q.starts_with("CREATE INDEX") || q.starts_with("CREATE UNIQUE INDEX") {
        "CREATE INDEX".into()
    } else if q.contains("FOREIGN KEY") {
        "ADD FOREIGN KEY (checks every row)".into()
    } else if q.starts_with("ALTER TABLE") && (q.contains("PRIMARY KEY") || q.contains("UNIQUE")) {
        "ADD PRIMARY KEY / UNIQUE (builds an index)".into()
    } else if q.starts_with("REFRESH MATERIALIZED VIEW") {
        "REFRESH MATERIALIZED VIEW".into()
    } else if q.starts_with("DO $supascale$") || q.starts_with("DROP") {
        "dropping what the target has".into()
    } else if q.starts_with("COMMIT") {
        "COMMIT".into()
    } else {
        format!(
            "other ({})",
            q.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
        )
    };
    match (wait_type.as_deref(), wait.as_deref()) {
        (Some("Client"), Some("ClientRead")) => format!("{what}, waiting for the client's data"),
        (Some("Lock"), _) => format!("{what}, waiting for a lock"),
        (Some("IO"), Some(event)) => format!("{what}, I/O ({event})"),
        _ => what,
    }
}

struct Ours {
    seconds: f64,
    rss_before: u64,
    hwm_before: u64,
    peak_sampled: u64,
    peak_hwm: u64,
    rss: Vec<RssSample>,
    cpu_own: f64,
    cpu_children: f64,
    /// (step, seconds after the request started, seconds it took).
    steps: Vec<(String, f64, f64)>,
    activity: Activity,
    warnings: usize,
}

impl Ours {
    fn print(&self) {
        println!(
            "            API process RSS: {:.1} MiB at the start, peak {:.1} MiB (VmHWM reset \
             before; {:.1} MiB sampled every 50 ms); before the restore its peak was {:.1} MiB",
            self.rss_before as f64 / 1024.0,
            self.peak_hwm as f64 / 1024.0,
            self.peak_sampled as f64 / 1024.0,
            self.hwm_before as f64 / 1024.0
        );
        println!(
            "            CPU: API process {:.2} s, its pg_restore/psql children {:.2} s; {} warning(s)",
            self.cpu_own, self.cpu_children, self.warnings
        );
        println!(
            "            steps (start after the request, duration; the API process's peak RSS \
             in it, sampled: anonymous + file-backed):"
        );
        for (i, (step, at, took)) in self.steps.iter().enumerate() {
            if i + 1 == self.steps.len() {
                println!("              {at:>6.2} s            {step}");
                continue;
            }
            let peak = self
                .rss
                .iter()
                .filter(|s| s.at >= *at && s.at <= at + took)
                .max_by_key(|s| s.rss);
            let memory = peak.map_or(String::new(), |p| {
                format!(
                    "{:>6.1} MiB ({:.1} + {:.1})",
                    p.rss as f64 / 1024.0,
                    p.anon as f64 / 1024.0,
                    p.file as f64 / 1024.0
                )
            });
            println!("              {at:>6.2} s  {took:>6.2} s  {memory:<26} {step}");
        }
        println!("            the restoring session on PostgreSQL, sampled every 50 ms:");
        self.activity.print();
    }
}

async fn restore_ours(
    app: &TestApp,
    pid: u32,
    backup_id: &str,
    control: &ControlPlane,
    pg: &sqlx::PgPool,
    project: &RefProject,
) -> Ours {
    let rss_before = status_kib(pid, "VmRSS");
    let hwm_before = status_kib(pid, "VmHWM");
    // Writing 5 to clear_refs resets the peak to the current RSS.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let cpu_before = cpu_seconds(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let rss = sample_rss(pid, stop.clone());
    let activity = sample_activity(pg.clone(), project.database.name.clone(), stop.clone());
    let requested = chrono::Utc::now();
    let started = Instant::now();
    let response = app
        .post(&format!("/api/v1/backups/{backup_id}/restore"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let rss = rss.join().unwrap();
    let peak_sampled = rss.iter().map(|s| s.rss).max().unwrap_or(0);
    let activity = activity.await.unwrap();
    let peak_hwm = status_kib(pid, "VmHWM");
    let cpu_after = cpu_seconds(pid);
    if status != 200 || body["restore"]["status"] != "completed" {
        println!("  ours: the restore did not complete ({status}): {body}");
    }
    let warnings = body["restore"]["warnings"]
        .as_array()
        .map_or(0, |w| w.len());
    Ours {
        seconds,
        rss_before,
        hwm_before,
        peak_sampled,
        peak_hwm,
        rss,
        cpu_own: cpu_after.0 - cpu_before.0,
        cpu_children: cpu_after.1 - cpu_before.1,
        steps: steps_of_last_restore(control, requested).await,
        activity,
        warnings,
    }
}

/// The last restore job's steps from its events: when each began (after
/// `requested`) and how long it lasted (to the next one, or to the job's
/// end); the wait for a worker first.
async fn steps_of_last_restore(
    control: &ControlPlane,
    requested: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, f64, f64)> {
    let ControlPlane::Sqlite(pool) = control else {
        return Vec::new();
    };
    type Job = (String, String, Option<String>, Option<String>);
    let job: Option<Job> = sqlx::query_as(
        "SELECT id, enqueued_at, started_at, finished_at FROM jobs WHERE kind = 'restore' \
         ORDER BY enqueued_at DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .unwrap();
    let Some((job_id, enqueued, started, finished)) = job else {
        return Vec::new();
    };
    let events: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT event, data, created_at FROM job_events WHERE job_id = ? ORDER BY seq",
    )
    .bind(&job_id)
    .fetch_all(pool)
    .await
    .unwrap();
    let at = |text: &str| -> Option<f64> {
        let time = supascale_bench::parse_time(text)?;
        Some((time - requested).num_microseconds()? as f64 / 1e6)
    };
    let mut marks: Vec<(String, f64)> = Vec::new();
    if let (Some(e), Some(t)) = (at(&enqueued), started.as_deref().and_then(at)) {
        marks.push((
            "(request → the API has checked and enqueued it)".into(),
            0.0,
        ));
        marks.push(("(enqueued → a worker claims it)".into(), e));
        marks.push(("(claimed → first step)".into(), t));
    }
    for (event, data, created) in events {
        let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
        let name = match event.as_str() {
            "step" if data.get("bytesDone").is_some() => continue,
            "step" => format!(
                "{}: {}",
                data["step"].as_str().unwrap_or("?"),
                data["message"].as_str().unwrap_or("")
            ),
            "warning" => continue,
            other => format!("({other})"),
        };
        if let Some(t) = at(&created) {
            marks.push((name, t));
        }
    }
    let end = finished.as_deref().and_then(at);
    let mut steps = Vec::new();
    for (i, (name, t)) in marks.iter().enumerate() {
        let next = marks.get(i + 1).map(|m| m.1).or(end).unwrap_or(*t);
        steps.push((name.clone(), *t, next - t));
    }
    steps
}

struct Baseline {
    tar: f64,
    pg_restore: f64,
    checksums: f64,
    checksums_ok: bool,
    /// `sync --file-system` after the load: not part of the baseline (ours
    /// flushes the file system before it swaps the files in).
    sync: f64,
    activity: Activity,
    cpu_tar: f64,
    cpu_pg_restore: f64,
    cpu_checksums: f64,
}

impl Baseline {
    fn without_checksums(&self) -> f64 {
        self.tar + self.pg_restore
    }

    fn with_checksums(&self) -> f64 {
        self.tar + self.pg_restore + self.checksums
    }

    fn print_activity(&self) {
        println!(
            "            CPU: tar (and gzip) {:.2} s, pg_restore {:.2} s, sha256sum {:.2} s; \
             not counted: a `sync --file-system` after the load took {:.2} s",
            self.cpu_tar, self.cpu_pg_restore, self.cpu_checksums, self.sync
        );
        println!("            pg_restore's session on PostgreSQL, sampled every 50 ms:");
        self.activity.print();
    }
}

/// Runs a command to its end; its wall time and CPU time, and whether it
/// succeeded (its error output is shown if not).
fn timed(command: &mut Command) -> (f64, f64, bool) {
    let cpu = cpu_seconds(std::process::id()).1;
    let started = Instant::now();
    let out = command.output().expect("the program is installed");
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        println!(
            "  {command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n    ")
        );
    }
    let cpu = cpu_seconds(std::process::id()).1 - cpu;
    (seconds, cpu, out.status.success())
}

async fn restore_baseline(
    artifact: &Path,
    work: &Path,
    url: &str,
    pg: &sqlx::PgPool,
    project: &RefProject,
) -> Baseline {
    let out: PathBuf = work.join("extracted");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let (tar, cpu_tar, _) = timed(
        Command::new("tar")
            .arg("-xzf")
            .arg(artifact)
            .arg("-C")
            .arg(&out)
            .args(["--xattrs", "--xattrs-include=user.*"]),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let activity = sample_activity(pg.clone(), project.database.name.clone(), stop.clone());
    let dump = out.join("database/database.dump");
    let mut pg_restore = Command::new("pg_restore");
    pg_restore
        .args(["--clean", "--if-exists", "--single-transaction", "--dbname"])
        .arg(url)
        .arg(&dump);
    let (pg_restore, cpu_pg_restore, _) =
        tokio::task::spawn_blocking(move || timed(&mut pg_restore))
            .await
            .unwrap();
    stop.store(true, Ordering::Relaxed);
    let activity = activity.await.unwrap();
    let (sync, _, _) = timed(Command::new("sync").arg("--file-system").arg(&out));

    // What an operator checks to match ours: every file against the
    // manifest's SHA-256 (the list is written before the clock starts).
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let mut list = String::new();
    for entry in &manifest.entries {
        if let (Some(sha256), "file") = (&entry.sha256, entry.kind.as_str()) {
            list.push_str(&format!("{sha256}  {}\n", entry.path));
        }
    }
    let list_path = work.join("SHA256SUMS");
    std::fs::write(&list_path, list).unwrap();
    let (checksums, cpu_checksums, checksums_ok) = timed(
        Command::new("sha256sum")
            .args(["-c", "--quiet", "--strict"])
            .arg(&list_path)
            .current_dir(&out),
    );
    Baseline {
        tar,
        pg_restore,
        checksums,
        checksums_ok,
        sync,
        activity,
        cpu_tar,
        cpu_pg_restore,
        cpu_checksums,
    }
}
