//! `traffic.redis`: the exchange thread's link to the other instances. Every
//! `redis.sync_interval` it adds this instance's new usage of each recently active key to one
//! counter per key and window in Redis (INCRBY, with EXPIREAT at the window's end, pipelined)
//! and reads the totals back. Workers never talk to Redis; a slow or absent Redis costs the
//! exchange thread at most `redis.timeout` per sync.
//!
//! Each sync also announces this instance in the sorted set `<prefix>instances` (member: an id
//! random per process, score: the wall clock in ms), drops the members not heard of for
//! `liveness` and counts the rest: the live instances, among which the exchange splits what
//! the fleet has left of each budget (`sync::redis_sync`).

use std::time::{Duration, Instant};

use crate::policy::traffic::RedisBackend;

/// One key's part of a sync: the counter, what this instance adds, when the counter expires,
/// and whether this instance used (or wanted) the key since the last sync: it then announces
/// itself in the key's users (`users`: `<prefix><limit>:<key>:users`, one for every window, a
/// sorted set like `<prefix>instances`).
pub(super) struct Push {
    pub name: String,
    pub users: String,
    pub delta: u64,
    pub expire_at: i64,
    pub join: bool,
}

/// One key's part of a sync's answer: the counter's total, and the instances that used the
/// key within `liveness` (as announced by `Push::join`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Read {
    pub total: u64,
    pub users: u64,
}

/// A count of instances that rises at once but falls only once lower readings have held for
/// a while (`liveness`): after an outage, at startup or with a skewed clock, a reading may
/// miss instances that are live, and the split must not hand their part away meanwhile.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sticky {
    pub value: u64,
    /// The highest reading below `value` since `since` (µs; 0: none below).
    low: u64,
    since: u64,
}

impl Sticky {
    pub fn new(value: u64) -> Sticky {
        Sticky {
            value,
            ..Sticky::default()
        }
    }

    /// Takes reading `v` at `now` (µs): the count that holds now.
    pub fn read(&mut self, v: u64, now: u64, hold_us: u64) -> u64 {
        if v >= self.value {
            *self = Sticky::new(v);
        } else if self.since == 0 {
            (self.low, self.since) = (v, now.max(1));
        } else {
            self.low = self.low.max(v);
            if now.saturating_sub(self.since) >= hold_us {
                *self = Sticky::new(self.low);
            }
        }
        self.value
    }
}

pub(super) struct Fleet {
    pub cfg: RedisBackend,
    client: Option<redis::Client>,
    con: Option<redis::Connection>,
    next: Instant,
    /// Whether the last sync reached Redis.
    pub up: bool,
    /// Live instances (this one included) as last read, falling no faster than `liveness`
    /// (`Sticky`); 0 before the first read.
    pub live: u64,
    live_read: Sticky,
    /// Redis's clock less this host's (ms), from `TIME`: members are scored with Redis's.
    skew_ms: i64,
    set: String,
    /// Redis refused a command (an ACL without it, say): warned once.
    warned: bool,
    up_gauge: metrics::Gauge,
    live_gauge: metrics::Gauge,
    ok: metrics::Counter,
    failed: metrics::Counter,
}

