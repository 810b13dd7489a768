//! Identity end to end (issue 10): bearer JWTs, API keys, the development principal, the 401
//! and 403 answers byte by byte, RFC 9728 metadata, sessions bound to their principal, the
//! client's token never forwarded, and per-principal lists in both eras; through the real binary.

mod harness;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use harness::scripted::{self, read_request, Request, Scripted};
use harness::{
    eventually, metric_value, tool_names, Gateway, Mcp, Refused, Response, JSON_HEADERS,
};
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-of-thirty-two-bytes!!";
const ISS: &str = "https://issuer.example";
const AUD: &str = "http://127.0.0.1:8080/mcp";
const PRM_URL: &str = "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp";

fn b64(b: &[u8]) -> String {
    harness::b64url(b)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 JWT over `header` and `claims`, signed with `key`.
fn sign(header: &Value, claims: &Value, key: &[u8]) -> String {
    harness::hs256(header, claims, key)
}

fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": sub, "roles": roles, "scope": "mcp:tools",
           "iat": now(), "exp": now() + 600})
}

fn token(sub: &str, roles: &[&str]) -> String {
    sign(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims(sub, roles),
        SECRET.as_bytes(),
    )
}

/// The issue's example (auth-jwt.yaml) with a literal secret, plus an API key and `upstream`.
fn gateway_in_front_of(upstream: &str) -> Gateway {
    let key_hash = hex(ring::digest::digest(&ring::digest::SHA256, b"machine-key-1").as_ref());
    Gateway::builder()
        .upstream("demo", upstream)
        // Heads large enough for a 100 KB token to reach the identity phase (by default the
        // head limit refuses it first, 431).
        .limit("max_header_bytes", "256KiB")
        .yaml(&format!(
            "auth:\n  issuers:\n    - name: example\n      issuer: {ISS}\n      algorithms: [HS256]\n      secret: \"{SECRET}\"\n      claims: {{roles: roles}}\n  api_keys:\n    - {{name: ci-bot, sha256: \"{key_hash}\", roles: [admin]}}\n\
             servers:\n  - path: /mcp\n    upstream: demo\n    auth: {{resource: \"{AUD}\", issuers: [example]}}\n    rules:\n      - {{name: admins, effect: allow, roles: [admin]}}\n      - {{name: readers, effect: allow, roles: [reader], tools: [echo]}}\n"
        ))
        .start()
}

fn gateway() -> Gateway {
    gateway_in_front_of("builtin:demo")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn post(gw: &Gateway, extra: &[(&str, &str)], body: &Value) -> Response {
    let mut h = JSON_HEADERS.to_vec();
    h.extend_from_slice(extra);
    gw.client()
        .request("POST", "/mcp", &h, body.to_string().as_bytes())
}

fn initialize_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
}

