//! The access log: one line per request (or per refusal only, or none: `log.access`), written by
//! the record phase. Each worker formats into its own buffer and writes whole lines to stderr
//! (where the other logs go) when the buffer passes `FLUSH_AT` or on the worker's 50 ms tick, in
//! writes of at most `PIPE_BUF` bytes that end on a line boundary, so lines from several workers
//! and from `tracing` never interleave inside a line, even on a pipe.
//! Formatting costs a few hundred nanoseconds a line; no lock, no syscall per request.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which requests get an access line (`log.access`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLog {
    /// Every request.
    All,
    /// Only requests the gateway refused or could not complete.
    Refusals,
    Off,
}

impl AccessLog {
    pub const fn as_str(self) -> &'static str {
        match self {
            AccessLog::All => "all",
            AccessLog::Refusals => "refusals",
            AccessLog::Off => "off",
        }
    }
}

/// Buffer size that triggers a write before the tick.
const FLUSH_AT: usize = 16 * 1024;
/// Largest single write (POSIX guarantees atomic pipe writes up to PIPE_BUF = 4096 on Linux).
const MAX_WRITE: usize = 4096;
/// Most bytes of one field taken from the wire (a tool name, an id, a URI): a client cannot
/// make a line longer than the pipe writes it in, nor fill a disk with one request.
pub const MAX_WIRE_FIELD: usize = 256;
/// Most bytes of any other text field (a refusal's reason).
pub const MAX_TEXT_FIELD: usize = 1024;

