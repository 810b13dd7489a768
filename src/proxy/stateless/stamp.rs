//! What the stateless revision adds to a result (`resultType`, and caching hints where the result
//! is a list or a read), written into the replies of held sessions and of upstreams of the
//! revision that left it out: whole JSON bodies in place, event streams as they pass.

use super::*;

/// How a reply reaches a stateless client: stamped with what the revision adds to results where
/// the result lacks it (`cacheable`: the caching hints too); in a held session's event stream
/// (`held`), server→client requests answered in it instead of relayed. An upstream of the
/// revision gets `MODERN`: `resultType` where it left it out (the revision requires it, a client
/// reads its absence as `complete`, and some clients refuse a result without it), nothing else.
pub(in crate::proxy) struct Stamp {
    pub cacheable: bool,
    pub held: Option<Rc<HeldSession>>,
}

impl Stamp {
    pub const MODERN: Stamp = Stamp {
        cacheable: false,
        held: None,
    };
}

/// How the reply of a held session to request `m` is relayed.
pub(in crate::proxy) fn then_held(
    m: Option<&crate::proxy::context::MessageCtx>,
    held: &Lease,
) -> Then {
    let cacheable = m.is_some_and(|m| {
        matches!(
            m.method,
            Method::ToolsList
                | Method::PromptsList
                | Method::ResourcesList
                | Method::ResourcesTemplatesList
                | Method::ResourcesRead
        )
    });
    Then::Stamped(Stamp {
        cacheable,
        held: Some(held.held.clone()),
    })
}

/// Whether a reply can be stamped: a JSON body with a length, all of it already read (the
/// vetting reads small replies whole), not compressed (the vet relays those unread: an
/// upstream of the revision's goes through as it came, a held session's is read whole).
pub(in crate::proxy) fn stampable(rhead: &ResponseHead, buffered: &[u8]) -> bool {
    match rhead.framing {
        // (Exactly the replies `upstream::vet_reply` reads whole and scans: it says where a
        // result lacks `resultType`. The headers are looked through for a coding last.)
        Framing::Length(n) => {
            !rhead.is_sse(buffered)
                && n as usize <= upstream::MAX_VETTED_REPLY
                && buffered.len() >= rhead.len + n as usize
                && upstream::content_coding(rhead, buffered)
                    == crate::jsonrpc::probe::Coding::Identity
        }
        _ => false,
    }
}

/// `resultType` (and, for lists and reads, `ttlMs` 0 and `cacheScope`) the revision requires;
/// a session-era upstream's results have neither. The held session is the worker's, not the
/// client's, so what it lists is the same for every client: `public`, but not to be kept.
pub(in crate::proxy) const STAMP: &[u8] = br#""resultType":"complete""#;

const STAMP_CACHEABLE: &[u8] = br#""resultType":"complete","ttlMs":0,"cacheScope":"public""#;

