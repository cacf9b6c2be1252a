//! Pool strategies against glibc malloc (`Vec<u8>`), side by side in one run:
//!   one_core/*        alloc + free of a 512-byte buffer on one core
//!   cross_thread_N/*  xmalloc-test pattern with N threads (N/2 producer/consumer pairs)
//! `pool_mimalloc` runs the same `Vec<u8>` patterns with mimalloc as the global allocator.

use criterion::{Criterion, criterion_group, criterion_main};
use krpc_pool::{Config, Pool, Strategy};

mod common;
use common::{PoolSource, VecSource, cross_thread, pool_one_core, vec_one_core};

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

fn cross(c: &mut Criterion) {
    for threads in [2usize, 4, 8] {
        let mut group = c.benchmark_group(format!("cross_thread_{threads}"));
        group.sample_size(20);
        for strategy in Strategy::ALL {
            let mut last = None;
            group.bench_function(strategy.as_str(), |b| {
                b.iter_custom(|iters| {
                    // defer_max 128 (the kernel's later default): a consumer frees a whole
                    // 64-buffer batch in one burst, which a 64-entry list cannot absorb while
                    // the owner is still busy (the run with 64 overflowed about 30%).
                    let pool = Pool::new(Config {
                        defer_max: 128,
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
                    "  {strategy} x{threads}: allocs {} hits {} misses {} | frees local {} deferred {} overflow {} | kicks {}",
                    t.allocs,
                    t.hits,
                    t.misses,
                    t.local_frees,
                    t.deferred_frees,
                    t.overflow_frees,
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

criterion_group!(benches, one_core, cross);
criterion_main!(benches);
