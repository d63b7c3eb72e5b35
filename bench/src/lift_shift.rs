//! Lift & shift (`POST /api/v1/projects/{id}/import/lift-shift`) beside
//! what an operator does without us.
//!
//! 1. Storage: `--objects` objects of `--bytes` together, served by the
//!    Supabase Storage test double (`supascale_tests::cloud_double`, in this
//!    process), migrated with `components: ["storage"]` into a fresh
//!    project through the real API on the embedded default (SQLite,
//!    in-process workers, `SUPASCALE_LIFT_SHIFT_CONCURRENCY` =
//!    `--concurrency`), timed from the POST (`?async=true`) to the job's
//!    completion; the API process's peak RSS meanwhile (`VmHWM`, reset just
//!    before, and `VmRSS` sampled every 20 ms). Then the same objects
//!    fetched by `curl --parallel --parallel-max <concurrency>` into a
//!    folder (one config file of `url`/`output` pairs). Ours as a share of
//!    curl's rate.
//! 2. Database: the reference project (`refproject::make(scale, seed,
//!    false)`) as the source, migrated with `components: ["database"]`
//!    into a fresh project, timed from the POST to the job's completion;
//!    then the official guide's pipeline (`supascale_tests::
//!    official_pipeline`: the Supabase CLI's dump scripts, then `psql
//!    --single-transaction`) into another fresh project. Ours / official,
//!    and the row counts of every `public` table of both (and the source).
//!
//! Build and run (release):
//!   cargo build --release -p supascale-api -p supascale-worker -p supascale-bench
//!   scripts/install-test-tools   # the Supabase CLI, for the official pipeline
//!   target/release/bench-lift-shift [--objects 10000] [--bytes 1000000000]
//!     [--scale 10] [--seed 7] [--runs 1] [--concurrency 8]
//!     [--skip-storage] [--skip-database]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use supascale_bench::{count_files, cpu_seconds, load_average, status_kib};
use supascale_tests::cloud_double::{Bucket, CloudDouble, Object, sample_objects};
use supascale_tests::refproject::{self, RefProject};
use supascale_tests::{Backend, ControlPlane, Launch, TestApp, official_pipeline, psql};

struct Args {
    objects: usize,
    bytes: u64,
    scale: f64,
    seed: u64,
    runs: usize,
    concurrency: usize,
    skip_storage: bool,
    skip_database: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        objects: 10_000,
        bytes: 1_000_000_000,
        scale: 10.0,
        seed: 7,
        runs: 1,
        concurrency: 8,
        skip_storage: false,
        skip_database: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--skip-storage" => {
                args.skip_storage = true;
                continue;
            }
            "--skip-database" => {
                args.skip_database = true;
                continue;
            }
            _ => {}
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--objects" => args.objects = value.parse().expect("--objects N"),
            "--bytes" => args.bytes = value.parse().expect("--bytes N"),
            "--scale" => args.scale = value.parse().expect("--scale X"),
            "--seed" => args.seed = value.parse().expect("--seed N"),
            "--runs" => args.runs = value.parse().expect("--runs N"),
            "--concurrency" => args.concurrency = value.parse().expect("--concurrency N"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(args.runs >= 1, "--runs is at least 1");
    assert!(args.objects >= 1, "--objects is at least 1");
    assert!(
        (1..=64).contains(&args.concurrency),
        "--concurrency is 1 to 64 (as SUPASCALE_LIFT_SHIFT_CONCURRENCY)"
    );
    args
}

const MIB: f64 = 1024.0 * 1024.0;
const MB: f64 = 1_000_000.0;
/// How often the samplers look (RSS, CPU, the double's counters).
const SAMPLE: Duration = Duration::from_millis(20);
/// How often the job is polled through the API.
const POLL: Duration = Duration::from_millis(50);
/// The bucket the storage part's objects are in.
const BUCKET: &str = "media";

