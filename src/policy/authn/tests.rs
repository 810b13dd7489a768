use super::*;
use crate::policy::jwt_ring::{self, test_keys};
use crate::tls::PeerIdentity;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_800_000_000;
const A: &str = "http://127.0.0.1:8080/a";
const API_KEY: &str = "tg_test_key_1";

struct Keys {
    es256: EncodingKey,
    es384: EncodingKey,
    ed: EncodingKey,
    rsa: EncodingKey,
}

/// A config with one issuer per family, an API key, the development principal and three
/// endpoints: /a (everything), /b (only the `hs` issuer, another resource), /c (only `rsa`).
fn setup(extra_auth: &str) -> (Config, Keys) {
    assert!(jwt_ring::install());
    let dir = std::env::temp_dir().join(format!(
        "tollgate-authn-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p.display().to_string()
    };
    let rsa_pub = write("rsa.pem", test_keys::RSA_PUBLIC_PEM);
    let gen = |alg: &'static rcgen::SignatureAlgorithm| rcgen::KeyPair::generate_for(alg).unwrap();
    let (es256, es384, ed) = (
        gen(&rcgen::PKCS_ECDSA_P256_SHA256),
        gen(&rcgen::PKCS_ECDSA_P384_SHA384),
        gen(&rcgen::PKCS_ED25519),
    );
    let es256_pub = write("es256.pem", es256.public_key_pem().as_bytes());
    let es384_pub = write("es384.pem", es384.public_key_pem().as_bytes());
    let ed_pub = write("ed.pem", ed.public_key_pem().as_bytes());
    // A JWK set with kids for the RSA issuer too (same key twice under two kids is fine).
    let jwks = write(
        "rsa.jwks.json",
        json!({"keys": [jsonwebtoken::jwk::Jwk::from_encoding_key(
            &EncodingKey::from_rsa_pem(test_keys::RSA_PRIVATE_PEM).unwrap(),
            jsonwebtoken::Algorithm::RS256,
        )
        .map(|mut j| {
            j.common.key_id = Some("r1".into());
            j
        })
        .unwrap()]})
        .to_string()
        .as_bytes(),
    );
    let key_hash: String = ring::digest::digest(&ring::digest::SHA256, API_KEY.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let yaml = format!(
        r#"
upstreams: [{{name: d, url: "builtin:demo"}}]
servers:
  - {{path: /a, upstream: d, auth: {{development: true}}}}
  - {{path: /b, upstream: d, auth: {{issuers: [hs], resource: "https://b.example/mcp"}}}}
  - {{path: /c, upstream: d, auth: {{issuers: [rsa], api_keys: false}}}}
auth:
  issuers:
    - {{name: hs, issuer: "https://hs", algorithms: [HS256, HS384, HS512], secret: "{SECRET}",
        claims: {{roles: realm_access.roles, tenant: org}}}}
    - {{name: rsa, issuer: "https://rsa", algorithms: [RS256, PS256], keys: ["{jwks}"]}}
    - {{name: rsapem, issuer: "https://rsapem", algorithms: [RS512], keys: ["{rsa_pub}"]}}
    - {{name: ec, issuer: "https://ec", algorithms: [ES256, ES384], keys: ["{es256_pub}", "{es384_pub}"]}}
    - {{name: ed, issuer: "https://ed", algorithms: [EdDSA], keys: ["{ed_pub}"]}}
  api_keys: [{{name: ci-bot, sha256: "{key_hash}", roles: [admin]}}]
  development: {{subject: dev, roles: [admin]}}
  mtls: {{subject: cn, principals: [{{subject: agent-7, roles: [agent]}}]}}
{extra_auth}
"#
    );
    let cfg = crate::config::load_str_with_env(&yaml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let pk = |k: &rcgen::KeyPair| k.serialize_pem();
    (
        cfg,
        Keys {
            es256: EncodingKey::from_ec_pem(pk(&es256).as_bytes()).unwrap(),
            es384: EncodingKey::from_ec_pem(pk(&es384).as_bytes()).unwrap(),
            ed: EncodingKey::from_ed_pem(pk(&ed).as_bytes()).unwrap(),
            rsa: EncodingKey::from_rsa_pem(test_keys::RSA_PRIVATE_PEM).unwrap(),
        },
    )
}

fn server(cfg: &Config, path: &str) -> usize {
    cfg.servers.iter().position(|s| s.path == path).unwrap()
}

fn claims(iss: &str) -> serde_json::Value {
    json!({"iss": iss, "sub": "alice", "aud": A, "exp": NOW + 3600, "iat": NOW - 10,
           "scope": "tools:read tools:call", "client_id": "app-1"})
}

fn mint(
    alg: Algorithm,
    kid: Option<&str>,
    claims: &serde_json::Value,
    key: &EncodingKey,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, key).unwrap()
}

fn bearer_of(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

fn auth_header(
    a: &Authn,
    cfg: &Config,
    path: &str,
    header: &[u8],
    now: u64,
) -> Result<Rc<Principal>, AuthFailure> {
    let req = Presented {
        authorization: Some(header),
        ..Presented::default()
    };
    a.authenticate(cfg, server(cfg, path), &req, now)
        .map_err(settled)
}

/// A failure `authenticate` settled by itself (no introspection asked).
fn settled(u: Unresolved) -> AuthFailure {
    match u {
        Unresolved::Failed(f) => f,
        Unresolved::Introspect { issuer } => panic!("introspection of issuer {issuer} asked"),
    }
}

fn token(a: &Authn, cfg: &Config, path: &str, token: &str) -> Result<Rc<Principal>, AuthFailure> {
    auth_header(a, cfg, path, &bearer_of(token), NOW)
}

#[test]
fn every_algorithm_family_verifies() {
    let (cfg, k) = setup("");
    let a = Authn::new(&cfg);
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let cases: Vec<(Algorithm, Option<&str>, &str, &EncodingKey)> = vec![
        (Algorithm::HS256, None, "https://hs", &hs),
        (Algorithm::HS384, None, "https://hs", &hs),
        (Algorithm::HS512, None, "https://hs", &hs),
        (Algorithm::RS256, Some("r1"), "https://rsa", &k.rsa),
        (Algorithm::PS256, Some("r1"), "https://rsa", &k.rsa),
        (Algorithm::RS512, None, "https://rsapem", &k.rsa),
        (Algorithm::ES256, None, "https://ec", &k.es256),
        (Algorithm::ES384, None, "https://ec", &k.es384),
        (Algorithm::EdDSA, None, "https://ed", &k.ed),
    ];
    for (alg, kid, iss, key) in cases {
        let t = mint(alg, kid, &claims(iss), key);
        let p = token(&a, &cfg, "/a", &t).unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(&*p.subject, "alice");
        assert_eq!(p.client.as_deref(), Some("app-1"));
        assert!(p.has_scope("tools:call") && p.has_scope("tools:read"));
        assert_eq!(p.expires_at, Some(NOW + 3600));
        assert_eq!(p.id, principal_id("jwt", iss, "alice"));
        let issuer = cfg
            .auth
            .issuers
            .iter()
            .position(|i| i.issuer == iss)
            .unwrap();
        assert_eq!(
            p.source,
            Source::Jwt {
                issuer: issuer as u16
            }
        );
    }
    assert_eq!(a.cache_misses.get(), 9);
}

#[test]
fn claims_are_read_through_configured_paths() {
    let (cfg, _) = setup("");
    let a = Authn::new(&cfg);
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let mut c = claims("https://hs");
    c["realm_access"] = json!({"roles": ["admin", "ops"]});
    c["org"] = json!("acme");
    c["scope"] = json!(["a", "b"]);
    let p = token(&a, &cfg, "/a", &mint(Algorithm::HS256, None, &c, &hs)).unwrap();
    assert!(p.has_role("ops") && p.has_role("admin"));
    assert_eq!(p.tenant.as_deref(), Some("acme"));
    assert!(p.has_scope("b"));
    c["realm_access"] = json!({"roles": 7});
    assert_eq!(
        token(&a, &cfg, "/a", &mint(Algorithm::HS256, None, &c, &hs)).unwrap_err(),
        AuthFailure::BadClaims
    );
    let mut c = claims("https://hs");
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        token(&a, &cfg, "/a", &mint(Algorithm::HS256, None, &c, &hs)).unwrap_err(),
        AuthFailure::BadClaims
    );
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn each_attack_gets_its_reason() {
    let (cfg, k) = setup("");
    let a = Authn::new(&cfg);
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let t = |c: &serde_json::Value| mint(Algorithm::HS256, None, c, &hs);
    let fails = |tok: &str| token(&a, &cfg, "/a", tok).unwrap_err();

    // alg none, with and without a signature.
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none"})),
        b64(&claims("https://hs"))
    );
    assert_eq!(fails(&unsigned), AuthFailure::AlgorithmNotAllowed);
    let unsigned = format!(
        "{}.{}.x",
        b64(&json!({"alg": "None"})),
        b64(&claims("https://hs"))
    );
    assert_eq!(fails(&unsigned), AuthFailure::AlgorithmNotAllowed);
    // The classic confusion: HS256 keyed with the RSA public key's PEM, for the RSA issuers.
    let confused = EncodingKey::from_secret(test_keys::RSA_PUBLIC_PEM);
    for (iss, kid) in [("https://rsa", Some("r1")), ("https://rsapem", None)] {
        let tok = mint(Algorithm::HS256, kid, &claims(iss), &confused);
        assert_eq!(fails(&tok), AuthFailure::AlgorithmNotAllowed, "{iss}");
    }
    // A pinned algorithm of the wrong family for the kid's key: RS256 is pinned, ES key... the
    // EC issuer pins only ES*, so RS256 there is not allowed either.
    let tok = mint(Algorithm::RS256, None, &claims("https://ec"), &k.rsa);
    assert_eq!(fails(&tok), AuthFailure::AlgorithmNotAllowed);

    let mut c = claims("https://hs");
    c["aud"] = json!("https://elsewhere/mcp");
    assert_eq!(fails(&t(&c)), AuthFailure::WrongAudience);
    c["aud"] = json!(["https://elsewhere/mcp", A]);
    assert!(
        token(&a, &cfg, "/a", &t(&c)).is_ok(),
        "aud as a list containing ours"
    );
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(fails(&t(&c)), AuthFailure::WrongAudience);

    assert_eq!(
        fails(&t(&claims("https://unknown"))),
        AuthFailure::WrongIssuer
    );
    let mut c = claims("https://hs");
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(fails(&t(&c)), AuthFailure::WrongIssuer);

    let mut c = claims("https://hs");
    c["exp"] = json!(NOW - 31);
    assert_eq!(fails(&t(&c)), AuthFailure::Expired);
    c["exp"] = json!(NOW - 29);
    assert!(token(&a, &cfg, "/a", &t(&c)).is_ok(), "within the leeway");
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(fails(&t(&c)), AuthFailure::Expired, "exp is required");

    let mut c = claims("https://hs");
    c["nbf"] = json!(NOW + 60);
    assert_eq!(fails(&t(&c)), AuthFailure::NotYetValid);

    let tok = mint(Algorithm::RS256, Some("r2"), &claims("https://rsa"), &k.rsa);
    assert_eq!(fails(&tok), AuthFailure::UnknownKey);

    // Signed by another secret; then one signature byte changed.
    let other = EncodingKey::from_secret(b"another-secret-another-secret-xx");
    assert_eq!(
        fails(&mint(Algorithm::HS256, None, &claims("https://hs"), &other)),
        AuthFailure::BadSignature
    );
    let good = mint(Algorithm::ES256, None, &claims("https://ec"), &k.es256);
    let (body, sig) = good.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[5] ^= 1;
    let forged = format!("{body}.{}", URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(fails(&forged), AuthFailure::BadSignature);
    // Claims changed under a valid signature.
    let (_, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let mut c = claims("https://ec");
    c["sub"] = json!("mallory");
    let swapped = format!("{}.{}.{sig}", good.split('.').next().unwrap(), b64(&c));
    assert_eq!(fails(&swapped), AuthFailure::BadSignature);

    // Size, garbage, shapes.
    let mut c = claims("https://hs");
    c["pad"] = json!("x".repeat(9000));
    assert_eq!(fails(&t(&c)), AuthFailure::TooLarge);
    assert_eq!(fails("a.b.c"), AuthFailure::Malformed);
    assert_eq!(fails("!!!.???.###"), AuthFailure::Malformed);
    let not_object = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "HS256"})),
        b64(&json!([1]))
    );
    assert_eq!(fails(&not_object), AuthFailure::Malformed);
    let crit = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "HS256", "crit": ["exp"]})),
        b64(&claims("https://hs"))
    );
    assert_eq!(fails(&crit), AuthFailure::Malformed);
    for header in [
        &b"Basic dXNlcjpwYXNz"[..],
        b"Bearer",
        b"Bearer   ",
        b"Bearer a b",
    ] {
        assert_eq!(
            auth_header(&a, &cfg, "/a", header, NOW).unwrap_err(),
            AuthFailure::Malformed,
            "{}",
            String::from_utf8_lossy(header)
        );
    }
    // /c accepts no API keys: a non-JWT bearer is malformed there.
    assert_eq!(
        token(&a, &cfg, "/c", "opaque").unwrap_err(),
        AuthFailure::Malformed
    );

    // A token in the query is refused even with a good header.
    let good = t(&claims("https://hs"));
    let header = bearer_of(&good);
    for query in [
        &b"access_token=abc"[..],
        b"x=1&ACCESS_TOKEN=abc",
        b"access_token",
    ] {
        let req = Presented {
            authorization: Some(&header),
            query: Some(query),
            ..Presented::default()
        };
        assert_eq!(
            a.authenticate(&cfg, server(&cfg, "/a"), &req, NOW)
                .unwrap_err(),
            AuthFailure::InQuery
        );
    }
    let req = Presented {
        authorization: Some(&header),
        query: Some(b"not_access_token=1"),
        ..Presented::default()
    };
    assert!(a.authenticate(&cfg, server(&cfg, "/a"), &req, NOW).is_ok());
    // Scheme is case-insensitive.
    assert!(auth_header(&a, &cfg, "/a", format!("bEaReR {good}").as_bytes(), NOW).is_ok());
}

