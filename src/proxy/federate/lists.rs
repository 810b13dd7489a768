//! Aggregated lists of federated endpoints: a list request is answered page by page from the
//! upstreams' own pages, in the server's upstream order, each upstream from its first page to its
//! last (`mcp::cursor::advance`), with the gateway's sealed cursors as `nextCursor`. Tool and
//! prompt names are exposed through each upstream's `Namer`; every kind passes the server's
//! filter, and a name the routing tables (`tables`) give to another upstream is left out.
//!
//! An upstream that fails while listing (down, timed out, an error) is skipped: the page holds
//! the others' items, the failure is logged and counted, and its tools are absent until it
//! answers again (calls to them then get a JSON-RPC error naming it).

use sonic_rs::{JsonValueMutTrait, JsonValueTrait};

use crate::config::Server;
use crate::error::Kind;
use crate::jsonrpc;
use crate::mcp::cursor::{self, Cursor, Expect, ListKind, Position, Step};
use crate::mcp::names::{NameTable, UriTable};
use crate::mcp::Method;

use super::super::reject::Refusal;
use super::super::state::{Gateway, WorkerState};
use super::super::unix_now;
use super::exchange;
use super::tables::{current_uris, failed, TableKind};
use super::FedRequest;

/// Upstream pages one client list request may fetch (an upstream may answer empty pages with a
/// `nextCursor` forever): past it the client gets what was gathered and a cursor to go on.
const FETCH_BUDGET: usize = 16;
/// Numbers the gateway's own list requests: each gets its own id (`"tollgate-list-N"`), since
/// several may be in flight in one upstream session at once (a batch's list beside a table
/// rebuild), and an upstream that maps its replies by id would give one of them none.
static LIST_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One page of an upstream's list: each item's JSON text (as the upstream wrote it; only the
/// items a client page takes are parsed), and its `nextCursor`.
pub(super) struct Page {
    /// The response message.
    text: String,
    /// Where each item's text is in `text`.
    spans: Vec<std::ops::Range<usize>>,
    pub(super) next: Option<String>,
}

impl Page {
    pub(super) fn items(&self) -> impl Iterator<Item = &str> {
        self.spans.iter().map(|r| &self.text[r.clone()])
    }
}

/// Whether a listed tool (`item`, its JSON text) of upstream `u` may be offered: a tool whose
/// `inputSchema` annotates `x-mcp-header` in a way the 2026-07-28 revision forbids is dropped,
/// as a client on HTTP must (`mcp::modern::x_mcp_headers_valid`), logged and counted. Only a
/// tool that mentions the annotation at all is parsed for it.
pub(super) fn tool_usable(gw: &Gateway, u: usize, item: &str) -> bool {
    if memchr::memmem::find(item.as_bytes(), b"x-mcp-header").is_none() {
        return true;
    }
    let Ok(schema) = sonic_rs::get(item, ["inputSchema"]) else {
        return true;
    };
    let Ok(schema) = sonic_rs::from_str::<sonic_rs::Value>(schema.as_raw_str()) else {
        return true;
    };
    match crate::mcp::modern::x_mcp_headers_valid(&schema) {
        Ok(()) => true,
        Err(why) => {
            let name = &gw.upstreams[u].name;
            let tool = field(item, "name").unwrap_or_default();
            tracing::warn!(upstream = %name, tool = %tool, error = %why, "tool left out: its x-mcp-header annotation is invalid");
            metrics::counter!(crate::observe::names::FEDERATION_TOOLS_DROPPED_TOTAL, "upstream" => name.clone(), "reason" => "x_mcp_header").increment(1);
            false
        }
    }
}

/// A string field of an item's JSON text (`name`, `uri`, `uriTemplate`).
pub(super) fn field(item: &str, key: &str) -> Option<String> {
    sonic_rs::get(item, [key])
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
}

/// One page of `list` from upstream `u`.
pub(super) async fn fetch_page(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
    session: &crate::mcp::session::UpstreamSession,
    (trace, caller): (&[u8], exchange::Caller<'_>),
    list: ListKind,
    cursor: Option<&str>,
) -> Result<Page, String> {
    let id = next_list_id();
    let body = page_request(list, cursor, &id);
    let reply = exchange::rpc(w, gw, u, session, (trace, caller), &body)
        .await
        .map_err(|e| e.reason)?;
    if reply.status == 404 && session.session_id.is_some() {
        // If it is one of the worker's held sessions, the upstream ended it: the next request
        // gets another (a client's own session is not in the pool; nothing happens then).
        w.held.forget_session(gw, u, session);
    }
    let msg = exchange::result_message(gw, u, &reply, id.as_bytes())?;
    read_page(list, msg)
}

/// A fresh id for one of the gateway's own list requests (JSON text).
pub(super) fn next_list_id() -> String {
    let n = LIST_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("\"tollgate-list-{n}\"")
}

/// The JSON-RPC request with id `id` (JSON text) for one page of `list`.
pub(super) fn page_request(list: ListKind, cursor: Option<&str>, id: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(96);
    body.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(b",\"method\":\"");
    body.extend_from_slice(list.method().as_bytes());
    body.extend_from_slice(b"\"");
    if let Some(c) = cursor {
        body.extend_from_slice(b",\"params\":{\"cursor\":");
        crate::error::json_escape_into(&mut body, c);
        body.push(b'}');
    }
    body.push(b'}');
    body
}

/// A page from the list response message `msg`.
pub(super) fn read_page(list: ListKind, msg: Vec<u8>) -> Result<Page, String> {
    // One pass with the scanner's lexer finds each item's text: a page of a thousand tools is
    // not built into a thousand trees (only the items a client page takes are parsed).
    let msg = String::from_utf8(msg).map_err(|_| "sent a list that is not UTF-8".to_string())?;
    let key = items_key(list);
    let page = jsonrpc::list_page(&msg, key, 120).map_err(|e| match e {
        jsonrpc::ListError::NotAList => {
            format!("its {} result's {key} is not a list", list.method())
        }
        other => format!("sent an unreadable {} result: {other:?}", list.method()),
    })?;
    let next = page
        .next_cursor
        .filter(|c| !c.is_empty() && c.len() <= cursor::MAX_UPSTREAM_CURSOR_LEN);
    Ok(Page {
        text: msg,
        spans: page.items,
        next,
    })
}

fn items_key(list: ListKind) -> &'static str {
    match list {
        ListKind::Tools => "tools",
        ListKind::Prompts => "prompts",
        ListKind::Resources => "resources",
        ListKind::ResourceTemplates => "resourceTemplates",
        ListKind::Tasks => "tasks",
    }
}

/// An aggregated list request (`msg`: its bytes): the result of one page of the server's
/// listing, or why not.
pub(super) async fn page(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    req: &FedRequest,
    method: Method,
    msg: &[u8],
) -> Result<Vec<u8>, Refusal> {
    let s = &gw.config.servers[server];
    let claims = req.claims.clone();
    let list = match method {
        Method::ToolsList => ListKind::Tools,
        Method::PromptsList => ListKind::Prompts,
        Method::ResourcesList => ListKind::Resources,
        Method::TasksList => ListKind::Tasks,
        _ => ListKind::ResourceTemplates,
    };
    // The upstreams this session holds, in the server's order: the listing's order.
    let order: Vec<u64> = s
        .upstreams
        .iter()
        .filter_map(|m| {
            super::super::upstream_session(gw, Some(&claims), m.upstream).map(|x| x.upstream)
        })
        .collect();
    let expect = Expect {
        list,
        server: gw.server_ids[server],
        session: Some(claims.id),
    };
    let start = match client_cursor(msg) {
        None => Position::start(&order),
        Some(text) => match gw.cursors.open(text.as_bytes(), unix_now(), &expect) {
            Ok(c) => Some(c.position),
            Err(e) => {
                tracing::debug!(error = ?e, "federated list: cursor refused");
                let why = "invalid cursor: list again without one";
                return Err(Refusal::because(Kind::BadCursor, why));
            }
        },
    };
    let table = match list {
        ListKind::Tools => w.catalogs.names(gw, server, TableKind::Tools),
        ListKind::Prompts => w.catalogs.names(gw, server, TableKind::Prompts),
        _ => None,
    };
    let uri_table = match list {
        ListKind::Resources | ListKind::ResourceTemplates => {
            Some(current_uris(w, gw, server, &claims, (&req.trace, req.access.caller())).await)
        }
        _ => None,
    };
    let mut items: Vec<sonic_rs::Value> = Vec::new();
    // A 2026-07-28 request (its session made for it names that revision): the page carries the
    // revision's caching hints, the smallest TTL of the upstream pages it was made from (a page
    // without one counts as 0) and `private` if any of them is.
    let stateless = !claims.protocol_version.is_legacy();
    let (mut ttl, mut private): (Option<u64>, bool) = (None, false);
    let mut next: Option<Position> = None;
    let mut at = start;
    let mut budget = FETCH_BUDGET;
    let mut new_names = false;
    while let Some(pos) = at.take() {
        let Some(member) = s
            .upstreams
            .iter()
            .position(|m| gw.upstreams[m.upstream].id == pos.upstream)
        else {
            let why = "invalid cursor: its upstream left this endpoint; list again";
            return Err(Refusal::because(Kind::BadCursor, why));
        };
        let u = s.upstreams[member].upstream;
        let Some(session) = super::super::upstream_session(gw, Some(&claims), u) else {
            let why = "invalid cursor: not from this session";
            return Err(Refusal::because(Kind::BadCursor, why));
        };
        budget -= 1;
        let page = match fetch_page(
            w,
            gw,
            u,
            session,
            (&req.trace, req.access.caller()),
            list,
            pos.upstream_cursor.as_deref(),
        )
        .await
        {
            Ok(p) => p,
            Err(why) => {
                if list == ListKind::Tasks {
                    // Most upstreams have no tasks (and answer tasks/list with an error): they
                    // list none, which is not a failure.
                    tracing::debug!(upstream = %gw.upstreams[u].name, error = %why, "federated tasks/list: upstream lists no tasks");
                } else {
                    failed(gw, u, &why);
                }
                Page {
                    text: String::new(),
                    spans: Vec::new(),
                    next: None,
                }
            }
        };
        if stateless && !page.text.is_empty() {
            let hint = |k: &str| sonic_rs::get(&page.text, ["result", k]).ok();
            let t = hint("ttlMs").and_then(|v| v.as_u64()).unwrap_or(0);
            ttl = Some(ttl.map_or(t, |x| x.min(t)));
            private |= hint("cacheScope").is_some_and(|v| v.as_str() == Some("private"));
        }
        let room = s.list_page_size.saturating_sub(items.len());
        let Some((range, step)) =
            cursor::advance(&order, &pos, page.spans.len(), page.next.as_deref(), room)
        else {
            break;
        };
        for raw in page.items().skip(range.start).take(range.len()) {
            if list == ListKind::Tools && !tool_usable(gw, u, raw) {
                continue;
            }
            // Parsed and written again: the client reads exactly the item the gateway decided
            // on (a duplicated `name` key cannot show one name and route another).
            let Ok(mut item) = sonic_rs::from_str::<sonic_rs::Value>(raw) else {
                continue;
            };
            if list == ListKind::Tasks {
                // A task is listed under the gateway task id that names its upstream.
                if task_exposed(gw, &claims.id, gw.upstreams[u].id, &mut item) {
                    items.push(item);
                }
                continue;
            }
            let tables = Tables {
                names: table.as_ref().map(|t| &*t.0),
                uris: uri_table.as_deref(),
            };
            if expose(s, member, list, &mut item, tables, &mut new_names)
                && shown(w, gw, server, &req.access, (list, u, raw), &item)
            {
                items.push(item);
            }
        }
        match step {
            Step::Fetch(p) if budget > 0 => at = Some(p),
            Step::Fetch(p) | Step::Full(p) => next = Some(p),
            Step::End => {}
        }
    }
    if new_names {
        // A name the table does not know yet: the next call that needs the table rebuilds it.
        let kind = match list {
            ListKind::Tools => TableKind::Tools,
            ListKind::Prompts => TableKind::Prompts,
            _ => TableKind::Resources,
        };
        w.catalogs.mark_stale(gw, server, kind);
    }
    let mut out = Vec::with_capacity(256 + items.len() * 256);
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(items_key(list).as_bytes());
    out.extend_from_slice(b"\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = sonic_rs::to_writer(&mut out, item);
    }
    out.push(b']');
    if let Some(p) = next {
        let sealed = gw.cursors.seal(&Cursor {
            list,
            server: gw.server_ids[server],
            position: p,
            issued_at: unix_now(),
            session: Some(claims.id),
        });
        match sealed {
            Ok(text) => {
                out.extend_from_slice(b",\"nextCursor\":");
                crate::error::json_escape_into(&mut out, &text);
            }
            Err(e) => {
                tracing::warn!(error = ?e, "federated list: cursor not sealed; page ends the listing")
            }
        }
    }
    if stateless {
        // What a caller sees depends on who it is wherever rules decide, and where a member
        // was asked with a token exchanged for this caller (it may list per identity).
        let private =
            private || s.rules.is_some() || super::super::identity::exchanges_tokens(gw, server);
        let scope = if private { "private" } else { "public" };
        let hints = format!(",\"ttlMs\":{},\"cacheScope\":\"{scope}\"", ttl.unwrap_or(0));
        out.extend_from_slice(hints.as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

/// Whether an exposed item (`item`, as the client will see it; `raw`: as upstream `u` listed
/// it) is shown to the caller: the rules' visibility (`proxy::authorize::visible`).
fn shown(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    access: &super::super::authorize::Access,
    (list, u, raw): (ListKind, usize, &str),
    item: &sonic_rs::Value,
) -> bool {
    use crate::policy::rules::{ann, Item, ItemKind};
    if gw.config.servers[server].rules.is_none() {
        return true;
    }
    let (kind, key, method) = match list {
        ListKind::Tools => (ItemKind::Tool, "name", Method::ToolsCall),
        ListKind::Prompts => (ItemKind::Prompt, "name", Method::PromptsGet),
        ListKind::Resources => (ItemKind::Resource, "uri", Method::ResourcesRead),
        ListKind::ResourceTemplates => (ItemKind::Resource, "uriTemplate", Method::ResourcesRead),
        ListKind::Tasks => return true,
    };
    let Some(name) = item.get(key).and_then(|n| n.as_str()) else {
        return false;
    };
    let it = Item {
        kind,
        name,
        method,
        upstream: Some(u),
        annotations: if kind == ItemKind::Tool {
            ann::of_tool(raw)
        } else {
            0
        },
    };
    super::super::authorize::visible(w, gw, server, access, &it)
}

/// `params.cursor` of the client's list request.
fn client_cursor(body: &[u8]) -> Option<String> {
    let limits = jsonrpc::ScanLimits {
        max_depth: 120,
        max_batch_len: 1,
    };
    match jsonrpc::scan(body, &limits) {
        Ok(jsonrpc::Body::Single(m)) => m.cursor.map(|c| c.value.into_owned()),
        _ => None,
    }
}

/// The routing tables a listing is held to (whichever exist).
#[derive(Clone, Copy)]
struct Tables<'a> {
    names: Option<&'a NameTable>,
    uris: Option<&'a UriTable>,
}

/// Rewrites one listed item for the client (tools and prompts get their exposed name) and says
/// whether the server exposes it (its filter; a name another upstream holds in the table).
fn expose(
    s: &Server,
    member: usize,
    list: ListKind,
    item: &mut sonic_rs::Value,
    tables: Tables<'_>,
    new_names: &mut bool,
) -> bool {
    let table = tables.names;
    match list {
        ListKind::Tools | ListKind::Prompts => {
            let Some(original) = item.get("name").and_then(|n| n.as_str()).map(str::to_owned)
            else {
                return false;
            };
            let (exposed, _) = s.upstreams[member].namer.expose(&original);
            let filter = if list == ListKind::Tools {
                &s.tools.filter
            } else {
                &s.prompts.filter
            };
            if !filter.allows(&exposed) {
                return false;
            }
            if let Some(t) = table {
                match t.resolve(&exposed) {
                    Some((m, o)) if m != member || o != original => return false,
                    Some(_) => {}
                    None => *new_names = true,
                }
            }
            if let Some(obj) = item.as_object_mut() {
                obj.insert("name", sonic_rs::Value::from(exposed.as_str()));
            }
            true
        }
        ListKind::Resources => {
            let Some(uri) = item.get("uri").and_then(|u| u.as_str()) else {
                return false;
            };
            if !s.resources.filter.allows(uri) {
                return false;
            }
            // Written back as decided: a duplicated `uri` key cannot show a client another.
            let uri = uri.to_owned();
            if let Some(obj) = item.as_object_mut() {
                obj.insert("uri", sonic_rs::Value::from(uri.as_str()));
            }
            let uri = uri.as_str();
            match tables.uris {
                // Listed by this upstream in the table: shown. Routed elsewhere (the same URI
                // from an earlier upstream): hidden, as reads go there. Unknown: new, shown.
                Some(t) if t.exposes(member, uri) => true,
                Some(t) if t.route(uri).is_some() => false,
                Some(_) => {
                    *new_names = true;
                    true
                }
                None => true,
            }
        }
        ListKind::Tasks => true,
        ListKind::ResourceTemplates => {
            let Some(tpl) = item.get("uriTemplate").and_then(|u| u.as_str()) else {
                return false;
            };
            if !s.resources.filter.allows(tpl) {
                return false;
            }
            let tpl = tpl.to_owned();
            if let Some(obj) = item.as_object_mut() {
                obj.insert("uriTemplate", sonic_rs::Value::from(tpl.as_str()));
            }
            let tpl = tpl.as_str();
            match tables.uris {
                Some(t) if t.exposes_template(member, tpl) => true,
                Some(t) if t.templates().any(|(m, x)| m != member && overlaps(x, tpl)) => false,
                Some(_) => {
                    *new_names = true;
                    true
                }
                None => true,
            }
        }
    }
}

/// Gives a listed task the gateway task id of upstream `upstream`'s; false (left out) when it
/// has no string `taskId` or one too long to wrap.
fn task_exposed(
    gw: &Gateway,
    session: &[u8; 16],
    upstream: u64,
    item: &mut sonic_rs::Value,
) -> bool {
    let Some(id) = item
        .get("taskId")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
    else {
        return false;
    };
    let mut text = Vec::with_capacity(id.len() + 2);
    crate::error::json_escape_into(&mut text, &id);
    let Ok(wrapped) = gw.taskids.wrap(session, upstream, &text) else {
        return false;
    };
    // The wrapped id is base64url between quotes: its value is the text inside them.
    let value = wrapped.trim_matches('"');
    if let Some(obj) = item.as_object_mut() {
        obj.insert("taskId", sonic_rs::Value::from(value));
    }
    true
}

/// Whether two URI templates can match the same URI (one literal beginning begins the other).
fn overlaps(a: &str, b: &str) -> bool {
    let lit = |t: &str| t.find('{').map_or(t.len(), |i| i);
    let (a, b) = (&a[..lit(a)], &b[..lit(b)]);
    a.starts_with(b) || b.starts_with(a)
}
