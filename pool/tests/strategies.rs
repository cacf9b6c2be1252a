//! Each strategy does what DESIGN.md's table says, counted exactly, and nothing is ever lost:
//! once every buffer is dropped and every core drained, outstanding is 0 and allocs == frees.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    task::{Wake, Waker},
    thread,
};

use krpc_pool::{Config, CoreHandle, Pool, PoolBuf, RegisterError, SLAB_SIZE, Strategy};

fn pool(strategy: Strategy) -> Pool {
    Pool::new(Config::new(strategy, 2))
}

/// Runs `f` on a new thread registered as core 1, and returns what it returns.
fn on_core_1<T: Send + 'static>(
    pool: &Pool,
    f: impl FnOnce(&Pool, &CoreHandle) -> T + Send + 'static,
) -> T {
    let pool = pool.clone();
    thread::spawn(move || {
        let core = pool.register_current_thread(1).unwrap();
        f(&pool, &core)
    })
    .join()
    .unwrap()
}

#[test]
fn same_core_frees_are_reused_by_every_strategy() {
    for strategy in Strategy::ALL {
        let pool = pool(strategy);
        let core = pool.register_current_thread(0).unwrap();
        let first = pool.alloc_copy(b"hello");
        assert_eq!(&first[..], b"hello");
        assert_eq!(first.origin(), Some(0));
        drop(first);
        let second = pool.alloc(60); // the same 64-byte class: the freed block again
        drop(second);
        drop(core);
        let snap = pool.snapshot();
        let c0 = &snap.cores[0];
        assert_eq!((c0.allocs, c0.misses, c0.hits), (2, 1, 1), "{strategy}");
        assert_eq!(c0.local_frees, 2, "{strategy}");
        snap.check_balanced().unwrap();
    }
}

/// Allocate `n` on core 0, free them on core 1, then let core 0 drain.
fn cross_core(strategy: Strategy, n: usize) -> krpc_pool::Snapshot {
    let pool = pool(strategy);
    let core0 = pool.register_current_thread(0).unwrap();
    let bufs: Vec<PoolBuf> = (0..n).map(|_| pool.alloc(512)).collect();
    on_core_1(&pool, move |_, _| drop(bufs));
    core0.drain();
    drop(core0);
    pool.drain_orphans();
    pool.snapshot()
}

#[test]
fn cross_core_frees_follow_the_strategy() {
    let n = 20;
    let global = cross_core(Strategy::Global, n);
    assert_eq!(
        global.cores[1].local_frees, n as u64,
        "global: freeing core pushes on the shared list"
    );
    assert_eq!(global.total().deferred_frees, 0);

    let local = cross_core(Strategy::Local, n);
    assert_eq!(
        local.cores[1].local_frees, n as u64,
        "local: kept by the freeing core"
    );
    assert_eq!(local.total().deferred_frees, 0);

    let per_core = cross_core(Strategy::PerCore, n);
    assert_eq!(
        per_core.cores[1].deferred_frees, n as u64,
        "per-core: deferred to the origin"
    );
    assert_eq!(
        per_core.cores[0].drained, n as u64,
        "per-core: drained by the origin"
    );
    assert_eq!(
        per_core.cores[0].bytes_cached,
        (n * 512) as i64,
        "back on core 0's list"
    );
    assert_eq!(per_core.cores[1].bytes_cached, 0);

    for snap in [global, local, per_core] {
        snap.check_balanced().unwrap();
    }
}

struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn per_core_kicks_at_half_and_overflows_past_defer_max() {
    let pool = Pool::new(Config {
        defer_max: 8,
        ..Config::new(Strategy::PerCore, 2)
    });
    let core0 = pool.register_current_thread(0).unwrap();
    let woken = Arc::new(CountingWaker(AtomicUsize::new(0)));
    core0.register_waker(&Waker::from(woken.clone()));
    let bufs: Vec<PoolBuf> = (0..12).map(|_| pool.alloc(64)).collect();
    let (tx, rx) = mpsc::channel();
    on_core_1(&pool, move |_, _| {
        let mut bufs = bufs.into_iter();
        for buf in bufs.by_ref().take(3) {
            drop(buf);
        }
        tx.send(()).unwrap();
        drop(bufs); // 9 more: the 4th reaches defer_max / 2, the 9th finds the list full
    });
    rx.recv().unwrap();
    assert_eq!(woken.0.load(Ordering::SeqCst), 1, "one kick at half full");
    assert_eq!(core0.pending(), 8);
    let s = pool.snapshot();
    assert_eq!(s.cores[0].kicks, 1);
    assert_eq!(s.cores[1].deferred_frees, 8);
    assert_eq!(
        s.cores[1].overflow_frees, 4,
        "past defer_max the freer frees it itself"
    );
    assert_eq!(core0.drain(), 8);
    assert_eq!(
        pool.snapshot().cores[0].drain_batches[4],
        1,
        "one batch of 8"
    );
    drop(core0);
    pool.snapshot().check_balanced().unwrap();
}

#[test]
fn buffers_freed_after_their_core_thread_is_gone_are_not_lost() {
    for strategy in Strategy::ALL {
        let pool = pool(strategy);
        let bufs: Vec<PoolBuf> =
            on_core_1(&pool, |pool, _| (0..10).map(|_| pool.alloc(300)).collect());
        assert_eq!(pool.snapshot().cores[1].outstanding, 10);
        let core0 = pool.register_current_thread(0).unwrap();
        drop(bufs);
        drop(core0);
        pool.drain_orphans();
        pool.snapshot()
            .check_balanced()
            .unwrap_or_else(|e| panic!("{strategy}: {e}"));
    }
}

#[test]
fn per_conn_defers_until_the_connection_drains_or_closes() {
    let pool = pool(Strategy::PerConn);
    let core0 = pool.register_current_thread(0).unwrap();
    let conn = pool.conn();
    let bufs: Vec<PoolBuf> = (0..6).map(|_| conn.alloc(200)).collect();
    let mut bufs = bufs.into_iter();
    let two: Vec<PoolBuf> = bufs.by_ref().take(2).collect();
    on_core_1(&pool, move |_, _| drop(two));
    assert_eq!(conn.pending(), 2);
    assert_eq!(conn.drain(), 2, "receive work drains the connection's list");
    let two_more: Vec<PoolBuf> = bufs.by_ref().take(2).collect();
    drop(two_more);
    assert_eq!(
        conn.pending(),
        2,
        "even same-core frees wait for the connection"
    );
    drop(conn); // close: drains
    let late: Vec<PoolBuf> = bufs.collect();
    on_core_1(&pool, move |_, _| drop(late)); // freed after the connection closed
    drop(core0);
    let s = pool.snapshot();
    assert_eq!(s.total().deferred_frees, 4);
    assert_eq!(s.total().drained, 4);
    assert_eq!(
        s.cores[1].local_frees, 2,
        "after close, like `local`: the freeing core keeps it"
    );
    s.check_balanced().unwrap();
}

#[test]
fn slab_memory_is_capped_per_core_and_the_heap_takes_the_rest() {
    let pool = Pool::new(Config {
        cap_bytes_per_core: SLAB_SIZE,
        ..Config::new(Strategy::Local, 1)
    });
    let core = pool.register_current_thread(0).unwrap();
    let per_slab = (SLAB_SIZE - 64) / 1024;
    let bufs: Vec<PoolBuf> = (0..per_slab + 10).map(|_| pool.alloc(1000)).collect();
    assert_eq!(bufs.iter().filter(|b| b.is_pooled()).count(), per_slab);
    let s = pool.snapshot();
    assert_eq!(s.cores[0].slab_bytes, SLAB_SIZE as u64, "one slab, no more");
    assert_eq!(s.cores[0].fallback_allocs, 10);
    assert_eq!(s.cores[0].misses, (per_slab + 10) as u64);
    drop(bufs);
    let s = pool.snapshot();
    assert_eq!(s.cores[0].bytes_cached, (per_slab * 1024) as i64);
    assert_eq!(s.cores[0].local_frees, per_slab as u64);
    assert_eq!(
        s.cores[0].overflow_frees, 10,
        "heap buffers go back to the heap"
    );
    drop(core);
    s.check_balanced().unwrap();
}

