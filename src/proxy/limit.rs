//! Phase: limit (`traffic.rules`). Each worker decides from its own share of every limit (no
//! lock on the request path); the exchange thread collects what the workers admitted, keeps
//! the global truth (GCRA state, quota counts, calls in flight) and hands each worker a new
//! share every `traffic.sync_interval`, in proportion to where the demand is. A config without
//! rules costs one branch (`check`). The arithmetic is `policy::traffic`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use smallvec::SmallVec;

use crate::error::Kind;
use crate::jsonrpc::MessageKind;
use crate::mcp::Method;
use crate::policy::rules::Item;
use crate::policy::traffic::{
    initial_share, part, split, window_bounds, CalWindow, Gcra, LimitKind, LimitRule, Traffic,
};

use super::context::Ctx;
use super::reject::Refusal;
use super::state::WorkerState;

/// Events the workers' queue holds at most between two syncs (one per admitted call, release,
/// and at most one demand per key and interval): past it events are dropped and counted.
const EVENTS: usize = 1 << 16;
/// Updates a worker's queue holds at most (one per active key and sync).
const UPDATES: usize = 1 << 16;

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum What {
    Admit,
    Release,
    /// A call was refused on this worker: it wants a larger share.
    Demand,
}

#[derive(Clone, Copy, Debug)]
struct Event {
    fp: u64,
    key: u64,
    worker: u16,
    epoch: u32,
    what: What,
    at_us: u64,
    /// Quotas: the end of the window the call was counted in (Unix seconds).
    window_end: i64,
}

#[derive(Clone, Copy, Debug)]
struct Update {
    fp: u64,
    key: u64,
    /// The worker's entry epoch and level the exchange had seen when it computed `share`.
    epoch: u32,
    seen: u64,
    share: u64,
    /// What was left globally when the share was computed.
    left: u64,
    window_end: i64,
    /// The key is idle everywhere: a worker drops its entry (and starts afresh next time).
    forget: bool,
    concurrency: bool,
}

/// A limit the exchange knows (by fingerprint): what it needs to keep the global truth.
#[derive(Clone, Copy, Debug)]
struct Def {
    kind: LimitKind,
}

/// The cross-core exchange: one per process, shared by every config generation (a reload keeps
/// it, and with it the state of every limit whose fingerprint did not change).
pub struct Exchange {
    workers: usize,
    /// Hashes key parts; one random key for all workers, so a key hashes alike everywhere.
    hasher: std::hash::RandomState,
    events: Sender<Event>,
    events_rx: Receiver<Event>,
    updates: Vec<(Sender<Update>, Receiver<Update>)>,
    /// Every limit a config (built in this process) defined, by fingerprint. Only grows: an
    /// aborted reload's limits are harmless, and a running one's are never missing.
    defs: Mutex<Arc<HashMap<u64, Def>>>,
    sync_us: AtomicU64,
    started: AtomicBool,
    /// The sync thread, woken early when a worker's share ran out.
    thread: std::sync::OnceLock<std::thread::Thread>,
    /// Events the queue could not take, and updates a worker's queue could not take.
    dropped: metrics::Counter,
}

impl Exchange {
    pub fn new(workers: usize) -> Arc<Exchange> {
        let (events, events_rx) = crossbeam_channel::bounded(EVENTS);
        Arc::new(Exchange {
            workers: workers.max(1),
            hasher: std::hash::RandomState::new(),
            events,
            events_rx,
            updates: (0..workers.max(1))
                .map(|_| crossbeam_channel::bounded(UPDATES))
                .collect(),
            defs: Mutex::new(Arc::default()),
            sync_us: AtomicU64::new(20_000),
            started: AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
            dropped: metrics::counter!(crate::observe::names::TRAFFIC_EXCHANGE_DROPPED_TOTAL),
        })
    }

