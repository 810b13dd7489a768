//! `subscriptions/listen` (2026-07-28) on a federated endpoint: one stream the gateway writes
//! itself, merging a listen stream opened at each stateless member that declares what the
//! client asked for. The gateway's acknowledgement comes first (after every member stream is
//! open, so a change made right after it is seen); then each member notification the client
//! opted in to, re-tagged with the client's subscription id. Members' acks, final results,
//! requests, progress and log messages never reach the client. Members may answer with SSE or
//! with NDJSON (`application/json`, one message a line). Session-era members contribute nothing.
//!
//! Files: `filter` (what a listen asks for), `judge` (one member message), `member` (one member
//! stream being read), `relay` (the merged stream written to the client); opening it all here.

mod filter;
mod judge;
mod member;
mod relay;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Instant;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::error::Kind;
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::Framing;
use crate::http::sse;
use crate::mcp::session::UpstreamSession;
use crate::observe::{names, Outcome};

use super::super::client::Client;
use super::super::context::Ctx;
use super::super::held::{self, Era};
use super::super::reject::Refusal;
use super::super::state::{Gateway, WorkerState};
use super::super::{refuse, upstream, Next};
use super::exchange;
use filter::Filter;
use judge::{judge, Verdict};
use member::{count_member_end, Member};
use relay::relay;

/// Largest message the gateway decodes from a member stream (a notification is small).
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Chunk trailers the decoder accepts.
const MAX_TRAILER: usize = 64 * 1024;
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// A listen stream's place on its worker (`limits.listen_streams_per_worker`): counted while
/// it lives. Merged streams and a single upstream's relayed ones take one alike.
pub(in crate::proxy) struct Slot<'a> {
    w: &'a WorkerState,
}

impl<'a> Slot<'a> {
    /// A place, unless `max` streams are open on the worker already (then logged).
    pub fn take(w: &'a WorkerState, max: usize) -> Option<Self> {
        let n = w.listens.get();
        if n >= max {
            tracing::warn!(
                limit = max,
                "subscriptions/listen refused: limits.listen_streams_per_worker reached on this worker"
            );
            return None;
        }
        w.listens.set(n + 1);
        metrics::gauge!(names::LISTEN_STREAMS_OPEN).increment(1.0);
        Some(Slot { w })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.w.listens.set(self.w.listens.get().saturating_sub(1));
        metrics::gauge!(names::LISTEN_STREAMS_OPEN).decrement(1.0);
    }
}

/// A member's listen: the client's request with the gateway's id and the member's filter.
fn member_body(req: &Value, id: &str, filter: &Filter) -> Vec<u8> {
    let mut r = req.clone();
    r["id"] = Value::from(id);
    if !r.get("params").is_some_and(Value::is_object) {
        r["params"] = json!({});
    }
    r["params"]["notifications"] = filter.to_json();
    serde_json::to_vec(&r).unwrap_or_default()
}

