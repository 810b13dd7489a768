//! What a request presents, and the syntax of its bearer credential: `Bearer <token68>`, never
//! in the query.

use super::AuthFailure;
use crate::tls::PeerIdentity;

/// What one request presents, as the proxy read it from the head and the connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Presented<'a> {
    /// The `Authorization` header's value.
    pub authorization: Option<&'a [u8]>,
    /// The `X-API-Key` header's value.
    pub api_key: Option<&'a [u8]>,
    /// The request target's query (after `?`), to refuse `access_token=`.
    pub query: Option<&'a [u8]>,
    /// The verified client certificate of an mTLS connection.
    pub peer: Option<&'a PeerIdentity>,
    /// The client's address is loopback.
    pub loopback: bool,
}

/// `access_token=` as a parameter of the query (RFC 6750 §2.3: refused).
pub(super) fn query_has_token(query: &[u8]) -> bool {
    query.split(|&b| b == b'&' || b == b';').any(|param| {
        param.len() >= 13 && param[..13].eq_ignore_ascii_case(b"access_token=")
            || param.eq_ignore_ascii_case(b"access_token")
    })
}

/// The credential of `Bearer <credential>` (scheme case-insensitive, one or more spaces), at
/// most `max` bytes; its syntax is `token68`'s to check.
pub(super) fn bearer(header: &[u8], max: usize) -> Result<&[u8], AuthFailure> {
    let header = header.trim_ascii();
    if header.len() < 7 || !header[..7].eq_ignore_ascii_case(b"bearer ") {
        return Err(AuthFailure::Malformed);
    }
    let token = header[7..].trim_ascii_start();
    if token.len() > max {
        return Err(AuthFailure::TooLarge);
    }
    if token.is_empty() {
        return Err(AuthFailure::Malformed);
    }
    Ok(token)
}

/// RFC 7235 `token68`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub(super) fn token68(token: &[u8]) -> bool {
    let body = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    body > 0
        && token[..body].iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}
