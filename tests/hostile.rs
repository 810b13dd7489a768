//! The hostile regression suite: tollgate's own cases in the seven classes an outside red team
//! attacked, each run against the real binary on **both** I/O drivers. Every case is one function
//! taking a `Driver`; `drivers!(case)` makes `case::io_uring` and `case::legacy` tests of it, and
//! the harness checks the workers really run on the driver asked for (io_uring does not silently
//! fall back to epoll here).
//!
//! Run: `cargo test --release --test hostile` (step `hostile` of `scripts/test.sh`); it also runs
//! in debug under `cargo test --all-targets`. Filter one driver with `-- io_uring` / `-- legacy`.
//! Timeouts are configured short (idle, head and write 1 s) and every wait is bounded; no case
//! asserts "faster than X", only "closed / answered within a generous bound".
//!
//! What each class covers (one file each in `tests/hostile/`):
//!
//! * **framing** (`framing.rs`): the request line and head. Absolute-form targets are served
//!   like their path, but not for a foreign authority; a request line over
//!   `limits.max_request_line_bytes` (default 8 KiB) gets 414; `Expect: 100-continue` gets an
//!   interim 100 on HTTP/1.1 and none on HTTP/1.0; smuggling shapes (CL+TE, conflicting or
//!   malformed Content-Length, any transfer coding but a single `chunked`, chunked on HTTP/1.0,
//!   obs-fold, bare CR, NUL, whitespace before the colon, missing or doubled Host, malformed chunk
//!   sizes) are refused and the connection closed with nothing after the refusal; bare-LF heads
//!   never desynchronise a pipeline.
//! * **exhaustion** (`exhaustion.rs`): what a connection may hold and for how long. A silent
//!   connection is closed after `limits.idle_timeout` and its descriptor released
//!   (`/proc/<pid>/fd` back to baseline, `tollgate_connections_open` 0); a head-read timeout is a
//!   408 *and* a close, a body-read timeout too; `listen.max_connections_per_worker` holds over
//!   three rounds of silent clients (503 + close beyond the cap, descriptors back to baseline);
//!   clients that never read an 8 MiB result are dropped after `limits.write_timeout` (descriptors
//!   and RSS come back down); an SSE reply to HTTP/1.0 or to `Connection: close` ends in a close
//!   (RFC 9112 §6.3, §9.6); the gateway's upstream socket is closed after an upstream head
//!   timeout, a stall mid-body and a short body (the upstream sees EOF); chunk extensions count
//!   against `limits.max_body_bytes` as raw bytes (refused before RSS grows by more than a few MB).
//! * **scanner** (`scanner.rs`): hostile JSON bodies end to end (duplicate keys at the levels the
//!   gateway reads, escaped duplicate spellings, lone surrogates, deep nesting, BOM, trailing
//!   bytes, huge numbers, invalid UTF-8, method + result, bad `jsonrpc`): refused with -32700 or
//!   -32600 as the scanner decides, never forwarded, and the connection stays usable.
//! * **sessions** (`sessions.rs`): missing id → 400 with the request id; tampered, truncated,
//!   re-prefixed, oversized and non-ASCII ids → 404; expired (`session.ttl`) → 404; an id from
//!   another endpoint or another instance → 404; DELETE, then any reuse (POST, GET, DELETE, other
//!   connections) → 404.
//! * **host_origin** (`host_origin.rs`): Host values that are not valid authorities
//!   (`[::1]evil.com`, `[::1].evil.com`, `[::1]@evil.com`, `localhost:abc`, `localhost:18500x`)
//!   → 400; the same shapes in Origin are refused (400/403); foreign hosts and origins → 403;
//!   loopback hosts and origins still pass.
//! * **upstream** (`upstream.rs`): a stray upstream response (extra bytes after a reply, written
//!   while the connection idles in the pool, or written on connect) never reaches another client;
//!   upstreams that close idle keep-alive connections after 1 s, or announce
//!   `Keep-Alive: timeout=1`, lose no call; `101 Switching Protocols` and a response head over
//!   64 KiB in one write are upstream protocol errors; an HTTP 500 with a text body or a 200 that
//!   is not JSON becomes a JSON-RPC error naming the upstream and its status, a JSON-RPC error
//!   reply is relayed as is; `initialize` works when the upstream echoes the id in another
//!   spelling (`1E2`, `"\u0031"`, `-0`, `"a\/b"`) and the client gets its own id bytes back.
//! * **shutdown** (`shutdown.rs`): SIGTERM with an in-flight slow call: idle connections are
//!   closed first, the call completes, the process exits 0; a call longer than
//!   `shutdown.drain_timeout` does not keep the process alive.

mod harness;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use harness::{session, Demo, Driver, Gateway, GatewayBuilder};

/// Makes `$case::io_uring` and `$case::legacy` tests of `fn $case(Driver)`.
macro_rules! drivers {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn io_uring() {
                super::$case(crate::harness::Driver::IoUring)
            }
            #[test]
            fn legacy() {
                super::$case(crate::harness::Driver::Legacy)
            }
        }
    )*};
}

#[path = "hostile/exhaustion.rs"]
mod exhaustion;
#[path = "hostile/framing.rs"]
mod framing;
#[path = "hostile/host_origin.rs"]
mod host_origin;
#[path = "hostile/scanner.rs"]
mod scanner;
#[path = "hostile/sessions.rs"]
mod sessions;
#[path = "hostile/shutdown.rs"]
mod shutdown;
#[path = "hostile/upstream.rs"]
mod upstream;

/// A generous bound for anything that should happen "soon" (a close after a 1 s timeout, a reply).
const BOUND: Duration = Duration::from_secs(8);

