//! What every request handler can reach.

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use supascale_shared::{Config, MasterKey};

use crate::key_cache::KeyCache;
use crate::list_cache::ListCache;

#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub master_key: MasterKey,
    pub config: Arc<Config>,
    pub redis: Option<redis::aio::ConnectionManager>,
    pub keys: Arc<KeyCache>,
    /// Where artifacts are stored (built and checked at start).
    pub destinations: Arc<supascale_shared::destinations::Destinations>,
    /// Where new jobs are pushed.
    pub queue: supascale_shared::jobs::JobQueue,
    /// Wakes the event streams of jobs.
    pub events: supascale_shared::jobs::events::EventBus,
    /// Pages of `GET /backups`, as the JSON bytes that answered them.
    pub list_cache: Arc<ListCache<bytes::Bytes>>,
}
