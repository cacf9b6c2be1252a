//! Which pool core the calling thread is, and its owner side of the pool: registered when a
//! runtime thread starts, drained when it parks (the end of its batch, where the kernel drains
//! its defer list at the end of `net_rx_action`) and when another core kicks it.

use std::{
    cell::{Cell, RefCell},
    future::poll_fn,
    task::Poll,
};

use krpc_pool::{CoreHandle, Pool, RegisterError};

thread_local! {
    static HANDLE: RefCell<Option<CoreHandle>> = const { RefCell::new(None) };
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Makes the calling thread core `core` of `pool`, until [`unregister`] or the thread ends.
pub(crate) fn register(pool: &Pool, core: usize) -> Result<(), RegisterError> {
    let handle = pool.register_current_thread(core)?;
    HANDLE.set(Some(handle));
    INDEX.set(Some(core));
    Ok(())
}

/// Gives the core back (drains it one last time).
pub(crate) fn unregister() {
    INDEX.set(None);
    HANDLE.take();
}

/// The calling thread's core, if it is one.
pub(crate) fn current() -> Option<usize> {
    INDEX.get()
}

/// End of batch: moves buffers other cores freed for this core back onto its lists.
pub(crate) fn drain() {
    HANDLE.with_borrow(|handle| {
        if let Some(handle) = handle {
            handle.drain();
        }
    });
}

/// Answers kicks: another core that fills this core's defer list to half wakes this task,
/// which drains at once instead of at the next park. Runs forever; spawn it on the core's own
/// (current-thread) runtime, where it is dropped with the runtime.
pub(crate) async fn answer_kicks() {
    poll_fn(|cx| {
        HANDLE.with_borrow(|handle| {
            if let Some(handle) = handle {
                handle.register_waker(cx.waker());
                handle.drain();
            }
        });
        Poll::<()>::Pending
    })
    .await
}
