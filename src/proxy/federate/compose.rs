//! `initialize` on a federated endpoint: the client's request goes to every upstream at once
//! (so each upstream sees the client's own capabilities: sampling, elicitation, roots, tasks),
//! and the gateway answers with its own result: its `serverInfo`, the capabilities it proxies
//! (the union of the upstreams'), `instructions` composed from theirs, and one session token
//! holding every upstream session that opened.
//!
//! All at once, not lazily: a client session cannot learn a new `Mcp-Session-Id` later, and
//! the upstream sessions live in the token, so every upstream session must exist when the
//! token is sealed. An upstream that fails here is left out of this session (its tools are
//! absent from its lists, calls to them name it), logged and counted; each new session tries
//! it again.

use futures_util::future::join_all;
use serde_json::{json, Map, Value};

use crate::error::Kind;
use crate::mcp::session::{SessionClaims, SessionSealer, UpstreamSession};
use crate::mcp::ProtocolVersion;
use crate::observe::names;

use super::super::client::Client;
use super::super::context::Ctx;
use super::super::initialize::negotiated_version;
use super::super::reject::Refusal;
use super::super::state::{Gateway, WorkerState};
use super::super::{refuse, unix_now, Next};
use super::exchange::{self, Reply};

/// What one upstream's initialize gave.
struct Opened {
    u: usize,
    version: ProtocolVersion,
    session_id: Option<String>,
    result: sonic_rs::Value,
    /// The replica its session was opened on (0: one replica, or stateless).
    replica: u64,
}

pub(super) async fn initialize(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    trace: &[u8],
    body: &[u8],
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    let id = ctx.answer_id().unwrap_or(b"null").to_vec();
    let members: Vec<usize> = gw.config.servers[server]
        .upstreams
        .iter()
        .map(|m| m.upstream)
        .collect();
    // The session's id is chosen now: an upstream with `transport: sse` binds its stream to it.
    let session_id = SessionSealer::new_id();
    let me = c.worker().clone();
    // Members are initialized on behalf of the caller: the session is bound to its principal,
    // so every later request in it is the same caller's.
    let on_behalf = ctx.caller_owned();
    let caller = on_behalf.as_ref().map(|o| o.caller());
    let calls = members.iter().map(|&u| {
        let (me, gen) = (me.clone(), gen.clone());
        async move {
            if gw.upstreams[u].legacy {
                let opened = super::super::legacy::open_member(
                    &me,
                    gen.gw.clone(),
                    u,
                    session_id,
                    (trace, body),
                )
                .await;
                let reply = opened
                    .map(|(msg, binding)| Reply {
                        status: 200,
                        session_id: Some(binding),
                        body: msg,
                        sse: false,
                        replica: 0,
                    })
                    .map_err(|why| crate::error::Error::new(Kind::UpstreamUnavailable, why));
                return (u, reply);
            }
            let r = exchange::post_request(gw, u, None, trace, body);
            (u, exchange::whole(w, gw, (u, 0), r, caller).await)
        }
    });
    let replies = join_all(calls).await;
    let mut opened = Vec::with_capacity(replies.len());
    let mut failed = Vec::new();
    for (u, reply) in replies {
        let binding = reply.as_ref().ok().and_then(|r| r.session_id.clone());
        let o = match reply
            .map_err(|e| e.reason)
            .and_then(|r| opened_from(gw, u, r, &id))
        {
            Ok(o) => Ok(o),
            // An upstream of the stateless revision only refuses initialize: it joins the
            // session as a stateless entry (its requests are made ones of its revision).
            Err(why) => stateless_member(w, gw, u, caller).await.ok_or(why),
        };
        match o {
            Ok(o) => opened.push(o),
            Err(why) => {
                let name = &gw.upstreams[u].name;
                if let Some(sid) = &binding {
                    close_legacy_binding(w, gw, u, session_id, sid);
                }
                tracing::warn!(upstream = %name, error = %why, "federated initialize: upstream left out of the session");
                metrics::counter!(names::FEDERATION_UPSTREAM_FAILURES_TOTAL, "upstream" => name.clone(), "step" => "initialize").increment(1);
                failed.push(why);
            }
        }
    }
    if opened.is_empty() {
        let why = format!("no upstream could be initialized: {}", failed.join("; "));
        return refuse(c, ctx, Refusal::because(Kind::UpstreamUnavailable, why)).await;
    }
    // Every upstream negotiated on its own; the client gets the oldest of them, which each of
    // the others also speaks (they answered the client's request with it or a newer one).
    let version = opened
        .iter()
        .map(|o| o.version)
        .filter(|v| v.is_legacy())
        .min()
        .unwrap_or(ProtocolVersion::LATEST_LEGACY);
    let now = unix_now();
    let claims = SessionClaims {
        id: session_id,
        server: gw.server_ids[server],
        protocol_version: version,
        issued_at: now,
        expires_at: now + gw.config.session.ttl.as_secs(),
        upstreams: opened
            .iter()
            .map(|o| UpstreamSession {
                upstream: gw.upstreams[o.u].id,
                session_id: o.session_id.clone(),
                protocol_version: o.version,
                replica: o.replica,
            })
            .collect(),
        principal: ctx.binding(),
    };
    let token = match gw.sealer.try_seal(&claims) {
        Ok(t) => t,
        Err(e) => {
            let why = format!("the upstream sessions do not fit in a session id: {e}");
            for o in &opened {
                if let Some(sid) = &o.session_id {
                    close_legacy_binding(w, gw, o.u, session_id, sid);
                }
            }
            return refuse(c, ctx, Refusal::because(Kind::Internal, why)).await;
        }
    };
    w.metrics.sessions_opened.increment(1);
    ctx.session = Some(claims.id);
    let result = compose(gw, version, &opened);
    let mut body = Vec::with_capacity(512);
    body.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    body.extend_from_slice(&id);
    body.extend_from_slice(b",\"result\":");
    body.extend_from_slice(result.to_string().as_bytes());
    body.push(b'}');
    super::reply_json(c, ctx, 200, &body, Some(&token)).await
}

