//! The client side of a connection: its buffered reader, the write buffers lent to it for one
//! request, and the write with a deadline. Knows nothing of upstreams.

use std::rc::Rc;
use std::time::Duration;

use crate::http::Conn;
use crate::tls::{PeerIdentity, Stream};

use super::state::WorkerState;

/// Read buffer an idle client connection keeps: a typical MCP request (head + body) fits.
pub const IDLE_READ_BUFFER: usize = 2048;

/// The client side of a connection: its buffered reader and reusable write buffers.
pub struct Client {
    /// Plain TCP or TLS (the handshake is done before a `Client` exists).
    pub conn: Conn<Stream>,
    /// The verified client certificate's identity (a TLS listener with `client_ca_file`).
    peer: Option<Rc<PeerIdentity>>,
    /// The worker this connection runs on (its coarse clock and deadlines).
    w: std::rc::Rc<WorkerState>,
    /// Bytes to write to the client.
    pub out: Vec<u8>,
    /// The request being sent upstream.
    pub up_out: Vec<u8>,
    /// Decoded chunked request bodies (rare: most clients send Content-Length).
    pub body: Vec<u8>,
    pub write_timeout: Duration,
    /// The request being answered is a HEAD: refusals carry no body.
    pub head_only: bool,
    /// Bytes written to the client so far (the record phase counts each request's share).
    pub sent: u64,
    /// The client's address, for the access log.
    pub addr: Option<std::net::SocketAddr>,
}

/// Who a connection is served as when it is not its socket's peer: the gateway's own loopback
/// connections that carry a legacy HTTP+SSE client's messages (`legacy_sse::inner`).
pub struct Who {
    pub addr: Option<std::net::SocketAddr>,
    pub peer: Option<Rc<PeerIdentity>>,
}

impl Client {
    /// A client starts with only a small read buffer; write buffers are lent per request.
    pub fn new(stream: Stream, w: std::rc::Rc<WorkerState>, who: Option<Who>) -> Self {
        let write_timeout = w.gw().config.limits.write_timeout;
        let (addr, peer) = match who {
            Some(who) => (who.addr, who.peer),
            None => (stream.tcp().peer_addr().ok(), stream.peer()),
        };
        Client {
            sent: 0,
            addr,
            w,
            peer,
            conn: Conn::new(stream, IDLE_READ_BUFFER),
            out: Vec::new(),
            up_out: Vec::new(),
            body: Vec::new(),
            write_timeout,
            head_only: false,
        }
    }

    /// The worker serving this connection (for tasks a request spawns that outlive it).
    pub fn worker(&self) -> &Rc<WorkerState> {
        &self.w
    }

    /// Who the client proved to be with a certificate: on a TLS listener with
    /// `listen.tls.client_ca_file`, the verified leaf certificate's subject and SANs; `None` for
    /// plain HTTP, a TLS listener without client certificates, or `client_auth: optional` with
    /// a client that sent none. For the request context (authentication, audit).
    pub fn peer(&self) -> Option<&Rc<PeerIdentity>> {
        self.peer.as_ref()
    }

    /// Borrows write buffers from the worker's pool for one request.
    pub fn lend(&mut self, w: &WorkerState) {
        if self.out.capacity() == 0 {
            self.out = w.take_buffer();
        }
        if self.up_out.capacity() == 0 {
            self.up_out = w.take_buffer();
        }
    }

    /// Gives the request's buffers back and shrinks the read buffer, so an idle connection
    /// holds only `IDLE_READ_BUFFER` bytes.
    pub fn release(&mut self, w: &WorkerState) {
        w.give_buffer(std::mem::take(&mut self.out));
        w.give_buffer(std::mem::take(&mut self.up_out));
        w.give_buffer(std::mem::take(&mut self.body));
        self.conn.shrink_idle(IDLE_READ_BUFFER);
    }

    /// Writes `out` to the client within the write timeout. An error means: close the connection.
    pub async fn flush(&mut self) -> Result<(), ()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.out);
        let deadline = self.w.shutdown.now() + self.write_timeout;
        let written = monoio::select! {
            r = self.conn.write_all(buf) => Some(r),
            _ = self.w.shutdown.deadline(deadline) => None,
        };
        match written {
            Some((Ok(()), mut b)) => {
                self.sent += b.len() as u64;
                b.clear();
                self.out = b;
                Ok(())
            }
            Some((Err(_), _)) => Err(()),
            None => {
                // A client that does not read: abort (RST) on close rather than leave the kernel
                // holding the unsent response for the orphaned socket's lifetime.
                abort_on_close(&self.conn.io);
                Err(())
            }
        }
    }
}

/// Makes the socket's close send RST and drop unsent data (`SO_LINGER` 0).
/// On a TLS connection this is the TCP socket under it: nothing more is sent (no close_notify).
pub fn abort_on_close(s: &impl std::os::fd::AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this connection owns, with a properly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
