//! Resource exhaustion and connection closing: every way a connection can end (idle, head or
//! body too slow, over the connection cap, a client that stops reading, an SSE reply that must
//! end in a close, an upstream that stalls or cuts a body short) must release the socket, on the
//! client side and the upstream side, and leave the gateway's descriptors and memory where they
//! were. Chunk extensions are body bytes too.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{self, read_until_closed, scripted, Demo, Driver, Gateway};
use crate::{
    builder, connections_drop_to_zero, exchange, mcp_headers, request, session, settled_sockets,
    show, sockets_back_to, split_response, split_responses, Problems, BOUND,
};

fn accepted_total(gw: &Gateway) -> f64 {
    harness::metric_value(&gw.metrics(), "tollgate_connections_accepted_total")
}

fn silent_connections_are_closed_after_idle_timeout(d: Driver) {
    let gw = builder(d).start();
    let baseline = settled_sockets(&gw);
    let mut clients: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(gw.addr).unwrap())
        .collect();
    let mut p = Problems::default();
    let deadline = Instant::now() + BOUND;
    for (i, c) in clients.iter_mut().enumerate() {
        if let Err(got) = read_until_closed(c, deadline) {
            p.push(format!(
                "client {i} sent nothing and is still open {BOUND:?} later (limits.idle_timeout: 1s); got {:?}",
                show(&got)
            ));
        }
    }
    // Measured while the clients still hold their ends: the gateway must have closed its own.
    p.check(connections_drop_to_zero(&gw, BOUND));
    p.check(sockets_back_to(&gw, baseline, BOUND));
    drop(clients);
    p.assert_none("silent connections after limits.idle_timeout");
}

/// Sends `partial` (a request that never completes) and expects a 408 naming `key`, then a close,
/// and the gateway's sockets back to their baseline.
fn read_timeout_answers_408_then_closes(d: Driver, partial: &[u8], key: &str) {
    let gw = builder(d).start();
    let baseline = settled_sockets(&gw);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(partial).unwrap();
    let mut p = Problems::default();
    let got = match read_until_closed(&mut s, Instant::now() + BOUND) {
        Ok(got) => got,
        Err(got) => {
            p.push(format!(
                "still open {BOUND:?} after a request that never completed ({key}); got {:?}",
                show(&got)
            ));
            got
        }
    };
    match split_response(&got) {
        Some((r, _)) if r.status == 408 => {
            let body = String::from_utf8_lossy(&r.body);
            if !body.contains(key) {
                p.push(format!("the 408 does not name its limit {key}: {body}"));
            }
        }
        _ => p.push(format!("expected a 408, got {:?}", show(&got))),
    }
    p.check(connections_drop_to_zero(&gw, BOUND));
    p.check(sockets_back_to(&gw, baseline, BOUND));
    drop(s);
    p.assert_none(key);
}

fn head_read_timeout_answers_408_then_closes(d: Driver) {
    read_timeout_answers_408_then_closes(
        d,
        b"POST /mcp HTTP/1.1\r\nHost: localhost\r\n",
        "limits.header_read_timeout",
    );
}

fn body_read_timeout_answers_408_then_closes(d: Driver) {
    read_timeout_answers_408_then_closes(
        d,
        b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"jsonrpc\"",
        "limits.body_read_timeout",
    );
}

fn connection_cap_holds_over_three_rounds_of_silent_clients(d: Driver) {
    const CAP: usize = 20;
    const CLIENTS: usize = 24;
    let gw = builder(d)
        .listen("max_connections_per_worker", &CAP.to_string())
        .start();
    let baseline = settled_sockets(&gw);
    for round in 1..=3 {
        let mut clients: Vec<TcpStream> = (0..CLIENTS)
            .map(|_| TcpStream::connect(gw.addr).unwrap())
            .collect();
        let deadline = Instant::now() + BOUND;
        let (mut refused, mut idle_closed) = (0, 0);
        let mut p = Problems::default();
        for (i, c) in clients.iter_mut().enumerate() {
            match read_until_closed(c, deadline) {
                // An idle close sends nothing (or at most a 408).
                Ok(got) if got.is_empty() || got.starts_with(b"HTTP/1.1 408") => idle_closed += 1,
                Ok(got) if got.starts_with(b"HTTP/1.1 503") => refused += 1,
                Ok(got) => p.push(format!("client {i}: unexpected {:?}", show(&got))),
                Err(got) => p.push(format!(
                    "client {i}: still open {BOUND:?} after connecting (idle_timeout 1s); got {:?}",
                    show(&got)
                )),
            }
        }
        if refused != CLIENTS - CAP || idle_closed != CAP {
            p.push(format!(
                "{CLIENTS} clients against a cap of {CAP}: {refused} got 503, {idle_closed} were held \
                 then closed (want {} and {CAP})",
                CLIENTS - CAP
            ));
        }
        p.check(connections_drop_to_zero(&gw, BOUND));
        p.check(sockets_back_to(&gw, baseline, BOUND));
        drop(clients);
        p.assert_none(&format!(
            "round {round} of listen.max_connections_per_worker: {CAP}"
        ));
    }
}

