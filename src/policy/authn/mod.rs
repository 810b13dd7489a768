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

mod cache;
pub mod introspection;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::jwt_ring::{self, RingVerifier};
use super::{AuthFailure, Principal, Source};
use crate::config::auth::{ClaimPath, IssuerKey, MtlsSubject};
use crate::config::{Config, ServerAuth};
use crate::tls::PeerIdentity;

pub use cache::TokenCache;

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

/// What one request presents, as the proxy read it from the head and the connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Presented<'a> {
    /// The `Authorization` header's value.
    pub authorization: Option<&'a [u8]>,
    /// The `X-API-Key` header's value.
    pub api_key: Option<&'a [u8]>,
    /// The request target's query (after `?`), to refuse `access_token=`.
    pub query: Option<&'a [u8]>,
    /// The verified client certificate of an mTLS connection.
    pub peer: Option<&'a PeerIdentity>,
    /// The client's address is loopback.
    pub loopback: bool,
}

/// The verification keys of one issuer, each with a verifier per pinned algorithm of its family.
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

struct VerifyKey {
    kid: Option<Box<str>>,
    verifiers: Vec<RingVerifier>,
}

impl KeySet {
    /// Keys usable with `algorithms` (a key of a family no pinned algorithm has is left out).
    pub fn new(algorithms: &[Algorithm], keys: &[IssuerKey]) -> KeySet {
        let keys = keys
            .iter()
            .filter_map(|k| {
                let verifiers: Vec<RingVerifier> = algorithms
                    .iter()
                    .filter(|a| jwt_ring::key_can(**a, &k.key))
                    .filter_map(|a| jwt_ring::verifier(*a, &k.key).ok())
                    .collect();
                (!verifiers.is_empty()).then(|| VerifyKey {
                    kid: k.kid.as_deref().map(Into::into),
                    verifiers,
                })
            })
            .collect();
        KeySet { keys }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The verifier for a token's `alg` and `kid`.
    fn pick(&self, alg: Algorithm, kid: Option<&str>) -> Result<&RingVerifier, AuthFailure> {
        if self.keys.is_empty() {
            return Err(AuthFailure::KeysUnavailable);
        }
        let verifier_of = |k: &'_ VerifyKey| {
            k.verifiers
                .iter()
                .position(|v| jsonwebtoken::crypto::JwtVerifier::algorithm(v) == alg)
        };
        match kid {
            Some(kid) => {
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or(AuthFailure::UnknownKey)?;
                // The kid's key cannot do this algorithm (HS256 over an RSA key).
                let i = verifier_of(key).ok_or(AuthFailure::AlgorithmNotAllowed)?;
                Ok(&key.verifiers[i])
            }
            None => {
                let mut able = self
                    .keys
                    .iter()
                    .filter_map(|k| verifier_of(k).map(|i| &k.verifiers[i]));
                match (able.next(), able.next()) {
                    (Some(only), None) => Ok(only),
                    // Several keys and no kid to choose by.
                    (Some(_), Some(_)) => Err(AuthFailure::UnknownKey),
                    (None, _) => Err(AuthFailure::AlgorithmNotAllowed),
                }
            }
        }
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

#[derive(serde::Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Critical extensions (RFC 7515 §4.1.11): none is understood, so any is refused.
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
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

    fn jwt(
        &self,
        cfg: &Config,
        sa: &ServerAuth,
        server: usize,
        token: &[u8],
        now: u64,
    ) -> Result<Rc<Principal>, AuthFailure> {
        self.cache_misses.set(self.cache_misses.get() + 1);
        let principal = Rc::new(self.verify(cfg, sa, token, now)?);
        if let Some(exp) = principal.expires_at {
            self.cache
                .borrow_mut()
                .insert(server as u32, token, principal.clone(), exp, now);
        }
        Ok(principal)
    }

    /// The full check of a JWT on `cfg.servers[server]`, bypassing the cache (the bench's cold
    /// path; `authenticate` is what the gateway calls).
    #[doc(hidden)]
    pub fn verify_uncached(
        &self,
        cfg: &Config,
        server: usize,
        token: &[u8],
        now: u64,
    ) -> Result<Principal, AuthFailure> {
        let sa = cfg
            .servers
            .get(server)
            .and_then(|s| s.auth.as_ref())
            .ok_or(AuthFailure::Missing)?;
        self.verify(cfg, sa, token, now)
    }

    /// The full check of a JWT (no cache).
    fn verify(
        &self,
        cfg: &Config,
        sa: &ServerAuth,
        token: &[u8],
        now: u64,
    ) -> Result<Principal, AuthFailure> {
        use AuthFailure::*;
        let mut parts = token.splitn(3, |&b| b == b'.');
        let (Some(h64), Some(c64), Some(s64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Malformed);
        };
        let signed = &token[..h64.len() + 1 + c64.len()];
        let header_json = URL_SAFE_NO_PAD.decode(h64).map_err(|_| Malformed)?;
        let header: JoseHeader = serde_json::from_slice(&header_json).map_err(|_| Malformed)?;
        if header.crit.is_some() {
            return Err(Malformed);
        }
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(AlgorithmNotAllowed);
        }
        let alg: Algorithm = header.alg.parse().map_err(|_| AlgorithmNotAllowed)?;
        let claims_json = URL_SAFE_NO_PAD.decode(c64).map_err(|_| Malformed)?;
        let claims: Value = serde_json::from_slice(&claims_json).map_err(|_| Malformed)?;
        if !claims.is_object() {
            return Err(Malformed);
        }
        let signature = URL_SAFE_NO_PAD.decode(s64).map_err(|_| Malformed)?;

        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(WrongIssuer)?;
        let (index, issuer) = sa
            .issuers
            .iter()
            .filter_map(|&i| cfg.auth.issuers.get(i).map(|is| (i, is)))
            .find(|(_, is)| is.issuer == iss)
            .ok_or(WrongIssuer)?;
        if !issuer.algorithms.contains(&alg) {
            return Err(AlgorithmNotAllowed);
        }
        let keys = self
            .keys
            .borrow()
            .get(index)
            .cloned()
            .ok_or(KeysUnavailable)?;
        let verifier = keys.pick(alg, header.kid.as_deref())?;
        if !verifier.check(signed, &signature) {
            return Err(BadSignature);
        }

        let leeway = issuer.leeway.as_secs();
        let exp = claims.get("exp").and_then(numeric_date).ok_or(Expired)?;
        if now > exp.saturating_add(leeway) {
            return Err(Expired);
        }
        for claim in ["nbf", "iat"] {
            match claims.get(claim) {
                None => {}
                Some(v) => match numeric_date(v) {
                    Some(t) if t > now.saturating_add(leeway) => return Err(NotYetValid),
                    Some(_) => {}
                    None => return Err(BadClaims),
                },
            }
        }
        if !audience_ok(claims.get("aud"), issuer, sa) {
            return Err(WrongAudience);
        }

        let paths = &issuer.claims;
        let subject = match lookup(&claims, &paths.subject) {
            Some(Value::String(s)) if !s.is_empty() => s.as_str(),
            _ => return Err(BadClaims),
        };
        let client = match paths.client.as_ref().and_then(|p| lookup(&claims, p)) {
            None => claims.get("azp").and_then(Value::as_str),
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(BadClaims),
        };
        let tenant = match paths.tenant.as_ref().and_then(|p| lookup(&claims, p)) {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(BadClaims),
        };
        let roles = string_set(paths.roles.as_ref().and_then(|p| lookup(&claims, p)))?;
        let scope_claim = paths.scopes.as_ref().and_then(|p| lookup(&claims, p));
        // `scp` (a list) is the other common spelling when `scope` is read and absent.
        let scope_claim = match scope_claim {
            None if paths.scopes.as_ref().is_some_and(|p| p.0 == ["scope"]) => claims.get("scp"),
            other => other,
        };
        let scopes = string_set(scope_claim)?;
        Ok(Principal {
            source: Source::Jwt {
                issuer: index as u16,
            },
            subject: subject.into(),
            client: client.map(Into::into),
            tenant: tenant.map(Into::into),
            roles,
            scopes,
            expires_at: Some(exp),
            id: principal_id("jwt", &issuer.issuer, subject),
        })
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

/// `tollgate mint-token`: an HS256 JWT for development and tests (`iat` now, `exp` after `ttl`).
pub fn mint_hs256(
    secret: &[u8],
    iss: &str,
    aud: &str,
    sub: &str,
    roles: &[String],
    ttl_secs: u64,
    now: u64,
) -> Result<String, String> {
    jwt_ring::install();
    let claims = serde_json::json!({
        "iss": iss, "aud": aud, "sub": sub, "roles": roles,
        "iat": now, "exp": now.saturating_add(ttl_secs),
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
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

/// A NumericDate: seconds since the epoch, possibly fractional (rounded down).
pub(crate) fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// Whether `aud` (a string or a list of them) names the endpoint's resource, or one of the
/// issuer's `audience` when it has them. Absent or of another shape: it does not.
pub(super) fn audience_ok(
    aud: Option<&Value>,
    issuer: &crate::config::auth::Issuer,
    sa: &ServerAuth,
) -> bool {
    let resource = std::slice::from_ref(&sa.resource);
    let audiences = issuer.audience.as_deref().unwrap_or(resource);
    match aud {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| audiences.iter().any(|x| x == a)),
        _ => false,
    }
}

pub(crate) fn lookup<'v>(claims: &'v Value, path: &ClaimPath) -> Option<&'v Value> {
    path.0.iter().try_fold(claims, |v, key| v.get(key.as_str()))
}

/// An array of strings or one space-separated string; absent or null = none.
pub(crate) fn string_set(v: Option<&Value>) -> Result<Box<[Box<str>]>, AuthFailure> {
    match v {
        None | Some(Value::Null) => Ok(Box::new([])),
        Some(Value::String(s)) => Ok(s
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(Into::into)
            .collect()),
        Some(Value::Array(list)) => list
            .iter()
            .map(|x| x.as_str().map(Into::into).ok_or(AuthFailure::BadClaims))
            .collect(),
        Some(_) => Err(AuthFailure::BadClaims),
    }
}

/// `access_token=` as a parameter of the query (RFC 6750 §2.3: refused).
fn query_has_token(query: &[u8]) -> bool {
    query.split(|&b| b == b'&' || b == b';').any(|param| {
        param.len() >= 13 && param[..13].eq_ignore_ascii_case(b"access_token=")
            || param.eq_ignore_ascii_case(b"access_token")
    })
}

/// The credential of `Bearer <credential>` (scheme case-insensitive, one or more spaces), at
/// most `max` bytes; its syntax is `token68`'s to check.
fn bearer(header: &[u8], max: usize) -> Result<&[u8], AuthFailure> {
    let header = header.trim_ascii();
    if header.len() < 7 || !header[..7].eq_ignore_ascii_case(b"bearer ") {
        return Err(AuthFailure::Malformed);
    }
    let token = header[7..].trim_ascii_start();
    if token.len() > max {
        return Err(AuthFailure::TooLarge);
    }
    if token.is_empty() {
        return Err(AuthFailure::Malformed);
    }
    Ok(token)
}

/// RFC 7235 `token68`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn token68(token: &[u8]) -> bool {
    let body = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    body > 0
        && token[..body].iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// The principal of a verified client certificate (`auth.mtls`).
fn mtls_principal(cfg: &Config, peer: &PeerIdentity) -> Result<Principal, AuthFailure> {
    let m = &cfg.auth.mtls;
    let san = |prefix: &str| {
        peer.sans
            .iter()
            .find_map(|s| s.strip_prefix(prefix))
            .map(str::to_string)
    };
    let subject = match m.subject {
        MtlsSubject::Subject => Some(peer.subject.clone()),
        MtlsSubject::SanUri => san("URI:"),
        MtlsSubject::SanDns => san("DNS:"),
        MtlsSubject::SanEmail => san("email:"),
        MtlsSubject::Cn => common_name(&peer.subject),
    }
    .filter(|s| !s.is_empty())
    .ok_or(AuthFailure::BadClaims)?;
    let mapped = m.principals.iter().find(|p| p.subject == subject);
    Ok(Principal {
        source: Source::Mtls,
        id: principal_id("mtls", "", &subject),
        client: None,
        tenant: mapped.and_then(|p| p.tenant.as_deref()).map(Into::into),
        roles: mapped.map_or_else(|| Box::new([]) as Box<[Box<str>]>, |p| boxed(&p.roles)),
        scopes: Box::new([]),
        expires_at: None,
        subject: subject.into(),
    })
}

/// The first `CN=` of an RFC 4514 string (escaped commas kept).
fn common_name(subject: &str) -> Option<String> {
    let mut rdns = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for ch in subject.chars() {
        if escaped {
            cur.push(ch);
            escaped = false;
        } else if ch == '\\' {
            escaped = true;
        } else if ch == ',' || ch == '+' {
            rdns.push(std::mem::take(&mut cur));
        } else {
            cur.push(ch);
        }
    }
    rdns.push(cur);
    rdns.into_iter()
        .find_map(|r| r.strip_prefix("CN=").map(str::to_string))
}

#[cfg(test)]
mod tests;
