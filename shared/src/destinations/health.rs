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
use crate::redact::{error_chain, redact_urls, truncate_chars};

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
    /// Which step failed and the store's answer (never a credential; it
    /// may name the store's endpoint).
    pub error: Option<String>,
    /// The step that failed.
    pub failed: Option<Step>,
    pub checked_at: DateTime<Utc>,
}

/// A probe's steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// An immutable destination's bucket has Object Lock.
    Lock,
    Write,
    Read,
    Delete,
}

impl Probe {
    /// Whether an artifact can be written there: a store that takes the
    /// object but will not give it back or let it go (a retention policy,
    /// a key without read or delete rights) still takes backups. One that
    /// cannot lock what it takes does not, when it is to be immutable.
    pub fn writable(&self) -> bool {
        !matches!(self.failed, Some(Step::Write | Step::Lock))
    }
}

/// A failed write is tried once more after this when the store called
/// its error temporary (a 503, a dropped connection): one blip does not
/// fail a backup.
const BLIP_WAIT: Duration = Duration::from_secs(1);

impl Step {
    /// What the step does, as a failure names it.
    fn doing(self) -> &'static str {
        match self {
            Step::Lock => "checking the bucket's Object Lock",
            Step::Write => "writing a test object",
            Step::Read => "reading the test object back",
            Step::Delete => "deleting the test object",
        }
    }
}

impl Destination {
    /// Writes, reads back and deletes a small object (see the module).
    pub async fn probe(&self) -> Probe {
        let started = Instant::now();
        let mut under_way = Step::Write;
        let outcome =
            match tokio::time::timeout(PROBE_TIMEOUT, self.probe_steps(&mut under_way)).await {
                Ok(outcome) => outcome,
                Err(_) => Err((
                    under_way,
                    format!(
                        "no answer within {} s ({})",
                        PROBE_TIMEOUT.as_secs(),
                        under_way.doing()
                    ),
                )),
            };
        let latency = started.elapsed();
        let (failed, error) = match outcome {
            Ok(()) => (None, None),
            Err((step, e)) => {
                let text = truncate_chars(&redact_urls(&e), ERROR_MAX);
                tracing::warn!(destination = %self.name, error = %text, "destination probe failed");
                (Some(step), Some(text))
            }
        };
        Probe {
            up: error.is_none(),
            latency,
            error,
            failed,
            checked_at: Utc::now(),
        }
    }

    /// The steps; `under_way` says which one is waiting (for a timeout's
    /// message), a failure names its own.
    async fn probe_steps(&self, under_way: &mut Step) -> Result<(), (Step, String)> {
        let failed = |step: Step| {
            move |e: opendal::Error| {
                let mut text = format!("{} failed: {}", step.doing(), error_chain(&e));
                if let Some(problem) = self.token_problem() {
                    text.push_str(&format!(" (the key file's token exchange: {problem})"));
                }
                (step, text)
            }
        };
        let operator = &self.probe_operator;
        let body = b"supascale destination probe\n".to_vec();
        let new_key = || format!("{PROBE_PREFIX}{}", uuid::Uuid::new_v4());
        let write = |key: String| {
            let body = body.clone();
            async move {
                operator
                    .write_with(&key, body)
                    .if_not_exists(self.create_only)
                    .await
            }
        };
        if let (Some(_), Some(s3)) = (self.immutability, &self.s3) {
            *under_way = Step::Lock;
            match s3.object_lock_enabled().await {
                Ok(true) => {}
                Ok(false) => {
                    return Err((
                        Step::Lock,
                        "immutable_days is set, but the bucket has no Object Lock (create the \
                         bucket with Object Lock enabled)"
                            .into(),
                    ));
                }
                Err(e) => return Err((Step::Lock, format!("{} failed: {e}", Step::Lock.doing()))),
            }
        }
        *under_way = Step::Write;
        let mut key = new_key();
        let written = match write(key.clone()).await {
            Err(e) if e.is_temporary() => {
                tokio::time::sleep(BLIP_WAIT).await;
                // A new key: the first may have been stored after all.
                key = new_key();
                write(key.clone()).await
            }
            written => written,
        };
        written.map_err(failed(Step::Write))?;
        *under_way = Step::Read;
        let read = operator.read(&key).await;
        // Removed whatever the read says, so a failed comparison leaves
        // nothing behind either.
        *under_way = Step::Delete;
        let deleted = operator.delete(&key).await;
        if let Err(e) = &deleted {
            tracing::warn!(destination = %self.name, key = %key, error = %redact_urls(&e.to_string()), "a probe's test object was left behind");
        }
        let back = read.map_err(failed(Step::Read))?;
        if back.to_vec() != body {
            return Err((
                Step::Read,
                format!(
                    "the test object came back different ({} bytes written, {} read)",
                    body.len(),
                    back.len()
                ),
            ));
        }
        deleted.map_err(failed(Step::Delete))?;
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
