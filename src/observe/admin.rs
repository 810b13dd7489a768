//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`.
//!
//! It serves scrapes and probes, never client traffic, so it is plain blocking std code off the
//! workers: one accept thread, and a thread per connection while it lasts, at most
//! `admin.max_connections` of them (beyond: 503 and close at once, counted). Each connection
//! carries one request with one deadline, `admin.request_timeout` from accept: before every read
//! and write the socket timeout is set to the time left, so a client that dribbles its head or
//! reads its response slowly is cut off at the deadline however it paces its bytes, and it only
//! ever holds its own thread.
//!
//! Files: `health` (readiness: what workers record, what /readyz answers), `upstream_metrics`
//! (the upstream families written at scrape time), `request` (one connection's request); the
//! accept loop here.

mod health;
mod request;
#[cfg(test)]
mod tests;
mod upstream_metrics;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Counter;
use metrics_exporter_prometheus::PrometheusHandle;

use super::names;
pub use health::{Health, HealthSlot, ProbeTls, UpstreamHealth};
use request::{handle_one, is_timeout};

/// Re-reads and installs the config file: `Ok` with a one-line summary, `Err` with every problem.
pub type ReloadFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What the admin listener serves, shared by its connection threads.
pub struct Admin {
    pub handle: PrometheusHandle,
    pub series: super::series::SeriesSet,
    pub health: Arc<HealthSlot>,
    /// `POST /admin/reload` (from a loopback peer only); `None`: not offered.
    pub reload: Option<ReloadFn>,
    /// `admin.request_timeout`: from accept to the last byte of the response.
    pub request_timeout: Duration,
    /// `admin.max_connections`: connections served at once.
    pub max_connections: usize,
}

/// How often the accept loop looks at the stop flag when no connection arrives.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Counters for the admin listener's own limits (`tollgate_admin_limit_rejections_total`).
struct Refusals {
    max_connections: Counter,
    request_timeout: Counter,
}

impl Refusals {
    fn new() -> Self {
        let c = |limit: &'static str| metrics::counter!(names::ADMIN_LIMIT_REJECTIONS_TOTAL, "limit" => limit);
        Refusals {
            max_connections: c("max_connections"),
            request_timeout: c("request_timeout"),
        }
    }
}

/// Decrements the open-connection count when a connection thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves until `stop` is set; notices it within `STOP_POLL` and closes the listener.
/// Connections already being served finish on their own threads (each by its deadline).
pub fn serve(listener: TcpListener, admin: Admin, stop: Arc<AtomicBool>) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "admin listener: cannot set non-blocking; not serving");
        return;
    }
    let admin = Arc::new(admin);
    let open = Arc::new(AtomicUsize::new(0));
    let refusals = Arc::new(Refusals::new());
    while !stop.load(Ordering::Acquire) {
        if !readable(&listener, STOP_POLL) {
            continue;
        }
        // Take everything queued: each accept is cheap and never waits.
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning on a full queue.
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            };
            let deadline = Instant::now() + admin.request_timeout;
            if open.load(Ordering::Acquire) >= admin.max_connections {
                refusals.max_connections.increment(1);
                refuse(stream);
                continue;
            }
            open.fetch_add(1, Ordering::AcqRel);
            let slot = Slot(open.clone());
            let (conn_admin, conn_refusals) = (admin.clone(), refusals.clone());
            let spawned = std::thread::Builder::new()
                .name("admin-conn".into())
                .spawn(move || {
                    let _slot = slot;
                    if let Err(e) = handle_one(stream, deadline, &conn_admin) {
                        if is_timeout(&e) {
                            conn_refusals.request_timeout.increment(1);
                        }
                    }
                });
            if let Err(e) = spawned {
                // The closure (stream and slot) is dropped: the connection closes, the slot frees.
                refusals.max_connections.increment(1);
                tracing::warn!(error = %e, "admin listener: cannot start a connection thread");
            }
        }
    }
}

/// Waits up to `wait` for a connection to accept.
fn readable(listener: &TcpListener, wait: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, for the duration of the call.
    let n = unsafe { libc::poll(&mut fd, 1, wait.as_millis() as libc::c_int) };
    n > 0 && fd.revents & libc::POLLIN != 0
}

/// Over `admin.max_connections`: 503 and close, from the accept thread, never waiting. The
/// reply is small enough for an empty send buffer; whatever the client already sent is read
/// first (without waiting), so the close is a FIN after the reply rather than a reset before it.
fn refuse(mut s: TcpStream) {
    if s.set_nonblocking(true).is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        match s.read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let mut out = Vec::with_capacity(160);
    crate::http::response::simple(
        &mut out,
        503,
        b"text/plain",
        b"too many admin connections (admin.max_connections)\n",
        false,
    );
    let _ = s.write(&out);
}
