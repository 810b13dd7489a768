//! The exchange thread (`tollgate-traffic`): once a `traffic.sync_interval` (early on a
//! demand) it folds the workers' events into the global truth of every key (`Global`: GCRA
//! state, window counts, calls in flight, each worker's `Side`), splits what is left into
//! shares by demand and sends each worker its own when it changed (`send_shares`), keeps its
//! map within `traffic.max_global_keys` (`evict_idle`) and, with `traffic.redis`, folds in the
//! other instances' usage (`redis_sync`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;

use crate::policy::traffic::{split, Gcra, LimitKind, OnFailure};

use super::exchange::{
    Chans, Def, Exchange, Update, What, REDIS_CLOSED, REDIS_LOCAL, REDIS_NORMAL, REDIS_OPEN,
};
use super::{fleet, loops, now_us, wall_ms};

/// Calls of a rate or quota a worker may count before it tells the exchange (`Entry::defer`),
/// while the key's budget is plentiful: one event per `DEFER` calls instead of one per call.
pub(super) const DEFER: u64 = 16;
/// Plentiful: what is left is at least this many times `DEFER` per worker holding the key.
/// Below it, workers report every call (the exact mode every key starts in).
const PLENTY: u64 = 4;

/// What the exchange knows of one worker for one key.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Side {
    /// The epoch of the worker's entry; 0: the worker has no entry (no updates sent to it).
    epoch: u32,
    /// Its level in that epoch (calls counted, or in flight).
    pub(super) level: u64,
    /// Calls and refusals since the last sync.
    pub(super) demand: u64,
    /// The (share, left, more, reserved, defer) last sent, to send again only what changed.
    pub(super) sent: Option<(u64, u64, bool, u64, u64)>,
    /// The cap the last update gave (`None`: none yet, the worker is on its first share and
    /// reports every call), and the most calls it may count unreported: the larger of the
    /// deferral last sent and the one its last event said it was using (an update it has not
    /// applied yet still holds it to the older one).
    cap: Option<u64>,
    defer_sent: u64,
    defer_seen: u64,
}

impl Side {
    /// Calls this worker may have counted past its last reported level.
    fn unreported(&self) -> u64 {
        match self.cap {
            Some(cap) => self
                .defer_sent
                .max(self.defer_seen)
                .min(cap.saturating_sub(self.level)),
            None => 0,
        }
    }
}

/// The global state of one key of one limit, on the exchange thread.
pub(super) struct Global {
    pub(super) sides: Vec<Side>,
    pub(super) tat: u64,
    pub(super) window_end: i64,
    pub(super) count: u64,
    pub(super) active: bool,
    /// The sync in which it was last active (the exchange evicts the longest idle first).
    last_active: u64,
    /// `traffic.redis`: units counted here not yet sent; the Redis window (a rate's period
    /// number, a quota's window end) the next two are for; units this instance sent in it;
    /// the other instances' units in it, as last read.
    pending: u64,
    rwin: i64,
    own: u64,
    pub(super) others: u64,
    /// `traffic.redis`: this instance's allotment, the units it may still admit until its
    /// next Redis read (`ceil(left / users)` at each read, less what it counted since; a
    /// rate's refills at `1 / users` of the rate, as of `allot_at`).
    pub(super) allot: u64,
    allot_at: u64,
    /// `traffic.redis`: the instances among which the key's budget is split (those that used
    /// it recently, at most the live ones; `split`), as last read; and whether this instance
    /// used or wanted the key since its last Redis sync (it then joins the key's users), and
    /// when it last joined (µs; 0: never).
    users: u64,
    used: bool,
    joined_at: u64,
    /// The users as read, falling no faster than `liveness` (`fleet::Sticky`).
    users_read: fleet::Sticky,
    /// A loop window a first share opened in this sync: not split before the next (`loops`).
    pub(super) hold: bool,
}

impl Global {
    /// `traffic.redis`: how many ways the key's budget is split here: its users, at most the
    /// live instances, at least 1.
    fn split(&self, live: u64) -> u64 {
        self.users.min(live).max(1)
    }
}

