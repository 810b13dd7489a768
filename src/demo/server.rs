//! The demo server's connections: HTTP/1.1 keep-alive and pipelining on `crate::http`, the
//! Streamable HTTP rules (sessions, 202 for notifications, batches only at 2025-03-26), JSON or
//! chunked SSE replies, and the GET stream. Decisions come from `handler`; this file does the I/O.

use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use serde_json::Value;

use super::catalog::Catalog;
use super::handler::{self, Message, Reply};
use super::session::{Claim, Sessions};
use crate::error::code;
use crate::http::chunked::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use crate::http::head::{parse_request, HttpMethod};
use crate::http::{response, sse, Conn};
use crate::mcp::ProtocolVersion;

mod stateless;

pub const MAX_HEAD: usize = 1 << 20;
pub const MAX_BODY: usize = 16 << 20;
const MAX_HEADERS: usize = 128;
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(15);
/// Buffers above this are released once their request is done.
const KEEP_BUF: usize = 256 * 1024;

/// What every worker thread shares.
pub struct Shared {
    pub catalog: Catalog,
    pub sessions: Sessions,
    /// Answer every request as SSE.
    pub sse: bool,
    /// Bound to a loopback address: refuse browser origins that are not local.
    pub loopback: bool,
}

/// SSE stream numbers, unique in the process; event ids are `<stream>-<seq>`.
static STREAMS: AtomicU64 = AtomicU64::new(1);
static NULL_ID: Value = Value::Null;

enum Next {
    KeepAlive,
    Close,
}

/// Every way the demo refuses a request before any method runs, and the one table that gives
/// each its HTTP status, JSON-RPC code and message.
#[derive(Clone, Copy, Debug)]
enum Reject {
    NotFound,
    MethodNotAllowed,
    OriginNotAllowed,
    UnsupportedMediaType,
    NotAcceptable,
    BodyTooLarge,
    MalformedBody,
    ParseError,
    InvalidRequest,
    BatchNotAllowed,
    SessionMissing,
    SessionUnknown,
    UnsupportedVersion,
    StreamBusy,
}

impl Reject {
    fn row(self) -> (u16, i32, &'static str) {
        use Reject::*;
        const SERVER: i32 = -32000;
        match self {
            NotFound => (404, SERVER, "Not Found: the MCP endpoint is /mcp"),
            MethodNotAllowed => (405, SERVER, "Method not allowed: use POST, GET or DELETE"),
            OriginNotAllowed => (403, SERVER, "Forbidden: Origin is not a local origin"),
            UnsupportedMediaType => (
                415,
                SERVER,
                "Unsupported Media Type: Content-Type must be application/json",
            ),
            NotAcceptable => (
                406,
                SERVER,
                "Not Acceptable: the client must accept text/event-stream",
            ),
            BodyTooLarge => (413, SERVER, "Request body too large"),
            MalformedBody => (400, SERVER, "Malformed chunked request body"),
            ParseError => (400, code::PARSE_ERROR, "Parse error"),
            InvalidRequest => (400, code::INVALID_REQUEST, "Invalid Request"),
            BatchNotAllowed => (
                400,
                code::INVALID_REQUEST,
                "Invalid Request: JSON-RPC batches are only accepted in 2025-03-26 sessions",
            ),
            SessionMissing => (
                400,
                SERVER,
                "Bad Request: Mcp-Session-Id header is required",
            ),
            SessionUnknown => (404, -32001, "Session not found"),
            UnsupportedVersion => (400, SERVER, "Bad Request: unsupported MCP-Protocol-Version"),
            StreamBusy => (
                409,
                SERVER,
                "Conflict: this session already has a GET stream",
            ),
        }
    }
}

/// What the request head said, copied out so the read buffer can move on.
struct Req {
    method: HttpMethod,
    on_endpoint: bool,
    json_body: bool,
    accepts_sse: bool,
    session: Option<String>,
    /// `Some(None)`: the header is there but names no legacy revision we speak.
    version_header: Option<Option<ProtocolVersion>>,
    origin_ok: bool,
    keep_alive: bool,
    /// The raw `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` values (2026-07-28).
    version_raw: Option<Vec<u8>>,
    mcp_method: Option<Vec<u8>>,
    mcp_name: Option<Vec<u8>>,
}

enum Body {
    /// The body is the first `n` buffered bytes of the connection.
    Buffered(usize),
    /// A chunked body, decoded.
    Owned(Vec<u8>),
    TooLarge,
    Malformed,
}

