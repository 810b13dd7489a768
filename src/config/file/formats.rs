//! Scalar formats of the config file: durations, sizes, names, URLs, hosts, origins, header names.
//! Each parser takes the text as written and returns the typed value or the problem as a phrase
//! that completes `path: …`. No YAML here, so these are easy to test on their own.

use std::net::Ipv6Addr;
use std::time::Duration;

use crate::config::{HttpTarget, UpstreamTarget};

/// Durations: a whole number followed by a unit, no space: `250ms`, `10s`, `5m`, `24h`.
/// A bare number is refused: it is ambiguous (seconds? milliseconds?) and a wrong guess is off
/// by a factor of 1000 in a timeout.
pub fn duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration like 250ms, 10s, 5m or 24h, got {s:?}");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("expected a duration with a unit like 250ms, 10s, 5m or 24h, got {s:?} (a bare number is ambiguous)")
    })?;
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    let ms = n
        .checked_mul(ms_per_unit)
        .ok_or_else(|| format!("duration {s:?} is too large"))?;
    Ok(Duration::from_millis(ms))
}

/// The shortest exact spelling of a duration in the file's format.
pub fn render_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (div, unit) in [(3_600_000, "h"), (60_000, "m"), (1_000, "s")] {
        if ms % div == 0 {
            return format!("{}{unit}", ms / div);
        }
    }
    format!("{ms}ms")
}

/// Sizes: a whole number of bytes (`16384`) or a whole number with a binary unit: `B`, `KiB`,
/// `MiB`, `GiB` (powers of 1024). Decimal units (`KB`, `MB`, `k`, `M`, …) are refused with a
/// hint: people write `4MB` meaning either, and a body limit should not depend on which.
pub fn size(s: &str) -> Result<u64, String> {
    let bad = || format!("expected a size like 4MiB or a whole number of bytes, got {s:?}");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "K" | "KB" | "k" | "kB" | "M" | "MB" | "G" | "GB" | "Ki" | "Mi" | "Gi" => {
            return Err(format!(
                "ambiguous size unit in {s:?}: write KiB, MiB or GiB (powers of 1024) or a number of bytes"
            ))
        }
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// The shortest exact spelling of a size in the file's format.
pub fn render_size(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n != 0 && n % (1u64 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Upstream names: `[A-Za-z0-9_.-]{1,64}` (they become metric labels and prefixes).
pub fn upstream_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err(format!("must be 1 to 64 characters, got {}", s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{s:?} contains {c:?}; use only letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

/// Environment variable names: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn env_name(s: &str) -> Result<(), String> {
    let ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not an environment variable name"))
    }
}

pub(super) fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7E).contains(&b))
}

/// A host (no port): an IPv6 literal in brackets, or a DNS name / IPv4 literal.
/// Returns the host without brackets. Case is kept as written.
fn host(s: &str) -> Result<String, String> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("unclosed '[' in host {s:?}"))?;
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(inner.to_string()),
            Err(_) => Err(format!("{inner:?} is not an IPv6 address")),
        };
    }
    if s.is_empty() {
        return Err("missing host".into());
    }
    if s.contains(':') {
        return Err(format!(
            "IPv6 addresses must be written in brackets, e.g. [{s}]"
        ));
    }
    dns_name(&s.to_ascii_lowercase()).map(|()| s.to_string())
}

/// Lower-case DNS name or IPv4 literal: labels of `[a-z0-9-]`, 1..=63 long, no leading or
/// trailing `-`, at most 253 characters in all.
pub fn dns_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("{s:?} is not a valid host name"));
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(format!("{s:?} is not a valid host name"));
        }
    }
    Ok(())
}

fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!("port {s:?} is not a number from 1 to 65535")),
    }
}

