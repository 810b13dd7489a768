//! RFC 8259 lexing over an already UTF-8-validated body: whitespace, strings, numbers, literals,
//! and an iterative validator for values the scanner does not read. It only says where tokens
//! are and whether they are valid; it never builds a tree and never recurses.

use std::borrow::Cow;

use super::{ScanError, ScanErrorKind};

/// A parse-level failure; what and where is in `Cursor::fatal`. Zero-sized, so lexing functions
/// return their results in registers rather than through a 32-byte error on every call.
#[derive(Debug)]
pub(crate) struct Stop;

pub(crate) type Lex<T> = Result<T, Stop>;

/// A cursor over the body. `s` is the same bytes as `b`, validated as UTF-8 once, so string
/// tokens can be sliced out as `&str` without validating again.
pub(crate) struct Cursor<'a> {
    pub b: &'a [u8],
    pub s: &'a str,
    pub i: usize,
    pub max_depth: u32,
    /// The first request-level (not parse-level) problem found. Scanning goes on after it so a
    /// syntax error later in the body still wins, as JSON-RPC asks (-32700 before -32600).
    pub pending: Option<ScanError>,
    /// Why lexing stopped, once a function has returned `Stop`.
    pub fatal: Option<ScanError>,
}

/// A lexed string token: `start..end` includes both quotes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StrTok {
    pub start: usize,
    pub end: usize,
    pub escaped: bool,
}

pub(crate) fn err(kind: ScanErrorKind, offset: usize) -> ScanError {
    ScanError { kind, offset }
}

