//! `auth` (issuers, API keys, introspection) and `servers[].auth`.

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn with_auth(auth: &str, server_auth: &str) -> String {
    format!(
        "upstreams: [{{name: d, url: \"builtin:demo\"}}]\n\
         servers: [{{path: /mcp, upstream: d, auth: {server_auth}}}]\n\
         auth: {auth}\n"
    )
}

fn hs_issuer(extra: &str) -> String {
    format!("{{issuers: [{{name: example, issuer: \"https://issuer.example\", algorithms: [HS256], secret: \"{SECRET}\"{extra}}}]}}")
}

#[test]
fn auth_defaults_are_off_and_servers_are_open() {
    let c = ok("");
    assert!(c.auth.issuers.is_empty() && c.auth.api_keys.is_empty());
    assert!(c.auth.development.is_none());
    assert_eq!(c.auth.token_cache_entries, 4096);
    assert_eq!(c.auth.max_token_bytes, 8192);
    assert!(c.servers.iter().all(|s| s.auth.is_none()));
}

#[test]
fn an_issuer_loads_with_its_secret_and_the_server_gets_its_resource() {
    let c = ok(&with_auth(&hs_issuer(""), "{}"));
    let i = &c.auth.issuers[0];
    assert_eq!(i.issuer, "https://issuer.example");
    assert_eq!(i.keys.len(), 1);
    assert_eq!(i.leeway, std::time::Duration::from_secs(30));
    assert_eq!(i.claims.subject.dotted(), "sub");
    let a = c.servers[0].auth.as_ref().unwrap();
    assert_eq!(a.resource, "http://127.0.0.1:8080/mcp");
    assert_eq!(a.issuers, vec![0]);
    assert!(!a.api_keys, "no API keys configured");
    // The secret is never shown: not in Debug, not in the effective config.
    assert!(!format!("{c:?}").contains(SECRET));
    let shown = render_effective(&c);
    assert!(!shown.contains(SECRET));
    assert!(shown.contains("secret: \"<redacted>\""), "{shown}");
    // The effective config loads again (with the secret put back) to the same thing.
    let reloadable: String = shown
        .lines()
        .filter(|l| !l.contains("<redacted (from"))
        .map(|l| format!("{}\n", l.replace("<redacted>", SECRET)))
        .collect();
    let again = ok(&reloadable);
    assert_eq!(render_effective(&again), shown);
}

#[test]
fn a_secret_from_the_environment_is_named_not_shown() {
    let text = with_auth(
        "{issuers: [{name: e, issuer: \"https://i\", algorithms: [HS512], secret: \"${env:JWT_SECRET}\"}]}",
        "{}",
    );
    let c = load_str_with_env(&text, &|n| (n == "JWT_SECRET").then(|| SECRET.to_string())).unwrap();
    assert!(render_effective(&c).contains("secret: \"${env:JWT_SECRET}\""));
    assert_eq!(
        err(&text),
        "auth.issuers[0].secret: environment variable JWT_SECRET is not set"
    );
}

#[test]
fn issuer_problems_are_reported_at_their_keys() {
    let e = err(&with_auth(
        &hs_issuer("").replace("[HS256]", "[none]"),
        "{}",
    ));
    assert!(
        e.starts_with("auth.issuers[0].algorithms[0]: `none`"),
        "{e}"
    );
    let e = err(&with_auth(
        &hs_issuer("").replace("[HS256]", "[HS256, RS256]"),
        "{}",
    ));
    assert!(
        e.starts_with("auth.issuers[0].algorithms[1]: RS256 needs an RSA key"),
        "{e}"
    );
    let e = err(&with_auth(&hs_issuer("").replace(SECRET, "short"), "{}"));
    assert!(
        e.contains("at least 32 bytes") && !e.contains("short"),
        "{e}"
    );
    let e = err(&with_auth(&hs_issuer(", keys: [/nonexistent/k.pem]"), "{}"));
    assert!(
        e.starts_with("auth.issuers[0].keys[0]: cannot read /nonexistent/k.pem"),
        "{e}"
    );
    let e = err(&with_auth(&hs_issuer(", algorithm: [HS256]"), "{}"));
    assert!(
        e.contains("unknown key (did you mean \"algorithms\"?)"),
        "{e}"
    );
    let e = err(&with_auth(
        "{issuers: [{name: x, issuer: \"https://i\", algorithms: [RS256]}]}",
        "{}",
    ));
    assert!(e.starts_with("auth.issuers[0]: no keys"), "{e}");
    // With jwks_url the keys come from the background fetcher: none needed at load.
    let c = ok(&with_auth(
        "{issuers: [{name: x, issuer: \"https://i\", algorithms: [RS256], jwks_url: \"https://i/jwks\"}]}",
        "{}",
    ));
    assert!(render_effective(&c).contains("jwks_url: \"https://i/jwks\""));
}

