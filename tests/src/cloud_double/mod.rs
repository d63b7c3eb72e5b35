//! A stand-in for a Supabase Cloud project's Storage and Auth HTTP APIs,
//! for the lift & shift tests and benchmarks: it listens on
//! `127.0.0.1:<random port>` inside the caller's tokio runtime and answers
//! with the real wire format (paths, headers, status codes, JSON and error
//! bodies, as read in supabase/storage and supabase/auth; see each
//! handler in `server.rs`).
//!
//! Object bytes are never stored: they are generated from (seed, bucket,
//! key) on the fly, so 10,000 objects of 1 GB cost only their metadata.
//! Their MD5 (the listing's and the header's `eTag`) is computed when first
//! needed and kept.
//!
//! ```no_run
//! # async fn demo() {
//! use supascale_tests::cloud_double::{Bucket, CloudDouble, Object};
//! let double = CloudDouble::builder()
//!     .service_role_key("service-key")
//!     .bucket(Bucket::new("avatars").public(true))
//!     .object(Object::new("avatars", "u1/me.png", 70_000).mimetype("image/png"))
//!     .list_v2(true)
//!     .start()
//!     .await;
//! let url = format!("{}/storage/v1/bucket", double.base_url());
//! double.faults().throttle("avatars", "u1/me.png", 2, 1);
//! // ... run the migration against double.base_url() ...
//! assert_eq!(double.stats().downloads_of("avatars", "u1/me.png").completed, 1);
//! # let _ = url;
//! # }
//! ```

mod content;
mod faults;
mod listing;
mod seed;
mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

pub use faults::{Downloads, Fault, Faults, Route, Rule, Stats, Target};

use listing::BucketObjects;

/// The service-role key a double accepts unless told otherwise (JWT-shaped,
/// as Supabase's legacy keys are).
pub const DEFAULT_SERVICE_ROLE_KEY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
     eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UifQ.\
     Y2xvdWQtZG91YmxlLXNlcnZpY2Utcm9sZS1rZXk";

/// When the double's timestamps start (created_at of objects and buckets).
fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
}

/// A bucket and its settings, as `GET /storage/v1/bucket` lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub id: String,
    pub name: String,
    pub owner: Option<Uuid>,
    pub public: bool,
    pub file_size_limit: Option<u64>,
    pub allowed_mime_types: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Bucket {
    /// A private bucket without limits whose name is its id.
    pub fn new(id: &str) -> Self {
        let at = epoch() - chrono::Duration::days(30);
        Self {
            id: id.to_string(),
            name: id.to_string(),
            owner: None,
            public: false,
            file_size_limit: None,
            allowed_mime_types: None,
            created_at: at,
            updated_at: at,
        }
    }

    pub fn public(mut self, public: bool) -> Self {
        self.public = public;
        self
    }

    pub fn file_size_limit(mut self, bytes: u64) -> Self {
        self.file_size_limit = Some(bytes);
        self
    }

    pub fn allowed_mime_types<S: Into<String>>(
        mut self,
        types: impl IntoIterator<Item = S>,
    ) -> Self {
        self.allowed_mime_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    pub fn owner(mut self, owner: Uuid) -> Self {
        self.owner = Some(owner);
        self
    }
}

/// An object: where it is, how big, and what Storage keeps about it. Its
/// bytes come from the double's seed (see [`CloudDouble::object_bytes`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub bucket: String,
    /// The object's name in the bucket (`folder/sub/file.png`).
    pub key: String,
    pub size: u64,
    pub mimetype: String,
    /// `Cache-Control` (`max-age=3600` is what supabase-js uploads with).
    pub cache_control: String,
    pub owner: Option<Uuid>,
    /// `user_metadata` (only written by [`CloudDouble::seed_source_database`]).
    pub user_metadata: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_accessed_at: DateTime<Utc>,
}

impl Object {
    /// An object with a content type guessed from its extension and
    /// timestamps derived from its name (deterministic).
    pub fn new(bucket: &str, key: &str, size: u64) -> Self {
        let h = content::object_seed(0x5eed, bucket, key);
        let at = epoch() + chrono::Duration::milliseconds((h % 20_000_000_000) as i64);
        Self {
            bucket: bucket.to_string(),
            key: key.to_string(),
            size,
            mimetype: guess_mimetype(key).to_string(),
            cache_control: "max-age=3600".to_string(),
            owner: None,
            user_metadata: None,
            created_at: at,
            updated_at: at,
            last_accessed_at: at,
        }
    }

    pub fn mimetype(mut self, mimetype: &str) -> Self {
        self.mimetype = mimetype.to_string();
        self
    }

