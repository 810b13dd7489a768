//! A `jsonwebtoken` [`CryptoProvider`] on `ring`: the crate ships providers for aws-lc (which we
//! do not build: rustls here runs on ring) and RustCrypto (whose RSA is several times slower than
//! ring's). One signer type and one verifier type cover every algorithm: the key is parsed once
//! when the signer/verifier is made (not on every signature), and the algorithm picks the ring
//! primitive.
//!
//! `install()` makes this the process default (idempotent); `verifier()` builds a verifier
//! without going through the process default, which is what `policy::authn` keeps per key.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind, Result};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair as _, VerificationAlgorithm};
use ring::{digest, hmac};

/// The provider: `install()` registers it.
pub static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_of_private,
        rsa_pub_components_from_public_key: rsa_components_of_public,
        ec_pub_components_from_private_key: ec_components_of_private,
        ed_pub_components_from_private_key: ed_component_of_private,
        compute_digest,
    },
};

/// Makes [`PROVIDER`] the process-wide default of `jsonwebtoken` (for `encode`/`decode`). Safe to
/// call any number of times from any thread; a different provider installed first is left alone
/// (and reported: `false`).
pub fn install() -> bool {
    match PROVIDER.install_default() {
        Ok(()) => true,
        Err(existing) => std::ptr::eq(existing, &PROVIDER),
    }
}

/// The algorithm family (`AlgorithmFamily` is what `DecodingKey`s carry).
pub fn family(alg: Algorithm) -> AlgorithmFamily {
    alg.family()
}

fn key_error(kind: AlgorithmFamily) -> Error {
    match kind {
        AlgorithmFamily::Rsa => ErrorKind::InvalidRsaKey("ring rejected the RSA key".into()).into(),
        AlgorithmFamily::Ec => ErrorKind::InvalidEcdsaKey.into(),
        AlgorithmFamily::Ed => ErrorKind::InvalidEddsaKey.into(),
        _ => ErrorKind::InvalidKeyFormat.into(),
    }
}