#[test]
fn a_core_keeps_foreign_blocks_up_to_its_cap_and_returns_the_rest() {
    let pool = Pool::new(Config {
        cap_bytes_per_core: SLAB_SIZE,
        ..Config::new(Strategy::Local, 2)
    });
    let core0 = pool.register_current_thread(0).unwrap();
    let from_core0: Vec<PoolBuf> = (0..100).map(|_| pool.alloc(1000)).collect();
    let (held, freed) = on_core_1(&pool, move |pool, _| {
        // Core 1 fills its lists with 200 KiB of its own blocks first.
        drop((0..200).map(|_| pool.alloc(1000)).collect::<Vec<_>>());
        let held = pool.snapshot().cores[1].bytes_cached;
        drop(from_core0);
        (held, pool.snapshot().cores[1].clone())
    });
    assert_eq!(held, 200 * 1024);
    assert_eq!(
        freed.bytes_cached,
        (SLAB_SIZE / 1024 * 1024) as i64,
        "up to the cap"
    );
    assert_eq!(freed.local_frees, 200 + 56);
    assert_eq!(
        freed.overflow_frees, 44,
        "the rest went the allocator's way"
    );
    // Core 0's next misses take its returned blocks back instead of carving new ones.
    let slab_before = pool.snapshot().cores[0].slab_bytes;
    let again: Vec<PoolBuf> = (0..44).map(|_| pool.alloc(1000)).collect();
    let c0 = pool.snapshot().cores[0].clone();
    assert_eq!(c0.reclaimed, 44);
    assert_eq!(c0.slab_bytes, slab_before);
    drop((again, core0));
    pool.drain_orphans();
    pool.snapshot().check_balanced().unwrap();
}

#[test]
fn remote_frees_are_handed_over_in_batches_and_at_end_of_batch() {
    let config = Config::new(Strategy::PerCore, 2);
    let batch = config.remote_batch();
    assert_eq!(batch, 16, "defer_max 64 / 4");
    let pool = Pool::new(config);
    let core0 = pool.register_current_thread(0).unwrap();
    let bufs: Vec<PoolBuf> = (0..batch + 5).map(|_| pool.alloc(64)).collect();
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let pool1 = pool.clone();
    let t = thread::spawn(move || {
        let core1 = pool1.register_current_thread(1).unwrap();
        drop(bufs);
        tx.send(()).unwrap();
        go_rx.recv().unwrap();
        core1.drain(); // core 1's end of batch hands the last 5 over
        tx.send(()).unwrap();
        go_rx.recv().unwrap();
    });
    rx.recv().unwrap();
    assert_eq!(
        core0.pending(),
        batch,
        "one full batch handed over, 5 still held"
    );
    assert_eq!(pool.snapshot().cores[1].deferred_frees, batch as u64);
    go_tx.send(()).unwrap();
    rx.recv().unwrap();
    assert_eq!(core0.pending(), batch + 5);
    assert_eq!(core0.drain(), batch + 5);
    go_tx.send(()).unwrap();
    t.join().unwrap();
    drop(core0);
    pool.snapshot().check_balanced().unwrap();
}

#[test]
fn a_pool_dropped_with_buffers_out_lives_until_the_last_is_freed() {
    for strategy in Strategy::ALL {
        let pool = pool(strategy);
        let core = pool.register_current_thread(0).unwrap();
        let bufs: Vec<PoolBuf> = (0..3).map(|_| pool.alloc_copy(b"outlives")).collect();
        let big = pool.alloc(100_000);
        drop((core, pool));
        // The pool is closed; the buffers still read, and freeing them (here and on another
        // thread) tears it down exactly once (valgrind's memcheck of this test sees no leak
        // and no invalid access).
        assert!(bufs.iter().all(|b| &b[..] == b"outlives"));
        let mut bufs = bufs;
        let last = bufs.pop().unwrap();
        thread::spawn(move || drop(last)).join().unwrap();
        drop((bufs, big));
    }
}

