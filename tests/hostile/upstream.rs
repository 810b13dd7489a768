//! Upstream faults: whatever an upstream writes, and whenever, it reaches only the client whose
//! request it answers, or becomes a JSON-RPC error naming the upstream. Pooled connections are
//! never trusted blindly: an upstream may close them while idle, announce a keep-alive timeout,
//! or write into them unasked.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::scripted::{self, Request, Scripted};
use crate::harness::{read_until_closed, Driver, Gateway};
use crate::{builder, exchange, mcp_headers, request, session, show, split_response};
use crate::{Problems, RawResponse, BOUND};

/// A tools/call on a fresh connection (`Connection: close`), read to the close.
fn call(gw: &Gateway, sid: &str, id: &str, tool: &str, args: Value) -> Result<RawResponse, String> {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#
    );
    let mut headers = mcp_headers(Some(sid));
    headers.push(("Connection", "close"));
    let req = request("POST /mcp HTTP/1.1", &headers, body.as_bytes());
    match exchange(gw.addr, &req, BOUND) {
        Ok(got) => split_response(&got)
            .map(|(r, _)| r)
            .ok_or_else(|| format!("closed without a response: {:?}", show(&got))),
        Err(got) => Err(format!(
            "no complete answer within {BOUND:?}: {:?}",
            show(&got)
        )),
    }
}

