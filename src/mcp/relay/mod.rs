//! The federated event-stream rewriter: one client stream (a POST's SSE reply, or the merged GET
//! stream) carries events from several upstreams, so what would collide or mislead is rewritten
//! on the way through. Pure: bytes in, bytes out, no I/O.
//!
//! Per upstream stream a `Rewriter` decodes the upstream's SSE bytes (any split, through
//! `http::sse::Decoder`) and writes each event again with `http::sse::write_event`:
//!
//! - the `data` is scanned as JSON-RPC (`jsonrpc::scan`, the reply limits: depth 120, batch
//!   10 000). A server→client request's `id` becomes `IdMapper::wrap(session, upstream, id)`;
//!   a `notifications/cancelled`'s `params.requestId` is wrapped the same way, so it names the
//!   id the client saw. Both are spliced in place; nothing else in the data changes. A batch is
//!   handled message by message.
//! - With `Rewriter::with_tasks`, an upstream's task ids become gateway task ids
//!   (`mcp::tasks::wrap_edits`), spliced the same way.
//! - Responses pass unchanged (but for task ids) and their id is recorded in `Seen::responses` (how the proxy knows
//!   the answer to the client's request went by). `notifications/{tools,prompts,resources}/
//!   list_changed` pass and set a flag in `Seen` (the proxy refreshes its tables).
//! - A data the scanner refuses (not JSON, not JSON-RPC, or a shape it refuses such as duplicate
//!   keys) passes unchanged and is counted in `Seen::unscanned`: the gateway decides nothing on
//!   it, and an id it could not read it cannot wrap.
//! - An event whose id cannot be wrapped (`WrapError`: longer than `idmap::MAX_ORIGINAL_LEN`) is
//!   dropped whole (a batch too) and counted in `Seen::dropped` with its reason: relaying it
//!   with the upstream's own id could collide with another upstream's.
//! - The event type passes; `retry` passes (on its own, `sse::write_retry`); comments pass
//!   (`write_comment`): they are the keep-alives that hold long streams open through
//!   intermediaries. An event cut off by the end of the stream is not relayed (the standard's
//!   rule).
//! - Event ids: see `EventIdState`. The upstream's own id never reaches the client.
//!
//! `out` only ever receives whole events and comment lines, so the caller may interleave the
//! output of several rewriters (one per upstream) between `feed` calls.
//!
//! `Rewriter::held` is the other use: a held session's reply stream to a client of the
//! stateless revision (`proxy::held`), one upstream, no ids to wrap. The final response's
//! result is stamped with what the revision adds (`resultType`, and caching hints when asked);
//! notifications pass; a server→client request is not relayed (the revision has none on a
//! response stream) but recorded in `Seen::held_requests` for the proxy to answer upstream; a
//! `notifications/cancelled` (it could only name such a request) is dropped. A batch event is
//! relayed as one event per message it keeps. The upstream's event ids are not relayed: the
//! client has no session to resume the stream in.

use std::ops::Range;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::http::sse::{self, AtEnd, Decoder, Event, Fields, Item, SseError};
use crate::jsonrpc::{self, Body, Message, MessageKind, ScanLimits};
use crate::mcp::idmap::{IdMapper, WrapError};

pub mod watch;

/// What the client's event ids start with.
pub const EVENT_ID_PREFIX: &str = "tge1.";
/// Most upstream streams one client event id tracks.
pub const MAX_UPSTREAMS: usize = 64;
/// Longest upstream event id that is tracked.
pub const MAX_UPSTREAM_ID_LEN: usize = 255;
/// Longest client event id (all of it, prefix included) written or accepted.
pub const MAX_EVENT_ID_LEN: usize = 4096;

/// The scanner limits for upstream data, as for upstream replies (`proxy::upstream`).
const LIMITS: ScanLimits = ScanLimits {
    max_depth: 120,
    max_batch_len: 10_000,
};

/// Why a client's `Last-Event-ID` was not one of ours. Every one means: resume nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventIdError {
    #[error("longer than {MAX_EVENT_ID_LEN} bytes")]
    TooLong,
    #[error("does not start with {EVENT_ID_PREFIX}")]
    Prefix,
    #[error("not base64url")]
    Base64,
    #[error("cut short")]
    Truncated,
    #[error("bytes after the last entry")]
    Leftover,
    #[error("more than {MAX_UPSTREAMS} upstreams")]
    TooMany,
    #[error("an upstream appears twice")]
    Duplicate,
    #[error("an upstream event id is empty or not visible ASCII")]
    BadId,
}

