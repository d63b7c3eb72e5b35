//! A backup of the reference project (`refproject::make`): ours beside the
//! standard tools a user would run instead, one run each, local destination.
//!
//! Variants, each with wall time, CPU seconds (user + system, children
//! included), the peak RSS of the process that matters and the artifact's
//! size:
//! 1. ours, `full` with gzip (`POST /api/v1/backups`; the embedded default
//!    runs the workers in the API process, so its `VmHWM`, reset just
//!    before, is the worker's peak RSS: `pg_dump` is a child process, not
//!    in it; the RSS before is printed beside it, with its anonymous part,
//!    which is what earlier jobs can leave behind);
//! 2. `pg_dump -Fc -f db.dump` then `tar -czf files.tar.gz` of the project
//!    folder (without `volumes/db/data`), one after the other;
//! 3. ours, `full` with zstd;
//! 4. `pg_dump -Fc -Z0 | zstd -3 -T2` and `tar -cf - | zstd -3 -T2`, both at
//!    once;
//! 5. the floor: `pg_dump -Fc -Z0 > /dev/null`;
//! 6. ours, `database` (gzip and zstd), beside pgBackRest's full backup of
//!    the whole cluster (`compress-type=gz` and `zst`), online, run as the
//!    `postgres` user with a repository in a temporary folder.
//!
//! Variants 1 to 4 take turns `--runs` times (3 by default) and the
//! summary takes each one's run of median wall time: on a shared machine a
//! single run of either side can be off by a second.
//!
//! Then, unless `--skip-s3`, a `full` gzip backup to moto (S3) as MB/s,
//! and one to fake-gcs-server (GCS, JSON resumable uploads) beside it, and a
//! full local backup copied to moto (`POST /backups/{id}/copy`).
//! The external tools' CPU and peak RSS come from `wait4` (the peak is that
//! of the largest single process of the pipeline).
//!
//! Build and run (release):
//!   cargo build --release -p supascale-api -p supascale-worker -p supascale-bench
//!   scripts/install-bench-tools   # pgBackRest (and zstd if missing) into target/bench-tools
//!   target/release/bench-backup [--scale 10] [--seed 7] [--runs 3] [--skip-pgbackrest] [--skip-s3]

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};
use supascale_bench::{count_files, cpu_seconds, load_average, status_kib};
use supascale_tests::refproject;
use supascale_tests::{Backend, Launch, PG_ADMIN_URL, TestApp, psql};

struct Args {
    scale: f64,
    seed: u64,
    skip_pgbackrest: bool,
    skip_s3: bool,
    runs: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        scale: 10.0,
        seed: 7,
        skip_pgbackrest: false,
        skip_s3: false,
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--skip-pgbackrest" => args.skip_pgbackrest = true,
            "--skip-s3" => args.skip_s3 = true,
            "--scale" | "--seed" | "--runs" => {
                let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
                match flag.as_str() {
                    "--scale" => args.scale = value.parse().expect("--scale X"),
                    "--seed" => args.seed = value.parse().expect("--seed N"),
                    _ => args.runs = value.parse::<usize>().expect("--runs N").max(1),
                }
            }
            other => panic!(
                "unknown flag {other} (flags: --scale X, --seed N, --runs N, --skip-pgbackrest, \
                 --skip-s3)"
            ),
        }
    }
    args
}

const MIB: f64 = 1024.0 * 1024.0;
const TOOLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-tools");
const MOTO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/test-tools/venv/bin/moto_server"
);
const FAKE_GCS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/test-tools/bin/fake-gcs-server"
);

/// One measured variant.
struct Row {
    label: String,
    wall: f64,
    cpu: f64,
    peak_kib: u64,
    artifact: u64,
    /// Whose peak RSS it is, and anything else to know.
    note: String,
}

/// What `wait4` tells of a finished process (and its descendants it
/// waited for).
#[derive(Default, Clone, Copy)]
struct Usage {
    cpu: f64,
    peak_kib: u64,
}

impl Usage {
    fn add(self, other: Usage) -> Usage {
        Usage {
            cpu: self.cpu + other.cpu,
            peak_kib: self.peak_kib.max(other.peak_kib),
        }
    }
}

/// A started command whose error output goes to a file.
struct Running {
    pid: i32,
    what: String,
    stderr: PathBuf,
}

