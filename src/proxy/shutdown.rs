//! Worker-local waits that any number of connection tasks can await cheaply: shutdown, and
//! coarse deadlines (idle, head-read, write and upstream-head timeouts) on a coarse clock.
//! One watcher task per worker polls the process-wide shutdown flag and calls `tick` every
//! 50 ms; connections never poll and hold no runtime timer, so a timeout costs a slot here
//! instead of a timer-wheel insert and removal and clock reads on every request.
//! Deadlines are second-scale limits: they fire within about one tick of their time.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

struct Slot {
    waker: Option<Waker>,
    deadline: Option<Instant>,
}

pub struct LocalShutdown {
    fired: Cell<bool>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    /// The coarse clock: set by every `tick`.
    now: Cell<Instant>,
    /// The coarse wall clock in Unix seconds, set with it: for second-scale checks (token and
    /// session expiry, time windows of rules), a few reads fewer per request.
    unix: Cell<u64>,
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Default for LocalShutdown {
    fn default() -> Self {
        LocalShutdown {
            fired: Cell::new(false),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            now: Cell::new(Instant::now()),
            unix: Cell::new(unix_seconds()),
        }
    }
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

    /// The coarse clock (at most one tick old): for deadlines, never for measuring latency.
    pub fn now(&self) -> Instant {
        self.now.get()
    }

    /// The coarse wall clock (Unix seconds, at most one tick old).
    pub fn unix_now(&self) -> u64 {
        self.unix.get()
    }

    /// Advances the coarse clock and wakes every waiter whose deadline has passed
    /// (called by the worker's watcher).
    pub fn tick(&self, now: Instant) {
        self.now.set(now);
        self.unix.set(unix_seconds());
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
            on_shutdown: true,
        }
    }

    /// Resolves at shutdown or once `deadline` has passed (within one watcher tick).
    pub fn wait_until(&self, deadline: Instant) -> Wait<'_> {
        Wait {
            sh: self,
            slot: None,
            deadline: Some(deadline),
            on_shutdown: true,
        }
    }

    /// Resolves once `deadline` has passed, whatever shutdown does (in-flight work keeps its time).
    pub fn deadline(&self, deadline: Instant) -> Wait<'_> {
        Wait {
            sh: self,
            slot: None,
            deadline: Some(deadline),
            on_shutdown: false,
        }
    }

    pub fn waiters(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }
}

/// `inner`, unless `cut` (when there is one) resolves first: then `None` (the caller drops
/// `inner` where it stood). `inner` is polled first, so a request that is done is never cut.
/// Holds `inner` pinned in the caller's state: moving it in would store it twice.
pub struct UntilCut<'a, 'f, F> {
    pub inner: Pin<&'f mut F>,
    pub cut: Option<Wait<'a>>,
}

impl<F: Future> Future for UntilCut<'_, '_, F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.inner.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        match self.cut.as_mut().map(|c| Pin::new(c).poll(cx)) {
            Some(Poll::Ready(_)) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

pub struct Wait<'a> {
    sh: &'a LocalShutdown,
    slot: Option<usize>,
    deadline: Option<Instant>,
    on_shutdown: bool,
}

impl Future for Wait<'_> {
    type Output = Woken;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Woken> {
        if self.on_shutdown && self.sh.fired.get() {
            return Poll::Ready(Woken::Shutdown);
        }
        if self.deadline.is_some_and(|d| d <= self.sh.now.get()) {
            return Poll::Ready(Woken::Deadline);
        }
        let mut slots = self.sh.slots.borrow_mut();
        if let Some(i) = self.slot {
            // Polled again by the same task (every wake of a request polls its waits): the
            // stored waker still holds; cloning it each time cost ~0.5% of a small call.
            let s = &mut slots[i];
            match &mut s.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            }
            s.deadline = self.deadline;
            return Poll::Pending;
        }
        let entry = Slot {
            waker: Some(cx.waker().clone()),
            deadline: self.deadline,
        };
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

    #[test]
    fn plain_deadlines_ignore_shutdown() {
        let sh = LocalShutdown::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut d = Box::pin(sh.deadline(sh.now() + Duration::from_millis(5)));
        assert!(d.as_mut().poll(&mut cx).is_pending());
        sh.fire();
        assert!(
            d.as_mut().poll(&mut cx).is_pending(),
            "in-flight work keeps its deadline"
        );
        sh.tick(Instant::now() + Duration::from_millis(10));
        assert_eq!(d.as_mut().poll(&mut cx), Poll::Ready(Woken::Deadline));
    }
}
