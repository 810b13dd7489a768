//! An RFC 7662 introspection answer → a `Principal` or the one `AuthFailure` that refuses it. Pure:
//! the proxy (`proxy::introspect`) makes the call, `Authn::introspected` caches the outcome.
//!
//! Checks, in order: the answer is a JSON object (else `IntrospectionFailed`: not an answer);
//! `active` is `true` (else `Inactive`); `iss`, when present, is the issuer (§2.2 makes it
//! optional); `aud` (a string or a list) names the endpoint's resource or the issuer's
//! `audience`. An answer without `aud` is refused (`WrongAudience`): without it nothing says
//! the token was issued for this resource rather than for any other server of the same
//! authorization server, and accepting it would let that server replay its callers' tokens
//! here (the confused deputy RFC 8707 and the MCP authorization spec guard against).
//! oidc-provider, the AS of the tests, answers `aud` for resource-bound tokens. Then `exp` and
//! `nbf` with the issuer's leeway, and the claims through the issuer's claim paths: subject
//! (`sub`, else `client_id` for a machine token, whose id is then of its own kind), client
//! (`client_id`), tenant, roles, scopes (`scope`, space-separated).

use serde_json::Value;

use super::{lookup, numeric_date, principal_id, string_set};
use crate::config::auth::Issuer;
use crate::config::ServerAuth;
use crate::policy::{AuthFailure, Principal, Source};

/// Checks the answer `body` of `auth.issuers[index]` (`issuer`) for endpoint `sa` at `now`.
pub fn check(
    index: usize,
    issuer: &Issuer,
    sa: &ServerAuth,
    body: &[u8],
    now: u64,
) -> Result<Principal, AuthFailure> {
    use AuthFailure::*;
    let answer: Value = serde_json::from_slice(body).map_err(|_| IntrospectionFailed)?;
    if !answer.is_object() {
        return Err(IntrospectionFailed);
    }
    if answer.get("active") != Some(&Value::Bool(true)) {
        return Err(Inactive);
    }
    match answer.get("iss") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if *s == issuer.issuer => {}
        Some(_) => return Err(WrongIssuer),
    }
    if !super::audience_ok(answer.get("aud"), issuer, sa) {
        return Err(WrongAudience);
    }
    let leeway = issuer.leeway.as_secs();
    let exp = match answer.get("exp") {
        None | Some(Value::Null) => None,
        Some(v) => Some(numeric_date(v).ok_or(BadClaims)?),
    };
    if exp.is_some_and(|e| now > e.saturating_add(leeway)) {
        return Err(Expired);
    }
    match answer.get("nbf") {
        None | Some(Value::Null) => {}
        Some(v) => match numeric_date(v) {
            Some(t) if t > now.saturating_add(leeway) => return Err(NotYetValid),
            Some(_) => {}
            None => return Err(BadClaims),
        },
    }

    let paths = &issuer.claims;
    let client = match paths.client.as_ref().and_then(|p| lookup(&answer, p)) {
        None | Some(Value::Null) => answer.get("client_id").and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(BadClaims),
    };
    // A machine token (client credentials) may have no `sub`: its client is who calls, under
    // an id of its own kind, so a client and a user of the same name are not one principal.
    let (subject, kind) = match lookup(&answer, &paths.subject) {
        Some(Value::String(s)) if !s.is_empty() => (s.as_str(), "introspection"),
        None | Some(Value::Null) => (
            client.filter(|c| !c.is_empty()).ok_or(BadClaims)?,
            "introspection_client",
        ),
        _ => return Err(BadClaims),
    };
    let tenant = match paths.tenant.as_ref().and_then(|p| lookup(&answer, p)) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(BadClaims),
    };
    let roles = string_set(paths.roles.as_ref().and_then(|p| lookup(&answer, p)))?;
    let scopes = string_set(paths.scopes.as_ref().and_then(|p| lookup(&answer, p)))?;
    Ok(Principal {
        source: Source::Introspection {
            issuer: index as u16,
        },
        subject: subject.into(),
        client: client.map(Into::into),
        tenant: tenant.map(Into::into),
        roles,
        scopes,
        expires_at: exp,
        id: principal_id(kind, &issuer.issuer, subject),
    })
}
