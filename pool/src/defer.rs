//! The defer list: a lock-free multi-producer stack that its owner empties in one swap, like the
//! kernel's per-cpu `defer_list` (there under a spinlock). Freers push from any thread; only the
//! owner takes, and it always takes everything, so the ABA problem of a popping Treiber stack
//! cannot arise. Nodes are intrusive: they live in the memory of the freed buffer itself.

#![allow(unsafe_code)] // this module is one of the pool's fenced unsafe parts (lib.rs)

use std::ptr::{self, NonNull};

use crate::sync::{AtomicPtr, AtomicUsize, Ordering, UnsafeCell};

/// Link and payload of a deferred buffer, written at the start of the buffer's own memory.
#[derive(Debug)]
pub(crate) struct Node {
    next: UnsafeCell<*mut Node>,
    /// Written by the freer before the push, read by the drainer after the take: what the
    /// drainer needs to put the buffer back (its size class).
    payload: UnsafeCell<usize>,
}

impl Node {
    pub(crate) fn new(payload: usize) -> Self {
        Self {
            next: UnsafeCell::new(ptr::null_mut()),
            payload: UnsafeCell::new(payload),
        }
    }
}

/// Outcome of [`DeferList::try_push`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// On the list, which now holds `len` nodes (this one included).
    Queued { len: usize },
    /// The list already held `max` nodes: not pushed, the caller keeps the node.
    Full,
}

#[derive(Debug)]
pub(crate) struct DeferList {
    head: AtomicPtr<Node>,
    /// Nodes pushed and not yet taken. Reserved *before* the push and released *after* the
    /// take, so it never reads below the real length (no underflow in between).
    len: AtomicUsize,
}

impl DeferList {
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
            len: AtomicUsize::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Pushes `node` unless the list already holds `max` nodes.
    ///
    /// # Safety
    /// `node` must point to a valid, initialised `Node` that nothing else references; on
    /// `Queued`, ownership passes to the list (and then to whoever takes it).
    pub(crate) unsafe fn try_push(&self, node: NonNull<Node>, max: usize) -> Pushed {
        let before = self.len.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            self.len.fetch_sub(1, Ordering::Relaxed);
            return Pushed::Full;
        }
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the caller owns `node` exclusively until the CAS below publishes it.
            unsafe { node.as_ref() }.next.with_mut(|next| {
                // SAFETY: exclusive access (see above).
                unsafe { *next = head }
            });
            // Release: the node's payload and link (and the buffer's last writes) happen-before
            // the owner's Acquire swap in `take_all`.
            match self.head.compare_exchange_weak(
                head,
                node.as_ptr(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Pushed::Queued { len: before + 1 },
                Err(current) => head = current,
            }
        }
    }

    /// Takes every node pushed so far. Only the list's owner calls this.
    pub(crate) fn take_all(&self) -> Taken<'_> {
        // Acquire pairs with every pusher's Release CAS (each later CAS is a read-modify-write
        // and so continues the release sequence of the earlier ones).
        let head = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        Taken {
            list: self,
            next: head,
            taken: 0,
        }
    }
}

/// The nodes of one [`DeferList::take_all`]; releases their count from the list when dropped.
#[derive(Debug)]
pub(crate) struct Taken<'a> {
    list: &'a DeferList,
    next: *mut Node,
    taken: usize,
}

impl Iterator for Taken<'_> {
    /// The node (now owned by the caller) and its payload.
    type Item = (NonNull<Node>, usize);

    fn next(&mut self) -> Option<Self::Item> {
        let node = NonNull::new(self.next)?;
        // SAFETY: `take_all` made this chain ours alone, and the Acquire swap made the pushers'
        // writes to each node visible.
        let node_ref = unsafe { node.as_ref() };
        // SAFETY: as above, no other thread can reach the node any more.
        self.next = node_ref.next.with(|next| unsafe { *next });
        // SAFETY: as above.
        let payload = node_ref.payload.with(|p| unsafe { *p });
        self.taken += 1;
        Some((node, payload))
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        // Nodes not iterated are not released: callers always exhaust the iterator.
        debug_assert!(self.next.is_null(), "a taken defer chain was not exhausted");
        self.list.len.fetch_sub(self.taken, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(krpc_loom)))]
