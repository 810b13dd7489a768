//! The gateway in front of a scripted, misbehaving upstream: replies one byte at a time,
//! bodies cut short, stalls mid-body, garbage instead of HTTP. The client must get either the
//! exact bytes or a clear failure, never a hang, and the gateway must keep serving.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use harness::scripted::{self, read_request};
use harness::{session, Gateway, Mcp};
use serde_json::json;

fn json_reply(id: &serde_json::Value, result: serde_json::Value) -> Vec<u8> {
    scripted::json_response(&scripted::rpc_result(id, result))
}

/// An upstream that behaves for initialize and misbehaves on tools/call per the tool's name.
fn hostile_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

fn serve(mut s: TcpStream) {
    while let Some(req) = read_request(&mut s).map(|r| r.json()) {
        let id = req["id"].clone();
        let method = req["method"].as_str().unwrap_or("");
        let reply = match method {
            _ if id.is_null() => b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "initialize" => {
                // A client named "bad-version" gets a revision no one supports.
                let version = match req["params"]["clientInfo"]["name"].as_str() {
                    Some("bad-version") => "1999-01-01",
                    _ => "2025-06-18",
                };
                json_reply(
                    &id,
                    json!({"protocolVersion": version, "capabilities": {"tools": {}},
                           "serverInfo": {"name": "hostile", "version": "1"}}),
                )
            }
            _ => {
                let text = "x".repeat(300);
                let ok = json_reply(&id, json!({"content": [{"type": "text", "text": text}]}));
                match req["params"]["name"].as_str().unwrap_or("") {
                    "one_byte_at_a_time" => {
                        for b in ok {
                            if s.write_all(&[b]).is_err() {
                                return;
                            }
                            let _ = s.flush();
                        }
                        continue;
                    }
                    "truncated" => {
                        let cut = ok.len() - 100;
                        let _ = s.write_all(&ok[..cut]);
                        return; // close mid-body
                    }
                    "stall" => {
                        let cut = ok.len() - 100;
                        let _ = s.write_all(&ok[..cut]);
                        std::thread::sleep(Duration::from_secs(10));
                        return;
                    }
                    "garbage" => b"HELLO THERE\r\n\r\n".to_vec(),
                    _ => ok,
                }
            }
        };
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

fn gateway() -> Gateway {
    let up = hostile_upstream();
    Gateway::builder()
        .yaml(&format!(
            "upstreams:\n  - name: hostile\n    url: \"http://{up}/mcp\"\n    request_timeout: 500ms\n\
             servers:\n  - path: /mcp\n    upstream: hostile\n"
        ))
        .start()
}

fn call_raw(mcp: &Mcp, tool: &str) -> (TcpStream, Vec<u8>) {
    let body = json!({"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name": tool, "arguments": {}}}).to_string();
    let mut s = TcpStream::connect(mcp.http.stream.peer_addr().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in mcp.headers() {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    // Read until the response is complete (Content-Length satisfied) or the gateway closes.
    loop {
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..p]).to_lowercase();
            if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
                if got.len() >= p + 4 + len.trim().parse::<usize>().unwrap() {
                    return (s, got);
                }
            }
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return (s, got),
            Ok(n) => got.extend_from_slice(&tmp[..n]),
        }
    }
}

fn still_serving(gw: &Gateway, mcp: &Mcp) {
    let (_, got) = call_raw(mcp, "fine");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(&"x".repeat(300)), "{text}");
    let _ = gw;
}

#[test]
fn a_reply_dribbled_one_byte_at_a_time_arrives_whole() {
    let gw = gateway();
    let mcp = session(&gw);
    let (_, got) = call_raw(&mcp, "one_byte_at_a_time");
    let text = String::from_utf8_lossy(&got);
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["id"], 42);
    assert_eq!(
        v["result"]["content"][0]["text"].as_str().unwrap().len(),
        300
    );
    still_serving(&gw, &mcp);
}

#[test]
fn a_small_body_cut_short_becomes_a_jsonrpc_error_and_the_gateway_keeps_serving() {
    // Small replies are read whole before any byte reaches the client, so a cut-short one is
    // answered with an error the client can parse, never a short or complete-looking body.
    let gw = gateway();
    let mcp = session(&gw);
    let t0 = Instant::now();
    let (_, got) = call_raw(&mcp, "truncated");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    let p = text.find("\r\n\r\n").expect("a response");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text[p + 4..]).unwrap();
    assert_eq!(v["id"], 42);
    assert_eq!(v["error"]["code"], -31003, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mid-reply"),
        "{v}"
    );
    still_serving(&gw, &mcp);
}

#[test]
fn a_stall_mid_body_ends_within_the_read_timeout() {
    let gw = gateway();
    let mcp = session(&gw);
    let t0 = Instant::now();
    let (_, got) = call_raw(&mcp, "stall");
    let took = t0.elapsed();
    // By order, not by time: the upstream stalls 10 s and then closes. Ended by the read
    // timeout, the answer is the timeout error; one that waited for the close would be the
    // cut-short error (-31003), or nothing within the client's 10 s.
    let text = String::from_utf8_lossy(&got);
    let p = text.find("\r\n\r\n").expect("a response");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text[p + 4..]).unwrap();
    assert_eq!(v["error"]["code"], -31002, "ended by request_timeout: {v}");
    // A hang guard only (the stall is 10 s; request_timeout is 500 ms).
    assert!(took < Duration::from_secs(9), "relay hung for {took:?}");
    still_serving(&gw, &mcp);
}

#[test]
fn garbage_instead_of_http_is_a_jsonrpc_error() {
    let gw = gateway();
    let mcp = session(&gw);
    let (_, got) = call_raw(&mcp, "garbage");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["id"], 42);
    assert_eq!(v["error"]["code"], -31003, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("\"hostile\""));
    still_serving(&gw, &mcp);
}

#[test]
fn an_initialize_reply_with_an_unknown_version_opens_no_session() {
    let gw = gateway();
    let body = json!({"jsonrpc":"2.0","id":"i-1","method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bad-version","version":"1"}}});
    let r = gw.client().request(
        "POST",
        "/mcp",
        &harness::JSON_HEADERS,
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("mcp-session-id").is_none(),
        "no session for a reply the gateway cannot use"
    );
    let v = r.json();
    assert_eq!(v["id"], "i-1");
    assert_eq!(v["error"]["code"], -31003);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"hostile\"") && msg.contains("protocol version"),
        "{msg}"
    );
}
