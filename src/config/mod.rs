//! Validated, typed configuration. The running program only sees these types.
//! `file` is the only module that knows the YAML format (and the only one that deserializes);
//! it turns a file into `Config` or into a list of every problem with its path in the file.

pub mod auth;
pub mod credentials;
mod file;
pub mod reload;
pub mod telemetry;

pub use auth::{Auth, ServerAuth};
pub use file::{
    load_file, load_str, load_str_with_env, parse_duration, parse_http_url, render_duration,
    render_effective, ConfigErrors,
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

/// `Debug` is written by hand: header values are credentials and must not reach a log line.
#[derive(Clone)]
pub struct Upstream {
    /// `upstreams[].name`: unique, `[A-Za-z0-9_.-]{1,64}`; used in metrics labels and error messages.
    pub name: String,
    /// The first of `replicas` (`url`, or `replicas[0]`).
    pub target: UpstreamTarget,
    /// `url` (one replica) or `replicas: [url, …]`: the places that serve this upstream, in the
    /// order written, without duplicates; http(s) only when more than one. Requests that open a
    /// session or need none go to the least busy healthy one; sessions stay on theirs
    /// (`proxy::replicas`).
    pub replicas: Vec<UpstreamTarget>,
    /// `health`: the active health check of each replica (upstreams with several replicas).
    pub health: HealthCheck,
    /// `connect_timeout`, default 2s.
    pub connect_timeout: Duration,
    /// `request_timeout`, default 60s: from sending the request to the upstream's response head.
    pub request_timeout: Duration,
    /// `idle_timeout`, default 4s: pooled idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// `max_idle_per_worker`, default 256.
    pub max_idle_per_worker: usize,
    /// `unhealthy_after`, default 3: consecutive connect failures or response-head timeouts
    /// (on any worker, with no success since) after which the upstream is known-down and
    /// `/readyz` answers 503. Range 1..=1000000.
    pub unhealthy_after: u32,
    /// `headers`: sent to this upstream on every request (its own credentials). Names lower-case;
    /// values resolved (`${env:NAME}` and `${file:/path}` already read, `$${` unescaped).
    pub headers: Vec<(String, String)>,
    /// Where each of `headers` came from, same order: lets `tollgate check` show the reference
    /// instead of the secret it read.
    pub header_sources: Vec<HeaderSource>,
    /// `credentials`: the gateway obtains a bearer token for this upstream (OAuth2 client
    /// credentials or RFC 8693 token exchange); `None` = only `headers`.
    pub credentials: Option<Box<credentials::Credentials>>,
    /// `https://` URLs only: the TLS client config and the name sent and verified.
    pub tls: Option<UpstreamTls>,
    /// `prefix`: what this upstream's tool and prompt names are prefixed with on a server that
    /// prefixes names (several upstreams, or `prefix_names: always`). `None` = its name;
    /// `Some("")` = unprefixed (its names are exposed as they are).
    pub prefix: Option<String>,
    /// `separator`, default `__`: between the prefix and the name.
    pub separator: String,
    /// `era`, default `auto`: which MCP era the upstream speaks, for clients of the other era.
    pub era: UpstreamEra,
    /// `transport`, default `streamable_http`; `sse`: the 2024-11-05 HTTP+SSE transport (the
    /// URL is the upstream's SSE URL; see `proxy::legacy`).
    pub transport: Transport,
    /// `tool_timeouts`, default none: `tools/call` of a tool whose own name matches a glob
    /// waits this long (instead of `request_timeout`) for the response head, and at most this
    /// long between body reads. First match wins, in the order written.
    pub tool_timeouts: Vec<(String, Duration)>,
    /// `retries`: new connections that could not be opened (nothing reached the upstream).
    pub retries: Retries,
    /// `circuit_breaker`: fail fast while the upstream keeps failing.
    pub circuit_breaker: CircuitBreaker,
}

/// `upstreams[].retries`. Only what the upstream cannot have processed is retried: a connect
/// that failed (refused, timed out, TLS handshake) and, as always, a pooled connection found
/// closed before any response byte (that one once, on a new connection, not counted here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retries {
    /// `attempts`, default 1: further connect attempts after a failed one (0 = none).
    pub attempts: u32,
    /// `backoff`, default 50ms: the wait before each further attempt.
    pub backoff: Duration,
}

