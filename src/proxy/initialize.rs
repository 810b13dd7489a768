//! initialize: the one reply the gateway reads whole. It learns the negotiated version and the
//! upstream's session id, seals them into its own `Mcp-Session-Id`, and relays the result.

use crate::error::Kind;
use crate::http::head::ResponseHead;
use crate::http::pool::UpstreamConn;
use crate::jsonrpc::{self, Body, MessageKind};
use crate::mcp::session::{SessionClaims, SessionSealer, UpstreamSession};
use crate::mcp::ProtocolVersion;

use super::state::WorkerState;
use super::upstream::{self, Client};
use super::{client_head, refuse, unix_now, IdBuf, Next, Scanned};

/// Finds the JSON-RPC response with `id` in an initialize reply (JSON, or SSE events) and returns
/// the protocol version it negotiated. `Ok(None)`: the upstream answered with a JSON-RPC error.
fn negotiated_version(
    w: &WorkerState,
    body: &[u8],
    sse: bool,
    id: &[u8],
) -> Result<Option<ProtocolVersion>, String> {
    let check = |payload: &[u8]| -> Option<Result<Option<ProtocolVersion>, String>> {
        let Ok(Body::Single(m)) = jsonrpc::scan(payload, &w.gw.scan_limits) else {
            return None;
        };
        if m.id.as_ref().map(|r| r.text) != Some(id) {
            return None;
        }
        Some(match m.kind {
            MessageKind::Error => Ok(None),
            MessageKind::Response => match m
                .protocol_version
                .as_ref()
                .map(|v| ProtocolVersion::parse(&v.value))
            {
                Some(Some(v)) if v.is_legacy() => Ok(Some(v)),
                Some(_) => Err("negotiated a protocol version the gateway does not support".into()),
                None => Err("sent an initialize result without protocolVersion".into()),
            },
            _ => return None,
        })
    };
    if !sse {
        return check(body).unwrap_or_else(|| {
            Err("sent an initialize reply that is not the matching JSON-RPC response".into())
        });
    }
    let mut data = Vec::new();
    for line in body.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if let Some(r) = check(&data) {
                return r;
            }
            data.clear();
        } else if let Some(d) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
        }
    }
    check(&data).unwrap_or_else(|| Err("ended its initialize stream without the response".into()))
}

/// The session id for an initialize reply: `Ok(None)` when the upstream did not open a session
/// (non-200, or a JSON-RPC error), `Err` with what was wrong with the reply.
#[allow(clippy::too_many_arguments)]
fn seal_session(
    w: &WorkerState,
    status: u16,
    body: &[u8],
    sse: bool,
    id: &[u8],
    server: usize,
    u: usize,
    upstream_sid: Option<String>,
) -> Result<Option<String>, String> {
    if status != 200 {
        return Ok(None);
    }
    let Some(version) = negotiated_version(w, body, sse, id)? else {
        return Ok(None);
    };
    let now = unix_now();
    let claims = SessionClaims {
        id: SessionSealer::new_id(),
        server: server as u16,
        protocol_version: version,
        issued_at: now,
        expires_at: now + w.gw.config.session.ttl.as_secs(),
        upstreams: vec![UpstreamSession {
            upstream: u as u16,
            session_id: upstream_sid,
            protocol_version: version,
        }],
        principal: None,
    };
    let token =
        w.gw.sealer
            .try_seal(&claims)
            .map_err(|e| format!("sent an unusable Mcp-Session-Id: {e}"))?;
    w.metrics.sessions_opened.increment(1);
    Ok(Some(token))
}

/// initialize: the gateway reads the upstream's whole reply (it is small), learns the negotiated
/// version and upstream session id, and answers with its own sealed session id.
#[allow(clippy::too_many_arguments)]
pub(super) async fn initialize_reply(
    w: &WorkerState,
    c: &mut Client,
    mut up_conn: UpstreamConn,
    rhead: ResponseHead,
    server: usize,
    u: usize,
    scanned: &Scanned,
    keep: bool,
    cors: &[u8],
) -> Next {
    let gw = &*w.gw;
    let up = &gw.upstreams[u];
    let id = scanned.id.as_ref().map_or(&b"null"[..], IdBuf::get);
    let upbuf_head = up_conn.buffered()[..rhead.len].to_vec();
    let sse = rhead.is_sse(&upbuf_head);
    let upstream_sid = rhead
        .session_id
        .clone()
        .map(|r| String::from_utf8_lossy(&upbuf_head[r]).into_owned());
    up_conn.consume(rhead.len);
    let mut body = Vec::new();
    let max = gw.config.limits.max_body_bytes;
    let token =
        match upstream::read_full_body(&mut up_conn, &rhead, max, up.request_timeout, &mut body)
            .await
        {
            Err(why) => Err(format!("sent an invalid initialize reply: {why}")),
            Ok(()) => {
                if rhead.keep_alive {
                    w.pool
                        .borrow_mut()
                        .put(u, up_conn, up.max_idle, w.shutdown.now());
                }
                seal_session(w, rhead.status, &body, sse, id, server, u, upstream_sid)
            }
        };
    let token = match token {
        Ok(t) => t,
        Err(why) => {
            let msg = format!("upstream \"{}\" {why}", up.name);
            return refuse(
                w,
                c,
                Kind::UpstreamProtocol,
                Some(id),
                Some(&msg),
                keep,
                cors,
            )
            .await;
        }
    };
    let keep = client_head(
        &mut c.out,
        &rhead,
        &upbuf_head,
        keep,
        false,
        cors,
        token.as_deref(),
        Some(body.len()),
    );
    c.out.extend_from_slice(&body);
    match c.flush().await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}
