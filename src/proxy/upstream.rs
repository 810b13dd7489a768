//! The upstream half of the request path: send a request (pooled connection, one retry when a
//! reused connection turns out stale before any response byte), read the response head, and
//! relay the body to the client as it arrives (SSE event by event, never buffering a stream).

use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::error::{Error, Kind};
use crate::http::chunked::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use crate::http::head::{parse_response, Framing, ResponseHead};
use crate::http::pool::{connect, UpstreamConn};
use crate::http::Conn;

use super::state::WorkerState;

/// Upstream response heads larger than this are refused.
const MAX_UPSTREAM_HEAD: usize = 64 * 1024;
const UPSTREAM_HEADERS: usize = 128;

/// The client side of a connection: its buffered reader and reusable write buffers.
pub struct Client {
    pub conn: Conn<TcpStream>,
    /// Bytes to write to the client.
    pub out: Vec<u8>,
    /// The request being sent upstream.
    pub up_out: Vec<u8>,
    /// Decoded chunked request bodies (rare: most clients send Content-Length).
    pub body: Vec<u8>,
    pub write_timeout: Duration,
}

impl Client {
    pub fn new(stream: TcpStream, write_timeout: Duration) -> Self {
        Client {
            conn: Conn::new(stream, 16 * 1024),
            out: Vec::with_capacity(16 * 1024),
            up_out: Vec::with_capacity(4 * 1024),
            body: Vec::new(),
            write_timeout,
        }
    }

    /// Writes `out` to the client within the write timeout. An error means: close the connection.
    pub async fn flush(&mut self) -> Result<(), ()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.out);
        match monoio::time::timeout(self.write_timeout, self.conn.write_all(buf)).await {
            Ok((Ok(()), mut b)) => {
                b.clear();
                self.out = b;
                Ok(())
            }
            _ => Err(()),
        }
    }
}

enum HeadRead {
    Closed {
        got_bytes: bool,
        err: Option<std::io::Error>,
    },
    Timeout,
    Invalid(&'static str),
}

async fn read_response_head(
    conn: &mut UpstreamConn,
    deadline: Instant,
) -> Result<ResponseHead, HeadRead> {
    loop {
        if !conn.buffered().is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; UPSTREAM_HEADERS];
            match parse_response(conn.buffered(), &mut headers, MAX_UPSTREAM_HEAD, false) {
                Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                    conn.consume(h.len); // interim response (100 Continue, 103 Early Hints)
                    continue;
                }
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(e) => return Err(HeadRead::Invalid(e.reason)),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, conn.fill(0)).await {
            Ok(Ok(0)) => {
                return Err(HeadRead::Closed {
                    got_bytes: !conn.buffered().is_empty(),
                    err: None,
                })
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(HeadRead::Closed {
                    got_bytes: !conn.buffered().is_empty(),
                    err: Some(e),
                })
            }
            Err(_) => return Err(HeadRead::Timeout),
        }
    }
}

/// Sends `req` to upstream `u` and returns the connection positioned after the response head.
/// The request buffer is always handed back.
pub async fn exchange(
    w: &WorkerState,
    u: usize,
    mut req: Vec<u8>,
) -> (Result<(UpstreamConn, ResponseHead), Error>, Vec<u8>) {
    let up = &w.gw.upstreams[u];
    let mut retried = false;
    loop {
        let now = Instant::now();
        let pooled = w.pool.borrow_mut().take(u, up.idle_timeout, now);
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => match connect(&up.addrs, up.connect_timeout).await {
                Ok(s) => Conn::new(s, 16 * 1024),
                Err(e) => {
                    let msg = format!("upstream \"{}\" is unavailable: {e}", up.name);
                    return (Err(Error::new(Kind::UpstreamUnavailable, msg)), req);
                }
            },
        };
        let (res, back) = conn.write_all(req).await;
        req = back;
        let deadline = Instant::now() + up.request_timeout;
        let outcome = match res {
            Err(e) => Err(HeadRead::Closed {
                got_bytes: false,
                err: Some(e),
            }),
            Ok(()) => read_response_head(&mut conn, deadline).await,
        };
        match outcome {
            Ok(head) => return (Ok((conn, head)), req),
            // A pooled connection the upstream closed while idle: nothing was processed, retry once.
            Err(HeadRead::Closed {
                got_bytes: false, ..
            }) if reused && !retried => {
                retried = true;
                continue;
            }
            Err(HeadRead::Closed { err, .. }) => {
                let why = err.map_or("connection closed before a response".to_string(), |e| {
                    e.to_string()
                });
                let msg = format!("upstream \"{}\" is unavailable: {why}", up.name);
                return (Err(Error::new(Kind::UpstreamUnavailable, msg)), req);
            }
            Err(HeadRead::Timeout) => {
                let msg = format!(
                    "upstream \"{}\" did not answer within {} ms (upstreams[].request_timeout)",
                    up.name,
                    up.request_timeout.as_millis()
                );
                return (Err(Error::new(Kind::UpstreamTimeout, msg)), req);
            }
            Err(HeadRead::Invalid(why)) => {
                let msg = format!("upstream \"{}\" sent an invalid response: {why}", up.name);
                return (Err(Error::new(Kind::UpstreamProtocol, msg)), req);
            }
        }
    }
}

