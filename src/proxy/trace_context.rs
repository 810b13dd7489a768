//! W3C trace context on the request path: which trace a request joins (the `traceparent`
//! header, else `params._meta.traceparent`), and how the gateway's span reaches the upstream
//! (its own `traceparent` header; the `_meta` value replaced in place, same length). Does
//! nothing, and costs nothing, unless `tracing.enabled`.

use std::borrow::Cow;
use std::ops::Range;

use crate::http::head::RequestHead;
use crate::http::response;
use crate::observe::trace::{self, Sampling, TraceIds, TRACEPARENT_LEN};

use super::context::Ctx;

/// Phase: trace (right after the head). The header's `traceparent`, or a new trace.
pub fn begin(ctx: &mut Ctx, head: &RequestHead, buf: &[u8]) {
    let t = &ctx.gw().config.tracing;
    if !t.enabled {
        return;
    }
    let header = head.traceparent.clone().map(|r| &buf[r]);
    ctx.trace = Some(trace::begin(
        Sampling::of_ratio(t.sample_ratio),
        header,
        None,
    ));
}

/// After the scan: without a valid header `traceparent`, the first message's
/// `params._meta.traceparent` (what MCP SDKs set) names the caller's trace. The header wins
/// when both are valid: it is set by the HTTP client, the caller's span nearest the gateway.
pub fn adopt_meta(ctx: &mut Ctx, body: &[u8]) {
    let Some(t) = ctx.trace.as_mut() else {
        return;
    };
    if t.parent_span_id.is_some() {
        return;
    }
    let Some(r) = ctx.messages.iter().find_map(|m| m.traceparent.clone()) else {
        return;
    };
    let Some(p) = body
        .get(r.start as usize..r.end as usize)
        .and_then(trace::parse_traceparent)
    else {
        return;
    };
    t.trace_id = p.trace_id;
    t.parent_span_id = Some(p.span_id);
    t.sampled = p.flags & 1 == 1;
}

/// The trace header lines of an upstream request. Tracing off (`trace` None): the client's, as
/// sent. On: the client's `baggage` (and `tracestate`, when its `traceparent` was the one
/// followed) and the gateway's own `traceparent`, naming its span as the parent.
pub fn upstream_lines(out: &mut Vec<u8>, head: &RequestHead, buf: &[u8], trace: Option<&TraceIds>) {
    let Some(t) = trace else {
        for (n, v) in &head.trace {
            response::header(out, &buf[n.clone()], &buf[v.clone()]);
        }
        return;
    };
    let followed = head
        .traceparent
        .clone()
        .and_then(|r| trace::parse_traceparent(&buf[r]))
        .is_some_and(|p| p.trace_id == t.trace_id);
    for (n, v) in &head.trace {
        let name = &buf[n.clone()];
        // A tracestate belongs to the traceparent it came with (W3C Trace Context §3.3).
        if name.eq_ignore_ascii_case(b"traceparent")
            || (!followed && name.eq_ignore_ascii_case(b"tracestate"))
        {
            continue;
        }
        response::header(out, name, &buf[v.clone()]);
    }
    response::header(out, b"traceparent", &t.traceparent());
}

/// `upstream_lines` into a buffer of their own (paths that carry them to later phases).
pub fn upstream_lines_vec(head: &RequestHead, buf: &[u8], trace: Option<&TraceIds>) -> Vec<u8> {
    let mut v = Vec::new();
    upstream_lines(&mut v, head, buf, trace);
    v
}

/// Where the body's `_meta.traceparent` values are that take the gateway's (version 00, so the
/// same length): none with tracing off.
fn meta_spans(ctx: &Ctx) -> impl Iterator<Item = Range<usize>> + '_ {
    ctx.trace
        .iter()
        .flat_map(move |_| ctx.messages.iter())
        .filter_map(|m| m.traceparent.clone())
        .map(|r| r.start as usize..r.end as usize)
        .filter(|r| r.len() == TRACEPARENT_LEN)
}

/// Replaces each `_meta.traceparent` of the body that ends `out` (`body_len` bytes) with the
/// gateway's: the same length, so Content-Length stands.
pub fn splice_tail(ctx: &Ctx, out: &mut [u8], body_len: usize) {
    let Some(t) = ctx.trace.as_ref() else {
        return;
    };
    let tp = t.traceparent();
    let at = out.len() - body_len.min(out.len());
    for r in meta_spans(ctx) {
        if let Some(dst) = out.get_mut(at + r.start..at + r.end) {
            dst.copy_from_slice(&tp);
        }
    }
}

/// `splice_tail` for a body whose bytes `cut` were replaced by `new_len` bytes (a federated
/// name): values after the cut move with it.
pub fn splice_tail_cut(ctx: &Ctx, out: &mut [u8], body_len: usize, cut: Range<usize>, new_len: usize) {
    let Some(t) = ctx.trace.as_ref() else {
        return;
    };
    let tp = t.traceparent();
    let at = out.len() - body_len.min(out.len());
    for r in meta_spans(ctx) {
        let r = if r.start >= cut.end {
            r.start - cut.len() + new_len..r.end - cut.len() + new_len
        } else if r.end <= cut.start {
            r
        } else {
            continue;
        };
        if let Some(dst) = out.get_mut(at + r.start..at + r.end) {
            dst.copy_from_slice(&tp);
        }
    }
}

/// The body to forward on paths that copy it: the client's bytes, with the gateway's span in
/// `_meta.traceparent` (copied only when there is one to replace).
pub fn spliced<'a>(ctx: &Ctx, body: &'a [u8]) -> Cow<'a, [u8]> {
    if meta_spans(ctx).next().is_none() {
        return Cow::Borrowed(body);
    }
    let mut v = body.to_vec();
    let n = v.len();
    splice_tail(ctx, &mut v, n);
    Cow::Owned(v)
}