/// An upstream that speaks the stateless revision (it answers `server/discover`): its discover
/// result stands for an initialize result (capabilities, instructions). `None` otherwise.
async fn stateless_member(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
    caller: exchange::Caller<'_>,
) -> Option<Opened> {
    if super::super::held::era(w, gw, u, caller).await != super::super::held::Era::Stateless {
        return None;
    }
    let result = super::super::stateless::discover_upstream(w, gw, u, caller)
        .await
        .ok()?;
    Some(Opened {
        u,
        version: crate::mcp::modern::STATELESS_VERSIONS[0],
        session_id: None,
        result,
        replica: 0,
    })
}

/// Every upstream of `server` as a member of a 2026-07-28 request: a stateless entry for one
/// that speaks that revision, the worker's held session for a session-era one; an upstream that
/// cannot be reached is left out (logged and counted, like a failed initialize).
pub(in super::super) async fn stateless_members(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    caller: exchange::Caller<'_>,
) -> Vec<UpstreamSession> {
    use super::super::held::{self, Era};
    let mut out = Vec::new();
    for m in &gw.config.servers[server].upstreams {
        let u = m.upstream;
        if gw.upstreams[u].legacy {
            // An HTTP+SSE member's session is an event stream the client's own session holds;
            // there is none to hold for a stateless request (its tools are absent from it).
            continue;
        }
        match held::era(w, gw, u, caller).await {
            Era::Stateless => out.push(UpstreamSession {
                upstream: gw.upstreams[u].id,
                session_id: None,
                protocol_version: crate::mcp::modern::STATELESS_VERSIONS[0],
                replica: 0,
            }),
            Era::Session => match held::any_session(w, gw, u).await {
                Ok(h) => out.push(h.session.clone()),
                Err(e) => {
                    let name = &gw.upstreams[u].name;
                    tracing::warn!(upstream = %name, error = %e.reason, "stateless request: upstream left out");
                    metrics::counter!(names::FEDERATION_UPSTREAM_FAILURES_TOTAL, "upstream" => name.clone(), "step" => "held_session").increment(1);
                }
            },
        }
    }
    out
}

