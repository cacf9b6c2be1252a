//! The `Vec<u8>` / `Bytes` patterns of `pool.rs` with mimalloc as the global allocator.

use criterion::{Criterion, criterion_group, criterion_main};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

mod common;
use common::{VecSource, bytes_codec_path, cross_thread, pool_codec_path, vec_one_core};
use krpc_pool::Strategy;

fn mimalloc(c: &mut Criterion) {
    c.benchmark_group("one_core")
        .bench_function("mimalloc", |b| b.iter_custom(vec_one_core));
    let mut codec = c.benchmark_group("codec_path");
    codec.bench_function("mimalloc", |b| b.iter_custom(bytes_codec_path));
    // The pool's buffers with `bytes`' per-message owner box from mimalloc: what
    // `krpc-server --features mimalloc` runs.
    codec.bench_function("per-core-mimalloc", |b| {
        b.iter_custom(|iters| pool_codec_path(Strategy::PerCore, iters))
    });
    codec.finish();
    for threads in [2usize, 4, 8] {
        let mut group = c.benchmark_group(format!("cross_thread_{threads}"));
        group.sample_size(20);
        group.bench_function("mimalloc", |b| {
            b.iter_custom(|iters| cross_thread(VecSource, threads, iters))
        });
        group.finish();
    }
}

criterion_group!(benches, mimalloc);
criterion_main!(benches);
