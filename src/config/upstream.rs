//! An upstream (`upstreams[]`, read by `file::upstreams`) as the program sees it: where it is
//! (`UpstreamTarget`, its replicas), how it is spoken to (timeouts, headers, TLS, transport,
//! era, names' prefix) and how its failures are met (retries, circuit breaker, health check).

use std::net::SocketAddr;
use std::time::Duration;

use super::credentials;

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
