//! The gateway's own list cursors: `tools/list`, `prompts/list`, `resources/list` and
//! `resources/templates/list` aggregated across a server's upstreams resume from an opaque,
//! AEAD-sealed `tc1.` cursor saying where the listing stands, and `advance` decides, without
//! I/O, which items of an upstream page to take and where to go next.
//! Must not trust a cursor before `open` has authenticated it; must not panic on any input.

use std::fmt;
use std::ops::Range;

use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;

use super::aead::{Envelope, OpenError, TAG_LEN};

/// Cursor prefix; it names the format and is bound to the ciphertext as AAD. A new payload
/// layout gets a new prefix (`tc2.`), and old cursors become `Malformed` (-32602: the client
/// lists again from the start).
pub const PREFIX: &str = "tc1.";
/// HKDF salt and info: the cursor key is derived from the session key, never the session key
/// itself, so a cursor can never be opened as a session token or the other way round, and
/// the two AEAD uses count their nonces under different keys.
const HKDF_SALT: &[u8] = b"tollgate/cursor/v1";
const HKDF_INFO: &[u8] = b"tc1 AES-256-GCM key";

/// Longest upstream cursor carried (bytes of its UTF-8). Upstream cursors are opaque and some
/// encode state; 2 KiB holds any sensible one, and keeps our cursor under 3 KiB. An upstream
/// cursor beyond this cannot be resumed statelessly: `seal` says `UpstreamCursorTooLong`.
pub const MAX_UPSTREAM_CURSOR_LEN: usize = 2048;
/// Fixed part of the payload: list 1, server 8, upstream 8, offset 4, issued_at 8, session
/// flag 1, cursor flag 1.
const FIXED_LEN: usize = 1 + 8 + 8 + 4 + 8 + 1 + 1;
const MAX_PAYLOAD_LEN: usize = FIXED_LEN + 16 + 2 + MAX_UPSTREAM_CURSOR_LEN;
/// Longest cursor `seal` produces and `open` looks at (2 840 bytes; a test pins it).
pub const MAX_CURSOR_LEN: usize =
    PREFIX.len() + (NONCE_LEN + MAX_PAYLOAD_LEN + TAG_LEN).div_ceil(3) * 4;
/// Default lifetime of a cursor: a client pages right away; an hour is generous and bounds how
/// long a leaked cursor (and the upstream cursor inside it) stays usable.
pub const DEFAULT_MAX_AGE_SECS: u64 = 3600;
/// How far in the future `issued_at` may be (clocks of instances sharing the key differ).
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Which list a cursor belongs to: a cursor of one list is foreign to every other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ListKind {
    Tools = 1,
    Prompts = 2,
    Resources = 3,
    ResourceTemplates = 4,
    /// `tasks/list` (2025-11-25 tasks).
    Tasks = 5,
}

impl ListKind {
    pub const ALL: [ListKind; 5] = [
        Self::Tools,
        Self::Prompts,
        Self::Resources,
        Self::ResourceTemplates,
        Self::Tasks,
    ];

    pub const fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Tools,
            2 => Self::Prompts,
            3 => Self::Resources,
            4 => Self::ResourceTemplates,
            5 => Self::Tasks,
            _ => return None,
        })
    }

    /// The JSON-RPC method that lists it.
    pub const fn method(self) -> &'static str {
        match self {
            Self::Tools => "tools/list",
            Self::Prompts => "prompts/list",
            Self::Resources => "resources/list",
            Self::ResourceTemplates => "resources/templates/list",
            Self::Tasks => "tasks/list",
        }
    }
}

/// Where an aggregated listing stands: in the page of upstream `upstream` fetched with
/// `upstream_cursor` (`None`: its first page), `offset` items of that page already returned.
/// Items count as the upstream listed them, before the gateway's filter, so the position is in
/// the upstream's terms and a filter or table change between pages cannot shift it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The upstream's stable id (`session::upstream_id`), not its position in the config.
    pub upstream: u64,
    /// The cursor to send that upstream (any string it gave as `nextCursor`, ≤ 2 KiB).
    pub upstream_cursor: Option<String>,
    pub offset: u32,
}

