//! `/destinations`: where backups can go, and whether each works right now
//! (`shared::destinations::health`). Never a credential or an endpoint:
//! kind, bucket, container or folder, and prefix. The probes it runs are
//! recorded as the workers' are (`/metrics`).

use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use supascale_shared::api_key::Permission;
use supascale_shared::destinations::Destination;
use supascale_shared::destinations::health::{self, Probe};

use super::ApiTags;
use crate::auth::Auth;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::timestamp::Timestamp;

/// What a probe found: a small object written, read back and deleted.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct DestinationProbe {
    pub up: bool,
    /// The whole probe, in milliseconds.
    pub latency_ms: u64,
    /// Which step failed and the store's answer.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
    pub checked_at: Timestamp,
}

impl From<Probe> for DestinationProbe {
    fn from(p: Probe) -> Self {
        Self {
            up: p.up,
            latency_ms: p.latency.as_millis().min(u64::MAX as u128) as u64,
            error: p.error,
            checked_at: p.checked_at.into(),
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct DestinationInfo {
    /// The name backups use (`"destination": "s3"`).
    pub name: String,
    /// `local | s3 | gcs | azure | r2 | minio | backblaze`
    pub kind: String,
    /// `s3`, `r2`, `minio`, `backblaze`, `gcs`.
    #[oai(skip_serializing_if_is_none)]
    pub bucket: Option<String>,
    /// `azure`.
    #[oai(skip_serializing_if_is_none)]
    pub container: Option<String>,
    /// `local`: the folder.
    #[oai(skip_serializing_if_is_none)]
    pub path: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub prefix: Option<String>,
    /// Absent with `probe=false`.
    #[oai(skip_serializing_if_is_none)]
    pub probe: Option<DestinationProbe>,
}

#[derive(Debug, Clone, Object)]
pub struct DestinationList {
    pub success: bool,
    pub destinations: Vec<DestinationInfo>,
}

fn info(destination: &Destination, probe: Option<Probe>) -> DestinationInfo {
    let location = destination.location().clone();
    DestinationInfo {
        name: destination.name().to_string(),
        kind: destination.name().to_string(),
        bucket: location.bucket,
        container: location.container,
        path: location.path,
        prefix: location.prefix,
        probe: probe.map(Into::into),
    }
}

pub struct DestinationsApi;

#[OpenApi(tag = "ApiTags::Destinations")]
impl DestinationsApi {
    /// List destinations and their health
    ///
    /// Every configured destination, and for each the result of a probe
    /// run now (all at once, at most 10 s): a small object written, read
    /// back and deleted. `probe=false` skips the probes.
    #[oai(
        path = "/destinations",
        method = "get",
        operation_id = "listDestinations"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Probe each destination (default true).
        probe: Query<Option<bool>>,
    ) -> ApiResult<Json<DestinationList>> {
        auth.principal().require(Permission::BackupsRead)?;
        let destinations: Vec<&Destination> = state.destinations.all().collect();
        let probes: Vec<Option<Probe>> = if probe.0.unwrap_or(true) {
            futures::future::join_all(destinations.iter().map(|d| d.probe()))
                .await
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None; destinations.len()]
        };
        // What `/metrics` reports: the latest probe, whoever ran it.
        for (destination, probe) in destinations.iter().zip(&probes) {
            if let Some(probe) = probe
                && let Err(e) = health::record(&state.db, destination.name(), probe).await
            {
                tracing::warn!(destination = %destination.name(), error = %e, "cannot record a destination probe");
            }
        }
        Ok(Json(DestinationList {
            success: true,
            destinations: destinations
                .into_iter()
                .zip(probes)
                .map(|(d, p)| info(d, p))
                .collect(),
        }))
    }
}
