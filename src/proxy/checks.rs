//! Host and Origin validation (MCP transport security: DNS-rebinding protection).
//! Pure functions over header bytes and the configured rules.

use crate::config::{HostRule, Listen, OriginRule};
use crate::error::Kind;

/// Admits a request by its Host and Origin, or says which rule refused it (with the value).
pub fn admit(
    listen: &Listen,
    host: Option<&[u8]>,
    origin: Option<&[u8]>,
) -> Result<(), (Kind, String)> {
    let quoted = |v: Option<&[u8]>| {
        String::from_utf8_lossy(v.unwrap_or(b""))
            .chars()
            .take(100)
            .collect::<String>()
    };
    if !host_allowed(&listen.allowed_hosts, host) {
        return Err((
            Kind::HostNotAllowed,
            format!(
                "Host \"{}\" is not allowed (listen.allowed_hosts)",
                quoted(host)
            ),
        ));
    }
    if !origin_allowed(&listen.allowed_origins, origin, host) {
        return Err((
            Kind::OriginNotAllowed,
            format!(
                "Origin \"{}\" is not allowed (listen.allowed_origins)",
                quoted(origin)
            ),
        ));
    }
    Ok(())
}

const LOOPBACK_NAMES: [&[u8]; 3] = [b"localhost", b"127.0.0.1", b"[::1]"];

/// Splits `host[:port]` (IPv6 in brackets) and returns the host part.
fn host_part(authority: &[u8]) -> &[u8] {
    if authority.first() == Some(&b'[') {
        return match memchr::memchr(b']', authority) {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match memchr::memrchr(b':', authority) {
        Some(colon) => &authority[..colon],
        None => authority,
    }
}

fn is_loopback_host(host: &[u8]) -> bool {
    LOOPBACK_NAMES.iter().any(|n| host.eq_ignore_ascii_case(n))
}

fn matches_list(host: &[u8], list: &[String]) -> bool {
    list.iter().any(|pat| {
        if let Some(suffix) = pat.strip_prefix("*.") {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
                && host[host.len() - suffix.len() - 1] == b'.'
        } else {
            host.eq_ignore_ascii_case(pat.as_bytes())
        }
    })
}

/// Whether a `Host` header value is allowed. A missing Host only reaches here for HTTP/1.0.
pub fn host_allowed(rule: &HostRule, host: Option<&[u8]>) -> bool {
    let Some(host) = host else {
        return !matches!(rule, HostRule::List(_));
    };
    let h = host_part(host.trim_ascii());
    match rule {
        HostRule::Any => true,
        HostRule::Loopback => is_loopback_host(h),
        HostRule::List(list) => matches_list(h, list),
    }
}

/// Whether an `Origin` header value is allowed; requests without Origin (non-browser clients) pass.
pub fn origin_allowed(rule: &OriginRule, origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.trim_ascii();
    if rule
        .list
        .iter()
        .any(|o| o == "*" || origin.eq_ignore_ascii_case(o.as_bytes()))
    {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"))
    else {
        return false; // "null", file:, chrome-extension:, garbage
    };
    if rest.contains(&b'/') {
        return false;
    }
    if rule.loopback && is_loopback_host(host_part(rest)) {
        return true;
    }
    // Same origin: the page was served by this very authority.
    host.is_some_and(|h| h.trim_ascii().eq_ignore_ascii_case(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        let r = HostRule::Loopback;
        for ok in ["localhost:8080", "127.0.0.1", "[::1]:9", "LOCALHOST"] {
            assert!(host_allowed(&r, Some(ok.as_bytes())), "{ok}");
        }
        for bad in [
            "evil.example.com",
            "localhost.evil.com:80",
            "127.0.0.2",
            "[::2]:1",
        ] {
            assert!(!host_allowed(&r, Some(bad.as_bytes())), "{bad}");
        }
    }

    #[test]
    fn listed_hosts_and_wildcards() {
        let r = HostRule::List(vec!["mcp.example.com".into(), "*.corp.example".into()]);
        assert!(host_allowed(&r, Some(b"mcp.example.com:443")));
        assert!(host_allowed(&r, Some(b"a.corp.example")));
        assert!(!host_allowed(&r, Some(b"corp.example")));
        assert!(!host_allowed(&r, Some(b"xcorp.example")));
        assert!(!host_allowed(&r, None));
        assert!(host_allowed(&HostRule::Any, Some(b"anything")));
    }

    #[test]
    fn origins() {
        let r = OriginRule {
            loopback: true,
            list: vec!["https://app.example.com".into()],
        };
        assert!(origin_allowed(&r, None, Some(b"localhost")));
        assert!(origin_allowed(
            &r,
            Some(b"http://localhost:6274"),
            Some(b"localhost:8080")
        ));
        assert!(origin_allowed(
            &r,
            Some(b"https://app.example.com"),
            Some(b"gw")
        ));
        assert!(origin_allowed(
            &r,
            Some(b"https://gw.example:8443"),
            Some(b"gw.example:8443")
        ));
        assert!(!origin_allowed(
            &r,
            Some(b"https://evil.example.com"),
            Some(b"localhost:8080")
        ));
        assert!(!origin_allowed(&r, Some(b"null"), Some(b"localhost")));
        let strict = OriginRule {
            loopback: false,
            list: vec![],
        };
        assert!(!origin_allowed(
            &strict,
            Some(b"http://localhost:1"),
            Some(b"gw:1")
        ));
    }
}
