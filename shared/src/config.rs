//! Layered configuration: built-in defaults, then the TOML file named by
//! `SUPASCALE_CONFIG`, then `SUPASCALE_*` environment variables (nested keys
//! joined with `__`, e.g. `SUPASCALE_DESTINATIONS__S3__BUCKET`).
//!
//! Secrets may come from a file instead: `SUPASCALE_DATABASE_URL_FILE`,
//! `SUPASCALE_REDIS_URL_FILE`, `SUPASCALE_BOOTSTRAP_API_KEY_FILE` (the file's
//! contents, trimmed, win over the plain variable).
//!
//! A bad value fails at start with a message that names the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The embedded default's control plane, in the data dir.
pub const CONTROL_PLANE_FILE: &str = "supascale.db";

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// The whole configuration of a Supascale process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the API listens (`SUPASCALE_LISTEN`).
    pub listen: String,
    /// Data directory of the embedded default (`SUPASCALE_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Control-plane database; unset = SQLite file in the data dir.
    pub database_url: Option<Secret>,
    /// Redis for the queue and the event bus; unset = embedded queue.
    pub redis_url: Option<Secret>,
    /// Workers run inside `supascale-api` (embedded default) or by a
    /// `supascale-worker` process.
    pub workers: usize,
    /// An admin key created at start when given.
    pub bootstrap_api_key: Option<Secret>,
    /// The key that encrypts secrets at rest; default `<data dir>/master.key`.
    pub master_key_file: Option<PathBuf>,
    /// Pool size of the control-plane database.
    pub database_max_connections: u32,
    /// Largest request body the API accepts, in bytes (uploads excepted).
    pub max_body_bytes: u64,
    /// Log format: `text` or `json`.
    pub log_format: String,
    /// Cache `GET /backups` pages (scale-out only; invalidated by the
    /// control plane's notifications).
    pub list_cache: bool,
    /// `[destinations.<name>]`, one per contract destination that is used.
    pub destinations: std::collections::BTreeMap<String, crate::destinations::DestinationConfig>,
    /// The queue's name (in Redis, the prefix of its keys).
    pub queue_name: String,
    /// Attempts a job gets before it fails for good.
    pub job_attempts: i32,
    /// Jobs a `supascale-worker` process runs at once.
    pub worker_concurrency: usize,
    /// How long a job-starting request waits for the job before it answers
    /// 202 Accepted instead.
    pub job_wait_seconds: u64,
    /// How long a stopping worker lets its running jobs finish before it
    /// hands them back.
    pub shutdown_grace_seconds: u64,
    /// Where the Postgres client programs of each major version are
    /// (`:`-separated directories); by default the distribution layouts,
    /// then `PATH` (see `pgtools`).
    pub postgres_bin_dirs: Option<String>,
    /// Disk space a backup leaves free on its temporary area and a local
    /// destination: a backup that would need more fails before it starts.
    pub disk_reserve_bytes: u64,
    /// age recipients (`age1…` X25519 public keys, separated by commas or
    /// spaces) that `encrypt: true` backups are encrypted for.
    pub encryption_recipients: Option<String>,
    /// A file of age recipients, one per line (`#` starts a comment), as
    /// `age -R` reads it.
    pub encryption_recipients_file: Option<PathBuf>,
    /// Read every stored artifact back and compare its SHA-256 before the
    /// backup is `completed` (doubles the transfer; the size is always
    /// checked).
    pub verify_readback: bool,
    /// The age identity file (`AGE-SECRET-KEY-1…` lines, as `age -d -i`
    /// reads it) that restores decrypt encrypted backups with. Keep it
    /// somewhere other than the backups.
    pub encryption_identity_file: Option<PathBuf>,
    /// How long a restore waits for other sessions' locks on the target
    /// database before it fails and names them.
    pub restore_lock_timeout_seconds: u64,
    /// Largest file an import accepts, in bytes; a larger upload is refused
    /// with 413 (by its `Content-Length` before it is read).
    pub max_upload_bytes: u64,
    /// Where uploads wait for their import job: the name of a configured
    /// destination (`s3`, …; every worker must reach it), under
    /// `.supascale-uploads/`. Unset: `<data dir>/uploads`, which only the
    /// machine's own workers see.
    pub upload_destination: Option<String>,
    /// What an uploaded archive may expand to: bytes of all its files…
    pub import_max_expanded_bytes: u64,
    /// …and entries (files, folders, links).
    pub import_max_entries: u64,
    /// A multipart upload on an S3-kind destination that was started, and
    /// last received a part, this long ago belongs to a worker that died:
    /// the reconciler aborts it so its parts stop being billed.
    pub stale_upload_seconds: u64,
    /// Folders under which projects may live (`:`-separated). When set, a
    /// project's folders must lie under one of them; when unset, only an
    /// admin key that is not limited to projects may set a project's
    /// folders or database URL.
    pub project_roots: Option<String>,
    /// What an uploaded archive may expand to, as a multiple of its
    /// compressed size (a bomb fails within seconds, naming the entry).
    pub import_max_expansion_ratio: u64,
    /// How long a client may take to send a request's headers.
    pub http_header_timeout_seconds: u64,
    /// How long a request body may go without a byte arriving.
    pub http_body_timeout_seconds: u64,
    /// How long an idle keep-alive connection is kept open.
    pub http_idle_timeout_seconds: u64,
    /// Objects a lift & shift downloads from the source at a time.
    pub lift_shift_concurrency: usize,
    /// How often workers probe every destination (at start, then once per
    /// this many seconds across all workers).
    pub destination_probe_seconds: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            redis_url: None,
            workers: 2,
            bootstrap_api_key: None,
            master_key_file: None,
            database_max_connections: 16,
            max_body_bytes: 1024 * 1024,
            log_format: "text".into(),
            list_cache: true,
            destinations: Default::default(),
            queue_name: "supascale:jobs".into(),
            job_attempts: 3,
            worker_concurrency: 2,
            job_wait_seconds: 55,
            shutdown_grace_seconds: 60,
            postgres_bin_dirs: None,
            disk_reserve_bytes: 256 * 1024 * 1024,
            encryption_recipients: None,
            encryption_recipients_file: None,
            verify_readback: true,
            encryption_identity_file: None,
            restore_lock_timeout_seconds: 10,
            max_upload_bytes: 50 * 1024 * 1024 * 1024,
            upload_destination: None,
            import_max_expanded_bytes: 200 * 1024 * 1024 * 1024,
            import_max_entries: 5_000_000,
            stale_upload_seconds: crate::destinations::multipart::STALE_UPLOAD_AFTER.as_secs(),
            project_roots: None,
            import_max_expansion_ratio: 200,
            http_header_timeout_seconds: 30,
            http_body_timeout_seconds: 60,
            http_idle_timeout_seconds: 120,
            lift_shift_concurrency: 8,
            destination_probe_seconds: 300,
        }
    }
}

