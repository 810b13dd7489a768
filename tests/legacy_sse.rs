//! The legacy HTTP+SSE transport (2024-11-05) offered to clients, end to end through the real
//! binary: `GET <path>/sse` announces `<path>/messages?sessionId=…`, every POSTed message is
//! answered 202 and its reply arrives on the stream, on a single-upstream endpoint and on a
//! federated one; server→client requests answered by a POST; a POST landing on another worker
//! than the stream's; forged and ended ids; the session ends with the stream.

mod harness;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::scripted::{self, read_request};
use harness::{eventually, metric_value, Demo, Driver, Gateway, Http, Response};
use serde_json::{json, Value};

/// A legacy client: the event stream it holds and the endpoint it was told to POST to.
struct Legacy {
    addr: SocketAddr,
    sse: BufReader<TcpStream>,
    endpoint: String,
    /// Messages read while waiting for another one.
    seen: Vec<Value>,
}

impl Legacy {
    fn open(addr: SocketAddr, path: &str) -> Legacy {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut sse = BufReader::new(s);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            assert!(sse.read_line(&mut line).unwrap() > 0, "closed in the head");
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_ascii_lowercase());
        }
        assert!(head[0].starts_with("http/1.1 200"), "{head:?}");
        assert!(head.iter().any(|h| h == "content-type: text/event-stream"));
        assert!(head.iter().any(|h| h == "x-accel-buffering: no"));
        let mut l = Legacy {
            addr,
            sse,
            endpoint: String::new(),
            seen: Vec::new(),
        };
        let (event, data) = l.next_event().expect("the endpoint event");
        assert_eq!(event, "endpoint");
        l.endpoint = data;
        l
    }

    /// The next event (type, data); comments (keep-alives) are skipped. `None`: stream closed.
    fn next_event(&mut self) -> Option<(String, String)> {
        let (mut event, mut data) = (String::new(), Vec::new());
        loop {
            let mut line = String::new();
            if self.sse.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    return Some((event, data.join("\n")));
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
    }

    fn next_message(&mut self) -> Value {
        let (event, data) = self.next_event().expect("stream open");
        assert_eq!(event, "message");
        serde_json::from_str(&data).unwrap()
    }

    /// POSTs `msg` to the announced endpoint on a new connection.
    fn post(&self, msg: &Value) -> Response {
        post_to(self.addr, &self.endpoint, msg)
    }

    /// POSTs a request and reads the stream until its response; what came first stays in `seen`.
    fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        let r = self.post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        assert_eq!((r.status, r.text().as_str()), (202, "Accepted"));
        self.until_id(&json!(id))
    }

    fn until_id(&mut self, id: &Value) -> Value {
        loop {
            let m = self.next_message();
            if m.get("method").is_none() && &m["id"] == id {
                return m;
            }
            self.seen.push(m);
        }
    }

    fn initialize(&mut self) -> Value {
        let init = self.request(
            0,
            "initialize",
            json!({"protocolVersion": "2024-11-05", "capabilities": {"sampling": {}},
                   "clientInfo": {"name": "legacy-test", "version": "1"}}),
        );
        let r = self.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        assert_eq!(r.status, 202);
        init
    }
}

fn post_to(addr: SocketAddr, endpoint: &str, msg: &Value) -> Response {
    Http::connect(addr).request(
        "POST",
        endpoint,
        &[("content-type", "application/json")],
        msg.to_string().as_bytes(),
    )
}

