//! Sessions: the gateway's sealed `Mcp-Session-Id` is believed only when it opens under this
//! instance's key, is unexpired, belongs to this endpoint and was not deleted. Anything else is
//! 404 (the client re-initializes); no id at all is 400.

use std::time::Duration;

use crate::harness::{Demo, Driver, Gateway};
use crate::{builder, exchange, request, session, show, split_response, with_demo};
use crate::{Problems, BOUND};

const TOOLS_LIST: &str = r#"{"jsonrpc":"2.0","id":"s-1","method":"tools/list"}"#;

/// `method` on `path` with this raw session header value (or none); returns (status, body text).
fn with_session(gw: &Gateway, method: &str, path: &str, sid: Option<&[u8]>) -> (u16, String) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json, text/event-stream\r\n\
         MCP-Protocol-Version: 2025-06-18\r\nConnection: close\r\n"
    )
    .into_bytes();
    if let Some(s) = sid {
        head.extend_from_slice(b"Mcp-Session-Id: ");
        head.extend_from_slice(s);
        head.extend_from_slice(b"\r\n");
    }
    if method == "POST" {
        head.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{TOOLS_LIST}",
                TOOLS_LIST.len()
            )
            .as_bytes(),
        );
    } else {
        head.extend_from_slice(b"\r\n");
    }
    let got = exchange(gw.addr, &head, BOUND).unwrap_or_else(|g| g);
    match split_response(&got) {
        Some((r, _)) => (r.status, String::from_utf8_lossy(&r.body).into_owned()),
        None => (0, show(&got)),
    }
}

fn expect(p: &mut Problems, what: &str, got: (u16, String), status: u16) {
    if got.0 != status {
        p.push(format!(
            "{what}: expected {status}, got {} {}",
            got.0, got.1
        ));
    }
}

fn a_missing_session_is_400_with_the_request_id(d: Driver) {
    let (_demo, gw) = with_demo(d);
    let req = request(
        "POST /mcp HTTP/1.1",
        &[
            ("Host", "localhost"),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Connection", "close"),
        ],
        TOOLS_LIST.as_bytes(),
    );
    let got = exchange(gw.addr, &req, BOUND).unwrap_or_else(|g| g);
    let (r, _) = split_response(&got).unwrap_or_else(|| panic!("no response: {}", show(&got)));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    assert!(
        r.status == 400 && v["id"] == "s-1" && v["error"]["code"] == -32600,
        "{}",
        show(&got)
    );
    let (status, _) = with_session(&gw, "GET", "/mcp", None);
    assert_eq!(status, 400, "GET without a session");
}

fn tampered_session_ids_are_404(d: Driver) {
    let (_demo, gw) = with_demo(d);
    let sid = session(&gw).session.unwrap();
    let mut p = Problems::default();
    let flip = |i: usize| {
        let mut b = sid.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("one character changed mid-token", flip(sid.len() / 2)),
        ("one character changed in the tag", flip(sid.len() - 3)),
        ("truncated", sid.as_bytes()[..sid.len() - 4].to_vec()),
        ("extended", format!("{sid}AAAA").into_bytes()),
        (
            "the old format's prefix",
            sid.replacen("tg2.", "tg1.", 1).into_bytes(),
        ),
        (
            "another prefix",
            sid.replacen("tg2.", "tg3.", 1).into_bytes(),
        ),
        ("prefix only", b"tg2.".to_vec()),
        ("garbage", b"not-a-session".to_vec()),
        (
            "5 KiB long",
            format!("tg2.{}", "A".repeat(5000)).into_bytes(),
        ),
        ("obs-text bytes", {
            let mut b = sid.clone().into_bytes();
            b.extend_from_slice(b"\xff\xfe");
            b
        }),
    ];
    for (what, value) in &cases {
        for method in ["POST", "GET", "DELETE"] {
            let got = with_session(&gw, method, "/mcp", Some(value));
            expect(&mut p, &format!("{method} with a {what} id"), got, 404);
        }
    }
    // The real one still works afterwards.
    let got = with_session(&gw, "POST", "/mcp", Some(sid.as_bytes()));
    expect(&mut p, "the untouched id", got, 200);
    p.assert_none("tampered session ids");
}

fn an_expired_session_is_404(d: Driver) {
    let demo = Demo::start(&[]);
    let gw = builder(d)
        .upstream("demo", &demo.url())
        .serve("/mcp", "demo")
        .yaml("session:\n  ttl: 1s\n")
        .start();
    let sid = session(&gw).session.unwrap();
    // Ids carry whole seconds: within a few of them it must be expired.
    let mut last = (0, String::new());
    let expired = crate::harness::eventually(Duration::from_secs(5), || {
        last = with_session(&gw, "POST", "/mcp", Some(sid.as_bytes()));
        last.0 == 404
    });
    assert!(
        expired && last.1.contains("expired"),
        "a session with ttl 1s, 5 s later: {} {}",
        last.0,
        last.1
    );
}

fn a_session_from_another_endpoint_or_instance_is_404(d: Driver) {
    let demo = Demo::start(&[]);
    let gw = builder(d)
        .upstream("demo", &demo.url())
        .serve("/a", "demo")
        .serve("/b", "demo")
        .start();
    let mut p = Problems::default();
    let mut on_a = crate::harness::Mcp::new(gw.addr, "/a");
    on_a.initialize("2025-06-18");
    let sid = on_a.session.clone().unwrap();
    expect(
        &mut p,
        "the id on its own endpoint",
        with_session(&gw, "POST", "/a", Some(sid.as_bytes())),
        200,
    );
    for method in ["POST", "GET", "DELETE"] {
        let got = with_session(&gw, method, "/b", Some(sid.as_bytes()));
        expect(&mut p, &format!("{method} /b with an id from /a"), got, 404);
    }
    // Another instance, another (random) key.
    let other = builder(d)
        .upstream("demo", &demo.url())
        .serve("/a", "demo")
        .start();
    for method in ["POST", "GET", "DELETE"] {
        let got = with_session(&other, method, "/a", Some(sid.as_bytes()));
        expect(&mut p, &format!("{method} on another instance"), got, 404);
    }
    p.assert_none("sessions from elsewhere");
}

fn a_deleted_session_is_404_on_every_reuse(d: Driver) {
    let (_demo, gw) = with_demo(d);
    let mut mcp = session(&gw);
    let sid = mcp.session.clone().unwrap();
    let r = mcp
        .http
        .request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], b"");
    assert_eq!(r.status, 200, "DELETE: {}", r.text());
    let mut p = Problems::default();
    // The same connection, then fresh ones.
    let r = mcp.request("tools/list", serde_json::json!({}));
    if r.status != 404 {
        p.push(format!(
            "POST on the same connection: {} {}",
            r.status,
            r.text()
        ));
    }
    for round in 0..3 {
        for method in ["POST", "GET", "DELETE"] {
            let got = with_session(&gw, method, "/mcp", Some(sid.as_bytes()));
            expect(
                &mut p,
                &format!("{method} after DELETE (try {round})"),
                got,
                404,
            );
        }
    }
    // A new session still works.
    let fresh = session(&gw).session.unwrap();
    let got = with_session(&gw, "POST", "/mcp", Some(fresh.as_bytes()));
    expect(&mut p, "a new session", got, 200);
    p.assert_none("a deleted session");
}

drivers!(
    a_missing_session_is_400_with_the_request_id,
    tampered_session_ids_are_404,
    an_expired_session_is_404,
    a_session_from_another_endpoint_or_instance_is_404,
    a_deleted_session_is_404_on_every_reuse,
);
