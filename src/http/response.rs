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
    // Written in place, two digits at a time: a copy of a variable-length digit buffer was a
    // memcpy call per number (audit records write a dozen).
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let digits = n.checked_ilog10().unwrap_or(0) as usize + 1;
    let start = out.len();
    out.extend_from_slice(&[0u8; 20]);
    out.truncate(start + digits);
    let d = &mut out[start..];
    let mut i = digits;
    while n >= 100 {
        let p = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        d[i] = PAIRS[p];
        d[i + 1] = PAIRS[p + 1];
    }
    if n >= 10 {
        let p = n as usize * 2;
        d[0] = PAIRS[p];
        d[1] = PAIRS[p + 1];
    } else {
        d[0] = b'0' + n as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits() {
        for n in [
            0u64,
            7,
            9,
            10,
            11,
            99,
            100,
            101,
            999,
            1000,
            1234567890,
            u64::MAX,
        ] {
            let mut v = Vec::new();
            push_u64(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
            // After what the buffer holds, nothing past the digits.
            let mut v = b"len=".to_vec();
            push_u64(&mut v, n);
            assert_eq!(v, format!("len={n}").as_bytes());
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