    pub fn cache_control(mut self, cache_control: &str) -> Self {
        self.cache_control = cache_control.to_string();
        self
    }

    pub fn owner(mut self, owner: Uuid) -> Self {
        self.owner = Some(owner);
        self
    }

    pub fn user_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.user_metadata = Some(metadata);
        self
    }

    /// Sets created_at, updated_at and last_accessed_at.
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.created_at = at;
        self.updated_at = at;
        self.last_accessed_at = at;
        self
    }
}

fn guess_mimetype(key: &str) -> &'static str {
    let ext = key.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        Some("txt") => "text/plain",
        Some("html" | "htm") => "text/html",
        Some("json") => "application/json",
        Some("pdf") => "application/pdf",
        Some("mp4") => "video/mp4",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}

/// `count` objects in `bucket` of `total_bytes` together (sizes vary from
/// a few bytes to several times the mean; some are empty), under nested
/// folders, with spaces, quotes and non-ASCII in some names. Same
/// arguments, same objects.
pub fn sample_objects(bucket: &str, count: usize, total_bytes: u64, seed: u64) -> Vec<Object> {
    const NAMES: [&str; 8] = crate::refproject::AWKWARD_NAMES;
    const EXTS: [&str; 4] = ["png", "txt", "bin", "jpg"];
    if count == 0 {
        return Vec::new();
    }
    let weights: Vec<u64> = (0..count)
        .map(|i| {
            let r = content::mix(
                seed.wrapping_add(i as u64)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            if i % 97 == 5 {
                0
            } else {
                1 + r % 1000 + if i % 50 == 0 { 4000 } else { 0 }
            }
        })
        .collect();
    let sum: u64 = weights.iter().sum::<u64>().max(1);
    let mut sizes: Vec<u64> = weights
        .iter()
        .map(|w| (u128::from(total_bytes) * u128::from(*w) / u128::from(sum)) as u64)
        .collect();
    // The rounding remainder goes to the first non-empty object.
    let rest = total_bytes - sizes.iter().sum::<u64>();
    if let Some(s) = sizes.iter_mut().find(|s| **s > 0) {
        *s += rest;
    }
    sizes
        .into_iter()
        .enumerate()
        .map(|(i, size)| {
            let depth = i % 4;
            let folders: Vec<String> = (0..depth).map(|k| format!("dir{}", (i >> k) % 7)).collect();
            let name = format!("{}-{i:06}.{}", NAMES[i % NAMES.len()], EXTS[i % EXTS.len()]);
            let key = if folders.is_empty() {
                name
            } else {
                format!("{}/{name}", folders.join("/"))
            };
            Object::new(bucket, &key, size)
        })
        .collect()
}

/// What `list-v2` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListV2 {
    /// A current server.
    Enabled,
    /// A multi-tenant server whose tenant has not run the `search-v2`
    /// migration: `400 FeatureNotEnabled "This feature is not available
    /// for your tenant"` (supabase/storage
    /// `src/http/routes/object/listObjectsV2.ts`).
    NotAvailableForTenant,
    /// A server from before the route: Storage's `404 Route … not found`.
    RouteMissing,
}

impl From<bool> for ListV2 {
    fn from(on: bool) -> Self {
        if on {
            ListV2::Enabled
        } else {
            ListV2::NotAvailableForTenant
        }
    }
}

/// The providers `GET /auth/v1/settings` reports under `external`, in the
/// order of supabase/auth `internal/api/settings.go` (`ProviderSettings`).
pub const AUTH_PROVIDERS: [&str; 26] = [
    "anonymous_users",
    "apple",
    "azure",
    "bitbucket",
    "discord",
    "facebook",
    "snapchat",
    "figma",
    "fly",
    "github",
    "gitlab",
    "google",
    "keycloak",
    "kakao",
    "linkedin",
    "linkedin_oidc",
    "notion",
    "spotify",
    "slack",
    "slack_oidc",
    "workos",
    "twitch",
    "twitter",
    "email",
    "phone",
    "zoom",
];

/// What `GET /auth/v1/settings` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSettings {
    /// Every provider of [`AUTH_PROVIDERS`] → enabled.
    pub external: BTreeMap<String, bool>,
    pub disable_signup: bool,
    pub mailer_autoconfirm: bool,
    pub phone_autoconfirm: bool,
    pub sms_provider: String,
    pub saml_enabled: bool,
    pub saml_private_key_next_configured: bool,
    pub passkeys_enabled: bool,
}

