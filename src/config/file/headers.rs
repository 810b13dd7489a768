//! Header values and `headers` mappings, as upstreams, `tracing.otlp` and auth read them: a
//! literal, or the secret a `${env:NAME}` / `${file:PATH}` reference reads, never echoed.

use serde_yaml_ng::Value;

use super::extract::{self, describe, Problems, Section};
use super::formats;
use crate::config::HeaderSource;

/// The `headers` mapping of a section: each name checked and lower-cased, each value read with
/// [`header_value`]. `reserved` is a name the caller sets itself, refused with its reason; a
/// repeated name is refused. Pushes onto `headers` and `sources` side by side.
pub(super) fn header_map(
    p: &mut Problems,
    s: &Section,
    env: &dyn Fn(&str) -> Option<String>,
    reserved: Option<(&str, &str)>,
    headers: &mut Vec<(String, String)>,
    sources: &mut Vec<HeaderSource>,
) {
    let Some((hpath, hv)) = s.value("headers") else {
        return;
    };
    let Value::Mapping(m) = hv else {
        p.add(
            &hpath,
            format!(
                "expected a mapping of header names to values, got {}",
                describe(hv)
            ),
        );
        return;
    };
    for (k, val) in m {
        let kname = match k {
            Value::String(k) => k.clone(),
            other => describe(other),
        };
        let at = extract::child(&hpath, &kname);
        let name = match k {
            Value::String(k) => formats::header_name(k),
            _ => Err("header names must be strings".to_string()),
        };
        let value = match val {
            Value::String(s) => header_value(s, env),
            // Numbers and booleans would be re-spelled by YAML (0x10 → 16): ask for quotes.
            _ => Err("expected a string value (put it in quotes)".to_string()),
        };
        match (name, value) {
            (Ok(n), _) if reserved.is_some_and(|(r, _)| n == r) => {
                p.add(&at, reserved.map_or("", |(_, why)| why))
            }
            (Ok(n), Ok(_)) if headers.iter().any(|(h, _)| *h == n) => p.add(
                &at,
                format!("duplicate header {n:?} (names are case-insensitive)"),
            ),
            (Ok(n), Ok((val, source))) => {
                headers.push((n, val));
                sources.push(source);
            }
            (Err(e), _) | (_, Err(e)) => p.add(&at, e),
        }
    }
}

/// An upstream header value: a literal (with `$${` unescaped) or the secret a `${env:NAME}` /
/// `${file:PATH}` reference reads. Problems name the variable or file, never the value.
pub(super) fn header_value(
    written: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, HeaderSource), String> {
    use formats::WrittenHeader;
    match formats::header_reference(written)? {
        WrittenHeader::Literal(v) => {
            formats::header_value(&v)?;
            Ok((v, HeaderSource::Literal))
        }
        WrittenHeader::Env(name) => {
            let v = env(&name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            formats::header_value(&v).map_err(|e| format!("environment variable {name}: {e}"))?;
            Ok((v, HeaderSource::Env(name)))
        }
        WrittenHeader::File(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read file {path}: {e}"))?;
            let v = text.strip_suffix('\n').unwrap_or(&text);
            let v = v.strip_suffix('\r').unwrap_or(v);
            formats::header_value(v).map_err(|e| format!("file {path}: {e}"))?;
            Ok((v.to_string(), HeaderSource::File(path)))
        }
    }
}
