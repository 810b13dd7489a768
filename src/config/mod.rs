//! Validated, typed configuration. The running program only sees these types.
//! `file` is the only module that knows the YAML format (and the only one that deserializes);
//! it turns a file into `Config` or into a list of every problem with its path in the file.
//! Here: `Config` and the gateway-wide sections; an upstream's types are in `upstream`, an
//! endpoint's in `server`.

pub mod auth;
pub mod credentials;
mod file;
pub mod reload;
mod server;
pub mod telemetry;
mod upstream;

pub use auth::{Auth, ServerAuth};
pub use file::{
    load_file, load_str, load_str_with_env, parse_duration, parse_http_url, render_duration,
    render_effective, ConfigErrors,
};
pub use server::{LegacyPaths, NameFilter, PrefixNames, RegoConfig, Server, ServerUpstream};
pub use upstream::{
    CircuitBreaker, HeaderSource, HealthCheck, HttpTarget, Retries, Transport, Upstream,
    UpstreamEra, UpstreamTarget, UpstreamTls,
};

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Worker threads, one monoio runtime each, pinned to cores. `workers: auto` = number of cores.
    pub workers: NonZeroUsize,
    pub listen: Listen,
    pub limits: Limits,
    pub admin: Admin,
    pub session: Session,
    pub shutdown: Shutdown,
    pub runtime: Runtime,
    pub log: Log,
    /// Upstream MCP servers, referenced by index from `servers`.
    pub upstreams: Vec<Upstream>,
    /// Endpoints the gateway serves (path → upstream). Sorted by path, unique.
    pub servers: Vec<Server>,
    /// `auth`: issuers, API keys, mTLS and development principals (`policy::authn`).
    pub auth: Auth,
    /// `traffic`: rate limits, concurrency limits and quotas (`policy::traffic`, `proxy::limit`).
    pub traffic: std::sync::Arc<crate::policy::traffic::Traffic>,
    /// `audit`: the audit log (`observe::audit`); off by default.
    pub audit: std::sync::Arc<crate::observe::audit::Settings>,
    /// `observe`: per-tool metric labels.
    pub observe: Observe,
    /// `tracing`: trace context and span export (`telemetry`).
    pub tracing: telemetry::Tracing,
}

/// `observe:`.
#[derive(Clone, Debug)]
pub struct Observe {
    /// `observe.tools`, default none: tool globs (exposed names) that get a label of their own
    /// in the per-tool metrics, besides the tools an authorization or traffic rule names.
    pub tools: Option<crate::mcp::names::Filter>,
    /// `observe.max_tool_series`, default 100: tool labels the process makes at most; calls of
    /// further tools are counted as `other`.
    pub max_tool_series: usize,
}

impl Config {
    /// Whether any key names tools (`observe.tools`, a rule's `tools`): otherwise every call
    /// is `other`, and the tool's name is not even looked up.
    pub fn names_tools(&self) -> bool {
        self.observe.tools.is_some()
            || self.traffic.rules.iter().any(|r| r.tools.is_some())
            || self.servers.iter().any(|s| {
                s.rules
                    .as_ref()
                    .is_some_and(|r| r.rules.iter().any(|r| r.tools.is_some()))
            })
    }

    /// Whether tool `name` on server `server` gets a label of its own (named by config).
    pub fn names_tool(&self, server: usize, name: &str) -> bool {
        self.observe.tools.as_ref().is_some_and(|f| f.allows(name))
            || self
                .traffic
                .rules
                .iter()
                .any(|r| r.tools.as_ref().is_some_and(|f| f.allows(name)))
            || self.servers.get(server).is_some_and(|s| {
                s.rules.as_ref().is_some_and(|r| {
                    r.rules
                        .iter()
                        .any(|r| r.tools.as_ref().is_some_and(|f| f.allows(name)))
                })
            })
    }
}

