//! A bearer JWT checked in the module's fixed order (shape, header, key, signature, times,
//! audience, claims), each failure one reason; and `mint_hs256` for development tokens.

use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::super::jwt_ring;
use super::{audience_ok, lookup, numeric_date, principal_id, string_set};
use super::{AuthFailure, Authn, Principal, Source};
use crate::config::{Config, ServerAuth};

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
    pub(super) fn jwt(
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
