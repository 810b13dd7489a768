//! Host and Origin (DNS-rebinding protection on a loopback listener). A value that is not a
//! valid authority must not be read as a loopback name by looking only at its start: `[::1]`
//! followed by anything, a port that is not digits. Loopback hosts and origins keep working.

use crate::harness::{Driver, Gateway};
use crate::{exchange, request, show, split_response, with_demo, Problems, BOUND, INITIALIZE};

/// An initialize with these Host and Origin values; returns (status, raw response).
fn initialize_with(gw: &Gateway, host: &str, origin: Option<&str>) -> (u16, String) {
    let mut headers = vec![
        ("Host", host),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("Connection", "close"),
    ];
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    let req = request("POST /mcp HTTP/1.1", &headers, INITIALIZE.as_bytes());
    let got = exchange(gw.addr, &req, BOUND).unwrap_or_else(|g| g);
    let status = split_response(&got).map_or(0, |(r, _)| r.status);
    (status, show(&got))
}

/// Refused: one of `statuses`, and no session was opened.
fn expect_refused(p: &mut Problems, what: &str, got: (u16, String), statuses: &[u16]) {
    let (status, text) = got;
    if !statuses.contains(&status) || text.to_ascii_lowercase().contains("mcp-session-id") {
        p.push(format!("{what}: expected {statuses:?}, got {text}"));
    }
}

fn hosts_that_are_not_valid_authorities_get_400(d: Driver) {
    let (_demo, gw) = with_demo(d);
    let mut p = Problems::default();
    for host in [
        "[::1]evil.com",
        "[::1].evil.com",
        "[::1]@evil.com",
        "localhost:abc",
        "localhost:18500x",
    ] {
        let got = initialize_with(&gw, host, None);
        expect_refused(&mut p, &format!("Host: {host}"), got, &[400]);
    }
    p.assert_none("invalid Host authorities");
}

fn origins_that_are_not_valid_authorities_are_refused(d: Driver) {
    let (_demo, gw) = with_demo(d);
    let mut p = Problems::default();
    for origin in [
        "http://[::1]evil.com",
        "http://[::1].evil.com",
        "http://[::1]@evil.com",
        "http://localhost:abc",
        "http://localhost:18500x",
    ] {
        let got = initialize_with(&gw, "localhost", Some(origin));
        expect_refused(&mut p, &format!("Origin: {origin}"), got, &[400, 403]);
    }
    p.assert_none("invalid Origin authorities");
}

fn foreign_hosts_and_origins_get_403(d: Driver) {
    let (_demo, gw) = with_demo(d);
    let mut p = Problems::default();
    for host in [
        "evil.example.com",
        "localhost.evil.com",
        "127.0.0.1.evil.com:80",
        "127.0.0.2",
        "[::2]:80",
    ] {
        let got = initialize_with(&gw, host, None);
        expect_refused(&mut p, &format!("Host: {host}"), got, &[403]);
    }
    for origin in [
        "https://evil.example.com",
        "http://localhost.evil.com",
        "null",
        "file://",
        "http://localhost:6274/path",
    ] {
        let got = initialize_with(&gw, "localhost", Some(origin));
        expect_refused(&mut p, &format!("Origin: {origin}"), got, &[403]);
    }
    p.assert_none("foreign Host and Origin values");
}

fn loopback_hosts_and_origins_still_pass(d: Driver) {
    let (_demo, gw) = with_demo(d);
    let port = gw.addr.port();
    let mut p = Problems::default();
    for host in [
        "localhost".to_string(),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("127.0.0.1:{port}"),
        "[::1]".to_string(),
        format!("[::1]:{port}"),
    ] {
        let (status, text) = initialize_with(&gw, &host, None);
        if status != 200 {
            p.push(format!("Host: {host}: {text}"));
        }
    }
    for origin in [
        "http://localhost:6274",
        "http://127.0.0.1:6274",
        "http://[::1]:6274",
        "https://localhost",
    ] {
        let (status, text) = initialize_with(&gw, "localhost", Some(origin));
        if status != 200 {
            p.push(format!("Origin: {origin}: {text}"));
        }
    }
    p.assert_none("loopback Host and Origin values");
}

drivers!(
    hosts_that_are_not_valid_authorities_get_400,
    origins_that_are_not_valid_authorities_are_refused,
    foreign_hosts_and_origins_get_403,
    loopback_hosts_and_origins_still_pass,
);
