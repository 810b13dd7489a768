//! `auth:` rendered: issuers (with introspection), API keys and key fetching; secrets as their
//! references or redacted.

use std::fmt::Write as _;

use super::{list, q, render_duration, render_size};
use crate::config::*;

/// `auth:`. Secrets are shown as where they come from (`${env:NAME}`, `${file:PATH}`) or
/// `<redacted>`; API keys only by their hash (which is what the file holds).
pub(super) fn render_auth(o: &mut String, a: &crate::config::Auth) {
    let _ = writeln!(o, "auth:");
    if a.issuers.is_empty() {
        let _ = writeln!(o, "  issuers: []");
    } else {
        let _ = writeln!(o, "  issuers:");
    }
    for i in &a.issuers {
        let algs: Vec<String> = i.algorithms.iter().map(|x| format!("{x:?}")).collect();
        let _ = writeln!(o, "    - name: {}", q(&i.name));
        let _ = writeln!(o, "      issuer: {}", q(&i.issuer));
        let _ = writeln!(o, "      algorithms: [{}]", algs.join(", "));
        match &i.secret_ref {
            Some(s) => {
                let _ = writeln!(o, "      secret: {}", q(s));
            }
            None => {
                let _ = writeln!(o, "      secret: null");
            }
        }
        let _ = writeln!(o, "      keys: {}", list(&i.key_files));
        match &i.jwks_url {
            Some(u) => {
                let _ = writeln!(o, "      jwks_url: {}", q(u));
            }
            None => {
                let _ = writeln!(o, "      jwks_url: null");
            }
        }
        let _ = writeln!(o, "      discovery: {}", i.discovery);
        match &i.audience {
            Some(a) => {
                let _ = writeln!(o, "      audience: {}", list(a));
            }
            None => {
                let _ = writeln!(o, "      audience: null  # each server's resource");
            }
        }
        let _ = writeln!(o, "      leeway: {}", render_duration(i.leeway));
        let path = |p: &Option<crate::config::auth::ClaimPath>| {
            p.as_ref().map_or("null".to_string(), |p| q(&p.dotted()))
        };
        let _ = writeln!(
            o,
            "      claims: {{subject: {}, client: {}, tenant: {}, roles: {}, scopes: {}}}",
            q(&i.claims.subject.dotted()),
            path(&i.claims.client),
            path(&i.claims.tenant),
            path(&i.claims.roles),
            path(&i.claims.scopes)
        );
        render_introspection(o, i.introspection.as_deref());
    }
    if a.api_keys.is_empty() {
        let _ = writeln!(o, "  api_keys: []");
    } else {
        let _ = writeln!(o, "  api_keys:");
    }
    for k in &a.api_keys {
        let hex: String = k.sha256.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(o, "    - name: {}", q(&k.name));
        let _ = writeln!(o, "      sha256: {}", q(&hex));
        let _ = writeln!(o, "      roles: {}", list(&k.roles));
        let _ = writeln!(o, "      scopes: {}", list(&k.scopes));
        let tenant = k.tenant.as_deref().map_or("null".to_string(), q);
        let _ = writeln!(o, "      tenant: {tenant}");
    }
    let _ = writeln!(o, "  mtls:");
    let _ = writeln!(o, "    subject: {}", a.mtls.subject.as_str());
    if a.mtls.principals.is_empty() {
        let _ = writeln!(o, "    principals: []");
    } else {
        let _ = writeln!(o, "    principals:");
    }
    for p in &a.mtls.principals {
        let tenant = p.tenant.as_deref().map_or("null".to_string(), q);
        let _ = writeln!(
            o,
            "      - {{subject: {}, roles: {}, tenant: {tenant}}}",
            q(&p.subject),
            list(&p.roles)
        );
    }
    match &a.development {
        None => {
            let _ = writeln!(o, "  development: null  # off");
        }
        Some(d) => {
            let _ = writeln!(o, "  development:");
            let _ = writeln!(o, "    subject: {}", q(&d.subject));
            let _ = writeln!(o, "    roles: {}", list(&d.roles));
        }
    }
    let _ = writeln!(o, "  token_cache_entries: {}", a.token_cache_entries);
    let _ = writeln!(
        o,
        "  max_token_bytes: {}",
        render_size(a.max_token_bytes as u64)
    );
    let k = &a.key_refresh;
    let _ = writeln!(o, "  key_refresh:");
    let _ = writeln!(o, "    min_interval: {}", render_duration(k.min_interval));
    let _ = writeln!(
        o,
        "    default_interval: {}",
        render_duration(k.default_interval)
    );
    let _ = writeln!(o, "    max_interval: {}", render_duration(k.max_interval));
    let _ = writeln!(
        o,
        "    unknown_kid_interval: {}",
        render_duration(k.unknown_kid_interval)
    );
    let _ = writeln!(o, "    timeout: {}", render_duration(k.timeout));
}

/// `auth.issuers[].introspection`: the secret as its reference or redacted.
pub(super) fn render_introspection(o: &mut String, i: Option<&crate::config::auth::Introspection>) {
    let Some(i) = i else {
        let _ = writeln!(o, "      introspection: null");
        return;
    };
    let _ = writeln!(o, "      introspection:");
    match &i.endpoint {
        Some(e) => {
            let _ = writeln!(o, "        endpoint: {}", q(e));
        }
        None => {
            let _ = writeln!(
                o,
                "        endpoint: null  # the issuer's metadata's introspection_endpoint"
            );
        }
    }
    let _ = writeln!(o, "        client_id: {}", q(&i.client_id));
    let shown = match &i.client_secret_source {
        HeaderSource::Env(var) => q(&format!("${{env:{var}}}")),
        HeaderSource::File(path) => q(&format!("${{file:{path}}}")),
        HeaderSource::Literal => "\"<redacted>\"".to_string(),
    };
    let _ = writeln!(o, "        client_secret: {shown}");
    let _ = writeln!(o, "        max_cache: {}", render_duration(i.max_cache));
    let _ = writeln!(
        o,
        "        negative_cache: {}",
        render_duration(i.negative_cache)
    );
    let _ = writeln!(o, "        timeout: {}", render_duration(i.timeout));
    let _ = writeln!(o, "        max_response_bytes: {}", i.max_response_bytes);
}
