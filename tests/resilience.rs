//! Resilience toward upstreams: per-tool timeouts, what is (not) retried, and the circuit breaker.

mod harness;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::scripted::{self, read_request, Scripted};
use harness::{eventually, session, Demo, Gateway, Mcp, Refused};
use serde_json::json;

/// An upstream that answers `initialize`, never answers `slow_*` tools (holds the connection),
/// and answers every other tool after `delay`; counts the tools/call requests it received.
fn upstream(delay: Duration, calls: Arc<AtomicUsize>) -> Scripted {
    Scripted::start(move |mut s: TcpStream, _| {
        while let Some(req) = read_request(&mut s) {
            if let Some(r) = scripted::mcp_basics(&req) {
                let _ = s.write_all(&r);
                continue;
            }
            calls.fetch_add(1, Ordering::SeqCst);
            let tool = req.tool();
            if tool.starts_with("slow_") {
                std::thread::sleep(Duration::from_secs(20));
                return;
            }
            if tool == "cut" {
                // Part of a head, then gone: response bytes arrived, nothing may be retried.
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Ty");
                return;
            }
            if tool == "vanish" {
                // The request reached the upstream, which closed without a byte: it may have
                // run the tool, so this is not retried either.
                return;
            }
            std::thread::sleep(delay);
            let body = scripted::text_result(&req.id(), &format!("ran {tool}"));
            let _ = s.write_all(&scripted::json_response(&body));
        }
    })
}

#[test]
fn a_tool_with_its_own_timeout_times_out_while_others_wait_longer() {
    let calls = Arc::new(AtomicUsize::new(0));
    // `patient` answers after 1 s: past the slow tools' timeout, well within request_timeout.
    let up = upstream(Duration::from_secs(1), calls.clone());
    let gw = Gateway::builder()
        .upstream_with(
            "up",
            &up.url(),
            &[("tool_timeouts", "{\"slow_*\": 300ms, \"other\": 10s}")],
        )
        .serve("/mcp", "up")
        .start();
    let mut m = session(&gw);
    let r = m.call_tool("slow_report", json!({}));
    let msg = r["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"));
    assert!(
        msg.contains("300 ms") && msg.contains("upstreams[].tool_timeouts"),
        "{r}"
    );
    // Another client: the timed-out exchange closed the first connection's upstream side only.
    let mut m2 = session(&gw);
    let r = m2.call_tool("patient", json!({}));
    assert_eq!(r["result"]["content"][0]["text"], "ran patient", "{r}");
    // Counted by the first call's record phase, after its answer was written (m2 may have
    // been served by another worker meanwhile).
    gw.await_metric(
        "tollgate_upstream_requests_total{upstream=\"up\",result=\"timeout\"}",
        |n| n == 1.0,
    );
}

#[test]
fn a_request_that_reached_the_upstream_is_never_sent_again() {
    let calls = Arc::new(AtomicUsize::new(0));
    let up = upstream(Duration::ZERO, calls.clone());
    let gw = Gateway::builder()
        .upstream_with(
            "up",
            &up.url(),
            &[("retries", "{attempts: 3, backoff: 1ms}")],
        )
        .serve("/mcp", "up")
        // One worker, one pool: `vanish` finds the pool empty (`cut` took and dropped the one
        // pooled connection), so it goes out on a new connection.
        .workers(1)
        .start();
    let m = session(&gw);
    for (tool, n) in [("cut", 1), ("vanish", 2)] {
        let mut c = Mcp::new(gw.addr, "/mcp");
        c.session = m.session.clone();
        c.version = m.version.clone();
        let r = c.call_tool(tool, json!({}));
        assert!(r["error"]["message"].as_str().is_some(), "{tool}: {r}");
        assert_eq!(calls.load(Ordering::SeqCst), n, "{tool} was sent again");
    }
}

#[test]
fn a_connect_that_failed_is_retried_then_reported() {
    let refused = Refused::new();
    let dead = refused.addr();
    let gw = Gateway::builder()
        .upstream_with(
            "gone",
            &format!("http://{dead}/mcp"),
            &[("retries", "{attempts: 2, backoff: 1ms}")],
        )
        .serve("/mcp", "gone")
        .rust_log("tollgate=debug")
        .start();
    let mut http = harness::Http::connect(gw.addr);
    let body = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = http.request(
        "POST",
        "/mcp",
        &harness::JSON_HEADERS,
        body.to_string().as_bytes(),
    );
    assert!(r.text().contains("is unavailable"), "{}", r.text());
    assert!(
        eventually(Duration::from_secs(5), || {
            gw.log
                .text()
                .matches("retrying (upstreams[].retries)")
                .count()
                == 2
        }),
        "{}",
        gw.log.text()
    );
}

