//! TLS over a monoio `TcpStream`, written against rustls's buffered `Connection` API (no
//! readiness assumptions, so it runs the same on io_uring and on the legacy epoll driver), and
//! `Stream`, what a connection carries: plain TCP or TLS.
//!
//! Why not `monoio-rustls`: the gateway needs what a generic wrapper hides: whether decrypted
//! bytes are waiting inside rustls (an event-stream relay waits on socket readiness, which says
//! nothing about them), a non-blocking settle of records that arrived on an idle pooled
//! connection (session tickets, close_notify), the raw socket (`SO_LINGER`, the shutdown on drop)
//! and a ciphertext buffer sized to what is asked, so an idle connection stays small.
//!
//! Reads: ciphertext is read into an owned buffer (lent to the kernel operation, as monoio's
//! rent API wants), handed to rustls (`read_tls` + `process_new_packets`), and plaintext is copied
//! out of rustls's buffer into the caller's. Writes: plaintext goes into rustls (`writer`), the
//! records it makes are written with one `write_all` per flush. A read or write that is
//! cancelled (a timeout) leaves the TLS state unusable for more I/O; the gateway closes such
//! connections anyway (`http::conn`: a cancelled read always closes the connection).

use std::io::{self, BufRead, Write as _};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
#[cfg(test)]
use std::sync::Arc;

use futures_util::future::Either;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::Connection;

use super::PeerIdentity;
use crate::http::pool::{idleness, Idleness};

/// The smallest ciphertext read, and the most an idle connection keeps lent to its pending read
/// (the size of `proxy::client`'s idle read buffer): a request of a few hundred bytes arrives in
/// one read; rustls gathers a record that spans reads in its own (4 KiB) buffer.
const MIN_TLS_READ: usize = 2 * 1024;
/// The largest ciphertext read: one full record (16 KiB of plaintext plus its overhead).
const MAX_TLS_READ: usize = 16 * 1024 + 512;
/// rustls refuses more ciphertext while it holds more plaintext than this (its default
/// received-plaintext limit); `absorb` carries the rest over instead.
const PLAINTEXT_LIMIT: usize = 16 * 1024;

