//! `traffic:`: rate limits, concurrency limits and calendar quotas (`policy::traffic`),
//! compiled here (server paths and upstream names to indices, globs, the time zone's rules,
//! each limit's fingerprint) so the request path parses nothing.

use std::time::Duration;

use serde_yaml_ng::Value;

use super::extract::{count, describe, duration, item, string, Problems, Section};
use crate::config::{Server, Upstream};
use crate::policy::traffic::{
    part, CalWindow, Limit, LimitKind, LimitRule, LoopGuard, OnFailure, RedisBackend, Traffic,
};

pub const DEFAULT_TIME_ZONE: &str = "UTC";
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(20);
pub const DEFAULT_MAX_KEYS: u64 = 100_000;
pub const DEFAULT_MAX_GLOBAL_KEYS: u64 = 400_000;
pub const DEFAULT_REDIS_SYNC_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "tollgate:";
/// Rules at most (their names are metric labels).
const MAX_RULES: usize = 256;

/// A rule's keys: what it counts (`TARGET_KEYS`) and the rest.
const KEYS: [&str; 15] = concat_keys(
    TARGET_KEYS,
    [
        "name",
        "key",
        "rate",
        "concurrency",
        "quota",
        "loop",
        "tokens",
    ],
);

/// `a` then `b` (`C` = `A + B`, checked when the constant is built).
const fn concat_keys<const A: usize, const B: usize, const C: usize>(
    a: [&'static str; A],
    b: [&'static str; B],
) -> [&'static str; C] {
    assert!(A + B == C);
    let mut out = [""; C];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < C {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

/// The keys that say which requests a rule counts (its fingerprint includes them as written).
const TARGET_KEYS: [&str; 8] = [
    "servers",
    "upstreams",
    "tools",
    "methods",
    "subjects",
    "clients",
    "tenants",
    "roles",
];

/// The `IANA name` as a time zone (the bundled database: no file read at run time).
pub fn time_zone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(name)
        .map_err(|_| format!("{name:?} is not an IANA time zone name (e.g. UTC, Europe/Berlin)"))
}

pub(super) fn traffic(
    p: &mut Problems,
    top: &Section,
    servers: &[Server],
    upstreams: &[Upstream],
) -> Traffic {
    let s = Section::open(
        p,
        "traffic".into(),
        top.raw("traffic"),
        &[
            "time_zone",
            "sync_interval",
            "max_keys",
            "max_global_keys",
            "rules",
            "redis",
        ],
    );
    let zone = s.get(p, "time_zone", DEFAULT_TIME_ZONE.to_string(), |v| {
        let n = string(v)?;
        time_zone(n).map(|_| n.to_string())
    });
    let tz = time_zone(&zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let sync_interval = s.get(p, "sync_interval", DEFAULT_SYNC_INTERVAL, |v| {
        let d = duration(Duration::from_millis(1))(v)?;
        if d > Duration::from_secs(10) {
            return Err("at most 10s (shares would go stale)".into());
        }
        Ok(d)
    });
    let max_keys = s.get(p, "max_keys", DEFAULT_MAX_KEYS as usize, |v| {
        count(1, 10_000_000)(v).map(|n| n as usize)
    });
    let max_global_keys = s.get(
        p,
        "max_global_keys",
        DEFAULT_MAX_GLOBAL_KEYS as usize,
        |v| count(1, 100_000_000)(v).map(|n| n as usize),
    );
    let rules = rules(p, &s, servers, upstreams, &zone);
    let redis = redis(p, &s);
    Traffic {
        time_zone: zone.into(),
        tz,
        sync_interval,
        max_keys,
        hashes_arguments: rules.iter().any(|r| r.key & part::ARGUMENTS != 0),
        max_global_keys,
        rules,
        redis,
    }
}

fn rules(
    p: &mut Problems,
    s: &Section,
    servers: &[Server],
    upstreams: &[Upstream],
    zone: &str,
) -> Vec<LimitRule> {
    let Some((path, v)) = s.value("rules") else {
        return Vec::new();
    };
    let list = match v {
        Value::Null => return Vec::new(),
        Value::Sequence(list) => list,
        other => {
            p.add(
                &path,
                format!("expected a list of rules, got {}", describe(other)),
            );
            return Vec::new();
        }
    };
    if list.len() > MAX_RULES {
        p.add(&path, format!("more than {MAX_RULES} rules"));
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let rpath = item(&path, i);
        if !matches!(v, Value::Mapping(_)) {
            p.add(
                &rpath,
                format!("expected a mapping (a rule), got {}", describe(v)),
            );
            continue;
        }
        let r = Section::open(p, rpath.clone(), Some(v), &KEYS);
        let name = r.required(p, "name", super::rules::rule_name);
        if let Some(n) = &name {
            if names.contains(n) {
                p.add(
                    &format!("{rpath}.name"),
                    format!("duplicate rule name {n:?}"),
                );
            }
            names.push(n.clone());
        }
        // What the rule's target is, as written: with its name and limits, the fingerprint
        // under which a reload keeps its state.
        let mut describe_target = String::new();
        for key in TARGET_KEYS {
            if let Some(v) = r.raw(key) {
                describe_target.push_str(&format!("{key}={v:?};"));
            }
        }
        let rule_servers = super::string_list(p, &r, "servers", |_| Ok(())).map(|paths| {
            let mut idx = Vec::new();
            for (j, sp) in paths.iter().enumerate() {
                match servers.iter().position(|s| s.path == *sp) {
                    Some(k) => idx.push(k),
                    None => p.add(
                        &item(&format!("{rpath}.servers"), j),
                        format!(
                            "no server with path {sp:?} (known: {})",
                            servers
                                .iter()
                                .map(|s| s.path.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                }
            }
            idx
        });
        let rule_upstreams = super::string_list(p, &r, "upstreams", |_| Ok(())).map(|ns| {
            let mut idx = Vec::new();
            for (j, n) in ns.iter().enumerate() {
                match upstreams.iter().position(|u| u.name == *n) {
                    Some(k) => idx.push(k),
                    None => p.add(
                        &item(&format!("{rpath}.upstreams"), j),
                        super::unknown_upstream(n, upstreams),
                    ),
                }
            }
            idx
        });
        let tools = super::rules::globs(p, &r, "tools");
        let methods = super::rules::methods(p, &r);
        let subjects = super::rules::words(p, &r, "subjects");
        let clients = super::rules::words(p, &r, "clients");
        let tenants = super::rules::words(p, &r, "tenants");
        let roles = super::rules::words(p, &r, "roles");
        let key = super::string_list(p, &r, "key", |k| {
            if part::NAMES.iter().any(|(n, _)| *n == k) {
                Ok(())
            } else {
                Err(format!(
                    "{k:?}: expected one of {}",
                    part::NAMES.map(|(n, _)| n).join(", ")
                ))
            }
        })
        .unwrap_or_default()
        .iter()
        .filter_map(|k| part::NAMES.iter().find(|(n, _)| n == k).map(|(_, b)| *b))
        .fold(0u8, |m, b| m | b);
        let mut limits = Vec::new();
        if let Some((lpath, v)) = r.value("rate") {
            let l = Section::open(p, lpath, Some(v), &["limit", "per", "burst"]);
            let limit = l.required(p, "limit", count(1, 1_000_000_000));
            let per = l.required(p, "per", |v| {
                let d = duration(Duration::from_millis(1))(v)?;
                if d > Duration::from_secs(366 * 86_400) {
                    return Err("at most a year (366d); for calendar budgets use quota".into());
                }
                Ok(d)
            });
            let burst = l.get(p, "burst", None, |v| count(1, 1_000_000_000)(v).map(Some));
            if let (Some(limit), Some(per)) = (limit, per) {
                limits.push(LimitKind::Rate {
                    limit,
                    per,
                    burst: burst.unwrap_or(limit),
                });
            }
        }
        if let Some(n) = r.get(p, "concurrency", None, |v| count(1, 1_000_000)(v).map(Some)) {
            limits.push(LimitKind::Concurrency { limit: n });
        }
        let calendar = |v: &Value| match string(v)? {
            "minute" => Ok(CalWindow::Minute),
            "hour" => Ok(CalWindow::Hour),
            "day" => Ok(CalWindow::Day),
            "month" => Ok(CalWindow::Month),
            other => Err(format!(
                "expected minute, hour, day or month, got {other:?}"
            )),
        };
        if let Some((qpath, v)) = r.value("quota") {
            let q = Section::open(p, qpath, Some(v), &["limit", "window"]);
            let limit = q.required(p, "limit", count(1, 1_000_000_000_000));
            let window = q.required(p, "window", calendar);
            if let (Some(limit), Some(window)) = (limit, window) {
                limits.push(LimitKind::Quota { limit, window });
            }
        }
        let mut costs = Vec::new();
        if let Some((tpath, v)) = r.value("tokens") {
            let t = Section::open(p, tpath.clone(), Some(v), &["limit", "window", "costs"]);
            let limit = t.required(p, "limit", count(1, 1_000_000_000_000_000));
            let window = t.required(p, "window", calendar);
            costs = token_costs(p, &t, &tpath);
            if let (Some(limit), Some(window)) = (limit, window) {
                limits.push(LimitKind::Tokens { limit, window });
            }
        }
        let mut key = key;
        let mut loop_guard = None;
        if let Some((lpath, v)) = r.value("loop") {
            let l = Section::open(p, lpath, Some(v), &["max", "window"]);
            let max = l.required(p, "max", count(1, 1_000_000));
            let window = l.required(p, "window", |v| {
                let d = duration(Duration::from_secs(1))(v)?;
                if d > Duration::from_secs(86_400) {
                    return Err("at most a day (24h)".into());
                }
                Ok(d)
            });
            if !limits.is_empty() {
                p.add(
                    &rpath,
                    "loop counts calls by their arguments: give rate, concurrency and quota \
                     their own rule",
                );
            }
            if let (Some(max), Some(window)) = (max, window) {
                loop_guard = Some(LoopGuard { max, window, fp: 0 });
            }
            // The same principal calling the same tool with the same arguments.
            key |= part::PRINCIPAL | part::TOOL | part::ARGUMENTS;
        }
        if ["rate", "concurrency", "quota", "tokens", "loop"]
            .iter()
            .all(|k| r.raw(k).is_none())
        {
            p.add(
                &rpath,
                "a rule needs rate, concurrency, quota or tokens (or several), or loop",
            );
        }
        let Some(name) = name else { continue };
        let mut rule = LimitRule {
            name: name.into(),
            servers: rule_servers,
            upstreams: rule_upstreams,
            tools,
            methods,
            subjects,
            clients,
            tenants,
            roles,
            key,
            limits: limits
                .into_iter()
                .map(|kind| Limit { kind, fp: 0 })
                .collect(),
            loop_guard,
            costs,
        };
        rule.seal(&describe_target, zone);
        out.push(rule);
    }
    out
}

/// `tokens.costs`: a mapping from tool glob to the units a call is charged when admitted, in
/// the order written (the first glob that matches a tool applies).
fn token_costs(p: &mut Problems, t: &Section, tpath: &str) -> Vec<(Box<str>, u64)> {
    let mut out = Vec::new();
    let Some((cpath, v)) = t.value("costs") else {
        return out;
    };
    let Value::Mapping(m) = v else {
        p.add(
            &cpath,
            format!(
                "expected a mapping of tool glob to units (e.g. {{\"search_*\": 5}}), got {}",
                describe(v)
            ),
        );
        return out;
    };
    for (g, n) in m {
        let Some(glob) = g.as_str() else {
            p.add(&cpath, format!("expected a tool glob, got {}", describe(g)));
            continue;
        };
        if let Err(e) = crate::mcp::names::Filter::new(&[glob], &[] as &[&str]) {
            p.add(&format!("{tpath}.costs.{glob}"), e.reason);
            continue;
        }
        match count(0, 1_000_000_000)(n) {
            Ok(units) => out.push((glob.into(), units)),
            Err(why) => p.add(&format!("{tpath}.costs.{glob}"), why),
        }
    }
    out
}

/// `traffic.redis` (null or absent: none).
fn redis(p: &mut Problems, s: &Section) -> Option<RedisBackend> {
    let (path, v) = s.value("redis")?;
    let r = Section::open(
        p,
        path,
        Some(v),
        &[
            "url",
            "sync_interval",
            "timeout",
            "on_failure",
            "key_prefix",
        ],
    );
    let url = r.required(p, "url", |v| {
        let u = string(v)?;
        if !(u.starts_with("redis://") || u.starts_with("unix://")) {
            return Err("expected redis://host:port[/db] or unix:///path".into());
        }
        redis::parse_redis_url(u)
            .map(|_| u.to_string())
            .ok_or_else(|| "not a Redis URL".to_string())
    });
    let sync_interval = r.get(p, "sync_interval", DEFAULT_REDIS_SYNC_INTERVAL, |v| {
        super::extract::duration_within(Duration::from_millis(1), Duration::from_secs(60))(v)
    });
    let timeout = r.get(p, "timeout", DEFAULT_REDIS_TIMEOUT, |v| {
        super::extract::duration_within(Duration::from_millis(1), Duration::from_secs(10))(v)
    });
    let on_failure = r.get(p, "on_failure", OnFailure::Local, |v| match string(v)? {
        "open" => Ok(OnFailure::Open),
        "closed" => Ok(OnFailure::Closed),
        "local" => Ok(OnFailure::Local),
        other => Err(format!("expected open, closed or local, got {other:?}")),
    });
    let key_prefix = r.get(p, "key_prefix", DEFAULT_REDIS_KEY_PREFIX.to_string(), |v| {
        let k = string(v)?;
        if k.len() > 64 || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("at most 64 characters, no spaces".into());
        }
        Ok(k.to_string())
    });
    Some(RedisBackend {
        url: url?.into(),
        sync_interval,
        timeout,
        on_failure,
        key_prefix: key_prefix.into(),
    })
}
