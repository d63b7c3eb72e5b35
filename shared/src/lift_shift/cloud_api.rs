//! A source project's Storage and Auth HTTP APIs, as lift & shift reads
//! them with the project's service-role key (docs/lift-shift.md, "Supabase
//! Cloud's HTTP APIs").
//!
//! - Every request sends the key as `apikey` (the API gateway's check) and
//!   as `Authorization: Bearer` (Storage's JWT check). Neither header is
//!   ever printed: [`CloudApi`]'s `Debug` shows the base URL only, and any
//!   text the source sends back is scrubbed of the key before it becomes
//!   part of a [`CloudError`].
//! - Redirects are not followed (one could point at a metadata address);
//!   a 3xx is an error.
//! - Storage answers errors with HTTP 400 and the real status as a string
//!   in the body (`{"statusCode": "404", "error", "message", "code"}`); the
//!   body's status is the one [`CloudError::Http`] carries. A refused key
//!   is the gateway's `401 Invalid API key` or Storage's `400` with
//!   `statusCode "403"` / `AccessDenied`: [`CloudError::KeyRejected`].
//! - The JSON calls (buckets, listings, Auth settings) are retried a few
//!   times on temporary errors (429, 5xx, timeouts, cut connections),
//!   honouring `Retry-After`; downloads are retried by
//!   [`super::fetch`], which knows what was already written.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::redact::{error_chain, truncate_chars};

/// What a path segment keeps unencoded: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `list` returns at most 1500 rows a page, `list-v2` 1000.
const LIST_PAGE: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole JSON call (one listing page, the buckets, the settings).
const JSON_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest `Retry-After` honoured; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// The longest wait between two attempts without a `Retry-After`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest error body read, and the longest text kept from it.
const ERROR_BODY_MAX: usize = 64 * 1024;
const MESSAGE_MAX: usize = 300;
/// Auth settings' `external` entries that are not third-party OAuth
/// providers: sign-in by email, phone, anonymously, with a wallet, or by
/// SAML SSO (supabase/auth `internal/api/settings.go`).
pub const NON_OAUTH_PROVIDERS: [&str; 6] = [
    "anonymous_users",
    "email",
    "phone",
    "saml",
    "web3_ethereum",
    "web3_solana",
];

/// Why a call to the source failed. No variant holds the service-role key.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The gateway or Storage refused the service-role key.
    #[error("the service-role key was rejected by {base} (HTTP {status}: {message})")]
    KeyRejected {
        base: String,
        status: u16,
        message: String,
    },
    /// No connection, a DNS failure, or no answer in time.
    #[error("{0}")]
    Unreachable(String),
    /// Any other error answer. `status` is Storage's own status when its
    /// body has one (it sends most errors as HTTP 400), else the HTTP one.
    #[error("the source answered HTTP {status}: {message}")]
    Http {
        status: u16,
        /// Storage's `code` (`NoSuchKey`, `FeatureNotEnabled`…).
        code: Option<String>,
        message: String,
        /// `Retry-After`, when the answer had one.
        retry_after: Option<Duration>,
    },
    /// The answer's body broke off (a cut connection, a truncated body).
    #[error("{0}")]
    Body(String),
    /// The answer is not what Storage or Auth sends (not JSON, wrong shape).
    #[error("{0}")]
    Format(String),
    /// The request cannot be made: a bad base URL, a key that cannot be a
    /// header, an object key the URL would rewrite.
    #[error("{0}")]
    Invalid(String),
}

impl CloudError {
    /// Worth another attempt: 408, 429, 5xx, timeouts, connection errors,
    /// bodies that broke off.
    pub fn is_temporary(&self) -> bool {
        match self {
            CloudError::Http { status, .. } => {
                matches!(status, 408 | 429) || (500..600).contains(status)
            }
            CloudError::Unreachable(_) | CloudError::Body(_) => true,
            CloudError::KeyRejected { .. } | CloudError::Format(_) | CloudError::Invalid(_) => {
                false
            }
        }
    }

    pub fn is_key_rejected(&self) -> bool {
        matches!(self, CloudError::KeyRejected { .. })
    }