fn syntax(what: &'static str, offset: usize) -> ScanError {
    err(ScanErrorKind::Syntax(what), offset)
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte of the result is set where `w` holds `"`, `\` or a control byte (< 0x20).
/// Only the lowest set byte is guaranteed exact (a borrow can flag bytes above a true hit), which
/// is all the caller uses.
#[inline(always)]
fn special_mask(w: u64) -> u64 {
    #[inline(always)]
    fn has_zero(x: u64) -> u64 {
        x.wrapping_sub(LO) & !x & HI
    }
    let quote = has_zero(w ^ (LO * b'"' as u64));
    let backslash = has_zero(w ^ (LO * b'\\' as u64));
    let control = w.wrapping_sub(LO * 0x20) & !w & HI;
    quote | backslash | control
}

fn hex_val(c: u8) -> Option<u16> {
    match c {
        b'0'..=b'9' => Some((c - b'0') as u16),
        b'a'..=b'f' => Some((c - b'a' + 10) as u16),
        b'A'..=b'F' => Some((c - b'A' + 10) as u16),
        _ => None,
    }
}

/// Four hex digits at `b[at..at+4]`, or None.
fn hex4(b: &[u8], at: usize) -> Option<u16> {
    let d = b.get(at..at.checked_add(4)?)?;
    let mut v = 0u16;
    for &c in d {
        v = (v << 4) | hex_val(c)?;
    }
    Some(v)
}

/// A stack of one bit per open container (1 = object), kept inline up to 256 levels; only a
/// configured `max_depth` above that can make it allocate.
struct BitStack {
    inline: [u64; 4],
    spill: Vec<u64>,
}

impl BitStack {
    fn new() -> Self {
        BitStack {
            inline: [0; 4],
            spill: Vec::new(),
        }
    }

    fn set(&mut self, at: usize, is_object: bool) {
        let (word, bit) = (at / 64, at % 64);
        let slot = if word < 4 {
            &mut self.inline[word]
        } else {
            let w = word - 4;
            if self.spill.len() <= w {
                self.spill.resize(w + 1, 0);
            }
            &mut self.spill[w]
        };
        if is_object {
            *slot |= 1 << bit;
        } else {
            *slot &= !(1 << bit);
        }
    }

    fn get(&self, at: usize) -> bool {
        let (word, bit) = (at / 64, at % 64);
        let w = if word < 4 {
            self.inline[word]
        } else {
            self.spill.get(word - 4).copied().unwrap_or(0)
        };
        w & (1 << bit) != 0
    }
}

impl<'a> Cursor<'a> {
    pub fn new(s: &'a str, max_depth: u32) -> Self {
        Cursor {
            b: s.as_bytes(),
            s,
            i: 0,
            max_depth,
            pending: None,
            fatal: None,
        }
    }

    /// Records a parse-level failure and returns the `Stop` that carries it up.
    #[cold]
    #[inline(never)]
    pub fn fail(&mut self, kind: ScanErrorKind, offset: usize) -> Stop {
        self.fatal = Some(err(kind, offset));
        Stop
    }

    #[cold]
    #[inline(never)]
    fn stash(&mut self, e: ScanError) -> Stop {
        self.fatal = Some(e);
        Stop
    }

    /// Fails on an unexpected byte (or end of input) at the cursor.
    #[cold]
    #[inline(never)]
    pub fn fail_unexpected(&mut self, what: &'static str) -> Stop {
        let e = self.unexpected(what);
        self.stash(e)
    }

    /// The error a `Stop` stands for.
    pub fn take_fatal(&mut self) -> ScanError {
        self.fatal
            .take()
            .unwrap_or(err(ScanErrorKind::Syntax("unknown"), self.i))
    }

    /// Records a request-level problem; only the first one is kept.
    pub fn note(&mut self, kind: ScanErrorKind, offset: usize) {
        if self.pending.is_none() {
            self.pending = Some(err(kind, offset));
        }
    }

    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    pub fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Consumes `c` (after whitespace) or fails with `what`.
    #[inline]
    pub fn expect(&mut self, c: u8, what: &'static str) -> Lex<()> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.fail_unexpected(what))
        }
    }

    /// The error for an unexpected byte or end of input at the cursor.
    pub fn unexpected(&self, what: &'static str) -> ScanError {
        if self.i >= self.b.len() {
            syntax("unexpected end of input", self.i)
        } else {
            syntax(what, self.i)
        }
    }

    /// Fails unless `depth` (the depth a container about to open would have) is within limits.
    #[inline]
    pub fn check_depth(&mut self, depth: u32) -> Lex<()> {
        if depth > self.max_depth {
            Err(self.fail(ScanErrorKind::TooDeep, self.i))
        } else {
            Ok(())
        }
    }

    /// Lexes the string starting at the cursor (which must be on `"`), validating control bytes,
    /// escapes and surrogate pairs. Returns whether it has escapes; the token ends at `self.i`.
    pub fn string(&mut self) -> Lex<bool> {
        let b = self.b;
        let start = self.i;
        let mut i = start + 1;
        let mut escaped = false;
        loop {
            // Most strings (keys, ids, short values) end within a few words: SWAR steps find the
            // end without a call.
            let mut words = 0;
            while let Some(chunk) = b.get(i..i + 8) {
                let mut w = [0u8; 8];
                w.copy_from_slice(chunk);
                let m = special_mask(u64::from_le_bytes(w));
                if m != 0 {
                    i += (m.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
                words += 1;
                if words == 4 {
                    // A long string: memchr jumps to the next quote or backslash, then a
                    // vectorized min checks the bytes jumped over for control characters.
                    let rest = b.get(i..).unwrap_or_default();
                    let p = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                    let skipped = rest.get(..p).unwrap_or_default();
                    if skipped.iter().fold(0xff, |m: u8, &c| m.min(c)) < 0x20 {
                        let at = i + skipped.iter().position(|&c| c < 0x20).unwrap_or(0);
                        return Err(
                            self.fail(ScanErrorKind::Syntax("control character in string"), at)
                        );
                    }
                    i += p;
                    break;
                }
            }
            match b.get(i) {
                None => return Err(self.fail(ScanErrorKind::Syntax("unterminated string"), start)),
                Some(b'"') => {
                    self.i = i + 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    i = match escape_end(b, i) {
                        Ok(next) => next,
                        Err(e) => return Err(self.stash(e)),
                    };
                }
                Some(0..=0x1f) => {
                    return Err(self.fail(ScanErrorKind::Syntax("control character in string"), i))
                }
                Some(_) => i += 1,
            }
        }
    }

    /// Lexes a string at the cursor into a token.
    #[inline(always)]
    pub fn string_tok(&mut self) -> Lex<StrTok> {
        let start = self.i;
        let escaped = self.string()?;
        Ok(StrTok {
            start,
            end: self.i,
            escaped,
        })
    }

    /// The decoded contents of a lexed string token: borrowed unless it has escapes.
    #[inline]
    pub fn decode(&self, t: StrTok) -> Cow<'a, str> {
        let raw = self.s.get(t.start + 1..t.end - 1).unwrap_or("");
        if t.escaped {
            Cow::Owned(unescape(raw))
        } else {
            Cow::Borrowed(raw)
        }
    }

    /// Lexes a number at the cursor. Numbers of magnitude 1e308 and more are refused: past f64::MAX
    /// serde_json rejects them while JavaScript reads Infinity, and just below it parsers round
    /// differently (serde_json refuses 1.7976931348623158e308, which rounds to f64::MAX).
    pub fn number(&mut self) -> Lex<()> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                i += 1;
                while let Some(b'0'..=b'9') = b.get(i) {
                    i += 1;
                }
            }
            _ => return Err(self.bad_number(i)),
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !matches!(b.get(i), Some(b'0'..=b'9')) {
                return Err(self.bad_number(i));
            }
            while let Some(b'0'..=b'9') = b.get(i) {
                i += 1;
            }
        }
        let mut has_exp = false;
        if let Some(b'e' | b'E') = b.get(i) {
            has_exp = true;
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            if !matches!(b.get(i), Some(b'0'..=b'9')) {
                return Err(self.bad_number(i));
            }
            while let Some(b'0'..=b'9') = b.get(i) {
                i += 1;
            }
        }
        self.i = i;
        // Without an exponent a number under 300 characters is below 1e300: no need to look.
        if has_exp || i - start > 300 {
            let text = self.s.get(start..i).unwrap_or("0");
            match text.parse::<f64>() {
                Ok(v) if v.abs() < 1e308 => {}
                _ => return Err(self.fail(ScanErrorKind::NumberOutOfRange, start)),
            }
        }
        Ok(())
    }

    #[cold]
    fn bad_number(&mut self, at: usize) -> Stop {
        let what = if at >= self.b.len() {
            "unexpected end of input"
        } else {
            "invalid number"
        };
        self.fail(ScanErrorKind::Syntax(what), at)
    }

    fn literal(&mut self, lit: &'static [u8]) -> Lex<()> {
        if self.b.get(self.i..self.i + lit.len()) == Some(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(self.fail_unexpected("invalid literal"))
        }
    }

    /// Lexes a scalar at the cursor (string, number, literal); containers are the caller's.
    #[inline]
    fn scalar(&mut self) -> Lex<()> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => Err(self.fail_unexpected("expected a value")),
        }
    }

    /// Lexes an object key and the `:` after it, leaving the cursor before the value.
    #[inline]
    pub fn key(&mut self) -> Lex<StrTok> {
        self.ws();
        if self.peek() != Some(b'"') {
            return Err(self.fail_unexpected("expected a string key"));
        }
        let k = self.string_tok()?;
        self.expect(b':', "expected ':'")?;
        self.ws();
        Ok(k)
    }

    /// Validates one value at the cursor (after whitespace) without reading it. `depth` is the
    /// depth of the container holding the value; containers inside count from there. Iterative:
    /// the only memory is one bit per open container.
    pub fn skip_value(&mut self, depth: u32) -> Lex<()> {
        let mut stack = BitStack::new();
        let mut open: usize = 0;
        'value: loop {
            self.ws();
            match self.peek() {
                Some(c @ (b'{' | b'[')) => {
                    self.check_depth(depth.saturating_add(open as u32).saturating_add(1))?;
                    let is_object = c == b'{';
                    self.i += 1;
                    self.ws();
                    let close = if is_object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                    } else {
                        stack.set(open, is_object);
                        open += 1;
                        if is_object {
                            self.key()?;
                        }
                        continue 'value;
                    }
                }
                _ => self.scalar()?,
            }
            // After a complete value: close containers or move to the next member.
            loop {
                if open == 0 {
                    return Ok(());
                }
                self.ws();
                let is_object = stack.get(open - 1);
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if is_object {
                            self.key()?;
                        }
                        continue 'value;
                    }
                    Some(b'}') if is_object => {
                        self.i += 1;
                        open -= 1;
                    }
                    Some(b']') if !is_object => {
                        self.i += 1;
                        open -= 1;
                    }
                    _ => {
                        return Err(self.fail_unexpected(if is_object {
                            "expected ',' or '}'"
                        } else {
                            "expected ',' or ']'"
                        }))
                    }
                }
            }
        }
    }
}

