//! The legacy HTTP+SSE transport's stream ids (the `sessionId` of `<path>/messages?sessionId=…`):
//! which worker holds the stream, which of its slots, and that slot's generation and nonce,
//! authenticated with HMAC-SHA256 under a key derived from the session key. No I/O; never panics.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::{hkdf, hmac};

const PREFIX: &str = "tl1.";
const HKDF_SALT: &[u8] = b"tollgate/legacy-sse/v1";
const HKDF_INFO: &[u8] = b"stream id";
/// worker:u16 slot:u32 generation:u64 nonce:u64, big-endian.
const PAYLOAD: usize = 2 + 4 + 8 + 8;
const TAG: usize = 32;
/// The length of every id (prefix + base64url of payload and tag).
pub const ID_LEN: usize = PREFIX.len() + ((PAYLOAD + TAG) * 4).div_ceil(3);

/// Where a legacy stream lives. `generation` changes each time a slot is reused, and `nonce` is
/// random per stream, so an id of an ended stream (or of an earlier process with the same key)
/// never reaches the stream that took its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamId {
    pub worker: u16,
    pub slot: u32,
    pub generation: u64,
    pub nonce: u64,
}

/// Seals and opens stream ids. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct StreamIds {
    /// The first seals; every one opens (rotation on reload).
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for StreamIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamIds(..)")
    }
}

struct HmacLen;

impl hkdf::KeyType for HmacLen {
    fn len(&self) -> usize {
        32
    }
}

fn derive(session_key: &[u8; 32]) -> hmac::Key {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(session_key);
    let mut k = [0u8; 32];
    // 32 bytes is far below HKDF's limit, so neither call can fail.
    if let Ok(okm) = prk.expand(&[HKDF_INFO], HmacLen) {
        let _ = okm.fill(&mut k);
    }
    hmac::Key::new(hmac::HMAC_SHA256, &k)
}

impl StreamIds {
    /// Keyed from the session key through HKDF with its own label (never the token's key).
    pub fn new(session_key: &[u8; 32]) -> Self {
        StreamIds {
            keys: vec![derive(session_key)],
        }
    }

    /// Also opens ids sealed under these earlier session keys (a reload that rotates the key
    /// keeps the streams it found open).
    pub fn with_previous(mut self, session_keys: &[[u8; 32]]) -> Self {
        self.keys.extend(session_keys.iter().map(derive));
        self
    }

    /// `tl1.` + base64url(payload ‖ HMAC tag): URL-safe, so it goes into a query as it is.
    pub fn seal(&self, id: &StreamId) -> String {
        let mut raw = Vec::with_capacity(PAYLOAD + TAG);
        raw.extend_from_slice(&id.worker.to_be_bytes());
        raw.extend_from_slice(&id.slot.to_be_bytes());
        raw.extend_from_slice(&id.generation.to_be_bytes());
        raw.extend_from_slice(&id.nonce.to_be_bytes());
        let tag = hmac::sign(&self.keys[0], &raw);
        raw.extend_from_slice(tag.as_ref());
        let mut out = String::with_capacity(ID_LEN);
        out.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&raw, &mut out);
        out
    }

    /// The stream an id names, if one of the keys sealed it exactly so.
    pub fn open(&self, text: &[u8]) -> Option<StreamId> {
        if text.len() != ID_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD
            .decode(text.strip_prefix(PREFIX.as_bytes())?)
            .ok()?;
        if raw.len() != PAYLOAD + TAG {
            return None;
        }
        let (payload, tag) = raw.split_at(PAYLOAD);
        if !self
            .keys
            .iter()
            .any(|k| hmac::verify(k, payload, tag).is_ok())
        {
            return None;
        }
        let be = |r: std::ops::Range<usize>| -> u64 {
            payload[r].iter().fold(0, |a, &b| (a << 8) | u64::from(b))
        };
        Some(StreamId {
            worker: be(0..2) as u16,
            slot: be(2..6) as u32,
            generation: be(6..14),
            nonce: be(14..22),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: StreamId = StreamId {
        worker: 3,
        slot: 70_000,
        generation: 1 << 40,
        nonce: 0xdead_beef_0bad_cafe,
    };

    #[test]
    fn an_id_opens_to_what_was_sealed_and_nothing_else_opens() {
        let ids = StreamIds::new(&[7; 32]);
        let text = ids.seal(&ID);
        assert_eq!(text.len(), ID_LEN);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        assert_eq!(ids.open(text.as_bytes()), Some(ID));
        // Another key, any changed character, truncation, garbage: nothing.
        assert_eq!(StreamIds::new(&[8; 32]).open(text.as_bytes()), None);
        let mut b = text.clone().into_bytes();
        for i in PREFIX.len()..b.len() {
            let was = b[i];
            b[i] = if was == b'A' { b'B' } else { b'A' };
            assert_eq!(ids.open(&b), None, "changed at {i}");
            b[i] = was;
        }
        assert_eq!(ids.open(&b[..b.len() - 1]), None);
        assert_eq!(ids.open(b""), None);
        assert_eq!(ids.open(&[0xff; ID_LEN]), None);
    }

    #[test]
    fn a_rotated_key_still_opens_ids_of_the_previous_one() {
        let old = StreamIds::new(&[1; 32]);
        let text = old.seal(&ID);
        let new = StreamIds::new(&[2; 32]).with_previous(&[[1; 32]]);
        assert_eq!(new.open(text.as_bytes()), Some(ID));
        assert_eq!(StreamIds::new(&[2; 32]).open(text.as_bytes()), None);
    }
}