/// The text of a tools/call result, or a description of what came instead.
fn result_text(r: &RawResponse) -> Result<String, String> {
    let v: Value =
        serde_json::from_slice(&r.body).map_err(|_| format!("{} {:?}", r.status, show(&r.body)))?;
    v["result"]["content"][0]["text"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{} {v}", r.status))
}

/// The echo every scripted upstream here gives a tools/call.
fn echo(req: &Request) -> Vec<u8> {
    scripted::json_response(&scripted::text_result(
        &req.id(),
        &format!("echo:{}", req.text_arg()),
    ))
}

/// Serves a connection: basics, then `f` for tools/call (it writes and says whether to go on).
fn serve(mut s: TcpStream, mut f: impl FnMut(&mut TcpStream, &Request) -> bool) {
    while let Some(req) = scripted::read_request(&mut s) {
        if let Some(reply) = scripted::mcp_basics(&req) {
            if s.write_all(&reply).is_err() {
                return;
            }
            continue;
        }
        if !f(&mut s, &req) {
            return;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stray {
    /// The extra response follows the real one in the same write.
    AfterReply,
    /// The extra response arrives 50 ms later, while the connection idles in the pool.
    WhileIdle,
    /// A response is written as soon as the connection is accepted, before any request.
    OnConnect,
}

/// An unsolicited response, with the id a victim is likely to use.
fn leaked() -> Vec<u8> {
    scripted::json_response(&scripted::text_result(&json!(1), "LEAKED"))
}

fn stray_upstream(mode: Stray, armed: Arc<AtomicBool>) -> Scripted {
    Scripted::start(move |mut s, _| {
        // The real answer to the first request comes 100 ms after the request, so it arrives
        // while the connection idles in the pool, not while the stray one is being relayed.
        let mut delay_first = false;
        if mode == Stray::OnConnect && armed.swap(false, Ordering::AcqRel) {
            let _ = s.write_all(&leaked());
            delay_first = true;
        }
        while let Some(req) = scripted::read_request(&mut s) {
            if let Some(reply) = scripted::mcp_basics(&req) {
                if mode == Stray::OnConnect {
                    // Nothing from the session's setup is pooled: the next call connects anew.
                    let _ = s.write_all(&scripted::with_header(&reply, "Connection", "close"));
                    return;
                }
                if s.write_all(&reply).is_err() {
                    return;
                }
                continue;
            }
            let reply = echo(&req);
            if std::mem::take(&mut delay_first) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let ok = match (mode, req.tool().as_str()) {
                (Stray::AfterReply, "trigger") => {
                    let mut both = reply;
                    both.extend(leaked());
                    s.write_all(&both).is_ok()
                }
                (Stray::WhileIdle, "trigger") => {
                    let ok = s.write_all(&reply).is_ok();
                    std::thread::sleep(Duration::from_millis(50));
                    ok && s.write_all(&leaked()).is_ok()
                }
                _ => s.write_all(&reply).is_ok(),
            };
            if !ok {
                return;
            }
        }
    })
}

/// Client A triggers the stray response; client B, later, must get its own answer or an error:
/// never "LEAKED", never A's answer.
fn a_stray_response_never_reaches_another_client(d: Driver, mode: Stray) {
    let armed = Arc::new(AtomicBool::new(false));
    let up = stray_upstream(mode, armed.clone());
    let gw = builder(d)
        .upstream("hostile", &up.url())
        .serve("/mcp", "hostile")
        .start();
    let sid = session(&gw).session.unwrap();
    let mut p = Problems::default();
    for round in 0..3 {
        armed.store(true, Ordering::Release);
        let a = format!("for-A-{round}");
        let got = call(&gw, &sid, "1", "trigger", json!({ "text": a }));
        // A's own answer comes before the stray one, except when the stray came first.
        if mode != Stray::OnConnect {
            match got.as_ref().map(result_text) {
                Ok(Ok(t)) if t == format!("echo:{a}") => {}
                other => p.push(format!("round {round}: A got {other:?}")),
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        for k in 0..3 {
            let b = format!("for-B-{round}-{k}");
            match call(&gw, &sid, "1", "echo", json!({ "text": b })) {
                Ok(r) => {
                    let text = String::from_utf8_lossy(&r.body);
                    if text.contains("LEAKED") || text.contains("for-A") {
                        p.push(format!(
                            "round {round}: B ({b}) got another response: {text}"
                        ));
                    } else if result_text(&r).is_ok_and(|t| t != format!("echo:{b}")) {
                        p.push(format!("round {round}: B ({b}) got {text}"));
                    }
                }
                Err(e) => p.push(format!("round {round}: B ({b}): {e}")),
            }
        }
    }
    // Each stray response was noticed: counted (and logged) as an unsolicited discard.
    let discards = metric_sum(
        &gw.metrics(),
        "tollgate_upstream_pool_discards_total",
        &["upstream=\"hostile\"", "reason=\"unsolicited\""],
    );
    if discards < 1.0 {
        p.push(format!(
            "no unsolicited pool discard counted ({discards}) after 3 stray responses"
        ));
    }
    p.assert_none(&format!("stray upstream response ({mode:?})"));
}

/// The sum of a metric's samples whose labels contain all of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn a_stray_response_after_a_reply_never_reaches_another_client(d: Driver) {
    a_stray_response_never_reaches_another_client(d, Stray::AfterReply);
}

fn a_stray_response_while_pooled_never_reaches_another_client(d: Driver) {
    a_stray_response_never_reaches_another_client(d, Stray::WhileIdle);
}

fn a_response_written_on_connect_never_reaches_another_client(d: Driver) {
    a_stray_response_never_reaches_another_client(d, Stray::OnConnect);
}

/// Bursts of 16 concurrent calls and single calls, separated by pauses longer than the
/// upstream's 1 s keep-alive (`pauses` counts those over): every call must succeed. Returns
/// what failed.
fn bursts_and_pauses(gw: &Gateway, sid: &str, pauses: &AtomicUsize) -> Vec<String> {
    let failures = Mutex::new(vec![]);
    let check = |text: String, r: Result<RawResponse, String>| {
        let outcome = r.and_then(|r| result_text(&r));
        if outcome.as_deref() != Ok(format!("echo:{text}").as_str()) {
            failures
                .lock()
                .unwrap()
                .push(format!("{text}: {outcome:?}"));
        }
    };
    for cycle in 0..2 {
        std::thread::scope(|sc| {
            for i in 0..16 {
                let check = &check;
                sc.spawn(move || {
                    let text = format!("burst-{cycle}-{i}");
                    check(
                        text.clone(),
                        call(gw, sid, "1", "echo", json!({ "text": text })),
                    );
                });
            }
        });
        std::thread::sleep(Duration::from_millis(1500));
        pauses.fetch_add(1, Ordering::SeqCst);
        for i in 0..4 {
            let text = format!("after-pause-{cycle}-{i}");
            check(
                text.clone(),
                call(gw, sid, "1", "echo", json!({ "text": text })),
            );
        }
        std::thread::sleep(Duration::from_millis(1500));
        pauses.fetch_add(1, Ordering::SeqCst);
    }
    failures.into_inner().unwrap()
}

fn an_upstream_closing_idle_connections_after_1s_loses_no_call(d: Driver) {
    let up = Scripted::start(|s, _| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        // Closes a connection idle for 1 s (the read times out), like many servers' keep-alive.
        serve(s, |s, req| s.write_all(&echo(req)).is_ok());
    });
    let gw = builder(d)
        .upstream("hostile", &up.url())
        .serve("/mcp", "hostile")
        .start();
    let sid = session(&gw).session.unwrap();
    let failures = bursts_and_pauses(&gw, &sid, &AtomicUsize::new(0));
    assert!(
        failures.is_empty(),
        "calls lost to upstream connections closed while idle:\n- {}",
        failures.join("\n- ")
    );
}

fn a_keep_alive_timeout_from_the_upstream_is_honoured(d: Driver) {
    let reused_late: Arc<Mutex<Vec<String>>> = Arc::default();
    let pauses = Arc::new(AtomicUsize::new(0));
    let up = {
        let (reused_late, pauses) = (reused_late.clone(), pauses.clone());
        Scripted::start(move |mut s, n| {
            // By order, not by time: a connection whose last reply came before a pause of
            // 1.5 s (longer than timeout=1) must not carry another request.
            let mut replied_before: Option<usize> = None;
            while let Some(req) = scripted::read_request(&mut s) {
                let now = pauses.load(Ordering::SeqCst);
                if replied_before.is_some_and(|p| p < now) {
                    reused_late.lock().unwrap().push(format!(
                        "connection {n} reused after a pause longer than the timeout=1 its last reply announced"
                    ));
                }
                let reply = scripted::mcp_basics(&req).unwrap_or_else(|| echo(&req));
                let reply = scripted::with_header(&reply, "Keep-Alive", "timeout=1");
                if s.write_all(&reply).is_err() {
                    return;
                }
                replied_before = Some(pauses.load(Ordering::SeqCst));
            }
        })
    };
    let gw = builder(d)
        .upstream("hostile", &up.url())
        .serve("/mcp", "hostile")
        .start();
    let sid = session(&gw).session.unwrap();
    let mut failures = bursts_and_pauses(&gw, &sid, &pauses);
    failures.extend(reused_late.lock().unwrap().iter().cloned());
    assert!(
        failures.is_empty(),
        "Keep-Alive: timeout=1:\n- {}",
        failures.join("\n- ")
    );
}

/// An upstream whose tools misbehave by name; every other tool echoes.
fn faulty_upstream() -> Scripted {
    Scripted::start(|s, _| {
        serve(s, |s, req| {
            let reply = match req.tool().as_str() {
                "switch_protocols" => {
                    let _ = s.write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                          Connection: Upgrade\r\n\r\n\x81\x05hello",
                    );
                    let _ = read_until_closed(s, Instant::now() + BOUND);
                    return false;
                }
                "huge_head" => {
                    let body = scripted::text_result(&req.id(), "after a huge head");
                    scripted::response(
                        "200 OK",
                        &[
                            ("Content-Type", "application/json"),
                            ("X-Padding", &"a".repeat(70_000)),
                        ],
                        body.as_bytes(),
                    )
                }
                "status_500_text" => scripted::response(
                    "500 Internal Server Error",
                    &[("Content-Type", "text/plain")],
                    b"boom: the database is on fire",
                ),
                "html_200" => scripted::response(
                    "200 OK",
                    &[("Content-Type", "text/html")],
                    b"<html><body>Please log in</body></html>",
                ),
                "rpc_error" => scripted::json_response(&rpc_error(&req.id())),
                // What Express's `res.sendStatus(202)` sends: a 202 with a text body.
                "accepted_text" => scripted::response(
                    "202 Accepted",
                    &[("Content-Type", "text/plain; charset=utf-8")],
                    b"Accepted",
                ),
                // JSON that parsers read differently from each other but all read: a lone
                // surrogate (a cut emoji) and a number at f64::MAX. Not the gateway's to refuse.
                "odd_but_json" => scripted::json_response(&format!(
                    r#"{{"jsonrpc":"2.0","id":{},"result":{{"content":[{{"type":"text","text":"cut \ud83d"}}],"n":1.7976931348623157e308}}}}"#,
                    req.id()
                )),
                "status_503_text" => scripted::response(
                    "503 Service Unavailable",
                    &[("Content-Type", "text/plain"), ("Retry-After", "1")],
                    b"try later",
                ),
                _ => echo(req),
            };
            // One write: a head that arrives whole.
            s.write_all(&reply).is_ok()
        })
    })
}

fn rpc_error(id: &Value) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32602,"message":"bad arguments","data":{{"why":"x"}}}}}}"#
    )
}

