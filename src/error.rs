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
    /// The gateway refused the request at the HTTP layer (limits, host, origin, session).
    pub const GATEWAY_REJECTED: i32 = -31000;
    /// The upstream could not be reached (connect failed or refused).
    pub const UPSTREAM_UNAVAILABLE: i32 = -31001;
    /// The upstream did not answer in time.
    pub const UPSTREAM_TIMEOUT: i32 = -31002;
    /// The upstream answered with something that is not a valid MCP HTTP response.
    pub const UPSTREAM_PROTOCOL: i32 = -31003;
}

/// Which side caused an error: decides log level and whether a retry could help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Gateway,
}

/// Every way a request can fail, as a closed set. `as_str` is the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    // HTTP-layer limits.
    UriTooLong,
    HeaderTooLarge,
    TooManyHeaders,
    BodyTooLarge,
    HeaderTimeout,
    BodyTimeout,
    TooManyConnections,
    // HTTP-layer protocol.
    MalformedHttp,
    UnsupportedTransferEncoding,
    LengthRequired,
    HostNotAllowed,
    OriginNotAllowed,
    NotFound,
    MethodNotAllowed,
    UnsupportedMediaType,
    NotAcceptable,
    // JSON-RPC / MCP.
    ParseError,
    InvalidRequest,
    BatchNotAllowed,
    SessionMissing,
    SessionUnknown,
    UnsupportedProtocolVersion,
    // Upstream.
    UpstreamUnavailable,
    UpstreamTimeout,
    UpstreamProtocol,
    // Gateway.
    ShuttingDown,
    Internal,
}

impl Kind {
    pub const ALL: [Kind; 27] = [
        Kind::UriTooLong,
        Kind::HeaderTooLarge,
        Kind::TooManyHeaders,
        Kind::BodyTooLarge,
        Kind::HeaderTimeout,
        Kind::BodyTimeout,
        Kind::TooManyConnections,
        Kind::MalformedHttp,
        Kind::UnsupportedTransferEncoding,
        Kind::LengthRequired,
        Kind::HostNotAllowed,
        Kind::OriginNotAllowed,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::UnsupportedMediaType,
        Kind::NotAcceptable,
        Kind::ParseError,
        Kind::InvalidRequest,
        Kind::BatchNotAllowed,
        Kind::SessionMissing,
        Kind::SessionUnknown,
        Kind::UnsupportedProtocolVersion,
        Kind::UpstreamUnavailable,
        Kind::UpstreamTimeout,
        Kind::UpstreamProtocol,
        Kind::ShuttingDown,
        Kind::Internal,
    ];

