//! The reply probe's decoder of compressed replies: which `Content-Encoding`s it reads, a gzip
//! member's header skipped byte by byte, then flate2's streaming `Decompress` (miniz_oxide)
//! pumped into a stack buffer whose output the probe reads as plain bytes, up to
//! `audit.max_decoded`.

use super::{Body, ReplyProbe};

/// A reply's `Content-Encoding`, as far as the probe reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    /// `deflate`: zlib-wrapped as RFC 9110 says; raw deflate (as some servers send) is
    /// told apart by its first bytes.
    Deflate,
    /// Any other (`br`, `zstd`, `compress`, several codings): not read.
    Other,
}

impl Coding {
    /// The coding a `Content-Encoding` value names (absent: `Identity`).
    pub fn of(value: &[u8]) -> Coding {
        let v = value.trim_ascii();
        if v.is_empty() || v.eq_ignore_ascii_case(b"identity") {
            Coding::Identity
        } else if v.eq_ignore_ascii_case(b"gzip") || v.eq_ignore_ascii_case(b"x-gzip") {
            Coding::Gzip
        } else if v.eq_ignore_ascii_case(b"deflate") {
            Coding::Deflate
        } else {
            Coding::Other
        }
    }
}

/// Why a reply's errors were not read to its end (for `tollgate_audit_replies_unread_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unread {
    /// A `Content-Encoding` the probe does not decode (br, zstd, …).
    Encoding,
    /// The reply decodes to more than `audit.max_decoded` bytes (the first that many were read).
    Limit,
    /// The compressed bytes were not valid gzip or deflate.
    Corrupt,
}

impl Unread {
    pub fn as_str(self) -> &'static str {
        match self {
            Unread::Encoding => "encoding",
            Unread::Limit => "max_decoded",
            Unread::Corrupt => "corrupt",
        }
    }
}

/// A compressed reply's decoder: its gzip header first, then the deflate stream.
pub(super) struct Inflate {
    gzip: Option<GzHeader>,
    /// A `deflate` body's first byte, when it came alone (zlib or raw is told by two).
    first: Option<u8>,
    /// Created once the wrapper is known (miniz_oxide's state, ~43 KiB, only for such replies).
    d: Option<flate2::Decompress>,
    /// Decoded bytes still to be read (`audit.max_decoded`).
    left: u64,
}

impl Inflate {
    /// A decoder for a gzip (`gzip`) or deflate body, reading `max_decoded` bytes at most.
    pub(super) fn new(gzip: bool, max_decoded: u64) -> Inflate {
        Inflate {
            gzip: gzip.then_some(GzHeader::Fixed { n: 0, flags: 0 }),
            first: None,
            d: None,
            left: max_decoded,
        }
    }
}

/// Where the reader is in a gzip member's header (RFC 1952 §2.3): skipped, not kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GzHeader {
    /// The fixed ten bytes, `n` read so far.
    Fixed {
        n: u8,
        flags: u8,
    },
    /// FEXTRA's two length bytes (`n` read, the low one in `len`).
    ExtraLen {
        n: u8,
        len: u16,
        flags: u8,
    },
    Extra {
        left: u16,
        flags: u8,
    },
    /// FNAME, then FCOMMENT: zero-terminated.
    Name {
        flags: u8,
    },
    Comment {
        flags: u8,
    },
    /// FHCRC: two bytes.
    Crc {
        n: u8,
    },
    Done,
}

const FHCRC: u8 = 2;
const FEXTRA: u8 = 4;
const FNAME: u8 = 8;
const FCOMMENT: u8 = 16;

impl GzHeader {
    /// The state after the optional fields that `flags` announce, past `stage` (0: none read,
    /// then FEXTRA, FNAME, FCOMMENT: the order they come in).
    fn next(flags: u8, stage: u8) -> GzHeader {
        if stage < 1 && flags & FEXTRA != 0 {
            GzHeader::ExtraLen {
                n: 0,
                len: 0,
                flags,
            }
        } else if stage < 2 && flags & FNAME != 0 {
            GzHeader::Name { flags }
        } else if stage < 3 && flags & FCOMMENT != 0 {
            GzHeader::Comment { flags }
        } else if flags & FHCRC != 0 {
            GzHeader::Crc { n: 0 }
        } else {
            GzHeader::Done
        }
    }

