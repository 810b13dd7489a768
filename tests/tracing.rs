//! W3C trace context and OTLP span export (`tracing`): the caller's trace reaches the upstream
//! with the gateway's span as its parent (header, and `params._meta` replaced in place), an
//! invalid `traceparent` starts a new trace rather than refusing the request, and a collector
//! the test runs receives the spans.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::scripted::{self, read_request, Request, Scripted};
use harness::{eventually, metric_value, session, Gateway, Mcp, Refused};
use serde_json::{json, Value};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// A scripted MCP upstream that keeps every request it receives and answers tool calls.
fn recording_upstream() -> (Scripted, Arc<Mutex<Vec<Request>>>) {
    let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
    let keep = seen.clone();
    let up = Scripted::start(move |mut s, _| {
        while let Some(req) = read_request(&mut s) {
            keep.lock().unwrap().push(req.clone());
            let out = scripted::mcp_basics(&req).unwrap_or_else(|| {
                let result = match req.rpc_method().as_str() {
                    "tools/list" => scripted::rpc_result(
                        &req.id(),
                        json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}),
                    ),
                    _ => scripted::text_result(&req.id(), "ok"),
                };
                scripted::json_response(&result)
            });
            if s.write_all(&out).is_err() {
                return;
            }
        }
    });
    (up, seen)
}

/// An OTLP/HTTP collector: keeps each POSTed body (as JSON) and answers 200.
struct Collector {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    fn start() -> Collector {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let keep = bodies.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                if let Some(req) = read_request(&mut s) {
                    assert_eq!(req.method, "POST");
                    assert_eq!(req.target, "/v1/traces");
                    assert_eq!(req.header("content-type"), Some("application/json"));
                    assert_eq!(req.header("x-collector-key"), Some("k1"));
                    keep.lock().unwrap().push(req.json());
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                    );
                    let _ = s.read(&mut [0u8; 1]);
                }
            }
        });
        Collector { addr, bodies }
    }

    /// A `tracing:` section exporting to this collector with the key it checks, and `otlp`
    /// (more `tracing.otlp` keys, indented by four spaces).
    fn config(&self, otlp: &str) -> String {
        format!(
            "tracing:\n  enabled: true\n  otlp:\n    endpoint: http://{}/v1/traces\n{otlp}    \
             headers:\n      x-collector-key: k1\n",
            self.addr
        )
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for b in self.bodies.lock().unwrap().iter() {
            for rs in b["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
                }
            }
        }
        out
    }
}

fn gateway(up: &Scripted, tracing: &str) -> Gateway {
    Gateway::builder()
        .upstream("up", &up.url())
        .serve("/mcp", "up")
        .yaml(tracing)
        .start()
}

const ON: &str = "tracing:\n  enabled: true\n";

/// The last tools/call the upstream received.
fn last_call(seen: &Arc<Mutex<Vec<Request>>>) -> Request {
    seen.lock()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r.rpc_method() == "tools/call")
        .cloned()
        .expect("the upstream received a tools/call")
}

/// `00-<trace>-<span>-<flags>` split into its parts.
fn parts(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    assert_eq!(p[0], "00", "{tp}");
    (p[1].into(), p[2].into(), p[3].into())
}

#[test]
fn a_client_traceparent_header_reaches_the_upstream_with_the_gateways_span_as_parent() {
    let (up, seen) = recording_upstream();
    let gw = gateway(&up, &format!("{ON}log:\n  access: all\n"));
    let mut c = session(&gw);
    c.header("traceparent", &traceparent(TRACE, CALLER_SPAN));
    c.header("tracestate", "vendor=abc");
    c.header("baggage", "user=1");
    c.call_tool("echo", json!({"text": "hi"}));
    let call = last_call(&seen);
    let (trace, parent, flags) = parts(call.header("traceparent").unwrap());
    assert_eq!(trace, TRACE);
    assert_ne!(parent, CALLER_SPAN, "the gateway's own span is the parent");
    assert_ne!(parent, "0000000000000000");
    assert_eq!(flags, "01");
    assert_eq!(call.header("tracestate"), Some("vendor=abc"));
    assert_eq!(call.header("baggage"), Some("user=1"));
    let n = call
        .headers
        .iter()
        .filter(|(n, _)| n == "traceparent")
        .count();
    assert_eq!(n, 1, "one traceparent upstream: {:?}", call.headers);
    // The access line names the trace.
    let logged = eventually(Duration::from_secs(5), || {
        gw.log
            .text()
            .lines()
            .any(|l| l.contains(" access: ") && l.contains("tools/call") && l.contains(TRACE))
    });
    assert!(
        logged,
        "no access line with the trace id:\n{}",
        gw.log.text()
    );
}

