//! The 2026-07-28 mirrored headers against the body: whenever the gateway's check
//! (`mcp::modern::check_mirrored`, fed the way `proxy::stateless` feeds it: the scanner's method,
//! and `params.name` or `params.uri` as `name_source` says) accepts a request, serde_json and
//! sonic-rs must read from the body the very method and name the headers say (after the
//! gateway's decoding of `=?base64?…?=`). A body whose headers route and authorize one tool while
//! the upstream's parser reads another is a bypass.
//!
//! Input: `[n][Mcp-Method bytes: n][m][Mcp-Name bytes: m][body…]` (n, m single bytes); a 0xFF
//! length means "header absent".
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/jsonrpc/mod.rs"]
#[allow(dead_code, unused_imports)]
mod jsonrpc;

#[path = "../../src/error.rs"]
#[allow(dead_code)]
mod error;

// mcp::modern names its siblings as `super::{Method, ProtocolVersion}`: here the crate root.
#[path = "../../src/mcp/method.rs"]
#[allow(dead_code)]
mod method;
#[path = "../../src/mcp/modern.rs"]
#[allow(dead_code)]
mod modern;
#[path = "../../src/mcp/version.rs"]
#[allow(dead_code)]
mod version;

use method::Method;
use modern::{check_mirrored, header_value, name_source, Mirrored, NameSource};
#[allow(unused_imports)]
use version::ProtocolVersion;

fn take<'a>(data: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let (&n, rest) = data.split_first()?;
    if n == 0xFF {
        *data = rest;
        return Some(None);
    }
    let n = usize::from(n);
    if rest.len() < n {
        return None;
    }
    let (v, rest) = rest.split_at(n);
    *data = rest;
    Some(Some(v))
}

fn string_at(v: &serde_json::Value, path: &[&str]) -> Option<Vec<u8>> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    cur.as_str().map(|s| s.as_bytes().to_vec())
}

fn sonic_string_at(body: &[u8], path: &[&str]) -> Option<Vec<u8>> {
    use sonic_rs::JsonValueTrait;
    let v = sonic_rs::get(body, path).ok()?;
    v.as_str().map(|s| s.as_bytes().to_vec())
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let (Some(header_method), Some(header_name)) = (take(&mut rest), take(&mut rest)) else {
        return;
    };
    let body = rest;
    let Ok(jsonrpc::Body::Single(m)) = jsonrpc::scan(body, &jsonrpc::ScanLimits::default()) else {
        return;
    };
    let Some(method_str) = m.method.as_ref() else {
        return;
    };
    let method = Method::parse(&method_str.value);
    let name = name_source(method).map(|src| match src {
        NameSource::Name => m.name.as_ref().map(|s| s.value.as_bytes()),
        NameSource::Uri => m.uri.as_ref().map(|s| s.value.as_bytes()),
    });
    let mirrored = Mirrored {
        header_method,
        header_name,
        method: method_str.value.as_bytes(),
        request: m.kind == jsonrpc::MessageKind::Request,
        name,
    };
    if check_mirrored(&mirrored).is_err() {
        return;
    }
    // Accepted: both full parsers must read what the headers say.
    let serde: serde_json::Value =
        serde_json::from_slice(body).expect("the scanner accepted a body serde_json refuses");
    let want_method = header_method.map(|h| header_value(h).unwrap().into_owned());
    if let Some(h) = &want_method {
        assert_eq!(string_at(&serde, &["method"]).as_ref(), Some(h), "serde_json method");
        assert_eq!(sonic_string_at(body, &["method"]).as_ref(), Some(h), "sonic-rs method");
    }
    if let (Some(src), Some(h)) = (name_source(method), header_name) {
        let h = header_value(h).unwrap().into_owned();
        let key = match src {
            NameSource::Name => "name",
            NameSource::Uri => "uri",
        };
        assert_eq!(string_at(&serde, &["params", key]).as_ref(), Some(&h), "serde_json {key}");
        assert_eq!(sonic_string_at(body, &["params", key]).as_ref(), Some(&h), "sonic-rs {key}");
    }
});
