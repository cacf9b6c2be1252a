//! krpc-pool: a per-core buffer pool whose free path is a choice of four strategies, after Linux
//! commit 68822bdf76 (per-cpu skb free deferral). A buffer remembers the core that allocated it;
//! what happens when it is freed on another core is the strategy. No tokio, no gRPC here.
//!
//! Unsafe code is needed for two things, both fenced in their modules: raw size-class blocks
//! (`buf`, `pool`: allocation, the intrusive defer node written into a free block, owner-only
//! free lists) and the lock-free defer list (`defer`, model-checked with loom).

#![deny(unsafe_op_in_unsafe_fn)]

mod buf;
mod conn;
mod defer;
mod pool;
mod stats;
mod sync;

use std::{fmt, str::FromStr};

pub use buf::PoolBuf;
pub use conn::ConnHandle;
pub use pool::{CoreHandle, Pool, RegisterError};
pub use stats::{
    CoreStats, DRAIN_BUCKETS, FREE_NS_BUCKETS, FREE_SAMPLE_EVERY, Snapshot, free_ns_bound,
};

/// Size classes (bytes). Requests above the last one go to the allocator.
pub const SIZE_CLASSES: [usize; 5] = [256, 1024, 4096, 16 * 1024, 64 * 1024];

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
    /// Bytes a core's free lists may hold (the global list: this times `cores`); beyond it,
    /// frees go back to the allocator.
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

/// Index of the size class for `len` bytes, `None` above the largest.
pub(crate) fn class_of(len: usize) -> Option<usize> {
    SIZE_CLASSES.iter().position(|&size| len <= size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_strategy_names() {
        assert_eq!(class_of(0), Some(0));
        assert_eq!(class_of(256), Some(0));
        assert_eq!(class_of(257), Some(1));
        assert_eq!(class_of(64 * 1024), Some(4));
        assert_eq!(class_of(64 * 1024 + 1), None);
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
        }
        assert!("lifo".parse::<Strategy>().unwrap_err().contains("per-core"));
    }
}
