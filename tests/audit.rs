//! The audit log end to end (issue 11): the real binary under bounded loads with refusals
//! (denied by a rule, over a rate limit, unauthenticated), SIGTERM and a reload mid-run, file
//! rotation by size, an HTTP collector that fails first, and a stalled one with `overflow: drop`.
//! Every request that got a response has exactly one record.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{eventually, session, Gateway, Mcp, Refused};
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-of-thirty-two-bytes!!";
const ISS: &str = "https://issuer.example";
const AUD: &str = "http://127.0.0.1:8080/mcp";

fn token(sub: &str, roles: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": ISS, "aud": AUD, "sub": sub, "roles": roles, "client_id": "cli-1",
        "iat": now, "exp": now + 600});
    harness::hs256_jwt(&claims, SECRET.as_bytes())
}

/// A file path in a fresh scratch directory, removed with everything in it when dropped.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn temp_path(name: &str) -> Scratch {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "tollgate-audit-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d.join(name))
}

/// The records in `path` and its rotated files (`path.1` …), oldest file first.
fn records(path: &Path) -> Vec<Value> {
    let dir = path.parent().unwrap();
    let base = path.file_name().unwrap().to_str().unwrap();
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(base)?.strip_prefix('.')?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    files.push(path.to_path_buf());
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect::<Vec<Value>>()
        })
        .collect()
}

fn files_of(path: &Path) -> usize {
    std::fs::read_dir(path.parent().unwrap()).unwrap().count()
}

fn stop(gw: &mut Gateway) {
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(30)).expect("exited");
    assert!(status.success(), "{status:?}\n{}", gw.log.text());
}

fn call_body(id: u64, tool: &str, args: Value) -> Vec<u8> {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
        .to_string()
        .into_bytes()
}

/// One `echo` call on `m`'s session; `None` when the gateway closed the connection instead.
fn try_echo(m: &mut Mcp, id: u64, text: &str) -> Option<u16> {
    let body = call_body(id, "echo", json!({"text": text}));
    m.try_send("POST", &body).map(|r| r.status)
}

#[test]
fn a_load_with_refusals_yields_exactly_one_record_per_call() {
    let file = temp_path("audit.jsonl");
    let yaml = format!(
        r#"
auth:
  issuers:
    - name: example
      issuer: {ISS}
      algorithms: [HS256]
      secret: "{SECRET}"
      claims: {{roles: roles}}
servers:
  - path: /mcp
    upstream: demo
    auth: {{resource: "{AUD}", issuers: [example]}}
    rules:
      - {{name: readers, effect: allow, roles: [reader], tools: [echo]}}
upstreams:
  - name: demo
    url: builtin:demo
traffic:
  rules:
    - {{name: echo-rate, tools: [echo], key: [principal], rate: {{limit: 3, per: 60s}}}}
audit:
  enabled: true
  file: {{path: "${{env:AUDIT_FILE}}"}}
  arguments:
    values: ["ech*"]
    redact: ["sk-[A-Za-z0-9]+"]
"#
    );
    let mut gw = Gateway::builder()
        .yaml(&yaml)
        .env("AUDIT_FILE", file.to_str().unwrap())
        .start();
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.bearer(&token("alice", &["reader"]));
    m.initialize("2025-06-18");
    let session = m
        .headers()
        .iter()
        .find(|(n, _)| *n == "Mcp-Session-Id")
        .map(|(_, v)| v.to_string())
        .unwrap();
    let mut statuses = Vec::new();
    // 5 echo calls: 3 within the rate, 2 over it.
    for i in 0..5 {
        let r = m.request(
            "tools/call",
            json!({"name": "echo", "arguments": {"text": format!("key sk-abc{i}Z here"), "n": i}}),
        );
        statuses.push(r.status);
    }
    // 2 calls no rule allows alice.
    for _ in 0..2 {
        let r = m.request(
            "tools/call",
            json!({"name": "add", "arguments": {"a": 1, "b": 2}}),
        );
        statuses.push(r.status);
    }
    // 2 calls without a token.
    for i in 0..2 {
        let r = gw.client().request(
            "POST",
            "/mcp",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
            ],
            &call_body(100 + i, "echo", json!({"text": "x"})),
        );
        assert_eq!(r.status, 401, "{}", r.text());
    }
    stop(&mut gw);
    let all = records(&file);
    let dump = || {
        all.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(all.len(), 9, "{}", dump());
    for r in &all {
        assert!(r["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
        assert!(r["latency_us"].as_u64().is_some(), "{r}");
        // A refusal before the body was read counts no body bytes.
        assert!(
            r["bytes_in"].as_u64().unwrap() > 0 || r["status"] == 401,
            "{r}"
        );
        let out = r["bytes_out"].as_u64().unwrap();
        assert_eq!(
            r["estimated_tokens"].as_u64().unwrap(),
            out.div_ceil(4),
            "{r}"
        );
        assert_eq!(r["server"], "/mcp", "{r}");
    }
    let alice: Vec<&Value> = all.iter().filter(|r| r["subject"] == "alice").collect();
    assert_eq!(alice.len(), 7, "{}", dump());
    for r in &alice {
        assert_eq!(r["method"], "tools/call", "{r}");
        assert_eq!(r["client"], "cli-1", "{r}");
        assert!(r["request_id"].as_u64().is_some(), "{r}");
        // The traffic limit decides before the session is opened: a throttled call has none.
        if r["reason"] == "tool_limited" {
            continue;
        }
        let hash = r["session"]
            .as_str()
            .unwrap_or_else(|| panic!("{}", dump()));
        assert_eq!(hash.len(), 16, "{r}");
        assert!(!session.contains(hash), "the session id must not show: {r}");
    }
    let hashes: BTreeSet<&str> = alice.iter().filter_map(|r| r["session"].as_str()).collect();
    assert_eq!(hashes.len(), 1, "one session, one hash");
    let echo: Vec<&&Value> = alice.iter().filter(|r| r["tool"] == "echo").collect();
    assert_eq!(echo.len(), 5);
    for (i, r) in echo.iter().enumerate() {
        // Values recorded for echo (a configured tool), the secret redacted.
        assert_eq!(
            r["arguments"],
            json!({"text": "key [redacted] here", "n": i.to_string()}),
            "{r}"
        );
    }
    let allowed: Vec<_> = echo.iter().filter(|r| r["decision"] == "allow").collect();
    assert_eq!(allowed.len(), 3, "{}", dump());
    for r in &allowed {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(
            (&r["reason"], &r["rule"]),
            (&json!("rule"), &json!("readers")),
            "{r}"
        );
        assert_eq!(r["upstream"], "demo", "{r}");
        assert!(r.get("error_code").is_none(), "{r}");
    }
    let limited: Vec<_> = echo.iter().filter(|r| r["decision"] == "deny").collect();
    assert_eq!(limited.len(), 2, "{}", dump());
    for r in &limited {
        assert_eq!(r["reason"], "tool_limited", "{r}");
        assert_eq!(r["error_code"], -31005, "{r}");
        assert!(r["error_code"].as_i64().is_some(), "{r}");
    }
    let add: Vec<&&Value> = alice.iter().filter(|r| r["tool"] == "add").collect();
    assert_eq!(add.len(), 2);
    for r in &add {
        // Keys only: add is not in arguments.values.
        assert_eq!(r["arguments"], json!(["a", "b"]), "{r}");
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["authz"], "hidden", "{r}");
        assert!(r["error_code"].as_i64().is_some(), "{r}");
    }
    let anonymous: Vec<&Value> = all.iter().filter(|r| r.get("subject").is_none()).collect();
    assert_eq!(anonymous.len(), 2, "{}", dump());
    for r in &anonymous {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["status"], 401, "{r}");
        assert_eq!(r["reason"], "unauthenticated", "{r}");
        assert_eq!(r["auth_failure"], "token_missing", "{r}");
    }
    assert_eq!(statuses.len(), 7);
}

