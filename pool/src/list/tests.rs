//! The lists on their own, single-threaded (loom models cover them under concurrency).

use super::*;

/// Boxed 64-byte blocks standing in for slab blocks.
fn block() -> NonNull<Node> {
    let b = Box::leak(Box::new([0u64; 8]));
    // SAFETY: a fresh, unused, aligned block.
    unsafe { Node::write(NonNull::from(b).cast()) }
}

fn free(node: NonNull<Node>) {
    // SAFETY: nodes here come from `block` and are freed once, by their last owner.
    let b = unsafe { Node::into_block(node) };
    // SAFETY: as above: leaked from this Box type in `block`.
    drop(unsafe { Box::from_raw(b.cast::<[u64; 8]>().as_ptr()) });
}

fn chain(n: usize) -> (Chain, Vec<usize>) {
    let mut c = Chain::new();
    let mut order = Vec::new();
    for _ in 0..n {
        let node = block();
        order.push(node.as_ptr() as usize);
        // SAFETY: fresh node.
        unsafe { c.push(node) };
    }
    order.reverse();
    (c, order)
}

#[test]
fn a_push_takes_what_fits_and_returns_the_rest_in_order() {
    let list = RemoteList::new();
    let (c, order) = chain(5);
    // SAFETY: an owned chain.
    let p = unsafe { list.push(c, 3) };
    assert_eq!((p.before, p.pushed, p.rest.len()), (0, 3, 2));
    let rest: Vec<usize> = p.rest.map(|n| n.as_ptr() as usize).collect();
    assert_eq!(rest, order[3..], "the tail of the chain comes back");
    let (c2, _) = chain(2);
    // SAFETY: an owned chain.
    let p = unsafe { list.push(c2, 3) };
    assert_eq!((p.before, p.pushed, p.rest.len()), (3, 0, 2));
    assert_eq!(list.len(), 3);
    let taken: Vec<usize> = list.take_all().map(|n| n.as_ptr() as usize).collect();
    assert_eq!(taken, order[..3]);
    assert_eq!(list.len(), 0);
    assert_eq!(list.take_all().len(), 0);
    for a in rest.into_iter().chain(taken) {
        free(NonNull::new(a as *mut Node).unwrap());
    }
    for n in p.rest {
        free(n);
    }
}

#[test]
fn chains_stack_newest_batch_first() {
    let list = RemoteList::new();
    let (a, a_order) = chain(2);
    let (b, b_order) = chain(3);
    // SAFETY: owned chains.
    unsafe {
        assert_eq!(list.push(a, MAX_LEN).pushed, 2);
        assert_eq!(list.push(b, MAX_LEN).pushed, 3);
    }
    let got: Vec<usize> = list.take_all().map(|n| n.as_ptr() as usize).collect();
    let want: Vec<usize> = b_order.into_iter().chain(a_order).collect();
    assert_eq!(got, want);
    for a in got {
        free(NonNull::new(a as *mut Node).unwrap());
    }
}