/// A client socket with a tiny receive window, so the gateway's writes block almost at once.
fn small_window_client(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

fn clients_that_never_read_a_large_result_are_dropped_after_write_timeout(d: Driver) {
    const BYTES: usize = 8 << 20;
    const CLIENTS: usize = 4;
    let demo = Demo::start(&[]);
    // No pooling: every upstream socket the calls open must be gone afterwards too.
    let gw = builder(d)
        .upstream_with("demo", &demo.url(), &[("max_idle_per_worker", "0")])
        .serve("/mcp", "demo")
        .start();
    let sid = session(&gw).session.unwrap();
    let baseline = settled_sockets(&gw);
    let rss0 = gw.rss_kib();
    let accepted0 = accepted_total(&gw);
    let body = json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
        "params":{"name":"large","arguments":{"bytes": BYTES}}})
    .to_string();
    let req = request(
        "POST /mcp HTTP/1.1",
        &mcp_headers(Some(&sid)),
        body.as_bytes(),
    );
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut c = small_window_client(gw.addr);
            c.write_all(&req).unwrap();
            c
        })
        .collect();
    // Once the gateway has taken all of them, it must drop them itself: nobody reads.
    assert!(
        harness::eventually(BOUND, || accepted_total(&gw) >= accepted0 + CLIENTS as f64),
        "the gateway did not accept the clients"
    );
    let mut p = Problems::default();
    let bound = BOUND * 2;
    p.check(connections_drop_to_zero(&gw, bound));
    p.check(sockets_back_to(&gw, baseline, bound));
    let limit = rss0 + 16 * 1024;
    let mut rss = 0;
    if !harness::eventually(BOUND, || {
        rss = gw.rss_kib();
        rss <= limit
    }) {
        p.push(format!(
            "RSS {rss} KiB, baseline {rss0} KiB: more than 16 MiB above it after write_timeout"
        ));
    }
    // Now read: each client got part of the result, then the close.
    let deadline = Instant::now() + BOUND;
    for (i, c) in clients.iter_mut().enumerate() {
        match read_until_closed(c, deadline) {
            Ok(got) if got.len() < BYTES => {}
            Ok(got) => p.push(format!(
                "client {i} got all {} bytes: it was never dropped",
                got.len()
            )),
            Err(got) => p.push(format!("client {i}: no close after {} bytes", got.len())),
        }
    }
    p.assert_none("clients that do not read an 8 MiB result (write_timeout: 1s)");
}

/// A tools/call body.
fn call_body(id: u64, tool: &str, args: serde_json::Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args,
        "_meta":{"progressToken":"p"}}})
    .to_string()
}

/// Calls a one-event SSE tool (`echo` on a `--sse` demo) and a multi-event one (`progress`)
/// with `request(id, body)`; `check(tool, got, want)` judges what came back before the close.
fn sse_reply_ends_in_a_close(
    d: Driver,
    what: &str,
    rfc: &str,
    request: impl Fn(&str, &str) -> Vec<u8>,
    check: impl Fn(&str, &[u8], &str, &mut Problems),
) {
    let demo = Demo::start(&["--sse"]);
    let gw = builder(d)
        .upstream("demo", &demo.url())
        .serve("/mcp", "demo")
        .start();
    let sid = session(&gw).session.unwrap();
    let mut p = Problems::default();
    for (tool, args, want) in [
        ("echo", json!({"text": "sse then close"}), "sse then close"),
        (
            "progress",
            json!({"steps": 3, "interval_ms": 10}),
            "progress done",
        ),
    ] {
        let req = request(&sid, &call_body(3, tool, args));
        let got = match exchange(gw.addr, &req, BOUND) {
            Ok(got) => got,
            Err(got) => {
                p.push(format!(
                    "{tool}: an SSE reply to {what} did not end in a close within {BOUND:?} \
                     ({rfc}); got {:?}",
                    show(&got)
                ));
                got
            }
        };
        check(tool, &got, want, &mut p);
    }
    p.assert_none(&format!("SSE replies to {what}"));
}

