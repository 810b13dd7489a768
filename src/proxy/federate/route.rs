//! Requests a federated endpoint routes to one upstream (by exposed name, by URI, by a
//! completion's `ref`, by a wrapped id) and those it fans out to all (notifications,
//! `logging/setLevel`).

use futures_util::future::join_all;

use crate::error::{json_escape_into, Kind};
use crate::mcp::idmap::IdError;
use crate::mcp::Method;
use crate::observe::names;

use super::super::client::Client;
use super::super::context::Ctx;
use super::super::reject::Refusal;
use super::super::state::{Gateway, WorkerState};
use super::super::{forward, refuse, Next, Then};
use super::exchange;
use super::tables::{self, TableKind};
use super::FedRequest;

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
    c.up_out = exchange::post_request(gw, u, Some(session), &req.trace, body);
    let had_session = session.session_id.is_some();
    forward(w, c, ctx, u, had_session, Then::RelayFederated(claims.id)).await
}

/// `tools/call` and `prompts/get`: the exposed name → (upstream, original name); the upstream
/// gets its own name, spliced into the client's bytes.
pub(super) async fn by_name(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    req: FedRequest,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    let (kind, what) = if ctx.method() == Method::ToolsCall {
        (TableKind::Tools, "tool")
    } else {
        (TableKind::Prompts, "prompt")
    };
    let claims = req.claims.clone();
    let (name, span) = match ctx
        .first()
        .and_then(|m| Some((m.name.as_ref()?, m.name_span.clone()?)))
    {
        Some((n, span)) => (String::from_utf8_lossy(n.get()).into_owned(), span),
        None => {
            let why = format!("params.name is required (the {what}'s name)");
            return refuse(c, ctx, Refusal::because(Kind::UnknownName, why)).await;
        }
    };
    let table = tables::names_for(w, gw, server, &claims, &req.trace, kind, &name).await;
    let Some((member, original)) = table.resolve(&name) else {
        // A name in the space of an upstream this session does not hold: say so (the session
        // could not open it), rather than that the name is unknown.
        let s = &gw.config.servers[server];
        let absent = s.upstreams.iter().find(|m| {
            m.namer.prefix().is_some_and(|p| {
                name.strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with(m.namer.separator()))
            }) && super::super::upstream_session(gw, Some(&claims), m.upstream).is_none()
        });
        if let Some(m) = absent {
            if let Err(r) = held(gw, &claims, m.upstream) {
                return refuse(c, ctx, r).await;
            }
        }
        let why = format!("Unknown {what}: {name}");
        return refuse(c, ctx, Refusal::because(Kind::UnknownName, why)).await;
    };
    let u = gw.config.servers[server].upstreams[member].upstream;
    let mut body = Vec::with_capacity(req.body.len() + original.len());
    let (start, end) = (span.start as usize, span.end as usize);
    body.extend_from_slice(&req.body[..start]);
    json_escape_into(&mut body, original);
    body.extend_from_slice(&req.body[end..]);
    send(w, c, ctx, &req, u, &body).await
}

/// `resources/read`, `resources/subscribe`, `resources/unsubscribe`: by URI (URIs are not
/// rewritten, so the body goes as it came).
pub(super) async fn by_uri(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    req: FedRequest,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    let claims = req.claims.clone();
    let Some(uri) = ctx.first().and_then(|m| m.uri.as_ref()) else {
        let why = "params.uri is required";
        return refuse(c, ctx, Refusal::because(Kind::UnknownName, why)).await;
    };
    let uri = String::from_utf8_lossy(uri.get()).into_owned();
    // The URI itself must pass the filter: an allowed template must not open a denied URI.
    if !gw.config.servers[server].resources.filter.allows(&uri) {
        let why = format!("Unknown resource: {uri}");
        return refuse(c, ctx, Refusal::because(Kind::UnknownName, why)).await;
    }
    let table = tables::uris_for(w, gw, server, &claims, &req.trace, &uri).await;
    let Some(member) = table.route(&uri) else {
        let why = format!("Unknown resource: {uri}");
        return refuse(c, ctx, Refusal::because(Kind::UnknownName, why)).await;
    };
    let u = gw.config.servers[server].upstreams[member].upstream;
    send(w, c, ctx, &req, u, &req.body).await
}

