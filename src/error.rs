//! One error kind enum and the single table from kind to HTTP status and JSON-RPC code.
//! No call site chooses a status code: it names a `Kind`, and `Kind::status`/`Kind::rpc_code` decide.

/// JSON-RPC codes used by the gateway. Spec-reserved codes first, then tollgate's own, which sit
/// outside -32768..=-32000 as the JSON-RPC spec asks of application codes.
pub mod code {
    pub const PARSE_ERROR: i32 = -32700;
    pub const INVALID_REQUEST: i32 = -32600;
    pub const METHOD_NOT_FOUND: i32 = -32601;
    pub const INVALID_PARAMS: i32 = -32602;
    pub const INTERNAL_ERROR: i32 = -32603;
    /// 2026-07-28: a header that mirrors the body is missing or disagrees with it.
    pub const HEADER_MISMATCH: i32 = -32020;
    /// 2026-07-28: the revision the request names is not served (`data.supported`).
    pub const UNSUPPORTED_VERSION: i32 = -32022;
    /// The gateway refused the request at the HTTP layer (limits, host, origin, session).
    pub const GATEWAY_REJECTED: i32 = -31000;
    /// The upstream could not be reached (connect failed or refused).
    pub const UPSTREAM_UNAVAILABLE: i32 = -31001;
    /// The upstream did not answer in time.
    pub const UPSTREAM_TIMEOUT: i32 = -31002;
    /// The upstream answered with something that is not a valid MCP HTTP response.
    pub const UPSTREAM_PROTOCOL: i32 = -31003;
    /// The caller may not do this here and now (an authorization rule; the message says why).
    pub const FORBIDDEN: i32 = -31004;
    /// A traffic rule's rate limit, concurrency limit or quota was reached (`data.retryAfterMs`,
    /// `data.limit` the rule, `data.kind`).
    pub const THROTTLED: i32 = -31005;
}

/// Which side caused an error: decides log level and whether a retry could help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Gateway,
}

/// Which protocol era a request belongs to: the table may answer the same kind with another
/// HTTP status in the stateless 2026-07-28 revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Era {
    /// 2024-11-05 … 2025-11-25: `initialize` and `Mcp-Session-Id`.
    #[default]
    Session,
    /// 2026-07-28: no sessions, every request self-describing.
    Stateless,
}

/// How a refusal reaches a client that sent a JSON-RPC request (with an id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A JSON-RPC `error` object.
    RpcError,
    /// In band: HTTP 200 and `result: {content: [{type: text, text: message}], isError: true}`,
    /// so a model reads the sentence and can act on it (a denied or throttled tool call). Only
    /// for a `tools/call` with an id; anything else gets the `RpcError` form.
    ToolError,
}

/// A response header a kind always carries (values computed when rendered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extra {
    None,
    /// `Allow: GET, POST, DELETE, OPTIONS` (405).
    Allow,
    /// `Retry-After: <seconds>`: the refusal passes; the client may try again.
    RetryAfter,
    /// `WWW-Authenticate: <the refusal's challenge>` (401, 403 `insufficient_scope`).
    WwwAuthenticate,
}

/// One row of the table: everything about a kind that is not the request's own data.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    /// HTTP status in the session era when no request id is known (or the answer is an error
    /// the transport must see).
    pub status: u16,
    /// HTTP status for the same refusal in the stateless era.
    pub stateless_status: u16,
    pub code: i32,
    pub side: Side,
    /// The metric label and log name.
    pub label: &'static str,
    pub answer: Answer,
    pub extra: Extra,
    /// A configured limit (counted in `tollgate_limit_rejections_total` only).
    pub limit: bool,
    /// The connection cannot be trusted to stay in step after this refusal.
    pub closes: bool,
}

