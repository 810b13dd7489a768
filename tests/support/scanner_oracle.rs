//! The scanner's oracle: checks everything `jsonrpc::scan` extracted against a full parse of the
//! same body. Shared by the data-file cases, the property tests and the fuzz target, each of
//! which puts the scanner module at its crate root as `jsonrpc`.
#![allow(dead_code)]

use super::jsonrpc::{scan, Body, Message, MessageKind, Raw, ScanErrorKind, ScanLimits, Str};
use serde_json::{Map, Value};

/// Scans `body` with default limits and checks the verdict. When the scanner accepts, serde_json
/// and sonic-rs must both parse the body and agree with every field it read. When it refuses,
/// its "not JSON" verdict must match serde_json's, except where it is knowingly stricter: the
/// depth limit (serde_json allows 127) and numbers of magnitude 1e308 and more.
pub fn check_scan(body: &[u8]) -> Result<(), String> {
    let scanned = scan(body, &ScanLimits::default());
    match &scanned {
        Ok(b) => {
            check_against_serde(body, b)?;
            check_against_sonic(body, b)
        }
        Err(e)
            if matches!(
                e.kind,
                ScanErrorKind::TooDeep | ScanErrorKind::NumberOutOfRange
            ) =>
        {
            Ok(())
        }
        Err(e) => {
            let serde_ok = serde_json::from_slice::<Value>(body).is_ok();
            if e.is_parse_error() == serde_ok {
                return Err(format!(
                    "scanner says {e} but serde_json {}",
                    if serde_ok { "parses it" } else { "does not" }
                ));
            }
            Ok(())
        }
    }
}

/// Parses `body` with serde_json (the reference) and checks that it agrees with the scanner's
/// reading on every field. Call only when the scanner accepted the body.
pub fn check_against_serde(body: &[u8], scanned: &Body<'_>) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("scanner accepted what serde_json refuses: {e}"))?;
    check_read(&v, body, scanned, serde_parse, true).map_err(|e| format!("serde_json: {e}"))
}

/// Same as `check_against_serde` with sonic-rs as the parser, read through sonic-rs's own value
/// type, which keeps the first of duplicate keys where serde_json keeps the last.
pub fn check_against_sonic(body: &[u8], scanned: &Body<'_>) -> Result<(), String> {
    let v: sonic_rs::Value = sonic_rs::from_slice(body)
        .map_err(|e| format!("scanner accepted what sonic-rs refuses: {e}"))?;
    check_read(&from_sonic(&v), body, scanned, sonic_parse, true)
        .map_err(|e| format!("sonic-rs: {e}"))
}