/// Why a relay stopped: the stream cannot be relayed further (the decoder stays failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("an upstream event is larger than {max} bytes")]
    EventTooLarge { max: usize },
}

impl From<SseError> for RelayError {
    fn from(e: SseError) -> Self {
        match e {
            SseError::TooLarge { max } => RelayError::EventTooLarge { max },
        }
    }
}

/// Why an event was not relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// An id (or cancelled `requestId`) could not be wrapped.
    Unwrappable(WrapError),
}

/// What went by, for the proxy. It only grows: the caller reads and clears it
/// (`std::mem::take`) as it sees fit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The id (JSON text, as the upstream wrote it) of every response and error relayed.
    pub responses: Vec<Vec<u8>>,
    pub tools_list_changed: bool,
    pub prompts_list_changed: bool,
    pub resources_list_changed: bool,
    /// Events not relayed, and the reason of the last one.
    pub dropped: u64,
    pub last_drop: Option<DropReason>,
    /// Events whose data was relayed unchanged because it is not a JSON-RPC message the
    /// scanner accepts.
    pub unscanned: u64,
    /// `Rewriter::held`: the server→client requests not relayed.
    pub held_requests: Vec<HeldRequest>,
}

/// A server→client request `Rewriter::held` did not relay: its id (JSON text, empty if it had
/// none) and method.
pub type HeldRequest = (Vec<u8>, String);

/// Per client stream, the last event id of each upstream stream relayed on it (upstreams in the
/// order first seen). The client's event id is its `encode()`:
///
/// `tge1.` + base64url-no-pad(`n:u8`, then per entry `upstream:u64` BE, `len:u8`, `id[len]`)
///
/// with at most 64 entries, ids of 1..=255 visible ASCII bytes (0x21..=0x7E), ≤ 4096 bytes in
/// all. An event that carries an upstream id (the upstream's last event id, which persists from
/// event to event) updates its entry and goes out with the whole state as its id, so resuming
/// from any event of a merged stream tells every upstream where to resume. An upstream id that
/// cannot be tracked (too long, not visible ASCII, a 65th upstream, or a state that would not
/// fit 4096 bytes) leaves the state as it was and the event goes out without an id: a resume
/// then replays that upstream from its previous id rather than skipping events. An empty
/// upstream id (the upstream reset it) removes the entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventIdState {
    entries: Vec<(u64, Vec<u8>)>,
}

fn visible(id: &[u8]) -> bool {
    id.iter().all(|b| (0x21..=0x7E).contains(b))
}

/// Bytes of `encode()` for a payload of `raw` bytes.
fn encoded_len(raw: usize) -> usize {
    EVENT_ID_PREFIX.len() + (raw * 4).div_ceil(3)
}

