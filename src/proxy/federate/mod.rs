//! Federation: one endpoint in front of several upstreams (`Server::federated`). The client has
//! one session with the gateway; the gateway holds one upstream session per upstream (sealed
//! into the client's token at `initialize`), lists what every upstream offers under exposed
//! names with its own cursors, and routes each call to the upstream that listed the name, which
//! always receives its own original name.
//!
//! What the gateway answers itself: `initialize` (fanned out, then composed), `ping`, the four
//! lists (aggregated), `logging/setLevel` and client notifications (fanned out). What it routes
//! by name: `tools/call`, `prompts/get` (exposed name), `resources/read`, `resources/subscribe`,
//! `resources/unsubscribe` (URI), `completion/complete` (its `ref`), `tasks/get|result|cancel`
//! (the gateway task id, `mcp::tasks`; `tasks/list` is aggregated). Client responses to
//! server→client requests go back to the upstream whose wrapped id they carry. Batches
//! (2025-03-26) are split and each message decided on its own (`route::decide`).
//!
//! Module map: `exchange` (the gateway's own requests to upstreams, read whole), `compose`
//! (initialize fan-out and the composed result), `lists` (aggregated lists), `tables` (the per-worker
//! routing tables), `route` (the per-message decision and routed requests), `batch` (JSON-RPC batches), `stream` (event streams: rewritten POST replies, the merged GET), `listen` (the merged 2026-07-28 `subscriptions/listen`), `probe` (`tollgate check --probe`: the same
//! exchanges and tables, reported).

mod batch;
mod compose;
pub(super) mod exchange;
mod listen;
mod lists;
pub mod probe;
mod route;
pub(super) mod stream;
mod tables;

pub(super) use compose::{stateless_discover, stateless_members};
pub(super) use listen::{listen, Slot as ListenSlot};
pub use tables::Catalogs;
pub(super) use tables::{annotations, fresh_names, own_tool_timeout, TableKind};

use std::rc::Rc;

use crate::http::response;
use crate::mcp::session::SessionClaims;

use super::client::Client;
use super::context::Ctx;
use super::state::WorkerState;
use super::Next;

/// What a federated request carries beside the body: the client's session and the request
/// headers every upstream request repeats (trace context).
pub(super) struct FedRequest {
    pub claims: Rc<SessionClaims>,
    pub trace: Vec<u8>,
    /// A 2026-07-28 request's `Mcp-Param-*` header lines: forwarded with the request to the
    /// upstream of that revision it is routed to (whose tool schema they mirror), to no other.
    pub params: Vec<u8>,
    pub body: Vec<u8>,
    /// Who asks, and the authorization decisions made for it (`proxy::authorize`).
    pub access: super::authorize::Access,
}

/// POST on a federated endpoint, after the body was scanned and the session opened.
/// `claims` is `None` only for `initialize` (`open_session` refused every other request that
/// came without a session).
pub(super) async fn post(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    claims: Option<Rc<SessionClaims>>,
    trace: Vec<u8>,
    body: Vec<u8>,
) -> Next {
    let Some(claims) = claims else {
        return compose::initialize(w, c, ctx, &trace, &body).await;
    };
    let req = FedRequest {
        claims,
        trace,
        params: Vec::new(),
        body,
        access: super::authorize::Access::of(ctx),
    };
    if ctx.batch {
        return batch::post(w, c, ctx, req).await;
    }
    route::single(w, c, ctx, req).await
}

/// A 2026-07-28 request on a federated endpoint, over the session `stateless::federated` made
/// for it alone (never a batch: the revision has none). `params`: its `Mcp-Param-*` lines.
pub(super) async fn post_stateless(
    w: &WorkerState,
    c: &mut Client,
    ctx: &mut Ctx,
    claims: Rc<SessionClaims>,
    (trace, params): (Vec<u8>, Vec<u8>),
    body: Vec<u8>,
) -> Next {
    let req = FedRequest {
        claims,
        trace,
        params,
        body,
        access: super::authorize::Access::of(ctx),
    };
    route::single(w, c, ctx, req).await
}

/// Answers the request with `{"jsonrpc":"2.0","id":<its id>,"result":<result>}` as JSON.
pub(super) async fn reply_result(c: &mut Client, ctx: &mut Ctx, result: &[u8]) -> Next {
    let mut body = Vec::with_capacity(result.len() + 48);
    body.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    body.extend_from_slice(ctx.answer_id().unwrap_or(b"null"));
    body.extend_from_slice(b",\"result\":");
    body.extend_from_slice(result);
    body.push(b'}');
    reply_json(c, ctx, 200, &body, None).await
}

/// A JSON reply the gateway wrote itself (with the session token after initialize).
pub(super) async fn reply_json(
    c: &mut Client,
    ctx: &mut Ctx,
    status: u16,
    body: &[u8],
    session: Option<&str>,
) -> Next {
    let keep = ctx.keep_after_response();
    response::status_line(&mut c.out, status);
    response::header(&mut c.out, b"content-type", b"application/json");
    if let Some(s) = session {
        response::header(&mut c.out, b"mcp-session-id", s.as_bytes());
    }
    c.out.extend_from_slice(&ctx.cors);
    response::content_length(&mut c.out, body.len() as u64);
    response::connection(&mut c.out, keep);
    c.out.extend_from_slice(b"\r\n");
    if !c.head_only {
        c.out.extend_from_slice(body);
    }
    ctx.status = status;
    match c.flush().await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// 202 Accepted with no body (notifications and client responses).
pub(super) async fn accepted(c: &mut Client, ctx: &mut Ctx) -> Next {
    let keep = ctx.keep_after_response();
    response::status_line(&mut c.out, 202);
    c.out.extend_from_slice(&ctx.cors);
    response::content_length(&mut c.out, 0);
    response::connection(&mut c.out, keep);
    c.out.extend_from_slice(b"\r\n");
    ctx.status = 202;
    match c.flush().await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}
