//! The audit record of a request (`audit:`): what the scan phase keeps of a recorded message's
//! arguments (`capture`, the only part that reads the body) and the JSON line per recorded
//! message the record phase formats into its worker's buffer (`write`). Nothing here runs, or
//! costs anything, when `audit.enabled` is false.

use std::time::Duration;

use crate::error::Side;
use crate::http::head::ResponseHead;
use crate::jsonrpc::probe::{Coding, ReplyProbe};
use crate::jsonrpc::{Message, MessageKind};
use crate::mcp::Method;
use crate::observe::access::{json_bounded, MAX_TEXT_FIELD, MAX_WIRE_FIELD};
use crate::observe::audit::Settings;

use super::context::{Ctx, MessageCtx};
use super::state::WorkerState;

/// Arguments recorded at most per message (the rest are left out: a record stays bounded).
const MAX_KEYS: usize = 64;

/// Each message's arguments as its record shows them: one buffer for the request, and where
/// each message's part of it is (message index, start, end): one allocation, not one per message.
#[derive(Default)]
pub struct Args {
    text: Vec<u8>,
    at: smallvec::SmallVec<[(u32, u32, u32); 1]>,
}

/// Spare `Args` per worker thread, at most this many (a burst's leftovers stay bounded).
const SPARES: usize = 64;

thread_local! {
    // Boxes kept whole: the box's own allocation is one of the two this saves.
    #[allow(clippy::vec_box)]
    static SPARE: std::cell::RefCell<Vec<Box<Args>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A request's `Args`: taken from its thread's spares and given back, cleared, when the request
/// ends (an allocation and a free per recorded request less, each of the box and its text).
pub struct Kept(Option<Box<Args>>);

impl Kept {
    fn take() -> Kept {
        let spare = SPARE.with(|s| s.borrow_mut().pop());
        Kept(Some(spare.unwrap_or_default()))
    }
}

impl std::ops::Deref for Kept {
    type Target = Args;
    fn deref(&self) -> &Args {
        self.0.as_deref().expect("kept until dropped")
    }
}

impl std::ops::DerefMut for Kept {
    fn deref_mut(&mut self) -> &mut Args {
        self.0.as_deref_mut().expect("kept until dropped")
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let Some(mut a) = self.0.take() else { return };
        if a.text.capacity() > 16 * 1024 {
            return;
        }
        a.text.clear();
        a.at.clear();
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARES {
                s.push(a);
            }
        });
    }
}

impl Args {
    fn of(&self, i: usize) -> Option<&[u8]> {
        let &(_, start, end) = self.at.iter().find(|a| a.0 as usize == i)?;
        self.text.get(start as usize..end as usize)
    }
}

/// Keeps message `i`'s arguments for its record when `settings` records its method: their keys,
/// or for a tool listed in `arguments.values` their values as text (a string's content, any
/// other value as its JSON), each redacted by every `arguments.redact` pattern.
pub fn capture(
    settings: &Settings,
    args: &mut Option<Kept>,
    (i, mc): (usize, &MessageCtx),
    m: &Message<'_>,
) {
    if !settings.records(mc.method) {
        return;
    }
    let Some(raw) = m.arguments.as_ref() else {
        return;
    };
    let all = args.get_or_insert_with(Kept::take);
    let start = all.text.len();
    if all.text.capacity() == 0 {
        all.text.reserve(128);
    }
    let out = &mut all.text;
    let tool = m.name.as_ref().map(|n| &*n.value);
    if mc.method == Method::ToolsCall && tool.is_some_and(|t| settings.values_of(t)) {
        use sonic_rs::JsonValueTrait;
        out.push(b'{');
        for (i, kv) in sonic_rs::to_object_iter(raw.text).enumerate() {
            let Ok((k, v)) = kv else { break };
            if i == MAX_KEYS {
                break;
            }
            if i > 0 {
                out.push(b',');
            }
            json_bounded(out, k.as_bytes(), MAX_WIRE_FIELD);
            out.push(b':');
            let text = v.as_str().unwrap_or_else(|| v.as_raw_str());
            let mut value = std::borrow::Cow::Borrowed(text);
            for r in &settings.redact {
                if let std::borrow::Cow::Owned(s) = r.replace_all(&value, "[redacted]") {
                    value = std::borrow::Cow::Owned(s);
                }
            }
            json_bounded(out, value.as_bytes(), MAX_TEXT_FIELD);
        }
        out.push(b'}');
    } else {
        out.push(b'[');
        for (i, k) in m.argument_keys().enumerate() {
            if i == MAX_KEYS {
                break;
            }
            if i > 0 {
                out.push(b',');
            }
            json_bounded(out, k.as_bytes(), MAX_WIRE_FIELD);
        }
        out.push(b']');
    }
    let end = all.text.len();
    all.at.push((i as u32, start as u32, end as u32));
}

