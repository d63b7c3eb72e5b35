//! `GET /backups/{id}/download` (`DELETE /backups/{id}` lives with the
//! other `/backups/{id}` operations: poem-openapi writes one path item per
//! API struct, and two would be a duplicate key in the document).
//!
//! A download streams the object from its destination: `Content-Length`,
//! the artifact's SHA-256 as a strong `ETag`, `Accept-Ranges: bytes`, and
//! single `Range` requests (206, or 416 when unsatisfiable) honouring
//! `If-Range`, so an interrupted download resumes. Never a
//! `Content-Encoding`: the bytes are the artifact.

use futures::TryStreamExt;
use poem::{Body, IntoResponse, Response};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::{ApiResponse, OpenApi};
use supascale_shared::api_key::Permission;
use supascale_shared::artifact::Compression;
use supascale_shared::artifact::artifact_of;
use supascale_shared::jobs;
use supascale_shared::replicas::{LocateError, Problem, locate};

use super::ApiTags;
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::visible::visible_backup;

/// The artifact's bytes, typed as what they are.
pub struct ArtifactBytes {
    body: Body,
    content_type: &'static str,
}

impl Payload for ArtifactBytes {
    const CONTENT_TYPE: &'static str = "application/gzip";

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "binary")))
    }

    fn register(_registry: &mut Registry) {}
}

impl IntoResponse for ArtifactBytes {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type(self.content_type)
            .body(self.body)
    }
}

#[derive(ApiResponse)]
pub enum Download {
    /// The whole artifact.
    #[oai(status = 200)]
    Whole(
        ArtifactBytes,
        #[oai(header = "Content-Length")] u64,
        #[oai(header = "Content-Disposition")] String,
        #[oai(header = "ETag")] String,
        #[oai(header = "Accept-Ranges")] String,
        /// The destination the bytes come from: the backup's own or a copy's.
        #[oai(header = "X-Backup-Destination")]
        String,
        /// Set when a copy is served because the primary could not be
        /// (`199 - "<why>"`).
        #[oai(header = "Warning")]
        Option<String>,
    ),
    /// The requested range.
    #[oai(status = 206)]
    Part(
        ArtifactBytes,
        #[oai(header = "Content-Length")] u64,
        #[oai(header = "Content-Range")] String,
        #[oai(header = "Content-Disposition")] String,
        #[oai(header = "ETag")] String,
        #[oai(header = "Accept-Ranges")] String,
        /// The destination the bytes come from: the backup's own or a copy's.
        #[oai(header = "X-Backup-Destination")]
        String,
        /// Set when a copy is served because the primary could not be
        /// (`199 - "<why>"`).
        #[oai(header = "Warning")]
        Option<String>,
    ),
    /// The range lies outside the artifact.
    #[oai(status = 416)]
    RangeNotSatisfiable(
        Json<crate::error::ErrorBody>,
        #[oai(header = "Content-Range")] String,
    ),
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: `Ok(None)` for no
/// usable range (serve the whole), `Err(())` when unsatisfiable.
fn parse_range(header: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: serve the whole artifact (allowed by RFC 9110).
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", "") => return Err(()),
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.checked_sub(1).ok_or(())?)
        }
        (start, "") => (
            start.parse().map_err(|_| ())?,
            size.checked_sub(1).ok_or(())?,
        ),
        (start, end) => {
            let start: u64 = start.parse().map_err(|_| ())?;
            let end: u64 = end.parse().map_err(|_| ())?;
            (start, end.min(size.saturating_sub(1)))
        }
    };
    if start >= size || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

pub struct DownloadApi;

