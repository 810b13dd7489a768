//! A 2026-07-28 request to a session-era upstream, in one of the worker's held sessions
//! (`proxy::held`): leased for the exchange, resent once in another when the upstream ended it,
//! and `server/discover` answered from a held session's `initialize`.

use super::*;

/// A 2026-07-28 request of a federated endpoint routed to a session-era member (`body`: the
/// message as that upstream gets it): sent in a held session leased for the exchange, the reply
/// stamped, a 404 answered by sending it again in another (`forward_held`).
pub(in crate::proxy) async fn send_held(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    u: usize,
    trace: &[u8],
    body: &[u8],
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    ctx.upstream = Some(u);
    let lease = match held::lease(w, gw, u).await {
        Ok(l) => l,
        Err(e) => return refuse(c, ctx, e.into()).await,
    };
    c.up_out = exchange::post_request(gw, u, Some(&lease.session), trace, body);
    forward_held(w, c, ctx, u, lease).await
}

/// Forwards the request rendered in `c.up_out` in the held session `lease` holds (for the whole
/// exchange, relay included). A 404 means the upstream ended that session: it is forgotten,
/// another taken (or opened), and the request sent once more (the upstream did not process it).
pub(super) async fn forward_held(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    u: usize,
    lease: Lease,
) -> Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    ctx.upstream = Some(u);
    let t_up = crate::runtime::clock::now();
    lease.begin();
    let req = std::mem::take(&mut c.up_out);
    // `respond` vets the reply and tells the breaker about a 2xx.
    let terms = upstream::Terms {
        vets: true,
        ..Default::default()
    };
    let (res, req, _, probe) =
        upstream::exchange_within(w, gw, (u, lease.session.replica), req, ctx.caller(), terms)
            .await;
    c.up_out = req;
    // A 404, or its replica gone or down (`upstream::exchange_within`): the session is over.
    let ended = matches!(&res, Ok((_, rhead)) if rhead.status == 404)
        || matches!(&res, Err(e) if e.kind == crate::error::Kind::SessionUnknown);
    if !ended {
        let then = then_held(ctx.first(), &lease);
        return respond(w, c, ctx, (u, res, t_up, probe), true, then).await;
    }
    drop(res);
    w.held.forget(gw, u, &lease);
    // (It processed nothing: not a request left running.)
    lease.complete();
    drop(lease);
    let fresh = match held::lease(w, gw, u).await {
        Ok(l) => l,
        Err(e) => return refuse(c, ctx, e.into()).await,
    };
    resend_in(gw, u, &fresh.session, &mut c.up_out);
    let then = then_held(ctx.first(), &fresh);
    fresh.begin();
    forward(w, c, ctx, (u, fresh.session.replica), true, then).await
}

/// Renders the request in `req` (one in a held session that ended) again for `session`: the
/// same body, the same trace lines.
pub(in crate::proxy) fn resend_in(
    gw: &Gateway,
    u: usize,
    session: &UpstreamSession,
    req: &mut Vec<u8>,
) {
    let old = std::mem::take(req);
    let at = memchr::memmem::find(&old, b"\r\n\r\n").map_or(old.len(), |i| i + 4);
    let mut trace = Vec::new();
    for line in old[..at].split(|b| *b == b'\n') {
        let l = line.strip_suffix(b"\r").unwrap_or(line);
        let name = l.split(|b| *b == b':').next().unwrap_or_default();
        if ["traceparent", "tracestate", "baggage"]
            .iter()
            .any(|t| name.eq_ignore_ascii_case(t.as_bytes()))
        {
            trace.extend_from_slice(l);
            trace.extend_from_slice(b"\r\n");
        }
    }
    let t = |o: &mut Vec<u8>| o.extend_from_slice(&trace);
    render(req, gw, u, Some(session), |_| {}, t, &old[at..]);
}

/// What a held session's `initialize` result says, in the shape of a `server/discover` result:
/// its capabilities and instructions, and the stateless revision, which the gateway serves for
/// it through the held session, unless the client asks for sampling, elicitation or roots
/// (`asks`): a held session cannot carry those, a session of the client's own can, so such a
/// client is told of the session-era revisions only (in "auto" mode it then falls back to
/// `initialize`, and keeps them).
pub(super) fn held_discover(held: &HeldSession, asks: bool) -> Value {
    let versions: Vec<&str> = if asks {
        Vec::new()
    } else {
        STATELESS_VERSIONS.iter().map(|v| v.as_str()).collect()
    };
    let mut caps = held
        .initialize
        .get("capabilities")
        .cloned()
        .unwrap_or_else(|| json!({}));
    // What a held session cannot deliver: list changes (no listen through it), subscriptions
    // (not in the revision), tasks (session-bound in its era).
    if let Some(obj) = caps.as_object_mut() {
        obj.remove(&"tasks");
        for (_, v) in obj.iter_mut() {
            if let Some(o) = v.as_object_mut() {
                o.remove(&"listChanged");
                o.remove(&"subscribe");
            }
        }
    }
    let mut r = json!({
        "supportedVersions": versions,
        "capabilities": caps,
    });
    if let Some(i) = held.initialize.get("instructions").and_then(|v| v.as_str()) {
        r["instructions"] = Value::from(i);
    }
    r
}
