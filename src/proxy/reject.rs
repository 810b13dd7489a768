//! Turning a refusal into a response, in one place. Default messages (which name the config key
//! of the limit that was hit) are rendered when the gateway starts; a request splices in its id.

use crate::config::Config;
use crate::error::{json_escape_into, Kind};
use crate::http::response;

/// Pre-rendered JSON string literals, one per `Kind`.
pub struct Rejects {
    messages: Vec<Vec<u8>>,
}

fn secs(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl Rejects {
    pub fn new(c: &Config) -> Self {
        let l = &c.limits;
        let messages = Kind::ALL
            .iter()
            .map(|k| {
                let text = match k {
                    Kind::UriTooLong => format!(
                        "request line exceeds limits.max_request_line_bytes ({} bytes)",
                        l.max_request_line_bytes
                    ),
                    Kind::HeaderTooLarge => format!(
                        "request head exceeds limits.max_header_bytes ({} bytes)",
                        l.max_header_bytes
                    ),
                    Kind::TooManyHeaders => format!(
                        "request has more than limits.max_headers ({}) headers",
                        l.max_headers
                    ),
                    Kind::BodyTooLarge => format!(
                        "request body exceeds limits.max_body_bytes ({} bytes)",
                        l.max_body_bytes
                    ),
                    Kind::HeaderTimeout => {
                        format!(
                            "request head not received within limits.header_read_timeout ({})",
                            secs(l.header_read_timeout)
                        )
                    }
                    Kind::BodyTimeout => {
                        format!(
                            "request body not received within limits.body_read_timeout ({})",
                            secs(l.body_read_timeout)
                        )
                    }
                    Kind::TooManyConnections => format!(
                        "too many connections: listen.max_connections_per_worker ({}) reached",
                        c.listen.max_connections_per_worker
                    ),
                    Kind::MalformedHttp => "malformed HTTP request".into(),
                    Kind::UnsupportedTransferEncoding => {
                        "only Transfer-Encoding: chunked is supported".into()
                    }
                    Kind::LengthRequired => {
                        "a request body needs Content-Length or chunked encoding".into()
                    }
                    Kind::HostNotAllowed => "Host header not allowed (listen.allowed_hosts)".into(),
                    Kind::OriginNotAllowed => "Origin not allowed (listen.allowed_origins)".into(),
                    Kind::NotFound => "no MCP endpoint at this path".into(),
                    Kind::MethodNotAllowed => "method not allowed: use POST, GET or DELETE".into(),
                    Kind::UnsupportedMediaType => "Content-Type must be application/json".into(),
                    Kind::NotAcceptable => {
                        "Accept must allow application/json and text/event-stream".into()
                    }
                    Kind::ParseError => "parse error".into(),
                    Kind::InvalidRequest => "invalid JSON-RPC request".into(),
                    Kind::BatchNotAllowed => {
                        "JSON-RPC batches are only allowed in protocol version 2025-03-26".into()
                    }
                    Kind::SessionMissing => {
                        "missing Mcp-Session-Id header: send initialize first".into()
                    }
                    Kind::SessionUnknown => {
                        "unknown or expired session: initialize a new one".into()
                    }
                    Kind::UnsupportedProtocolVersion => format!(
                        "unsupported MCP-Protocol-Version (supported: {})",
                        crate::mcp::ProtocolVersion::ALL
                            .iter()
                            .filter(|v| v.is_legacy())
                            .map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Kind::UpstreamUnavailable => "upstream unavailable".into(),
                    Kind::UpstreamTimeout => "upstream timed out".into(),
                    Kind::UpstreamProtocol => "upstream sent an invalid response".into(),
                    Kind::ShuttingDown => "gateway is shutting down".into(),
                    Kind::Internal => "internal error".into(),
                };
                let mut v = Vec::new();
                json_escape_into(&mut v, &text);
                v
            })
            .collect();
        Rejects { messages }
    }

    /// Appends a complete HTTP response for `kind` to `out`.
    /// `id` is the raw JSON-RPC id if known (then the status is `status_for_request`);
    /// `reason` replaces the default message; `extra_headers` are complete header lines.
    pub fn render(
        &self,
        out: &mut Vec<u8>,
        kind: Kind,
        id: Option<&[u8]>,
        reason: Option<&str>,
        keep_alive: bool,
        extra_headers: &[u8],
    ) {
        self.render_with_data(out, kind, id, reason, None, keep_alive, extra_headers)
    }

    /// `render` with a JSON-RPC `error.data` value (`data` is complete JSON text).
    #[allow(clippy::too_many_arguments)]
    pub fn render_with_data(
        &self,
        out: &mut Vec<u8>,
        kind: Kind,
        id: Option<&[u8]>,
        reason: Option<&str>,
        data: Option<&[u8]>,
        keep_alive: bool,
        extra_headers: &[u8],
    ) {
        let status = if id.is_some() {
            kind.status_for_request()
        } else {
            kind.status()
        };
        let mut body = Vec::with_capacity(160);
        body.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
        body.extend_from_slice(id.unwrap_or(b"null"));
        body.extend_from_slice(b",\"error\":{\"code\":");
        body.extend_from_slice(kind.rpc_code().to_string().as_bytes());
        body.extend_from_slice(b",\"message\":");
        match reason {
            Some(r) => json_escape_into(&mut body, r),
            None => body.extend_from_slice(&self.messages[kind.index()]),
        }
        if let Some(data) = data {
            body.extend_from_slice(b",\"data\":");
            body.extend_from_slice(data);
        }
        body.extend_from_slice(b"}}");
        response::status_line(out, status);
        out.extend_from_slice(b"content-type: application/json\r\n");
        if status == 405 {
            out.extend_from_slice(b"allow: GET, POST, DELETE, OPTIONS\r\n");
        }
        out.extend_from_slice(extra_headers);
        response::content_length(out, body.len() as u64);
        response::connection(out, keep_alive);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
    }
}