    /// Makes `traffic`'s limits known and starts the sync thread the first time a config has
    /// rules (called when a gateway is built, at start and on reload).
    pub fn install(self: &Arc<Self>, traffic: &Traffic) {
        if traffic.rules.is_empty() {
            return;
        }
        self.sync_us
            .store(traffic.sync_interval.as_micros() as u64, Ordering::Relaxed);
        if let Ok(mut defs) = self.defs.lock() {
            let mut next = HashMap::clone(&defs);
            for r in &traffic.rules {
                for l in &r.limits {
                    next.insert(l.fp, Def { kind: l.kind });
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

/// The global state of one key of one limit, on the exchange thread.
struct Global {
    /// Per worker: the epoch of its entry, the level seen (calls counted in the epoch, or in
    /// flight), and the demand (calls and refusals) since the last sync.
    workers: Vec<(u32, i64, u64)>,
    tat: u64,
    window_end: i64,
    count: u64,
    active: bool,
}

fn sync_loop(weak: Weak<Exchange>) {
    let mut keys: HashMap<(u64, u64), Global> = HashMap::new();
    let mut shares: Vec<u64> = Vec::new();
    let mut demand: Vec<u64> = Vec::new();
    loop {
        let interval = match weak.upgrade() {
            Some(x) => Duration::from_micros(x.sync_us.load(Ordering::Relaxed)),
            None => return,
        };
        // Woken early by a worker whose share ran out (`What::Demand`).
        std::thread::park_timeout(interval);
        let Some(x) = weak.upgrade() else { return };
        sync_once(&x, &mut keys, &mut shares, &mut demand, now_us());
    }
}

/// One sync: fold the queued events into the global state, then send every worker its share
/// of each key that changed (or, for a rate, still refills), and drop idle keys.
fn sync_once(
    x: &Exchange,
    keys: &mut HashMap<(u64, u64), Global>,
    shares: &mut Vec<u64>,
    demand: &mut Vec<u64>,
    now: u64,
) {
    let defs = match x.defs.lock() {
        Ok(d) => d.clone(),
        Err(_) => return,
    };
    let n = x.workers;
    for ev in x.events_rx.try_iter() {
        let Some(def) = defs.get(&ev.fp) else {
            continue;
        };
        let g = keys.entry((ev.fp, ev.key)).or_insert_with(|| Global {
            workers: vec![(0, 0, 0); n],
            tat: 0,
            window_end: ev.window_end,
            count: 0,
            active: false,
        });
        let Some(ws) = g.workers.get_mut(usize::from(ev.worker)) else {
            continue;
        };
        if ws.0 != ev.epoch {
            *ws = (ev.epoch, 0, ws.2);
        }
        g.active = true;
        match ev.what {
            What::Demand => ws.2 += 1,
            What::Release => ws.1 -= 1,
            What::Admit => {
                ws.1 += 1;
                ws.2 += 1;
                match def.kind {
                    LimitKind::Rate { limit, per, burst } => {
                        g.tat = Gcra::new(limit, per, burst).admit(g.tat, ev.at_us);
                    }
                    LimitKind::Quota { .. } => {
                        if ev.window_end > g.window_end {
                            g.window_end = ev.window_end;
                            g.count = 0;
                        }
                        if ev.window_end == g.window_end {
                            g.count += 1;
                        }
                    }
                    LimitKind::Concurrency { .. } => {}
                }
            }
        }
    }
    let interval = x.sync_us.load(Ordering::Relaxed);
    shares.resize(n, 0);
    demand.resize(n, 0);
    keys.retain(|&(fp, key), g| {
        let Some(def) = defs.get(&fp) else {
            return false;
        };
        let (left, keep, forget) = match def.kind {
            LimitKind::Rate { limit, per, burst } => {
                let gcra = Gcra::new(limit, per, burst);
                let refilling = g.tat > now;
                (
                    gcra.available(g.tat, now + interval),
                    g.active || refilling,
                    !g.active && !refilling,
                )
            }
            LimitKind::Quota { limit, .. } => {
                let ended = now / 1_000_000 >= g.window_end.max(0) as u64;
                (limit.saturating_sub(g.count), !ended || g.active, false)
            }
            LimitKind::Concurrency { limit } => {
                let inflight: i64 = g.workers.iter().map(|w| w.1.max(0)).sum();
                let idle = inflight == 0 && !g.active;
                (limit.saturating_sub(inflight as u64), !idle, idle)
            }
        };
        if g.active || forget || matches!(def.kind, LimitKind::Rate { .. }) && keep {
            for (d, w) in demand.iter_mut().zip(&g.workers) {
                *d = w.2;
            }
            split(left, demand, shares);
            for (w, (tx, _)) in x.updates.iter().enumerate() {
                let (epoch, level, _) = g.workers[w];
                let u = Update {
                    fp,
                    key,
                    epoch,
                    seen: level.max(0) as u64,
                    share: shares[w],
                    left,
                    window_end: g.window_end,
                    forget,
                    concurrency: matches!(def.kind, LimitKind::Concurrency { .. }),
                };
                if let Err(TrySendError::Full(_)) = tx.try_send(u) {
                    x.dropped.increment(1);
                }
            }
        }
        for w in &mut g.workers {
            w.2 = 0;
        }
        g.active = false;
        keep && !forget
    });
}

/// This worker's view of one key of one limit.
struct Entry {
    /// Changes when the entry is created and when a quota window rolls: the exchange counts
    /// levels per epoch, so an evicted and re-created entry never inherits an old level.
    epoch: u32,
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
    /// When this worker last told the exchange it wants more (µs).
    demand_at: u64,
    /// Used since the eviction clock last passed.
    touched: bool,
    /// A concurrency limit's entry: never evicted or forgotten with calls in flight.
    concurrency: bool,
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
    clock: RefCell<VecDeque<(u64, u64)>>,
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

    fn send(&self, fp: u64, key: u64, epoch: u32, what: What, at_us: u64, window_end: i64) {
        let ev = Event {
            fp,
            key,
            worker: self.worker,
            epoch,
            what,
            at_us,
            window_end,
        };
        if self.exchange.events.try_send(ev).is_err() {
            self.exchange.dropped.increment(1);
        }
        if what == What::Demand {
            if let Some(t) = self.exchange.thread.get() {
                t.unpark();
            }
        }
    }

    /// Applies the updates the exchange sent since the last decision.
    fn apply(&self, map: &mut Map, max_keys: usize) {
        let Some((_, rx)) = self.exchange.updates.get(usize::from(self.worker)) else {
            return;
        };
        for u in rx.try_iter() {
            match map.get_mut(&(u.fp, u.key)) {
                Some(e) if u.forget => {
                    if e.level == 0 || !e.concurrency {
                        map.remove(&(u.fp, u.key));
                    }
                }
                Some(e) => {
                    if e.window_end != u.window_end {
                        continue;
                    }
                    let seen = if u.epoch == e.epoch { u.seen } else { 0 };
                    e.cap = seen + u.share;
                    e.left = Some(u.left);
                    e.base = e.level;
                    e.share = u.share;
                }
                None if u.forget => {}
                None => {
                    let e = Entry {
                        epoch: self.epoch(),
                        level: 0,
                        cap: u.share,
                        window_end: u.window_end,
                        left: Some(u.left),
                        base: 0,
                        share: u.share,
                        demand_at: 0,
                        touched: false,
                        concurrency: u.concurrency,
                    };
                    self.insert(map, (u.fp, u.key), e, max_keys);
                }
            }
        }
    }

    /// Inserts, evicting the oldest idle entry when the map is full (second chance: a touched
    /// one goes round again; one with calls in flight is never evicted).
    fn insert(&self, map: &mut Map, k: (u64, u64), e: Entry, max_keys: usize) {
        self.evict(map, max_keys);
        self.clock.borrow_mut().push_back(k);
        map.insert(k, e);
    }

    /// Evicts until the map has room for one more.
    fn evict(&self, map: &mut Map, max_keys: usize) {
        let mut clock = self.clock.borrow_mut();
        let mut turns = clock.len() * 2 + 1;
        while map.len() >= max_keys && turns > 0 {
            turns -= 1;
            let Some(old) = clock.pop_front() else { break };
            match map.get_mut(&old) {
                None => {}
                Some(o) if o.touched || o.concurrency && o.level > 0 => {
                    o.touched = false;
                    clock.push_back(old);
                }
                Some(_) => {
                    map.remove(&old);
                    self.evictions.increment(1);
                }
            }
        }
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
        let now_s = (now / 1_000_000) as i64;
        let sync_ms = (t.sync_interval.as_millis() as u64).max(1);
        let window_end = match l.kind {
            LimitKind::Quota { window, .. } => self.window(l.fp, window, &t.tz, now_s),
            _ => 0,
        };
        let k = (l.fp, key);
        // A full map makes room first (the lookup then happens once more, on this rare path).
        if map.len() >= t.max_keys && !map.contains_key(&k) {
            self.evict(map, t.max_keys);
        }
        let e = map.entry(k).or_insert_with(|| {
            self.clock.borrow_mut().push_back(k);
            Entry {
                epoch: self.epoch(),
                level: 0,
                cap: initial_share(l.kind.budget(), workers),
                window_end,
                left: None,
                base: 0,
                share: 0,
                demand_at: 0,
                touched: true,
                concurrency: matches!(l.kind, LimitKind::Concurrency { .. }),
            }
        });
        e.touched = true;
        if window_end != 0 && e.window_end != window_end {
            // A new calendar window: this worker starts it with its first share.
            e.epoch = self.epoch();
            e.level = 0;
            e.cap = initial_share(l.kind.budget(), workers);
            e.window_end = window_end;
            e.left = None;
        }
        if e.level + already < e.cap {
            return Judged::Admit { window_end };
        }
        if now.saturating_sub(e.demand_at) >= sync_ms * 1000 {
            e.demand_at = now;
            self.send(l.fp, key, e.epoch, What::Demand, now, window_end);
        }
        // Room: what was left globally at the last update is more than this worker has used
        // since (others may not have used their shares: the next sync moves them here).
        let room = workers > 1 && e.left.is_none_or(|l| l > e.level.saturating_sub(e.base));
        let retry_ms = match l.kind {
            _ if room => sync_ms,
            // Globally out: the next call conforms within one emission interval.
            LimitKind::Rate { limit, per, burst } => {
                Gcra::new(limit, per, burst).t / 1000 + sync_ms
            }
            LimitKind::Quota { .. } => ((window_end - now_s).max(0) as u64) * 1000 + sync_ms,
            LimitKind::Concurrency { .. } => sync_ms.max(1000),
        };
        Judged::Over {
            retry_ms,
            // Only while this worker has had no share from the exchange (before its word on
            // this entry, or given nothing because it had no demand) and others may have room:
            // a worker whose share ran out under load is refused at once, nothing queues.
            wait: room && (e.left.is_none() || e.share == 0),
        }
    }

    /// `rule`'s decision for `key` with nothing else around it (`bench/limit.rs`): updates
    /// applied, every limit judged, the call counted when all admit. Concurrency calls are
    /// released at once.
    pub fn decide(&self, t: &Traffic, rule: &LimitRule, key: u64) -> bool {
        let now = now_us();
        let mut map = self.map.borrow_mut();
        self.apply(&mut map, t.max_keys);
        let mut admitted: SmallVec<[(u64, i64, bool); 4]> = SmallVec::new();
        for l in &rule.limits {
            match self.judge(&mut map, t, l, key, now, 0) {
                Judged::Admit { window_end } => admitted.push((
                    l.fp,
                    window_end,
                    matches!(l.kind, LimitKind::Concurrency { .. }),
                )),
                Judged::Over { .. } => return false,
            }
        }
        for (fp, window_end, concurrency) in admitted {
            if let Some(e) = map.get_mut(&(fp, key)) {
                if !concurrency {
                    e.level += 1;
                }
                let epoch = e.epoch;
                self.send(fp, key, epoch, What::Admit, now, window_end);
                if concurrency {
                    self.send(fp, key, epoch, What::Release, now, 0);
                }
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
        if let Some(e) = map.get_mut(&(fp, key)) {
            e.level = e.level.saturating_sub(1);
            let epoch = e.epoch;
            drop(map);
            self.send(fp, key, epoch, What::Release, now_us(), 0);
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
}

impl Drop for Held {
    fn drop(&mut self) {
        self.local.release(self.fp, self.key);
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
    Admit {
        window_end: i64,
    },
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
    kind: LimitKind,
    fp: u64,
    retry_ms: u64,
    tool: Option<&'a str>,
    method: Method,
}

impl Over<'_> {
    /// The refusal's kind (`data.kind`, the metric label): the limit's, or `loop`.
    fn label(&self) -> &'static str {
        match self.rule.loop_guard {
            Some(_) => "loop",
            None => self.kind.label(),
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

/// How long a request waits in all for a larger share before it is refused.
fn max_wait(ctx: &Ctx) -> Duration {
    ctx.gw().config.traffic.sync_interval * 3
}

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
/// budget may have room answers `Stop::Wait` (else it refuses).
#[inline]
pub fn check(w: &WorkerState, ctx: &mut Ctx, may_wait: bool, routes: &[Route]) -> Result<(), Stop> {
    if ctx.gw().config.traffic.rules.is_empty() {
        return Ok(());
    }
    check_rules(w, ctx, may_wait, routes)
}

/// `check`, waiting for a larger share when that may help (`wait`): the whole phase. The wait
/// is boxed: it is rare, and every request's future would otherwise carry its state.
pub async fn phase(w: &WorkerState, ctx: &mut Ctx, routes: &[Route]) -> Result<(), Refusal> {
    match check(w, ctx, true, routes) {
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
) -> Result<(), Stop> {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let traffic = &*gw.config.traffic;
    let Some(server) = ctx.server else {
        return Ok(());
    };
    let local = &w.traffic;
    let x = &*local.exchange;
    let now = now_us();
    let mut map = local.map.borrow_mut();
    local.apply(&mut map, traffic.max_keys);
    let principal = ctx.principal.clone();
    let p = principal.as_deref();
    let s = &gw.config.servers[server];
    let federated = s.federated();
    // (fingerprint, key, kind, window end) of each admission, committed when all passed.
    let mut pending: SmallVec<[(u64, u64, LimitKind, i64); 4]> = SmallVec::new();
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
            for l in &r.limits {
                let already = pending.iter().filter(|q| q.0 == l.fp && q.1 == key).count() as u64;
                let retry_ms = match local.judge(&mut map, traffic, l, key, now, already) {
                    Judged::Admit { window_end } => {
                        pending.push((l.fp, key, l.kind, window_end));
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
                    kind: l.kind,
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
    for (fp, key, kind, window_end) in pending {
        let Some(e) = map.get_mut(&(fp, key)) else {
            continue;
        };
        e.level += 1;
        let epoch = e.epoch;
        local.send(fp, key, epoch, What::Admit, now, window_end);
        if matches!(kind, LimitKind::Concurrency { .. }) {
            ctx.held.push(Held {
                local: local.clone(),
                fp,
                key,
            });
        }
    }
    Ok(())
}

/// Waits (1 ms at a time, at most `max_wait`) for the exchange to bring this worker a larger
/// share, then decides for good. Only a request over its worker's share gets here.
pub async fn wait(w: &WorkerState, ctx: &mut Ctx, routes: &[Route]) -> Result<(), Refusal> {
    let until = std::time::Instant::now() + max_wait(ctx);
    loop {
        monoio::time::sleep(Duration::from_millis(1)).await;
        let last = std::time::Instant::now() >= until;
        match check(w, ctx, !last, routes) {
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
        LimitKind::Rate { .. } => "Rate limit",
        LimitKind::Concurrency { .. } => "Concurrency limit",
        LimitKind::Quota { .. } => "Quota",
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
                 stop (traffic rule {}: the same call is refused for {secs} s).",
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

    fn exchange_with(kind: LimitKind, workers: usize) -> Arc<Exchange> {
        let x = Exchange::new(workers);
        if let Ok(mut d) = x.defs.lock() {
            let mut m = HashMap::new();
            m.insert(7, Def { kind });
            *d = Arc::new(m);
        }
        x.sync_us.store(20_000, Ordering::Relaxed);
        x
    }

    fn admit(x: &Exchange, worker: u16, epoch: u32, at: u64) {
        x.events
            .try_send(Event {
                fp: 7,
                key: 1,
                worker,
                epoch,
                what: What::Admit,
                at_us: at,
                window_end: 0,
            })
            .unwrap();
    }

    fn updates(x: &Exchange, worker: usize) -> Vec<Update> {
        x.updates[worker].1.try_iter().collect()
    }

    #[test]
    fn a_sync_moves_the_budget_to_the_core_that_uses_it() {
        let kind = LimitKind::Rate {
            limit: 100,
            per: Duration::from_secs(3600),
            burst: 100,
        };
        let x = exchange_with(kind, 2);
        let now = 1_000_000_000;
        for _ in 0..40 {
            admit(&x, 0, 1, now);
        }
        let (mut keys, mut s, mut d) = (HashMap::new(), Vec::new(), Vec::new());
        sync_once(&x, &mut keys, &mut s, &mut d, now);
        let (u0, u1) = (updates(&x, 0), updates(&x, 1));
        assert_eq!((u0.len(), u1.len()), (1, 1));
        // 60 left (the refill of one interval is far below one call): nearly all to worker 0.
        assert_eq!(u0[0].share + u1[0].share, 60);
        assert!(u0[0].share >= 58, "{:?}", u0[0]);
        assert_eq!((u0[0].seen, u0[0].epoch), (40, 1));
        assert_eq!(u1[0].seen, 0);
    }

    #[test]
    fn quota_left_is_the_limit_less_the_window_count_and_concurrency_releases() {
        let x = exchange_with(
            LimitKind::Quota {
                limit: 10,
                window: CalWindow::Day,
            },
            1,
        );
        let now = 1_000_000_000_000;
        let end = (now / 1_000_000) as i64 + 100;
        for _ in 0..4 {
            x.events
                .try_send(Event {
                    fp: 7,
                    key: 1,
                    worker: 0,
                    epoch: 3,
                    what: What::Admit,
                    at_us: now,
                    window_end: end,
                })
                .unwrap();
        }
        let (mut keys, mut s, mut d) = (HashMap::new(), Vec::new(), Vec::new());
        sync_once(&x, &mut keys, &mut s, &mut d, now);
        let u = updates(&x, 0);
        assert_eq!((u[0].left, u[0].share, u[0].seen), (6, 6, 4));

        let x = exchange_with(LimitKind::Concurrency { limit: 2 }, 1);
        admit(&x, 0, 1, now);
        admit(&x, 0, 1, now);
        let (mut keys, mut s, mut d) = (HashMap::new(), Vec::new(), Vec::new());
        sync_once(&x, &mut keys, &mut s, &mut d, now);
        assert_eq!(updates(&x, 0)[0].left, 0);
        for _ in 0..2 {
            x.events
                .try_send(Event {
                    fp: 7,
                    key: 1,
                    worker: 0,
                    epoch: 1,
                    what: What::Release,
                    at_us: now,
                    window_end: 0,
                })
                .unwrap();
        }
        sync_once(&x, &mut keys, &mut s, &mut d, now);
        assert_eq!(updates(&x, 0)[0].left, 2);
        // Idle everywhere: forgotten.
        sync_once(&x, &mut keys, &mut s, &mut d, now);
        assert!(keys.is_empty());
    }

    #[test]
    fn a_full_map_evicts_the_oldest_idle_key() {
        let cfg = crate::config::load_str(
            "traffic:\n  max_keys: 2\n  rules:\n    - {name: r, key: [principal], rate: {limit: 10, per: 1s}}\n",
        )
        .unwrap();
        let local = Local::new(Exchange::new(1), 0);
        let rule = &cfg.traffic.rules[0];
        for k in 0..5 {
            assert!(local.decide(&cfg.traffic, rule, k));
        }
        assert_eq!(local.map.borrow().len(), 2);
        // The most recent keys stay; an evicted one starts again from its first share.
        assert!(local.map.borrow().contains_key(&(rule.limits[0].fp, 4)));
        for _ in 0..9 {
            assert!(local.decide(&cfg.traffic, rule, 4));
        }
        assert!(
            !local.decide(&cfg.traffic, rule, 4),
            "the 11th call of a 10/s burst"
        );
    }
}
