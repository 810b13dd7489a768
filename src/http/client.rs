//! A small HTTP/1.1 client for OAuth2 token endpoints (RFC 6749 §4.4, RFC 8693), introspection
//! endpoints (RFC 7662) and metadata documents (RFC 8414) on the worker's runtime: one POST of a form with HTTP Basic client authentication (client_secret_basic,
//! RFC 6749 §2.3.1), over plain TCP or TLS, one connection per request (tokens are fetched once
//! per lifetime, not per request), bounded in time and size. Errors say what failed; they never
//! carry the secret or a token.

use std::time::{Duration, Instant};

use base64::Engine;

use crate::config::credentials::Credentials;
use crate::config::HttpTarget;
use crate::http::head::{parse_response, Framing};
use crate::http::{ChunkedDecoder, Conn};

/// An access token from a token endpoint.
#[derive(Clone)]
pub struct Token {
    pub access_token: std::rc::Rc<str>,
    /// `expires_in` from when the response arrived; `None` = the endpoint gave no lifetime.
    pub expires_at: Option<Instant>,
    pub issued_token_type: Option<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `application/x-www-form-urlencoded` (the WHATWG form serializer: unreserved bytes as they are,
/// space as `+`, everything else `%XX`).
pub fn form_encode(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
}

/// The form body for `fields` (absent values left out).
pub fn form(fields: &[(&str, Option<&str>)]) -> String {
    let mut out = String::new();
    for (k, v) in fields {
        let Some(v) = v else { continue };
        if !out.is_empty() {
            out.push('&');
        }
        form_encode(&mut out, k);
        out.push('=');
        form_encode(&mut out, v);
    }
    out
}

/// `Authorization: Basic …` for the client: id and secret form-encoded first (RFC 6749 §2.3.1).
pub fn basic_auth(client_id: &str, client_secret: &str) -> String {
    let mut pair = String::new();
    form_encode(&mut pair, client_id);
    pair.push(':');
    form_encode(&mut pair, client_secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// POSTs `body` (a form) to the credentials' token endpoint and reads the token response.
pub async fn request_token(c: &Credentials, body: &str) -> Result<Token, String> {
    let deadline = c.request_timeout;
    match monoio::time::timeout(deadline, exchange(c, body)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "token endpoint {} did not answer within {} ms (request_timeout)",
            c.token_url,
            deadline.as_millis()
        )),
    }
}

async fn exchange(c: &Credentials, body: &str) -> Result<Token, String> {
    let tls = c.tls.as_ref().map(|(cfg, name)| (cfg, name));
    let (status, out) = call(
        &c.token_target,
        tls,
        c.connect_timeout,
        Some(&basic_auth(&c.client_id, &c.client_secret)),
        Some(body),
        c.max_response_bytes,
    )
    .await
    .map_err(|e| format!("token endpoint {}: {e}", c.token_url))?;
    parse_token(status, &out, Instant::now())
        .map_err(|e| format!("token endpoint {}: {e}", c.token_url))
}

/// One request on a fresh connection (`connection: close`): a POST of the form `body` with
/// `authorization`, or a GET when `body` is `None`; the answer's status and body (at most
/// `max` bytes). The caller bounds the whole call in time; errors name the step that failed,
/// never the authorization or the body.
pub async fn call(
    t: &HttpTarget,
    tls: Option<(
        &std::sync::Arc<rustls::ClientConfig>,
        &rustls::pki_types::ServerName<'static>,
    )>,
    connect_timeout: Duration,
    authorization: Option<&str>,
    body: Option<&str>,
    max: usize,
) -> Result<(u16, Vec<u8>), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    // Resolved per call (the name may move). A name is resolved by the system resolver on this
    // thread: brief, and these calls are rare (once per token lifetime or cache lifetime).
    let addrs = t.resolve().map_err(|e| fail("resolve", &e))?;
    let tcp = crate::http::pool::connect(&addrs, connect_timeout)
        .await
        .map_err(|e| fail("connect", &e))?;
    let stream = match (t.tls, tls) {
        (false, _) => crate::tls::Stream::Plain(tcp),
        (true, Some((cfg, name))) => {
            crate::tls::connect(tcp, cfg.clone(), name.clone(), connect_timeout)
                .await
                .map_err(|e| fail("TLS", &e))?
        }
        (true, None) => return Err("https needs a TLS configuration".into()),
    };
    let mut conn = Conn::new(stream, 4096);
    let body_len = body.map_or(0, str::len);
    let mut req = String::with_capacity(256 + body_len);
    req.push_str(if body.is_some() { "POST " } else { "GET " });
    req.push_str(&t.path);
    req.push_str(" HTTP/1.1\r\nhost: ");
    req.push_str(&t.authority);
    if let Some(a) = authorization {
        req.push_str("\r\nauthorization: ");
        req.push_str(a);
    }
    req.push_str("\r\naccept: application/json\r\nuser-agent: tollgate\r\nconnection: close");
    if let Some(body) = body {
        req.push_str("\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: ");
        req.push_str(&body.len().to_string());
        req.push_str("\r\n\r\n");
        req.push_str(body);
    } else {
        req.push_str("\r\n\r\n");
    }
    let (res, _) = conn.write_all(req.into_bytes()).await;
    res.map_err(|e| fail("send", &e))?;
    let head = loop {
        let buf = conn.buffered();
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; 64];
        match parse_response(buf, &mut headers, max, false) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(e) => return Err(fail("response", &e.reason)),
        }
        if conn.fill(0).await.map_err(|e| fail("read", &e))? == 0 {
            return Err(fail("read", &"closed before a complete response head"));
        }
    };
    conn.consume(head.len);
    let mut out = Vec::new();
    match head.framing {
        Framing::None => {}
        Framing::Length(n) => {
            if n as usize > max {
                return Err(fail(
                    "response",
                    &format!("body of {n} bytes is over max_response_bytes ({max})"),
                ));
            }
            while conn.buffered().len() < n as usize {
                if conn
                    .fill(n as usize - conn.buffered().len())
                    .await
                    .map_err(|e| fail("read", &e))?
                    == 0
                {
                    return Err(fail("read", &"closed mid-body"));
                }
            }
            out.extend_from_slice(&conn.buffered()[..n as usize]);
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::new(4096);
            loop {
                let used = dec
                    .feed(conn.buffered(), |d| out.extend_from_slice(d))
                    .map_err(|e| fail("response", &format!("{e:?}")))?;
                conn.consume(used);
                if out.len() > max {
                    return Err(fail(
                        "response",
                        &format!("body over max_response_bytes ({max})"),
                    ));
                }
                if dec.is_done() {
                    break;
                }
                if conn.fill(0).await.map_err(|e| fail("read", &e))? == 0 {
                    return Err(fail("read", &"closed mid-body"));
                }
            }
        }
        Framing::UntilClose => loop {
            out.extend_from_slice(conn.buffered());
            let n = conn.buffered().len();
            conn.consume(n);
            if out.len() > max {
                return Err(fail(
                    "response",
                    &format!("body over max_response_bytes ({max})"),
                ));
            }
            if conn.fill(0).await.map_err(|e| fail("read", &e))? == 0 {
                break;
            }
        },
    }
    Ok((head.status, out))
}

