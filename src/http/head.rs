//! Request and response heads on httparse. Parsed fields are byte ranges into the caller's
//! buffer (relative to the head's start), so nothing is copied and the buffer can be compacted.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::authority;
use crate::error::Kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
    Delete,
    Options,
    Head,
    Other,
}

impl HttpMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Options => "OPTIONS",
            HttpMethod::Head => "HEAD",
            HttpMethod::Other => "other",
        }
    }
}

/// Why a head was refused, with the kind that decides the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadError {
    pub kind: Kind,
    pub reason: &'static str,
}

impl HeadError {
    const fn new(kind: Kind, reason: &'static str) -> Self {
        HeadError { kind, reason }
    }
}

/// Request headers the gateway decides on or forwards. Each may appear at most once.
#[derive(Clone, Debug, Default)]
pub struct RequestHead {
    pub method: Option<HttpMethod>,
    /// Bytes of the head, including the blank line.
    pub len: usize,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Path and query of the request target (an absolute-form target's too).
    pub target: Range<usize>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// The `Host` field, validated as `host[:port]` (RFC 9112 §3.2: invalid → 400).
    pub host: Option<Range<usize>>,
    /// The request's authority (`host[:port]`), validated: an absolute-form target's, else the
    /// `Host` field (RFC 9112 §3.2.2). Host and Origin checks read this, never `host`.
    pub authority: Option<Range<usize>>,
    /// The host part of `authority` (no port; an IPv6 literal keeps its brackets).
    pub authority_host: Option<Range<usize>>,
    pub origin: Option<Range<usize>>,
    pub accept: Option<Range<usize>>,
    /// More than one Accept header (`accept` is the first).
    pub accept_several: bool,
    pub content_type: Option<Range<usize>>,
    pub session_id: Option<Range<usize>>,
    pub protocol_version: Option<Range<usize>>,
    pub last_event_id: Option<Range<usize>>,
    pub authorization: Option<Range<usize>>,
    /// `X-API-Key` (an API key for a machine client, `auth.api_keys`).
    pub api_key: Option<Range<usize>>,
    /// `Mcp-Method` and `Mcp-Name` (2026-07-28: they mirror the body and are checked against it).
    pub mcp_method: Option<Range<usize>>,
    pub mcp_name: Option<Range<usize>>,
    /// `Mcp-Param-*` headers (2026-07-28), (name, value): forwarded to upstreams of that revision.
    pub mcp_params: Vec<(Range<usize>, Range<usize>)>,
    /// Trace context headers passed through to the upstream: (name, value).
    pub trace: Vec<(Range<usize>, Range<usize>)>,
}

impl RequestHead {
    pub fn method(&self) -> HttpMethod {
        self.method.unwrap_or(HttpMethod::Other)
    }

    /// Path of the target without the query string (`/` for an absolute-form target without
    /// a path, RFC 9112 §3.2.2).
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let t = &buf[self.target.clone()];
        let p = match memchr::memchr(b'?', t) {
            Some(q) => &t[..q],
            None => t,
        };
        if p.is_empty() {
            b"/"
        } else {
            p
        }
    }

    /// The `traceparent` value, from the trace headers already captured (no field of its own:
    /// the head is in every request's future). Sent twice, none: W3C Trace Context has no way
    /// to combine two, so a new trace starts.
    pub fn traceparent<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        let mut found = None;
        for (n, v) in &self.trace {
            if buf[n.clone()].eq_ignore_ascii_case(b"traceparent") {
                if found.is_some() {
                    return None;
                }
                found = Some(&buf[v.clone()]);
            }
        }
        found
    }

    pub fn has_body(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }
}

fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

fn set_once(
    slot: &mut Option<Range<usize>>,
    r: Range<usize>,
    what: &'static str,
) -> Result<(), HeadError> {
    if slot.is_some() {
        return Err(HeadError::new(Kind::MalformedHttp, what));
    }
    *slot = Some(r);
    Ok(())
}

fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    // 19 digits always fit a u64: no overflow check, no UTF-8 check, no `str::parse`.
    v.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Whether a header name spells `transfer-encoding` or `content-length` with other separators
/// (`Transfer_Encoding`, `Content--Length`, `-Content-Length`). A server or proxy that folds
/// `_` into `-` (or drops what is not a letter) would frame the body by it, the gateway does
/// not: two readings of one request. Only reached by names that are neither exactly.
fn resembles_framing_header(name: &[u8]) -> bool {
    fn spells(name: &[u8], letters: &[u8]) -> bool {
        let mut it = name
            .iter()
            .filter(|b| b.is_ascii_alphanumeric())
            .map(u8::to_ascii_lowercase);
        letters.iter().all(|l| it.next() == Some(*l)) && it.next().is_none()
    }
    name.len() >= 13 && (spells(name, b"transferencoding") || spells(name, b"contentlength"))
}

fn has_token(v: &[u8], token: &str) -> bool {
    v.split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// How a request names its target (RFC 9112 §3.2); offsets are within the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetForm {
    /// `/path?query`, or `*` (OPTIONS only).
    Origin,
    /// `http(s)://authority/path?query`: the authority ends where the path starts.
    Absolute {
        authority_len: usize,
        host_len: usize,
        path_start: usize,
    },
}

fn bad_target(reason: &'static str) -> HeadError {
    HeadError::new(Kind::MalformedHttp, reason)
}

/// Which form the request target has; authority-form (CONNECT), other schemes and anything
/// that is no form at all are refused (400).
fn request_target(t: &[u8], method: HttpMethod) -> Result<TargetForm, HeadError> {
    match t {
        [b'/', ..] => return Ok(TargetForm::Origin),
        b"*" if method == HttpMethod::Options => return Ok(TargetForm::Origin),
        _ => {}
    }
    let not_a_target = "request target is not /path, http://host/path or OPTIONS *";
    let colon = memchr::memchr(b':', t).ok_or(bad_target(not_a_target))?;
    let scheme = &t[..colon];
    if !authority::is_scheme(scheme) {
        return Err(bad_target(not_a_target));
    }
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return Err(bad_target("request target scheme must be http or https"));
    }
    let Some(rest) = t[colon..].strip_prefix(b"://") else {
        return Err(bad_target(not_a_target));
    };
    let authority_len = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let a = authority::parse(&rest[..authority_len]).ok_or(bad_target(
        "invalid authority in the request target: expected host[:port]",
    ))?;
    Ok(TargetForm::Absolute {
        authority_len,
        host_len: a.host_end,
        path_start: colon + 3 + authority_len,
    })
}

/// Whether the request line (method, target, version; without its CRLF and the empty lines
/// RFC 9112 §2.2 lets a server skip before it) is longer than `max_line`, as far as the
/// partial head in `buf` shows. Reads at most `max_line + 2` bytes of it.
fn request_line_too_long(buf: &[u8], max_line: usize) -> bool {
    let start = buf
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let window = &line[..line.len().min(max_line.saturating_add(2))];
    match memchr::memchr(b'\n', window) {
        Some(lf) => {
            let len = if lf > 0 && window[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            len > max_line
        }
        // No end yet: what has arrived is line, but for a CR that may be the start of CRLF.
        None => line.len() - usize::from(line.last() == Some(&b'\r')) > max_line,
    }
}

/// The request header fields the gateway reads, by name (case-insensitive): one match on the
/// name's length, then one comparison, instead of a comparison per known field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    ContentLength,
    TransferEncoding,
    Connection,
    Host,
    Origin,
    Accept,
    ContentType,
    SessionId,
    ProtocolVersion,
    LastEventId,
    Authorization,
    ApiKey,
    McpMethod,
    McpName,
    McpParam,
    Expect,
    Trace,
    Other,
}

