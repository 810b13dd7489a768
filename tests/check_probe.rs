//! `tollgate check --probe`: the real binary contacts demo upstreams (their own processes and the
//! built-in demo), and reports what the upstreams' lists make of the config.

mod harness;

use std::process::Command;

use harness::{Demo, BIN};

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
/// prefixed one (a note, not a problem) and an upstream nobody listens on.
#[test]
fn unmatched_globs_and_unreachable_upstream() {
    let a = Demo::start(&[]);
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        "upstreams:\n  - {{name: a, url: \"{}\"}}\n  - {{name: local, url: \"builtin:demo\", prefix: \"\"}}\n\
         \x20 - {{name: gone, url: \"http://{dead}/mcp\", connect_timeout: 1s}}\n\
         servers:\n  - path: /mcp\n    upstreams: [a, local]\n    tools: {{allow: [\"a__*\", \"echo\", \"alpha__*\"]}}\n\
         \x20   resources: {{deny: [\"nothing://*\"]}}\n  - path: /gone\n    upstream: gone\n",
        a.url()
    );
    let (code, out) = probe("unmatched", &yaml);
    assert_eq!(code, 1, "{out}");
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
            .any(|l| l.starts_with("  problem: upstream gone unreachable: initialize:")),
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

/// A config error is still exit 2, without a probe.
#[test]
fn config_error_exits_two_without_probing() {
    let (code, out) = probe("bad", "servers:\n  - path: /mcp\n    upstream: nope\n");
    assert_eq!(code, 2);
    assert!(!out.contains("--probe"));
}
