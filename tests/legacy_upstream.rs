//! Upstreams that speak only the 2024-11-05 HTTP+SSE transport (`transport: sse`), end to end:
//! the client speaks Streamable HTTP to the gateway, the gateway holds the upstream's event
//! stream on one worker and POSTs to the endpoint it announced. The upstream is
//! `harness::legacy_sse` (a real HTTP+SSE server: chunked stream, 202 for every POST).

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::legacy_sse::{Announce, LegacyServer};
use harness::{eventually, metric_value, session, Gateway, Mcp};
use serde_json::{json, Value};

fn gateway(up: &LegacyServer, workers: usize, keys: &[(&str, &str)]) -> Gateway {
    let mut k = vec![("transport", "sse")];
    k.extend_from_slice(keys);
    Gateway::builder()
        .workers(workers)
        .upstream_with("old", &up.url(), &k)
        .serve("/mcp", "old")
        .start()
}

/// A client on a fresh connection (so, with several workers, likely another worker) in `of`'s
/// session.
fn same_session(gw: &Gateway, of: &Mcp) -> Mcp {
    let mut m = Mcp::new(gw.addr, &of.path);
    m.session = of.session.clone();
    m.version = of.version.clone();
    m
}

fn text_of(v: &Value) -> String {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {v}"))
        .to_string()
}

fn failures(gw: &Gateway, step: &str) -> f64 {
    metric_value(
        &gw.metrics(),
        &format!("tollgate_legacy_upstream_failures_total{{step=\"{step}\"}}"),
    )
}

#[test]
fn initialize_list_call_and_progress_through_a_legacy_upstream() {
    let up = LegacyServer::start(Announce::Path);
    let gw = gateway(&up, 1, &[]);
    let mut m = Mcp::new(gw.addr, "/mcp");
    let init = m.initialize("2025-06-18");
    let v = init.json();
    assert_eq!(v["id"], 0, "the client's id comes back: {v}");
    assert_eq!(v["result"]["serverInfo"]["name"], "legacy-test");
    assert_eq!(v["result"]["protocolVersion"], "2024-11-05");
    assert!(m.session.as_deref().is_some_and(|s| s.starts_with("tg2.")));

    let list = m.request("tools/list", json!({})).json();
    assert_eq!(
        list["result"]["tools"].as_array().unwrap().len(),
        6,
        "{list}"
    );

    let r = m.post_raw(
        br#"{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#,
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["id"], "abc", "{v}");
    assert_eq!(text_of(&v), "hi");
    // The upstream saw the gateway's tag, never the client's id.
    let sent = up.received();
    let call = sent
        .iter()
        .find(|m| m["params"]["arguments"]["text"] == "hi")
        .expect("the call reached the upstream");
    assert!(
        call["id"].as_str().is_some_and(|s| s.starts_with("tgl.")),
        "{call}"
    );

    // Progress: notifications before the response turn the reply into an event stream, with
    // the client's own token.
    let r = m.post_raw(
        br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"progress","arguments":{},"_meta":{"progressToken":"p-7"}}}"#,
    );
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{:?}",
        r.headers
    );
    let msgs = r.sse_messages();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    for (i, n) in msgs[..2].iter().enumerate() {
        assert_eq!(n["method"], "notifications/progress");
        assert_eq!(n["params"]["progressToken"], "p-7");
        assert_eq!(n["params"]["progress"], i as u64 + 1);
    }
    assert_eq!(msgs[2]["id"], 7);
    assert_eq!(text_of(&msgs[2]), "done");
    let upstream_token = up
        .received()
        .iter()
        .find_map(|m| {
            m["params"]["_meta"]["progressToken"]
                .as_str()
                .map(String::from)
        })
        .unwrap();
    assert!(upstream_token.starts_with("tgl."), "{upstream_token}");
    assert_eq!(
        metric_value(&gw.metrics(), "tollgate_legacy_upstream_streams_open"),
        1.0
    );

    // Trace context goes upstream with the message.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = m.headers();
    headers.push(("traceparent", tp));
    let r = gw.client().request(
        "POST",
        "/mcp",
        &headers,
        br#"{"jsonrpc":"2.0","id":8,"method":"ping"}"#,
    );
    assert_eq!(r.json()["id"], 8);
    assert_eq!(
        up.traceparents().last().cloned().flatten().as_deref(),
        Some(tp)
    );
}