    /// The one table: kind → (HTTP status, JSON-RPC code, side, label).
    const fn row(self) -> (u16, i32, Side, &'static str) {
        use code::*;
        use Side::*;
        match self {
            Kind::UriTooLong => (414, GATEWAY_REJECTED, Client, "uri_too_long"),
            Kind::HeaderTooLarge => (431, GATEWAY_REJECTED, Client, "header_too_large"),
            Kind::TooManyHeaders => (431, GATEWAY_REJECTED, Client, "too_many_headers"),
            Kind::BodyTooLarge => (413, GATEWAY_REJECTED, Client, "body_too_large"),
            Kind::HeaderTimeout => (408, GATEWAY_REJECTED, Client, "header_timeout"),
            Kind::BodyTimeout => (408, GATEWAY_REJECTED, Client, "body_timeout"),
            Kind::TooManyConnections => (503, GATEWAY_REJECTED, Gateway, "too_many_connections"),
            Kind::MalformedHttp => (400, GATEWAY_REJECTED, Client, "malformed_http"),
            Kind::UnsupportedTransferEncoding => (
                501,
                GATEWAY_REJECTED,
                Client,
                "unsupported_transfer_encoding",
            ),
            Kind::LengthRequired => (411, GATEWAY_REJECTED, Client, "length_required"),
            Kind::HostNotAllowed => (403, GATEWAY_REJECTED, Client, "host_not_allowed"),
            Kind::OriginNotAllowed => (403, GATEWAY_REJECTED, Client, "origin_not_allowed"),
            Kind::NotFound => (404, GATEWAY_REJECTED, Client, "not_found"),
            Kind::MethodNotAllowed => (405, GATEWAY_REJECTED, Client, "method_not_allowed"),
            Kind::UnsupportedMediaType => (415, GATEWAY_REJECTED, Client, "unsupported_media_type"),
            Kind::NotAcceptable => (406, GATEWAY_REJECTED, Client, "not_acceptable"),
            Kind::ParseError => (400, PARSE_ERROR, Client, "parse_error"),
            Kind::InvalidRequest => (400, INVALID_REQUEST, Client, "invalid_request"),
            Kind::BatchNotAllowed => (400, INVALID_REQUEST, Client, "batch_not_allowed"),
            Kind::SessionMissing => (400, INVALID_REQUEST, Client, "session_missing"),
            Kind::SessionUnknown => (404, INVALID_REQUEST, Client, "session_unknown"),
            Kind::UnsupportedProtocolVersion => {
                (400, INVALID_REQUEST, Client, "unsupported_protocol_version")
            }
            // Upstream failures answer a request with HTTP 200 and a JSON-RPC error (see
            // `Kind::status_for_request`): a non-2xx ends the session in some official clients.
            Kind::UpstreamUnavailable => {
                (502, UPSTREAM_UNAVAILABLE, Upstream, "upstream_unavailable")
            }
            Kind::UpstreamTimeout => (504, UPSTREAM_TIMEOUT, Upstream, "upstream_timeout"),
            Kind::UpstreamProtocol => (502, UPSTREAM_PROTOCOL, Upstream, "upstream_protocol"),
            Kind::ShuttingDown => (503, GATEWAY_REJECTED, Gateway, "shutting_down"),
            Kind::Internal => (500, INTERNAL_ERROR, Gateway, "internal"),
        }
    }

    /// HTTP status when the failure cannot be answered as a JSON-RPC response (no request id).
    pub const fn status(self) -> u16 {
        self.row().0
    }

    /// HTTP status when answering a JSON-RPC request whose id we know: upstream failures become a
    /// JSON-RPC error inside a 200, so the client keeps its session and can retry.
    pub const fn status_for_request(self) -> u16 {
        match self.side() {
            Side::Upstream => 200,
            _ => self.status(),
        }
    }

    pub const fn rpc_code(self) -> i32 {
        self.row().1
    }

    pub const fn side(self) -> Side {
        self.row().2
    }

    pub const fn as_str(self) -> &'static str {
        self.row().3
    }

    pub fn index(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// Whether the kind is a configured limit being hit (counted only in
    /// `tollgate_limit_rejections_total`, never in `tollgate_rejections_total`).
    pub const fn is_limit(self) -> bool {
        matches!(
            self,
            Kind::UriTooLong
                | Kind::HeaderTooLarge
                | Kind::TooManyHeaders
                | Kind::BodyTooLarge
                | Kind::HeaderTimeout
                | Kind::BodyTimeout
                | Kind::TooManyConnections
        )
    }
}

/// An error with its kind and a one-line reason for the client and the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}: {reason}")]
pub struct Error {
    pub kind: Kind,
    pub reason: String,
}

impl Error {
    pub fn new(kind: Kind, reason: impl Into<String>) -> Self {
        Error {
            kind,
            reason: reason.into(),
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
pub fn json_escape_into(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_indexes_stable() {
        let mut seen = std::collections::HashSet::new();
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert!(seen.insert(k.as_str()), "duplicate label {}", k.as_str());
            assert_eq!(k.index(), i);
        }
    }

    #[test]
    fn upstream_failures_keep_the_session_alive() {
        assert_eq!(Kind::UpstreamUnavailable.status_for_request(), 200);
        assert_eq!(Kind::UpstreamUnavailable.status(), 502);
        assert_eq!(Kind::SessionUnknown.status_for_request(), 404);
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