/// `upstreams[].circuit_breaker`: closed → open after `consecutive_failures` (connect failures,
/// response-head timeouts, connections closed before a reply, 5xx replies; on any worker, no
/// success since) → fails fast for `open_for` → half-open: `half_open_probes` requests are let
/// through; a success closes it, a failure opens it again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CircuitBreaker {
    /// `consecutive_failures`, default 5; 0 = no breaker.
    pub consecutive_failures: u32,
    /// `error_ratio`, default 0 (off): also open when, within one `window` on one worker, at
    /// least `min_requests` exchanges were made and this share of them failed.
    pub error_ratio: f64,
    /// `min_requests`, default 20.
    pub min_requests: u32,
    /// `window`, default 10s.
    pub window: Duration,
    /// `open_for`, default 10s.
    pub open_for: Duration,
    /// `half_open_probes`, default 1: requests let through at once while half-open.
    pub half_open_probes: u32,
}

/// `upstreams[].health`: a background probe of each replica of an upstream with several
/// (`proxy::replicas`): `GET path` expecting any answer below 500 within `timeout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// `interval`, default 5s: between two probes of one replica.
    pub interval: Duration,
    /// `timeout`, default 2s: connect, (TLS,) request and the response's status line.
    pub timeout: Duration,
    /// `unhealthy_after`, default 2: failed probes in a row that mark a healthy replica down.
    pub unhealthy_after: u32,
    /// `healthy_after`, default 2: passed probes in a row that mark a down replica healthy.
    pub healthy_after: u32,
    /// `path`, default none: the replica's own URL path (its MCP endpoint).
    pub path: Option<String>,
}

/// `upstreams[].era`: the protocol era an upstream speaks. The gateway translates between a
/// client's era and its upstream's (see `proxy::held`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamEra {
    /// Learned per worker: the upstream answers `server/discover` naming 2026-07-28 (stateless),
    /// or it does not (session era); learned again every few minutes.
    Auto,
    /// Sessions only (2024-11-05 … 2025-11-25): stateless clients reach it through a session the
    /// gateway holds per worker.
    Session,
    /// It serves 2026-07-28 requests (it may serve sessions too).
    Stateless,
}

impl UpstreamEra {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamEra::Auto => "auto",
            UpstreamEra::Session => "session",
            UpstreamEra::Stateless => "stateless",
        }
    }
}

/// How the gateway speaks to an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP (2025-03-26 and later): one endpoint, POST/GET/DELETE, sessions by header.
    StreamableHttp,
    /// HTTP+SSE (2024-11-05): `GET` the SSE URL, POST to the endpoint it announces; the
    /// upstream session is that stream.
    Sse,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable_http",
            Transport::Sse => "sse",
        }
    }
}

impl Upstream {
    /// The prefix its names get on a server that prefixes names (`None`: unprefixed).
    pub fn effective_prefix(&self) -> Option<&str> {
        match self.prefix.as_deref() {
            None => Some(self.name.as_str()),
            Some("") => None,
            Some(p) => Some(p),
        }
    }
}

/// An https upstream's TLS (`upstreams[].tls`, optional): roots and the name to verify.
#[derive(Clone)]
pub struct UpstreamTls {
    /// `tls.ca_file`: CA certificates (PEM) to verify the upstream against; `None` = the
    /// system's roots.
    pub ca_file: Option<String>,
    /// `tls.server_name`: sent as SNI and verified against the certificate; default the URL's host.
    pub server_name: String,
    /// Whether `server_name` was written (else it is the URL's host).
    pub server_name_set: bool,
    pub name: rustls::pki_types::ServerName<'static>,
    pub client: std::sync::Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca_file", &self.ca_file)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, _)| (n.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("target", &self.target)
            .field("replicas", &self.replicas)
            .field("health", &self.health)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_idle_per_worker", &self.max_idle_per_worker)
            .field("unhealthy_after", &self.unhealthy_after)
            .field("tool_timeouts", &self.tool_timeouts)
            .field("retries", &self.retries)
            .field("circuit_breaker", &self.circuit_breaker)
            .field("era", &self.era)
            .field("headers", &headers)
            .field("header_sources", &self.header_sources)
            .field("tls", &self.tls)
            .field("prefix", &self.prefix)
            .field("separator", &self.separator)
            .finish()
    }
}

