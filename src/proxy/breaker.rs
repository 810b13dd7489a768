//! The circuit breaker of one upstream (`upstreams[].circuit_breaker`), shared by every worker
//! through the upstream's `observe::admin::UpstreamHealth`, lock-free.
//!
//! closed → open after `consecutive_failures` failures in a row (on any worker, no success
//! since) → requests fail at once for `open_for` → half-open: up to `half_open_probes` requests
//! at a time go through; the first success closes it, a failure opens it again.
//!
//! Cost on the request path while closed: `admit` is one atomic load; `succeeded` two loads and
//! no store unless failures came before. Everything else happens while failing (the cold path).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::config::CircuitBreaker;

pub const CLOSED: u8 = 0;
pub const OPEN: u8 = 1;
pub const HALF_OPEN: u8 = 2;

/// The states as metric label values, indexed by state.
pub const STATE_NAMES: [&str; 3] = ["closed", "open", "half_open"];

pub struct Breaker {
    cfg: CircuitBreaker,
    state: AtomicU8,
    /// Consecutive failures while closed.
    run: AtomicU32,
    /// When it last opened: milliseconds since `epoch`.
    opened_at: AtomicU64,
    /// Half-open requests in flight.
    probes: AtomicU32,
    epoch: Instant,
    /// Transitions into each state, indexed by state (`tollgate_upstream_circuit_transitions_total`).
    transitions: [AtomicU64; 3],
}

/// A request let through: a half-open probe gives its slot back when dropped, whatever became
/// of the request (a client that went away included), so a probe can never stay in flight.
pub struct Admitted<'a> {
    probe: Option<&'a Breaker>,
}