impl EventIdState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state a client resumes with: the entries `parse_last_event_id` read.
    pub fn from_entries(entries: Vec<(u64, Vec<u8>)>) -> Self {
        EventIdState { entries }
    }

    pub fn entries(&self) -> &[(u64, Vec<u8>)] {
        &self.entries
    }

    /// The last event id of `upstream`'s stream: its `Last-Event-ID` on resume.
    pub fn get(&self, upstream: u64) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(u, _)| *u == upstream)
            .map(|(_, id)| id.as_slice())
    }

    fn raw_len(&self) -> usize {
        1 + self
            .entries
            .iter()
            .map(|(_, id)| 9 + id.len())
            .sum::<usize>()
    }

    /// Records `id` as `upstream`'s last event id. False (state unchanged) when it cannot be
    /// tracked; an empty id removes the entry (true).
    pub fn set(&mut self, upstream: u64, id: &[u8]) -> bool {
        let at = self.entries.iter().position(|(u, _)| *u == upstream);
        if id.is_empty() {
            if let Some(i) = at {
                self.entries.remove(i);
            }
            return true;
        }
        if id.len() > MAX_UPSTREAM_ID_LEN || !visible(id) {
            return false;
        }
        let raw = match at {
            Some(i) => self.raw_len() - self.entries[i].1.len() + id.len(),
            None if self.entries.len() >= MAX_UPSTREAMS => return false,
            None => self.raw_len() + 9 + id.len(),
        };
        if encoded_len(raw) > MAX_EVENT_ID_LEN {
            return false;
        }
        match at {
            Some(i) => {
                let old = &mut self.entries[i].1;
                old.clear();
                old.extend_from_slice(id);
            }
            None => self.entries.push((upstream, id.to_vec())),
        }
        true
    }

    /// The client's event id for this state.
    pub fn encode(&self) -> String {
        // `set` and `parse_last_event_id` keep entries within the format; entries handed to
        // `from_entries` that are not (too many, an id too long or empty) are left out rather
        // than written as a text the parser would refuse.
        let fits = |(_, id): &&(u64, Vec<u8>)| (1..=MAX_UPSTREAM_ID_LEN).contains(&id.len());
        let n = self.entries.iter().filter(fits).take(MAX_UPSTREAMS).count();
        let mut raw = Vec::with_capacity(self.raw_len());
        raw.push(n as u8);
        for (u, id) in self.entries.iter().filter(fits).take(n) {
            raw.extend_from_slice(&u.to_be_bytes());
            raw.push(id.len() as u8);
            raw.extend_from_slice(id);
        }
        let mut out = String::with_capacity(encoded_len(raw.len()));
        out.push_str(EVENT_ID_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&raw, &mut out);
        out
    }
}

/// Reads a client's `Last-Event-ID` (as `encode` wrote it) into its entries. Refuses anything
/// else; never panics, allocates at most about its input's length.
pub fn parse_last_event_id(text: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, EventIdError> {
    if text.len() > MAX_EVENT_ID_LEN {
        return Err(EventIdError::TooLong);
    }
    let b64 = text
        .strip_prefix(EVENT_ID_PREFIX.as_bytes())
        .ok_or(EventIdError::Prefix)?;
    let raw = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| EventIdError::Base64)?;
    let (&n, mut rest) = raw.split_first().ok_or(EventIdError::Truncated)?;
    let n = usize::from(n);
    if n > MAX_UPSTREAMS {
        return Err(EventIdError::TooMany);
    }
    let mut entries: Vec<(u64, Vec<u8>)> = Vec::with_capacity(n);
    for _ in 0..n {
        let (head, tail) = rest.split_at_checked(9).ok_or(EventIdError::Truncated)?;
        let mut u = [0u8; 8];
        u.copy_from_slice(&head[..8]);
        let upstream = u64::from_be_bytes(u);
        let (id, tail) = tail
            .split_at_checked(usize::from(head[8]))
            .ok_or(EventIdError::Truncated)?;
        if id.is_empty() || !visible(id) {
            return Err(EventIdError::BadId);
        }
        if entries.iter().any(|(v, _)| *v == upstream) {
            return Err(EventIdError::Duplicate);
        }
        entries.push((upstream, id.to_vec()));
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(EventIdError::Leftover);
    }
    Ok(entries)
}

/// `body` with `span` replaced by `new`.
pub fn respell_id(body: &[u8], span: Range<usize>, new: &[u8]) -> Vec<u8> {
    splice(body, &mut [(span, new)])
}

