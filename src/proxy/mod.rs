//! The request path as named phases, in the order a request travels:
//! read head → route → check host/origin → read body → scan → session → forward → relay → record.
//! One `context::Ctx` travels the phases; `context::record` runs once for every request.
//! Every refusal goes through `refuse`, which renders a `reject::Refusal` with `reject::Rejects`.

mod audit_record;
mod authorize;
pub mod breaker;
pub mod build;
pub mod checks;
pub mod client;
pub mod context;
pub mod control;
pub mod credentials;
mod federate;
mod held;
mod identity;
pub mod keys;
pub mod limit;
mod recycle;
pub mod replicas;
pub use federate::probe;
mod initialize;
pub mod introspect;
mod legacy;
mod legacy_sse;
pub mod reject;
pub mod reload;
pub mod session_cache;
mod session_requests;
pub mod shutdown;
pub mod state;
mod stateless;
mod trace_context;
pub mod upstream;

use std::mem::MaybeUninit;
use std::ops::Range;
// `pin!(f(..)).await`, not `f(..).await`, for the request path's large futures (KiBs each): a
// plain await copies the future whole into the caller's state before its first poll; pinned,
// it is built where it runs.
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::tls::Stream;

use crate::error::{Error, Kind};
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{Framing, HttpMethod, RequestHead, ResponseHead};
use crate::http::pool::UpstreamConn;
use crate::http::response;
use crate::jsonrpc::{self, MessageKind};
use crate::mcp::session::{SessionClaims, UpstreamSession};
use crate::mcp::{Method, ProtocolVersion};
use crate::observe::Outcome;

use client::Client;
use context::{record, Ctx, MessageCtx, UpstreamCall};
use reject::{Refusal, To};
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
pub fn serve(w: Rc<WorkerState>, stream: Stream) -> impl std::future::Future<Output = ()> {
    serve_as(w, stream, None)
}

/// `serve`, for a connection served as another client (`client::Who`).
async fn serve_as(w: Rc<WorkerState>, stream: Stream, who: Option<client::Who>) {
    let _ = stream.tcp().set_nodelay(true);
    let mut c = Client::new(stream, w.clone(), who);
    let mut registered = false;
    // A refused head is answered after the loop: awaiting inside the `match` would keep its
    // whole `Result` (a `RequestHead`) in the state of every idle connection.
    let refused = loop {
        let head = match read_head(&w, &mut c).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => break e,
        };
        // Boxed (in a block the worker reuses, see `recycle`): an idle connection should not
        // carry the per-request state machine. Its rare branches (a new session, the stateless
        // and federated paths, streams, refusals of unusable replies) are boxed where they are
        // taken: every request's block is as large as its future, ~4 KiB instead of 18.
        c.lend(&w);
        c.head_only = head.method() == HttpMethod::Head;
        // The head by reference: moved in, it was held twice in the request's future (as the
        // argument and as the body's local) and copied into it twice.
        let next = recycle::Recycled::new(|| request(&w, &mut c, &head)).await;
        w.give_head(head);
        c.head_only = false;
        c.release(&w);
        if next == Next::Close || w.shutdown.is_fired() {
            return;
        }
        // A connection that carries a second request takes a slot in the ring's table of
        // files (`runtime.fixed_files`): one that closes after its first never pays the two
        // registration calls.
        if !registered {
            registered = true;
            w.register_fixed(c.conn.io.tcp(), false);
        }
    };
    Box::pin(refuse_head(&w, &mut c, refused)).await;
}

/// A head that admission refused: answered, recorded, and the connection closes.
async fn refuse_head(w: &WorkerState, c: &mut Client, e: Error) {
    let mut ctx = Ctx::new(w.current(), c, HttpMethod::Other, false, false);
    refuse(c, &mut ctx, e.into()).await;
    record(w, c, &ctx);
}

/// One request: its context, the phases, then the record phase (whatever happened).
async fn request(w: &WorkerState, c: &mut Client, head: &RequestHead) -> Next {
    let keep = head.keep_alive && !w.shutdown.is_fired();
    let mut ctx = Ctx::new(w.current(), c, head.method(), head.minor == 0, keep);
    ctx.body_pending = head.has_body();
    trace_context::begin(&mut ctx, head, c.conn.buffered());
    // With audit on, a request still running when the drain deadline passes is cut there and
    // recorded (`Outcome::Cut`), not dropped with its worker unrecorded.
    let cut = ctx.gw().config.audit.enabled.then(|| w.cut.wait());
    let next = {
        let inner = std::pin::pin!(handle(w, c, &mut ctx, head));
        shutdown::UntilCut { inner, cut }.await
    };
    let next = next.unwrap_or_else(|| {
        ctx.outcome = Outcome::Cut;
        Next::Close
    });
    record(w, c, &ctx);
    next
}