/// The `server/discover` result of a federated endpoint for a 2026-07-28 client: the union of
/// what its upstreams offer (a stateless one's discover, a session-era one's held `initialize`),
/// as `compose` unites initialize results, in the revision's shape. `listChanged` only for a kind
/// some stateless member declares it for (the gateway merges their `subscriptions/listen`
/// streams, `federate::listen`; a held session cannot listen, so a session-era member's does
/// not count), and no `subscribe`. The stateless revision is offered unless the client asks for
/// sampling, elicitation or roots and a session-era upstream is behind: a held session cannot
/// carry them (its upstream's tools that ask would get -32601), a session of the client's own
/// (an "auto" client falls back to `initialize`) can; `servers[].offer_stateless: always` offers
/// it regardless. A client pinned to 2026-07-28 is served all the same, the held members seeing
/// a client without those capabilities.
pub(in super::super) async fn stateless_discover(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    asks_client_features: bool,
    caller: exchange::Caller<'_>,
) -> String {
    use super::super::held::{self, Era};
    let mut opened = Vec::new();
    let mut held_any = false;
    // A member with `transport: sse` cannot be reached by a stateless request: a client that
    // can fall back to a session should (the stateless revision is then not offered).
    let mut sse_member = false;
    // Kinds some stateless member announces list changes for (on its listen stream).
    let mut list_changed: Vec<String> = Vec::new();
    for m in &gw.config.servers[server].upstreams {
        let u = m.upstream;
        if gw.upstreams[u].legacy {
            sse_member = true;
            continue;
        }
        let result = match held::era(w, gw, u, caller).await {
            Era::Stateless => {
                use sonic_rs::{JsonContainerTrait, JsonValueTrait};
                let r = super::super::stateless::discover_upstream(w, gw, u, caller)
                    .await
                    .ok();
                if let Some(caps) = r.as_ref().and_then(|r| r.get("capabilities")) {
                    for (kind, c) in caps.as_object().into_iter().flat_map(|o| o.iter()) {
                        if c.get("listChanged").and_then(|v| v.as_bool()) == Some(true) {
                            list_changed.push(kind.to_string());
                        }
                    }
                }
                r
            }
            Era::Session => {
                held_any = true;
                use sonic_rs::JsonValueMutTrait;
                held::any_session(w, gw, u).await.ok().map(|h| {
                    // Tasks are bound to one upstream session in its era, and a held session
                    // is one of a pool shared by every stateless client: not offered.
                    let mut init = h.initialize.clone();
                    if let Some(caps) = init.get_mut("capabilities").and_then(|c| c.as_object_mut())
                    {
                        caps.remove(&"tasks");
                    }
                    init
                })
            }
        };
        if let Some(result) = result {
            opened.push(Opened {
                u,
                version: crate::mcp::modern::STATELESS_VERSIONS[0],
                session_id: None,
                result,
                replica: 0,
            });
        }
    }
    let composed = compose(gw, ProtocolVersion::LATEST_LEGACY, &opened);
    let mut caps = composed
        .get("capabilities")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(obj) = caps.as_object_mut() {
        for (kind, v) in obj.iter_mut() {
            if let Some(o) = v.as_object_mut() {
                o.remove("listChanged");
                o.remove("subscribe");
                if matches!(kind.as_str(), "tools" | "prompts" | "resources")
                    && list_changed.contains(kind)
                {
                    o.insert("listChanged".into(), Value::Bool(true));
                }
            }
        }
    }
    let mut versions: Vec<&str> = Vec::new();
    let always = gw.config.servers[server].offer_stateless_always;
    let offer_stateless = !(sse_member || held_any && asks_client_features && !always);
    if offer_stateless {
        versions.extend(
            crate::mcp::modern::STATELESS_VERSIONS
                .iter()
                .map(|v| v.as_str()),
        );
    }
    versions.extend(
        ProtocolVersion::ALL
            .iter()
            .rev()
            .filter(|v| v.is_legacy())
            .map(|v| v.as_str()),
    );
    let mut r = json!({
        "resultType": "complete",
        "supportedVersions": versions,
        "capabilities": caps,
        "_meta": {"io.modelcontextprotocol/serverInfo": composed.get("serverInfo").cloned().unwrap_or_default()},
        "ttlMs": 0,
        "cacheScope": "public",
    });
    if let Some(i) = composed.get("instructions") {
        r["instructions"] = i.clone();
    }
    r.to_string()
}

/// Closes the stream a member with `transport: sse` holds for `session` (binding `sid`): it
/// opened, but cannot join the session.
fn close_legacy_binding(w: &WorkerState, gw: &Gateway, u: usize, session: [u8; 16], sid: &str) {
    if !gw.upstreams[u].legacy {
        return;
    }
    let s = UpstreamSession {
        upstream: gw.upstreams[u].id,
        session_id: Some(sid.to_string()),
        protocol_version: ProtocolVersion::LATEST_LEGACY,
        replica: 0,
    };
    if let Some(link) = super::super::legacy::member_link(&s, Some(session)) {
        super::super::legacy::unlink(w, link);
    }
}

