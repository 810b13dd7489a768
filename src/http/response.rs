//! Writing response heads and small complete responses.

/// The reason phrase for a status (from the `http` crate's table).
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

/// Appends `HTTP/1.1 <status> <reason>\r\n`.
pub fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, status as u64);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_u64(out, n);
    out.extend_from_slice(b"\r\n");
}

pub fn connection(out: &mut Vec<u8>, keep_alive: bool) {
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
}

/// A complete response with a body.
pub fn simple(out: &mut Vec<u8>, status: u16, content_type: &[u8], body: &[u8], keep_alive: bool) {
    status_line(out, status);
    if !body.is_empty() || status >= 200 {
        header(out, b"content-type", content_type);
    }
    content_length(out, body.len() as u64);
    connection(out, keep_alive);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Appends the decimal digits of `n` without allocating.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits() {
        for n in [0u64, 7, 10, 99, 1234567890, u64::MAX] {
            let mut v = Vec::new();
            push_u64(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
        }
    }

    #[test]
    fn renders_a_complete_response() {
        let mut out = Vec::new();
        simple(&mut out, 413, b"application/json", b"{}", false);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
        );
    }
}
