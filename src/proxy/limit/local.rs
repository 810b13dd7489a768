//! A worker's side of the limiter (`Local`, one per worker, no lock): its entries (one per
//! limit and key: level, cap, window, epoch) bounded by `traffic.max_keys` with a second-chance
//! eviction clock, the updates it applies, the levels it sends (deferred while plentiful, sent
//! again when a full queue refused them), and one limit's decision (`judge`).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::policy::traffic::{
    initial_share, window_bounds, CalWindow, Gcra, LimitKind, LimitRule, Traffic,
};

use super::exchange::{Event, Exchange, What, REDIS_LOCAL, REDIS_NORMAL, REDIS_OPEN};
use super::{loops, now_us, wall_ms, Judged};

/// This worker's view of one key of one limit.
pub(super) struct Entry {
    /// Changes when the entry is created and when a quota window rolls: the exchange counts
    /// levels per epoch, so an evicted and re-created entry never inherits an old level.
    pub(super) epoch: u32,
    /// The epoch it was created with: names it in the eviction clock.
    born: u32,
    /// Calls admitted here in this epoch (rate, quota) or in flight here (concurrency).
    pub(super) level: u64,
    /// Admit while `level < cap`.
    pub(super) cap: u64,
    pub(super) window_end: i64,
    /// Globally left at the last update (`None`: no update yet), this worker's level then, and
    /// the share it was given.
    pub(super) left: Option<u64>,
    pub(super) base: u64,
    pub(super) share: u64,
    /// A rate: when the next call conforms globally, as of the last update (0: unknown).
    next_us: u64,
    /// `traffic.redis`: the fleet had more left than this instance's allotment at the last
    /// update (out of share, wait for the next Redis read).
    more: bool,
    /// When this worker last told the exchange it wants more (µs).
    demand_at: u64,
    /// Used since the eviction clock last passed.
    pub(super) touched: bool,
    /// A concurrency limit's entry: never evicted or forgotten with calls in flight.
    concurrency: bool,
    /// A loop guard's entry (`loops`): `window_end` is when its window closes (`now_us`
    /// clock), the exchange's once an update said.
    pub(super) looped: bool,
    /// Its last level has not reached the exchange: a full queue did not take it, or it is
    /// within `defer` of the last level sent. Sent at the next flush (`Local::flush`: a
    /// decision or release on this worker, at most every quarter sync; or its tick).
    pub(super) dirty: bool,
    /// The level last sent, and how many calls past it may be counted before the next
    /// event (0: every call is sent; the exchange raises it while the budget is plentiful and
    /// keeps those calls out of what it splits, so a late level never admits past the limit).
    sent: u64,
    pub(super) defer: u64,
}

#[derive(Default)]
pub(super) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(29) ^ n;
    }
}

pub(super) type Map = HashMap<(u64, u64), Entry, BuildHasherDefault<Identity>>;

/// A worker's limiter state: its entries (bounded by `traffic.max_keys`), the quota windows it
/// has computed, and its handles on the exchange. Lives as long as the worker (across reloads).
pub struct Local {
    pub(super) exchange: Arc<Exchange>,
    pub(super) worker: u16,
    pub(super) map: RefCell<Map>,
    /// Entries in creation order, as (key, born): an item whose entry is gone or re-created
    /// is dead; compacted when dead items outnumber the live, so it stays within
    /// `2 * max_keys + 64`.
    pub(super) clock: RefCell<VecDeque<((u64, u64), u32)>>,
    /// Entries whose last level the exchange did not get (`Entry::dirty`).
    resend: RefCell<Vec<(u64, u64)>>,
    /// When the next flush of `resend` is due (`now_us` clock).
    flush_due: Cell<u64>,
    next_epoch: Cell<u32>,
    /// (fingerprint, window start, window end) of quota limits: recomputed only when one ends.
    windows: RefCell<SmallVec<[(u64, i64, i64); 4]>>,
    rejections: RefCell<HashMap<u64, metrics::Counter>>,
    evictions: metrics::Counter,
}

impl Local {
    pub fn new(exchange: Arc<Exchange>, worker: usize) -> Rc<Local> {
        Rc::new(Local {
            exchange,
            worker: worker as u16,
            map: RefCell::new(Map::default()),
            clock: RefCell::new(VecDeque::new()),
            resend: RefCell::default(),
            flush_due: Cell::new(0),
            next_epoch: Cell::new(1),
            windows: RefCell::default(),
            rejections: RefCell::default(),
            evictions: metrics::counter!(crate::observe::names::TRAFFIC_KEYS_EVICTED_TOTAL),
        })
    }

