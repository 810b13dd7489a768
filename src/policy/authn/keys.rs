//! An issuer's verification keys: a verifier per key and pinned algorithm of its family, and
//! the choice of one by a token's `alg` and `kid`.

use jsonwebtoken::Algorithm;

use super::super::jwt_ring::{self, RingVerifier};
use super::AuthFailure;
use crate::config::auth::IssuerKey;

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
    pub(super) fn pick(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<&RingVerifier, AuthFailure> {
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
