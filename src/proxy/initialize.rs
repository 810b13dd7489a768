//! initialize: the one reply the gateway reads whole. It learns the negotiated version and the
//! upstream's session id, seals them into its own `Mcp-Session-Id`, and relays the result.

use crate::error::Kind;
use crate::http::head::ResponseHead;
use crate::http::pool::UpstreamConn;
use crate::http::sse;
use crate::jsonrpc::{self, Body, MessageKind};
use crate::mcp::session::{SessionClaims, SessionSealer, UpstreamSession};
use crate::mcp::ProtocolVersion;

use super::client::Client;
use super::context::Ctx;
use super::reject::Refusal;
use super::state::{Gateway, WorkerState};
use super::upstream;
use super::{refuse, unix_now, Next};

/// What the gateway learned from an initialize reply.
pub(super) struct Negotiated {
    /// `None`: the upstream answered with a JSON-RPC error.
    pub version: Option<ProtocolVersion>,
    /// Where the response's id token sits in the body, when it is spelled differently from the
    /// client's (`1E2` for `100`) and can be replaced in place by the client's own bytes.
    respell: Option<std::ops::Range<usize>>,
}

/// Finds the JSON-RPC response with `id` in an initialize reply (JSON, or SSE events) and returns
/// the protocol version it negotiated.
pub(super) fn negotiated_version(
    gw: &Gateway,
    body: &[u8],
    sse: bool,
    id: &[u8],
) -> Result<Negotiated, String> {
    // `origin`: where `payload` starts in `body`, when it is one contiguous piece of it.
    let check = |payload: &[u8], origin: Option<usize>| -> Option<Result<Negotiated, String>> {
        let Ok(Body::Single(m)) = jsonrpc::scan(payload, &gw.scan_limits) else {
            return None;
        };
        let mid = m.id.as_ref()?;
        // The same id value, perhaps spelled otherwise (`1E2` for `100`): JSON-RPC 2.0 §5.
        if !jsonrpc::same_id(mid.text, id) {
            return None;
        }
        let respell = match origin {
            Some(o) if mid.text != id => Some(o + mid.start..o + mid.start + mid.text.len()),
            _ => None,
        };
        Some(match m.kind {
            MessageKind::Error => Ok(Negotiated {
                version: None,
                respell,
            }),
            MessageKind::Response => match m
                .protocol_version
                .as_ref()
                .map(|v| ProtocolVersion::parse(&v.value))
            {
                Some(Some(v)) if v.is_legacy() => Ok(Negotiated {
                    version: Some(v),
                    respell,
                }),
                Some(_) => Err("negotiated a protocol version the gateway does not support".into()),
                None => Err("sent an initialize result without protocolVersion".into()),
            },
            _ => return None,
        })
    };
    if !sse {
        return check(body, Some(0)).unwrap_or_else(|| {
            Err("sent an initialize reply that is not the matching JSON-RPC response".into())
        });
    }
    // The body is whole and already within `max_body_bytes`, so no event can be larger.
    let mut decoder = sse::Decoder::new(body.len());
    let mut found = None;
    let mut on = |item: sse::Item<'_>| {
        if let (None, sse::Item::Event(e)) = (&found, item) {
            // A single `data` line lies in the body as is: its id can be respelled in place.
            let origin = e.data_span.map(|r| r.start as usize);
            found = check(e.data, origin);
        }
    };
    // A stream cut right before its final blank line still counts (as it always has).
    let decoded = decoder
        .feed(body, &mut on)
        .and_then(|()| decoder.finish(sse::AtEnd::Dispatch, &mut on));
    match (found, decoded) {
        (Some(r), _) => r,
        (None, Err(e)) => Err(format!("sent an invalid initialize stream: {e}")),
        (None, Ok(())) => Err("ended its initialize stream without the response".into()),
    }
}

/// A session sealed for an initialize reply: the client's token and the session's random id.
struct Sealed {
    token: String,
    id: [u8; 16],
}

/// The session id for an initialize reply: `None` when the upstream did not open a session
/// (non-200, or a JSON-RPC error), `Err` with what was wrong with the reply; and where the
/// reply's id must be respelled as the client's.
#[allow(clippy::too_many_arguments)]
fn seal_session(
    w: &WorkerState,
    gw: &Gateway,
    status: u16,
    body: &[u8],
    sse: bool,
    id: &[u8],
    server: usize,
    (u, replica): (usize, u64),
    upstream_sid: Option<String>,
    principal: Option<Vec<u8>>,
) -> Result<(Option<Sealed>, Option<std::ops::Range<usize>>), String> {
    if status != 200 {
        return Ok((None, None));
    }
    let negotiated = negotiated_version(gw, body, sse, id)?;
    let Some(version) = negotiated.version else {
        return Ok((None, negotiated.respell));
    };
    let up = UpstreamSession {
        upstream: gw.upstreams[u].id,
        session_id: upstream_sid,
        protocol_version: version,
        replica,
    };
    let sealed = seal(w, gw, server, version, up, principal)
        .map_err(|e| format!("sent an unusable Mcp-Session-Id: {e}"))?;
    Ok((Some(sealed), negotiated.respell))
}

