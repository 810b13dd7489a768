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
    let header = head.traceparent(buf);
    ctx.trace = Some(trace::begin(
        Sampling::of_ratio(t.sample_ratio),
        header,
        None,
    ));
}

/// After the scan: the first message's `params._meta.traceparent` (what MCP SDKs set, SEP-414;
/// read when it has the version-00 length, a longer value of a later version is passed on
/// untouched) against the header's, as `trace::choose` decides: the header's when both are of
/// one trace, `_meta`'s when they differ or the header had none.
pub fn adopt_meta(ctx: &mut Ctx, body: &[u8]) {
    let Some(t) = ctx.trace.as_mut() else {
        return;
    };
    let Some(at) = ctx.messages.iter().find_map(|m| m.traceparent) else {
        return;
    };
    let at = at.get() as usize;
    let Some(p) = body
        .get(at..at + TRACEPARENT_LEN)
        .and_then(trace::parse_traceparent)
    else {
        return;
    };
    if t.parent_span_id.is_some() && p.trace_id == t.trace_id {
        return;
    }
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
        .traceparent(buf)
        .and_then(trace::parse_traceparent)
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

/// Where the body's `_meta.traceparent` values are that take the gateway's (the version-00
/// length, so the same length): none with tracing off.
fn meta_spans(ctx: &Ctx) -> impl Iterator<Item = Range<usize>> + '_ {
    ctx.trace
        .iter()
        .flat_map(move |_| ctx.messages.iter())
        .filter_map(|m| m.traceparent)
        .map(|at| at.get() as usize..at.get() as usize + TRACEPARENT_LEN)
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
pub fn splice_tail_cut(
    ctx: &Ctx,
    out: &mut [u8],
    body_len: usize,
    cut: Range<usize>,
    new_len: usize,
) {
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

/// The request's span for the exporter (record phase; only with `tracing.otlp`, sampled).
/// Attributes follow OpenTelemetry's MCP and HTTP conventions where they have a name
/// (`mcp.method.name`, `gen_ai.tool.name`, `http.response.status_code`, `error.type`, …); the
/// gateway's own facts are `tollgate.*`. Argument values and principals are never included.
pub fn span(ctx: &Ctx, t: &TraceIds, elapsed: std::time::Duration) -> crate::observe::otlp::Span {
    use crate::mcp::Method;
    use crate::observe::otlp::{AttrValue, Span};
    let gw = ctx.gw();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut attributes: Vec<(&'static str, AttrValue)> = Vec::with_capacity(12);
    let method = if ctx.batch {
        "batch"
    } else {
        ctx.first()
            .map_or(ctx.http_method.as_str(), |m| m.method_label())
    };
    attributes.push(("mcp.method.name", AttrValue::Str(method.to_string())));
    let mut name = method.to_string();
    if let (false, Some(m)) = (ctx.batch, ctx.first()) {
        let target = match m.method {
            Method::ToolsCall => m.name.as_ref().map(|n| ("gen_ai.tool.name", n)),
            Method::PromptsGet => m.name.as_ref().map(|n| ("gen_ai.prompt.name", n)),
            _ => m.uri.as_ref().map(|u| ("mcp.resource.uri", u)),
        };
        if let Some((key, v)) = target {
            let v = text(v.get());
            name.push(' ');
            name.push_str(&v);
            attributes.push((key, AttrValue::Str(v)));
        }
        if let Some(id) = &m.id {
            // The raw id: a string's quotes are not part of it.
            let raw = id.get();
            let id = match raw {
                [b'"', inner @ .., b'"'] => inner,
                other => other,
            };
            attributes.push(("jsonrpc.request.id", AttrValue::Str(text(id))));
        }
    }
    if let Some(s) = ctx.server {
        attributes.push((
            "tollgate.server",
            AttrValue::Str(gw.config.servers[s].path.clone()),
        ));
    }
    if let Some(u) = ctx.upstream {
        attributes.push((
            "tollgate.upstream",
            AttrValue::Str(gw.upstreams[u].name.clone()),
        ));
    }
    attributes.push((
        "http.request.method",
        AttrValue::Str(ctx.http_method.as_str().to_string()),
    ));
    attributes.push((
        "http.response.status_code",
        AttrValue::Int(i64::from(ctx.status)),
    ));
    if let Some(Ok(status)) = ctx.upstream_call.map(|u| u.result) {
        attributes.push((
            "tollgate.upstream.status_code",
            AttrValue::Int(i64::from(status)),
        ));
    }
    attributes.push((
        "tollgate.outcome",
        AttrValue::Str(ctx.outcome.as_str().to_string()),
    ));
    let mut error = None;
    if let Some(r) = &ctx.refused {
        attributes.push(("error.type", AttrValue::Str(r.kind.as_str().to_string())));
        attributes.push((
            "rpc.jsonrpc.error_code",
            AttrValue::Int(i64::from(r.kind.rpc_code())),
        ));
        // A server span's status is an error only for what was not the client's fault.
        if r.kind.side() != crate::error::Side::Client {
            error = Some(r.kind.as_str().to_string());
        }
    }
    let end = crate::observe::otlp::unix_nanos_ago(std::time::Duration::ZERO);
    Span {
        trace: *t,
        name,
        start_unix_nanos: end.saturating_sub(elapsed.as_nanos() as u64),
        end_unix_nanos: end,
        attributes,
        error,
    }
}
