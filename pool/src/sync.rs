//! The loom shim: std's atomics, mutex, `Arc` and cells normally, loom's under `--cfg krpc_loom`
//! so the model checker sees every shared access of the pool (tokio's `src/loom/` does the
//! same). Nothing in the pool names `std::sync::atomic` or `std::sync::Mutex` directly: every
//! atomic goes through here. The cfg has its own name because dependencies (bytes, among
//! others) change behaviour under a plain `--cfg loom`.

#[cfg(krpc_loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicIsize, AtomicPtr, AtomicU64, AtomicUsize, Ordering},
    },
};

#[cfg(not(krpc_loom))]
pub(crate) use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicIsize, AtomicPtr, AtomicU64, AtomicUsize, Ordering},
};

/// Locks `mutex`, ignoring poisoning: the pool's critical sections only move list heads and
/// counts and cannot panic halfway, so a poisoned lock still guards consistent data.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(krpc_loom)]
    {
        mutex.lock().unwrap()
    }
    #[cfg(not(krpc_loom))]
    {
        mutex.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `std::cell::UnsafeCell` with loom's closure API, so one code path serves both builds. It is
/// `repr(transparent)`: without loom it costs nothing.
#[cfg(not(krpc_loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(krpc_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// A counter written by one thread only (the owner of the memory it lives in) and read by
/// others (snapshots). A relaxed load and store: a plain `mov` each, no locked instruction; it
/// is an atomic only so that a concurrent reader is not a data race.
#[derive(Debug, Default)]
pub(crate) struct OwnerCounter(AtomicU64);

impl OwnerCounter {
    #[inline(always)]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline(always)]
    pub(crate) fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    #[inline(always)]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter any thread may bump (`fetch_add`); kept off the hot paths.
#[derive(Debug, Default)]
pub(crate) struct SharedCounter(AtomicU64);

impl SharedCounter {
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
