//! krpc-pool: a per-core buffer pool whose free path is a choice of four strategies, after Linux
//! commit 68822bdf76 (per-cpu skb free deferral). A buffer remembers the core that allocated it;
//! what happens when it is freed on another core is the strategy. No tokio, no gRPC here.
//!
//! How it is built (each module says more):
//! - `slab`: buffers are blocks carved from 256 KiB slabs, each owned by one core and holding
//!   one size class. A block finds its pool, owning core and class by masking its address down
//!   to the slab's header: no per-buffer pointer, count or `Arc`.
//! - `core`: a core's state is split by who may touch it. The owner half (free lists, slab
//!   carving, outgoing batches, counters as plain stores) is touched only by the thread that
//!   holds the core's claim, through its `!Send` [`CoreHandle`]; the remote half (defer list,
//!   returned list, claim flag and kick waker) sits on cache lines of its own.
//! - `free`: a free on the owning core is a push on its own list. Under `per-core`, a free on
//!   another core goes into that core's outgoing batch for the owner, handed over with one
//!   compare-and-swap per batch (`list`: the head word packs pointer and length, so the
//!   `defer_max` bound costs nothing extra); the owner drains at its end of batch, is kicked at
//!   half of `defer_max`, and past it the freer sends the rest the allocator's way (the owner's
//!   returned list, reclaimed on a miss). Only the per-core free of a block on its own core is
//!   inlined into a drop; `drain` holds the end of batch and the connections' drains.
//! - `pool`: the pool lives while a handle lives or a buffer is out, without a shared
//!   reference count on the hot path (see its module docs); `handle`: [`Pool`] and
//!   [`CoreHandle`], the two ways in.
//!
//! Unsafe code is needed for raw memory (slabs, intrusive list nodes inside free blocks,
//! owner-only state behind a claim) and the lock-free lists. It is fenced in those modules,
//! each block with its SAFETY argument; every atomic goes through `sync`, so loom
//! (`--cfg krpc_loom`, the `loom_models` tests) checks the protocols on the real code.

#![deny(unsafe_op_in_unsafe_fn)]

mod buf;
mod conn;
mod core;
mod drain;
mod free;
mod handle;
mod list;
#[cfg(all(test, krpc_loom))]
mod loom_models;
mod pool;
mod slab;
mod stats;
mod sync;

use std::{fmt, str::FromStr};

pub use buf::PoolBuf;
pub use conn::ConnHandle;
pub use handle::{CoreHandle, Pool, RegisterError};
pub use slab::SLAB_SIZE;
pub use stats::{
    CoreStats, DRAIN_BUCKETS, FREE_NS_BUCKETS, FREE_SAMPLE_EVERY, Snapshot, free_ns_bound,
};

/// Size classes (bytes): powers of two from 64 B to 64 KiB, so a buffer wastes less than half
/// its block (and blocks of the smallest class are one cache line each). Requests above the
/// last one go to the allocator.
pub const SIZE_CLASSES: [usize; 11] = {
    let mut sizes = [0; 11];
    let mut i = 0;
    while i < sizes.len() {
        sizes[i] = 64 << i;
        i += 1;
    }
    sizes
};

/// What a free does (DESIGN.md, "Data path", step 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// One free list shared by all cores, under a lock.
    Global,
    /// The freeing core's own list (no deferral): free where consumed.
    Local,
    /// The connection's defer list, drained when it next receives or closes.
    PerConn,
    /// Same core: the local list. Other core: the origin core's lock-free defer list.
    PerCore,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [Self::Global, Self::Local, Self::PerConn, Self::PerCore];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Local => "local",
            Self::PerConn => "per-conn",
            Self::PerCore => "per-core",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown strategy {s:?} (expected global, local, per-conn or per-core)")
            })
    }
}

/// How a pool is built.
#[derive(Clone, Debug)]
pub struct Config {
    pub strategy: Strategy,
    /// Number of cores (owners of a free list and a defer list each).
    pub cores: usize,
    /// A defer list holds at most this many buffers; past half of it the freer wakes the owner.
    /// Default 64, as the kernel's `net.core.skb_defer_max`.
    pub defer_max: usize,
    /// Bytes of slab memory a core may carve, and bytes its free lists may hold (the global
    /// list: this times `cores`). Past the first, allocations fall back to the heap (counted);
    /// past the second, frees go the allocator's way (counted). Memory pinned on connections'
    /// defer lists is slab memory, so it counts against this too.
    pub cap_bytes_per_core: usize,
}

impl Config {
    pub fn new(strategy: Strategy, cores: usize) -> Self {
        Self {
            strategy,
            cores,
            defer_max: 64,
            cap_bytes_per_core: 4 << 20,
        }
    }
}

impl Config {
    /// Frees a core collects for one other core before handing them over in one batch:
    /// `defer_max / 4`, from 1 to 32, so a batch never takes a defer list from empty past the
    /// kick point at once, and a core finishing its batch hands over what it holds anyway.
    pub fn remote_batch(&self) -> usize {
        (self.defer_max / 4).clamp(1, 32)
    }
}

/// Index of the size class for `len` bytes, `None` above the largest.
#[inline(always)]
pub(crate) fn class_of(len: usize) -> Option<usize> {
    // ceil(log2(len)) - 6, with everything up to 64 bytes in class 0.
    let class = if len <= 64 {
        0
    } else {
        (usize::BITS - (len - 1).leading_zeros()) as usize - 6
    };
    (class < SIZE_CLASSES.len()).then_some(class)
}

#[cfg(all(test, not(krpc_loom)))]
mod tests {
    use super::*;

    #[test]
    fn classes_and_strategy_names() {
        assert_eq!(SIZE_CLASSES[0], 64);
        assert_eq!(SIZE_CLASSES[10], 64 * 1024);
        for len in 0..=70_000 {
            let want = SIZE_CLASSES.iter().position(|&size| len <= size);
            assert_eq!(class_of(len), want, "{len}");
            if let Some(c) = want.filter(|_| len > 64) {
                assert!(
                    len * 2 > SIZE_CLASSES[c],
                    "{len} wastes more than half its block"
                );
            }
        }
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
        }
        assert!("lifo".parse::<Strategy>().unwrap_err().contains("per-core"));
    }
}