/// Relays a whole JSON reply with its result stamped at `bare_result` (where
/// `upstream::vet_reply` found a result lacking `resultType`) (`stampable` said it is all buffered).
pub(in crate::proxy) async fn relay_stamped(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    mut up_conn: UpConn,
    rhead: ResponseHead,
    (u, bare_result): (usize, Option<usize>),
    st: &Stamp,
) -> Next {
    let cacheable = st.cacheable;
    let Framing::Length(n) = rhead.framing else {
        unreachable!("stampable checked the framing")
    };
    let (head_len, n) = (rhead.len, n as usize);
    let body = &up_conn.buffered()[head_len..head_len + n];
    let stamp = if cacheable { STAMP_CACHEABLE } else { STAMP };
    // Where the vetting found a result without `resultType` (it scanned the body already).
    let stamped = bare_result.map(|at| modern::stamp_result(body, at, stamp));
    let len = stamped.as_ref().map_or(n, Vec::len);
    let keep = super::super::client_head(
        &mut c.out,
        &rhead,
        up_conn.buffered(),
        ctx.keep_after_response(),
        ctx.http10,
        &ctx.cors,
        None,
        Some(len),
    );
    // (A result that has its `resultType` already goes as the upstream wrote it.)
    let body = match &stamped {
        Some(b) => &b[..],
        None => &up_conn.buffered()[head_len..head_len + n],
    };
    c.out.extend_from_slice(body);
    crate::proxy::audit_record::reply_bytes(ctx, false, body);
    ctx.status = rhead.status;
    up_conn.consume(head_len + n);
    if let Some(h) = &st.held {
        h.complete();
    }
    let at = ctx.vetted_at.unwrap_or_else(std::time::Instant::now);
    w.pool_put(ctx.gw(), u, up_conn, &rhead, at);
    match c.flush().await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Relays a held session's reply that is not one whole JSON body with a length: an event stream
/// event by event (`federate::stream::UpStream::held`: the final response stamped, notifications
/// as they are, server→client requests answered upstream), or a chunked or close-delimited JSON
/// body read whole (within 4 × `limits.max_body_bytes`), stamped and sent with a length.
pub(in crate::proxy) async fn relay_held_stream(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    mut up_conn: UpConn,
    rhead: ResponseHead,
    u: usize,
    st: Stamp,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let stamp = if st.cacheable { STAMP_CACHEABLE } else { STAMP };
    if st.held.is_none() && !rhead.is_sse(up_conn.buffered()) {
        // An upstream of the revision: a large or chunked JSON body streams through as it
        // comes (it is not read whole to add a member its writer should have written).
        let read_timeout = Some(gw.upstreams[u].request_timeout);
        return super::super::relay(w, c, ctx, up_conn, &rhead, u, read_timeout, false).await;
    }
    if rhead.is_sse(up_conn.buffered()) {
        let held = st.held;
        return super::super::relay_rewritten(w, c, ctx, up_conn, &rhead, |conn| {
            super::super::federate::stream::UpStream::held(gw, u, conn, &rhead, stamp, held)
        })
        .await;
    }
    let up = &gw.upstreams[u];
    // The head's bytes, for the header lines relayed (the body is read after them).
    let head_bytes = up_conn.buffered()[..rhead.len].to_vec();
    up_conn.consume(rhead.len);
    let mut body = Vec::new();
    let max = gw.config.limits.max_body_bytes.saturating_mul(4);
    if let Err(why) =
        upstream::read_full_body(&mut up_conn, &rhead, max, up.request_timeout, &mut body).await
    {
        let why = format!("upstream \"{}\" sent an unreadable reply: {why}", up.name);
        tracing::warn!(upstream = %up.name, error = %why, "held session reply dropped");
        return refuse(c, ctx, Refusal::because(Kind::UpstreamProtocol, why)).await;
    }
    if let Some(h) = &st.held {
        h.complete();
    }
    w.pool_put(gw, u, up_conn, &rhead, std::time::Instant::now());
    let body = stamp_body(&body, stamp, ctx).unwrap_or(body);
    super::super::write_whole(c, ctx, (&rhead, &head_bytes), &body, None).await
}

/// `body` (one JSON-RPC response) with its result stamped, or `None` when it has no result to
/// stamp or has `resultType` already.
pub(in crate::proxy) fn stamp_body(body: &[u8], stamp: &[u8], ctx: &Ctx) -> Option<Vec<u8>> {
    match jsonrpc::scan(body, &ctx.gw().scan_limits) {
        Ok(jsonrpc::Body::Single(m)) if m.kind == MessageKind::Response && !m.result_type => m
            .result_open
            .map(|at| modern::stamp_result(body, at, stamp)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::parse_response;

    /// Whether the whole reply `head` + `body` (with its length) is stampable.
    fn whole_reply_stampable(head: &str, body: &str) -> bool {
        let reply = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; 16];
        let rhead = parse_response(reply.as_bytes(), &mut headers, 1024, false)
            .unwrap()
            .unwrap();
        stampable(&rhead, reply.as_bytes())
    }

    #[test]
    fn a_compressed_reply_is_not_stampable() {
        let json = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n";
        // (The body's bytes do not matter: only the head says how it is coded.)
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        assert!(whole_reply_stampable(json, body), "the identity control");
        for coding in ["gzip", "deflate", "br", "x-gzip, identity", "gzip, br"] {
            let head = format!("{json}Content-Encoding: {coding}\r\n");
            assert!(!whole_reply_stampable(&head, body), "{coding}");
        }
        let identity = format!("{json}Content-Encoding: identity\r\n");
        assert!(whole_reply_stampable(&identity, body), "identity named");
    }
}
