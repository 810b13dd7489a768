//! The config file format (YAML) → validated `Config`, and back to text for `render_effective`.
//! The only module that knows the file's keys and spellings; it reports every problem at once,
//! each as `path: problem`. It must not leak secrets (session key, header values) into messages.

mod audit;
mod auth;
mod credentials;
mod extract;
mod formats;
mod headers;
mod limits;
mod listen;
mod observe;
mod rego;
mod render;
mod rules;
mod servers;
mod session;
mod telemetry;
mod tls;
mod traffic;
mod upstreams;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::*;
use crate::observe::access::AccessLog;
use extract::{boolean, count, describe, item, string, Problems, Section};
use headers::{header_map, header_value};
use limits::limits;
use listen::{admin, listen};
use session::session;
use upstreams::{unknown_upstream, upstream, upstream_with_defaults};

pub use render::render_effective;

/// Every problem in a config file, one per line, each `path: problem`.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}
impl std::error::Error for ConfigErrors {}

/// Default `session.key_env`.
pub const DEFAULT_KEY_ENV: &str = "TOLLGATE_SESSION_KEY";

/// Loads a config from YAML text, reading the session key variable from the process environment.
/// An `http(s)://host[:port]/path` URL as the config reads upstream URLs (for URLs the gateway
/// fetches itself: key sets, authorization server metadata).
pub fn parse_http_url(s: &str) -> Result<crate::config::UpstreamTarget, String> {
    formats::upstream_url(s)
}

/// A duration as the config writes them (`250ms`, `10s`, `5m`, `24h`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    formats::duration(s)
}

/// A duration spelled as the config writes them (the shortest exact spelling).
pub fn render_duration(d: std::time::Duration) -> String {
    formats::render_duration(d)
}

pub fn load_str(text: &str) -> Result<Config, ConfigErrors> {
    // var_os: a non-UTF-8 value must be reported as a bad key, not silently treated as unset.
    load_str_with_env(text, &|name| {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    })
}

pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
    load_str(&text)
}

/// `load_str` with the environment injected (`env(name)` = the variable's value, if set).
pub fn load_str_with_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut root: Value = serde_yaml_ng::from_str(text).map_err(|e| syntax_error(&e))?;
    root.apply_merge().map_err(|e| syntax_error(&e))?;
    let mut p = Problems::default();
    let config = build(&mut p, &root, env);
    if p.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(p.in_file_order(&root)))
    }
}

fn syntax_error(e: &serde_yaml_ng::Error) -> ConfigErrors {
    let msg = e.to_string();
    ConfigErrors(vec![match e.location() {
        // libyaml's message repeats the location; say it once, in front, where tools look.
        Some(l) => {
            let msg = msg.replacen(
                &format!(" at line {} column {}", l.line(), l.column()),
                "",
                1,
            );
            format!(
                "line {}, column {}: YAML syntax error: {msg}",
                l.line(),
                l.column()
            )
        }
        None => format!("YAML syntax error: {msg}"),
    }])
}

const TOP_KEYS: &[&str] = &[
    "workers",
    "listen",
    "limits",
    "admin",
    "session",
    "shutdown",
    "runtime",
    "log",
    "upstreams",
    "servers",
    "auth",
    "traffic",
    "audit",
    "observe",
    "tracing",
];