#[tokio::main]
async fn main() {
    let args = parse_args();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let storage = if args.skip_storage {
        "storage skipped".to_string()
    } else {
        format!(
            "storage {} objects / {:.1} MB",
            args.objects,
            args.bytes as f64 / MB
        )
    };
    let database = if args.skip_database {
        "database skipped".to_string()
    } else {
        format!("database scale {}", args.scale)
    };
    println!(
        "lift-shift: {storage}, {database} (seed {}), concurrency {}, {} run(s)",
        args.seed, args.concurrency, args.runs
    );
    println!("machine: nproc {nproc}, load average {}", load_average());

    let launch = supascale_bench::with_bench_env(Launch::default().env(
        "SUPASCALE_LIFT_SHIFT_CONCURRENCY",
        args.concurrency.to_string(),
    ));
    let app = TestApp::spawn_with(Backend::Sqlite, launch).await;
    let control = app.control_plane().await;
    println!(
        "API: pid {}, RSS {:.1} MiB at its start (embedded default: SQLite, in-process workers)",
        app.pid(),
        status_kib(app.pid(), "VmRSS") as f64 / 1024.0
    );

    let storage = if args.skip_storage {
        None
    } else {
        Some(storage_part(&app, &control, &args).await)
    };
    let database = if args.skip_database {
        None
    } else {
        Some(database_part(&app, &control, &args).await)
    };

    let median_note = if args.runs > 1 {
        " (medians of the runs)"
    } else {
        ""
    };
    println!("\nsummary on {nproc} cores{median_note}:");
    if let Some(s) = &storage {
        let ours = median(s.ours.iter().map(|r| r.seconds).collect());
        let curl = median(s.curl.iter().map(|r| r.seconds).collect());
        let hwm = s.ours.iter().map(|r| r.peak_hwm).max().unwrap_or(0);
        let sampled = s.ours.iter().map(|r| r.peak_sampled).max().unwrap_or(0);
        println!(
            "  storage, {} objects, {:.1} MB:",
            args.objects,
            s.total_bytes as f64 / MB
        );
        println!(
            "    ours   {ours:>8.2} s  {:>8.1} objects/s  {:>7.1} MB/s",
            args.objects as f64 / ours,
            s.total_bytes as f64 / MB / ours
        );
        println!(
            "    curl   {curl:>8.2} s  {:>8.1} objects/s  {:>7.1} MB/s",
            args.objects as f64 / curl,
            s.total_bytes as f64 / MB / curl
        );
        println!("    ours / curl rate = {:.2}  (target >= 0.8)", curl / ours);
        let checked = median(s.curl.iter().map(|r| r.checked()).collect());
        println!(
            "    curl, then every file's MD5 and a sync, as ours does  {checked:>8.2} s: \
             ours / that = {:.2}",
            checked / ours
        );
        println!(
            "    API process (API + workers) peak RSS {:.1} MiB (VmHWM, reset before each run), \
             {:.1} MiB (VmRSS sampled every 20 ms)  (target < 150 MiB)",
            hwm as f64 / 1024.0,
            sampled as f64 / 1024.0
        );
    }
    if let Some(d) = &database {
        let ours = median(d.runs.iter().map(|r| r.ours).collect());
        let dump = median(d.runs.iter().map(|r| r.dump).collect());
        let load = median(d.runs.iter().map(|r| r.load).collect());
        let official = median(d.runs.iter().map(|r| r.dump + r.load).collect());
        println!(
            "  database, scale {} ({:.1} MiB source database):",
            args.scale,
            d.database_bytes as f64 / MIB
        );
        println!("    ours                     {ours:>8.2} s");
        println!(
            "    official (dump + load)   {official:>8.2} s  (dump {dump:.2} s, load {load:.2} s)"
        );
        println!(
            "    ours / official = {:.2}  (target <= 1.0)",
            ours / official
        );
        println!(
            "    row counts of the public tables: {}",
            if d.runs.iter().all(|r| r.rows_ok) {
                "the same in both, and as the source's (OK)"
            } else {
                "DIFFERENT (see above)"
            }
        );
    }
    drop(app);
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------- storage

struct StorageResults {
    total_bytes: u64,
    ours: Vec<OursStorage>,
    curl: Vec<CurlRun>,
}

async fn storage_part(app: &TestApp, control: &ControlPlane, args: &Args) -> StorageResults {
    println!("\n== storage ==");
    let objects = sample_objects(BUCKET, args.objects, args.bytes, args.seed);
    let double = Arc::new(
        CloudDouble::builder()
            .seed(args.seed)
            .bucket(Bucket::new(BUCKET))
            .objects(objects)
            .list_v2(true)
            .start()
            .await,
    );
    let warmed = Instant::now();
    double.warm_up().await;
    let objects = double.objects();
    let total_bytes = double.total_bytes();
    let empty = objects.iter().filter(|o| o.size == 0).count();
    let largest = objects.iter().map(|o| o.size).max().unwrap_or(0);
    println!(
        "source: the Cloud double at {}, bucket {BUCKET}: {} objects ({} empty, largest {:.1} MB), \
         {:.1} MB; their MD5s computed beforehand in {:.1} s (not timed)",
        double.base_url(),
        objects.len(),
        empty,
        largest as f64 / MB,
        total_bytes as f64 / MB,
        warmed.elapsed().as_secs_f64()
    );
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("curl.config");
    write_curl_config(&double, &objects, &config);

    let mut results = StorageResults {
        total_bytes,
        ours: Vec::new(),
        curl: Vec::new(),
    };
    // Every target and download folder stays until the end: removing
    // thousands of files slows the next run's file creations on this
    // machine's ext4 (see bench/README.md, bench-jobs-pipeline).
    let mut keep: Vec<RefProject> = Vec::new();
    for run in 1..=args.runs {
        println!(
            "\nrun {run} of {}  (load average {})",
            args.runs,
            load_average()
        );
        let target = refproject::make_fresh(args.seed + 100 + run as u64).await;
        let id = format!("storage-{run}");
        refproject::register(app, &target, &id).await;
        // Neither side pays for the other's writeback (nor for the new
        // project's): the file system is synced before each, not timed.
        settle(work.path());
        let ours = storage_ours(app, control, &double, &target, &id).await;
        ours.print(args.objects, total_bytes);
        results.ours.push(ours);
        keep.push(target);

        let dir = work.path().join("curl").join(run.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let run_config = work.path().join(format!("curl-{run}.config"));
        std::fs::write(
            &run_config,
            std::fs::read_to_string(&config)
                .unwrap()
                .replace("@DIR@", dir.to_str().unwrap()),
        )
        .unwrap();
        settle(work.path());
        let curl = storage_curl(&double, &objects, &run_config, &dir, args.concurrency).await;
        curl.print(args.objects, total_bytes);
        results.curl.push(curl);
    }
    println!(
        "\n  (ours checks each object's size and MD5, writes its xattrs, syncs the file system \
         before the objects are swapped in, and writes their storage.objects rows; curl writes \
         the bytes only)"
    );
    drop(keep);
    results
}

/// Flushes the file system holding `dir` (its dirty pages and journal).
fn settle(dir: &Path) {
    let _ = std::process::Command::new("sync")
        .arg("--file-system")
        .arg(dir)
        .status();
}

/// A percent-encoded path segment (RFC 3986's unreserved characters kept),
/// as supabase-js and our client encode each segment of a key.
fn encode_segment(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// curl's config: the two headers, then a `url`/`output` pair per object
/// (`@DIR@` is the download folder, put in for each run).
fn write_curl_config(double: &CloudDouble, objects: &[Object], config: &Path) {
    let key = double.service_role_key();
    let mut text = format!(
        "fail\nheader = \"apikey: {key}\"\n\
         header = \"Authorization: Bearer {key}\"\n"
    );
    for (n, object) in objects.iter().enumerate() {
        let path: Vec<String> = object.key.split('/').map(encode_segment).collect();
        text.push_str(&format!(
            "url = \"{}/storage/v1/object/authenticated/{}/{}\"\noutput = \"@DIR@/{n}\"\n",
            double.base_url(),
            encode_segment(&object.bucket),
            path.join("/")
        ));
    }
    std::fs::write(config, text).unwrap();
}

/// What the samplers saw during one transfer.
#[derive(Default, Clone)]
struct Trace {
    /// (seconds after the start, VmRSS KiB) of the API process.
    rss: Vec<(f64, u64)>,
    /// Seconds after the start: the double's first request, first listing
    /// request, first download begun, and every download's last byte sent.
    first_request: Option<f64>,
    first_listing: Option<f64>,
    first_download: Option<f64>,
    all_downloaded: Option<f64>,
    /// The API process's CPU seconds (own) at those two moments.
    cpu_at_first_download: Option<f64>,
    cpu_at_all_downloaded: Option<f64>,
    /// (seconds after the start, files being downloaded into): the
    /// downloader's open files that the watch matches.
    open_files: Vec<(f64, usize)>,
}

impl Trace {
    /// The mean and the most files being downloaded into at once, between
    /// the first download and the last byte sent.
    fn in_flight(&self) -> Option<(f64, usize)> {
        let (first, last) = (self.first_download?, self.all_downloaded?);
        let seen: Vec<usize> = self
            .open_files
            .iter()
            .filter(|(at, _)| *at >= first && *at <= last)
            .map(|(_, n)| *n)
            .collect();
        if seen.is_empty() {
            return None;
        }
        Some((
            seen.iter().sum::<usize>() as f64 / seen.len() as f64,
            seen.iter().copied().max().unwrap_or(0),
        ))
    }
}

/// Which of a process's open files are downloads in flight.
type Watch = (u32, Box<dyn Fn(&str) -> bool + Send>);

/// How many of `pid`'s open files `matches` (by their path).
fn open_files(pid: u32, matches: &dyn Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.to_str().is_some_and(matches))
        .count()
}

/// Samples the API process's RSS and CPU (`pid`, if any), the downloads in
/// flight (`watch`) and the double's counters every 20 ms until `stop`.
fn sample(
    pid: Option<u32>,
    watch: Watch,
    double: Arc<CloudDouble>,
    objects: u64,
    total_bytes: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Trace> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut trace = Trace::default();
        let stats = double.stats();
        loop {
            let done = stop.load(Ordering::Relaxed);
            let at = started.elapsed().as_secs_f64();
            if let Some(pid) = pid {
                trace.rss.push((at, status_kib(pid, "VmRSS")));
            }
            trace.open_files.push((at, open_files(watch.0, &*watch.1)));
            let cpu = || pid.map(|p| cpu_seconds(p).0);
            if trace.first_request.is_none() && stats.total_requests() > 0 {
                trace.first_request = Some(at);
            }
            if trace.first_listing.is_none()
                && stats.requests(supascale_tests::cloud_double::Route::ListV2) > 0
            {
                trace.first_listing = Some(at);
            }
            if trace.first_download.is_none()
                && stats.requests(supascale_tests::cloud_double::Route::Download) > 0
            {
                trace.first_download = Some(at);
                trace.cpu_at_first_download = cpu();
            }
            if trace.all_downloaded.is_none()
                && stats.bytes_sent() >= total_bytes
                && stats.downloads_completed() >= objects
            {
                trace.all_downloaded = Some(at);
                trace.cpu_at_all_downloaded = cpu();
            }
            if done {
                return trace;
            }
            std::thread::sleep(SAMPLE);
        }
    })
}