#[test]
fn the_cache_serves_the_same_principal_until_exp_and_only_for_its_endpoint() {
    let (cfg, _) = setup("");
    let a = Authn::new(&cfg);
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let mut c = claims("https://hs");
    c["aud"] = json!([A, "https://b.example/mcp"]);
    c["exp"] = json!(NOW + 100);
    let tok = mint(Algorithm::HS256, None, &c, &hs);
    let first = token(&a, &cfg, "/a", &tok).unwrap();
    let second = token(&a, &cfg, "/a", &tok).unwrap();
    assert!(
        Rc::ptr_eq(&first, &second),
        "a hit hands out the cached principal"
    );
    assert_eq!((a.cache_hits.get(), a.cache_misses.get()), (1, 1));
    // Another endpoint verifies for itself (its own cache entry).
    let on_b = token(&a, &cfg, "/b", &tok).unwrap();
    assert!(!Rc::ptr_eq(&first, &on_b));
    assert_eq!(a.cache_misses.get(), 2);
    // /c does not accept the hs issuer, although /a cached the token.
    assert_eq!(
        token(&a, &cfg, "/c", &tok).unwrap_err(),
        AuthFailure::WrongIssuer
    );
    // At exp the entry is not served; beyond the leeway the token is refused.
    assert!(auth_header(&a, &cfg, "/a", &bearer_of(&tok), NOW + 99).is_ok());
    let hits = a.cache_hits.get();
    assert!(auth_header(&a, &cfg, "/a", &bearer_of(&tok), NOW + 100).is_ok());
    assert_eq!(a.cache_hits.get(), hits, "not served from the cache at exp");
    assert_eq!(
        auth_header(&a, &cfg, "/a", &bearer_of(&tok), NOW + 131).unwrap_err(),
        AuthFailure::Expired
    );
    // Failures are not cached: a refused token stays refused, and counts no hit.
    let hits = a.cache_hits.get();
    let _ = token(&a, &cfg, "/c", &tok);
    assert_eq!(a.cache_hits.get(), hits);
    // New keys for an issuer drop the cache.
    assert!(a.cached_tokens() > 0);
    a.install_keys(0, Rc::new(KeySet::new(&[Algorithm::HS256], &[])));
    assert_eq!(a.cached_tokens(), 0);
    assert_eq!(
        token(&a, &cfg, "/a", &tok).unwrap_err(),
        AuthFailure::KeysUnavailable
    );
}

