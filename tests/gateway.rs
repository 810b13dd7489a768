//! End-to-end tests of the data path: the real binary as gateway, the demo upstream behind it,
//! raw HTTP/1.1 on ephemeral loopback ports.

mod harness;

use std::io::Write;
use std::time::{Duration, Instant};

use harness::{session, Demo, Gateway, Http, Mcp, Refused, JSON_HEADERS};
use serde_json::json;

fn setup() -> (Demo, Gateway) {
    let demo = Demo::start(&[]);
    let gw = Gateway::in_front_of(&demo.url());
    (demo, gw)
}

#[test]
fn initialize_issues_a_sealed_session_and_lists_and_calls_tools() {
    let (_demo, gw) = setup();
    let mut mcp = Mcp::new(gw.addr, "/mcp");
    let init = mcp.initialize("2025-06-18");
    let sid = mcp.session.clone().expect("gateway issues a session id");
    assert!(
        sid.starts_with("tg2."),
        "gateway's own sealed id, not the upstream's: {sid}"
    );
    assert!(
        sid.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "visible ASCII"
    );
    assert_eq!(init.json()["result"]["protocolVersion"], "2025-06-18");

    let tools = mcp.request("tools/list", json!({})).json();
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for want in ["echo", "add", "slow", "progress", "large", "fail"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let r = mcp.call_tool("echo", json!({"text": "héllo through the gateway"}));
    assert_eq!(
        r["result"]["content"][0]["text"],
        "héllo through the gateway"
    );
    let r = mcp.call_tool("add", json!({"a": 2, "b": 40}));
    assert_eq!(r["result"]["structuredContent"]["sum"], 42.0);
}

#[test]
fn resources_and_prompts_pass_through() {
    let (_demo, gw) = setup();
    let mut mcp = session(&gw);
    let list = mcp.request("resources/list", json!({})).json();
    assert!(list["result"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["uri"] == "demo://readme"));
    let read = mcp
        .request("resources/read", json!({"uri": "demo://readme"}))
        .json();
    assert!(
        read["result"]["contents"][0]["text"]
            .as_str()
            .unwrap()
            .len()
            > 10
    );
    let tpl = mcp.request("resources/templates/list", json!({})).json();
    assert_eq!(
        tpl["result"]["resourceTemplates"][0]["uriTemplate"],
        "demo://items/{id}"
    );
    let p = mcp
        .request(
            "prompts/get",
            json!({"name": "greet", "arguments": {"name": "Ada"}}),
        )
        .json();
    assert!(p["result"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap()
        .contains("Hello, Ada!"));
}

#[test]
fn sse_replies_and_progress_notifications_are_relayed_in_order() {
    let (_demo, gw) = setup();
    let mut mcp = session(&gw);
    let r = mcp.request(
        "tools/call",
        json!({"name": "progress", "arguments": {"steps": 4, "interval_ms": 5}, "_meta": {"progressToken": "tok-7"}}),
    );
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    let msgs = r.sse_messages();
    let progress: Vec<_> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 4, "{msgs:?}");
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["params"]["progressToken"], "tok-7");
        assert_eq!(p["params"]["progress"], (i + 1) as f64);
    }
    assert!(
        msgs.last().unwrap()["result"].is_object(),
        "result comes last"
    );
}

#[test]
fn sse_events_reach_the_client_before_the_stream_ends() {
    let (_demo, gw) = setup();
    let mut mcp = session(&gw);
    // 3 steps, 400 ms apart: the first event must arrive long before the last.
    let body = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"progress",
        "arguments":{"steps":3,"interval_ms":400},"_meta":{"progressToken":1}}});
    let headers: Vec<(String, String)> = mcp
        .headers()
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
        mcp.http.host,
        body.to_string().len()
    );
    for (n, v) in &headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body.to_string());
    mcp.http.stream.write_all(req.as_bytes()).unwrap();
    // Read until the first progress event: a buffered stream would bring the result with it.
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("notifications/progress") {
        let n = std::io::Read::read(&mut mcp.http.stream, &mut tmp).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&tmp[..n]);
    }
    let seen = String::from_utf8_lossy(&got);
    assert!(
        !seen.contains("\"result\""),
        "the result came with the first progress event: the stream was buffered\n{seen}"
    );
}