/// Which of the two deployments this process belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// SQLite control plane, in-process queue and workers.
    Embedded,
    /// PostgreSQL control plane shared by many processes.
    ScaleOut,
}

const SECRET_FILE_VARS: [(&str, &str); 3] = [
    ("SUPASCALE_DATABASE_URL_FILE", "database_url"),
    ("SUPASCALE_REDIS_URL_FILE", "redis_url"),
    ("SUPASCALE_BOOTSTRAP_API_KEY_FILE", "bootstrap_api_key"),
];

impl Config {
    /// Reads defaults → `$SUPASCALE_CONFIG` → environment, then validates.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(|name| std::env::var(name).ok())
    }

    /// The same, with environment lookups made through `var` (for tests).
    pub fn load_from(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = var("SUPASCALE_CONFIG").filter(|p| !p.is_empty()) {
            if !Path::new(&path).is_file() {
                return Err(ConfigError(format!(
                    "SUPASCALE_CONFIG names {path}, which is not a readable file"
                )));
            }
            figment = figment.merge(Toml::file(&path));
        }
        figment = figment.merge(
            Env::prefixed("SUPASCALE_")
                .ignore(&["CONFIG"])
                // `<SECRET>_FILE` variables are read below, not settings.
                .filter(|key| {
                    let key = key.as_str().to_ascii_uppercase();
                    !SECRET_FILE_VARS
                        .iter()
                        .any(|(variable, _)| variable.strip_prefix("SUPASCALE_") == Some(&key))
                })
                .split("__"),
        );
        for (variable, key) in SECRET_FILE_VARS {
            if let Some(path) = var(variable).filter(|p| !p.is_empty()) {
                let value = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError(format!("{variable}: cannot read {path}: {e}")))?;
                figment = figment.merge(Serialized::default(key, value.trim().to_string()));
            }
        }
        let config: Config = figment.extract().map_err(|e| ConfigError(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if let Some(url) = &self.database_url {
            let url = url.expose();
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                return Err(ConfigError(
                    "SUPASCALE_DATABASE_URL must start with sqlite:, postgres:// or postgresql://"
                        .into(),
                ));
            }
        }
        if let Some(url) = &self.redis_url {
            let url = url.expose();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError(
                    "SUPASCALE_REDIS_URL must start with redis:// or rediss://".into(),
                ));
            }
        }
        if self.database_max_connections == 0 {
            return Err(ConfigError(
                "SUPASCALE_DATABASE_MAX_CONNECTIONS must be at least 1".into(),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError(format!(
                "SUPASCALE_LOG_FORMAT must be text or json, not {:?}",
                self.log_format
            )));
        }
        if let Some(name) = self.destinations.keys().find(|name| {
            <crate::domain::DestinationName as crate::domain::Vocabulary>::parse(name).is_err()
        }) {
            return Err(ConfigError(format!(
                "SUPASCALE_DESTINATIONS__{}: {name:?} is not a destination; use one of {}",
                name.to_uppercase(),
                <crate::domain::DestinationName as crate::domain::Vocabulary>::names().join(", ")
            )));
        }
        // Before anything starts: a lock promised and not kept is worse
        // than no start.
        for (name, destination) in &self.destinations {
            crate::destinations::immutability_of(name, destination).map_err(|e| {
                ConfigError(format!(
                    "SUPASCALE_DESTINATIONS__{}__IMMUTABLE_DAYS: {e}",
                    name.to_uppercase()
                ))
            })?;
        }
        if !(1..=25).contains(&self.job_attempts) {
            return Err(ConfigError(
                "SUPASCALE_JOB_ATTEMPTS must be between 1 and 25".into(),
            ));
        }
        if self.queue_name.is_empty() {
            return Err(ConfigError("SUPASCALE_QUEUE_NAME must not be empty".into()));
        }
        if self.workers > 256 {
            return Err(ConfigError("SUPASCALE_WORKERS must be at most 256".into()));
        }
        if let Some(root) = self.project_roots().iter().find(|r| !r.is_absolute()) {
            return Err(ConfigError(format!(
                "SUPASCALE_PROJECT_ROOTS: {} is not an absolute path",
                root.display()
            )));
        }
        if self.import_max_expansion_ratio == 0 {
            return Err(ConfigError(
                "SUPASCALE_IMPORT_MAX_EXPANSION_RATIO must be at least 1".into(),
            ));
        }
        for (setting, value) in [
            (
                "SUPASCALE_HTTP_HEADER_TIMEOUT_SECONDS",
                self.http_header_timeout_seconds,
            ),
            (
                "SUPASCALE_HTTP_BODY_TIMEOUT_SECONDS",
                self.http_body_timeout_seconds,
            ),
            (
                "SUPASCALE_HTTP_IDLE_TIMEOUT_SECONDS",
                self.http_idle_timeout_seconds,
            ),
            (
                "SUPASCALE_DESTINATION_PROBE_SECONDS",
                self.destination_probe_seconds,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("{setting} must be at least 1")));
            }
        }
        if !(1..=64).contains(&self.lift_shift_concurrency) {
            return Err(ConfigError(
                "SUPASCALE_LIFT_SHIFT_CONCURRENCY must be between 1 and 64".into(),
            ));
        }
        self.recipients()?;
        self.identities()?;
        Ok(())
    }

    /// The age recipients backups are encrypted for (none: `encrypt: true`
    /// is refused).
    /// The age identities of `encryption_identity_file` (none when unset).
    pub fn identities(&self) -> Result<Vec<age::x25519::Identity>, ConfigError> {
        let Some(path) = &self.encryption_identity_file else {
            return Ok(Vec::new());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "SUPASCALE_ENCRYPTION_IDENTITY_FILE: cannot read {}: {e}",
                path.display()
            ))
        })?;
        let mut identities = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The key itself never goes into the message.
            let identity = line.parse::<age::x25519::Identity>().map_err(|_| {
                ConfigError(format!(
                    "SUPASCALE_ENCRYPTION_IDENTITY_FILE: line {} of {} is not an age X25519 \
                     identity (AGE-SECRET-KEY-1…)",
                    n + 1,
                    path.display()
                ))
            })?;
            identities.push(identity);
        }
        if identities.is_empty() {
            return Err(ConfigError(format!(
                "SUPASCALE_ENCRYPTION_IDENTITY_FILE: {} holds no identity",
                path.display()
            )));
        }
        Ok(identities)
    }

    pub fn recipients(&self) -> Result<Vec<age::x25519::Recipient>, ConfigError> {
        let mut recipients = Vec::new();
        let mut parse = |text: &str, setting: &str| -> Result<(), ConfigError> {
            for word in text
                .lines()
                .map(|l| l.split('#').next().unwrap_or(""))
                .flat_map(|l| l.split([',', ' ', '\t']))
                .filter(|w| !w.is_empty())
            {
                let recipient = word.parse::<age::x25519::Recipient>().map_err(|e| {
                    ConfigError(format!(
                        "{setting}: {word:?} is not an age X25519 recipient (age1…): {e}"
                    ))
                })?;
                recipients.push(recipient);
            }
            Ok(())
        };
        if let Some(text) = &self.encryption_recipients {
            parse(text, "SUPASCALE_ENCRYPTION_RECIPIENTS")?;
        }
        if let Some(path) = &self.encryption_recipients_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "SUPASCALE_ENCRYPTION_RECIPIENTS_FILE: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            parse(&text, "SUPASCALE_ENCRYPTION_RECIPIENTS_FILE")?;
        }
        Ok(recipients)
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError(format!(
                "SUPASCALE_LISTEN must be an address such as 127.0.0.1:8080, not {:?}",
                self.listen
            ))
        })
    }

    pub fn deployment(&self) -> Deployment {
        match &self.database_url {
            Some(url) if !url.expose().starts_with("sqlite:") => Deployment::ScaleOut,
            _ => Deployment::Embedded,
        }
    }

    /// The control-plane database URL, defaulting to a SQLite file.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_string(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join(CONTROL_PLANE_FILE).display()
            ),
        }
    }

    /// `project_roots` as paths (none when unset).
    pub fn project_roots(&self) -> Vec<PathBuf> {
        self.project_roots
            .as_deref()
            .unwrap_or("")
            .split(':')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }
}