impl Default for AuthSettings {
    /// A new Cloud project: email sign-in only.
    fn default() -> Self {
        Self {
            external: AUTH_PROVIDERS
                .iter()
                .map(|p| (p.to_string(), *p == "email"))
                .collect(),
            disable_signup: false,
            mailer_autoconfirm: false,
            phone_autoconfirm: false,
            sms_provider: "twilio".to_string(),
            saml_enabled: false,
            saml_private_key_next_configured: false,
            passkeys_enabled: false,
        }
    }
}

impl AuthSettings {
    /// Turns a provider on or off; panics on a name Auth does not report.
    pub fn provider(mut self, name: &str, enabled: bool) -> Self {
        assert!(
            AUTH_PROVIDERS.contains(&name),
            "{name} is not one of Auth's providers: {AUTH_PROVIDERS:?}"
        );
        self.external.insert(name.to_string(), enabled);
        self
    }

    pub fn disable_signup(mut self, on: bool) -> Self {
        self.disable_signup = on;
        self
    }

    pub fn mailer_autoconfirm(mut self, on: bool) -> Self {
        self.mailer_autoconfirm = on;
        self
    }

    pub fn phone_autoconfirm(mut self, on: bool) -> Self {
        self.phone_autoconfirm = on;
        self
    }

    pub fn saml_enabled(mut self, on: bool) -> Self {
        self.saml_enabled = on;
        self
    }

    /// The providers that are on, in Auth's order.
    pub fn enabled(&self) -> Vec<&'static str> {
        AUTH_PROVIDERS
            .iter()
            .copied()
            .filter(|p| self.external.get(*p).copied().unwrap_or(false))
            .collect()
    }
}

/// An object as the double serves it.
pub(crate) struct Entry {
    pub object: Object,
    pub id: Uuid,
    pub version: Uuid,
    /// The content generator's key.
    pub content: u64,
    md5: OnceLock<String>,
    sha256: OnceLock<String>,
}

impl Entry {
    fn new(seed: u64, object: Object) -> Self {
        let content = content::object_seed(seed, &object.bucket, &object.key);
        let uuid = |salt: u64| {
            let hi = content::mix(content ^ salt);
            let lo = content::mix(hi ^ salt.rotate_left(17));
            uuid::Builder::from_random_bytes(
                ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes(),
            )
            .into_uuid()
        };
        Self {
            id: uuid(0x1d),
            version: uuid(0x5e),
            content,
            object,
            md5: OnceLock::new(),
            sha256: OnceLock::new(),
        }
    }

    /// MD5 hex of the bytes (computed on first use: blocking).
    pub fn md5(&self) -> &str {
        self.md5.get_or_init(|| {
            content::digests(self.content, self.object.size, true, false)
                .0
                .unwrap()
        })
    }

    pub fn has_md5(&self) -> bool {
        self.md5.get().is_some()
    }

    pub fn sha256(&self) -> &str {
        self.sha256.get_or_init(|| {
            content::digests(self.content, self.object.size, false, true)
                .1
                .unwrap()
        })
    }

    /// The quoted ETag (`"<md5>"`), in headers and in `metadata.eTag`.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.md5())
    }

    /// `storage.objects.metadata` as Storage writes it after an upload.
    pub fn metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "eTag": self.etag(),
            "size": self.object.size,
            "mimetype": self.object.mimetype,
            "cacheControl": self.object.cache_control,
            "lastModified": timestamp(self.object.updated_at),
            "contentLength": self.object.size,
            "httpStatusCode": 200,
        })
    }
}

/// A timestamp as Storage's JSON has it (JavaScript's `toISOString`).
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The double's data.
#[derive(Default)]
pub(crate) struct Store {
    pub buckets: Vec<Bucket>,
    pub objects: BTreeMap<String, BucketObjects>,
}

impl Store {
    pub fn entry(&self, bucket: &str, key: &str) -> Option<Arc<Entry>> {
        self.objects.get(bucket)?.by_name.get(key).cloned()
    }
}

/// Everything the server reads, shared with the test.
pub(crate) struct State {
    pub key: String,
    pub seed: u64,
    pub store: RwLock<Store>,
    pub list_v2: Mutex<ListV2>,
    pub auth: Mutex<AuthSettings>,
    pub faults: Faults,
    pub stats: Stats,
}

impl State {
    fn add_bucket(&self, bucket: Bucket) {
        let mut store = self.store.write().unwrap();
        store.objects.entry(bucket.id.clone()).or_default();
        match store.buckets.iter_mut().find(|b| b.id == bucket.id) {
            Some(b) => *b = bucket,
            None => store.buckets.push(bucket),
        }
    }

