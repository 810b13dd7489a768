//! Strict `host [ ":" port ]` (RFC 3986 §3.2.2–3.2.3), as the `Host` field (RFC 9110 §7.2), the
//! authority of an absolute-form request target (RFC 9112 §3.2.2) and of an `Origin` (RFC 6454)
//! carry it. No userinfo (RFC 9110 §4.2.4 asks recipients to treat it as an error), no zone id
//! (RFC 6874), no empty host (RFC 9110 §4.2.1: an `http` URI with an empty host is invalid), and
//! a port is 1 to 5 digits up to 65535 (RFC 3986 allows an empty port; no client sends one).
//!
//! One pass over the bytes, no allocation: it runs on every request. Whatever passes splits one
//! way only, so later checks (`allowed_hosts`, same-origin) compare what was validated here.

use std::net::Ipv6Addr;

/// A validated authority: `host` is `..host_end` (brackets included for an IP-literal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authority {
    pub host_end: usize,
    pub port: Option<u16>,
}

impl Authority {
    /// The host part of the bytes this was parsed from.
    pub fn host(self, authority: &[u8]) -> &[u8] {
        &authority[..self.host_end]
    }
}

/// Parses `host [ ":" port ]`; `None` if it is not exactly that.
pub fn parse(a: &[u8]) -> Option<Authority> {
    let host_end = match a.first()? {
        b'[' => {
            let close = memchr::memchr(b']', a)?;
            if !ip_literal(&a[1..close]) {
                return None;
            }
            close + 1
        }
        _ => {
            let end = memchr::memchr(b':', a).unwrap_or(a.len());
            if end == 0 || !reg_name(&a[..end]) {
                return None;
            }
            end
        }
    };
    let port = match &a[host_end..] {
        [] => None,
        [b':', digits @ ..] => Some(port(digits)?),
        _ => return None, // "[::1]evil.com", "[::1]@evil.com", …
    };
    Some(Authority { host_end, port })
}

/// A validated `Origin` field value (RFC 6454 §7 as browsers send it, Fetch §3.1: `null` or
/// one serialized origin; the space-separated list RFC 6454 also allows is refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Null,
    /// `scheme "://" host [ ":" port ]`: the scheme is `..scheme_len`, the authority starts
    /// at `scheme_len + 3` and its host ends at `authority.host_end` after that.
    Tuple {
        scheme_len: usize,
        authority: Authority,
    },
}

impl Origin {
    /// `scheme`, `authority` and `host` of a `Tuple` origin, as slices of `v`.
    pub fn parts(self, v: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
        match self {
            Origin::Null => None,
            Origin::Tuple {
                scheme_len,
                authority,
            } => {
                let a = &v[scheme_len + 3..];
                Some((&v[..scheme_len], a, authority.host(a)))
            }
        }
    }
}

/// Parses an `Origin` value; `None` if it is not `null` or `scheme://host[:port]`.
pub fn origin(v: &[u8]) -> Option<Origin> {
    if v == b"null" {
        return Some(Origin::Null);
    }
    let colon = memchr::memchr(b':', v)?;
    let rest = v[colon..].strip_prefix(b"://")?;
    if !is_scheme(&v[..colon]) {
        return None;
    }
    Some(Origin::Tuple {
        scheme_len: colon,
        authority: parse(rest)?,
    })
}

