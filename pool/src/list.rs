//! Intrusive lists of free blocks. A free block's first bytes hold a [`Node`] (its link), so
//! no list ever allocates.
//!
//! - [`Chain`]: a stack owned by one thread (a core's free list of one class, or the batch of
//!   frees a core collects for another core). Plain loads and stores.
//! - [`RemoteList`]: a stack that any thread pushes whole chains onto and its owner empties in
//!   one swap, like the kernel's per-cpu `defer_list` (an `llist`). Pushers never pop and the
//!   owner always takes everything, so the ABA problem of a popping Treiber stack cannot arise.
//!   Its head word packs the pointer (low 48 bits) with the list's length (high 16 bits), so a
//!   batch of any size is handed over, and the bound checked, with **one** compare-and-swap.

#![allow(unsafe_code)] // one of the pool's fenced unsafe parts (lib.rs)

use std::ptr::{self, NonNull};

use crate::sync::{AtomicPtr, AtomicU64, Ordering, UnsafeCell};

/// Bits of a block address kept in a packed head. x86-64 and aarch64 user addresses fit in 48
/// bits (the kernel hands out higher ones only to an mmap that asks); `slab.rs` refuses any
/// slab above that, so every block fits.
pub(crate) const PTR_BITS: u32 = 48;
const PTR_MASK: u64 = (1 << PTR_BITS) - 1;
/// Longest `RemoteList`: what the 16 high bits of the head can count, less the one value that
/// marks a closed list.
pub(crate) const MAX_LEN: usize = (1 << (64 - PTR_BITS)) - 2;
/// The head of a closed list (no owner to drain it): a length no open list can have.
const CLOSED: u64 = ((MAX_LEN as u64) + 1) << PTR_BITS;

// A node is written at the start of a block: it must fit the smallest block and its alignment.
const _: () = assert!(std::mem::size_of::<Node>() <= crate::SIZE_CLASSES[0]);
const _: () = assert!(std::mem::align_of::<Node>() <= 64);

/// The link written at the start of a free block. Under loom the link is a loom cell, so a
/// missing happens-before edge between the thread that wrote it and the one that follows it
/// is a reported causality violation.
#[derive(Debug)]
pub(crate) struct Node {
    next: UnsafeCell<*mut Node>,
}

impl Node {
    /// Makes the unused block at `block` a node.
    ///
    /// # Safety
    /// `block` is valid for writes of a `Node`, aligned for it, and unused: nothing else reads
    /// or writes it until the node is taken back with [`Node::into_block`].
    #[inline(always)]
    pub(crate) unsafe fn write(block: NonNull<u8>) -> NonNull<Node> {
        let node = block.cast::<Node>();
        // SAFETY: the contract.
        unsafe {
            node.as_ptr().write(Node {
                next: UnsafeCell::new(ptr::null_mut()),
            })
        };
        node
    }

    /// Ends the node's life and gives back its block (under loom, the cell's tracking state
    /// is released; otherwise this is free).
    ///
    /// # Safety
    /// The caller owns `node` (popped or taken off a list, or never pushed) and does not use it
    /// as a node again.
    #[inline(always)]
    pub(crate) unsafe fn into_block(node: NonNull<Node>) -> NonNull<u8> {
        // SAFETY: the contract; `Node` has no drop glue without loom.
        unsafe { ptr::drop_in_place(node.as_ptr()) };
        node.cast()
    }

    /// # Safety
    /// The calling thread owns `node` (or the chain holding it) and it is initialised.
    #[inline(always)]
    unsafe fn next(node: NonNull<Node>) -> *mut Node {
        // SAFETY: the contract: an owned, initialised node, read by its owner.
        unsafe { node.as_ref() }.next.with(|next| unsafe { *next })
    }

    /// # Safety
    /// As for [`Node::next`].
    #[inline(always)]
    unsafe fn set_next(node: NonNull<Node>, next: *mut Node) {
        // SAFETY: the contract: an owned, initialised node, written by its owner.
        unsafe { node.as_ref() }
            .next
            .with_mut(|slot| unsafe { *slot = next });
    }
}

