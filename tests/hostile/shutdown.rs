//! Shutdown: on SIGTERM the gateway stops accepting, closes idle connections at once, lets
//! in-flight calls finish within `shutdown.drain_timeout`, and exits 0 either way.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{self, read_until_closed, Demo, Driver, Mcp};
use crate::{builder, session, Problems, BOUND};

fn sigterm_closes_idle_connections_and_lets_an_in_flight_call_finish(d: Driver) {
    let demo = Demo::start(&[]);
    // Idle connections must close because of the signal, not because they idled out.
    let mut gw = builder(d)
        .limit("idle_timeout", "60s")
        .upstream("demo", &demo.url())
        .serve("/mcp", "demo")
        .start();
    let mut kept = session(&gw);
    let sid = kept.session.clone().unwrap();
    let mut silent = TcpStream::connect(gw.addr).unwrap();
    let r = kept.call_tool("echo", json!({"text": "then idle"}));
    assert_eq!(r["result"]["content"][0]["text"], "then idle");
    let addr = gw.addr;
    let slow = std::thread::spawn(move || {
        let mut m = Mcp::new(addr, "/mcp");
        m.session = Some(sid);
        let r = m.call_tool("slow", json!({"ms": 3000}));
        (r, Instant::now())
    });
    // The call is on its way (3 s long): its connection is open.
    assert!(
        harness::eventually(BOUND, || gw.connections_open() >= 3.0),
        "the slow call's connection never opened"
    );
    std::thread::sleep(Duration::from_millis(300));
    gw.sigterm();
    let deadline = Instant::now() + BOUND;
    let silent_closed = read_until_closed(&mut silent, deadline).map(|_| Instant::now());
    let kept_closed = read_until_closed(&mut kept.http.stream, deadline).map(|_| Instant::now());
    let (r, call_done) = slow.join().unwrap();
    let mut p = Problems::default();
    if r["result"]["content"][0]["text"] != "done after 3000 ms" {
        p.push(format!("the in-flight call did not complete: {r}"));
    }
    for (what, closed) in [
        ("a connection that never sent a request", silent_closed),
        ("a keep-alive connection between requests", kept_closed),
    ] {
        match closed {
            Ok(at) if at < call_done => {}
            Ok(_) => p.push(format!(
                "{what} was closed only after the in-flight call ended (at exit), not at SIGTERM"
            )),
            Err(_) => p.push(format!("{what} was still open {BOUND:?} after SIGTERM")),
        }
    }
    match gw.wait_exit(BOUND) {
        Some(s) if s.success() => {}
        Some(s) => p.push(format!("exit status {s}: {}", gw.log.text())),
        None => p.push(format!("still running {BOUND:?} after the call ended")),
    }
    p.assert_none("SIGTERM with a call in flight");
}

fn a_call_longer_than_drain_timeout_does_not_keep_the_process_alive(d: Driver) {
    let demo = Demo::start(&[]);
    let mut gw = builder(d)
        .upstream("demo", &demo.url())
        .serve("/mcp", "demo")
        .yaml("shutdown:\n  drain_timeout: 1s\n")
        .start();
    let sid = session(&gw).session.unwrap();
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"slow","arguments":{"ms": 20000}}})
    .to_string();
    std::io::Write::write_all(
        &mut s,
        &crate::request(
            "POST /mcp HTTP/1.1",
            &crate::mcp_headers(Some(&sid)),
            body.as_bytes(),
        ),
    )
    .unwrap();
    assert!(
        harness::eventually(BOUND, || gw.connections_open() >= 1.0),
        "the call's connection never opened"
    );
    std::thread::sleep(Duration::from_millis(300));
    gw.sigterm();
    let mut p = Problems::default();
    match gw.wait_exit(BOUND) {
        Some(st) if st.success() => {}
        Some(st) => p.push(format!("exit status {st}: {}", gw.log.text())),
        None => p.push(format!(
            "still running {BOUND:?} after SIGTERM with drain_timeout 1s"
        )),
    }
    if read_until_closed(&mut s, Instant::now() + BOUND).is_err() {
        p.push("the cut-off call's connection was not closed".into());
    }
    p.assert_none("SIGTERM with a call longer than drain_timeout");
}

drivers!(
    sigterm_closes_idle_connections_and_lets_an_in_flight_call_finish,
    a_call_longer_than_drain_timeout_does_not_keep_the_process_alive,
);
