//! The JSON-RPC shape: walks a message object, its `params`, `params._meta` and `result`, reads
//! the fields the gateway decides on, rejects duplicate keys at those levels, and classifies the
//! message. Every value it does not read goes through `Cursor::skip_value`, so it is still lexed.

use std::borrow::Cow;
use std::collections::HashSet;

use super::lex::{Cursor, Lex, StrTok};
use super::{KeptKeys, Message, MessageKind, Raw, ScanErrorKind, Str};

/// `Message::meta_keys` bits: the `_meta` key is there, whatever its value.
pub const META_VERSION_KEY: u8 = 1;
pub const META_CAPABILITIES_KEY: u8 = 2;

/// `DuplicateKey` names a key the scanner reads; any other duplicate gets this name.
pub(crate) const OTHER_KEY: &str = "(other)";

/// Keys the scanner reads at some level, after decoding escapes. Which ones matter depends on the
/// level; at any other level they are skipped like `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Jsonrpc,
    Id,
    Method,
    Params,
    Result,
    Error,
    Name,
    Uri,
    Cursor,
    Meta,
    ProtocolVersion,
    ProgressToken,
    MetaProtocolVersion,
    MetaClientCapabilities,
    RequestId,
    Arguments,
    ResultType,
    Task,
    TaskId,
    Traceparent,
    Code,
    Other,
}

impl Key {
    /// Dispatches on length first: one comparison or two for most keys.
    #[inline]
    fn of(s: &str) -> Key {
        let k = match s.len() {
            2 => (s == "id", Key::Id),
            3 => (s == "uri", Key::Uri),
            4 if s == "name" => (true, Key::Name),
            4 if s == "code" => (true, Key::Code),
            4 => (s == "task", Key::Task),
            5 if s == "error" => (true, Key::Error),
            5 => (s == "_meta", Key::Meta),
            6 if s == "method" => (true, Key::Method),
            6 if s == "params" => (true, Key::Params),
            6 if s == "cursor" => (true, Key::Cursor),
            6 if s == "result" => (true, Key::Result),
            6 => (s == "taskId", Key::TaskId),
            7 => (s == "jsonrpc", Key::Jsonrpc),
            9 if s == "requestId" => (true, Key::RequestId),
            9 => (s == "arguments", Key::Arguments),
            10 => (s == "resultType", Key::ResultType),
            11 => (s == "traceparent", Key::Traceparent),
            13 => (s == "progressToken", Key::ProgressToken),
            15 => (s == "protocolVersion", Key::ProtocolVersion),
            39 => (
                s == "io.modelcontextprotocol/protocolVersion",
                Key::MetaProtocolVersion,
            ),
            42 => (
                s == "io.modelcontextprotocol/clientCapabilities",
                Key::MetaClientCapabilities,
            ),
            _ => (false, Key::Other),
        };
        if k.0 {
            k.1
        } else {
            Key::Other
        }
    }

    fn name(self) -> &'static str {
        match self {
            Key::Jsonrpc => "jsonrpc",
            Key::Id => "id",
            Key::Method => "method",
            Key::Params => "params",
            Key::Result => "result",
            Key::Error => "error",
            Key::Name => "name",
            Key::Uri => "uri",
            Key::Cursor => "cursor",
            Key::Meta => "_meta",
            Key::ProtocolVersion => "protocolVersion",
            Key::ProgressToken => "progressToken",
            Key::MetaProtocolVersion => "io.modelcontextprotocol/protocolVersion",
            Key::MetaClientCapabilities => "io.modelcontextprotocol/clientCapabilities",
            Key::RequestId => "requestId",
            Key::Arguments => "arguments",
            Key::ResultType => "resultType",
            Key::Task => "task",
            Key::TaskId => "taskId",
            Key::Traceparent => "traceparent",
            Key::Code => "code",
            Key::Other => OTHER_KEY,
        }
    }
}

// `KeySet::known` has one bit per read key.
const _: () = assert!((Key::Other as u32) < u32::BITS);

const INLINE_KEYS: usize = 8;

/// The decoded keys seen so far in one object. Keys the scanner reads are one bit each; other
/// keys are searched linearly in a small inline array (objects at the levels the scanner reads
/// have a handful of keys), and past 8 of them, or for an escaped one, a hash set takes over, so
/// an object with 100k keys costs O(n), not O(n²). Allocates only in those two cases.
struct KeySet<'a> {
    known: u32,
    /// Never past `INLINE_KEYS` (the set spills instead). A `SmallVec`: its inline space is not
    /// written when a set is made (every object the scanner reads makes one).
    inline: smallvec::SmallVec<[&'a str; INLINE_KEYS]>,
    spill: Option<HashSet<Cow<'a, str>>>,
}

