//! The admin listener's deadlines and readiness.

use super::request::{left, respond};
use super::*;
use std::net::{SocketAddr, TcpListener};

/// A loopback address where every connect is refused while the socket lives: bound, never
/// listening (a dropped listener's port may be handed to a test running beside this one).
fn refused() -> (socket2::Socket, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (s, c)
}

/// The deadline covers the response write: a client that asked and never reads is cut off
/// at it, not after a per-write timeout restarted by each partial write.
#[test]
fn a_reader_that_never_reads_is_cut_off_at_the_deadline() {
    let (mut server, _client) = pair();
    let body = vec![b'x'; 64 << 20]; // far more than loopback socket buffers hold
    let deadline = Instant::now() + Duration::from_millis(300);
    let e = respond(&mut server, deadline, 200, "text/plain", &body).unwrap_err();
    assert!(is_timeout(&e), "{e:?}");
    // "Did not hang": the whole write gave up at its deadline, not minutes later.
    assert!(Instant::now() < deadline + Duration::from_secs(5));
}

fn health_with(addr: SocketAddr, endpoints: &[&str]) -> Health {
    let h = Health {
        upstreams: vec![UpstreamHealth::new(
            "up".into(),
            vec![addr],
            Duration::from_millis(200),
            3,
            endpoints.iter().map(|e| e.to_string()).collect(),
        )],
        endpoints: endpoints.iter().map(|e| (e.to_string(), vec![0])).collect(),
        ..Health::default()
    };
    h.ready.store(true, Ordering::Relaxed);
    h
}

/// An endpoint with several upstreams is ready while one of them is up (reported degraded);
/// not ready once every one is down.
#[test]
fn a_federated_endpoint_is_ready_while_one_upstream_serves() {
    let (_held, addr) = refused();
    let up = |name: &str| {
        UpstreamHealth::new(
            name.into(),
            vec![addr],
            Duration::from_millis(200),
            1,
            vec!["/fed".into()],
        )
    };
    let h = Health {
        upstreams: vec![up("a"), up("b")],
        endpoints: vec![("/fed".into(), vec![0, 1])],
        ..Health::default()
    };
    h.ready.store(true, Ordering::Relaxed);
    let soon = || Instant::now() + Duration::from_secs(2);
    h.upstream_failed(0);
    assert_eq!(h.not_ready(soon()), None);
    assert_eq!(
        h.degraded(),
        "degraded: endpoint /fed serves without upstream(s) a (down)\n"
    );
    let mut m = String::new();
    h.render_up(&mut m);
    assert!(m.contains("tollgate_upstream_up{upstream=\"a\"} 0"), "{m}");
    assert!(m.contains("tollgate_upstream_up{upstream=\"b\"} 1"), "{m}");
    h.upstream_failed(1);
    let why = h.not_ready(soon()).unwrap();
    assert!(
        why.contains("endpoint /fed cannot serve: upstream \"a\"") && why.contains("\"b\""),
        "{why}"
    );
}

#[test]
fn an_upstream_is_down_after_consecutive_failures_until_a_success() {
    let (_held, addr) = refused();
    let h = health_with(addr, &["/mcp"]);
    let soon = || Instant::now() + Duration::from_secs(2);
    h.upstream_failed(0);
    h.upstream_failed(0);
    h.upstream_ok(0); // a success in between resets the run
    h.upstream_failed(0);
    h.upstream_failed(0);
    assert_eq!(h.not_ready(soon()), None);
    for _ in 0..10 {
        h.upstream_failed(0);
    }
    assert_eq!(
        h.upstreams[0].failures.load(Ordering::Relaxed),
        3,
        "bounded"
    );
    let why = h.not_ready(soon()).expect("down");
    assert!(why.contains("/mcp") && why.contains("\"up\""), "{why}");
    h.upstream_ok(0);
    assert_eq!(h.not_ready(soon()), None);
    h.draining.store(true, Ordering::Relaxed);
    assert!(h.not_ready(soon()).unwrap().contains("draining"));
}

#[test]
fn an_upstream_no_endpoint_serves_does_not_count() {
    let (_held, addr) = refused();
    let h = health_with(addr, &[]);
    for _ in 0..3 {
        h.upstream_failed(0);
    }
    assert_eq!(h.not_ready(Instant::now() + Duration::from_secs(2)), None);
}

#[test]
fn a_spent_deadline_writes_nothing() {
    let (mut server, _client) = pair();
    let e = respond(&mut server, Instant::now(), 200, "text/plain", b"ok\n").unwrap_err();
    assert!(is_timeout(&e), "{e:?}");
    assert!(left(Instant::now()).is_err());
}
