//! `limits`: sizes, counts and timeouts that bound each connection and request.

use serde_yaml_ng::Value;

use super::extract::{self, count, size, Problems, Section};
use super::{defaults, MS};
use crate::config::Limits;

pub(super) fn limits(p: &mut Problems, top: &Section) -> Limits {
    let s = Section::open(
        p,
        "limits".into(),
        top.raw("limits"),
        &[
            "max_header_bytes",
            "max_request_line_bytes",
            "max_headers",
            "max_body_bytes",
            "header_read_timeout",
            "body_read_timeout",
            "idle_timeout",
            "write_timeout",
            "tls_handshake_timeout",
            "max_json_depth",
            "max_batch_len",
            "max_batch_concurrency",
            "max_legacy_streams",
            "legacy_buffered_messages",
            "legacy_sse_streams_per_worker",
            "legacy_sse_queued_messages",
            "legacy_sse_keepalive",
            "listen_streams_per_worker",
            "listen_keepalive",
            "held_sessions_per_upstream",
        ],
    );
    let usize_count = |min, max| move |v: &Value| count(min, max)(v).map(|n| n as usize);
    let max_header_bytes = s.get(p, "max_header_bytes", defaults::MAX_HEADER_BYTES, size(1));
    // The request line is part of the head: a line limit above the head limit could never be
    // reached, so say so when it is set; when it is not, the default yields to a smaller head.
    let line_default = defaults::MAX_REQUEST_LINE_BYTES.min(max_header_bytes);
    let max_request_line_bytes = s.get(p, "max_request_line_bytes", line_default, |v| {
        let n = size(defaults::MIN_REQUEST_LINE_BYTES)(v)?;
        if n > max_header_bytes {
            return Err(format!(
                "{n} bytes is more than limits.max_header_bytes ({max_header_bytes}), \
                 which the request line is part of"
            ));
        }
        Ok(n)
    });
    Limits {
        max_header_bytes,
        max_request_line_bytes,
        max_headers: s.get(
            p,
            "max_headers",
            defaults::MAX_HEADERS as usize,
            // Bounded by the request path's stack scratch (proxy::MAX_HEADERS).
            usize_count(1, crate::proxy::MAX_HEADERS as _),
        ),
        max_body_bytes: s.get(p, "max_body_bytes", defaults::MAX_BODY_BYTES, size(1)),
        header_read_timeout: s.get(
            p,
            "header_read_timeout",
            defaults::HEADER_READ_TIMEOUT,
            extract::duration(MS),
        ),
        body_read_timeout: s.get(
            p,
            "body_read_timeout",
            defaults::BODY_READ_TIMEOUT,
            extract::duration(MS),
        ),
        idle_timeout: s.get(
            p,
            "idle_timeout",
            defaults::IDLE_TIMEOUT,
            extract::duration(MS),
        ),
        write_timeout: s.get(
            p,
            "write_timeout",
            defaults::WRITE_TIMEOUT,
            extract::duration(MS),
        ),
        tls_handshake_timeout: s.get(
            p,
            "tls_handshake_timeout",
            defaults::TLS_HANDSHAKE_TIMEOUT,
            extract::duration(MS),
        ),
        max_json_depth: s.get(p, "max_json_depth", defaults::MAX_JSON_DEPTH as u32, |v| {
            count(1, 10_000)(v).map(|n| n as u32)
        }),
        max_batch_len: s.get(
            p,
            "max_batch_len",
            defaults::MAX_BATCH_LEN as usize,
            // A message's index in its batch is 16 bits wide (decisions, refusals, records).
            usize_count(1, u16::MAX as u64),
        ),
        max_batch_concurrency: s.get(
            p,
            "max_batch_concurrency",
            defaults::MAX_BATCH_CONCURRENCY as usize,
            usize_count(1, 1_000),
        ),
        max_legacy_streams: s.get(
            p,
            "max_legacy_streams",
            defaults::MAX_LEGACY_STREAMS as usize,
            usize_count(1, 1_000_000),
        ),
        legacy_buffered_messages: s.get(
            p,
            "legacy_buffered_messages",
            defaults::LEGACY_BUFFERED_MESSAGES as usize,
            usize_count(0, 100_000),
        ),
        legacy_sse_streams_per_worker: s.get(
            p,
            "legacy_sse_streams_per_worker",
            defaults::LEGACY_SSE_STREAMS_PER_WORKER,
            usize_count(1, 1_000_000),
        ),
        legacy_sse_queued_messages: s.get(
            p,
            "legacy_sse_queued_messages",
            defaults::LEGACY_SSE_QUEUED_MESSAGES,
            usize_count(1, 100_000),
        ),
        legacy_sse_keepalive: s.get(
            p,
            "legacy_sse_keepalive",
            defaults::LEGACY_SSE_KEEPALIVE,
            extract::duration(MS),
        ),
        listen_streams_per_worker: s.get(
            p,
            "listen_streams_per_worker",
            defaults::LISTEN_STREAMS_PER_WORKER,
            usize_count(1, 1_000_000),
        ),
        listen_keepalive: s.get(
            p,
            "listen_keepalive",
            defaults::LISTEN_KEEPALIVE,
            extract::duration(MS),
        ),
        held_sessions_per_upstream: s.get(
            p,
            "held_sessions_per_upstream",
            defaults::HELD_SESSIONS_PER_UPSTREAM,
            usize_count(1, 10_000),
        ),
    }
}