/// Sets up the reply probe (`jsonrpc::probe`) before a reply is relayed, when a message of the
/// request is recorded: its record then carries the upstream's JSON-RPC error code. Whether it
/// did; with audit off this reads one flag.
pub fn probe(ctx: &mut Ctx, sse: bool) -> bool {
    probe_coded(ctx, sse, None)
}

/// `probe` for a reply relayed as the upstream sent it: its head (`rhead` over `head_bytes`)
/// says its `Content-Encoding`, looked up only when a probe is set up; a gzip or deflate body
/// is decoded as it passes (`audit.max_decoded` bytes at most), any other is not read.
pub fn probe_relayed(ctx: &mut Ctx, sse: bool, rhead: &ResponseHead, head_bytes: &[u8]) -> bool {
    probe_coded(ctx, sse, Some((rhead, head_bytes)))
}

fn probe_coded(ctx: &mut Ctx, sse: bool, head: Option<(&ResponseHead, &[u8])>) -> bool {
    let settings = &ctx.gw().config.audit;
    if !settings.enabled
        || ctx.reply_code != crate::jsonrpc::probe::ReplyCode::Unread
        || !ctx
            .messages
            .iter()
            .any(|m| m.kind == MessageKind::Request && m.id.is_some() && settings.records(m.method))
    {
        return false;
    }
    let coding = head.map_or(Coding::Identity, |(h, b)| {
        super::upstream::content_coding(h, b)
    });
    ctx.reply = Some(ReplyProbe::coded(sse, coding, settings.max_decoded));
    true
}

/// `bytes` of the reply as the client gets them (a body the gateway wrote whole, or whole
/// events of a stream it rewrote) to the reply probe, set up first (`probe`) if none is yet.
pub fn reply_bytes(ctx: &mut Ctx, sse: bool, bytes: &[u8]) {
    if ctx.reply.is_none() && !probe(ctx, sse) {
        return;
    }
    if let Some(p) = ctx.reply.as_deref_mut() {
        p.feed(bytes);
    }
}

/// The record phase's part: one line per recorded message of the request.
pub fn write(w: &WorkerState, ctx: &Ctx, elapsed: Duration, bytes_out: u64) {
    let gw = ctx.gw();
    let settings = &gw.config.audit;
    if let Some(why) = ctx.reply.as_ref().and_then(|p| p.unread()) {
        tracing::debug!(
            reason = why.as_str(),
            "reply not read for its JSON-RPC errors to its end (audit.max_decoded, or its Content-Encoding)"
        );
        metrics::counter!(crate::observe::names::AUDIT_REPLIES_UNREAD_TOTAL, "reason" => why.as_str())
            .increment(1);
    }
    for (i, m) in ctx.messages.iter().enumerate() {
        // Decisions are kept in the order they were made (a batch decides its messages
        // concurrently; a message refused before its check has none): each names its message.
        let decision = ctx.decisions.iter().find(|d| usize::from(d.msg) == i);
        if !settings.records(m.method)
            || !matches!(m.kind, MessageKind::Request | MessageKind::Notification)
        {
            continue;
        }
        // A message of a batch the gateway refused on its own (an unknown name, say).
        let refused = ctx
            .refused_messages
            .iter()
            .find(|(j, _)| usize::from(*j) == i)
            .map(|&(_, kind)| kind);
        w.audit.push(&gw.audit, settings, |b| {
            let args = ctx.audit_args.as_ref().and_then(|a| a.of(i));
            let msg = Recorded { m, args, refused };
            line(b, w, ctx, Some(msg), decision, elapsed, bytes_out);
        });
    }
    // A request refused with no message read (a POST refused before its body: authentication,
    // mostly; a GET or DELETE of a session or stream; a head refused for its Host or Origin)
    // has nothing to say what it asked for; who was refused, and why, is still a record,
    // whatever `methods` says. A path no endpoint serves (404 before any phase) is not.
    if ctx.messages.is_empty()
        && ctx.refused.is_some()
        && (ctx.server.is_some() || ctx.http_method == crate::http::head::HttpMethod::Other)
    {
        w.audit.push(&gw.audit, settings, |b| {
            line(b, w, ctx, None, None, elapsed, bytes_out);
        });
    }
}