/// `builtin:demo` or `http://host[:port][/path][?query]`.
/// Default port 80; the path is required (`/` must be written); IPv6 hosts in brackets; the query is kept;
/// userinfo and fragments are refused (credentials belong in `headers`).
pub fn upstream_url(s: &str) -> Result<UpstreamTarget, String> {
    if let Some(which) = s.strip_prefix("builtin:") {
        return match which {
            "demo" => Ok(UpstreamTarget::BuiltinDemo),
            _ => Err(format!("unknown builtin {which:?} (known: demo)")),
        };
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "expected builtin:demo or http://host[:port]/path, got {s:?}"
        ));
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => {
            return Err(format!(
                "unsupported scheme {scheme:?} (expected http or https)"
            ))
        }
    };
    let default_port = if tls { 443 } else { 80 };
    if !is_visible_ascii(rest) {
        return Err("URL must be visible ASCII without spaces (percent-encode the rest)".into());
    }
    if rest.contains('#') {
        return Err("URL must not have a fragment ('#')".into());
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return Err(
            "URL must not carry user info (user:password@); send credentials with `headers`".into(),
        );
    }
    // Split the port off after the closing bracket of an IPv6 literal, if any.
    let port_sep = match authority.rfind(']') {
        Some(close) => authority[close..].find(':').map(|i| close + i),
        None if authority.starts_with('[') => None,
        None if authority.matches(':').count() > 1 => {
            return Err(format!(
                "IPv6 addresses must be written in brackets, e.g. http://[{authority}]/"
            ))
        }
        None => authority.find(':'),
    };
    let (host_part, port) = match port_sep {
        Some(i) => (&authority[..i], port(&authority[i + 1..])?),
        None => (authority, default_port),
    };
    let host = host(host_part)?;
    // No silent `/`: MCP servers serve one endpoint path (often `/mcp`), and a gateway that
    // forwards to `/` gets 404s that look like the upstream's fault. `/` must be written.
    if !path.starts_with('/') {
        return Err(format!(
            "URL has no path; give the upstream's MCP endpoint path, e.g. http://{authority}/mcp \
             (write http://{authority}/ if the endpoint really is /)"
        ));
    }
    let path = path.to_string();
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let authority = if port == default_port {
        bracketed
    } else {
        format!("{bracketed}:{port}")
    };
    Ok(UpstreamTarget::Http(HttpTarget {
        host,
        port,
        path,
        authority,
        tls,
    }))
}

/// `servers[].path`: starts with `/`, RFC 3986 path characters only, no query or fragment,
/// no empty, `.` or `..` segments (the upstream must see the path the gateway matched),
/// no trailing `/` (both spellings are served), nothing under `/.well-known/` (OAuth metadata).
pub fn server_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!("must start with '/', got {s:?}"));
    }
    if s.contains(['?', '#']) {
        return Err(format!("must not contain '?' or '#', got {s:?}"));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "/-._~!$&'()*+,;=:@%".contains(c)))
    {
        return Err(format!(
            "{s:?} contains {c:?}, which is not allowed in a path"
        ));
    }
    if s == "/" {
        return Ok(());
    }
    if s.ends_with('/') {
        return Err(format!(
            "write it without the trailing '/' ({:?}); both spellings are served",
            s.trim_end_matches('/')
        ));
    }
    if s[1..]
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!("{s:?} has an empty, '.' or '..' segment"));
    }
    if s == "/.well-known" || s.starts_with("/.well-known/") {
        return Err("paths under /.well-known/ are reserved (OAuth metadata)".into());
    }
    Ok(())
}

/// `listen.allowed_hosts` entries: `*` (any host), a lower-case host name or IPv4 literal,
/// `[v6]`, or `*.suffix`. No port: hosts are compared without it.
pub fn host_pattern(s: &str) -> Result<(), String> {
    if s == "*" {
        return Ok(());
    }
    if s != s.to_ascii_lowercase() {
        return Err(format!(
            "must be lower-case: write {:?}",
            s.to_ascii_lowercase()
        ));
    }
    if s.starts_with('[') {
        return match s.strip_suffix(']').map(|v| v[1..].parse::<Ipv6Addr>()) {
            Some(Ok(_)) => Ok(()),
            _ => Err(format!(
                "{s:?} is not a bracketed IPv6 address (and hosts are compared without port)"
            )),
        };
    }
    let name = s.strip_prefix("*.").unwrap_or(s);
    if name.contains(':') {
        return Err(format!(
            "{s:?} has a port; hosts are compared without their port"
        ));
    }
    if name.contains('*') {
        return Err(format!(
            "{s:?}: a wildcard is only allowed as a leading '*.'"
        ));
    }
    dns_name(name)
}

