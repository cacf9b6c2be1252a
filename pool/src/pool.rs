//! The pool: its cores, the global list of the `global` strategy, registration, allocation,
//! and the pool's lifetime.
//!
//! **Lifetime without a per-buffer count.** Buffers do not keep the pool alive with an `Arc`;
//! handles do ([`Pool`], [`CoreHandle`], connections), and outstanding buffers do through the
//! counters the pool keeps anyway. When the last handle goes, the pool *closes*: no thread is a
//! core any more, so every later free is a foreign free (see `free.rs`), and those announce
//! themselves on one word (`Life::state`: in-flight foreign frees, and a CLOSED bit). Once the
//! close has waited out the in-flight ones, the outstanding count is exact; it is added to
//! `Life::late`, which every free on a closed pool decrements. Whoever takes `late` to zero
//! (the close itself when nothing was outstanding) frees the slabs and the pool. A free on a
//! core thread never touches this word: that thread's `CoreHandle` holds the pool open.

#![allow(unsafe_code)] // one of the pool's fenced unsafe parts (lib.rs)

use std::{
    cell::Cell,
    marker::PhantomData,
    ptr::{self, NonNull},
    time::Instant,
};

use crossbeam_utils::CachePadded;

use crate::{
    Config, Strategy,
    buf::PoolBuf,
    class_of,
    core::{CLASSES, Core},
    list::Chain,
    slab,
    stats::{Snapshot, read_core},
    sync::{AtomicIsize, AtomicUsize, Mutex, Ordering, SharedCounter, lock},
};

/// Set while foreign frees may no longer start on the open path.
const CLOSED: usize = 1;
/// One in-flight foreign free in `Life::state`.
const IN_FLIGHT: usize = 2;

#[derive(Debug)]
struct Life {
    /// Handles alive: `Pool` clones, `CoreHandle`s, connections.
    handles: AtomicUsize,
    /// `IN_FLIGHT` x foreign frees in progress on the open path, `| CLOSED` once closed.
    state: AtomicUsize,
    /// After the close: buffers still out (added once) minus frees since (each subtracts 1).
    late: AtomicIsize,
}

/// The `global` strategy's list: every core's frees, under one lock.
#[derive(Debug)]
pub(crate) struct GlobalLists {
    pub(crate) lists: [Chain; CLASSES],
    pub(crate) bytes: usize,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) cores: Box<[Core]>,
    pub(crate) global: Mutex<GlobalLists>,
    life: CachePadded<Life>,
    pub(crate) unregistered_allocs: SharedCounter,
    /// What two back-to-back clock reads cost here, subtracted from every timing.
    pub(crate) clock_ns: u64,
}

// SAFETY: the raw pointers inside (free lists, slabs) are owned by the pool. Owner-only state
// is touched only by the thread holding that core's claim, the global lists only under their
// mutex, the remote lists only through their atomics.
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

#[cfg(not(krpc_loom))]
std::thread_local! {
    /// The core this thread is registered as (null: none). A plain TLS read.
    static CURRENT: Cell<*const Core> = const { Cell::new(ptr::null()) };
}
#[cfg(krpc_loom)]
loom::thread_local! {
    static CURRENT: Cell<*const Core> = Cell::new(ptr::null());
}

#[cfg(krpc_loom)]
loom::lazy_static! {
    /// Pools freed in this loom execution (the models check it).
    static ref TEARDOWNS: crate::sync::AtomicUsize = crate::sync::AtomicUsize::new(0);
}

/// Pools freed in this loom execution.
#[cfg(krpc_loom)]
pub(crate) fn teardowns() -> usize {
    TEARDOWNS.load(Ordering::SeqCst)
}

/// The core the calling thread is registered as, of any pool (null: none).
#[inline(always)]
pub(crate) fn current() -> *const Core {
    CURRENT.with(Cell::get)
}

/// How a new buffer's bytes are initialised.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Init<'a> {
    Zero,
    Copy(&'a [u8]),
}

