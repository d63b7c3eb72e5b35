//! Test harness: starts the real `supascale-api` / `supascale-worker`
//! binaries on port 0 with a temporary data dir and, for scale-out, a fresh
//! PostgreSQL database with a random name, which is dropped afterwards.
//!
//! The binaries must be built first (`scripts/test` does it):
//! `cargo build --workspace --bins`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;

pub mod api;
pub mod cloud_double;
pub mod emulators;
pub mod google_oauth;
pub mod official_pipeline;
pub mod refproject;
pub mod scratch_cluster;

pub use api::{Caller, SendJson, file_form};

/// The PostgreSQL server the tests use (trust auth, see README).
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn random_suffix(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect::<String>()
        .to_lowercase()
}

/// Where cargo put the binaries: beside the test executable's `deps/`.
pub fn bin_path(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("SUPASCALE_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A PostgreSQL database that exists for one test.
pub struct TempDatabase {
    pub name: String,
    pub url: String,
}

impl TempDatabase {
    pub async fn create(prefix: &str) -> Self {
        let name = format!("{prefix}_{}", random_suffix(12));
        psql(PG_ADMIN_URL, &format!("CREATE DATABASE \"{name}\""));
        Self {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-q", "-X", PG_ADMIN_URL, "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs SQL through `psql`, panicking with its output on failure.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("psql is installed");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A response's status and JSON body.
pub async fn status_and_body(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// A private Redis on a free loopback port, for tests that restart or
/// empty it; killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> Self {
        let port = emulators::free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            child: Some(child),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A queue name of its own on the shared Redis, whose keys (and apalis'
/// global registry entry) are removed when dropped, even after a failure.
/// Declare it before the processes that use it, so it is dropped after them.
pub struct RedisQueue {
    pub name: String,
}

impl RedisQueue {
    pub fn new() -> Self {
        Self {
            name: format!("supascale-test-{}", random_suffix(10)),
        }
    }
}

impl RedisQueue {
    /// Everything the queue's keys hold, as text: what a test looks for
    /// secrets in.
    pub fn contents(&self) -> String {
        let cli = |args: &[&str]| {
            Command::new("redis-cli")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let mut all = String::new();
        for key in cli(&["--scan", "--pattern", &format!("{}*", self.name)]).lines() {
            let kind = cli(&["TYPE", key]);
            let value = match kind.trim() {
                "string" => cli(&["GET", key]),
                "hash" => cli(&["HGETALL", key]),
                "list" => cli(&["LRANGE", key, "0", "-1"]),
                "set" => cli(&["SMEMBERS", key]),
                "zset" => cli(&["ZRANGE", key, "0", "-1"]),
                other => format!("({other})"),
            };
            all.push_str(&format!("{key}: {value}\n"));
        }
        all
    }
}

impl Default for RedisQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        let keys = Command::new("redis-cli")
            .args(["--scan", "--pattern", &format!("{}*", self.name)])
            .output();
        if let Ok(keys) = keys {
            let keys: Vec<String> = String::from_utf8_lossy(&keys.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if !keys.is_empty() {
                let _ = Command::new("redis-cli").arg("DEL").args(&keys).output();
            }
        }
        let _ = Command::new("redis-cli")
            .args([
                "ZREM",
                "core:apalis:queues:list",
                &format!("{}:workers", self.name),
            ])
            .output();
    }
}

/// A running `supascale-api` process.
pub struct TestApp {
    /// Declared first so that it is dropped (killed) before the database.
    process: Started,
    pub address: String,
    pub admin_key: String,
    pub data_dir: tempfile::TempDir,
    pub backend: Backend,
    pub database: Option<TempDatabase>,
    pub client: reqwest::Client,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// What it was started with, for [`TestApp::restart`].
    launch: Launch,
}

/// What to start a process with.
#[derive(Default, Clone)]
pub struct Launch {
    pub env: Vec<(String, String)>,
}

impl Launch {
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }
}

/// A started process whose output lines are collected.
pub struct Started {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

/// Starts a binary with only the environment given (plus PATH and HOME), so
/// no SUPASCALE_* variable of the developer's shell leaks in.
pub fn start(binary: &str, launch: &Launch) -> Started {
    let mut command = Command::new(bin_path(binary));
    command.env_clear();
    for key in ["PATH", "HOME", "TMPDIR"] {
        if let Ok(value) = std::env::var(key) {
            command.env(key, value);
        }
    }
    command.env("RUST_LOG", "info,sqlx=warn");
    for (k, v) in &launch.env {
        command.env(k, v);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start binary");
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));
    Started {
        child,
        stdout,
        stderr,
    }
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Started {
    /// Waits until a stdout line contains `needle`; returns that line.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return Ok(line.clone());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "exited with {status} before printing {needle:?}; stderr:\n{}",
                    self.stderr.lock().unwrap().join("\n")
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("did not print {needle:?} within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; returns its exit code and stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return (status.code(), self.stderr.lock().unwrap().join("\n"));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
    }
}

/// A test that fails must not leave its processes running.
impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_api(launch: &Launch) -> (Started, String) {
    let mut started = start("supascale-api", launch);
    let line = started
        .wait_for_stdout("listening on http://", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("supascale-api did not start: {e}"));
    let address = line
        .split("listening on ")
        .nth(1)
        .expect("address")
        .trim()
        .to_string();
    (started, address)
}

impl TestApp {
    /// A server on the embedded default (SQLite) or on a fresh PostgreSQL
    /// database, with a known admin key.
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, Launch::default()).await
    }

    pub async fn spawn_with(backend: Backend, launch: Launch) -> TestApp {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let admin_key = format!("ssk_test_{}", random_suffix(32));
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TempDatabase::create("supascale_test").await),
        };
        let mut env = Launch::default()
            .env("SUPASCALE_LISTEN", "127.0.0.1:0")
            .env("SUPASCALE_DATA_DIR", data_dir.path().to_str().unwrap())
            .env("SUPASCALE_BOOTSTRAP_API_KEY", admin_key.clone());
        if let Some(db) = &database {
            let key_file = data_dir.path().join("master.key");
            std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).unwrap();
            env = env
                .env("SUPASCALE_DATABASE_URL", db.url.clone())
                .env("SUPASCALE_MASTER_KEY_FILE", key_file.to_str().unwrap());
        }
        env.env.extend(launch.env);
        let (started, address) = start_api(&env);
        let stdout = started.stdout.clone();
        let stderr = started.stderr.clone();
        TestApp {
            address,
            admin_key,
            data_dir,
            backend,
            database,
            client: reqwest::Client::new(),
            process: started,
            stdout,
            stderr,
            launch: env,
        }
    }

    /// Kills the API with SIGKILL (its in-process workers die with it) and
    /// starts it again on the same data dir and control plane. The address
    /// changes.
    pub fn restart(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        let (started, address) = start_api(&self.launch);
        self.stdout = started.stdout.clone();
        self.stderr = started.stderr.clone();
        self.process = started;
        self.address = address;
    }

    /// Changes the environment the next [`TestApp::restart`] starts with.
    pub fn set_env(&mut self, key: &str, value: impl Into<String>) {
        self.launch = std::mem::take(&mut self.launch).env(key, value);
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.as_admin().get(path)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.as_admin().post(path)
    }

    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.as_admin().patch(path)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.as_admin().delete(path)
    }

    /// `GET path` as the admin: its status and JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        self.as_admin().get_json(path).await
    }

    /// `POST path` with the JSON `body` as the admin: status and JSON body.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.as_admin().post_json(path, body).await
    }

    /// `PATCH path` with the JSON `body` as the admin: status and JSON body.
    pub async fn patch_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.as_admin().patch_json(path, body).await
    }

    /// `DELETE path` as the admin: its status and JSON body.
    pub async fn delete_json(&self, path: &str) -> (u16, serde_json::Value) {
        self.as_admin().delete_json(path).await
    }

    /// The server's log so far.
    pub fn logs(&self) -> String {
        let mut all = self.stdout.lock().unwrap().clone();
        all.extend(self.stderr.lock().unwrap().iter().cloned());
        all.join("\n")
    }

    /// What is in the temporary area where jobs spool dumps
    /// (`<data dir>/tmp`): empty whenever no job runs.
    pub fn spool_files(&self) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(self.data_dir.path().join("tmp"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default()
    }

    /// The control plane's URL: the SQLite file in the data dir or the
    /// PostgreSQL database.
    pub fn control_plane_url(&self) -> String {
        match &self.database {
            Some(db) => db.url.clone(),
            None => format!(
                "sqlite://{}",
                self.data_dir.path().join("supascale.db").display()
            ),
        }
    }

    /// The control plane, to insert rows through the entities (rows that no
    /// endpoint writes, or written as an older version left them) and to
    /// read or change them with SQL.
    pub async fn control_plane(&self) -> ControlPlane {
        let url = self.control_plane_url();
        match &self.database {
            Some(_) => ControlPlane::Postgres(
                sqlx::PgPool::connect(&url)
                    .await
                    .expect("connect to control plane"),
            ),
            None => ControlPlane::Sqlite(
                sqlx::SqlitePool::connect(&url)
                    .await
                    .expect("open control plane"),
            ),
        }
    }

    /// Polls a job (`/api/v1/jobs/<id>`) until it ends or `timeout` passes;
    /// returns its last state.
    pub async fn wait_for_job(&self, job_url: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, job) = self.get_json(job_url).await;
            if job["status"] == "completed"
                || job["status"] == "failed"
                || Instant::now() > deadline
            {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a `supascale-worker` on this app's control plane (PostgreSQL)
    /// with the same master key, plus `extra`; returns once it waits for jobs.
    pub fn start_worker(&self, extra: Launch) -> Started {
        let data = self.data_dir.path();
        let mut launch = Launch::default()
            .env("SUPASCALE_DATA_DIR", data.to_str().unwrap())
            .env(
                "SUPASCALE_MASTER_KEY_FILE",
                data.join("master.key").to_str().unwrap(),
            )
            .env(
                "SUPASCALE_DATABASE_URL",
                self.database
                    .as_ref()
                    .expect("a PostgreSQL control plane")
                    .url
                    .clone(),
            );
        launch.env.extend(extra.env);
        let mut worker = start("supascale-worker", &launch);
        worker
            .wait_for_stdout("waiting for jobs", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("supascale-worker did not start: {e}"));
        worker
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.process.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
    }
}

pub enum ControlPlane {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// A backup row as the backup engine will write it.
#[derive(Debug, Clone)]
pub struct BackupRow {
    pub id: String,
    pub project_id: String,
    pub project_name: String,
    pub backup_type: String,
    pub status: String,
    pub destination: String,
    pub size: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl ControlPlane {
    /// The same pool as a sea-orm connection: rows are written through the
    /// entities the service itself uses, so one text fits both backends.
    pub fn db(&self) -> sea_orm::DatabaseConnection {
        match self {
            ControlPlane::Sqlite(pool) => {
                sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool.clone())
            }
            ControlPlane::Postgres(pool) => {
                sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool.clone())
            }
        }
    }

    pub async fn insert_backup(&self, row: &BackupRow) {
        use sea_orm::{ActiveModelTrait, ActiveValue::Set};
        use supascale_shared::entities::backup;
        let completed =
            (row.status == "completed").then_some(row.created_at + chrono::Duration::seconds(90));
        backup::ActiveModel {
            id: Set(row.id.clone()),
            project_id: Set(row.project_id.clone()),
            project_name: Set(row.project_name.clone()),
            backup_type: Set(row.backup_type.clone()),
            status: Set(row.status.clone()),
            destination: Set(row.destination.clone()),
            path: Set(format!("/backups/{}/{}.tar.gz", row.project_id, row.id)),
            size: Set(row.size),
            encrypted: Set(false),
            compression: Set("gzip".into()),
            sha256: Set(None),
            duration_secs: Set(completed.map(|_| 90)),
            error: Set(None),
            manifest: Set(None),
            job_id: Set(None),
            created_at: Set(row.created_at),
            completed_at: Set(completed),
            verified_at: Set(None),
            verify_error: Set(None),
            locked_until: Set(None),
        }
        .insert(&self.db())
        .await
        .expect("insert backup");
    }

    pub async fn insert_restore(
        &self,
        id: &str,
        backup_id: &str,
        project_id: &str,
        restored_at: chrono::DateTime<chrono::Utc>,
        duration: i64,
    ) {
        use sea_orm::{ActiveModelTrait, ActiveValue::Set};
        use supascale_shared::entities::restore;
        restore::ActiveModel {
            id: Set(id.into()),
            backup_id: Set(backup_id.into()),
            project_id: Set(project_id.into()),
            restore_types: Set(r#"["database"]"#.into()),
            status: Set("completed".into()),
            warnings: Set(r#"["role x is missing"]"#.into()),
            error: Set(None),
            duration_secs: Set(Some(duration)),
            job_id: Set(None),
            created_at: Set(restored_at),
            restored_at: Set(Some(restored_at)),
        }
        .insert(&self.db())
        .await
        .expect("insert restore");
    }

    /// Inserts a job row: `store::new_job(..)` with the fields a test
    /// needs changed.
    pub async fn insert_job(
        &self,
        job: supascale_shared::entities::job::ActiveModel,
    ) -> supascale_shared::entities::job::Model {
        use sea_orm::ActiveModelTrait;
        job.insert(&self.db()).await.expect("insert job")
    }

    /// The first column of the first row of `sql`, as text (`None` when
    /// there is no row or it is NULL).
    pub async fn text(&self, sql: &str) -> Option<String> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self {
            ControlPlane::Sqlite(pool) => sqlx::query_scalar::<_, Option<String>>(sql)
                .fetch_optional(pool)
                .await
                .expect("sql")
                .flatten(),
            ControlPlane::Postgres(pool) => sqlx::query_scalar::<_, Option<String>>(sql)
                .fetch_optional(pool)
                .await
                .expect("sql")
                .flatten(),
        }
    }

    pub async fn execute(&self, sql: &str) {
        match self {
            ControlPlane::Sqlite(pool) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                    .execute(pool)
                    .await
                    .expect("sql");
            }
            ControlPlane::Postgres(pool) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                    .execute(pool)
                    .await
                    .expect("sql");
            }
        }
    }
}

