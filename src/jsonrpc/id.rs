//! Comparing JSON-RPC ids as JSON values (JSON-RPC 2.0 §5: the response id is "the same as the
//! value of the id member in the Request"), not as bytes: `1E2` is `100`, `-0` is `0`, `"\u0031"`
//! is `"1"`, `"a\/b"` is `"a/b"`. Inputs are raw tokens the scanner has already validated.

use std::borrow::Cow;

/// Whether two raw id tokens (string with quotes, number, or `null`) denote the same value.
pub fn same_id(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    match (a.first(), b.first()) {
        (Some(b'"'), Some(b'"')) => match (string_value(a), string_value(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        (Some(x), Some(y)) if is_number_start(*x) && is_number_start(*y) => {
            match (Decimal::parse(a), Decimal::parse(b)) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            }
        }
        _ => false,
    }
}

fn is_number_start(b: u8) -> bool {
    b == b'-' || b.is_ascii_digit()
}

fn string_value(tok: &[u8]) -> Option<Cow<'_, str>> {
    let inner = std::str::from_utf8(tok.get(1..tok.len().checked_sub(1)?)?).ok()?;
    Some(if inner.contains('\\') {
        Cow::Owned(super::lex::unescape(inner))
    } else {
        Cow::Borrowed(inner)
    })
}

/// An exact decimal: sign, significant digits without leading or trailing zeros, and the power
/// of ten of the last digit. Zero is `(false, [], 0)` whatever its sign or spelling.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

impl Decimal {
    fn parse(tok: &[u8]) -> Option<Decimal> {
        let (negative, rest) = match tok.split_first()? {
            (b'-', r) => (true, r),
            _ => (false, tok),
        };
        let mant_end = rest
            .iter()
            .position(|b| *b == b'e' || *b == b'E')
            .unwrap_or(rest.len());
        let (mant, exp) = rest.split_at(mant_end);
        let mut exponent: i64 = if exp.is_empty() {
            0
        } else {
            let e = std::str::from_utf8(&exp[1..]).ok()?;
            // Validated tokens; anything past ±10^15 is not a plausible id.
            let e = e.strip_prefix('+').unwrap_or(e);
            if e.len() > 16 {
                return None;
            }
            e.parse().ok()?
        };
        let (int, frac) = match mant.iter().position(|b| *b == b'.') {
            Some(p) => (&mant[..p], &mant[p + 1..]),
            None => (mant, &mant[..0]),
        };
        exponent -= frac.len() as i64;
        let mut digits: Vec<u8> = int.iter().chain(frac).copied().collect();
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        while digits.last() == Some(&b'0') {
            digits.pop();
            exponent += 1;
        }
        let lead = digits.iter().take_while(|d| **d == b'0').count();
        digits.drain(..lead);
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits,
                exponent: 0,
            });
        }
        Some(Decimal {
            negative,
            digits,
            exponent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::same_id;

    #[test]
    fn equal_values_in_other_spellings() {
        for (a, b) in [
            ("100", "1E2"),
            ("100", "1e+2"),
            ("100", "100.0"),
            ("100", "1000e-1"),
            ("0", "-0"),
            ("0", "0.0e5"),
            ("-12", "-1.2e1"),
            ("\"1\"", "\"\\u0031\""),
            ("\"a/b\"", "\"a\\/b\""),
            ("\"é\"", "\"\\u00e9\""),
            ("null", "null"),
        ] {
            assert!(same_id(a.as_bytes(), b.as_bytes()), "{a} = {b}");
            assert!(same_id(b.as_bytes(), a.as_bytes()), "{b} = {a}");
        }
    }

    #[test]
    fn different_values() {
        for (a, b) in [
            ("100", "10"),
            ("1", "\"1\""),
            ("1", "-1"),
            ("0", "null"),
            ("\"a\"", "\"A\""),
            ("1", "1.5"),
            ("15", "1.5e0"),
            ("\"\"", "null"),
        ] {
            assert!(!same_id(a.as_bytes(), b.as_bytes()), "{a} != {b}");
        }
    }
}
