//! Per-tool metrics (`tollgate_tool_calls_total{server,tool,outcome}`,
//! `tollgate_tool_duration_seconds{server,tool}`): a tool has a label of its own only when config
//! names it (`observe.tools`, a rule's `tools`), at most `observe.max_tool_series` of them in the
//! process; every other call is `other`. Calls inside a JSON-RPC batch count one by one.

mod harness;

use harness::{session, Gateway, Mcp};
use serde_json::json;

/// The sum of the samples of `name` whose labels include every `k="v"` of `labels`.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            let (head, _) = l.rsplit_once(' ').unwrap();
            labels
                .iter()
                .all(|(k, v)| head.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

fn calls(scrape: &str, tool: &str) -> f64 {
    sample(
        scrape,
        "tollgate_tool_calls_total",
        &[("server", "/mcp"), ("tool", tool), ("outcome", "ok")],
    )
}

fn observed(scrape: &str, tool: &str) -> f64 {
    sample(
        scrape,
        "tollgate_tool_duration_seconds_count",
        &[("server", "/mcp"), ("tool", tool)],
    )
}

/// Each call on a connection of its own (so both workers see some).
fn call(gw: &Gateway, tool: &str) {
    let mut m = session(gw);
    let r = m.call_tool(tool, json!({"text": "x", "a": 1, "b": 2, "ms": 1}));
    assert!(r.get("result").is_some(), "{r}");
}

/// A scrape taken once `n` calls are counted, and their durations observed, under any tool
/// label (the record phase counts a call after its answer is written, and observes its
/// duration just after counting it: the scrape may come first), or after 10 s, whatever it says.
fn scrape_once_counted(gw: &Gateway, n: usize) -> String {
    let total = |m: &str, family: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with(family))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut m = String::new();
    harness::eventually(std::time::Duration::from_secs(10), || {
        m = gw.metrics();
        total(&m, "tollgate_tool_calls_total{") >= n as f64
            && total(&m, "tollgate_tool_duration_seconds_count{") >= n as f64
    });
    m
}

#[test]
fn named_tools_get_their_label_and_the_rest_are_other() {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .yaml(
            "observe:\n  tools: [echo]\n\
             traffic:\n  rules:\n    - {name: adds, tools: [add], rate: {limit: 1000, per: 1s}}\n",
        )
        .start();
    for tool in ["echo", "echo", "add", "slow", "slow", "slow"] {
        call(&gw, tool);
    }
    let m = scrape_once_counted(&gw, 6);
    assert_eq!(calls(&m, "echo"), 2.0, "{m}");
    assert_eq!(calls(&m, "add"), 1.0, "{m}");
    assert_eq!(calls(&m, "other"), 3.0, "{m}");
    assert_eq!(calls(&m, "slow"), 0.0, "an unnamed tool has no label: {m}");
    assert_eq!(observed(&m, "echo"), 2.0, "{m}");
    assert_eq!(observed(&m, "other"), 3.0, "{m}");
}

#[test]
fn without_names_every_call_is_other() {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .start();
    call(&gw, "echo");
    call(&gw, "add");
    let m = scrape_once_counted(&gw, 2);
    assert_eq!(calls(&m, "other"), 2.0, "{m}");
    assert_eq!(calls(&m, "echo"), 0.0, "{m}");
}

#[test]
fn the_series_cap_holds_across_workers() {
    let gw = Gateway::builder()
        .workers(2)
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .yaml("observe:\n  tools: [\"*\"]\n  max_tool_series: 2\n")
        .start();
    let tools = ["echo", "add", "slow", "echo", "add", "slow", "echo"];
    for tool in tools {
        call(&gw, tool);
    }
    let total = |m: &str| -> f64 { ["echo", "add", "other"].iter().map(|t| calls(m, t)).sum() };
    let m = scrape_once_counted(&gw, tools.len());
    let labelled: Vec<&str> = ["echo", "add", "slow"]
        .into_iter()
        .filter(|t| calls(&m, t) > 0.0)
        .collect();
    assert_eq!(labelled, ["echo", "add"], "the first two names: {m}");
    assert_eq!(calls(&m, "other"), 2.0, "slow, twice: {m}");
    assert_eq!(total(&m), tools.len() as f64, "{m}");
}

fn tool_call(id: u32, name: &str) -> serde_json::Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
           "params":{"name":name,"arguments":{"text":"x","a":1,"b":2}}})
}

#[test]
fn calls_inside_a_batch_are_counted_each_under_its_tool() {
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .yaml("observe:\n  tools: [echo, add]\n")
        .start();
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.initialize("2025-03-26");
    let batch = json!([
        tool_call(1, "echo"),
        tool_call(2, "echo"),
        tool_call(3, "add"),
        {"jsonrpc":"2.0","id":4,"method":"tools/list"},
        tool_call(5, "slow"),
    ]);
    let r = m.post_raw(batch.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    // Counted by the record phase, after the answer.
    let mut scrape = String::new();
    assert!(
        harness::eventually(std::time::Duration::from_secs(10), || {
            scrape = gw.metrics();
            calls(&scrape, "other") >= 1.0
        }),
        "{scrape}"
    );
    assert_eq!(calls(&scrape, "echo"), 2.0, "{scrape}");
    assert_eq!(calls(&scrape, "add"), 1.0, "{scrape}");
    assert_eq!(
        calls(&scrape, "other"),
        1.0,
        "tools/list is no tool call: {scrape}"
    );
    assert_eq!(observed(&scrape, "echo"), 2.0, "{scrape}");
}

#[test]
fn a_call_refused_inside_a_federated_batch_is_counted_as_rejected() {
    let gw = Gateway::builder()
        .upstream("a", "builtin:demo")
        .upstream("b", "builtin:demo")
        .yaml(concat!(
            "servers:\n",
            "  - path: /mcp\n",
            "    upstreams: [a, b]\n",
            "    rules:\n",
            "      - {name: no-add, effect: deny, tools: [b__add]}\n",
            "      - {name: rest, effect: allow, tools: [\"*\"]}\n",
            "observe:\n  tools: [a__echo, b__add]\n",
        ))
        .start();
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.initialize("2025-03-26");
    let batch = json!([tool_call(1, "a__echo"), tool_call(2, "b__add")]);
    let r = m.post_raw(batch.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let count = |s: &str, tool: &str, outcome: &str| {
        sample(
            s,
            "tollgate_tool_calls_total",
            &[("server", "/mcp"), ("tool", tool), ("outcome", outcome)],
        )
    };
    let mut scrape = String::new();
    assert!(
        harness::eventually(std::time::Duration::from_secs(10), || {
            scrape = gw.metrics();
            count(&scrape, "a__echo", "ok") + count(&scrape, "b__add", "rejected") >= 2.0
        }),
        "{scrape}"
    );
    assert_eq!(count(&scrape, "a__echo", "ok"), 1.0, "{scrape}");
    assert_eq!(count(&scrape, "b__add", "rejected"), 1.0, "{scrape}");
    assert_eq!(count(&scrape, "b__add", "ok"), 0.0, "{scrape}");
}
