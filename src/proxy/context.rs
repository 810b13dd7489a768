//! The request context: one value that travels the phases of a request and collects what each
//! learned (server, upstream, era, session, each JSON-RPC message's method, id and name, timings,
//! bytes, the decision and its reason), and the record phase that runs once for every request,
//! refusals included: it counts the request, writes its access line and its audit records
//! (`proxy::audit_record`). No phase takes more than (worker, client, context).

use std::rc::Rc;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::error::{Era, Kind, Side};
use crate::http::head::HttpMethod;
use crate::jsonrpc::{Message, MessageKind};
use crate::mcp::Method;
use crate::observe::access::{AccessLog, Value};
use crate::observe::Outcome;

use super::client::Client;
use super::state::{Gateway, Generation, WorkerState};

/// Text copied out of the body for later phases (ids, tool names): inline up to 46 bytes, so
/// the common case allocates nothing; 48 bytes either way (every message carries five). Made
/// only from text (`&str`), so reading it as text needs no UTF-8 check.
#[derive(Clone)]
pub struct Short(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; 46] },
    Heap(Box<str>),
}

impl Short {
    pub fn new(text: &str) -> Self {
        let raw = text.as_bytes();
        Short(if raw.len() <= 46 {
            let mut bytes = [0; 46];
            bytes[..raw.len()].copy_from_slice(raw);
            Repr::Inline {
                len: raw.len() as u8,
                bytes,
            }
        } else {
            Repr::Heap(text.into())
        })
    }

