//! The demo server's decisions, with no I/O: what kind of JSON-RPC message arrived and what a
//! request is answered with. Waiting (`slow`, `progress`) is described by the `Reply`; the
//! connection code in `server` does the waiting and the writing.

use std::borrow::Cow;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::catalog::{self, Catalog};
use crate::error::code;
use crate::mcp::{Method, ProtocolVersion};

/// Legacy MCP code for `resources/read` on an unknown URI.
pub const RESOURCE_NOT_FOUND: i32 = -32002;
pub const MAX_SLOW_MS: u64 = 60_000;
pub const MAX_PROGRESS_STEPS: u64 = 1000;
pub const MAX_INTERVAL_MS: u64 = 10_000;
pub const MAX_LARGE_BYTES: u64 = 16 << 20;

/// One JSON-RPC message, classified.
#[derive(Debug)]
pub enum Message<'a> {
    Request {
        id: &'a Value,
        method: &'a str,
        params: Option<&'a Value>,
    },
    /// A notification, or a response to a server request: acknowledged, never answered.
    NoReply,
    /// Not a valid JSON-RPC message; answered with -32600 (and the id, when it was usable).
    Invalid {
        id: Option<&'a Value>,
        reason: &'static str,
    },
}

fn usable_id(id: &&Value) -> bool {
    matches!(id, Value::String(_) | Value::Number(_))
}

pub fn classify(v: &Value) -> Message<'_> {
    let Some(obj) = v.as_object() else {
        return Message::Invalid {
            id: None,
            reason: "a JSON-RPC message must be an object",
        };
    };
    let id = obj.get("id");
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Message::Invalid {
            id: id.filter(usable_id),
            reason: "jsonrpc must be \"2.0\"",
        };
    }
    match obj.get("method") {
        Some(Value::String(method)) => match id {
            None => Message::NoReply,
            Some(id) if usable_id(&id) => match obj.get("params") {
                Some(p) if !(p.is_object() || p.is_null()) => Message::Invalid {
                    id: Some(id),
                    reason: "params must be an object",
                },
                params => Message::Request {
                    id,
                    method,
                    params: params.filter(|p| !p.is_null()),
                },
            },
            Some(_) => Message::Invalid {
                id: None,
                reason: "id must be a string or a number",
            },
        },
        Some(_) => Message::Invalid {
            id: id.filter(usable_id),
            reason: "method must be a string",
        },
        None if id.is_some() && (obj.contains_key("result") || obj.contains_key("error")) => {
            Message::NoReply
        }
        None => Message::Invalid {
            id: id.filter(usable_id),
            reason: "not a request, notification or response",
        },
    }
}

/// How a request is answered. `Slow` and `Progress` are resolved by the connection code into a
/// `Result` (via `slow_done` / `progress_done`) after waiting.
#[derive(Debug)]
pub enum Reply<'c> {
    Result(Value),
    /// A pre-rendered `result` object.
    Raw(&'c [u8]),
    Error {
        code: i32,
        message: Cow<'static, str>,
        data: Option<Value>,
    },
    /// The `large` tool's result: one text content of this many ASCII bytes, rendered directly.
    Large(usize),
    Slow(Duration),
    Progress {
        steps: u64,
        interval: Duration,
        token: Option<Value>,
    },
}

impl Reply<'_> {
    fn error(code: i32, message: impl Into<Cow<'static, str>>) -> Self {
        Reply::Error {
            code,
            message: message.into(),
            data: None,
        }
    }

    fn invalid_params(message: impl Into<Cow<'static, str>>) -> Self {
        Self::error(code::INVALID_PARAMS, message)
    }
}

