//! The handles: [`Pool`] (any thread), and [`CoreHandle`], the `!Send` owner's handle of one
//! core, the only way to allocate without a lookup. Both hold the pool open (see `pool.rs`).

#![allow(unsafe_code)] // one of the pool's fenced unsafe parts (lib.rs)

use std::{marker::PhantomData, ptr::NonNull};

use crate::{
    Config,
    buf::PoolBuf,
    core::Core,
    free::Kicks,
    pool::{Init, Inner},
    stats::Snapshot,
};

/// A buffer pool. Cheap to clone (all clones are the same pool).
pub struct Pool {
    inner: NonNull<Inner>,
}

// SAFETY: `Inner` is Send + Sync and the handle only reaches it through `&`.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.inner().config)
            .finish()
    }
}

impl Clone for Pool {
    fn clone(&self) -> Self {
        self.inner().acquire();
        Self { inner: self.inner }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: we held a handle and do not touch the pool again.
        unsafe { self.inner.as_ref().release() }
    }
}

/// Why a thread could not become a core of the pool.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The core index is not below the pool's core count.
    #[error("core {core} out of range (pool has {cores})")]
    NoSuchCore { core: usize, cores: usize },
    /// Another thread is this core.
    #[error("core {core} is already registered by another thread")]
    CoreTaken { core: usize },
    /// This thread already is a core (of this or another pool).
    #[error("this thread is already registered as a pool core")]
    ThreadRegistered,
}

impl Pool {
    /// A pool for `config`. `defer_max` is clamped to 1..=65534 (what a defer list's packed
    /// head can count), `cores` to at least 1.
    pub fn new(config: Config) -> Self {
        let config = Config {
            cores: config.cores.max(1),
            defer_max: config.defer_max.clamp(1, crate::list::MAX_LEN),
            ..config
        };
        Self {
            inner: Inner::create(config),
        }
    }

    pub(crate) fn inner(&self) -> &Inner {
        // SAFETY: this handle keeps the pool open, and an open pool is not freed.
        unsafe { self.inner.as_ref() }
    }

    pub fn config(&self) -> &Config {
        &self.inner().config
    }

    /// Makes the calling thread core `core` of this pool until the handle is dropped.
    pub fn register_current_thread(&self, core: usize) -> Result<CoreHandle, RegisterError> {
        let state = self.inner().claim(core)?;
        Ok(CoreHandle {
            pool: self.clone(),
            core: NonNull::from(state),
            _not_send: PhantomData,
        })
    }

    /// A buffer of `len` zeroed bytes from the calling thread's core (one thread-local read
    /// finds it). On a thread that is no core of this pool, a plain heap buffer.
    pub fn alloc(&self, len: usize) -> PoolBuf {
        self.alloc_init(len, Init::Zero)
    }

    /// A buffer holding a copy of `data` (one copy: the block is not zeroed first).
    #[inline]
    pub fn alloc_copy(&self, data: &[u8]) -> PoolBuf {
        self.alloc_init(data.len(), Init::Copy(data))
    }

    #[inline(always)]
    pub(crate) fn alloc_init(&self, len: usize, init: Init<'_>) -> PoolBuf {
        let inner = self.inner();
        match inner.local_core() {
            // SAFETY: the thread is registered as this core: it holds the claim.
            Some(core) => unsafe { inner.alloc_on(core, len, init, None) },
            None => {
                inner.unregistered_allocs.add(1);
                PoolBuf::heap(init.to_boxed(len), None)
            }
        }
    }

    /// A connection's handle, for the `per-conn` strategy (other strategies ignore it).
    pub fn conn(&self) -> crate::ConnHandle {
        let core = self.inner().local_core().map_or(0, Core::index);
        crate::ConnHandle::new(self.clone(), core)
    }

    /// Every core's counters.
    pub fn snapshot(&self) -> Snapshot {
        self.inner().snapshot()
    }
}

/// The owner side of one core: the calling thread *is* that core until the handle drops. It
/// allocates without any lookup, and drains what other cores freed for it. Not `Send`: it is
/// the thread's identity (tokio's `Local` run-queue handle, against the `Steal` side that any
/// thread may use — here, any `PoolBuf` drop).
pub struct CoreHandle {
    pool: Pool,
    core: NonNull<Core>,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for CoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreHandle")
            .field("core", &self.core())
            .finish()
    }
}

impl CoreHandle {
    fn state(&self) -> &Core {
        // SAFETY: the core lives inside the pool, which this handle keeps open.
        unsafe { self.core.as_ref() }
    }

    pub fn core(&self) -> usize {
        self.state().index()
    }

    /// A buffer of `len` zeroed bytes.
    pub fn alloc(&self, len: usize) -> PoolBuf {
        // SAFETY: this handle exists only on the thread that holds the core's claim.
        unsafe {
            self.pool
                .inner()
                .alloc_on(self.state(), len, Init::Zero, None)
        }
    }

    /// A buffer holding a copy of `data`: the owner's fast path, no lookup of any kind.
    #[inline]
    pub fn alloc_copy(&self, data: &[u8]) -> PoolBuf {
        // SAFETY: as in `alloc`.
        unsafe {
            self.pool
                .inner()
                .alloc_on(self.state(), data.len(), Init::Copy(data), None)
        }
    }

    /// End of batch: hands the frees this core collected for other cores over (one atomic per
    /// destination), and moves the buffers other cores handed back to this core's free lists.
    /// A runtime calls it when it runs out of ready work (tokio: the park hook).
    pub fn drain(&self) -> usize {
        let mut kicks = Kicks::new();
        // SAFETY: as in `alloc`.
        let n = unsafe { self.pool.inner().drain(self.state(), &mut kicks) };
        // Wakers are user code: woken once the pool state is left alone.
        for waker in kicks {
            waker.wake();
        }
        n
    }

    /// Buffers waiting on this core's defer list.
    pub fn pending(&self) -> usize {
        self.state().defer.len()
    }

    /// Wakes `waker` when another core's free fills this core's defer list to half.
    pub fn register_waker(&self, waker: &std::task::Waker) {
        self.state().register_waker(waker);
    }
}

impl Drop for CoreHandle {
    fn drop(&mut self) {
        let state = self.state();
        let mut kicks = Kicks::new();
        // SAFETY: this handle is the claim, given up here.
        let waker = unsafe { self.pool.inner().release_core(state, &mut kicks) };
        // User code last, when this thread is no core any more (a waker that panics or drops
        // a handle finds the pool consistent); `self.pool` is released after this.
        drop(waker);
        for waker in kicks {
            waker.wake();
        }
    }
}