    fn add_object(&self, object: Object) {
        if !self
            .store
            .read()
            .unwrap()
            .buckets
            .iter()
            .any(|b| b.id == object.bucket)
        {
            self.add_bucket(Bucket::new(&object.bucket));
        }
        let entry = Arc::new(Entry::new(self.seed, object));
        let mut store = self.store.write().unwrap();
        store
            .objects
            .entry(entry.object.bucket.clone())
            .or_default()
            .insert(entry);
    }
}

/// Builds a [`CloudDouble`].
pub struct CloudDoubleBuilder {
    key: String,
    seed: u64,
    buckets: Vec<Bucket>,
    objects: Vec<Object>,
    list_v2: ListV2,
    auth: AuthSettings,
    port: u16,
}

impl CloudDoubleBuilder {
    /// The key the double accepts as `apikey` and as `Authorization:
    /// Bearer` (default [`DEFAULT_SERVICE_ROLE_KEY`]).
    pub fn service_role_key(mut self, key: &str) -> Self {
        self.key = key.to_string();
        self
    }

    /// The seed of the object bytes (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn bucket(mut self, bucket: Bucket) -> Self {
        self.buckets.push(bucket);
        self
    }

    /// Adds an object; its bucket is created (private) if not configured.
    pub fn object(mut self, object: Object) -> Self {
        self.objects.push(object);
        self
    }

    pub fn objects(mut self, objects: impl IntoIterator<Item = Object>) -> Self {
        self.objects.extend(objects);
        self
    }

    /// `true`: list-v2 works; `false`: it answers the tenant error of a
    /// server without the `search-v2` migration; or a [`ListV2`].
    pub fn list_v2(mut self, mode: impl Into<ListV2>) -> Self {
        self.list_v2 = mode.into();
        self
    }

    pub fn auth(mut self, settings: AuthSettings) -> Self {
        self.auth = settings;
        self
    }

    /// Listens on this port instead of a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Binds 127.0.0.1 and serves from a task of the current runtime.
    pub async fn start(self) -> CloudDouble {
        let state = Arc::new(State {
            key: self.key,
            seed: self.seed,
            store: RwLock::new(Store::default()),
            list_v2: Mutex::new(self.list_v2),
            auth: Mutex::new(self.auth),
            faults: Faults::default(),
            stats: Stats::default(),
        });
        for bucket in self.buckets {
            state.add_bucket(bucket);
        }
        for object in self.objects {
            state.add_object(object);
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind 127.0.0.1 for the cloud double");
        let addr = listener.local_addr().unwrap();
        let running = server::Running::start(listener, state.clone());
        CloudDouble {
            state,
            addr,
            running: Mutex::new(Some(running)),
        }
    }
}

/// A running double; stops when dropped.
pub struct CloudDouble {
    state: Arc<State>,
    addr: SocketAddr,
    running: Mutex<Option<server::Running>>,
}

impl CloudDouble {
    pub fn builder() -> CloudDoubleBuilder {
        CloudDoubleBuilder {
            key: DEFAULT_SERVICE_ROLE_KEY.to_string(),
            seed: 0,
            buckets: Vec::new(),
            objects: Vec::new(),
            list_v2: ListV2::Enabled,
            auth: AuthSettings::default(),
            port: 0,
        }
    }