    /// An id's JSON text as the body spells it (the scanner checked the body is UTF-8).
    pub fn raw(text: &[u8]) -> Self {
        Short::new(&String::from_utf8_lossy(text))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: `new` copied these bytes whole from a `&str`.
            Repr::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..*len as usize])
            },
            Repr::Heap(b) => b,
        }
    }

    pub fn get(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

/// What the gateway read of one JSON-RPC message: every message of a batch gets its own, so a
/// decision per tool cannot be dodged by putting the call second in a batch.
pub struct MessageCtx {
    pub kind: MessageKind,
    pub method: Method,
    /// The raw JSON text of the id, as the client spelled it.
    pub id: Option<Short>,
    /// `params.name` (a tool or prompt name), decoded.
    pub name: Option<Short>,
    /// `params.uri` (a resource), decoded.
    pub uri: Option<Short>,
    /// Where `params.name`'s string token (quotes included) lies in the body: federation
    /// splices the upstream's own name there.
    pub name_span: Option<std::ops::Range<u32>>,
    /// Where the id's token starts in the body (a wrapped id is replaced there).
    pub id_start: Option<u32>,
    /// The method as the body spells it, for methods the enum does not name (`Other`,
    /// `OtherNotification`): what `Mcp-Method` must mirror.
    pub method_text: Option<Short>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]` (2026-07-28), decoded.
    pub meta_version: Option<Short>,
    /// `params._meta["io.modelcontextprotocol/clientCapabilities"]` is there (an object).
    pub meta_capabilities: bool,
    /// Where `params`' and `params._meta`'s `{` are in the body.
    pub params_at: Option<u32>,
    pub meta_at: Option<u32>,
    /// `_meta` fields can be added (`params` and `_meta` are objects or absent), and which
    /// `io.modelcontextprotocol/…` keys `_meta` has (`jsonrpc::META_*_KEY`).
    pub meta_splice_ok: bool,
    pub meta_keys: u8,
    /// `initialize` only: the `params.protocolVersion` the client asked for, when it is one.
    pub requested_version: Option<crate::mcp::ProtocolVersion>,
    /// `server/discover` only: the client's `_meta` capabilities name sampling, elicitation or
    /// roots (what a held upstream session cannot carry).
    pub asks_client_features: bool,
    /// This message's bytes in the body (a batch's element: federation sends it on its own).
    pub span: std::ops::Range<u32>,
    /// `params.task` is present (a task-augmented request: its reply names a task).
    pub task: bool,
    /// Where `params.taskId`'s string token (quotes included) lies in the body (`tasks/get`,
    /// `tasks/result`, `tasks/cancel`): federation reads the gateway task id there and puts
    /// the upstream's back.
    pub task_id_span: Option<std::ops::Range<u32>>,
    /// `tools/call` only, and only when a traffic rule keys by `arguments`: the hash of
    /// `params.arguments` (`policy::traffic::arguments_hash`); 0 otherwise, and for a call with
    /// no arguments object.
    pub arguments_hash: u64,
    /// Where an unescaped `params._meta.traceparent` string of the version-00 length (55)
    /// starts in the body, after its quote (`proxy::trace_context` reads it and puts the
    /// gateway's span there). Four bytes: every request's future holds this struct.
    pub traceparent: Option<std::num::NonZeroU32>,
}

impl MessageCtx {
    /// What `m` says, with its arguments hashed when `hash` (a rule keys by them) and it is a
    /// call. Built as one value (no copy of it to set the hash after).
    pub fn hashed(m: &Message<'_>, hash: bool) -> Self {
        let method = m
            .method
            .as_ref()
            .map_or(Method::Other, |s| Method::parse(&s.value));
        MessageCtx {
            kind: m.kind,
            method,
            method_text: match method {
                Method::Other | Method::OtherNotification => {
                    m.method.as_ref().map(|s| Short::new(&s.value))
                }
                _ => None,
            },
            meta_version: m
                .meta_protocol_version
                .as_ref()
                .map(|s| Short::new(&s.value)),
            meta_capabilities: m.meta_client_capabilities.is_some(),
            params_at: m.params_open.map(|i| i as u32),
            meta_splice_ok: !m.params_not_object && !m.meta_not_object,
            meta_keys: m.meta_keys,
            meta_at: m.meta_open.map(|i| i as u32),
            asks_client_features: method == Method::ServerDiscover
                && m.meta_client_capabilities.as_ref().is_some_and(|raw| {
                    ["sampling", "elicitation", "roots"].iter().any(|k| {
                        sonic_rs::get(raw.text, [*k]).is_ok_and(|v| {
                            use sonic_rs::JsonValueTrait;
                            !v.is_null()
                        })
                    })
                }),
            requested_version: match method {
                Method::Initialize => m
                    .protocol_version
                    .as_ref()
                    .and_then(|v| crate::mcp::ProtocolVersion::parse(&v.value)),
                _ => None,
            },
            id: m.id.as_ref().map(|r| Short::raw(r.text)),
            name: m.name.as_ref().map(|s| Short::new(&s.value)),
            uri: m.uri.as_ref().map(|s| Short::new(&s.value)),
            name_span: m
                .name
                .as_ref()
                .map(|s| s.span.start as u32..s.span.end as u32),
            id_start: m.id.as_ref().map(|r| r.start as u32),
            span: m.span.start as u32..m.span.end as u32,
            task: m.task,
            task_id_span: m
                .task_id
                .as_ref()
                .map(|s| s.span.start as u32..s.span.end as u32),
            arguments_hash: if hash && method == crate::mcp::Method::ToolsCall {
                m.arguments
                    .as_ref()
                    .map_or(0, |a| crate::policy::traffic::arguments_hash(a.text))
            } else {
                0
            },
            traceparent: m
                .meta_traceparent
                .as_ref()
                .filter(|s| matches!(s.value, std::borrow::Cow::Borrowed(_)))
                .filter(|s| s.span.len() == crate::observe::trace::TRACEPARENT_LEN + 2)
                .and_then(|s| std::num::NonZeroU32::new(s.span.start as u32 + 1)),
        }
    }
}

/// A refusal the gateway answered with (kind and the reason it gave).
pub struct Refused {
    pub kind: Kind,
    pub reason: String,
}

/// The upstream exchange of a request, for metrics and the access line.
#[derive(Clone, Copy)]
pub struct UpstreamCall {
    pub upstream: usize,
    /// The upstream's HTTP status, or why there was no usable one.
    pub result: Result<u16, Kind>,
    /// From sending the request to having the response head (and, for a vetted reply, its body).
    pub elapsed: Duration,
}

/// Everything known about one request, phase after phase.
pub struct Ctx {
    /// The config this request runs on, from its first phase to its record (a reload in
    /// between changes nothing for it).
    pub gen: Rc<Generation>,
    pub started: Instant,
    pub http_method: HttpMethod,
    /// HTTP/1.0 client.
    pub http10: bool,
    pub era: Era,
    /// The client wants the connection kept and the worker is not shutting down.
    pub keep: bool,
    /// The request has body bytes still unread: a refusal now must close the connection.
    pub body_pending: bool,
    /// CORS response headers for an allowed browser origin (empty without one).
    pub cors: Vec<u8>,
    /// Index of the routed server in the running config, and its path.
    pub server: Option<usize>,
    /// Index of the upstream the request went to.
    pub upstream: Option<usize>,
    /// The client session's random id, once its token was opened or sealed.
    pub session: Option<[u8; 16]>,
    /// The verified client certificate (mTLS listener): what the identity phase reads.
    pub peer: Option<Rc<crate::tls::PeerIdentity>>,
    /// The client's address (rules with `sources` decide on it).
    pub source: Option<std::net::IpAddr>,
    /// Who is calling, once the authenticate phase established it (endpoints with `auth`).
    pub principal: Option<crate::policy::PrincipalRef>,
    /// Why the authenticate phase refused the request (401), for the access line and audit.
    pub auth_failure: Option<crate::policy::AuthFailure>,
    /// The raw bearer token the caller presented (set by the authenticate phase): the
    /// `subject_token` of an upstream token exchange (`proxy::credentials`). Never forwarded.
    pub credential: Option<std::rc::Rc<str>>,
    /// Every authorization decision made for this request (one per decided item: each message
    /// of a batch on its own), in order; counted by the record phase.
    pub decisions: SmallVec<[super::authorize::Decided; 1]>,
    /// The JSON-RPC messages of a POST body, in order (one unless a batch).
    pub messages: SmallVec<[MessageCtx; 1]>,
    pub batch: bool,
    /// Request body bytes.
    pub bytes_in: u64,
    pub upstream_call: Option<UpstreamCall>,
    /// When the upstream's reply head (and a vetted body) was in: the relay's `pool_put`
    /// time (never after the put), no clock read of its own.
    pub vetted_at: Option<Instant>,
    /// A `tools/call` whose tool has its own `upstreams[].tool_timeouts` entry: the wait for
    /// the response head and between body reads, instead of `request_timeout`.
    pub tool_timeout: Option<Duration>,
    /// The HTTP status sent to the client (0 if nothing was sent).
    pub status: u16,
    pub outcome: Outcome,
    pub refused: Option<Refused>,
    /// Refusals of single messages of a batch the gateway answered, by message index (each
    /// counted like a refused request, and in its message's audit record; the batch itself was
    /// served).
    pub refused_messages: Vec<(u16, Kind)>,
    /// Calls this request holds under concurrency limits (`proxy::limit`): released when the
    /// context is dropped, however the request ended.
    pub held: Vec<super::limit::Held>,
    /// The W3C trace this request belongs to and the gateway's span for it, once known.
    pub trace: Option<crate::observe::trace::TraceIds>,
    /// The messages' arguments as their audit records show them, when `audit` records a method
    /// of this request (`proxy::audit_record::capture`): boxed, one pointer in every request.
    pub audit_args: Option<super::audit_record::Kept>,
    /// The JSON-RPC errors of the relayed reply, read as it passed, when `audit` records a
    /// message of this request (`proxy::audit_record::probe`).
    pub reply: Option<Box<crate::jsonrpc::probe::ReplyProbe>>,
    /// The reply's error code when the gateway read the reply whole before relaying it (then
    /// no probe is set up).
    pub reply_code: crate::jsonrpc::probe::ReplyCode,
    /// Bytes written to the client before this request (to count this one's).
    sent_before: u64,
}

impl Ctx {
    /// The gateway (config) this request runs on.
    /// The caller an upstream token exchange is made for: principal and its own token, when both
    /// are known.
    pub fn caller(&self) -> Option<super::credentials::Caller<'_>> {
        Some(super::credentials::Caller {
            principal: self.principal.as_ref()?.id,
            token: self.credential.as_deref()?,
        })
    }

    /// `caller` owning its token (an `Rc` clone, only where a member exchanges tokens).
    pub fn caller_owned(&self) -> Option<super::credentials::OwnedCaller> {
        Some(super::credentials::OwnedCaller {
            principal: self.principal.as_ref()?.id,
            token: self.credential.clone()?,
        })
    }

    pub fn gw(&self) -> &Gateway {
        &self.gen.gw
    }

    pub fn new(
        gen: Rc<Generation>,
        c: &Client,
        http_method: HttpMethod,
        http10: bool,
        keep: bool,
    ) -> Self {
        Ctx {
            gen,
            started: crate::runtime::clock::now(),
            http_method,
            http10,
            era: Era::Session,
            keep,
            body_pending: false,
            cors: Vec::new(),
            server: None,
            upstream: None,
            session: None,
            peer: c.peer().cloned(),
            source: c.addr.map(|a| a.ip()),
            principal: None,
            auth_failure: None,
            credential: None,
            decisions: SmallVec::new(),
            messages: SmallVec::new(),
            batch: false,
            bytes_in: 0,
            upstream_call: None,
            vetted_at: None,
            tool_timeout: None,
            status: 0,
            outcome: Outcome::Ok,
            refused: None,
            refused_messages: Vec::new(),
            held: Vec::new(),
            trace: None,
            audit_args: None,
            reply: None,
            reply_code: crate::jsonrpc::probe::ReplyCode::Unread,
            sent_before: c.sent,
        }
    }

    /// What a session opened by this request is bound to: its principal's stable id (none on
    /// an endpoint without authentication).
    pub fn binding(&self) -> Option<Vec<u8>> {
        self.principal.as_ref().map(|p| p.id.to_vec())
    }

    /// The single message, or the first of a batch.
    pub fn first(&self) -> Option<&MessageCtx> {
        self.messages.first()
    }

    /// The method the request is counted under: the single message's, `Other` for anything else.
    pub fn method(&self) -> Method {
        match (self.batch, self.first()) {
            (false, Some(m)) => m.method,
            _ => Method::Other,
        }
    }

    /// The raw id a refusal answers to: a single request's id (never a batch's or a
    /// notification's).
    pub fn answer_id(&self) -> Option<&[u8]> {
        match (self.batch, self.first()) {
            (false, Some(m)) if m.kind == MessageKind::Request => m.id.as_ref().map(Short::get),
            _ => None,
        }
    }

    /// Whether the connection may stay open after refusing with `kind`: decided here only.
    pub fn keep_after(&self, kind: Kind) -> bool {
        self.keep && !self.body_pending && !kind.closes_connection()
    }

    /// Whether the connection may stay open after a response the gateway wrote itself.
    pub fn keep_after_response(&self) -> bool {
        self.keep && !self.body_pending
    }

    /// Records a refusal (the renderer sets `status`).
    pub fn refuse(&mut self, kind: Kind, reason: String) {
        self.outcome = outcome_of(kind);
        self.refused = Some(Refused { kind, reason });
    }
}

/// How a request (or a batch's message) refused with `kind` ended, as the client sees it.
fn outcome_of(kind: Kind) -> Outcome {
    match kind.side() {
        Side::Upstream => Outcome::UpstreamError,
        _ => Outcome::Rejected,
    }
}

/// Phase: record. Runs once for every request that got this far, refused or not.
pub fn record(w: &WorkerState, c: &Client, ctx: &Ctx) {
    let elapsed = crate::runtime::clock::now().saturating_duration_since(ctx.started);
    if !ctx.held.is_empty() {
        // Token quotas: what this request's reply pulled into the client's context.
        super::limit::charge_relayed(ctx, c.sent - ctx.sent_before);
    }
    w.metrics
        .request(ctx.method(), ctx.outcome, elapsed.as_secs_f64());
    if let Some(r) = &ctx.refused {
        w.metrics.rejected(r.kind);
    }
    for &(_, kind) in &ctx.refused_messages {
        w.metrics.rejected(kind);
    }
    for d in &ctx.decisions {
        w.metrics.authz(d.allowed, d.reason);
    }
    if let (false, Some(server), Some(m)) = (ctx.batch, ctx.server, ctx.first()) {
        if m.method == crate::mcp::Method::ToolsCall && m.kind == MessageKind::Request {
            tool_call(w, ctx, server, m, ctx.outcome, elapsed);
        }
    } else if let (true, Some(server)) = (ctx.batch, ctx.server) {
        batch_tool_calls(w, ctx, server, elapsed);
    }
    if let Some(u) = ctx.upstream_call {
        let id = ctx.gw().upstreams[u.upstream].id;
        w.metrics
            .upstream(u.upstream, id, u.result, u.elapsed.as_secs_f64());
    }
    if ctx.gw().config.audit.enabled {
        super::audit_record::write(w, ctx, elapsed, c.sent - ctx.sent_before);
    }
    if let (Some(t), Some(x)) = (&ctx.trace, &ctx.gw().spans) {
        if t.sampled {
            x.offer(super::trace_context::span(ctx, t, elapsed));
        }
    }
    let log = match (ctx.gw().config.log.access, &ctx.refused) {
        (AccessLog::Off, _) | (AccessLog::Refusals, None) => return,
        _ => true,
    };
    if log {
        access_line(w, c, ctx, elapsed);
    }
}

/// Each `tools/call` of a batch, in the per-tool metrics: its outcome is its own when the
/// gateway refused it alone (`refused_messages`), else the batch's; its duration is the batch's
/// (one response carries them all).
#[cold]
fn batch_tool_calls(w: &WorkerState, ctx: &Ctx, server: usize, elapsed: Duration) {
    for (i, m) in ctx.messages.iter().enumerate() {
        if m.method != crate::mcp::Method::ToolsCall || m.kind != MessageKind::Request {
            continue;
        }
        let outcome = ctx
            .refused_messages
            .iter()
            .find(|(at, _)| *at as usize == i)
            .map_or(ctx.outcome, |&(_, kind)| outcome_of(kind));
        tool_call(w, ctx, server, m, outcome, elapsed);
    }
}

/// A `tools/call`, in the per-tool metrics.
fn tool_call(
    w: &WorkerState,
    ctx: &Ctx,
    server: usize,
    m: &MessageCtx,
    outcome: Outcome,
    elapsed: Duration,
) {
    let gw = ctx.gw();
    let tool = m.name.as_ref().map(Short::as_str).unwrap_or("");
    let call = crate::observe::ToolCall {
        generation: gw.generation,
        servers: gw.config.servers.len(),
        server,
        path: &gw.config.servers[server].path,
        tool,
        names_tools: gw.names_tools,
        max_series: gw.config.observe.max_tool_series,
        outcome,
        seconds: elapsed.as_secs_f64(),
    };
    w.metrics
        .tool_call(call, |name| gw.config.names_tool(server, name));
}

fn access_line(w: &WorkerState, c: &Client, ctx: &Ctx, elapsed: Duration) {
    let gw = ctx.gw();
    let level = match &ctx.refused {
        Some(r) if r.kind.side() != Side::Client => "WARN",
        _ => "INFO",
    };
    let server = ctx.server.map(|s| gw.config.servers[s].path.as_str());
    let upstream = ctx.upstream.map(|u| gw.upstreams[u].name.as_str());
    let mut session = [0u8; 16];
    let session = ctx.session.map(|id| {
        // The first 8 bytes of the random session id, as hex: enough to follow one session.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in id[..8].iter().enumerate() {
            session[2 * i] = HEX[usize::from(b >> 4)];
            session[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        &session[..]
    });
    // Hex without allocating; the span id is in the audit record and the exported span.
    let trace_id = ctx.trace.as_ref().map(|t| {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 32];
        for (i, b) in t.trace_id.iter().enumerate() {
            hex[2 * i] = HEX[usize::from(b >> 4)];
            hex[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        hex
    });
    let (rpc, id, name) = if ctx.batch {
        (Some(Value::Str("batch")), None, None)
    } else {
        match ctx.first() {
            Some(m) => (
                Some(Value::Str(m.method_label())),
                m.id.as_ref().map(|i| Value::Bytes(i.get())),
                m.name
                    .as_ref()
                    .or(m.uri.as_ref())
                    .map(|n| Value::Bytes(n.get())),
            ),
            None => (None, None, None),
        }
    };
    let batch_methods;
    let batch = if ctx.batch {
        // Each message as `method` or `method:name` (tool, prompt or resource).
        batch_methods = ctx
            .messages
            .iter()
            .map(|m| match m.name.as_ref().or(m.uri.as_ref()) {
                Some(n) => format!("{}:{}", m.method_label(), n.as_str()),
                None => m.method_label().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        Some(Value::Str(&batch_methods))
    } else {
        None
    };
    let (up_status, up_us) = match ctx.upstream_call {
        Some(u) => (
            u.result.ok().map(|s| Value::U64(u64::from(s))),
            Some(Value::U64(u.elapsed.as_micros() as u64)),
        ),
        None => (None, None),
    };
    w.access.line(
        level,
        &[
            ("worker", Some(Value::U64(w.index as u64))),
            ("peer", c.addr.map(Value::Addr)),
            (
                "client_cert",
                ctx.peer.as_ref().map(|p| Value::Str(p.subject.as_str())),
            ),
            (
                "principal",
                ctx.principal.as_ref().map(|p| Value::Str(&p.subject)),
            ),
            (
                "auth_failure",
                ctx.auth_failure.map(|f| Value::Str(f.reason())),
            ),
            ("http", Some(Value::Str(ctx.http_method.as_str()))),
            ("server", server.map(Value::Str)),
            ("rpc", rpc),
            ("messages", batch),
            ("name", name),
            ("id", id),
            ("session", session.map(Value::Bytes)),
            ("trace_id", trace_id.as_ref().map(|t| Value::Bytes(&t[..]))),
            ("upstream", upstream.map(Value::Str)),
            ("status", Some(Value::U64(u64::from(ctx.status)))),
            ("upstream_status", up_status),
            ("outcome", Some(Value::Str(ctx.outcome.as_str()))),
            (
                "refused",
                ctx.refused.as_ref().map(|r| Value::Str(r.kind.as_str())),
            ),
            (
                "reason",
                ctx.refused
                    .as_ref()
                    .filter(|r| !r.reason.is_empty())
                    .map(|r| Value::Str(&r.reason)),
            ),
            ("duration_us", Some(Value::U64(elapsed.as_micros() as u64))),
            ("upstream_us", up_us),
            ("bytes_in", Some(Value::U64(ctx.bytes_in))),
            ("bytes_out", Some(Value::U64(c.sent - ctx.sent_before))),
        ],
    );
}

impl MessageCtx {
    /// The method's label; a response or error message (a client answering a server request)
    /// has no method: `response`.
    pub fn method_label(&self) -> &'static str {
        match self.kind {
            MessageKind::Response | MessageKind::Error => "response",
            _ => self.method.as_str(),
        }
    }
}