/// `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` (RFC 3986 §3.1).
pub fn is_scheme(s: &[u8]) -> bool {
    s.first().is_some_and(u8::is_ascii_alphabetic)
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `port = 1*5DIGIT`, at most 65535.
fn port(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    let mut n: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(d - b'0');
    }
    u16::try_from(n).ok()
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// `unreserved / sub-delims`, as a table: the reg-name loop runs on every request's Host.
const REG_NAME_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    t
};

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`; IPv4address is a subset of it.
fn reg_name(s: &[u8]) -> bool {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if REG_NAME_CHAR[usize::from(b)] {
            i += 1;
        } else if b == b'%' {
            let hex = |j: usize| s.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else {
            return false;
        }
    }
    true
}

/// Inside the brackets: `IPv6address / IPvFuture`.
fn ip_literal(s: &[u8]) -> bool {
    match s.first() {
        Some(b'v' | b'V') => ip_future(&s[1..]),
        // Ipv6Addr's parser reads RFC 4291 text form (with embedded IPv4) and no zone id.
        Some(_) => std::str::from_utf8(s).is_ok_and(|t| t.parse::<Ipv6Addr>().is_ok()),
        None => false,
    }
}

/// After the `v`: `1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`.
fn ip_future(s: &[u8]) -> bool {
    let Some(dot) = memchr::memchr(b'.', s) else {
        return false;
    };
    let (ver, rest) = (&s[..dot], &s[dot + 1..]);
    !ver.is_empty()
        && ver.iter().all(u8::is_ascii_hexdigit)
        && !rest.is_empty()
        && rest
            .iter()
            .all(|&b| unreserved(b) || sub_delim(b) || b == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Option<(&str, Option<u16>)> {
        parse(s.as_bytes()).map(|a| (&s[..a.host_end], a.port))
    }

    #[test]
    fn valid_authorities_split_into_host_and_port() {
        for (s, h, p) in [
            ("localhost", "localhost", None),
            ("localhost:8080", "localhost", Some(8080)),
            ("LOCALHOST:0", "LOCALHOST", Some(0)),
            ("127.0.0.1:65535", "127.0.0.1", Some(65535)),
            ("[::1]", "[::1]", None),
            ("[::1]:9", "[::1]", Some(9)),
            ("[::ffff:127.0.0.1]:80", "[::ffff:127.0.0.1]", Some(80)),
            ("[v1.fe80::a+en1]", "[v1.fe80::a+en1]", None),
            ("mcp.example.com", "mcp.example.com", None),
            ("a-b_c~d.example.", "a-b_c~d.example.", None),
            ("ex%41mple.com:1", "ex%41mple.com", Some(1)),
            ("a!$&'()*+,;=b", "a!$&'()*+,;=b", None),
            ("999.1.1.1", "999.1.1.1", None), // a reg-name (RFC 3986 §3.2.2)
        ] {
            assert_eq!(host(s), Some((h, p)), "{s}");
        }
    }

    #[test]
    fn invalid_authorities_are_refused() {
        for s in [
            "",
            ":80",
            "[::1]evil.com",
            "[::1].evil.com",
            "[::1]@evil.com",
            "[::1]:80x",
            "[::1]:",
            "[::1",
            "[]",
            "[::1%25eth0]",
            "[127.0.0.1]",
            "[::g]",
            "[v1]",
            "[v.x]",
            "[vz.x]",
            "[v1.]",
            "localhost:abc",
            "localhost:18500x",
            "localhost:",
            "localhost:65536",
            "localhost:000080",
            "localhost:-1",
            "localhost:+80",
            "localhost: 80",
            "localhost:80:80",
            "user@localhost",
            "user:pw@localhost:80",
            "local host",
            "localhost\t",
            "a/b",
            "a?b",
            "a#b",
            "a\\b",
            "ex%4mple.com",
            "ex%zzmple.com",
            "example.com%",
            "ex\u{e4}mple.com",
            "[::1]]",
        ] {
            assert_eq!(host(s), None, "{s:?}");
        }
        assert_eq!(parse(b"\xff"), None);
        assert_eq!(parse(b"[\xff]"), None);
    }

    #[test]
    fn the_reg_name_table_is_unreserved_or_sub_delims() {
        for b in 0..=255u8 {
            assert_eq!(
                REG_NAME_CHAR[usize::from(b)],
                unreserved(b) || sub_delim(b),
                "{b}"
            );
        }
    }

    #[test]
    fn origins_are_null_or_one_serialized_origin() {
        assert_eq!(origin(b"null"), Some(Origin::Null));
        for (v, scheme, auth, h) in [
            (
                "http://localhost:6274",
                "http",
                "localhost:6274",
                "localhost",
            ),
            (
                "https://app.example.com",
                "https",
                "app.example.com",
                "app.example.com",
            ),
            ("http://[::1]:80", "http", "[::1]:80", "[::1]"),
            ("vscode-webview://abc", "vscode-webview", "abc", "abc"),
            ("HTTP://LOCALHOST", "HTTP", "LOCALHOST", "LOCALHOST"),
        ] {
            let o = origin(v.as_bytes()).unwrap_or_else(|| panic!("{v}"));
            let (s, a, hh) = o.parts(v.as_bytes()).unwrap();
            assert_eq!(
                (s, a, hh),
                (scheme.as_bytes(), auth.as_bytes(), h.as_bytes())
            );
        }
        for v in [
            "",
            "Null",
            "null ",
            "localhost",
            "http://",
            "http:/localhost",
            "http//localhost",
            "://localhost",
            "1http://localhost",
            "ht_tp://localhost",
            "http://[::1]evil.com",
            "http://[::1].evil.com",
            "http://[::1]@evil.com",
            "http://localhost:abc",
            "http://localhost:18500x",
            "http://user@localhost",
            "http://localhost/",
            "http://localhost/path",
            "http://localhost?q",
            "http://localhost#f",
            "http://a.example http://b.example",
        ] {
            assert_eq!(origin(v.as_bytes()), None, "{v:?}");
        }
    }
}
