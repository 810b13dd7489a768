//! The reply probe: reads a relayed upstream reply as it passes (a JSON body, or an event
//! stream's `data`) for the JSON-RPC errors it carries, `{"id":…,"error":{"code":…}}`, without
//! holding the reply: a fixed-size state machine fed each piece the relay writes. The scanner
//! needs a whole body; a relayed reply is never whole in one place, hence this. A gzip or
//! deflate reply is inflated piece by piece into a small stack buffer, up to a bound.

mod inflate;

use super::id::same_id;
use inflate::Inflate;
pub use inflate::{Coding, Unread};

/// The longest id kept (longer ones are not matched to a request).
const MAX_ID: usize = 64;
/// The longest `code` kept (an i64 and a sign; longer is not a JSON-RPC code).
const MAX_CODE: usize = 20;
/// Most errors kept from one reply (a batch's, one per message at most).
const MAX_ERRORS: usize = 1024;

/// What the message being read has said at its top level.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Member {
    None,
    Id,
    Error,
    Other,
}

/// What the bytes being read are kept for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Nothing,
    /// A key at the message's level or in its `error` object.
    Key,
    Id,
    Code,
}

/// The JSON half: one body (or one event's data) holding a message or a batch of them.
struct Json {
    depth: u32,
    /// The depth of a message object: 1 for a single message, 2 in a batch; 0 before the first
    /// value. A message in a batch in a batch is not JSON-RPC and not read.
    msg_depth: u32,
    in_str: bool,
    esc: bool,
    /// The next string at the message's level (or in its `error`) is a key.
    key_next: bool,
    member: Member,
    in_error: bool,
    /// The message has a `result` or a `method`: it is no error reply.
    not_error: bool,
    keep: Keep,
    buf: [u8; MAX_ID],
    len: usize,
    id: [u8; MAX_ID],
    id_len: usize,
    code: Option<i64>,
    /// Nothing more to learn from this JSON value (a single message that was read).
    done: bool,
}

impl Json {
    fn new() -> Json {
        Json {
            depth: 0,
            msg_depth: 0,
            in_str: false,
            esc: false,
            key_next: false,
            member: Member::None,
            in_error: false,
            not_error: false,
            keep: Keep::Nothing,
            buf: [0; MAX_ID],
            len: 0,
            id: [0; MAX_ID],
            id_len: 0,
            code: None,
            done: false,
        }
    }

    fn push(&mut self, b: u8) {
        if self.len < MAX_ID {
            self.buf[self.len] = b;
        }
        // One past the end marks "too long".
        self.len = (self.len + 1).min(MAX_ID + 1);
    }

    /// Ends what was being kept (at a `,` or a closing bracket after a scalar).
    fn end_value(&mut self) {
        match self.keep {
            Keep::Id if self.len <= MAX_ID => {
                self.id[..self.len].copy_from_slice(&self.buf[..self.len]);
                self.id_len = self.len;
            }
            Keep::Code if self.len <= MAX_CODE => {
                self.code = std::str::from_utf8(&self.buf[..self.len])
                    .ok()
                    .and_then(|s| s.parse().ok());
            }
            _ => {}
        }
        self.keep = Keep::Nothing;
        self.len = 0;
    }

    fn end_key(&mut self) {
        let key = &self.buf[..self.len.min(MAX_ID)];
        if self.in_error && self.depth == self.msg_depth + 1 {
            if key == b"code" {
                self.keep = Keep::Code;
                self.len = 0;
                return;
            }
        } else {
            self.member = match key {
                b"id" => Member::Id,
                b"error" => Member::Error,
                _ => Member::Other,
            };
            if key == b"result" || key == b"method" {
                self.not_error = true;
                // A single message that is no error: nothing more to read (a large result
                // costs nothing more).
                if self.msg_depth == 1 {
                    self.done = true;
                }
            }
            if self.member == Member::Id {
                self.keep = Keep::Id;
                self.len = 0;
                return;
            }
        }
        self.keep = Keep::Nothing;
        self.len = 0;
    }

