//! Replicas of one upstream (`upstreams[].replicas`): where each is (`Replica`), which one a
//! request goes to (`Local::pick`: the fewest in flight on this worker among the healthy, ties
//! in turn), their shared state (`ReplicaHealth`: check verdict, circuit breaker, atomics read
//! with one relaxed load on the request path) and the active check (`Checker`: one thread per
//! config generation probing every replica concurrently on its own runtime, never a worker).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::breaker::Breaker;
use super::state::UpstreamRuntime;
use crate::http::conn::Busy;
use crate::observe::admin::Health;

/// One replica of an upstream as the data path needs it.
pub struct Replica {
    /// `mcp::session::replica_id` of its URL: what a session token pins.
    pub id: u64,
    /// Its URL, one spelling (`HttpTarget::url`): metric label and log field.
    pub url: String,
    pub addrs: Vec<SocketAddr>,
    /// Where its idle connections live in a worker's pool (changes with what they are bound to).
    pub pool_key: u64,
    /// ` <path> HTTP/1.1\r\nhost: <authority>\r\n`: what follows the method in a request to it.
    /// Requests are rendered with the first replica's; `retarget` puts another's in.
    pub line: Vec<u8>,
    /// `https://`: the name sent as SNI and verified (`tls.server_name`, else its own host).
    pub tls_name: Option<rustls::pki_types::ServerName<'static>>,
    /// The active check's request (`health.path`, else its own path).
    probe: Vec<u8>,
}

impl Replica {
    pub fn new(
        url: String,
        addrs: Vec<SocketAddr>,
        (authority, path): (&str, &str),
        tls_name: Option<rustls::pki_types::ServerName<'static>>,
        probe_path: Option<&str>,
        salt: u64,
    ) -> Self {
        let line = format!(" {path} HTTP/1.1\r\nhost: {authority}\r\n").into_bytes();
        let pool_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (salt, &url, &addrs).hash(&mut h);
            h.finish()
        };
        let probe = format!(
            "GET {} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: tollgate-health\r\naccept: application/json, text/event-stream\r\nconnection: close\r\n\r\n",
            probe_path.unwrap_or(path)
        )
        .into_bytes();
        Replica {
            id: crate::mcp::session::replica_id(&url),
            url,
            addrs,
            pool_key,
            line,
            tls_name,
            probe,
        }
    }
}

/// Rewrites the request target and `host` line of `req` (rendered for replica `from`) for
/// replica `to`. Every request to an upstream starts with `METHOD` + the first replica's line.
pub fn retarget(req: &mut Vec<u8>, from: &Replica, to: &Replica) {
    let Some(sp) = memchr::memchr(b' ', req) else {
        return;
    };
    if !req[sp..].starts_with(&from.line) {
        return;
    }
    let range = sp..sp + from.line.len();
    if from.line.len() == to.line.len() {
        req[range].copy_from_slice(&to.line);
    } else {
        req.splice(range, to.line.iter().copied());
    }
}

/// What every worker knows of one replica: written by the health check thread and the request
/// path's breaker, read by `pick`.
pub struct ReplicaHealth {
    pub id: u64,
    pub url: String,
    /// The active check's verdict (healthy until `unhealthy_after` probes in a row failed).
    pub healthy: AtomicBool,
    /// `upstreams[].circuit_breaker`, this replica's own.
    pub breaker: Breaker,
    pub passed: AtomicU64,
    pub failed: AtomicU64,
    /// Each worker's count of requests in flight to it (`Local::register`, cold): summed at
    /// scrape time.
    workers: Mutex<Vec<Arc<AtomicU32>>>,
}

impl ReplicaHealth {
    pub fn new(r: &Replica, breaker: crate::config::CircuitBreaker) -> Self {
        ReplicaHealth {
            id: r.id,
            url: r.url.clone(),
            healthy: AtomicBool::new(true),
            breaker: Breaker::new(breaker),
            passed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            workers: Mutex::new(Vec::new()),
        }
    }

