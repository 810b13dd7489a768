//! One request through the gateway's own request path, over a connection inside the worker:
//! a loopback TCP pair (`Loopback`), one end served by `proxy::serve` like any client
//! connection, the other read here like an upstream's reply. Nothing of the request path is
//! copied or bypassed: routing, sessions, federation, refusals, metrics and the access log all
//! apply, and the hot path is unchanged (it never sees this module).

use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener, TcpStream};
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

/// A worker's private loopback listener, made on first use. Each pair is checked: the accepted
/// end's peer must be the connecting end's own address, so a stranger's connection to the port
/// is closed, never served in place of ours (it could only have reached the public listener's
/// request path anyway).
#[derive(Default)]
pub struct Loopback {
    listener: RefCell<Option<(TcpListener, SocketAddr)>>,
}

impl Loopback {
    /// Two connected ends: (served, ours).
    async fn pair(&self) -> std::io::Result<(TcpStream, TcpStream)> {
        if self.listener.borrow().is_none() {
            let l = TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            let addr = l.local_addr()?;
            *self.listener.borrow_mut() = Some((l, addr));
        }
        let addr = self.listener.borrow().as_ref().map(|(_, a)| *a);
        let addr = addr.ok_or_else(|| std::io::Error::other("no loopback listener"))?;
        // Loopback: the handshake is done when connect returns.
        let ours = TcpStream::connect(addr)?;
        let want = ours.local_addr()?;
        for _ in 0..1000 {
            let accepted = match self.listener.borrow().as_ref() {
                Some((l, _)) => l.accept(),
                None => return Err(std::io::Error::other("no loopback listener")),
            };
            match accepted {
                Ok((s, peer)) if peer == want => return Ok((s, ours)),
                // Not ours: dropped (closed).
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    monoio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("loopback connection never arrived"))
    }
}

fn socket(s: TcpStream) -> std::io::Result<Stream> {
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    Ok(Stream::Plain(monoio::net::TcpStream::from_std(s)?))
}

/// Sends `req` (a whole HTTP/1.1 request) through the request path on worker `w`; returns the
/// connection positioned after the reply head.
pub async fn exchange(
    w: &Rc<WorkerState>,
    req: Vec<u8>,
    from: &super::streams::From,
) -> Result<(UpstreamConn, ResponseHead), String> {
    let pair = w.legacy_sse.loopback.pair().await;
    let (served, ours) = pair.map_err(|e| format!("loopback connection: {e}"))?;
    let served = socket(served).map_err(|e| format!("loopback connection: {e}"))?;
    let ours = socket(ours).map_err(|e| format!("loopback connection: {e}"))?;
    // Served as the client it comes from: rules and the identity phase judge the client's
    // address and certificate, never this loopback pair's.
    let who = super::super::client::Who {
        addr: from.addr,
        peer: from.peer.clone().map(Rc::new),
    };
    monoio::spawn(super::super::serve_as(w.clone(), served, Some(who)));
    let mut conn = Conn::new(ours, 8 * 1024);
    let (res, _) = conn.write_all(req).await;
    res.map_err(|e| format!("writing the request: {e}"))?;
    let deadline = w.shutdown.now() + HEAD_WAIT;
    loop {
        if !conn.buffered().is_empty() {
            let mut headers = [const { std::mem::MaybeUninit::uninit() }; 64];
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