/// A TLS connection (client or server side) over a TCP stream.
pub struct TlsStream {
    io: TcpStream,
    tls: Connection,
    /// Ciphertext read buffer; lent to each socket read.
    rbuf: Vec<u8>,
    /// Plaintext rustls holds that the caller has not read yet.
    pending: usize,
    /// Ciphertext read from the socket that rustls could not take yet (its plaintext buffer was
    /// full: small records decrypt to more than it holds before a large read is fed whole). It
    /// is fed before the socket is read again, and counts as readable.
    carry: Vec<u8>,
    /// The peer's close_notify was processed: whatever follows it is ignored (RFC 8446 §6.1).
    closed: bool,
    /// The verified client certificate's identity (server side, mTLS only).
    peer: Option<Rc<PeerIdentity>>,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    pub fn new(io: TcpStream, tls: Connection) -> Self {
        TlsStream {
            io,
            tls,
            rbuf: Vec::new(),
            pending: 0,
            carry: Vec::new(),
            closed: false,
            peer: None,
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }

    pub fn connection(&self) -> &Connection {
        &self.tls
    }

    pub fn peer(&self) -> Option<&Rc<PeerIdentity>> {
        self.peer.as_ref()
    }

    pub fn set_peer(&mut self, peer: Option<Rc<PeerIdentity>>) {
        self.peer = peer;
    }

    /// Plaintext waiting inside rustls (readable without touching the socket).
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Something to read without touching the socket: plaintext, or ciphertext carried over.
    fn has_data(&self) -> bool {
        self.pending > 0 || !self.carry.is_empty()
    }

    /// Runs the handshake to its end (both sides). An error names what failed (rustls's words:
    /// "invalid peer certificate: UnknownIssuer", "peer is incompatible: …"); the alert rustls
    /// made for it has been sent.
    pub async fn handshake(&mut self) -> io::Result<()> {
        while self.tls.is_handshaking() {
            self.flush_tls().await?;
            if !self.tls.is_handshaking() {
                break;
            }
            if self.tls.wants_read() && self.read_tls(0).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                ));
            }
        }
        // The last flight (a client's Finished, a server's session tickets).
        self.flush_tls().await
    }

    /// Writes every record rustls has ready.
    async fn flush_tls(&mut self) -> io::Result<()> {
        // A fresh buffer per flush (write_tls sizes it once): an idle connection keeps no
        // write buffer, and one malloc is noise beside the encryption.
        while self.tls.wants_write() {
            let mut out = Vec::new();
            self.tls.write_tls(&mut out)?;
            let (res, _) = self.io.write_all(out).await;
            res?;
        }
        Ok(())
    }

    /// Hands ciphertext to rustls and processes it. A protocol or certificate error is returned
    /// after rustls's alert for it has been queued (the caller's flush sends it).
    ///
    /// Bounded: it stops when rustls takes nothing more (after a close_notify everything that
    /// follows is dropped, as RFC 8446 §6.1 says; a loop on it would never end), and keeps what
    /// rustls cannot take while its plaintext buffer is full in `carry`, for after the caller
    /// has read some plaintext.
    fn absorb(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.closed {
                return Ok(());
            }
            if self.pending > PLAINTEXT_LIMIT {
                self.carry.extend_from_slice(data);
                return Ok(());
            }
            if self.tls.read_tls(&mut data)? == 0 {
                // rustls takes no more ciphertext: the peer's close_notify came before this.
                self.closed = true;
                return Ok(());
            }
            let state = self.tls.process_new_packets().map_err(tls_error)?;
            self.pending = state.plaintext_bytes_to_read();
            if state.peer_has_closed() {
                self.closed = true;
            }
        }
        Ok(())
    }

    /// Feeds ciphertext carried over from an earlier read (none: nothing to do).
    fn absorb_carry(&mut self) -> io::Result<()> {
        if self.carry.is_empty() {
            return Ok(());
        }
        let carry = std::mem::take(&mut self.carry);
        self.absorb(&carry)
    }

    /// A ciphertext buffer for one socket read of about `want` bytes.
    fn read_buffer(&mut self, want: usize) -> Vec<u8> {
        let size = want.clamp(MIN_TLS_READ, MAX_TLS_READ);
        let mut buf = std::mem::take(&mut self.rbuf);
        buf.clear();
        if buf.capacity() < size {
            buf = Vec::with_capacity(size);
        }
        buf
    }

    /// Takes the result of a socket read into rustls (0 bytes: the stream ended, which rustls is
    /// told about). An error is rustls's (its alert is queued: flush it) or the socket's.
    fn absorb_read(&mut self, res: io::Result<usize>, buf: Vec<u8>) -> io::Result<usize> {
        let result = match res {
            Ok(0) => self.tls.read_tls(&mut &[][..]).map(|_| 0),
            Ok(n) => self.absorb(&buf[..n]).map(|()| n),
            Err(e) => Err(e),
        };
        // A buffer that grew for a large body is not kept by an idle connection.
        if buf.capacity() <= MIN_TLS_READ {
            self.rbuf = buf;
        }
        result
    }

    /// One socket read into rustls (the handshake's). Returns the ciphertext bytes read.
    async fn read_tls(&mut self, want: usize) -> io::Result<usize> {
        let buf = self.read_buffer(want);
        let (res, buf) = self.io.read(buf).await;
        let result = self.absorb_read(res, buf);
        if result.is_err() {
            let _ = self.flush_tls().await;
        }
        result
    }

    /// Copies decrypted bytes out of rustls: `Some(n)` when there were some (or the stream
    /// ended: 0), `None` when more must be read.
    fn take_plain(&mut self, dst: *mut u8, cap: usize) -> Option<io::Result<usize>> {
        match self.tls.reader().fill_buf() {
            Ok(chunk) if !chunk.is_empty() => {
                let n = chunk.len().min(cap);
                // SAFETY: `dst` is valid for `cap` bytes (the caller's buffer); `chunk` is
                // rustls's buffer, so the two do not overlap.
                unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), dst, n) };
                self.tls.reader().consume(n);
                self.pending = self.pending.saturating_sub(n);
                Some(Ok(n))
            }
            Ok(_) => Some(Ok(0)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Some(Ok(0)),
            Err(e) => Some(Err(e)),
        }
    }

    /// Reads plaintext into `dst` (at most `cap` bytes). 0: the peer closed (close_notify, or a
    /// TCP close: HTTP framing tells a cut-short body). Kept to one socket-read await on the
    /// common path (this future is part of every idle connection's state); writing what rustls
    /// has to say mid-read (an alert, a key update's answer) is rare and boxed.
    async fn read_plain(&mut self, dst: *mut u8, cap: usize) -> io::Result<usize> {
        if cap == 0 {
            return Ok(0);
        }
        loop {
            if let Some(r) = self.take_plain(dst, cap) {
                return r;
            }
            if !self.carry.is_empty() {
                if let Err(e) = self.absorb_carry() {
                    let _ = Box::pin(self.flush_tls()).await;
                    return Err(e);
                }
                continue;
            }
            if self.tls.wants_write() {
                Box::pin(self.flush_tls()).await?;
            }
            let buf = self.read_buffer(cap);
            let (res, buf) = self.io.read(buf).await;
            if let Err(e) = self.absorb_read(res, buf) {
                let _ = Box::pin(self.flush_tls()).await;
                return Err(e);
            }
        }
    }

    /// Encrypts as much of `data` as rustls takes and writes it out.
    async fn write_plain(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let n = self.tls.writer().write(data)?;
        self.flush_tls().await?;
        Ok(n)
    }

    /// Sends close_notify (best effort, not waited on beyond the write).
    pub async fn close_notify(&mut self) -> io::Result<()> {
        self.tls.send_close_notify();
        self.flush_tls().await
    }

    /// Queues close_notify and sends it without blocking (see `Socket for Stream`). After a
    /// cancelled write the record may land after a partial one: the connection is going anyway.
    fn close_now(&mut self) {
        if self.tls.is_handshaking() {
            return;
        }
        self.tls.send_close_notify();
        let mut out = Vec::new();
        if self.tls.write_tls(&mut out).is_err() || out.is_empty() {
            return;
        }
        // SAFETY: a non-blocking send from a live buffer on the socket this stream owns.
        unsafe {
            libc::send(
                self.io.as_raw_fd(),
                out.as_ptr().cast(),
                out.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
    }

    /// For an idle connection (no operation in flight): processes whatever records arrived
    /// without blocking (session tickets, a key update, close_notify) and says what is left.
    /// A pooled upstream connection whose server sent TLS 1.3 session tickets after the reply
    /// is readable at the socket, yet has nothing to say: this keeps it.
    pub fn settle(&mut self) -> Idleness {
        let fd = self.io.as_raw_fd();
        let mut buf = [0u8; 4096];
        // Record framing of what arrives here: a record cut short is a message on its way (a
        // stray reply whose first record rustls holds in part, with no plaintext yet), which
        // must not be mistaken for silence.
        let mut frame = RecordWalk::default();
        loop {
            // SAFETY: a recv into a stack buffer on a socket this stream owns; no operation is
            // in flight on it (the connection is idle), so no byte is taken from a pending read.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n == 0 {
                return Idleness::Closed;
            }
            if n < 0 {
                return match io::Error::last_os_error().kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => break,
                    _ => Idleness::Closed,
                };
            }
            frame.feed(&buf[..n as usize]);
            if self.absorb(&buf[..n as usize]).is_err() {
                return Idleness::Closed;
            }
            // Data: the answer is known; the rest stays in the socket for the next read.
            if self.pending > 0 {
                return Idleness::Unsolicited;
            }
        }
        if self.closed {
            return Idleness::Closed;
        }
        if !frame.at_boundary() || !self.carry.is_empty() {
            return Idleness::Unsolicited;
        }
        // close_notify: the reader says end of stream.
        match self.tls.reader().fill_buf() {
            Ok(_) => Idleness::Closed,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if self.tls.wants_write() {
                    // Something to answer (a key update) cannot be sent from here: not reusable.
                    Idleness::Closed
                } else {
                    Idleness::Silent
                }
            }
            Err(_) => Idleness::Closed,
        }
    }
}

