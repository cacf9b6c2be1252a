//! Exact per-core counters. Each core's block is cache-padded and written with relaxed atomics:
//! counters need no ordering, only exactness once the threads are quiet.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crossbeam_utils::CachePadded;

/// Drain batch-size buckets: 0, 1, 2-3, 4-7, ... 64-127, 128 and more.
pub const DRAIN_BUCKETS: usize = 9;

/// Free-path duration buckets (sampled frees): upper bounds 2^4 ns (16 ns) up to 2^19 ns
/// (524 µs), and one for anything longer.
pub const FREE_NS_BUCKETS: usize = 17;

/// Upper bound in nanoseconds of free-duration bucket `i` (`None`: the overflow bucket).
pub fn free_ns_bound(i: usize) -> Option<u64> {
    (i + 1 < FREE_NS_BUCKETS).then(|| 1u64 << (i + 4))
}

/// One free in this many (per thread) is timed.
pub const FREE_SAMPLE_EVERY: u32 = 64;

/// Event counters, one set written only by the core's owner thread (plain load + store: no
/// locked instruction on the hot path) and one written by any other thread (`fetch_add`).
/// Mixing the two styles on one atomic would lose updates, hence two sets, summed on read.
#[derive(Debug, Default)]
pub(crate) struct CounterSet {
    pub(crate) allocs: AtomicU64,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) large_allocs: AtomicU64,
    pub(crate) local_frees: AtomicU64,
    pub(crate) deferred_frees: AtomicU64,
    pub(crate) overflow_frees: AtomicU64,
    pub(crate) drained: AtomicU64,
    pub(crate) drain_trimmed: AtomicU64,
    pub(crate) drain_calls: AtomicU64,
    pub(crate) drain_batches: [AtomicU64; DRAIN_BUCKETS],
    pub(crate) kicks: AtomicU64,
    pub(crate) bytes_cached: AtomicI64,
    pub(crate) free_ns_buckets: [AtomicU64; FREE_NS_BUCKETS],
    pub(crate) free_ns_sum: AtomicU64,
    /// Frees of buffers this core allocated (counted by whoever frees them).
    pub(crate) origin_frees: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) owned: CounterSet,
    /// On its own cache line: other cores write here, the owner should not pay for it.
    pub(crate) remote: CachePadded<CounterSet>,
}

impl Counters {
    /// Where the calling thread counts: `owner` only on the core's owner thread (or a thread
    /// holding its claim); every other thread counts in the `remote` set.
    pub(crate) fn tally(&self, owner: bool) -> Tally<'_> {
        Tally {
            set: if owner { &self.owned } else { &self.remote },
            owner,
        }
    }
}

/// A counter set chosen for the calling thread (see [`Counters::tally`]).
pub(crate) struct Tally<'a> {
    set: &'a CounterSet,
    owner: bool,
}

