//! Authorization rules end to end (`servers[].rules`, `policy::rules`), through the real binary
//! and the built-in demo: lists filtered, hidden tools unknown, visible tools denied in band
//! with a sentence, every message of a batch decided on its own, both protocol eras, and the
//! decisions counted by reason.

mod harness;

use harness::{metric_value, session, tool_names, Gateway, Mcp};
use serde_json::{json, Value};

/// The demo behind /mcp with rules: `fail` denied outright (hidden), `slow` allowed only from
/// 10.0.0.0/8 (visible, denied from loopback), everything not destructive allowed (echo and
/// add are read-only); progress and large (destructive by the MCP defaults) match no rule.
fn gateway() -> Gateway {
    Gateway::builder()
        .upstream("demo", "builtin:demo")
        .yaml(concat!(
            "servers:\n",
            "  - path: /mcp\n",
            "    upstream: demo\n",
            "    rules:\n",
            "      - {name: no-fail, effect: deny, tools: [fail]}\n",
            "      - {name: office, effect: allow, tools: [slow], sources: [10.0.0.0/8]}\n",
            "      - {name: safe, effect: allow, annotations: {destructiveHint: false}}\n",
            "      - {name: lists, effect: allow, methods: [logging/setLevel, completion/complete]}\n",
        ))
        .start()
}

fn call(m: &mut Mcp, name: &str) -> Value {
    let r = m.request(
        "tools/call",
        json!({"name": name, "arguments": {"text": "hi", "a": 1, "b": 2, "ms": 1}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn lists_show_only_what_the_rules_allow_and_calls_get_the_right_shape() {
    let gw = gateway();
    let mut m = session(&gw);
    let listed = m.request("tools/list", json!({})).json();
    assert_eq!(tool_names(&listed), ["add", "echo", "slow"], "{listed}");

    let ok = call(&mut m, "echo");
    assert_eq!(ok["result"]["content"][0]["text"], "hi", "{ok}");
    // Hidden (denied outright, or allowed by no rule): unknown, its existence not revealed.
    for hidden in ["fail", "progress"] {
        let r = call(&mut m, hidden);
        assert_eq!(r["error"]["code"], -32602, "{r}");
        assert_eq!(
            r["error"]["message"],
            format!("Unknown tool: {hidden}"),
            "{r}"
        );
    }
    // Visible, denied by where the call comes from: a tool result the model can read.
    let r = call(&mut m, "slow");
    assert_eq!(r["result"]["isError"], true, "{r}");
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("slow") && text.contains("network address"),
        "{text}"
    );

    // The record phase counts a request after its response is written: the last one may not
    // be counted yet when the client has its answer.
    let mut scrape = String::new();
    let count = |scrape: &str, d: &str, why: &str| {
        metric_value(
            scrape,
            &format!("tollgate_authz_decisions_total{{decision=\"{d}\",reason=\"{why}\"}}"),
        )
    };
    let want = [
        ("allow", "rule", 1.0),
        ("deny", "hidden", 2.0),
        ("deny", "source", 1.0),
    ];
    let settled = harness::eventually(std::time::Duration::from_secs(5), || {
        scrape = gw.metrics();
        want.iter().all(|(d, why, n)| count(&scrape, d, why) >= *n)
    });
    assert!(settled, "{scrape}");
    for (d, why, n) in want {
        assert_eq!(count(&scrape, d, why), n, "{d}/{why}: {scrape}");
    }
}

/// A completion's reference is held to what its caller may use here and now, not merely to
/// what it may see: `greet` is listed from anywhere but usable only from 10.0.0.0/8, so from
/// loopback completing its argument is refused like an unknown reference; once a rule lets
/// loopback use it, the same completion is answered.
#[test]
fn a_completion_reference_must_be_usable_not_only_visible() {
    let start = |where_from: &str| {
        Gateway::builder()
            .upstream("demo", "builtin:demo")
            .yaml(&format!(
                concat!(
                    "servers:\n",
                    "  - path: /mcp\n",
                    "    upstream: demo\n",
                    "    rules:\n",
                    "      - {{name: greet, effect: allow, prompts: [greet], sources: [{}]}}\n",
                    "      - {{name: lists, effect: allow, methods: [prompts/list, completion/complete]}}\n",
                ),
                where_from
            ))
            .start()
    };
    let complete = json!({
        "ref": {"type": "ref/prompt", "name": "greet"},
        "argument": {"name": "name", "value": "A"}
    });
    for (sources, usable) in [("10.0.0.0/8", false), ("127.0.0.0/8", true)] {
        let gw = start(sources);
        let mut m = session(&gw);
        let listed = m.request("prompts/list", json!({})).json();
        assert_eq!(listed["result"]["prompts"][0]["name"], "greet", "{listed}");
        let r = m.request("completion/complete", complete.clone()).json();
        if usable {
            assert!(r["result"]["completion"]["values"].is_array(), "{r}");
        } else {
            assert_eq!(r["error"]["code"], -32602, "{sources}: {r}");
            assert!(
                r["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Unknown reference")),
                "{r}"
            );
        }
    }
}

#[test]
fn every_message_of_a_batch_is_decided_on_its_own() {
    let gw = gateway();
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.initialize("2025-03-26");
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "a"}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "fail", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "slow", "arguments": {"ms": 1}}},
    ]);
    let r = m.post_raw(batch.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let answers = r.json();
    let by_id = |id: i64| {
        answers
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no answer {id}: {answers}"))
    };
    assert_eq!(by_id(1)["result"]["content"][0]["text"], "a");
    assert_eq!(by_id(2)["error"]["code"], -32602);
    assert_eq!(by_id(3)["result"]["isError"], true);
}

