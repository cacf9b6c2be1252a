//! One core's state, split by who may touch it (the kernel's per-cpu `softnet_data`, split the
//! way tokio splits a run queue into `Local` and `Steal` halves):
//!
//! - [`Owner`]: free lists, slab carving, outgoing batches, counters. Only the thread that
//!   holds the core's claim touches it (the registered thread through its [`crate::CoreHandle`],
//!   or `drain_orphans`/teardown while no thread is registered), so it needs no lock and its
//!   counters are plain stores.
//! - The remote side, each part on a cache line of its own: the defer list (other cores push
//!   batches, the owner drains), the returned list (frees that went the allocator's way,
//!   reclaimed by the owner on a miss), and the claim flag, kick waker and remote counters.

#![allow(unsafe_code)] // one of the pool's fenced unsafe parts (lib.rs)

use std::{
    ptr::{self, NonNull},
    task::Waker,
};

use crossbeam_utils::CachePadded;

use crate::{
    Config, SIZE_CLASSES, Strategy,
    list::{Chain, Node, RemoteList, ReturnList, Stack},
    pool::Inner,
    slab::{self, SlabHeader},
    stats::{OwnerStats, RemoteStats},
    sync::{AtomicBool, Mutex, OwnerCounter, UnsafeCell, lock},
};

pub(crate) const CLASSES: usize = SIZE_CLASSES.len();

/// Where the next fresh block of a class is carved from.
#[derive(Debug)]
pub(crate) struct Carve {
    next: *mut u8,
    end: *mut u8,
}

/// The owner-only half. Read-only fields first; the rest changes only on the owner's thread.
#[derive(Debug)]
pub(crate) struct Owner {
    /// This core's index in the pool.
    pub(crate) index: usize,
    /// The pool (set once, before the pool is shared).
    pub(crate) pool: NonNull<Inner>,
    /// Copies of the pool's configuration, on the owner's own line.
    pub(crate) strategy: Strategy,
    pub(crate) cap: usize,
    pub(crate) defer_max: usize,
    /// Frees collected for one other core before they are handed over.
    pub(crate) batch: usize,
    pub(crate) free: UnsafeCell<[Stack; CLASSES]>,
    /// Blocks on each free list (owner-written; snapshots read them).
    pub(crate) free_len: [OwnerCounter; CLASSES],
    pub(crate) carve: UnsafeCell<[Carve; CLASSES]>,
    /// Frees collected for each other core, handed over a batch at a time.
    pub(crate) outbox: UnsafeCell<Box<[Chain]>>,
    /// Every slab this core carved (given back at teardown).
    pub(crate) slabs: UnsafeCell<Vec<NonNull<SlabHeader>>>,
    /// Frees left before the next timed one, and the generator that draws the gaps.
    pub(crate) sample: UnsafeCell<Sampler>,
    pub(crate) stats: OwnerStats,
}

/// Draws geometric gaps between timed frees (each free timed with probability 1/mean).
#[derive(Debug)]
pub(crate) struct Sampler {
    pub(crate) left: u32,
    rng: u64,
}

impl Sampler {
    fn new(seed: u64) -> Self {
        let mut s = Self {
            left: 0,
            rng: seed | 1,
        };
        s.left = s.gap();
        s
    }

    /// Frees until the next sample: 1 + Geometric(1/FREE_SAMPLE_EVERY).
    pub(crate) fn gap(&mut self) -> u32 {
        // xorshift64*: a few instructions, once per sampled free.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let bits = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        // u in (0, 1]: 53 random bits.
        let u = (bits as f64 + 1.0) / (1u64 << 53) as f64;
        let p = 1.0 / f64::from(crate::FREE_SAMPLE_EVERY);
        let g = (u.ln() / (1.0 - p).ln()).floor();
        1 + (g.min(f64::from(u32::MAX / 2)) as u32)
    }
}

