//! The audit log's pipeline: settings (`audit:`), each worker's record buffer (`Batch`), and the
//! process-wide `Hub` that hands full buffers to one writer thread (`writer`) through a channel
//! bounded in records. The request path only formats into its worker's buffer; every file and
//! stdout write happens on the writer thread, every HTTP POST on the HTTP sink's (`http`).
//! `proxy::audit_record` decides what a record says; this module never sees a request.

mod http;
mod sink;
mod writer;

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::mcp::names::Filter;
use crate::mcp::Method;

pub use sink::Sinks;

/// What to do with a record when `audit.buffer` records are already waiting for the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// The worker waits for room (requests on that core wait with it): nothing is lost.
    Block,
    /// The records are dropped and counted (`tollgate_audit_records_dropped_total{reason="overflow"}`).
    Drop,
}

impl Overflow {
    pub const fn as_str(self) -> &'static str {
        match self {
            Overflow::Block => "block",
            Overflow::Drop => "drop",
        }
    }
}

/// `audit.file`: a JSON-lines file, rotated by size and age.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSink {
    /// The path to write (an `${env:NAME}` reference already resolved).
    pub path: String,
    /// The path as written (`${env:TOLLGATE_AUDIT_FILE}`), for `render_effective`.
    pub written: String,
    /// Rotate before a line would take the file past this many bytes.
    pub max_bytes: u64,
    /// Rotate at each multiple of this since the Unix epoch (`1h`: on the hour; `24h`: at
    /// midnight UTC), at the next record or writer tick after it.
    pub rotate_every: Duration,
    /// Rotated files kept (`path.1` the newest … `path.keep`); older ones are deleted.
    pub keep: usize,
}

/// `audit.http`: batches of JSON lines POSTed to a collector (plain HTTP/1.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSink {
    pub url: String,
    /// `host:port` to connect to (resolved at each connect).
    pub authority: String,
    /// The request target (path and query).
    pub target: String,
    /// Records per POST at most.
    pub batch: usize,
    /// A batch not full is sent after this long.
    pub flush_interval: Duration,
    /// Connect, write and read timeout of one POST.
    pub timeout: Duration,
    /// One attempt (connect, send, the answer's status line) as a whole: a collector that
    /// answers a byte at a time, each within `timeout`, fails the attempt after this long.
    pub attempt_timeout: Duration,
    /// Attempts after the first failed one; then the batch is dropped and counted.
    pub max_retries: u32,
    /// Wait before the first retry, doubled before each next one (at most 30 s).
    pub backoff: Duration,
    /// Records this sink may hold waiting for the collector (`None`: `audit.buffer`).
    pub queue: Option<usize>,
}

/// `audit:` as validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub enabled: bool,
    pub file: Option<FileSink>,
    pub stdout: bool,
    pub http: Option<HttpSink>,
    /// Records waiting for the writer at most.
    pub buffer: usize,
    pub overflow: Overflow,
    /// Methods that produce a record (default `tools/call`).
    pub methods: Vec<Method>,
    /// `arguments.values`: tools whose argument values are recorded (else keys only).
    pub values: Option<Filter>,
    /// The globs of `values`, as written.
    pub value_globs: Vec<String>,
    /// `arguments.redact`: every match in a recorded value is replaced by `[redacted]`.
    pub redact: Vec<regex::Regex>,
    /// `max_decoded`: bytes of a gzip or deflate reply the reply probe decodes at most.
    pub max_decoded: u64,
}

impl PartialEq for Settings {
    fn eq(&self, o: &Self) -> bool {
        self.enabled == o.enabled
            && self.file == o.file
            && self.stdout == o.stdout
            && self.http == o.http
            && self.buffer == o.buffer
            && self.overflow == o.overflow
            && self.methods == o.methods
            && self.value_globs == o.value_globs
            && self.max_decoded == o.max_decoded
            && self.redact.len() == o.redact.len()
            && self
                .redact
                .iter()
                .zip(&o.redact)
                .all(|(a, b)| a.as_str() == b.as_str())
    }
}

