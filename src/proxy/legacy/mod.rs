//! Upstreams that speak only the 2024-11-05 HTTP+SSE transport (`upstreams[].transport: sse`),
//! alone behind an endpoint or as a federated member. The upstream session is a stream held by the worker that
//! handled `initialize` (`hold`); any worker POSTs to the announced endpoint, with the request's
//! id (and progress token) replaced by a `Tag` naming its own mailbox; the holder routes what the
//! stream brings back, over the control channel when the mailbox is on another worker.

mod hub;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

pub use hub::Hub;
use hub::{Mail, StreamRef, StreamSlot};

use crate::config::UpstreamTarget;
use crate::error::Kind;
use crate::http::chunked::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use crate::http::head::Framing;
use crate::http::pool::{Idleness, UpstreamConn};
use crate::http::{response, sse};
use crate::jsonrpc::{self, Body, MessageKind};
use crate::mcp::legacy::{resolve_endpoint, Binding, Origin, Tag};
use crate::mcp::session::{SessionClaims, SessionSealer, UpstreamSession};
use crate::observe::Outcome;

use super::client::Client;
use super::context::{Ctx, UpstreamCall};
use super::control::Control;
use super::reject::Refusal;
use super::state::{Gateway, WorkerState};
use super::{refuse, unix_now, upstream, Next};

/// A control message about legacy streams (`Control::Legacy`).
#[derive(Clone, Debug)]
pub enum Msg {
    /// To a mailbox's worker: a message the holder read for it.
    Deliver { tag: Tag, msg: Vec<u8> },
    /// To the holder: the client's GET stream waits in mailbox `target`.
    Attach {
        slot: u32,
        nonce: u32,
        owner: [u8; 16],
        target: Tag,
    },
    /// To the holder: that GET stream ended.
    Detach { slot: u32, nonce: u32, target: Tag },
    /// To the holder: DELETE; close the upstream stream.
    Close {
        slot: u32,
        nonce: u32,
        owner: [u8; 16],
    },
    /// To every other worker: the stream ended (its mailboxes end, later requests get 404).
    Ended { stream: StreamRef },
    /// To a GET stream's worker: another GET stream of the session took its place; it ends.
    Finish { tag: Tag },
}

/// Metric handles (resolved once per worker).
pub struct Metrics {
    pub open: metrics::Gauge,
    pub handoffs: metrics::Counter,
    failures: Vec<(&'static str, metrics::Counter)>,
}

/// Steps at which a legacy exchange fails (the `step` label).
const STEPS: [&str; 8] = [
    "connect",
    "endpoint",
    "post",
    "timeout",
    "ended",
    "unroutable",
    "dropped",
    "limit",
];

impl Metrics {
    pub fn new() -> Self {
        use crate::observe::names;
        Metrics {
            open: metrics::gauge!(names::LEGACY_UPSTREAM_STREAMS_OPEN),
            handoffs: metrics::counter!(names::LEGACY_UPSTREAM_HANDOFFS_TOTAL),
            failures: STEPS
                .iter()
                .map(|s| {
                    let c = metrics::counter!(names::LEGACY_UPSTREAM_FAILURES_TOTAL, "step" => *s);
                    c.increment(0);
                    (*s, c)
                })
                .collect(),
        }
    }

