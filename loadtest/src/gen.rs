//! The load generator: MCP sessions over keep-alive HTTP/1.1 connections, open- or closed-loop.
//! Each generator thread runs one monoio runtime; each connection is one task that owns its sessions.
//! Open loop: request k of a connection has an intended send time, and latency is measured from it
//! (so a stall delays every request scheduled behind it and shows in the percentiles: no coordinated omission).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Barrier};

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::net::TcpStream;
use serde::Deserialize;

use crate::auth::AuthPlan;
use crate::http1::{sse_events, Conn, ReadError};
use crate::scenario::{Mode, Pacing, Scenario};

/// Everything a generator thread needs, immutable during a run.
pub struct Plan {
    pub addr: SocketAddr,
    /// `https://` targets: the client config (trusting `--tls-ca`) and the name to verify.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub host: String,
    pub path: String,
    pub extra_headers: String,
    pub protocol_version: String,
    pub stateless: bool,
    pub mix: Vec<Template>,
    pub total_weight: u32,
    pub sessions: usize,
    pub connections: usize,
    pub threads: usize,
    pub timeout: Duration,
    pub auth: Option<AuthPlan>,
    pub progress_min: u32,
    pub throttle_ok: bool,
    pub pacing: Pacing,
}

pub struct Template {
    pub weight: u32,
    pub method: String,
    /// Tool name (for the `Mcp-Name` header in stateless mode).
    pub name: Option<String>,
    /// The params JSON, split where the per-request progress token goes.
    pub params_parts: Vec<String>,
    pub is_notification: bool,
}

/// The revision a stateless run speaks: the scenario's `protocol_version` when it names a
/// stateless one, else 2026-07-28 (a session-era scenario run with `--stateless`).
fn stateless_version(s: &Scenario) -> &str {
    if s.protocol_version.as_str() < "2026" {
        "2026-07-28"
    } else {
        &s.protocol_version
    }
}

const PT_PLACEHOLDER: &str = "__TOLLGATE_LOAD_PROGRESS_TOKEN__";

impl Plan {
    pub fn new(
        s: &Scenario,
        url: &str,
        extra_headers: &[(String, String)],
    ) -> anyhow::Result<Plan> {
        let (addr, host, path, https) = parse_url(url)?;
        let tls = if https {
            let ca = TLS_CA.get().ok_or_else(|| {
                anyhow::anyhow!("{url}: an https target needs --tls-ca FILE (the CA to trust)")
            })?;
            let client = tollgate::tls::client_config(Some(ca)).map_err(|e| anyhow::anyhow!(e))?;
            let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
            let name = tollgate::tls::server_name(name.trim_matches(['[', ']']))
                .map_err(|e| anyhow::anyhow!(e))?;
            Some((client, name))
        } else {
            None
        };
        let mut hdrs = String::new();
        for (k, v) in s.headers.iter() {
            hdrs.push_str(&format!("{k}: {v}\r\n"));
        }
        for (k, v) in extra_headers {
            hdrs.push_str(&format!("{k}: {v}\r\n"));
        }
        let mut mix = Vec::new();
        for m in &s.mix {
            let mut params = m.params.clone().unwrap_or(serde_json::Value::Null);
            if m.pad_bytes > 0 {
                let args = params
                    .as_object_mut()
                    .and_then(|o| o.get_mut("arguments"))
                    .and_then(|a| a.as_object_mut());
                match args {
                    Some(a) => {
                        a.insert(
                            m.pad_field.clone(),
                            serde_json::Value::String("x".repeat(m.pad_bytes)),
                        );
                    }
                    None => {
                        anyhow::bail!("mix entry {}: pad_bytes needs params.arguments", m.method)
                    }
                }
            }
            if m.progress_token {
                let o = params.as_object_mut().ok_or_else(|| {
                    anyhow::anyhow!("progress_token needs params to be an object")
                })?;
                let meta = o.entry("_meta").or_insert_with(|| serde_json::json!({}));
                meta.as_object_mut()
                    .ok_or_else(|| anyhow::anyhow!("_meta must be an object"))?
                    .insert(
                        "progressToken".into(),
                        serde_json::Value::String(PT_PLACEHOLDER.into()),
                    );
            }
            if s.stateless {
                // 2026-07-28: every request carries its revision and capabilities in `_meta`.
                if params.is_null() {
                    params = serde_json::json!({});
                }
                let o = params.as_object_mut().ok_or_else(|| {
                    anyhow::anyhow!("stateless requests need params to be an object")
                })?;
                let meta = o.entry("_meta").or_insert_with(|| serde_json::json!({}));
                let meta = meta
                    .as_object_mut()
                    .ok_or_else(|| anyhow::anyhow!("_meta must be an object"))?;
                meta.insert(
                    "io.modelcontextprotocol/protocolVersion".into(),
                    serde_json::Value::String(stateless_version(s).into()),
                );
                meta.insert(
                    "io.modelcontextprotocol/clientCapabilities".into(),
                    serde_json::json!({}),
                );
            }
            let rendered = if params.is_null() {
                String::new()
            } else {
                serde_json::to_string(&params)?
            };
            let needle = format!("\"{PT_PLACEHOLDER}\"");
            let params_parts = rendered
                .split(needle.as_str())
                .map(|s| s.to_string())
                .collect();
            let name = params
                .get("name")
                .and_then(|n| n.as_str())
                .map(|s| s.to_string());
            mix.push(Template {
                weight: m.weight,
                method: m.method.clone(),
                name,
                params_parts,
                is_notification: m.method.starts_with("notifications/"),
            });
        }
        let total_weight = mix.iter().map(|t| t.weight).sum();
        Ok(Plan {
            addr,
            tls,
            host,
            path,
            extra_headers: hdrs,
            protocol_version: if s.stateless {
                stateless_version(s).to_string()
            } else {
                s.protocol_version.clone()
            },
            stateless: s.stateless,
            mix,
            total_weight,
            sessions: if s.stateless { 0 } else { s.sessions.max(1) },
            connections: s.connections,
            threads: s.threads,
            timeout: Duration::from_millis(s.load.timeout_ms),
            auth: match &s.auth {
                Some(a) => Some(AuthPlan::new(a, s.sessions.max(1))?),
                None => None,
            },
            progress_min: s.expect.progress_min,
            throttle_ok: s.expect.throttle_ok,
            pacing: s.load.pacing,
        })
    }

