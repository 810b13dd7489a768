//! The built-in demo MCP server, spoken to in raw HTTP/1.1 over std `TcpStream`s: sessions,
//! every tool (progress as SSE, in order), resources, prompts, batch rules, keep-alive reuse,
//! pipelining and the refusals. Each test starts its own server on 127.0.0.1:0.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate::demo::{self, DemoOptions};

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client that shows every byte it relies on.

fn start(opts: DemoOptions) -> SocketAddr {
    demo::spawn("127.0.0.1:0".parse().unwrap(), opts).expect("demo server starts")
}

fn start_default() -> SocketAddr {
    start(DemoOptions::default())
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn events(&self) -> Vec<Event> {
        parse_events(&String::from_utf8(self.body.clone()).unwrap())
    }

    /// The JSON of every `message` event with data.
    fn messages(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| !e.data.is_empty())
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect()
    }
}

fn parse_events(text: &str) -> Vec<Event> {
    use tollgate::http::sse;
    let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
    sse::decode_all(text.as_bytes(), text.len(), sse::AtEnd::Dispatch)
        .unwrap()
        .into_iter()
        .map(|e| Event {
            id: e.id.map(s),
            event: (!e.event.is_empty()).then(|| s(e.event)),
            data: s(e.data),
        })
        .collect()
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A POST to /mcp as the SDK clients send it.
fn post_bytes(session: Option<&str>, body: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(body).unwrap();
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    if let Some(s) = session {
        headers.push(("mcp-session-id", s));
    }
    request("POST", "/mcp", &headers, &body)
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads more bytes; false at end of stream.
    fn more(&mut self) -> bool {
        let mut tmp = [0u8; 64 * 1024];
        let n = self
            .stream
            .read(&mut tmp)
            .expect("read from the demo server");
        self.buf.extend_from_slice(&tmp[..n]);
        n > 0
    }

    fn head(&mut self) -> (u16, Vec<(String, String)>) {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = resp.parse(&self.buf).unwrap() {
                let status = resp.code.unwrap();
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.buf.drain(..n);
                return (status, headers);
            }
            assert!(self.more(), "connection closed inside a response head");
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.more(), "connection closed inside a body");
        }
        self.buf.drain(..n).collect()
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..i].to_vec()).unwrap();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.more(), "connection closed inside a chunk size line");
        }
    }

    /// One chunk of a chunked body; `None` for the last (empty) chunk.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        let size = usize::from_str_radix(self.line().trim(), 16).unwrap();
        if size == 0 {
            assert_eq!(self.line(), "", "no trailers expected");
            return None;
        }
        let data = self.take(size);
        assert_eq!(self.take(2), b"\r\n");
        Some(data)
    }

    fn response(&mut self) -> Response {
        let (status, headers) = self.head();
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if resp.header("transfer-encoding") == Some("chunked") {
            while let Some(c) = self.chunk() {
                resp.body.extend_from_slice(&c);
            }
        } else {
            let n: usize = resp
                .header("content-length")
                .expect("a framed response")
                .trim()
                .parse()
                .unwrap();
            resp.body = self.take(n);
        }
        resp
    }

    fn post(&mut self, session: Option<&str>, body: &Value) -> Response {
        self.send(&post_bytes(session, body));
        self.response()
    }

    /// True when the server has closed the connection (and sent nothing more).
    fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.more()
    }
}

