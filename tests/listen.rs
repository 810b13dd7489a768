//! `subscriptions/listen` (2026-07-28) on a federated endpoint, through the real binary: the
//! gateway's acknowledgement first, then every member's notifications re-tagged with the
//! client's subscription id and filtered by what it asked; members answering with SSE or with
//! NDJSON; a member that ends while the others go on; the final result once all are gone or at
//! shutdown; the client closing its stream closes the members'; keep-alive comments; the limit
//! on streams per worker. The members are scripted 2026-07-28 upstreams.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::scripted::{self, read_request, response, Request, Scripted};
use harness::{eventually, Gateway};
use serde_json::{json, Value};

const V: &str = "2026-07-28";

/// How a scripted member behaves on its listen stream.
#[derive(Clone)]
struct Script {
    /// Its `server/discover` capabilities.
    caps: Value,
    /// NDJSON (`application/json`, chunked) instead of SSE.
    ndjson: bool,
    /// Sent right after its acknowledgement (each gets the member's subscription id).
    sends: Vec<Value>,
    /// Then: what ends its stream, if anything.
    end: End,
}

/// How a scripted member's listen stream ends.
#[derive(Clone, Copy, PartialEq)]
enum End {
    /// It stays open until the gateway closes it.
    Open,
    /// Its final result, then the end of the body: an orderly end.
    Result,
    /// The end of the body with no final result (an upstream restarting).
    Cut,
}

/// A member: what it received, how many of its listen streams the gateway closed, and a switch
/// that makes an open stream send one `tools/list_changed` more.
struct Member {
    up: Scripted,
    seen: Arc<Mutex<Vec<Request>>>,
    closed: Arc<AtomicUsize>,
    trigger: Arc<AtomicBool>,
    /// The tools it lists (and answers `tools/call` for, with the tool's name).
    tools: Arc<Mutex<Vec<String>>>,
}

fn member(script: Script) -> Member {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let closed = Arc::new(AtomicUsize::new(0));
    let trigger = Arc::new(AtomicBool::new(false));
    let tools = Arc::new(Mutex::new(vec!["t".to_string()]));
    let (seen2, closed2, trigger2) = (seen.clone(), closed.clone(), trigger.clone());
    let tools2 = tools.clone();
    let up = Scripted::start(move |mut s: TcpStream, _| {
        while let Some(req) = read_request(&mut s) {
            seen2.lock().unwrap().push(req.clone());
            let v = req.json();
            let id = v["id"].clone();
            let reply = match v["method"].as_str().unwrap_or("") {
                "server/discover" => scripted::json_response(&scripted::rpc_result(
                    &id,
                    json!({"resultType": "complete", "supportedVersions": [V],
                           "capabilities": script.caps,
                           "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "m", "version": "1"}},
                           "ttlMs": 0, "cacheScope": "public"}),
                )),
                "tools/list" => {
                    let tools: Vec<Value> = tools2
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|t| json!({"name": t, "inputSchema": {"type": "object"}}))
                        .collect();
                    scripted::json_response(&scripted::rpc_result(
                        &id,
                        json!({"resultType": "complete", "ttlMs": 0, "cacheScope": "public",
                               "tools": tools}),
                    ))
                }
                "tools/call" => scripted::json_response(&scripted::rpc_result(
                    &id,
                    json!({"resultType": "complete",
                           "content": [{"type": "text", "text": req.tool()}]}),
                )),
                "subscriptions/listen" => {
                    listen_stream(&mut s, &script, &id, &v, &closed2, &trigger2);
                    if script.end != End::Open {
                        continue;
                    }
                    return;
                }
                "initialize" => response(
                    "404 Not Found",
                    &[("Content-Type", "application/json")],
                    json!({"jsonrpc": "2.0", "id": id,
                           "error": {"code": -32601, "message": "Method not found"}})
                    .to_string()
                    .as_bytes(),
                ),
                _ => response("202 Accepted", &[], b""),
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    });
    Member {
        up,
        seen,
        closed,
        trigger,
        tools,
    }
}

/// Writes a listen stream: head, ack (its subscription id spelled as the fixture does, a
/// string), `sends`, then the end or (open) waits for the gateway to close it, sending one more
/// change when triggered.
fn listen_stream(
    s: &mut TcpStream,
    script: &Script,
    id: &Value,
    req: &Value,
    closed: &AtomicUsize,
    trigger: &AtomicBool,
) {
    let sub = match id {
        Value::String(x) => x.clone(),
        other => other.to_string(),
    };
    let ctype = if script.ndjson {
        "application/json"
    } else {
        "text/event-stream"
    };
    let _ = s.write_all(
        format!("HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    );
    let ndjson = script.ndjson;
    let send = |s: &mut TcpStream, msg: &Value| {
        let frame = if ndjson {
            format!("{msg}\n")
        } else {
            format!("event: message\ndata: {msg}\n\n")
        };
        let _ = s.write_all(format!("{:x}\r\n{frame}\r\n", frame.len()).as_bytes());
    };
    let tag = |mut m: Value| {
        m["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] = Value::from(sub.clone());
        m
    };
    send(
        s,
        &tag(
            json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                    "params": {"notifications": req["params"]["notifications"]}}),
        ),
    );
    for m in &script.sends {
        send(s, &tag(m.clone()));
    }
    if script.end != End::Open {
        if script.end == End::Result {
            send(
                s,
                &json!({"jsonrpc": "2.0", "id": id, "result": {"resultType": "complete"}}),
            );
        }
        let _ = s.write_all(b"0\r\n\r\n");
        return;
    }
    // Open until the gateway closes it.
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 256];
    let mut sent_trigger = false;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if !sent_trigger && trigger.load(Ordering::Acquire) {
                    sent_trigger = true;
                    send(
                        s,
                        &tag(
                            json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                                     "params": {"n": "triggered"}}),
                        ),
                    );
                }
            }
            Err(_) => break,
        }
    }
    closed.fetch_add(1, Ordering::AcqRel);
}