/// Per-connection write buffers: `out` is what goes to the socket next, `scratch` renders
/// messages before they are framed.
struct Bufs {
    out: Vec<u8>,
    scratch: Vec<u8>,
}

/// Accepts connections for ever on this worker's copy of the listener.
pub async fn run(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "demo: cannot register the listener");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(serve(stream, shared.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "demo: accept failed");
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    // Buffers grow on demand: an idle keep-alive connection costs its 8 KiB read buffer and the
    // size of its last response, so load tests can hold thousands of connections.
    let mut conn = Conn::new(stream, 8 * 1024);
    let mut bufs = Bufs {
        out: Vec::new(),
        scratch: Vec::new(),
    };
    while let Ok(Next::KeepAlive) = serve_one(&mut conn, &shared, &mut bufs).await {
        conn.shrink_idle(KEEP_BUF);
        for b in [&mut bufs.out, &mut bufs.scratch] {
            b.clear();
            if b.capacity() > KEEP_BUF {
                *b = Vec::new();
            }
        }
    }
}

/// Sends `out` and clears it.
async fn flush(conn: &mut Conn<TcpStream>, out: &mut Vec<u8>) -> io::Result<()> {
    let buf = std::mem::take(out);
    let (res, mut buf) = conn.write_all(buf).await;
    buf.clear();
    *out = buf;
    res
}

async fn serve_one(
    conn: &mut Conn<TcpStream>,
    shared: &Shared,
    bufs: &mut Bufs,
) -> io::Result<Next> {
    let head = loop {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        match parse_request(conn.buffered(), &mut headers, MAX_HEAD, MAX_HEAD) {
            Ok(Some(head)) => break head,
            Ok(None) => {
                if conn.fill(0).await? == 0 {
                    return Ok(Next::Close);
                }
            }
            Err(e) => {
                // The stream cannot be trusted past a bad head: answer and close.
                json_response(bufs, e.kind.status(), None, false, |b| {
                    handler::render_error(b, None, -32000, e.reason)
                });
                flush(conn, &mut bufs.out).await?;
                return Ok(Next::Close);
            }
        }
    };

    let buf = conn.buffered();
    let field = |r: &Option<std::ops::Range<usize>>| r.as_ref().map(|r| &buf[r.clone()]);
    let req = Req {
        method: head.method(),
        on_endpoint: head.path(buf) == b"/mcp",
        json_body: field(&head.content_type).is_some_and(is_json),
        accepts_sse: field(&head.accept).is_none_or(|v| accepts(v, b"text/event-stream")),
        session: field(&head.session_id).map(|v| String::from_utf8_lossy(v).into_owned()),
        version_header: field(&head.protocol_version)
            .map(|v| ProtocolVersion::parse_bytes(v.trim_ascii()).filter(|p| p.is_legacy())),
        origin_ok: !shared.loopback || field(&head.origin).is_none_or(is_local_origin),
        keep_alive: head.keep_alive,
        version_raw: field(&head.protocol_version).map(<[u8]>::to_vec),
        mcp_method: field(&head.mcp_method).map(<[u8]>::to_vec),
        mcp_name: field(&head.mcp_name).map(<[u8]>::to_vec),
    };
    conn.consume(head.len);

    let body = match read_body(conn, &head, &mut bufs.out).await? {
        Some(b) => b,
        None => return Ok(Next::Close),
    };
    let (bytes, used): (&[u8], usize) = match &body {
        Body::Buffered(n) => (&conn.buffered()[..*n], *n),
        Body::Owned(v) => (v, 0),
        Body::TooLarge => return reject(conn, bufs, Reject::BodyTooLarge, None, false).await,
        Body::Malformed => return reject(conn, bufs, Reject::MalformedBody, None, false).await,
    };
    let wants_json =
        req.method == HttpMethod::Post && req.on_endpoint && req.origin_ok && req.json_body;
    let parsed = wants_json.then(|| serde_json::from_slice::<Value>(bytes));
    conn.consume(used);
    drop(body);

    let ka = req.keep_alive;
    if !req.on_endpoint {
        return reject(conn, bufs, Reject::NotFound, None, ka).await;
    }
    if !req.origin_ok {
        return reject(conn, bufs, Reject::OriginNotAllowed, None, ka).await;
    }
    match req.method {
        HttpMethod::Post => match parsed {
            None => reject(conn, bufs, Reject::UnsupportedMediaType, None, ka).await,
            Some(Err(e)) => {
                let msg = format!("Parse error: {e}");
                reject(conn, bufs, Reject::ParseError, Some(&msg), ka).await
            }
            Some(Ok(msg)) => post(conn, shared, bufs, &req, &msg).await,
        },
        HttpMethod::Get => get_stream(conn, shared, bufs, &req).await,
        HttpMethod::Delete => {
            let Some(sid) = req.session.as_deref() else {
                return reject(conn, bufs, Reject::SessionMissing, None, ka).await;
            };
            if !shared.sessions.remove(sid) {
                return reject(conn, bufs, Reject::SessionUnknown, None, ka).await;
            }
            empty_response(&mut bufs.out, 200, ka);
            flush(conn, &mut bufs.out).await?;
            Ok(next(ka))
        }
        _ => reject(conn, bufs, Reject::MethodNotAllowed, None, ka).await,
    }
}

