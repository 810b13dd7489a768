//! GET (the server-to-client event stream) and DELETE (end the session): requests without a
//! body that act on an existing session.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::error::Kind;
use crate::http::head::RequestHead;
use crate::http::response;
use crate::mcp::session::SessionClaims;
use crate::mcp::Method;
use crate::observe::Outcome;

use super::client::Client;
use super::state::{self, Revocation, WorkerState};
use super::upstream;
use super::{open_session, refuse, relay, upstream_session_headers, Next};

/// How long DELETE waits for every worker to acknowledge a revocation before answering anyway.
const REVOKE_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// GET and DELETE: refuses a body, opens the session, and writes the upstream request head
/// (`prefix` of the session's upstream, session and trace headers, `Last-Event-ID`).
/// `Err` carries what the connection does after the refusal that was already sent.
async fn session_request(
    w: &WorkerState,
    c: &mut Client,
    head: &RequestHead,
    server: usize,
    keep: bool,
    cors: &[u8],
    prefix: fn(&state::UpstreamRuntime) -> &[u8],
) -> Result<(Rc<SessionClaims>, usize), Next> {
    if head.has_body() {
        c.conn.consume(head.len);
        let why = "GET and DELETE take no body";
        return Err(refuse(w, c, Kind::MalformedHttp, None, Some(why), false, cors).await);
    }
    let buf = c.conn.buffered();
    let claims = match open_session(w, head, buf, server) {
        Ok(cl) => cl,
        Err((kind, why)) => {
            c.conn.consume(head.len);
            return Err(refuse(w, c, kind, None, Some(why), keep, cors).await);
        }
    };
    let u = w.gw.config.servers[server].upstream;
    c.up_out.clear();
    c.up_out.extend_from_slice(prefix(&w.gw.upstreams[u]));
    let up_session = claims.upstreams.iter().find(|s| s.upstream as usize == u);
    upstream_session_headers(&mut c.up_out, up_session, head, buf);
    if let Some(r) = head.last_event_id.clone() {
        response::header(&mut c.up_out, b"last-event-id", &buf[r]);
    }
    c.up_out.extend_from_slice(b"\r\n");
    c.conn.consume(head.len);
    Ok((claims, u))
}

/// GET: opens the server-to-client event stream of the session's upstream and relays it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn get(
    w: &WorkerState,
    c: &mut Client,
    head: RequestHead,
    server: usize,
    keep: bool,
    cors: &[u8],
    t0: Instant,
) -> Next {
    let (_claims, u) =
        match session_request(w, c, &head, server, keep, cors, |u| &u.get_prefix).await {
            Ok(x) => x,
            Err(next) => return next,
        };
    let up = &w.gw.upstreams[u];
    let t_up = Instant::now();
    let (res, req) = upstream::exchange(w, u, std::mem::take(&mut c.up_out)).await;
    c.up_out = req;
    match res {
        Ok((up_conn, rhead)) => {
            w.metrics
                .upstream(u, Ok(rhead.status), t_up.elapsed().as_secs_f64());
            let timeout = Some(up.request_timeout);
            let next = relay(
                w,
                c,
                up_conn,
                &rhead,
                u,
                keep,
                head.minor == 0,
                cors,
                timeout,
                true,
            )
            .await;
            let outcome = if (200..300).contains(&rhead.status) {
                Outcome::Ok
            } else {
                Outcome::UpstreamStatus
            };
            w.metrics
                .request(Method::Other, outcome, t0.elapsed().as_secs_f64());
            next
        }
        Err(e) => {
            w.metrics.upstream(u, Err(e.kind), 0.0);
            refuse(w, c, e.kind, None, Some(&e.reason), keep, cors).await
        }
    }
}

/// DELETE: ends the session here (on every worker) and at the upstream.
pub(super) async fn delete(
    w: &WorkerState,
    c: &mut Client,
    head: RequestHead,
    server: usize,
    keep: bool,
    cors: &[u8],
) -> Next {
    let (claims, u) =
        match session_request(w, c, &head, server, keep, cors, |u| &u.delete_prefix).await {
            Ok(x) => x,
            Err(next) => return next,
        };
    let up = &w.gw.upstreams[u];
    let up_session = claims.upstreams.iter().find(|s| s.upstream as usize == u);
    let mut revoked = w.revoke(Revocation {
        id: claims.id,
        expires_at: claims.expires_at,
    });
    w.metrics.sessions_closed.increment(1);
    if up_session.is_some_and(|s| s.session_id.is_some()) {
        let (res, req) = upstream::exchange(w, u, std::mem::take(&mut c.up_out)).await;
        c.up_out = req;
        match res {
            Ok((mut up_conn, rhead)) => {
                w.metrics.upstream(u, Ok(rhead.status), 0.0);
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
                    w.pool_put(u, up_conn, &rhead);
                }
            }
            Err(e) => {
                w.metrics.upstream(u, Err(e.kind), 0.0);
                tracing::warn!(upstream = %up.name, error = %e.reason, "could not end the upstream session");
            }
        }
    }
    // Answer once every worker refuses the session, so no request sent after this answer is
    // served with it; a stalled worker delays DELETE by at most REVOKE_ACK_TIMEOUT.
    if let Err(e) = revoked.wait_async(REVOKE_ACK_TIMEOUT).await {
        tracing::warn!(error = %e, "session revocation not acknowledged by every worker");
    }
    response::status_line(&mut c.out, 200);
    c.out.extend_from_slice(cors);
    response::content_length(&mut c.out, 0);
    response::connection(&mut c.out, keep);
    c.out.extend_from_slice(b"\r\n");
    match c.flush().await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}
