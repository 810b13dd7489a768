//! A stand-in for `tollgate demo-upstream`, used by `compare` and smoke.sh only when the real one is not
//! available (same flags, same ready file, same tools: echo, large {bytes}, progress {steps, interval_ms}).
//! It is a measuring fixture, not a conformant MCP server: no Origin checks, sessions are not validated.

use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

pub struct Opts {
    pub listen: String,
    pub ready_file: Option<String>,
    pub workers: usize,
    pub sse: bool,
    pub tools: usize,
}

pub fn main(o: Opts) -> anyhow::Result<()> {
    let std_l = std::net::TcpListener::bind(&o.listen)?;
    let local = std_l.local_addr()?;
    drop(std_l);
    // Re-bind each worker with SO_REUSEPORT on the port we got.
    let mut handles = Vec::new();
    for _ in 0..o.workers.max(1) {
        let sse = o.sse;
        let n = o.tools;
        handles.push(std::thread::spawn(move || {
            crate::gen::with_runtime(move || async move {
                let opts = ListenerOpts::default()
                    .reuse_port(true)
                    .reuse_addr(true)
                    .backlog(4096);
                let l = TcpListener::bind_with_config(local, &opts).expect("bind stand-in");
                let tools = Rc::new(tools_list(n));
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        continue;
                    };
                    let tools = tools.clone();
                    monoio::spawn(async move {
                        let _ = serve_conn(s, sse, tools).await;
                    });
                }
            })
        }));
    }
    std::thread::sleep(Duration::from_millis(50));
    let ready = format!(
        "{{\"listen\":\"{local}\",\"pid\":{},\"standin\":true}}\n",
        std::process::id()
    );
    match &o.ready_file {
        Some(p) => {
            let tmp = format!("{p}.tmp");
            std::fs::File::create(&tmp)?.write_all(ready.as_bytes())?;
            std::fs::rename(&tmp, p)?;
        }
        None => print!("{ready}"),
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn tools_list(pad: usize) -> String {
    let mut tools = vec![
        serde_json::json!({"name":"echo","description":"Echo the text back","inputSchema":{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}}),
        serde_json::json!({"name":"large","description":"Return a text result of `bytes` bytes","inputSchema":{"type":"object","properties":{"bytes":{"type":"integer"}}}}),
        serde_json::json!({"name":"progress","description":"Send `steps` progress notifications, `interval_ms` apart","inputSchema":{"type":"object","properties":{"steps":{"type":"integer"},"interval_ms":{"type":"integer"}}}}),
    ];
    for i in 0..pad {
        tools.push(serde_json::json!({"name":format!("synthetic_{i:05}"),"description":"A synthetic tool that pads the list","inputSchema":{"type":"object","properties":{"x":{"type":"string"}}}}));
    }
    serde_json::json!({"tools": tools}).to_string()
}

async fn serve_conn(mut s: TcpStream, sse_all: bool, tools: Rc<String>) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // Read one request (head + Content-Length body).
        let (head_len, clen) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let cl = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .unwrap_or(0);
                break (n, cl);
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(8192);
            }
            let len = buf.len();
            let cap = buf.capacity();
            let (r, sl) = s
                .read(monoio::buf::IoBufMut::slice_mut(buf, len..cap))
                .await;
            buf = sl.into_inner();
            if r? == 0 {
                return Ok(());
            }
        };
        while buf.len() < head_len + clen {
            buf.reserve(clen);
            let len = buf.len();
            let cap = buf.capacity();
            let (r, sl) = s
                .read(monoio::buf::IoBufMut::slice_mut(buf, len..cap))
                .await;
            buf = sl.into_inner();
            if r? == 0 {
                return Ok(());
            }
        }
        let body: Vec<u8> = buf[head_len..head_len + clen].to_vec();
        buf.drain(..head_len + clen);
        handle(&mut s, &body, sse_all, &tools).await?;
    }
}

async fn write(s: &mut TcpStream, v: Vec<u8>) -> std::io::Result<()> {
    let (r, _) = s.write_all(v).await;
    r.map(|_| ())
}

