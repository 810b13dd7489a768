//! `upstreams[].credentials`: the gateway's own bearer token toward an upstream (OAuth2 client
//! credentials), fetched from a scripted token endpoint and checked at a scripted upstream that
//! records the Authorization header it receives.

mod harness;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use harness::scripted::{self, read_request, Request, Scripted};
use harness::{Gateway, Mcp, Refused};
use serde_json::json;

/// A token endpoint answering `tok-<n>` (n from 1) with `expires_in`; records every request.
fn token_endpoint(expires_in: u64) -> (Scripted, Arc<Mutex<Vec<Request>>>) {
    token_endpoint_failing(expires_in, Arc::default())
}

/// `token_endpoint`, answering 503 while `down` is set.
fn token_endpoint_failing(
    expires_in: u64,
    down: Arc<AtomicBool>,
) -> (Scripted, Arc<Mutex<Vec<Request>>>) {
    let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let s = {
        let seen = seen.clone();
        Scripted::start(move |mut s: TcpStream, _| {
            while let Some(req) = read_request(&mut s) {
                seen.lock().unwrap().push(req);
                if down.load(Ordering::Acquire) {
                    let resp = scripted::response(
                        "503 Service Unavailable",
                        &[("Content-Type", "application/json")],
                        br#"{"error":"temporarily_unavailable"}"#,
                    );
                    if s.write_all(&resp).is_err() {
                        return;
                    }
                    continue;
                }
                let n = count.fetch_add(1, Ordering::AcqRel) + 1;
                let body = json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": expires_in}).to_string();
                let resp = scripted::response(
                    "200 OK",
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                );
                if s.write_all(&resp).is_err() {
                    return;
                }
            }
        })
    };
    (s, seen)
}

/// An MCP upstream recording the Authorization header of every request; answers 401 once when
/// `reject` is set.
fn upstream(reject: Arc<AtomicBool>) -> (Scripted, Arc<Mutex<Vec<Option<String>>>>) {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let s = {
        let seen = seen.clone();
        Scripted::start(move |mut s: TcpStream, _| {
            while let Some(req) = read_request(&mut s) {
                seen.lock()
                    .unwrap()
                    .push(req.header("authorization").map(str::to_string));
                let resp = if reject.swap(false, Ordering::AcqRel) {
                    scripted::response(
                        "401 Unauthorized",
                        &[("Content-Type", "application/json")],
                        b"{}",
                    )
                } else if let Some(r) = scripted::mcp_basics(&req) {
                    r
                } else {
                    scripted::json_response(&scripted::text_result(&req.id(), "ok"))
                };
                if s.write_all(&resp).is_err() {
                    return;
                }
            }
        })
    };
    (s, seen)
}

