//! Readiness: each upstream's health as the workers record it (lock-free), the /readyz answer
//! (probing known-down upstreams once), and the slot a reload replaces it in.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::request::left;

/// Readiness as the admin listener reports it: ready = every worker accepting, not draining,
/// and every endpoint has an upstream that is not known-down (an endpoint with several
/// upstreams serves with some of them down: it is reported degraded, still ready).
#[derive(Default)]
pub struct Health {
    /// Each endpoint's path and its upstreams (indices into `upstreams`).
    pub endpoints: Vec<(String, Vec<usize>)>,
    /// Every worker is accepting.
    pub ready: AtomicBool,
    /// Shutdown has begun: /readyz answers 503 so load balancers drain us.
    pub draining: AtomicBool,
    /// Indexed like `Config::upstreams`.
    pub upstreams: Vec<UpstreamHealth>,
}

/// Whether one upstream can serve, written lock-free by every worker.
pub struct UpstreamHealth {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    /// `upstreams[].connect_timeout`: also the /readyz probe's timeout.
    pub connect_timeout: Duration,
    /// `upstreams[].unhealthy_after`: known-down at this many consecutive failures.
    pub unhealthy_after: u32,
    /// Consecutive connect failures and response-head timeouts, on any worker, with no
    /// successful exchange (or /readyz probe) since. Stops counting at `unhealthy_after`.
    pub failures: AtomicU32,
    /// The endpoint paths (`servers[].path`) this upstream serves; none: not part of readiness.
    pub endpoints: Vec<String>,
    /// An https upstream: the probe completes a TLS handshake (certificate and name verified)
    /// after the connect, so an upstream whose certificate fails is not reported ready.
    pub tls: Option<ProbeTls>,
    /// `upstreams[].circuit_breaker` (`proxy::breaker`); with several replicas, each has its
    /// own in `replicas` instead.
    pub breaker: crate::proxy::breaker::Breaker,
    /// An upstream with several replicas: each one's health check and breaker, by position in
    /// `UpstreamRuntime::replicas`; empty with one.
    pub replicas: Vec<crate::proxy::replicas::ReplicaHealth>,
}

/// What a probe of an https upstream verifies against.
pub struct ProbeTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl UpstreamHealth {
    pub fn new(
        name: String,
        addrs: Vec<SocketAddr>,
        connect_timeout: Duration,
        unhealthy_after: u32,
        endpoints: Vec<String>,
    ) -> Self {
        UpstreamHealth {
            name,
            addrs,
            connect_timeout,
            unhealthy_after: unhealthy_after.max(1),
            failures: AtomicU32::new(0),
            endpoints,
            tls: None,
            breaker: crate::proxy::breaker::Breaker::new(crate::config::CircuitBreaker {
                consecutive_failures: 0,
                error_ratio: 0.0,
                min_requests: 20,
                window: Duration::from_secs(10),
                open_for: Duration::from_secs(10),
                half_open_probes: 1,
            }),
            replicas: Vec::new(),
        }
    }

    /// Its replicas' health (an upstream with several).
    pub fn with_replicas(mut self, replicas: Vec<crate::proxy::replicas::ReplicaHealth>) -> Self {
        self.replicas = replicas;
        self
    }

    /// The upstream's circuit breaker (none by default: `consecutive_failures: 0`).
    pub fn with_breaker(mut self, cfg: crate::config::CircuitBreaker) -> Self {
        self.breaker = crate::proxy::breaker::Breaker::new(cfg);
        self
    }

    /// The probe also completes a TLS handshake (https upstreams).
    pub fn with_tls(mut self, tls: Option<ProbeTls>) -> Self {
        self.tls = tls;
        self
    }

    pub fn is_down(&self) -> bool {
        self.failures.load(Ordering::Relaxed) >= self.unhealthy_after
    }

