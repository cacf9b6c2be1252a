//! The pool's exact per-core counters, read at each scrape (a collector: nothing is copied
//! on the hot path).

use std::fmt;

use krpc_pool::{DRAIN_BUCKETS, FREE_NS_BUCKETS, Pool, free_ns_bound};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

/// Reads the pool's exact per-core counters at each scrape.
#[derive(Debug)]
pub(super) struct PoolCollector {
    pub(super) pool: Pool,
    pub(super) strategy: &'static str,
}

type CoreLabels<'a> = [(&'static str, &'a str); 2];

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let snapshot = self.pool.snapshot();
        let cores: Vec<String> = (0..snapshot.cores.len()).map(|c| c.to_string()).collect();
        let labels = |core: usize| -> CoreLabels<'_> {
            [("strategy", self.strategy), ("core", cores[core].as_str())]
        };
        type Field = fn(&krpc_pool::CoreStats) -> u64;
        let counters: [(&str, &str, Field); 13] = [
            (
                "pool_allocs",
                "Buffers handed out (pooled and large)",
                |c| c.allocs,
            ),
            ("pool_hits", "Allocations served from a free list", |c| {
                c.hits
            }),
            (
                "pool_misses",
                "Allocations that found the free list empty (reclaimed, fresh slab block, or heap)",
                |c| c.misses,
            ),
            (
                "pool_reclaimed_blocks",
                "Blocks a miss took back from the core's returned list",
                |c| c.reclaimed,
            ),
            (
                "pool_fallback_allocs",
                "Misses served by the heap because the core's slab memory is at its cap",
                |c| c.fallback_allocs,
            ),
            (
                "pool_large_allocs",
                "Allocations above the largest size class (64 KiB), served by the allocator",
                |c| c.large_allocs,
            ),
            (
                "pool_local_frees",
                "Frees straight onto a free list (the freeing core's, or the global one)",
                |c| c.local_frees,
            ),
            (
                "pool_deferred_frees",
                "Frees pushed on a defer list (another core's, or the connection's)",
                |c| c.deferred_frees,
            ),
            (
                "pool_overflow_frees",
                "Frees that went the allocator's way (memory cap, full defer list, no owner, heap buffers)",
                |c| c.overflow_frees,
            ),
            (
                "pool_drained_buffers",
                "Deferred buffers moved back to a free list by a drain",
                |c| c.drained,
            ),
            (
                "pool_drain_trimmed_buffers",
                "Drained buffers sent the allocator's way because the free list was at its cap",
                |c| c.drain_trimmed,
            ),
            ("pool_drains", "Drain calls, empty ones included", |c| {
                c.drain_calls
            }),
            (
                "pool_kicks",
                "Wake-ups sent to a core because its defer list reached defer_max/2",
                |c| c.kicks,
            ),
        ];
        for (name, help, field) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (core, stats) in snapshot.cores.iter().enumerate() {
                ConstCounter::new(field(stats)).encode(family.encode_family(&labels(core))?)?;
            }
        }
        type Signed = fn(&krpc_pool::CoreStats) -> i64;
        let gauges: [(&str, &str, Signed); 4] = [
            (
                "pool_cached_bytes",
                "Bytes held in the core's free lists",
                |c| c.bytes_cached,
            ),
            ("pool_slab_bytes", "Slab memory the core has carved", |c| {
                c.slab_bytes as i64
            }),
            (
                "pool_outstanding_buffers",
                "Buffers allocated on this core and not yet freed",
                |c| c.outstanding,
            ),
            (
                "pool_deferred_pending_buffers",
                "Buffers freed for this core that wait on its defer list",
                |c| c.deferred_frees as i64 - c.drained as i64,
            ),
        ];
        for (name, help, field) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (core, stats) in snapshot.cores.iter().enumerate() {
                ConstGauge::new(field(stats)).encode(family.encode_family(&labels(core))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "pool_drain_batch_buffers",
            "Buffers moved per drain call (empty drains in the first bucket)",
            None,
            MetricType::Histogram,
        )?;
        for (core, stats) in snapshot.cores.iter().enumerate() {
            // Bucket i holds batches of 2^(i-1) .. 2^i - 1 buffers (0 for i = 0).
            let buckets: Vec<(f64, u64)> = (0..DRAIN_BUCKETS)
                .map(|i| {
                    let le = if i + 1 == DRAIN_BUCKETS {
                        f64::INFINITY
                    } else {
                        ((1u64 << i) - 1) as f64
                    };
                    (le, stats.drain_batches[i])
                })
                .collect();
            let count = stats.drain_batches.iter().sum();
            family
                .encode_family(&labels(core))?
                .encode_histogram::<NoLabelSet>(stats.drained as f64, count, &buckets, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "pool_free_duration_seconds",
            "Duration of the free path (the strategy), each free timed with probability 1/256",
            None,
            MetricType::Histogram,
        )?;
        for (core, stats) in snapshot.cores.iter().enumerate() {
            let buckets: Vec<(f64, u64)> = (0..FREE_NS_BUCKETS)
                .map(|i| {
                    let le = free_ns_bound(i).map_or(f64::INFINITY, |ns| ns as f64 * 1e-9);
                    (le, stats.free_ns_buckets[i])
                })
                .collect();
            let count = stats.free_ns_buckets.iter().sum();
            family
                .encode_family(&labels(core))?
                .encode_histogram::<NoLabelSet>(
                    stats.free_ns_sum as f64 * 1e-9,
                    count,
                    &buckets,
                    None,
                )?;
        }
        let mut family = encoder.encode_descriptor(
            "pool_free_path_seconds",
            "Estimated CPU time in the pool's free path (sampled frees scaled to all, plus drains)",
            None,
            MetricType::Counter,
        )?;
        for (core, stats) in snapshot.cores.iter().enumerate() {
            ConstCounter::new(stats.free_path_ns() * 1e-9)
                .encode(family.encode_family(&labels(core))?)?;
        }
        let unregistered = ConstCounter::new(snapshot.unregistered_allocs);
        unregistered.encode(encoder.encode_descriptor(
            "pool_unregistered_allocs",
            "Allocations on threads that are no core of the pool (plain heap buffers)",
            None,
            unregistered.metric_type(),
        )?)?;
        Ok(())
    }
}
