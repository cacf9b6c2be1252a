//! The `Vec<u8>` / `Bytes` patterns of `pool.rs` with mimalloc as the global allocator.

use criterion::{Criterion, criterion_group, criterion_main};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

mod common;
use common::{VecSource, bytes_codec_path, cross_thread, vec_one_core};

fn mimalloc(c: &mut Criterion) {
    c.benchmark_group("one_core")
        .bench_function("mimalloc", |b| b.iter_custom(vec_one_core));
    c.benchmark_group("codec_path")
        .bench_function("mimalloc", |b| b.iter_custom(bytes_codec_path));
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