fn tool_text(r: &Value) -> String {
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_single_upstream_endpoint_speaks_legacy_sse() {
    single_upstream_on(Driver::IoUring);
}

#[test]
fn a_single_upstream_endpoint_speaks_legacy_sse_on_the_legacy_driver() {
    single_upstream_on(Driver::Legacy);
}

fn single_upstream_on(driver: Driver) {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .driver(driver)
        .start();
    let mut l = Legacy::open(gw.addr, "/mcp/sse");
    assert!(
        l.endpoint.starts_with("/mcp/messages?sessionId=tl1."),
        "{}",
        l.endpoint
    );
    let init = l.initialize();
    assert_eq!(init["result"]["protocolVersion"], "2024-11-05");
    let tools = l.request(1, "tools/list", json!({}));
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"echo"), "{names:?}");
    let echo = l.request(
        2,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "hi"}}),
    );
    assert_eq!(tool_text(&echo), "hi");
    // Notifications of a request's reply stream come before its response, as events.
    let done = l.request(
        3,
        "tools/call",
        json!({"name": "progress", "arguments": {"steps": 3}, "_meta": {"progressToken": "p"}}),
    );
    assert!(tool_text(&done).contains("3 steps"), "{done}");
    let progress: Vec<&Value> = l
        .seen
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{:?}", l.seen);
    assert_eq!(progress[2]["params"]["progressToken"], "p");
    // Errors of the request path arrive like any reply.
    let unknown = l.request(4, "tools/call", json!({"name": "nope", "arguments": {}}));
    assert!(
        unknown.get("error").is_some() || unknown["result"]["isError"] == true,
        "{unknown}"
    );
    // The Streamable HTTP endpoint is unchanged beside it.
    let mut m = harness::Mcp::new(gw.addr, "/mcp");
    assert_eq!(m.initialize("2025-06-18").status, 200);
}

#[test]
fn forged_and_ended_stream_ids_are_404_with_a_json_rpc_error() {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .start();
    let mut l = Legacy::open(gw.addr, "/mcp/sse");
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    // One character changed anywhere: not a stream.
    let (base, id) = l.endpoint.split_once("sessionId=").unwrap();
    let mut forged = id.as_bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = format!("{base}sessionId={}", String::from_utf8(forged).unwrap());
    for target in [
        forged.as_str(),
        "/mcp/messages",
        "/mcp/messages?sessionId=x",
    ] {
        let r = post_to(gw.addr, target, &ping);
        assert_eq!(r.status, 404, "{target}");
        assert_eq!(r.json()["error"]["code"], -32600, "{target}");
    }
    // Bad JSON is 400 to the POST and never reaches the stream.
    let r = Http::connect(gw.addr).request(
        "POST",
        &l.endpoint,
        &[("content-type", "application/json")],
        b"{not json",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32700);
    l.initialize();
    // The stream ends: its id names nothing any more, and the gateway session ended with it.
    let endpoint = l.endpoint.clone();
    drop(l);
    assert!(eventually(Duration::from_secs(10), || {
        post_to(gw.addr, &endpoint, &ping).status == 404
    }));
    assert!(eventually(Duration::from_secs(10), || {
        let m = gw.metrics();
        metric_value(&m, "tollgate_sessions_closed_total") == 1.0
            && metric_value(&m, "tollgate_legacy_sse_streams_open") == 0.0
            && m.contains("tollgate_legacy_sse_streams_ended_total{reason=\"client_closed\"} 1")
    }));
    // Each 404 above is counted by its record phase, after it was written; the series is
    // there at zero from the start, so its value is what tells.
    gw.await_metric(
        "tollgate_rejections_total{reason=\"legacy_stream_unknown\"}",
        |n| n >= 1.0,
    );
    // Wrong methods on the legacy paths.
    let r = gw.client().request("GET", "/mcp/messages", &[], b"");
    assert_eq!(r.status, 405);
    let r = gw.client().request(
        "POST",
        "/mcp/sse",
        &[("content-type", "application/json")],
        b"{}",
    );
    assert_eq!(r.status, 405);
}

#[test]
fn a_federated_endpoint_speaks_legacy_sse() {
    let alpha = Demo::start(&[]);
    let gw = Gateway::builder()
        .upstream("alpha", &alpha.url())
        .upstream_with("local", "builtin:demo", &[("prefix", "\"\"")])
        .yaml("servers:\n  - path: /fed/mcp\n    upstreams: [alpha, local]\n")
        .start();
    let mut l = Legacy::open(gw.addr, "/fed/mcp/sse");
    assert!(l.endpoint.starts_with("/fed/mcp/messages?sessionId="));
    let init = l.initialize();
    assert_eq!(init["result"]["serverInfo"]["name"], "tollgate");
    let tools = l.request(1, "tools/list", json!({}));
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"alpha__echo") && names.contains(&"echo"),
        "{names:?}"
    );
    let a = l.request(
        2,
        "tools/call",
        json!({"name": "alpha__echo", "arguments": {"text": "a"}}),
    );
    assert_eq!(tool_text(&a), "a");
    let b = l.request(
        3,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "b"}}),
    );
    assert_eq!(tool_text(&b), "b");
    let r = l.request(4, "resources/read", json!({"uri": "demo://readme"}));
    assert!(r["result"]["contents"].is_array(), "{r}");
}