impl Init<'_> {
    fn to_boxed(self, len: usize) -> Box<[u8]> {
        match self {
            Self::Zero => vec![0; len].into_boxed_slice(),
            Self::Copy(data) => data.into(),
        }
    }

    /// # Safety
    /// `block` is valid for writes of `len` bytes and unused; for `Copy`, `len` is its length.
    #[inline(always)]
    unsafe fn write(self, block: NonNull<u8>, len: usize) {
        // SAFETY: the contract. Reused blocks may hold stale bytes (and a link) past an
        // earlier, shorter buffer: every byte the new buffer exposes is written here.
        unsafe {
            match self {
                Self::Zero => ptr::write_bytes(block.as_ptr(), 0, len),
                Self::Copy(data) => ptr::copy_nonoverlapping(data.as_ptr(), block.as_ptr(), len),
            }
        }
    }
}

impl Inner {
    fn pool_ptr(&self) -> NonNull<Inner> {
        NonNull::from(self)
    }

    /// A buffer of `len` bytes from `core`.
    ///
    /// # Safety
    /// The calling thread holds `core`'s claim, and `core` is a core of this pool.
    #[inline(always)]
    pub(crate) unsafe fn alloc_on(
        &self,
        core: &Core,
        len: usize,
        init: Init<'_>,
        conn: Option<crate::conn::ConnRef>,
    ) -> PoolBuf {
        let Some(class) = class_of(len) else {
            // SAFETY: forwarded contract.
            return unsafe { self.alloc_large(core, len, init) };
        };
        core.owner.stats.allocs.add(1);
        let cached = if core.owner.strategy == Strategy::Global {
            self.pop_global(class)
        } else {
            // SAFETY: the caller holds the claim.
            unsafe { core.pop_free(class) }
        };
        // SAFETY: forwarded contract.
        let block = match cached.or_else(|| unsafe { self.alloc_miss(core, class) }) {
            Some(block) => block,
            None => {
                core.owner.stats.fallback_allocs.add(1);
                return PoolBuf::heap(init.to_boxed(len), Some((self.pool_ptr(), core.index())));
            }
        };
        // SAFETY: a block of class >= len bytes, handed to us unused.
        unsafe { init.write(block, len) };
        PoolBuf::block(block, len, core.index(), conn)
    }

