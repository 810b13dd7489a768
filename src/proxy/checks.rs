//! Admission of a request head: the head parser, then Host and Origin validation (MCP
//! transport security: DNS-rebinding protection). Pure functions over the head's bytes and the
//! configured rules.

use std::mem::MaybeUninit;

use crate::config::{Config, HostRule, Listen, OriginRule};
use crate::error::{Error, Kind};
use crate::http::head::parse_request_into;
use crate::http::{authority, RequestHead};

/// The gateway's admission of a request head, everything it decides before routing: the head
/// parser (request line and head limits, framing and smuggling shapes, Host and request target
/// syntax), then the request's authority against `listen.allowed_hosts` and its Origin against
/// `listen.allowed_origins`. `read_head` calls `admit_head_into`, this same admission into a
/// head the worker lends; tests/desync_guardian.rs calls this one. `Ok(None)`: more bytes are
/// needed. `scratch` is the parser's header space; `limits.max_headers` of it are used.
///
/// A limit's refusal carries an empty reason, so the rendered message is the one that names
/// the limit's config key.
pub fn admit_head<'b>(
    config: &Config,
    buf: &'b [u8],
    scratch: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<RequestHead>, Error> {
    let mut head = RequestHead::default();
    Ok(admit_head_into(config, buf, scratch, &mut head)?.then_some(head))
}

/// `admit_head`, the head parsed into `slot` (`Ok(true)`; `Ok(false)`: more bytes are needed,
/// `slot` untouched; after an error it holds part of a head, to be overwritten).
pub fn admit_head_into<'b>(
    config: &Config,
    buf: &'b [u8],
    scratch: &mut [MaybeUninit<httparse::Header<'b>>],
    slot: &mut RequestHead,
) -> Result<bool, Error> {
    let limits = &config.limits;
    let max_headers = limits.max_headers.min(scratch.len());
    match parse_request_into(
        buf,
        &mut scratch[..max_headers],
        limits.max_header_bytes,
        limits.max_request_line_bytes,
        slot,
    ) {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(e) if e.kind.is_limit() => return Err(Error::new(e.kind, "")),
        Err(e) => return Err(Error::new(e.kind, e.reason)),
    }
    admit(&config.listen, slot, buf).map_err(|(kind, why)| Error::new(kind, why))?;
    Ok(true)
}

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
    fn admission_is_the_parser_then_host_and_origin() {
        let config = crate::config::load_str("limits: {max_request_line_bytes: 64}").unwrap();
        let admit = |s: &str| {
            let mut scratch = [const { MaybeUninit::uninit() }; 8];
            admit_head(&config, s.as_bytes(), &mut scratch).map(|h| h.is_some())
        };
        let kind = |s: &str| admit(s).unwrap_err().kind;
        assert!(admit("GET /mcp HTTP/1.1\r\nHost: localhost:1\r\n\r\n").unwrap());
        assert!(!admit("GET /mcp HTTP/1.1\r\nHost: local").unwrap());
        assert_eq!(
            kind("GET /mcp HTTP/1.1\r\nHost: [::1]evil\r\n\r\n"),
            Kind::MalformedHttp
        );
        assert_eq!(
            kind("GET /mcp HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
            Kind::HostNotAllowed
        );
        assert_eq!(
            kind("GET http://evil.example/mcp HTTP/1.1\r\nHost: localhost\r\n\r\n"),
            Kind::HostNotAllowed
        );
        let foreign = "GET /mcp HTTP/1.1\r\nHost: localhost\r\nOrigin: http://a.example\r\n\r\n";
        assert_eq!(kind(foreign), Kind::OriginNotAllowed);
        // A limit's refusal leaves the message to the kind (it names the config key).
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(100));
        let e = admit(&long).unwrap_err();
        assert_eq!((e.kind, e.reason.as_str()), (Kind::UriTooLong, ""));
        let mut many = String::from("GET /mcp HTTP/1.1\r\nHost: localhost\r\n");
        many.push_str(&"X: y\r\n".repeat(10));
        assert_eq!(kind(&many), Kind::TooManyHeaders);
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

/// Whether a Content-Type value is `application/json` (parameters such as charset allowed).
pub fn is_json_content_type(v: &[u8]) -> bool {
    let essence = v.split(|b| *b == b';').next().unwrap_or(b"").trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
}

/// Whether an `Accept` value allows both replies a POST may get: `application/json` and
/// `text/event-stream` (the transport requires clients to list both). Wildcards count; a media
/// range with `q=0` does not.
pub fn accepts_json_and_sse(v: &[u8]) -> bool {
    // What the official SDKs send, as they send it: no parse.
    if v == b"application/json, text/event-stream" {
        return true;
    }
    let (mut json, mut sse) = (false, false);
    for range in v.split(|b| *b == b',') {
        let mut parts = range.split(|b| *b == b';');
        let media = parts.next().unwrap_or(b"").trim_ascii();
        let refused = parts.any(|p| {
            let p = p.trim_ascii();
            p.len() >= 2
                && p[..2].eq_ignore_ascii_case(b"q=")
                && p[2..].iter().all(|b| *b == b'0' || *b == b'.')
        });
        if refused {
            continue;
        }
        let is = |m: &[u8]| media.eq_ignore_ascii_case(m);
        if is(b"*/*") {
            json = true;
            sse = true;
        } else if is(b"application/json") || is(b"application/*") {
            json = true;
        } else if is(b"text/event-stream") || is(b"text/*") {
            sse = true;
        }
    }
    json && sse
}

#[cfg(test)]
mod accept_tests {
    use super::accepts_json_and_sse as ok;

    #[test]
    fn both_reply_types_must_be_acceptable() {
        assert!(ok(b"application/json, text/event-stream"));
        assert!(ok(b"text/event-stream;q=0.9, Application/JSON"));
        assert!(ok(b"*/*"));
        assert!(ok(b"application/*, text/*"));
        assert!(!ok(b"application/json"));
        assert!(!ok(b"text/event-stream"));
        assert!(!ok(b"application/json, text/event-stream;q=0"));
        assert!(!ok(b"*/*;q=0.0"));
        assert!(!ok(b""));
    }
}