    /// Requests in flight to this replica on every worker, from its pick to the end of its
    /// response (`tollgate_upstream_replica_in_flight`).
    pub fn in_flight(&self) -> u64 {
        self.workers.lock().map_or(0, |w| {
            w.iter().map(|n| u64::from(n.load(Ordering::Relaxed))).sum()
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// A reload keeps what is known of a replica that stays (same upstream name and URL).
    pub fn carry_from(&self, old: &ReplicaHealth) {
        self.healthy.store(old.is_healthy(), Ordering::Relaxed);
        self.passed
            .store(old.passed.load(Ordering::Relaxed), Ordering::Relaxed);
        self.failed
            .store(old.failed.load(Ordering::Relaxed), Ordering::Relaxed);
        self.breaker.carry_from(&old.breaker);
    }
}

/// Requests in flight by (upstream id, replica id).
type Counts = Vec<((u64, u64), Arc<AtomicU32>)>;

/// One worker's requests in flight per replica (by upstream id and replica id, so a reload that
/// reorders replicas keeps the counts of requests still on the old generation), and its turn
/// for ties. A request counts from the pick until its response ends: the count rides on the
/// upstream connection (`Conn::busy`) once the head arrived, so a long event stream keeps its
/// replica busy. Each count is changed by this worker only; the scrape sums them over workers
/// (`ReplicaHealth::in_flight`).
#[derive(Default)]
pub struct Local {
    in_flight: RefCell<Counts>,
    turn: Cell<usize>,
}

impl Local {
    fn count(&self, key: (u64, u64)) -> u32 {
        self.in_flight
            .borrow()
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, n)| n.load(Ordering::Relaxed))
    }

    fn counter(v: &mut Counts, key: (u64, u64)) -> &Arc<AtomicU32> {
        let at = match v.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                v.push((key, Arc::default()));
                v.len() - 1
            }
        };
        &v[at].1
    }

    /// Counts a request to replica `r` of `up` until the guard drops (`exchange_across` moves it
    /// into the connection that carries the response).
    pub fn begin(&self, up: &UpstreamRuntime, r: usize) -> Busy {
        let mut v = self.in_flight.borrow_mut();
        Busy::new(Self::counter(&mut v, (up.id, up.replicas[r].id)))
    }

    /// A generation is installed on this worker: its replicas' health learns where this
    /// worker's counts are (the same counter for a replica that stays, so requests still in
    /// flight on the old generation go on counting); counts of replicas no longer configured
    /// are forgotten once nothing is in flight on them.
    pub fn register(&self, upstreams: &[UpstreamRuntime], health: &Health) {
        let mut v = self.in_flight.borrow_mut();
        v.retain(|((u, r), n)| {
            n.load(Ordering::Relaxed) > 0
                || upstreams
                    .iter()
                    .any(|up| up.id == *u && up.replicas.iter().any(|x| x.id == *r))
        });
        for (up, h) in upstreams.iter().zip(&health.upstreams) {
            for (rep, rh) in up.replicas.iter().zip(&h.replicas) {
                let n = Self::counter(&mut v, (up.id, rep.id)).clone();
                if let Ok(mut workers) = rh.workers.lock() {
                    workers.push(n);
                }
            }
        }
    }

    /// The replica of `up` a request that is not pinned goes to, skipping those in `tried` (a
    /// bit per position): among the healthy ones whose circuit would admit a request (closed,
    /// or open and due for its half-open probe; else the healthy ones, else any), the one with the fewest requests in flight on this worker; ties are
    /// taken in turn. `None` when every replica was tried.
    pub fn pick(
        &self,
        up: &UpstreamRuntime,
        health: &[ReplicaHealth],
        tried: u64,
    ) -> Option<usize> {
        let n = up.replicas.len();
        let untried = |r: usize| tried & (1 << r) == 0;
        let healthy = |r: usize| health.get(r).is_none_or(|h| h.is_healthy());
        // Not open, or open long enough to be probed: a replica whose circuit opened is
        // offered again when due, else nothing would ever close it (only requests probe).
        let closed = |r: usize| health.get(r).is_none_or(|h| h.breaker.would_admit());
        let tiers: [&dyn Fn(usize) -> bool; 3] = [
            &|r| untried(r) && healthy(r) && closed(r),
            &|r| untried(r) && healthy(r),
            &|r| untried(r),
        ];
        let start = self.turn.get();
        self.turn.set(start.wrapping_add(1));
        for ok in tiers {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..n {
                let r = (start + i) % n;
                if !ok(r) {
                    continue;
                }
                let c = self.count((up.id, up.replicas[r].id));
                if best.is_none_or(|(bc, _)| c < bc) {
                    best = Some((c, r));
                }
            }
            if let Some((_, r)) = best {
                return Some(r);
            }
        }
        None
    }
}

