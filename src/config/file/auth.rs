//! `auth:` (issuers, API keys, mTLS, the development principal, cache and size limits) and
//! `servers[].auth`. Key files are read and decoded here (`auth/keys.rs`), so a bad key is a
//! config problem at its path; secrets are never echoed (only the variable or file they come
//! from). `auth/introspection.rs` reads an issuer's introspection, `auth/server.rs` an
//! endpoint's `auth`.

mod introspection;
mod keys;
mod server;

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde_yaml_ng::Value;

use super::extract::{boolean, count, describe, item, size, string, Problems, Section};
use super::formats;
use crate::config::auth::*;
use crate::policy::jwt_ring;
use introspection::introspection;
use keys::{algorithm, family_name, key_file, secret};
pub(super) use server::server_auth;

const ISSUER_KEYS: &[&str] = &[
    "name",
    "issuer",
    "algorithms",
    "secret",
    "keys",
    "jwks_url",
    "discovery",
    "audience",
    "leeway",
    "claims",
    "introspection",
];

fn name_check(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!(
            "{s:?}: expected 1 to 64 characters of A-Z, a-z, 0-9, _, . and -"
        ));
    }
    Ok(())
}

fn strings(p: &mut Problems, s: &Section, key: &str) -> Vec<String> {
    let Some((path, v)) = s.value(key) else {
        return Vec::new();
    };
    let Value::Sequence(items) = v else {
        p.add(
            &path,
            format!("expected a list of strings, got {}", describe(v)),
        );
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        match string(it) {
            Ok("") => p.add(&item(&path, i), "must not be empty"),
            Ok(st) if out.iter().any(|o| o == st) => {
                p.add(&item(&path, i), format!("duplicate entry {st:?}"))
            }
            Ok(st) => out.push(st.to_string()),
            Err(e) => p.add(&item(&path, i), e),
        }
    }
    out
}

fn optional_string(v: &Value) -> Result<Option<String>, String> {
    string(v).map(|s| Some(s.to_string()))
}