/// A small self-hosted project: files on disk and a database with rows.
pub struct Project {
    pub root: tempfile::TempDir,
    pub database: TempDatabase,
}

pub async fn make_project() -> Project {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("volumes/functions/hello-world")).unwrap();
    std::fs::create_dir_all(r.join("volumes/storage/stub/stub/avatars/me.png")).unwrap();
    std::fs::create_dir_all(r.join("volumes/db/data")).unwrap();
    std::fs::create_dir_all(r.join("volumes/api")).unwrap();
    std::fs::write(r.join(".env"), "POSTGRES_PASSWORD=pw\nJWT_SECRET=secret\n").unwrap();
    std::fs::write(r.join("docker-compose.yml"), "name: supabase\n").unwrap();
    std::fs::write(r.join("volumes/api/kong.yml"), "_format_version: '2.1'\n").unwrap();
    std::fs::write(r.join("volumes/db/data/PG_VERSION"), "15\n").unwrap();
    std::fs::write(
        r.join("volumes/functions/hello-world/index.ts"),
        "Deno.serve(() => new Response('hi'));\n",
    )
    .unwrap();
    let object = r.join("volumes/storage/stub/stub/avatars/me.png/9f8e7d6c");
    std::fs::write(&object, vec![42u8; 70_000]).unwrap();
    xattr::set(&object, "user.supabase.content-type", b"image/png").unwrap();
    let database = TempDatabase::create("supascale_project").await;
    psql(
        &database.url,
        // A Supabase project always has its auth and storage schemas: a
        // restore checks for them before it replaces anything.
        "CREATE SCHEMA auth; CREATE SCHEMA storage; \
         CREATE TABLE public.posts (id bigserial PRIMARY KEY, title text); \
         INSERT INTO public.posts (title) SELECT 'post ' || g FROM generate_series(1, 500) g;",
    );
    Project { root, database }
}

