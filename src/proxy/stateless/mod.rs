//! The stateless revision (2026-07-28) on the request path: a POST whose `_meta` (or version
//! header) names it takes this path instead of the session phase. Nothing is opened or sealed:
//! every request is checked on its own (`mcp::modern`: version, `_meta`, and the headers that
//! mirror the body, before any decision), then forwarded to the endpoint's upstream with the
//! headers that revision carries, or answered by the gateway (`server/discover`, the methods
//! the revision removed).
//!
//! One upstream that speaks 2026-07-28: passed through (the reply relayed as it comes: JSON, an
//! event stream, or a long-lived `subscriptions/listen` stream). One that speaks only sessions:
//! in a held session leased from the worker's pool (`held`), results stamped whether the reply
//! is JSON or an event stream (whose server→client requests are answered upstream, never
//! relayed). A federated endpoint: the
//! federated path, over a session made for the request (`federated`). The other direction (a
//! session-era client, an upstream of this revision only) is `translated`.
//!
//! Split by what each part does: this file decides (`prepare`) and carries out (`finish`);
//! `stamp` writes what the revision adds to results; `through_held` is the held-session
//! exchange and its discover; `translate` is the other direction.

mod stamp;
mod through_held;
mod translate;

use stamp::*;
pub(super) use stamp::{relay_held_stream, relay_stamped, stampable, Stamp};
pub(super) use through_held::send_held;
use through_held::*;
pub(super) use translate::{finish_translated, for_session_client, initialize_result, translated};

use sonic_rs::{json, JsonContainerTrait, JsonValueMutTrait, JsonValueTrait, Value};

use std::rc::Rc;

use crate::error::Kind;
use crate::http::head::{Framing, RequestHead, ResponseHead};
use crate::http::pool::UpstreamConn as UpConn;
use crate::http::response;
use crate::jsonrpc;
use crate::jsonrpc::MessageKind;
use crate::mcp::modern::{self, Mirrored, Refuse, STATELESS_VERSIONS};
use crate::mcp::session::UpstreamSession;
use crate::mcp::{Method, ProtocolVersion};

use super::client::Client;
use super::context::{Ctx, Short};
use super::federate::exchange;
use super::held::{self, Era, HeldSession, Lease};
use super::reject::Refusal;
use super::state::{Gateway, WorkerState};
use super::upstream;
use super::{forward, refuse, respond, Next, Then};

/// What a forwarded request is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Forwarded {
    Call,
    /// `subscriptions/listen`: a long-lived stream (no read timeout, ends at shutdown).
    Listen,
    /// `server/discover`: answered by the gateway from its upstream's own answer.
    Discover,
}

/// What the checks decided; a request to forward is already rendered in `c.up_out` when the
/// upstream's era (and held session) were known, else carried in `Pending`.
pub(super) enum Action {
    Refuse(Refusal),
    /// To a 2026-07-28 upstream, as the client sent it.
    Forward {
        u: usize,
        kind: Forwarded,
    },
    /// To a session-era upstream, in a held session of the worker's that was idle (taken).
    Held {
        u: usize,
        lease: Lease,
    },
    /// The era or the held session must be learned or opened first (an await): the body and
    /// the header lines to repeat, copied.
    Pending(Box<Pending>),
    /// On a federated endpoint: decided per request by the federated path, over the endpoint's
    /// upstreams as they are reached in this revision (`federate::stateless_members`).
    Federated(Box<Federated>),
}

pub(super) struct Federated {
    kind: Forwarded,
    trace: Vec<u8>,
    /// The client's `Mcp-Param-*` lines, for the upstream the request is routed to.
    params: Vec<u8>,
    body: Vec<u8>,
}

