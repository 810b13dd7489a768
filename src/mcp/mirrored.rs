//! `Mcp-Method` and `Mcp-Name` checked against the body (part of the stateless revision's rules,
//! `modern`): a pure function over header bytes and what the scanner read. Depends on std and
//! base64 only, so fuzz/fuzz_targets/header_agreement.rs compiles this file from source.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The mirrored headers of one message and what the scanner read from its body.
#[derive(Clone, Copy, Debug)]
pub struct Mirrored<'a> {
    pub header_method: Option<&'a [u8]>,
    pub header_name: Option<&'a [u8]>,
    /// The body's `method`.
    pub method: &'a [u8],
    /// Whether the message is a request (notifications need no `Mcp-Method`).
    pub request: bool,
    /// The body value `Mcp-Name` mirrors (`params.name` or `params.uri`), decoded, when the
    /// method has one (`name_source`); `None` inside means the body has none.
    pub name: Option<Option<&'a [u8]>>,
}

/// Checks `Mcp-Method` and `Mcp-Name` against the body: required where the revision requires
/// them, equal (after decoding a `=?base64?…?=` value and dropping surrounding whitespace, and
/// case-sensitive) wherever present. The error is the sentence for -32020.
pub fn check_mirrored(m: &Mirrored<'_>) -> Result<(), String> {
    match m.header_method {
        None if m.request => return Err("Mcp-Method header is missing".into()),
        None => {}
        Some(h) => {
            let h = header_value(h).map_err(|why| format!("Mcp-Method header: {why}"))?;
            if *h != *m.method {
                return Err(mismatch("Mcp-Method", &h, m.method));
            }
        }
    }
    let Some(body) = m.name else {
        return Ok(());
    };
    let Some(h) = m.header_name else {
        return Err("Mcp-Name header is missing".into());
    };
    let h = header_value(h).map_err(|why| format!("Mcp-Name header: {why}"))?;
    match body {
        Some(b) if *h == *b => Ok(()),
        Some(b) => Err(mismatch("Mcp-Name", &h, b)),
        None => Err(format!(
            "Header mismatch: Mcp-Name header value '{}' has no body value to match",
            String::from_utf8_lossy(&h)
        )),
    }
}

fn mismatch(header: &str, h: &[u8], body: &[u8]) -> String {
    format!(
        "Header mismatch: {header} header value '{}' does not match body value '{}'",
        String::from_utf8_lossy(h),
        String::from_utf8_lossy(body)
    )
}

/// A mirrored header's value as the body would spell it: surrounding spaces and tabs dropped,
/// a `=?base64?…?=` value decoded (strict base64 with padding; it must be UTF-8). A plain value
/// must be visible ASCII, spaces and tabs; anything else is refused.
pub fn header_value(v: &[u8]) -> Result<Cow<'_, [u8]>, &'static str> {
    let v = v.trim_ascii();
    if let Some(inner) = v
        .strip_prefix(b"=?base64?")
        .and_then(|r| r.strip_suffix(b"?="))
    {
        let bytes = STANDARD
            .decode(inner)
            .map_err(|_| "invalid base64 in a =?base64?…?= value")?;
        if std::str::from_utf8(&bytes).is_err() {
            return Err("a =?base64?…?= value that is not UTF-8");
        }
        return Ok(Cow::Owned(bytes));
    }
    if v.iter()
        .all(|&b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        Ok(Cow::Borrowed(v))
    } else {
        Err("invalid characters (non-ASCII values are sent as =?base64?…?=)")
    }
}