    fn render(
        &self,
        method: &str,
        name: Option<&str>,
        params: &str,
        id: Option<i64>,
        sess: Option<&Session>,
        token: Option<&str>,
    ) -> Vec<u8> {
        let mut body = String::with_capacity(64 + params.len());
        body.push_str("{\"jsonrpc\":\"2.0\",");
        if let Some(id) = id {
            body.push_str(&format!("\"id\":{id},"));
        }
        body.push_str("\"method\":\"");
        body.push_str(method);
        body.push('"');
        if !params.is_empty() {
            body.push_str(",\"params\":");
            body.push_str(params);
        }
        body.push('}');
        let mut req = String::with_capacity(body.len() + 300);
        req.push_str(&format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n",
            self.path, self.host
        ));
        req.push_str(&self.extra_headers);
        if let Some(s) = sess {
            if let Some(id) = &s.id {
                req.push_str("Mcp-Session-Id: ");
                req.push_str(id);
                req.push_str("\r\n");
            }
            if s.initialized {
                req.push_str("MCP-Protocol-Version: ");
                req.push_str(&s.version);
                req.push_str("\r\n");
            }
        }
        if self.stateless {
            // 2026-07-28: the headers mirror the body.
            req.push_str("MCP-Protocol-Version: ");
            req.push_str(&self.protocol_version);
            req.push_str("\r\nMcp-Method: ");
            req.push_str(method);
            req.push_str("\r\n");
            if let Some(n) = name {
                req.push_str("Mcp-Name: ");
                req.push_str(n);
                req.push_str("\r\n");
            }
        }
        if let Some(t) = token {
            req.push_str("Authorization: Bearer ");
            req.push_str(t);
            req.push_str("\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        req.push_str(&body);
        req.into_bytes()
    }
}

/// The CA file `https://` targets are verified against (`--tls-ca`; compare sets its own).
pub static TLS_CA: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// (address, host[:port] as written, path, https).
pub fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, String, String, bool)> {
    let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => anyhow::bail!("only http:// and https:// URLs are supported: {url}"),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let hp = if hostport.contains(':') {
        hostport.to_string()
    } else if https {
        format!("{hostport}:443")
    } else {
        format!("{hostport}:80")
    };
    use std::net::ToSocketAddrs;
    let addr = hp
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {hp}"))?;
    Ok((addr, hostport.to_string(), path, https))
}