struct OursStorage {
    seconds: f64,
    ok: bool,
    check: String,
    rss_before: u64,
    peak_hwm: u64,
    peak_sampled: u64,
    cpu_own: f64,
    cpu_children: f64,
    /// The API process's own CPU seconds (absolute) when the job ended.
    cpu_end: f64,
    cpu_bench: f64,
    trace: Trace,
    sessions: Sessions,
    steps: Vec<(String, f64, f64)>,
}

impl OursStorage {
    fn print(&self, objects: usize, bytes: u64) {
        print_rate("ours", self.seconds, objects, bytes, self.ok);
        println!("         {}", self.check);
        println!(
            "         API process RSS: {:.1} MiB before, peak {:.1} MiB (VmHWM reset just \
             before), {:.1} MiB (VmRSS sampled every 20 ms)",
            self.rss_before as f64 / 1024.0,
            self.peak_hwm as f64 / 1024.0,
            self.peak_sampled as f64 / 1024.0
        );
        println!(
            "         CPU: API process {:.2} s (its children {:.2} s); this process (the double \
             serving, the samplers) {:.2} s",
            self.cpu_own, self.cpu_children, self.cpu_bench
        );
        let t = &self.trace;
        let end = self.seconds;
        if let (Some(first), Some(last)) = (t.first_download, t.all_downloaded) {
            let cpu = match (t.cpu_at_first_download, t.cpu_at_all_downloaded) {
                (Some(a), Some(b)) => format!(
                    ", API CPU {:.2} s ({:.0} % of a core)",
                    b - a,
                    100.0 * (b - a) / (last - first).max(1e-9)
                ),
                _ => String::new(),
            };
            let peak_in = |from: f64, to: f64| {
                t.rss
                    .iter()
                    .filter(|(at, _)| *at >= from && *at <= to)
                    .map(|(_, r)| *r)
                    .max()
                    .unwrap_or(0) as f64
                    / 1024.0
            };
            println!(
                "         where the time went (seen from the double's side, sampled every 20 ms):"
            );
            println!(
                "           {:>7.2} s  request → first call to the source (key check)",
                t.first_request.unwrap_or(0.0)
            );
            if let Some(listing) = t.first_listing {
                println!(
                    "           {:>7.2} s  → the first listing request",
                    listing - t.first_request.unwrap_or(0.0)
                );
                println!(
                    "           {:>7.2} s  listing (→ the first download)",
                    first - listing
                );
            }
            println!(
                "           {:>7.2} s  downloading (first download → every byte sent){cpu}, \
                 peak RSS {:.1} MiB",
                last - first,
                peak_in(first, last)
            );
            if let Some((mean, most)) = t.in_flight() {
                println!(
                    "                      objects being written (open .part files, sampled): \
                     {mean:.1} on average, at most {most}"
                );
            }
            let cpu_after = t.cpu_at_all_downloaded.map_or(String::new(), |c| {
                format!(", API CPU {:.2} s", self.cpu_end - c)
            });
            println!(
                "           {:>7.2} s  after the downloads: staging, rows, swap, job end \
                 (peak RSS {:.1} MiB{cpu_after})",
                end - last,
                peak_in(last, end + 1.0)
            );
        }
        if !self.sessions.is_empty() {
            println!(
                "         the job's sessions on the project's database (pg_stat_activity every \
                 20 ms; first and last seen after the request):"
            );
            print_sessions(&self.sessions);
        }
        if !self.steps.is_empty() {
            println!(
                "         the job's steps (from its events; start after the request, duration):"
            );
            for (name, at, took) in &self.steps {
                println!("           {at:>7.2} s  {took:>7.2} s  {name}");
            }
        }
    }
}

