//! OTLP/HTTP span export: the record phase offers each sampled request's span to a bounded
//! queue (never blocking; a full queue drops the span and counts it), and one thread per config
//! generation sends them in batches as OTLP JSON (`ExportTraceServiceRequest`, ids in hex) to
//! `tracing.otlp.endpoint`. The thread ends when its generation is dropped, after a last flush.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde_json::{json, Value};

use super::names;
use super::trace::TraceIds;
use crate::config::telemetry::Otlp;

/// One request's span, as the record phase saw it.
pub struct Span {
    pub trace: TraceIds,
    /// `<method> <target>` (e.g. `tools/call echo`), or the method alone.
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// `(key, value)` attributes.
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// The request failed on the gateway's or upstream's side (span status ERROR).
    pub error: Option<String>,
}

pub enum AttrValue {
    Str(String),
    Int(i64),
}

/// The sending side of a generation's exporter (in `Gateway::spans`).
pub struct Exporter {
    tx: Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl Exporter {
    /// Starts the exporter thread for `cfg`; `None` (logged) if the thread cannot start.
    pub fn start(cfg: &Otlp) -> Option<Exporter> {
        let (tx, rx) = crossbeam_channel::bounded(cfg.queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let (cfg, d) = (cfg.clone(), dropped.clone());
        let spawned = std::thread::Builder::new()
            .name("tollgate-otlp".into())
            .spawn(move || run(&cfg, &rx, &d));
        match spawned {
            Ok(_) => Some(Exporter { tx, dropped }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the OTLP exporter thread: spans are not exported");
                None
            }
        }
    }

    /// Queues a span; never waits. A full queue drops it (counted by the exporter thread).
    pub fn offer(&self, span: Span) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Span(span))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// At exit: the thread sends what it holds (one POST per batch under `timeout`) and ends;
    /// waits for that at most `within` (the spans of the drain are exported, not dropped with
    /// the process).
    pub fn close(&self, within: std::time::Duration) {
        let (ack, done) = crossbeam_channel::bounded(1);
        if self.tx.send_timeout(Msg::Close(ack), within).is_ok() {
            let _ = done.recv_timeout(within);
        }
    }
}

/// What the exporter thread is sent.
enum Msg {
    Span(Span),
    /// Flush and end; answer when done.
    Close(Sender<()>),
}

fn run(cfg: &Otlp, rx: &Receiver<Msg>, dropped: &AtomicU64) {
    let mut batch: Vec<Span> = Vec::with_capacity(cfg.batch.min(4096));
    let mut due: Option<Instant> = None;
    let mut dropped_seen = 0u64;
    loop {
        let got = match due {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_deadline(d),
        };
        let mut last = matches!(got, Err(RecvTimeoutError::Disconnected));
        let mut ack = None;
        match got {
            Ok(Msg::Span(span)) => {
                batch.push(span);
                due.get_or_insert_with(|| Instant::now() + cfg.flush_interval);
            }
            Ok(Msg::Close(a)) => {
                // Everything offered before the close is queued ahead of it: take it all.
                while let Ok(m) = rx.try_recv() {
                    if let Msg::Span(span) = m {
                        batch.push(span);
                    }
                }
                ack = Some(a);
                last = true;
                due = None;
            }
            Err(_) => due = None,
        }
        let now_due = due.is_none() || batch.len() >= cfg.batch;
        if now_due && !batch.is_empty() {
            // (More than a batch only at a close: one POST per `batch` spans.)
            while batch.len() > cfg.batch {
                let rest = batch.split_off(cfg.batch);
                flush(cfg, &mut batch);
                batch = rest;
            }
            flush(cfg, &mut batch);
            due = None;
        }
        let d = dropped.load(Ordering::Relaxed);
        if d > dropped_seen {
            metrics::counter!(names::TRACE_SPANS_DROPPED_TOTAL, "reason" => "queue_full")
                .increment(d - dropped_seen);
            dropped_seen = d;
        }
        if last {
            if let Some(a) = ack {
                let _ = a.send(());
            }
            return;
        }
    }
}

fn flush(cfg: &Otlp, batch: &mut Vec<Span>) {
    let n = batch.len() as u64;
    let body = encode(cfg, batch);
    batch.clear();
    match post(cfg, &body) {
        Ok(()) => metrics::counter!(names::TRACE_SPANS_EXPORTED_TOTAL).increment(n),
        Err(e) => {
            metrics::counter!(names::TRACE_EXPORT_ERRORS_TOTAL).increment(1);
            metrics::counter!(names::TRACE_SPANS_DROPPED_TOTAL, "reason" => "export_failed")
                .increment(n);
            tracing::warn!(error = %e, spans = n, endpoint = %cfg.endpoint.authority, "OTLP export failed: spans dropped");
        }
    }
}

/// An `ExportTraceServiceRequest` in the OTLP/JSON mapping: ids as hex, times as decimal strings,
/// the span kind as its number (2 = SERVER).
pub fn encode(cfg: &Otlp, spans: &[Span]) -> Vec<u8> {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut v = json!({
                "traceId": s.trace.trace_id_hex(),
                "spanId": s.trace.span_id_hex(),
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": s.start_unix_nanos.to_string(),
                "endTimeUnixNano": s.end_unix_nanos.to_string(),
                "attributes": s.attributes.iter().map(|(k, a)| attribute(k, a)).collect::<Vec<_>>(),
                "flags": 0x100 | u32::from(s.trace.sampled),
            });
            if let Some(p) = s.trace.parent_span_id {
                v["parentSpanId"] = json!(super::trace::hex(&p));
            }
            if let Some(e) = &s.error {
                v["status"] = json!({"code": 2, "message": e});
            }
            v
        })
        .collect();
    let req = json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": cfg.service_name}},
                {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
            ]},
            "scopeSpans": [{
                "scope": {"name": "tollgate", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    });
    serde_json::to_vec(&req).unwrap_or_default()
}

fn attribute(key: &str, v: &AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => json!({"key": key, "value": {"stringValue": s}}),
        // int64 is a decimal string in the JSON mapping.
        AttrValue::Int(i) => json!({"key": key, "value": {"intValue": i.to_string()}}),
    }
}

/// One POST over a fresh connection; a 2xx answer is success.
fn post(cfg: &Otlp, body: &[u8]) -> std::io::Result<()> {
    let e = &cfg.endpoint;
    let deadline = Instant::now() + cfg.timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut conn = None;
    for a in e.resolve()? {
        match TcpStream::connect_timeout(&a, left()?) {
            Ok(s) => {
                conn = Some(s);
                break;
            }
            Err(err) => last = err,
        }
    }
    let mut s = conn.ok_or(last)?;
    s.set_nodelay(true)?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        e.path,
        e.authority,
        body.len()
    );
    for (n, v) in &cfg.headers {
        head.push_str(n);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.set_write_timeout(Some(left()?))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    // The status line is enough: the connection closes after the answer.
    let mut got = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !got.windows(2).any(|w| w == b"\r\n") {
        if got.len() > 8 * 1024 {
            break;
        }
        s.set_read_timeout(Some(left()?))?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    let status = got
        .strip_prefix(b"HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(()),
        Some(code) => Err(std::io::Error::other(format!("collector answered {code}"))),
        None => Err(std::io::Error::other("no HTTP answer from the collector")),
    }
}

/// Unix time in nanoseconds `ago` before now.
pub fn unix_nanos_ago(ago: Duration) -> u64 {
    std::time::SystemTime::now()
        .checked_sub(ago)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}
