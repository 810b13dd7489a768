//! The request path's monotonic clock. A call reads it about five times (its start, the limit
//! decision, the upstream exchange's start and end, the record phase); `Instant::now` is a vDSO
//! `clock_gettime` (~22 ns here), this ~9 ns (bench/clock.rs). `now` reads the TSC and moves
//! the thread's anchor (an `Instant` read together with a TSC value) by the scaled
//! difference, so it returns a `std::time::Instant` that mixes with every other: timers,
//! deadlines, the worker's tick.
//!
//! The anchor is read again from the OS clock when it is older than `MAX_AGE`, so the TSC's scale
//! error (quanta calibrates it once, against the monotonic clock) and the OS clock's slewing
//! never add up to more than a few microseconds, and a re-anchor steps back at most that much
//! (`Instant` differences saturate at zero).
//!
//! The TSC is used only where the kernel itself keeps time by it (its clocksource is `tsc`: not
//! marked unstable, synchronised across CPUs) and quanta found it invariant; and each re-anchor
//! checks the prediction against the OS clock: off by more than `MAX_ERROR` (a bad calibration,
//! a TSC that differs between cores), the process goes back to `Instant::now` for good and says
//! so in the log.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long an anchor serves before it is read again from the OS clock.
const MAX_AGE: Duration = Duration::from_millis(20);
/// How far a prediction may be from the OS clock at a re-anchor before the TSC is given up.
const MAX_ERROR: Duration = Duration::from_micros(200);

static CLOCK: OnceLock<Option<quanta::Clock>> = OnceLock::new();
/// Set when a re-anchor found the TSC off: `now` is `Instant::now` from then on.
static GIVEN_UP: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's anchor: an OS instant and the raw counter read with it.
    static ANCHOR: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// Calibrates the counter (once per process, a few milliseconds at most; up to 200 ms on a
/// noisy machine): call at start, before the workers, so no request pays it.
pub fn init() {
    clock();
    // The runtime's timers and `monoio::time::Instant::now` read it too (a monoio patch,
    // vendor/monoio/PATCHES.md): its timer driver reads the clock twice at every park.
    monoio::time::set_clock_source(now);
}

fn clock() -> Option<&'static quanta::Clock> {
    CLOCK
        .get_or_init(|| {
            let source = std::fs::read_to_string(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .unwrap_or_default();
            (source.trim() == "tsc").then(quanta::Clock::new)
        })
        .as_ref()
}

/// The current instant (see the module).
#[inline]
pub fn now() -> Instant {
    let Some(c) = clock().filter(|_| !GIVEN_UP.load(Relaxed)) else {
        return Instant::now();
    };
    let raw = c.raw();
    if let Some((at, at_raw)) = ANCHOR.get() {
        // (A counter behind the anchor, e.g. read on another core after a migration, takes a
        // new anchor rather than standing still.)
        let since = c.delta_as_nanos(at_raw, raw);
        if raw >= at_raw && since < MAX_AGE.as_nanos() as u64 {
            return at + Duration::from_nanos(since);
        }
    }
    anchor(c)
}

#[cold]
fn anchor(c: &quanta::Clock) -> Instant {
    // The OS clock between two counter reads: judged only when nothing came in between (a
    // thread preempted there would blame the TSC for the time it waited).
    let r0 = c.raw();
    let os = Instant::now();
    let r1 = c.raw();
    // (A counter behind the anchor predicts nothing: only a new anchor.)
    if let Some((at, at_raw)) = ANCHOR.get().filter(|(_, at_raw)| r0 >= *at_raw) {
        let quiet = r1 >= r0 && c.delta_as_nanos(r0, r1) < MAX_ERROR.as_nanos() as u64 / 4;
        let predicted = at + Duration::from_nanos(c.delta_as_nanos(at_raw, r0));
        if let Some(off) = disagrees(at, predicted, os).filter(|_| quiet) {
            if !GIVEN_UP.swap(true, Relaxed) {
                tracing::warn!(
                    off_us = off.as_micros() as u64,
                    "the TSC disagrees with the OS clock: timing from the OS clock from now on"
                );
            }
            return os;
        }
    }
    ANCHOR.set(Some((os, r0)));
    os
}

/// How far the TSC's `predicted` instant is from the OS clock's `os`, when that is more than
/// `MAX_ERROR` over a short time since the anchor `at` (across a long idle the OS clock's own
/// slewing would count too, so nothing is judged then).
fn disagrees(at: Instant, predicted: Instant, os: Instant) -> Option<Duration> {
    let off = predicted.max(os) - predicted.min(os);
    (os.saturating_duration_since(at) < MAX_AGE * 4 && off > MAX_ERROR).then_some(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_os_clock_across_anchors() {
        init();
        let mut last = now();
        let started = Instant::now();
        // Across several anchors (MAX_AGE each): never far from the OS clock, never back more
        // than a re-anchor's step.
        while started.elapsed() < MAX_AGE * 3 {
            let os_before = Instant::now();
            let t = now();
            let os_after = Instant::now();
            // The scale's error over one anchor's age (quanta calibrates to ~10 ns per µs at
            // worst; a wrong scale, e.g. raw ticks, is off by far more).
            let slack = Duration::from_micros(500);
            assert!(t + slack >= os_before, "{t:?} behind {os_before:?}");
            assert!(t <= os_after + slack, "{t:?} ahead of {os_after:?}");
            assert!(t + slack >= last, "stepped back from {last:?} to {t:?}");
            last = t;
        }
    }

    #[test]
    fn a_prediction_off_the_os_clock_gives_the_tsc_up() {
        let at = Instant::now();
        let os = at + MAX_AGE;
        // Within the bound, either side: kept.
        assert_eq!(disagrees(at, os + MAX_ERROR / 2, os), None);
        assert_eq!(disagrees(at, os - MAX_ERROR / 2, os), None);
        // Past it (a scale 2 % off over 20 ms, or a core whose counter runs ahead): given up.
        let off = MAX_AGE / 50;
        assert_eq!(disagrees(at, os + off, os), Some(off));
        assert_eq!(disagrees(at, os - off, os), Some(off));
        // After a long idle nothing is judged.
        let late = at + MAX_AGE * 10;
        assert_eq!(disagrees(at, late + off, late), None);
    }

    #[test]
    fn measures_a_sleep() {
        let t0 = now();
        std::thread::sleep(Duration::from_millis(30));
        let d = now() - t0;
        assert!(d >= Duration::from_millis(29), "{d:?}");
    }
}