/// The active health check of one config generation's replicas; stops when dropped (its end
/// of a socket pair closes: the thread's runtime sees that at once, probes under way included).
pub struct Checker {
    _stop: std::os::unix::net::UnixStream,
}

struct Target {
    upstream: String,
    u: usize,
    r: usize,
    addrs: Vec<SocketAddr>,
    probe: Vec<u8>,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    cfg: crate::config::HealthCheck,
    /// Probes in a row with the same outcome (passed > 0, failed < 0).
    streak: i64,
}

impl Checker {
    /// Starts the thread when some upstream has more than one replica.
    pub fn start(
        config: &crate::config::Config,
        upstreams: &[UpstreamRuntime],
        health: &Arc<Health>,
    ) -> Option<Checker> {
        let targets: Vec<Target> = upstreams
            .iter()
            .zip(&config.upstreams)
            .enumerate()
            .filter(|(_, (rt, _))| rt.replicas.len() > 1)
            .flat_map(|(u, (rt, cfg))| {
                rt.replicas.iter().enumerate().map(move |(r, rep)| Target {
                    upstream: rt.name.clone(),
                    u,
                    r,
                    addrs: rep.addrs.clone(),
                    probe: rep.probe.clone(),
                    tls: rt
                        .tls
                        .as_ref()
                        .zip(rep.tls_name.as_ref())
                        .map(|((c, _), name)| (c.clone(), name.clone())),
                    cfg: cfg.health.clone(),
                    streak: 0,
                })
            })
            .collect();
        if targets.is_empty() {
            return None;
        }
        let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "could not start the replica health check");
                return None;
            }
        };
        let health = health.clone();
        let spawned = std::thread::Builder::new()
            .name("tollgate-health".into())
            .spawn(move || run(targets, &health, theirs));
        match spawned {
            Ok(_) => Some(Checker { _stop: ours }),
            Err(e) => {
                tracing::error!(error = %e, "could not start the replica health check thread");
                None
            }
        }
    }
}

/// The check's thread: one small runtime (epoll) on which every replica has its own probe loop,
/// so a replica that stalls holds up only its own probes (each bounded by `health.timeout`),
/// with no thread per replica. Returns when `stop`'s other end closes.
fn run(targets: Vec<Target>, health: &Health, stop: std::os::unix::net::UnixStream) {
    let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "could not start the replica health check runtime");
            return;
        }
    };
    rt.block_on(async move {
        let stopped = async {
            use monoio::io::AsyncReadRent;
            let stop = stop
                .set_nonblocking(true)
                .and_then(|()| monoio::net::UnixStream::from_std(stop));
            match stop {
                // Nothing is ever written: the read ends when the `Checker` is dropped.
                Ok(mut s) => drop(s.read(vec![0u8; 1]).await),
                Err(e) => {
                    tracing::error!(error = %e, "replica health check: no stop signal; it runs until exit");
                    std::future::pending::<()>().await;
                }
            }
        };
        let watches =
            futures_util::future::join_all(targets.into_iter().map(|t| watch(t, health)));
        monoio::select! {
            _ = watches => {}
            // The generation is gone: every probe under way is dropped here, on the runtime.
            _ = stopped => {}
        }
    });
}

/// One replica's probe loop: a probe, its verdict, `health.interval`, again.
async fn watch(mut t: Target, health: &Health) {
    loop {
        let outcome = match monoio::time::timeout(t.cfg.timeout, probe(&t)).await {
            Ok(outcome) => outcome,
            Err(_) => Err("timed out (health.timeout)".to_string()),
        };
        if let Some(h) = health.upstreams.get(t.u).and_then(|h| h.replicas.get(t.r)) {
            verdict(&mut t, h, outcome);
        }
        monoio::time::sleep(t.cfg.interval).await;
    }
}

/// Counts a probe's outcome and marks the replica down after `unhealthy_after` failures in a
/// row, up after `healthy_after` passes.
fn verdict(t: &mut Target, h: &ReplicaHealth, outcome: Result<u16, String>) {
    match outcome {
        Ok(status) => {
            h.passed.fetch_add(1, Ordering::Relaxed);
            t.streak = t.streak.max(0) + 1;
            if !h.is_healthy() && t.streak >= i64::from(t.cfg.healthy_after) {
                h.healthy.store(true, Ordering::Relaxed);
                tracing::info!(upstream = %t.upstream, replica = %h.url, status, "upstream replica is healthy again (health check)");
            }
        }
        Err(why) => {
            h.failed.fetch_add(1, Ordering::Relaxed);
            t.streak = t.streak.min(0) - 1;
            tracing::debug!(upstream = %t.upstream, replica = %h.url, error = %why, "upstream replica health check failed");
            if h.is_healthy() && -t.streak >= i64::from(t.cfg.unhealthy_after) {
                h.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(upstream = %t.upstream, replica = %h.url, error = %why, failed = -t.streak, "upstream replica is down (health check): new sessions go to the others, its sessions get 404");
            }
        }
    }
}

