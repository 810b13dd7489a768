//! What the demo server offers: tools, resources, templates and prompts, with the list results
//! rendered to bytes once at start, so `tools/list` over thousands of tools costs a copy, not a serialise.

use serde_json::{json, Value};

pub const README_URI: &str = "demo://readme";
pub const DATA_URI: &str = "demo://data.json";
pub const ITEM_PREFIX: &str = "demo://items/";

pub const README_TEXT: &str =
    "tollgate-demo: the built-in MCP server behind `url: builtin:demo`.\n\
Tools: echo, add, slow, progress, large, fail. Resources: demo://readme, demo://data.json, \
demo://items/{id}. Prompt: greet.\n";

pub const DATA_JSON: &str = r#"{"name":"tollgate-demo","items":[{"id":1,"label":"one"},{"id":2,"label":"two"},{"id":3,"label":"three"}]}"#;

/// The demo's offer with every list result pre-rendered (the `result` object of the response).
pub struct Catalog {
    pub tools_list: Vec<u8>,
    pub resources_list: Vec<u8>,
    pub templates_list: Vec<u8>,
    pub prompts_list: Vec<u8>,
    /// How many synthetic `tool_NNNN` tools exist.
    pub extra_tools: usize,
}

impl Catalog {
    pub fn new(extra_tools: usize) -> Catalog {
        let mut tools = builtin_tools();
        tools.extend((0..extra_tools).map(extra_tool));
        Catalog {
            tools_list: render(&json!({ "tools": tools })),
            resources_list: render(&json!({ "resources": [
                {
                    "uri": README_URI,
                    "name": "readme",
                    "title": "About the demo server",
                    "mimeType": "text/plain",
                    "description": "What the demo server offers."
                },
                {
                    "uri": DATA_URI,
                    "name": "data.json",
                    "title": "Sample data",
                    "mimeType": "application/json",
                    "description": "A small JSON document."
                }
            ]})),
            templates_list: render(&json!({ "resourceTemplates": [
                {
                    "uriTemplate": "demo://items/{id}",
                    "name": "item",
                    "title": "An item by id",
                    "mimeType": "text/plain",
                    "description": "Reads as the text `item {id}`."
                }
            ]})),
            prompts_list: render(&json!({ "prompts": [
                {
                    "name": "greet",
                    "title": "Greeting",
                    "description": "A user message that greets someone by name.",
                    "arguments": [
                        { "name": "name", "description": "Who to greet", "required": true }
                    ]
                }
            ]})),
            extra_tools,
        }
    }

    /// Whether `name` is one of the synthetic tools (`tool_0000` .. `tool_{extra_tools-1}`, at
    /// least four digits, exactly as `tools/list` spells it).
    pub fn is_extra_tool(&self, name: &str) -> bool {
        let Some(digits) = name.strip_prefix("tool_") else {
            return false;
        };
        if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        // More than four digits only without a leading zero, so each tool has one spelling.
        if digits.len() > 4 && digits.starts_with('0') {
            return false;
        }
        digits.parse::<usize>().is_ok_and(|n| n < self.extra_tools)
    }
}

fn render(v: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn builtin_tools() -> Vec<Value> {
    vec![
        json!({
            "name": "echo",
            "title": "Echo",
            "description": "Returns the text it is given.",
            "inputSchema": {
                "type": "object",
                "properties": { "text": { "type": "string", "description": "Text to echo back" } },
                "required": ["text"]
            },
            "annotations": { "readOnlyHint": true, "idempotentHint": true, "openWorldHint": false }
        }),
        json!({
            "name": "add",
            "title": "Add",
            "description": "Adds two numbers; the sum is also returned as structured content.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "a": { "type": "number", "description": "First addend" },
                    "b": { "type": "number", "description": "Second addend" }
                },
                "required": ["a", "b"]
            },
            "outputSchema": {
                "type": "object",
                "properties": { "sum": { "type": "number" } },
                "required": ["sum"]
            },
            "annotations": { "readOnlyHint": true, "idempotentHint": true, "openWorldHint": false }
        }),
        json!({
            "name": "slow",
            "title": "Slow",
            "description": "Waits the given number of milliseconds, then answers.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "ms": { "type": "integer", "minimum": 0, "maximum": super::handler::MAX_SLOW_MS, "description": "How long to wait" }
                },
                "required": ["ms"]
            }
        }),
        json!({
            "name": "progress",
            "title": "Progress",
            "description": "Reports progress steps (when the call carries a progressToken), then answers. Always answers as an SSE stream.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "steps": { "type": "integer", "minimum": 0, "maximum": super::handler::MAX_PROGRESS_STEPS, "default": 5 },
                    "interval_ms": { "type": "integer", "minimum": 0, "maximum": super::handler::MAX_INTERVAL_MS, "default": 10 }
                }
            }
        }),
        json!({
            "name": "large",
            "title": "Large",
            "description": "Returns one text content of exactly `bytes` ASCII bytes.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "bytes": { "type": "integer", "minimum": 0, "maximum": super::handler::MAX_LARGE_BYTES }
                },
                "required": ["bytes"]
            }
        }),
        json!({
            "name": "fail",
            "title": "Fail",
            "description": "Always returns a tool error (isError: true).",
            "inputSchema": { "type": "object", "properties": {} }
        }),
    ]
}

fn extra_tool(i: usize) -> Value {
    json!({
        "name": format!("tool_{i:04}"),
        "description": format!("Synthetic tool {i}: echoes its text."),
        "inputSchema": {
            "type": "object",
            "properties": { "text": { "type": "string" } },
            "required": ["text"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_tool_once_with_a_schema() {
        let cat = Catalog::new(3);
        let v: Value = serde_json::from_slice(&cat.tools_list).unwrap();
        let tools = v["tools"].as_array().unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "echo",
                "add",
                "slow",
                "progress",
                "large",
                "fail",
                "tool_0000",
                "tool_0001",
                "tool_0002"
            ]
        );
        assert!(tools.iter().all(|t| t["inputSchema"]["type"] == "object"));
    }

    #[test]
    fn extra_tool_names_have_one_spelling() {
        let cat = Catalog::new(12_000);
        assert!(cat.is_extra_tool("tool_0000"));
        assert!(cat.is_extra_tool("tool_0042"));
        assert!(cat.is_extra_tool("tool_11999"));
        assert!(!cat.is_extra_tool("tool_12000"));
        assert!(!cat.is_extra_tool("tool_42"));
        assert!(!cat.is_extra_tool("tool_00042"));
        assert!(!cat.is_extra_tool("tool_+042"));
        assert!(!cat.is_extra_tool("echo"));
        assert!(!Catalog::new(0).is_extra_tool("tool_0000"));
    }
}
