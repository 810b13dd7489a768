//! The metric catalog stays one: every name in `src/observe/names.rs` is in README's table and
//! nothing else is, and the Grafana dashboard in `config/grafana/` queries only those names.

use std::collections::BTreeSet;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `tollgate_…` names in a text: runs of `[a-z0-9_]` that start with `tollgate_`.
fn names_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("tollgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Not the end of a longer word (e.g. a path such as `src/tollgate_x`).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// The catalog: the string constants of `src/observe/names.rs`.
fn catalog() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("src/observe/names.rs")).unwrap();
    let names: BTreeSet<String> = text
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("tollgate_"))
        .map(str::to_string)
        .collect();
    assert!(names.len() > 30, "the catalog parsed to {names:?}");
    names
}

#[test]
fn readme_lists_exactly_the_catalog() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("\n## Metrics\n")
        .expect("README has a Metrics section");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let listed: BTreeSet<String> = section[..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    let catalog = catalog();
    let missing: Vec<_> = catalog.difference(&listed).collect();
    let unknown: Vec<_> = listed.difference(&catalog).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "README's metric table and src/observe/names.rs differ: not in README {missing:?}; \
         not in the catalog {unknown:?}"
    );
}

/// Every expression of every panel of the dashboard.
pub fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("config/grafana/tollgate.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for p in v["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    exprs
}

#[test]
fn the_dashboard_queries_only_catalog_metrics() {
    let catalog = catalog();
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let mut used = BTreeSet::new();
    for e in &exprs {
        for n in names_in(e) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|b| catalog.contains(*b)))
                .unwrap_or(&n)
                .to_string();
            assert!(
                catalog.contains(&base),
                "the dashboard queries {n}, which tollgate does not export (in: {e})"
            );
            used.insert(base);
        }
    }
    // The core families are on it.
    for core in [
        "tollgate_requests_total",
        "tollgate_request_duration_seconds",
        "tollgate_upstream_duration_seconds",
        "tollgate_rejections_total",
        "tollgate_limit_rejections_total",
        "tollgate_authz_decisions_total",
        "tollgate_auth_token_cache_total",
        "tollgate_upstream_up",
    ] {
        assert!(used.contains(core), "the dashboard does not show {core}");
    }
}

#[test]
fn names_in_finds_whole_names() {
    assert_eq!(
        names_in("sum(rate(tollgate_a_total{x=\"tollgate_b\"}[1m])) / my_tollgate_c"),
        vec!["tollgate_a_total", "tollgate_b"]
    );
}