async fn storage_ours(
    app: &TestApp,
    control: &ControlPlane,
    double: &Arc<CloudDouble>,
    target: &RefProject,
    id: &str,
) -> OursStorage {
    let pid = app.pid();
    double.stats().reset();
    let objects = double.objects().len() as u64;
    let total_bytes = double.total_bytes();
    let body = json!({
        "sourceUrl": double.base_url(),
        "serviceRoleKey": double.service_role_key(),
        "databasePassword": "unused",
        "components": ["storage"],
    });
    let rss_before = status_kib(pid, "VmRSS");
    // Writing 5 to clear_refs resets the peak to the current RSS.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let cpu_before = cpu_seconds(pid);
    let bench_before = cpu_seconds(std::process::id()).0;
    let stop = Arc::new(AtomicBool::new(false));
    // The fetcher writes each object into `<hash>.part` until it is whole.
    let sampler = sample(
        Some(pid),
        (pid, Box::new(|path: &str| path.ends_with(".part"))),
        double.clone(),
        objects,
        total_bytes,
        stop.clone(),
    );
    let sessions = sample_sessions(target.database.name.clone(), stop.clone());
    let requested = chrono::Utc::now();
    let (job, seconds) = post_and_wait(app, control, id, &body).await;
    stop.store(true, Ordering::Relaxed);
    let trace = sampler.join().unwrap();
    let sessions = sessions.await.unwrap_or_default();
    let peak_hwm = status_kib(pid, "VmHWM");
    let cpu_after = cpu_seconds(pid);
    let cpu_bench = cpu_seconds(std::process::id()).0 - bench_before;
    let job_id = job["id"].as_str().unwrap_or_default().to_string();
    let summary = job_summary(control, &job_id).await;
    let storage = &summary["storage"];
    let (files, bytes) = count_files(&target.root.path().join("volumes/storage/stub/stub"));
    let rows: u64 = psql(&target.database.url, "SELECT count(*) FROM storage.objects")
        .parse()
        .unwrap_or(0);
    let ok = job["status"] == "completed"
        && storage["files"] == objects
        && storage["size"] == total_bytes
        && files == objects
        && bytes == total_bytes
        && rows == objects;
    let check = format!(
        "job {} ({} warning(s)); summary.storage {storage}; the project has {files} files of \
         {bytes} bytes and {rows} storage.objects rows",
        job["status"].as_str().unwrap_or("?"),
        job["warnings"].as_array().map_or(0, |w| w.len()),
    );
    if !ok {
        println!("  ours did not move everything: {job}");
    }
    let peak_sampled = trace.rss.iter().map(|(_, r)| *r).max().unwrap_or(0);
    OursStorage {
        seconds,
        ok,
        check,
        rss_before,
        peak_hwm,
        peak_sampled,
        cpu_own: cpu_after.0 - cpu_before.0,
        cpu_children: cpu_after.1 - cpu_before.1,
        cpu_end: cpu_after.0,
        cpu_bench,
        trace,
        sessions,
        steps: job_steps(control, &job_id, requested).await,
    }
}

/// What sessions on a database were doing: label → (samples, first seen,
/// last seen), seconds after the start.
type Sessions = std::collections::BTreeMap<String, (u32, f64, f64)>;

