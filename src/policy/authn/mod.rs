//! Authentication: what the request presents (a bearer JWT, an API key, the verified client
//! certificate, or nothing on a loopback development endpoint) → a `Principal` or exactly one
//! `AuthFailure`. One `Authn` per worker, built from the `Config` of its generation (a reload
//! builds a new one): plain synchronous calls, interior mutability (`RefCell`/`Cell`), no locks.
//!
//! JWTs are checked in a fixed order, each failure mapping to one reason: shape and size, the
//! header (`alg` pinned for the issuer named by the unverified `iss`, and of the key's family,
//! before any cryptography), the key (`kid`), the signature, then `exp`/`nbf`/`iat` with the
//! issuer's leeway, `aud` against the endpoint's audience, and the configured claims. A verified
//! token is cached per (endpoint, token) until its `exp` (`cache`).
//!
//! Keys live in a per-issuer `KeySet` behind an `Rc`, initially the configured ones; the key
//! refresher (JWKS, discovery) replaces them per worker with `install_keys`.
//!
//! An opaque token (not JWT-shaped, or any token on an endpoint whose issuers have no keys) that
//! is not an API key of the endpoint cannot be decided here: `authenticate` answers
//! `Unresolved::Introspect`, the proxy asks the issuer's RFC 7662 endpoint and hands the answer
//! to `introspected`, which checks it (`introspection`) and caches the outcome: an active token
//! in the same cache as verified JWTs (until `exp`, at most `max_cache`), a refused one in the
//! negative cache for `negative_cache`.
//!
//! Files: `presented` (what a request shows), `keys` (an issuer's verifiers), `jwt` (the checks
//! in order), `claims` (claim readers shared with `introspection`), `mtls` (a certificate's
//! principal); `Authn`, its caches and API keys here.

mod cache;
mod claims;
pub mod introspection;
mod jwt;
mod keys;
mod mtls;
mod presented;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::jwt_ring;
use super::{AuthFailure, Principal, Source};
use crate::config::{Config, ServerAuth};

pub use cache::TokenCache;
pub(in crate::policy) use claims::audience_ok;
pub(crate) use claims::{lookup, numeric_date, string_set};
pub use jwt::mint_hs256;
pub use keys::KeySet;
use mtls::mtls_principal;
pub use presented::Presented;
use presented::{bearer, query_has_token, token68};

/// What `authenticate` could not settle by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unresolved {
    /// Refused (401).
    Failed(AuthFailure),
    /// An opaque token: ask `auth.issuers[issuer]`'s introspection endpoint, then `introspected`.
    Introspect { issuer: usize },
}

impl From<AuthFailure> for Unresolved {
    fn from(f: AuthFailure) -> Self {
        Unresolved::Failed(f)
    }
}

impl PartialEq<AuthFailure> for Unresolved {
    fn eq(&self, f: &AuthFailure) -> bool {
        *self == Unresolved::Failed(*f)
    }
}

/// One worker's authenticator.
pub struct Authn {
    /// Per `auth.issuers[i]`: its current keys.
    keys: RefCell<Vec<Rc<KeySet>>>,
    /// Per `auth.api_keys[i]`: the hash and the principal it authenticates.
    api_keys: Vec<([u8; 32], Rc<Principal>)>,
    development: Option<Rc<Principal>>,
    cache: RefCell<TokenCache>,
    /// Opaque tokens introspection refused (inactive, or active but not for here), for their
    /// issuer's `negative_cache`.
    negative: RefCell<TokenCache<AuthFailure>>,
    /// Token cache lookups that found a valid entry / did not.
    pub cache_hits: Cell<u64>,
    pub cache_misses: Cell<u64>,
    /// The hits and misses already counted in the metrics (`unpublished`).
    published: Cell<(u64, u64)>,
}

