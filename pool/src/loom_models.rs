//! Loom models of every protocol of the pool, on the real code (`--cfg krpc_loom`: the `sync`
//! shim swaps in loom's atomics, mutex, `Arc`, cells and thread-locals). Each model is small —
//! two or three threads, a handful of buffers, `defer_max` of 1 to 4 — and loom runs it in
//! every interleaving it can tell apart (preemptions bounded, as tokio's models are). Links
//! inside free blocks are loom cells, so a missing happens-before edge between the thread
//! that freed a block and the one that reuses it is a reported causality violation; every
//! model ends by checking the books (`check_balanced`) and that the pool was freed once.
//!
//! | model | protocol |
//! |---|---|
//! | `remote_batch_is_drained_exactly_once` | a batch handed over with one CAS while the owner drains |
//! | `a_kick_wakes_the_owner_at_half` | kick at half of `defer_max`, waker under its mutex |
//! | `past_defer_max_frees_go_the_allocators_way` | overflow to the returned list, reclaimed on a miss |
//! | `the_owner_leaves_while_a_batch_arrives` | owner claim/release, orphan draining |
//! | `a_connection_closes_while_its_buffer_is_freed` | per-conn `closed` flag and its list |
//! | `the_pool_closes_while_a_foreign_thread_frees` | the pool's lifetime (close, settle, teardown) |
//! | `global_frees_race_with_allocations` | the global strategy's locked list |

use std::task::{Wake, Waker};

use loom::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
};

use crate::{Config, Pool, PoolBuf, Strategy};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.max_branches = 100_000;
    builder.check(move || {
        f();
        assert_eq!(
            crate::pool::teardowns(),
            1,
            "every pool of the model is freed exactly once"
        );
    });
}

fn pool(strategy: Strategy, cores: usize, defer_max: usize) -> Pool {
    Pool::new(Config {
        defer_max,
        ..Config::new(strategy, cores)
    })
}

/// Sends `bufs` to a thread registered as core 1, which frees them there.
fn free_on_core_1(pool: &Pool, bufs: Vec<PoolBuf>) -> thread::JoinHandle<()> {
    let pool = pool.clone();
    thread::spawn(move || {
        let core = pool.register_current_thread(1).unwrap();
        drop(bufs);

        // End of its batch: whatever it still holds for core 0 is handed over.
        core.drain();
    })
}

#[test]
fn remote_batch_is_drained_exactly_once() {
    model(|| {
        // defer_max 8: batches of 2, so the two frees are handed over with one CAS.
        let pool = pool(Strategy::PerCore, 2, 8);
        let core0 = pool.register_current_thread(0).unwrap();
        let bufs = vec![core0.alloc_copy(b"a"), core0.alloc_copy(b"b")];
        let freer = free_on_core_1(&pool, bufs);
        // The owner drains until both are home, with no other edge to the freer than the
        // list itself (a join would order everything and hide a weak ordering).
        let mut home = 0;
        while home < 2 {
            home += core0.drain();
            if home < 2 {
                thread::yield_now();
            }
        }
        // Reused: popping them follows links (loom cells) written on core 1.
        let again = [core0.alloc_copy(b"c"), core0.alloc_copy(b"d")];
        assert_eq!(
            pool.snapshot().cores[0].misses,
            2,
            "only the first two missed"
        );
        freer.join().unwrap();
        drop((again, core0));
        pool.snapshot().check_balanced().unwrap();
    });
}

#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

#[test]
fn a_kick_wakes_the_owner_at_half() {
    model(|| {
        // defer_max 2: one buffer is half; batches are single frees.
        let pool = pool(Strategy::PerCore, 2, 2);
        let core0 = pool.register_current_thread(0).unwrap();
        let flag = std::sync::Arc::new(Flag::default());
        core0.register_waker(&Waker::from(flag.clone()));
        let freer = free_on_core_1(&pool, vec![core0.alloc(8)]);
        // The owner sleeps until kicked, then drains what the kick announced.
        while !flag.0.load(Ordering::Acquire) {
            thread::yield_now();
        }
        assert_eq!(core0.drain(), 1);
        freer.join().unwrap();
        assert_eq!(pool.snapshot().cores[0].kicks, 1);
        drop(core0);
        pool.snapshot().check_balanced().unwrap();
    });
}

