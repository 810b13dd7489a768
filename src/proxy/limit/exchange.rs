//! The exchange as both sides hold it: the one `Exchange` per process (the limits it knows,
//! its queues, the `traffic.redis` state workers read, `install` and `leave`), what travels
//! between workers and its thread (`Event` up, `Update` down), the filter of keys it knows
//! (`Known`) and the hasher that names keys alike on every worker (`KeyHasher`).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::policy::traffic::{LimitKind, RedisBackend, Traffic};

use super::sync::sync_loop;

/// `Exchange::redis_state`: how workers treat rate limits and quotas while Redis is down.
pub(super) const REDIS_NORMAL: u8 = 0;
pub(super) const REDIS_OPEN: u8 = 1;
pub(super) const REDIS_CLOSED: u8 = 2;
/// Down under `on_failure: local`: the allotments as last read hold, and no read is coming,
/// so a call over its share is refused at once instead of waiting for one.
pub(super) const REDIS_LOCAL: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum What {
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
pub(super) struct Event {
    pub(super) fp: u64,
    pub(super) key: u64,
    pub(super) worker: u16,
    pub(super) epoch: u32,
    pub(super) what: What,
    pub(super) level: u64,
    pub(super) at_us: u64,
    /// Quotas: the end of the window the entry counts in (Unix seconds).
    pub(super) window_end: i64,
    /// The calls the worker may count before its next event (`Entry::defer`).
    pub(super) defer: u64,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Update {
    pub(super) fp: u64,
    pub(super) key: u64,
    /// The worker's entry epoch and level the exchange had seen when it computed `share`.
    pub(super) epoch: u32,
    pub(super) seen: u64,
    /// Calls the worker may have counted past `seen` without telling yet (at most its
    /// deferral), kept out of what is split: the worker's cap is `seen + reserved + share`.
    pub(super) reserved: u64,
    pub(super) share: u64,
    /// How many calls the worker may count before it tells the exchange (0: every one).
    pub(super) defer: u64,
    /// What was left globally when the share was computed (with `traffic.redis`: what is
    /// left of this instance's allotment, when that is less).
    pub(super) left: u64,
    /// `traffic.redis`: the fleet has more left than this instance's allotment (a worker
    /// out of share waits for the next Redis sync instead of refusing).
    pub(super) more: bool,
    pub(super) window_end: i64,
    /// A rate: when the next call conforms globally (`now_us` clock); 0 otherwise.
    pub(super) next_us: u64,
    /// The key is idle everywhere (or evicted by the exchange): a worker drops its entry.
    pub(super) forget: bool,
}

/// A limit the exchange knows (by fingerprint): what it needs to keep the global truth.
#[derive(Clone, Debug)]
pub(super) struct Def {
    pub(super) kind: LimitKind,
    /// The rule's name: the label of the quota metrics.
    pub(super) rule: Arc<str>,
}

/// The queues and the filter of known keys, made by the first config with rules and sized from
/// its `traffic.max_keys` and `max_global_keys` (a reload keeps them: larger ones take a
/// restart to size).
pub(super) struct Chans {
    pub(super) events: Sender<Event>,
    pub(super) events_rx: Receiver<Event>,
    pub(super) updates: Vec<(Sender<Update>, Receiver<Update>)>,
    pub(super) known: Known,
}

/// The keys the exchange keeps state for, as a Bloom filter the workers read without a lock:
/// a worker creating an entry for a key in it starts with no share and waits for the
/// exchange's (an evicted and re-created entry must not get a first share again). A false
/// positive costs that wait (at most 3 sync intervals); a key missing from it (a read racing a
/// rebuild) costs a first share, as before the filter. Two buffers: the exchange rebuilds the
/// idle one from its keys and switches, so removed keys leave the filter.
pub(super) struct Known {
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

    pub(super) fn contains(&self, fp: u64, key: u64) -> bool {
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

    pub(super) fn insert(&self, fp: u64, key: u64) {
        self.set(self.current.load(Ordering::Relaxed) & 1, fp, key);
    }

    /// Refills the idle buffer with `keys` and makes it current.
    pub(super) fn rebuild<'a>(&self, keys: impl Iterator<Item = &'a (u64, u64)>) {
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
    pub(super) workers: usize,
    /// Hashes key parts; one random key for all workers, so a key hashes alike everywhere.
    pub(super) hasher: KeyHasher,
    pub(super) chans: OnceLock<Chans>,
    /// Every limit a config (built in this process) defined, by fingerprint. Only grows: an
    /// aborted reload's limits are harmless, and a running one's are never missing.
    pub(super) defs: Mutex<Arc<HashMap<u64, Def>>>,
    pub(super) sync_us: AtomicU64,
    /// Keys the exchange keeps at most (`traffic.max_global_keys`).
    pub(super) max_keys: AtomicUsize,
    pub(super) started: AtomicBool,
    /// The sync thread, woken early when a worker's share ran out.
    pub(super) thread: std::sync::OnceLock<std::thread::Thread>,
    /// Events the queue could not take, and updates a worker's queue could not take.
    pub(super) dropped: metrics::Counter,
    pub(super) evictions: metrics::Counter,
    /// `traffic.redis` of the latest config (the sync thread follows it).
    pub(super) redis: Mutex<Option<RedisBackend>>,
    /// `REDIS_*`: set by the sync thread, read by workers (one relaxed load per limit).
    pub(super) redis_state: AtomicU8,
    /// `traffic.redis` is set: a worker's new entry of a rate or quota gets no first share
    /// (the exchange's first share comes with the other instances' usage read from Redis).
    pub(super) redis_on: AtomicBool,
    /// Shutting down: the sync thread sends what is pending, leaves the fleet's instances and
    /// sets `left`.
    pub(super) leaving: AtomicBool,
    pub(super) left: AtomicBool,
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
    pub(super) fn chans(&self, max_keys: usize, global_keys: usize) -> &Chans {
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
