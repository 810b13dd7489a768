//! The HTTP sink on a thread of its own: the writer thread hands it copies of the lines it
//! wrote to the file and stdout through a queue bounded in records (`audit.buffer`, under
//! `audit.overflow`), so a collector that is slow or down holds neither the other sinks nor,
//! until that queue is full, the workers. Batches are POSTed in order, retried with backoff.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::sink::{errors, lines, sink_failed, written};
use super::{warn_dropped, HttpSink, Overflow, Settings};
use crate::observe::names;

/// The longest a backoff sleeps before it looks at the closing flag.
const SLICE: Duration = Duration::from_millis(20);

enum Msg {
    /// `n` lines.
    Lines(Vec<u8>, usize),
    /// Send what is pending now (its retries, unless closing), answer, and end.
    Finish(Sender<()>),
}

/// The writer's end of the HTTP sink: its queue and thread.
pub(super) struct HttpLane {
    tx: Option<Sender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Lines queued for the thread and not yet taken into its batch.
    queued: Arc<AtomicUsize>,
    closing: Arc<AtomicBool>,
    limit: usize,
    overflow: Overflow,
    dropped: metrics::Counter,
    last_warned: AtomicU64,
}

impl HttpLane {
    pub(super) fn start(cfg: &HttpSink, s: &Settings) -> anyhow::Result<HttpLane> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let queued = Arc::new(AtomicUsize::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let out = HttpOut {
            cfg: cfg.clone(),
            pending: Vec::new(),
            count: 0,
            since: None,
            written: written("http"),
            errors: errors("http"),
            failed: sink_failed(),
            closing: closing.clone(),
            gave_up: false,
        };
        let q = queued.clone();
        let thread = std::thread::Builder::new()
            .name("audit-http".into())
            .spawn(move || run(rx, out, q))?;
        Ok(HttpLane {
            tx: Some(tx),
            thread: Some(thread),
            queued,
            closing,
            limit: cfg.queue.unwrap_or(s.buffer),
            overflow: s.overflow,
            dropped: metrics::counter!(names::AUDIT_RECORDS_DROPPED_TOTAL, "reason" => "http_overflow"),
            last_warned: AtomicU64::new(0),
        })
    }