/// A core's free list of one class: a stack of nodes owned by one thread (its length is kept
/// beside it, in a counter snapshots may read).
#[derive(Debug)]
pub(crate) struct Stack {
    head: *mut Node,
}

impl Default for Stack {
    fn default() -> Self {
        Self {
            head: ptr::null_mut(),
        }
    }
}

impl Stack {
    /// # Safety
    /// `node` is initialised, owned by the caller, and on no list; it passes to the stack.
    #[inline(always)]
    pub(crate) unsafe fn push(&mut self, node: NonNull<Node>) {
        // SAFETY: the contract.
        unsafe { Node::set_next(node, self.head) };
        self.head = node.as_ptr();
    }

    /// Pops the newest node; it passes to the caller.
    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<NonNull<Node>> {
        let node = NonNull::new(self.head)?;
        // SAFETY: nodes on the stack are initialised and owned by the stack's owner (the
        // caller, through `&mut self`); the last one links to null.
        self.head = unsafe { Node::next(node) };
        Some(node)
    }

    /// Takes every node (teardown under loom).
    #[cfg(krpc_loom)]
    pub(crate) fn drain_nodes(&mut self) -> Vec<NonNull<Node>> {
        std::iter::from_fn(|| self.pop()).collect()
    }
}

/// A stack of nodes owned by one thread, with its length and (while non-empty) its last node.
#[derive(Debug)]
pub(crate) struct Chain {
    head: *mut Node,
    tail: *mut Node,
    len: usize,
}

impl Chain {
    pub(crate) const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
            len: 0,
        }
    }

    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// # Safety
    /// `node` is initialised, owned by the caller, and on no list; it passes to the chain.
    #[inline(always)]
    pub(crate) unsafe fn push(&mut self, node: NonNull<Node>) {
        // SAFETY: the contract.
        unsafe { Node::set_next(node, self.head) };
        if self.head.is_null() {
            self.tail = node.as_ptr();
        }
        self.head = node.as_ptr();
        self.len += 1;
    }

    /// Pops the newest node; it passes to the caller.
    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<NonNull<Node>> {
        if self.len == 0 {
            return None;
        }
        // A non-empty chain has a head.
        let node = NonNull::new(self.head)?;
        self.len -= 1;
        if self.len == 0 {
            // The length, not the last link, ends a chain: a tail's link may be stale (left
            // from a push that did not happen), so it is never followed.
            self.head = ptr::null_mut();
            self.tail = ptr::null_mut();
        } else {
            // SAFETY: nodes on the chain are initialised and owned by the chain's owner (the
            // caller, through `&mut self`).
            self.head = unsafe { Node::next(node) };
        }
        Some(node)
    }

    /// Takes the whole chain, leaving this one empty.
    pub(crate) fn take_all(&mut self) -> Chain {
        std::mem::replace(self, Chain::new())
    }

    /// Splits off everything after the first `n` nodes (n < len) and returns it.
    fn split_after(&mut self, n: usize) -> Chain {
        debug_assert!(n > 0 && n < self.len);
        let mut cut = self.head;
        for _ in 1..n {
            // SAFETY: `cut` is one of the first n < len nodes of an owned chain: non-null,
            // initialised, owned.
            cut = unsafe { Node::next(NonNull::new_unchecked(cut)) };
        }
        // SAFETY: as above, `cut` is the n-th node.
        let cut = unsafe { NonNull::new_unchecked(cut) };
        // SAFETY: as above.
        let rest_head = unsafe { Node::next(cut) };
        // SAFETY: as above.
        unsafe { Node::set_next(cut, ptr::null_mut()) };
        let rest = Chain {
            head: rest_head,
            tail: self.tail,
            len: self.len - n,
        };
        self.tail = cut.as_ptr();
        self.len = n;
        rest
    }
}

impl Iterator for Chain {
    type Item = NonNull<Node>;

    fn next(&mut self) -> Option<NonNull<Node>> {
        self.pop()
    }
}

