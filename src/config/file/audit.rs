//! `audit:` (issue 11): the audit log's sinks, buffer, overflow policy, methods and argument
//! rules, validated into `observe::audit::Settings` (regexes compiled, the file path's
//! `${env:NAME}` resolved, the collector URL split), and rendered back for `tollgate check`.

use std::fmt::Write as _;
use std::time::Duration;

use super::extract::{boolean, count, size, string, Problems, Section};
use super::formats::{self, render_duration, render_size, WrittenHeader};
use crate::mcp::names::Filter;
use crate::mcp::Method;
use crate::observe::audit::{defaults, FileSink, HttpSink, Overflow, Settings};

const MS: Duration = Duration::from_millis(1);

pub(super) fn audit(
    p: &mut Problems,
    top: &Section,
    env: &dyn Fn(&str) -> Option<String>,
) -> Settings {
    let s = Section::open(
        p,
        "audit".into(),
        top.raw("audit"),
        &[
            "enabled",
            "file",
            "stdout",
            "http",
            "buffer",
            "overflow",
            "methods",
            "arguments",
            "max_decoded",
        ],
    );
    let mut a = Settings {
        enabled: s.get(p, "enabled", false, boolean),
        stdout: s.get(p, "stdout", false, boolean),
        buffer: s.get(p, "buffer", defaults::BUFFER, |v| {
            count(1, 16_777_216)(v).map(|n| n as usize)
        }),
        overflow: s.get(p, "overflow", Overflow::Block, |v| match string(v)? {
            "block" => Ok(Overflow::Block),
            "drop" => Ok(Overflow::Drop),
            other => Err(format!("expected block or drop, got {other:?}")),
        }),
        max_decoded: s.get(p, "max_decoded", defaults::MAX_DECODED, |v| {
            size(0)(v).map(|n| n as u64)
        }),
        ..Settings::default()
    };
    a.file = file(p, &s, env);
    a.http = http(p, &s);
    if let Some(methods) = super::rules::methods(p, &s) {
        if methods.is_empty() {
            p.add(
                "audit.methods",
                "an empty list records nothing: write enabled: false for that",
            );
        } else {
            a.methods = methods;
        }
    }
    let args = Section::open(
        p,
        "audit.arguments".into(),
        s.raw("arguments"),
        &["values", "redact"],
    );
    if let Some(globs) = super::string_list(p, &args, "values", |_| Ok(())) {
        match Filter::new(&globs, &[] as &[&str]) {
            Ok(f) if !globs.is_empty() => {
                a.values = Some(f);
                a.value_globs = globs;
            }
            Ok(_) => {}
            Err(e) => p.add(&format!("audit.arguments.values[{}]", e.index), e.reason),
        }
    }
    if let Some(patterns) = super::string_list(p, &args, "redact", |_| Ok(())) {
        for (i, pat) in patterns.iter().enumerate() {
            match regex::Regex::new(pat) {
                Ok(r) => a.redact.push(r),
                Err(e) => p.add(
                    &format!("audit.arguments.redact[{i}]"),
                    format!("not a regular expression: {e}"),
                ),
            }
        }
    }
    if a.enabled && a.file.is_none() && !a.stdout && a.http.is_none() {
        p.add(
            "audit.enabled",
            "audit is on but has no sink: set file, stdout: true or http",
        );
    }
    a
}

fn file(p: &mut Problems, s: &Section, env: &dyn Fn(&str) -> Option<String>) -> Option<FileSink> {
    s.value("file")?;
    let f = Section::open(
        p,
        "audit.file".into(),
        s.raw("file"),
        &["path", "max_bytes", "rotate_every", "keep"],
    );
    let path = f.required(p, "path", |v| {
        let written = string(v)?;
        let path = match formats::header_reference(written)? {
            WrittenHeader::Literal(v) => v,
            WrittenHeader::Env(name) => {
                env(&name).ok_or_else(|| format!("environment variable {name} is not set"))?
            }
            WrittenHeader::File(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read file {path}: {e}"))?;
                text.trim_end_matches(['\n', '\r']).to_string()
            }
        };
        if path.is_empty() {
            return Err("an empty path".into());
        }
        Ok((path, written.to_string()))
    });
    let max_bytes = f.get(p, "max_bytes", defaults::FILE_MAX_BYTES, |v| {
        size(1024)(v).map(|n| n as u64)
    });
    let rotate_every = f.get(
        p,
        "rotate_every",
        defaults::FILE_ROTATE_EVERY,
        super::extract::duration(Duration::from_secs(1)),
    );
    let keep = f.get(p, "keep", defaults::FILE_KEEP, |v| {
        count(0, 10_000)(v).map(|n| n as usize)
    });
    let (path, written) = path?;
    Some(FileSink {
        path,
        written,
        max_bytes,
        rotate_every,
        keep,
    })
}

