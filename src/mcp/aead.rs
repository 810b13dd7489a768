//! The sealed envelope that session tokens (`tg2.`) and list cursors (`tc1.`) share:
//! `PREFIX` + base64url(nonce ‖ AES-256-GCM(payload) ‖ tag), with the prefix (less its dot) bound
//! as AAD so a token can never be relabelled as another format; the first key seals, every key
//! opens (rotation, current key first). Callers own their payload layouts and their limits.
//! No I/O; never panics on input.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

pub const TAG_LEN: usize = 16;

/// Why an envelope did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Not one of ours before authentication: prefix, encoding or length.
    Malformed,
    /// No key authenticates it: altered, or sealed under a key we do not (or no longer) have.
    Tampered,
}

/// Why an envelope could not be sealed: the system's random generator failed (sealing without
/// a fresh nonce is never safe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomFailed;

/// Keys and the format's prefix. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Envelope {
    /// `"tg2."`: written before the base64; its bytes less the final dot are the AAD.
    prefix: &'static str,
    /// `keys[0]` seals; every key opens, in order.
    keys: Arc<[LessSafeKey]>,
    rng: SystemRandom,
}

impl Envelope {
    pub fn new(prefix: &'static str, key: LessSafeKey) -> Self {
        Envelope {
            prefix,
            keys: Arc::from(vec![key]),
            rng: SystemRandom::new(),
        }
    }

    /// Also opens what these keys sealed (after the current one).
    pub fn with_previous(self, previous: impl IntoIterator<Item = LessSafeKey>) -> Self {
        let mut all: Vec<LessSafeKey> = self.keys.iter().cloned().collect();
        all.extend(previous);
        Envelope {
            keys: Arc::from(all),
            ..self
        }
    }

    /// How many keys open (the current one included).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    fn aad(&self) -> &'static [u8] {
        let p = self.prefix.as_bytes();
        p.strip_suffix(b".").unwrap_or(p)
    }

    /// The length of the text `seal` makes for a payload of `payload_len` bytes.
    pub fn sealed_len(&self, payload_len: usize) -> usize {
        self.prefix.len() + (NONCE_LEN + payload_len + TAG_LEN).div_ceil(3) * 4
    }

    /// Seals `payload` (visible ASCII: the prefix and base64url).
    pub fn seal(&self, payload: &[u8]) -> Result<String, RandomFailed> {
        let mut buf = Vec::with_capacity(NONCE_LEN + payload.len() + TAG_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| RandomFailed)?;
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(payload);
        let tag = self.keys[0]
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad()),
                &mut buf[NONCE_LEN..],
            )
            // Fails only for inputs of ~64 GiB; callers bound their payloads to a few KiB.
            .map_err(|_| RandomFailed)?;
        buf.extend_from_slice(tag.as_ref());
        let mut out = String::with_capacity(self.sealed_len(payload.len()));
        out.push_str(self.prefix);
        URL_SAFE_NO_PAD.encode_string(&buf, &mut out);
        Ok(out)
    }

    /// Authenticates `text` and returns its payload. `Malformed` (before any key is tried) when
    /// it is longer than `max_len`, lacks the prefix, is not strict base64url (no padding,
    /// canonical trailing bits: one spelling per token), or holds fewer than `min_payload`
    /// payload bytes; `Tampered` when no key authenticates it.
    pub fn open(
        &self,
        text: &[u8],
        max_len: usize,
        min_payload: usize,
    ) -> Result<Vec<u8>, OpenError> {
        if text.len() > max_len {
            return Err(OpenError::Malformed);
        }
        let body = text
            .strip_prefix(self.prefix.as_bytes())
            .ok_or(OpenError::Malformed)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| OpenError::Malformed)?;
        if raw.len() < NONCE_LEN + min_payload + TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError::Malformed)?;
        let mut scratch = Vec::with_capacity(sealed.len());
        for key in self.keys.iter() {
            scratch.clear();
            scratch.extend_from_slice(sealed);
            let opened = key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(self.aad()),
                    &mut scratch,
                )
                .map(|plain| plain.len());
            if let Ok(n) = opened {
                scratch.truncate(n);
                return Ok(scratch);
            }
        }
        Err(OpenError::Tampered)
    }
}