/// Whether header name `name` (a token, as httparse admits it) is `lower` (lower case letters,
/// digits and `-`) in any case. Compared eight bytes at a time with bit 5 set: a token byte
/// with bit 5 set is a given lower-case letter only if it was that letter in either case, and
/// is `-` or a digit only if it was that byte (`\r` and 0x10..0x19 are not token bytes).
#[inline(always)]
fn token_is(name: &[u8], lower: &[u8]) -> bool {
    const CASE: u64 = 0x2020_2020_2020_2020;
    let n = lower.len();
    if name.len() != n {
        return false;
    }
    debug_assert!(lower
        .iter()
        .all(|&c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-')));
    let word = |b: &[u8], i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(w)
    };
    if n < 8 {
        return name.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b);
    }
    // Whole words, then the last eight bytes (overlapping the previous word when n is not a
    // multiple of eight).
    let mut i = 0;
    while i + 8 <= n {
        if word(name, i) | CASE != word(lower, i) {
            return false;
        }
        i += 8;
    }
    i == n || word(name, n - 8) | CASE == word(lower, n - 8)
}

impl Field {
    fn of(name: &str) -> Field {
        let name = name.as_bytes();
        let is = |n: &str| token_is(name, n.as_bytes());
        match name.len() {
            4 if is("host") => Field::Host,
            6 if is("origin") => Field::Origin,
            6 if is("accept") => Field::Accept,
            6 if is("expect") => Field::Expect,
            7 if is("baggage") => Field::Trace,
            8 if is("mcp-name") => Field::McpName,
            9 if is("x-api-key") => Field::ApiKey,
            10 if is("connection") => Field::Connection,
            10 if is("mcp-method") => Field::McpMethod,
            10 if is("tracestate") => Field::Trace,
            11 if is("traceparent") => Field::Trace,
            12 if is("content-type") => Field::ContentType,
            13 if is("authorization") => Field::Authorization,
            13 if is("last-event-id") => Field::LastEventId,
            14 if is("content-length") => Field::ContentLength,
            14 if is("mcp-session-id") => Field::SessionId,
            17 if is("transfer-encoding") => Field::TransferEncoding,
            20 if is("mcp-protocol-version") => Field::ProtocolVersion,
            n if n > 10 && token_is(&name[..10], b"mcp-param-") => Field::McpParam,
            _ => Field::Other,
        }
    }
}

/// Parses a request head from the start of `buf`. `Ok(None)` means more bytes are needed.
/// `headers` is uninitialised scratch space whose length is the header-count limit;
/// `max_head` bounds the whole head (431), `max_line` its request line (414, RFC 9112 §3).
pub fn parse_request<'b>(
    buf: &'b [u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
    max_head: usize,
    max_line: usize,
) -> Result<Option<RequestHead>, HeadError> {
    let mut head = RequestHead::default();
    Ok(parse_request_into(buf, headers, max_head, max_line, &mut head)?.then_some(head))
}