fn rpc(id: u64, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

fn init_body(version: &str) -> Value {
    rpc(
        0,
        "initialize",
        json!({
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": { "name": "demo-upstream-test", "version": "0" }
        }),
    )
}

/// Initializes at `version` and sends `notifications/initialized`; returns the session id.
fn session(c: &mut Client, version: &str) -> String {
    let r = c.post(None, &init_body(version));
    assert_eq!(r.status, 200);
    let sid = r
        .header("mcp-session-id")
        .expect("initialize issues a session id")
        .to_string();
    let note = c.post(
        Some(&sid),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(note.status, 202);
    sid
}

fn call_tool(c: &mut Client, sid: &str, id: u64, name: &str, args: Value) -> Value {
    let r = c.post(
        Some(sid),
        &rpc(id, "tools/call", json!({ "name": name, "arguments": args })),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["id"], id);
    v
}

// ---------------------------------------------------------------------------------------------

#[test]
fn initialize_negotiates_and_issues_a_session() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    for (asked, got) in [
        ("2024-11-05", "2024-11-05"),
        ("2025-03-26", "2025-03-26"),
        ("2025-06-18", "2025-06-18"),
        ("2025-11-25", "2025-11-25"),
        ("1999-01-01", "2025-11-25"),
    ] {
        let r = c.post(None, &init_body(asked));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["id"], 0);
        assert_eq!(v["result"]["protocolVersion"], got);
        let caps = &v["result"]["capabilities"];
        assert_eq!(caps["tools"]["listChanged"], false);
        assert_eq!(caps["resources"]["subscribe"], false);
        assert!(caps["prompts"].is_object() && caps["logging"].is_object());
        assert_eq!(v["result"]["serverInfo"]["name"], "tollgate-demo");
        assert!(v["result"]["serverInfo"]["version"].is_string());
        let sid = r.header("mcp-session-id").unwrap();
        assert!(
            sid.len() >= 16 && sid.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "{sid}"
        );
    }
    let a = c.post(None, &init_body("2025-06-18"));
    let b = c.post(None, &init_body("2025-06-18"));
    assert_ne!(a.header("mcp-session-id"), b.header("mcp-session-id"));
}

#[test]
fn notifications_and_client_responses_get_202() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-06-18");
    for msg in [
        json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9}}),
        json!({"jsonrpc":"2.0","id":"srv-1","result":{}}),
        json!({"jsonrpc":"2.0","id":"srv-2","error":{"code":-1,"message":"no"}}),
    ] {
        let r = c.post(Some(&sid), &msg);
        assert_eq!(r.status, 202, "{msg}");
        assert!(r.body.is_empty());
    }
    let ping = c.post(Some(&sid), &rpc(5, "ping", json!({})));
    assert_eq!(ping.json(), json!({"jsonrpc":"2.0","id":5,"result":{}}));
}

#[test]
fn tools_list_has_a_schema_for_every_tool_and_the_synthetic_ones() {
    let addr = start(DemoOptions {
        workers: 2,
        sse: false,
        extra_tools: 1500,
    });
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-11-25");
    let v = c.post(Some(&sid), &rpc(1, "tools/list", json!({}))).json();
    let tools = v["result"]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 6 + 1500);
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        &names[..6],
        ["echo", "add", "slow", "progress", "large", "fail"]
    );
    assert_eq!(names[6], "tool_0000");
    assert_eq!(names[6 + 1499], "tool_1499");
    for t in tools {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
    }
    let add = &tools[1];
    assert_eq!(add["outputSchema"]["properties"]["sum"]["type"], "number");
    let synthetic = call_tool(&mut c, &sid, 2, "tool_1499", json!({"text":"pad"}));
    assert_eq!(synthetic["result"]["content"][0]["text"], "pad");
    let cursor = c
        .post(Some(&sid), &rpc(3, "tools/list", json!({"cursor":"nope"})))
        .json();
    assert_eq!(cursor["error"]["code"], -32602);
}

