//! `servers[].rules`: the endpoint's authorization rules, compiled here into
//! `policy::rules::Rules` (globs, methods, upstream indices, CIDR blocks, time windows), so a
//! config that loads decides with no parsing on the request path.

use serde_yaml_ng::Value;

use super::extract::{describe, item, string, Problems, Section};
use crate::config::Upstream;
use crate::mcp::names::Filter;
use crate::mcp::Method;
use crate::policy::rules::{ann, Cidr, Rule, Rules, Window};

const KEYS: &[&str] = &[
    "name",
    "effect",
    "upstreams",
    "tools",
    "prompts",
    "resources",
    "methods",
    "annotations",
    "subjects",
    "clients",
    "tenants",
    "roles",
    "scopes",
    "sources",
    "hours",
    "days",
    "message",
];

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `servers[i].rules` (`at` = `servers[i]`); `members`: the server's upstream indices.
pub(super) fn rules(
    p: &mut Problems,
    at: &str,
    s: &Section,
    members: Option<&[usize]>,
    upstreams: &[Upstream],
) -> Option<Rules> {
    let (path, v) = s.value("rules")?;
    let list = match v {
        Value::Null => return None,
        Value::Sequence(list) => list,
        other => {
            p.add(
                &path,
                format!("expected a list of rules, got {}", describe(other)),
            );
            return None;
        }
    };
    if list.len() > usize::from(u16::MAX) {
        p.add(&path, "more than 65535 rules");
        return None;
    }
    let _ = at;
    let mut out = Vec::with_capacity(list.len());
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
        let r = Section::open(p, rpath.clone(), Some(v), KEYS);
        let name = r.get(p, "name", format!("#{i}"), rule_name);
        if names.contains(&name) {
            p.add(
                &format!("{rpath}.name"),
                format!("duplicate rule name {name:?}"),
            );
        }
        names.push(name.clone());
        let allow = r.required(p, "effect", |v| match string(v)? {
            "allow" => Ok(true),
            "deny" => Ok(false),
            other => Err(format!("expected allow or deny, got {other:?}")),
        });
        let rule_upstreams = r.value("upstreams").map(|(upath, v)| {
            let Value::Sequence(items) = v else {
                p.add(
                    &upath,
                    format!("expected a list of upstream names, got {}", describe(v)),
                );
                return Vec::new();
            };
            let mut idx = Vec::new();
            for (j, it) in items.iter().enumerate() {
                let ipath = item(&upath, j);
                match string(it) {
                    Err(e) => p.add(&ipath, e),
                    Ok(n) => match upstreams.iter().position(|u| u.name == n) {
                        Some(u) if members.is_none_or(|m| m.contains(&u)) => idx.push(u),
                        Some(_) => {
                            p.add(&ipath, format!("upstream {n:?} is not behind this server"))
                        }
                        None => p.add(&ipath, super::unknown_upstream(n, upstreams)),
                    },
                }
            }
            idx
        });
        let tools = globs(p, &r, "tools");
        let prompts = globs(p, &r, "prompts");
        let resources = globs(p, &r, "resources");
        let methods = methods(p, &r);
        let annotations = r.value("annotations").map_or((0, 0), |(apath, v)| {
            let a = Section::open(p, apath, Some(v), &ann::NAMES.map(|(n, _)| n));
            let mut set = (0u8, 0u8);
            for (hint, bit) in ann::NAMES {
                if let Some(b) = a.get(p, hint, None, |v| super::extract::boolean(v).map(Some)) {
                    if b {
                        set.0 |= bit;
                    } else {
                        set.1 |= bit;
                    }
                }
            }
            set
        });
        let subjects = words(p, &r, "subjects");
        let clients = words(p, &r, "clients");
        let tenants = words(p, &r, "tenants");
        let roles = words(p, &r, "roles");
        let scopes = words(p, &r, "scopes");
        let sources = super::string_list(p, &r, "sources", |c| Cidr::parse(c).map(|_| ()))
            .unwrap_or_default()
            .iter()
            .filter_map(|c| Cidr::parse(c).ok())
            .collect();
        let hours = r.get(p, "hours", None, |v| hours(string(v)?).map(Some));
        let days = super::string_list(p, &r, "days", |d| {
            if DAYS.contains(&d) {
                Ok(())
            } else {
                Err(format!("{d:?}: expected one of {}", DAYS.join(", ")))
            }
        })
        .map(|l| {
            l.iter()
                .filter_map(|d| DAYS.iter().position(|x| x == d))
                .fold(0u8, |m, i| m | 1 << i)
        });
        let window = match (hours, days) {
            (None, None) => None,
            (h, d) => {
                let (start, end) = h.unwrap_or((0, 0));
                Some(Window {
                    start,
                    end,
                    days: d.unwrap_or(Window::ALL_DAYS),
                })
            }
        };
        let message = r.get(p, "message", None, |v| {
            let m = string(v)?;
            if m.is_empty() || m.len() > 1024 {
                return Err("a message is 1 to 1024 characters".into());
            }
            Ok(Some(Box::<str>::from(m)))
        });
        if let Some(allow) = allow {
            out.push(Rule {
                name: name.into(),
                allow,
                upstreams: rule_upstreams,
                tools,
                prompts,
                resources,
                methods,
                annotations,
                subjects,
                clients,
                tenants,
                roles,
                scopes,
                sources,
                window,
                message,
            });
        }
    }
    Some(Rules { rules: out })
}