    pub(super) fn epoch(&self) -> u32 {
        let e = self.next_epoch.get();
        self.next_epoch.set(e.wrapping_add(1).max(1));
        e
    }

    /// Tells the exchange `e`'s level (`what`: a use or a demand). A level the full queue did
    /// not take is sent again later (`flush`): levels, unlike events, are never lost.
    fn send(&self, k: (u64, u64), e: &mut Entry, what: What, at_us: u64) {
        let Some(ch) = self.exchange.chans.get() else {
            return;
        };
        let ev = Event {
            fp: k.0,
            key: k.1,
            worker: self.worker,
            epoch: e.epoch,
            what,
            level: e.level,
            at_us,
            window_end: e.window_end,
            defer: e.defer,
        };
        if ch.events.try_send(ev).is_err() {
            self.exchange.dropped.increment(1);
            if !e.dirty {
                e.dirty = true;
                self.resend.borrow_mut().push(k);
            }
        } else {
            // Only a level the queue took starts a new deferral.
            e.sent = e.level;
            e.dirty = false;
        }
        if what == What::Demand {
            if let Some(t) = self.exchange.thread.get() {
                t.unpark();
            }
        }
    }

    /// Sends, at once, the levels not sent yet (the worker's tick, its drain: a worker that
    /// went quiet still tells the exchange, within a tick, what it counted).
    pub fn send_counted(&self) {
        if let Ok(mut map) = self.map.try_borrow_mut() {
            self.flush(&mut map, 0);
        }
    }

    /// Sends the levels not sent yet (within their entry's deferral, or not taken by a full
    /// queue), at most once a quarter of `traffic.sync_interval` (the exchange folds them once
    /// an interval), or at once when `now` is 0 (the tick, the drain).
    ///
    /// Why a deferred level adds no over-admission: a worker's cap is the level the exchange
    /// saw, plus what it may have counted unreported (at most its deferral, never past its
    /// last cap), plus its share; the shares add up to what is left after every worker's
    /// unreported part, so a worker's calls held back by its deferral are inside its new cap.
    /// (Calls counted between the exchange's read of the queue and the worker applying the
    /// update are the design's existing race, microseconds wide; a level a full queue refused
    /// is not bounded by the deferral.)
    fn flush(&self, map: &mut Map, now: u64) {
        if self.resend.borrow().is_empty() || now != 0 && now < self.flush_due.get() {
            return;
        }
        let now = if now == 0 { now_us() } else { now };
        self.flush_due
            .set(now + self.exchange.sync_us.load(Ordering::Relaxed) / 4);
        let pending = std::mem::take(&mut *self.resend.borrow_mut());
        for k in pending {
            if let Some(e) = map.get_mut(&k) {
                if e.dirty {
                    e.dirty = false;
                    self.send(k, e, What::Use, now);
                }
            }
        }
    }

    /// Counts an admitted call (`units`: 1, or a token quota's cost of it) on `k`'s entry and
    /// tells the exchange.
    pub(super) fn admitted(&self, map: &mut Map, k: (u64, u64), units: u64, now: u64) {
        if let Some(e) = map.get_mut(&k) {
            if units > 0 {
                e.level += units;
                if e.defer == 0 || e.level.abs_diff(e.sent) >= e.defer {
                    self.send(k, e, What::Use, now);
                } else if !e.dirty {
                    // Within the deferral: told at the next flush, or with a later call.
                    e.dirty = true;
                    self.resend.borrow_mut().push(k);
                }
            }
        }
    }

    /// Charges `tokens` relayed to a token quota's entry (after the call: its window's budget
    /// may go over by what the calls in flight bring back).
    pub(super) fn charge(&self, fp: u64, key: u64, tokens: u64) {
        let mut map = self.map.borrow_mut();
        if let Some(e) = map.get_mut(&(fp, key)) {
            if tokens > 0 {
                e.level += tokens;
                self.send((fp, key), e, What::Use, now_us());
            }
        }
    }

    /// Applies the updates the exchange sent since the last decision (only for keys this
    /// worker holds: it never gets entries for keys it did not use), then sends again the
    /// levels a full queue did not take (after the updates: a key the exchange forgot comes
    /// back with only the calls it did not see).
    pub(super) fn apply(&self, map: &mut Map, now: u64) {
        self.apply_updates(map);
        self.flush(map, now);
    }

