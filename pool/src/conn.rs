//! The `per-conn` strategy's handle: the user-space analogue of the old per-socket
//! `sk->defer_list`, drained when the connection next does receive work, and when it closes.
//! A buffer freed after its connection closed has no list to wait on: it goes to the freeing
//! core's own list, as under `local`.

#![allow(unsafe_code)] // one of the pool's fenced unsafe parts (lib.rs)

use std::ptr::NonNull;

use crate::{
    Pool, PoolBuf,
    list::{self, Node, RemoteList},
    pool::Init,
    sync::{Arc, AtomicBool, Ordering},
};

/// What a `per-conn` buffer holds on to: its connection.
pub(crate) type ConnRef = Arc<ConnShared>;

#[derive(Debug)]
pub(crate) struct ConnShared {
    defer: RemoteList,
    closed: AtomicBool,
    /// The core the connection was opened on (counts drains done off any core).
    core: usize,
    /// Keeps the pool open while a buffer of this connection is out.
    pool: Pool,
}

impl ConnShared {
    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Pushes an unused block on the connection's list unless it holds `max` (false: refused,
    /// the block is still the caller's).
    ///
    /// # Safety
    /// `block` is an unused pooled block of this connection's pool.
    pub(crate) unsafe fn push(&self, block: NonNull<u8>, max: usize) -> bool {
        // SAFETY: the block is unused.
        let chain = unsafe { list::single(Node::write(block)) };
        // SAFETY: the chain is ours.
        let outcome = unsafe { self.defer.push(chain, max) };
        let mut rest = outcome.rest;
        match rest.pop() {
            None => true,
            Some(node) => {
                // SAFETY: refused, so still ours; it goes back to being a plain block.
                unsafe { Node::into_block(node) };
                false
            }
        }
    }

    fn drain(&self) -> usize {
        self.pool.inner().drain_conn(&self.defer, self.core)
    }
}

impl Drop for ConnShared {
    fn drop(&mut self) {
        // The last buffer of a closed connection is gone; a free that raced with the close may
        // have pushed after the closing drain.
        self.drain();
    }
}

/// One connection's defer list. Allocate its receive buffers through it; drop it when the
/// connection closes.
pub struct ConnHandle {
    inner: ConnRef,
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
    pub(crate) fn new(pool: Pool, core: usize) -> Self {
        Self {
            inner: Arc::new(ConnShared {
                defer: RemoteList::new(),
                closed: AtomicBool::new(false),
                core,
                pool,
            }),
        }
    }

    /// A buffer that, under `per-conn`, is freed onto this connection's defer list.
    pub fn alloc(&self, len: usize) -> PoolBuf {
        self.alloc_init(len, Init::Zero)
    }

    /// Like [`Self::alloc`], holding a copy of `data`.
    pub fn alloc_copy(&self, data: &[u8]) -> PoolBuf {
        self.alloc_init(data.len(), Init::Copy(data))
    }

    fn alloc_init(&self, len: usize, init: Init<'_>) -> PoolBuf {
        let pool = &self.inner.pool;
        let inner = pool.inner();
        if inner.config.strategy != crate::Strategy::PerConn {
            return pool.alloc_init(len, init);
        }
        match inner.local_core() {
            // SAFETY: the thread is registered as this core: it holds the claim.
            Some(core) => unsafe { inner.alloc_on(core, len, init, Some(self.inner.clone())) },
            None => pool.alloc_init(len, init),
        }
    }

    /// Receive work: moves this connection's freed buffers to the calling core's free list.
    pub fn drain(&self) -> usize {
        self.inner.drain()
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