#[test]
fn past_defer_max_frees_go_the_allocators_way() {
    model(|| {
        // defer_max 1: the first free fills the list, the second goes to the returned list.
        let pool = pool(Strategy::PerCore, 2, 1);
        let core0 = pool.register_current_thread(0).unwrap();
        let freer = free_on_core_1(&pool, vec![core0.alloc(8), core0.alloc(8)]);
        while pool.snapshot().cores[1].overflow_frees == 0 {
            thread::yield_now();
        }
        // A miss takes the returned block back (following its link, written on core 1)
        // instead of carving a third, if its relaxed look at the returned list sees it;
        // otherwise it carves, and the block waits for the next miss.
        let third = core0.alloc(8);
        let s = pool.snapshot();
        assert_eq!(s.cores[0].misses, 3);
        assert!(s.cores[0].reclaimed <= 1);
        freer.join().unwrap();
        // Core 1's counters are its own relaxed stores: read them once it has finished.
        let s = pool.snapshot();
        assert_eq!(
            (s.cores[1].deferred_frees, s.cores[1].overflow_frees),
            (1, 1)
        );
        drop(third);
        core0.drain();
        drop(core0);
        pool.snapshot().check_balanced().unwrap();
    });
}

#[test]
fn the_owner_leaves_while_a_batch_arrives() {
    model(|| {
        let pool = pool(Strategy::PerCore, 2, 4);
        let core0 = pool.register_current_thread(0).unwrap();
        let freer = free_on_core_1(&pool, vec![core0.alloc(8)]);
        drop(core0); // unregisters: the hand-over finds the owner there or gone
        freer.join().unwrap();
        pool.drain_orphans();
        let s = pool.snapshot();
        assert_eq!(s.total().deferred_frees + s.total().overflow_frees, 1);
        s.check_balanced().unwrap();
    });
}

#[test]
fn a_connection_closes_while_its_buffer_is_freed() {
    model(|| {
        let pool = pool(Strategy::PerConn, 2, 4);
        let core0 = pool.register_current_thread(0).unwrap();
        let conn = pool.conn();
        let freer = free_on_core_1(&pool, vec![conn.alloc(8)]);
        drop(conn); // closes: the free lands on its list, or after the close, on core 1's
        freer.join().unwrap();
        drop(core0);
        pool.snapshot().check_balanced().unwrap();
    });
}

#[test]
fn the_pool_closes_while_a_foreign_thread_frees() {
    model(|| {
        let pool = pool(Strategy::PerCore, 1, 4);
        let core0 = pool.register_current_thread(0).unwrap();
        let bufs = vec![core0.alloc(8), core0.alloc(100_000)]; // a block and a heap buffer
        drop(core0);
        // A thread that is no core frees both while the last handle goes: whoever comes last
        // frees the pool (checked by `model`), and nobody touches it after.
        let freer = thread::spawn(move || drop(bufs));
        drop(pool);
        freer.join().unwrap();
    });
}

#[test]
fn global_frees_race_with_allocations() {
    model(|| {
        let pool = pool(Strategy::Global, 2, 4);
        let core0 = pool.register_current_thread(0).unwrap();
        let freer = free_on_core_1(&pool, vec![core0.alloc(8)]);
        let other = core0.alloc(8); // a hit if the free came first, else a miss
        freer.join().unwrap();
        drop((other, core0));
        let s = pool.snapshot();
        assert_eq!(s.total().local_frees, 2);
        s.check_balanced().unwrap();
    });
}
