//! The free path: what dropping a buffer does, by strategy, and the drains that bring deferred
//! buffers home. A block's pool, owning core and class come from its slab header; the freeing
//! thread's core from one thread-local read.
//!
//! | strategy | free on the owning core | free on another core |
//! |---|---|---|
//! | `global` | the shared list, under its lock | the same |
//! | `local` | the core's own list | the freeing core's list (the block stays there) |
//! | `per-conn` | the connection's defer list | the same |
//! | `per-core` | the core's own list | the freeing core's outgoing batch for the owner, handed over with one CAS per batch |
//!
//! Past a bound (the memory cap, a full defer list) or with nobody to give it to, a block goes
//! the allocator's way: onto its owning core's returned list, reclaimed on that core's next
//! miss (the user-space `kfree` from another cpu, which lands on the slab's own free list).

#![allow(unsafe_code)] // one of the pool's fenced unsafe parts (lib.rs)

use std::{ptr::NonNull, task::Waker, time::Instant};

pub(crate) use crate::drain::Kicks;
use crate::{
    SIZE_CLASSES, Strategy,
    conn::ConnRef,
    core::Core,
    list::{self, Chain, Node},
    pool::{Inner, current},
    slab::{self, SlabHeader},
};

/// Frees a pooled block (a `PoolBuf` drop).
///
/// Inlined into every drop is only the common case under `per-core`: the block freed on the
/// core that allocated it, and not drawn for timing. It is a push on the core's own list and
/// one owner counter. Everything else (other strategies, cross-core frees, timed frees, frees
/// off any core) is one call away in [`free_block_slow`], so that the hot drop carries neither
/// its frame nor its code.
///
/// # Safety
/// `block` is an outstanding block of a pool, allocated on core `origin`; it is not used
/// again.
#[inline(always)]
pub(crate) unsafe fn free_block(block: NonNull<u8>, origin: usize, conn: Option<ConnRef>) {
    // SAFETY: the block is outstanding, so its slab (and pool) are alive (see pool.rs).
    let header = unsafe { slab::header_of(block) };
    // SAFETY: a non-null CURRENT is a live core of an open pool (see `Inner::local_core`).
    if let Some(here) = unsafe { current().as_ref() }
        // The slab's own core is this thread's: same pool, and the block is back home.
        && std::ptr::eq(here, header.core.as_ptr())
        && here.owner.strategy == Strategy::PerCore
    {
        // SAFETY: owner-only state of the calling thread's own core.
        let untimed = here.owner.sample.with_mut(|s| unsafe {
            // `left` reaching 0 is a timed free: left to the slow path, which counts it.
            let untimed = (*s).left > 1;
            if untimed {
                (*s).left -= 1;
            }
            untimed
        });
        if untimed {
            // SAFETY: forwarded contract; `here` is the block's own core, ours.
            unsafe { own_free(here, header, block) };
            return;
        }
    }
    // SAFETY: forwarded contract.
    unsafe { free_block_slow(header, block, origin, conn) }
}

/// [`free_block`] for every case but the inlined one.
///
/// # Safety
/// As for `free_block`; `header` is the block's slab header.
#[inline(never)]
unsafe fn free_block_slow(
    header: &SlabHeader,
    block: NonNull<u8>,
    origin: usize,
    conn: Option<ConnRef>,
) {
    // SAFETY: a non-null CURRENT is a live core of an open pool (see `Inner::local_core`).
    let kick = match unsafe { current().as_ref() } {
        Some(here) if here.owner.pool == header.pool => {
            // SAFETY: owner-only state of the calling thread's own core.
            let left = here.owner.sample.with_mut(|s| unsafe {
                (*s).left = (*s).left.saturating_sub(1);
                (*s).left
            });
            if left != 0 {
                // SAFETY: forwarded contract; `here` is ours.
                unsafe { core_free(here, header, block, origin, conn) }
            } else {
                // SAFETY: as above.
                unsafe { timed_free(here, header, block, origin, conn) }
            }
        }
        // SAFETY: forwarded contract; the header is copied: on a closed pool the free may
        // release the slab it lives in.
        _ => unsafe { foreign_free(*header, block, origin, conn) },
    };
    // A kick wakes the owner only now, when this free touches no pool state any more.
    if let Some(waker) = kick {
        waker.wake();
    }
}