impl<'a> KeySet<'a> {
    #[inline(always)]
    fn new() -> Self {
        KeySet {
            known: 0,
            inline: smallvec::SmallVec::new(),
            spill: None,
        }
    }

    /// Adds `k` (which `Key::of` read as `key`); false if it was already there.
    #[inline]
    fn insert(&mut self, key: Key, k: Cow<'a, str>) -> bool {
        if key != Key::Other {
            let bit = 1u32 << (key as u32);
            let new = self.known & bit == 0;
            self.known |= bit;
            return new;
        }
        if let Some(set) = &mut self.spill {
            return set.insert(k);
        }
        let s: &str = &k;
        if self.inline.contains(&s) {
            return false;
        }
        match k {
            Cow::Borrowed(b) if self.inline.len() < INLINE_KEYS => self.inline.push(b),
            _ => {
                let mut set: HashSet<Cow<'a, str>> =
                    self.inline.iter().map(|b| Cow::Borrowed(*b)).collect();
                set.insert(k);
                self.spill = Some(set);
            }
        }
        true
    }
}

/// Walks the object at the cursor (on `{`, at nesting `depth`), checking keys for duplicates and
/// handing each member's value to `member`, which must consume it.
fn object<'a>(
    cur: &mut Cursor<'a>,
    depth: u32,
    mut member: impl FnMut(&mut Cursor<'a>, Key) -> Lex<()>,
) -> Lex<()> {
    object_tok(cur, depth, |cur, key, _| member(cur, key))
}

/// `object`, the member also told its key's token.
#[inline(always)]
fn object_tok<'a>(
    cur: &mut Cursor<'a>,
    depth: u32,
    mut member: impl FnMut(&mut Cursor<'a>, Key, StrTok) -> Lex<()>,
) -> Lex<()> {
    cur.check_depth(depth)?;
    cur.i += 1;
    cur.ws();
    if cur.peek() == Some(b'}') {
        cur.i += 1;
        return Ok(());
    }
    let mut seen = KeySet::new();
    loop {
        let k = cur.key()?;
        let name = cur.decode(k);
        let key = Key::of(&name);
        if !seen.insert(key, name) {
            cur.note(ScanErrorKind::DuplicateKey(key.name()), k.start);
        }
        member(cur, key, k)?;
        cur.ws();
        match cur.peek() {
            Some(b',') => cur.i += 1,
            Some(b'}') => {
                cur.i += 1;
                return Ok(());
            }
            _ => return Err(cur.fail_unexpected("expected ',' or '}'")),
        }
    }
}

fn str_of<'a>(cur: &Cursor<'a>, t: StrTok) -> Str<'a> {
    Str {
        value: cur.decode(t),
        span: t.start..t.end,
    }
}

/// A string value at the cursor as `Str`; any other value is validated and gives None.
fn string_or_skip<'a>(cur: &mut Cursor<'a>, depth: u32) -> Lex<Option<Str<'a>>> {
    if cur.peek() == Some(b'"') {
        let t = cur.string_tok()?;
        Ok(Some(str_of(cur, t)))
    } else {
        cur.skip_value(depth).map(|()| None)
    }
}

/// A string (quotes included) or number at the cursor as raw text; any other value is validated
/// and gives None.
fn string_or_number<'a>(cur: &mut Cursor<'a>, depth: u32) -> Lex<Option<Raw<'a>>> {
    let start = cur.i;
    match cur.peek() {
        Some(b'"') => {
            cur.string()?;
        }
        Some(b'-' | b'0'..=b'9') => cur.number()?,
        _ => return cur.skip_value(depth).map(|()| None),
    }
    Ok(Some(Raw {
        text: cur.b.get(start..cur.i).unwrap_or_default(),
        start,
    }))
}

impl<'a> Message<'a> {
    pub(crate) fn empty() -> Self {
        Message {
            kind: MessageKind::Request,
            id: None,
            method: None,
            name: None,
            uri: None,
            cursor: None,
            progress_token: None,
            request_id: None,
            meta: false,
            params_open: None,
            meta_open: None,
            params_not_object: false,
            meta_not_object: false,
            meta_keys: 0,
            result_open: None,
            result_type: false,
            meta_protocol_version: None,
            meta_client_capabilities: None,
            meta_traceparent: None,
            protocol_version: None,
            task: false,
            task_id: None,
            arguments: None,
            argument_keys_at: KeptKeys::default(),
            error_code: None,
            span: 0..0,
        }
    }
}