/// `initialize`: the negotiated revision and the result object.
pub fn initialize(params: Option<&Value>) -> (ProtocolVersion, Value) {
    let requested = params
        .and_then(|p| p.get("protocolVersion"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let version = ProtocolVersion::negotiate(requested);
    let result = json!({
        "protocolVersion": version.as_str(),
        "capabilities": {
            "tools": { "listChanged": false },
            "resources": { "subscribe": false, "listChanged": false },
            "prompts": { "listChanged": false },
            "logging": {},
            "completions": {}
        },
        "serverInfo": {
            "name": "tollgate-demo",
            "title": "tollgate demo MCP server",
            "version": env!("CARGO_PKG_VERSION")
        },
        "instructions": "A demo server for testing MCP clients and gateways: echo, add, slow, progress, large and fail tools; demo:// resources; a greet prompt."
    });
    (version, result)
}

/// Answers every request but `initialize` (which starts a session, so `server` handles it).
pub fn dispatch<'c>(cat: &'c Catalog, method: &str, params: Option<&Value>) -> Reply<'c> {
    match Method::parse(method) {
        Method::Ping | Method::LoggingSetLevel => Reply::Raw(b"{}"),
        Method::ToolsList => list(&cat.tools_list, params),
        Method::ToolsCall => call_tool(cat, params),
        Method::ResourcesList => list(&cat.resources_list, params),
        Method::ResourcesTemplatesList => list(&cat.templates_list, params),
        Method::ResourcesRead => read_resource(params),
        Method::PromptsList => list(&cat.prompts_list, params),
        Method::PromptsGet => get_prompt(params),
        Method::CompletionComplete => {
            Reply::Raw(br#"{"completion":{"values":[],"total":0,"hasMore":false}}"#)
        }
        Method::Initialize => Reply::error(
            code::INVALID_REQUEST,
            "initialize must be sent on its own, not in a batch",
        ),
        _ => Reply::error(
            code::METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
        ),
    }
}

/// Lists are never paginated, so any cursor is one we did not issue.
fn list<'c>(rendered: &'c [u8], params: Option<&Value>) -> Reply<'c> {
    match params.and_then(|p| p.get("cursor")) {
        None | Some(Value::Null) => Reply::Raw(rendered),
        Some(_) => Reply::invalid_params("Invalid cursor"),
    }
}

fn text_result(text: impl Into<String>) -> Value {
    json!({ "content": [{ "type": "text", "text": text.into() }] })
}

fn call_tool<'c>(cat: &'c Catalog, params: Option<&Value>) -> Reply<'c> {
    let Some(params) = params.and_then(Value::as_object) else {
        return Reply::invalid_params("tools/call needs params with a tool name");
    };
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Reply::invalid_params("tools/call needs a string `name`");
    };
    let empty = Map::new();
    let args = match params.get("arguments") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Reply::invalid_params("`arguments` must be an object"),
    };
    let outcome = match name {
        "echo" => echo(args),
        "add" => add(args),
        "slow" => {
            int_arg(args, "ms", None, MAX_SLOW_MS).map(|ms| Reply::Slow(Duration::from_millis(ms)))
        }
        "progress" => progress(params, args),
        "large" => int_arg(args, "bytes", None, MAX_LARGE_BYTES).map(|n| Reply::Large(n as usize)),
        "fail" => Ok(Reply::Result(json!({
            "content": [{
                "type": "text",
                "text": "The fail tool always fails: this is a tool error the model can read, not a protocol error. Do not retry."
            }],
            "isError": true
        }))),
        n if cat.is_extra_tool(n) => echo(args),
        _ => return Reply::invalid_params(format!("Unknown tool: {name}")),
    };
    outcome.unwrap_or_else(|reason| {
        Reply::invalid_params(format!("Invalid arguments for {name}: {reason}"))
    })
}

fn echo<'c>(args: &Map<String, Value>) -> Result<Reply<'c>, String> {
    match args.get("text") {
        Some(Value::String(t)) => Ok(Reply::Result(text_result(t.as_str()))),
        Some(_) => Err("`text` must be a string".into()),
        None => Err("`text` is required".into()),
    }
}

