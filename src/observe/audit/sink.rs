//! The sinks the writer thread writes to: a file rotated by size and age, stdout, and an HTTP
//! collector that gets batches of lines by POST, retried with backoff. Blocking I/O only (this
//! runs on the writer thread, never on a worker).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{FileSink, HttpSink, Settings};
use crate::observe::names;

/// The sinks of one audit configuration.
pub struct Sinks {
    file: Option<FileOut>,
    stdout: Option<StdoutOut>,
    http: Option<HttpOut>,
}

fn written(sink: &'static str) -> metrics::Counter {
    metrics::counter!(names::AUDIT_RECORDS_TOTAL, "sink" => sink)
}

fn errors(sink: &'static str) -> metrics::Counter {
    metrics::counter!(names::AUDIT_SINK_ERRORS_TOTAL, "sink" => sink)
}

fn sink_failed() -> metrics::Counter {
    metrics::counter!(names::AUDIT_RECORDS_DROPPED_TOTAL, "reason" => "sink_failed")
}

/// The lines of `buf` (each with its newline).
fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split_inclusive(|&b| b == b'\n')
}

impl Sinks {
    /// Opens the sinks `s` names (the file is created or appended to now, so a path that cannot
    /// be written fails the start or the reload, not the first record).
    pub fn open(s: &Settings) -> anyhow::Result<Sinks> {
        Ok(Sinks {
            file: s.file.as_ref().map(FileOut::open).transpose()?,
            stdout: s.stdout.then(|| StdoutOut {
                written: written("stdout"),
                errors: errors("stdout"),
            }),
            http: s.http.as_ref().map(|h| HttpOut {
                cfg: h.clone(),
                pending: Vec::new(),
                count: 0,
                since: None,
                written: written("http"),
                errors: errors("http"),
                failed: sink_failed(),
                closing: false,
                gave_up: false,
            }),
        })
    }

    pub(super) fn write(&mut self, buf: &[u8], n: usize) {
        if let Some(f) = &mut self.file {
            f.write(buf, n);
        }
        if let Some(s) = &mut self.stdout {
            s.write(buf, n);
        }
        if let Some(h) = &mut self.http {
            h.write(buf);
        }
    }

    /// Nothing is waiting: push buffered lines to the OS, send a due HTTP batch, rotate by age.
    pub(super) fn idle(&mut self) {
        if let Some(f) = &mut self.file {
            f.idle();
        }
        if let Some(s) = &self.stdout {
            s.flush();
        }
        if let Some(h) = &mut self.http {
            h.idle();
        }
    }

    /// How long until a sink has something to do on its own (an HTTP batch falls due).
    pub(super) fn next_due(&self) -> Duration {
        self.http.as_ref().map_or(Duration::MAX, HttpOut::next_due)
    }

    /// The gateway is stopping: the HTTP sink stops retrying (see `HttpOut::closing`).
    pub(super) fn closing(&mut self) {
        if let Some(h) = &mut self.http {
            h.closing = true;
        }
    }

    /// Writes out everything held: the file flushed and synced to disk, the HTTP batch sent.
    pub(super) fn finish(&mut self) {
        if let Some(f) = &mut self.file {
            f.sync();
        }
        if let Some(s) = &self.stdout {
            s.flush();
        }
        if let Some(h) = &mut self.http {
            h.post();
        }
    }
}

struct FileOut {
    cfg: FileSink,
    out: BufWriter<File>,
    /// Bytes in the current file.
    size: u64,
    opened: Instant,
    written: metrics::Counter,
    errors: metrics::Counter,
    failed: metrics::Counter,
}

impl FileOut {
    fn open(cfg: &FileSink) -> anyhow::Result<FileOut> {
        let file = open_append(&cfg.path)?;
        let size = file.metadata().map_or(0, |m| m.len());
        Ok(FileOut {
            cfg: cfg.clone(),
            out: BufWriter::with_capacity(64 * 1024, file),
            size,
            opened: Instant::now(),
            written: written("file"),
            errors: errors("file"),
            failed: sink_failed(),
        })
    }

