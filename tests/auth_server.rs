//! The test authorization server (tests/auth/as.mjs, npm oidc-provider) issues what the auth
//! tests rely on: JWT access tokens whose signature verifies against its published JWKS (checked
//! here with `ring`, independently of the gateway's verifier), with `iss`, `aud` = the resource
//! indicator, `roles`; opaque tokens that introspect as active; and token exchange that keeps the
//! subject and changes the audience.

#[path = "support/auth_server.rs"]
mod auth_server;

use auth_server::{jwt_parts, AuthOptions, AuthServer, ACCESS_TOKEN_TYPE};
use base64::Engine as _;
use ring::signature;
use serde_json::{json, Value};

const RESOURCE: &str = "http://127.0.0.1:8080/mcp";
const UPSTREAM: &str = "http://127.0.0.1:9090/upstream";
const OPAQUE: &str = "http://127.0.0.1:8080/opaque";

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

/// Verifies a JWT's signature with the key its `kid` names in `jwks` (RS256 or ES256), as a
/// resource server would: Err says why not.
fn verify(token: &str, jwks: &Value) -> Result<(), String> {
    let (header, _) = jwt_parts(token);
    let kid = header["kid"].as_str().ok_or("no kid")?;
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .ok_or("unknown kid")?;
    let dot = token.rfind('.').unwrap();
    let (message, sig) = (&token.as_bytes()[..dot], b64(&token[dot + 1..]));
    let field = |name: &str| b64(key[name].as_str().unwrap());
    let alg = header["alg"].as_str().unwrap_or("");
    assert_eq!(key["alg"], alg, "the key is for the header's alg");
    match alg {
        "RS256" => signature::RsaPublicKeyComponents {
            n: field("n"),
            e: field("e"),
        }
        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, &sig)
        .map_err(|_| "bad RS256 signature".to_string()),
        "ES256" => {
            let mut point = vec![0x04];
            point.extend(field("x"));
            point.extend(field("y"));
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, &sig)
                .map_err(|_| "bad ES256 signature".to_string())
        }
        other => Err(format!("unexpected alg {other}")),
    }
}

/// The same token with one claim changed and the original signature kept.
fn tampered(token: &str, claim: &str, value: Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&b64(parts[1])).unwrap();
    claims[claim] = value;
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&claims).unwrap());
    format!("{}.{body}.{}", parts[0], parts[2])
}

#[test]
fn client_credentials_jwt_verifies_against_the_published_jwks() {
    let Some(auth) = AuthServer::try_start(&[RESOURCE, UPSTREAM]) else {
        return;
    };
    let token = auth.client_credentials("reader-bot", RESOURCE, "mcp:tools");
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["kid"], auth.kid("RS256"));
    assert_eq!(claims["iss"], auth.issuer());
    assert_eq!(claims["aud"], RESOURCE);
    assert_eq!(claims["sub"], "reader-bot");
    assert_eq!(claims["client_id"], "reader-bot");
    assert_eq!(claims["roles"], json!(["reader"]));
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["scope"], "mcp:tools");
    assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());

    let jwks = auth.jwks();
    verify(&token, &jwks).unwrap();
    // The check can fail: a changed claim under the old signature does not verify.
    assert_eq!(
        verify(&tampered(&token, "roles", json!(["admin"])), &jwks),
        Err("bad RS256 signature".to_string())
    );
    // The JWKS holds public keys only.
    for key in jwks["keys"].as_array().unwrap() {
        assert!(key.get("d").is_none(), "private part published: {key}");
    }

    let admin = auth.client_credentials("admin-bot", UPSTREAM, "");
    let (_, claims) = jwt_parts(&admin);
    assert_eq!(claims["aud"], UPSTREAM);
    assert_eq!(claims["roles"], json!(["admin"]));
    assert!(
        claims.get("scope").is_none(),
        "no scope asked, none granted"
    );
    verify(&admin, &jwks).unwrap();
}

#[test]
fn es256_tokens_and_refusals() {
    let Some(auth) = AuthServer::try_start_with(&AuthOptions {
        resources: &[RESOURCE],
        alg: Some("ES256"),
        ..AuthOptions::default()
    }) else {
        return;
    };
    // A scope the resource does not know is dropped, not granted.
    let token = auth.client_credentials("reader-bot", RESOURCE, "mcp:tools made:up");
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], auth.kid("ES256"));
    assert_eq!(claims["scope"], "mcp:tools");
    verify(&token, &auth.jwks()).unwrap();

    let (status, v) = auth.token_response("reader-bot", "http://127.0.0.1:1/unknown", "");
    assert_eq!((status, &v["error"]), (400, &json!("invalid_target")));
    let (status, v) = auth.post_form(
        auth.token_endpoint(),
        "reader-bot",
        &[("grant_type", "password"), ("resource", RESOURCE)],
    );
    assert_eq!(
        (status, &v["error"]),
        (400, &json!("unsupported_grant_type"))
    );
}