fn add<'c>(args: &Map<String, Value>) -> Result<Reply<'c>, String> {
    let num = |key: &str| match args.get(key) {
        Some(Value::Number(n)) => Ok(n.clone()),
        Some(_) => Err(format!("`{key}` must be a number")),
        None => Err(format!("`{key}` is required")),
    };
    let (a, b) = (num("a")?, num("b")?);
    let sum = match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) if x.checked_add(y).is_some() => Value::from(x + y),
        _ => {
            let s = a.as_f64().unwrap_or(f64::NAN) + b.as_f64().unwrap_or(f64::NAN);
            if !s.is_finite() {
                return Err("the sum is not a finite number".into());
            }
            Value::from(s)
        }
    };
    let mut result = text_result(sum.to_string());
    result["structuredContent"] = json!({ "sum": sum });
    Ok(Reply::Result(result))
}

fn progress<'c>(
    params: &Map<String, Value>,
    args: &Map<String, Value>,
) -> Result<Reply<'c>, String> {
    let steps = int_arg(args, "steps", Some(5), MAX_PROGRESS_STEPS)?;
    let interval = int_arg(args, "interval_ms", Some(10), MAX_INTERVAL_MS)?;
    let token = params
        .get("_meta")
        .and_then(|m| m.get("progressToken"))
        .filter(|t| t.is_string() || t.is_number())
        .cloned();
    Ok(Reply::Progress {
        steps,
        interval: Duration::from_millis(interval),
        token,
    })
}

/// A non-negative integer argument no larger than `max`; `default` when absent.
fn int_arg(
    args: &Map<String, Value>,
    key: &str,
    default: Option<u64>,
    max: u64,
) -> Result<u64, String> {
    let n = match args.get(key) {
        None | Some(Value::Null) => default.ok_or_else(|| format!("`{key}` is required"))?,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u,
            // Some clients send integral values as floats (`5.0`).
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f <= max as f64 => f as u64,
            _ => return Err(format!("`{key}` must be a non-negative integer")),
        },
        Some(_) => return Err(format!("`{key}` must be a non-negative integer")),
    };
    if n > max {
        return Err(format!("`{key}` must be at most {max}"));
    }
    Ok(n)
}

/// The `slow` tool's result once it has waited.
pub fn slow_done(waited: Duration) -> Value {
    text_result(format!("done after {} ms", waited.as_millis()))
}

/// The `progress` tool's result once every step is done.
pub fn progress_done(steps: u64) -> Value {
    text_result(format!("progress done: {steps} steps"))
}

/// A `notifications/progress` message (the whole JSON-RPC notification).
pub fn render_progress(out: &mut Vec<u8>, token: &Value, progress: u64, total: u64) {
    let v = json!({
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": { "progressToken": token, "progress": progress, "total": total }
    });
    let _ = serde_json::to_writer(&mut *out, &v);
}

fn read_resource<'c>(params: Option<&Value>) -> Reply<'c> {
    let Some(uri) = params.and_then(|p| p.get("uri")).and_then(Value::as_str) else {
        return Reply::invalid_params("resources/read needs a string `uri`");
    };
    let (mime, text): (&str, Cow<'_, str>) = match uri {
        catalog::README_URI => ("text/plain", catalog::README_TEXT.into()),
        catalog::DATA_URI => ("application/json", catalog::DATA_JSON.into()),
        _ => match uri.strip_prefix(catalog::ITEM_PREFIX) {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                ("text/plain", format!("item {id}").into())
            }
            _ => {
                return Reply::Error {
                    code: RESOURCE_NOT_FOUND,
                    message: "Resource not found".into(),
                    data: Some(json!({ "uri": uri })),
                }
            }
        },
    };
    Reply::Result(json!({ "contents": [{ "uri": uri, "mimeType": mime, "text": text }] }))
}