/// `threads` clients calling echo on their own sessions until `stop` is set or the gateway
/// closes on them; each answered call's text (`t<thread>-<n>`) is collected.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<Mutex<Vec<String>>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(gw: &Gateway, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let handles = (0..threads)
            .map(|t| {
                let (stop, answered, addr) = (stop.clone(), answered.clone(), gw.addr);
                std::thread::spawn(move || {
                    let mut m = Mcp::new(addr, "/mcp");
                    m.initialize("2025-06-18");
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let text = format!("t{t}-{n}");
                        match try_echo(&mut m, n + 10, &text) {
                            Some(200) => answered.lock().unwrap().push(text),
                            _ => return,
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            answered,
            handles,
        }
    }

    fn count(&self) -> usize {
        self.answered.lock().unwrap().len()
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.join().unwrap();
        }
        Arc::try_unwrap(self.answered)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

/// Every answered call has exactly one record, and no record is for a call never made.
fn assert_one_record_each(answered: &[String], recs: &[Value]) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in recs {
        let text = r["arguments"]["text"].as_str().expect("text").to_string();
        *seen.entry(text).or_default() += 1;
    }
    let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "duplicate records: {dup:?}");
    let missing: Vec<_> = answered.iter().filter(|t| !seen.contains_key(*t)).collect();
    assert!(missing.is_empty(), "answered without a record: {missing:?}");
    // A call may get its record and lose its answer to the shutdown, never the other way.
    assert!(recs.len() >= answered.len());
}

fn open_gateway(audit: &str, env: &[(&str, &str)]) -> Gateway {
    let mut b = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .yaml(audit);
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start()
}

#[test]
fn sigterm_mid_run_loses_no_record_and_rotation_keeps_them_all() {
    let file = temp_path("audit.jsonl");
    let mut gw = open_gateway(
        "audit:\n  enabled: true\n  file: {path: \"${env:AUDIT_FILE}\", max_bytes: 8KiB, keep: 10000}\n  arguments: {values: [echo]}\n",
        &[("AUDIT_FILE", file.to_str().unwrap())],
    );
    let load = Load::start(&gw, 4);
    assert!(eventually(Duration::from_secs(30), || load.count() >= 200));
    gw.sigterm();
    let answered = load.finish();
    assert!(gw.wait_exit(Duration::from_secs(30)).is_some());
    let recs = records(&file);
    assert_one_record_each(&answered, &recs);
    assert!(files_of(&file) >= 2, "8 KiB files: rotated");
}

#[test]
fn a_reload_mid_run_swaps_the_file_and_loses_nothing() {
    let (a, b) = (temp_path("a.jsonl"), temp_path("b.jsonl"));
    let audit = |p: &Path| {
        format!(
            "audit:\n  enabled: true\n  file: {{path: \"{}\"}}\n  arguments: {{values: [echo]}}\n",
            p.display()
        )
    };
    let builder = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .yaml(&audit(&a));
    let text_b = builder.config_text().replace(&audit(&a), &audit(&b));
    let mut gw = builder.start();
    let load = Load::start(&gw, 3);
    assert!(eventually(Duration::from_secs(30), || load.count() >= 100));
    gw.reload_with(&text_b);
    assert!(eventually(Duration::from_secs(30), || {
        gw.metrics()
            .contains("tollgate_config_reloads_total{result=\"ok\"} 1")
    }));
    let at_reload = load.count();
    assert!(eventually(Duration::from_secs(30), || load.count() >= at_reload + 100));
    let answered = load.finish();
    stop(&mut gw);
    let (ra, rb) = (records(&a), records(&b));
    assert!(
        !ra.is_empty() && !rb.is_empty(),
        "{} {}",
        ra.len(),
        rb.len()
    );
    let all: Vec<Value> = ra.into_iter().chain(rb).collect();
    assert_one_record_each(&answered, &all);
}

/// A collector on 127.0.0.1:0: answers 500 to the first `fail` POSTs, then 200 (keeping the
/// lines), or never answers at all when `stall`.
struct Collector {
    addr: std::net::SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    posts: Arc<AtomicUsize>,
}

impl Collector {
    /// A collector that reads each POST, then answers it a byte every 20 ms and never ends its
    /// status line: no single read waits long, the answer never comes.
    fn dripping() -> Collector {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let posts = Arc::new(AtomicUsize::new(0));
        let seen = posts.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                seen.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    if read_post(&mut s).is_none() || s.write_all(b"HTTP/1.1 200").is_err() {
                        return;
                    }
                    // Until the gateway gives up on it and closes.
                    while s.write_all(b" ").is_ok() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
            }
        });
        Collector {
            addr,
            lines: Arc::default(),
            posts,
        }
    }

    fn start(fail: usize, stall: bool) -> Collector {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(AtomicUsize::new(0));
        let (lines2, posts2) = (lines.clone(), posts.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let n = posts2.fetch_add(1, Ordering::SeqCst);
                if stall {
                    held.push(s);
                    continue;
                }
                let Some(body) = read_post(&mut s) else {
                    continue;
                };
                if n < fail {
                    let _ = s.write_all(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n");
                    continue;
                }
                lines2
                    .lock()
                    .unwrap()
                    .extend(body.lines().map(str::to_string));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            }
        });
        Collector { addr, lines, posts }
    }
}

