//! The legacy HTTP+SSE transport (MCP 2024-11-05) offered to clients: `GET <path>/sse` opens an
//! event stream whose first event names where to POST (`<path>/messages?sessionId=<id>`), and
//! every reply and server message goes onto that stream as `event: message`. Each POSTed
//! message is run through the Streamable HTTP request path of the same server (`inner`), with
//! the gateway session the stream's `initialize` opened; this module owns no MCP logic.

mod inner;
mod streams;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::SecureRandom;

use crate::error::Kind;
use crate::http::head::{HttpMethod, RequestHead};
use crate::http::{response, sse};
use crate::jsonrpc::{self, Body, MessageKind};
use crate::mcp::Method;
use crate::observe::names;

use super::client::Client;
use super::context::Ctx;
use super::control::Control;
use super::reject::Refusal;
use super::shutdown::Woken;
use super::state::WorkerState;
use super::{read_body, refuse, BodyAt, Next};

use streams::{End, LegacyStream, Order, Posted, Verdict};
pub use streams::{HandedOver, Streams};

/// Which legacy path a request came to (`Gateway::route_legacy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `<path>/sse`: GET opens the event stream.
    Sse,
    /// `<path>/messages`: POST one message to a stream.
    Messages,
}

/// How long a POST waits for the worker holding its stream to take the message.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(1);

/// A request to a legacy path of `server`.
pub(super) async fn handle(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    head: RequestHead,
    server: usize,
    route: Route,
) -> Next {
    match (route, head.method()) {
        (_, HttpMethod::Options) if !head.has_body() => {
            c.conn.consume(head.len);
            super::preflight(c, ctx).await
        }
        (Route::Sse, HttpMethod::Get) => open(w, c, ctx, head, server).await,
        (Route::Messages, HttpMethod::Post) => post(w, c, ctx, head).await,
        _ => {
            c.conn.consume(head.len);
            refuse(c, ctx, Refusal::new(Kind::MethodNotAllowed)).await
        }
    }
}

/// Who the client is, for the requests the stream makes on its behalf.
fn from(c: &Client, ctx: &Ctx) -> streams::From {
    streams::From {
        addr: c.addr,
        peer: c.peer().map(|p| (**p).clone()),
        principal: ctx.principal.as_ref().map(|p| p.id),
    }
}

/// Header lines of a client request that the request path reads (Host and Origin for
/// admission, Authorization and X-API-Key for the authentication phase, trace context to
/// forward).
fn carried_headers(head: &RequestHead, buf: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(128);
    let mut add = |name: &[u8], r: &Option<std::ops::Range<usize>>| {
        if let Some(r) = r {
            response::header(&mut h, name, &buf[r.clone()]);
        }
    };
    add(b"host", &head.host);
    add(b"origin", &head.origin);
    add(b"authorization", &head.authorization);
    add(b"x-api-key", &head.api_key);
    for (n, v) in &head.trace {
        response::header(&mut h, &buf[n.clone()], &buf[v.clone()]);
    }
    h
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // A failed generator leaves zeros: the generation still tells streams apart in-process.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_be_bytes(b)
}

/// `GET <path>/sse`: opens a legacy stream, announces where to POST, then writes every message
/// for the client until it leaves, reads too slowly, or the worker shuts down.
async fn open(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    head: RequestHead,
    server: usize,
) -> Next {
    if head.has_body() {
        c.conn.consume(head.len);
        let why = "GET takes no body";
        return refuse(c, ctx, Refusal::because(Kind::MalformedHttp, why)).await;
    }
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let limits = &gw.config.limits;
    let s = &gw.config.servers[server];
    let Some(paths) = s.legacy.as_ref() else {
        c.conn.consume(head.len);
        return refuse(c, ctx, Refusal::new(Kind::NotFound)).await;
    };
    let headers = carried_headers(&head, c.conn.buffered());
    c.conn.consume(head.len);
    let stream = Rc::new(LegacyStream::new(
        headers,
        from(c, ctx),
        limits.legacy_sse_queued_messages,
    ));
    let Some(id) = w.legacy_sse.open(
        w.index as u16,
        limits.legacy_sse_streams_per_worker,
        random_u64(),
        stream.clone(),
    ) else {
        return refuse(c, ctx, Refusal::new(Kind::LegacyStreams)).await;
    };
    let open_gauge = metrics::gauge!(names::LEGACY_SSE_STREAMS_OPEN);
    open_gauge.increment(1.0);
    response::status_line(&mut c.out, 200);
    c.out.extend_from_slice(
        b"content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n",
    );
    c.out.extend_from_slice(&ctx.cors);
    // Close-delimited: the stream is the connection's last response.
    response::connection(&mut c.out, false);
    c.out.extend_from_slice(b"\r\n");
    ctx.status = 200;
    let endpoint = format!("{}?sessionId={}", paths.messages, gw.legacy_ids.seal(&id));
    let fields = sse::Fields {
        event: Some(b"endpoint"),
        ..Default::default()
    };
    sse::write_event(&mut c.out, &fields, endpoint.as_bytes());
    monoio::spawn(dispatch(c.worker().clone(), stream.clone(), s.path.clone()));
    let why = write_stream(w, c, &stream, limits.legacy_sse_keepalive).await;
    stream.end(why);
    w.legacy_sse.close(&id);
    open_gauge.decrement(1.0);
    metrics::counter!(names::LEGACY_SSE_STREAMS_ENDED_TOTAL, "reason" => why.as_str()).increment(1);
    if why == End::SlowReader {
        tracing::info!(
            queued = limits.legacy_sse_queued_messages,
            "legacy SSE stream ended: its client did not read (limits.legacy_sse_queued_messages)"
        );
    }
    Next::Close
}

