//! Sealed session ids: the `Mcp-Session-Id` the gateway issues is an AEAD-sealed token carrying
//! everything a request needs to continue its session, so any worker of any instance that shares
//! the key can serve it without a shared session table. No I/O; `now` is an argument.
//! Must not trust a token before `open` has authenticated it; must not panic on any input.

use std::fmt;

use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};

use super::aead::{Envelope, OpenError};

use crate::mcp::ProtocolVersion;

/// Token prefix; it names the token format and is bound to the ciphertext as AAD, so a token
/// cannot be re-labelled as another version. A new payload layout gets a new prefix (`tg2.`).
/// `tg1.` (positional u16 server and upstream indices) is no longer opened: such a token is
/// `Malformed`, i.e. an unknown session (404), and the client initializes again.
const PREFIX: &str = "tg2.";
/// Longest token `open` looks at, and longest `try_seal` produces: room for a federated session
/// (a dozen upstream sessions with UUID-sized ids take ~800 bytes), and well under the 8 KiB a
/// header line may take in common servers and clients.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest upstream session id carried (the spec asks for visible ASCII; the length is ours).
pub const MAX_UPSTREAM_SESSION_ID_LEN: usize = 255;
/// Longest principal binding (a hash of issuer + subject fits in 32).
pub const MAX_PRINCIPAL_LEN: usize = 64;
/// Most upstream sessions in one client session (the count is one byte on the wire).
pub const MAX_UPSTREAMS: usize = 64;

/// Fixed part of the payload: id 16, server 8, version 1, issued 8, expires 8, principal tag 1, count 1.
const FIXED_LEN: usize = 16 + 8 + 1 + 8 + 8 + 1 + 1;
/// Per upstream session: upstream 8, version 1, session id length 1 (+ 8 with a replica).
const PER_UPSTREAM_LEN: usize = 8 + 1 + 1;
/// Set on an upstream session's version byte when a replica id follows it (versions are small).
const WITH_REPLICA: u8 = 0x80;

/// A stable, name-derived identity: the first 8 bytes of SHA-256 over a domain and the name.
/// Tokens, pools and metrics refer to servers and upstreams by it, never by list position, so
/// a reload that reorders or adds entries never changes what a live token means.
fn stable_id(domain: &[u8], name: &str) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(domain);
    ctx.update(&[0]);
    ctx.update(name.as_bytes());
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

/// The stable id of the server (virtual MCP endpoint) at `path`: a server's name is its path.
pub fn server_id(path: &str) -> u64 {
    stable_id(b"tollgate/server", path)
}

/// The stable id of the upstream named `name`.
pub fn upstream_id(name: &str) -> u64 {
    stable_id(b"tollgate/upstream", name)
}

/// The stable id of an upstream replica at `url` (`HttpTarget::url`, one spelling): a reload
/// that reorders an upstream's replicas keeps the sessions pinned to each. Never 0 (0 means
/// "no replica recorded" in a token), and never has the top bit set (`proxy::upstream` uses it
/// to name a replica by position instead).
pub fn replica_id(url: &str) -> u64 {
    (stable_id(b"tollgate/replica", url) >> 1).max(1)
}
/// Principal tag meaning "no principal".
const NO_PRINCIPAL: u8 = 0xFF;

/// What the gateway needs to continue a client session, carried inside the sealed id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionClaims {
    /// Random per session: the key for logs and (stateful) revocation lists.
    pub id: [u8; 16],
    /// The server's stable id (`server_id` of its path).
    pub server: u64,
    /// Negotiated with the client.
    pub protocol_version: ProtocolVersion,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; `open` at or after this instant answers `Expired`.
    pub expires_at: u64,
    /// Upstream sessions opened for this client session.
    pub upstreams: Vec<UpstreamSession>,
    /// Binds the session to an authenticated principal (e.g. a hash of iss + sub); ≤ 64 bytes.
    pub principal: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSession {
    /// The upstream's stable id (`upstream_id` of its name).
    pub upstream: u64,
    /// The upstream's own `Mcp-Session-Id`, if it issued one: visible ASCII, 1..=255 bytes.
    pub session_id: Option<String>,
    pub protocol_version: ProtocolVersion,
    /// The replica the session was opened on (`replica_id` of its URL; recorded also when the
    /// upstream has one URL, so a reload that adds or drops replicas keeps or ends the session
    /// rightly); 0: none recorded (a token from before replicas, or a session of the stateless
    /// revision), and the request may go to any.
    pub replica: u64,
}