/// The exchange thread's state between syncs.
#[derive(Default)]
pub(super) struct Book {
    pub(super) keys: HashMap<(u64, u64), Global>,
    pub(super) tick: u64,
    /// Keys removed since the filter of known keys was last rebuilt.
    pub(super) removed: usize,
    pub(super) shares: Vec<u64>,
    pub(super) demand: Vec<u64>,
    pub(super) who: Vec<usize>,
    /// Per quota limit: the fullest key's fraction of its budget in this sync.
    pub(super) fullest: HashMap<u64, f64>,
    /// Per quota limit: units counted, and the fullest key's fraction.
    pub(super) metrics: HashMap<u64, (metrics::Counter, metrics::Gauge)>,
    /// `traffic.redis`, when configured, and the keys of the sync in flight.
    pub(super) fleet: Option<fleet::Fleet>,
    pub(super) pushes: Vec<fleet::Push>,
    pub(super) pushed: Vec<((u64, u64), u64, i64, bool)>,
    /// A key was created (or a quota window rolled) in this sync: Redis is asked now (its
    /// first share waits for it).
    pub(super) fresh: bool,
    /// `traffic.redis`: live instances as last read (0: never read, taken as 1).
    pub(super) live: u64,
    /// The loop guards' windows, apart from `keys`.
    pub(super) loops: loops::Windows,
}

/// `traffic.redis`: an instance's part of what the fleet has left, `ceil(left / instances)`.
pub(super) fn allotment(left: u64, live: u64) -> u64 {
    left.div_ceil(live.max(1))
}

/// How many syncs a key stays "recently active" for Redis: its total is read back (so the
/// others' usage reaches this instance) for about a second after its last local use.
const REDIS_RECENT_SYNCS: u64 = 50;

/// `traffic.redis`: when due, sends this instance's new units of every rate and quota key used
/// recently (one counter per key and window: a rate's period number `wall / per`, a quota's
/// window end) and folds the others' part of the totals into the global state: a quota's
/// `others`, a rate's TAT (each call of another instance moves it one emission interval).
/// Down: `on_failure` tells the workers what to do (`redis_state`); units pile up in
/// `pending` and are sent once Redis answers again.
fn redis_sync(x: &Exchange, book: &mut Book, defs: &HashMap<u64, Def>, now: u64, wall_s: i64) {
    let cfg = x.redis.lock().ok().and_then(|r| r.clone());
    let Some(cfg) = cfg else {
        book.fleet = None;
        return;
    };
    if book.fleet.as_ref().is_none_or(|f| f.cfg != cfg) {
        book.fleet = Some(fleet::Fleet::new(cfg.clone()));
    }
    let Some(f) = book.fleet.as_mut() else { return };
    if !f.due() && !std::mem::take(&mut book.fresh) {
        return;
    }
    book.fresh = false;
    let wall_ms = wall_s * 1000;
    book.pushes.clear();
    book.pushed.clear();
    for (&k, g) in &mut book.keys {
        let Some(def) = defs.get(&k.0) else { continue };
        let (win, expire_at) = match def.kind {
            LimitKind::Rate { per, .. } => {
                let per_ms = (per.as_millis() as i64).max(1);
                let n = wall_ms / per_ms;
                (n, (n + 2) * per_ms / 1000 + 1)
            }
            LimitKind::Quota { .. } | LimitKind::Tokens { .. } => (g.window_end, g.window_end + 60),
            // Per instance: a loop window opens at a call on this instance's monotonic clock.
            LimitKind::Concurrency { .. } | LimitKind::Loop { .. } => continue,
        };
        if g.pending == 0 && book.tick.saturating_sub(g.last_active) > REDIS_RECENT_SYNCS {
            continue;
        }
        book.pushes.push(fleet::Push {
            name: format!("{}{:016x}:{:016x}:{win}", cfg.key_prefix, k.0, k.1),
            users: format!("{}{:016x}:{:016x}:users", cfg.key_prefix, k.0, k.1),
            delta: g.pending,
            expire_at,
            join: g.used,
        });
        book.pushed.push((k, g.pending, win, g.used));
    }
    let liveness_us = f.liveness().as_micros() as u64;
    match f.sync(&book.pushes, now) {
        Ok(reads) => {
            x.redis_state.store(REDIS_NORMAL, Ordering::Relaxed);
            book.live = f.live;
            for (&(k, delta, win, joined), read) in book.pushed.iter().zip(reads) {
                let Some(g) = book.keys.get_mut(&k) else {
                    continue;
                };
                let Some(def) = defs.get(&k.0) else { continue };
                let total = read.total;
                // Its users as read; this instance counted among them even when it has not
                // used the key within `liveness` (its next call would make it one). At its
                // first join every live instance counts: others starting on the key in the
                // same sync may not have joined yet when this one reads.
                let member =
                    joined || g.joined_at != 0 && now.saturating_sub(g.joined_at) < liveness_us;
                let users = g
                    .users_read
                    .read(read.users + u64::from(!member), now, liveness_us);
                g.users = if g.joined_at == 0 { book.live } else { users };
                if joined {
                    (g.used, g.joined_at) = (false, now);
                }
                g.pending = g.pending.saturating_sub(delta);
                if g.rwin != win {
                    (g.rwin, g.own, g.others) = (win, 0, 0);
                }
                g.own += delta;
                let others = total.saturating_sub(g.own);
                if let LimitKind::Rate { limit, per, burst } = def.kind {
                    let new = others.saturating_sub(g.others);
                    if new > 0 {
                        let t = Gcra::new(limit, per, burst).t;
                        g.tat = g.tat.max(now).saturating_add(t.saturating_mul(new));
                        g.active = true;
                    }
                } else if others != g.others {
                    g.active = true;
                }
                g.others = others;
                // This instance's part of what the fleet has left, until the next read (a
                // rate's burst room now: its refill from here on is `sync_once`'s, at the
                // instance's part of the rate, from `allot_at`, which a read leaves alone so
                // that a slow refill accrues across reads).
                let left = match def.kind {
                    LimitKind::Rate { limit, per, burst } => {
                        Gcra::new(limit, per, burst).available(g.tat, now)
                    }
                    kind => kind.budget().saturating_sub(g.count + g.others),
                };
                g.allot = allotment(left, g.split(book.live));
            }
        }
        Err(_) => {
            let state = match cfg.on_failure {
                OnFailure::Open => REDIS_OPEN,
                OnFailure::Closed => REDIS_CLOSED,
                OnFailure::Local => REDIS_LOCAL,
            };
            x.redis_state.store(state, Ordering::Relaxed);
        }
    }
}