#[test]
fn the_cache_bound_holds() {
    let (cfg, _) = setup("  token_cache_entries: 8");
    let a = Authn::new(&cfg);
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    for i in 0..100 {
        let mut c = claims("https://hs");
        c["jti"] = json!(i);
        token(&a, &cfg, "/a", &mint(Algorithm::HS256, None, &c, &hs)).unwrap();
        assert!(a.cached_tokens() <= 8);
    }
    assert!(a.cached_tokens() >= 4);
}

#[test]
fn api_keys_mtls_and_development() {
    let (cfg, _) = setup("");
    let a = Authn::new(&cfg);
    let p = token(&a, &cfg, "/a", API_KEY).unwrap();
    assert_eq!(&*p.subject, "ci-bot");
    assert_eq!(p.source, Source::ApiKey { key: 0 });
    assert!(p.has_role("admin"));
    assert_eq!(
        token(&a, &cfg, "/a", "tg_test_key_2").unwrap_err(),
        AuthFailure::UnknownApiKey
    );
    let with_key = |key: &[u8], path: &str, loopback: bool| {
        let req = Presented {
            api_key: Some(key),
            loopback,
            ..Presented::default()
        };
        a.authenticate(&cfg, server(&cfg, path), &req, NOW)
    };
    assert_eq!(
        &*with_key(API_KEY.as_bytes(), "/a", false).unwrap().subject,
        "ci-bot"
    );
    assert_eq!(
        with_key(b"nope", "/a", false).unwrap_err(),
        AuthFailure::UnknownApiKey
    );
    assert_eq!(
        with_key(&[b'k'; 9000], "/a", false).unwrap_err(),
        AuthFailure::TooLarge
    );
    // /c takes no API keys: the header is not a credential there.
    assert_eq!(
        with_key(API_KEY.as_bytes(), "/c", true).unwrap_err(),
        AuthFailure::Missing
    );

    // Development: loopback clients of /a only.
    let nothing = |path: &str, loopback: bool| {
        let req = Presented {
            loopback,
            ..Presented::default()
        };
        a.authenticate(&cfg, server(&cfg, path), &req, NOW)
    };
    let dev = nothing("/a", true).unwrap();
    assert_eq!(
        (&*dev.subject, dev.source.clone()),
        ("dev", Source::Development)
    );
    assert_eq!(nothing("/a", false).unwrap_err(), AuthFailure::Missing);
    assert_eq!(nothing("/b", true).unwrap_err(), AuthFailure::Missing);
}