/// How an upstream header value was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderSource {
    /// The value itself, in the file.
    Literal,
    /// `${env:NAME}`: read from the environment variable NAME at load.
    Env(String),
    /// `${file:PATH}`: read from the file PATH at load, one trailing newline trimmed.
    File(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// `url: builtin:demo`: the built-in demo MCP server, started in-process on 127.0.0.1:0.
    BuiltinDemo,
    /// `url: http://host[:port]/path` or `https://…` (`HttpTarget::tls`).
    Http(HttpTarget),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTarget {
    /// Host as written (name or IP), without brackets.
    pub host: String,
    pub port: u16,
    /// Path with query, starting with `/`.
    pub path: String,
    /// Value for the `Host` header sent upstream (`host` or `host:port`).
    pub authority: String,
    /// `https://`: TLS to the upstream (default port 443).
    pub tls: bool,
}

impl HttpTarget {
    /// The URL, spelled one way (`scheme://host:port/path`): what a replica's id is made from,
    /// so `http://h/p` and `http://h:80/p` are the same replica.
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}:{}{}", self.port, self.path)
    }

    /// Resolves the address now (called at start and, later, on reload).
    pub fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs;
        Ok((self.host.as_str(), self.port).to_socket_addrs()?.collect())
    }
}

#[derive(Clone, Debug)]
pub struct Server {
    /// `servers[].path`: the MCP endpoint path, e.g. `/mcp`. Exact match (a trailing `/` is also accepted).
    pub path: String,
    /// Where it is in the file's `servers` list (servers are kept sorted by path), for
    /// messages that name its keys (`tollgate check --probe`); 0 for the built-in default.
    pub file_index: usize,
    /// `servers[].upstreams` (or the single `upstream`): the upstreams behind this endpoint, in
    /// listing order, each with how its names are exposed here. Never empty, no repeats.
    pub upstreams: Vec<ServerUpstream>,
    /// `servers[].prefix_names`: `auto` (default: prefix when more than one upstream) or `always`.
    pub prefix_names: PrefixNames,
    /// `servers[].max_name_length`, default 64 (16..=128): longest exposed tool or prompt name.
    pub max_name_length: usize,
    /// `servers[].tools`: which tools (by exposed name) this endpoint exposes.
    pub tools: NameFilter,
    /// `servers[].prompts`: which prompts (by exposed name).
    pub prompts: NameFilter,
    /// `servers[].resources`: which resources and templates (by URI / URI template).
    pub resources: NameFilter,
    /// `servers[].list_page_size`, default 100 (1..=10000): items per page of an aggregated list.
    pub list_page_size: usize,
    /// `servers[].list_refresh_interval`, default 5m: how old a worker's routing tables may get
    /// before the next call that needs them lists the upstreams again.
    pub list_refresh_interval: Duration,
    /// `servers[].legacy_sse`, default true: the legacy HTTP+SSE transport (2024-11-05) is
    /// offered to clients at `<path>/sse` (the event stream) and `<path>/messages` (the POSTs).
    pub legacy: Option<LegacyPaths>,
    /// `servers[].offer_stateless`, default `auto`: whether `server/discover` offers 2026-07-28
    /// to a client that asks for sampling, elicitation or roots while an upstream here is reached
    /// through held sessions (which cannot carry them). `auto`: not offered, so an "auto" client
    /// keeps them in a session of its own; `always` (true): offered, and that upstream's
    /// requests for them are answered -32601.
    pub offer_stateless_always: bool,
    /// `servers[].auth`: absent = open endpoint; present = every request must authenticate.
    pub auth: Option<ServerAuth>,
    /// `servers[].rules`, default none: the endpoint's authorization rules, compiled
    /// (`policy::rules`). Present (even empty), the endpoint is federated: lists are filtered
    /// and every call decided per caller.
    pub rules: Option<std::sync::Arc<crate::policy::rules::Rules>>,
    /// `servers[].rego`, default null (off): an OPA Rego policy every request here is decided by.
    pub rego: Option<RegoConfig>,
}