pub(super) struct Pending {
    u: usize,
    kind: Forwarded,
    /// The client's `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*` lines.
    modern_lines: Vec<u8>,
    /// Trace context lines.
    trace_lines: Vec<u8>,
    body: Vec<u8>,
}
/// The refusal for a request that speaks the stateless revision but fails its first checks.
pub(super) fn refusal(r: Refuse) -> Refusal {
    match r {
        Refuse::HeaderMismatch(why) => Refusal::because(Kind::HeaderMismatch, why),
        Refuse::MissingMeta(why) => Refusal::because(Kind::MissingMeta, why),
        Refuse::Unsupported { requested } => Refusal::new(Kind::StatelessVersionUnsupported)
            .with_data(modern::unsupported_data(&requested)),
    }
}

/// Methods the revision removed (a client of it that sends one gets 404, -32601).
fn removed(m: Method) -> bool {
    matches!(
        m,
        Method::Initialize
            | Method::NotificationsInitialized
            | Method::Ping
            | Method::LoggingSetLevel
            | Method::ResourcesSubscribe
            | Method::ResourcesUnsubscribe
            | Method::NotificationsRootsListChanged
            // The tasks extension of this revision has no tasks/result and no tasks/list.
            | Method::TasksResult
            | Method::TasksList
    )
}

/// Checks the request and renders the upstream request into `out` (the caller consumes the
/// request's bytes, then calls `finish`).
pub(super) fn prepare(
    w: &WorkerState,
    ctx: &Ctx,
    (head, buf, body): (&RequestHead, &[u8], &[u8]),
    out: &mut Vec<u8>,
) -> Action {
    let gw = ctx.gw();
    if ctx.batch {
        return Action::Refuse(Refusal::because(
            Kind::InvalidRequest,
            "JSON-RPC batches are not part of protocol version 2026-07-28",
        ));
    }
    let Some(m) = ctx.first() else {
        return Action::Refuse(Refusal::new(Kind::InvalidRequest));
    };
    match m.kind {
        MessageKind::Request | MessageKind::Notification => {}
        MessageKind::Response | MessageKind::Error => {
            return Action::Refuse(Refusal::because(
                Kind::InvalidRequest,
                "protocol version 2026-07-28 has no server-to-client requests to answer: \
                 input is sent with the retried request (inputResponses)",
            ));
        }
    }
    let method: &[u8] = match &m.method_text {
        Some(t) => t.get(),
        None => m.method.as_str().as_bytes(),
    };
    let name = modern::name_source(m.method).map(|src| {
        match src {
            modern::NameSource::Name => m.name.as_ref(),
            modern::NameSource::Uri => m.uri.as_ref(),
        }
        .map(Short::get)
    });
    let mirrored = Mirrored {
        header_method: head.mcp_method.clone().map(|r| &buf[r]),
        header_name: head.mcp_name.clone().map(|r| &buf[r]),
        method,
        request: m.kind == MessageKind::Request,
        name,
    };
    if let Err(why) = modern::check_mirrored(&mirrored) {
        return Action::Refuse(Refusal::because(Kind::HeaderMismatch, why));
    }
    // `Mcp-Param-*` values mirror arguments the tool's schema names (`x-mcp-header`); the
    // gateway decides nothing on them and forwards them, but one that is not a valid value at all
    // (bad base64, characters a value cannot hold) is refused here like the others.
    for (n, v) in &head.mcp_params {
        if let Err(why) = modern::header_value(&buf[v.clone()]) {
            let name = String::from_utf8_lossy(&buf[n.clone()]);
            return Action::Refuse(Refusal::because(
                Kind::HeaderMismatch,
                format!("{name} header: {why}"),
            ));
        }
    }
    if removed(m.method) {
        let why = format!(
            "{} is not part of protocol version 2026-07-28",
            m.method.as_str()
        );
        return Action::Refuse(Refusal::because(Kind::MethodNotFound, why));
    }
    let server = ctx.server.unwrap_or_default();
    let s = &gw.config.servers[server];
    let kind = match m.method {
        Method::ServerDiscover => Forwarded::Discover,
        Method::SubscriptionsListen => Forwarded::Listen,
        _ => Forwarded::Call,
    };
    if s.federated() {
        let mut trace = Vec::new();
        trace_lines(&mut trace, (head, buf), ctx);
        let mut params = Vec::new();
        for (n, v) in &head.mcp_params {
            response::header(&mut params, &buf[n.clone()], &buf[v.clone()]);
        }
        return Action::Federated(Box::new(Federated {
            kind,
            trace,
            params,
            body: super::trace_context::spliced(ctx, body).into_owned(),
        }));
    }
    let u = s.primary();
    if gw.upstreams[u].legacy {
        // Its session is an event stream on one worker (`proxy::legacy`); a held session cannot
        // stand for it. A session-era error, so an "auto" client falls back to initialize.
        let why = format!(
            "upstream \"{}\" speaks only the 2024-11-05 HTTP+SSE transport: send initialize \
             (protocol version 2026-07-28 is not served for it)",
            gw.upstreams[u].name
        );
        return Action::Refuse(Refusal::because(Kind::InvalidRequest, why));
    }
    let now = w.shutdown.now();
    let era = w.held.era_now(gw, u, now);
    // An idle held session is taken now, only for a request it will carry (not a notification,
    // a listen or a discover: those are answered without one, or from any).
    let lease = match era {
        Some(Era::Session) if kind == Forwarded::Call && m.kind == MessageKind::Request => {
            w.held.try_lease(gw, u, now)
        }
        _ => None,
    };
    match (era, lease) {
        (Some(Era::Stateless), _) => {
            let modern = |o: &mut Vec<u8>| modern_lines(o, head, buf);
            render(
                out,
                gw,
                u,
                None,
                modern,
                |o| trace_lines(o, (head, buf), ctx),
                body,
            );
            super::trace_context::splice_tail(ctx, out, body.len());
            Action::Forward { u, kind }
        }
        (Some(Era::Session), Some(lease)) => {
            let trace = |o: &mut Vec<u8>| trace_lines(o, (head, buf), ctx);
            render(out, gw, u, Some(&lease.session), |_| {}, trace, body);
            super::trace_context::splice_tail(ctx, out, body.len());
            Action::Held { u, lease }
        }
        _ => {
            let mut p = Pending {
                u,
                kind,
                modern_lines: Vec::new(),
                trace_lines: Vec::new(),
                body: super::trace_context::spliced(ctx, body).into_owned(),
            };
            modern_lines(&mut p.modern_lines, head, buf);
            trace_lines(&mut p.trace_lines, (head, buf), ctx);
            Action::Pending(Box::new(p))
        }
    }
}