#[test]
fn mtls_principal_from_the_certificate() {
    let (cfg, _) = setup("");
    let mut cfg = cfg;
    // (The loader insists on listen.tls with client certificates for `mtls: true`; set it here.)
    cfg.servers[0].auth.as_mut().unwrap().mtls = true;
    let a = Authn::new(&cfg);
    let peer = PeerIdentity {
        subject: "CN=agent-7,O=Example\\, Inc.".into(),
        sans: vec!["DNS:agent.example".into()],
    };
    let req = Presented {
        peer: Some(&peer),
        ..Presented::default()
    };
    let p = a.authenticate(&cfg, 0, &req, NOW).unwrap();
    assert_eq!(&*p.subject, "agent-7");
    assert!(p.has_role("agent"));
    assert_eq!(p.source, Source::Mtls);
    let other = PeerIdentity {
        subject: "O=Example".into(),
        sans: vec![],
    };
    let req = Presented {
        peer: Some(&other),
        ..Presented::default()
    };
    assert_eq!(
        a.authenticate(&cfg, 0, &req, NOW).unwrap_err(),
        AuthFailure::BadClaims
    );
    // An endpoint without mtls ignores the certificate.
    assert_eq!(
        a.authenticate(&cfg, 1, &req, NOW).unwrap_err(),
        AuthFailure::Missing
    );
}

