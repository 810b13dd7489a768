//! Fuzzes the gateway's `Mcp-Method`/`Mcp-Name` check (`mcp::mirrored::check_mirrored`, fed the
//! way src/proxy/stateless/ feeds it: the scanner's method and, for the methods that mirror one,
//! its `params.name` or `params.uri`). Whenever the check accepts the headers, serde_json (last of
//! duplicate keys wins) and sonic-rs (first wins) must each read from the body the method and the
//! name the decoded headers say: a header that agrees with the scanner but not with what an
//! upstream parses would let a request pass as another tool.
//!
//! Input: line 1 is the `Mcp-Method` value, line 2 the `Mcp-Name` value (an empty line: the
//! header is absent), the rest is the body. Seeds in fuzz/corpus/header_agreement.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sonic_rs::JsonValueTrait;

#[path = "../../src/jsonrpc/mod.rs"]
#[allow(dead_code, unused_imports)]
mod jsonrpc;

#[path = "../../src/mcp/mirrored.rs"]
mod mirrored;

use jsonrpc::{Body, MessageKind, ScanLimits};
use mirrored::{check_mirrored, header_value, Mirrored};

/// The first line of `data` (`None` when empty: the header is absent) and what follows it.
fn header_line(data: &[u8]) -> (Option<&[u8]>, &[u8]) {
    let (line, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    ((!line.is_empty()).then_some(line), rest)
}

/// The body field `Mcp-Name` mirrors for `method` (the revision's rule, as `modern::name_source`).
fn name_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// One full parser's reading: the method and `params.<field>`, each when it is a string.
struct Reading {
    parser: &'static str,
    method: Option<String>,
    field: Option<String>,
}

fn serde_reading(body: &[u8], field: &str) -> Reading {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("scanner accepted what serde_json refuses: {e}"));
    Reading {
        parser: "serde_json",
        method: v.get("method").and_then(Value::as_str).map(str::to_owned),
        field: v
            .get("params")
            .and_then(|p| p.get(field))
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

fn sonic_reading(body: &[u8], field: &str) -> Reading {
    let v: sonic_rs::Value = sonic_rs::from_slice(body)
        .unwrap_or_else(|e| panic!("scanner accepted what sonic-rs refuses: {e}"));
    Reading {
        parser: "sonic-rs",
        method: v.get("method").and_then(|m| m.as_str()).map(str::to_owned),
        field: v
            .get("params")
            .and_then(|p| p.get(field))
            .and_then(|f| f.as_str())
            .map(str::to_owned),
    }
}

fuzz_target!(|data: &[u8]| {
    let (header_method, rest) = header_line(data);
    let (header_name, body) = header_line(rest);
    // The stateless path takes one message, a request or a notification, with a method.
    let Ok(Body::Single(m)) = jsonrpc::scan(body, &ScanLimits::default()) else {
        return;
    };
    if !matches!(m.kind, MessageKind::Request | MessageKind::Notification) {
        return;
    }
    let Some(method) = &m.method else {
        return;
    };
    let field = name_field(&method.value);
    let name = field.map(|f| {
        match f {
            "name" => m.name.as_ref(),
            _ => m.uri.as_ref(),
        }
        .map(|s| s.value.as_bytes())
    });
    let mirrored = Mirrored {
        header_method,
        header_name,
        method: method.value.as_bytes(),
        request: m.kind == MessageKind::Request,
        name,
    };
    if check_mirrored(&mirrored).is_err() {
        return;
    }
    // Accepted: what the headers say, decoded, is what each full parser reads.
    let said_method = header_method.map(|h| header_value(h).expect("accepted yet undecodable"));
    // `Mcp-Name` is read only for the methods that mirror a name; elsewhere it is ignored.
    let said_name = header_name
        .filter(|_| field.is_some())
        .map(|h| header_value(h).expect("accepted yet undecodable"));
    let field_name = field.unwrap_or("name");
    for r in [
        serde_reading(body, field_name),
        sonic_reading(body, field_name),
    ] {
        if let Some(h) = &said_method {
            assert_eq!(
                Some(&h[..]),
                r.method.as_deref().map(str::as_bytes),
                "Mcp-Method accepted but {} reads another method\ninput: {:?}",
                r.parser,
                String::from_utf8_lossy(data)
            );
        }
        if m.kind == MessageKind::Request {
            assert!(
                said_method.is_some(),
                "a request accepted without Mcp-Method"
            );
        }
        if field.is_some() {
            let h = said_name
                .as_ref()
                .expect("accepted without the Mcp-Name it requires");
            assert_eq!(
                Some(&h[..]),
                r.field.as_deref().map(str::as_bytes),
                "Mcp-Name accepted but {} reads another params.{field_name}\ninput: {:?}",
                r.parser,
                String::from_utf8_lossy(data)
            );
        }
    }
});