fn next(keep_alive: bool) -> Next {
    if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Reads the request body within the limits. `None`: the peer went away.
async fn read_body(
    conn: &mut Conn<TcpStream>,
    head: &crate::http::RequestHead,
    out: &mut Vec<u8>,
) -> io::Result<Option<Body>> {
    if head.chunked {
        if head.expect_continue && conn.buffered().is_empty() {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            flush(conn, out).await?;
        }
        let mut decoder = ChunkedDecoder::new(64 * 1024);
        let mut body = Vec::new();
        let mut too_large = false;
        loop {
            let fed = decoder.feed(conn.buffered(), |data| {
                if body.len() + data.len() > MAX_BODY {
                    too_large = true;
                } else {
                    body.extend_from_slice(data);
                }
            });
            match fed {
                Ok(n) => conn.consume(n),
                Err(_) => return Ok(Some(Body::Malformed)),
            }
            if too_large {
                return Ok(Some(Body::TooLarge));
            }
            if decoder.is_done() {
                return Ok(Some(Body::Owned(body)));
            }
            if conn.fill(0).await? == 0 {
                return Ok(None);
            }
        }
    }
    let n = head.content_length.unwrap_or(0);
    if n > MAX_BODY as u64 {
        return Ok(Some(Body::TooLarge));
    }
    let n = n as usize;
    if head.expect_continue && n > 0 && conn.buffered().len() < n {
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        flush(conn, out).await?;
    }
    while conn.buffered().len() < n {
        let missing = n - conn.buffered().len();
        if conn.fill(missing).await? == 0 {
            return Ok(None);
        }
    }
    Ok(Some(Body::Buffered(n)))
}

async fn reject(
    conn: &mut Conn<TcpStream>,
    bufs: &mut Bufs,
    why: Reject,
    message: Option<&str>,
    keep_alive: bool,
) -> io::Result<Next> {
    reject_with_id(conn, bufs, why, None, message, keep_alive).await
}

async fn reject_with_id(
    conn: &mut Conn<TcpStream>,
    bufs: &mut Bufs,
    why: Reject,
    id: Option<&Value>,
    message: Option<&str>,
    keep_alive: bool,
) -> io::Result<Next> {
    let (status, rpc, default) = why.row();
    let message = message.unwrap_or(default);
    let extra: &[(&[u8], &[u8])] = match why {
        Reject::MethodNotAllowed => &[(b"allow", b"GET, POST, DELETE")],
        _ => &[],
    };
    json_response_with(bufs, status, None, extra, keep_alive, |b| {
        handler::render_error(b, id, rpc, message)
    });
    flush(conn, &mut bufs.out).await?;
    Ok(next(keep_alive))
}

/// A POSTed JSON-RPC message or batch.
async fn post(
    conn: &mut Conn<TcpStream>,
    shared: &Shared,
    bufs: &mut Bufs,
    req: &Req,
    msg: &Value,
) -> io::Result<Next> {
    let ka = req.keep_alive;
    if req.session.is_none() {
        if let Some(route) = stateless::route(req, msg) {
            return stateless::post(conn, shared, bufs, req, msg, route).await;
        }
    }
    let classified = handler::classify(msg);
    // `initialize` starts a session, so it is the one request that needs none.
    if let Message::Request {
        id,
        method: "initialize",
        params,
    } = classified
    {
        let (version, result) = handler::initialize(params);
        let sid = shared.sessions.create(version);
        let replies = vec![(id, Reply::Result(result))];
        return answer(conn, shared, bufs, replies, false, Some(&sid), ka, b"").await;
    }
    let Some(sid) = req.session.as_deref() else {
        return reject(conn, bufs, Reject::SessionMissing, None, ka).await;
    };
    let Some(version) = shared.sessions.version(sid) else {
        return reject(conn, bufs, Reject::SessionUnknown, None, ka).await;
    };
    if let Some(None) = req.version_header {
        return reject(conn, bufs, Reject::UnsupportedVersion, None, ka).await;
    }
    let replies: Vec<(&Value, Reply<'_>)> = match msg {
        Value::Array(items) => {
            if !version.allows_batches() {
                return reject(conn, bufs, Reject::BatchNotAllowed, None, ka).await;
            }
            if items.is_empty() {
                let m = "Invalid Request: empty batch";
                return reject(conn, bufs, Reject::InvalidRequest, Some(m), ka).await;
            }
            items
                .iter()
                .filter_map(|item| match handler::classify(item) {
                    Message::NoReply => None,
                    Message::Request { id, method, params } => {
                        Some((id, handler::dispatch(&shared.catalog, method, params)))
                    }
                    Message::Invalid { id, reason } => Some((
                        id.unwrap_or(&NULL_ID),
                        Reply::Error {
                            code: code::INVALID_REQUEST,
                            message: format!("Invalid Request: {reason}").into(),
                            data: None,
                        },
                    )),
                })
                .collect()
        }
        _ => match classified {
            Message::NoReply => Vec::new(),
            Message::Invalid { id, reason } => {
                let m = format!("Invalid Request: {reason}");
                return reject_with_id(conn, bufs, Reject::InvalidRequest, id, Some(&m), ka).await;
            }
            Message::Request { id, method, params } => {
                vec![(id, handler::dispatch(&shared.catalog, method, params))]
            }
        },
    };
    if replies.is_empty() {
        // Only notifications and responses: accepted, nothing to say.
        empty_response(&mut bufs.out, 202, ka);
        flush(conn, &mut bufs.out).await?;
        return Ok(next(ka));
    }
    let batch = msg.is_array();
    answer(conn, shared, bufs, replies, batch, None, ka, b"").await
}

/// Answers one request or a batch: as JSON, or as an SSE stream when the server is in SSE mode
/// or a reply streams progress. `stamp`: members every result starts with (2026-07-28).
#[allow(clippy::too_many_arguments)]
async fn answer(
    conn: &mut Conn<TcpStream>,
    shared: &Shared,
    bufs: &mut Bufs,
    replies: Vec<(&Value, Reply<'_>)>,
    batch: bool,
    session: Option<&str>,
    keep_alive: bool,
    stamp: &[u8],
) -> io::Result<Next> {
    let sse = shared.sse
        || replies
            .iter()
            .any(|(_, r)| matches!(r, Reply::Progress { .. }));
    if !sse {
        // Resolve waits first: the Content-Length must be known before the head is written.
        let mut done = Vec::with_capacity(replies.len());
        for (id, reply) in replies {
            done.push((id, resolve(conn, bufs, None, reply).await?));
        }
        json_response(bufs, 200, session, keep_alive, |b| {
            if batch {
                b.push(b'[');
            }
            for (i, (id, reply)) in done.iter().enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                handler::render_reply_stamped(b, id, reply, stamp);
            }
            if batch {
                b.push(b']');
            }
        });
        flush(conn, &mut bufs.out).await?;
        return Ok(next(keep_alive));
    }

    sse_head(&mut bufs.out, session, keep_alive);
    let mut stream = SseStream::new();
    for (id, reply) in replies {
        let reply = resolve(conn, bufs, Some(&mut stream), reply).await?;
        stream.event(bufs, |b| {
            handler::render_reply_stamped(b, id, &reply, stamp)
        });
    }
    bufs.out.extend_from_slice(LAST_CHUNK);
    flush(conn, &mut bufs.out).await?;
    Ok(next(keep_alive))
}

/// Waits out `slow` and `progress`, writing each progress notification as it happens when the
/// reply is a stream. Everything else is returned as it is.
async fn resolve<'c>(
    conn: &mut Conn<TcpStream>,
    bufs: &mut Bufs,
    mut stream: Option<&mut SseStream>,
    reply: Reply<'c>,
) -> io::Result<Reply<'c>> {
    match reply {
        Reply::Slow(d) => {
            if !d.is_zero() {
                monoio::time::sleep(d).await;
            }
            Ok(Reply::Result(handler::slow_done(d)))
        }
        Reply::Progress {
            steps,
            interval,
            token,
        } => {
            for step in 1..=steps {
                if !interval.is_zero() {
                    monoio::time::sleep(interval).await;
                }
                if let (Some(token), Some(stream)) = (&token, stream.as_deref_mut()) {
                    stream.event(bufs, |b| handler::render_progress(b, token, step, steps));
                    // Each step reaches the client when it happens, not with the result.
                    flush(conn, &mut bufs.out).await?;
                }
            }
            Ok(Reply::Result(handler::progress_done(steps)))
        }
        other => Ok(other),
    }
}

