//! Requests a federated endpoint routes to one upstream (by exposed name, by URI, by a
//! completion's `ref`, by a wrapped id) and those it fans out to all (notifications,
//! `logging/setLevel`).

use futures_util::future::join_all;

use crate::error::{json_escape_into, Kind};
use crate::mcp::idmap::IdError;
use crate::mcp::tasks::{self, TaskIdError};
use crate::mcp::Method;
use crate::observe::names;
use crate::policy::rules::{Item, ItemKind};

use crate::jsonrpc::MessageKind;

use super::super::authorize;
use super::super::client::Client;
use super::super::context::{Ctx, MessageCtx};
use super::super::limit;
use super::super::reject::Refusal;
use super::super::state::{Gateway, WorkerState};
use super::super::{forward, refuse, Next, Then};
use super::tables::{self, TableKind};
use super::FedRequest;
use super::{exchange, lists};

/// The upstream session of member `u`, or the refusal naming the upstream the session lacks.
fn held<'a>(
    gw: &Gateway,
    claims: &'a crate::mcp::session::SessionClaims,
    u: usize,
) -> Result<&'a crate::mcp::session::UpstreamSession, Refusal> {
    super::super::upstream_session(gw, Some(claims), u).ok_or_else(|| {
        Refusal::because(
            Kind::UpstreamUnavailable,
            format!(
                "upstream \"{}\" is not part of this session (it could not be initialized when \
                 the session began): initialize a new session to try it again",
                gw.upstreams[u].name
            ),
        )
    })
}

/// Sends `body` to upstream `u` in the client's session and relays the reply.
async fn send(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    req: &FedRequest,
    u: usize,
    body: &[u8],
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let claims = &*req.claims;
    let session = match held(gw, claims, u) {
        Ok(s) => s,
        Err(r) => return refuse(c, ctx, r).await,
    };
    if gw.upstreams[u].legacy {
        // Through its event stream (`proxy::legacy`); the token holds the stream's binding.
        let Some(link) = super::super::legacy::member_link(session, Some(claims.id)) else {
            let why = format!(
                "upstream \"{}\" has no HTTP+SSE session here",
                gw.upstreams[u].name
            );
            return refuse(c, ctx, Refusal::because(Kind::UpstreamUnavailable, why)).await;
        };
        let body = (&req.trace[..], body.to_vec());
        return super::super::legacy::dispatch(w, c, ctx, u, &link, body).await;
    }
    if session.protocol_version.is_legacy() && !claims.protocol_version.is_legacy() {
        // A 2026-07-28 request to a session-era member: in a held session of its own for the
        // exchange, the reply stamped (`stateless::send_held`).
        return super::super::stateless::send_held(w, c, ctx, u, &req.trace, body).await;
    }
    let headers = if req.params.is_empty() || session.protocol_version.is_legacy() {
        std::borrow::Cow::Borrowed(&req.trace[..])
    } else {
        std::borrow::Cow::Owned([&req.trace[..], &req.params[..]].concat())
    };
    c.up_out = exchange::post_request(gw, u, Some(session), &headers, body);
    let had_session = session.session_id.is_some();
    // A session-era client's request made one of the 2026-07-28 revision: the upstream's
    // errors are made ones of the client's revision (`stateless::for_session_client`).
    // A 2026-07-28 client's, to an upstream of that revision: `resultType` added where its
    // result lacks it, as on a single-upstream endpoint.
    let then = match ctx.era {
        _ if session.protocol_version.is_legacy() => Then::RelayFederated(claims.id),
        crate::error::Era::Session => Then::Translated,
        crate::error::Era::Stateless => Then::Stamped(super::super::stateless::Stamp::MODERN),
    };
    forward(w, c, ctx, (u, session.replica), had_session, then).await
}

/// One message to decide on: its scanned view, its bytes, and where those bytes start in the
/// body the view's offsets refer to (0 for a single message; its place in a batch).
pub(super) struct Msg<'a> {
    pub m: &'a MessageCtx,
    pub bytes: &'a [u8],
    pub base: usize,
    /// Its index in the request's messages (what its decision is kept under).
    pub index: u16,
}

impl<'a> Msg<'a> {
    /// Message `m` of `body` (a batch's element, or the whole body).
    pub fn of(m: &'a MessageCtx, body: &'a [u8], index: usize) -> Self {
        let r = m.span.start as usize..m.span.end as usize;
        Msg {
            m,
            bytes: &body[r.clone()],
            base: r.start,
            index: authorize::msg_index(index),
        }
    }

