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
