//! Exact per-core counters. A core's own events are counted in its owner memory with plain
//! stores ([`OwnerCounter`]); the few events other threads count for it (kicks it received,
//! frees done on threads that are no core) go to a separate, cache-padded set with `fetch_add`.
//! A snapshot adds the two up; it is exact once the threads are quiet.

use crate::sync::{OwnerCounter, SharedCounter};

/// Drain batch-size buckets: 0, 1, 2-3, 4-7, ... 64-127, 128 and more.
pub const DRAIN_BUCKETS: usize = 9;

/// Free-path duration buckets (sampled frees): upper bounds 2^4 ns (16 ns) up to 2^19 ns
/// (524 µs), and one for anything longer.
pub const FREE_NS_BUCKETS: usize = 17;

/// Upper bound in nanoseconds of free-duration bucket `i` (`None`: the overflow bucket).
pub fn free_ns_bound(i: usize) -> Option<u64> {
    (i + 1 < FREE_NS_BUCKETS).then(|| 1u64 << (i + 4))
}

/// On average one free in this many is timed: each free on a core is sampled independently
/// with probability 1/`FREE_SAMPLE_EVERY` (geometric gaps between samples), so the sampled
/// durations are an unbiased sample of all frees, whatever rhythm the workload has.
pub const FREE_SAMPLE_EVERY: u32 = 256;

/// What a core counts itself, in its owner memory.
#[derive(Debug, Default)]
pub(crate) struct OwnerStats {
    pub(crate) allocs: OwnerCounter,
    pub(crate) misses: OwnerCounter,
    pub(crate) large_allocs: OwnerCounter,
    pub(crate) fallback_allocs: OwnerCounter,
    pub(crate) reclaimed: OwnerCounter,
    pub(crate) local_frees: OwnerCounter,
    pub(crate) deferred_frees: OwnerCounter,
    pub(crate) overflow_frees: OwnerCounter,
    pub(crate) drained: OwnerCounter,
    pub(crate) drain_trimmed: OwnerCounter,
    pub(crate) drain_calls: OwnerCounter,
    pub(crate) drain_batches: [OwnerCounter; DRAIN_BUCKETS],
    /// Frees of buffers this core allocated, done on this core by the fast path (the other
    /// frees are counted by origin in `freed_for`, and by kind).
    pub(crate) own_frees: OwnerCounter,
    pub(crate) slab_bytes: OwnerCounter,
    /// Buffers in this core's outgoing batches, not yet handed over.
    pub(crate) outbox: OwnerCounter,
    pub(crate) free_ns_buckets: [OwnerCounter; FREE_NS_BUCKETS],
    pub(crate) free_ns_sum: OwnerCounter,
    pub(crate) drain_ns: OwnerCounter,
    /// Frees this core did, by the core that allocated the buffer (for `outstanding`).
    pub(crate) freed_for: Box<[OwnerCounter]>,
}

impl OwnerStats {
    pub(crate) fn new(cores: usize) -> Self {
        Self {
            freed_for: (0..cores).map(|_| OwnerCounter::default()).collect(),
            ..Self::default()
        }
    }

    pub(crate) fn drain_batch(&self, n: usize) {
        self.drain_batches[drain_bucket(n)].add(1);
    }

    /// One timed free of `ns` nanoseconds.
    pub(crate) fn free_sample(&self, ns: u64) {
        let bucket = (0..FREE_NS_BUCKETS)
            .find(|&i| free_ns_bound(i).is_none_or(|b| ns <= b))
            .unwrap_or(FREE_NS_BUCKETS - 1);
        self.free_ns_buckets[bucket].add(1);
        self.free_ns_sum.add(ns);
    }
}

/// What other threads count for a core (`fetch_add`, off the hot paths).
#[derive(Debug, Default)]
pub(crate) struct RemoteStats {
    pub(crate) kicks: SharedCounter,
    /// Frees of this core's buffers done on threads that are no core of the pool, by kind.
    pub(crate) local_frees: SharedCounter,
    pub(crate) deferred_frees: SharedCounter,
    pub(crate) overflow_frees: SharedCounter,
    pub(crate) origin_frees: SharedCounter,
    /// Drains of a connection's list on threads that are no core.
    pub(crate) drained: SharedCounter,
    pub(crate) drain_trimmed: SharedCounter,
    pub(crate) drain_calls: SharedCounter,
}

/// Bucket of a drain batch of `n` buffers.
pub(crate) fn drain_bucket(n: usize) -> usize {
    match n {
        0 => 0,
        n => (usize::BITS - n.leading_zeros()).min(DRAIN_BUCKETS as u32 - 1) as usize,
    }
}