impl Position {
    /// The start of a listing over upstreams in `order` (`None`: the server has none).
    pub fn start(order: &[u64]) -> Option<Position> {
        Some(Position {
            upstream: *order.first()?,
            upstream_cursor: None,
            offset: 0,
        })
    }
}

/// What a sealed cursor carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub list: ListKind,
    /// The server's stable id (`session::server_id` of its path).
    pub server: u64,
    pub position: Position,
    /// Unix seconds.
    pub issued_at: u64,
    /// The client session it was issued in (its random id), `None` when issued outside one
    /// (2026-07-28 stateless requests). It must match exactly where it is opened.
    pub session: Option<[u8; 16]>,
}

/// What `open` holds a cursor to: the request it arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub list: ListKind,
    pub server: u64,
    pub session: Option<[u8; 16]>,
}

/// Why a cursor was refused. Every variant is "invalid params" to the client (`JSONRPC_CODE`,
/// -32602); the variant is for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CursorError {
    /// Not a cursor of ours: prefix, encoding, length, or an authentic payload we cannot read.
    Malformed,
    /// Authentication failed: altered, or sealed with a key we do not have.
    Tampered,
    /// Authentic, but older than the maximum age or issued too far in the future.
    Expired,
    /// Authentic, but of another list (a `tools/list` cursor on `prompts/list`).
    WrongList,
    /// Authentic, but issued by another server (endpoint).
    WrongServer,
    /// Authentic, but issued in another session (or in one, presented outside it).
    WrongSession,
}

impl CursorError {
    /// The JSON-RPC error code every refusal maps to (invalid params).
    pub const JSONRPC_CODE: i32 = -32602;

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Tampered => "tampered",
            Self::Expired => "expired",
            Self::WrongList => "wrong_list",
            Self::WrongServer => "wrong_server",
            Self::WrongSession => "wrong_session",
        }
    }
}

impl fmt::Display for CursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "cursor is not a well-formed tollgate cursor",
            Self::Tampered => "cursor failed authentication",
            Self::Expired => "cursor has expired; list again from the start",
            Self::WrongList => "cursor belongs to another list",
            Self::WrongServer => "cursor belongs to another server",
            Self::WrongSession => "cursor belongs to another session",
        })
    }
}

impl std::error::Error for CursorError {}

/// Why a cursor could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SealError {
    /// The upstream's cursor is longer than `MAX_UPSTREAM_CURSOR_LEN`: the listing cannot go
    /// on past that page (answer with an error naming the upstream).
    UpstreamCursorTooLong,
    /// The system random generator failed; sealing without a fresh nonce is never safe.
    Random,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UpstreamCursorTooLong => "upstream cursor longer than 2048 bytes",
            Self::Random => "system random number generator failed",
        })
    }
}

impl std::error::Error for SealError {}

/// Seals and opens cursors. Cheap to clone (keys are shared); `Send + Sync`.
///
/// AEAD (AES-256-GCM), not a MAC alone: the upstream's cursor is the upstream's, handed to the
/// gateway and not to the client (it may encode offsets, filters or internal ids), and the
/// upstream ids in the payload are the gateway's; the client gets nothing it can read.
/// Nonces are 96 random bits, so the budget is the one `SessionSealer` documents (2^32 cursors
/// per key for a 2^-33 chance of a repeat): one cursor per client page that has a next page;
/// rotating the session key rotates this one.
#[derive(Clone)]
pub struct CursorSealer {
    /// `tc1.` envelopes: the first key seals; every key opens (current first).
    env: Envelope,
    max_age: u64,
}

impl fmt::Debug for CursorSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("CursorSealer")
            .field("keys", &self.env.key_count())
            .field("max_age", &self.max_age)
            .finish()
    }
}

/// The cursor key: HKDF-SHA256 (RFC 5869) of the session key with a fixed salt and info.
fn derive_key(session_key: &[u8; 32]) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(session_key);
    // 32 bytes is far below HKDF-SHA256's 255 × 32 limit, so `expand` cannot fail; the match
    // keeps this free of unwrap and makes the impossible case obvious.
    match prk.expand(&[HKDF_INFO], &AES_256_GCM) {
        Ok(okm) => LessSafeKey::new(UnboundKey::from(okm)),
        Err(_) => unreachable!("HKDF-SHA256 expands to 32 bytes"),
    }
}