    fn failed(&self, step: &str) {
        if let Some((_, c)) = self.failures.iter().find(|(s, _)| *s == step) {
            c.increment(1);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Applies a control message on this worker.
pub fn apply(w: &WorkerState, m: Msg) {
    let hub = &w.legacy;
    match m {
        Msg::Deliver { tag, msg } => {
            if !hub.deliver(tag, msg) {
                w.legacy_metrics.failed("dropped");
            }
        }
        Msg::Attach {
            slot,
            nonce,
            owner,
            target,
        } => attach_here(w, slot, nonce, &owner, target),
        Msg::Detach {
            slot,
            nonce,
            target,
        } => hub.detach(slot, nonce, target),
        Msg::Close { slot, nonce, owner } => hub.close_stream(slot, nonce, &owner),
        Msg::Ended { stream } => hub.stream_ended(stream),
        Msg::Finish { tag } => hub.end_box(tag),
    }
}

fn attach_here(w: &WorkerState, slot: u32, nonce: u32, owner: &[u8; 16], target: Tag) {
    let gw = w.gw();
    match w.legacy.attach(slot, nonce, owner, target) {
        Some((backlog, replaced)) => {
            if let Some(old) = replaced {
                if usize::from(old.worker) == w.index {
                    w.legacy.end_box(old);
                } else if usize::from(old.worker) < gw.control.workers() {
                    let to = usize::from(old.worker);
                    let _ = gw
                        .control
                        .send(to, Control::Legacy(Msg::Finish { tag: old }));
                }
            }
            for m in backlog {
                route(w, &gw, target, m);
            }
        }
        // The stream is gone: the GET stream ends.
        None => route_end(w, target),
    }
}

/// Hands `msg` to the mailbox `tag` names: here, or on its worker through the control channel.
fn route(w: &WorkerState, gw: &Gateway, tag: Tag, msg: Vec<u8>) {
    let to = usize::from(tag.worker);
    if to == w.index {
        if !w.legacy.deliver(tag, msg) {
            w.legacy_metrics.failed("dropped");
        }
    } else if to < gw.control.workers() {
        w.legacy_metrics.handoffs.increment(1);
        let _ = gw
            .control
            .send(to, Control::Legacy(Msg::Deliver { tag, msg }));
    } else {
        w.legacy_metrics.failed("unroutable");
    }
}

/// Ends the mailbox `tag` (its stream is gone).
fn route_end(w: &WorkerState, tag: Tag) {
    // A mailbox on another worker learns it from the stream's `Ended`, which the holder
    // broadcast before it freed the slot (so before this attach could find it gone).
    if usize::from(tag.worker) == w.index {
        w.legacy.end_box(tag);
    }
}

/// Reads the upstream's event stream: de-chunks if needed, decodes events.
struct Reader {
    chunked: Option<ChunkedDecoder>,
    dec: sse::Decoder,
    scratch: Vec<u8>,
    events: Vec<sse::OwnedEvent>,
    /// The body ended (last chunk).
    done: bool,
}

impl Reader {
    fn new(framing: Framing, max_event: usize) -> Self {
        Reader {
            chunked: (framing == Framing::Chunked).then(|| ChunkedDecoder::new(16 * 1024)),
            dec: sse::Decoder::new(max_event),
            scratch: Vec::new(),
            events: Vec::new(),
            done: false,
        }
    }

    /// Takes everything buffered on `conn` into events.
    fn pump(&mut self, conn: &mut UpstreamConn) -> Result<(), String> {
        let events = &mut self.events;
        let mut on = |i: sse::Item<'_>| {
            if let sse::Item::Event(e) = i {
                events.push(e.to_owned());
            }
        };
        let buf = conn.buffered();
        let n = buf.len();
        match &mut self.chunked {
            None => self.dec.feed(buf, &mut on).map_err(|e| e.to_string())?,
            Some(ch) => {
                self.scratch.clear();
                let scratch = &mut self.scratch;
                let used = ch
                    .feed(buf, |d| scratch.extend_from_slice(d))
                    .map_err(|e| format!("bad chunked stream: {e}"))?;
                self.done = ch.is_done();
                let _ = used;
                self.dec
                    .feed(&self.scratch, &mut on)
                    .map_err(|e| e.to_string())?;
            }
        }
        conn.consume(n);
        Ok(())
    }
}

/// POST to the upstream's endpoint: `POST <endpoint>`, the rest of the upstream's head, and the
/// client request's trace context lines (`trace`).
fn post_request(gw: &Gateway, u: usize, endpoint: &str, trace: &[u8], body: &[u8]) -> Vec<u8> {
    let up = &gw.upstreams[u];
    let tail = memchr::memmem::find(&up.post_prefix, b"\r\n")
        .map_or(&[][..], |i| &up.post_prefix[i + 2..]);
    let mut req = Vec::with_capacity(64 + endpoint.len() + tail.len() + body.len());
    req.extend_from_slice(b"POST ");
    req.extend_from_slice(endpoint.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\n");
    req.extend_from_slice(tail);
    response::content_length(&mut req, body.len() as u64);
    req.extend_from_slice(trace);
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

/// Why a POST to the endpoint did not go through.
enum PostError {
    /// 404: the upstream no longer knows the session.
    Ended,
    Failed(Kind, String),
}

/// Sends one message to the endpoint; the upstream answers 202 (the reply comes on the stream).
async fn send(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
    endpoint: &str,
    (trace, body): (&[u8], &[u8]),
    mut ctx: Option<&mut Ctx>,
) -> Result<(), PostError> {
    let up = &gw.upstreams[u];
    let t = Instant::now();
    let (res, _) =
        upstream::exchange(w, gw, (u, 0), post_request(gw, u, endpoint, trace, body)).await;
    let (mut conn, rhead) = match res {
        Ok(x) => x,
        Err(e) => {
            if let Some(ctx) = ctx.as_deref_mut() {
                ctx.upstream_call = Some(UpstreamCall {
                    upstream: u,
                    result: Err(e.kind),
                    elapsed: t.elapsed(),
                });
            }
            w.legacy_metrics.failed("post");
            return Err(PostError::Failed(e.kind, e.reason));
        }
    };
    if let Some(ctx) = ctx {
        ctx.upstream_call = Some(UpstreamCall {
            upstream: u,
            result: Ok(rhead.status),
            elapsed: t.elapsed(),
        });
    }
    conn.consume(rhead.len);
    let mut sink = Vec::new();
    let read =
        upstream::read_full_body(&mut conn, &rhead, 64 * 1024, up.request_timeout, &mut sink).await;
    if read.is_ok() {
        w.pool_put(gw, u, conn, &rhead, std::time::Instant::now());
    }
    match rhead.status {
        200..=299 => Ok(()),
        404 => Err(PostError::Ended),
        s => {
            w.legacy_metrics.failed("post");
            Err(PostError::Failed(
                Kind::UpstreamProtocol,
                format!("upstream \"{}\" refused a message with HTTP {s}", up.name),
            ))
        }
    }
}

/// The client's bytes with the token at `span` replaced by `with`.
fn splice(body: &[u8], span: std::ops::Range<usize>, with: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + with.len());
    v.extend_from_slice(&body[..span.start]);
    v.extend_from_slice(with);
    v.extend_from_slice(&body[span.end..]);
    v
}

/// What the stream brought a request's mailbox.
enum Reply {
    /// The response (id already the client's).
    Response(Vec<u8>),
    /// A notification for this request (progress), token already the client's.
    Notification(Vec<u8>),
}

fn classify(
    gw: &Gateway,
    msg: Vec<u8>,
    id: &[u8],
    tag_token: &[u8],
    token: Option<&[u8]>,
) -> Option<Reply> {
    let Ok(Body::Single(m)) = jsonrpc::scan(&msg, &gw.scan_limits) else {
        return None;
    };
    match m.kind {
        MessageKind::Response | MessageKind::Error => {
            let r = m.id?;
            let span = r.start..r.start + r.text.len();
            Some(Reply::Response(splice(&msg, span, id)))
        }
        _ => {
            let at = memchr::memmem::find(&msg, tag_token);
            match (at, token) {
                (Some(i), Some(t)) => {
                    Some(Reply::Notification(splice(&msg, i..i + tag_token.len(), t)))
                }
                _ => Some(Reply::Notification(msg)),
            }
        }
    }
}

/// A legacy session's upstream binding from its claims.
fn binding(gw: &Gateway, claims: &SessionClaims, u: usize) -> Option<Binding> {
    let s = super::upstream_session(gw, Some(claims), u)?;
    Binding::parse(s.session_id.as_deref()?)
}

/// Whether the stream a binding names is still there, as this worker can tell.
fn alive(w: &WorkerState, claims: &SessionClaims, b: &Binding) -> bool {
    if usize::from(b.holder) == w.index {
        w.legacy.holds(b.slot, b.nonce, &claims.id)
    } else {
        !w.legacy.is_ended((b.holder, b.slot, b.nonce))
    }
}

fn ended_refusal(gw: &Gateway, u: usize) -> Refusal {
    Refusal::because(
        Kind::SessionUnknown,
        format!(
            "upstream \"{}\" ended this session (its event stream closed): initialize again",
            gw.upstreams[u].name
        ),
    )
}

/// POST on an endpoint whose upstream speaks HTTP+SSE. `body` is the client's message
/// (scanned into `ctx`); `claims` is `None` for `initialize`.
pub(super) async fn post(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    (trace, body): (Vec<u8>, Vec<u8>),
    claims: Option<Rc<SessionClaims>>,
    u: usize,
    server: usize,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    ctx.upstream = Some(u);
    if ctx.batch {
        let why = "JSON-RPC batches are not relayed to an upstream that speaks HTTP+SSE";
        return refuse(c, ctx, Refusal::because(Kind::InvalidRequest, why)).await;
    }
    let Some(claims) = claims else {
        return initialize(w, c, ctx, (&trace, body), u, server).await;
    };
    let Some(b) = binding(gw, &claims, u) else {
        return refuse(c, ctx, ended_refusal(gw, u)).await;
    };
    if !alive(w, &claims, &b) {
        return refuse(c, ctx, ended_refusal(gw, u)).await;
    }
    let kind = ctx.first().map_or(MessageKind::Notification, |m| m.kind);
    if kind != MessageKind::Request {
        // A notification, or the client's answer to a server→client request (its id was never
        // rewritten: this upstream session is this client's alone).
        return match send(w, gw, u, &b.endpoint, (&trace, &body), Some(ctx)).await {
            Ok(()) => accepted(c, ctx).await,
            Err(PostError::Ended) => refuse(c, ctx, ended_refusal(gw, u)).await,
            Err(PostError::Failed(k, why)) => refuse(c, ctx, Refusal::because(k, why)).await,
        };
    }
    let stream = (b.holder, b.slot, b.nonce);
    let endpoint = b.endpoint;
    call(w, c, ctx, u, (&endpoint, stream), (&trace, body), None).await
}

/// 202 to a notification or response the upstream accepted.
async fn accepted(c: &mut Client, ctx: &mut Ctx) -> Next {
    ctx.outcome = Outcome::Ok;
    super::federate::accepted(c, ctx).await
}

/// What `call` does with an initialize response: seal this session around the stream.
struct Sealing {
    owner: [u8; 16],
    server: usize,
    slot: u32,
    nonce: u32,
}

/// A request: its id (and progress token) replaced by a tag naming a mailbox here, POSTed, and
/// answered from what the holder routes to the mailbox: JSON when the response comes first, an
/// event stream when a notification for it comes before.
#[allow(clippy::too_many_arguments)]
async fn call(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    u: usize,
    (endpoint, stream): (&str, StreamRef),
    (trace, body): (&[u8], Vec<u8>),
    sealing: Option<Sealing>,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let up = &gw.upstreams[u];
    let tag = w.legacy.open_box(w.index as u16, stream);
    let tag_token = tag.to_token();
    let client_id = ctx.answer_id().unwrap_or(b"null").to_vec();
    // The id and the progress token the scanner read, replaced (later span first).
    let Ok(Body::Single(m)) = jsonrpc::scan(&body, &gw.scan_limits) else {
        w.legacy.close_box(tag);
        return refuse(c, ctx, Refusal::new(Kind::InvalidRequest)).await;
    };
    let mut spans: Vec<std::ops::Range<usize>> = Vec::with_capacity(2);
    if let Some(r) = &m.id {
        spans.push(r.start..r.start + r.text.len());
    }
    let token = m.progress_token.as_ref().map(|r| {
        spans.push(r.start..r.start + r.text.len());
        r.text.to_vec()
    });
    spans.sort_by_key(|r| std::cmp::Reverse(r.start));
    let mut sent = body.clone();
    for s in spans {
        sent = splice(&sent, s, &tag_token);
    }
    if let Err(e) = send(w, gw, u, endpoint, (trace, &sent), Some(ctx)).await {
        w.legacy.close_box(tag);
        if let Some(s) = &sealing {
            w.legacy.close_stream(s.slot, s.nonce, &s.owner);
        }
        return match e {
            PostError::Ended => refuse(c, ctx, ended_refusal(gw, u)).await,
            PostError::Failed(k, why) => refuse(c, ctx, Refusal::because(k, why)).await,
        };
    }
    let deadline = w.shutdown.now() + up.request_timeout;
    let mut streaming = false;
    let next = loop {
        let mail = monoio::select! {
            m = w.legacy.recv(tag) => Some(m),
            _ = w.shutdown.deadline(deadline) => None,
        };
        let reply = match mail {
            Some(Mail::Message(msg)) => classify(gw, msg, &client_id, &tag_token, token.as_deref()),
            Some(Mail::Ended) => {
                w.legacy_metrics.failed("ended");
                let why = format!(
                    "upstream \"{}\" closed its event stream before answering: initialize again",
                    up.name
                );
                break end_with(
                    c,
                    ctx,
                    streaming,
                    Refusal::because(Kind::UpstreamUnavailable, why),
                    &client_id,
                )
                .await;
            }
            None => {
                w.legacy_metrics.failed("timeout");
                let why = format!(
                    "upstream \"{}\" did not answer within its request_timeout ({} s)",
                    up.name,
                    up.request_timeout.as_secs_f64()
                );
                break end_with(
                    c,
                    ctx,
                    streaming,
                    Refusal::because(Kind::UpstreamTimeout, why),
                    &client_id,
                )
                .await;
            }
        };
        match reply {
            None => w.legacy_metrics.failed("unroutable"),
            Some(Reply::Notification(n)) => {
                if !streaming {
                    streaming = true;
                    ctx.outcome = Outcome::Ok;
                    super::federate::stream::stream_head(c, ctx, 200);
                }
                write_event(c, ctx, &n);
                if c.flush().await.is_err() {
                    break Next::Close;
                }
            }
            Some(Reply::Response(r)) => {
                ctx.outcome = Outcome::Ok;
                if streaming {
                    write_event(c, ctx, &r);
                    break finish_stream(c, ctx).await;
                }
                let session = match &sealing {
                    None => None,
                    Some(s) => match seal(w, gw, ctx, &r, s, u, endpoint) {
                        Ok(t) => t,
                        Err(why) => {
                            w.legacy.close_stream(s.slot, s.nonce, &s.owner);
                            let msg = format!("upstream \"{}\" {why}", up.name);
                            break refuse(c, ctx, Refusal::because(Kind::UpstreamProtocol, msg))
                                .await;
                        }
                    },
                };
                break json_reply(c, ctx, &r, session.as_deref()).await;
            }
        }
    };
    w.legacy.close_box(tag);
    next
}

/// Seals the session of an initialize response: `Ok(None)` when the upstream refused (a
/// JSON-RPC error; the stream is closed then).
fn seal(
    w: &WorkerState,
    gw: &Gateway,
    ctx: &mut Ctx,
    reply: &[u8],
    s: &Sealing,
    u: usize,
    endpoint: &str,
) -> Result<Option<String>, String> {
    let id = ctx.answer_id().unwrap_or(b"null").to_vec();
    let negotiated = super::initialize::negotiated_version(gw, reply, false, &id)?;
    let Some(version) = negotiated.version else {
        w.legacy.close_stream(s.slot, s.nonce, &s.owner);
        return Ok(None);
    };
    let b = Binding {
        holder: w.index as u16,
        slot: s.slot,
        nonce: s.nonce,
        endpoint: endpoint.to_string(),
    };
    let carried = b
        .encode()
        .ok_or_else(|| "announced an endpoint too long to carry in a session".to_string())?;
    let now = unix_now();
    let claims = SessionClaims {
        id: s.owner,
        server: gw.server_ids[s.server],
        protocol_version: version,
        issued_at: now,
        expires_at: now + gw.config.session.ttl.as_secs(),
        upstreams: vec![UpstreamSession {
            upstream: gw.upstreams[u].id,
            session_id: Some(carried),
            protocol_version: version,
            replica: 0,
        }],
        principal: ctx.binding(),
    };
    let token = gw
        .sealer
        .try_seal(&claims)
        .map_err(|e| format!("cannot be carried in a session: {e}"))?;
    w.metrics.sessions_opened.increment(1);
    ctx.session = Some(s.owner);
    Ok(Some(token))
}

fn write_event(c: &mut Client, ctx: &Ctx, data: &[u8]) {
    let mut ev = Vec::with_capacity(data.len() + 16);
    sse::write_event(&mut ev, &sse::Fields::default(), data);
    if ctx.http10 {
        c.out.extend_from_slice(&ev);
    } else {
        encode_chunk(&mut c.out, &ev);
    }
}

async fn finish_stream(c: &mut Client, ctx: &mut Ctx) -> Next {
    if !ctx.http10 {
        c.out.extend_from_slice(LAST_CHUNK);
    }
    match c.flush().await {
        Ok(()) if ctx.keep_after_response() && !ctx.http10 => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Ends a request that got no response: a refusal, or (once streaming) an error event.
async fn end_with(c: &mut Client, ctx: &mut Ctx, streaming: bool, r: Refusal, id: &[u8]) -> Next {
    if !streaming {
        return refuse(c, ctx, r).await;
    }
    let mut e = Vec::new();
    e.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    e.extend_from_slice(id);
    e.extend_from_slice(
        format!(",\"error\":{{\"code\":{},\"message\":", r.kind.row().code).as_bytes(),
    );
    crate::error::json_escape_into(&mut e, r.reason.as_deref().unwrap_or(r.kind.as_str()));
    e.extend_from_slice(b"}}");
    ctx.refuse(r.kind, r.reason.unwrap_or_default());
    write_event(c, ctx, &e);
    finish_stream(c, ctx).await
}

async fn json_reply(c: &mut Client, ctx: &mut Ctx, body: &[u8], session: Option<&str>) -> Next {
    let keep = ctx.keep_after_response();
    response::status_line(&mut c.out, 200);
    c.out
        .extend_from_slice(b"content-type: application/json\r\n");
    if let Some(s) = session {
        response::header(&mut c.out, b"mcp-session-id", s.as_bytes());
    }
    c.out.extend_from_slice(&ctx.cors);
    response::content_length(&mut c.out, body.len() as u64);
    response::connection(&mut c.out, keep);
    c.out.extend_from_slice(b"\r\n");
    c.out.extend_from_slice(body);
    ctx.status = 200;
    match c.flush().await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// initialize: opens the upstream stream (held on this worker), learns the endpoint, then sends
/// the client's initialize through it; the token carries the stream's binding.
async fn initialize(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    (trace, body): (&[u8], Vec<u8>),
    u: usize,
    server: usize,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let up = &gw.upstreams[u];
    if w.legacy.streams.borrow().len() >= gw.config.limits.max_legacy_streams {
        w.legacy_metrics.failed("limit");
        tracing::warn!(upstream = %up.name, limit = gw.config.limits.max_legacy_streams, "legacy upstream stream refused: limits.max_legacy_streams reached");
        return refuse(c, ctx, Refusal::new(Kind::TooManyLegacyStreams)).await;
    }
    let t = Instant::now();
    let (conn, reader, endpoint) = match open_stream(w, gw, u).await {
        Ok(x) => x,
        Err((step, kind, why)) => {
            w.legacy_metrics.failed(step);
            ctx.upstream_call = Some(UpstreamCall {
                upstream: u,
                result: Err(kind),
                elapsed: t.elapsed(),
            });
            tracing::warn!(upstream = %up.name, error = %why, "legacy upstream stream not opened");
            return refuse(c, ctx, Refusal::because(kind, why)).await;
        }
    };
    let owner = SessionSealer::new_id();
    let (slot, nonce) = w.legacy.streams.borrow_mut().insert(StreamSlot {
        owner,
        upstream: up.id,
        get: None,
        buffered: Default::default(),
        closing: false,
        waker: None,
    });
    w.legacy_metrics.open.increment(1.0);
    monoio::spawn(hold(
        c.worker().clone(),
        gen.gw.clone(),
        u,
        conn,
        reader,
        slot,
        nonce,
    ));
    let stream = (w.index as u16, slot, nonce);
    let sealing = Sealing {
        owner,
        server,
        slot,
        nonce,
    };
    let next = call(
        w,
        c,
        ctx,
        u,
        (&endpoint, stream),
        (trace, body),
        Some(sealing),
    )
    .await;
    if ctx.session != Some(owner) {
        // No session was sealed (refused, timed out, unusable reply): nobody can use the stream.
        w.legacy.close_stream(slot, nonce, &owner);
    }
    next
}

type OpenError = (&'static str, Kind, String);

/// GET the SSE URL and read up to the `endpoint` event (within the upstream's request_timeout).
async fn open_stream(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
) -> Result<(UpstreamConn, Reader, String), OpenError> {
    let up = &gw.upstreams[u];
    let UpstreamTarget::Http(target) = &gw.config.upstreams[u].target else {
        return Err((
            "connect",
            Kind::Internal,
            "the built-in demo has no HTTP+SSE transport".into(),
        ));
    };
    let mut req = up.get_prefix.clone();
    req.extend_from_slice(b"\r\n");
    let (res, _) = upstream::exchange(w, gw, (u, 0), req).await;
    let (mut conn, rhead) = res.map_err(|e| ("connect", e.kind, e.reason))?;
    if rhead.status != 200 || !rhead.is_sse(conn.buffered()) {
        return Err((
            "connect",
            Kind::UpstreamProtocol,
            format!(
                "upstream \"{}\" answered GET on its SSE URL with HTTP {} {}",
                up.name,
                rhead.status,
                if rhead.is_sse(conn.buffered()) {
                    ""
                } else {
                    "(not an event stream)"
                }
            ),
        ));
    }
    conn.consume(rhead.len);
    let mut reader = Reader::new(rhead.framing, gw.config.limits.max_body_bytes);
    let deadline = w.shutdown.now() + up.request_timeout;
    let origin = Origin {
        scheme: if target.tls { "https" } else { "http" },
        host: &target.host,
        port: target.port,
        path: &target.path,
    };
    loop {
        reader.pump(&mut conn).map_err(|e| {
            (
                "endpoint",
                Kind::UpstreamProtocol,
                format!("upstream \"{}\" sent an invalid event stream: {e}", up.name),
            )
        })?;
        if let Some(i) = reader.events.iter().position(|e| e.event == b"endpoint") {
            let ev = reader.events.remove(i);
            // Messages before the endpoint event have no request to answer yet: dropped.
            reader.events.drain(..i);
            let endpoint = resolve_endpoint(&origin, &ev.data).map_err(|e| {
                (
                    "endpoint",
                    Kind::UpstreamProtocol,
                    format!(
                        "upstream \"{}\" announced an unusable endpoint: {e}",
                        up.name
                    ),
                )
            })?;
            return Ok((conn, reader, endpoint));
        }
        if reader.done {
            return Err((
                "endpoint",
                Kind::UpstreamProtocol,
                format!(
                    "upstream \"{}\" ended its event stream before announcing an endpoint",
                    up.name
                ),
            ));
        }
        let read = monoio::select! {
            r = conn.fill(0) => r,
            _ = w.shutdown.deadline(deadline) => {
                return Err(("endpoint", Kind::UpstreamTimeout, format!("upstream \"{}\" announced no endpoint within its request_timeout", up.name)));
            }
        };
        match read {
            Ok(0) | Err(_) => {
                return Err((
                    "endpoint",
                    Kind::UpstreamUnavailable,
                    format!(
                        "upstream \"{}\" closed its event stream before announcing an endpoint",
                        up.name
                    ),
                ))
            }
            Ok(_) => {}
        }
    }
}

/// Resolves when stream `slot` is told to close (or is gone).
async fn closing(w: &WorkerState, slot: u32, nonce: u32) {
    std::future::poll_fn(|cx| {
        let mut streams = w.legacy.streams.borrow_mut();
        match streams.get_mut(slot, nonce) {
            Some(s) if !s.closing => {
                s.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
            _ => std::task::Poll::Ready(()),
        }
    })
    .await
}

/// The holder: reads the upstream's stream until it ends, is closed (DELETE) or the worker
/// shuts down, and routes every message; then ends the session everywhere.
async fn hold(
    w: Rc<WorkerState>,
    gw: Arc<Gateway>,
    u: usize,
    mut conn: UpstreamConn,
    mut reader: Reader,
    slot: u32,
    nonce: u32,
) {
    let why = loop {
        for ev in std::mem::take(&mut reader.events) {
            if ev.event.is_empty() || ev.event == b"message" {
                on_message(&w, &gw, slot, nonce, ev.data);
            }
        }
        if reader.done {
            break "the upstream ended its event stream";
        }
        let read = monoio::select! {
            r = conn.fill(0) => Some(r),
            _ = closing(&w, slot, nonce) => None,
            _ = w.shutdown.wait() => None,
        };
        match read {
            None => break "the session ended (DELETE, or shutdown)",
            Some(Ok(0)) | Some(Err(_)) => break "the upstream closed its event stream",
            Some(Ok(_)) => {}
        }
        if let Err(e) = reader.pump(&mut conn) {
            tracing::warn!(upstream = %gw.upstreams[u].name, error = %e, "legacy upstream stream unreadable");
            break "the upstream sent an invalid event stream";
        }
    };
    drop(conn);
    // The client's GET stream (on whichever worker) ends with the stream's `Ended`.
    w.legacy.streams.borrow_mut().remove(slot, nonce);
    w.legacy_metrics.open.decrement(1.0);
    let stream = (w.index as u16, slot, nonce);
    w.legacy.stream_ended(stream);
    let _ = gw
        .control
        .broadcast(Control::Legacy(Msg::Ended { stream }), Some(w.index));
    tracing::info!(upstream = %gw.upstreams[u].name, worker = w.index, "legacy upstream stream closed: {why}");
}

/// One `message` event from the upstream: a response goes to the mailbox its id names, a
/// progress notification to the one its token names, anything else (server→client requests,
/// other notifications) to the client's GET stream, or is buffered until one opens.
fn on_message(w: &WorkerState, gw: &Gateway, slot: u32, nonce: u32, data: Vec<u8>) {
    let Ok(Body::Single(m)) = jsonrpc::scan(&data, &gw.scan_limits) else {
        w.legacy_metrics.failed("unroutable");
        tracing::debug!("legacy upstream sent a message the gateway cannot read: dropped");
        return;
    };
    let tag = match m.kind {
        MessageKind::Response | MessageKind::Error => {
            match m.id.as_ref().and_then(|r| Tag::parse(r.text)) {
                Some(t) => Some(t),
                None => {
                    w.legacy_metrics.failed("unroutable");
                    tracing::debug!(
                        "legacy upstream answered an id the gateway did not send: dropped"
                    );
                    return;
                }
            }
        }
        MessageKind::Notification
            if m.method
                .as_ref()
                .is_some_and(|s| s.value == "notifications/progress") =>
        {
            progress_tag(&data)
        }
        _ => None,
    };
    drop(m);
    match tag {
        Some(t) => route(w, gw, t, data),
        None => to_client_stream(w, gw, slot, nonce, data),
    }
}

/// The tag in a progress notification's `params.progressToken`, when the gateway put one there.
fn progress_tag(data: &[u8]) -> Option<Tag> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let s = v.get("params")?.get("progressToken")?.as_str()?;
    Tag::parse(format!("\"{s}\"").as_bytes())
}

fn to_client_stream(w: &WorkerState, gw: &Gateway, slot: u32, nonce: u32, data: Vec<u8>) {
    let target = {
        let mut streams = w.legacy.streams.borrow_mut();
        let Some(s) = streams.get_mut(slot, nonce) else {
            return;
        };
        match s.get {
            Some(t) => t,
            None => {
                if s.buffered.len() < gw.config.limits.legacy_buffered_messages {
                    s.buffered.push_back(data);
                } else {
                    w.legacy_metrics.failed("dropped");
                    tracing::debug!("legacy upstream message dropped: limits.legacy_buffered_messages reached with no GET stream open");
                }
                return;
            }
        }
    };
    route(w, gw, target, data);
}

/// GET: the client's server→client stream, fed by the holder (attached over the control channel
/// when the holder is another worker).
pub(super) async fn get(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    claims: &SessionClaims,
    u: usize,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let Some(b) = binding(gw, claims, u).filter(|b| alive(w, claims, b)) else {
        return refuse(c, ctx, ended_refusal(gw, u)).await;
    };
    let stream = (b.holder, b.slot, b.nonce);
    let tag = w.legacy.open_box(w.index as u16, stream);
    if usize::from(b.holder) == w.index {
        attach_here(w, b.slot, b.nonce, &claims.id, tag);
    } else {
        let msg = Msg::Attach {
            slot: b.slot,
            nonce: b.nonce,
            owner: claims.id,
            target: tag,
        };
        let _ = gw.control.send(usize::from(b.holder), Control::Legacy(msg));
    }
    ctx.outcome = Outcome::Ok;
    super::federate::stream::stream_head(c, ctx, 200);
    let mut watch_client = true;
    let mut ok = c.flush().await.is_ok();
    while ok {
        let client = async {
            if watch_client {
                let _ = c.conn.io.readable().await;
            } else {
                std::future::pending::<()>().await
            }
        };
        let mail = monoio::select! {
            m = w.legacy.recv(tag) => Some(m),
            _ = client => None,
            _ = w.shutdown.wait() => break,
        };
        match mail {
            Some(Mail::Message(m)) => {
                write_event(c, ctx, &m);
                ok = c.flush().await.is_ok();
            }
            Some(Mail::Ended) => break,
            None => match c.conn.io.peer_state() {
                Idleness::Closed => break,
                Idleness::Unsolicited => watch_client = false,
                Idleness::Silent => {}
            },
        }
    }
    w.legacy.close_box(tag);
    if usize::from(b.holder) == w.index {
        w.legacy.detach(b.slot, b.nonce, tag);
    } else {
        let msg = Msg::Detach {
            slot: b.slot,
            nonce: b.nonce,
            target: tag,
        };
        let _ = gw.control.send(usize::from(b.holder), Control::Legacy(msg));
    }
    if ok && !ctx.http10 {
        c.out.extend_from_slice(LAST_CHUNK);
        let _ = c.flush().await;
    }
    Next::Close
}

/// DELETE: the holder closes the upstream stream (which ends the upstream session).
pub(super) fn end(w: &WorkerState, gw: &Gateway, claims: &SessionClaims, u: usize) {
    let Some(b) = binding(gw, claims, u) else {
        return;
    };
    if usize::from(b.holder) == w.index {
        w.legacy.close_stream(b.slot, b.nonce, &claims.id);
    } else if usize::from(b.holder) < gw.control.workers() {
        let msg = Msg::Close {
            slot: b.slot,
            nonce: b.nonce,
            owner: claims.id,
        };
        let _ = gw.control.send(usize::from(b.holder), Control::Legacy(msg));
    }
}

/// An upstream session reached from outside a single-upstream client request: `check --probe`
/// (opened here, `link`) and a federated endpoint's member upstream (opened at the federated
/// initialize, `open_member`; later found from the token, `member_link`). The same stream,
/// holder task and mailboxes as a single-upstream session's.
pub(in crate::proxy) struct Link {
    holder: u16,
    endpoint: String,
    slot: u32,
    nonce: u32,
    owner: Option<[u8; 16]>,
}

impl Link {
    fn stream(&self) -> StreamRef {
        (self.holder, self.slot, self.nonce)
    }
}

/// Opens upstream `u`'s stream and holds it on this worker, for the session `owner`.
async fn link_for(
    w: &Rc<WorkerState>,
    gw: Arc<Gateway>,
    u: usize,
    owner: [u8; 16],
) -> Result<Link, String> {
    if w.legacy.streams.borrow().len() >= gw.config.limits.max_legacy_streams {
        w.legacy_metrics.failed("limit");
        return Err(format!(
            "limits.max_legacy_streams ({}) reached on this worker",
            gw.config.limits.max_legacy_streams
        ));
    }
    let (conn, reader, endpoint) = open_stream(w, &gw, u).await.map_err(|(step, _, why)| {
        w.legacy_metrics.failed(step);
        why
    })?;
    let (slot, nonce) = w.legacy.streams.borrow_mut().insert(StreamSlot {
        owner,
        upstream: gw.upstreams[u].id,
        get: None,
        buffered: Default::default(),
        closing: false,
        waker: None,
    });
    w.legacy_metrics.open.increment(1.0);
    monoio::spawn(hold(w.clone(), gw, u, conn, reader, slot, nonce));
    Ok(Link {
        holder: w.index as u16,
        endpoint,
        slot,
        nonce,
        owner: Some(owner),
    })
}

/// Opens upstream `u`'s stream and holds it on this worker (`check --probe`).
pub(in crate::proxy) async fn link(
    w: &Rc<WorkerState>,
    gw: Arc<Gateway>,
    u: usize,
) -> Result<Link, String> {
    link_for(w, gw, u, SessionSealer::new_id()).await
}

/// A federated session's member upstream `u` with `transport: sse`: opens its stream here for
/// the client session `owner`, sends the client's initialize (`body`) through it, and returns
/// the response (with the client's id) and the binding to carry in the token. The stream is
/// closed again if the upstream does not accept.
pub(in crate::proxy) async fn open_member(
    w: &Rc<WorkerState>,
    gw: Arc<Gateway>,
    u: usize,
    owner: [u8; 16],
    (trace, body): (&[u8], &[u8]),
) -> Result<(Vec<u8>, String), String> {
    let link = link_for(w, gw.clone(), u, owner).await?;
    let answered = ask_raw(w, &gw, u, &link, trace, body).await;
    let carried = Binding {
        holder: link.holder,
        slot: link.slot,
        nonce: link.nonce,
        endpoint: link.endpoint.clone(),
    }
    .encode();
    match (answered, carried) {
        (Ok(msg), Some(b)) => Ok((msg, b)),
        (Err(e), _) => {
            unlink(w, link);
            Err(e)
        }
        (Ok(_), None) => {
            unlink(w, link);
            Err(format!(
                "upstream \"{}\" announced an endpoint too long to carry in a session",
                gw.upstreams[u].name
            ))
        }
    }
}

/// The link a federated session's token carries for member `u` (`None`: not a binding).
pub(in crate::proxy) fn member_link(
    session: &UpstreamSession,
    owner: Option<[u8; 16]>,
) -> Option<Link> {
    let b = Binding::parse(session.session_id.as_deref()?)?;
    Some(Link {
        holder: b.holder,
        endpoint: b.endpoint,
        slot: b.slot,
        nonce: b.nonce,
        owner,
    })
}

/// Whether a link's stream is still there, as this worker can tell (for its session, when the
/// link knows it: the gateway's own requests of a federated session do not carry it).
fn link_alive(w: &WorkerState, link: &Link) -> bool {
    if usize::from(link.holder) == w.index {
        match link.owner {
            Some(owner) => w.legacy.holds(link.slot, link.nonce, &owner),
            None => w.legacy.holds_any(link.slot, link.nonce),
        }
    } else {
        !w.legacy.is_ended(link.stream())
    }
}

/// A client's message to a federated member upstream `u` (the name already the upstream's):
/// a request is answered like on a single-upstream endpoint, anything else gets 202.
pub(in crate::proxy) async fn dispatch(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    u: usize,
    link: &Link,
    (trace, body): (&[u8], Vec<u8>),
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    ctx.upstream = Some(u);
    if !link_alive(w, link) {
        return refuse(c, ctx, ended_refusal(gw, u)).await;
    }
    let kind = jsonrpc::scan(&body, &gw.scan_limits)
        .ok()
        .and_then(|b| match b {
            Body::Single(m) => Some(m.kind),
            Body::Batch(_) => None,
        });
    if kind != Some(MessageKind::Request) {
        return match send(w, gw, u, &link.endpoint, (trace, &body), Some(ctx)).await {
            Ok(()) => accepted(c, ctx).await,
            Err(PostError::Ended) => refuse(c, ctx, ended_refusal(gw, u)).await,
            Err(PostError::Failed(k, why)) => refuse(c, ctx, Refusal::because(k, why)).await,
        };
    }
    call(
        w,
        c,
        ctx,
        u,
        (&link.endpoint, link.stream()),
        (trace, body),
        None,
    )
    .await
}

/// Sends a request (any id) and returns its response message (with that id), skipping
/// notifications; an error response is `Err` with its `error`.
pub(in crate::proxy) async fn ask(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
    link: &Link,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    let name = &gw.upstreams[u].name;
    let r = ask_raw(w, gw, u, link, b"", body).await?;
    if let Ok(Body::Single(m)) = jsonrpc::scan(&r, &gw.scan_limits) {
        if m.kind == MessageKind::Error {
            let err = sonic_rs::get(&r[..], ["error"]);
            let text = err.as_ref().map_or("?", |e| e.as_raw_str());
            return Err(format!(
                "upstream \"{name}\" answered with an error: {text}"
            ));
        }
    }
    Ok(r)
}

/// Sends a request (any id) and returns its response message, error responses included.
pub(in crate::proxy) async fn ask_raw(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
    link: &Link,
    trace: &[u8],
    body: &[u8],
) -> Result<Vec<u8>, String> {
    let name = &gw.upstreams[u].name;
    if !link_alive(w, link) {
        return Err(format!(
            "upstream \"{name}\" ended the session (its event stream closed)"
        ));
    }
    let Ok(Body::Single(m)) = jsonrpc::scan(body, &gw.scan_limits) else {
        return Err("the request does not scan".into());
    };
    let Some(id) =
        m.id.as_ref()
            .map(|r| (r.start..r.start + r.text.len(), r.text.to_vec()))
    else {
        return Err("the request has no id".into());
    };
    let tag = w.legacy.open_box(w.index as u16, link.stream());
    let tag_token = tag.to_token();
    let sent = splice(body, id.0, &tag_token);
    let got = async {
        send(w, gw, u, &link.endpoint, (trace, &sent), None)
            .await
            .map_err(|e| match e {
                PostError::Ended => format!("upstream \"{name}\" ended the session"),
                PostError::Failed(_, why) => why,
            })?;
        let deadline = w.shutdown.now() + gw.upstreams[u].request_timeout;
        loop {
            let mail = monoio::select! {
                m = w.legacy.recv(tag) => Some(m),
                _ = w.shutdown.deadline(deadline) => None,
            };
            match mail {
                None => {
                    w.legacy_metrics.failed("timeout");
                    return Err(format!(
                        "upstream \"{name}\" did not answer within its request_timeout"
                    ));
                }
                Some(Mail::Ended) => {
                    return Err(format!("upstream \"{name}\" closed its event stream"))
                }
                Some(Mail::Message(msg)) => {
                    if let Some(Reply::Response(r)) = classify(gw, msg, &id.1, &tag_token, None) {
                        return Ok(r);
                    }
                }
            }
        }
    }
    .await;
    w.legacy.close_box(tag);
    got
}

/// Sends a notification (or a client's response).
pub(in crate::proxy) async fn tell(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
    link: &Link,
    (trace, body): (&[u8], &[u8]),
) -> Result<(), String> {
    send(w, gw, u, &link.endpoint, (trace, body), None)
        .await
        .map_err(|e| match e {
            PostError::Ended => format!("upstream \"{}\" ended the session", gw.upstreams[u].name),
            PostError::Failed(_, why) => why,
        })
}

/// Ends the session: its holder closes the stream (only a link that knows its session can).
pub(in crate::proxy) fn unlink(w: &WorkerState, link: Link) {
    let Some(owner) = link.owner else {
        return;
    };
    if usize::from(link.holder) == w.index {
        w.legacy.close_stream(link.slot, link.nonce, &owner);
    } else {
        let msg = Msg::Close {
            slot: link.slot,
            nonce: link.nonce,
            owner,
        };
        let _ = w
            .gw()
            .control
            .send(usize::from(link.holder), Control::Legacy(msg));
    }
}

/// A federated GET stream's part for member `u`: a mailbox attached to the holder.
pub(in crate::proxy) struct MemberBox {
    pub u: usize,
    link: Link,
    tag: Tag,
}

/// Attaches a mailbox here to member `u`'s stream (the federated GET stream).
pub(in crate::proxy) fn attach_member(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
    link: Link,
) -> Option<MemberBox> {
    if !link_alive(w, &link) {
        return None;
    }
    let tag = w.legacy.open_box(w.index as u16, link.stream());
    let owner = link.owner?;
    if usize::from(link.holder) == w.index {
        attach_here(w, link.slot, link.nonce, &owner, tag);
    } else {
        let msg = Msg::Attach {
            slot: link.slot,
            nonce: link.nonce,
            owner,
            target: tag,
        };
        let _ = gw
            .control
            .send(usize::from(link.holder), Control::Legacy(msg));
    }
    Some(MemberBox { u, link, tag })
}

impl MemberBox {
    /// The next message for the GET stream (`None`: the member's stream ended).
    pub async fn next(&self, w: &WorkerState) -> Option<Vec<u8>> {
        match w.legacy.recv(self.tag).await {
            Mail::Message(m) => Some(m),
            Mail::Ended => None,
        }
    }

    /// The GET stream ended: detach.
    pub fn close(self, w: &WorkerState, gw: &Gateway) {
        w.legacy.close_box(self.tag);
        if usize::from(self.link.holder) == w.index {
            w.legacy.detach(self.link.slot, self.link.nonce, self.tag);
        } else {
            let msg = Msg::Detach {
                slot: self.link.slot,
                nonce: self.link.nonce,
                target: self.tag,
            };
            let _ = gw
                .control
                .send(usize::from(self.link.holder), Control::Legacy(msg));
        }
    }
}