pub(super) fn auth(p: &mut Problems, top: &Section, env: &dyn Fn(&str) -> Option<String>) -> Auth {
    let s = Section::open(
        p,
        "auth".into(),
        top.raw("auth"),
        &[
            "issuers",
            "api_keys",
            "mtls",
            "development",
            "token_cache_entries",
            "max_token_bytes",
            "key_refresh",
        ],
    );
    let mut issuers: Vec<Issuer> = Vec::new();
    if let Some((path, v)) = s.value("issuers") {
        match v {
            Value::Sequence(list) => {
                let mut seen: HashMap<String, usize> = HashMap::new();
                for (i, v) in list.iter().enumerate() {
                    let at = item(&path, i);
                    if let Some(iss) = issuer(p, &at, v, env) {
                        if let Some(first) = seen.get(&iss.name) {
                            p.add(
                                &format!("{at}.name"),
                                format!(
                                    "duplicate issuer name {:?} (also {path}[{first}])",
                                    iss.name
                                ),
                            );
                            continue;
                        }
                        seen.insert(iss.name.clone(), i);
                        issuers.push(iss);
                    }
                }
                if issuers.len() > usize::from(u16::MAX) {
                    p.add(&path, "more than 65535 issuers");
                }
            }
            other => p.add(
                &path,
                format!("expected a list of issuers, got {}", describe(other)),
            ),
        }
    }
    let mut api_keys: Vec<ApiKey> = Vec::new();
    if let Some((path, v)) = s.value("api_keys") {
        match v {
            Value::Sequence(list) => {
                for (i, v) in list.iter().enumerate() {
                    let at = item(&path, i);
                    let k = Section::open(
                        p,
                        at.clone(),
                        Some(v),
                        &["name", "sha256", "roles", "scopes", "tenant"],
                    );
                    let name = k.required(p, "name", |v| {
                        let n = string(v)?;
                        name_check(n)?;
                        Ok(n.to_string())
                    });
                    let sha256 = k.required(p, "sha256", |v| {
                        formats::hex_key(string(v)?).map_err(|_| {
                            "expected the key's SHA-256 as 64 hex characters \
                             (`tollgate hash-key` prints it), never the key itself"
                                .to_string()
                        })
                    });
                    let roles = strings(p, &k, "roles");
                    let scopes = strings(p, &k, "scopes");
                    let tenant = k.get(p, "tenant", None, optional_string);
                    if let (Some(name), Some(sha256)) = (name, sha256) {
                        if api_keys.iter().any(|a| a.name == name) {
                            p.add(
                                &format!("{at}.name"),
                                format!("duplicate API key name {name:?}"),
                            );
                        } else if api_keys.iter().any(|a| a.sha256 == sha256) {
                            p.add(&format!("{at}.sha256"), "the same key is listed twice");
                        } else {
                            api_keys.push(ApiKey {
                                name,
                                sha256,
                                roles,
                                scopes,
                                tenant,
                            });
                        }
                    }
                }
                if api_keys.len() > usize::from(u16::MAX) {
                    p.add(&path, "more than 65535 API keys");
                }
            }
            other => p.add(
                &path,
                format!("expected a list of API keys, got {}", describe(other)),
            ),
        }
    }
    let m = Section::open(
        p,
        "auth.mtls".into(),
        s.raw("mtls"),
        &["subject", "principals"],
    );
    let subject = m.get(p, "subject", MtlsSubject::Subject, |v| match string(v)? {
        "san_uri" => Ok(MtlsSubject::SanUri),
        "san_dns" => Ok(MtlsSubject::SanDns),
        "san_email" => Ok(MtlsSubject::SanEmail),
        "cn" => Ok(MtlsSubject::Cn),
        "subject" => Ok(MtlsSubject::Subject),
        other => Err(format!(
            "expected san_uri, san_dns, san_email, cn or subject, got {other:?}"
        )),
    });
    let mut principals = Vec::new();
    if let Some((path, v)) = m.value("principals") {
        match v {
            Value::Sequence(list) => {
                for (i, v) in list.iter().enumerate() {
                    let at = item(&path, i);
                    let e = Section::open(p, at.clone(), Some(v), &["subject", "roles", "tenant"]);
                    let subject = e.required(p, "subject", |v| Ok(string(v)?.to_string()));
                    let roles = strings(p, &e, "roles");
                    let tenant = e.get(p, "tenant", None, optional_string);
                    if let Some(subject) = subject {
                        principals.push(MtlsPrincipal {
                            subject,
                            roles,
                            tenant,
                        });
                    }
                }
            }
            other => p.add(
                &path,
                format!("expected a list of principals, got {}", describe(other)),
            ),
        }
    }
    let development = s.value("development").map(|(path, v)| {
        let d = Section::open(p, path, Some(v), &["subject", "roles"]);
        Development {
            subject: d.get(p, "subject", "dev".to_string(), |v| {
                let s = string(v)?;
                if s.is_empty() {
                    return Err("must not be empty".into());
                }
                Ok(s.to_string())
            }),
            roles: strings(p, &d, "roles"),
        }
    });
    Auth {
        issuers,
        api_keys,
        mtls: Mtls {
            subject,
            principals,
        },
        development,
        token_cache_entries: s.get(p, "token_cache_entries", DEFAULT_TOKEN_CACHE_ENTRIES, |v| {
            count(1, 1 << 24)(v).map(|n| n as usize)
        }),
        max_token_bytes: s.get(p, "max_token_bytes", DEFAULT_MAX_TOKEN_BYTES, |v| {
            let n = size(64)(v)?;
            if n > 1 << 20 {
                return Err(format!("at most 1MiB, got {n} bytes"));
            }
            Ok(n)
        }),
        key_refresh: key_refresh(p, &s),
    }
}