    /// The free list was empty: blocks returned the allocator's way, else a fresh block.
    ///
    /// # Safety
    /// As for `alloc_on`.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_miss(&self, core: &Core, class: usize) -> Option<NonNull<u8>> {
        core.owner.stats.misses.add(1);
        if !core.returned.is_empty() {
            // SAFETY: forwarded contract.
            unsafe { core.reclaim() };
            // SAFETY: as above.
            if let Some(block) = unsafe { core.pop_free(class) } {
                return Some(block);
            }
        }
        // SAFETY: forwarded contract.
        unsafe { core.carve(class) }
    }

    /// # Safety
    /// As for `alloc_on`.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_large(&self, core: &Core, len: usize, init: Init<'_>) -> PoolBuf {
        let stats = &core.owner.stats;
        stats.allocs.add(1);
        stats.large_allocs.add(1);
        PoolBuf::heap(init.to_boxed(len), Some((self.pool_ptr(), core.index())))
    }

    #[inline(never)]
    fn pop_global(&self, class: usize) -> Option<NonNull<u8>> {
        let mut global = lock(&self.global);
        let node = global.lists[class].pop()?;
        global.bytes -= crate::SIZE_CLASSES[class];
        drop(global);
        // SAFETY: popped under the lock, so ours; handed out as a block now.
        Some(unsafe { crate::list::Node::into_block(node) })
    }

    /// A handle more (a clone of one the caller holds).
    pub(crate) fn acquire(&self) {
        self.life.handles.fetch_add(1, Ordering::Relaxed);
    }

    /// A handle less; the last one closes the pool (and may free it: `self` may dangle after).
    ///
    /// # Safety
    /// The caller gives up a handle it held, and does not use `self` afterwards.
    pub(crate) unsafe fn release(&self) {
        if self.life.handles.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // The last handle: no thread is a core of this pool any more.
        let before = self.life.state.fetch_or(CLOSED, Ordering::AcqRel);
        if before / IN_FLIGHT == 0 {
            // SAFETY: nothing is in flight, and later foreign frees take the closed path.
            unsafe { self.settle() };
        }
        // Otherwise the last in-flight foreign free settles (see `leave_foreign`).
    }

    /// Starts a free on a thread that is no core of this pool: `true` while the pool is open
    /// (then `leave_foreign` must follow), `false` once closed (then call `closed_free`).
    pub(crate) fn enter_foreign(&self) -> bool {
        let mut state = self.life.state.load(Ordering::Relaxed);
        loop {
            if state & CLOSED != 0 {
                return false;
            }
            match self.life.state.compare_exchange_weak(
                state,
                state + IN_FLIGHT,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
    }

    /// Ends an open-path foreign free (`self` may dangle after).
    ///
    /// # Safety
    /// Paired with an `enter_foreign` that returned `true`; `self` is not used afterwards.
    pub(crate) unsafe fn leave_foreign(&self) {
        // Release: this free's counts and list pushes happen-before the settle that reads them.
        let before = self.life.state.fetch_sub(IN_FLIGHT, Ordering::AcqRel);
        if before == CLOSED | IN_FLIGHT {
            // SAFETY: the pool closed while we were in flight and we were the last one.
            unsafe { self.settle() };
        }
    }

    /// A free on a closed pool: one outstanding buffer less (`self` may dangle after).
    ///
    /// # Safety
    /// The buffer was outstanding and is not touched again; `self` is not used afterwards.
    pub(crate) unsafe fn closed_free(&self) {
        if self.life.late.fetch_sub(1, Ordering::AcqRel) == 1 {
            // SAFETY: `settle` added the outstanding count and every one of them is now freed.
            unsafe { Self::teardown(self.pool_ptr()) };
        }
    }

    /// Counts what is still out, once, after the close.
    ///
    /// # Safety
    /// Called exactly once, after the close, with no foreign free in flight.
    unsafe fn settle(&self) {
        let out = self.snapshot().total().outstanding;
        let out = isize::try_from(out).unwrap_or(isize::MAX);
        if self.life.late.fetch_add(out, Ordering::AcqRel) + out == 0 {
            // SAFETY: nothing is out, no thread is a core, no foreign free is in flight.
            unsafe { Self::teardown(self.pool_ptr()) };
        }
    }

    /// Frees every slab and the pool itself.
    ///
    /// # Safety
    /// Nothing refers to the pool any more: no handle, no buffer, no free in progress.
    unsafe fn teardown(pool: NonNull<Inner>) {
        // SAFETY: the contract: we are the last user; the Box came from `Pool::new`.
        let mut inner = unsafe { Box::from_raw(pool.as_ptr()) };
        #[cfg(krpc_loom)]
        {
            TEARDOWNS.fetch_add(1, Ordering::SeqCst);
            inner.drop_nodes();
        }
        for core in inner.cores.iter_mut() {
            // SAFETY: exclusive (the contract).
            let slabs = core
                .owner
                .slabs
                .with_mut(|s| unsafe { std::mem::take(&mut *s) });
            for slab in slabs {
                // SAFETY: every block of the slab is on some list or was never carved, and
                // nothing will read them again.
                unsafe { slab::free_slab(slab) };
            }
        }
    }

    /// Under loom, nodes carry cells with tracking state: end each node's life before the
    /// memory goes.
    #[cfg(krpc_loom)]
    fn drop_nodes(&mut self) {
        use crate::list::Node;
        let mut nodes = Vec::new();
        for core in self.cores.iter() {
            // SAFETY: exclusive (teardown's contract).
            core.owner.free.with_mut(|f| unsafe {
                for stack in (*f).iter_mut() {
                    nodes.extend(stack.drain_nodes());
                }
            });
            // SAFETY: as above.
            core.owner.outbox.with_mut(|o| unsafe {
                for chain in (*o).iter_mut() {
                    nodes.extend(chain.take_all());
                }
            });
            nodes.extend(core.defer.take_all());
            nodes.extend(core.returned.take_all());
        }
        for chain in lock(&self.global).lists.iter_mut() {
            nodes.extend(chain.take_all());
        }
        for node in nodes {
            // SAFETY: taken off every list, ours.
            unsafe { Node::into_block(node) };
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            cores: self
                .cores
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    read_core(
                        i,
                        &c.owner.stats,
                        &c.shared.stats,
                        c.cached_bytes(),
                        self.cores.iter().map(|c| &c.owner.stats),
                    )
                })
                .collect(),
            unregistered_allocs: self.unregistered_allocs.get(),
        }
    }

    /// The calling thread's core, if it is a core of this pool.
    #[inline(always)]
    pub(crate) fn local_core(&self) -> Option<&Core> {
        let here = current();
        // SAFETY: CURRENT is set only while the thread's CoreHandle lives (it is cleared when
        // the handle drops), so a non-null pointer is a live core of an open pool.
        let here = unsafe { here.as_ref() }?;
        (here.owner.pool == self.pool_ptr()).then_some(here)
    }
}

