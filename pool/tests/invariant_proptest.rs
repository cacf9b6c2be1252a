//! Random alloc/free sequences over three core threads, for every strategy: after the threads
//! finish and every core is drained, the books balance exactly.

use std::{sync::Barrier, thread};

use krpc_pool::{Config, Pool, PoolBuf, SLAB_SIZE, Strategy};
use proptest::prelude::*;
use proptest::strategy::Strategy as Generator;

#[derive(Clone, Debug)]
enum Op {
    /// Allocate this many bytes (up to past the largest class).
    Alloc(usize),
    /// Free the n-th live buffer this thread holds (modulo count).
    Free(usize),
    /// Hand the n-th live buffer to the next thread (freed there, later).
    Send(usize),
    Drain,
}

fn op() -> impl Generator<Value = Op> {
    prop_oneof![
        4 => (0usize..70_000).prop_map(Op::Alloc),
        3 => any::<usize>().prop_map(Op::Free),
        3 => any::<usize>().prop_map(Op::Send),
        1 => Just(Op::Drain),
    ]
}

fn run(
    strategy: Strategy,
    defer_max: usize,
    cap: usize,
    scripts: Vec<Vec<Op>>,
) -> Result<(), String> {
    let threads = scripts.len();
    let pool = Pool::new(Config {
        defer_max,
        cap_bytes_per_core: cap,
        ..Config::new(strategy, threads)
    });
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| std::sync::mpsc::channel::<PoolBuf>())
        .unzip();
    let barrier = Barrier::new(threads);
    thread::scope(|s| {
        for (core, (script, inbox)) in scripts.into_iter().zip(receivers).enumerate() {
            let (pool, barrier) = (&pool, &barrier);
            let next = senders[(core + 1) % threads].clone();
            s.spawn(move || {
                let handle = pool.register_current_thread(core).unwrap();
                let conn = pool.conn();
                let mut live: Vec<PoolBuf> = Vec::new();
                for op in script {
                    match op {
                        Op::Alloc(len) => {
                            let buf = conn.alloc(len);
                            assert_eq!(buf.len(), len);
                            live.push(buf);
                        }
                        Op::Free(i) if !live.is_empty() => drop(live.swap_remove(i % live.len())),
                        Op::Send(i) if !live.is_empty() => {
                            let _ = next.send(live.swap_remove(i % live.len()));
                        }
                        Op::Drain => {
                            handle.drain();
                            conn.drain();
                        }
                        _ => {}
                    }
                    while let Ok(buf) = inbox.try_recv() {
                        drop(buf);
                    }
                }
                drop(live);
                drop(conn);
                // Everyone has stopped sending before anyone empties its inbox for good.
                drop(next);
                barrier.wait();
                for buf in inbox.try_iter() {
                    drop(buf);
                }
                barrier.wait();
                handle.drain();
            });
        }
    });
    drop(senders);
    pool.drain_orphans();
    pool.snapshot().check_balanced()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64)
    ))]

    #[test]
    fn books_balance_for_every_strategy(
        strategy in prop::sample::select(Strategy::ALL.to_vec()),
        defer_max in 1usize..16,
        cap in prop::sample::select(vec![0usize, SLAB_SIZE, 4 * SLAB_SIZE]),
        scripts in prop::collection::vec(prop::collection::vec(op(), 0..60), 3),
    ) {
        run(strategy, defer_max, cap, scripts).map_err(TestCaseError::fail)?;
    }
}
