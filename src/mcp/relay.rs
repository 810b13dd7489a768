//! Rewriting upstream event streams for a federated client stream, with no I/O.
//!
//! Several upstreams' SSE streams reach one client (a POST's reply stream, or the merged GET
//! stream). Two upstreams may both send the client a request with id 0, and a client's
//! `Last-Event-ID` must say where *each* upstream stream stands. `Rewriter` decodes one
//! upstream's stream (`http::sse::Decoder`, any split) and writes each event again:
//!
//! - a server→client request (sampling, elicitation, roots/list, ping) gets the id
//!   `idmap::IdMapper::wrap` makes (upstream, original id, bound to the client session), so the
//!   client's answer routes back to that upstream with its own id;
//! - `notifications/cancelled` from the upstream gets its `params.requestId` wrapped the same
//!   way (the client knows the request by its wrapped id);
//! - `notifications/{tools,prompts,resources}/list_changed` are noted in `Seen` (the gateway
//!   rebuilds its routing tables) and pass;
//! - everything else (responses to the client's own requests, progress, logging, data that is
//!   not a JSON-RPC message) passes unchanged;
//! - every event that carries an upstream id goes out with the id `EventIdState::encode` makes.
//!
//! Event ids: `tge1.` + base64url(n:u8, then per upstream stream: upstream:u64 BE, len:u8,
//! id bytes), the last id seen from every upstream stream of this client stream. On a POST reply
//! stream that is one entry; on the merged GET stream one per upstream. A client resuming with
//! it gets each upstream stream resumed from its own last id (`parse_last_event_id`), never
//! another's. Ids are not sealed: a forged one can only ask the client's own upstream sessions
//! to replay their own streams.
//!
//! Comments (keep-alives) pass; `retry` is passed as a `retry:` line.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::http::sse::{self, Fields, Item};
use crate::jsonrpc::{self, Body, MessageKind};
use crate::mcp::idmap::IdMapper;

/// What an event id starts with.
pub const EVENT_ID_PREFIX: &str = "tge1.";
/// Upstream streams one client stream tracks (a server has at most 64 upstreams).
pub const MAX_STREAMS: usize = 64;
/// Longest upstream event id tracked (longer ones are relayed without an id).
pub const MAX_UPSTREAM_ID: usize = 255;
/// Longest event id text accepted from a client.
pub const MAX_EVENT_ID_TEXT: usize = 4096;

/// Replies nest deeper than requests.
const SCAN: jsonrpc::ScanLimits = jsonrpc::ScanLimits {
    max_depth: 120,
    max_batch_len: 10_000,
};

/// The last event id of each upstream stream of one client stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventIdState {
    entries: Vec<(u64, Vec<u8>)>,
}

impl EventIdState {
    /// Notes `id` as upstream `upstream`'s last event id. An id that cannot be carried (too
    /// long, bytes outside visible ASCII, too many streams) is not tracked: `false`.
    pub fn record(&mut self, upstream: u64, id: &[u8]) -> bool {
        if id.len() > MAX_UPSTREAM_ID || !id.iter().all(|b| (0x21..0x7f).contains(b)) {
            return false;
        }
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == upstream) {
            e.1.clear();
            e.1.extend_from_slice(id);
            return true;
        }
        if self.entries.len() >= MAX_STREAMS {
            return false;
        }
        self.entries.push((upstream, id.to_vec()));
        true
    }

    /// The last id of upstream `upstream`, if one was seen.
    pub fn get(&self, upstream: u64) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| e.0 == upstream)
            .map(|e| e.1.as_slice())
    }

    /// The event id the client sees.
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(1 + self.entries.len() * 24);
        raw.push(self.entries.len() as u8);
        for (u, id) in &self.entries {
            raw.extend_from_slice(&u.to_be_bytes());
            raw.push(id.len() as u8);
            raw.extend_from_slice(id);
        }
        let mut out = String::with_capacity(EVENT_ID_PREFIX.len() + raw.len().div_ceil(3) * 4);
        out.push_str(EVENT_ID_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&raw, &mut out);
        out
    }
}