fn http(p: &mut Problems, s: &Section) -> Option<HttpSink> {
    s.value("http")?;
    let h = Section::open(
        p,
        "audit.http".into(),
        s.raw("http"),
        &[
            "url",
            "batch",
            "flush_interval",
            "timeout",
            "attempt_timeout",
            "max_retries",
            "backoff",
            "queue",
        ],
    );
    let url = h.required(p, "url", |v| {
        let url = string(v)?;
        collector_url(url).map(|(a, t)| (url.to_string(), a, t))
    });
    let batch = h.get(p, "batch", defaults::HTTP_BATCH, |v| {
        count(1, 100_000)(v).map(|n| n as usize)
    });
    let flush_interval = h.get(
        p,
        "flush_interval",
        defaults::HTTP_FLUSH_INTERVAL,
        super::extract::duration(MS),
    );
    let timeout = h.get(
        p,
        "timeout",
        defaults::HTTP_TIMEOUT,
        super::extract::duration(MS),
    );
    let attempt_timeout = h.get(
        p,
        "attempt_timeout",
        defaults::HTTP_ATTEMPT_TIMEOUT,
        super::extract::duration(MS),
    );
    let max_retries = h.get(p, "max_retries", defaults::HTTP_MAX_RETRIES, |v| {
        count(0, 100)(v).map(|n| n as u32)
    });
    let backoff = h.get(
        p,
        "backoff",
        defaults::HTTP_BACKOFF,
        super::extract::duration(MS),
    );
    // Records the sink may hold waiting for the collector; absent: `audit.buffer`.
    let queue = h.get(p, "queue", None, |v| {
        count(1, 100_000_000)(v).map(|n| Some(n as usize))
    });
    let (url, authority, target) = url?;
    Some(HttpSink {
        url,
        authority,
        target,
        batch,
        flush_interval,
        timeout,
        attempt_timeout,
        max_retries,
        backoff,
        queue,
    })
}

/// `http://host[:port]/path` → (`host:port`, `/path`). Plain HTTP only: the writer thread's
/// client has no TLS.
fn collector_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url:?}: expected http://host[:port]/path (plain HTTP; https is not supported)")
    })?;
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?}: expected http://host[:port]/path"));
    }
    if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{url:?}: the path has spaces or control characters"
        ));
    }
    let authority = if authority.rsplit_once(':').is_some_and(|(h, port)| {
        !h.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    }) {
        authority.to_string()
    } else if authority.contains(':') && !authority.ends_with(']') {
        return Err(format!("{url:?}: the port is not a number"));
    } else {
        format!("{authority}:80")
    };
    Ok((authority, target.to_string()))
}