/// Phase: read head (and admit it: `checks::admit_head_into`, host/origin included). Waits up to
/// `idle_timeout` for a first byte (or until shutdown), then up to `header_read_timeout` for
/// the whole head. `Ok(None)`: the connection ended quietly. The head comes in a box of the
/// worker's (`WorkerState::take_head`), to be given back after the request.
async fn read_head(w: &WorkerState, c: &mut Client) -> Result<Option<Box<RequestHead>>, Error> {
    let mut deadline: Option<Instant> = None;
    loop {
        // The config is looked up afresh each time, never held across the wait: an idle
        // connection keeps no config alive, and a reload applies to its next request.
        let gen = w.current();
        let limits = &gen.gw.config.limits;
        if !c.conn.buffered().is_empty() {
            let mut scratch = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut head = w.take_head();
            match checks::admit_head_into(
                &gen.gw.config,
                c.conn.buffered(),
                &mut scratch,
                &mut head,
            ) {
                Ok(true) => return Ok(Some(head)),
                Ok(false) => w.give_head(head),
                Err(e) => {
                    w.give_head(head);
                    return Err(e);
                }
            }
            deadline.get_or_insert_with(|| w.shutdown.now() + limits.header_read_timeout);
        }
        // One await point, and no runtime timer: this state lives in every idle connection.
        let until = deadline.unwrap_or_else(|| w.shutdown.now() + limits.idle_timeout);
        drop(gen);
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

/// Renders and writes a refusal and notes it in the context (the record phase counts and logs
/// it). Whether the connection stays open is `Ctx::keep_after`'s decision, nobody else's.
async fn refuse(c: &mut Client, ctx: &mut Ctx, r: Refusal) -> Next {
    let keep = ctx.keep_after(r.kind);
    let to = To {
        id: ctx.answer_id(),
        era: ctx.era,
        tool_call: !ctx.batch && ctx.method() == Method::ToolsCall,
        keep_alive: keep,
        extra_headers: &ctx.cors,
    };
    let status = ctx.gw().rejects.render(&mut c.out, &r, &to);
    ctx.status = status;
    ctx.refuse(r.kind, r.reason.unwrap_or_default());
    if c.head_only {
        // A HEAD request gets the head alone (RFC 9110 §9.3.2), so the connection stays in step.
        if let Some(end) = memchr::memmem::find(&c.out, b"\r\n\r\n") {
            c.out.truncate(end + 4);
        }
    }
    if c.flush().await.is_err() || !keep {
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
async fn handle(w: &WorkerState, c: &mut Client, ctx: &mut Ctx, head: &RequestHead) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let buf = c.conn.buffered();
    if let Some(prm) = identity::metadata_server(gw, head.path(buf)) {
        return identity::metadata(c, ctx, head, prm).await;
    }
    let Some(server) = gw.route(head.path(buf)) else {
        if let Some((server, route)) = gw.route_legacy(head.path(buf)) {
            ctx.server = Some(server);
            if let Some(r) = head.origin.clone() {
                ctx.cors = cors_headers(&buf[r]);
            }
            // Phase: authenticate (the legacy transport's stream and POSTs too).
            if head.method() != HttpMethod::Options {
                if let Err(n) = identity::authenticate(w, c, ctx, head, server) {
                    if let Some(next) = Box::pin(not_yet(w, c, ctx, head, server, n)).await {
                        return next;
                    }
                }
            }
            // Boxed: a legacy stream's state stays out of every request's future.
            return Box::pin(legacy_sse::handle(w, c, ctx, head.clone(), server, route)).await;
        }
        c.conn.consume(head.len);
        return refuse(c, ctx, Refusal::new(Kind::NotFound)).await;
    };
    ctx.server = Some(server);
    if let Some(r) = head.origin.clone() {
        ctx.cors = cors_headers(&buf[r]);
    }
    // Phase: authenticate. Every request but a CORS preflight (which carries no credentials).
    if head.method() != HttpMethod::Options {
        if let Err(n) = identity::authenticate(w, c, ctx, head, server) {
            if let Some(next) = Box::pin(not_yet(w, c, ctx, head, server, n)).await {
                return next;
            }
        }
    }
    match head.method() {
        HttpMethod::Post => pin!(post(w, c, ctx, head)).await,
        HttpMethod::Get => Box::pin(session_requests::get(w, c, ctx, head.clone())).await,
        HttpMethod::Delete => Box::pin(session_requests::delete(w, c, ctx, head.clone())).await,
        HttpMethod::Options if !head.has_body() => {
            c.conn.consume(head.len);
            preflight(c, ctx).await
        }
        _ => {
            c.conn.consume(head.len);
            refuse(c, ctx, Refusal::new(Kind::MethodNotAllowed)).await
        }
    }
}

/// A request the authenticate phase could not pass at once: an opaque token is introspected
/// (and may pass: `None`), anything else is refused here (the head consumed). Boxed where it
/// is called, so neither the introspection's state nor the refusal's is part of every
/// request's future.
async fn not_yet(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    head: &RequestHead,
    server: usize,
    n: identity::NotYet,
) -> Option<Next> {
    let r = match n {
        identity::NotYet::Refused(r) => r,
        identity::NotYet::Introspect(issuer) => {
            identity::introspect(w, c, ctx, head, server, issuer)
                .await
                .err()?
        }
    };
    c.conn.consume(head.len);
    Some(refuse(c, ctx, r).await)
}

async fn preflight(c: &mut Client, ctx: &mut Ctx) -> Next {
    let keep = ctx.keep_after_response();
    response::status_line(&mut c.out, 204);
    c.out.extend_from_slice(&ctx.cors);
    c.out.extend_from_slice(
        b"access-control-allow-methods: GET, POST, DELETE, OPTIONS\r\n\
          access-control-allow-headers: content-type, accept, authorization, mcp-session-id, mcp-protocol-version, last-event-id\r\n\
          access-control-max-age: 600\r\n",
    );
    response::connection(&mut c.out, keep);
    c.out.extend_from_slice(b"\r\n");
    ctx.status = 204;
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
    limits: &crate::config::Limits,
    head: &RequestHead,
) -> Result<(BodyAt, usize), Error> {
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

/// Phase: scan. Reads each message's method, id and name without building a tree, into the
/// context (every message of a batch on its own); a body the scanner refuses never reaches an
/// upstream.
fn scan(ctx: &mut Ctx, body: &[u8]) -> Result<(), Refusal> {
    let gen = ctx.gen.clone();
    let hash = gen.gw.config.traffic.hashes_arguments;
    let mut m = jsonrpc::Message::empty();
    match jsonrpc::scan_into(body, &gen.gw.scan_limits, &mut m) {
        Ok(None) => {
            // Built where it stays (a local first was two copies of its 320 bytes more).
            debug_assert!(ctx.messages.is_empty());
            ctx.messages.push(MessageCtx::hashed(&m, hash));
            if gen.gw.config.audit.enabled {
                let mc = &ctx.messages[0];
                audit_record::capture(&gen.gw.config.audit, &mut ctx.audit_args, (0, mc), &m);
            }
            Ok(())
        }
        Ok(Some(msgs)) => {
            ctx.batch = true;
            let audit = &gen.gw.config.audit;
            let args = &mut ctx.audit_args;
            ctx.messages.extend(msgs.iter().enumerate().map(|(i, m)| {
                let mc = MessageCtx::hashed(m, hash);
                if audit.enabled {
                    audit_record::capture(audit, args, (i, &mc), m);
                }
                mc
            }));
            if ctx.messages.iter().any(|m| m.method == Method::Initialize) {
                return Err(Refusal::because(
                    Kind::InvalidRequest,
                    "initialize must not be part of a JSON-RPC batch",
                ));
            }
            Ok(())
        }
        Err(e) => {
            let kind = if e.is_parse_error() {
                Kind::ParseError
            } else {
                Kind::InvalidRequest
            };
            Err(Refusal::because(kind, e.to_string()))
        }
    }
}

/// Whether the request is a single `initialize` request (it opens a session instead of using one).
fn is_initialize(ctx: &Ctx) -> bool {
    !ctx.batch
        && ctx
            .first()
            .is_some_and(|m| m.method == Method::Initialize && m.kind == MessageKind::Request)
}

/// Phase: session. Opens the sealed session id and checks it belongs here and is still live.
fn open_session(
    w: &WorkerState,
    gw: &state::Gateway,
    head: &RequestHead,
    buf: &[u8],
    server: usize,
    principal: Option<&crate::policy::Principal>,
) -> Result<Rc<SessionClaims>, Refusal> {
    let Some(r) = head.session_id.clone() else {
        return Err(Refusal::new(Kind::SessionMissing));
    };
    let token = &buf[r];
    let now = w.shutdown.unix_now();
    let cached = w.sessions.borrow().get(token, now);
    let claims = match cached {
        Some(c) => c,
        None => {
            let opened = gw.sealer.open(token, now).map_err(|e| {
                let why = match e {
                    crate::mcp::session::SessionError::Expired => {
                        "session expired: initialize a new one"
                    }
                    _ => "unknown session: initialize a new one",
                };
                Refusal::because(Kind::SessionUnknown, why)
            })?;
            let opened = Rc::new(opened);
            w.sessions.borrow_mut().insert(token, opened.clone());
            opened
        }
    };
    if claims.server != gw.server_ids[server] {
        return Err(Refusal::because(
            Kind::SessionUnknown,
            "session belongs to another endpoint",
        ));
    }
    if w.is_revoked(&claims.id, now) {
        return Err(Refusal::because(
            Kind::SessionUnknown,
            "session was deleted: initialize a new one",
        ));
    }
    // A session is never authentication: presented by another principal (or by none, on an
    // endpoint that authenticates it), it is unknown here.
    if claims.principal.as_deref() != principal.map(|p| &p.id[..]) {
        return Err(Refusal::because(
            Kind::SessionUnknown,
            "unknown session: initialize a new one",
        ));
    }
    if let Some(r) = head.protocol_version.clone() {
        if ProtocolVersion::parse_bytes(buf[r].trim_ascii()).is_none_or(|v| !v.is_legacy()) {
            return Err(Refusal::new(Kind::UnsupportedProtocolVersion));
        }
    }
    // A reload may have taken the session's upstream away from this endpoint: its upstream
    // session cannot be continued elsewhere.
    let s = &gw.config.servers[server];
    let still_here = if s.federated() {
        // A federated session goes on with whichever of its upstreams are still behind it.
        claims.upstreams.iter().any(|cs| {
            s.upstreams
                .iter()
                .any(|m| gw.upstreams[m.upstream].id == cs.upstream)
        })
    } else {
        upstream_session(gw, Some(&claims), s.primary()).is_some()
    };
    if !claims.upstreams.is_empty() && !still_here {
        let gone = claims
            .upstreams
            .iter()
            .map(|s| gw.upstream_name(s.upstream))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Refusal::because(
            Kind::SessionUnknown,
            format!(
                "this session's upstream ({gone}) is no longer behind {}: initialize a new one",
                gw.config.servers[server].path
            ),
        ));
    }
    Ok(claims)
}

/// Appends the per-request upstream headers: session, version, trace context (`trace`: the
/// request's, with tracing on).
fn upstream_session_headers(
    out: &mut Vec<u8>,
    up: Option<&UpstreamSession>,
    (head, buf): (&RequestHead, &[u8]),
    trace: Option<&crate::observe::trace::TraceIds>,
) {
    if let Some(up) = up {
        session_header_lines(out, up);
    }
    trace_context::upstream_lines(out, head, buf, trace);
}

/// The header lines an upstream request in session `up` carries: its `Mcp-Session-Id` (if it
/// issued one) and `MCP-Protocol-Version` (revisions that have the header).
fn session_header_lines(out: &mut Vec<u8>, up: &UpstreamSession) {
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

/// The upstream session a client session holds with upstream `u` (by its stable id).
fn upstream_session<'a>(
    gw: &state::Gateway,
    claims: Option<&'a SessionClaims>,
    u: usize,
) -> Option<&'a UpstreamSession> {
    let id = gw.upstreams[u].id;
    claims.and_then(|cl| cl.upstreams.iter().find(|s| s.upstream == id))
}

/// POST: one JSON-RPC message (or a batch in 2025-03-26 sessions) to the server's upstream.
async fn post(w: &WorkerState, c: &mut Client, ctx: &mut Ctx, head: &RequestHead) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let limits = &gw.config.limits;
    let buf = c.conn.buffered();
    let json = head
        .content_type
        .clone()
        .is_some_and(|r| checks::is_json_content_type(&buf[r]));
    // The upstream may answer with JSON or an event stream: a client that cannot take both gets
    // 406 here rather than a reply it cannot read. No Accept at all (or several) is not judged.
    let acceptable = match (head.accept.clone(), head.accept_several) {
        (Some(r), false) => checks::accepts_json_and_sse(&buf[r]),
        _ => true,
    };
    let too_large = head.content_length.unwrap_or(0) as usize > limits.max_body_bytes;
    let early = match (json, acceptable, too_large) {
        (false, _, _) => Some(Kind::UnsupportedMediaType),
        (_, false, _) => Some(Kind::NotAcceptable),
        (_, _, true) => Some(Kind::BodyTooLarge),
        _ => None,
    };
    if let Some(kind) = early {
        c.conn.consume(head.len);
        return refuse(c, ctx, Refusal::new(kind)).await;
    }
    if head.expect_continue {
        c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if c.flush().await.is_err() {
            return Next::Close;
        }
    }
    let read = pin!(read_body(w, c, limits, head)).await;
    let (at, used) = match read {
        Ok(x) => x,
        Err(e) => return refuse(c, ctx, e.into()).await,
    };
    ctx.body_pending = false;
    let buf = c.conn.buffered();
    let body: &[u8] = match &at {
        BodyAt::Inline(r) => &buf[r.clone()],
        BodyAt::Decoded => &c.body,
    };
    ctx.bytes_in = body.len() as u64;
    if let Err(r) = scan(ctx, body) {
        c.conn.consume(used);
        return refuse(c, ctx, r).await;
    }
    trace_context::adopt_meta(ctx, body);
    authorize::pass_through(ctx);
    // Phase: era. A request that speaks the stateless revision takes its own path from here.
    if let Some(m) = ctx.first() {
        let signals = crate::mcp::modern::Signals {
            header_version: head.protocol_version.clone().map(|r| &buf[r]),
            meta_version: m.meta_version.as_ref().map(|v| v.as_str()),
            meta_capabilities: m.meta_capabilities,
            has_session: head.session_id.is_some(),
            request: m.kind == MessageKind::Request,
        };
        let action = match crate::mcp::modern::route(&signals) {
            Ok(crate::mcp::modern::Route::Session) => None,
            Ok(crate::mcp::modern::Route::Stateless(_)) => {
                ctx.era = crate::error::Era::Stateless;
                Some(stateless::prepare(w, ctx, (head, buf, body), &mut c.up_out))
            }
            Err(r) => {
                ctx.era = crate::error::Era::Stateless;
                Some(stateless::Action::Refuse(stateless::refusal(r)))
            }
        };
        if let Some(action) = action {
            c.conn.consume(used);
            return Box::pin(stateless::finish(w, c, ctx, action)).await;
        }
    }
    let server = ctx.server.unwrap_or_default();
    let federated = gw.config.servers[server].federated();
    let u = gw.config.servers[server].primary();
    let up = &gw.upstreams[u];
    if !federated {
        ctx.upstream = Some(u);
    }
    let initialize = is_initialize(ctx);
    let claims = if initialize {
        None
    } else {
        match open_session(w, gw, head, buf, server, ctx.principal.as_deref()) {
            Ok(cl) => Some(cl),
            Err(r) => {
                c.conn.consume(used);
                return refuse(c, ctx, r).await;
            }
        }
    };
    ctx.session = claims.as_ref().map(|cl| cl.id);
    if ctx.batch
        && !claims
            .as_ref()
            .is_some_and(|cl| cl.protocol_version.allows_batches())
    {
        c.conn.consume(used);
        return refuse(c, ctx, Refusal::new(Kind::BatchNotAllowed)).await;
    }
    // Phase: limit, after the session checks and authorization (`traffic.rules`; nothing to do
    // without rules). An endpoint with one upstream has no rules: everything is allowed there.
    // A federated endpoint limits where each message was decided and routed (`federate`).
    if !federated {
        if let Err(r) = limit::phase(w, ctx, limit::PASS_THROUGH).await {
            c.conn.consume(used);
            return refuse(c, ctx, r).await;
        }
    }
    if federated {
        // The common case, a call whose name the worker's table routes: the request is built
        // straight from the client's bytes (the original name spliced in), like a plain one.
        let direct = federated_direct(w, ctx, (head, buf, body), claims.as_deref(), &mut c.up_out);
        if let (Some((u, had_session, decided)), Some(cl)) = (direct, claims.as_ref()) {
            ctx.decisions.push(decided);
            if let Err(r) = limit::phase(w, ctx, &[limit::Route::To(Some(u))]).await {
                c.conn.consume(used);
                return refuse(c, ctx, r).await;
            }
            c.conn.consume(used);
            let then = Then::RelayFederated(cl.id);
            let replica = upstream_session(gw, Some(cl), u).map_or(0, |s| s.replica);
            return pin!(forward(w, c, ctx, (u, replica), had_session, then)).await;
        }
        let trace = trace_context::upstream_lines_vec(head, buf, ctx.trace.as_ref());
        let body = trace_context::spliced(ctx, body).into_owned();
        c.conn.consume(used);
        return Box::pin(federate::post(w, c, ctx, claims, trace, body)).await;
    }
    if up.legacy {
        // An upstream that speaks only HTTP+SSE: its session is a stream one worker holds.
        let trace = trace_context::upstream_lines_vec(head, buf, ctx.trace.as_ref());
        let body = trace_context::spliced(ctx, body).into_owned();
        c.conn.consume(used);
        return Box::pin(legacy::post(w, c, ctx, (trace, body), claims, u, server)).await;
    }
    // Phase: forward. The body is spliced in as bytes; it is never re-serialized.
    let up_session = upstream_session(gw, claims.as_deref(), u);
    if let Some(s) = up_session.filter(|s| !s.protocol_version.is_legacy()) {
        // A session-era client of an upstream that speaks only 2026-07-28: translated.
        let t = stateless::translated(ctx, (head, buf, body), u, s, &mut c.up_out);
        c.conn.consume(used);
        return Box::pin(stateless::finish_translated(w, c, ctx, u, t)).await;
    }
    c.up_out.clear();
    c.up_out.extend_from_slice(&up.post_prefix);
    response::content_length(&mut c.up_out, body.len() as u64);
    upstream_session_headers(&mut c.up_out, up_session, (head, buf), ctx.trace.as_ref());
    c.up_out.extend_from_slice(b"\r\n");
    c.up_out.extend_from_slice(body);
    trace_context::splice_tail(ctx, &mut c.up_out, body.len());
    c.conn.consume(used);
    let had_session = up_session.is_some_and(|s| s.session_id.is_some());
    let then = if initialize {
        Then::Initialize(server)
    } else {
        Then::Relay
    };
    let replica = up_session.map_or(0, |s| s.replica);
    // A statement, not the tail: the pinned future is dropped before this function's locals,
    // as a plain await's was (edition 2021 keeps a tail expression's temporaries longer).
    let next = pin!(forward(w, c, ctx, (u, replica), had_session, then)).await;
    next
}

/// A federated `tools/call` or `prompts/get` whose name the worker's fresh table routes: renders
/// the upstream request into `c.up_out` (the upstream's own name spliced into the body) and
/// returns the upstream and whether the request carries its session id. `None`: anything else
/// (the federated path decides, refreshing tables as needed).
fn federated_direct(
    w: &WorkerState,
    ctx: &Ctx,
    (head, buf, body): (&RequestHead, &[u8], &[u8]),
    claims: Option<&SessionClaims>,
    out: &mut Vec<u8>,
) -> Option<(usize, bool, authorize::Decided)> {
    let gw = ctx.gw();
    let m = ctx
        .first()
        .filter(|m| !ctx.batch && m.kind == MessageKind::Request && !m.task)?;
    let kind = match m.method {
        Method::ToolsCall => federate::TableKind::Tools,
        Method::PromptsGet => federate::TableKind::Prompts,
        _ => return None,
    };
    let name = m.name.as_ref()?.as_str();
    let span = m.name_span.clone()?;
    let server = ctx.server?;
    let table = federate::fresh_names(w, gw, server, kind)?;
    let (member, original) = table.resolve(name)?;
    let u = gw.config.servers[server].upstreams[member].upstream;
    // Phase: authorize. Anything but an allow takes the federated path, which decides again
    // and answers (and records) the refusal.
    let item = crate::policy::rules::Item {
        kind: if kind == federate::TableKind::Tools {
            crate::policy::rules::ItemKind::Tool
        } else {
            crate::policy::rules::ItemKind::Prompt
        },
        name,
        method: m.method,
        upstream: Some(u),
        annotations: federate::annotations(w, gw, server, kind, name),
    };
    let access = authorize::Access::of(ctx);
    let mut verdict = authorize::verdict(w, gw, server, &access, &item);
    if verdict.allowed() {
        if let Some(v) = authorize::rego_verdict(w, gw, server, &access, &item, body) {
            verdict = v;
        }
    }
    if !verdict.allowed() {
        return None;
    }
    let decided = authorize::Decided {
        msg: 0,
        allowed: true,
        reason: verdict.reason(),
        rule: verdict.rule(),
    };
    if gw.upstreams[u].legacy {
        // Through the upstream's event stream: the federated path (`route`) does that.
        return None;
    }
    // An upstream reached in the stateless revision needs its request made one of it
    // (`federate::exchange::post_request`).
    let session = upstream_session(gw, claims, u).filter(|s| s.protocol_version.is_legacy())?;
    let (start, end) = (span.start as usize, span.end as usize);
    let up = &gw.upstreams[u];
    out.clear();
    out.extend_from_slice(&up.post_prefix);
    let name_len = crate::error::json_escaped_len(original);
    response::content_length(out, (body.len() - (end - start) + name_len) as u64);
    upstream_session_headers(out, Some(session), (head, buf), ctx.trace.as_ref());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body[..start]);
    crate::error::json_escape_into(out, original);
    out.extend_from_slice(&body[end..]);
    let body_len = body.len() - (end - start) + name_len;
    trace_context::splice_tail_cut(ctx, out, body_len, start..end, name_len);
    Some((u, session.session_id.is_some(), decided))
}