fn faulty_gateway(d: Driver) -> (Scripted, Gateway, String) {
    let up = faulty_upstream();
    let gw = builder(d)
        .upstream_with("hostile", &up.url(), &[("request_timeout", "2s")])
        .serve("/mcp", "hostile")
        .start();
    let sid = session(&gw).session.unwrap();
    (up, gw, sid)
}

/// HTTP 200 with a JSON-RPC error for id 9 naming the upstream; returns the error object.
fn upstream_error(r: &Result<RawResponse, String>) -> Result<Value, String> {
    let r = r.as_ref().map_err(Clone::clone)?;
    let v: Value = serde_json::from_slice(&r.body)
        .map_err(|_| format!("not JSON: {} {:?}", r.status, show(&r.body)))?;
    let ok = r.status == 200
        && r.head.to_ascii_lowercase().contains("application/json")
        && v["id"] == 9
        && v["error"]["code"].is_i64()
        && v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"hostile\""));
    if ok {
        Ok(v["error"].clone())
    } else {
        Err(format!(
            "want HTTP 200 + a JSON-RPC error for id 9 naming \"hostile\", got {} {v}",
            r.status
        ))
    }
}

/// The gateway still serves after a fault.
fn still_serving(p: &mut Problems, gw: &Gateway, sid: &str) {
    match call(gw, sid, "10", "echo", json!({"text": "still here"})).and_then(|r| result_text(&r)) {
        Ok(t) if t == "echo:still here" => {}
        other => p.push(format!("the next call: {other:?}")),
    }
}