/// The message a record is about: what the scan read, its recorded arguments, and the
/// gateway's refusal of it alone (a batch's message), if any.
struct Recorded<'a> {
    m: &'a MessageCtx,
    args: Option<&'a [u8]>,
    refused: Option<crate::error::Kind>,
}

fn line(
    b: &mut Vec<u8>,
    w: &WorkerState,
    ctx: &Ctx,
    m: Option<Recorded<'_>>,
    decision: Option<&super::authorize::Decided>,
    elapsed: Duration,
    bytes_out: u64,
) {
    let gw = ctx.gw();
    // Each key goes out with its punctuation as one literal (`,"key":`).
    macro_rules! num {
        ($key:literal, $n:expr $(,)?) => {{
            b.extend_from_slice(concat!(",\"", $key, "\":").as_bytes());
            crate::http::response::push_u64(b, $n);
        }};
    }
    macro_rules! text {
        ($key:literal, $v:expr, $max:expr $(,)?) => {{
            b.extend_from_slice(concat!(",\"", $key, "\":").as_bytes());
            json_bounded(b, $v, $max);
        }};
    }
    // A value the gateway names itself (a code, a label): plain ASCII, nothing to escape.
    macro_rules! word {
        ($key:literal, $v:expr) => {{
            let v: &'static str = $v;
            debug_assert!(v
                .bytes()
                .all(|c| c.is_ascii_graphic() && c != b'"' && c != b'\\'));
            b.extend_from_slice(concat!(",\"", $key, "\":\"").as_bytes());
            b.extend_from_slice(v.as_bytes());
            b.push(b'"');
        }};
    }
    b.extend_from_slice(b"{\"time\":\"");
    // When the record phase ran (its elapsed time's end), as wall time from the worker's tick.
    w.access
        .timestamp_at(b, w.shutdown.wall_at(ctx.started + elapsed));
    b.push(b'"');
    num!("worker", w.index as u64);
    if let Some(id) = m.as_ref().and_then(|r| r.m.id.as_ref()) {
        let id = id.get();
        // The id as the client spelled it (the scanner checked it is a JSON number or string).
        if id.len() <= MAX_WIRE_FIELD {
            b.extend_from_slice(b",\"request_id\":");
            b.extend_from_slice(id);
        } else {
            text!("request_id", id, MAX_WIRE_FIELD);
        }
    }
    if let Some(t) = &ctx.trace {
        hex(b, "trace_id", &t.trace_id);
        hex(b, "span_id", &t.span_id);
    }
    if let Some(p) = &ctx.principal {
        text!("subject", p.subject.as_bytes(), MAX_WIRE_FIELD);
        if let Some(cl) = &p.client {
            text!("client", cl.as_bytes(), MAX_WIRE_FIELD);
        }
        if let Some(t) = &p.tenant {
            text!("tenant", t.as_bytes(), MAX_WIRE_FIELD);
        }
    }
    if let Some(f) = ctx.auth_failure {
        word!("auth_failure", f.reason());
    }
    if let Some(id) = &ctx.session {
        let mut h = [0u8; 16];
        w.audit.session_hash(&gw.audit, id, &mut h);
        // 16 lower-case hex digits: nothing to escape.
        b.extend_from_slice(b",\"session\":\"");
        b.extend_from_slice(&h);
        b.push(b'"');
    }
    if let Some(s) = ctx.server {
        b.extend_from_slice(b",\"server\":");
        b.extend_from_slice(&gw.audit_names.servers[s]);
    }
    if let Some(u) = ctx.upstream {
        b.extend_from_slice(b",\"upstream\":");
        b.extend_from_slice(&gw.audit_names.upstreams[u]);
    }
    if let Some(Recorded { m, args, .. }) = &m {
        word!("method", m.method_label());
        if let Some(n) = &m.name {
            match m.method {
                Method::ToolsCall => text!("tool", n.get(), MAX_WIRE_FIELD),
                Method::PromptsGet => text!("prompt", n.get(), MAX_WIRE_FIELD),
                _ => text!("name", n.get(), MAX_WIRE_FIELD),
            }
        }
        if let Some(u) = &m.uri {
            text!("resource", u.get(), MAX_WIRE_FIELD);
        }
        if let Some(a) = args {
            b.extend_from_slice(b",\"arguments\":");
            b.extend_from_slice(a);
        }
    }
    if ctx.batch {
        num!("batch", ctx.messages.len() as u64);
    }
    // Decision and reason: the gateway's refusal of the request decides; else its refusal of
    // this message (in a batch); else this message's authorization decision; else the request
    // was relayed as it came (`relayed`).
    let refused = ctx
        .refused
        .as_ref()
        .map(|r| r.kind)
        .or(m.as_ref().and_then(|r| r.refused));
    let (verdict, reason, code) = match (refused, decision) {
        (Some(kind), _) => (
            match kind.side() {
                Side::Client => "deny",
                _ => "error",
            },
            kind.as_str(),
            Some(i64::from(kind.rpc_code())),
        ),
        (None, Some(d)) => (
            if d.allowed { "allow" } else { "deny" },
            d.reason.as_str(),
            None,
        ),
        (None, None) => ("allow", "relayed", None),
    };
    // Not refused by the gateway: the upstream's own JSON-RPC error, if its reply was one.
    let code = code.or_else(|| {
        let id = m.as_ref()?.m.id.as_ref()?.get();
        match ctx.reply_code {
            // Read whole: one response, to this (single) request.
            crate::jsonrpc::probe::ReplyCode::Read(code) if !ctx.batch => code,
            _ => ctx.reply.as_ref()?.error_for(Some(id), !ctx.batch),
        }
    });
    word!("decision", verdict);
    word!("reason", reason);
    if let Some(d) = decision {
        if refused.is_some() {
            word!("authz", d.reason.as_str());
        }
        if let (Some(rule), Some(s)) = (d.rule, ctx.server) {
            if let Some(name) = gw.audit_names.rules[s].get(usize::from(rule)) {
                b.extend_from_slice(b",\"rule\":");
                b.extend_from_slice(name);
            }
        }
    }
    if let Some(r) = ctx.refused.as_ref().filter(|r| !r.reason.is_empty()) {
        text!("detail", r.reason.as_bytes(), MAX_TEXT_FIELD);
    }
    if let Some(code) = code {
        b.extend_from_slice(b",\"error_code\":");
        if code < 0 {
            b.push(b'-');
        }
        crate::http::response::push_u64(b, code.unsigned_abs());
    }
    num!("status", u64::from(ctx.status));
    if let Some(Ok(s)) = ctx.upstream_call.map(|u| u.result) {
        num!("upstream_status", u64::from(s));
    }
    word!("outcome", ctx.outcome.as_str());
    num!("latency_us", elapsed.as_micros() as u64);
    num!("bytes_in", ctx.bytes_in);
    num!("bytes_out", bytes_out);
    num!(
        "estimated_tokens",
        crate::observe::tokens::estimated_tokens(bytes_out),
    );
    b.push(b'}');
}