impl Tally<'_> {
    pub(crate) fn add(&self, counter: fn(&CounterSet) -> &AtomicU64, n: u64) {
        let c = counter(self.set);
        if self.owner {
            c.store(c.load(Relaxed) + n, Relaxed);
        } else {
            c.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn bump(&self, counter: fn(&CounterSet) -> &AtomicU64) {
        self.add(counter, 1);
    }

    pub(crate) fn drain_batch(&self, n: usize) {
        let c = &self.set.drain_batches[drain_bucket(n)];
        if self.owner {
            c.store(c.load(Relaxed) + 1, Relaxed);
        } else {
            c.fetch_add(1, Relaxed);
        }
    }

    /// One timed free of `ns` nanoseconds.
    pub(crate) fn free_sample(&self, ns: u64) {
        let bucket = (0..FREE_NS_BUCKETS)
            .find(|&i| free_ns_bound(i).is_none_or(|b| ns <= b))
            .unwrap_or(FREE_NS_BUCKETS - 1);
        let (c, sum) = (&self.set.free_ns_buckets[bucket], &self.set.free_ns_sum);
        if self.owner {
            c.store(c.load(Relaxed) + 1, Relaxed);
            sum.store(sum.load(Relaxed) + ns, Relaxed);
        } else {
            c.fetch_add(1, Relaxed);
            sum.fetch_add(ns, Relaxed);
        }
    }

    pub(crate) fn bytes(&self, n: i64) {
        let c = &self.set.bytes_cached;
        if self.owner {
            c.store(c.load(Relaxed) + n, Relaxed);
        } else {
            c.fetch_add(n, Relaxed);
        }
    }
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
    /// Allocations served from a free list.
    pub hits: u64,
    /// Allocations that fell back to the allocator (empty list).
    pub misses: u64,
    /// Requests over the largest size class, served by the allocator.
    pub large_allocs: u64,
    /// Frees that went straight onto a free list (this core's, or the global one).
    pub local_frees: u64,
    /// Frees pushed on a defer list (per-core or per-connection) for later draining.
    pub deferred_frees: u64,
    /// Frees returned to the allocator: memory cap reached, defer list full, large buffers,
    /// or no owner left to give them to.
    pub overflow_frees: u64,
    /// Deferred buffers taken off a defer list by a drain.
    pub drained: u64,
    /// Of those, returned to the allocator because the free list was at its memory cap.
    pub drain_trimmed: u64,
    /// Drain calls, empty ones included.
    pub drain_calls: u64,
    /// Drain batch sizes: 0, 1, 2-3, 4-7, ..., 64-127, 128+.
    pub drain_batches: [u64; DRAIN_BUCKETS],
    /// Wake-ups sent to this core because its defer list reached `defer_max / 2`.
    pub kicks: u64,
    /// Bytes held in this core's free lists.
    pub bytes_cached: i64,
    /// Timed frees (one in [`FREE_SAMPLE_EVERY`] per thread) by duration, counted on the
    /// freeing core: bucket `i` holds frees of at most [`free_ns_bound`]`(i)` ns.
    pub free_ns_buckets: [u64; FREE_NS_BUCKETS],
    /// Sum of the timed frees' durations, nanoseconds.
    pub free_ns_sum: u64,
    /// Buffers allocated on this core and not yet freed.
    pub outstanding: i64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CoreStats {
        let (a, b) = (&self.owned, &*self.remote);
        let sum = |f: fn(&CounterSet) -> &AtomicU64| f(a).load(Relaxed) + f(b).load(Relaxed);
        let allocs = sum(|s| &s.allocs);
        CoreStats {
            allocs,
            hits: sum(|s| &s.hits),
            misses: sum(|s| &s.misses),
            large_allocs: sum(|s| &s.large_allocs),
            local_frees: sum(|s| &s.local_frees),
            deferred_frees: sum(|s| &s.deferred_frees),
            overflow_frees: sum(|s| &s.overflow_frees),
            drained: sum(|s| &s.drained),
            drain_trimmed: sum(|s| &s.drain_trimmed),
            drain_calls: sum(|s| &s.drain_calls),
            drain_batches: std::array::from_fn(|i| {
                a.drain_batches[i].load(Relaxed) + b.drain_batches[i].load(Relaxed)
            }),
            kicks: sum(|s| &s.kicks),
            bytes_cached: a.bytes_cached.load(Relaxed) + b.bytes_cached.load(Relaxed),
            free_ns_buckets: std::array::from_fn(|i| {
                a.free_ns_buckets[i].load(Relaxed) + b.free_ns_buckets[i].load(Relaxed)
            }),
            free_ns_sum: sum(|s| &s.free_ns_sum),
            outstanding: allocs as i64 - sum(|s| &s.origin_frees) as i64,
        }
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
            for (a, b) in t.free_ns_buckets.iter_mut().zip(c.free_ns_buckets) {
                *a += b;
            }
            t.free_ns_sum += c.free_ns_sum;
            t.outstanding += c.outstanding;
        }
        t
    }

    /// The conservation law: every buffer handed out was freed exactly once, every deferred
    /// buffer was drained, nothing is outstanding. Holds once all buffers are dropped and every
    /// core and connection drained; returns what is off otherwise.
    pub fn check_balanced(&self) -> Result<(), String> {
        let t = self.total();
        let frees = t.local_frees + t.deferred_frees + t.overflow_frees;
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

#[cfg(test)]
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
        let c = Counters::default();
        for ns in [1, 16, 17, 1000, 1 << 19, (1 << 19) + 1, u64::MAX / 4] {
            c.tally(true).free_sample(ns);
        }
        let s = c.snapshot();
        // 1 and 16 -> <=16; 17 -> <=32; 1000 -> <=1024; 2^19 -> last bounded; the rest overflow.
        assert_eq!(s.free_ns_buckets[0], 2);
        assert_eq!(s.free_ns_buckets[1], 1);
        assert_eq!(s.free_ns_buckets[6], 1);
        assert_eq!(s.free_ns_buckets[15], 1);
        assert_eq!(s.free_ns_buckets[16], 2);
        assert_eq!(free_ns_bound(15), Some(1 << 19));
        assert_eq!(free_ns_bound(16), None);
    }
}
