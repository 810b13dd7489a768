//! `subscriptions/listen` (2026-07-28) on a federated endpoint: one stream the gateway writes
//! itself, merging a listen stream opened at each stateless member that declares what the
//! client asked for. The gateway's acknowledgement comes first (after every member stream is
//! open, so a change made right after it is seen); then each member notification the client
//! opted in to, re-tagged with the client's subscription id. Members' acks, final results,
//! requests, progress and log messages never reach the client. Members may answer with SSE or
//! with NDJSON (`application/json`, one message a line). Session-era members contribute nothing.

use std::collections::VecDeque;
use std::time::Instant;

use futures_util::future::{join_all, select_all, FutureExt, LocalBoxFuture};
use serde_json::{json, Map, Value};

use crate::error::Kind;
use crate::http::chunked::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use crate::http::head::Framing;
use crate::http::pool::{Idleness, UpstreamConn};
use crate::http::sse;
use crate::mcp::session::UpstreamSession;
use crate::observe::{names, Outcome};

use super::super::client::Client;
use super::super::context::Ctx;
use super::super::held::{self, Era};
use super::super::reject::Refusal;
use super::super::shutdown::Woken;
use super::super::state::{Gateway, WorkerState};
use super::super::{refuse, upstream, Next};
use super::exchange;
use super::tables::TableKind;

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

/// What a listen asks for (`params.notifications`), or what a server honours of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Filter {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    /// `resourceSubscriptions`: URIs whose `resources/updated` the client wants.
    pub uris: Vec<String>,
}

