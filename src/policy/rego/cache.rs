//! A worker's cache of cacheable Rego decisions, keyed by (principal id, server, method, tool)
//! and what the principal carries (roles, scopes, tenant, client): a new token of the same
//! subject with other roles is decided again, never served the old decision.
//! Bounded (`cache_entries`); an entry lives until min(now + `cache_ttl`, the principal's
//! `expires_at`). A lookup hashes the borrowed key parts and compares them with the stored
//! ones, so a hit allocates nothing but the decision's clone.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::Duration;

use super::{RegoDecision, RegoInput};

struct Entry {
    principal: [u8; 16],
    /// A keyed hash of the principal's roles, scopes, tenant and client (`DecisionCache::attrs`).
    attrs: u64,
    server: Box<str>,
    method: Box<str>,
    tool: Option<Box<str>>,
    decision: RegoDecision,
    /// Unix seconds: valid while `now < expires`.
    expires: u64,
}

impl Entry {
    fn is_for(&self, i: &RegoInput, attrs: u64) -> bool {
        self.principal == i.principal.id
            && self.attrs == attrs
            && *self.server == *i.server
            && *self.method == *i.method
            && self.tool.as_deref() == i.tool
    }
}

pub(super) struct DecisionCache {
    /// By the key's hash (SipHash with a per-cache random key: a client cannot aim collisions).
    /// Two keys with one hash share the slot: the later insert replaces the earlier.
    /// The map itself only needs a fast hasher: its keys are already SipHash outputs.
    entries: HashMap<u64, Entry, foldhash::fast::RandomState>,
    hasher: RandomState,
    capacity: usize,
    ttl_secs: u64,
}

impl DecisionCache {
    /// `capacity` 0 turns caching off. The TTL counts in whole seconds (at least 1).
    pub(super) fn new(capacity: usize, ttl: Duration) -> Self {
        DecisionCache {
            entries: HashMap::default(),
            hasher: RandomState::new(),
            capacity,
            ttl_secs: ttl.as_secs().max(1),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// What the principal carries that a policy may decide on besides its id.
    fn attrs(&self, i: &RegoInput) -> u64 {
        let mut h = self.hasher.build_hasher();
        let p = i.principal;
        for list in [&p.roles, &p.scopes] {
            h.write_usize(list.len());
            for x in list.iter() {
                h.write_usize(x.len());
                h.write(x.as_bytes());
            }
        }
        for x in [p.tenant.as_deref(), p.client.as_deref()] {
            match x {
                Some(v) => {
                    h.write_u8(1);
                    h.write_usize(v.len());
                    h.write(v.as_bytes());
                }
                None => h.write_u8(0),
            }
        }
        h.finish()
    }

    fn key(&self, i: &RegoInput, attrs: u64) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(&i.principal.id);
        h.write_u64(attrs);
        // Lengths first, so ("ab", "c") and ("a", "bc") hash apart.
        h.write_usize(i.server.len());
        h.write(i.server.as_bytes());
        h.write_usize(i.method.len());
        h.write(i.method.as_bytes());
        match i.tool {
            Some(t) => {
                h.write_u8(1);
                h.write(t.as_bytes());
            }
            None => h.write_u8(0),
        }
        h.finish()
    }

    /// The cached decision for `i`, if there is one that has not expired at `i.time_unix`.
    pub(super) fn get(&mut self, i: &RegoInput) -> Option<RegoDecision> {
        if self.capacity == 0 {
            return None;
        }
        let attrs = self.attrs(i);
        let key = self.key(i, attrs);
        let e = self.entries.get(&key)?;
        if !e.is_for(i, attrs) {
            return None;
        }
        if i.time_unix >= e.expires {
            self.entries.remove(&key);
            return None;
        }
        Some(e.decision.clone())
    }

    /// Keeps `d` for `i`'s key. When full: expired entries go first, then the one that expires
    /// soonest (a scan of at most `capacity` entries, on a path that just ran the policy).
    pub(super) fn insert(&mut self, i: &RegoInput, d: &RegoDecision) {
        if self.capacity == 0 {
            return;
        }
        let now = i.time_unix;
        let mut expires = now.saturating_add(self.ttl_secs);
        if let Some(exp) = i.principal.expires_at {
            expires = expires.min(exp);
        }
        if expires <= now {
            return;
        }
        let attrs = self.attrs(i);
        let key = self.key(i, attrs);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.capacity {
                if let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| *k)
                {
                    self.entries.remove(&soonest);
                }
            }
        }
        self.entries.insert(
            key,
            Entry {
                principal: i.principal.id,
                attrs,
                server: i.server.into(),
                method: i.method.into(),
                tool: i.tool.map(Into::into),
                decision: d.clone(),
                expires,
            },
        );
    }
}
