//! Every metric tollgate exports passes `promtool check metrics` (help text, types, naming lints).

mod harness;

use std::io::Write;
use std::process::{Command, Stdio};

use harness::{Demo, Gateway, Mcp, JSON_HEADERS};
use serde_json::json;

/// `promtool` on PATH, or `None` after saying why the test cannot run (a failure under CI).
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("promtool");
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "promtool not installed, and CI is set: scripts/install-tools.sh installs it \
             (apt-get install prometheus)"
        );
    }
    eprintln!("\n*** SKIPPED: promtool not installed (apt-get install prometheus) ***\n");
    None
}

#[test]
fn metrics_pass_promtool_check_metrics() {
    let Some(promtool) = promtool() else { return };
    let demo = Demo::start(&[]);
    let gw = Gateway::builder()
        .upstream("up", &demo.url())
        .serve("/mcp", "up")
        .limit("max_body_bytes", "1KiB")
        .start();
    // Traffic so that most series exist: calls (request and upstream histograms), a refusal
    // by reason (unknown path), limit refusals (413, 414), a session ended by DELETE.
    let mut mcp = Mcp::new(gw.addr, "/mcp");
    mcp.initialize("2025-06-18");
    mcp.call_tool("echo", json!({"text": "x"}));
    mcp.request("tools/list", json!({}));
    let r = gw.client().request("POST", "/nope", &[], b"{}");
    assert_eq!(r.status, 404);
    let long = format!("/mcp?{}", "a".repeat(10 * 1024));
    let r = gw.client().request("GET", &long, &[], b"");
    assert_eq!(r.status, 414);
    let r = gw
        .client()
        .request("POST", "/mcp", &JSON_HEADERS, &[b' '; 2048]);
    assert_eq!(r.status, 413);
    let hs: Vec<(String, String)> = mcp
        .headers()
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let hs: Vec<(&str, &str)> = hs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    mcp.http.request("DELETE", "/mcp", &hs, b"");

    let m = gw.metrics();
    for family in [
        "tollgate_requests_total",
        "tollgate_request_duration_seconds_bucket",
        "tollgate_upstream_duration_seconds_bucket",
        "tollgate_rejections_total",
        "tollgate_limit_rejections_total",
        "tollgate_build_info",
        // Registered at zero when the gateway is built, so it is there before anything fails.
        "tollgate_control_undeliverable_total{kind=\"revoke\"} 0",
    ] {
        assert!(m.contains(family), "{family} in the scrape:\n{m}");
    }
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics reported problems:\n{said}\n--- scrape ---\n{m}"
    );
}
