//! jsonwebtoken's signatures on ring: the `CryptoProvider` the process installs once
//! (`install`). jsonwebtoken parses and validates; this module only signs and verifies, for every
//! algorithm the gateway pins (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA).
//! A key of another family than the algorithm's is refused before any arithmetic (an HS256 token
//! can never be checked against an RSA public key's bytes as if they were a secret).

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature as sig;

/// Installs the ring provider for the process (idempotent: a second call, or one after another
/// provider was installed, changes nothing).
pub fn install() {
    let _ = PROVIDER.install_default();
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_private,
        rsa_pub_components_from_public_key: rsa_components_public,
        ec_pub_components_from_private_key: ec_components_private,
        ed_pub_components_from_private_key: ed_components_private,
        compute_digest: digest,
    },
};

fn family_error() -> Error {
    ErrorKind::InvalidKeyFormat.into()
}

/// What verifies one algorithm with one key.
enum Check {
    Hmac(ring::hmac::Key),
    Public(&'static dyn sig::VerificationAlgorithm, Vec<u8>),
    RsaParts(&'static sig::RsaParameters, Vec<u8>, Vec<u8>),
}

struct Verify {
    alg: Algorithm,
    check: Check,
}

impl signature::Verifier<Vec<u8>> for Verify {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let ok = match &self.check {
            Check::Hmac(k) => ring::hmac::verify(k, msg, signature).is_ok(),
            Check::Public(alg, key) => sig::UnparsedPublicKey::new(*alg, key)
                .verify(msg, signature)
                .is_ok(),
            Check::RsaParts(params, n, e) => sig::RsaPublicKeyComponents { n, e }
                .verify(params, msg, signature)
                .is_ok(),
        };
        if ok {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl JwtVerifier for Verify {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn hmac_alg(alg: Algorithm) -> Option<ring::hmac::Algorithm> {
    match alg {
        Algorithm::HS256 => Some(ring::hmac::HMAC_SHA256),
        Algorithm::HS384 => Some(ring::hmac::HMAC_SHA384),
        Algorithm::HS512 => Some(ring::hmac::HMAC_SHA512),
        _ => None,
    }
}

fn rsa_params(alg: Algorithm) -> Option<&'static sig::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let alg = *alg;
    if key.family() != alg.family() {
        return Err(family_error());
    }
    let check = match (alg.family(), key.kind()) {
        (AlgorithmFamily::Hmac, DecodingKeyKind::SecretOrDer(secret)) => {
            let a = hmac_alg(alg).ok_or_else(family_error)?;
            Check::Hmac(ring::hmac::Key::new(a, secret))
        }
        (AlgorithmFamily::Rsa, DecodingKeyKind::SecretOrDer(der)) => {
            let p = rsa_params(alg).ok_or_else(family_error)?;
            Check::Public(p, der.clone())
        }
        (AlgorithmFamily::Rsa, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            let p = rsa_params(alg).ok_or_else(family_error)?;
            Check::RsaParts(p, n.clone(), e.clone())
        }
        (AlgorithmFamily::Ec, DecodingKeyKind::SecretOrDer(point)) => {
            let a: &'static dyn sig::VerificationAlgorithm = match alg {
                Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
                Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
                _ => return Err(family_error()),
            };
            Check::Public(a, point.clone())
        }
        (AlgorithmFamily::Ed, DecodingKeyKind::SecretOrDer(point)) => {
            Check::Public(&sig::ED25519, point.clone())
        }
        _ => return Err(family_error()),
    };
    Ok(Box::new(Verify { alg, check }))
}

/// What signs (tokens the gateway mints for local use and tests).
enum Key {
    Hmac(ring::hmac::Key),
    Rsa(sig::RsaKeyPair, &'static dyn sig::RsaEncoding),
    Ec(sig::EcdsaKeyPair),
    Ed(sig::Ed25519KeyPair),
}

struct Sign {
    alg: Algorithm,
    key: Key,
}

impl signature::Signer<Vec<u8>> for Sign {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = ring::rand::SystemRandom::new();
        match &self.key {
            Key::Hmac(k) => Ok(ring::hmac::sign(k, msg).as_ref().to_vec()),
            Key::Rsa(pair, enc) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(*enc, &rng, msg, &mut out)
                    .map_err(|_| signature::Error::new())?;
                Ok(out)
            }
            Key::Ec(pair) => pair
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            Key::Ed(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for Sign {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    let alg = *alg;
    if key.family() != alg.family() {
        return Err(family_error());
    }
    let der = key.as_bytes();
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let a = hmac_alg(alg).ok_or_else(family_error)?;
            Key::Hmac(ring::hmac::Key::new(a, der))
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            let enc: &'static dyn sig::RsaEncoding = match alg {
                Algorithm::RS256 => &sig::RSA_PKCS1_SHA256,
                Algorithm::RS384 => &sig::RSA_PKCS1_SHA384,
                Algorithm::RS512 => &sig::RSA_PKCS1_SHA512,
                Algorithm::PS256 => &sig::RSA_PSS_SHA256,
                Algorithm::PS384 => &sig::RSA_PSS_SHA384,
                _ => &sig::RSA_PSS_SHA512,
            };
            let pair = sig::RsaKeyPair::from_der(der)
                .or_else(|_| sig::RsaKeyPair::from_pkcs8(der))
                .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
            Key::Rsa(pair, enc)
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let a = if alg == Algorithm::ES256 {
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &sig::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let rng = ring::rand::SystemRandom::new();
            Key::Ec(
                sig::EcdsaKeyPair::from_pkcs8(a, der, &rng)
                    .map_err(|_| ErrorKind::InvalidEcdsaKey)?,
            )
        }
        Algorithm::EdDSA => Key::Ed(
            sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|_| ErrorKind::InvalidEddsaKey)?,
        ),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(Sign { alg, key }))
}

fn rsa_components_private(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    use sig::KeyPair;
    let pair = sig::RsaKeyPair::from_der(der)
        .or_else(|_| sig::RsaKeyPair::from_pkcs8(der))
        .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    let c: sig::RsaPublicKeyComponents<Vec<u8>> = pair.public_key().into();
    Ok((c.n, c.e))
}

/// A DER RSAPublicKey (PKCS#1): SEQUENCE { modulus INTEGER, publicExponent INTEGER }.
fn rsa_components_public(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = b.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |a, &x| (a << 8) | usize::from(x));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let bad = || Error::from(ErrorKind::InvalidRsaKey("not an RSA public key".into()));
    let (tag, seq, _) = tlv(der).ok_or_else(bad)?;
    if tag != 0x30 {
        return Err(bad());
    }
    let (t1, n, rest) = tlv(seq).ok_or_else(bad)?;
    let (t2, e, _) = tlv(rest).ok_or_else(bad)?;
    if t1 != 2 || t2 != 2 {
        return Err(bad());
    }
    let strip = |x: &[u8]| {
        let i = x.iter().position(|&b| b != 0).unwrap_or(x.len());
        x[i..].to_vec()
    };
    Ok((strip(n), strip(e)))
}

fn ec_components_private(
    der: &[u8],
    alg: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>), Error> {
    use sig::KeyPair;
    let (a, curve, half) = match alg {
        Algorithm::ES256 => (
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            EllipticCurve::P256,
            32,
        ),
        Algorithm::ES384 => (
            &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            EllipticCurve::P384,
            48,
        ),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let rng = ring::rand::SystemRandom::new();
    let pair =
        sig::EcdsaKeyPair::from_pkcs8(a, der, &rng).map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    let point = pair.public_key().as_ref();
    if point.first() != Some(&4) || point.len() != 1 + 2 * half {
        return Err(ErrorKind::InvalidEcdsaKey.into());
    }
    let (x, y) = point[1..].split_at(half);
    Ok((curve, x.to_vec(), y.to_vec()))
}

fn ed_components_private(der: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>, Error> {
    use sig::KeyPair;
    match curve {
        EllipticCurve::Ed25519 => Ok(sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| ErrorKind::InvalidEddsaKey)?
            .public_key()
            .as_ref()
            .to_vec()),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn digest(data: &[u8], h: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let a = match h {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(ring::digest::digest(a, data).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, encode, Header, Validation};

    fn claims() -> serde_json::Value {
        serde_json::json!({"sub": "alice", "exp": 4_000_000_000u64, "aud": "a", "iss": "i"})
    }

    fn validation(alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_audience(&["a"]);
        v.set_issuer(&["i"]);
        v
    }

    fn round_trip(alg: Algorithm, enc: &EncodingKey, dec: &DecodingKey) {
        install();
        let t = encode(&Header::new(alg), &claims(), enc).unwrap();
        let d = decode::<serde_json::Value>(&t, dec, &validation(alg)).unwrap();
        assert_eq!(d.claims["sub"], "alice", "{alg:?}");
        // One flipped signature byte fails.
        let mut bad = t.into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert!(
            decode::<serde_json::Value>(&bad, dec, &validation(alg)).is_err(),
            "{alg:?}"
        );
    }

    #[test]
    fn every_pinned_family_signs_and_verifies_on_ring() {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            round_trip(
                alg,
                &EncodingKey::from_secret(b"s3cret"),
                &DecodingKey::from_secret(b"s3cret"),
            );
        }
        let rng = ring::rand::SystemRandom::new();
        for (alg, a) in [
            (Algorithm::ES256, &sig::ECDSA_P256_SHA256_FIXED_SIGNING),
            (Algorithm::ES384, &sig::ECDSA_P384_SHA384_FIXED_SIGNING),
        ] {
            let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(a, &rng).unwrap();
            let (_, x, y) = ec_components_private(pkcs8.as_ref(), alg).unwrap();
            let b64 = |v: &[u8]| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
            };
            let dec = DecodingKey::from_ec_components(&b64(&x), &b64(&y)).unwrap();
            round_trip(alg, &EncodingKey::from_ec_der(pkcs8.as_ref()), &dec);
        }
        let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let public = ed_components_private(pkcs8.as_ref(), &EllipticCurve::Ed25519).unwrap();
        round_trip(
            Algorithm::EdDSA,
            &EncodingKey::from_ed_der(pkcs8.as_ref()),
            &DecodingKey::from_ed_der(&public),
        );
    }

    #[test]
    fn a_key_of_another_family_is_refused_before_any_arithmetic() {
        install();
        let t = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"x"),
        )
        .unwrap();
        let rsa = DecodingKey::from_rsa_components("AQAB", "AQAB").unwrap();
        let err = decode::<serde_json::Value>(&t, &rsa, &validation(Algorithm::HS256)).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidKeyFormat);
    }

    #[test]
    fn pkcs1_rsa_public_keys_are_read() {
        // SEQUENCE { INTEGER 0x00c3, INTEGER 0x010001 }
        let der = [
            0x30, 0x09, 0x02, 0x02, 0x00, 0xc3, 0x02, 0x03, 0x01, 0x00, 0x01,
        ];
        let (n, e) = rsa_components_public(&der).unwrap();
        assert_eq!((n, e), (vec![0xc3], vec![1, 0, 1]));
        assert!(rsa_components_public(&[0x31, 0]).is_err());
    }
}
