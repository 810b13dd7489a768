//! Request and response head parsing: framing, limits, authorities, smuggling shapes.
use super::*;

fn req(s: &str) -> Result<Option<RequestHead>, HeadError> {
    let mut h = [const { MaybeUninit::uninit() }; 16];
    parse_request(s.as_bytes(), &mut h, 1024, 512)
}

#[test]
fn parses_mcp_post() {
    let s = "POST /mcp?x=1 HTTP/1.1\r\nHost: localhost:8080\r\nContent-Type: application/json\r\n\
             Mcp-Session-Id: abc\r\nMCP-Protocol-Version: 2025-06-18\r\ntraceparent: 00-1\r\n\
             Content-Length: 12\r\n\r\n{\"a\":1}";
    let h = req(s).unwrap().unwrap();
    let b = s.as_bytes();
    assert_eq!(h.method(), HttpMethod::Post);
    assert_eq!(h.path(b), b"/mcp");
    assert_eq!(&b[h.session_id.clone().unwrap()], b"abc");
    assert_eq!(&b[h.protocol_version.clone().unwrap()], b"2025-06-18");
    assert_eq!(h.content_length, Some(12));
    assert!(h.keep_alive);
    assert_eq!(h.trace.len(), 1);
    assert_eq!(&b[h.len..], b"{\"a\":1}");
}

#[test]
fn partial_then_too_large() {
    assert!(req("POST /mcp HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n", "a".repeat(2000));
    assert_eq!(req(&big).unwrap_err().kind, Kind::HeaderTooLarge);
    let big_done = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(2000)
    );
    assert_eq!(req(&big_done).unwrap_err().kind, Kind::HeaderTooLarge);
}

#[test]
fn refuses_smuggling_shapes() {
    let both =
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(req(both).unwrap_err().kind, Kind::MalformedHttp);
    let two_cl = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
    assert_eq!(req(two_cl).unwrap_err().kind, Kind::MalformedHttp);
    let same_cl = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(req(same_cl).unwrap_err().kind, Kind::MalformedHttp);
    let cl_list = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n";
    assert_eq!(req(cl_list).unwrap_err().kind, Kind::MalformedHttp);
    let gzip = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    assert_eq!(
        req(gzip).unwrap_err().kind,
        Kind::UnsupportedTransferEncoding
    );
    let neg = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n";
    assert_eq!(req(neg).unwrap_err().kind, Kind::MalformedHttp);
    for bad in ["+1", "1 2", "0x1", "", "12345678901234567890"] {
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {bad}\r\n\r\n");
        assert_eq!(req(&head).unwrap_err().kind, Kind::MalformedHttp, "{bad:?}");
    }
    assert_eq!(
        super::parse_content_length(b"9999999999999999999"),
        Some(9_999_999_999_999_999_999)
    );
    assert_eq!(super::parse_content_length(b"0042"), Some(42));
    let two_sessions =
        "POST / HTTP/1.1\r\nHost: x\r\nMcp-Session-Id: a\r\nMcp-Session-Id: b\r\n\r\n";
    assert_eq!(req(two_sessions).unwrap_err().kind, Kind::MalformedHttp);
    assert_eq!(
        req("GET / HTTP/1.1\r\n\r\n").unwrap_err().kind,
        Kind::MalformedHttp
    );
}

