//! The pool: its cores, the global list of the `global` strategy, registration, allocation,
//! and the pool's lifetime.
//!
//! **Lifetime without a per-buffer count.** Buffers do not keep the pool alive with an `Arc`;
//! handles do ([`crate::Pool`], [`crate::CoreHandle`], connections), and outstanding buffers do through the
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
    ptr::{self, NonNull},
    task::Waker,
    time::Instant,
};

use crossbeam_utils::CachePadded;

use crate::{
    Config, Strategy,
    buf::PoolBuf,
    class_of,
    core::{CLASSES, Core},
    free::Kicks,
    handle::RegisterError,
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
    /// This allocation, as `Box::into_raw` gave it: every pointer to the pool (cores, slab
    /// headers, teardown) derives from it, never from a `&Inner`.
    this: NonNull<Inner>,
    pub(crate) config: Config,
    /// Bytes the global list may hold (`cap_bytes_per_core` x cores, saturating).
    pub(crate) global_cap: usize,
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
    pub(crate) fn to_boxed(self, len: usize) -> Box<[u8]> {
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
    /// A new pool's state, with one handle counted (the caller's). Every later pointer to it
    /// derives from the one returned.
    pub(crate) fn create(config: Config) -> NonNull<Inner> {
        let inner = Box::new(Inner {
            this: NonNull::dangling(),
            cores: (0..config.cores).map(|i| Core::new(i, &config)).collect(),
            global_cap: config.cap_bytes_per_core.saturating_mul(config.cores),
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
        // SAFETY: `Box::into_raw` never returns null.
        let ptr = unsafe { NonNull::new_unchecked(Box::into_raw(inner)) };
        // SAFETY: the allocation is ours alone until the pool is returned; the writes go
        // through the raw pointer every later pointer derives from.
        unsafe {
            (*ptr.as_ptr()).this = ptr;
            for core in (*ptr.as_ptr()).cores.iter_mut() {
                core.owner.pool = ptr;
            }
        }
        ptr
    }

    /// Makes the calling thread core `core` (see `Pool::register_current_thread`).
    pub(crate) fn claim(&self, core: usize) -> Result<&Core, RegisterError> {
        let cores = self.cores.len();
        let state = self
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
        // The defer list was closed while the core had no owner: hand-overs went to the
        // returned list (reclaimed on this owner's first misses).
        state.defer.open();
        CURRENT.with(|c| c.set(state));
        Ok(state)
    }

    /// Gives core `state` up: the calling thread, which holds its claim, is no core any more.
    /// Returns the core's waker, which the caller drops (user code) after everything else.
    ///
    /// # Safety
    /// The calling thread holds `state`'s claim, and gives it up here.
    pub(crate) unsafe fn release_core(&self, state: &Core, kicks: &mut Kicks) -> Option<Waker> {
        // SAFETY: the contract.
        unsafe { self.leave(state, kicks) };
        let waker = state.take_waker();
        CURRENT.with(|c| c.set(ptr::null()));
        // Release: our owner-half writes happen-before the next claimer's Acquire.
        state.shared.owned.store(false, Ordering::Release);
        waker
    }

    fn pool_ptr(&self) -> NonNull<Inner> {
        self.this
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
        // As `Arc` does: a count this high means clones are being leaked; wrapping would free
        // the pool under its users.
        if self.life.handles.fetch_add(1, Ordering::Relaxed) > isize::MAX as usize {
            std::process::abort();
        }
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
        debug_assert!(out >= 0, "more frees than allocations: {out}");
        let out = isize::try_from(out.max(0)).unwrap_or(isize::MAX);
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
