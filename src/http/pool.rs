//! Per-worker keep-alive pool of upstream connections, one LIFO stack per upstream.
//! Owned by one worker, so no locks; the newest idle connection is reused first
//! (it is the least likely to have been closed by the upstream's own idle timer).
//!
//! A pooled connection must be *silent*: nothing buffered when it goes in, nothing readable when
//! it comes out. A connection the upstream closed, or one on which the upstream wrote something
//! nobody asked for (a late duplicate response, an unsolicited one), is dropped, so such bytes
//! are not read as the answer to another client's request.
//!
//! `take` looks at readiness with one zero-timeout `poll` over the whole stack it takes from
//! (at most `CHECK_BATCH` idle connections), and trusts what it saw for `CHECK_WINDOW`: a busy
//! worker takes many connections between two checks, one syscall for all of them instead of
//! one each (~2% of a small call's CPU). A connection put back with nothing buffered beyond its
//! reply counts as seen quiet at that moment, for `CHECK_WINDOW` too: under load the newest
//! connection is nearly always one just put back, and checking each of those cost a `poll`
//! every few requests. Like the readiness an event loop (nginx, Envoy) keeps for its idle
//! upstream connections, bytes that arrive less than `CHECK_WINDOW` before a connection is
//! reused are not seen before it: like bytes arriving just after any check, they would be read
//! as the reply. A close in that window is not lost: the request then fails before any reply
//! byte, and a reused connection is retried once on a fresh one (`proxy/upstream.rs`).

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

/// How long a readiness check of idle connections (or a put back) is trusted by `take` (see the
/// module doc): about one turn of a busy event loop. Under load a connection is mostly reused
/// within it, so takes need no syscall; at 100 µs a busy worker still polled every ~15 requests.
pub const CHECK_WINDOW: Duration = Duration::from_micros(1000);

/// The most idle connections (the newest of one stack) one check looks at.
const CHECK_BATCH: usize = 32;

struct Idle {
    conn: UpstreamConn,
    /// After this the connection is not reused (our idle timeout, or the upstream's own
    /// `Keep-Alive: timeout=N` with a safety margin, whichever comes first).
    expires: Instant,
    /// The check (`Pool::checks`) that last found it quiet; 0: none since it was put back.
    quiet_at: u64,
    /// When it was put back (quiet then: nothing buffered), trusted for `CHECK_WINDOW`.
    put_at: Instant,
}