#[derive(Clone, Debug)]
pub struct Listen {
    /// `listen.address`, default 127.0.0.1:8080.
    pub addr: SocketAddr,
    /// `listen.backlog`, default 1024.
    pub backlog: u32,
    /// `listen.max_connections_per_worker`, default 10000. Beyond it: 503 and close.
    pub max_connections_per_worker: usize,
    /// `listen.allowed_hosts`. Empty list in the file = default: loopback names on a loopback
    /// listener (localhost, 127.0.0.1, [::1], with any port), any host otherwise.
    pub allowed_hosts: HostRule,
    /// `listen.allowed_origins`. Requests without `Origin` always pass; with one, it must be listed,
    /// be same-origin with the request's authority, or (default on a loopback listener) be a
    /// loopback origin. An invalid Origin is refused under any rule.
    pub allowed_origins: OriginRule,
    /// `listen.tls`: absent or null = plain HTTP; set = every connection is TLS first.
    pub tls: Option<ListenTls>,
}

/// `listen.tls`: the listener's certificate and key (PEM files), and client certificates.
/// `server` is built when the config is loaded (every file problem is a config problem at its
/// key); a reload loads a new `Config`, which re-reads the files.
#[derive(Clone)]
pub struct ListenTls {
    /// `listen.tls.cert_file`: the certificate chain, leaf first.
    pub cert_file: String,
    /// `listen.tls.key_file`: its private key (never shown).
    pub key_file: String,
    /// `listen.tls.client_ca_file`: CA certificates client certificates must chain to (mTLS).
    pub client_ca_file: Option<String>,
    /// `listen.tls.client_auth`: `required` (default with a client_ca_file) or `optional`.
    pub client_auth: crate::tls::ClientAuth,
    pub server: std::sync::Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ListenTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_ca_file", &self.client_ca_file)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRule {
    /// Any Host header (non-loopback listener with no list).
    Any,
    /// localhost / 127.0.0.1 / [::1], any port.
    Loopback,
    /// Exactly these hostnames (lower-case, compared without port; `*.example.com` allowed).
    List(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginRule {
    /// Allow http(s)://localhost|127.0.0.1|[::1](:port).
    pub loopback: bool,
    /// Exact origins, lower-case, e.g. `https://app.example.com`. `*` allows every origin.
    pub list: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// `limits.max_header_bytes`, default 16384 (request line + headers). Over → 431.
    pub max_header_bytes: usize,
    /// `limits.max_request_line_bytes`, default 8192 (method, target, version; not the CRLF),
    /// never more than `max_header_bytes`. Over → 414.
    pub max_request_line_bytes: usize,
    /// `limits.max_headers`, default 64. Over → 431.
    pub max_headers: usize,
    /// `limits.max_body_bytes`, default 4 MiB. Over → 413.
    pub max_body_bytes: usize,
    /// `limits.header_read_timeout`, default 10s: whole head must arrive in this time. Over → 408.
    pub header_read_timeout: Duration,
    /// `limits.body_read_timeout`, default 30s. Over → 408.
    pub body_read_timeout: Duration,
    /// `limits.idle_timeout`, default 60s: keep-alive connection with no request is closed.
    pub idle_timeout: Duration,
    /// `limits.write_timeout`, default 30s: a client that does not read its response is dropped.
    pub write_timeout: Duration,
    /// `limits.tls_handshake_timeout`, default 10s: a TLS listener's handshake must end within
    /// this after accept, or the connection is closed.
    pub tls_handshake_timeout: Duration,
    /// `limits.max_json_depth`, default 64: deeper JSON bodies are rejected (-32700).
    pub max_json_depth: u32,
    /// `limits.max_batch_len`, default 100: longest JSON-RPC batch (2025-03-26 sessions only).
    pub max_batch_len: usize,
    /// `limits.max_batch_concurrency`, default 8: upstream requests one batch on a federated
    /// endpoint has in flight at once (the rest wait their turn).
    pub max_batch_concurrency: usize,
    /// `limits.max_legacy_streams`, default 1024: legacy (HTTP+SSE) upstream streams one worker
    /// holds (one per client session with such an upstream). Over → initialize refused (503).
    pub max_legacy_streams: usize,
    /// `limits.legacy_buffered_messages`, default 64: server→client messages of a legacy
    /// upstream kept while the client has no GET stream open; beyond it they are dropped (counted).
    pub legacy_buffered_messages: usize,
    /// `limits.legacy_sse_streams_per_worker`, default 1024: legacy HTTP+SSE streams one worker
    /// holds open at once. Over → 503 with Retry-After.
    pub legacy_sse_streams_per_worker: usize,
    /// `limits.legacy_sse_queued_messages`, default 64: messages waiting on one legacy stream
    /// (POSTed and not yet sent on, or to be written to a client that reads slowly). A POST
    /// beyond it → 503; a reader that falls that far behind has its stream ended.
    pub legacy_sse_queued_messages: usize,
    /// `limits.legacy_sse_keepalive`, default 15s: a `:` comment on an idle legacy stream.
    pub legacy_sse_keepalive: Duration,
    /// `limits.listen_streams_per_worker`, default 1024: 2026-07-28 `subscriptions/listen`
    /// streams one worker holds open at once. Over → 503 with Retry-After.
    pub listen_streams_per_worker: usize,
    /// `limits.listen_keepalive`, default 15s: a `:` comment on an idle listen stream the
    /// gateway writes itself (a federated endpoint's merged one).
    pub listen_keepalive: Duration,
    /// `limits.held_sessions_per_upstream`, default 4: upstream sessions one worker holds with
    /// a session-era upstream for clients of the stateless revision (`proxy::held`), each
    /// carrying one request at a time. A request that finds all busy waits, up to the
    /// upstream's `request_timeout`; then it is refused (503).
    pub held_sessions_per_upstream: usize,
}

#[derive(Clone, Debug)]
pub struct Admin {
    /// `admin.address`, default 127.0.0.1:9090; `admin: null`/`admin.address: null` disables it.
    pub addr: Option<SocketAddr>,
    /// `admin.upkeep_interval`, default 5s: how often histograms are drained.
    pub upkeep_interval: Duration,
    /// `admin.request_timeout`, default 5s: the whole admin request, from accept through reading
    /// the head to writing the response. A client still sending or reading after it is cut off.
    pub request_timeout: Duration,
    /// `admin.max_connections`, default 64: admin connections served at once. Beyond it: 503
    /// and close.
    pub max_connections: usize,
}

#[derive(Clone, Debug)]
pub struct Session {
    /// 32-byte key sealing session ids. From `session.key` (64 hex chars), else the env var named
    /// by `session.key_env` (default `TOLLGATE_SESSION_KEY`), else random per process.
    pub key: [u8; 32],
    pub key_source: KeySource,
    /// `session.ttl`, default 24h: absolute lifetime of a session id.
    pub ttl: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    File,
    Env,
    /// Sessions do not survive a restart and are not valid on other instances.
    Generated,
}

#[derive(Clone, Debug)]
pub struct Shutdown {
    /// `shutdown.drain_timeout`, default 30s.
    pub drain_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Runtime {
    /// `runtime.driver`: `auto` (io_uring, falling back to epoll), `io_uring`, or `legacy`.
    pub driver: Driver,
    /// `runtime.pin_workers`, default true.
    pub pin_workers: bool,
    /// `runtime.uring_entries`, default 1024.
    pub uring_entries: u32,
    /// `runtime.fixed_files`, default 16384: slots of each worker ring's table of registered
    /// files (0: none). Connections past them work as before, each counted in
    /// `tollgate_fixed_file_misses_total`.
    pub fixed_files: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Auto,
    IoUring,
    Legacy,
}

#[derive(Clone, Debug)]
pub struct Log {
    /// `log.level`, default `info` (an EnvFilter directive; `RUST_LOG` overrides).
    pub level: String,
    /// `log.format`: `text` (default) or `json`.
    pub json: bool,
    /// `log.access`: which requests get an access line (`refusals`, default; `all`; `off`).
    pub access: crate::observe::access::AccessLog,
}
