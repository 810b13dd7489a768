//! Test harness: starts the real `tollgate` binary (gateway or demo upstream) on ephemeral
//! loopback ports, waits for its ready file, and speaks raw HTTP/1.1 to it.
//! Processes are killed when their handle drops, so a failing test leaves nothing behind.
//! Also: the I/O driver a gateway runs on (`Driver`), what its process holds (`/proc` socket
//! descriptors, RSS), bounded waits (`eventually`, `wait_closed`) and, in `scripted`, a raw-TCP
//! upstream whose every byte a test decides; in `traffic`, what the traffic-limit tests share.
#![allow(dead_code)]

pub mod legacy_sse;
pub mod scripted;
pub mod traffic;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn temp_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("tollgate-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A child process that is killed on drop.
pub struct Proc {
    pub child: Child,
    pub dir: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_ready(child: &mut Child, ready: &std::path::Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(ready) {
            if let Ok(v) = serde_json::from_str(&text) {
                return v;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(e) = child.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("process exited before ready ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "not ready within 30s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a child wrote to stderr, drained by a thread so a chatty process never blocks on a
/// full pipe (the gateway logs every upstream fault at warn).
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn drain(child: &mut Child) -> Log {
        let log = Log::default();
        if let Some(mut err) = child.stderr.take() {
            let sink = log.0.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.extend_from_slice(&buf[..n]);
                    }
                }
            });
        }
        log
    }

    pub fn text(&self) -> String {
        self.0
            .lock()
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .unwrap_or_default()
    }
}

/// The demo upstream as its own process.
pub struct Demo {
    pub addr: SocketAddr,
    pub proc: Proc,
    pub log: Log,
}

impl Demo {
    pub fn start(extra: &[&str]) -> Demo {
        Demo::start_on("127.0.0.1:0", extra)
    }

    /// A demo upstream on `addr` (e.g. again on the address of one that was stopped).
    pub fn start_on(addr: &str, extra: &[&str]) -> Demo {
        let dir = temp_dir();
        let ready = dir.join("ready.json");
        let mut child = Command::new(BIN)
            .args(["demo-upstream", "--listen", addr, "--ready-file"])
            .arg(&ready)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let v = wait_ready(&mut child, &ready);
        let log = Log::drain(&mut child);
        Demo {
            addr: v["listen"].as_str().unwrap().parse().unwrap(),
            proc: Proc { child, dir },
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

/// The I/O driver a gateway is configured with (`runtime.driver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Legacy,
}

impl Driver {
    /// The config value.
    pub fn config_value(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Legacy => "legacy",
        }
    }
    /// The `driver` label of `tollgate_workers` when a worker really runs on it.
    pub fn metric_label(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Legacy => "legacy(epoll)",
        }
    }
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub proc: Proc,
    pub log: Log,
}

/// `key: value` pairs of one config section.
type Keys = Vec<(String, String)>;

/// Builds a gateway config: `upstream` is a URL or `builtin:demo`; `extra` is more YAML (top-level keys).
pub struct GatewayBuilder {
    upstreams: Vec<(String, String, Keys)>,
    servers: Vec<(String, String)>,
    extra: String,
    workers: usize,
    driver: Option<Driver>,
    limits: Keys,
    listen: Keys,
    /// More `runtime` keys (beside `pin_workers: false` and the driver).
    runtime: Keys,
    /// `RUST_LOG` for the gateway (default `warn`: faults only).
    rust_log: &'static str,
    /// Environment variables for the gateway process.
    env: Vec<(String, String)>,
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            upstreams: vec![],
            servers: vec![],
            extra: String::new(),
            workers: 2,
            driver: None,
            limits: vec![],
            listen: vec![],
            runtime: vec![],
            rust_log: "warn",
            env: Vec::new(),
        }
    }

    /// A gateway in front of `url` at `/mcp`.
    pub fn in_front_of(url: &str) -> Gateway {
        Gateway::builder()
            .upstream("up", url)
            .serve("/mcp", "up")
            .start()
    }

    pub fn client(&self) -> Http {
        Http::connect(self.addr)
    }

    /// One 2026-07-28 (stateless) request to `path`: `params` get the per-request `_meta`
    /// (version, no client capabilities), the headers mirror the method and `name` (Mcp-Name),
    /// and `extra` headers are added (an Authorization, say).
    pub fn stateless(
        &self,
        path: &str,
        method: &str,
        name: Option<&str>,
        params: serde_json::Value,
        extra: &[(&str, &str)],
    ) -> Response {
        let mut params = params;
        params["_meta"] = serde_json::json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}});
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut h = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
        ];
        if let Some(n) = name {
            h.push(("mcp-name", n));
        }
        h.extend_from_slice(extra);
        self.client()
            .request("POST", path, &h, body.to_string().as_bytes())
    }

    pub fn metrics(&self) -> String {
        let mut h = Http::connect(self.admin.expect("admin listener"));
        let r = h.request("GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }

    /// Waits (up to 10 s) until the value of `series` (a name with its labels, as the scrape
    /// spells them; -1 when absent) is as `want`s, and returns it; panics with the scrape
    /// otherwise. For what is counted after the reply a test read (the record phase, after a
    /// close, on a thread of the gateway's own), which a scrape at once may miss.
    pub fn await_metric(&self, series: &str, want: impl Fn(f64) -> bool) -> f64 {
        let mut scrape = String::new();
        let held = eventually(Duration::from_secs(10), || {
            scrape = self.metrics();
            want(metric_value(&scrape, series))
        });
        let got = metric_value(&scrape, series);
        assert!(held, "{series} is {got} after 10 s:\n{scrape}");
        got
    }

    /// The config file the gateway was started with (a reload re-reads it).
    pub fn config_path(&self) -> PathBuf {
        self.proc.dir.join("tollgate.yaml")
    }

    /// Writes `text` as the config file and sends SIGHUP (a reload).
    pub fn reload_with(&self, text: &str) {
        std::fs::write(self.config_path(), text).unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGHUP) };
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// The socket descriptors the gateway process holds (listeners, clients, upstreams), from
    /// `/proc/<pid>/fd`.
    pub fn socket_fds(&self) -> Vec<String> {
        socket_fds(self.pid())
    }

    /// Resident memory of the gateway process in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// `tollgate_connections_open` as the admin listener reports it (-1 if absent).
    pub fn connections_open(&self) -> f64 {
        metric_value(&self.metrics(), "tollgate_connections_open")
    }

    /// Sends SIGTERM to the gateway.
    pub fn sigterm(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
    }

    /// Waits up to `bound` for the process to exit.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An initialized 2025-06-18 session on `gw`'s `/mcp`, on its own connection.
pub fn session(gw: &Gateway) -> Mcp {
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.initialize("2025-06-18");
    m
}

/// The value of an unlabelled metric line `name value` in a Prometheus scrape (-1 if absent).
pub fn metric_value(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .map_or(-1.0, |v| v.trim().parse().unwrap_or(-1.0))
}

/// The sorted tool names of a `tools/list` answer (panics, showing it, when it has none).
pub fn tool_names(r: &serde_json::Value) -> Vec<String> {
    let mut n: Vec<String> = r["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

/// Socket descriptors of process `pid`, as `fd -> socket:[inode]` lines.
pub fn socket_fds(pid: u32) -> Vec<String> {
    let mut out = vec![];
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        // A descriptor may close between the listing and the readlink: skip it.
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if t.starts_with("socket:") {
                out.push(format!("{} -> {t}", e.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    out
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB; 0 if unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A loopback port free a moment ago, for a process that takes its listen address as a flag
/// (or a config that must name its own port before the gateway starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback address where every connect is refused, for as long as this lives: a socket
/// bound there and never listening. Binding a port and dropping the listener is not enough:
/// a test running beside this one may be handed the same port the next moment and answer
/// on it (seen in CI: a "down" token endpoint answered 405).
pub struct Refused {
    addr: SocketAddr,
    _held: socket2::Socket,
}

impl Refused {
    pub fn new() -> Refused {
        // Without SO_REUSEADDR, so no other socket can bind the port while this one holds it.
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        Refused { addr, _held: s }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts listening on the held port: connects are accepted from now on.
    pub fn listen(self) -> std::net::TcpListener {
        self._held.listen(128).unwrap();
        self._held.into()
    }
}

/// Polls `cond` every 25 ms until it holds or `bound` has passed; returns whether it held.
pub fn eventually(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Reads from `s` until the peer closes it (EOF or reset) or `deadline` passes.
/// `Ok(bytes)`: closed, with every byte that arrived first; `Err(bytes)`: still open at the deadline.
pub fn read_until_closed(s: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = vec![];
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A zero read timeout means "block forever": keep a floor.
        s.set_read_timeout(Some(left.max(Duration::from_millis(5))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= deadline {
                    return Err(got);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Reset, aborted, broken: closed.
            Err(_) => return Ok(got),
        }
    }
}

impl GatewayBuilder {
    pub fn upstream(mut self, name: &str, url: &str) -> Self {
        self.upstreams.push((name.into(), url.into(), vec![]));
        self
    }
    pub fn serve(mut self, path: &str, upstream: &str) -> Self {
        self.servers.push((path.into(), upstream.into()));
        self
    }
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    /// An upstream with per-upstream keys, e.g. `[("request_timeout", "500ms")]`.
    pub fn upstream_with(mut self, name: &str, url: &str, keys: &[(&str, &str)]) -> Self {
        let keys = keys.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        self.upstreams
            .push((name.into(), url.into(), keys.collect()));
        self
    }
    /// `RUST_LOG` for the gateway process (default `warn`).
    pub fn rust_log(mut self, filter: &'static str) -> Self {
        self.rust_log = filter;
        self
    }
    /// Sets an environment variable of the gateway process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// A `runtime` key (`runtime.fixed_files`, say).
    pub fn runtime(mut self, key: &str, value: &str) -> Self {
        self.runtime.push((key.into(), value.into()));
        self
    }

    /// `runtime.driver`; `start` then checks every worker really runs on it.
    pub fn driver(mut self, d: Driver) -> Self {
        self.driver = Some(d);
        self
    }
    /// Sets a key of the `limits` section, replacing an earlier value (do not also pass
    /// `limits:` through `yaml`).
    pub fn limit(mut self, key: &str, value: &str) -> Self {
        self.limits.retain(|(k, _)| k != key);
        self.limits.push((key.into(), value.into()));
        self
    }
    /// Sets a key of the `listen` section besides `address`, replacing an earlier value (do not
    /// also pass `listen:` through `yaml`).
    pub fn listen(mut self, key: &str, value: &str) -> Self {
        self.listen.retain(|(k, _)| k != key);
        self.listen.push((key.into(), value.into()));
        self
    }
    /// Extra top-level YAML, e.g. "limits:\n  max_body_bytes: 1KiB\n".
    pub fn yaml(mut self, extra: &str) -> Self {
        self.extra.push_str(extra);
        self.extra.push('\n');
        self
    }

    pub fn config_text(&self) -> String {
        let mut y = format!(
            "workers: {}\nruntime:\n  pin_workers: false\n",
            self.workers
        );
        if let Some(d) = self.driver {
            y.push_str(&format!("  driver: {}\n", d.config_value()));
        }
        for (k, v) in &self.runtime {
            y.push_str(&format!("  {k}: {v}\n"));
        }
        if !self.extra.contains("listen:") {
            y.push_str("listen:\n  address: 127.0.0.1:0\n");
            for (k, v) in &self.listen {
                y.push_str(&format!("  {k}: {v}\n"));
            }
        }
        if !self.limits.is_empty() {
            y.push_str("limits:\n");
            for (k, v) in &self.limits {
                y.push_str(&format!("  {k}: {v}\n"));
            }
        }
        if !self.extra.contains("admin:") {
            y.push_str("admin:\n  address: 127.0.0.1:0\n");
        }
        if !self.upstreams.is_empty() {
            y.push_str("upstreams:\n");
        }
        for (n, u, keys) in &self.upstreams {
            y.push_str(&format!("  - name: {n}\n    url: \"{u}\"\n"));
            for (k, v) in keys {
                y.push_str(&format!("    {k}: {v}\n"));
            }
        }
        if !self.servers.is_empty() {
            y.push_str("servers:\n");
        }
        for (p, u) in &self.servers {
            y.push_str(&format!("  - path: {p}\n    upstream: {u}\n"));
        }
        y.push_str(&self.extra);
        y
    }

    pub fn start(self) -> Gateway {
        let driver = self.driver;
        let dir = temp_dir();
        let cfg = dir.join("tollgate.yaml");
        std::fs::write(&cfg, self.config_text()).unwrap();
        let ready = dir.join("ready.json");
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", self.rust_log)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let v = wait_ready(&mut child, &ready);
        let log = Log::drain(&mut child);
        let gw = Gateway {
            addr: v["listen"].as_str().unwrap().parse().unwrap(),
            admin: v["admin"].as_str().map(|a| a.parse().unwrap()),
            proc: Proc { child, dir },
            log,
        };
        // The driver a worker asked for is not always the one it got (io_uring falls back to
        // epoll): a test that says io_uring must really run on it.
        if let (Some(d), Some(_)) = (driver, gw.admin) {
            let m = gw.metrics();
            let want = format!("tollgate_workers{{driver=\"{}\"}}", d.metric_label());
            assert!(
                m.lines().any(|l| l.starts_with(&want)),
                "runtime.driver: {} requested but the workers run on another driver:\n{}\n{}",
                d.config_value(),
                m.lines()
                    .filter(|l| l.starts_with("tollgate_workers"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                gw.log.text()
            );
        }
        gw
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The JSON body, or for SSE the JSON of the last `data:` event.
    pub fn json(&self) -> serde_json::Value {
        if self
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
        {
            let ev = self.sse_messages();
            return ev.last().cloned().unwrap_or(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// Every JSON message carried in SSE `data:` fields, in order (the gateway's own decoder;
    /// events with empty data, like priming events, carry none).
    pub fn sse_messages(&self) -> Vec<serde_json::Value> {
        use tollgate::http::sse;
        sse::decode_all(&self.body, self.body.len(), sse::AtEnd::Dispatch)
            .unwrap()
            .into_iter()
            .filter(|e| !e.data.is_empty())
            .map(|e| serde_json::from_slice(&e.data).unwrap())
            .collect()
    }
}

/// A raw HTTP/1.1 client on one keep-alive connection.
/// HTTP/1.1 over a stream (plain TCP by default; the TLS tests use a rustls stream), with its
/// read buffer: one per connection, so keep-alive and pipelining stay in step.
pub struct Http<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
    pub host: String,
}

impl Http<TcpStream> {
    pub fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Http::over(stream, &format!("localhost:{}", addr.port()))
    }

    /// Whether the server closed the connection (EOF or reset) within `wait`; bytes that
    /// arrive first are kept. A read that merely times out is not a close.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let r = read_until_closed(&mut self.stream, Instant::now() + wait);
        self.stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        match r {
            Ok(got) => {
                self.buf.extend_from_slice(&got);
                true
            }
            Err(got) => {
                self.buf.extend_from_slice(&got);
                false
            }
        }
    }
}

impl<S: Read + Write> Http<S> {
    /// HTTP over an established `stream`; requests name `host` unless they set Host.
    pub fn over(stream: S, host: &str) -> Http<S> {
        Http {
            stream,
            buf: vec![],
            host: host.to_string(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.try_request(method, path, headers, body)
            .expect("response")
    }

    /// `request`, but `None` when the request cannot be written or no response head arrives
    /// (the server refused or closed the connection).
    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {}\r\n", self.host));
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes).ok()?;
        self.stream.flush().ok()?;
        self.read_response()
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 65536];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads one response; `None` if the connection closed before a head arrived.
    pub fn read_response(&mut self) -> Option<Response> {
        self.read_response_to(false)
    }

    /// Reads a response to a HEAD request when `head_request`: its head alone, whatever its
    /// Content-Length says (RFC 9110 §9.3.2).
    pub fn read_response_to(&mut self, head_request: bool) -> Option<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.buf) {
                let status = resp.code.unwrap();
                let hs: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.buf.drain(..n);
                if status == 100 {
                    continue;
                }
                let mut r = Response {
                    status,
                    headers: hs,
                    body: vec![],
                };
                let te = r
                    .header("transfer-encoding")
                    .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                let cl = r
                    .header("content-length")
                    .map(|v| v.parse::<usize>().unwrap());
                if head_request {
                    return Some(r);
                }
                if te {
                    r.body = self.read_chunked();
                } else if let Some(cl) = cl {
                    while self.buf.len() < cl {
                        assert!(self.fill().unwrap() > 0, "closed mid-body");
                    }
                    r.body = self.buf.drain(..cl).collect();
                } else if status != 204 && status != 304 {
                    while self.fill().unwrap_or(0) > 0 {}
                    r.body = std::mem::take(&mut self.buf);
                }
                return Some(r);
            }
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = vec![];
        loop {
            let line_end = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                assert!(self.fill().unwrap() > 0, "closed mid-chunk");
            };
            let size_str = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
            let size =
                usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap();
            self.buf.drain(..line_end + 2);
            if size == 0 {
                while !self.buf.starts_with(b"\r\n") {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        if p > 0 {
                            self.buf.drain(..p + 2);
                            continue;
                        }
                    }
                    assert!(self.fill().unwrap() > 0);
                }
                self.buf.drain(..2);
                return body;
            }
            while self.buf.len() < size + 2 {
                assert!(self.fill().unwrap() > 0, "closed mid-chunk");
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }
}

/// An MCP session over one connection.
pub struct Mcp {
    pub http: Http,
    pub path: String,
    pub session: Option<String>,
    pub version: String,
    /// Sent with every request (credentials: `bearer`, `header`).
    pub extra: Vec<(String, String)>,
    next_id: u64,
}

pub const JSON_HEADERS: [(&str, &str); 2] = [
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
];

impl Mcp {
    pub fn new(addr: SocketAddr, path: &str) -> Mcp {
        Mcp {
            http: Http::connect(addr),
            path: path.into(),
            session: None,
            version: "2025-06-18".into(),
            extra: Vec::new(),
            next_id: 1,
        }
    }

    /// Sends `Authorization: Bearer <token>` from now on (replacing an earlier one).
    pub fn bearer(&mut self, token: &str) {
        self.header("authorization", &format!("Bearer {token}"));
    }

    /// Sends `name: value` with every request from now on (replacing an earlier value).
    pub fn header(&mut self, name: &str, value: &str) {
        self.extra.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.extra.push((name.into(), value.into()));
    }

    /// initialize + notifications/initialized; returns the initialize response.
    pub fn initialize(&mut self, version: &str) -> Response {
        let body = serde_json::json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion": version, "capabilities": {}, "clientInfo": {"name":"harness","version":"1"}}});
        let mut headers: Vec<(&str, &str)> = JSON_HEADERS.to_vec();
        headers.extend(self.extra.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let r = self.http.request(
            "POST",
            &self.path.clone(),
            &headers,
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "initialize: {}", r.text());
        self.session = r.header("mcp-session-id").map(str::to_string);
        self.version = r.json()["result"]["protocolVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let n = self.post_raw(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(n.status, 202, "initialized: {}", n.text());
        r
    }

    pub fn headers(&self) -> Vec<(&str, &str)> {
        let mut h = JSON_HEADERS.to_vec();
        if let Some(s) = &self.session {
            h.push(("Mcp-Session-Id", s));
        }
        h.push(("MCP-Protocol-Version", &self.version));
        h.extend(self.extra.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        h
    }

    pub fn post_raw(&mut self, body: &[u8]) -> Response {
        self.try_send("POST", body).expect("response")
    }

    /// `method` on the endpoint with this session's headers; `None` when no response came (the
    /// gateway refused or closed the connection).
    pub fn try_send(&mut self, method: &str, body: &[u8]) -> Option<Response> {
        let path = self.path.clone();
        let headers: Vec<(String, String)> = self
            .headers()
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let hs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        self.http.try_request(method, &path, &hs, body)
    }

    pub fn request(&mut self, method: &str, params: serde_json::Value) -> Response {
        let id = self.next_id;
        self.next_id += 1;
        let body = serde_json::json!({"jsonrpc":"2.0","id":id,"method":method,"params":params});
        self.post_raw(body.to_string().as_bytes())
    }

    pub fn call_tool(&mut self, name: &str, args: serde_json::Value) -> serde_json::Value {
        let r = self.request(
            "tools/call",
            serde_json::json!({"name": name, "arguments": args}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
}

/// base64url without padding, as JWTs spell their parts.
pub fn b64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An HS256 JWT over `header` and `claims`, signed with `key`.
pub fn hs256(header: &serde_json::Value, claims: &serde_json::Value, key: &[u8]) -> String {
    let msg = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let sig = ring::hmac::sign(&k, msg.as_bytes());
    format!("{msg}.{}", b64url(sig.as_ref()))
}

/// An HS256 JWT with the usual `{"alg":"HS256","typ":"JWT"}` header.
pub fn hs256_jwt(claims: &serde_json::Value, key: &[u8]) -> String {
    hs256(
        &serde_json::json!({"alg": "HS256", "typ": "JWT"}),
        claims,
        key,
    )
}
