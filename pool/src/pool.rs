//! The pool: per-core free lists (touched only by the core's owner thread), per-core defer lists
//! (pushed by anyone, drained by the owner), a global locked list for the `global` strategy.

#![allow(unsafe_code)] // this module is one of the pool's fenced unsafe parts (lib.rs)

use std::{
    alloc::{self, Layout},
    cell::{Cell, UnsafeCell as StdUnsafeCell},
    marker::PhantomData,
    ptr::{self, NonNull},
    sync::{
        Arc, Mutex,
        atomic::{
            AtomicBool, AtomicU64, AtomicUsize,
            Ordering::{Acquire, Relaxed, Release},
        },
    },
    task::Waker,
};

use atomic_waker::AtomicWaker;
use crossbeam_utils::CachePadded;

use crate::{
    Config, SIZE_CLASSES, Strategy,
    buf::PoolBuf,
    class_of,
    conn::ConnShared,
    defer::{DeferList, Node, Pushed},
    stats::{Counters, FREE_SAMPLE_EVERY, Snapshot, Tally},
};

const CLASSES: usize = SIZE_CLASSES.len();
/// Blocks are cache-line aligned: two cores never share a line through neighbouring buffers.
const ALIGN: usize = 64;

// The defer node is written into the free block itself.
const _: () = assert!(std::mem::size_of::<Node>() <= SIZE_CLASSES[0]);

type Lists = [Vec<NonNull<u8>>; CLASSES];

fn layout(class: usize) -> Layout {
    // Sizes are small powers of two and ALIGN is a power of two: always a valid layout.
    Layout::from_size_align(SIZE_CLASSES[class], ALIGN).expect("size classes form valid layouts")
}

fn new_block(class: usize) -> NonNull<u8> {
    let layout = layout(class);
    // SAFETY: the layout has a non-zero size. The bytes are uninitialised: `Shared::alloc`
    // initialises the ones it hands out (zeroes or a copy) before any read.
    let ptr = unsafe { alloc::alloc(layout) };
    NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout))
}

/// # Safety
/// `ptr` came from `new_block(class)` and is not used afterwards.
unsafe fn free_block(ptr: NonNull<u8>, class: usize) {
    // SAFETY: per the contract, allocated with this layout and now unused.
    unsafe { alloc::dealloc(ptr.as_ptr(), layout(class)) }
}

struct CoreState {
    /// A thread has registered as this core (or `drain_orphans` holds it for a moment).
    owned: AtomicBool,
    /// Free lists. Only the owner touches them (see `CoreHandle`), so they need no lock.
    lists: StdUnsafeCell<Lists>,
    defer: DeferList,
    waker: AtomicWaker,
    stats: Counters,
}

struct GlobalLists {
    lists: Lists,
    bytes: usize,
}

pub(crate) struct Shared {
    id: usize,
    pub(crate) config: Config,
    cores: Box<[CachePadded<CoreState>]>,
    global: Mutex<GlobalLists>,
    unregistered_allocs: AtomicU64,
}

// SAFETY: the raw blocks in `lists` are owned by the pool; a core's lists are only touched by
// the thread that holds that core's `owned` flag, the global lists only under their mutex.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// (pool id, core) this thread is registered as; pool id 0 = none.
    static CURRENT: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// Frees on this thread since the last timed one (see `FREE_SAMPLE_EVERY`).
    static FREES_UNTIMED: Cell<u32> = const { Cell::new(0) };
}

impl Shared {
    fn current_core(&self) -> Option<usize> {
        let (id, core) = CURRENT.get();
        (id == self.id).then_some(core)
    }

    fn stats(&self, core: usize) -> &Counters {
        &self.cores[core].stats
    }

