//! The `upstreams` list: each entry's target, replicas, headers, credentials, TLS, timeouts,
//! retries, circuit breaker and health check, with every default (`upstream_with_defaults`).

use serde_yaml_ng::Value;

use super::extract::{self, count, describe, item, string, Problems, Section};
use super::tls::upstream_tls;
use super::{credentials, defaults, formats, header_map, header_value, MS};
use crate::config::{Transport, Upstream, UpstreamTarget};

pub(super) fn unknown_upstream(name: &str, upstreams: &[Upstream]) -> String {
    let known: Vec<&str> = upstreams
        .iter()
        .map(|u| u.name.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    if known.is_empty() {
        format!("no upstream named {name:?} (no upstreams are defined)")
    } else {
        format!("no upstream named {name:?} (known: {})", known.join(", "))
    }
}

pub(super) fn upstream_with_defaults(name: String, target: UpstreamTarget) -> Upstream {
    Upstream {
        name,
        replicas: vec![target.clone()],
        target,
        health: crate::config::HealthCheck {
            interval: defaults::HEALTH_INTERVAL,
            timeout: defaults::HEALTH_TIMEOUT,
            unhealthy_after: defaults::HEALTH_UNHEALTHY_AFTER as u32,
            healthy_after: defaults::HEALTH_HEALTHY_AFTER as u32,
            path: None,
        },
        connect_timeout: defaults::CONNECT_TIMEOUT,
        request_timeout: defaults::REQUEST_TIMEOUT,
        idle_timeout: defaults::UPSTREAM_IDLE_TIMEOUT,
        max_idle_per_worker: defaults::MAX_IDLE_PER_WORKER as usize,
        unhealthy_after: defaults::UNHEALTHY_AFTER as u32,
        headers: Vec::new(),
        header_sources: Vec::new(),
        credentials: None,
        tls: None,
        prefix: None,
        separator: crate::mcp::names::SEPARATOR.to_string(),
        era: crate::config::UpstreamEra::Auto,
        transport: Transport::StreamableHttp,
        tool_timeouts: Vec::new(),
        retries: crate::config::Retries {
            attempts: defaults::RETRY_ATTEMPTS as u32,
            backoff: defaults::RETRY_BACKOFF,
        },
        circuit_breaker: crate::config::CircuitBreaker {
            consecutive_failures: defaults::BREAKER_FAILURES as u32,
            error_ratio: 0.0,
            min_requests: defaults::BREAKER_MIN_REQUESTS as u32,
            window: defaults::BREAKER_WINDOW,
            open_for: defaults::BREAKER_OPEN_FOR,
            half_open_probes: defaults::BREAKER_PROBES as u32,
        },
    }
}

/// One `upstreams[i]` entry. A broken name comes back empty (never matches a server).
pub(super) fn upstream(
    p: &mut Problems,
    path: String,
    v: &Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Upstream {
    if !matches!(v, Value::Mapping(_)) {
        p.add(
            &path,
            format!("expected a mapping with name and url, got {}", describe(v)),
        );
        return upstream_with_defaults(String::new(), UpstreamTarget::BuiltinDemo);
    }
    let s = Section::open(
        p,
        path.clone(),
        Some(v),
        &[
            "name",
            "url",
            "replicas",
            "health",
            "connect_timeout",
            "request_timeout",
            "idle_timeout",
            "max_idle_per_worker",
            "unhealthy_after",
            "headers",
            "credentials",
            "tls",
            "prefix",
            "separator",
            "era",
            "transport",
            "tool_timeouts",
            "retries",
            "circuit_breaker",
        ],
    );
    let name = s
        .required(p, "name", |v| {
            let n = string(v)?;
            formats::upstream_name(n)?;
            Ok(n.to_string())
        })
        .unwrap_or_default();
    let replicas = replicas(p, &s);
    let target = replicas
        .first()
        .cloned()
        .unwrap_or(UpstreamTarget::BuiltinDemo);
    let mut u = upstream_with_defaults(name, target);
    if !replicas.is_empty() {
        u.replicas = replicas;
    }
    u.connect_timeout = s.get(
        p,
        "connect_timeout",
        u.connect_timeout,
        extract::duration(MS),
    );
    u.request_timeout = s.get(
        p,
        "request_timeout",
        u.request_timeout,
        extract::duration(MS),
    );
    u.idle_timeout = s.get(p, "idle_timeout", u.idle_timeout, extract::duration(MS));
    u.max_idle_per_worker = s.get(p, "max_idle_per_worker", u.max_idle_per_worker, |v| {
        count(0, 1_000_000)(v).map(|n| n as usize)
    });
    u.unhealthy_after = s.get(p, "unhealthy_after", u.unhealthy_after, |v| {
        count(1, 1_000_000)(v).map(|n| n as u32)
    });
    u.transport = s.get(p, "transport", u.transport, |v| match string(v)? {
        "streamable_http" => Ok(Transport::StreamableHttp),
        "sse" if u.target == UpstreamTarget::BuiltinDemo => {
            Err("the built-in demo speaks streamable_http only".to_string())
        }
        "sse" if u.replicas.len() > 1 => Err(
            "replicas are not supported with transport: sse (its session is a stream one worker holds)"
                .to_string(),
        ),
        "sse" => Ok(Transport::Sse),
        other => Err(format!(
            "unknown transport {other:?} (streamable_http, or sse for the 2024-11-05 HTTP+SSE transport)"
        )),
    });
    header_map(p, &s, env, None, &mut u.headers, &mut u.header_sources);
    u.tls = upstream_tls(p, &s, &u.target);
    u.credentials = credentials::credentials(p, &s, &u.target, env, &header_value).map(Box::new);
    if u.credentials.is_some() && u.transport == Transport::Sse {
        p.add(
            &extract::child(&s.path, "credentials"),
            "not supported with transport: sse (use headers)",
        );
        u.credentials = None;
    }
    u.era = s.get(p, "era", u.era, |v| match string(v)? {
        "auto" => Ok(crate::config::UpstreamEra::Auto),
        "session" => Ok(crate::config::UpstreamEra::Session),
        "stateless" => Ok(crate::config::UpstreamEra::Stateless),
        other => Err(format!(
            "expected auto, session or stateless, got {other:?}"
        )),
    });
    u.separator = s.get(p, "separator", u.separator, |v| {
        let sep = string(v)?;
        crate::mcp::names::Namer::new(Some("x"), sep, crate::mcp::names::MAX_MAX_LEN)
            .map_err(|e| e.to_string())?;
        Ok(sep.to_string())
    });
    resilience(p, &s, &mut u);
    health(p, &s, &mut u);
    let sep = u.separator.clone();
    u.prefix = s.get(p, "prefix", None, |v| {
        let prefix = string(v)?;
        if !prefix.is_empty() {
            crate::mcp::names::Namer::new(Some(prefix), &sep, crate::mcp::names::MAX_MAX_LEN)
                .map_err(|e| e.to_string())?;
        }
        Ok(Some(prefix.to_string()))
    });
    u
}

/// `url` or `replicas` (exactly one of them): the upstream's replicas, in the order written;
/// empty after a problem.
fn replicas(p: &mut Problems, s: &Section<'_>) -> Vec<UpstreamTarget> {
    let url = |v: &Value| formats::upstream_url(string(v)?);
    match (s.value("url"), s.value("replicas")) {
        (Some(_), Some((at, _))) => {
            p.add(&at, "write either url (one replica) or replicas, not both");
            Vec::new()
        }
        // Missing reads "url: missing (required)": one replica is the common case.
        (_, None) => s.required(p, "url", url).into_iter().collect(),
        (None, Some((at, Value::Sequence(list)))) => {
            if list.is_empty() {
                p.add(&at, "empty list: an upstream needs at least one replica");
                return Vec::new();
            }
            if list.len() > defaults::MAX_REPLICAS {
                p.add(
                    &at,
                    format!("more than {} replicas", defaults::MAX_REPLICAS),
                );
                return Vec::new();
            }
            let mut out: Vec<UpstreamTarget> = Vec::with_capacity(list.len());
            let mut ok = true;
            for (i, v) in list.iter().enumerate() {
                let here = item(&at, i);
                match url(v) {
                    Ok(UpstreamTarget::BuiltinDemo) if list.len() > 1 => {
                        p.add(&here, "builtin:demo cannot be one of several replicas");
                        ok = false;
                    }
                    Ok(t) => match out.iter().position(|o| *o == t) {
                        Some(first) => {
                            p.add(&here, format!("duplicate replica (also replicas[{first}])"));
                            ok = false;
                        }
                        None => out.push(t),
                    },
                    Err(e) => {
                        p.add(&here, e);
                        ok = false;
                    }
                }
            }
            let https = |t: &UpstreamTarget| matches!(t, UpstreamTarget::Http(h) if h.tls);
            if ok && out.iter().any(https) && !out.iter().all(https) {
                p.add(
                    &at,
                    "mixes http:// and https:// replicas (one tls applies to all)",
                );
                ok = false;
            }
            if ok {
                out
            } else {
                Vec::new()
            }
        }
        (None, Some((at, other))) => {
            p.add(
                &at,
                format!("expected a list of URLs, got {}", describe(other)),
            );
            Vec::new()
        }
    }
}

/// `health` of one upstream: the active check of each of its replicas.
fn health(p: &mut Problems, s: &Section<'_>, u: &mut Upstream) {
    let h = Section::open(
        p,
        extract::child(&s.path, "health"),
        s.raw("health"),
        &[
            "interval",
            "timeout",
            "unhealthy_after",
            "healthy_after",
            "path",
        ],
    );
    let hc = &mut u.health;
    hc.interval = h.get(p, "interval", hc.interval, extract::duration(MS));
    hc.timeout = h.get(p, "timeout", hc.timeout, extract::duration(MS));
    hc.unhealthy_after = h.get(p, "unhealthy_after", hc.unhealthy_after, |v| {
        count(1, 1000)(v).map(|n| n as u32)
    });
    hc.healthy_after = h.get(p, "healthy_after", hc.healthy_after, |v| {
        count(1, 1000)(v).map(|n| n as u32)
    });
    hc.path = h.get(p, "path", None, |v| {
        let path = string(v)?;
        if !path.starts_with('/') || !formats::is_visible_ascii(path) {
            return Err(format!(
                "expected a path starting with / (visible ASCII), got {path:?}"
            ));
        }
        Ok(Some(path.to_string()))
    });
}

/// `tool_timeouts`, `retries` and `circuit_breaker` of one upstream.
fn resilience(p: &mut Problems, s: &Section<'_>, u: &mut Upstream) {
    if let Some((tpath, tv)) = s.value("tool_timeouts") {
        match tv {
            Value::Mapping(m) => {
                for (k, val) in m {
                    let Value::String(glob) = k else {
                        p.add(&tpath, "tool name globs must be strings");
                        continue;
                    };
                    let at = extract::child(&tpath, glob);
                    if glob.is_empty() {
                        p.add(&at, "an empty glob matches no tool");
                        continue;
                    }
                    match extract::duration(MS)(val) {
                        Ok(d) if d.is_zero() => p.add(&at, "must be more than 0s"),
                        Ok(d) => u.tool_timeouts.push((glob.clone(), d)),
                        Err(e) => p.add(&at, e),
                    }
                }
            }
            other => p.add(
                &tpath,
                format!(
                    "expected a mapping of tool name globs to durations, got {}",
                    describe(other)
                ),
            ),
        }
    }
    let r = Section::open(
        p,
        extract::child(&s.path, "retries"),
        s.raw("retries"),
        &["attempts", "backoff"],
    );
    u.retries.attempts = r.get(p, "attempts", u.retries.attempts, |v| {
        count(0, 10)(v).map(|n| n as u32)
    });
    u.retries.backoff = r.get(p, "backoff", u.retries.backoff, extract::duration(MS));
    let b = Section::open(
        p,
        extract::child(&s.path, "circuit_breaker"),
        s.raw("circuit_breaker"),
        &[
            "consecutive_failures",
            "error_ratio",
            "min_requests",
            "window",
            "open_for",
            "half_open_probes",
        ],
    );
    let cb = &mut u.circuit_breaker;
    cb.consecutive_failures = b.get(p, "consecutive_failures", cb.consecutive_failures, |v| {
        count(0, 1_000_000)(v).map(|n| n as u32)
    });
    cb.open_for = b.get(p, "open_for", cb.open_for, |v| {
        let d = extract::duration(MS)(v)?;
        if d.is_zero() {
            return Err("must be more than 0s".into());
        }
        Ok(d)
    });
    cb.half_open_probes = b.get(p, "half_open_probes", cb.half_open_probes, |v| {
        count(1, 1000)(v).map(|n| n as u32)
    });
    cb.error_ratio = b.get(p, "error_ratio", cb.error_ratio, |v| match v {
        Value::Number(n) => match n.as_f64() {
            Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(format!("expected a share from 0 to 1 (0 = off), got {n}")),
        },
        other => Err(format!(
            "expected a share from 0 to 1 (0 = off), got {}",
            describe(other)
        )),
    });
    cb.min_requests = b.get(p, "min_requests", cb.min_requests, |v| {
        count(1, 1_000_000)(v).map(|n| n as u32)
    });
    cb.window = b.get(p, "window", cb.window, extract::duration(MS));
}