/// What one upstream's initialize reply says, or why it cannot join the session.
fn opened_from(gw: &Gateway, u: usize, reply: Reply, id: &[u8]) -> Result<Opened, String> {
    let name = &gw.upstreams[u].name;
    if reply.status != 200 {
        return Err(format!(
            "upstream \"{name}\" answered initialize with HTTP {}",
            reply.status
        ));
    }
    let negotiated = negotiated_version(gw, &reply.body, reply.sse, id)
        .map_err(|why| format!("upstream \"{name}\" {why}"))?;
    let Some(version) = negotiated.version else {
        return Err(format!("upstream \"{name}\" refused initialize"));
    };
    if let Some(sid) = &reply.session_id {
        if !crate::mcp::session::UpstreamSession::is_valid_session_id(sid.as_bytes()) {
            return Err(format!(
                "upstream \"{name}\" sent an Mcp-Session-Id the gateway cannot carry (1 to 255 \
                 visible ASCII characters)"
            ));
        }
    }
    let result = exchange::result_of(gw, u, &reply, id)?;
    Ok(Opened {
        u,
        version,
        session_id: reply.session_id,
        result,
        replica: reply.replica,
    })
}

/// The gateway's initialize result for the client.
fn compose(gw: &Gateway, version: ProtocolVersion, opened: &[Opened]) -> Value {
    use sonic_rs::{JsonContainerTrait, JsonValueTrait};
    let mut caps = Map::new();
    let flag = |caps: &mut Map<String, Value>, key: &str, sub: Option<&str>| {
        let entry = caps
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let (Some(sub), Value::Object(m)) = (sub, entry) {
            m.insert(sub.to_string(), Value::Bool(true));
        }
    };
    let mut instructions = Vec::new();
    let mut tasks = (false, false, false);
    for o in opened {
        let Some(c) = o.result.get("capabilities") else {
            continue;
        };
        // What the gateway proxies: tools, prompts, resources (with subscribe), logging and
        // completions. `listChanged` is relayed from any upstream that announces it.
        for key in ["tools", "prompts", "resources"] {
            if let Some(v) = c.get(key) {
                flag(&mut caps, key, None);
                if v.get("listChanged").and_then(|b| b.as_bool()) == Some(true) {
                    flag(&mut caps, key, Some("listChanged"));
                }
                if key == "resources" && v.get("subscribe").and_then(|b| b.as_bool()) == Some(true)
                {
                    flag(&mut caps, key, Some("subscribe"));
                }
            }
        }
        for key in ["logging", "completions"] {
            if c.get(key).is_some_and(|v| v.as_object().is_some()) {
                flag(&mut caps, key, None);
            }
        }
        // Tasks (2025-11-25): the parts the gateway proxies, where any upstream offers them:
        // tasks/list (aggregated), tasks/cancel (routed by task id), task-augmented tools/call.
        if let Some(t) = c.get("tasks").filter(|t| t.as_object().is_some()) {
            let has = |path: &[&str]| {
                let mut v = Some(t);
                for k in path {
                    v = v.and_then(|x| x.get(*k));
                }
                v.is_some_and(|x| x.as_object().is_some())
            };
            tasks.0 |= has(&["list"]);
            tasks.1 |= has(&["cancel"]);
            tasks.2 |= has(&["requests", "tools", "call"]);
        }
        if let Some(text) = o.result.get("instructions").and_then(|v| v.as_str()) {
            if !text.trim().is_empty() {
                let up = &gw.upstreams[o.u];
                instructions.push(format!("## {}\n{}", up.name, text.trim()));
            }
        }
    }
    if tasks != (false, false, false) {
        let mut t = Map::new();
        if tasks.0 {
            t.insert("list".to_string(), json!({}));
        }
        if tasks.1 {
            t.insert("cancel".to_string(), json!({}));
        }
        if tasks.2 {
            t.insert("requests".to_string(), json!({"tools": {"call": {}}}));
        }
        caps.insert("tasks".to_string(), Value::Object(t));
    }
    let mut result = json!({
        "protocolVersion": version.as_str(),
        "capabilities": Value::Object(caps),
        "serverInfo": {
            "name": "tollgate",
            "title": "tollgate MCP gateway",
            "version": env!("CARGO_PKG_VERSION"),
        },
    });
    if !instructions.is_empty() {
        let text = format!(
            "This server combines several MCP servers; each section is one server's own \
             instructions.\n\n{}",
            instructions.join("\n\n")
        );
        result["instructions"] = Value::String(text);
    }
    result
}
