//! Per-worker keep-alive pool of upstream connections, one LIFO stack per upstream.
//! Owned by one worker, so no locks; the newest idle connection is reused first
//! (it is the least likely to have been closed by the upstream's own idle timer).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::Conn;

pub type UpstreamConn = Conn<TcpStream>;

/// The most read buffer an idle pooled connection keeps.
const IDLE_BUFFER: usize = 16 * 1024;

struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

/// Idle upstream connections of one worker.
pub struct Pool {
    idle: Vec<Vec<Idle>>,
}

/// How a connection was obtained: a reused one may have been closed by the upstream meanwhile.
pub struct Checkout {
    pub conn: UpstreamConn,
    pub reused: bool,
}

impl Pool {
    pub fn new(upstreams: usize) -> Self {
        Pool {
            idle: (0..upstreams).map(|_| Vec::new()).collect(),
        }
    }

    /// The newest idle connection to `upstream` younger than `max_idle_age`; older ones are closed.
    pub fn take(
        &mut self,
        upstream: usize,
        max_idle_age: Duration,
        now: Instant,
    ) -> Option<UpstreamConn> {
        let stack = self.idle.get_mut(upstream)?;
        while let Some(idle) = stack.pop() {
            if now.duration_since(idle.since) < max_idle_age {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely. A read buffer that grew
    /// for a large body is given back first, so idle connections stay small.
    pub fn put(&mut self, upstream: usize, mut conn: UpstreamConn, max_idle: usize, now: Instant) {
        if conn.buffered().is_empty() {
            conn.shrink_idle(IDLE_BUFFER);
            if let Some(stack) = self.idle.get_mut(upstream) {
                if stack.len() < max_idle {
                    stack.push(Idle { conn, since: now });
                }
            }
        }
    }

    /// Drops idle connections older than each upstream's limit (called from a per-worker timer).
    pub fn sweep(&mut self, max_idle_age: impl Fn(usize) -> Duration, now: Instant) {
        for (i, stack) in self.idle.iter_mut().enumerate() {
            let age = max_idle_age(i);
            stack.retain(|c| now.duration_since(c.since) < age);
        }
    }

    pub fn idle_count(&self, upstream: usize) -> usize {
        self.idle.get(upstream).map_or(0, Vec::len)
    }
}

/// Connects to the first address that answers within `timeout` (each address gets the full timeout).
pub async fn connect(addrs: &[SocketAddr], timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address to connect to");
    for addr in addrs {
        match monoio::time::timeout(timeout, TcpStream::connect_addr(*addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect to {addr} timed out"),
                )
            }
        }
    }
    Err(last)
}