/// Scans the message object at the cursor (nesting `depth`) into `m`, which must be empty; the
/// caller owns it so the 300-byte message is not copied on the way out. Returns false when the
/// message is invalid at the JSON-RPC level; the reason is then in `cur.pending`.
pub(crate) fn message<'a>(cur: &mut Cursor<'a>, depth: u32, m: &mut Message<'a>) -> Lex<bool> {
    let start = cur.i;
    // params.protocolVersion lands in `protocol_version`; a response's result.protocolVersion
    // replaces it at the end.
    let (mut jsonrpc, mut has_result, mut has_error) = (false, false, false);
    let mut result_protocol_version = None;
    object(cur, depth, |cur, key| {
        let at = cur.i;
        match key {
            Key::Jsonrpc => {
                jsonrpc = true;
                let v = string_or_skip(cur, depth)?;
                if v.as_ref().map(|s| &*s.value) != Some("2.0") {
                    cur.note(ScanErrorKind::BadJsonrpcVersion, at);
                }
            }
            Key::Id => {
                m.id = string_or_number(cur, depth)?;
                if m.id.is_none() {
                    cur.note(ScanErrorKind::BadId, at);
                }
            }
            Key::Method => {
                m.method = string_or_skip(cur, depth)?;
                if m.method.is_none() {
                    cur.note(ScanErrorKind::BadMethod, at);
                }
            }
            Key::Params => match cur.peek() {
                Some(b'{') => {
                    m.params_open = Some(cur.i);
                    params(cur, depth + 1, m)?
                }
                Some(b'[') => {
                    m.params_not_object = true;
                    cur.skip_value(depth)?
                }
                _ => {
                    cur.skip_value(depth)?;
                    cur.note(ScanErrorKind::BadParams, at);
                }
            },
            Key::Result => {
                has_result = true;
                if cur.peek() == Some(b'{') {
                    m.result_open = Some(cur.i);
                    object(cur, depth + 1, |cur, key| match key {
                        Key::ProtocolVersion => {
                            result_protocol_version = string_or_skip(cur, depth + 1)?;
                            Ok(())
                        }
                        Key::ResultType => {
                            m.result_type = true;
                            cur.skip_value(depth + 1)
                        }
                        _ => cur.skip_value(depth + 1),
                    })?;
                } else {
                    cur.skip_value(depth)?;
                }
            }
            Key::Error => {
                has_error = true;
                if cur.peek() == Some(b'{') {
                    object(cur, depth + 1, |cur, key| match key {
                        Key::Code => {
                            m.error_code = string_or_number(cur, depth + 1)?;
                            Ok(())
                        }
                        _ => cur.skip_value(depth + 1),
                    })?;
                } else {
                    cur.skip_value(depth)?;
                    cur.note(ScanErrorKind::NotAMessage("\"error\" is not an object"), at);
                }
            }
            _ => cur.skip_value(depth)?,
        }
        Ok(())
    })?;
    m.span = start..cur.i;
    if !jsonrpc {
        cur.note(ScanErrorKind::BadJsonrpcVersion, start);
    }
    let kind = match (&m.method, &m.id, has_result, has_error) {
        // A request that also carries result/error is refused: the TypeScript SDK tests for a
        // response first and would read it as one, while we would route it as a request.
        (Some(_), _, true, _) | (Some(_), _, _, true) => {
            Err("has both \"method\" and \"result\"/\"error\"")
        }
        (Some(_), Some(_), false, false) => Ok(MessageKind::Request),
        (Some(_), None, false, false) => Ok(MessageKind::Notification),
        (None, Some(_), true, true) => Err("has both \"result\" and \"error\""),
        (None, Some(_), true, false) => Ok(MessageKind::Response),
        (None, Some(_), false, true) => Ok(MessageKind::Error),
        (None, Some(_), false, false) => {
            Err("has \"id\" but no \"method\", \"result\" or \"error\"")
        }
        (None, None, true, _) | (None, None, _, true) => Err("response without \"id\""),
        (None, None, false, false) => Err("has neither \"method\" nor \"id\""),
    };
    let kind = match kind {
        Ok(k) => k,
        Err(why) => {
            cur.note(ScanErrorKind::NotAMessage(why), start);
            return Ok(false);
        }
    };
    if cur.pending.is_some() {
        return Ok(false);
    }
    m.kind = kind;
    if matches!(kind, MessageKind::Response | MessageKind::Error) {
        m.protocol_version = result_protocol_version;
    }
    Ok(true)
}