/// The quota metrics of limit `fp`, registered the first time.
fn quota_metrics<'a>(
    m: &'a mut HashMap<u64, (metrics::Counter, metrics::Gauge)>,
    fp: u64,
    def: &Def,
) -> &'a (metrics::Counter, metrics::Gauge) {
    {
        m.entry(fp).or_insert_with(|| {
            use crate::observe::names::{TRAFFIC_QUOTA_FULLEST_RATIO, TRAFFIC_QUOTA_USED_TOTAL};
            let rule = def.rule.to_string();
            (
                metrics::counter!(TRAFFIC_QUOTA_USED_TOTAL,
                    "rule" => rule.clone(), "kind" => def.kind.label()),
                metrics::gauge!(TRAFFIC_QUOTA_FULLEST_RATIO, "rule" => rule),
            )
        })
    }
}

pub(super) fn sync_loop(weak: Weak<Exchange>) {
    let mut book = Book::default();
    let mut last = Instant::now();
    loop {
        let interval = match weak.upgrade() {
            Some(x) => Duration::from_micros(x.sync_us.load(Ordering::Relaxed)),
            None => return,
        };
        // Woken early by a worker whose share ran out (`What::Demand`), but never more often
        // than four times an interval: a storm of demands does not become a storm of syncs.
        std::thread::park_timeout(interval);
        let gap = (interval / 4).max(Duration::from_micros(250));
        let since = last.elapsed();
        if since < gap {
            std::thread::sleep(gap - since);
        }
        last = Instant::now();
        let Some(x) = weak.upgrade() else { return };
        let leaving = x.leaving.load(Ordering::Acquire);
        // Leaving: Redis is synced now, whatever its interval.
        book.fresh |= leaving;
        sync_once(&x, &mut book, now_us(), wall_ms() / 1000);
        if leaving {
            if let Some(f) = book.fleet.as_mut() {
                f.leave();
            }
            x.left.store(true, Ordering::Release);
            return;
        }
    }
}

