//! The in-memory key index the gateway authenticates against, swapped atomically on reload.

use gw_domain::keys::KeyRecord;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Keys by token hash.
#[derive(Debug, Default)]
pub struct KeyIndex {
    by_hash: HashMap<String, Arc<KeyRecord>>,
}

impl KeyIndex {
    /// Build an index; records are assumed validated by the key store.
    #[must_use]
    pub fn new(records: Vec<KeyRecord>) -> Self {
        let by_hash = records
            .into_iter()
            .map(|r| (r.secret_hash.to_ascii_lowercase(), Arc::new(r)))
            .collect();
        KeyIndex { by_hash }
    }

    #[must_use]
    pub fn get(&self, hash: &str) -> Option<&Arc<KeyRecord>> {
        self.by_hash.get(hash)
    }

    /// (active, revoked-or-lapsed) counts at `now`.
    #[must_use]
    pub fn count_by_state(&self, now: i64) -> (u64, u64) {
        let active = self
            .by_hash
            .values()
            .filter(|k| k.check_active(now).is_ok())
            .count() as u64;
        (active, self.by_hash.len() as u64 - active)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// A shared, atomically replaceable key index.
#[derive(Debug, Default)]
pub struct KeyRing {
    current: RwLock<Arc<KeyIndex>>,
}

impl KeyRing {
    #[must_use]
    pub fn new(records: Vec<KeyRecord>) -> Self {
        KeyRing {
            current: RwLock::new(Arc::new(KeyIndex::new(records))),
        }
    }

    /// The current index (cheap: one `Arc` clone under a read lock).
    #[must_use]
    pub fn snapshot(&self) -> Arc<KeyIndex> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replace the whole set (readers see the old or the new set, never a mix).
    pub fn replace(&self, records: Vec<KeyRecord>) {
        let next = Arc::new(KeyIndex::new(records));
        match self.current.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }
}