/// The remote half's claim flag and kick waker (its lists have lines of their own).
#[derive(Debug)]
pub(crate) struct Shared {
    /// A thread holds this core (registered, or `drain_orphans`/teardown for a moment).
    pub(crate) owned: AtomicBool,
    /// Woken when another core's batch takes the defer list past half of `defer_max`. Kicks
    /// are rare (one per `defer_max / 2` deferred frees at most), so a mutex is enough.
    pub(crate) waker: Mutex<Option<Waker>>,
    pub(crate) stats: RemoteStats,
}

/// One core of a pool.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) owner: CachePadded<Owner>,
    /// Batches other cores hand back (bounded by `defer_max`, drained at end of batch).
    pub(crate) defer: CachePadded<RemoteList>,
    /// Blocks freed the allocator's way; unbounded, reclaimed on a miss.
    pub(crate) returned: CachePadded<ReturnList>,
    pub(crate) shared: CachePadded<Shared>,
}

impl Core {
    pub(crate) fn new(index: usize, config: &Config) -> Self {
        let cores = config.cores;
        Self {
            owner: CachePadded::new(Owner {
                index,
                pool: NonNull::dangling(),
                strategy: config.strategy,
                cap: config.cap_bytes_per_core,
                defer_max: config.defer_max,
                batch: config.remote_batch(),
                free: UnsafeCell::new(std::array::from_fn(|_| Stack::default())),
                free_len: Default::default(),
                carve: UnsafeCell::new(std::array::from_fn(|_| Carve {
                    next: ptr::null_mut(),
                    end: ptr::null_mut(),
                })),
                outbox: UnsafeCell::new((0..cores).map(|_| Chain::new()).collect()),
                slabs: UnsafeCell::new(Vec::new()),
                sample: UnsafeCell::new(Sampler::new(0x9e37_79b9_7f4a_7c15 ^ index as u64)),
                stats: OwnerStats::new(cores),
            }),
            defer: CachePadded::new(RemoteList::new()),
            returned: CachePadded::new(ReturnList::new()),
            shared: CachePadded::new(Shared {
                owned: AtomicBool::new(false),
                waker: Mutex::new(None),
                stats: RemoteStats::default(),
            }),
        }
    }

    pub(crate) fn index(&self) -> usize {
        self.owner.index
    }

    /// Pops a free block of `class`.
    ///
    /// # Safety
    /// The calling thread holds this core's claim (see the module docs).
    #[inline(always)]
    pub(crate) unsafe fn pop_free(&self, class: usize) -> Option<NonNull<u8>> {
        // SAFETY: owner-only state, and the caller is the owner.
        let node = self.owner.free.with_mut(|f| unsafe { (*f)[class].pop() })?;
        self.owner.free_len[class].sub(1);
        // SAFETY: popped, so ours; it is handed out as a block now.
        Some(unsafe { Node::into_block(node) })
    }

    /// Puts an unused block of `class` on this core's free list.
    ///
    /// # Safety
    /// The calling thread holds this core's claim; `block` is an unused block of `class`.
    #[inline(always)]
    pub(crate) unsafe fn push_free(&self, class: usize, block: NonNull<u8>) {
        // SAFETY: the block is unused (contract), so it may become a node.
        let node = unsafe { Node::write(block) };
        // SAFETY: owner-only state, and the caller is the owner; the node is ours.
        self.owner
            .free
            .with_mut(|f| unsafe { (*f)[class].push(node) });
        self.owner.free_len[class].add(1);
    }

    /// Whether one more block of `class` keeps this core's free lists within the cap. O(1)
    /// while the class holds under its share of the cap (cap / classes), which is the common
    /// case; a full sum over the classes past it.
    pub(crate) fn fits(&self, class: usize) -> bool {
        let size = SIZE_CLASSES[class];
        let cap = self.owner.cap;
        (self.owner.free_len[class].get() as usize + 1) * size <= cap / CLASSES
            || self.cached_bytes() + size <= cap
    }