    /// Where to count an event of `core` from this thread (`here`: its registered core).
    fn tally(&self, core: usize, here: Option<usize>) -> Tally<'_> {
        self.stats(core).tally(here == Some(core))
    }

    /// A buffer of `len` bytes, initialised by `init`.
    pub(crate) fn alloc(
        self: &Arc<Self>,
        len: usize,
        init: Init<'_>,
        conn: Option<Arc<ConnShared>>,
    ) -> PoolBuf {
        debug_assert!(matches!(init, Init::Zero) || init.len() == len);
        let Some(core) = self.current_core() else {
            self.unregistered_allocs.fetch_add(1, Relaxed);
            return PoolBuf::heap(init.to_boxed(len), None);
        };
        let stats = self.tally(core, Some(core));
        stats.bump(|s| &s.allocs);
        let Some(class) = class_of(len) else {
            stats.bump(|s| &s.large_allocs);
            return PoolBuf::heap(init.to_boxed(len), Some((self.clone(), core)));
        };
        let size = SIZE_CLASSES[class] as i64;
        let cached = match self.config.strategy {
            Strategy::Global => {
                let mut global = self.global.lock().unwrap_or_else(|e| e.into_inner());
                let block = global.lists[class].pop();
                if block.is_some() {
                    global.bytes -= SIZE_CLASSES[class];
                }
                block
            }
            _ => {
                // SAFETY: `core` is this thread's registered core: it owns these lists.
                let lists = unsafe { self.lists_of_owner(core) };
                lists[class].pop()
            }
        };
        let block = match cached {
            Some(block) => {
                stats.bump(|s| &s.hits);
                stats.bytes(-size);
                block
            }
            None => {
                stats.bump(|s| &s.misses);
                new_block(class)
            }
        };
        // SAFETY: the block holds at least SIZE_CLASSES[class] >= len bytes and is ours; after
        // this every byte the buffer exposes is initialised (reused blocks may hold
        // uninitialised bytes past an earlier, shorter copy, so they are set here too).
        unsafe {
            match init {
                Init::Zero => ptr::write_bytes(block.as_ptr(), 0, len),
                Init::Copy(data) => ptr::copy_nonoverlapping(data.as_ptr(), block.as_ptr(), len),
            }
        }
        PoolBuf::block(block, len, class, core, self.clone(), conn)
    }

    /// # Safety
    /// The calling thread owns `core` (registered as it, or holds its `owned` claim), and no
    /// other reference to the lists is alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn lists_of_owner(&self, core: usize) -> &mut Lists {
        // SAFETY: per the contract, this thread is the only one touching these lists.
        unsafe { &mut *self.cores[core].lists.get() }
    }

    /// Puts a block on `core`'s free list if the memory cap allows; false when it does not.
    ///
    /// # Safety
    /// As for `lists_of_owner`; `block` is an unused block of `class`.
    unsafe fn cache_on(&self, core: usize, block: NonNull<u8>, class: usize) -> bool {
        let stats = self.stats(core);
        let size = SIZE_CLASSES[class] as i64;
        // Owner-written, plus whatever the global strategy's off-core frees added remotely.
        let cached =
            stats.owned.bytes_cached.load(Relaxed) + stats.remote.bytes_cached.load(Relaxed);
        if cached + size > self.config.cap_bytes_per_core as i64 {
            return false;
        }
        // SAFETY: forwarded contract.
        let lists = unsafe { self.lists_of_owner(core) };
        lists[class].push(block);
        stats.tally(true).bytes(size);
        true
    }

    /// The free path of a pooled block: the strategy. One free in `FREE_SAMPLE_EVERY` per
    /// thread is timed (two clock reads), so the histogram costs well under a nanosecond a free.
    ///
    /// # Safety
    /// `block` is a block of `class` handed out with `origin` as origin core, now unused.
    pub(crate) unsafe fn free(
        &self,
        block: NonNull<u8>,
        class: usize,
        origin: usize,
        conn: Option<&ConnShared>,
    ) {
        let here = self.current_core();
        let untimed = FREES_UNTIMED.get();
        if untimed + 1 < FREE_SAMPLE_EVERY {
            FREES_UNTIMED.set(untimed + 1);
            // SAFETY: forwarded contract.
            return unsafe { self.free_strategy(block, class, origin, conn, here) };
        }
        FREES_UNTIMED.set(0);
        let start = std::time::Instant::now();
        // SAFETY: forwarded contract.
        unsafe { self.free_strategy(block, class, origin, conn, here) };
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.tally(here.unwrap_or(origin), here).free_sample(ns);
    }

    /// # Safety
    /// As for `free`; `here` is the calling thread's core.
    unsafe fn free_strategy(
        &self,
        block: NonNull<u8>,
        class: usize,
        origin: usize,
        conn: Option<&ConnShared>,
        here: Option<usize>,
    ) {
        self.tally(origin, here).bump(|s| &s.origin_frees);
        let counted = here.unwrap_or(origin);
        match (self.config.strategy, here, conn) {
            (Strategy::Global, _, _) => {
                let size = SIZE_CLASSES[class];
                let cap = self.config.cap_bytes_per_core * self.cores.len();
                let mut global = self.global.lock().unwrap_or_else(|e| e.into_inner());
                if global.bytes + size <= cap {
                    global.lists[class].push(block);
                    global.bytes += size;
                    drop(global);
                    let stats = self.tally(counted, here);
                    stats.bump(|s| &s.local_frees);
                    stats.bytes(size as i64);
                } else {
                    drop(global);
                    // SAFETY: the block is unused (contract).
                    unsafe { self.overflow(block, class, counted, here) };
                }
            }
            (Strategy::PerConn, _, Some(conn)) if !conn.closed() => {
                let node = write_node(block, class);
                // SAFETY: the node was just written into our unused block.
                match unsafe { conn.defer.try_push(node, self.config.defer_max) } {
                    Pushed::Queued { .. } => self.tally(counted, here).bump(|s| &s.deferred_frees),
                    // SAFETY: refused, so the node is still ours.
                    Pushed::Full => unsafe { self.overflow(take_node(node), class, counted, here) },
                }
            }
            (Strategy::PerCore, Some(core), _) if core != origin => {
                // SAFETY: forwarded contract.
                unsafe { self.defer_to(origin, block, class, here) }
            }
            (Strategy::PerCore, None, _) => {
                // SAFETY: forwarded contract.
                unsafe { self.defer_to(origin, block, class, here) }
            }
            // Local, per-conn without a live connection, per-core on the origin core: the
            // freeing core's own list.
            (_, Some(core), _) => {
                // SAFETY: `core` is this thread's registered core.
                if unsafe { self.cache_on(core, block, class) } {
                    self.tally(core, here).bump(|s| &s.local_frees);
                } else {
                    // SAFETY: not cached, still ours.
                    unsafe { self.overflow(block, class, core, here) };
                }
            }
            // A thread that is no core of this pool has no list to keep it on.
            (_, None, _) => {
                // SAFETY: forwarded contract.
                unsafe { self.overflow(block, class, counted, here) }
            }
        }
    }

    /// # Safety
    /// `block` is an unused block of `class`.
    unsafe fn overflow(
        &self,
        block: NonNull<u8>,
        class: usize,
        counted: usize,
        here: Option<usize>,
    ) {
        // SAFETY: forwarded contract.
        unsafe { free_block(block, class) };
        self.tally(counted, here).bump(|s| &s.overflow_frees);
    }

    /// A free on another core than the origin: push on the origin's defer list.
    ///
    /// # Safety
    /// `block` is an unused block of `class` with `origin` as origin core.
    unsafe fn defer_to(
        &self,
        origin: usize,
        block: NonNull<u8>,
        class: usize,
        here: Option<usize>,
    ) {
        let counted = here.unwrap_or(origin);
        let target = &self.cores[origin];
        if !target.owned.load(Acquire) {
            // Nobody would drain it: the origin's thread is gone.
            // SAFETY: forwarded contract.
            return unsafe { self.overflow(block, class, counted, here) };
        }
        let node = write_node(block, class);
        // SAFETY: the node was just written into our unused block.
        match unsafe { target.defer.try_push(node, self.config.defer_max) } {
            Pushed::Queued { len } => {
                self.tally(counted, here).bump(|s| &s.deferred_frees);
                // Kick once, when the list crosses half full (the kernel sends its IPI there).
                if len == (self.config.defer_max / 2).max(1) {
                    target.stats.tally(false).bump(|s| &s.kicks);
                    target.waker.wake();
                }
            }
            // Past defer_max the freer frees it itself.
            // SAFETY: refused, so the node is still ours.
            Pushed::Full => unsafe { self.overflow(take_node(node), class, counted, here) },
        }
    }

    /// Moves `core`'s deferred buffers to its free lists. Returns how many.
    ///
    /// # Safety
    /// The calling thread owns `core` (as for `lists_of_owner`).
    unsafe fn drain_core(&self, core: usize) -> usize {
        // The owner (or the holder of the core's claim) drains: owner-side counters.
        let stats = self.stats(core).tally(true);
        // SAFETY: forwarded contract.
        unsafe { self.drain_list(&self.cores[core].defer, Some(core), stats) }
    }

    /// Drains deferred buffers of a connection into the calling thread's core (or frees them).
    pub(crate) fn drain_conn(&self, list: &DeferList, conn_core: usize) -> usize {
        let here = self.current_core();
        let stats = self.tally(here.unwrap_or(conn_core), here);
        // SAFETY: `here` is this thread's registered core, if any: it owns that core's lists.
        unsafe { self.drain_list(list, here, stats) }
    }

    /// Takes everything off `list` and caches it on `into` (to the allocator when the cap is
    /// reached or there is no core), counting the batch in `stats`.
    ///
    /// # Safety
    /// When `into` is `Some(core)`, the calling thread owns `core` (as for `lists_of_owner`).
    unsafe fn drain_list(&self, list: &DeferList, into: Option<usize>, stats: Tally<'_>) -> usize {
        let mut n = 0;
        for (node, class) in list.take_all() {
            let block = take_node(node);
            n += 1;
            let cached = match into {
                // SAFETY: we own `core` (contract) and the block (taken off the list).
                Some(core) => unsafe { self.cache_on(core, block, class) },
                None => false,
            };
            if !cached {
                // SAFETY: not cached, still ours.
                unsafe { free_block(block, class) };
                stats.bump(|s| &s.drain_trimmed);
            }
        }
        stats.add(|s| &s.drained, n as u64);
        stats.bump(|s| &s.drain_calls);
        stats.drain_batch(n);
        n
    }

    pub(crate) fn count_heap_free(&self, origin: usize) {
        let here = self.current_core();
        self.tally(origin, here).bump(|s| &s.origin_frees);
        self.tally(here.unwrap_or(origin), here)
            .bump(|s| &s.overflow_frees);
    }
}

