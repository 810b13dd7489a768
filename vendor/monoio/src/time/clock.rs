//! Source of time abstraction.
//!
//! By default, `std::time::Instant::now()` is used. However, when the
//! `test-util` feature flag is enabled, the values returned for `now()` are
//! configurable.

use std::sync::OnceLock;

use crate::time::Instant;

#[derive(Default, Debug, Clone)]
pub(crate) struct Clock {}

/// tollgate patch: the process's source of the current instant, when one is set (the timer
/// driver reads the clock twice each time it parks, and each timer reads it once).
static SOURCE: OnceLock<fn() -> std::time::Instant> = OnceLock::new();

/// tollgate patch: makes `f` the source of every instant the runtime reads (its timers,
/// `Instant::now`), in place of `std::time::Instant::now`. Once per process, before any
/// runtime starts; `f` must return instants that mix with `std::time::Instant::now`'s. It may
/// step back a little (tollgate's re-anchors by a few microseconds): the timer driver clamps a
/// clock that goes back (`process_at_time`) and converts instants to ticks saturating, and
/// `Instant` differences saturate at zero. Returns `false` if a source was set already.
pub fn set_source(f: fn() -> std::time::Instant) -> bool {
    SOURCE.set(f).is_ok()
}

pub(crate) fn now() -> Instant {
    Instant::from_std(SOURCE.get().map_or_else(std::time::Instant::now, |f| f()))
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {}
    }

    pub(crate) fn now(&self) -> Instant {
        now()
    }
}