    /// Feeds bytes; calls `found(id, code)` for each error message read to its end.
    fn feed(&mut self, bytes: &[u8], found: &mut impl FnMut(&[u8], i64)) {
        let mut i = 0;
        while i < bytes.len() && !self.done {
            if self.in_str && !self.esc && self.keep == Keep::Nothing {
                // A string nothing is kept of (most of a reply's bytes): on to its end or its
                // next escape at once.
                match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                    Some(p) => i += p,
                    None => return,
                }
            }
            self.byte(bytes[i], found);
            i += 1;
        }
    }

    fn byte(&mut self, b: u8, found: &mut impl FnMut(&[u8], i64)) {
        if self.in_str {
            if self.keep != Keep::Nothing && !(b == b'"' && !self.esc && self.keep == Keep::Key) {
                self.push(b);
            }
            if self.esc {
                self.esc = false;
            } else if b == b'\\' {
                self.esc = true;
            } else if b == b'"' {
                self.in_str = false;
                if self.keep == Keep::Key {
                    self.end_key();
                }
            }
            return;
        }
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | b':' => {}
            b'"' => {
                self.in_str = true;
                if self.key_next {
                    self.key_next = false;
                    self.keep = Keep::Key;
                    self.len = 0;
                } else if self.keep != Keep::Nothing {
                    self.push(b);
                }
            }
            b'{' | b'[' => {
                if self.depth == 0 {
                    self.msg_depth = if b == b'{' { 1 } else { 2 };
                }
                // An id or code that is not a scalar is not kept.
                self.keep = Keep::Nothing;
                self.depth = self.depth.saturating_add(1);
                if b == b'{' && self.depth == self.msg_depth {
                    self.member = Member::None;
                    self.in_error = false;
                    self.not_error = false;
                    self.id_len = 0;
                    self.code = None;
                    self.key_next = true;
                } else if b == b'{'
                    && self.depth == self.msg_depth + 1
                    && self.member == Member::Error
                {
                    self.in_error = true;
                    self.key_next = true;
                }
            }
            b'}' | b']' => {
                self.end_value();
                if self.depth == self.msg_depth + 1 && self.in_error && b == b'}' {
                    self.in_error = false;
                }
                if self.depth == self.msg_depth && b == b'}' {
                    if let (Some(code), false) = (self.code, self.not_error) {
                        found(&self.id[..self.id_len], code);
                    }
                    if self.msg_depth == 1 {
                        self.done = true;
                    }
                }
                self.depth = self.depth.saturating_sub(1);
            }
            b',' => {
                self.end_value();
                if self.depth == self.msg_depth
                    || (self.in_error && self.depth == self.msg_depth + 1)
                {
                    self.key_next = true;
                }
            }
            _ => {
                if self.keep != Keep::Nothing {
                    self.push(b);
                }
            }
        }
    }
}

/// Where the event-stream reader is in a line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At a line's first byte.
    Start,
    /// In the field name (`n` bytes of "data" matched so far).
    Name(u8),
    /// After `data:`, before the value's first byte (one space is dropped).
    DataColon,
    Data,
    /// A line of another field, or a comment.
    Skip,
    /// After a CR (a LF right after it belongs to it).
    Cr,
}

/// What the gateway learnt of a reply's JSON-RPC error without the probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplyCode {
    /// Nothing: a relayed reply is read by the probe as it passes.
    #[default]
    Unread,
    /// The reply was read whole before it was relayed and was one response to the request
    /// (a single message): its error code, `None` for a result (or a code that is no integer).
    Read(Option<i64>),
}

/// How the relayed bytes reach the reader.
enum Body {
    /// As they are (the hot path: one branch).
    Plain,
    Inflating(Box<Inflate>),
    /// Decoding ended (the code is known, the stream ended, or `why`): the rest is not read.
    Stopped(Option<Unread>),
}

/// Errors read from a reply, by the id of the message that carried each.
pub struct ReplyProbe {
    sse: bool,
    line: Line,
    /// The current event had a `data` line (so a further one is joined with a newline).
    had_data: bool,
    json: Json,
    errors: Vec<(Box<[u8]>, i64)>,
    body: Body,
}

impl ReplyProbe {
    /// A probe for a body that is JSON (`sse` false) or an event stream.
    pub fn new(sse: bool) -> Box<ReplyProbe> {
        Self::coded(sse, Coding::Identity, 0)
    }

    /// A probe for a body sent with `coding`: a gzip or deflate one is decoded as it passes,
    /// `max_decoded` bytes of it at most; any other is not read (`unread`).
    pub fn coded(sse: bool, coding: Coding, max_decoded: u64) -> Box<ReplyProbe> {
        let inflate = |gzip: bool| Body::Inflating(Box::new(Inflate::new(gzip, max_decoded)));
        let body = match coding {
            Coding::Identity => Body::Plain,
            Coding::Gzip => inflate(true),
            Coding::Deflate => inflate(false),
            Coding::Other => Body::Stopped(Some(Unread::Encoding)),
        };
        Box::new(ReplyProbe {
            sse,
            line: Line::Start,
            had_data: false,
            json: Json::new(),
            errors: Vec::new(),
            body,
        })
    }