/// Under `per-core`, a block freed on the core that allocated it (a core only allocates its own
/// blocks there): never deferred, no cap check (a core's own blocks never exceed its slab
/// memory, which the cap bounds).
///
/// # Safety
/// `block` is an unused block of the slab `header` heads, and that slab's core is `here`,
/// whose claim the calling thread holds.
#[inline(always)]
unsafe fn own_free(here: &Core, header: &SlabHeader, block: NonNull<u8>) {
    // SAFETY: the contract: our claim; the block is unused and of its slab's class.
    unsafe { here.push_free(header.class, block) };
    here.owner.stats.own_frees.add(1);
}

/// A free on a core of the block's pool, by strategy. Returns the owner's waker when the free kicked it (the caller wakes it last).
///
/// # Safety
/// As for `free_block`; the calling thread holds `here`'s claim.
#[inline(always)]
#[must_use]
unsafe fn core_free(
    here: &Core,
    header: &SlabHeader,
    block: NonNull<u8>,
    origin: usize,
    conn: Option<ConnRef>,
) -> Option<Waker> {
    let stats = &here.owner.stats;
    if here.owner.strategy == Strategy::PerCore && std::ptr::eq(here, header.core.as_ptr()) {
        // SAFETY: forwarded contract; `here` is the block's own core, ours.
        unsafe { own_free(here, header, block) };
        return None;
    }
    stats.freed_for[origin].add(1);
    match here.owner.strategy {
        // SAFETY: forwarded contract.
        Strategy::PerCore => return unsafe { defer_out(here, header, block) },
        Strategy::PerConn => match conn {
            Some(conn) if !conn.closed() => {
                // SAFETY: the block is unused.
                let pushed = unsafe { conn.push(block, here.owner.defer_max) };
                if pushed {
                    stats.deferred_frees.add(1);
                } else {
                    // SAFETY: refused, still ours.
                    unsafe { return_block(header, block) };
                    stats.overflow_frees.add(1);
                }
            }
            // SAFETY: forwarded contract.
            _ => unsafe { keep_here(here, header, block) },
        },
        // SAFETY: forwarded contract.
        Strategy::Local => unsafe { keep_here(here, header, block) },
        Strategy::Global => {
            // SAFETY: the block's pool outlives this call (the block is outstanding).
            let pool = unsafe { header.pool.as_ref() };
            // SAFETY: the block is unused.
            if unsafe { global_free(pool, header, block) } {
                stats.local_frees.add(1);
            } else {
                stats.overflow_frees.add(1);
            }
        }
    }
    None
}

/// One free in `FREE_SAMPLE_EVERY` (on average, independently drawn): timed.
///
/// # Safety
/// As for `core_free`.
#[cold]
#[inline(never)]
#[must_use]
unsafe fn timed_free(
    here: &Core,
    header: &SlabHeader,
    block: NonNull<u8>,
    origin: usize,
    conn: Option<ConnRef>,
) -> Option<Waker> {
    // The next gap is drawn first, so the sampler is consistent whatever the free does.
    // SAFETY: owner-only state of our own core.
    here.owner
        .sample
        .with_mut(|s| unsafe { (*s).left = (*s).gap() });
    let start = Instant::now();
    // SAFETY: forwarded contract.
    let kick = unsafe { core_free(here, header, block, origin, conn) };
    let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: our own core's pool is open while we are registered.
    let clock = unsafe { here.owner.pool.as_ref() }.clock_ns;
    here.owner.stats.free_sample(ns.saturating_sub(clock));
    kick
}

/// `local`, and `per-conn` without a live connection: the freeing core keeps the block, up to
/// its memory cap.
///
/// # Safety
/// As for `core_free`.
unsafe fn keep_here(here: &Core, header: &SlabHeader, block: NonNull<u8>) {
    let stats = &here.owner.stats;
    if here.fits(header.class) {
        // SAFETY: our claim; the block is unused.
        unsafe { here.push_free(header.class, block) };
        stats.local_frees.add(1);
    } else {
        // SAFETY: the block is unused.
        unsafe { return_block(header, block) };
        stats.overflow_frees.add(1);
    }
}

