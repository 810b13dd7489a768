//! Per-worker cache of opened session ids. Opening a sealed id (base64 + AES-GCM) costs a few
//! hundred nanoseconds on every request of a session; a byte-identical id that this worker has
//! already opened is looked up instead. Bounded, so sessions still cost no unbounded memory:
//! when full, the cache starts over. Expiry is checked on every hit; revocation is checked by
//! the caller after the lookup, as for a fresh open.

use std::collections::HashMap;
use std::rc::Rc;

use crate::mcp::session::SessionClaims;

/// Opened tokens by their key: the token's bytes (to compare) and its claims.
type Opened = HashMap<u64, (Box<[u8]>, Rc<SessionClaims>), foldhash::fast::RandomState>;

pub struct SessionCache {
    /// Keyed by the token's AEAD tag, which no client can choose for a token that opened: a
    /// fast hasher is enough (SipHash cost ~2% of a small call's user-space time).
    entries: Opened,
    capacity: usize,
}

/// A sealed id ends in the AEAD tag: its last bytes are as good as random, so they are the key.
fn key(token: &[u8]) -> u64 {
    let tail = &token[token.len().saturating_sub(8)..];
    let mut k = [0u8; 8];
    k[..tail.len()].copy_from_slice(tail);
    u64::from_le_bytes(k) ^ (token.len() as u64).rotate_left(56)
}

impl SessionCache {
    /// Forgets every opened token (a reload changed the session keys: a token of a key that
    /// was dropped must be opened again, and refused).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn new(capacity: usize) -> Self {
        SessionCache {
            entries: HashMap::with_capacity_and_hasher(capacity.min(1024), Default::default()),
            capacity,
        }
    }

    /// The claims of `token` if this worker opened exactly these bytes before and they are unexpired.
    pub fn get(&self, token: &[u8], now_unix: u64) -> Option<Rc<SessionClaims>> {
        let (stored, claims) = self.entries.get(&key(token))?;
        (**stored == *token && claims.expires_at > now_unix).then(|| claims.clone())
    }

    pub fn insert(&mut self, token: &[u8], claims: Rc<SessionClaims>) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        self.entries.insert(key(token), (token.into(), claims));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::ProtocolVersion;

    fn claims(exp: u64) -> Rc<SessionClaims> {
        Rc::new(SessionClaims {
            id: [7; 16],
            server: 0,
            protocol_version: ProtocolVersion::V2025_06_18,
            issued_at: 0,
            expires_at: exp,
            upstreams: vec![],
            principal: None,
        })
    }

    #[test]
    fn hits_only_identical_unexpired_tokens() {
        let mut c = SessionCache::new(4);
        c.insert(b"tg2.aaaaTAIL0001", claims(100));
        assert!(c.get(b"tg2.aaaaTAIL0001", 50).is_some());
        assert!(c.get(b"tg2.aaaaTAIL0001", 100).is_none(), "expired");
        // Same key bytes (same tail and length), different token: never a hit.
        assert!(c.get(b"tg2.bbbbTAIL0001", 50).is_none());
    }

    #[test]
    fn stays_bounded() {
        let mut c = SessionCache::new(3);
        for i in 0..10u8 {
            c.insert(&[b't', b'g', i, i, i, i, i, i, i, i], claims(100));
            assert!(c.len() <= 3);
        }
        let mut off = SessionCache::new(0);
        off.insert(b"x", claims(1));
        assert!(off.is_empty());
    }
}