impl CursorSealer {
    /// A sealer keyed from the session key (`session.key`), with `DEFAULT_MAX_AGE_SECS`.
    pub fn new(session_key: &[u8; 32]) -> Self {
        CursorSealer {
            env: Envelope::new(PREFIX, derive_key(session_key)),
            max_age: DEFAULT_MAX_AGE_SECS,
        }
    }

    /// Also open cursors sealed under these previous session keys (key rotation, like
    /// `SessionSealer::with_previous`).
    pub fn with_previous(self, session_keys: &[[u8; 32]]) -> Self {
        CursorSealer {
            env: self.env.with_previous(session_keys.iter().map(derive_key)),
            ..self
        }
    }

    /// Cursors older than `secs` are `Expired`.
    pub fn with_max_age(self, secs: u64) -> Self {
        CursorSealer {
            max_age: secs,
            ..self
        }
    }

    /// `tc1.` + base64url(nonce ‖ AES-256-GCM(payload) ‖ tag), at most `MAX_CURSOR_LEN` bytes
    /// of `[A-Za-z0-9_.-]` (what `nextCursor` carries).
    pub fn seal(&self, c: &Cursor) -> Result<String, SealError> {
        let upstream_cursor = c.position.upstream_cursor.as_deref().map(str::as_bytes);
        if upstream_cursor.is_some_and(|u| u.len() > MAX_UPSTREAM_CURSOR_LEN) {
            return Err(SealError::UpstreamCursorTooLong);
        }
        let mut payload = Vec::with_capacity(MAX_PAYLOAD_LEN);
        encode(c, upstream_cursor, &mut payload);
        self.env.seal(&payload).map_err(|_| SealError::Random)
    }

    /// Authenticates a cursor (the `params.cursor` string) and holds it to the request:
    /// `Malformed` before authentication or when the payload cannot be read, `Tampered` if no
    /// key authenticates it, then `WrongList`, `WrongServer`, `WrongSession`, and `Expired` if
    /// `now_unix ≥ issued_at + max_age` or `issued_at > now_unix + CLOCK_SKEW_SECS`.
    pub fn open(&self, text: &[u8], now_unix: u64, expect: &Expect) -> Result<Cursor, CursorError> {
        let plain = self
            .env
            .open(text, MAX_CURSOR_LEN, FIXED_LEN)
            .map_err(|e| match e {
                OpenError::Malformed => CursorError::Malformed,
                OpenError::Tampered => CursorError::Tampered,
            })?;
        let c = decode(&plain).ok_or(CursorError::Malformed)?;
        self.hold(c, now_unix, expect)
    }

    fn hold(&self, c: Cursor, now: u64, expect: &Expect) -> Result<Cursor, CursorError> {
        if c.list != expect.list {
            return Err(CursorError::WrongList);
        }
        if c.server != expect.server {
            return Err(CursorError::WrongServer);
        }
        if c.session != expect.session {
            return Err(CursorError::WrongSession);
        }
        if now >= c.issued_at.saturating_add(self.max_age)
            || c.issued_at > now.saturating_add(CLOCK_SKEW_SECS)
        {
            return Err(CursorError::Expired);
        }
        Ok(c)
    }
}

// Payload v1 (big-endian), inside the AEAD:
//   list:u8 server:u64 upstream:u64 offset:u32 issued_at:u64
//   session_flag:u8 (0 none, 1 present) [session[16]]
//   cursor_flag:u8 (0 none, 1 present) [len:u16 (≤ 2048) bytes[len] (UTF-8)]
// Read exactly: any leftover or shortfall, unknown flag or list, or invalid UTF-8 is Malformed.