fn gateway(up: &str, token_url: &str, extra: &str) -> Gateway {
    let creds = format!(
        "{{client_credentials: {{token_url: \"{token_url}\", client_id: \"tg\", client_secret: \"s:cret\", scope: \"a b\"{extra}}}}}"
    );
    Gateway::builder()
        .workers(1)
        .upstream_with("up", up, &[("credentials", &creds)])
        .serve("/mcp", "up")
        .start()
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body).into_owned();
    text.split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn client_credentials_token_is_fetched_once_reused_and_fetched_anew_after_a_401() {
    let (tokens, token_reqs) = token_endpoint(3600);
    let reject = Arc::new(AtomicBool::new(false));
    let (up, up_seen) = upstream(reject.clone());
    let gw = gateway(&up.url(), &tokens.url(), "");
    let mut mcp = Mcp::new(gw.addr, "/mcp");
    assert_eq!(mcp.initialize("2025-06-18").status, 200);
    for _ in 0..3 {
        assert_eq!(
            mcp.request("tools/call", json!({"name": "t", "arguments": {}}))
                .status,
            200
        );
    }
    {
        let reqs = token_reqs.lock().unwrap();
        assert_eq!(reqs.len(), 1, "one token request for all of them");
        let r = &reqs[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/mcp");
        let basic = base64::engine::general_purpose::STANDARD.encode("tg:s%3Acret");
        assert_eq!(
            r.header("authorization"),
            Some(format!("Basic {basic}").as_str())
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let resource: String = up.url().replace(':', "%3A").replace('/', "%2F");
        assert_eq!(
            form(&r.body),
            vec![
                ("grant_type".to_string(), "client_credentials".to_string()),
                ("scope".to_string(), "a+b".to_string()),
                ("resource".to_string(), resource),
            ]
        );
    }
    let seen = up_seen.lock().unwrap().clone();
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(
        seen.iter().all(|a| a.as_deref() == Some("Bearer tok-1")),
        "{seen:?}"
    );

    // A 401 from the upstream drops the token: the next request fetches a new one.
    reject.store(true, Ordering::Release);
    let _ = mcp.request("tools/call", json!({"name": "t", "arguments": {}}));
    assert_eq!(
        mcp.request("tools/call", json!({"name": "t", "arguments": {}}))
            .status,
        200
    );
    assert_eq!(token_reqs.lock().unwrap().len(), 2);
    assert_eq!(
        up_seen.lock().unwrap().last().cloned().flatten().as_deref(),
        Some("Bearer tok-2")
    );
}

#[test]
fn a_token_within_refresh_before_of_its_expiry_is_fetched_anew() {
    // expires_in 30 s with refresh_before 60 s: every request finds the token due for refresh.
    let (tokens, token_reqs) = token_endpoint(30);
    let (up, up_seen) = upstream(Arc::default());
    let gw = gateway(&up.url(), &tokens.url(), ", refresh_before: 60s");
    let mut mcp = Mcp::new(gw.addr, "/mcp");
    assert_eq!(mcp.initialize("2025-06-18").status, 200);
    assert_eq!(
        mcp.request("tools/call", json!({"name": "t", "arguments": {}}))
            .status,
        200
    );
    let n = token_reqs.lock().unwrap().len();
    assert!(n >= 2, "{n}");
    assert_eq!(
        up_seen.lock().unwrap().last().cloned().flatten(),
        Some(format!("Bearer tok-{n}"))
    );
}

#[test]
fn a_token_endpoint_that_is_down_fails_the_request_naming_the_upstream() {
    let refused = Refused::new();
    let closed = refused.addr();
    let (up, up_seen) = upstream(Arc::default());
    let gw = gateway(&up.url(), &format!("http://{closed}/token"), "");
    let mut mcp = Mcp::new(gw.addr, "/mcp");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = mcp.http.request(
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        body.to_string().as_bytes(),
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("no credentials for upstream \"up\""),
        "{} {v}",
        r.status
    );
    assert!(msg.contains("connect"), "{msg}");
    assert!(!msg.contains("s:cret"), "{msg}");
    assert!(
        up_seen.lock().unwrap().is_empty(),
        "nothing reached the upstream without a token"
    );
}

#[test]
fn the_clients_own_authorization_never_reaches_the_upstream() {
    let (tokens, _) = token_endpoint(3600);
    for with_credentials in [true, false] {
        let (up, up_seen) = upstream(Arc::default());
        let gw = if with_credentials {
            gateway(&up.url(), &tokens.url(), "")
        } else {
            Gateway::in_front_of(&up.url())
        };
        let mut mcp = Mcp::new(gw.addr, "/mcp");
        assert_eq!(mcp.initialize("2025-06-18").status, 200);
        let mut headers: Vec<(String, String)> = mcp
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        headers.push(("Authorization".into(), "Bearer client-secret-token".into()));
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "t", "arguments": {}}}).to_string();
        let r = mcp.http.request("POST", "/mcp", &h, body.as_bytes());
        assert_eq!(r.status, 200);
        let seen = up_seen.lock().unwrap().clone();
        assert!(seen.len() >= 2, "{seen:?}");
        for a in &seen {
            if with_credentials {
                assert_eq!(a.as_deref(), Some("Bearer tok-1"));
            } else {
                assert_eq!(a, &None);
            }
        }
    }
}

#[test]
fn while_the_token_endpoint_fails_the_last_token_serves_and_failures_are_counted() {
    // expires_in 30 s, refresh_before 60 s: every request tries a refresh; the token is valid.
    let down = Arc::new(AtomicBool::new(false));
    let (tokens, token_reqs) = token_endpoint_failing(30, down.clone());
    let (up, up_seen) = upstream(Arc::default());
    let gw = gateway(&up.url(), &tokens.url(), ", refresh_before: 60s");
    let mut mcp = Mcp::new(gw.addr, "/mcp");
    assert_eq!(mcp.initialize("2025-06-18").status, 200);
    down.store(true, Ordering::Release);
    let before = token_reqs.lock().unwrap().len();
    assert_eq!(
        mcp.request("tools/call", json!({"name": "t", "arguments": {}}))
            .status,
        200
    );
    assert!(
        token_reqs.lock().unwrap().len() > before,
        "a refresh was tried"
    );
    assert_eq!(
        up_seen.lock().unwrap().last().cloned().flatten(),
        Some(format!("Bearer tok-{before}"))
    );
    let m = gw.metrics();
    let line = |result: &str| {
        format!("tollgate_upstream_token_requests_total{{upstream=\"up\",grant=\"client_credentials\",result=\"{result}\"}}")
    };
    let value = |result: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(&line(result)))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {} in\n{m}", line(result)))
    };
    assert!(value("ok") >= 1.0);
    assert!(value("error") >= 1.0);
}
