//! `tollgate check --probe`: what a config means once the upstreams answer. Each upstream of
//! every server is initialized the way a worker would (same request heads, pool, timeouts), its
//! four lists read to the last page, and each federated server's routing tables built with the
//! request path's own `NameTable::build`/`UriTable::build`. The report names every collision,
//! every rewritten name, every filter glob that matches nothing and every upstream that could
//! not be reached. One runtime (legacy driver), one `WorkerState`, nothing bound.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sonic_rs::JsonValueTrait;

use crate::config::{Config, Driver, Server};
use crate::http::response;
use crate::mcp::cursor::ListKind;
use crate::mcp::names::{Filter, NameProblem, NameTable, UpstreamNames, UriTable};
use crate::mcp::session::{upstream_id, UpstreamSession};
use crate::mcp::ProtocolVersion;

use super::super::state::{Gateway, WorkerState};
use super::exchange;
use super::lists::{fetch_page, field, next_list_id, page_request, read_page};

const PROBE_ID: &[u8] = b"\"tollgate-probe\"";
/// Pages of one list followed at most (as a table refresh does).
const MAX_PAGES: usize = 100;

/// What the probe found: the report's text and how many problems it holds.
pub struct Outcome {
    pub report: String,
    pub problems: usize,
}

/// What one upstream listed (`None`: it does not offer that list).
#[derive(Default)]
struct Listed {
    tools: Option<Vec<String>>,
    prompts: Option<Vec<String>>,
    resources: Option<Vec<String>>,
    templates: Option<Vec<String>>,
}

/// Which of an upstream's lists.
type Pick = fn(&Listed) -> &Option<Vec<String>>;

/// Probes every server's upstreams of `config` and reports.
pub fn probe(config: Config) -> anyhow::Result<Outcome> {
    let (gw, _inboxes) = Gateway::build(config, Arc::new(AtomicBool::new(false)))?;
    crate::runtime::clock::init();
    let entries = gw.config.runtime.uring_entries;
    crate::runtime::driver::block_on(
        Driver::Legacy,
        entries,
        0,
        |_, _| {},
        |_| async move {
            let series = Arc::default();
            let w = Rc::new(WorkerState::new(gw.clone(), 0, series));
            // The coarse clock the upstream deadlines run on (a worker's tick does this).
            let ticker = w.clone();
            monoio::spawn(async move {
                loop {
                    monoio::time::sleep(Duration::from_millis(50)).await;
                    ticker.shutdown.tick(Instant::now());
                }
            });
            Ok(run(&w, &gw).await)
        },
    )
}

async fn run(w: &Rc<WorkerState>, gw: &Arc<Gateway>) -> Outcome {
    // Every upstream some server uses, probed once (at once).
    let mut used: Vec<usize> = gw
        .config
        .servers
        .iter()
        .flat_map(|s| s.upstreams.iter().map(|m| m.upstream))
        .collect();
    used.sort_unstable();
    used.dedup();
    let results = futures_util::future::join_all(
        used.iter()
            .map(|&u| async move { (u, upstream(w, gw, u).await) }),
    )
    .await;
    let found: HashMap<usize, Result<Listed, String>> = results.into_iter().collect();

    let mut out = String::new();
    let mut problems = 0;
    for s in &gw.config.servers {
        problems += server(gw, s, &found, &mut out);
    }
    let _ = writeln!(
        out,
        "probe: {problems} problem(s) in {} server(s)",
        gw.config.servers.len()
    );
    Outcome {
        report: out,
        problems,
    }
}

/// The probe's initialize request.
fn initialize_request() -> String {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"initialize\",\"params\":{{\
         \"protocolVersion\":\"{}\",\"capabilities\":{{}},\
         \"clientInfo\":{{\"name\":\"tollgate-check\",\"version\":\"{}\"}}}}}}",
        std::str::from_utf8(PROBE_ID).unwrap_or("1"),
        ProtocolVersion::LATEST_LEGACY.as_str(),
        env!("CARGO_PKG_VERSION"),
    )
}