#[test]
fn no_token_is_401_with_the_metadata_challenge_byte_for_byte() {
    let gw = gateway();
    let r = post(&gw, &[], &initialize_body());
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer resource_metadata=\"{PRM_URL}\"").as_str())
    );
    // The metadata it points at, served without a token, at the path-aware and the root URL.
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let m = gw.client().request("GET", path, &[], b"");
        assert_eq!(m.status, 200, "{path}: {}", m.text());
        let doc = m.json();
        assert_eq!(doc["resource"], AUD);
        assert_eq!(doc["authorization_servers"], json!([ISS]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
    // GET and DELETE need it too.
    for method in ["GET", "DELETE"] {
        let r = gw.client().request(
            method,
            "/mcp",
            &[("accept", "text/event-stream"), ("mcp-session-id", "x")],
            b"",
        );
        assert_eq!(r.status, 401, "{method}");
    }
}

#[test]
fn jwt_attacks_are_each_401_with_a_counted_reason() {
    let gw = gateway();
    let rsa_public_pem = include_bytes!("auth/rsa-public.pem");
    let alg = |a: &str| json!({"alg": a, "typ": "JWT"});
    let mut expired = claims("alice", &["reader"]);
    expired["exp"] = json!(now() - 3600);
    let mut future = claims("alice", &["reader"]);
    future["nbf"] = json!(now() + 3600);
    let mut wrong_aud = claims("alice", &["reader"]);
    wrong_aud["aud"] = json!("http://elsewhere/mcp");
    let mut wrong_iss = claims("alice", &["reader"]);
    wrong_iss["iss"] = json!("https://evil.example");
    let none = format!(
        "{}.{}.",
        b64(alg("none").to_string().as_bytes()),
        b64(claims("alice", &["admin"]).to_string().as_bytes())
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none, "alg_not_allowed"),
        (
            "HS256 keyed with an RSA public key",
            sign(&alg("HS256"), &claims("alice", &["admin"]), rsa_public_pem),
            "bad_signature",
        ),
        (
            "RS256 header on an HS256 issuer",
            sign(&alg("RS256"), &claims("a", &[]), SECRET.as_bytes()),
            "alg_not_allowed",
        ),
        (
            "wrong aud",
            sign(&alg("HS256"), &wrong_aud, SECRET.as_bytes()),
            "wrong_audience",
        ),
        (
            "wrong iss",
            sign(&alg("HS256"), &wrong_iss, SECRET.as_bytes()),
            "wrong_issuer",
        ),
        (
            "expired",
            sign(&alg("HS256"), &expired, SECRET.as_bytes()),
            "expired",
        ),
        (
            "future nbf",
            sign(&alg("HS256"), &future, SECRET.as_bytes()),
            "not_yet_valid",
        ),
        (
            "unknown kid",
            sign(
                &json!({"alg": "HS256", "kid": "nope"}),
                &claims("a", &[]),
                SECRET.as_bytes(),
            ),
            "unknown_kid",
        ),
        (
            "wrong secret",
            sign(&alg("HS256"), &claims("a", &[]), b"another-secret"),
            "bad_signature",
        ),
        ("garbage", "not.a.jwt!".into(), "token_malformed"),
        ("100 KB token", "a".repeat(100 * 1024), "token_too_large"),
    ];
    for (what, tok, reason) in &cases {
        let auth = format!("Bearer {tok}");
        let r = post(&gw, &[("authorization", &auth)], &initialize_body());
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
            "{what}: {challenge}"
        );
        assert!(
            challenge.contains(&format!("resource_metadata=\"{PRM_URL}\"")),
            "{what}: {challenge}"
        );
        let m = gw.metrics();
        let n = metric_value(
            &m,
            &format!("tollgate_auth_failures_total{{reason=\"{reason}\"}}"),
        );
        assert!(n >= 1.0, "{what}: {reason} not counted\n{m}");
    }
    // A token in the query string is refused even when it is valid.
    let good = token("alice", &["reader"]);
    let mut h = JSON_HEADERS.to_vec();
    let auth = format!("Bearer {good}");
    h.push(("authorization", &auth));
    let r = gw.client().request(
        "POST",
        &format!("/mcp?access_token={good}"),
        &h,
        initialize_body().to_string().as_bytes(),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let m = gw.metrics();
    assert_eq!(
        metric_value(
            &m,
            "tollgate_auth_failures_total{reason=\"token_in_query\"}"
        ),
        1.0
    );
}

/// An MCP client with a bearer token.
fn client(gw: &Gateway, tok: &str) -> Mcp {
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.bearer(tok);
    m
}

