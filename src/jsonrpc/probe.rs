//! The reply probe: reads a relayed upstream reply as it passes (a JSON body, or an event
//! stream's `data`) for the JSON-RPC errors it carries, `{"id":…,"error":{"code":…}}`, without
//! holding the reply: a fixed-size state machine fed each piece the relay writes. The scanner
//! needs a whole body; a relayed reply is never whole in one place, hence this. A gzip or
//! deflate reply is inflated piece by piece into a small stack buffer, up to a bound.

use super::id::same_id;

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

/// A reply's `Content-Encoding`, as far as the probe reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    /// `deflate`: zlib-wrapped as RFC 9110 says; raw deflate (as some servers send) is
    /// told apart by its first bytes.
    Deflate,
    /// Any other (`br`, `zstd`, `compress`, several codings): not read.
    Other,
}

impl Coding {
    /// The coding a `Content-Encoding` value names (absent: `Identity`).
    pub fn of(value: &[u8]) -> Coding {
        let v = value.trim_ascii();
        if v.is_empty() || v.eq_ignore_ascii_case(b"identity") {
            Coding::Identity
        } else if v.eq_ignore_ascii_case(b"gzip") || v.eq_ignore_ascii_case(b"x-gzip") {
            Coding::Gzip
        } else if v.eq_ignore_ascii_case(b"deflate") {
            Coding::Deflate
        } else {
            Coding::Other
        }
    }
}

/// Why a reply's errors were not read to its end (for `tollgate_audit_replies_unread_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unread {
    /// A `Content-Encoding` the probe does not decode (br, zstd, …).
    Encoding,
    /// The reply decodes to more than `audit.max_decoded` bytes (the first that many were read).
    Limit,
    /// The compressed bytes were not valid gzip or deflate.
    Corrupt,
}

impl Unread {
    pub fn as_str(self) -> &'static str {
        match self {
            Unread::Encoding => "encoding",
            Unread::Limit => "max_decoded",
            Unread::Corrupt => "corrupt",
        }
    }
}

/// How the relayed bytes reach the reader.
enum Body {
    /// As they are (the hot path: one branch).
    Plain,
    Inflating(Box<Inflate>),
    /// Decoding ended (the code is known, the stream ended, or `why`): the rest is not read.
    Stopped(Option<Unread>),
}

/// A compressed reply's decoder: its gzip header first, then the deflate stream.
struct Inflate {
    gzip: Option<GzHeader>,
    /// A `deflate` body's first byte, when it came alone (zlib or raw is told by two).
    first: Option<u8>,
    /// Created once the wrapper is known (miniz_oxide's state, ~43 KiB, only for such replies).
    d: Option<flate2::Decompress>,
    /// Decoded bytes still to be read (`audit.max_decoded`).
    left: u64,
}

/// Where the reader is in a gzip member's header (RFC 1952 §2.3): skipped, not kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GzHeader {
    /// The fixed ten bytes, `n` read so far.
    Fixed {
        n: u8,
        flags: u8,
    },
    /// FEXTRA's two length bytes (`n` read, the low one in `len`).
    ExtraLen {
        n: u8,
        len: u16,
        flags: u8,
    },
    Extra {
        left: u16,
        flags: u8,
    },
    /// FNAME, then FCOMMENT: zero-terminated.
    Name {
        flags: u8,
    },
    Comment {
        flags: u8,
    },
    /// FHCRC: two bytes.
    Crc {
        n: u8,
    },
    Done,
}

const FHCRC: u8 = 2;
const FEXTRA: u8 = 4;
const FNAME: u8 = 8;
const FCOMMENT: u8 = 16;

impl GzHeader {
    /// The state after the optional fields that `flags` announce, past `stage` (0: none read,
    /// then FEXTRA, FNAME, FCOMMENT: the order they come in).
    fn next(flags: u8, stage: u8) -> GzHeader {
        if stage < 1 && flags & FEXTRA != 0 {
            GzHeader::ExtraLen {
                n: 0,
                len: 0,
                flags,
            }
        } else if stage < 2 && flags & FNAME != 0 {
            GzHeader::Name { flags }
        } else if stage < 3 && flags & FCOMMENT != 0 {
            GzHeader::Comment { flags }
        } else if flags & FHCRC != 0 {
            GzHeader::Crc { n: 0 }
        } else {
            GzHeader::Done
        }
    }