/// `auth.key_refresh`.
fn key_refresh(p: &mut Problems, s: &Section) -> crate::config::auth::KeyRefresh {
    let d = crate::config::auth::KeyRefresh::default();
    let k = Section::open(
        p,
        "auth.key_refresh".into(),
        s.raw("key_refresh"),
        &[
            "min_interval",
            "default_interval",
            "max_interval",
            "unknown_kid_interval",
            "timeout",
        ],
    );
    let second = std::time::Duration::from_secs(1);
    let dur =
        |p: &mut Problems, key: &str, def| k.get(p, key, def, super::extract::duration(second));
    let r = crate::config::auth::KeyRefresh {
        min_interval: dur(p, "min_interval", d.min_interval),
        default_interval: dur(p, "default_interval", d.default_interval),
        max_interval: dur(p, "max_interval", d.max_interval),
        unknown_kid_interval: dur(p, "unknown_kid_interval", d.unknown_kid_interval),
        timeout: dur(p, "timeout", d.timeout),
    };
    if !(r.min_interval <= r.default_interval && r.default_interval <= r.max_interval) {
        p.add(
            "auth.key_refresh",
            "expected min_interval <= default_interval <= max_interval",
        );
    }
    r
}

fn issuer(
    p: &mut Problems,
    at: &str,
    v: &Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Issuer> {
    if !matches!(v, Value::Mapping(_)) {
        p.add(
            at,
            format!(
                "expected a mapping with name, issuer and algorithms, got {}",
                describe(v)
            ),
        );
        return None;
    }
    let s = Section::open(p, at.to_string(), Some(v), ISSUER_KEYS);
    let name = s.required(p, "name", |v| {
        let n = string(v)?;
        name_check(n)?;
        Ok(n.to_string())
    });
    let iss = s.required(p, "issuer", |v| {
        let s = string(v)?;
        if s.is_empty() {
            return Err("must not be empty (the exact `iss` value of its tokens)".into());
        }
        Ok(s.to_string())
    });
    let mut algorithms: Vec<Algorithm> = Vec::new();
    let mut algs_ok = true;
    let opaque_only = s.value("introspection").is_some_and(|(_, v)| !v.is_null())
        && ["algorithms", "secret", "keys", "jwks_url"]
            .iter()
            .all(|k| match s.value(k) {
                None | Some((_, Value::Null)) => true,
                Some((_, Value::Sequence(l))) => l.is_empty(),
                Some(_) => false,
            });
    match s.value("algorithms") {
        // Opaque tokens only: no algorithms (`[]`, as rendered, or absent), no keys.
        _ if opaque_only => algs_ok = false,
        None => {
            p.add(
                &format!("{at}.algorithms"),
                "missing (required: pin the algorithms its tokens are signed with, e.g. [RS256])",
            );
            algs_ok = false;
        }
        Some((path, Value::Sequence(list))) if !list.is_empty() => {
            for (i, v) in list.iter().enumerate() {
                match algorithm(v) {
                    Ok(a) if algorithms.contains(&a) => {
                        p.add(&item(&path, i), format!("duplicate entry {a:?}"))
                    }
                    Ok(a) => algorithms.push(a),
                    Err(e) => {
                        algs_ok = false;
                        p.add(&item(&path, i), e)
                    }
                }
            }
        }
        Some((path, v)) => {
            algs_ok = false;
            p.add(
                &path,
                format!(
                    "expected a non-empty list of algorithms, got {}",
                    describe(v)
                ),
            )
        }
    }
    let mut keys = Vec::new();
    let secret_ref = s.get(p, "secret", None, |v| {
        let (bytes, shown) = secret(string(v)?, env)?;
        keys.push(IssuerKey {
            kid: None,
            key: DecodingKey::from_secret(&bytes),
            from: "secret".into(),
        });
        Ok(Some(shown))
    });
    let mut key_files = Vec::new();
    if let Some((path, v)) = s.value("keys") {
        match v {
            Value::Sequence(list) => {
                for (i, v) in list.iter().enumerate() {
                    match string(v).and_then(|f| Ok((f, key_file(f)?))) {
                        Ok((f, mut ks)) => {
                            key_files.push(f.to_string());
                            keys.append(&mut ks);
                        }
                        Err(e) => p.add(&item(&path, i), e),
                    }
                }
            }
            other => p.add(
                &path,
                format!("expected a list of key files, got {}", describe(other)),
            ),
        }
    }
    let jwks_url = s.get(p, "jwks_url", None, |v| {
        let u = string(v)?;
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            return Err(format!("{u:?}: expected an http(s) URL"));
        }
        Ok(Some(u.to_string()))
    });
    let discovery = s.get(p, "discovery", false, boolean);
    let audience = s.value("audience").map(|_| strings(p, &s, "audience"));
    if let Some(a) = &audience {
        if a.is_empty() {
            p.add(
                &format!("{at}.audience"),
                "empty list: null (the server's resource) or at least one audience",
            );
        }
    }
    let leeway = s.get(p, "leeway", DEFAULT_LEEWAY, |v| {
        let d = super::extract::duration(std::time::Duration::ZERO)(v)?;
        if d > std::time::Duration::from_secs(600) {
            return Err("at most 10m".into());
        }
        Ok(d)
    });
    let claims = claims(p, &s);
    let introspection = introspection(p, &s, discovery, iss.as_deref(), env);
    // Every pinned algorithm needs a key that can verify it, unless keys are fetched.
    let fetched = jwks_url.is_some() || discovery;
    let written = s.value("secret").is_some() || s.value("keys").is_some();
    if algs_ok && !fetched {
        // A secret or key file that could not be read was reported where it is written.
        if keys.is_empty() && !written {
            p.add(
                at,
                "no keys: give a secret (HS*), keys (PEM or JWK files) or a jwks_url",
            );
        }
        for (i, a) in algorithms.iter().enumerate() {
            if !keys.is_empty() && !keys.iter().any(|k| jwt_ring::key_can(*a, &k.key)) {
                let what = match a {
                    Algorithm::ES256 => "a P-256 EC key",
                    Algorithm::ES384 => "a P-384 EC key",
                    _ => family_name(a.family()),
                };
                p.add(
                    &format!("{at}.algorithms[{i}]"),
                    format!("{a:?} needs {what}, and none is configured"),
                );
            }
        }
    }
    if algs_ok {
        for k in &keys {
            if !algorithms.iter().any(|a| jwt_ring::key_can(*a, &k.key)) {
                let where_ = if k.from == "secret" {
                    format!("{at}.secret")
                } else {
                    format!("{at}.keys")
                };
                p.add(
                    &where_,
                    format!(
                        "{} is {} but no pinned algorithm uses it",
                        k.from,
                        family_name(k.key.family())
                    ),
                );
            }
        }
    }
    Some(Issuer {
        name: name?,
        issuer: iss?,
        algorithms,
        secret_ref,
        key_files,
        keys,
        jwks_url,
        discovery,
        audience,
        leeway,
        claims,
        introspection: introspection.map(std::sync::Arc::new),
    })
}

fn claims(p: &mut Problems, s: &Section) -> ClaimPaths {
    let c = Section::open(
        p,
        format!("{}.claims", s.path),
        s.raw("claims"),
        &["subject", "client", "tenant", "roles", "scopes"],
    );
    let path = |v: &Value| -> Result<Option<ClaimPath>, String> {
        let s = string(v)?;
        if s.is_empty() || s.split('.').any(str::is_empty) {
            return Err(format!(
                "{s:?}: expected a claim name or a dotted path like realm_access.roles"
            ));
        }
        Ok(Some(ClaimPath::parse(s)))
    };
    ClaimPaths {
        subject: c
            .get(p, "subject", Some(ClaimPath::parse("sub")), path)
            .unwrap_or_else(|| ClaimPath::parse("sub")),
        client: c.get(p, "client", Some(ClaimPath::parse("client_id")), path),
        tenant: c.get(p, "tenant", None, path),
        roles: c.get(p, "roles", Some(ClaimPath::parse("roles")), path),
        scopes: c.get(p, "scopes", Some(ClaimPath::parse("scope")), path),
    }
}
