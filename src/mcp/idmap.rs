//! Ids the gateway hands a client in place of an upstream's, so that messages from several
//! upstreams can share one client stream without colliding, and the client's answer finds its
//! way back, with no table anywhere: what must be remembered travels in the id itself.
//!
//! A server→client request (sampling, elicitation, roots/list) from upstream U with id `7`
//! reaches the client as id `"tg~<base64url(U ‖ len ‖ 7 ‖ tag)>"`; the client answers with
//! that id, and `unwrap` gives back (U, `7`) to route the answer to U with U's own id. Progress
//! tokens and `notifications/cancelled` request ids are wrapped the same way.
//!
//! The tag is HMAC-SHA256 (truncated to 96 bits) under a key derived from the session key
//! (HKDF, its own label), over the client session's id, U and the original id's JSON text: a
//! client cannot forge an id that routes to an upstream of its choice, nor replay one from
//! another session. The original id is carried, not hidden (it is the upstream's own, which the
//! client may see). No I/O; never panics on input.
//!
//! Task ids (2025-11-25 tasks) are wrapped the same way by a mapper of their own
//! (`IdMapper::tasks`: prefix `tgt~`, its own HKDF label), so a wrapped request id is never
//! accepted as a task id nor the other way round.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::{hkdf, hmac};

/// What a wrapped id starts with (inside its JSON string).
pub const PREFIX: &str = "tg~";
/// What a wrapped task id starts with.
pub const TASK_PREFIX: &str = "tgt~";
const TASK_HKDF_INFO: &[u8] = b"tgt~ task id HMAC-SHA256 key";
/// Longest original id (its JSON text) that is wrapped; longer ones are refused (`TooLong`).
pub const MAX_ORIGINAL_LEN: usize = 256;
const TAG_LEN: usize = 12;
const HKDF_SALT: &[u8] = b"tollgate/idmap/v1";
const HKDF_INFO: &[u8] = b"tg~ HMAC-SHA256 key";

/// Why an id could not be unwrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdError {
    /// Not an id the gateway made (a client's own id, or any other value): not ours to route.
    NotOurs,
    /// Shaped like ours, but the tag does not verify for this session: refuse (-32600).
    Forged,
}

/// Why an id could not be wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrapError {
    /// The original id's JSON text is longer than `MAX_ORIGINAL_LEN`.
    TooLong,
    /// The original is not a JSON string or number (ids and tokens are one or the other).
    NotAnId,
}

/// Wraps and unwraps ids under one key (`Send + Sync`, cheap to clone).
#[derive(Clone)]
pub struct IdMapper {
    /// `PREFIX` or `TASK_PREFIX`.
    prefix: &'static str,
    /// The HKDF label its keys are derived with.
    info: &'static [u8],
    key: hmac::Key,
    /// Keys of earlier session keys (a rotation): ids they wrapped still unwrap.
    previous: Vec<hmac::Key>,
}

impl std::fmt::Debug for IdMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdMapper(..)")
    }
}

struct HmacLen;

impl hkdf::KeyType for HmacLen {
    fn len(&self) -> usize {
        32
    }
}

impl IdMapper {
    /// Keyed from the session key (`session.key`) through HKDF-SHA256 with its own label, so the
    /// key is never the session token's or the cursors'.
    pub fn new(session_key: &[u8; 32]) -> Self {
        IdMapper {
            prefix: PREFIX,
            info: HKDF_INFO,
            key: Self::derive(session_key, HKDF_INFO),
            previous: Vec::new(),
        }
    }

    /// The mapper of task ids: prefix `tgt~`, a key of its own.
    pub fn tasks(session_key: &[u8; 32]) -> Self {
        IdMapper {
            prefix: TASK_PREFIX,
            info: TASK_HKDF_INFO,
            key: Self::derive(session_key, TASK_HKDF_INFO),
            previous: Vec::new(),
        }
    }

    fn derive(session_key: &[u8; 32], info: &[u8]) -> hmac::Key {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(session_key);
        let mut k = [0u8; 32];
        // 32 bytes is far below HKDF's limit, so neither call can fail; no unwrap either way.
        if let Ok(okm) = prk.expand(&[info], HmacLen) {
            let _ = okm.fill(&mut k);
        }
        hmac::Key::new(hmac::HMAC_SHA256, &k)
    }

    /// Also unwraps ids wrapped under these earlier session keys (key rotation on reload: a
    /// sampling request in flight across it still finds its way back).
    pub fn with_previous(mut self, session_keys: &[[u8; 32]]) -> Self {
        let info = self.info;
        self.previous = session_keys.iter().map(|k| Self::derive(k, info)).collect();
        self
    }

