//! What the traffic-limit tests (`traffic.rs`, `traffic_redis.rs`) share: a gateway serving the
//! built-in demo with the test's `traffic:` section, the call they count, and whether a reply
//! was admitted.

use serde_json::json;

use super::{Gateway, Mcp, Response};

/// A gateway on `workers` workers serving the built-in demo at `/mcp`, with `yaml` (the test's
/// `traffic:` section, and whatever else it needs) added to its config.
pub fn demo_gateway(workers: usize, yaml: &str) -> Gateway {
    Gateway::builder()
        .workers(workers)
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .yaml(yaml)
        .start()
}

/// The demo's `echo` with `{"text": "hi"}`.
pub fn echo(m: &mut Mcp) -> Response {
    m.request(
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "hi"}}),
    )
}

/// Whether `r` is a tool result that is not an error: the call was admitted.
pub fn ok(r: &Response) -> bool {
    let v = r.json();
    r.status == 200 && v.get("result").is_some() && v["result"]["isError"] != true
}
