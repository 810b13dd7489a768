//! Property tests: the scanner agrees with serde_json on every field it extracts, never panics,
//! and says "not JSON" exactly when serde_json does.

#[path = "support/scanner_oracle.rs"]
mod oracle;
use tollgate::jsonrpc;

use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use tollgate::jsonrpc::{scan, Body, MessageKind, ScanErrorKind, ScanLimits};

// ---- a deterministic source of serialization choices -------------------------------------

/// xorshift64*: the property's seed decides whitespace, key order and escaping. With `dups`, it
/// also repeats some object members, under a differently escaped key and with another value.
struct Choices(u64, bool);

impl Choices {
    fn new(seed: u64) -> Self {
        Choices(seed | 1, false)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

// ---- a serializer with random whitespace, key order and escaping --------------------------

fn ws(out: &mut String, c: &mut Choices) {
    const WS: [&str; 7] = ["", "", "", " ", "\n", "\t", " \r\n  "];
    out.push_str(WS[c.below(WS.len() as u64) as usize]);
}

fn write_u_escape(out: &mut String, unit: u16, c: &mut Choices) {
    let hex = format!("{unit:04x}");
    out.push_str("\\u");
    out.push_str(&if c.one_in(2) {
        hex.to_ascii_uppercase()
    } else {
        hex
    });
}

fn write_string(out: &mut String, s: &str, c: &mut Choices) {
    // Some strings are escaped heavily, most lightly, some not at all beyond what JSON requires.
    let escape_one_in = [2, 8, 1_000_000][c.below(3) as usize];
    out.push('"');
    for ch in s.chars() {
        let short = match ch {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '/' if c.one_in(2) => Some("\\/"),
            _ => None,
        };
        let must = (ch as u32) < 0x20 || ch == '"' || ch == '\\';
        if must || c.one_in(escape_one_in) {
            match short {
                Some(e) if c.one_in(2) || (ch as u32) >= 0x20 || must && !c.one_in(3) => {
                    out.push_str(e)
                }
                _ => {
                    let mut units = [0u16; 2];
                    for u in ch.encode_utf16(&mut units) {
                        write_u_escape(out, *u, c);
                    }
                }
            }
        } else {
            out.push(ch);
        }
    }
    out.push('"');
}

fn write_value(out: &mut String, v: &Value, c: &mut Choices) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s, c),
        Value::Array(a) => {
            out.push('[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(out, c);
                write_value(out, e, c);
                ws(out, c);
            }
            if a.is_empty() {
                ws(out, c);
            }
            out.push(']');
        }
        Value::Object(o) => {
            let mut entries: Vec<(&String, &Value)> = o.iter().collect();
            // Fisher-Yates with our choices: key order must not matter.
            for i in (1..entries.len()).rev() {
                let j = c.below(i as u64 + 1) as usize;
                entries.swap(i, j);
            }
            out.push('{');
            for (i, (k, e)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(out, c);
                write_string(out, k, c);
                ws(out, c);
                out.push(':');
                ws(out, c);
                write_value(out, e, c);
                ws(out, c);
            }
            if c.1 && !entries.is_empty() && c.one_in(3) {
                let (k, e) = entries[c.below(entries.len() as u64) as usize];
                let other = match e {
                    Value::String(s) => Value::String(format!("{s}x")),
                    Value::Number(_) => Value::from(1),
                    _ => Value::String("dup".into()),
                };
                out.push(',');
                write_string(out, k, c);
                out.push(':');
                write_value(out, if c.one_in(4) { e } else { &other }, c);
            }
            if entries.is_empty() {
                ws(out, c);
            }
            out.push('}');
        }
    }
}

fn serialize(v: &Value, seed: u64) -> String {
    serialize_with(v, Choices::new(seed))
}

fn serialize_with(v: &Value, mut c: Choices) -> String {
    let mut out = String::new();
    ws(&mut out, &mut c);
    write_value(&mut out, v, &mut c);
    ws(&mut out, &mut c);
    out
}

// ---- strategies ----------------------------------------------------------------------------

/// Strings that exercise escaping: specials, controls, non-BMP, and the read keys themselves.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[a-z/_\\-. \"\\\\\u{0}-\u{1f}é€😀]{0,12}",
        1 => prop::sample::select(vec![
            "tools/call", "tools/list", "initialize", "name", "uri", "_meta", "method", "id",
            "progressToken", "protocolVersion", "io.modelcontextprotocol/protocolVersion",
            "requestId",
        ]).prop_map(String::from),
    ]
}

fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        // Finite and below 1e300: the scanner refuses magnitudes from 1e308 on, where parsers
        // round and overflow differently.
        (-1e300f64..1e300).prop_map(|f| Number::from_f64(f).unwrap_or(Number::from(0))),
        (-1e-300f64..1e-300).prop_map(|f| Number::from_f64(f).unwrap_or(Number::from(0))),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number().prop_map(Value::Number),
        text().prop_map(Value::String),
    ]
}