    /// Why the reply was not read to its end, if it was not (a compressed reply only: a plain
    /// one is always read whole).
    pub fn unread(&self) -> Option<Unread> {
        match &self.body {
            Body::Stopped(why) => *why,
            _ => None,
        }
    }

    /// Feeds the next bytes of the body (after any transfer decoding), as relayed.
    pub fn feed(&mut self, bytes: &[u8]) {
        if let Body::Plain = self.body {
            self.read(bytes);
        } else {
            self.inflate(bytes);
        }
    }

    /// Reads plain bytes of the body.
    fn read(&mut self, bytes: &[u8]) {
        let errors = &mut self.errors;
        let mut found = |id: &[u8], code: i64| {
            if errors.len() < MAX_ERRORS {
                errors.push((id.into(), code));
            }
        };
        if !self.sse {
            self.json.feed(bytes, &mut found);
            return;
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.line {
                Line::Data => {
                    // The rest of the line is data: hand it over in one piece.
                    let end =
                        memchr::memchr2(b'\n', b'\r', &bytes[i..]).map_or(bytes.len(), |p| i + p);
                    self.json.feed(&bytes[i..end], &mut found);
                    i = end;
                    if i < bytes.len() {
                        self.line = if bytes[i] == b'\r' {
                            Line::Cr
                        } else {
                            Line::Start
                        };
                        i += 1;
                    }
                    continue;
                }
                Line::Cr if b == b'\n' => {
                    self.line = Line::Start;
                    i += 1;
                    continue;
                }
                Line::Cr => self.line = Line::Start,
                _ => {}
            }
            let eol = b == b'\n' || b == b'\r';
            self.line = match (self.line, b) {
                // An empty line ends the event: its data was one JSON value.
                (Line::Start, _) if eol => {
                    self.json = Json::new();
                    self.had_data = false;
                    if b == b'\r' {
                        Line::Cr
                    } else {
                        Line::Start
                    }
                }
                (Line::Start, b'd') => Line::Name(1),
                (Line::Name(n), _) if n < 4 && b == b"data"[usize::from(n)] => Line::Name(n + 1),
                (Line::Name(4), b':') => {
                    if self.had_data {
                        self.json.feed(b"\n", &mut found);
                    }
                    self.had_data = true;
                    Line::DataColon
                }
                (Line::DataColon, b' ') => Line::Data,
                (Line::DataColon, _) if eol => Line::Start.after(b),
                (Line::DataColon, _) => {
                    // The value's first byte: read it as data.
                    self.line = Line::Data;
                    continue;
                }
                (_, _) if eol => Line::Start.after(b),
                _ => Line::Skip,
            };
            i += 1;
        }
    }

    /// The error code of the reply to the message with `id`: the error whose id is the same
    /// (as JSON-RPC compares ids); for a single request (`single`), also one whose id the
    /// probe could not match (`null`, or too long to keep), as it answered that request.
    pub fn error_for(&self, id: Option<&[u8]>, single: bool) -> Option<i64> {
        let id = id?;
        self.errors
            .iter()
            .find(|(got, _)| same_id(id, got))
            .or_else(|| single.then(|| self.errors.first()).flatten())
            .map(|(_, code)| *code)
    }
}