#[test]
fn readers_see_and_call_echo_only_admins_everything_and_api_keys_are_principals() {
    let gw = gateway();
    let mut reader = client(&gw, &token("alice", &["reader"]));
    reader.initialize("2025-06-18");
    let listed = reader.request("tools/list", json!({})).json();
    assert_eq!(tool_names(&listed), ["echo"]);
    let ok = reader
        .request(
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "hi"}}),
        )
        .json();
    assert_eq!(ok["result"]["content"][0]["text"], "hi", "{ok}");
    let hidden = reader
        .request(
            "tools/call",
            json!({"name": "add", "arguments": {"a": 1, "b": 2}}),
        )
        .json();
    assert_eq!(hidden["error"]["code"], -32602, "{hidden}");
    assert_eq!(hidden["error"]["message"], "Unknown tool: add");

    let mut admin = client(&gw, &token("bob", &["admin"]));
    admin.initialize("2025-06-18");
    assert!(tool_names(&admin.request("tools/list", json!({})).json()).len() >= 6);

    // The API key (X-API-Key) is the admin machine client.
    let mut bot = Mcp::new(gw.addr, "/mcp");
    bot.header("x-api-key", "machine-key-1");
    bot.initialize("2025-06-18");
    assert!(tool_names(&bot.request("tools/list", json!({})).json()).len() >= 6);
    let mut wrong = Mcp::new(gw.addr, "/mcp");
    wrong.header("x-api-key", "machine-key-2");
    let r = wrong.post_raw(initialize_body().to_string().as_bytes());
    assert_eq!(r.status, 401);

    // Each JWT was verified once (per worker that saw it) and then served from the cache; the
    // counts reach the metrics on the workers' one-second timer.
    let cache = |result: &str| {
        metric_value(
            &gw.metrics(),
            &format!("tollgate_auth_token_cache_total{{result=\"{result}\"}}"),
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || cache("hit") >= 3.0
            && cache("miss") >= 2.0),
        "hits {} misses {}",
        cache("hit"),
        cache("miss")
    );
}

#[test]
fn a_session_presented_by_another_principal_is_404() {
    let gw = gateway();
    let mut alice = client(&gw, &token("alice", &["reader"]));
    alice.initialize("2025-06-18");
    let mut mallory = client(&gw, &token("mallory", &["admin"]));
    mallory.session = alice.session.clone();
    mallory.version = "2025-06-18".into();
    let r = mallory.request("tools/list", json!({}));
    assert_eq!(r.status, 404, "{}", r.text());
    // Alice's own next token (another jti, same subject) keeps the session.
    let again = token("alice", &["reader"]);
    alice.bearer(&again);
    assert_eq!(alice.request("tools/list", json!({})).status, 200);
}

/// An upstream that records every request and answers like a tiny MCP server.
fn recording_upstream(seen: Arc<Mutex<Vec<Request>>>) -> Scripted {
    Scripted::start(move |mut s, _| {
        while let Some(req) = read_request(&mut s) {
            seen.lock().unwrap().push(req.clone());
            let reply = scripted::mcp_basics(&req).unwrap_or_else(|| {
                let v = req.json();
                let result = match v["method"].as_str().unwrap_or("") {
                    "tools/list" => {
                        json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]})
                    }
                    _ => json!({"content": [{"type": "text", "text": "ok"}]}),
                };
                scripted::json_response(&scripted::rpc_result(&v["id"], result))
            });
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

#[test]
fn the_upstream_never_sees_the_clients_token() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = recording_upstream(seen.clone());
    let gw = gateway_in_front_of(&up.url());
    let tok = token("alice", &["reader"]);
    let mut m = client(&gw, &tok);
    m.initialize("2025-06-18");
    let r = m
        .request("tools/call", json!({"name": "echo", "arguments": {}}))
        .json();
    assert_eq!(r["result"]["content"][0]["text"], "ok", "{r}");
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 2);
    for req in seen.iter() {
        assert!(req.header("authorization").is_none(), "{:?}", req.headers);
        for (n, v) in &req.headers {
            assert!(!v.contains(&tok), "token forwarded in {n}");
        }
        assert!(!String::from_utf8_lossy(&req.body).contains(&tok));
    }
}

#[test]
fn stateless_requests_are_authenticated_and_filtered_per_principal() {
    let gw = gateway();
    let list = |tok: Option<&str>| {
        let auth = tok.map(|t| format!("Bearer {t}"));
        let extra: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        gw.stateless("/mcp", "tools/list", None, json!({}), &extra)
    };
    assert_eq!(list(None).status, 401);
    let r = list(Some(&token("alice", &["reader"]))).json();
    assert_eq!(tool_names(&r), ["echo"]);
    assert_eq!(r["result"]["cacheScope"], "private");
    let r = list(Some(&token("bob", &["admin"]))).json();
    assert!(tool_names(&r).len() >= 6, "{r}");
}