async fn handle(s: &mut TcpStream, body: &[u8], sse_all: bool, tools: &str) -> std::io::Result<()> {
    let msg: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            let b =
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#;
            return write(s, json_response(400, b, None)).await;
        }
    };
    let id = msg.get("id").cloned();
    let method = msg.get("method").and_then(|m| m.as_str()).unwrap_or("");
    let Some(id) = id else {
        return write(
            s,
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_vec(),
        )
        .await;
    };
    let params = msg.get("params");
    let idj = id.to_string();
    let ok = |result: &str| format!("{{\"jsonrpc\":\"2.0\",\"id\":{idj},\"result\":{result}}}");
    let text_result =
        |t: &str| ok(&serde_json::json!({"content":[{"type":"text","text":t}]}).to_string());
    let (out, session, progress): (String, Option<String>, Option<(u64, u64, serde_json::Value)>) = match method {
        "initialize" => {
            let v = params
                .and_then(|p| p.get("protocolVersion"))
                .and_then(|v| v.as_str())
                .filter(|v| ["2025-03-26", "2025-06-18", "2025-11-25"].contains(v))
                .unwrap_or("2025-06-18");
            let sid = format!("{:016x}{:016x}", rand64(), rand64());
            (
                ok(&format!(
                    "{{\"protocolVersion\":\"{v}\",\"capabilities\":{{\"tools\":{{\"listChanged\":false}}}},\"serverInfo\":{{\"name\":\"tollgate-load-standin\",\"version\":\"0.1.0\"}}}}"
                )),
                Some(sid),
                None,
            )
        }
        "ping" => (ok("{}"), None, None),
        "tools/list" => (ok(tools), None, None),
        "tools/call" => {
            let name = params.and_then(|p| p.get("name")).and_then(|n| n.as_str()).unwrap_or("");
            let args = params.and_then(|p| p.get("arguments"));
            let num = |k: &str, d: u64| args.and_then(|a| a.get(k)).and_then(|v| v.as_u64()).unwrap_or(d);
            match name {
                "echo" => {
                    let t = args.and_then(|a| a.get("text")).and_then(|t| t.as_str()).unwrap_or("");
                    (text_result(t), None, None)
                }
                "large" => (text_result(&"x".repeat(num("bytes", 1024).min(64 << 20) as usize)), None, None),
                "progress" => {
                    let tok = params
                        .and_then(|p| p.get("_meta"))
                        .and_then(|m| m.get("progressToken"))
                        .cloned()
                        .unwrap_or(serde_json::Value::Null);
                    (text_result("done"), None, Some((num("steps", 3), num("interval_ms", 10), tok)))
                }
                other => (
                    format!("{{\"jsonrpc\":\"2.0\",\"id\":{idj},\"error\":{{\"code\":-32602,\"message\":\"Unknown tool: {other}\"}}}}"),
                    None,
                    None,
                ),
            }
        }
        _ => (
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{idj},\"error\":{{\"code\":-32601,\"message\":\"Method not found\"}}}}"),
            None,
            None,
        ),
    };
    if progress.is_none() && !sse_all {
        return write(s, json_response(200, &out, session.as_deref())).await;
    }
    // SSE: chunked, one chunk per event, closed after the response.
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n",
    );
    if let Some(sid) = &session {
        head.push_str(&format!("Mcp-Session-Id: {sid}\r\n"));
    }
    head.push_str("\r\n");
    write(s, head.into_bytes()).await?;
    if let Some((steps, interval, tok)) = progress {
        for i in 1..=steps {
            monoio::time::sleep(Duration::from_millis(interval)).await;
            let n = serde_json::json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":tok,"progress":i,"total":steps}});
            write(s, chunk(&format!("data: {n}\n\n"))).await?;
        }
    }
    let mut last = chunk(&format!("data: {out}\n\n"));
    last.extend_from_slice(b"0\r\n\r\n");
    write(s, last).await
}

fn chunk(data: &str) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data.as_bytes());
    v.extend_from_slice(b"\r\n");
    v
}

fn json_response(status: u16, body: &str, session: Option<&str>) -> Vec<u8> {
    let reason = if status == 200 { "OK" } else { "Bad Request" };
    let mut h = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(sid) = session {
        h.push_str(&format!("Mcp-Session-Id: {sid}\r\n"));
    }
    h.push_str("\r\n");
    let mut v = h.into_bytes();
    v.extend_from_slice(body.as_bytes());
    v
}

fn rand64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}