/// Defaults as constants, so `render` and the tests agree with the doc comments in `mod.rs`.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Duration;
    pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
    pub const ADMIN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090));
    pub const BACKLOG: u64 = 1024;
    pub const MAX_CONNECTIONS_PER_WORKER: u64 = 10_000;
    pub const MAX_HEADER_BYTES: usize = 16 * 1024;
    /// Unless `max_header_bytes` is smaller: then that.
    pub const MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
    /// The shortest useful request line (`POST /mcp HTTP/1.1` is 18 bytes) with room to spare.
    pub const MIN_REQUEST_LINE_BYTES: u64 = 32;
    pub const MAX_HEADERS: u64 = 64;
    pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_JSON_DEPTH: u64 = 64;
    pub const MAX_BATCH_LEN: u64 = 100;
    pub const MAX_BATCH_CONCURRENCY: u64 = 8;
    /// Legacy (HTTP+SSE) upstream streams one worker holds: one per client session with such an
    /// upstream, each an open connection.
    pub const MAX_LEGACY_STREAMS: u64 = 1024;
    /// Messages a legacy upstream stream keeps for a client that has no GET stream open.
    pub const LEGACY_BUFFERED_MESSAGES: u64 = 64;
    pub const LEGACY_SSE_STREAMS_PER_WORKER: usize = 1024;
    /// Enough for the concurrent POSTs an agent makes; a stream this far behind is stuck.
    pub const LEGACY_SSE_QUEUED_MESSAGES: usize = 64;
    pub const HELD_SESSIONS_PER_UPSTREAM: usize = 4;
    /// Below the 30-60 s after which proxies commonly cut an idle response.
    pub const LEGACY_SSE_KEEPALIVE: Duration = Duration::from_secs(15);
    /// As many as legacy streams: each holds a client connection and one upstream stream per
    /// federated member.
    pub const LISTEN_STREAMS_PER_WORKER: usize = 1024;
    pub const LISTEN_KEEPALIVE: Duration = Duration::from_secs(15);
    pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
    pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    /// Scrapes and probes come a few at a time; each admin connection is a thread while it lasts.
    pub const ADMIN_MAX_CONNECTIONS: u64 = 64;
    pub const MAX_ADMIN_CONNECTIONS: u64 = 4096;
    pub const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const URING_ENTRIES: u64 = 1024;
    /// Registered-file slots per worker ring: `listen.max_connections_per_worker`'s default
    /// plus room for upstream connections.
    pub const FIXED_FILES: u64 = 16_384;
    pub const LOG_LEVEL: &str = "info";
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    /// Below the 5 s after which Node (express) and uvicorn close idle keep-alive connections.
    pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
    /// Idle upstream connections are cheap; closing them when more than this many requests
    /// were in flight turns every request beyond it into a TCP connect (measured: sessions-10k).
    pub const MAX_IDLE_PER_WORKER: u64 = 256;
    /// Three in a row rules out one unlucky connect without keeping a dead upstream "ready" long.
    pub const UNHEALTHY_AFTER: u64 = 3;
    pub const RETRY_ATTEMPTS: u64 = 1;
    pub const RETRY_BACKOFF: Duration = Duration::from_millis(50);
    pub const BREAKER_FAILURES: u64 = 5;
    pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(10);
    pub const BREAKER_PROBES: u64 = 1;
    pub const BREAKER_MIN_REQUESTS: u64 = 20;
    pub const BREAKER_WINDOW: Duration = Duration::from_secs(10);
    /// Replicas of one upstream (`upstreams[].replicas`).
    pub const MAX_REPLICAS: usize = 64;
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    /// Two in a row: one lost probe neither takes a replica out nor puts a dead one back.
    pub const HEALTH_UNHEALTHY_AFTER: u64 = 2;
    pub const HEALTH_HEALTHY_AFTER: u64 = 2;
    pub const MAX_WORKERS: u64 = 1024;
    /// io_uring refuses more submission entries than this (IORING_MAX_ENTRIES).
    pub const MAX_URING_ENTRIES: u64 = 32_768;
    /// The kernel's own bound on a ring's registered files.
    pub const MAX_FIXED_FILES: u64 = 1 << 20;
    /// Items per page of an aggregated list (what most clients ask for at once anyway).
    pub const LIST_PAGE_SIZE: usize = 100;
    /// Routing tables older than this are rebuilt by the next request that needs them.
    pub const LIST_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
    /// `servers[].rego`: cacheable decisions per worker, and how long one holds.
    pub const REGO_CACHE_ENTRIES: u64 = 1024;
    pub const REGO_CACHE_TTL: Duration = Duration::from_secs(60);
    pub const REGO_EVAL_TIMEOUT: Duration = Duration::from_millis(10);
}

const MS: Duration = Duration::from_millis(1);

