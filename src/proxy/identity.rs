//! Phase: authenticate. On an endpoint with `auth`, every request (POST, GET, DELETE, the
//! legacy transport's GET and POSTs, every stateless request) says who it is before anything
//! else is read of it: the per-worker `policy::authn::Authn` turns the presented credential into a
//! `Principal` (a verified-token cache hit costs no signature check) or an `AuthFailure`, which
//! is answered 401 with the `WWW-Authenticate` challenge pointing at the endpoint's Protected
//! Resource Metadata, logged and counted by reason. The metadata documents themselves
//! (RFC 9728) are served here too, without authentication.

use crate::error::Kind;
use crate::http::head::{HttpMethod, RequestHead};
use crate::http::response;
use crate::policy::authn::{Presented, Unresolved};
use crate::policy::{challenge, AuthFailure};

use super::client::Client;
use super::context::Ctx;
use super::reject::Refusal;
use super::state::{Gateway, WorkerState};
use super::unix_now;

/// The well-known prefix of Protected Resource Metadata (RFC 9728 §3).
const PRM: &[u8] = b"/.well-known/oauth-protected-resource";

/// Why the authenticate phase did not admit the request by itself.
pub enum NotYet {
    /// Refused (401, or 403 for a missing scope).
    Refused(Refusal),
    /// An opaque token for `auth.issuers[issuer]`'s introspection endpoint: `introspect`.
    Introspect(usize),
}

/// Authenticates the request on `server` (which has `auth`): sets `ctx.principal`, or says why
/// not. Synchronous: a cached token, a JWT, an API key, a certificate are decided here; an
/// opaque token not in the cache is left to `introspect`.
pub fn authenticate(
    w: &WorkerState,
    c: &Client,
    ctx: &mut Ctx,
    head: &RequestHead,
    server: usize,
) -> Result<(), NotYet> {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    if gw.config.servers[server].auth.is_none() {
        return Ok(());
    }
    let buf = c.conn.buffered();
    let target = &buf[head.target.clone()];
    let query = memchr::memchr(b'?', target).map(|q| &target[q + 1..]);
    let presented = Presented {
        authorization: head.authorization.clone().map(|r| &buf[r]),
        api_key: head.api_key.clone().map(|r| &buf[r]),
        query,
        peer: ctx.peer.as_deref(),
        loopback: ctx.source.is_some_and(|ip| ip.is_loopback()),
    };
    // The coarse clock (at most one tick behind): a hit is then lenient by that much at a
    // token's `exp`; a token refused as not yet valid is tried again on the exact clock, so a
    // fresh token's `nbf` never meets a clock that lags (with `leeway: 0`).
    let mut decided = gen
        .authn
        .authenticate(&gw.config, server, &presented, w.shutdown.unix_now());
    if matches!(decided, Err(Unresolved::Failed(AuthFailure::NotYetValid))) {
        decided = gen
            .authn
            .authenticate(&gw.config, server, &presented, unix_now());
    }
    match decided {
        Ok(p) => {
            let authorization = head.authorization.clone().map(|r| &buf[r]);
            admit(gw, ctx, server, p, authorization).map_err(NotYet::Refused)
        }
        Err(Unresolved::Failed(f)) => Err(NotYet::Refused(refuse(w, gw, ctx, server, f))),
        Err(Unresolved::Introspect { issuer }) => Err(NotYet::Introspect(issuer)),
    }
}

/// The rest of the authenticate phase for an opaque token: asks `auth.issuers[issuer]`'s
/// introspection endpoint (single flight per worker and token, bounded by its timeout), then
/// admits or refuses like `authenticate`. Kept out of line (the caller boxes it): its state is
/// not part of every request's future.
pub async fn introspect(
    w: &WorkerState,
    c: &Client,
    ctx: &mut Ctx,
    head: &RequestHead,
    server: usize,
    issuer: usize,
) -> Result<(), Refusal> {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let header: Option<Box<[u8]>> = head
        .authorization
        .clone()
        .map(|r| c.conn.buffered()[r].into());
    let Some(token) = header.as_deref().and_then(bearer_token) else {
        return Err(refuse(w, gw, ctx, server, AuthFailure::Malformed));
    };
    let got = gen
        .introspect
        .principal(
            &gen.authn,
            &gw.config,
            server,
            issuer,
            token.as_bytes(),
            unix_now,
            |o| w.metrics.introspection(o),
        )
        .await;
    match got {
        Ok(p) => admit(gw, ctx, server, p, header.as_deref()),
        Err(f) => Err(refuse(w, gw, ctx, server, f)),
    }
}

/// An authenticated principal: kept in the context, held to the endpoint's required scopes.
fn admit(
    gw: &Gateway,
    ctx: &mut Ctx,
    server: usize,
    p: std::rc::Rc<crate::policy::Principal>,
    authorization: Option<&[u8]>,
) -> Result<(), Refusal> {
    let Some(auth) = gw.config.servers[server].auth.as_ref() else {
        return Ok(());
    };
    // Scopes the endpoint requires of every request: a token without one is 403
    // `insufficient_scope` (another token can be asked for), not 401.
    let missing: Vec<&str> = auth
        .scopes
        .iter()
        .filter(|s| !p.has_scope(s))
        .map(String::as_str)
        .collect();
    // The caller's own token is kept only where an upstream exchanges it for one of its own
    // (RFC 8693); it never goes upstream itself.
    if matches!(
        p.source,
        crate::policy::Source::Jwt { .. } | crate::policy::Source::Introspection { .. }
    ) && exchanges_tokens(gw, server)
    {
        ctx.credential = authorization.and_then(bearer_token).map(std::rc::Rc::from);
    }
    ctx.principal = Some(p);
    if !missing.is_empty() {
        let scope = missing.join(" ");
        let mut r = Refusal::because(
            Kind::InsufficientScope,
            format!("the access token lacks the scope {scope}"),
        );
        r.challenge = Some(challenge::insufficient_scope(gw, server, &scope));
        return Err(r);
    }
    Ok(())
}