/// `body` with each range replaced by its bytes. Ranges must not overlap (ids of distinct
/// messages never do); they may come in any order. A range outside `body` is ignored.
pub fn splice(body: &[u8], edits: &mut [(Range<usize>, &[u8])]) -> Vec<u8> {
    edits.sort_unstable_by_key(|(r, _)| r.start);
    let grow: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(body.len() + grow);
    let mut at = 0;
    for (r, new) in edits.iter() {
        if r.start < at || r.end < r.start || r.end > body.len() {
            continue;
        }
        out.extend_from_slice(&body[at..r.start]);
        out.extend_from_slice(new);
        at = r.end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

/// Rewrites one upstream's event stream for the client (see the module's documentation).
#[derive(Debug)]
pub struct Rewriter {
    upstream: u64,
    session: [u8; 16],
    decoder: Decoder,
    /// Wraps the upstream's task ids (`mcp::tasks`) when set.
    tasks: Option<IdMapper>,
    /// `Rewriter::held`: what a response's result gets stamped with.
    stamp: Option<&'static [u8]>,
}

impl Rewriter {
    /// For the stream of upstream `upstream` (its stable id) relayed to the client session whose
    /// random id is `session`; upstream events over `max_event_bytes` end the relay.
    pub fn new(upstream: u64, session: [u8; 16], max_event_bytes: usize) -> Self {
        Rewriter {
            upstream,
            session,
            decoder: Decoder::new(max_event_bytes),
            tasks: None,
            stamp: None,
        }
    }

    /// For a held session's reply stream to a stateless client (see the module's
    /// documentation): results stamped with `stamp` (members written first in the result).
    pub fn held(upstream: u64, stamp: &'static [u8], max_event_bytes: usize) -> Self {
        Rewriter {
            stamp: Some(stamp),
            ..Rewriter::new(upstream, [0; 16], max_event_bytes)
        }
    }

    /// Also gives the client gateway task ids for the upstream's (`mcp::tasks::wrap_edits`).
    pub fn with_tasks(mut self, tasks: IdMapper) -> Self {
        self.tasks = Some(tasks);
        self
    }

    /// Decodes the next bytes of the upstream's stream (any split) and appends the client's
    /// version of every event they complete to `out`.
    pub fn feed(
        &mut self,
        input: &[u8],
        ids: &mut EventIdState,
        mapper: &IdMapper,
        out: &mut Vec<u8>,
        seen: &mut Seen,
    ) -> Result<(), RelayError> {
        let ctx = Ctx {
            upstream: self.upstream,
            session: &self.session,
            mapper,
            tasks: self.tasks.as_ref(),
            stamp: self.stamp,
        };
        self.decoder
            .feed(input, |item| ctx.item(item, ids, out, seen))?;
        Ok(())
    }

    /// The upstream's stream ended: an event it left incomplete is not relayed.
    pub fn finish(
        &mut self,
        ids: &mut EventIdState,
        mapper: &IdMapper,
        out: &mut Vec<u8>,
        seen: &mut Seen,
    ) -> Result<(), RelayError> {
        let ctx = Ctx {
            upstream: self.upstream,
            session: &self.session,
            mapper,
            tasks: self.tasks.as_ref(),
            stamp: self.stamp,
        };
        self.decoder
            .finish(AtEnd::Discard, |item| ctx.item(item, ids, out, seen))?;
        Ok(())
    }
}

struct Ctx<'m> {
    upstream: u64,
    session: &'m [u8; 16],
    mapper: &'m IdMapper,
    tasks: Option<&'m IdMapper>,
    stamp: Option<&'static [u8]>,
}

impl Ctx<'_> {
    fn item(&self, item: Item<'_>, ids: &mut EventIdState, out: &mut Vec<u8>, seen: &mut Seen) {
        match item {
            Item::Comment(text) => sse::write_comment(out, text),
            Item::Retry(ms) => sse::write_retry(out, ms),
            Item::Event(e) => self.event(&e, ids, out, seen),
        }
    }

    fn event(&self, e: &Event<'_>, ids: &mut EventIdState, out: &mut Vec<u8>, seen: &mut Seen) {
        if let Some(stamp) = self.stamp {
            return held_event(e, stamp, out, seen);
        }
        let data = match self.rewrite(e.data, seen) {
            Ok(d) => d,
            Err(reason) => {
                seen.dropped += 1;
                seen.last_drop = Some(reason);
                return;
            }
        };
        let id = match e.id {
            Some(upstream_id) if ids.set(self.upstream, upstream_id) => Some(ids.encode()),
            _ => None,
        };
        let fields = Fields {
            id: id.as_deref().map(str::as_bytes),
            event: (!e.event.is_empty()).then_some(e.event),
            retry: None,
        };
        match &data {
            Some(rewritten) => sse::write_event(out, &fields, rewritten),
            None => sse::write_event(out, &fields, e.data),
        }
    }

    /// The data as the client gets it: `None` when unchanged. Records responses and list
    /// changes only for data that is relayed.
    fn rewrite(&self, data: &[u8], seen: &mut Seen) -> Result<Option<Vec<u8>>, DropReason> {
        let body = match jsonrpc::scan(data, &LIMITS) {
            Ok(b) => b,
            Err(_) => {
                seen.unscanned += 1;
                return Ok(None);
            }
        };
        let messages = match &body {
            Body::Single(m) => std::slice::from_ref(m),
            Body::Batch(ms) => ms.as_slice(),
        };
        let mut wrapped: Vec<(Range<usize>, String)> = Vec::new();
        for m in messages {
            if let Some(raw) = self.to_wrap(m) {
                let new = self
                    .mapper
                    .wrap(self.session, self.upstream, raw.text)
                    .map_err(DropReason::Unwrappable)?;
                wrapped.push((raw.start..raw.start + raw.text.len(), new));
            }
            if let Some(tasks) = self.tasks {
                let edits =
                    crate::mcp::tasks::wrap_edits(data, m, tasks, self.session, self.upstream)
                        .map_err(DropReason::Unwrappable)?;
                wrapped.extend(edits);
            }
        }
        for m in messages {
            match m.kind {
                MessageKind::Response | MessageKind::Error => {
                    if let Some(id) = &m.id {
                        seen.responses.push(id.text.to_vec());
                    }
                }
                MessageKind::Notification => match m.method.as_ref().map(|s| &*s.value) {
                    Some("notifications/tools/list_changed") => seen.tools_list_changed = true,
                    Some("notifications/prompts/list_changed") => seen.prompts_list_changed = true,
                    Some("notifications/resources/list_changed") => {
                        seen.resources_list_changed = true
                    }
                    _ => {}
                },
                MessageKind::Request => watch::log_request(
                    self.session,
                    "federated",
                    m.method.as_ref().map_or("", |s| &*s.value),
                    m.id.as_ref().map_or(&b""[..], |r| r.text),
                ),
            }
        }
        if wrapped.is_empty() {
            return Ok(None);
        }
        let mut edits: Vec<(Range<usize>, &[u8])> = wrapped
            .iter()
            .map(|(r, s)| (r.clone(), s.as_bytes()))
            .collect();
        Ok(Some(splice(data, &mut edits)))
    }

    /// The id this message carries that the client must see wrapped.
    fn to_wrap<'b>(&self, m: &'b Message<'_>) -> Option<&'b jsonrpc::Raw<'b>> {
        match m.kind {
            MessageKind::Request => m.id.as_ref(),
            MessageKind::Notification
                if m.method.as_ref().map(|s| &*s.value) == Some("notifications/cancelled") =>
            {
                m.request_id.as_ref()
            }
            _ => None,
        }
    }
}