/// Follows TLS record framing (5-byte header, then the length it gives) over bytes seen in
/// order; says whether they end exactly at a record's end.
#[derive(Default)]
struct RecordWalk {
    header: [u8; 5],
    have: usize,
    /// Body bytes still to come of the current record.
    body_left: usize,
}

impl RecordWalk {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.have = 0;
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.body_left == 0
    }
}

/// What a connection carries: plain TCP, or TLS (boxed: the rustls state is a few KiB and a
/// plain connection should not carry its size; one allocation per TLS connection, none per read).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Plain(s)
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(t) => t.io.as_raw_fd(),
        }
    }
}

/// A TLS connection the gateway closes says so (close_notify), so the peer can tell the end
/// from a cut (an HTTP/1.0 client's close-delimited body, a pooled upstream connection that
/// expired). Best effort and non-blocking: one `send` of the alert record just before `Conn`
/// shuts the socket down; a peer that does not read its socket does not get it.
impl crate::http::conn::Socket for Stream {
    fn closing(&mut self) {
        if let Stream::Tls(t) = self {
            t.close_now();
        }
    }
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.io,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The verified client certificate's identity (a TLS listener with client certificates).
    pub fn peer(&self) -> Option<Rc<PeerIdentity>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => t.peer.clone(),
        }
    }

    /// Bytes readable without touching the socket: decrypted plaintext rustls holds.
    pub fn has_pending(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.has_data(),
        }
    }

    /// Waits until a read may make progress: plaintext already decrypted, or the socket is
    /// readable (for TLS that may turn out to be a record with no data in it; the read then
    /// waits on, which is what a relay's next read does anyway). Cancels cleanly: no buffer.
    pub async fn readable(&self) -> io::Result<()> {
        if self.has_pending() {
            return Ok(());
        }
        self.tcp().readable(false).await
    }

    /// What the peer of a connection with no read in flight has done: closed it, sent bytes
    /// (`Unsolicited`: decrypted plaintext waiting counts), or nothing. Plain TCP is peeked at
    /// without consuming anything; TLS records are read into rustls without blocking
    /// (`TlsStream::settle`), so a close_notify is seen as the close it is, and plaintext stays
    /// buffered for the next read.
    pub fn peer_state(&mut self) -> Idleness {
        match self {
            Stream::Plain(s) => idleness(s.as_raw_fd()),
            Stream::Tls(t) if t.has_data() => Idleness::Unsolicited,
            Stream::Tls(t) => t.settle(),
        }
    }
}