// The child is reaped by `wait4` in `Running::finish` (which gives its
// rusage), not through `Child::wait`.
#[allow(clippy::zombie_processes)]
fn start(mut command: Command, what: &str, logs: &Path) -> Running {
    let stderr = logs.join(format!("{}.stderr", what.replace(['/', ' '], "_")));
    command
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    Running {
        pid: child.id() as i32,
        what: what.to_string(),
        stderr,
    }
}

impl Running {
    /// Waits for the process: its CPU time (its own and that of the
    /// children it waited for) and peak RSS (the largest of them), or why
    /// it failed.
    fn finish(self) -> Result<Usage, String> {
        let mut status = 0;
        // SAFETY: plain system call on our own child; `rusage` is plain data.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = unsafe { libc::wait4(self.pid, &mut status, 0, &mut usage) };
        if pid != self.pid {
            return Err(format!(
                "{}: wait4: {}",
                self.what,
                std::io::Error::last_os_error()
            ));
        }
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let measured = Usage {
            cpu: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            // Linux gives ru_maxrss in KiB.
            peak_kib: usage.ru_maxrss as u64,
        };
        let status = std::process::ExitStatus::from_raw(status);
        if status.success() {
            Ok(measured)
        } else {
            let errors = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            Err(format!(
                "{} failed ({status}): {}",
                self.what,
                errors
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join(" / ")
            ))
        }
    }
}

/// `bash -o pipefail -c script` with `args` as `$1`, `$2`…
fn shell(script: &str, args: &[&str]) -> Command {
    let mut command = Command::new("bash");
    command
        .args(["-o", "pipefail", "-c", script, "bash"])
        .args(args)
        .stdout(Stdio::null());
    command
}

/// Runs commands at the same time; wall time until the last one ends,
/// CPU time summed, the largest peak RSS.
fn run_together(commands: Vec<(Command, &str)>, logs: &Path) -> Result<(f64, Usage), String> {
    let started = Instant::now();
    let running: Vec<Running> = commands
        .into_iter()
        .map(|(command, what)| start(command, what, logs))
        .collect();
    let mut total = Usage::default();
    let mut error = None;
    for process in running {
        match process.finish() {
            Ok(usage) => total = total.add(usage),
            Err(e) => error = Some(e),
        }
    }
    let wall = started.elapsed().as_secs_f64();
    match error {
        Some(e) => Err(e),
        None => Ok((wall, total)),
    }
}

