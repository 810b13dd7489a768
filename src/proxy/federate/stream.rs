//! Event streams on a federated endpoint: a POST's SSE reply and the GET stream that merges
//! every upstream's GET stream. Each upstream stream is decoded (`mcp::relay::Rewriter`), its
//! server→client requests get ids the gateway wraps (`mcp::idmap`: the client's answer finds its
//! way back), its `notifications/cancelled` the same wrapped request id, and every event an id
//! saying where each upstream stream stands (`mcp::relay::EventIdState`), so `Last-Event-ID`
//! resumes each upstream stream where the client left it and never replays one into another.
//! `list_changed` notifications mark the worker's routing tables stale (and reach the client).
//!
//! The relay waits on readiness of every upstream socket and the client (never on a read that
//! owns a buffer), so a client that leaves ends it at once, and GET streams end at shutdown.

use futures_util::future::{select_all, FutureExt, LocalBoxFuture};

use crate::error::Kind;
use crate::http::chunked::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use crate::http::head::{Framing, RequestHead, ResponseHead};
use crate::http::pool::{Idleness, UpstreamConn};
use crate::http::response;
use crate::mcp::relay::{self, EventIdState, Rewriter, Seen};
use crate::mcp::session::SessionClaims;
use crate::observe::Outcome;

use std::rc::Rc;

use super::super::client::Client;
use super::super::context::Ctx;
use super::super::held::HeldSession;
use super::super::legacy::MemberBox;
use super::super::reject::Refusal;
use super::super::state::{Gateway, WorkerState};
use super::super::{refuse, Next};
use super::tables::TableKind;

/// Largest event the gateway decodes from an upstream stream (a tool result can be large).
pub(in crate::proxy) const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;
/// Chunk trailers the decoder accepts.
const MAX_TRAILER: usize = 64 * 1024;

/// One upstream event stream being relayed.
pub(in crate::proxy) struct UpStream {
    pub u: usize,
    pub conn: UpstreamConn,
    framing: Framing,
    /// Bytes left of a Content-Length body.
    left: u64,
    chunks: ChunkedDecoder,
    rewriter: Rewriter,
    done: bool,
    /// A held session's reply to a stateless client (`UpStream::held`): the session, and the
    /// server→client requests seen in the stream, to be answered in it.
    held: Option<(Rc<HeldSession>, Vec<relay::HeldRequest>)>,
}

impl UpStream {
    /// A stream whose response head (`head`) has been consumed from `conn`.
    pub fn new(
        gw: &Gateway,
        u: usize,
        conn: UpstreamConn,
        head: &ResponseHead,
        session: [u8; 16],
    ) -> Self {
        UpStream {
            u,
            conn,
            framing: head.framing,
            left: match head.framing {
                Framing::Length(n) => n,
                _ => u64::MAX,
            },
            chunks: ChunkedDecoder::new(MAX_TRAILER),
            rewriter: Rewriter::new(gw.upstreams[u].id, session, MAX_EVENT_BYTES)
                .with_tasks(gw.taskids.clone()),
            done: head.framing == Framing::None,
            held: None,
        }
    }

    /// The reply stream of held session `held` to a client of the stateless revision
    /// (`Rewriter::held`): results stamped with `stamp`, server→client requests answered to the
    /// upstream instead of relayed.
    pub fn held(
        gw: &Gateway,
        u: usize,
        conn: UpstreamConn,
        head: &ResponseHead,
        stamp: &'static [u8],
        held: Option<Rc<HeldSession>>,
    ) -> Self {
        UpStream {
            // One event may be a whole result (an embedded file): as large as a held session's
            // JSON reply may be (4 × limits.max_body_bytes), at least MAX_EVENT_BYTES.
            rewriter: Rewriter::held(
                gw.upstreams[u].id,
                stamp,
                MAX_EVENT_BYTES.max(gw.config.limits.max_body_bytes.saturating_mul(4)),
            ),
            held: held.map(|h| (h, Vec::new())),
            ..UpStream::new(gw, u, conn, head, [0; 16])
        }
    }