/// Declares `Kind` and its table in one list: a kind cannot exist without its row (the match
/// in `Kind::row` is generated from the same list, and `ALL`/`COUNT` are counted from it).
macro_rules! kinds {
    ($( $(#[$doc:meta])* $name:ident => $row:expr; )*) => {
        /// Every way a request can fail, as a closed set. `as_str` is the metric label.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Kind { $( $(#[$doc])* $name, )* }

        impl Kind {
            /// Every kind, in declaration order (`ALL[k.index()] == k`).
            pub const ALL: &'static [Kind] = &[ $( Kind::$name, )* ];
            pub const COUNT: usize = Kind::ALL.len();

            /// The one table: kind → status per era, JSON-RPC code, side, label, answer form.
            pub const fn row(self) -> Row {
                use code::*;
                use Side::*;
                match self { $( Kind::$name => $row, )* }
            }
        }
    };
}

/// A row with the defaults: same status in both eras, a JSON-RPC error, no extra header.
const fn row(status: u16, code: i32, side: Side, label: &'static str) -> Row {
    Row {
        status,
        stateless_status: status,
        code,
        side,
        label,
        answer: Answer::RpcError,
        extra: Extra::None,
        limit: false,
        closes: false,
    }
}

const fn limit(status: u16, label: &'static str, closes: bool) -> Row {
    Row {
        limit: true,
        closes,
        ..row(status, code::GATEWAY_REJECTED, Side::Client, label)
    }
}

const fn closing(r: Row) -> Row {
    Row { closes: true, ..r }
}

kinds! {
    // HTTP-layer limits.
    UriTooLong => limit(414, "uri_too_long", true);
    HeaderTooLarge => limit(431, "header_too_large", true);
    TooManyHeaders => limit(431, "too_many_headers", true);
    BodyTooLarge => limit(413, "body_too_large", true);
    HeaderTimeout => limit(408, "header_timeout", true);
    BodyTimeout => limit(408, "body_timeout", true);
    TooManyConnections => Row {
        side: Gateway,
        extra: Extra::RetryAfter,
        ..limit(503, "too_many_connections", true)
    };
    TooManyLegacyStreams => Row {
        side: Gateway,
        extra: Extra::RetryAfter,
        ..limit(503, "max_legacy_streams", false)
    };
    // HTTP-layer protocol.
    MalformedHttp => closing(row(400, GATEWAY_REJECTED, Client, "malformed_http"));
    UnsupportedTransferEncoding =>
        closing(row(501, GATEWAY_REJECTED, Client, "unsupported_transfer_encoding"));
    LengthRequired => closing(row(411, GATEWAY_REJECTED, Client, "length_required"));
    HostNotAllowed => closing(row(403, GATEWAY_REJECTED, Client, "host_not_allowed"));
    OriginNotAllowed => closing(row(403, GATEWAY_REJECTED, Client, "origin_not_allowed"));
    NotFound => row(404, GATEWAY_REJECTED, Client, "not_found");
    MethodNotAllowed => Row {
        extra: Extra::Allow,
        ..row(405, GATEWAY_REJECTED, Client, "method_not_allowed")
    };
    UnsupportedMediaType => row(415, GATEWAY_REJECTED, Client, "unsupported_media_type");
    NotAcceptable => row(406, GATEWAY_REJECTED, Client, "not_acceptable");
    // JSON-RPC / MCP.
    ParseError => row(400, PARSE_ERROR, Client, "parse_error");
    InvalidRequest => row(400, INVALID_REQUEST, Client, "invalid_request");
    BatchNotAllowed => row(400, INVALID_REQUEST, Client, "batch_not_allowed");
    SessionMissing => row(400, INVALID_REQUEST, Client, "session_missing");
    SessionUnknown => row(404, INVALID_REQUEST, Client, "session_unknown");
    UnsupportedProtocolVersion => row(400, INVALID_REQUEST, Client, "unsupported_protocol_version");
    // The stateless revision (2026-07-28): only requests that speak it get these.
    HeaderMismatch => row(400, HEADER_MISMATCH, Client, "header_mismatch");
    MissingMeta => row(400, INVALID_PARAMS, Client, "missing_meta");
    StatelessVersionUnsupported => row(400, UNSUPPORTED_VERSION, Client, "stateless_version_unsupported");
    // Identity and authorization (src/policy/): no or a bad credential; a token without an
    // OAuth scope the item needs; a visible item a rule denies here and now (a tool gets it in
    // band, so the model reads why).
    Unauthenticated => Row {
        extra: Extra::WwwAuthenticate,
        ..row(401, GATEWAY_REJECTED, Client, "unauthenticated")
    };
    InsufficientScope => Row {
        extra: Extra::WwwAuthenticate,
        ..row(403, GATEWAY_REJECTED, Client, "insufficient_scope")
    };
    Forbidden => Row {
        answer: Answer::ToolError,
        ..row(200, FORBIDDEN, Client, "forbidden")
    };
    // Traffic rules (`traffic.rules`, src/proxy/limit/): HTTP 200 in both eras (a 429 ends
    // sessions in Python mcp 1.x), with Retry-After. A rule that names tools answers a tool
    // call in band, so the model reads when to retry; any other throttle is a JSON-RPC error.
    Throttled => Row {
        extra: Extra::RetryAfter,
        ..row(200, THROTTLED, Client, "throttled")
    };
    ToolLimited => Row {
        answer: Answer::ToolError,
        extra: Extra::RetryAfter,
        ..row(200, THROTTLED, Client, "tool_limited")
    };
    // Federation: a request the client may correct (HTTP 200, as a server answers them).
    UnknownName => row(200, INVALID_PARAMS, Client, "unknown_name");
    BadCursor => row(200, INVALID_PARAMS, Client, "bad_cursor");
    // 2026-07-28 answers an unknown or removed method with 404 as well.
    MethodNotFound => Row {
        stateless_status: 404,
        ..row(200, METHOD_NOT_FOUND, Client, "method_not_found")
    };
    // Upstream. A request with an id gets these as HTTP 200 + JSON-RPC error (see
    // `Kind::status_for`): a non-2xx ends the session in some official clients.
    UpstreamUnavailable => row(502, UPSTREAM_UNAVAILABLE, Upstream, "upstream_unavailable");
    UpstreamTimeout => row(504, UPSTREAM_TIMEOUT, Upstream, "upstream_timeout");
    UpstreamProtocol => row(502, UPSTREAM_PROTOCOL, Upstream, "upstream_protocol");
    // `upstreams[].circuit_breaker` is open: failed at once, without trying the upstream.
    UpstreamCircuitOpen => Row {
        extra: Extra::RetryAfter,
        ..row(503, UPSTREAM_UNAVAILABLE, Upstream, "upstream_circuit_open")
    };
    // The gateway could not obtain its own token for an upstream (`upstreams[].credentials`):
    // the token endpoint failed and no unexpired token is left, or no caller token to exchange.
    UpstreamCredentials => row(502, UPSTREAM_UNAVAILABLE, Upstream, "upstream_credentials");
    // The legacy HTTP+SSE transport (2024-11-05): a POST to a stream that does not exist here
    // (forged, ended, or from an earlier process), the limits of its streams, and a worker that
    // could not take a POST handed over to it.
    LegacyStreamUnknown => row(404, INVALID_REQUEST, Client, "legacy_stream_unknown");
    LegacyStreams => Row {
        side: Gateway,
        extra: Extra::RetryAfter,
        ..limit(503, "legacy_sse_streams_per_worker", false)
    };
    LegacyQueueFull => Row {
        side: Gateway,
        extra: Extra::RetryAfter,
        ..limit(503, "legacy_sse_queued_messages", false)
    };
    // 2026-07-28 `subscriptions/listen`: streams a worker holds open.
    ListenStreams => Row {
        side: Gateway,
        extra: Extra::RetryAfter,
        ..limit(503, "listen_streams_per_worker", false)
    };
    // Clients of 2026-07-28 through a worker's held sessions with a session-era upstream.
    HeldSessions => Row {
        side: Gateway,
        extra: Extra::RetryAfter,
        ..limit(503, "held_sessions_per_upstream", false)
    };
    LegacyHandover => Row {
        extra: Extra::RetryAfter,
        ..row(503, GATEWAY_REJECTED, Gateway, "legacy_handover_failed")
    };
    // Gateway.
    ShuttingDown => Row {
        extra: Extra::RetryAfter,
        ..row(503, GATEWAY_REJECTED, Gateway, "shutting_down")
    };
    Internal => row(500, INTERNAL_ERROR, Gateway, "internal");
}

impl Kind {
    /// HTTP status when the failure cannot be answered as a JSON-RPC response (no request id).
    pub const fn status(self) -> u16 {
        self.row().status
    }

    /// HTTP status for this refusal in `era`; `has_id`: the refusal answers a JSON-RPC request
    /// whose id is known. Upstream failures to a request become a JSON-RPC error inside a 200,
    /// so the client keeps its session and can retry.
    pub const fn status_for(self, era: Era, has_id: bool) -> u16 {
        let r = self.row();
        if has_id && matches!(r.side, Side::Upstream) {
            return 200;
        }
        match era {
            Era::Session => r.status,
            Era::Stateless => r.stateless_status,
        }
    }

    pub const fn rpc_code(self) -> i32 {
        self.row().code
    }

    pub const fn side(self) -> Side {
        self.row().side
    }

    pub const fn as_str(self) -> &'static str {
        self.row().label
    }

    /// Position in `ALL` (the declaration order): an index for per-kind arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether the kind is a configured limit being hit (counted only in
    /// `tollgate_limit_rejections_total`, never in `tollgate_rejections_total`).
    pub const fn is_limit(self) -> bool {
        self.row().limit
    }

    /// Whether the connection must close after this refusal whatever else holds (the request's
    /// framing or the client cannot be trusted any more).
    pub const fn closes_connection(self) -> bool {
        self.row().closes
    }
}

/// An error with its kind and a one-line reason for the client and the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}: {reason}")]
pub struct Error {
    pub kind: Kind,
    pub reason: String,
    /// JSON text for the refusal's `error.data` (a circuit-open refusal's `retryAfterMs`).
    pub data: Option<Vec<u8>>,
}

impl Error {
    pub fn new(kind: Kind, reason: impl Into<String>) -> Self {
        Error {
            kind,
            reason: reason.into(),
            data: None,
        }
    }
}

/// Renders a JSON-RPC error object body: `{"jsonrpc":"2.0","id":<id>,"error":{"code":C,"message":"M"}}`.
/// `id` is the raw JSON of the request id (`null` when unknown); `message` is JSON-escaped here.
pub fn render_rpc_error(out: &mut Vec<u8>, id: &[u8], code: i32, message: &str) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(if id.is_empty() { b"null" } else { id });
    out.extend_from_slice(b",\"error\":{\"code\":");
    out.extend_from_slice(code.to_string().as_bytes());
    out.extend_from_slice(b",\"message\":");
    json_escape_into(out, message);
    out.extend_from_slice(b"}}");
}