#[test]
fn a_rego_policy_decides_each_call_with_the_principal_and_the_tools_annotations() {
    let policy =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/tollgate.rego");
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .yaml(&format!(
            "auth:\n  issuers:\n    - name: example\n      issuer: {ISS}\n      algorithms: [HS256]\n      secret: \"{SECRET}\"\n      claims: {{roles: roles}}\n\
             servers:\n  - path: /mcp\n    upstream: demo\n    auth: {{resource: \"{AUD}\", issuers: [example]}}\n    rego: {{policy: \"{}\"}}\n",
            policy.display()
        ))
        .start();
    let call = |m: &mut Mcp, name: &str| {
        m.request(
            "tools/call",
            json!({"name": name, "arguments": {"text": "x", "a": 1, "b": 2, "ms": 1}}),
        )
        .json()
    };
    let mut reader = client(&gw, &token("alice", &["reader"]));
    reader.initialize("2025-06-18");
    let r = call(&mut reader, "echo");
    assert_eq!(r["result"]["content"][0]["text"], "x", "{r}");
    // add is read-only: not for readers; slow is destructive (the MCP default): admins only.
    let r = call(&mut reader, "add");
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert_eq!(
        r["result"]["content"][0]["text"],
        "Your role does not allow this tool."
    );
    let r = call(&mut reader, "slow");
    assert_eq!(
        r["result"]["content"][0]["text"], "This tool changes data; only an admin may call it.",
        "{r}"
    );
    let mut admin = client(&gw, &token("bob", &["admin"]));
    admin.initialize("2025-06-18");
    let r = call(&mut admin, "add");
    assert_eq!(r["result"]["content"][0]["text"], "3", "{r}");
    // The reader's denials are counted by their record phase, after each answer was written
    // (the admin's requests may be served by another worker meanwhile).
    gw.await_metric(
        "tollgate_authz_decisions_total{decision=\"deny\",reason=\"rego\"}",
        |n| n >= 2.0,
    );
}

/// `config/examples/auth-jwt.yaml` as shipped (only its port made ephemeral), with tokens from
/// `tollgate mint-token` and an API key hash from `tollgate hash-key`.
#[test]
fn the_auth_jwt_example_works_with_minted_tokens() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(dir.join("config/examples/auth-jwt.yaml")).unwrap();
    let example = example.replace("address: \"127.0.0.1:8080\"", "address: \"127.0.0.1:0\"");
    assert!(example.contains("127.0.0.1:0"));
    let secret = "an-example-secret-of-thirty-two-bytes";
    let gw = Gateway::builder()
        .env("TOLLGATE_JWT_SECRET", secret)
        .yaml(&example)
        .start();
    let mint = |sub: &str, roles: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args([
                "mint-token",
                "--iss",
                ISS,
                "--aud",
                AUD,
                "--sub",
                sub,
                "--roles",
                roles,
            ])
            .env("TOLLGATE_JWT_SECRET", secret)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let mut reader = client(&gw, &mint("alice", "reader"));
    reader.initialize("2025-06-18");
    assert_eq!(
        tool_names(&reader.request("tools/list", json!({})).json()),
        ["echo"]
    );
    let mut admin = client(&gw, &mint("bob", "admin"));
    admin.initialize("2025-06-18");
    assert!(tool_names(&admin.request("tools/list", json!({})).json()).len() >= 6);

    let mut hk = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    hk.stdin
        .take()
        .unwrap()
        .write_all(b"machine-key-1\n")
        .unwrap();
    let out = hk.wait_with_output().unwrap();
    let want = hex(ring::digest::digest(&ring::digest::SHA256, b"machine-key-1").as_ref());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), want);
}

