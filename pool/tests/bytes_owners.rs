//! `PoolBuf::into_bytes` hands a buffer to `bytes` under one of two owners (a two-word owner
//! for a slab block without a connection, the whole `PoolBuf` otherwise). Whichever it took,
//! the last `Bytes` view dropped must free the buffer exactly as dropping the `PoolBuf` would
//! have: same counters, on the same cores, for every strategy and every kind of buffer.

use std::thread;

use bytes::Bytes;
use krpc_pool::{Config, CoreStats, Pool, PoolBuf, Snapshot, Strategy};

/// The kinds of buffer a pool hands out.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A slab block from the pool (the codec's case).
    Block,
    /// A slab block from a connection's handle (counted by the connection under per-conn).
    ConnBlock,
    /// Larger than the largest class: the allocator's memory.
    Large,
}

const KINDS: [Kind; 3] = [Kind::Block, Kind::ConnBlock, Kind::Large];

fn contents(kind: Kind, i: u8) -> Vec<u8> {
    let len = match kind {
        Kind::Block | Kind::ConnBlock => 300,
        Kind::Large => 100_000,
    };
    (0..len).map(|j| (j as u8).wrapping_add(i)).collect()
}

/// What gets dropped: the buffer itself, or a view of its tail (the whole `Bytes` dropped
/// first, so the view is the last one).
enum Held {
    Buf(PoolBuf, Vec<u8>),
    View(Bytes, Vec<u8>),
}

impl Held {
    fn check_and_drop(self) {
        match self {
            Held::Buf(buf, want) => assert_eq!(&buf[..], &want[..], "a buffer shows its bytes"),
            Held::View(view, want) => assert_eq!(&view[..], &want[10..], "a view shows its bytes"),
        }
    }
}

/// Four buffers of `kind` allocated on core 0: two freed there, two on core 1; then the
/// connection closes and core 0 drains. The counters, with the sampled timings left out.
fn run(strategy: Strategy, kind: Kind, as_bytes: bool) -> Snapshot {
    let pool = Pool::new(Config::new(strategy, 2));
    let core0 = pool.register_current_thread(0).unwrap();
    let conn = pool.conn();
    let mut held: Vec<Held> = (0..4)
        .map(|i| {
            let want = contents(kind, i);
            let buf = match kind {
                Kind::Block | Kind::Large => pool.alloc_copy(&want),
                Kind::ConnBlock => conn.alloc_copy(&want),
            };
            assert_eq!(buf.is_pooled(), !matches!(kind, Kind::Large));
            if as_bytes {
                let whole = buf.into_bytes();
                let view = whole.slice(10..);
                drop(whole);
                Held::View(view, want)
            } else {
                Held::Buf(buf, want)
            }
        })
        .collect();
    let remote = held.split_off(2);
    let pool1 = pool.clone();
    thread::spawn(move || {
        let core1 = pool1.register_current_thread(1).unwrap();
        remote.into_iter().for_each(Held::check_and_drop);
        drop(core1);
    })
    .join()
    .unwrap();
    held.into_iter().for_each(Held::check_and_drop);
    drop(conn);
    core0.drain();
    drop(core0);
    let mut snap = pool.snapshot();
    snap.check_balanced().unwrap();
    for core in &mut snap.cores {
        *core = CoreStats {
            free_ns_buckets: Default::default(),
            free_ns_sum: 0,
            drain_ns: 0,
            ..core.clone()
        };
    }
    snap
}

#[test]
fn a_buffer_freed_through_bytes_is_freed_as_the_buffer_would_be() {
    for strategy in Strategy::ALL {
        for kind in KINDS {
            let direct = run(strategy, kind, false);
            let through_bytes = run(strategy, kind, true);
            assert_eq!(direct, through_bytes, "{strategy} {kind:?}");
            let total = direct.total();
            assert_eq!(total.allocs, 4, "{strategy} {kind:?}");
            assert_eq!(total.outstanding, 0, "{strategy} {kind:?}");
        }
    }
}