/// What an initialize result says: the protocol version and which lists the upstream offers.
fn offers(result: &sonic_rs::Value) -> Result<(ProtocolVersion, [bool; 3]), String> {
    let version = result
        .get("protocolVersion")
        .and_then(|v| v.as_str())
        .and_then(ProtocolVersion::parse)
        .ok_or("initialize: no protocol version the gateway speaks")?;
    let caps = result.get("capabilities");
    let has = |k: &str| caps.is_some_and(|c| c.get(k).is_some());
    Ok((version, [has("tools"), has("prompts"), has("resources")]))
}

/// Initializes upstream `u`, reads its lists, ends its session.
async fn upstream(w: &Rc<WorkerState>, gw: &Arc<Gateway>, u: usize) -> Result<Listed, String> {
    if gw.upstreams[u].legacy {
        return legacy_upstream(w, gw, u).await;
    }
    let init = initialize_request();
    let req = exchange::post_request(gw, u, None, b"", init.as_bytes());
    let reply = exchange::whole(w, gw, (u, 0), req, None)
        .await
        .map_err(|e| format!("initialize: {}", e.reason))?;
    let result =
        exchange::result_of(gw, u, &reply, PROBE_ID).map_err(|e| format!("initialize: {e}"))?;
    let version = result
        .get("protocolVersion")
        .and_then(|v| v.as_str())
        .and_then(ProtocolVersion::parse)
        .ok_or("initialize: no protocol version the gateway speaks")?;
    let session = UpstreamSession {
        upstream: upstream_id(&gw.upstreams[u].name),
        session_id: reply.session_id.clone(),
        protocol_version: version,
        replica: reply.replica,
    };
    let note = b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}";
    let req = exchange::post_request(gw, u, Some(&session), b"", note);
    let listed = match exchange::whole(w, gw, (u, session.replica), req, None).await {
        Err(e) => Err(format!("notifications/initialized: {}", e.reason)),
        Ok(r) if !(200..300).contains(&r.status) => Err(format!(
            "notifications/initialized: answered HTTP {}",
            r.status
        )),
        Ok(_) => {
            let caps = result.get("capabilities");
            let has = |k: &str| caps.is_some_and(|c| c.get(k).is_some());
            // In a block of its own: a list that fails still ends the session below.
            let lists = async {
                let mut l = Listed::default();
                let s = &session;
                if has("tools") {
                    l.tools = Some(list(w, gw, u, s, ListKind::Tools, "name").await?);
                }
                if has("prompts") {
                    l.prompts = Some(list(w, gw, u, s, ListKind::Prompts, "name").await?);
                }
                if has("resources") {
                    l.resources = Some(list(w, gw, u, s, ListKind::Resources, "uri").await?);
                    let t = ListKind::ResourceTemplates;
                    l.templates = Some(list(w, gw, u, s, t, "uriTemplate").await?);
                }
                Ok::<_, String>(l)
            };
            lists.await
        }
    };
    if let Some(sid) = &session.session_id {
        let mut req = gw.upstreams[u].delete_prefix.clone();
        response::header(&mut req, b"mcp-session-id", sid.as_bytes());
        if version.has_version_header() {
            response::header(
                &mut req,
                b"mcp-protocol-version",
                version.as_str().as_bytes(),
            );
        }
        req.extend_from_slice(b"\r\n");
        if let Err(e) = exchange::whole(w, gw, (u, session.replica), req, None).await {
            tracing::debug!(error = %e.reason, "probe: session not ended");
        }
    }
    listed
}