    /// Bytes on this core's free lists. Any thread may ask (the lengths are owner-written
    /// counters); exact on the owner's thread.
    pub(crate) fn cached_bytes(&self) -> usize {
        self.owner
            .free_len
            .iter()
            .zip(SIZE_CLASSES)
            .map(|(len, size)| len.get() as usize * size)
            .sum()
    }

    /// A fresh block of `class` from this core's slab memory; a new slab when the current one
    /// is used up and `cap` allows. `None`: at the cap (or out of memory).
    ///
    /// # Safety
    /// The calling thread holds this core's claim.
    pub(crate) unsafe fn carve(&self, class: usize) -> Option<NonNull<u8>> {
        let size = SIZE_CLASSES[class];
        // SAFETY: owner-only state, and the caller is the owner.
        let fresh = self.owner.carve.with_mut(|c| unsafe {
            let carve = &mut (*c)[class];
            (carve.next < carve.end).then(|| {
                let block = carve.next;
                carve.next = carve.next.add(size);
                block
            })
        });
        if let Some(block) = fresh {
            return NonNull::new(block);
        }
        let stats = &self.owner.stats;
        if stats.slab_bytes.get() as usize + slab::SLAB_SIZE > self.owner.cap {
            return None;
        }
        let (header, first, end) =
            slab::new_slab(self.owner.pool, NonNull::from(self), self.index(), class)?;
        stats.slab_bytes.add(slab::SLAB_SIZE as u64);
        // SAFETY: owner-only state, and the caller is the owner.
        self.owner.slabs.with_mut(|s| unsafe { (*s).push(header) });
        // SAFETY: as above; `first..end` is the new slab's block range, first < end.
        self.owner.carve.with_mut(|c| unsafe {
            (*c)[class] = Carve {
                next: first.add(size),
                end,
            }
        });
        NonNull::new(first)
    }

    /// Moves the blocks on this core's returned list to its free lists (a miss found its list
    /// empty). Returns how many.
    ///
    /// # Safety
    /// The calling thread holds this core's claim.
    pub(crate) unsafe fn reclaim(&self) -> usize {
        let mut n = 0;
        for node in self.returned.take_all() {
            // SAFETY: taken off the list, so ours; blocks on this core's returned list belong
            // to this core's slabs, whose headers are live.
            unsafe {
                let block = Node::into_block(node);
                let class = slab::header_of(block).class;
                self.push_free(class, block);
            }
            n += 1;
        }
        self.owner.stats.reclaimed.add(n as u64);
        n
    }

    /// Wakes the owner (a kick), if it registered a waker.
    pub(crate) fn kick(&self) {
        self.shared.stats.kicks.add(1);
        let waker = lock(&self.shared.waker).clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Registers the waker a kick wakes.
    pub(crate) fn register_waker(&self, waker: &Waker) {
        let mut slot = lock(&self.shared.waker);
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

#[cfg(all(test, not(krpc_loom)))]
mod tests {
    use super::Sampler;

    /// The gaps are geometric with mean m = FREE_SAMPLE_EVERY (each free sampled
    /// independently with p = 1/m): mean ~m, variance ~(1-p)/p^2 and P(gap = 1) = p, unlike a
    /// fixed or uniform period.
    #[test]
    fn sample_gaps_are_geometric() {
        let m = f64::from(crate::FREE_SAMPLE_EVERY);
        let p = 1.0 / m;
        let mut s = Sampler::new(42);
        let gaps: Vec<f64> = (0..400_000).map(|_| f64::from(s.gap())).collect();
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n;
        let want_var = (1.0 - p) / (p * p);
        assert!((mean - m).abs() < m * 0.02, "mean {mean}");
        assert!((var - want_var).abs() < want_var * 0.05, "variance {var}");
        assert!(gaps.iter().all(|&g| g >= 1.0));
        let ones = gaps.iter().filter(|&&g| g == 1.0).count() as f64 / n;
        assert!((ones - p).abs() < p * 0.15, "P(gap = 1) = {ones}");
    }
}