// ---- opaque tokens (introspection) ----

const OPAQUE_RES: &str = "https://o.example/mcp";

/// /o: an opaque-only issuer (introspection, no keys) and an API key; /m: the same issuer
/// beside the HS256 one (JWTs verified, other tokens introspected); /j: JWTs only.
fn opaque_setup() -> Config {
    let key_hash = hash_key(API_KEY.as_bytes());
    let yaml = format!(
        r#"
upstreams: [{{name: d, url: "builtin:demo"}}]
servers:
  - {{path: /o, upstream: d, auth: {{issuers: [corp], resource: "{OPAQUE_RES}"}}}}
  - {{path: /m, upstream: d, auth: {{issuers: [hs, corp], api_keys: false, resource: "{OPAQUE_RES}"}}}}
  - {{path: /j, upstream: d, auth: {{issuers: [hs], api_keys: false}}}}
auth:
  issuers:
    - {{name: hs, issuer: "https://hs", algorithms: [HS256], secret: "{SECRET}"}}
    - name: corp
      issuer: "https://corp"
      claims: {{tenant: org.id}}
      introspection: {{endpoint: "http://127.0.0.1:1/introspect", client_id: tollgate,
                      client_secret: s, max_cache: 60s, negative_cache: 5s}}
  api_keys: [{{name: ci-bot, sha256: "{key_hash}", roles: [admin]}}]
"#
    );
    crate::config::load_str_with_env(&yaml, &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

fn active(extra: serde_json::Value) -> Vec<u8> {
    let mut v = json!({"active": true, "iss": "https://corp", "aud": OPAQUE_RES, "sub": "alice",
        "client_id": "app-1", "scope": "mcp:tools mcp:read", "roles": ["reader"],
        "org": {"id": "acme"}, "exp": NOW + 3600, "iat": NOW - 5});
    for (k, x) in extra.as_object().unwrap() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    v.to_string().into_bytes()
}

fn opaque(
    a: &Authn,
    cfg: &Config,
    path: &str,
    tok: &str,
    now: u64,
) -> Result<Rc<Principal>, Unresolved> {
    let req = Presented {
        authorization: Some(&bearer_of(tok)),
        ..Presented::default()
    };
    a.authenticate(cfg, server(cfg, path), &req, now)
}

const CORP: usize = 1;

#[test]
fn an_opaque_token_asks_for_introspection_of_the_endpoints_introspecting_issuer() {
    let cfg = opaque_setup();
    let a = Authn::new(&cfg);
    let ask = Err(Unresolved::Introspect { issuer: CORP });
    assert_eq!(
        opaque(&a, &cfg, "/o", "opaque-abc_123", NOW).map(|_| ()),
        ask
    );
    // An opaque-only endpoint sends JWT-shaped tokens to introspection too.
    assert_eq!(opaque(&a, &cfg, "/o", "a.b.c", NOW).map(|_| ()), ask);
    // Beside an issuer with keys, a JWT is verified here, other tokens introspected.
    let mut c = claims("https://hs");
    c["aud"] = json!(OPAQUE_RES);
    let jwt = mint(
        Algorithm::HS256,
        None,
        &c,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    assert!(opaque(&a, &cfg, "/m", &jwt, NOW).is_ok());
    assert_eq!(opaque(&a, &cfg, "/m", "opaque-abc", NOW).map(|_| ()), ask);
    // Without an introspecting issuer an opaque token stays malformed; an API key is a key.
    assert_eq!(
        opaque(&a, &cfg, "/j", "opaque-abc", NOW).unwrap_err(),
        AuthFailure::Malformed
    );
    assert_eq!(
        &*opaque(&a, &cfg, "/o", API_KEY, NOW).unwrap().subject,
        "ci-bot"
    );
    assert_eq!(
        opaque(&a, &cfg, "/o", "not valid!", NOW).unwrap_err(),
        AuthFailure::Malformed
    );
}

#[test]
fn an_active_answer_becomes_a_principal_cached_at_most_max_cache() {
    let cfg = opaque_setup();
    let a = Authn::new(&cfg);
    let o = server(&cfg, "/o");
    let p = a
        .introspected(&cfg, o, CORP, b"tok-1", Ok((200, &active(json!({})))), NOW)
        .unwrap();
    assert_eq!(
        p.source,
        Source::Introspection {
            issuer: CORP as u16
        }
    );
    assert_eq!(&*p.subject, "alice");
    assert_eq!(p.client.as_deref(), Some("app-1"));
    assert_eq!(p.tenant.as_deref(), Some("acme"));
    assert!(p.has_role("reader") && p.has_scope("mcp:tools") && p.has_scope("mcp:read"));
    assert_eq!(p.expires_at, Some(NOW + 3600));
    assert_eq!(p.id, principal_id("introspection", "https://corp", "alice"));
    // Cached: the next request is a hit, until max_cache (60s), well before exp.
    assert_eq!(
        &*opaque(&a, &cfg, "/o", "tok-1", NOW + 59).unwrap().subject,
        "alice"
    );
    assert_eq!(
        opaque(&a, &cfg, "/o", "tok-1", NOW + 60).map(|_| ()),
        Err(Unresolved::Introspect { issuer: CORP })
    );
    // Never past exp and its leeway (30s), while it would be accepted again.
    let soon = active(json!({"exp": NOW + 10}));
    a.introspected(&cfg, o, CORP, b"tok-2", Ok((200, &soon)), NOW)
        .unwrap();
    assert!(opaque(&a, &cfg, "/o", "tok-2", NOW + 40).is_ok());
    assert!(opaque(&a, &cfg, "/o", "tok-2", NOW + 41).is_err());
    // A token admitted only within the leeway is cached too, as long as it would be admitted.
    let late = active(json!({"exp": NOW - 29}));
    a.introspected(&cfg, o, CORP, b"tok-late", Ok((200, &late)), NOW)
        .unwrap();
    assert!(opaque(&a, &cfg, "/o", "tok-late", NOW + 1).is_ok());
    assert_eq!(
        opaque(&a, &cfg, "/o", "tok-late", NOW + 2).map(|_| ()),
        Err(Unresolved::Introspect { issuer: CORP })
    );
    // A machine token without sub is its client; an aud list that names the resource will do;
    // no exp: max_cache alone bounds it.
    let p = a
        .introspected(
            &cfg,
            o,
            CORP,
            b"tok-3",
            Ok((
                200,
                &active(json!({"sub": null, "aud": ["x", OPAQUE_RES], "exp": null, "iss": null})),
            )),
            NOW,
        )
        .unwrap();
    assert_eq!((&*p.subject, p.expires_at), ("app-1", None));
    // Its id is not the one of a user whose sub is "app-1".
    assert_eq!(
        p.id,
        principal_id("introspection_client", "https://corp", "app-1")
    );
    let user = a
        .introspected(
            &cfg,
            o,
            CORP,
            b"tok-4",
            Ok((200, &active(json!({"sub": "app-1"})))),
            NOW,
        )
        .unwrap();
    assert_eq!(&*user.subject, "app-1");
    assert_ne!(user.id, p.id);
    assert!(opaque(&a, &cfg, "/o", "tok-3", NOW + 59).is_ok());
    assert!(opaque(&a, &cfg, "/o", "tok-3", NOW + 60).is_err());
}

#[test]
fn answers_that_do_not_admit_are_refused_for_a_reason_and_remembered_briefly() {
    let cfg = opaque_setup();
    let a = Authn::new(&cfg);
    let o = server(&cfg, "/o");
    let cases: Vec<(serde_json::Value, AuthFailure)> = vec![
        (json!({"active": false}), AuthFailure::Inactive),
        (json!({"active": "true"}), AuthFailure::Inactive),
        (json!({"iss": "https://other"}), AuthFailure::WrongIssuer),
        (
            json!({"aud": "https://another/mcp"}),
            AuthFailure::WrongAudience,
        ),
        (
            json!({"aud": ["https://another/mcp"]}),
            AuthFailure::WrongAudience,
        ),
        (json!({"aud": null}), AuthFailure::WrongAudience),
        (json!({"exp": NOW - 31}), AuthFailure::Expired),
        (json!({"exp": "soon"}), AuthFailure::BadClaims),
        (json!({"nbf": NOW + 31}), AuthFailure::NotYetValid),
        (
            json!({"sub": null, "client_id": null}),
            AuthFailure::BadClaims,
        ),
        (
            json!({"roles": "reader", "org": {"id": 7}}),
            AuthFailure::BadClaims,
        ),
    ];
    for (i, (extra, want)) in cases.iter().enumerate() {
        let tok = format!("bad-{i}");
        let body = if extra == &json!({"active": false}) {
            br#"{"active":false}"#.to_vec()
        } else {
            active(extra.clone())
        };
        let got = a.introspected(&cfg, o, CORP, tok.as_bytes(), Ok((200, &body)), NOW);
        assert_eq!(got.unwrap_err(), *want, "{extra}");
        // Remembered for negative_cache (5s): no second call meanwhile.
        assert_eq!(
            opaque(&a, &cfg, "/o", &tok, NOW + 4).unwrap_err(),
            *want,
            "{extra}"
        );
        assert_eq!(
            opaque(&a, &cfg, "/o", &tok, NOW + 5).map(|_| ()),
            Err(Unresolved::Introspect { issuer: CORP })
        );
    }
    // Leeway: 30s past exp still passes.
    assert!(a
        .introspected(
            &cfg,
            o,
            CORP,
            b"late",
            Ok((200, &active(json!({"exp": NOW - 30})))),
            NOW
        )
        .is_ok());
    // Not an answer (not 200, not a JSON object, no answer at all): failed, never cached.
    for (tok, answer) in [
        ("e1", Ok((500, &b"{\"active\":true}"[..]))),
        ("e2", Ok((200, &b"<html>"[..]))),
        ("e3", Ok((200, &b"[true]"[..]))),
        ("e4", Err(())),
    ] {
        assert_eq!(
            a.introspected(&cfg, o, CORP, tok.as_bytes(), answer, NOW)
                .unwrap_err(),
            AuthFailure::IntrospectionFailed
        );
        assert_eq!(
            opaque(&a, &cfg, "/o", tok, NOW).map(|_| ()),
            Err(Unresolved::Introspect { issuer: CORP })
        );
    }
}
