//! A read cache for `GET /backups` pages, kept exact by PostgreSQL.
//!
//! Dashboards poll the same few list pages; each would otherwise cost two
//! queries. The triggers on `backups` send `NOTIFY supascale_backups_changed`
//! with every statement that changes the table (whichever process made it),
//! and a listener task here bumps a generation number on each notification:
//! a cached page is served only while the generation it was read under is
//! still current. While the listener is not connected the cache is off, and
//! every reconnect invalidates everything (notifications sent meanwhile are
//! lost). A page also expires after [`MAX_AGE`] as a last resort.
//!
//! The only staleness left is the delivery delay of a notification (well
//! under a millisecond on one host): a page read just as another process
//! commits may miss that commit, as it could without a cache.
//!
//! SQLite (the embedded default) has no cross-connection notification, so
//! there the cache stays off.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const CHANNEL: &str = "supascale_backups_changed";
const MAX_AGE: Duration = Duration::from_secs(10);
const MAX_ENTRIES: usize = 4096;

pub struct ListCache<V> {
    generation: AtomicU64,
    enabled: AtomicBool,
    entries: RwLock<HashMap<String, (u64, Instant, V)>>,
}

impl<V: Clone> Default for ListCache<V> {
    fn default() -> Self {
        Self {
            generation: AtomicU64::new(0),
            enabled: AtomicBool::new(false),
            entries: RwLock::new(HashMap::new()),
        }
    }
}

impl<V: Clone> ListCache<V> {
    /// The generation to read under, or `None` while the cache is off.
    pub fn generation(&self) -> Option<u64> {
        self.enabled
            .load(Ordering::Acquire)
            .then(|| self.generation.load(Ordering::Acquire))
    }

    pub fn get(&self, key: &str) -> Option<V> {
        let current = self.generation()?;
        let entries = self.entries.read().expect("list cache lock");
        entries
            .get(key)
            .filter(|(generation, at, _)| *generation == current && at.elapsed() < MAX_AGE)
            .map(|(_, _, value)| value.clone())
    }

    /// Stores a page read under `generation` (taken before the query ran).
    pub fn put(&self, key: String, generation: u64, value: V) {
        if self.generation() != Some(generation) {
            return;
        }
        let mut entries = self.entries.write().expect("list cache lock");
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (generation, Instant::now(), value));
    }

    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn set_enabled(&self, enabled: bool) {
        self.invalidate();
        self.enabled.store(enabled, Ordering::Release);
        if !enabled {
            self.entries.write().expect("list cache lock").clear();
        }
    }

    /// Listens for changes until the process ends; reconnects on failure.
    pub async fn listen(&self, database_url: String) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match sqlx::postgres::PgListener::connect(&database_url).await {
                Ok(mut listener) => match listener.listen(CHANNEL).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(200);
                        self.set_enabled(true);
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(_)) => self.invalidate(),
                                // The connection dropped and was re-established:
                                // what changed meanwhile was not announced.
                                Ok(None) => self.invalidate(),
                                Err(e) => {
                                    tracing::warn!(error = %supascale_shared::redact::redact_urls(&e.to_string()), "list cache listener lost; cache off");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %supascale_shared::redact::redact_urls(&e.to_string()), "cannot LISTEN for backup changes; list cache off");
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %supascale_shared::redact::redact_urls(&e.to_string()), "cannot connect the list cache listener; cache off");
                }
            }
            self.set_enabled(false);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}
