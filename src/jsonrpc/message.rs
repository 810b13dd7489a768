//! The JSON-RPC shape: walks a message object, its `params`, `params._meta` and `result`, reads
//! the fields the gateway decides on, rejects duplicate keys at those levels, and classifies the
//! message. Every value it does not read goes through `Cursor::skip_value`, so it is still lexed.

use std::borrow::Cow;
use std::collections::HashSet;

use super::lex::{Cursor, Lex, StrTok};
use super::{Message, MessageKind, Raw, ScanErrorKind, Str};

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
    Meta,
    ProtocolVersion,
    ProgressToken,
    MetaProtocolVersion,
    Other,
}

impl Key {
    fn of(s: &str) -> Key {
        match s {
            "jsonrpc" => Key::Jsonrpc,
            "id" => Key::Id,
            "method" => Key::Method,
            "params" => Key::Params,
            "result" => Key::Result,
            "error" => Key::Error,
            "name" => Key::Name,
            "uri" => Key::Uri,
            "_meta" => Key::Meta,
            "protocolVersion" => Key::ProtocolVersion,
            "progressToken" => Key::ProgressToken,
            "io.modelcontextprotocol/protocolVersion" => Key::MetaProtocolVersion,
            _ => Key::Other,
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
            Key::Meta => "_meta",
            Key::ProtocolVersion => "protocolVersion",
            Key::ProgressToken => "progressToken",
            Key::MetaProtocolVersion => "io.modelcontextprotocol/protocolVersion",
            Key::Other => OTHER_KEY,
        }
    }
}

const INLINE_KEYS: usize = 16;

/// The decoded keys seen so far in one object. Linear search over a small inline array (objects
/// the gateway reads have a handful of keys); past 16 keys it moves to a hash set, so an object
/// with 100k keys costs O(n), not O(n²). Allocates only for escaped keys or past 16 keys.
struct KeySet<'a> {
    inline: [&'a str; INLINE_KEYS],
    len: usize,
    owned: Vec<String>,
    spill: Option<HashSet<Cow<'a, str>>>,
}

impl<'a> KeySet<'a> {
    fn new() -> Self {
        KeySet {
            inline: [""; INLINE_KEYS],
            len: 0,
            owned: Vec::new(),
            spill: None,
        }
    }