impl Filter {
    /// From a `notifications` object (a request's or an acknowledgement's).
    pub fn from_json(v: &Value) -> Filter {
        let yes = |k: &str| v.get(k).and_then(Value::as_bool) == Some(true);
        let mut uris: Vec<String> = v
            .get("resourceSubscriptions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        uris.sort();
        uris.dedup();
        Filter {
            tools: yes("toolsListChanged"),
            prompts: yes("promptsListChanged"),
            resources: yes("resourcesListChanged"),
            uris,
        }
    }

    /// What a server declaring `caps` (its `server/discover` capabilities) can deliver of this:
    /// list changes where it declares `listChanged`, resource updates where it declares
    /// `resources.subscribe`.
    pub fn declared_by(&self, caps: &Value) -> Filter {
        let has = |kind: &str, what: &str| {
            caps.get(kind)
                .and_then(|c| c.get(what))
                .and_then(Value::as_bool)
                == Some(true)
        };
        Filter {
            tools: self.tools && has("tools", "listChanged"),
            prompts: self.prompts && has("prompts", "listChanged"),
            resources: self.resources && has("resources", "listChanged"),
            uris: if has("resources", "subscribe") {
                self.uris.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// Both (what was asked of a member, and what its acknowledgement says it honours).
    pub fn both(&self, other: &Filter) -> Filter {
        Filter {
            tools: self.tools && other.tools,
            prompts: self.prompts && other.prompts,
            resources: self.resources && other.resources,
            uris: self
                .uris
                .iter()
                .filter(|u| other.uris.contains(u))
                .cloned()
                .collect(),
        }
    }

    pub fn add(&mut self, other: &Filter) {
        self.tools |= other.tools;
        self.prompts |= other.prompts;
        self.resources |= other.resources;
        for u in &other.uris {
            if !self.uris.contains(u) {
                self.uris.push(u.clone());
            }
        }
        self.uris.sort();
    }

    pub fn is_empty(&self) -> bool {
        !self.tools && !self.prompts && !self.resources && self.uris.is_empty()
    }

    /// The `notifications` object: only what is honoured, as the spec writes it.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        if self.tools {
            o.insert("toolsListChanged".into(), Value::Bool(true));
        }
        if self.prompts {
            o.insert("promptsListChanged".into(), Value::Bool(true));
        }
        if self.resources {
            o.insert("resourcesListChanged".into(), Value::Bool(true));
        }
        if !self.uris.is_empty() {
            o.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(o)
    }

    /// Whether a `resources/updated` for `uri` was asked for: the URI itself, or one under it
    /// (the spec lets a server report a sub-resource).
    fn wants_uri(&self, uri: &str) -> bool {
        self.uris.iter().any(|s| {
            uri == s
                || uri.strip_prefix(s.as_str()).is_some_and(|rest| {
                    s.ends_with('/') || rest.starts_with('/') || rest.starts_with('#')
                })
        })
    }
}

/// What to do with one message of a member stream.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// Relay this (re-tagged) message.
    Relay(Vec<u8>),
    /// The member's acknowledgement: what it honours.
    Ack(Filter),
    /// The member's final result (or an error) to its listen: its stream is over.
    End,
    Drop,
}

/// Whether the caller may read resource `uri` (of upstream `u`) here and now: its updates are
/// relayed only then (the endpoint's rules and Rego, `proxy::authorize::usable`).
fn resource_shown(
    w: &WorkerState,
    gw: &crate::proxy::state::Gateway,
    server: usize,
    access: &super::super::authorize::Access,
    u: usize,
    uri: &str,
) -> bool {
    let item = crate::policy::rules::Item {
        kind: crate::policy::rules::ItemKind::Resource,
        name: uri,
        method: crate::mcp::Method::ResourcesRead,
        upstream: Some(u),
        annotations: 0,
    };
    super::super::authorize::usable(w, gw, server, access, &item)
}

/// Judges one message from a member stream (`member_id`: the gateway's id for that listen;
/// `exposed`: whether the endpoint exposes a resource URI, so an update for a sub-resource it
/// hides is dropped). Also returns the list whose change it announces, if any (the routing
/// tables go stale).
pub(super) fn judge(
    msg: &[u8],
    client_id: &Value,
    (filter, exposed): (&Filter, &dyn Fn(&str) -> bool),
    member_id: &str,
) -> (Verdict, Option<TableKind>) {
    let Ok(mut v) = serde_json::from_slice::<Value>(msg) else {
        return (Verdict::Drop, None);
    };
    let Some(o) = v.as_object() else {
        return (Verdict::Drop, None);
    };
    let Some(method) = o.get("method").and_then(Value::as_str) else {
        // A response: the member's own listen ending (a result or an error), or a stray one.
        let ours = o.get("id").and_then(Value::as_str) == Some(member_id);
        return (if ours { Verdict::End } else { Verdict::Drop }, None);
    };
    if o.contains_key("id") {
        // A request: nothing on a listen stream may ask the client anything.
        return (Verdict::Drop, None);
    }
    let (wanted, changed) = match method {
        "notifications/subscriptions/acknowledged" => {
            let honoured = o
                .get("params")
                .and_then(|p| p.get("notifications"))
                .map(Filter::from_json)
                .unwrap_or_default();
            return (Verdict::Ack(honoured), None);
        }
        "notifications/tools/list_changed" => (filter.tools, Some(TableKind::Tools)),
        "notifications/prompts/list_changed" => (filter.prompts, Some(TableKind::Prompts)),
        "notifications/resources/list_changed" => (filter.resources, Some(TableKind::Resources)),
        "notifications/resources/updated" => {
            let uri = o
                .get("params")
                .and_then(|p| p.get("uri"))
                .and_then(Value::as_str);
            (uri.is_some_and(|u| filter.wants_uri(u) && exposed(u)), None)
        }
        // Progress and log messages never go on a listen stream; anything else was not asked.
        _ => (false, None),
    };
    if !wanted {
        return (Verdict::Drop, changed);
    }
    // Re-tagged with the client's subscription id (the member's was its own listen's).
    if !v.get("params").is_some_and(Value::is_object) {
        v["params"] = json!({});
    }
    let params = &mut v["params"];
    if !params.get("_meta").is_some_and(Value::is_object) {
        params["_meta"] = json!({});
    }
    params["_meta"][SUBSCRIPTION_ID] = client_id.clone();
    match serde_json::to_vec(&v) {
        Ok(b) => (Verdict::Relay(b), changed),
        Err(_) => (Verdict::Drop, changed),
    }
}

/// One member's listen stream being read.
struct Member {
    u: usize,
    conn: UpstreamConn,
    framing: Framing,
    /// Bytes left of a Content-Length body.
    left: u64,
    chunks: ChunkedDecoder,
    /// `None`: NDJSON (one message a line).
    sse: Option<sse::Decoder>,
    line: Vec<u8>,
    /// The gateway's id for this listen.
    id: String,
    /// What it was asked for, then (after its ack) what it honours of that.
    filter: Filter,
    acked: bool,
    /// Messages decoded, not yet judged.
    msgs: VecDeque<Vec<u8>>,
    /// The body ended (or could not be read).
    done: bool,
    /// Why it ended, for the log and metric.
    ended: Option<&'static str>,
    /// It ended its subscription itself (its final result): an orderly end.
    finished: bool,
}

impl Member {
    /// Decodes what is buffered into messages.
    fn take(&mut self) -> Result<(), String> {
        let buf = self.conn.buffered();
        let mut payload = Vec::new();
        let used = match self.framing {
            Framing::Length(_) => {
                let n = self.left.min(buf.len() as u64) as usize;
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
                    .map_err(|e| format!("malformed chunked stream: {e}"))?;
                if self.chunks.is_done() {
                    self.done = true;
                }
                n
            }
            Framing::UntilClose => {
                payload.extend_from_slice(buf);
                buf.len()
            }
            Framing::None => {
                self.done = true;
                0
            }
        };
        self.conn.consume(used);
        self.decode(&payload)?;
        if self.done {
            self.finish()?;
        }
        Ok(())
    }

    fn decode(&mut self, payload: &[u8]) -> Result<(), String> {
        let msgs = &mut self.msgs;
        match &mut self.sse {
            Some(d) => d
                .feed(payload, |item| {
                    if let sse::Item::Event(e) = item {
                        if !e.data.is_empty() {
                            msgs.push_back(e.data.to_vec());
                        }
                    }
                })
                .map_err(|e| format!("unusable event stream: {e}")),
            None => {
                let mut rest = payload;
                while let Some(i) = memchr::memchr(b'\n', rest) {
                    self.line.extend_from_slice(&rest[..i]);
                    let line = std::mem::take(&mut self.line);
                    if !line.trim_ascii().is_empty() {
                        msgs.push_back(line);
                    }
                    rest = &rest[i + 1..];
                }
                self.line.extend_from_slice(rest);
                if self.line.len() > MAX_MESSAGE_BYTES {
                    return Err(format!("a line is larger than {MAX_MESSAGE_BYTES} bytes"));
                }
                Ok(())
            }
        }
    }

    /// The body ended: what is left of the last message.
    fn finish(&mut self) -> Result<(), String> {
        let msgs = &mut self.msgs;
        match &mut self.sse {
            Some(d) => d
                .finish(sse::AtEnd::Dispatch, |item| {
                    if let sse::Item::Event(e) = item {
                        if !e.data.is_empty() {
                            msgs.push_back(e.data.to_vec());
                        }
                    }
                })
                .map_err(|e| format!("unusable event stream: {e}")),
            None => {
                let line = std::mem::take(&mut self.line);
                if !line.trim_ascii().is_empty() {
                    msgs.push_back(line);
                }
                Ok(())
            }
        }
    }

    /// Reads more; marks the member done at the end of its body or on an error.
    async fn read(&mut self) {
        match self.conn.fill(0).await {
            Ok(0) | Err(_) => {
                if self.framing != Framing::UntilClose {
                    self.ended.get_or_insert("closed");
                }
                self.done = true;
                let _ = self.finish();
            }
            Ok(_) => {}
        }
    }

    /// Whether its socket woke with nothing to read (a TLS record without data): wait on.
    fn spurious(&mut self) -> bool {
        self.conn.io.is_tls()
            && self.conn.buffered().is_empty()
            && self.conn.io.peer_state() == Idleness::Silent
    }
}

fn count_member_end(gw: &Gateway, u: usize, reason: &'static str) {
    let name = gw.upstreams[u].name.clone();
    metrics::counter!(names::LISTEN_MEMBER_ENDS_TOTAL, "upstream" => name, "reason" => reason)
        .increment(1);
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

/// What woke the relay.
enum Woke {
    Member(usize),
    Client,
    Keepalive,
    Shutdown,
}

/// Writes `first` (the ack), then relays the members until the client leaves (`client_closed`),
/// the worker shuts down (`shutdown`) or every member stream has ended (`members_gone`); the
/// last two end with the listen's final result.
async fn relay(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    members: &mut Vec<Member>,
    (client_id, raw_id): (&Value, &[u8]),
    first: Vec<u8>,
) -> &'static str {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let server = ctx.server.unwrap_or_default();
    let keepalive = gw.config.limits.listen_keepalive;
    let access = super::super::authorize::Access::of(ctx);
    let mut events = first;
    let mut watch_client = true;
    // When the client was last written to: keep-alives count from it (a member whose messages
    // are all dropped does not keep the client's stream warm).
    let mut last_write = w.shutdown.now();
    // A member stream ended without its own final result.
    let mut lost = false;
    let fin = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"resultType\":\"complete\",\"_meta\":{{\"{SUBSCRIPTION_ID}\":{id}}}}}}}",
        id = String::from_utf8_lossy(raw_id)
    );
    loop {
        let mut stale = [false; 3];
        for m in members.iter_mut() {
            if let Err(why) = m.take() {
                let name = &gw.upstreams[m.u].name;
                tracing::warn!(upstream = %name, error = %why, "subscriptions/listen: member stream unusable");
                m.done = true;
                m.ended = Some("unusable");
            }
            while let Some(msg) = m.msgs.pop_front() {
                let member = m.u;
                let exposed = |u: &str| {
                    gw.config.servers[server].resources.filter.allows(u)
                        && resource_shown(w, gw, server, &access, member, u)
                };
                let (verdict, changed) = judge(&msg, client_id, (&m.filter, &exposed), &m.id);
                if let Some(k) = changed {
                    stale[k as usize] = true;
                }
                match verdict {
                    Verdict::Relay(b) => sse::write_event(&mut events, &Default::default(), &b),
                    Verdict::End => {
                        m.done = true;
                        m.finished = true;
                        m.ended.get_or_insert("ended");
                    }
                    Verdict::Ack(_) | Verdict::Drop => {}
                }
            }
        }
        for (k, changed) in [TableKind::Tools, TableKind::Prompts, TableKind::Resources]
            .into_iter()
            .zip(stale)
        {
            if changed {
                w.catalogs.mark_stale(gw, server, k);
            }
        }
        members.retain(|m| {
            if m.done {
                lost |= !m.finished;
                let reason = m.ended.unwrap_or("ended");
                let name = &gw.upstreams[m.u].name;
                tracing::info!(upstream = %name, reason, "subscriptions/listen: a member stream ended; the others go on");
                count_member_end(gw, m.u, reason);
            }
            !m.done
        });
        let over = members.is_empty();
        if over && lost {
            // A member stream broke off (an upstream restarting, a connection lost): the
            // client's ends the same way, with no final result, so it listens again (a final
            // result is an orderly end, after which it would not).
            write(c, ctx, &events);
            let _ = c.flush().await;
            return "members_lost";
        }
        if over {
            sse::write_event(&mut events, &Default::default(), fin.as_bytes());
        }
        if !events.is_empty() {
            write(c, ctx, &events);
            events.clear();
            last_write = w.shutdown.now();
        }
        if over {
            if !ctx.http10 {
                c.out.extend_from_slice(LAST_CHUNK);
            }
            let _ = c.flush().await;
            return "members_gone";
        }
        if c.flush().await.is_err() {
            return "client_closed";
        }
        let until = last_write + keepalive;
        let woke = loop {
            let which = {
                let mut waits: Vec<LocalBoxFuture<'_, Woke>> = members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        m.conn
                            .io
                            .readable()
                            .map(move |_| Woke::Member(i))
                            .boxed_local()
                    })
                    .collect();
                if watch_client {
                    waits.push(c.conn.io.readable().map(|_| Woke::Client).boxed_local());
                }
                waits.push(
                    w.shutdown
                        .wait_until(until)
                        .map(|why| match why {
                            Woken::Deadline => Woke::Keepalive,
                            Woken::Shutdown => Woke::Shutdown,
                        })
                        .boxed_local(),
                );
                select_all(waits).await.0
            };
            match which {
                Woke::Member(i) if members[i].spurious() => continue,
                Woke::Client => match c.conn.io.peer_state() {
                    Idleness::Closed => break Woke::Client,
                    // A pipelined request: the client is there; stop watching it.
                    Idleness::Unsolicited => watch_client = false,
                    Idleness::Silent => {}
                },
                other => break other,
            }
        };
        match woke {
            Woke::Member(i) => members[i].read().await,
            Woke::Client => return "client_closed",
            Woke::Keepalive => {
                let mut k = Vec::new();
                sse::write_comment(&mut k, b" keep-alive");
                k.push(b'\n');
                write(c, ctx, &k);
                last_write = w.shutdown.now();
            }
            Woke::Shutdown => {
                let mut e = Vec::new();
                sse::write_event(&mut e, &Default::default(), fin.as_bytes());
                write(c, ctx, &e);
                if !ctx.http10 {
                    c.out.extend_from_slice(LAST_CHUNK);
                }
                let _ = c.flush().await;
                return "shutdown";
            }
        }
    }
}

