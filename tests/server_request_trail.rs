//! The debug trail of relayed server→client requests (`mcp::relay::watch`, target
//! `tollgate::server_requests`): what tests/conformance/run.py takes as evidence that a request
//! was, or was never, the gateway's to deliver. A scripted upstream sends an elicitation on the
//! session's GET stream (its event cut across two chunks) and a sampling request on a tools/call's
//! event-stream reply; the trail must name both with the session hash of the access lines, on a
//! single-upstream endpoint and a federated one (its POST reply: the merged GET stream goes through
//! the same rewriter), and say nothing when the target is off.

mod harness;

use std::io::Write;
use std::time::Duration;

use harness::scripted::{mcp_basics, read_request, Scripted};
use harness::{Gateway, Mcp};
use serde_json::Value;

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

/// GET: one elicitation/create (id 5), its event in two chunks, then the stream ends.
/// tools/list: tool `t`. Anything else (tools/call): a sampling/createMessage (id "s1") and the call's result on the reply stream.
fn upstream() -> Scripted {
    Scripted::start(|mut s, _| {
        while let Some(req) = read_request(&mut s) {
            let v = req.json();
            if req.method == "GET" {
                let ev = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"elicitation/create\",\"params\":{\"message\":\"m\"}}\n\n";
                let (a, b) = ev.split_at(30);
                let out = format!("{SSE_HEAD}{}{}0\r\n\r\n", chunk(a), chunk(b));
                let _ = s.write_all(out.as_bytes());
                continue;
            }
            if let Some(r) = mcp_basics(&req) {
                let _ = s.write_all(&r);
                continue;
            }
            if v["method"] == "tools/list" {
                let tools = serde_json::json!({"tools": [{"name": "t", "inputSchema": {"type": "object"}}]});
                let body = harness::scripted::rpc_result(&v["id"], tools);
                let _ = s.write_all(&harness::scripted::json_response(&body));
                continue;
            }
            let ask = "data: {\"jsonrpc\":\"2.0\",\"id\":\"s1\",\"method\":\"sampling/createMessage\",\"params\":{\"messages\":[],\"maxTokens\":5}}\n\n";
            let done = format!(
                "data: {}\n\n",
                harness::scripted::text_result(&v["id"], "done")
            );
            let out = format!("{SSE_HEAD}{}{}0\r\n\r\n", chunk(ask), chunk(&done));
            let _ = s.write_all(out.as_bytes());
        }
    })
}

/// Opens a session, reads the GET stream (`get`: a federated one merges the demo's, which stays
/// open) and calls a tool; returns the session hash of the tools/call's access line once it is
/// logged.
fn exchange(gw: &Gateway, tool: &str, get: bool) -> String {
    let mut mcp = Mcp::new(gw.addr, "/mcp");
    mcp.initialize("2025-11-25");
    if get {
        let get = mcp.try_send("GET", b"").expect("GET stream");
        assert_eq!(get.status, 200, "{}", get.text());
        let got: Vec<Value> = get.sse_messages();
        assert_eq!(got.len(), 1, "{}", get.text());
        assert_eq!(got[0]["method"], "elicitation/create", "{}", get.text());
    }
    let r = mcp.request(
        "tools/call",
        serde_json::json!({"name": tool, "arguments": {}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let msgs = r.sse_messages();
    assert_eq!(msgs.len(), 2, "{}", r.text());
    assert_eq!(msgs[0]["method"], "sampling/createMessage", "{}", r.text());
    assert_eq!(
        msgs[1]["result"]["content"][0]["text"],
        "done",
        "{}",
        r.text()
    );
    let mut session = None;
    let found = harness::eventually(Duration::from_secs(10), || {
        session = gw.log.text().lines().find_map(|l| {
            let rest = l.split("rpc=tools/call ").nth(1)?;
            let s = rest.split("session=").nth(1)?;
            Some(s[..16].to_string())
        });
        session.is_some()
    });
    assert!(found, "no tools/call access line:\n{}", gw.log.text());
    session.unwrap()
}

fn trail_lines(gw: &Gateway) -> Vec<String> {
    gw.log
        .text()
        .lines()
        .filter(|l| l.contains("server-to-client request"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_trail_names_each_relayed_request_with_the_access_lines_session() {
    let up = upstream();
    let gw = Gateway::builder()
        .upstream("up", &up.url())
        .serve("/mcp", "up")
        .rust_log("warn,tollgate::server_requests=debug")
        .yaml("log:\n  access: all\n")
        .start();
    let session = exchange(&gw, "t", true);
    let lines = trail_lines(&gw);
    let want = [
        format!("session={session} stream=\"GET\" method=\"elicitation/create\" id=5"),
        format!("session={session} stream=\"POST\" method=\"sampling/createMessage\" id=\"s1\""),
    ];
    for w in &want {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("relayed") && l.contains(w.as_str())),
            "no trail line with {w}:\n{}",
            gw.log.text()
        );
    }
    assert_eq!(lines.len(), 2, "{lines:#?}");
}

#[test]
fn the_federated_rewriter_writes_the_trail_too() {
    let up = upstream();
    let gw = Gateway::builder()
        .upstream_with("up", &up.url(), &[("prefix", "\"\"")])
        .rust_log("warn,tollgate::server_requests=debug")
        .yaml("log:\n  access: all\nservers:\n  - path: /mcp\n    upstreams: [up, demo]\n")
        .upstream("demo", "builtin:demo")
        .start();
    let session = exchange(&gw, "t", false);
    let lines = trail_lines(&gw);
    let w = format!("session={session} stream=\"federated\" method=\"sampling/createMessage\"");
    assert!(
        lines.iter().any(|l| l.contains(w.as_str())),
        "no trail line with {w}:\n{}",
        gw.log.text()
    );
}

#[test]
fn without_the_target_the_trail_is_silent_and_the_streams_pass_alike() {
    let up = upstream();
    let gw = Gateway::builder()
        .upstream("up", &up.url())
        .serve("/mcp", "up")
        .rust_log("debug,tollgate::server_requests=off")
        .yaml("log:\n  access: all\n")
        .start();
    exchange(&gw, "t", true);
    assert_eq!(trail_lines(&gw), Vec::<String>::new());
}
