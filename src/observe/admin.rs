//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`.
//!
//! It serves scrapes and probes, never client traffic, so it is plain blocking std code off the
//! workers: one accept thread, and a thread per connection while it lasts, at most
//! `admin.max_connections` of them (beyond: 503 and close at once, counted). Each connection
//! carries one request with one deadline, `admin.request_timeout` from accept: before every read
//! and write the socket timeout is set to the time left, so a client that dribbles its head or
//! reads its response slowly is cut off at the deadline however it paces its bytes, and it only
//! ever holds its own thread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::Counter;
use metrics_exporter_prometheus::PrometheusHandle;

use super::names;

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

    /// `tollgate_upstream_up{upstream}`: 1 unless the upstream is known-down (its failure count
    /// reached `unhealthy_after`), written at scrape time.
    pub fn render_up(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP {} 1 unless the upstream is known-down (upstreams[].unhealthy_after consecutive \
             connect failures or timeouts, no success since).\n# TYPE {} gauge",
            names::UPSTREAM_UP,
            names::UPSTREAM_UP
        );
        for h in &self.upstreams {
            let up = if h.is_down() { 0 } else { 1 };
            let _ = writeln!(
                out,
                "{}{{upstream=\"{}\"}} {up}",
                names::UPSTREAM_UP,
                h.name
            );
        }
        self.render_circuits(out);
        self.render_replicas(out);
    }

    /// `tollgate_upstream_replica_healthy{upstream,replica}`,
    /// `tollgate_upstream_replica_circuit_state{upstream,replica}` and
    /// `tollgate_upstream_health_checks_total{upstream,replica,result}` and
    /// `tollgate_upstream_replica_in_flight{upstream,replica}` of upstreams with several
    /// replicas, written at scrape time.
    fn render_replicas(&self, out: &mut String) {
        use std::fmt::Write as _;
        let families = [
            (
                names::UPSTREAM_REPLICA_HEALTHY,
                "gauge",
                "1 while the replica passes its health check (upstreams[].health).",
            ),
            (
                names::UPSTREAM_REPLICA_CIRCUIT_STATE,
                "gauge",
                "The replica's circuit breaker: 0 closed, 1 open, 2 half-open.",
            ),
            (
                names::UPSTREAM_HEALTH_CHECKS_TOTAL,
                "counter",
                "Health check probes of upstream replicas, by result.",
            ),
            (
                names::UPSTREAM_REPLICA_IN_FLIGHT,
                "gauge",
                "Requests in flight to the replica on every worker, from its pick to the end of its response (event streams included).",
            ),
        ];
        for (i, (n, kind, help)) in families.iter().enumerate() {
            let _ = writeln!(out, "# HELP {n} {help}\n# TYPE {n} {kind}");
            for h in &self.upstreams {
                for r in &h.replicas {
                    let labels = format!("upstream=\"{}\",replica=\"{}\"", h.name, r.url);
                    let _ = match i {
                        0 => writeln!(out, "{n}{{{labels}}} {}", u8::from(r.is_healthy())),
                        1 => writeln!(out, "{n}{{{labels}}} {}", r.breaker.state()),
                        3 => writeln!(out, "{n}{{{labels}}} {}", r.in_flight()),
                        _ => writeln!(
                            out,
                            "{n}{{{labels},result=\"passed\"}} {}\n{n}{{{labels},result=\"failed\"}} {}",
                            r.passed.load(Ordering::Relaxed),
                            r.failed.load(Ordering::Relaxed)
                        ),
                    };
                }
            }
        }
    }

    /// `tollgate_upstream_circuit_state{upstream}` and
    /// `tollgate_upstream_circuit_transitions_total{upstream,to}`, written at scrape time from
    /// the breakers (upstreams without one: state 0, no transitions).
    fn render_circuits(&self, out: &mut String) {
        use crate::proxy::breaker::STATE_NAMES;
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP {n} The upstream's circuit breaker: 0 closed, 1 open, 2 half-open.\n# TYPE {n} gauge",
            n = names::UPSTREAM_CIRCUIT_STATE
        );
        for h in &self.upstreams {
            let _ = writeln!(
                out,
                "{}{{upstream=\"{}\"}} {}",
                names::UPSTREAM_CIRCUIT_STATE,
                h.name,
                h.breaker.state()
            );
        }
        let _ = writeln!(
            out,
            "# HELP {n} Circuit breaker state changes, by upstream and the state entered.\n# TYPE {n} counter",
            n = names::UPSTREAM_CIRCUIT_TRANSITIONS_TOTAL
        );
        for h in &self.upstreams {
            for (to, label) in STATE_NAMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{}{{upstream=\"{}\",to=\"{label}\"}} {}",
                    names::UPSTREAM_CIRCUIT_TRANSITIONS_TOTAL,
                    h.name,
                    h.breaker.transitions(to as u8)
                );
            }
        }
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