fn circuit_state(gw: &Gateway, upstream: &str) -> f64 {
    harness::metric_value(
        &gw.metrics(),
        &format!("tollgate_upstream_circuit_state{{upstream=\"{upstream}\"}}"),
    )
}

#[test]
fn the_circuit_opens_on_failures_fails_fast_and_closes_after_a_probe() {
    let demo = Demo::start(&[]);
    let addr = demo.addr.to_string();
    let gw = Gateway::builder()
        .upstream_with(
            "flaky",
            &demo.url(),
            &[
                ("retries", "{attempts: 0}"),
                (
                    "circuit_breaker",
                    "{consecutive_failures: 3, open_for: 1s, half_open_probes: 1}",
                ),
            ],
        )
        .serve("/mcp", "flaky")
        .start();
    let mut m = session(&gw);
    assert_eq!(circuit_state(&gw, "flaky"), 0.0);
    drop(demo);
    for i in 0..3 {
        let r = m.request("tools/list", json!({})).json();
        let msg = r["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("is unavailable"), "failure {i}: {r}");
    }
    assert_eq!(circuit_state(&gw, "flaky"), 1.0);
    // Open: refused at once, naming the upstream, with when to retry.
    let r = m.request("tools/list", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let err = &v["error"];
    assert!(
        err["message"].as_str().unwrap().contains("\"flaky\"")
            && err["message"].as_str().unwrap().contains("circuit is open"),
        "{v}"
    );
    assert_eq!(err["data"]["upstream"], "flaky", "{v}");
    let retry = err["data"]["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!(retry > 0 && retry <= 1000, "{v}");
    // The refusal is counted by its record phase, after it was written (the series is there
    // at zero from the start: its value is what tells).
    gw.await_metric(
        "tollgate_rejections_total{reason=\"upstream_circuit_open\"}",
        |n| n == 1.0,
    );
    // (Counted before the refusal was written.)
    let metrics = gw.metrics();
    assert!(metrics
        .contains("tollgate_upstream_circuit_transitions_total{upstream=\"flaky\",to=\"open\"} 1"));
    // The refusal sent nothing: the three failed exchanges are all the upstream's count.
    assert!(
        metrics.contains(
            "tollgate_upstream_requests_total{upstream=\"flaky\",result=\"unavailable\"} 3"
        ),
        "{metrics}"
    );
    // Back up: after open_for, a probe goes through and closes the circuit. The new process
    // does not know the old upstream session: the client is told to initialize again.
    let _demo = Demo::start_on(&addr, &[]);
    assert!(eventually(Duration::from_secs(10), || {
        let r = m.request("tools/list", json!({}));
        r.status == 404
    }));
    assert_eq!(circuit_state(&gw, "flaky"), 0.0);
    let metrics = gw.metrics();
    for to in ["half_open", "closed"] {
        let line = format!(
            "tollgate_upstream_circuit_transitions_total{{upstream=\"flaky\",to=\"{to}\"}} 1"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    let mut fresh = session(&gw);
    let r = fresh.request("tools/list", json!({})).json();
    assert!(r["result"]["tools"].is_array(), "{r}");
}

#[test]
fn an_idempotent_request_is_resent_when_a_new_connection_closed_before_replying() {
    let lists = Arc::new(AtomicUsize::new(0));
    let seen = lists.clone();
    // The first tools/list is read and its connection closed without a byte; later ones answer.
    let up = Scripted::start(move |mut s: TcpStream, _| {
        while let Some(req) = read_request(&mut s) {
            if let Some(r) = scripted::mcp_basics(&req) {
                let _ = s.write_all(&r);
                continue;
            }
            if req.rpc_method() == "tools/list" && seen.fetch_add(1, Ordering::SeqCst) == 0 {
                return;
            }
            let body = scripted::rpc_result(&req.id(), json!({"tools": []}));
            let _ = s.write_all(&scripted::json_response(&body));
        }
    });
    let gw = Gateway::builder()
        // No pooling: every request goes out on a new connection, so the stale-connection retry
        // cannot be what resends it.
        .upstream_with(
            "up",
            &up.url(),
            &[
                ("max_idle_per_worker", "0"),
                ("retries", "{attempts: 1, backoff: 1ms}"),
            ],
        )
        .serve("/mcp", "up")
        .start();
    let mut m = session(&gw);
    let r = m.request("tools/list", json!({})).json();
    assert!(r["result"]["tools"].is_array(), "{r}");
    assert_eq!(lists.load(Ordering::SeqCst), 2);
}

#[test]
fn an_error_ratio_opens_the_circuit_without_failures_in_a_row() {
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    // tools/list: 503, 200, 503, 200, … never two failures in a row.
    let up = Scripted::start(move |mut s: TcpStream, _| {
        while let Some(req) = read_request(&mut s) {
            if let Some(r) = scripted::mcp_basics(&req) {
                let _ = s.write_all(&r);
                continue;
            }
            let r = if seen.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                scripted::response("503 Service Unavailable", &[], b"")
            } else {
                scripted::json_response(&scripted::rpc_result(&req.id(), json!({"tools": []})))
            };
            let _ = s.write_all(&r);
        }
    });
    let gw = behind_a_breaker(
        &up,
        "{consecutive_failures: 0, error_ratio: 0.4, min_requests: 4, window: 1h}",
        Some(1),
    );
    let mut m = session(&gw);
    // initialize and notifications/initialized succeeded; then 503, 200, 503: 2 of 5 failed.
    for _ in 0..3 {
        let r = m.request("tools/list", json!({})).json();
        assert!(!r.to_string().contains("circuit is open"), "{r}");
    }
    assert_eq!(n.load(Ordering::SeqCst), 3);
    let r = m.request("tools/list", json!({})).json();
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("circuit is open"),
        "{r}"
    );
    assert_eq!(n.load(Ordering::SeqCst), 3, "an open circuit sends nothing");
    assert_eq!(circuit_state(&gw, "up"), 1.0);
}

/// The transitions of `upstream`'s circuit into state `to` so far.
/// A gateway serving `/mcp` from the scripted upstream `up` with `breaker` as its
/// `circuit_breaker` settings (on `workers` workers, else the default).
fn behind_a_breaker(up: &Scripted, breaker: &str, workers: Option<usize>) -> Gateway {
    let b = Gateway::builder()
        .upstream_with("up", &up.url(), &[("circuit_breaker", breaker)])
        .serve("/mcp", "up");
    match workers {
        Some(n) => b.workers(n),
        None => b,
    }
    .start()
}

fn circuit_transitions(gw: &Gateway, upstream: &str, to: &str) -> f64 {
    harness::metric_value(
        &gw.metrics(),
        &format!(
            "tollgate_upstream_circuit_transitions_total{{upstream=\"{upstream}\",to=\"{to}\"}}"
        ),
    )
}

#[test]
fn a_2xx_reply_that_is_unusable_counts_as_a_failure_for_the_circuit() {
    let n = Arc::new(AtomicUsize::new(0));
    let broken = Arc::new(AtomicBool::new(true));
    let (seen, garbage) = (n.clone(), broken.clone());
    // While `broken`, tools/list gets a 200 no client could use, in turn: an HTML page, a JSON
    // content type over a body that is not JSON, the response to another id.
    let up = Scripted::start(move |mut s: TcpStream, _| {
        while let Some(req) = read_request(&mut s) {
            if let Some(r) = scripted::mcp_basics(&req) {
                let _ = s.write_all(&r);
                continue;
            }
            let i = seen.fetch_add(1, Ordering::SeqCst);
            let r = if !garbage.load(Ordering::SeqCst) {
                scripted::json_response(&scripted::rpc_result(&req.id(), json!({"tools": []})))
            } else {
                match i % 3 {
                    0 => scripted::response(
                        "200 OK",
                        &[("Content-Type", "text/html")],
                        b"<html>maintenance</html>",
                    ),
                    1 => scripted::json_response("<html>maintenance</html>"),
                    _ => scripted::json_response(&scripted::rpc_result(
                        &json!("someone-else"),
                        json!({"tools": []}),
                    )),
                }
            };
            let _ = s.write_all(&r);
        }
    });
    let gw = behind_a_breaker(
        &up,
        "{consecutive_failures: 3, open_for: 2s, half_open_probes: 1}",
        None,
    );
    let mut m = session(&gw);
    for i in 0..3 {
        let r = m.request("tools/list", json!({})).json();
        let msg = r["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("unusable reply"), "reply {i}: {r}");
        assert_eq!(circuit_state(&gw, "up"), if i < 2 { 0.0 } else { 1.0 });
    }
    let r = m.request("tools/list", json!({})).json();
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("circuit is open"), "{r}");
    assert_eq!(n.load(Ordering::SeqCst), 3, "an open circuit sends nothing");
    // The half-open probe gets garbage too: open again.
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = m.request("tools/list", json!({})).json();
            r.to_string().contains("unusable reply")
        }),
        "no probe went through"
    );
    assert_eq!(n.load(Ordering::SeqCst), 4);
    assert_eq!(circuit_state(&gw, "up"), 1.0);
    assert_eq!(circuit_transitions(&gw, "up", "open"), 2.0);
    // Usable again: the next probe closes it.
    broken.store(false, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(10), || {
        let r = m.request("tools/list", json!({})).json();
        r["result"]["tools"].is_array()
    }));
    assert_eq!(circuit_state(&gw, "up"), 0.0);
    assert_eq!(circuit_transitions(&gw, "up", "closed"), 1.0);
}