/// The client's 2026-07-28 header lines, repeated to an upstream of that revision.
fn modern_lines(out: &mut Vec<u8>, head: &RequestHead, buf: &[u8]) {
    if let Some(r) = head.protocol_version.clone() {
        response::header(out, b"mcp-protocol-version", buf[r].trim_ascii());
    }
    if let Some(r) = head.mcp_method.clone() {
        response::header(out, b"mcp-method", buf[r].trim_ascii());
    }
    if let Some(r) = head.mcp_name.clone() {
        response::header(out, b"mcp-name", buf[r].trim_ascii());
    }
    for (n, v) in &head.mcp_params {
        response::header(out, &buf[n.clone()], &buf[v.clone()]);
    }
}

fn trace_lines(out: &mut Vec<u8>, (head, buf): (&RequestHead, &[u8]), ctx: &Ctx) {
    super::trace_context::upstream_lines(out, head, buf, ctx.trace.as_ref());
}

/// Renders the upstream request into `out`: a 2026-07-28 one (`session` None: the client's
/// header lines) or one in a held session (its session headers instead).
fn render(
    out: &mut Vec<u8>,
    gw: &Gateway,
    u: usize,
    session: Option<&UpstreamSession>,
    modern: impl FnOnce(&mut Vec<u8>),
    trace: impl FnOnce(&mut Vec<u8>),
    body: &[u8],
) {
    out.clear();
    out.extend_from_slice(&gw.upstreams[u].post_prefix);
    response::content_length(out, body.len() as u64);
    match session {
        Some(s) => super::session_header_lines(out, s),
        None => modern(out),
    }
    trace(out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

fn then_for(kind: Forwarded) -> Then {
    match kind {
        Forwarded::Listen => Then::Listen,
        _ => Then::Stamped(Stamp::MODERN),
    }
}

/// Carries out what `prepare` decided.
pub(super) async fn finish(w: &WorkerState, c: &mut Client, ctx: &mut Ctx, a: Action) -> Next {
    // Phase: limit, on a request `prepare` let through to the one upstream (it has no rules:
    // everything is allowed). A federated endpoint limits where it decides (`federate`).
    if !matches!(a, Action::Refuse(_) | Action::Federated(_)) {
        if let Err(r) = super::limit::phase(w, ctx, super::limit::PASS_THROUGH).await {
            return refuse(c, ctx, r).await;
        }
    }
    // A listen to the one upstream holds a place on the worker for as long as it streams, as a
    // merged one does (`limits.listen_streams_per_worker`).
    let listen = matches!(
        &a,
        Action::Forward {
            kind: Forwarded::Listen,
            ..
        }
    ) || matches!(&a, Action::Pending(p) if p.kind == Forwarded::Listen);
    let max = ctx.gw().config.limits.listen_streams_per_worker;
    let _slot = match listen.then(|| super::federate::ListenSlot::take(w, max)) {
        Some(None) => return refuse(c, ctx, Refusal::new(Kind::ListenStreams)).await,
        slot => slot.flatten(),
    };
    match a {
        Action::Refuse(r) => refuse(c, ctx, r).await,
        Action::Forward { u, kind } => match kind {
            Forwarded::Discover => discover(w, c, ctx, u).await,
            _ => forward(w, c, ctx, (u, 0), false, then_for(kind)).await,
        },
        Action::Held { u, lease } => forward_held(w, c, ctx, u, lease).await,
        Action::Federated(f) => federated(w, c, ctx, *f).await,
        Action::Pending(p) => {
            let gen = ctx.gen.clone();
            let gw = &*gen.gw;
            let u = p.u;
            ctx.upstream = Some(u);
            match held::era(w, gw, u, ctx.caller()).await {
                Era::Stateless => {
                    let modern = |o: &mut Vec<u8>| o.extend_from_slice(&p.modern_lines);
                    let trace = |o: &mut Vec<u8>| o.extend_from_slice(&p.trace_lines);
                    render(&mut c.up_out, gw, u, None, modern, trace, &p.body);
                    match p.kind {
                        Forwarded::Discover => discover(w, c, ctx, u).await,
                        kind => forward(w, c, ctx, (u, 0), false, then_for(kind)).await,
                    }
                }
                Era::Session => {
                    if p.kind == Forwarded::Discover {
                        let held = match held::any_session(w, gw, u).await {
                            Ok(h) => h,
                            Err(e) => return refuse(c, ctx, e.into()).await,
                        };
                        // (`servers[].offer_stateless: always` offers the revision regardless.)
                        let always = gw.config.servers[ctx.server.unwrap_or_default()]
                            .offer_stateless_always;
                        let asks = ctx.first().is_some_and(|m| m.asks_client_features) && !always;
                        let body = discover_result(&held_discover(&held, asks));
                        return super::federate::reply_result(c, ctx, body.as_bytes()).await;
                    }
                    if ctx.first().is_some_and(|m| m.kind != MessageKind::Request) {
                        // The held sessions are shared by every stateless client of the worker:
                        // a notification (a cancel naming some request id) must not reach
                        // another client's request in one.
                        return super::federate::accepted(c, ctx).await;
                    }
                    if p.kind == Forwarded::Listen {
                        let why = "subscriptions/listen is not served for an upstream reached \
                                   through a held session (it speaks only the session era)";
                        let r = Refusal::because(Kind::MethodNotFound, why);
                        return refuse(c, ctx, r).await;
                    }
                    let lease = match held::lease(w, gw, u).await {
                        Ok(l) => l,
                        Err(e) => return refuse(c, ctx, e.into()).await,
                    };
                    let trace = |o: &mut Vec<u8>| o.extend_from_slice(&p.trace_lines);
                    render(
                        &mut c.up_out,
                        gw,
                        u,
                        Some(&lease.session),
                        |_| {},
                        trace,
                        &p.body,
                    );
                    forward_held(w, c, ctx, u, lease).await
                }
            }
        }
    }
}

/// A 2026-07-28 request on a federated endpoint. The federated path decides it as it decides a
/// session's (lists with the gateway's cursors, routing by name, the upstream's own name back),
/// over a session made for this request alone: one entry per upstream, stateless or one of the
/// worker's held sessions (so nothing is sealed or kept for the client). That held session is
/// what the gateway's own list requests go in (their ids are the gateway's); a request routed to
/// the member leases a held session for its exchange instead (`send_held`, `federate::batch::
/// one`), and notifications are not fanned out into held sessions. Its random id is zero:
/// cursors and task ids it issues are bound to the endpoint, not to a client.
async fn federated(w: &WorkerState, c: &mut Client, ctx: &mut Ctx, f: Federated) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    match f.kind {
        Forwarded::Discover => {
            let asks = ctx.first().is_some_and(|m| m.asks_client_features);
            let body = super::federate::stateless_discover(w, gw, server, asks, ctx.caller()).await;
            return super::federate::reply_result(c, ctx, body.as_bytes()).await;
        }
        Forwarded::Listen => {
            return super::federate::listen(w, c, ctx, f.trace, f.body).await;
        }
        Forwarded::Call => {}
    }
    let upstreams = super::federate::stateless_members(w, gw, server, ctx.caller()).await;
    if upstreams.is_empty() {
        let why = "none of this endpoint's upstreams could be reached";
        return refuse(c, ctx, Refusal::because(Kind::UpstreamUnavailable, why)).await;
    }
    // Task ids and cursors are bound to this id: on an endpoint that authenticates, the
    // principal's (a task created for one caller cannot be named by another); nobody's otherwise.
    if gw.config.servers[server].auth.is_some()
        && ctx
            .first()
            .is_some_and(|m| m.method == crate::mcp::Method::TasksList)
    {
        // The upstream sessions here are the worker's, shared by every caller: the gateway
        // cannot tell whose tasks an upstream lists, so it lists none rather than others'.
        let why = "tasks/list is not available on an authenticated endpoint in protocol \
                   version 2026-07-28: keep the task ids your calls returned";
        return refuse(c, ctx, Refusal::because(Kind::MethodNotFound, why)).await;
    }
    let now = super::unix_now();
    let claims = crate::mcp::session::SessionClaims {
        id: ctx.principal.as_ref().map_or([0; 16], |p| p.id),
        server: gw.server_ids[server],
        protocol_version: STATELESS_VERSIONS[0],
        issued_at: now,
        expires_at: now + 60,
        upstreams,
        principal: ctx.binding(),
    };
    let claims = Rc::new(claims);
    super::federate::post_stateless(w, c, ctx, claims, (f.trace, f.params), f.body).await
}

/// `server/discover`: the upstream's own answer (so the capabilities are what it really offers),
/// re-issued as the gateway's: its server info, the revisions this endpoint accepts, the
/// upstream's caching hints. An upstream that does not answer it does not speak the revision:
/// the client gets a session-era error and falls back to `initialize`.
async fn discover(w: &WorkerState, c: &mut Client, ctx: &mut Ctx, u: usize) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    ctx.upstream = Some(u);
    let req = std::mem::take(&mut c.up_out);
    let id = ctx.answer_id().map(<[u8]>::to_vec).unwrap_or_default();
    let reply = exchange::whole(w, gw, (u, 0), req, ctx.caller()).await;
    let upstream_result = match reply {
        Ok(r) => exchange::result_of(gw, u, &r, &id),
        Err(e) => Err(e.reason),
    };
    let result = match upstream_result {
        Ok(v) => v,
        Err(why) => {
            tracing::info!(upstream = %gw.upstreams[u].name, error = %why, "server/discover not answered upstream");
            let msg = format!(
                "{why}; this endpoint serves protocol version 2026-07-28 only where its upstream \
                 does: send initialize"
            );
            return refuse(c, ctx, Refusal::because(Kind::InvalidRequest, msg)).await;
        }
    };
    let body = discover_result(&result);
    super::federate::reply_result(c, ctx, body.as_bytes()).await
}

