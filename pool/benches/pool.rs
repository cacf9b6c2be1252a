//! Pool strategies against glibc malloc (`Vec<u8>`), side by side in one run:
//!   one_core/*        alloc + copy + free of a 512-byte message on one core
//!   codec_path/*      the server's per-request path: copy in, `Bytes`, field slices, drop
//!   cross_thread_N/*  xmalloc-test pattern with N threads (N/2 producer/consumer pairs)
//! `pool_mimalloc` runs the same allocator patterns with mimalloc as the global allocator.

use criterion::{Criterion, criterion_group, criterion_main};
use krpc_pool::{Config, Pool, Strategy};

mod common;
use common::{
    PoolSource, VecSource, bytes_codec_path, cross_thread, pool_codec_path, pool_one_core,
    vec_one_core,
};

/// The cross-thread pattern's `defer_max` (see `cross`).
const DEFER_MAX: usize = 512;

fn one_core(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_core");
    for strategy in Strategy::ALL {
        group.bench_function(strategy.as_str(), |b| {
            b.iter_custom(|iters| pool_one_core(strategy, iters))
        });
    }
    group.bench_function("glibc", |b| b.iter_custom(vec_one_core));
    group.finish();
}

fn codec_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_path");
    for strategy in Strategy::ALL {
        group.bench_function(strategy.as_str(), |b| {
            b.iter_custom(|iters| pool_codec_path(strategy, iters))
        });
    }
    group.bench_function("glibc", |b| b.iter_custom(bytes_codec_path));
    group.finish();
}

fn cross(c: &mut Criterion) {
    for threads in [2usize, 4, 8] {
        let mut group = c.benchmark_group(format!("cross_thread_{threads}"));
        group.sample_size(20);
        for strategy in Strategy::ALL {
            let mut last = None;
            group.bench_function(strategy.as_str(), |b| {
                b.iter_custom(|iters| {
                    // defer_max sized to the pattern's burst: up to 5 batches of 64 (the
                    // channel's 4 and the one being built) are freed between two drains of
                    // the producer, so a consumer that empties the channel at once frees
                    // 320 buffers before the kicked producer gets the CPU back. 128 (the
                    // kernel's later default) overflows 20-30% here, 256 about 3%.
                    let pool = Pool::new(Config {
                        defer_max: DEFER_MAX,
                        ..Config::new(strategy, threads)
                    });
                    let elapsed = cross_thread(PoolSource(pool.clone()), threads, iters);
                    last = Some(pool.snapshot().total());
                    elapsed
                })
            });
            // What the pool did in the last sample: hit rate and where frees went.
            if let Some(t) = last {
                eprintln!(
                    "  {strategy} x{threads}: allocs {} hits {} misses {} (reclaimed {} fallback {}) | frees local {} deferred {} overflow {} ({:.2}% of cross-core) | kicks {}",
                    t.allocs,
                    t.hits,
                    t.misses,
                    t.reclaimed,
                    t.fallback_allocs,
                    t.local_frees,
                    t.deferred_frees,
                    t.overflow_frees,
                    100.0 * t.overflow_frees as f64
                        / (t.deferred_frees + t.overflow_frees).max(1) as f64,
                    t.kicks
                );
            }
        }
        group.bench_function("glibc", |b| {
            b.iter_custom(|iters| cross_thread(VecSource, threads, iters))
        });
        group.finish();
    }
}

criterion_group!(benches, one_core, codec_path, cross);
criterion_main!(benches);
