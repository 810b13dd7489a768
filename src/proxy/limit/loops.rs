//! The loop guard's count (`traffic.rules[].loop: {max, window}`) on the exchange: a fixed
//! window per rule and key (principal, tool, arguments) that opens at the key's first call on
//! any worker and admits `max` calls in all. Workers decide from their shares like the other
//! limits; the window's end is the exchange's (workers adopt it from its updates). Per
//! instance: not sent to `traffic.redis`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use crate::policy::traffic::{LimitKind, LoopGuard, Traffic};

use super::exchange::{Chans, Def, Event, Exchange};
use super::local::{Entry, Local, Map};
use super::sync::{send_shares, Book, Global};
use super::{now_us, Judged};

/// The exchange's loop windows, apart from the limits' keys: every distinct call makes one, and
/// a sync visits only those its events touched and those whose window ended, never them all.
#[derive(Default)]
pub(super) struct Windows {
    pub(super) keys: HashMap<(u64, u64), Global>,
    /// Keys with events in this sync (a key may be there more than once).
    pub(super) touched: Vec<(u64, u64)>,
    /// (window end, key) of every window opened, soonest first; an item whose key is gone or
    /// whose window moved on is stale (dropped when it comes up, or when stale items make up
    /// most of the heap).
    pub(super) ends: BinaryHeap<Reverse<(i64, (u64, u64))>>,
    /// Windows held over to the next sync (`sweep`).
    held: Vec<(u64, u64)>,
}

/// Exchange: counts `delta` calls of `ev`'s worker in the key's window (`created` by this
/// event: its window is the worker's). A call at or after the window's end opens the next one,
/// which ends `window` after it.
pub(super) fn count(
    g: &mut Global,
    ev: &Event,
    delta: u64,
    window: Duration,
    created: bool,
    ends: &mut BinaryHeap<Reverse<(i64, (u64, u64))>>,
) {
    if ev.at_us as i64 >= g.window_end {
        g.window_end = ev.at_us.saturating_add(window.as_micros() as u64) as i64;
        g.count = 0;
        // Every worker holding the key hears of the new window, even with an unchanged share.
        for s in &mut g.sides {
            s.sent = None;
        }
        ends.push(Reverse((g.window_end, (ev.fp, ev.key))));
    } else if created {
        ends.push(Reverse((g.window_end, (ev.fp, ev.key))));
    }
    g.count += delta;
}

/// Exchange, once per sync: sends the workers their shares of every window this sync's events
/// touched (as `sync_once` does for the limits' keys), then drops the windows that ended with
/// no call since. A window a first share opened in this sync (`Global::hold`) waits for the
/// next: a worker that took its first share before the key was known sends its calls right
/// after, and what is left is split once they are counted.
pub(super) fn sweep(x: &Exchange, ch: &Chans, book: &mut Book, defs: &HashMap<u64, Def>, now: u64) {
    let Book {
        loops,
        removed,
        who,
        demand,
        shares,
        ..
    } = book;
    let Windows {
        keys,
        touched,
        ends,
        held,
    } = loops;
    for k in touched.drain(..) {
        let Some(g) = keys.get_mut(&k) else { continue };
        if !g.active {
            continue; // Seen earlier in this list.
        }
        if g.hold {
            held.push(k);
            continue;
        }
        let Some(LimitKind::Loop { max, .. }) = defs.get(&k.0).map(|d| d.kind) else {
            continue;
        };
        let left = self::left(g, max, now);
        send_shares(
            x,
            ch,
            k.0,
            k.1,
            g,
            (left, false, 0),
            0,
            false,
            who,
            demand,
            shares,
        );
        for s in &mut g.sides {
            s.demand = 0;
        }
        g.active = false;
    }
    // Split at the next sync (still active: their demand is kept).
    for k in held.iter() {
        if let Some(g) = keys.get_mut(k) {
            g.hold = false;
        }
    }
    touched.append(held);
    while let Some(&Reverse((end, k))) = ends.peek() {
        if end > now as i64 {
            break;
        }
        ends.pop();
        if keys.get(&k).is_some_and(|g| g.window_end <= now as i64) {
            keys.remove(&k);
            *removed += 1;
        }
    }
    // Stale items (evicted keys, windows reopened) outnumber the live: rebuilt from the keys.
    if ends.len() > 2 * keys.len() + 1024 {
        *ends = keys
            .iter()
            .map(|(&k, g)| Reverse((g.window_end, k)))
            .collect();
    }
}

