//! Minimal HTTP/1.1 client side for the generator: write one request, read one response
//! (Content-Length, chunked, or until close) and pull JSON-RPC messages out of JSON or SSE bodies.
//! It only has to be correct for what the harness sends; it never sees untrusted input beyond the target's replies.

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use tollgate::tls::Stream;

#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    Closed,
    Malformed(String),
}

pub struct Response {
    pub status: u16,
    pub sse: bool,
    pub session_id: Option<String>,
    pub close: bool,
    pub body: Vec<u8>,
}

/// One connection with its read buffer (bytes past the end of one response stay for the next).
pub struct Conn {
    /// Plain TCP, or TLS for an `https://` target (the gateway's own rustls adapter).
    pub stream: Stream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        let _ = stream.tcp().set_nodelay(true);
        Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    pub async fn send(&mut self, req: Vec<u8>) -> Result<Vec<u8>, std::io::Error> {
        let (res, req) = self.stream.write_all(req).await;
        res.map(|_| req)
    }

    pub async fn read_response(&mut self) -> Result<Response, ReadError> {
        // Head.
        let (status, head_len, content_length, chunked, sse, session_id, close) = loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        let mut cl = None;
                        let mut chunked = false;
                        let mut sse = false;
                        let mut sid = None;
                        let mut close = false;
                        for h in resp.headers.iter() {
                            let name = h.name;
                            if name.eq_ignore_ascii_case("content-length") {
                                cl = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|v| v.trim().parse::<usize>().ok());
                            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                                chunked = contains_ci(h.value, b"chunked");
                            } else if name.eq_ignore_ascii_case("content-type") {
                                sse = contains_ci(h.value, b"text/event-stream");
                            } else if name.eq_ignore_ascii_case("mcp-session-id") {
                                sid = std::str::from_utf8(h.value).ok().map(|s| s.to_string());
                            } else if name.eq_ignore_ascii_case("connection") {
                                close = contains_ci(h.value, b"close");
                            }
                        }
                        break (status, n, cl, chunked, sse, sid, close);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(ReadError::Malformed(format!("response head: {e}"))),
                }
            }
            self.read_more().await?;
        };
        self.buf.drain(..head_len);
        let body;
        if status == 204 || status == 304 || (100..200).contains(&status) {
            body = Vec::new();
        } else if chunked {
            let mut out = Vec::new();
            let mut pos = 0;
            loop {
                match decode_chunks(&self.buf, &mut pos, &mut out) {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => return Err(ReadError::Malformed(e)),
                }
                // Drop consumed bytes so a long stream does not rescan from the start.
                self.buf.drain(..pos);
                pos = 0;
                self.read_more().await?;
            }
            self.buf.drain(..pos);
            body = out;
        } else if let Some(n) = content_length {
            while self.buf.len() < n {
                self.read_more().await?;
            }
            body = self.buf.drain(..n).collect();
        } else {
            // Until close.
            loop {
                match self.read_more().await {
                    Ok(()) => {}
                    Err(ReadError::Closed) => break,
                    Err(e) => return Err(e),
                }
            }
            body = std::mem::take(&mut self.buf);
            return Ok(Response {
                status,
                sse,
                session_id,
                close: true,
                body,
            });
        }
        Ok(Response {
            status,
            sse,
            session_id,
            close,
            body,
        })
    }

    async fn read_more(&mut self) -> Result<(), ReadError> {
        if self.buf.capacity() - self.buf.len() < 8 * 1024 {
            let extra = self.buf.capacity().max(16 * 1024);
            self.buf.reserve(extra);
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let cap = buf.capacity();
        let slice = monoio::buf::IoBufMut::slice_mut(buf, len..cap);
        let (res, slice) = self.stream.read(slice).await;
        self.buf = slice.into_inner();
        match res {
            Ok(0) => Err(ReadError::Closed),
            Ok(_) => Ok(()),
            Err(e) => Err(ReadError::Io(e)),
        }
    }
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Decode every complete chunk in `raw[*pos..]` into `out`. Ok(true) once the last chunk (and trailers) are consumed.
pub fn decode_chunks(raw: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Result<bool, String> {
    loop {
        let rest = &raw[*pos..];
        let Some(eol) = memchr::memmem::find(rest, b"\r\n") else {
            return Ok(false);
        };
        let line = &rest[..eol];
        let hex_end = line
            .iter()
            .position(|&b| b == b';' || b == b' ')
            .unwrap_or(line.len());
        let hex = std::str::from_utf8(&line[..hex_end])
            .map_err(|_| "chunk size not ascii".to_string())?;
        let size =
            usize::from_str_radix(hex.trim(), 16).map_err(|_| format!("bad chunk size {hex:?}"))?;
        if size == 0 {
            // Trailers end with an empty line.
            let after = &rest[eol + 2..];
            if after.starts_with(b"\r\n") {
                *pos += eol + 4;
                return Ok(true);
            }
            match memchr::memmem::find(after, b"\r\n\r\n") {
                Some(i) => {
                    *pos += eol + 2 + i + 4;
                    return Ok(true);
                }
                None => return Ok(false),
            }
        }
        let need = eol + 2 + size + 2;
        if rest.len() < need {
            return Ok(false);
        }
        if &rest[eol + 2 + size..need] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        *pos += need;
    }
}

/// The `data:` payloads of each SSE event in `body` (multi-line data joined with '\n'), read by
/// the gateway's own decoder; an event cut short by the end of the body counts.
pub fn sse_events(body: &[u8]) -> Vec<Vec<u8>> {
    // The body is already whole, so an event can be as large as it.
    tollgate::http::sse::decode_all(body, body.len(), tollgate::http::sse::AtEnd::Dispatch)
        .map(|evs| evs.into_iter().map(|e| e.data).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn chunks_split_anywhere() {
        // However the bytes arrive, decoding what is there and then the rest gives the same body.
        let raw = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        for cut in 0..raw.len() {
            let mut out = Vec::new();
            let mut pos = 0;
            assert!(!decode_chunks(&raw[..cut], &mut pos, &mut out).unwrap());
            let mut rest = 0;
            assert!(decode_chunks(&raw[pos..], &mut rest, &mut out).unwrap());
            assert_eq!(pos + rest, raw.len());
            assert_eq!(out, b"hello world");
        }
    }
    #[test]
    fn sse() {
        let ev = sse_events(b"id: 1\ndata: {\"a\":1}\n\n: comment\ndata: x\ndata: y\n\n");
        assert_eq!(ev, vec![b"{\"a\":1}".to_vec(), b"x\ny".to_vec()]);
    }
}
