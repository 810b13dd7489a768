//! Decision informed: whether a worker may verify every request's JWT (no cache) or needs the
//! per-worker verified-token cache (`policy::authn::TokenCache`), and how that cache is keyed.
//! Candidates: a cold verification (decode, pinned-alg and key checks, signature on ring, claims)
//! for HS256, RS256 (2048-bit), ES256 and EdDSA, against a cache hit for the same ~800-byte token.
//! Baseline for the key: SHA-256 over the token, which a cache keyed by a digest would pay on
//! every hit (the cache instead hashes with a fast seeded hash and compares the stored bytes).
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use tollgate::policy::authn::{Authn, Presented};
use tollgate::policy::jwt_ring;

const NOW: u64 = 1_800_000_000;
const SECRET: &str = "0123456789abcdef0123456789abcdef";
const RSA_PRIVATE: &[u8] =
    include_bytes!("../src/policy/authn/testdata/rsa-2048-TEST-ONLY.key.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../src/policy/authn/testdata/rsa-2048-TEST-ONLY.pub.pem");

/// Claims padded so the whole token is about 800 bytes (a typical IdP access token).
fn token(alg: Algorithm, iss: &str, key: &EncodingKey) -> String {
    let mut claims = serde_json::json!({
        "iss": iss, "sub": "user-1234", "aud": "http://127.0.0.1:8080/mcp",
        "exp": NOW + 3600, "iat": NOW, "client_id": "app", "scope": "tools:read tools:call",
        "roles": ["reader", "writer"], "pad": "",
    });
    let mut t = encode(&Header::new(alg), &claims, key).unwrap();
    let pad = 800usize.saturating_sub(t.len()) * 3 / 4;
    claims["pad"] = serde_json::json!("x".repeat(pad));
    t = encode(&Header::new(alg), &claims, key).unwrap();
    t
}

fn bench(c: &mut Criterion) {
    assert!(jwt_ring::install());
    let dir = std::env::temp_dir().join(format!("tollgate-bench-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p.display().to_string()
    };
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let yaml = format!(
        r#"
upstreams: [{{name: d, url: "builtin:demo"}}]
servers: [{{path: /mcp, upstream: d, auth: {{}}}}]
auth:
  issuers:
    - {{name: hs, issuer: "https://hs", algorithms: [HS256], secret: "{SECRET}"}}
    - {{name: rs, issuer: "https://rs", algorithms: [RS256], keys: ["{}"]}}
    - {{name: es, issuer: "https://es", algorithms: [ES256], keys: ["{}"]}}
    - {{name: ed, issuer: "https://ed", algorithms: [EdDSA], keys: ["{}"]}}
"#,
        write("rs.pem", RSA_PUBLIC),
        write("es.pem", es.public_key_pem().as_bytes()),
        write("ed.pem", ed.public_key_pem().as_bytes()),
    );
    let cfg = tollgate::config::load_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let authn = Authn::new(&cfg);
    let tokens = [
        (
            "hs256",
            token(
                Algorithm::HS256,
                "https://hs",
                &EncodingKey::from_secret(SECRET.as_bytes()),
            ),
        ),
        (
            "rs256",
            token(
                Algorithm::RS256,
                "https://rs",
                &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            ),
        ),
        (
            "es256",
            token(
                Algorithm::ES256,
                "https://es",
                &EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap(),
            ),
        ),
        (
            "eddsa",
            token(
                Algorithm::EdDSA,
                "https://ed",
                &EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
            ),
        ),
    ];
    for (name, t) in &tokens {
        assert!((780..=820).contains(&t.len()), "{name}: {} bytes", t.len());
        assert!(
            authn.verify_uncached(&cfg, 0, t.as_bytes(), NOW).is_ok(),
            "{name}"
        );
        c.bench_function(&format!("auth/cold/{name}"), |b| {
            b.iter(|| authn.verify_uncached(&cfg, 0, black_box(t.as_bytes()), NOW))
        });
    }
    let header = format!("Bearer {}", tokens[1].1);
    let req = Presented {
        authorization: Some(header.as_bytes()),
        ..Presented::default()
    };
    let first = authn.authenticate(&cfg, 0, &req, NOW).unwrap();
    c.bench_function("auth/cache_hit/800B", |b| {
        b.iter(|| authn.authenticate(&cfg, 0, black_box(&req), NOW))
    });
    assert!(std::rc::Rc::ptr_eq(
        &first,
        &authn.authenticate(&cfg, 0, &req, NOW).unwrap()
    ));
    assert!(authn.cache_hits.get() > 0);
    c.bench_function("auth/baseline/sha256_800B", |b| {
        b.iter(|| ring::digest::digest(&ring::digest::SHA256, black_box(tokens[1].1.as_bytes())))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