/// The `params` object (at nesting `depth`).
fn params<'a>(cur: &mut Cursor<'a>, depth: u32, m: &mut Message<'a>) -> Lex<()> {
    object(cur, depth, |cur, key| {
        match key {
            Key::Name => m.name = string_or_skip(cur, depth)?,
            Key::Uri => m.uri = string_or_skip(cur, depth)?,
            Key::Cursor => m.cursor = string_or_skip(cur, depth)?,
            Key::ProtocolVersion => m.protocol_version = string_or_skip(cur, depth)?,
            // Read for every method (only `notifications/cancelled` has one in MCP); a value that
            // is not a string or number is validated and left unread, not refused: nothing the
            // gateway forwards depends on it, and the relay only rewrites one it could read.
            Key::RequestId => m.request_id = string_or_number(cur, depth)?,
            // `tools/call`'s arguments: a policy may decide on their top-level keys, so those
            // are a read level (duplicates refused: parsers disagree on which one counts);
            // the values below are only validated. Any other value is left unread.
            Key::Arguments if cur.peek() == Some(b'{') => {
                let start = cur.i;
                // The keys' places are kept as they are read: the audit record and argument
                // rules list them without lexing the object again.
                let kept = &mut m.argument_keys_at;
                kept.start();
                object_tok(cur, depth + 1, |cur, _, tok| {
                    kept.push(tok.start - start, tok.end - start, tok.escaped);
                    cur.skip_value(depth + 1)
                })?;
                m.arguments = Some(Raw {
                    text: cur.b.get(start..cur.i).unwrap_or_default(),
                    start,
                });
            }
            Key::Meta if cur.peek() == Some(b'{') => {
                m.meta = true;
                m.meta_open = Some(cur.i);
                meta(cur, depth + 1, m)?
            }
            // `_meta` that is not an object: nothing can be added to it.
            Key::Meta => {
                m.meta_not_object = true;
                cur.skip_value(depth)?
            }
            // A task-augmented request (2025-11-25 tasks): its reply carries a task id the
            // gateway rewrites on a federated endpoint.
            Key::Task => {
                m.task = true;
                cur.skip_value(depth)?
            }
            // `tasks/get`, `tasks/result`, `tasks/cancel`: the task the request is about.
            Key::TaskId => m.task_id = string_or_skip(cur, depth)?,
            _ => cur.skip_value(depth)?,
        }
        Ok(())
    })
}

/// The top-level keys of a JSON object the scanner accepted (`Message::arguments`), in order,
/// unescaped: borrowed from the body unless a key has escapes. Made for the scanner's own
/// `Raw` spans: on anything that is not a valid object it ends early rather than fail.
pub struct ObjectKeys<'a> {
    cur: Cursor<'a>,
    done: bool,
}

impl<'a> ObjectKeys<'a> {
    pub(crate) fn new(object: &'a [u8]) -> Self {
        match std::str::from_utf8(object) {
            Ok(s) => {
                let mut cur = Cursor::new(s, u32::MAX);
                cur.ws();
                let done = cur.peek() != Some(b'{');
                cur.i += 1;
                cur.ws();
                let done = done || cur.peek() == Some(b'}');
                ObjectKeys { cur, done }
            }
            Err(_) => ObjectKeys {
                cur: Cursor::new("", 0),
                done: true,
            },
        }
    }
}

impl<'a> Iterator for ObjectKeys<'a> {
    type Item = Cow<'a, str>;

    fn next(&mut self) -> Option<Cow<'a, str>> {
        if self.done {
            return None;
        }
        let cur = &mut self.cur;
        let Ok(k) = cur.key() else {
            self.done = true;
            return None;
        };
        let key = cur.decode(k);
        if cur.skip_value(1).is_err() {
            self.done = true;
            return None;
        }
        cur.ws();
        match cur.peek() {
            Some(b',') => cur.i += 1,
            _ => self.done = true,
        }
        Some(key)
    }
}

/// The `params._meta` object (at nesting `depth`).
fn meta<'a>(cur: &mut Cursor<'a>, depth: u32, m: &mut Message<'a>) -> Lex<()> {
    object(cur, depth, |cur, key| {
        let at = cur.i;
        match key {
            Key::ProgressToken => {
                // The gateway rewrites progress tokens; one it cannot read as the MCP schema
                // says (string or number) is refused rather than forwarded unmapped.
                m.progress_token = string_or_number(cur, depth)?;
                if m.progress_token.is_none() {
                    cur.note(ScanErrorKind::BadParams, at);
                }
            }
            // W3C trace context in `_meta` (the MCP SDKs' convention): read where it is, so the
            // gateway can put its own span in its place (`proxy::trace_context`).
            Key::Traceparent => m.meta_traceparent = string_or_skip(cur, depth)?,
            Key::MetaProtocolVersion => {
                m.meta_keys |= META_VERSION_KEY;
                m.meta_protocol_version = string_or_skip(cur, depth)?
            }
            Key::MetaClientCapabilities => {
                m.meta_keys |= META_CAPABILITIES_KEY;
                // Kept raw: the 2026-07-28 path needs to know it is there (and an object), and
                // translation toward a session-era upstream reads it.
                let start = cur.i;
                let object = cur.peek() == Some(b'{');
                cur.skip_value(depth)?;
                if object {
                    m.meta_client_capabilities = Some(Raw {
                        text: cur.b.get(start..cur.i).unwrap_or_default(),
                        start,
                    });
                }
            }
            _ => cur.skip_value(depth)?,
        }
        Ok(())
    })
}