impl Authn {
    pub fn new(cfg: &Config) -> Authn {
        jwt_ring::install();
        let keys = cfg
            .auth
            .issuers
            .iter()
            .map(|i| Rc::new(KeySet::new(&i.algorithms, &i.keys)))
            .collect();
        let api_keys = cfg
            .auth
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let p = Principal {
                    source: Source::ApiKey { key: i as u16 },
                    subject: k.name.as_str().into(),
                    client: None,
                    tenant: k.tenant.as_deref().map(Into::into),
                    roles: boxed(&k.roles),
                    scopes: boxed(&k.scopes),
                    expires_at: None,
                    id: principal_id("api_key", &k.name, &k.name),
                };
                (k.sha256, Rc::new(p))
            })
            .collect();
        let development = cfg.auth.development.as_ref().map(|d| {
            Rc::new(Principal {
                source: Source::Development,
                subject: d.subject.as_str().into(),
                client: None,
                tenant: None,
                roles: boxed(&d.roles),
                scopes: Box::new([]),
                expires_at: None,
                id: principal_id("development", "", &d.subject),
            })
        });
        let mut seed = [0u8; 8];
        // A fixed seed only makes set-targeting easier, never a wrong hit.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        Authn {
            keys: RefCell::new(keys),
            api_keys,
            development,
            cache: RefCell::new(TokenCache::new(
                cfg.auth.token_cache_entries,
                u64::from_le_bytes(seed),
            )),
            negative: RefCell::new(TokenCache::new(
                cfg.auth.token_cache_entries,
                u64::from_le_bytes(seed).rotate_left(17),
            )),
            cache_hits: Cell::new(0),
            cache_misses: Cell::new(0),
            published: Cell::new((0, 0)),
        }
    }

    /// Replaces issuer `issuer`'s keys on this worker (a key fetcher's control message). Cached
    /// tokens are dropped: one may have been signed by a key that is gone.
    pub fn install_keys(&self, issuer: usize, keys: Rc<KeySet>) {
        if let Some(slot) = self.keys.borrow_mut().get_mut(issuer) {
            *slot = keys;
            self.cache.borrow_mut().clear();
        }
    }

    /// Token cache hits and misses since the last call (the worker adds them to its metrics
    /// on a timer, so the request path touches only these cells).
    pub fn unpublished(&self) -> (u64, u64) {
        let now = (self.cache_hits.get(), self.cache_misses.get());
        let before = self.published.replace(now);
        (now.0 - before.0, now.1 - before.1)
    }

    /// Live entries in the token cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.borrow().len()
    }

    /// Who the request is, for `cfg.servers[server]` (which must have `auth`; an endpoint
    /// without it is open and never asks). `now_unix`: the current time in Unix seconds.
    /// `Unresolved::Introspect`: an opaque token the caller must introspect (`introspected`).
    pub fn authenticate(
        &self,
        cfg: &Config,
        server: usize,
        req: &Presented<'_>,
        now_unix: u64,
    ) -> Result<Rc<Principal>, Unresolved> {
        let Some(sa) = cfg.servers.get(server).and_then(|s| s.auth.as_ref()) else {
            return Err(AuthFailure::Missing.into());
        };
        if req.query.is_some_and(query_has_token) {
            return Err(AuthFailure::InQuery.into());
        }
        let max = cfg.auth.max_token_bytes;
        if let Some(header) = req.authorization {
            let token = bearer(header, max)?;
            // A hit is byte-identical to a token that passed every check below when it was
            // cached, so the hit path skips them (they are passes over the whole token).
            if let Some(p) = self.cache.borrow_mut().get(server as u32, token, now_unix) {
                self.cache_hits.set(self.cache_hits.get() + 1);
                return Ok(p);
            }
            if !token68(token) {
                return Err(AuthFailure::Malformed.into());
            }
            let jwt_shaped = token.iter().filter(|&&b| b == b'.').count() == 2;
            let introspecting = introspecting_issuer(cfg, sa);
            // JWT-shaped tokens are verified when some issuer here has keys (algorithms); an
            // endpoint whose issuers only introspect sends every token to introspection.
            if jwt_shaped && (introspecting.is_none() || verifies_jwts(cfg, sa)) {
                return Ok(self.jwt(cfg, sa, server, token, now_unix)?);
            }
            let api = if sa.api_keys {
                match self.api_key(token) {
                    Ok(p) => return Ok(p),
                    Err(f) => f,
                }
            } else {
                AuthFailure::Malformed
            };
            let Some(issuer) = introspecting else {
                return Err(api.into());
            };
            self.cache_misses.set(self.cache_misses.get() + 1);
            if let Some(f) = self
                .negative
                .borrow_mut()
                .get(server as u32, token, now_unix)
            {
                return Err(f.into());
            }
            return Err(Unresolved::Introspect { issuer });
        }
        if let (Some(key), true) = (req.api_key, sa.api_keys) {
            if key.len() > max {
                return Err(AuthFailure::TooLarge.into());
            }
            return Ok(self.api_key(key)?);
        }
        if let (Some(peer), true) = (req.peer, sa.mtls) {
            return Ok(mtls_principal(cfg, peer).map(Rc::new)?);
        }
        if sa.development && req.loopback {
            if let Some(d) = &self.development {
                return Ok(d.clone());
            }
        }
        Err(AuthFailure::Missing.into())
    }

    /// What the caches say of `token` on `cfg.servers[server]` (a request that waited for
    /// another's introspection of the same token reads its outcome here).
    pub fn cached(
        &self,
        server: usize,
        token: &[u8],
        now: u64,
    ) -> Option<Result<Rc<Principal>, AuthFailure>> {
        if let Some(p) = self.cache.borrow_mut().get(server as u32, token, now) {
            return Some(Ok(p));
        }
        self.negative
            .borrow_mut()
            .get(server as u32, token, now)
            .map(Err)
    }

    /// The introspection endpoint's answer (`status`, `body`) for `token` on `cfg.servers[server]`,
    /// asked of `auth.issuers[issuer]` (what `authenticate` said): checked, and its outcome
    /// cached (an active token until min(`exp` + leeway, now + `max_cache`); a refused one for
    /// `negative_cache`; an answer that is not one, never).
    pub fn introspected(
        &self,
        cfg: &Config,
        server: usize,
        issuer: usize,
        token: &[u8],
        answer: Result<(u16, &[u8]), ()>,
        now: u64,
    ) -> Result<Rc<Principal>, AuthFailure> {
        let (Some(sa), Some(is)) = (
            cfg.servers.get(server).and_then(|s| s.auth.as_ref()),
            cfg.auth.issuers.get(issuer),
        ) else {
            return Err(AuthFailure::IntrospectionFailed);
        };
        let Some(conf) = is.introspection.as_deref() else {
            return Err(AuthFailure::IntrospectionFailed);
        };
        let (status, body) = answer.map_err(|()| AuthFailure::IntrospectionFailed)?;
        if status != 200 {
            return Err(AuthFailure::IntrospectionFailed);
        }
        match introspection::check(issuer, is, sa, body, now) {
            Ok(p) => {
                // Served while `now < until`: as long as `check` would accept it again (to
                // exp + leeway, inclusive), so a token admitted within the leeway is cached too.
                let until = p
                    .expires_at
                    .map_or(u64::MAX, |e| {
                        e.saturating_add(is.leeway.as_secs()).saturating_add(1)
                    })
                    .min(now.saturating_add(conf.max_cache.as_secs()));
                let p = Rc::new(p);
                self.cache
                    .borrow_mut()
                    .insert(server as u32, token, p.clone(), until, now);
                Ok(p)
            }
            Err(AuthFailure::IntrospectionFailed) => Err(AuthFailure::IntrospectionFailed),
            Err(f) => {
                let secs = conf.negative_cache.as_secs();
                if secs > 0 {
                    self.negative.borrow_mut().insert(
                        server as u32,
                        token,
                        f,
                        now.saturating_add(secs),
                        now,
                    );
                }
                Err(f)
            }
        }
    }

    fn api_key(&self, presented: &[u8]) -> Result<Rc<Principal>, AuthFailure> {
        let digest = ring::digest::digest(&ring::digest::SHA256, presented);
        let digest = digest.as_ref();
        // Every configured hash is compared in full, whichever matches.
        let mut found = None;
        for (hash, principal) in &self.api_keys {
            let diff = hash
                .iter()
                .zip(digest)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(principal);
            }
        }
        found.cloned().ok_or(AuthFailure::UnknownApiKey)
    }
}

