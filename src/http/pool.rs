//! Per-worker keep-alive pool of upstream connections, one LIFO stack per upstream.
//! Owned by one worker, so no locks; the newest idle connection is reused first
//! (it is the least likely to have been closed by the upstream's own idle timer).
//!
//! A pooled connection must be *silent*: nothing buffered when it goes in, nothing readable when
//! it comes out. `take` peeks at the socket (one non-blocking `recv(MSG_PEEK)`); a connection the
//! upstream closed, or one on which the upstream wrote something nobody asked for (a late duplicate
//! response, an unsolicited one), is dropped, so such bytes can never be read as the answer to
//! another client's request.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::Conn;
use crate::tls::Stream;

/// Plain TCP or TLS (`https://` upstreams); the pool treats both alike, except that a TLS
/// connection that is readable while idle first gets its records read (`settle`).
pub type UpstreamConn = Conn<Stream>;

/// The most read buffer an idle pooled connection keeps.
const IDLE_BUFFER: usize = 16 * 1024;

struct Idle {
    conn: UpstreamConn,
    /// After this the connection is not reused (our idle timeout, or the upstream's own
    /// `Keep-Alive: timeout=N` with a safety margin, whichever comes first).
    expires: Instant,
}

/// Idle upstream connections of one worker: one stack per upstream *target*, each under a key
/// that changes whenever what a connection is bound to changes (the upstream's name, resolved
/// addresses, request head prefix). Requests address a stack by `Slot` (position + key): after a
/// reload reorders the stacks, a request begun on the old config still finds its own by key, and
/// a connection to a target that no longer exists is closed instead of pooled.
pub struct Pool {
    idle: Vec<Vec<Idle>>,
    keys: Vec<u64>,
}

/// Where a request's upstream connections live in the pool: the upstream's position in the
/// config the request runs on, and its target key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub index: usize,
    pub key: u64,
}

/// Why a pooled connection was dropped instead of reused (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// The upstream closed it while idle (routine: upstreams have idle timers too).
    Closed = 0,
    /// The upstream wrote bytes nobody asked for: a stray or late response.
    Unsolicited = 1,
    /// Past its idle expiry.
    Expired = 2,
}

impl Discard {
    pub const ALL: [Discard; 3] = [Discard::Closed, Discard::Unsolicited, Discard::Expired];
    pub const fn as_str(self) -> &'static str {
        match self {
            Discard::Closed => "closed",
            Discard::Unsolicited => "unsolicited",
            Discard::Expired => "expired",
        }
    }
}

/// Classifies an idle connection that is not quiet (the rare path: one `recv(MSG_PEEK)`).
fn discard_reason(fd: std::os::fd::RawFd) -> Discard {
    match idleness(fd) {
        Idleness::Unsolicited => Discard::Unsolicited,
        _ => Discard::Closed,
    }
}

/// An idle connection that is not quiet: why it must go, or `None` when it is still good. A TLS
/// connection's readable bytes may be records with nothing for the application (TLS 1.3 session
/// tickets sent after the handshake, a key update): they are processed without blocking, and
/// only plaintext, close_notify, an error or a close discard it.
fn settle(s: &mut Stream) -> Option<Discard> {
    match s {
        Stream::Plain(t) => Some(discard_reason(t.as_raw_fd())),
        Stream::Tls(t) => match t.settle() {
            Idleness::Silent if is_quiet(s.as_raw_fd()) => None,
            Idleness::Silent | Idleness::Closed => Some(Discard::Closed),
            Idleness::Unsolicited => Some(Discard::Unsolicited),
        },
    }
}

/// What a peek at a socket saw (for a pooled upstream connection, or a client whose event
/// stream is being relayed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idleness {
    /// Nothing to read.
    Silent,
    /// The peer closed it (or it failed).
    Closed,
    /// The peer wrote bytes (nobody asked for, on a pooled connection).
    Unsolicited,
}

/// Peeks at a socket without blocking and without consuming anything.
pub fn idleness(fd: std::os::fd::RawFd) -> Idleness {
    let mut b = [0u8; 1];
    // SAFETY: a 1-byte recv into a stack buffer on a socket owned by the caller; no op is in flight on it.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Idleness::Closed,
        n if n > 0 => Idleness::Unsolicited,
        _ => match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Idleness::Silent,
            _ => Idleness::Closed,
        },
    }
}

/// Whether an idle socket is quiet: nothing to read, no FIN, no error. A zero-timeout `poll`
/// reads the socket's state without taking its lock (cheaper than a `recv(MSG_PEEK)` on the
/// request path); data and close alike mean the pooled connection must not be used.
pub fn is_quiet(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd owned by this frame, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 0
}

/// When a connection put back now stops being reusable: our `idle_timeout`, shortened to the
/// upstream's advertised `Keep-Alive: timeout=N` less a margin (it closes at N; a request sent
/// just before that would race its close). `Some(0)` means: do not pool.
pub fn expiry(now: Instant, idle_timeout: Duration, upstream_hint: Option<u32>) -> Option<Instant> {
    let ours = idle_timeout;
    let limit = match upstream_hint {
        None => ours,
        Some(0) => return None,
        Some(n) => {
            let theirs = Duration::from_secs(u64::from(n));
            // Leave a second (or half the timeout, for very short ones) before the upstream's close.
            let margin = Duration::from_secs(1).min(theirs / 2);
            ours.min(theirs - margin)
        }
    };
    (!limit.is_zero()).then(|| now + limit)
}