#[test]
fn large_results_arrive_intact() {
    let (_demo, gw) = setup();
    let mut mcp = session(&gw);
    let r = mcp.call_tool("large", json!({"bytes": 1_048_576}));
    assert_eq!(
        r["result"]["content"][0]["text"].as_str().unwrap().len(),
        1_048_576
    );
    // The connection is still usable afterwards (keep-alive, framing intact).
    let r = mcp.call_tool("echo", json!({"text": "after"}));
    assert_eq!(r["result"]["content"][0]["text"], "after");
}

#[test]
fn delete_ends_the_session_here_and_upstream() {
    let (_demo, gw) = setup();
    let mut mcp = session(&gw);
    let sid = mcp.session.clone().unwrap();
    let d = mcp
        .http
        .request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], b"");
    assert_eq!(d.status, 200);
    // On this connection and on fresh ones (other workers too): 404, so clients re-initialize.
    let r = mcp.request("tools/list", json!({}));
    assert_eq!(r.status, 404, "{}", r.text());
    for _ in 0..4 {
        let mut other = Mcp::new(gw.addr, "/mcp");
        other.session = Some(sid.clone());
        let r = other.request("tools/list", json!({}));
        assert_eq!(r.status, 404, "{}", r.text());
    }
}

#[test]
fn session_errors_say_what_to_do() {
    let (_demo, gw) = setup();
    let mut mcp = Mcp::new(gw.addr, "/mcp");
    // No session: 400 with the request id.
    let r = mcp.request("tools/list", json!({}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["id"], 1);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Mcp-Session-Id"));
    // Tampered: 404.
    mcp.initialize("2025-06-18");
    let mut sid = mcp.session.clone().unwrap().into_bytes();
    let i = sid.len() - 5;
    sid[i] = if sid[i] == b'A' { b'B' } else { b'A' };
    mcp.session = Some(String::from_utf8(sid).unwrap());
    let r = mcp.request("tools/list", json!({}));
    assert_eq!(r.status, 404, "{}", r.text());
    // Garbage: 404.
    mcp.session = Some("not-a-session".into());
    assert_eq!(mcp.request("tools/list", json!({})).status, 404);
}

#[test]
fn protocol_version_header_and_batches_follow_the_spec() {
    let (_demo, gw) = setup();
    let mut mcp = session(&gw);
    mcp.version = "1999-01-01".into();
    let r = mcp.request("tools/list", json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("MCP-Protocol-Version"));
    mcp.version = "2025-06-18".into();
    let batch =
        br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#;
    let r = mcp.post_raw(batch);
    assert_eq!(
        r.status,
        400,
        "batches are not allowed after 2025-03-26: {}",
        r.text()
    );

    let mut old = Mcp::new(gw.addr, "/mcp");
    old.initialize("2025-03-26");
    assert_eq!(old.version, "2025-03-26");
    let r = old.post_raw(batch);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().unwrap().len(), 2);
}

#[test]
fn upstream_down_is_a_jsonrpc_error_naming_the_upstream() {
    // A port with nothing listening: bind, note, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::builder()
        .upstream("payments", &format!("http://127.0.0.1:{port}/mcp"))
        .serve("/mcp", "payments")
        .start();
    let mut mcp = Mcp::new(gw.addr, "/mcp");
    let body = json!({"jsonrpc":"2.0","id":"init-1","method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let t0 = Instant::now();
    let r = mcp
        .http
        .request("POST", "/mcp", &JSON_HEADERS, body.to_string().as_bytes());
    assert!(t0.elapsed() < Duration::from_secs(5), "no hang");
    assert_eq!(r.status, 200, "request errors keep HTTP 200: {}", r.text());
    let v = r.json();
    assert_eq!(v["id"], "init-1");
    assert_eq!(v["error"]["code"], -31001);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"payments\""),
        "{v}"
    );
    // Counted by the record phase, after the answer was written; the series is there at zero
    // from the start, so its value is what tells.
    gw.await_metric(
        "tollgate_upstream_requests_total{upstream=\"payments\",result=\"unavailable\"}",
        |n| n == 1.0,
    );
}

#[test]
fn host_and_origin_are_validated() {
    let (_demo, gw) = setup();
    let mut h = gw.client();
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let mut hs = JSON_HEADERS.to_vec();
    hs.push(("Host", "evil.example.com"));
    let r = h.request("POST", "/mcp", &hs, body);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("allowed_hosts"));

    let mut hs = JSON_HEADERS.to_vec();
    hs.push(("Origin", "https://evil.example.com"));
    let r = gw.client().request("POST", "/mcp", &hs, body);
    assert_eq!(r.status, 403);
    assert!(r.text().contains("allowed_origins"));

    // A loopback origin (e.g. the Inspector's UI) is allowed on a loopback listener, with CORS.
    let mcp = session(&gw);
    let mut hs = mcp.headers();
    hs.push(("Origin", "http://localhost:6274"));
    let r = gw.client().request(
        "POST",
        "/mcp",
        &hs,
        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:6274")
    );
    assert!(r
        .header("access-control-expose-headers")
        .unwrap()
        .contains("mcp-session-id"));
}