#[test]
fn stateless_requests_are_decided_and_their_lists_are_private() {
    let gw = gateway();
    let post = |method: &str, name: Option<&str>, params: Value| {
        gw.stateless("/mcp", method, name, params, &[])
    };
    let listed = post("tools/list", None, json!({})).json();
    assert_eq!(tool_names(&listed), ["add", "echo", "slow"], "{listed}");
    assert_eq!(listed["result"]["cacheScope"], "private", "{listed}");
    let r = post(
        "tools/call",
        Some("fail"),
        json!({"name": "fail", "arguments": {}}),
    )
    .json();
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let r = post(
        "tools/call",
        Some("slow"),
        json!({"name": "slow", "arguments": {"ms": 1}}),
    )
    .json();
    assert_eq!(r["result"]["isError"], true, "{r}");
    let r = post(
        "tools/call",
        Some("echo"),
        json!({"name": "echo", "arguments": {"text": "x"}}),
    )
    .json();
    assert_eq!(r["result"]["content"][0]["text"], "x", "{r}");
}

#[test]
fn rules_with_problems_are_refused_at_load() {
    let text = concat!(
        "upstreams: [{name: demo, url: \"builtin:demo\"}]\n",
        "servers:\n",
        "  - path: /mcp\n",
        "    upstream: demo\n",
        "    rules:\n",
        "      - {effect: maybe}\n",
        "      - {effect: allow, tools: []}\n",
        "      - {effect: allow, sources: [10.0.0.0/33], hours: \"8-18\", methods: [tools/destroy]}\n",
        "      - {effect: deny, upstreams: [nope], days: [funday]}\n",
        "      - {effect: allow, roles: []}\n",
    );
    let err = tollgate::config::load_str(text).unwrap_err().to_string();
    for want in [
        "servers[0].rules[0].effect: expected allow or deny",
        "servers[0].rules[1].tools: an empty list matches nothing",
        "servers[0].rules[2].sources[0]",
        "servers[0].rules[2].hours",
        "servers[0].rules[2].methods[0]",
        "servers[0].rules[3].upstreams[0]: no upstream named \"nope\"",
        "servers[0].rules[3].days[0]",
        "servers[0].rules[4].roles: an empty list would match everyone",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn rules_render_as_they_load() {
    let text = concat!(
        "upstreams: [{name: demo, url: \"builtin:demo\"}, {name: other, url: \"builtin:demo\"}]\n",
        "servers:\n",
        "  - path: /mcp\n",
        "    upstreams: [demo, other]\n",
        "    rules:\n",
        "      - {name: a, effect: allow, upstreams: [other], tools: [\"x_*\"], methods: [tools/call],\n",
        "         annotations: {destructiveHint: false, openWorldHint: true}, roles: [r], scopes: [s],\n",
        "         tenants: [t], clients: [c], subjects: [u], sources: [10.0.0.0/8, \"::1\"],\n",
        "         hours: \"22:00-06:00\", days: [mon, fri], message: \"Ask an admin.\"}\n",
        "      - {effect: deny, prompts: [p], resources: [\"file:///*\"]}\n",
    );
    let c = tollgate::config::load_str(text).unwrap();
    let once = tollgate::config::render_effective(&c);
    assert!(once.contains("hours: \"22:00-06:00\""), "{once}");
    assert!(once.contains("      - effect: deny"), "{once}");
    // The generated session key is shown redacted: read back with one of its own.
    let key = "  key: \"0000000000000000000000000000000000000000000000000000000000000000\"";
    let readable: String = once
        .lines()
        .map(|l| if l.starts_with("  key: ") { key } else { l })
        .map(|l| format!("{l}\n"))
        .collect();
    let again = tollgate::config::render_effective(&tollgate::config::load_str(&readable).unwrap());
    let once: Vec<&str> = once.lines().filter(|l| !l.starts_with("  key")).collect();
    let again: Vec<&str> = again.lines().filter(|l| !l.starts_with("  key")).collect();
    assert_eq!(once, again);
}
