//! The zero-copy JSON-RPC scanner: request body bytes → a borrowed view of the fields the gateway
//! decides on (id, method, params.name, …) or a precise rejection with its byte offset.
//! It validates the whole body as JSON in one pass and refuses anything a full parser could read
//! differently (duplicate keys, lone surrogates, huge numbers, …). No I/O, no tree, no panics;
//! it allocates only for strings with escapes and for batches.

mod id;
mod lex;
mod list;
mod message;
pub mod probe;
pub use message::{ObjectKeys, META_CAPABILITIES_KEY, META_VERSION_KEY};

pub use id::same_id;
pub use list::{list_page, ListError, ListPage};

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use lex::{Cursor, Lex, Stop};

/// Bounds on the work one body can ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanLimits {
    /// Deepest nesting of objects and arrays, counted from the body's top value (`{}` is 1).
    /// Keep it below 128: serde_json-based upstreams refuse depth 128 and more.
    pub max_depth: u32,
    /// Most messages in one batch.
    pub max_batch_len: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_depth: 64,
            max_batch_len: 100,
        }
    }
}

// A single message is the common case: boxing it would allocate on every request.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Body<'a> {
    Single(Message<'a>),
    Batch(Vec<Message<'a>>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Notification,
    Response,
    Error,
}

/// One JSON-RPC message as read from the body. Every field borrows from the body unless the
/// string had escapes.
#[derive(Clone, Debug, PartialEq)]
pub struct Message<'a> {
    pub kind: MessageKind,
    /// Raw JSON text of the id: `7` or `"abc"` (quotes included).
    pub id: Option<Raw<'a>>,
    pub method: Option<Str<'a>>,
    /// `params.name` when it is a string.
    pub name: Option<Str<'a>>,
    /// `params.uri` when it is a string.
    pub uri: Option<Str<'a>>,
    /// `params.cursor` when it is a string (a list request's page: the gateway's own cursor
    /// once lists are aggregated across upstreams).
    pub cursor: Option<Str<'a>>,
    /// `params._meta.progressToken` (string with quotes, or number), raw.
    pub progress_token: Option<Raw<'a>>,
    /// `params.requestId` (string with quotes, or number), raw, when it is one of those; any
    /// other value is left unread (`None`), not refused. `notifications/cancelled` carries it.
    pub request_id: Option<Raw<'a>>,
    /// `params._meta` is there (an object).
    pub meta: bool,
    /// Where the `{` of `params` (an object) and of `params._meta` are in the body: the
    /// translation toward a 2026-07-28 upstream adds `_meta` fields there.
    pub params_open: Option<usize>,
    pub meta_open: Option<usize>,
    /// `params` is an array, `params._meta` is there but not an object: `_meta` fields cannot
    /// be added (a second key would be written).
    pub params_not_object: bool,
    pub meta_not_object: bool,
    /// Which `io.modelcontextprotocol/…` keys `params._meta` has, whatever their values
    /// (`message::META_VERSION_KEY`, `META_CAPABILITIES_KEY`).
    pub meta_keys: u8,
    /// A response: where its `result` object's `{` is, and whether it has `resultType` (what
    /// the gateway adds to a session-era upstream's results for a 2026-07-28 client).
    pub result_open: Option<usize>,
    pub result_type: bool,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]` when it is a string.
    pub meta_protocol_version: Option<Str<'a>>,
    /// `params._meta["io.modelcontextprotocol/clientCapabilities"]` when it is an object, raw.
    pub meta_client_capabilities: Option<Raw<'a>>,
    /// `params._meta.traceparent` when it is a string (span includes the quotes).
    pub meta_traceparent: Option<Str<'a>>,
    /// `params.protocolVersion` (request, notification) or `result.protocolVersion` (response).
    pub protocol_version: Option<Str<'a>>,
    /// `params.task` is present: a task-augmented request (2025-11-25 tasks).
    pub task: bool,
    /// `params.taskId` when it is a string (`tasks/get`, `tasks/result`, `tasks/cancel`).
    pub task_id: Option<Str<'a>>,
    /// `params.arguments` when it is an object, raw (`tools/call`, `prompts/get`): its top-level
    /// keys are a read level (no duplicates); `argument_keys` lists them.
    pub arguments: Option<Raw<'a>>,
    /// Where the scan read `arguments`' top-level keys, so they are not lexed again.
    pub argument_keys_at: KeptKeys,
    /// An error response's `error.code` when it is a number or a string, raw (what the audit
    /// record of a reply the gateway read whole carries; a relayed one is probed instead).
    pub error_code: Option<Raw<'a>>,
    /// This message's bytes within the body.
    pub span: Range<usize>,
}

impl<'a> Message<'a> {
    /// The top-level keys of `params.arguments`, in body order, unescaped (borrowed unless a key
    /// has escapes); empty when there are no arguments or they are not an object. Those the scan
    /// kept (`KeptKeys`) are sliced out; otherwise the object is lexed again.
    pub fn argument_keys(&self) -> ArgumentKeys<'a, '_> {
        let text = self.arguments.as_ref().map_or(&b""[..], |r| r.text);
        match &self.argument_keys_at {
            k if k.kept => ArgumentKeys::Kept {
                text,
                keys: &k.spans,
                next: 0,
            },
            _ => ArgumentKeys::Lexed(ObjectKeys::new(text)),
        }
    }
}

/// Where `params.arguments`' top-level key tokens are (quotes included, from the object's `{`),
/// when the object has at most `KeptKeys::MAX` keys and none is escaped; not kept otherwise (and
/// when there are no arguments). Its inline space is written only as keys go in (every message
/// the scanner reads has one, replies included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptKeys {
    spans: smallvec::SmallVec<[(u32, u32); KeptKeys::MAX]>,
    kept: bool,
}

impl KeptKeys {
    pub const MAX: usize = 8;

    /// Starts an object's keys (none yet).
    pub(crate) fn start(&mut self) {
        self.spans.clear();
        self.kept = true;
    }

    /// One more key token at `start..end` (relative to the object); an escaped one, or one past
    /// `MAX`, gives up on keeping them.
    pub(crate) fn push(&mut self, start: usize, end: usize, escaped: bool) {
        if !self.kept {
            return;
        }
        match (u32::try_from(start), u32::try_from(end)) {
            (Ok(s), Ok(e)) if !escaped && self.spans.len() < Self::MAX => self.spans.push((s, e)),
            _ => self.kept = false,
        }
    }
}

/// `Message::argument_keys`: kept spans sliced out, or the object lexed again.
pub enum ArgumentKeys<'a, 'm> {
    Kept {
        text: &'a [u8],
        keys: &'m [(u32, u32)],
        next: usize,
    },
    Lexed(ObjectKeys<'a>),
}

impl<'a> Iterator for ArgumentKeys<'a, '_> {
    type Item = Cow<'a, str>;

    fn next(&mut self) -> Option<Cow<'a, str>> {
        match self {
            ArgumentKeys::Lexed(k) => k.next(),
            ArgumentKeys::Kept { text, keys, next } => {
                let &(s, e) = keys.get(*next)?;
                *next += 1;
                // Unescaped, inside a body that is valid UTF-8: the check cannot fail.
                let key = text.get(s as usize + 1..(e as usize).saturating_sub(1))?;
                std::str::from_utf8(key).ok().map(Cow::Borrowed)
            }
        }
    }
}

/// A JSON value's raw text and where it starts in the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raw<'a> {
    pub text: &'a [u8],
    pub start: usize,
}

/// A decoded JSON string and the span of its token (quotes included) in the body, for splicing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Str<'a> {
    pub value: Cow<'a, str>,
    pub span: Range<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanError {
    pub kind: ScanErrorKind,
    /// Byte offset in the body where the problem was found.
    pub offset: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanErrorKind {
    // Not JSON (JSON-RPC -32700).
    InvalidUtf8,
    Syntax(&'static str),
    TooDeep,
    TrailingBytes,
    Empty,
    LoneSurrogate,
    /// A number of magnitude 1e308 or more (`1e400`): around and past f64::MAX parsers disagree
    /// (serde_json refuses it, JavaScript reads Infinity).
    NumberOutOfRange,
    // JSON, but not a JSON-RPC message we accept (JSON-RPC -32600).
    /// The key, or `"(other)"` for a key the scanner does not read.
    DuplicateKey(&'static str),
    NotAnObject,
    EmptyBatch,
    BatchTooLong,
    BadJsonrpcVersion,
    BadId,
    BadMethod,
    /// `params` is neither object nor array, or `params._meta.progressToken` is neither string
    /// nor number.
    BadParams,
    NotAMessage(&'static str),
}

impl ScanErrorKind {
    /// A stable label for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            ScanErrorKind::InvalidUtf8 => "invalid_utf8",
            ScanErrorKind::Syntax(_) => "syntax",
            ScanErrorKind::TooDeep => "too_deep",
            ScanErrorKind::TrailingBytes => "trailing_bytes",
            ScanErrorKind::Empty => "empty",
            ScanErrorKind::LoneSurrogate => "lone_surrogate",
            ScanErrorKind::NumberOutOfRange => "number_out_of_range",
            ScanErrorKind::DuplicateKey(_) => "duplicate_key",
            ScanErrorKind::NotAnObject => "not_an_object",
            ScanErrorKind::EmptyBatch => "empty_batch",
            ScanErrorKind::BatchTooLong => "batch_too_long",
            ScanErrorKind::BadJsonrpcVersion => "bad_jsonrpc_version",
            ScanErrorKind::BadId => "bad_id",
            ScanErrorKind::BadMethod => "bad_method",
            ScanErrorKind::BadParams => "bad_params",
            ScanErrorKind::NotAMessage(_) => "not_a_message",
        }
    }
}

impl ScanError {
    /// True when the body is not JSON (answer -32700); false when it is JSON but not an
    /// acceptable JSON-RPC message (answer -32600).
    pub fn is_parse_error(&self) -> bool {
        matches!(
            self.kind,
            ScanErrorKind::InvalidUtf8
                | ScanErrorKind::Syntax(_)
                | ScanErrorKind::TooDeep
                | ScanErrorKind::TrailingBytes
                | ScanErrorKind::Empty
                | ScanErrorKind::LoneSurrogate
                | ScanErrorKind::NumberOutOfRange
        )
    }
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ScanErrorKind::InvalidUtf8 => f.write_str("invalid UTF-8")?,
            ScanErrorKind::Syntax(what) => write!(f, "invalid JSON: {what}")?,
            ScanErrorKind::TooDeep => f.write_str("nesting deeper than the limit")?,
            ScanErrorKind::TrailingBytes => f.write_str("bytes after the JSON value")?,
            ScanErrorKind::Empty => f.write_str("empty body")?,
            ScanErrorKind::LoneSurrogate => f.write_str("lone UTF-16 surrogate in \\u escape")?,
            ScanErrorKind::NumberOutOfRange => f.write_str("number of magnitude 1e308 or more")?,
            ScanErrorKind::DuplicateKey(message::OTHER_KEY) => f.write_str("duplicate key")?,
            ScanErrorKind::DuplicateKey(key) => write!(f, "duplicate key {key:?}")?,
            ScanErrorKind::NotAnObject => f.write_str("message is not a JSON object")?,
            ScanErrorKind::EmptyBatch => f.write_str("empty batch")?,
            ScanErrorKind::BatchTooLong => f.write_str("batch longer than the limit")?,
            ScanErrorKind::BadJsonrpcVersion => f.write_str("\"jsonrpc\" is not \"2.0\"")?,
            ScanErrorKind::BadId => f.write_str("\"id\" is not a string or number")?,
            ScanErrorKind::BadMethod => f.write_str("\"method\" is not a string")?,
            ScanErrorKind::BadParams => {
                f.write_str("\"params\" is not an object or array, or its progressToken is not a string or number")?
            }
            ScanErrorKind::NotAMessage(why) => write!(f, "not a JSON-RPC message: {why}")?,
        }
        write!(f, " at byte {}", self.offset)
    }
}

impl std::error::Error for ScanError {}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Scans a request body. On success every byte of `body` has been validated as one JSON value
/// and every message in it as JSON-RPC 2.0; on failure the error says what and where. A JSON
/// syntax error anywhere wins over a JSON-RPC error earlier in the body.
///
/// Refused because full parsers read them differently (or not at all): invalid UTF-8, a BOM, lone
/// surrogates, numbers of magnitude 1e308 and more, depth over `max_depth`, and duplicate keys
/// (compared after unescaping) in a message object, its `params`, `params._meta`,
/// `params.arguments` and `result`: every duplicate there, not only the keys the scanner reads.
/// Duplicates deeper down (inside an argument's value, say) are forwarded untouched: the gateway
/// decides nothing on them.
pub fn scan<'a>(body: &'a [u8], limits: &ScanLimits) -> Result<Body<'a>, ScanError> {
    let mut m = Message::empty();
    Ok(match scan_into(body, limits, &mut m)? {
        None => Body::Single(m),
        Some(batch) => Body::Batch(batch),
    })
}

/// `scan`, reading a single message into `m` (`Ok(None)`) rather than returning it: the
/// 536-byte message is then not copied into the result and out of it again, which the request
/// path and the reply scan pay on every call. A batch comes back as it does from `scan`. `m`
/// must be `Message::empty()`.
pub fn scan_into<'a>(
    body: &'a [u8],
    limits: &ScanLimits,
    m: &mut Message<'a>,
) -> Result<Option<Vec<Message<'a>>>, ScanError> {
    if body.starts_with(BOM) {
        return Err(lex::err(ScanErrorKind::Syntax("UTF-8 byte order mark"), 0));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| lex::err(ScanErrorKind::InvalidUtf8, e.valid_up_to()))?;
    let mut cur = Cursor::new(text, limits.max_depth);
    cur.ws();
    if cur.peek().is_none() {
        return Err(lex::err(ScanErrorKind::Empty, 0));
    }
    // A single message (the common case) is read into the one place it is returned from: the
    // 536-byte message is not moved through an `Option<Body>` on its way out.
    if cur.peek() == Some(b'{') {
        let valid = match message::message(&mut cur, 1, m) {
            Ok(valid) => valid,
            Err(Stop) => return Err(cur.take_fatal()),
        };
        end(&mut cur, body.len(), valid)?;
        return Ok(None);
    }
    let out = match top(&mut cur, limits) {
        Ok(out) => out,
        Err(Stop) => return Err(cur.take_fatal()),
    };
    end(&mut cur, body.len(), out.is_some())?;
    // `end` refused a value that is None.
    match out {
        Some(Body::Single(one)) => {
            *m = one;
            Ok(None)
        }
        Some(Body::Batch(batch)) => Ok(Some(batch)),
        None => Err(lex::err(ScanErrorKind::NotAMessage("unclassified"), 0)),
    }
}

/// After the top-level value: only whitespace may follow; the first error noted wins; a value
/// that was not `valid` without a note is refused all the same (unreachable: a message is
/// invalid only after noting why; refused rather than a panic).
fn end(cur: &mut Cursor<'_>, len: usize, valid: bool) -> Result<(), ScanError> {
    cur.ws();
    if cur.i < len {
        return Err(lex::err(ScanErrorKind::TrailingBytes, cur.i));
    }
    match cur.pending.take() {
        Some(e) => Err(e),
        None if valid => Ok(()),
        None => Err(lex::err(ScanErrorKind::NotAMessage("unclassified"), 0)),
    }
}

/// The body's one top-level value. None when it is invalid at the JSON-RPC level.
fn top<'a>(cur: &mut Cursor<'a>, limits: &ScanLimits) -> Lex<Option<Body<'a>>> {
    Ok(match cur.peek() {
        Some(b'{') => {
            let mut m = Message::empty();
            message::message(cur, 1, &mut m)?.then_some(Body::Single(m))
        }
        Some(b'[') => batch(cur, limits)?.map(Body::Batch),
        _ => {
            let at = cur.i;
            cur.skip_value(0)?;
            cur.note(ScanErrorKind::NotAnObject, at);
            None
        }
    })
}

/// The batch array at the cursor (nesting 1). None when it is invalid at the JSON-RPC level.
fn batch<'a>(cur: &mut Cursor<'a>, limits: &ScanLimits) -> Lex<Option<Vec<Message<'a>>>> {
    cur.check_depth(1)?;
    let start = cur.i;
    cur.i += 1;
    cur.ws();
    if cur.peek() == Some(b']') {
        cur.i += 1;
        cur.note(ScanErrorKind::EmptyBatch, start);
        return Ok(None);
    }
    let mut messages = Vec::new();
    let mut count = 0usize;
    loop {
        cur.ws();
        let at = cur.i;
        count += 1;
        if count > limits.max_batch_len {
            // Keep validating (a syntax error later still wins) but stop collecting.
            cur.note(ScanErrorKind::BatchTooLong, at);
        }
        if cur.peek() == Some(b'{') {
            let mut m = Message::empty();
            if message::message(cur, 2, &mut m)? && cur.pending.is_none() {
                messages.push(m);
            }
        } else {
            cur.skip_value(1)?;
            cur.note(ScanErrorKind::NotAnObject, at);
        }
        cur.ws();
        match cur.peek() {
            Some(b',') => cur.i += 1,
            Some(b']') => {
                cur.i += 1;
                return Ok(if cur.pending.is_none() {
                    Some(messages)
                } else {
                    None
                });
            }
            _ => return Err(cur.fail_unexpected("expected ',' or ']'")),
        }
    }
}

#[cfg(test)]
mod tests;