#[test]
fn a_meta_traceparent_is_replaced_in_place_in_the_forwarded_body() {
    let (up, seen) = recording_upstream();
    let gw = gateway(&up, ON);
    let mut c = session(&gw);
    let tp = traceparent(TRACE, CALLER_SPAN);
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"x"}},"_meta":{{"traceparent":"{tp}","tracestate":"a=b"}}}}}}"#
    );
    let r = c.post_raw(body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let call = last_call(&seen);
    assert_eq!(call.body.len(), body.len(), "a same-length splice");
    let sent = call.json();
    let meta_tp = sent["params"]["_meta"]["traceparent"].as_str().unwrap();
    let (trace, parent, _) = parts(meta_tp);
    assert_eq!(trace, TRACE);
    assert_ne!(parent, CALLER_SPAN);
    assert_eq!(sent["params"]["_meta"]["tracestate"], "a=b");
    assert_eq!(sent["params"]["arguments"]["text"], "x");
    // The header says the same: one span of the gateway, the parent of the upstream's work.
    assert_eq!(call.header("traceparent"), Some(meta_tp));
    // Everything else is the client's bytes.
    let expect = body.replace(&tp, meta_tp);
    assert_eq!(String::from_utf8_lossy(&call.body), expect);
}

#[test]
fn an_invalid_traceparent_starts_a_new_trace_and_is_not_refused() {
    let (up, seen) = recording_upstream();
    let gw = gateway(&up, ON);
    let mut c = session(&gw);
    for bad in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_string(),
        format!("00-{}-{CALLER_SPAN}-01", TRACE.to_uppercase()),
        "not a traceparent".to_string(),
    ] {
        c.header("traceparent", &bad);
        c.header("tracestate", "vendor=abc");
        let r = c.call_tool("echo", json!({"text": "hi"}));
        assert_eq!(r["result"]["content"][0]["text"], "ok");
        let call = last_call(&seen);
        let (trace, _, _) = parts(call.header("traceparent").unwrap());
        assert_ne!(trace, "00000000000000000000000000000000");
        assert_ne!(trace, TRACE.to_uppercase());
        assert_eq!(trace.len(), 32);
        assert_eq!(
            call.header("tracestate"),
            None,
            "a tracestate does not outlive its traceparent"
        );
    }
}

#[test]
fn tracing_off_passes_the_client_trace_headers_and_body_through_untouched() {
    let (up, seen) = recording_upstream();
    let gw = gateway(&up, "");
    let mut c = session(&gw);
    let tp = traceparent(TRACE, CALLER_SPAN);
    c.header("traceparent", &tp);
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"echo","_meta":{{"traceparent":"{tp}"}}}}}}"#
    );
    assert_eq!(c.post_raw(body.as_bytes()).status, 200);
    let call = last_call(&seen);
    assert_eq!(call.header("traceparent"), Some(tp.as_str()));
    assert_eq!(call.body, body.as_bytes());
}

