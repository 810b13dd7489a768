//! HTTP framing: the request line and head. What the gateway accepts must be exactly one request
//! with one meaning; anything a front end and a back end could frame differently is refused and
//! the connection closed, with nothing after the refusal.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use crate::harness::{Driver, JSON_HEADERS};
use crate::{exchange, request, show, split_response, split_responses, with_demo, Problems};
use crate::{BOUND, INITIALIZE};

const JSON: (&str, &str) = ("Content-Type", "application/json");
const ACCEPT: (&str, &str) = ("Accept", "application/json, text/event-stream");

fn absolute_form_target_is_served_like_the_path(d: Driver) {
    let (_demo, gw) = with_demo(d);
    let authority = format!("127.0.0.1:{}", gw.addr.port());
    let target = format!("http://{authority}/mcp");
    let mut h = gw.client();
    let mut headers = JSON_HEADERS.to_vec();
    headers.push(("Host", &authority));
    let r = h.request("POST", &target, &headers, INITIALIZE.as_bytes());
    assert_eq!(
        r.status,
        200,
        "POST {target} (absolute form, RFC 9112 §3.2.2) is /mcp: {}",
        r.text()
    );
    assert!(
        r.header("mcp-session-id")
            .is_some_and(|s| s.starts_with("tg2.")),
        "a session was opened: {:?}",
        r.headers
    );
}

fn absolute_form_with_a_foreign_authority_is_not_served(d: Driver) {
    let (_demo, gw) = with_demo(d);
    // The target's authority replaces Host (RFC 9112 §3.2.2): it is what must pass the check.
    let req = request(
        "POST http://evil.example.com/mcp HTTP/1.1",
        &[("Host", "localhost"), JSON, ACCEPT, ("Connection", "close")],
        INITIALIZE.as_bytes(),
    );
    let got = exchange(gw.addr, &req, BOUND).unwrap_or_else(|g| g);
    let (r, _) = split_response(&got).unwrap_or_else(|| panic!("no response: {}", show(&got)));
    assert!(
        (400..500).contains(&r.status) && !r.head.to_ascii_lowercase().contains("mcp-session-id"),
        "a foreign authority in the target must not be served: {}",
        show(&got)
    );
}

fn request_line_over_the_limit_gets_414(d: Driver) {
    let (_demo, gw) = with_demo(d);
    let mut p = Problems::default();
    // Default limits.max_request_line_bytes is 8 KiB; the head limit (16 KiB) is not reached.
    let long = format!("POST /mcp?pad={} HTTP/1.1", "a".repeat(9000));
    let req = request(
        &long,
        &[("Host", "localhost"), JSON, ACCEPT],
        INITIALIZE.as_bytes(),
    );
    let got = exchange(gw.addr, &req, BOUND);
    let closed = got.is_ok();
    let got = got.unwrap_or_else(|g| g);
    match split_response(&got) {
        Some((r, _)) if r.status == 414 => {
            let body = String::from_utf8_lossy(&r.body);
            if !body.contains("limits.max_request_line_bytes") {
                p.push(format!("the 414 does not name its limit: {body}"));
            }
            if !closed {
                p.push("the connection stayed open after a 414 with an unread body".into());
            }
        }
        _ => p.push(format!(
            "a {}-byte request line: expected 414, got {:?}",
            long.len(),
            show(&got)
        )),
    }
    // Under the limit: served.
    let short = format!("POST /mcp?pad={} HTTP/1.1", "a".repeat(7000));
    let req = request(
        &short,
        &[("Host", "localhost"), JSON, ACCEPT, ("Connection", "close")],
        INITIALIZE.as_bytes(),
    );
    let got = exchange(gw.addr, &req, BOUND).unwrap_or_else(|g| g);
    match split_response(&got) {
        Some((r, _)) if r.status == 200 => {}
        _ => p.push(format!(
            "a {}-byte request line (under 8 KiB) should be served: {:?}",
            short.len(),
            show(&got)
        )),
    }
    p.assert_none("request line length");
}

