//! The scanner's catalogue of cases as data files: `tests/scanner/cases/<name>.json` (or `.bin`
//! for bodies that are not UTF-8) scanned with default limits, rendered as text and compared with
//! `<name>.expected`. `UPDATE_EXPECT=1 cargo test --test scanner_cases` rewrites the expectations;
//! review the diff before committing it. Every accepted case is also checked against serde_json
//! and sonic-rs.

#[path = "support/scanner_oracle.rs"]
mod oracle;
use tollgate::jsonrpc;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tollgate::jsonrpc::{scan, Body, Message, Raw, ScanLimits, Str};

fn render_str(out: &mut String, what: &str, s: &Option<Str<'_>>) {
    if let Some(s) = s {
        let how = match s.value {
            std::borrow::Cow::Borrowed(_) => "",
            std::borrow::Cow::Owned(_) => " (decoded)",
        };
        let _ = writeln!(
            out,
            "  {what}: {:?} @{}..{}{how}",
            s.value, s.span.start, s.span.end
        );
    }
}

fn render_raw(out: &mut String, what: &str, r: &Option<Raw<'_>>) {
    if let Some(r) = r {
        let _ = writeln!(
            out,
            "  {what}: {} @{}",
            String::from_utf8_lossy(r.text),
            r.start
        );
    }
}

fn render_message(out: &mut String, m: &Message<'_>) {
    let _ = writeln!(
        out,
        "message {:?} @{}..{}",
        m.kind, m.span.start, m.span.end
    );
    render_raw(out, "id", &m.id);
    render_str(out, "method", &m.method);
    render_str(out, "name", &m.name);
    render_str(out, "uri", &m.uri);
    render_raw(out, "progress_token", &m.progress_token);
    render_raw(out, "request_id", &m.request_id);
    render_str(out, "meta_protocol_version", &m.meta_protocol_version);
    render_str(out, "meta_traceparent", &m.meta_traceparent);
    render_str(out, "protocol_version", &m.protocol_version);
    if m.task {
        out.push_str("  task: present\n");
    }
    render_str(out, "task_id", &m.task_id);
    render_raw(out, "arguments", &m.arguments);
    if m.arguments.is_some() {
        let keys: Vec<_> = m.argument_keys().collect();
        let _ = writeln!(out, "  argument_keys: {keys:?}");
    }
}

/// The readable result of scanning one body.
fn render(body: &[u8]) -> String {
    let mut out = String::new();
    match scan(body, &ScanLimits::default()) {
        Ok(b) => {
            match &b {
                Body::Single(m) => render_message(&mut out, m),
                Body::Batch(ms) => {
                    let _ = writeln!(out, "batch of {}", ms.len());
                    ms.iter().for_each(|m| render_message(&mut out, m));
                }
            }
            for check in [oracle::check_against_serde, oracle::check_against_sonic] {
                if let Err(e) = check(body, &b) {
                    let _ = writeln!(out, "ORACLE DISAGREES: {e}");
                }
            }
        }
        Err(e) => {
            let class = if e.is_parse_error() {
                "parse error -32700"
            } else {
                "invalid request -32600"
            };
            let _ = writeln!(out, "error {:?} ({class})", e.kind);
            let _ = writeln!(out, "  {e}");
        }
    }
    out
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scanner/cases")
}

#[test]
fn scanner_cases() {
    // sonic-rs's value tree needs more than the default 2 MiB test stack at depth 64 in debug.
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(run_cases)
        .expect("spawn")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn run_cases() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("tests/scanner/cases exists")
        .map(|e| e.expect("readable dir entry").path())
        .collect();
    inputs.sort();
    let mut failures = Vec::new();
    let mut count = 0;
    for path in &inputs {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "expected" {
            let has_input = ["json", "bin"]
                .iter()
                .any(|e| path.with_extension(e).exists());
            if !has_input {
                failures.push(format!("{}: expectation without an input", path.display()));
            }
            continue;
        }
        if ext != "json" && ext != "bin" {
            failures.push(format!(
                "{}: unknown case file (want .json, .bin, .expected)",
                path.display()
            ));
            continue;
        }
        count += 1;
        let body = std::fs::read(path).expect("readable case");
        let got = render(&body);
        let expected_path = path.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &got).expect("writable expectation");
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                path.display()
            )),
            Err(_) => failures.push(format!(
                "{}: no .expected (run with UPDATE_EXPECT=1)\n{got}",
                path.display()
            )),
        }
        if got.contains("ORACLE DISAGREES") {
            failures.push(format!("{}: {got}", path.display()));
        }
    }
    assert!(count >= 40, "only {count} scanner cases found");
    assert!(
        failures.is_empty(),
        "{} scanner case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}
