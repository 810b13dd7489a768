//! Phase: limit (`traffic.rules`). Each worker decides from its own share of every limit (no
//! lock on the request path); the exchange thread collects what the workers admitted, keeps
//! the global truth (GCRA state, quota counts, calls in flight) and hands each worker that uses
//! a key a new share every `traffic.sync_interval`, in proportion to where the demand is. A
//! config without rules costs one branch (`check`). The arithmetic is `policy::traffic`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use smallvec::SmallVec;

use crate::error::Kind;
use crate::jsonrpc::MessageKind;
use crate::mcp::Method;
use crate::policy::rules::Item;
use crate::policy::traffic::{
    initial_share, part, split, window_bounds, CalWindow, Gcra, LimitKind, LimitRule, OnFailure,
    RedisBackend, Traffic,
};

mod fleet;
mod loops;

/// Calls of a rate or quota a worker may count before it tells the exchange (`Entry::defer`),
/// while the key's budget is plentiful: one event per `DEFER` calls instead of one per call.
const DEFER: u64 = 16;
/// Plentiful: what is left is at least this many times `DEFER` per worker holding the key.
/// Below it, workers report every call (the exact mode every key starts in).
const PLENTY: u64 = 4;

/// `Exchange::redis_state`: how workers treat rate limits and quotas while Redis is down.
const REDIS_NORMAL: u8 = 0;
const REDIS_OPEN: u8 = 1;
const REDIS_CLOSED: u8 = 2;
/// Down under `on_failure: local`: the allotments as last read hold, and no read is coming,
/// so a call over its share is refused at once instead of waiting for one.
const REDIS_LOCAL: u8 = 3;

use super::context::Ctx;
use super::reject::Refusal;
use super::state::WorkerState;

/// Microseconds on the monotonic clock (rates, concurrency, demand pacing): a wall clock
/// stepped by NTP or a resumed VM must not refill or freeze a GCRA. Offset so that "long ago"
/// (0) is more than a sync interval before the first call. Calendar quotas use `wall_ms`.
fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    (1 << 32) + base.elapsed().as_micros() as u64
}

/// Unix milliseconds: only calendar windows (which are wall time in `traffic.time_zone`).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum What {
    /// The worker's level changed (admitted, released): the event carries the new level.
    Use,
    /// A call was refused on this worker: it wants a larger share.
    Demand,
    /// The worker evicted its entry: it wants no more updates for the key.
    Gone,
}

/// What a worker tells the exchange about one of its entries. It carries the entry's level
/// (calls counted in its epoch, or in flight), not a delta: a lost event is made good by the
/// next one, so neither a count nor a concurrency slot is lost to a full queue.
#[derive(Clone, Copy, Debug)]
struct Event {
    fp: u64,
    key: u64,
    worker: u16,
    epoch: u32,
    what: What,
    level: u64,
    at_us: u64,
    /// Quotas: the end of the window the entry counts in (Unix seconds).
    window_end: i64,
    /// The calls the worker may count before its next event (`Entry::defer`).
    defer: u64,
}

#[derive(Clone, Copy, Debug)]
struct Update {
    fp: u64,
    key: u64,
    /// The worker's entry epoch and level the exchange had seen when it computed `share`.
    epoch: u32,
    seen: u64,
    /// Calls the worker may have counted past `seen` without telling yet (at most its
    /// deferral), kept out of what is split: the worker's cap is `seen + reserved + share`.
    reserved: u64,
    share: u64,
    /// How many calls the worker may count before it tells the exchange (0: every one).
    defer: u64,
    /// What was left globally when the share was computed (with `traffic.redis`: what is
    /// left of this instance's allotment, when that is less).
    left: u64,
    /// `traffic.redis`: the fleet has more left than this instance's allotment (a worker
    /// out of share waits for the next Redis sync instead of refusing).
    more: bool,
    window_end: i64,
    /// A rate: when the next call conforms globally (`now_us` clock); 0 otherwise.
    next_us: u64,
    /// The key is idle everywhere (or evicted by the exchange): a worker drops its entry.
    forget: bool,
}

/// A limit the exchange knows (by fingerprint): what it needs to keep the global truth.
#[derive(Clone, Debug)]
struct Def {
    kind: LimitKind,
    /// The rule's name: the label of the quota metrics.
    rule: Arc<str>,
}

/// The queues and the filter of known keys, made by the first config with rules and sized from
/// its `traffic.max_keys` and `max_global_keys` (a reload keeps them: larger ones take a
/// restart to size).
struct Chans {
    events: Sender<Event>,
    events_rx: Receiver<Event>,
    updates: Vec<(Sender<Update>, Receiver<Update>)>,
    known: Known,
}

/// The keys the exchange keeps state for, as a Bloom filter the workers read without a lock:
/// a worker creating an entry for a key in it starts with no share and waits for the
/// exchange's (an evicted and re-created entry must not get a first share again). A false
/// positive costs that wait (at most 3 sync intervals); a key missing from it (a read racing a
/// rebuild) costs a first share, as before the filter. Two buffers: the exchange rebuilds the
/// idle one from its keys and switches, so removed keys leave the filter.
struct Known {
    bits: [Box<[AtomicU64]>; 2],
    current: AtomicUsize,
    mask: u64,
}

impl Known {
    fn new(keys: usize) -> Known {
        let bits = (keys.saturating_mul(8))
            .next_power_of_two()
            .clamp(1 << 12, 1 << 27);
        let buf = || (0..bits / 64).map(|_| AtomicU64::new(0)).collect();
        Known {
            bits: [buf(), buf()],
            current: AtomicUsize::new(0),
            mask: bits as u64 - 1,
        }
    }

    fn positions(&self, fp: u64, key: u64) -> [u64; 2] {
        let h = (fp ^ key.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        [h & self.mask, (h >> 32 ^ h.rotate_left(17)) & self.mask]
    }

    fn contains(&self, fp: u64, key: u64) -> bool {
        let b = &self.bits[self.current.load(Ordering::Acquire) & 1];
        self.positions(fp, key)
            .iter()
            .all(|&p| b[(p / 64) as usize].load(Ordering::Relaxed) & (1 << (p % 64)) != 0)
    }

    fn set(&self, buf: usize, fp: u64, key: u64) {
        for p in self.positions(fp, key) {
            self.bits[buf][(p / 64) as usize].fetch_or(1 << (p % 64), Ordering::Relaxed);
        }
    }

    fn insert(&self, fp: u64, key: u64) {
        self.set(self.current.load(Ordering::Relaxed) & 1, fp, key);
    }

    /// Refills the idle buffer with `keys` and makes it current.
    fn rebuild<'a>(&self, keys: impl Iterator<Item = &'a (u64, u64)>) {
        let next = (self.current.load(Ordering::Relaxed) + 1) & 1;
        for w in self.bits[next].iter() {
            w.store(0, Ordering::Relaxed);
        }
        for &(fp, key) in keys {
            self.set(next, fp, key);
        }
        self.current.store(next, Ordering::Release);
    }
}

/// Hashes a limit's key parts: SipHash seeded with a secret 128-bit key, random per process,
/// or with `traffic.redis` derived from its URL and prefix, so every instance of a fleet
/// names a key alike in Redis (a reload that sets it renames every key: their counts restart).
pub struct KeyHasher {
    k0: AtomicU64,
    k1: AtomicU64,
}

impl KeyHasher {
    fn random() -> KeyHasher {
        let r = std::hash::RandomState::new();
        KeyHasher {
            k0: AtomicU64::new(r.hash_one(0u8)),
            k1: AtomicU64::new(r.hash_one(1u8)),
        }
    }

    fn fleet(&self, r: &RedisBackend) {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"tollgate traffic key\0");
        ctx.update(r.url.as_bytes());
        ctx.update(b"\0");
        ctx.update(r.key_prefix.as_bytes());
        let d = ctx.finish();
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d.as_ref()[i..i + 8]);
            u64::from_le_bytes(b)
        };
        self.k0.store(word(0), Ordering::Relaxed);
        self.k1.store(word(8), Ordering::Relaxed);
    }
}