/// Re-reads and installs the config file: `Ok` with a one-line summary, `Err` with every problem.
pub type ReloadFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What the admin listener serves, shared by its connection threads.
pub struct Admin {
    pub handle: PrometheusHandle,
    pub hists: super::hist::HistogramSet,
    pub health: Arc<HealthSlot>,
    /// `POST /admin/reload` (from a loopback peer only); `None`: not offered.
    pub reload: Option<ReloadFn>,
    /// `admin.request_timeout`: from accept to the last byte of the response.
    pub request_timeout: Duration,
    /// `admin.max_connections`: connections served at once.
    pub max_connections: usize,
}

/// How often the accept loop looks at the stop flag when no connection arrives.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Counters for the admin listener's own limits (`tollgate_admin_limit_rejections_total`).
struct Refusals {
    max_connections: Counter,
    request_timeout: Counter,
}

impl Refusals {
    fn new() -> Self {
        let c = |limit: &'static str| metrics::counter!(names::ADMIN_LIMIT_REJECTIONS_TOTAL, "limit" => limit);
        Refusals {
            max_connections: c("max_connections"),
            request_timeout: c("request_timeout"),
        }
    }
}

/// Decrements the open-connection count when a connection thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves until `stop` is set; notices it within `STOP_POLL` and closes the listener.
/// Connections already being served finish on their own threads (each by its deadline).
pub fn serve(listener: TcpListener, admin: Admin, stop: Arc<AtomicBool>) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "admin listener: cannot set non-blocking; not serving");
        return;
    }
    let admin = Arc::new(admin);
    let open = Arc::new(AtomicUsize::new(0));
    let refusals = Arc::new(Refusals::new());
    while !stop.load(Ordering::Acquire) {
        if !readable(&listener, STOP_POLL) {
            continue;
        }
        // Take everything queued: each accept is cheap and never waits.
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning on a full queue.
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            };
            let deadline = Instant::now() + admin.request_timeout;
            if open.load(Ordering::Acquire) >= admin.max_connections {
                refusals.max_connections.increment(1);
                refuse(stream);
                continue;
            }
            open.fetch_add(1, Ordering::AcqRel);
            let slot = Slot(open.clone());
            let (conn_admin, conn_refusals) = (admin.clone(), refusals.clone());
            let spawned = std::thread::Builder::new()
                .name("admin-conn".into())
                .spawn(move || {
                    let _slot = slot;
                    if let Err(e) = handle_one(stream, deadline, &conn_admin) {
                        if is_timeout(&e) {
                            conn_refusals.request_timeout.increment(1);
                        }
                    }
                });
            if let Err(e) = spawned {
                // The closure (stream and slot) is dropped: the connection closes, the slot frees.
                refusals.max_connections.increment(1);
                tracing::warn!(error = %e, "admin listener: cannot start a connection thread");
            }
        }
    }
}

/// Waits up to `wait` for a connection to accept.
fn readable(listener: &TcpListener, wait: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, for the duration of the call.
    let n = unsafe { libc::poll(&mut fd, 1, wait.as_millis() as libc::c_int) };
    n > 0 && fd.revents & libc::POLLIN != 0
}

/// Over `admin.max_connections`: 503 and close, from the accept thread, never waiting. The
/// reply is small enough for an empty send buffer; whatever the client already sent is read
/// first (without waiting), so the close is a FIN after the reply rather than a reset before it.
fn refuse(mut s: TcpStream) {
    if s.set_nonblocking(true).is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        match s.read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let mut out = Vec::with_capacity(160);
    crate::http::response::simple(
        &mut out,
        503,
        b"text/plain",
        b"too many admin connections (admin.max_connections)\n",
        false,
    );
    let _ = s.write(&out);
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "admin.request_timeout")
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// The time left until `deadline`, or a timeout error if there is none.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err(timed_out())
    } else {
        Ok(d)
    }
}