/// One sync: fold the queued events into the global state, then send each worker that holds
/// a key its share of it when that changed, forget idle keys, and keep the exchange's own map
/// within `traffic.max_global_keys` (the longest idle keys go first, counted as evictions).
pub(super) fn sync_once(x: &Exchange, book: &mut Book, now: u64, wall_s: i64) {
    let Some(ch) = x.chans.get() else { return };
    let defs = match x.defs.lock() {
        Ok(d) => d.clone(),
        Err(_) => return,
    };
    let n = x.workers;
    book.tick += 1;
    let tick = book.tick;
    for ev in ch.events_rx.try_iter() {
        let Some(def) = defs.get(&ev.fp) else {
            continue;
        };
        // Loop windows live apart (`loops::Windows`): a sync visits only those it touched.
        let looped = matches!(def.kind, LimitKind::Loop { .. });
        let keys = if looped {
            &mut book.loops.keys
        } else {
            &mut book.keys
        };
        if ev.what == What::Gone {
            if let Some(s) = keys
                .get_mut(&(ev.fp, ev.key))
                .and_then(|g| g.sides.get_mut(usize::from(ev.worker)))
            {
                if s.epoch == ev.epoch {
                    *s = Side::default();
                }
            }
            continue;
        }
        let fresh = &mut book.fresh;
        let live = book.live;
        let created = looped && !keys.contains_key(&(ev.fp, ev.key));
        let g = keys.entry((ev.fp, ev.key)).or_insert_with(|| {
            ch.known.insert(ev.fp, ev.key);
            // Redis is asked at once for a new key's usage (loop windows are not in Redis).
            *fresh |= !looped;
            Global {
                sides: vec![Side::default(); n],
                tat: 0,
                window_end: ev.window_end,
                count: 0,
                active: false,
                last_active: tick,
                pending: 0,
                rwin: 0,
                own: 0,
                others: 0,
                // Until Redis is read (at once when it answers): a share of the whole budget,
                // as split at the last read; none before this instance's first read.
                allot: if live == 0 {
                    0
                } else {
                    allotment(def.kind.budget(), live)
                },
                allot_at: now,
                users: live,
                used: true,
                joined_at: 0,
                users_read: fleet::Sticky::default(),
                hold: false,
            }
        });
        let Some(s) = g.sides.get_mut(usize::from(ev.worker)) else {
            continue;
        };
        if s.epoch != ev.epoch {
            *s = Side {
                epoch: ev.epoch,
                demand: s.demand,
                ..Side::default()
            };
        }
        g.active = true;
        g.used = true;
        g.last_active = tick;
        // Calls counted since the last event this side sent (more than one when an event was
        // lost to a full queue).
        let delta = ev.level.saturating_sub(s.level);
        s.level = ev.level;
        s.defer_seen = ev.defer;
        s.demand += if ev.what == What::Demand { 1 } else { delta };
        match def.kind {
            LimitKind::Rate { limit, per, burst } if delta > 0 => {
                let gcra = Gcra::new(limit, per, burst);
                g.tat = g
                    .tat
                    .max(ev.at_us)
                    .saturating_add(gcra.t.saturating_mul(delta));
                g.pending += delta;
                g.allot = g.allot.saturating_sub(delta);
            }
            LimitKind::Quota { limit, .. } | LimitKind::Tokens { limit, .. } => {
                if ev.window_end > g.window_end {
                    // A new window: nothing used yet anywhere as far as this instance knows;
                    // Redis is read at once (when it answers) for the others' part of it.
                    g.window_end = ev.window_end;
                    g.count = 0;
                    g.pending = 0;
                    g.others = 0;
                    g.allot = match book.live {
                        0 => 0,
                        live => allotment(limit, g.split(live)),
                    };
                    g.allot_at = now;
                    book.fresh = true;
                }
                if ev.window_end == g.window_end {
                    g.count += delta;
                    g.pending += delta;
                    g.allot = g.allot.saturating_sub(delta);
                }
                if delta > 0 {
                    quota_metrics(&mut book.metrics, ev.fp, def)
                        .0
                        .increment(delta);
                }
            }
            LimitKind::Loop { window, .. } => {
                book.loops.touched.push((ev.fp, ev.key));
                loops::count(g, &ev, delta, window, created, &mut book.loops.ends);
                // Made by a call under a first share: others may have taken theirs before the
                // key was known, and their calls reach the queue only now.
                g.hold |= created && ev.what == What::Use;
            }
            _ => {}
        }
    }
    redis_sync(x, book, &defs, now, wall_s);
    let interval = x.sync_us.load(Ordering::Relaxed);
    let Book {
        keys,
        removed,
        shares,
        demand,
        who,
        fullest,
        fleet,
        live,
        ..
    } = book;
    // Before this instance's first read of Redis its allotments do not refill.
    let (fleet, read, live) = (fleet.is_some(), *live > 0, (*live).max(1));
    fullest.clear();
    keys.retain(|&(fp, key), g| {
        let Some(def) = defs.get(&fp) else {
            *removed += 1;
            return false;
        };
        let (left, keep, forget, next_us) = match def.kind {
            LimitKind::Rate { limit, per, burst } => {
                let gcra = Gcra::new(limit, per, burst);
                if fleet && read {
                    // The allotment refills at this instance's part of the rate, up to its
                    // part of the burst (a Redis read sets it afresh).
                    let split = g.split(live);
                    let step = gcra.t.saturating_mul(split).max(1);
                    let cap = allotment(burst, split);
                    let units = now.saturating_sub(g.allot_at) / step;
                    if units > 0 {
                        g.allot = g.allot.saturating_add(units);
                        g.allot_at += units * step;
                    }
                    if g.allot >= cap {
                        (g.allot, g.allot_at) = (cap, now);
                    }
                }
                let refilling = g.tat > now;
                let keep = g.active || refilling;
                (
                    gcra.available(g.tat, now + interval),
                    keep,
                    !keep,
                    gcra.next_at(g.tat, now),
                )
            }
            LimitKind::Quota { limit, .. } | LimitKind::Tokens { limit, .. } => {
                // Workers roll their windows themselves: an ended window is dropped here only.
                let ended = wall_s >= g.window_end;
                let used = g.count + g.others;
                if !ended {
                    let f = fullest.entry(fp).or_insert(0.0);
                    *f = f.max(used as f64 / limit.max(1) as f64);
                }
                (limit.saturating_sub(used), !ended || g.active, false, 0)
            }
            LimitKind::Concurrency { limit } => {
                let inflight: u64 = g.sides.iter().map(|s| s.level).sum();
                let idle = inflight == 0 && !g.active;
                (limit.saturating_sub(inflight), !idle, idle, 0)
            }
            // Never here: loop windows are `book.loops` (`loops::sweep`).
            LimitKind::Loop { max, .. } => (loops::left(g, max, now), true, false, 0),
        };
        // `traffic.redis`: the workers share this instance's allotment, and know when the
        // fleet has more (they wait for the next Redis read instead of refusing).
        let (left, more) = match def.kind {
            LimitKind::Concurrency { .. } | LimitKind::Loop { .. } => (left, false),
            _ if !fleet => (left, false),
            _ => (left.min(g.allot), left > g.allot),
        };
        // Calls workers may have counted and not reported are not split again (they are in
        // those workers' caps already); while what is left is plentiful, rates and quotas
        // are reported every `DEFER` calls, else every call.
        let unreported: u64 = g.sides.iter().map(Side::unreported).sum();
        let left = left.saturating_sub(unreported);
        let holders = g.sides.iter().filter(|s| s.epoch != 0).count() as u64;
        let defer = match def.kind {
            LimitKind::Rate { .. } | LimitKind::Quota { .. } | LimitKind::Tokens { .. }
                if left >= PLENTY * DEFER * holders.max(1) =>
            {
                DEFER
            }
            _ => 0,
        };
        send_shares(
            x,
            ch,
            fp,
            key,
            g,
            (left, more, defer),
            next_us,
            forget,
            who,
            demand,
            shares,
        );
        for s in &mut g.sides {
            s.demand = 0;
        }
        g.active = false;
        let kept = keep && !forget;
        if !kept {
            *removed += 1;
        }
        kept
    });
    loops::sweep(x, ch, book, &defs, now);
    evict_idle(x, ch, &mut book.keys, &mut book.removed, &defs);
    evict_idle(x, ch, &mut book.loops.keys, &mut book.removed, &defs);
    // The fullest key of each quota, as a fraction of its budget (0 once none is left).
    for (fp, def) in defs.iter() {
        if def.kind.window().is_some() {
            let f = book.fullest.get(fp).copied().unwrap_or(0.0);
            if f > 0.0 || book.metrics.contains_key(fp) {
                quota_metrics(&mut book.metrics, *fp, def).1.set(f);
            }
        }
    }
    let len = book.keys.len() + book.loops.keys.len();
    if book.removed > len / 2 + 1024 {
        book.removed = 0;
        ch.known
            .rebuild(book.keys.keys().chain(book.loops.keys.keys()));
    }
}