/// A rule that needs an OAuth scope the token lacks: 403 with `insufficient_scope` naming it
/// (the client can ask for it), byte for byte; with the scope, the call goes through.
#[test]
fn a_missing_scope_is_403_insufficient_scope_naming_it() {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .yaml(&format!(
            "auth:\n  issuers:\n    - name: example\n      issuer: {ISS}\n      algorithms: [HS256]\n      secret: \"{SECRET}\"\n\
             servers:\n  - path: /mcp\n    upstream: demo\n    auth: {{resource: \"{AUD}\", issuers: [example]}}\n    rules:\n      - {{name: writers, effect: allow, tools: [echo], scopes: [\"tools:write\"]}}\n"
        ))
        .start();
    let mut c = claims("alice", &[]);
    c["scope"] = json!("mcp:tools");
    let without = sign(&json!({"alg": "HS256"}), &c, SECRET.as_bytes());
    let mut m = client(&gw, &without);
    m.initialize("2025-06-18");
    let r = m.request(
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "x"}}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!(
            "Bearer error=\"insufficient_scope\", scope=\"tools:write\", resource_metadata=\"{PRM_URL}\", error_description=\"the access token lacks the scope tools:write\""
        )
        .as_str())
    );
    c["scope"] = json!("mcp:tools tools:write");
    let with = sign(&json!({"alg": "HS256"}), &c, SECRET.as_bytes());
    let mut m = client(&gw, &with);
    m.initialize("2025-06-18");
    let r = m
        .request(
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "x"}}),
        )
        .json();
    assert_eq!(r["result"]["content"][0]["text"], "x", "{r}");
}