#[test]
fn http_level_refusals() {
    let (_demo, gw) = setup();
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    // A client that cannot take an event stream (or JSON) gets 406, not a reply it cannot read.
    for accept in [
        "application/json",
        "text/event-stream",
        "application/json, text/event-stream;q=0",
    ] {
        let r = gw.client().request(
            "POST",
            "/mcp",
            &[("Content-Type", "application/json"), ("Accept", accept)],
            body,
        );
        assert_eq!(r.status, 406, "Accept: {accept}");
        assert!(r.text().contains("text/event-stream"), "{}", r.text());
    }
    assert_eq!(
        gw.client()
            .request("POST", "/nope", &JSON_HEADERS, body)
            .status,
        404
    );
    assert_eq!(
        gw.client()
            .request("PUT", "/mcp", &JSON_HEADERS, body)
            .status,
        405
    );
    // HEAD gets the 405's head and no body, and the connection stays usable.
    let mut raw = gw.client();
    raw.send_raw(b"HEAD /mcp HTTP/1.1\r\nHost: localhost\r\n\r\nPUT /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    let mut s = raw.stream.try_clone().unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 {
        let n = std::io::Read::read(&mut s, &mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    let second = text.find("\r\n\r\n").unwrap() + 4;
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(
        text[second..].starts_with("HTTP/1.1 405"),
        "HEAD answer carried a body: {text}"
    );
    let r = gw
        .client()
        .request("POST", "/mcp", &[("Content-Type", "text/plain")], body);
    assert_eq!(r.status, 415);
    let r = gw
        .client()
        .request("POST", "/mcp", &JSON_HEADERS, b"{\"jsonrpc\":\"2.0\",");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32700);
    let r = gw.client().request(
        "POST",
        "/mcp",
        &JSON_HEADERS,
        br#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"x"}"#,
    );
    assert_eq!(r.status, 400, "duplicate keys are refused: {}", r.text());
    // Request smuggling shapes.
    let mut h = gw.client();
    h.send_raw(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(h.read_response().unwrap().status, 400);
}

#[test]
fn chunked_requests_and_pipelining() {
    let (_demo, gw) = setup();
    let mcp = session(&gw);
    let sid = mcp.session.clone().unwrap();
    let ping = |id: u32| format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
    // Chunked body.
    let b = ping(5);
    let (a, rest) = b.split_at(10);
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nMcp-Session-Id: {sid}\r\n\
         MCP-Protocol-Version: 2025-06-18\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
        a.len(),
        rest.len()
    );
    let mut h = gw.client();
    h.send_raw(req.as_bytes());
    let r = h.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], 5);
    // Three pipelined requests in one write: three responses, in order.
    let mut all = String::new();
    for id in [11, 12, 13] {
        let b = ping(id);
        all.push_str(&format!(
            "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nMcp-Session-Id: {sid}\r\n\
             MCP-Protocol-Version: 2025-06-18\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    }
    h.send_raw(all.as_bytes());
    for id in [11, 12, 13] {
        let r = h.read_response().unwrap();
        assert_eq!(r.json()["id"], id);
    }
}

#[test]
fn every_inbound_limit_answers_with_its_status_and_is_counted() {
    let demo = Demo::start(&[]);
    let gw = Gateway::builder()
        .upstream("demo", &demo.url())
        .serve("/mcp", "demo")
        .workers(1)
        .yaml(
            "limits:\n  max_header_bytes: 2KiB\n  max_request_line_bytes: 1KiB\n  max_headers: 16\n  max_body_bytes: 1KiB\n  header_read_timeout: 300ms\n  \
             body_read_timeout: 300ms\n  idle_timeout: 300ms\nlisten:\n  address: 127.0.0.1:0\n  max_connections_per_worker: 3\n",
        )
        .start();
    // 414: request line too long (a head under max_header_bytes).
    let long_target = format!("/mcp?{}", "a".repeat(1100));
    let r = gw.client().request("GET", &long_target, &[], b"");
    assert_eq!(r.status, 414, "{}", r.text());
    assert!(r.text().contains("limits.max_request_line_bytes"));
    // 414 before the whole head arrives: the line alone is over the limit.
    let mut h = gw.client();
    h.send_raw(format!("GET {long_target}").as_bytes());
    assert_eq!(h.read_response().unwrap().status, 414);
    // 431: head too large.
    let mut h = gw.client();
    let big = "a".repeat(3000);
    let r = h.request("GET", "/mcp", &[("X-Big", &big)], b"");
    assert_eq!(r.status, 431);
    assert!(r.text().contains("limits.max_header_bytes"));
    // 431: too many headers.
    let many: Vec<(String, String)> = (0..20)
        .map(|i| (format!("X-{i}"), "v".to_string()))
        .collect();
    let hs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let r = gw.client().request("GET", "/mcp", &hs, b"");
    assert_eq!(r.status, 431);
    assert!(r.text().contains("limits.max_headers"));
    // 413: body too large (refused from Content-Length, before reading it).
    let r = gw
        .client()
        .request("POST", "/mcp", &JSON_HEADERS, &vec![b' '; 2000]);
    assert_eq!(r.status, 413);
    assert!(r.text().contains("limits.max_body_bytes"));
    // 408: slowloris head.
    let mut h = gw.client();
    h.send_raw(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\n");
    let r = h.read_response().unwrap();
    assert_eq!(r.status, 408);
    assert!(r.text().contains("limits.header_read_timeout"));
    // 408: body never completes.
    let mut h = gw.client();
    h.send_raw(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\"");
    let r = h.read_response().unwrap();
    assert_eq!(r.status, 408);
    assert!(r.text().contains("limits.body_read_timeout"));
    // Idle keep-alive connection is closed.
    let mut h = gw.client();
    assert!(
        h.closed_within(Duration::from_secs(3)),
        "idle connection closed by the gateway"
    );
    // 503: connections per worker (three held open, the fourth refused).
    let held: Vec<Http> = (0..3)
        .map(|_| {
            let mut c = gw.client();
            c.send_raw(b"GET /mcp HTTP/1.1\r\n"); // holds the connection open mid-head
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let mut h = gw.client();
    let r = h.read_response().expect("a 503, not a silent close");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("max_connections_per_worker"));
    drop(held);
    // Every series is there at zero from the start: each must have counted its refusal (by the
    // record phase, which runs after the refusal was written).
    let counted = |m: &str, limit: &str| {
        harness::metric_value(
            m,
            &format!("tollgate_limit_rejections_total{{limit=\"{limit}\"}}"),
        ) >= 1.0
    };
    let limits = [
        "uri_too_long",
        "header_too_large",
        "too_many_headers",
        "body_too_large",
        "header_timeout",
        "body_timeout",
        "too_many_connections",
    ];
    harness::eventually(Duration::from_secs(10), || {
        let m = gw.metrics();
        limits.iter().all(|l| counted(&m, l))
    });
    let m = gw.metrics();
    for limit in limits {
        assert!(counted(&m, limit), "{limit} counted:\n{m}");
        // Counted once: a limit refusal is not also a `tollgate_rejections_total` series.
        assert!(
            !m.contains(&format!("tollgate_rejections_total{{reason=\"{limit}\"}}")),
            "{limit} counted twice:\n{m}"
        );
    }
}

#[test]
fn metrics_count_requests_by_method_and_outcome() {
    let (_demo, gw) = setup();
    let mut mcp = session(&gw);
    for _ in 0..3 {
        mcp.call_tool("echo", json!({"text": "x"}));
    }
    // A request is counted (and its durations recorded) by the record phase, once its response
    // is written, so the scrape may briefly trail it. Every series below is there at zero from
    // the start: their values are checked.
    let counts = |m: &str| {
        [
            "tollgate_requests_total{method=\"tools/call\",outcome=\"ok\"}",
            "tollgate_request_duration_seconds_count{method=\"tools/call\"}",
        ]
        .map(|series| harness::metric_value(m, series))
    };
    // initialize, notifications/initialized and the three calls: at least the calls.
    let upstream = |m: &str| {
        harness::metric_value(
            m,
            "tollgate_upstream_duration_seconds_count{upstream=\"up\"}",
        )
    };
    let mut m = String::new();
    let settled = harness::eventually(Duration::from_secs(10), || {
        m = gw.metrics();
        counts(&m) == [3.0; 2] && upstream(&m) >= 3.0
    });
    assert!(settled, "{m}");
    assert_eq!(
        harness::metric_value(&m, "tollgate_connections_open"),
        1.0,
        "{m}"
    );
    assert!(m.contains("tollgate_sessions_opened_total 1"));
    let mut h = Http::connect(gw.admin.unwrap());
    assert_eq!(h.request("GET", "/healthz", &[], b"").status, 200);
    assert_eq!(
        Http::connect(gw.admin.unwrap())
            .request("GET", "/readyz", &[], b"")
            .status,
        200
    );
}

/// /readyz follows the endpoint's only upstream: 503 naming both once it is known-down
/// (`unhealthy_after` consecutive connect failures, default 3), 200 again as soon as something
/// listens there (the probe /readyz makes), with no client traffic needed.
#[test]
fn readyz_names_an_endpoint_whose_upstream_is_down_and_recovers() {
    let dead = Refused::new();
    let addr = dead.addr();
    let gw = Gateway::builder()
        .upstream_with(
            "gone",
            &format!("http://{addr}/mcp"),
            &[("connect_timeout", "300ms")],
        )
        .serve("/mcp", "gone")
        .start();
    let readyz = || {
        let r = Http::connect(gw.admin.unwrap()).request("GET", "/readyz", &[], b"");
        (r.status, r.text())
    };
    assert_eq!(readyz().0, 200, "not known-down before any failure");
    let mut mcp = Mcp::new(gw.addr, "/mcp");
    let init = json!({"protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}});
    for i in 1..=3 {
        let r = mcp.request("initialize", init.clone());
        assert!(r.text().contains("unavailable"), "{}", r.text());
        if i < 3 {
            assert_eq!(readyz().0, 200, "one failure short of unhealthy_after: {i}");
        }
    }
    let (status, body) = readyz();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("/mcp") && body.contains("\"gone\""),
        "names the endpoint and the upstream: {body}"
    );
    // Something listens on the port again: the probe clears the state.
    let _back = dead.listen();
    let (status, body) = readyz();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn get_opens_the_server_to_client_stream() {
    let (_demo, gw) = setup();
    let mcp = session(&gw);
    let sid = mcp.session.clone().unwrap();
    let (_stream, head) = open_get_stream(&gw, &sid);
    let text = head.to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("content-type: text/event-stream"));
    assert!(text.contains("x-accel-buffering: no"));
    // Without a session: 400.
    let r = gw
        .client()
        .request("GET", "/mcp", &[("Accept", "text/event-stream")], b"");
    assert_eq!(r.status, 400);
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let (_demo, mut gw) = setup();
    let mcp = session(&gw);
    let sid = mcp.session.clone().unwrap();
    let addr = gw.addr;
    let slow = std::thread::spawn(move || {
        let mut m = Mcp::new(addr, "/mcp");
        m.session = Some(sid);
        m.call_tool("slow", json!({"ms": 700}))
    });
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(gw.pid() as i32, libc::SIGTERM) };
    let r = slow.join().unwrap();
    assert_eq!(r["result"]["content"][0]["text"], "done after 700 ms");
    let status = gw.proc.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_port_in_use_fails_the_start_loudly() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("tollgate-port-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.yaml");
    std::fs::write(&cfg, format!("listen:\n  address: {addr}\nadmin: null\n")).unwrap();
    let out = std::process::Command::new(harness::BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use"), "{err}");
}

#[test]
fn a_bad_config_lists_every_problem() {
    let dir = std::env::temp_dir().join(format!("tollgate-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.yaml");
    std::fs::write(
        &cfg,
        "limits:\n  max_body_bytes: lots\n  idle_timeout: -1\nlisten:\n  adress: x\n",
    )
    .unwrap();
    let out = std::process::Command::new(harness::BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "limits.max_body_bytes",
        "limits.idle_timeout",
        "listen.adress",
    ] {
        assert!(err.contains(want), "{want} in {err}");
    }
}

#[test]
fn the_default_config_serves_its_builtin_demo() {
    // README's first command runs config/tollgate.yaml; here the same file with ephemeral ports.
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/tollgate.yaml"))
            .unwrap();
    assert!(text.contains("\"127.0.0.1:8080\"") && text.contains("\"127.0.0.1:9090\""));
    let text = text
        .replace("\"127.0.0.1:8080\"", "\"127.0.0.1:0\"")
        .replace("\"127.0.0.1:9090\"", "\"127.0.0.1:0\"");
    let dir = std::env::temp_dir().join(format!("tollgate-default-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cfg, ready) = (dir.join("tollgate.yaml"), dir.join("ready.json"));
    std::fs::write(&cfg, text).unwrap();
    let child = std::process::Command::new(harness::BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--ready-file")
        .arg(&ready)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _proc = harness::Proc {
        child,
        dir: dir.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let v: serde_json::Value = loop {
        if let Some(v) = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "default config did not become ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let addr = v["listen"].as_str().unwrap().parse().unwrap();
    let mut mcp = Mcp::new(addr, "/mcp");
    mcp.initialize("2025-11-25");
    let r = mcp.call_tool("echo", json!({"text": "demo"}));
    assert_eq!(r["result"]["content"][0]["text"], "demo");
}

/// Opens a GET event stream and returns it with the response head received so far.
fn open_get_stream(gw: &Gateway, sid: &str) -> (Http, String) {
    let mut h = gw.client();
    h.send_raw(
        format!(
            "GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nMcp-Session-Id: {sid}\r\n\
             MCP-Protocol-Version: 2025-06-18\r\n\r\n"
        )
        .as_bytes(),
    );
    let mut got = Vec::new();
    let mut tmp = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = std::io::Read::read(&mut h.stream, &mut tmp).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&tmp[..n]);
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (h, head)
}

fn open_connections(gw: &Gateway) -> f64 {
    let m = gw.metrics();
    m.lines()
        .find_map(|l| l.strip_prefix("tollgate_connections_open "))
        .map_or(-1.0, |v| v.trim().parse().unwrap())
}

#[test]
fn a_get_stream_ends_when_its_client_leaves_or_the_gateway_stops() {
    let (_demo, mut gw) = setup();
    let mcp = session(&gw);
    let sid = mcp.session.clone().unwrap();
    drop(mcp);
    let (stream, _) = open_get_stream(&gw, &sid);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_connections(&gw) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the relay did not notice its client left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // An open stream does not hold shutdown for the whole drain timeout (30 s by default).
    let other = session(&gw);
    let _held = open_get_stream(&gw, &other.session.clone().unwrap());
    let t0 = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(gw.pid() as i32, libc::SIGTERM) };
    let status = gw.proc.child.wait().unwrap();
    assert!(status.success());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        t0.elapsed()
    );
}

#[test]
fn an_upstream_slower_than_request_timeout_gets_a_timeout_error() {
    let demo = Demo::start(&[]);
    let gw = Gateway::builder()
        .yaml(&format!(
            "upstreams:\n  - name: slowpoke\n    url: \"{}\"\n    request_timeout: 300ms\nservers:\n  - path: /mcp\n    upstream: slowpoke\n",
            demo.url()
        ))
        .start();
    let mut mcp = session(&gw);
    let t0 = Instant::now();
    let r = mcp.call_tool("slow", json!({"ms": 5000}));
    let took = t0.elapsed();
    assert_eq!(r["error"]["code"], -31002, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("request_timeout"),
        "{r}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    // The session and connection stay usable.
    let r = mcp.call_tool("echo", json!({"text": "still here"}));
    assert_eq!(r["result"]["content"][0]["text"], "still here");
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let dir = std::env::temp_dir().join(format!("tollgate-jsonlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cfg, ready) = (dir.join("c.yaml"), dir.join("ready.json"));
    std::fs::write(
        &cfg,
        "listen:\n  address: 127.0.0.1:0\nadmin: null\nlog:\n  format: json\n",
    )
    .unwrap();
    let child = std::process::Command::new(harness::BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--ready-file")
        .arg(&ready)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 2, "{text}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
    assert!(text.contains("tollgate ready"));
}

/// A scripted upstream that answers every request (it keeps no sessions, so it never says 404)
/// and records the headers of each request it gets.
type SeenHeaders = std::sync::Arc<std::sync::Mutex<Vec<Vec<(String, String)>>>>;

fn recording_upstream() -> (harness::scripted::Scripted, SeenHeaders) {
    use harness::scripted;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let up = scripted::Scripted::start(move |mut s, _| {
        while let Some(req) = scripted::read_request(&mut s) {
            log.lock().unwrap().push(req.headers.clone());
            let reply = scripted::mcp_basics(&req).unwrap_or_else(|| {
                scripted::json_response(&scripted::text_result(&req.id(), "ok"))
            });
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    });
    (up, seen)
}

#[test]
fn the_clients_credentials_never_reach_the_upstream_but_its_own_do() {
    let (up, seen) = recording_upstream();
    let gw = Gateway::builder()
        .upstream_with(
            "rec",
            &up.url(),
            &[("headers", "{x-api-key: upstream-own-key}")],
        )
        .serve("/mcp", "rec")
        .start();
    let mcp = session(&gw);
    let sid = mcp.session.clone().unwrap();
    let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#;
    let mut headers = JSON_HEADERS.to_vec();
    headers.extend([
        ("Mcp-Session-Id", sid.as_str()),
        ("MCP-Protocol-Version", "2025-06-18"),
        ("Authorization", "Bearer client-secret-token"),
        ("Cookie", "sid=client-cookie"),
        ("Proxy-Authorization", "Basic Y2xpZW50"),
    ]);
    let r = gw.client().request("POST", "/mcp", &headers, body);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 2, "the upstream saw {} requests", seen.len());
    for h in seen.iter() {
        for (n, v) in h {
            let n = n.to_ascii_lowercase();
            assert!(
                !["authorization", "cookie", "proxy-authorization"].contains(&n.as_str())
                    && !v.contains("client-secret-token")
                    && !v.contains("client-cookie"),
                "a client credential reached the upstream: {n}: {v}"
            );
        }
        assert!(
            h.iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("x-api-key") && v == "upstream-own-key"),
            "the upstream's own header is missing: {h:?}"
        );
    }
}

#[test]
fn delete_is_enforced_by_every_worker_even_when_the_upstream_would_answer() {
    // The upstream here keeps no sessions and answers anything: only the gateway's own
    // revocation (a control message to every worker, awaited by each worker's control task on
    // either driver) can turn a deleted session away.
    for driver in [harness::Driver::IoUring, harness::Driver::Legacy] {
        let (up, _seen) = recording_upstream();
        let gw = Gateway::builder()
            .upstream("rec", &up.url())
            .serve("/mcp", "rec")
            .workers(2)
            .driver(driver)
            .start();
        let mut mcp = session(&gw);
        let sid = mcp.session.clone().unwrap();
        // Before DELETE, fresh connections (spread over both workers) are served.
        for _ in 0..6 {
            let mut other = Mcp::new(gw.addr, "/mcp");
            other.session = Some(sid.clone());
            assert_eq!(other.request("tools/list", json!({})).status, 200);
        }
        let d = mcp
            .http
            .request("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], b"");
        assert_eq!(d.status, 200);
        for _ in 0..12 {
            let mut other = Mcp::new(gw.addr, "/mcp");
            other.session = Some(sid.clone());
            let r = other.request("tools/list", json!({}));
            assert_eq!(
                r.status,
                404,
                "{driver:?}: a deleted session was served: {}",
                r.text()
            );
        }
    }
}

#[test]
fn sighup_does_not_stop_the_gateway_and_json_logs_hold_plain_values() {
    let mut gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .yaml("log:\n  format: json\n")
        .rust_log("info")
        .start();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(gw.pid() as i32, libc::SIGHUP) };
    let mut mcp = session(&gw);
    let r = mcp.call_tool("echo", json!({"text": "after SIGHUP"}));
    assert_eq!(r["result"]["content"][0]["text"], "after SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.log.text().contains("SIGHUP") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = gw.log.text();
    assert!(
        log.contains("config reloaded"),
        "SIGHUP reloads the config: {log}"
    );
    // Every line is JSON, and none carries Rust's debug spelling of an Option.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            !line.contains("Some("),
            "debug text in a JSON log line: {line}"
        );
        assert!(
            v.get("fields").is_some()
                || v.get("message").is_some()
                || v.get("target") == Some(&json!("access")),
            "{line}"
        );
    }
    let ready = log
        .lines()
        .find(|l| l.contains("tollgate ready"))
        .expect("a ready line");
    assert!(
        ready.contains("/mcp -> demo"),
        "the ready line names the endpoints: {ready}"
    );
    assert!(
        ready.contains("demo (builtin:demo)"),
        "and the upstreams: {ready}"
    );
    gw.sigterm();
    assert!(gw
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

#[test]
fn an_sse_initialize_reply_is_read_however_the_stream_is_written() {
    // A BOM, a comment, CR and CRLF line ends, a notification before the response, an `id`
    // field, and the response's id spelled `0E0` for the client's `0`: the gateway still finds
    // the response, seals the session, and gives the client its own id bytes back.
    use harness::scripted;
    let result = scripted::initialize_result().to_string();
    let up = scripted::Scripted::start(move |mut s, _| {
        while let Some(req) = scripted::read_request(&mut s) {
            let reply = if req.rpc_method() == "initialize" {
                let body = format!(
                    "\u{FEFF}: warming up\r\nevent: message\rdata: \
                     {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{}}}}\r\r\
                     id: 9\r\ndata: {{\"jsonrpc\":\"2.0\",\"id\":0E0,\"result\":{result}}}\r\n\r\n"
                );
                scripted::response(
                    "200 OK",
                    &[
                        ("Content-Type", "text/event-stream"),
                        ("Mcp-Session-Id", "up-sse"),
                    ],
                    body.as_bytes(),
                )
            } else {
                scripted::mcp_basics(&req).unwrap_or_else(|| {
                    scripted::json_response(&scripted::text_result(&req.id(), "ok"))
                })
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    });
    let gw = Gateway::builder()
        .upstream("sse", &up.url())
        .serve("/mcp", "sse")
        .start();
    let mut mcp = Mcp::new(gw.addr, "/mcp");
    let r = mcp.initialize("2025-06-18");
    assert!(mcp
        .session
        .as_deref()
        .is_some_and(|s| s.starts_with("tg2.")));
    let msgs = r.sse_messages();
    assert_eq!(msgs.len(), 2, "{}", r.text());
    assert_eq!(msgs[1]["result"]["protocolVersion"], "2025-06-18");
    assert!(r.text().contains("\"id\":0,"), "{}", r.text());
    assert_eq!(mcp.request("tools/list", json!({})).status, 200);
}

/// Sockets the gateway process holds in its io_uring rings' tables of registered files: the
/// `N: socket:[inode]` lines of each ring's `/proc/PID/fdinfo` (which lists them only when it
/// can take the ring's lock, hence the bounded retries of the callers).
fn registered_sockets(pid: u32) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let ring =
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("io_uring"));
        if !ring {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        n += info
            .lines()
            .filter(|l| {
                l.trim_start().split_once(": ").is_some_and(|(slot, f)| {
                    slot.parse::<u32>().is_ok() && f.starts_with("socket:")
                })
            })
            .count();
    }
    n
}

/// `runtime.fixed_files`: each connection's socket gets a slot in its worker ring's table of
/// registered files and is named by it in receives and sends. A closed connection's socket
/// leaves the table (which would otherwise keep it open) and frees its slot: connections one
/// after another never find the table full; one past the slots is served as before and counted.
/// (Kernels before 6.13 get no table: the gateway turns it off there.)
#[test]
fn registered_file_slots_are_freed_and_a_connection_past_them_is_served() {
    let demo = Demo::start(&[]);
    // One worker, two slots: the upstream connection the pool keeps holds one.
    let gw = Gateway::builder()
        .workers(1)
        .driver(harness::Driver::IoUring)
        .runtime("fixed_files", "2")
        .upstream("demo", &demo.url())
        .serve("/mcp", "demo")
        .start();
    let pid = gw.pid();
    let misses = |side: &str| {
        harness::metric_value(
            &gw.metrics(),
            &format!("tollgate_fixed_file_misses_total{{side=\"{side}\"}}"),
        )
    };
    let table_holds = |want: usize| {
        harness::eventually(Duration::from_secs(5), || registered_sockets(pid) == want)
    };
    if let (0, why) = tollgate::runtime::driver::fixed_files_for_kernel(2) {
        // No table here (a kernel before 6.13): sockets are served on plain descriptors, none
        // counted as a miss.
        let mut m = session(&gw);
        m.call_tool("echo", json!({"text": "x"}));
        assert_eq!(registered_sockets(pid), 0, "a table although {why:?}");
        assert_eq!(misses("client"), 0.0);
        return;
    }
    for i in 0..6 {
        let mut m = session(&gw);
        let r = m.call_tool("echo", json!({"text": format!("one-{i}")}));
        assert_eq!(r["result"]["content"][0]["text"], format!("one-{i}"));
        assert!(table_holds(2), "the client's and the upstream's sockets");
        drop(m);
        // Out of the table (and its slot free) before the next one connects.
        gw.await_metric("tollgate_connections_open", |v| v == 0.0);
        assert!(table_holds(1), "a closed client socket stayed in the table");
    }
    assert_eq!(
        misses("client"),
        0.0,
        "a closed connection's slot was not freed"
    );
    assert_eq!(misses("upstream"), 0.0);
    // Two at once: the second finds no slot, and is served all the same.
    let mut a = session(&gw);
    let mut b = session(&gw);
    for (m, t) in [(&mut a, "a"), (&mut b, "b")] {
        let r = m.call_tool("echo", json!({"text": t}));
        assert_eq!(r["result"]["content"][0]["text"], t);
    }
    assert_eq!(misses("client"), 1.0);
    assert!(table_holds(2));
    drop((a, b));
    gw.await_metric("tollgate_connections_open", |v| v == 0.0);
    assert!(table_holds(1));
}
