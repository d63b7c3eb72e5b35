//! A PostgreSQL cluster of its own, for what the machine's shared one
//! cannot show: it trusts every local connection, so a wrong password is
//! never refused there. This one asks for a password (`scram-sha-256`),
//! listens on 127.0.0.1 at a free port, runs as `postgres` from a temporary
//! folder and is stopped and removed when dropped.

use std::path::PathBuf;
use std::process::Command;

pub struct ScratchCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// The superuser `postgres`'s password.
    pub password: String,
}

impl ScratchCluster {
    /// Creates and starts the cluster (about two seconds).
    pub fn start() -> ScratchCluster {
        let bin = postgres_bin();
        let dir = tempfile::Builder::new()
            .prefix("supascale-scratch-pg")
            .tempdir_in("/tmp")
            .unwrap();
        let password = format!("pw-{}", crate::random_suffix(12));
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        let data = dir.path().join("data");
        chown_postgres(dir.path());
        chown_postgres(&pwfile);
        let initdb = as_postgres(&bin.join("initdb"))
            .args(["--auth=scram-sha-256", "--username=postgres", "-E", "UTF8"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("-D")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = free_port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} \
             -c fsync=off -c max_connections=40 -c shared_buffers=16MB",
            dir.path().display()
        );
        let started = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-w", "-l"])
            .arg(dir.path().join("log"))
            .args(["-o", &options, "start"])
            .output()
            .unwrap();
        assert!(
            started.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&started.stdout),
            String::from_utf8_lossy(&started.stderr)
        );
        ScratchCluster {
            dir,
            bin,
            port,
            password,
        }
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// The same, without the password.
    pub fn url_without_password(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn postgres_bin() -> PathBuf {
    let root = PathBuf::from("/usr/lib/postgresql");
    let mut majors: Vec<u32> = std::fs::read_dir(&root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    majors.sort();
    let major = majors
        .last()
        .expect("a PostgreSQL server under /usr/lib/postgresql");
    root.join(major.to_string()).join("bin")
}

/// The server refuses to run as root: everything runs as `postgres`.
fn as_postgres(program: &std::path::Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

fn chown_postgres(path: &std::path::Path) {
    let status = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
