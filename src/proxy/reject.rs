//! Turning a refusal into a response, in one place. Default messages (which name the config key
//! of the limit that was hit) are rendered when the gateway starts; a request splices in its id.

use crate::config::Config;
use crate::error::{json_escape_into, Answer, Era, Extra, Kind};
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
                    Kind::TooManyLegacyStreams => format!(
                        "too many upstream HTTP+SSE sessions on this worker: limits.max_legacy_streams ({}) reached",
                        l.max_legacy_streams
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
                    Kind::HeaderMismatch => {
                        "a header that mirrors the body is missing or disagrees with it".into()
                    }
                    Kind::MissingMeta => "a required params._meta field is missing".into(),
                    Kind::StatelessVersionUnsupported => "Unsupported protocol version".into(),
                    Kind::Unauthenticated => "authentication required".into(),
                    Kind::InsufficientScope => "the access token lacks a required scope".into(),
                    Kind::Forbidden => "not allowed".into(),
                    Kind::Throttled | Kind::ToolLimited => {
                        "a traffic limit was reached (traffic.rules)".into()
                    }
                    Kind::UnknownName => "unknown name".into(),
                    Kind::BadCursor => "invalid cursor: list again from the start".into(),
                    Kind::MethodNotFound => "method not found".into(),
                    Kind::UpstreamUnavailable => "upstream unavailable".into(),
                    Kind::UpstreamTimeout => "upstream timed out".into(),
                    Kind::UpstreamProtocol => "upstream sent an invalid response".into(),
                    Kind::UpstreamCircuitOpen => {
                        "upstream circuit open (upstreams[].circuit_breaker): retry later".into()
                    }
                    Kind::UpstreamCredentials => {
                        "the gateway could not obtain its credentials for the upstream".into()
                    }
                    Kind::LegacyStreamUnknown => {
                        "unknown legacy SSE session: open a new stream (GET the sse endpoint)".into()
                    }
                    Kind::LegacyStreams => format!(
                        "too many legacy SSE streams on this worker (limits.legacy_sse_streams_per_worker = {})",
                        l.legacy_sse_streams_per_worker
                    ),
                    Kind::ListenStreams => format!(
                        "too many subscriptions/listen streams on this worker (limits.listen_streams_per_worker = {})",
                        l.listen_streams_per_worker
                    ),
                    Kind::LegacyQueueFull => format!(
                        "too many messages waiting on this legacy SSE stream (limits.legacy_sse_queued_messages = {})",
                        l.legacy_sse_queued_messages
                    ),
                    Kind::HeldSessions => format!(
                        "every session the gateway holds with this upstream stayed busy \
                         (limits.held_sessions_per_upstream = {})",
                        l.held_sessions_per_upstream
                    ),
                    Kind::LegacyHandover => {
                        "the worker holding this legacy SSE stream could not take the message: retry".into()
                    }
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

    /// The default message for `kind` (as JSON string text).
    fn default_message(&self, kind: Kind) -> &[u8] {
        &self.messages[kind.index()]
    }

    /// Appends the JSON-RPC response message refusing request `id` (a batch's entry): an error,
    /// or for a tool call of a kind the table answers in band, a tool result with `isError`.
    pub fn message(&self, out: &mut Vec<u8>, r: &Refusal, id: &[u8], tool_call: bool) {
        let in_band = r.kind.row().answer == Answer::ToolError && tool_call;
        self.message_as(out, r, id, in_band);
    }

    fn message_as(&self, body: &mut Vec<u8>, r: &Refusal, id: &[u8], in_band: bool) {
        let message = |body: &mut Vec<u8>| match r.reason.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => json_escape_into(body, m),
            None => body.extend_from_slice(self.default_message(r.kind)),
        };
        body.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
        body.extend_from_slice(id);
        if in_band {
            body.extend_from_slice(b",\"result\":{\"content\":[{\"type\":\"text\",\"text\":");
            message(body);
            body.extend_from_slice(b"}],\"isError\":true");
            // What a JSON-RPC error carries as `data` (`retryAfterMs`, the limit): for the client
            // program, beside the sentence the model reads.
            if let Some(data) = &r.data {
                body.extend_from_slice(b",\"_meta\":{\"tollgate/refusal\":");
                body.extend_from_slice(data);
                body.push(b'}');
            }
            body.extend_from_slice(b"}}");
        } else {
            body.extend_from_slice(b",\"error\":{\"code\":");
            body.extend_from_slice(r.kind.rpc_code().to_string().as_bytes());
            body.extend_from_slice(b",\"message\":");
            message(body);
            if let Some(data) = &r.data {
                body.extend_from_slice(b",\"data\":");
                body.extend_from_slice(data);
            }
            body.extend_from_slice(b"}}");
        }
    }

    /// Appends a complete HTTP response for a refusal with no request context (a connection
    /// refused at accept): the table's status and message, closing.
    pub fn render_bare(&self, out: &mut Vec<u8>, kind: Kind) -> u16 {
        self.render(out, &Refusal::new(kind), &To::default())
    }

    /// Appends a complete HTTP response for `r` to `out`; returns its status. The form (JSON-RPC
    /// error, or an in-band tool result), the status for the era, and the extra headers come
    /// from the kind's row in `error::Kind`'s table; the request side (`to`) gives the id and era.
    pub fn render(&self, out: &mut Vec<u8>, r: &Refusal, to: &To<'_>) -> u16 {
        self.render_as(out, r, to, r.kind.row().answer)
    }

    fn render_as(&self, out: &mut Vec<u8>, r: &Refusal, to: &To<'_>, answer: Answer) -> u16 {
        let row = r.kind.row();
        let in_band = answer == Answer::ToolError && to.tool_call && to.id.is_some();
        let status = if in_band {
            200
        } else {
            r.kind.status_for(to.era, to.id.is_some())
        };
        let mut body = Vec::with_capacity(160);
        self.message_as(&mut body, r, to.id.unwrap_or(b"null"), in_band);
        response::status_line(out, status);
        out.extend_from_slice(b"content-type: application/json\r\n");
        match row.extra {
            Extra::None => {}
            Extra::Allow => out.extend_from_slice(b"allow: GET, POST, DELETE, OPTIONS\r\n"),
            Extra::RetryAfter => {
                let secs = r.retry_after_secs.unwrap_or(1);
                out.extend_from_slice(format!("retry-after: {secs}\r\n").as_bytes());
            }
            Extra::WwwAuthenticate => {
                if let Some(c) = &r.challenge {
                    response::header(out, b"www-authenticate", c.as_bytes());
                }
            }
        }
        out.extend_from_slice(to.extra_headers);
        response::content_length(out, body.len() as u64);
        response::connection(out, to.keep_alive);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        status
    }
}

