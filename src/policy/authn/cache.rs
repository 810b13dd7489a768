//! The per-worker verified-token cache: a set-associative table of `entries` slots (sets of
//! `WAYS`), each holding the full token bytes, so a hit is a seeded hash of the token, at most
//! `WAYS` comparisons and an `Rc` clone (no allocation, no lock, no SHA-256: hashing an 800-byte
//! token with SHA-256 alone costs more than the whole hit budget; see bench/auth.rs). The hash only
//! picks the set; a hit needs the same server and byte-identical token, so a hash collision can
//! never make one token pass for another (at worst the two evict each other).
//!
//! Entries expire at the token's `exp` (never later, whatever the leeway) and are evicted per set
//! with a second chance (a CLOCK over the set's ways): an entry served since the hand last passed
//! survives one more pass. Failures are not cached.

use std::rc::Rc;

use crate::policy::Principal;

const WAYS: usize = 4;

struct Slot<V> {
    hash: u64,
    server: u32,
    /// Unix seconds; the entry is served while `now < expires`.
    expires: u64,
    referenced: bool,
    token: Box<[u8]>,
    principal: Option<V>,
}

impl<V> Slot<V> {
    fn empty() -> Slot<V> {
        Slot {
            hash: 0,
            server: 0,
            expires: 0,
            referenced: false,
            token: Box::default(),
            principal: None,
        }
    }

    fn holds(&self, hash: u64, server: u32, token: &[u8]) -> bool {
        self.principal.is_some()
            && self.hash == hash
            && self.server == server
            && *self.token == *token
    }
}

/// `V`: what a hit hands out (a clone): the principal of a verified token, or the failure of an
/// opaque token introspection said is inactive (the negative cache).
pub struct TokenCache<V = Rc<Principal>> {
    slots: Box<[Slot<V>]>,
    ways: usize,
    sets: usize,
    /// Each set's CLOCK hand.
    hands: Box<[u8]>,
    seed: u64,
}

impl<V: Clone> TokenCache<V> {
    /// At most `entries` slots (rounded down to whole sets); `entries` ≥ 1.
    pub fn new(entries: usize, seed: u64) -> TokenCache<V> {
        let entries = entries.max(1);
        let ways = WAYS.min(entries);
        let sets = entries / ways;
        TokenCache {
            slots: (0..sets * ways).map(|_| Slot::empty()).collect(),
            ways,
            sets,
            hands: vec![0; sets].into_boxed_slice(),
            seed,
        }
    }

    /// How many slots the cache has (never more than the configured entries).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Live entries (a test and debugging aid: walks every slot).
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.principal.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        for s in self.slots.iter_mut() {
            *s = Slot::empty();
        }
    }

    fn set(&self, hash: u64) -> std::ops::Range<usize> {
        let first = (hash % self.sets as u64) as usize * self.ways;
        first..first + self.ways
    }

    /// The principal a still-valid entry for (`server`, `token`) holds.
    #[inline]
    pub fn get(&mut self, server: u32, token: &[u8], now: u64) -> Option<V> {
        let hash = hash(self.seed, server, token);
        let range = self.set(hash);
        for slot in &mut self.slots[range] {
            if slot.holds(hash, server, token) {
                if now >= slot.expires {
                    // Expired: drop it now (its principal may be the last reference).
                    *slot = Slot::empty();
                    return None;
                }
                slot.referenced = true;
                return slot.principal.clone();
            }
        }
        None
    }

    /// Remembers a verified token until `expires` (its `exp`).
    pub fn insert(&mut self, server: u32, token: &[u8], principal: V, expires: u64, now: u64) {
        if expires <= now {
            return;
        }
        let hash = hash(self.seed, server, token);
        let range = self.set(hash);
        let set_index = range.start / self.ways;
        let set = &mut self.slots[range];
        // The same token again, an empty or an expired slot; else the CLOCK's victim.
        let victim = set
            .iter()
            .position(|s| s.holds(hash, server, token))
            .or_else(|| {
                set.iter()
                    .position(|s| s.principal.is_none() || now >= s.expires)
            })
            .unwrap_or_else(|| {
                let ways = set.len();
                let mut hand = self.hands[set_index] as usize % ways;
                // One pass clears every reference bit, so this ends within ways + 1 steps.
                while set[hand].referenced {
                    set[hand].referenced = false;
                    hand = (hand + 1) % ways;
                }
                self.hands[set_index] = ((hand + 1) % ways) as u8;
                hand
            });
        let slot = &mut set[victim];
        let token_box = if slot.token.len() == token.len() {
            let mut b = std::mem::take(&mut slot.token);
            b.copy_from_slice(token);
            b
        } else {
            token.into()
        };
        *slot = Slot {
            hash,
            server,
            expires,
            referenced: false,
            token: token_box,
            principal: Some(principal),
        };
    }
}