#[test]
fn opaque_tokens_introspect_as_active() {
    let Some(auth) = AuthServer::try_start_with(&AuthOptions {
        resources: &[RESOURCE],
        opaque_resources: &[OPAQUE],
        ..AuthOptions::default()
    }) else {
        return;
    };
    let token = auth.opaque_token(RESOURCE, "mcp:tools");
    assert!(!token.contains('.'), "opaque, not a JWT: {token}");
    let info = auth.introspect(&token);
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["aud"], RESOURCE);
    assert_eq!(info["sub"], "opaque-bot");
    assert_eq!(info["client_id"], "opaque-bot");
    assert_eq!(info["roles"], json!(["reader"]));
    assert_eq!(info["scope"], "mcp:tools");
    assert_eq!(info["iss"], auth.issuer());
    assert_eq!(info["token_type"], "Bearer");

    // An opaque resource gives any client opaque tokens.
    let token = auth.client_credentials("admin-bot", OPAQUE, "");
    assert!(!token.contains('.'));
    let info = auth.introspect(&token);
    assert_eq!(
        (&info["active"], &info["aud"]),
        (&json!(true), &json!(OPAQUE))
    );
    assert_eq!(info["roles"], json!(["admin"]));

    assert_eq!(auth.introspect("not-a-token"), json!({"active": false}));
}

#[test]
fn token_exchange_changes_the_audience_and_keeps_the_subject() {
    let Some(auth) = AuthServer::try_start_with(&AuthOptions {
        resources: &[RESOURCE, UPSTREAM],
        opaque_resources: &[OPAQUE],
        ..AuthOptions::default()
    }) else {
        return;
    };
    let caller = auth.client_credentials("reader-bot", RESOURCE, "mcp:tools");
    let (status, v) = auth.exchange_as("gateway", &caller, UPSTREAM);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(v["token_type"], "Bearer");
    let swapped = v["access_token"].as_str().unwrap();
    verify(swapped, &auth.jwks()).unwrap();
    let (_, before) = jwt_parts(&caller);
    let (_, after) = jwt_parts(swapped);
    assert_eq!(after["aud"], UPSTREAM);
    assert_eq!(after["sub"], before["sub"]);
    assert_eq!(after["roles"], before["roles"]);
    assert_eq!(after["iss"], auth.issuer());
    assert_eq!(after["scope"], "mcp:tools");
    assert_eq!(after["act"], json!({"sub": "gateway"}));
    assert_eq!(after["client_id"], "gateway");

    // Exchanging the exchanged token nests the actors.
    let (_, twice) = jwt_parts(&auth.exchange(swapped, RESOURCE));
    assert_eq!(
        twice["act"],
        json!({"sub": "gateway", "act": {"sub": "gateway"}})
    );

    // An opaque subject token, exchanged for an opaque audience: introspection shows the subject.
    let opaque = auth.opaque_token(RESOURCE, "");
    let info = auth.introspect(&auth.exchange(&opaque, OPAQUE));
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["aud"], OPAQUE);
    assert_eq!(info["sub"], "opaque-bot");
    assert_eq!(info["act"], json!({"sub": "gateway"}));

    // Refused: a client without the grant, a forged subject token, an unknown audience.
    let (status, v) = auth.exchange_as("reader-bot", &caller, UPSTREAM);
    assert_eq!(
        (status, &v["error"]),
        (400, &json!("invalid_request")),
        "{v}"
    );
    let forged = tampered(&caller, "sub", json!("admin-bot"));
    let (status, v) = auth.exchange_as("gateway", &forged, UPSTREAM);
    assert_eq!((status, &v["error"]), (400, &json!("invalid_grant")), "{v}");
    let (status, v) = auth.exchange_as("gateway", &caller, "http://127.0.0.1:1/unknown");
    assert_eq!(
        (status, &v["error"]),
        (400, &json!("invalid_target")),
        "{v}"
    );
}

