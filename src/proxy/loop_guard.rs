//! The loop guard's count (`traffic.rules[].loop: {max, window}`), per worker: a fixed window per
//! rule and key (principal, tool, arguments) that opens at the key's first call and admits
//! `max` calls; the next is refused until it closes. Not exchanged between workers, so a loop
//! whose calls land on N workers gets at most `N × max` per window; at most `traffic.max_keys`
//! windows per worker. No I/O: `now` (microseconds, monotonic) comes from the limit phase.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::policy::traffic::LoopGuard;

/// One key's window: when it closes, and the calls it admitted.
#[derive(Clone, Copy, Debug)]
struct Window {
    ends_us: u64,
    count: u64,
}

/// A worker's loop windows, by (the rule's `LoopGuard::fp`, key).
pub struct Book {
    windows: RefCell<HashMap<(u64, u64), Window>>,
    /// `tollgate_traffic_keys_evicted_total`: windows still open dropped to stay within the cap.
    evictions: metrics::Counter,
}

impl Default for Book {
    fn default() -> Self {
        Book {
            windows: RefCell::default(),
            evictions: metrics::counter!(crate::observe::names::TRAFFIC_KEYS_EVICTED_TOTAL),
        }
    }
}

impl Book {
    /// Whether one more call of `key` fits `g`'s window at `now_us`, counting `already` calls of
    /// the same key admitted earlier in this request (a batch) and not yet counted. `Err`: the
    /// milliseconds until the window closes (when the same call is admitted again).
    pub fn judge(&self, g: &LoopGuard, key: u64, now_us: u64, already: u64) -> Result<(), u64> {
        let window_us = g.window.as_micros() as u64;
        let (ends_us, count) = match self.windows.borrow().get(&(g.fp, key)) {
            Some(w) if w.ends_us > now_us => (w.ends_us, w.count),
            // None open: this call would open one.
            _ => (now_us.saturating_add(window_us), 0),
        };
        if count.saturating_add(already) < g.max {
            Ok(())
        } else {
            Err((ends_us - now_us).div_ceil(1000).max(1))
        }
    }

    /// Counts an admitted call of `key` (`judge` said it fits), keeping at most `cap` windows.
    pub fn admit(&self, g: &LoopGuard, key: u64, now_us: u64, cap: usize) {
        let mut windows = self.windows.borrow_mut();
        if windows.len() >= cap.max(1) && !windows.contains_key(&(g.fp, key)) {
            self.make_room(&mut windows, cap.max(1), now_us);
        }
        let w = windows.entry((g.fp, key)).or_insert(Window {
            ends_us: 0,
            count: 0,
        });
        if w.ends_us <= now_us {
            *w = Window {
                ends_us: now_us.saturating_add(g.window.as_micros() as u64),
                count: 0,
            };
        }
        w.count += 1;
    }

