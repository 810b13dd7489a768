//! Issuer key material: pinned algorithms, shared secrets and key files (PEM, JWK, JWK set),
//! read and decoded at load so a bad key is a problem at its path.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_yaml_ng::Value;

use super::super::extract::string;
use super::super::formats;
use crate::config::auth::*;

pub(super) fn algorithm(v: &Value) -> Result<Algorithm, String> {
    let s = string(v)?;
    if s.eq_ignore_ascii_case("none") {
        return Err("`none` (unsigned tokens) is never accepted".into());
    }
    s.parse::<Algorithm>().map_err(|_| {
        format!(
            "{s:?}: expected one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, \
             PS512, ES256, ES384, EdDSA"
        )
    })
}

pub(super) fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Hmac => "an HMAC secret",
        AlgorithmFamily::Rsa => "an RSA key",
        AlgorithmFamily::Ec => "an EC key",
        AlgorithmFamily::Ed => "an Ed25519 key",
    }
}

/// The secret's bytes (`${env:}`/`${file:}` like upstream header values, or a literal).
pub(super) fn secret(
    written: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<u8>, String), String> {
    use formats::WrittenHeader;
    let (bytes, shown) = match formats::header_reference(written)? {
        WrittenHeader::Literal(v) => (v.into_bytes(), "<redacted>".to_string()),
        WrittenHeader::Env(name) => {
            let v = env(&name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            (v.into_bytes(), format!("${{env:{name}}}"))
        }
        WrittenHeader::File(path) => {
            let text = std::fs::read(&path).map_err(|e| format!("cannot read file {path}: {e}"))?;
            let mut v = text.as_slice();
            v = v.strip_suffix(b"\n").unwrap_or(v);
            v = v.strip_suffix(b"\r").unwrap_or(v);
            (v.to_vec(), format!("${{file:{path}}}"))
        }
    };
    if bytes.len() < 32 {
        return Err(format!(
            "the secret is {} bytes; HMAC secrets must be at least 32 bytes (256 bits)",
            bytes.len()
        ));
    }
    Ok((bytes, shown))
}

/// The keys in one file: a PEM public key, a JWK or a JWK set.
pub(super) fn key_file(path: &str) -> Result<Vec<IssuerKey>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let trimmed = text.trim_ascii_start();
    if trimmed.starts_with(b"{") {
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| format!("{path}: not JSON: {e}"))?;
        let jwks: Vec<Jwk> = if value.get("keys").is_some() {
            serde_json::from_value::<JwkSet>(value)
                .map_err(|e| format!("{path}: not a JWK set: {e}"))?
                .keys
        } else {
            vec![serde_json::from_value::<Jwk>(value)
                .map_err(|e| format!("{path}: not a JWK: {e}"))?]
        };
        let mut out = Vec::with_capacity(jwks.len());
        for (i, jwk) in jwks.iter().enumerate() {
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| format!("{path}: key {i}: not a usable public key: {e}"))?;
            out.push(IssuerKey {
                kid: jwk.common.key_id.clone(),
                key,
                from: format!("{path}#{i}"),
            });
        }
        if out.is_empty() {
            return Err(format!("{path}: the JWK set has no keys"));
        }
        return Ok(out);
    }
    if text.windows(7).any(|w| w == b"PRIVATE") {
        return Err(format!(
            "{path}: is a private key; give the issuer's public key (never a private key)"
        ));
    }
    let key = DecodingKey::from_rsa_pem(&text)
        .or_else(|_| DecodingKey::from_ec_pem(&text))
        .or_else(|_| DecodingKey::from_ed_pem(&text))
        .map_err(|_| {
            format!("{path}: not a PEM public key (RSA, EC or Ed25519), a JWK or a JWK set")
        })?;
    Ok(vec![IssuerKey {
        kid: None,
        key,
        from: path.to_string(),
    }])
}