/// What `forward` does with a usable reply.
enum Then {
    /// Relay it as it arrives.
    Relay,
    /// Relay it as it arrives; an event stream goes through the federated rewriter (the
    /// server→client requests in it get wrapped ids bound to this client session).
    RelayFederated([u8; 16]),
    /// Read it whole and seal the session (single-upstream `initialize` on this server).
    Initialize(usize),
    /// Relay a long-lived stream (2026-07-28 `subscriptions/listen`): no read timeout whatever
    /// its content type, ended when the worker shuts down.
    Listen,
    /// A session-era upstream's reply to a 2026-07-28 client (held session): the result gets
    /// `resultType` (and the caching hints when cacheable) stamped in, whether the reply is one
    /// JSON body or an event stream (`stateless::relay_held_stream`).
    Stamped(stateless::Stamp),
    /// A 2026-07-28 upstream's reply to a translated request of a session-era client: relayed
    /// as `Relay` does, but an error reply is made one that client's revision has
    /// (`stateless::for_session_client`).
    Translated,
}

/// Phases: forward (the request already rendered in `c.up_out`) → vet → relay to upstream `u`.
/// `had_session`: the request carried an upstream session id (a 404 then means it ended).
async fn forward(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    (u, replica): (usize, u64),
    had_session: bool,
    then: Then,
) -> Next {
    ctx.upstream = Some(u);
    if !ctx.gw().upstreams[u].tool_timeouts.is_empty() {
        ctx.tool_timeout = tool_timeout(w, ctx, u);
    }
    let t_up = crate::runtime::clock::now();
    let caller = ctx.caller();
    let req = std::mem::take(&mut c.up_out);
    let safe = || retry_safe(w, ctx);
    let terms = upstream::Terms {
        tool_timeout: ctx.tool_timeout,
        retry_safe: Some(&safe),
        vets: true,
        at: Some(t_up),
    };
    // (The generation, not `ctx`, lends the gateway: a half-open probe slot borrows it into
    // `respond`, which takes `ctx` mutably.)
    let gen = ctx.gen.clone();
    let (res, req, _, probe) = pin!(upstream::exchange_within(
        w,
        &gen.gw,
        (u, replica),
        req,
        caller,
        terms
    ))
    .await;
    c.up_out = req;
    // A statement, not the tail: a tail expression's temporaries (the pinned future, which
    // borrows `gen` through `probe`) would outlive `gen` (edition 2021).
    let next = pin!(respond(w, c, ctx, (u, res, t_up, probe), had_session, then)).await;
    next
}

