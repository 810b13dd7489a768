//! The demo server's sessions: a sharded set shared by every worker thread, keyed by the random
//! `Mcp-Session-Id`. Each entry keeps the negotiated revision and whether a GET stream is open.
//! Bounded: a full shard forgets an arbitrary session (its client gets 404 and re-initializes).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use crate::mcp::ProtocolVersion;

const SHARDS: usize = 16;
/// Sessions kept per shard before an arbitrary one is forgotten.
const PER_SHARD: usize = 1 << 16;

struct Entry {
    version: ProtocolVersion,
    get_stream: bool,
}

pub struct Sessions {
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<Box<str>, Entry>>>,
}

/// The outcome of asking for a session's GET stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    Granted(ProtocolVersion),
    Busy,
    Unknown,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

impl Sessions {
    pub fn new() -> Self {
        Sessions {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, id: &str) -> MutexGuard<'_, HashMap<Box<str>, Entry>> {
        let i = (self.hasher.hash_one(id) as usize) % SHARDS;
        // A poisoned shard still holds a consistent map: every critical section is one map call.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session at `version` and returns its new id.
    pub fn create(&self, version: ProtocolVersion) -> String {
        let id = new_id();
        let mut shard = self.shard(&id);
        if shard.len() >= PER_SHARD {
            if let Some(victim) = shard.keys().next().cloned() {
                shard.remove(&victim);
            }
        }
        shard.insert(
            id.as_str().into(),
            Entry {
                version,
                get_stream: false,
            },
        );
        id
    }

    pub fn version(&self, id: &str) -> Option<ProtocolVersion> {
        self.shard(id).get(id).map(|e| e.version)
    }

    /// Ends a session; false if it was not known.
    pub fn remove(&self, id: &str) -> bool {
        self.shard(id).remove(id).is_some()
    }

    /// Takes the session's one GET stream.
    pub fn claim_stream(&self, id: &str) -> Claim {
        match self.shard(id).get_mut(id) {
            None => Claim::Unknown,
            Some(e) if e.get_stream => Claim::Busy,
            Some(e) => {
                e.get_stream = true;
                Claim::Granted(e.version)
            }
        }
    }

    pub fn release_stream(&self, id: &str) {
        if let Some(e) = self.shard(id).get_mut(id) {
            e.get_stream = false;
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        (0..SHARDS)
            .map(|i| {
                self.shards[i]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .len()
            })
            .sum()
    }
}

/// 128 random bits as 32 lowercase hex characters (visible ASCII, unguessable).
fn new_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // The OS RNG does not fail on Linux after boot; if it ever does, still hand out a
        // unique id (this is a test fixture, not an authentication boundary).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as u128;
        bytes = (t ^ (n << 64) ^ n).to_le_bytes();
    }
    let mut s = String::with_capacity(32);
    for b in bytes {
        s.push(char::from(HEX[(b >> 4) as usize]));
        s.push(char::from(HEX[(b & 15) as usize]));
    }
    s
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let s = Sessions::new();
        let a = s.create(ProtocolVersion::V2025_03_26);
        let b = s.create(ProtocolVersion::V2025_11_25);
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(s.version(&a), Some(ProtocolVersion::V2025_03_26));
        assert_eq!(
            s.claim_stream(&b),
            Claim::Granted(ProtocolVersion::V2025_11_25)
        );
        assert_eq!(s.claim_stream(&b), Claim::Busy);
        s.release_stream(&b);
        assert_eq!(
            s.claim_stream(&b),
            Claim::Granted(ProtocolVersion::V2025_11_25)
        );
        assert!(s.remove(&a));
        assert!(!s.remove(&a));
        assert_eq!(s.version(&a), None);
        assert_eq!(s.claim_stream(&a), Claim::Unknown);
        assert_eq!(s.len(), 1);
    }
}