fn print_sessions(sessions: &Sessions) {
    let mut rows: Vec<_> = sessions.iter().collect();
    rows.sort_by(|a, b| a.1.1.total_cmp(&b.1.1));
    for (what, (n, first, last)) in rows {
        println!("           {first:>7.2} .. {last:>7.2} s  ({n:>4} samples)  {what}");
    }
}

/// Samples, every 20 ms until `stop`, what the client sessions on
/// `database` are doing: the state and the first words of the statement.
fn sample_sessions(database: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Sessions> {
    tokio::spawn(async move {
        let mut seen = Sessions::new();
        let Ok(pg) = sqlx::PgPool::connect(supascale_tests::PG_ADMIN_URL).await else {
            return seen;
        };
        let started = Instant::now();
        let mut ticker = tokio::time::interval(SAMPLE);
        while !stop.load(Ordering::Relaxed) {
            ticker.tick().await;
            let rows: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT state, query FROM pg_stat_activity WHERE datname = $1 \
                 AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .bind(&database)
            .fetch_all(&pg)
            .await
            .unwrap_or_default();
            let at = started.elapsed().as_secs_f64();
            for (state, query) in rows {
                let words = query
                    .unwrap_or_default()
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ");
                let label = match state.as_deref().unwrap_or("") {
                    "active" => format!("running {words}"),
                    "idle" => "idle (no transaction)".to_string(),
                    other => format!("{other}, after {words}"),
                };
                let (n, _, last) = seen.entry(label).or_insert((0, at, at));
                *n += 1;
                *last = at;
            }
        }
        pg.close().await;
        seen
    })
}

/// `POST …/import/lift-shift?async=true` of `body` into project `id`, then
/// the job polled every 50 ms until it ends; the job and the seconds from
/// the request to its end (the job row's `finished_at` when it has one,
/// else when the poll saw it end).
async fn post_and_wait(
    app: &TestApp,
    control: &ControlPlane,
    id: &str,
    body: &Value,
) -> (Value, f64) {
    let requested = chrono::Utc::now();
    let started = Instant::now();
    let response = app
        .post(&format!(
            "/api/v1/projects/{id}/import/lift-shift?async=true"
        ))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_string);
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 202, "{answer}");
    let location = location.expect("a Location header");
    let job = loop {
        let (_, job) = app.get_json(&location).await;
        if job["status"] == "completed" || job["status"] == "failed" {
            break job;
        }
        tokio::time::sleep(POLL).await;
    };
    let seen = started.elapsed().as_secs_f64();
    // The API writes whole seconds; the job row has the exact time.
    let job_id = job["id"].as_str().unwrap_or_default();
    let finished = control
        .text(&format!(
            "SELECT finished_at FROM jobs WHERE id = '{job_id}'"
        ))
        .await
        .unwrap_or_default();
    let seconds = supascale_bench::parse_time(&finished)
        .and_then(|end| (end - requested).num_microseconds())
        .map(|us| us as f64 / 1e6)
        .filter(|s| *s > 0.0 && *s <= seen)
        .unwrap_or(seen);
    (job, seconds)
}

/// The job's `result.summary` (from the control plane: the job's JSON view
/// does not carry its result).
async fn job_summary(control: &ControlPlane, job_id: &str) -> Value {
    let text = control
        .text(&format!(
            "SELECT coalesce(result, '{{}}') FROM jobs WHERE id = '{job_id}'"
        ))
        .await
        .unwrap_or_default();
    serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)["summary"].clone()
}

/// The job's steps from its events: when each began (after `requested`)
/// and how long it lasted (to the next one, or to the job's end); the
/// wait for a worker first. Repeated progress of one step (`Loading …`,
/// `Downloading files (… MB)`) is one line, with how many events it had.
async fn job_steps(
    control: &ControlPlane,
    job_id: &str,
    requested: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, f64, f64)> {
    let ControlPlane::Sqlite(pool) = control else {
        return Vec::new();
    };
    type Job = (String, Option<String>, Option<String>);
    let job: Option<Job> =
        sqlx::query_as("SELECT enqueued_at, started_at, finished_at FROM jobs WHERE id = ?")
            .bind(job_id)
            .fetch_optional(pool)
            .await
            .unwrap_or(None);
    let Some((enqueued, started, finished)) = job else {
        return Vec::new();
    };
    let events: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT event, data, created_at FROM job_events WHERE job_id = ? ORDER BY seq",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let at = |text: &str| -> Option<f64> {
        let time = supascale_bench::parse_time(text)?;
        Some((time - requested).num_microseconds()? as f64 / 1e6)
    };
    let mut marks: Vec<(String, f64, usize)> = Vec::new();
    if let (Some(e), Some(t)) = (at(&enqueued), started.as_deref().and_then(at)) {
        marks.push(("(request → enqueued)".into(), 0.0, 1));
        marks.push(("(enqueued → a worker claims it)".into(), e, 1));
        marks.push(("(claimed → first step)".into(), t, 1));
    }
    for (event, data, created) in events {
        let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
        let name = match event.as_str() {
            "step" => {
                let message = data["message"].as_str().unwrap_or("");
                let message = if message.starts_with("Loading ") {
                    "Loading the tables' rows"
                } else if message.starts_with("Downloading files") {
                    "Downloading files"
                } else {
                    message
                };
                format!("{}: {message}", data["step"].as_str().unwrap_or("?"))
            }
            "warning" => continue,
            other => format!("({other})"),
        };
        let Some(t) = at(&created) else { continue };
        match marks.last_mut() {
            Some(last) if last.0 == name => last.2 += 1,
            _ => marks.push((name, t, 1)),
        }
    }
    let end = finished.as_deref().and_then(at);
    let mut steps = Vec::new();
    for (i, (name, t, n)) in marks.iter().enumerate() {
        let next = marks.get(i + 1).map(|m| m.1).or(end).unwrap_or(*t);
        let name = if *n > 1 {
            format!("{name} ({n} events)")
        } else {
            name.clone()
        };
        steps.push((name, *t, next - t));
    }
    steps
}