#[test]
fn each_tool_answers() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-06-18");

    let echo = call_tool(&mut c, &sid, 1, "echo", json!({"text":"héllo \"world\"\n"}));
    assert_eq!(
        echo["result"]["content"],
        json!([{"type":"text","text":"héllo \"world\"\n"}])
    );

    let add = call_tool(&mut c, &sid, 2, "add", json!({"a": 2, "b": 3.5}));
    assert_eq!(add["result"]["content"][0]["text"], "5.5");
    assert_eq!(add["result"]["structuredContent"], json!({"sum": 5.5}));

    let t = Instant::now();
    let slow = call_tool(&mut c, &sid, 3, "slow", json!({"ms": 120}));
    assert!(t.elapsed() >= Duration::from_millis(120));
    assert_eq!(slow["result"]["content"][0]["text"], "done after 120 ms");

    for n in [0usize, 1, 100_000, 3 << 20] {
        let large = call_tool(&mut c, &sid, 4, "large", json!({"bytes": n}));
        let text = large["result"]["content"][0]["text"].as_str().unwrap();
        assert_eq!(text.len(), n);
        assert!(text.bytes().all(|b| b.is_ascii_graphic()));
    }

    let fail = call_tool(&mut c, &sid, 5, "fail", json!({}));
    assert_eq!(fail["result"]["isError"], true);
    assert!(fail["result"]["content"][0]["text"].as_str().unwrap().len() > 10);

    let unknown = call_tool(&mut c, &sid, 6, "nope", json!({}));
    assert_eq!(unknown["error"]["code"], -32602);
    assert_eq!(unknown["error"]["message"], "Unknown tool: nope");

    for (name, args) in [
        ("echo", json!({"text": 3})),
        ("add", json!({"a": 1})),
        ("slow", json!({"ms": 60_001})),
        ("large", json!({"bytes": (16 << 20) + 1})),
        ("progress", json!({"steps": "many"})),
    ] {
        let bad = call_tool(&mut c, &sid, 7, name, args);
        assert_eq!(bad["error"]["code"], -32602, "{name}: {bad}");
        assert!(bad["error"]["message"].as_str().unwrap().contains(name));
    }
}

#[test]
fn progress_streams_each_step_then_the_result() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-06-18");
    let call = json!({
        "jsonrpc": "2.0", "id": 11, "method": "tools/call",
        "params": { "name": "progress", "arguments": {"steps": 4, "interval_ms": 5}, "_meta": {"progressToken": "tok-1"} }
    });
    let r = c.post(Some(&sid), &call);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let events = r.events();
    assert_eq!(events.len(), 5);
    assert!(events
        .iter()
        .all(|e| e.event.as_deref() == Some("message") && e.id.is_some()));
    let mut ids: Vec<_> = events.iter().map(|e| e.id.clone().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 5, "event ids are unique");
    let msgs = r.messages();
    for (i, m) in msgs[..4].iter().enumerate() {
        assert_eq!(m["method"], "notifications/progress");
        assert_eq!(m["params"]["progressToken"], "tok-1");
        assert_eq!(m["params"]["progress"], i as u64 + 1);
        assert_eq!(m["params"]["total"], 4);
    }
    assert_eq!(msgs[4]["id"], 11);
    assert_eq!(
        msgs[4]["result"]["content"][0]["text"],
        "progress done: 4 steps"
    );

    // Numeric token, no progress without a token: still SSE, just the result.
    let numeric = json!({
        "jsonrpc": "2.0", "id": 12, "method": "tools/call",
        "params": { "name": "progress", "arguments": {"steps": 2, "interval_ms": 0}, "_meta": {"progressToken": 77} }
    });
    let msgs = c.post(Some(&sid), &numeric).messages();
    assert_eq!(msgs[0]["params"]["progressToken"], 77);
    assert_eq!(msgs.len(), 3);
    let plain = c.post(
        Some(&sid),
        &rpc(
            13,
            "tools/call",
            json!({"name":"progress","arguments":{"steps":3,"interval_ms":1}}),
        ),
    );
    assert_eq!(plain.header("content-type"), Some("text/event-stream"));
    let msgs = plain.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["id"], 13);
}

