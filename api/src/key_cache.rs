//! Verified keys, kept for [`CACHE_TTL`] to keep the hot read paths off
//! the database; revoking a key drops it from this process's cache at
//! once, and other API processes forget it within the TTL.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::principal::Principal;

pub const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 10_000;

/// A key's verdict: who it is, or why it is refused.
pub(crate) type Verdict = Result<Principal, String>;

pub struct KeyCache {
    entries: RwLock<HashMap<String, (Instant, Verdict)>>,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
        }
    }
}

impl KeyCache {
    pub(crate) fn get(&self, hash: &str) -> Option<Verdict> {
        let entries = self.entries.read().expect("key cache lock");
        entries
            .get(hash)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, v)| v.clone())
    }

    pub(crate) fn put(&self, hash: String, value: Verdict) {
        let mut entries = self.entries.write().expect("key cache lock");
        if entries.len() >= CACHE_MAX {
            entries.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if entries.len() >= CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(hash, (Instant::now(), value));
    }

    pub fn forget_key(&self, key_id: &str) {
        let mut entries = self.entries.write().expect("key cache lock");
        entries.retain(|_, (_, v)| !matches!(v, Ok(p) if p.key_id == key_id));
    }
}
