//! `servers[].auth`: which issuers an endpoint trusts, its resource, and the development
//! principal.

use super::super::extract::{boolean, item, string, Problems, Section};
use super::super::formats;
use super::strings;
use crate::config::auth::*;
use crate::config::Listen;

/// `servers[i].auth`; absent or null: the endpoint is open.
pub(in crate::config::file) fn server_auth(
    p: &mut Problems,
    s: &Section,
    spath: Option<&str>,
    auth: &Auth,
    listen: &Listen,
) -> Option<ServerAuth> {
    let (at, v) = s.value("auth")?;
    let a = Section::open(
        p,
        at.clone(),
        Some(v),
        &[
            "resource",
            "issuers",
            "api_keys",
            "mtls",
            "development",
            "scopes",
            "scopes_supported",
        ],
    );
    let default_resource = format!(
        "{}://{}{}",
        if listen.tls.is_some() {
            "https"
        } else {
            "http"
        },
        listen.addr,
        spath.unwrap_or("/")
    );
    let resource = a.get(p, "resource", default_resource, |v| {
        let r = string(v)?;
        let rest = r
            .strip_prefix("https://")
            .or_else(|| r.strip_prefix("http://"))
            .ok_or_else(|| format!("{r:?}: expected an absolute http(s) URI (RFC 8707)"))?;
        if rest.is_empty() || rest.starts_with('/') || r.contains('#') {
            return Err(format!(
                "{r:?}: expected an absolute http(s) URI with a host and no fragment (RFC 8707)"
            ));
        }
        Ok(r.to_string())
    });
    let mut named = 0;
    let issuers = match a.value("issuers") {
        None => (0..auth.issuers.len()).collect(),
        Some((path, _)) => {
            let names = strings(p, &a, "issuers");
            named = names.len();
            let mut out = Vec::with_capacity(names.len());
            for (i, n) in names.iter().enumerate() {
                match auth.issuers.iter().position(|is| &is.name == n) {
                    Some(ix) => out.push(ix),
                    None => {
                        let hint = auth
                            .issuers
                            .iter()
                            .map(|is| is.name.as_str())
                            .filter(|k| formats::edit_distance(n, k) <= 2)
                            .min_by_key(|k| formats::edit_distance(n, k))
                            .map(|k| format!(" (did you mean {k:?}?)"))
                            .unwrap_or_default();
                        p.add(
                            &item(&path, i),
                            format!("no issuer named {n:?} in auth.issuers{hint}"),
                        );
                    }
                }
            }
            out
        }
    };
    let api_keys = a.get(p, "api_keys", !auth.api_keys.is_empty(), boolean);
    let mtls = a.get(p, "mtls", false, boolean);
    let development = a.get(p, "development", false, boolean);
    if development {
        if auth.development.is_none() {
            p.add(
                &format!("{at}.development"),
                "true, but auth.development is not set (define the development principal there)",
            );
        } else if !listen.addr.ip().to_canonical().is_loopback() {
            p.add(
                &format!("{at}.development"),
                format!(
                    "true is only allowed on a loopback listener; listen.address is {}",
                    listen.addr
                ),
            );
        }
    }
    if mtls
        && listen
            .tls
            .as_ref()
            .is_none_or(|t| t.client_ca_file.is_none())
    {
        p.add(
            &format!("{at}.mtls"),
            "true, but listen.tls has no client_ca_file (no client certificates are verified)",
        );
    }
    let scopes = strings(p, &a, "scopes");
    let scopes_supported = match a.value("scopes_supported") {
        None => scopes.clone(),
        Some(_) => strings(p, &a, "scopes_supported"),
    };
    // Opaque tokens carry no issuer: one introspecting issuer per endpoint says which to ask.
    let introspecting: Vec<&str> = issuers
        .iter()
        .filter_map(|&i| auth.issuers.get(i))
        .filter(|i| i.introspection.is_some())
        .map(|i| i.name.as_str())
        .collect();
    if introspecting.len() > 1 {
        p.add(
            &format!("{at}.issuers"),
            format!(
                "more than one issuer with introspection ({}): an opaque token names no issuer, \
                 so an endpoint accepts opaque tokens of one issuer only",
                introspecting.join(", ")
            ),
        );
    }
    // (Unknown issuer names were reported above.)
    if issuers.is_empty() && named == 0 && !api_keys && !mtls && !development {
        p.add(
            &at,
            "no way to authenticate: configure auth.issuers, auth.api_keys, mtls or development",
        );
    }
    Some(ServerAuth {
        resource,
        issuers,
        api_keys,
        mtls,
        development,
        scopes,
        scopes_supported,
    })
}