fn sse_replies_to_http10_end_in_a_close(d: Driver) {
    sse_reply_ends_in_a_close(
        d,
        "HTTP/1.0 requests",
        "RFC 9112 §6.3: the close delimits it",
        |sid, body| {
            request(
                "POST /mcp HTTP/1.0",
                &mcp_headers(Some(sid)),
                body.as_bytes(),
            )
        },
        |tool, got, want, p| {
            let text = String::from_utf8_lossy(got).to_ascii_lowercase();
            if !text.starts_with("http/1.1 200") || !text.contains("text/event-stream") {
                p.push(format!("{tool}: not an SSE 200: {:?}", show(got)));
            }
            if text.contains("transfer-encoding") {
                p.push(format!(
                    "{tool}: chunked framing sent to an HTTP/1.0 client: {:?}",
                    show(got)
                ));
            }
            if !text.contains(want) {
                p.push(format!("{tool}: the result is missing: {:?}", show(got)));
            }
        },
    );
}

fn sse_replies_to_connection_close_end_in_a_close(d: Driver) {
    sse_reply_ends_in_a_close(
        d,
        "`Connection: close` requests",
        "RFC 9112 §9.6",
        |sid, body| {
            let mut headers = mcp_headers(Some(sid));
            headers.push(("Connection", "close"));
            request("POST /mcp HTTP/1.1", &headers, body.as_bytes())
        },
        |tool, got, want, p| match split_responses(got).as_slice() {
            [r] if r.status == 200 => {
                let head = r.head.to_ascii_lowercase();
                if !head.contains("connection: close") {
                    p.push(format!("{tool}: no `connection: close` in {:?}", r.head));
                }
                if !String::from_utf8_lossy(&r.body).contains(want) {
                    p.push(format!("{tool}: the result is missing: {:?}", show(got)));
                }
            }
            _ => p.push(format!("{tool}: expected one 200: {:?}", show(got))),
        },
    );
}

/// What the scripted upstream saw after misbehaving: whether the gateway closed its socket.
type Report = (String, Result<(), String>);