    fn at(&self, offset: u32) -> usize {
        offset as usize - self.base
    }
}

/// Where one message goes: the decision made for each message on its own (a batch's too).
pub(super) enum Decision {
    /// The gateway answers it itself with this `result` (ping, lists).
    Result(Vec<u8>),
    /// To upstream `u` as `body` (a routed request, or a client response going back).
    Upstream { u: usize, body: Vec<u8> },
    /// To every upstream of the session, as it came (client notifications, `logging/setLevel`).
    FanOut,
}

/// The per-message decision point: what the gateway does with one message of a federated
/// endpoint, or the refusal it answers. Every message of a batch goes through here on its own
/// (the seam where a later per-message authorization belongs).
pub(super) async fn decide(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    req: &FedRequest,
    msg: &Msg<'_>,
) -> Result<Decision, Refusal> {
    let m = msg.m;
    match m.kind {
        MessageKind::Response | MessageKind::Error => return client_response(gw, server, req, msg),
        MessageKind::Notification => return Ok(Decision::FanOut),
        MessageKind::Request => {}
    }
    match m.method {
        Method::Ping => Ok(Decision::Result(b"{}".to_vec())),
        Method::ToolsList
        | Method::PromptsList
        | Method::ResourcesList
        | Method::ResourcesTemplatesList
        | Method::TasksList => lists::page(w, gw, server, req, m.method, msg.bytes)
            .await
            .map(Decision::Result),
        Method::ToolsCall | Method::PromptsGet => by_name(w, gw, server, req, msg).await,
        Method::ResourcesRead | Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => {
            by_uri(w, gw, server, req, msg).await
        }
        Method::CompletionComplete => {
            method_item(w, gw, server, req, (m.method, msg.index))?;
            completion(w, gw, server, req, msg).await
        }
        Method::TasksGet | Method::TasksResult | Method::TasksCancel => {
            method_item(w, gw, server, req, (m.method, msg.index))?;
            by_task(gw, server, req, msg)
        }
        Method::LoggingSetLevel => {
            method_item(w, gw, server, req, (m.method, msg.index))?;
            Ok(Decision::FanOut)
        }
        _ => {
            let why = "method not available on an endpoint with several upstreams";
            Err(Refusal::because(Kind::MethodNotFound, why))
        }
    }
}

/// Authorizes a method that names no tool, prompt or resource.
fn method_item(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    req: &FedRequest,
    (method, index): (Method, u16),
) -> Result<(), Refusal> {
    let item = Item {
        kind: ItemKind::Method,
        name: method.as_str(),
        method,
        upstream: None,
        annotations: 0,
    };
    authorize::check_all(w, gw, server, &req.access, (&item, index), &req.body)
}

