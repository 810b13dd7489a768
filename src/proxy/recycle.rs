//! Storage for each request's future, reused within a worker thread.
//!
//! Every request runs in a future of its own (`proxy::request`), kept off the connection's
//! future so that an idle connection stays small. A fresh `Box` per request costs more than it
//! seems: the future is a few KiB, and one of monoio's timers inside makes it 128-byte aligned,
//! so glibc serves it through `memalign`, and an allocation that large first consolidates the
//! allocator's fast bins (together ~1% of a small call's CPU on the flame graph of issue 10).
//! `Recycled` takes a block from a per-thread free list instead, and gives it back when the
//! request ends. The list holds blocks of one layout (the first one recycled on the thread; any
//! other is allocated and freed as usual) and at most `KEEP` of them, so what a burst leaves
//! behind is bounded.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free blocks kept per thread: more than a worker's usual requests in flight, and at most a
/// few MiB of a burst's futures.
const KEEP: usize = 128;

struct FreeList {
    layout: Option<Layout>,
    blocks: Vec<NonNull<u8>>,
}

impl FreeList {
    fn take(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if self.layout == Some(layout) {
            self.blocks.pop()
        } else {
            None
        }
    }

    /// Keeps `block` for reuse; `false` when it must be freed (other layout, list full).
    fn give(&mut self, block: NonNull<u8>, layout: Layout) -> bool {
        if self.layout.is_none() {
            self.layout = Some(layout);
        }
        if self.layout != Some(layout) || self.blocks.len() >= KEEP {
            return false;
        }
        self.blocks.push(block);
        true
    }
}

impl Drop for FreeList {
    fn drop(&mut self) {
        if let Some(layout) = self.layout {
            for b in self.blocks.drain(..) {
                // SAFETY: every kept block was allocated with `layout` and is unused.
                unsafe { dealloc(b.as_ptr(), layout) };
            }
        }
    }
}

thread_local! {
    static FREE: RefCell<FreeList> = const {
        RefCell::new(FreeList { layout: None, blocks: Vec::new() })
    };
}

/// A future in a heap block from the thread's free list (a `Box::pin` that reuses its memory).
/// Not `Send`: the block goes back to the list of the thread that dropped it, which is the one
/// that made it (monoio never moves a task).
pub struct Recycled<F> {
    ptr: NonNull<F>,
}

impl<F: Future> Recycled<F> {
    /// The future `make` returns, in a block. `make` is called once the block is there, so the
    /// future can be built in it rather than built elsewhere and copied in whole (a future's
    /// every byte is copied, however little of it its first state uses).
    #[inline(always)]
    pub fn new(make: impl FnOnce() -> F) -> Self {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            let ptr = NonNull::<F>::dangling();
            // SAFETY: a zero-sized value needs no memory; a dangling aligned pointer is valid for it.
            unsafe { ptr.as_ptr().write(make()) };
            return Recycled { ptr };
        }
        let block = FREE
            .try_with(|l| l.borrow_mut().take(layout))
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                // SAFETY: `layout` has a non-zero size.
                NonNull::new(unsafe { alloc(layout) }).unwrap_or_else(|| handle_alloc_error(layout))
            });
        let ptr = block.cast::<F>();
        // SAFETY: the block fits `F`'s layout and holds no value.
        unsafe { ptr.as_ptr().write(make()) };
        Recycled { ptr }
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future lives in its block until `drop`, and is never moved out of it.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F> Drop for Recycled<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the block holds a live `F`, dropped exactly once here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        if layout.size() == 0 {
            return;
        }
        let block = self.ptr.cast::<u8>();
        let kept = FREE
            .try_with(|l| l.borrow_mut().give(block, layout))
            .unwrap_or(false);
        if !kept {
            // SAFETY: allocated with `layout`, now empty.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn ready<T>(mut f: impl Future<Output = T> + Unpin) -> T {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match Pin::new(&mut f).poll(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("pending"),
        }
    }

    #[repr(align(128))]
    struct Big([u8; 4096]);

    #[test]
    fn blocks_are_reused_and_values_dropped() {
        let dropped = Rc::new(std::cell::Cell::new(0));
        let make = |d: Rc<std::cell::Cell<u32>>| {
            let big = Big([7; 4096]);
            async move {
                let big = big; // the whole value, so the future has its alignment
                let _guard = scopeguard(d);
                big.0[4095]
            }
        };
        let a = Recycled::new(|| make(dropped.clone()));
        let first = a.ptr.cast::<u8>();
        assert_eq!(first.as_ptr() as usize % 128, 0, "aligned");
        assert_eq!(ready(a), 7);
        assert_eq!(dropped.get(), 1);
        // The next future of that type gets the same block back.
        let b = Recycled::new(|| make(dropped.clone()));
        assert_eq!(b.ptr.cast::<u8>(), first);
        // Dropped before it ran: its captures are dropped too (and no guard was made).
        drop(b);
        assert_eq!(Rc::strong_count(&dropped), 1);
        assert_eq!(dropped.get(), 1);
        let c = Recycled::new(|| make(dropped.clone()));
        assert_eq!(ready(c), 7);
        assert_eq!(dropped.get(), 2);
    }

    #[test]
    fn the_list_is_bounded() {
        let many: Vec<_> = (0..KEEP + 10)
            .map(|i| Recycled::new(|| async move { i }))
            .collect();
        drop(many);
        let kept = FREE.with(|l| l.borrow().blocks.len());
        assert!(kept <= KEEP, "{kept} blocks kept");
    }

    struct Guard(Rc<std::cell::Cell<u32>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }
    fn scopeguard(d: Rc<std::cell::Cell<u32>>) -> Guard {
        Guard(d)
    }
}