/// Why a `Last-Event-ID` is not one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventIdError {
    Prefix,
    TooLong,
    Encoding,
    /// Truncated, leftover bytes, too many entries, a repeated upstream or an unusable id.
    Layout,
}

/// The (upstream, last id) pairs of a client's `Last-Event-ID`. Never panics.
pub fn parse_last_event_id(text: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, EventIdError> {
    if text.len() > MAX_EVENT_ID_TEXT {
        return Err(EventIdError::TooLong);
    }
    let b64 = text
        .strip_prefix(EVENT_ID_PREFIX.as_bytes())
        .ok_or(EventIdError::Prefix)?;
    let raw = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| EventIdError::Encoding)?;
    let (&n, mut rest) = raw.split_first().ok_or(EventIdError::Layout)?;
    if usize::from(n) > MAX_STREAMS {
        return Err(EventIdError::Layout);
    }
    let mut out: Vec<(u64, Vec<u8>)> = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        if rest.len() < 9 {
            return Err(EventIdError::Layout);
        }
        let (u, r) = rest.split_at(8);
        let upstream = u64::from_be_bytes(u.try_into().map_err(|_| EventIdError::Layout)?);
        let len = usize::from(r[0]);
        let r = &r[1..];
        if r.len() < len || out.iter().any(|e| e.0 == upstream) {
            return Err(EventIdError::Layout);
        }
        let id = &r[..len];
        if id.is_empty() || !id.iter().all(|b| (0x21..0x7f).contains(b)) {
            return Err(EventIdError::Layout);
        }
        out.push((upstream, id.to_vec()));
        rest = &r[len..];
    }
    if !rest.is_empty() {
        return Err(EventIdError::Layout);
    }
    Ok(out)
}

/// What went by on a stream, for the relay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub tools_changed: bool,
    pub prompts_changed: bool,
    pub resources_changed: bool,
    /// Server→client requests whose id could not be wrapped (not a string or number, or too
    /// long): dropped, since the client's answer could not be routed.
    pub dropped: usize,
}

/// Why a stream cannot be relayed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Sse(#[from] sse::SseError),
}

/// One upstream stream's rewriter (see the module comment).
#[derive(Debug)]
pub struct Rewriter {
    upstream: u64,
    session: [u8; 16],
    decoder: sse::Decoder,
}

impl Rewriter {
    pub fn new(upstream: u64, session: [u8; 16], max_event_bytes: usize) -> Self {
        Rewriter {
            upstream,
            session,
            decoder: sse::Decoder::new(max_event_bytes),
        }
    }

    /// Decodes `input` (the next bytes of the upstream's stream) and appends the rewritten
    /// events to `out`.
    pub fn feed(
        &mut self,
        input: &[u8],
        ids: &mut EventIdState,
        mapper: &IdMapper,
        out: &mut Vec<u8>,
        seen: &mut Seen,
    ) -> Result<(), RelayError> {
        let (upstream, session) = (self.upstream, self.session);
        self.decoder.feed(input, |item| {
            emit(item, upstream, &session, ids, mapper, out, seen)
        })?;
        Ok(())
    }

    /// The stream ended: an event cut before its blank line is not dispatched (the standard's
    /// rule).
    pub fn finish(
        &mut self,
        ids: &mut EventIdState,
        mapper: &IdMapper,
        out: &mut Vec<u8>,
        seen: &mut Seen,
    ) -> Result<(), RelayError> {
        let (upstream, session) = (self.upstream, self.session);
        self.decoder.finish(sse::AtEnd::Discard, |item| {
            emit(item, upstream, &session, ids, mapper, out, seen)
        })?;
        Ok(())
    }
}

fn emit(
    item: Item<'_>,
    upstream: u64,
    session: &[u8; 16],
    ids: &mut EventIdState,
    mapper: &IdMapper,
    out: &mut Vec<u8>,
    seen: &mut Seen,
) {
    match item {
        Item::Comment(text) => sse::write_comment(out, text),
        Item::Retry(ms) => {
            out.extend_from_slice(b"retry: ");
            out.extend_from_slice(ms.to_string().as_bytes());
            out.push(b'\n');
        }
        Item::Event(e) => {
            let Some(data) = rewrite_data(e.data, upstream, session, mapper, seen) else {
                return;
            };
            let id =
                e.id.filter(|id| ids.record(upstream, id))
                    .map(|_| ids.encode());
            let fields = Fields {
                id: id.as_deref().map(str::as_bytes),
                event: (!e.event.is_empty()).then_some(e.event),
                retry: None,
            };
            sse::write_event(out, &fields, &data);
        }
    }
}

