//! `tollgate check --probe`: the real binary contacts demo upstreams (their own processes and the
//! built-in demo), and reports what the upstreams' lists make of the config.

mod harness;

use std::process::Command;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use harness::scripted::{self, Scripted};
use harness::{Demo, Refused, BIN};
use serde_json::json;

/// Runs `tollgate check --probe` on `yaml`; returns the exit code and stdout.
fn probe(name: &str, yaml: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("tollgate-probe-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--probe", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    (out.status.code().unwrap_or(-1), stdout)
}

/// The report part of stdout (the probe's YAML comments), each line without its `# `.
fn report(stdout: &str) -> Vec<String> {
    let at = stdout
        .find("# tollgate check --probe")
        .expect("probe report");
    stdout[at..]
        .lines()
        .map(|l| l.trim_start_matches("# ").to_string())
        .collect()
}

/// Two copies of one server behind an endpoint with their prefixes turned off: every name both
/// list meets. The first upstream keeps it; check names both.
#[test]
fn two_unprefixed_upstreams_collide() {
    let (a, b) = (Demo::start(&[]), Demo::start(&["--tools", "3"]));
    let yaml = format!(
        "upstreams:\n  - {{name: a, url: \"{}\", prefix: \"\"}}\n  - {{name: b, url: \"{}\", prefix: \"\"}}\n\
         servers:\n  - path: /mcp\n    upstreams: [a, b]\n",
        a.url(),
        b.url()
    );
    let (code, out) = probe("collide", &yaml);
    assert_eq!(code, 1, "{out}");
    let r = report(&out);
    assert!(r
        .iter()
        .any(|l| l.contains("upstream a: tools 6, prompts 1")));
    assert!(r
        .iter()
        .any(|l| l.contains("upstream b: tools 9, prompts 1")));
    assert!(
        r.iter().any(|l| l
            == "  problem: tools: \"echo\" exposed by a (\"echo\") and by b (\"echo\"): only the first is exposed"),
        "{r:?}"
    );
    assert!(r
        .iter()
        .any(|l| l.starts_with("  problem: prompts: \"greet\"")));
    assert!(r
        .iter()
        .any(|l| l.contains("problem: resources: templates")));
    // Both are unprefixed: no note about meeting another's prefix.
    assert!(!r.iter().any(|l| l.contains("note:")), "{r:?}");
}

/// Filter globs that match no exposed name (a prefix typo), an unprefixed upstream beside a
/// prefixed one (a note, not a problem) and an upstream nobody listens on (on its own endpoint;
/// beside others it leaves the globs unchecked, as they may be meant for its names).
#[test]
fn unmatched_globs_and_unreachable_upstream() {
    let a = Demo::start(&[]);
    let refused = Refused::new();
    let dead = refused.addr();
    let yaml = format!(
        "upstreams:\n  - {{name: a, url: \"{}\"}}\n  - {{name: local, url: \"builtin:demo\", prefix: \"\"}}\n\
         \x20 - {{name: gone, url: \"http://{dead}/mcp\", connect_timeout: 1s}}\n\
         servers:\n  - path: /mcp\n    upstreams: [a, local]\n    tools: {{allow: [\"a__*\", \"echo\", \"alpha__*\"]}}\n\
         \x20   resources: {{deny: [\"nothing://*\"]}}\n  - path: /gone\n    upstream: gone\n",
        a.url()
    );
    let (code, out) = probe("unmatched", &yaml);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("globs not checked"));
    let r = report(&out);
    assert!(
        r.contains(
            &"  problem: servers[0].tools.allow[2]: \"alpha__*\" matches no tool".to_string()
        ),
        "{r:?}"
    );
    assert!(!r
        .iter()
        .any(|l| l.contains("tools.allow[0]") || l.contains("tools.allow[1]")));
    assert!(r.contains(
        &"  problem: servers[0].resources.deny[0]: \"nothing://*\" matches no resource or template"
            .to_string()
    ));
    assert!(r
        .iter()
        .any(|l| l.starts_with("  note: upstream local is unprefixed")));
    assert!(r.contains(&"server /gone (single upstream):".to_string()));
    assert!(
        r.iter()
            .any(|l| l.starts_with("  problem: upstream gone could not be probed: initialize:")),
        "{r:?}"
    );
    // (a and local are both demos: their resources meet too, which is reported as well.)
    assert!(r
        .iter()
        .any(|l| l.starts_with("  problem: resources: \"demo://readme\" exposed by a")));
}

