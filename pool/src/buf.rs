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
    pub fn into_bytes(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self)
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