/// A single message: decided, then answered, sent or fanned out.
pub(super) async fn single(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    req: FedRequest,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    let Some(m) = ctx.first() else {
        return refuse(c, ctx, Refusal::new(Kind::InvalidRequest)).await;
    };
    let (kind, msg) = (
        m.kind,
        Msg {
            m,
            bytes: &req.body,
            base: 0,
            index: 0,
        },
    );
    let decided = decide(w, gw, server, &req, &msg).await;
    let task = names_task(m);
    ctx.decisions.extend(req.access.decided.take());
    // Phase: limit, on what authorization allowed, keyed by where it was routed.
    let route = match &decided {
        Ok(Decision::Upstream { u, .. }) => Some(Some(*u)),
        Ok(_) => Some(None),
        Err(_) => None,
    };
    if let Some(u) = route {
        if let Err(r) = limit::phase(w, ctx, &[limit::Route::To(u)]).await {
            return refuse(c, ctx, r).await;
        }
    }
    match decided {
        Err(r) => refuse(c, ctx, r).await,
        Ok(Decision::Result(r)) if ctx.era == crate::error::Era::Stateless => {
            // What the stateless revision adds to every result (a list page carries its
            // caching hints already: `lists::page`).
            let r = crate::mcp::modern::stamp_result(&r, 0, br#""resultType":"complete""#);
            super::reply_result(c, ctx, &r).await
        }
        Ok(Decision::Result(r)) => super::reply_result(c, ctx, &r).await,
        // A reply that names a task is read (or streamed) and its task ids rewritten.
        Ok(Decision::Upstream { u, body }) if task => {
            super::batch::one(w, c, ctx, &req, u, &body).await
        }
        Ok(Decision::Upstream { u, body }) => send(w, c, ctx, &req, u, &body).await,
        Ok(Decision::FanOut) => {
            let (total, failed) = fan_out(w, gw, &req, server, &req.body).await;
            if kind == MessageKind::Notification {
                return super::accepted(c, ctx).await;
            }
            match fanned_out(total, failed) {
                Ok(r) => super::reply_result(c, ctx, r).await,
                Err(r) => refuse(c, ctx, r).await,
            }
        }
    }
}

/// Whether the reply to request `m` carries an upstream's task id in its result (a
/// task-augmented request, or `tasks/get|result|cancel`): it must be rewritten.
pub(super) fn names_task(m: &MessageCtx) -> bool {
    m.kind == MessageKind::Request
        && (m.task
            || matches!(
                m.method,
                Method::TasksGet | Method::TasksResult | Method::TasksCancel
            ))
}

/// `tasks/get`, `tasks/result`, `tasks/cancel`: `params.taskId` is a gateway task id
/// (`mcp::tasks`); it names the upstream, which gets its own task id back.
fn by_task(
    gw: &Gateway,
    server: usize,
    req: &FedRequest,
    msg: &Msg<'_>,
) -> Result<Decision, Refusal> {
    let Some(span) = msg.m.task_id_span.clone() else {
        let why = "params.taskId is required (a task id this gateway gave)";
        return Err(Refusal::because(Kind::UnknownName, why));
    };
    let (start, end) = (msg.at(span.start), msg.at(span.end));
    let text = &msg.bytes[start..end];
    let (upstream_id, original) = tasks::open(&gw.taskids, &req.claims.id, text).map_err(|e| {
        let why = match e {
            TaskIdError::NotOurs => "Unknown task: not a task id this gateway issued",
            TaskIdError::Foreign => {
                "Unknown task: this task id was not issued to this session (altered, or \
                     from another session)"
            }
        };
        Refusal::because(Kind::UnknownName, why)
    })?;
    let Some(u) = gw.config.servers[server]
        .upstreams
        .iter()
        .map(|m| m.upstream)
        .find(|&u| gw.upstreams[u].id == upstream_id)
    else {
        let why = "Unknown task: its upstream is no longer behind this endpoint";
        return Err(Refusal::because(Kind::UnknownName, why));
    };
    held(gw, &req.claims, u)?;
    let mut body = Vec::with_capacity(msg.bytes.len());
    body.extend_from_slice(&msg.bytes[..start]);
    body.extend_from_slice(&original);
    body.extend_from_slice(&msg.bytes[end..]);
    Ok(Decision::Upstream { u, body })
}

/// The answer to a fanned-out request (`logging/setLevel`): an empty result unless every
/// upstream failed.
pub(super) fn fanned_out(total: usize, failed: usize) -> Result<&'static [u8], Refusal> {
    if total > 0 && failed == total {
        let why = "no upstream accepted logging/setLevel";
        return Err(Refusal::because(Kind::UpstreamUnavailable, why));
    }
    Ok(b"{}")
}

/// `tools/call` and `prompts/get`: the exposed name → (upstream, original name); the upstream
/// gets its own name, spliced into the client's bytes.
async fn by_name(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    req: &FedRequest,
    msg: &Msg<'_>,
) -> Result<Decision, Refusal> {
    let (kind, what) = if msg.m.method == Method::ToolsCall {
        (TableKind::Tools, "tool")
    } else {
        (TableKind::Prompts, "prompt")
    };
    let claims = &req.claims;
    let (name, span) = match msg.m.name.as_ref().zip(msg.m.name_span.clone()) {
        Some((n, span)) => (n.as_str().to_string(), span),
        None => {
            let why = format!("params.name is required (the {what}'s name)");
            return Err(Refusal::because(Kind::UnknownName, why));
        }
    };
    let table = tables::names_for(
        w,
        gw,
        server,
        claims,
        (&req.trace, req.access.caller()),
        kind,
        &name,
    )
    .await;
    let Some((member, original)) = table.resolve(&name) else {
        // A name in the space of an upstream this session does not hold: say so (the session
        // could not open it), rather than that the name is unknown.
        let s = &gw.config.servers[server];
        let absent = s.upstreams.iter().find(|m| {
            m.namer.prefix().is_some_and(|p| {
                name.strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with(m.namer.separator()))
            }) && super::super::upstream_session(gw, Some(&**claims), m.upstream).is_none()
        });
        if let Some(m) = absent {
            held(gw, claims, m.upstream)?;
        }
        let why = format!("Unknown {what}: {name}");
        return Err(Refusal::because(Kind::UnknownName, why));
    };
    let u = gw.config.servers[server].upstreams[member].upstream;
    let item = Item {
        kind: if kind == TableKind::Tools {
            ItemKind::Tool
        } else {
            ItemKind::Prompt
        },
        name: &name,
        method: msg.m.method,
        upstream: Some(u),
        annotations: tables::annotations(w, gw, server, kind, &name),
    };
    authorize::check_all(w, gw, server, &req.access, (&item, msg.index), msg.bytes)?;
    let mut body = Vec::with_capacity(msg.bytes.len() + original.len());
    let (start, end) = (msg.at(span.start), msg.at(span.end));
    body.extend_from_slice(&msg.bytes[..start]);
    json_escape_into(&mut body, original);
    body.extend_from_slice(&msg.bytes[end..]);
    Ok(Decision::Upstream { u, body })
}

