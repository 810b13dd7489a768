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
use std::time::{Duration, Instant};

struct Slot {
    /// The waiting task's waker; a free slot keeps its last one until the next tick, so the
    /// next wait of the same task (a request waits several times, one after the other) takes
    /// it with no waker clone (and no drop of the old one).
    waker: Option<Waker>,
    deadline: Option<Instant>,
    /// A `Wait` holds it (else it is in `free`).
    live: bool,
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
    /// The wall clock read with `now` (since the Unix epoch): `wall_at` turns a monotonic
    /// instant into wall time without reading the wall clock.
    wall: Cell<Duration>,
}

fn since_epoch() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

fn unix_seconds() -> u64 {
    since_epoch().as_secs()
}

impl Default for LocalShutdown {
    fn default() -> Self {
        LocalShutdown {
            fired: Cell::new(false),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            now: Cell::new(Instant::now()),
            unix: Cell::new(unix_seconds()),
            wall: Cell::new(since_epoch()),
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
            if let Some(w) = slot.waker.take().filter(|_| slot.live) {
                w.wake();
            }
        }
    }

    /// The coarse clock (at most one tick old): for deadlines, never for measuring latency.
    pub fn now(&self) -> Instant {
        self.now.get()
    }

    /// Wall time (since the Unix epoch) at the monotonic instant `t`: the wall clock as read
    /// at the last tick, moved by the monotonic time since (a step of the wall clock shows
    /// within a tick; the microseconds are the monotonic clock's).
    pub fn wall_at(&self, t: Instant) -> Duration {
        let (anchor, wall) = (self.now.get(), self.wall.get());
        match t.checked_duration_since(anchor) {
            Some(d) => wall + d,
            None => wall.saturating_sub(anchor - t),
        }
    }

    /// The coarse wall clock (Unix seconds, at most one tick old).
    pub fn unix_now(&self) -> u64 {
        self.unix.get()
    }

    /// Advances the coarse clock and wakes every waiter whose deadline has passed
    /// (called by the worker's watcher).
    pub fn tick(&self, now: Instant) {
        let wall = since_epoch();
        self.now.set(now);
        self.unix.set(wall.as_secs());
        self.wall.set(wall);
        for slot in self.slots.borrow_mut().iter_mut() {
            if !slot.live {
                // A free slot's kept waker goes: a task that ended is not held past a tick.
                slot.waker = None;
            } else if slot.deadline.is_some_and(|d| d <= now) {
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
        let i = match self.sh.free.borrow_mut().pop() {
            Some(i) => {
                let s = &mut slots[i];
                match &mut s.waker {
                    // Last used by this task: its waker is still good.
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                s.deadline = self.deadline;
                s.live = true;
                i
            }
            None => {
                slots.push(Slot {
                    waker: Some(cx.waker().clone()),
                    deadline: self.deadline,
                    live: true,
                });
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
                s.live = false;
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

    /// A free slot keeps its task's waker: that task's next wait takes it as it is; a wait
    /// that ended is not woken by a shutdown; a tick lets the kept waker go.
    #[test]
    fn a_free_slot_keeps_its_waker_until_the_next_tick() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Task(AtomicUsize);
        impl std::task::Wake for Task {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let sh = LocalShutdown::default();
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let far = Instant::now() + Duration::from_secs(60);
        let mut first = Box::pin(sh.deadline(far));
        assert!(first.as_mut().poll(&mut cx).is_pending());
        let held = Arc::strong_count(&task);
        drop(first);
        assert_eq!(Arc::strong_count(&task), held, "kept in the free slot");
        let mut second = Box::pin(sh.deadline(far));
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(Arc::strong_count(&task), held, "taken again, not cloned");
        drop(second);
        // Another task's wait in that slot stores its own waker (the kept one is let go).
        let other = Arc::new(Task(AtomicUsize::new(0)));
        let other_waker = Waker::from(other.clone());
        let mut third = Box::pin(sh.deadline(far));
        assert!(third
            .as_mut()
            .poll(&mut Context::from_waker(&other_waker))
            .is_pending());
        assert_eq!(Arc::strong_count(&task), held - 1);
        assert_eq!(Arc::strong_count(&other), 3);
        drop(third);
        sh.fire();
        assert_eq!(other.0.load(Ordering::Relaxed), 0, "no wait, no wake");
        sh.tick(Instant::now());
        assert_eq!(Arc::strong_count(&other), 2, "let go at the tick");
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