#[derive(serde::Deserialize)]
struct Wire {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    issued_token_type: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Reads a token endpoint's answer (RFC 6749 §5.1 / §5.2, RFC 8693 §2.2).
pub fn parse_token(status: u16, body: &[u8], now: Instant) -> Result<Token, String> {
    let wire: Result<Wire, _> = serde_json::from_slice(body);
    if !(200..300).contains(&status) {
        return Err(match wire {
            Ok(Wire {
                error: Some(e),
                error_description,
                ..
            }) => {
                let e: String = e.chars().filter(|c| !c.is_control()).take(100).collect();
                match error_description {
                    Some(d) => {
                        let d: String = d.chars().filter(|c| !c.is_control()).take(200).collect();
                        format!("HTTP {status}, error {e:?}: {d}")
                    }
                    None => format!("HTTP {status}, error {e:?}"),
                }
            }
            _ => format!("HTTP {status}"),
        });
    }
    let wire = wire.map_err(|e| format!("response is not a token JSON object: {e}"))?;
    let token = wire.access_token.ok_or("response has no access_token")?;
    if token.is_empty() || token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err("access_token is empty or not printable ASCII".to_string());
    }
    match wire.token_type.as_deref() {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(t) => return Err(format!("token_type {t:?} is not Bearer")),
        None => return Err("response has no token_type".to_string()),
    }
    let expires_in = match wire.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(
            n.as_u64()
                .ok_or("expires_in is not a whole number of seconds")?,
        ),
        // Some servers send it as a string.
        Some(serde_json::Value::String(s)) => Some(
            s.parse::<u64>()
                .map_err(|_| "expires_in is not a whole number of seconds")?,
        ),
        Some(_) => return Err("expires_in is not a number".to_string()),
    };
    Ok(Token {
        access_token: token.into(),
        expires_at: expires_in.map(|s| now + Duration::from_secs(s.min(10 * 365 * 86_400))),
        issued_token_type: wire.issued_token_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_and_basic_follow_rfc6749() {
        assert_eq!(
            form(&[("grant_type", Some("client_credentials")), ("scope", Some("a b:c")), ("x", None), ("resource", Some("https://n/mcp?a=1&b"))]),
            "grant_type=client_credentials&scope=a+b%3Ac&resource=https%3A%2F%2Fn%2Fmcp%3Fa%3D1%26b"
        );
        // id and secret are form-encoded before base64: "a:b" → "a%3Ab".
        assert_eq!(
            basic_auth("a:b", "s p"),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("a%3Ab:s+p")
            )
        );
    }

    #[test]
    fn token_responses_are_read_and_checked() {
        let now = Instant::now();
        let t = parse_token(
            200,
            br#"{"access_token":"abc","token_type":"bearer","expires_in":"30"}"#,
            now,
        )
        .unwrap();
        assert_eq!(&*t.access_token, "abc");
        assert_eq!(t.expires_at, Some(now + Duration::from_secs(30)));
        assert_eq!(
            parse_token(
                400,
                br#"{"error":"invalid_client","error_description":"bad secret"}"#,
                now
            )
            .unwrap_err(),
            "HTTP 400, error \"invalid_client\": bad secret"
        );
        assert_eq!(parse_token(502, b"oops", now).unwrap_err(), "HTTP 502");
        assert_eq!(
            parse_token(
                200,
                br#"{"access_token":"a\r\nx: y","token_type":"Bearer"}"#,
                now
            )
            .unwrap_err(),
            "access_token is empty or not printable ASCII"
        );
        assert_eq!(
            parse_token(200, br#"{"access_token":"a","token_type":"mac"}"#, now).unwrap_err(),
            "token_type \"mac\" is not Bearer"
        );
        assert!(
            parse_token(200, br#"{"access_token":"a","token_type":"Bearer"}"#, now)
                .unwrap()
                .expires_at
                .is_none()
        );
    }
}