fn get_prompt<'c>(params: Option<&Value>) -> Reply<'c> {
    let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
        return Reply::invalid_params("prompts/get needs a string `name`");
    };
    if name != "greet" {
        return Reply::invalid_params(format!("Unknown prompt: {name}"));
    }
    let who = params
        .and_then(|p| p.get("arguments"))
        .and_then(|a| a.get("name"))
        .and_then(Value::as_str);
    let Some(who) = who else {
        return Reply::invalid_params("Missing required argument: name");
    };
    Reply::Result(json!({
        "description": "A greeting",
        "messages": [{ "role": "user", "content": { "type": "text", "text": format!("Hello, {who}!") } }]
    }))
}

/// Renders a complete JSON-RPC response for `id`. `Slow` and `Progress` must be resolved first;
/// if one slips through it is answered as an internal error rather than a panic.
pub fn render_reply(out: &mut Vec<u8>, id: &Value, reply: &Reply<'_>) {
    render_reply_stamped(out, id, reply, b"")
}

/// `render_reply`, with `stamp` (members, e.g. `"resultType":"complete"`) first in the result
/// object: what the stateless revision adds to every result.
pub fn render_reply_stamped(out: &mut Vec<u8>, id: &Value, reply: &Reply<'_>, stamp: &[u8]) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    let _ = serde_json::to_writer(&mut *out, id);
    // An object result, stamped: `{` stamp (`,` rest)?
    let object = |out: &mut Vec<u8>, rendered: &[u8]| match rendered.strip_prefix(b"{") {
        Some(rest) if !stamp.is_empty() => {
            out.push(b'{');
            out.extend_from_slice(stamp);
            if rest.trim_ascii_start() != b"}" {
                out.push(b',');
            }
            out.extend_from_slice(rest);
        }
        _ => out.extend_from_slice(rendered),
    };
    match reply {
        Reply::Result(v) => {
            out.extend_from_slice(b",\"result\":");
            if stamp.is_empty() {
                let _ = serde_json::to_writer(&mut *out, v);
            } else {
                object(out, &serde_json::to_vec(v).unwrap_or_default());
            }
        }
        Reply::Raw(raw) => {
            out.extend_from_slice(b",\"result\":");
            object(out, raw);
        }
        Reply::Large(n) => {
            out.extend_from_slice(b",\"result\":{");
            if !stamp.is_empty() {
                out.extend_from_slice(stamp);
                out.push(b',');
            }
            out.extend_from_slice(b"\"content\":[{\"type\":\"text\",\"text\":\"");
            fill_ascii(out, *n);
            out.extend_from_slice(b"\"}]}");
        }
        Reply::Error {
            code,
            message,
            data,
        } => render_error_object(out, *code, message, data.as_ref()),
        Reply::Slow(_) | Reply::Progress { .. } => {
            render_error_object(out, code::INTERNAL_ERROR, "unresolved reply", None)
        }
    }
    out.push(b'}');
}

/// Renders a JSON-RPC error response; `id` is `null` when the request's id is unknown.
pub fn render_error(out: &mut Vec<u8>, id: Option<&Value>, code: i32, message: &str) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    match id {
        Some(id) => {
            let _ = serde_json::to_writer(&mut *out, id);
        }
        None => out.extend_from_slice(b"null"),
    }
    render_error_object(out, code, message, None);
    out.push(b'}');
}

fn render_error_object(out: &mut Vec<u8>, code: i32, message: &str, data: Option<&Value>) {
    out.extend_from_slice(b",\"error\":{\"code\":");
    out.extend_from_slice(code.to_string().as_bytes());
    out.extend_from_slice(b",\"message\":");
    let _ = serde_json::to_writer(&mut *out, message);
    if let Some(data) = data {
        out.extend_from_slice(b",\"data\":");
        let _ = serde_json::to_writer(&mut *out, data);
    }
    out.push(b'}');
}