    /// The `Retry-After` the answer asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CloudError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Storage's error code (`NoSuchKey`…), when there is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Http { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// A bucket as `GET /storage/v1/bucket` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudBucket {
    pub id: String,
    pub name: String,
    /// `None` when Storage sends `""` or null (no owner).
    pub owner: Option<String>,
    pub public: bool,
    pub file_size_limit: Option<u64>,
    pub allowed_mime_types: Option<Vec<String>>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// An object as the listings give it.
#[derive(Clone, Debug, PartialEq)]
pub struct CloudObject {
    pub bucket: String,
    /// The full key (`folder/sub/file.png`).
    pub name: String,
    pub id: Option<String>,
    /// `metadata.size` (else `contentLength`, else 0).
    pub size: u64,
    /// `metadata.eTag` without quotes or `W/`, lower case: the MD5 hex of
    /// the bytes for a plain upload, `<hash>-<parts>` for a multipart one.
    pub etag: Option<String>,
    pub mimetype: Option<String>,
    pub cache_control: Option<String>,
    pub last_modified: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// The listing's `metadata`, as it came (null when it had none).
    pub metadata: Value,
}

impl CloudObject {
    /// The size the listing states (`None` when its metadata has none).
    pub fn listed_size(&self) -> Option<u64> {
        metadata_size(&self.metadata)
    }

    /// The listing's eTag when it is an MD5 (32 hex digits).
    pub fn md5(&self) -> Option<&str> {
        self.etag.as_deref().filter(|e| is_md5(e))
    }
}

/// What `GET /auth/v1/settings` says.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AuthSettings {
    /// Every `external` entry that is true, sorted.
    pub enabled: Vec<String>,
    /// Every `external` entry as sent.
    pub external: BTreeMap<String, bool>,
    pub disable_signup: bool,
    pub mailer_autoconfirm: bool,
    pub phone_autoconfirm: bool,
    pub sms_provider: Option<String>,
    pub saml_enabled: bool,
}

impl AuthSettings {
    /// The enabled third-party OAuth providers (`github`, `google`…): the
    /// enabled ones but [`NON_OAUTH_PROVIDERS`]. Their client secrets stay
    /// in the source; each needs setting up again on the target.
    pub fn oauth_providers(&self) -> Vec<String> {
        self.enabled
            .iter()
            .filter(|p| !NON_OAUTH_PROVIDERS.contains(&p.as_str()))
            .cloned()
            .collect()
    }
}

/// A client for one source project's APIs.
#[derive(Clone)]
pub struct CloudApi {
    client: reqwest::Client,
    /// Scheme, host and port, without a trailing slash.
    base: String,
    /// `apikey` and `Authorization` (marked sensitive); `None` when the key
    /// has characters a header cannot carry.
    headers: Option<(HeaderValue, HeaderValue)>,
    /// The key itself, only to scrub it from what the source sends back.
    key: String,
    json_attempts: u32,
    json_backoff: Duration,
}

impl fmt::Debug for CloudApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudApi")
            .field("base", &self.base)
            .field("service_role_key", &"[redacted]")
            .finish()
    }
}

/// Resolves names as the system does, but never to a link-local or cloud
/// metadata address: a name the request's checks saw elsewhere cannot be
/// pointed there afterwards (DNS rebinding). Literal addresses never get
/// here; `source::parse_source_url` refuses those.
struct NoMetadataResolver;

