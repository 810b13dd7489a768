//! The request path as named phases, in the order a request travels:
//! read head → route → check host/origin → read body → scan → session → forward → relay → record.
//! Every refusal goes through `refuse`, which renders it with `reject::Rejects`.

pub mod checks;
pub mod client;
mod initialize;
pub mod reject;
pub mod session_cache;
mod session_requests;
pub mod shutdown;
pub mod state;
pub mod upstream;

use std::mem::MaybeUninit;
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::tls::Stream;

use crate::error::{Error, Kind};
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{Framing, HttpMethod, RequestHead, ResponseHead};
use crate::http::pool::UpstreamConn;
use crate::http::response;
use crate::jsonrpc::{self, Body, MessageKind};
use crate::mcp::session::{SessionClaims, UpstreamSession};
use crate::mcp::{Method, ProtocolVersion};
use crate::observe::Outcome;

use client::Client;
use state::WorkerState;
use upstream::RelayMode;

/// Upper bound on `limits.max_headers` (the scratch array lives on the stack).
pub const MAX_HEADERS: usize = 256;

/// What the connection does after a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves one client connection until it closes, idles out, or the worker shuts down.
pub async fn serve(w: Rc<WorkerState>, stream: Stream) {
    let _ = stream.tcp().set_nodelay(true);
    let mut c = Client::new(stream, w.clone());
    // A refused head is answered after the loop: awaiting inside the `match` would keep its
    // whole `Result` (a `RequestHead`) in the state of every idle connection.
    let refused = loop {
        let head = match read_head(&w, &mut c).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => break e,
        };
        // Boxed: the per-request state machine is large, and an idle connection should not carry it.
        c.lend(&w);
        c.head_only = head.method() == HttpMethod::Head;
        let next = Box::pin(handle(&w, &mut c, head)).await;
        c.head_only = false;
        c.release(&w);
        if next == Next::Close || w.shutdown.is_fired() {
            return;
        }
    };
    Box::pin(refuse(
        &w,
        &mut c,
        refused.kind,
        None,
        Some(&refused.reason),
        false,
        b"",
    ))
    .await;
}