/// The upstream's own `server/discover` result (a request of the gateway's, for `caller`).
pub(super) async fn discover_upstream(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
    caller: exchange::Caller<'_>,
) -> Result<Value, String> {
    let v = STATELESS_VERSIONS[0].as_str();
    let body = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":\"tollgate-discover\",\"method\":\"server/discover\",\"params\":{{\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"{v}\",\"io.modelcontextprotocol/clientCapabilities\":{{}}}}}}}}"
    );
    let mut headers = Vec::new();
    response::header(&mut headers, b"mcp-protocol-version", v.as_bytes());
    response::header(&mut headers, b"mcp-method", b"server/discover");
    let req = exchange::post_request(gw, u, None, &headers, body.as_bytes());
    let reply = exchange::whole(w, gw, (u, 0), req, caller)
        .await
        .map_err(|e| e.reason)?;
    exchange::result_of(gw, u, &reply, b"\"tollgate-discover\"")
}

/// The gateway's `server/discover` result from its upstream's.
fn discover_result(upstream: &Value) -> String {
    let upstream_versions: Vec<&str> = upstream
        .get("supportedVersions")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    // The stateless revisions both sides speak, then every session-era one (served through
    // initialize whatever the upstream speaks).
    let mut versions: Vec<&str> = STATELESS_VERSIONS
        .iter()
        .map(|v| v.as_str())
        .filter(|v| upstream_versions.contains(v))
        .collect();
    versions.extend(
        ProtocolVersion::ALL
            .iter()
            .rev()
            .filter(|v| v.is_legacy())
            .map(|v| v.as_str()),
    );
    let ttl = upstream.get("ttlMs").and_then(|v| v.as_u64()).unwrap_or(0);
    let scope = match upstream.get("cacheScope").and_then(|v| v.as_str()) {
        Some("private") => "private",
        _ => "public",
    };
    let mut r = json!({
        "resultType": "complete",
        "supportedVersions": versions,
        "capabilities": upstream.get("capabilities").cloned().unwrap_or_else(|| json!({})),
        "_meta": {
            "io.modelcontextprotocol/serverInfo": {
                "name": "tollgate",
                "title": "tollgate MCP gateway",
                "version": env!("CARGO_PKG_VERSION"),
            }
        },
        "ttlMs": ttl,
        "cacheScope": scope,
    });
    if let Some(i) = upstream.get("instructions").and_then(|v| v.as_str()) {
        r["instructions"] = Value::from(i);
    }
    r.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_keeps_the_upstream_capabilities_and_names_the_gateway() {
        let up: Value = sonic_rs::from_str(
            r#"{"resultType":"complete","supportedVersions":["2026-07-28"],
                "capabilities":{"tools":{"listChanged":true}},"instructions":"hi",
                "_meta":{"io.modelcontextprotocol/serverInfo":{"name":"fixture","version":"1"}},
                "ttlMs":300000,"cacheScope":"public"}"#,
        )
        .unwrap();
        let r: serde_json::Value = serde_json::from_str(&discover_result(&up)).unwrap();
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["supportedVersions"][0], "2026-07-28");
        assert!(r["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&"2025-11-25".into()));
        assert_eq!(r["capabilities"]["tools"]["listChanged"], true);
        assert_eq!(
            r["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "tollgate"
        );
        assert_eq!(r["ttlMs"], 300000);
        assert_eq!(r["cacheScope"], "public");
        assert_eq!(r["instructions"], "hi");
    }

    #[test]
    fn discover_offers_no_stateless_revision_the_upstream_lacks() {
        let up: Value = sonic_rs::from_str(r#"{"supportedVersions":["2099-01-01"]}"#).unwrap();
        let r: serde_json::Value = serde_json::from_str(&discover_result(&up)).unwrap();
        assert!(!r["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&"2026-07-28".into()));
        assert_eq!(r["ttlMs"], 0);
    }
}
