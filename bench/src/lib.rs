//! What the benchmark binaries share: readings of `/proc` and of the
//! project folder, taken the same way by each, so their figures compare.

use std::path::Path;

/// A line of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, `RssAnon`, …).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds of a process: (its own user + system, that of its children
/// it has waited for).
pub fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis, starting at `state`
    // (field 3): utime is 14, stime 15, cutime 16, cstime 17.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let tick = 100.0; // USER_HZ on Linux
    let get = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0) / tick;
    (get(14) + get(15), get(16) + get(17))
}

/// The machine's load average over 1, 5 and 15 minutes.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Files under `dir`: (count, bytes).
pub fn count_files(dir: &Path) -> (u64, u64) {
    let mut count = 0;
    let mut bytes = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            let (c, b) = count_files(&entry.path());
            count += c;
            bytes += b;
        } else if kind.is_file() {
            count += 1;
            bytes += entry.metadata().map_or(0, |m| m.len());
        }
    }
    (count, bytes)
}

/// The reference project a benchmark works on, with its sizes.
pub struct Reference {
    pub project: supascale_tests::refproject::RefProject,
    pub database_bytes: u64,
    pub file_count: u64,
    pub file_bytes: u64,
}

/// Builds the reference project (`refproject::make`) and prints its sizes
/// and how long it took, the same line for every benchmark.
pub async fn make_reference(scale: f64, seed: u64) -> Reference {
    const MIB: f64 = 1024.0 * 1024.0;
    let generated = std::time::Instant::now();
    let project = supascale_tests::refproject::make(scale, seed, false).await;
    let database_bytes: u64 = supascale_tests::psql(
        &project.database.url,
        "SELECT pg_database_size(current_database())",
    )
    .parse()
    .expect("a database size");
    let (file_count, file_bytes) = count_files(project.root.path());
    println!(
        "project: database {:.1} MiB, {} files ({:.1} MiB) in {} (generated in {:.1} s)",
        database_bytes as f64 / MIB,
        file_count,
        file_bytes as f64 / MIB,
        project.root.path().display(),
        generated.elapsed().as_secs_f64()
    );
    Reference {
        project,
        database_bytes,
        file_count,
        file_bytes,
    }
}

/// CPU seconds used so far by every process whose command is one of
/// `programs` (own time plus that of the children it has waited for, so
/// PostgreSQL backends that ended are counted in the postmaster's), in
/// the order given.
pub fn cpu_seconds_of_programs(programs: &[&str]) -> Vec<f64> {
    let mut totals = vec![0.0; programs.len()];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if let Some(i) = programs.iter().position(|p| comm.trim() == *p) {
            let (own, children) = cpu_seconds(pid);
            totals[i] += own + children;
        }
    }
    totals
}

/// A control-plane timestamp as the API or the database prints it: RFC 3339,
/// PostgreSQL's text with an offset, or SQLite's naive UTC.
pub fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{DateTime, NaiveDateTime, Utc};
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f %:z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

/// What every benchmark's API takes from the benchmark's environment:
/// `RUST_LOG` from `BENCH_LOG` (default `warn`), then, for experiments,
/// each `K=V` of `BENCH_API_ENV` (e.g. glibc's `MALLOC_ARENA_MAX`), printed.
pub fn with_bench_env(launch: supascale_tests::Launch) -> supascale_tests::Launch {
    let mut launch = launch.env(
        "RUST_LOG",
        std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
    );
    for pair in std::env::var("BENCH_API_ENV")
        .unwrap_or_default()
        .split_whitespace()
    {
        let (key, value) = pair.split_once('=').expect("BENCH_API_ENV holds K=V pairs");
        println!("API environment: {key}={value}");
        launch = launch.env(key, value);
    }
    launch
}