/// `resources/read`, `resources/subscribe`, `resources/unsubscribe`: by URI (URIs are not
/// rewritten, so the body goes as it came).
async fn by_uri(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    req: &FedRequest,
    msg: &Msg<'_>,
) -> Result<Decision, Refusal> {
    let Some(uri) = msg.m.uri.as_ref() else {
        let why = "params.uri is required";
        return Err(Refusal::because(Kind::UnknownName, why));
    };
    let uri = uri.as_str().to_string();
    // The URI itself must pass the filter: an allowed template must not open a denied URI.
    if !gw.config.servers[server].resources.filter.allows(&uri) {
        let why = format!("Unknown resource: {uri}");
        return Err(Refusal::because(Kind::UnknownName, why));
    }
    let table = tables::uris_for(
        w,
        gw,
        server,
        &req.claims,
        (&req.trace, req.access.caller()),
        &uri,
    )
    .await;
    let Some(member) = table.route(&uri) else {
        let why = format!("Unknown resource: {uri}");
        return Err(Refusal::because(Kind::UnknownName, why));
    };
    let u = gw.config.servers[server].upstreams[member].upstream;
    let item = Item {
        kind: ItemKind::Resource,
        name: &uri,
        method: msg.m.method,
        upstream: Some(u),
        annotations: 0,
    };
    authorize::check_all(w, gw, server, &req.access, (&item, msg.index), msg.bytes)?;
    Ok(Decision::Upstream {
        u,
        body: msg.bytes.to_vec(),
    })
}

/// `completion/complete`: by its `ref` (a prompt's exposed name, rewritten to the original;
/// a resource template's URI). The body is parsed and written again: it is small and rare, and
/// what the upstream reads is then exactly what the gateway decided on.
async fn completion(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    req: &FedRequest,
    msg: &Msg<'_>,
) -> Result<Decision, Refusal> {
    let claims = &req.claims;
    let mut v: serde_json::Value = serde_json::from_slice(msg.bytes)
        .map_err(|e| Refusal::because(Kind::ParseError, e.to_string()))?;
    let r = &v["params"]["ref"];
    let kind = r["type"].as_str().unwrap_or_default().to_string();
    let member = match kind.as_str() {
        "ref/prompt" => {
            let name = r["name"].as_str().unwrap_or_default().to_string();
            let table = tables::names_for(
                w,
                gw,
                server,
                claims,
                (&req.trace, req.access.caller()),
                TableKind::Prompts,
                &name,
            )
            .await;
            let shown = |m: usize| {
                let item = Item {
                    kind: ItemKind::Prompt,
                    name: &name,
                    method: Method::PromptsGet,
                    upstream: Some(gw.config.servers[server].upstreams[m].upstream),
                    annotations: 0,
                };
                authorize::usable(w, gw, server, &req.access, &item)
            };
            match table.resolve(&name) {
                Some((m, original)) if shown(m) => {
                    v["params"]["ref"]["name"] = serde_json::Value::String(original.to_string());
                    Some(m)
                }
                _ => None,
            }
        }
        "ref/resource" => {
            let uri = r["uri"].as_str().unwrap_or_default().to_string();
            if gw.config.servers[server].resources.filter.allows(&uri) {
                let table = tables::uris_for(
                    w,
                    gw,
                    server,
                    claims,
                    (&req.trace, req.access.caller()),
                    &uri,
                )
                .await;
                table.route(&uri).filter(|&m| {
                    let item = Item {
                        kind: ItemKind::Resource,
                        name: &uri,
                        method: Method::ResourcesRead,
                        upstream: Some(gw.config.servers[server].upstreams[m].upstream),
                        annotations: 0,
                    };
                    authorize::usable(w, gw, server, &req.access, &item)
                })
            } else {
                None
            }
        }
        _ => None,
    };
    let Some(member) = member else {
        let why = "Unknown reference: params.ref must name a prompt or resource of this server";
        return Err(Refusal::because(Kind::UnknownName, why));
    };
    let u = gw.config.servers[server].upstreams[member].upstream;
    // Written again, but with the client's own id bytes (serde would respell `1E2` as `100.0`).
    const MARK: &str = "\u{0}tollgate-id\u{0}";
    let id = msg.m.id.as_ref().map(|i| i.get().to_vec());
    if id.is_some() {
        v["id"] = serde_json::Value::String(MARK.into());
    }
    let mut body = serde_json::to_vec(&v).unwrap_or_default();
    if let Some(id) = id {
        let mark = serde_json::to_vec(MARK).unwrap_or_default();
        if let Some(at) = memchr::memmem::find(&body, &mark) {
            body.splice(at..at + mark.len(), id);
        }
    }
    Ok(Decision::Upstream { u, body })
}

