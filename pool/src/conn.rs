//! The `per-conn` strategy's handle: the user-space analogue of the old per-socket
//! `sk->defer_list`, drained when the connection next does receive work, and when it closes.
//! A buffer freed after its connection closed has no list to wait on: it goes to the freeing
//! core's own list, as under `local`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use crate::{
    PoolBuf,
    defer::DeferList,
    pool::{Init, Shared},
};

pub(crate) struct ConnShared {
    pub(crate) defer: DeferList,
    closed: AtomicBool,
    /// The core the connection was opened on (counts its late drains).
    core: usize,
    shared: Arc<Shared>,
}

impl ConnShared {
    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Drop for ConnShared {
    fn drop(&mut self) {
        // The last buffer of a closed connection is gone; a free that raced with the close may
        // have pushed after the closing drain: those are the allocator's now.
        self.shared.drain_conn(&self.defer, self.core);
    }
}

/// One connection's defer list. Allocate its receive buffers through it; drop it when the
/// connection closes.
pub struct ConnHandle {
    inner: Arc<ConnShared>,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle")
            .field("core", &self.inner.core)
            .field("pending", &self.inner.defer.len())
            .finish()
    }
}

impl ConnHandle {
    pub(crate) fn new(shared: Arc<Shared>, core: usize) -> Self {
        Self {
            inner: Arc::new(ConnShared {
                defer: DeferList::new(),
                closed: AtomicBool::new(false),
                core,
                shared,
            }),
        }
    }

    /// A buffer that, under `per-conn`, is freed onto this connection's defer list.
    pub fn alloc(&self, len: usize) -> PoolBuf {
        self.inner
            .shared
            .alloc(len, Init::Zero, self.owner_for_frees())
    }

    /// Like [`Self::alloc`], holding a copy of `data`.
    pub fn alloc_copy(&self, data: &[u8]) -> PoolBuf {
        self.inner
            .shared
            .alloc(data.len(), Init::Copy(data), self.owner_for_frees())
    }

    /// Only `per-conn` buffers remember their connection; the others never touch its list.
    fn owner_for_frees(&self) -> Option<Arc<ConnShared>> {
        (self.inner.shared.config.strategy == crate::Strategy::PerConn).then(|| self.inner.clone())
    }

    /// Receive work: moves this connection's freed buffers to the calling core's free list.
    pub fn drain(&self) -> usize {
        self.inner
            .shared
            .drain_conn(&self.inner.defer, self.inner.core)
    }

    /// Buffers waiting on this connection's defer list.
    pub fn pending(&self) -> usize {
        self.inner.defer.len()
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        self.drain();
    }
}