/// One core's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Buffers handed out with this core as origin (pooled and large).
    pub allocs: u64,
    /// Allocations served from a free list at once.
    pub hits: u64,
    /// Allocations that found the free list empty: served from blocks returned through the
    /// allocator path, a fresh block of a slab, or (slab memory at its cap) the heap.
    pub misses: u64,
    /// Requests over the largest size class, served by the allocator.
    pub large_allocs: u64,
    /// Misses served by the heap because the core's slab memory is at its cap.
    pub fallback_allocs: u64,
    /// Blocks taken back, on a miss, from the core's returned list (frees that went the
    /// allocator's way: defer list full, memory cap, no owner).
    pub reclaimed: u64,
    /// Frees that went straight onto a free list (this core's, or the global one).
    pub local_frees: u64,
    /// Frees handed to a defer list (another core's, or the connection's) for later draining.
    pub deferred_frees: u64,
    /// Frees that went the allocator's way: onto the owning core's returned list (defer list
    /// full, memory cap, no owner left) or, for heap buffers, to the allocator itself.
    pub overflow_frees: u64,
    /// Deferred buffers taken off a defer list by a drain.
    pub drained: u64,
    /// Of those, passed on to the allocator path because the free list was at its memory cap.
    pub drain_trimmed: u64,
    /// Drain calls, empty ones included.
    pub drain_calls: u64,
    /// Drain batch sizes: 0, 1, 2-3, 4-7, ..., 64-127, 128+.
    pub drain_batches: [u64; DRAIN_BUCKETS],
    /// Wake-ups sent to this core because its defer list reached `defer_max / 2`.
    pub kicks: u64,
    /// Bytes held in this core's free lists.
    pub bytes_cached: i64,
    /// Bytes of slab memory this core has carved (bounded by the cap).
    pub slab_bytes: u64,
    /// Timed frees by duration, counted on the freeing core: bucket `i` holds frees of at most
    /// [`free_ns_bound`]`(i)` ns. Each free is timed with probability 1/[`FREE_SAMPLE_EVERY`].
    pub free_ns_buckets: [u64; FREE_NS_BUCKETS],
    /// Sum of the timed frees' durations, nanoseconds (the clock's own cost subtracted).
    pub free_ns_sum: u64,
    /// Time spent in drains that moved buffers or handed batches over, nanoseconds (every such
    /// drain is timed).
    pub drain_ns: u64,
    /// Buffers allocated on this core and not yet freed.
    pub outstanding: i64,
}

impl CoreStats {
    /// Frees this core did (all kinds).
    pub fn frees(&self) -> u64 {
        self.local_frees + self.deferred_frees + self.overflow_frees
    }

    /// Frees that were timed.
    pub fn free_samples(&self) -> u64 {
        self.free_ns_buckets.iter().sum()
    }

    /// Estimated time this core spent in the pool's free path, nanoseconds: every drain (timed
    /// in full) plus the frees, estimated as the mean sampled free times the number of frees.
    /// Sampling is independent per free, so the mean is unbiased; the estimate's relative
    /// error shrinks as 1/sqrt(samples).
    pub fn free_path_ns(&self) -> f64 {
        let samples = self.free_samples();
        let frees = if samples == 0 {
            0.0
        } else {
            self.free_ns_sum as f64 / samples as f64 * self.frees() as f64
        };
        frees + self.drain_ns as f64
    }
}

/// Every core's counters at one moment (each core read separately: exact once quiet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub cores: Vec<CoreStats>,
    /// Allocations made on threads not registered with the pool (served by the allocator).
    pub unregistered_allocs: u64,
}

impl Snapshot {
    /// The sum over cores.
    pub fn total(&self) -> CoreStats {
        let mut t = CoreStats::default();
        for c in &self.cores {
            t.allocs += c.allocs;
            t.hits += c.hits;
            t.misses += c.misses;
            t.large_allocs += c.large_allocs;
            t.fallback_allocs += c.fallback_allocs;
            t.reclaimed += c.reclaimed;
            t.local_frees += c.local_frees;
            t.deferred_frees += c.deferred_frees;
            t.overflow_frees += c.overflow_frees;
            t.drained += c.drained;
            t.drain_trimmed += c.drain_trimmed;
            t.drain_calls += c.drain_calls;
            for (a, b) in t.drain_batches.iter_mut().zip(c.drain_batches) {
                *a += b;
            }
            t.kicks += c.kicks;
            t.bytes_cached += c.bytes_cached;
            t.slab_bytes += c.slab_bytes;
            for (a, b) in t.free_ns_buckets.iter_mut().zip(c.free_ns_buckets) {
                *a += b;
            }
            t.free_ns_sum += c.free_ns_sum;
            t.drain_ns += c.drain_ns;
            t.outstanding += c.outstanding;
        }
        t
    }