/// Sends `body` to every upstream the session holds, at once; returns how many there were and
/// how many failed.
pub(super) async fn fan_out(
    w: &WorkerState,
    gw: &Gateway,
    req: &FedRequest,
    server: usize,
    body: &[u8],
) -> (usize, usize) {
    let claims = &*req.claims;
    // A 2026-07-28 request's held sessions are shared by every such client of the worker: a
    // notification (a cancel naming some request id) must not reach another client's request.
    let stateless = !claims.protocol_version.is_legacy();
    let calls = gw.config.servers[server].upstreams.iter().filter_map(|m| {
        let u = m.upstream;
        let session = super::super::upstream_session(gw, Some(claims), u)
            .filter(|s| !(stateless && s.protocol_version.is_legacy()))?;
        let at = (&req.trace[..], req.access.caller());
        Some(async move { (u, exchange::rpc(w, gw, u, session, at, body).await) })
    });
    let results = join_all(calls).await;
    let total = results.len();
    let mut failed = 0;
    for (u, r) in results {
        let bad = match r {
            Ok(reply) if (200..300).contains(&reply.status) => None,
            Ok(reply) => Some(format!("HTTP {}", reply.status)),
            Err(e) => Some(e.reason),
        };
        if let Some(why) = bad {
            failed += 1;
            let name = &gw.upstreams[u].name;
            tracing::warn!(upstream = %name, error = %why, "federated fan-out: upstream failed");
            metrics::counter!(names::FEDERATION_UPSTREAM_FAILURES_TOTAL, "upstream" => name.clone(), "step" => "fanout").increment(1);
        }
    }
    (total, failed)
}

/// A client's response to a server→client request (sampling, elicitation, roots/list): its id
/// is one the gateway wrapped (`mcp::idmap`) when it relayed the request; it goes back to that
/// upstream with the upstream's own id.
fn client_response(
    gw: &Gateway,
    server: usize,
    req: &FedRequest,
    msg: &Msg<'_>,
) -> Result<Decision, Refusal> {
    let Some((id, start)) = msg.m.id.as_ref().zip(msg.m.id_start) else {
        return Err(Refusal::because(
            Kind::InvalidRequest,
            "a response needs an id",
        ));
    };
    let id = id.get();
    let (upstream_id, original) = gw.idmap.unwrap(&req.claims.id, id).map_err(|e| {
        let why = match e {
            IdError::NotOurs => "this response answers no request the gateway relayed",
            IdError::Forged => "this response's id was not issued to this session",
        };
        Refusal::because(Kind::InvalidRequest, why)
    })?;
    let Some(u) = gw.config.servers[server]
        .upstreams
        .iter()
        .map(|m| m.upstream)
        .find(|&u| gw.upstreams[u].id == upstream_id)
    else {
        let why = "the upstream this response is for is no longer behind this endpoint";
        return Err(Refusal::because(Kind::InvalidRequest, why));
    };
    let start = msg.at(start);
    let mut body = Vec::with_capacity(msg.bytes.len());
    body.extend_from_slice(&msg.bytes[..start]);
    body.extend_from_slice(&original);
    body.extend_from_slice(&msg.bytes[start + id.len()..]);
    // An answer tied to one of the upstream's tasks names it by the gateway task id the
    // client saw: the upstream gets its own back.
    match tasks::restore_related(&body, &gw.taskids, &req.claims.id, upstream_id) {
        Ok(Some(restored)) => body = restored,
        Ok(None) => {}
        Err(_) => {
            let why = "this response's related task was not issued to this session for that \
                       upstream";
            return Err(Refusal::because(Kind::InvalidRequest, why));
        }
    }
    Ok(Decision::Upstream { u, body })
}