    /// Adds `k`; false if it was already there.
    fn insert(&mut self, k: &Cow<'a, str>) -> bool {
        if let Some(set) = &mut self.spill {
            return set.insert(k.clone());
        }
        let s: &str = k;
        if self.inline[..self.len].contains(&s) || self.owned.iter().any(|o| o == s) {
            return false;
        }
        match k {
            Cow::Borrowed(b) if self.len < INLINE_KEYS => {
                self.inline[self.len] = b;
                self.len += 1;
            }
            Cow::Owned(o) if self.owned.len() < INLINE_KEYS => self.owned.push(o.clone()),
            _ => {
                let mut set: HashSet<Cow<'a, str>> = self.inline[..self.len]
                    .iter()
                    .map(|b| Cow::Borrowed(*b))
                    .collect();
                set.extend(self.owned.drain(..).map(Cow::Owned));
                set.insert(k.clone());
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
        if !seen.insert(&name) {
            cur.note(ScanErrorKind::DuplicateKey(key.name()), k.start);
        }
        member(cur, key)?;
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

/// Everything read out of one message before it is classified.
#[derive(Default)]
struct Fields<'a> {
    jsonrpc: bool,
    id: Option<Raw<'a>>,
    method: Option<Str<'a>>,
    has_result: bool,
    has_error: bool,
    name: Option<Str<'a>>,
    uri: Option<Str<'a>>,
    progress_token: Option<Raw<'a>>,
    meta_protocol_version: Option<Str<'a>>,
    params_protocol_version: Option<Str<'a>>,
    result_protocol_version: Option<Str<'a>>,
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

/// Scans the message object at the cursor (nesting `depth`). Returns None when the message is
/// invalid at the JSON-RPC level; the reason is then in `cur.pending`.
pub(crate) fn message<'a>(
    cur: &mut Cursor<'a>,
    depth: u32,
) -> Lex<Option<Message<'a>>> {
    let start = cur.i;
    let mut f = Fields::default();
    object(cur, depth, |cur, key| {
        let at = cur.i;
        match key {
            Key::Jsonrpc => {
                f.jsonrpc = true;
                let v = string_or_skip(cur, depth)?;
                if v.as_ref().map(|s| &*s.value) != Some("2.0") {
                    cur.note(ScanErrorKind::BadJsonrpcVersion, at);
                }
            }
            Key::Id => {
                f.id = string_or_number(cur, depth)?;
                if f.id.is_none() {
                    cur.note(ScanErrorKind::BadId, at);
                }
            }
            Key::Method => {
                f.method = string_or_skip(cur, depth)?;
                if f.method.is_none() {
                    cur.note(ScanErrorKind::BadMethod, at);
                }
            }
            Key::Params => match cur.peek() {
                Some(b'{') => params(cur, depth + 1, &mut f)?,
                Some(b'[') => cur.skip_value(depth)?,
                _ => {
                    cur.skip_value(depth)?;
                    cur.note(ScanErrorKind::BadParams, at);
                }
            },
            Key::Result => {
                f.has_result = true;
                if cur.peek() == Some(b'{') {
                    object(cur, depth + 1, |cur, key| {
                        if key == Key::ProtocolVersion {
                            f.result_protocol_version = string_or_skip(cur, depth + 1)?;
                            Ok(())
                        } else {
                            cur.skip_value(depth + 1)
                        }
                    })?;
                } else {
                    cur.skip_value(depth)?;
                }
            }
            Key::Error => {
                f.has_error = true;
                let is_object = cur.peek() == Some(b'{');
                cur.skip_value(depth)?;
                if !is_object {
                    cur.note(ScanErrorKind::NotAMessage("\"error\" is not an object"), at);
                }
            }
            _ => cur.skip_value(depth)?,
        }
        Ok(())
    })?;
    let span = start..cur.i;
    if !f.jsonrpc {
        cur.note(ScanErrorKind::BadJsonrpcVersion, start);
    }
    let kind = match (&f.method, &f.id, f.has_result, f.has_error) {
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
            return Ok(None);
        }
    };
    if cur.pending.is_some() {
        return Ok(None);
    }
    let protocol_version = match kind {
        MessageKind::Request | MessageKind::Notification => f.params_protocol_version,
        MessageKind::Response | MessageKind::Error => f.result_protocol_version,
    };
    Ok(Some(Message {
        kind,
        id: f.id,
        method: f.method,
        name: f.name,
        uri: f.uri,
        progress_token: f.progress_token,
        meta_protocol_version: f.meta_protocol_version,
        protocol_version,
        span,
    }))
}

/// The `params` object (at nesting `depth`).
fn params<'a>(cur: &mut Cursor<'a>, depth: u32, f: &mut Fields<'a>) -> Lex<()> {
    object(cur, depth, |cur, key| {
        match key {
            Key::Name => f.name = string_or_skip(cur, depth)?,
            Key::Uri => f.uri = string_or_skip(cur, depth)?,
            Key::ProtocolVersion => f.params_protocol_version = string_or_skip(cur, depth)?,
            Key::Meta if cur.peek() == Some(b'{') => meta(cur, depth + 1, f)?,
            _ => cur.skip_value(depth)?,
        }
        Ok(())
    })
}

/// The `params._meta` object (at nesting `depth`).
fn meta<'a>(cur: &mut Cursor<'a>, depth: u32, f: &mut Fields<'a>) -> Lex<()> {
    object(cur, depth, |cur, key| {
        let at = cur.i;
        match key {
            Key::ProgressToken => {
                // The gateway rewrites progress tokens; one it cannot read as the MCP schema
                // says (string or number) is refused rather than forwarded unmapped.
                f.progress_token = string_or_number(cur, depth)?;
                if f.progress_token.is_none() {
                    cur.note(ScanErrorKind::BadParams, at);
                }
            }
            Key::MetaProtocolVersion => f.meta_protocol_version = string_or_skip(cur, depth)?,
            _ => cur.skip_value(depth)?,
        }
        Ok(())
    })
}
