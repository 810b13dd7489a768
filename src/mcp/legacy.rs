//! The legacy HTTP+SSE transport (2024-11-05) toward upstreams, as data: where the upstream's
//! `endpoint` event points (resolved, same origin only), the binding a session token carries
//! for such an upstream, and the tags that replace ids and progress tokens sent to it.
//! No I/O; `proxy::legacy` does the talking.

/// A tag: which worker's mailbox (slot, and the slot's nonce at the time) a message sent to a
/// legacy upstream answers to. Sent as the JSON string `"tgl.W.S.N"` in place of the client's
/// request id (and progress token); the upstream echoes it, the holder routes by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub worker: u16,
    pub slot: u32,
    pub nonce: u32,
}

const TAG_PREFIX: &[u8] = b"\"tgl.";

impl Tag {
    /// Appends the tag as a JSON string token (quotes included).
    pub fn write(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(out, "\"tgl.{}.{}.{}\"", self.worker, self.slot, self.nonce);
    }

    /// The tag as a JSON string token.
    pub fn to_token(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        self.write(&mut v);
        v
    }

    /// Reads a raw JSON token (`"tgl.1.2.3"`, quotes included) the gateway wrote. Anything
    /// else (another spelling, escapes, extra text) is `None`: not ours.
    pub fn parse(raw: &[u8]) -> Option<Tag> {
        let inner = raw.strip_prefix(TAG_PREFIX)?.strip_suffix(b"\"")?;
        let mut parts = inner.split(|b| *b == b'.');
        let worker = number(parts.next()?)?;
        let slot = number(parts.next()?)?;
        let nonce = number(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Tag {
            worker: u16::try_from(worker).ok()?,
            slot: u32::try_from(slot).ok()?,
            nonce: u32::try_from(nonce).ok()?,
        })
    }
}

/// A decimal without sign or leading zeros (one spelling per value), at most 10 digits.
fn number(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 10 || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// What a sealed session token carries for a legacy upstream, in the upstream session's id
/// field (`UpstreamSession::session_id`; a legacy upstream has no `Mcp-Session-Id`): the worker
/// holding the upstream stream, its stream slot and the slot's nonce, and the endpoint
/// (path and query on the upstream's origin) the upstream announced.
/// Written `L1.<holder>.<slot>.<nonce>.<endpoint>`: visible ASCII, at most 255 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub holder: u16,
    pub slot: u32,
    pub nonce: u32,
    pub endpoint: String,
}

/// Longest binding a token carries (the upstream session id field's limit).
pub const MAX_BINDING_LEN: usize = 255;

impl Binding {
    /// The carried form; `None` when the endpoint makes it longer than `MAX_BINDING_LEN`.
    pub fn encode(&self) -> Option<String> {
        let s = format!(
            "L1.{}.{}.{}.{}",
            self.holder, self.slot, self.nonce, self.endpoint
        );
        (s.len() <= MAX_BINDING_LEN && is_endpoint(self.endpoint.as_bytes())).then_some(s)
    }

    pub fn parse(s: &str) -> Option<Binding> {
        let rest = s.strip_prefix("L1.")?;
        let mut parts = rest.splitn(4, '.');
        let holder = u16::try_from(number(parts.next()?.as_bytes())?).ok()?;
        let slot = u32::try_from(number(parts.next()?.as_bytes())?).ok()?;
        let nonce = u32::try_from(number(parts.next()?.as_bytes())?).ok()?;
        let endpoint = parts.next()?;
        if !is_endpoint(endpoint.as_bytes()) {
            return None;
        }
        Some(Binding {
            holder,
            slot,
            nonce,
            endpoint: endpoint.to_string(),
        })
    }
}

/// A path and query the gateway will write into a request line: starts with `/`, visible
/// ASCII only (no space, no CR/LF), no fragment.
fn is_endpoint(b: &[u8]) -> bool {
    b.first() == Some(&b'/')
        && b.len() <= MAX_BINDING_LEN
        && b.iter().all(|c| (0x21..=0x7E).contains(c) && *c != b'#')
}

/// The origin and path of the upstream's SSE URL, what an `endpoint` event is resolved against.
#[derive(Clone, Debug)]
pub struct Origin<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Host as configured (lower-case compared), without brackets.
    pub host: &'a str,
    pub port: u16,
    /// The SSE URL's path (and query).
    pub path: &'a str,
}