impl Fleet {
    pub fn new(cfg: RedisBackend) -> Fleet {
        use crate::observe::names::{
            TRAFFIC_REDIS_INSTANCES, TRAFFIC_REDIS_SYNCS_TOTAL, TRAFFIC_REDIS_UP,
        };
        let client = match redis::Client::open(&*cfg.url) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "traffic.redis.url: no client; limits hold per instance");
                None
            }
        };
        let up_gauge = metrics::gauge!(TRAFFIC_REDIS_UP);
        up_gauge.set(0.0);
        let live_gauge = metrics::gauge!(TRAFFIC_REDIS_INSTANCES);
        live_gauge.set(1.0);
        Fleet {
            set: format!("{}instances", cfg.key_prefix),
            cfg,
            client,
            con: None,
            next: Instant::now(),
            up: false,
            live: 0,
            live_read: Sticky::default(),
            skew_ms: 0,
            warned: false,
            up_gauge,
            live_gauge,
            ok: metrics::counter!(TRAFFIC_REDIS_SYNCS_TOTAL, "result" => "ok"),
            failed: metrics::counter!(TRAFFIC_REDIS_SYNCS_TOTAL, "result" => "error"),
        }
    }

    /// Whether a sync is due (and if so, schedules the next).
    pub fn due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        self.next = now + self.cfg.sync_interval;
        true
    }

    /// How long an instance counts as live after its last heartbeat: ten syncs, at least 2 s
    /// (hosts' clocks must agree well within that). Too long only makes the shares smaller
    /// for a while after an instance stops; too short would let a live one's share be given
    /// away.
    pub fn liveness(&self) -> Duration {
        (self.cfg.sync_interval * 10).max(Duration::from_secs(2))
    }

    /// Announces this instance, adds every push's delta and returns the totals, in order,
    /// after reading how many instances are live. An error drops the connection (the next
    /// sync connects again) and marks Redis down.
    pub fn sync(&mut self, pushes: &[Push], now_us: u64) -> Result<Vec<Read>, String> {
        let r = self.round_trip(pushes, now_us);
        self.up = r.is_ok();
        self.up_gauge.set(if self.up { 1.0 } else { 0.0 });
        match &r {
            Ok(_) => {
                self.ok.increment(1);
                self.live_gauge.set(self.live as f64);
            }
            Err(e) => {
                self.failed.increment(1);
                self.con = None;
                tracing::debug!(error = %e, "traffic.redis: sync failed");
            }
        }
        r
    }

    fn round_trip(&mut self, pushes: &[Push], now_us: u64) -> Result<Vec<Read>, String> {
        let timeout = self.cfg.timeout.max(Duration::from_millis(1));
        if self.con.is_none() {
            let client = self.client.as_ref().ok_or("no client")?;
            let con = client
                .get_connection_with_timeout(timeout)
                .map_err(|e| e.to_string())?;
            con.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            con.set_write_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            self.con = Some(con);
            // Members are scored with Redis's clock: hosts' clocks need not agree. Read once
            // per connection (one more round trip, on connecting only).
            let con = self.con.as_mut().ok_or("no connection")?;
            let time: redis::RedisResult<(i64, i64)> = redis::cmd("TIME").query(con);
            let (secs, micros) = time.map_err(|e| self.failed_with(e))?;
            self.skew_ms = secs * 1000 + micros / 1000 - wall_ms();
        }
        let liveness = self.liveness().as_millis() as i64;
        let now_ms = wall_ms() + self.skew_ms;
        let con = self.con.as_mut().ok_or("no connection")?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(&self.set)
            .arg(now_ms)
            .arg(instance_id())
            .ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&self.set)
            .arg("-inf")
            .arg(now_ms - liveness)
            .ignore();
        pipe.cmd("PEXPIRE").arg(&self.set).arg(liveness).ignore();
        pipe.cmd("ZCARD").arg(&self.set);
        for p in pushes {
            pipe.cmd("INCRBY").arg(&p.name).arg(p.delta);
            pipe.cmd("EXPIREAT").arg(&p.name).arg(p.expire_at).ignore();
            if p.join {
                pipe.cmd("ZADD")
                    .arg(&p.users)
                    .arg(now_ms)
                    .arg(instance_id())
                    .ignore();
            }
            pipe.cmd("ZCOUNT")
                .arg(&p.users)
                .arg(format!("({}", now_ms - liveness))
                .arg("+inf");
            pipe.cmd("PEXPIRE").arg(&p.users).arg(liveness).ignore();
        }
        let r: redis::RedisResult<Vec<u64>> = pipe.query(con);
        let r = r.map_err(|e| self.failed_with(e))?;
        if r.len() != 2 * pushes.len() + 1 {
            return Err(format!("{} replies to {} counters", r.len(), pushes.len()));
        }
        let hold = self.liveness().as_micros() as u64;
        self.live = self.live_read.read(r[0].max(1), now_us, hold);
        Ok(r[1..]
            .chunks_exact(2)
            .map(|c| Read {
                total: c[0],
                users: c[1],
            })
            .collect())
    }
}

impl Fleet {
    /// A failed command's error, warned of (once) when Redis refused the command itself
    /// (`NOPERM` from an ACL, an unknown command): that does not mend by waiting.
    fn failed_with(&mut self, e: redis::RedisError) -> String {
        let refused = matches!(
            e.kind(),
            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
        );
        if refused && !self.warned {
            self.warned = true;
            tracing::warn!(error = %e, "traffic.redis: Redis refused a command (its user needs TIME, ZADD, ZREMRANGEBYSCORE, ZCARD, ZCOUNT, ZREM, PEXPIRE, INCRBY and EXPIREAT); limits hold per on_failure until it accepts them");
        }
        e.to_string()
    }

    /// On a clean shutdown: leaves `<prefix>instances` at once, so the others' split counts
    /// this instance no longer (its keys' users sets let it go within `liveness`).
    pub fn leave(&mut self) {
        if let Some(con) = self.con.as_mut() {
            let r: redis::RedisResult<i64> = redis::cmd("ZREM")
                .arg(&self.set)
                .arg(instance_id())
                .query(con);
            if let Err(e) = r {
                tracing::debug!(error = %e, "traffic.redis: could not leave the instances");
            }
        }
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// This process's member of `<prefix>instances`: 128 random bits, drawn once.
fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut b = [0u8; 16];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
            // No system randomness: the process id and start time keep instances apart.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            b = (t ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    })
}