/// Seals a new client session at `version` holding the upstream session `up`.
fn seal(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    version: ProtocolVersion,
    up: UpstreamSession,
    principal: Option<Vec<u8>>,
) -> Result<Sealed, String> {
    let now = unix_now();
    let claims = SessionClaims {
        id: SessionSealer::new_id(),
        server: gw.server_ids[server],
        protocol_version: version,
        issued_at: now,
        expires_at: now + gw.config.session.ttl.as_secs(),
        upstreams: vec![up],
        principal,
    };
    let token = gw.sealer.try_seal(&claims).map_err(|e| e.to_string())?;
    w.metrics.sessions_opened.increment(1);
    Ok(Sealed {
        token,
        id: claims.id,
    })
}

/// Answers a refused `initialize` for an upstream that speaks only the stateless revision
/// (`stateless_upstream`); `None`: it does not, and the refusal is the answer.
pub(super) async fn stateless_fallback(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    server: usize,
    u: usize,
) -> Option<Next> {
    Some(match stateless_upstream(w, ctx, server, u).await? {
        Ok((sealed, body)) => {
            ctx.session = Some(sealed.id);
            let token = sealed.token;
            super::federate::reply_json(c, ctx, 200, &body, Some(&token)).await
        }
        Err(why) => {
            let name = &ctx.gw().upstreams[u].name;
            let msg = format!("upstream \"{name}\" speaks only 2026-07-28 and {why}");
            refuse(c, ctx, Refusal::because(Kind::UpstreamProtocol, msg)).await
        }
    })
}

/// A session-era client's `initialize` that its upstream refused, when that upstream speaks the
/// stateless revision: the gateway answers it from the upstream's `server/discover` (its
/// capabilities, server info and instructions) and seals a session whose upstream entry is
/// stateless (no upstream session id, revision 2026-07-28), so every request of the session is
/// translated (`stateless::translated`). `None`: the upstream does not speak it (the refusal is
/// relayed as it is).
async fn stateless_upstream(
    w: &WorkerState,
    ctx: &Ctx,
    server: usize,
    u: usize,
) -> Option<Result<(Sealed, Vec<u8>), String>> {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    if super::held::era(w, gw, u, ctx.caller()).await != super::held::Era::Stateless {
        return None;
    }
    let discovered = match super::stateless::discover_upstream(w, gw, u, ctx.caller()).await {
        Ok(d) => d,
        Err(why) => return Some(Err(why)),
    };
    let version = ctx
        .first()
        .and_then(|m| m.requested_version)
        .filter(|v| v.is_legacy())
        .unwrap_or(ProtocolVersion::LATEST_LEGACY);
    let up = UpstreamSession {
        upstream: gw.upstreams[u].id,
        session_id: None,
        protocol_version: crate::mcp::modern::STATELESS_VERSIONS[0],
        replica: 0,
    };
    let sealed = match seal(w, gw, server, version, up, ctx.binding()) {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    let result = super::stateless::initialize_result(&discovered, version);
    let mut body = Vec::with_capacity(result.len() + 48);
    body.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    body.extend_from_slice(ctx.answer_id().unwrap_or(b"null"));
    body.extend_from_slice(b",\"result\":");
    body.extend_from_slice(result.as_bytes());
    body.push(b'}');
    Some(Ok((sealed, body)))
}

/// initialize: the gateway reads the upstream's whole reply (it is small), learns the negotiated
/// version and upstream session id, and answers with its own sealed session id.
pub(super) async fn initialize_reply(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    mut up_conn: UpstreamConn,
    rhead: ResponseHead,
    server: usize,
    u: usize,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let up = &gw.upstreams[u];
    let id = ctx.answer_id().unwrap_or(b"null").to_vec();
    let id = &id[..];
    let upbuf_head = up_conn.buffered()[..rhead.len].to_vec();
    let sse = rhead.is_sse(&upbuf_head);
    let upstream_sid = rhead
        .session_id
        .clone()
        .map(|r| String::from_utf8_lossy(&upbuf_head[r]).into_owned());
    up_conn.consume(rhead.len);
    // The session stays on the replica that opened it.
    let replica = upstream::replica_of(gw, u, &up_conn);
    let mut body = Vec::new();
    let max = gw.config.limits.max_body_bytes;
    let token =
        match upstream::read_full_body(&mut up_conn, &rhead, max, up.request_timeout, &mut body)
            .await
        {
            Err(why) => Err(format!("sent an invalid initialize reply: {why}")),
            Ok(()) => {
                w.pool_put(gw, u, up_conn, &rhead, std::time::Instant::now());
                seal_session(
                    w,
                    gw,
                    rhead.status,
                    &body,
                    sse,
                    id,
                    server,
                    (u, replica),
                    upstream_sid,
                    ctx.binding(),
                )
            }
        };
    let (token, respell) = match token {
        Ok(t) => t,
        Err(why) => {
            let msg = format!("upstream \"{}\" {why}", up.name);
            return refuse(c, ctx, Refusal::because(Kind::UpstreamProtocol, msg)).await;
        }
    };
    if token.is_none() {
        if let Some(next) = stateless_fallback(w, c, ctx, server, u).await {
            return next;
        }
    }
    ctx.session = token.as_ref().map(|t| t.id);
    // The client gets its own id bytes back, however the upstream spelled the same value.
    if let Some(r) = respell {
        body.splice(r, id.iter().copied());
    }
    // (With a length, the client's HTTP version changes nothing in the head.)
    let session = token.as_ref().map(|t| t.token.as_str());
    super::write_whole(c, ctx, (&rhead, &upbuf_head), &body, session).await
}
