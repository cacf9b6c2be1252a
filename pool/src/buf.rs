//! `PoolBuf`: a block of a slab (or a heap buffer) and the core that allocated it. Dropping it
//! runs the pool's strategy; the block's slab header says which pool, core and class it is.

#![allow(unsafe_code)] // one of the pool's fenced unsafe parts (lib.rs)

use std::{
    ops::{Deref, DerefMut},
    ptr::NonNull,
};

use crate::{conn::ConnRef, free, pool::Inner};

/// A buffer from a [`crate::Pool`]. Derefs to its bytes; [`PoolBuf::into_bytes`] turns it into
/// a `bytes::Bytes` without copying, and the last `Bytes` dropped (on any thread) frees it.
pub struct PoolBuf {
    ptr: NonNull<u8>,
    len: usize,
    kind: Kind,
}

enum Kind {
    /// A block of a slab, allocated on core `origin`. Under `per-conn` it also names its
    /// connection (the connection's count, not the pool's: per-socket accounting, as
    /// `skb->sk` in the kernel).
    Block { origin: u32, conn: Option<ConnRef> },
    /// Larger than the largest class, or past the slab cap, or off-pool: the allocator's
    /// memory (`len` bytes, from a `Box<[u8]>`). `pool` counts it when the pool handed it out.
    Heap { pool: Option<(NonNull<Inner>, u32)> },
}

// SAFETY: a PoolBuf owns its bytes exclusively (no aliasing pointer exists), and the free path
// it runs on drop may be called from any thread.
unsafe impl Send for PoolBuf {}
// SAFETY: shared references only read the bytes.
unsafe impl Sync for PoolBuf {}

impl PoolBuf {
    #[inline(always)]
    pub(crate) fn block(
        ptr: NonNull<u8>,
        len: usize,
        origin: usize,
        conn: Option<ConnRef>,
    ) -> Self {
        Self {
            ptr,
            len,
            kind: Kind::Block {
                origin: origin as u32,
                conn,
            },
        }
    }

    pub(crate) fn heap(boxed: Box<[u8]>, pool: Option<(NonNull<Inner>, usize)>) -> Self {
        let len = boxed.len();
        let ptr = NonNull::from(Box::leak(boxed)).cast::<u8>();
        Self {
            ptr,
            len,
            kind: Kind::Heap {
                pool: pool.map(|(p, core)| (p, core as u32)),
            },
        }
    }

    /// The core this buffer was allocated on (`None` for off-pool buffers).
    pub fn origin(&self) -> Option<usize> {
        match &self.kind {
            Kind::Block { origin, .. } => Some(*origin as usize),
            Kind::Heap { pool } => pool.map(|(_, core)| core as usize),
        }
    }

    /// True for a slab block (false: allocator memory — larger than 64 KiB, past the slab
    /// cap, or off-pool).
    pub fn is_pooled(&self) -> bool {
        matches!(self.kind, Kind::Block { .. })
    }

    /// Zero-copy `Bytes`; the buffer is freed, by the strategy, when the last clone drops.
    /// (`bytes` boxes the owner: one small allocation per call, which the benches measure.)
    #[cfg(feature = "bytes")]
    #[inline]
    pub fn into_bytes(self) -> bytes::Bytes {
        match self.kind {
            // The codec's case: a block with no connection to count it. Its owner is two
            // words, which the compiler keeps in registers across the owner box's `malloc`.
            // A whole `PoolBuf` (four words) is staged on the stack there with narrow stores
            // and read back with wide loads, which cannot be forwarded from the store buffer:
            // the load waits for the 512-byte copy's stores to drain (5-6 ns per message,
            // bench/pool.md, "codec path").
            Kind::Block { origin, conn: None } => {
                let this = std::mem::ManuallyDrop::new(self);
                bytes::Bytes::from_owner(BlockOwner {
                    ptr: this.ptr,
                    len: this.len as u32,
                    origin,
                })
            }
            _ => bytes::Bytes::from_owner(self),
        }
    }
}

/// A slab block without a connection, owned by a `Bytes`: what [`PoolBuf`] would be, in two
/// words. Dropping it frees the block exactly as the `PoolBuf` would have. A block's length
/// is at most the largest class, so it fits `len`.
#[cfg(feature = "bytes")]
const _: () = assert!(crate::SIZE_CLASSES[crate::SIZE_CLASSES.len() - 1] <= u32::MAX as usize);

#[cfg(feature = "bytes")]
struct BlockOwner {
    ptr: NonNull<u8>,
    len: u32,
    origin: u32,
}

// SAFETY: as for `PoolBuf`: it owns its bytes exclusively, and its free path may run on any
// thread.
#[cfg(feature = "bytes")]
unsafe impl Send for BlockOwner {}
// SAFETY: shared references only read the bytes.
#[cfg(feature = "bytes")]
unsafe impl Sync for BlockOwner {}

#[cfg(feature = "bytes")]
impl AsRef<[u8]> for BlockOwner {
    #[inline(always)]
    fn as_ref(&self) -> &[u8] {
        // SAFETY: taken over from a `PoolBuf`: `ptr` points to `len` initialised bytes this
        // owner alone holds.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len as usize) }
    }
}

#[cfg(feature = "bytes")]
impl Drop for BlockOwner {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: the block came from a slab of its pool, allocated on `origin` (the
        // `PoolBuf` it was taken from said so), and this owner, its only user, is going away.
        unsafe { free::free_block(self.ptr, self.origin as usize, None) }
    }
}

impl Deref for PoolBuf {
    type Target = [u8];

    #[inline(always)]
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` bytes this buffer owns, all initialised when it was
        // handed out (zeroes or a copy).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for PoolBuf {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for PoolBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuf")
            .field("len", &self.len)
            .field("origin", &self.origin())
            .field("pooled", &self.is_pooled())
            .finish()
    }
}

impl Drop for PoolBuf {
    #[inline(always)]
    fn drop(&mut self) {
        match &mut self.kind {
            Kind::Block { origin, conn } => {
                // SAFETY: the block came from a slab of its pool, allocated on `origin`, and
                // this buffer, its only user, is going away.
                unsafe { free::free_block(self.ptr, *origin as usize, conn.take()) }
            }
            Kind::Heap { pool } => {
                let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
                // SAFETY: leaked from a `Box<[u8]>` of `len` bytes in `heap`, freed once here.
                drop(unsafe { Box::from_raw(slice) });
                if let Some((pool, core)) = *pool {
                    // SAFETY: the pool counted this buffer as outstanding.
                    unsafe { free::count_heap_free(pool, core as usize) };
                }
            }
        }
    }
}
