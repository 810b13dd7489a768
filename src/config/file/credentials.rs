//! `upstreams[].credentials`: exactly one of `client_credentials` or `token_exchange`.

use serde_yaml_ng::Value;

use super::extract::{self, boolean, count, describe, size, string, Problems, Section};
use crate::config::credentials::{defaults, Credentials, Grant};
use crate::config::{HeaderSource, UpstreamTarget};

/// How a secret value is read (`file::header_value`: literal, `${env:}` or `${file:}`).
type ReadSecret =
    dyn Fn(&str, &dyn Fn(&str) -> Option<String>) -> Result<(String, HeaderSource), String>;

const GRANT_KEYS: &[&str] = &[
    "token_url",
    "client_id",
    "client_secret",
    "scope",
    "resource",
    "audience",
    "refresh_before",
    "ca_file",
    "connect_timeout",
    "request_timeout",
    "max_response_bytes",
];

/// Reads `credentials` under the upstream section `s`; `None` when absent, null or broken.
/// An OAuth client id: non-empty text without control characters (it goes into a Basic
/// header and a form).
pub(super) fn client_id(v: &Value) -> Result<String, String> {
    let id = string(v)?;
    if id.is_empty() || id.chars().any(char::is_control) {
        return Err("must be non-empty text without control characters".to_string());
    }
    Ok(id.to_string())
}

pub fn credentials(
    p: &mut Problems,
    s: &Section,
    upstream_url: &UpstreamTarget,
    env: &dyn Fn(&str) -> Option<String>,
    secret: &ReadSecret,
) -> Option<Credentials> {
    let (path, v) = s.value("credentials")?;
    let c = Section::open(
        p,
        path.clone(),
        Some(v),
        &["client_credentials", "token_exchange"],
    );
    let (grant, gpath, gv) = match (c.value("client_credentials"), c.value("token_exchange")) {
        (Some(_), Some(_)) => {
            p.add(
                &path,
                "set one of client_credentials or token_exchange, not both",
            );
            return None;
        }
        (Some((gp, gv)), None) => (Grant::ClientCredentials, gp, gv),
        (None, Some((gp, gv))) => (Grant::TokenExchange, gp, gv),
        (None, None) => {
            if matches!(v, Value::Mapping(_)) {
                p.add(
                    &path,
                    "expected client_credentials or token_exchange (or credentials: null)",
                );
            }
            return None;
        }
    };
    if !matches!(gv, Value::Mapping(_)) {
        p.add(
            &gpath,
            format!(
                "expected a mapping with token_url, client_id and client_secret, got {}",
                describe(gv)
            ),
        );
        return None;
    }
    let mut keys = GRANT_KEYS.to_vec();
    if grant == Grant::TokenExchange {
        keys.extend_from_slice(&["actor", "cache_entries"]);
    }
    let g = Section::open(p, gpath.clone(), Some(gv), &keys);
    let url = g.required(p, "token_url", |v| {
        let text = string(v)?;
        match super::formats::upstream_url(text)? {
            UpstreamTarget::Http(h) => Ok((text.to_string(), h)),
            UpstreamTarget::BuiltinDemo => Err("expected an http:// or https:// URL".to_string()),
        }
    });
    let client_id = g.required(p, "client_id", client_id);
    let secret = g.required(p, "client_secret", |v| match v {
        Value::String(s) => secret(s, env),
        _ => Err("expected a string value (put it in quotes)".to_string()),
    });
    let text = |key: &'static str| {
        move |v: &Value| -> Result<Option<String>, String> {
            let t = string(v)?;
            if t.is_empty() || t.chars().any(char::is_control) {
                return Err(format!(
                    "{key} must be non-empty text without control characters"
                ));
            }
            Ok(Some(t.to_string()))
        }
    };
    let scope = g.get(p, "scope", None, text("scope"));
    let resource = g.get(p, "resource", None, text("resource"));
    let audience = g.get(p, "audience", None, text("audience"));
    let refresh_before = g.get(
        p,
        "refresh_before",
        defaults::REFRESH_BEFORE,
        extract::duration(std::time::Duration::ZERO),
    );
    let connect_timeout = g.get(
        p,
        "connect_timeout",
        defaults::CONNECT_TIMEOUT,
        extract::duration(std::time::Duration::from_millis(1)),
    );
    let request_timeout = g.get(
        p,
        "request_timeout",
        defaults::REQUEST_TIMEOUT,
        extract::duration(std::time::Duration::from_millis(1)),
    );
    let max_response_bytes = g.get(
        p,
        "max_response_bytes",
        defaults::MAX_RESPONSE_BYTES,
        size(256),
    );
    let actor = g.get(p, "actor", false, boolean);
    let cache_entries = g.get(p, "cache_entries", defaults::CACHE_ENTRIES, |v| {
        count(1, 10_000_000)(v).map(|n| n as usize)
    });
    let ca_file = g.get(p, "ca_file", None, |v| {
        let s = string(v)?;
        if s.trim().is_empty() {
            return Err("must not be empty (a path to a PEM file)".into());
        }
        Ok(Some(s.to_string()))
    });
    let (token_url, target) = url?;
    let tls = if target.tls {
        let name = match crate::tls::server_name(&target.host) {
            Ok(n) => n,
            Err(e) => {
                p.add(&extract::child(&gpath, "token_url"), e);
                return None;
            }
        };
        match crate::tls::client_config(ca_file.as_deref()) {
            Ok(c) => Some((c, name)),
            Err(e) => {
                let key = if ca_file.is_some() {
                    "ca_file"
                } else {
                    "token_url"
                };
                p.add(&extract::child(&gpath, key), e);
                return None;
            }
        }
    } else {
        if ca_file.is_some() {
            p.add(
                &extract::child(&gpath, "ca_file"),
                "applies to https:// token URLs only",
            );
        }
        None
    };
    let resource_set = resource.is_some();
    let resource = resource.or_else(|| match upstream_url {
        UpstreamTarget::Http(h) => Some(format!(
            "{}://{}{}",
            if h.tls { "https" } else { "http" },
            h.authority,
            h.path
        )),
        UpstreamTarget::BuiltinDemo => None,
    });
    let (client_secret, client_secret_source) = secret?;
    Some(Credentials {
        grant,
        token_url,
        token_target: target,
        ca_file,
        tls,
        client_id: client_id?,
        client_secret,
        client_secret_source,
        scope,
        resource,
        resource_set,
        audience,
        refresh_before,
        actor,
        cache_entries,
        connect_timeout,
        request_timeout,
        max_response_bytes,
    })
}
