//! W3C trace context (`traceparent`) of one request: the ids the audit record carries and the
//! gateway propagates upstream. Parses and writes `traceparent` values without allocating, and
//! draws span ids from a per-thread generator (seeded once from the OS). The request path fills
//! `Ctx::trace`; nothing else reads headers.

use std::cell::Cell;

/// Length of a version-00 `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;

/// A `traceparent` the caller sent, as read (W3C Trace Context level 1, section 3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// Reads a `traceparent` value (surrounding spaces and tabs allowed). Version 00 must be exactly
/// 55 characters; a later version may be longer, and then its first 55 are read as version 00
/// when a `-` follows them (the spec's forward compatibility rule). Version `ff`, upper-case hex
/// and all-zero ids are invalid: `None` (the caller then starts a new trace).
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    let v = v.trim_ascii();
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_byte(v[0], v[1])?;
    match version {
        0 if v.len() != TRACEPARENT_LEN => return None,
        0xff => return None,
        0 => {}
        _ if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut p = Parent {
        trace_id: [0; 16],
        span_id: [0; 8],
        flags: 0,
    };
    for (i, b) in p.trace_id.iter_mut().enumerate() {
        *b = hex_byte(v[3 + 2 * i], v[4 + 2 * i])?;
    }
    for (i, b) in p.span_id.iter_mut().enumerate() {
        *b = hex_byte(v[36 + 2 * i], v[37 + 2 * i])?;
    }
    p.flags = hex_byte(v[53], v[54])?;
    if p.trace_id == [0; 16] || p.span_id == [0; 8] {
        return None;
    }
    Some(p)
}

/// Lower-case hex only: the spec refuses upper-case digits.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(hex_digit(hi)? << 4 | hex_digit(lo)?)
}

/// How a request's trace starts (`tracing` config, read per request).
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// A trace the gateway starts is sampled when the low 8 bytes of its id, as a number, fall
    /// below this (`sample_ratio` × 2^64; `u64::MAX` = always).
    pub threshold: u64,
}

impl Sampling {
    pub fn of_ratio(ratio: f64) -> Sampling {
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else if ratio <= 0.0 {
            0
        } else {
            (ratio * 18_446_744_073_709_551_616.0) as u64
        };
        Sampling { threshold }
    }
}

/// Which of the caller's two `traceparent`s the gateway's span is a child of. Both in one trace:
/// the header's (the HTTP client's span, nearer the gateway than the MCP request span that
/// contains it). In different traces: `_meta`'s, the MCP-level trace SEP-414 defines (an HTTP
/// instrumentation that lost the MCP context starts a trace of one POST). Either alone: that one.
pub fn choose(header: Option<Parent>, meta: Option<Parent>) -> Option<Parent> {
    match (header, meta) {
        (Some(h), Some(m)) if h.trace_id != m.trace_id => Some(m),
        (Some(h), _) => Some(h),
        (None, m) => m,
    }
}

/// The request's trace: the caller's `traceparent` (`choose` between the HTTP header and
/// `params._meta.traceparent`), else a new trace (sampled by `sampling`). The caller's sampled
/// flag is kept (parent-based sampling). The gateway's span id is always new.
pub fn begin(sampling: Sampling, header: Option<&[u8]>, meta: Option<&[u8]>) -> TraceIds {
    let parent = choose(
        header.and_then(parse_traceparent),
        meta.and_then(parse_traceparent),
    );
    let span_id = random_span_id();
    match parent {
        Some(p) => TraceIds {
            trace_id: p.trace_id,
            span_id,
            parent_span_id: Some(p.span_id),
            sampled: p.flags & 1 == 1,
        },
        None => {
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&next_nonzero().to_be_bytes());
            trace_id[8..].copy_from_slice(&next_nonzero().to_be_bytes());
            let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or_default());
            TraceIds {
                trace_id,
                span_id,
                parent_span_id: None,
                sampled: sampling.threshold == u64::MAX || low < sampling.threshold,
            }
        }
    }
}

thread_local! {
    /// xorshift64* state of this thread (a worker): seeded once from the OS, never zero.
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    // A failed generator leaves zeros; the thread's address still tells threads apart.
    let s = u64::from_le_bytes(b) ^ (&b as *const _ as u64).rotate_left(32);
    if s == 0 {
        0x9e37_79b9_7f4a_7c15
    } else {
        s
    }
}