#[derive(Clone)]
pub struct Session {
    pub id: Option<String>,
    pub version: String,
    pub initialized: bool,
    pub global_index: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrKind {
    Connect,
    Timeout,
    Io,
    HttpStatus,
    JsonRpc,
    ToolError,
    Mismatch,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Errors {
    pub connect: u64,
    pub timeout: u64,
    pub io: u64,
    pub http_status: u64,
    pub jsonrpc: u64,
    pub tool_error: u64,
    pub mismatch: u64,
}

impl Errors {
    pub fn add(&mut self, k: ErrKind) {
        match k {
            ErrKind::Connect => self.connect += 1,
            ErrKind::Timeout => self.timeout += 1,
            ErrKind::Io => self.io += 1,
            ErrKind::HttpStatus => self.http_status += 1,
            ErrKind::JsonRpc => self.jsonrpc += 1,
            ErrKind::ToolError => self.tool_error += 1,
            ErrKind::Mismatch => self.mismatch += 1,
        }
    }
    pub fn merge(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.io += o.io;
        self.http_status += o.http_status;
        self.jsonrpc += o.jsonrpc;
        self.tool_error += o.tool_error;
        self.mismatch += o.mismatch;
    }
    pub fn total(&self) -> u64 {
        self.connect
            + self.timeout
            + self.io
            + self.http_status
            + self.jsonrpc
            + self.tool_error
            + self.mismatch
    }
}

pub struct PhaseStats {
    /// Latency: closed loop from the write, open loop from the intended send time.
    pub hist: Histogram<u64>,
    /// From the actual write to the end of the reply.
    pub service: Histogram<u64>,
    /// Open loop: how late the write was against its intended time (pacer wake-up + no free connection), in ns.
    pub send_lag: Histogram<u64>,
    pub completed: u64,
    pub errors: Errors,
    pub throttled: u64,
    pub progress_msgs: u64,
    pub bytes_in: u64,
    pub wall: Duration,
    /// Last error text seen, to say why a run failed.
    pub last_error: Option<String>,
    /// Precise pacing was asked for but a connection had to use monoio's 1 ms timer (no io_uring, no timerfd).
    pub coarse_fallback: bool,
    /// The generator threads over the measured phase: CPU time, time waiting for a CPU, preemptions.
    pub gen_sched: crate::procstat::Sched,
    /// Open loop, ns: the part of the send lag after a connection had the slot (the pacer's wake-up,
    /// or the write right away when the slot was overdue), for every send.
    pub pacer_lag: Histogram<u64>,
    /// Open loop, ns: for slots a connection took only after they were due, how late that was.
    pub conn_wait: Histogram<u64>,
    pub late_slots: u64,
    /// Open loop, per 10 ms of schedule (by intended send time): sends, slots taken late,
    /// max send lag (µs), max service time (µs), sum of service times (µs).
    pub timeline: Vec<[u64; 5]>,
}

pub const TIMELINE_BUCKET: Duration = Duration::from_millis(10);

impl PhaseStats {
    fn new() -> PhaseStats {
        PhaseStats {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            service: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            send_lag: Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds"),
            completed: 0,
            errors: Errors::default(),
            throttled: 0,
            progress_msgs: 0,
            bytes_in: 0,
            wall: Duration::ZERO,
            last_error: None,
            coarse_fallback: false,
            gen_sched: crate::procstat::Sched::default(),
            pacer_lag: Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds"),
            conn_wait: Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds"),
            late_slots: 0,
            timeline: Vec::new(),
        }
    }
    fn merge(&mut self, o: &PhaseStats) {
        let _ = self.hist.add(&o.hist);
        let _ = self.service.add(&o.service);
        let _ = self.send_lag.add(&o.send_lag);
        self.completed += o.completed;
        self.errors.merge(&o.errors);
        self.throttled += o.throttled;
        self.progress_msgs += o.progress_msgs;
        self.bytes_in += o.bytes_in;
        self.wall = self.wall.max(o.wall);
        if o.last_error.is_some() {
            self.last_error = o.last_error.clone();
        }
        self.coarse_fallback |= o.coarse_fallback;
        self.gen_sched.add(o.gen_sched);
        let _ = self.pacer_lag.add(&o.pacer_lag);
        let _ = self.conn_wait.add(&o.conn_wait);
        self.late_slots += o.late_slots;
        if self.timeline.len() < o.timeline.len() {
            self.timeline.resize(o.timeline.len(), [0; 5]);
        }
        for (a, b) in self.timeline.iter_mut().zip(&o.timeline) {
            a[0] += b[0];
            a[1] += b[1];
            a[2] = a[2].max(b[2]);
            a[3] = a[3].max(b[3]);
            a[4] += b[4];
        }
    }
}

#[derive(Clone, Copy)]
pub struct Phase {
    pub mode: Mode,
    pub rate: Option<f64>,
    pub requests: u64,
    pub duration: Duration,
    pub warmup: u64,
}

/// Called once all threads are connected, initialized and warmed up, just before the measured phase
/// starts, and again once it has ended (with `false`). The caller reads /proc of the target there.
pub type Hook<'a> = &'a (dyn Fn(bool) + Sync);

pub fn run_phase(plan: Arc<Plan>, phase: Phase, hook: Hook) -> PhaseStats {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let go = Arc::new(Gate::default());
    let mut handles = Vec::new();
    for t in 0..plan.threads {
        let plan = plan.clone();
        let gate = StartGate {
            ready: ready_tx.clone(),
            go: go.clone(),
        };
        handles.push(std::thread::spawn(move || {
            with_runtime(move || thread_main(plan, phase, t, gate))
        }));
    }
    drop(ready_tx);
    // Wait until every thread is set up (or has died: a panicked thread never reports ready).
    let mut ready = 0;
    while ready < handles.len() {
        match ready_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(()) => ready += 1,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let dead = handles.iter().filter(|h| h.is_finished()).count();
                if ready + dead >= handles.len() {
                    break;
                }
            }
        }
    }
    hook(true);
    go.open();
    let mut total = PhaseStats::new();
    for h in handles {
        match h.join() {
            Ok(s) => total.merge(&s),
            Err(_) => {
                total.errors.mismatch += 1;
                total.last_error = Some("generator thread panicked".into());
            }
        }
    }
    hook(false);
    total
}