    fn write(&mut self, buf: &[u8], n: usize) {
        // The common case: the whole batch fits in the current file and its age is not up:
        // the batch goes out as it came, in one write (straight to the file when nothing is
        // buffered before it: no copy), with no per-line work.
        let len = buf.len() as u64;
        if self.size + len <= self.cfg.max_bytes && self.opened.elapsed() < self.cfg.rotate_every {
            let r = if self.out.buffer().is_empty() {
                self.out.get_mut().write_all(buf)
            } else {
                self.out.write_all(buf)
            };
            match r {
                Ok(()) => {
                    self.size += len;
                    self.written.increment(n as u64);
                    return;
                }
                Err(e) => {
                    // Part of the batch may be out: count it lost whole, as the per-line path
                    // would have for lines it could not write.
                    self.errors.increment(1);
                    self.failed.increment(n as u64);
                    tracing::error!(path = %self.cfg.path, error = %e, "audit file write failed");
                    return;
                }
            }
        }
        let mut ok = 0u64;
        let mut lost = 0u64;
        for line in lines(buf) {
            let len = line.len() as u64;
            if self.size > 0
                && (self.size + len > self.cfg.max_bytes
                    || self.opened.elapsed() >= self.cfg.rotate_every)
            {
                self.rotate();
            }
            match self.out.write_all(line) {
                Ok(()) => {
                    self.size += len;
                    ok += 1;
                }
                Err(e) => {
                    self.errors.increment(1);
                    lost += 1;
                    tracing::error!(path = %self.cfg.path, error = %e, "audit file write failed");
                }
            }
        }
        self.written.increment(ok);
        self.failed.increment(lost);
    }

    fn idle(&mut self) {
        if self.size > 0 && self.opened.elapsed() >= self.cfg.rotate_every {
            self.rotate();
        }
        if let Err(e) = self.out.flush() {
            self.errors.increment(1);
            tracing::error!(path = %self.cfg.path, error = %e, "audit file write failed");
        }
    }

    fn sync(&mut self) {
        let r = self
            .out
            .flush()
            .and_then(|()| self.out.get_ref().sync_all());
        if let Err(e) = r {
            self.errors.increment(1);
            tracing::error!(path = %self.cfg.path, error = %e, "audit file sync failed");
        }
    }

    /// `path` → `path.1` → … → `path.keep` (the oldest is replaced), then a new `path`.
    fn rotate(&mut self) {
        self.sync();
        let path = &self.cfg.path;
        let renamed = if self.cfg.keep == 0 {
            std::fs::remove_file(path)
        } else {
            for i in (1..self.cfg.keep).rev() {
                match std::fs::rename(format!("{path}.{i}"), format!("{path}.{}", i + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::error!(path = %path, error = %e, "audit file rotation: rename failed");
                    }
                    _ => {}
                }
            }
            std::fs::rename(path, format!("{path}.1"))
        };
        if let Err(e) = renamed {
            // Keep writing to the file we have: records are not lost, it only grows.
            self.errors.increment(1);
            tracing::error!(path = %path, error = %e, "audit file rotation failed");
            self.opened = Instant::now();
            self.size = 0;
            return;
        }
        match open_append(path) {
            Ok(f) => {
                self.out = BufWriter::with_capacity(64 * 1024, f);
                self.size = 0;
                self.opened = Instant::now();
            }
            Err(e) => {
                // The renamed file is still open for writing: records go there until it works.
                self.errors.increment(1);
                tracing::error!(path = %path, error = %format!("{e:#}"), "audit file rotation: cannot open a new file");
                self.opened = Instant::now();
                self.size = 0;
            }
        }
    }
}

fn open_append(path: &str) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("audit file {path}"))
}

struct StdoutOut {
    written: metrics::Counter,
    errors: metrics::Counter,
}

impl StdoutOut {
    /// Pushes the lines written so far to the OS (a failure is counted).
    fn flush(&self) {
        if std::io::stdout().lock().flush().is_err() {
            self.errors.increment(1);
        }
    }

    fn write(&mut self, buf: &[u8], n: usize) {
        match std::io::stdout().lock().write_all(buf) {
            Ok(()) => self.written.increment(n as u64),
            Err(_) => {
                self.errors.increment(1);
                sink_failed().increment(n as u64);
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
    /// The gateway is stopping (`Sinks::closing`): each batch gets one attempt, no backoff,
    /// and after a failure the rest are dropped at once (counted), so a collector that is down
    /// cannot hold the exit for `max_retries` × (timeout + backoff) per batch.
    closing: bool,
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
        let retries = if self.closing {
            0
        } else {
            self.cfg.max_retries
        };
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
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
        tracing::error!(url = %self.cfg.url, records = self.count, retries, closing = self.closing, "audit records dropped: the collector failed every retry");
        self.gave_up = self.closing;
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

/// One POST of `body` (JSON lines); Ok on a 2xx answer.
fn post_once(cfg: &HttpSink, body: &[u8]) -> Result<(), String> {
    let addrs = cfg
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", cfg.authority))?;
    let mut last = format!("{} resolved to no address", cfg.authority);
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, cfg.timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connecting to {a}: {e}"),
        }
    }
    let mut s = stream.ok_or(last)?;
    let io = |e: std::io::Error| e.to_string();
    s.set_read_timeout(Some(cfg.timeout)).map_err(io)?;
    s.set_write_timeout(Some(cfg.timeout)).map_err(io)?;
    let _ = s.set_nodelay(true);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        cfg.target,
        cfg.authority,
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(body).map_err(io)?;
    // The status line is all that is needed (the connection closes after).
    let mut got = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut chunk).map_err(io)?;
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