    /// Takes the buffered bytes in: the payload goes through the rewriter into `out` (as SSE).
    fn take(
        &mut self,
        gw: &Gateway,
        ids: &mut EventIdState,
        out: &mut Vec<u8>,
        seen: &mut Seen,
    ) -> Result<(), String> {
        let name = &gw.upstreams[self.u].name;
        let buf = self.conn.buffered();
        let mut payload = Vec::new();
        let used = match self.framing {
            Framing::Length(_) => {
                let n = (self.left.min(buf.len() as u64)) as usize;
                payload.extend_from_slice(&buf[..n]);
                self.left -= n as u64;
                if self.left == 0 {
                    self.done = true;
                }
                n
            }
            Framing::Chunked => {
                let n = self
                    .chunks
                    .feed(buf, |d| payload.extend_from_slice(d))
                    .map_err(|e| {
                        format!("upstream \"{name}\" sent a malformed chunked stream: {e}")
                    })?;
                if self.chunks.is_done() {
                    self.done = true;
                }
                n
            }
            Framing::UntilClose => {
                payload.extend_from_slice(buf);
                buf.len()
            }
            Framing::None => 0,
        };
        self.conn.consume(used);
        let requests_before = seen.held_requests.len();
        let fed = self.take_payload(gw, &payload, ids, out, seen);
        match &mut self.held {
            Some((_, answer)) => answer.extend(seen.held_requests.drain(requests_before..)),
            // An upstream of the revision has no session to be answered in: a request it
            // sends on a response stream (which the revision forbids) is dropped.
            None => seen.held_requests.truncate(requests_before),
        }
        fed
    }

    fn take_payload(
        &mut self,
        gw: &Gateway,
        payload: &[u8],
        ids: &mut EventIdState,
        out: &mut Vec<u8>,
        seen: &mut Seen,
    ) -> Result<(), String> {
        let name = &gw.upstreams[self.u].name;
        self.rewriter
            .feed(payload, ids, &gw.idmap, out, seen)
            .map_err(|e| format!("upstream \"{name}\" sent an unusable event stream: {e}"))?;
        if self.done {
            self.rewriter
                .finish(ids, &gw.idmap, out, seen)
                .map_err(|e| format!("upstream \"{name}\" ended its event stream badly: {e}"))?;
            // A held session's reply read to its end: the session may carry another request.
            if let Some((held, _)) = &self.held {
                held.complete();
            }
        }
        Ok(())
    }
}

/// A member with `transport: sse` on the merged GET stream: its mailbox (attached to the
/// holder of its upstream stream) and the rewriter its messages go through like any stream's.
pub(in crate::proxy) struct MemberStream {
    mb: MemberBox,
    rewriter: Rewriter,
    /// Messages received, framed as SSE, not yet rewritten.
    pending: Vec<u8>,
    done: bool,
}

/// What ended a relay.
enum Woke {
    Upstream(usize),
    /// A member mailbox: a message, or `None` when its stream ended.
    Mail(usize, Option<Vec<u8>>),
    Client,
    Shutdown,
}

/// Relays `streams` to the client (whose response head is already in `c.out`) until every one
/// ends, the client leaves, or (`end_on_shutdown`) the worker shuts down. The client's chunked
/// body is one SSE stream. Returns whether the client connection may be kept.
pub(in crate::proxy) async fn relay(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    streams: Vec<UpStream>,
    ids: &mut EventIdState,
    end_on_shutdown: bool,
) -> Next {
    relay_with(w, c, ctx, (streams, Vec::new()), ids, end_on_shutdown).await
}

/// `relay`, with members' mailboxes beside the upstream streams; detaches them at the end.
async fn relay_with(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    (streams, mut members): (Vec<UpStream>, Vec<MemberStream>),
    ids: &mut EventIdState,
    end_on_shutdown: bool,
) -> Next {
    let next = relay_all(w, c, ctx, streams, &mut members, ids, end_on_shutdown).await;
    let gen = ctx.gen.clone();
    for m in members {
        m.mb.close(w, &gen.gw);
    }
    next
}

