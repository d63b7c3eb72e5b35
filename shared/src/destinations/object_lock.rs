//! Immutable backups (`immutable_days`) on S3-kind destinations, with S3
//! Object Lock: once an artifact is stored and confirmed, its retention is
//! set (`PutObjectRetention`, governance or compliance mode, retain until
//! now + N days). Until then S3 refuses to delete that version, whoever
//! asks; a plain DELETE only hides it behind a delete marker, which is why
//! the API answers 409 for a locked backup before it asks the store.
//!
//! OpenDAL 0.59 cannot send Object Lock headers with a write, so this
//! speaks S3 directly, signed like [`super::multipart`]. The bucket must
//! have been created with Object Lock enabled; the destination's probe
//! checks (`GetObjectLockConfiguration`). Azure and GCS have their own
//! immutability policies, which our emulators lack: `immutable_days` is
//! refused there when the configuration is read, rather than promised and
//! not kept.

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::multipart::{MultipartError, S3Target};

/// Who may lift a lock early: in `governance` mode a principal with
/// `s3:BypassGovernanceRetention` (never this service: it does not send
/// the bypass header), in `compliance` mode nobody, the account's root
/// included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    #[default]
    Governance,
    Compliance,
}

impl LockMode {
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "governance" => Some(Self::Governance),
            "compliance" => Some(Self::Compliance),
            _ => None,
        }
    }

    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Governance => "governance",
            Self::Compliance => "compliance",
        }
    }

    /// As S3 spells it.
    fn as_s3(self) -> &'static str {
        match self {
            Self::Governance => "GOVERNANCE",
            Self::Compliance => "COMPLIANCE",
        }
    }
}

/// A destination's `immutable_days` and `immutable_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Immutability {
    pub days: u32,
    pub mode: LockMode,
}

impl Immutability {
    /// The retain-until date of an object locked now: whole seconds, as S3
    /// keeps it.
    pub fn until_from(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let until = now + chrono::Duration::days(i64::from(self.days));
        DateTime::from_timestamp(until.timestamp(), 0).unwrap_or(until)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ObjectLockConfiguration {
    object_lock_enabled: Option<String>,
}

impl S3Target {
    /// Sets `key`'s retention (`PutObjectRetention`); `key` is relative to
    /// the destination's prefix.
    pub async fn put_retention(
        &self,
        key: &str,
        mode: LockMode,
        until: DateTime<Utc>,
    ) -> Result<(), MultipartError> {
        const OP: &str = "PutObjectRetention";
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            mode.as_s3(),
            until.to_rfc3339_opts(SecondsFormat::Millis, true)
        )
        .into_bytes();
        let mut headers = http::HeaderMap::new();
        // S3 requires the body's MD5 on this call.
        let md5 = base64::engine::general_purpose::STANDARD
            .encode(<md5::Md5 as md5::Digest>::digest(&body));
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
        for (name, value) in [
            ("content-md5", md5),
            ("x-amz-content-sha256", sha),
            ("content-type", "application/xml".to_string()),
        ] {
            headers.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_str(&value).expect("ASCII header value"),
            );
        }
        let url = format!(
            "{}?retention",
            self.key_url(&format!("{}{}", self.prefix(), key.trim_start_matches('/')))
        );
        self.send_with(OP, http::Method::PUT, &url, headers, body)
            .await
            .map(drop)
    }

    /// Whether the bucket was created with Object Lock
    /// (`GetObjectLockConfiguration`).
    pub async fn object_lock_enabled(&self) -> Result<bool, MultipartError> {
        const OP: &str = "GetObjectLockConfiguration";
        let url = format!("{}?object-lock", self.bucket_url());
        match self
            .send_with(
                OP,
                http::Method::GET,
                &url,
                http::HeaderMap::new(),
                Vec::new(),
            )
            .await
        {
            Ok(body) => Ok(quick_xml::de::from_str::<ObjectLockConfiguration>(&body)
                .ok()
                .and_then(|c| c.object_lock_enabled)
                .is_some_and(|e| e == "Enabled")),
            // S3's answer for a bucket created without it.
            Err(e) if e.detail.contains("ObjectLockConfigurationNotFound") => Ok(false),
            Err(e) => Err(e),
        }
    }
}