/// One request on one connection, all of it before `deadline`. `Err` only for I/O errors
/// (a timeout is `TimedOut`/`WouldBlock`); the connection is closed either way.
fn handle_one(mut s: TcpStream, deadline: Instant, admin: &Admin) -> std::io::Result<()> {
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 8192];
    let mut len = 0;
    let path = loop {
        s.set_read_timeout(Some(left(deadline)?))?;
        let n = match s.read(&mut buf[len..]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r?,
        };
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("");
                let path = req
                    .path
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_string();
                if path == "/admin/reload" {
                    return admin_reload(&mut s, deadline, admin, method);
                }
                if method != "GET" && method != "HEAD" {
                    return respond(&mut s, deadline, 405, "text/plain", b"method not allowed\n");
                }
                break (path, method == "HEAD");
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => return respond(&mut s, deadline, 400, "text/plain", b"bad request\n"),
        }
    };
    let (path, head_only) = path;
    let metrics;
    let not_ready;
    let (status, ctype, body): (u16, &str, &[u8]) = match path.as_str() {
        "/metrics" => {
            let mut text = admin.handle.render();
            admin.hists.render(&mut text);
            admin.health.current().render_up(&mut text);
            metrics = text;
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.as_bytes(),
            )
        }
        "/healthz" => (200, "text/plain", b"ok\n"),
        "/readyz" => {
            let health = admin.health.current();
            not_ready = match health.not_ready(deadline) {
                None => Err(format!("ready\n{}", health.degraded())),
                Some(why) => Ok(why),
            };
            match &not_ready {
                Err(ready) => (200, "text/plain", ready.as_bytes()),
                Ok(why) => (503, "text/plain", why.as_bytes()),
            }
        }
        _ => (
            404,
            "text/plain",
            b"not found: try /metrics, /healthz or /readyz\n",
        ),
    };
    if head_only {
        // HEAD: the same head (Content-Length included), no body (RFC 9110 §9.3.2).
        let mut out = Vec::with_capacity(128);
        crate::http::response::simple(&mut out, status, ctype.as_bytes(), body, false);
        out.truncate(out.len() - body.len());
        return write_all_before(&mut s, deadline, &out);
    }
    respond(&mut s, deadline, status, ctype, body)
}

/// `POST /admin/reload`: re-reads the config file and installs it (what SIGHUP does). Only from a
/// loopback peer, whatever address the admin listener is bound to: a reload is an operator's
/// act on this host. 200 with the summary, 422 with every problem, 403/405/404 otherwise.
fn admin_reload(
    s: &mut TcpStream,
    deadline: Instant,
    admin: &Admin,
    method: &str,
) -> std::io::Result<()> {
    if method != "POST" {
        let mut out = Vec::with_capacity(128);
        let body = b"method not allowed: POST /admin/reload\n";
        crate::http::response::simple(&mut out, 405, b"text/plain", body, false);
        let end = out.len() - body.len() - 2;
        out.splice(end..end, b"allow: POST\r\n".iter().copied());
        return write_all_before(s, deadline, &out);
    }
    let Some(reload) = &admin.reload else {
        return respond(s, deadline, 404, "text/plain", b"reload is not available\n");
    };
    if !s.peer_addr().is_ok_and(|p| p.ip().is_loopback()) {
        return respond(
            s,
            deadline,
            403,
            "text/plain",
            b"reload is only accepted from this host (a loopback address)\n",
        );
    }
    match reload() {
        Ok(summary) => respond(
            s,
            deadline,
            200,
            "text/plain",
            format!("reloaded: {summary}\n").as_bytes(),
        ),
        Err(problems) => respond(
            s,
            deadline,
            422,
            "text/plain",
            format!("reload refused, the running config stays:\n{problems}\n").as_bytes(),
        ),
    }
}

/// Writes the whole response before `deadline` (the socket timeout is the time left before
/// each write, so a slow reader gets no more than the deadline in total).
fn respond(
    s: &mut TcpStream,
    deadline: Instant,
    status: u16,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 128);
    crate::http::response::simple(&mut out, status, ctype.as_bytes(), body, false);
    write_all_before(s, deadline, &out)
}