impl UpstreamSession {
    /// Whether an upstream's `Mcp-Session-Id` value can be carried: visible ASCII (0x21–0x7E),
    /// 1..=255 bytes. Check it where the upstream's header is read; an upstream that sends
    /// anything else is misbehaving.
    pub fn is_valid_session_id(id: &[u8]) -> bool {
        !id.is_empty()
            && id.len() <= MAX_UPSTREAM_SESSION_ID_LEN
            && id.iter().all(|b| (0x21..=0x7E).contains(b))
    }
}

/// Why a token was refused. Every variant means "unknown session" to the client (HTTP 404).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// Not a token of ours: wrong prefix, bad encoding, wrong length, or a payload we cannot read.
    Malformed,
    /// Authentication failed: altered, or sealed with a key we no longer (or never) had.
    Tampered,
    /// Authentic but past `expires_at`.
    Expired,
}

impl SessionError {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Tampered => "tampered",
            Self::Expired => "expired",
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "session id is not a well-formed tollgate token",
            Self::Tampered => {
                "session id failed authentication (altered or sealed with an unknown key)"
            }
            Self::Expired => "session id has expired",
        })
    }
}

impl std::error::Error for SessionError {}

/// Why claims could not be sealed. Only `try_seal` reports these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimsError {
    /// An upstream session id is empty, longer than 255 bytes, or not visible ASCII.
    UpstreamSessionId,
    /// More than `MAX_UPSTREAMS` upstream sessions.
    TooManyUpstreams,
    /// Principal longer than `MAX_PRINCIPAL_LEN`.
    Principal,
    /// `expires_at` before `issued_at`.
    Lifetime,
    /// The token would exceed `MAX_TOKEN_LEN`.
    TooLarge,
    /// The system random generator failed; sealing without a fresh nonce is never safe.
    Random,
}

impl fmt::Display for ClaimsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UpstreamSessionId => "upstream session id must be 1..=255 visible ASCII bytes",
            Self::TooManyUpstreams => "too many upstream sessions in one session",
            Self::Principal => "principal binding longer than 64 bytes",
            Self::Lifetime => "session expires before it is issued",
            Self::TooLarge => "session token would exceed 2048 bytes",
            Self::Random => "system random number generator failed",
        })
    }
}

impl std::error::Error for ClaimsError {}

/// Seals and opens session tokens. Cheap to clone (keys are shared); `Send + Sync`.
///
/// Cipher: AES-256-GCM. Servers running this have AES-NI/CLMUL (or ARMv8 crypto), where it is
/// the fastest AEAD ring offers; ring's fallback without them is still constant-time.
/// ChaCha20-Poly1305 would only win on CPUs without AES instructions.
///
/// Nonces are 96 random bits per token. Birthday bound: after n tokens under one key the chance
/// of any nonce repeat is about n²/2^97, i.e. 2^-33 at n = 2^32, the limit NIST SP 800-38D sets
/// for random-nonce GCM. A repeat would leak the XOR of two payloads and the GHASH key, so the
/// budget matters: tokens are sealed on `initialize` (and when upstream sessions change), not per
/// request, and at a sustained 1000 new sessions/s 2^32 takes ~50 days. Rotate the key (see
/// `with_previous`) well within that, e.g. monthly; every instance sharing the key counts.
#[derive(Clone)]
pub struct SessionSealer {
    /// `tg2.` envelopes: the first key seals; every key opens, current first.
    env: Envelope,
}

