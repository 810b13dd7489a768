//! The record phase: every request, refusals included, is counted once and gets one access
//! line saying what happened (server, upstream, method, tool, status, refusal and its reason);
//! a batch is read message by message into the request context.

mod harness;

use std::time::Duration;

use harness::{eventually, session, Demo, Gateway, Http, Mcp, JSON_HEADERS};
use serde_json::json;

/// Access lines in the gateway's log (text format).
fn access_lines(gw: &Gateway) -> Vec<String> {
    gw.log
        .text()
        .lines()
        .filter(|l| l.contains(" access: "))
        .map(str::to_string)
        .collect()
}

/// Waits for an access line containing every one of `parts` (lines are flushed on a 50 ms tick).
fn line_with(gw: &Gateway, parts: &[&str]) -> String {
    let mut found = None;
    eventually(Duration::from_secs(5), || {
        found = access_lines(gw)
            .into_iter()
            .find(|l| parts.iter().all(|p| l.contains(p)));
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no access line with {parts:?}; access lines:\n{}",
            access_lines(gw).join("\n")
        )
    })
}

/// The demo upstream (kept alive by the first value) behind a gateway at /mcp, with `yaml`.
fn demo_gateway(yaml: &str) -> (Demo, Gateway) {
    let demo = Demo::start(&[]);
    let gw = Gateway::builder()
        .upstream("demo", &demo.url())
        .serve("/mcp", "demo")
        .yaml(yaml)
        .start();
    (demo, gw)
}

#[test]
fn every_request_and_every_refusal_gets_one_access_line() {
    let (_demo, gw) = demo_gateway("log:\n  access: all\n");
    let mut mcp = session(&gw);
    let r = mcp.call_tool("echo", json!({"text": "hi"}));
    assert!(r.get("result").is_some(), "{r}");

    let call = line_with(&gw, &["rpc=tools/call", "name=echo"]);
    for part in [
        "http=POST",
        "server=/mcp",
        "upstream=demo",
        "status=200",
        "upstream_status=200",
        "outcome=ok",
        "session=",
        "duration_us=",
        "bytes_in=",
    ] {
        assert!(call.contains(part), "{part} missing in: {call}");
    }
    assert!(!call.contains("refused="), "{call}");
    let init = line_with(&gw, &["rpc=initialize"]);
    assert!(
        init.contains("session="),
        "initialize names the session it opened: {init}"
    );

    // Refusals, each with its kind and reason: a path with no endpoint, a wrong content type,
    // a session that does not exist.
    let mut http = Http::connect(gw.addr);
    let r = http.request("POST", "/nope", &JSON_HEADERS, b"{}");
    assert_eq!(r.status, 404);
    let mut http = Http::connect(gw.addr);
    let r = http.request(
        "POST",
        "/mcp",
        &[("content-type", "text/plain")],
        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(r.status, 415);
    // A refusal before the body was read closes the connection: a new one.
    let mut http = Http::connect(gw.addr);
    let mut headers = JSON_HEADERS.to_vec();
    headers.push(("mcp-session-id", "tg2.bogus"));
    let r = http.request(
        "POST",
        "/mcp",
        &headers,
        br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"add"}}"#,
    );
    assert_eq!(r.status, 404);

    let nf = line_with(&gw, &["refused=not_found"]);
    assert!(
        nf.contains("status=404") && nf.contains("outcome=rejected"),
        "{nf}"
    );
    let mt = line_with(&gw, &["refused=unsupported_media_type"]);
    assert!(
        mt.contains("status=415") && mt.contains("server=/mcp"),
        "{mt}"
    );
    let su = line_with(&gw, &["refused=session_unknown"]);
    for part in [
        "rpc=tools/call",
        "name=add",
        "id=9",
        "status=404",
        "reason=",
    ] {
        assert!(su.contains(part), "{part} missing in: {su}");
    }

    // Counted once each in the request metric too: 2 initialize-era requests, 3 refused.
    let m = gw.metrics();
    let rejected: f64 = m
        .lines()
        .filter(|l| l.starts_with("tollgate_requests_total{") && l.contains("outcome=\"rejected\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(rejected, 3.0, "{m}");
}

#[test]
fn a_batch_is_read_message_by_message() {
    let (_demo, gw) = demo_gateway("log:\n  access: all\n");
    let mut mcp = Mcp::new(gw.addr, "/mcp");
    mcp.initialize("2025-03-26");
    // The tool call is second: the context still holds its name.
    let r = mcp.post_raw(
        br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let line = line_with(&gw, &["rpc=batch"]);
    assert!(
        line.contains("messages=ping,tools/call:echo"),
        "each message of the batch with its own method and name: {line}"
    );
}

#[test]
fn json_access_lines_are_json_and_access_can_be_limited_to_refusals() {
    let (_demo, gw) = demo_gateway("log:\n  format: json\n  access: refusals\n");
    let mut mcp = session(&gw);
    mcp.call_tool("echo", json!({"text": "hi"}));
    let mut http = Http::connect(gw.addr);
    assert_eq!(http.request("GET", "/elsewhere", &[], b"").status, 404);
    let mut lines = Vec::new();
    eventually(Duration::from_secs(5), || {
        lines = gw
            .log
            .text()
            .lines()
            .filter(|l| l.contains("\"target\":\"access\""))
            .map(str::to_string)
            .collect();
        !lines.is_empty()
    });
    assert_eq!(lines.len(), 1, "only the refusal: {lines:?}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("one JSON object a line");
    assert_eq!(v["refused"], "not_found");
    assert_eq!(v["status"], 404);
    assert_eq!(v["http"], "GET");
}