/// `Rewriter::held`: one event of a held session's reply stream.
fn held_event(e: &Event<'_>, stamp: &[u8], out: &mut Vec<u8>, seen: &mut Seen) {
    let fields = Fields {
        id: None,
        event: (!e.event.is_empty()).then_some(e.event),
        retry: None,
    };
    let body = match jsonrpc::scan(e.data, &LIMITS) {
        Ok(b) => b,
        Err(_) => {
            seen.unscanned += 1;
            return sse::write_event(out, &fields, e.data);
        }
    };
    let messages = match &body {
        Body::Single(m) => std::slice::from_ref(m),
        Body::Batch(ms) => ms.as_slice(),
    };
    let single = matches!(body, Body::Single(_));
    for m in messages {
        let data = if single {
            e.data
        } else {
            &e.data[m.span.clone()]
        };
        let method = m.method.as_ref().map(|s| &*s.value);
        match m.kind {
            MessageKind::Request => {
                let id = m.id.as_ref().map(|i| i.text.to_vec()).unwrap_or_default();
                seen.held_requests
                    .push((id, method.unwrap_or_default().to_string()));
            }
            MessageKind::Notification if method == Some("notifications/cancelled") => {}
            MessageKind::Response if !m.result_type => {
                seen.responses
                    .extend(m.id.as_ref().map(|i| i.text.to_vec()));
                match m.result_open {
                    // Offsets of a batch element are the body's: made the element's own.
                    Some(at) => {
                        let at = if single { at } else { at - m.span.start };
                        let stamped = crate::mcp::modern::stamp_result(data, at, stamp);
                        sse::write_event(out, &fields, &stamped)
                    }
                    None => sse::write_event(out, &fields, data),
                }
            }
            MessageKind::Response | MessageKind::Error => {
                seen.responses
                    .extend(m.id.as_ref().map(|i| i.text.to_vec()));
                sse::write_event(out, &fields, data)
            }
            MessageKind::Notification => sse::write_event(out, &fields, data),
        }
    }
}

#[cfg(test)]
mod tests;