/// A refusal as data: what the gateway says no with. The kind's row decides status, code, form
/// and headers; the refusal adds its own sentence, `error.data` and retry hint.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub kind: Kind,
    /// Replaces the table's default message (which names the config key of a limit).
    pub reason: Option<String>,
    /// JSON text for `error.data`.
    pub data: Option<Vec<u8>>,
    /// `Retry-After` seconds for kinds that carry it (default 1).
    pub retry_after_secs: Option<u32>,
    /// The `WWW-Authenticate` value for kinds that carry it (`policy::challenge`).
    pub challenge: Option<String>,
}

impl Refusal {
    pub fn new(kind: Kind) -> Self {
        Refusal {
            kind,
            reason: None,
            data: None,
            retry_after_secs: None,
            challenge: None,
        }
    }

    pub fn because(kind: Kind, reason: impl Into<String>) -> Self {
        Refusal {
            reason: Some(reason.into()),
            ..Refusal::new(kind)
        }
    }

    pub fn with_data(mut self, data: Vec<u8>) -> Self {
        self.data = Some(data);
        self
    }
}

impl From<crate::error::Error> for Refusal {
    fn from(e: crate::error::Error) -> Self {
        Refusal {
            data: e.data,
            ..Refusal::because(e.kind, e.reason)
        }
    }
}

/// The request side of a refusal: whom it answers and how the connection goes on.
#[derive(Default)]
pub struct To<'a> {
    /// Raw JSON-RPC id of the request answered (then upstream kinds answer with 200).
    pub id: Option<&'a [u8]>,
    pub era: Era,
    /// The request is a `tools/call`: kinds whose answer is `ToolError` answer in band.
    pub tool_call: bool,
    pub keep_alive: bool,
    /// Complete header lines (CORS).
    pub extra_headers: &'a [u8],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejects() -> Rejects {
        Rejects::new(&crate::config::load_str("").unwrap())
    }

    fn split(out: &[u8]) -> (String, serde_json::Value) {
        let text = String::from_utf8(out.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_string(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn a_refusal_carries_data_headers_and_the_era_status() {
        let r = rejects();
        let mut out = Vec::new();
        let refusal = Refusal::because(Kind::UpstreamUnavailable, "down")
            .with_data(br#"{"upstream":"demo"}"#.to_vec());
        let to = To {
            id: Some(b"7"),
            keep_alive: true,
            ..To::default()
        };
        assert_eq!(r.render(&mut out, &refusal, &to), 200);
        let (head, v) = split(&out);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["data"]["upstream"], "demo");
        out.clear();
        assert_eq!(r.render_bare(&mut out, Kind::TooManyConnections), 503);
        let (head, v) = split(&out);
        assert!(head.contains("retry-after: 1\r\n"), "{head}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("listen.max_connections_per_worker"));
        out.clear();
        r.render_bare(&mut out, Kind::MethodNotAllowed);
        assert!(split(&out).0.contains("allow: GET, POST, DELETE, OPTIONS"));
    }

    #[test]
    fn an_in_band_answer_is_a_tool_result_the_model_reads() {
        let r = rejects();
        let refusal = Refusal::because(Kind::Internal, "try again in 30 s");
        let mut to = To {
            id: Some(b"3"),
            tool_call: true,
            ..To::default()
        };
        let mut out = Vec::new();
        assert_eq!(r.render_as(&mut out, &refusal, &to, Answer::ToolError), 200);
        let (_, v) = split(&out);
        assert_eq!(v["result"]["isError"], true);
        assert_eq!(v["result"]["content"][0]["text"], "try again in 30 s");
        // Not a tools/call: the JSON-RPC error form.
        to.tool_call = false;
        out.clear();
        assert_eq!(r.render_as(&mut out, &refusal, &to, Answer::ToolError), 500);
        assert_eq!(split(&out).1["error"]["code"], Kind::Internal.rpc_code());
    }

    #[test]
    fn every_kind_renders_valid_json_in_both_eras() {
        let r = rejects();
        for &k in Kind::ALL {
            for era in [Era::Session, Era::Stateless] {
                let mut out = Vec::new();
                let to = To {
                    id: Some(b"\"x\""),
                    era,
                    tool_call: true,
                    ..To::default()
                };
                let status = r.render(&mut out, &Refusal::new(k), &to);
                let (head, v) = split(&out);
                assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{k:?}");
                assert_eq!(v["id"], "x");
                match k.row().answer {
                    Answer::ToolError => assert_eq!(v["result"]["isError"], true, "{k:?}"),
                    Answer::RpcError => assert_eq!(v["error"]["code"], k.rpc_code(), "{k:?}"),
                }
            }
        }
    }
}
