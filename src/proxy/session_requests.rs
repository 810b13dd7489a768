//! GET (the server-to-client event stream) and DELETE (end the session): requests without a
//! body that act on an existing session.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::error::Kind;
use crate::http::head::RequestHead;
use crate::http::response;
use crate::mcp::session::SessionClaims;
use crate::observe::Outcome;

use super::client::Client;
use super::context::{Ctx, UpstreamCall};
use super::reject::Refusal;
use super::state::{self, Revocation, WorkerState};
use super::upstream;
use super::{open_session, refuse, relay, upstream_session, upstream_session_headers, Next};

/// How long DELETE waits for every worker to acknowledge a revocation before answering anyway.
const REVOKE_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// GET and DELETE: refuses a body, opens the session, and writes the upstream request head
/// (`prefix` of the session's upstream, session and trace headers, `Last-Event-ID`).
/// `Err` carries what the connection does after the refusal that was already sent.
async fn session_request(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    head: &RequestHead,
    prefix: fn(&state::UpstreamRuntime) -> &[u8],
) -> Result<(Rc<SessionClaims>, usize), Next> {
    if head.has_body() {
        c.conn.consume(head.len);
        let why = "GET and DELETE take no body";
        return Err(refuse(c, ctx, Refusal::because(Kind::MalformedHttp, why)).await);
    }
    let stateless = head.session_id.is_none()
        && head
            .protocol_version
            .clone()
            .and_then(|r| {
                crate::mcp::ProtocolVersion::parse_bytes(c.conn.buffered()[r].trim_ascii())
            })
            .is_some_and(|v| !v.is_legacy());
    if stateless {
        // 2026-07-28 has no sessions to stream from or end.
        c.conn.consume(head.len);
        ctx.era = crate::error::Era::Stateless;
        let why = "protocol version 2026-07-28 has no sessions: GET and DELETE serve sessions \
                   of earlier revisions (send requests as POSTs)";
        return Err(refuse(c, ctx, Refusal::because(Kind::MethodNotAllowed, why)).await);
    }
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    let u = gw.config.servers[server].primary();
    ctx.upstream = Some(u);
    let buf = c.conn.buffered();
    let claims = match open_session(w, gw, head, buf, server, ctx.principal.as_deref()) {
        Ok(cl) => cl,
        Err(r) => {
            c.conn.consume(head.len);
            return Err(refuse(c, ctx, r).await);
        }
    };
    ctx.session = Some(claims.id);
    c.up_out.clear();
    c.up_out.extend_from_slice(prefix(&gw.upstreams[u]));
    let up_session = upstream_session(gw, Some(&claims), u);
    upstream_session_headers(&mut c.up_out, up_session, (head, buf), ctx.trace.as_ref());
    if let Some(r) = head.last_event_id.clone() {
        response::header(&mut c.up_out, b"last-event-id", &buf[r]);
    }
    c.up_out.extend_from_slice(b"\r\n");
    c.conn.consume(head.len);
    Ok((claims, u))
}

/// GET: opens the server-to-client event stream of the session's upstream and relays it.
pub(super) async fn get(w: &WorkerState, c: &mut Client, ctx: &mut Ctx, head: RequestHead) -> Next {
    let server = ctx.server.unwrap_or_default();
    if ctx.gw().config.servers[server].federated() {
        // One stream merging every upstream's GET stream (see federate::stream).
        let last_event_id = head
            .last_event_id
            .clone()
            .map(|r| c.conn.buffered()[r].to_vec());
        let (claims, _) = match session_request(w, c, ctx, &head, |u| &u.get_prefix).await {
            Ok(x) => x,
            Err(next) => return next,
        };
        c.up_out.clear();
        return super::federate::stream::get(w, c, ctx, &head, &claims, last_event_id).await;
    }
    let (claims, u) = match session_request(w, c, ctx, &head, |u| &u.get_prefix).await {
        Ok(x) => x,
        Err(next) => return next,
    };
    let stateless_upstream = upstream_session(ctx.gw(), Some(&claims), u)
        .is_some_and(|s| !s.protocol_version.is_legacy());
    if stateless_upstream {
        // Its revision has no server-to-client stream to open (405 is how a server says so).
        let why = "this endpoint's upstream speaks protocol version 2026-07-28, which has no \
                   server-to-client stream";
        return refuse(c, ctx, Refusal::because(Kind::MethodNotAllowed, why)).await;
    }
    let gen = ctx.gen.clone();
    if gen.gw.upstreams[u].legacy {
        c.up_out.clear();
        return super::legacy::get(w, c, ctx, &claims, u).await;
    }
    let up = &gen.gw.upstreams[u];
    let t_up = Instant::now();
    let req = std::mem::take(&mut c.up_out);
    let replica = upstream_session(&gen.gw, Some(&claims), u).map_or(0, |s| s.replica);
    let (res, req) = upstream::exchange_as(w, &gen.gw, (u, replica), req, ctx.caller()).await;
    c.up_out = req;
    match res {
        Ok((up_conn, rhead)) => {
            ctx.upstream_call = Some(UpstreamCall {
                upstream: u,
                result: Ok(rhead.status),
                elapsed: t_up.elapsed(),
            });
            ctx.outcome = if (200..300).contains(&rhead.status) {
                Outcome::Ok
            } else {
                Outcome::UpstreamStatus
            };
            let timeout = Some(up.request_timeout);
            relay(w, c, ctx, up_conn, &rhead, u, timeout, true).await
        }
        Err(e) => {
            ctx.upstream_call = Some(UpstreamCall {
                upstream: u,
                result: Err(e.kind),
                elapsed: t_up.elapsed(),
            });
            refuse(c, ctx, e.into()).await
        }
    }
}