/// An upstream whose `ask` tool sends a sampling request on its reply stream and finishes with
/// the text of the client's answer (which arrives as a POST on another connection).
fn sampling_upstream() -> scripted::Scripted {
    let (tx, rx) = mpsc::channel::<Value>();
    let tx = Arc::new(Mutex::new(tx));
    let rx = Arc::new(Mutex::new(rx));
    scripted::Scripted::start(move |mut s, _| {
        while let Some(req) = read_request(&mut s) {
            let v = req.json();
            if v.get("method").is_none() && v.get("id").is_some() {
                // The client's answer to the sampling request.
                let _ = tx.lock().unwrap().send(v);
                let _ = s.write_all(&scripted::response("202 Accepted", &[], b""));
                continue;
            }
            if req.method == "GET" {
                let _ = s.write_all(&scripted::response("405 Method Not Allowed", &[], b""));
                continue;
            }
            if let Some(basic) = scripted::mcp_basics(&req) {
                let _ = s.write_all(&basic);
                continue;
            }
            if req.rpc_method() == "tools/list" {
                let tools = json!({"tools": [{"name": "ask", "inputSchema": {"type": "object"}}]});
                let _ = s.write_all(&scripted::json_response(&scripted::rpc_result(
                    &req.id(),
                    tools,
                )));
                continue;
            }
            // tools/call ask: an event stream with the sampling request, then the result.
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            let ask = json!({"jsonrpc": "2.0", "id": "s1", "method": "sampling/createMessage",
                             "params": {"messages": [], "maxTokens": 5}});
            let chunk = |s: &mut TcpStream, data: &str| {
                let ev = format!("event: message\ndata: {data}\n\n");
                let _ = write!(s, "{:x}\r\n{ev}\r\n", ev.len());
            };
            chunk(&mut s, &ask.to_string());
            let answer = rx
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or(Value::Null);
            let said = format!(
                "{}|{}",
                answer["id"],
                answer["result"]["content"]["text"]
                    .as_str()
                    .unwrap_or("none")
            );
            chunk(&mut s, &scripted::text_result(&req.id(), &said));
            let _ = s.write_all(b"0\r\n\r\n");
        }
    })
}

#[test]
fn a_server_to_client_request_is_answered_by_a_post_on_both_kinds_of_endpoint() {
    let up = sampling_upstream();
    let gw = Gateway::builder()
        .upstream("s", &up.url())
        .upstream("demo", "builtin:demo")
        .yaml(
            "servers:\n  - path: /mcp\n    upstream: s\n  - path: /fed/mcp\n    upstreams: [s, demo]\n",
        )
        .start();
    for (path, tool) in [("/mcp/sse", "ask"), ("/fed/mcp/sse", "s__ask")] {
        let mut l = Legacy::open(gw.addr, path);
        l.initialize();
        let post = l.post(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                  "params": {"name": tool, "arguments": {}}}));
        assert_eq!(post.status, 202);
        let ask = l.next_message();
        assert_eq!(ask["method"], "sampling/createMessage", "{path}: {ask}");
        let r = l.post(&json!({"jsonrpc": "2.0", "id": ask["id"],
                               "result": {"role": "assistant", "model": "m",
                                          "content": {"type": "text", "text": "answered"}}}));
        assert_eq!(r.status, 202, "{path}");
        let done = l.until_id(&json!(7));
        // The upstream got the answer under its own id ("s1"), whatever the client saw.
        assert_eq!(tool_text(&done), "\"s1\"|answered", "{path}: {done}");
    }
}

#[test]
fn posts_reach_a_stream_held_by_another_worker() {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .workers(4)
        .start();
    let mut l = Legacy::open(gw.addr, "/mcp/sse");
    l.initialize();
    // Each POST is a new connection, spread over the 4 workers by the kernel: keep going until
    // some were handed over (3 in 4 are, on average), and every one must be answered.
    let mut id = 1;
    let handed = |gw: &Gateway| {
        gw.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_legacy_sse_handovers_total{result=\"queued\"} "))
            .map_or(0.0, |v| v.trim().parse().unwrap_or(0.0))
    };
    while handed(&gw) < 3.0 {
        assert!(id < 200, "no POST was ever handed to another worker");
        let r = l.request(
            id,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": format!("n{id}")}}),
        );
        assert_eq!(tool_text(&r), format!("n{id}"));
        id += 1;
    }
}