    fn apply_updates(&self, map: &mut Map) {
        let Some(ch) = self.exchange.chans.get() else {
            return;
        };
        let Some((_, rx)) = ch.updates.get(usize::from(self.worker)) else {
            return;
        };
        for u in rx.try_iter() {
            let k = (u.fp, u.key);
            let Some(e) = map.get_mut(&k) else { continue };
            if u.forget {
                if e.dirty && !e.concurrency {
                    // Calls counted here that the exchange did not see (deferred, or refused by
                    // a full queue) before it dropped the key stay counted: as a new epoch's level (the next flush
                    // brings the key back with exactly them), with the headroom it had.
                    if u.epoch != e.epoch {
                        continue;
                    }
                    if e.level > u.seen {
                        e.epoch = self.epoch();
                        e.level -= u.seen;
                        e.cap = e.cap.saturating_sub(u.seen);
                        e.left = None;
                        e.base = 0;
                        (e.sent, e.defer) = (0, 0);
                        continue;
                    }
                }
                if e.level == 0 || !e.concurrency {
                    map.remove(&k);
                }
                continue;
            }
            if e.window_end != u.window_end && !loops::adopt(e, u.window_end) {
                continue;
            }
            // An update for an older epoch (a window rolled, the entry was re-created) knows
            // nothing of this one: no seen level, no reserve, and every call reported.
            let (seen, reserved, defer) = if u.epoch == e.epoch {
                (u.seen, u.reserved, u.defer)
            } else {
                (0, 0, 0)
            };
            e.cap = seen + reserved + u.share;
            e.defer = defer;
            e.left = Some(u.left);
            e.base = e.level;
            e.share = u.share;
            e.next_us = u.next_us;
            e.more = u.more;
        }
    }

    /// Evicts until the map has room for one more (second chance: a touched entry goes round
    /// again; one with calls in flight is never evicted).
    fn evict(&self, map: &mut Map, max_keys: usize) {
        let mut clock = self.clock.borrow_mut();
        let mut turns = clock.len() * 2 + 1;
        while map.len() >= max_keys && turns > 0 {
            turns -= 1;
            let Some((old, born)) = clock.pop_front() else {
                break;
            };
            match map.get_mut(&old) {
                Some(o) if o.born != born => {}
                None => {}
                Some(o) if o.touched || o.concurrency && o.level > 0 => {
                    o.touched = false;
                    clock.push_back((old, born));
                }
                Some(o) => {
                    // Its last level first: the exchange keeps what it counted in the window.
                    if o.dirty {
                        self.send(old, o, What::Use, now_us());
                    }
                    let (epoch, window_end) = (o.epoch, o.window_end);
                    map.remove(&old);
                    self.evictions.increment(1);
                    // Best effort: a lost `Gone` only costs the exchange some updates.
                    if let Some(ch) = self.exchange.chans.get() {
                        let _ = ch.events.try_send(Event {
                            fp: old.0,
                            key: old.1,
                            worker: self.worker,
                            epoch,
                            what: What::Gone,
                            level: 0,
                            at_us: 0,
                            window_end,
                            defer: 0,
                        });
                    }
                }
            }
        }
    }

    /// Out of share: asks the exchange for more (at most once a sync interval) and says
    /// whether there may be room: what was left globally at the last update is more than this
    /// worker has used since (others may not have used their shares: the next sync moves them
    /// here); before any update, room unless this worker's first share was the whole budget.
    pub(super) fn ask_more(
        &self,
        k: (u64, u64),
        e: &mut Entry,
        now: u64,
        sync_ms: u64,
        workers: usize,
    ) -> bool {
        if now.saturating_sub(e.demand_at) >= sync_ms * 1000 {
            e.demand_at = now;
            self.send(k, e, What::Demand, now);
        }
        match e.left {
            None => workers > 1 || e.cap == 0,
            Some(left) => workers > 1 && left > e.level.saturating_sub(e.base),
        }
    }

    /// Whether the exchange knows `k` (its filter: false positives cost a wait, never a call).
    pub(super) fn known(&self, k: (u64, u64)) -> bool {
        self.exchange
            .chans
            .get()
            .is_some_and(|c| c.known.contains(k.0, k.1))
    }