impl BuildHasher for KeyHasher {
    type Hasher = std::hash::DefaultHasher;
    fn build_hasher(&self) -> std::hash::DefaultHasher {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.k0.load(Ordering::Relaxed));
        h.write_u64(self.k1.load(Ordering::Relaxed));
        h
    }
}

/// The cross-core exchange: one per process, shared by every config generation (a reload keeps
/// it, and with it the state of every limit whose fingerprint did not change).
pub struct Exchange {
    workers: usize,
    /// Hashes key parts; one random key for all workers, so a key hashes alike everywhere.
    hasher: KeyHasher,
    chans: OnceLock<Chans>,
    /// Every limit a config (built in this process) defined, by fingerprint. Only grows: an
    /// aborted reload's limits are harmless, and a running one's are never missing.
    defs: Mutex<Arc<HashMap<u64, Def>>>,
    sync_us: AtomicU64,
    /// Keys the exchange keeps at most (`traffic.max_global_keys`).
    max_keys: AtomicUsize,
    started: AtomicBool,
    /// The sync thread, woken early when a worker's share ran out.
    thread: std::sync::OnceLock<std::thread::Thread>,
    /// Events the queue could not take, and updates a worker's queue could not take.
    dropped: metrics::Counter,
    evictions: metrics::Counter,
    /// `traffic.redis` of the latest config (the sync thread follows it).
    redis: Mutex<Option<RedisBackend>>,
    /// `REDIS_*`: set by the sync thread, read by workers (one relaxed load per limit).
    redis_state: AtomicU8,
    /// `traffic.redis` is set: a worker's new entry of a rate or quota gets no first share
    /// (the exchange's first share comes with the other instances' usage read from Redis).
    redis_on: AtomicBool,
    /// Shutting down: the sync thread sends what is pending, leaves the fleet's instances and
    /// sets `left`.
    leaving: AtomicBool,
    left: AtomicBool,
}

impl Exchange {
    pub fn new(workers: usize) -> Arc<Exchange> {
        Arc::new(Exchange {
            workers: workers.max(1),
            hasher: KeyHasher::random(),
            chans: OnceLock::new(),
            defs: Mutex::new(Arc::default()),
            sync_us: AtomicU64::new(20_000),
            max_keys: AtomicUsize::new(usize::MAX),
            started: AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
            dropped: metrics::counter!(crate::observe::names::TRAFFIC_EXCHANGE_DROPPED_TOTAL),
            evictions: metrics::counter!(crate::observe::names::TRAFFIC_KEYS_EVICTED_TOTAL),
            redis: Mutex::new(None),
            redis_state: AtomicU8::new(REDIS_NORMAL),
            redis_on: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            left: AtomicBool::new(false),
        })
    }

    /// On a clean shutdown (`traffic.redis`): a last sync sends the counts not yet sent, and
    /// the instance leaves `<prefix>instances`, so the others' split no longer counts it.
    /// Waits for that at most `bound`.
    pub fn leave(&self, bound: Duration) {
        let fleet = self.redis.lock().is_ok_and(|r| r.is_some());
        if !fleet || !self.started.load(Ordering::Acquire) {
            return;
        }
        self.leaving.store(true, Ordering::Release);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
        let until = Instant::now() + bound;
        while !self.left.load(Ordering::Acquire) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Makes the queues the first time, sized from `max_keys` but capped: a bounded channel's
    /// slots are allocated and written up front, and 2 × 100,000 events of 64 bytes made the
    /// process 25 MB larger. Nothing is lost past the cap: a level the full queue refused is
    /// sent again (`flush`), an update the exchange could not send is sent at its next sync;
    /// 32,768 events hold ~150 ms of one worker's calls at 200,000/s, far more than a sync
    /// interval's worth.
    fn chans(&self, max_keys: usize, global_keys: usize) -> &Chans {
        self.chans.get_or_init(|| {
            let (events, events_rx) = crossbeam_channel::bounded(
                max_keys
                    .saturating_mul(2)
                    .next_power_of_two()
                    .clamp(1 << 12, 1 << 15),
            );
            let per_worker = max_keys.next_power_of_two().clamp(1 << 10, 1 << 14);
            Chans {
                events,
                events_rx,
                updates: (0..self.workers)
                    .map(|_| crossbeam_channel::bounded(per_worker))
                    .collect(),
                known: Known::new(global_keys),
            }
        })
    }

    /// Makes `traffic`'s limits known and starts the sync thread the first time a config has
    /// rules (called when a gateway is built, at start and on reload).
    pub fn install(self: &Arc<Self>, traffic: &Traffic) {
        if traffic.rules.is_empty() {
            return;
        }
        self.chans(traffic.max_keys, traffic.max_global_keys);
        self.sync_us
            .store(traffic.sync_interval.as_micros() as u64, Ordering::Relaxed);
        self.max_keys
            .store(traffic.max_global_keys, Ordering::Relaxed);
        if let Some(r) = &traffic.redis {
            self.hasher.fleet(r);
        }
        if let Ok(mut r) = self.redis.lock() {
            if traffic.redis.is_none() {
                self.redis_state.store(REDIS_NORMAL, Ordering::Relaxed);
            }
            r.clone_from(&traffic.redis);
            self.redis_on
                .store(traffic.redis.is_some(), Ordering::Relaxed);
        }
        if let Ok(mut defs) = self.defs.lock() {
            let mut next = HashMap::clone(&defs);
            for r in &traffic.rules {
                for l in &r.limits {
                    next.insert(
                        l.fp,
                        Def {
                            kind: l.kind,
                            rule: r.name.as_ref().into(),
                        },
                    );
                }
                // A loop guard counts on the exchange too (`loops`): its windows are global.
                if let Some(g) = &r.loop_guard {
                    next.insert(
                        g.fp,
                        Def {
                            kind: g.kind(),
                            rule: r.name.as_ref().into(),
                        },
                    );
                }
            }
            *defs = Arc::new(next);
        }
        if !self.started.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("tollgate-traffic".into())
                .spawn(move || sync_loop(weak));
            match spawned {
                Ok(h) => {
                    let _ = self.thread.set(h.thread().clone());
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not start the traffic sync thread: limits hold per worker only")
                }
            }
        }
    }
}