/// Reads a whole response body into `into` (bounded by `max`). Used where the gateway must see
/// the complete reply (initialize), never for tool results.
pub async fn read_full_body(
    conn: &mut UpstreamConn,
    head: &ResponseHead,
    max: usize,
    timeout: Duration,
    into: &mut Vec<u8>,
) -> Result<(), &'static str> {
    let deadline = Instant::now() + timeout;
    let mut dec = ChunkedDecoder::new(MAX_UPSTREAM_HEAD);
    let mut left = match head.framing {
        Framing::None => return Ok(()),
        Framing::Length(n) if n as usize > max => return Err("response body too large"),
        Framing::Length(n) => n as usize,
        _ => usize::MAX,
    };
    loop {
        let buf = conn.buffered();
        let used = match head.framing {
            Framing::Length(_) => {
                let take = left.min(buf.len());
                into.extend_from_slice(&buf[..take]);
                left -= take;
                take
            }
            Framing::Chunked => dec
                .feed(buf, |d| into.extend_from_slice(d))
                .map_err(|_| "malformed chunked body")?,
            _ => {
                into.extend_from_slice(buf);
                buf.len()
            }
        };
        conn.consume(used);
        if into.len() > max {
            return Err("response body too large");
        }
        if left == 0 || dec.is_done() {
            return Ok(());
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(wait, conn.fill(left.min(1 << 20))).await {
            Ok(Ok(0)) if head.framing == Framing::UntilClose => return Ok(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Err("upstream closed the connection mid-body"),
            Ok(Ok(_)) => {}
            Err(_) => return Err("upstream body timed out"),
        }
    }
}

/// How the body goes to the client.
#[derive(Clone, Copy)]
pub struct RelayMode {
    /// The client speaks HTTP/1.0: no chunked encoding, close-delimited.
    pub http10: bool,
    /// Per-read timeout on the upstream; `None` for event streams, which may idle.
    pub read_timeout: Option<Duration>,
}

/// Why a relay stopped early. The client connection must be closed either way.
#[derive(Debug)]
pub enum RelayError {
    Client,
    Upstream(&'static str),
}

/// Relays the body of `head` (its head already consumed from `up`), after whatever `c.out`
/// holds (the client's response head). Returns whether `up` can go back to the pool.
pub async fn relay_body(
    c: &mut Client,
    up: &mut UpstreamConn,
    head: &ResponseHead,
    mode: RelayMode,
) -> Result<bool, RelayError> {
    let mut dec = ChunkedDecoder::new(MAX_UPSTREAM_HEAD);
    let mut left = match head.framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    if head.framing == Framing::None || left == 0 {
        c.flush().await.map_err(|_| RelayError::Client)?;
        return Ok(head.keep_alive);
    }
    loop {
        let buf = up.buffered();
        let used = match head.framing {
            Framing::Length(_) => {
                let take = (left.min(buf.len() as u64)) as usize;
                c.out.extend_from_slice(&buf[..take]);
                left -= take as u64;
                take
            }
            Framing::Chunked if mode.http10 => dec
                .feed(buf, |d| c.out.extend_from_slice(d))
                .map_err(|_| RelayError::Upstream("malformed chunked body"))?,
            Framing::Chunked => {
                let k = dec
                    .feed(buf, |_| {})
                    .map_err(|_| RelayError::Upstream("malformed chunked body"))?;
                c.out.extend_from_slice(&buf[..k]);
                k
            }
            _ => {
                if mode.http10 {
                    c.out.extend_from_slice(buf);
                } else {
                    encode_chunk(&mut c.out, buf);
                }
                buf.len()
            }
        };
        up.consume(used);
        let finished = left == 0 || dec.is_done();
        c.flush().await.map_err(|_| RelayError::Client)?;
        if finished {
            return Ok(head.keep_alive);
        }
        let want = if left == u64::MAX {
            0
        } else {
            left.min(1 << 20) as usize
        };
        let read = match mode.read_timeout {
            Some(t) => match monoio::time::timeout(t, up.fill(want)).await {
                Ok(r) => r,
                Err(_) => return Err(RelayError::Upstream("upstream body timed out")),
            },
            None => up.fill(want).await,
        };
        match read {
            Ok(0) if head.framing == Framing::UntilClose => {
                if !mode.http10 {
                    c.out.extend_from_slice(LAST_CHUNK);
                    c.flush().await.map_err(|_| RelayError::Client)?;
                }
                return Ok(false);
            }
            Ok(0) | Err(_) => {
                return Err(RelayError::Upstream(
                    "upstream closed the connection mid-body",
                ))
            }
            Ok(_) => {}
        }
    }
}