fn read_post(s: &mut std::net::TcpStream) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    assert!(head.starts_with("post /audit http/1.1"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))?
        .trim()
        .parse()
        .ok()?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8(buf[head_end..head_end + len].to_vec()).unwrap())
}

#[test]
fn the_http_collector_gets_every_record_after_failing_first() {
    let c = Collector::start(3, false);
    let mut gw = open_gateway(
        &format!(
            "audit:\n  enabled: true\n  http: {{url: \"http://{}/audit\", batch: 7, flush_interval: 20ms, max_retries: 10, backoff: 10ms}}\n  arguments: {{values: [echo]}}\n",
            c.addr
        ),
        &[],
    );
    let answered = echo_answered(&gw, "h", 25);
    assert!(eventually(Duration::from_secs(30), || c
        .lines
        .lock()
        .unwrap()
        .len()
        >= 25));
    let errors = gw.metrics();
    assert!(
        errors.contains("tollgate_audit_sink_errors_total{sink=\"http\"} 3"),
        "{errors}"
    );
    stop(&mut gw);
    let recs: Vec<Value> = c
        .lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 25);
    assert_one_record_each(&answered, &recs);
    assert!(c.posts.load(Ordering::SeqCst) >= 3 + 25 / 7);
}

/// A collector that accepts the POST and never answers, or answers a byte at a time (each
/// within `timeout`), fails each attempt at `attempt_timeout`: the batch is retried on a new
/// connection, then dropped and counted, and the exit is not held.
#[test]
fn a_collector_that_never_finishes_its_answer_fails_the_attempt_at_its_deadline() {
    for (what, c, timeout) in [
        ("stalled", Collector::start(0, true), "60s"),
        ("dripping", Collector::dripping(), "1s"),
    ] {
        let file = temp_path("beside-a-slow-collector.jsonl");
        let mut gw = open_gateway(
            &format!(
                "audit:\n  enabled: true\n  file: {{path: \"{}\"}}\n  http: {{url: \"http://{}/audit\", batch: 1, timeout: {timeout}, attempt_timeout: 300ms, max_retries: 1, backoff: 10ms}}\n  arguments: {{values: [echo]}}\n",
                file.display(),
                c.addr
            ),
            &[],
        );
        let answered = echo_answered(&gw, what, 1);
        // Well before `timeout` would end a stalled read (a drip never lets one wait that long).
        let mut text = String::new();
        assert!(
            eventually(Duration::from_secs(30), || {
                text = gw.metrics();
                harness::metric_value(
                    &text,
                    "tollgate_audit_records_dropped_total{reason=\"sink_failed\"}",
                ) >= 1.0
            }),
            "{what}: {text}"
        );
        assert_eq!(
            harness::metric_value(&text, "tollgate_audit_sink_errors_total{sink=\"http\"}"),
            2.0,
            "{what}: {text}"
        );
        assert_eq!(
            c.posts.load(Ordering::SeqCst),
            2,
            "{what}: a retry on a new connection"
        );
        assert_logged(&gw, "no answer within 300 ms (audit.http.attempt_timeout)");
        stop(&mut gw);
        assert_one_record_each(&answered, &records(&file));
    }
}

/// A collector that stalls holds only the HTTP sink's own queue (`http.queue`, 4 records here;
/// the writer's `buffer` is large, so the writer, however late a loaded machine runs it, never
/// drops): every call is answered, the file gets every record meanwhile, and with `overflow:
/// drop` what the HTTP queue has no room for is dropped for that sink alone and counted
/// (`reason="http_overflow"`), none before the writer (`overflow`).
#[test]
fn a_stalled_collector_with_overflow_drop_counts_drops_and_stalls_no_request() {
    let c = Collector::start(0, true);
    let file = temp_path("beside-a-stalled-collector.jsonl");
    let gw = open_gateway(
        &format!(
            "audit:\n  enabled: true\n  buffer: 100000\n  overflow: drop\n  file: {{path: \"{}\"}}\n  http: {{url: \"http://{}/audit\", batch: 1, timeout: 60s, max_retries: 0, queue: 4}}\n",
            file.display(),
            c.addr
        ),
        &[],
    );
    let mut m = session(&gw);
    // The HTTP sink is stuck on its first POST; every call is still answered. More calls
    // than a worker's batch (256): several batches reach the HTTP sink's queue.
    for i in 0..600 {
        assert_eq!(try_echo(&mut m, i, "x"), Some(200), "call {i}");
    }
    let value = |text: &str, series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            text = gw.metrics();
            value(&text, "tollgate_audit_records_total{sink=\"file\"}") >= 600.0
                && value(
                    &text,
                    "tollgate_audit_records_dropped_total{reason=\"http_overflow\"}",
                ) > 0.0
        }),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "tollgate_audit_records_dropped_total{reason=\"overflow\"}"
        ),
        0.0,
        "{text}"
    );
    // Counted when written to the file's buffer; on disk at the writer's next idle moment.
    assert!(eventually(Duration::from_secs(30), || records(&file).len() == 600));
    assert!(c.posts.load(Ordering::SeqCst) >= 1);
    assert_logged(&gw, "audit records dropped");
}

