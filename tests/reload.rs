//! Hot reload (SIGHUP and `POST /admin/reload`): a valid config is installed on every worker
//! while requests and streams in flight finish on the old one; sessions of servers and
//! upstreams that still exist keep working, whatever the new order; a broken config is refused
//! with its problems and the running one keeps serving.

mod harness;

use std::time::Duration;

use harness::{eventually, metric_value, session, Demo, Gateway, GatewayBuilder, Http, Mcp};
use serde_json::json;

/// Waits until the log holds `needle` `times` times; panics with the log otherwise.
fn wait_log(gw: &Gateway, needle: &str, times: usize) {
    let ok = eventually(Duration::from_secs(10), || {
        gw.log.text().matches(needle).count() >= times
    });
    assert!(
        ok,
        "log never said {needle:?} ({times}x):\n{}",
        gw.log.text()
    );
}

fn reloads(gw: &Gateway, result: &str) -> f64 {
    let m = gw.metrics();
    metric_value(
        &m,
        &format!("tollgate_config_reloads_total{{result=\"{result}\"}}"),
    )
}

fn base(demo: &Demo) -> GatewayBuilder {
    Gateway::builder()
        .rust_log("info")
        .upstream("demo", &demo.url())
        .serve("/mcp", "demo")
}

#[test]
fn in_flight_calls_and_streams_finish_and_sessions_survive_a_reload() {
    let demo = Demo::start(&[]);
    let other = Demo::start(&[]);
    let gw = base(&demo).start();
    let mut mcp = session(&gw);
    let sid = mcp.session.clone();

    // A slow call and an SSE stream (progress events over ~1.5 s), each on its own connection.
    let slow = {
        let (addr, sid) = (gw.addr, sid.clone());
        std::thread::spawn(move || {
            let mut m = Mcp::new(addr, "/mcp");
            m.session = sid;
            m.call_tool("slow", json!({"ms": 1500}))
        })
    };
    let stream = {
        let (addr, sid) = (gw.addr, sid.clone());
        std::thread::spawn(move || {
            let mut m = Mcp::new(addr, "/mcp");
            m.session = sid;
            m.request(
                "tools/call",
                json!({"name": "progress", "arguments": {"steps": 10, "interval_ms": 150},
                       "_meta": {"progressToken": "p1"}}),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    // The new config adds an upstream and an endpoint.
    let new = base(&demo)
        .upstream("other", &other.url())
        .serve("/other", "other")
        .config_text();
    gw.reload_with(&new);
    wait_log(&gw, "config reloaded", 1);
    assert!(
        gw.log.text().contains("upstreams +other; servers +/other"),
        "the reload line says what changed:\n{}",
        gw.log.text()
    );

    let r = slow.join().unwrap();
    assert!(r["result"]["content"].is_array(), "slow call: {r}");
    let r = stream.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let events = r.sse_messages();
    let progress = events
        .iter()
        .filter(|e| e["method"] == "notifications/progress")
        .count();
    assert_eq!(progress, 10, "every progress event arrived: {events:?}");
    assert!(
        events.iter().any(|e| e["result"].is_object()),
        "the stream ended with its result: {events:?}"
    );

    // The session opened before the reload, on the same keep-alive connection.
    let r = mcp.call_tool("echo", json!({"text": "after"}));
    assert!(r.to_string().contains("after"), "{r}");
    // The new endpoint serves.
    let mut o = Mcp::new(gw.addr, "/other");
    o.initialize("2025-06-18");
    let r = o.call_tool("echo", json!({"text": "other"}));
    assert!(r.to_string().contains("other"), "{r}");

    assert_eq!(reloads(&gw, "ok"), 1.0);
    let m = gw.metrics();
    assert!(
        metric_value(&m, "tollgate_config_last_reload_success_timestamp_seconds") > 1.7e9,
        "{m}"
    );
}

#[test]
fn reordering_servers_and_upstreams_changes_no_session() {
    let a = Demo::start(&[]);
    let b = Demo::start(&[]);
    let c = Demo::start(&[]);
    let gw = Gateway::builder()
        .rust_log("info")
        .upstream("a", &a.url())
        .upstream("b", &b.url())
        .serve("/a", "a")
        .serve("/b", "b")
        .start();
    let mut sa = Mcp::new(gw.addr, "/a");
    sa.initialize("2025-06-18");
    let mut sb = Mcp::new(gw.addr, "/b");
    sb.initialize("2025-06-18");

    // New first upstream and server, the others in reverse order. Each demo knows only its own
    // sessions: a session sent to the wrong upstream would get 404.
    let new = Gateway::builder()
        .upstream("c", &c.url())
        .upstream("b", &b.url())
        .upstream("a", &a.url())
        .serve("/c", "c")
        .serve("/b", "b")
        .serve("/a", "a")
        .config_text();
    gw.reload_with(&new);
    wait_log(&gw, "config reloaded", 1);
    for (s, text) in [(&mut sa, "to a"), (&mut sb, "to b")] {
        let r = s.call_tool("echo", json!({"text": text}));
        assert!(r.to_string().contains(text), "{r}");
    }
}

#[test]
fn a_broken_config_is_refused_and_the_running_one_serves() {
    let demo = Demo::start(&[]);
    let gw = base(&demo).start();
    let mut mcp = session(&gw);
    let broken = Gateway::builder()
        .upstream("demo", &demo.url())
        .serve("/mcp", "demo")
        .serve("/x", "nope")
        .config_text();
    gw.reload_with(&broken);
    wait_log(&gw, "config reload refused", 1);
    assert!(
        gw.log.text().contains("no upstream named \"nope\""),
        "every problem is logged:\n{}",
        gw.log.text()
    );
    let r = mcp.call_tool("echo", json!({"text": "still"}));
    assert!(r.to_string().contains("still"), "{r}");
    assert_eq!(reloads(&gw, "error"), 1.0);
    assert_eq!(reloads(&gw, "ok"), 0.0);
}

#[test]
fn removed_endpoints_and_upstreams_answer_clearly() {
    let demo = Demo::start(&[]);
    let other = Demo::start(&[]);
    let gw = base(&demo)
        .upstream("other", &other.url())
        .serve("/other", "other")
        .start();
    let mut on_mcp = session(&gw);
    let mut on_other = Mcp::new(gw.addr, "/other");
    on_other.initialize("2025-06-18");

    // /other goes away; /mcp now fronts the other upstream ("demo" is removed).
    let new = Gateway::builder()
        .upstream("other", &other.url())
        .serve("/mcp", "other")
        .config_text();
    gw.reload_with(&new);
    wait_log(&gw, "config reloaded", 1);

    let r = on_other.request("tools/list", json!({}));
    assert_eq!(r.status, 404, "a removed endpoint: {}", r.text());
    let r = on_mcp.request("tools/list", json!({}));
    assert_eq!(r.status, 404, "{}", r.text());
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        msg.contains("demo") && msg.contains("initialize a new one"),
        "the session's upstream is gone, said so: {msg}"
    );
    // A new session on /mcp reaches the new upstream.
    let mut fresh = session(&gw);
    let r = fresh.call_tool("echo", json!({"text": "new"}));
    assert!(r.to_string().contains("new"), "{r}");
}

#[test]
fn the_admin_listener_reloads_on_post() {
    let demo = Demo::start(&[]);
    let gw = base(&demo).start();
    let admin = gw.admin.unwrap();
    let mut h = Http::connect(admin);
    let r = h.request("GET", "/admin/reload", &[], b"");
    assert_eq!(r.status, 405, "{}", r.text());

    std::fs::write(
        gw.config_path(),
        base(&demo).serve("/second", "demo").config_text(),
    )
    .unwrap();
    let mut h = Http::connect(admin);
    let r = h.request("POST", "/admin/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("servers +/second"), "{}", r.text());
    let mut m = Mcp::new(gw.addr, "/second");
    m.initialize("2025-06-18");

    std::fs::write(gw.config_path(), "limits:\n  max_body_bytes: lots\n").unwrap();
    let mut h = Http::connect(admin);
    let r = h.request("POST", "/admin/reload", &[], b"");
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("limits.max_body_bytes"), "{}", r.text());
    assert_eq!(reloads(&gw, "ok"), 1.0);
    assert_eq!(reloads(&gw, "error"), 1.0);
}
