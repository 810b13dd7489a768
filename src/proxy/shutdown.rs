//! A worker-local shutdown signal that any number of connection tasks can await cheaply.
//! One watcher task per worker polls the process-wide flag and fires this; connections never poll.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct LocalShutdown {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl LocalShutdown {
    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    pub fn fire(&self) {
        self.fired.set(true);
        for w in self.waiters.borrow_mut().iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// Resolves when `fire` is called. Dropping the future releases its slot.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            sh: self,
            slot: None,
        }
    }
}

pub struct Wait<'a> {
    sh: &'a LocalShutdown,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.sh.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.sh.waiters.borrow_mut();
        match self.slot {
            Some(i) => waiters[i] = Some(cx.waker().clone()),
            None => {
                let i = match self.sh.free.borrow_mut().pop() {
                    Some(i) => {
                        waiters[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        waiters.push(Some(cx.waker().clone()));
                        waiters.len() - 1
                    }
                };
                drop(waiters);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if let Some(w) = self.sh.waiters.borrow_mut().get_mut(i) {
                *w = None;
            }
            self.sh.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_fire_wakes() {
        let sh = LocalShutdown::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..100 {
            let mut w = Box::pin(sh.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            sh.waiters.borrow().len(),
            1,
            "dropped waits give their slot back"
        );
        let mut w = Box::pin(sh.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        sh.fire();
        assert!(w.as_mut().poll(&mut cx).is_ready());
    }
}
