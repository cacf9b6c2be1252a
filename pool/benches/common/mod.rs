//! The patterns both bench binaries run: one core alloc+free, and mimalloc-bench's xmalloc-test
//! pattern (producers allocate, consumers on other threads free), with the pool or with plain
//! `Vec<u8>` from the global allocator (glibc here, mimalloc in `pool_mimalloc`).

#![allow(dead_code)]

use std::{
    hint::black_box,
    sync::{Barrier, mpsc},
    thread,
    time::{Duration, Instant},
};

use krpc_pool::{Config, Pool, Strategy};

/// Message size: a small RPC.
pub const SIZE: usize = 512;
/// What each buffer receives: as the codec does, the pool copies a message in, and the `Vec`
/// variant copies the same bytes (`to_vec`).
pub static MESSAGE: [u8; SIZE] = [0x5a; SIZE];
/// Buffers handed over per message between threads (a receive batch).
pub const BATCH: usize = 64;

/// `iters` alloc+free pairs on one registered core.
pub fn pool_one_core(strategy: Strategy, iters: u64) -> Duration {
    let pool = Pool::new(Config::new(strategy, 1));
    let core = pool.register_current_thread(0).expect("fresh thread");
    let start = Instant::now();
    for _ in 0..iters {
        black_box(pool.alloc_copy(black_box(&MESSAGE)));
    }
    let elapsed = start.elapsed();
    drop(core);
    elapsed
}

pub fn vec_one_core(iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(black_box(&MESSAGE).to_vec());
    }
    start.elapsed()
}

/// What the xmalloc pattern allocates and frees.
pub trait Source: Send + Sync {
    type Buf: Send + 'static;
    /// Called once on each thread before it starts (registers pool cores).
    type Guard;
    fn enter(&self, core: usize) -> Self::Guard;
    fn alloc(&self) -> Self::Buf;
    /// End of a producer's batch (the pool's drain point).
    fn end_of_batch(&self, _guard: &Self::Guard) {}
}

#[derive(Debug)]
pub struct PoolSource(pub Pool);

impl Source for PoolSource {
    type Buf = krpc_pool::PoolBuf;
    type Guard = Option<krpc_pool::CoreHandle>;

    fn enter(&self, core: usize) -> Self::Guard {
        self.0.register_current_thread(core).ok()
    }

    fn alloc(&self) -> Self::Buf {
        self.0.alloc_copy(&MESSAGE)
    }

    fn end_of_batch(&self, guard: &Self::Guard) {
        if let Some(core) = guard {
            core.drain();
        }
    }
}

#[derive(Debug)]
pub struct VecSource;

impl Source for VecSource {
    type Buf = Vec<u8>;
    type Guard = ();

    fn enter(&self, _core: usize) {}

    fn alloc(&self) -> Vec<u8> {
        MESSAGE.to_vec()
    }
}

/// `threads / 2` producer/consumer pairs; each producer allocates `iters` buffers in batches and
/// sends them to its consumer, which frees them. Returns the wall time; time per op is that
/// divided by `iters` (every pair runs its `iters` concurrently).
pub fn cross_thread<S: Source + 'static>(source: S, threads: usize, iters: u64) -> Duration {
    let pairs = (threads / 2).max(1);
    let source = std::sync::Arc::new(source);
    let start_line = std::sync::Arc::new(Barrier::new(pairs * 2 + 1));
    let mut handles = Vec::new();
    for pair in 0..pairs {
        let (tx, rx) = mpsc::sync_channel::<Vec<S::Buf>>(4);
        let (producer_core, consumer_core) = (pair * 2, pair * 2 + 1);
        let (s, barrier) = (source.clone(), start_line.clone());
        handles.push(thread::spawn(move || {
            let guard = s.enter(producer_core);
            barrier.wait();
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH as u64);
                let batch: Vec<S::Buf> = (0..n).map(|_| s.alloc()).collect();
                left -= n;
                if tx.send(batch).is_err() {
                    break;
                }
                s.end_of_batch(&guard);
            }
            drop(tx);
            drop(guard);
        }));
        let (s, barrier) = (source.clone(), start_line.clone());
        handles.push(thread::spawn(move || {
            let guard = s.enter(consumer_core);
            barrier.wait();
            for batch in rx {
                drop(black_box(batch));
                s.end_of_batch(&guard);
            }
            drop(guard);
        }));
    }
    start_line.wait();
    let start = Instant::now();
    for handle in handles {
        handle.join().expect("bench thread panicked");
    }
    start.elapsed()
}