/// Event ids for one SSE response or GET stream.
struct SseStream {
    stream: u64,
    seq: u64,
}

impl SseStream {
    fn new() -> Self {
        SseStream {
            stream: STREAMS.fetch_add(1, Ordering::Relaxed),
            seq: 0,
        }
    }

    /// Appends one `message` event (rendered by `render`) as one chunk to `bufs.out`.
    fn event(&mut self, bufs: &mut Bufs, render: impl FnOnce(&mut Vec<u8>)) {
        self.seq += 1;
        let id = format!("{}-{}", self.stream, self.seq);
        let fields = sse::Fields {
            id: Some(id.as_bytes()),
            event: Some(b"message"),
            retry: None,
        };
        bufs.scratch.clear();
        sse::write_event_with(&mut bufs.scratch, &fields, render);
        encode_chunk(&mut bufs.out, &bufs.scratch);
    }

    /// The priming event: an id and empty data, so the client has a Last-Event-ID to resume from.
    fn priming(&mut self, bufs: &mut Bufs) {
        let id = format!("{}-{}", self.stream, self.seq);
        let fields = sse::Fields {
            id: Some(id.as_bytes()),
            ..sse::Fields::default()
        };
        bufs.scratch.clear();
        sse::write_event(&mut bufs.scratch, &fields, b"");
        encode_chunk(&mut bufs.out, &bufs.scratch);
    }
}