#[derive(Default)]
pub struct Gate {
    open: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}
impl Gate {
    pub fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.cv.notify_all();
    }
    pub fn wait(&self) {
        let mut g = self.open.lock().expect("gate");
        while !*g {
            g = self.cv.wait(g).expect("gate");
        }
    }
}

/// Generator threads report ready, then block until the caller has sampled the target and opens the gate.
pub struct StartGate {
    ready: std::sync::mpsc::Sender<()>,
    go: Arc<Gate>,
}
impl StartGate {
    fn wait(&self) {
        let _ = self.ready.send(());
        self.go.wait();
    }
}

thread_local! {
    /// Whether this thread's runtime is io_uring (the precise pacer needs it: under the legacy driver a
    /// file read would block the whole thread).
    static ON_URING: Cell<bool> = const { Cell::new(false) };
}

/// The open-loop pacer of one connection: a timerfd armed with the time left to the slot (nanoseconds)
/// and read through io_uring, so the wait ends when the kernel's hrtimer fires, not at monoio's next
/// 1 ms wheel tick. The timerfd is blocking; recent kernels (checked on 6.18) let io_uring read it
/// non-blocking, so the read is poll-armed in the ring with no io-wq worker thread (older ones punt it to one).
pub struct SlotTimer {
    file: monoio::fs::File,
    buf: Option<Vec<u8>>,
}

impl SlotTimer {
    pub fn new() -> std::io::Result<SlotTimer> {
        use std::os::fd::FromRawFd;
        if !ON_URING.with(|u| u.get()) {
            return Err(std::io::Error::other("not on an io_uring runtime"));
        }
        // SAFETY: a plain syscall; the fd is owned by the File below from here on.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let std = unsafe { std::fs::File::from_raw_fd(fd) };
        Ok(SlotTimer {
            file: monoio::fs::File::from_std(std)?,
            buf: Some(Vec::with_capacity(8)),
        })
    }

    /// Returns once `t` has passed (at once if it already has).
    pub async fn sleep_until(&mut self, t: Instant) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let now = Instant::now();
        if t <= now {
            return Ok(());
        }
        let d = t - now;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: valid fd and pointers for the duration of the call.
        let r =
            unsafe { libc::timerfd_settime(self.file.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = self.buf.take().unwrap_or_else(|| Vec::with_capacity(8));
        buf.clear();
        let (res, buf) = self.file.read_at(buf, 0).await;
        self.buf = Some(buf);
        res.map(|_| ())
    }
}

/// Build a monoio runtime (io_uring, legacy fallback) on this thread and run `f`'s future on it.
pub fn with_runtime<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun().setup_single_issuer();
    match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .uring_builder(urb)
        .with_entries(4096)
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            ON_URING.with(|u| u.set(true));
            rt.block_on(f())
        }
        Err(_) => {
            ON_URING.with(|u| u.set(false));
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("monoio legacy runtime");
            rt.block_on(f())
        }
    }
}

struct Worker {
    plan: Arc<Plan>,
    idx: usize,
    conn: Option<Conn>,
    sessions: Vec<Session>,
    next_session: usize,
    next_id: i64,
    rng: u64,
    stats: Rc<std::cell::RefCell<PhaseStats>>,
}

enum Outcome {
    Ok {
        progress: u32,
        bytes: usize,
        throttled: bool,
    },
    Err(ErrKind, String),
}