/// A federated endpoint (one upstream, names prefixed) whose filter matches something, and a
/// plain one: exit 0, and the effective config is still printed first.
#[test]
fn clean_config_exits_zero() {
    let (a, b) = (Demo::start(&["--tools", "2"]), Demo::start(&[]));
    let yaml = format!(
        "upstreams:\n  - {{name: a, url: \"{}\"}}\n  - {{name: b, url: \"{}\"}}\n\
         servers:\n  - path: /mcp\n    upstreams: [a]\n    prefix_names: always\n    tools: {{deny: [\"a__fail\"]}}\n  - path: /b\n    upstream: b\n",
        a.url(),
        b.url()
    );
    let (code, out) = probe("clean", &yaml);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("# tollgate effective configuration"),
        "{out}"
    );
    let r = report(&out);
    assert!(r.contains(&"server /mcp (federated):".to_string()));
    assert!(r.iter().any(|l| l.contains("upstream a: tools 8")));
    assert!(r.contains(&"server /b (single upstream):".to_string()));
    assert!(
        r.contains(&"probe: 0 problem(s) in 2 server(s)".to_string()),
        "{r:?}"
    );
}

/// With an upstream of the endpoint down, globs are not judged (they may match its names).
#[test]
fn globs_unchecked_when_an_upstream_is_down() {
    let a = Demo::start(&[]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        "upstreams:\n  - {{name: a, url: \"{}\"}}\n  - {{name: gone, url: \"http://{dead}/mcp\"}}\n\
         servers:\n  - path: /mcp\n    upstreams: [a, gone]\n    tools: {{allow: [\"gone__*\"]}}\n",
        a.url()
    );
    let (code, out) = probe("down", &yaml);
    assert_eq!(code, 1, "{out}");
    let r = report(&out);
    assert!(
        r.contains(
            &"  note: filter globs not checked: not every upstream could be probed".to_string()
        ),
        "{r:?}"
    );
    assert!(!r.iter().any(|l| l.contains("matches no")), "{r:?}");
    assert!(
        r.contains(&"probe: 1 problem(s) in 1 server(s)".to_string()),
        "{r:?}"
    );
}

/// An upstream that accepts and never answers is given up on after its `request_timeout`.
#[test]
fn stalled_upstream_is_bounded_by_its_timeout() {
    let up = Scripted::start(|mut s, _| {
        let _req = scripted::read_request(&mut s);
        std::thread::sleep(std::time::Duration::from_secs(10));
    });
    let yaml = format!(
        "upstreams:\n  - {{name: mute, url: \"{}\", request_timeout: 300ms}}\nservers:\n  - path: /mcp\n    upstream: mute\n",
        up.url()
    );
    let t = std::time::Instant::now();
    let (code, out) = probe("stalled", &yaml);
    assert_eq!(code, 1, "{out}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    assert!(report(&out)
        .iter()
        .any(|l| l.starts_with("  problem: upstream mute could not be probed: initialize:")));
}

/// A config error is still exit 2, without a probe.
#[test]
fn config_error_exits_two_without_probing() {
    let (code, out) = probe("bad", "servers:\n  - path: /mcp\n    upstream: nope\n");
    assert_eq!(code, 2);
    assert!(!out.contains("--probe"));
}