/// Whether the request may be sent again after its upstream connection closed before any byte
/// of a reply: one message, an idempotent method, or on a federated endpoint a `tools/call` of a
/// tool its upstream annotates `readOnlyHint` or `idempotentHint` (a single-upstream endpoint
/// keeps no tool list, so its tool calls are never resent). Asked only on that failure.
#[cold]
fn retry_safe(w: &WorkerState, ctx: &Ctx) -> bool {
    use crate::policy::rules::ann;
    let [m] = &ctx.messages[..] else {
        return false;
    };
    if m.kind != MessageKind::Request {
        return false;
    }
    if m.method.idempotent() {
        return true;
    }
    let gw = ctx.gw();
    match ctx.server {
        Some(server) if m.method == Method::ToolsCall && gw.config.servers[server].federated() => {
            let Some(name) = m.name.as_ref().map(|n| n.as_str()) else {
                return false;
            };
            federate::annotations(w, gw, server, federate::TableKind::Tools, name)
                & (ann::READ_ONLY | ann::IDEMPOTENT)
                != 0
        }
        _ => false,
    }
}

/// The `upstreams[].tool_timeouts` entry of the request's tool, when it is one `tools/call`
/// (matched against the upstream's own name: on a federated endpoint, as its table routes it).
#[cold]
fn tool_timeout(w: &WorkerState, ctx: &Ctx, u: usize) -> Option<std::time::Duration> {
    let [m] = &ctx.messages[..] else {
        return None;
    };
    if m.method != Method::ToolsCall || m.kind != MessageKind::Request {
        return None;
    }
    let name = m.name.as_ref()?.as_str();
    let gw = ctx.gw();
    match ctx.server {
        Some(server) if gw.config.servers[server].federated() => {
            federate::own_tool_timeout(w, gw, server, u, name)
        }
        _ => gw.upstreams[u].tool_timeout(name),
    }
}