/// Sends each worker that holds the key its `split` share of `left` (by its demand in the
/// last interval), when it differs from the last one sent, or the key is forgotten.
#[allow(clippy::too_many_arguments)]
pub(super) fn send_shares(
    x: &Exchange,
    ch: &Chans,
    fp: u64,
    key: u64,
    g: &mut Global,
    (left, more, defer): (u64, bool, u64),
    next_us: u64,
    forget: bool,
    who: &mut Vec<usize>,
    demand: &mut Vec<u64>,
    shares: &mut Vec<u64>,
) {
    who.clear();
    demand.clear();
    for (w, s) in g.sides.iter().enumerate() {
        if s.epoch != 0 {
            who.push(w);
            demand.push(s.demand);
        }
    }
    shares.clear();
    shares.resize(who.len(), 0);
    split(left, demand, shares);
    for (i, &w) in who.iter().enumerate() {
        let s = &mut g.sides[w];
        let share = shares[i];
        let reserved = s.unreported();
        let sent = (share, left, more, reserved, defer);
        if !forget && s.sent == Some(sent) {
            continue;
        }
        let u = Update {
            fp,
            key,
            epoch: s.epoch,
            seen: s.level,
            reserved,
            share,
            defer,
            left,
            more,
            window_end: g.window_end,
            next_us,
            forget,
        };
        match ch.updates[w].0.try_send(u) {
            Ok(()) => {
                s.sent = Some(sent);
                s.cap = Some(s.level + reserved + share);
                s.defer_sent = defer;
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                s.sent = None;
                x.dropped.increment(1);
            }
        }
    }
}