/// `parse_request`, into `head`: `Ok(true)` when it is complete (`head` written whole),
/// `Ok(false)` when more bytes are needed (`head` untouched). After an error `head` holds part
/// of what was read: to be overwritten, not read. Parsed where the caller keeps it, a head is
/// not copied on its way out.
pub fn parse_request_into<'b>(
    buf: &'b [u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
    max_head: usize,
    max_line: usize,
    head: &mut RequestHead,
) -> Result<bool, HeadError> {
    let mut req = httparse::Request::new(&mut []);
    let status = req
        .parse_with_uninit_headers(buf, headers)
        .map_err(|e| match e {
            httparse::Error::TooManyHeaders => {
                HeadError::new(Kind::TooManyHeaders, "too many request headers")
            }
            _ => HeadError::new(Kind::MalformedHttp, "malformed request head"),
        })?;
    let len = match status {
        httparse::Status::Partial => {
            if buf.len() > max_line && request_line_too_long(buf, max_line) {
                return Err(HeadError::new(Kind::UriTooLong, "request line too long"));
            }
            if buf.len() > max_head {
                return Err(HeadError::new(
                    Kind::HeaderTooLarge,
                    "request head too large",
                ));
            }
            return Ok(false);
        }
        httparse::Status::Complete(n) => n,
    };
    let minor = req.version.unwrap_or(1);
    let method = match req.method.unwrap_or("") {
        "GET" => HttpMethod::Get,
        "POST" => HttpMethod::Post,
        "DELETE" => HttpMethod::Delete,
        "OPTIONS" => HttpMethod::Options,
        "HEAD" => HttpMethod::Head,
        _ => HttpMethod::Other,
    };
    let (Some(method_text), Some(target)) = (req.method, req.path) else {
        return Err(HeadError::new(
            Kind::MalformedHttp,
            "malformed request head",
        ));
    };
    let target = offset(buf, target.as_bytes());
    // The line runs from the method to the CRLF after the version, a few bytes past the target
    // (empty lines before it, which httparse skips, do not count).
    let line_start = offset(buf, method_text.as_bytes()).start;
    let line_end = memchr::memchr(b'\n', &buf[target.end..len]).map_or(len, |lf| {
        let end = target.end + lf;
        end - usize::from(buf[end - 1] == b'\r')
    });
    if line_end - line_start > max_line {
        return Err(HeadError::new(Kind::UriTooLong, "request line too long"));
    }
    if len > max_head {
        return Err(HeadError::new(
            Kind::HeaderTooLarge,
            "request head too large",
        ));
    }
    let form = request_target(&buf[target.clone()], method)?;
    *head = RequestHead {
        method: Some(method),
        len,
        minor,
        target: target.clone(),
        keep_alive: minor == 1,
        ..RequestHead::default()
    };
    if let TargetForm::Absolute {
        authority_len,
        host_len,
        path_start,
    } = form
    {
        // RFC 9112 §3.2.2: the target's authority replaces Host (which must still be valid).
        let a = target.start + path_start - authority_len;
        head.authority = Some(a..a + authority_len);
        head.authority_host = Some(a..a + host_len);
        head.target = target.start + path_start..target.end;
    }
    let mut te_seen = false;
    for h in req.headers.iter() {
        let name = h.name;
        let v = h.value;
        let r = offset(buf, v);
        let field = Field::of(name);
        match field {
            Field::ContentLength => {
                let n = parse_content_length(v).ok_or(HeadError::new(
                    Kind::MalformedHttp,
                    "invalid Content-Length",
                ))?;
                // Even equal ones: RFC 9112 §6.3 lets a server refuse them, and a proxy in front
                // that joined them into "5, 5" would have left an invalid one.
                if head.content_length.is_some() {
                    return Err(HeadError::new(
                        Kind::MalformedHttp,
                        "more than one Content-Length header",
                    ));
                }
                head.content_length = Some(n);
            }
            Field::TransferEncoding => {
                if te_seen || !v.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError::new(
                        Kind::UnsupportedTransferEncoding,
                        "only Transfer-Encoding: chunked is supported",
                    ));
                }
                te_seen = true;
                head.chunked = true;
            }
            Field::Connection => {
                if has_token(v, "close") {
                    head.keep_alive = false;
                } else if has_token(v, "keep-alive") {
                    head.keep_alive = true;
                }
            }
            Field::Host => {
                set_once(&mut head.host, r, "more than one Host header")?;
            }
            Field::Origin => {
                set_once(&mut head.origin, r, "more than one Origin header")?;
            }
            Field::Accept => {
                // Several Accept headers are legal (one list split in two); the check then passes.
                if head.accept.is_some() {
                    head.accept_several = true;
                }
                head.accept.get_or_insert(r);
            }
            Field::ContentType => {
                set_once(
                    &mut head.content_type,
                    r,
                    "more than one Content-Type header",
                )?;
            }
            Field::SessionId => {
                set_once(
                    &mut head.session_id,
                    r,
                    "more than one Mcp-Session-Id header",
                )?;
            }
            Field::ProtocolVersion => {
                set_once(
                    &mut head.protocol_version,
                    r,
                    "more than one MCP-Protocol-Version header",
                )?;
            }
            Field::LastEventId => {
                set_once(
                    &mut head.last_event_id,
                    r,
                    "more than one Last-Event-ID header",
                )?;
            }
            Field::Authorization => {
                set_once(
                    &mut head.authorization,
                    r,
                    "more than one Authorization header",
                )?;
            }
            Field::ApiKey => {
                set_once(&mut head.api_key, r, "more than one X-API-Key header")?;
            }
            Field::McpMethod => {
                set_once(&mut head.mcp_method, r, "more than one Mcp-Method header")?;
            }
            Field::McpName => {
                set_once(&mut head.mcp_name, r, "more than one Mcp-Name header")?;
            }
            Field::McpParam => {
                head.mcp_params.push((offset(buf, name.as_bytes()), r));
            }
            Field::Expect => {
                // RFC 9110 §10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
                if minor == 1 && v.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                    head.expect_continue = true;
                }
            }
            Field::Trace => {
                head.trace.push((offset(buf, name.as_bytes()), r));
            }
            Field::Other if resembles_framing_header(name.as_bytes()) => {
                return Err(HeadError::new(
                    Kind::MalformedHttp,
                    "header name resembles Transfer-Encoding or Content-Length",
                ));
            }
            Field::Other => {}
        }
    }
    if head.chunked && head.content_length.is_some() {
        // RFC 9112 §6.3: a request with both is a smuggling vector; refuse rather than guess.
        return Err(HeadError::new(
            Kind::MalformedHttp,
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if matches!(method, HttpMethod::Get | HttpMethod::Head) && head.has_body() {
        // RFC 9110 §9.3.1: content in a GET has no defined semantics, and servers disagree on
        // whether to read it; refusing it (and closing) leaves no second reading of the stream.
        return Err(HeadError::new(
            Kind::MalformedHttp,
            "GET and HEAD requests take no body",
        ));
    }
    if head.chunked && minor == 0 {
        return Err(HeadError::new(
            Kind::MalformedHttp,
            "chunked body in an HTTP/1.0 request",
        ));
    }
    match &head.host {
        Some(r) => {
            let a = authority::parse(&buf[r.clone()]).ok_or(HeadError::new(
                Kind::MalformedHttp,
                "invalid Host header: expected host[:port] (RFC 9112 section 3.2)",
            ))?;
            if head.authority.is_none() {
                head.authority_host = Some(r.start..r.start + a.host_end);
                head.authority = Some(r.clone());
            }
        }
        None if minor == 1 => {
            return Err(HeadError::new(Kind::MalformedHttp, "missing Host header"));
        }
        None => {}
    }
    Ok(true)
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Response head from an upstream.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub len: usize,
    pub framing: Framing,
    pub keep_alive: bool,
    /// `Keep-Alive: timeout=N` (seconds): the upstream closes idle connections after N.
    pub keep_alive_timeout: Option<u32>,
    pub content_type: Option<Range<usize>>,
    pub session_id: Option<Range<usize>>,
    /// Headers relayed to the client as they are: everything but hop-by-hop, framing and
    /// session headers (the gateway sets those itself). Compact (16 bytes each, 8 inline): the
    /// head is moved with every request's future, whose size every await copies.
    pub relay: smallvec::SmallVec<[RelayedHeader; 8]>,
}

/// A relayed response header: where its name and value are in the head's bytes (a head is
/// bounded far below 4 GiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayedHeader {
    name: (u32, u32),
    value: (u32, u32),
}

impl RelayedHeader {
    fn new(name: Range<usize>, value: Range<usize>) -> Self {
        let span = |r: Range<usize>| (r.start as u32, r.end as u32);
        RelayedHeader {
            name: span(name),
            value: span(value),
        }
    }

    pub fn name(self) -> Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    pub fn value(self) -> Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

impl ResponseHead {
    pub fn is_sse(&self, buf: &[u8]) -> bool {
        self.content_type.as_ref().is_some_and(|r| {
            let v = &buf[r.clone()];
            v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream")
        })
    }
}

const DROPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "mcp-session-id",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "set-cookie",
    "x-accel-buffering",
    "date",
    "server",
];

/// The `timeout=N` parameter of a `Keep-Alive` header (RFC 2068 §19.7.1.1, as Node and others
/// send it: `Keep-Alive: timeout=5`). Unparseable values are ignored.
fn keep_alive_timeout(v: &[u8]) -> Option<u32> {
    v.split(|b| *b == b',').find_map(|p| {
        let p = p.trim_ascii();
        let (k, n) = p.split_at(p.iter().position(|b| *b == b'=')?);
        if !k.trim_ascii().eq_ignore_ascii_case(b"timeout") {
            return None;
        }
        let n = n[1..].trim_ascii();
        if n.is_empty() || n.len() > 9 || !n.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(n).ok()?.parse().ok()
    })
}

/// Parses a response head. `Ok(None)`: need more bytes. `head_request`: the request was HEAD.
pub fn parse_response<'b>(
    buf: &'b [u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
    max_head: usize,
    head_request: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut resp = httparse::Response::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, headers)
        .map_err(|_| {
            HeadError::new(
                Kind::UpstreamProtocol,
                "malformed response head from upstream",
            )
        })?;
    let len = match status {
        httparse::Status::Partial => {
            if buf.len() > max_head {
                return Err(HeadError::new(
                    Kind::UpstreamProtocol,
                    "upstream response head too large",
                ));
            }
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    // A head that arrived whole in one read is held to the same limit as one still arriving.
    if len > max_head {
        return Err(HeadError::new(
            Kind::UpstreamProtocol,
            "upstream response head too large",
        ));
    }
    let code = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(1);
    let mut head = ResponseHead {
        status: code,
        len,
        framing: Framing::UntilClose,
        keep_alive: minor == 1,
        keep_alive_timeout: None,
        content_type: None,
        session_id: None,
        relay: smallvec::SmallVec::new(),
    };
    let mut content_length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        let name = h.name;
        let v = h.value;
        let is = |n: &str| token_is(name.as_bytes(), n.as_bytes());
        if is("content-length") {
            let n = parse_content_length(v).ok_or(HeadError::new(
                Kind::UpstreamProtocol,
                "invalid Content-Length from upstream",
            ))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HeadError::new(
                    Kind::UpstreamProtocol,
                    "conflicting Content-Length from upstream",
                ));
            }
            content_length = Some(n);
        } else if is("transfer-encoding") {
            if !v.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::new(
                    Kind::UpstreamProtocol,
                    "unsupported Transfer-Encoding from upstream",
                ));
            }
            chunked = true;
        } else if is("connection") {
            if has_token(v, "close") {
                head.keep_alive = false;
            } else if has_token(v, "keep-alive") {
                head.keep_alive = true;
            }
        } else if is("keep-alive") {
            head.keep_alive_timeout = keep_alive_timeout(v);
        } else if is("mcp-session-id") {
            set_once(
                &mut head.session_id,
                offset(buf, v),
                "more than one Mcp-Session-Id from upstream",
            )
            .map_err(|e| HeadError::new(Kind::UpstreamProtocol, e.reason))?;
        } else {
            if is("content-type") {
                head.content_type = Some(offset(buf, v));
            }
            if !DROPPED_RESPONSE_HEADERS.iter().any(|d| is(d)) {
                head.relay.push(RelayedHeader::new(
                    offset(buf, name.as_bytes()),
                    offset(buf, v),
                ));
            }
        }
    }
    head.framing = if head_request || code == 204 || code == 304 || (100..200).contains(&code) {
        Framing::None
    } else if chunked {
        // Both framings: chunked wins, and the connection is not reused (RFC 9112 §6.3), since
        // something on the way may have framed it by the length.
        if content_length.is_some() {
            head.keep_alive = false;
        }
        Framing::Chunked
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        head.keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(head))
}

#[cfg(test)]
mod tests;