/// A half-open probe whose 2xx is still being vetted holds its slot: with one probe at a time,
/// another request is refused until the probe's body has arrived and been judged.
#[test]
fn a_half_open_probe_holds_its_slot_until_its_reply_is_vetted() {
    let (broken, release) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
    );
    let lists = Arc::new(AtomicUsize::new(0));
    let (garbage, go, seen) = (broken.clone(), release.clone(), lists.clone());
    // While `broken`: an HTML 200. Then the first tools/list gets its head and half its body,
    // the rest once `release` is set; later ones are answered at once.
    let up = Scripted::start(move |mut s: TcpStream, _| {
        while let Some(req) = read_request(&mut s) {
            if let Some(r) = scripted::mcp_basics(&req) {
                let _ = s.write_all(&r);
                continue;
            }
            if garbage.load(Ordering::SeqCst) {
                let r = scripted::response("200 OK", &[("Content-Type", "text/html")], b"<p>");
                let _ = s.write_all(&r);
                continue;
            }
            let r = scripted::json_response(&scripted::rpc_result(&req.id(), json!({"tools": []})));
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                let half = r.len() - 10;
                let _ = s.write_all(&r[..half]);
                assert!(eventually(Duration::from_secs(20), || go.load(Ordering::SeqCst)));
                let _ = s.write_all(&r[half..]);
            } else {
                let _ = s.write_all(&r);
            }
        }
    });
    let gw = behind_a_breaker(
        &up,
        "{consecutive_failures: 1, open_for: 200ms, half_open_probes: 1}",
        None,
    );
    let mut m = session(&gw);
    let r = m.request("tools/list", json!({})).json();
    assert!(r.to_string().contains("unusable reply"), "{r}");
    assert_eq!(circuit_state(&gw, "up"), 1.0);
    broken.store(false, Ordering::SeqCst);
    // The probe: sent once the circuit lets it through, then held by its slow body.
    let mut probe = Mcp::new(gw.addr, "/mcp");
    probe.session = m.session.clone();
    probe.version = m.version.clone();
    let prober = std::thread::spawn(move || {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = probe.request("tools/list", json!({})).json();
            if !r.to_string().contains("circuit is open") || std::time::Instant::now() > until {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(eventually(Duration::from_secs(10), || lists
        .load(Ordering::SeqCst)
        == 1));
    // Its head came (a 2xx), its body did not: it is still the one probe in flight.
    let r = m.request("tools/list", json!({})).json();
    assert!(r.to_string().contains("circuit is open"), "{r}");
    assert_eq!(lists.load(Ordering::SeqCst), 1, "a second probe went out");
    release.store(true, Ordering::SeqCst);
    let r = prober.join().unwrap();
    assert!(r["result"]["tools"].is_array(), "{r}");
    assert_eq!(circuit_state(&gw, "up"), 0.0);
    let r = m.request("tools/list", json!({})).json();
    assert!(r["result"]["tools"].is_array(), "{r}");
}