    /// Queues a copy of `n` lines under the bound: `block` waits for room (the writer, and
    /// the other sinks with it), `drop` drops them for this sink only and counts them.
    pub(super) fn write(&mut self, buf: &[u8], n: usize) {
        let Some(tx) = &self.tx else { return };
        let limit = self.limit.max(n);
        while self.queued.load(Ordering::Acquire) + n > limit {
            match self.overflow {
                Overflow::Drop => {
                    self.dropped.increment(n as u64);
                    warn_dropped(&self.last_warned, n, "http_overflow");
                    return;
                }
                Overflow::Block => std::thread::sleep(Duration::from_micros(500)),
            }
        }
        // Only this thread adds, so the room checked is still there.
        self.queued.fetch_add(n, Ordering::AcqRel);
        if tx.send(Msg::Lines(buf.to_vec(), n)).is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            sink_failed().increment(n as u64);
        }
    }

    /// The gateway is stopping: one attempt per batch from now on, a backoff under way ends.
    pub(super) fn closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Sends everything queued and pending, and ends the thread.
    pub(super) fn finish(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let (ack, done) = crossbeam_channel::bounded(1);
        if tx.send(Msg::Finish(ack)).is_ok() {
            let _ = done.recv();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTP lane whose sinks a reload replaced: its thread sends what it holds (with its
/// retries) on its own, so the writer goes on with the new sinks at once; at exit it is told
/// to stop retrying and waited for (`finish`).
pub(super) struct Retired {
    thread: std::thread::JoinHandle<()>,
    closing: Arc<AtomicBool>,
}

impl Retired {
    pub(super) fn is_done(&self) -> bool {
        self.thread.is_finished()
    }

    /// The gateway is stopping: one attempt per batch from now on; waits for the thread.
    pub(super) fn finish(self) {
        self.closing.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

impl HttpLane {
    /// Stops sending to this lane and lets its thread finish its queue on its own.
    pub(super) fn retire(mut self) -> Option<Retired> {
        self.tx.take();
        Some(Retired {
            thread: self.thread.take()?,
            closing: self.closing.clone(),
        })
    }
}

impl Drop for HttpLane {
    /// Sinks opened for a reload that was then aborted: the thread ends when its queue closes.
    fn drop(&mut self) {
        self.tx.take();
    }
}

/// The HTTP thread: batches lines, POSTs a batch when full or `flush_interval` old.
fn run(rx: Receiver<Msg>, mut out: HttpOut, queued: Arc<AtomicUsize>) {
    loop {
        match rx.recv_timeout(out.next_due().min(Duration::from_secs(1))) {
            Ok(Msg::Lines(buf, n)) => {
                queued.fetch_sub(n, Ordering::AcqRel);
                out.write(&buf);
            }
            Ok(Msg::Finish(ack)) => {
                out.post();
                let _ = ack.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => out.idle(),
            Err(RecvTimeoutError::Disconnected) => {
                out.post();
                return;
            }
        }
    }
}

struct HttpOut {
    cfg: HttpSink,
    pending: Vec<u8>,
    count: usize,
    /// When the oldest pending line came.
    since: Option<Instant>,
    written: metrics::Counter,
    errors: metrics::Counter,
    failed: metrics::Counter,
    /// The gateway is stopping (`Sinks::closing`, set from the writer thread, so a retry loop
    /// under way sees it too): each batch gets one attempt, no backoff, and after a failure
    /// the rest are dropped at once (counted), so a collector that is down cannot hold the
    /// exit for `max_retries` × (timeout + backoff) per batch.
    closing: Arc<AtomicBool>,
    gave_up: bool,
}

impl HttpOut {
    fn write(&mut self, buf: &[u8]) {
        for line in lines(buf) {
            self.pending.extend_from_slice(line);
            self.count += 1;
            self.since.get_or_insert_with(Instant::now);
            if self.count >= self.cfg.batch {
                self.post();
            }
        }
    }

    fn next_due(&self) -> Duration {
        self.since.map_or(Duration::MAX, |s| {
            self.cfg.flush_interval.saturating_sub(s.elapsed())
        })
    }

    fn idle(&mut self) {
        if self
            .since
            .is_some_and(|s| s.elapsed() >= self.cfg.flush_interval)
        {
            self.post();
        }
    }

    /// Sends the pending batch, retrying with doubling backoff; after `max_retries` it is dropped
    /// and counted (`reason="sink_failed"`).
    fn post(&mut self) {
        if self.count == 0 {
            return;
        }
        if self.gave_up {
            self.failed.increment(self.count as u64);
            self.clear();
            return;
        }
        let closing = || self.closing.load(Ordering::Acquire);
        let retries = if closing() { 0 } else { self.cfg.max_retries };
        let mut wait = self.cfg.backoff;
        for attempt in 0..=retries {
            match post_once(&self.cfg, &self.pending) {
                Ok(()) => {
                    self.written.increment(self.count as u64);
                    self.clear();
                    return;
                }
                Err(e) => {
                    self.errors.increment(1);
                    tracing::warn!(url = %self.cfg.url, attempt = attempt + 1, records = self.count, error = %e, "audit collector failed");
                    if attempt < retries {
                        // In slices: a shutdown ends the wait (the batch gets its last attempt).
                        let until = Instant::now() + wait;
                        while !closing() && Instant::now() < until {
                            std::thread::sleep(
                                until.saturating_duration_since(Instant::now()).min(SLICE),
                            );
                        }
                        if closing() {
                            break;
                        }
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
        tracing::error!(url = %self.cfg.url, records = self.count, retries, closing = closing(), "audit records dropped: the collector failed every retry");
        self.gave_up = closing();
        self.failed.increment(self.count as u64);
        self.clear();
    }

    fn clear(&mut self) {
        self.pending.clear();
        if self.pending.capacity() > 4 << 20 {
            self.pending.shrink_to(1 << 20);
        }
        self.count = 0;
        self.since = None;
    }
}

/// One POST of `body` (JSON lines); Ok on a 2xx answer. Each connect, write and read waits at
/// most `timeout`, and all of them together `attempt_timeout` (the name lookup excepted: the
/// system resolver takes no deadline), so a collector that drips its answer cannot hold the
/// batch, its retries and the records queued behind it.
fn post_once(cfg: &HttpSink, body: &[u8]) -> Result<(), String> {
    let deadline = Instant::now() + cfg.attempt_timeout;
    let overdue = || {
        format!(
            "no answer within {} ms (audit.http.attempt_timeout)",
            cfg.attempt_timeout.as_millis()
        )
    };
    // The wait for the next step: `timeout`, or what is left of the attempt when less.
    let wait = || match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left.min(cfg.timeout)),
        _ => Err(overdue()),
    };
    // A step that timed out at the attempt's deadline says so, not the socket's errno text.
    let io = |e: std::io::Error| {
        if Instant::now() >= deadline {
            overdue()
        } else {
            e.to_string()
        }
    };
    let addrs = cfg
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", cfg.authority))?;
    let mut last = format!("{} resolved to no address", cfg.authority);
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, wait()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connecting to {a}: {}", io(e)),
        }
    }
    let mut s = stream.ok_or(last)?;
    let _ = s.set_nodelay(true);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        cfg.target,
        cfg.authority,
        body.len()
    );
    for mut part in [head.as_bytes(), body] {
        while !part.is_empty() {
            s.set_write_timeout(Some(wait()?)).map_err(io)?;
            match s.write(part) {
                Ok(0) => return Err("the collector closed the connection".into()),
                Ok(n) => part = &part[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
    }
    // The status line is all that is needed (the connection closes after).
    let mut got = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !got.windows(2).any(|w| w == b"\r\n") {
        s.set_read_timeout(Some(wait()?)).map_err(io)?;
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            return Err("the collector closed the connection without an answer".into());
        }
        got.extend_from_slice(&chunk[..n]);
        if got.len() > 4096 {
            return Err("no HTTP status line in the collector's answer".into());
        }
    }
    let line = String::from_utf8_lossy(&got);
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| "no HTTP status line in the collector's answer".to_string())?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the collector answered {status}"))
    }
}
