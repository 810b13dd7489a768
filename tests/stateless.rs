//! The stateless revision (2026-07-28) through the real binary: the version and `_meta` checks,
//! the headers that mirror the body (checked before the upstream sees anything), the fallback
//! answers a session-era client gets, `server/discover`, removed methods, GET/DELETE, and a
//! `subscriptions/listen` stream that outlives the request timeout. The upstream is scripted: it
//! records every request and answers like a 2026-07-28 server.

mod harness;

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::scripted::{self, read_request, response, Request, Scripted};
use harness::{session, Demo, Gateway, Http, Mcp, Response};
use serde_json::{json, Value};

const V: &str = "2026-07-28";

/// A 2026-07-28 upstream that records what it receives. `tools/call` echoes its name;
/// `server/discover` names it; `subscriptions/listen` acknowledges, waits `listen_wait`, sends
/// one notification and ends.
fn modern_upstream(seen: Arc<Mutex<Vec<Request>>>, listen_wait: Duration) -> Scripted {
    Scripted::start(move |mut s: TcpStream, _| {
        while let Some(req) = read_request(&mut s) {
            seen.lock().unwrap().push(req.clone());
            let v = req.json();
            let id = v["id"].clone();
            let reply = match v["method"].as_str().unwrap_or("") {
                "server/discover" => scripted::json_response(&scripted::rpc_result(
                    &id,
                    json!({"resultType": "complete", "supportedVersions": [V],
                           "capabilities": {"tools": {"listChanged": true}},
                           "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "modern", "version": "1"}},
                           "ttlMs": 60000, "cacheScope": "public"}),
                )),
                // A tool that needs a capability the request did not declare (-32021, 400).
                "tools/call" if req.tool() == "needs_sampling" => response(
                    "400 Bad Request",
                    &[("Content-Type", "application/json")],
                    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32021,
                           "message": "Missing required client capability",
                           "data": {"requiredCapabilities": {"sampling": {}}}}})
                    .to_string()
                    .as_bytes(),
                ),
                // Results that leave out the resultType the revision requires (as the
                // conformance suite's own head fixture does), whole and streamed.
                "tools/call" if req.tool() == "bare" => {
                    scripted::json_response(&scripted::rpc_result(
                        &id,
                        json!({"content": [{"type": "text", "text": "bare"}]}),
                    ))
                }
                "tools/call" if req.tool() == "streamy" => {
                    let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                        "params": {"progressToken": 1, "progress": 1}});
                    let result = scripted::rpc_result(
                        &id,
                        json!({"content": [{"type": "text", "text": "streamy"}]}),
                    );
                    let body = format!(
                        "event: message\ndata: {progress}\n\nevent: message\ndata: {result}\n\n"
                    );
                    response(
                        "200 OK",
                        &[("Content-Type", "text/event-stream")],
                        body.as_bytes(),
                    )
                }
                "tools/call" => scripted::json_response(&scripted::rpc_result(
                    &id,
                    json!({"resultType": "complete",
                           "content": [{"type": "text", "text": req.tool()}]}),
                )),
                "subscriptions/listen" => {
                    let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                        "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": id},
                                   "notifications": {"toolsListChanged": true}}});
                    let change = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                        "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": id}}});
                    let chunk = |s: &mut TcpStream, data: &Value| {
                        let ev = format!("event: message\ndata: {data}\n\n");
                        let _ = s.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
                    };
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
                    );
                    chunk(&mut s, &ack);
                    std::thread::sleep(listen_wait);
                    chunk(&mut s, &change);
                    let _ = s.write_all(b"0\r\n\r\n");
                    continue;
                }
                "tools/list" => scripted::json_response(&scripted::rpc_result(
                    &id,
                    json!({"resultType": "complete", "ttlMs": 1000, "cacheScope": "public",
                           "tools": [{"name": "weather", "inputSchema": {"type": "object"}},
                                     {"name": "bare", "inputSchema": {"type": "object"}},
                                     {"name": "streamy", "inputSchema": {"type": "object"}},
                                     {"name": "good_header", "inputSchema": {"type": "object",
                                        "properties": {"r": {"type": "string", "x-mcp-header": "Region"}}}},
                                     {"name": "bad_header", "inputSchema": {"type": "object",
                                        "properties": {"n": {"type": "number", "x-mcp-header": "N"}}}},
                                     {"name": "needs_sampling", "inputSchema": {"type": "object"}}]}),
                )),
                // A server of 2026-07-28 only: initialize is a method it does not have, nor
                // completions.
                "initialize" | "completion/complete" => response(
                    "404 Not Found",
                    &[("Content-Type", "application/json")],
                    json!({"jsonrpc": "2.0", "id": id,
                           "error": {"code": -32601, "message": "Method not found"}})
                    .to_string()
                    .as_bytes(),
                ),
                _ => response("202 Accepted", &[], b""),
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

fn meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": V,
           "io.modelcontextprotocol/clientCapabilities": {}})
}

/// A 2026-07-28 request body.
fn body(id: u64, method: &str, mut params: Value) -> Vec<u8> {
    params["_meta"] = meta();
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        .to_string()
        .into_bytes()
}

fn post(gw: &Gateway, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut h = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    h.extend_from_slice(headers);
    gw.client().request("POST", "/mcp", &h, body)
}

