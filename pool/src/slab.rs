//! Slabs: the memory buffers are carved from. A slab is [`SLAB_SIZE`] bytes aligned to its own
//! size and holds blocks of one size class, all owned by one core. Its first cache line is a
//! header written once, when the owner creates the slab, and only read afterwards; so any
//! thread holding a block finds the block's pool, owning core and class by masking the block's
//! address down to the slab boundary (snmalloc and mimalloc find their slab/page metadata the
//! same way). No per-buffer pointer, count or `Arc` is needed.

#![allow(unsafe_code)] // one of the pool's fenced unsafe parts (lib.rs)

use std::{
    alloc::{self, Layout},
    ptr::NonNull,
};

use crate::{SIZE_CLASSES, core::Core, list::PTR_BITS, pool::Inner};

/// Bytes per slab (and its alignment). 256 KiB: every class up to 64 KiB fits at least three
/// blocks, and one slab of each of the 11 classes (2.75 MiB) stays under the default cap.
pub const SLAB_SIZE: usize = 256 * 1024;
/// The header's share of a slab: one cache line, so block 0 does not share the header's line.
pub(crate) const HEADER_SIZE: usize = 64;

/// Written once by the owner before any block of the slab is handed out; read-only afterwards.
/// A block reaches another thread only through a synchronising hand-over (a channel, a lock,
/// a list push), which orders these writes before that thread's reads.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct SlabHeader {
    /// The pool the slab belongs to.
    pub(crate) pool: NonNull<Inner>,
    /// The owning core's state (its defer and returned lists).
    pub(crate) core: NonNull<Core>,
    /// The owning core's index.
    pub(crate) core_index: usize,
    /// The size class of every block in the slab.
    pub(crate) class: usize,
}

const _: () = assert!(std::mem::size_of::<SlabHeader>() <= HEADER_SIZE);
const _: () = assert!(SLAB_SIZE.is_power_of_two());
const _: () = assert!(SLAB_SIZE - HEADER_SIZE >= SIZE_CLASSES[SIZE_CLASSES.len() - 1]);

fn layout() -> Layout {
    // SLAB_SIZE is a non-zero power of two: a valid size and alignment.
    Layout::from_size_align(SLAB_SIZE, SLAB_SIZE).expect("SLAB_SIZE is a power of two")
}

/// Blocks of `class` in one slab.
pub(crate) const fn blocks_per_slab(class: usize) -> usize {
    (SLAB_SIZE - HEADER_SIZE) / SIZE_CLASSES[class]
}

/// A new slab for `class`, owned by `core` of `pool`; `None` when the allocator has no memory
/// or hands out an address the packed list heads cannot hold (never seen on Linux; see
/// `list::PTR_BITS`). Returns the slab and the range of its blocks.
pub(crate) fn new_slab(
    pool: NonNull<Inner>,
    core: NonNull<Core>,
    core_index: usize,
    class: usize,
) -> Option<(NonNull<SlabHeader>, *mut u8, *mut u8)> {
    // SAFETY: the layout has a non-zero size.
    let base = NonNull::new(unsafe { alloc::alloc(layout()) })?;
    if (base.as_ptr() as usize + SLAB_SIZE) >> PTR_BITS != 0 {
        // SAFETY: allocated just above with this layout, never used.
        unsafe { alloc::dealloc(base.as_ptr(), layout()) };
        return None;
    }
    let header = base.cast::<SlabHeader>();
    // SAFETY: the slab is fresh, aligned to SLAB_SIZE (more than the header needs) and at
    // least HEADER_SIZE >= size_of::<SlabHeader>() bytes long.
    unsafe {
        header.as_ptr().write(SlabHeader {
            pool,
            core,
            core_index,
            class,
        })
    };
    let size = SIZE_CLASSES[class];
    // SAFETY: both offsets stay inside the slab (blocks_per_slab fits them).
    let first = unsafe { base.as_ptr().add(HEADER_SIZE) };
    // SAFETY: as above.
    let end = unsafe { first.add(blocks_per_slab(class) * size) };
    Some((header, first, end))
}

/// Gives a slab back to the allocator.
///
/// # Safety
/// `slab` came from [`new_slab`], and nothing will touch it or its blocks again.
pub(crate) unsafe fn free_slab(slab: NonNull<SlabHeader>) {
    // SAFETY: the contract; allocated with this layout.
    unsafe { alloc::dealloc(slab.as_ptr().cast(), layout()) }
}

/// The header of the slab holding `block`.
///
/// # Safety
/// `block` points into a slab made by [`new_slab`] that has not been freed.
#[inline(always)]
pub(crate) unsafe fn header_of<'a>(block: NonNull<u8>) -> &'a SlabHeader {
    let base = block.as_ptr() as usize & !(SLAB_SIZE - 1);
    // SAFETY: the contract: slabs are SLAB_SIZE-aligned, so masking the address of any byte
    // in one gives its start, where `new_slab` wrote the header, never written again.
    unsafe { &*(base as *const SlabHeader) }
}
