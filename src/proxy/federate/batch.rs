//! JSON-RPC batches (2025-03-26 sessions) on a federated endpoint: each message decided on its
//! own (`route::decide`), the gateway's answers made in place, the rest sent to their upstreams
//! at once (at most `limits.max_batch_concurrency` in flight), and the answers returned as one
//! reply: 202 when nothing needs one, a JSON array, or (when an upstream answers with an event
//! stream) one event stream merging the gateway's answers and every upstream stream.

use futures_util::stream::{self, StreamExt};

use crate::error::Kind;
use crate::jsonrpc::{self, Body, MessageKind};
use crate::mcp::Method;

use super::super::client::Client;
use super::super::context::{Ctx, MessageCtx};
use super::super::limit;
use super::super::reject::Refusal;
use super::super::state::{Gateway, WorkerState};
use super::super::{refuse, upstream, Next};
use super::exchange::{self, Reply};
use super::route::{self, Decision, Msg};
use super::stream::{relay, stream_head, UpStream};
use super::FedRequest;

/// What one message of the batch turned into, after its upstream (if any) answered.
enum Done {
    /// Its response message (a request's answer: the gateway's or the upstream's).
    Answer(usize, Vec<u8>),
    /// The gateway refuses it (its upstream failed).
    Failed(usize, Refusal),
    /// Its upstream answers with an event stream: relayed (its response is in it).
    Stream(Box<UpStream>),
    /// Nothing to answer (a notification, a client response).
    Quiet,
}

/// Work left after the decisions: a message for one upstream, or for all.
enum Job<'a> {
    Send { i: usize, u: usize, body: Vec<u8> },
    FanOut { i: usize, msg: &'a [u8] },
}