fn change(kind: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": format!("notifications/{kind}/list_changed"), "params": {}})
}

fn listen_body(id: Value, notifications: Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
           "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": V,
                                "io.modelcontextprotocol/clientCapabilities": {}},
                      "notifications": notifications}})
    .to_string()
    .into_bytes()
}

const LISTEN_HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("accept", "application/json, text/event-stream"),
    ("mcp-protocol-version", V),
    ("mcp-method", "subscriptions/listen"),
];

fn federated(a: &Member, b: &Member, limits: &[(&str, &str)]) -> Gateway {
    let mut g = Gateway::builder()
        .upstream("a", &a.up.url())
        .upstream("b", &b.up.url())
        .yaml("servers:\n  - path: /mcp\n    upstreams: [a, b]\n")
        .workers(1);
    for (k, v) in limits {
        g = g.limit(k, v);
    }
    g.start()
}

/// A client's open listen stream, read as it comes.
struct Stream {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Stream {
    fn open(gw: &Gateway, id: Value, notifications: Value) -> Stream {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let body = listen_body(id, notifications);
        let mut req = format!("POST /mcp HTTP/1.1\r\nhost: {}\r\n", gw.addr);
        for (n, v) in LISTEN_HEADERS {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(&body);
        s.write_all(&bytes).unwrap();
        Stream { s, buf: Vec::new() }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The `data:` messages so far.
    fn messages(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    }

    /// Reads until `cond` holds of what was read (panics at the end of the stream or after
    /// the socket's read timeout).
    fn read_until(&mut self, mut cond: impl FnMut(&Stream) -> bool) {
        let mut tmp = [0u8; 4096];
        while !cond(self) {
            match self.s.read(&mut tmp) {
                Ok(0) => panic!("stream ended: {}", self.text()),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) => panic!("{e}: {}", self.text()),
            }
        }
    }
}

/// A labelled counter's value in a scrape (-1 if absent), whatever the order of its labels.
fn metric(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(-1.0, |v| v.trim().parse().unwrap_or(-1.0))
}

fn methods(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["method"].as_str().unwrap_or("<result>").to_string())
        .collect()
}

#[test]
fn a_merged_listen_acks_first_then_relays_both_members_retagged_and_filtered() {
    // a: SSE, declares tools and prompts list changes, and sends more than it was asked.
    let a = member(Script {
        caps: json!({"tools": {"listChanged": true}, "prompts": {"listChanged": true}}),
        ndjson: false,
        sends: vec![
            change("tools"),
            change("prompts"),
            json!({"jsonrpc": "2.0", "method": "notifications/progress",
                   "params": {"progressToken": 1, "progress": 1}}),
            json!({"jsonrpc": "2.0", "method": "notifications/message",
                   "params": {"level": "info", "data": "x"}}),
            json!({"jsonrpc": "2.0", "id": 99, "method": "sampling/createMessage", "params": {}}),
        ],
        end: End::Result,
    });
    // b: NDJSON like the conformance fixture.
    let b = member(Script {
        caps: json!({"tools": {"listChanged": true}}),
        ndjson: true,
        sends: vec![change("tools")],
        end: End::Result,
    });
    let gw = federated(&a, &b, &[]);
    // Resources list changes: nobody declares them, so the ack leaves them out.
    let r = gw.client().request(
        "POST",
        "/mcp",
        LISTEN_HEADERS,
        &listen_body(
            json!("sub-1"),
            json!({"toolsListChanged": true, "resourcesListChanged": true}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    let msgs = r.sse_messages();
    assert_eq!(
        methods(&msgs),
        [
            "notifications/subscriptions/acknowledged",
            "notifications/tools/list_changed",
            "notifications/tools/list_changed",
            "<result>"
        ],
        "{}",
        r.text()
    );
    assert_eq!(
        msgs[0]["params"],
        json!({"_meta": {"io.modelcontextprotocol/subscriptionId": "sub-1"},
               "notifications": {"toolsListChanged": true}})
    );
    for m in &msgs[..3] {
        assert_eq!(
            m["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "sub-1",
            "{m}"
        );
    }
    assert_eq!(
        msgs[3],
        json!({"jsonrpc": "2.0", "id": "sub-1",
               "result": {"resultType": "complete",
                          "_meta": {"io.modelcontextprotocol/subscriptionId": "sub-1"}}})
    );
    // Each member got a listen of the revision with an id of the gateway's and only what it
    // declares of the client's filter.
    for m in [&a, &b] {
        let seen = m.seen.lock().unwrap();
        let l = seen
            .iter()
            .find(|r| r.rpc_method() == "subscriptions/listen")
            .expect("a listen");
        assert_eq!(l.header("mcp-method"), Some("subscriptions/listen"));
        assert_eq!(l.header("mcp-protocol-version"), Some(V));
        assert_ne!(l.id(), json!("sub-1"));
        assert_eq!(
            l.json()["params"]["notifications"],
            json!({"toolsListChanged": true})
        );
        assert_eq!(
            l.json()["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
            V
        );
    }
    // Counted once the relay returns, which is after the client has its final result: wait
    // for it (bounded).
    let ended = || {
        metric(
            &gw.metrics(),
            "tollgate_listen_streams_ended_total",
            &[("reason", "members_gone")],
        )
    };
    assert!(
        eventually(Duration::from_secs(10), || ended() == 1.0),
        "{}",
        gw.metrics()
    );
}

#[test]
fn a_member_that_ends_leaves_the_others_and_closing_the_client_stream_closes_theirs() {
    let a = member(Script {
        caps: json!({"tools": {"listChanged": true}}),
        ndjson: false,
        sends: vec![],
        end: End::Open,
    });
    let b = member(Script {
        caps: json!({"tools": {"listChanged": true}}),
        ndjson: true,
        sends: vec![change("tools")],
        end: End::Result,
    });
    let gw = federated(&a, &b, &[("listen_keepalive", "50ms")]);
    // A numeric id: the ack carries it as a number.
    let mut s = Stream::open(&gw, json!(42), json!({"toolsListChanged": true}));
    s.read_until(|s| s.messages().len() >= 2);
    let msgs = s.messages();
    assert_eq!(
        methods(&msgs),
        [
            "notifications/subscriptions/acknowledged",
            "notifications/tools/list_changed"
        ],
        "{}",
        s.text()
    );
    assert_eq!(
        msgs[0]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        json!(42)
    );
    assert_eq!(
        msgs[1]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        json!(42)
    );
    // b has ended; a goes on: a change it sends now still arrives.
    a.trigger.store(true, Ordering::Release);
    s.read_until(|s| s.messages().len() >= 3);
    let third = &s.messages()[2];
    assert_eq!(third["params"]["n"], "triggered", "{}", s.text());
    assert_eq!(
        third["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        json!(42)
    );
    // Idle: keep-alive comments.
    s.read_until(|s| s.text().contains("\n: keep-alive\n") || s.text().starts_with(": keep"));
    // b's end is counted when the relay reads its final result, which nothing the client
    // reads waits for: wait for it (bounded).
    gw.await_metric(
        "tollgate_listen_member_ends_total{upstream=\"b\",reason=\"ended\"}",
        |n| n == 1.0,
    );
    assert_eq!(a.closed.load(Ordering::Acquire), 0);
    drop(s);
    assert!(
        eventually(Duration::from_secs(10), || a.closed.load(Ordering::Acquire)
            == 1),
        "the member's stream stayed open after the client left"
    );
    assert!(eventually(Duration::from_secs(10), || {
        metric(
            &gw.metrics(),
            "tollgate_listen_streams_ended_total",
            &[("reason", "client_closed")],
        ) == 1.0
    }));
}

#[test]
fn listen_streams_are_limited_per_worker_and_end_with_their_result_at_shutdown() {
    let open = || Script {
        caps: json!({"prompts": {"listChanged": true}}),
        ndjson: true,
        sends: vec![],
        end: End::Open,
    };
    let (a, b) = (member(open()), member(open()));
    let mut gw = federated(&a, &b, &[("listen_streams_per_worker", "1")]);
    let mut s = Stream::open(&gw, json!(1), json!({"promptsListChanged": true}));
    s.read_until(|s| !s.messages().is_empty());
    // One worker, one stream allowed: the second is refused, saying which limit.
    let r = gw.client().request(
        "POST",
        "/mcp",
        LISTEN_HEADERS,
        &listen_body(json!(2), json!({"promptsListChanged": true})),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let v = r.json();
    assert_eq!(v["id"], 2);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.listen_streams_per_worker"),
        "{v}"
    );
    // Counted by the record phase, which runs after the refusal was written.
    let refused = || {
        metric(
            &gw.metrics(),
            "tollgate_limit_rejections_total",
            &[("limit", "listen_streams_per_worker")],
        )
    };
    assert!(
        eventually(Duration::from_secs(10), || refused() == 1.0),
        "{}",
        gw.metrics()
    );
    // Shutdown: the final result, then the end of the stream.
    gw.sigterm();
    let deadline = Instant::now() + Duration::from_secs(20);
    let rest = harness::read_until_closed(&mut s.s, deadline).unwrap_or_else(|e| e);
    s.buf.extend_from_slice(&rest);
    let msgs = s.messages();
    assert_eq!(
        msgs.last().unwrap(),
        &json!({"jsonrpc": "2.0", "id": 1,
                "result": {"resultType": "complete",
                           "_meta": {"io.modelcontextprotocol/subscriptionId": 1}}}),
        "{}",
        s.text()
    );
    assert!(s.text().ends_with("0\r\n\r\n"), "{}", s.text());
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
}

#[test]
fn a_single_upstreams_listen_takes_a_place_on_the_worker_too() {
    let a = member(Script {
        caps: json!({"tools": {"listChanged": true}}),
        ndjson: false,
        sends: vec![],
        end: End::Open,
    });
    let gw = Gateway::builder()
        .upstream("a", &a.up.url())
        .serve("/mcp", "a")
        .workers(1)
        .limit("listen_streams_per_worker", "1")
        .start();
    let mut s = Stream::open(&gw, json!(1), json!({"toolsListChanged": true}));
    s.read_until(|s| !s.messages().is_empty());
    let r = gw.client().request(
        "POST",
        "/mcp",
        LISTEN_HEADERS,
        &listen_body(json!(2), json!({"toolsListChanged": true})),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    // The first stream's place is given back when it ends: then a new one is served.
    drop(s);
    assert!(eventually(Duration::from_secs(10), || a
        .closed
        .load(Ordering::Acquire)
        == 1));
    let mut s = Stream::open(&gw, json!(3), json!({"toolsListChanged": true}));
    s.read_until(|s| !s.messages().is_empty());
    assert_eq!(
        s.messages()[0]["method"],
        "notifications/subscriptions/acknowledged",
        "{}",
        s.text()
    );
}

/// A member whose listen answers with something unusable: `status` and `body` raw.
fn broken_member(status: &'static str, ctype: &'static str, body: Vec<u8>) -> Scripted {
    Scripted::start(move |mut s: TcpStream, _| {
        while let Some(req) = read_request(&mut s) {
            let v = req.json();
            let id = v["id"].clone();
            let reply = match v["method"].as_str().unwrap_or("") {
                "server/discover" => scripted::json_response(&scripted::rpc_result(
                    &id,
                    json!({"resultType": "complete", "supportedVersions": [V],
                           "capabilities": {"tools": {"listChanged": true}},
                           "ttlMs": 0, "cacheScope": "public"}),
                )),
                "subscriptions/listen" => {
                    let _ = s.write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    let _ = s.write_all(&body);
                    continue;
                }
                _ => response("202 Accepted", &[], b""),
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

#[test]
fn members_that_refuse_or_send_garbage_are_left_out_and_counted() {
    let good = member(Script {
        caps: json!({"tools": {"listChanged": true}}),
        ndjson: false,
        sends: vec![change("tools")],
        end: End::Result,
    });
    // A 500; a 200 whose body is one line larger than any message may be; a 200 that is not
    // JSON at all and ends without an acknowledgement.
    let refused = broken_member("500 Internal Server Error", "text/plain", b"no".to_vec());
    let mut huge = vec![b'x'; 2 * 1024 * 1024];
    huge.push(b'\n');
    let oversized = broken_member("200 OK", "application/json", huge);
    let garbage = broken_member("200 OK", "application/json", b"{{{ not json\n".to_vec());
    let gw = Gateway::builder()
        .upstream("good", &good.up.url())
        .upstream("refused", &refused.url())
        .upstream("oversized", &oversized.url())
        .upstream("garbage", &garbage.url())
        .yaml("servers:\n  - path: /mcp\n    upstreams: [good, refused, oversized, garbage]\n")
        .workers(1)
        .start();
    let r = gw.client().request(
        "POST",
        "/mcp",
        LISTEN_HEADERS,
        &listen_body(json!(5), json!({"toolsListChanged": true})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let msgs = r.sse_messages();
    assert_eq!(
        methods(&msgs),
        [
            "notifications/subscriptions/acknowledged",
            "notifications/tools/list_changed",
            "<result>"
        ],
        "{}",
        r.text()
    );
    assert_eq!(
        msgs[0]["params"]["notifications"],
        json!({"toolsListChanged": true})
    );
    let scrape = gw.metrics();
    for name in ["refused", "oversized", "garbage"] {
        assert_eq!(
            metric(
                &scrape,
                "tollgate_listen_member_ends_total",
                &[("upstream", name), ("reason", "not_opened")]
            ),
            1.0,
            "{name}: {scrape}"
        );
    }
    // None of them usable: the client is told, not given an empty stream.
    let gw = Gateway::builder()
        .upstream("refused", &refused.url())
        .upstream("garbage", &garbage.url())
        .yaml("servers:\n  - path: /mcp\n    upstreams: [refused, garbage]\n")
        .start();
    let r = gw.client().request(
        "POST",
        "/mcp",
        LISTEN_HEADERS,
        &listen_body(json!(6), json!({"toolsListChanged": true})),
    );
    let v = r.json();
    assert_eq!(v["id"], 6, "{}", r.text());
    assert_eq!(v["error"]["code"], -31001, "{}", r.text());
}

fn call(gw: &Gateway, id: u64, name: &str) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": V,
                                           "io.modelcontextprotocol/clientCapabilities": {}},
                                 "name": name, "arguments": {}}})
    .to_string();
    gw.client()
        .request(
            "POST",
            "/mcp",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", V),
                ("mcp-method", "tools/call"),
                ("mcp-name", name),
            ],
            body.as_bytes(),
        )
        .json()
}

#[test]
fn a_list_change_on_the_listen_stream_makes_the_routing_table_fresh() {
    let a = member(Script {
        caps: json!({"tools": {"listChanged": true}}),
        ndjson: false,
        sends: vec![],
        end: End::Open,
    });
    let b = member(Script {
        caps: json!({}),
        ndjson: true,
        sends: vec![],
        end: End::Open,
    });
    // One worker: the listen and the calls share its routing tables; they are rebuilt only
    // when stale, older than an hour, or on a miss a second after the last rebuild.
    let gw = Gateway::builder()
        .upstream("a", &a.up.url())
        .upstream("b", &b.up.url())
        .yaml("servers:\n  - path: /mcp\n    upstreams: [a, b]\n    list_refresh_interval: 1h\n")
        .workers(1)
        .start();
    // The table is built, and knows a__t.
    assert_eq!(call(&gw, 1, "a__t")["result"]["content"][0]["text"], "t");
    let mut s = Stream::open(&gw, json!(7), json!({"toolsListChanged": true}));
    s.read_until(|s| !s.messages().is_empty());
    // The upstream gains a tool and says so on its listen stream.
    a.tools.lock().unwrap().push("u".into());
    a.trigger.store(true, Ordering::Release);
    s.read_until(|s| s.messages().len() >= 2);
    assert_eq!(
        s.messages()[1]["method"],
        "notifications/tools/list_changed"
    );
    // At once (not waiting for a miss to be allowed a rebuild): the new tool is routed.
    let r = call(&gw, 2, "a__u");
    assert_eq!(r["result"]["content"][0]["text"], "u", "{r}");
}

#[test]
fn members_that_break_off_end_the_client_stream_without_a_final_result() {
    // Both members end their streams with no final result of their own (upstreams restarting):
    // the client's stream ends the same way, so it listens again; a final result would tell it
    // the subscription is over.
    let script = Script {
        caps: json!({"tools": {"listChanged": true}}),
        ndjson: false,
        sends: vec![change("tools")],
        end: End::Cut,
    };
    let (a, b) = (member(script.clone()), member(script));
    let gw = federated(&a, &b, &[]);
    // Read raw: the stream ends with no last chunk, as a connection that broke off does.
    let body = listen_body(json!("sub-9"), json!({"toolsListChanged": true}));
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let mut req = format!("POST /mcp HTTP/1.1\r\nhost: {}\r\n", gw.addr);
    for (k, v) in LISTEN_HEADERS {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("notifications/subscriptions/acknowledged"),
        "{text}"
    );
    assert!(text.contains("notifications/tools/list_changed"), "{text}");
    assert!(!text.contains("\"result\""), "no final result: {text}");
    assert!(!text.ends_with("0\r\n\r\n"), "no last chunk: {text}");
    let scrape = gw.metrics();
    assert_eq!(
        metric(
            &scrape,
            "tollgate_listen_streams_ended_total",
            &[("reason", "members_lost")]
        ),
        1.0,
        "{scrape}"
    );
}

/// The endpoint's rules judge every relayed resource update: one the caller may not see is
/// dropped although it subscribed to it, and so is one it may see but not read from where it
/// is (a rule by source network).
#[test]
fn updates_of_resources_the_rules_hide_are_not_relayed() {
    let update = |uri: &str| json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}});
    let a = member(Script {
        caps: json!({"resources": {"subscribe": true, "listChanged": true}}),
        ndjson: false,
        sends: vec![
            update("file:///secret"),
            update("file:///office"),
            update("file:///open"),
        ],
        end: End::Result,
    });
    let b = member(Script {
        caps: json!({"tools": {"listChanged": true}}),
        ndjson: false,
        sends: vec![],
        end: End::Result,
    });
    let gw = Gateway::builder()
        .upstream("a", &a.up.url())
        .upstream("b", &b.up.url())
        .yaml(concat!(
            "servers:\n  - path: /mcp\n    upstreams: [a, b]\n    rules:\n",
            "      - {name: open-files, effect: allow, resources: [\"file:///open\"]}\n",
            "      - {name: office-files, effect: allow, resources: [\"file:///office\"], sources: [10.0.0.0/8]}\n",
        ))
        .workers(1)
        .start();
    let r = gw.client().request(
        "POST",
        "/mcp",
        LISTEN_HEADERS,
        &listen_body(
            json!(1),
            json!({"resourceSubscriptions": ["file:///secret", "file:///office", "file:///open"]}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let uris: Vec<Value> = r
        .sse_messages()
        .iter()
        .filter(|m| m["method"] == "notifications/resources/updated")
        .map(|m| m["params"]["uri"].clone())
        .collect();
    assert_eq!(uris, [json!("file:///open")], "{}", r.text());
}
