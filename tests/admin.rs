//! The admin listener (`/metrics`, `/healthz`, `/readyz`) under clients that hold connections:
//! the real binary on ephemeral loopback ports. Bounds are "answered at all", never latency.

mod harness;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use harness::{Gateway, Http};

/// A gateway on the built-in demo with these admin keys (besides an ephemeral address).
fn gateway_with_admin(keys: &str) -> Gateway {
    Gateway::builder()
        .yaml(&format!("admin:\n  address: 127.0.0.1:0\n{keys}"))
        .start()
}

/// One probe on a fresh connection: its status, or `None` if it was not answered within 5 s
/// (connect, send, read: "did not hang", not a latency bound).
fn probe(admin: SocketAddr, path: &str) -> Option<u16> {
    let bound = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&admin, bound).ok()?;
    s.set_read_timeout(Some(bound)).ok()?;
    s.set_write_timeout(Some(bound)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // Read until the status line is complete (the response closes the connection anyway).
    while !got.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&got);
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Whether the peer has closed (EOF or reset) within `wait`; unread data is discarded.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn counter(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn a_slow_loris_on_metrics_neither_blocks_probes_nor_outlives_request_timeout() {
    let gw = gateway_with_admin("  request_timeout: 2s\n");
    let admin = gw.admin.unwrap();
    let request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let pace = Duration::from_millis(250);
    // Sending the whole head at this pace would take ~10 s, well past the 2 s deadline: every
    // gap is far below it, so only a whole-request deadline (not a per-read one) cuts it off.
    let loris = std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(admin).unwrap();
        for (i, b) in request.iter().enumerate() {
            if s.write_all(&[*b]).is_err() || closed_within(&mut s, pace) {
                return (i, t0.elapsed());
            }
        }
        (request.len(), t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..4 {
        assert_eq!(probe(admin, "/healthz"), Some(200), "/healthz not answered");
        assert_eq!(probe(admin, "/readyz"), Some(200), "/readyz not answered");
    }
    // A full scrape works meanwhile too.
    assert!(gw.metrics().contains("tollgate_build_info"));
    let (sent, took) = loris.join().unwrap();
    assert!(
        sent < request.len(),
        "the slow client sent its whole head ({took:?}) without being cut off"
    );
    assert!(
        took >= Duration::from_secs(1),
        "cut off after {took:?}, before admin.request_timeout"
    );
    // Counted by the connection's thread once it gave up on it, after the close the slow
    // client saw.
    gw.await_metric(
        "tollgate_admin_limit_rejections_total{limit=\"request_timeout\"}",
        |n| n >= 1.0,
    );
}

#[test]
fn admin_connections_beyond_max_connections_get_503_and_probes_work_once_they_go() {
    let cap = 4;
    let gw = gateway_with_admin(&format!(
        "  request_timeout: 60s\n  max_connections: {cap}\n"
    ));
    let admin = gw.admin.unwrap();
    // `cap` idle connections hold every slot (they are queued, so accepted, before the rest).
    let idle: Vec<TcpStream> = (0..cap)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    let mut refused = 0;
    for _ in 0..12 {
        let mut h = Http::connect(admin);
        let r = h.read_response().expect("an answer, not a bare close");
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.text().contains("admin.max_connections"), "{}", r.text());
        assert_eq!(r.header("connection"), Some("close"));
        assert!(h.closed_within(Duration::from_secs(5)), "closed at once");
        refused += 1;
    }
    // A probe while saturated is refused the same way, not left hanging.
    assert_eq!(probe(admin, "/healthz"), Some(503));
    drop(idle);
    // Their threads see EOF and free the slots; probes answer again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match (probe(admin, "/healthz"), probe(admin, "/readyz")) {
            (Some(200), Some(200)) => break,
            other => assert!(
                Instant::now() < deadline,
                "probes after the idle connections left: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = gw.metrics();
    assert!(
        counter(
            &m,
            "tollgate_admin_limit_rejections_total{limit=\"max_connections\"} "
        ) >= f64::from(refused + 1),
        "{m}"
    );
}

#[test]
fn sigterm_is_not_held_up_by_open_admin_connections() {
    let mut gw = gateway_with_admin("  request_timeout: 60s\n");
    let admin = gw.admin.unwrap();
    let _idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(admin).unwrap()).collect();
    let mut half = TcpStream::connect(admin).unwrap();
    half.write_all(b"GET /metr").unwrap();
    assert_eq!(probe(admin, "/healthz"), Some(200));
    let t0 = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(gw.pid() as i32, libc::SIGTERM) };
    let status = gw.proc.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "stopping took {:?}",
        t0.elapsed()
    );
    // The listener is gone with the process.
    assert!(TcpStream::connect(admin).is_err());
}

#[test]
fn head_and_get_answer_as_before() {
    let gw = gateway_with_admin("");
    let admin = gw.admin.unwrap();
    {
        let method = "GET";
        let r = Http::connect(admin).request(method, "/healthz", &[], b"");
        assert_eq!(r.status, 200, "{method}");
        let r = Http::connect(admin).request(method, "/readyz", &[], b"");
        assert_eq!(r.status, 200, "{method}");
        let r = Http::connect(admin).request(method, "/metrics", &[], b"");
        assert_eq!(r.status, 200, "{method}");
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
    }
    // HEAD: the GET head, Content-Length included, and no body (RFC 9110 §9.3.2).
    for path in ["/healthz", "/readyz", "/metrics"] {
        let mut s = TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
        assert!(text.to_lowercase().contains("content-length: "), "{path}");
        assert!(
            text.ends_with("\r\n\r\n"),
            "{path}: a body followed the head: {text}"
        );
    }
    let r = Http::connect(admin).request("POST", "/metrics", &[], b"");
    assert_eq!(r.status, 405);
    let r = Http::connect(admin).request("GET", "/nope", &[], b"");
    assert_eq!(r.status, 404);
}