    /// Reads header bytes from `bytes`: how many were header, or `Err` for no gzip member.
    fn feed(&mut self, bytes: &[u8]) -> Result<usize, ()> {
        let mut i = 0;
        while i < bytes.len() && *self != GzHeader::Done {
            let b = bytes[i];
            *self = match *self {
                GzHeader::Fixed { n, flags } => {
                    // ID1 ID2 CM (8: deflate) FLG MTIME×4 XFL OS; reserved flag bits unset.
                    let ok = match n {
                        0 => b == 0x1f,
                        1 => b == 0x8b,
                        2 => b == 8,
                        3 => b & 0xe0 == 0,
                        _ => true,
                    };
                    if !ok {
                        return Err(());
                    }
                    let flags = if n == 3 { b } else { flags };
                    if n == 9 {
                        GzHeader::next(flags, 0)
                    } else {
                        GzHeader::Fixed { n: n + 1, flags }
                    }
                }
                GzHeader::ExtraLen { n: 0, flags, .. } => GzHeader::ExtraLen {
                    n: 1,
                    len: u16::from(b),
                    flags,
                },
                GzHeader::ExtraLen { len, flags, .. } => {
                    let left = len | u16::from(b) << 8;
                    if left == 0 {
                        GzHeader::next(flags, 1)
                    } else {
                        GzHeader::Extra { left, flags }
                    }
                }
                GzHeader::Extra { left, flags } => {
                    // Skipped in one step as far as this piece goes.
                    let take = (bytes.len() - i).min(usize::from(left));
                    i += take;
                    let left = left - take as u16;
                    *self = if left == 0 {
                        GzHeader::next(flags, 1)
                    } else {
                        GzHeader::Extra { left, flags }
                    };
                    continue;
                }
                GzHeader::Name { flags } | GzHeader::Comment { flags } => {
                    let past = if matches!(*self, GzHeader::Name { .. }) {
                        2
                    } else {
                        3
                    };
                    match memchr::memchr(0, &bytes[i..]) {
                        Some(p) => {
                            i += p + 1;
                            *self = GzHeader::next(flags, past);
                        }
                        None => i = bytes.len(),
                    }
                    continue;
                }
                GzHeader::Crc { n: 0 } => GzHeader::Crc { n: 1 },
                GzHeader::Crc { .. } | GzHeader::Done => GzHeader::Done,
            };
            i += 1;
        }
        Ok(i)
    }
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

/// Decoded bytes handed to the reader at a time (a stack buffer; the reply is never held).
const INFLATE_CHUNK: usize = 4096;

impl ReplyProbe {
    /// A probe for a body that is JSON (`sse` false) or an event stream.
    pub fn new(sse: bool) -> Box<ReplyProbe> {
        Self::coded(sse, Coding::Identity, 0)
    }