impl Pool {
    /// A pool for targets with these keys (in config order).
    pub fn new(keys: Vec<u64>) -> Self {
        Pool {
            idle: keys.iter().map(|_| Vec::new()).collect(),
            keys,
        }
    }

    /// The stack of `slot`: its position when the key matches (always, but across a reload),
    /// else found by key; `None` when the target is gone.
    fn stack(&mut self, slot: Slot) -> Option<&mut Vec<Idle>> {
        let i = if self.keys.get(slot.index) == Some(&slot.key) {
            slot.index
        } else {
            self.keys.iter().position(|k| *k == slot.key)?
        };
        self.idle.get_mut(i)
    }

    /// Re-orders the stacks for a new config (`keys` in its order): connections to targets that
    /// stay are kept, the others closed; returns how many were closed.
    pub fn rekey(&mut self, keys: Vec<u64>) -> usize {
        let mut old: Vec<(u64, Vec<Idle>)> = self.keys.drain(..).zip(self.idle.drain(..)).collect();
        self.idle = keys
            .iter()
            .map(|k| match old.iter().position(|(ok, _)| ok == k) {
                Some(i) => old.swap_remove(i).1,
                None => Vec::new(),
            })
            .collect();
        self.keys = keys;
        old.iter().map(|(_, s)| s.len()).sum()
    }

    /// The newest idle connection to `upstream` that has not expired and is silent; expired,
    /// closed and noisy ones are dropped (closed) on the way, each reported to `discarded`.
    pub fn take(
        &mut self,
        slot: Slot,
        now: Instant,
        mut discarded: impl FnMut(Discard),
    ) -> Option<UpstreamConn> {
        let stack = self.stack(slot)?;
        while let Some(mut idle) = stack.pop() {
            let fd = idle.conn.io.as_raw_fd();
            if now >= idle.expires {
                discarded(Discard::Expired);
            } else if is_quiet(fd) {
                return Some(idle.conn);
            } else {
                match settle(&mut idle.conn.io) {
                    None => return Some(idle.conn),
                    Some(why) => discarded(why),
                }
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely; `expires` comes from
    /// `expiry`. A connection with unread bytes (a stray response came with the last one) is
    /// dropped and reported as `Err(Discard::Unsolicited)`. A read buffer that grew for a large
    /// body is given back first, so idle connections stay small.
    pub fn put(
        &mut self,
        slot: Slot,
        mut conn: UpstreamConn,
        max_idle: usize,
        expires: Instant,
    ) -> Result<(), Discard> {
        if !conn.buffered().is_empty() || conn.io.has_pending() {
            return Err(Discard::Unsolicited);
        }
        conn.shrink_idle(IDLE_BUFFER);
        if let Some(stack) = self.stack(slot) {
            if stack.len() < max_idle {
                stack.push(Idle { conn, expires });
            }
        }
        Ok(())
    }

    /// Drops expired idle connections, and those the upstream has closed or written to (so
    /// their sockets do not linger in CLOSE_WAIT). Called from the worker's timer.
    pub fn sweep(&mut self, now: Instant, mut discarded: impl FnMut(usize, Discard)) {
        for (u, stack) in self.idle.iter_mut().enumerate() {
            stack.retain_mut(|c| {
                let fd = c.conn.io.as_raw_fd();
                let why = if now >= c.expires {
                    Discard::Expired
                } else if is_quiet(fd) {
                    return true;
                } else {
                    match settle(&mut c.conn.io) {
                        None => return true,
                        Some(why) => why,
                    }
                };
                discarded(u, why);
                false
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_honours_the_upstreams_keep_alive_hint() {
        let now = Instant::now();
        let ours = Duration::from_secs(4);
        assert_eq!(expiry(now, ours, None), Some(now + ours));
        assert_eq!(expiry(now, ours, Some(5)), Some(now + ours));
        assert_eq!(
            expiry(now, ours, Some(3)),
            Some(now + Duration::from_secs(2))
        );
        assert_eq!(
            expiry(now, ours, Some(1)),
            Some(now + Duration::from_millis(500))
        );
        assert_eq!(expiry(now, ours, Some(0)), None);
        assert_eq!(expiry(now, Duration::ZERO, None), None);
    }

    #[test]
    fn idleness_sees_silence_data_and_close() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        assert_eq!(idleness(c.as_raw_fd()), Idleness::Silent);
        s.write_all(b"x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while idleness(c.as_raw_fd()) == Idleness::Silent && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(idleness(c.as_raw_fd()), Idleness::Unsolicited);
        let (c2, _) = (
            std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap(),
            (),
        );
        let (s2, _) = l.accept().unwrap();
        drop(s2);
        while idleness(c2.as_raw_fd()) == Idleness::Silent && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(idleness(c2.as_raw_fd()), Idleness::Closed);
        assert!(!is_quiet(c.as_raw_fd()), "data waiting");
        assert!(!is_quiet(c2.as_raw_fd()), "closed by the peer");
        let (c3, _) = (
            std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap(),
            (),
        );
        let _s3 = l.accept().unwrap();
        assert!(is_quiet(c3.as_raw_fd()));
    }
}
