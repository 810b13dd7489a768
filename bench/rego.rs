//! Decision informed: what an optional Rego policy (`servers[].rego`, regorus in-process) costs
//! per request, and whether its per-worker decision cache is worth having.
//! Candidate: `RegoPolicy::evaluate` on a typical policy (role check + tool glob + annotation
//! check) cold (every call evaluates: the input document is built and the engine runs) and as a
//! cache hit (`cacheable: true`). Baseline: the same decision written natively (a role lookup,
//! a compiled `mcp::names::Filter` glob, the annotation read from the scanned JSON), i.e. what a
//! native rule costs.
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::mcp::names::Filter;
use tollgate::policy::rego::{PolicySource, RegoInput, RegoPolicy, RegoProgram, DEFAULT_QUERY};
use tollgate::policy::{Principal, Source};

const POLICY: &str = r#"
package tollgate
import rego.v1

default decision := {"allow": false, "reason": "not_allowed", "message": "You may not use this tool."}

decision := {"allow": true, "cacheable": true} if {
    "admin" in input.principal.roles
}

decision := {"allow": true, "reason": "reader_echo", "cacheable": true} if {
    not "admin" in input.principal.roles
    "reader" in input.principal.roles
    glob.match("echo*", [], input.tool)
    not input.annotations.destructiveHint
}
"#;

const ANNOTATIONS: &[u8] = br#"{"title":"Echo","readOnlyHint":true,"destructiveHint":false}"#;

fn principal() -> Principal {
    Principal {
        source: Source::Jwt { issuer: 0 },
        subject: "alice@example.com".into(),
        client: Some("claude-desktop".into()),
        tenant: Some("acme".into()),
        roles: vec!["reader".into(), "staff".into()].into(),
        scopes: vec!["mcp:tools".into()].into(),
        expires_at: Some(u64::MAX),
        id: [7; 16],
    }
}

fn policy(cache_entries: usize) -> RegoPolicy {
    let sources = [PolicySource {
        name: "policy.rego".into(),
        text: POLICY.into(),
    }];
    let program = RegoProgram::compile(
        &sources,
        DEFAULT_QUERY,
        cache_entries,
        Duration::from_secs(60),
    )
    .expect("the bench policy compiles");
    RegoPolicy::new(Arc::new(program), "/mcp")
}

fn input<'a>(p: &'a Principal, keys: &'a [&'a str]) -> RegoInput<'a> {
    RegoInput {
        principal: p,
        server: "/mcp",
        upstream: Some("demo"),
        method: "tools/call",
        tool: Some("echo"),
        argument_keys: keys,
        annotations: Some(ANNOTATIONS),
        time_unix: 1_800_000_000,
        source: Some([10, 0, 0, 7].into()),
    }
}

fn rego(c: &mut Criterion) {
    let p = principal();
    let keys = ["message"];
    let i = input(&p, &keys);

    let cold = policy(0);
    assert!(cold.evaluate(&i).expect("decides").allow);
    c.bench_function("rego/evaluate_cold", |b| {
        b.iter(|| cold.evaluate(black_box(&i)))
    });

    let cached = policy(1024);
    assert!(cached.evaluate(&i).expect("decides").allow);
    c.bench_function("rego/evaluate_cache_hit", |b| {
        b.iter(|| cached.evaluate(black_box(&i)))
    });

    // Baseline: the same decision in Rust.
    let tools = Filter::new(&["echo*"], &[] as &[&str]).expect("glob compiles");
    c.bench_function("rego/native_baseline", |b| {
        b.iter(|| {
            let i = black_box(&i);
            let p = i.principal;
            p.has_role("admin")
                || (p.has_role("reader")
                    && i.tool.is_some_and(|t| tools.allows(t))
                    && !destructive(i.annotations))
        })
    });
}

/// `annotations.destructiveHint == true`, read the way the gateway reads JSON (the scanner's
/// rules apply upstream; here a plain serde_json read stands in).
fn destructive(annotations: Option<&[u8]>) -> bool {
    #[derive(serde::Deserialize)]
    struct A {
        #[serde(rename = "destructiveHint", default)]
        destructive: bool,
    }
    annotations
        .and_then(|a| serde_json::from_slice::<A>(a).ok())
        .is_some_and(|a| a.destructive)
}

criterion_group!(benches, rego);
criterion_main!(benches);