/// Keeps one of the exchange's maps (`keys`: the limits', or the loop windows') within
/// `traffic.max_global_keys`: past it, the keys idle longest (no call in flight) are dropped (an
/// evicted quota key or loop window starts its window's count afresh, so this is counted in
/// `tollgate_traffic_keys_evicted_total`); their workers are told to forget them.
fn evict_idle(
    x: &Exchange,
    ch: &Chans,
    keys: &mut HashMap<(u64, u64), Global>,
    removed: &mut usize,
    defs: &HashMap<u64, Def>,
) {
    let cap = x.max_keys.load(Ordering::Relaxed).max(1);
    if keys.len() <= cap {
        return;
    }
    // Down to 90 % at once: the sort is paid once per tenth of the cap.
    let excess = keys.len() - cap * 9 / 10;
    let mut idle: Vec<(u64, (u64, u64))> = keys
        .iter()
        .filter(|(k, g)| {
            let busy = matches!(
                defs.get(&k.0).map(|d| d.kind),
                Some(LimitKind::Concurrency { .. })
            ) && g.sides.iter().any(|s| s.level > 0);
            !busy
        })
        .map(|(k, g)| (g.last_active, *k))
        .collect();
    idle.sort_unstable();
    for &(_, k) in idle.iter().take(excess) {
        let Some(mut g) = keys.remove(&k) else {
            continue;
        };
        x.evictions.increment(1);
        *removed += 1;
        for (w, s) in g.sides.iter_mut().enumerate() {
            if s.epoch == 0 {
                continue;
            }
            let u = Update {
                fp: k.0,
                key: k.1,
                epoch: s.epoch,
                seen: s.level,
                reserved: 0,
                share: 0,
                defer: 0,
                left: 0,
                more: false,
                window_end: g.window_end,
                next_us: 0,
                forget: true,
            };
            if ch.updates[w].0.try_send(u).is_err() {
                x.dropped.increment(1);
            }
        }
    }
}