/// `per-core`, freed on another core: into this core's outgoing batch for the owner, handed
/// over when it holds `batch` buffers or at this core's end of batch.
///
/// # Safety
/// As for `core_free`.
#[inline(always)]
#[must_use]
unsafe fn defer_out(here: &Core, header: &SlabHeader, block: NonNull<u8>) -> Option<Waker> {
    let dest = header.core_index;
    // SAFETY: the block is unused: it may become a node.
    let node = unsafe { Node::write(block) };
    // SAFETY: owner-only state of our own core; the node is ours.
    let queued = here.owner.outbox.with_mut(|o| unsafe {
        (*o)[dest].push(node);
        (*o)[dest].len()
    });
    here.owner.stats.outbox.add(1);
    if queued >= here.owner.batch {
        // SAFETY: our claim.
        unsafe { flush(here, dest) }
    } else {
        None
    }
}

/// Hands this core's batch for `dest` over; returns `dest`'s waker if it was kicked.
///
/// # Safety
/// The calling thread holds `here`'s claim.
#[inline(never)]
#[must_use]
pub(crate) unsafe fn flush(here: &Core, dest: usize) -> Option<Waker> {
    // SAFETY: owner-only state of our own core.
    let chain = here
        .owner
        .outbox
        .with_mut(|o| unsafe { (*o)[dest].take_all() });
    let n = chain.len() as u64;
    let stats = &here.owner.stats;
    stats.outbox.sub(n);
    // SAFETY: our core's pool is open while we hold its claim.
    let pool = unsafe { here.owner.pool.as_ref() };
    // SAFETY: the chain's nodes are ours.
    let (pushed, kick) = unsafe { hand_over(&pool.cores[dest], chain, here.owner.defer_max) };
    stats.deferred_frees.add(pushed as u64);
    stats.overflow_frees.add(n - pushed as u64);
    kick
}

/// Pushes `chain` (blocks owned by `target`) on `target`'s defer list, up to `defer_max`; the
/// rest, or everything when the list is closed (no owner to drain it), goes to its returned
/// list. Returns how many were deferred, and `target`'s waker when the push crossed half of
/// `defer_max` (a kick: the caller wakes it once it is done with pool state).
///
/// # Safety
/// The chain's nodes are owned by the caller and belong to `target`'s slabs.
#[must_use]
pub(crate) unsafe fn hand_over(
    target: &Core,
    chain: Chain,
    defer_max: usize,
) -> (usize, Option<Waker>) {
    // One CAS: it publishes the chain, checks the bound and sees a closed list at once.
    // SAFETY: the chain is ours.
    let outcome = unsafe { target.defer.push(chain, defer_max) };
    if outcome.rest.len() > 0 {
        // SAFETY: refused, still ours.
        unsafe { target.returned.push(outcome.rest) };
    }
    // The kernel sends its IPI when the list reaches half of skb_defer_max: once per crossing.
    let half = (defer_max.min(crate::list::MAX_LEN) / 2).max(1);
    let kick =
        (outcome.pushed > 0 && outcome.before < half && outcome.before + outcome.pushed >= half)
            .then(|| target.kick())
            .flatten();
    (outcome.pushed, kick)
}

/// Sends an unused block the allocator's way: its owning core's returned list.
///
/// # Safety
/// `block` is an unused block of the slab `header` heads.
pub(crate) unsafe fn return_block(header: &SlabHeader, block: NonNull<u8>) {
    // SAFETY: the block is unused; the owning core lives as long as the pool, which is alive
    // while the block was outstanding.
    unsafe {
        let node = Node::write(block);
        header.core.as_ref().returned.push(list::single(node));
    }
}

