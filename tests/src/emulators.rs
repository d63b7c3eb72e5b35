//! Real object-store emulators for destination tests, each started by the
//! test that needs it on a free loopback port and stopped when dropped:
//! moto (S3 and the S3-compatible r2/minio/backblaze), azurite (Azure
//! Blob), fake-gcs-server (GCS). `scripts/install-test-tools` installs them
//! under `target/test-tools`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account (public, documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub fn tools_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-tools"));
    assert!(
        dir.join(".").exists() && dir.join("venv/bin/python").exists(),
        "{} is missing: run scripts/install-test-tools (scripts/test does)",
        dir.display()
    );
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 30 s");
}

/// A running emulator; killed on drop.
pub struct Emulator {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(
    mut command: Command,
    port: u16,
    what: &str,
    dir: tempfile::TempDir,
    endpoint: String,
) -> Emulator {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    wait_for_port(port, &mut child, what);
    Emulator {
        child,
        endpoint,
        _dir: dir,
    }
}

/// moto in server mode with `bucket` created.
pub async fn s3(bucket: &str) -> Emulator {
    s3_at(free_port(), bucket).await
}

/// moto on `port` (to start one again where another was stopped), with
/// `bucket` created.
pub async fn s3_at(port: u16, bucket: &str) -> Emulator {
    let tools = tools_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(tools.join("venv/bin/moto_server"));
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let emulator = spawn(
        command,
        port,
        "moto_server",
        dir,
        format!("http://127.0.0.1:{port}"),
    );
    create_bucket(reqwest::Client::new().put(format!("{}/{bucket}", emulator.endpoint))).await;
    emulator
}

async fn create_bucket(request: reqwest::RequestBuilder) {
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "create bucket: {}",
        response.status()
    );
}

/// azurite (blob only) with `container` created.
pub async fn azure(container: &str) -> Emulator {
    let tools = tools_dir();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(tools.join("node_modules/.bin/azurite-blob"));
    command
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .args([
            "--silent",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--location",
        ])
        .arg(dir.path());
    let endpoint = format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}");
    let emulator = spawn(command, port, "azurite-blob", dir, endpoint.clone());
    let script = "import sys\nfrom azure.storage.blob import BlobServiceClient\n\
                  BlobServiceClient(account_url=sys.argv[1], credential={'account_name': sys.argv[2], 'account_key': sys.argv[3]})\
                  .create_container(sys.argv[4])\n";
    let out = Command::new(tools.join("venv/bin/python"))
        .args([
            "-c",
            script,
            &endpoint,
            AZURITE_ACCOUNT,
            AZURITE_KEY,
            container,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "create container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    emulator
}

/// fake-gcs-server (GCS's JSON API, resumable uploads included; its
/// objects in a folder of its own) with `bucket` created. Any bearer token
/// is accepted.
pub async fn gcs(bucket: &str) -> Emulator {
    let tools = tools_dir();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut command = Command::new(tools.join("bin/fake-gcs-server"));
    command
        .args(["-scheme", "http", "-host", "127.0.0.1"])
        .args(["-port", &port.to_string()])
        .args(["-external-url", &endpoint])
        .args(["-public-host", &format!("127.0.0.1:{port}")])
        .args(["-backend", "filesystem", "-filesystem-root"])
        .arg(dir.path())
        .args(["-log-level", "error"]);
    let emulator = spawn(command, port, "fake-gcs-server", dir, endpoint);
    create_bucket(
        reqwest::Client::new()
            .post(format!("{}/storage/v1/b?project=test", emulator.endpoint))
            .json(&serde_json::json!({ "name": bucket })),
    )
    .await;
    emulator
}

/// A new age X25519 key pair made by the real `age-keygen`: the identity
/// file's path (in `dir`) and the public key (`age1…`).
pub fn age_keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let identity = dir.join(name);
    let made = std::process::Command::new(tools_dir().join("age/usr/bin/age-keygen"))
        .arg("-o")
        .arg(&identity)
        .output()
        .unwrap();
    assert!(made.status.success(), "age-keygen failed");
    let recipient = String::from_utf8_lossy(&made.stderr)
        .trim()
        .strip_prefix("Public key: ")
        .expect("age-keygen prints the public key")
        .to_string();
    (identity, recipient)
}