/// `listen.allowed_origins` entries: `*`, or lower-case `scheme://host[:port]` with no path.
pub fn origin(s: &str) -> Result<(), String> {
    if s == "*" {
        return Ok(());
    }
    if s != s.to_ascii_lowercase() {
        return Err(format!(
            "must be lower-case: write {:?}",
            s.to_ascii_lowercase()
        ));
    }
    let Some((scheme, authority)) = s.split_once("://") else {
        return Err(format!("expected scheme://host[:port] or *, got {s:?}"));
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !scheme_ok {
        return Err(format!("{scheme:?} is not a URL scheme"));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "an origin has no path, query or fragment: write {:?}",
            format!(
                "{scheme}://{}",
                authority.split(['/', '?', '#']).next().unwrap_or("")
            )
        ));
    }
    if authority.contains('@') {
        return Err("an origin has no user info".into());
    }
    let (h, p) = match authority.rfind(']') {
        Some(close) => match authority[close..].find(':') {
            Some(i) => (&authority[..close + i], Some(&authority[close + i + 1..])),
            None => (authority, None),
        },
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if let Some(p) = p {
        port(p)?;
    }
    host(h).map(|_| ())
}

/// Header names sent to upstreams: an HTTP token, stored lower-case. Headers the gateway owns
/// (framing, connection management, MCP session and version) cannot be set.
pub fn header_name(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    if lower.is_empty()
        || !lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!("{s:?} is not a valid header name"));
    }
    const OWNED: [&str; 12] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "mcp-session-id",
        "mcp-protocol-version",
    ];
    if OWNED.contains(&lower.as_str()) {
        return Err(format!(
            "{lower:?} is set by the gateway and cannot be configured"
        ));
    }
    Ok(lower)
}

/// Header values: visible ASCII, spaces and tabs inside; no control characters.
pub fn header_value(s: &str) -> Result<(), String> {
    let ok = s.bytes().all(|b| b == b'\t' || (0x20..=0x7E).contains(&b))
        && !s.starts_with([' ', '\t'])
        && !s.ends_with([' ', '\t']);
    if ok {
        Ok(())
    } else {
        // The value may be a credential: do not echo it.
        Err(
            "header value must be visible ASCII (spaces inside only), without control characters"
                .into(),
        )
    }
}

/// An upstream header value as written in the file.
#[derive(Debug, PartialEq, Eq)]
pub enum WrittenHeader {
    /// The value, with `$${` unescaped to `${` (not yet checked as a header value).
    Literal(String),
    /// Exactly `${env:NAME}`.
    Env(String),
    /// Exactly `${file:PATH}`.
    File(String),
}

/// Reads a header value's reference syntax: the whole value `${env:NAME}` or `${file:PATH}`
/// is a reference, `$${` is a literal `${`, and any other `${` is refused (it would otherwise be
/// sent as written, which is never what `${MY_API_KEY}` meant). Errors never echo the value
/// beyond a variable name.
pub fn header_reference(s: &str) -> Result<WrittenHeader, String> {
    if let Some(inner) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        if let Some(name) = inner.strip_prefix("env:") {
            env_name(name).map_err(|e| format!("in ${{env:NAME}}: {e}"))?;
            return Ok(WrittenHeader::Env(name.to_string()));
        }
        if let Some(path) = inner.strip_prefix("file:") {
            if path.is_empty() {
                return Err("${file:} needs a path, e.g. ${file:/run/secrets/api-key}".into());
            }
            return Ok(WrittenHeader::File(path.to_string()));
        }
        if env_name(inner).is_ok() {
            return Err(format!(
                "${{{inner}}} is not expanded; write ${{env:{inner}}} to read the environment \
                 variable {inner} (or $${{{inner}}} to send the text ${{{inner}}} as it is)"
            ));
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if i == 0 || rest.as_bytes()[i - 1] != b'$' {
            return Err(
                "\"${\" is only allowed as the whole value ${env:NAME} (an environment variable) \
                 or ${file:/path} (a file); write $${ for a literal ${"
                    .into(),
            );
        }
        out.push_str(&rest[..i - 1]);
        out.push_str("${");
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    Ok(WrittenHeader::Literal(out))
}

/// `session.key`: 64 hex characters. The value is never echoed in errors.
pub fn hex_key(s: &str) -> Result<[u8; 32], String> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return Err(format!(
            "expected 64 hex characters (32 bytes, e.g. from `openssl rand -hex 32`), got {} characters",
            b.len()
        ));
    }
    let mut key = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = hex_digit(pair[0]);
        let lo = hex_digit(pair[1]);
        match (hi, lo) {
            (Some(h), Some(l)) => key[i] = (h << 4) | l,
            _ => {
                return Err("expected 64 hex characters (0-9, a-f); found another character".into())
            }
        }
    }
    Ok(key)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Levenshtein distance, for "did you mean" hints on unknown keys.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