/// Sends DELETE (`req`) to upstream `u` for `caller` and reads its answer; failures are
/// logged.
async fn end_upstream_session(
    w: &WorkerState,
    gw: &state::Gateway,
    (u, replica): (usize, u64),
    req: Vec<u8>,
    caller: Option<super::credentials::Caller<'_>>,
) -> Option<UpstreamCall> {
    let up = &gw.upstreams[u];
    let t_up = Instant::now();
    let (res, _) = upstream::exchange_as(w, gw, (u, replica), req, caller).await;
    match res {
        Ok((mut up_conn, rhead)) => {
            up_conn.consume(rhead.len);
            let mut sink = Vec::new();
            let ok = upstream::read_full_body(
                &mut up_conn,
                &rhead,
                64 * 1024,
                up.request_timeout,
                &mut sink,
            )
            .await;
            if ok.is_ok() {
                w.pool_put(gw, u, up_conn, &rhead, std::time::Instant::now());
            }
            Some(UpstreamCall {
                upstream: u,
                result: Ok(rhead.status),
                elapsed: t_up.elapsed(),
            })
        }
        Err(e) => {
            tracing::warn!(upstream = %up.name, error = %e.reason, "could not end the upstream session");
            Some(UpstreamCall {
                upstream: u,
                result: Err(e.kind),
                elapsed: t_up.elapsed(),
            })
        }
    }
}

/// DELETE: ends the session here (on every worker) and at the upstream.
pub(super) async fn delete(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    head: RequestHead,
) -> Next {
    let (claims, u) = match session_request(w, c, ctx, &head, |u| &u.delete_prefix).await {
        Ok(x) => x,
        Err(next) => return next,
    };
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let mut revoked = w.revoke(Revocation {
        id: claims.id,
        expires_at: claims.expires_at,
    });
    w.metrics.sessions_closed.increment(1);
    let server = ctx.server.unwrap_or_default();
    let s = &gw.config.servers[server];
    // The session's principal is the caller (the session is bound to it).
    let on_behalf = ctx.caller_owned();
    let caller = on_behalf.as_ref().map(|o| o.caller());
    if s.federated() {
        // Every upstream session the client session holds ends with it, at once. (The head
        // was consumed: these requests carry the upstream session headers only.)
        let ends = s.upstreams.iter().filter_map(|m| {
            let su = upstream_session(gw, Some(&claims), m.upstream)?;
            su.session_id.as_ref()?;
            if gw.upstreams[m.upstream].legacy {
                // Its session is the stream its holder reads: closing it ends the session.
                super::legacy::end(w, gw, &claims, m.upstream);
                return None;
            }
            let mut req = gw.upstreams[m.upstream].delete_prefix.clone();
            super::session_header_lines(&mut req, su);
            req.extend_from_slice(b"\r\n");
            Some(end_upstream_session(
                w,
                gw,
                (m.upstream, su.replica),
                req,
                caller,
            ))
        });
        futures_util::future::join_all(ends).await;
    } else if gw.upstreams[u].legacy {
        // The upstream session is the stream its holder reads: closing it ends the session.
        super::legacy::end(w, gw, &claims, u);
    } else if let Some(su) =
        upstream_session(gw, Some(&claims), u).filter(|s| s.session_id.is_some())
    {
        let req = std::mem::take(&mut c.up_out);
        if let Some(call) = end_upstream_session(w, gw, (u, su.replica), req, caller).await {
            ctx.upstream_call = Some(call);
        }
    }
    // Answer once every worker refuses the session, so no request sent after this answer is
    // served with it; a stalled worker delays DELETE by at most REVOKE_ACK_TIMEOUT.
    if let Err(e) = revoked.wait_async(REVOKE_ACK_TIMEOUT).await {
        tracing::warn!(error = %e, "session revocation not acknowledged by every worker");
    }
    let keep = ctx.keep_after_response();
    response::status_line(&mut c.out, 200);
    c.out.extend_from_slice(&ctx.cors);
    response::content_length(&mut c.out, 0);
    response::connection(&mut c.out, keep);
    c.out.extend_from_slice(b"\r\n");
    ctx.status = 200;
    match c.flush().await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}