/// Any JSON value of bounded depth and size.
fn json(depth: u32) -> impl Strategy<Value = Value> {
    scalar().prop_recursive(depth, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::String),
        number().prop_map(Value::Number)
    ]
}

/// Inserts `v` under `k` unless `v` is None.
fn put(o: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        o.insert(k.to_string(), v);
    }
}

fn meta() -> impl Strategy<Value = Value> {
    (
        prop::option::of(id()),
        prop::option::of(prop_oneof![3 => text().prop_map(Value::String), 1 => scalar()]),
        prop::collection::vec((text(), json(2)), 0..3),
    )
        .prop_map(|(token, version, extra)| {
            let mut o: Map<String, Value> = extra.into_iter().collect();
            put(&mut o, "progressToken", token);
            put(&mut o, "io.modelcontextprotocol/protocolVersion", version);
            Value::Object(o)
        })
}

fn params() -> impl Strategy<Value = Option<Value>> {
    let maybe_str =
        || prop::option::of(prop_oneof![3 => text().prop_map(Value::String), 1 => json(1)]);
    let object = (
        maybe_str(),
        maybe_str(),
        maybe_str(),
        prop::option::of(prop_oneof![4 => meta(), 1 => json(1)]),
        prop::collection::vec((text(), json(3)), 0..3),
        // requestId: an id (other values come from `extra`, whose keys include "requestId").
        // Boxed: a deeper value tree here overflowed the test thread's stack.
        prop::option::of(id()).boxed(),
        // arguments: mostly an object (its top-level keys are read), sometimes another value.
        prop::option::of(prop_oneof![
            4 => prop::collection::vec((text(), json(2)), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            1 => json(1),
        ])
        .boxed(),
    )
        .prop_map(|(name, uri, version, meta, extra, request_id, arguments)| {
            let mut o: Map<String, Value> = extra.into_iter().collect();
            put(&mut o, "requestId", request_id);
            put(&mut o, "arguments", arguments);
            put(&mut o, "name", name);
            put(&mut o, "uri", uri);
            put(&mut o, "protocolVersion", version);
            put(&mut o, "_meta", meta);
            // progressToken must be a string or number or the scanner refuses (checked elsewhere).
            if let Some(Value::Object(m)) = o.get_mut("_meta") {
                if m.get("progressToken")
                    .is_some_and(|t| !(t.is_string() || t.is_number()))
                {
                    m.remove("progressToken");
                }
            }
            Some(Value::Object(o))
        });
    prop_oneof![
        1 => Just(None),
        4 => object,
        1 => prop::collection::vec(json(2), 0..4).prop_map(|a| Some(Value::Array(a))),
    ]
}

const READ_KEYS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];

/// A valid JSON-RPC message and the kind the scanner must read.
fn message() -> impl Strategy<Value = (Value, MessageKind)> {
    let kind = prop::sample::select(vec![
        MessageKind::Request,
        MessageKind::Notification,
        MessageKind::Response,
        MessageKind::Error,
    ]);
    let result = (
        prop::option::of(text()),
        prop::collection::vec((text(), json(3)), 0..3),
    )
        .prop_map(|(version, extra)| {
            let mut o: Map<String, Value> = extra.into_iter().collect();
            put(&mut o, "protocolVersion", version.map(Value::String));
            Value::Object(o)
        });
    let result = prop_oneof![4 => result, 1 => json(2)];
    (
        kind,
        id(),
        text(),
        params(),
        result,
        prop::collection::vec((text(), json(2)), 0..3),
    )
        .prop_map(|(kind, id, method, params, result, extra)| {
            let mut o: Map<String, Value> = extra
                .into_iter()
                .filter(|(k, _)| !READ_KEYS.contains(&k.as_str()))
                .collect();
            o.insert("jsonrpc".into(), Value::String("2.0".into()));
            match kind {
                MessageKind::Request | MessageKind::Notification => {
                    o.insert("method".into(), Value::String(method));
                    if kind == MessageKind::Request {
                        o.insert("id".into(), id);
                    }
                    put(&mut o, "params", params);
                }
                MessageKind::Response => {
                    o.insert("id".into(), id);
                    o.insert("result".into(), result);
                }
                MessageKind::Error => {
                    o.insert("id".into(), id);
                    let mut e = Map::new();
                    e.insert("code".into(), Value::from(-32601));
                    e.insert("message".into(), Value::String(method));
                    o.insert("error".into(), Value::Object(e));
                }
            }
            (Value::Object(o), kind)
        })
}

/// A single message or a batch of 1..5, with the kinds in order.
fn body() -> impl Strategy<Value = (Value, Vec<MessageKind>)> {
    prop_oneof![
        3 => message().prop_map(|(v, k)| (v, vec![k])),
        1 => prop::collection::vec(message(), 1..5).prop_map(|ms| {
            let (vs, ks): (Vec<Value>, Vec<MessageKind>) = ms.into_iter().unzip();
            (Value::Array(vs), ks)
        }),
    ]
}