async fn relay_all(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    mut streams: Vec<UpStream>,
    members: &mut Vec<MemberStream>,
    ids: &mut EventIdState,
    end_on_shutdown: bool,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    let keep = ctx.keep_after_response();
    let mut watch_client = true;
    loop {
        let mut seen = Seen::default();
        let mut events = Vec::new();
        for s in streams.iter_mut() {
            if let Err(why) = s.take(gw, ids, &mut events, &mut seen) {
                tracing::warn!(error = %why, "federated stream: upstream stream dropped");
                s.done = true;
                s.conn.consume(s.conn.buffered().len());
            }
        }
        // A held session's server→client requests: answered in it (the client cannot be asked).
        for s in streams.iter_mut() {
            if let Some((held, answer)) = &mut s.held {
                for (id, method) in std::mem::take(answer) {
                    super::super::held::refuse_server_request(w, gw, s.u, held, &id, &method).await;
                }
            }
        }
        for m in members.iter_mut() {
            if m.pending.is_empty() {
                continue;
            }
            let fed = m
                .rewriter
                .feed(&m.pending, ids, &gw.idmap, &mut events, &mut seen);
            m.pending.clear();
            if let Err(e) = fed {
                let name = &gw.upstreams[m.mb.u].name;
                tracing::warn!(upstream = %name, error = %e, "federated stream: member messages dropped");
                m.done = true;
            }
        }
        if seen.dropped > 0 {
            tracing::warn!(
                dropped = seen.dropped,
                reason = ?seen.last_drop,
                "federated stream: server-to-client messages dropped (their ids cannot be wrapped)"
            );
        }
        for (kind, changed) in [
            (TableKind::Tools, seen.tools_list_changed),
            (TableKind::Prompts, seen.prompts_list_changed),
            (TableKind::Resources, seen.resources_list_changed),
        ] {
            if changed {
                w.catalogs.mark_stale(gw, server, kind);
            }
        }
        if !events.is_empty() {
            if ctx.http10 {
                c.out.extend_from_slice(&events);
            } else {
                encode_chunk(&mut c.out, &events);
            }
            crate::proxy::audit_record::reply_bytes(ctx, true, &events);
        }
        streams.retain(|s| !s.done);
        let mut i = 0;
        while i < members.len() {
            if members[i].done {
                let m = members.swap_remove(i);
                m.mb.close(w, gw);
            } else {
                i += 1;
            }
        }
        if streams.is_empty() && members.is_empty() {
            if !ctx.http10 {
                c.out.extend_from_slice(LAST_CHUNK);
            }
            return match c.flush().await {
                Ok(()) if keep && !ctx.http10 => Next::KeepAlive,
                _ => Next::Close,
            };
        }
        if c.flush().await.is_err() {
            return Next::Close;
        }
        match wait(
            w,
            c,
            (&mut streams, members),
            end_on_shutdown,
            &mut watch_client,
        )
        .await
        {
            Woke::Mail(i, Some(msg)) => {
                let m = &mut members[i];
                crate::http::sse::write_event(&mut m.pending, &Default::default(), &msg);
            }
            Woke::Mail(i, None) => members[i].done = true,
            Woke::Upstream(i) => {
                let s = &mut streams[i];
                match s.conn.fill(0).await {
                    Ok(0) | Err(_) => {
                        if s.framing != Framing::UntilClose {
                            let name = &gw.upstreams[s.u].name;
                            tracing::warn!(upstream = %name, "federated stream: upstream closed its stream mid-body");
                        }
                        s.done = true;
                    }
                    Ok(_) => {}
                }
            }
            Woke::Client => return Next::Close,
            Woke::Shutdown => {
                if !ctx.http10 {
                    c.out.extend_from_slice(LAST_CHUNK);
                    let _ = c.flush().await;
                }
                return Next::Close;
            }
        }
    }
}

/// Waits, without lending a buffer, for an upstream stream to be readable, the client to go
/// away, or shutdown.
async fn wait(
    w: &WorkerState,
    c: &mut Client,
    (streams, members): (&mut [UpStream], &[MemberStream]),
    end_on_shutdown: bool,
    watch_client: &mut bool,
) -> Woke {
    loop {
        let which = {
            let mut waits: Vec<LocalBoxFuture<'_, Woke>> = streams
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.conn
                        .io
                        .readable()
                        .map(move |_| Woke::Upstream(i))
                        .boxed_local()
                })
                .collect();
            for (i, m) in members.iter().enumerate() {
                waits.push(
                    m.mb.next(w)
                        .map(move |msg| Woke::Mail(i, msg))
                        .boxed_local(),
                );
            }
            if *watch_client {
                waits.push(c.conn.io.readable().map(|_| Woke::Client).boxed_local());
            }
            if end_on_shutdown {
                waits.push(w.shutdown.wait().map(|_| Woke::Shutdown).boxed_local());
            }
            select_all(waits).await.0
        };
        match which {
            Woke::Upstream(i) => {
                let s = &mut streams[i];
                // A TLS record with no data (a ticket, a key update) is taken in; wait on.
                if s.conn.io.is_tls()
                    && s.conn.buffered().is_empty()
                    && s.conn.io.peer_state() == Idleness::Silent
                {
                    continue;
                }
                return Woke::Upstream(i);
            }
            Woke::Client => match c.conn.io.peer_state() {
                Idleness::Closed => return Woke::Client,
                // A pipelined request: the client is there; stop watching it.
                Idleness::Unsolicited => *watch_client = false,
                Idleness::Silent => {}
            },
            Woke::Shutdown => return Woke::Shutdown,
            mail @ Woke::Mail(..) => return mail,
        }
    }
}