pub mod defaults {
    use std::time::Duration;
    pub const BUFFER: usize = 65_536;
    /// Decoded bytes of a compressed reply read for its error code (a zip bomb costs no more).
    pub const MAX_DECODED: u64 = 1 << 20;
    pub const FILE_MAX_BYTES: u64 = 100 << 20;
    pub const FILE_ROTATE_EVERY: Duration = Duration::from_secs(24 * 3600);
    pub const FILE_KEEP: usize = 10;
    pub const HTTP_BATCH: usize = 500;
    pub const HTTP_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
    pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
    pub const HTTP_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const HTTP_MAX_RETRIES: u32 = 5;
    pub const HTTP_BACKOFF: Duration = Duration::from_millis(200);
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: false,
            file: None,
            stdout: false,
            http: None,
            buffer: defaults::BUFFER,
            overflow: Overflow::Block,
            methods: vec![Method::ToolsCall],
            values: None,
            value_globs: Vec::new(),
            redact: Vec::new(),
            max_decoded: defaults::MAX_DECODED,
        }
    }
}

impl Settings {
    /// Whether a message with `method` gets a record.
    pub fn records(&self, method: Method) -> bool {
        self.enabled && self.methods.contains(&method)
    }

    /// Whether `tool`'s argument values are recorded.
    pub fn values_of(&self, tool: &str) -> bool {
        self.values.as_ref().is_some_and(|f| f.allows(tool))
    }
}

/// A worker hands its buffer over at this many records (or on its 50 ms tick): each hand-over
/// wakes the writer thread (a futex wake here, a context switch there), so fewer, larger
/// batches cost the process less CPU: at 60k records/s, 256 a batch was ~1 % of the process
/// in wake-ups alone; the tick still bounds how long a record waits in a quiet worker.
pub const BATCH_RECORDS: usize = 1024;
/// … or when the buffer holds this many bytes.
const BATCH_BYTES: usize = 512 * 1024;
/// Sets of remembered session hashes per worker (chosen by bytes of the session id), two each:
/// direct-mapped, two sessions sharing a slot recomputed their HMAC (~1 µs) on every record.
const SESSION_SETS: usize = 256;

/// A worker's remembered session hashes: (session id, its hash), two per set, the most recently
/// computed first.
type SessionHashes = [Option<([u8; 16], [u8; 16])>; 2 * SESSION_SETS];

/// What the writer thread is sent, in order.
enum Msg {
    /// `n` complete JSON lines.
    Records(Vec<u8>, usize),
    /// Finish the running sinks (flush, fsync) and write to these from now on.
    Swap(Box<Sinks>),
    /// Write everything sent before, flush and fsync, answer, and end.
    Close(Sender<()>),
}

/// The process's audit pipeline: shared by every generation of the gateway (a reload swaps its
/// sinks, never the hub), so no record is lost across reloads.
pub struct Hub {
    /// The key of the session hash (random per process): a record names a session without
    /// revealing its id, and the hash cannot be turned back into one.
    session_key: ring::hmac::Key,
    tx: OnceLock<Sender<Msg>>,
    /// The writer thread, woken (`post`) after each message: it waits parked, not in the
    /// channel's receive (which spins and yields the CPU several times before it sleeps).
    writer_thread: OnceLock<std::thread::Thread>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Records handed to the writer and not yet written.
    queued: Arc<AtomicUsize>,
    /// Empty buffers the writer gives back, so a worker reuses them instead of allocating.
    spare: (Sender<Vec<u8>>, Receiver<Vec<u8>>),
    dropped: Counters,
    /// Unix seconds of the last "records dropped" warning (one a second at most).
    last_warned: AtomicU64,
}