    /// A new entry for `k` with `cap` (a first share, or 0), counting in the window ending
    /// at `window_end`; `(concurrency, looped)` say which kind of limit it is. A full map
    /// (`max_keys`) makes room first.
    pub(super) fn create(
        &self,
        map: &mut Map,
        max_keys: usize,
        k: (u64, u64),
        cap: u64,
        window_end: i64,
        kind: (bool, bool),
    ) {
        if map.len() >= max_keys {
            self.evict(map, max_keys);
        }
        let born = self.epoch();
        let e = Entry {
            epoch: born,
            born,
            level: 0,
            cap,
            window_end,
            left: None,
            base: 0,
            share: 0,
            next_us: 0,
            more: false,
            demand_at: 0,
            touched: true,
            concurrency: kind.0,
            looped: kind.1,
            dirty: false,
            sent: 0,
            defer: 0,
        };
        self.clocked(map, k, born);
        map.insert(k, e);
    }

    /// Records a new entry in the eviction clock, first dropping dead items when they
    /// outnumber the live (amortized: at most once per `map.len()` insertions).
    fn clocked(&self, map: &Map, k: (u64, u64), born: u32) {
        let mut clock = self.clock.borrow_mut();
        if clock.len() > 2 * map.len() + 64 {
            clock.retain(|(k, b)| map.get(k).is_some_and(|e| e.born == *b));
        }
        clock.push_back((k, born));
    }

    fn window(&self, fp: u64, window: CalWindow, tz: &jiff::tz::TimeZone, now_s: i64) -> i64 {
        let mut ws = self.windows.borrow_mut();
        if let Some(w) = ws.iter_mut().find(|w| w.0 == fp) {
            if now_s >= w.1 && now_s < w.2 {
                return w.2;
            }
            let (s, e) = window_bounds(now_s, window, tz);
            *w = (fp, s, e);
            return e;
        }
        let (s, e) = window_bounds(now_s, window, tz);
        ws.push((fp, s, e));
        e
    }

    /// With `traffic.redis`, a rate's or quota's new entry waits for the exchange's share
    /// (which counts the other instances' usage) instead of taking a first share.
    fn fleet_first(&self, kind: &LimitKind) -> bool {
        !matches!(kind, LimitKind::Concurrency { .. })
            && self.exchange.redis_on.load(Ordering::Relaxed)
    }