    fn tag(&self, session: &[u8; 16], upstream: u64, original: &[u8]) -> [u8; TAG_LEN] {
        tag_with(&self.key, session, upstream, original)
    }
}

fn tag_with(key: &hmac::Key, session: &[u8; 16], upstream: u64, original: &[u8]) -> [u8; TAG_LEN] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(session);
    ctx.update(&upstream.to_be_bytes());
    ctx.update(original);
    let t = ctx.sign();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&t.as_ref()[..TAG_LEN]);
    out
}

impl IdMapper {
    /// The JSON text (a string literal, quotes included) of the id the client sees for
    /// upstream `upstream`'s id whose JSON text is `original`, in client session `session`.
    pub fn wrap(
        &self,
        session: &[u8; 16],
        upstream: u64,
        original: &[u8],
    ) -> Result<String, WrapError> {
        if original.len() > MAX_ORIGINAL_LEN {
            return Err(WrapError::TooLong);
        }
        if !looks_like_id(original) {
            return Err(WrapError::NotAnId);
        }
        let mut raw = Vec::with_capacity(8 + 2 + original.len() + TAG_LEN);
        raw.extend_from_slice(&upstream.to_be_bytes());
        raw.extend_from_slice(&(original.len() as u16).to_be_bytes());
        raw.extend_from_slice(original);
        raw.extend_from_slice(&self.tag(session, upstream, original));
        let mut out = String::with_capacity(2 + self.prefix.len() + raw.len().div_ceil(3) * 4);
        out.push('"');
        out.push_str(self.prefix);
        URL_SAFE_NO_PAD.encode_string(&raw, &mut out);
        out.push('"');
        Ok(out)
    }

    /// The upstream and original id (JSON text) behind `id`, the JSON text of an id a client
    /// sent (as the scanner read it: quotes included). `NotOurs` for anything the gateway did
    /// not make; `Forged` for a lookalike whose tag does not verify in `session`.
    pub fn unwrap(&self, session: &[u8; 16], id: &[u8]) -> Result<(u64, Vec<u8>), IdError> {
        let Some(inner) = id
            .strip_prefix(b"\"")
            .and_then(|s| s.strip_suffix(b"\""))
            .and_then(|s| s.strip_prefix(self.prefix.as_bytes()))
        else {
            return Err(IdError::NotOurs);
        };
        // Base64url never needs JSON escapes: an id with a backslash was not written by us.
        let raw = URL_SAFE_NO_PAD.decode(inner).map_err(|_| IdError::Forged)?;
        if raw.len() < 8 + 2 + TAG_LEN {
            return Err(IdError::Forged);
        }
        let (head, tag) = raw.split_at(raw.len() - TAG_LEN);
        let upstream = u64::from_be_bytes(head[..8].try_into().map_err(|_| IdError::Forged)?);
        let len = usize::from(u16::from_be_bytes(
            head[8..10].try_into().map_err(|_| IdError::Forged)?,
        ));
        let original = &head[10..];
        if original.len() != len || len > MAX_ORIGINAL_LEN {
            return Err(IdError::Forged);
        }
        let verifies = std::iter::once(&self.key)
            .chain(&self.previous)
            .any(|k| same_tag(&tag_with(k, session, upstream, original), tag));
        if !verifies {
            return Err(IdError::Forged);
        }
        Ok((upstream, original.to_vec()))
    }
}