#[test]
fn key_files_pem_and_jwks_load_and_private_keys_are_refused() {
    let dir = std::env::temp_dir().join(format!("tollgate-auth-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("rsa.pub.pem");
    std::fs::write(&pem, crate::policy::jwt_ring::test_keys::RSA_PUBLIC_PEM).unwrap();
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec = dir.join("ec.pub.pem");
    std::fs::write(&ec, kp.public_key_pem()).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        r#"{"keys":[{"kty":"oct","kid":"k1","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#,
    )
    .unwrap();
    let text = with_auth(
        &format!(
            "{{issuers: [{{name: x, issuer: \"https://i\", algorithms: [RS256, ES256, HS256], keys: [{}, {}, {}]}}]}}",
            pem.display(),
            ec.display(),
            jwks.display()
        ),
        "{}",
    );
    let c = ok(&text);
    let keys = &c.auth.issuers[0].keys;
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[2].kid.as_deref(), Some("k1"));
    let private = dir.join("rsa.key.pem");
    std::fs::write(
        &private,
        crate::policy::jwt_ring::test_keys::RSA_PRIVATE_PEM,
    )
    .unwrap();
    let e = err(&with_auth(
        &format!(
            "{{issuers: [{{name: x, issuer: \"https://i\", algorithms: [RS256], keys: [{}]}}]}}",
            private.display()
        ),
        "{}",
    ));
    assert!(e.contains("is a private key"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn server_auth_names_issuers_and_says_did_you_mean() {
    let e = err(&with_auth(&hs_issuer(""), "{issuers: [exampel]}"));
    assert_eq!(
        e,
        "servers[0].auth.issuers[0]: no issuer named \"exampel\" in auth.issuers (did you mean \"example\"?)"
    );
    let e = err(&with_auth("{}", "{}"));
    assert!(
        e.starts_with("servers[0].auth: no way to authenticate"),
        "{e}"
    );
}

#[test]
fn development_needs_the_principal_and_a_loopback_listener() {
    let e = err(&with_auth("{}", "{development: true}"));
    assert!(
        e.starts_with("servers[0].auth.development: true, but auth.development is not set"),
        "{e}"
    );
    let c = ok(&with_auth(
        "{development: {subject: me, roles: [admin]}}",
        "{development: true}",
    ));
    assert_eq!(c.auth.development.as_ref().unwrap().subject, "me");
    let e = err(&format!(
        "listen: {{address: \"0.0.0.0:8080\"}}\n{}",
        with_auth("{development: {roles: [admin]}}", "{development: true}")
    ));
    assert!(
        e.starts_with("servers[0].auth.development: true is only allowed on a loopback listener"),
        "{e}"
    );
}

#[test]
fn api_keys_are_hashes_and_turn_on_by_default() {
    let hash = "a".repeat(64);
    let c = ok(&with_auth(
        &format!("{{api_keys: [{{name: ci-bot, sha256: \"{hash}\", roles: [admin]}}]}}"),
        "{}",
    ));
    assert!(c.servers[0].auth.as_ref().unwrap().api_keys);
    assert_eq!(c.auth.api_keys[0].sha256, [0xaa; 32]);
    let e = errs(&with_auth(
        "{api_keys: [{name: k, sha256: \"my-secret-key\"}]}",
        "{}",
    ));
    assert!(
        e.iter()
            .any(|e| e.starts_with("auth.api_keys[0].sha256: expected the key's SHA-256")),
        "{e:?}"
    );
    assert!(!e.iter().any(|e| e.contains("my-secret")), "{e:?}");
    let e = err("auth: {max_token_bytes: 2MiB}");
    assert!(e.starts_with("auth.max_token_bytes: at most 1MiB"), "{e}");
}

#[test]
fn an_introspecting_issuer_may_be_opaque_only_and_its_secret_is_never_shown() {
    let text = with_auth(
        &format!(
            "{{issuers: [{{name: corp, issuer: \"https://as.example\", introspection: \
             {{endpoint: \"https://as.example/introspect\", client_id: tollgate, \
             client_secret: \"{SECRET}\", max_cache: 10s, negative_cache: 0s}}}}]}}"
        ),
        "{}",
    );
    let c = ok(&text);
    let i = &c.auth.issuers[0];
    assert!(i.algorithms.is_empty() && i.keys.is_empty());
    let x = i.introspection.as_deref().expect("introspection");
    assert_eq!(x.endpoint.as_deref(), Some("https://as.example/introspect"));
    assert_eq!(x.max_cache, std::time::Duration::from_secs(10));
    assert_eq!(x.negative_cache, std::time::Duration::ZERO);
    assert_eq!(x.timeout, std::time::Duration::from_secs(3));
    assert!(x.tls.is_some(), "an https endpoint gets a TLS config");
    assert!(!format!("{c:?}").contains(SECRET));
    let shown = render_effective(&c);
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("client_secret: \"<redacted>\""), "{shown}");
    // The rendering loads back to the same thing (the secret put back).
    let again = ok(&loadable(&shown).replace("<redacted>", SECRET));
    assert_eq!(loadable(&render_effective(&again)), loadable(&shown));
    // Defaults: a minute's trust, five seconds of memory for an inactive token.
    let c = ok(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\", discovery: true, introspection: \
         {client_id: t, client_secret: s}}]}",
        "{}",
    ));
    let x = c.auth.issuers[0].introspection.as_deref().unwrap();
    assert_eq!(x.endpoint, None, "from discovery");
    assert_eq!(x.max_cache, std::time::Duration::from_secs(60));
    assert_eq!(x.negative_cache, std::time::Duration::from_secs(5));
}

#[test]
fn introspection_problems_are_reported_at_their_keys() {
    // No endpoint and no discovery to find it.
    let e = err(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\", introspection: {client_id: t, client_secret: s}}]}",
        "{}",
    ));
    assert!(
        e.starts_with("auth.issuers[0].introspection.endpoint:") && e.contains("discovery"),
        "{e}"
    );
    let e = err(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\", introspection: {endpoint: \"ftp://x\", client_id: t, client_secret: s}}]}",
        "{}",
    ));
    assert!(
        e.starts_with("auth.issuers[0].introspection.endpoint:"),
        "{e}"
    );
    let e = err(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\", introspection: {endpoint: \"http://as/i\", client_secret: s}}]}",
        "{}",
    ));
    assert!(
        e.starts_with("auth.issuers[0].introspection.client_id:"),
        "{e}"
    );
    let e = err(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\", introspection: {endpoint: \"http://as/i\", client_id: t, client_secret: s, max_cache: 0s}}]}",
        "{}",
    ));
    assert!(
        e.starts_with("auth.issuers[0].introspection.max_cache:"),
        "{e}"
    );
    let e = err(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\", introspection: {endpoint: \"http://as/i\", client_id: t, client_secret: s, ttl: 1s}}]}",
        "{}",
    ));
    assert!(e.starts_with("auth.issuers[0].introspection.ttl:"), "{e}");
    // Without introspection, algorithms stay required.
    let e = err(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\"}]}",
        "{}",
    ));
    assert!(e.starts_with("auth.issuers[0].algorithms:"), "{e}");
    // Two introspecting issuers on one endpoint: an opaque token would not say which to ask.
    let two = "{issuers: [\
        {name: a, issuer: \"http://a\", introspection: {endpoint: \"http://a/i\", client_id: t, client_secret: s}},\
        {name: b, issuer: \"http://b\", introspection: {endpoint: \"http://b/i\", client_id: t, client_secret: s}}]}";
    let e = err(&with_auth(two, "{}"));
    assert!(
        e.starts_with("servers[0].auth.issuers:") && e.contains("a, b"),
        "{e}"
    );
    ok(&with_auth(two, "{issuers: [b]}"));
}
