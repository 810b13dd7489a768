//! A scripted upstream: a raw-TCP listener on 127.0.0.1 whose every byte a test decides, for
//! replies no real MCP server would send (stalls, short bodies, stray responses, oversized heads).
//! Each accepted connection runs the test's handler on its own thread. `mcp_basics` answers
//! `initialize` and notifications like a well-behaved server, so a session through the gateway can
//! be opened before the misbehaviour starts.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The JSON body (`Null` when there is none or it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// The JSON-RPC method ("" for responses and non-JSON bodies).
    pub fn rpc_method(&self) -> String {
        self.json()["method"].as_str().unwrap_or("").to_string()
    }
    pub fn id(&self) -> Value {
        self.json()["id"].clone()
    }
    /// `params.name` of a tools/call.
    pub fn tool(&self) -> String {
        self.json()["params"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    /// `params.arguments.text` of a tools/call.
    pub fn text_arg(&self) -> String {
        self.json()["params"]["arguments"]["text"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// Reads one request (head + Content-Length body). `None` on EOF, error or read timeout.
pub fn read_request(s: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap_or(0));
    while buf.len() < head_end + len {
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Some(Request {
        method,
        target,
        headers,
        body: buf[head_end..head_end + len].to_vec(),
    })
}

/// A complete response: status line (e.g. "200 OK"), headers, and a Content-Length body.
pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `resp` with one more header line after its status line.
pub fn with_header(resp: &[u8], name: &str, value: &str) -> Vec<u8> {
    let at = resp
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(resp.len(), |p| p + 2);
    let mut out = resp[..at].to_vec();
    out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    out.extend_from_slice(&resp[at..]);
    out
}

/// `200 OK`, `application/json`, upstream session `up-1`.
pub fn json_response(body: &str) -> Vec<u8> {
    response(
        "200 OK",
        &[
            ("Content-Type", "application/json"),
            ("Mcp-Session-Id", "up-1"),
        ],
        body.as_bytes(),
    )
}

pub fn rpc_result(id: &Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

/// A tools/call result with one text content.
pub fn text_result(id: &Value, text: &str) -> String {
    rpc_result(id, json!({"content": [{"type": "text", "text": text}]}))
}

/// The `result` of an initialize that negotiated 2025-06-18.
pub fn initialize_result() -> Value {
    json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
           "serverInfo": {"name": "scripted", "version": "1"}})
}

/// Answers `initialize` and notifications (202) like a well-behaved server; `None` for the rest.
pub fn mcp_basics(req: &Request) -> Option<Vec<u8>> {
    let v = req.json();
    if v.get("id").is_none() {
        return Some(response("202 Accepted", &[], b""));
    }
    if v["method"] == "initialize" {
        return Some(json_response(&rpc_result(&v["id"], initialize_result())));
    }
    None
}

/// The listener. Dropping it stops accepting (connections already handed out run on).
pub struct Scripted {
    pub addr: SocketAddr,
    /// How many connections were accepted so far.
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Scripted {
    /// Runs `handler(stream, n)` on its own thread for the `n`th accepted connection (from 0).
    /// Streams have a 30 s read timeout, so a forgotten handler ends on its own.
    pub fn start<F>(handler: F) -> Scripted
    where
        F: Fn(TcpStream, usize) + Send + Sync + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            std::thread::spawn(move || {
                for s in l.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(s) = s else { continue };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = s.set_nodelay(true);
                    let n = accepted.fetch_add(1, Ordering::AcqRel);
                    let h = handler.clone();
                    std::thread::spawn(move || h(s, n));
                }
            });
        }
        Scripted {
            addr,
            accepted,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}