/// Turns a figment error into one line naming the setting as the user wrote it.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join("__").to_uppercase();
            let setting = if key.is_empty() {
                "the configuration".to_string()
            } else {
                format!("SUPASCALE_{key}")
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            format!("{setting}{source}: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // figment's Env provider reads the real environment; these tests only
        // use variables no other test sets.
        let mut result = None;
        figment::Jail::expect_with(|jail| {
            for (k, v) in &map {
                jail.set_env(k, v);
            }
            result = Some(Config::load_from(|name| map.get(name).cloned()));
            Ok(())
        });
        result.expect("the jail ran")
    }

    #[test]
    fn defaults_are_the_embedded_deployment() {
        let config = load(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(config.deployment(), Deployment::Embedded);
        assert!(config.database_url().starts_with("sqlite://./data/"));
    }

    #[test]
    fn a_bad_value_names_the_setting() {
        let error = load(&[("SUPASCALE_WORKERS", "many")]).unwrap_err();
        assert!(error.0.contains("SUPASCALE_WORKERS"), "{}", error.0);
        let error = load(&[("SUPASCALE_LISTEN", "nowhere")]).unwrap_err();
        assert!(error.0.contains("SUPASCALE_LISTEN"), "{}", error.0);
        let error = load(&[("SUPASCALE_DATABASE_URL", "mysql://x")]).unwrap_err();
        assert!(error.0.contains("SUPASCALE_DATABASE_URL"), "{}", error.0);
    }

    #[test]
    fn the_file_layer_is_overridden_by_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nworkers = 5\n").unwrap();
        let config = load(&[
            ("SUPASCALE_CONFIG", file.to_str().unwrap()),
            ("SUPASCALE_WORKERS", "3"),
        ])
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000");
        assert_eq!(config.workers, 3);
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db");
        std::fs::write(&file, "postgres://u:p@h/db\n").unwrap();
        let config = load(&[("SUPASCALE_DATABASE_URL_FILE", file.to_str().unwrap())]).unwrap();
        assert_eq!(config.database_url(), "postgres://u:p@h/db");
        assert_eq!(config.deployment(), Deployment::ScaleOut);
        assert!(!format!("{config:?}").contains(":p@"));
    }

    #[test]
    fn age_keys_come_from_the_files_named_by_the_environment() {
        use age::secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let identity = age::x25519::Identity::generate();
        let identity_file = dir.path().join("key.txt");
        std::fs::write(
            &identity_file,
            format!("# created: now\n{}\n", identity.to_string().expose_secret()),
        )
        .unwrap();
        let recipients_file = dir.path().join("recipients.txt");
        std::fs::write(&recipients_file, format!("{}\n", identity.to_public())).unwrap();
        let config = load(&[
            (
                "SUPASCALE_ENCRYPTION_IDENTITY_FILE",
                identity_file.to_str().unwrap(),
            ),
            (
                "SUPASCALE_ENCRYPTION_RECIPIENTS_FILE",
                recipients_file.to_str().unwrap(),
            ),
        ])
        .unwrap();
        assert_eq!(config.identities().unwrap().len(), 1);
        assert_eq!(
            config.recipients().unwrap()[0].to_string(),
            identity.to_public().to_string()
        );
        std::fs::write(&identity_file, "AGE-SECRET-KEY-1NOTAKEY\n").unwrap();
        let error = load(&[(
            "SUPASCALE_ENCRYPTION_IDENTITY_FILE",
            identity_file.to_str().unwrap(),
        )])
        .unwrap_err();
        assert!(error.0.contains("line 1"), "{}", error.0);
        assert!(!error.0.contains("NOTAKEY"), "{}", error.0);
    }

    #[test]
    fn the_example_deployment_file_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/supascale.toml");
        let config = load(&[("SUPASCALE_CONFIG", path)]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:8080");
        assert_eq!(config.log_format, "json");
        assert_eq!(config.project_roots(), vec![PathBuf::from("/srv/supabase")]);
    }
}