fn depth(v: &Value) -> u32 {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Byte edits that tend to hit the scanner's decisions.
#[derive(Clone, Debug)]
enum Edit {
    Insert(usize, u8),
    Delete(usize),
    Replace(usize, u8),
    Duplicate(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(
            b"{}[],:\"\\u0123456789eE+-.tfnDdCc \t\n\x00\x1f\x7f\xc3\xed\xef".to_vec()
        ),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), 1usize..24).prop_map(|(i, n)| Edit::Duplicate(i, n)),
    ]
}

fn apply(body: &mut Vec<u8>, e: &Edit) {
    let n = body.len();
    match *e {
        Edit::Insert(i, b) => body.insert(i % (n + 1), b),
        Edit::Delete(i) if n > 0 => {
            body.remove(i % n);
        }
        Edit::Replace(i, b) if n > 0 => body[i % n] = b,
        Edit::Duplicate(i, len) if n > 0 => {
            // Copies a slice in place: duplicates keys, members, escapes.
            let start = i % n;
            let end = (start + len).min(n);
            let piece = body[start..end].to_vec();
            body.splice(end..end, piece);
        }
        _ => {}
    }
}

fn check_any(body: &[u8]) -> Result<(), TestCaseError> {
    oracle::check_scan(body)
        .map_err(|e| TestCaseError::fail(format!("{e}\non {:?}", String::from_utf8_lossy(body))))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// (1) Valid messages, randomly serialized: the scanner reads what serde_json reads.
    #[test]
    fn reads_what_serde_json_reads((v, kinds) in body(), seed in any::<u64>()) {
        let text = serialize(&v, seed);
        let scanned = scan(text.as_bytes(), &ScanLimits::default());
        let scanned = match scanned {
            Ok(b) => b,
            Err(e) => return Err(TestCaseError::fail(format!("refused a valid message: {e}\n{text}"))),
        };
        let got: Vec<MessageKind> = match &scanned {
            Body::Single(m) => vec![m.kind],
            Body::Batch(ms) => ms.iter().map(|m| m.kind).collect(),
        };
        prop_assert_eq!(got, kinds);
        oracle::check_against(&v, text.as_bytes(), &scanned, oracle::serde_parse).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        oracle::check_against_serde(text.as_bytes(), &scanned).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
    }

    /// (2a) Arbitrary bytes never panic; acceptance implies agreement.
    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_any(&bytes)?;
    }

    /// (2b) Mutations of valid messages never panic; acceptance implies agreement; the JSON
    /// verdict matches serde_json's.
    #[test]
    fn mutated_messages((v, _) in body(), seed in any::<u64>(), edits in prop::collection::vec(edit(), 1..4)) {
        let mut bytes = serialize(&v, seed).into_bytes();
        for e in &edits {
            apply(&mut bytes, e);
        }
        check_any(&bytes)?;
    }

    /// (2c) Duplicate keys anywhere, escaped differently and with other values: the scanner
    /// refuses them where it reads, and wherever it accepts, serde_json (last wins) and sonic-rs
    /// (first wins) both agree with it.
    #[test]
    fn duplicate_keys((v, _) in body(), seed in any::<u64>()) {
        let text = serialize_with(&v, Choices(seed | 1, true));
        check_any(text.as_bytes())?;
    }

    /// (3) Valid JSON of random shape: "is it JSON" is answered as serde_json answers it, up to
    /// the depth limit; past it the scanner says TooDeep.
    #[test]
    fn json_verdict_matches_serde_json(v in json(6), spine in prop::collection::vec((any::<bool>(), text()), 0..70), seed in any::<u64>()) {
        // Wrap the value in a spine of containers to reach depths around the limit.
        let mut v = v;
        for (is_object, key) in spine {
            v = if is_object {
                Value::Object(std::iter::once((key, v)).collect())
            } else {
                Value::Array(vec![Value::Null, v])
            };
        }
        let limit = ScanLimits::default().max_depth;
        for text in [serialize(&v, seed), v.to_string()] {
            prop_assert!(serde_json::from_str::<Value>(&text).is_ok() || depth(&v) >= 128);
            match scan(text.as_bytes(), &ScanLimits::default()) {
                Err(e) if depth(&v) > limit => prop_assert_eq!(e.kind, ScanErrorKind::TooDeep),
                other => {
                    prop_assert!(depth(&v) <= limit, "depth {} accepted: {:?}", depth(&v), other);
                    if let Err(e) = other {
                        prop_assert!(!e.is_parse_error(), "valid JSON refused as {}: {}", e, text);
                    }
                }
            }
        }
    }
}

#[test]
fn serializer_round_trips_through_serde_json() {
    let v: Value =
        serde_json::json!({"a/b": ["x\u{0}\"\\é😀", 1, -2.5, null, true, {}], "": {"k": []}});
    for seed in 0..200 {
        let text = serialize(&v, seed);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v, "{text}");
    }
}