/// `completion/complete`: by its `ref` (a prompt's exposed name, rewritten to the original;
/// a resource template's URI). The body is parsed and written again: it is small and rare, and
/// what the upstream reads is then exactly what the gateway decided on.
pub(super) async fn completion(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    req: FedRequest,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    let claims = req.claims.clone();
    let mut v: serde_json::Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => return refuse(c, ctx, Refusal::because(Kind::ParseError, e.to_string())).await,
    };
    let r = &v["params"]["ref"];
    let kind = r["type"].as_str().unwrap_or_default().to_string();
    let member = match kind.as_str() {
        "ref/prompt" => {
            let name = r["name"].as_str().unwrap_or_default().to_string();
            let table = tables::names_for(
                w,
                gw,
                server,
                &claims,
                &req.trace,
                TableKind::Prompts,
                &name,
            )
            .await;
            match table.resolve(&name) {
                Some((m, original)) => {
                    v["params"]["ref"]["name"] = serde_json::Value::String(original.to_string());
                    Some(m)
                }
                None => None,
            }
        }
        "ref/resource" => {
            let uri = r["uri"].as_str().unwrap_or_default().to_string();
            if gw.config.servers[server].resources.filter.allows(&uri) {
                let table = tables::uris_for(w, gw, server, &claims, &req.trace, &uri).await;
                table.route(&uri)
            } else {
                None
            }
        }
        _ => None,
    };
    let Some(member) = member else {
        let why = "Unknown reference: params.ref must name a prompt or resource of this server";
        return refuse(c, ctx, Refusal::because(Kind::UnknownName, why)).await;
    };
    let u = gw.config.servers[server].upstreams[member].upstream;
    // Written again, but with the client's own id bytes (serde would respell `1E2` as `100.0`).
    const MARK: &str = "\u{0}tollgate-id\u{0}";
    let id = ctx.answer_id().map(<[u8]>::to_vec);
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
    send(w, c, ctx, &req, u, &body).await
}

/// Sends `req`'s body to every upstream the session holds, at once; returns how many failed.
async fn fan_out(w: &WorkerState, gw: &Gateway, req: &FedRequest, server: usize) -> (usize, usize) {
    let claims = &*req.claims;
    let calls = gw.config.servers[server].upstreams.iter().filter_map(|m| {
        let u = m.upstream;
        let session = super::super::upstream_session(gw, Some(claims), u)?;
        let (trace, body) = (&req.trace, &req.body);
        Some(async move { (u, exchange::rpc(w, gw, u, session, trace, body).await) })
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

/// Client notifications (`initialized`, `cancelled`, `roots/list_changed`, ...): to every
/// upstream of the session; 202. A cancellation names the client's own request id, which only
/// the upstream that got the request knows; the others ignore it (MCP lets a receiver ignore a
/// cancellation of a request it does not know).
pub(super) async fn notification(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    req: FedRequest,
) -> Next {
    let gen = ctx.gen.clone();
    let server = ctx.server.unwrap_or_default();
    fan_out(w, &gen.gw, &req, server).await;
    super::accepted(c, ctx).await
}

/// `logging/setLevel`: to every upstream; an empty result unless all of them failed.
pub(super) async fn set_level(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    req: FedRequest,
) -> Next {
    let gen = ctx.gen.clone();
    let server = ctx.server.unwrap_or_default();
    let (total, failed) = fan_out(w, &gen.gw, &req, server).await;
    if total > 0 && failed == total {
        let why = "no upstream accepted logging/setLevel";
        return refuse(c, ctx, Refusal::because(Kind::UpstreamUnavailable, why)).await;
    }
    super::reply_result(c, ctx, b"{}").await
}

/// A client's response to a server→client request (sampling, elicitation, roots/list): its id
/// is one the gateway wrapped (`mcp::idmap`) when it relayed the request; it goes back to that
/// upstream with the upstream's own id.
pub(super) async fn client_response(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    req: FedRequest,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    let claims = req.claims.clone();
    let Some((id, start)) = ctx
        .first()
        .and_then(|m| Some((m.id.as_ref()?.get().to_vec(), m.id_start?)))
    else {
        return refuse(
            c,
            ctx,
            Refusal::because(Kind::InvalidRequest, "a response needs an id"),
        )
        .await;
    };
    let (upstream_id, original) = match gw.idmap.unwrap(&claims.id, &id) {
        Ok(x) => x,
        Err(e) => {
            let why = match e {
                IdError::NotOurs => "this response answers no request the gateway relayed",
                IdError::Forged => "this response's id was not issued to this session",
            };
            return refuse(c, ctx, Refusal::because(Kind::InvalidRequest, why)).await;
        }
    };
    let Some(u) = gw.config.servers[server]
        .upstreams
        .iter()
        .map(|m| m.upstream)
        .find(|&u| gw.upstreams[u].id == upstream_id)
    else {
        let why = "the upstream this response is for is no longer behind this endpoint";
        return refuse(c, ctx, Refusal::because(Kind::InvalidRequest, why)).await;
    };
    let start = start as usize;
    let mut body = Vec::with_capacity(req.body.len());
    body.extend_from_slice(&req.body[..start]);
    body.extend_from_slice(&original);
    body.extend_from_slice(&req.body[start + id.len()..]);
    send(w, c, ctx, &req, u, &body).await
}
