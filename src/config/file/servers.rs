//! The `servers` list: endpoints, the upstreams behind each, how their names are exposed and
//! what each endpoint exposes. Upstream names are resolved to indices here.

use std::collections::HashMap;

use serde_yaml_ng::Value;

use super::extract::{count, describe, item, string, Problems, Section};
use super::{defaults, formats, unknown_upstream, MS};
use crate::config::{NameFilter, PrefixNames, Server, ServerUpstream, Upstream};
use crate::mcp::names::{self, Filter, Namer};

const KEYS: &[&str] = &[
    "path",
    "upstream",
    "upstreams",
    "prefix_names",
    "max_name_length",
    "tools",
    "prompts",
    "resources",
    "list_page_size",
    "list_refresh_interval",
    "legacy_sse",
    "offer_stateless",
    "auth",
    "rules",
    "rego",
];

/// Every `servers[i]`; `names_broken`: an upstream entry had no usable name (already reported),
/// so unknown names are not reported again.
pub(super) fn servers(
    p: &mut Problems,
    path: &str,
    list: &[Value],
    upstreams: &[Upstream],
    names_broken: bool,
    auth: &crate::config::Auth,
    listen: &crate::config::Listen,
) -> Vec<Server> {
    if list.is_empty() {
        p.add(path, "empty list: add at least one {path, upstream}");
    }
    if list.len() > usize::from(u16::MAX) {
        p.add(path, "more than 65535 servers");
    }
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, v) in list.iter().enumerate() {
        let at = item(path, i);
        if !matches!(v, Value::Mapping(_)) {
            p.add(
                &at,
                format!(
                    "expected a mapping with path and upstream, got {}",
                    describe(v)
                ),
            );
            continue;
        }
        let s = Section::open(p, at.clone(), Some(v), KEYS);
        let spath = s.required(p, "path", |v| {
            let sp = string(v)?;
            formats::server_path(sp)?;
            Ok(sp.to_string())
        });
        if let Some(sp) = &spath {
            if let Some(first) = seen.get(sp) {
                p.add(
                    &format!("{at}.path"),
                    format!("duplicate path {sp:?} (also servers[{first}])"),
                );
            } else {
                seen.insert(sp.clone(), i);
            }
        }
        let members = members(p, &at, &s, upstreams, names_broken);
        let prefix_names = s.get(p, "prefix_names", PrefixNames::Auto, |v| match string(v)? {
            "auto" => Ok(PrefixNames::Auto),
            "always" => Ok(PrefixNames::Always),
            other => Err(format!("expected auto or always, got {other:?}")),
        });
        let max_name_length = s.get(p, "max_name_length", names::DEFAULT_MAX_LEN, |v| {
            count(names::MIN_MAX_LEN as u64, names::MAX_MAX_LEN as u64)(v).map(|n| n as usize)
        });
        let tools = filter(p, &s, "tools");
        let prompts = filter(p, &s, "prompts");
        let resources = filter(p, &s, "resources");
        let list_page_size = s.get(p, "list_page_size", defaults::LIST_PAGE_SIZE, |v| {
            count(1, 10_000)(v).map(|n| n as usize)
        });
        let list_refresh_interval = s.get(
            p,
            "list_refresh_interval",
            defaults::LIST_REFRESH_INTERVAL,
            super::extract::duration(MS),
        );
        let legacy_sse = s.get(p, "legacy_sse", true, super::extract::boolean);
        let offer_stateless_always = s.get(p, "offer_stateless", false, |v| match string(v)? {
            "auto" => Ok(false),
            "always" => Ok(true),
            other => Err(format!("expected auto or always, got {other:?}")),
        });
        let server_auth = super::auth::server_auth(p, &s, spath.as_deref(), auth, listen);
        let rules = super::rules::rules(p, &at, &s, members.as_deref(), upstreams);
        let rego = super::rego::rego(p, &s);
        let Some(members) = members else { continue };
        let prefixed = members.len() > 1 || prefix_names == PrefixNames::Always;
        let mut server_upstreams = Vec::with_capacity(members.len());
        let mut namers_ok = true;
        for (j, &u) in members.iter().enumerate() {
            let up = &upstreams[u];
            let prefix = if prefixed {
                up.effective_prefix()
            } else {
                None
            };
            match Namer::new(prefix, &up.separator, max_name_length) {
                Ok(namer) => server_upstreams.push(ServerUpstream { upstream: u, namer }),
                Err(e) => {
                    namers_ok = false;
                    p.add(
                        &member_path(&at, &s, j),
                        format!(
                            "upstream {:?}: its names cannot be exposed here: {e}",
                            up.name
                        ),
                    );
                }
            }
        }
        if namers_ok {
            same_prefix(p, &at, &s, &server_upstreams, upstreams);
        }
        if let (Some(path), true) = (spath, namers_ok) {
            let legacy = legacy_sse.then(|| crate::config::LegacyPaths::of(&path));
            out.push(Server {
                path,
                file_index: i,
                upstreams: server_upstreams,
                prefix_names,
                max_name_length,
                tools,
                prompts,
                resources,
                list_page_size,
                list_refresh_interval,
                legacy,
                offer_stateless_always,
                auth: server_auth,
                rules: rules.map(std::sync::Arc::new),
                rego,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    legacy_collisions(p, path, &out);
    out
}

/// A legacy path (`<path>/sse`, `<path>/messages`) must not be another server's path or legacy
/// path: every request path routes to exactly one thing.
fn legacy_collisions(p: &mut Problems, path: &str, servers: &[Server]) {
    let mut taken: HashMap<&str, usize> = servers
        .iter()
        .map(|s| (s.path.as_str(), s.file_index))
        .collect();
    for s in servers {
        let Some(l) = &s.legacy else { continue };
        for lp in [&l.sse, &l.messages] {
            if let Some(&other) = taken.get(lp.as_str()) {
                p.add(
                    &format!("{}.legacy_sse", item(path, s.file_index)),
                    format!(
                        "its legacy path {lp:?} is also used by servers[{other}]: \
                         set legacy_sse: false on one of them, or change a path"
                    ),
                );
            } else {
                taken.insert(lp, s.file_index);
            }
        }
    }
}

/// Where upstream `j` of a server is written: `upstreams[j]`, or `upstream` for the single key.
fn member_path(at: &str, s: &Section, j: usize) -> String {
    if s.raw("upstreams").is_some() {
        format!("{at}.upstreams[{j}]")
    } else {
        format!("{at}.upstream")
    }
}

/// `upstream: name` or `upstreams: [names]` (exactly one of them), resolved to indices.
fn members(
    p: &mut Problems,
    at: &str,
    s: &Section,
    upstreams: &[Upstream],
    names_broken: bool,
) -> Option<Vec<usize>> {
    let resolve = |p: &mut Problems, upath: &str, v: &Value| -> Option<usize> {
        let name = match string(v) {
            Ok(n) => n,
            Err(e) => {
                p.add(upath, e);
                return None;
            }
        };
        let found = upstreams.iter().position(|u| u.name == name);
        if found.is_none() && !names_broken {
            p.add(upath, unknown_upstream(name, upstreams));
        }
        found
    };
    match (s.value("upstream"), s.value("upstreams")) {
        (None, None) => {
            p.add(
                &format!("{at}.upstream"),
                "missing (required): name one upstream, or several with `upstreams: [a, b]`",
            );
            None
        }
        (Some(_), Some((upath, _))) => {
            p.add(
                &upath,
                "give either `upstream` (one) or `upstreams` (a list), not both",
            );
            None
        }
        (Some((upath, v)), None) => resolve(p, &upath, v).map(|u| vec![u]),
        (None, Some((upath, Value::Sequence(items)))) => {
            if items.is_empty() {
                p.add(&upath, "empty list: name at least one upstream");
                return None;
            }
            if items.len() > 64 {
                p.add(&upath, "more than 64 upstreams behind one endpoint");
                return None;
            }
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for (j, v) in items.iter().enumerate() {
                let ip = item(&upath, j);
                match resolve(p, &ip, v) {
                    Some(u) if out.contains(&u) => {
                        ok = false;
                        p.add(
                            &ip,
                            format!("upstream {:?} is listed twice", upstreams[u].name),
                        );
                    }
                    Some(u) => out.push(u),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        (None, Some((upath, other))) => {
            p.add(
                &upath,
                format!("expected a list of upstream names, got {}", describe(other)),
            );
            None
        }
    }
}

/// Two prefixed upstreams of one server with the same prefix and separator would expose the
/// same names: refused. (An unprefixed upstream beside prefixed ones is allowed: its names
/// meet the others' only if it lists a name starting with another's prefix and separator,
/// which the routing table reports and resolves first-come; `tollgate check` notes it.)
fn same_prefix(
    p: &mut Problems,
    at: &str,
    s: &Section,
    members: &[ServerUpstream],
    upstreams: &[Upstream],
) {
    let namers: Vec<Namer> = members.iter().map(|m| m.namer.clone()).collect();
    for (a, b) in names::prefix_overlaps(&namers) {
        if namers[a].prefix().is_none() || namers[b].prefix().is_none() {
            continue;
        }
        p.add(
            &member_path(at, s, b),
            format!(
                "upstreams {:?} and {:?} expose names with the same prefix {:?}: set a \
                 different `prefix` on one of them",
                upstreams[members[a].upstream].name,
                upstreams[members[b].upstream].name,
                namers[b].prefix().unwrap_or_default(),
            ),
        );
    }
}

/// `tools`/`prompts`/`resources`: `{allow: [globs], deny: [globs]}`; absent = everything.
fn filter(p: &mut Problems, s: &Section, key: &str) -> NameFilter {
    let Some((fpath, v)) = s.value(key) else {
        return NameFilter::default();
    };
    if matches!(v, Value::Null) {
        return NameFilter::default();
    }
    let f = Section::open(p, fpath.clone(), Some(v), &["allow", "deny"]);
    let allow = super::string_list(p, &f, "allow", |_| Ok(())).unwrap_or_default();
    let deny = super::string_list(p, &f, "deny", |_| Ok(())).unwrap_or_default();
    match Filter::new(&allow, &deny) {
        Ok(filter) => NameFilter {
            allow,
            deny,
            filter,
        },
        Err(e) => {
            p.add(
                &format!("{fpath}.{}[{}]", e.list.as_str(), e.index),
                e.reason,
            );
            NameFilter::default()
        }
    }
}