    /// The conservation law: every buffer handed out was freed exactly once, every deferred
    /// buffer was drained, nothing is outstanding. Holds once all buffers are dropped and every
    /// core and connection drained; returns what is off otherwise.
    pub fn check_balanced(&self) -> Result<(), String> {
        let t = self.total();
        let frees = t.frees();
        let mut problems = Vec::new();
        if t.allocs != frees {
            problems.push(format!(
                "allocs {} != frees {} (local {} + deferred {} + overflow {})",
                t.allocs, frees, t.local_frees, t.deferred_frees, t.overflow_frees
            ));
        }
        if t.drained != t.deferred_frees {
            problems.push(format!(
                "drained {} != deferred {}",
                t.drained, t.deferred_frees
            ));
        }
        if t.outstanding != 0 {
            problems.push(format!("outstanding {}", t.outstanding));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Reads core `c`'s counters; `owners` are every core's owner sets (for `freed_for`).
pub(crate) fn read_core<'a>(
    c: usize,
    own: &OwnerStats,
    remote: &RemoteStats,
    bytes_cached: usize,
    owners: impl Iterator<Item = &'a OwnerStats>,
) -> CoreStats {
    let freed: u64 = owners.map(|o| o.freed_for[c].get()).sum::<u64>() + own.own_frees.get();
    let allocs = own.allocs.get();
    let misses = own.misses.get();
    let large_allocs = own.large_allocs.get();
    CoreStats {
        allocs,
        hits: allocs.saturating_sub(misses + large_allocs),
        misses,
        large_allocs,
        fallback_allocs: own.fallback_allocs.get(),
        reclaimed: own.reclaimed.get(),
        local_frees: own.own_frees.get() + own.local_frees.get() + remote.local_frees.get(),
        deferred_frees: own.deferred_frees.get() + remote.deferred_frees.get(),
        overflow_frees: own.overflow_frees.get() + remote.overflow_frees.get(),
        drained: own.drained.get() + remote.drained.get(),
        drain_trimmed: own.drain_trimmed.get() + remote.drain_trimmed.get(),
        drain_calls: own.drain_calls.get() + remote.drain_calls.get(),
        drain_batches: std::array::from_fn(|i| own.drain_batches[i].get()),
        kicks: remote.kicks.get(),
        bytes_cached: bytes_cached as i64,
        slab_bytes: own.slab_bytes.get(),
        free_ns_buckets: std::array::from_fn(|i| own.free_ns_buckets[i].get()),
        free_ns_sum: own.free_ns_sum.get(),
        drain_ns: own.drain_ns.get(),
        outstanding: allocs as i64 - freed as i64 - remote.origin_frees.get() as i64,
    }
}

#[cfg(all(test, not(krpc_loom)))]
mod tests {
    use super::*;

    #[test]
    fn drain_buckets_are_powers_of_two() {
        let got: Vec<usize> = [0, 1, 2, 3, 4, 7, 8, 64, 127, 128, 10_000]
            .into_iter()
            .map(drain_bucket)
            .collect();
        assert_eq!(got, vec![0, 1, 2, 2, 3, 3, 4, 7, 7, 8, 8]);
    }

    #[test]
    fn free_samples_land_in_log2_buckets() {
        let s = OwnerStats::new(1);
        for ns in [1, 16, 17, 1000, 1 << 19, (1 << 19) + 1, u64::MAX / 4] {
            s.free_sample(ns);
        }
        // 1 and 16 -> <=16; 17 -> <=32; 1000 -> <=1024; 2^19 -> last bounded; the rest overflow.
        assert_eq!(s.free_ns_buckets[0].get(), 2);
        assert_eq!(s.free_ns_buckets[1].get(), 1);
        assert_eq!(s.free_ns_buckets[6].get(), 1);
        assert_eq!(s.free_ns_buckets[15].get(), 1);
        assert_eq!(s.free_ns_buckets[16].get(), 2);
        assert_eq!(free_ns_bound(15), Some(1 << 19));
        assert_eq!(free_ns_bound(16), None);
    }

    #[test]
    fn the_free_path_estimate_scales_the_sample_mean_to_every_free() {
        let c = CoreStats {
            local_frees: 900,
            deferred_frees: 100,
            free_ns_buckets: [0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            free_ns_sum: 200, // 10 samples, 20 ns each
            drain_ns: 500,
            ..CoreStats::default()
        };
        assert_eq!(c.free_path_ns(), 1000.0 * 20.0 + 500.0);
    }
}