fn encode(c: &Cursor, upstream_cursor: Option<&[u8]>, out: &mut Vec<u8>) {
    out.push(c.list as u8);
    out.extend_from_slice(&c.server.to_be_bytes());
    out.extend_from_slice(&c.position.upstream.to_be_bytes());
    out.extend_from_slice(&c.position.offset.to_be_bytes());
    out.extend_from_slice(&c.issued_at.to_be_bytes());
    match &c.session {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            out.extend_from_slice(s);
        }
    }
    match upstream_cursor {
        None => out.push(0),
        Some(u) => {
            out.push(1);
            // `seal` checked u.len() ≤ 2048.
            out.extend_from_slice(&(u.len() as u16).to_be_bytes());
            out.extend_from_slice(u);
        }
    }
}

/// Reads that never go past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }
    fn flag(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

fn decode(payload: &[u8]) -> Option<Cursor> {
    let mut r = Reader(payload);
    let list = ListKind::from_u8(r.u8()?)?;
    let server = u64::from_be_bytes(r.array()?);
    let upstream = u64::from_be_bytes(r.array()?);
    let offset = u32::from_be_bytes(r.array()?);
    let issued_at = u64::from_be_bytes(r.array()?);
    let session = match r.flag()? {
        false => None,
        true => Some(r.array::<16>()?),
    };
    let upstream_cursor = match r.flag()? {
        false => None,
        true => {
            let n = usize::from(u16::from_be_bytes(r.array()?));
            if n > MAX_UPSTREAM_CURSOR_LEN {
                return None;
            }
            Some(String::from_utf8(r.take(n)?.to_vec()).ok()?)
        }
    };
    if !r.0.is_empty() {
        return None;
    }
    Some(Cursor {
        list,
        server,
        position: Position {
            upstream,
            upstream_cursor,
            offset,
        },
        issued_at,
        session,
    })
}

/// What to do after taking items from an upstream page (see `advance`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The client page has room: fetch this position's page next and `advance` again.
    Fetch(Position),
    /// The client page is full: seal this position as its `nextCursor`.
    Full(Position),
    /// Every upstream is exhausted: the client page has no `nextCursor`.
    End,
}

/// One step of an aggregated listing, with no I/O. `at` is where the listing stands; the
/// caller fetched `at.upstream`'s page with `at.upstream_cursor` and got `page_len` items and
/// `next_cursor`; the client page has room for `room` more items. Returns which items of that
/// page to take (before the gateway's filter: filtered items are taken and dropped, so a page
/// may come out shorter than the page size, which MCP allows) and what comes next.
/// Upstreams are visited in `order` (the server's upstreams' stable ids, in config order),
/// each from its first page to its last: the listing order is deterministic.
///
/// `None` when `at.upstream` is not in `order` (the upstream left the server in a reload):
/// the cursor is no longer meaningful (-32602; the client lists again).
///
/// The caller bounds how many upstream pages one client request fetches (an upstream may
/// answer empty pages with a `nextCursor` forever): when the budget is spent, answer with what
/// was gathered and turn `Fetch(p)` into `Full(p)`.
pub fn advance(
    order: &[u64],
    at: &Position,
    page_len: usize,
    next_cursor: Option<&str>,
    room: usize,
) -> Option<(Range<usize>, Step)> {
    let here = order.iter().position(|&u| u == at.upstream)?;
    // An upstream page that shrank since the cursor was issued: nothing left in it.
    let start = usize::try_from(at.offset)
        .unwrap_or(usize::MAX)
        .min(page_len);
    let end = start + room.min(page_len - start);
    if end < page_len {
        // The client page is full inside this upstream page: resume within it.
        let position = Position {
            upstream: at.upstream,
            upstream_cursor: at.upstream_cursor.clone(),
            offset: u32::try_from(end).unwrap_or(u32::MAX),
        };
        return Some((start..end, Step::Full(position)));
    }
    let next = match next_cursor {
        Some(c) => Some(Position {
            upstream: at.upstream,
            upstream_cursor: Some(c.to_owned()),
            offset: 0,
        }),
        None => order.get(here + 1).map(|&upstream| Position {
            upstream,
            upstream_cursor: None,
            offset: 0,
        }),
    };
    let step = match next {
        None => Step::End,
        Some(p) if room == end - start => Step::Full(p),
        Some(p) => Step::Fetch(p),
    };
    Some((start..end, step))
}

#[cfg(test)]
mod tests;