/// What woke a stream's writer.
enum Woke {
    Work,
    Keepalive,
    Shutdown,
    Client,
}

/// Writes the stream's messages as they come, a `:` comment when it has been idle for
/// `keepalive`; returns why it ended.
async fn write_stream(
    w: &WorkerState,
    c: &mut Client,
    stream: &LegacyStream,
    keepalive: Duration,
) -> End {
    let message = sse::Fields {
        event: Some(b"message"),
        ..Default::default()
    };
    let mut watch_client = true;
    loop {
        // One message a write: clients dispatch the events of one read back to back, and the
        // TypeScript SDK then runs a response before the progress notifications read with it
        // (their handlers are deferred), dropping them as "unknown token".
        let next = stream.outbox.borrow_mut().pop_front();
        if let Some(m) = next {
            sse::write_event(&mut c.out, &message, &m);
        }
        if let Some(why) = stream.ended.get() {
            // A stream ended for a slow reader gets nothing more: that is what it could not take.
            if why != End::SlowReader {
                let _ = c.flush().await;
            }
            return why;
        }
        // A client that does not read within limits.write_timeout is cut off here, and one
        // that let its queue overflow meanwhile at once (the write is given up, the socket reset).
        let flushed = monoio::select! {
            r = c.flush() => r.is_ok(),
            _ = stream.until_ended() => {
                super::client::abort_on_close(&c.conn.io);
                return stream.ended.get().unwrap_or(End::SlowReader);
            }
        };
        if !flushed {
            return End::ClientClosed;
        }
        if !stream.outbox.borrow().is_empty() {
            continue;
        }
        let until = w.shutdown.now() + keepalive;
        let work = stream
            .changed
            .until(|| !stream.outbox.borrow().is_empty() || stream.is_ended());
        let woke = if watch_client {
            monoio::select! {
                _ = work => Woke::Work,
                why = w.shutdown.wait_until(until) => match why {
                    Woken::Deadline => Woke::Keepalive,
                    Woken::Shutdown => Woke::Shutdown,
                },
                _ = c.conn.io.readable() => Woke::Client,
            }
        } else {
            monoio::select! {
                _ = work => Woke::Work,
                why = w.shutdown.wait_until(until) => match why {
                    Woken::Deadline => Woke::Keepalive,
                    Woken::Shutdown => Woke::Shutdown,
                },
            }
        };
        match woke {
            Woke::Work => {}
            Woke::Keepalive => sse::write_comment(&mut c.out, b" keep-alive"),
            Woke::Shutdown => return End::Shutdown,
            Woke::Client => match c.conn.io.peer_state() {
                crate::http::pool::Idleness::Closed => return End::ClientClosed,
                // It sent something after its GET: it is there; stop watching its socket.
                crate::http::pool::Idleness::Unsolicited => watch_client = false,
                crate::http::pool::Idleness::Silent => {}
            },
        }
    }
}

/// The `sessionId` query parameter of a request target.
fn session_param(target: &[u8]) -> Option<&[u8]> {
    let q = &target[memchr::memchr(b'?', target)? + 1..];
    q.split(|&b| b == b'&')
        .find_map(|kv| kv.strip_prefix(b"sessionId="))
}