/// Idle upstream connections of one worker: one stack per upstream *target*, each under a key
/// that changes whenever what a connection is bound to changes (the upstream's name, resolved
/// addresses, request head prefix). Requests address a stack by `Slot` (position + key): after a
/// reload reorders the stacks, a request begun on the old config still finds its own by key, and
/// a connection to a target that no longer exists is closed instead of pooled.
pub struct Pool {
    idle: Vec<Vec<Idle>>,
    keys: Vec<u64>,
    /// Readiness checks made so far (the id of the latest), and when the latest was made.
    checks: u64,
    checked_at: Option<Instant>,
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
            checks: 0,
            checked_at: None,
        }
    }

    /// The position of `slot`'s stack: its index when the key matches (always, but across a
    /// reload), else found by key; `None` when the target is gone.
    fn position(&self, slot: Slot) -> Option<usize> {
        if self.keys.get(slot.index) == Some(&slot.key) {
            Some(slot.index)
        } else {
            self.keys.iter().position(|k| *k == slot.key)
        }
    }

    fn stack(&mut self, slot: Slot) -> Option<&mut Vec<Idle>> {
        let i = self.position(slot)?;
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
    /// `now` is the exact time (it decides whether the last readiness check still holds).
    pub fn take(
        &mut self,
        slot: Slot,
        now: Instant,
        mut discarded: impl FnMut(Discard),
    ) -> Option<UpstreamConn> {
        let i = self.position(slot)?;
        loop {
            let fresh = self
                .checked_at
                .is_some_and(|t| now.saturating_duration_since(t) < CHECK_WINDOW);
            let latest = self.checks;
            let stack = self.idle.get_mut(i)?;
            let top = stack.last()?;
            if now >= top.expires {
                stack.pop();
                discarded(Discard::Expired);
                continue;
            }
            let just_put = now.saturating_duration_since(top.put_at) < CHECK_WINDOW;
            if just_put || (fresh && top.quiet_at == latest && latest != 0) {
                return stack.pop().map(|idle| idle.conn);
            }
            // Not covered by a check that still holds: check the stack's newest connections
            // at once (this one among them), then decide on what that check saw.
            self.check(i, now, &mut discarded);
        }
    }

    /// One readiness check of the newest `CHECK_BATCH` connections of stack `i`: the quiet ones
    /// are marked with the check's id, the others settled (TLS) or dropped.
    fn check(&mut self, i: usize, now: Instant, discarded: &mut impl FnMut(Discard)) {
        self.checks += 1;
        self.checked_at = Some(now);
        let id = self.checks;
        let Some(stack) = self.idle.get_mut(i) else {
            return;
        };
        let from = stack.len().saturating_sub(CHECK_BATCH);
        let mut fds = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; CHECK_BATCH];
        let n = stack.len() - from;
        for (p, idle) in fds.iter_mut().zip(&stack[from..]) {
            *p = libc::pollfd {
                fd: idle.conn.io.as_raw_fd(),
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            };
        }
        // SAFETY: poll on `n` valid pollfds owned by this frame, zero timeout.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, 0) };
        if ready < 0 {
            // Cannot tell (EINTR, ENOMEM): nothing is marked, so each is looked at alone.
            for idle in &mut stack[from..] {
                idle.quiet_at = 0;
            }
            let mut k = from;
            while k < stack.len() {
                if is_quiet(stack[k].conn.io.as_raw_fd()) {
                    stack[k].quiet_at = id;
                    k += 1;
                } else if let Some(why) = settle(&mut stack[k].conn.io) {
                    stack.remove(k);
                    discarded(why);
                } else {
                    stack[k].quiet_at = id;
                    k += 1;
                }
            }
            return;
        }
        // Walk from the newest down, so removals do not shift what is still to be read.
        for k in (from..stack.len()).rev() {
            if fds[k - from].revents == 0 {
                stack[k].quiet_at = id;
            } else if let Some(why) = settle(&mut stack[k].conn.io) {
                stack.remove(k);
                discarded(why);
            } else {
                stack[k].quiet_at = id;
            }
        }
    }

    /// Returns a connection whose last response was read completely, at `now` (the exact
    /// time: it is trusted to be quiet for `CHECK_WINDOW` from then); `expires` comes from
    /// `expiry`. A connection with unread bytes (a stray response came with the last one) is
    /// dropped and reported as `Err(Discard::Unsolicited)`. A read buffer that grew for a large
    /// body is given back first, so idle connections stay small.
    pub fn put(
        &mut self,
        slot: Slot,
        mut conn: UpstreamConn,
        max_idle: usize,
        expires: Instant,
        now: Instant,
    ) -> Result<(), Discard> {
        // Idle: no longer a request in flight.
        conn.busy = None;
        if !conn.buffered().is_empty() || conn.io.has_pending() {
            return Err(Discard::Unsolicited);
        }
        conn.shrink_idle(IDLE_BUFFER);
        if let Some(stack) = self.stack(slot) {
            if stack.len() < max_idle {
                stack.push(Idle {
                    conn,
                    expires,
                    quiet_at: 0,
                    put_at: now,
                });
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

    /// One check covers the stack for `CHECK_WINDOW`, a put back covers its connection for as
    /// long; past that a connection is checked again; noisy and closed ones never come out.
    #[test]
    fn take_checks_the_stack_at_once_and_rechecks_what_it_did_not_see() {
        use std::io::Write;
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut peers = Vec::new();
            let open = || {
                let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
                let (s, _) = l.accept().unwrap();
                c.set_nonblocking(true).unwrap();
                let t = TcpStream::from_std(c).unwrap();
                (Conn::new(Stream::from(t), 1024), s)
            };
            let slot = Slot { index: 0, key: 7 };
            let mut pool = Pool::new(vec![7]);
            let far = Instant::now() + Duration::from_secs(60);
            for _ in 0..3 {
                let (c, s) = open();
                pool.put(slot, c, 8, far, Instant::now()).unwrap();
                peers.push(s);
            }
            let settle = || std::thread::sleep(Duration::from_millis(20));
            let mut discards = Vec::new();
            // The newest has bytes nobody asked for: dropped; the next one comes out.
            peers[2].write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
            settle();
            let t0 = Instant::now();
            let got = pool.take(slot, t0, |d| discards.push(d));
            assert!(got.is_some());
            assert_eq!(discards, vec![Discard::Unsolicited]);
            // The oldest, seen quiet by that check, is then closed by its peer. Within the
            // window the check still holds (the documented limit); past it, it is looked at again.
            drop(peers.remove(0));
            settle();
            let got = pool.take(slot, t0 + CHECK_WINDOW * 2, |d| discards.push(d));
            assert!(got.is_none());
            assert_eq!(discards, vec![Discard::Unsolicited, Discard::Closed]);
            // Put back quiet: trusted for the window from then, no check (no syscall).
            let (quiet, _s1) = open();
            let (noisy, mut s2) = open();
            let t1 = Instant::now();
            pool.put(slot, quiet, 8, far, t1).unwrap();
            let checks = pool.checks;
            let got = pool.take(slot, t1 + CHECK_WINDOW / 2, |d| discards.push(d));
            assert!(got.is_some());
            assert_eq!(
                pool.checks, checks,
                "a connection just put back is not polled"
            );
            // Bytes that come after the put are not seen within the window (the documented
            // limit); past it the connection is checked, and a noisy one never comes out.
            pool.put(slot, noisy, 8, far, t1).unwrap();
            s2.write_all(b"x").unwrap();
            settle();
            let n = discards.len();
            let got = pool.take(slot, t1 + CHECK_WINDOW, |d| discards.push(d));
            assert!(
                got.is_none(),
                "put back, noisy, taken after the window: never reused"
            );
            assert_eq!(&discards[n..], &[Discard::Unsolicited]);
        });
    }
}
