//! The latency histogram every krpc RPC metric uses.

use prometheus_client::metrics::histogram::{
    Histogram, NativeHistogramConfig, exponential_buckets,
};

/// The latency histogram of every krpc RPC metric, server's and load generator's alike, so
/// their buckets line up on one dashboard. Classic: 25 µs to ~6.6 s, doubling. Native: factor
/// 1.1 (schema 3), enough resolution for p99.9 on loopback latencies, at most 160 buckets.
pub fn latency_histogram() -> Histogram {
    Histogram::new_classic_and_native(
        exponential_buckets(25e-6, 2.0, 19),
        NativeHistogramConfig::new(1.1).max_buckets(160),
    )
}