/// `upstream` for an upstream with `transport: sse`: the same requests through its event
/// stream (held by this probe's worker, as a gateway worker would).
async fn legacy_upstream(
    w: &Rc<WorkerState>,
    gw: &Arc<Gateway>,
    u: usize,
) -> Result<Listed, String> {
    use super::super::legacy;
    let link = legacy::link(w, gw.clone(), u)
        .await
        .map_err(|e| format!("initialize: {e}"))?;
    let listed = async {
        let init = initialize_request();
        let msg = legacy::ask(w, gw, u, &link, init.as_bytes())
            .await
            .map_err(|e| format!("initialize: {e}"))?;
        let v: sonic_rs::Value =
            sonic_rs::from_slice(&msg).map_err(|e| format!("initialize: {e}"))?;
        let result = v.get("result").cloned().ok_or("initialize: no result")?;
        let (_, [tools, prompts, resources]) = offers(&result)?;
        let note = b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}";
        legacy::tell(w, gw, u, &link, (b"", note))
            .await
            .map_err(|e| format!("notifications/initialized: {e}"))?;
        let list = |kind: ListKind, key: &'static str| {
            let link = &link;
            async move {
                let mut items = Vec::new();
                let mut cursor: Option<String> = None;
                for _ in 0..MAX_PAGES {
                    let body = page_request(kind, cursor.as_deref(), &next_list_id());
                    let page = legacy::ask(w, gw, u, link, &body)
                        .await
                        .and_then(|msg| read_page(kind, msg))
                        .map_err(|e| format!("{}: {e}", kind.method()))?;
                    items.extend(page.items().filter_map(|i| field(i, key)));
                    match page.next {
                        Some(n) => cursor = Some(n),
                        None => break,
                    }
                }
                Ok::<_, String>(items)
            }
        };
        let mut l = Listed::default();
        if tools {
            l.tools = Some(list(ListKind::Tools, "name").await?);
        }
        if prompts {
            l.prompts = Some(list(ListKind::Prompts, "name").await?);
        }
        if resources {
            l.resources = Some(list(ListKind::Resources, "uri").await?);
            l.templates = Some(list(ListKind::ResourceTemplates, "uriTemplate").await?);
        }
        Ok::<_, String>(l)
    }
    .await;
    legacy::unlink(w, link);
    listed
}

/// Every page of one list: the string `key` of each item.
async fn list(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
    session: &UpstreamSession,
    kind: ListKind,
    key: &str,
) -> Result<Vec<String>, String> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = fetch_page(w, gw, u, session, (b"", None), kind, cursor.as_deref())
            .await
            .map_err(|e| format!("{}: {e}", kind.method()))?;
        items.extend(page.items().filter_map(|i| field(i, key)));
        match page.next {
            Some(n) => cursor = Some(n),
            None => return Ok(items),
        }
    }
    Ok(items)
}

