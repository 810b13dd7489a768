//! Host and Origin validation (MCP transport security: DNS-rebinding protection).
//! Pure functions over header bytes and the configured rules.

use crate::config::{HostRule, Listen, OriginRule};
use crate::error::Kind;
use crate::http::authority;
use crate::http::RequestHead;

/// Admits a request by its authority (`Host`, already validated by the parser) and `Origin`, or
/// says which rule refused it (with the value).
pub fn admit(listen: &Listen, head: &RequestHead, buf: &[u8]) -> Result<(), (Kind, String)> {
    let field = |r: &Option<std::ops::Range<usize>>| r.clone().map(|r| &buf[r]);
    let quoted = |v: Option<&[u8]>| {
        String::from_utf8_lossy(v.unwrap_or(b""))
            .chars()
            .take(100)
            .collect::<String>()
    };
    let authority = field(&head.authority);
    if !host_allowed(&listen.allowed_hosts, field(&head.authority_host)) {
        return Err((
            Kind::HostNotAllowed,
            format!(
                "Host \"{}\" is not allowed (listen.allowed_hosts)",
                quoted(authority)
            ),
        ));
    }
    let origin = field(&head.origin);
    match origin_allowed(&listen.allowed_origins, origin, authority) {
        OriginVerdict::Allowed => Ok(()),
        // 403 as for a foreign origin: the MCP transport spec asks for 403 on an invalid Origin.
        OriginVerdict::Invalid => Err((
            Kind::OriginNotAllowed,
            format!(
                "Origin \"{}\" is not a valid origin (scheme://host[:port] or null)",
                quoted(origin)
            ),
        )),
        OriginVerdict::NotAllowed => Err((
            Kind::OriginNotAllowed,
            format!(
                "Origin \"{}\" is not allowed (listen.allowed_origins)",
                quoted(origin)
            ),
        )),
    }
}

const LOOPBACK_NAMES: [&[u8]; 3] = [b"localhost", b"127.0.0.1", b"[::1]"];

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

/// Whether a request's host is allowed: `host` is the host part of a validated authority
/// (`authority::parse`). None only reaches here for HTTP/1.0 without Host.
pub fn host_allowed(rule: &HostRule, host: Option<&[u8]>) -> bool {
    let Some(h) = host else {
        return !matches!(rule, HostRule::List(_));
    };
    match rule {
        HostRule::Any => true,
        HostRule::Loopback => is_loopback_host(h),
        HostRule::List(list) => matches_list(h, list),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginVerdict {
    Allowed,
    NotAllowed,
    /// Not `null` or `scheme://host[:port]`: refused whatever the rule (even `*`).
    Invalid,
}

/// Whether an `Origin` value is allowed; requests without Origin (non-browser clients) pass.
/// `authority` is the request's validated `host[:port]`, for the same-origin rule.
pub fn origin_allowed(
    rule: &OriginRule,
    origin: Option<&[u8]>,
    authority: Option<&[u8]>,
) -> OriginVerdict {
    let Some(origin) = origin else {
        return OriginVerdict::Allowed;
    };
    let Some(parsed) = authority::origin(origin) else {
        return OriginVerdict::Invalid;
    };
    if rule
        .list
        .iter()
        .any(|o| o == "*" || origin.eq_ignore_ascii_case(o.as_bytes()))
    {
        return OriginVerdict::Allowed;
    }
    // "null" (sandboxed frames, file:) is only allowed by "*".
    let Some((scheme, origin_authority, host)) = parsed.parts(origin) else {
        return OriginVerdict::NotAllowed;
    };
    let web = scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https");
    let allowed = web
        && ((rule.loopback && is_loopback_host(host))
            // Same origin: the page was served by this very authority.
            || authority.is_some_and(|a| a.eq_ignore_ascii_case(origin_authority)));
    if allowed {
        OriginVerdict::Allowed
    } else {
        OriginVerdict::NotAllowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OriginVerdict::*;

    /// `host_allowed` on the host part of a Host value the parser accepted.
    fn host_ok(rule: &HostRule, authority: &str) -> bool {
        let a = authority::parse(authority.as_bytes()).expect("a valid authority");
        host_allowed(rule, Some(a.host(authority.as_bytes())))
    }

    #[test]
    fn loopback_hosts() {
        let r = HostRule::Loopback;
        for ok in ["localhost:8080", "127.0.0.1", "[::1]:9", "LOCALHOST"] {
            assert!(host_ok(&r, ok), "{ok}");
        }
        for bad in [
            "evil.example.com",
            "localhost.evil.com:80",
            "127.0.0.2",
            "[::2]:1",
            "[0:0::1]",
        ] {
            assert!(!host_ok(&r, bad), "{bad}");
        }
        assert!(host_allowed(&r, None), "HTTP/1.0 without Host");
    }

    #[test]
    fn listed_hosts_and_wildcards() {
        let r = HostRule::List(vec!["mcp.example.com".into(), "*.corp.example".into()]);
        assert!(host_ok(&r, "mcp.example.com:443"));
        assert!(host_ok(&r, "a.corp.example"));
        assert!(!host_ok(&r, "corp.example"));
        assert!(!host_ok(&r, "xcorp.example"));
        assert!(!host_allowed(&r, None));
        assert!(host_ok(&HostRule::Any, "anything"));
    }

    fn verdict(rule: &OriginRule, origin: &str, authority: &str) -> OriginVerdict {
        origin_allowed(rule, Some(origin.as_bytes()), Some(authority.as_bytes()))
    }

    #[test]
    fn origins() {
        let r = OriginRule {
            loopback: true,
            list: vec!["https://app.example.com".into()],
        };
        assert_eq!(origin_allowed(&r, None, Some(b"localhost")), Allowed);
        assert_eq!(
            verdict(&r, "http://localhost:6274", "localhost:8080"),
            Allowed
        );
        assert_eq!(verdict(&r, "https://app.example.com", "gw"), Allowed);
        assert_eq!(
            verdict(&r, "https://gw.example:8443", "gw.example:8443"),
            Allowed
        );
        assert_eq!(
            verdict(&r, "https://evil.example.com", "localhost:8080"),
            NotAllowed
        );
        assert_eq!(verdict(&r, "null", "localhost"), NotAllowed);
        assert_eq!(verdict(&r, "vscode-webview://abc", "abc"), NotAllowed);
        let strict = OriginRule {
            loopback: false,
            list: vec![],
        };
        assert_eq!(verdict(&strict, "http://localhost:1", "gw:1"), NotAllowed);
    }

    #[test]
    fn invalid_origins_are_refused_even_by_a_wildcard() {
        let any = OriginRule {
            loopback: true,
            list: vec!["*".into()],
        };
        assert_eq!(verdict(&any, "null", "localhost"), Allowed);
        assert_eq!(verdict(&any, "https://x.example", "localhost"), Allowed);
        for bad in [
            "http://[::1]evil.com",
            "http://[::1].evil.com",
            "http://[::1]@evil.com",
            "http://localhost:abc",
            "http://localhost:18500x",
            "http://localhost/",
            "garbage",
            "",
        ] {
            assert_eq!(verdict(&any, bad, "localhost"), Invalid, "{bad:?}");
        }
    }
}