/// Releases the session's GET stream however the stream ends.
struct StreamClaim<'a> {
    sessions: &'a Sessions,
    id: &'a str,
}

impl Drop for StreamClaim<'_> {
    fn drop(&mut self) {
        self.sessions.release_stream(self.id);
    }
}

/// GET: the server→client stream. The demo never sends requests of its own, so after the priming
/// event it only keeps the connection warm, and ends when the client leaves or the session does.
async fn get_stream(
    conn: &mut Conn<TcpStream>,
    shared: &Shared,
    bufs: &mut Bufs,
    req: &Req,
) -> io::Result<Next> {
    let ka = req.keep_alive;
    if !req.accepts_sse {
        return reject(conn, bufs, Reject::NotAcceptable, None, ka).await;
    }
    let Some(sid) = req.session.as_deref() else {
        return reject(conn, bufs, Reject::SessionMissing, None, ka).await;
    };
    let version = match shared.sessions.claim_stream(sid) {
        Claim::Granted(v) => v,
        Claim::Busy => return reject(conn, bufs, Reject::StreamBusy, None, ka).await,
        Claim::Unknown => return reject(conn, bufs, Reject::SessionUnknown, None, ka).await,
    };
    let _claim = StreamClaim {
        sessions: &shared.sessions,
        id: sid,
    };
    sse_head(&mut bufs.out, None, false);
    // Priming events arrived with 2025-11-25; older clients may choke on an empty `data`.
    if version >= ProtocolVersion::V2025_11_25 {
        SseStream::new().priming(bufs);
    }
    flush(conn, &mut bufs.out).await?;
    loop {
        // Reading tells us when the client goes away; anything it sends is ignored.
        match monoio::time::timeout(KEEP_ALIVE_EVERY, conn.io.read(vec![0u8; 512])).await {
            Ok((Ok(0), _)) | Ok((Err(_), _)) => return Ok(Next::Close),
            Ok((Ok(_), _)) => {}
            Err(_elapsed) => {
                if shared.sessions.version(sid).is_none() {
                    bufs.out.extend_from_slice(LAST_CHUNK);
                    let _ = flush(conn, &mut bufs.out).await;
                    return Ok(Next::Close);
                }
                bufs.scratch.clear();
                sse::write_comment(&mut bufs.scratch, b" keep-alive");
                bufs.scratch.push(b'\n');
                encode_chunk(&mut bufs.out, &bufs.scratch);
                flush(conn, &mut bufs.out).await?;
            }
        }
    }
}