/// Registers `project` as `id` through the API.
pub async fn register(app: &TestApp, project: &Project, id: &str) {
    let (status, body) = app
        .projects()
        .register(serde_json::json!({"id": id, "name": "Test Project",
            "rootDir": project.root.path().to_str().unwrap(), "databaseUrl": project.database.url}))
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Runs async test bodies against both control planes: each `name` becomes
/// `sqlite::name` and `postgres::name`, calling `name(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// The two ways to run the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// SQLite, the in-process queue and two in-process workers.
    Embedded,
    /// PostgreSQL, Redis, an API without workers and two `supascale-worker`s.
    ScaleOut,
}

/// A whole deployment: the API and, in scale-out, its worker processes.
pub struct Cluster {
    pub workers: Vec<Started>,
    pub app: TestApp,
    /// Dropped last: removes the queue's Redis keys.
    pub queue: Option<RedisQueue>,
}

impl Cluster {
    pub async fn start(deployment: Deployment, extra: Launch) -> Cluster {
        match deployment {
            Deployment::Embedded => {
                let launch = Launch::default().env("SUPASCALE_WORKERS", "2");
                let mut launch_all = launch.clone();
                launch_all.env.extend(extra.env);
                Cluster {
                    workers: Vec::new(),
                    app: TestApp::spawn_with(Backend::Sqlite, launch_all).await,
                    queue: None,
                }
            }
            Deployment::ScaleOut => {
                let queue = RedisQueue::new();
                let shared = Launch::default()
                    .env("SUPASCALE_REDIS_URL", "redis://127.0.0.1:6379")
                    .env("SUPASCALE_QUEUE_NAME", queue.name.clone());
                let mut api = shared.clone().env("SUPASCALE_WORKERS", "0");
                api.env.extend(extra.env.clone());
                let app = TestApp::spawn_with(Backend::Postgres, api).await;
                let mut workers = Vec::new();
                for _ in 0..2 {
                    let mut launch = shared.clone();
                    launch.env.extend(extra.env.clone());
                    workers.push(app.start_worker(launch));
                }
                Cluster {
                    workers,
                    app,
                    queue: Some(queue),
                }
            }
        }
    }

