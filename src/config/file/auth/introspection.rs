//! `auth.issuers[].introspection` (RFC 7662): the endpoint, the client's credentials (never
//! echoed) and the cache.

use serde_yaml_ng::Value;

use super::super::extract::{self, describe, size, string, Problems, Section};
use super::super::{credentials, header_value};
use crate::config::auth::*;

const INTROSPECTION_KEYS: &[&str] = &[
    "endpoint",
    "client_id",
    "client_secret",
    "max_cache",
    "negative_cache",
    "timeout",
    "max_response_bytes",
];

/// `auth.issuers[i].introspection` (RFC 7662); absent or null: opaque tokens are refused.
pub(super) fn introspection(
    p: &mut Problems,
    s: &Section,
    discovery: bool,
    issuer: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Introspection> {
    use crate::config::auth::introspection_defaults as d;
    let (at, v) = s.value("introspection")?;
    if !matches!(v, Value::Mapping(_)) {
        p.add(
            &at,
            format!(
                "expected a mapping with client_id and client_secret (or null), got {}",
                describe(v)
            ),
        );
        return None;
    }
    let g = Section::open(p, at.clone(), Some(v), INTROSPECTION_KEYS);
    let endpoint = g.get(p, "endpoint", None, |v| {
        let u = string(v)?;
        let t =
            crate::policy::fetch::url(u).map_err(|e| format!("{e}: expected an http(s) URL"))?;
        Ok(Some((u.to_string(), t)))
    });
    if endpoint.is_none() && g.value("endpoint").is_none_or(|(_, v)| v.is_null()) && !discovery {
        p.add(
            &format!("{at}.endpoint"),
            "null needs discovery: true on the issuer (its metadata's introspection_endpoint); \
             or give the endpoint's URL",
        );
    }
    let client_id = g.required(p, "client_id", credentials::client_id);
    let secret = g.required(p, "client_secret", |v| match v {
        Value::String(s) => header_value(s, env),
        _ => Err("expected a string value (put it in quotes)".to_string()),
    });
    let max_cache = g.get(
        p,
        "max_cache",
        d::MAX_CACHE,
        extract::duration(std::time::Duration::from_secs(1)),
    );
    let negative_cache = g.get(
        p,
        "negative_cache",
        d::NEGATIVE_CACHE,
        extract::duration(std::time::Duration::ZERO),
    );
    let timeout = g.get(
        p,
        "timeout",
        d::TIMEOUT,
        extract::duration(std::time::Duration::from_millis(1)),
    );
    let max_response_bytes = g.get(p, "max_response_bytes", d::MAX_RESPONSE_BYTES, size(256));
    // https to the endpoint, or to the issuer's metadata when the endpoint is discovered.
    let https = match &endpoint {
        Some((_, t)) => t.tls,
        None => issuer.is_some_and(|i| i.starts_with("https://")),
    };
    let tls = if https {
        match crate::tls::client_config(None) {
            Ok(c) => Some(c),
            Err(e) => {
                p.add(&at, e);
                return None;
            }
        }
    } else {
        None
    };
    let (client_secret, client_secret_source) = secret?;
    let (endpoint, target) = match endpoint {
        Some((e, t)) => (Some(e), Some(t)),
        None => (None, None),
    };
    Some(Introspection {
        endpoint,
        target,
        tls,
        client_id: client_id?,
        client_secret,
        client_secret_source,
        max_cache,
        negative_cache,
        timeout,
        max_response_bytes,
    })
}