#[test]
fn a_collector_receives_the_spans_with_their_trace_parent_name_and_attributes() {
    let (up, seen) = recording_upstream();
    let collector = Collector::start();
    let gw = gateway(
        &up,
        &collector.config("    flush_interval: 50ms\n    service_name: gw-under-test\n"),
    );
    let mut c = session(&gw);
    c.header("traceparent", &traceparent(TRACE, CALLER_SPAN));
    c.call_tool("echo", json!({"text": "hi"}));
    let upstream_parent = parts(last_call(&seen).header("traceparent").unwrap()).1;
    // A call the gateway refuses (a session it never issued): a span too, with the refusal.
    let mut stranger = Mcp::new(gw.addr, "/mcp");
    stranger.session = Some("not-a-session".into());
    stranger.header("traceparent", &traceparent(TRACE, CALLER_SPAN));
    let r = stranger.request("tools/call", json!({"name": "echo", "arguments": {}}));
    assert_eq!(r.status, 404, "{}", r.text());

    let mut spans = Vec::new();
    let found = eventually(Duration::from_secs(10), || {
        spans = collector.spans();
        spans.iter().filter(|s| s["traceId"] == TRACE).count() >= 2
    });
    assert!(found, "spans received: {spans:#?}");
    // Both calls are `tools/call echo` of the same trace; their spans come in no set order
    // (each worker exports its own): the relayed one is the one the upstream was told of.
    let call = spans
        .iter()
        .find(|s| s["name"] == "tools/call echo" && s["spanId"] == upstream_parent.as_str())
        .unwrap_or_else(|| {
            panic!("no tools/call echo span with the id the upstream got ({upstream_parent}) in {spans:#?}")
        });
    assert_eq!(call["traceId"], TRACE);
    assert_eq!(call["parentSpanId"], CALLER_SPAN);
    assert_eq!(
        call["spanId"],
        upstream_parent.as_str(),
        "the span the upstream was told of"
    );
    assert_eq!(call["kind"], 2);
    let attr = |s: &Value, k: &str| -> Value {
        s["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == k)
            .map_or(Value::Null, |a| a["value"].clone())
    };
    assert_eq!(attr(call, "mcp.method.name")["stringValue"], "tools/call");
    assert_eq!(attr(call, "gen_ai.tool.name")["stringValue"], "echo");
    assert_eq!(attr(call, "tollgate.server")["stringValue"], "/mcp");
    assert_eq!(attr(call, "tollgate.upstream")["stringValue"], "up");
    assert_eq!(attr(call, "http.response.status_code")["intValue"], "200");
    assert_eq!(attr(call, "tollgate.outcome")["stringValue"], "ok");
    assert!(attr(call, "jsonrpc.request.id")["stringValue"].is_string());
    let start: u64 = call["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = call["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0 && start <= end);

    let refused = spans
        .iter()
        .find(|s| s["traceId"] == TRACE && s["spanId"] != call["spanId"])
        .unwrap_or_else(|| panic!("no span of the refused call in {spans:#?}"));
    assert_eq!(refused["name"], "tools/call echo");
    assert_eq!(
        attr(refused, "error.type")["stringValue"],
        "session_unknown"
    );
    assert_eq!(
        attr(refused, "http.response.status_code")["intValue"],
        "404"
    );
    assert!(attr(refused, "rpc.jsonrpc.error_code")["intValue"].is_string());
    assert_eq!(attr(refused, "tollgate.outcome")["stringValue"], "rejected");

    let body = collector.bodies.lock().unwrap()[0].clone();
    let resource = &body["resourceSpans"][0]["resource"]["attributes"];
    assert!(
        resource
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["key"] == "service.name" && a["value"]["stringValue"] == "gw-under-test"),
        "{resource}"
    );
    let mut exported = 0.0;
    eventually(Duration::from_secs(5), || {
        exported = metric_value(&gw.metrics(), "tollgate_trace_spans_exported_total");
        exported >= 2.0
    });
    assert!(exported >= 2.0, "exported: {exported}");
}

#[test]
fn an_unreachable_collector_is_counted_and_requests_are_served() {
    let (up, _seen) = recording_upstream();
    let refused = Refused::new();
    let port = refused.addr().port();
    let cfg = format!(
        "tracing:\n  enabled: true\n  otlp:\n    endpoint: http://127.0.0.1:{port}/v1/traces\n    flush_interval: 20ms\n    timeout: 500ms\n"
    );
    let gw = gateway(&up, &cfg);
    let mut c = session(&gw);
    let r = c.call_tool("echo", json!({"text": "hi"}));
    assert_eq!(r["result"]["content"][0]["text"], "ok");
    // The exporter counts the error, then the spans it dropped: wait for both (bounded).
    let mut m = String::new();
    let counted = eventually(Duration::from_secs(10), || {
        m = gw.metrics();
        metric_value(&m, "tollgate_trace_export_errors_total") >= 1.0
            && metric_value(
                &m,
                "tollgate_trace_spans_dropped_total{reason=\"export_failed\"}",
            ) >= 1.0
    });
    assert!(counted, "{m}");
}