/// Resolves an `endpoint` event's data (RFC 3986 reference) against the SSE URL: an absolute
/// URL must have the same origin (scheme, host, port; anything else could make the gateway
/// POST where the upstream, not its operator, chose: SSRF); `//host/…` likewise; an absolute
/// path is taken as is; a relative one is resolved against the SSE URL's directory. Returns the
/// path and query to POST to (a fragment is dropped).
pub fn resolve_endpoint(origin: &Origin<'_>, data: &[u8]) -> Result<String, String> {
    let data = std::str::from_utf8(data)
        .map_err(|_| "endpoint is not UTF-8".to_string())?
        .trim();
    let data = data.split('#').next().unwrap_or("");
    if data.is_empty() {
        return Err("endpoint event is empty".into());
    }
    let lower = data.to_ascii_lowercase();
    let (authority_and_path, scheme) = if let Some(rest) = lower.strip_prefix("http://") {
        (&data[data.len() - rest.len()..], Some("http"))
    } else if let Some(rest) = lower.strip_prefix("https://") {
        (&data[data.len() - rest.len()..], Some("https"))
    } else if let Some(rest) = data.strip_prefix("//") {
        (rest, None)
    } else if lower
        .split(['/', '?'])
        .next()
        .is_some_and(|s| s.contains(':'))
    {
        return Err(format!("endpoint {data:?} has a scheme other than http(s)"));
    } else {
        let path = if data.starts_with('/') {
            data.to_string()
        } else {
            let base = origin.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            let dir = if dir.is_empty() { "/" } else { dir };
            format!("{dir}{data}")
        };
        return checked(path);
    };
    if scheme.is_some_and(|s| s != origin.scheme) {
        return Err(format!(
            "endpoint {data:?} is on another origin than the SSE URL (scheme)"
        ));
    }
    let cut = authority_and_path
        .find(['/', '?'])
        .unwrap_or(authority_and_path.len());
    let (authority, rest) = authority_and_path.split_at(cut);
    if authority.contains('@') {
        return Err(format!("endpoint {data:?} carries userinfo"));
    }
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| format!("endpoint {data:?} has an unreadable authority"))?;
    let default_port = if origin.scheme == "https" { 443 } else { 80 };
    let port = port.unwrap_or(default_port);
    if !host.eq_ignore_ascii_case(origin.host) || port != origin.port {
        return Err(format!(
            "endpoint {data:?} is on another origin than the SSE URL"
        ));
    }
    let path = if rest.starts_with('?') || rest.is_empty() {
        format!("/{rest}")
    } else {
        rest.to_string()
    };
    checked(path)
}

fn split_host_port(a: &str) -> Option<(&str, Option<u16>)> {
    if let Some(v6) = a.strip_prefix('[') {
        let end = v6.find(']')?;
        let host = &v6[..end];
        return match &v6[end + 1..] {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h, Some(p.parse().ok()?))),
        None if !a.is_empty() => Some((a, None)),
        _ => None,
    }
}

fn checked(path: String) -> Result<String, String> {
    if is_endpoint(path.as_bytes()) {
        Ok(path)
    } else {
        Err(format!(
            "endpoint {path:?} is not a path the gateway can request (visible ASCII, ≤ 255 bytes)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin<'static> {
        Origin {
            scheme: "http",
            host: "127.0.0.1",
            port: 3001,
            path: "/mcp/sse",
        }
    }

    #[test]
    fn tags_round_trip_and_refuse_other_spellings() {
        let t = Tag {
            worker: 3,
            slot: 70000,
            nonce: 4_000_000_000,
        };
        assert_eq!(Tag::parse(&t.to_token()), Some(t));
        for bad in [
            &b"\"tgl.1.2\""[..],
            b"\"tgl.1.2.3.4\"",
            b"\"tgl.01.2.3\"",
            b"\"tgl.-1.2.3\"",
            b"\"tgl.70000.2.3\"",
            b"\"tgl.1.2.3",
            b"tgl.1.2.3",
            b"\"tg\\u006c.1.2.3\"",
            b"7",
        ] {
            assert_eq!(Tag::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bindings_round_trip_and_stay_carriable() {
        let b = Binding {
            holder: 1,
            slot: 9,
            nonce: 77,
            endpoint: "/messages/?session_id=ab.cd".into(),
        };
        let s = b.encode().unwrap();
        assert_eq!(Binding::parse(&s), Some(b.clone()));
        let long = Binding {
            endpoint: format!("/{}", "a".repeat(250)),
            ..b
        };
        assert_eq!(long.encode(), None);
        assert_eq!(Binding::parse("L1.1.2.3.no-slash"), None);
        assert_eq!(Binding::parse("L1.1.2.3./with space"), None);
        assert_eq!(Binding::parse("L2.1.2.3./x"), None);
        assert_eq!(Binding::parse("some-session-id"), None);
    }

    #[test]
    fn endpoints_resolve_against_the_sse_url() {
        let o = origin();
        let ok = |d: &str| resolve_endpoint(&o, d.as_bytes()).unwrap();
        assert_eq!(ok("/messages/?session_id=abc"), "/messages/?session_id=abc");
        assert_eq!(ok("message?sessionId=1"), "/mcp/message?sessionId=1");
        assert_eq!(ok("http://127.0.0.1:3001/m?x=1#frag"), "/m?x=1");
        assert_eq!(ok("HTTP://127.0.0.1:3001?x=1"), "/?x=1");
        assert_eq!(ok("//127.0.0.1:3001/m"), "/m");
    }

    #[test]
    fn endpoints_on_another_origin_are_refused() {
        let o = origin();
        for bad in [
            "http://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:3002/m",
            "https://127.0.0.1:3001/m",
            "http://127.0.0.1/m",
            "//evil.example/m",
            "http://user@127.0.0.1:3001/m",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "",
            "/with space",
            "/line\r\nX-Injected: 1",
        ] {
            assert!(resolve_endpoint(&o, bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
