//! The request rules of the stateless revision (2026-07-28), as pure functions over what the head
//! parser and the scanner read: which path a POST takes (`route`), and whether the headers that
//! mirror the body (`Mcp-Method`, `Mcp-Name`) agree with it (`check_mirrored`).
//!
//! Order of the checks (the spec's validation order, which the official suite and the reference
//! server follow): the version header missing → -32020; a required `_meta` key missing → -32602;
//! header and `_meta` disagreeing → -32020; a version not served → -32022; then the mirrored
//! headers → -32020. Only a request that speaks the revision (a `_meta` protocol version, or a
//! version header naming it) ever gets one of these codes: a session-era client, which sends
//! neither, keeps the session-era answers, so a client probing in "auto" mode falls back.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::{Method, ProtocolVersion};

// The mirrored-header check lives in its own file, which depends on std and base64 only, so the
// fuzz crate compiles it from source (fuzz/fuzz_targets/header_agreement.rs).
pub use super::mirrored::{check_mirrored, header_value, Mirrored};

/// The revisions the stateless path serves, newest first (`data.supported` of -32022,
/// `supportedVersions` of `server/discover`).
pub const STATELESS_VERSIONS: [ProtocolVersion; 1] = [ProtocolVersion::V2026_07_28];

/// What decides the path of a POST.
#[derive(Clone, Copy, Debug, Default)]
pub struct Signals<'a> {
    /// The `MCP-Protocol-Version` header.
    pub header_version: Option<&'a [u8]>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`.
    pub meta_version: Option<&'a str>,
    /// `params._meta["io.modelcontextprotocol/clientCapabilities"]` is there (an object).
    pub meta_capabilities: bool,
    /// The request carries `Mcp-Session-Id`.
    pub has_session: bool,
    /// The message is a request (`_meta` is required in a request's params only).
    pub request: bool,
}

/// The path a POST takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The session era (initialize, then `Mcp-Session-Id`).
    Session,
    /// The stateless revision.
    Stateless(ProtocolVersion),
}

/// Why a request that speaks the stateless revision is refused before anything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refuse {
    /// -32020 (HTTP 400): a header that must mirror the body is missing or disagrees.
    HeaderMismatch(String),
    /// -32602 (HTTP 400): a required `_meta` field is missing.
    MissingMeta(String),
    /// -32022 (HTTP 400): the revision named is not one the gateway serves.
    Unsupported { requested: String },
}

const META_VERSION: &str = "params._meta[\"io.modelcontextprotocol/protocolVersion\"]";
const META_CAPS: &str = "params._meta[\"io.modelcontextprotocol/clientCapabilities\"]";

/// Which path a POST takes, or why it is refused. A request with a session id is a session-era
/// request whatever else it carries (as the reference server decides).
pub fn route(s: &Signals<'_>) -> Result<Route, Refuse> {
    if s.has_session {
        return Ok(Route::Session);
    }
    let header = s.header_version.map(<[u8]>::trim_ascii);
    let Some(meta) = s.meta_version else {
        return match header.and_then(ProtocolVersion::parse_bytes) {
            // A notification's params need no `_meta`: the header says the revision.
            Some(v) if !v.is_legacy() && !s.request && STATELESS_VERSIONS.contains(&v) => {
                Ok(Route::Stateless(v))
            }
            Some(v) if !v.is_legacy() => Err(Refuse::MissingMeta(format!(
                "{META_VERSION} is required in a {} request",
                v.as_str()
            ))),
            // No version at all, a session-era one, or one nobody knows: the session era's
            // rules answer (an unknown header version gets its -32600 there).
            _ => Ok(Route::Session),
        };
    };
    let Some(header) = header else {
        return Err(Refuse::HeaderMismatch(format!(
            "MCP-Protocol-Version header is missing (the body names {meta})"
        )));
    };
    if !s.meta_capabilities && s.request {
        return Err(Refuse::MissingMeta(format!("{META_CAPS} is required")));
    }
    if header != meta.as_bytes() {
        return Err(Refuse::HeaderMismatch(format!(
            "Header mismatch: MCP-Protocol-Version header value '{}' does not match body value '{meta}'",
            String::from_utf8_lossy(header)
        )));
    }
    match ProtocolVersion::parse(meta) {
        Some(v) if STATELESS_VERSIONS.contains(&v) => Ok(Route::Stateless(v)),
        _ => Err(Refuse::Unsupported {
            requested: meta.to_string(),
        }),
    }
}