/// A seeded multiply-xorshift hash over 8-byte words, two lanes (so the multiplications of
/// consecutive words overlap). Not cryptographic: it only spreads tokens over sets; the seed is
/// random per worker so a client cannot aim tokens at one set.
#[inline]
fn hash(seed: u64, server: u32, token: &[u8]) -> u64 {
    const K0: u64 = 0x9e37_79b9_7f4a_7c15;
    const K1: u64 = 0xc2b2_ae3d_27d4_eb4f;
    let mut a = seed ^ K0 ^ u64::from(server);
    let mut b = seed.rotate_left(32) ^ K1 ^ token.len() as u64;
    let mut chunks = token.chunks_exact(16);
    for c in &mut chunks {
        let (x, y) = c.split_at(8);
        a = (a ^ u64::from_le_bytes(x.try_into().unwrap_or_default())).wrapping_mul(K0);
        a ^= a >> 32;
        b = (b ^ u64::from_le_bytes(y.try_into().unwrap_or_default())).wrapping_mul(K1);
        b ^= b >> 29;
    }
    let mut tail = [0u8; 16];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    a = (a ^ u64::from_le_bytes(tail[..8].try_into().unwrap_or_default())).wrapping_mul(K0);
    b = (b ^ u64::from_le_bytes(tail[8..].try_into().unwrap_or_default())).wrapping_mul(K1);
    let mut h = a ^ b.rotate_left(23);
    h ^= h >> 33;
    h = h.wrapping_mul(K1);
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Source;

    fn principal(subject: &str) -> Rc<Principal> {
        Rc::new(Principal {
            source: Source::Development,
            subject: subject.into(),
            client: None,
            tenant: None,
            roles: Box::new([]),
            scopes: Box::new([]),
            expires_at: None,
            id: [0; 16],
        })
    }

    #[test]
    fn hit_needs_same_server_same_bytes_and_time_before_expiry() {
        let mut c: TokenCache = TokenCache::new(16, 7);
        c.insert(1, b"token-a", principal("a"), 100, 10);
        assert_eq!(&*c.get(1, b"token-a", 50).unwrap().subject, "a");
        assert!(c.get(2, b"token-a", 50).is_none(), "another server");
        assert!(c.get(1, b"token-b", 50).is_none());
        assert!(c.get(1, b"token-a", 100).is_none(), "expired at exp");
        assert_eq!(c.len(), 0, "the expired entry is dropped");
        c.insert(1, b"token-a", principal("a"), 10, 10);
        assert_eq!(c.len(), 0, "already expired: not stored");
    }

    #[test]
    fn the_bound_holds_and_recently_used_entries_survive() {
        let mut c: TokenCache = TokenCache::new(10, 1);
        assert!(c.capacity() <= 10);
        for i in 0..1000u32 {
            c.insert(0, format!("t{i}").as_bytes(), principal("x"), 1000, 0);
            assert!(c.len() <= c.capacity());
        }
        assert_eq!(c.len(), c.capacity());
        // One set: a used entry gets a second chance over unused ones.
        let mut c: TokenCache = TokenCache::new(4, 1);
        for i in 0..4 {
            c.insert(0, &[i], principal("x"), 1000, 0);
        }
        assert!(c.get(0, &[0], 1).is_some());
        c.insert(0, &[9], principal("x"), 1000, 0);
        assert!(c.get(0, &[0], 1).is_some(), "referenced entry kept");
        assert!(c.get(0, &[9], 1).is_some());
        assert_eq!(c.len(), 4);
    }
}