#[test]
fn a_meta_traceparent_of_another_trace_than_the_header_wins() {
    let (up, seen) = recording_upstream();
    let gw = gateway(&up, ON);
    let mut c = session(&gw);
    // An HTTP instrumentation that lost the MCP context: a trace of one POST in the header.
    c.header(
        "traceparent",
        &traceparent("11111111111111111111111111111111", "2222222222222222"),
    );
    c.header("tracestate", "http=1");
    let tp = traceparent(TRACE, CALLER_SPAN);
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"echo","_meta":{{"traceparent":"{tp}"}}}}}}"#
    );
    assert_eq!(c.post_raw(body.as_bytes()).status, 200);
    let call = last_call(&seen);
    let (trace, parent, _) = parts(call.header("traceparent").unwrap());
    assert_eq!(trace, TRACE, "the MCP-level trace (SEP-414)");
    assert_eq!(
        call.json()["params"]["_meta"]["traceparent"],
        traceparent(TRACE, &parent).as_str()
    );
    assert_eq!(
        call.header("tracestate"),
        None,
        "the header's tracestate is of the other trace"
    );
}

#[test]
fn a_stateless_call_through_a_held_session_carries_the_gateways_span_too() {
    let (up, seen) = recording_upstream();
    let gw = Gateway::builder()
        .workers(1)
        .upstream_with("up", &up.url(), &[("era", "session")])
        .serve("/mcp", "up")
        .yaml(ON)
        .start();
    let tp = traceparent(TRACE, CALLER_SPAN);
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"echo","arguments":{{}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}},"traceparent":"{tp}"}}}}}}"#
    );
    let r = gw.client().request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let call = last_call(&seen);
    let (trace, parent, _) = parts(call.header("traceparent").unwrap());
    assert_eq!(trace, TRACE);
    assert_ne!(parent, CALLER_SPAN);
    assert_eq!(
        call.json()["params"]["_meta"]["traceparent"],
        traceparent(TRACE, &parent).as_str()
    );
}

#[test]
fn a_federated_call_gets_the_gateways_span_in_meta_after_its_name_is_replaced() {
    let (a, seen_a) = recording_upstream();
    let (b, _seen_b) = recording_upstream();
    let gw = Gateway::builder()
        .upstream("a", &a.url())
        .upstream("b", &b.url())
        .yaml(&format!(
            "servers:\n  - path: /mcp\n    upstreams: [a, b]\n{ON}"
        ))
        .start();
    let mut c = session(&gw);
    assert_eq!(c.request("tools/list", json!({})).status, 200);
    let tp = traceparent(TRACE, CALLER_SPAN);
    for _ in 0..2 {
        // The name (`a__echo`) is longer than the upstream's (`echo`): what follows it moves.
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{{"name":"a__echo","arguments":{{}},"_meta":{{"traceparent":"{tp}"}}}}}}"#
        );
        let r = c.post_raw(body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        let call = last_call(&seen_a);
        let sent = call.json();
        assert_eq!(sent["params"]["name"], "echo");
        let (trace, parent, _) = parts(call.header("traceparent").unwrap());
        assert_eq!(trace, TRACE);
        assert_ne!(parent, CALLER_SPAN);
        assert_eq!(
            sent["params"]["_meta"]["traceparent"],
            traceparent(TRACE, &parent).as_str(),
            "{}",
            String::from_utf8_lossy(&call.body)
        );
    }
}

#[test]
fn spans_still_queued_are_exported_when_the_gateway_stops() {
    let (up, _seen) = recording_upstream();
    let collector = Collector::start();
    // A batch that never fills and an interval that never comes: only the stop sends them.
    let mut gw = gateway(
        &up,
        &collector.config("    flush_interval: 1h\n    batch: 1000\n"),
    );
    let mut c = session(&gw);
    c.header("traceparent", &traceparent(TRACE, CALLER_SPAN));
    c.call_tool("echo", json!({"text": "bye"}));
    assert!(
        collector.spans().is_empty(),
        "nothing is sent before the stop"
    );
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(20)).expect("exited");
    assert!(status.success(), "{status:?}\n{}", gw.log.text());
    let spans = collector.spans();
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "tools/call echo" && s["traceId"] == TRACE),
        "spans received: {spans:#?}"
    );
}
