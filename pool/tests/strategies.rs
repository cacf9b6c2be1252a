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

use krpc_pool::{Config, CoreHandle, Pool, PoolBuf, RegisterError, Strategy};

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
        let second = pool.alloc(100);
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
        (n * 1024) as i64,
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
fn memory_cap_bounds_each_core_and_overflow_is_counted() {
    let pool = Pool::new(Config {
        cap_bytes_per_core: 4096,
        ..Config::new(Strategy::Local, 1)
    });
    let core = pool.register_current_thread(0).unwrap();
    let bufs: Vec<PoolBuf> = (0..10).map(|_| pool.alloc(1000)).collect();
    drop(bufs);
    let s = pool.snapshot();
    assert_eq!(s.cores[0].bytes_cached, 4096, "four 1 KiB blocks fit");
    assert_eq!(s.cores[0].local_frees, 4);
    assert_eq!(s.cores[0].overflow_frees, 6);
    drop(core);
    s.check_balanced().unwrap();
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
fn one_free_in_sample_every_is_timed_on_the_freeing_core() {
    let pool = pool(Strategy::PerCore);
    let n = 10 * krpc_pool::FREE_SAMPLE_EVERY as usize;
    // A fresh thread: its sampling counter starts at zero.
    let snap = on_core_1(&pool, move |pool, _| {
        for _ in 0..n {
            drop(pool.alloc(64));
        }
        pool.snapshot()
    });
    let timed: u64 = snap.cores[1].free_ns_buckets.iter().sum();
    assert_eq!(timed, 10);
    assert!(snap.cores[1].free_ns_sum > 0);
    assert_eq!(snap.cores[0].free_ns_buckets.iter().sum::<u64>(), 0);
}
