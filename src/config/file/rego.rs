//! `servers[].rego`: an optional OPA Rego policy. The files are read and compiled here, so a
//! missing file, a syntax error (regorus's `file:line:column: message`) or a query that names
//! no rule is a problem at its key like any other, at load and at reload.

use std::sync::Arc;

use serde_yaml_ng::Value;

use super::defaults;
use super::extract::{
    child, count, describe, duration, duration_within, item, string, Problems, Section,
};
use crate::config::RegoConfig;
use crate::policy::rego::{CompileProblem, PolicySource, RegoProgram, DEFAULT_QUERY};

const KEYS: &[&str] = &[
    "policy",
    "query",
    "cache_entries",
    "cache_ttl",
    "eval_timeout",
];

/// `servers[i].rego` in section `s`; absent or null = off.
pub(super) fn rego(p: &mut Problems, s: &Section) -> Option<RegoConfig> {
    let (path, v) = s.value("rego")?;
    let r = Section::open(p, path.clone(), Some(v), KEYS);
    if !matches!(v, Value::Mapping(_)) {
        return None;
    }
    let files = policy_files(p, &path, &r);
    let query = r.get(p, "query", DEFAULT_QUERY.to_string(), |v| {
        string(v).map(str::to_string)
    });
    let cache_entries = r.get(
        p,
        "cache_entries",
        defaults::REGO_CACHE_ENTRIES,
        count(0, 1_000_000),
    ) as usize;
    let cache_ttl = r.get(
        p,
        "cache_ttl",
        defaults::REGO_CACHE_TTL,
        duration(std::time::Duration::from_secs(1)),
    );
    let eval_timeout = r.get(
        p,
        "eval_timeout",
        defaults::REGO_EVAL_TIMEOUT,
        duration_within(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_secs(10),
        ),
    );
    let (files, single) = files?;
    // Every file is read before any is compiled, so each unreadable one is reported.
    let mut sources = Vec::with_capacity(files.len());
    let mut readable = true;
    for (i, f) in files.iter().enumerate() {
        match std::fs::read_to_string(f) {
            Ok(text) => sources.push(PolicySource {
                name: f.clone(),
                text,
            }),
            Err(e) => {
                readable = false;
                p.add(
                    &file_path(&path, i, single),
                    format!("cannot read {f:?}: {e}"),
                );
            }
        }
    }
    if !readable {
        return None;
    }
    match RegoProgram::compile(&sources, &query, cache_entries, cache_ttl) {
        Ok(program) => Some(RegoConfig {
            policy: files,
            query,
            cache_entries,
            cache_ttl,
            eval_timeout,
            program: Arc::new(program.with_eval_timeout(eval_timeout)),
        }),
        Err(problems) => {
            for problem in problems {
                match problem {
                    CompileProblem::Policy { index, problem } => {
                        p.add(&file_path(&path, index, single), problem)
                    }
                    CompileProblem::Query(problem) => p.add(&child(&path, "query"), problem),
                }
            }
            None
        }
    }
}

/// Where file `i` is written: `policy` when it is one string, else `policy[i]`.
fn file_path(path: &str, i: usize, single: bool) -> String {
    let key = child(path, "policy");
    if single {
        key
    } else {
        item(&key, i)
    }
}

