//! A connection with an owned read buffer. Unread bytes stay in the buffer between requests,
//! so pipelined requests are never lost; offsets are relative to `buffered()` and survive compaction.

use std::io;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

/// The smallest free space a read is given.
const MIN_READ: usize = 8 * 1024;

pub struct Conn<S> {
    pub io: S,
    rbuf: Vec<u8>,
    rpos: usize,
}

impl<S> Conn<S> {
    pub fn new(io: S, capacity: usize) -> Self {
        Conn {
            io,
            rbuf: Vec::with_capacity(capacity),
            rpos: 0,
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

    /// Releases memory held by a large body once the connection is idle again.
    pub fn shrink_idle(&mut self, keep: usize) {
        if self.rbuf.capacity() > keep && self.rbuf.len() - self.rpos <= keep {
            let rest = self.rbuf[self.rpos..].to_vec();
            let mut fresh = Vec::with_capacity(keep);
            fresh.extend_from_slice(&rest);
            self.rbuf = fresh;
            self.rpos = 0;
        }
    }

    pub fn capacity(&self) -> usize {
        self.rbuf.capacity()
    }
}

impl<S: AsyncReadRent> Conn<S> {
    /// Reads more bytes into the buffer. Returns how many were read; 0 means end of stream.
    /// `want` hints at how many more bytes are expected (a body's remaining length).
    pub async fn fill(&mut self, want: usize) -> io::Result<usize> {
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let need = want.clamp(MIN_READ, 1 << 20);
        if spare < need {
            if self.rpos > 0 {
                self.rbuf.drain(..self.rpos);
                self.rpos = 0;
            }
            if self.rbuf.capacity() - self.rbuf.len() < need {
                self.rbuf.reserve(need);
            }
        }
        let buf = std::mem::take(&mut self.rbuf);
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = self.io.read(buf.slice_mut(len..cap)).await;
        self.rbuf = slice.into_inner();
        res
    }
}

impl<S: AsyncWriteRent> Conn<S> {
    /// Writes all of `buf`, handing the buffer back for reuse.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (res, buf) = self.io.write_all(buf).await;
        (res.map(|_| ()), buf)
    }
}