struct Counters {
    overflow: metrics::Counter,
    closed: metrics::Counter,
    queue: metrics::Gauge,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        use ring::rand::SecureRandom;
        let mut key = [0u8; 32];
        // A failing system RNG leaves the key zero: still keyed, just not secret; say so.
        if ring::rand::SystemRandom::new().fill(&mut key).is_err() {
            tracing::error!("no system randomness for the audit session-hash key");
        }
        let dropped = |reason: &'static str| metrics::counter!(crate::observe::names::AUDIT_RECORDS_DROPPED_TOTAL, "reason" => reason);
        Hub {
            session_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            tx: OnceLock::new(),
            writer_thread: OnceLock::new(),
            writer: Mutex::new(None),
            queued: Arc::new(AtomicUsize::new(0)),
            spare: crossbeam_channel::bounded(256),
            dropped: Counters {
                overflow: dropped("overflow"),
                closed: dropped("closed"),
                queue: metrics::gauge!(crate::observe::names::AUDIT_QUEUE_RECORDS),
            },
            last_warned: AtomicU64::new(0),
        }
    }

    /// Starts the writer with `settings`' sinks if audit is on (at start); a hub whose audit
    /// is off starts no thread until a reload turns it on (`swap`).
    pub fn start(&self, settings: &Settings) -> anyhow::Result<()> {
        if settings.enabled {
            let sinks = Sinks::open(settings)?;
            self.swap(sinks);
        }
        Ok(())
    }

    /// Writes to `sinks` from now on: records sent before go to the sinks they were sent to
    /// (which are flushed and synced first); the first call starts the writer thread.
    pub fn swap(&self, sinks: Sinks) {
        if let Some(tx) = self.tx.get() {
            if self.post(tx, Msg::Swap(Box::new(sinks))).is_err() {
                tracing::error!("the audit writer has stopped: new sinks not installed");
            }
            return;
        }
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let (tx, rx) = crossbeam_channel::unbounded();
        let queued = self.queued.clone();
        let spare = self.spare.0.clone();
        let gauge = self.dropped.queue.clone();
        match std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || writer::run(rx, sinks, queued, spare, gauge))
        {
            Ok(h) => {
                let _ = self.writer_thread.set(h.thread().clone());
                *writer = Some(h);
                let _ = self.tx.set(tx);
            }
            Err(e) => tracing::error!(error = %e, "cannot start the audit writer thread"),
        }
    }

    /// Hands every record sent so far to the sinks, flushes and syncs them, and stops the
    /// writer (at exit, after the workers have flushed their buffers).
    pub fn close(&self) {
        let Some(tx) = self.tx.get() else { return };
        let (ack, done) = crossbeam_channel::bounded(1);
        if self.post(tx, Msg::Close(ack)).is_ok() {
            let _ = done.recv();
        }
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }

    /// The session's keyed hash: 16 hex characters of HMAC-SHA256(process key, session id).
    pub fn session_hash(&self, id: &[u8; 16], out: &mut [u8; 16]) {
        let tag = ring::hmac::sign(&self.session_key, id);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in tag.as_ref()[..8].iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 15)];
        }
    }

    /// Queues `n` records (whole lines in `buf`) under `settings`' bound and overflow policy.
    /// Returns the buffer to reuse (a spare one, or `buf` itself cleared when it was dropped).
    fn send(&self, mut buf: Vec<u8>, n: usize, settings: &Settings) -> Vec<u8> {
        let Some(tx) = self.tx.get() else {
            self.dropped_records(n, "closed");
            buf.clear();
            return buf;
        };
        let limit = settings.buffer.max(n);
        loop {
            let q = self.queued.load(Ordering::Acquire);
            if q + n <= limit {
                if self
                    .queued
                    .compare_exchange(q, q + n, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    break;
                }
                continue;
            }
            match settings.overflow {
                Overflow::Drop => {
                    self.dropped_records(n, "overflow");
                    buf.clear();
                    return buf;
                }
                // Blocking is what `block` asks for: this worker waits for the writer.
                Overflow::Block => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        self.dropped.queue.increment(n as f64);
        match self.post(tx, Msg::Records(buf, n)) {
            Ok(()) => self.spare.1.try_recv().unwrap_or_default(),
            Err(crossbeam_channel::SendError(msg)) => {
                self.queued.fetch_sub(n, Ordering::AcqRel);
                self.dropped.queue.decrement(n as f64);
                self.dropped_records(n, "closed");
                match msg {
                    Msg::Records(mut b, _) => {
                        b.clear();
                        b
                    }
                    _ => Vec::new(),
                }
            }
        }
    }

    /// Sends `msg` to the writer and wakes it.
    fn post(&self, tx: &Sender<Msg>, msg: Msg) -> Result<(), crossbeam_channel::SendError<Msg>> {
        tx.send(msg)?;
        if let Some(t) = self.writer_thread.get() {
            t.unpark();
        }
        Ok(())
    }

    fn dropped_records(&self, n: usize, reason: &'static str) {
        match reason {
            "overflow" => self.dropped.overflow.increment(n as u64),
            _ => self.dropped.closed.increment(n as u64),
        }
        warn_dropped(&self.last_warned, n, reason);
    }
}

/// Logs a drop at most once a second (a flood of drops must not become a flood of logs).
fn warn_dropped(last: &AtomicU64, n: usize, reason: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prev = last.load(Ordering::Relaxed);
    if prev != now
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            records = n,
            reason,
            "audit records dropped (counted in tollgate_audit_records_dropped_total)"
        );
    }
}

