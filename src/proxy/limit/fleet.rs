//! `traffic.redis`: the exchange thread's link to the other instances. Every
//! `redis.sync_interval` it adds this instance's new usage of each recently active key to one
//! counter per key and window in Redis (INCRBY, with EXPIREAT at the window's end, pipelined)
//! and reads the totals back. Workers never talk to Redis; a slow or absent Redis costs the
//! exchange thread at most `redis.timeout` per sync.

use std::time::{Duration, Instant};

use crate::policy::traffic::RedisBackend;

/// One key's part of a sync: the counter, what this instance adds, when the counter expires.
pub(super) struct Push {
    pub name: String,
    pub delta: u64,
    pub expire_at: i64,
}

pub(super) struct Fleet {
    pub cfg: RedisBackend,
    client: Option<redis::Client>,
    con: Option<redis::Connection>,
    next: Instant,
    /// Whether the last sync reached Redis.
    pub up: bool,
    up_gauge: metrics::Gauge,
    ok: metrics::Counter,
    failed: metrics::Counter,
}

impl Fleet {
    pub fn new(cfg: RedisBackend) -> Fleet {
        use crate::observe::names::{TRAFFIC_REDIS_SYNCS_TOTAL, TRAFFIC_REDIS_UP};
        let client = match redis::Client::open(&*cfg.url) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "traffic.redis.url: no client; limits hold per instance");
                None
            }
        };
        let up_gauge = metrics::gauge!(TRAFFIC_REDIS_UP);
        up_gauge.set(0.0);
        Fleet {
            cfg,
            client,
            con: None,
            next: Instant::now(),
            up: false,
            up_gauge,
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

    /// Adds every push's delta and returns the totals, in order (a PING when there is none).
    /// An error drops the connection (the next sync connects again) and marks Redis down.
    pub fn sync(&mut self, pushes: &[Push]) -> Result<Vec<u64>, String> {
        let r = self.round_trip(pushes);
        self.up = r.is_ok();
        self.up_gauge.set(if self.up { 1.0 } else { 0.0 });
        match &r {
            Ok(_) => self.ok.increment(1),
            Err(e) => {
                self.failed.increment(1);
                self.con = None;
                tracing::debug!(error = %e, "traffic.redis: sync failed");
            }
        }
        r
    }

    fn round_trip(&mut self, pushes: &[Push]) -> Result<Vec<u64>, String> {
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
        }
        let con = self.con.as_mut().ok_or("no connection")?;
        if pushes.is_empty() {
            let _: String = redis::cmd("PING").query(con).map_err(|e| e.to_string())?;
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for p in pushes {
            pipe.cmd("INCRBY").arg(&p.name).arg(p.delta);
            pipe.cmd("EXPIREAT").arg(&p.name).arg(p.expire_at).ignore();
        }
        pipe.query(con).map_err(|e| e.to_string())
    }
}