    /// Kills with SIGKILL the process that runs `job`'s worker (whose id
    /// holds its pid): a worker process, or the API in the embedded
    /// default, which is then started again.
    pub fn kill_worker_of(&mut self, job: &serde_json::Value) {
        let worker = job["workerId"]
            .as_str()
            .expect("a running job names its worker");
        let pid: u32 = worker
            .rsplit('-')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("a worker id holds the pid");
        if pid == self.app.pid() {
            self.app.restart();
            return;
        }
        let index = self
            .workers
            .iter()
            .position(|w| w.child.id() == pid)
            .expect("the job's worker is one of ours");
        let mut dead = self.workers.remove(index);
        dead.signal("KILL");
        dead.wait_exit(Duration::from_secs(10));
    }
}

/// Holds `ACCESS EXCLUSIVE` on a table of a project's database while it
/// lives: a `pg_dump` of that database waits for it, which keeps a backup
/// job running for as long as a test needs.
pub struct TableLock {
    conn: Option<sqlx::PgConnection>,
}

impl TableLock {
    /// Locks `public.posts` (every [`make_project`] database has it).
    pub async fn hold(database_url: &str) -> TableLock {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query("LOCK TABLE public.posts IN ACCESS EXCLUSIVE MODE")
            .execute(&mut conn)
            .await
            .unwrap();
        TableLock { conn: Some(conn) }
    }