/// `  <label>:  <s>  <objects/s>  <MB/s>  OK|FAILED`, the first line of a
/// storage run.
fn print_rate(label: &str, seconds: f64, objects: usize, bytes: u64, ok: bool) {
    println!(
        "  {label}:  {:>8.2} s  {:>8.1} objects/s  {:>7.1} MB/s   {}",
        seconds,
        objects as f64 / seconds,
        bytes as f64 / MB / seconds,
        if ok { "OK" } else { "FAILED" }
    );
}

struct CurlRun {
    seconds: f64,
    ok: bool,
    check: String,
    cpu_curl: f64,
    cpu_bench: f64,
    peak_rss_curl: u64,
    sync: f64,
    /// Reading back and hashing every file afterwards (not counted).
    hashing: f64,
    trace: Trace,
}

impl CurlRun {
    /// curl's time with what ours does beside the download: every file's
    /// MD5 checked and the file system synced.
    fn checked(&self) -> f64 {
        self.seconds + self.hashing + self.sync
    }
}

impl CurlRun {
    fn print(&self, objects: usize, bytes: u64) {
        print_rate("curl", self.seconds, objects, bytes, self.ok);
        println!("         {}", self.check);
        println!(
            "         CPU: curl {:.2} s (peak RSS {:.1} MiB); this process (the double serving) \
             {:.2} s; not counted: a `sync --file-system` after it took {:.2} s",
            self.cpu_curl,
            self.peak_rss_curl as f64 / 1024.0,
            self.cpu_bench,
            self.sync
        );
        println!(
            "         not counted either: the MD5 of every file read back afterwards ({} threads) \
             took {:.2} s; curl + that + the sync = {:.2} s",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            self.hashing,
            self.checked()
        );
        if let (Some(first), Some(last)) = (self.trace.first_download, self.trace.all_downloaded) {
            println!(
                "         {:.2} s to the first download, {:.2} s downloading, {:.2} s after the \
                 last byte was sent",
                first,
                last - first,
                self.seconds - last
            );
            if let Some((mean, most)) = self.trace.in_flight() {
                println!(
                    "         objects being written (curl's open output files, sampled): {mean:.1} \
                     on average, at most {most}"
                );
            }
        }
    }
}

/// Peak RSS (KiB) and CPU seconds of a child that ended, from `wait4`.
fn wait4(pid: i32) -> (std::process::ExitStatus, u64, f64) {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; status and usage are valid for writes.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss as u64,
        seconds(usage.ru_utime) + seconds(usage.ru_stime),
    )
}

async fn storage_curl(
    double: &Arc<CloudDouble>,
    objects: &[Object],
    config: &Path,
    dir: &Path,
    concurrency: usize,
) -> CurlRun {
    double.stats().reset();
    let total_bytes: u64 = objects.iter().map(|o| o.size).sum();
    let bench_before = cpu_seconds(std::process::id()).0;
    let stop = Arc::new(AtomicBool::new(false));
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    // Spawned here and waited for on a blocking thread (wait4 gives its
    // CPU and peak RSS); the double serves from this runtime meanwhile.
    let child = std::process::Command::new("curl")
        // `--silent` leaves curl 7.88's parallel progress meter on.
        .args(["--no-progress-meter", "--parallel", "--parallel-max"])
        .arg(concurrency.to_string())
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .expect("curl is installed");
    let pid = child.id() as i32;
    let inside = format!("{}/", dir.display());
    let sampler = sample(
        None,
        (
            pid as u32,
            Box::new(move |path: &str| path.starts_with(&inside)),
        ),
        double.clone(),
        objects.len() as u64,
        total_bytes,
        stop.clone(),
    );
    let (status, peak_rss_curl, cpu_curl) = tokio::task::spawn_blocking(move || {
        let waited = wait4(pid);
        std::mem::forget(child);
        waited
    })
    .await
    .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let trace = sampler.join().unwrap();
    let cpu_bench = cpu_seconds(std::process::id()).0 - bench_before;
    let sync_started = Instant::now();
    let _ = std::process::Command::new("sync")
        .arg("--file-system")
        .arg(dir)
        .status();
    let sync = sync_started.elapsed().as_secs_f64();
    let (hashing, hashes_ok) = md5_of_files(double, objects, dir);

    // Every object's file with its size (curl creates no file for an empty
    // body with some versions: those are counted apart).
    let mut wrong = Vec::new();
    let mut missing_empty = 0;
    let mut bytes = 0;
    for (n, object) in objects.iter().enumerate() {
        match std::fs::metadata(dir.join(n.to_string())) {
            Ok(m) => {
                bytes += m.len();
                if m.len() != object.size {
                    wrong.push(format!(
                        "{} ({} of {} bytes)",
                        object.key,
                        m.len(),
                        object.size
                    ));
                }
            }
            Err(_) if object.size == 0 => missing_empty += 1,
            Err(_) => wrong.push(format!("{} (missing)", object.key)),
        }
    }
    let errors = std::fs::read_to_string(stderr.path()).unwrap_or_default();
    let ok = status.success() && wrong.is_empty() && bytes == total_bytes && hashes_ok;
    let mut check = format!(
        "curl exited with {status}; {} of {} bytes arrived; {} file(s) wrong",
        bytes,
        total_bytes,
        wrong.len()
    );
    if missing_empty > 0 {
        check.push_str(&format!(
            "; {missing_empty} empty object(s) left no file (curl creates none for an empty body)"
        ));
    }
    if !wrong.is_empty() {
        check.push_str(&format!("; first: {}", wrong[0]));
    }
    if !errors.trim().is_empty() {
        check.push_str(&format!(
            "; curl said: {}",
            errors.lines().take(3).collect::<Vec<_>>().join(" | ")
        ));
    }
    CurlRun {
        seconds,
        ok,
        check,
        cpu_curl,
        cpu_bench,
        peak_rss_curl,
        sync,
        hashing,
        trace,
    }
}

