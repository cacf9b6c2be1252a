//! The patterns both bench binaries run: one core alloc+free, the server's codec path (copy
//! into a buffer, `Bytes`, slices, drop), and mimalloc-bench's xmalloc-test pattern (producers
//! allocate, consumers on other threads free), with the pool or with plain `Vec<u8>`/`Bytes`
//! from the global allocator (glibc here, mimalloc in `pool_mimalloc`).

#![allow(dead_code, unreachable_pub)] // shared by two bench binaries, each using part of it

use std::{
    hint::black_box,
    sync::{Barrier, mpsc},
    thread,
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes};
use krpc_pool::{Config, Pool, Strategy};

/// Message size: a small RPC.
pub const SIZE: usize = 512;
/// What each buffer receives: as the codec does, the pool copies a message in, and the `Vec`
/// variant copies the same bytes (`to_vec`).
pub static MESSAGE: [u8; SIZE] = [0x5a; SIZE];
/// Buffers handed over per message between threads (a receive batch).
pub const BATCH: usize = 64;

/// `iters` alloc+copy+free of one 512-byte message through the owner's handle.
pub fn pool_one_core(strategy: Strategy, iters: u64) -> Duration {
    let pool = Pool::new(Config::new(strategy, 1));
    let core = pool.register_current_thread(0).expect("fresh thread");
    let start = Instant::now();
    for _ in 0..iters {
        black_box(core.alloc_copy(black_box(&MESSAGE)));
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

/// What prost does with a request in `Bytes`: each `bytes` field is `copy_to_bytes`, a
/// `split_to` of the input (an EchoRequest: key at 2..9, payload at 12..512); then the
/// handler drops the fields.
fn decode_like_prost(mut wire: Bytes) {
    wire.advance(2);
    let key = wire.split_to(7);
    wire.advance(3);
    let payload = wire.split_to(SIZE - 12);
    drop(wire);
    black_box((&key, &payload));
}

/// The server's per-request path: copy the message into a pool buffer of the calling core
/// (found through the thread-local the codec uses), make it `Bytes` (`into_bytes`), decode
/// fields as slices, drop them.
pub fn pool_codec_path(strategy: Strategy, iters: u64) -> Duration {
    let pool = Pool::new(Config::new(strategy, 1));
    let core = pool.register_current_thread(0).expect("fresh thread");
    let conn = pool.conn();
    let start = Instant::now();
    for _ in 0..iters {
        let buf = match strategy {
            Strategy::PerConn => {
                conn.drain();
                conn.alloc_copy(black_box(&MESSAGE))
            }
            _ => pool.alloc_copy(black_box(&MESSAGE)),
        };
        decode_like_prost(buf.into_bytes());
    }
    let elapsed = start.elapsed();
    drop((conn, core));
    elapsed
}

/// The same with `Bytes::copy_from_slice` from the global allocator.
pub fn bytes_codec_path(iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        decode_like_prost(Bytes::copy_from_slice(black_box(&MESSAGE)));
    }
    start.elapsed()
}

/// What the xmalloc pattern allocates and frees.
pub trait Source: Send + Sync {
    type Buf: Send + 'static;
    /// Called once on each thread before it starts (registers pool cores).
    type Guard;
    fn enter(&self, core: usize) -> Self::Guard;
    fn alloc_on(&self, guard: &Self::Guard) -> Self::Buf;
    /// End of a producer's batch (the pool's drain point).
    fn end_of_batch(&self, _guard: &Self::Guard) {}
    /// Called while a producer waits for room in the channel.
    fn while_parked(&self, _guard: &Self::Guard) {}
}

#[derive(Debug)]
pub struct PoolSource(pub Pool);

/// A core as a runtime drives it: drains at the end of each batch, and also as soon as a kick
/// arrives (the waker the core registered sets `kicked`; a runtime would be woken from park).
#[derive(Debug)]
pub struct PoolCore {
    handle: Option<krpc_pool::CoreHandle>,
    /// The producer's connection: under `per-conn` its frees wait on this connection's list.
    conn: krpc_pool::ConnHandle,
    kicked: std::sync::Arc<Kicked>,
}

#[derive(Debug, Default)]
pub struct Kicked(std::sync::atomic::AtomicBool);

impl std::task::Wake for Kicked {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Source for PoolSource {
    type Buf = krpc_pool::PoolBuf;
    type Guard = PoolCore;

    fn enter(&self, core: usize) -> PoolCore {
        let handle = self.0.register_current_thread(core).ok();
        let kicked = std::sync::Arc::new(Kicked::default());
        if let Some(h) = &handle {
            h.register_waker(&std::task::Waker::from(kicked.clone()));
        }
        let conn = self.0.conn();
        PoolCore {
            handle,
            conn,
            kicked,
        }
    }

    fn alloc_on(&self, core: &PoolCore) -> Self::Buf {
        if core.kicked.0.load(std::sync::atomic::Ordering::Relaxed)
            && core
                .kicked
                .0
                .swap(false, std::sync::atomic::Ordering::Acquire)
            && let Some(h) = &core.handle
        {
            h.drain();
        }
        match (&core.handle, self.0.config().strategy) {
            (Some(h), strategy) if strategy != Strategy::PerConn => h.alloc_copy(&MESSAGE),
            _ => core.conn.alloc_copy(&MESSAGE),
        }
    }

    /// A parked runtime is woken by a kick and drains (tokio: the kick task's waker).
    fn while_parked(&self, core: &PoolCore) {
        if core
            .kicked
            .0
            .swap(false, std::sync::atomic::Ordering::Acquire)
            && let Some(h) = &core.handle
        {
            h.drain();
        }
    }

    /// The end of a receive batch: the core drains its defer list, the connection its own.
    fn end_of_batch(&self, core: &PoolCore) {
        if let Some(h) = &core.handle {
            h.drain();
        }
        core.conn.drain();
    }
}

#[derive(Debug)]
pub struct VecSource;

impl Source for VecSource {
    type Buf = Vec<u8>;
    type Guard = ();

    fn enter(&self, _core: usize) {}

    fn alloc_on(&self, _: &()) -> Vec<u8> {
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
                let batch: Vec<S::Buf> = (0..n).map(|_| s.alloc_on(&guard)).collect();
                left -= n;
                // A full channel is a parked runtime: it still answers kicks (drains), as a
                // runtime woken from park would, instead of sleeping through them.
                let mut batch = batch;
                loop {
                    match tx.try_send(batch) {
                        Ok(()) => break,
                        Err(mpsc::TrySendError::Full(back)) => {
                            batch = back;
                            s.while_parked(&guard);
                            thread::yield_now();
                        }
                        Err(mpsc::TrySendError::Disconnected(_)) => return,
                    }
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
