//! The sinks the writer thread writes to: a file rotated by size and age, stdout, and an HTTP
//! collector (`http`: its own thread, fed copies of the lines). Blocking I/O only (this runs
//! on the writer thread, never on a worker).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use super::http::HttpLane;
use super::{FileSink, Settings};
use crate::observe::names;

/// The sinks of one audit configuration.
pub struct Sinks {
    file: Option<FileOut>,
    stdout: Option<StdoutOut>,
    http: Option<HttpLane>,
}

pub(super) fn written(sink: &'static str) -> metrics::Counter {
    metrics::counter!(names::AUDIT_RECORDS_TOTAL, "sink" => sink)
}

pub(super) fn errors(sink: &'static str) -> metrics::Counter {
    metrics::counter!(names::AUDIT_SINK_ERRORS_TOTAL, "sink" => sink)
}

pub(super) fn sink_failed() -> metrics::Counter {
    metrics::counter!(names::AUDIT_RECORDS_DROPPED_TOTAL, "reason" => "sink_failed")
}

/// The lines of `buf` (each with its newline).
pub(super) fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
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
            http: s
                .http
                .as_ref()
                .map(|h| HttpLane::start(h, s))
                .transpose()
                .context("cannot start the audit HTTP sink's thread")?,
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
            h.write(buf, n);
        }
    }

    /// Nothing is waiting: push buffered lines to the OS, rotate by age (the HTTP sink's
    /// thread sends its due batches itself).
    pub(super) fn idle(&mut self) {
        if let Some(f) = &mut self.file {
            f.idle();
        }
        if let Some(s) = &self.stdout {
            s.flush();
        }
    }

    /// The gateway is stopping: the HTTP sink stops retrying (see `HttpOut::closing`).
    pub(super) fn closing(&mut self) {
        if let Some(h) = &self.http {
            h.closing();
        }
    }

    /// Replaced by a reload: the file flushed and synced, stdout flushed, at once; the HTTP
    /// sink's thread goes on sending what it holds on its own (a collector that is down must
    /// not stop the writer, and with it the new sinks, for its retries).
    pub(super) fn retire(mut self) -> Option<super::http::Retired> {
        if let Some(f) = &mut self.file {
            f.sync();
        }
        if let Some(s) = &self.stdout {
            s.flush();
        }
        self.http.take().and_then(super::http::HttpLane::retire)
    }

    /// Writes out everything held: the file flushed and synced to disk, the HTTP sink's queue
    /// and batch sent (and its thread ended).
    pub(super) fn finish(&mut self) {
        if let Some(f) = &mut self.file {
            f.sync();
        }
        if let Some(s) = &self.stdout {
            s.flush();
        }
        if let Some(h) = &mut self.http {
            h.finish();
        }
    }
}

struct FileOut {
    cfg: FileSink,
    out: BufWriter<File>,
    /// Bytes in the current file.
    size: u64,
    /// When the file is rotated by age: the next multiple of `rotate_every` since the Unix
    /// epoch (UTC) after it was opened, so `1h` rotates on the hour and `24h` at midnight UTC.
    rotate_at: SystemTime,
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
            rotate_at: next_boundary(SystemTime::now(), cfg.rotate_every),
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
        if self.size + len <= self.cfg.max_bytes
            && (self.size == 0 || SystemTime::now() < self.rotate_at)
        {
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
                && (self.size + len > self.cfg.max_bytes || SystemTime::now() >= self.rotate_at)
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
        if self.size > 0 && SystemTime::now() >= self.rotate_at {
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
            self.rotate_at = next_boundary(SystemTime::now(), self.cfg.rotate_every);
            self.size = 0;
            return;
        }
        match open_append(path) {
            Ok(f) => {
                self.out = BufWriter::with_capacity(64 * 1024, f);
                self.size = 0;
                self.rotate_at = next_boundary(SystemTime::now(), self.cfg.rotate_every);
            }
            Err(e) => {
                // The renamed file is still open for writing: records go there until it works.
                self.errors.increment(1);
                tracing::error!(path = %path, error = %format!("{e:#}"), "audit file rotation: cannot open a new file");
                self.rotate_at = next_boundary(SystemTime::now(), self.cfg.rotate_every);
                self.size = 0;
            }
        }
    }
}

/// The first multiple of `every` since the Unix epoch after `now` (wall-clock boundaries:
/// `1h` on the hour, `24h` at midnight UTC). A clock before 1970 counts from the epoch.
pub(super) fn next_boundary(now: SystemTime, every: Duration) -> SystemTime {
    let every_ms = every.as_millis().max(1);
    let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let next = (now_ms / every_ms + 1) * every_ms;
    UNIX_EPOCH + Duration::from_millis(u64::try_from(next).unwrap_or(u64::MAX))
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
