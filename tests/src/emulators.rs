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
    let emulator = moto(port);
    create_bucket(reqwest::Client::new().put(format!("{}/{bucket}", emulator.endpoint))).await;
    emulator
}

/// moto in server mode on `port`, without buckets.
fn moto(port: u16) -> Emulator {
    let tools = tools_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(tools.join("venv/bin/moto_server"));
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    spawn(
        command,
        port,
        "moto_server",
        dir,
        format!("http://127.0.0.1:{port}"),
    )
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

/// `<project>/<file>`: an artifact's key on any destination, the last two
/// segments of its `path` (`s3://bucket/prefix/<project>/<file>`).
pub fn key_of(path: &str) -> String {
    let mut parts = path.rsplitn(3, '/');
    let file = parts.next().unwrap();
    let project = parts.next().unwrap();
    format!("{project}/{file}")
}

/// A destination the server is configured with and a test can look into:
/// its `SUPASCALE_DESTINATIONS__<NAME>__*` variables, the same settings as
/// a test-side `DestinationConfig`, and the emulator behind it (dropped
/// with it).
pub struct Store {
    pub env: Vec<(String, String)>,
    pub config: supascale_shared::destinations::DestinationConfig,
    pub emulator: Option<Emulator>,
}

impl Store {
    /// `launch` with this destination configured.
    pub fn launch(&self, launch: crate::Launch) -> crate::Launch {
        self.env.iter().fold(launch, |launch, (key, value)| {
            launch.env(key, value.clone())
        })
    }
}

/// The destination `name` (`local`, `s3`, `azure`, `gcs`) on a fresh
/// emulator with a `backups` bucket or container; object stores use the
/// prefix `supabase` where they have one.
pub async fn store(name: &str) -> Store {
    use supascale_shared::Secret;
    use supascale_shared::destinations::DestinationConfig;
    let var = |field: &str, value: &str| {
        (
            format!("SUPASCALE_DESTINATIONS__{}__{field}", name.to_uppercase()),
            value.to_string(),
        )
    };
    match name {
        "local" => Store {
            env: Vec::new(),
            config: DestinationConfig::default(),
            emulator: None,
        },
        "s3" => {
            let emulator = s3("backups").await;
            s3_store(emulator, "supabase")
        }
        "azure" => {
            let emulator = azure("backups").await;
            Store {
                env: vec![
                    var("CONTAINER", "backups"),
                    var("ENDPOINT", &emulator.endpoint),
                    var("ACCOUNT_NAME", AZURITE_ACCOUNT),
                    var("ACCOUNT_KEY", AZURITE_KEY),
                ],
                config: DestinationConfig {
                    container: Some("backups".into()),
                    endpoint: Some(emulator.endpoint.clone()),
                    account_name: Some(AZURITE_ACCOUNT.into()),
                    account_key: Some(Secret::new(AZURITE_KEY)),
                    ..Default::default()
                },
                emulator: Some(emulator),
            }
        }
        "gcs" => {
            let emulator = gcs("backups").await;
            Store {
                env: vec![
                    var("BUCKET", "backups"),
                    var("PREFIX", "supabase"),
                    var("ENDPOINT", &emulator.endpoint),
                    var("TOKEN", "emulator-token"),
                ],
                config: DestinationConfig {
                    bucket: Some("backups".into()),
                    prefix: Some("supabase".into()),
                    endpoint: Some(emulator.endpoint.clone()),
                    token: Some(Secret::new("emulator-token")),
                    ..Default::default()
                },
                emulator: Some(emulator),
            }
        }
        other => panic!("no store for {other}"),
    }
}

/// The `s3` destination on `emulator`'s `backups` bucket under `prefix`.
pub fn s3_store(emulator: Emulator, prefix: &str) -> Store {
    use supascale_shared::Secret;
    use supascale_shared::destinations::DestinationConfig;
    let var = |field: &str, value: &str| {
        (
            format!("SUPASCALE_DESTINATIONS__S3__{field}"),
            value.to_string(),
        )
    };
    Store {
        env: vec![
            var("BUCKET", "backups"),
            var("PREFIX", prefix),
            var("ENDPOINT", &emulator.endpoint),
            var("ACCESS_KEY_ID", "test"),
            var("SECRET_ACCESS_KEY", "test"),
        ],
        config: DestinationConfig {
            bucket: Some("backups".into()),
            prefix: Some(prefix.into()),
            endpoint: Some(emulator.endpoint.clone()),
            access_key_id: Some("test".into()),
            secret_access_key: Some(Secret::new("test")),
            ..Default::default()
        },
        emulator: Some(emulator),
    }
}

/// moto with a `bucket` created with Object Lock enabled (and so
/// versioning), as immutable backups need.
pub async fn s3_locked(bucket: &str) -> Emulator {
    let emulator = moto(free_port());
    create_bucket(
        reqwest::Client::new()
            .put(format!("{}/{bucket}", emulator.endpoint))
            .header("x-amz-bucket-object-lock-enabled", "true"),
    )
    .await;
    emulator
}