/// How a new buffer's bytes are initialised.
#[derive(Clone, Copy)]
pub(crate) enum Init<'a> {
    Zero,
    Copy(&'a [u8]),
}

impl Init<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Zero => 0,
            Self::Copy(data) => data.len(),
        }
    }

    fn to_boxed(self, len: usize) -> Box<[u8]> {
        match self {
            Self::Zero => vec![0; len].into_boxed_slice(),
            Self::Copy(data) => data.into(),
        }
    }
}

/// Writes a defer node at the start of an unused block.
fn write_node(block: NonNull<u8>, class: usize) -> NonNull<Node> {
    let node = block.cast::<Node>();
    // SAFETY: the block is unused, at least SIZE_CLASSES[0] bytes (checked above to hold a
    // Node) and ALIGN-aligned (more than Node needs).
    unsafe { node.as_ptr().write(Node::new(class)) };
    node
}

/// Ends a defer node's life (loom's cells own tracking state) and gives back its block.
fn take_node(node: NonNull<Node>) -> NonNull<u8> {
    // SAFETY: callers own the node (refused by a push, or taken off a list), written by
    // `write_node`, and do not use it as a node again.
    unsafe { ptr::drop_in_place(node.as_ptr()) };
    node.cast()
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Last reference: no buffer, handle or connection is left, so everything here is ours.
        for (core, state) in self.cores.iter().enumerate() {
            for (node, class) in state.defer.take_all() {
                // SAFETY: taken off the list, ours.
                unsafe { free_block(take_node(node), class) };
            }
            // SAFETY: no other thread can reach the pool any more.
            let lists = unsafe { self.lists_of_owner(core) };
            free_lists(lists);
        }
        let global = self.global.get_mut().unwrap_or_else(|e| e.into_inner());
        free_lists(&mut global.lists);
    }
}