/// One worker's audit buffer: records are formatted into it by the record phase and handed to
/// the hub whole, `BATCH_RECORDS` at a time or on the worker's tick.
#[derive(Default)]
pub struct Batch {
    buf: RefCell<Vec<u8>>,
    records: Cell<usize>,
    /// Session id → its keyed hash, for the sessions this worker saw last (an HMAC per record
    /// otherwise; allocated with the first record that has a session).
    sessions: RefCell<Option<Box<SessionHashes>>>,
}

impl Batch {
    /// `id`'s keyed hash (`Hub::session_hash`), from this worker's cache when it is there.
    pub fn session_hash(&self, hub: &Hub, id: &[u8; 16], out: &mut [u8; 16]) {
        let mut cache = self.sessions.borrow_mut();
        let cache = cache.get_or_insert_with(|| Box::new([None; 2 * SESSION_SETS]));
        let set = 2 * (usize::from(id[0] ^ id[7] ^ id[15]) % SESSION_SETS);
        let ways = &mut cache[set..set + 2];
        if let Some((_, h)) = ways.iter().flatten().find(|(k, _)| k == id) {
            *out = *h;
            return;
        }
        hub.session_hash(id, out);
        ways[1] = ways[0].replace((*id, *out));
    }

    /// Appends one record: `write` puts one JSON object (no newline) into the buffer.
    pub fn push(&self, hub: &Hub, settings: &Settings, write: impl FnOnce(&mut Vec<u8>)) {
        let full = {
            let mut b = self.buf.borrow_mut();
            write(&mut b);
            b.push(b'\n');
            self.records.set(self.records.get() + 1);
            self.records.get() >= BATCH_RECORDS || b.len() >= BATCH_BYTES
        };
        if full {
            self.flush(hub, settings);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.get() == 0
    }

    /// Hands what is buffered to the hub.
    pub fn flush(&self, hub: &Hub, settings: &Settings) {
        let n = self.records.replace(0);
        if n == 0 {
            return;
        }
        let buf = std::mem::take(&mut *self.buf.borrow_mut());
        let back = hub.send(buf, n, settings);
        *self.buf.borrow_mut() = back;
    }
}

#[cfg(test)]
mod tests;
