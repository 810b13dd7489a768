//! A debug trail of the server→client requests the gateway relays: one `debug!` line per request
//! (target `SERVER_REQUESTS`) with the client session (the first 8 bytes of its id as hex, as
//! in the access line), the stream (`GET` or `POST`), the method and the id. It lets a test
//! runner tell "the upstream never sent the request" from "the gateway had it and the client
//! did not get it" (tests/conformance/run.py reads it from the gateway's log).
//!
//! Off unless that target is enabled at debug level (`RUST_LOG=…,tollgate::server_requests=debug`):
//! the federated rewriter scans every event anyway and only adds the line; the single-upstream
//! relay passes bytes through unread, so it gets a `Watch` (an event decoder and a scan per
//! event) only when the target is enabled, checked once per event stream.
//!
//! Covered: Streamable HTTP upstreams' GET streams and POST event-stream replies, on single and
//! federated endpoints. Not covered: a legacy HTTP+SSE upstream's stream (`proxy::legacy`
//! translates it) and a held session's stream to a stateless client (its server→client requests
//! are answered by the gateway, never relayed).

use crate::http::sse::{Decoder, Item};
use crate::jsonrpc::{self, Body, MessageKind};

/// The `tracing` target of the lines.
pub const SERVER_REQUESTS: &str = "tollgate::server_requests";

/// Whether the lines are wanted (a cached check of the subscriber's filter).
pub fn enabled() -> bool {
    tracing::enabled!(target: SERVER_REQUESTS, tracing::Level::DEBUG)
}

/// The first 8 bytes of a session id as hex (what the access line's `session` shows).
pub fn session_hex(session: &[u8; 16]) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, b) in session[..8].iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    out
}

/// Writes the line for one server→client request relayed to `session` on a `stream` stream
/// (`GET` or `POST` on the single-upstream path; `federated` for the federated rewriter, which
/// serves both a POST's reply and the merged GET stream).
pub fn log_request(session: &[u8; 16], stream: &str, method: &str, id: &[u8]) {
    if !enabled() {
        return;
    }
    let hex = session_hex(session);
    tracing::debug!(
        target: SERVER_REQUESTS,
        session = %String::from_utf8_lossy(&hex),
        stream,
        method,
        id = %String::from_utf8_lossy(id),
        "server-to-client request relayed"
    );
}

/// Every message of `data` (one event's) that is a request, as (method, raw id).
fn requests(data: &[u8], mut on: impl FnMut(&str, &[u8])) {
    const LIMITS: jsonrpc::ScanLimits = jsonrpc::ScanLimits {
        max_depth: 120,
        max_batch_len: 10_000,
    };
    let Ok(body) = jsonrpc::scan(data, &LIMITS) else {
        return;
    };
    let messages = match &body {
        Body::Single(m) => std::slice::from_ref(m),
        Body::Batch(ms) => ms.as_slice(),
    };
    for m in messages {
        if m.kind == MessageKind::Request {
            let method = m.method.as_ref().map_or("", |s| &*s.value);
            on(method, m.id.as_ref().map_or(&b""[..], |r| r.text));
        }
    }
}

/// Watches one relayed event stream (its decoded body bytes, any split) of the single-upstream
/// path for server→client requests, writing a line for each.
pub struct Watch {
    session: [u8; 16],
    stream: &'static str,
    decoder: Decoder,
    /// The stream could not be decoded (an event over the limit): watching stopped, said once.
    stopped: bool,
}

impl Watch {
    /// For the stream relayed to `session` in answer to a `stream` (`GET` or `POST`) request;
    /// events over `max_event_bytes` stop the watching (not the relay).
    pub fn new(session: [u8; 16], stream: &'static str, max_event_bytes: usize) -> Self {
        Watch {
            session,
            stream,
            decoder: Decoder::new(max_event_bytes),
            stopped: false,
        }
    }

    /// The next bytes of the stream as the client gets them (after de-chunking).
    pub fn feed(&mut self, bytes: &[u8]) {
        let (session, stream) = (self.session, self.stream);
        self.feed_with(bytes, |method, id| {
            log_request(&session, stream, method, id)
        });
    }

    /// `feed`, calling `on` with each request's method and raw id instead of logging it.
    fn feed_with(&mut self, bytes: &[u8], mut on: impl FnMut(&str, &[u8])) {
        if self.stopped {
            return;
        }
        let r = self.decoder.feed(bytes, |item| {
            if let Item::Event(e) = item {
                requests(e.data, &mut on);
            }
        });
        if let Err(e) = r {
            self.stopped = true;
            let hex = session_hex(&self.session);
            // Said so a reader of the trail knows it is incomplete for this session.
            tracing::debug!(
                target: SERVER_REQUESTS,
                session = %String::from_utf8_lossy(&hex),
                stream = self.stream,
                error = %e,
                "server-to-client requests no longer watched on this stream"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_finds_requests_in_events_split_anywhere_and_stops_past_its_limit() {
        let stream: &[u8] = b": keep-alive\r\n\r\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"elicitation/create\"}\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"s\",\"method\":\"sampling/createMessage\"}\n\n";
        for split in 0..=stream.len() {
            let mut w = Watch::new([0; 16], "GET", 1024);
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                w.feed_with(part, |m, id| got.push((m.to_string(), id.to_vec())));
            }
            assert_eq!(
                got,
                vec![
                    ("elicitation/create".to_string(), b"3".to_vec()),
                    ("sampling/createMessage".to_string(), b"\"s\"".to_vec()),
                ],
                "split at {split}"
            );
        }
        let mut w = Watch::new([0; 16], "POST", 16);
        let mut got = 0;
        w.feed_with(stream, |_, _| got += 1);
        assert!(w.stopped, "an event over 16 bytes stops the watching");
        w.feed_with(
            b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\"}\n\n",
            |_, _| got += 1,
        );
        assert_eq!(got, 0);
    }

    #[test]
    fn session_hex_is_the_first_eight_bytes() {
        let mut id = [0u8; 16];
        id[0] = 0xab;
        id[7] = 0x01;
        id[8] = 0xff;
        assert_eq!(&session_hex(&id), b"ab00000000000001");
    }

    #[test]
    fn requests_are_found_in_single_and_batch_data_and_nothing_else() {
        let mut got = Vec::new();
        let mut on = |m: &str, id: &[u8]| got.push((m.to_string(), id.to_vec()));
        requests(
            br#"{"jsonrpc":"2.0","id":7,"method":"elicitation/create","params":{}}"#,
            &mut on,
        );
        requests(br#"{"jsonrpc":"2.0","id":8,"result":{}}"#, &mut on);
        requests(
            br#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#,
            &mut on,
        );
        requests(
            br#"[{"jsonrpc":"2.0","id":"a","method":"sampling/createMessage"},{"jsonrpc":"2.0","id":9,"result":{}}]"#,
            &mut on,
        );
        requests(b"not json", &mut on);
        assert_eq!(
            got,
            vec![
                ("elicitation/create".to_string(), b"7".to_vec()),
                ("sampling/createMessage".to_string(), b"\"a\"".to_vec()),
            ]
        );
    }
}