/// `policy`: a path or a list of paths (non-empty strings, no repeats); and whether it was
/// written as one string.
fn policy_files(p: &mut Problems, path: &str, r: &Section) -> Option<(Vec<String>, bool)> {
    let Some((at, v)) = r.value("policy") else {
        p.add(
            &child(path, "policy"),
            "missing (required): a .rego file, or a list of them",
        );
        return None;
    };
    let non_empty = |v: &Value| -> Result<String, String> {
        let s = string(v)?;
        if s.trim().is_empty() {
            return Err("must not be empty (a path to a .rego file)".into());
        }
        Ok(s.to_string())
    };
    match v {
        Value::Sequence(items) => {
            if items.is_empty() {
                p.add(&at, "empty list: name at least one .rego file");
                return None;
            }
            let mut out: Vec<String> = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, it) in items.iter().enumerate() {
                match non_empty(it) {
                    Ok(f) if out.contains(&f) => {
                        ok = false;
                        p.add(&item(&at, i), format!("duplicate entry {f:?}"));
                    }
                    Ok(f) => out.push(f),
                    Err(e) => {
                        ok = false;
                        p.add(&item(&at, i), e);
                    }
                }
            }
            ok.then_some((out, false))
        }
        Value::String(_) => match non_empty(v) {
            Ok(f) => Some((vec![f], true)),
            Err(e) => {
                p.add(&at, e);
                None
            }
        },
        other => {
            p.add(
                &at,
                format!(
                    "expected a path to a .rego file or a list of them, got {}",
                    describe(other)
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {

    use crate::config::file::tests::Scratch;
    use crate::config::{load_str_with_env, render_effective, Config};

    const POLICY: &str = "package tollgate\nimport rego.v1\ndecision := input.method == \"ping\"\n";

    /// A fresh directory holding `files` (name, contents).
    fn dir_with(name: &str, files: &[(&str, &str)]) -> Scratch {
        let dir = Scratch::new(&format!("cfg-rego-{name}"));
        for (f, text) in files {
            std::fs::write(dir.join(f), text).unwrap();
        }
        dir
    }

    fn config(rego: &str) -> String {
        format!(
            "upstreams:\n  - name: demo\n    url: builtin:demo\nservers:\n  - path: /mcp\n    upstream: demo\n    rego:\n{rego}"
        )
    }

    fn load(text: &str) -> Result<Config, Vec<String>> {
        load_str_with_env(text, &|_| None).map_err(|e| e.0)
    }

    fn errs(text: &str) -> Vec<String> {
        match load(text) {
            Ok(_) => panic!("expected {text:?} to be refused"),
            Err(e) => e,
        }
    }

    #[test]
    fn off_by_default() {
        let c = load("").unwrap();
        assert!(c.servers.iter().all(|s| s.rego.is_none()));
        let c =
            load(&config("      null\n").replace("    rego:\n      null\n", "    rego: null\n"))
                .unwrap();
        assert!(c.servers[0].rego.is_none());
        assert!(render_effective(&c).contains("    rego: null\n"));
    }

    #[test]
    fn loads_one_file_or_several_with_defaults() {
        let d = dir_with(
            "ok",
            &[("a.rego", POLICY), ("b.rego", "package other\nx := 1\n")],
        );
        let a = d.join("a.rego").display().to_string();
        let b = d.join("b.rego").display().to_string();
        let c = load(&config(&format!("      policy: {a:?}\n"))).unwrap();
        let r = c.servers[0].rego.as_ref().unwrap();
        assert_eq!(r.policy, vec![a.clone()]);
        assert_eq!(r.query, "data.tollgate.decision");
        assert_eq!(r.cache_entries, 1024);
        assert_eq!(r.cache_ttl, std::time::Duration::from_secs(60));
        assert_eq!(r.eval_timeout, std::time::Duration::from_millis(10));

        let c = load(&config(&format!(
            "      policy: [{a:?}, {b:?}]\n      query: data.other.x\n      cache_entries: 0\n      cache_ttl: 5m\n      eval_timeout: 250ms\n"
        )))
        .unwrap();
        let r = c.servers[0].rego.as_ref().unwrap();
        assert_eq!(
            (r.policy.len(), &*r.query, r.cache_entries),
            (2, "data.other.x", 0)
        );
        // The rendering names the files and loads back to the same rendering.
        let shown = render_effective(&c);
        assert!(
            shown.contains(&format!("      policy: [{a:?}, {b:?}]\n")),
            "{shown}"
        );
        assert!(shown.contains("      cache_ttl: 5m\n"), "{shown}");
        assert!(shown.contains("      eval_timeout: 250ms\n"), "{shown}");
        let again = load(&shown.replace("  key: \"<redacted (from generated)>\"\n", ""))
            .map(|c| render_effective(&c));
        assert_eq!(again.ok(), Some(shown));
    }

    #[test]
    fn problems_are_reported_at_their_key() {
        let d = dir_with(
            "bad",
            &[
                ("ok.rego", POLICY),
                ("bad.rego", "package tollgate\n\ndecision := {\n"),
            ],
        );
        let ok = d.join("ok.rego").display().to_string();
        let bad = d.join("bad.rego").display().to_string();
        let missing = d.join("missing.rego").display().to_string();
        let at = "servers[0].rego";

        // A syntax error: at the file's entry, with regorus's file:line:column.
        let e = errs(&config(&format!("      policy: [{ok:?}, {bad:?}]\n")));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(&format!("{at}.policy[1]: {bad}:4:")),
            "{e:?}"
        );

        // A missing file, written as one string: at `policy`.
        let e = errs(&config(&format!("      policy: {missing:?}\n")));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(&format!("{at}.policy: cannot read {missing:?}")),
            "{e:?}"
        );

        // Two unreadable entries: both reported.
        let e = errs(&config(&format!(
            "      policy: [{missing:?}, \"\", {ok:?}, {ok:?}]\n"
        )));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with(&format!("{at}.policy[1]: must not be empty")),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(&format!("{at}.policy[3]: duplicate entry")),
            "{e:?}"
        );

        // A query that names no rule, or is not a rule path.
        let e = errs(&config(&format!(
            "      policy: {ok:?}\n      query: data.tollgate.nope\n"
        )));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with(&format!("{at}.query: ")), "{e:?}");
        let e = errs(&config(&format!(
            "      policy: {ok:?}\n      query: allow\n"
        )));
        assert!(
            e[0].starts_with(&format!("{at}.query: expected a rule path")),
            "{e:?}"
        );

        // The limits, a missing policy, an unknown key, the wrong shape.
        let e = errs(&config(&format!(
            "      policy: {ok:?}\n      cache_entries: -1\n      cache_ttl: 10ms\n      eval_timeout: 11s\n"
        )));
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[2].starts_with(&format!("{at}.eval_timeout: must be at most 10s")),
            "{e:?}"
        );
        assert!(
            e[0].starts_with(&format!(
                "{at}.cache_entries: expected a whole number from 0 to 1000000"
            )),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(&format!("{at}.cache_ttl: must be at least 1s")),
            "{e:?}"
        );
        let e = errs(&config("      query: data.x.y\n"));
        assert_eq!(
            e,
            vec![format!(
                "{at}.policy: missing (required): a .rego file, or a list of them"
            )]
        );
        let e = errs(&config(&format!("      policy: {ok:?}\n      polcy: x\n")));
        assert!(
            e[0].starts_with(&format!(
                "{at}.polcy: unknown key (did you mean \"policy\"?)"
            )),
            "{e:?}"
        );
        let e = errs(&config("      - a.rego\n"));
        assert!(
            e[0].starts_with(&format!("{at}: expected a mapping")),
            "{e:?}"
        );
        let e = errs(&config("      policy: []\n"));
        assert!(
            e[0].starts_with(&format!("{at}.policy: empty list")),
            "{e:?}"
        );
    }
}