/// The next value of this thread's generator: not secret (span ids are not), never zero.
fn next_nonzero() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        // xorshift64* output: multiplying by an odd constant keeps it non-zero.
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

pub fn random_span_id() -> [u8; 8] {
    next_nonzero().to_be_bytes()
}

/// The trace a request belongs to and the span the gateway opened for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceIds {
    /// The trace id (16 bytes, never all zero).
    pub trace_id: [u8; 16],
    /// The gateway's own span for this request (8 bytes, never all zero).
    pub span_id: [u8; 8],
    /// The caller's span (the `parent-id` of the `traceparent` it sent), if it sent one.
    pub parent_span_id: Option<[u8; 8]>,
    /// The caller's `sampled` flag; for a trace the gateway started, `tracing.sample_ratio`'s
    /// decision. Only sampled spans are exported; the flag is passed on upstream either way.
    pub sampled: bool,
}

impl TraceIds {
    /// Lower-case hex of the trace id (32 characters).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// Lower-case hex of the gateway's span id (16 characters).
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` the gateway sends upstream: this trace, the gateway's span as parent.
    pub fn traceparent(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        hex_into(&mut out[3..35], &self.trace_id);
        hex_into(&mut out[36..52], &self.span_id);
        out[53] = b'0';
        out[54] = if self.sampled { b'1' } else { b'0' };
        out
    }
}

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 15) as usize];
    }
}

/// Lower-case hex of any id.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_lower_case_hex() {
        let t = TraceIds {
            trace_id: [0xab; 16],
            span_id: [1, 2, 3, 4, 5, 6, 7, 0xf0],
            parent_span_id: None,
            sampled: true,
        };
        assert_eq!(t.trace_id_hex(), "ab".repeat(16));
        assert_eq!(t.span_id_hex(), "01020304050607f0");
    }

    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_version_00_traceparent_is_read() {
        let p = parse_traceparent(TP).unwrap();
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.trace_id[15], 0x36);
        assert_eq!(p.span_id, [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(p.flags, 1);
        assert_eq!(
            parse_traceparent(b" \t00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 "),
            Some(p)
        );
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let bad: &[&[u8]] = &[
            b"",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for b in bad {
            assert_eq!(parse_traceparent(b), None, "{}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let v = b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(parse_traceparent(v), parse_traceparent(TP));
        let exact = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse_traceparent(exact), parse_traceparent(TP));
    }

    #[test]
    fn the_nearer_parent_of_one_trace_wins_and_a_new_trace_starts_without_either() {
        let always = Sampling::of_ratio(1.0);
        let same_trace = b"00-4bf92f3577b34da6a3ce929d0e0e4736-3333333333333333-01";
        let t = begin(always, Some(TP), Some(same_trace));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_span_id,
            Some([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert!(t.sampled);
        let other = b"00-11111111111111111111111111111111-2222222222222222-00";
        let t = begin(always, Some(TP), Some(other));
        assert_eq!(t.trace_id, [0x11; 16], "another trace: the MCP-level one");
        assert_eq!(t.parent_span_id, Some([0x22; 8]));
        let t = begin(always, Some(b"garbage"), Some(other));
        assert_eq!(t.trace_id, [0x11; 16]);
        assert!(!t.sampled, "the caller's sampled flag is kept");
        let a = begin(always, None, Some(b"nope"));
        let b = begin(always, None, None);
        assert_eq!(a.parent_span_id, None);
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
        assert!(a.sampled && b.sampled);
        assert!(!begin(Sampling::of_ratio(0.0), None, None).sampled);
    }

    #[test]
    fn the_gateway_traceparent_names_its_own_span() {
        let t = begin(Sampling::of_ratio(1.0), Some(TP), None);
        let out = t.traceparent();
        let p = parse_traceparent(&out).unwrap();
        assert_eq!(p.trace_id, t.trace_id);
        assert_eq!(p.span_id, t.span_id);
        assert_eq!(p.flags, 1);
        assert_eq!(&out[..3], b"00-");
    }
}