/// The names records repeat, as the JSON strings a record writes (cut to `MAX_TEXT_FIELD` and
/// escaped once per configuration, not once per record): each server's path, each upstream's
/// name, and each server's rules' names, by their indexes in the configuration.
#[derive(Default)]
pub struct Names {
    servers: Vec<Box<[u8]>>,
    upstreams: Vec<Box<[u8]>>,
    rules: Vec<Vec<Box<[u8]>>>,
}

impl Names {
    pub fn of<'a>(
        config: &crate::config::Config,
        upstreams: impl Iterator<Item = &'a str>,
    ) -> Names {
        let json = |s: &str| {
            let mut b = Vec::new();
            json_bounded(&mut b, s.as_bytes(), MAX_TEXT_FIELD);
            b.into_boxed_slice()
        };
        Names {
            servers: config.servers.iter().map(|s| json(&s.path)).collect(),
            upstreams: upstreams.map(json).collect(),
            rules: config
                .servers
                .iter()
                .map(|s| {
                    s.rules.as_deref().map_or(Vec::new(), |r| {
                        r.rules.iter().map(|r| json(&r.name)).collect()
                    })
                })
                .collect(),
        }
    }
}

/// `,"key":"<lower-case hex of bytes>"`, without allocating.
fn hex(b: &mut Vec<u8>, key: &str, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    b.extend_from_slice(b",\"");
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(b"\":\"");
    for x in bytes {
        b.push(DIGITS[usize::from(x >> 4)]);
        b.push(DIGITS[usize::from(x & 15)]);
    }
    b.push(b'"');
}