/// sonic-rs's reading as a serde_json value, first duplicate key winning as `sonic_rs::get` does.
fn from_sonic(v: &sonic_rs::Value) -> Value {
    use sonic_rs::{JsonContainerTrait, JsonType, JsonValueTrait};
    match v.get_type() {
        JsonType::Null => Value::Null,
        JsonType::Boolean => Value::Bool(v.as_bool().unwrap_or_default()),
        JsonType::Number => {
            if let Some(i) = v.as_i64() {
                Value::from(i)
            } else if let Some(u) = v.as_u64() {
                Value::from(u)
            } else {
                v.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        JsonType::String => Value::String(v.as_str().unwrap_or_default().to_string()),
        JsonType::Array => Value::Array(
            v.as_array()
                .map(|a| a.iter().map(from_sonic).collect())
                .unwrap_or_default(),
        ),
        JsonType::Object => {
            let mut o = Map::new();
            if let Some(obj) = v.as_object() {
                for (k, e) in obj.iter() {
                    if !o.contains_key(k) {
                        o.insert(k.to_string(), from_sonic(e));
                    }
                }
            }
            Value::Object(o)
        }
    }
}

/// A full parser, for reading the pieces of the body the scanner points at.
pub type Parse = fn(&[u8]) -> Result<Value, String>;

pub fn serde_parse(text: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(text)
        .map_err(|e| format!("{:?} does not parse: {e}", String::from_utf8_lossy(text)))
}

pub fn sonic_parse(text: &[u8]) -> Result<Value, String> {
    sonic_rs::from_slice::<sonic_rs::Value>(text)
        .map(|v| from_sonic(&v))
        .map_err(|e| format!("{:?} does not parse: {e}", String::from_utf8_lossy(text)))
}

/// Checks the scanner's reading of `body` against `v`, the value `body` was written from (floats
/// compared with `same`'s tolerance); `parse` is the parser used on the spans the scanner reports.
pub fn check_against(
    v: &Value,
    body: &[u8],
    scanned: &Body<'_>,
    parse: Parse,
) -> Result<(), String> {
    check_read(v, body, scanned, parse, false)
}

/// `check_against`; with `exact`, `v` is `parse`'s own reading of `body` and ids must then match
/// it exactly (`check_id_exact`).
fn check_read(
    v: &Value,
    body: &[u8],
    scanned: &Body<'_>,
    parse: Parse,
    exact: bool,
) -> Result<(), String> {
    match (v, scanned) {
        (Value::Object(o), Body::Single(m)) => check_message(o, body, m, parse, exact),
        (Value::Array(a), Body::Batch(ms)) => {
            if a.len() != ms.len() {
                return Err(format!("batch of {} read as {}", a.len(), ms.len()));
            }
            for (i, (e, m)) in a.iter().zip(ms).enumerate() {
                let o = e
                    .as_object()
                    .ok_or(format!("batch element {i} is not an object"))?;
                check_message(o, body, m, parse, exact)
                    .map_err(|err| format!("batch element {i}: {err}"))?;
            }
            Ok(())
        }
        _ => Err("top-level shape differs".into()),
    }
}

/// Equality of JSON values where floats may differ in the last bits: serde_json's default float
/// parsing is not correctly rounded, so the same text can read differently in two parsers.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn check_str(
    what: &str,
    expect: Option<&Value>,
    got: &Option<Str<'_>>,
    body: &[u8],
    parse: Parse,
) -> Result<(), String> {
    let expect = match expect {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    match (expect, got) {
        (None, None) => Ok(()),
        (Some(e), Some(g)) => {
            if g.value != e {
                return Err(format!(
                    "{what}: scanner read {:?}, parser {:?}",
                    g.value, e
                ));
            }
            let token = body
                .get(g.span.clone())
                .ok_or(format!("{what}: span out of body"))?;
            if parse(token)? != Value::String(e.to_string()) {
                return Err(format!("{what}: span {:?} is not the string token", g.span));
            }
            Ok(())
        }
        (e, g) => Err(format!(
            "{what}: scanner read {:?}, parser {:?}",
            g.as_ref().map(|g| &g.value),
            e
        )),
    }
}

fn check_raw(
    what: &str,
    expect: Option<&Value>,
    got: &Option<Raw<'_>>,
    body: &[u8],
    parse: Parse,
) -> Result<(), String> {
    let expect = expect.filter(|e| e.is_string() || e.is_number());
    match (expect, got) {
        (None, None) => Ok(()),
        (Some(e), Some(g)) => {
            if body.get(g.start..g.start + g.text.len()) != Some(g.text) {
                return Err(format!(
                    "{what}: start {} does not point at its text",
                    g.start
                ));
            }
            let parsed = parse(g.text)?;
            if !same(&parsed, e) {
                return Err(format!("{what}: scanner read {parsed}, parser {e}"));
            }
            Ok(())
        }
        (e, g) => Err(format!(
            "{what}: scanner read {:?}, parser {:?}",
            g.as_ref().map(|g| String::from_utf8_lossy(g.text)),
            e
        )),
    }
}

/// `params.arguments`: read (raw) exactly when it is an object, and its top-level keys are the
/// parser's. Duplicates there were refused, so the parser's keys (last or first wins) are one
/// set, and the scanner's list must be that set.
fn check_arguments(
    expect: Option<&Value>,
    body: &[u8],
    m: &Message<'_>,
    parse: Parse,
) -> Result<(), String> {
    match (expect, &m.arguments) {
        (Some(Value::Object(o)), Some(g)) => {
            if body.get(g.start..g.start + g.text.len()) != Some(g.text) {
                return Err(format!(
                    "arguments: start {} does not point at its text",
                    g.start
                ));
            }
            if !same(&parse(g.text)?, &Value::Object(o.clone())) {
                return Err("arguments: the span is not the arguments object".into());
            }
            // As sets: sonic-rs's objects do not keep the body's order (the unit tests and the
            // data-file cases check the order).
            let mut keys: Vec<String> = m.argument_keys().map(|k| k.into_owned()).collect();
            let mut want: Vec<&String> = o.keys().collect();
            keys.sort();
            want.sort();
            if keys.iter().collect::<Vec<_>>() != want {
                return Err(format!(
                    "argument keys: scanner read {keys:?}, parser {want:?}"
                ));
            }
            Ok(())
        }
        (Some(Value::Object(_)), None) => Err("arguments: an object, not read".into()),
        (_, None) => {
            if m.argument_keys().next().is_some() {
                return Err("argument keys listed without arguments".into());
            }
            Ok(())
        }
        (_, Some(_)) => Err("arguments: read, but not an object".into()),
    }
}

/// An id is matched exactly, not with `same`'s float tolerance: two ids that differ in the last
/// bits are two requests. The scanner's id text, parsed by this parser, must equal the parser's
/// id value bit for bit (numbers as the parser sees them, strings after unescaping).
fn check_id_exact(
    expect: Option<&Value>,
    got: &Option<Raw<'_>>,
    parse: Parse,
) -> Result<(), String> {
    let (Some(e), Some(g)) = (expect, got) else {
        return Ok(());
    };
    let parsed = parse(g.text)?;
    let equal = parsed == *e;
    if !equal {
        return Err(format!("id: scanner's text reads {parsed}, parser {e}"));
    }
    Ok(())
}

fn check_message(
    o: &Map<String, Value>,
    body: &[u8],
    m: &Message<'_>,
    parse: Parse,
    exact: bool,
) -> Result<(), String> {
    if o.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Err("scanner accepted a message whose jsonrpc is not \"2.0\"".into());
    }
    let (has_method, has_id) = (o.contains_key("method"), o.contains_key("id"));
    let (has_result, has_error) = (o.contains_key("result"), o.contains_key("error"));
    let kind = match (has_method, has_id, has_result, has_error) {
        (true, true, false, false) => MessageKind::Request,
        (true, false, false, false) => MessageKind::Notification,
        (false, true, true, false) => MessageKind::Response,
        (false, true, false, true) => MessageKind::Error,
        _ => return Err(format!("scanner accepted a message of no kind: {o:?}")),
    };
    if m.kind != kind {
        return Err(format!("kind: scanner read {:?}, parser {kind:?}", m.kind));
    }
    if let Some(id) = o.get("id") {
        if !(id.is_string() || id.is_number()) {
            return Err(format!("scanner accepted id {id}"));
        }
    }
    check_raw("id", o.get("id"), &m.id, body, parse)?;
    if exact {
        check_id_exact(o.get("id"), &m.id, parse)?;
    }
    check_str("method", o.get("method"), &m.method, body, parse)?;
    let empty = Map::new();
    let params = match o.get("params") {
        None | Some(Value::Array(_)) => &empty,
        Some(Value::Object(p)) => p,
        Some(p) => return Err(format!("scanner accepted params {p}")),
    };
    let meta = params
        .get("_meta")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let result = o.get("result").and_then(Value::as_object).unwrap_or(&empty);
    check_str("name", params.get("name"), &m.name, body, parse)?;
    check_str("uri", params.get("uri"), &m.uri, body, parse)?;
    check_str("cursor", params.get("cursor"), &m.cursor, body, parse)?;
    if m.meta != params.get("_meta").is_some_and(Value::is_object) {
        return Err(format!(
            "meta: scanner read {}, parser {:?}",
            m.meta,
            params.get("_meta")
        ));
    }
    check_raw(
        "progressToken",
        meta.get("progressToken"),
        &m.progress_token,
        body,
        parse,
    )?;
    if let Some(t) = meta.get("progressToken") {
        if !(t.is_string() || t.is_number()) {
            return Err(format!("scanner accepted progressToken {t}"));
        }
    }
    check_raw(
        "requestId",
        params.get("requestId"),
        &m.request_id,
        body,
        parse,
    )?;
    check_str("taskId", params.get("taskId"), &m.task_id, body, parse)?;
    check_arguments(params.get("arguments"), body, m, parse)?;
    if m.task != params.contains_key("task") {
        return Err(format!(
            "task: scanner read {}, parser {}",
            m.task,
            params.contains_key("task")
        ));
    }
    check_str(
        "meta protocolVersion",
        meta.get("io.modelcontextprotocol/protocolVersion"),
        &m.meta_protocol_version,
        body,
        parse,
    )?;
    check_str(
        "meta traceparent",
        meta.get("traceparent"),
        &m.meta_traceparent,
        body,
        parse,
    )?;
    let pv = match kind {
        MessageKind::Request | MessageKind::Notification => params.get("protocolVersion"),
        MessageKind::Response | MessageKind::Error => result.get("protocolVersion"),
    };
    check_str("protocolVersion", pv, &m.protocol_version, body, parse)?;
    let span = body.get(m.span.clone()).ok_or("span out of body")?;
    if !same(&parse(span)?, &Value::Object(o.clone())) {
        return Err(format!("span {:?} is not this message", m.span));
    }
    Ok(())
}