fn free_lists(lists: &mut Lists) {
    for (class, list) in lists.iter_mut().enumerate() {
        for block in list.drain(..) {
            // SAFETY: blocks on a free list are unused blocks of that class.
            unsafe { free_block(block, class) };
        }
    }
}

/// A buffer pool. Cheap to clone (all clones are the same pool).
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.shared.config)
            .finish()
    }
}

/// Why a thread could not become a core of the pool.
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// The core index is not below the pool's core count.
    NoSuchCore { core: usize, cores: usize },
    /// Another thread is this core.
    CoreTaken { core: usize },
    /// This thread already is a core (of this or another pool).
    ThreadRegistered,
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSuchCore { core, cores } => {
                write!(f, "core {core} out of range (pool has {cores})")
            }
            Self::CoreTaken { core } => {
                write!(f, "core {core} is already registered by another thread")
            }
            Self::ThreadRegistered => {
                f.write_str("this thread is already registered as a pool core")
            }
        }
    }
}

impl std::error::Error for RegisterError {}

impl Pool {
    pub fn new(config: Config) -> Self {
        let cores = config.cores.max(1);
        let shared = Shared {
            id: NEXT_POOL_ID.fetch_add(1, Relaxed),
            config: Config { cores, ..config },
            cores: (0..cores)
                .map(|_| {
                    CachePadded::new(CoreState {
                        owned: AtomicBool::new(false),
                        lists: StdUnsafeCell::new(Default::default()),
                        defer: DeferList::new(),
                        waker: AtomicWaker::new(),
                        stats: Counters::default(),
                    })
                })
                .collect(),
            global: Mutex::new(GlobalLists {
                lists: Default::default(),
                bytes: 0,
            }),
            unregistered_allocs: AtomicU64::new(0),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Makes the calling thread core `core` of this pool until the handle is dropped.
    pub fn register_current_thread(&self, core: usize) -> Result<CoreHandle, RegisterError> {
        let cores = self.shared.cores.len();
        if core >= cores {
            return Err(RegisterError::NoSuchCore { core, cores });
        }
        if CURRENT.get().0 != 0 {
            return Err(RegisterError::ThreadRegistered);
        }
        self.shared.cores[core]
            .owned
            .compare_exchange(false, true, Acquire, Relaxed)
            .map_err(|_| RegisterError::CoreTaken { core })?;
        CURRENT.set((self.shared.id, core));
        let handle = CoreHandle {
            shared: self.shared.clone(),
            core,
            _not_send: PhantomData,
        };
        // Buffers a previous owner left on the defer list.
        handle.drain();
        Ok(handle)
    }

    /// A buffer of `len` bytes from the calling thread's core (its free list, else the
    /// allocator). On a thread that is no core of this pool, a plain heap buffer.
    pub fn alloc(&self, len: usize) -> PoolBuf {
        self.shared.alloc(len, Init::Zero, None)
    }

    /// A buffer holding a copy of `data` (one copy: the block is not zeroed first).
    pub fn alloc_copy(&self, data: &[u8]) -> PoolBuf {
        self.shared.alloc(data.len(), Init::Copy(data), None)
    }

    /// A connection's handle, for the `per-conn` strategy (other strategies ignore it).
    pub fn conn(&self) -> crate::ConnHandle {
        let core = self.shared.current_core().unwrap_or(0);
        crate::ConnHandle::new(self.shared.clone(), core)
    }

    /// Drains the defer lists of cores that no thread owns any more (buffers pushed while their
    /// owner was leaving). Returns how many buffers it moved.
    pub fn drain_orphans(&self) -> usize {
        let mut n = 0;
        for (core, state) in self.shared.cores.iter().enumerate() {
            if state
                .owned
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
            {
                if state.defer.len() > 0 {
                    // SAFETY: we hold the core's claim, so no thread owns its lists.
                    n += unsafe { self.shared.drain_core(core) };
                }
                state.owned.store(false, Release);
            }
        }
        n
    }

    /// Every core's counters.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            cores: self
                .shared
                .cores
                .iter()
                .map(|c| c.stats.snapshot())
                .collect(),
            unregistered_allocs: self.shared.unregistered_allocs.load(Relaxed),
        }
    }
}

