//! The principal of a verified client certificate (`auth.mtls`): its subject by the configured
//! field, mapped to a tenant and roles.

use super::{boxed, principal_id, AuthFailure, Principal, Source};
use crate::config::auth::MtlsSubject;
use crate::config::Config;
use crate::tls::PeerIdentity;

/// The principal of a verified client certificate (`auth.mtls`).
pub(super) fn mtls_principal(cfg: &Config, peer: &PeerIdentity) -> Result<Principal, AuthFailure> {
    let m = &cfg.auth.mtls;
    let san = |prefix: &str| {
        peer.sans
            .iter()
            .find_map(|s| s.strip_prefix(prefix))
            .map(str::to_string)
    };
    let subject = match m.subject {
        MtlsSubject::Subject => Some(peer.subject.clone()),
        MtlsSubject::SanUri => san("URI:"),
        MtlsSubject::SanDns => san("DNS:"),
        MtlsSubject::SanEmail => san("email:"),
        MtlsSubject::Cn => common_name(&peer.subject),
    }
    .filter(|s| !s.is_empty())
    .ok_or(AuthFailure::BadClaims)?;
    let mapped = m.principals.iter().find(|p| p.subject == subject);
    Ok(Principal {
        source: Source::Mtls,
        id: principal_id("mtls", "", &subject),
        client: None,
        tenant: mapped.and_then(|p| p.tenant.as_deref()).map(Into::into),
        roles: mapped.map_or_else(|| Box::new([]) as Box<[Box<str>]>, |p| boxed(&p.roles)),
        scopes: Box::new([]),
        expires_at: None,
        subject: subject.into(),
    })
}

/// The first `CN=` of an RFC 4514 string (escaped commas kept).
fn common_name(subject: &str) -> Option<String> {
    let mut rdns = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for ch in subject.chars() {
        if escaped {
            cur.push(ch);
            escaped = false;
        } else if ch == '\\' {
            escaped = true;
        } else if ch == ',' || ch == '+' {
            rdns.push(std::mem::take(&mut cur));
        } else {
            cur.push(ch);
        }
    }
    rdns.push(cur);
    rdns.into_iter()
        .find_map(|r| r.strip_prefix("CN=").map(str::to_string))
}
