//! A connection with an owned read buffer. Unread bytes stay in the buffer between requests,
//! so pipelined requests are never lost; offsets are relative to `buffered()` and survive compaction.

use std::io;
use std::os::fd::AsRawFd;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};

/// Below this much free space a read first makes room.
const MIN_SPARE: usize = 512;
/// When the buffer must grow, it grows by at least this much.
const MIN_GROW: usize = 8 * 1024;
/// The most a single read asks for.
const MAX_READ: usize = 1 << 20;

/// What a `Conn` is over: a socket (its fd is shut down when the `Conn` goes), with a last word
/// before that: TLS sends its close_notify; plain TCP has nothing to say.
pub trait Socket: AsRawFd {
    /// Called once, just before the socket is shut down; must not block.
    fn closing(&mut self) {}
}

impl Socket for monoio::net::TcpStream {}

pub struct Conn<S: Socket> {
    pub io: S,
    rbuf: Vec<u8>,
    rpos: usize,
    /// An upstream connection: which replica of its upstream it is open to (its position in
    /// `UpstreamRuntime::replicas` of the generation that opened it; 0 with one replica), so it
    /// goes back to that replica's pool stack and a session opened on it is pinned there.
    pub replica: u32,
    /// An upstream connection carrying a response: what it counts in (`proxy::replicas`: its
    /// replica's requests in flight on this worker), released when the connection goes back
    /// to the pool (`Pool::put`) or is dropped, so every ending (a body read to its end, an
    /// error, a client gone, a stream cut off) gives the count back.
    pub busy: Option<Busy>,
}

/// A count held up while a connection is busy with a response; one less when it drops. Only
/// the worker that owns the connection changes it (a scrape reads it from another thread).
pub struct Busy(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Busy {
    pub fn new(count: &std::sync::Arc<std::sync::atomic::AtomicU32>) -> Busy {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A connection the gateway lets go of is shut down before its descriptor is closed. On
/// io_uring a read, write or readiness poll that was given up on (a timeout, a refusal, a
/// client that left) is still in flight in the kernel and holds the socket open, with its
/// buffer, until it completes; `shutdown` completes every one of them at once (the peer sees
/// the close, the memory is freed), on either driver, and costs one syscall per connection.
/// (monoio's `async-cancel` feature would cancel each dropped operation instead; shutting the
/// socket down covers every path at once without depending on it.)
impl<S: Socket> Drop for Conn<S> {
    fn drop(&mut self) {
        self.io.closing();
        // SAFETY: shutdown on the socket this connection owns; it is closed right after.
        unsafe {
            libc::shutdown(self.io.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

impl<S: Socket> Conn<S> {
    pub fn new(io: S, capacity: usize) -> Self {
        Conn {
            io,
            rbuf: Vec::with_capacity(capacity),
            rpos: 0,
            replica: 0,
            busy: None,
        }
    }

    /// Bytes read but not consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    pub fn buffered_mut(&mut self) -> &mut [u8] {
        &mut self.rbuf[self.rpos..]
    }

    /// Marks `n` buffered bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.rpos = (self.rpos + n).min(self.rbuf.len());
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    /// Removes `range` (relative to `buffered()`) from the buffer, closing the gap: decoded
    /// chunked framing is dropped this way, so a body's framing never accumulates. Offsets
    /// before `range.start` stay valid.
    pub fn cut(&mut self, range: std::ops::Range<usize>) {
        let start = self.rpos + range.start;
        let end = (self.rpos + range.end).min(self.rbuf.len());
        if start < end {
            self.rbuf.drain(start..end);
        }
    }

    /// Releases memory held by a large body once the connection is idle again.
    pub fn shrink_idle(&mut self, keep: usize) {
        if self.rbuf.capacity() > keep && self.rbuf.len() - self.rpos <= keep {
            let mut fresh = Vec::with_capacity(keep);
            fresh.extend_from_slice(&self.rbuf[self.rpos..]);
            self.rbuf = fresh;
            self.rpos = 0;
        }
    }

    pub fn capacity(&self) -> usize {
        self.rbuf.capacity()
    }
}

impl<S: AsyncReadRent + Socket> Conn<S> {
    /// Reads more bytes into the buffer. Returns how many were read; 0 means end of stream.
    /// `want` is how many more bytes are expected (a body's remaining length), or 0 when unknown:
    /// then whatever free space there is gets used, so an idle connection keeps a small buffer.
    pub async fn fill(&mut self, want: usize) -> io::Result<usize> {
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let need = if want == 0 {
            MIN_SPARE
        } else {
            want.min(MAX_READ)
        };
        if spare < need {
            if self.rpos > 0 {
                self.rbuf.drain(..self.rpos);
                self.rpos = 0;
            }
            let spare = self.rbuf.capacity() - self.rbuf.len();
            if spare < need {
                self.rbuf.reserve(need.max(MIN_GROW));
            }
        }
        let buf = std::mem::take(&mut self.rbuf);
        let len = buf.len();
        let cap = buf.capacity();
        // While the buffer is lent to the read, `rbuf` is empty: keep `rpos` consistent with it,
        // so a read cancelled mid-way (timeout, shutdown) leaves an empty, not a broken, buffer.
        let rpos = std::mem::take(&mut self.rpos);
        // Pinned where it is made: awaited plainly, the read's future is copied into this one's.
        let (res, slice) = std::pin::pin!(self.io.read(buf.slice_mut(len..cap))).await;
        self.rbuf = slice.into_inner();
        self.rpos = rpos;
        res
    }
}

impl<S: AsyncWriteRent + Socket> Conn<S> {
    /// Writes all of `buf`, handing the buffer back for reuse.
    pub async fn write_all(&mut self, mut buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        // monoio's `write_all`, written out: its future would be one more layer around each
        // write of a request, moved and resumed with it.
        let len = buf.len();
        let mut written = 0;
        while written < len {
            let (res, slice) = std::pin::pin!(self.io.write(buf.slice(written..len))).await;
            buf = slice.into_inner();
            match res {
                Ok(0) => {
                    let e =
                        io::Error::new(io::ErrorKind::WriteZero, "failed to write whole buffer");
                    return (Err(e), buf);
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }
}
