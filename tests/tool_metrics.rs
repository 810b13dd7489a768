//! Per-tool metrics (`tollgate_tool_calls_total{server,tool,outcome}`,
//! `tollgate_tool_duration_seconds{server,tool}`): a tool has a label of its own only when config
//! names it (`observe.tools`, a rule's `tools`), at most `observe.max_tool_series` of them in the
//! process; every other call is `other`.

mod harness;

use harness::{Gateway, Mcp};
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
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.initialize("2025-06-18");
    let r = m.call_tool(tool, json!({"text": "x", "a": 1, "b": 2, "ms": 1}));
    assert!(r.get("result").is_some(), "{r}");
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
    let m = gw.metrics();
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
    let m = gw.metrics();
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
    let m = gw.metrics();
    let labelled: Vec<&str> = ["echo", "add", "slow"]
        .into_iter()
        .filter(|t| calls(&m, t) > 0.0)
        .collect();
    assert_eq!(labelled, ["echo", "add"], "the first two names: {m}");
    assert_eq!(calls(&m, "other"), 2.0, "slow, twice: {m}");
    let total: f64 = ["echo", "add", "other"].iter().map(|t| calls(&m, t)).sum();
    assert_eq!(total, tools.len() as f64);
}