#[test]
fn a_relative_endpoint_is_resolved_against_the_sse_url() {
    let up = LegacyServer::start(Announce::Relative);
    let gw = gateway(&up, 1, &[]);
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.initialize("2025-03-26");
    assert_eq!(text_of(&m.call_tool("echo", json!({"text": "rel"}))), "rel");
}

#[test]
fn an_endpoint_on_another_origin_is_refused() {
    let up = LegacyServer::start(Announce::OtherOrigin);
    let gw = gateway(&up, 1, &[]);
    let mut h = gw.client();
    let body = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = h.request(
        "POST",
        "/mcp",
        &harness::JSON_HEADERS,
        body.to_string().as_bytes(),
    );
    assert!(r.header("mcp-session-id").is_none());
    let v = r.json();
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("another origin") && msg.contains("\"old\""),
        "{v}"
    );
    assert!(up.received().is_empty(), "nothing was POSTed anywhere");
    assert!(failures(&gw, "endpoint") >= 1.0);
}

#[test]
fn requests_on_other_workers_are_answered_through_the_holder() {
    let up = LegacyServer::start(Announce::Path);
    let gw = gateway(&up, 4, &[]);
    let sessions: Vec<Mcp> = (0..8).map(|_| session(&gw)).collect();
    for (i, s) in sessions.iter().enumerate() {
        for j in 0..6 {
            let mut m = same_session(&gw, s);
            let t = format!("s{i}c{j}");
            assert_eq!(text_of(&m.call_tool("echo", json!({"text": t}))), t);
        }
        // Progress notifications travel to the requesting worker too.
        let mut m = same_session(&gw, s);
        let r = m.post_raw(
            br#"{"jsonrpc":"2.0","id":"p","method":"tools/call","params":{"name":"progress","arguments":{},"_meta":{"progressToken":9}}}"#,
        );
        let msgs = r.sse_messages();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert_eq!(msgs[0]["params"]["progressToken"], 9);
        assert_eq!(msgs[2]["id"], "p");
    }
    let scrape = gw.metrics();
    assert_eq!(
        metric_value(&scrape, "tollgate_legacy_upstream_streams_open"),
        8.0
    );
    assert!(
        metric_value(&scrape, "tollgate_legacy_upstream_handoffs_total") > 0.0,
        "56 requests on fresh connections over 4 workers: some were not on the holder"
    );
    assert_eq!(up.open_streams(), 8);
}

