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
use harness::{eventually, metric_value, Gateway, Mcp};
use serde_json::{json, Value};

/// A resource the authorization server also issues tokens for: not this endpoint.
const OTHER: &str = "http://127.0.0.1:9/other/mcp";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port free now (the gateway binds it next: its resource URI must name it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

fn tool_names(r: &Value) -> Vec<String> {
    let mut n: Vec<String> = r["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
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
    let scrape = gw.metrics();
    assert!(
        metric_value(
            &scrape,
            "tollgate_auth_key_refreshes_total{issuer=\"oidc\",result=\"ok\"}"
        ) >= 2.0,
        "{scrape}"
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