/// Appends `s` as a JSON string literal (with quotes).
/// How many bytes `json_escape_into` writes for `s` (quotes included), without writing them.
pub fn json_escaped_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 2,
            b if b < 0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}

pub fn json_escape_into(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    // Runs of bytes that need no escape are copied whole; UTF-8 sequences (all bytes >= 0x80)
    // are such bytes, so going by bytes keeps them intact.
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let short: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 15)]);
        } else {
            out.extend_from_slice(short);
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_len_is_what_escape_writes() {
        for t in [
            "",
            "echo",
            "a\"b\\c",
            "line\nnext\r\ttab",
            "\u{1}\u{1f}",
            "h\u{e9}llo \u{1F600}",
        ] {
            let mut out = Vec::new();
            json_escape_into(&mut out, t);
            assert_eq!(json_escaped_len(t), out.len(), "{t:?}");
        }
    }

    #[test]
    fn escaped_strings_read_back_as_they_were() {
        for t in [
            "",
            "plain",
            "a\"b\\c",
            "line\nnext\r\ttab",
            "\u{0}\u{1}\u{8}\u{c}\u{1f} ctl",
            "h\u{e9}llo \u{1F600} \u{2028}",
            "\"",
            "end\\",
        ] {
            let mut out = Vec::new();
            json_escape_into(&mut out, t);
            let back: String = serde_json::from_slice(&out).expect("valid JSON string");
            assert_eq!(back, t);
        }
    }

    #[test]
    fn labels_are_unique_and_indexes_stable() {
        let mut seen = std::collections::HashSet::new();
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert!(seen.insert(k.as_str()), "duplicate label {}", k.as_str());
            assert_eq!(k.index(), i);
        }
        assert_eq!(Kind::COUNT, Kind::ALL.len());
    }

    #[test]
    fn limits_are_gateway_rejections_and_upstream_kinds_keep_sessions() {
        for k in Kind::ALL {
            let r = k.row();
            if r.limit {
                assert_eq!(r.code, code::GATEWAY_REJECTED, "{k:?}");
            }
            if r.side == Side::Upstream {
                assert_eq!(k.status_for(Era::Stateless, true), 200, "{k:?}");
            }
        }
        assert_eq!(Kind::MethodNotAllowed.row().extra, Extra::Allow);
        assert!(Kind::MalformedHttp.closes_connection());
        assert!(!Kind::SessionUnknown.closes_connection());
    }

    #[test]
    fn upstream_failures_keep_the_session_alive() {
        assert_eq!(
            Kind::UpstreamUnavailable.status_for(Era::Session, true),
            200
        );
        assert_eq!(Kind::UpstreamUnavailable.status(), 502);
        assert_eq!(Kind::SessionUnknown.status_for(Era::Session, true), 404);
    }

    #[test]
    fn rendered_error_is_valid_json() {
        let mut out = Vec::new();
        render_rpc_error(
            &mut out,
            b"7",
            code::INVALID_REQUEST,
            "bad \"thing\"\n\u{1}",
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["message"], "bad \"thing\"\n\u{1}");
        out.clear();
        render_rpc_error(&mut out, b"", code::PARSE_ERROR, "x");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["id"].is_null());
    }
}