/// Appends exactly `n` printable ASCII bytes that need no JSON escaping.
fn fill_ascii(out: &mut Vec<u8>, n: usize) {
    const PATTERN: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.";
    out.reserve(n);
    let mut left = n;
    while left >= PATTERN.len() {
        out.extend_from_slice(PATTERN);
        left -= PATTERN.len();
    }
    out.extend_from_slice(&PATTERN[..left]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(cat: &Catalog, method: &str, params: Value) -> Value {
        let reply = dispatch(cat, method, Some(&params));
        let mut out = Vec::new();
        render_reply(&mut out, &json!(1), &reply);
        serde_json::from_slice(&out).unwrap()
    }

    fn tool(cat: &Catalog, name: &str, args: Value) -> Value {
        call(
            cat,
            "tools/call",
            json!({ "name": name, "arguments": args }),
        )
    }

    #[test]
    fn classifies_messages() {
        let req = json!({"jsonrpc":"2.0","id":7,"method":"ping"});
        assert!(matches!(
            classify(&req),
            Message::Request {
                method: "ping",
                params: None,
                ..
            }
        ));
        let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        assert!(matches!(classify(&note), Message::NoReply));
        let resp = json!({"jsonrpc":"2.0","id":"s1","result":{}});
        assert!(matches!(classify(&resp), Message::NoReply));
        let bad_version = json!({"jsonrpc":"1.0","id":1,"method":"ping"});
        assert!(matches!(
            classify(&bad_version),
            Message::Invalid { id: Some(_), .. }
        ));
        let bad_id = json!({"jsonrpc":"2.0","id":{"x":1},"method":"ping"});
        assert!(matches!(
            classify(&bad_id),
            Message::Invalid { id: None, .. }
        ));
        let bad_params = json!({"jsonrpc":"2.0","id":1,"method":"ping","params":[1]});
        assert!(matches!(classify(&bad_params), Message::Invalid { .. }));
        assert!(matches!(
            classify(&json!(3)),
            Message::Invalid { id: None, .. }
        ));
    }

    #[test]
    fn negotiates_versions() {
        let (v, r) = initialize(Some(&json!({"protocolVersion":"2025-03-26"})));
        assert_eq!(v, ProtocolVersion::V2025_03_26);
        assert_eq!(r["protocolVersion"], "2025-03-26");
        assert_eq!(r["serverInfo"]["name"], "tollgate-demo");
        let (v, _) = initialize(Some(&json!({"protocolVersion":"2026-07-28"})));
        assert_eq!(v, ProtocolVersion::LATEST_LEGACY);
        let (v, _) = initialize(None);
        assert_eq!(v, ProtocolVersion::LATEST_LEGACY);
    }

    #[test]
    fn tools_answer_and_validate() {
        let cat = Catalog::new(2);
        assert_eq!(
            tool(&cat, "echo", json!({"text":"hi"}))["result"]["content"][0]["text"],
            "hi"
        );
        assert_eq!(
            tool(&cat, "tool_0001", json!({"text":"x"}))["result"]["content"][0]["text"],
            "x"
        );
        let sum = tool(&cat, "add", json!({"a":2,"b":40}));
        assert_eq!(sum["result"]["structuredContent"]["sum"], 42);
        assert_eq!(sum["result"]["content"][0]["text"], "42");
        let fsum = tool(&cat, "add", json!({"a":0.5,"b":1}));
        assert_eq!(fsum["result"]["structuredContent"]["sum"], 1.5);
        assert_eq!(tool(&cat, "fail", json!({}))["result"]["isError"], true);
        let large = tool(&cat, "large", json!({"bytes": 1000}));
        assert_eq!(
            large["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .len(),
            1000
        );

        for (name, args) in [
            ("echo", json!({})),
            ("echo", json!({"text": 1})),
            ("add", json!({"a": "1", "b": 2})),
            ("slow", json!({"ms": 60_001})),
            ("slow", json!({"ms": -1})),
            ("progress", json!({"steps": 1001})),
            ("large", json!({"bytes": MAX_LARGE_BYTES + 1})),
            ("tool_0002", json!({"text": "x"})),
        ] {
            let r = tool(&cat, name, args.clone());
            assert_eq!(r["error"]["code"], -32602, "{name} {args}");
        }
        assert_eq!(
            tool(&cat, "nope", json!({}))["error"]["message"],
            "Unknown tool: nope"
        );
    }

    #[test]
    fn waiting_tools_are_described_not_done() {
        let cat = Catalog::new(0);
        let p = json!({"name":"progress","arguments":{"steps":3},"_meta":{"progressToken":"t"}});
        match dispatch(&cat, "tools/call", Some(&p)) {
            Reply::Progress {
                steps,
                interval,
                token,
            } => {
                assert_eq!(
                    (steps, interval, token),
                    (3, Duration::from_millis(10), Some(json!("t")))
                );
            }
            other => panic!("{other:?}"),
        }
        let s = json!({"name":"slow","arguments":{"ms":5.0}});
        assert!(
            matches!(dispatch(&cat, "tools/call", Some(&s)), Reply::Slow(d) if d == Duration::from_millis(5))
        );
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z_/]{0,12}".prop_map(Value::from),
            prop_oneof![
                Just("echo"),
                Just("add"),
                Just("slow"),
                Just("progress"),
                Just("large"),
                Just("tool_0000"),
                Just("demo://items/1")
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("name".to_string()),
                        Just("arguments".to_string()),
                        Just("text".to_string()),
                        Just("a".to_string()),
                        Just("b".to_string()),
                        Just("ms".to_string()),
                        Just("bytes".to_string()),
                        Just("uri".to_string()),
                        Just("cursor".to_string()),
                        Just("steps".to_string()),
                        "[a-z]{1,4}"
                    ],
                    inner,
                    0..5,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever a client sends, classifying and answering never panics and always renders JSON.
        #[test]
        fn any_message_gets_a_json_answer(msg in any_json(), params in any_json(), method in proptest::sample::select(vec![
            "tools/call", "tools/list", "resources/read", "prompts/get", "ping", "initialize", "x/y",
        ])) {
            let cat = Catalog::new(1);
            let _ = classify(&msg);
            let _ = initialize(Some(&params));
            let mut reply = dispatch(&cat, method, Some(&params));
            // Keep `large` answers small in this test.
            if let Reply::Large(n) = reply { reply = Reply::Large(n.min(1024)); }
            let mut out = Vec::new();
            render_reply(&mut out, &msg, &reply);
            let _: Value = serde_json::from_slice(&out).unwrap();
        }
    }

    #[test]
    fn resources_prompts_and_the_rest() {
        let cat = Catalog::new(0);
        let item = call(&cat, "resources/read", json!({"uri":"demo://items/42"}));
        assert_eq!(item["result"]["contents"][0]["text"], "item 42");
        let missing = call(&cat, "resources/read", json!({"uri":"demo://nope"}));
        assert_eq!(missing["error"]["code"], RESOURCE_NOT_FOUND);
        let hello = call(
            &cat,
            "prompts/get",
            json!({"name":"greet","arguments":{"name":"Ada"}}),
        );
        assert_eq!(
            hello["result"]["messages"][0]["content"]["text"],
            "Hello, Ada!"
        );
        assert_eq!(
            call(&cat, "prompts/get", json!({"name":"greet"}))["error"]["code"],
            -32602
        );
        assert_eq!(
            call(&cat, "tools/list", json!({"cursor":"x"}))["error"]["code"],
            -32602
        );
        assert_eq!(call(&cat, "nope/nope", json!({}))["error"]["code"], -32601);
        assert_eq!(call(&cat, "ping", json!({}))["result"], json!({}));
        assert_eq!(
            call(&cat, "completion/complete", json!({}))["result"]["completion"]["values"],
            json!([])
        );
    }
}