/// `POST <path>/messages?sessionId=<id>`: one JSON-RPC message for a stream, queued on the
/// worker that holds the stream (here, or handed over); 202 once it is queued.
async fn post(w: &WorkerState, c: &mut Client, ctx: &mut Ctx, head: RequestHead) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let limits = &gw.config.limits;
    let buf = c.conn.buffered();
    let json = head
        .content_type
        .clone()
        .is_some_and(|r| super::checks::is_json_content_type(&buf[r]));
    let id = session_param(&buf[head.target.clone()])
        .and_then(|t| gw.legacy_ids.open(t))
        .filter(|id| usize::from(id.worker) < gw.control.workers());
    let early = if !json {
        Some(Refusal::new(Kind::UnsupportedMediaType))
    } else if head.content_length.unwrap_or(0) as usize > limits.max_body_bytes {
        Some(Refusal::new(Kind::BodyTooLarge))
    } else if id.is_none() {
        Some(Refusal::new(Kind::LegacyStreamUnknown))
    } else {
        None
    };
    if let Some(r) = early {
        c.conn.consume(head.len);
        return refuse(c, ctx, r).await;
    }
    let Some(id) = id else { return Next::Close };
    let headers = carried_headers(&head, buf);
    let (at, used) = match read_body(w, c, limits, &head).await {
        Ok(x) => x,
        Err(e) => return refuse(c, ctx, e.into()).await,
    };
    ctx.body_pending = false;
    let body = match at {
        BodyAt::Inline(r) => c.conn.buffered()[r].to_vec(),
        BodyAt::Decoded => std::mem::take(&mut c.body),
    };
    c.conn.consume(used);
    ctx.bytes_in = body.len() as u64;
    // Read here only to answer a bad body with 400 at once and to know how to run it; the
    // request path reads it again, decides on it and records it.
    let order = match jsonrpc::scan(&body, &gw.scan_limits) {
        Ok(Body::Single(m)) => match (m.kind, m.method.as_ref().map(|s| Method::parse(&s.value))) {
            (MessageKind::Request, Some(Method::Initialize)) => Order::Initialize,
            (MessageKind::Notification, _) => Order::Sequential,
            _ => Order::Concurrent,
        },
        Ok(Body::Batch(_)) => Order::Concurrent,
        Err(e) => {
            let kind = if e.is_parse_error() {
                Kind::ParseError
            } else {
                Kind::InvalidRequest
            };
            return refuse(c, ctx, Refusal::because(kind, e.to_string())).await;
        }
    };
    let posted = Posted {
        body,
        order,
        headers,
        from: from(c, ctx),
    };
    let verdict = if usize::from(id.worker) == w.index {
        w.legacy_sse.deliver(&id, posted)
    } else {
        let h = Arc::new(HandedOver::new(id, posted));
        let mut sent = gw
            .control
            .send(usize::from(id.worker), Control::LegacyPost(h.clone()));
        let _ = sent.wait_async(HANDOVER_TIMEOUT).await;
        let v = h.verdict();
        metrics::counter!(names::LEGACY_SSE_HANDOVERS_TOTAL, "result" => v.as_str()).increment(1);
        v
    };
    let refusal = match verdict {
        Verdict::Queued => None,
        Verdict::Unknown => Some(Kind::LegacyStreamUnknown),
        Verdict::Full => Some(Kind::LegacyQueueFull),
        Verdict::Pending => Some(Kind::LegacyHandover),
    };
    if let Some(kind) = refusal {
        return refuse(c, ctx, Refusal::new(kind)).await;
    }
    let keep = ctx.keep_after_response();
    response::status_line(&mut c.out, 202);
    c.out.extend_from_slice(&ctx.cors);
    c.out
        .extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
    response::content_length(&mut c.out, 8);
    response::connection(&mut c.out, keep);
    c.out.extend_from_slice(b"\r\nAccepted");
    ctx.status = 202;
    match c.flush().await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Runs the messages POSTed to `stream` through the request path of the server at `path`, in
/// the order `Order` asks, until the stream ends; then ends the gateway session (DELETE), which
/// ends its upstream sessions.
async fn dispatch(w: Rc<WorkerState>, stream: Rc<LegacyStream>, path: String) {
    loop {
        stream
            .changed
            .until(|| !stream.inbox.borrow().is_empty() || stream.is_ended())
            .await;
        if stream.is_ended() {
            break;
        }
        let Some(p) = stream.inbox.borrow_mut().pop_front() else {
            continue;
        };
        // The session's server stream, if the upstream ended it: opened again with the next
        // message (the client's activity paces it; an upstream that refuses it costs one GET a
        // message at most).
        if !stream.server_stream_open.get() && stream.token.borrow().is_some() {
            stream.server_stream_open.set(true);
            monoio::spawn(server_stream(w.clone(), stream.clone(), path.clone()));
        }
        match p.order {
            Order::Initialize => {
                let token = run(&w, &stream, &path, &p).await;
                if let Some(t) = token {
                    if let Some(old) = stream.token.replace(Some(t)) {
                        // A second initialize on one stream: the session it replaces ends.
                        let (w, stream, path) = (w.clone(), stream.clone(), path.clone());
                        monoio::spawn(async move { end_session(&w, &stream, &path, &old).await });
                    }
                    if !stream.server_stream_open.get() {
                        stream.server_stream_open.set(true);
                        monoio::spawn(server_stream(w.clone(), stream.clone(), path.clone()));
                    }
                }
            }
            Order::Sequential => {
                run(&w, &stream, &path, &p).await;
            }
            Order::Concurrent => {
                let (w, stream, path) = (w.clone(), stream.clone(), path.clone());
                monoio::spawn(async move { run(&w, &stream, &path, &p).await });
            }
        }
    }
    let token = stream.token.borrow_mut().take();
    if let (Some(t), false) = (token, w.shutdown.is_fired()) {
        end_session(&w, &stream, &path, &t).await;
    }
}