#[test]
fn large_and_unregistered_allocations_use_the_allocator_and_are_counted() {
    let pool = pool(Strategy::PerCore);
    let stranger = pool.alloc(10);
    assert!(!stranger.is_pooled() && stranger.origin().is_none());
    drop(stranger);
    assert_eq!(pool.snapshot().unregistered_allocs, 1);

    let core = pool.register_current_thread(0).unwrap();
    let big = pool.alloc(64 * 1024 + 1);
    assert!(!big.is_pooled());
    assert_eq!(big.len(), 64 * 1024 + 1);
    drop(big);
    drop(core);
    let s = pool.snapshot();
    assert_eq!((s.cores[0].large_allocs, s.cores[0].overflow_frees), (1, 1));
    s.check_balanced().unwrap();
}

#[test]
fn registration_is_one_thread_per_core_and_one_core_per_thread() {
    let pool = pool(Strategy::PerCore);
    assert_eq!(
        pool.register_current_thread(5).unwrap_err(),
        RegisterError::NoSuchCore { core: 5, cores: 2 }
    );
    let core0 = pool.register_current_thread(0).unwrap();
    assert_eq!(
        pool.register_current_thread(1).unwrap_err(),
        RegisterError::ThreadRegistered
    );
    let other = pool.clone();
    let taken = thread::spawn(move || other.register_current_thread(0).map(|_| ()))
        .join()
        .unwrap();
    assert_eq!(taken, Err(RegisterError::CoreTaken { core: 0 }));
    drop(core0);
    assert!(
        pool.register_current_thread(0).is_ok(),
        "free again once the owner left"
    );
}

#[test]
fn bytes_views_free_through_the_strategy_when_the_last_clone_drops() {
    let pool = pool(Strategy::PerCore);
    let core0 = pool.register_current_thread(0).unwrap();
    let bytes = pool.alloc_copy(b"key=value").into_bytes();
    let value = bytes.slice(4..);
    drop(bytes);
    assert_eq!(
        pool.snapshot().cores[0].outstanding,
        1,
        "a slice keeps the buffer alive"
    );
    on_core_1(&pool, move |_, _| {
        assert_eq!(&value[..], b"value");
        drop(value);
    });
    assert_eq!(pool.snapshot().cores[1].deferred_frees, 1);
    assert_eq!(core0.drain(), 1);
    drop(core0);
    pool.snapshot().check_balanced().unwrap();
}

#[test]
fn reused_blocks_expose_only_initialised_bytes() {
    let pool = pool(Strategy::Local);
    let _core = pool.register_current_thread(0).unwrap();
    drop(pool.alloc_copy(&[0xab; 100]));
    let zeroed = pool.alloc(300); // the 1 KiB class: a fresh block
    assert!(zeroed.iter().all(|&b| b == 0));
    drop(zeroed);
    drop(pool.alloc_copy(&[0xcd; 200])); // 256-byte class, reused
    let again = pool.alloc(250);
    assert!(
        again.iter().all(|&b| b == 0),
        "alloc zeroes what it exposes, even on reuse"
    );
    let copy = pool.alloc_copy(b"fresh");
    assert_eq!(&copy[..], b"fresh");
}

#[test]
fn about_one_free_in_sample_every_is_timed_on_the_freeing_core() {
    let pool = pool(Strategy::PerCore);
    let every = krpc_pool::FREE_SAMPLE_EVERY as u64;
    let n = 1000 * every;
    let snap = on_core_1(&pool, move |pool, _| {
        for _ in 0..n {
            drop(pool.alloc(64));
        }
        pool.snapshot()
    });
    // Each free is sampled with probability 1/every: the count is Binomial(1000 every,
    // 1/every), mean 1000, sd ~31.6. The generator is seeded per core: deterministic.
    let timed = snap.cores[1].free_samples();
    assert!((850..=1150).contains(&timed), "{timed} timed frees");
    assert!(snap.cores[1].free_ns_sum > 0);
    assert!(snap.cores[1].free_path_ns() > 0.0);
    assert_eq!(snap.cores[0].free_samples(), 0, "counted where freed");
}
