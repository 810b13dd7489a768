//! The other way: a session-era client of an upstream that speaks only 2026-07-28. Its requests
//! are made ones of that revision, and the upstream's errors ones of the client's revision.

use super::*;

/// What a request of a session whose upstream speaks only 2026-07-28 becomes.
pub(in crate::proxy) enum Translated {
    Refuse(Refusal),
    /// Answered by the gateway with this result (methods the revision removed that are no-ops).
    Result(&'static [u8]),
    /// A notification or client response: nothing in the revision to pass it to.
    Accepted,
    /// Rendered in `c.up_out`: forward it.
    Forward,
}

/// Translates a session-era request for a 2026-07-28 upstream (`s`: the session's upstream
/// entry): `_meta` added to the body, `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` set from
/// the body, the methods the revision removed answered or refused here.
pub(in crate::proxy) fn translated(
    ctx: &Ctx,
    (head, buf, body): (&RequestHead, &[u8], &[u8]),
    u: usize,
    s: &UpstreamSession,
    out: &mut Vec<u8>,
) -> Translated {
    let gw = ctx.gw();
    if ctx.batch {
        return Translated::Refuse(Refusal::because(
            Kind::InvalidRequest,
            "this endpoint's upstream speaks protocol version 2026-07-28, which has no batches: \
             send the messages one by one",
        ));
    }
    let Some(m) = ctx.first() else {
        return Translated::Refuse(Refusal::new(Kind::InvalidRequest));
    };
    if m.kind != MessageKind::Request {
        return Translated::Accepted;
    }
    match m.method {
        Method::Ping | Method::LoggingSetLevel => return Translated::Result(b"{}"),
        Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => {
            let why = format!(
                "{} is not available: this endpoint's upstream speaks protocol version 2026-07-28",
                m.method.as_str()
            );
            return Translated::Refuse(Refusal::because(Kind::MethodNotFound, why));
        }
        _ => {}
    }
    // Only keys `_meta` lacks (no key written twice), and none where `params` or `_meta` is not
    // an object (the upstream then refuses the request as it would anyone's).
    let members = modern::meta_members(STATELESS_VERSIONS[0].as_str(), m.meta_keys);
    let body = super::super::trace_context::spliced(ctx, body);
    let body = if members.is_empty() || !m.meta_splice_ok {
        body.into_owned()
    } else {
        let at = |x: Option<u32>| x.map(|i| i as usize);
        modern::with_meta(&body, at(m.params_at), at(m.meta_at), &members)
    };
    out.clear();
    out.extend_from_slice(&gw.upstreams[u].post_prefix);
    response::content_length(out, body.len() as u64);
    super::super::session_header_lines(out, s);
    let method: &[u8] = match &m.method_text {
        Some(t) => t.get(),
        None => m.method.as_str().as_bytes(),
    };
    // Spelled as a header value (never raw: a method may hold any character, CR and LF too).
    let mut v = Vec::with_capacity(method.len() + 16);
    modern::encode_header_value(&mut v, method);
    response::header(out, b"mcp-method", &v);
    let name = match modern::name_source(m.method) {
        Some(modern::NameSource::Name) => m.name.as_ref(),
        Some(modern::NameSource::Uri) => m.uri.as_ref(),
        None => None,
    };
    if let Some(n) = name {
        let mut v = Vec::with_capacity(n.get().len() + 16);
        modern::encode_header_value(&mut v, n.get());
        response::header(out, b"mcp-name", &v);
    }
    trace_lines(out, (head, buf), ctx);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Translated::Forward
}

/// Carries out what `translated` decided.
pub(in crate::proxy) async fn finish_translated(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    u: usize,
    t: Translated,
) -> Next {
    match t {
        Translated::Refuse(r) => refuse(c, ctx, r).await,
        Translated::Result(r) => super::super::federate::reply_result(c, ctx, r).await,
        Translated::Accepted => super::super::federate::accepted(c, ctx).await,
        Translated::Forward => forward(w, c, ctx, (u, 0), false, Then::Translated).await,
    }
}

/// An error reply of a 2026-07-28 upstream to a translated request, made one a session-era
/// client reads as its own revision's: the codes that revision added (-32020, -32021, -32022:
/// about the translated request, which the client did not write) become -32600 with the
/// upstream's message and data kept, and a 404 becomes 200 (to a session-era client a 404
/// means its session ended, and it would start a new one; the upstream meant an unknown method).
pub(in crate::proxy) fn for_session_client(
    mut rhead: ResponseHead,
    body: Vec<u8>,
) -> (ResponseHead, Vec<u8>) {
    use crate::error::code;
    if rhead.status == 404 {
        rhead.status = 200;
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (rhead, body);
    };
    let modern = [code::HEADER_MISMATCH, -32021, code::UNSUPPORTED_VERSION];
    let c = v["error"]["code"].as_i64().unwrap_or(0);
    if !modern.iter().any(|m| i64::from(*m) == c) {
        return (rhead, body);
    }
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    v["error"]["code"] = code::INVALID_REQUEST.into();
    v["error"]["message"] = format!(
        "the upstream (protocol version 2026-07-28) refused the request the gateway translated          for this session ({c}: {msg})"
    )
    .into();
    rhead.status = 400;
    (rhead, serde_json::to_vec(&v).unwrap_or(body))
}

/// An `initialize` result for a session-era client, from a 2026-07-28 upstream's discover result.
pub(in crate::proxy) fn initialize_result(discovered: &Value, version: ProtocolVersion) -> String {
    let info = discovered
        .get("_meta")
        .and_then(|m| m.get("io.modelcontextprotocol/serverInfo"))
        .cloned()
        .unwrap_or_else(|| json!({"name": "tollgate", "version": env!("CARGO_PKG_VERSION")}));
    let mut r = json!({
        "protocolVersion": version.as_str(),
        "capabilities": discovered.get("capabilities").cloned().unwrap_or_else(|| json!({})),
        "serverInfo": info,
    });
    if let Some(i) = discovered.get("instructions").and_then(|v| v.as_str()) {
        r["instructions"] = Value::from(i);
    }
    r.to_string()
}