    /// Reads `public.posts` in an open transaction: readers go on, but
    /// whatever drops or rewrites the table (a restore) waits for it.
    pub async fn hold_shared(database_url: &str) -> TableLock {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query("LOCK TABLE public.posts IN ACCESS SHARE MODE")
            .execute(&mut conn)
            .await
            .unwrap();
        TableLock { conn: Some(conn) }
    }

    pub async fn release(mut self) {
        use sqlx::Connection;
        if let Some(mut conn) = self.conn.take() {
            if let Err(e) = sqlx::query("ROLLBACK").execute(&mut conn).await {
                panic!("rollback: {e}");
            }
            let _ = conn.close().await;
        }
    }
}

/// Sessions on `database_url`'s server named after `job_id` (what the job's
/// `pg_dump` / `psql` children use).
pub async fn job_sessions(database_url: &str, job_id: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(format!("supascale-job-{job_id}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let _ = conn.close().await;
    n
}

/// Starts a restore of everything with `?async=true` and returns (its 202
/// body, its job id) once its session on the project database at
/// `database_url` is there, waiting for a lock the caller holds (the
/// restore has staged its files by then).
pub async fn start_restore_behind_lock(
    app: &TestApp,
    database_url: &str,
    backup_id: &str,
) -> (serde_json::Value, String) {
    let (status, accepted) = app
        .post_json(
            &format!("/api/v1/backups/{backup_id}/restore?async=true"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let job_id = accepted["job"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while job_sessions(database_url, &job_id).await == 0 {
        assert!(Instant::now() < deadline, "the restore never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (accepted, job_id)
}

/// `POST /backups?async=true` with `body`: the 202 body.
pub async fn start_backup(app: &TestApp, body: serde_json::Value) -> serde_json::Value {
    let (status, accepted) = app.backups().start(body).await;
    assert_eq!(status, 202, "{accepted}");
    accepted
}

/// Polls the job until `check` holds or `timeout` passes; returns the
/// job's last state.
pub async fn wait_for_job_state(
    app: &TestApp,
    job_id: &str,
    timeout: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, job) = app.jobs().get(job_id).await;
        if check(&job) || Instant::now() > deadline {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One server-sent event as a real SSE parser (`sse-codec`) reads it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: serde_json::Value,
}

/// Reads an SSE response until it ends (or `timeout` passes, or `stop`
/// says so after an event).
pub async fn read_events(
    response: reqwest::Response,
    timeout: Duration,
    stop: impl Fn(&SseEvent) -> bool,
) -> Vec<SseEvent> {
    use futures::{StreamExt, TryStreamExt};
    let bytes = response
        .bytes_stream()
        .map_err(std::io::Error::other)
        .into_async_read();
    let mut decoded = sse_codec::decode_stream(bytes);
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, decoded.next()).await;
        match next {
            Ok(Some(Ok(sse_codec::Event::Message {
                id, event, data, ..
            }))) => {
                let event = SseEvent {
                    id,
                    event,
                    data: serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("data is not one JSON line ({e}): {data}")),
                };
                let done = stop(&event);
                events.push(event);
                if done {
                    return events;
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("not a valid SSE stream: {e:?}"),
            Ok(None) | Err(_) => return events,
        }
    }
}

/// A small filesystem at `path` for disk-space tests: a tmpfs of the size
/// asked for, since the tests run as root. Where this process may not
/// mount, `path` stays on the test disk and [`SmallDisk::reserve_leaving`]
/// makes its free space small through `SUPASCALE_DISK_RESERVE_BYTES`.
pub struct SmallDisk {
    pub path: PathBuf,
    pub mounted: bool,
}

impl SmallDisk {
    /// Mounts over `path` (created if missing); what was in it is hidden
    /// until the drop.
    pub fn mount(path: &Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!(
                "cannot mount a tmpfs: {} stays on the test disk",
                path.display()
            );
        }
        SmallDisk {
            path: path.to_path_buf(),
            mounted,
        }
    }

    pub fn free(&self) -> u64 {
        supascale_shared::disk::available_bytes(&self.path).unwrap()
    }

    /// The reserve that leaves `room` bytes to write, from what is free now.
    pub fn reserve_leaving(&self, room: u64) -> u64 {
        self.free().saturating_sub(room)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// The uploads in `data_dir` that wait for a job: none once every import
/// has ended.
pub fn waiting_uploads(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("uploads/.supascale-uploads"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Bytes the files under `dir` take on disk (as `du` counts them).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            stack.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    total
}