#[test]
fn host_must_be_a_valid_authority() {
    let with_host =
        |minor: u8, host: &str| req(&format!("GET /mcp HTTP/1.{minor}\r\nHost: {host}\r\n\r\n"));
    for bad in [
        "[::1]evil.com",
        "[::1].evil.com",
        "[::1]@evil.com",
        "localhost:abc",
        "localhost:18500x",
        "localhost:65536",
        "user@localhost",
        "local host",
        "",
    ] {
        for minor in [0, 1] {
            let e = with_host(minor, bad).unwrap_err();
            assert_eq!(e.kind, Kind::MalformedHttp, "{bad:?}");
            assert!(e.reason.contains("Host"), "{bad:?}: {}", e.reason);
        }
    }
    let s = "GET /mcp HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n";
    let h = req(s).unwrap().unwrap();
    assert_eq!(&s[h.authority.clone().unwrap()], "[::1]:8080");
    assert_eq!(&s[h.authority_host.clone().unwrap()], "[::1]");
    let h10 = req("GET /mcp HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert_eq!(h10.authority, None);
}

#[test]
fn absolute_form_routes_on_its_path_and_brings_its_authority() {
    let s = "POST http://127.0.0.1:8080/mcp?x=1 HTTP/1.1\r\nHost: other.example\r\n\r\n";
    let h = req(s).unwrap().unwrap();
    assert_eq!(h.path(s.as_bytes()), b"/mcp");
    assert_eq!(&s[h.target.clone()], "/mcp?x=1");
    assert_eq!(&s[h.authority.clone().unwrap()], "127.0.0.1:8080");
    assert_eq!(&s[h.authority_host.clone().unwrap()], "127.0.0.1");
    assert_eq!(&s[h.host.clone().unwrap()], "other.example");
    for (target, path, authority) in [
        ("HTTPS://[::1]:9/mcp", "/mcp", "[::1]:9"),
        ("http://localhost", "/", "localhost"),
        ("http://localhost?q", "/", "localhost"),
    ] {
        let s = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let h = req(&s).unwrap().unwrap();
        assert_eq!(h.path(s.as_bytes()), path.as_bytes(), "{target}");
        assert_eq!(&s[h.authority.clone().unwrap()], authority, "{target}");
    }
    // An HTTP/1.0 request may carry its authority in the target alone.
    let s = "GET http://localhost:1/mcp HTTP/1.0\r\n\r\n";
    let h = req(s).unwrap().unwrap();
    assert_eq!(&s[h.authority.clone().unwrap()], "localhost:1");
}

#[test]
fn targets_that_are_no_form_or_another_scheme_are_refused() {
    for target in [
        "ftp://localhost/mcp",
        "ws://localhost/mcp",
        "http:/localhost/mcp",
        "http:localhost/mcp",
        "http:///mcp",
        "http://[::1]evil.com/mcp",
        "http://[::1]@evil.com/mcp",
        "http://user@localhost/mcp",
        "http://localhost:abc/mcp",
        "http://localhost:18500x/mcp",
        "localhost:8080",
        "mcp",
        "*",
        "1http://localhost/mcp",
    ] {
        let s = format!("POST {target} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let e = req(&s).unwrap_err();
        assert_eq!(e.kind, Kind::MalformedHttp, "{target}");
    }
    assert!(req("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap()
        .is_some());
    // Host must be valid (and present in HTTP/1.1) even when the target has an authority.
    let bad_host = "POST http://localhost/mcp HTTP/1.1\r\nHost: [::1]evil.com\r\n\r\n";
    assert_eq!(req(bad_host).unwrap_err().kind, Kind::MalformedHttp);
    let no_host = "POST http://localhost/mcp HTTP/1.1\r\n\r\n";
    assert_eq!(req(no_host).unwrap_err().kind, Kind::MalformedHttp);
}

#[test]
fn a_request_line_over_its_limit_is_uri_too_long() {
    let line = |target_len: usize| format!("GET /{} HTTP/1.1", "a".repeat(target_len - 1));
    // "GET " + target + " HTTP/1.1" is 13 bytes more than the target.
    let at_limit = line(512 - 13);
    assert_eq!(at_limit.len(), 512);
    let over = line(512 - 12);
    for (l, ok) in [(&at_limit, true), (&over, false)] {
        for rest in ["\r\nHost: x\r\n\r\n", "\nHost: x\n\n", "\r\nHost: x\r\n"] {
            let r = req(&format!("{l}{rest}"));
            if ok {
                assert!(r.is_ok(), "{} + {rest:?}: {r:?}", l.len());
            } else {
                assert_eq!(r.unwrap_err().kind, Kind::UriTooLong, "{rest:?}");
            }
        }
    }
    // Partial: refused as soon as the line is longer than the limit, not at max_head.
    assert!(req(&at_limit).unwrap().is_none());
    assert!(req(&format!("{at_limit}\r")).unwrap().is_none());
    let target_so_far = |n: usize| format!("GET /{}", "a".repeat(n - 5));
    assert!(req(&target_so_far(512)).unwrap().is_none());
    assert_eq!(req(&target_so_far(513)).unwrap_err().kind, Kind::UriTooLong);
    // Empty lines before the request line do not count (RFC 9112 §2.2).
    assert!(req(&format!("\r\n{at_limit}\r\nHost: x\r\n\r\n")).is_ok());
    // A long head with a short line is the head limit's business.
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n", "a".repeat(2000));
    assert_eq!(req(&big).unwrap_err().kind, Kind::HeaderTooLarge);
}

#[test]
fn expect_100_continue_only_in_http_1_1() {
    let expect = |minor: u8| {
        req(&format!(
            "POST /mcp HTTP/1.{minor}\r\nHost: x\r\nExpect: 100-continue\r\n\r\n"
        ))
        .unwrap()
        .unwrap()
        .expect_continue
    };
    assert!(expect(1));
    assert!(!expect(0));
}

#[test]
fn lookalikes_of_the_framing_headers_are_refused() {
    for name in [
        "Transfer_Encoding",
        "Transfer---Encoding",
        "transfer.encoding",
        "-Transfer-Encoding",
        "Transfer-Encoding-",
        "Content_Length",
        "CONTENT~LENGTH",
        "Content-Length_",
        "ContentLength",
    ] {
        let s = format!("POST / HTTP/1.1\r\nHost: x\r\n{name}: 5\r\n\r\n");
        let e = req(&s).unwrap_err();
        assert_eq!(e.kind, Kind::MalformedHttp, "{name}");
        assert!(e.reason.contains("resembles"), "{name}: {}", e.reason);
    }
    for name in [
        "Content-Lengths",
        "Content-Length-X",
        "X-Content-Length",
        "Transfer-Encodings",
        "Content-Language",
        "Accept-Encoding",
        "Content-Type-Length",
    ] {
        let s = format!("POST / HTTP/1.1\r\nHost: x\r\n{name}: 5\r\n\r\n");
        assert!(req(&s).unwrap().is_some(), "{name}");
    }
}

#[test]
fn get_and_head_take_no_body() {
    for method in ["GET", "HEAD"] {
        for framing in ["Content-Length: 1", "Transfer-Encoding: chunked"] {
            let s = format!("{method} /mcp HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n");
            assert_eq!(req(&s).unwrap_err().kind, Kind::MalformedHttp, "{s}");
        }
        let empty = format!("{method} /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert!(req(&empty).unwrap().is_some());
    }
    let post = "POST /mcp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(req(post).unwrap().is_some());
}

#[test]
fn too_many_headers() {
    let mut s = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        s.push_str(&format!("X-{i}: y\r\n"));
    }
    s.push_str("\r\n");
    assert_eq!(req(&s).unwrap_err().kind, Kind::TooManyHeaders);
}

#[test]
fn connection_semantics() {
    assert!(
        !req("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap()
            .keep_alive
    );
    assert!(!req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
    assert!(
        req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap()
            .keep_alive
    );
}

#[test]
fn response_framing_and_relay() {
    let s = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\
             mcp-session-id: up-1\r\nX-Custom: v\r\nConnection: keep-alive\r\n\r\n";
    let mut h = [const { MaybeUninit::uninit() }; 16];
    let r = parse_response(s.as_bytes(), &mut h, 1024, false)
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.framing, Framing::Chunked);
    assert!(r.is_sse(s.as_bytes()));
    assert_eq!(&s.as_bytes()[r.session_id.clone().unwrap()], b"up-1");
    let names: Vec<_> = r.relay.iter().map(|h| &s[h.name()]).collect();
    assert_eq!(names, ["Content-Type", "X-Custom"]);
    let close = "HTTP/1.1 200 OK\r\n\r\n";
    let r = parse_response(close.as_bytes(), &mut h, 1024, false)
        .unwrap()
        .unwrap();
    assert_eq!(r.framing, Framing::UntilClose);
    assert!(!r.keep_alive);
    let accepted = "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";
    let r = parse_response(accepted.as_bytes(), &mut h, 1024, false)
        .unwrap()
        .unwrap();
    assert_eq!(r.framing, Framing::Length(0));
    assert_eq!(r.keep_alive_timeout, None);
}

#[test]
fn a_response_with_both_framings_is_chunked_and_not_reused() {
    let s = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut h = [const { MaybeUninit::uninit() }; 16];
    let r = parse_response(s.as_bytes(), &mut h, 1024, false)
        .unwrap()
        .unwrap();
    assert_eq!(r.framing, Framing::Chunked);
    assert!(!r.keep_alive);
}

#[test]
fn keep_alive_timeout_is_read() {
    for (v, want) in [
        ("timeout=5", Some(5)),
        ("max=100, Timeout = 2", Some(2)),
        ("timeout=abc", None),
        ("max=3", None),
        ("timeout=", None),
    ] {
        let s = format!("HTTP/1.1 200 OK\r\nKeep-Alive: {v}\r\nContent-Length: 0\r\n\r\n");
        let mut h = [const { MaybeUninit::uninit() }; 16];
        let r = parse_response(s.as_bytes(), &mut h, 1024, false)
            .unwrap()
            .unwrap();
        assert_eq!(r.keep_alive_timeout, want, "{v}");
    }
}

#[test]
fn a_complete_response_head_over_the_limit_is_refused() {
    let mut h = [const { MaybeUninit::uninit() }; 16];
    let s = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(2000)
    );
    let e = parse_response(s.as_bytes(), &mut h, 1024, false).unwrap_err();
    assert_eq!(e.kind, Kind::UpstreamProtocol);
}

#[test]
fn header_names_match_in_any_case_and_only_their_own() {
    // Every name the parser looks for, against its upper-case, mixed-case and near-miss
    // spellings (a neighbour by bit 5 that is a token byte, a byte one off, one byte longer).
    let names = [
        "host",
        "origin",
        "accept",
        "expect",
        "baggage",
        "mcp-name",
        "x-api-key",
        "connection",
        "mcp-method",
        "tracestate",
        "traceparent",
        "content-type",
        "authorization",
        "last-event-id",
        "content-length",
        "mcp-session-id",
        "transfer-encoding",
        "mcp-protocol-version",
        "mcp-param-",
        "keep-alive",
        "x-accel-buffering",
        "te",
    ];
    for n in names {
        let upper = n.to_ascii_uppercase();
        let mixed: String = n
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        for yes in [n, upper.as_str(), mixed.as_str()] {
            assert!(token_is(yes.as_bytes(), n.as_bytes()), "{yes} is {n}");
        }
        for i in 0..n.len() {
            let mut b = n.as_bytes().to_vec();
            for other in [b'_', b'.', b'1', b'`', b'~', b[i] + 1, b[i].wrapping_sub(1)] {
                b[i] = other;
                if b[i] != n.as_bytes()[i] && b[i].is_ascii_graphic() {
                    assert!(
                        !token_is(&b, n.as_bytes()),
                        "{:?} is not {n}",
                        String::from_utf8_lossy(&b)
                    );
                }
            }
        }
        assert!(!token_is(format!("{n}x").as_bytes(), n.as_bytes()));
    }
}

#[test]
fn a_head_parsed_into_a_used_one_is_the_head_parsed_afresh() {
    // The worker lends the same boxes request after request: nothing of the last may remain.
    let first = "POST /mcp HTTP/1.1\r\nHost: a.test\r\nAuthorization: Bearer x\r\n\
                 Mcp-Session-Id: s1\r\nMcp-Param-Region: eu\r\ntraceparent: 00-1\r\n\
                 Origin: http://a.test\r\nAccept: a\r\nAccept: b\r\nExpect: 100-continue\r\n\
                 Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let second = "GET /other HTTP/1.0\r\n\r\n";
    let mut h = [const { MaybeUninit::uninit() }; 16];
    let mut slot = RequestHead::default();
    assert!(parse_request_into(first.as_bytes(), &mut h, 1024, 512, &mut slot).unwrap());
    assert!(slot.chunked && slot.authorization.is_some() && !slot.mcp_params.is_empty());
    let mut h = [const { MaybeUninit::uninit() }; 16];
    assert!(parse_request_into(second.as_bytes(), &mut h, 1024, 512, &mut slot).unwrap());
    let fresh = req(second).unwrap().unwrap();
    assert_eq!(format!("{slot:?}"), format!("{fresh:?}"));

    // More bytes needed: the slot is left as it was.
    let mut h = [const { MaybeUninit::uninit() }; 16];
    assert!(
        !parse_request_into(b"POST /mcp HTTP/1.1\r\nHost:", &mut h, 1024, 512, &mut slot).unwrap()
    );
    assert_eq!(format!("{slot:?}"), format!("{fresh:?}"));
}