/// An upstream that misbehaves per tool (`stall_head`, `stall_body`, `short_body`) and then
/// waits for the gateway to close the connection, reporting whether it did.
fn faulty_upstream(reports: mpsc::Sender<Report>) -> scripted::Scripted {
    let reports = Mutex::new(reports);
    scripted::Scripted::start(move |mut s, _| {
        while let Some(req) = scripted::read_request(&mut s) {
            if let Some(reply) = scripted::mcp_basics(&req) {
                if s.write_all(&reply).is_err() {
                    return;
                }
                continue;
            }
            let tool = req.tool();
            let full = scripted::json_response(&scripted::text_result(&req.id(), &"x".repeat(500)));
            let half = &full[..full.len() - 250];
            match tool.as_str() {
                "stall_head" => {}
                "stall_body" => {
                    let _ = s.write_all(half);
                }
                "short_body" => {
                    let _ = s.write_all(half);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
                _ => {
                    let _ = s.write_all(&full);
                    continue;
                }
            }
            let outcome = match read_until_closed(&mut s, Instant::now() + BOUND) {
                Ok(got) if got.is_empty() => Ok(()),
                Ok(got) => Err(format!(
                    "the gateway sent more on this connection before closing it: {:?}",
                    show(&got)
                )),
                Err(got) => Err(format!(
                    "the gateway kept its upstream socket open {BOUND:?} after the fault (sent {:?})",
                    show(&got)
                )),
            };
            let _ = reports.lock().unwrap().send((tool, outcome));
            return;
        }
    })
}

/// Calls `tool` through a gateway in front of `faulty_upstream` and checks the gateway closed its
/// upstream socket afterwards. `client` judges what the client got.
fn upstream_socket_closed_after(d: Driver, tool: &str, client: fn(&[u8]) -> Result<(), String>) {
    let (tx, rx) = mpsc::channel();
    let up = faulty_upstream(tx);
    let gw = builder(d)
        .upstream_with("hostile", &up.url(), &[("request_timeout", "500ms")])
        .serve("/mcp", "hostile")
        .start();
    let sid = session(&gw).session.unwrap();
    let mut headers = mcp_headers(Some(&sid));
    headers.push(("Connection", "close"));
    let req = request(
        "POST /mcp HTTP/1.1",
        &headers,
        call_body(5, tool, json!({})).as_bytes(),
    );
    let mut p = Problems::default();
    match exchange(gw.addr, &req, BOUND) {
        Ok(got) => p.check(client(&got).map_err(|e| format!("client: {e}: {:?}", show(&got)))),
        Err(got) => p.push(format!(
            "client: no answer and no close within {BOUND:?}: {:?}",
            show(&got)
        )),
    }
    match rx.recv_timeout(BOUND * 2) {
        Ok((_, outcome)) => p.check(outcome.map_err(|e| format!("upstream side: {e}"))),
        Err(_) => p.push("the upstream never reported".into()),
    }
    p.assert_none(&format!("upstream `{tool}`"));
}

fn upstream_socket_is_closed_after_a_head_timeout(d: Driver) {
    upstream_socket_closed_after(d, "stall_head", |got| {
        let (r, _) = split_response(got).ok_or("no response")?;
        let v: serde_json::Value =
            serde_json::from_slice(&r.body).map_err(|e| format!("not JSON: {e}"))?;
        if r.status == 200 && v["error"]["code"] == -31002 {
            Ok(())
        } else {
            Err(format!(
                "expected HTTP 200 with JSON-RPC error -31002, got {v}"
            ))
        }
    });
}

/// The client saw a response head and then a close before the body was complete.
/// A small reply that stops short is read whole before anything reaches the client, so the
/// client gets a JSON-RPC error naming the upstream (never a body that looks complete).
/// -31003 when the upstream closed mid-reply, -31002 when it stalled past its timeout.
fn cut_short(got: &[u8]) -> Result<(), String> {
    cut_short_with(got, -31003)
}

fn stalled(got: &[u8]) -> Result<(), String> {
    cut_short_with(got, -31002)
}

fn cut_short_with(got: &[u8], code: i64) -> Result<(), String> {
    let (r, _) = split_response(got).ok_or("no response head")?;
    if r.status != 200 {
        return Err(format!("status {}", r.status));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("not JSON: {e}"))?;
    if v["error"]["code"] != code || v["error"]["data"]["upstream"] != "hostile" {
        return Err(format!(
            "expected JSON-RPC error {code} naming the upstream, got {v}"
        ));
    }
    if v["result"] != serde_json::Value::Null {
        return Err("a result that looks complete".into());
    }
    Ok(())
}

fn upstream_socket_is_closed_after_a_stall_mid_body(d: Driver) {
    upstream_socket_closed_after(d, "stall_body", stalled);
}

fn upstream_socket_is_closed_after_a_short_body(d: Driver) {
    upstream_socket_closed_after(d, "short_body", cut_short);
}

fn chunk_extensions_count_against_the_body_limit(d: Driver) {
    const SEND_AT_MOST: u64 = 64 << 20;
    let gw = builder(d)
        .limit("max_body_bytes", "1MiB")
        .limit("body_read_timeout", "5s")
        .start();
    settled_sockets(&gw);
    let rss0 = gw.rss_kib();
    let pid = gw.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                peak.fetch_max(harness::proc_status_kib(pid, "VmRSS:"), Ordering::AcqRel);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut chunk = b"1;".to_vec();
        chunk.extend(std::iter::repeat_n(b'a', 16_000));
        chunk.extend_from_slice(b"\r\nx\r\n");
        let mut sent = 0u64;
        if w.write_all(
            b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                  Transfer-Encoding: chunked\r\n\r\n",
        )
        .is_err()
        {
            return sent;
        }
        while sent < SEND_AT_MOST {
            if w.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let got = read_until_closed(&mut s, Instant::now() + BOUND * 2);
    let sent = writer.join().unwrap();
    stop.store(true, Ordering::Release);
    sampler.join().unwrap();
    let grew = peak.load(Ordering::Acquire).saturating_sub(rss0);
    let mut p = Problems::default();
    let got = got.unwrap_or_else(|got| {
        p.push("no close after the refusal".into());
        got
    });
    match split_response(&got) {
        Some((r, _)) if r.status == 413 || r.status == 400 => {}
        _ => p.push(format!(
            "expected 413 or 400 for {sent} bytes of chunk extensions carrying {} body bytes, got {:?}",
            sent / 16_007,
            show(&got)
        )),
    }
    if grew > 8 * 1024 {
        p.push(format!(
            "RSS grew by {grew} KiB (from {rss0} KiB) while {sent} bytes of chunk framing arrived"
        ));
    }
    p.assert_none("chunked body of 16 KB extensions, 1 data byte each (max_body_bytes: 1MiB)");
}

drivers!(
    silent_connections_are_closed_after_idle_timeout,
    head_read_timeout_answers_408_then_closes,
    body_read_timeout_answers_408_then_closes,
    connection_cap_holds_over_three_rounds_of_silent_clients,
    clients_that_never_read_a_large_result_are_dropped_after_write_timeout,
    sse_replies_to_http10_end_in_a_close,
    sse_replies_to_connection_close_end_in_a_close,
    upstream_socket_is_closed_after_a_head_timeout,
    upstream_socket_is_closed_after_a_stall_mid_body,
    upstream_socket_is_closed_after_a_short_body,
    chunk_extensions_count_against_the_body_limit,
);
