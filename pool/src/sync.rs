//! The loom shim: std atomics and cells normally, loom's under `--cfg krpc_loom` so the model
//! checker sees every access (tokio's `src/loom/` does the same). The cfg has its own name
//! because dependencies (bytes, among others) change behaviour under a plain `--cfg loom`.

#[cfg(krpc_loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{AtomicPtr, AtomicUsize, Ordering},
};

#[cfg(not(krpc_loom))]
pub(crate) use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// `std::cell::UnsafeCell` with loom's closure API, so one code path serves both builds.
#[cfg(not(krpc_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(krpc_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
