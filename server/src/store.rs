use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Mutex,
};

use bytes::Bytes;

/// The in-memory key-value store behind Put and Get, split into shards so that cores rarely
/// meet on a lock.
#[derive(Debug)]
pub(crate) struct Store {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<Bytes, Bytes>>]>,
}

impl Store {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, HashMap<Bytes, Bytes>> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        // A poisoned shard only means a handler panicked mid-insert; the map is still valid.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores copies of `key` and `value` (never slices of a request buffer: a stored slice
    /// would keep the whole pooled buffer alive); true when it replaced a previous value.
    pub(crate) fn put(&self, key: &[u8], value: &[u8]) -> bool {
        let (key, value) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
        self.shard(&key).insert(key, value).is_some()
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.shard(key).get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_get_and_replace() {
        let store = Store::new(4);
        assert_eq!(store.get(b"k"), None);
        assert!(!store.put(b"k", b"v1"));
        assert!(store.put(b"k", b"v2"));
        assert_eq!(store.get(b"k").as_deref(), Some(&b"v2"[..]));
    }
}