impl fmt::Debug for SessionSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SessionSealer")
            .field("keys", &self.env.key_count())
            .finish()
    }
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is exactly what AES-256-GCM takes, so `new` cannot fail; the match keeps
    // this free of unwrap anyway and makes the impossible case obvious.
    match UnboundKey::new(&AES_256_GCM, key) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => unreachable!("AES-256-GCM accepts every 32-byte key"),
    }
}

impl SessionSealer {
    pub fn new(key: &[u8; 32]) -> Self {
        SessionSealer {
            env: Envelope::new(PREFIX, aead_key(key)),
        }
    }

    /// Also accept tokens sealed with these keys (key rotation: new key seals, old keys still
    /// open until their tokens have expired, i.e. for one `session.ttl`).
    pub fn with_previous(self, keys: &[[u8; 32]]) -> Self {
        SessionSealer {
            env: self.env.with_previous(keys.iter().map(aead_key)),
        }
    }

    /// A fresh random session id.
    ///
    /// # Panics
    /// If the operating system's random generator fails: a predictable id is worse than a crash.
    pub fn new_id() -> [u8; 16] {
        let mut id = [0u8; 16];
        if SystemRandom::new().fill(&mut id).is_err() {
            panic!("system random number generator failed");
        }
        id
    }

    /// Seals claims into a visible-ASCII token: `tg1.` + base64url(nonce ‖ ciphertext ‖ tag).
    ///
    /// Never panics. Claims that `try_seal` refuses (e.g. an invalid upstream session id that an
    /// upstream sent) yield a token that `open` always refuses as `Malformed`, so the client is
    /// told its session is unknown and re-initializes. Use `try_seal` to see the reason.
    pub fn seal(&self, claims: &SessionClaims) -> String {
        self.try_seal(claims)
            .unwrap_or_else(|_| String::from("tg2.!unsealable"))
    }

    /// Like `seal`, but says why claims cannot be sealed.
    pub fn try_seal(&self, claims: &SessionClaims) -> Result<String, ClaimsError> {
        let mut payload = Vec::with_capacity(encoded_len(claims)?);
        encode(claims, &mut payload);
        if self.env.sealed_len(payload.len()) > MAX_TOKEN_LEN {
            return Err(ClaimsError::TooLarge);
        }
        self.env.seal(&payload).map_err(|_| ClaimsError::Random)
    }

    /// Authenticates and decodes a token (the raw `Mcp-Session-Id` header value).
    /// `Malformed` before authentication, `Tampered` if no key authenticates it, `Expired` if
    /// authentic but `now_unix >= expires_at`.
    pub fn open(&self, token: &[u8], now_unix: u64) -> Result<SessionClaims, SessionError> {
        let plain = self
            .env
            .open(token, MAX_TOKEN_LEN, FIXED_LEN)
            .map_err(|e| match e {
                OpenError::Malformed => SessionError::Malformed,
                OpenError::Tampered => SessionError::Tampered,
            })?;
        let claims = decode(&plain).ok_or(SessionError::Malformed)?;
        if now_unix >= claims.expires_at {
            return Err(SessionError::Expired);
        }
        Ok(claims)
    }
}

/// Payload length, or why the claims cannot be encoded.
fn encoded_len(c: &SessionClaims) -> Result<usize, ClaimsError> {
    if c.expires_at < c.issued_at {
        return Err(ClaimsError::Lifetime);
    }
    if c.upstreams.len() > MAX_UPSTREAMS {
        return Err(ClaimsError::TooManyUpstreams);
    }
    let mut len = FIXED_LEN;
    if let Some(p) = &c.principal {
        if p.len() > MAX_PRINCIPAL_LEN {
            return Err(ClaimsError::Principal);
        }
        len += p.len();
    }
    for u in &c.upstreams {
        len += PER_UPSTREAM_LEN;
        if u.replica != 0 {
            len += 8;
        }
        if let Some(id) = &u.session_id {
            if !UpstreamSession::is_valid_session_id(id.as_bytes()) {
                return Err(ClaimsError::UpstreamSessionId);
            }
            len += id.len();
        }
    }
    Ok(len)
}