fn expect_100_continue_gets_an_interim_response_only_on_http11(d: Driver) {
    let (_demo, gw) = with_demo(d);
    // HTTP/1.0: no 1xx may be sent (RFC 9110 §15.2); the final response follows, then a close.
    let req = request(
        "POST /mcp HTTP/1.0",
        &[
            ("Host", "localhost"),
            JSON,
            ACCEPT,
            ("Expect", "100-continue"),
        ],
        INITIALIZE.as_bytes(),
    );
    let got = exchange(gw.addr, &req, BOUND).unwrap_or_else(|g| g);
    let statuses: Vec<u16> = split_responses(&got).iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200],
        "HTTP/1.0 with Expect: 100-continue: {}",
        show(&got)
    );

    // HTTP/1.1: the client waits for the 100 before sending the body.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nExpect: 100-continue\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n",
        INITIALIZE.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut got = vec![];
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("an interim 100 for HTTP/1.1");
        assert!(n > 0, "closed before the 100: {}", show(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "HTTP/1.1 Expect: 100-continue: {}",
        show(&got)
    );
    s.write_all(INITIALIZE.as_bytes()).unwrap();
    let rest =
        crate::harness::read_until_closed(&mut s, Instant::now() + BOUND).unwrap_or_else(|g| g);
    got.extend_from_slice(&rest);
    let statuses: Vec<u16> = split_responses(&got).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [100, 200], "{}", show(&got));
}