/// The response head of a relayed event stream (chunked, or close-delimited for HTTP/1.0).
pub(in crate::proxy) fn stream_head(c: &mut Client, ctx: &mut Ctx, status: u16) {
    response::status_line(&mut c.out, status);
    c.out.extend_from_slice(
        b"content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n",
    );
    c.out.extend_from_slice(&ctx.cors);
    if ctx.http10 {
        c.out.extend_from_slice(b"connection: close\r\n");
    } else {
        c.out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        response::connection(&mut c.out, ctx.keep_after_response());
    }
    c.out.extend_from_slice(b"\r\n");
    ctx.status = status;
}

/// GET on a federated endpoint: every upstream stream of the session, merged. An upstream that
/// offers none (405) is left out; when none does, the client gets 405 too.
pub(in crate::proxy) async fn get(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    head: &RequestHead,
    claims: &SessionClaims,
    last_event_id: Option<Vec<u8>>,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    let mut ids = EventIdState::default();
    let resume = match last_event_id.as_deref().map(relay::parse_last_event_id) {
        None => Vec::new(),
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            // Not an id this gateway issued (or from an older layout): start fresh.
            tracing::debug!(error = ?e, "federated GET: Last-Event-ID not ours, not resumed");
            Vec::new()
        }
    };
    for (upstream, id) in &resume {
        ids.set(*upstream, id);
    }
    let _ = head;
    // Members with `transport: sse`: a mailbox attached to their stream's holder each.
    let members: Vec<MemberStream> = gw.config.servers[server]
        .upstreams
        .iter()
        .filter(|m| gw.upstreams[m.upstream].legacy)
        .filter_map(|m| {
            let u = m.upstream;
            let su = super::super::upstream_session(gw, Some(claims), u)?;
            let link = super::super::legacy::member_link(su, Some(claims.id))?;
            let mb = super::super::legacy::attach_member(w, gw, u, link)?;
            Some(MemberStream {
                mb,
                rewriter: Rewriter::new(gw.upstreams[u].id, claims.id, MAX_EVENT_BYTES),
                pending: Vec::new(),
                done: false,
            })
        })
        .collect();
    // The streams are opened on the caller's behalf (the session is bound to its principal).
    let on_behalf = ctx.caller_owned();
    let caller = on_behalf.as_ref().map(|o| o.caller());
    let opens = gw.config.servers[server].upstreams.iter().filter_map(|m| {
        let u = m.upstream;
        if gw.upstreams[u].legacy {
            return None;
        }
        let su = super::super::upstream_session(gw, Some(claims), u)?;
        let mut req = gw.upstreams[u].get_prefix.clone();
        super::super::session_header_lines(&mut req, su);
        if let Some((_, id)) = resume.iter().find(|(up, _)| *up == gw.upstreams[u].id) {
            response::header(&mut req, b"last-event-id", id);
        }
        req.extend_from_slice(b"\r\n");
        Some(async move {
            (
                u,
                super::super::upstream::exchange_as(w, gw, (u, su.replica), req, caller)
                    .await
                    .0,
            )
        })
    });
    let opened = futures_util::future::join_all(opens).await;
    let mut streams = Vec::new();
    let mut refused = 0;
    let mut failures = Vec::new();
    for (u, res) in opened {
        match res {
            Ok((mut conn, rhead)) if rhead.status == 200 && rhead.is_sse(conn.buffered()) => {
                conn.consume(rhead.len);
                streams.push(UpStream::new(gw, u, conn, &rhead, claims.id));
            }
            Ok((_, rhead)) if rhead.status == 405 => refused += 1,
            Ok((_, rhead)) => failures.push(format!(
                "upstream \"{}\" answered GET with HTTP {}",
                gw.upstreams[u].name, rhead.status
            )),
            Err(e) => failures.push(e.reason),
        }
    }
    for f in &failures {
        tracing::warn!(error = %f, "federated GET: upstream stream not opened");
    }
    if streams.is_empty() && members.is_empty() {
        let r = if failures.is_empty() || refused > 0 && failures.is_empty() {
            Refusal::because(
                Kind::MethodNotAllowed,
                "no upstream behind this endpoint offers a server-to-client stream",
            )
        } else {
            Refusal::because(Kind::UpstreamUnavailable, failures.join("; "))
        };
        return refuse(c, ctx, r).await;
    }
    ctx.outcome = Outcome::Ok;
    stream_head(c, ctx, 200);
    relay_with(w, c, ctx, (streams, members), &mut ids, true).await
}