/// Seconds to read back and MD5 every file curl wrote, on as many threads
/// as there are cores (curl checks nothing; ours does this as the bytes
/// arrive), and whether every MD5 is the source's.
fn md5_of_files(double: &CloudDouble, objects: &[Object], dir: &Path) -> (f64, bool) {
    use md5::Digest as _;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let all_ok = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut ok = true;
                    for (n, object) in objects.iter().enumerate().skip(t).step_by(threads) {
                        let bytes = std::fs::read(dir.join(n.to_string())).unwrap_or_default();
                        let md5 = hex::encode(md5::Md5::digest(&bytes).as_slice());
                        ok &= md5 == double.expected_md5(&object.bucket, &object.key);
                    }
                    ok
                })
            })
            .collect();
        workers.into_iter().all(|w| w.join().unwrap())
    });
    (started.elapsed().as_secs_f64(), all_ok)
}

// --------------------------------------------------------------- database

struct DatabaseResults {
    database_bytes: u64,
    runs: Vec<DatabaseRun>,
}

struct DatabaseRun {
    ours: f64,
    dump: f64,
    load: f64,
    rows_ok: bool,
}

/// Comments out the `CREATE ROLE "x";` lines of the guide's `roles.sql`
/// whose role the target's cluster has: roles are the cluster's, and
/// source and target are on the same one here (a real migration goes to
/// another cluster, where the roles are new). Their `ALTER ROLE` lines
/// stay. Returns the roles.
fn skip_existing_roles(roles: &Path, target_url: &str) -> Vec<String> {
    let existing: Vec<String> = psql(target_url, "SELECT rolname FROM pg_roles")
        .lines()
        .map(str::to_string)
        .collect();
    let text = std::fs::read_to_string(roles).unwrap();
    let mut skipped = Vec::new();
    let mut out = String::new();
    for line in text.lines() {
        let name = line
            .strip_prefix("CREATE ROLE \"")
            .and_then(|rest| rest.strip_suffix("\";"));
        match name {
            Some(name) if existing.iter().any(|e| e.replace('"', "\"\"") == name) => {
                skipped.push(name.to_string());
                out.push_str("-- ");
            }
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(roles, out).unwrap();
    skipped
}

/// Exact row counts of every table of `public`, by name.
fn public_row_counts(url: &str) -> Vec<(String, i64)> {
    psql(
        url,
        "SELECT format('%I.%I', schemaname, tablename) || ' ' || \
         (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', \
         schemaname, tablename), false, true, '')))[1]::text \
         FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .lines()
    .filter_map(|l| {
        let (table, n) = l.rsplit_once(' ')?;
        Some((table.to_string(), n.parse().ok()?))
    })
    .collect()
}

async fn database_part(app: &TestApp, control: &ControlPlane, args: &Args) -> DatabaseResults {
    println!("\n== database ==");
    let reference = supascale_bench::make_reference(args.scale, args.seed).await;
    let source = reference.project;
    let source_rows = public_row_counts(&source.database.url);
    println!(
        "source: {} public tables, {} rows",
        source_rows.len(),
        source_rows.iter().map(|(_, n)| n).sum::<i64>()
    );
    // The migration tries the service-role key against the Storage API
    // first: a bare double answers it.
    let double = CloudDouble::builder().start().await;

    // What the official pipeline's dump spends in the CLI alone (Node
    // starting and printing a script; three times in the dump).
    let cli = official_pipeline::supabase_cli();
    let url = source.database.url.clone();
    let cli_seconds = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = std::process::Command::new(cli)
            .args(["db", "dump", "--dry-run", "--db-url", &url])
            .env("SUPABASE_TELEMETRY_DISABLED", "1")
            .env("DO_NOT_TRACK", "1")
            .output()
            .expect("the Supabase CLI");
        assert!(out.status.success(), "supabase db dump --dry-run failed");
        started.elapsed().as_secs_f64()
    })
    .await
    .unwrap();
    println!(
        "the Supabase CLI takes {cli_seconds:.2} s to print one dump script (the official dump \
         runs it three times)"
    );

    let work = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    let mut keep: Vec<RefProject> = Vec::new();
    let pid = app.pid();
    for run in 1..=args.runs {
        println!(
            "\nrun {run} of {}  (load average {})",
            args.runs,
            load_average()
        );
        let ours_target = refproject::make_fresh(args.seed + 200 + run as u64).await;
        let id = format!("database-{run}");
        refproject::register(app, &ours_target, &id).await;
        let body = json!({
            "sourceUrl": double.base_url(),
            "serviceRoleKey": double.service_role_key(),
            "databasePassword": "unused",
            "databaseUrl": source.database.url,
            "components": ["database"],
        });
        let rss_before = status_kib(pid, "VmRSS");
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        let cpu_before = cpu_seconds(pid);
        let rss_peak = Arc::new(Mutex::new(0u64));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (rss_peak, stop) = (rss_peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let rss = status_kib(pid, "VmRSS");
                    let mut peak = rss_peak.lock().unwrap();
                    *peak = (*peak).max(rss);
                    drop(peak);
                    std::thread::sleep(SAMPLE);
                }
            })
        };
        let requested = chrono::Utc::now();
        let (job, ours) = post_and_wait(app, control, &id, &body).await;
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        let peak_hwm = status_kib(pid, "VmHWM");
        let cpu_after = cpu_seconds(pid);
        let job_id = job["id"].as_str().unwrap_or_default().to_string();
        let summary = job_summary(control, &job_id).await;
        println!(
            "  ours:              {ours:>8.2} s   job {} ({} warning(s)); summary.database {}",
            job["status"].as_str().unwrap_or("?"),
            job["warnings"].as_array().map_or(0, |w| w.len()),
            summary["database"]
        );
        if job["status"] != "completed" {
            println!("  ours failed: {job}");
        }
        for warning in job["warnings"].as_array().into_iter().flatten().take(5) {
            println!(
                "                     warning: {}",
                warning.as_str().unwrap_or("")
            );
        }
        println!(
            "         API process RSS: {:.1} MiB before, peak {:.1} MiB (VmHWM reset just \
             before), {:.1} MiB (VmRSS sampled every 20 ms)",
            rss_before as f64 / 1024.0,
            peak_hwm as f64 / 1024.0,
            *rss_peak.lock().unwrap() as f64 / 1024.0
        );
        println!(
            "         CPU: API process {:.2} s, its children (pg_dump, psql) {:.2} s",
            cpu_after.0 - cpu_before.0,
            cpu_after.1 - cpu_before.1
        );
        println!("         the job's steps (from its events; start after the request, duration):");
        for (name, at, took) in job_steps(control, &job_id, requested).await {
            println!("           {at:>7.2} s  {took:>7.2} s  {name}");
        }

        let theirs_target = refproject::make_fresh(args.seed + 300 + run as u64).await;
        let dir = work.path().join(format!("official-{run}"));
        std::fs::create_dir_all(&dir).unwrap();
        let source_url = source.database.url.clone();
        let target_url = theirs_target.database.url.clone();
        let cpu_children = cpu_seconds(std::process::id()).1;
        let (dump, load) = tokio::task::spawn_blocking(move || {
            let dumped = official_pipeline::dump(&source_url, &dir);
            let skipped = skip_existing_roles(&dumped.roles, &target_url);
            if !skipped.is_empty() {
                println!(
                    "  (roles.sql: `CREATE ROLE` of {} commented out before the load, not \
                     timed: source and target share this PostgreSQL cluster, where they exist \
                     already, and psql would stop at the first)",
                    skipped.join(", ")
                );
            }
            let loaded = official_pipeline::load(&target_url, &dumped, true);
            let size = |p: &PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
            println!(
                "  official dump:     {:>8.2} s   roles.sql {:.1} MiB, schema.sql {:.1} MiB, \
                 data.sql {:.1} MiB",
                dumped.took.as_secs_f64(),
                size(&dumped.roles) as f64 / MIB,
                size(&dumped.schema) as f64 / MIB,
                size(&dumped.data) as f64 / MIB
            );
            (dumped.took, loaded)
        })
        .await
        .unwrap();
        let dump = dump.as_secs_f64();
        let load = match load {
            Ok(took) => took.as_secs_f64(),
            Err(e) => {
                println!(
                    "  official load FAILED: {}",
                    e.lines().take(5).collect::<Vec<_>>().join(" | ")
                );
                f64::NAN
            }
        };
        println!("  official load:     {load:>8.2} s   psql --single-transaction");
        println!(
            "  official:          {:>8.2} s   (dump + load; their CPU, CLI and tools together, \
             {:.2} s)   ours / official = {:.2}",
            dump + load,
            cpu_seconds(std::process::id()).1 - cpu_children,
            ours / (dump + load)
        );

        let ours_rows = public_row_counts(&ours_target.database.url);
        let theirs_rows = public_row_counts(&theirs_target.database.url);
        let rows_ok = ours_rows == theirs_rows && ours_rows == source_rows;
        println!(
            "  row counts of the public tables: ours {} rows in {} tables, official {} rows in {} \
             tables, source {} rows: {}",
            ours_rows.iter().map(|(_, n)| n).sum::<i64>(),
            ours_rows.len(),
            theirs_rows.iter().map(|(_, n)| n).sum::<i64>(),
            theirs_rows.len(),
            source_rows.iter().map(|(_, n)| n).sum::<i64>(),
            if rows_ok {
                "the same (OK)"
            } else {
                "DIFFERENT"
            }
        );
        if !rows_ok {
            for (table, n) in &source_rows {
                let of = |rows: &[(String, i64)]| {
                    rows.iter()
                        .find(|(t, _)| t == table)
                        .map_or("-".to_string(), |(_, n)| n.to_string())
                };
                println!(
                    "    {table}: source {n}, ours {}, official {}",
                    of(&ours_rows),
                    of(&theirs_rows)
                );
            }
        }
        runs.push(DatabaseRun {
            ours,
            dump,
            load,
            rows_ok,
        });
        keep.push(ours_target);
        keep.push(theirs_target);
    }
    drop(keep);
    DatabaseResults {
        database_bytes: reference.database_bytes,
        runs,
    }
}