/// `servers[].rego`: the policy files, compiled when the config is loaded (and reloaded).
#[derive(Clone, Debug)]
pub struct RegoConfig {
    /// `policy`: the `.rego` files (one or more), as written (relative to the working directory).
    pub policy: Vec<String>,
    /// `query`, default `data.tollgate.decision`: the rule whose value is the decision.
    pub query: String,
    /// `cache_entries`, default 1024 (0..=1000000, 0 = off): cacheable decisions one worker keeps.
    pub cache_entries: usize,
    /// `cache_ttl`, default 60s (at least 1s): how long a cached decision holds (never past the
    /// principal's `expires_at`).
    pub cache_ttl: Duration,
    /// `eval_timeout`, default 10ms (1ms..=10s): one evaluation running longer is stopped and
    /// denies (`rego_error`): a runaway policy cannot hold a worker's core.
    pub eval_timeout: Duration,
    /// The compiled policy; each worker makes its `policy::rego::RegoPolicy` from it.
    pub program: std::sync::Arc<crate::policy::rego::RegoProgram>,
}

/// Where a server's legacy HTTP+SSE transport lives (`servers[].legacy_sse`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyPaths {
    /// `GET` opens the event stream: `<path>/sse` (`/sse` for the server at `/`).
    pub sse: String,
    /// Where the `endpoint` event tells the client to POST: `<path>/messages`.
    pub messages: String,
}

impl LegacyPaths {
    /// The legacy paths of the server at `path`.
    pub fn of(path: &str) -> Self {
        let base = path.trim_end_matches('/');
        LegacyPaths {
            sse: format!("{base}/sse"),
            messages: format!("{base}/messages"),
        }
    }
}

impl Server {
    /// The first upstream (the only one on a plain endpoint).
    pub fn primary(&self) -> usize {
        self.upstreams.first().map_or(0, |u| u.upstream)
    }

    /// `a` or `a+b+c` (upstream names, for summaries).
    pub fn upstream_names(&self, upstreams: &[Upstream]) -> String {
        self.upstreams
            .iter()
            .map(|su| upstreams.get(su.upstream).map_or("?", |u| u.name.as_str()))
            .collect::<Vec<_>>()
            .join("+")
    }

    /// Everything that decides what the endpoint serves, for reload's change summary.
    pub fn describe(&self, upstreams: &[Upstream]) -> String {
        format!(
            "{} {:?} {} {:?} {:?} {:?} {} {:?}",
            self.upstream_names(upstreams),
            self.prefix_names,
            self.max_name_length,
            (&self.tools.allow, &self.tools.deny),
            (&self.prompts.allow, &self.prompts.deny),
            (&self.resources.allow, &self.resources.deny),
            self.list_page_size,
            self.list_refresh_interval,
        )
    }

    /// Whether the gateway aggregates this endpoint (opens every upstream's session, merges
    /// lists, routes by name) instead of passing one upstream through untouched: more than one
    /// upstream, prefixed names, or a filter.
    pub fn federated(&self) -> bool {
        self.upstreams.len() > 1
            || self.prefix_names == PrefixNames::Always
            || self.rules.is_some()
            || self.rego.is_some()
            || !(self.tools.filter.is_all()
                && self.prompts.filter.is_all()
                && self.resources.filter.is_all())
    }
}

/// One upstream of a server.
#[derive(Clone, Debug)]
pub struct ServerUpstream {
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    /// How its tool and prompt names are exposed on this server.
    pub namer: crate::mcp::names::Namer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixNames {
    /// Prefix names when the server has more than one upstream.
    Auto,
    /// Prefix names even for a single upstream.
    Always,
}

/// An allow/deny list of globs (`servers[].tools` etc.), as written and compiled.
#[derive(Clone, Debug, Default)]
pub struct NameFilter {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub filter: crate::mcp::names::Filter,
}