/// A rule's `name` (authorization and traffic rules alike): 1 to 64 of [A-Za-z0-9_.-].
pub(super) fn rule_name(v: &Value) -> Result<String, String> {
    let n = string(v)?;
    if n.is_empty()
        || n.len() > 64
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!("{n:?}: a rule name is 1 to 64 of [A-Za-z0-9_.-]"));
    }
    Ok(n.to_string())
}

/// A rule's list of globs over exposed names (`tools`, `prompts`, `resources`); `[]` is refused
/// (it would match nothing).
pub(super) fn globs(p: &mut Problems, r: &Section, key: &str) -> Option<Filter> {
    let list = super::string_list(p, r, key, |_| Ok(()))?;
    if list.is_empty() {
        let why = "an empty list matches nothing: leave the key out to match everything";
        p.add(&format!("{}.{key}", r.path), why);
        return None;
    }
    match Filter::new(&list, &[] as &[&str]) {
        Ok(f) => Some(f),
        Err(e) => {
            p.add(&format!("{}.{key}[{}]", r.path, e.index), e.reason);
            None
        }
    }
}

/// A rule's `methods`: MCP methods tollgate knows.
pub(super) fn methods(p: &mut Problems, r: &Section) -> Option<Vec<Method>> {
    super::string_list(p, r, "methods", |m| match Method::parse(m) {
        Method::Other | Method::OtherNotification => {
            Err(format!("{m:?} is not an MCP method tollgate knows"))
        }
        _ => Ok(()),
    })
    .map(|l| l.iter().map(|m| Method::parse(m)).collect())
}

/// A rule's identity list (`subjects`, `clients`, `tenants`, `roles`, `scopes`): non-empty
/// words. `roles: []` would mean "anyone": a list that names nobody is refused.
pub(super) fn words(p: &mut Problems, r: &Section, key: &str) -> Vec<Box<str>> {
    if let Some((wpath, Value::Sequence(items))) = r.value(key) {
        if items.is_empty() {
            let why = "an empty list would match everyone: leave the key out for that";
            p.add(&wpath, why);
            return Vec::new();
        }
    }
    super::string_list(p, r, key, |w| {
        if w.is_empty() {
            Err("empty".into())
        } else {
            Ok(())
        }
    })
    .unwrap_or_default()
    .into_iter()
    .map(Into::into)
    .collect()
}

/// `HH:MM-HH:MM` (UTC) as minutes since midnight; `00:00-00:00` is the whole day, an end before
/// the start runs past midnight.
fn hours(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?}: expected HH:MM-HH:MM (UTC), e.g. 08:00-18:00");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let hm = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
    };
    match (hm(a), hm(b)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(bad()),
    }
}