/// One probe: connect (TLS for https), send the check's GET, read the status line; any status
/// below 500 passes. The caller bounds it by `health.timeout`.
async fn probe(t: &Target) -> Result<u16, String> {
    let tcp = crate::http::pool::connect(&t.addrs, t.cfg.timeout)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let io = match &t.tls {
        None => crate::tls::Stream::Plain(tcp),
        Some((config, name)) => {
            crate::tls::connect(tcp, config.clone(), name.clone(), t.cfg.timeout)
                .await
                .map_err(|e| format!("TLS: {e}"))?
        }
    };
    let mut conn = crate::http::Conn::new(io, 512);
    let (sent, _) = conn.write_all(t.probe.clone()).await;
    sent.map_err(|e| e.to_string())?;
    // Up to the end of the status line (at most 256 bytes).
    while !conn.buffered().contains(&b'\n') && conn.buffered().len() < 256 {
        if conn.fill(0).await.map_err(|e| e.to_string())? == 0 {
            break;
        }
    }
    let head = conn.buffered();
    let status = status_of(head).ok_or_else(|| {
        format!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&head[..head.len().min(40)])
        )
    })?;
    if status >= 500 {
        return Err(format!("HTTP {status}"));
    }
    Ok(status)
}

/// The status code of `HTTP/1.x NNN …`.
fn status_of(head: &[u8]) -> Option<u16> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(url: &str, authority: &str, path: &str) -> Replica {
        Replica::new(url.into(), Vec::new(), (authority, path), None, None, 0)
    }

    #[test]
    fn retarget_rewrites_the_target_and_host_only() {
        let a = replica("http://a:1/mcp", "a:1", "/mcp");
        let b = replica("http://bb:22/v2/mcp", "bb:22", "/v2/mcp");
        let mut req = b"POST /mcp HTTP/1.1\r\nhost: a:1\r\nx: y\r\n\r\n{}".to_vec();
        retarget(&mut req, &a, &b);
        assert_eq!(
            req,
            b"POST /v2/mcp HTTP/1.1\r\nhost: bb:22\r\nx: y\r\n\r\n{}".to_vec()
        );
        retarget(&mut req, &b, &a);
        assert_eq!(
            req,
            b"POST /mcp HTTP/1.1\r\nhost: a:1\r\nx: y\r\n\r\n{}".to_vec()
        );
        // Bytes not rendered for `from` are left alone.
        let mut other = b"GET /elsewhere HTTP/1.1\r\nhost: c\r\n\r\n".to_vec();
        retarget(&mut other, &a, &b);
        assert_eq!(
            other,
            b"GET /elsewhere HTTP/1.1\r\nhost: c\r\n\r\n".to_vec()
        );
    }

    /// Upstream `u` with a replica per URL (and `extra` keys), and their fresh health.
    fn replicated(urls: &[&str], extra: &str) -> (UpstreamRuntime, Vec<ReplicaHealth>) {
        let yaml = format!(
            "upstreams:\n  - name: u\n    replicas: [{}]\n{extra}servers:\n  - path: /mcp\n    upstream: u\n",
            urls.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ")
        );
        let cfg = crate::config::load_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let c = &cfg.upstreams[0];
        assert_eq!(c.replicas.len(), urls.len());
        let mut up = UpstreamRuntime::new(c, Vec::new(), "127.0.0.1:1", "/mcp");
        up.replicas = urls
            .iter()
            .map(|u| replica(u, "127.0.0.1", "/mcp"))
            .collect();
        let health = up
            .replicas
            .iter()
            .map(|r| ReplicaHealth::new(r, c.circuit_breaker))
            .collect();
        (up, health)
    }

    #[test]
    fn pick_takes_the_healthy_one_with_fewest_in_flight_and_ties_in_turn() {
        let (up, health) = replicated(
            &[
                "http://127.0.0.1:1/mcp",
                "http://127.0.0.1:2/mcp",
                "http://127.0.0.1:3/mcp",
            ],
            "",
        );
        let l = Local::default();
        // Nothing in flight: each in turn.
        let mut turns: Vec<usize> = (0..3).filter_map(|_| l.pick(&up, &health, 0)).collect();
        turns.sort_unstable();
        assert_eq!(turns, [0, 1, 2]);
        // The fewest in flight wins.
        let a = l.begin(&up, 0);
        let _b = l.begin(&up, 1);
        for _ in 0..3 {
            assert_eq!(l.pick(&up, &health, 0), Some(2));
        }
        // A replica that failed its check is left out while a healthy one remains.
        health[2].healthy.store(false, Ordering::Relaxed);
        drop(a);
        for _ in 0..3 {
            assert_eq!(l.pick(&up, &health, 0), Some(0));
        }
        // Tried ones are skipped; when only an unhealthy one is left, it is still tried.
        assert_eq!(l.pick(&up, &health, 0b001), Some(1));
        assert_eq!(l.pick(&up, &health, 0b011), Some(2));
        assert_eq!(l.pick(&up, &health, 0b111), None);
    }

    #[test]
    fn a_replica_whose_circuit_opened_is_offered_again_when_due_for_its_probe() {
        let (up, health) = replicated(
            &["http://127.0.0.1:1/mcp", "http://127.0.0.1:2/mcp"],
            "    circuit_breaker: {consecutive_failures: 1, open_for: 50ms}\n",
        );
        let l = Local::default();
        health[0].breaker.failed("u", "test");
        assert_eq!(health[0].breaker.state(), 1, "open after one failure");
        // Open: the other replica takes everything, even with more in flight.
        let _busy = l.begin(&up, 1);
        for _ in 0..4 {
            assert_eq!(l.pick(&up, &health, 0), Some(1));
        }
        // Due for its probe: offered again (fewest in flight), so a request can close it.
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(l.pick(&up, &health, 0), Some(0));
        let probe = health[0].breaker.admit("u").expect("the half-open probe");
        health[0].breaker.succeeded("u");
        drop(probe);
        assert_eq!(health[0].breaker.state(), 0, "closed by its probe");
    }

    /// `Health` of `up` with `replicas` (what a generation's build makes).
    fn health_of(up: &UpstreamRuntime, replicas: Vec<ReplicaHealth>) -> Health {
        use crate::observe::admin::UpstreamHealth;
        let u = UpstreamHealth::new(
            up.name.clone(),
            Vec::new(),
            std::time::Duration::from_secs(1),
            3,
            Vec::new(),
        )
        .with_replicas(replicas);
        Health {
            endpoints: Vec::new(),
            ready: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            upstreams: vec![u],
        }
    }

    #[test]
    fn the_scrape_sums_every_workers_count_and_a_reload_keeps_requests_in_flight_counted() {
        let urls = ["http://127.0.0.1:1/mcp", "http://127.0.0.1:2/mcp"];
        let (up, replicas) = replicated(&urls, "");
        let old = health_of(&up, replicas);
        let (w1, w2) = (Local::default(), Local::default());
        w1.register(std::slice::from_ref(&up), &old);
        w2.register(std::slice::from_ref(&up), &old);
        let a = w1.begin(&up, 0);
        let b = w2.begin(&up, 0);
        let c = w2.begin(&up, 1);
        let in_flight = |h: &Health| {
            h.upstreams[0]
                .replicas
                .iter()
                .map(|r| r.in_flight())
                .collect::<Vec<_>>()
        };
        assert_eq!(in_flight(&old), [2, 1]);
        // Each worker picks by its own count only.
        assert_eq!(w1.pick(&up, &old.upstreams[0].replicas, 0), Some(1));
        drop(b);
        assert_eq!(in_flight(&old), [1, 1]);
        // A reload: the new generation's health sees the requests still in flight.
        let (up2, replicas2) = replicated(&urls, "");
        let new = health_of(&up2, replicas2);
        w1.register(std::slice::from_ref(&up2), &new);
        w2.register(std::slice::from_ref(&up2), &new);
        assert_eq!(in_flight(&new), [1, 1]);
        drop((a, c));
        assert_eq!(in_flight(&new), [0, 0]);
        assert_eq!(in_flight(&old), [0, 0]);
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 405 Method Not Allowed\r\n"), Some(405));
        assert_eq!(status_of(b"HTTP/1.0 200\r\n"), Some(200));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 5x0 \r\n"), None);
    }
}