/// Phases: vet → relay, for the outcome of an upstream exchange begun at `t_up` with
/// `Terms::vets` (its 2xx is counted by the breaker here, once vetted; `probe`: its half-open
/// probe slot until then).
async fn respond(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    (u, res, t_up, probe): (
        usize,
        Result<(UpstreamConn, ResponseHead), Error>,
        Instant,
        breaker::Admitted<'_>,
    ),
    had_session: bool,
    then: Then,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let up = &gw.upstreams[u];
    ctx.upstream = Some(u);
    let (up_conn, rhead) = match res {
        Ok(x) => x,
        Err(e) => {
            ctx.upstream_call = Some(UpstreamCall {
                upstream: u,
                result: Err(e.kind),
                elapsed: crate::runtime::clock::now().saturating_duration_since(t_up),
            });
            tracing::warn!(upstream = %up.name, error = %e.reason, "upstream exchange failed");
            return refuse(c, ctx, e.into()).await;
        }
    };
    ctx.outcome = if (200..300).contains(&rhead.status) {
        Outcome::Ok
    } else {
        Outcome::UpstreamStatus
    };
    let mut up_conn = up_conn;
    let expect_id = ctx.answer_id();
    let timeout = ctx.tool_timeout.unwrap_or(up.request_timeout);
    let vetted = pin!(upstream::vet_reply(
        w,
        &mut up_conn,
        &rhead,
        timeout,
        expect_id
    ))
    .await;
    // Also when the connection goes back to the pool (`pool_put`: never after the put).
    let vetted_at = crate::runtime::clock::now();
    ctx.vetted_at = Some(vetted_at);
    // The exchange left a 2xx to this vet (`Terms::vets`: both callers ask for it): an
    // unusable one is a failure for the upstream's circuit breaker.
    if (200..300).contains(&rhead.status) {
        let unusable = match &vetted {
            upstream::Vetted::Unusable { why, .. } => Some(why.as_str()),
            _ => None,
        };
        upstream::vetted(w, gw, (u, &up_conn), unusable, probe);
    }
    ctx.upstream_call = Some(UpstreamCall {
        upstream: u,
        result: match &vetted {
            upstream::Vetted::Unusable { kind, .. } => Err(*kind),
            _ => Ok(rhead.status),
        },
        elapsed: vetted_at.saturating_duration_since(t_up),
    });
    let bare_result = match vetted {
        upstream::Vetted::Relay { bare_result, code } => {
            ctx.reply_code = code;
            bare_result
        }
        upstream::Vetted::Whole { head: hb, body } => {
            if let Then::Stamped(stateless::Stamp { held: Some(h), .. }) = &then {
                h.complete();
            }
            w.pool_put(gw, u, up_conn, &rhead, vetted_at);
            if let Then::Initialize(server) = then {
                // A refused initialize: an upstream of the stateless revision only is answered
                // for by the gateway.
                if let Some(next) =
                    Box::pin(initialize::stateless_fallback(w, c, ctx, server, u)).await
                {
                    return next;
                }
            }
            let (rhead, body) = match then {
                Then::Translated => stateless::for_session_client(rhead, body),
                _ => (rhead, body),
            };
            return pin!(write_whole(c, ctx, (&rhead, &hb), &body, None)).await;
        }
        upstream::Vetted::Unusable {
            kind,
            why,
            reusable,
        } => {
            if reusable {
                w.pool_put(gw, u, up_conn, &rhead, vetted_at);
            } else {
                drop(up_conn);
            }
            return Box::pin(unusable_reply(
                c,
                ctx,
                (u, kind, rhead.status),
                &why,
                had_session,
            ))
            .await;
        }
    };
    match then {
        Then::Initialize(server) => {
            Box::pin(initialize::initialize_reply(
                w, c, ctx, up_conn, rhead, server, u,
            ))
            .await
        }
        Then::RelayFederated(session) if rhead.is_sse(up_conn.buffered()) => {
            Box::pin(relay_rewritten(w, c, ctx, up_conn, &rhead, |conn| {
                federate::stream::UpStream::new(gw, u, conn, &rhead, session)
            }))
            .await
        }
        Then::Listen => pin!(relay(w, c, ctx, up_conn, &rhead, u, None, true)).await,
        Then::Stamped(st) if stateless::stampable(&rhead, up_conn.buffered()) => {
            Box::pin(stateless::relay_stamped(
                w,
                c,
                ctx,
                up_conn,
                rhead,
                (u, bare_result),
                &st,
            ))
            .await
        }
        Then::Stamped(st) => {
            Box::pin(stateless::relay_held_stream(
                w, c, ctx, up_conn, rhead, u, st,
            ))
            .await
        }
        Then::Relay | Then::RelayFederated(_) | Then::Translated => {
            pin!(relay(w, c, ctx, up_conn, &rhead, u, Some(timeout), false)).await
        }
    }
}