fn build(p: &mut Problems, root: &Value, env: &dyn Fn(&str) -> Option<String>) -> Config {
    let top = Section::open(p, String::new(), Some(root), TOP_KEYS);
    let workers = top.get(p, "workers", auto_workers(), |v| match v {
        Value::String(s) if s == "auto" => Ok(auto_workers()),
        Value::Number(n) => n
            .as_u64()
            .filter(|n| (1..=defaults::MAX_WORKERS).contains(n))
            .and_then(|n| usize::try_from(n).ok())
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| format!("expected auto or a number from 1 to 1024, got {n}")),
        other => Err(format!(
            "expected auto or a number from 1 to 1024, got {}",
            describe(other)
        )),
    });
    let listen = listen(p, &top);
    let limits = limits(p, &top);
    let admin = admin(p, &top);
    let session = session(p, &top, env);

    let s = Section::open(
        p,
        "shutdown".into(),
        top.raw("shutdown"),
        &["drain_timeout"],
    );
    let shutdown = Shutdown {
        drain_timeout: s.get(
            p,
            "drain_timeout",
            defaults::DRAIN_TIMEOUT,
            extract::duration(Duration::ZERO),
        ),
    };

    let s = Section::open(
        p,
        "runtime".into(),
        top.raw("runtime"),
        &["driver", "pin_workers", "uring_entries", "fixed_files"],
    );
    let runtime = Runtime {
        driver: s.get(p, "driver", Driver::Auto, |v| match string(v)? {
            "auto" => Ok(Driver::Auto),
            "io_uring" => Ok(Driver::IoUring),
            "legacy" => Ok(Driver::Legacy),
            other => Err(format!("expected auto, io_uring or legacy, got {other:?}")),
        }),
        pin_workers: s.get(p, "pin_workers", true, boolean),
        uring_entries: s.get(p, "uring_entries", defaults::URING_ENTRIES as u32, |v| {
            count(1, defaults::MAX_URING_ENTRIES)(v).map(|n| n as u32)
        }),
        fixed_files: s.get(p, "fixed_files", defaults::FIXED_FILES as u32, |v| {
            count(0, defaults::MAX_FIXED_FILES)(v).map(|n| n as u32)
        }),
    };

    let s = Section::open(
        p,
        "log".into(),
        top.raw("log"),
        &["level", "format", "access"],
    );
    let log = Log {
        level: s.get(p, "level", defaults::LOG_LEVEL.to_string(), |v| {
            let level = string(v)?;
            if level.trim().is_empty() {
                return Err("must not be empty (e.g. info, or info,tollgate=debug)".into());
            }
            tracing_subscriber::EnvFilter::try_new(level)
                .map_err(|e| format!("not a log filter directive: {e}"))?;
            Ok(level.to_string())
        }),
        json: s.get(p, "format", false, |v| match string(v)? {
            "text" => Ok(false),
            "json" => Ok(true),
            other => Err(format!("expected text or json, got {other:?}")),
        }),
        access: s.get(p, "access", AccessLog::Refusals, |v| match string(v)? {
            "all" => Ok(AccessLog::All),
            "refusals" => Ok(AccessLog::Refusals),
            "off" => Ok(AccessLog::Off),
            other => Err(format!("expected all, refusals or off, got {other:?}")),
        }),
    };

    let auth = auth::auth(p, &top, env);
    let (upstreams, servers) = routes(p, &top, env, &auth, &listen);
    let traffic = std::sync::Arc::new(traffic::traffic(p, &top, &servers, &upstreams));
    let audit = std::sync::Arc::new(audit::audit(p, &top, env));
    let observe = observe::observe(p, &top);
    let tracing = telemetry::tracing(p, &top, env);
    Config {
        workers,
        listen,
        limits,
        admin,
        session,
        shutdown,
        runtime,
        log,
        upstreams,
        servers,
        auth,
        traffic,
        audit,
        observe,
        tracing,
    }
}