/// Exchange: what is left of the key's window at `now` (all of `max` once it ended).
pub(super) fn left(g: &Global, max: u64, now: u64) -> u64 {
    if now as i64 >= g.window_end {
        max
    } else {
        max.saturating_sub(g.count)
    }
}

/// Worker: its first share of a window of `max` calls for `key`, before the exchange's word.
/// `max / workers` each, and the remainder one each to `max % workers` of the workers (which
/// ones turns with the key): the first shares of all workers add up to `max` exactly, so
/// calls reaching every worker at once are not over-admitted. With fewer calls than workers,
/// one each (over by at most `workers - max`): a call never waits on a key nobody used.
pub(super) fn first_share(max: u64, workers: usize, worker: u16, key: u64) -> u64 {
    let n = workers.max(1) as u64;
    if max < n {
        return 1;
    }
    let extra = (u64::from(worker) + key % n) % n < max % n;
    max / n + u64::from(extra)
}

/// Worker (`Local::apply`): a loop entry takes the exchange's window end from an update while
/// that window is open (one that ended is for a window the entry has left or will leave).
pub(super) fn adopt(e: &mut Entry, window_end: i64) -> bool {
    if !e.looped || window_end <= now_us() as i64 {
        return false;
    }
    e.window_end = window_end;
    true
}

impl Local {
    /// A loop guard's decision for `key` on this worker (nothing committed; `already` calls of
    /// this request are pending on it). A new entry, or one whose window closed, opens a window
    /// of its own with a first share (`first_share`), unless the exchange knows the key (then
    /// none: it waits for the exchange's; a worker alone takes it anyway at a close). Over its share while the window may have room
    /// elsewhere, it asks the exchange and waits: the refusal says the call was made `max`
    /// times, so it comes only when the window is full (or the wait is over).
    pub(super) fn judge_loop(
        &self,
        map: &mut Map,
        t: &Traffic,
        g: &LoopGuard,
        key: u64,
        now: u64,
        already: u64,
    ) -> Judged {
        let workers = self.exchange.workers;
        let sync_ms = (t.sync_interval.as_millis() as u64).max(1);
        let ends = now.saturating_add(g.window.as_micros() as u64) as i64;
        let k = (g.fp, key);
        if !map.contains_key(&k) {
            let cap = if self.known(k) {
                0
            } else {
                first_share(g.max, workers, self.worker, key)
            };
            self.create(map, t.max_keys, k, cap, ends, (false, true));
        }
        let Some(e) = map.get_mut(&k) else {
            return Judged::Over {
                retry_ms: sync_ms,
                wait: false,
            };
        };
        e.touched = true;
        if e.window_end <= now as i64 {
            // Closed: this call opens the next window here. With a first share only when the
            // exchange does not know the key (else another worker may have opened the next
            // window already: it waits for the exchange's word), or when this worker is alone.
            let known = workers > 1 && self.known(k);
            e.epoch = self.epoch();
            e.level = 0;
            e.cap = if known {
                0
            } else {
                first_share(g.max, workers, self.worker, key)
            };
            e.window_end = ends;
            e.left = None;
            e.base = 0;
            e.share = 0;
            e.dirty = false;
        }
        if e.level + already < e.cap {
            return Judged::Admit;
        }
        // Room: as for a limit (`judge`), the window had more left at the last update than
        // this worker used since, or no update came yet.
        let room = self.ask_more(k, e, now, sync_ms, workers);
        let retry_ms = if room {
            sync_ms
        } else {
            (e.window_end as u64).saturating_sub(now).div_ceil(1000)
        };
        Judged::Over {
            retry_ms: retry_ms.max(1),
            wait: room,
        }
    }
}