/// What a verifier checks with.
enum Check {
    Hmac(hmac::Key),
    /// A public key in the encoding `ring` parses per call (RSA PKCS#1 DER, an uncompressed EC
    /// point, 32 Ed25519 bytes).
    Public(&'static dyn VerificationAlgorithm, Box<[u8]>),
    /// An RSA key given as modulus and exponent (a JWK).
    RsaParts(&'static sig::RsaParameters, Box<[u8]>, Box<[u8]>),
}

/// Verifies one algorithm with one key.
pub struct RingVerifier {
    alg: Algorithm,
    check: Check,
}

impl RingVerifier {
    /// Checks `signature` (raw bytes, already base64url-decoded) over `message`.
    pub fn check(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.check {
            Check::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            Check::Public(alg, key) => sig::UnparsedPublicKey::new(*alg, key)
                .verify(message, signature)
                .is_ok(),
            Check::RsaParts(params, n, e) => sig::RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok(),
        }
    }
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        if self.check(msg, signature) {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn rsa_verification(alg: Algorithm) -> &'static sig::RsaParameters {
    match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        _ => &sig::RSA_PSS_2048_8192_SHA512,
    }
}

/// Whether `key` can verify `alg`: the same family, and for ECDSA the curve (a P-256 point is
/// 65 bytes uncompressed, a P-384 one 97).
pub fn key_can(alg: Algorithm, key: &DecodingKey) -> bool {
    if key.family() != alg.family() {
        return false;
    }
    match (alg, key.kind()) {
        (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => point.len() == 65,
        (Algorithm::ES384, DecodingKeyKind::SecretOrDer(point)) => point.len() == 97,
        _ => true,
    }
}

/// A verifier of `alg` with `key`; an error when the key's family is not the algorithm's (an
/// HMAC algorithm over an RSA public key is refused here, whatever the bytes are).
pub fn verifier(alg: Algorithm, key: &DecodingKey) -> Result<RingVerifier> {
    if !key_can(alg, key) {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let check = match (alg.family(), key.kind()) {
        (AlgorithmFamily::Hmac, DecodingKeyKind::SecretOrDer(secret)) => {
            let algorithm = match alg {
                Algorithm::HS256 => hmac::HMAC_SHA256,
                Algorithm::HS384 => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            Check::Hmac(hmac::Key::new(algorithm, secret))
        }
        (AlgorithmFamily::Rsa, DecodingKeyKind::SecretOrDer(der)) => {
            Check::Public(rsa_verification(alg), der.clone().into_boxed_slice())
        }
        (AlgorithmFamily::Rsa, DecodingKeyKind::RsaModulusExponent { n, e }) => Check::RsaParts(
            rsa_verification(alg),
            n.clone().into_boxed_slice(),
            e.clone().into_boxed_slice(),
        ),
        (AlgorithmFamily::Ec, DecodingKeyKind::SecretOrDer(point)) => {
            let algorithm: &'static dyn VerificationAlgorithm = match alg {
                Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
                _ => &sig::ECDSA_P384_SHA384_FIXED,
            };
            Check::Public(algorithm, point.clone().into_boxed_slice())
        }
        (AlgorithmFamily::Ed, DecodingKeyKind::SecretOrDer(raw)) => {
            Check::Public(&sig::ED25519, raw.clone().into_boxed_slice())
        }
        (family, _) => return Err(key_error(family)),
    };
    Ok(RingVerifier { alg, check })
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    Ok(Box::new(verifier(*alg, key)?))
}

/// What a signer signs with: the private key parsed once.
enum Sign {
    Hmac(hmac::Key),
    Rsa(&'static dyn sig::RsaEncoding, sig::RsaKeyPair),
    Ecdsa(sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
}

/// Signs with one algorithm and one private key (tests, the bench, `tollgate mint-token`).
pub struct RingSigner {
    alg: Algorithm,
    sign: Sign,
    rng: SystemRandom,
}

impl signature::Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        match &self.sign {
            Sign::Hmac(key) => Ok(hmac::sign(key, msg).as_ref().to_vec()),
            Sign::Rsa(padding, pair) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(*padding, &self.rng, msg, &mut out)
                    .map_err(|_| signature::Error::new())?;
                Ok(out)
            }
            Sign::Ecdsa(pair) => pair
                .sign(&self.rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            Sign::Ed25519(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn rsa_pair(der: &[u8]) -> Result<sig::RsaKeyPair> {
    sig::RsaKeyPair::from_der(der)
        .or_else(|_| sig::RsaKeyPair::from_pkcs8(der))
        .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()).into())
}

fn ecdsa_signing(alg: Algorithm) -> &'static sig::EcdsaSigningAlgorithm {
    match alg {
        Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
        _ => &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
    }
}

/// A signer of `alg` with `key` (same family rule as [`verifier`]).
pub fn signer(alg: Algorithm, key: &EncodingKey) -> Result<RingSigner> {
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let rng = SystemRandom::new();
    let bytes = key.as_bytes();
    let sign = match alg.family() {
        AlgorithmFamily::Hmac => {
            let algorithm = match alg {
                Algorithm::HS256 => hmac::HMAC_SHA256,
                Algorithm::HS384 => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            Sign::Hmac(hmac::Key::new(algorithm, bytes))
        }
        AlgorithmFamily::Rsa => {
            let padding: &'static dyn sig::RsaEncoding = match alg {
                Algorithm::RS256 => &sig::RSA_PKCS1_SHA256,
                Algorithm::RS384 => &sig::RSA_PKCS1_SHA384,
                Algorithm::RS512 => &sig::RSA_PKCS1_SHA512,
                Algorithm::PS256 => &sig::RSA_PSS_SHA256,
                Algorithm::PS384 => &sig::RSA_PSS_SHA384,
                _ => &sig::RSA_PSS_SHA512,
            };
            Sign::Rsa(padding, rsa_pair(bytes)?)
        }
        AlgorithmFamily::Ec => Sign::Ecdsa(
            sig::EcdsaKeyPair::from_pkcs8(ecdsa_signing(alg), bytes, &rng)
                .map_err(|_| key_error(AlgorithmFamily::Ec))?,
        ),
        AlgorithmFamily::Ed => Sign::Ed25519(
            sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                .map_err(|_| key_error(AlgorithmFamily::Ed))?,
        ),
    };
    Ok(RingSigner { alg, sign, rng })
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Ok(Box::new(signer(*alg, key)?))
}

fn rsa_components_of_private(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let pair = rsa_pair(der)?;
    let parts = sig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    Ok((parts.n, parts.e))
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (PKCS#1): ring has no
/// public parser for it, and the structure is two integers.
fn rsa_components_of_public(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    fn bad() -> Error {
        ErrorKind::InvalidRsaKey("not a PKCS#1 RSAPublicKey".into()).into()
    }
    /// One DER element of `tag`: its contents and the rest.
    fn element(input: &[u8], tag: u8) -> Result<(&[u8], &[u8])> {
        let (&t, rest) = input.split_first().ok_or_else(bad)?;
        let (&first, rest) = rest.split_first().ok_or_else(bad)?;
        if t != tag {
            return Err(bad());
        }
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return Err(bad());
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err(bad());
        }
        Ok(rest.split_at(len))
    }
    fn unsigned(int: &[u8]) -> Vec<u8> {
        let start = int.iter().position(|b| *b != 0).unwrap_or(int.len());
        int[start..].to_vec()
    }
    let (seq, trailing) = element(der, 0x30)?;
    if !trailing.is_empty() {
        return Err(bad());
    }
    let (n, rest) = element(seq, 0x02)?;
    let (e, rest) = element(rest, 0x02)?;
    if !rest.is_empty() || n.is_empty() || e.is_empty() {
        return Err(bad());
    }
    Ok((unsigned(n), unsigned(e)))
}

fn ec_components_of_private(
    pkcs8: &[u8],
    alg: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    let (curve, width) = match alg {
        Algorithm::ES256 => (EllipticCurve::P256, 32),
        Algorithm::ES384 => (EllipticCurve::P384, 48),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let pair = sig::EcdsaKeyPair::from_pkcs8(ecdsa_signing(alg), pkcs8, &SystemRandom::new())
        .map_err(|_| key_error(AlgorithmFamily::Ec))?;
    match pair.public_key().as_ref() {
        [4, point @ ..] if point.len() == 2 * width => {
            let (x, y) = point.split_at(width);
            Ok((curve, x.to_vec(), y.to_vec()))
        }
        _ => Err(ErrorKind::InvalidEcdsaKey.into()),
    }
}

fn ed_component_of_private(pkcs8: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>> {
    if *curve != EllipticCurve::Ed25519 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let pair = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
        .map_err(|_| key_error(AlgorithmFamily::Ed))?;
    Ok(pair.public_key().as_ref().to_vec())
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(digest::digest(algorithm, data).as_ref().to_vec())
}

#[cfg(test)]
pub(crate) mod test_keys {
    use jsonwebtoken::{DecodingKey, EncodingKey};

    /// A 2048-bit RSA key made for these tests only (ring cannot generate RSA keys).
    pub const RSA_PRIVATE_PEM: &[u8] = include_bytes!("authn/testdata/rsa-2048-TEST-ONLY.key.pem");
    pub const RSA_PUBLIC_PEM: &[u8] = include_bytes!("authn/testdata/rsa-2048-TEST-ONLY.pub.pem");

    pub fn rsa() -> (EncodingKey, DecodingKey) {
        (
            EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM).unwrap(),
            DecodingKey::from_rsa_pem(RSA_PUBLIC_PEM).unwrap(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, encode, Header, Validation};
    use serde_json::{json, Value};

    fn roundtrip(alg: Algorithm, enc: &EncodingKey, dec: &DecodingKey) {
        assert!(install());
        let claims = json!({"sub": "a", "exp": 4_000_000_000u64});
        let token = encode(&Header::new(alg), &claims, enc).unwrap();
        let mut v = Validation::new(alg);
        v.validate_aud = false;
        let got = decode::<Value>(&token, dec, &v).unwrap();
        assert_eq!(got.claims["sub"], "a");
        // One flipped signature byte fails.
        let mut bad = token.into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(decode::<Value>(std::str::from_utf8(&bad).unwrap(), dec, &v).is_err());
    }

    #[test]
    fn every_family_signs_and_verifies_on_ring() {
        let secret = b"0123456789abcdef0123456789abcdef";
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            roundtrip(
                alg,
                &EncodingKey::from_secret(secret),
                &DecodingKey::from_secret(secret),
            );
        }
        for (alg, rc) in [
            (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (Algorithm::ES384, &rcgen::PKCS_ECDSA_P384_SHA384),
            (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
        ] {
            let kp = rcgen::KeyPair::generate_for(rc).unwrap();
            let enc = match alg {
                Algorithm::EdDSA => EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()),
                _ => EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()),
            }
            .unwrap();
            let dec = match alg {
                Algorithm::EdDSA => DecodingKey::from_ed_pem(kp.public_key_pem().as_bytes()),
                _ => DecodingKey::from_ec_pem(kp.public_key_pem().as_bytes()),
            }
            .unwrap();
            roundtrip(alg, &enc, &dec);
        }
        let (enc, dec) = test_keys::rsa();
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            roundtrip(alg, &enc, &dec);
        }
        // JWK helpers: the RSA public components from the private key and from the public DER agree.
        let from_private = rsa_components_of_private(enc.as_bytes()).unwrap();
        let DecodingKeyKind::SecretOrDer(public_der) = dec.kind() else {
            panic!("PEM public keys are DER")
        };
        assert_eq!(rsa_components_of_public(public_der).unwrap(), from_private);
        assert_eq!(from_private.1, vec![1, 0, 1]);
    }

    #[test]
    fn a_key_of_another_family_is_refused() {
        let (_, rsa_pub) = test_keys::rsa();
        assert!(verifier(Algorithm::HS256, &rsa_pub).is_err());
        assert!(verifier(Algorithm::RS256, &DecodingKey::from_secret(b"k")).is_err());
    }
}
