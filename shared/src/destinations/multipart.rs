//! Multipart uploads that nobody will finish, on S3-kind destinations (`s3`,
//! `r2`, `minio`, `backblaze`).
//!
//! A backup streams its artifact as a multipart upload. A worker killed
//! mid-upload cannot abort it, and its parts stay stored (and billed) until
//! someone does. OpenDAL 0.59 can neither list nor abort multipart uploads,
//! so this speaks S3 directly: `ListMultipartUploads` under the
//! destination's prefix, `ListParts` to see whether an old upload is still
//! moving, `AbortMultipartUpload` for the ones that are not. Requests are
//! signed with AWS SigV4 by `reqsign`, the signer OpenDAL itself uses, and
//! go to the same URL OpenDAL writes to (path style: `<endpoint>/<bucket>`).
//!
//! Azure and GCS need nothing of this: Azure drops uncommitted blocks after
//! 7 days, and a GCS resumable upload session expires after a week.
//!
//! The access key never reaches a log line or an error: errors carry the
//! operation, the HTTP status and S3's error code and message.

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::header::HOST;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqsign_aws_v4::{Credential, RequestSigner, StaticCredentialProvider};
use reqsign_core::{Context, Signer};
use serde::Deserialize;

use crate::secret::Secret;

/// How long after it was initiated (and since its last part) a multipart
/// upload counts as abandoned; `stale_upload_seconds` overrides it.
pub const STALE_UPLOAD_AFTER: Duration = Duration::from_secs(3600);

/// Everything but RFC 3986's unreserved characters is encoded, as SigV4
/// expects of path segments and query values.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A request that failed; it names the operation and what S3 said, never
/// the credentials.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {detail}")]
pub struct MultipartError {
    pub operation: &'static str,
    pub detail: String,
    /// Another try may succeed: no answer, a 5xx, a 429.
    pub temporary: bool,
}

impl MultipartError {
    fn is_no_such_upload(&self) -> bool {
        self.detail.contains("NoSuchUpload")
    }

    /// The same, naming the upload it concerns.
    fn about(self, upload: &PendingUpload) -> Self {
        Self {
            detail: format!(
                "{} (upload {}): {}",
                upload.key, upload.upload_id, self.detail
            ),
            ..self
        }
    }
}

/// A multipart upload that was initiated and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The full key in the bucket (prefix included).
    pub key: String,
    pub upload_id: String,
    pub initiated: DateTime<Utc>,
}

/// The bucket (and prefix) of an S3-kind destination, as S3 sees it.
#[derive(Clone)]
pub struct S3Target {
    /// `<endpoint>/<bucket>`, without a trailing slash.
    base_url: String,
    region: String,
    /// `a/b/`, or empty for the whole bucket.
    prefix: String,
    signer: Option<Signer<Credential>>,
    client: reqwest::Client,
}

impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target")
            .field("base_url", &self.base_url)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("signed", &self.signer.is_some())
            .finish()
    }
}

impl S3Target {
    /// `endpoint` as the destination gives it to OpenDAL (`None`: AWS);
    /// `prefix` without leading or trailing slashes. Without an access key
    /// requests go unsigned.
    pub fn new(
        endpoint: Option<&str>,
        bucket: &str,
        region: &str,
        prefix: &str,
        credentials: Option<(&str, &Secret)>,
    ) -> Self {
        let signer = credentials.map(|(id, secret)| {
            Signer::new(
                Context::new(),
                StaticCredentialProvider::new(id, secret.expose()),
                RequestSigner::new("s3", region),
            )
        });
        Self {
            base_url: base_url(endpoint, bucket, region),
            region: region.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            signer,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("a default HTTP client builds"),
        }
    }