    /// A probe for a body sent with `coding`: a gzip or deflate one is decoded as it passes,
    /// `max_decoded` bytes of it at most; any other is not read (`unread`).
    pub fn coded(sse: bool, coding: Coding, max_decoded: u64) -> Box<ReplyProbe> {
        let inflate = |gzip: bool| {
            Body::Inflating(Box::new(Inflate {
                gzip: gzip.then_some(GzHeader::Fixed { n: 0, flags: 0 }),
                first: None,
                d: None,
                left: max_decoded,
            }))
        };
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

    /// Decodes compressed `bytes` and reads what they decode to, until the code is known, the
    /// stream ends, or it decodes to more than `max_decoded` bytes (a zip bomb costs that much,
    /// and one byte, at most).
    fn inflate(&mut self, bytes: &[u8]) {
        // Taken out while the reader runs (it borrows the rest of `self`); put back unless
        // decoding ended, when its memory goes at once rather than with the request.
        let mut z = match std::mem::replace(&mut self.body, Body::Stopped(None)) {
            Body::Inflating(z) => z,
            other => {
                self.body = other;
                return;
            }
        };
        if let Err(why) = self.inflate_with(&mut z, bytes) {
            self.body = Body::Stopped(why);
        } else {
            self.body = Body::Inflating(z);
        }
    }

    /// `Err`: decoding ended, for the reason given (`None`: nothing more to learn).
    fn inflate_with(&mut self, z: &mut Inflate, mut bytes: &[u8]) -> Result<(), Option<Unread>> {
        if let Some(h) = z.gzip.as_mut() {
            if *h != GzHeader::Done {
                let n = h.feed(bytes).map_err(|()| Some(Unread::Corrupt))?;
                bytes = &bytes[n..];
            }
            if *h != GzHeader::Done {
                return Ok(());
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if z.d.is_none() {
            // `deflate`: zlib-wrapped when its first two bytes are a zlib header (CM 8, a
            // window of 32 KiB at most, a check that divides by 31), else raw deflate.
            let zlib = match (z.gzip.is_some(), z.first, bytes) {
                (true, ..) => false,
                (false, None, &[b]) => {
                    z.first = Some(b);
                    return Ok(());
                }
                (false, Some(cmf), &[flg, ..]) | (false, None, &[cmf, flg, ..]) => {
                    cmf & 0x0f == 8
                        && cmf >> 4 <= 7
                        && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
                }
                (false, _, []) => return Ok(()),
            };
            z.d = Some(flate2::Decompress::new(zlib));
            if let Some(b) = z.first.take() {
                self.pump(z, &[b])?;
            }
        }
        self.pump(z, bytes)
    }

    /// Runs the decoder over `bytes`, reading its output a stack buffer at a time.
    fn pump(&mut self, z: &mut Inflate, mut bytes: &[u8]) -> Result<(), Option<Unread>> {
        let Some(d) = z.d.as_mut() else {
            return Ok(());
        };
        let mut out = [0u8; INFLATE_CHUNK];
        loop {
            // Room for one byte past the bound: a reply of exactly `max_decoded` bytes is read
            // whole (its end may only show on a later call), one byte more is not.
            let room = z.left.saturating_add(1).min(INFLATE_CHUNK as u64) as usize;
            let (in0, out0) = (d.total_in(), d.total_out());
            let status = d.decompress(bytes, &mut out[..room], flate2::FlushDecompress::None);
            let used = (d.total_in() - in0) as usize;
            let made = (d.total_out() - out0) as usize;
            bytes = &bytes[used..];
            if made as u64 > z.left {
                self.read(&out[..z.left as usize]);
                return Err(Some(Unread::Limit));
            }
            z.left -= made as u64;
            self.read(&out[..made]);
            match status {
                Err(_) => return Err(Some(Unread::Corrupt)),
                Ok(flate2::Status::StreamEnd) => return Err(None),
                Ok(_) => {}
            }
            // The one message was read: its code (or that it has none) is known.
            if !self.sse && self.json.done {
                return Err(None);
            }
            // Decoded bytes may wait in the decoder while the output was full; else it
            // wants more input.
            if made < room && (bytes.is_empty() || used == 0) {
                return Ok(());
            }
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

#[cfg(test)]
mod compressed {
    use super::{Coding, ReplyProbe, Unread};
    use std::io::Write;

    fn gzip(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    }

    /// With every optional header field (FEXTRA, FNAME, FCOMMENT, FHCRC) the reader skips.
    fn gzip_with_header(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::GzBuilder::new()
            .extra(vec![7u8; 300])
            .filename("reply.json")
            .comment("a comment")
            .write(Vec::new(), flate2::Compression::fast());
        e.write_all(body).unwrap();
        let mut z = e.finish().unwrap();
        // flate2's builder has no FHCRC: set the flag and splice the two bytes in after the
        // comment's terminator (their value is not checked).
        z[3] |= 2;
        let at = 10 + 2 + 300 + "reply.json".len() + 1 + "a comment".len() + 1;
        z.splice(at..at, [0xab, 0xcd]);
        z
    }

    fn zlib(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    }

    fn codes(p: &ReplyProbe) -> Vec<(String, i64)> {
        p.errors
            .iter()
            .map(|(id, c)| (String::from_utf8_lossy(id).into_owned(), *c))
            .collect()
    }

    /// Reads `wire` whole, split at every point, and byte by byte: each reads the same.
    fn probe(sse: bool, coding: Coding, wire: &[u8]) -> (Vec<(String, i64)>, Option<Unread>) {
        let mut whole = ReplyProbe::coded(sse, coding, 1 << 20);
        whole.feed(wire);
        let want = (codes(&whole), whole.unread());
        for cut in 0..wire.len() {
            let mut p = ReplyProbe::coded(sse, coding, 1 << 20);
            p.feed(&wire[..cut]);
            p.feed(&wire[cut..]);
            assert_eq!((codes(&p), p.unread()), want, "split at {cut}");
        }
        let mut bytewise = ReplyProbe::coded(sse, coding, 1 << 20);
        for b in wire {
            bytewise.feed(std::slice::from_ref(b));
        }
        assert_eq!((codes(&bytewise), bytewise.unread()), want, "byte by byte");
        want
    }

    const ERROR: &[u8] = br#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"bad"}}"#;

    #[test]
    fn a_gzip_error_reply_gives_its_code() {
        let want = (vec![("7".to_string(), -32602)], None);
        assert_eq!(probe(false, Coding::Gzip, &gzip(ERROR)), want);
        assert_eq!(probe(false, Coding::Gzip, &gzip_with_header(ERROR)), want);
    }

    #[test]
    fn a_deflate_reply_is_read_zlib_wrapped_or_raw() {
        let want = (vec![("7".to_string(), -32602)], None);
        assert_eq!(probe(false, Coding::Deflate, &zlib(ERROR)), want);
        assert_eq!(probe(false, Coding::Deflate, &raw_deflate(ERROR)), want);
    }

    #[test]
    fn a_gzip_event_stream_gives_each_errors_code() {
        let sse = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n\
                    data: {\"jsonrpc\":\"2.0\",\"id\":\"a\",\n\
                    data: \"error\":{\"code\":-32001}}\n\n";
        let (got, unread) = probe(true, Coding::Gzip, &gzip(sse));
        assert_eq!(got, vec![(r#""a""#.to_string(), -32001)]);
        assert_eq!(unread, None);
    }

    #[test]
    fn a_result_stops_the_decoder_at_once() {
        // A large result after `result`: nothing of it is decoded beyond the first piece.
        let mut body = br#"{"jsonrpc":"2.0","id":1,"result":{"text":""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', 1 << 20));
        body.extend_from_slice(br#""}}"#);
        let mut p = ReplyProbe::coded(false, Coding::Gzip, 1 << 20);
        p.feed(&gzip(&body));
        assert!(codes(&p).is_empty());
        assert_eq!(
            p.unread(),
            None,
            "stopped because the message was read, not the bound"
        );
        assert!(matches!(p.body, super::Body::Stopped(None)));
    }

    #[test]
    fn a_gzip_bomb_is_decoded_to_the_bound_only() {
        // 64 MiB of whitespace inside the message before its error, as ~64 KiB on the wire.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(br#"{"jsonrpc":"2.0","id":1,"#).unwrap();
        let spaces = vec![b' '; 1 << 20];
        for _ in 0..64 {
            e.write_all(&spaces).unwrap();
        }
        e.write_all(br#""error":{"code":-32000}}"#).unwrap();
        let wire = e.finish().unwrap();
        assert!(wire.len() < 1 << 20, "{} bytes", wire.len());
        let mut p = ReplyProbe::coded(false, Coding::Gzip, 1 << 20);
        for piece in wire.chunks(16 * 1024) {
            p.feed(piece);
        }
        assert!(codes(&p).is_empty());
        assert_eq!(p.unread(), Some(Unread::Limit));
        // The same reply under a bound past its size is read to its error.
        let mut p = ReplyProbe::coded(false, Coding::Gzip, 65 << 20);
        p.feed(&wire);
        assert_eq!(codes(&p), vec![("1".to_string(), -32000)]);
        // 0 decodes nothing.
        let mut p = ReplyProbe::coded(false, Coding::Gzip, 0);
        p.feed(&gzip(ERROR));
        assert!(codes(&p).is_empty());
        assert_eq!(p.unread(), Some(Unread::Limit));
    }

    /// A reply that decodes to exactly `max_decoded` bytes is read whole; one byte more is
    /// `Limit` (whole, split at every point, byte by byte; in one decoder chunk or several).
    #[test]
    fn a_reply_of_exactly_max_decoded_bytes_is_read_whole() {
        let event = "data: {\"jsonrpc\":\"2.0\",\"id\":\"a\",\"error\":{\"code\":-32001}}\n\n";
        let padded = format!(": {}\n{event}", "p".repeat(3 * super::INFLATE_CHUNK));
        let cases = [
            (true, event.to_string()),
            (true, padded),
            (false, String::from_utf8(ERROR.to_vec()).unwrap()),
        ];
        for (sse, body) in &cases {
            let len = body.len() as u64;
            for (coding, wire) in [
                (Coding::Gzip, gzip(body.as_bytes())),
                (Coding::Deflate, zlib(body.as_bytes())),
                (Coding::Deflate, raw_deflate(body.as_bytes())),
            ] {
                let read = |max: u64, pieces: &[&[u8]]| {
                    let mut p = ReplyProbe::coded(*sse, coding, max);
                    for piece in pieces {
                        p.feed(piece);
                    }
                    (p.unread(), codes(&p).len())
                };
                let bytewise: Vec<&[u8]> = wire.chunks(1).collect();
                for cut in (0..=wire.len()).map(|c| [&wire[..c], &wire[c..]]) {
                    let at = format!("{coding:?} sse {sse} cut at {}", cut[0].len());
                    assert_eq!(read(len, &cut), (None, 1), "max: {at}");
                    assert_eq!(read(len - 1, &cut).0, Some(Unread::Limit), "max - 1: {at}");
                }
                assert_eq!(
                    read(len, &bytewise),
                    (None, 1),
                    "max: {coding:?} byte by byte"
                );
                assert_eq!(
                    read(len - 1, &bytewise).0,
                    Some(Unread::Limit),
                    "max - 1: {coding:?} byte by byte"
                );
            }
        }
    }

    #[test]
    fn corrupt_or_unknown_codings_are_not_read() {
        let mut p = ReplyProbe::coded(false, Coding::Gzip, 1 << 20);
        p.feed(ERROR);
        assert_eq!(p.unread(), Some(Unread::Corrupt), "no gzip magic");
        let mut bad = gzip(ERROR);
        bad.truncate(10);
        bad.extend_from_slice(&[0xff; 32]);
        let mut p = ReplyProbe::coded(false, Coding::Gzip, 1 << 20);
        p.feed(&bad);
        assert_eq!(p.unread(), Some(Unread::Corrupt), "no deflate stream");
        let mut p = ReplyProbe::coded(false, Coding::Other, 1 << 20);
        p.feed(ERROR);
        assert!(codes(&p).is_empty());
        assert_eq!(p.unread(), Some(Unread::Encoding));
    }

    /// Damaged compressed bytes (each of a real reply's bytes flipped in turn, then a cut at
    /// each point) end in `Corrupt` or a reading, never a panic; every piece after is ignored.
    #[test]
    fn damaged_compressed_bytes_never_panic() {
        for (coding, wire) in [
            (Coding::Gzip, gzip_with_header(ERROR)),
            (Coding::Deflate, zlib(ERROR)),
            (Coding::Deflate, raw_deflate(ERROR)),
        ] {
            for i in 0..wire.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = wire.clone();
                    bad[i] ^= flip;
                    let mut p = ReplyProbe::coded(i % 2 == 0, coding, 1 << 20);
                    p.feed(&bad[..i + 1]);
                    p.feed(&bad[i + 1..]);
                    p.feed(&wire);
                    let _ = p.error_for(Some(b"7"), true);
                }
                let mut p = ReplyProbe::coded(false, coding, 1 << 20);
                p.feed(&wire[..i]);
                assert_eq!(
                    p.unread(),
                    None,
                    "a cut reply is not corrupt ({coding:?} at {i})"
                );
            }
        }
    }

    #[test]
    fn content_encoding_values() {
        assert_eq!(Coding::of(b""), Coding::Identity);
        assert_eq!(Coding::of(b" Identity "), Coding::Identity);
        assert_eq!(Coding::of(b"GZIP"), Coding::Gzip);
        assert_eq!(Coding::of(b"x-gzip"), Coding::Gzip);
        assert_eq!(Coding::of(b"deflate"), Coding::Deflate);
        for other in ["br", "zstd", "compress", "gzip, br", "gzip;q=1"] {
            assert_eq!(Coding::of(other.as_bytes()), Coding::Other, "{other}");
        }
    }
}