impl Local {
    /// `g`'s decision for `key` with nothing else around it (`bench/limit.rs`): updates
    /// applied, judged, counted when admitted (a wait is a refusal here).
    pub fn decide_loop(&self, t: &Traffic, g: &LoopGuard, key: u64) -> bool {
        let now = now_us();
        let mut map = self.map.borrow_mut();
        self.apply(&mut map, now);
        match self.judge_loop(&mut map, t, g, key, now, 0) {
            Judged::Admit => {
                self.admitted(&mut map, (g.fp, key), 1, now);
                true
            }
            Judged::Over { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::super::exchange::{Exchange, REDIS_CLOSED};
    use super::super::sync::{sync_once, Book};
    use super::*;
    use crate::config::Config;

    const S: u64 = 1_000_000;
    const WALL: i64 = 1_000_000;

    fn config(rule: &str) -> Config {
        crate::config::load_str(&format!("traffic:\n  rules:\n    - {rule}\n")).unwrap()
    }

    /// `workers` workers on an exchange for `cfg` with no sync thread (the test syncs).
    fn workers(cfg: &Config, n: usize) -> (Arc<Exchange>, Vec<Rc<Local>>) {
        let x = Exchange::new(n);
        x.started.store(true, Ordering::Relaxed);
        x.install(&cfg.traffic);
        let locals = (0..n).map(|w| Local::new(x.clone(), w)).collect();
        (x, locals)
    }

    fn guard(cfg: &Config) -> LoopGuard {
        cfg.traffic.rules[0].loop_guard.unwrap()
    }

    /// What the limit phase does for one call of `key` at `now` on `local`: updates applied,
    /// judged, counted when admitted. `Err`: the refusal's `retryAfterMs`, and whether it waits.
    fn call(local: &Local, cfg: &Config, key: u64, now: u64) -> Result<(), (u64, bool)> {
        let t = &cfg.traffic;
        let g = guard(cfg);
        let mut map = local.map.borrow_mut();
        local.apply(&mut map, 0);
        match local.judge_loop(&mut map, t, &g, key, now, 0) {
            Judged::Admit => {
                local.admitted(&mut map, (g.fp, key), 1, now);
                Ok(())
            }
            Judged::Over { retry_ms, wait } => Err((retry_ms, wait)),
        }
    }

    /// Refused for good (the window is full): the milliseconds until it closes.
    fn refused(r: Result<(), (u64, bool)>) -> u64 {
        match r {
            Err((ms, false)) => ms,
            other => panic!("not refused for good: {other:?}"),
        }
    }

    #[test]
    fn max_calls_in_a_window_then_refused_until_it_closes_whatever_the_pace() {
        let cfg = config("{name: loops, loop: {max: 3, window: 60s}}");
        let (x, w) = workers(&cfg, 1);
        let mut book = Book::default();
        let t0 = now_us() + S;
        // Three calls spread over the window pass; a rate of 3 per minute would let a fourth
        // through after 20 s, the window does not.
        for at in [t0, t0 + 20 * S, t0 + 40 * S] {
            assert_eq!(call(&w[0], &cfg, 1, at), Ok(()));
            sync_once(&x, &mut book, at, WALL);
        }
        assert_eq!(refused(call(&w[0], &cfg, 1, t0 + 41 * S)), 19_000);
        assert_eq!(refused(call(&w[0], &cfg, 1, t0 + 59 * S)), 1_000);
        // A refused call does not keep the window open; it closes 60 s after the first call.
        for at in [t0 + 60 * S, t0 + 61 * S, t0 + 62 * S] {
            assert_eq!(call(&w[0], &cfg, 1, at), Ok(()));
            sync_once(&x, &mut book, at, WALL);
        }
        assert_eq!(refused(call(&w[0], &cfg, 1, t0 + 63 * S)), 57_000);
        // Another key has its own window.
        assert_eq!(call(&w[0], &cfg, 2, t0 + 63 * S), Ok(()));
    }

    /// `call`, and when it waits for the exchange's word (which its demand asked for), a sync
    /// and the same call again, as the limit phase does.
    fn call_synced(
        x: &Exchange,
        book: &mut Book,
        local: &Local,
        cfg: &Config,
        at: u64,
    ) -> Result<(), (u64, bool)> {
        match call(local, cfg, 1, at) {
            Err((_, true)) => {
                sync_once(x, book, at, WALL);
                call(local, cfg, 1, at)
            }
            r => r,
        }
    }

    #[test]
    fn a_loop_spread_over_two_workers_gets_max_calls_in_the_window_its_first_call_opened() {
        let cfg = config("{name: loops, loop: {max: 5, window: 60s}}");
        let (x, w) = workers(&cfg, 2);
        let mut book = Book::default();
        let t0 = now_us() + S;
        // One call a second, alternating between the workers, the exchange syncing between
        // them (as it does every 20 ms): five admitted in all, not five on each.
        let mut admitted = 0;
        for i in 0..20u64 {
            let at = t0 + i * S;
            match call_synced(&x, &mut book, &w[(i % 2) as usize], &cfg, at) {
                Ok(()) => admitted += 1,
                Err((ms, wait)) => {
                    assert!(i >= 5 && !wait, "call {i} refused");
                    // The window opened with the first call, on worker 0.
                    assert_eq!(ms, 60_000 - i * 1000, "call {i}");
                }
            }
            sync_once(&x, &mut book, at, WALL);
        }
        assert_eq!(admitted, 5);
        // The window closes 60 s after the first call: the next call, on either worker, opens
        // the next one, which the other worker then shares.
        let t1 = t0 + 60 * S;
        let mut again = 0;
        for i in 0..20u64 {
            let at = t1 + i * 100_000;
            if call_synced(&x, &mut book, &w[(1 + i % 2) as usize % 2], &cfg, at).is_ok() {
                again += 1;
            }
            sync_once(&x, &mut book, at, WALL);
        }
        assert_eq!(again, 5);
        assert_eq!(refused(call(&w[0], &cfg, 1, t1 + 2 * S)), 58_000);
    }

    #[test]
    fn the_first_shares_add_up_to_max_turning_with_the_key() {
        for (max, n) in [(5, 4), (4, 2), (5, 2), (7, 3), (64, 16), (1, 1)] {
            for key in 0..10 {
                let shares: Vec<u64> = (0..n as u16).map(|w| first_share(max, n, w, key)).collect();
                assert_eq!(shares.iter().sum::<u64>(), max, "{max} {n} {key}");
                assert!(shares
                    .iter()
                    .all(|&s| s >= 1 && s <= max.div_ceil(n as u64)));
            }
        }
        // The worker with the extra call turns with the key.
        assert_ne!(first_share(5, 4, 0, 0), first_share(5, 4, 0, 1));
        // Fewer calls than workers: one each.
        assert!((0..4).all(|w| first_share(2, 4, w, 9) == 1));
    }

    /// `max` calls of one key on each of `n` workers before the exchange knows it, then again
    /// once it synced: what was admitted in all.
    fn burst(max: u64, n: usize) -> u64 {
        let cfg = config(&format!(
            "{{name: loops, loop: {{max: {max}, window: 60s}}}}"
        ));
        let (x, w) = workers(&cfg, n);
        let mut book = Book::default();
        let t0 = now_us() + S;
        let mut admitted = 0;
        for round in 0..max {
            for l in &w {
                if call(l, &cfg, 1, t0 + round).is_ok() {
                    admitted += 1;
                }
            }
        }
        // Once the exchange counted them (it splits a window a first share opened a sync
        // later), nothing more in this window, on any worker.
        sync_once(&x, &mut book, t0 + 20_000, WALL);
        sync_once(&x, &mut book, t0 + 40_000, WALL);
        for l in &w {
            assert_eq!(refused(call(l, &cfg, 1, t0 + S)), 59_000);
        }
        admitted
    }

    #[test]
    fn a_burst_on_every_worker_before_a_sync_is_not_over_admitted() {
        assert_eq!(burst(5, 4), 5);
        assert_eq!(burst(5, 2), 5);
        // Fewer calls than workers: one each, over by `workers - max`.
        assert_eq!(burst(2, 4), 4);
    }

    #[test]
    fn a_first_share_taken_before_the_key_was_known_is_counted_before_the_rest_is_split() {
        // Worker 1 makes its entry (a first share: the key is not known yet) just before the
        // exchange first hears of the key from worker 0, and its call reaches the exchange
        // just after that sync. The window is split only at the next sync, once it counted
        // that call: no more than max in all.
        let cfg = config("{name: loops, loop: {max: 4, window: 60s}}");
        let (x, w) = workers(&cfg, 2);
        let g = guard(&cfg);
        let t = &cfg.traffic;
        let mut book = Book::default();
        let t0 = now_us() + S;
        let mut admitted = 0;
        while call(&w[0], &cfg, 1, t0).is_ok() {
            admitted += 1;
        }
        {
            let mut map = w[1].map.borrow_mut();
            assert!(matches!(
                w[1].judge_loop(&mut map, t, &g, 1, t0, 0),
                Judged::Admit
            ));
        }
        sync_once(&x, &mut book, t0, WALL);
        {
            let mut map = w[1].map.borrow_mut();
            w[1].admitted(&mut map, (g.fp, 1), 1, t0);
        }
        admitted += 1;
        for round in 0..4 {
            for l in &w {
                while call(l, &cfg, 1, t0 + round).is_ok() {
                    admitted += 1;
                }
            }
            sync_once(&x, &mut book, t0 + round, WALL);
        }
        assert_eq!(admitted, 4);
        for l in &w {
            assert_eq!(refused(call(l, &cfg, 1, t0 + S)), 59_000);
        }
    }

    #[test]
    fn a_worker_whose_window_closed_waits_for_the_one_another_worker_opened() {
        // Worker 0 opens the next window; worker 1's window closed too, and its call comes
        // before the exchange's word: the key is known, so it waits for its share of the
        // window worker 0 opened instead of taking a first share of its own.
        let cfg = config("{name: loops, loop: {max: 4, window: 60s}}");
        let (x, w) = workers(&cfg, 2);
        let mut book = Book::default();
        let t0 = now_us() + S;
        for l in &w {
            assert_eq!(call(l, &cfg, 1, t0), Ok(()));
        }
        sync_once(&x, &mut book, t0, WALL);
        sync_once(&x, &mut book, t0, WALL);
        let t1 = t0 + 60 * S;
        let mut admitted = 0;
        while call(&w[0], &cfg, 1, t1).is_ok() {
            admitted += 1;
        }
        assert!(matches!(call(&w[1], &cfg, 1, t1 + 1), Err((_, true))));
        for round in 0..4 {
            sync_once(&x, &mut book, t1 + round, WALL);
            for l in &w {
                while call(l, &cfg, 1, t1 + round).is_ok() {
                    admitted += 1;
                }
            }
        }
        assert_eq!(admitted, 4);
    }

    #[test]
    fn calls_earlier_in_a_batch_count() {
        let cfg = config("{name: loops, loop: {max: 2, window: 10s}}");
        let (_x, w) = workers(&cfg, 1);
        let g = guard(&cfg);
        let t = &cfg.traffic;
        let now = now_us() + S;
        let mut map = w[0].map.borrow_mut();
        assert!(matches!(
            w[0].judge_loop(&mut map, t, &g, 1, now, 0),
            Judged::Admit
        ));
        assert!(matches!(
            w[0].judge_loop(&mut map, t, &g, 1, now, 1),
            Judged::Admit
        ));
        assert!(matches!(
            w[0].judge_loop(&mut map, t, &g, 1, now, 2),
            Judged::Over {
                retry_ms: 10_000,
                wait: false
            }
        ));
    }

    #[test]
    fn a_window_evicted_on_a_worker_keeps_its_count_on_the_exchange() {
        // Room for two entries per worker: a flood of other calls evicts the loop's entry,
        // but its count is the exchange's, and the re-created entry waits for its word.
        let cfg = crate::config::load_str(
            "traffic:\n  max_keys: 2\n  rules:\n    - {name: loops, loop: {max: 3, window: 60s}}\n",
        )
        .unwrap();
        let (x, w) = workers(&cfg, 1);
        let mut book = Book::default();
        let t0 = now_us() + S;
        for i in 0..3 {
            assert_eq!(call(&w[0], &cfg, 7, t0 + i), Ok(()));
        }
        sync_once(&x, &mut book, t0 + 10, WALL);
        for k in 100..110 {
            assert_eq!(call(&w[0], &cfg, k, t0 + S + k), Ok(()));
        }
        assert!(!w[0].map.borrow().contains_key(&(guard(&cfg).fp, 7)));
        sync_once(&x, &mut book, t0 + 2 * S, WALL);
        assert!(matches!(call(&w[0], &cfg, 7, t0 + 2 * S), Err((_, true))));
        sync_once(&x, &mut book, t0 + 2 * S, WALL);
        assert_eq!(refused(call(&w[0], &cfg, 7, t0 + 2 * S)), 58_000);
    }

    #[test]
    fn the_exchange_drops_a_window_once_it_ended_with_no_call_since() {
        let cfg = config("{name: loops, loop: {max: 3, window: 60s}}");
        let (x, w) = workers(&cfg, 1);
        let mut book = Book::default();
        let t0 = now_us() + S;
        for k in 0..3 {
            assert_eq!(call(&w[0], &cfg, k, t0), Ok(()));
        }
        sync_once(&x, &mut book, t0, WALL);
        assert_eq!(book.loops.keys.len(), 3);
        assert!(book.keys.is_empty(), "apart from the limits' keys");
        // Opened by first shares: split at the next sync, then nothing to visit.
        assert_eq!(book.loops.touched.len(), 3);
        sync_once(&x, &mut book, t0, WALL);
        assert!(book.loops.touched.is_empty());
        // Key 0 is called again after its window ended: a new window, kept; the others go.
        assert_eq!(call(&w[0], &cfg, 0, t0 + 61 * S), Ok(()));
        sync_once(&x, &mut book, t0 + 61 * S, WALL);
        assert_eq!(book.loops.keys.len(), 1);
        assert_eq!(book.loops.keys[&(guard(&cfg).fp, 0)].count, 1);
        sync_once(&x, &mut book, t0 + 121 * S, WALL);
        assert!(book.loops.keys.is_empty());
        assert!(book.loops.ends.is_empty());
    }

    #[test]
    fn with_redis_loop_windows_stay_per_instance_and_ignore_its_outage() {
        // `traffic.redis` down under `on_failure: closed` refuses rates and quotas; a loop
        // guard is this instance's alone: judged as without Redis.
        let cfg = crate::config::load_str(
            "traffic:\n  rules:\n    - {name: loops, loop: {max: 2, window: 60s}}\n  redis:\n    \
             url: \"redis://127.0.0.1:1/0\"\n    on_failure: closed\n",
        )
        .unwrap();
        let (x, w) = workers(&cfg, 1);
        x.redis_state.store(REDIS_CLOSED, Ordering::Relaxed);
        let t0 = now_us() + S;
        assert_eq!(call(&w[0], &cfg, 1, t0), Ok(()));
        assert_eq!(call(&w[0], &cfg, 1, t0 + 1), Ok(()));
        assert_eq!(refused(call(&w[0], &cfg, 1, t0 + S)), 59_000);
        // Its key is never pushed to Redis (a sync with Redis unreachable leaves it local).
        let mut book = Book::default();
        sync_once(&x, &mut book, t0 + S, WALL);
        assert!(book.pushed.is_empty());
    }
}