    /// The book is full: closed windows go; if that frees less than a sixteenth of `cap`, the
    /// open windows with the fewest calls go too (counted), down to `cap - cap / 16`, so a full book
    /// does this once per `cap / 16` new keys rather than on every one.
    #[cold]
    fn make_room(&self, windows: &mut HashMap<(u64, u64), Window>, cap: usize, now_us: u64) {
        windows.retain(|_, w| w.ends_us > now_us);
        let keep = cap - (cap / 16).max(1);
        if windows.len() <= keep {
            return;
        }
        // The fewest calls first (then the soonest to close): a window near its `max` is the
        // one tracking a loop, and a flood of calls with new arguments must not evict it.
        let rank = |w: &Window| (w.count, w.ends_us);
        let mut ranks: Vec<(u64, u64)> = windows.values().map(rank).collect();
        let drop = windows.len() - keep;
        let (_, &mut cut, _) = ranks.select_nth_unstable(drop - 1);
        let before = windows.len();
        // Every window ranked below the cut, and at the cut while more must go.
        let mut at_cut = drop - ranks[..drop].iter().filter(|&&r| r < cut).count();
        windows.retain(|_, w| {
            if rank(w) < cut {
                return false;
            }
            if rank(w) == cut && at_cut > 0 {
                at_cut -= 1;
                return false;
            }
            true
        });
        let evicted = before - windows.len();
        self.evictions.increment(evicted as u64);
        tracing::debug!(
            evicted,
            cap,
            "loop guard windows evicted to stay within traffic.max_keys"
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.windows.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: u64 = 1_000_000;

    fn guard(max: u64, window: Duration) -> LoopGuard {
        LoopGuard { max, window, fp: 7 }
    }

    /// `judge`, then `admit` when it fits: what the limit phase does for one call.
    fn call(b: &Book, g: &LoopGuard, key: u64, now: u64) -> Result<(), u64> {
        b.judge(g, key, now, 0)?;
        b.admit(g, key, now, 1000);
        Ok(())
    }

    #[test]
    fn max_calls_in_a_window_then_refused_until_it_closes_whatever_the_pace() {
        let b = Book::default();
        let g = guard(3, Duration::from_secs(60));
        let t0 = 100 * S;
        // Three calls spread over the window pass; a rate of 3 per minute would let a fourth
        // through after 20 s, the window does not.
        for at in [t0, t0 + 20 * S, t0 + 40 * S] {
            assert_eq!(call(&b, &g, 1, at), Ok(()));
        }
        assert_eq!(call(&b, &g, 1, t0 + 41 * S), Err(19_000));
        assert_eq!(call(&b, &g, 1, t0 + 59 * S), Err(1_000));
        // A refused call does not keep the window open; it closes 60 s after the first call.
        assert_eq!(call(&b, &g, 1, t0 + 60 * S), Ok(()));
        assert_eq!(call(&b, &g, 1, t0 + 61 * S), Ok(()));
        assert_eq!(call(&b, &g, 1, t0 + 62 * S), Ok(()));
        assert_eq!(call(&b, &g, 1, t0 + 63 * S), Err(57_000));
        // Another key, or another rule (fingerprint), has its own window.
        assert_eq!(call(&b, &g, 2, t0 + 63 * S), Ok(()));
        let other = LoopGuard { fp: 8, ..g };
        assert_eq!(call(&b, &other, 1, t0 + 63 * S), Ok(()));
    }

    #[test]
    fn calls_earlier_in_a_batch_count() {
        let b = Book::default();
        let g = guard(2, Duration::from_secs(10));
        assert_eq!(b.judge(&g, 1, S, 0), Ok(()));
        assert_eq!(b.judge(&g, 1, S, 1), Ok(()));
        assert_eq!(b.judge(&g, 1, S, 2), Err(10_000));
        b.admit(&g, 1, S, 10);
        assert_eq!(b.judge(&g, 1, S, 1), Err(10_000));
    }

    #[test]
    fn the_book_stays_within_its_cap_closed_windows_first() {
        let b = Book::default();
        let g = guard(1, Duration::from_secs(10));
        // 64 keys: the first 32 of them closed by the time the others come.
        for k in 0..32 {
            b.admit(&g, k, S, 64);
        }
        for k in 32..64 {
            b.admit(&g, k, 20 * S + k, 64);
        }
        assert_eq!(b.len(), 64);
        b.admit(&g, 1000, 21 * S, 64);
        assert_eq!(b.len(), 33, "the closed windows went, the open ones stayed");
        // Full of open windows: those with the fewest calls go (all have one here: the soonest to close), a sixteenth at a time.
        for k in 2000..3000 {
            b.admit(&g, k, 22 * S, 64);
            assert!(b.len() <= 64);
        }
        // The newest key is still refused: its window was kept.
        assert!(b.judge(&g, 2999, 22 * S, 0).is_err());
    }

    #[test]
    fn a_flood_of_new_arguments_does_not_evict_the_window_of_a_loop() {
        let b = Book::default();
        let g = guard(5, Duration::from_secs(60));
        for _ in 0..4 {
            b.admit(&g, 7, S, 64);
        }
        // Calls with ever new arguments, each opening a window of one call.
        for k in 1000..3000 {
            b.admit(&g, k, S + k, 64);
            assert!(b.len() <= 64);
        }
        // The loop's window kept its four calls: one more, then refused.
        assert!(b.judge(&g, 7, 2 * S, 0).is_ok());
        b.admit(&g, 7, 2 * S, 64);
        assert!(b.judge(&g, 7, 2 * S, 0).is_err());
    }
}