    /// Reads header bytes from `bytes`: how many were header, or `Err` for no gzip member.
    fn feed(&mut self, bytes: &[u8]) -> Result<usize, ()> {
        let mut i = 0;
        while i < bytes.len() && *self != GzHeader::Done {
            let b = bytes[i];
            *self = match *self {
                GzHeader::Fixed { n, flags } => {
                    // ID1 ID2 CM (8: deflate) FLG MTIME×4 XFL OS; reserved flag bits unset.
                    let ok = match n {
                        0 => b == 0x1f,
                        1 => b == 0x8b,
                        2 => b == 8,
                        3 => b & 0xe0 == 0,
                        _ => true,
                    };
                    if !ok {
                        return Err(());
                    }
                    let flags = if n == 3 { b } else { flags };
                    if n == 9 {
                        GzHeader::next(flags, 0)
                    } else {
                        GzHeader::Fixed { n: n + 1, flags }
                    }
                }
                GzHeader::ExtraLen { n: 0, flags, .. } => GzHeader::ExtraLen {
                    n: 1,
                    len: u16::from(b),
                    flags,
                },
                GzHeader::ExtraLen { len, flags, .. } => {
                    let left = len | u16::from(b) << 8;
                    if left == 0 {
                        GzHeader::next(flags, 1)
                    } else {
                        GzHeader::Extra { left, flags }
                    }
                }
                GzHeader::Extra { left, flags } => {
                    // Skipped in one step as far as this piece goes.
                    let take = (bytes.len() - i).min(usize::from(left));
                    i += take;
                    let left = left - take as u16;
                    *self = if left == 0 {
                        GzHeader::next(flags, 1)
                    } else {
                        GzHeader::Extra { left, flags }
                    };
                    continue;
                }
                GzHeader::Name { flags } | GzHeader::Comment { flags } => {
                    let past = if matches!(*self, GzHeader::Name { .. }) {
                        2
                    } else {
                        3
                    };
                    match memchr::memchr(0, &bytes[i..]) {
                        Some(p) => {
                            i += p + 1;
                            *self = GzHeader::next(flags, past);
                        }
                        None => i = bytes.len(),
                    }
                    continue;
                }
                GzHeader::Crc { n: 0 } => GzHeader::Crc { n: 1 },
                GzHeader::Crc { .. } | GzHeader::Done => GzHeader::Done,
            };
            i += 1;
        }
        Ok(i)
    }
}

/// Decoded bytes handed to the reader at a time (a stack buffer; the reply is never held).
const INFLATE_CHUNK: usize = 4096;

impl ReplyProbe {
    /// Decodes compressed `bytes` and reads what they decode to, until the code is known, the
    /// stream ends, or it decodes to more than `max_decoded` bytes (a zip bomb costs that much,
    /// and one byte, at most).
    pub(super) fn inflate(&mut self, bytes: &[u8]) {
        // Taken out while the reader runs (it borrows the rest of `self`); put back unless
        // decoding ended, when its memory goes at once rather than with the request.
        let mut z = match std::mem::replace(&mut self.body, Body::Stopped(None)) {
            Body::Inflating(z) => z,
            other => {
                self.body = other;
                return;
            }
        };
        if let Err(why) = self.inflate_with(&mut z, bytes) {
            self.body = Body::Stopped(why);
        } else {
            self.body = Body::Inflating(z);
        }
    }