#[test]
fn the_stream_limit_refuses_with_503_and_names_the_key() {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .workers(1)
        .limit("legacy_sse_streams_per_worker", "1")
        .start();
    let _l = Legacy::open(gw.addr, "/mcp/sse");
    let r = gw
        .client()
        .request("GET", "/mcp/sse", &[("accept", "text/event-stream")], b"");
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert!(
        r.text().contains("limits.legacy_sse_streams_per_worker"),
        "{}",
        r.text()
    );
    // The record phase runs after the answer is written: the count follows it.
    assert!(eventually(Duration::from_secs(10), || {
        gw.metrics()
            .contains("tollgate_limit_rejections_total{limit=\"legacy_sse_streams_per_worker\"} 1")
    }));
}

#[test]
fn legacy_sse_false_leaves_the_paths_unserved() {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .yaml("servers:\n  - path: /mcp\n    upstream: demo\n    legacy_sse: false\n")
        .start();
    let r = gw.client().request("GET", "/mcp/sse", &[], b"");
    assert_eq!(r.status, 404);
}

#[test]
fn a_client_that_stops_reading_loses_its_stream_and_memory_stays_bounded() {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .limit("legacy_sse_queued_messages", "2")
        .start();
    let mut l = Legacy::open(gw.addr, "/mcp/sse");
    l.initialize();
    // From here the client reads nothing: 1 MiB results fill the socket buffers, then the
    // stream's queue (2), then the stream ends. Each POST is still answered at once.
    let mut posted = 0;
    let ended = |gw: &Gateway| {
        gw.metrics()
            .contains("tollgate_legacy_sse_streams_ended_total{reason=\"slow_reader\"} 1")
    };
    while !ended(&gw) {
        assert!(posted < 64, "64 MiB unread and the stream is still open");
        let r = l.post(
            &json!({"jsonrpc": "2.0", "id": 100 + posted, "method": "tools/call",
                               "params": {"name": "large", "arguments": {"bytes": 1 << 20}}}),
        );
        if r.status == 404 {
            break; // it ended between the check and this POST
        }
        assert_eq!(r.status, 202);
        posted += 1;
    }
    assert!(eventually(Duration::from_secs(10), || ended(&gw)));
    assert!(eventually(Duration::from_secs(10), || {
        let m = gw.metrics();
        metric_value(&m, "tollgate_legacy_sse_streams_open") == 0.0
            && metric_value(&m, "tollgate_sessions_closed_total") == 1.0
    }));
}

#[test]
fn a_second_initialize_on_one_stream_ends_the_session_it_replaces() {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .start();
    let mut l = Legacy::open(gw.addr, "/mcp/sse");
    l.initialize();
    l.initialize();
    assert!(eventually(Duration::from_secs(10), || {
        metric_value(&gw.metrics(), "tollgate_sessions_closed_total") == 1.0
    }));
    // The stream goes on with the new session.
    let echo = l.request(
        9,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "again"}}),
    );
    assert_eq!(tool_text(&echo), "again");
}

/// Messages a legacy client POSTs run through the request path on the gateway's own loopback
/// connections, but are judged as that client: here it comes from ::1 (the internal pair is
/// 127.0.0.1), and a rule allows `echo` from ::1 only.
#[test]
fn rules_judge_a_legacy_clients_messages_by_the_clients_own_address() {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .yaml(concat!(
            "listen:\n  address: \"[::1]:0\"\n",
            "servers:\n",
            "  - path: /mcp\n",
            "    upstream: demo\n",
            "    rules:\n",
            "      - {name: v6-only, effect: allow, tools: [echo], sources: [\"::1/128\"]}\n",
        ))
        .start();
    let mut l = Legacy::open(gw.addr, "/mcp/sse");
    l.initialize();
    let r = l.request(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "v6"}}),
    );
    assert_eq!(tool_text(&r), "v6", "{r}");
    assert!(r["result"].get("isError").is_none_or(|e| e == false), "{r}");
}