impl reqwest::dns::Resolve for NoMetadataResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<std::net::SocketAddr> = found
                .into_iter()
                .filter(|a| !super::source::is_metadata_or_link_local(a.ip()))
                .collect();
            if kept.is_empty() {
                return Err(format!(
                    "{host} resolves to no address but link-local or metadata ones, which are \
                     never contacted"
                )
                .into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl CloudApi {
    /// A client for the project at `base` (`https://<ref>.supabase.co`, or
    /// `http://127.0.0.1:<port>` for a double; checked by
    /// [`super::source::parse_source_url`] before it gets here).
    pub fn new(base: &str, service_role_key: &str) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(std::sync::Arc::new(NoMetadataResolver))
            .build()
            .expect("a reqwest client with rustls and without custom certificates builds");
        let headers = (|| {
            let mut apikey = HeaderValue::from_str(service_role_key).ok()?;
            let mut bearer = HeaderValue::from_str(&format!("Bearer {service_role_key}")).ok()?;
            apikey.set_sensitive(true);
            bearer.set_sensitive(true);
            Some((apikey, bearer))
        })();
        Self {
            client,
            base: base.trim().trim_end_matches('/').to_string(),
            headers,
            key: service_role_key.to_string(),
            json_attempts: 4,
            json_backoff: Duration::from_millis(500),
        }
    }

    /// How often a JSON call is tried (at least once) and the first wait
    /// between two tries (doubled each time); default 4 and 500 ms.
    pub fn with_json_retries(mut self, attempts: u32, backoff_base: Duration) -> Self {
        self.json_attempts = attempts.max(1);
        self.json_backoff = backoff_base;
        self
    }

    /// The project URL requests go to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /storage/v1/bucket`: every bucket with its settings.
    pub async fn buckets(&self) -> Result<Vec<CloudBucket>, CloudError> {
        let body = self
            .json_call(Method::GET, "/storage/v1/bucket".into(), None)
            .await?;
        let rows = body
            .as_array()
            .ok_or_else(|| self.format_error("/storage/v1/bucket", "not a JSON array"))?;
        rows.iter()
            .map(|row| {
                parse_bucket(row)
                    .ok_or_else(|| self.format_error("/storage/v1/bucket", "a bucket without id"))
            })
            .collect()
    }

    /// Every object of `bucket`, sorted by name: `list-v2`'s flat listing
    /// page by page; on a source without it (400 `FeatureNotEnabled`, or
    /// the 404 of a Storage from before the route), `list`'s one-level
    /// listing, walked folder by folder. The walk is case-insensitive as
    /// Storage's `search` is: two folders differing only in case are
    /// listed as one, and the other's files get a wrong name (downloading
    /// them then fails with `NoSuchKey`).
    pub async fn objects(&self, bucket: &str) -> Result<Vec<CloudObject>, CloudError> {
        match self.objects_v2(bucket).await {
            Ok(objects) => Ok(objects),
            Err(CloudError::Http {
                status, ref code, ..
            }) if code.as_deref() == Some("FeatureNotEnabled")
                || (status == 404 && matches!(code.as_deref(), None | Some("InvalidRequest"))) =>
            {
                self.objects_v1(bucket).await
            }
            Err(e) => Err(e),
        }
    }

    async fn objects_v2(&self, bucket: &str) -> Result<Vec<CloudObject>, CloudError> {
        let path = format!("/storage/v1/object/list-v2/{}", segment(bucket));
        let mut objects = BTreeMap::new();
        let mut cursor: Option<String> = None;
        let mut seen = BTreeSet::new();
        loop {
            let mut body = json!({"prefix": "", "limit": LIST_PAGE});
            if let Some(c) = &cursor {
                body["cursor"] = json!(c);
            }
            let page = self
                .json_call(Method::POST, path.clone(), Some(&body))
                .await?;
            let rows = page
                .get("objects")
                .and_then(Value::as_array)
                .ok_or_else(|| self.format_error(&path, "no `objects` array"))?;
            for row in rows {
                if let Some(o) = parse_object(bucket, "", row)? {
                    objects.entry(o.name.clone()).or_insert(o);
                }
            }
            if page.get("hasNext").and_then(Value::as_bool) != Some(true) {
                break;
            }
            let next = page
                .get("nextCursor")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| self.format_error(&path, "hasNext without a nextCursor"))?;
            if !seen.insert(next.to_string()) {
                return Err(self.format_error(&path, "the same cursor came back twice"));
            }
            cursor = Some(next.to_string());
        }
        Ok(objects.into_values().collect())
    }

    async fn objects_v1(&self, bucket: &str) -> Result<Vec<CloudObject>, CloudError> {
        let path = format!("/storage/v1/object/list/{}", segment(bucket));
        let mut objects = BTreeMap::new();
        let mut folders = VecDeque::from([String::new()]);
        let mut walked = BTreeSet::new();
        while let Some(prefix) = folders.pop_front() {
            if !walked.insert(prefix.to_lowercase()) {
                continue;
            }
            let mut offset = 0;
            loop {
                let body = json!({
                    "prefix": prefix, "limit": LIST_PAGE, "offset": offset,
                    "sortBy": {"column": "name", "order": "asc"},
                });
                let page = self
                    .json_call(Method::POST, path.clone(), Some(&body))
                    .await?;
                let rows = page
                    .as_array()
                    .ok_or_else(|| self.format_error(&path, "not a JSON array"))?;
                for row in rows {
                    let name = row
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| self.format_error(&path, "a row without a name"))?;
                    if row.get("id").is_none_or(Value::is_null) {
                        if !name.is_empty() {
                            folders.push_back(format!("{prefix}{name}/"));
                        }
                    } else if let Some(o) = parse_object(bucket, &prefix, row)? {
                        objects.entry(o.name.clone()).or_insert(o);
                    }
                }
                if rows.len() < LIST_PAGE {
                    break;
                }
                offset += rows.len();
            }
        }
        Ok(objects.into_values().collect())
    }

    /// `GET /auth/v1/settings`.
    pub async fn auth_settings(&self) -> Result<AuthSettings, CloudError> {
        let path = "/auth/v1/settings";
        let body = self.json_call(Method::GET, path.into(), None).await?;
        let external: BTreeMap<String, bool> = body
            .get("external")
            .and_then(Value::as_object)
            .ok_or_else(|| self.format_error(path, "no `external` object"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bool().unwrap_or(false)))
            .collect();
        let flag = |name: &str| body.get(name).and_then(Value::as_bool).unwrap_or(false);
        Ok(AuthSettings {
            enabled: external
                .iter()
                .filter(|(_, on)| **on)
                .map(|(k, _)| k.clone())
                .collect(),
            external,
            disable_signup: flag("disable_signup"),
            mailer_autoconfirm: flag("mailer_autoconfirm"),
            phone_autoconfirm: flag("phone_autoconfirm"),
            sms_provider: body
                .get("sms_provider")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            saml_enabled: flag("saml_enabled"),
        })
    }

    /// `GET /storage/v1/object/authenticated/<bucket>/<key>`: the answer
    /// once its status is 200, its body unread (the caller streams it and
    /// bounds the wait).
    pub async fn download(&self, bucket: &str, key: &str) -> Result<Response, CloudError> {
        let path = download_path(bucket, key);
        let response = self.send(Method::GET, &path, None, None).await?;
        if response.status() != StatusCode::OK {
            return Err(CloudError::Format(format!(
                "GET {path}: HTTP {} where 200 was expected",
                response.status().as_u16()
            )));
        }
        Ok(response)
    }

    /// A transport error (from `send` or a body read) as a [`CloudError`].
    pub fn transport_error(&self, e: &reqwest::Error) -> CloudError {
        let chain = self.scrub(&error_chain(e));
        if e.is_timeout() {
            CloudError::Unreachable(format!("{} did not answer in time: {chain}", self.base))
        } else if e.is_connect() {
            CloudError::Unreachable(format!("could not connect to {}: {chain}", self.base))
        } else if e.is_body() || e.is_decode() {
            CloudError::Body(format!("the answer of {} broke off: {chain}", self.base))
        } else if e.is_builder() {
            CloudError::Invalid(format!("cannot make a request to {}: {chain}", self.base))
        } else {
            CloudError::Unreachable(format!("the connection to {} failed: {chain}", self.base))
        }
    }

    /// `text` with the key replaced, cut to a readable length.
    fn scrub(&self, text: &str) -> String {
        let text = if self.key.len() >= 6 && text.contains(&self.key) {
            text.replace(&self.key, "[redacted]")
        } else {
            text.to_string()
        };
        truncate_chars(&text, MESSAGE_MAX)
    }

    fn format_error(&self, path: &str, what: &str) -> CloudError {
        CloudError::Format(format!(
            "{}{path} did not answer as Supabase does: {what}",
            self.base
        ))
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, CloudError> {
        let url = reqwest::Url::parse(&format!("{}{path}", self.base)).map_err(|_| {
            CloudError::Invalid(format!("{} is not a valid project URL", self.base))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CloudError::Invalid(format!(
                "{} is not an http(s) URL",
                self.base
            )));
        }
        // A `.` or `..` segment would be resolved away by the URL parser,
        // asking for another object: refused.
        if !url.path().ends_with(path) {
            return Err(CloudError::Invalid(format!(
                "{path} cannot be requested as it is (a `.` or `..` segment)"
            )));
        }
        Ok(url)
    }

    /// One request; errors (non-2xx included) as [`CloudError`]s.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Response, CloudError> {
        let url = self.url(path)?;
        let (apikey, bearer) = self.headers.clone().ok_or_else(|| {
            CloudError::Invalid(
                "the service-role key has characters an HTTP header cannot carry".into(),
            )
        })?;
        let mut request = self
            .client
            .request(method.clone(), url)
            .header("apikey", apikey)
            .header(header::AUTHORIZATION, bearer);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.error_answer(&method, path, response).await)
    }

    /// A non-2xx answer as a [`CloudError`].
    async fn error_answer(
        &self,
        method: &Method,
        path: &str,
        mut response: Response,
    ) -> CloudError {
        let http = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        if response.status().is_redirection() {
            let to = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("elsewhere");
            return CloudError::Http {
                status: http,
                code: None,
                message: self.scrub(&format!(
                    "{method} {path}: a redirect to {to}, which is not followed"
                )),
                retry_after,
            };
        }
        let mut bytes = Vec::new();
        while bytes.len() < ERROR_BODY_MAX {
            match response.chunk().await {
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let parsed = parse_error_body(&bytes);
        let status = parsed.status.filter(|_| http == 400).unwrap_or(http);
        let detail = match (&parsed.message, &parsed.code) {
            (Some(m), Some(c)) if m != c => format!("{m} ({c})"),
            (Some(m), _) => m.clone(),
            (None, Some(c)) => c.clone(),
            (None, None) => StatusCode::from_u16(http)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no message")
                .to_string(),
        };
        let rejected = matches!(http, 401 | 403)
            || matches!(status, 401 | 403)
            || parsed.code.as_deref() == Some("AccessDenied");
        if rejected {
            return CloudError::KeyRejected {
                base: self.base.clone(),
                status: http,
                message: self.scrub(&detail),
            };
        }
        CloudError::Http {
            status,
            code: parsed.code.map(|c| self.scrub(&c)),
            message: self.scrub(&format!("{method} {path}: {detail}")),
            retry_after,
        }
    }

    /// A JSON call, tried again on temporary errors.
    async fn json_call(
        &self,
        method: Method,
        path: String,
        body: Option<&Value>,
    ) -> Result<Value, CloudError> {
        let mut attempt = 1;
        loop {
            let result = async {
                let response = self
                    .send(method.clone(), &path, body, Some(JSON_TIMEOUT))
                    .await?;
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| self.transport_error(&e))?;
                serde_json::from_slice::<Value>(&bytes)
                    .map_err(|_| self.format_error(&path, "the body is not JSON"))
            }
            .await;
            match result {
                Err(e) if e.is_temporary() && attempt < self.json_attempts => {
                    let wait = retry_wait(self.json_backoff, attempt, e.retry_after());
                    tracing::debug!(%path, attempt, error = %e, ?wait, "source call failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// `/storage/v1/object/authenticated/<bucket>/<key>`, every segment
/// percent-encoded.
fn download_path(bucket: &str, key: &str) -> String {
    let mut path = format!("/storage/v1/object/authenticated/{}", segment(bucket));
    for part in key.split('/') {
        path.push('/');
        path.push_str(&segment(part));
    }
    path
}

fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// What an error body says, Storage's shape or the gateway's.
#[derive(Default)]
struct ErrorBody {
    status: Option<u16>,
    code: Option<String>,
    message: Option<String>,
}

fn parse_error_body(bytes: &[u8]) -> ErrorBody {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        let text = String::from_utf8_lossy(bytes).trim().to_string();
        return ErrorBody {
            message: (!text.is_empty()).then_some(text),
            ..ErrorBody::default()
        };
    };
    let text = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let status = match value.get("statusCode") {
        Some(Value::String(s)) => s.parse().ok(),
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        _ => None,
    };
    ErrorBody {
        status,
        code: text("code").or_else(|| text("error")),
        message: text("message")
            .or_else(|| text("msg"))
            .or_else(|| text("error")),
    }
}

fn parse_bucket(row: &Value) -> Option<CloudBucket> {
    let text = |name: &str| {
        row.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let id = text("id")?;
    Some(CloudBucket {
        name: text("name").unwrap_or_else(|| id.clone()),
        id,
        owner: text("owner"),
        public: row.get("public").and_then(Value::as_bool).unwrap_or(false),
        file_size_limit: row.get("file_size_limit").and_then(Value::as_u64),
        allowed_mime_types: row.get("allowed_mime_types").and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
        }),
        created_at: text("created_at"),
        updated_at: text("updated_at"),
    })
}

/// A listing row as an object (`prefix` + its name); `None` for a row
/// without a name.
fn parse_object(
    bucket: &str,
    prefix: &str,
    row: &Value,
) -> Result<Option<CloudObject>, CloudError> {
    let Some(name) = row.get("name").and_then(Value::as_str) else {
        return Ok(None);
    };
    if name.is_empty() {
        return Ok(None);
    }
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let metadata = row.get("metadata").cloned().unwrap_or(Value::Null);
    let meta = |name: &str| text(metadata.get(name));
    Ok(Some(CloudObject {
        bucket: bucket.to_string(),
        name: format!("{prefix}{name}"),
        id: text(row.get("id")),
        size: metadata_size(&metadata).unwrap_or(0),
        etag: meta("eTag").and_then(|e| normalize_etag(&e)),
        mimetype: meta("mimetype"),
        cache_control: meta("cacheControl"),
        last_modified: meta("lastModified"),
        created_at: text(row.get("created_at")),
        updated_at: text(row.get("updated_at")),
        metadata,
    }))
}

fn metadata_size(metadata: &Value) -> Option<u64> {
    ["size", "contentLength"].iter().find_map(|k| {
        let v = metadata.get(*k)?;
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })
}

/// An ETag without `W/` and quotes, lower case; `None` when empty.
pub fn normalize_etag(raw: &str) -> Option<String> {
    let t = raw.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    let t = t.trim_matches('"').trim();
    (!t.is_empty()).then(|| t.to_ascii_lowercase())
}

/// Whether `s` is an MD5 in hex (32 hex digits).
pub fn is_md5(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `Retry-After` as a wait: delay-seconds or an HTTP date (RFC 9110),
/// at most [`MAX_RETRY_AFTER`]; `None` when unreadable.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The wait before attempt `attempt + 1` (attempts count from 1):
/// `base · 2^(attempt-1)` up to [`MAX_BACKOFF`], without jitter.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// The wait before the next attempt: the backoff with up to 20% jitter,
/// or the source's `Retry-After` when that is longer.
pub fn retry_wait(base: Duration, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let wait = backoff(base, attempt);
    let jitter = wait.mul_f64(rand::random::<f64>() * 0.2);
    (wait + jitter).max(retry_after.unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn etags_are_normalized_and_md5s_recognized() {
        let md5 = "9e107d9d372bb6826bd81d3542a419d6";
        assert_eq!(
            normalize_etag("\"9E107D9D372BB6826BD81D3542A419D6\"").as_deref(),
            Some(md5)
        );
        assert_eq!(
            normalize_etag(&format!("W/\"{md5}\"")).as_deref(),
            Some(md5)
        );
        assert_eq!(normalize_etag(md5).as_deref(), Some(md5));
        assert_eq!(normalize_etag("\"\""), None);
        assert!(is_md5(md5));
        let multipart = normalize_etag("\"0b6f6b8e9c4d1a2f3e4d5c6b7a8f9e0d-3\"").unwrap();
        assert!(!is_md5(&multipart));
        assert!(!is_md5("zz107d9d372bb6826bd81d3542a419d6"));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = chrono::Utc
            .with_ymd_and_hms(2015, 10, 21, 7, 28, 0)
            .unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let base = Duration::from_millis(100);
        assert_eq!(backoff(base, 1), Duration::from_millis(100));
        assert_eq!(backoff(base, 2), Duration::from_millis(200));
        assert_eq!(backoff(base, 4), Duration::from_millis(800));
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
        let w = retry_wait(base, 2, None);
        assert!(w >= Duration::from_millis(200) && w <= Duration::from_millis(240));
        assert_eq!(
            retry_wait(base, 1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn paths_are_encoded_segment_by_segment() {
        assert_eq!(
            download_path("my bucket", "a b/résumé's \"x\"?#%.png"),
            "/storage/v1/object/authenticated/my%20bucket/a%20b/r%C3%A9sum%C3%A9%27s%20%22x%22%3F%23%25.png"
        );
        let api = CloudApi::new("http://127.0.0.1:9/", "k");
        assert_eq!(
            api.url(&download_path("b", "dir/x y.txt"))
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9/storage/v1/object/authenticated/b/dir/x%20y.txt"
        );
        for key in ["../other", "a/./b", "a/.."] {
            assert!(
                matches!(
                    api.url(&download_path("b", key)),
                    Err(CloudError::Invalid(_))
                ),
                "{key}"
            );
        }
        assert!(matches!(
            CloudApi::new("not a url", "k").url("/auth/v1/settings"),
            Err(CloudError::Invalid(_))
        ));
    }

    #[test]
    fn error_bodies_of_storage_and_the_gateway() {
        let storage = parse_error_body(
            br#"{"statusCode":"404","error":"not_found","message":"Object not found","code":"NoSuchKey"}"#,
        );
        assert_eq!(storage.status, Some(404));
        assert_eq!(storage.code.as_deref(), Some("NoSuchKey"));
        assert_eq!(storage.message.as_deref(), Some("Object not found"));
        let gateway = parse_error_body(br#"{"message":"Invalid API key","hint":"..."}"#);
        assert_eq!(gateway.status, None);
        assert_eq!(gateway.message.as_deref(), Some("Invalid API key"));
        let text = parse_error_body(b"404 page not found\n");
        assert_eq!(text.message.as_deref(), Some("404 page not found"));
    }

    #[test]
    fn temporary_errors() {
        let http = |status| CloudError::Http {
            status,
            code: None,
            message: String::new(),
            retry_after: None,
        };
        assert!(http(429).is_temporary());
        assert!(http(503).is_temporary());
        assert!(!http(404).is_temporary());
        assert!(CloudError::Body("cut".into()).is_temporary());
        assert!(CloudError::Unreachable("refused".into()).is_temporary());
        assert!(!CloudError::Format("x".into()).is_temporary());
        let rejected = CloudError::KeyRejected {
            base: "b".into(),
            status: 401,
            message: "Invalid API key".into(),
        };
        assert!(!rejected.is_temporary() && rejected.is_key_rejected());
    }

    #[test]
    fn oauth_providers_leave_out_the_other_sign_ins() {
        let settings = AuthSettings {
            enabled: [
                "anonymous_users",
                "email",
                "github",
                "google",
                "phone",
                "web3_solana",
            ]
            .map(String::from)
            .to_vec(),
            ..AuthSettings::default()
        };
        assert_eq!(settings.oauth_providers(), ["github", "google"]);
    }

    /// A source that echoes the request's headers in its error bodies: the
    /// key never reaches an error's text.
    #[tokio::test]
    async fn an_echoing_source_does_not_leak_the_key_into_errors() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let statuses = ["500 Internal Server Error", "401 Unauthorized", "302 Found"];
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let len = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..len]).replace('"', "'");
                let body = format!("{{\"message\":\"{}\"}}", request.replace("\r\n", " | "));
                let status = statuses[n % statuses.len()];
                n += 1;
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nLocation: http://x/{}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    "sk-secret-key-12345",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        let key = "sk-secret-key-12345";
        let api =
            CloudApi::new(&format!("http://{addr}"), key).with_json_retries(1, Duration::ZERO);
        assert!(!format!("{api:?}").contains(key));
        for _ in 0..3 {
            let e = api.buckets().await.unwrap_err();
            let (display, debug) = (e.to_string(), format!("{e:?}"));
            assert!(
                !display.contains(key) && !debug.contains(key),
                "{display} / {debug}"
            );
            assert!(display.contains("[redacted]"), "{display}");
        }
    }
}