/// DELETE through the request path: the gateway session ends on every worker, and its upstream
/// sessions with it.
async fn end_session(w: &Rc<WorkerState>, stream: &LegacyStream, path: &str, token: &[u8]) {
    let mut req = format!("DELETE {path} HTTP/1.1\r\n").into_bytes();
    req.extend_from_slice(&stream.headers);
    response::header(&mut req, b"mcp-session-id", token);
    req.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n\r\n");
    if let Ok((mut conn, head)) = inner::exchange(w, req, &stream.from).await {
        let _ = inner::messages(&mut conn, &head, |_| {}).await;
    }
}

/// One POSTed message through the request path; its reply's messages go onto the stream.
/// Returns the session an `initialize` opened. Given up when the stream ends.
async fn run(
    w: &Rc<WorkerState>,
    stream: &LegacyStream,
    path: &str,
    p: &Posted,
) -> Option<Vec<u8>> {
    let mut req = Vec::with_capacity(p.body.len() + p.headers.len() + 256);
    req.extend_from_slice(format!("POST {path} HTTP/1.1\r\n").as_bytes());
    req.extend_from_slice(&p.headers);
    req.extend_from_slice(
        b"content-type: application/json\r\naccept: application/json, text/event-stream\r\n",
    );
    if p.order != Order::Initialize {
        if let Some(t) = stream.token.borrow().as_ref() {
            response::header(&mut req, b"mcp-session-id", t);
        }
    }
    response::content_length(&mut req, p.body.len() as u64);
    req.extend_from_slice(b"connection: close\r\n\r\n");
    req.extend_from_slice(&p.body);
    let exchange = async {
        let (mut conn, head) = inner::exchange(w, req, &p.from).await?;
        let token = head.session_id.clone().map(|r| conn.buffered()[r].to_vec());
        inner::messages(&mut conn, &head, |m| stream.send(m)).await?;
        Ok::<_, String>(token)
    };
    let done = monoio::select! {
        r = exchange => r,
        _ = stream.until_ended() => return None,
    };
    match done {
        Ok(token) => token,
        Err(why) => {
            tracing::warn!(error = %why, "legacy SSE: a posted message could not be relayed");
            None
        }
    }
}

/// The session's server→client stream (Streamable HTTP GET through the request path: the
/// upstream's, or the merged one of a federated endpoint), relayed onto the legacy stream.
async fn server_stream(w: Rc<WorkerState>, stream: Rc<LegacyStream>, path: String) {
    let Some(token) = stream.token.borrow().clone() else {
        stream.server_stream_open.set(false);
        return;
    };
    let mut req = format!("GET {path} HTTP/1.1\r\n").into_bytes();
    req.extend_from_slice(&stream.headers);
    response::header(&mut req, b"mcp-session-id", &token);
    req.extend_from_slice(b"accept: text/event-stream\r\nconnection: close\r\n\r\n");
    let relay = async {
        let (mut conn, head) = inner::exchange(&w, req, &stream.from).await?;
        if head.status != 200 {
            // 405: the upstream offers no such stream (the legacy stream carries what travels
            // on each request's own stream); any other refusal will not change either.
            return Ok(false);
        }
        inner::messages(&mut conn, &head, |m| stream.send(m)).await?;
        Ok::<_, String>(true)
    };
    let done = monoio::select! {
        r = relay => r,
        _ = stream.until_ended() => return,
    };
    match done {
        // The upstream ended a stream it served: open it again with the next message.
        Ok(true) => stream.server_stream_open.set(false),
        // Refused: not asked again (the flag stays set).
        Ok(false) => {}
        Err(why) => {
            stream.server_stream_open.set(false);
            tracing::debug!(error = %why, "legacy SSE: the session's server stream ended");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::session_param;

    #[test]
    fn the_session_parameter_is_found_among_others() {
        assert_eq!(session_param(b"/m?sessionId=abc"), Some(&b"abc"[..]));
        assert_eq!(
            session_param(b"/m?x=1&sessionId=abc&y=2"),
            Some(&b"abc"[..])
        );
        assert_eq!(session_param(b"/m?session_id=abc"), None);
        assert_eq!(session_param(b"/m"), None);
    }
}