/// (name, raw request, acceptable refusal statuses).
fn smuggling_cases() -> Vec<(&'static str, Vec<u8>, &'static [u16])> {
    let body = INITIALIZE;
    let n = body.len();
    let h = "Host: localhost\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n";
    let post = |extra: &str, tail: &str| {
        format!("POST /mcp HTTP/1.1\r\n{h}{extra}\r\n{tail}").into_bytes()
    };
    const BAD: &[u16] = &[400];
    const CODING: &[u16] = &[400, 501];
    vec![
        ("CL then TE", post(&format!("Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n"), body), BAD),
        ("TE then CL", post(&format!("Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n"), body), BAD),
        ("two different CLs", post(&format!("Content-Length: {n}\r\nContent-Length: {}\r\n", n + 1), body), BAD),
        ("CL list", post(&format!("Content-Length: {n}, {n}\r\n"), body), BAD),
        ("CL with a sign", post(&format!("Content-Length: +{n}\r\n"), body), BAD),
        ("negative CL", post("Content-Length: -1\r\n", ""), BAD),
        ("CL in hex", post(&format!("Content-Length: 0x{n:x}\r\n"), body), BAD),
        ("TE gzip", post("Transfer-Encoding: gzip\r\n", "0\r\n\r\n"), CODING),
        ("TE gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"), CODING),
        ("TE chunked, chunked", post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"), CODING),
        ("TE twice", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), CODING),
        ("TE identity", post(&format!("Transfer-Encoding: identity\r\nContent-Length: {n}\r\n"), body), CODING),
        ("TE xchunked", post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"), CODING),
        ("space before the colon", post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"), BAD),
        ("obs-fold", post(&format!("X-Folded: a\r\n b\r\nContent-Length: {n}\r\n"), body), BAD),
        ("obs-fold of TE", post("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"), BAD),
        ("bare CR in a value", post(&format!("X-A: a\rb\r\nContent-Length: {n}\r\n"), body), BAD),
        ("NUL in a value", post(&format!("X-A: a\0b\r\nContent-Length: {n}\r\n"), body), BAD),
        (
            "whitespace before the first header",
            format!("POST /mcp HTTP/1.1\r\n Host: localhost\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n{body}").into_bytes(),
            BAD,
        ),
        (
            "no Host in HTTP/1.1",
            format!("POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n{body}").into_bytes(),
            BAD,
        ),
        ("two Hosts", post(&format!("Host: evil.example.com\r\nContent-Length: {n}\r\n"), body), BAD),
        (
            "chunked in HTTP/1.0",
            format!("POST /mcp HTTP/1.0\r\n{h}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(),
            BAD,
        ),
        ("chunk size 0x5", post("Transfer-Encoding: chunked\r\n", "0x5\r\nhello\r\n0\r\n\r\n"), BAD),
        ("chunk size overflow", post("Transfer-Encoding: chunked\r\n", "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), BAD),
        ("chunk size negative", post("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"), BAD),
        (
            "chunk lines ended by bare LF",
            post("Transfer-Encoding: chunked\r\n", &format!("{n:x}\n{body}\n0\n\n")),
            BAD,
        ),
        ("chunk data longer than its size", post("Transfer-Encoding: chunked\r\n", "2\r\nhello\r\n0\r\n\r\n"), BAD),
        (
            "HTTP/2.0 request line",
            format!("POST /mcp HTTP/2.0\r\n{h}Content-Length: {n}\r\n\r\n{body}").into_bytes(),
            &[400, 505],
        ),
    ]
}

fn smuggling_shapes_are_refused_and_the_connection_closed(d: Driver) {
    let (_demo, gw) = with_demo(d);
    let mut p = Problems::default();
    for (name, req, statuses) in smuggling_cases() {
        let got = exchange(gw.addr, &req, BOUND);
        let closed = got.is_ok();
        let got = got.unwrap_or_else(|g| g);
        match split_response(&got) {
            Some((r, rest)) if statuses.contains(&r.status) => {
                if !closed {
                    p.push(format!("{name}: refused with {} but left open", r.status));
                }
                if !rest.is_empty() {
                    p.push(format!("{name}: bytes after the refusal: {:?}", show(rest)));
                }
            }
            _ => p.push(format!(
                "{name}: expected {statuses:?} and a close, got {:?}",
                show(&got)
            )),
        }
    }
    p.assert_none("smuggling shapes");
}

fn bare_lf_heads_never_desynchronise_a_pipeline(d: Driver) {
    let (_demo, gw) = with_demo(d);
    let n = INITIALIZE.len();
    // A bare-LF head (RFC 9112 §2.2 lets a recipient accept it), then a CRLF request on the
    // same write. Either both are served in order, or the first is refused and the connection
    // closed: never a response to a request the client did not send.
    let mut bytes = format!(
        "POST /mcp HTTP/1.1\nHost: localhost\nContent-Type: application/json\nContent-Length: {n}\n\n{INITIALIZE}"
    )
    .into_bytes();
    bytes.extend(crate::request(
        "POST /mcp HTTP/1.1",
        &[("Host", "localhost"), JSON, ACCEPT, ("Connection", "close")],
        INITIALIZE.replace("\"id\":0", "\"id\":1").as_bytes(),
    ));
    let got = exchange(gw.addr, &bytes, BOUND).unwrap_or_else(|g| g);
    let rs = split_responses(&got);
    let ids: Vec<serde_json::Value> = rs
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body)
                .map_or(serde_json::Value::Null, |v| v["id"].clone())
        })
        .collect();
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    let served_both = statuses == [200, 200] && ids == [serde_json::json!(0), serde_json::json!(1)];
    let refused_first = statuses == [400];
    assert!(
        served_both || refused_first,
        "bare-LF head then a CRLF request: statuses {statuses:?}, ids {ids:?}: {}",
        show(&got)
    );
}

drivers!(
    absolute_form_target_is_served_like_the_path,
    absolute_form_with_a_foreign_authority_is_not_served,
    request_line_over_the_limit_gets_414,
    expect_100_continue_gets_an_interim_response_only_on_http11,
    smuggling_shapes_are_refused_and_the_connection_closed,
    bare_lf_heads_never_desynchronise_a_pipeline,
);
