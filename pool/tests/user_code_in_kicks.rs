//! A kick runs user code (the owner's `Waker`), and so do the wakers a pool stores. None of it
//! may run while the pool's state is in use: a waker that drops the freeing thread's
//! `CoreHandle`, the pool's last handle, or that panics, must find the pool consistent. These
//! cases came from a review; under `scripts/test` they also run in valgrind's memcheck, which
//! would report the use after free the first one used to cause.

use std::{
    cell::RefCell,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Barrier,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Wake, Waker},
    thread,
};

use krpc_pool::{Config, CoreHandle, Pool, PoolBuf, Strategy};

fn per_core(cores: usize, defer_max: usize) -> Pool {
    Pool::new(Config {
        defer_max,
        ..Config::new(Strategy::PerCore, cores)
    })
}

thread_local! {
    /// The server keeps its core handle in a thread-local like this one.
    static HANDLE: RefCell<Option<CoreHandle>> = const { RefCell::new(None) };
}

/// When woken: lets the main thread drop core 0 and its `Pool`, then gives up the waking
/// thread's core, whose handle is by then the pool's last.
struct DropsTheFreersHandle {
    kicked: Arc<Barrier>,
    owner_gone: Arc<Barrier>,
    woken: AtomicUsize,
}

impl Wake for DropsTheFreersHandle {
    fn wake(self: Arc<Self>) {
        if self.woken.fetch_add(1, Ordering::SeqCst) == 0 {
            self.kicked.wait();
            self.owner_gone.wait();
            HANDLE.with(|h| h.borrow_mut().take());
        }
    }
}

#[test]
fn a_waker_that_drops_the_freeing_cores_handle_and_the_pool_is_safe() {
    // defer_max 2: batches of one, half is one, so the first cross-core free kicks.
    let pool = per_core(2, 2);
    let core0 = pool.register_current_thread(0).unwrap();
    let (kicked, owner_gone) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let waker = Arc::new(DropsTheFreersHandle {
        kicked: kicked.clone(),
        owner_gone: owner_gone.clone(),
        woken: AtomicUsize::new(0),
    });
    core0.register_waker(&Waker::from(waker.clone()));
    let buf = core0.alloc(8);
    let p1 = pool.clone();
    let freer = thread::spawn(move || {
        HANDLE.with(|h| *h.borrow_mut() = Some(p1.register_current_thread(1).unwrap()));
        drop(p1);
        // The free hands the buffer to core 0 and kicks it; the waker (run after the free is
        // done with the pool) drops this thread's handle, the pool's last.
        drop(buf);
        HANDLE.with(|h| assert!(h.borrow().is_none()));
    });
    // Once the kick is under way, core 0's owner leaves and the last `Pool` goes: the waker
    // core 1 runs was cloned before, and core 1's handle is now the pool's last.
    kicked.wait();
    drop(core0);
    drop(pool);
    owner_gone.wait();
    freer.join().unwrap();
    assert_eq!(waker.woken.load(Ordering::SeqCst), 1);
}

struct Panics;

impl Wake for Panics {
    fn wake(self: Arc<Self>) {
        panic!("a waker that panics");
    }
}

#[test]
fn a_waker_that_panics_while_a_core_is_given_up_leaves_the_pool_consistent() {
    // defer_max 8: batches of two, half is four.
    let pool = per_core(2, 8);
    let core0 = pool.register_current_thread(0).unwrap();
    core0.register_waker(&Waker::from(Arc::new(Panics)));
    let mut bufs: Vec<PoolBuf> = (0..4).map(|_| core0.alloc(8)).collect();
    let last = bufs.pop().unwrap();
    // Three single hand-overs from a thread that is no core: the list holds three, no kick.
    thread::spawn(move || drop(bufs)).join().unwrap();
    assert_eq!(core0.pending(), 3);
    let p1 = pool.clone();
    thread::spawn(move || {
        let core1 = p1.register_current_thread(1).unwrap();
        drop(last); // held in core 1's outgoing batch
        // Giving the core up hands the batch over, crosses half and kicks: the waker panics.
        let dropped = catch_unwind(AssertUnwindSafe(|| drop(core1)));
        assert!(dropped.is_err(), "the waker ran and panicked");
        // The core was given up before the waker ran: this thread may be a core again.
        let again = p1.register_current_thread(1).expect("core 1 is free again");
        drop(again);
    })
    .join()
    .unwrap();
    assert_eq!(core0.drain(), 4);
    drop(core0);
    pool.snapshot().check_balanced().unwrap();
}

struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn an_owner_that_leaves_takes_its_waker_with_it() {
    let pool = per_core(2, 2);
    let woken = Arc::new(Count(AtomicUsize::new(0)));
    let first = pool.register_current_thread(0).unwrap();
    first.register_waker(&Waker::from(woken.clone()));
    drop(first);
    // A new owner that registers no waker: a kick must not wake the departed one's task.
    let core0 = pool.register_current_thread(0).unwrap();
    let buf = core0.alloc(8);
    let p1 = pool.clone();
    thread::spawn(move || {
        let _core1 = p1.register_current_thread(1).unwrap();
        drop(buf);
    })
    .join()
    .unwrap();
    assert_eq!(pool.snapshot().cores[0].kicks, 1);
    assert_eq!(
        woken.0.load(Ordering::SeqCst),
        0,
        "the old waker was dropped"
    );
    assert_eq!(Arc::strong_count(&woken), 1);
    drop(core0);
}

#[test]
fn a_defer_max_past_what_a_list_can_count_is_clamped_and_still_kicks() {
    let pool = per_core(2, 1_000_000);
    assert_eq!(pool.config().defer_max, 65_534);
    let core0 = pool.register_current_thread(0).unwrap();
    let woken = Arc::new(Count(AtomicUsize::new(0)));
    core0.register_waker(&Waker::from(woken.clone()));
    let bufs: Vec<PoolBuf> = (0..40_000).map(|_| core0.alloc(64)).collect();
    let p1 = pool.clone();
    thread::spawn(move || {
        let _core1 = p1.register_current_thread(1).unwrap();
        drop(bufs);
    })
    .join()
    .unwrap();
    assert_eq!(
        woken.0.load(Ordering::SeqCst),
        1,
        "kicked at half of the clamped bound"
    );
    assert_eq!(core0.drain(), 40_000);
    drop(core0);
    pool.snapshot().check_balanced().unwrap();
}