/// `error.data` of -32022: `{"supported":[…],"requested":"…"}`.
pub fn unsupported_data(requested: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(64 + requested.len());
    d.extend_from_slice(b"{\"supported\":[");
    for (i, v) in STATELESS_VERSIONS.iter().enumerate() {
        if i > 0 {
            d.push(b',');
        }
        d.push(b'"');
        d.extend_from_slice(v.as_str().as_bytes());
        d.push(b'"');
    }
    d.extend_from_slice(b"],\"requested\":");
    crate::error::json_escape_into(&mut d, requested);
    d.push(b'}');
    d
}

/// Which body value `Mcp-Name` mirrors for `method`: `params.name` or `params.uri`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameSource {
    Name,
    Uri,
}

/// The body field `Mcp-Name` must mirror, for the methods that require it.
pub fn name_source(method: Method) -> Option<NameSource> {
    match method {
        Method::ToolsCall | Method::PromptsGet => Some(NameSource::Name),
        Method::ResourcesRead => Some(NameSource::Uri),
        _ => None,
    }
}

/// Spells `value` as a mirrored header value: as it is when it is plain visible ASCII (inner
/// spaces allowed) and does not look like an encoded value, else `=?base64?…?=`.
pub fn encode_header_value(out: &mut Vec<u8>, value: &[u8]) {
    let plain = !value.is_empty()
        && value.iter().all(|&b| b == b' ' || b.is_ascii_graphic())
        && value.first() != Some(&b' ')
        && value.last() != Some(&b' ')
        && !(value.starts_with(b"=?") && value.ends_with(b"?="));
    if plain {
        out.extend_from_slice(value);
    } else {
        out.extend_from_slice(b"=?base64?");
        out.extend_from_slice(STANDARD.encode(value).as_bytes());
        out.extend_from_slice(b"?=");
    }
}

/// `body` (one JSON-RPC message) with `members` (JSON object members, e.g.
/// `"io.modelcontextprotocol/protocolVersion":"2026-07-28"`) added to its `params._meta`: into
/// `_meta` when it is there (`meta_at`: where its `{` is), else as a new `_meta` first in `params`
/// (`params_at`), else as new `params`. What a session-era client sends is made a request of the
/// stateless revision this way, bytes unchanged otherwise.
/// The `_meta` members a request becomes one of revision `version` with: those of
/// `io.modelcontextprotocol/protocolVersion` and `…/clientCapabilities` (empty) that `_meta`
/// does not have already (`keys`: `jsonrpc::META_VERSION_KEY` / `META_CAPABILITIES_KEY`, set
/// whatever the value), so no key is ever written twice. Empty: nothing to add.
pub fn meta_members(version: &str, keys: u8) -> Vec<u8> {
    let mut members = Vec::with_capacity(120);
    if keys & crate::jsonrpc::META_VERSION_KEY == 0 {
        members.extend_from_slice(b"\"io.modelcontextprotocol/protocolVersion\":\"");
        members.extend_from_slice(version.as_bytes());
        members.push(b'"');
    }
    if keys & crate::jsonrpc::META_CAPABILITIES_KEY == 0 {
        if !members.is_empty() {
            members.push(b',');
        }
        members.extend_from_slice(b"\"io.modelcontextprotocol/clientCapabilities\":{}");
    }
    members
}