#[test]
fn progress_events_reach_the_client_as_they_happen() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-06-18");
    let call = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": "progress", "arguments": {"steps": 2, "interval_ms": 300}, "_meta": {"progressToken": "t"} }
    });
    c.send(&post_bytes(Some(&sid), &call));
    let (status, _) = c.head();
    assert_eq!(status, 200);
    let first = c.chunk().unwrap();
    let got_first = Instant::now();
    assert!(String::from_utf8(first).unwrap().contains("\"progress\":1"));
    let second = c.chunk().unwrap();
    assert!(String::from_utf8(second)
        .unwrap()
        .contains("\"progress\":2"));
    // Had the server buffered the stream, both would have arrived together.
    assert!(got_first.elapsed() >= Duration::from_millis(250));
    let result = c.chunk().unwrap();
    assert!(String::from_utf8(result).unwrap().contains("\"result\""));
    assert_eq!(c.chunk(), None);
}

#[test]
fn resources_and_templates() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-06-18");
    let list = c
        .post(Some(&sid), &rpc(1, "resources/list", json!({})))
        .json();
    let res = list["result"]["resources"].as_array().unwrap();
    let uris: Vec<(&str, &str)> = res
        .iter()
        .map(|r| (r["uri"].as_str().unwrap(), r["mimeType"].as_str().unwrap()))
        .collect();
    assert_eq!(
        uris,
        [
            ("demo://readme", "text/plain"),
            ("demo://data.json", "application/json")
        ]
    );
    let templates = c
        .post(Some(&sid), &rpc(2, "resources/templates/list", json!({})))
        .json();
    assert_eq!(
        templates["result"]["resourceTemplates"][0]["uriTemplate"],
        "demo://items/{id}"
    );

    let readme = c
        .post(
            Some(&sid),
            &rpc(3, "resources/read", json!({"uri":"demo://readme"})),
        )
        .json();
    assert!(readme["result"]["contents"][0]["text"]
        .as_str()
        .unwrap()
        .contains("tollgate-demo"));
    let data = c
        .post(
            Some(&sid),
            &rpc(4, "resources/read", json!({"uri":"demo://data.json"})),
        )
        .json();
    let doc: Value =
        serde_json::from_str(data["result"]["contents"][0]["text"].as_str().unwrap()).unwrap();
    assert!(doc.is_object());
    let item = c
        .post(
            Some(&sid),
            &rpc(5, "resources/read", json!({"uri":"demo://items/abc"})),
        )
        .json();
    assert_eq!(item["result"]["contents"][0]["text"], "item abc");
    assert_eq!(item["result"]["contents"][0]["uri"], "demo://items/abc");
    for uri in ["demo://nope", "demo://items/", "file:///etc/passwd"] {
        let missing = c
            .post(Some(&sid), &rpc(6, "resources/read", json!({"uri": uri})))
            .json();
        assert_eq!(missing["error"]["code"], -32002, "{uri}");
        assert_eq!(missing["error"]["message"], "Resource not found");
    }
}

#[test]
fn prompts_and_small_methods() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-06-18");
    let list = c
        .post(Some(&sid), &rpc(1, "prompts/list", json!({})))
        .json();
    let greet = &list["result"]["prompts"][0];
    assert_eq!(greet["name"], "greet");
    assert_eq!(
        greet["arguments"][0],
        json!({"name":"name","description":"Who to greet","required":true})
    );
    let got = c
        .post(
            Some(&sid),
            &rpc(
                2,
                "prompts/get",
                json!({"name":"greet","arguments":{"name":"Ada"}}),
            ),
        )
        .json();
    assert_eq!(got["result"]["messages"][0]["role"], "user");
    assert_eq!(
        got["result"]["messages"][0]["content"],
        json!({"type":"text","text":"Hello, Ada!"})
    );
    let missing = c
        .post(
            Some(&sid),
            &rpc(3, "prompts/get", json!({"name":"greet","arguments":{}})),
        )
        .json();
    assert_eq!(missing["error"]["code"], -32602);
    let unknown = c
        .post(Some(&sid), &rpc(4, "prompts/get", json!({"name":"nope"})))
        .json();
    assert_eq!(unknown["error"]["code"], -32602);

    let level = c
        .post(
            Some(&sid),
            &rpc(5, "logging/setLevel", json!({"level":"debug"})),
        )
        .json();
    assert_eq!(level["result"], json!({}));
    let complete = c.post(
        Some(&sid),
        &rpc(6, "completion/complete", json!({"ref":{"type":"ref/prompt","name":"greet"},"argument":{"name":"name","value":"A"}})),
    );
    assert_eq!(complete.json()["result"]["completion"]["values"], json!([]));
    let nope = c
        .post(Some(&sid), &rpc(7, "sampling/createMessage", json!({})))
        .json();
    assert_eq!(nope["error"]["code"], -32601);
    assert_eq!(nope["id"], 7);
}

