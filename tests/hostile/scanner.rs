//! The JSON-RPC scanner end to end: bodies where full parsers disagree, or that are not JSON, are
//! refused with the code the scanner decides (-32700 not JSON, -32600 JSON but not an acceptable
//! message), never reach the upstream, and leave the client's connection usable.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::harness::{scripted, Driver, Http};
use crate::{builder, session, Problems};

/// (name, body, JSON-RPC code).
fn hostile_bodies() -> Vec<(&'static str, Vec<u8>, i64)> {
    let call = |params: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#)
            .into_bytes()
    };
    let deep = format!(
        r#"{{"name":"echo","arguments":{{"x":{}1{}}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend(call(r#"{"name":"echo","arguments":{}}"#));
    vec![
        (
            "duplicate method",
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}"#.to_vec(),
            -32600,
        ),
        (
            "duplicate id",
            br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#.to_vec(),
            -32600,
        ),
        (
            "duplicate params.name",
            call(r#"{"name":"echo","name":"fail","arguments":{}}"#),
            -32600,
        ),
        (
            "duplicate name spelled with an escape",
            call(r#"{"name":"echo","n\u0061me":"fail","arguments":{}}"#),
            -32600,
        ),
        (
            "duplicate _meta.progressToken",
            call(r#"{"name":"echo","arguments":{},"_meta":{"progressToken":1,"progressToken":2}}"#),
            -32600,
        ),
        (
            "lone surrogate in the method",
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/\ud800call"}"#.to_vec(),
            -32700,
        ),
        (
            "lone surrogate in the arguments",
            call(r#"{"name":"echo","arguments":{"text":"\udc00"}}"#),
            -32700,
        ),
        ("nesting deeper than max_json_depth", call(&deep), -32700),
        ("byte order mark", bom, -32700),
        (
            "trailing garbage",
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"} x"#.to_vec(),
            -32700,
        ),
        (
            "a second value",
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"}{"jsonrpc":"2.0","id":2,"method":"ping"}"#
                .to_vec(),
            -32700,
        ),
        (
            "huge number",
            call(r#"{"name":"echo","arguments":{"n":1e400}}"#),
            -32700,
        ),
        (
            "huge negative number",
            call(r#"{"name":"echo","arguments":{"n":-1.5e309}}"#),
            -32700,
        ),
        (
            "invalid UTF-8",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"x\":\"\xC3\x28\"}".to_vec(),
            -32700,
        ),
        (
            "unterminated string in the arguments",
            call(r#"{"name":"echo","arguments":{"text":"abc}}"#),
            -32700,
        ),
        (
            "method and result",
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#.to_vec(),
            -32600,
        ),
        (
            "jsonrpc 1.0",
            br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#.to_vec(),
            -32600,
        ),
        ("not an object", br#""ping""#.to_vec(), -32600),
        ("empty body", b"".to_vec(), -32700),
    ]
}

fn hostile_bodies_are_refused_with_the_right_code_and_the_connection_kept(d: Driver) {
    // The upstream records every body it gets: none of the hostile ones may arrive.
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let up = {
        let seen = seen.clone();
        scripted::Scripted::start(move |mut s, _| {
            while let Some(req) = scripted::read_request(&mut s) {
                seen.lock().unwrap().push(req.body.clone());
                let reply = scripted::mcp_basics(&req).unwrap_or_else(|| {
                    scripted::json_response(&scripted::rpc_result(&req.id(), serde_json::json!({})))
                });
                if s.write_all(&reply).is_err() {
                    return;
                }
            }
        })
    };
    let gw = builder(d)
        .upstream("scripted", &up.url())
        .serve("/mcp", "scripted")
        .start();
    let mut mcp = session(&gw);
    let mut p = Problems::default();
    for (name, body, code) in hostile_bodies() {
        // On the session's own connection: each refusal must leave it usable.
        let r = post(&mut mcp.http, mcp.session.as_deref().unwrap(), &body);
        let Some(r) = r else {
            p.push(format!(
                "{name}: the connection closed instead of a refusal"
            ));
            mcp.http = Http::connect(gw.addr);
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if r.status != 400 || v["error"]["code"] != code {
            p.push(format!(
                "{name}: expected 400 with {code}, got {} {}",
                r.status,
                r.text()
            ));
        }
        if r.header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            p.push(format!("{name}: the refusal closes the connection"));
        }
        let ping = post(
            &mut mcp.http,
            mcp.session.as_deref().unwrap(),
            br#"{"jsonrpc":"2.0","id":"after","method":"ping"}"#,
        );
        match ping {
            Some(r) if r.status == 200 && r.json()["id"] == "after" => {}
            Some(r) => p.push(format!(
                "{name}: the next request on the connection got {} {}",
                r.status,
                r.text()
            )),
            None => {
                p.push(format!("{name}: the connection closed after the refusal"));
                mcp.http = Http::connect(gw.addr);
            }
        }
    }
    let seen = seen.lock().unwrap();
    for (name, body, _) in hostile_bodies() {
        if !body.is_empty() && seen.contains(&body) {
            p.push(format!("{name}: reached the upstream"));
        }
    }
    p.assert_none("hostile JSON bodies");
}

/// POSTs `body` with the session's headers on `h`; `None` if the connection closed first.
fn post(h: &mut Http, sid: &str, body: &[u8]) -> Option<crate::harness::Response> {
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMcp-Session-Id: {sid}\r\n\
         MCP-Protocol-Version: 2025-06-18\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    h.stream.write_all(&req).ok()?;
    h.read_response()
}

drivers!(hostile_bodies_are_refused_with_the_right_code_and_the_connection_kept);
