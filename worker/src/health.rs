//! Probes every destination at start and then every
//! `destination_probe_seconds`, and keeps each result in the control plane
//! (`destination_health`), where `/metrics` reads it. Every process that
//! runs workers runs this loop; a destination probed by any of them within
//! the interval is not probed again, so N workers do not mean N probes.
//! A destination that goes down is logged (by the probe) with its error,
//! one that comes back is logged once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::EntityTrait;

use crate::JobContext;
use supascale_shared::destinations::health;
use supascale_shared::entities::destination_health;

/// How often the loop looks at which destinations are due.
const LOOK_EVERY: Duration = Duration::from_secs(1);

pub async fn run(ctx: Arc<JobContext>) {
    let interval = Duration::from_secs(ctx.config.destination_probe_seconds.max(1));
    // This process's own probes: never more often than the interval, even
    // while the control plane (which says what others did) does not answer.
    let mut probed: HashMap<String, Instant> = HashMap::new();
    loop {
        for destination in ctx.destinations.all() {
            let name = destination.name().to_string();
            if probed.get(&name).is_some_and(|at| at.elapsed() < interval)
                || !due(&ctx, &name, interval).await
            {
                continue;
            }
            probed.insert(name, Instant::now());
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

/// Not probed by anyone within `interval`. When the control plane does
/// not answer, probing is still worth it for the log; a probe time ahead
/// of this clock (another host's clock runs ahead) does not stop probes.
async fn due(ctx: &JobContext, name: &str, interval: Duration) -> bool {
    match destination_health::Entity::find_by_id(name.to_string())
        .one(&ctx.db)
        .await
    {
        Ok(Some(row)) => {
            let age = chrono::Utc::now() - row.checked_at;
            age.to_std().map_or(true, |age| age >= interval)
        }
        _ => true,
    }
}