/// A gateway on `d` with one worker and short timeouts, so every wait in a case is short.
fn builder(d: Driver) -> GatewayBuilder {
    Gateway::builder()
        .driver(d)
        .workers(1)
        .limit("idle_timeout", "1s")
        .limit("header_read_timeout", "1s")
        .limit("body_read_timeout", "2s")
        .limit("write_timeout", "1s")
}

/// The demo upstream (its own process) and a gateway on `d` in front of it at `/mcp`.
fn with_demo(d: Driver) -> (Demo, Gateway) {
    let demo = Demo::start(&[]);
    let gw = builder(d)
        .upstream("demo", &demo.url())
        .serve("/mcp", "demo")
        .start();
    (demo, gw)
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"hostile","version":"1"}}}"#;

/// A complete request: `first` is the request line without CRLF; the head gets `headers` and a
/// Content-Length for `body` (pass your own framing headers and an empty body to frame by hand).
fn request(first: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{first}\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

/// Headers of an MCP POST carrying `session` (if any).
fn mcp_headers(session: Option<&str>) -> Vec<(&str, &str)> {
    let mut h = vec![
        ("Host", "localhost"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2025-06-18"),
    ];
    if let Some(s) = session {
        h.push(("Mcp-Session-Id", s));
    }
    h
}

/// Connects, writes `bytes`, and reads until the gateway closes or `bound` passes.
/// `Ok`: closed, with what arrived; `Err`: still open at the bound, with what arrived.
fn exchange(addr: SocketAddr, bytes: &[u8], bound: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    // The gateway may refuse and close before reading everything: a failed write is fine.
    let _ = s.write_all(bytes);
    harness::read_until_closed(&mut s, Instant::now() + bound)
}

/// One response split off the front of raw bytes: (status, head, body, rest). Content-Length or
/// chunked bodies; anything else takes the rest of the bytes.
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

fn split_response(bytes: &[u8]) -> Option<(RawResponse, &[u8])> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let lower = head.to_ascii_lowercase();
    let header = |name: &str| {
        lower
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let rest = &bytes[end..];
    if (100..200).contains(&status) {
        let r = RawResponse {
            status,
            head,
            body: vec![],
        };
        return Some((r, rest));
    }
    if let Some(n) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
        let n = n.min(rest.len());
        let r = RawResponse {
            status,
            head,
            body: rest[..n].to_vec(),
        };
        return Some((r, &rest[n..]));
    }
    if header("transfer-encoding:").is_some_and(|v| v == "chunked") {
        let mut body = vec![];
        let mut at = 0;
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size = std::str::from_utf8(&rest[at..line_end]).ok()?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // No trailers from the gateway: the final CRLF.
                at = (at + 2).min(rest.len());
                let r = RawResponse { status, head, body };
                return Some((r, &rest[at..]));
            }
            body.extend_from_slice(rest.get(at..at + size)?);
            at += size + 2;
        }
    }
    let r = RawResponse {
        status,
        head,
        body: rest.to_vec(),
    };
    Some((r, &[]))
}

/// Every response in `bytes`, in order (interim 1xx included).
fn split_responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut out = vec![];
    while let Some((r, rest)) = split_response(bytes) {
        out.push(r);
        bytes = rest;
    }
    out
}

/// Shows raw bytes in a failure message (CRLFs visible, long runs cut).
fn show(bytes: &[u8]) -> String {
    let t = String::from_utf8_lossy(bytes).replace("\r\n", "⏎");
    if t.chars().count() > 320 {
        let head: String = t.chars().take(240).collect();
        let tail: String = t.chars().skip(t.chars().count() - 60).collect();
        format!("{head} … {tail}")
    } else {
        t
    }
}

/// Collects what went wrong, so one run reports every broken expectation of a case.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, r: Result<(), String>) {
        if let Err(e) = r {
            self.0.push(e);
        }
    }
    fn push(&mut self, e: String) {
        self.0.push(e);
    }
    fn assert_none(self, what: &str) {
        assert!(self.0.is_empty(), "{what}:\n- {}", self.0.join("\n- "));
    }
}

/// The gateway's socket descriptors, polled until at most `baseline` or `bound` passes.
/// Returns a description of what it still holds on failure.
fn sockets_back_to(gw: &Gateway, baseline: usize, bound: Duration) -> Result<(), String> {
    let mut last = vec![];
    if harness::eventually(bound, || {
        last = gw.socket_fds();
        last.len() <= baseline
    }) {
        Ok(())
    } else {
        Err(format!(
            "gateway still holds {} sockets (baseline {baseline}) {bound:?} later:\n  {}",
            last.len(),
            last.join("\n  ")
        ))
    }
}

/// Polls `tollgate_connections_open` until it reads 0.
fn connections_drop_to_zero(gw: &Gateway, bound: Duration) -> Result<(), String> {
    let mut last = -1.0;
    if harness::eventually(bound, || {
        last = gw.connections_open();
        last == 0.0
    }) {
        Ok(())
    } else {
        Err(format!(
            "tollgate_connections_open is {last} {bound:?} later"
        ))
    }
}

/// The gateway's socket count once nothing is connected (listeners, admin, pooled upstreams):
/// the least of a few samples, so an admin scrape still closing is not counted in.
fn settled_sockets(gw: &Gateway) -> usize {
    connections_drop_to_zero(gw, BOUND).unwrap();
    let mut least = usize::MAX;
    for _ in 0..12 {
        least = least.min(gw.socket_fds().len());
        std::thread::sleep(Duration::from_millis(25));
    }
    least
}