#[derive(Deserialize)]
struct Msg {
    #[serde(default)]
    id: Option<Id>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    result: Option<ResultObj>,
    #[serde(default)]
    error: Option<ErrObj>,
}
#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    N(i64),
    S(String),
    Other(serde::de::IgnoredAny),
}
#[derive(Deserialize)]
struct ResultObj {
    #[serde(default, rename = "isError")]
    is_error: Option<bool>,
    #[serde(default, rename = "protocolVersion")]
    protocol_version: Option<String>,
}
#[derive(Deserialize)]
struct ErrObj {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

impl Worker {
    fn new(plan: Arc<Plan>, idx: usize, stats: Rc<std::cell::RefCell<PhaseStats>>) -> Worker {
        let sessions = (0..plan.sessions)
            .filter(|s| s % plan.connections == idx)
            .map(|g| Session {
                id: None,
                version: plan.protocol_version.clone(),
                initialized: false,
                global_index: g,
            })
            .collect();
        Worker {
            plan,
            idx,
            conn: None,
            sessions,
            next_session: 0,
            next_id: (idx as i64) * 1_000_000_000 + 1,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (idx as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            stats,
        }
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    async fn ensure_conn(&mut self) -> Result<(), String> {
        if self.conn.is_some() {
            return Ok(());
        }
        match monoio::time::timeout(self.plan.timeout, TcpStream::connect_addr(self.plan.addr))
            .await
        {
            Ok(Ok(s)) => {
                // TLS: one handshake per connection, then keep-alive like plain.
                let stream = match &self.plan.tls {
                    None => tollgate::tls::Stream::Plain(s),
                    Some((cfg, name)) => {
                        tollgate::tls::connect(s, cfg.clone(), name.clone(), self.plan.timeout)
                            .await
                            .map_err(|e| format!("TLS handshake with {}: {e}", self.plan.addr))?
                    }
                };
                self.conn = Some(Conn::new(stream));
                Ok(())
            }
            Ok(Err(e)) => Err(format!("connect {}: {e}", self.plan.addr)),
            Err(_) => Err(format!("connect {}: timeout", self.plan.addr)),
        }
    }

    /// Send one request and read its reply; on any transport problem the connection is dropped.
    async fn exchange(
        &mut self,
        req: Vec<u8>,
        expect_id: Option<i64>,
    ) -> (Outcome, Option<crate::http1::Response>) {
        if let Err(e) = self.ensure_conn().await {
            return (Outcome::Err(ErrKind::Connect, e), None);
        }
        let conn = self.conn.as_mut().expect("connected");
        let fut = async {
            conn.send(req).await.map_err(ReadError::Io)?;
            conn.read_response().await
        };
        let resp = match monoio::time::timeout(self.plan.timeout, fut).await {
            Err(_) => {
                self.conn = None;
                return (Outcome::Err(ErrKind::Timeout, "timeout".into()), None);
            }
            Ok(Err(e)) => {
                self.conn = None;
                let (k, msg) = match e {
                    ReadError::Io(e) => (ErrKind::Io, format!("io: {e}")),
                    ReadError::Closed => (ErrKind::Io, "connection closed by target".into()),
                    ReadError::Malformed(m) => (ErrKind::Mismatch, m),
                };
                return (Outcome::Err(k, msg), None);
            }
            Ok(Ok(r)) => r,
        };
        if resp.close {
            self.conn = None;
        }
        let out = self.check(&resp, expect_id);
        (out, Some(resp))
    }

    fn check(&self, resp: &crate::http1::Response, expect_id: Option<i64>) -> Outcome {
        let bytes = resp.body.len();
        let Some(want) = expect_id else {
            // Notification: 202 Accepted (200/204 tolerated).
            return if matches!(resp.status, 200 | 202 | 204) {
                Outcome::Ok {
                    progress: 0,
                    bytes,
                    throttled: false,
                }
            } else {
                Outcome::Err(
                    ErrKind::HttpStatus,
                    format!("notification: HTTP {}", resp.status),
                )
            };
        };
        if resp.status != 200 {
            let snippet =
                String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).to_string();
            return Outcome::Err(
                ErrKind::HttpStatus,
                format!("HTTP {}: {snippet}", resp.status),
            );
        }
        let mut progress = 0u32;
        let mut answer: Option<Msg> = None;
        if resp.sse {
            for ev in sse_events(&resp.body) {
                if ev.is_empty() {
                    continue; // priming event
                }
                let m: Msg = match sonic_rs::from_slice(&ev) {
                    Ok(m) => m,
                    Err(e) => {
                        return Outcome::Err(
                            ErrKind::Mismatch,
                            format!("SSE data is not JSON-RPC: {e}"),
                        )
                    }
                };
                if m.method.is_some() && m.id.is_none() {
                    if m.method.as_deref() == Some("notifications/progress") {
                        progress += 1;
                    }
                    continue;
                }
                if m.method.is_some() {
                    continue; // a server→client request; the harness does not answer them
                }
                if matches!(m.id, Some(Id::N(n)) if n == want) {
                    answer = Some(m);
                } else {
                    return Outcome::Err(
                        ErrKind::Mismatch,
                        "SSE response with a foreign id".into(),
                    );
                }
            }
        } else {
            match sonic_rs::from_slice::<Msg>(&resp.body) {
                Ok(m) => answer = Some(m),
                Err(e) => {
                    return Outcome::Err(
                        ErrKind::Mismatch,
                        format!("body is not a JSON-RPC message: {e}"),
                    )
                }
            }
        }
        let Some(m) = answer else {
            return Outcome::Err(ErrKind::Mismatch, "no response in the SSE stream".into());
        };
        match &m.id {
            Some(Id::N(n)) if *n == want => {}
            Some(Id::S(s)) => {
                return Outcome::Err(ErrKind::Mismatch, format!("id {s:?}, expected {want}"))
            }
            _ => {
                return Outcome::Err(
                    ErrKind::Mismatch,
                    format!("missing or wrong id, expected {want}"),
                )
            }
        }
        if let Some(e) = &m.error {
            if self.plan.throttle_ok && !(-32768..=-32000).contains(&e.code) {
                return Outcome::Ok {
                    progress,
                    bytes,
                    throttled: true,
                };
            }
            return Outcome::Err(
                ErrKind::JsonRpc,
                format!("JSON-RPC error {}: {}", e.code, e.message),
            );
        }
        match &m.result {
            None => Outcome::Err(ErrKind::Mismatch, "neither result nor error".into()),
            Some(r) if r.is_error == Some(true) => {
                Outcome::Err(ErrKind::ToolError, "result.isError".into())
            }
            Some(_) => {
                if self.plan.progress_min > 0 && resp.sse && progress < self.plan.progress_min {
                    return Outcome::Err(
                        ErrKind::Mismatch,
                        format!("{progress} progress notifications"),
                    );
                }
                Outcome::Ok {
                    progress,
                    bytes,
                    throttled: false,
                }
            }
        }
    }

    async fn initialize_sessions(&mut self) -> Result<(), String> {
        for i in 0..self.sessions.len() {
            let params = format!(
                "{{\"protocolVersion\":\"{}\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"tollgate-load\",\"version\":\"0.1.0\"}}}}",
                self.plan.protocol_version
            );
            let token = self.token_for(i);
            let id = self.bump_id();
            let req = self.plan.render(
                "initialize",
                None,
                &params,
                Some(id),
                None,
                token.as_deref(),
            );
            let (out, resp) = self.exchange(req, Some(id)).await;
            if let Outcome::Err(k, m) = out {
                return Err(format!("initialize ({k:?}): {m}"));
            }
            let resp = resp.expect("response on success");
            let version =
                parse_negotiated(&resp).unwrap_or_else(|| self.plan.protocol_version.clone());
            let s = &mut self.sessions[i];
            s.id = resp.session_id.clone();
            s.version = version;
            s.initialized = true;
            let sess = self.sessions[i].clone();
            let req = self.plan.render(
                "notifications/initialized",
                None,
                "",
                None,
                Some(&sess),
                token.as_deref(),
            );
            if let (Outcome::Err(k, m), _) = self.exchange(req, None).await {
                return Err(format!("notifications/initialized ({k:?}): {m}"));
            }
        }
        Ok(())
    }

    fn bump_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn token_for(&mut self, session_local: usize) -> Option<String> {
        let g = self
            .sessions
            .get(session_local)
            .map(|s| s.global_index)
            .unwrap_or(self.idx);
        self.plan.auth.as_ref().map(|a| a.token(g))
    }

    fn next_request(&mut self) -> (Vec<u8>, Option<i64>) {
        let r = if self.plan.total_weight > 0 {
            (self.rand() % self.plan.total_weight as u64) as u32
        } else {
            0
        };
        let mut acc = 0;
        let mut ti = 0;
        for (i, t) in self.plan.mix.iter().enumerate() {
            acc += t.weight;
            if r < acc {
                ti = i;
                break;
            }
        }
        let plan = self.plan.clone();
        let t = &plan.mix[ti];
        let id = if t.is_notification {
            None
        } else {
            Some(self.bump_id())
        };
        let params = if t.params_parts.len() == 1 {
            std::borrow::Cow::Borrowed(t.params_parts[0].as_str())
        } else {
            let tok = format!("\"pt-{}\"", id.unwrap_or(0));
            std::borrow::Cow::Owned(t.params_parts.join(&tok))
        };
        let (sess, sidx) = if self.sessions.is_empty() {
            (None, 0)
        } else {
            let i = self.next_session % self.sessions.len();
            self.next_session += 1;
            (Some(self.sessions[i].clone()), i)
        };
        let token = self.token_for(sidx);
        let req = plan.render(
            &t.method,
            t.name.as_deref(),
            &params,
            id,
            sess.as_ref(),
            token.as_deref(),
        );
        (req, id)
    }

    fn record(&self, out: &Outcome, latency: Duration, service: Duration) {
        let mut st = self.stats.borrow_mut();
        match out {
            Outcome::Ok {
                progress,
                bytes,
                throttled,
            } => {
                st.completed += 1;
                st.progress_msgs += *progress as u64;
                st.bytes_in += *bytes as u64;
                if *throttled {
                    st.throttled += 1;
                }
                let us = |d: Duration| d.as_micros().clamp(1, 120_000_000) as u64;
                st.hist.saturating_record(us(latency));
                st.service.saturating_record(us(service));
            }
            Outcome::Err(k, m) => {
                st.errors.add(*k);
                st.last_error = Some(format!("{k:?}: {m}"));
            }
        }
    }

    /// Closed loop: `quota` requests back-to-back on this connection.
    /// Open loop: take the next due slot of the thread's schedule (`slots`), whichever connection is free,
    /// so one slow reply does not hold later slots hostage; latency counts from the slot's intended time.
    async fn drive(mut self, phase: Phase, start: Instant, quota: u64, slots: Rc<Slots>) -> Worker {
        let deadline = start + phase.duration;
        let mut k: u64 = 0;
        // When this connection took its slot: after the slot was due means no connection was free in time.
        let mut taken = start;
        let mut timer = match (phase.mode, self.plan.pacing) {
            (Mode::Open, Pacing::Precise) => SlotTimer::new().ok(),
            _ => None,
        };
        if phase.mode == Mode::Open && self.plan.pacing == Pacing::Precise && timer.is_none() {
            self.stats.borrow_mut().coarse_fallback = true;
        }
        loop {
            let intended = match phase.mode {
                Mode::Open => {
                    let Some(t) = slots.take(start) else { break };
                    if t >= deadline {
                        break;
                    }
                    taken = Instant::now();
                    t
                }
                Mode::Closed => {
                    let now = Instant::now();
                    if k >= quota || now >= deadline {
                        break;
                    }
                    now
                }
            };
            k += 1;
            // Rendered before the wait, so the write follows the wake-up at once.
            let (req, id) = self.next_request();
            if phase.mode == Mode::Open {
                let waited = match timer.as_mut() {
                    Some(tm) => tm.sleep_until(intended).await.is_ok(),
                    None => false,
                };
                let now = Instant::now();
                if !waited && intended > now {
                    // monoio's timer has 1 ms resolution: the write may be up to ~1 ms late (reported as send lag).
                    monoio::time::sleep(intended - now).await;
                }
            }
            let sent = Instant::now();
            let (out, _) = self.exchange(req, id).await;
            let done = Instant::now();
            if let Outcome::Err(ErrKind::Connect, _) = out {
                // Do not spin on a dead target.
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            if phase.mode == Mode::Open {
                // Every send counts, answered or not. The lag splits in two: waiting for a free connection
                // (the slot was already due when a connection took it: every connection was busy with the
                // target, or the generator thread was off its CPU), and the pacer's own lateness after that.
                let ns = |d: Duration| d.as_nanos().clamp(1, 120_000_000_000) as u64;
                let mut st = self.stats.borrow_mut();
                st.send_lag
                    .saturating_record(ns(sent.saturating_duration_since(intended)));
                if taken > intended {
                    st.late_slots += 1;
                    st.conn_wait.saturating_record(ns(taken - intended));
                }
                st.pacer_lag
                    .saturating_record(ns(sent.saturating_duration_since(taken.max(intended))));
                let b = ((intended - start).as_nanos() / TIMELINE_BUCKET.as_nanos()) as usize;
                if b < 100_000 {
                    if st.timeline.len() <= b {
                        st.timeline.resize(b + 1, [0; 5]);
                    }
                    let svc = (done - sent).as_micros() as u64;
                    let e = &mut st.timeline[b];
                    e[0] += 1;
                    e[1] += u64::from(taken > intended);
                    e[2] = e[2].max(sent.saturating_duration_since(intended).as_micros() as u64);
                    e[3] = e[3].max(svc);
                    e[4] += svc;
                }
            }
            self.record(&out, done - intended, done - sent);
        }
        self
    }
}

/// The open-loop schedule of one generator thread: slot k is due at start + k × period.
pub struct Slots {
    next: Cell<u64>,
    total: u64,
    period: Duration,
    offset: Duration,
}

impl Slots {
    fn take(&self, start: Instant) -> Option<Instant> {
        let k = self.next.get();
        if k >= self.total {
            return None;
        }
        self.next.set(k + 1);
        Some(start + self.offset + self.period.mul_f64(k as f64))
    }
}

fn parse_negotiated(resp: &crate::http1::Response) -> Option<String> {
    let body: Vec<u8> = if resp.sse {
        sse_events(&resp.body)
            .into_iter()
            .rev()
            .find(|e| !e.is_empty())?
    } else {
        resp.body.clone()
    };
    let m: Msg = sonic_rs::from_slice(&body).ok()?;
    m.result?.protocol_version
}

fn split_quota(total: u64, n: usize, i: usize) -> u64 {
    let n = n as u64;
    total / n + u64::from((i as u64) < total % n)
}

async fn thread_main(plan: Arc<Plan>, phase: Phase, t: usize, barrier: StartGate) -> PhaseStats {
    let stats = Rc::new(std::cell::RefCell::new(PhaseStats::new()));
    let mine: Vec<usize> = (0..plan.connections)
        .filter(|c| c % plan.threads == t)
        .collect();
    // Connect + initialize, a window at a time.
    let mut workers = Vec::new();
    let failed = Rc::new(Cell::new(0usize));
    for chunk in mine.chunks(64) {
        let hs: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let mut w = Worker::new(plan.clone(), i, stats.clone());
                let failed = failed.clone();
                let stats = stats.clone();
                monoio::spawn(async move {
                    let r = match w.ensure_conn().await {
                        Ok(()) => w.initialize_sessions().await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = r {
                        failed.set(failed.get() + 1);
                        stats.borrow_mut().last_error = Some(format!("setup: {e}"));
                    }
                    w
                })
            })
            .collect();
        for h in hs {
            workers.push(h.await);
        }
    }
    if failed.get() > 0 {
        // Sessions the target refused: the measured phase would be meaningless.
        let mut st = stats.borrow_mut();
        st.errors.connect += failed.get() as u64;
        drop(st);
        drop(workers);
        barrier.wait();
        return Rc::try_unwrap(stats)
            .ok()
            .expect("no other owner")
            .into_inner();
    }
    // Warm-up (not recorded).
    let warm_each = phase.warmup / plan.connections as u64;
    if warm_each > 0 {
        let hs: Vec<_> = workers
            .drain(..)
            .map(|mut w| {
                monoio::spawn(async move {
                    for _ in 0..warm_each {
                        let (req, id) = w.next_request();
                        let _ = w.exchange(req, id).await;
                    }
                    w
                })
            })
            .collect();
        for h in hs {
            workers.push(h.await);
        }
    }
    barrier.wait();
    let sched0 = crate::procstat::sched_thread();
    let start = Instant::now();
    let rate = phase.rate.unwrap_or(1.0).max(0.001) / plan.threads as f64;
    let slots = Rc::new(Slots {
        next: Cell::new(0),
        total: split_quota(phase.requests, plan.threads, t),
        period: Duration::from_secs_f64(1.0 / rate),
        // Threads interleave: thread t's slots are offset by t/threads of its period.
        offset: Duration::from_secs_f64(t as f64 / (rate * plan.threads as f64)),
    });
    let hs: Vec<_> = workers
        .drain(..)
        .map(|w| {
            let q = split_quota(phase.requests, plan.connections, w.idx);
            monoio::spawn(w.drive(phase, start, q, slots.clone()))
        })
        .collect();
    for h in hs {
        workers.push(h.await);
    }
    let wall = start.elapsed();
    drop(workers);
    let mut st = Rc::try_unwrap(stats)
        .ok()
        .expect("workers dropped")
        .into_inner();
    st.wall = wall;
    if let (Some(a), Some(b)) = (crate::procstat::sched_thread(), sched0) {
        st.gen_sched = a.since(b);
    }
    st
}

/// Idle keep-alive connections: open `n` (optionally one request each), then hold them.
pub struct IdleStats {
    pub opened: usize,
    pub errors: Errors,
    pub last_error: Option<String>,
}

/// `hook(true)` runs once every connection is open and served (the caller samples RSS), then the
/// connections are held for `hold`, then closed.
pub fn run_idle(
    plan: Arc<Plan>,
    n: usize,
    warm: bool,
    window: usize,
    hold: Duration,
    hook: Hook,
) -> IdleStats {
    let barrier = Arc::new(Barrier::new(2));
    let b2 = barrier.clone();
    let h = std::thread::spawn(move || {
        with_runtime(move || async move {
            let stats = Rc::new(std::cell::RefCell::new(PhaseStats::new()));
            let mut errors = Errors::default();
            let mut last_error = None;
            // One session for the warm requests.
            let mut w0 = Worker::new(plan.clone(), 0, stats.clone());
            if let Err(e) = w0.initialize_sessions().await {
                errors.connect += 1;
                last_error = Some(e);
            }
            let sessions = w0.sessions.clone();
            let mut conns: Vec<Worker> = Vec::with_capacity(n);
            let mut i = 0;
            while i < n && last_error.is_none() {
                let end = (i + window).min(n);
                let hs: Vec<_> = (i..end)
                    .map(|c| {
                        let mut w = Worker::new(plan.clone(), c % plan.connections, stats.clone());
                        w.sessions = sessions.clone();
                        monoio::spawn(async move {
                            if let Err(e) = w.ensure_conn().await {
                                return (w, Some((ErrKind::Connect, e)));
                            }
                            if warm && !w.plan.mix.is_empty() {
                                let (req, id) = w.next_request();
                                if let (Outcome::Err(k, m), _) = w.exchange(req, id).await {
                                    return (w, Some((k, m)));
                                }
                            }
                            (w, None)
                        })
                    })
                    .collect();
                for h in hs {
                    let (w, err) = h.await;
                    if let Some((k, m)) = err {
                        errors.add(k);
                        last_error = Some(m);
                    }
                    if w.conn.is_some() {
                        conns.push(w);
                    }
                }
                i = end;
            }
            let opened = conns.len();
            b2.wait();
            monoio::time::sleep(hold).await;
            drop(conns);
            drop(w0);
            IdleStats {
                opened,
                errors,
                last_error,
            }
        })
    });
    barrier.wait();
    hook(true);
    let r = h.join().unwrap_or(IdleStats {
        opened: 0,
        errors: Errors::default(),
        last_error: Some("idle thread panicked".into()),
    });
    hook(false);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_timer_never_wakes_early() {
        with_runtime(|| async {
            let Ok(mut t) = SlotTimer::new() else {
                eprintln!("skipped: no io_uring runtime or no timerfd here");
                return;
            };
            for us in [50u64, 300, 2_000] {
                let due = Instant::now() + Duration::from_micros(us);
                t.sleep_until(due).await.expect("sleep");
                assert!(Instant::now() >= due, "woke before {us} µs");
            }
            // A slot already due returns at once.
            t.sleep_until(Instant::now() - Duration::from_millis(1))
                .await
                .expect("past slot");
        });
    }

    #[test]
    fn slots_are_spaced_by_the_period() {
        let s = Slots {
            next: Cell::new(0),
            total: 3,
            period: Duration::from_micros(100),
            offset: Duration::from_micros(7),
        };
        let start = Instant::now();
        let got: Vec<_> = std::iter::from_fn(|| s.take(start)).collect();
        assert_eq!(
            got.iter().map(|t| *t - start).collect::<Vec<_>>(),
            [7, 107, 207].map(Duration::from_micros)
        );
    }
}