fn switching_protocols_is_an_upstream_protocol_error(d: Driver) {
    let (_up, gw, sid) = faulty_gateway(d);
    let mut p = Problems::default();
    let r = call(&gw, &sid, "9", "switch_protocols", json!({}));
    match upstream_error(&r) {
        Ok(e) if e["code"] == -31003 => {}
        Ok(e) => p.push(format!("101 to a POST: want -31003, got {e}")),
        Err(e) => p.push(format!("101 to a POST: {e}")),
    }
    still_serving(&mut p, &gw, &sid);
    p.assert_none("101 Switching Protocols from the upstream");
}

fn a_response_head_over_64_kib_in_one_write_is_an_upstream_protocol_error(d: Driver) {
    let (_up, gw, sid) = faulty_gateway(d);
    let mut p = Problems::default();
    let r = call(&gw, &sid, "9", "huge_head", json!({}));
    match upstream_error(&r) {
        Ok(e) if e["code"] == -31003 => {}
        Ok(e) => p.push(format!("a 70 KB head: want -31003, got {e}")),
        Err(e) => p.push(format!("a 70 KB head: {e}")),
    }
    still_serving(&mut p, &gw, &sid);
    p.assert_none("an upstream response head over 64 KiB");
}

fn non_json_upstream_replies_become_jsonrpc_errors_naming_the_upstream(d: Driver) {
    let (_up, gw, sid) = faulty_gateway(d);
    let mut p = Problems::default();
    for (tool, status) in [("status_500_text", "500"), ("html_200", "200")] {
        let r = call(&gw, &sid, "9", tool, json!({}));
        match upstream_error(&r) {
            Ok(e) if e["data"].to_string().contains(status) => {}
            Ok(e) => p.push(format!(
                "{tool}: error.data should carry the upstream status {status}: {e}"
            )),
            Err(e) => p.push(format!("{tool}: {e}")),
        }
    }
    // A well-formed JSON-RPC error is the upstream's answer: relayed byte for byte.
    match call(&gw, &sid, "9", "rpc_error", json!({})) {
        Ok(r) if r.status == 200 && r.body == rpc_error(&json!(9)).as_bytes() => {}
        Ok(r) => p.push(format!(
            "a JSON-RPC error reply was not relayed as is: {} {:?}",
            r.status,
            show(&r.body)
        )),
        Err(e) => p.push(format!("rpc_error: {e}")),
    }
    still_serving(&mut p, &gw, &sid);
    p.assert_none("non-JSON upstream replies");
}