/// `servers[].auth.scopes`: required of every request; a token without them is 403.
#[test]
fn an_endpoints_required_scopes_are_checked_on_every_request() {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .yaml(&format!(
            "auth:\n  issuers:\n    - name: example\n      issuer: {ISS}\n      algorithms: [HS256]\n      secret: \"{SECRET}\"\n\
             servers:\n  - path: /mcp\n    upstream: demo\n    auth: {{resource: \"{AUD}\", issuers: [example], scopes: [\"mcp:tools\", \"mcp:admin\"]}}\n"
        ))
        .start();
    let r = post(
        &gw,
        &[("authorization", &format!("Bearer {}", token("a", &[])))],
        &initialize_body(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains("error=\"insufficient_scope\", scope=\"mcp:admin\""),
        "{challenge}"
    );
    // The 401 names the scopes to ask for.
    let r = post(&gw, &[], &initialize_body());
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!("Bearer resource_metadata=\"{PRM_URL}\", scope=\"mcp:tools mcp:admin\"")
                .as_str()
        )
    );
    let mut c = claims("a", &[]);
    c["scope"] = json!("mcp:tools mcp:admin");
    let ok = sign(&json!({"alg": "HS256"}), &c, SECRET.as_bytes());
    let r = post(
        &gw,
        &[("authorization", &format!("Bearer {ok}"))],
        &initialize_body(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A legacy HTTP+SSE stream takes POSTs only from the principal that opened it: another
/// principal who learned its session id is told it does not exist.
#[test]
fn a_legacy_stream_is_bound_to_the_principal_that_opened_it() {
    use std::io::{BufRead, BufReader};
    let gw = gateway();
    let alice = token("alice", &["reader"]);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET /mcp/sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nAuthorization: Bearer {alice}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let endpoint = loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream closed");
        if let Some(d) = line.strip_prefix("data: ") {
            break d.trim().to_string();
        }
    };
    assert!(endpoint.contains("sessionId="), "{endpoint}");
    let post = |tok: &str| {
        let auth = format!("Bearer {tok}");
        gw.client().request(
            "POST",
            &endpoint,
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            initialize_body().to_string().as_bytes(),
        )
    };
    assert_eq!(post(&token("mallory", &["admin"])).status, 404);
    assert_eq!(post(&alice).status, 202);
}

/// On an authenticated endpoint in the 2026-07-28 revision, the gateway's upstream sessions are
/// shared by every caller, so it cannot tell whose tasks an upstream lists: tasks/list is
/// refused rather than showing others' tasks.
#[test]
fn stateless_tasks_list_is_refused_where_callers_share_upstream_sessions() {
    let gw = gateway();
    let auth = format!("Bearer {}", token("bob", &["admin"]));
    let r = gw.stateless(
        "/mcp",
        "tasks/list",
        None,
        json!({}),
        &[("authorization", &auth)],
    );
    let v = r.json();
    assert_eq!(v["error"]["code"], -32601, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tasks/list"),
        "{v}"
    );
}

// ---- opaque tokens through a scripted introspection endpoint (RFC 7662) ----

const INTRO_ID: &str = "tollgate gw";
const INTRO_SECRET: &str = "s3cret:with&odd=chars";

/// An introspection endpoint that records every request and answers by the form's token:
/// `good-*` active for AUD (roles from the answer), `other-aud` active for another resource,
/// anything else inactive.
fn introspection_endpoint(seen: Arc<Mutex<Vec<Request>>>, status: &'static str) -> Scripted {
    Scripted::start(move |mut s, _| {
        while let Some(req) = read_request(&mut s) {
            seen.lock().unwrap().push(req.clone());
            let form = String::from_utf8_lossy(&req.body).to_string();
            let token = form
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .unwrap_or("");
            let answer = if token.starts_with("good-") {
                json!({"active": true, "iss": ISS, "aud": [AUD], "sub": token, "client_id": "app",
                       "scope": "mcp:tools", "roles": ["reader"], "exp": now() + 600})
            } else if token == "other-aud" {
                json!({"active": true, "iss": ISS, "aud": "https://elsewhere/mcp", "sub": "x",
                       "exp": now() + 600})
            } else {
                json!({"active": false})
            };
            let body = answer.to_string();
            let reply = scripted::response(
                status,
                &[("content-type", "application/json")],
                body.as_bytes(),
            );
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

/// One worker (the caches are per worker), an opaque-only issuer introspected at `endpoint`.
fn opaque_gateway(endpoint: &str, max_cache: &str) -> Gateway {
    Gateway::builder()
        .workers(1)
        .upstream("demo", "builtin:demo")
        .yaml(&format!(
            "auth:\n  issuers:\n    - name: corp\n      issuer: \"{ISS}\"\n      introspection:\n        endpoint: \"{endpoint}\"\n        client_id: \"{INTRO_ID}\"\n        client_secret: \"{INTRO_SECRET}\"\n        max_cache: {max_cache}\n        negative_cache: 1h\n        timeout: 2s\n\
             servers:\n  - path: /mcp\n    upstream: demo\n    auth: {{resource: \"{AUD}\"}}\n    rules:\n      - {{name: readers, effect: allow, roles: [reader], tools: [echo]}}\n"
        ))
        .start()
}

fn ping_with(gw: &Gateway, token: &str) -> Response {
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.bearer(token);
    m.post_raw(br#"{"jsonrpc":"2.0","id":0,"method":"ping"}"#)
}

fn calls_for(seen: &Mutex<Vec<Request>>, token: &str) -> usize {
    let want = format!("token={token}&");
    seen.lock()
        .unwrap()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).starts_with(&want))
        .count()
}

#[test]
fn opaque_tokens_are_introspected_once_then_cached_for_a_bounded_time() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let endpoint = introspection_endpoint(seen.clone(), "200 OK");
    let gw = opaque_gateway(&format!("http://{}/oauth/introspect", endpoint.addr), "3s");
    // Many requests with one token, one introspection (the per-worker cache).
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.bearer("good-alice");
    m.initialize("2025-06-18");
    let listed = m.request("tools/list", json!({})).json();
    assert_eq!(
        listed["result"]["tools"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(listed["result"]["tools"][0]["name"], "echo");
    for _ in 0..5 {
        assert_eq!(m.request("ping", json!({})).status, 200);
    }
    assert_eq!(calls_for(&seen, "good-alice"), 1, "{}", gw.log.text());
    // The request as RFC 7662 §2.1 and client_secret_basic (RFC 6749 §2.3.1) say.
    let first = seen.lock().unwrap()[0].clone();
    assert_eq!(first.method, "POST");
    assert_eq!(first.target, "/oauth/introspect");
    assert_eq!(
        first.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        String::from_utf8_lossy(&first.body),
        "token=good-alice&token_type_hint=access_token"
    );
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("tollgate+gw:s3cret%3Awith%26odd%3Dchars")
    );
    assert_eq!(first.header("authorization"), Some(expected.as_str()));
    // max_cache (3s) bounds the trust in an active answer though exp is 10 minutes away: once
    // it has passed, the next request asks again. The cache counts whole Unix seconds, so the
    // answer is trusted 2 to 3 s: the requests above fit in 2 s, and 4.1 s is past 3.
    std::thread::sleep(std::time::Duration::from_millis(4100));
    assert_eq!(m.request("ping", json!({})).status, 200);
    assert_eq!(calls_for(&seen, "good-alice"), 2);

    // An inactive token: 401, and remembered (negative_cache 1h): asked about once.
    for _ in 0..3 {
        let r = ping_with(&gw, "revoked-token");
        assert_eq!(r.status, 401);
        assert!(
            r.header("www-authenticate")
                .unwrap_or("")
                .contains("error_description=\"the token is not active\""),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(calls_for(&seen, "revoked-token"), 1);
    // Active, but for another resource: 401 wrong audience (remembered too).
    assert_eq!(ping_with(&gw, "other-aud").status, 401);
    assert_eq!(ping_with(&gw, "other-aud").status, 401);
    assert_eq!(calls_for(&seen, "other-aud"), 1);
    let scrape = gw.metrics();
    for (series, want) in [
        ("tollgate_auth_introspections_total{result=\"active\"}", 2.0),
        (
            "tollgate_auth_introspections_total{result=\"inactive\"}",
            1.0,
        ),
        // other-aud: active, then refused for its audience.
        (
            "tollgate_auth_introspections_total{result=\"refused\"}",
            1.0,
        ),
        ("tollgate_auth_introspections_total{result=\"error\"}", 0.0),
        (
            "tollgate_auth_failures_total{reason=\"token_inactive\"}",
            3.0,
        ),
        (
            "tollgate_auth_failures_total{reason=\"wrong_audience\"}",
            2.0,
        ),
    ] {
        assert_eq!(metric_value(&scrape, series), want, "{series}\n{scrape}");
    }
}

#[test]
fn an_introspection_endpoint_that_fails_refuses_the_request() {
    let closed = Refused::new();
    let down = format!("http://{}/introspect", closed.addr());
    let gw = opaque_gateway(&down, "60s");
    let r = ping_with(&gw, "good-bob");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.header("www-authenticate")
            .unwrap_or("")
            .contains("error_description=\"the token could not be introspected\""),
        "{:?}",
        r.headers
    );
    let scrape = gw.metrics();
    assert_eq!(
        metric_value(
            &scrape,
            "tollgate_auth_introspections_total{result=\"error\"}"
        ),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        metric_value(
            &scrape,
            "tollgate_auth_failures_total{reason=\"introspection_failed\"}"
        ),
        1.0
    );
    // The gateway writes the line before it answers, but the harness reads its stderr on a
    // thread of its own, which may not have read the pipe yet: wait for it (bounded).
    assert!(
        eventually(Duration::from_secs(10), || gw
            .log
            .text()
            .contains("token introspection failed")),
        "{}",
        gw.log.text()
    );

    // A 5xx: refused too, and not cached (each request asks again).
    let seen = Arc::new(Mutex::new(Vec::new()));
    let broken = introspection_endpoint(seen.clone(), "503 Service Unavailable");
    let gw = opaque_gateway(&format!("http://{}/introspect", broken.addr), "60s");
    assert_eq!(ping_with(&gw, "good-carol").status, 401);
    assert_eq!(ping_with(&gw, "good-carol").status, 401);
    assert_eq!(calls_for(&seen, "good-carol"), 2);
    assert_eq!(
        metric_value(
            &gw.metrics(),
            "tollgate_auth_introspections_total{result=\"error\"}"
        ),
        2.0
    );
}

/// An issuer's JWK set of HS256 (`oct`) keys at `/jwks`: the first fetch waits for `release`,
/// which says whether it is answered (else 503); then it serves `k1`, and `k1` and `k2` once
/// `rotated` is set. `fetches` counts the fetches.
fn jwks_endpoint(
    release: std::sync::mpsc::Receiver<bool>,
    rotated: Arc<std::sync::atomic::AtomicBool>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
) -> Scripted {
    use std::sync::atomic::Ordering;
    let release = Mutex::new(release);
    // One request per connection: the fetcher asks for `connection: close` and reads to the end.
    Scripted::start(move |mut s, _| {
        if read_request(&mut s).is_none() {
            return;
        }
        if fetches.fetch_add(1, Ordering::SeqCst) == 0 && !release.lock().unwrap().recv().unwrap() {
            let _ = s.write_all(&scripted::response("503 Service Unavailable", &[], b""));
            return;
        }
        let jwk = |kid: &str, secret: &[u8]| json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": b64(secret)});
        let mut keys = vec![jwk("k1", ROTATED[0])];
        if rotated.load(Ordering::SeqCst) {
            keys.push(jwk("k2", ROTATED[1]));
        }
        let body = json!({ "keys": keys }).to_string();
        let reply = scripted::response(
            "200 OK",
            &[
                ("content-type", "application/json"),
                ("cache-control", "max-age=3600"),
            ],
            body.as_bytes(),
        );
        let _ = s.write_all(&reply);
    })
}

/// The secrets of `jwks_endpoint`'s keys `k1` and `k2`.
const ROTATED: [&[u8]; 2] = [
    b"the-first-key-of-thirty-two-bytes!!",
    b"the-second-key-of-thirty-two-bytes!",
];

#[test]
fn a_rotation_right_after_a_slow_or_failed_first_key_fetch_is_fetched_at_once() {
    for first_fetch_answered in [true, false] {
        rotation_after_a_slow_start(first_fetch_answered);
    }
}

fn rotation_after_a_slow_start(first_fetch_answered: bool) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (release, held) = std::sync::mpsc::channel();
    let rotated = Arc::new(AtomicBool::new(false));
    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks = jwks_endpoint(held, rotated.clone(), fetches.clone());
    // An unknown kid may make it fetch once an hour: a second ask-made fetch in this test is
    // never the interval running out.
    let gw = Gateway::builder()
        .workers(1)
        .upstream("demo", "builtin:demo")
        .yaml(&format!(
            "auth:\n  issuers:\n    - name: rotating\n      issuer: {ISS}\n      algorithms: [HS256]\n      jwks_url: \"http://{}/jwks\"\n      claims: {{roles: roles}}\n  key_refresh: {{unknown_kid_interval: 1h, timeout: 1m}}\n\
             servers:\n  - path: /mcp\n    upstream: demo\n    auth: {{resource: \"{AUD}\", issuers: [rotating]}}\n    rules:\n      - {{name: readers, effect: allow, roles: [reader], tools: [echo]}}\n",
            jwks.addr
        ))
        .start();
    let signed = |kid: &str, secret: &[u8]| {
        sign(
            &json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
            &claims("alice", &["reader"]),
            secret,
        )
    };
    let accepted = |token: &str| {
        let bearer = format!("Bearer {token}");
        post(&gw, &[("authorization", &bearer)], &initialize_body()).status == 200
    };
    let case = if first_fetch_answered {
        "first fetch slow"
    } else {
        "first fetch failed"
    };
    // The first fetch is under way and held: a request now finds no keys (and asks for them).
    assert!(eventually(Duration::from_secs(10), || fetches
        .load(Ordering::SeqCst)
        == 1));
    let first = signed("k1", ROTATED[0]);
    let r = ping_with(&gw, &first);
    assert_eq!(r.status, 401, "{case}: {}", r.text());
    assert!(
        r.header("www-authenticate")
            .unwrap_or("")
            .contains("keys are not available"),
        "{case}: {:?}",
        r.headers
    );
    // Answered, or failed (then the ask fetches again at once rather than after the backoff).
    release.send(first_fetch_answered).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || accepted(&first)),
        "{case}: {}",
        gw.log.text()
    );
    // The issuer rotates: the new kid is fetched at once. (Had the ask of the request that came
    // before the first keys spent the interval, it would wait an hour.)
    rotated.store(true, Ordering::SeqCst);
    let second = signed("k2", ROTATED[1]);
    assert!(
        eventually(Duration::from_secs(10), || accepted(&second)),
        "{case}: {}",
        gw.log.text()
    );
    let failed = usize::from(!first_fetch_answered);
    assert_eq!(fetches.load(Ordering::SeqCst), 2 + failed, "{case}");
    // A refresh is counted after its keys were handed to the workers: the request they let in
    // may be answered first.
    gw.await_metric(
        "tollgate_auth_key_refreshes_total{issuer=\"rotating\",result=\"ok\"}",
        |n| n == 2.0,
    );
}
