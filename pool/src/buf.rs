//! `PoolBuf`: a buffer that remembers its origin core; dropping it runs the pool's strategy.

#![allow(unsafe_code)] // this module is one of the pool's fenced unsafe parts (lib.rs)

use std::{
    ops::{Deref, DerefMut},
    ptr::NonNull,
    sync::Arc,
};

use crate::{conn::ConnShared, pool::Shared};

/// A buffer from a [`crate::Pool`]. Derefs to its bytes; [`PoolBuf::into_bytes`] turns it into
/// a `bytes::Bytes` without copying, and the last `Bytes` dropped (on any thread) frees it.
pub struct PoolBuf {
    ptr: NonNull<u8>,
    len: usize,
    kind: Kind,
}

enum Kind {
    /// A size-class block.
    Block {
        class: usize,
        origin: usize,
        shared: Arc<Shared>,
        conn: Option<Arc<ConnShared>>,
    },
    /// Larger than the largest class, or allocated off-pool: the allocator's. `origin` is the
    /// counting core when the pool counted it.
    Heap {
        cap: usize,
        origin: Option<(Arc<Shared>, usize)>,
    },
}

// SAFETY: a PoolBuf owns its memory exclusively (no aliasing pointer exists), and the free path
// it runs on drop is written to be called from any thread.
unsafe impl Send for PoolBuf {}
// SAFETY: shared references only read the bytes.
unsafe impl Sync for PoolBuf {}

impl PoolBuf {
    pub(crate) fn block(
        ptr: NonNull<u8>,
        len: usize,
        class: usize,
        origin: usize,
        shared: Arc<Shared>,
        conn: Option<Arc<ConnShared>>,
    ) -> Self {
        Self {
            ptr,
            len,
            kind: Kind::Block {
                class,
                origin,
                shared,
                conn,
            },
        }
    }

    pub(crate) fn heap(boxed: Box<[u8]>, origin: Option<(Arc<Shared>, usize)>) -> Self {
        let len = boxed.len();
        let ptr = NonNull::from(Box::leak(boxed)).cast::<u8>();
        Self {
            ptr,
            len,
            kind: Kind::Heap { cap: len, origin },
        }
    }

    /// The core whose pool this buffer came from (`None` for off-pool buffers).
    pub fn origin(&self) -> Option<usize> {
        match &self.kind {
            Kind::Block { origin, .. } => Some(*origin),
            Kind::Heap { origin, .. } => origin.as_ref().map(|(_, core)| *core),
        }
    }

    /// True for a size-class block (false: allocator memory, larger than 64 KiB or off-pool).
    pub fn is_pooled(&self) -> bool {
        matches!(self.kind, Kind::Block { .. })
    }

    /// Zero-copy `Bytes`; the buffer is freed, by the strategy, when the last clone drops.
    #[cfg(feature = "bytes")]
    pub fn into_bytes(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self)
    }
}

impl Deref for PoolBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to at least `len` initialised bytes (zeroed at allocation,
        // reused blocks keep initialised bytes) that this buffer owns.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for PoolBuf {
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
            .finish()
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        match &self.kind {
            Kind::Block {
                class,
                origin,
                shared,
                conn,
            } => {
                // SAFETY: the block came from `shared` as a block of `class` with `origin`,
                // and this buffer, its only user, is going away.
                unsafe { shared.free(self.ptr, *class, *origin, conn.as_deref()) }
            }
            Kind::Heap { cap, origin } => {
                let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), *cap);
                // SAFETY: leaked from a `Box<[u8]>` of `cap` bytes in `heap`, freed once here.
                drop(unsafe { Box::from_raw(slice) });
                if let Some((shared, core)) = origin {
                    shared.count_heap_free(*core);
                }
            }
        }
    }
}
