//! Every metric tollgate exports passes `promtool check metrics` (help text, types, naming lints),
//! and a real Prometheus server scrapes the admin listener and serves tollgate's series back.

mod harness;

use std::io::Write;
use std::process::{Command, Stdio};

use harness::{free_port, session, Demo, Gateway, JSON_HEADERS};
use serde_json::json;

/// `promtool` on PATH, or `None` after saying why the test cannot run (a failure under CI).
fn promtool() -> Option<&'static str> {
    debian_tool("promtool")
}

/// A program of Debian's `prometheus` package on PATH (`promtool`, `prometheus`), or `None`
/// after saying why the test cannot run (a failure under CI).
fn debian_tool(name: &'static str) -> Option<&'static str> {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(name);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{name} not installed, and CI is set: scripts/install-tools.sh installs it \
             (apt-get install prometheus)"
        );
    }
    eprintln!("\n*** SKIPPED: {name} not installed (apt-get install prometheus) ***\n");
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
    let mut mcp = session(&gw);
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
        "tollgate_tool_calls_total{",
        "tollgate_tool_duration_seconds_bucket{server=\"/mcp\",tool=\"other\"",
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

/// The `data.result` of an instant query to Prometheus's HTTP API, or why not.
fn query(prom: std::net::SocketAddr, q: &str) -> Result<Vec<serde_json::Value>, String> {
    let stream = std::net::TcpStream::connect(prom).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut http = harness::Http::over(stream, &prom.to_string());
    let path = format!("/api/v1/query?query={}", urlencode(q));
    let r = http
        .try_request("GET", &path, &[], b"")
        .ok_or("no HTTP response")?;
    if r.status != 200 {
        return Err(format!("{} {}", r.status, r.text()));
    }
    let v = r.json();
    if v["status"] != "success" {
        return Err(v.to_string());
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus (Debian's package, as an operator would run it) scrapes the admin listener every
/// second; tollgate's series come back through its query API with the values the gateway counted,
/// and the scrape target is up.
#[test]
fn a_real_prometheus_server_scrapes_tollgate() {
    let Some(prometheus) = debian_tool("prometheus") else {
        return;
    };
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .start();
    let mut mcp = session(&gw);
    for i in 0..5 {
        mcp.call_tool("echo", json!({ "text": format!("call {i}") }));
    }
    let admin = gw.admin.expect("the harness gateway has an admin listener");
    let dir = std::env::temp_dir().join(format!("tollgate-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: tollgate\n    metrics_path: /metrics\n\
             \x20   static_configs:\n      - targets: [\"{admin}\"]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let prom: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start prometheus");
    let proc = harness::Proc {
        child,
        dir: dir.clone(),
    };
    // Prometheus scrapes within a second or two of starting; a loaded CI machine gets a minute.
    let mut last = String::new();
    let got = harness::eventually(std::time::Duration::from_secs(60), || {
        match query(
            prom,
            "sum(tollgate_requests_total{job=\"tollgate\",method=\"tools/call\"})",
        ) {
            Ok(r) if !r.is_empty() => {
                last = r[0].to_string();
                r[0]["value"][1].as_str() == Some("5")
            }
            Ok(_) => {
                last = "no series yet".into();
                false
            }
            Err(e) => {
                last = e;
                false
            }
        }
    });
    let prom_log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    assert!(
        got,
        "Prometheus never returned 5 tools/call requests (last: {last})\n--- prometheus log ---\n{prom_log}"
    );
    let up = query(prom, "up{job=\"tollgate\"}").unwrap();
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["value"][1], "1", "the scrape target is up: {up:?}");
    // A histogram made it through whole: its buckets are queryable as one.
    let p99 = query(
        prom,
        "histogram_quantile(0.99, sum by (le) (tollgate_request_duration_seconds_bucket{job=\"tollgate\"}))",
    )
    .unwrap();
    assert_eq!(p99.len(), 1, "{p99:?}");
    // Every query of the Grafana dashboard is PromQL this Prometheus accepts and evaluates
    // (the dashboard's variables given the values Grafana would: all jobs, a 1m rate window).
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/tollgate.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*");
            if let Err(e) = query(prom, &expr) {
                panic!("dashboard panel {}: {expr}: {e}", panel["title"]);
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} dashboard queries");
    // And the panel everyone looks at first shows this gateway's traffic.
    let by_method = query(
        prom,
        "sum by (method) (tollgate_requests_total{job=~\".*\"})",
    )
    .unwrap();
    assert!(
        by_method
            .iter()
            .any(|r| r["metric"]["method"] == "tools/call"),
        "{by_method:?}"
    );
    drop(proc);
}