/// What two back-to-back `Instant::now()` cost here (the least of a few tries).
fn clock_cost_ns() -> u64 {
    (0..16)
        .map(|_| {
            let t = Instant::now();
            u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
        })
        .min()
        .unwrap_or(0)
}

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
    pub fn new(config: Config) -> Self {
        let config = Config {
            cores: config.cores.max(1),
            defer_max: config.defer_max.max(1),
            ..config
        };
        let mut inner = Box::new(Inner {
            cores: (0..config.cores).map(|i| Core::new(i, &config)).collect(),
            config,
            global: Mutex::new(GlobalLists {
                lists: std::array::from_fn(|_| Chain::new()),
                bytes: 0,
            }),
            life: CachePadded::new(Life {
                handles: AtomicUsize::new(1),
                state: AtomicUsize::new(0),
                late: AtomicIsize::new(0),
            }),
            unregistered_allocs: SharedCounter::default(),
            clock_ns: clock_cost_ns(),
        });
        let ptr = NonNull::from(&mut *inner);
        for core in inner.cores.iter_mut() {
            core.owner.pool = ptr;
        }
        Self {
            inner: NonNull::from(Box::leak(inner)),
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
        let inner = self.inner();
        let cores = inner.cores.len();
        let state = inner
            .cores
            .get(core)
            .ok_or(RegisterError::NoSuchCore { core, cores })?;
        if !current().is_null() {
            return Err(RegisterError::ThreadRegistered);
        }
        // Acquire: the previous owner's writes to the owner half happen-before ours.
        state
            .shared
            .owned
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| RegisterError::CoreTaken { core })?;
        CURRENT.with(|c| c.set(state));
        let handle = CoreHandle {
            pool: self.clone(),
            core: NonNull::from(state),
            _not_send: PhantomData,
        };
        // Buffers a previous owner left on the defer list.
        handle.drain();
        Ok(handle)
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

    /// Drains the defer lists of cores that no thread owns any more (buffers handed over while
    /// their owner was leaving). Returns how many buffers it moved.
    pub fn drain_orphans(&self) -> usize {
        let inner = self.inner();
        let mut n = 0;
        for core in inner.cores.iter() {
            let owned = &core.shared.owned;
            if owned
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                if core.defer.len() > 0 {
                    // SAFETY: we hold the core's claim.
                    n += unsafe { inner.drain(core) };
                }
                owned.store(false, Ordering::Release);
            }
        }
        n
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
        // SAFETY: as in `alloc`.
        unsafe { self.pool.inner().drain(self.state()) }
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
        self.drain();
        CURRENT.with(|c| c.set(ptr::null()));
        // Release: our owner-half writes happen-before the next claimer's Acquire. From here
        // on, frees for this core go the allocator's way (its returned list); a hand-over that
        // raced with this store is collected by the next owner, `drain_orphans`, or teardown.
        self.state().shared.owned.store(false, Ordering::Release);
        // `self.pool` is released after this.
    }
}