fn replies_clients_can_parse_are_relayed_as_they_are(d: Driver) {
    let (_up, gw, sid) = faulty_gateway(d);
    let mut p = Problems::default();
    match call(&gw, &sid, "9", "accepted_text", json!({})) {
        Ok(r) if r.status == 202 && r.body == b"Accepted" => {}
        Ok(r) => p.push(format!(
            "a 202 with a text body was not relayed: {} {:?}",
            r.status,
            show(&r.body)
        )),
        Err(e) => p.push(format!("accepted_text: {e}")),
    }
    match call(&gw, &sid, "9", "odd_but_json", json!({})) {
        Ok(r) if r.status == 200 && String::from_utf8_lossy(&r.body).contains(r"cut \ud83d") => {}
        Ok(r) => p.push(format!(
            "JSON with a lone surrogate was not relayed as is: {} {:?}",
            r.status,
            show(&r.body)
        )),
        Err(e) => p.push(format!("odd_but_json: {e}")),
    }
    // A refused reply whose body was read to its end leaves its connection reusable.
    for _ in 0..3 {
        let r = call(&gw, &sid, "9", "status_503_text", json!({}));
        if let Err(e) = upstream_error(&r) {
            p.push(format!("status_503_text: {e}"));
        }
    }
    still_serving(&mut p, &gw, &sid);
    p.assert_none("replies a client can parse");
}

fn head_requests_get_refusals_without_a_body(d: Driver) {
    let gw = builder(d).start();
    let mut p = Problems::default();
    // Two HEADs (an unknown path, then the endpoint) and a GET on one connection: each answer
    // must be a head alone, or the third response would be read from the middle of a body.
    let req = b"HEAD /nope HTTP/1.1\r\nHost: localhost\r\n\r\n\
                HEAD /mcp HTTP/1.1\r\nHost: localhost\r\n\r\n\
                GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    match exchange(gw.addr, req, BOUND) {
        Ok(got) => {
            let text = String::from_utf8_lossy(&got);
            let heads: Vec<&str> = text.split("\r\n\r\n").collect();
            let ok = heads.len() == 4
                && heads[0].starts_with("HTTP/1.1 404")
                && heads[1].starts_with("HTTP/1.1 405")
                && heads[2].starts_with("HTTP/1.1 404")
                && heads[3].contains("no MCP endpoint");
            if !ok {
                p.push(format!(
                    "want 404 head, 405 head, 404 with body: {:?}",
                    show(&got)
                ));
            }
        }
        Err(got) => p.push(format!("no close: {:?}", show(&got))),
    }
    p.assert_none("HEAD refusals");
}