    /// `http://127.0.0.1:<port>`: the project URL (`sourceUrl`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn service_role_key(&self) -> &str {
        &self.state.key
    }

    /// The fault switches and rules.
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.state.stats
    }

    pub fn set_list_v2(&self, mode: impl Into<ListV2>) {
        *self.state.list_v2.lock().unwrap() = mode.into();
    }

    pub fn set_auth(&self, settings: AuthSettings) {
        *self.state.auth.lock().unwrap() = settings;
    }

    pub fn auth_settings(&self) -> AuthSettings {
        self.state.auth.lock().unwrap().clone()
    }

    /// Adds or replaces a bucket.
    pub fn add_bucket(&self, bucket: Bucket) {
        self.state.add_bucket(bucket);
    }

    /// Adds or replaces an object (creating its bucket if needed).
    pub fn add_object(&self, object: Object) {
        self.state.add_object(object);
    }

    /// Removes an object; whether it was there.
    pub fn remove_object(&self, bucket: &str, key: &str) -> bool {
        let mut store = self.state.store.write().unwrap();
        store
            .objects
            .get_mut(bucket)
            .and_then(|o| o.remove(key))
            .is_some()
    }

    pub fn buckets(&self) -> Vec<Bucket> {
        self.state.store.read().unwrap().buckets.clone()
    }

    /// Every object, by bucket then name.
    pub fn objects(&self) -> Vec<Object> {
        let store = self.state.store.read().unwrap();
        store
            .objects
            .values()
            .flat_map(|o| o.by_name.values().map(|e| e.object.clone()))
            .collect()
    }

    pub fn object(&self, bucket: &str, key: &str) -> Option<Object> {
        self.entry(bucket, key).map(|e| e.object.clone())
    }

    /// Bytes of every object together.
    pub fn total_bytes(&self) -> u64 {
        let store = self.state.store.read().unwrap();
        store
            .objects
            .values()
            .flat_map(|o| o.by_name.values())
            .map(|e| e.object.size)
            .sum()
    }

    fn entry(&self, bucket: &str, key: &str) -> Option<Arc<Entry>> {
        self.state.store.read().unwrap().entry(bucket, key)
    }

    fn must(&self, bucket: &str, key: &str) -> Arc<Entry> {
        self.entry(bucket, key)
            .unwrap_or_else(|| panic!("the double has no object {bucket}/{key}"))
    }

    /// The object's bytes (whole; for small objects).
    pub fn object_bytes(&self, bucket: &str, key: &str) -> Vec<u8> {
        let e = self.must(bucket, key);
        let mut buf = vec![0u8; e.object.size as usize];
        content::fill(e.content, 0, &mut buf);
        buf
    }

    /// Bytes `[start, end)` of the object.
    pub fn object_range(&self, bucket: &str, key: &str, start: u64, end: u64) -> Vec<u8> {
        let e = self.must(bucket, key);
        let end = end.min(e.object.size);
        let mut buf = vec![0u8; end.saturating_sub(start) as usize];
        content::fill(e.content, start, &mut buf);
        buf
    }

    /// SHA-256 (hex) of the object's bytes (computed once, blocking).
    pub fn expected_sha256(&self, bucket: &str, key: &str) -> String {
        self.must(bucket, key).sha256().to_string()
    }

    /// MD5 (hex) of the object's bytes (computed once, blocking).
    pub fn expected_md5(&self, bucket: &str, key: &str) -> String {
        self.must(bucket, key).md5().to_string()
    }

    /// The quoted ETag the double sends (`"<md5>"`).
    pub fn etag(&self, bucket: &str, key: &str) -> String {
        self.must(bucket, key).etag()
    }

    /// The object's `id` in listings and `storage.objects`.
    pub fn object_id(&self, bucket: &str, key: &str) -> Uuid {
        self.must(bucket, key).id
    }

    /// Computes every object's MD5 now, on the blocking pool (the first
    /// listing would otherwise pay for it).
    pub async fn warm_up(&self) {
        let entries: Vec<Arc<Entry>> = {
            let store = self.state.store.read().unwrap();
            store
                .objects
                .values()
                .flat_map(|o| o.by_name.values().cloned())
                .collect()
        };
        tokio::task::spawn_blocking(move || {
            for e in entries {
                e.md5();
            }
        })
        .await
        .unwrap();
    }

    /// Makes the double unreachable: the port is closed and every open
    /// connection cut, until [`CloudDouble::resume`].
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(running) = running {
            running.stop().await;
        }
    }

    /// Listens again on the same port after [`CloudDouble::stop`].
    pub async fn resume(&self) {
        if self.running.lock().unwrap().is_some() {
            return;
        }
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind the cloud double's port");
        let running = server::Running::start(listener, self.state.clone());
        *self.running.lock().unwrap() = Some(running);
    }

    /// Whether it listens (not stopped).
    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap().is_some()
    }

    /// Writes the double's buckets and objects into `storage.buckets` and
    /// `storage.objects` of a Supabase-shaped database (the columns it
    /// has: the reference project's subset or the real set), as Storage
    /// would have them, so the database and the API agree. Rows with the
    /// same ids / (bucket, name) are replaced. Computes every MD5.
    pub async fn seed_source_database(&self, database_url: &str) -> anyhow::Result<()> {
        self.warm_up().await;
        let buckets = self.buckets();
        let entries: Vec<Arc<Entry>> = {
            let store = self.state.store.read().unwrap();
            store
                .objects
                .values()
                .flat_map(|o| o.by_name.values().cloned())
                .collect()
        };
        seed::seed(database_url, &buckets, &entries).await
    }
}

impl Drop for CloudDouble {
    fn drop(&mut self) {
        let running = match self.running.get_mut() {
            Ok(r) => r.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(running) = running {
            running.signal();
        }
    }
}