fn write_all_before(s: &mut TcpStream, deadline: Instant, out: &[u8]) -> std::io::Result<()> {
    let mut rest = out;
    while !rest.is_empty() {
        s.set_write_timeout(Some(left(deadline)?))?;
        match s.write(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (s, c)
    }

    /// The deadline covers the response write: a client that asked and never reads is cut off
    /// at it, not after a per-write timeout restarted by each partial write.
    #[test]
    fn a_reader_that_never_reads_is_cut_off_at_the_deadline() {
        let (mut server, _client) = pair();
        let body = vec![b'x'; 64 << 20]; // far more than loopback socket buffers hold
        let deadline = Instant::now() + Duration::from_millis(300);
        let e = respond(&mut server, deadline, 200, "text/plain", &body).unwrap_err();
        assert!(is_timeout(&e), "{e:?}");
        // "Did not hang": the whole write gave up at its deadline, not minutes later.
        assert!(Instant::now() < deadline + Duration::from_secs(5));
    }

    fn health_with(addr: SocketAddr, endpoints: &[&str]) -> Health {
        let h = Health {
            upstreams: vec![UpstreamHealth::new(
                "up".into(),
                vec![addr],
                Duration::from_millis(200),
                3,
                endpoints.iter().map(|e| e.to_string()).collect(),
            )],
            endpoints: endpoints.iter().map(|e| (e.to_string(), vec![0])).collect(),
            ..Health::default()
        };
        h.ready.store(true, Ordering::Relaxed);
        h
    }

    /// An endpoint with several upstreams is ready while one of them is up (reported degraded);
    /// not ready once every one is down.
    #[test]
    fn a_federated_endpoint_is_ready_while_one_upstream_serves() {
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = dead.local_addr().unwrap();
        drop(dead);
        let up = |name: &str| {
            UpstreamHealth::new(
                name.into(),
                vec![addr],
                Duration::from_millis(200),
                1,
                vec!["/fed".into()],
            )
        };
        let h = Health {
            upstreams: vec![up("a"), up("b")],
            endpoints: vec![("/fed".into(), vec![0, 1])],
            ..Health::default()
        };
        h.ready.store(true, Ordering::Relaxed);
        let soon = || Instant::now() + Duration::from_secs(2);
        h.upstream_failed(0);
        assert_eq!(h.not_ready(soon()), None);
        assert_eq!(
            h.degraded(),
            "degraded: endpoint /fed serves without upstream(s) a (down)\n"
        );
        let mut m = String::new();
        h.render_up(&mut m);
        assert!(m.contains("tollgate_upstream_up{upstream=\"a\"} 0"), "{m}");
        assert!(m.contains("tollgate_upstream_up{upstream=\"b\"} 1"), "{m}");
        h.upstream_failed(1);
        let why = h.not_ready(soon()).unwrap();
        assert!(
            why.contains("endpoint /fed cannot serve: upstream \"a\"") && why.contains("\"b\""),
            "{why}"
        );
    }

    #[test]
    fn an_upstream_is_down_after_consecutive_failures_until_a_success() {
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = dead.local_addr().unwrap();
        drop(dead);
        let h = health_with(addr, &["/mcp"]);
        let soon = || Instant::now() + Duration::from_secs(2);
        h.upstream_failed(0);
        h.upstream_failed(0);
        h.upstream_ok(0); // a success in between resets the run
        h.upstream_failed(0);
        h.upstream_failed(0);
        assert_eq!(h.not_ready(soon()), None);
        for _ in 0..10 {
            h.upstream_failed(0);
        }
        assert_eq!(
            h.upstreams[0].failures.load(Ordering::Relaxed),
            3,
            "bounded"
        );
        let why = h.not_ready(soon()).expect("down");
        assert!(why.contains("/mcp") && why.contains("\"up\""), "{why}");
        h.upstream_ok(0);
        assert_eq!(h.not_ready(soon()), None);
        h.draining.store(true, Ordering::Relaxed);
        assert!(h.not_ready(soon()).unwrap().contains("draining"));
    }

    #[test]
    fn an_upstream_no_endpoint_serves_does_not_count() {
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = dead.local_addr().unwrap();
        drop(dead);
        let h = health_with(addr, &[]);
        for _ in 0..3 {
            h.upstream_failed(0);
        }
        assert_eq!(h.not_ready(Instant::now() + Duration::from_secs(2)), None);
    }

    #[test]
    fn a_spent_deadline_writes_nothing() {
        let (mut server, _client) = pair();
        let e = respond(&mut server, Instant::now(), 200, "text/plain", b"ok\n").unwrap_err();
        assert!(is_timeout(&e), "{e:?}");
        assert!(left(Instant::now()).is_err());
    }
}