fn error_of(r: &Response) -> (u16, i64, String) {
    let v = r.json();
    (
        r.status,
        v["error"]["code"].as_i64().unwrap_or(0),
        v["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

fn setup(listen_wait: Duration) -> (Scripted, Gateway, Arc<Mutex<Vec<Request>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = modern_upstream(seen.clone(), listen_wait);
    let gw = Gateway::builder()
        .upstream_with("modern", &up.url(), &[("request_timeout", "500ms")])
        .serve("/mcp", "modern")
        .start();
    (up, gw, seen)
}

#[test]
fn a_stateless_call_passes_through_with_the_headers_of_its_revision() {
    let (_up, gw, seen) = setup(Duration::ZERO);
    let b = body(
        1,
        "tools/call",
        json!({"name": "weather", "arguments": {"region": "eu"}}),
    );
    let r = post(
        &gw,
        &[
            ("mcp-protocol-version", V),
            ("mcp-method", "tools/call"),
            ("mcp-name", "weather"),
            ("mcp-param-region", "eu"),
        ],
        &b,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"]["content"][0]["text"], "weather");
    assert!(r.header("mcp-session-id").is_none(), "no session is issued");
    let seen = seen.lock().unwrap();
    let req = seen.last().unwrap();
    assert_eq!(req.header("mcp-protocol-version"), Some(V));
    assert_eq!(req.header("mcp-method"), Some("tools/call"));
    assert_eq!(req.header("mcp-name"), Some("weather"));
    assert_eq!(req.header("mcp-param-region"), Some("eu"));
    assert!(req.header("mcp-session-id").is_none());
    assert_eq!(req.body, b, "the body is forwarded as sent");
}

#[test]
fn mirrored_headers_are_checked_before_the_upstream_sees_the_request() {
    let (_up, gw, seen) = setup(Duration::ZERO);
    let call = body(2, "tools/call", json!({"name": "weather", "arguments": {}}));
    let base = [("mcp-protocol-version", V)];
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("mcp-name", "weather")],
            "Mcp-Method header is missing",
        ),
        (
            vec![("mcp-method", "tools/list"), ("mcp-name", "weather")],
            "does not match",
        ),
        (
            vec![("mcp-method", "TOOLS/CALL"), ("mcp-name", "weather")],
            "does not match",
        ),
        (
            vec![("mcp-method", "tools/call")],
            "Mcp-Name header is missing",
        ),
        (
            vec![("mcp-method", "tools/call"), ("mcp-name", "Weather")],
            "does not match",
        ),
        (
            vec![
                ("mcp-method", "tools/call"),
                ("mcp-name", "=?base64?d2VhdGhlcg?="),
            ],
            "base64",
        ),
    ];
    for (extra, want) in cases {
        let mut h = base.to_vec();
        h.extend(extra.iter().copied());
        let r = post(&gw, &h, &call);
        let (status, code, msg) = error_of(&r);
        assert_eq!((status, code), (400, -32020), "{extra:?}: {}", r.text());
        assert!(msg.contains(want), "{extra:?}: {msg}");
    }
    // Base64, surrounding whitespace and the header name's case are all accepted.
    for (n, v) in [
        ("mcp-name", "=?base64?d2VhdGhlcg==?="),
        ("MCP-NAME", "  weather "),
    ] {
        let r = post(
            &gw,
            &[
                ("mcp-protocol-version", V),
                ("Mcp-Method", "tools/call"),
                (n, v),
            ],
            &call,
        );
        assert_eq!(r.status, 200, "{n}: {v}: {}", r.text());
    }
    // A body name spelled with JSON escapes is compared decoded: "café" as \u00e9 in the body,
    // base64 of its UTF-8 in the header.
    let cafe = br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"caf\u00e9","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let h = [("mcp-protocol-version", V), ("mcp-method", "tools/call")];
    let ok = post(
        &gw,
        &[h[0], h[1], ("mcp-name", "=?base64?Y2Fmw6k=?=")],
        cafe,
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    let bad = post(&gw, &[h[0], h[1], ("mcp-name", "cafe")], cafe);
    assert_eq!(error_of(&bad).1, -32020);
    // A Mcp-Param value that is no value at all.
    let r = post(
        &gw,
        &[
            h[0],
            h[1],
            ("mcp-name", "weather"),
            ("mcp-param-region", "=?base64?%%%?="),
        ],
        &call,
    );
    let (status, code, msg) = error_of(&r);
    assert_eq!((status, code), (400, -32020), "{}", r.text());
    assert!(msg.contains("mcp-param-region"), "{msg}");
    // A resource read mirrors its uri.
    let read = body(3, "resources/read", json!({"uri": "file:///a b"}));
    let r = post(
        &gw,
        &[
            ("mcp-protocol-version", V),
            ("mcp-method", "resources/read"),
            ("mcp-name", "file:///a c"),
        ],
        &read,
    );
    assert_eq!(error_of(&r).1, -32020);
    // Two Mcp-Method headers are no request at all.
    let r = post(
        &gw,
        &[
            ("mcp-protocol-version", V),
            ("mcp-method", "tools/call"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "weather"),
        ],
        &call,
    );
    assert_eq!(r.status, 400);
    let calls = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.rpc_method() == "tools/call")
        .count();
    assert_eq!(
        calls, 3,
        "only the three well-formed calls reached the upstream"
    );
}

#[test]
fn version_and_meta_problems_get_the_codes_of_the_revision() {
    let (_up, gw, seen) = setup(Duration::ZERO);
    let discover = |v: &str| {
        let mut m = meta();
        m["io.modelcontextprotocol/protocolVersion"] = v.into();
        json!({"jsonrpc": "2.0", "id": 9, "method": "server/discover", "params": {"_meta": m}})
            .to_string()
    };
    let hdr = |v: &'static str| {
        vec![
            ("mcp-protocol-version", v),
            ("mcp-method", "server/discover"),
        ]
    };
    // Unsupported: 400, -32022, data names both sides.
    let r = post(&gw, &hdr("v999.0.0"), discover("v999.0.0").as_bytes());
    let (status, code, _) = error_of(&r);
    assert_eq!((status, code), (400, -32022), "{}", r.text());
    let data = &r.json()["error"]["data"];
    assert_eq!(data["requested"], "v999.0.0");
    assert_eq!(data["supported"], json!([V]));
    assert_eq!(r.json()["id"], 9);
    // The header disagreeing with _meta, or missing: -32020.
    let r = post(&gw, &hdr(V), discover("v999.0.0").as_bytes());
    assert_eq!(error_of(&r).0..=error_of(&r).0, 400..=400);
    assert_eq!(error_of(&r).1, -32020);
    let r = post(
        &gw,
        &[("mcp-method", "server/discover")],
        discover(V).as_bytes(),
    );
    assert_eq!(error_of(&r).1, -32020, "{}", r.text());
    // _meta missing, or without clientCapabilities: 400, -32602.
    let bare = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}});
    let r = post(&gw, &hdr(V), bare.to_string().as_bytes());
    assert_eq!(
        (error_of(&r).0, error_of(&r).1),
        (400, -32602),
        "{}",
        r.text()
    );
    let no_caps = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": V}}});
    let r = post(&gw, &hdr(V), no_caps.to_string().as_bytes());
    assert_eq!(error_of(&r).1, -32602);
    assert!(error_of(&r).2.contains("clientCapabilities"));
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
}

#[test]
fn session_era_clients_never_get_the_new_codes() {
    let (_up, gw, _seen) = setup(Duration::ZERO);
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    for h in [
        vec![],
        vec![("mcp-protocol-version", "2025-06-18")],
        vec![("mcp-protocol-version", "v999")],
    ] {
        let r = post(&gw, &h, list.as_bytes());
        let (status, code, _) = error_of(&r);
        assert_eq!(status, 400, "{h:?}");
        assert_eq!(code, -32600, "{h:?}: {}", r.text());
    }
}