#[OpenApi(tag = "ApiTags::Backups")]
impl DownloadApi {
    /// Download backup
    ///
    /// The artifact as stored, with `Range` support for resuming. Only a
    /// completed backup downloads (409 otherwise). It comes from the
    /// backup's destination, or from a copy when the primary's object is
    /// missing, has the wrong size or cannot be reached (saying so in a
    /// `Warning` header); `?destination=` picks the replica, with no
    /// fallback. `X-Backup-Destination` names the one served.
    #[oai(
        path = "/backups/:id/download",
        method = "get",
        operation_id = "downloadBackup"
    )]
    async fn download(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
        /// `bytes=START-END`, `bytes=START-` or `bytes=-LENGTH`.
        #[oai(name = "Range")]
        range: Header<Option<String>>,
        /// Serve the range only if the artifact still has this ETag.
        #[oai(name = "If-Range")]
        if_range: Header<Option<String>>,
        /// Read the artifact from this destination (the backup's own or a
        /// copy's), with no fallback.
        destination: Query<Option<String>>,
    ) -> ApiResult<Download> {
        let principal = auth.principal();
        principal.require(Permission::BackupsRead)?;
        let row = visible_backup(&state, principal, &id.0).await?;
        if row.status != jobs::STATUS_COMPLETED {
            return Err(ApiError::conflict(format!(
                "Backup is {}; only a completed backup can be downloaded",
                row.status
            )));
        }
        let (_, compression) = artifact_of(&row);
        let located = locate(
            &state.db,
            &state.destinations,
            &row,
            destination.0.as_deref(),
        )
        .await
        .map_err(|e| unavailable(&row.id, e))?;
        if let Some(why) = &located.fallback {
            tracing::warn!(backup = %row.id, from = %located.name(), reason = %why, "serving a copy");
        }
        let served = located.name().to_string();
        let warning = located.fallback.as_ref().map(|why| {
            // A header value is visible ASCII; a quoted string has no
            // quotes or backslashes inside.
            let text: String = why
                .chars()
                .map(|c| match c {
                    '"' | '\\' => '\'',
                    c if c == ' ' || c.is_ascii_graphic() => c,
                    _ => '?',
                })
                .collect();
            format!("199 - \"{text}\"")
        });
        let (destination, key, size) = (&located.destination, &located.key, located.size);
        let etag = format!("\"{}\"", row.sha256.clone().unwrap_or_default());
        let mut filename = format!(
            "{}-{}-{}.{}",
            row.project_id,
            row.created_at.format("%Y-%m-%d"),
            row.backup_type,
            compression.extension()
        );
        let content_type = if row.encrypted {
            filename.push_str(".age");
            "application/octet-stream"
        } else {
            match compression {
                Compression::Gzip => "application/gzip",
                Compression::Zstd => "application/zstd",
            }
        };
        let disposition = format!("attachment; filename=\"{filename}\"");
        let wanted = match (&range.0, &if_range.0) {
            (Some(_), Some(tag)) if tag.trim() != etag => Ok(None),
            (Some(r), _) => parse_range(r, size),
            (None, _) => Ok(None),
        };
        let wanted = match wanted {
            Ok(w) => w,
            Err(()) => {
                return Ok(Download::RangeNotSatisfiable(
                    Json(crate::error::ErrorBody::new("Range not satisfiable")),
                    format!("bytes */{size}"),
                ));
            }
        };
        let reader = destination
            .reader(key)
            .await
            .map_err(|_| ApiError::DestinationDown)?;
        let (start, end) = wanted.unwrap_or((0, size.saturating_sub(1)));
        let length = if size == 0 { 0 } else { end - start + 1 };
        let stream = reader
            .into_bytes_stream(start..start + length)
            .await
            .map_err(|_| ApiError::DestinationDown)?
            .map_err(std::io::Error::other);
        let body = ArtifactBytes {
            body: Body::from_bytes_stream(stream),
            content_type,
        };
        Ok(match wanted {
            None => Download::Whole(
                body,
                length,
                disposition,
                etag,
                "bytes".into(),
                served,
                warning,
            ),
            Some(_) => Download::Part(
                body,
                length,
                format!("bytes {start}-{end}/{size}"),
                disposition,
                etag,
                "bytes".into(),
                served,
                warning,
            ),
        })
    }
}

/// No replica can be served: the contract's 409 for an artifact that is
/// gone or wrong, 503 for a destination that did not answer, 400 for a
/// `?destination=` the backup is not on.
fn unavailable(backup: &str, e: LocateError) -> ApiError {
    match e {
        LocateError::NoSuchReplica { .. } => ApiError::bad_request(e.to_string()),
        LocateError::ControlPlane(e) => e.into(),
        LocateError::Unusable {
            problem: Problem::Unreachable(_),
            ..
        } => {
            tracing::error!(backup = %backup, error = %e, "cannot read the destination");
            ApiError::DestinationDown
        }
        LocateError::Unusable {
            problem: Problem::Missing,
            ..
        } => ApiError::conflict(
            "Backup is unavailable: its artifact is missing from the destination",
        ),
        LocateError::Unusable { .. } => ApiError::conflict(format!("Backup is unavailable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok(Some((0, 99))));
        assert_eq!(parse_range("bytes=900-", 1000), Ok(Some((900, 999))));
        assert_eq!(parse_range("bytes=-100", 1000), Ok(Some((900, 999))));
        assert_eq!(parse_range("bytes=990-5000", 1000), Ok(Some((990, 999))));
        assert_eq!(parse_range("bytes=1000-", 1000), Err(()));
        assert_eq!(parse_range("bytes=5-1", 1000), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(parse_range("items=0-1", 1000), Ok(None));
    }
}