// Payload v2 (big-endian), inside the AEAD:
//   id[16] server:u64 version:u8 issued_at:u64 expires_at:u64
//   principal_len:u8 (0xFF = none, else 0..=64) principal[principal_len]
//   n_upstreams:u8 (≤ 64) then per upstream:
//     upstream:u64 version:u8 [replica:u64 when version has bit 0x80] sid_len:u8
//     (0 = none; ids are never empty) sid[sid_len]
// (The replica was added without a new prefix: a token without one reads as before.)
// Server and upstreams are stable ids (`server_id`, `upstream_id`), never list positions.
// The payload must be consumed exactly; any leftover or shortfall is Malformed.

/// Appends the payload; `encoded_len` must have accepted `c`.
fn encode(c: &SessionClaims, out: &mut Vec<u8>) {
    out.extend_from_slice(&c.id);
    out.extend_from_slice(&c.server.to_be_bytes());
    out.push(c.protocol_version as u8);
    out.extend_from_slice(&c.issued_at.to_be_bytes());
    out.extend_from_slice(&c.expires_at.to_be_bytes());
    match &c.principal {
        None => out.push(NO_PRINCIPAL),
        Some(p) => {
            out.push(p.len() as u8);
            out.extend_from_slice(p);
        }
    }
    out.push(c.upstreams.len() as u8);
    for u in &c.upstreams {
        out.extend_from_slice(&u.upstream.to_be_bytes());
        if u.replica == 0 {
            out.push(u.protocol_version as u8);
        } else {
            out.push(u.protocol_version as u8 | WITH_REPLICA);
            out.extend_from_slice(&u.replica.to_be_bytes());
        }
        match &u.session_id {
            None => out.push(0),
            Some(id) => {
                out.push(id.len() as u8);
                out.extend_from_slice(id.as_bytes());
            }
        }
    }
}

/// A cursor that never reads past the end.
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
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }
}

fn decode(payload: &[u8]) -> Option<SessionClaims> {
    let mut r = Reader(payload);
    let id = r.array::<16>()?;
    let server = r.u64()?;
    let protocol_version = ProtocolVersion::from_u8(r.u8()?)?;
    let issued_at = r.u64()?;
    let expires_at = r.u64()?;
    if expires_at < issued_at {
        return None;
    }
    let principal = match r.u8()? {
        NO_PRINCIPAL => None,
        n if usize::from(n) <= MAX_PRINCIPAL_LEN => Some(r.take(usize::from(n))?.to_vec()),
        _ => return None,
    };
    let count = usize::from(r.u8()?);
    if count > MAX_UPSTREAMS {
        return None;
    }
    let mut upstreams = Vec::with_capacity(count);
    for _ in 0..count {
        let upstream = r.u64()?;
        let v = r.u8()?;
        let protocol_version = ProtocolVersion::from_u8(v & !WITH_REPLICA)?;
        let replica = if v & WITH_REPLICA != 0 {
            match r.u64()? {
                0 => return None,
                id => id,
            }
        } else {
            0
        };
        let session_id = match usize::from(r.u8()?) {
            0 => None,
            n => {
                let bytes = r.take(n)?;
                if !UpstreamSession::is_valid_session_id(bytes) {
                    return None;
                }
                Some(String::from_utf8(bytes.to_vec()).ok()?)
            }
        };
        upstreams.push(UpstreamSession {
            upstream,
            session_id,
            protocol_version,
            replica,
        });
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(SessionClaims {
        id,
        server,
        protocol_version,
        issued_at,
        expires_at,
        upstreams,
        principal,
    })
}

#[cfg(test)]
mod tests;
