//! Probes every destination at start and then every
//! `destination_probe_seconds`, and keeps each result in the control plane
//! (`destination_health`), where `/metrics` reads it. Every process that
//! runs workers runs this loop; a destination probed by any of them within
//! the interval is not probed again, so N workers do not mean N probes.
//! A destination that goes down is logged (by the probe) with its error,
//! one that comes back is logged once.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::EntityTrait;

use crate::JobContext;
use supascale_shared::destinations::health;
use supascale_shared::entities::destination_health;

/// How often the loop looks at which destinations are due.
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub async fn run(ctx: Arc<JobContext>) {
    let interval = Duration::from_secs(ctx.config.destination_probe_seconds.max(1));
    loop {
        for destination in ctx.destinations.all() {
            if !due(&ctx, destination.name(), interval).await {
                continue;
            }
            let probe = destination.probe().await;
            match health::record(&ctx.db, destination.name(), &probe).await {
                Ok(Some(before)) if !before.up && probe.up => {
                    tracing::info!(destination = %destination.name(), "destination is up again");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(destination = %destination.name(), error = %e, "cannot record a destination probe");
                }
            }
        }
        tokio::time::sleep(LOOK_EVERY.min(interval)).await;
    }
}

/// Not probed by anyone within `interval` (or the control plane does not
/// answer, in which case probing is still worth it for the log).
async fn due(ctx: &JobContext, name: &str, interval: Duration) -> bool {
    match destination_health::Entity::find_by_id(name.to_string())
        .one(&ctx.db)
        .await
    {
        Ok(Some(row)) => {
            let age = chrono::Utc::now() - row.checked_at;
            age.to_std().is_ok_and(|age| age >= interval)
        }
        _ => true,
    }
}