/// `global`: onto the shared list if under its cap (true), else the allocator's way (false).
///
/// # Safety
/// `block` is an unused block of the slab `header` heads, of `pool`.
unsafe fn global_free(pool: &Inner, header: &SlabHeader, block: NonNull<u8>) -> bool {
    let size = SIZE_CLASSES[header.class];
    let mut global = crate::sync::lock(&pool.global);
    if global.bytes + size <= pool.global_cap {
        // SAFETY: the block is unused; under the lock the list is ours.
        unsafe { global.lists[header.class].push(Node::write(block)) };
        global.bytes += size;
        true
    } else {
        drop(global);
        // SAFETY: the block is unused.
        unsafe { return_block(header, block) };
        false
    }
}

/// A free on a thread that is no core of the block's pool. Returns the owner's waker when the
/// free kicked it. `header` is a copy: on a closed pool this free may release the slab it was
/// read from.
///
/// # Safety
/// As for `free_block`.
#[cold]
#[inline(never)]
#[must_use]
unsafe fn foreign_free(
    header: SlabHeader,
    block: NonNull<u8>,
    origin: usize,
    conn: Option<ConnRef>,
) -> Option<Waker> {
    let header = &header;
    // SAFETY: the block is outstanding, so its pool is alive at least until we say so below.
    let pool = unsafe { header.pool.as_ref() };
    if !pool.enter_foreign() {
        // A per-conn buffer's connection holds the pool open, so no connection here.
        debug_assert!(conn.is_none());
        drop(conn);
        // SAFETY: the block was outstanding and is not touched again; neither is `pool`.
        unsafe { pool.closed_free() };
        return None;
    }
    let stats = &pool.cores[origin].shared.stats;
    stats.origin_frees.add(1);
    let mut kick = None;
    match (pool.config.strategy, conn) {
        (Strategy::PerCore, _) => {
            // SAFETY: the block is unused.
            let chain = unsafe { list::single(Node::write(block)) };
            // SAFETY: the chain is ours and belongs to the header's core.
            let (pushed, k) =
                unsafe { hand_over(header.core.as_ref(), chain, pool.config.defer_max) };
            kick = k;
            if pushed == 1 {
                stats.deferred_frees.add(1);
            } else {
                stats.overflow_frees.add(1);
            }
        }
        (Strategy::PerConn, Some(conn)) if !conn.closed() => {
            // SAFETY: the block is unused.
            if unsafe { conn.push(block, pool.config.defer_max) } {
                stats.deferred_frees.add(1);
            } else {
                // SAFETY: refused, still ours.
                unsafe { return_block(header, block) };
                stats.overflow_frees.add(1);
            }
            // The connection (perhaps its last reference) goes before we leave: its drop may
            // release a pool handle.
            drop(conn);
        }
        (Strategy::Global, _) => {
            // SAFETY: the block is unused.
            if unsafe { global_free(pool, header, block) } {
                stats.local_frees.add(1);
            } else {
                stats.overflow_frees.add(1);
            }
        }
        // `local` (or a closed connection): a thread with no list of its own.
        (_, conn) => {
            // SAFETY: the block is unused.
            unsafe { return_block(header, block) };
            stats.overflow_frees.add(1);
            drop(conn);
        }
    }
    // SAFETY: paired with the `enter_foreign` above; `pool` is not used after.
    unsafe { pool.leave_foreign() };
    kick
}

/// Frees a heap buffer's memory's accounting (the memory itself is already freed): counted
/// against `origin` of `pool` as a free to the allocator.
///
/// # Safety
/// The buffer was outstanding in `pool` (allocated on core `origin`).
pub(crate) unsafe fn count_heap_free(pool: NonNull<Inner>, origin: usize) {
    // SAFETY: a non-null CURRENT is a live core of an open pool.
    if let Some(here) = unsafe { current().as_ref() }
        && here.owner.pool == pool
    {
        here.owner.stats.freed_for[origin].add(1);
        here.owner.stats.overflow_frees.add(1);
        return;
    }
    // SAFETY: the buffer was outstanding, so the pool is alive until we say so.
    let pool = unsafe { pool.as_ref() };
    if !pool.enter_foreign() {
        // SAFETY: as in `foreign_free`.
        return unsafe { pool.closed_free() };
    }
    let stats = &pool.cores[origin].shared.stats;
    stats.origin_frees.add(1);
    stats.overflow_frees.add(1);
    // SAFETY: paired with the `enter_foreign` above.
    unsafe { pool.leave_foreign() };
}