#[test]
fn sessions_missing_unknown_and_deleted() {
    let addr = start_default();
    let mut c = Client::connect(addr);

    let missing = c.post(None, &rpc(1, "tools/list", json!({})));
    assert_eq!(missing.status, 400);
    assert!(missing.json()["error"]["code"].is_i64());

    let unknown = c.post(Some("no-such-session"), &rpc(1, "tools/list", json!({})));
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"]["message"].is_string());

    let sid = session(&mut c, "2025-06-18");
    assert_eq!(c.post(Some(&sid), &rpc(2, "ping", json!({}))).status, 200);

    c.send(&request("DELETE", "/mcp", &[("mcp-session-id", &sid)], b""));
    let deleted = c.response();
    assert_eq!(deleted.status, 200);
    assert!(deleted.body.is_empty());

    let after = c.post(Some(&sid), &rpc(3, "ping", json!({})));
    assert_eq!(after.status, 404);
    c.send(&request("DELETE", "/mcp", &[("mcp-session-id", &sid)], b""));
    assert_eq!(c.response().status, 404);
    c.send(&request("DELETE", "/mcp", &[], b""));
    assert_eq!(c.response().status, 400);

    // Sessions are shared by every worker thread: a session made on one connection works on others.
    let addr = start(DemoOptions {
        workers: 2,
        ..DemoOptions::default()
    });
    let mut first = Client::connect(addr);
    let sid = session(&mut first, "2025-06-18");
    for _ in 0..8 {
        let mut other = Client::connect(addr);
        assert_eq!(
            other.post(Some(&sid), &rpc(1, "ping", json!({}))).status,
            200
        );
    }
}

#[test]
fn unsupported_protocol_version_header_is_400() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-06-18");
    let body = serde_json::to_vec(&rpc(1, "ping", json!({}))).unwrap();
    for (version, status) in [
        ("2025-06-18", 200),
        ("2025-03-26", 200),
        ("1999-01-01", 400),
        ("2026-07-28", 400),
    ] {
        c.send(&request(
            "POST",
            "/mcp",
            &[
                ("content-type", "application/json"),
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", version),
            ],
            &body,
        ));
        assert_eq!(c.response().status, status, "{version}");
    }
}

#[test]
fn batches_only_in_2025_03_26_sessions() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let old = session(&mut c, "2025-03-26");
    let batch = json!([
        rpc(1, "ping", json!({})),
        {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}},
        rpc(2, "tools/call", json!({"name":"echo","arguments":{"text":"in a batch"}})),
        {"jsonrpc":"2.0","id":3},
        rpc(4, "initialize", json!({})),
    ]);
    let r = c.post(Some(&old), &batch);
    assert_eq!(r.status, 200);
    let v = r.json();
    let answers = v.as_array().expect("a batch is answered with an array");
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0], json!({"jsonrpc":"2.0","id":1,"result":{}}));
    assert_eq!(answers[1]["result"]["content"][0]["text"], "in a batch");
    assert_eq!(answers[2]["id"], 3);
    assert_eq!(answers[2]["error"]["code"], -32600);
    assert_eq!(answers[3]["error"]["code"], -32600);

    let only_notes = c.post(
        Some(&old),
        &json!([{"jsonrpc":"2.0","method":"notifications/initialized"}]),
    );
    assert_eq!(only_notes.status, 202);
    let empty = c.post(Some(&old), &json!([]));
    assert_eq!(empty.status, 400);
    assert_eq!(empty.json()["error"]["code"], -32600);

    for version in ["2024-11-05", "2025-06-18", "2025-11-25"] {
        let sid = session(&mut c, version);
        let r = c.post(Some(&sid), &json!([rpc(1, "ping", json!({}))]));
        assert_eq!(r.status, 400, "{version}");
        assert_eq!(r.json()["error"]["code"], -32600);
    }
}