#[test]
fn a_batch_gives_one_record_per_recorded_message() {
    let file = temp_path("audit.jsonl");
    let mut gw = open_gateway(
        &format!(
            "audit:\n  enabled: true\n  file: {{path: \"{}\"}}\n  methods: [tools/call, tools/list]\n",
            file.display()
        ),
        &[],
    );
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.initialize("2025-03-26");
    let batch = json!([
        {"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"echo","arguments":{"text":"1"}}},
        {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}},
        {"jsonrpc":"2.0","id":"b","method":"tools/list"},
        {"jsonrpc":"2.0","id":"c","method":"tools/call","params":{"name":"echo","arguments":{"text":"2"}}}
    ]);
    let r = m.post_raw(batch.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    stop(&mut gw);
    let recs = records(&file);
    let got: Vec<(String, String)> = recs
        .iter()
        .map(|r| {
            assert_eq!(r["batch"], 4, "{r}");
            (
                r["request_id"].as_str().unwrap().to_string(),
                r["method"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("a", "tools/call"),
        ("b", "tools/list"),
        ("c", "tools/call"),
    ];
    assert_eq!(
        got,
        want.map(|(i, m)| (i.to_string(), m.to_string())).to_vec(),
        "{recs:?}"
    );
    // Keys only (no `arguments.values`).
    assert_eq!(recs[0]["arguments"], json!(["text"]));
}

/// Two demo upstreams, `a` and `b`, federated at `/mcp` (with `server`, more keys of that
/// server indented by four spaces), auditing tools/call to `file`; and a 2025-03-26 session on
/// it (the era with batches).
fn federated_gateway(server: &str, file: &Path) -> (Gateway, Mcp) {
    let gw = Gateway::builder()
        .upstream("a", "builtin:demo")
        .upstream("b", "builtin:demo")
        .yaml(&format!(
            "servers:\n  - path: /mcp\n    upstreams: [a, b]\n{server}\
             audit:\n  enabled: true\n  file: {{path: \"{}\"}}\n  methods: [tools/call]\n",
            file.display()
        ))
        .start();
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.initialize("2025-03-26");
    (gw, m)
}

/// A batch on a federated endpoint decides its messages concurrently and refuses an unknown name
/// before any decision: each record still carries its own message's decision.
#[test]
fn a_federated_batch_gives_each_record_its_own_messages_decision() {
    let file = temp_path("federated.jsonl");
    let (mut gw, mut m) = federated_gateway(
        "    rules:\n\
         \x20     - {name: no-add, effect: deny, tools: [b__add]}\n\
         \x20     - {name: rest, effect: allow, tools: [\"*\"]}\n",
        &file,
    );
    let call = |id: &str, name: &str| {
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
               "params":{"name":name,"arguments":{"text":"x","a":1,"b":2}}})
    };
    let batch = json!([
        call("1", "a__echo"),
        call("2", "b__add"),
        call("3", "b__no_such_tool"),
        call("4", "b__echo"),
        // Allowed and relayed; the upstream answers with a JSON-RPC error (no `ms`).
        call("5", "a__slow"),
    ]);
    let r = m.post_raw(batch.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    // Four decisions made (the deny one hidden), each counted once: by the record phase,
    // after the answer, so wait for four and then check there are no more.
    let counted = |scrape: &str| -> f64 {
        scrape
            .lines()
            .filter(|l| l.starts_with("tollgate_authz_decisions_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut scrape = String::new();
    eventually(Duration::from_secs(30), || {
        scrape = gw.metrics();
        counted(&scrape) >= 4.0
    });
    stop(&mut gw);
    let recs = records(&file);
    let got: Vec<(String, String, String, String, Value)> = recs
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (
                s("request_id"),
                s("decision"),
                s("reason"),
                s("rule"),
                r["error_code"].clone(),
            )
        })
        .collect();
    // The unknown name was refused before any decision: its record says so (deny, the
    // refusal's kind and code, no rule); every other record has its own decision. A tool a rule
    // hides is refused as unknown too (what the client got), its rule named beside.
    let want = [
        ("1", "allow", "rule", "rest", Value::Null),
        ("2", "deny", "unknown_name", "no-add", json!(-32602)),
        ("3", "deny", "unknown_name", "", json!(-32602)),
        ("4", "allow", "rule", "rest", Value::Null),
        ("5", "allow", "rule", "rest", json!(-32602)),
    ];
    assert_eq!(
        got,
        want.map(|(i, d, why, r, code)| (
            i.to_string(),
            d.to_string(),
            why.to_string(),
            r.to_string(),
            code
        ))
        .to_vec(),
        "{recs:?}"
    );
    assert_eq!(recs[1]["authz"], "hidden", "{recs:?}");
    assert_eq!(counted(&scrape), 4.0, "{scrape}");
}

/// A federated endpoint without rules decides each item on the federated path: the decision is
/// recorded and counted once, not also as passed through.
#[test]
fn a_federated_endpoint_without_rules_counts_each_decision_once() {
    let file = temp_path("federated-open.jsonl");
    let (mut gw, mut m) = federated_gateway("", &file);
    let batch = json!([
        {"jsonrpc":"2.0","id":"1","method":"tools/call","params":{"name":"a__echo","arguments":{"text":"x"}}},
        {"jsonrpc":"2.0","id":"2","method":"tools/call","params":{"name":"b__echo","arguments":{"text":"y"}}},
    ]);
    let r = m.post_raw(batch.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let single = m.call_tool("b__echo", json!({"text": "z"}));
    assert!(single.get("result").is_some(), "{single}");
    // Counted by the record phase, after the answer: wait for three, then check there are no more.
    let open = |s: &str| {
        harness::metric_value(
            s,
            "tollgate_authz_decisions_total{decision=\"allow\",reason=\"open\"}",
        )
    };
    let mut scrape = String::new();
    eventually(Duration::from_secs(30), || {
        scrape = gw.metrics();
        open(&scrape) >= 3.0
    });
    stop(&mut gw);
    assert_eq!(open(&scrape), 3.0, "{scrape}");
    let recs = records(&file);
    assert_eq!(recs.len(), 3, "{recs:?}");
    for r in &recs {
        assert_eq!(
            (&r["decision"], &r["reason"]),
            (&json!("allow"), &json!("open")),
            "{r}"
        );
    }
}

#[test]
fn a_reload_turns_audit_on_and_a_file_that_cannot_be_written_refuses_it() {
    let file = temp_path("late.jsonl");
    let builder = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo");
    let plain = builder.config_text();
    let mut gw = builder.start();
    let mut m = session(&gw);
    assert_eq!(try_echo(&mut m, 1, "before"), Some(200));
    let with = |p: &Path| {
        format!(
            "{plain}audit:\n  enabled: true\n  file: {{path: \"{}\"}}\n  arguments: {{values: [echo]}}\n",
            p.display()
        )
    };
    gw.reload_with(&with(&file.with_file_name("no-such-dir").join("x.jsonl")));
    assert!(eventually(Duration::from_secs(30), || {
        gw.metrics()
            .contains("tollgate_config_reloads_total{result=\"error\"} 1")
    }));
    gw.reload_with(&with(&file));
    assert!(eventually(Duration::from_secs(30), || {
        gw.metrics()
            .contains("tollgate_config_reloads_total{result=\"ok\"} 1")
    }));
    let answered: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    for (i, t) in answered.iter().enumerate() {
        assert_eq!(try_echo(&mut m, 10 + i as u64, t), Some(200));
    }
    stop(&mut gw);
    let recs = records(&file);
    assert_eq!(recs.len(), 10, "{recs:?}");
    assert_one_record_each(&answered, &recs);
    assert_logged(&gw, "audit file");
}

#[test]
fn records_carry_the_callers_trace_and_the_gateways_span() {
    let file = temp_path("audit.jsonl");
    let mut gw = open_gateway(
        &format!(
            "tracing: {{enabled: true}}\naudit:\n  enabled: true\n  file: {{path: \"{}\"}}\n",
            file.display()
        ),
        &[],
    );
    let header_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let meta_trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "00f067aa0ba902b7";
    let mut m = Mcp::new(gw.addr, "/mcp");
    m.initialize("2025-03-26");
    m.header("traceparent", &format!("00-{header_trace}-{parent}-01"));
    let r = m.post_raw(&call_body(1, "echo", json!({"text": "h"})));
    assert_eq!(r.status, 200, "{}", r.text());
    let mut m2 = Mcp::new(gw.addr, "/mcp");
    m2.initialize("2025-03-26");
    let body = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo",
        "arguments":{"text":"m"},"_meta":{"traceparent": format!("00-{meta_trace}-{parent}-01")}}});
    let r = m2.post_raw(body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    stop(&mut gw);
    let recs = records(&file);
    let calls: Vec<&Value> = recs
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 2, "{recs:?}");
    // (The two sessions may be on different workers: the file is in order per worker only.)
    for (id, trace) in [(1, header_trace), (2, meta_trace)] {
        let rec = calls
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("no record of call {id}: {recs:?}"));
        assert_eq!(rec["trace_id"], trace, "{rec}");
        let span = rec["span_id"].as_str().expect("a span id");
        assert_eq!(span.len(), 16, "{rec}");
        assert_ne!(
            span, parent,
            "the gateway's own span, not the caller's: {rec}"
        );
    }
}

#[test]
fn a_collector_that_is_down_does_not_hold_the_exit_and_the_file_keeps_every_record() {
    // A port nothing listens on: every POST is refused at once. With the configured retries a
    // batch would take 2 + 4 + 8 + 16 + 30 s of backoff; stopping gives each batch one attempt.
    let file = temp_path("audit.jsonl");
    let (mut gw, _down) = beside_a_collector_that_is_down(
        &file,
        "batch: 1000, flush_interval: 1h, max_retries: 5, backoff: 2s",
    );
    let answered = echo_answered(&gw, "d", 10);
    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .expect("exited without waiting out the collector's retries");
    assert!(status.success(), "{status:?}\n{}", gw.log.text());
    let recs = records(&file);
    assert_one_record_each(&answered, &recs);
    assert_logged(&gw, "audit records dropped");
}

#[test]
fn refusals_with_no_message_read_have_their_records_too() {
    let file = temp_path("audit.jsonl");
    let yaml = format!(
        "auth:\n  issuers:\n    - name: example\n      issuer: {ISS}\n      algorithms: [HS256]\n      secret: \"{SECRET}\"\n\
         servers:\n  - path: /mcp\n    upstream: demo\n    auth: {{resource: \"{AUD}\", issuers: [example]}}\n\
         upstreams:\n  - name: demo\n    url: builtin:demo\n\
         audit:\n  enabled: true\n  file: {{path: \"{}\"}}\n",
        file.display()
    );
    let mut gw = Gateway::builder().yaml(&yaml).start();
    let mut m = Mcp::new(gw.addr, "/mcp");
    // A listen stream without a token, a session DELETE with a bad one.
    let r = m
        .http
        .request("GET", "/mcp", &[("Accept", "text/event-stream")], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    let mut m = Mcp::new(gw.addr, "/mcp");
    let r = m.http.request(
        "DELETE",
        "/mcp",
        &[
            ("Authorization", "Bearer not-a-token"),
            ("Mcp-Session-Id", "x"),
        ],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // A browser origin the gateway does not allow: refused with the head.
    let mut m = Mcp::new(gw.addr, "/mcp");
    let r = m.http.try_request(
        "POST",
        "/mcp",
        &[
            ("Origin", "http://evil.example"),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        &call_body(1, "echo", json!({"text": "x"})),
    );
    assert_eq!(r.map(|r| r.status), Some(403));
    // A path no endpoint serves: not a record.
    let mut m = Mcp::new(gw.addr, "/mcp");
    let r = m.http.request("POST", "/nowhere", &[], b"{}");
    assert_eq!(r.status, 404, "{}", r.text());
    stop(&mut gw);
    // (Each worker hands its records over on its own: the file is in order per worker.)
    let mut recs = records(&file);
    recs.sort_by_key(|r| r["status"].as_u64());
    let statuses: Vec<u64> = recs.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [401, 401, 403], "{recs:#?}");
    for r in &recs[..2] {
        assert_eq!(r["server"], "/mcp", "{r}");
        assert!(r["auth_failure"].is_string(), "{r}");
        assert_eq!(r["decision"], "deny", "{r}");
    }
}

/// An upstream's own JSON-RPC error is in the record with its code, whether the reply was JSON
/// (with a length, or chunked) or an event stream (after a notification that mentions an
/// error in its params); a result, `isError` or not, carries none.
#[test]
fn an_upstream_json_rpc_error_is_recorded_with_its_code() {
    use harness::scripted::{json_response, mcp_basics, read_request, text_result, Scripted};
    let up = Scripted::start(|mut s, _| {
        while let Some(req) = read_request(&mut s) {
            if let Some(r) = mcp_basics(&req) {
                let _ = s.write_all(&r);
                continue;
            }
            let id = req.id();
            let error = |code: i64| {
                json!({"jsonrpc":"2.0","id":id,"error":{"message":"no","code":code}}).to_string()
            };
            let reply = match req.tool().as_str() {
                "json_error" => json_response(&error(-32602)),
                "chunked_error" => {
                    let body = error(-32003);
                    let (a, b) = body.split_at(body.len() / 2);
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                        a.len(),
                        b.len()
                    )
                    .into_bytes()
                }
                "sse_error" => {
                    let note = json!({"jsonrpc":"2.0","method":"notifications/message",
                        "params":{"level":"error","data":{"error":{"code":7}}}});
                    let events = format!(
                        "event: message\ndata: {note}\n\nevent: message\ndata: {}\n\n",
                        error(-32001)
                    );
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{events}\r\n0\r\n\r\n",
                        events.len()
                    )
                    .into_bytes()
                }
                "tool_error" => json_response(
                    &json!({"jsonrpc":"2.0","id":id,"result":{"isError":true,
                        "content":[{"type":"text","text":"\"error\":{\"code\":1}"}]}})
                    .to_string(),
                ),
                _ => json_response(&text_result(&id, "ok")),
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    });
    let file = temp_path("upstream-errors.jsonl");
    let (mut gw, mut m) = audited_to(&up.url(), &file);
    let tools = [
        "json_error",
        "chunked_error",
        "sse_error",
        "tool_error",
        "fine",
    ];
    for (i, tool) in tools.iter().enumerate() {
        let r = m.post_raw(&call_body(i as u64 + 1, tool, json!({})));
        assert_eq!(r.status, 200, "{tool}: {}", r.text());
    }
    stop(&mut gw);
    let recs = records(&file);
    let got = tool_codes(&recs);
    let want = [
        ("json_error", json!(-32602)),
        ("chunked_error", json!(-32003)),
        ("sse_error", json!(-32001)),
        ("tool_error", Value::Null),
        ("fine", Value::Null),
    ]
    .map(|(t, c)| (t.to_string(), c, "allow".to_string()));
    assert_eq!(got, want.to_vec(), "{recs:?}");
}

/// Each record's (tool, error_code, decision), in order.
fn tool_codes(recs: &[Value]) -> Vec<(String, Value, String)> {
    recs.iter()
        .map(|r| {
            (
                r["tool"].as_str().unwrap_or_default().to_string(),
                r["error_code"].clone(),
                r["decision"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The compressed bytes `body` would be sent as with `Content-Encoding: coding`.
/// A gateway serving `/mcp` from the upstream at `url`, its audit to `file`, and a session.
fn audited_to(url: &str, file: &Path) -> (Gateway, Mcp) {
    let gw = Gateway::builder()
        .upstream("up", url)
        .serve("/mcp", "up")
        .yaml(&format!(
            "audit:\n  enabled: true\n  file: {{path: \"{}\"}}\n",
            file.display()
        ))
        .start();
    let m = session(&gw);
    (gw, m)
}

fn compress(coding: &str, body: &[u8]) -> Vec<u8> {
    use flate2::{write, Compression};
    match coding {
        "gzip" => {
            let mut e = write::GzEncoder::new(Vec::new(), Compression::best());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = write::ZlibEncoder::new(Vec::new(), Compression::best());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        _ => unreachable!("{coding}"),
    }
}

/// A 200 of `content_type`, encoded `coding`, framed by length or in chunks of `chunk` bytes.
fn encoded_reply(content_type: &str, coding: &str, body: &[u8], chunk: Option<usize>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Encoding: {coding}\r\n"
    )
    .into_bytes();
    match chunk {
        None => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        }
        Some(n) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for c in body.chunks(n) {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    out
}

/// An upstream that compresses its replies: a gzip or deflate JSON-RPC error (a JSON body by
/// length or in chunks, an event stream) is recorded with its code, read as the reply is
/// relayed; the client gets the upstream's compressed bytes unchanged. A gzip bomb (64 MiB of
/// whitespace before its error, ~64 KiB on the wire) is relayed whole and its record has no
/// code: the probe stopped at `audit.max_decoded`, counted, and the gateway's memory did not
/// grow by anything like the decoded size. A `br` reply is relayed and not read.
#[test]
fn a_compressed_upstream_error_is_recorded_with_its_code() {
    use harness::scripted::{json_response, mcp_basics, read_request, text_result, Scripted};
    // 64 MiB of whitespace inside the message, before its error: valid JSON, decoded never.
    let bomb = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(br#"{"jsonrpc":"2.0","id":6,"#).unwrap();
        let spaces = vec![b' '; 1 << 20];
        for _ in 0..64 {
            e.write_all(&spaces).unwrap();
        }
        e.write_all(br#""error":{"message":"no","code":-32005}}"#)
            .unwrap();
        Arc::new(e.finish().unwrap())
    };
    assert!(bomb.len() < 1 << 20, "{} bytes on the wire", bomb.len());
    let sent: Arc<Mutex<BTreeMap<String, Vec<u8>>>> = Arc::default();
    let (bomb_up, sent_up) = (bomb.clone(), sent.clone());
    let up = Scripted::start(move |mut s, _| {
        while let Some(req) = read_request(&mut s) {
            if let Some(r) = mcp_basics(&req) {
                let _ = s.write_all(&r);
                continue;
            }
            let id = req.id();
            let error = |code: i64| {
                json!({"jsonrpc":"2.0","id":id,"error":{"message":"no","code":code}})
                    .to_string()
                    .into_bytes()
            };
            let tool = req.tool();
            let (body, reply) = match tool.as_str() {
                "gzip_json" => {
                    let body = compress("gzip", &error(-32602));
                    let reply = encoded_reply("application/json", "gzip", &body, None);
                    (body, reply)
                }
                "gzip_chunked" => {
                    let body = compress("gzip", &error(-32003));
                    let reply = encoded_reply("application/json", "gzip", &body, Some(7));
                    (body, reply)
                }
                "deflate_json" => {
                    let body = compress("deflate", &error(-32004));
                    let reply = encoded_reply("application/json", "deflate", &body, None);
                    (body, reply)
                }
                "gzip_sse" => {
                    let note = json!({"jsonrpc":"2.0","method":"notifications/message",
                        "params":{"level":"error","data":{"error":{"code":7}}}});
                    let events = format!(
                        "event: message\ndata: {note}\n\nevent: message\ndata: {}\n\n",
                        String::from_utf8(error(-32001)).unwrap()
                    );
                    let body = compress("gzip", events.as_bytes());
                    let reply = encoded_reply("text/event-stream", "gzip", &body, Some(16));
                    (body, reply)
                }
                "gzip_bomb" => {
                    let reply =
                        encoded_reply("application/json", "gzip", &bomb_up, Some(16 * 1024));
                    (bomb_up.to_vec(), reply)
                }
                "br_json" => {
                    // Not brotli the probe could read: bytes it must leave alone.
                    let body = vec![0x1b, 0x2a, 0x00, 0xf8, 0x25, 0x82, 0x82, 0x40];
                    let reply = encoded_reply("application/json", "br", &body, None);
                    (body, reply)
                }
                _ => {
                    let r = json_response(&text_result(&id, "ok"));
                    (Vec::new(), r)
                }
            };
            sent_up.lock().unwrap().insert(tool, body);
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    });
    let file = temp_path("compressed-errors.jsonl");
    let (mut gw, mut m) = audited_to(&up.url(), &file);
    let tools = [
        "gzip_json",
        "gzip_chunked",
        "deflate_json",
        "gzip_sse",
        "gzip_bomb",
        "br_json",
        "fine",
    ];
    let hwm_before = harness::proc_status_kib(gw.pid(), "VmHWM:");
    for (i, tool) in tools.iter().enumerate() {
        let r = m.post_raw(&call_body(i as u64 + 1, tool, json!({})));
        assert_eq!(r.status, 200, "{tool}: {}", r.text());
        if *tool == "fine" {
            assert_eq!(r.header("content-encoding"), None);
            continue;
        }
        let coding = r.header("content-encoding").map(str::to_string);
        assert_eq!(
            coding.as_deref(),
            Some(match *tool {
                "deflate_json" => "deflate",
                "br_json" => "br",
                _ => "gzip",
            }),
            "{tool}"
        );
        let sent = sent.lock().unwrap()[*tool].clone();
        assert!(
            r.body == sent,
            "{tool}: the client got other bytes than the upstream's"
        );
    }
    let hwm_after = harness::proc_status_kib(gw.pid(), "VmHWM:");
    // Decoding the bomb whole would take 64 MiB; the probe reads 1 MiB of it, a chunk at a time.
    assert!(
        hwm_after < hwm_before + 16 * 1024,
        "peak memory grew from {hwm_before} KiB to {hwm_after} KiB"
    );
    // Counted in each call's record phase, which may end after its reply was read.
    let unread = |scrape: &str, reason: &str| {
        harness::metric_value(
            scrape,
            &format!("tollgate_audit_replies_unread_total{{reason=\"{reason}\"}}"),
        )
    };
    let counted = eventually(Duration::from_secs(10), || {
        let scrape = gw.metrics();
        unread(&scrape, "max_decoded") == 1.0 && unread(&scrape, "encoding") == 1.0
    });
    assert!(counted, "{}", gw.metrics());
    assert_eq!(unread(&gw.metrics(), "corrupt"), -1.0, "none was corrupt");
    stop(&mut gw);
    let recs = records(&file);
    let got = tool_codes(&recs);
    let want = [
        ("gzip_json", json!(-32602)),
        ("gzip_chunked", json!(-32003)),
        ("deflate_json", json!(-32004)),
        ("gzip_sse", json!(-32001)),
        ("gzip_bomb", Value::Null),
        ("br_json", Value::Null),
        ("fine", Value::Null),
    ]
    .map(|(t, c)| (t.to_string(), c, "allow".to_string()));
    assert_eq!(got, want.to_vec(), "{recs:?}");
}

/// A call still in flight when the drain deadline passes is cut by the gateway and still has
/// its record: the decision as made, `outcome: cut`.
#[test]
fn a_call_cut_at_the_drain_deadline_is_recorded() {
    use harness::scripted::{json_response, mcp_basics, read_request, text_result, Scripted};
    let (called, upstream_has_it) = std::sync::mpsc::channel::<()>();
    let called = Mutex::new(called);
    let up = Scripted::start(move |mut s, _| {
        while let Some(req) = read_request(&mut s) {
            if let Some(r) = mcp_basics(&req) {
                let _ = s.write_all(&r);
                continue;
            }
            if req.tool() == "stall" {
                // Holds the call until the gateway closes the connection.
                let _ = called.lock().unwrap().send(());
                let _ = s.read(&mut [0u8; 1]);
                return;
            }
            let _ = s.write_all(&json_response(&text_result(&req.id(), "ok")));
        }
    });
    let file = temp_path("cut.jsonl");
    let mut gw = Gateway::builder()
        .upstream("up", &up.url())
        .serve("/mcp", "up")
        .yaml(&format!(
            "shutdown: {{drain_timeout: 300ms}}\naudit:\n  enabled: true\n  file: {{path: \"{}\"}}\n",
            file.display()
        ))
        .start();
    let mut m = session(&gw);
    assert_eq!(m.post_raw(&call_body(1, "quick", json!({}))).status, 200);
    let client = std::thread::spawn(move || {
        m.try_send("POST", &call_body(2, "stall", json!({})))
            .map(|r| r.status)
    });
    upstream_has_it
        .recv_timeout(Duration::from_secs(30))
        .expect("the call reached the upstream");
    stop(&mut gw);
    assert_eq!(client.join().unwrap(), None, "the cut call got no answer");
    let recs = records(&file);
    let got: Vec<(String, String, String)> = recs
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("tool"), s("decision"), s("outcome"))
        })
        .collect();
    let want = [("quick", "allow", "ok"), ("stall", "allow", "cut")]
        .map(|(t, d, o)| (t.to_string(), d.to_string(), o.to_string()));
    assert_eq!(got, want.to_vec(), "{recs:?}\n{}", gw.log.text());
}

/// SIGTERM while the HTTP sink is in a batch's backoff (a collector that is down, retries of
/// up to a minute): the backoff ends there, the exit is not held, and the file, which never
/// waited on the collector, has every record.
#[test]
fn a_collector_in_its_backoff_at_sigterm_does_not_hold_the_exit() {
    let file = temp_path("backoff.jsonl");
    let (mut gw, _down) =
        beside_a_collector_that_is_down(&file, "batch: 1, max_retries: 5, backoff: 4s");
    let answered = echo_answered(&gw, "b", 10);
    // The first batch failed its first attempt: its backoff has begun.
    assert!(eventually(Duration::from_secs(30), || {
        harness::metric_value(
            &gw.metrics(),
            "tollgate_audit_sink_errors_total{sink=\"http\"}",
        ) >= 1.0
    }));
    assert!(eventually(Duration::from_secs(30), || records(&file).len() == 10));
    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .expect("exited without waiting out the collector's backoff");
    assert!(status.success(), "{status:?}\n{}", gw.log.text());
    assert_one_record_each(&answered, &records(&file));
}

/// The gateway's stderr says `text`, maybe not yet read by the harness's reader thread when the
/// gateway acted (or exited): looked for until it is, for at most 10 s.
fn assert_logged(gw: &Gateway, text: &str) {
    assert!(
        eventually(Duration::from_secs(10), || gw.log.text().contains(text)),
        "{text:?} not logged:\n{}",
        gw.log.text()
    );
}

/// A reload that moves the HTTP sink away from a collector that stalls does not wait for it:
/// the file and the new collector get the records made after the reload at once, the old
/// collector's lane finishes on its own, and the exit still ends it (one attempt per batch).
#[test]
fn a_reload_away_from_a_stalled_collector_does_not_stall_the_writer() {
    let (stalled, fresh) = (Collector::start(0, true), Collector::start(0, false));
    let file = temp_path("beside-a-reload.jsonl");
    let audit = |c: &Collector| {
        format!(
            "audit:\n  enabled: true\n  file: {{path: \"{}\"}}\n  http: {{url: \"http://{}/audit\", batch: 1, timeout: 3s, max_retries: 10, backoff: 1s}}\n  arguments: {{values: [echo]}}\n",
            file.display(),
            c.addr
        )
    };
    let builder = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .yaml(&audit(&stalled));
    let text_fresh = builder
        .config_text()
        .replace(&audit(&stalled), &audit(&fresh));
    let mut gw = builder.start();
    let mut m = session(&gw);
    for i in 0..5 {
        assert_eq!(try_echo(&mut m, i, "before"), Some(200));
    }
    assert!(eventually(Duration::from_secs(10), || {
        stalled.posts.load(Ordering::SeqCst) >= 1
    }));
    gw.reload_with(&text_fresh);
    assert!(eventually(Duration::from_secs(30), || {
        gw.metrics()
            .contains("tollgate_config_reloads_total{result=\"ok\"} 1")
    }));
    let mut m = session(&gw);
    for i in 100..105 {
        assert_eq!(try_echo(&mut m, i, "after"), Some(200));
    }
    // Well within the stalled lane's retries (10 × (3 s + backoff)): the writer did not wait.
    assert!(eventually(Duration::from_secs(10), || {
        fresh.lines.lock().unwrap().len() >= 5
            && records(&file)
                .iter()
                .filter(|r| r["arguments"]["text"] == "after")
                .count()
                == 5
    }));
    stop(&mut gw);
    assert_eq!(
        records(&file)
            .iter()
            .filter(|r| r["arguments"]["text"] == "before")
            .count(),
        5
    );
}

/// A gateway writing the audit log to `file` and to an HTTP collector on a port nothing
/// listens on (every POST refused at once), with `http` the HTTP sink's other settings.
/// The gateway, and the refusing address its collector is at (keep it for the test's length).
fn beside_a_collector_that_is_down(file: &Path, http: &str) -> (Gateway, Refused) {
    let down = Refused::new();
    let gw = open_gateway(
        &format!(
            "audit:\n  enabled: true\n  file: {{path: \"{}\"}}\n  http: {{url: \"http://{}/audit\", {http}}}\n  arguments: {{values: [echo]}}\n",
            file.display(),
            down.addr()
        ),
        &[],
    );
    (gw, down)
}

/// `n` echo calls on a new session, each answered 200; their texts (`<prefix>-<i>`).
fn echo_answered(gw: &Gateway, prefix: &str, n: u64) -> Vec<String> {
    let mut m = session(gw);
    (0..n)
        .map(|i| {
            let text = format!("{prefix}-{i}");
            assert_eq!(try_echo(&mut m, i, &text), Some(200));
            text
        })
        .collect()
}