/// `v`, cut to `max` bytes (on a UTF-8 boundary) with how long it was: `(kept, Some(len))`.
fn bounded(v: &[u8], max: usize) -> (&[u8], Option<usize>) {
    if v.len() <= max {
        return (v, None);
    }
    let mut end = max;
    // Do not cut inside a UTF-8 sequence (continuation bytes are 10xxxxxx).
    while end > 0 && (v[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    (&v[..end], Some(v.len()))
}

/// A field value in a line.
pub enum Value<'a> {
    Str(&'a str),
    /// Bytes from the wire, shown as text (invalid UTF-8 replaced, control characters escaped).
    Bytes(&'a [u8]),
    U64(u64),
    Addr(std::net::SocketAddr),
}

/// One worker's access log buffer.
pub struct AccessWriter {
    json: bool,
    buf: RefCell<Vec<u8>>,
    /// The timestamp up to its seconds (`2026-11-28T04:50:00`), for the second it was made in:
    /// formatted once a second, not once a line.
    second: RefCell<(u64, String)>,
}

impl AccessWriter {
    pub fn new(json: bool) -> Self {
        AccessWriter {
            json,
            buf: RefCell::new(Vec::new()),
            second: RefCell::new((u64::MAX, String::new())),
        }
    }

    /// `2026-11-28T04:50:00.123456Z` for now, from the cached second.
    pub fn timestamp(&self, out: &mut Vec<u8>) {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.timestamp_at(out, d);
    }

    /// `timestamp` of `d` since the Unix epoch.
    pub fn timestamp_at(&self, out: &mut Vec<u8>, d: std::time::Duration) {
        let mut sec = self.second.borrow_mut();
        if sec.0 != d.as_secs() {
            sec.1.clear();
            rfc3339_micros(
                &mut sec.1,
                UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()),
            );
            let keep = sec.1.len() - ".000000Z".len();
            sec.1.truncate(keep);
            sec.0 = d.as_secs();
        }
        out.extend_from_slice(sec.1.as_bytes());
        out.push(b'.');
        let us = d.subsec_micros();
        for div in [100_000, 10_000, 1_000, 100, 10, 1] {
            out.push(b'0' + (us / div % 10) as u8);
        }
        out.push(b'Z');
    }

    /// Appends one line: `level` is `INFO` or `WARN`; fields in order, `None` values skipped.
    pub fn line(&self, level: &str, fields: &[(&str, Option<Value<'_>>)]) {
        let mut b = self.buf.borrow_mut();
        if self.json {
            b.extend_from_slice(b"{\"timestamp\":\"");
            self.timestamp(&mut b);
            b.extend_from_slice(b"\",\"level\":\"");
            b.extend_from_slice(level.as_bytes());
            b.extend_from_slice(b"\",\"target\":\"access\"");
            for (k, v) in fields {
                let Some(v) = v else { continue };
                b.extend_from_slice(b",\"");
                b.extend_from_slice(k.as_bytes());
                b.extend_from_slice(b"\":");
                match v {
                    Value::Str(s) => json_bounded(&mut b, s.as_bytes(), MAX_TEXT_FIELD),
                    Value::Bytes(s) => json_bounded(&mut b, s, MAX_WIRE_FIELD),
                    Value::U64(n) => crate::http::response::push_u64(&mut b, *n),
                    Value::Addr(a) => {
                        b.push(b'"');
                        let _ = write!(Adapter(&mut b), "{a}");
                        b.push(b'"');
                    }
                }
            }
            b.extend_from_slice(b"}\n");
        } else {
            self.timestamp(&mut b);
            b.extend_from_slice(if level == "WARN" {
                b"  WARN"
            } else {
                b"  INFO"
            });
            b.extend_from_slice(b" access:");
            for (k, v) in fields {
                let Some(v) = v else { continue };
                b.push(b' ');
                b.extend_from_slice(k.as_bytes());
                b.push(b'=');
                match v {
                    Value::Str(s) => text_bounded(&mut b, s.as_bytes(), MAX_TEXT_FIELD),
                    Value::Bytes(s) => text_bounded(&mut b, s, MAX_WIRE_FIELD),
                    Value::U64(n) => crate::http::response::push_u64(&mut b, *n),
                    Value::Addr(a) => {
                        let _ = write!(Adapter(&mut b), "{a}");
                    }
                }
            }
            b.push(b'\n');
        }
        let full = b.len() >= FLUSH_AT;
        drop(b);
        if full {
            self.flush();
        }
    }

    /// Writes what is buffered to stderr (blocking, like every other log line).
    pub fn flush(&self) {
        let mut b = self.buf.borrow_mut();
        let mut rest: &[u8] = &b;
        while !rest.is_empty() {
            let mut n = rest.len().min(MAX_WRITE);
            if n < rest.len() {
                // End the write on a line boundary (a line longer than MAX_WRITE goes whole).
                n = match memchr::memrchr(b'\n', &rest[..n]) {
                    Some(i) => i + 1,
                    None => memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1),
                };
            }
            // SAFETY: writing initialized bytes from a live slice to fd 2.
            let w = unsafe { libc::write(2, rest.as_ptr().cast(), n) };
            if w <= 0 {
                if w < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                break; // stderr is gone: drop the lines rather than stall the worker
            }
            rest = &rest[w as usize..];
        }
        b.clear();
        if b.capacity() > 4 * FLUSH_AT {
            b.shrink_to(FLUSH_AT);
        }
    }
}

/// A JSON string of `v` cut to `max` bytes, with `…(N bytes)` when it was cut.
pub fn json_bounded(b: &mut Vec<u8>, v: &[u8], max: usize) {
    // Most values (names, paths, ids) are printable ASCII with nothing to escape: copied as
    // they are, without the UTF-8 check and the escaper.
    // A fold without early exit: LLVM checks 32 bytes at a time.
    if v.len() <= max
        && v.iter().fold(true, |ok, &c| {
            ok & (0x20..0x80).contains(&c) & (c != b'"') & (c != b'\\')
        })
    {
        b.push(b'"');
        b.extend_from_slice(v);
        b.push(b'"');
        return;
    }
    match bounded(v, max) {
        (v, None) => match std::str::from_utf8(v) {
            Ok(s) => crate::error::json_escape_into(b, s),
            Err(_) => crate::error::json_escape_into(b, &String::from_utf8_lossy(v)),
        },
        (v, Some(n)) => crate::error::json_escape_into(
            b,
            &format!("{}…({n} bytes)", String::from_utf8_lossy(v)),
        ),
    }
}

/// A text-format value of `v` cut to `max` bytes, with `…(N bytes)` when it was cut.
fn text_bounded(b: &mut Vec<u8>, v: &[u8], max: usize) {
    match bounded(v, max) {
        (v, None) => text_value(b, v),
        (v, Some(n)) => {
            let mut cut = v.to_vec();
            cut.extend_from_slice(format!("…({n} bytes)").as_bytes());
            text_value(b, &cut);
        }
    }
}

/// A text-format value: bare when it is a plain token, else quoted with `"` and `\` escaped;
/// control characters always escaped so a line stays one line.
fn text_value(b: &mut Vec<u8>, v: &[u8]) {
    let plain = !v.is_empty()
        && v.iter()
            .all(|&c| c.is_ascii_graphic() && c != b'"' && c != b'\\' && c != b'=');
    if plain {
        b.extend_from_slice(v);
        return;
    }
    b.push(b'"');
    for ch in String::from_utf8_lossy(v).chars() {
        match ch {
            '"' => b.extend_from_slice(b"\\\""),
            '\\' => b.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(Adapter(b), "\\x{:02x}", c as u32);
            }
            c => {
                let mut tmp = [0u8; 4];
                b.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
    b.push(b'"');
}

struct Adapter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Adapter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// `2026-11-28T04:50:00.123456Z`.
pub fn rfc3339_micros(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm, public domain).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        d.subsec_micros()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut s = String::new();
        rfc3339_micros(
            &mut s,
            UNIX_EPOCH + Duration::from_micros(1_764_305_400_123_456),
        );
        assert_eq!(s, "2025-11-28T04:50:00.123456Z");
        s.clear();
        rfc3339_micros(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day
        assert_eq!(s, "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn text_values_stay_on_one_line() {
        let mut b = Vec::new();
        text_value(&mut b, b"tools/call");
        b.push(b' ');
        text_value(&mut b, b"a \"b\"\nc=d");
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "tools/call \"a \\\"b\\\"\\x0ac=d\""
        );
    }

    #[test]
    fn fields_from_the_wire_are_bounded() {
        let w = AccessWriter::new(false);
        let huge = vec![1u8; 1 << 20];
        w.line("INFO", &[("name", Some(Value::Bytes(&huge)))]);
        let line = String::from_utf8(w.buf.borrow().clone()).unwrap();
        assert!(line.len() < 4 * MAX_WIRE_FIELD + 200, "{}", line.len());
        assert!(line.contains("…(1048576 bytes)"), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
        // A cut never splits a UTF-8 character.
        let accents = "é".repeat(200);
        let (kept, n) = bounded(accents.as_bytes(), 255);
        assert_eq!(n, Some(400));
        assert!(std::str::from_utf8(kept).is_ok());
    }

    #[test]
    fn json_values_read_back_as_they_were_or_say_they_were_cut() {
        let cases: [&[u8]; 7] = [
            b"echo",
            b"/mcp",
            b"a \"quoted\" \\ value",
            b"tab\tnew\nline\x01\x7f",
            "h\u{e9}llo".as_bytes(),
            b"bad \xff utf-8",
            b"",
        ];
        for v in cases {
            let mut b = Vec::new();
            json_bounded(&mut b, v, 64);
            let back: String = serde_json::from_slice(&b).expect("a JSON string");
            assert_eq!(back, String::from_utf8_lossy(v));
        }
        let mut b = Vec::new();
        json_bounded(&mut b, b"0123456789", 4);
        let back: String = serde_json::from_slice(&b).unwrap();
        assert_eq!(back, "0123…(10 bytes)");
    }

    #[test]
    fn json_lines_are_json() {
        let w = AccessWriter::new(true);
        w.line(
            "INFO",
            &[("peer", Some(Value::Addr("127.0.0.1:9".parse().unwrap())))],
        );
        let first = String::from_utf8(w.buf.borrow().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(first.trim_end()).unwrap();
        assert_eq!(v["peer"], "127.0.0.1:9");
        let ts = v["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-11-28T04:50:00.123456Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
        w.buf.borrow_mut().clear();
        w.line(
            "INFO",
            &[
                ("method", Some(Value::Str("tools/call"))),
                ("name", Some(Value::Bytes(b"e\"v\x01il"))),
                ("skipped", None),
                ("status", Some(Value::U64(200))),
            ],
        );
        let b = w.buf.borrow();
        let line = std::str::from_utf8(&b).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["name"], "e\"v\u{1}il");
        assert_eq!(v["status"], 200);
        assert_eq!(v["target"], "access");
        assert!(v.get("skipped").is_none());
    }
}
