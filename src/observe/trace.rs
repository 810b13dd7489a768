//! W3C trace context (`traceparent`) of one request: the ids the audit record carries and the
//! gateway propagates upstream. The request path fills `Ctx::trace`; nothing else reads headers.

/// The trace a request belongs to and the span the gateway opened for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceIds {
    /// The trace id (16 bytes, never all zero).
    pub trace_id: [u8; 16],
    /// The gateway's own span for this request (8 bytes, never all zero).
    pub span_id: [u8; 8],
    /// The caller's span (the `parent-id` of the `traceparent` it sent), if it sent one.
    pub parent_span_id: Option<[u8; 8]>,
    /// The caller's `sampled` flag (true when the gateway started the trace itself).
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
}

fn hex(bytes: &[u8]) -> String {
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
}
