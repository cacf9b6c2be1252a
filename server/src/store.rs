use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use tonic::Status;

/// What one entry costs against `--store-max-bytes` besides its key and value: the two `Bytes`
/// handles and the map slot, rounded up.
pub(crate) const ENTRY_OVERHEAD: usize = 64;

/// The store is full: a Put that would take it past `--store-max-bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("store full: {used} of {max} bytes in use, this value needs {needed} (--store-max-bytes)")]
pub(crate) struct StoreFull {
    pub(crate) used: usize,
    pub(crate) max: usize,
    pub(crate) needed: usize,
}

impl From<StoreFull> for Status {
    fn from(full: StoreFull) -> Self {
        Status::resource_exhausted(full.to_string())
    }
}

/// Bytes an entry holds against the cap.
pub(crate) fn cost(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

/// The in-memory key-value store behind Put and Get, split into shards so that cores rarely
/// meet on a lock. Bounded: a Put past `max` bytes is refused (RESOURCE_EXHAUSTED), never
/// evicts, so a value a Put stored is there for every later Get.
#[derive(Debug)]
pub(crate) struct Store {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<Bytes, Bytes>>]>,
    used: AtomicUsize,
    max: usize,
}

impl Store {
    pub(crate) fn new(shards: usize, max: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            used: AtomicUsize::new(0),
            max,
        }
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, HashMap<Bytes, Bytes>> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        // A poisoned shard only means a handler panicked mid-insert; the map is still valid.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores copies of `key` and `value` (never slices of a request buffer: a stored slice
    /// would keep the whole pooled buffer alive); true when it replaced a previous value.
    pub(crate) fn put(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreFull> {
        let mut shard = self.shard(key);
        let old = shard.get(key).map_or(0, |v| cost(key, v));
        let new = cost(key, value);
        // The shard lock holds `old` still; other shards move `used` meanwhile, hence the
        // atomic update that only succeeds within the cap.
        if new > old {
            let grow = new - old;
            self.used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    (used + grow <= self.max).then_some(used + grow)
                })
                .map_err(|used| StoreFull {
                    used,
                    max: self.max,
                    needed: grow,
                })?;
        } else {
            self.used.fetch_sub(old - new, Ordering::AcqRel);
        }
        let (key, value) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
        Ok(shard.insert(key, value).is_some())
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.shard(key).get(key).cloned()
    }

    /// Bytes held against the cap.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// The same cap for a shard that one owner task holds alone (no lock, no atomic).
#[derive(Debug, Default)]
pub(crate) struct OwnedShard {
    map: HashMap<Bytes, Bytes>,
    used: usize,
    max: usize,
}

impl OwnedShard {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            used: 0,
            max,
        }
    }

    /// Stores copies; true when it replaced a previous value.
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) -> Result<bool, StoreFull> {
        let old = self.map.get(key).map_or(0, |v| cost(key, v));
        let new = cost(key, value);
        let used = self.used - old + new;
        if new > old && used > self.max {
            return Err(StoreFull {
                used: self.used,
                max: self.max,
                needed: new - old,
            });
        }
        self.used = used;
        let (key, value) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
        Ok(self.map.insert(key, value).is_some())
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.map.get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_get_and_replace() {
        let store = Store::new(4, 1 << 20);
        assert_eq!(store.get(b"k"), None);
        assert_eq!(store.put(b"k", b"v1"), Ok(false));
        assert_eq!(store.put(b"k", b"v2"), Ok(true));
        assert_eq!(store.get(b"k").as_deref(), Some(&b"v2"[..]));
        assert_eq!(store.used(), cost(b"k", b"v2"));
    }

    #[test]
    fn a_put_past_the_cap_is_refused_and_changes_nothing() {
        let max = 2 * cost(b"k1", &[0; 100]);
        let store = Store::new(4, max);
        store.put(b"k1", &[1; 100]).unwrap();
        store.put(b"k2", &[2; 100]).unwrap();
        let full = store.put(b"k3", &[3; 1]).unwrap_err();
        assert_eq!((full.used, full.max), (max, max));
        assert_eq!(store.get(b"k3"), None);
        // Growing a value past the cap is refused too; shrinking always fits, and frees room.
        assert!(store.put(b"k1", &[1; 101]).is_err());
        assert_eq!(store.get(b"k1").unwrap().len(), 100);
        store.put(b"k1", &[1; 10]).unwrap();
        // k1 gave back 90 bytes: exactly what k3 with 24 bytes costs (2 + 24 + 64).
        store.put(b"k3", &[3; 24]).unwrap();
        assert_eq!(store.used(), max);
        let status = Status::from(full);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("--store-max-bytes"), "{status:?}");
    }

    #[test]
    fn an_owned_shard_keeps_the_same_books() {
        let max = cost(b"k", &[0; 70]);
        let mut shard = OwnedShard::new(max);
        assert_eq!(shard.put(b"k", &[0; 50]), Ok(false));
        assert!(shard.put(b"j", b"").is_err());
        assert_eq!(shard.put(b"k", b"small"), Ok(true));
        assert_eq!(shard.put(b"j", b""), Ok(false));
        assert_eq!(shard.get(b"k").as_deref(), Some(&b"small"[..]));
        assert_eq!(shard.used, cost(b"k", b"small") + cost(b"j", b""));
    }
}