#[test]
fn one_connection_serves_many_requests() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-06-18");
    for i in 0..50u64 {
        let v = call_tool(&mut c, &sid, i, "echo", json!({"text": format!("n{i}")}));
        assert_eq!(v["result"]["content"][0]["text"], format!("n{i}"));
    }
    // A 2 MiB body, then more small requests on the same connection.
    let big = "x".repeat(2 << 20);
    let v = call_tool(&mut c, &sid, 99, "echo", json!({"text": big}));
    assert_eq!(
        v["result"]["content"][0]["text"].as_str().unwrap().len(),
        2 << 20
    );
    assert_eq!(c.post(Some(&sid), &rpc(100, "ping", json!({}))).status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-06-18");
    let mut wire = Vec::new();
    for i in 0..10u64 {
        wire.extend(post_bytes(
            Some(&sid),
            &rpc(
                i,
                "tools/call",
                json!({"name":"echo","arguments":{"text": i.to_string()}}),
            ),
        ));
    }
    // A chunked body, a slow call and an SSE reply in the middle of the pipeline.
    let body = serde_json::to_vec(&rpc(10, "ping", json!({}))).unwrap();
    let (a, b) = body.split_at(7);
    wire.extend(format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nmcp-session-id: {sid}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
        a.len()
    ).bytes());
    wire.extend_from_slice(a);
    wire.extend(format!("\r\n{:x}\r\n", b.len()).bytes());
    wire.extend_from_slice(b);
    wire.extend_from_slice(b"\r\n0\r\n\r\n");
    wire.extend(post_bytes(
        Some(&sid),
        &rpc(
            11,
            "tools/call",
            json!({"name":"slow","arguments":{"ms":30}}),
        ),
    ));
    wire.extend(post_bytes(Some(&sid), &rpc(12, "tools/call", json!({"name":"progress","arguments":{"steps":2,"interval_ms":1},"_meta":{"progressToken":"p"}}))));
    wire.extend(post_bytes(Some(&sid), &rpc(13, "ping", json!({}))));
    c.send(&wire);
    for i in 0..10u64 {
        let v = c.response().json();
        assert_eq!(v["id"], i);
        assert_eq!(v["result"]["content"][0]["text"], i.to_string());
    }
    assert_eq!(c.response().json()["id"], 10);
    assert_eq!(c.response().json()["id"], 11);
    let sse = c.response();
    assert_eq!(sse.messages().last().unwrap()["id"], 12);
    assert_eq!(c.response().json()["id"], 13);
}