    /// `Err`: decoding ended, for the reason given (`None`: nothing more to learn).
    fn inflate_with(&mut self, z: &mut Inflate, mut bytes: &[u8]) -> Result<(), Option<Unread>> {
        if let Some(h) = z.gzip.as_mut() {
            if *h != GzHeader::Done {
                let n = h.feed(bytes).map_err(|()| Some(Unread::Corrupt))?;
                bytes = &bytes[n..];
            }
            if *h != GzHeader::Done {
                return Ok(());
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if z.d.is_none() {
            // `deflate`: zlib-wrapped when its first two bytes are a zlib header (CM 8, a
            // window of 32 KiB at most, a check that divides by 31), else raw deflate.
            let zlib = match (z.gzip.is_some(), z.first, bytes) {
                (true, ..) => false,
                (false, None, &[b]) => {
                    z.first = Some(b);
                    return Ok(());
                }
                (false, Some(cmf), &[flg, ..]) | (false, None, &[cmf, flg, ..]) => {
                    cmf & 0x0f == 8
                        && cmf >> 4 <= 7
                        && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
                }
                (false, _, []) => return Ok(()),
            };
            z.d = Some(flate2::Decompress::new(zlib));
            if let Some(b) = z.first.take() {
                self.pump(z, &[b])?;
            }
        }
        self.pump(z, bytes)
    }

    /// Runs the decoder over `bytes`, reading its output a stack buffer at a time.
    fn pump(&mut self, z: &mut Inflate, mut bytes: &[u8]) -> Result<(), Option<Unread>> {
        let Some(d) = z.d.as_mut() else {
            return Ok(());
        };
        let mut out = [0u8; INFLATE_CHUNK];
        loop {
            // Room for one byte past the bound: a reply of exactly `max_decoded` bytes is read
            // whole (its end may only show on a later call), one byte more is not.
            let room = z.left.saturating_add(1).min(INFLATE_CHUNK as u64) as usize;
            let (in0, out0) = (d.total_in(), d.total_out());
            let status = d.decompress(bytes, &mut out[..room], flate2::FlushDecompress::None);
            let used = (d.total_in() - in0) as usize;
            let made = (d.total_out() - out0) as usize;
            bytes = &bytes[used..];
            if made as u64 > z.left {
                self.read(&out[..z.left as usize]);
                return Err(Some(Unread::Limit));
            }
            z.left -= made as u64;
            self.read(&out[..made]);
            match status {
                Err(_) => return Err(Some(Unread::Corrupt)),
                Ok(flate2::Status::StreamEnd) => return Err(None),
                Ok(_) => {}
            }
            // The one message was read: its code (or that it has none) is known.
            if !self.sse && self.json.done {
                return Err(None);
            }
            // Decoded bytes may wait in the decoder while the output was full; else it
            // wants more input.
            if made < room && (bytes.is_empty() || used == 0) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ReplyProbe;
    use super::{Coding, Unread};
    use std::io::Write;

    fn gzip(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    }

    /// With every optional header field (FEXTRA, FNAME, FCOMMENT, FHCRC) the reader skips.
    fn gzip_with_header(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::GzBuilder::new()
            .extra(vec![7u8; 300])
            .filename("reply.json")
            .comment("a comment")
            .write(Vec::new(), flate2::Compression::fast());
        e.write_all(body).unwrap();
        let mut z = e.finish().unwrap();
        // flate2's builder has no FHCRC: set the flag and splice the two bytes in after the
        // comment's terminator (their value is not checked).
        z[3] |= 2;
        let at = 10 + 2 + 300 + "reply.json".len() + 1 + "a comment".len() + 1;
        z.splice(at..at, [0xab, 0xcd]);
        z
    }

    fn zlib(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    }

    fn codes(p: &ReplyProbe) -> Vec<(String, i64)> {
        p.errors
            .iter()
            .map(|(id, c)| (String::from_utf8_lossy(id).into_owned(), *c))
            .collect()
    }

    /// Reads `wire` whole, split at every point, and byte by byte: each reads the same.
    fn probe(sse: bool, coding: Coding, wire: &[u8]) -> (Vec<(String, i64)>, Option<Unread>) {
        let mut whole = ReplyProbe::coded(sse, coding, 1 << 20);
        whole.feed(wire);
        let want = (codes(&whole), whole.unread());
        for cut in 0..wire.len() {
            let mut p = ReplyProbe::coded(sse, coding, 1 << 20);
            p.feed(&wire[..cut]);
            p.feed(&wire[cut..]);
            assert_eq!((codes(&p), p.unread()), want, "split at {cut}");
        }
        let mut bytewise = ReplyProbe::coded(sse, coding, 1 << 20);
        for b in wire {
            bytewise.feed(std::slice::from_ref(b));
        }
        assert_eq!((codes(&bytewise), bytewise.unread()), want, "byte by byte");
        want
    }

    const ERROR: &[u8] = br#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"bad"}}"#;

    #[test]
    fn a_gzip_error_reply_gives_its_code() {
        let want = (vec![("7".to_string(), -32602)], None);
        assert_eq!(probe(false, Coding::Gzip, &gzip(ERROR)), want);
        assert_eq!(probe(false, Coding::Gzip, &gzip_with_header(ERROR)), want);
    }

    #[test]
    fn a_deflate_reply_is_read_zlib_wrapped_or_raw() {
        let want = (vec![("7".to_string(), -32602)], None);
        assert_eq!(probe(false, Coding::Deflate, &zlib(ERROR)), want);
        assert_eq!(probe(false, Coding::Deflate, &raw_deflate(ERROR)), want);
    }

    #[test]
    fn a_gzip_event_stream_gives_each_errors_code() {
        let sse = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n\
                    data: {\"jsonrpc\":\"2.0\",\"id\":\"a\",\n\
                    data: \"error\":{\"code\":-32001}}\n\n";
        let (got, unread) = probe(true, Coding::Gzip, &gzip(sse));
        assert_eq!(got, vec![(r#""a""#.to_string(), -32001)]);
        assert_eq!(unread, None);
    }

    #[test]
    fn a_result_stops_the_decoder_at_once() {
        // A large result after `result`: nothing of it is decoded beyond the first piece.
        let mut body = br#"{"jsonrpc":"2.0","id":1,"result":{"text":""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', 1 << 20));
        body.extend_from_slice(br#""}}"#);
        let mut p = ReplyProbe::coded(false, Coding::Gzip, 1 << 20);
        p.feed(&gzip(&body));
        assert!(codes(&p).is_empty());
        assert_eq!(
            p.unread(),
            None,
            "stopped because the message was read, not the bound"
        );
        assert!(matches!(p.body, super::Body::Stopped(None)));
    }

    #[test]
    fn a_gzip_bomb_is_decoded_to_the_bound_only() {
        // 64 MiB of whitespace inside the message before its error, as ~64 KiB on the wire.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(br#"{"jsonrpc":"2.0","id":1,"#).unwrap();
        let spaces = vec![b' '; 1 << 20];
        for _ in 0..64 {
            e.write_all(&spaces).unwrap();
        }
        e.write_all(br#""error":{"code":-32000}}"#).unwrap();
        let wire = e.finish().unwrap();
        assert!(wire.len() < 1 << 20, "{} bytes", wire.len());
        let mut p = ReplyProbe::coded(false, Coding::Gzip, 1 << 20);
        for piece in wire.chunks(16 * 1024) {
            p.feed(piece);
        }
        assert!(codes(&p).is_empty());
        assert_eq!(p.unread(), Some(Unread::Limit));
        // The same reply under a bound past its size is read to its error.
        let mut p = ReplyProbe::coded(false, Coding::Gzip, 65 << 20);
        p.feed(&wire);
        assert_eq!(codes(&p), vec![("1".to_string(), -32000)]);
        // 0 decodes nothing.
        let mut p = ReplyProbe::coded(false, Coding::Gzip, 0);
        p.feed(&gzip(ERROR));
        assert!(codes(&p).is_empty());
        assert_eq!(p.unread(), Some(Unread::Limit));
    }

    /// A reply that decodes to exactly `max_decoded` bytes is read whole; one byte more is
    /// `Limit` (whole, split at every point, byte by byte; in one decoder chunk or several).
    #[test]
    fn a_reply_of_exactly_max_decoded_bytes_is_read_whole() {
        let event = "data: {\"jsonrpc\":\"2.0\",\"id\":\"a\",\"error\":{\"code\":-32001}}\n\n";
        let padded = format!(": {}\n{event}", "p".repeat(3 * super::INFLATE_CHUNK));
        let cases = [
            (true, event.to_string()),
            (true, padded),
            (false, String::from_utf8(ERROR.to_vec()).unwrap()),
        ];
        for (sse, body) in &cases {
            let len = body.len() as u64;
            for (coding, wire) in [
                (Coding::Gzip, gzip(body.as_bytes())),
                (Coding::Deflate, zlib(body.as_bytes())),
                (Coding::Deflate, raw_deflate(body.as_bytes())),
            ] {
                let read = |max: u64, pieces: &[&[u8]]| {
                    let mut p = ReplyProbe::coded(*sse, coding, max);
                    for piece in pieces {
                        p.feed(piece);
                    }
                    (p.unread(), codes(&p).len())
                };
                let bytewise: Vec<&[u8]> = wire.chunks(1).collect();
                for cut in (0..=wire.len()).map(|c| [&wire[..c], &wire[c..]]) {
                    let at = format!("{coding:?} sse {sse} cut at {}", cut[0].len());
                    assert_eq!(read(len, &cut), (None, 1), "max: {at}");
                    assert_eq!(read(len - 1, &cut).0, Some(Unread::Limit), "max - 1: {at}");
                }
                assert_eq!(
                    read(len, &bytewise),
                    (None, 1),
                    "max: {coding:?} byte by byte"
                );
                assert_eq!(
                    read(len - 1, &bytewise).0,
                    Some(Unread::Limit),
                    "max - 1: {coding:?} byte by byte"
                );
            }
        }
    }

    #[test]
    fn corrupt_or_unknown_codings_are_not_read() {
        let mut p = ReplyProbe::coded(false, Coding::Gzip, 1 << 20);
        p.feed(ERROR);
        assert_eq!(p.unread(), Some(Unread::Corrupt), "no gzip magic");
        let mut bad = gzip(ERROR);
        bad.truncate(10);
        bad.extend_from_slice(&[0xff; 32]);
        let mut p = ReplyProbe::coded(false, Coding::Gzip, 1 << 20);
        p.feed(&bad);
        assert_eq!(p.unread(), Some(Unread::Corrupt), "no deflate stream");
        let mut p = ReplyProbe::coded(false, Coding::Other, 1 << 20);
        p.feed(ERROR);
        assert!(codes(&p).is_empty());
        assert_eq!(p.unread(), Some(Unread::Encoding));
    }

    /// Damaged compressed bytes (each of a real reply's bytes flipped in turn, then a cut at
    /// each point) end in `Corrupt` or a reading, never a panic; every piece after is ignored.
    #[test]
    fn damaged_compressed_bytes_never_panic() {
        for (coding, wire) in [
            (Coding::Gzip, gzip_with_header(ERROR)),
            (Coding::Deflate, zlib(ERROR)),
            (Coding::Deflate, raw_deflate(ERROR)),
        ] {
            for i in 0..wire.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = wire.clone();
                    bad[i] ^= flip;
                    let mut p = ReplyProbe::coded(i % 2 == 0, coding, 1 << 20);
                    p.feed(&bad[..i + 1]);
                    p.feed(&bad[i + 1..]);
                    p.feed(&wire);
                    let _ = p.error_for(Some(b"7"), true);
                }
                let mut p = ReplyProbe::coded(false, coding, 1 << 20);
                p.feed(&wire[..i]);
                assert_eq!(
                    p.unread(),
                    None,
                    "a cut reply is not corrupt ({coding:?} at {i})"
                );
            }
        }
    }

    #[test]
    fn content_encoding_values() {
        assert_eq!(Coding::of(b""), Coding::Identity);
        assert_eq!(Coding::of(b" Identity "), Coding::Identity);
        assert_eq!(Coding::of(b"GZIP"), Coding::Gzip);
        assert_eq!(Coding::of(b"x-gzip"), Coding::Gzip);
        assert_eq!(Coding::of(b"deflate"), Coding::Deflate);
        for other in ["br", "zstd", "compress", "gzip, br", "gzip;q=1"] {
            assert_eq!(Coding::of(other.as_bytes()), Coding::Other, "{other}");
        }
    }
}