#[test]
fn a_sampling_request_reaches_the_get_stream_and_its_answer_goes_back() {
    let up = LegacyServer::start(Announce::Path);
    let gw = gateway(&up, 2, &[]);
    let m = session(&gw);
    let session = m.session.clone().unwrap();
    // The client's GET stream.
    let mut get = TcpStream::connect(gw.addr).unwrap();
    get.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        get,
        "GET /mcp HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session}\r\nMCP-Protocol-Version: 2024-11-05\r\n\r\n",
        gw.addr
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = get.read(&mut b).unwrap();
        assert!(n > 0, "GET stream closed");
        head.extend_from_slice(&b[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut caller = same_session(&gw, &m);
    let call = std::thread::spawn(move || caller.call_tool("sample", json!({})));
    let mut got = head;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains("sampling/createMessage") {
        assert!(
            Instant::now() < deadline,
            "no sampling request on the GET stream"
        );
        let n = get.read(&mut b).unwrap();
        assert!(n > 0, "GET stream closed");
        got.extend_from_slice(&b[..n]);
    }
    assert!(
        String::from_utf8_lossy(&got).contains("\"s-1\""),
        "the upstream's id, unchanged"
    );
    let mut answer = same_session(&gw, &m);
    let r = answer.post_raw(
        br#"{"jsonrpc":"2.0","id":"s-1","result":{"role":"assistant","content":{"type":"text","text":"sampled!"},"model":"m"}}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let v = call.join().unwrap();
    assert_eq!(text_of(&v), "sampled!");
}

#[test]
fn a_closed_upstream_stream_ends_the_session() {
    let up = LegacyServer::start(Announce::Path);
    let gw = gateway(&up, 2, &[]);
    let mut m = session(&gw);
    assert_eq!(text_of(&m.call_tool("close", json!({}))), "closing");
    assert!(eventually(Duration::from_secs(10), || {
        metric_value(&gw.metrics(), "tollgate_legacy_upstream_streams_open") == 0.0
    }));
    // Every worker now answers 404 (initialize again), whichever holds nothing.
    for _ in 0..6 {
        let mut other = same_session(&gw, &m);
        let r = other.request("tools/call", json!({"name": "echo", "arguments": {}}));
        assert_eq!(r.status, 404, "{}", r.text());
        assert!(r.text().contains("initialize"), "{}", r.text());
    }
}

#[test]
fn delete_closes_the_upstream_stream() {
    let up = LegacyServer::start(Announce::Path);
    let gw = gateway(&up, 2, &[]);
    let mut m = session(&gw);
    assert_eq!(up.open_streams(), 1);
    let headers = m.headers();
    let r = gw.client().request("DELETE", "/mcp", &headers, b"");
    assert_eq!(r.status, 200);
    assert!(eventually(Duration::from_secs(10), || up.closed_streams() == 1));
    let r = m.request("ping", json!({}));
    assert_eq!(r.status, 404);
}

#[test]
fn responses_with_ids_the_gateway_never_sent_are_dropped() {
    let up = LegacyServer::start(Announce::Path);
    let gw = gateway(&up, 1, &[]);
    let mut m = session(&gw);
    let v = m.call_tool("spoof", json!({}));
    assert_eq!(text_of(&v), "real");
    // 12345 and a worker that does not exist: unroutable; a slot nobody holds: dropped.
    assert!(failures(&gw, "unroutable") >= 2.0);
    assert!(failures(&gw, "dropped") >= 1.0);
    assert_eq!(
        text_of(&m.call_tool("echo", json!({"text": "still"}))),
        "still"
    );
}

#[test]
fn an_unanswered_request_times_out_naming_the_upstream() {
    let up = LegacyServer::start(Announce::Path);
    let gw = gateway(&up, 1, &[("request_timeout", "300ms")]);
    let mut m = session(&gw);
    let r = m.request("tools/call", json!({"name": "hang", "arguments": {}}));
    let v = r.json();
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("\"old\"") && msg.contains("request_timeout"),
        "{v}"
    );
    assert!(failures(&gw, "timeout") >= 1.0);
    // The session goes on.
    assert_eq!(
        text_of(&m.call_tool("echo", json!({"text": "after"}))),
        "after"
    );
}

#[test]
fn the_stream_limit_refuses_new_sessions() {
    let up = LegacyServer::start(Announce::Path);
    let gw = Gateway::builder()
        .workers(1)
        .limit("max_legacy_streams", "1")
        .upstream_with("old", &up.url(), &[("transport", "sse")])
        .serve("/mcp", "old")
        .start();
    let _first = session(&gw);
    let body = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = gw.client().request(
        "POST",
        "/mcp",
        &harness::JSON_HEADERS,
        body.to_string().as_bytes(),
    );
    assert!(
        r.text().contains("limits.max_legacy_streams"),
        "{}",
        r.text()
    );
    assert!(r.header("mcp-session-id").is_none());
    assert_eq!(up.open_streams(), 1);
    assert!(failures(&gw, "limit") >= 1.0);
}

#[test]
fn a_refused_initialize_closes_the_stream_it_opened() {
    let up = LegacyServer::start(Announce::RefuseInitialize);
    let gw = gateway(&up, 1, &[]);
    let mut h = gw.client();
    let body = json!({"jsonrpc":"2.0","id":"i","method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = h.request(
        "POST",
        "/mcp",
        &harness::JSON_HEADERS,
        body.to_string().as_bytes(),
    );
    assert!(r.header("mcp-session-id").is_none());
    let v = r.json();
    assert_eq!(v["id"], "i");
    assert_eq!(
        v["error"]["message"], "not today",
        "the upstream's own error: {v}"
    );
    assert!(eventually(Duration::from_secs(10), || up.closed_streams() == 1));
    assert!(eventually(Duration::from_secs(10), || {
        metric_value(&gw.metrics(), "tollgate_legacy_upstream_streams_open") == 0.0
    }));
}

#[test]
fn a_request_in_flight_when_the_stream_closes_fails_at_once() {
    let up = LegacyServer::start(Announce::Path);
    // A request timeout far beyond the test's bound: the answer must come from the stream's end.
    let gw = gateway(&up, 2, &[("request_timeout", "10m")]);
    let mut m = session(&gw);
    let mut waiting = same_session(&gw, &m);
    let hung = std::thread::spawn(move || {
        waiting
            .request("tools/call", json!({"name": "hang", "arguments": {}}))
            .json()
    });
    // The hang call reached the upstream before the stream is closed.
    assert!(eventually(Duration::from_secs(10), || up
        .received()
        .iter()
        .any(|r| r["params"]["name"] == "hang")));
    assert_eq!(text_of(&m.call_tool("close", json!({}))), "closing");
    let v = hung.join().unwrap();
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("closed its event stream"), "{v}");
}

/// Upstreams that do not behave: an SSE URL that answers JSON, and a stream that never
/// announces its endpoint. Each initialize fails with an error naming the upstream, and the
/// gateway keeps no stream.
#[test]
fn a_stream_without_an_endpoint_is_refused() {
    use harness::scripted::{read_request, response, Scripted};
    let not_sse = Scripted::start(|mut s, _| {
        if read_request(&mut s).is_some() {
            let _ = s.write_all(&response(
                "200 OK",
                &[("Content-Type", "application/json")],
                b"{}",
            ));
        }
    });
    let silent = Scripted::start(|mut s, _| {
        if read_request(&mut s).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n9\r\n: hello\n\n\r\n");
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    for (up, expect) in [
        (&not_sse, "not an event stream"),
        (&silent, "announced no endpoint"),
    ] {
        let gw = Gateway::builder()
            .workers(1)
            .upstream_with(
                "odd",
                &format!("http://{}/sse", up.addr),
                &[("transport", "sse"), ("request_timeout", "300ms")],
            )
            .serve("/mcp", "odd")
            .start();
        let body = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
        let r = gw.client().request(
            "POST",
            "/mcp",
            &harness::JSON_HEADERS,
            body.to_string().as_bytes(),
        );
        assert!(r.header("mcp-session-id").is_none());
        let v = r.json();
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(expect) && msg.contains("\"odd\""), "{v}");
        assert_eq!(
            metric_value(&gw.metrics(), "tollgate_legacy_upstream_streams_open"),
            0.0
        );
    }
}

#[test]
fn a_second_get_stream_replaces_the_first() {
    let up = LegacyServer::start(Announce::Path);
    let gw = gateway(&up, 2, &[]);
    let m = session(&gw);
    let session = m.session.clone().unwrap();
    let open = || {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        write!(
            s,
            "GET /mcp HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session}\r\nMCP-Protocol-Version: 2024-11-05\r\n\r\n",
            gw.addr
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).unwrap();
            assert!(n > 0);
            head.extend_from_slice(&b[..n]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        s
    };
    let mut first = open();
    let _second = open();
    let closed = harness::read_until_closed(&mut first, Instant::now() + Duration::from_secs(10));
    assert!(
        closed.is_ok(),
        "the first GET stream ends once another takes its place"
    );
}

/// Reads an SSE stream (raw, chunked) until a `data:` line holds `needle`; returns that JSON.
fn read_event_with(s: &mut TcpStream, needle: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(line) = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .find(|l| l.contains(needle))
        {
            return serde_json::from_str(line).unwrap();
        }
        assert!(Instant::now() < deadline, "no event with {needle}: {text}");
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "stream closed: {text}");
        got.extend_from_slice(&b[..n]);
    }
}

#[test]
fn a_legacy_upstream_behind_a_federated_endpoint_beside_the_demo() {
    let up = LegacyServer::start(Announce::Path);
    let demo = harness::Demo::start(&[]);
    let gw = Gateway::builder()
        .workers(2)
        .upstream_with("old", &up.url(), &[("transport", "sse")])
        .upstream("demo", &demo.url())
        .yaml("servers:\n  - path: /fed/mcp\n    upstreams: [demo, old]\n")
        .start();
    let mut m = Mcp::new(gw.addr, "/fed/mcp");
    let init = m.initialize("2025-06-18").json();
    assert_eq!(init["result"]["serverInfo"]["name"], "tollgate", "{init}");
    assert_eq!(init["id"], 0);

    let list = m.request("tools/list", json!({})).json();
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"old__echo") && names.contains(&"demo__echo"),
        "{names:?}"
    );

    // Calls on fresh connections (either worker), the upstream's own name sent.
    for i in 0..6 {
        let mut other = same_session(&gw, &m);
        let t = format!("fed{i}");
        assert_eq!(
            text_of(&other.call_tool("old__echo", json!({"text": t}))),
            t
        );
        assert_eq!(
            text_of(&other.call_tool("demo__echo", json!({"text": t}))),
            t
        );
    }
    let call = up
        .received()
        .into_iter()
        .find(|r| r["params"]["arguments"]["text"] == "fed0")
        .unwrap();
    assert_eq!(call["params"]["name"], "echo");

    let r = m.post_raw(
        br#"{"jsonrpc":"2.0","id":"pr","method":"tools/call","params":{"name":"old__progress","arguments":{},"_meta":{"progressToken":"t"}}}"#,
    );
    let msgs = r.sse_messages();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert_eq!(msgs[0]["params"]["progressToken"], "t");
    assert_eq!(msgs[2]["id"], "pr");

    // Sampling: the request reaches the merged GET stream with an id the gateway wrapped; the
    // client's answer with that id goes back to the legacy upstream.
    let session = m.session.clone().unwrap();
    let mut get = TcpStream::connect(gw.addr).unwrap();
    get.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        get,
        "GET /fed/mcp HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session}\r\nMCP-Protocol-Version: 2024-11-05\r\n\r\n",
        gw.addr
    )
    .unwrap();
    let mut caller = same_session(&gw, &m);
    let call = std::thread::spawn(move || caller.call_tool("old__sample", json!({})));
    let req = read_event_with(&mut get, "sampling/createMessage");
    let wrapped = req["id"].as_str().unwrap().to_string();
    assert_ne!(
        wrapped, "s-1",
        "the upstream's id is wrapped on a federated endpoint"
    );
    let mut answer = same_session(&gw, &m);
    let body = json!({"jsonrpc":"2.0","id":wrapped,"result":{"role":"assistant","content":{"type":"text","text":"fed-sampled"},"model":"m"}});
    let r = answer.post_raw(body.to_string().as_bytes());
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(text_of(&call.join().unwrap()), "fed-sampled");
    assert_eq!(
        up.received().last().unwrap()["id"],
        "s-1",
        "the upstream gets its own id back"
    );

    // DELETE ends the legacy member's stream too.
    let headers = m.headers();
    assert_eq!(
        gw.client()
            .request("DELETE", "/fed/mcp", &headers, b"")
            .status,
        200
    );
    assert!(eventually(Duration::from_secs(10), || up.closed_streams() == 1));
}

#[test]
fn a_reload_that_removes_the_upstream_closes_its_streams() {
    let up = LegacyServer::start(Announce::Path);
    let demo = harness::Demo::start(&[]);
    let builder = || {
        Gateway::builder()
            .workers(2)
            .rust_log("info")
            .upstream("demo", &demo.url())
            .serve("/demo/mcp", "demo")
    };
    let gw = builder()
        .upstream_with("old", &up.url(), &[("transport", "sse")])
        .serve("/mcp", "old")
        .start();
    let mut m = session(&gw);
    assert_eq!(up.open_streams(), 1);
    gw.reload_with(&builder().config_text());
    assert!(eventually(Duration::from_secs(10), || up.closed_streams() == 1));
    assert!(eventually(Duration::from_secs(10), || gw
        .log
        .text()
        .contains("HTTP+SSE upstream streams closed")));
    let r = m.request("ping", json!({}));
    assert_eq!(r.status, 404, "{}", r.text());
}