    /// The key prefix the sweep looks under (`a/b/`, or empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every multipart upload in progress under the prefix
    /// (`ListMultipartUploads`, all pages).
    pub async fn list_uploads(&self) -> Result<Vec<PendingUpload>, MultipartError> {
        const OP: &str = "ListMultipartUploads";
        let mut uploads = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = format!("uploads&prefix={}", enc(&self.prefix));
            if let Some((key, id)) = &markers {
                query.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    enc(key),
                    enc(id)
                ));
            }
            let url = format!("{}?{query}", self.base_url);
            let body = self.send(OP, http::Method::GET, &url).await?;
            let page: ListMultipartUploadsResult = parse(OP, &body)?;
            for upload in page.uploads {
                uploads.push(PendingUpload {
                    initiated: timestamp(OP, &upload.initiated)?,
                    key: upload.key,
                    upload_id: upload.upload_id,
                });
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(key), Some(id))
                    if markers.as_ref() != Some(&(key.clone(), id.clone())) =>
                {
                    markers = Some((key, id));
                }
                _ => return Ok(uploads),
            }
        }
    }

    /// When the upload's latest part was stored (`ListParts`, all pages);
    /// `None` when it has no part.
    pub async fn last_part_at(
        &self,
        upload: &PendingUpload,
    ) -> Result<Option<DateTime<Utc>>, MultipartError> {
        const OP: &str = "ListParts";
        let mut latest: Option<DateTime<Utc>> = None;
        let mut marker: Option<String> = None;
        loop {
            let mut url = format!(
                "{}?uploadId={}",
                self.key_url(&upload.key),
                enc(&upload.upload_id)
            );
            if let Some(marker) = &marker {
                url.push_str(&format!("&part-number-marker={}", enc(marker)));
            }
            let body = self.send(OP, http::Method::GET, &url).await?;
            let page: ListPartsResult = parse(OP, &body)?;
            for part in page.parts {
                let at = timestamp(OP, &part.last_modified)?;
                latest = latest.max(Some(at));
            }
            match (page.is_truncated, page.next_part_number_marker) {
                (true, Some(next)) if marker.as_ref() != Some(&next) => marker = Some(next),
                _ => return Ok(latest),
            }
        }
    }

    /// Aborts the upload and frees its parts (`AbortMultipartUpload`); one
    /// that is already gone (another worker's sweep got there first) is not
    /// an error.
    pub async fn abort(&self, upload: &PendingUpload) -> Result<(), MultipartError> {
        const OP: &str = "AbortMultipartUpload";
        let url = format!(
            "{}?uploadId={}",
            self.key_url(&upload.key),
            enc(&upload.upload_id)
        );
        match self.send(OP, http::Method::DELETE, &url).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_no_such_upload() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Aborts every upload under the prefix that was initiated, and last
    /// received a part, more than `older_than` ago; returns those aborted.
    /// One upload that cannot be looked at or aborted does not stop the
    /// others: its error is returned beside them.
    pub async fn abort_stale(
        &self,
        older_than: Duration,
    ) -> Result<(Vec<PendingUpload>, Vec<MultipartError>), MultipartError> {
        // An age beyond any date: nothing is that old.
        let Some(cutoff) = chrono::Duration::from_std(older_than)
            .ok()
            .and_then(|age| Utc::now().checked_sub_signed(age))
        else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut aborted = Vec::new();
        let mut errors = Vec::new();
        for upload in self.list_uploads().await? {
            if upload.initiated > cutoff {
                continue;
            }
            // A large backup may stream for longer than the age: an upload
            // that still receives parts is alive, however old.
            match self.last_part_at(&upload).await {
                Ok(Some(at)) if at > cutoff => continue,
                Ok(_) => {}
                // Finished or aborted since it was listed.
                Err(e) if e.is_no_such_upload() => continue,
                Err(e) => {
                    errors.push(e.about(&upload));
                    continue;
                }
            }
            match self.abort(&upload).await {
                Ok(()) => aborted.push(upload),
                Err(e) => errors.push(e.about(&upload)),
            }
        }
        Ok((aborted, errors))
    }

    /// `<endpoint>/<bucket>`.
    pub fn bucket_url(&self) -> &str {
        &self.base_url
    }

    pub(super) fn key_url(&self, key: &str) -> String {
        let path: Vec<String> = key.split('/').map(enc).collect();
        format!("{}/{}", self.base_url, path.join("/"))
    }

    /// Signs and sends a bodiless request; the response body on success.
    async fn send(
        &self,
        operation: &'static str,
        method: http::Method,
        url: &str,
    ) -> Result<String, MultipartError> {
        self.send_with(operation, method, url, http::HeaderMap::new(), Vec::new())
            .await
    }

    /// Signs (`headers` included) and sends a request with `body`; the
    /// response body on success.
    pub(super) async fn send_with(
        &self,
        operation: &'static str,
        method: http::Method,
        url: &str,
        headers: http::HeaderMap,
        body: Vec<u8>,
    ) -> Result<String, MultipartError> {
        let fail = |detail: String| MultipartError {
            operation,
            detail,
            temporary: false,
        };
        let gone = |detail: String| MultipartError {
            temporary: true,
            ..fail(detail)
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(url)
            .body(())
            .map_err(|e| fail(format!("bad request URL: {e}")))?;
        *request.headers_mut() = headers;
        let (mut parts, ()) = request.into_parts();
        if let Some(signer) = &self.signer {
            signer
                .sign(&mut parts, None)
                .await
                // Only the kind: a signing error's message could quote
                // what it was given.
                .map_err(|e| fail(format!("cannot sign the request: {}", e.kind())))?;
        }
        // reqwest sets Host itself, from the same URL.
        parts.headers.remove(HOST);
        let response = self
            .client
            .request(parts.method, url)
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| gone(e.without_url().to_string()))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| gone(e.without_url().to_string()))?;
        if status.is_success() {
            return Ok(body);
        }
        let detail = match quick_xml::de::from_str::<S3Error>(&body) {
            Ok(error) => format!(
                "{status}: {} {}",
                error.code,
                error.message.unwrap_or_default()
            ),
            Err(_) => status.to_string(),
        };
        let detail = detail.trim_end().to_string();
        Err(
            if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
                gone(detail)
            } else {
                fail(detail)
            },
        )
    }
}