mod tests {
    use super::*;

    fn boxed(payload: usize) -> NonNull<Node> {
        NonNull::from(Box::leak(Box::new(Node::new(payload))))
    }

    fn free(node: NonNull<Node>) {
        // SAFETY: every node in these tests came from `boxed` and is freed once.
        drop(unsafe { Box::from_raw(node.as_ptr()) });
    }

    #[test]
    fn takes_everything_pushed_newest_first_and_respects_max() {
        let list = DeferList::new();
        for i in 0..3 {
            // SAFETY: fresh node, owned by us.
            let pushed = unsafe { list.try_push(boxed(i), 3) };
            assert_eq!(pushed, Pushed::Queued { len: i + 1 });
        }
        let extra = boxed(99);
        // SAFETY: fresh node; refused, so still ours.
        assert_eq!(unsafe { list.try_push(extra, 3) }, Pushed::Full);
        free(extra);
        assert_eq!(list.len(), 3);
        let payloads: Vec<usize> = list
            .take_all()
            .map(|(node, payload)| {
                free(node);
                payload
            })
            .collect();
        assert_eq!(payloads, vec![2, 1, 0]);
        assert_eq!(list.len(), 0);
        assert_eq!(list.take_all().count(), 0);
    }
}

/// The model: two freers push while the owner drains, in every interleaving loom can find. The
/// payloads live in loom cells, so a missing happens-before edge (weaken the Acquire in
/// `take_all` or the Release in `try_push`) fails the model with a causality violation.
#[cfg(all(test, krpc_loom))]
mod loom_model {
    use loom::{sync::Arc, thread};

    use super::*;

    fn free(node: NonNull<Node>) {
        // SAFETY: every node here came from `Box::leak` and is freed once, by its taker.
        drop(unsafe { Box::from_raw(node.as_ptr()) });
    }

    #[test]
    fn pushes_are_taken_exactly_once_with_their_payloads() {
        loom::model(|| {
            let list = Arc::new(DeferList::new());
            let pushers: Vec<_> = (0..2)
                .map(|i| {
                    let list = list.clone();
                    thread::spawn(move || {
                        let node = NonNull::from(Box::leak(Box::new(Node::new(0))));
                        // The freer's last write to the buffer, which the owner must see.
                        // SAFETY: the node is ours until pushed.
                        unsafe { node.as_ref() }.payload.with_mut(|p| {
                            // SAFETY: as above.
                            unsafe { *p = 10 + i }
                        });
                        // SAFETY: a fresh node, ours.
                        match unsafe { list.try_push(node, 2) } {
                            Pushed::Queued { .. } => {}
                            Pushed::Full => unreachable!("room for both"),
                        }
                    })
                })
                .collect();
            let mut seen = Vec::new();
            for (node, payload) in list.take_all() {
                seen.push(payload);
                free(node);
            }
            for pusher in pushers {
                pusher.join().unwrap();
            }
            for (node, payload) in list.take_all() {
                seen.push(payload);
                free(node);
            }
            seen.sort_unstable();
            assert_eq!(seen, vec![10, 11]);
            assert_eq!(list.len(), 0);
        });
    }

    #[test]
    fn a_full_list_refuses_and_the_count_never_underflows() {
        loom::model(|| {
            let list = Arc::new(DeferList::new());
            let pusher = {
                let list = list.clone();
                thread::spawn(move || {
                    let mut refused = 0;
                    for _ in 0..2 {
                        let node = NonNull::from(Box::leak(Box::new(Node::new(7))));
                        // SAFETY: a fresh node, ours.
                        if unsafe { list.try_push(node, 1) } == Pushed::Full {
                            refused += 1;
                            free(node);
                        }
                    }
                    refused
                })
            };
            let mut taken = 0;
            for (node, _) in list.take_all() {
                taken += 1;
                free(node);
            }
            assert!(list.len() <= 2, "len read {}", list.len());
            let refused = pusher.join().unwrap();
            for (node, _) in list.take_all() {
                taken += 1;
                free(node);
            }
            assert_eq!(taken + refused, 2);
            assert!(taken >= 1);
        });
    }
}