impl Admitted<'_> {
    /// No slot held: a closed circuit's admission, or nothing to hand over.
    pub const NONE: Admitted<'static> = Admitted { probe: None };
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.probe {
            b.probes.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Breaker {
    pub fn new(cfg: CircuitBreaker) -> Self {
        Breaker {
            cfg,
            state: AtomicU8::new(CLOSED),
            run: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            epoch: Instant::now(),
            transitions: Default::default(),
        }
    }

    pub fn config(&self) -> &CircuitBreaker {
        &self.cfg
    }

    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    pub fn transitions(&self, to: u8) -> u64 {
        self.transitions[to as usize].load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// May a request go to the upstream now? `Err(ms)`: no, the circuit is open; ask again in
    /// `ms` milliseconds (at least 1).
    #[inline]
    pub fn admit(&self, upstream: &str) -> Result<Admitted<'_>, u64> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Ok(Admitted { probe: None });
        }
        self.admit_cold(upstream)
    }

    /// Whether `admit` would let a request through now, without changing anything: closed,
    /// open for `open_for` already (the next request is the half-open probe), or half-open
    /// with a probe slot free. Replica choice prefers these, so an open replica is offered
    /// again once it is due for its probe instead of being passed over for good.
    pub fn would_admit(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => {
                self.now_ms()
                    .saturating_sub(self.opened_at.load(Ordering::Acquire))
                    >= self.cfg.open_for.as_millis() as u64
            }
            _ => self.probes.load(Ordering::Acquire) < self.cfg.half_open_probes,
        }
    }

    #[cold]
    fn admit_cold(&self, upstream: &str) -> Result<Admitted<'_>, u64> {
        let open_for = self.cfg.open_for.as_millis() as u64;
        loop {
            match self.state.load(Ordering::Acquire) {
                CLOSED => return Ok(Admitted { probe: None }),
                OPEN => {
                    let since = self
                        .now_ms()
                        .saturating_sub(self.opened_at.load(Ordering::Acquire));
                    if since < open_for {
                        return Err(open_for - since);
                    }
                    if self
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.transitions[HALF_OPEN as usize].fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            upstream,
                            "circuit half-open: letting probe requests through"
                        );
                    }
                }
                _ => {
                    let n = self.probes.fetch_add(1, Ordering::AcqRel);
                    if n < self.cfg.half_open_probes {
                        return Ok(Admitted { probe: Some(self) });
                    }
                    self.probes.fetch_sub(1, Ordering::AcqRel);
                    // Probes are in flight: their outcome decides; ask again shortly.
                    return Err(open_for.clamp(1, 1000));
                }
            }
        }
    }

    /// A successful exchange (a response head that is not 5xx).
    #[inline]
    pub fn succeeded(&self, upstream: &str) {
        if self.run.load(Ordering::Relaxed) != 0 {
            self.run.store(0, Ordering::Relaxed);
        }
        if self.state.load(Ordering::Acquire) == HALF_OPEN {
            self.close(upstream);
        }
    }

    #[cold]
    fn close(&self, upstream: &str) {
        if self
            .state
            .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.run.store(0, Ordering::Relaxed);
            self.transitions[CLOSED as usize].fetch_add(1, Ordering::Relaxed);
            tracing::info!(upstream, "circuit closed: the upstream answered a probe");
        }
    }

    /// A failed exchange: connect failure, response-head timeout, closed before a reply, 5xx.
    #[cold]
    pub fn failed(&self, upstream: &str, why: &str) {
        match self.state.load(Ordering::Acquire) {
            CLOSED if self.cfg.consecutive_failures != 0 => {
                let n = self.run.fetch_add(1, Ordering::AcqRel).saturating_add(1);
                if n >= self.cfg.consecutive_failures {
                    self.open(CLOSED, upstream, why, n);
                }
            }
            CLOSED => {}
            HALF_OPEN => self.open(HALF_OPEN, upstream, why, 0),
            // Already open: a request admitted before it opened.
            _ => {}
        }
    }

    /// A worker's window saw `error_ratio` of its exchanges fail (`ErrorWindow`): open.
    #[cold]
    pub fn trip(&self, upstream: &str, failed: u32, total: u32) {
        if self.state.load(Ordering::Acquire) == CLOSED {
            let why = format!(
                "{failed} of {total} exchanges failed within {} ms (error_ratio {})",
                self.cfg.window.as_millis(),
                self.cfg.error_ratio
            );
            self.open(CLOSED, upstream, &why, 0);
        }
    }

    fn open(&self, from: u8, upstream: &str, why: &str, run: u32) {
        self.opened_at.store(self.now_ms(), Ordering::Release);
        if self
            .state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.transitions[OPEN as usize].fetch_add(1, Ordering::Relaxed);
            let open_for_ms = self.cfg.open_for.as_millis() as u64;
            if from == HALF_OPEN {
                tracing::warn!(
                    upstream,
                    error = why,
                    open_for_ms,
                    "circuit opened again: a probe failed"
                );
            } else {
                tracing::warn!(
                    upstream,
                    error = why,
                    consecutive_failures = run,
                    open_for_ms,
                    "circuit opened: requests to the upstream fail at once"
                );
            }
        }
    }

    /// Takes over the state of the breaker it replaces (a reload that keeps the upstream).
    pub fn carry_from(&self, old: &Breaker) {
        let since_open = old
            .now_ms()
            .saturating_sub(old.opened_at.load(Ordering::Acquire));
        let opened = self.now_ms().saturating_sub(since_open);
        self.opened_at.store(opened, Ordering::Release);
        self.run
            .store(old.run.load(Ordering::Relaxed), Ordering::Relaxed);
        for (n, o) in self.transitions.iter().zip(&old.transitions) {
            n.store(o.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        // A half-open breaker comes over open: its probes belong to the old one.
        let state = match old.state() {
            CLOSED => CLOSED,
            _ => OPEN,
        };
        if self.cfg.consecutive_failures != 0 || self.cfg.error_ratio > 0.0 {
            self.state.store(state, Ordering::Release);
        }
    }
}

/// One worker's count of an upstream's exchanges in the current `circuit_breaker.window`, for
/// `error_ratio`. Per worker, not shared: a shared count would be an atomic read-modify-write
/// on one cache line by every worker for every request; the state it trips is shared.
#[derive(Clone, Copy, Default)]
pub struct ErrorWindow {
    /// The upstream's stable id (`UpstreamRuntime::id`): a reload that moves upstreams around
    /// starts a new window rather than count into another upstream's.
    id: u64,
    start: Option<Instant>,
    total: u32,
    failed: u32,
}

impl ErrorWindow {
    /// Counts one exchange ended at `now`; trips `b` when the window's failures reach the ratio.
    pub fn count(&mut self, b: &Breaker, id: u64, upstream: &str, failed: bool, now: Instant) {
        let cfg = &b.cfg;
        let fresh = self.id != id
            || self
                .start
                .is_none_or(|s| now.duration_since(s) >= cfg.window);
        if fresh {
            *self = ErrorWindow {
                id,
                start: Some(now),
                total: 0,
                failed: 0,
            };
        }
        self.total += 1;
        self.failed += u32::from(failed);
        if failed
            && self.total >= cfg.min_requests
            && f64::from(self.failed) >= cfg.error_ratio * f64::from(self.total)
        {
            b.trip(upstream, self.failed, self.total);
            self.start = None;
        }
    }
}

/// The `data` of a circuit-open refusal: `{"upstream":…,"retryAfterMs":…}`.
pub fn refusal_data(upstream: &str, retry_after: Duration) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(b"{\"upstream\":");
    crate::error::json_escape_into(&mut v, upstream);
    v.extend_from_slice(format!(",\"retryAfterMs\":{}}}", retry_after.as_millis()).as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(n: u32, open_for: Duration, probes: u32) -> Breaker {
        Breaker::new(CircuitBreaker {
            consecutive_failures: n,
            error_ratio: 0.0,
            min_requests: 20,
            window: Duration::from_secs(60),
            open_for,
            half_open_probes: probes,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(3, Duration::from_secs(60), 1);
        b.failed("u", "x");
        b.failed("u", "x");
        b.succeeded("u"); // a success resets the run
        b.failed("u", "x");
        b.failed("u", "x");
        assert_eq!(b.state(), CLOSED);
        assert!(b.admit("u").is_ok());
        b.failed("u", "x");
        assert_eq!(b.state(), OPEN);
        let wait = b.admit("u").err().expect("open refuses");
        assert!(wait > 0 && wait <= 60_000, "{wait}");
        assert_eq!(b.transitions(OPEN), 1);
    }

    #[test]
    fn half_open_lets_probes_through_and_closes_or_reopens() {
        // open_for 0 is refused by the config; a breaker built with it is half-open at once.
        let b = breaker(1, Duration::ZERO, 2);
        b.failed("u", "x");
        assert_eq!(b.state(), OPEN);
        let p1 = b.admit("u").expect("first probe");
        assert_eq!(b.state(), HALF_OPEN);
        let p2 = b.admit("u").expect("second probe");
        assert!(b.admit("u").is_err(), "only half_open_probes at a time");
        drop(p2);
        let p3 = b.admit("u").expect("a probe slot came back");
        b.failed("u", "x");
        assert_eq!(b.state(), OPEN);
        drop((p1, p3));
        let _p = b.admit("u").expect("half-open again");
        b.succeeded("u");
        assert_eq!(b.state(), CLOSED);
        assert!(b.admit("u").is_ok());
        assert_eq!(
            (
                b.transitions(OPEN),
                b.transitions(HALF_OPEN),
                b.transitions(CLOSED)
            ),
            (2, 2, 1)
        );
    }

    #[test]
    fn an_error_ratio_over_a_window_opens_it() {
        let b = Breaker::new(CircuitBreaker {
            consecutive_failures: 0,
            error_ratio: 0.5,
            min_requests: 4,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(60),
            half_open_probes: 1,
        });
        let mut w = ErrorWindow::default();
        let t = Instant::now();
        // Alternating: never two failures in a row, half of them failed.
        for (i, failed) in [true, false, true, false].into_iter().enumerate() {
            assert_eq!(b.state(), CLOSED, "after {i}");
            w.count(&b, 7, "u", failed, t);
        }
        // The 4th exchange was a success: only a failure trips it.
        assert_eq!(b.state(), CLOSED);
        w.count(&b, 7, "u", true, t);
        assert_eq!(b.state(), OPEN);
        // A new window (past `window`, or another upstream id) starts from nothing.
        let b2 = breaker(0, Duration::from_secs(60), 1);
        let mut w2 = ErrorWindow::default();
        w2.count(&b2, 1, "u", true, t);
        w2.count(&b2, 2, "u", true, t);
        assert_eq!(w2.total, 1);
        w2.count(&b2, 2, "u", true, t + Duration::from_secs(61));
        assert_eq!(w2.total, 1);
    }

    #[test]
    fn zero_failures_is_no_breaker() {
        let b = breaker(0, Duration::from_secs(60), 1);
        for _ in 0..100 {
            b.failed("u", "x");
        }
        assert_eq!(b.state(), CLOSED);
    }

    #[test]
    fn refusal_data_is_json() {
        let d = refusal_data("a\"b", Duration::from_millis(1500));
        let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
        assert_eq!(v["retryAfterMs"], 1500);
        assert_eq!(v["upstream"], "a\"b");
    }
}
