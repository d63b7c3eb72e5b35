//! Is a destination usable right now? A probe writes a small object where
//! artifacts go, reads it back, compares and deletes it, without OpenDAL's
//! retries and within [`PROBE_TIMEOUT`], so that a destination that is
//! down says so in seconds, with the store's own answer, instead of after
//! a backup's retries.
//!
//! The probe's key, `.supascale-probe-<uuid>` under the destination's
//! prefix, is new every time (a `gcs` write is create-only) and never
//! looks like an artifact (`<project>/<file>`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Destination;
use crate::redact::redact_urls;

/// The longest a probe may take, all three steps together.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_PREFIX: &str = ".supascale-probe-";
/// A probe's error is cut to this many characters.
const ERROR_MAX: usize = 500;

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub up: bool,
    /// From the first request to the end (or to the failure).
    pub latency: Duration,
    /// Which step failed and the store's answer (never a credential).
    pub error: Option<String>,
    pub checked_at: DateTime<Utc>,
}

impl Destination {
    /// Writes, reads back and deletes a small object (see the module).
    pub async fn probe(&self) -> Probe {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(PROBE_TIMEOUT, self.probe_steps()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        };
        let latency = started.elapsed();
        let error = outcome.err().map(|e| {
            let text = redact_urls(&e);
            match text.char_indices().nth(ERROR_MAX) {
                Some((cut, _)) => format!("{}…", &text[..cut]),
                None => text,
            }
        });
        if let Some(error) = &error {
            tracing::warn!(destination = %self.name, %error, "destination probe failed");
        }
        Probe {
            up: error.is_none(),
            latency,
            error,
            checked_at: Utc::now(),
        }
    }

    async fn probe_steps(&self) -> Result<(), String> {
        let key = format!("{PROBE_PREFIX}{}", uuid::Uuid::new_v4());
        let body = format!("supascale destination probe {key}\n").into_bytes();
        let operator = &self.probe_operator;
        operator
            .write_with(&key, body.clone())
            .if_not_exists(self.create_only)
            .await
            .map_err(|e| format!("writing a test object failed: {e}"))?;
        let read = operator.read(&key).await;
        // Removed whatever the read says, so a failed comparison leaves
        // nothing behind either.
        let deleted = operator.delete(&key).await;
        let back = read.map_err(|e| format!("reading the test object back failed: {e}"))?;
        if back.to_vec() != body {
            return Err(format!(
                "the test object came back different ({} bytes written, {} read)",
                body.len(),
                back.len()
            ));
        }
        deleted.map_err(|e| format!("deleting the test object failed: {e}"))?;
        Ok(())
    }
}

/// Keeps `probe` as `name`'s latest in the control plane (what `/metrics`
/// reports); returns the one it replaces.
pub async fn record(
    db: &sea_orm::DatabaseConnection,
    name: &str,
    probe: &Probe,
) -> Result<Option<crate::entities::destination_health::Model>, sea_orm::DbErr> {
    use crate::entities::destination_health::{ActiveModel, Column, Entity};
    use sea_orm::{EntityTrait, Set, sea_query::OnConflict};
    let before = Entity::find_by_id(name.to_string()).one(db).await?;
    let row = ActiveModel {
        name: Set(name.to_string()),
        up: Set(probe.up),
        latency_ms: Set(probe.latency.as_millis().min(i64::MAX as u128) as i64),
        error: Set(probe.error.clone()),
        // Whole microseconds, as the control plane keeps every time.
        checked_at: Set(chrono::DurationRound::duration_trunc(
            probe.checked_at,
            chrono::TimeDelta::microseconds(1),
        )
        .unwrap_or(probe.checked_at)),
    };
    Entity::insert(row)
        .on_conflict(
            OnConflict::column(Column::Name)
                .update_columns([
                    Column::Up,
                    Column::LatencyMs,
                    Column::Error,
                    Column::CheckedAt,
                ])
                .to_owned(),
        )
        .exec(db)
        .await?;
    Ok(before)
}