/// Outcome of [`RemoteList::push`].
#[derive(Debug)]
pub(crate) struct Pushed {
    /// Nodes on the list before the push.
    pub(crate) before: usize,
    /// Nodes that went on (the first ones of the chain).
    pub(crate) pushed: usize,
    /// What did not fit under `max`, or everything when the list is closed (empty when
    /// everything went on).
    pub(crate) rest: Chain,
}

/// A multi-producer stack emptied by its owner in one swap; see the module docs.
#[derive(Debug)]
pub(crate) struct RemoteList {
    /// `len << PTR_BITS | head address`.
    head: AtomicU64,
}

fn pack(head: *mut Node, len: usize) -> u64 {
    debug_assert!(len <= MAX_LEN && (head as u64) & !PTR_MASK == 0);
    (len as u64) << PTR_BITS | head as u64
}

fn unpack(word: u64) -> (*mut Node, usize) {
    ((word & PTR_MASK) as *mut Node, (word >> PTR_BITS) as usize)
}

impl RemoteList {
    /// An open, empty list.
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicU64::new(0),
        }
    }

    /// A closed list: pushes are refused until its owner opens it.
    pub(crate) fn closed() -> Self {
        Self {
            head: AtomicU64::new(CLOSED),
        }
    }

    /// Nodes on the list now (a relaxed read: exact once the pushers are quiet).
    pub(crate) fn len(&self) -> usize {
        match self.head.load(Ordering::Relaxed) {
            CLOSED => 0,
            word => unpack(word).1,
        }
    }

    /// Pushes as much of `chain` as keeps the list at or under `max` nodes (`max` is capped at
    /// [`MAX_LEN`]), with one successful compare-and-swap; what does not fit, or everything if
    /// the list is closed, comes back in [`Pushed::rest`].
    ///
    /// # Safety
    /// Every node of `chain` is initialised and owned by the caller; the pushed ones pass to
    /// the list (and then to whoever takes it).
    pub(crate) unsafe fn push(&self, mut chain: Chain, max: usize) -> Pushed {
        debug_assert!(
            chain.len == 0 || !chain.tail.is_null(),
            "a pushed chain knows its tail"
        );
        let max = max.min(MAX_LEN);
        let mut rest = Chain::new();
        let mut word = self.head.load(Ordering::Relaxed);
        loop {
            let (head, before) = unpack(word);
            let room = if word == CLOSED {
                0
            } else {
                max.saturating_sub(before)
            };
            if room == 0 || chain.len == 0 {
                rest = join(chain, rest);
                return Pushed {
                    before: if word == CLOSED { 0 } else { before },
                    pushed: 0,
                    rest,
                };
            }
            if chain.len > room {
                // Keep the first `room` nodes; a retry may find more room, so `rest` is put
                // back in front of nothing else but stays in order behind the kept part.
                let more = chain.split_after(room);
                rest = join(more, rest);
            }
            // SAFETY: the chain is ours until the CAS publishes it; its tail is non-null
            // because it is non-empty.
            unsafe { Node::set_next(NonNull::new_unchecked(chain.tail), head) };
            let new = pack(chain.head, before + chain.len);
            // Release: the nodes' links and the buffers' last writes happen-before the
            // owner's Acquire swap in `take_all` or `close` (a later pusher's CAS is a
            // read-modify-write and continues this release sequence).
            match self
                .head
                .compare_exchange_weak(word, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Pushed {
                        before,
                        pushed: chain.len,
                        rest,
                    };
                }
                Err(current) => {
                    word = current;
                    // Put the split part back and try again with the whole chain.
                    chain = join(chain, rest);
                    rest = Chain::new();
                }
            }
        }
    }

    /// Takes every node pushed so far. Only the list's owner calls this, on an open list.
    pub(crate) fn take_all(&self) -> Chain {
        let word = self.head.load(Ordering::Relaxed);
        if word == 0 || word == CLOSED {
            // Nothing to take: no locked instruction (a drain at every park is mostly this).
            return Chain::new();
        }
        // Acquire pairs with every pusher's Release CAS.
        taken(self.head.swap(0, Ordering::Acquire))
    }

    /// Opens a closed list (a new owner arrives). Only the holder of the owner's claim calls
    /// this.
    pub(crate) fn open(&self) {
        let was = self.head.swap(0, Ordering::Relaxed);
        debug_assert_eq!(was, CLOSED, "only a closed list is opened");
    }

    /// Closes the list and takes what was on it (the owner leaves): from here on pushers see
    /// it closed in the very compare-and-swap they push with, so nothing is left on a list
    /// that nobody drains.
    pub(crate) fn close(&self) -> Chain {
        // Acquire pairs with the pushers' Release CAS, as in `take_all`.
        taken(self.head.swap(CLOSED, Ordering::Acquire))
    }
}

