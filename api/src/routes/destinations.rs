//! `/destinations`: where backups can go, and whether each works right now
//! (`shared::destinations::health`). Never a credential or an endpoint:
//! kind, bucket, container or folder, and prefix. The probes it runs are
//! recorded as the workers' are (`/metrics`).

use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use supascale_shared::api_key::Permission;
use supascale_shared::destinations::Destination;
use supascale_shared::destinations::health::{self, Probe};
use supascale_shared::entities::destination_health;

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
    /// Every artifact stored here is locked (S3 Object Lock) for this many
    /// days (`immutable_days`).
    #[oai(skip_serializing_if_is_none)]
    pub immutable_days: Option<u32>,
    /// `governance | compliance`, with `immutableDays`.
    #[oai(skip_serializing_if_is_none)]
    pub immutable_mode: Option<String>,
    /// Absent with `probe=false`.
    #[oai(skip_serializing_if_is_none)]
    pub probe: Option<DestinationProbe>,
}

#[derive(Debug, Clone, Object)]
pub struct DestinationList {
    pub success: bool,
    pub destinations: Vec<DestinationInfo>,
}

/// A probe this recent (by anyone) answers instead of a new one: a
/// `backups:read` key cannot make us write to every bucket at will.
const REUSE_WITHIN: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// Probes recorded within [`REUSE_WITHIN`] (none when the control plane
/// does not answer: then every destination is probed).
async fn recent_probes(state: &AppState) -> Vec<destination_health::Model> {
    let since = chrono::Utc::now() - REUSE_WITHIN;
    destination_health::Entity::find()
        .filter(destination_health::Column::CheckedAt.gte(since))
        .all(&state.db)
        .await
        .unwrap_or_default()
}

impl From<destination_health::Model> for DestinationProbe {
    fn from(row: destination_health::Model) -> Self {
        Self {
            up: row.up,
            latency_ms: row.latency_ms.max(0) as u64,
            error: row.error,
            checked_at: row.checked_at.into(),
        }
    }
}

fn info(destination: &Destination, probe: Option<DestinationProbe>) -> DestinationInfo {
    let location = destination.location().clone();
    DestinationInfo {
        name: destination.name().to_string(),
        kind: destination.name().to_string(),
        bucket: location.bucket,
        container: location.container,
        path: location.path,
        prefix: location.prefix,
        immutable_days: destination.immutability().map(|i| i.days),
        immutable_mode: destination
            .immutability()
            .map(|i| i.mode.as_str().to_string()),
        probe,
    }
}

pub struct DestinationsApi;

#[OpenApi(tag = "ApiTags::Destinations")]
impl DestinationsApi {
    /// List destinations and their health
    ///
    /// Every configured destination, and for each the result of a probe
    /// run now (all at once, at most 10 s): a small object written, read
    /// back and deleted. A probe made in the last 10 s (by a worker or an
    /// earlier request) is shown instead of a new one. `probe=false` skips
    /// the probes.
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
        let probes: Vec<Option<DestinationProbe>> = if probe.0.unwrap_or(true) {
            let recent = recent_probes(&state).await;
            futures::future::join_all(destinations.iter().map(|d| async {
                if let Some(row) = recent.iter().find(|r| r.name == d.name()) {
                    return Some(DestinationProbe::from(row.clone()));
                }
                let probe = d.probe().await;
                // What `/metrics` reports: the latest probe, whoever ran it.
                if let Err(e) = health::record(&state.db, d.name(), &probe).await {
                    tracing::warn!(destination = %d.name(), error = %e, "cannot record a destination probe");
                }
                Some(probe.into())
            }))
            .await
        } else {
            vec![None; destinations.len()]
        };
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
