//! A 2024-11-05 HTTP+SSE MCP server for tests (the transport the gateway speaks to upstreams
//! with `transport: sse`): `GET /sse` answers a chunked event stream that announces
//! `/messages?session_id=N`; POSTs there get 202 and their replies go on the stream, as the
//! Python and TypeScript SDKs' legacy servers do. Tools: `echo`, `progress` (two progress
//! notifications first), `sample` (asks the client for a sampling answer and returns its text),
//! `close` (answers, then closes the stream), `spoof` (first sends responses with ids the
//! gateway never sent), `hang` (never answers). Every POSTed message is kept for assertions.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::scripted::{read_request, response, Scripted};

/// How the server announces its endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// `/messages?session_id=N` (what the Python SDK sends).
    Path,
    /// A relative reference, `messages?session_id=N` (resolved against `/sse`).
    Relative,
    /// An absolute URL on another origin: the gateway must refuse it.
    OtherOrigin,
    /// `/messages?session_id=N`, and `initialize` is answered with a JSON-RPC error.
    RefuseInitialize,
}

#[derive(Default)]
struct State {
    /// Open event streams by session id.
    streams: HashMap<u64, Arc<Mutex<TcpStream>>>,
    next: u64,
    /// Client responses (to sampling requests) by session, for the tool that waits for them.
    answers: HashMap<u64, Sender<Value>>,
    /// Every message POSTed, in order.
    received: Vec<Value>,
    /// Streams that ended (the gateway closed them).
    closed: u64,
    /// The `traceparent` header of each POST, in order.
    traceparents: Vec<Option<String>>,
}

pub struct LegacyServer {
    pub scripted: Scripted,
    state: Arc<Mutex<State>>,
}

impl LegacyServer {
    pub fn start(announce: Announce) -> LegacyServer {
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        let scripted = Scripted::start(move |s, _| serve(s, &st, announce));
        LegacyServer { scripted, state }
    }

    /// The SSE URL (what `upstreams[].url` names).
    pub fn url(&self) -> String {
        format!("http://{}/sse", self.scripted.addr)
    }

    pub fn received(&self) -> Vec<Value> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn traceparents(&self) -> Vec<Option<String>> {
        self.state.lock().unwrap().traceparents.clone()
    }

    pub fn open_streams(&self) -> usize {
        self.state.lock().unwrap().streams.len()
    }

    pub fn closed_streams(&self) -> u64 {
        self.state.lock().unwrap().closed
    }
}

fn chunk(ev: &str) -> Vec<u8> {
    format!("{:x}\r\n{ev}\r\n", ev.len()).into_bytes()
}

fn send_event(stream: &Arc<Mutex<TcpStream>>, kind: &str, data: &str) -> bool {
    let ev = format!("event: {kind}\r\ndata: {data}\r\n\r\n");
    stream.lock().unwrap().write_all(&chunk(&ev)).is_ok()
}

fn serve(mut s: TcpStream, st: &Arc<Mutex<State>>, announce: Announce) {
    while let Some(req) = read_request(&mut s) {
        if req.method == "GET" && req.target == "/sse" {
            return sse_stream(s, st, announce);
        }
        let id = req
            .target
            .strip_prefix("/messages?session_id=")
            .and_then(|n| n.parse::<u64>().ok());
        let stream = id.and_then(|id| st.lock().unwrap().streams.get(&id).cloned());
        let (Some(id), Some(stream)) = (id, stream) else {
            let _ = s.write_all(&response("404 Not Found", &[], b"Could not find session"));
            continue;
        };
        let msg = req.json();
        {
            let mut g = st.lock().unwrap();
            g.received.push(msg.clone());
            g.traceparents
                .push(req.header("traceparent").map(str::to_string));
        }
        if s.write_all(&response("202 Accepted", &[], b"Accepted"))
            .is_err()
        {
            return;
        }
        if msg.get("method").is_none() {
            // The client's answer to a request of ours.
            if let Some(tx) = st.lock().unwrap().answers.get(&id) {
                let _ = tx.send(msg);
            }
            continue;
        }
        if msg.get("id").is_none() {
            continue;
        }
        let (tx, rx) = channel();
        st.lock().unwrap().answers.insert(id, tx);
        let st2 = st.clone();
        // Answered off the POST connection's thread, as servers do (a tool may wait).
        let refuse = announce == Announce::RefuseInitialize;
        std::thread::spawn(move || answer(&msg, &stream, rx, &st2, id, refuse));
    }
}

