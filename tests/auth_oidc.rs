//! tollgate as an OAuth 2.1 resource server in front of a real authorization server
//! (`oidc-provider`, tests/auth/as.mjs): keys found through discovery and fetched in the
//! background, real RS256 tokens from client credentials, a key rotation followed through an
//! unknown `kid`, and the official clients: the Python SDK (2.x) discovering the authorization
//! server through tollgate's RFC 9728 metadata and running the code flow, and the TypeScript
//! SDKs (1.x and 2.x) with a bearer token.

mod harness;

#[path = "support/auth_server.rs"]
mod auth_server;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use auth_server::{AuthOptions, AuthServer};
use harness::{eventually, free_port, metric_value, tool_names, Gateway, Mcp};
use serde_json::{json, Value};

/// A resource the authorization server also issues tokens for: not this endpoint.
const OTHER: &str = "http://127.0.0.1:9/other/mcp";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The AS issuing tokens for `http://127.0.0.1:PORT/mcp`, and tollgate on PORT finding its keys
/// through discovery; readers may call only echo, admins everything.
fn setup() -> Option<(AuthServer, Gateway, String)> {
    let port = free_port();
    let resource = format!("http://127.0.0.1:{port}/mcp");
    let opts = AuthOptions {
        resources: &[resource.as_str(), OTHER],
        ..AuthOptions::default()
    };
    let auth = AuthServer::try_start_with(&opts)?;
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .yaml(&format!(
            "listen:\n  address: 127.0.0.1:{port}\n\
             auth:\n  issuers:\n    - name: oidc\n      issuer: \"{issuer}\"\n      discovery: true\n      algorithms: [RS256, ES256]\n      claims: {{roles: roles, tenant: tenant}}\n\
             servers:\n  - path: /mcp\n    upstream: demo\n    auth: {{resource: \"{resource}\", issuers: [oidc]}}\n    rules:\n      - {{name: admins, effect: allow, roles: [admin]}}\n      - {{name: readers, effect: allow, roles: [reader], tools: [echo]}}\n",
            issuer = auth.issuer(),
        ))
        .start();
    Some((auth, gw, resource))
}

/// Lists the tools with `token` once the gateway has the keys (they are fetched in the
/// background: the first requests may find none yet).
fn list_with(gw: &Gateway, token: &str) -> Value {
    let mut listed = Value::Null;
    let ok = eventually(Duration::from_secs(15), || {
        let mut m = Mcp::new(gw.addr, "/mcp");
        m.bearer(token);
        let body = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name":"t","version":"1"}}});
        let r = m.post_raw(body.to_string().as_bytes());
        if r.status != 200 {
            return false;
        }
        m.session = r.header("mcp-session-id").map(str::to_string);
        listed = m.request("tools/list", json!({})).json();
        true
    });
    assert!(ok, "the token was never accepted:\n{}", gw.log.text());
    listed
}

#[test]
fn tokens_from_a_real_authorization_server_are_verified_with_discovered_keys() {
    let Some((mut auth, gw, resource)) = setup() else {
        return;
    };
    let reader = auth.client_credentials("reader-bot", &resource, "");
    assert_eq!(tool_names(&list_with(&gw, &reader)), ["echo"]);
    let admin = auth.client_credentials("admin-bot", &resource, "");
    assert!(tool_names(&list_with(&gw, &admin)).len() >= 6);
    // A token for another resource is not for this endpoint.
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.bearer(&auth.client_credentials("reader-bot", OTHER, ""));
    let r = m.post_raw(br#"{"jsonrpc":"2.0","id":0,"method":"ping"}"#);
    assert_eq!(r.status, 401);

    // The issuer rotates its keys: a token with the new kid makes the gateway fetch the key
    // set again (unknown kid), and is then accepted.
    auth.rotate_keys();
    let fresh = auth.client_credentials("admin-bot", &resource, "");
    assert!(tool_names(&list_with(&gw, &fresh)).len() >= 6);
    // A refresh is counted after its keys were handed to the workers: the request they let in
    // may be answered first.
    gw.await_metric(
        "tollgate_auth_key_refreshes_total{issuer=\"oidc\",result=\"ok\"}",
        |n| n >= 2.0,
    );
}

#[test]
fn the_python_sdk_finds_the_authorization_server_through_tollgate_and_calls_a_tool() {
    let Some((_auth, gw, resource)) = setup() else {
        return;
    };
    let python = repo().join(".tools/py-mcp2/bin/python");
    for mode in ["legacy", "2026-07-28"] {
        let out = Command::new(&python)
            .arg(repo().join("tests/clients/oauth_client.py"))
            .args([
                "--url",
                &resource,
                "--tool",
                "echo",
                "--arguments",
                r#"{"text": "hi"}"#,
            ])
            .args(["--expect-tool", "echo", "--mode", mode])
            .output()
            .expect("run oauth_client.py");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {stdout}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            gw.log.text()
        );
    }
}