/// A batch on a federated endpoint (the session's version allows batches: `proxy::post`
/// checked). The same request id twice in one batch refuses the whole batch before anything is
/// sent: the client could not tell the answers apart, and an upstream would see two requests
/// with one id in flight.
pub(super) async fn post(w: &WorkerState, c: &mut Client, ctx: &mut Ctx, req: FedRequest) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    if let Some(id) = duplicate_id(&ctx.messages) {
        let why = format!(
            "id {} is used by two requests of this batch: each request needs its own id",
            String::from_utf8_lossy(id)
        );
        return refuse(c, ctx, Refusal::because(Kind::InvalidRequest, why)).await;
    }
    let concurrency = gw.config.limits.max_batch_concurrency;
    let messages = &ctx.messages;
    let body = &req.body;
    let req = &req;

    // Phase: decide, message by message (in order, at most `concurrency` at once: a list may
    // fetch upstream pages, a name may rebuild a table).
    let decisions: Vec<Result<Decision, Refusal>> = stream::iter(messages.iter().enumerate())
        .map(|(i, m)| async move { route::decide(w, gw, server, req, &Msg::of(m, body, i)).await })
        .buffered(concurrency)
        .collect()
        .await;
    // A message whose item needs an OAuth scope the token lacks refuses the whole batch with
    // 403 `insufficient_scope`: the client must get another token, which HTTP says once.
    if let Some(r) = decisions.iter().find_map(|d| match d {
        Err(r) if r.kind == Kind::InsufficientScope => Some(r.clone()),
        _ => None,
    }) {
        ctx.decisions.extend(req.access.decided.take());
        return refuse(c, ctx, r).await;
    }
    // Phase: limit, on the messages authorization allowed (a batch over a limit is refused
    // whole, nothing sent).
    let routes: Vec<limit::Route> = decisions
        .iter()
        .map(|d| match d {
            Ok(Decision::Upstream { u, .. }) => limit::Route::To(Some(*u)),
            Ok(_) => limit::Route::To(None),
            Err(_) => limit::Route::Refused,
        })
        .collect();
    if let Err(r) = limit::phase(w, ctx, &routes).await {
        ctx.decisions.extend(req.access.decided.take());
        return refuse(c, ctx, r).await;
    }
    let messages = &ctx.messages;
    let mut done = Vec::with_capacity(messages.len());
    let mut refused = Vec::new();
    let mut jobs = Vec::new();
    for (i, (m, d)) in messages.iter().zip(decisions).enumerate() {
        match d {
            Ok(Decision::Result(r)) => done.push(Done::Answer(i, result_message(m, &r))),
            Ok(Decision::Upstream { u, body }) => jobs.push(Job::Send { i, u, body }),
            Ok(Decision::FanOut) => jobs.push(Job::FanOut {
                i,
                msg: Msg::of(m, body, i).bytes,
            }),
            Err(r) => {
                // Logged here, counted by the record phase; only a request gets an answer.
                refused.push((i as u16, r.kind));
                tracing::info!(
                    refused = r.kind.as_str(),
                    reason = r.reason.as_deref().unwrap_or_default(),
                    method = m.method_label(),
                    "federated batch: message refused"
                );
                if m.kind == MessageKind::Request {
                    done.push(Done::Answer(i, refusal_message(gw, m, &r)));
                }
            }
        }
    }

    // Phase: send, at most `concurrency` upstream exchanges in flight.
    let claims_id = req.claims.id;
    let sent: Vec<Done> = stream::iter(jobs)
        .map(|job| async move {
            match job {
                Job::Send { i, u, body } => {
                    send(w, gw, req, (i, &messages[i]), u, &body, claims_id).await
                }
                Job::FanOut { i, msg } => {
                    let (total, failed) = route::fan_out(w, gw, req, server, msg).await;
                    let m = &messages[i];
                    if m.kind != MessageKind::Request {
                        return Done::Quiet;
                    }
                    match route::fanned_out(total, failed) {
                        Ok(r) => Done::Answer(i, result_message(m, r)),
                        Err(r) => Done::Failed(i, r),
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    done.extend(sent);

    // Phase: answer.
    let mut answers: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut streams = Vec::new();
    for d in done {
        match d {
            Done::Answer(i, a) => answers.push((i, a)),
            Done::Failed(i, r) => {
                refused.push((i as u16, r.kind));
                answers.push((i, refusal_message(gw, &messages[i], &r)));
            }
            Done::Stream(s) => streams.push(*s),
            Done::Quiet => {}
        }
    }
    answers.sort_by_key(|(i, _)| *i);
    let expects_answers = messages.iter().any(|m| m.kind == MessageKind::Request);
    ctx.refused_messages = refused;
    ctx.decisions.extend(req.access.decided.take());
    if !expects_answers {
        return super::accepted(c, ctx).await;
    }
    if streams.is_empty() {
        let mut out =
            Vec::with_capacity(2 + answers.iter().map(|(_, a)| a.len() + 1).sum::<usize>());
        out.push(b'[');
        for (n, (_, a)) in answers.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(a);
        }
        out.push(b']');
        crate::proxy::audit_record::reply_bytes(ctx, false, &out);
        return super::reply_json(c, ctx, 200, &out, None).await;
    }
    // One event stream: the answers already known first, then every upstream stream merged
    // (server→client requests and progress in them reach the client, rewritten).
    stream_head(c, ctx, 200);
    let mut events = Vec::new();
    for (_, a) in &answers {
        events.extend_from_slice(b"data: ");
        events.extend_from_slice(a);
        events.extend_from_slice(b"\n\n");
    }
    if !events.is_empty() {
        if ctx.http10 {
            c.out.extend_from_slice(&events);
        } else {
            crate::http::chunked::encode_chunk(&mut c.out, &events);
        }
        crate::proxy::audit_record::reply_bytes(ctx, true, &events);
    }
    let mut ids = crate::mcp::relay::EventIdState::default();
    relay(w, c, ctx, streams, &mut ids, false).await
}

/// The first request id that a later request of the batch uses again (ids compared as JSON
/// values: `1` and `1.0` are one id).
fn duplicate_id(messages: &[MessageCtx]) -> Option<&[u8]> {
    let ids: Vec<&[u8]> = messages
        .iter()
        .filter(|m| m.kind == MessageKind::Request)
        .filter_map(|m| m.id.as_ref().map(|i| i.get()))
        .collect();
    ids.iter().enumerate().find_map(|(n, a)| {
        ids[n + 1..]
            .iter()
            .any(|b| jsonrpc::same_id(a, b))
            .then_some(*a)
    })
}

/// `{"jsonrpc":"2.0","id":<the client's id bytes>,"result":<result>}`.
fn result_message(m: &MessageCtx, result: &[u8]) -> Vec<u8> {
    let id = m.id.as_ref().map_or(&b"null"[..], |i| i.get());
    let mut out = Vec::with_capacity(result.len() + id.len() + 32);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result);
    out.push(b'}');
    out
}

/// The entry refusing request `m`, as a refusal of it alone would read.
fn refusal_message(gw: &Gateway, m: &MessageCtx, r: &Refusal) -> Vec<u8> {
    let id = m.id.as_ref().map_or(&b"null"[..], |i| i.get());
    let mut out = Vec::with_capacity(160);
    gw.rejects
        .message(&mut out, r, id, m.method == Method::ToolsCall);
    out
}

/// Sends one message to upstream `u` and turns its reply into what the batch answers: an event
/// stream is kept to relay; a JSON reply gives the response (with the client's own id bytes).
async fn send(
    w: &WorkerState,
    gw: &Gateway,
    req: &FedRequest,
    (i, m): (usize, &MessageCtx),
    u: usize,
    body: &[u8],
    session: [u8; 16],
) -> Done {
    let up = &gw.upstreams[u];
    let failed = |kind: Kind, why: String, status: Option<u16>| {
        tracing::warn!(upstream = %up.name, error = %why, "federated batch: upstream part failed");
        if m.kind != MessageKind::Request {
            return Done::Quiet;
        }
        let mut r = Refusal::because(kind, why);
        if let Some(status) = status {
            let mut data = b"{\"upstream\":".to_vec();
            crate::error::json_escape_into(&mut data, &up.name);
            data.extend_from_slice(format!(",\"status\":{status}}}").as_bytes());
            r = r.with_data(data);
        }
        Done::Failed(i, r)
    };
    let Some(session_of_u) = super::super::upstream_session(gw, Some(&req.claims), u) else {
        let why = format!(
            "upstream \"{}\" is not part of this session: initialize a new session to try it again",
            up.name
        );
        return failed(Kind::UpstreamUnavailable, why, None);
    };
    if up.legacy {
        // An HTTP+SSE member: through its event stream, the reply whole (`exchange::rpc`).
        let reply = match exchange::rpc(
            w,
            gw,
            u,
            session_of_u,
            (&req.trace, req.access.caller()),
            body,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => return failed(e.kind, e.reason, None),
        };
        return answered(gw, (i, m), reply, session, u, failed);
    }
    let out = exchange::post_request(gw, u, Some(session_of_u), &req.trace, body);
    let (res, _) =
        upstream::exchange_as(w, gw, (u, session_of_u.replica), out, req.access.caller()).await;
    let (mut conn, head) = match res {
        Ok(x) => x,
        Err(e) => return failed(e.kind, e.reason, None),
    };
    let ok = (200..300).contains(&head.status);
    if ok && head.is_sse(conn.buffered()) && m.kind == MessageKind::Request {
        conn.consume(head.len);
        return Done::Stream(Box::new(UpStream::new(gw, u, conn, &head, session)));
    }
    let sse = head.is_sse(conn.buffered());
    conn.consume(head.len);
    let mut reply_body = Vec::new();
    let max = gw.config.limits.max_body_bytes.saturating_mul(4);
    if let Err(why) =
        upstream::read_full_body(&mut conn, &head, max, up.request_timeout, &mut reply_body).await
    {
        let why = format!("upstream \"{}\" sent an unreadable reply: {why}", up.name);
        return failed(Kind::UpstreamProtocol, why, Some(head.status));
    }
    w.pool_put(gw, u, conn, &head, std::time::Instant::now());
    if !ok {
        let why = format!("upstream \"{}\" answered HTTP {}", up.name, head.status);
        return failed(Kind::UpstreamUnavailable, why, Some(head.status));
    }
    let reply = Reply {
        status: head.status,
        session_id: None,
        replica: session_of_u.replica,
        body: reply_body,
        sse,
    };
    answered(gw, (i, m), reply, session, u, failed)
}

/// A part's whole reply from upstream `u`: its answer (the client's id bytes back, task ids
/// made the gateway's), or why there is none.
fn answered(
    gw: &Gateway,
    (i, m): (usize, &MessageCtx),
    reply: Reply,
    session: [u8; 16],
    u: usize,
    failed: impl Fn(Kind, String, Option<u16>) -> Done,
) -> Done {
    let up = &gw.upstreams[u];
    if m.kind != MessageKind::Request {
        return Done::Quiet;
    }
    let Some(id) = m.id.as_ref().map(|i| i.get()) else {
        return Done::Quiet;
    };
    match exchange::find_response(&reply, id) {
        Some((msg, _)) if route::names_task(m) => match task_ids(gw, &msg, session, u) {
            Ok(msg) => Done::Answer(i, with_id(msg, id)),
            Err(why) => failed(Kind::UpstreamProtocol, why, None),
        },
        Some((msg, _)) => Done::Answer(i, with_id(msg, id)),
        None => {
            let why = format!("upstream \"{}\" sent no response to the request", up.name);
            failed(Kind::UpstreamProtocol, why, Some(reply.status))
        }
    }
}

/// The response `msg` from upstream `u` with its task ids made the gateway's (`mcp::tasks`).
fn task_ids(gw: &Gateway, msg: &[u8], session: [u8; 16], u: usize) -> Result<Vec<u8>, String> {
    let Ok(Body::Single(m)) = jsonrpc::scan(msg, &exchange::REPLY_LIMITS) else {
        return Ok(msg.to_vec());
    };
    let upstream = gw.upstreams[u].id;
    match crate::mcp::tasks::wrap_message(msg, &m, &gw.taskids, &session, upstream) {
        Ok(Some(out)) => Ok(out),
        Ok(None) => Ok(msg.to_vec()),
        Err(e) => Err(format!(
            "upstream \"{}\" sent a task id the gateway cannot carry ({e:?})",
            gw.upstreams[u].name
        )),
    }
}

/// One request whose reply names a task (`route::names_task`), on its own: sent like a part of
/// a batch, so a JSON reply is read and its task ids rewritten, and an event stream goes through
/// the rewriter (which rewrites them too).
pub(super) async fn one(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    req: &FedRequest,
    u: usize,
    body: &[u8],
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    ctx.upstream = Some(u);
    let Some(m) = ctx.first() else {
        return refuse(c, ctx, Refusal::new(Kind::InvalidRequest)).await;
    };
    // A 2026-07-28 request naming a task, for a session-era member: its tasks are bound to one
    // upstream session, and a held session is one of a pool every stateless client shares (its
    // discover offers no tasks for it).
    let stateless_held = !req.claims.protocol_version.is_legacy()
        && !gw.upstreams[u].legacy
        && super::super::upstream_session(gw, Some(&req.claims), u)
            .is_some_and(|s| s.protocol_version.is_legacy());
    if stateless_held {
        let why = format!(
            "tasks are not available for upstream \"{}\" to protocol version 2026-07-28 (it \
             speaks only the session era, where a task belongs to one session): send the \
             request without a task",
            gw.upstreams[u].name
        );
        return refuse(c, ctx, Refusal::because(Kind::MethodNotFound, why)).await;
    }
    match send(w, gw, req, (0, m), u, body, req.claims.id).await {
        Done::Answer(_, a) => super::reply_json(c, ctx, 200, &a, None).await,
        Done::Failed(_, r) => refuse(c, ctx, r).await,
        Done::Stream(s) => {
            stream_head(c, ctx, 200);
            let mut ids = crate::mcp::relay::EventIdState::default();
            relay(w, c, ctx, vec![*s], &mut ids, false).await
        }
        Done::Quiet => super::accepted(c, ctx).await,
    }
}

/// The response `msg` with the client's id bytes in place of the upstream's spelling of it.
fn with_id(msg: Vec<u8>, id: &[u8]) -> Vec<u8> {
    let Ok(Body::Single(r)) = jsonrpc::scan(&msg, &exchange::REPLY_LIMITS) else {
        return msg;
    };
    let Some(raw) = r.id.as_ref() else {
        return msg;
    };
    if raw.text == id {
        return msg;
    }
    let (start, end) = (raw.start, raw.start + raw.text.len());
    let mut out = Vec::with_capacity(msg.len() + id.len());
    out.extend_from_slice(&msg[..start]);
    out.extend_from_slice(id);
    out.extend_from_slice(&msg[end..]);
    out
}
