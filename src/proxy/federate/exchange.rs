//! The gateway's own exchanges with upstreams on a federated endpoint: a request (the client's,
//! or one the gateway made) sent with that upstream's session, the reply read whole, and the
//! JSON-RPC response found in it (a JSON body, or an event of an event stream).

use crate::error::{Error, Kind};
use crate::http::response;
use crate::http::sse;
use crate::jsonrpc::{self, Body, MessageKind};
use crate::mcp::session::UpstreamSession;

use super::super::state::{Gateway, WorkerState};
use super::super::upstream;

/// Replies the gateway reads whole may be this much larger than a request body may be (a list
/// of a thousand tools with schemas is a few hundred KiB).
const WHOLE_REPLY_FACTOR: usize = 4;

/// An upstream's whole reply.
pub struct Reply {
    pub status: u16,
    /// The `Mcp-Session-Id` it set (initialize).
    pub session_id: Option<String>,
    pub body: Vec<u8>,
    pub sse: bool,
    /// The replica that answered (`upstream::replica_of`; 0 with one): where a session it
    /// opened is pinned.
    pub replica: u64,
}

/// A POST of `body` to upstream `u` with its session (if any) and the request's trace headers.
///
/// Toward an upstream the session reaches in the stateless revision (its entry names
/// 2026-07-28: no upstream session), the request is made one of that revision here, whoever
/// wrote it (the client, or the gateway: a list page, a fan-out): `_meta` with the revision and
/// empty client capabilities added where the body lacks them, and `Mcp-Method`/`Mcp-Name` set
/// from the body.
pub fn post_request(
    gw: &Gateway,
    u: usize,
    session: Option<&UpstreamSession>,
    trace: &[u8],
    body: &[u8],
) -> Vec<u8> {
    if let Some(s) = session.filter(|s| !s.protocol_version.is_legacy()) {
        return stateless_request(gw, u, s, trace, body);
    }
    let up = &gw.upstreams[u];
    let mut req = Vec::with_capacity(up.post_prefix.len() + 160 + trace.len() + body.len());
    req.extend_from_slice(&up.post_prefix);
    response::content_length(&mut req, body.len() as u64);
    if let Some(s) = session {
        super::super::session_header_lines(&mut req, s);
    }
    req.extend_from_slice(trace);
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

/// `post_request` toward a 2026-07-28 upstream (see there).
fn stateless_request(
    gw: &Gateway,
    u: usize,
    s: &UpstreamSession,
    trace: &[u8],
    body: &[u8],
) -> Vec<u8> {
    use crate::mcp::modern;
    let up = &gw.upstreams[u];
    let mut headers = Vec::with_capacity(128);
    super::super::session_header_lines(&mut headers, s);
    let mut body = std::borrow::Cow::Borrowed(body);
    if let Ok(Body::Single(m)) = jsonrpc::scan(&body, &gw.scan_limits) {
        // Only keys `_meta` lacks, and only into objects (no key is ever written twice).
        let members = modern::meta_members(s.protocol_version.as_str(), m.meta_keys);
        let splice_ok = !m.params_not_object && !m.meta_not_object;
        if let Some(method) = &m.method {
            // Spelled as a header value, never raw (a method may hold CR and LF).
            let mut v = Vec::with_capacity(method.value.len() + 16);
            modern::encode_header_value(&mut v, method.value.as_bytes());
            response::header(&mut headers, b"mcp-method", &v);
            let method = crate::mcp::Method::parse(&method.value);
            let name = match modern::name_source(method) {
                Some(modern::NameSource::Name) => m.name.as_ref(),
                Some(modern::NameSource::Uri) => m.uri.as_ref(),
                None => None,
            };
            if let Some(n) = name {
                let mut v = Vec::with_capacity(n.value.len() + 16);
                modern::encode_header_value(&mut v, n.value.as_bytes());
                response::header(&mut headers, b"mcp-name", &v);
            }
        }
        if !members.is_empty() && splice_ok && m.kind == MessageKind::Request {
            body = modern::with_meta(&body, m.params_open, m.meta_open, &members).into();
        }
    }
    let mut req = Vec::with_capacity(up.post_prefix.len() + 200 + trace.len() + body.len());
    req.extend_from_slice(&up.post_prefix);
    response::content_length(&mut req, body.len() as u64);
    req.extend_from_slice(&headers);
    req.extend_from_slice(trace);
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(&body);
    req
}

/// Who a request to a member is made for: an upstream with `token_exchange` credentials gets a
/// token issued for this caller (`upstream::exchange_as`); `None` where the gateway asks for
/// itself (such an upstream is then refused).
pub type Caller<'a> = Option<super::super::credentials::Caller<'a>>;

/// One of the gateway's own messages (`body`, with the request's trace lines) to upstream `u`
/// in `session`, the reply read whole, made for `caller`. An upstream with `transport: sse` is reached through its
/// event stream (`legacy::ask_raw`/`tell`): a request's reply is its response message (200), a
/// notification's is 202.
pub async fn rpc(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
    session: &UpstreamSession,
    (trace, caller): (&[u8], Caller<'_>),
    body: &[u8],
) -> Result<Reply, Error> {
    if !gw.upstreams[u].legacy {
        let req = post_request(gw, u, Some(session), trace, body);
        return whole(w, gw, (u, session.replica), req, caller).await;
    }
    use super::super::legacy;
    let fail = |why: String| Error::new(Kind::UpstreamUnavailable, why);
    let link = legacy::member_link(session, None).ok_or_else(|| {
        fail(format!(
            "upstream \"{}\" has no HTTP+SSE session here",
            gw.upstreams[u].name
        ))
    })?;
    let request = matches!(
        jsonrpc::scan(body, &gw.scan_limits),
        Ok(Body::Single(m)) if m.kind == MessageKind::Request
    );
    let reply = |status, body| Reply {
        status,
        session_id: None,
        body,
        sse: false,
        replica: 0,
    };
    if request {
        let msg = legacy::ask_raw(w, gw, u, &link, trace, body)
            .await
            .map_err(fail)?;
        Ok(reply(200, msg))
    } else {
        legacy::tell(w, gw, u, &link, (trace, body))
            .await
            .map_err(fail)?;
        Ok(reply(202, Vec::new()))
    }
}

/// Sends `req` to upstream `u` for `caller` and reads the whole reply (bounded), pooling the
/// connection.
pub async fn whole(
    w: &WorkerState,
    gw: &Gateway,
    (u, replica): (usize, u64),
    req: Vec<u8>,
    caller: Caller<'_>,
) -> Result<Reply, Error> {
    let up = &gw.upstreams[u];
    let (res, _) = upstream::exchange_as(w, gw, (u, replica), req, caller).await;
    let (mut conn, head) = res?;
    let replica = upstream::replica_of(gw, u, &conn);
    let head_bytes = conn.buffered()[..head.len].to_vec();
    let sse = head.is_sse(&head_bytes);
    let session_id = head
        .session_id
        .clone()
        .map(|r| String::from_utf8_lossy(&head_bytes[r]).into_owned());
    conn.consume(head.len);
    let mut body = Vec::new();
    let max = gw
        .config
        .limits
        .max_body_bytes
        .saturating_mul(WHOLE_REPLY_FACTOR);
    match upstream::read_full_body(&mut conn, &head, max, up.request_timeout, &mut body).await {
        Ok(()) => w.pool_put(gw, u, conn, &head, std::time::Instant::now()),
        Err(why) => {
            return Err(Error::new(
                Kind::UpstreamProtocol,
                format!("upstream \"{}\" sent an unreadable reply: {why}", up.name),
            ))
        }
    }
    Ok(Reply {
        status: head.status,
        session_id,
        body,
        sse,
        replica,
    })
}

/// The JSON-RPC response (result or error) to the request with id `id` in a whole reply: its
/// message's bytes. An event stream is searched event by event.
pub fn find_response(reply: &Reply, id: &[u8]) -> Option<(Vec<u8>, MessageKind)> {
    let matches = |payload: &[u8]| -> Option<MessageKind> {
        let Ok(Body::Single(m)) = jsonrpc::scan(payload, &REPLY_LIMITS) else {
            return None;
        };
        (matches!(m.kind, MessageKind::Response | MessageKind::Error)
            && m.id.as_ref().is_some_and(|i| jsonrpc::same_id(i.text, id)))
        .then_some(m.kind)
    };
    if !reply.sse {
        return matches(&reply.body).map(|k| (reply.body.clone(), k));
    }
    let mut decoder = sse::Decoder::new(reply.body.len().max(1));
    let mut found = None;
    let mut on = |item: sse::Item<'_>| {
        if let (None, sse::Item::Event(e)) = (&found, item) {
            if let Some(k) = matches(e.data) {
                found = Some((e.data.to_vec(), k));
            }
        }
    };
    let _ = decoder
        .feed(&reply.body, &mut on)
        .and_then(|()| decoder.finish(sse::AtEnd::Dispatch, &mut on));
    found
}

/// Replies are results: deeper than requests may be.
pub(super) const REPLY_LIMITS: jsonrpc::ScanLimits = jsonrpc::ScanLimits {
    max_depth: 120,
    max_batch_len: 10_000,
};

/// The response message (bytes) to one of the gateway's requests, checked to be a result: an
/// error from the upstream, a non-2xx reply or a reply without the response is why not.
pub fn result_message(gw: &Gateway, u: usize, reply: &Reply, id: &[u8]) -> Result<Vec<u8>, String> {
    let name = &gw.upstreams[u].name;
    if !(200..300).contains(&reply.status) {
        return Err(format!(
            "upstream \"{name}\" answered HTTP {}",
            reply.status
        ));
    }
    let Some((msg, kind)) = find_response(reply, id) else {
        return Err(format!(
            "upstream \"{name}\" sent no response to the request"
        ));
    };
    if kind == MessageKind::Error {
        let err = sonic_rs::get(&msg[..], ["error"]);
        let text = err.as_ref().map_or("?", |e| e.as_raw_str());
        return Err(format!(
            "upstream \"{name}\" answered with an error: {text}"
        ));
    }
    Ok(msg)
}

/// What a reply to one of the gateway's requests says: the `result` value (parsed), or why
/// there is none (see `result_message`).
pub fn result_of(
    gw: &Gateway,
    u: usize,
    reply: &Reply,
    id: &[u8],
) -> Result<sonic_rs::Value, String> {
    use sonic_rs::JsonValueTrait;
    let name = &gw.upstreams[u].name;
    let msg = result_message(gw, u, reply, id)?;
    let v: sonic_rs::Value = sonic_rs::from_slice(&msg)
        .map_err(|e| format!("upstream \"{name}\" sent invalid JSON: {e}"))?;
    v.get("result")
        .cloned()
        .ok_or_else(|| format!("upstream \"{name}\" sent a response without a result"))
}