/// The chain a swap took off an open list.
fn taken(word: u64) -> Chain {
    debug_assert_ne!(word, CLOSED);
    let (head, len) = unpack(word);
    Chain {
        head,
        // Unknown without a walk, and only needed to push a chain: a taken chain is only
        // popped from (`push` and `join` check this in debug builds).
        tail: ptr::null_mut(),
        len,
    }
}

/// A multi-producer stack without a bound or a count (the returned list: frees that went the
/// allocator's way). Pushers link a chain in front with one compare-and-swap; the owner takes
/// everything with one swap and follows the links to the end.
#[derive(Debug)]
pub(crate) struct ReturnList {
    head: AtomicPtr<Node>,
}

impl ReturnList {
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Pushes the whole chain.
    ///
    /// # Safety
    /// Every node of `chain` is initialised and owned by the caller; they pass to the list.
    pub(crate) unsafe fn push(&self, chain: Chain) {
        if chain.len == 0 {
            return;
        }
        debug_assert!(!chain.tail.is_null(), "a pushed chain knows its tail");
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the chain is ours until the CAS publishes it; non-empty, so its tail is
            // set. The link makes the list null-terminated: the first chain ever pushed links
            // to null.
            unsafe { Node::set_next(NonNull::new_unchecked(chain.tail), head) };
            // Release pairs with the owner's Acquire swap, as for `RemoteList::push`.
            match self.head.compare_exchange_weak(
                head,
                chain.head,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(current) => head = current,
            }
        }
    }

    /// Whether anything waits (a relaxed read).
    pub(crate) fn is_empty(&self) -> bool {
        self.head.load(Ordering::Relaxed).is_null()
    }

    /// Takes every node pushed so far. Only the owner (or the holder of its claim) calls this.
    pub(crate) fn take_all(&self) -> Walk {
        if self.is_empty() {
            return Walk {
                next: ptr::null_mut(),
            };
        }
        Walk {
            next: self.head.swap(ptr::null_mut(), Ordering::Acquire),
        }
    }
}

/// The nodes of one [`ReturnList::take_all`], followed link by link to the null at the end.
#[derive(Debug)]
pub(crate) struct Walk {
    next: *mut Node,
}

impl Iterator for Walk {
    type Item = NonNull<Node>;

    fn next(&mut self) -> Option<NonNull<Node>> {
        let node = NonNull::new(self.next)?;
        // SAFETY: the swap in `take_all` made the whole list ours, and its Acquire made every
        // pusher's link visible; the list is null-terminated (see `ReturnList::push`).
        self.next = unsafe { Node::next(node) };
        Some(node)
    }
}

/// A chain of one node.
///
/// # Safety
/// `node` is initialised, owned by the caller, and on no list.
pub(crate) unsafe fn single(node: NonNull<Node>) -> Chain {
    let mut c = Chain::new();
    // SAFETY: the contract.
    unsafe { c.push(node) };
    c
}

/// `front` followed by `back`.
fn join(mut front: Chain, back: Chain) -> Chain {
    if back.len == 0 {
        return front;
    }
    if front.len == 0 {
        return back;
    }
    debug_assert!(!front.tail.is_null(), "a joined chain knows its tail");
    // SAFETY: both chains are owned by the caller; `front` is non-empty so its tail is set
    // (chains built by `push`/`split_after` always know their tail).
    unsafe { Node::set_next(NonNull::new_unchecked(front.tail), back.head) };
    front.tail = back.tail;
    front.len += back.len;
    front
}

#[cfg(all(test, not(krpc_loom)))]
mod tests;