/// `body` with `what` (object members) inserted first in the object whose `{` is at `at`, and a
/// comma after them unless the object was empty.
fn into(body: &[u8], out: &mut Vec<u8>, at: usize, what: &[&[u8]]) {
    let (head, rest) = body.split_at(at + 1);
    out.extend_from_slice(head);
    for part in what {
        out.extend_from_slice(part);
    }
    if rest.trim_ascii_start().first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
}

/// A response (`body`, one message) with `members` first in its `result` object (whose `{` is
/// at `result_at`): how a session-era upstream's result gets the `resultType` (and caching
/// hints) the stateless revision requires.
pub fn stamp_result(body: &[u8], result_at: usize, members: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + members.len() + 1);
    into(
        body,
        &mut out,
        result_at.min(body.len().saturating_sub(1)),
        &[members],
    );
    out
}

pub fn with_meta(
    body: &[u8],
    params_at: Option<usize>,
    meta_at: Option<usize>,
    members: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + members.len() + 24);
    let into = |out: &mut Vec<u8>, at: usize, what: &[&[u8]]| into(body, out, at, what);
    match (meta_at, params_at) {
        (Some(m), _) if m < body.len() => into(&mut out, m, &[members]),
        (_, Some(p)) if p < body.len() => into(&mut out, p, &[b"\"_meta\":{", members, b"}"]),
        _ => {
            let end = body.iter().rposition(|&b| b == b'}').unwrap_or(body.len());
            out.extend_from_slice(&body[..end]);
            out.extend_from_slice(b",\"params\":{\"_meta\":{");
            out.extend_from_slice(members);
            out.extend_from_slice(b"}}");
            out.extend_from_slice(&body[end..]);
        }
    }
    out
}

/// Whether a tool's `inputSchema` annotates its parameters with `x-mcp-header` as the revision
/// allows (a client on HTTP, as the gateway is toward its upstreams, drops a tool that does not):
/// each value a non-empty header-name token, unique case-insensitively in the schema, on an
/// `integer`, `string` or `boolean` property reached from the root through `properties` only
/// (never inside `items`, `oneOf`/`anyOf`/`allOf`/`not`, `if`/`then`/`else`, `$ref`'d
/// definitions or other subschemas). `Err` says what is wrong.
pub fn x_mcp_headers_valid(input_schema: &sonic_rs::Value) -> Result<(), String> {
    let mut seen = Vec::new();
    walk_schema(input_schema, true, &mut seen)
}

/// Keywords whose value is a subschema or an array of them (JSON Schema 2020-12, and the older
/// drafts' `additionalItems`), apart from `properties`.
const SUBSCHEMA_KEYWORDS: &[&str] = &[
    "items",
    "prefixItems",
    "additionalItems",
    "additionalProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "propertyNames",
    "contains",
    "oneOf",
    "anyOf",
    "allOf",
    "not",
    "if",
    "then",
    "else",
];
/// Keywords whose value maps names to subschemas (`definitions`/`dependencies`: older drafts).
const SCHEMA_MAP_KEYWORDS: &[&str] = &[
    "$defs",
    "definitions",
    "patternProperties",
    "dependentSchemas",
    "dependencies",
];

