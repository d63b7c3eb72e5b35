//! What a job's module may use while it runs: the control plane, the
//! destinations, the master key, the configuration, the event bus and the
//! queue. The engine builds it once per process; the kinds only read it.

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use supascale_shared::config::Config;
use supascale_shared::destinations::Destinations;
use supascale_shared::jobs::JobQueue;
use supascale_shared::jobs::events::EventBus;
use supascale_shared::master_key::MasterKey;

/// What a job module may use.
pub struct JobContext {
    pub db: DatabaseConnection,
    pub destinations: Destinations,
    pub master_key: MasterKey,
    pub config: Arc<Config>,
    /// Wakes the streams that watch a job.
    pub events: EventBus,
    /// Where waiting jobs are delivered again.
    pub queue: JobQueue,
    /// This worker's name: host, process and a random part, so a restarted
    /// process never collides with its former self in apalis' registry.
    pub worker_id: String,
}

pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}