/// `audit:` as YAML, every default filled in (what `config/tollgate.yaml` spells).
pub(super) fn render(o: &mut String, a: &Settings) {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""));
    let list = |l: &[String]| {
        format!(
            "[{}]",
            l.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
        )
    };
    let _ = writeln!(o, "audit:");
    let _ = writeln!(o, "  enabled: {}", a.enabled);
    match &a.file {
        None => {
            let _ = writeln!(o, "  file: null");
        }
        Some(f) => {
            let _ = writeln!(o, "  file:");
            let _ = writeln!(o, "    path: {}", q(&f.written));
            let _ = writeln!(o, "    max_bytes: {}", render_size(f.max_bytes));
            let _ = writeln!(o, "    rotate_every: {}", render_duration(f.rotate_every));
            let _ = writeln!(o, "    keep: {}", f.keep);
        }
    }
    let _ = writeln!(o, "  stdout: {}", a.stdout);
    match &a.http {
        None => {
            let _ = writeln!(o, "  http: null");
        }
        Some(h) => {
            let _ = writeln!(o, "  http:");
            let _ = writeln!(o, "    url: {}", q(&h.url));
            let _ = writeln!(o, "    batch: {}", h.batch);
            let _ = writeln!(
                o,
                "    flush_interval: {}",
                render_duration(h.flush_interval)
            );
            let _ = writeln!(o, "    timeout: {}", render_duration(h.timeout));
            let _ = writeln!(
                o,
                "    attempt_timeout: {}",
                render_duration(h.attempt_timeout)
            );
            let _ = writeln!(o, "    max_retries: {}", h.max_retries);
            let _ = writeln!(o, "    backoff: {}", render_duration(h.backoff));
            if let Some(n) = h.queue {
                let _ = writeln!(o, "    queue: {n}");
            }
        }
    }
    let _ = writeln!(o, "  buffer: {}", a.buffer);
    let _ = writeln!(o, "  overflow: {}", a.overflow.as_str());
    let methods: Vec<String> = a
        .methods
        .iter()
        .map(|m: &Method| m.as_str().to_string())
        .collect();
    let _ = writeln!(o, "  methods: {}", list(&methods));
    let _ = writeln!(o, "  max_decoded: {}", render_size(a.max_decoded));
    let _ = writeln!(o, "  arguments:");
    let _ = writeln!(o, "    values: {}", list(&a.value_globs));
    let redact: Vec<String> = a.redact.iter().map(|r| r.as_str().to_string()).collect();
    let _ = writeln!(o, "    redact: {}", list(&redact));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_urls_split_into_authority_and_target() {
        assert_eq!(
            collector_url("http://127.0.0.1:9/audit?x=1").unwrap(),
            ("127.0.0.1:9".to_string(), "/audit?x=1".to_string())
        );
        assert_eq!(
            collector_url("http://logs.example").unwrap(),
            ("logs.example:80".to_string(), "/".to_string())
        );
        assert!(collector_url("https://logs.example/").is_err());
        assert!(collector_url("http://h:x/").is_err());
        assert!(collector_url("http:///p").is_err());
    }

    #[test]
    fn audit_section_reads_and_renders() {
        let yaml = r#"
audit:
  enabled: true
  file: {path: "${env:AUDIT_TEST_FILE}", max_bytes: 4KiB, keep: 2}
  overflow: drop
  methods: [tools/call, prompts/get]
  max_decoded: 64KiB
  arguments: {values: ["echo*"], redact: ["sk-[a-z0-9]+"]}
"#;
        let env = |n: &str| (n == "AUDIT_TEST_FILE").then(|| "/tmp/a.jsonl".to_string());
        let c = crate::config::load_str_with_env(yaml, &env).unwrap();
        let a = &c.audit;
        let f = a.file.as_ref().unwrap();
        assert_eq!(f.path, "/tmp/a.jsonl");
        assert_eq!(f.max_bytes, 4096);
        assert_eq!(f.keep, 2);
        assert_eq!(a.overflow, Overflow::Drop);
        assert!(a.records(Method::PromptsGet) && !a.records(Method::ToolsList));
        assert!(a.values_of("echo_x") && !a.values_of("add"));
        assert_eq!(a.max_decoded, 64 * 1024);
        let text = crate::config::render_effective(&c);
        assert!(text.contains("path: \"${env:AUDIT_TEST_FILE}\""), "{text}");
        assert!(text.contains("  max_decoded: 64KiB\n"), "{text}");
        let d = crate::config::load_str_with_env("audit: {}", &env).unwrap();
        assert_eq!(d.audit.max_decoded, defaults::MAX_DECODED);
        let bad = crate::config::load_str_with_env("audit: {max_decoded: lots}", &env)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("audit.max_decoded"), "{bad}");
        let h = crate::config::load_str_with_env(
            "audit: {http: {url: \"http://127.0.0.1:9/a\", attempt_timeout: 2s}}",
            &env,
        )
        .unwrap();
        let h = h.audit.http.as_ref().unwrap();
        assert_eq!(h.attempt_timeout, Duration::from_secs(2));
        assert_eq!(h.timeout, defaults::HTTP_TIMEOUT);
        assert_eq!(h.queue, None, "absent: audit.buffer");
        let q = crate::config::load_str_with_env(
            "audit: {http: {url: \"http://127.0.0.1:9/a\", queue: 8}}",
            &env,
        )
        .unwrap();
        assert_eq!(q.audit.http.as_ref().unwrap().queue, Some(8));
        let text = crate::config::render_effective(&q);
        assert!(text.contains("    queue: 8\n"), "{text}");
        assert!(crate::config::load_str_with_env(
            "audit: {http: {url: \"http://127.0.0.1:9/a\", queue: 0}}",
            &env
        )
        .is_err());
        let bad = crate::config::load_str_with_env(
            "audit: {enabled: true, arguments: {redact: [\"(\"]}}",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("audit.arguments.redact[0]: not a regular expression"),
            "{bad}"
        );
        assert!(
            bad.contains("audit.enabled: audit is on but has no sink"),
            "{bad}"
        );
    }
}