/// An event's data as the client gets it (`None`: dropped).
fn rewrite_data<'d>(
    data: &'d [u8],
    upstream: u64,
    session: &[u8; 16],
    mapper: &IdMapper,
    seen: &mut Seen,
) -> Option<std::borrow::Cow<'d, [u8]>> {
    use std::borrow::Cow;
    let msgs = match jsonrpc::scan(data, &SCAN) {
        Ok(Body::Single(m)) => vec![m],
        Ok(Body::Batch(v)) => v,
        // Not a JSON-RPC message (a priming event's empty data, anything else): as it came.
        Err(_) => return Some(Cow::Borrowed(data)),
    };
    // (where, replacement) splices, applied back to front.
    let mut splices: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    let mut dropped = false;
    for m in &msgs {
        let method = m.method.as_ref().map(|s| s.value.as_ref()).unwrap_or("");
        match m.kind {
            MessageKind::Request => {
                let Some(id) = &m.id else { continue };
                match mapper.wrap(session, upstream, id.text) {
                    Ok(w) => splices.push((id.start..id.start + id.text.len(), w)),
                    Err(_) => dropped = true,
                }
            }
            MessageKind::Notification => match method {
                "notifications/tools/list_changed" => seen.tools_changed = true,
                "notifications/prompts/list_changed" => seen.prompts_changed = true,
                "notifications/resources/list_changed" => seen.resources_changed = true,
                _ => {}
            },
            _ => {}
        }
    }
    if dropped {
        seen.dropped += 1;
        return None;
    }
    let cancelled = msgs.iter().any(|m| {
        m.kind == MessageKind::Notification
            && m.method
                .as_ref()
                .is_some_and(|s| s.value == "notifications/cancelled")
    });
    drop(msgs);
    if cancelled {
        // Rare: the upstream cancels a request it sent the client. Its requestId is wrapped
        // like the request's id was; the data is parsed and written again (one message).
        return Some(Cow::Owned(wrap_cancelled(data, upstream, session, mapper)?));
    }
    if splices.is_empty() {
        return Some(Cow::Borrowed(data));
    }
    let mut out = data.to_vec();
    splices.sort_by_key(|s| std::cmp::Reverse(s.0.start));
    for (r, w) in splices {
        out.splice(r, w.into_bytes());
    }
    Some(Cow::Owned(out))
}