    /// One TCP connect to any of the upstream's addresses within `connect_timeout` (and
    /// `deadline`), and for an https upstream a TLS handshake verifying its certificate and
    /// name; on success the failure count is cleared, so readiness recovers without traffic.
    /// A probe proves reachability only: an upstream that accepts and never answers is marked
    /// down again by the next timeouts.
    fn probe(&self, deadline: Instant) -> bool {
        for a in &self.addrs {
            let Ok(left) = left(deadline) else {
                return false;
            };
            let limit = self.connect_timeout.min(left);
            let Ok(tcp) = TcpStream::connect_timeout(a, limit) else {
                continue;
            };
            if let Some(tls) = &self.tls {
                if let Err(e) = tls_handshake(tcp, tls, Instant::now() + limit) {
                    tracing::debug!(upstream = %self.name, error = %e, "readiness probe: TLS handshake failed");
                    continue;
                }
            }
            self.failures.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// A blocking TLS client handshake on `tcp` before `deadline` (the probe's; then closed).
fn tls_handshake(tcp: TcpStream, tls: &ProbeTls, deadline: Instant) -> std::io::Result<()> {
    let mut conn = rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
        .map_err(std::io::Error::other)?;
    let mut tcp = tcp;
    while conn.is_handshaking() {
        tcp.set_read_timeout(Some(left(deadline)?))?;
        tcp.set_write_timeout(Some(left(deadline)?))?;
        conn.complete_io(&mut tcp)?;
    }
    Ok(())
}

impl Health {
    /// Takes over `old`'s replica states (health verdict, breaker) by upstream name and replica
    /// id: a reload does it while building, before the new health check starts, so neither the
    /// fresh all-healthy state is seen after the commit nor the new checker's verdict undone.
    pub fn carry_replicas_from(&self, old: &Health) {
        for h in &self.upstreams {
            if let Some(o) = old.upstreams.iter().find(|o| o.name == h.name) {
                for r in &h.replicas {
                    if let Some(or) = o.replicas.iter().find(|x| x.id == r.id) {
                        r.carry_from(or);
                    }
                }
            }
        }
    }

    /// Endpoints that serve with some of their upstreams known-down (ready, degraded): one line
    /// each, for the /readyz body. Reads the counters only (no probe).
    pub fn degraded(&self) -> String {
        let mut out = String::new();
        for (path, ups) in &self.endpoints {
            let down: Vec<&str> = ups
                .iter()
                .filter_map(|&u| self.upstreams.get(u))
                .filter(|h| h.is_down())
                .map(|h| h.name.as_str())
                .collect();
            if !down.is_empty() && down.len() < ups.len() {
                out.push_str(&format!(
                    "degraded: endpoint {path} serves without upstream(s) {} (down)\n",
                    down.join(", ")
                ));
            }
        }
        out
    }

    /// A connect failure or response-head timeout on upstream `u` (the cold path).
    #[inline]
    pub fn upstream_failed(&self, u: usize) {
        if let Some(h) = self.upstreams.get(u) {
            // Bounded: stop at the threshold, so the count never wraps.
            if h.failures.load(Ordering::Relaxed) < h.unhealthy_after {
                h.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A successful exchange with upstream `u`: one relaxed load, a store only after failures.
    #[inline]
    pub fn upstream_ok(&self, u: usize) {
        if let Some(h) = self.upstreams.get(u) {
            if h.failures.load(Ordering::Relaxed) != 0 {
                h.failures.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The /readyz answer: `None` when ready, else the reason (names the endpoints and
    /// upstreams that cannot serve). Known-down upstreams are probed once first.
    pub fn not_ready(&self, deadline: Instant) -> Option<String> {
        if self.draining.load(Ordering::Relaxed) {
            return Some("not ready: draining (shutting down)\n".into());
        }
        if !self.ready.load(Ordering::Relaxed) {
            return Some("not ready: workers starting\n".into());
        }
        let mut why = String::new();
        // Known-down upstreams that serve an endpoint are probed once; the rest is judged on
        // the result.
        let down: Vec<bool> = self
            .upstreams
            .iter()
            .map(|h| !h.endpoints.is_empty() && h.is_down() && !h.probe(deadline))
            .collect();
        for (path, ups) in &self.endpoints {
            if ups.is_empty() || !ups.iter().all(|&u| down.get(u).copied().unwrap_or(false)) {
                continue;
            }
            for &u in ups {
                let h = &self.upstreams[u];
                why.push_str(&format!(
                    "not ready: endpoint {path} cannot serve: upstream \"{}\" is down ({} \
                     consecutive connect failures or timeouts, upstreams[].unhealthy_after; a \
                     connect probe failed)\n",
                    h.name, h.unhealthy_after
                ));
            }
        }
        (!why.is_empty()).then_some(why)
    }
}

/// The running config's `Health`, replaced by a reload. The lifecycle flags (`ready`,
/// `draining`) are carried into each replacement under the same lock, so a swap never loses one.
pub struct HealthSlot(Mutex<Arc<Health>>);

impl HealthSlot {
    pub fn new(h: Arc<Health>) -> Self {
        HealthSlot(Mutex::new(h))
    }

    pub fn current(&self) -> Arc<Health> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs the health of a new config: its lifecycle flags come from the running one, and
    /// each upstream that keeps its name keeps its failure count.
    pub fn replace(&self, new: Arc<Health>) {
        let mut cur = self.0.lock().unwrap_or_else(|e| e.into_inner());
        new.ready
            .store(cur.ready.load(Ordering::Acquire), Ordering::Release);
        new.draining
            .store(cur.draining.load(Ordering::Acquire), Ordering::Release);
        for h in &new.upstreams {
            if let Some(old) = cur.upstreams.iter().find(|o| o.name == h.name) {
                h.failures
                    .store(old.failures.load(Ordering::Relaxed), Ordering::Relaxed);
                h.breaker.carry_from(&old.breaker);
            }
        }
        *cur = new;
    }

    pub fn set_ready(&self) {
        let cur = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cur.ready.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        let cur = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cur.draining.store(true, Ordering::Release);
    }
}