impl Line {
    /// The line state after an end-of-line byte.
    fn after(self, b: u8) -> Line {
        if b == b'\r' {
            Line::Cr
        } else {
            Line::Start
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReplyProbe;

    /// Every split of `body` into two pieces reads the same.
    fn probe(sse: bool, body: &str) -> Vec<(String, i64)> {
        let all = |p: Box<ReplyProbe>| {
            p.errors
                .iter()
                .map(|(id, c)| (String::from_utf8_lossy(id).into_owned(), *c))
                .collect::<Vec<_>>()
        };
        let mut whole = ReplyProbe::new(sse);
        whole.feed(body.as_bytes());
        let want = all(whole);
        for cut in 0..body.len() {
            let mut p = ReplyProbe::new(sse);
            p.feed(&body.as_bytes()[..cut]);
            p.feed(&body.as_bytes()[cut..]);
            assert_eq!(all(p), want, "split at {cut}: {body}");
        }
        let mut bytewise = ReplyProbe::new(sse);
        for b in body.as_bytes() {
            bytewise.feed(std::slice::from_ref(b));
        }
        assert_eq!(all(bytewise), want, "byte by byte: {body}");
        want
    }

    fn one(id: &str, code: i64) -> Vec<(String, i64)> {
        vec![(id.to_string(), code)]
    }

    #[test]
    fn an_error_reply_gives_its_id_and_code() {
        let got = probe(
            false,
            r#"{"jsonrpc":"2.0","id":7,"error":{"message":"no","code":-32602,"data":{"code":1}}}"#,
        );
        assert_eq!(got, one("7", -32602));
        let got = probe(
            false,
            r#" { "error" : { "code" : -32000 , "message" : "x\"}" } , "id" : "a\"b" , "jsonrpc":"2.0" }"#,
        );
        assert_eq!(got, one(r#""a\"b""#, -32000));
    }

    #[test]
    fn a_result_is_no_error_even_when_it_says_error() {
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{"isError":true,"error":{"code":5},"content":[{"type":"text","text":"\"error\":{\"code\":3}"}]}}"#;
        assert!(probe(false, body).is_empty());
        // Nested or odd shapes are not read as errors.
        assert!(probe(false, r#"{"id":1,"result":[],"error":{"code":2}}"#).is_empty());
        assert!(probe(false, r#"{"id":1,"error":{"code":1.5}}"#).is_empty());
        assert!(probe(false, r#"{"id":1,"error":{"code":{"n":1}}}"#).is_empty());
        assert!(probe(false, r#"{"id":1,"error":{"data":{"code":4}}}"#).is_empty());
    }

    #[test]
    fn a_batch_reply_gives_each_error_by_id() {
        let got = probe(
            false,
            r#"[{"jsonrpc":"2.0","id":"a","result":{}},{"jsonrpc":"2.0","id":"b","error":{"code":-32601,"message":"m"}},{"id":3,"error":{"code":42}}]"#,
        );
        assert_eq!(
            got,
            vec![(r#""b""#.to_string(), -32601), ("3".to_string(), 42)]
        );
    }

    #[test]
    fn an_event_stream_gives_the_error_of_each_event() {
        let body = concat!(
            ": keep-alive\r\n",
            "event: message\r\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"error\":{\"code\":9}}}\r\n\r\n",
            "id: 1\n",
            "data:{\"jsonrpc\":\"2.0\",\n",
            "data: \"id\":5,\"error\":\n",
            "data:  {\"code\":-32603,\"message\":\"boom\"}}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":6,\"result\":{}}\r\r",
        );
        assert_eq!(probe(true, body), one("5", -32603));
        // An event without its ending blank line is still read (the stream ended there).
        assert_eq!(
            probe(true, "data: {\"id\":1,\"error\":{\"code\":-1}}"),
            one("1", -1)
        );
        // A `data` that is not JSON-RPC ends with its event.
        assert_eq!(
            probe(
                true,
                "data: {\"x\":[\n\ndata: {\"id\":2,\"error\":{\"code\":3}}\n\n"
            ),
            one("2", 3)
        );
    }

    /// Arbitrary bytes (JSON-ish tokens, mostly) never panic, in JSON or event-stream mode,
    /// and never yield more errors than messages closed.
    #[test]
    fn arbitrary_bytes_never_panic() {
        const TOKENS: [&[u8]; 16] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"\"",
            b"\\",
            b"\"error\"",
            b"\"code\"",
            b"\"id\"",
            b"-32",
            b"data: ",
            b"\n",
            b"\r",
            b"\"result\"",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let mut body = Vec::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x % 5 == 0 {
                    body.push((x >> 8) as u8);
                } else {
                    body.extend_from_slice(TOKENS[(x >> 8) as usize % TOKENS.len()]);
                }
            }
            for sse in [false, true] {
                let mut p = ReplyProbe::new(sse);
                p.feed(&body);
                let closes = body.iter().filter(|&&b| b == b'}').count();
                assert!(p.errors.len() <= closes);
                let _ = p.error_for(Some(b"1"), true);
            }
        }
    }

    #[test]
    fn errors_are_matched_to_requests_by_id() {
        let mut p = ReplyProbe::new(false);
        p.feed(br#"[{"id":"x","error":{"code":1}},{"id":2.0,"error":{"code":2}}]"#);
        assert_eq!(p.error_for(Some(br#""x""#), false), Some(1));
        assert_eq!(p.error_for(Some(b"2"), false), Some(2));
        assert_eq!(p.error_for(Some(b"3"), false), None);
        assert_eq!(p.error_for(None, false), None);
        let mut p = ReplyProbe::new(false);
        p.feed(br#"{"id":null,"error":{"code":-32700}}"#);
        assert_eq!(p.error_for(Some(b"1"), true), Some(-32700));
        assert_eq!(p.error_for(Some(b"1"), false), None);
    }
}