#[test]
fn sse_mode_answers_every_request_as_a_stream() {
    let addr = start(DemoOptions {
        workers: 1,
        sse: true,
        extra_tools: 0,
    });
    let mut c = Client::connect(addr);
    let init = c.post(None, &init_body("2025-06-18"));
    assert_eq!(init.header("content-type"), Some("text/event-stream"));
    let sid = init.header("mcp-session-id").unwrap().to_string();
    assert_eq!(
        init.messages()[0]["result"]["protocolVersion"],
        "2025-06-18"
    );
    let echo = c.post(
        Some(&sid),
        &rpc(
            1,
            "tools/call",
            json!({"name":"echo","arguments":{"text":"s"}}),
        ),
    );
    let events = echo.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.as_deref(), Some("message"));
    assert!(events[0].id.is_some());
    assert_eq!(echo.messages()[0]["result"]["content"][0]["text"], "s");
    // Notifications are still 202.
    assert_eq!(
        c.post(
            Some(&sid),
            &json!({"jsonrpc":"2.0","method":"notifications/initialized"})
        )
        .status,
        202
    );
    // Batches too come back as one stream, one event per response.
    let old = c.post(None, &init_body("2025-03-26"));
    let old_sid = old.header("mcp-session-id").unwrap().to_string();
    let batch = c.post(
        Some(&old_sid),
        &json!([rpc(1, "ping", json!({})), rpc(2, "ping", json!({}))]),
    );
    let ids: Vec<Value> = batch.messages().iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids, [json!(1), json!(2)]);
}

#[test]
fn get_stream_primes_then_allows_one_per_session() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-11-25");
    let get = |sid: Option<&str>| {
        let mut headers = vec![("accept", "text/event-stream")];
        if let Some(s) = sid {
            headers.push(("mcp-session-id", s));
        }
        request("GET", "/mcp", &headers, b"")
    };

    let mut stream = Client::connect(addr);
    stream.send(&get(Some(&sid)));
    let (status, headers) = stream.head();
    assert_eq!(status, 200);
    assert!(headers.contains(&("content-type".into(), "text/event-stream".into())));
    let priming = parse_events(&String::from_utf8(stream.chunk().unwrap()).unwrap());
    assert_eq!(priming.len(), 1);
    assert!(priming[0].id.as_deref().is_some_and(|id| !id.is_empty()));
    assert_eq!(priming[0].data, "");

    let mut second = Client::connect(addr);
    second.send(&get(Some(&sid)));
    assert_eq!(second.response().status, 409);

    // POSTs still work while the stream is open.
    assert_eq!(c.post(Some(&sid), &rpc(1, "ping", json!({}))).status, 200);

    // Once the client goes away the session may open a stream again (the server notices
    // the close asynchronously, so allow it a moment).
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Client::connect(addr);
        again.send(&get(Some(&sid)));
        let (status, _) = again.head();
        if status == 200 {
            break;
        }
        assert_eq!(status, 409);
        assert!(
            Instant::now() < deadline,
            "the closed GET stream was never released"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut none = Client::connect(addr);
    none.send(&get(None));
    assert_eq!(none.response().status, 400);
    none.send(&get(Some("unknown")));
    assert_eq!(none.response().status, 404);
    none.send(&request(
        "GET",
        "/mcp",
        &[("accept", "application/json"), ("mcp-session-id", &sid)],
        b"",
    ));
    assert_eq!(none.response().status, 406);
}