    /// One limit's decision for `key` on this worker (nothing committed): `already` calls of
    /// this request are pending on the same entry. A refusal asks the exchange for more (at
    /// most once a sync interval) and says whether the global budget may still have room.
    pub(super) fn judge(
        &self,
        map: &mut Map,
        t: &Traffic,
        l: &crate::policy::traffic::Limit,
        key: u64,
        now: u64,
        already: u64,
    ) -> Judged {
        let workers = self.exchange.workers;
        let sync_ms = (t.sync_interval.as_millis() as u64).max(1);
        let wall = if l.kind.window().is_some() {
            wall_ms()
        } else {
            0
        };
        let window_end = match l.kind.window() {
            Some(window) => self.window(l.fp, window, &t.tz, wall / 1000),
            None => 0,
        };
        let k = (l.fp, key);
        if !map.contains_key(&k) {
            // A key the exchange knows (this worker evicted it, or others use it) starts with
            // no share: a first share would be spent again at each evict/re-create cycle.
            let cap = if self.known(k) || self.fleet_first(&l.kind) {
                0
            } else {
                initial_share(l.kind.budget(), workers)
            };
            let concurrency = matches!(l.kind, LimitKind::Concurrency { .. });
            self.create(map, t.max_keys, k, cap, window_end, (concurrency, false));
        }
        let Some(e) = map.get_mut(&k) else {
            return Judged::Over {
                retry_ms: sync_ms,
                wait: false,
            };
        };
        e.touched = true;
        if window_end != 0 && e.window_end != window_end {
            // A new calendar window: this worker starts it with its first share (the ended
            // window's level a full queue did not take goes first: the usage metrics count it).
            if e.dirty {
                self.send(k, e, What::Use, now);
            }
            e.epoch = self.epoch();
            e.level = 0;
            e.cap = if self.fleet_first(&l.kind) {
                0
            } else {
                initial_share(l.kind.budget(), workers)
            };
            e.window_end = window_end;
            e.left = None;
            e.more = false;
            e.dirty = false;
            (e.sent, e.defer) = (0, 0);
        }
        if !e.concurrency {
            // `traffic.redis` down: `on_failure` open or closed decides alone.
            match self.exchange.redis_state.load(Ordering::Relaxed) {
                REDIS_NORMAL | REDIS_LOCAL => {}
                REDIS_OPEN => return Judged::Admit,
                _ => {
                    return Judged::Over {
                        retry_ms: sync_ms.max(1000),
                        wait: false,
                    }
                }
            }
        }
        if e.level + already < e.cap {
            return Judged::Admit;
        }
        let room = self.ask_more(k, e, now, sync_ms, workers);
        // `traffic.redis`: this instance's allotment is spent but the fleet's budget is not:
        // the next Redis read brings a new allotment (none comes while Redis is down: then
        // refused at once, to retry once it may be back). Waits too when other workers here
        // hold the rest of the allotment: the next sync or read moves it.
        let down = e.more && self.exchange.redis_state.load(Ordering::Relaxed) == REDIS_LOCAL;
        let fleet = e.more && !down;
        let retry_ms = match l.kind {
            _ if room => sync_ms,
            _ if down => sync_ms.max(1000),
            _ if fleet => t
                .redis
                .as_ref()
                .map_or(sync_ms, |r| (r.sync_interval.as_millis() as u64).max(1)),
            // Globally out: when the next call conforms, as of the last update (before one,
            // one emission interval: this worker's first share was the whole burst).
            LimitKind::Rate { limit, per, burst } if e.next_us <= now => {
                Gcra::new(limit, per, burst).t.div_ceil(1000)
            }
            LimitKind::Rate { .. } => (e.next_us - now).div_ceil(1000),
            LimitKind::Quota { .. } | LimitKind::Tokens { .. } => {
                (window_end * 1000 - wall).max(1) as u64
            }
            LimitKind::Concurrency { .. } => sync_ms.max(1000),
            // Judged by `judge_loop`.
            LimitKind::Loop { .. } => sync_ms,
        };
        Judged::Over {
            retry_ms: retry_ms.max(1),
            // Only while this worker has had no share from the exchange (before its word on
            // this entry, or given nothing because it had no demand) and others may have room:
            // a worker whose share ran out under load is refused at once, nothing queues.
            // And while this instance waits for its next allotment from the fleet's budget.
            wait: (room && (e.left.is_none() || e.share == 0)) || fleet,
        }
    }

    /// `rule`'s decision for `key` with nothing else around it (`bench/limit.rs`): updates
    /// applied, every limit judged, the call counted when all admit. Concurrency calls are
    /// released at once.
    pub fn decide(&self, t: &Traffic, rule: &LimitRule, key: u64) -> bool {
        let now = now_us();
        let mut map = self.map.borrow_mut();
        self.apply(&mut map, now);
        let mut admitted: SmallVec<[(u64, bool); 4]> = SmallVec::new();
        for l in &rule.limits {
            match self.judge(&mut map, t, l, key, now, 0) {
                Judged::Admit => {
                    admitted.push((l.fp, matches!(l.kind, LimitKind::Concurrency { .. })))
                }
                Judged::Over { .. } => return false,
            }
        }
        for (fp, concurrency) in admitted {
            if !concurrency {
                self.admitted(&mut map, (fp, key), 1, now);
            }
        }
        true
    }

    /// A key from its parts, hashed as the request path hashes them.
    pub fn key_of(&self, parts: &[&[u8]]) -> u64 {
        let mut h = self.exchange.hasher.build_hasher();
        for p in parts {
            h.write_usize(p.len());
            h.write(p);
        }
        h.finish()
    }

    pub(super) fn release(&self, fp: u64, key: u64) {
        let mut map = self.map.borrow_mut();
        let now = now_us();
        self.flush(&mut map, now);
        if let Some(e) = map.get_mut(&(fp, key)) {
            e.level = e.level.saturating_sub(1);
            self.send((fp, key), e, What::Use, now);
        }
    }

    pub(super) fn reject_counter(
        &self,
        fp: u64,
        rule: &str,
        kind: &'static str,
    ) -> metrics::Counter {
        self.rejections
            .borrow_mut()
            .entry(fp)
            .or_insert_with(|| {
                metrics::counter!(crate::observe::names::TRAFFIC_REJECTIONS_TOTAL,
                    "rule" => rule.to_string(), "kind" => kind)
            })
            .clone()
    }
}
