//! Draining: a core's end of batch (its outgoing batches handed over, its defer list brought
//! home), a core given up, and a connection's defer list under `per-conn`. Part of the free
//! path (`free.rs`), timed with it.

#![allow(unsafe_code)] // one of the pool's fenced unsafe parts (lib.rs)

use std::{task::Waker, time::Instant};

use crate::{
    SIZE_CLASSES,
    core::Core,
    free::{flush, return_block},
    list::{self, Chain, Node},
    pool::Inner,
    slab,
};

/// Wakers a drain owes to the cores it kicked; its caller wakes them once it is done with pool
/// state (a `Vec` allocates only when there is a kick).
pub(crate) type Kicks = Vec<Waker>;

impl Inner {
    /// End of batch on `core`: hands every outgoing batch over, then moves the buffers other
    /// cores handed back to the free lists. Returns how many it moved in; the wakers of the
    /// cores it kicked go to `kicks`. A drain that does any work is timed (it is part of the
    /// free path); an idle one costs two relaxed loads.
    ///
    /// # Safety
    /// The calling thread holds `core`'s claim.
    pub(crate) unsafe fn drain(&self, core: &Core, kicks: &mut Kicks) -> usize {
        let stats = &core.owner.stats;
        stats.drain_calls.add(1);
        if stats.outbox.get() == 0 && core.defer.len() == 0 {
            stats.drain_batch(0);
            return 0;
        }
        let start = Instant::now();
        for dest in 0..self.cores.len() {
            // SAFETY: owner-only state of our own core.
            if core.owner.outbox.with(|o| unsafe { (*o)[dest].len() }) > 0 {
                // SAFETY: our claim.
                kicks.extend(unsafe { flush(core, dest) });
            }
        }
        // SAFETY: our claim; the chain was taken off our own defer list.
        let n = unsafe { Self::home(core, core.defer.take_all()) };
        stats.drained.add(n as u64);
        stats.drain_batch(n);
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        stats.drain_ns.add(ns.saturating_sub(self.clock_ns));
        n
    }

    /// The owner leaves `core`: a last drain, then the defer list is closed, and what arrived
    /// before the close is taken home too. From the close on, hand-overs see the list closed
    /// in their own compare-and-swap and go to the returned list, so nothing is stranded on a
    /// list nobody drains.
    ///
    /// # Safety
    /// As for `drain`; the caller releases the claim afterwards.
    pub(crate) unsafe fn leave(&self, core: &Core, kicks: &mut Kicks) {
        // SAFETY: forwarded contract.
        unsafe { self.drain(core, kicks) };
        // SAFETY: as above; the chain was on our own defer list.
        let n = unsafe { Self::home(core, core.defer.close()) };
        core.owner.stats.drained.add(n as u64);
    }

    /// Puts a chain taken off `core`'s defer list on its free lists. Blocks on a core's defer
    /// list are from its own slabs (per-core hands a block only to its owner), so no cap check
    /// is needed. Returns how many.
    ///
    /// # Safety
    /// The calling thread holds `core`'s claim and owns `chain`, taken off `core`'s list.
    unsafe fn home(core: &Core, chain: Chain) -> usize {
        let mut n = 0;
        for node in chain {
            // SAFETY: the contract; the block's slab is alive while the pool is.
            unsafe {
                let block = Node::into_block(node);
                core.push_free(slab::header_of(block).class, block);
            }
            n += 1;
        }
        n
    }

    /// Drains a connection's defer list into the calling thread's core (or, on a thread that
    /// is no core, the allocator's way). Counts against `conn_core` when there is no core.
    pub(crate) fn drain_conn(&self, list: &list::RemoteList, conn_core: usize) -> usize {
        let taken = list.take_all();
        let n = taken.len();
        let here = self.local_core();
        let mut trimmed = 0u64;
        for node in taken {
            // SAFETY: taken, so ours; pooled blocks of this pool.
            let block = unsafe { Node::into_block(node) };
            // SAFETY: as above.
            let header = unsafe { slab::header_of(block) };
            match here {
                Some(here)
                    if here.cached_bytes() + SIZE_CLASSES[header.class] <= here.owner.cap =>
                {
                    // SAFETY: `here` is the calling thread's own core.
                    unsafe { here.push_free(header.class, block) };
                }
                _ => {
                    // SAFETY: unused block.
                    unsafe { return_block(header, block) };
                    trimmed += 1;
                }
            }
        }
        match here {
            Some(here) => {
                let s = &here.owner.stats;
                s.drained.add(n as u64);
                s.drain_trimmed.add(trimmed);
                s.drain_calls.add(1);
                s.drain_batch(n);
            }
            None => {
                let s = &self.cores[conn_core].shared.stats;
                s.drained.add(n as u64);
                s.drain_trimmed.add(trimmed);
                s.drain_calls.add(1);
                s.drain_batches[crate::stats::drain_bucket(n)].add(1);
            }
        }
        n
    }
}