/// One server's part of the report; returns its problem count.
fn server(
    gw: &Gateway,
    s: &Server,
    found: &HashMap<usize, Result<Listed, String>>,
    out: &mut String,
) -> usize {
    let federated = s.federated();
    let how = if federated {
        "federated"
    } else {
        "single upstream"
    };
    let _ = writeln!(out, "server {} ({how}):", s.path);
    let mut problems = 0;
    let empty = Listed::default();
    let mut listed: Vec<&Listed> = Vec::new();
    for m in &s.upstreams {
        let name = &gw.upstreams[m.upstream].name;
        match &found[&m.upstream] {
            Ok(l) => {
                let count = |v: &Option<Vec<String>>, what: &str| match v {
                    Some(v) => format!("{what} {}", v.len()),
                    None => format!("{what} -"),
                };
                let _ = writeln!(
                    out,
                    "  upstream {name}: {}, {}, {}, {}",
                    count(&l.tools, "tools"),
                    count(&l.prompts, "prompts"),
                    count(&l.resources, "resources"),
                    count(&l.templates, "resource templates"),
                );
                listed.push(l);
            }
            Err(why) => {
                problems += 1;
                let _ = writeln!(out, "  problem: upstream {name} could not be probed: {why}");
                listed.push(&empty);
            }
        }
    }
    if !federated {
        return problems;
    }
    // A glob may be meant for the names of an upstream that did not answer.
    let complete = problems == 0;
    if !complete {
        let _ = writeln!(
            out,
            "  note: filter globs not checked: not every upstream could be probed"
        );
    }
    let prefixed = s
        .upstreams
        .iter()
        .filter(|m| m.namer.prefix().is_some())
        .count();
    if prefixed > 0 {
        for m in s.upstreams.iter().filter(|m| m.namer.prefix().is_none()) {
            let _ = writeln!(
                out,
                "  note: upstream {} is unprefixed beside prefixed upstreams: its names could \
                 meet another's prefix",
                gw.upstreams[m.upstream].name
            );
        }
    }
    let at = format!("servers[{}]", s.file_index);
    let members: Vec<&str> = s
        .upstreams
        .iter()
        .map(|m| gw.upstreams[m.upstream].name.as_str())
        .collect();
    let names = |f: Pick| -> Vec<Vec<String>> {
        listed
            .iter()
            .map(|l| f(l).clone().unwrap_or_default())
            .collect()
    };
    let kinds: [(&str, &str, Pick, &Filter); 2] = [
        ("tools", "tool", |l| &l.tools, &s.tools.filter),
        ("prompts", "prompt", |l| &l.prompts, &s.prompts.filter),
    ];
    for (key, one, get, filter) in kinds {
        let lists = names(get);
        let parts: Vec<UpstreamNames<'_, String>> = s
            .upstreams
            .iter()
            .zip(&lists)
            .map(|(m, names)| UpstreamNames {
                namer: &m.namer,
                names,
            })
            .collect();
        let (table, found) = NameTable::build(&parts, filter);
        for p in &found {
            problems += 1;
            let _ = writeln!(out, "  problem: {key}: {}", describe(p, &members));
        }
        for e in table.rewritten() {
            let up = &gw.upstreams[s.upstreams[e.upstream].upstream].name;
            let _ = writeln!(
                out,
                "  rewritten: {key} of {up}: {:?} -> {:?} ({})",
                e.original,
                e.exposed,
                e.rewrite.as_str()
            );
        }
        // Globs are held to the exposed names (what a filter matches).
        let exposed: Vec<String> = s
            .upstreams
            .iter()
            .zip(&lists)
            .flat_map(|(m, l)| l.iter().map(|n| m.namer.expose(n).0))
            .collect();
        let unmatched = if complete {
            filter.matches_nothing(&exposed)
        } else {
            Vec::new()
        };
        for u in unmatched {
            problems += 1;
            let _ = writeln!(
                out,
                "  problem: {at}.{key}.{}[{}]: {:?} matches no {one}",
                u.list.as_str(),
                u.index,
                u.pattern
            );
        }
    }
    let resources = names(|l| &l.resources);
    let templates = names(|l| &l.templates);
    let r: Vec<&[String]> = resources.iter().map(Vec::as_slice).collect();
    let t: Vec<&[String]> = templates.iter().map(Vec::as_slice).collect();
    let (_, found) = UriTable::build(&r, &t, &s.resources.filter);
    for p in &found {
        problems += 1;
        let _ = writeln!(out, "  problem: resources: {}", describe(p, &members));
    }
    let all: Vec<&String> = resources.iter().chain(&templates).flatten().collect();
    let unmatched = if complete {
        s.resources.filter.matches_nothing(&all)
    } else {
        Vec::new()
    };
    for u in unmatched {
        problems += 1;
        let _ = writeln!(
            out,
            "  problem: {at}.resources.{}[{}]: {:?} matches no resource or template",
            u.list.as_str(),
            u.index,
            u.pattern
        );
    }
    problems
}

/// A table problem with upstream names instead of positions.
fn describe(p: &NameProblem, members: &[&str]) -> String {
    let name = |i: usize| members.get(i).copied().unwrap_or("?");
    match p {
        NameProblem::Collision {
            exposed,
            kept,
            dropped,
        } => format!(
            "{exposed:?} exposed by {} ({:?}) and by {} ({:?}): only the first is exposed",
            name(kept.0),
            kept.1,
            name(dropped.0),
            dropped.1
        ),
        NameProblem::Duplicate { upstream, original } => {
            format!("{} lists {original:?} twice", name(*upstream))
        }
        NameProblem::TemplateOverlap { kept, dropped } => format!(
            "templates {:?} of {} and {:?} of {} can match the same URI: only the first is \
             exposed",
            kept.1,
            name(kept.0),
            dropped.1,
            name(dropped.0)
        ),
    }
}