fn run_one(command: Command, what: &str, logs: &Path) -> Result<(f64, Usage), String> {
    run_together(vec![(command, what)], logs)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The `pg_dump` of the server's major version (what ours uses), else the
/// one on the PATH.
fn pg_dump_path(url: &str) -> String {
    let version: u32 = psql(url, "SHOW server_version_num").parse().unwrap_or(0);
    let path = format!("/usr/lib/postgresql/{}/bin/pg_dump", version / 10000);
    if Path::new(&path).exists() {
        path
    } else {
        "pg_dump".into()
    }
}

fn zstd_path() -> Option<String> {
    let on_path = Command::new("bash")
        .args(["-c", "command -v zstd"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let local = format!("{TOOLS}/zstd/usr/bin/zstd");
    on_path.or_else(|| Path::new(&local).exists().then_some(local))
}

/// Ours: `POST /api/v1/backups` with `body` (the request waits for the
/// job). The API process's peak RSS is its `VmHWM`, reset just before.
/// The artifact is deleted after (through the API), to keep the disk free.
async fn ours(app: &TestApp, label: &str, body: Value) -> Result<Row, String> {
    ours_at(app, label, "/api/v1/backups", body).await
}

/// Ours: a copy to S3 (`POST /api/v1/backups/{id}/copy`) of a full local
/// backup made (untimed) just before.
async fn ours_copy(app: &TestApp, label: &str) -> Result<Row, String> {
    let (status, made) = app
        .post_json(
            "/api/v1/backups",
            &json!({"projectId": "bench", "type": "full"}),
        )
        .await;
    let id = made["backup"]["id"]
        .as_str()
        .filter(|_| status == 200)
        .ok_or_else(|| format!("the local backup did not complete ({status}): {made}"))?;
    ours_at(
        app,
        label,
        &format!("/api/v1/backups/{id}/copy"),
        json!({"destination": "s3"}),
    )
    .await
}

/// `POST path` with `body`, answered with a completed backup: timed, its
/// peak RSS read, the backup deleted after.
async fn ours_at(app: &TestApp, label: &str, path: &str, body: Value) -> Result<Row, String> {
    let pid = app.pid();
    // Writing 5 to clear_refs resets the peak to the current RSS.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let rss_before = status_kib(pid, "VmRSS");
    let anon_before = status_kib(pid, "RssAnon");
    let cpu_before = cpu_total(pid);
    let started = Instant::now();
    let response = app
        .post(path)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let answer: Value = response.json().await.map_err(|e| e.to_string())?;
    let wall = started.elapsed().as_secs_f64();
    let peak_kib = status_kib(pid, "VmHWM");
    let cpu = cpu_total(pid) - cpu_before;
    let backup = &answer["backup"];
    if status != 200 || backup["status"] != "completed" {
        return Err(format!("the backup did not complete ({status}): {answer}"));
    }
    let artifact = backup["size"].as_u64().unwrap_or(0);
    // With `BENCH_LOG=supascale_worker::kinds::backup=debug`: where the time went.
    let logs = strip_ansi(&app.logs());
    if let Some(job) = logs
        .lines()
        .rev()
        .find(|l| l.contains("backup timeline"))
        .and_then(|l| l.split("job=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
    {
        for line in logs.lines().filter(|l| l.contains(job)) {
            println!("  ({label}) {}", line.trim());
        }
        if let Some(line) = logs
            .lines()
            .rev()
            .find(|l| l.contains("method=POST path=/api/v1/backups "))
        {
            println!("  ({label}) {}", line.trim());
        }
        if let Ok(response) = app.get(&format!("/api/v1/jobs/{job}")).send().await
            && let Ok(row) = response.json::<Value>().await
        {
            let row = row.get("job").unwrap_or(&row);
            println!(
                "  ({label}) job row: enqueued {} started {} finished {}",
                row["enqueuedAt"], row["startedAt"], row["finishedAt"]
            );
        }
    }
    if let Some(id) = backup["id"].as_str() {
        let deleted = app
            .delete(&format!("/api/v1/backups/{id}"))
            .send()
            .await
            .map(|r| r.status().is_success());
        if !matches!(deleted, Ok(true)) {
            println!("  (could not delete backup {id} after {label})");
        }
    }
    Ok(Row {
        label: label.into(),
        wall,
        cpu,
        peak_kib,
        artifact,
        note: format!(
            "API process (runs the worker; pg_dump is a child, not in it), {:.1} MiB before \
             ({:.1} of it anonymous)",
            rss_before as f64 / 1024.0,
            anon_before as f64 / 1024.0
        ),
    })
}

/// The log without its terminal colours.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The run of median wall time; an error if any run failed.
fn median_row(mut rows: Vec<Result<Row, String>>) -> Result<Row, String> {
    if let Some(failed) = rows.iter().position(|r| r.is_err()) {
        return rows.swap_remove(failed);
    }
    let mut rows: Vec<Row> = rows.into_iter().map(|r| r.expect("checked")).collect();
    rows.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    let middle = rows.len() / 2;
    rows.into_iter()
        .nth(middle)
        .ok_or_else(|| "no run".to_string())
}

fn print_header() {
    println!(
        "  {:<52} {:>8} {:>8} {:>9} {:>10}",
        "variant", "wall s", "CPU s", "peak MiB", "artifact"
    );
}

fn print_row(row: &Result<Row, String>, label: &str) {
    match row {
        Ok(r) => println!(
            "  {:<52} {:>8.2} {:>8.2} {:>9.1} {:>6.1} MiB   peak: {}",
            r.label,
            r.wall,
            r.cpu,
            r.peak_kib as f64 / 1024.0,
            r.artifact as f64 / MIB,
            r.note
        ),
        Err(e) => println!("  {label:<52} not measured: {e}"),
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "backup: the reference project, scale {} (seed {}), local destination, one run each",
        args.scale, args.seed
    );
    println!("machine: nproc {nproc}, load average {}", load_average());

    let supascale_bench::Reference {
        project,
        database_bytes: db_bytes,
        file_count,
        file_bytes,
    } = supascale_bench::make_reference(args.scale, args.seed).await;
    let url = project.database.url.clone();
    let root = project.root.path().to_path_buf();

    let pg_dump = pg_dump_path(&url);
    let zstd = zstd_path();
    println!(
        "tools: {pg_dump}, zstd {}",
        zstd.as_deref().unwrap_or("missing")
    );

    // moto for the S3 run, started before the API, which is configured for it.
    let emulator = if args.skip_s3 {
        None
    } else if !Path::new(MOTO).exists() {
        println!("S3: moto is missing ({MOTO}): run scripts/install-test-tools");
        None
    } else {
        Some(supascale_tests::emulators::s3("bench").await)
    };
    let gcs_emulator = if args.skip_s3 {
        None
    } else if !Path::new(FAKE_GCS).exists() {
        println!("GCS: fake-gcs-server is missing ({FAKE_GCS}): run scripts/install-test-tools");
        None
    } else {
        Some(supascale_tests::emulators::gcs("bench").await)
    };
    let mut launch = Launch::default().env("SUPASCALE_JOB_WAIT_SECONDS", "3600");
    if let Some(s3) = &emulator {
        launch = launch
            .env("SUPASCALE_DESTINATIONS__S3__BUCKET", "bench")
            .env("SUPASCALE_DESTINATIONS__S3__ENDPOINT", s3.endpoint.clone())
            .env("SUPASCALE_DESTINATIONS__S3__ACCESS_KEY_ID", "test")
            .env("SUPASCALE_DESTINATIONS__S3__SECRET_ACCESS_KEY", "test");
    }
    if let Some(gcs) = &gcs_emulator {
        launch = launch
            .env("SUPASCALE_DESTINATIONS__GCS__BUCKET", "bench")
            .env(
                "SUPASCALE_DESTINATIONS__GCS__ENDPOINT",
                gcs.endpoint.clone(),
            )
            .env("SUPASCALE_DESTINATIONS__GCS__TOKEN", "emulator-token");
    }
    let launch = supascale_bench::with_bench_env(launch);
    let app = TestApp::spawn_with(Backend::Sqlite, launch).await;
    refproject::register(&app, &project, "bench").await;

    let work = tempfile::tempdir().unwrap();
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let out = work.path().join("out");
    let root_s = root.to_str().unwrap();

    // Every variant reads the same data: read it once first, untimed, so
    // that the first one does not pay for a cold page cache.
    let warm = run_together(
        vec![
            (
                shell("\"$1\" -Fc -Z0 \"$2\" > /dev/null", &[&pg_dump, &url]),
                "warm-up pg_dump",
            ),
            (
                shell("tar -cf - -C \"$1\" . | cat > /dev/null", &[root_s]),
                "warm-up tar",
            ),
        ],
        &logs,
    );
    match warm {
        Ok((wall, _)) => {
            println!("warm-up (untimed read of the database and the folder): {wall:.1} s")
        }
        Err(e) => println!("warm-up failed: {e}"),
    }
    println!("\nvariants (load average {}):", load_average());
    print_header();
    let exclude = "--exclude=./volumes/db/data";
    let fresh_out = || {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
    };

    // 1-4 take turns `--runs` times (the machine's other load comes and
    // goes); each figure below is the run of median wall time.
    let (mut ours_gzip, mut pipeline_gzip, mut ours_zstd, mut pipeline_zstd) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let run_label = |label: &str| {
            if args.runs > 1 {
                format!("{label} [run {run}]")
            } else {
                label.to_string()
            }
        };
        // 1. Ours, full, gzip.
        let label = "1 ours: full, gzip";
        let row = ours(&app, label, json!({"projectId": "bench", "type": "full"})).await;
        print_row(&row, &run_label(label));
        ours_gzip.push(row);

        // 2. The shell pipeline, one after the other.
        let label = "2 pg_dump -Fc, then tar -czf (sequential)";
        fresh_out();
        let row = sequential_gzip(label, &pg_dump, &url, root_s, &out, &logs);
        print_row(&row, &run_label(label));
        pipeline_gzip.push(row);

        // 3. Ours, full, zstd.
        let label = "3 ours: full, zstd";
        let row = ours(
            &app,
            label,
            json!({"projectId": "bench", "type": "full", "compression": "zstd"}),
        )
        .await;
        print_row(&row, &run_label(label));
        ours_zstd.push(row);

        // 4. The two zstd pipelines at once.
        let label = "4 pg_dump -Z0 | zstd -3 -T2 & tar | zstd -3 -T2";
        fresh_out();
        let row = match &zstd {
            None => Err("no zstd: run scripts/install-bench-tools".to_string()),
            Some(zstd) => {
                let db = out.join("db.zst");
                let files = out.join("files.tar.zst");
                run_together(
                    vec![
                        (
                            shell(
                                "\"$1\" -Fc -Z0 \"$2\" | \"$3\" -q -3 -T2 > \"$4\"",
                                &[&pg_dump, &url, zstd, db.to_str().unwrap()],
                            ),
                            "pg_dump | zstd",
                        ),
                        (
                            shell(
                                "tar -cf - \"$1\" -C \"$2\" . | \"$3\" -q -3 -T2 > \"$4\"",
                                &[exclude, root_s, zstd, files.to_str().unwrap()],
                            ),
                            "tar | zstd",
                        ),
                    ],
                    &logs,
                )
                .map(|(wall, usage)| Row {
                    label: label.into(),
                    wall,
                    cpu: usage.cpu,
                    peak_kib: usage.peak_kib,
                    artifact: file_size(&db) + file_size(&files),
                    note: format!(
                        "largest process; db.zst {:.1} MiB + files.tar.zst {:.1} MiB",
                        file_size(&db) as f64 / MIB,
                        file_size(&files) as f64 / MIB
                    ),
                })
            }
        };
        print_row(&row, &run_label(label));
        pipeline_zstd.push(row);
    }
    let ours_gzip = median_row(ours_gzip);
    let pipeline_gzip = median_row(pipeline_gzip);
    let ours_zstd = median_row(ours_zstd);
    let pipeline_zstd = median_row(pipeline_zstd);
    if args.runs > 1 {
        println!("  medians of {} runs:", args.runs);
        for row in [&ours_gzip, &pipeline_gzip, &ours_zstd, &pipeline_zstd] {
            if let Ok(r) = row {
                print_row(row, &r.label);
            }
        }
    }

    // 5. The floor.
    let label = "5 floor: pg_dump -Fc -Z0 > /dev/null";
    let mut floor = Command::new(&pg_dump);
    floor.args(["-Fc", "-Z0"]).arg(&url).stdout(Stdio::null());
    let floor = run_one(floor, "pg_dump -Fc -Z0", &logs).map(|(wall, usage)| Row {
        label: label.into(),
        wall,
        cpu: usage.cpu,
        peak_kib: usage.peak_kib,
        artifact: 0,
        note: "pg_dump (nothing written)".into(),
    });
    print_row(&floor, label);
    let _ = std::fs::remove_dir_all(&out);

    // 6. Database only: ours, and pgBackRest of the whole cluster.
    let label = "6 ours: database, gzip";
    let ours_db_gzip = ours(
        &app,
        label,
        json!({"projectId": "bench", "type": "database"}),
    )
    .await;
    print_row(&ours_db_gzip, label);
    let label = "6 ours: database, zstd";
    let ours_db_zstd = ours(
        &app,
        label,
        json!({"projectId": "bench", "type": "database", "compression": "zstd"}),
    )
    .await;
    print_row(&ours_db_zstd, label);
    let mut pgbackrest_notes = Vec::new();
    for kind in ["gz", "zst"] {
        let label = format!("6 pgBackRest: full backup of the cluster, {kind}");
        let row = if args.skip_pgbackrest {
            Err("--skip-pgbackrest".to_string())
        } else {
            pgbackrest_backup(&label, kind, &logs, &mut pgbackrest_notes)
        };
        print_row(&row, &label);
    }
    for note in &pgbackrest_notes {
        println!("    {note}");
    }

    // S3: a full gzip backup to moto.
    let s3 = match &emulator {
        None if args.skip_s3 => Err("--skip-s3".to_string()),
        None => Err("moto is missing: run scripts/install-test-tools".to_string()),
        Some(_) => {
            ours(
                &app,
                "S3 ours: full, gzip, to moto",
                json!({"projectId": "bench", "type": "full", "destination": "s3"}),
            )
            .await
        }
    };
    print_row(&s3, "S3 ours: full, gzip, to moto");
    let gcs = match &gcs_emulator {
        None if args.skip_s3 => Err("--skip-s3".to_string()),
        None => Err("fake-gcs-server is missing: run scripts/install-test-tools".to_string()),
        Some(_) => {
            ours(
                &app,
                "GCS ours: full, gzip, to fake-gcs-server",
                json!({"projectId": "bench", "type": "full", "destination": "gcs"}),
            )
            .await
        }
    };
    print_row(&gcs, "GCS ours: full, gzip, to fake-gcs-server");
    let label = "copy ours: a full local backup copied to moto";
    let copy = match &emulator {
        None if args.skip_s3 => Err("--skip-s3".to_string()),
        None => Err("moto is missing: run scripts/install-test-tools".to_string()),
        Some(_) => ours_copy(&app, label).await,
    };
    print_row(&copy, label);
    drop(app);
    drop(emulator);
    drop(gcs_emulator);

    // Summary.
    println!(
        "\nsummary, scale {} on {nproc} cores (load average {}):",
        args.scale,
        load_average()
    );
    println!(
        "  database {:.1} MiB, {} files ({:.1} MiB)",
        db_bytes as f64 / MIB,
        file_count,
        file_bytes as f64 / MIB
    );
    let verdict = |ratio: f64, target: f64| {
        if ratio <= target { "met" } else { "MISSED" }
    };
    if let (Ok(o), Ok(p)) = (&ours_gzip, &pipeline_gzip) {
        let wall = o.wall / p.wall;
        let size = o.artifact as f64 / p.artifact as f64;
        println!(
            "  gzip wall: ours {:.2} s / pipeline {:.2} s = {wall:.2}  (target <= 0.6: {})",
            o.wall,
            p.wall,
            verdict(wall, 0.6)
        );
        println!(
            "  gzip artifact: ours {:.1} MiB / pipeline's two files {:.1} MiB = {size:.3}  \
             (target <= 1.05: {})",
            o.artifact as f64 / MIB,
            p.artifact as f64 / MIB,
            verdict(size, 1.05)
        );
    }
    if let (Ok(o), Ok(p)) = (&ours_zstd, &pipeline_zstd) {
        let wall = o.wall / p.wall;
        println!(
            "  zstd wall: ours {:.2} s / concurrent pipelines {:.2} s = {wall:.2}  \
             (target <= 1.25: {})",
            o.wall,
            p.wall,
            verdict(wall, 1.25)
        );
    }
    if let Ok(f) = &floor {
        println!("  floor (pg_dump -Fc -Z0 > /dev/null): {:.2} s", f.wall);
    }
    let ours_rows = [
        ("full gzip", &ours_gzip),
        ("full zstd", &ours_zstd),
        ("database gzip", &ours_db_gzip),
        ("database zstd", &ours_db_zstd),
        ("S3 full gzip", &s3),
        ("GCS full gzip", &gcs),
        ("copy to S3", &copy),
    ];
    let measured: Vec<(&str, u64)> = ours_rows
        .iter()
        .filter_map(|(name, row)| row.as_ref().ok().map(|r| (*name, r.peak_kib)))
        .collect();
    if let Some(max) = measured.iter().map(|(_, kib)| *kib).max() {
        println!(
            "  worker (API process) peak RSS: {}; max {:.1} MiB  (target <= 100: {})",
            measured
                .iter()
                .map(|(name, kib)| format!("{name} {:.1}", *kib as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", "),
            max as f64 / 1024.0,
            verdict(max as f64 / 1024.0, 100.0)
        );
    }
    match &s3 {
        Ok(r) => println!(
            "  S3 (moto on this machine): {:.1} MB/s of artifact ({:.1} MB in {:.2} s), \
             {:.1} MB/s of project data (database + files); local full gzip: {}",
            r.artifact as f64 / 1e6 / r.wall,
            r.artifact as f64 / 1e6,
            r.wall,
            (db_bytes + file_bytes) as f64 / 1e6 / r.wall,
            ours_gzip
                .as_ref()
                .map_or("not measured".to_string(), |l| format!(
                    "{:.1} MB/s of artifact",
                    l.artifact as f64 / 1e6 / l.wall
                ))
        ),
        Err(e) => println!("  S3: not measured: {e}"),
    }
    match &gcs {
        Ok(r) => println!(
            "  GCS (fake-gcs-server on this machine, one 8 MiB resumable chunk at a time): \
             {:.1} MB/s of artifact ({:.1} MB in {:.2} s)",
            r.artifact as f64 / 1e6 / r.wall,
            r.artifact as f64 / 1e6,
            r.wall
        ),
        Err(e) => println!("  GCS: not measured: {e}"),
    }
    match &copy {
        Ok(r) => println!(
            "  copy local -> S3 (moto; read, hashed, written, read back and hashed): \
             {:.1} MB/s of artifact ({:.1} MB in {:.2} s)",
            r.artifact as f64 / 1e6 / r.wall,
            r.artifact as f64 / 1e6,
            r.wall
        ),
        Err(e) => println!("  copy: not measured: {e}"),
    }
    drop(work);
    drop(project);
}

/// The shell pipeline a user would run, one command after the other:
/// `pg_dump -Fc -f db.dump`, then `tar -czf files.tar.gz` of the folder
/// without the live database files.
fn sequential_gzip(
    label: &str,
    pg_dump: &str,
    url: &str,
    root: &str,
    out: &Path,
    logs: &Path,
) -> Result<Row, String> {
    let exclude = "--exclude=./volumes/db/data";
    let mut dump = Command::new(pg_dump);
    dump.args(["-Fc", "-f"]).arg(out.join("db.dump")).arg(url);
    let (wall_dump, dump_usage) = run_one(dump, "pg_dump -Fc", logs)?;
    let mut tar = Command::new("tar");
    tar.arg("-czf")
        .arg(out.join("files.tar.gz"))
        .args([exclude, "-C", root, "."]);
    let (wall_tar, tar_usage) = run_one(tar, "tar -czf", logs)?;
    let usage = dump_usage.add(tar_usage);
    let (dump_size, tar_size) = (
        file_size(&out.join("db.dump")),
        file_size(&out.join("files.tar.gz")),
    );
    Ok(Row {
        label: label.into(),
        wall: wall_dump + wall_tar,
        cpu: usage.cpu,
        peak_kib: usage.peak_kib,
        artifact: dump_size + tar_size,
        note: format!(
            "largest process; pg_dump {wall_dump:.2} s (CPU {:.2} s, {:.1} MiB), \
             tar -czf {wall_tar:.2} s (CPU {:.2} s, {:.1} MiB)",
            dump_usage.cpu,
            dump_size as f64 / MIB,
            tar_usage.cpu,
            tar_size as f64 / MIB
        ),
    })
}

/// pgBackRest's full backup of the cluster the project lives on, online,
/// as the `postgres` user, with a repository (and its configuration, lock
/// and log folders) in a temporary folder. The cluster's configuration is
/// not changed: without WAL archiving (`archive_mode` off) the backup
/// runs with `archive-check=n`, and the settings are compared before and
/// after. Notes for the summary go to `notes` (once).
fn pgbackrest_backup(
    label: &str,
    compress: &str,
    logs: &Path,
    notes: &mut Vec<String>,
) -> Result<Row, String> {
    let binary = format!("{TOOLS}/pgbackrest/usr/bin/pgbackrest");
    if !Path::new(&binary).exists() {
        return Err(format!(
            "{binary} is missing: run scripts/install-bench-tools"
        ));
    }
    // SAFETY: a plain system call.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "pgBackRest runs as the postgres OS user: the benchmark must run as root".into(),
        );
    }
    let library_path = std::fs::read_to_string(format!("{TOOLS}/pgbackrest-libs/LD_LIBRARY_PATH"))
        .ok()
        .map(|p| p.trim().to_string());
    let show = |setting: &str| psql(PG_ADMIN_URL, &format!("SHOW {setting}"));
    let data_dir = show("data_directory");
    let port = show("port");
    let socket = show("unix_socket_directories")
        .split(',')
        .next()
        .unwrap_or("/var/run/postgresql")
        .trim()
        .to_string();
    let settings_before = cluster_settings();

    // The repository's folder: postgres must reach it.
    let dir = tempfile::Builder::new()
        .prefix("bench-pgbackrest-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let base = dir.path();
    for sub in ["repo", "log", "lock"] {
        std::fs::create_dir_all(base.join(sub)).unwrap();
    }
    // A copy of the binary, so that postgres need not reach target/.
    std::fs::copy(&binary, base.join("pgbackrest")).map_err(|e| e.to_string())?;
    let config = base.join("pgbackrest.conf");
    std::fs::write(
        &config,
        format!(
            "[global]\nrepo1-path={repo}\nrepo1-retention-full=1\nlog-path={log}\n\
             lock-path={lock}\nlog-level-console=info\nlog-level-file=off\nstart-fast=y\n\
             archive-check=n\ncompress-type={compress}\n\n[bench]\npg1-path={data_dir}\n\
             pg1-port={port}\npg1-socket-path={socket}\n",
            repo = base.join("repo").display(),
            log = base.join("log").display(),
            lock = base.join("lock").display(),
        ),
    )
    .unwrap();
    let chown = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(base)
        .status()
        .map_err(|e| e.to_string())?;
    if !chown.success() {
        return Err(format!("chown -R postgres {} failed", base.display()));
    }
    let run = |action: &str| {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", "env"]);
        if let Some(path) = &library_path {
            command.arg(format!("LD_LIBRARY_PATH={path}"));
        }
        command
            .arg(base.join("pgbackrest"))
            .arg(format!("--config={}", config.display()))
            .arg("--stanza=bench")
            .args(action.split_whitespace());
        command
    };
    let mut stanza = run("stanza-create");
    stanza.stdout(Stdio::null());
    run_one(stanza, "pgbackrest stanza-create", logs)?;
    let stdout_path = logs.join(format!("pgbackrest-{compress}.stdout"));
    let mut backup = run("--type=full backup");
    backup.stdout(std::fs::File::create(&stdout_path).unwrap());
    let measured = run_one(backup, "pgbackrest backup", logs);
    let output = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let settings_after = cluster_settings();
    let changed: Vec<String> = settings_after
        .iter()
        .filter(|(name, value)| settings_before.get(name.as_str()) != Some(*value))
        .map(|(name, value)| format!("{name} {:?} -> {value:?}", settings_before.get(name)))
        .collect();
    if notes.is_empty() {
        let databases: u64 = psql(
            PG_ADMIN_URL,
            "SELECT sum(pg_database_size(oid)) FROM pg_database",
        )
        .parse()
        .unwrap_or(0);
        notes.push(format!(
            "pgBackRest copies the whole cluster ({data_dir}: {:.1} MiB in all its databases, \
             the project's included), process-max 1 (default), compress-level default; \
             archive_mode is {}: with archive-check=n no WAL is kept, so its backup is not \
             restorable on its own (ours is)",
            databases as f64 / MIB,
            settings_before
                .get("archive_mode")
                .map_or("?", String::as_str)
        ));
    }
    notes.push(format!(
        "pgBackRest {compress}: cluster settings {} after the backup",
        if changed.is_empty() {
            format!("unchanged ({} compared)", settings_after.len())
        } else {
            format!("CHANGED: {}", changed.join(", "))
        }
    ));
    let (wall, usage) = measured?;
    let copied = output
        .lines()
        .find_map(|l| l.split_once("full backup size = ").map(|(_, s)| s.trim()))
        .unwrap_or("?")
        .to_string();
    let (_, artifact) = count_files(&base.join("repo"));
    Ok(Row {
        label: label.into(),
        wall,
        cpu: usage.cpu,
        peak_kib: usage.peak_kib,
        artifact,
        note: format!("largest process (pgbackrest); repository size; backed up: {copied}"),
    })
}

/// Every setting of the cluster, to show that a benchmark left it as it was.
fn cluster_settings() -> BTreeMap<String, String> {
    psql(
        PG_ADMIN_URL,
        "SELECT name || '=' || coalesce(setting, '') FROM pg_settings ORDER BY name",
    )
    .lines()
    .filter_map(|l| l.split_once('='))
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// CPU seconds of a process and of the children it has waited for.
fn cpu_total(pid: u32) -> f64 {
    let (own, children) = cpu_seconds(pid);
    own + children
}