/// `subscriptions/listen` of a 2026-07-28 client on a federated endpoint (see the module).
pub(in crate::proxy) async fn listen(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    trace: Vec<u8>,
    body: Vec<u8>,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    let limits = &gw.config.limits;
    let Some(_slot) = Slot::take(w, limits.listen_streams_per_worker) else {
        return refuse(c, ctx, Refusal::new(Kind::ListenStreams)).await;
    };
    let raw_id = ctx.answer_id().unwrap_or(b"null").to_vec();
    let (Ok(req), Ok(client_id)) = (
        serde_json::from_slice::<Value>(&body),
        serde_json::from_slice::<Value>(&raw_id),
    ) else {
        return refuse(c, ctx, Refusal::new(Kind::InvalidRequest)).await;
    };
    let mut asked = Filter::from_json(&req["params"]["notifications"]);
    // Only URIs the endpoint exposes (as a read of them would be refused); a notification for a
    // sub-resource is checked again when it comes (`relay`).
    // (The endpoint's rules judge each update as it comes, knowing its upstream.)
    let resources = &gw.config.servers[server].resources.filter;
    asked.uris.retain(|u| resources.allows(u));

    // The members are asked on the caller's behalf.
    let on_behalf = ctx.caller_owned();
    let caller = on_behalf.as_ref().map(|o| o.caller());
    // Which members can deliver what: stateless ones, by what their discover declares.
    let mut stateless = Vec::new();
    for m in &gw.config.servers[server].upstreams {
        let u = m.upstream;
        // A session-era member is reached through the worker's held session, which cannot
        // listen; an HTTP+SSE member's stream belongs to a client session. Neither contributes.
        if !gw.upstreams[u].legacy && held::era(w, gw, u, caller).await == Era::Stateless {
            stateless.push(u);
        }
    }
    let discovered = join_all(stateless.iter().map(|&u| async move {
        (
            u,
            super::super::stateless::discover_upstream(w, gw, u, caller).await,
        )
    }))
    .await;
    let mut plans = Vec::new();
    for (u, res) in discovered {
        let caps = match res {
            Ok(v) => serde_json::from_str::<Value>(&v.to_string())
                .ok()
                .and_then(|v| v.get("capabilities").cloned())
                .unwrap_or_default(),
            Err(why) => {
                tracing::warn!(upstream = %gw.upstreams[u].name, error = %why, "subscriptions/listen: member left out (server/discover)");
                count_member_end(gw, u, "not_opened");
                continue;
            }
        };
        let f = asked.declared_by(&caps);
        if !f.is_empty() {
            plans.push((u, f));
        }
    }

    // Open them all at once; the client's ack waits until each is open.
    let serial = w.listen_serial.get().wrapping_add(1);
    w.listen_serial.set(serial);
    let opens = plans.into_iter().map(|(u, filter)| {
        let id = format!("tollgate-listen-{}-{serial}", w.index);
        let session = UpstreamSession {
            upstream: gw.upstreams[u].id,
            session_id: None,
            protocol_version: crate::mcp::modern::STATELESS_VERSIONS[0],
            replica: 0,
        };
        let msg = member_body(&req, &id, &filter);
        let out = exchange::post_request(gw, u, Some(&session), &trace, &msg);
        async move {
            (
                u,
                id,
                filter,
                upstream::exchange_as(w, gw, (u, 0), out, caller).await.0,
            )
        }
    });
    let opened = join_all(opens).await;
    let asked_any = !opened.is_empty();
    let mut members = Vec::new();
    let mut failures = Vec::new();
    for (u, id, filter, res) in opened {
        let name = &gw.upstreams[u].name;
        match res {
            Ok((mut conn, rhead)) if rhead.status == 200 => {
                let sse = rhead.is_sse(conn.buffered());
                conn.consume(rhead.len);
                members.push(Member {
                    u,
                    conn,
                    framing: rhead.framing,
                    left: match rhead.framing {
                        Framing::Length(n) => n,
                        _ => u64::MAX,
                    },
                    chunks: ChunkedDecoder::new(MAX_TRAILER),
                    sse: sse.then(|| sse::Decoder::new(MAX_MESSAGE_BYTES)),
                    line: Vec::new(),
                    id,
                    filter,
                    acked: false,
                    msgs: VecDeque::new(),
                    done: false,
                    ended: None,
                    finished: false,
                });
            }
            Ok((_, rhead)) => {
                failures.push(format!(
                    "upstream \"{name}\" answered subscriptions/listen with HTTP {}",
                    rhead.status
                ));
                count_member_end(gw, u, "not_opened");
            }
            Err(e) => {
                failures.push(e.reason);
                count_member_end(gw, u, "not_opened");
            }
        }
    }
    for f in &failures {
        tracing::warn!(error = %f, "subscriptions/listen: member stream not opened");
    }

    // Each member's own ack (within its request timeout): what it really honours.
    let now = w.shutdown.now();
    join_all(members.iter_mut().map(|m| {
        let deadline = now + gw.upstreams[m.u].request_timeout;
        await_ack(w, gw, m, &client_id, deadline)
    }))
    .await;
    members.retain(|m| {
        // Ended without acknowledging: whatever it sent before is not a subscription's.
        let gone = m.done && !m.acked;
        if gone {
            let name = &gw.upstreams[m.u].name;
            tracing::warn!(upstream = %name, "subscriptions/listen: member stream ended before its acknowledgement");
            count_member_end(gw, m.u, "not_opened");
        }
        !gone
    });
    if asked_any && members.is_empty() {
        let why = if failures.is_empty() {
            "no upstream's subscriptions/listen stream stayed open".to_string()
        } else {
            failures.join("; ")
        };
        return refuse(c, ctx, Refusal::because(Kind::UpstreamUnavailable, why)).await;
    }
    let mut honoured = Filter::default();
    for m in &members {
        honoured.add(&m.filter);
    }

    ctx.outcome = Outcome::Ok;
    super::stream::stream_head(c, ctx, 200);
    let mut events = Vec::new();
    let ack = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/subscriptions/acknowledged\",\"params\":{{\"_meta\":{{\"{SUBSCRIPTION_ID}\":{}}},\"notifications\":{}}}}}",
        String::from_utf8_lossy(&raw_id),
        honoured.to_json()
    );
    sse::write_event(&mut events, &Default::default(), ack.as_bytes());
    let why = relay(w, c, ctx, &mut members, (&client_id, &raw_id), events).await;
    metrics::counter!(names::LISTEN_STREAMS_ENDED_TOTAL, "reason" => why).increment(1);
    match why {
        "members_gone" if ctx.keep_after_response() && !ctx.http10 => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Reads member `m` until its acknowledgement (what it honours narrows its filter), its end,
/// or `deadline` (then it keeps the filter it was asked, and may still deliver).
async fn await_ack(
    w: &WorkerState,
    gw: &Gateway,
    m: &mut Member,
    client_id: &Value,
    deadline: Instant,
) {
    loop {
        if let Err(why) = m.take() {
            let name = &gw.upstreams[m.u].name;
            tracing::warn!(upstream = %name, error = %why, "subscriptions/listen: member stream unusable");
            m.done = true;
            return;
        }
        // Each message judged once; nothing may come before the ack, so what does is dropped
        // (not queued: a member cannot grow the gateway's memory before it acknowledges).
        // What follows the ack stays queued, for the client's stream.
        while let Some(msg) = m.msgs.pop_front() {
            if let (Verdict::Ack(said), _) = judge(&msg, client_id, (&m.filter, &|_| true), &m.id) {
                m.filter = m.filter.both(&said);
                m.acked = true;
                return;
            }
            let name = &gw.upstreams[m.u].name;
            tracing::debug!(upstream = %name, "subscriptions/listen: a message before the member's acknowledgement dropped");
        }
        if m.done {
            return;
        }
        let woke = monoio::select! {
            _ = m.conn.io.readable() => None,
            why = w.shutdown.wait_until(deadline) => Some(why),
        };
        match woke {
            None if m.spurious() => {}
            None => m.read().await,
            Some(_) => return,
        }
    }
}
