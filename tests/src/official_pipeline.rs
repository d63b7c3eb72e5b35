//! The official migration guide's pipeline, for comparison with lift &
//! shift: the Supabase CLI (`supabase@2.117.0`, installed by
//! `scripts/install-test-tools`) prints its exact dump scripts with
//! `supabase db dump --dry-run --db-url …`; they run here with the local
//! `pg_dump`/`pg_dumpall`, and the self-hosting guide's `psql
//! --single-transaction` loads what they wrote.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The CLI the scripts come from.
pub fn supabase_cli() -> PathBuf {
    let cli = crate::emulators::tools_dir().join("node_modules/.bin/supabase");
    assert!(
        cli.exists(),
        "{} is missing: run scripts/install-test-tools (scripts/test does)",
        cli.display()
    );
    cli
}

/// The three files the guide's dump writes.
pub struct OfficialDump {
    pub roles: PathBuf,
    pub schema: PathBuf,
    pub data: PathBuf,
    /// Wall time of the three dumps.
    pub took: Duration,
}

/// The script `supabase db dump --dry-run` prints for `flags`.
fn script(cli: &Path, url: &str, flags: &[&str]) -> String {
    let output = Command::new(cli)
        .args(["db", "dump", "--dry-run", "--db-url", url])
        .args(flags)
        .env("SUPABASE_TELEMETRY_DISABLED", "1")
        .env("DO_NOT_TRACK", "1")
        .output()
        .expect("the Supabase CLI");
    assert!(
        output.status.success(),
        "supabase db dump --dry-run {flags:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    // The banner lines go before the script's shebang.
    let start = text.find("#!/usr/bin/env bash").expect("a bash script");
    text[start..].to_string()
}

/// Dumps `source_url` (percent-encoded, as the CLI wants it) into `dir`
/// the guide's way.
pub fn dump(source_url: &str, dir: &Path) -> OfficialDump {
    let cli = supabase_cli();
    let started = Instant::now();
    let mut files = Vec::new();
    for (name, flags) in [
        ("roles.sql", &["--role-only"][..]),
        ("schema.sql", &[][..]),
        ("data.sql", &["--data-only", "--use-copy"][..]),
    ] {
        let script = script(&cli, source_url, flags);
        let path = dir.join(name);
        let out = std::fs::File::create(&path).unwrap();
        let status = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .stdout(out)
            .status()
            .unwrap();
        assert!(status.success(), "the guide's {name} script failed");
        files.push(path);
    }
    let data = files.pop().unwrap();
    let schema = files.pop().unwrap();
    let roles = files.pop().unwrap();
    OfficialDump {
        roles,
        schema,
        data,
        took: started.elapsed(),
    }
}

/// The self-hosting guide's load; returns its wall time, or psql's error.
/// `with_roles: false` leaves the roles file out: on a cluster that
/// already has the source's roles (roles are cluster-wide, and the tests'
/// source and targets share the machine's cluster) its `CREATE ROLE`
/// fails, as it does on any second run of the guide.
pub fn load(target_url: &str, dump: &OfficialDump, with_roles: bool) -> Result<Duration, String> {
    let started = Instant::now();
    let mut psql = Command::new("psql");
    psql.args([
        "--single-transaction",
        "--variable",
        "ON_ERROR_STOP=1",
        "-q",
    ]);
    if with_roles {
        psql.arg("--file").arg(&dump.roles);
    }
    let output = psql
        .arg("--file")
        .arg(&dump.schema)
        .args(["--command", "SET session_replication_role = replica"])
        .arg("--file")
        .arg(&dump.data)
        .arg("--dbname")
        .arg(target_url)
        .output()
        .unwrap();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(started.elapsed())
}