#[test]
fn refusals_at_the_http_layer() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-06-18");

    c.send(&request(
        "POST",
        "/other",
        &[("content-type", "application/json")],
        b"{}",
    ));
    assert_eq!(c.response().status, 404);

    c.send(&request(
        "POST",
        "/mcp",
        &[("content-type", "text/plain"), ("mcp-session-id", &sid)],
        b"{}",
    ));
    let r = c.response();
    assert_eq!(r.status, 415);
    assert!(r.json()["error"].is_object());

    c.send(&request("PUT", "/mcp", &[], b""));
    let r = c.response();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST, DELETE"));

    for garbage in [&b"{not json"[..], b"", b"{\"a\":1} trailing", b"\xff\xfe", b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["] {
        c.send(&request("POST", "/mcp", &[("content-type", "application/json"), ("mcp-session-id", &sid)], garbage));
        let r = c.response();
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["error"]["code"], -32700);
    }

    let invalid = c.post(Some(&sid), &json!({"id": 4, "method": "ping"}));
    assert_eq!(invalid.status, 400);
    assert_eq!(invalid.json()["error"]["code"], -32600);
    assert_eq!(invalid.json()["id"], 4);

    c.send(&request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("origin", "https://evil.example.com"),
            ("mcp-session-id", &sid),
        ],
        b"{}",
    ));
    assert_eq!(c.response().status, 403);
    c.send(&request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("origin", "http://localhost:6274"),
            ("mcp-session-id", &sid),
        ],
        &serde_json::to_vec(&rpc(1, "ping", json!({}))).unwrap(),
    ));
    assert_eq!(c.response().status, 200);

    // Still one healthy connection after all of that.
    assert_eq!(c.post(Some(&sid), &rpc(9, "ping", json!({}))).status, 200);

    // Over the body limit: 413 and the connection is closed.
    c.send(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 16777217\r\n\r\n");
    assert_eq!(c.response().status, 413);
    assert!(c.closed());

    // A malformed head: 400 and closed.
    let mut bad = Client::connect(addr);
    bad.send(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n");
    assert_eq!(bad.response().status, 400);
    assert!(bad.closed());

    // `Connection: close` is honoured.
    let mut once = Client::connect(addr);
    once.send(&request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("mcp-session-id", &sid),
            ("connection", "close"),
        ],
        &serde_json::to_vec(&rpc(1, "ping", json!({}))).unwrap(),
    ));
    let r = once.response();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(once.closed());
}

#[test]
fn the_epoll_driver_serves_the_same() {
    let addr = demo::spawn_with_driver(
        "127.0.0.1:0".parse().unwrap(),
        DemoOptions {
            workers: 2,
            ..DemoOptions::default()
        },
        tollgate::config::Driver::Legacy,
    )
    .unwrap();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-11-25");
    let echo = call_tool(&mut c, &sid, 1, "echo", json!({"text": "epoll"}));
    assert_eq!(echo["result"]["content"][0]["text"], "epoll");
    let slow = call_tool(&mut c, &sid, 2, "slow", json!({"ms": 20}));
    assert_eq!(slow["result"]["content"][0]["text"], "done after 20 ms");
    let call = json!({
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": { "name": "progress", "arguments": {"steps": 3, "interval_ms": 2}, "_meta": {"progressToken": "e"} }
    });
    let msgs = c.post(Some(&sid), &call).messages();
    let progress: Vec<Value> = msgs[..3]
        .iter()
        .map(|m| m["params"]["progress"].clone())
        .collect();
    assert_eq!(progress, [json!(1), json!(2), json!(3)]);
    assert_eq!(msgs[3]["id"], 3);
    let large = call_tool(&mut c, &sid, 4, "large", json!({"bytes": 5 << 20}));
    assert_eq!(
        large["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .len(),
        5 << 20
    );

    // A GET stream is released when its client leaves.
    let get = request(
        "GET",
        "/mcp",
        &[("accept", "text/event-stream"), ("mcp-session-id", &sid)],
        b"",
    );
    let mut stream = Client::connect(addr);
    stream.send(&get);
    assert_eq!(stream.head().0, 200);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Client::connect(addr);
        again.send(&get);
        if again.head().0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed GET stream was never released"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_request_dribbled_one_byte_at_a_time() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let sid = session(&mut c, "2025-06-18");
    let wire = post_bytes(
        Some(&sid),
        &rpc(
            1,
            "tools/call",
            json!({"name":"echo","arguments":{"text":"slowly"}}),
        ),
    );
    for b in &wire {
        c.send(std::slice::from_ref(b));
    }
    let v = c.response().json();
    assert_eq!(v["result"]["content"][0]["text"], "slowly");
    // And a client that vanishes mid-request does not disturb the next one.
    let mut gone = Client::connect(addr);
    gone.send(&wire[..wire.len() / 2]);
    drop(gone);
    assert_eq!(c.post(Some(&sid), &rpc(2, "ping", json!({}))).status, 200);
}