/// The same id value in another spelling.
fn respelled(id: &Value) -> String {
    match id {
        Value::Number(n) if n.as_u64() == Some(100) => "1E2".into(),
        Value::Number(n) if n.as_u64() == Some(0) => "-0".into(),
        Value::String(s) if s == "1" => r#""\u0031""#.into(),
        Value::String(s) if s == "a/b" => r#""a\/b""#.into(),
        other => other.to_string(),
    }
}

/// The raw bytes of the first `"id":` value in a JSON text.
fn raw_id(text: &str) -> Option<&str> {
    let rest = &text[text.find("\"id\":")? + 5..];
    let rest = rest.trim_start();
    let end = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"')? + 2
    } else {
        rest.find([',', '}'])?
    };
    Some(&rest[..end])
}

fn initialize_accepts_an_id_echoed_in_another_spelling(d: Driver) {
    let up = Scripted::start(|mut s, _| {
        while let Some(req) = scripted::read_request(&mut s) {
            let reply = if req.rpc_method() == "initialize" {
                let body = format!(
                    r#"{{"jsonrpc":"2.0","id":{},"result":{}}}"#,
                    respelled(&req.id()),
                    scripted::initialize_result()
                );
                scripted::json_response(&body)
            } else {
                scripted::mcp_basics(&req).unwrap_or_else(|| echo(&req))
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    });
    let gw = builder(d)
        .upstream("hostile", &up.url())
        .serve("/mcp", "hostile")
        .start();
    let mut p = Problems::default();
    for id in ["100", r#""1""#, "0", r#""a/b""#] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"hostile","version":"1"}}}}}}"#
        );
        let mut headers = mcp_headers(None);
        headers.push(("Connection", "close"));
        let req = request("POST /mcp HTTP/1.1", &headers, body.as_bytes());
        let got = exchange(gw.addr, &req, BOUND).unwrap_or_else(|g| g);
        let Some((r, _)) = split_response(&got) else {
            p.push(format!("id {id}: no response: {:?}", show(&got)));
            continue;
        };
        let text = String::from_utf8_lossy(&r.body).into_owned();
        let session = r.head.to_ascii_lowercase().contains("mcp-session-id: tg2.");
        if r.status != 200 || !session || text.contains("\"error\"") {
            p.push(format!(
                "id {id} echoed as {}: no session: {} {text}",
                respelled(&serde_json::from_str(id).unwrap()),
                r.status
            ));
        } else if raw_id(&text) != Some(id) {
            p.push(format!(
                "id {id}: the client got id {:?} back, not its own bytes: {text}",
                raw_id(&text)
            ));
        }
    }
    p.assert_none("initialize with an id echoed in another spelling");
}

drivers!(
    a_stray_response_after_a_reply_never_reaches_another_client,
    a_stray_response_while_pooled_never_reaches_another_client,
    a_response_written_on_connect_never_reaches_another_client,
    an_upstream_closing_idle_connections_after_1s_loses_no_call,
    a_keep_alive_timeout_from_the_upstream_is_honoured,
    switching_protocols_is_an_upstream_protocol_error,
    a_response_head_over_64_kib_in_one_write_is_an_upstream_protocol_error,
    non_json_upstream_replies_become_jsonrpc_errors_naming_the_upstream,
    initialize_accepts_an_id_echoed_in_another_spelling,
    replies_clients_can_parse_are_relayed_as_they_are,
    head_requests_get_refusals_without_a_body,
);
