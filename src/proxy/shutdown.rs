//! Worker-local waits that any number of connection tasks can await cheaply: shutdown, and
//! coarse deadlines (idle and head-read timeouts). One watcher task per worker polls the
//! process-wide shutdown flag and calls `tick` every 50 ms; connections never poll and hold no
//! runtime timer, so an idle connection costs a slot here instead of a timer-wheel entry.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

struct Slot {
    waker: Option<Waker>,
    deadline: Option<Instant>,
}

#[derive(Default)]
pub struct LocalShutdown {
    fired: Cell<bool>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
}

/// Why a `wait_until` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woken {
    Shutdown,
    Deadline,
}

impl LocalShutdown {
    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    pub fn fire(&self) {
        self.fired.set(true);
        for slot in self.slots.borrow_mut().iter_mut() {
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }

    /// Wakes every waiter whose deadline has passed (called by the worker's watcher).
    pub fn tick(&self, now: Instant) {
        for slot in self.slots.borrow_mut().iter_mut() {
            if slot.deadline.is_some_and(|d| d <= now) {
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Resolves when `fire` is called. Dropping the future releases its slot.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            sh: self,
            slot: None,
            deadline: None,
        }
    }

    /// Resolves at shutdown or once `deadline` has passed (within one watcher tick).
    pub fn wait_until(&self, deadline: Instant) -> Wait<'_> {
        Wait {
            sh: self,
            slot: None,
            deadline: Some(deadline),
        }
    }

    pub fn waiters(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }
}

pub struct Wait<'a> {
    sh: &'a LocalShutdown,
    slot: Option<usize>,
    deadline: Option<Instant>,
}

impl Future for Wait<'_> {
    type Output = Woken;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Woken> {
        if self.sh.fired.get() {
            return Poll::Ready(Woken::Shutdown);
        }
        if self.slot.is_some() && self.deadline.is_some_and(|d| d <= Instant::now()) {
            return Poll::Ready(Woken::Deadline);
        }
        let mut slots = self.sh.slots.borrow_mut();
        let entry = Slot {
            waker: Some(cx.waker().clone()),
            deadline: self.deadline,
        };
        match self.slot {
            Some(i) => slots[i] = entry,
            None => {
                let i = match self.sh.free.borrow_mut().pop() {
                    Some(i) => {
                        slots[i] = entry;
                        i
                    }
                    None => {
                        slots.push(entry);
                        slots.len() - 1
                    }
                };
                drop(slots);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if let Some(s) = self.sh.slots.borrow_mut().get_mut(i) {
                s.waker = None;
                s.deadline = None;
            }
            self.sh.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
            sh.slots.borrow().len(),
            1,
            "dropped waits give their slot back"
        );
        assert_eq!(sh.waiters(), 0);
        let mut w = Box::pin(sh.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        sh.fire();
        assert_eq!(w.as_mut().poll(&mut cx), Poll::Ready(Woken::Shutdown));
    }

    #[test]
    fn deadlines_resolve_after_they_pass() {
        let sh = LocalShutdown::default();
        let mut cx = Context::from_waker(Waker::noop());
        let now = Instant::now();
        let mut soon = Box::pin(sh.wait_until(now + Duration::from_millis(5)));
        let mut later = Box::pin(sh.wait_until(now + Duration::from_secs(60)));
        assert!(soon.as_mut().poll(&mut cx).is_pending());
        assert!(later.as_mut().poll(&mut cx).is_pending());
        std::thread::sleep(Duration::from_millis(10));
        sh.tick(Instant::now());
        assert_eq!(soon.as_mut().poll(&mut cx), Poll::Ready(Woken::Deadline));
        assert!(later.as_mut().poll(&mut cx).is_pending());
        drop(soon);
        assert_eq!(sh.waiters(), 1);
    }
}