/// An upstream whose tool names the gateway must rewrite (a character outside the set, a name
/// too long once prefixed), listed over two pages: each is reported as `original -> exposed
/// (why)`, which is not a problem; the probe's session is initialized, then ended with DELETE.
/// A scripted upstream `notes` with tools only, listed over two pages (`fail_list`: its
/// tools/list answers an error); counts the notifications/initialized and DELETEs it received.
fn notes_upstream(fail_list: bool) -> (Scripted, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let deletes = Arc::new(AtomicUsize::new(0));
    let initialized = Arc::new(AtomicUsize::new(0));
    let (d, i) = (deletes.clone(), initialized.clone());
    let up = Scripted::start(move |mut s, _| {
        while let Some(req) = scripted::read_request(&mut s) {
            let v = req.json();
            let reply = if req.method == "DELETE" {
                assert_eq!(req.header("mcp-session-id"), Some("up-1"));
                d.fetch_add(1, Ordering::SeqCst);
                scripted::response("200 OK", &[], b"")
            } else if v["method"] == "notifications/initialized" {
                i.fetch_add(1, Ordering::SeqCst);
                scripted::response("202 Accepted", &[], b"")
            } else if v["method"] == "tools/list" && fail_list {
                let e = json!({"jsonrpc": "2.0", "id": v["id"], "error": {"code": -32603, "message": "broken"}});
                scripted::json_response(&e.to_string())
            } else if v["method"] == "tools/list" {
                assert_eq!(req.header("mcp-session-id"), Some("up-1"));
                let result = if v["params"]["cursor"] == "p2" {
                    json!({"tools": [{"name": "a_rather_long_tool_name_that_goes_on_and_on_and_on_and_on_and_on_and_on", "inputSchema": {}}]})
                } else {
                    json!({"tools": [{"name": "make note!", "inputSchema": {}}, {"name": "plain", "inputSchema": {}}], "nextCursor": "p2"})
                };
                scripted::json_response(&scripted::rpc_result(&v["id"], result))
            } else if let Some(r) = scripted::mcp_basics(&req) {
                r
            } else {
                scripted::response("500 Internal Server Error", &[], b"")
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    });
    (up, deletes, initialized)
}

/// An upstream whose list fails is a problem, and its session is still ended.
#[test]
fn failing_list_is_a_problem_and_the_session_still_ends() {
    let (up, deletes, _) = notes_upstream(true);
    let yaml = format!(
        "upstreams:\n  - {{name: notes, url: \"{}\"}}\nservers:\n  - path: /mcp\n    upstream: notes\n",
        up.url()
    );
    let (code, out) = probe("failing", &yaml);
    assert_eq!(code, 1, "{out}");
    let r = report(&out);
    assert!(
        r.iter().any(|l| l
            .starts_with("  problem: upstream notes could not be probed: tools/list: ")
            && l.contains("broken")),
        "{r:?}"
    );
    assert_eq!(deletes.load(Ordering::SeqCst), 1);
}

/// An upstream whose tool names the gateway must rewrite (a character outside the set, a name
/// too long once prefixed), listed over two pages: each is reported as `original -> exposed
/// (why)`, which is not a problem; the probe's session is initialized, then ended with DELETE.
#[test]
fn rewritten_names_are_reported_across_pages() {
    let (up, deletes, initialized) = notes_upstream(false);
    let yaml = format!(
        "upstreams:\n  - {{name: notes, url: \"{}\"}}\n\
         servers:\n  - path: /mcp\n    upstream: notes\n    prefix_names: always\n",
        up.url()
    );
    let (code, out) = probe("rewritten", &yaml);
    assert_eq!(code, 0, "{out}");
    let r = report(&out);
    assert!(r.iter().any(|l| l == "  upstream notes: tools 3, prompts -, resources -, resource templates -"), "{r:?}");
    let rewritten: Vec<&String> = r.iter().filter(|l| l.starts_with("  rewritten:")).collect();
    assert_eq!(rewritten.len(), 2, "{r:?}");
    assert!(rewritten[0]
        .starts_with("  rewritten: tools of notes: \"make note!\" -> \"notes__make_note_--"));
    assert!(rewritten[0].ends_with("(characters outside [A-Za-z0-9_.-])"));
    assert!(rewritten[1]
        .contains("\"a_rather_long_tool_name_that_goes_on_and_on_and_on_and_on_and_on_and_on\" -> \"notes__a_rather"));
    assert!(rewritten[1].ends_with("(too long)"));
    assert_eq!(initialized.load(Ordering::SeqCst), 1);
    assert_eq!(deletes.load(Ordering::SeqCst), 1);
}

/// An upstream with `transport: sse` is probed through its event stream like a worker would
/// reach it (and its session ends with the probe); an SSE URL that announces an endpoint on
/// another origin cannot be probed, and says why.
#[test]
fn a_legacy_sse_upstream_is_probed_through_its_stream() {
    use harness::legacy_sse::{Announce, LegacyServer};
    let up = LegacyServer::start(Announce::Path);
    let yaml = format!(
        "upstreams:\n  - {{name: old, url: \"{}\", transport: sse}}\nservers:\n  - {{path: /mcp, upstream: old}}\n",
        up.url()
    );
    let (code, out) = probe("legacy", &yaml);
    assert_eq!(code, 0, "{out}");
    let r = report(&out);
    assert!(
        r.iter().any(|l| l.contains("upstream old: tools 6")),
        "{r:?}"
    );
    let methods: Vec<String> = up
        .received()
        .iter()
        .map(|m| m["method"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        methods,
        ["initialize", "notifications/initialized", "tools/list"]
    );
    assert!(harness::eventually(
        std::time::Duration::from_secs(10),
        || up.closed_streams() == 1
    ));

    let evil = LegacyServer::start(Announce::OtherOrigin);
    let yaml = format!(
        "upstreams:\n  - {{name: evil, url: \"{}\", transport: sse}}\nservers:\n  - {{path: /mcp, upstream: evil}}\n",
        evil.url()
    );
    let (code, out) = probe("legacy-evil", &yaml);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("another origin"), "{out}");
    assert!(evil.received().is_empty());
}