/// `workers: auto`: one worker per core the process may run on.
fn auto_workers() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// A list of strings, each checked; absent or null = `None`. Duplicates are reported.
fn string_list(
    p: &mut Problems,
    s: &Section,
    key: &str,
    check: fn(&str) -> Result<(), String>,
) -> Option<Vec<String>> {
    let (path, v) = s.value(key)?;
    let Value::Sequence(items) = v else {
        p.add(
            &path,
            format!("expected a list of strings, got {}", describe(v)),
        );
        return None;
    };
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let at = item(&path, i);
        match string(it).and_then(|st| check(st).map(|()| st)) {
            Ok(st) if out.iter().any(|o| o == st) => p.add(&at, format!("duplicate entry {st:?}")),
            Ok(st) => out.push(st.to_string()),
            Err(e) => p.add(&at, e),
        }
    }
    Some(out)
}

/// `upstreams` and `servers`, resolved to indices. Both absent: the built-in demo at `/mcp`.
fn routes(
    p: &mut Problems,
    top: &Section,
    env: &dyn Fn(&str) -> Option<String>,
    auth: &Auth,
    listen: &Listen,
) -> (Vec<Upstream>, Vec<Server>) {
    let ups = top.value("upstreams");
    let srvs = top.value("servers");
    if ups.is_none() && srvs.is_none() {
        return (
            vec![upstream_with_defaults(
                "demo".into(),
                UpstreamTarget::BuiltinDemo,
            )],
            vec![single_server("/mcp", 0)],
        );
    }
    let mut names_broken = false;
    let upstreams = match ups {
        None => {
            p.add(
                "upstreams",
                "missing: servers refer to upstreams, define them here",
            );
            Vec::new()
        }
        Some((path, Value::Sequence(list))) => {
            if list.is_empty() {
                p.add(&path, "empty list: servers need at least one upstream");
            }
            if list.len() > usize::from(u16::MAX) {
                p.add(&path, "more than 65535 upstreams");
            }
            let mut out = Vec::with_capacity(list.len());
            let mut seen: HashMap<String, usize> = HashMap::new();
            for (i, v) in list.iter().enumerate() {
                let u = upstream(p, item(&path, i), v, env);
                // An entry without a usable name was reported; servers that name it would only
                // repeat that problem, so unknown names are not reported after it.
                names_broken |= u.name.is_empty();
                if let Some(first) = seen.get(&u.name) {
                    p.add(
                        &format!("{path}[{i}].name"),
                        format!(
                            "duplicate upstream name {:?} (also upstreams[{first}])",
                            u.name
                        ),
                    );
                } else if !u.name.is_empty() {
                    seen.insert(u.name.clone(), i);
                }
                out.push(u);
            }
            out
        }
        Some((path, other)) => {
            p.add(
                &path,
                format!("expected a list of upstreams, got {}", describe(other)),
            );
            Vec::new()
        }
    };
    let servers = match srvs {
        None => {
            p.add(
                "servers",
                "missing: add at least one {path, upstream} to serve the upstreams",
            );
            Vec::new()
        }
        Some((path, Value::Sequence(list))) => {
            servers::servers(p, &path, list, &upstreams, names_broken, auth, listen)
        }
        Some((path, other)) => {
            p.add(
                &path,
                format!("expected a list of servers, got {}", describe(other)),
            );
            Vec::new()
        }
    };
    (upstreams, servers)
}

/// A server with one upstream and every default (the built-in demo's endpoint).
fn single_server(path: &str, upstream: usize) -> Server {
    Server {
        path: path.into(),
        file_index: 0,
        upstreams: vec![ServerUpstream {
            upstream,
            namer: crate::mcp::names::Namer::new(
                None,
                crate::mcp::names::SEPARATOR,
                crate::mcp::names::DEFAULT_MAX_LEN,
            )
            .expect("the default namer is valid"),
        }],
        prefix_names: PrefixNames::Auto,
        max_name_length: crate::mcp::names::DEFAULT_MAX_LEN,
        tools: NameFilter::default(),
        prompts: NameFilter::default(),
        resources: NameFilter::default(),
        offer_stateless_always: false,
        auth: None,
        rules: None,
        list_page_size: defaults::LIST_PAGE_SIZE,
        list_refresh_interval: defaults::LIST_REFRESH_INTERVAL,
        legacy: Some(crate::config::LegacyPaths::of(path)),
        rego: None,
    }
}

#[cfg(test)]
mod tests;