fn json_response(
    bufs: &mut Bufs,
    status: u16,
    session: Option<&str>,
    keep_alive: bool,
    body: impl FnOnce(&mut Vec<u8>),
) {
    json_response_with(bufs, status, session, &[], keep_alive, body)
}

/// Renders the body into `scratch` (its length goes in the head), then head and body into `out`,
/// so the whole response leaves in one write.
fn json_response_with(
    bufs: &mut Bufs,
    status: u16,
    session: Option<&str>,
    extra: &[(&[u8], &[u8])],
    keep_alive: bool,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let Bufs { out, scratch } = bufs;
    scratch.clear();
    body(scratch);
    response::status_line(out, status);
    response::header(out, b"content-type", b"application/json");
    if let Some(sid) = session {
        response::header(out, b"mcp-session-id", sid.as_bytes());
    }
    for (name, value) in extra {
        response::header(out, name, value);
    }
    response::content_length(out, scratch.len() as u64);
    response::connection(out, keep_alive);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(scratch);
}

fn empty_response(out: &mut Vec<u8>, status: u16, keep_alive: bool) {
    response::status_line(out, status);
    response::content_length(out, 0);
    response::connection(out, keep_alive);
    out.extend_from_slice(b"\r\n");
}

fn sse_head(out: &mut Vec<u8>, session: Option<&str>, keep_alive: bool) {
    response::status_line(out, 200);
    response::header(out, b"content-type", b"text/event-stream");
    response::header(out, b"cache-control", b"no-cache");
    response::header(out, b"x-accel-buffering", b"no");
    response::header(out, b"transfer-encoding", b"chunked");
    if let Some(sid) = session {
        response::header(out, b"mcp-session-id", sid.as_bytes());
    }
    response::connection(out, keep_alive);
    out.extend_from_slice(b"\r\n");
}

/// `application/json`, with or without parameters.
fn is_json(v: &[u8]) -> bool {
    media_type(v).eq_ignore_ascii_case(b"application/json")
}

fn media_type(v: &[u8]) -> &[u8] {
    let end = memchr::memchr(b';', v).unwrap_or(v.len());
    v[..end].trim_ascii()
}

/// Whether an Accept value lists `media` (or a wildcard that covers it).
fn accepts(v: &[u8], media: &[u8]) -> bool {
    v.split(|b| *b == b',')
        .map(media_type)
        .any(|m| m.eq_ignore_ascii_case(media) || m == b"*/*" || m.eq_ignore_ascii_case(b"text/*"))
}

/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, any port.
fn is_local_origin(v: &[u8]) -> bool {
    let Some(at) = memchr::memmem::find(v, b"://") else {
        return false;
    };
    let rest = &v[at + 3..];
    let host = if rest.first() == Some(&b'[') {
        match memchr::memchr(b']', rest) {
            Some(end) => &rest[..=end],
            None => return false,
        }
    } else {
        let end = rest
            .iter()
            .position(|b| matches!(b, b':' | b'/'))
            .unwrap_or(rest.len());
        &rest[..end]
    };
    host.eq_ignore_ascii_case(b"localhost") || host == b"127.0.0.1" || host == b"[::1]"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_response_is_one_buffer_with_exact_length() {
        let mut bufs = Bufs {
            out: Vec::new(),
            scratch: Vec::new(),
        };
        json_response(&mut bufs, 200, Some("abc"), false, |b| {
            b.extend_from_slice(b"{\"x\":1}")
        });
        let text = String::from_utf8(bufs.out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: abc\r\ncontent-length: 7\r\nconnection: close\r\n\r\n{\"x\":1}"
        );
    }

    #[test]
    fn header_value_checks() {
        assert!(is_json(b"application/json"));
        assert!(is_json(b"Application/JSON; charset=utf-8"));
        assert!(!is_json(b"text/plain"));
        assert!(accepts(
            b"application/json, text/event-stream",
            b"text/event-stream"
        ));
        assert!(accepts(b"*/*", b"text/event-stream"));
        assert!(!accepts(b"application/json", b"text/event-stream"));
        assert!(is_local_origin(b"http://localhost:6274"));
        assert!(is_local_origin(b"http://127.0.0.1"));
        assert!(is_local_origin(b"https://[::1]:8443"));
        assert!(!is_local_origin(b"https://evil.example.com"));
        assert!(!is_local_origin(b"http://localhost.evil.example.com"));
        assert!(!is_local_origin(b"null"));
    }
}