/// Phase: read head (and admit it: `checks::admit_head`, host/origin included). Waits up to
/// `idle_timeout` for a first byte (or until shutdown), then up to `header_read_timeout` for
/// the whole head. `Ok(None)`: the connection ended quietly.
async fn read_head(w: &WorkerState, c: &mut Client) -> Result<Option<RequestHead>, Error> {
    let limits = &w.gw.config.limits;
    let mut deadline: Option<Instant> = None;
    loop {
        if !c.conn.buffered().is_empty() {
            let mut scratch = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            if let Some(h) = checks::admit_head(&w.gw.config, c.conn.buffered(), &mut scratch)? {
                return Ok(Some(h));
            }
            deadline.get_or_insert_with(|| w.shutdown.now() + limits.header_read_timeout);
        }
        // One await point, and no runtime timer: this state lives in every idle connection.
        let until = deadline.unwrap_or_else(|| w.shutdown.now() + limits.idle_timeout);
        let read = monoio::select! {
            r = c.conn.fill(0) => r,
            why = w.shutdown.wait_until(until) => match (why, deadline) {
                (shutdown::Woken::Deadline, Some(_)) => return Err(Error::new(Kind::HeaderTimeout, "")),
                _ => return Ok(None),
            },
        };
        match read {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Renders and writes a refusal; counts it.
#[allow(clippy::too_many_arguments)]
async fn refuse(
    w: &WorkerState,
    c: &mut Client,
    kind: Kind,
    id: Option<&[u8]>,
    reason: Option<&str>,
    keep_alive: bool,
    extra_headers: &[u8],
) -> Next {
    w.metrics.rejected(kind);
    let reason = reason.filter(|r| !r.is_empty());
    w.gw.rejects
        .render(&mut c.out, kind, id, reason, keep_alive, extra_headers);
    if c.head_only {
        // A HEAD request gets the head alone (RFC 9110 §9.3.2), so the connection stays in step.
        if let Some(end) = memchr::memmem::find(&c.out, b"\r\n\r\n") {
            c.out.truncate(end + 4);
        }
    }
    if c.flush().await.is_err() || !keep_alive {
        return Next::Close;
    }
    Next::KeepAlive
}

/// CORS response headers for an allowed browser origin.
fn cors_headers(origin: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(160);
    v.extend_from_slice(b"access-control-allow-origin: ");
    v.extend_from_slice(origin);
    v.extend_from_slice(b"\r\nvary: origin\r\naccess-control-expose-headers: mcp-session-id, mcp-protocol-version\r\n");
    v
}

/// Phases: route → dispatch by HTTP method (the head was admitted by `read_head`).
async fn handle(w: &WorkerState, c: &mut Client, head: RequestHead) -> Next {
    let t0 = Instant::now();
    let gw = &*w.gw;
    let buf = c.conn.buffered();
    let keep = head.keep_alive && !w.shutdown.is_fired();
    // A refusal before the body is read must close a connection that carries a body.
    let keep_unread = keep && !head.has_body();
    let Some(server) = gw.route(head.path(buf)) else {
        c.conn.consume(head.len);
        return refuse(w, c, Kind::NotFound, None, None, keep_unread, b"").await;
    };
    let origin = head.origin.clone().map(|r| &buf[r]);
    let cors = origin.map(cors_headers).unwrap_or_default();
    match head.method() {
        HttpMethod::Post => post(w, c, head, server, keep, &cors, t0).await,
        HttpMethod::Get => session_requests::get(w, c, head, server, keep, &cors, t0).await,
        HttpMethod::Delete => session_requests::delete(w, c, head, server, keep, &cors).await,
        HttpMethod::Options => {
            c.conn.consume(head.len);
            if !head.has_body() {
                preflight(c, &cors, keep).await
            } else {
                refuse(w, c, Kind::MethodNotAllowed, None, None, false, b"").await
            }
        }
        _ => {
            c.conn.consume(head.len);
            refuse(w, c, Kind::MethodNotAllowed, None, None, keep_unread, b"").await
        }
    }
}

async fn preflight(c: &mut Client, cors: &[u8], keep: bool) -> Next {
    response::status_line(&mut c.out, 204);
    c.out.extend_from_slice(cors);
    c.out.extend_from_slice(
        b"access-control-allow-methods: GET, POST, DELETE, OPTIONS\r\n\
          access-control-allow-headers: content-type, accept, authorization, mcp-session-id, mcp-protocol-version, last-event-id\r\n\
          access-control-max-age: 600\r\n",
    );
    response::connection(&mut c.out, keep);
    c.out.extend_from_slice(b"\r\n");
    match c.flush().await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Where the request body ended up, and how many buffered bytes the whole request used.
enum BodyAt {
    Inline(Range<usize>),
    Decoded,
}

/// How much a read of a chunked request body asks for.
const CHUNKED_READ: usize = 16 * 1024;

/// Reads more of a request body before `deadline` (the worker's coarse clock).
async fn fill_body(
    w: &WorkerState,
    c: &mut Client,
    deadline: Instant,
    want: usize,
) -> Result<(), Error> {
    let read = monoio::select! {
        r = c.conn.fill(want) => r,
        _ = w.shutdown.deadline(deadline) => return Err(Error::new(Kind::BodyTimeout, "")),
    };
    match read {
        Ok(0) | Err(_) => Err(Error::new(
            Kind::MalformedHttp,
            "connection closed mid-body",
        )),
        Ok(_) => Ok(()),
    }
}

/// Phase: read body. Content-Length bodies stay in the connection buffer (no copy);
/// chunked bodies are decoded into `c.body`. Returns (location, bytes to consume).
async fn read_body(
    w: &WorkerState,
    c: &mut Client,
    head: &RequestHead,
) -> Result<(BodyAt, usize), Error> {
    let limits = &w.gw.config.limits;
    let deadline = w.shutdown.now() + limits.body_read_timeout;
    if !head.chunked {
        let n = head.content_length.unwrap_or(0) as usize;
        let need = head.len + n;
        while c.conn.buffered().len() < need {
            let want = need - c.conn.buffered().len();
            fill_body(w, c, deadline, want).await?;
        }
        return Ok((BodyAt::Inline(head.len..need), need));
    }
    // Chunked: decoded into `c.body`; the framing read so far is cut out of the connection
    // buffer as it is decoded (the head stays, its offsets are still used), and the body's bytes
    // on the wire, framing included, count against max_body_bytes: chunk extensions can neither
    // pile up in memory nor stretch a body past the limit.
    c.body.clear();
    let mut dec = ChunkedDecoder::new(limits.max_header_bytes);
    let mut raw = 0usize;
    loop {
        let buf = &c.conn.buffered()[head.len..];
        let body = &mut c.body;
        let used = dec
            .feed(buf, |d| body.extend_from_slice(d))
            .map_err(|e| Error::new(Kind::MalformedHttp, format!("bad chunked body: {e}")))?;
        raw += used;
        if raw > limits.max_body_bytes {
            return Err(Error::new(Kind::BodyTooLarge, ""));
        }
        c.conn.cut(head.len..head.len + used);
        if dec.is_done() {
            return Ok((BodyAt::Decoded, head.len));
        }
        // Ask for a good read's worth: the framing just cut keeps the buffer from growing.
        fill_body(w, c, deadline, CHUNKED_READ).await?;
    }
}

/// A JSON-RPC id copied out of the body (ids are short; no allocation up to 47 bytes).
struct IdBuf {
    inline: [u8; 47],
    len: u8,
    heap: Vec<u8>,
}

impl IdBuf {
    fn new(raw: &[u8]) -> Self {
        let mut id = IdBuf {
            inline: [0; 47],
            len: 0,
            heap: Vec::new(),
        };
        if raw.len() <= id.inline.len() {
            id.inline[..raw.len()].copy_from_slice(raw);
            id.len = raw.len() as u8;
        } else {
            id.heap = raw.to_vec();
        }
        id
    }
    fn get(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.inline[..self.len as usize]
        } else {
            &self.heap
        }
    }
}

/// What the gateway keeps from the scanner's reading of the body.
struct Scanned {
    method: Method,
    id: Option<IdBuf>,
    batch: bool,
    is_initialize: bool,
}

/// Phase: scan. Reads method and id without building a tree; a body the scanner refuses never
/// reaches an upstream.
fn scan(w: &WorkerState, body: &[u8]) -> Result<Scanned, (Kind, String)> {
    match jsonrpc::scan(body, &w.gw.scan_limits) {
        Ok(Body::Single(m)) => {
            let method = m
                .method
                .as_ref()
                .map_or(Method::Other, |s| Method::parse(&s.value));
            let is_initialize = method == Method::Initialize && m.kind == MessageKind::Request;
            Ok(Scanned {
                method,
                id: m.id.as_ref().map(|r| IdBuf::new(r.text)),
                batch: false,
                is_initialize,
            })
        }
        Ok(Body::Batch(msgs)) => {
            if msgs
                .iter()
                .any(|m| m.method.as_ref().is_some_and(|s| s.value == "initialize"))
            {
                return Err((
                    Kind::InvalidRequest,
                    "initialize must not be part of a JSON-RPC batch".into(),
                ));
            }
            let method = msgs
                .first()
                .and_then(|m| m.method.as_ref())
                .map_or(Method::Other, |s| Method::parse(&s.value));
            Ok(Scanned {
                method,
                id: None,
                batch: true,
                is_initialize: false,
            })
        }
        Err(e) => {
            let kind = if e.is_parse_error() {
                Kind::ParseError
            } else {
                Kind::InvalidRequest
            };
            Err((kind, e.to_string()))
        }
    }
}

/// Phase: session. Opens the sealed session id and checks it belongs here and is still live.
fn open_session(
    w: &WorkerState,
    head: &RequestHead,
    buf: &[u8],
    server: usize,
) -> Result<Rc<SessionClaims>, (Kind, &'static str)> {
    let Some(r) = head.session_id.clone() else {
        return Err((Kind::SessionMissing, ""));
    };
    let token = &buf[r];
    let now = unix_now();
    let cached = w.sessions.borrow().get(token, now);
    let claims = match cached {
        Some(c) => c,
        None => {
            let opened = w.gw.sealer.open(token, now).map_err(|e| {
                let why = match e {
                    crate::mcp::session::SessionError::Expired => {
                        "session expired: initialize a new one"
                    }
                    _ => "unknown session: initialize a new one",
                };
                (Kind::SessionUnknown, why)
            })?;
            let opened = Rc::new(opened);
            w.sessions.borrow_mut().insert(token, opened.clone());
            opened
        }
    };
    if claims.server as usize != server {
        return Err((Kind::SessionUnknown, "session belongs to another endpoint"));
    }
    if w.is_revoked(&claims.id, now) {
        return Err((
            Kind::SessionUnknown,
            "session was deleted: initialize a new one",
        ));
    }
    if let Some(r) = head.protocol_version.clone() {
        if ProtocolVersion::parse_bytes(buf[r].trim_ascii()).is_none_or(|v| !v.is_legacy()) {
            return Err((Kind::UnsupportedProtocolVersion, ""));
        }
    }
    Ok(claims)
}

/// Appends the per-request upstream headers: session, version, trace context.
fn upstream_session_headers(
    out: &mut Vec<u8>,
    up: Option<&UpstreamSession>,
    head: &RequestHead,
    buf: &[u8],
) {
    if let Some(up) = up {
        if let Some(sid) = &up.session_id {
            response::header(out, b"mcp-session-id", sid.as_bytes());
        }
        if up.protocol_version.has_version_header() {
            response::header(
                out,
                b"mcp-protocol-version",
                up.protocol_version.as_str().as_bytes(),
            );
        }
    }
    for (n, v) in &head.trace {
        response::header(out, &buf[n.clone()], &buf[v.clone()]);
    }
}

/// POST: one JSON-RPC message (or a batch in 2025-03-26 sessions) to the server's upstream.
#[allow(clippy::too_many_arguments)]
async fn post(
    w: &WorkerState,
    c: &mut Client,
    head: RequestHead,
    server: usize,
    keep: bool,
    cors: &[u8],
    t0: Instant,
) -> Next {
    let gw = &*w.gw;
    let limits = &gw.config.limits;
    let buf = c.conn.buffered();
    if !head
        .content_type
        .clone()
        .is_some_and(|r| checks::is_json_content_type(&buf[r]))
    {
        c.conn.consume(head.len);
        return refuse(
            w,
            c,
            Kind::UnsupportedMediaType,
            None,
            None,
            keep && !head.has_body(),
            cors,
        )
        .await;
    }
    // The upstream may answer with JSON or an event stream: a client that cannot take both gets
    // 406 here rather than a reply it cannot read. No Accept at all (or several) is not judged.
    if let (Some(r), false) = (head.accept.clone(), head.accept_several) {
        if !checks::accepts_json_and_sse(&buf[r]) {
            c.conn.consume(head.len);
            return refuse(
                w,
                c,
                Kind::NotAcceptable,
                None,
                None,
                keep && !head.has_body(),
                cors,
            )
            .await;
        }
    }
    if head.content_length.unwrap_or(0) as usize > limits.max_body_bytes {
        c.conn.consume(head.len);
        return refuse(w, c, Kind::BodyTooLarge, None, None, false, cors).await;
    }
    if head.expect_continue {
        c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if c.flush().await.is_err() {
            return Next::Close;
        }
    }
    let (at, used) = match read_body(w, c, &head).await {
        Ok(x) => x,
        Err(e) => return refuse(w, c, e.kind, None, Some(&e.reason), false, cors).await,
    };
    let buf = c.conn.buffered();
    let body: &[u8] = match &at {
        BodyAt::Inline(r) => &buf[r.clone()],
        BodyAt::Decoded => &c.body,
    };
    let scanned = match scan(w, body) {
        Ok(s) => s,
        Err((kind, why)) => {
            c.conn.consume(used);
            w.metrics
                .request(Method::Other, Outcome::Rejected, t0.elapsed().as_secs_f64());
            return refuse(w, c, kind, None, Some(&why), keep, cors).await;
        }
    };
    let server_cfg = &gw.config.servers[server];
    let u = server_cfg.upstream;
    let up = &gw.upstreams[u];
    let claims = if scanned.is_initialize {
        None
    } else {
        match open_session(w, &head, buf, server) {
            Ok(cl) => Some(cl),
            Err((kind, why)) => {
                c.conn.consume(used);
                w.metrics.request(
                    scanned.method,
                    Outcome::Rejected,
                    t0.elapsed().as_secs_f64(),
                );
                let id = scanned.id.as_ref().map(IdBuf::get);
                return refuse(w, c, kind, id, Some(why), keep, cors).await;
            }
        }
    };
    if scanned.batch
        && !claims
            .as_ref()
            .is_some_and(|cl| cl.protocol_version.allows_batches())
    {
        c.conn.consume(used);
        w.metrics.request(
            scanned.method,
            Outcome::Rejected,
            t0.elapsed().as_secs_f64(),
        );
        return refuse(w, c, Kind::BatchNotAllowed, None, None, keep, cors).await;
    }
    // Phase: forward. The body is spliced in as bytes; it is never re-serialized.
    c.up_out.clear();
    c.up_out.extend_from_slice(&up.post_prefix);
    response::content_length(&mut c.up_out, body.len() as u64);
    let up_session = claims
        .as_ref()
        .and_then(|cl| cl.upstreams.iter().find(|s| s.upstream as usize == u));
    upstream_session_headers(&mut c.up_out, up_session, &head, buf);
    c.up_out.extend_from_slice(b"\r\n");
    c.up_out.extend_from_slice(body);
    c.conn.consume(used);

    let t_up = Instant::now();
    let (res, req) = upstream::exchange(w, u, std::mem::take(&mut c.up_out)).await;
    c.up_out = req;
    let (up_conn, rhead) = match res {
        Ok(x) => x,
        Err(e) => {
            w.metrics.upstream(u, Err(e.kind), 0.0);
            w.metrics.request(
                scanned.method,
                Outcome::UpstreamError,
                t0.elapsed().as_secs_f64(),
            );
            tracing::warn!(upstream = %up.name, error = %e.reason, "upstream exchange failed");
            let id = scanned.id.as_ref().map(IdBuf::get);
            return refuse(w, c, e.kind, id, Some(&e.reason), keep, cors).await;
        }
    };
    let outcome = if (200..300).contains(&rhead.status) {
        Outcome::Ok
    } else {
        Outcome::UpstreamStatus
    };
    let mut up_conn = up_conn;
    let expect_id = scanned.id.as_ref().map(IdBuf::get);
    let vetted = upstream::vet_reply(w, &mut up_conn, &rhead, up.request_timeout, expect_id).await;
    let up_result = match &vetted {
        upstream::Vetted::Unusable { kind, .. } => Err(*kind),
        _ => Ok(rhead.status),
    };
    w.metrics
        .upstream(u, up_result, t_up.elapsed().as_secs_f64());
    match vetted {
        upstream::Vetted::Relay => {}
        upstream::Vetted::Whole { head: hb, body } => {
            let keep = client_head(
                &mut c.out,
                &rhead,
                &hb,
                keep,
                head.minor == 0,
                cors,
                None,
                Some(body.len()),
            );
            c.out.extend_from_slice(&body);
            w.pool_put(u, up_conn, &rhead);
            w.metrics
                .request(scanned.method, outcome, t0.elapsed().as_secs_f64());
            return match c.flush().await {
                Ok(()) if keep => Next::KeepAlive,
                _ => Next::Close,
            };
        }
        upstream::Vetted::Unusable {
            kind,
            why,
            reusable,
        } => {
            if reusable {
                w.pool_put(u, up_conn, &rhead);
            } else {
                drop(up_conn);
            }
            w.metrics.request(
                scanned.method,
                Outcome::UpstreamError,
                t0.elapsed().as_secs_f64(),
            );
            let had_session = up_session.is_some_and(|s| s.session_id.is_some());
            return unusable_reply(
                w,
                c,
                &scanned,
                (u, kind, rhead.status),
                &why,
                had_session,
                keep,
                cors,
            )
            .await;
        }
    }
    let next = if scanned.is_initialize {
        initialize::initialize_reply(w, c, up_conn, rhead, server, u, &scanned, keep, cors).await
    } else {
        relay(
            w,
            c,
            up_conn,
            &rhead,
            u,
            keep,
            head.minor == 0,
            cors,
            Some(up.request_timeout),
            false,
        )
        .await
    };
    w.metrics
        .request(scanned.method, outcome, t0.elapsed().as_secs_f64());
    next
}

/// Answers an upstream reply no client could parse with a JSON-RPC error naming the upstream,
/// its HTTP status in `error.data`. A 404 to a request that carried the upstream's session id
/// means that session ended: the client gets a 404 too, so it initializes a new one.
#[allow(clippy::too_many_arguments)]
async fn unusable_reply(
    w: &WorkerState,
    c: &mut Client,
    scanned: &Scanned,
    (u, kind, status): (usize, Kind, u16),
    why: &str,
    had_session: bool,
    keep: bool,
    cors: &[u8],
) -> Next {
    let name = &w.gw.upstreams[u].name;
    tracing::warn!(upstream = %name, status, error = %why, "unusable upstream reply");
    let ended = status == 404 && had_session;
    let (kind, msg) = if ended {
        (
            Kind::SessionUnknown,
            format!("upstream \"{name}\" ended its session ({why}): initialize a new one"),
        )
    } else if kind == Kind::UpstreamTimeout {
        (kind, format!("upstream \"{name}\" {why}"))
    } else {
        (
            kind,
            format!("upstream \"{name}\" sent an unusable reply: {why}"),
        )
    };
    let mut data = Vec::with_capacity(64);
    data.extend_from_slice(b"{\"upstream\":");
    crate::error::json_escape_into(&mut data, name);
    data.extend_from_slice(format!(",\"status\":{status}}}").as_bytes());
    w.metrics.rejected(kind);
    let id = scanned.id.as_ref().map(IdBuf::get);
    w.gw.rejects
        .render_with_data(&mut c.out, kind, id, Some(&msg), Some(&data), keep, cors);
    match c.flush().await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Writes the client's response head for an upstream response; returns the keep-alive decision.
#[allow(clippy::too_many_arguments)]
fn client_head(
    out: &mut Vec<u8>,
    rhead: &ResponseHead,
    upbuf: &[u8],
    keep: bool,
    http10: bool,
    cors: &[u8],
    session: Option<&str>,
    length_override: Option<usize>,
) -> bool {
    response::status_line(out, rhead.status);
    for (n, v) in &rhead.relay {
        response::header(out, &upbuf[n.clone()], &upbuf[v.clone()]);
    }
    if rhead.is_sse(upbuf) {
        out.extend_from_slice(b"x-accel-buffering: no\r\n");
    }
    if let Some(s) = session {
        response::header(out, b"mcp-session-id", s.as_bytes());
    }
    out.extend_from_slice(cors);
    let mut keep = keep;
    match (length_override, rhead.framing) {
        (Some(n), _) => response::content_length(out, n as u64),
        (None, Framing::Length(n)) => response::content_length(out, n),
        (None, Framing::None) => {}
        (None, Framing::Chunked | Framing::UntilClose) if http10 => keep = false,
        (None, Framing::Chunked | Framing::UntilClose) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
    }
    response::connection(out, keep);
    out.extend_from_slice(b"\r\n");
    keep
}

/// Phase: relay. Streams the upstream's response to the client and pools the upstream connection.
/// Event streams get no per-read timeout (they may idle); other bodies get `read_timeout`.
#[allow(clippy::too_many_arguments)]
async fn relay(
    w: &WorkerState,
    c: &mut Client,
    mut up_conn: UpstreamConn,
    rhead: &ResponseHead,
    u: usize,
    keep: bool,
    http10: bool,
    cors: &[u8],
    read_timeout: Option<Duration>,
    end_on_shutdown: bool,
) -> Next {
    let keep = client_head(
        &mut c.out,
        rhead,
        up_conn.buffered(),
        keep,
        http10,
        cors,
        None,
        None,
    );
    let read_timeout = if rhead.is_sse(up_conn.buffered()) {
        None
    } else {
        read_timeout
    };
    up_conn.consume(rhead.len);
    let mode = RelayMode {
        http10,
        read_timeout,
        end_on: end_on_shutdown.then_some(&w.shutdown),
    };
    match upstream::relay_body(c, &mut up_conn, rhead, mode).await {
        Ok(reusable) => {
            if reusable {
                w.pool_put(u, up_conn, rhead);
            }
            if keep {
                Next::KeepAlive
            } else {
                Next::Close
            }
        }
        Err(e) => {
            if let upstream::RelayError::Upstream(why) = e {
                tracing::warn!(upstream = %w.gw.upstreams[u].name, error = why, "relay aborted");
            }
            Next::Close
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: Fn(Rc<WorkerState>, Stream) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// An idle connection's memory is this future plus its read buffer: keep it small.
    #[test]
    fn an_idle_connection_future_stays_small() {
        let size = future_size(serve);
        assert!(size <= 1024, "serve future is {size} bytes");
    }
}