/// Answers with an upstream reply the gateway read whole (`head_bytes`: its head's bytes, for
/// the header lines relayed) and `body` (maybe rewritten), with a length; `session`: an
/// `Mcp-Session-Id` to give the client.
async fn write_whole(
    c: &mut Client,
    ctx: &mut Ctx,
    (rhead, head_bytes): (&ResponseHead, &[u8]),
    body: &[u8],
    session: Option<&str>,
) -> Next {
    audit_record::reply_bytes(ctx, false, body);
    let keep = client_head(
        &mut c.out,
        rhead,
        head_bytes,
        ctx.keep_after_response(),
        ctx.http10,
        &ctx.cors,
        session,
        Some(body.len()),
    );
    c.out.extend_from_slice(body);
    ctx.status = rhead.status;
    match c.flush().await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Relays an upstream event stream through a rewriter (`make` wraps the connection, its head
/// consumed, in the `UpStream` that rewrites it). The events are written again, so the
/// upstream's length does not hold: chunked (close-delimited for HTTP/1.0), whatever it framed.
async fn relay_rewritten(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    mut up_conn: UpstreamConn,
    rhead: &ResponseHead,
    make: impl FnOnce(UpstreamConn) -> federate::stream::UpStream,
) -> Next {
    let mut streamed = rhead.clone();
    streamed.framing = Framing::Chunked;
    let keep = client_head(
        &mut c.out,
        &streamed,
        up_conn.buffered(),
        ctx.keep_after_response(),
        ctx.http10,
        &ctx.cors,
        None,
        None,
    );
    ctx.status = rhead.status;
    up_conn.consume(rhead.len);
    let s = make(up_conn);
    let mut ids = crate::mcp::relay::EventIdState::default();
    let next = federate::stream::relay(w, c, ctx, vec![s], &mut ids, false).await;
    if keep {
        next
    } else {
        Next::Close
    }
}

/// Answers an upstream reply no client could parse with a JSON-RPC error naming the upstream,
/// its HTTP status in `error.data`. A 404 to a request that carried the upstream's session id
/// means that session ended: the client gets a 404 too, so it initializes a new one.
async fn unusable_reply(
    c: &mut Client,
    ctx: &mut Ctx,
    (u, kind, status): (usize, Kind, u16),
    why: &str,
    had_session: bool,
) -> Next {
    let gen = ctx.gen.clone();
    let name = &gen.gw.upstreams[u].name;
    tracing::warn!(upstream = %name, status, error = %why, "unusable upstream reply");
    // (A stateless client has no session to renew: it gets the upstream error.)
    let ended = status == 404 && had_session && ctx.era == crate::error::Era::Session;
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
    refuse(c, ctx, Refusal::because(kind, msg).with_data(data)).await
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
    for h in &rhead.relay {
        response::header(out, &upbuf[h.name()], &upbuf[h.value()]);
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
    ctx: &mut Ctx,
    mut up_conn: UpstreamConn,
    rhead: &ResponseHead,
    u: usize,
    read_timeout: Option<Duration>,
    end_on_shutdown: bool,
) -> Next {
    let keep = client_head(
        &mut c.out,
        rhead,
        up_conn.buffered(),
        ctx.keep_after_response(),
        ctx.http10,
        &ctx.cors,
        None,
        None,
    );
    ctx.status = rhead.status;
    let sse = rhead.is_sse(up_conn.buffered());
    let read_timeout = if sse { None } else { read_timeout };
    audit_record::probe_relayed(ctx, sse, rhead, up_conn.buffered());
    up_conn.consume(rhead.len);
    // A call under a concurrency limit keeps its slot while the upstream still runs it, even
    // when its client left: in the session era a client that goes away does not cancel the call
    // (a 2026-07-28 client closing its stream does, and the upstream sees its connection close).
    let finish_within =
        (!ctx.held.is_empty() && ctx.era == crate::error::Era::Session).then(|| {
            ctx.tool_timeout
                .unwrap_or(ctx.gw().upstreams[u].request_timeout)
        });
    let mode = RelayMode {
        http10: ctx.http10,
        read_timeout,
        end_on: end_on_shutdown.then_some(&w.shutdown),
        finish_within,
    };
    // The debug trail of server→client requests (`mcp::relay::watch`), only when it is enabled.
    let mut watch = match ctx.session {
        Some(s) if sse && crate::mcp::relay::watch::enabled() => {
            let stream = if ctx.http_method == HttpMethod::Get {
                "GET"
            } else {
                "POST"
            };
            Some(Box::new(crate::mcp::relay::watch::Watch::new(
                s,
                stream,
                federate::stream::MAX_EVENT_BYTES,
            )))
        }
        _ => None,
    };
    let reply = ctx.reply.as_deref_mut();
    match upstream::relay_body(c, &mut up_conn, rhead, mode, reply, watch.as_deref_mut()).await {
        Ok(reusable) => {
            if reusable {
                let at = ctx.vetted_at.unwrap_or_else(Instant::now);
                w.pool_put(ctx.gw(), u, up_conn, rhead, at);
            }
            if keep {
                Next::KeepAlive
            } else {
                Next::Close
            }
        }
        Err(e) => {
            if let upstream::RelayError::Upstream(why) = e {
                tracing::warn!(upstream = %ctx.gw().upstreams[u].name, error = why, "relay aborted");
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

    fn request_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(&'static WorkerState, &'static mut Client, &'static RequestHead) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every request's future takes a block of its whole size, and each plain await on the
    /// way copies the future it awaits: its rare branches are boxed where they are taken, so
    /// what a plain call carries stays a few KiB (it was 18 KiB before; 8320 bytes,
    /// 128-aligned by monoio's timer, before the vet's rare reads and the relay's timed reads
    /// were boxed and relayed headers made compact: 6552; 4952 once the request head was lent
    /// down instead of moved into each level; 4216 once `request` borrowed it too, instead of
    /// holding it twice).
    #[test]
    fn a_request_future_stays_a_few_kib() {
        let size = request_size(request);
        assert!(size <= 4352, "request future is {size} bytes");
    }
}
