//! The identity a verified client certificate proves: its subject (as an RFC 4514 string) and
//! subject alternative names. Read from the DER of a certificate rustls has already verified
//! (chain, validity, signature), so this walks well-formed DER; anything it does not know is
//! skipped or shown as a dotted OID, never a panic.

/// A verified client certificate's identity, kept on the client connection
/// (`proxy::client::Client::peer`) for the request context (authentication, audit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// RFC 4514 order (most specific first), e.g. `CN=agent-7,O=Example`.
    pub subject: String,
    /// Subject alternative names as `DNS:name`, `URI:uri`, `email:addr`, `IP:addr`.
    pub sans: Vec<String>,
}

impl PeerIdentity {
    /// Reads a certificate's DER; `None` only for DER this walker cannot follow.
    pub fn from_der(cert: &[u8]) -> Option<PeerIdentity> {
        let (tag, cert_body, _) = tlv(cert)?;
        if tag != 0x30 {
            return None;
        }
        let (tag, tbs, _) = tlv(cert_body)?;
        if tag != 0x30 {
            return None;
        }
        let mut rest = tbs;
        // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
        let (tag, _, after) = tlv(rest)?;
        if tag == 0xa0 {
            rest = after;
        }
        for _ in 0..4 {
            rest = tlv(rest)?.2;
        }
        let (_, subject, after) = tlv(rest)?;
        rest = tlv(after)?.2; // subjectPublicKeyInfo
        let mut sans = Vec::new();
        while let Some((tag, body, after)) = tlv(rest) {
            if tag == 0xa3 {
                sans = extensions(body).unwrap_or_default();
            }
            rest = after;
        }
        Some(PeerIdentity {
            subject: distinguished_name(subject)?,
            sans,
        })
    }
}

/// One DER element: (tag, contents, what follows). Short and long definite lengths only.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn oid_string(oid: &[u8]) -> String {
    let mut parts: Vec<u64> = Vec::new();
    let mut acc = 0u64;
    for (i, &b) in oid.iter().enumerate() {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() && i < 9 {
                let first = (acc / 40).min(2);
                parts.push(first);
                parts.push(acc - first * 40);
            } else {
                parts.push(acc);
            }
            acc = 0;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x55, 0x04, 0x05] => "serialNumber".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID".into(),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress".into(),
        other => oid_string(other),
    }
}

/// RFC 4514 escaping of an attribute value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, ch) in value.chars().enumerate() {
        let special = matches!(ch, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(ch, ' ' | '#'))
            || (i == value.chars().count() - 1 && ch == ' ');
        if special {
            out.push('\\');
        }
        if ch.is_control() {
            out.push_str(&format!("\\{:02x}", ch as u32));
        } else {
            out.push(ch);
        }
    }
    out
}

fn string_value(tag: u8, body: &[u8]) -> String {
    match tag {
        // UTF8String, PrintableString, IA5String, TeletexString (read as Latin-1-ish UTF-8).
        0x0c | 0x13 | 0x16 | 0x14 => String::from_utf8_lossy(body).into_owned(),
        // BMPString: UTF-16BE.
        0x1e => {
            let units: Vec<u16> = body
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => {
            let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
            format!("#{hex}")
        }
    }
}

/// Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF AttributeTypeAndValue); RFC 4514
/// writes the last RDN first.
fn distinguished_name(name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let (_, set, after) = tlv(rest)?;
        let mut atvs = Vec::new();
        let mut inner = set;
        while !inner.is_empty() {
            let (_, atv, next) = tlv(inner)?;
            let (_, oid, value) = tlv(atv)?;
            let (vtag, vbody, _) = tlv(value)?;
            atvs.push(format!(
                "{}={}",
                attribute_name(oid),
                escape(&string_value(vtag, vbody))
            ));
            inner = next;
        }
        rdns.push(atvs.join("+"));
        rest = after;
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// Extensions ::= [3] { SEQUENCE OF Extension }; the subjectAltName (2.5.29.17) one, read.
fn extensions(explicit: &[u8]) -> Option<Vec<String>> {
    let (_, mut list, _) = tlv(explicit)?;
    while !list.is_empty() {
        let (_, ext, after) = tlv(list)?;
        let (_, oid, mut rest) = tlv(ext)?;
        if oid == [0x55, 0x1d, 0x11] {
            let (tag, _, after_crit) = tlv(rest)?;
            if tag == 0x01 {
                rest = after_crit;
            }
            let (_, octets, _) = tlv(rest)?;
            return general_names(octets);
        }
        list = after;
    }
    Some(Vec::new())
}

fn general_names(octets: &[u8]) -> Option<Vec<String>> {
    let (_, mut names, _) = tlv(octets)?;
    let mut out = Vec::new();
    while !names.is_empty() {
        let (tag, body, after) = tlv(names)?;
        let text = || String::from_utf8_lossy(body).into_owned();
        match tag {
            0x81 => out.push(format!("email:{}", text())),
            0x82 => out.push(format!("DNS:{}", text())),
            0x86 => out.push(format!("URI:{}", text())),
            0x87 => match body.len() {
                4 => out.push(format!(
                    "IP:{}",
                    std::net::Ipv4Addr::new(body[0], body[1], body[2], body[3])
                )),
                16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(body);
                    out.push(format!("IP:{}", std::net::Ipv6Addr::from(a)));
                }
                _ => {}
            },
            _ => {}
        }
        names = after;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_and_escapes() {
        assert_eq!(oid_string(&[0x55, 0x04, 0x03]), "2.5.4.3");
        assert_eq!(oid_string(&[0x2a, 0x86, 0x48]), "1.2.840");
        assert_eq!(escape("a,b"), "a\\,b");
        assert_eq!(escape(" x "), "\\ x\\ ");
        assert_eq!(escape("#1"), "\\#1");
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        for input in [
            &b""[..],
            b"\x30",
            b"\x30\x85\xff\xff\xff\xff\xff",
            b"\x30\x02\x30\x00",
        ] {
            assert!(PeerIdentity::from_der(input).is_none());
        }
    }
}