/// `notifications/cancelled` (or a batch holding it) with each `params.requestId` wrapped.
fn wrap_cancelled(
    data: &[u8],
    upstream: u64,
    session: &[u8; 16],
    mapper: &IdMapper,
) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let one = |m: &mut serde_json::Value| -> Option<()> {
        if m.get("method").and_then(|x| x.as_str()) == Some("notifications/cancelled") {
            if let Some(rid) = m.get_mut("params").and_then(|p| p.get_mut("requestId")) {
                let text = serde_json::to_string(rid).ok()?;
                let wrapped = mapper.wrap(session, upstream, text.as_bytes()).ok()?;
                *rid = serde_json::from_str(&wrapped).ok()?;
            }
        }
        Some(())
    };
    match &mut v {
        serde_json::Value::Array(items) => {
            for m in items.iter_mut() {
                one(m)?;
            }
        }
        m => one(m)?,
    }
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: [u8; 16] = [7; 16];

    fn mapper() -> IdMapper {
        IdMapper::new(&[1; 32])
    }

    fn run(upstream: u64, input: &[&[u8]], ids: &mut EventIdState) -> (Vec<sse::OwnedEvent>, Seen) {
        let m = mapper();
        let mut r = Rewriter::new(upstream, SESSION, 1 << 20);
        let (mut out, mut seen) = (Vec::new(), Seen::default());
        for part in input {
            r.feed(part, ids, &m, &mut out, &mut seen).unwrap();
        }
        r.finish(ids, &m, &mut out, &mut seen).unwrap();
        (
            sse::decode_all(&out, 1 << 20, sse::AtEnd::Discard).unwrap(),
            seen,
        )
    }

    fn json(e: &sse::OwnedEvent) -> serde_json::Value {
        serde_json::from_slice(&e.data).unwrap()
    }

    #[test]
    fn two_upstreams_same_request_id_reach_the_client_apart_and_route_back() {
        let req = b"id: 1\ndata: {\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"sampling/createMessage\",\"params\":{}}\n\n";
        let mut ids = EventIdState::default();
        let (a, _) = run(11, &[req], &mut ids);
        let (b, _) = run(22, &[req], &mut ids);
        let (ia, ib) = (json(&a[0])["id"].clone(), json(&b[0])["id"].clone());
        assert_ne!(ia, ib);
        let m = mapper();
        for (id, up) in [(ia, 11u64), (ib, 22u64)] {
            let text = serde_json::to_string(&id).unwrap();
            assert_eq!(
                m.unwrap(&SESSION, text.as_bytes()).unwrap(),
                (up, b"0".to_vec())
            );
        }
        // The merged id state says where both streams stand.
        let last = b[0].id.clone().unwrap();
        let parsed = parse_last_event_id(&last).unwrap();
        assert_eq!(parsed, vec![(11, b"1".to_vec()), (22, b"1".to_vec())]);
    }

    #[test]
    fn any_split_gives_the_same_stream() {
        let stream: &[u8] = b": keep-alive\nid: e1\ndata: \n\nid: e2\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"x\",\"method\":\"elicitation/create\",\"params\":{}}\n\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\nid: e3\ndata: {\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{}}\n\n";
        let mut ids = EventIdState::default();
        let (whole, seen) = run(3, &[stream], &mut ids);
        assert!(seen.tools_changed);
        assert_eq!(whole.len(), 4);
        assert!(whole[0].data.is_empty(), "the priming event passes");
        assert!(json(&whole[1])["id"].as_str().unwrap().starts_with("tg~"));
        assert_eq!(json(&whole[3])["id"], 5, "responses pass unchanged");
        for cut in 0..stream.len() {
            let mut ids2 = EventIdState::default();
            let (split, _) = run(3, &[&stream[..cut], &stream[cut..]], &mut ids2);
            assert_eq!(split, whole, "cut at {cut}");
        }
    }

    #[test]
    fn cancelled_request_ids_are_wrapped_like_the_request() {
        let req = b"data: {\"jsonrpc\":\"2.0\",\"id\":\"r1\",\"method\":\"roots/list\"}\n\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":\"r1\",\"reason\":\"t\"}}\n\n";
        let mut ids = EventIdState::default();
        let (ev, _) = run(9, &[req], &mut ids);
        assert_eq!(json(&ev[0])["id"], json(&ev[1])["params"]["requestId"]);
        assert_eq!(json(&ev[1])["params"]["reason"], "t");
    }

    #[test]
    fn last_event_ids_round_trip_and_foreign_ones_are_refused() {
        let mut s = EventIdState::default();
        assert!(s.record(1, b"a-1"));
        assert!(s.record(2, b"b"));
        assert!(s.record(1, b"a-2"));
        assert!(!s.record(3, b"has space"));
        assert_eq!(
            parse_last_event_id(s.encode().as_bytes()).unwrap(),
            vec![(1, b"a-2".to_vec()), (2, b"b".to_vec())]
        );
        for bad in [&b"abc"[..], b"tge1.!!", b"tge1.", b"tge1.AQ"] {
            assert!(parse_last_event_id(bad).is_err(), "{bad:?}");
        }
        let mut long = EventIdState::default();
        assert!(!long.record(1, &[b'x'; 256]));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(text in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_last_event_id(&text);
            let mut t = b"tge1.".to_vec();
            t.extend_from_slice(&text);
            let _ = parse_last_event_id(&t);
        }
    }
}