#[test]
fn the_typescript_sdks_call_with_a_bearer_token() {
    let Some((auth, _gw, resource)) = setup() else {
        return;
    };
    let node = repo().join(".tools/node/node_modules/.bin/node");
    let reader = auth.client_credentials("reader-bot", &resource, "");
    for sdk in ["sdk1", "sdk2"] {
        let out = Command::new(&node)
            .arg(repo().join("tests/clients/ts/bearer_client.mjs"))
            .args([sdk, &resource, &reader, "echo", "add"])
            .output()
            .expect("run bearer_client.mjs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{sdk}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.matches("\nok ").count() + usize::from(stdout.starts_with("ok ")),
            4,
            "{stdout}"
        );
    }
}

/// What a recording upstream saw: per request, its JSON-RPC method (the HTTP method for a
/// body without one: DELETE) and its Authorization header.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

/// An upstream that records the Authorization header of every request it gets and answers
/// like a tiny MCP server.
fn recording_upstream(seen: Seen) -> harness::scripted::Scripted {
    use harness::scripted::{self, read_request};
    use std::io::Write;
    harness::scripted::Scripted::start(move |mut s, _| {
        while let Some(req) = read_request(&mut s) {
            let method = match req.rpc_method() {
                m if m.is_empty() => req.method.clone(),
                m => m,
            };
            seen.lock()
                .unwrap()
                .push((method, req.header("authorization").map(str::to_string)));
            let v = req.json();
            // The client's revision (2025-03-26 too: batches), as a server that speaks it.
            let init = (v["method"] == "initialize").then(|| {
                let mut r = scripted::initialize_result();
                r["protocolVersion"] = v["params"]["protocolVersion"].clone();
                scripted::json_response(&scripted::rpc_result(&v["id"], r))
            });
            let reply = init
                .or_else(|| scripted::mcp_basics(&req))
                .unwrap_or_else(|| {
                    let result = match v["method"].as_str().unwrap_or("") {
                        "tools/list" => {
                            json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]})
                        }
                        // It speaks the stateless revision too (2026-07-28 clients reach it so).
                        "server/discover" => json!({
                            "supportedVersions": ["2026-07-28"],
                            "capabilities": {"tools": {}},
                            "serverInfo": {"name": "recording", "version": "1"}
                        }),
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

/// Each upstream gets a token of its own from the authorization server, never the caller's:
/// one by token exchange for the caller (RFC 8693: the caller's subject, the upstream's
/// audience, the gateway as actor) behind /mcp, one by the gateway's client credentials
/// behind /machine. (Federated endpoints: `a_federated_member_gets_tokens_exchanged_for_each_caller`.)
#[test]
fn upstreams_get_their_own_tokens_by_exchange_and_client_credentials() {
    let port = free_port();
    let resource = format!("http://127.0.0.1:{port}/mcp");
    let (ex_aud, cc_aud) = (
        "http://127.0.0.1:9/exchanged/mcp",
        "http://127.0.0.1:9/machine/mcp",
    );
    let opts = AuthOptions {
        resources: &[resource.as_str(), ex_aud, cc_aud],
        ..AuthOptions::default()
    };
    let Some(auth) = AuthServer::try_start_with(&opts) else {
        return;
    };
    let seen_ex = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_cc = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (up_ex, up_cc) = (
        recording_upstream(seen_ex.clone()),
        recording_upstream(seen_cc.clone()),
    );
    let gw = Gateway::builder()
        .yaml(&format!(
            "listen:\n  address: 127.0.0.1:{port}\n\
             auth:\n  issuers:\n    - name: oidc\n      issuer: \"{issuer}\"\n      discovery: true\n      algorithms: [RS256]\n\
             upstreams:\n  - name: ex\n    url: \"{ex_url}\"\n    credentials:\n      token_exchange: {{token_url: \"{token}\", client_id: gateway, client_secret: \"{gw_secret}\", resource: \"{ex_aud}\"}}\n\
             \x20 - name: cc\n    url: \"{cc_url}\"\n    credentials:\n      client_credentials: {{token_url: \"{token}\", client_id: admin-bot, client_secret: \"{cc_secret}\", resource: \"{cc_aud}\"}}\n\
             servers:\n  - path: /mcp\n    upstream: ex\n    auth: {{resource: \"{resource}\", issuers: [oidc]}}\n  - path: /machine\n    upstream: cc\n    auth: {{resource: \"{resource}\", issuers: [oidc]}}\n",
            issuer = auth.issuer(),
            token = auth.token_endpoint(),
            gw_secret = auth.client_secret("gateway"),
            cc_secret = auth.client_secret("admin-bot"),
            ex_url = up_ex.url(),
            cc_url = up_cc.url(),
        ))
        .start();
    let caller = auth.client_credentials("reader-bot", &resource, "");
    let listed = list_with(&gw, &caller);
    assert_eq!(tool_names(&listed), ["echo"], "{listed}\n{}", gw.log.text());
    for path in ["/mcp", "/machine"] {
        let mut m = Mcp::new(gw.addr, path);
        m.bearer(&caller);
        m.initialize("2025-06-18");
        let r = m
            .request("tools/call", json!({"name": "echo", "arguments": {}}))
            .json();
        assert_eq!(
            r["result"]["content"][0]["text"],
            "ok",
            "{path}: {r}\n{}",
            gw.log.text()
        );
    }
    let token_of = |seen: &std::sync::Mutex<Vec<(String, Option<String>)>>| -> Value {
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        let mut claims = Vec::new();
        for (_, a) in seen.iter() {
            let a = a
                .as_deref()
                .expect("every upstream request carries the gateway's token");
            let t = a.strip_prefix("Bearer ").expect("a bearer token");
            assert_ne!(t, caller, "the caller's token reached an upstream");
            claims.push(auth_server::jwt_parts(t).1);
        }
        claims.pop().unwrap()
    };
    let ex = token_of(&seen_ex);
    assert_eq!(ex["aud"], ex_aud, "{ex}");
    assert_eq!(ex["sub"], "reader-bot", "{ex}");
    assert_eq!(ex["act"]["sub"], "gateway", "{ex}");
    let cc = token_of(&seen_cc);
    assert_eq!(cc["aud"], cc_aud, "{cc}");
    assert_eq!(cc["sub"], "admin-bot", "{cc}");
}

/// Every request in `seen` (method, Authorization) reached the member with a token exchanged
/// for `who` (its subject, the member's audience `aud`, the gateway as actor), never `caller`'s
/// own token.
fn assert_exchanged_for(who: &str, caller: &str, aud: &str, seen: &[(String, Option<String>)]) {
    for (method, a) in seen {
        let a = a
            .as_deref()
            .unwrap_or_else(|| panic!("{who}: {method} reached ex without a token"));
        let t = a.strip_prefix("Bearer ").expect("a bearer token");
        assert_ne!(
            t, caller,
            "{who}: the caller's own token reached ex ({method})"
        );
        let claims = auth_server::jwt_parts(t).1;
        assert_eq!(claims["sub"], who, "{method}: {claims}");
        assert_eq!(claims["aud"], aud, "{method}: {claims}");
        assert_eq!(claims["act"]["sub"], "gateway", "{method}: {claims}");
    }
}

/// A federated endpoint's own requests to its members (initialize, the aggregated list and the
/// routing table behind it, routed calls, a batch, DELETE) are made on behalf of the caller: the
/// member with `token_exchange` gets a token exchanged for that caller (its subject, the
/// member's audience, the gateway as actor), never the caller's own, and a second caller gets
/// one of its own subject (no token reused across callers); the member without credentials
/// gets no Authorization at all.
#[test]
fn a_federated_member_gets_tokens_exchanged_for_each_caller() {
    let port = free_port();
    let resource = format!("http://127.0.0.1:{port}/fed");
    let ex_aud = "http://127.0.0.1:9/exchanged/mcp";
    let opts = AuthOptions {
        resources: &[resource.as_str(), ex_aud],
        ..AuthOptions::default()
    };
    let Some(auth) = AuthServer::try_start_with(&opts) else {
        return;
    };
    let seen_ex: Seen = Default::default();
    let seen_plain: Seen = Default::default();
    let (up_ex, up_plain) = (
        recording_upstream(seen_ex.clone()),
        recording_upstream(seen_plain.clone()),
    );
    let gw = Gateway::builder()
        .yaml(&format!(
            "listen:\n  address: 127.0.0.1:{port}\n\
             auth:\n  issuers:\n    - name: oidc\n      issuer: \"{issuer}\"\n      discovery: true\n      algorithms: [RS256]\n  api_keys:\n    - {{name: ci-bot, sha256: \"{key_hash}\"}}\n\
             upstreams:\n  - name: ex\n    url: \"{ex_url}\"\n    credentials:\n      token_exchange: {{token_url: \"{token}\", client_id: gateway, client_secret: \"{gw_secret}\", resource: \"{ex_aud}\"}}\n\
             \x20 - name: plain\n    url: \"{plain_url}\"\n\
             servers:\n  - path: /fed\n    upstreams: [ex, plain]\n    auth: {{resource: \"{resource}\", issuers: [oidc]}}\n",
            issuer = auth.issuer(),
            token = auth.token_endpoint(),
            gw_secret = auth.client_secret("gateway"),
            ex_url = up_ex.url(),
            plain_url = up_plain.url(),
            key_hash = hex_sha256(b"machine-key-1"),
        ))
        .start();
    for who in ["reader-bot", "admin-bot"] {
        let caller = auth.client_credentials(who, &resource, "");
        // The keys are fetched in the background: the first attempts may find none yet (each
        // on a connection of its own: the gateway may close one it refused).
        let mut m = Mcp::new(gw.addr, "/fed");
        let body = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name":"t","version":"1"}}});
        let ok = eventually(Duration::from_secs(15), || {
            m = Mcp::new(gw.addr, "/fed");
            m.bearer(&caller);
            let Some(r) = m.try_send("POST", body.to_string().as_bytes()) else {
                return false;
            };
            m.session = r.header("mcp-session-id").map(str::to_string);
            r.status == 200
        });
        assert!(ok, "{who}: never initialized:\n{}", gw.log.text());
        m.version = "2025-03-26".to_string();
        let listed = m.request("tools/list", json!({})).json();
        assert_eq!(
            tool_names(&listed),
            ["ex__echo", "plain__echo"],
            "{who}: {listed}\n{}",
            gw.log.text()
        );
        for tool in ["ex__echo", "plain__echo"] {
            let r = m
                .request("tools/call", json!({"name": tool, "arguments": {}}))
                .json();
            assert_eq!(r["result"]["content"][0]["text"], "ok", "{who} {tool}: {r}");
        }
        let batch = json!([
            {"jsonrpc":"2.0","id":"b1","method":"tools/call","params":{"name":"ex__echo","arguments":{}}},
            {"jsonrpc":"2.0","id":"b2","method":"tools/call","params":{"name":"plain__echo","arguments":{}}}
        ]);
        let r = m.post_raw(batch.to_string().as_bytes()).json();
        let answers = r.as_array().unwrap_or_else(|| panic!("{who}: batch: {r}"));
        assert_eq!(answers.len(), 2, "{r}");
        assert!(
            answers
                .iter()
                .all(|a| a["result"]["content"][0]["text"] == "ok"),
            "{r}"
        );
        let path = m.path.clone();
        let headers: Vec<(String, String)> = m
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let r = m.http.request("DELETE", &path, &headers, b"");
        assert!(r.status < 300, "{who}: DELETE: {}", r.text());

        // What the member with token_exchange saw, for this caller only.
        let seen: Vec<_> = std::mem::take(&mut *seen_ex.lock().unwrap());
        let methods: Vec<&str> = seen.iter().map(|(m, _)| m.as_str()).collect();
        for want in ["initialize", "tools/list", "tools/call", "DELETE"] {
            assert!(
                methods.contains(&want),
                "{who}: no {want} reached ex: {methods:?}"
            );
        }
        // Two calls of its own: the routed one and the batch's.
        assert_eq!(
            methods.iter().filter(|m| **m == "tools/call").count(),
            2,
            "{methods:?}"
        );
        assert_exchanged_for(who, &caller, ex_aud, &seen);
        let plain: Vec<_> = std::mem::take(&mut *seen_plain.lock().unwrap());
        assert!(plain.iter().any(|(m, _)| m == "tools/call"), "{plain:?}");
        assert!(
            plain.iter().all(|(_, a)| a.is_none()),
            "{who}: the member without credentials got a token: {plain:?}"
        );
    }

    // The stateless revision (2026-07-28): each request stands alone, its members reached per
    // request (the era probe, the list, the routed call), each for the caller that sent it.
    for who in ["admin-bot", "reader-bot"] {
        let caller = auth.client_credentials(who, &resource, "");
        let auth_header = format!("Bearer {caller}");
        let post = |method: &str, name: Option<&str>, params: Value| -> Value {
            gw.stateless(
                "/fed",
                method,
                name,
                params,
                &[("authorization", auth_header.as_str())],
            )
            .json()
        };
        let listed = post("tools/list", None, json!({}));
        assert_eq!(
            tool_names(&listed),
            ["ex__echo", "plain__echo"],
            "{who}: {listed}\n{}",
            gw.log.text()
        );
        // A member asked with a token exchanged for this caller may list per identity.
        assert_eq!(listed["result"]["cacheScope"], "private", "{listed}");
        for tool in ["ex__echo", "plain__echo"] {
            let r = post(
                "tools/call",
                Some(tool),
                json!({"name": tool, "arguments": {}}),
            );
            assert_eq!(r["result"]["content"][0]["text"], "ok", "{who} {tool}: {r}");
        }
        let seen: Vec<_> = std::mem::take(&mut *seen_ex.lock().unwrap());
        let methods: Vec<&str> = seen.iter().map(|(m, _)| m.as_str()).collect();
        for want in ["tools/list", "tools/call"] {
            assert!(
                methods.contains(&want),
                "{who}: no {want} reached ex: {methods:?}"
            );
        }
        assert_exchanged_for(who, &caller, ex_aud, &seen);
        let plain: Vec<_> = std::mem::take(&mut *seen_plain.lock().unwrap());
        assert!(plain.iter().any(|(m, _)| m == "tools/call"), "{plain:?}");
        assert!(plain.iter().all(|(_, a)| a.is_none()), "{who}: {plain:?}");
    }

    // A caller with an API key has no token to exchange: the member with token_exchange is
    // refused (never asked, the reason logged), the other serves it.
    let mut m = Mcp::new(gw.addr, "/fed");
    m.header("x-api-key", "machine-key-1");
    m.initialize("2025-06-18");
    let listed = m.request("tools/list", json!({})).json();
    assert_eq!(tool_names(&listed), ["plain__echo"], "{listed}");
    let r = m
        .request(
            "tools/call",
            json!({"name": "plain__echo", "arguments": {}}),
        )
        .json();
    assert_eq!(r["result"]["content"][0]["text"], "ok", "{r}");
    assert!(
        seen_ex.lock().unwrap().is_empty(),
        "ex was asked without a caller's token"
    );
    assert!(
        gw.log
            .text()
            .contains("token_exchange needs the caller's own token"),
        "{}",
        gw.log.text()
    );
}

fn hex_sha256(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Opaque tokens (RFC 7662): the endpoint's resource is one the authorization server issues
/// opaque tokens for; the gateway finds the introspection endpoint through discovery and asks
/// it as the `gateway` client. Roles come from the introspection answer and reach the rules.
#[test]
fn opaque_tokens_are_introspected_at_the_real_authorization_server() {
    let port = free_port();
    let resource = format!("http://127.0.0.1:{port}/mcp");
    let other_opaque = "http://127.0.0.1:9/opaque-other/mcp";
    let opts = AuthOptions {
        resources: &[OTHER],
        opaque_resources: &[resource.as_str(), other_opaque],
        ..AuthOptions::default()
    };
    let Some(auth) = AuthServer::try_start_with(&opts) else {
        return;
    };
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .yaml(&format!(
            "listen:\n  address: 127.0.0.1:{port}\n\
             auth:\n  issuers:\n    - name: oidc\n      issuer: \"{issuer}\"\n      discovery: true\n      algorithms: [RS256, ES256]\n      claims: {{roles: roles, tenant: tenant}}\n      introspection: {{client_id: gateway, client_secret: \"{secret}\"}}\n\
             servers:\n  - path: /mcp\n    upstream: demo\n    auth: {{resource: \"{resource}\", issuers: [oidc]}}\n    rules:\n      - {{name: admins, effect: allow, roles: [admin]}}\n      - {{name: readers, effect: allow, roles: [reader], tools: [echo]}}\n",
            issuer = auth.issuer(),
            secret = auth.client_secret("gateway"),
        ))
        .start();
    let reader = auth.opaque_token(&resource, "");
    assert!(!reader.contains('.'), "an opaque token: {reader}");
    // opaque-bot has roles [reader]: echo only.
    assert_eq!(tool_names(&list_with(&gw, &reader)), ["echo"]);
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.bearer(&reader);
    m.initialize("2025-06-18");
    let r = m.call_tool("echo", json!({"text": "hi"}));
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("hi"),
        "{r}"
    );
    // An admin (opaque too: the resource is opaque) sees more; the reader may not call those.
    let admin = auth.client_credentials("admin-bot", &resource, "");
    assert!(!admin.contains('.'));
    let all = tool_names(&list_with(&gw, &admin));
    assert!(all.len() >= 2, "{all:?}");
    let hidden = all.iter().find(|t| *t != "echo").unwrap();
    let r = m.call_tool(hidden, json!({}));
    assert_eq!(r["error"]["code"], -32602, "{r}");

    // Garbage, and a token of another resource: 401.
    for (token, why) in [
        ("garbage-token-that-was-never-issued", "inactive"),
        (&*auth.opaque_token(other_opaque, ""), "wrong audience"),
    ] {
        let mut m = Mcp::new(gw.addr, "/mcp");
        m.bearer(token);
        let r = m.post_raw(br#"{"jsonrpc":"2.0","id":0,"method":"ping"}"#);
        assert_eq!(r.status, 401, "{why}: {}", r.text());
        let challenge = r.header("www-authenticate").unwrap_or("");
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{why}: {challenge}"
        );
    }
    let scrape = gw.metrics();
    for (series, at_least) in [
        // The reader's and the admin's tokens.
        ("tollgate_auth_introspections_total{result=\"active\"}", 2.0),
        (
            "tollgate_auth_introspections_total{result=\"inactive\"}",
            1.0,
        ),
        // The other resource's token: active, refused for its audience.
        (
            "tollgate_auth_introspections_total{result=\"refused\"}",
            1.0,
        ),
        (
            "tollgate_auth_failures_total{reason=\"token_inactive\"}",
            1.0,
        ),
        (
            "tollgate_auth_failures_total{reason=\"wrong_audience\"}",
            1.0,
        ),
    ] {
        assert!(
            metric_value(&scrape, series) >= at_least,
            "{series}\n{scrape}"
        );
    }
}