fn walk_schema(v: &sonic_rs::Value, reachable: bool, seen: &mut Vec<String>) -> Result<(), String> {
    use sonic_rs::{JsonContainerTrait, JsonValueTrait};
    if let Some(a) = v.as_array() {
        for x in a.iter() {
            walk_schema(x, false, seen)?;
        }
        return Ok(());
    }
    let Some(obj) = v.as_object() else {
        return Ok(());
    };
    if let Some(h) = obj.get(&"x-mcp-header") {
        if !reachable {
            return Err("x-mcp-header on a schema not reached through properties alone".into());
        }
        let Some(name) = h.as_str() else {
            return Err("x-mcp-header is not a string".into());
        };
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(format!("x-mcp-header {name:?} is not a header-name token"));
        }
        let lower = name.to_ascii_lowercase();
        if seen.contains(&lower) {
            return Err(format!("x-mcp-header {name:?} appears twice"));
        }
        seen.push(lower);
        let ty = obj.get(&"type").and_then(|t| t.as_str());
        if !matches!(ty, Some("integer" | "string" | "boolean")) {
            return Err(format!(
                "x-mcp-header {name:?} on a property of type {}",
                ty.unwrap_or("(none)")
            ));
        }
    }
    for (k, child) in obj.iter() {
        if k == "properties" {
            if let Some(props) = child.as_object() {
                for (_, p) in props.iter() {
                    walk_schema(p, reachable, seen)?;
                }
            }
        } else if SCHEMA_MAP_KEYWORDS.contains(&k) {
            for (_, x) in child.as_object().into_iter().flat_map(|m| m.iter()) {
                walk_schema(x, false, seen)?;
            }
        } else if SUBSCHEMA_KEYWORDS.contains(&k) {
            walk_schema(child, false, seen)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig<'a>(h: Option<&'a str>, m: Option<&'a str>, caps: bool) -> Signals<'a> {
        Signals {
            header_version: h.map(str::as_bytes),
            meta_version: m,
            meta_capabilities: caps,
            has_session: false,
            request: true,
        }
    }

    #[test]
    fn a_notification_needs_no_meta() {
        let mut s = sig(Some("2026-07-28"), None, false);
        s.request = false;
        assert_eq!(
            route(&s),
            Ok(Route::Stateless(ProtocolVersion::V2026_07_28))
        );
        let mut s = sig(Some("2026-07-28"), Some("2026-07-28"), false);
        s.request = false;
        assert_eq!(
            route(&s),
            Ok(Route::Stateless(ProtocolVersion::V2026_07_28))
        );
    }

    #[test]
    fn the_path_follows_the_revision_the_request_speaks() {
        let modern = Ok(Route::Stateless(ProtocolVersion::V2026_07_28));
        assert_eq!(
            route(&sig(Some("2026-07-28"), Some("2026-07-28"), true)),
            modern
        );
        assert_eq!(
            route(&sig(Some(" 2026-07-28 "), Some("2026-07-28"), true)),
            modern
        );
        // Session-era clients: no version, a session-era one, or an unknown header alone.
        for h in [None, Some("2025-06-18"), Some("2025-11-25"), Some("v999")] {
            assert_eq!(route(&sig(h, None, false)), Ok(Route::Session), "{h:?}");
        }
        // A session id decides, whatever the body says.
        let mut s = sig(None, Some("2026-07-28"), false);
        s.has_session = true;
        assert_eq!(route(&s), Ok(Route::Session));
    }

    #[test]
    fn refusals_come_in_the_spec_order() {
        // Header missing first, even when _meta lacks capabilities too.
        assert!(matches!(
            route(&sig(None, Some("2026-07-28"), false)),
            Err(Refuse::HeaderMismatch(m)) if m.contains("missing")
        ));
        // Then a missing _meta key.
        assert!(matches!(
            route(&sig(Some("2026-07-28"), None, false)),
            Err(Refuse::MissingMeta(m)) if m.contains("protocolVersion")
        ));
        assert!(matches!(
            route(&sig(Some("2026-07-28"), Some("2026-07-28"), false)),
            Err(Refuse::MissingMeta(m)) if m.contains("clientCapabilities")
        ));
        // Then header ≠ body.
        assert!(matches!(
            route(&sig(Some("2026-07-28"), Some("v999.0.0"), true)),
            Err(Refuse::HeaderMismatch(m)) if m.contains("v999.0.0")
        ));
        // Then a revision not served (unknown, or a session-era one on the stateless wire).
        for v in ["v999.0.0", "2025-11-25"] {
            assert_eq!(
                route(&sig(Some(v), Some(v), true)),
                Err(Refuse::Unsupported {
                    requested: v.into()
                })
            );
        }
    }

    #[test]
    fn unsupported_data_names_both_sides() {
        let d: serde_json::Value = serde_json::from_slice(&unsupported_data("v\"9")).unwrap();
        assert_eq!(d["supported"], serde_json::json!(["2026-07-28"]));
        assert_eq!(d["requested"], "v\"9");
    }

    fn mirrored<'a>(
        hm: Option<&'a str>,
        hn: Option<&'a str>,
        method: &'a str,
        name: Option<Option<&'a str>>,
    ) -> Mirrored<'a> {
        Mirrored {
            header_method: hm.map(str::as_bytes),
            header_name: hn.map(str::as_bytes),
            method: method.as_bytes(),
            request: true,
            name: name.map(|n| n.map(str::as_bytes)),
        }
    }

    #[test]
    fn mirrored_headers_must_match_the_body() {
        let ok = |hm, hn, method, name| check_mirrored(&mirrored(hm, hn, method, name));
        assert_eq!(ok(Some("tools/list"), None, "tools/list", None), Ok(()));
        assert_eq!(ok(Some("  tools/list\t"), None, "tools/list", None), Ok(()));
        assert!(ok(None, None, "tools/list", None)
            .unwrap_err()
            .contains("missing"));
        // Values are case-sensitive.
        assert!(ok(Some("TOOLS/LIST"), None, "tools/list", None)
            .unwrap_err()
            .contains("does not match"));
        let call = Some(Some("echo"));
        assert_eq!(
            ok(Some("tools/call"), Some("echo"), "tools/call", call),
            Ok(())
        );
        assert!(ok(Some("tools/call"), None, "tools/call", call)
            .unwrap_err()
            .contains("Mcp-Name header is missing"));
        assert!(ok(Some("tools/call"), Some("other"), "tools/call", call).is_err());
        // A header with nothing in the body to mirror.
        assert!(ok(Some("tools/call"), Some("echo"), "tools/call", Some(None)).is_err());
        // Base64 values are decoded first.
        assert_eq!(
            ok(
                Some("tools/call"),
                Some("=?base64?ZWNobw==?="),
                "tools/call",
                call
            ),
            Ok(())
        );
        assert!(ok(
            Some("tools/call"),
            Some("=?base64?ZWNobw?="),
            "tools/call",
            call
        )
        .unwrap_err()
        .contains("base64"));
        // A notification needs no Mcp-Method, but one present must match.
        let mut n = mirrored(None, None, "notifications/cancelled", None);
        n.request = false;
        assert_eq!(check_mirrored(&n), Ok(()));
        n.header_method = Some(b"notifications/other");
        assert!(check_mirrored(&n).is_err());
    }

    #[test]
    fn meta_is_added_where_it_belongs() {
        let m = br#""k":1"#;
        let case = |body: &str| {
            let Ok(crate::jsonrpc::Body::Single(msg)) =
                crate::jsonrpc::scan(body.as_bytes(), &Default::default())
            else {
                panic!("{body}")
            };
            let out = with_meta(body.as_bytes(), msg.params_open, msg.meta_open, m);
            let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            (String::from_utf8(out).unwrap(), v)
        };
        let (_, v) = case(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        assert_eq!(v["params"]["_meta"]["k"], 1);
        let (_, v) = case(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{ }}"#);
        assert_eq!(v["params"]["_meta"]["k"], 1);
        let (_, v) =
            case(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}"#);
        assert_eq!(
            (
                v["params"]["_meta"]["k"].clone(),
                v["params"]["name"].clone()
            ),
            (1.into(), "a".into())
        );
        let (_, v) = case(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_meta":{"progressToken":7}}}"#,
        );
        assert_eq!(v["params"]["_meta"]["k"], 1);
        assert_eq!(v["params"]["_meta"]["progressToken"], 7);
        let (_, v) = case(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{}}}"#);
        assert_eq!(v["params"]["_meta"], serde_json::json!({"k": 1}));
        // The rest of the bytes are untouched.
        let (s, _) = case(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":"é"}}"#);
        assert!(s.contains(r#""a":"é""#), "{s}");
    }

    #[test]
    fn results_are_stamped_first_in_their_object() {
        let stamp = br#""resultType":"complete""#;
        for (body, want) in [
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete","tools":[]}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{ }}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete" }}"#,
            ),
        ] {
            let Ok(crate::jsonrpc::Body::Single(m)) =
                crate::jsonrpc::scan(body.as_bytes(), &Default::default())
            else {
                panic!("{body}")
            };
            assert!(!m.result_type);
            let out = stamp_result(body.as_bytes(), m.result_open.unwrap(), stamp);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
        let Ok(crate::jsonrpc::Body::Single(m)) = crate::jsonrpc::scan(
            br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete"}}"#,
            &Default::default(),
        ) else {
            panic!()
        };
        assert!(m.result_type, "a result that has one is seen to");
    }

    #[test]
    fn header_values_decode_and_encode_round_trip() {
        for v in [
            "echo",
            "a b",
            "héllo",
            " lead",
            "=?base64?x?=",
            "",
            "tab\there",
        ] {
            let mut out = Vec::new();
            encode_header_value(&mut out, v.as_bytes());
            assert_eq!(&*header_value(&out).unwrap(), v.as_bytes(), "{v:?}");
        }
        assert!(header_value("caf\u{e9}".as_bytes()).is_err());
        assert!(header_value(b"=?base64?/w==?=").is_err(), "not UTF-8");
        // Without both markers a value is taken literally.
        assert_eq!(
            &*header_value(b"=?base64?ZWNobw==").unwrap(),
            b"=?base64?ZWNobw=="
        );
    }

    #[test]
    fn x_mcp_header_annotations_are_checked_as_the_revision_says() {
        let ok = |v: serde_json::Value| {
            let v: sonic_rs::Value = sonic_rs::from_str(&v.to_string()).unwrap();
            x_mcp_headers_valid(&v)
        };
        let prop = |t: &str, h: &str| serde_json::json!({"type": t, "x-mcp-header": h});
        let schema =
            |props: serde_json::Value| serde_json::json!({"type": "object", "properties": props});
        assert!(ok(schema(serde_json::json!({"a": prop("string", "Region")}))).is_ok());
        assert!(ok(schema(
            serde_json::json!({"o": {"type": "object", "properties": {"n": prop("integer", "N")}}})
        ))
        .is_ok());
        assert!(ok(serde_json::json!({"type": "object"})).is_ok());
        // A number, a bad token, a duplicate (case-insensitive), an empty name.
        assert!(ok(schema(serde_json::json!({"a": prop("number", "A")}))).is_err());
        assert!(ok(schema(serde_json::json!({"a": prop("string", "Bad Name")}))).is_err());
        assert!(ok(schema(
            serde_json::json!({"a": prop("string", "X"), "b": prop("string", "x")})
        ))
        .is_err());
        assert!(ok(schema(serde_json::json!({"a": prop("string", "")}))).is_err());
        // Not reached through properties alone.
        assert!(ok(schema(
            serde_json::json!({"l": {"type": "array", "items": prop("string", "I")}})
        ))
        .is_err());
        assert!(ok(serde_json::json!({"type": "object", "anyOf": [{"properties": {"a": prop("string", "A")}}]})).is_err());
        assert!(
            ok(serde_json::json!({"type": "object", "$defs": {"d": prop("string", "D")}})).is_err()
        );
        // Data is not a schema: an example holding the key is fine.
        assert!(
            ok(serde_json::json!({"type": "object", "examples": [{"x-mcp-header": 1}]})).is_ok()
        );
    }
}