// `read` and `write` hand plain TCP's own future back (in an `Either`) rather than await it in
// a future of their own: every read and write of a request would otherwise move that future
// into a wrapper's state and resume the wrapper on each poll.
impl AsyncReadRent for Stream {
    fn read<T: IoBufMut>(
        &mut self,
        mut buf: T,
    ) -> impl std::future::Future<Output = BufResult<usize, T>> {
        match self {
            Stream::Plain(s) => Either::Left(s.read(buf)),
            Stream::Tls(t) => Either::Right(async move {
                // As monoio's own reads: write at write_ptr, at most bytes_total, set_init(n).
                let (dst, cap) = (buf.write_ptr(), buf.bytes_total());
                let res = t.read_plain(dst, cap).await;
                if let Ok(n) = res {
                    // SAFETY: read_plain initialised n <= cap bytes at write_ptr.
                    unsafe { buf.set_init(n) };
                }
                (res, buf)
            }),
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.readv(buf).await,
            Stream::Tls(t) => {
                // The first buffer only (the gateway never reads vectored).
                // SAFETY: RawBuf borrows `buf`'s first iovec while `buf` is held here.
                let res = match unsafe { RawBuf::new_from_iovec_mut(&mut buf) } {
                    Some(mut raw) => t.read_plain(raw.write_ptr(), raw.bytes_total()).await,
                    None => Ok(0),
                };
                if let Ok(n) = res {
                    unsafe { buf.set_init(n) };
                }
                (res, buf)
            }
        }
    }
}

impl AsyncWriteRent for Stream {
    fn write<T: IoBuf>(
        &mut self,
        buf: T,
    ) -> impl std::future::Future<Output = BufResult<usize, T>> {
        match self {
            Stream::Plain(s) => Either::Left(s.write(buf)),
            Stream::Tls(t) => Either::Right(async move {
                // SAFETY: read_ptr is valid for bytes_init bytes while `buf` is held here.
                let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
                let res = t.write_plain(data).await;
                (res, buf)
            }),
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.writev(buf).await,
            Stream::Tls(t) => {
                // SAFETY: RawBuf borrows `buf`'s first iovec while `buf` is held here.
                let res = match unsafe { RawBuf::new_from_iovec(&buf) } {
                    Some(raw) => {
                        let data =
                            unsafe { std::slice::from_raw_parts(raw.read_ptr(), raw.bytes_init()) };
                        t.write_plain(data).await
                    }
                    None => Ok(0),
                };
                (res, buf)
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush().await,
            Stream::Tls(t) => t.flush_tls().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(t) => {
                let _ = t.close_notify().await;
                t.io.shutdown().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read future is part of every idle connection's state (`proxy::serve`'s size test):
    /// the TLS branch must not make a plain connection's much larger than a bare socket read.
    #[test]
    fn read_futures_stay_small() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut t = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let tcp = std::mem::size_of_val(&t.read(Vec::<u8>::new()));
            let mut s = Stream::Plain(t);
            let stream = std::mem::size_of_val(&s.read(Vec::<u8>::new()));
            assert!(
                stream <= tcp + 160,
                "Stream read {stream} B, TcpStream read {tcp} B"
            );
            let Stream::Plain(t) = s else { unreachable!() };
            let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            let name = crate::tls::server_name("localhost").unwrap();
            let c = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
            let mut ts = TlsStream::new(t, Connection::Client(c));
            let plain = std::mem::size_of_val(&ts.read_plain(std::ptr::null_mut(), 0));
            assert!(
                plain <= tcp + 96,
                "TLS read {plain} B, TcpStream read {tcp} B"
            );
        });
    }