#[test]
fn removed_methods_are_404_and_get_delete_are_405() {
    let (_up, gw, seen) = setup(Duration::ZERO);
    for m in [
        "initialize",
        "ping",
        "logging/setLevel",
        "resources/subscribe",
    ] {
        let r = post(
            &gw,
            &[("mcp-protocol-version", V), ("mcp-method", m)],
            &body(4, m, json!({})),
        );
        let (status, code, msg) = error_of(&r);
        assert_eq!((status, code), (404, -32601), "{m}: {}", r.text());
        assert!(msg.contains(m), "{msg}");
    }
    for method in ["GET", "DELETE"] {
        let r = gw.client().request(
            method,
            "/mcp",
            &[("accept", "text/event-stream"), ("mcp-protocol-version", V)],
            b"",
        );
        assert_eq!(r.status, 405, "{method}: {}", r.text());
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn discover_is_answered_by_the_gateway_from_its_upstream() {
    let (_up, gw, _seen) = setup(Duration::ZERO);
    let r = post(
        &gw,
        &[
            ("mcp-protocol-version", V),
            ("mcp-method", "server/discover"),
        ],
        &body(5, "server/discover", json!({})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let res = &r.json()["result"];
    assert_eq!(res["resultType"], "complete");
    assert_eq!(res["supportedVersions"][0], V);
    assert_eq!(res["capabilities"]["tools"]["listChanged"], true);
    assert_eq!(
        res["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "tollgate"
    );
    assert_eq!(res["ttlMs"], 60000);
    assert_eq!(res["cacheScope"], "public");
}

/// A session-era upstream (what an SDK server of 2025 answers): `initialize` opens session
/// `up-<n>`; without a session (a stateless probe) → 400 -32000; `tools/call` echoes its name
/// and the session it came in; from the `end_after`th call on, the first call of each session
/// is answered 404 (the upstream forgot the session).
fn session_era_upstream(seen: Arc<Mutex<Vec<Request>>>, end_after: usize) -> Scripted {
    let sessions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Scripted::start(move |mut s: TcpStream, _| {
        use std::sync::atomic::Ordering::SeqCst;
        while let Some(req) = read_request(&mut s) {
            seen.lock().unwrap().push(req.clone());
            let v = req.json();
            let reply = if v["method"] == "initialize" {
                let n = sessions.fetch_add(1, SeqCst) + 1;
                scripted::with_header(
                    &response(
                        "200 OK",
                        &[("Content-Type", "application/json")],
                        scripted::rpc_result(&v["id"], scripted::initialize_result()).as_bytes(),
                    ),
                    "Mcp-Session-Id",
                    &format!("up-{n}"),
                )
            } else if req.header("mcp-session-id").is_none() {
                let err = json!({"jsonrpc": "2.0", "id": null,
                    "error": {"code": -32000, "message": "Bad Request: No valid session ID provided"}});
                response(
                    "400 Bad Request",
                    &[("Content-Type", "application/json")],
                    err.to_string().as_bytes(),
                )
            } else if v.get("id").is_none() {
                response("202 Accepted", &[], b"")
            } else {
                let n = calls.fetch_add(1, SeqCst) + 1;
                let sid = req.header("mcp-session-id").unwrap_or("").to_string();
                let current = format!("up-{}", sessions.load(SeqCst));
                if n >= end_after && sid == current && sessions.load(SeqCst) == 1 {
                    response("404 Not Found", &[("Content-Type", "application/json")],
                        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#)
                } else {
                    let text = format!("{} in {sid}", req.tool());
                    response(
                        "200 OK",
                        &[("Content-Type", "application/json")],
                        scripted::text_result(&v["id"], &text).as_bytes(),
                    )
                }
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_stateless_client_reaches_a_session_era_upstream_through_a_held_session() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = session_era_upstream(seen.clone(), usize::MAX);
    // One worker: each worker holds its own session.
    let gw = Gateway::builder()
        .workers(1)
        .upstream("old", &up.url())
        .serve("/mcp", "old")
        .start();
    // Discover: answered from the held session's initialize. A client that asks for sampling
    // (which a held session cannot carry) is told of session-era revisions only, so in "auto"
    // mode it takes a session of its own; one that asks for nothing is offered 2026-07-28.
    let discover_versions = |caps: &str| {
        let b = String::from_utf8(body(6, "server/discover", json!({})))
            .unwrap()
            .replace(
                "clientCapabilities\":{}",
                &format!("clientCapabilities\":{caps}"),
            );
        let r = post(
            &gw,
            &[
                ("mcp-protocol-version", V),
                ("mcp-method", "server/discover"),
            ],
            b.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let res = r.json()["result"].clone();
        assert!(res["capabilities"]["tools"].is_object(), "{res}");
        res["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let asks = discover_versions("{\"sampling\":{}}");
    assert!(
        !asks.iter().any(|v| v == V) && asks.iter().any(|v| v == "2025-11-25"),
        "{asks:?}"
    );
    assert_eq!(discover_versions("{}")[0], V);
    for id in 7..10 {
        let r = post(
            &gw,
            &[
                ("mcp-protocol-version", V),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ],
            &body(id, "tools/call", json!({"name": "echo", "arguments": {}})),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["id"], id);
        assert_eq!(r.json()["result"]["content"][0]["text"], "echo in up-1");
        // What the revision adds to results, which a session-era upstream does not write.
        assert_eq!(r.json()["result"]["resultType"], "complete", "{}", r.text());
    }
    let seen = seen.lock().unwrap();
    let inits = seen
        .iter()
        .filter(|r| r.rpc_method() == "initialize")
        .count();
    assert_eq!(inits, 1, "one held session, opened once");
    let call = seen
        .iter()
        .rev()
        .find(|r| r.rpc_method() == "tools/call")
        .unwrap();
    assert_eq!(call.header("mcp-session-id"), Some("up-1"));
    assert_eq!(call.header("mcp-protocol-version"), Some("2025-06-18"));
    assert!(seen
        .iter()
        .any(|r| r.rpc_method() == "notifications/initialized"));
    let init = seen
        .iter()
        .find(|r| r.rpc_method() == "initialize")
        .unwrap();
    assert_eq!(
        init.json()["params"]["capabilities"],
        json!({}),
        "the held session declares nothing"
    );
}

#[test]
fn a_held_session_the_upstream_ended_is_opened_again_and_the_call_resent() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    // The second call gets 404 in session up-1.
    let up = session_era_upstream(seen.clone(), 2);
    let gw = Gateway::builder()
        .workers(1)
        .upstream_with("old", &up.url(), &[("era", "session")])
        .serve("/mcp", "old")
        .start();
    for (id, want) in [
        (1, "echo in up-1"),
        (2, "echo in up-2"),
        (3, "echo in up-2"),
    ] {
        let r = post(
            &gw,
            &[
                ("mcp-protocol-version", V),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ],
            &body(id, "tools/call", json!({"name": "echo", "arguments": {}})),
        );
        assert_eq!(
            r.json()["result"]["content"][0]["text"],
            want,
            "{}",
            r.text()
        );
        // The call resent in a new session is stamped like the others.
        assert_eq!(r.json()["result"]["resultType"], "complete", "{}", r.text());
    }
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.iter()
            .filter(|r| r.rpc_method() == "initialize")
            .count(),
        2
    );
    // era: session is configured, so the upstream is never probed.
    assert!(!seen.iter().any(|r| r.rpc_method() == "server/discover"));
}

#[test]
fn a_listen_stream_outlives_the_request_timeout() {
    // The upstream's request_timeout is 500 ms; the notification comes 1.2 s after the ack.
    let (_up, gw, _seen) = setup(Duration::from_millis(1200));
    let mut c: Http = gw.client();
    let r = c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", V),
            ("mcp-method", "subscriptions/listen"),
        ],
        &body(
            7,
            "subscriptions/listen",
            json!({"notifications": {"toolsListChanged": true}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let msgs = r.sse_messages();
    let methods: Vec<&str> = msgs.iter().filter_map(|m| m["method"].as_str()).collect();
    assert_eq!(
        methods,
        [
            "notifications/subscriptions/acknowledged",
            "notifications/tools/list_changed"
        ],
        "{}",
        r.text()
    );
}

/// The built-in demo speaks 2026-07-28 too: straight at it and through the gateway, a call, a
/// call streaming progress, a list with its caching hints, and its own refusals.
#[test]
fn the_demo_speaks_the_stateless_revision_directly_and_through_the_gateway() {
    let demo = Demo::start(&[]);
    let gw = Gateway::in_front_of(&demo.url());
    let direct_addr: std::net::SocketAddr = demo.url()["http://".len()..]
        .trim_end_matches("/mcp")
        .parse()
        .unwrap();
    for (label, addr) in [("direct", direct_addr), ("tollgate", gw.addr)] {
        let post = |headers: &[(&str, &str)], b: &[u8]| {
            let mut h = vec![
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", V),
            ];
            h.extend_from_slice(headers);
            Http::connect(addr).request("POST", "/mcp", &h, b)
        };
        let r = post(
            &[("mcp-method", "tools/call"), ("mcp-name", "echo")],
            &body(
                1,
                "tools/call",
                json!({"name": "echo", "arguments": {"text": "hi"}}),
            ),
        );
        assert_eq!(r.status, 200, "{label}: {}", r.text());
        assert_eq!(r.json()["result"]["resultType"], "complete", "{label}");
        assert_eq!(r.json()["result"]["content"][0]["text"], "hi", "{label}");
        assert!(r.header("mcp-session-id").is_none(), "{label}");

        let mut params = json!({"name": "progress", "arguments": {"steps": 3, "interval_ms": 1}});
        params["_meta"] = meta();
        params["_meta"]["progressToken"] = "p1".into();
        let b = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params});
        let r = post(
            &[("mcp-method", "tools/call"), ("mcp-name", "progress")],
            b.to_string().as_bytes(),
        );
        let msgs = r.sse_messages();
        let progress = msgs
            .iter()
            .filter(|m| {
                m["method"] == "notifications/progress" && m["params"]["progressToken"] == "p1"
            })
            .count();
        assert_eq!(progress, 3, "{label}: {}", r.text());
        assert_eq!(
            msgs.last().unwrap()["result"]["resultType"],
            "complete",
            "{label}"
        );

        let r = post(
            &[("mcp-method", "tools/list")],
            &body(3, "tools/list", json!({})),
        );
        let res = &r.json()["result"];
        assert_eq!(res["resultType"], "complete", "{label}");
        assert!(
            res["ttlMs"].as_u64().is_some() && res["cacheScope"] == "public",
            "{label}: {res}"
        );
        assert!(
            res["tools"].as_array().is_some_and(|t| !t.is_empty()),
            "{label}"
        );

        let r = post(&[("mcp-method", "ping")], &body(4, "ping", json!({})));
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_i64()),
            (404, Some(-32601)),
            "{label}"
        );
        let r = post(
            &[("mcp-method", "tools/call")],
            &body(5, "tools/call", json!({"name": "echo"})),
        );
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_i64()),
            (400, Some(-32020)),
            "{label}"
        );
    }
    // Discover: the demo's own directly, the gateway's in front of it.
    let r = post(
        &gw,
        &[
            ("mcp-protocol-version", V),
            ("mcp-method", "server/discover"),
        ],
        &body(6, "server/discover", json!({})),
    );
    let res = &r.json()["result"];
    assert_eq!(res["supportedVersions"][0], V, "{}", r.text());
    assert_eq!(
        res["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "tollgate"
    );
    assert!(res["capabilities"]["tools"].is_object());
}

#[test]
fn a_session_era_client_reaches_an_upstream_of_the_stateless_revision_only() {
    let (_up, gw, seen) = setup(Duration::ZERO);
    let mut m = Mcp::new(gw.addr, "/mcp");
    // initialize: answered by the gateway from the upstream's server/discover.
    let init = m.initialize("2025-06-18");
    let res = &init.json()["result"];
    assert_eq!(res["protocolVersion"], "2025-06-18", "{res}");
    assert_eq!(res["capabilities"]["tools"]["listChanged"], true, "{res}");
    assert!(m.session.is_some());
    let r = m.post_raw(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    assert_eq!(r.status, 202);
    // A call: the body gains the revision's _meta, the headers mirror it, no session upstream.
    let r = m.request(
        "tools/call",
        json!({"name": "weather", "arguments": {"q": 1}, "_meta": {"progressToken": 5}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"]["content"][0]["text"], "weather");
    {
        let seen = seen.lock().unwrap();
        let call = seen
            .iter()
            .rev()
            .find(|r| r.rpc_method() == "tools/call")
            .unwrap();
        assert_eq!(call.header("mcp-protocol-version"), Some(V));
        assert_eq!(call.header("mcp-method"), Some("tools/call"));
        assert_eq!(call.header("mcp-name"), Some("weather"));
        assert!(call.header("mcp-session-id").is_none());
        let p = &call.json()["params"];
        assert_eq!(p["_meta"]["io.modelcontextprotocol/protocolVersion"], V);
        assert_eq!(
            p["_meta"]["io.modelcontextprotocol/clientCapabilities"],
            json!({})
        );
        assert_eq!(p["_meta"]["progressToken"], 5, "the client's _meta is kept");
        assert_eq!(p["arguments"], json!({"q": 1}));
        assert!(
            !seen
                .iter()
                .any(|r| r.rpc_method() == "notifications/initialized"),
            "nothing to tell a stateless upstream"
        );
    }
    // The upstream's errors in the codes of its revision reach this client in its own: the
    // codes 2026-07-28 added become -32600 (data kept), and a 404 (an unknown method there) is
    // no "session ended" here.
    let r = m.request("tools/call", json!({"name": "needs_sampling"}));
    let e = &r.json()["error"];
    assert_eq!(
        (r.status, e["code"].as_i64()),
        (400, Some(-32600)),
        "{}",
        r.text()
    );
    assert!(e["message"].as_str().unwrap().contains("-32021"), "{e}");
    assert_eq!(e["data"]["requiredCapabilities"], json!({"sampling": {}}));
    assert!(r.json()["id"].is_u64(), "the client's id: {}", r.text());
    let r = m.request(
        "completion/complete",
        json!({"ref": {"type": "ref/prompt", "name": "p"}, "argument": {"name": "a", "value": ""}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], -32601, "{}", r.text());
    // The methods the revision removed: ping and setLevel answered here.
    assert_eq!(m.request("ping", json!({})).json()["result"], json!({}));
    // No server-to-client stream to open; DELETE ends the session here.
    let h = m.headers();
    let r = gw.client().request(
        "GET",
        "/mcp",
        &[h[2], h[3], ("accept", "text/event-stream")],
        b"",
    );
    assert_eq!(r.status, 405, "{}", r.text());
    let r = gw.client().request("DELETE", "/mcp", &[h[2], h[3]], b"");
    assert!((200..300).contains(&r.status), "{}", r.text());
}

/// A federated endpoint: the scripted 2026-07-28-only upstream (`modern`, prefixed) beside a
/// demo process (`alpha`, which speaks both eras).
fn federated_setup() -> (Scripted, Demo, Gateway, Arc<Mutex<Vec<Request>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = modern_upstream(seen.clone(), Duration::ZERO);
    let alpha = Demo::start(&[]);
    let gw = Gateway::builder()
        .upstream("modern", &up.url())
        .upstream("alpha", &alpha.url())
        .yaml("servers:\n  - path: /mcp\n    upstreams: [modern, alpha]\n")
        .start();
    (up, alpha, gw, seen)
}

#[test]
fn a_federated_endpoint_serves_stateless_requests_per_request() {
    let (_up, _alpha, gw, seen) = federated_setup();
    let h = |m: &'static str| vec![("mcp-protocol-version", V), ("mcp-method", m)];
    // The list: both upstreams, prefixed, stamped with the revision's fields.
    let r = post(&gw, &h("tools/list"), &body(1, "tools/list", json!({})));
    assert_eq!(r.status, 200, "{}", r.text());
    let res = &r.json()["result"];
    assert_eq!(res["resultType"], "complete", "{res}");
    // The smallest TTL of the pages it was made from: the demo's is 300000, the modern
    // upstream's 1000.
    assert_eq!(res["ttlMs"], 1000, "{res}");
    assert_eq!(res["cacheScope"], "public", "{res}");
    let names: Vec<&str> = res["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"modern__weather") && names.contains(&"alpha__echo"),
        "{names:?}"
    );
    // A tool whose x-mcp-header annotation the revision forbids (on a number) is left out, as a
    // client on HTTP must; one with a valid annotation stays.
    assert!(names.contains(&"modern__good_header"), "{names:?}");
    assert!(!names.contains(&"modern__bad_header"), "{names:?}");
    let mut hb = h("tools/call");
    hb.push(("mcp-name", "modern__bad_header"));
    let r = post(
        &gw,
        &hb,
        &body(9, "tools/call", json!({"name": "modern__bad_header"})),
    );
    assert_eq!(
        r.json()["error"]["code"],
        -32602,
        "not routed either: {}",
        r.text()
    );
    assert!(
        gw.metrics().contains(
            "tollgate_federation_tools_dropped_total{upstream=\"modern\",reason=\"x_mcp_header\"}"
        ),
        "{}",
        gw.metrics()
    );
    // Calls, routed by name; each upstream gets its own name, in the body and in Mcp-Name.
    let mut hn = h("tools/call");
    hn.push(("mcp-name", "modern__weather"));
    // An Mcp-Param header mirrors an argument the upstream's own schema names: it goes with
    // the request to that upstream.
    hn.push(("mcp-param-region", "=?base64?ZXU=?="));
    let r = post(
        &gw,
        &hn,
        &body(
            2,
            "tools/call",
            json!({"name": "modern__weather", "arguments": {}}),
        ),
    );
    assert_eq!(
        r.json()["result"]["content"][0]["text"],
        "weather",
        "{}",
        r.text()
    );
    {
        let seen = seen.lock().unwrap();
        let call = seen
            .iter()
            .rev()
            .find(|r| r.rpc_method() == "tools/call")
            .unwrap();
        assert_eq!(call.header("mcp-name"), Some("weather"));
        assert_eq!(call.header("mcp-param-region"), Some("=?base64?ZXU=?="));
        assert_eq!(call.header("mcp-method"), Some("tools/call"));
        assert_eq!(call.header("mcp-protocol-version"), Some(V));
        assert!(call.header("mcp-session-id").is_none());
        assert_eq!(call.json()["params"]["name"], "weather");
        // The gateway's own list request was made one of the revision too.
        let list = seen
            .iter()
            .find(|r| r.rpc_method() == "tools/list")
            .unwrap();
        assert_eq!(list.header("mcp-method"), Some("tools/list"));
        assert_eq!(
            list.json()["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
            V
        );
    }
    let mut hn = h("tools/call");
    hn.push(("mcp-name", "alpha__echo"));
    let r = post(
        &gw,
        &hn,
        &body(
            3,
            "tools/call",
            json!({"name": "alpha__echo", "arguments": {"text": "hi"}}),
        ),
    );
    assert_eq!(
        r.json()["result"]["content"][0]["text"],
        "hi",
        "{}",
        r.text()
    );
    // An unknown name: -32602, HTTP 200.
    let mut hn = h("tools/call");
    hn.push(("mcp-name", "nope"));
    let r = post(&gw, &hn, &body(4, "tools/call", json!({"name": "nope"})));
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (200, Some(-32602)),
        "{}",
        r.text()
    );
    // Discover: the union, the gateway's server info; tools.listChanged because the stateless
    // upstream declares it (the gateway merges its listen stream), none for the demo's prompts.
    let r = post(
        &gw,
        &h("server/discover"),
        &body(5, "server/discover", json!({})),
    );
    let res = &r.json()["result"];
    assert_eq!(res["supportedVersions"][0], V, "{res}");
    assert_eq!(res["capabilities"]["tools"]["listChanged"], true, "{res}");
    assert!(
        res["capabilities"]["prompts"].get("listChanged").is_none(),
        "{res}"
    );
    assert_eq!(
        res["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "tollgate"
    );
    // Listen asking for nothing anyone delivers: acknowledged with nothing, then over.
    let r = post(
        &gw,
        &h("subscriptions/listen"),
        &body(
            6,
            "subscriptions/listen",
            json!({"notifications": {"promptsListChanged": true}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let msgs = r.sse_messages();
    assert_eq!(
        msgs[0]["method"],
        "notifications/subscriptions/acknowledged",
        "{}",
        r.text()
    );
    assert_eq!(msgs[0]["params"]["notifications"], json!({}));
    assert_eq!(msgs.last().unwrap()["id"], 6, "{}", r.text());
    assert_eq!(msgs.len(), 2, "{}", r.text());
}

#[test]
fn a_session_era_client_of_a_federated_endpoint_reaches_its_stateless_upstream() {
    let (_up, _alpha, gw, seen) = federated_setup();
    let mut m = Mcp::new(gw.addr, "/mcp");
    let init = m.initialize("2025-06-18");
    assert_eq!(
        init.json()["result"]["protocolVersion"],
        "2025-06-18",
        "{}",
        init.text()
    );
    let out = m.call_tool("modern__weather", json!({}));
    assert_eq!(out["result"]["content"][0]["text"], "weather", "{out}");
    let seen = seen.lock().unwrap();
    let call = seen
        .iter()
        .rev()
        .find(|r| r.rpc_method() == "tools/call")
        .unwrap();
    assert_eq!(call.header("mcp-protocol-version"), Some(V));
    assert_eq!(call.header("mcp-name"), Some("weather"));
    assert_eq!(
        call.json()["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
        V
    );
    assert!(call.header("mcp-session-id").is_none());
    drop(seen);
    let out = m.call_tool("alpha__echo", json!({"text": "x"}));
    assert_eq!(out["result"]["content"][0]["text"], "x", "{out}");
    // Its errors in the codes of its revision reach this client in the client's own.
    let r = m.request("tools/call", json!({"name": "modern__needs_sampling"}));
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (400, Some(-32600)),
        "{}",
        r.text()
    );
}

/// Review regressions: a method holding CR/LF never becomes a header line toward an upstream;
/// `_meta` is never written twice; a held session's notifications stay with the gateway.
#[test]
fn what_a_body_says_never_becomes_a_header_line_or_a_second_key() {
    let (_up, _alpha, gw, seen) = federated_setup();
    // A stateless notification, fanned out to the modern member (no Mcp-Method needed).
    let evil = json!({"jsonrpc": "2.0", "method": "notifications/x\r\nx-injected: fed",
        "params": {"_meta": meta()}});
    let r = post(
        &gw,
        &[("mcp-protocol-version", V)],
        evil.to_string().as_bytes(),
    );
    assert!(r.status < 500, "{}", r.text());
    // A session-era client of the federated endpoint: its request to the modern member is
    // translated; a method with CR/LF, and params that are not an object.
    let mut m = session(&gw);
    let _ =
        m.post_raw(br#"{"jsonrpc":"2.0","method":"notifications/y\r\nx-injected: translated"}"#);
    let _ = m.post_raw(br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"modern__weather","_meta":{"io.modelcontextprotocol/clientCapabilities":null}}}"#);
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|r| r.header("x-injected").is_none()),
        "a header line came from a body"
    );
    for r in seen.iter() {
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            text.matches("clientCapabilities").count() <= 1,
            "a _meta key written twice: {text}"
        );
    }
}

/// `_meta` is required in a request's params only: a notification with the revision's header
/// passes without it.
#[test]
fn a_stateless_notification_needs_no_meta() {
    let (_up, gw, seen) = setup(Duration::ZERO);
    let n =
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}});
    let r = post(
        &gw,
        &[
            ("mcp-protocol-version", V),
            ("mcp-method", "notifications/cancelled"),
        ],
        n.to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.rpc_method() == "notifications/cancelled"));
}

/// The revisions a federated endpoint's `server/discover` offers a client declaring `caps`.
fn discover_at(gw: &Gateway, path: &str, caps: Value) -> Vec<String> {
    let mut params = json!({});
    params["_meta"] = meta();
    params["_meta"]["io.modelcontextprotocol/clientCapabilities"] = caps;
    let b = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": params});
    let h = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", V),
        ("mcp-method", "server/discover"),
    ];
    let r = gw
        .client()
        .request("POST", path, &h, b.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["result"]["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", r.text()))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_federated_endpoint_sends_a_client_asking_for_input_to_a_session_when_a_member_is_held() {
    // /mcp: an upstream of the revision beside one held to the session era; /new: the upstream
    // of the revision alone beside the demo, which speaks both (no held session).
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = modern_upstream(seen, Duration::ZERO);
    let alpha = Demo::start(&[]);
    let beta = Demo::start(&[]);
    let gw = Gateway::builder()
        .upstream("modern", &up.url())
        .upstream_with("alpha", &alpha.url(), &[("era", "session")])
        .upstream("beta", &beta.url())
        .yaml(
            "servers:\n  - path: /mcp\n    upstreams: [modern, alpha]\n  - path: /new\n    \
             upstreams: [modern, beta]\n  - path: /always\n    upstreams: [modern, alpha]\n    \
             offer_stateless: always\n",
        )
        .start();
    let asks = json!({"elicitation": {}, "sampling": {}});
    // A held member cannot carry sampling or elicitation (its tools that ask would get -32601):
    // a client asking for them is offered the session era only, where its own session carries
    // them (an "auto" client falls back to initialize).
    let v = discover_at(&gw, "/mcp", asks.clone());
    assert!(
        !v.iter().any(|x| x == V) && v.iter().any(|x| x == "2025-11-25"),
        "{v:?}"
    );
    // Asking for nothing, or with no held member: offered.
    assert_eq!(discover_at(&gw, "/mcp", json!({}))[0], V);
    assert_eq!(discover_at(&gw, "/new", asks.clone())[0], V);
    // An operator whose clients speak the revision (and whose held upstreams ask for nothing)
    // says so: offered all the same.
    assert_eq!(discover_at(&gw, "/always", asks)[0], V);
}

/// What `pooled_upstream` shares between its connections.
#[derive(Default)]
struct Pooled {
    seen: Mutex<Vec<Request>>,
    sessions: std::sync::atomic::AtomicUsize,
    /// `pair` calls in flight; each waits for the other.
    pairs: (Mutex<usize>, std::sync::Condvar),
    /// `slow` calls wait until this is true.
    gate: (Mutex<bool>, std::sync::Condvar),
    /// The client's answer to the `ask` tool's server→client request.
    answer: (Mutex<Option<Value>>, std::sync::Condvar),
    /// Answer the first `tools/call` in session up-1 with 404 (the session ended).
    end_first: std::sync::atomic::AtomicBool,
    ended: std::sync::atomic::AtomicBool,
    /// Answer `tools/list` in session up-1 with 404.
    end_lists: std::sync::atomic::AtomicBool,
}

impl Pooled {
    fn calls(&self, tool: &str) -> Vec<Request> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.rpc_method() == "tools/call" && r.tool() == tool)
            .cloned()
            .collect()
    }
    fn inits(&self) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|r| r.rpc_method() == "initialize")
            .count()
    }
}

/// A session-era upstream (sessions `up-<n>`) whose tools say which session they ran in:
/// `echo` answers "<text> in <session>" as JSON; `pair` does too once two `pair` calls are in
/// flight at once; `slow` answers with an event stream (a progress notification, then the
/// result once `gate` opens); `progress` streams a progress and a log notification before its
/// result; `ask` sends a sampling request in its stream and answers with what came back;
/// `pinger` does the same with a ping; `chunked` answers like `echo` with a chunked JSON body.
fn pooled_upstream(st: Arc<Pooled>) -> Scripted {
    use std::sync::atomic::Ordering::SeqCst;
    Scripted::start(move |mut s: TcpStream, _| {
        let sse_head = |s: &mut TcpStream| {
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
        };
        let event = |s: &mut TcpStream, data: &Value| {
            let ev = format!("event: message\ndata: {data}\n\n");
            let _ = s.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
        };
        let wait = Duration::from_secs(20);
        while let Some(req) = read_request(&mut s) {
            st.seen.lock().unwrap().push(req.clone());
            let v = req.json();
            let id = v["id"].clone();
            let sid = req.header("mcp-session-id").unwrap_or("").to_string();
            let text = v["params"]["arguments"]["text"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let json = |body: String| {
                response(
                    "200 OK",
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                )
            };
            let reply = if v["method"] == "initialize" {
                let n = st.sessions.fetch_add(1, SeqCst) + 1;
                scripted::with_header(
                    &json(scripted::rpc_result(&id, scripted::initialize_result())),
                    "Mcp-Session-Id",
                    &format!("up-{n}"),
                )
            } else if v.get("method").is_none() {
                // The client's answer to a request of ours.
                *st.answer.0.lock().unwrap() = Some(v.clone());
                st.answer.1.notify_all();
                response("202 Accepted", &[], b"")
            } else if v.get("id").is_none() {
                response("202 Accepted", &[], b"")
            } else if sid.is_empty() {
                response("400 Bad Request", &[("Content-Type", "application/json")],
                    br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"Bad Request: No valid session ID provided"}}"#)
            } else if v["method"] == "tools/list" && sid == "up-1" && st.end_lists.load(SeqCst) {
                response("404 Not Found", &[("Content-Type", "application/json")],
                    br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#)
            } else if v["method"] == "tools/list" {
                let tools: Vec<Value> = ["echo", "pair", "slow", "progress", "ask"]
                    .iter()
                    .map(|n| json!({"name": n, "inputSchema": {"type": "object"}}))
                    .collect();
                json(scripted::rpc_result(&id, json!({"tools": tools})))
            } else if v["method"] != "tools/call" {
                json(scripted::rpc_result(&id, json!({})))
            } else if st.end_first.load(SeqCst) && sid == "up-1" && !st.ended.swap(true, SeqCst) {
                response("404 Not Found", &[("Content-Type", "application/json")],
                    br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#)
            } else {
                let done = scripted::text_result(&id, &format!("{text} in {sid}"));
                let done: Value = serde_json::from_str(&done).unwrap();
                let token = v["params"]["_meta"]["progressToken"].clone();
                let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": token, "progress": 1, "total": 2}});
                match req.tool().as_str() {
                    "pair" => {
                        let (m, cv) = &st.pairs;
                        let mut n = m.lock().unwrap();
                        *n += 1;
                        cv.notify_all();
                        let _ = cv.wait_timeout_while(n, wait, |n| *n < 2).unwrap();
                        json(done.to_string())
                    }
                    "slow" => {
                        sse_head(&mut s);
                        event(&mut s, &progress);
                        let (m, cv) = &st.gate;
                        let g = m.lock().unwrap();
                        let _ = cv.wait_timeout_while(g, wait, |open| !*open).unwrap();
                        event(&mut s, &done);
                        b"0\r\n\r\n".to_vec()
                    }
                    "progress" => {
                        sse_head(&mut s);
                        event(&mut s, &progress);
                        event(
                            &mut s,
                            &json!({"jsonrpc": "2.0", "method": "notifications/message",
                            "params": {"level": "info", "data": "half way"}}),
                        );
                        event(&mut s, &done);
                        b"0\r\n\r\n".to_vec()
                    }
                    "ask" | "pinger" => {
                        let asked = if req.tool() == "ask" {
                            json!({"jsonrpc": "2.0", "id": "srv-1",
                                "method": "sampling/createMessage",
                                "params": {"messages": [], "maxTokens": 10}})
                        } else {
                            json!({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"})
                        };
                        *st.answer.0.lock().unwrap() = None;
                        sse_head(&mut s);
                        event(&mut s, &asked);
                        let (m, cv) = &st.answer;
                        let a = m.lock().unwrap();
                        let a = cv.wait_timeout_while(a, wait, |a| a.is_none()).unwrap().0;
                        let got = a
                            .as_ref()
                            .map(|a| match a.get("result") {
                                Some(r) => format!("result {r}"),
                                None => a["error"]["code"].to_string(),
                            })
                            .unwrap_or_else(|| "nothing".into());
                        let r = scripted::text_result(&id, &format!("answered {got}"));
                        event(&mut s, &serde_json::from_str(&r).unwrap());
                        b"0\r\n\r\n".to_vec()
                    }
                    "chunked" => {
                        let d = done.to_string();
                        let (a, b) = d.split_at(d.len() / 2);
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                            a.len(),
                            b.len()
                        )
                        .into_bytes()
                    }
                    _ => json(done.to_string()),
                }
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

fn held_gateway(up: &Scripted, keys: &[(&str, &str)], limit: Option<&str>) -> Gateway {
    let mut keys = keys.to_vec();
    keys.push(("era", "session"));
    let mut b = Gateway::builder()
        .workers(1)
        .upstream_with("old", &up.url(), &keys)
        .serve("/mcp", "old");
    if let Some(n) = limit {
        b = b.limit("held_sessions_per_upstream", n);
    }
    b.start()
}

/// A stateless `tools/call` of `tool` with `text`, JSON-RPC id `id`, on connection `c`.
fn call_on(c: &mut Http, id: u64, tool: &str, text: &str) -> Response {
    let b = body(
        id,
        "tools/call",
        json!({"name": tool, "arguments": {"text": text}}),
    );
    let b = String::from_utf8(b)
        .unwrap()
        .replace("\"_meta\":{", "\"_meta\":{\"progressToken\":\"tok\",");
    c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", V),
            ("mcp-method", "tools/call"),
            ("mcp-name", tool),
        ],
        b.as_bytes(),
    )
}

/// The last message of a reply (JSON, or the last event of a stream).
fn final_message(r: &Response) -> Value {
    if r.header("content-type")
        .is_some_and(|t| t.contains("event-stream"))
    {
        r.sse_messages().pop().unwrap_or(Value::Null)
    } else {
        r.json()
    }
}

#[test]
fn two_stateless_calls_with_the_same_id_through_one_worker_each_get_their_own_answer() {
    let st = Arc::new(Pooled::default());
    let up = pooled_upstream(st.clone());
    let gw = held_gateway(&up, &[], None);
    // Both calls have id 1; each `pair` call waits upstream until the other is in flight too,
    // so they are in the upstream at once: in two held sessions, never in one.
    let (a, b) = std::thread::scope(|s| {
        let (mut ca, mut cb) = (gw.client(), gw.client());
        let a = s.spawn(move || call_on(&mut ca, 1, "pair", "a"));
        let b = s.spawn(move || call_on(&mut cb, 1, "pair", "b"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (final_message(&a), final_message(&b));
    let text = |v: &Value| {
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(a["id"], 1, "{a}");
    assert_eq!(b["id"], 1, "{b}");
    assert!(text(&a).starts_with("a in up-"), "{a}");
    assert!(text(&b).starts_with("b in up-"), "{b}");
    assert_ne!(
        text(&a)["a".len()..],
        text(&b)["b".len()..],
        "two requests in flight at once are in two upstream sessions"
    );
    assert_eq!(a["result"]["resultType"], "complete");
    assert_eq!(st.inits(), 2);
    // Both sessions stay held: the next calls reuse them, opening none.
    for id in 2..5 {
        let r = call_on(&mut gw.client(), id, "echo", "c");
        assert_eq!(final_message(&r)["id"], id);
    }
    assert_eq!(st.inits(), 2);
}

#[test]
fn at_the_cap_a_call_waits_for_a_held_session_and_past_the_timeout_is_refused() {
    let st = Arc::new(Pooled::default());
    let up = pooled_upstream(st.clone());
    let gw = held_gateway(&up, &[("request_timeout", "2s")], Some("1"));
    let waits = |gw: &Gateway| {
        harness::metric_value(
            &gw.metrics(),
            "tollgate_held_session_waits_total{upstream=\"old\"}",
        )
    };
    std::thread::scope(|s| {
        // A: a slow call holds the one session until the gate opens (an event stream: no read
        // timeout while it lasts).
        let mut ca = gw.client();
        let a = s.spawn(move || call_on(&mut ca, 1, "slow", "a"));
        assert!(harness::eventually(Duration::from_secs(10), || !st
            .calls("slow")
            .is_empty()));
        // C: no session comes free within the upstream's request_timeout: refused, naming the
        // limit, counted as that limit.
        let r = call_on(&mut gw.client(), 3, "echo", "c");
        let (status, _, msg) = error_of(&r);
        assert_eq!(status, 503, "{}", r.text());
        assert!(msg.contains("held_sessions_per_upstream"), "{msg}");
        // Counted by the record phase, which runs after the answer was sent.
        let counted = |gw: &Gateway| {
            gw.metrics()
                .contains("tollgate_limit_rejections_total{limit=\"held_sessions_per_upstream\"} 1")
        };
        assert!(
            harness::eventually(Duration::from_secs(10), || counted(&gw)),
            "{}",
            gw.metrics()
        );
        assert!(st.calls("echo").is_empty(), "C never reached the upstream");
        // B: waits (counted) until A is done, then takes A's session.
        let mut cb = gw.client();
        let b = s.spawn(move || call_on(&mut cb, 2, "echo", "b"));
        assert!(harness::eventually(Duration::from_secs(10), || waits(&gw) == 2.0));
        assert!(
            st.calls("echo").is_empty(),
            "B waits while A holds the session"
        );
        *st.gate.0.lock().unwrap() = true;
        st.gate.1.notify_all();
        let a = final_message(&a.join().unwrap());
        assert_eq!(a["result"]["content"][0]["text"], "a in up-1", "{a}");
        assert_eq!(a["result"]["resultType"], "complete", "{a}");
        let b = final_message(&b.join().unwrap());
        assert_eq!(b["result"]["content"][0]["text"], "b in up-1", "{b}");
    });
    assert_eq!(st.inits(), 1, "the cap is one session");
}

#[test]
fn a_held_session_event_stream_reaches_the_client_with_its_result_stamped() {
    let st = Arc::new(Pooled::default());
    let up = pooled_upstream(st.clone());
    let gw = held_gateway(&up, &[], None);
    let r = call_on(&mut gw.client(), 7, "progress", "p");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.contains("text/event-stream")),
        "{:?}",
        r.header("content-type")
    );
    let msgs = r.sse_messages();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    // Notifications pass as they are.
    assert_eq!(msgs[0]["method"], "notifications/progress");
    assert_eq!(msgs[0]["params"]["progressToken"], "tok");
    assert_eq!(msgs[1]["method"], "notifications/message");
    assert!(msgs[1].get("result").is_none());
    // The response gets what the revision adds to results.
    assert_eq!(msgs[2]["id"], 7);
    assert_eq!(msgs[2]["result"]["resultType"], "complete", "{}", msgs[2]);
    assert_eq!(msgs[2]["result"]["content"][0]["text"], "p in up-1");
}

#[test]
fn a_chunked_json_reply_of_a_held_session_is_stamped_too() {
    let st = Arc::new(Pooled::default());
    let up = pooled_upstream(st.clone());
    let gw = held_gateway(&up, &[], None);
    let r = call_on(&mut gw.client(), 3, "chunked", "c");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["id"], 3);
    assert_eq!(v["result"]["content"][0]["text"], "c in up-1", "{v}");
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
}

#[test]
fn a_server_request_in_a_held_stream_is_answered_upstream_and_never_reaches_the_client() {
    let st = Arc::new(Pooled::default());
    let up = pooled_upstream(st.clone());
    let gw = held_gateway(&up, &[], None);
    let r = call_on(&mut gw.client(), 8, "ask", "q");
    assert_eq!(r.status, 200, "{}", r.text());
    let msgs = r.sse_messages();
    assert!(
        !msgs.iter().any(|m| m.get("method").is_some()),
        "the sampling request is not relayed: {msgs:?}"
    );
    let last = msgs.last().unwrap();
    assert_eq!(last["id"], 8);
    assert_eq!(
        last["result"]["content"][0]["text"], "answered -32601",
        "{last}"
    );
    assert_eq!(last["result"]["resultType"], "complete");
    // The upstream got the gateway's answer in the session the request came in.
    let seen = st.seen.lock().unwrap();
    let answer = seen
        .iter()
        .find(|r| r.json().get("method").is_none() && r.json()["id"] == "srv-1")
        .expect("an answer to srv-1");
    assert_eq!(answer.header("mcp-session-id"), Some("up-1"));
    assert_eq!(answer.json()["error"]["code"], -32601);
    drop(seen);
    assert!(gw
        .metrics()
        .contains("tollgate_held_server_requests_total{method=\"sampling\"} 1"));
    // A ping is answered as a client answers it: an empty result.
    let r = call_on(&mut gw.client(), 9, "pinger", "q");
    let last = final_message(&r);
    assert_eq!(
        last["result"]["content"][0]["text"], "answered result {}",
        "{last}"
    );
}

#[test]
fn a_federated_stateless_call_in_an_ended_held_session_is_sent_again_in_a_new_one() {
    let st = Arc::new(Pooled::default());
    st.end_first
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let up = pooled_upstream(st.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let modern = modern_upstream(seen, Duration::ZERO);
    let gw = Gateway::builder()
        .workers(1)
        .upstream("modern", &modern.url())
        .upstream_with("old", &up.url(), &[("era", "session")])
        .yaml("servers:\n  - path: /mcp\n    upstreams: [modern, old]\n")
        .start();
    let r = call_on(&mut gw.client(), 4, "old__echo", "x");
    assert_eq!(r.status, 200, "{}", r.text());
    let m = final_message(&r);
    assert_eq!(m["id"], 4, "{m}");
    // up-1 answered 404 (it ended the session): forgotten, up-2 opened, the call sent again.
    assert_eq!(m["result"]["content"][0]["text"], "x in up-2", "{m}");
    assert_eq!(m["result"]["resultType"], "complete", "{m}");
    let calls = st.calls("echo");
    let sessions: Vec<_> = calls
        .iter()
        .map(|r| r.header("mcp-session-id").unwrap_or("").to_string())
        .collect();
    assert_eq!(sessions, ["up-1", "up-2"]);
    assert_eq!(
        calls[1].json()["params"]["name"],
        "echo",
        "its own name upstream"
    );
    // The next call takes the new session; none is opened.
    let r = call_on(&mut gw.client(), 5, "old__echo", "y");
    assert_eq!(
        final_message(&r)["result"]["content"][0]["text"],
        "y in up-2"
    );
    assert_eq!(st.inits(), 2);
}

#[test]
fn federated_stateless_calls_with_the_same_id_use_two_held_sessions() {
    let st = Arc::new(Pooled::default());
    let up = pooled_upstream(st.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let modern = modern_upstream(seen, Duration::ZERO);
    let gw = Gateway::builder()
        .workers(1)
        .upstream("modern", &modern.url())
        .upstream_with("old", &up.url(), &[("era", "session")])
        .yaml("servers:\n  - path: /mcp\n    upstreams: [modern, old]\n")
        .start();
    // Tables first, so both calls route at once.
    let r = post(
        &gw,
        &[("mcp-protocol-version", V), ("mcp-method", "tools/list")],
        &body(1, "tools/list", json!({})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (a, b) = std::thread::scope(|s| {
        let (mut ca, mut cb) = (gw.client(), gw.client());
        let a = s.spawn(move || call_on(&mut ca, 9, "old__pair", "a"));
        let b = s.spawn(move || call_on(&mut cb, 9, "old__pair", "b"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (final_message(&a), final_message(&b));
    let text = |v: &Value| {
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(text(&a).starts_with("a in up-"), "{a}");
    assert!(text(&b).starts_with("b in up-"), "{b}");
    assert_ne!(text(&a)[1..], text(&b)[1..], "in two upstream sessions");
    assert_eq!(b["result"]["resultType"], "complete", "{b}");
}

#[test]
fn a_held_session_that_ends_under_a_federated_list_is_replaced_for_the_next_request() {
    let st = Arc::new(Pooled::default());
    let up = pooled_upstream(st.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let modern = modern_upstream(seen, Duration::ZERO);
    let gw = Gateway::builder()
        .workers(1)
        .upstream("modern", &modern.url())
        .upstream_with("old", &up.url(), &[("era", "session")])
        .yaml("servers:\n  - path: /mcp\n    upstreams: [modern, old]\n")
        .start();
    let list = || {
        let r = post(
            &gw,
            &[("mcp-protocol-version", V), ("mcp-method", "tools/list")],
            &body(1, "tools/list", json!({})),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(list().contains(&"old__echo".to_string()));
    st.end_lists
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // up-1 answers this list 404: the member is left out of it, and the session forgotten.
    assert!(!list().contains(&"old__echo".to_string()));
    // The next request gets a new held session, and the member is back.
    assert!(list().contains(&"old__echo".to_string()));
    assert_eq!(st.inits(), 2);
}

#[test]
fn a_federated_stateless_notification_is_not_fanned_out_into_held_sessions() {
    let st = Arc::new(Pooled::default());
    let up = pooled_upstream(st.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let modern = modern_upstream(seen.clone(), Duration::ZERO);
    let gw = Gateway::builder()
        .workers(1)
        .upstream("modern", &modern.url())
        .upstream_with("old", &up.url(), &[("era", "session")])
        .yaml("servers:\n  - path: /mcp\n    upstreams: [modern, old]\n")
        .start();
    // A cancel naming id 1: in a held session it could cancel another client's request 1.
    let mut note = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 1, "_meta": meta()}});
    note["params"]["reason"] = json!("user");
    let r = post(
        &gw,
        &[
            ("mcp-protocol-version", V),
            ("mcp-method", "notifications/cancelled"),
        ],
        note.to_string().as_bytes(),
    );
    assert!((200..300).contains(&r.status), "{}", r.text());
    // The stateless member got it; the session-era one did not.
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.rpc_method() == "notifications/cancelled"));
    assert!(!st
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.rpc_method() == "notifications/cancelled"));
}

/// The JSON-RPC messages of a reply: its JSON body, or each `data:` of its event stream.
fn messages_of(r: &Response) -> Vec<Value> {
    let text = r.text();
    if text.trim_start().starts_with('{') {
        return vec![r.json()];
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect()
}

#[test]
fn an_upstream_of_the_revision_gets_the_result_type_it_left_out_added() {
    let (_up, gw, _seen) = setup(Duration::ZERO);
    let (_up2, _alpha, fed, _seen2) = federated_setup();
    for (gw, prefix) in [(&gw, ""), (&fed, "modern__")] {
        for (id, tool) in [(1, "bare"), (2, "streamy"), (3, "weather")] {
            let name = format!("{prefix}{tool}");
            let h = [
                ("mcp-protocol-version", V),
                ("mcp-method", "tools/call"),
                ("mcp-name", name.as_str()),
            ];
            let b = body(id, "tools/call", json!({"name": name, "arguments": {}}));
            let r = post(gw, &h, &b);
            assert_eq!(r.status, 200, "{}", r.text());
            let msgs = messages_of(&r);
            let last = msgs.last().unwrap();
            assert_eq!(
                last["result"]["resultType"],
                "complete",
                "{name}: {}",
                r.text()
            );
            assert_eq!(last["result"]["content"][0]["text"], tool, "{}", r.text());
            // Written once: a result that had it is not given a second one.
            assert_eq!(r.text().matches("resultType").count(), 1, "{}", r.text());
            if tool == "streamy" {
                assert_eq!(msgs[0]["method"], "notifications/progress", "{}", r.text());
            }
        }
    }
}

#[test]
fn a_held_session_whose_client_went_away_mid_reply_is_not_given_to_the_next_request() {
    use std::io::Read;
    let st = Arc::new(Pooled::default());
    let up = pooled_upstream(st.clone());
    let gw = held_gateway(&up, &[], None);
    // A: `slow` sends a progress event, then runs until the gate opens. The client reads the
    // start of the stream and goes away (in this revision that is how a request is cancelled).
    let b = String::from_utf8(body(
        1,
        "tools/call",
        json!({"name": "slow", "arguments": {"text": "a"}}),
    ))
    .unwrap();
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let req = format!(
        "POST /mcp HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: {V}\r\nmcp-method: tools/call\r\nmcp-name: slow\r\ncontent-length: {}\r\n\r\n{b}",
        gw.addr,
        b.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("notifications/progress") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    // The upstream is still running A's request (id 1) in that session: it is not handed to
    // the next request, which could carry the same id.
    assert!(harness::eventually(Duration::from_secs(10), || {
        harness::metric_value(&gw.metrics(), "tollgate_held_sessions_abandoned_total") == 1.0
    }));
    let r = call_on(&mut gw.client(), 1, "echo", "b");
    let m = final_message(&r);
    let text = m["result"]["content"][0]["text"].as_str().unwrap_or("");
    assert_eq!(text, "b in up-2", "{m}");
    *st.gate.0.lock().unwrap() = true;
    st.gate.1.notify_all();
}

#[test]
fn a_worker_asks_an_upstream_its_era_once_while_requests_wait_for_the_answer() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    // A 2026-07-28 upstream that takes its time to answer server/discover.
    let up = Scripted::start(move |mut s: TcpStream, _| {
        while let Some(req) = read_request(&mut s) {
            s2.lock().unwrap().push(req.clone());
            let v = req.json();
            let id = v["id"].clone();
            let reply = if v["method"] == "server/discover" {
                std::thread::sleep(Duration::from_millis(300));
                scripted::json_response(&scripted::rpc_result(
                    &id,
                    json!({"resultType": "complete", "supportedVersions": [V],
                           "capabilities": {"tools": {}}, "ttlMs": 0, "cacheScope": "public"}),
                ))
            } else {
                scripted::json_response(&scripted::rpc_result(
                    &id,
                    json!({"resultType": "complete", "content": [{"type": "text", "text": "ok"}]}),
                ))
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    });
    let gw = Gateway::builder()
        .workers(1)
        .upstream("modern", &up.url())
        .serve("/mcp", "modern")
        .start();
    let results: Vec<Response> = std::thread::scope(|sc| {
        let hs: Vec<_> = (1..=4u64)
            .map(|id| {
                let gw = &gw;
                sc.spawn(move || {
                    let h = [
                        ("mcp-protocol-version", V),
                        ("mcp-method", "tools/call"),
                        ("mcp-name", "t"),
                    ];
                    post(gw, &h, &body(id, "tools/call", json!({"name": "t"})))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert_eq!(
            r.json()["result"]["content"][0]["text"],
            "ok",
            "{}",
            r.text()
        );
    }
    let probes = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.rpc_method() == "server/discover")
        .count();
    assert_eq!(probes, 1, "one era probe per worker and upstream");
}

#[test]
fn a_stateless_request_naming_a_task_is_refused_for_a_held_member() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = modern_upstream(seen, Duration::ZERO);
    let alpha = Demo::start(&[]);
    let gw = Gateway::builder()
        .upstream("modern", &up.url())
        .upstream_with("alpha", &alpha.url(), &[("era", "session")])
        .yaml("servers:\n  - path: /mcp\n    upstreams: [modern, alpha]\n")
        .start();
    let h = [
        ("mcp-protocol-version", V),
        ("mcp-method", "tools/call"),
        ("mcp-name", "alpha__echo"),
    ];
    let b = body(
        1,
        "tools/call",
        json!({"name": "alpha__echo", "arguments": {"text": "x"}, "task": {"ttl": 60000}}),
    );
    let (status, code, msg) = error_of(&post(&gw, &h, &b));
    assert_eq!((status, code), (404, -32601), "{msg}");
    assert!(msg.contains("tasks are not available"), "{msg}");
    // Without the task, the same call goes through the held session.
    let b = body(
        2,
        "tools/call",
        json!({"name": "alpha__echo", "arguments": {"text": "x"}}),
    );
    let r = post(&gw, &h, &b);
    assert_eq!(
        r.json()["result"]["content"][0]["text"],
        "x",
        "{}",
        r.text()
    );
}