/// Appends bytes of the client's event stream (a chunk, or raw for HTTP/1.0).
fn write(c: &mut Client, ctx: &Ctx, bytes: &[u8]) {
    if ctx.http10 {
        c.out.extend_from_slice(bytes);
    } else {
        encode_chunk(&mut c.out, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(v: Value) -> Filter {
        Filter::from_json(&v)
    }

    #[test]
    fn a_member_is_asked_only_what_it_declares() {
        let asked = filter(json!({"toolsListChanged": true, "promptsListChanged": true,
                                  "resourcesListChanged": true, "resourceSubscriptions": ["a://x"]}));
        let caps = json!({"tools": {"listChanged": true}, "prompts": {}, "resources": {"subscribe": true}});
        let f = asked.declared_by(&caps);
        assert_eq!(
            f,
            Filter {
                tools: true,
                prompts: false,
                resources: false,
                uris: vec!["a://x".into()]
            }
        );
        assert_eq!(
            f.to_json(),
            json!({"toolsListChanged": true, "resourceSubscriptions": ["a://x"]})
        );
        assert!(filter(json!({"toolsListChanged": false})).is_empty());
    }

    #[test]
    fn notifications_are_retagged_and_filtered() {
        let f = filter(json!({"toolsListChanged": true, "resourceSubscriptions": ["file:///d"]}));
        let id = json!(7);
        let msg = br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":"7"}}}"#;
        let (v, changed) = judge(msg, &id, (&f, &|_| true), "m-1");
        assert_eq!(changed, Some(TableKind::Tools));
        let Verdict::Relay(b) = v else {
            panic!("{v:?}")
        };
        let out: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(out["params"]["_meta"][SUBSCRIPTION_ID], json!(7));
        // Not opted in: dropped, but the tables still go stale.
        let msg = br#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}"#;
        assert_eq!(
            judge(msg, &id, (&f, &|_| true), "m-1"),
            (Verdict::Drop, Some(TableKind::Prompts))
        );
        // No params at all: given some, with the tag.
        let msg = br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///d/e"}}"#;
        assert!(matches!(
            judge(msg, &id, (&f, &|_| true), "m-1").0,
            Verdict::Relay(_)
        ));
        let msg = br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///dx"}}"#;
        assert_eq!(judge(msg, &id, (&f, &|_| true), "m-1").0, Verdict::Drop);
        for never in [
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"sampling/createMessage","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":"other","result":{}}"#,
            r#"not json"#,
        ] {
            assert_eq!(
                judge(never.as_bytes(), &id, (&f, &|_| true), "m-1").0,
                Verdict::Drop,
                "{never}"
            );
        }
        let fin = br#"{"jsonrpc":"2.0","id":"m-1","result":{"resultType":"complete"}}"#;
        assert_eq!(judge(fin, &id, (&f, &|_| true), "m-1").0, Verdict::End);
        let ack = br#"{"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{"notifications":{"toolsListChanged":true}}}"#;
        assert_eq!(
            judge(ack, &id, (&f, &|_| true), "m-1").0,
            Verdict::Ack(filter(json!({"toolsListChanged": true})))
        );
    }

    #[test]
    fn a_resource_update_for_a_uri_the_endpoint_hides_is_dropped() {
        let id = json!(1);
        let f = filter(json!({"resourceSubscriptions": ["file:///docs/"]}));
        let upd = |uri: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{{"uri":"{uri}"}}}}"#
            )
        };
        let hides_secret = |u: &str| !u.contains("secret");
        let shown = upd("file:///docs/a.md");
        let hidden = upd("file:///docs/secret.md");
        assert!(matches!(
            judge(shown.as_bytes(), &id, (&f, &hides_secret), "m-1").0,
            Verdict::Relay(_)
        ));
        assert_eq!(
            judge(hidden.as_bytes(), &id, (&f, &hides_secret), "m-1").0,
            Verdict::Drop
        );
    }

    #[test]
    fn a_member_body_carries_the_gateways_id_and_the_members_filter() {
        let req = json!({"jsonrpc": "2.0", "id": 5, "method": "subscriptions/listen",
                         "params": {"_meta": {"k": 1}, "notifications": {"toolsListChanged": true, "promptsListChanged": true}}});
        let f = filter(json!({"promptsListChanged": true}));
        let b: Value = serde_json::from_slice(&member_body(&req, "g-1", &f)).unwrap();
        assert_eq!(b["id"], "g-1");
        assert_eq!(
            b["params"]["notifications"],
            json!({"promptsListChanged": true})
        );
        assert_eq!(b["params"]["_meta"]["k"], 1);
    }
}