/// Validates the escape at `b[i] == '\\'` and returns the index after it.
fn escape_end(b: &[u8], i: usize) -> Result<usize, ScanError> {
    match b.get(i + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
        Some(b'u') => {
            let cp = hex4(b, i + 2).ok_or_else(|| syntax("invalid \\u escape", i))?;
            match cp {
                0xD800..=0xDBFF => {
                    if b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u') {
                        let lo =
                            hex4(b, i + 8).ok_or_else(|| syntax("invalid \\u escape", i + 6))?;
                        if (0xDC00..=0xDFFF).contains(&lo) {
                            return Ok(i + 12);
                        }
                    }
                    Err(err(ScanErrorKind::LoneSurrogate, i))
                }
                0xDC00..=0xDFFF => Err(err(ScanErrorKind::LoneSurrogate, i)),
                _ => Ok(i + 6),
            }
        }
        Some(_) => Err(syntax("invalid escape", i)),
        None => Err(syntax("unterminated string", i)),
    }
}

/// Decodes the contents of a string token that `Cursor::string` validated. Defensive anyway:
/// anything it could not decode becomes U+FFFD rather than a panic.
pub(crate) fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(p) = rest.find('\\') {
        out.push_str(&rest[..p]);
        let b = &rest.as_bytes()[p..];
        let (ch, used) = match b.get(1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => match hex4(b, 2) {
                Some(hi @ 0xD800..=0xDBFF) => match (b.get(6..8), hex4(b, 8)) {
                    (Some(b"\\u"), Some(lo @ 0xDC00..=0xDFFF)) => {
                        let cp = 0x10000 + (((hi as u32) - 0xD800) << 10) + ((lo as u32) - 0xDC00);
                        (char::from_u32(cp).unwrap_or('\u{FFFD}'), 12)
                    }
                    _ => ('\u{FFFD}', 6),
                },
                Some(cp) => (char::from_u32(cp as u32).unwrap_or('\u{FFFD}'), 6),
                None => ('\u{FFFD}', 2.min(b.len())),
            },
            _ => ('\u{FFFD}', 1),
        };
        out.push(ch);
        // `used` always ends on a char boundary: everything it spans is ASCII.
        rest = rest.get(used.min(rest.len() - p) + p..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex_string(s: &str) -> Result<StrTok, ScanError> {
        let mut c = Cursor::new(s, 64);
        c.string_tok().map_err(|Stop| c.take_fatal())
    }

    fn skip(s: &str, max_depth: u32) -> Result<usize, ScanError> {
        let mut c = Cursor::new(s, max_depth);
        c.skip_value(0).map(|()| c.i).map_err(|Stop| c.take_fatal())
    }

    fn number(s: &str) -> (Result<(), ScanError>, usize) {
        let mut c = Cursor::new(s, 64);
        let r = c.number().map_err(|Stop| c.take_fatal());
        (r, c.i)
    }

    #[test]
    fn special_mask_finds_first_special_byte() {
        for pos in 0..8 {
            for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                let mut w = [b'a'; 8];
                w[pos] = special;
                // A later special byte must not mask the first one.
                if pos < 7 {
                    w[7] = 0;
                }
                let m = special_mask(u64::from_le_bytes(w));
                assert_eq!((m.trailing_zeros() / 8) as usize, pos, "{w:?}");
            }
        }
        assert_eq!(special_mask(u64::from_le_bytes(*b"ab \x7f\x80\xff~!")), 0);
    }

    #[test]
    fn strings_lex_to_their_closing_quote() {
        let t = lex_string(r#""hello, world and more" tail"#).unwrap();
        assert_eq!((t.start, t.end, t.escaped), (0, 23, false));
        let t = lex_string(r#""a\"b\\c\/\b\f\n\r\t\u00e9\ud83d\ude00" x"#).unwrap();
        assert!(t.escaped);
        assert_eq!(t.end, 39);
    }

    #[test]
    fn strings_reject_bad_contents() {
        let kind = |s: &str| lex_string(s).unwrap_err().kind;
        assert_eq!(
            kind("\"a\u{1}b\""),
            ScanErrorKind::Syntax("control character in string")
        );
        assert_eq!(
            kind("\"long enough to use words\tx\""),
            ScanErrorKind::Syntax("control character in string")
        );
        assert_eq!(kind(r#""\x""#), ScanErrorKind::Syntax("invalid escape"));
        assert_eq!(
            kind(r#""\u12g4""#),
            ScanErrorKind::Syntax("invalid \\u escape")
        );
        assert_eq!(kind(r#""\ud800""#), ScanErrorKind::LoneSurrogate);
        assert_eq!(kind(r#""\udc00""#), ScanErrorKind::LoneSurrogate);
        assert_eq!(kind(r#""\ud800\u0041""#), ScanErrorKind::LoneSurrogate);
        assert_eq!(kind(r#""\ud800\ud800""#), ScanErrorKind::LoneSurrogate);
        assert_eq!(
            kind(r#""abc"#),
            ScanErrorKind::Syntax("unterminated string")
        );
        assert_eq!(
            kind(r#""abc\"#),
            ScanErrorKind::Syntax("unterminated string")
        );
    }

    #[test]
    fn every_length_and_position_takes_the_same_path() {
        // Covers the byte tail, the SWAR words and the memchr jump alike.
        for len in 0..90 {
            let plain = format!("\"{}\"", "é".repeat(len / 2) + &"a".repeat(len % 2));
            let t = lex_string(&plain).unwrap();
            assert_eq!((t.end, t.escaped), (plain.len(), false), "{len}");
            for pos in 0..len {
                let mut body = vec![b'a'; len];
                body[pos] = 0x01;
                let text = format!("\"{}\"", String::from_utf8(body.clone()).unwrap());
                let e = lex_string(&text).unwrap_err();
                assert_eq!(e.offset, pos + 1, "control at {pos} of {len}");
                body[pos] = b'\\';
                body.insert(pos + 1, b'n');
                let text = format!("\"{}\"", String::from_utf8(body).unwrap());
                let t = lex_string(&text).unwrap();
                assert_eq!(
                    (t.end, t.escaped),
                    (text.len(), true),
                    "escape at {pos} of {len}"
                );
            }
        }
    }

    #[test]
    fn unescape_decodes_every_escape() {
        assert_eq!(
            unescape(r#"a\"b\\c\/\b\f\n\r\t"#),
            "a\"b\\c/\u{8}\u{c}\n\r\t"
        );
        assert_eq!(unescape(r"del\u0065te \u00e9 \ud83d\ude00"), "delete é 😀");
        assert_eq!(unescape("plain ü"), "plain ü");
        // Never panics on input the lexer would have refused.
        assert_eq!(unescape(r"\ud800"), "\u{FFFD}");
        assert_eq!(unescape(r"x\"), "x\u{FFFD}");
        assert_eq!(unescape(r"\u12"), "\u{FFFD}12");
    }

    #[test]
    fn numbers_follow_the_grammar() {
        for ok in [
            "0",
            "-0",
            "12",
            "-1.5",
            "1e5",
            "1E+5",
            "1.0e-5",
            "123456789012345678901234567890",
            "1e-400",
            "9.99e307",
            "0e99999999",
        ] {
            let (r, end) = number(ok);
            assert!(r.is_ok(), "{ok}");
            assert_eq!(end, ok.len(), "{ok}");
        }
        for bad in ["-", "1.", ".5", "1e", "1e+", "-a", "+1"] {
            let (r, end) = number(bad);
            assert!(r.is_err() || end < bad.len(), "{bad}");
        }
        // "01" lexes as 0 then stops: the caller sees a stray digit.
        assert_eq!(number("01"), (Ok(()), 1));
        let long = format!("1{}", "0".repeat(309));
        for big in [
            "1e400",
            "-1e309",
            "1.8e308",
            "1e308",
            "1.7976931348623157e308",
            "-1.7976931348623158e308",
            &long,
        ] {
            let kind = number(big).0.map_err(|e| e.kind);
            assert_eq!(kind, Err(ScanErrorKind::NumberOutOfRange), "{big}");
        }
        assert!(number(&format!("1{}", "0".repeat(307))).0.is_ok());
    }

    #[test]
    fn skip_value_validates_nested_values() {
        let v = r#"{"a":[1,{"b":null},[],{}],"c":"d","e":true,"f":false} x"#;
        assert_eq!(skip(v, 64).unwrap(), v.len() - 2);
        assert!(skip(r#"{"a":1,}"#, 64).is_err());
        assert!(skip(r#"[1,]"#, 64).is_err());
        assert!(skip(r#"[1 2]"#, 64).is_err());
        assert!(skip(r#"{"a" 1}"#, 64).is_err());
        assert!(skip(r#"{1:2}"#, 64).is_err());
        assert!(skip(r#"[}"#, 64).is_err());
        assert!(skip(r#"{"a":1]"#, 64).is_err());
        assert!(skip("tru", 64).is_err());
        assert!(skip("", 64).is_err());
    }

    #[test]
    fn skip_value_counts_depth_iteratively() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(skip(&nest(64), 64).is_ok());
        assert_eq!(
            skip(&nest(65), 64).unwrap_err().kind,
            ScanErrorKind::TooDeep
        );
        // Deeper than the inline bit stack, and far deeper than any call stack would allow.
        assert!(skip(&nest(300), 300).is_ok());
        let deep = format!("{}1{}", "[{\"a\":".repeat(100_000), "}]".repeat(100_000));
        assert!(skip(&deep, 200_000).is_ok());
        assert_eq!(skip(&deep, 64).unwrap_err().kind, ScanErrorKind::TooDeep);
    }

    #[test]
    fn bit_stack_remembers_each_level() {
        let mut s = BitStack::new();
        for i in 0..1000 {
            s.set(i, i % 3 == 0);
        }
        for i in 0..1000 {
            assert_eq!(s.get(i), i % 3 == 0, "{i}");
        }
    }
}