/// Compares tags in time that does not depend on where they differ.
fn same_tag(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON string literal or a JSON number, by its first byte (the scanner has already checked
/// the whole value; this only keeps objects, arrays, literals and empty text out).
fn looks_like_id(v: &[u8]) -> bool {
    matches!(v.first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [3; 32];
    const S1: [u8; 16] = [1; 16];
    const S2: [u8; 16] = [2; 16];

    #[test]
    fn task_ids_and_request_ids_never_pass_for_each_other() {
        let (ids, tasks) = (IdMapper::new(&KEY), IdMapper::tasks(&KEY));
        let t = tasks.wrap(&S1, 9, b"\"task-1\"").unwrap();
        assert!(t.starts_with("\"tgt~"), "{t}");
        assert_eq!(
            tasks.unwrap(&S1, t.as_bytes()),
            Ok((9, b"\"task-1\"".to_vec()))
        );
        assert_eq!(tasks.unwrap(&S2, t.as_bytes()), Err(IdError::Forged));
        assert_eq!(ids.unwrap(&S1, t.as_bytes()), Err(IdError::NotOurs));
        let r = ids.wrap(&S1, 9, b"\"task-1\"").unwrap();
        assert_eq!(tasks.unwrap(&S1, r.as_bytes()), Err(IdError::NotOurs));
        // Same bytes after the prefix, other key: forged.
        let moved = r.replacen("tg~", "tgt~", 1);
        assert_eq!(tasks.unwrap(&S1, moved.as_bytes()), Err(IdError::Forged));
        let rotated = IdMapper::tasks(&[4; 32]).with_previous(&[KEY]);
        assert_eq!(
            rotated.unwrap(&S1, t.as_bytes()),
            Ok((9, b"\"task-1\"".to_vec()))
        );
    }

    #[test]
    fn ids_wrapped_under_a_previous_key_still_unwrap() {
        let old = IdMapper::new(&KEY);
        let w = old.wrap(&S1, 9, b"4").unwrap();
        let new = IdMapper::new(&[4; 32]);
        assert_eq!(new.unwrap(&S1, w.as_bytes()), Err(IdError::Forged));
        let rotated = IdMapper::new(&[4; 32]).with_previous(&[KEY]);
        assert_eq!(rotated.unwrap(&S1, w.as_bytes()), Ok((9, b"4".to_vec())));
    }

    #[test]
    fn round_trips_numbers_and_strings() {
        let m = IdMapper::new(&KEY);
        for original in [&b"7"[..], b"-1.5e3", b"\"abc\"", b"\"\\u0041\"", b"0"] {
            let w = m.wrap(&S1, 42, original).unwrap();
            assert!(w.starts_with("\"tg~") && w.ends_with('"'), "{w}");
            let v: serde_json::Value = serde_json::from_str(&w).expect("a JSON string");
            assert!(v.is_string());
            assert_eq!(m.unwrap(&S1, w.as_bytes()), Ok((42, original.to_vec())));
        }
    }

    #[test]
    fn another_session_key_or_upstream_cannot_use_it() {
        let m = IdMapper::new(&KEY);
        let w = m.wrap(&S1, 42, b"7").unwrap();
        assert_eq!(m.unwrap(&S2, w.as_bytes()), Err(IdError::Forged));
        assert_eq!(
            IdMapper::new(&[4; 32]).unwrap(&S1, w.as_bytes()),
            Err(IdError::Forged)
        );
        // Re-pointing it at another upstream breaks the tag.
        let inner = &w[1 + PREFIX.len()..w.len() - 1];
        let mut raw = URL_SAFE_NO_PAD.decode(inner).unwrap();
        raw[7] ^= 1;
        let moved = format!("\"{PREFIX}{}\"", URL_SAFE_NO_PAD.encode(&raw));
        assert_eq!(m.unwrap(&S1, moved.as_bytes()), Err(IdError::Forged));
    }

    #[test]
    fn a_clients_own_ids_are_not_ours() {
        let m = IdMapper::new(&KEY);
        for id in [&b"7"[..], b"\"7\"", b"\"tg-abc\"", b"null", b"", b"\"tg~"] {
            assert_eq!(m.unwrap(&S1, id), Err(IdError::NotOurs), "{id:?}");
        }
        for id in [&b"\"tg~\""[..], b"\"tg~!!\"", b"\"tg~AAAA\""] {
            assert_eq!(m.unwrap(&S1, id), Err(IdError::Forged), "{id:?}");
        }
    }

    #[test]
    fn wrap_refuses_what_is_not_an_id() {
        let m = IdMapper::new(&KEY);
        assert_eq!(m.wrap(&S1, 1, b"{}"), Err(WrapError::NotAnId));
        assert_eq!(m.wrap(&S1, 1, b"null"), Err(WrapError::NotAnId));
        assert_eq!(m.wrap(&S1, 1, b""), Err(WrapError::NotAnId));
        let long = format!("\"{}\"", "a".repeat(MAX_ORIGINAL_LEN));
        assert_eq!(m.wrap(&S1, 1, long.as_bytes()), Err(WrapError::TooLong));
    }

    proptest! {
        #[test]
        fn unwrap_never_panics_and_round_trips(
            upstream in any::<u64>(),
            n in any::<i64>(),
            junk in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let m = IdMapper::new(&KEY);
            let original = n.to_string();
            let w = m.wrap(&S1, upstream, original.as_bytes()).unwrap();
            prop_assert_eq!(m.unwrap(&S1, w.as_bytes()), Ok((upstream, original.into_bytes())));
            let _ = m.unwrap(&S1, &junk);
            let mut prefixed = format!("\"{PREFIX}").into_bytes();
            prefixed.extend_from_slice(&junk);
            prefixed.push(b'"');
            prop_assert!(m.unwrap(&S1, &prefixed).is_err());
        }
    }
}