fn sse_stream(mut s: TcpStream, st: &Arc<Mutex<State>>, announce: Announce) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    let shared = Arc::new(Mutex::new(s.try_clone().unwrap()));
    let id = {
        let mut g = st.lock().unwrap();
        g.next += 1;
        let id = g.next;
        g.streams.insert(id, shared.clone());
        id
    };
    let endpoint = match announce {
        Announce::Path | Announce::RefuseInitialize => format!("/messages?session_id={id}"),
        Announce::Relative => format!("messages?session_id={id}"),
        Announce::OtherOrigin => format!("http://169.254.169.254/messages?session_id={id}"),
    };
    // A keep-alive comment first, as sse-starlette sends pings.
    let _ = shared.lock().unwrap().write_all(&chunk(": ping\r\n\r\n"));
    send_event(&shared, "endpoint", &endpoint);
    // The stream lives until the gateway closes it (or `close` shuts it down).
    let _ = s.set_read_timeout(None);
    let mut b = [0u8; 64];
    while matches!(std::io::Read::read(&mut s, &mut b), Ok(n) if n > 0) {}
    let mut g = st.lock().unwrap();
    g.streams.remove(&id);
    g.closed += 1;
}

fn text(id: &Value, t: &str) -> String {
    json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":t}]}}).to_string()
}

fn answer(
    msg: &Value,
    stream: &Arc<Mutex<TcpStream>>,
    rx: Receiver<Value>,
    st: &Arc<Mutex<State>>,
    session: u64,
    refuse_initialize: bool,
) {
    let id = &msg["id"];
    let reply = match msg["method"].as_str().unwrap_or("") {
        "initialize" if refuse_initialize => {
            json!({"jsonrpc":"2.0","id":id,"error":{"code":-32600,"message":"not today"}})
                .to_string()
        }
        "initialize" => json!({"jsonrpc":"2.0","id":id,"result":{
            "protocolVersion":"2024-11-05","capabilities":{"tools":{}},
            "serverInfo":{"name":"legacy-test","version":"1"}}})
        .to_string(),
        "ping" => json!({"jsonrpc":"2.0","id":id,"result":{}}).to_string(),
        "tools/list" => json!({"jsonrpc":"2.0","id":id,"result":{"tools":[
            {"name":"echo","inputSchema":{"type":"object"}},
            {"name":"progress","inputSchema":{"type":"object"}},
            {"name":"sample","inputSchema":{"type":"object"}},
            {"name":"close","inputSchema":{"type":"object"}},
            {"name":"spoof","inputSchema":{"type":"object"}},
            {"name":"hang","inputSchema":{"type":"object"}}]}})
        .to_string(),
        "tools/call" => {
            let args = &msg["params"]["arguments"];
            match msg["params"]["name"].as_str().unwrap_or("") {
                "echo" => text(id, args["text"].as_str().unwrap_or("")),
                "progress" => {
                    let token = &msg["params"]["_meta"]["progressToken"];
                    for p in [1, 2] {
                        let n = json!({"jsonrpc":"2.0","method":"notifications/progress",
                            "params":{"progressToken":token,"progress":p,"total":2}});
                        send_event(stream, "message", &n.to_string());
                    }
                    text(id, "done")
                }
                "sample" => {
                    let req = json!({"jsonrpc":"2.0","id":"s-1","method":"sampling/createMessage",
                        "params":{"messages":[{"role":"user","content":{"type":"text","text":"hi"}}],"maxTokens":5}});
                    send_event(stream, "message", &req.to_string());
                    match rx.recv_timeout(Duration::from_secs(20)) {
                        Ok(a) => text(id, a["result"]["content"]["text"].as_str().unwrap_or("?")),
                        Err(_) => text(id, "no answer"),
                    }
                }
                "close" => {
                    send_event(stream, "message", &text(id, "closing"));
                    let _ = stream.lock().unwrap().shutdown(std::net::Shutdown::Both);
                    return;
                }
                "spoof" => {
                    for forged in [json!("tgl.0.4000000000.1"), json!(12345), json!("tgl.9999.1.1")] {
                        send_event(stream, "message", &text(&forged, "forged"));
                    }
                    text(id, "real")
                }
                "hang" => return,
                other => json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":format!("Unknown tool: {other}")}}).to_string(),
            }
        }
        m => json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":format!("no {m}")}})
            .to_string(),
    };
    let _ = (st, session);
    send_event(stream, "message", &reply);
}
