//! One request through the gateway's own request path, over an in-memory connection: an
//! AF_UNIX socketpair whose one end `proxy::serve` serves like any client connection (carried
//! as a `tls::Stream::Plain`: the request path only reads, writes, polls and shuts the socket
//! down, which are the same calls on any stream socket; `set_nodelay` and `peer_addr` fail and
//! are ignored), and whose other end is read here like an upstream's reply. Nothing of the
//! request path is copied or bypassed: routing, sessions, federation, refusals, metrics and
//! the access log all apply, and the hot path is unchanged (it never sees this module).

use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{parse_response, Framing, ResponseHead};
use crate::http::pool::UpstreamConn;
use crate::http::sse;
use crate::http::Conn;
use crate::tls::Stream;

use super::super::state::WorkerState;

/// Largest reply head the request path writes is far below this.
const MAX_HEAD: usize = 64 * 1024;
/// Largest message relayed onto a legacy stream (a tool result can be large).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// The request path bounds every wait itself (upstream timeouts); this only keeps a bug from
/// leaving a task behind forever.
const HEAD_WAIT: Duration = Duration::from_secs(24 * 3600);

fn socket(s: std::os::unix::net::UnixStream) -> std::io::Result<Stream> {
    s.set_nonblocking(true)?;
    // SAFETY: the fd comes straight from `into_raw_fd`, so this is its only owner. A stream
    // socket of another family under `TcpStream`: see the module comment.
    let std_tcp = unsafe { std::net::TcpStream::from_raw_fd(s.into_raw_fd()) };
    Ok(Stream::Plain(monoio::net::TcpStream::from_std(std_tcp)?))
}

/// Sends `req` (a whole HTTP/1.1 request) through the request path on worker `w`; returns the
/// connection positioned after the reply head.
pub async fn exchange(
    w: &Rc<WorkerState>,
    req: Vec<u8>,
) -> Result<(UpstreamConn, ResponseHead), String> {
    let (served, ours) =
        std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let served = socket(served).map_err(|e| format!("socketpair: {e}"))?;
    let ours = socket(ours).map_err(|e| format!("socketpair: {e}"))?;
    monoio::spawn(super::super::serve(w.clone(), served));
    let mut conn = Conn::new(ours, 8 * 1024);
    let (res, _) = conn.write_all(req).await;
    res.map_err(|e| format!("writing the request: {e}"))?;
    let deadline = w.shutdown.now() + HEAD_WAIT;
    loop {
        if !conn.buffered().is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            match parse_response(conn.buffered(), &mut headers, MAX_HEAD, false) {
                Ok(Some(h)) if h.status < 200 => conn.consume(h.len),
                Ok(Some(h)) => return Ok((conn, h)),
                Ok(None) => {}
                Err(e) => return Err(format!("unreadable reply head: {}", e.reason)),
            }
        }
        let read = monoio::select! {
            r = conn.fill(0) => r,
            _ = w.shutdown.deadline(deadline) => return Err("no reply".into()),
        };
        match read {
            Ok(0) => return Err("closed before a reply".into()),
            Err(e) => return Err(format!("reading the reply: {e}")),
            Ok(_) => {}
        }
    }
}

/// Reads the reply body after `head` and hands each JSON-RPC message in it to `on`: the body
/// of a JSON reply, or the data of each event of an event stream (events without data, like
/// priming events, carry no message). Returns when the body ends.
pub async fn messages(
    conn: &mut UpstreamConn,
    head: &ResponseHead,
    mut on: impl FnMut(&[u8]),
) -> Result<(), String> {
    let is_sse = head.is_sse(conn.buffered());
    conn.consume(head.len);
    let mut chunks = ChunkedDecoder::new(MAX_HEAD);
    let mut events = sse::Decoder::new(MAX_MESSAGE);
    let mut left = match head.framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut done = head.framing == Framing::None || left == 0;
    let mut whole = Vec::new();
    let mut payload = Vec::new();
    loop {
        payload.clear();
        let buf = conn.buffered();
        let used = match head.framing {
            Framing::Length(_) => {
                let n = left.min(buf.len() as u64) as usize;
                payload.extend_from_slice(&buf[..n]);
                left -= n as u64;
                done = left == 0;
                n
            }
            Framing::Chunked => {
                let n = chunks
                    .feed(buf, |d| payload.extend_from_slice(d))
                    .map_err(|e| format!("malformed chunked reply: {e}"))?;
                done = chunks.is_done();
                n
            }
            Framing::UntilClose => {
                payload.extend_from_slice(buf);
                buf.len()
            }
            Framing::None => 0,
        };
        conn.consume(used);
        if is_sse {
            events
                .feed(&payload, |item| {
                    if let sse::Item::Event(e) = item {
                        if !e.data.is_empty() {
                            on(e.data);
                        }
                    }
                })
                .map_err(|e| format!("unreadable event stream: {e:?}"))?;
        } else {
            whole.extend_from_slice(&payload);
            if whole.len() > MAX_MESSAGE {
                return Err("reply larger than a legacy stream carries".into());
            }
        }
        if done {
            break;
        }
        match conn.fill(0).await {
            Ok(0) if head.framing == Framing::UntilClose => break,
            Ok(0) => return Err("closed mid-reply".into()),
            Err(e) => return Err(format!("reading the reply: {e}")),
            Ok(_) => {}
        }
    }
    if !is_sse && !whole.trim_ascii().is_empty() {
        on(&whole);
    }
    Ok(())
}