/// What the exchange knows of one worker for one key.
#[derive(Clone, Copy, Debug, Default)]
struct Side {
    /// The epoch of the worker's entry; 0: the worker has no entry (no updates sent to it).
    epoch: u32,
    /// Its level in that epoch (calls counted, or in flight).
    level: u64,
    /// Calls and refusals since the last sync.
    demand: u64,
    /// The (share, left, more, reserved, defer) last sent, to send again only what changed.
    sent: Option<(u64, u64, bool, u64, u64)>,
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
struct Global {
    sides: Vec<Side>,
    tat: u64,
    window_end: i64,
    count: u64,
    active: bool,
    /// The sync in which it was last active (the exchange evicts the longest idle first).
    last_active: u64,
    /// `traffic.redis`: units counted here not yet sent; the Redis window (a rate's period
    /// number, a quota's window end) the next two are for; units this instance sent in it;
    /// the other instances' units in it, as last read.
    pending: u64,
    rwin: i64,
    own: u64,
    others: u64,
    /// `traffic.redis`: this instance's allotment, the units it may still admit until its
    /// next Redis read (`ceil(left / users)` at each read, less what it counted since; a
    /// rate's refills at `1 / users` of the rate, as of `allot_at`).
    allot: u64,
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
    hold: bool,
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
struct Book {
    keys: HashMap<(u64, u64), Global>,
    tick: u64,
    /// Keys removed since the filter of known keys was last rebuilt.
    removed: usize,
    shares: Vec<u64>,
    demand: Vec<u64>,
    who: Vec<usize>,
    /// Per quota limit: the fullest key's fraction of its budget in this sync.
    fullest: HashMap<u64, f64>,
    /// Per quota limit: units counted, and the fullest key's fraction.
    metrics: HashMap<u64, (metrics::Counter, metrics::Gauge)>,
    /// `traffic.redis`, when configured, and the keys of the sync in flight.
    fleet: Option<fleet::Fleet>,
    pushes: Vec<fleet::Push>,
    pushed: Vec<((u64, u64), u64, i64, bool)>,
    /// A key was created (or a quota window rolled) in this sync: Redis is asked now (its
    /// first share waits for it).
    fresh: bool,
    /// `traffic.redis`: live instances as last read (0: never read, taken as 1).
    live: u64,
    /// The loop guards' windows, apart from `keys`.
    loops: loops::Windows,
}

/// `traffic.redis`: an instance's part of what the fleet has left, `ceil(left / instances)`.
fn allotment(left: u64, live: u64) -> u64 {
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

fn sync_loop(weak: Weak<Exchange>) {
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
fn sync_once(x: &Exchange, book: &mut Book, now: u64, wall_s: i64) {
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
fn send_shares(
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

/// This worker's view of one key of one limit.
struct Entry {
    /// Changes when the entry is created and when a quota window rolls: the exchange counts
    /// levels per epoch, so an evicted and re-created entry never inherits an old level.
    epoch: u32,
    /// The epoch it was created with: names it in the eviction clock.
    born: u32,
    /// Calls admitted here in this epoch (rate, quota) or in flight here (concurrency).
    level: u64,
    /// Admit while `level < cap`.
    cap: u64,
    window_end: i64,
    /// Globally left at the last update (`None`: no update yet), this worker's level then, and
    /// the share it was given.
    left: Option<u64>,
    base: u64,
    share: u64,
    /// A rate: when the next call conforms globally, as of the last update (0: unknown).
    next_us: u64,
    /// `traffic.redis`: the fleet had more left than this instance's allotment at the last
    /// update (out of share, wait for the next Redis read).
    more: bool,
    /// When this worker last told the exchange it wants more (µs).
    demand_at: u64,
    /// Used since the eviction clock last passed.
    touched: bool,
    /// A concurrency limit's entry: never evicted or forgotten with calls in flight.
    concurrency: bool,
    /// A loop guard's entry (`loops`): `window_end` is when its window closes (`now_us`
    /// clock), the exchange's once an update said.
    looped: bool,
    /// Its last level has not reached the exchange: a full queue did not take it, or it is
    /// within `defer` of the last level sent. Sent at the next flush (`Local::flush`: a
    /// decision or release on this worker, at most every quarter sync; or its tick).
    dirty: bool,
    /// The level last sent, and how many calls past it may be counted before the next
    /// event (0: every call is sent; the exchange raises it while the budget is plentiful and
    /// keeps those calls out of what it splits, so a late level never admits past the limit).
    sent: u64,
    defer: u64,
}

#[derive(Default)]
struct Identity(u64);

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

type Map = HashMap<(u64, u64), Entry, BuildHasherDefault<Identity>>;

/// A worker's limiter state: its entries (bounded by `traffic.max_keys`), the quota windows it
/// has computed, and its handles on the exchange. Lives as long as the worker (across reloads).
pub struct Local {
    exchange: Arc<Exchange>,
    worker: u16,
    map: RefCell<Map>,
    /// Entries in creation order, as (key, born): an item whose entry is gone or re-created
    /// is dead; compacted when dead items outnumber the live, so it stays within
    /// `2 * max_keys + 64`.
    clock: RefCell<VecDeque<((u64, u64), u32)>>,
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

    fn epoch(&self) -> u32 {
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
    fn admitted(&self, map: &mut Map, k: (u64, u64), units: u64, now: u64) {
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
    fn charge(&self, fp: u64, key: u64, tokens: u64) {
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
    fn apply(&self, map: &mut Map, now: u64) {
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
    fn ask_more(
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
    fn known(&self, k: (u64, u64)) -> bool {
        self.exchange
            .chans
            .get()
            .is_some_and(|c| c.known.contains(k.0, k.1))
    }

    /// A new entry for `k` with `cap` (a first share, or 0), counting in the window ending
    /// at `window_end`; `(concurrency, looped)` say which kind of limit it is. A full map
    /// (`max_keys`) makes room first.
    fn create(
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
    fn judge(
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

    fn release(&self, fp: u64, key: u64) {
        let mut map = self.map.borrow_mut();
        let now = now_us();
        self.flush(&mut map, now);
        if let Some(e) = map.get_mut(&(fp, key)) {
            e.level = e.level.saturating_sub(1);
            self.send((fp, key), e, What::Use, now);
        }
    }

    fn reject_counter(&self, fp: u64, rule: &str, kind: &'static str) -> metrics::Counter {
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

/// A call in flight under a concurrency limit: released when dropped, that is when the
/// request's context goes, however the request ended (answered, refused later, client gone).
pub struct Held {
    local: Rc<Local>,
    fp: u64,
    key: u64,
    /// A token quota's entry, charged what the reply relayed (`charge_relayed`), not a slot.
    tokens: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.tokens {
            self.local.release(self.fp, self.key);
        }
    }
}

/// Phase: record (for token quotas). Charges the estimated tokens of the `bytes` of reply
/// relayed to the client for this request to every token quota that admitted it, once each.
/// Counted from what the relay wrote, so nothing is buffered to count it.
pub fn charge_relayed(ctx: &Ctx, bytes: u64) {
    let tokens = crate::observe::tokens::estimated_tokens(bytes);
    for h in ctx.held.iter().filter(|h| h.tokens) {
        h.local.charge(h.fp, h.key, tokens);
    }
}

/// What one message is, for matching and keying rules.
struct Facts<'a> {
    server: usize,
    upstream: Option<usize>,
    tool: Option<&'a str>,
    method: Method,
    /// `arguments_hash` of a `tools/call` (when a rule keys by arguments; else 0).
    arguments: u64,
}

fn matches(r: &LimitRule, f: &Facts<'_>, p: Option<&crate::policy::Principal>) -> bool {
    let any = |list: &[Box<str>], v: Option<&str>| {
        list.is_empty() || v.is_some_and(|v| list.iter().any(|x| &**x == v))
    };
    r.servers.as_ref().is_none_or(|s| s.contains(&f.server))
        && r.upstreams
            .as_ref()
            .is_none_or(|u| f.upstream.is_some_and(|x| u.contains(&x)))
        && r.tools
            .as_ref()
            .is_none_or(|t| f.method == Method::ToolsCall && f.tool.is_some_and(|n| t.allows(n)))
        && r.methods.as_ref().is_none_or(|m| m.contains(&f.method))
        && (r.loop_guard.is_none() || f.method == Method::ToolsCall)
        && any(&r.subjects, p.map(|p| &*p.subject))
        && any(&r.clients, p.and_then(|p| p.client.as_deref()))
        && any(&r.tenants, p.and_then(|p| p.tenant.as_deref()))
        && (r.roles.is_empty() || p.is_some_and(|p| p.roles.iter().any(|x| r.roles.contains(x))))
}

fn key_hash(
    x: &Exchange,
    gw: &super::state::Gateway,
    r: &LimitRule,
    f: &Facts<'_>,
    p: Option<&crate::policy::Principal>,
) -> u64 {
    let mut h = x.hasher.build_hasher();
    let text = |h: &mut std::hash::DefaultHasher, bit: u8, s: &[u8]| {
        h.write_u8(bit);
        h.write_usize(s.len());
        h.write(s);
    };
    if r.key & part::PRINCIPAL != 0 {
        text(&mut h, part::PRINCIPAL, p.map_or(&[][..], |p| &p.id[..]));
    }
    if r.key & part::CLIENT != 0 {
        text(
            &mut h,
            part::CLIENT,
            p.and_then(|p| p.client.as_deref()).unwrap_or("").as_bytes(),
        );
    }
    if r.key & part::TENANT != 0 {
        text(
            &mut h,
            part::TENANT,
            p.and_then(|p| p.tenant.as_deref()).unwrap_or("").as_bytes(),
        );
    }
    if r.key & part::SERVER != 0 {
        text(
            &mut h,
            part::SERVER,
            gw.config.servers[f.server].path.as_bytes(),
        );
    }
    if r.key & part::UPSTREAM != 0 {
        let name = f.upstream.map_or("", |u| gw.upstreams[u].name.as_str());
        text(&mut h, part::UPSTREAM, name.as_bytes());
    }
    if r.key & part::TOOL != 0 {
        text(&mut h, part::TOOL, f.tool.unwrap_or("").as_bytes());
    }
    if r.key & part::METHOD != 0 {
        text(&mut h, part::METHOD, f.method.as_str().as_bytes());
    }
    if r.key & part::ARGUMENTS != 0 {
        h.write_u8(part::ARGUMENTS);
        h.write_u64(f.arguments);
    }
    h.finish()
}

enum Judged {
    Admit,
    /// `wait`: this worker has had no share from the exchange for the entry yet; a moment's
    /// wait brings one.
    Over {
        retry_ms: u64,
        wait: bool,
    },
}

/// A refusal by one limit, before it is worded.
struct Over<'a> {
    rule: &'a LimitRule,
    /// `None`: the rule's loop guard (`loops`).
    kind: Option<LimitKind>,
    fp: u64,
    retry_ms: u64,
    tool: Option<&'a str>,
    method: Method,
}

impl Over<'_> {
    /// The refusal's kind (`data.kind`, the metric label): the limit's, or `loop`.
    fn label(&self) -> &'static str {
        match self.kind {
            Some(k) => k.label(),
            None => "loop",
        }
    }
}

/// Why `check` did not admit.
pub enum Stop {
    Refuse(Refusal),
    /// This worker's share ran out but the budget may not have: wait a moment (the exchange
    /// was asked for a larger share) and check again.
    Wait,
}

/// How long a request waits in all for a larger share before it is refused: three syncs, of
/// the exchange or (`traffic.redis`, for a new allotment) of Redis, whichever is slower, and
/// at most a second.
fn max_wait(ctx: &Ctx) -> Duration {
    wait_bound(&ctx.gw().config.traffic)
}

fn wait_bound(t: &Traffic) -> Duration {
    let redis = t.redis.as_ref().map_or(Duration::ZERO, |r| r.sync_interval);
    (t.sync_interval.max(redis) * 3).min(MAX_WAIT)
}

/// The longest a request waits for a larger share, whatever the sync intervals.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What authorization and routing made of one message, for the limit phase: refused (never
/// charged: a denied or hidden item costs the caller nothing, and a limit naming it must not
/// reveal it), or allowed and sent to an upstream (`None`: answered by the gateway or fanned
/// out, so rules naming `upstreams` do not match it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Refused,
    To(Option<usize>),
}

/// The routes of a request on an endpoint with one upstream: every message allowed (it has no
/// rules), sent to that upstream.
pub const PASS_THROUGH: &[Route] = &[];

/// Phase: limit, after authorization and routing (`routes`: one per message of `ctx.messages`,
/// or `PASS_THROUGH`). Every rule that matches a message applies (a message must pass all of
/// them); a batch is counted message by message and refused whole when one of them is over a
/// limit. Admitted calls are counted (and those under a concurrency limit held in `ctx.held`)
/// only when every limit admitted them. `may_wait`: a share that ran out while the global
/// budget may have room answers `Stop::Wait` (else it refuses). `now`: `now_us` as of the
/// decision.
#[inline]
fn check(
    w: &WorkerState,
    ctx: &mut Ctx,
    may_wait: bool,
    routes: &[Route],
    now: u64,
) -> Result<(), Stop> {
    if ctx.gw().config.traffic.rules.is_empty() {
        return Ok(());
    }
    check_rules(w, ctx, may_wait, routes, now)
}

/// `check`, waiting for a larger share when that may help (`wait`): the whole phase. The wait
/// is boxed: it is rare, and every request's future would otherwise carry its state.
pub async fn phase(w: &WorkerState, ctx: &mut Ctx, routes: &[Route]) -> Result<(), Refusal> {
    // As of now, not of the request's start: a body read slowly would back-date the decision
    // (an idle rate's next call would conform earlier than it does).
    match check(w, ctx, true, routes, now_us()) {
        Ok(()) => Ok(()),
        Err(Stop::Refuse(r)) => Err(r),
        Err(Stop::Wait) => Box::pin(wait(w, ctx, routes)).await,
    }
}

fn check_rules(
    w: &WorkerState,
    ctx: &mut Ctx,
    may_wait: bool,
    routes: &[Route],
    now: u64,
) -> Result<(), Stop> {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let traffic = &*gw.config.traffic;
    let Some(server) = ctx.server else {
        return Ok(());
    };
    let local = &w.traffic;
    let x = &*local.exchange;
    let mut map = local.map.borrow_mut();
    local.apply(&mut map, now);
    let principal = ctx.principal.clone();
    let p = principal.as_deref();
    let s = &gw.config.servers[server];
    let federated = s.federated();
    // (fingerprint, key, kind, units) of each admission (a loop guard's too), committed when
    // all passed.
    let mut pending: SmallVec<[(u64, u64, LimitKind, u64); 4]> = SmallVec::new();
    let mut over: Option<Over<'_>> = None;
    'messages: for (i, m) in ctx.messages.iter().enumerate() {
        if m.kind != MessageKind::Request || Item::kind_of(m.method).is_none() {
            continue;
        }
        let upstream = match routes.get(i) {
            Some(Route::Refused) => continue,
            Some(Route::To(u)) => *u,
            None if federated => None,
            None => Some(s.primary()),
        };
        let name = match m.method {
            Method::ToolsCall | Method::PromptsGet => m
                .name
                .as_ref()
                .and_then(|n| std::str::from_utf8(n.get()).ok()),
            _ => None,
        };
        let facts = Facts {
            server,
            upstream,
            tool: if m.method == Method::ToolsCall {
                name
            } else {
                None
            },
            method: m.method,
            arguments: m.arguments_hash,
        };
        for r in &traffic.rules {
            if !matches(r, &facts, p) {
                continue;
            }
            let key = key_hash(x, gw, r, &facts, p);
            if let Some(g) = r.loop_guard {
                let already = pending.iter().filter(|q| q.0 == g.fp && q.1 == key).count() as u64;
                match local.judge_loop(&mut map, traffic, &g, key, now, already) {
                    Judged::Admit => pending.push((g.fp, key, g.kind(), 1)),
                    Judged::Over { retry_ms, wait } => {
                        if may_wait && wait {
                            return Err(Stop::Wait);
                        }
                        over = Some(Over {
                            rule: r,
                            kind: None,
                            fp: g.fp,
                            retry_ms,
                            tool: facts.tool,
                            method: m.method,
                        });
                        break 'messages;
                    }
                }
            }
            for l in &r.limits {
                let already = pending.iter().filter(|q| q.0 == l.fp && q.1 == key).count() as u64;
                let retry_ms = match local.judge(&mut map, traffic, l, key, now, already) {
                    Judged::Admit => {
                        pending.push((l.fp, key, l.kind, r.units(&l.kind, facts.tool)));
                        continue;
                    }
                    Judged::Over { retry_ms, wait } => {
                        if may_wait && wait {
                            return Err(Stop::Wait);
                        }
                        retry_ms
                    }
                };
                over = Some(Over {
                    rule: r,
                    kind: Some(l.kind),
                    fp: l.fp,
                    retry_ms,
                    tool: facts.tool,
                    method: m.method,
                });
                break 'messages;
            }
        }
    }
    if let Some(o) = over {
        drop(map);
        local
            .reject_counter(o.fp, &o.rule.name, o.label())
            .increment(1);
        tracing::debug!(
            rule = &*o.rule.name,
            kind = o.label(),
            key = key_names(o.rule.key),
            retry_ms = o.retry_ms,
            "traffic limit reached"
        );
        return Err(Stop::Refuse(refusal(&o)));
    }
    for (fp, key, kind, units) in pending {
        local.admitted(&mut map, (fp, key), units, now);
        let tokens = matches!(kind, LimitKind::Tokens { .. });
        if matches!(kind, LimitKind::Concurrency { .. })
            || tokens
                && !ctx
                    .held
                    .iter()
                    .any(|h| h.tokens && (h.fp, h.key) == (fp, key))
        {
            ctx.held.push(Held {
                local: local.clone(),
                fp,
                key,
                tokens,
            });
        }
    }
    Ok(())
}

/// Waits (at most `max_wait`) for the exchange to bring this worker a larger share, then
/// decides for good. Only a request over its worker's share gets here. It looks again every
/// millisecond, or with `traffic.redis` every twentieth of a Redis sync (a new allotment comes
/// no sooner: many calls waiting for it must not cost a core a check each per millisecond).
pub async fn wait(w: &WorkerState, ctx: &mut Ctx, routes: &[Route]) -> Result<(), Refusal> {
    let until = std::time::Instant::now() + max_wait(ctx);
    let step = ctx
        .gw()
        .config
        .traffic
        .redis
        .as_ref()
        .map_or(Duration::ZERO, |r| r.sync_interval / 20)
        .max(Duration::from_millis(1));
    loop {
        monoio::time::sleep(step).await;
        let last = std::time::Instant::now() >= until;
        match check(w, ctx, !last, routes, now_us()) {
            Ok(()) => return Ok(()),
            Err(Stop::Refuse(r)) => return Err(r),
            Err(Stop::Wait) => {}
        }
    }
}

fn key_names(key: u8) -> &'static str {
    // The key's parts by name (never their values: a principal may be a token's subject).
    match key {
        0 => "global",
        k if k == part::PRINCIPAL => "principal",
        k if k == part::PRINCIPAL | part::TOOL => "principal+tool",
        k if k == part::TENANT => "tenant",
        k if k == part::CLIENT => "client",
        k if k == part::PRINCIPAL | part::TOOL | part::ARGUMENTS => "principal+tool+arguments",
        _ => "composite",
    }
}

fn refusal(o: &Over<'_>) -> Refusal {
    let secs = o.retry_ms.div_ceil(1000).max(1);
    let what = match o.kind {
        Some(LimitKind::Rate { .. }) => "Rate limit",
        Some(LimitKind::Concurrency { .. }) => "Concurrency limit",
        Some(LimitKind::Quota { .. }) => "Quota",
        Some(LimitKind::Tokens { .. }) => "Token quota",
        Some(LimitKind::Loop { .. }) | None => "Loop guard",
    };
    let data = format!(
        "{{\"retryAfterMs\":{},\"limit\":{},\"kind\":\"{}\"}}",
        o.retry_ms,
        serde_json::to_string(&*o.rule.name).unwrap_or_default(),
        o.label()
    )
    .into_bytes();
    let mut r = match (o.rule.loop_guard, o.rule.per_tool(), o.method, o.tool) {
        // A loop is stopped in band, whatever the rule names: the model reads why.
        (Some(g), _, _, tool) => Refusal::because(
            Kind::ToolLimited,
            format!(
                "You called {} with the same arguments {} times in {}; change the arguments or \
                 stop (traffic rule {}: the same call is refused for another {secs} s).",
                tool.unwrap_or("this tool"),
                g.max,
                crate::config::render_duration(g.window),
                o.rule.name
            ),
        ),
        (None, true, Method::ToolsCall, Some(tool)) => Refusal::because(
            Kind::ToolLimited,
            format!(
                "{what} reached for tool {tool} (traffic rule {}); retry after {secs} s.",
                o.rule.name
            ),
        ),
        (None, ..) => Refusal::because(
            Kind::Throttled,
            format!(
                "{what} reached (traffic rule {}); retry after {secs} s.",
                o.rule.name
            ),
        ),
    };
    r.data = Some(data);
    r.retry_after_secs = Some(u32::try_from(secs).unwrap_or(u32::MAX));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An exchange that knows limit 7 of `kind`, with its queues, and no sync thread: the test
    /// runs `sync_once` itself.
    fn exchange_with(kind: LimitKind, workers: usize, max_keys: usize) -> Arc<Exchange> {
        let x = Exchange::new(workers);
        x.chans(max_keys, max_keys * workers);
        x.max_keys.store(max_keys * workers, Ordering::Relaxed);
        if let Ok(mut d) = x.defs.lock() {
            let mut m = HashMap::new();
            m.insert(
                7,
                Def {
                    kind,
                    rule: "r".into(),
                },
            );
            *d = Arc::new(m);
        }
        x.sync_us.store(20_000, Ordering::Relaxed);
        x
    }

    fn event(x: &Exchange, worker: u16, epoch: u32, what: What, level: u64, at: u64, end: i64) {
        x.chans
            .get()
            .unwrap()
            .events
            .try_send(Event {
                fp: 7,
                key: 1,
                worker,
                epoch,
                what,
                level,
                at_us: at,
                window_end: end,
                defer: 0,
            })
            .unwrap();
    }

    fn updates(x: &Exchange, worker: usize) -> Vec<Update> {
        x.chans.get().unwrap().updates[worker]
            .1
            .try_iter()
            .collect()
    }

    /// Fills the events queue (nothing more is taken until a sync drains it).
    fn fill_events(x: &Exchange) -> &Chans {
        let ch = x.chans.get().unwrap();
        let filler = Event {
            fp: 0,
            key: 0,
            worker: 0,
            epoch: 0,
            what: What::Demand,
            level: 0,
            at_us: 0,
            window_end: 0,
            defer: 0,
        };
        while ch.events.try_send(filler).is_ok() {}
        ch
    }

    const WALL: i64 = 1_000_000;

    #[test]
    fn a_sync_moves_the_budget_to_the_core_that_uses_it_and_tells_only_the_cores_that_hold_it() {
        let kind = LimitKind::Rate {
            limit: 100,
            per: Duration::from_secs(3600),
            burst: 100,
        };
        let x = exchange_with(kind, 3, 100);
        let now = 1_000_000_000;
        for level in 1..=40 {
            event(&x, 0, 1, What::Use, level, now, 0);
        }
        // Worker 1 asks (its first share ran out elsewhere); worker 2 never used the key.
        event(&x, 1, 5, What::Demand, 0, now, 0);
        let mut book = Book::default();
        sync_once(&x, &mut book, now, WALL);
        let (u0, u1) = (updates(&x, 0), updates(&x, 1));
        assert_eq!((u0.len(), u1.len()), (1, 1));
        assert!(updates(&x, 2).is_empty(), "a worker without the key");
        // 60 left (the refill of one interval is far below one call), by demand 40 : 1.
        assert_eq!(u0[0].share + u1[0].share, 60);
        assert!(u0[0].share >= 58, "{:?}", u0[0]);
        assert_eq!((u0[0].seen, u0[0].epoch), (40, 1));
        assert_eq!((u1[0].seen, u1[0].epoch), (0, 5));
        // No demand: split evenly once, then nothing changes and nothing is sent.
        sync_once(&x, &mut book, now, WALL);
        assert_eq!(updates(&x, 1)[0].share, 30);
        assert_eq!(updates(&x, 0)[0].share, 30);
        sync_once(&x, &mut book, now, WALL);
        assert!(updates(&x, 0).is_empty() && updates(&x, 1).is_empty());
        // A level sent after lost events counts every call it carries.
        event(&x, 0, 1, What::Use, 45, now, 0);
        sync_once(&x, &mut book, now, WALL);
        assert_eq!(updates(&x, 0)[0].left, 55);
    }

    #[test]
    fn quota_left_is_the_limit_less_the_window_count_and_concurrency_releases() {
        let x = exchange_with(
            LimitKind::Quota {
                limit: 10,
                window: CalWindow::Day,
            },
            1,
            100,
        );
        let now = 1_000_000_000_000;
        let end = WALL + 100;
        for level in 1..=4 {
            event(&x, 0, 3, What::Use, level, now, end);
        }
        let mut book = Book::default();
        sync_once(&x, &mut book, now, WALL);
        let u = updates(&x, 0);
        assert_eq!((u[0].left, u[0].share, u[0].seen), (6, 6, 4));
        // The window ended: the exchange drops the key.
        sync_once(&x, &mut book, now, end);
        assert!(book.keys.is_empty());

        let x = exchange_with(LimitKind::Concurrency { limit: 2 }, 1, 100);
        event(&x, 0, 1, What::Use, 1, now, 0);
        event(&x, 0, 1, What::Use, 2, now, 0);
        let mut book = Book::default();
        sync_once(&x, &mut book, now, WALL);
        assert_eq!(updates(&x, 0)[0].left, 0);
        // One release event lost: the next level (0) frees both slots.
        event(&x, 0, 1, What::Use, 0, now, 0);
        sync_once(&x, &mut book, now, WALL);
        assert_eq!(updates(&x, 0)[0].left, 2);
        // Idle everywhere: forgotten.
        sync_once(&x, &mut book, now, WALL);
        assert!(book.keys.is_empty());
        assert!(updates(&x, 0)[0].forget);
    }

    fn rate_config(max_keys: usize, limit: u64) -> crate::config::Config {
        crate::config::load_str(&format!(
            "traffic:\n  max_keys: {max_keys}\n  rules:\n    - {{name: r, key: [principal], rate: {{limit: {limit}, per: 1h}}}}\n"
        ))
        .unwrap()
    }

    /// An exchange for `cfg`'s limits with no sync thread.
    fn installed(cfg: &crate::config::Config, workers: usize) -> Arc<Exchange> {
        let x = Exchange::new(workers);
        x.started.store(true, Ordering::Relaxed);
        x.install(&cfg.traffic);
        x
    }

    /// One worker on an installed exchange that has admitted ten calls of key 1 under the
    /// first rule (not yet synced), and an empty book.
    fn ten_calls_on_key_1(cfg: &crate::config::Config) -> (Arc<Exchange>, Rc<Local>, Book) {
        let rule = &cfg.traffic.rules[0];
        let x = installed(cfg, 1);
        let local = Local::new(x.clone(), 0);
        for _ in 0..10 {
            assert!(local.decide(&cfg.traffic, rule, 1));
        }
        (x, local, Book::default())
    }

    #[test]
    fn a_full_map_evicts_the_oldest_idle_key() {
        let cfg = rate_config(2, 10);
        let local = Local::new(Exchange::new(1), 0);
        let rule = &cfg.traffic.rules[0];
        for k in 0..5 {
            assert!(local.decide(&cfg.traffic, rule, k));
        }
        assert_eq!(local.map.borrow().len(), 2);
        assert!(local.map.borrow().contains_key(&(rule.limits[0].fp, 4)));
    }

    #[test]
    fn a_key_evicted_and_re_created_gets_no_second_first_share() {
        let cfg = rate_config(2, 10);
        let rule = &cfg.traffic.rules[0];
        let (x, local, mut book) = ten_calls_on_key_1(&cfg);
        assert!(
            !local.decide(&cfg.traffic, rule, 1),
            "the 11th of a burst of 10"
        );
        sync_once(&x, &mut book, now_us(), WALL);
        // Evicted by two other keys, then used again: the exchange knows it, so no fresh
        // burst; its share comes from the exchange, and the exchange says it is spent.
        for k in [2, 3] {
            assert!(local.decide(&cfg.traffic, rule, k));
        }
        assert!(!local.map.borrow().contains_key(&(rule.limits[0].fp, 1)));
        for i in 0..3 {
            assert!(!local.decide(&cfg.traffic, rule, 1), "{i}");
            sync_once(&x, &mut book, now_us(), WALL);
        }
        // A key the exchange never saw still starts with its first share.
        assert!(local.decide(&cfg.traffic, rule, 99));
    }

    #[test]
    fn the_eviction_clock_stays_bounded_through_evict_and_forget_cycles() {
        let cfg = rate_config(8, 1_000_000);
        let rule = &cfg.traffic.rules[0];
        let local = Local::new(Exchange::new(1), 0);
        let fp = rule.limits[0].fp;
        for round in 0..500u64 {
            for k in 0..20 {
                assert!(local.decide(&cfg.traffic, rule, round * 100 + k));
            }
            // The exchange forgets some (as it does for refilled rates).
            local
                .map
                .borrow_mut()
                .retain(|k, _| k.1 % 3 != 0 || k.0 != fp);
            let (clock, map) = (local.clock.borrow().len(), local.map.borrow().len());
            assert!(map <= 8);
            assert!(clock <= 2 * 8 + 64 + 1, "round {round}: clock {clock}");
        }
    }

    #[test]
    fn the_exchange_evicts_its_longest_idle_keys_past_max_keys() {
        let kind = LimitKind::Quota {
            limit: 1000,
            window: CalWindow::Month,
        };
        let x = exchange_with(kind, 1, 10);
        let ch = x.chans.get().unwrap();
        let mut book = Book::default();
        let now = 1_000_000_000;
        // 30 keys, one sync apart, all in a window that has not ended.
        for key in 0..30u64 {
            ch.events
                .try_send(Event {
                    fp: 7,
                    key,
                    worker: 0,
                    epoch: 1,
                    what: What::Use,
                    level: 1,
                    at_us: now,
                    window_end: WALL + 1_000_000,
                    defer: 0,
                })
                .unwrap();
            sync_once(&x, &mut book, now, WALL);
        }
        assert!(book.keys.len() <= 10, "{}", book.keys.len());
        // The most recent stay, and the evicted were told to the worker.
        assert!(book.keys.contains_key(&(7, 29)));
        assert!(!book.keys.contains_key(&(7, 0)));
        assert!(updates(&x, 0).iter().any(|u| u.forget && u.key == 0));
    }

    #[test]
    fn a_release_the_full_queue_dropped_reaches_the_exchange_later() {
        let cfg = crate::config::load_str(
            "traffic:\n  rules:\n    - {name: c, tools: [slow], concurrency: 1}\n",
        )
        .unwrap();
        let rule = &cfg.traffic.rules[0];
        let fp = rule.limits[0].fp;
        let x = installed(&cfg, 1);
        let local = Local::new(x.clone(), 0);
        let mut book = Book::default();
        let now = now_us();
        let mut map = local.map.borrow_mut();
        assert!(matches!(
            local.judge(&mut map, &cfg.traffic, &rule.limits[0], 1, now, 0),
            Judged::Admit
        ));
        local.admitted(&mut map, (fp, 1), 1, now);
        drop(map);
        sync_once(&x, &mut book, now, WALL);
        assert_eq!(book.keys[&(fp, 1)].sides[0].level, 1);
        // The queue is full when the call ends: its release is not taken.
        let ch = fill_events(&x);
        local.release(fp, 1);
        assert!(local.map.borrow()[&(fp, 1)].dirty);
        sync_once(&x, &mut book, now, WALL);
        assert_eq!(book.keys[&(fp, 1)].sides[0].level, 1, "not yet");
        // The next flush on this worker (the tick's, here) sends the level again.
        while ch.events_rx.try_recv().is_ok() {}
        local.send_counted();
        sync_once(&x, &mut book, now, WALL);
        assert!(book
            .keys
            .get(&(fp, 1))
            .is_none_or(|g| g.sides[0].level == 0));
    }

    #[test]
    fn levels_deferred_while_plentiful_never_take_two_workers_past_the_limit() {
        // 1000 a day (a quota: a rate's next-interval refill would blur the bound); a 10 s
        // sync interval: after each worker's first flush, only the deferral bound sends.
        let cfg = crate::config::load_str(
            "traffic:\n  sync_interval: 10s\n  rules:\n    - {name: q, key: [principal], quota: {limit: 1000, window: day}}\n",
        )
        .unwrap();
        let rule = &cfg.traffic.rules[0];
        let fp = rule.limits[0].fp;
        let x = installed(&cfg, 2);
        let (w0, w1) = (Local::new(x.clone(), 0), Local::new(x.clone(), 1));
        let mut book = Book::default();
        let (mut admitted, mut deferred) = (0, false);
        for round in 0..120 {
            // Worker 0 is hot, worker 1 calls now and then.
            for _ in 0..20 {
                admitted += u64::from(w0.decide(&cfg.traffic, rule, 1));
            }
            for _ in 0..3 {
                admitted += u64::from(w1.decide(&cfg.traffic, rule, 1));
            }
            deferred |= w0
                .map
                .borrow()
                .get(&(fp, 1))
                .is_some_and(|e| e.defer == DEFER);
            sync_once(&x, &mut book, now_us(), WALL);
            assert!(
                admitted <= 1000,
                "past the limit in round {round}: {admitted}"
            );
        }
        assert!(deferred, "the budget was plentiful at first");
        assert!(admitted >= 990, "the budget went unused: {admitted}");
        assert_eq!(
            w0.map.borrow()[&(fp, 1)].defer,
            0,
            "every call told near the limit"
        );
        w0.send_counted();
        w1.send_counted();
        sync_once(&x, &mut book, now_us(), WALL);
        let g = &book.keys[&(fp, 1)];
        assert_eq!(
            g.sides[0].level + g.sides[1].level,
            admitted,
            "every call counted"
        );
    }

    #[test]
    fn an_update_for_an_older_epoch_gives_no_deferral_or_reserve() {
        let cfg = crate::config::load_str(
            "traffic:\n  rules:\n    - {name: q, key: [principal], quota: {limit: 10000, window: day}}\n",
        )
        .unwrap();
        let rule = &cfg.traffic.rules[0];
        let fp = rule.limits[0].fp;
        let x = installed(&cfg, 1);
        let local = Local::new(x.clone(), 0);
        let mut book = Book::default();
        assert!(local.decide(&cfg.traffic, rule, 1));
        sync_once(&x, &mut book, now_us(), WALL);
        // Plenty left: the update lets the worker defer. Before it is applied the entry
        // starts a new epoch (as a rolled window or a re-created entry does).
        let mut map = local.map.borrow_mut();
        map.get_mut(&(fp, 1)).unwrap().epoch = local.epoch();
        local.apply(&mut map, 0);
        assert_eq!(map[&(fp, 1)].defer, 0, "the old epoch's deferral");
        drop(map);
        // The same update applied to its own epoch does defer.
        assert!(local.decide(&cfg.traffic, rule, 1));
        local.send_counted();
        sync_once(&x, &mut book, now_us(), WALL);
        let mut map = local.map.borrow_mut();
        local.apply(&mut map, 0);
        assert_eq!(map[&(fp, 1)].defer, DEFER);
    }

    #[test]
    fn a_key_the_exchange_forgets_keeps_the_calls_it_had_not_seen() {
        let cfg = rate_config(100, 100);
        let rule = &cfg.traffic.rules[0];
        let fp = rule.limits[0].fp;
        let x = installed(&cfg, 1);
        let local = Local::new(x.clone(), 0);
        let mut book = Book::default();
        let now = now_us();
        // The first call's level goes at once; the exchange sees the key used.
        assert!(local.decide(&cfg.traffic, rule, 1));
        sync_once(&x, &mut book, now, WALL);
        // A second call, its level not taken by a full queue; two hours later the exchange
        // has seen the key idle and refilled: it drops it and tells the worker to forget it.
        fill_events(&x);
        assert!(local.decide(&cfg.traffic, rule, 1));
        assert!(local.map.borrow()[&(fp, 1)].dirty);
        let later = now + 7_200_000_000;
        sync_once(&x, &mut book, later, WALL);
        sync_once(&x, &mut book, later, WALL);
        assert!(!book.keys.contains_key(&(fp, 1)), "forgotten");
        // The worker keeps the unseen call as a new epoch's level; its flush brings the key
        // back with that one call.
        let mut map = local.map.borrow_mut();
        local.apply(&mut map, 0);
        assert_eq!(map[&(fp, 1)].level, 1);
        drop(map);
        local.send_counted();
        sync_once(&x, &mut book, later, WALL);
        assert_eq!(book.keys[&(fp, 1)].sides[0].level, 1);
        // The call counts in the rate: one emission interval (36 s) ahead of when it was sent.
        assert!(book.keys[&(fp, 1)].tat > now_us() + 30_000_000);
    }

    #[test]
    fn a_rate_refusal_says_when_the_next_call_conforms() {
        // 10 an hour, burst 10: one every 360 s.
        let cfg = rate_config(100, 10);
        let rule = &cfg.traffic.rules[0];
        let (x, local, mut book) = ten_calls_on_key_1(&cfg);
        sync_once(&x, &mut book, now_us(), WALL);
        let mut map = local.map.borrow_mut();
        local.apply(&mut map, 0);
        let now = now_us();
        match local.judge(&mut map, &cfg.traffic, &rule.limits[0], 1, now, 0) {
            Judged::Over { retry_ms, wait } => {
                assert!(!wait);
                assert!(
                    (359_000..=360_000).contains(&retry_ms),
                    "one emission interval, not more: {retry_ms}"
                );
            }
            Judged::Admit => panic!("the 11th call of a burst of 10"),
        }
    }

    /// A config with `rule` and a `traffic.redis` nobody answers on (`on_failure: local`):
    /// the exchange goes on with its allotments, which the test sets as a Redis read would.
    fn fleet_config(rule: &str) -> crate::config::Config {
        crate::config::load_str(&format!(
            "traffic:\n  rules:\n    - {rule}\n  redis:\n    url: \"redis://127.0.0.1:1/0\"\n    \
             timeout: 10ms\n    on_failure: local\n"
        ))
        .unwrap()
    }

    fn judged(local: &Local, cfg: &crate::config::Config) -> Judged {
        let mut map = local.map.borrow_mut();
        local.apply(&mut map, 0);
        let l = &cfg.traffic.rules[0].limits[0];
        local.judge(&mut map, &cfg.traffic, l, 1, now_us(), 0)
    }

    fn waits(j: Judged) -> bool {
        match j {
            Judged::Over { wait, .. } => wait,
            Judged::Admit => panic!("admitted"),
        }
    }

    /// One worker on an installed exchange for `cfg`, and a book that counts two live
    /// instances (this one's allotment is half the fleet's budget).
    fn one_of_two_instances(cfg: &crate::config::Config) -> (Arc<Exchange>, Rc<Local>, Book) {
        let x = installed(cfg, 1);
        let local = Local::new(x.clone(), 0);
        let book = Book {
            live: 2,
            ..Book::default()
        };
        (x, local, book)
    }

    /// A sync now, as if it had read Redis (nobody answers the test's URL).
    fn sync_as_read(x: &Arc<Exchange>, book: &mut Book) {
        sync_once(x, book, now_us(), wall_ms() / 1000);
        x.redis_state.store(REDIS_NORMAL, Ordering::Relaxed);
    }

    #[test]
    fn with_redis_an_instance_admits_its_allotment_then_waits_while_the_fleet_has_more() {
        let cfg = fleet_config("{name: q, quota: {limit: 10, window: day}}");
        let rule = &cfg.traffic.rules[0];
        let fp = rule.limits[0].fp;
        // Two live instances: this one may admit ceil(10 / 2) until its next Redis read.
        let (x, local, mut book) = one_of_two_instances(&cfg);
        let sync = |book: &mut Book| sync_as_read(&x, book);
        assert!(waits(judged(&local, &cfg)), "no first share with Redis");
        sync(&mut book);
        for i in 0..5 {
            assert!(local.decide(&cfg.traffic, rule, 1), "call {i}");
        }
        // Its allotment is spent, the fleet's budget is not: wait for the next read.
        assert!(waits(judged(&local, &cfg)));
        sync(&mut book);
        assert_eq!(book.keys[&(fp, 1)].allot, 0);
        assert!(waits(judged(&local, &cfg)));
        // A read: the other instance used 2, so 3 are left, 2 of them here.
        let g = book.keys.get_mut(&(fp, 1)).unwrap();
        (g.others, g.allot) = (2, allotment(3, 2));
        sync(&mut book);
        for i in 0..2 {
            assert!(
                local.decide(&cfg.traffic, rule, 1),
                "call {i} of the new allotment"
            );
        }
        assert!(waits(judged(&local, &cfg)));
        // The fleet's budget is spent: refused at once, until the window ends.
        book.keys.get_mut(&(fp, 1)).unwrap().others = 3;
        sync(&mut book);
        match judged(&local, &cfg) {
            Judged::Over { wait, retry_ms } => {
                assert!(!wait);
                assert!(retry_ms > 1000, "until the window's end: {retry_ms}");
            }
            Judged::Admit => panic!("over the fleet's budget"),
        }
    }

    #[test]
    fn with_redis_down_under_local_a_spent_allotment_is_refused_at_once() {
        // Redis unreachable (`on_failure: local`), two instances as last read: 5 here, then
        // refused without waiting for a read that is not coming, to retry in a second.
        let cfg = fleet_config("{name: q, quota: {limit: 10, window: day}}");
        let rule = &cfg.traffic.rules[0];
        let (x, local, mut book) = one_of_two_instances(&cfg);
        let _ = judged(&local, &cfg);
        sync_once(&x, &mut book, now_us(), wall_ms() / 1000);
        assert_eq!(x.redis_state.load(Ordering::Relaxed), REDIS_LOCAL);
        for i in 0..5 {
            assert!(local.decide(&cfg.traffic, rule, 1), "call {i}");
        }
        sync_once(&x, &mut book, now_us(), wall_ms() / 1000);
        match judged(&local, &cfg) {
            Judged::Over { wait, retry_ms } => {
                assert!(!wait, "no read is coming");
                assert_eq!(retry_ms, 1000);
            }
            Judged::Admit => panic!("over the allotment"),
        }
    }

    #[test]
    fn with_redis_a_worker_out_of_share_waits_while_the_fleet_has_more() {
        // Two workers share an allotment of 5 (two live instances, a quota of 10): worker 0
        // spends its share while worker 1 holds the rest; the fleet has more: it waits.
        let cfg = fleet_config("{name: q, quota: {limit: 10, window: day}}");
        let rule = &cfg.traffic.rules[0];
        let x = installed(&cfg, 2);
        let (w0, w1) = (Local::new(x.clone(), 0), Local::new(x.clone(), 1));
        let mut book = Book {
            live: 2,
            ..Book::default()
        };
        let _ = judged(&w0, &cfg);
        let _ = judged(&w1, &cfg);
        sync_as_read(&x, &mut book);
        let mut admitted = 0;
        while w0.decide(&cfg.traffic, rule, 1) {
            admitted += 1;
        }
        assert!(
            admitted < 5,
            "worker 1 holds part of the allotment: {admitted}"
        );
        assert!(waits(judged(&w0, &cfg)), "the fleet has more");
    }

    #[test]
    fn a_wait_for_a_larger_share_lasts_at_most_a_second() {
        let cfg = crate::config::load_str(
            "traffic:\n  rules:\n    - {name: q, quota: {limit: 10, window: day}}\n  redis:\n    \
             url: \"redis://127.0.0.1:1/0\"\n    sync_interval: 10s\n",
        )
        .unwrap();
        assert_eq!(wait_bound(&cfg.traffic), Duration::from_secs(1));
        let cfg = fleet_config("{name: q, quota: {limit: 10, window: day}}");
        assert_eq!(wait_bound(&cfg.traffic), Duration::from_millis(300));
    }

    #[test]
    fn with_redis_an_instance_that_never_read_redis_gives_no_budget() {
        // Redis never answered: how many instances share the budget is unknown, so no
        // allotment, and none refills (a rate's) however long it waits.
        for rule in [
            "{name: q, quota: {limit: 10, window: day}}",
            "{name: r, rate: {limit: 10, per: 1s}}",
        ] {
            let cfg = fleet_config(rule);
            let fp = cfg.traffic.rules[0].limits[0].fp;
            let x = installed(&cfg, 1);
            let local = Local::new(x.clone(), 0);
            let mut book = Book::default();
            let t0 = now_us();
            assert!(matches!(judged(&local, &cfg), Judged::Over { .. }));
            sync_once(&x, &mut book, t0, wall_ms() / 1000);
            assert_eq!(book.keys[&(fp, 1)].allot, 0, "{rule}");
            // Ten seconds on, still in use.
            let g = book.keys.get_mut(&(fp, 1)).unwrap();
            g.active = true;
            sync_once(&x, &mut book, t0 + 10_000_000, wall_ms() / 1000);
            assert_eq!(book.live, 0, "{rule}");
            assert_eq!(book.keys[&(fp, 1)].allot, 0, "{rule}");
            assert!(
                matches!(judged(&local, &cfg), Judged::Over { .. }),
                "{rule}"
            );
        }
    }

    #[test]
    fn instance_counts_rise_at_once_and_fall_only_after_liveness() {
        let mut s = fleet::Sticky::default();
        let hold = 2_000_000;
        assert_eq!(s.read(3, 1_000, hold), 3);
        // A lower reading (an outage pruned the set, a skewed clock) holds for `hold`.
        assert_eq!(s.read(1, 2_000, hold), 3);
        assert_eq!(s.read(2, 1_000_000, hold), 3);
        assert_eq!(s.read(1, 2_001_999, hold), 3);
        // Then the highest of the lower readings counts.
        assert_eq!(s.read(1, 2_002_000, hold), 2);
        // A higher reading counts at once and ends a fall under way.
        assert_eq!(s.read(1, 2_003_000, hold), 2);
        assert_eq!(s.read(4, 2_004_000, hold), 4);
        assert_eq!(s.read(4, 9_000_000, hold), 4);
    }

    #[test]
    fn with_redis_a_rate_allotment_refills_at_the_instance_part_of_the_rate() {
        // 10 an hour (one per 360 s), burst 10; two live instances: 5 each, and one more
        // per 720 s here.
        let cfg = fleet_config("{name: r, key: [principal], rate: {limit: 10, per: 1h}}");
        let rule = &cfg.traffic.rules[0];
        let fp = rule.limits[0].fp;
        let (x, local, mut book) = one_of_two_instances(&cfg);
        let t0 = now_us();
        assert!(waits(judged(&local, &cfg)));
        sync_once(&x, &mut book, t0, WALL);
        for i in 0..5 {
            assert!(local.decide(&cfg.traffic, rule, 1), "call {i}");
        }
        local.send_counted();
        sync_once(&x, &mut book, t0, WALL);
        // As if that sync had read Redis (nobody answers the test's URL).
        x.redis_state.store(REDIS_NORMAL, Ordering::Relaxed);
        assert!(waits(judged(&local, &cfg)), "the fleet has 5 more");
        sync_once(&x, &mut book, t0 + 719_000_000, WALL);
        assert_eq!(book.keys[&(fp, 1)].allot, 0, "not yet");
        sync_once(&x, &mut book, t0 + 720_000_000, WALL);
        assert_eq!(book.keys[&(fp, 1)].allot, 1);
        assert!(local.decide(&cfg.traffic, rule, 1));
        local.send_counted();
        // Idle for days: the allotment refills up to this instance's part of the burst.
        sync_once(&x, &mut book, t0 + 400_000_000_000, WALL);
        assert_eq!(book.keys[&(fp, 1)].allot, 5);
    }
}
