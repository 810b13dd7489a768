//! A chunked transfer-coding state machine that can be fed bytes in any split.
//! It reports where the body ends (so raw chunked bytes can be relayed verbatim and the
//! connection reused) and, on request, the decoded data spans.

/// Why a chunked stream is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    BadSize,
    #[error("chunk size line too long")]
    LineTooLong,
    #[error("missing CRLF after chunk data")]
    BadTerminator,
    #[error("chunk trailers too long")]
    TrailersTooLong,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a size line.
    Size,
    /// After the size, skipping chunk extensions until CR.
    Ext,
    /// Expecting LF of the size line.
    SizeLf,
    /// Inside chunk data; `remaining` bytes left.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// Expecting the final LF (the line was empty).
    FinalLf,
    /// Expecting LF that ends a trailer line.
    TrailerLf,
    Done,
}

/// Incremental chunked decoder. `feed` consumes as much as it can and stops at the body's end.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    remaining: u64,
    line_len: usize,
    trailer_len: usize,
    max_trailer: usize,
    size_digits: u32,
}

impl ChunkedDecoder {
    /// `max_trailer` bounds chunk-extension and trailer bytes (use the header size limit).
    pub fn new(max_trailer: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            remaining: 0,
            line_len: 0,
            trailer_len: 0,
            max_trailer,
            size_digits: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes from `buf`, calling `on_data` with each span of chunk payload.
    /// Returns how many bytes were consumed; fewer than `buf.len()` only when the body ended.
    pub fn feed(
        &mut self,
        buf: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let take = (buf.len() - i).min(self.remaining.min(usize::MAX as u64) as usize);
                    on_data(&buf[i..i + take]);
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                _ => {}
            }
            let b = buf[i];
            i += 1;
            self.state = match self.state {
                State::Size => match hex_val(b) {
                    Some(v) => {
                        self.size_digits += 1;
                        if self.size_digits > 15 {
                            return Err(ChunkError::BadSize);
                        }
                        self.size = self.size * 16 + v as u64;
                        State::Size
                    }
                    None if self.size_digits == 0 => return Err(ChunkError::BadSize),
                    None if b == b'\r' => State::SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => {
                        self.line_len = 0;
                        State::Ext
                    }
                    None => return Err(ChunkError::BadSize),
                },
                State::Ext => {
                    self.line_len += 1;
                    if self.line_len > self.max_trailer {
                        return Err(ChunkError::LineTooLong);
                    }
                    if b == b'\r' {
                        State::SizeLf
                    } else if b == b'\n' {
                        return Err(ChunkError::BadSize);
                    } else {
                        State::Ext
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadSize);
                    }
                    let size = self.size;
                    self.size = 0;
                    self.size_digits = 0;
                    if size == 0 {
                        State::TrailerStart
                    } else {
                        self.remaining = size;
                        State::Data
                    }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size,
                State::DataCr | State::DataLf => return Err(ChunkError::BadTerminator),
                State::TrailerStart => {
                    if b == b'\r' {
                        State::FinalLf
                    } else {
                        self.bump_trailer()?;
                        State::TrailerLine
                    }
                }
                State::TrailerLine => {
                    self.bump_trailer()?;
                    if b == b'\r' {
                        State::TrailerLf
                    } else {
                        State::TrailerLine
                    }
                }
                State::TrailerLf if b == b'\n' => State::TrailerStart,
                State::FinalLf if b == b'\n' => State::Done,
                State::TrailerLf | State::FinalLf => return Err(ChunkError::BadTerminator),
                State::Data | State::Done => unreachable!("handled above"),
            };
            if self.state == State::Done {
                return Ok(i);
            }
        }
        Ok(i)
    }

    fn bump_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > self.max_trailer {
            Err(ChunkError::TrailersTooLong)
        } else {
            Ok(())
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends one chunk (size line, data, CRLF) to `out`.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The terminating zero-size chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new(1024);
        let mut out = Vec::new();
        let mut consumed = 0;
        for part in input.chunks(split.max(1)) {
            let n = d.feed(part, |s| out.extend_from_slice(s))?;
            consumed += n;
            if d.is_done() {
                break;
            }
        }
        Ok((out, consumed, d.is_done()))
    }

    #[test]
    fn decodes_at_every_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for split in 1..body.len() {
            let (out, consumed, done) = decode_all(body, split).unwrap();
            assert_eq!(out, b"hello, world", "split {split}");
            assert!(done);
            assert_eq!(&body[consumed..], b"NEXT", "split {split}");
        }
    }

    #[test]
    fn stops_exactly_at_end_without_trailers() {
        let body = b"3\r\nabc\r\n0\r\n\r\nGET /";
        let (out, consumed, done) = decode_all(body, body.len()).unwrap();
        assert_eq!(out, b"abc");
        assert!(done);
        assert_eq!(&body[consumed..], b"GET /");
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(decode_all(b"zz\r\n", 100).unwrap_err(), ChunkError::BadSize);
        assert_eq!(
            decode_all(b"3\r\nabcX\r\n", 100).unwrap_err(),
            ChunkError::BadTerminator
        );
        assert_eq!(decode_all(b"\r\n", 100).unwrap_err(), ChunkError::BadSize);
        assert_eq!(
            decode_all(b"ffffffffffffffff\r\n", 100).unwrap_err(),
            ChunkError::BadSize
        );
        let long_trailer = [b"0\r\n".as_slice(), &[b'a'; 2000], b"\r\n\r\n"].concat();
        assert_eq!(
            decode_all(&long_trailer, 100).unwrap_err(),
            ChunkError::TrailersTooLong
        );
    }

    #[test]
    fn incomplete_is_not_done() {
        let (out, _, done) = decode_all(b"5\r\nhel", 100).unwrap();
        assert_eq!(out, b"hel");
        assert!(!done);
    }

    #[test]
    fn encode_round_trips() {
        let mut out = Vec::new();
        encode_chunk(&mut out, b"data: {}\n\n");
        encode_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        let (dec, consumed, done) = decode_all(&out, 3).unwrap();
        assert_eq!(dec, b"data: {}\n\n");
        assert!(done);
        assert_eq!(consumed, out.len());
    }
}
