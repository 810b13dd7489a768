//! HTTP/1.1 conformance of the gateway's front door, end to end on raw sockets: what RFC 9112
//! and RFC 9110 ask of a server about the request line, `Host`, the request target's form and
//! `Expect`, plus the `Origin` rule of the MCP transport. The built-in demo is the upstream.

mod harness;

use harness::{Gateway, Http, Response};

const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

/// A POST of `ping` with the given request target and extra header lines (each ending in CRLF).
fn post(target: &str, headers: &str) -> Vec<u8> {
    format!(
        "POST {target} HTTP/1.1\r\n{headers}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{PING}",
        PING.len()
    )
    .into_bytes()
}

fn send(gw: &Gateway, raw: &[u8]) -> Response {
    let mut h = Http::connect(gw.addr);
    h.send_raw(raw);
    h.read_response().expect("a response")
}

fn demo_gateway() -> Gateway {
    Gateway::builder().workers(1).start()
}

/// The shapes a lax `host:port` split reads as an allowed host.
const BAD_AUTHORITIES: [&str; 5] = [
    "[::1]evil.com",
    "[::1].evil.com",
    "[::1]@evil.com",
    "localhost:abc",
    "localhost:18500x",
];

#[test]
fn an_invalid_host_is_a_bad_request() {
    let gw = demo_gateway();
    for bad in BAD_AUTHORITIES {
        let r = send(&gw, &post("/mcp", &format!("Host: {bad}\r\n")));
        assert_eq!(r.status, 400, "Host: {bad}: {}", r.text());
        assert!(r.text().contains("Host"), "{}", r.text());
    }
    // An HTTP/1.0 request has no Host to send, but one it sends must be valid too.
    let r = send(&gw, b"GET /mcp HTTP/1.0\r\nHost: [::1]evil.com\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.text());
    // The allowed shapes still pass the loopback rule (a ping without a session: 400 from the
    // session check, which comes after Host and Origin).
    for ok in ["localhost", "localhost:18500", "127.0.0.1:1", "[::1]:65535"] {
        let r = send(&gw, &post("/mcp", &format!("Host: {ok}\r\n")));
        assert!(
            r.text().contains("Mcp-Session-Id"),
            "Host: {ok}: {}",
            r.text()
        );
    }
}

#[test]
fn an_invalid_origin_is_forbidden_even_when_every_origin_is_allowed() {
    for yaml in [
        "",
        "listen:\n  address: 127.0.0.1:0\n  allowed_origins: [\"*\"]\n",
    ] {
        let gw = Gateway::builder().workers(1).yaml(yaml).start();
        for bad in BAD_AUTHORITIES {
            let headers = format!("Host: localhost\r\nOrigin: http://{bad}\r\n");
            let r = send(&gw, &post("/mcp", &headers));
            assert_eq!(r.status, 403, "Origin: http://{bad}: {}", r.text());
            assert!(r.text().contains("not a valid origin"), "{}", r.text());
        }
        for bad in ["http://localhost/", "localhost", ""] {
            let headers = format!("Host: localhost\r\nOrigin: {bad}\r\n");
            let r = send(&gw, &post("/mcp", &headers));
            assert_eq!(r.status, 403, "Origin: {bad}: {}", r.text());
        }
        let ok = "Host: localhost\r\nOrigin: http://localhost:6274\r\n";
        let r = send(&gw, &post("/mcp", ok));
        assert!(r.text().contains("Mcp-Session-Id"), "{}", r.text());
    }
}

/// `initialize` as raw bytes, with the given request target and extra header lines.
fn initialize(target: &str, headers: &str) -> Vec<u8> {
    let body = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    format!(
        "POST {target} HTTP/1.1\r\n{headers}Content-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn an_absolute_form_target_is_served_on_its_path_with_its_authority() {
    let gw = demo_gateway();
    let port = gw.addr.port();
    // RFC 9112 §3.2.2: a server must accept the absolute-form.
    for target in [
        format!("http://127.0.0.1:{port}/mcp"),
        format!("HTTP://localhost:{port}/mcp?x=1"),
        "https://[::1]/mcp".to_string(),
    ] {
        let r = send(&gw, &initialize(&target, "Host: localhost\r\n"));
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        assert!(r.header("mcp-session-id").is_some(), "{target}");
    }
    // The target's authority replaces Host: it is what the allow-list checks…
    let r = send(
        &gw,
        &post("http://evil.example.com/mcp", "Host: localhost\r\n"),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("allowed_hosts"), "{}", r.text());
    let r = send(
        &gw,
        &initialize("http://localhost/mcp", "Host: evil.example.com\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Routing reads the path.
    let r = send(&gw, &post("http://localhost/nope", "Host: localhost\r\n"));
    assert_eq!(r.status, 404, "{}", r.text());

    // …and the target's authority is what a same-origin Origin is compared with.
    let yaml = "listen:\n  address: 127.0.0.1:0\n  allowed_hosts: [mcp.example, localhost]\n";
    let gw = Gateway::builder().workers(1).yaml(yaml).start();
    let origin = "Origin: http://mcp.example:1\r\n";
    let same = format!("Host: localhost\r\n{origin}");
    let r = send(&gw, &initialize("http://mcp.example:1/mcp", &same));
    assert_eq!(r.status, 200, "{}", r.text());
    let other = format!("Host: mcp.example:1\r\n{origin}");
    let r = send(&gw, &initialize("http://localhost:1/mcp", &other));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("allowed_origins"), "{}", r.text());
}

#[test]
fn a_target_in_no_form_or_another_scheme_or_with_a_bad_authority_is_a_bad_request() {
    let gw = demo_gateway();
    let mut targets: Vec<String> = BAD_AUTHORITIES
        .iter()
        .map(|a| format!("http://{a}/mcp"))
        .collect();
    targets.extend(
        [
            "ftp://localhost/mcp",
            "http://user@localhost/mcp",
            "http:/mcp",
            "localhost:8080",
            "mcp",
            "*",
        ]
        .map(String::from),
    );
    for target in targets {
        let r = send(&gw, &post(&target, "Host: localhost\r\n"));
        assert_eq!(r.status, 400, "{target}: {}", r.text());
    }
    // Host is still required and must be valid alongside an absolute-form target.
    let r = send(&gw, &post("http://localhost/mcp", ""));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = send(
        &gw,
        &post("http://localhost/mcp", "Host: localhost:abc\r\n"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

/// Sends `raw` and reads until the gateway closes the connection.
fn exchange_until_close(gw: &Gateway, raw: &[u8]) -> String {
    use std::io::Read;
    let mut h = Http::connect(gw.addr);
    h.send_raw(raw);
    let mut out = Vec::new();
    let _ = h.stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn expect_100_continue_is_answered_in_http_1_1_and_ignored_in_http_1_0() {
    let gw = demo_gateway();
    // Head and body in one write, so the whole exchange is in the bytes read back.
    let request = |version: &str| {
        let raw = String::from_utf8(initialize("/mcp", "Host: localhost\r\n")).unwrap();
        raw.replacen(
            "HTTP/1.1\r\n",
            &format!("{version}\r\nExpect: 100-continue\r\n"),
            1,
        )
        .replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1)
    };
    let http10 = exchange_until_close(&gw, request("HTTP/1.0").as_bytes());
    assert!(http10.starts_with("HTTP/1.1 200 "), "{http10}");
    assert!(!http10.contains("100 Continue"), "{http10}");
    let http11 = exchange_until_close(&gw, request("HTTP/1.1").as_bytes());
    assert!(
        http11.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "),
        "{http11}"
    );
}

#[test]
fn heads_that_two_parsers_could_frame_differently_are_refused_and_closed() {
    let gw = demo_gateway();
    let body = format!("{PING}GET /mcp HTTP/1.1\r\nHost: localhost\r\n\r\n");
    for framing in [
        // Equal Content-Lengths: a proxy may have joined or dropped one.
        format!("Content-Length: {0}\r\nContent-Length: {0}\r\n", PING.len()),
        // Read as Transfer-Encoding/Content-Length by servers that fold '_' into '-'.
        "Transfer_Encoding: chunked\r\n".to_string(),
        format!("Content_Length: {}\r\n", PING.len()),
        format!(
            "Transfer---Encoding: chunked\r\nContent-Length: {}\r\n",
            PING.len()
        ),
    ] {
        let raw = format!(
            "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{framing}\r\n{body}"
        );
        let mut h = Http::connect(gw.addr);
        h.send_raw(raw.as_bytes());
        let r = h.read_response().expect("a response");
        assert_eq!(r.status, 400, "{framing}: {}", r.text());
        assert!(
            h.read_response().is_none(),
            "{framing}: closed after the refusal"
        );
    }
    // A GET or HEAD with a body: its bytes are not read as the next request.
    for method in ["GET", "HEAD"] {
        let raw = format!(
            "{method} /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut h = Http::connect(gw.addr);
        h.send_raw(raw.as_bytes());
        let r = h.read_response().expect("a response");
        assert_eq!(r.status, 400, "{method}: {}", r.text());
        assert!(
            h.read_response().is_none(),
            "{method}: closed after the refusal"
        );
    }
}