    /// A client connection right after its handshake, with the server's `after` thread
    /// deciding what it sends then (TLS 1.3 session tickets always come after the client's
    /// handshake ended).
    fn idle_client(
        after: fn(&mut rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>),
    ) -> Idleness {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der: CertificateDer<'static> = cert.der().clone();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        assert!(server.send_tls13_tickets > 0);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let (tcp, _) = l.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(server)).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock).unwrap();
            }
            while s.conn.wants_write() {
                s.conn.write_tls(&mut s.sock).unwrap();
            }
            after(&mut s);
            // Held open until the client is done.
            let mut b = [0u8; 64];
            let _ = std::io::Read::read(&mut s.sock, &mut b);
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let seen = rt.block_on(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = crate::tls::server_name("localhost").unwrap();
            let c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
            let mut t = TlsStream::new(tcp, Connection::Client(c));
            t.handshake().await.unwrap();
            // Whatever the server sends after the handshake has arrived, unread.
            t.tcp().readable(false).await.unwrap();
            monoio::time::sleep(std::time::Duration::from_millis(50)).await;
            let fd = t.tcp().as_raw_fd();
            assert!(!crate::http::pool::is_quiet(fd), "nothing arrived");
            let seen = t.settle();
            if seen == Idleness::Silent {
                assert!(
                    crate::http::pool::is_quiet(fd),
                    "settled but still readable"
                );
                assert_eq!(t.pending(), 0);
            }
            seen
        });
        thread.join().unwrap();
        seen
    }

    /// A pooled TLS connection whose server sent session tickets after the reply is still
    /// reusable: `settle` reads them and the socket is quiet again.
    #[test]
    fn settle_keeps_a_connection_that_only_got_session_tickets() {
        assert_eq!(idle_client(|_| {}), Idleness::Silent);
    }

    #[test]
    fn settle_reports_data_and_close_notify() {
        assert_eq!(
            idle_client(|s| {
                std::io::Write::write_all(s, b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
            }),
            Idleness::Unsolicited
        );
        assert_eq!(
            idle_client(|s| {
                s.conn.send_close_notify();
                s.conn.write_tls(&mut s.sock).unwrap();
            }),
            Idleness::Closed
        );
    }

    /// Bytes after a close_notify, in the same read: rustls takes none of them, and `absorb`
    /// must stop rather than offer them forever (the worker would spin).
    #[test]
    fn bytes_after_close_notify_end_the_stream() {
        assert_eq!(
            idle_client(|s| {
                s.conn.send_close_notify();
                let mut out = Vec::new();
                s.conn.write_tls(&mut out).unwrap();
                out.extend_from_slice(&[0x17; 8192]);
                std::io::Write::write_all(&mut s.sock, &out).unwrap();
            }),
            Idleness::Closed
        );
    }

    /// A record that has only partly arrived is a message on its way, not silence.
    #[test]
    fn settle_sees_a_record_cut_short() {
        assert_eq!(
            idle_client(|s| {
                std::io::Write::write_all(&mut s.conn.writer(), b"HTTP/1.1 200 OK\r\n\r\n")
                    .unwrap();
                let mut out = Vec::new();
                s.conn.write_tls(&mut out).unwrap();
                std::io::Write::write_all(&mut s.sock, &out[..out.len() / 2]).unwrap();
            }),
            Idleness::Unsolicited
        );
    }

    #[test]
    fn record_walk_follows_framing() {
        let mut w = RecordWalk::default();
        assert!(w.at_boundary());
        let rec = [0x17, 3, 3, 0, 4, 1, 2, 3, 4];
        for b in rec {
            w.feed(&[b]);
        }
        assert!(w.at_boundary());
        w.feed(&rec[..6]);
        assert!(!w.at_boundary());
        w.feed(&rec[6..]);
        assert!(w.at_boundary());
        w.feed(&rec[..3]);
        assert!(!w.at_boundary());
    }
}