/// `tollgate hash-key`: the lower-case hex SHA-256 of an API key (what `auth.api_keys[].sha256`
/// holds).
pub fn hash_key(key: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, key)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The issuer of endpoint `sa` that introspects opaque tokens (at most one, checked at load).
fn introspecting_issuer(cfg: &Config, sa: &ServerAuth) -> Option<usize> {
    sa.issuers.iter().copied().find(|&i| {
        cfg.auth
            .issuers
            .get(i)
            .is_some_and(|is| is.introspection.is_some())
    })
}

/// Whether some issuer of endpoint `sa` verifies JWTs (has pinned algorithms).
fn verifies_jwts(cfg: &Config, sa: &ServerAuth) -> bool {
    sa.issuers.iter().any(|&i| {
        cfg.auth
            .issuers
            .get(i)
            .is_some_and(|is| !is.algorithms.is_empty())
    })
}

fn boxed(list: &[String]) -> Box<[Box<str>]> {
    list.iter().map(|s| s.as_str().into()).collect()
}

/// SHA-256(source kind ‖ 0 ‖ issuer URL or key name ‖ 0 ‖ subject), first 16 bytes.
pub fn principal_id(kind: &str, scope: &str, subject: &str) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(kind.as_bytes());
    ctx.update(&[0]);
    ctx.update(scope.as_bytes());
    ctx.update(&[0]);
    ctx.update(subject.as_bytes());
    let d = ctx.finish();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d.as_ref()[..16]);
    id
}

#[cfg(test)]
mod tests;