#[test]
fn discovery_under_both_well_known_names() {
    let Some(auth) = AuthServer::try_start(&[RESOURCE]) else {
        return;
    };
    let get = |path: &str| {
        let (status, body) =
            auth_server::http("GET", &format!("{}{path}", auth.issuer()), &[], b"");
        assert_eq!(status, 200, "{path}");
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    let oidc = get("/.well-known/openid-configuration");
    let oauth = get("/.well-known/oauth-authorization-server");
    assert_eq!(oidc, oauth);
    assert_eq!(oidc["issuer"], auth.issuer());
    assert_eq!(oidc["jwks_uri"], auth.jwks_uri());
    assert_eq!(oidc["token_endpoint"], auth.token_endpoint());
    assert_eq!(
        oidc["introspection_endpoint"],
        auth.introspection_endpoint()
    );
    assert!(oidc["registration_endpoint"].is_string());
    let grants = oidc["grant_types_supported"].as_array().unwrap();
    for g in [
        "authorization_code",
        "client_credentials",
        auth_server::TOKEN_EXCHANGE,
    ] {
        assert!(grants.contains(&json!(g)), "{g} in {grants:?}");
    }
    assert!(oidc["code_challenge_methods_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("S256")));
}

/// The official Python SDK (mcp 2.x) completes the MCP authorization flow against this server:
/// 401 → protected resource metadata → discovery → registration → code flow with PKCE and a
/// resource indicator → tools listed and called, in both protocol eras
/// (tests/clients/oauth_client.py --selftest; its protected endpoint is the SDK's own resource
/// server until tollgate's lands).
#[test]
fn python_sdk_oauth_client_completes_the_code_flow() {
    let python = std::env::var_os("TOLLGATE_TOOLS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools"))
        .join("py-mcp2/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} missing, and CI is set: scripts/install-tools.sh installs it",
            python.display()
        );
        eprintln!("\n*** SKIPPED: {} missing ***\n", python.display());
        return;
    }
    // Skips (or fails under CI) like the other tests when oidc-provider is missing.
    if !AuthServer::available() {
        return;
    }
    let out = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/oauth_client.py"
        ))
        .arg("--selftest")
        .output()
        .expect("run oauth_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stdout.contains("FAIL"),
        "oauth_client.py --selftest failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for era in ["2025-11-25", "2026-07-28"] {
        assert!(
            stdout.contains(&format!("ok a token after the first request ({era})")),
            "{era}:\n{stdout}"
        );
    }
    assert_eq!(
        stdout
            .matches("ok the resource server saw the logged-in user's token")
            .count(),
        2,
        "{stdout}"
    );
}

#[test]
fn user_tokens_through_the_code_flow() {
    let Some(auth) = AuthServer::try_start(&[RESOURCE, UPSTREAM]) else {
        return;
    };
    let token = auth.user_token(RESOURCE, "mcp:tools");
    verify(&token, &auth.jwks()).unwrap();
    let (_, claims) = jwt_parts(&token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], json!(["reader"]));
    assert_eq!(claims["aud"], RESOURCE);
    assert_eq!(claims["iss"], auth.issuer());
    assert_eq!(claims["scope"], "mcp:tools");
    assert!(claims["client_id"].is_string());

    // Exchanged for the upstream on the user's behalf: still alice, acted for by the gateway.
    let (_, swapped) = jwt_parts(&auth.exchange(&token, UPSTREAM));
    assert_eq!(swapped["sub"], "alice");
    assert_eq!(swapped["aud"], UPSTREAM);
    assert_eq!(swapped["roles"], json!(["reader"]));
    assert_eq!(swapped["act"], json!({"sub": "gateway"}));

    let Some(as_bob) = AuthServer::try_start_with(&AuthOptions {
        resources: &[RESOURCE],
        login_as: Some("bob"),
        ..AuthOptions::default()
    }) else {
        return;
    };
    let (_, claims) = jwt_parts(&as_bob.user_token(RESOURCE, "mcp:tools mcp:admin"));
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["roles"], json!(["admin"]));
    assert_eq!(claims["scope"], "mcp:tools mcp:admin");
}

#[test]
fn key_rotation_publishes_a_new_kid_beside_the_old() {
    let Some(mut auth) = AuthServer::try_start(&[RESOURCE]) else {
        return;
    };
    let before = auth.client_credentials("reader-bot", RESOURCE, "");
    let old_jwks = auth.jwks();
    let old_kid = auth.kid("RS256").to_string();
    assert_eq!(old_jwks["keys"].as_array().unwrap().len(), 2, "{old_jwks}");

    // Other traffic first: nothing but the command's answer may come out on stdout (oidc-provider
    // prints notices with console.info; as.mjs sends them to stderr).
    assert_eq!(auth.introspect("x"), json!({"active": false}));
    let kids = auth.rotate_keys();
    assert_ne!(kids["RS256"], json!(old_kid));
    assert_eq!(auth.kid("RS256"), kids["RS256"]);
    let after = auth.client_credentials("reader-bot", RESOURCE, "");
    let (header, _) = jwt_parts(&after);
    assert_eq!(header["kid"], kids["RS256"]);
    // The cached set does not know the new kid; the refetched one verifies old and new tokens.
    assert_eq!(verify(&after, &old_jwks), Err("unknown kid".to_string()));
    let new_jwks = auth.jwks();
    verify(&after, &new_jwks).unwrap();
    verify(&before, &new_jwks).unwrap();
    assert_eq!(new_jwks["keys"].as_array().unwrap().len(), 4);
    // A token signed by the new key is still a valid subject for an exchange.
    let (_, swapped) = jwt_parts(&auth.exchange(&after, RESOURCE));
    assert_eq!(swapped["sub"], "reader-bot");
}