/// Proof that the calling thread is core `core` of a pool: the owner side of the core's lists
/// (the remote side is any `PoolBuf` drop). Not `Send`: it is the thread's identity.
pub struct CoreHandle {
    shared: Arc<Shared>,
    core: usize,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for CoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreHandle")
            .field("core", &self.core)
            .finish()
    }
}

impl CoreHandle {
    pub fn core(&self) -> usize {
        self.core
    }

    /// End of batch: moves buffers other cores freed for this core onto its free lists. A
    /// runtime calls it when it runs out of ready work (tokio: the park hook).
    pub fn drain(&self) -> usize {
        // SAFETY: this handle exists only on the thread registered as `core`.
        unsafe { self.shared.drain_core(self.core) }
    }

    /// Buffers waiting on this core's defer list.
    pub fn pending(&self) -> usize {
        self.shared.cores[self.core].defer.len()
    }

    /// Wakes `waker` when another core's free fills this core's defer list to half.
    pub fn register_waker(&self, waker: &Waker) {
        self.shared.cores[self.core].waker.register(waker);
    }
}

impl Drop for CoreHandle {
    fn drop(&mut self) {
        self.drain();
        CURRENT.set((0, 0));
        // From here on, frees for this core go to the allocator (nobody would drain them);
        // a push racing with this store is picked up by the next owner or `drain_orphans`.
        self.shared.cores[self.core].owned.store(false, Release);
    }
}