/// The 401 for failure `f`, counted and logged.
fn refuse(w: &WorkerState, gw: &Gateway, ctx: &mut Ctx, server: usize, f: AuthFailure) -> Refusal {
    w.metrics.auth_failure(f);
    let auth = gw.config.servers[server].auth.as_ref();
    let ask = match f {
        AuthFailure::UnknownKey => Some(crate::policy::fetch::Ask::UnknownKid),
        AuthFailure::KeysUnavailable => Some(crate::policy::fetch::Ask::NoKeys),
        _ => None,
    };
    if let (Some(why), Some(k), Some(auth)) = (ask, &gw.keys, auth) {
        k.ask(&auth.issuers, why);
    }
    let error = (f != AuthFailure::Missing).then(|| f.description());
    let mut r = Refusal::because(Kind::Unauthenticated, unauthenticated_message(f));
    if let Some(auth) = auth {
        r.challenge = Some(challenge::unauthorized(&auth.resource, &auth.scopes, error));
    }
    tracing::debug!(server = %gw.config.servers[server].path, reason = f.reason(), "request not authenticated");
    ctx.auth_failure = Some(f);
    r
}

/// Whether an upstream of `server` gets its token by exchanging the caller's.
pub(super) fn exchanges_tokens(gw: &Gateway, server: usize) -> bool {
    gw.config.servers[server].upstreams.iter().any(|m| {
        gw.config.upstreams[m.upstream]
            .credentials
            .as_ref()
            .is_some_and(|c| c.grant == crate::config::credentials::Grant::TokenExchange)
    })
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer_token(v: &[u8]) -> Option<&str> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthenticated_message(f: AuthFailure) -> String {
    match f {
        AuthFailure::Missing => {
            "authentication required: send Authorization: Bearer <token>".into()
        }
        f => format!("authentication failed: {}", f.description()),
    }
}

/// The server whose metadata `path` asks for: `/.well-known/oauth-protected-resource<p>` where
/// `<p>` is the path of an authenticating server's resource URI; the bare well-known path
/// names the server whose resource has no path, or else the only authenticating server.
pub fn metadata_server(gw: &Gateway, path: &[u8]) -> Option<Option<usize>> {
    let rest = path.strip_prefix(PRM)?;
    if !(rest.is_empty() || rest.starts_with(b"/")) {
        return None;
    }
    let authenticating = || {
        gw.config
            .servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.auth.as_ref().map(|a| (i, a)))
    };
    let want = std::str::from_utf8(path).ok()?;
    let exact = authenticating()
        .find(|(_, a)| challenge::metadata_path(&a.resource) == want.trim_end_matches('/'))
        .map(|(i, _)| i);
    let only = || {
        let mut it = authenticating();
        match (it.next(), it.next()) {
            (Some((i, _)), None) if rest.is_empty() || rest == b"/" => Some(i),
            _ => None,
        }
    };
    Some(exact.or_else(only))
}

/// Answers a metadata request for `server` (`None`: no such resource here → 404).
pub async fn metadata(
    c: &mut Client,
    ctx: &mut Ctx,
    head: &RequestHead,
    server: Option<usize>,
) -> super::Next {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    c.conn.consume(head.len);
    let Some(server) = server else {
        return super::refuse(c, ctx, Refusal::new(Kind::NotFound)).await;
    };
    if !matches!(head.method(), HttpMethod::Get | HttpMethod::Head) {
        return super::refuse(c, ctx, Refusal::new(Kind::MethodNotAllowed)).await;
    }
    ctx.server = Some(server);
    let Some(auth) = gw.config.servers[server].auth.as_ref() else {
        return super::refuse(c, ctx, Refusal::new(Kind::NotFound)).await;
    };
    // The authorization servers are the issuers whose tokens this endpoint accepts.
    let issuers: Vec<String> = auth
        .issuers
        .iter()
        .filter_map(|&i| gw.config.auth.issuers.get(i))
        .map(|i| i.issuer.clone())
        .collect();
    let body = challenge::metadata_document(&auth.resource, &issuers, &auth.scopes_supported);
    let keep = ctx.keep_after_response();
    response::status_line(&mut c.out, 200);
    response::header(&mut c.out, b"content-type", b"application/json");
    response::header(&mut c.out, b"cache-control", b"max-age=300");
    // Browser-based clients read it cross-origin.
    response::header(&mut c.out, b"access-control-allow-origin", b"*");
    response::content_length(&mut c.out, body.len() as u64);
    response::connection(&mut c.out, keep);
    c.out.extend_from_slice(b"\r\n");
    if !c.head_only {
        c.out.extend_from_slice(&body);
    }
    ctx.status = 200;
    match c.flush().await {
        Ok(()) if keep => super::Next::KeepAlive,
        _ => super::Next::Close,
    }
}