/// The same base URL OpenDAL's S3 service builds for the destination.
fn base_url(endpoint: Option<&str>, bucket: &str, region: &str) -> String {
    let mut endpoint = match endpoint {
        Some(e) if e.starts_with("http") => e.to_string(),
        Some(e) => format!("https://{e}"),
        None => "https://s3.amazonaws.com".to_string(),
    };
    endpoint = endpoint.replace(&format!("//{bucket}."), "//");
    if let Ok(url) = url::Url::parse(&endpoint) {
        endpoint = url.to_string().trim_end_matches('/').to_string();
    }
    if endpoint == "https://s3.amazonaws.com" {
        endpoint = format!("https://s3.{region}.amazonaws.com");
    }
    format!("{endpoint}/{bucket}")
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

fn parse<T: serde::de::DeserializeOwned>(
    operation: &'static str,
    body: &str,
) -> Result<T, MultipartError> {
    quick_xml::de::from_str(body).map_err(|e| MultipartError {
        operation,
        detail: format!("unexpected response: {e}"),
        temporary: false,
    })
}

fn timestamp(operation: &'static str, value: &str) -> Result<DateTime<Utc>, MultipartError> {
    DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| MultipartError {
            operation,
            detail: format!("unexpected timestamp {value:?}: {e}"),
            temporary: false,
        })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<UploadEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadEntry {
    key: String,
    upload_id: String,
    initiated: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPartsResult {
    #[serde(default)]
    is_truncated: bool,
    next_part_number_marker: Option<String>,
    #[serde(default, rename = "Part")]
    parts: Vec<PartEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PartEntry {
    last_modified: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct S3Error {
    code: String,
    message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_is_the_one_opendal_writes_to() {
        assert_eq!(
            base_url(None, "b", "eu-west-1"),
            "https://s3.eu-west-1.amazonaws.com/b"
        );
        assert_eq!(
            base_url(Some("http://127.0.0.1:9000/"), "b", "us-east-1"),
            "http://127.0.0.1:9000/b"
        );
        assert_eq!(
            base_url(Some("acct.r2.cloudflarestorage.com"), "b", "auto"),
            "https://acct.r2.cloudflarestorage.com/b"
        );
        assert_eq!(
            base_url(Some("https://b.s3.example.com"), "b", "x"),
            "https://s3.example.com/b"
        );
    }

    #[test]
    fn a_listing_page_parses() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/b.tar</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker>
  <MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/a &amp; b.tar</Key><UploadId>id1</UploadId>
    <Initiator><ID>x</ID></Initiator><StorageClass>STANDARD</StorageClass>
    <Initiated>2026-01-19T02:00:00.000Z</Initiated></Upload>
  <Upload><Key>p/b.tar</Key><UploadId>id2</UploadId><Initiated>2026-01-19T03:00:00Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page: ListMultipartUploadsResult = parse("t", xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("id2"));
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[0].key, "p/a & b.tar");
        assert!(timestamp("t", &page.uploads[0].initiated).is_ok());
        let empty: ListMultipartUploadsResult = parse(
            "t",
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(empty.uploads.is_empty());
    }

    #[test]
    fn keys_are_encoded_segment_by_segment() {
        let target = S3Target::new(Some("http://h:1"), "b", "r", "p/q", None);
        assert_eq!(target.prefix(), "p/q/");
        assert_eq!(
            target.key_url("p/q/a b+c.tar"),
            "http://h:1/b/p/q/a%20b%2Bc.tar"
        );
    }

    #[test]
    fn the_secret_is_not_in_the_debug_output() {
        let secret = Secret::new("very-secret-key");
        let target = S3Target::new(None, "b", "r", "", Some(("AKID", &secret)));
        assert!(!format!("{target:?}").contains("very-secret-key"));
    }
}
