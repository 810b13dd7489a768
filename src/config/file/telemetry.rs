//! `tracing`: trace context and OTLP/HTTP span export (`config::telemetry`).

use std::time::Duration;

use serde_yaml_ng::Value;

use super::extract::{self, boolean, count, describe, string, Problems, Section};
use super::{formats, header_map};
use crate::config::telemetry::{defaults, Otlp, Tracing};
use crate::config::UpstreamTarget;

const KEYS: &[&str] = &["enabled", "sample_ratio", "otlp"];
const OTLP_KEYS: &[&str] = &[
    "endpoint",
    "batch",
    "flush_interval",
    "timeout",
    "queue",
    "service_name",
    "headers",
];

pub(super) fn tracing(
    p: &mut Problems,
    top: &Section,
    env: &dyn Fn(&str) -> Option<String>,
) -> Tracing {
    let s = Section::open(p, "tracing".into(), top.raw("tracing"), KEYS);
    let enabled = s.get(p, "enabled", false, boolean);
    let sample_ratio = s.get(p, "sample_ratio", defaults::SAMPLE_RATIO, |v| match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| format!("expected a number from 0 to 1, got {n}")),
        other => Err(format!(
            "expected a number from 0 to 1, got {}",
            describe(other)
        )),
    });
    let otlp = match s.value("otlp") {
        None => None,
        Some((path, v)) => otlp(p, path, v, env),
    };
    if otlp.is_some() && !enabled {
        p.add(
            &extract::child("tracing", "otlp"),
            "spans are only made with tracing.enabled: true",
        );
    }
    Tracing {
        enabled,
        sample_ratio,
        otlp,
    }
}

fn otlp(
    p: &mut Problems,
    path: String,
    v: &Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Otlp> {
    let s = Section::open(p, path, Some(v), OTLP_KEYS);
    let endpoint = s.required(p, "endpoint", |v| {
        match formats::upstream_url(string(v)?)? {
            UpstreamTarget::Http(h) if !h.tls => Ok(h),
            UpstreamTarget::Http(_) => Err(
                "https is not supported here yet: export to a local collector over http://".into(),
            ),
            UpstreamTarget::BuiltinDemo => Err("expected http://host:port/v1/traces".into()),
        }
    });
    let batch = s.get(p, "batch", defaults::BATCH, |v| {
        count(1, defaults::MAX_BATCH)(v).map(|n| n as usize)
    });
    let flush_interval = s.get(
        p,
        "flush_interval",
        defaults::FLUSH_INTERVAL,
        extract::duration(Duration::from_millis(10)),
    );
    let timeout = s.get(
        p,
        "timeout",
        defaults::TIMEOUT,
        extract::duration(Duration::from_millis(10)),
    );
    let queue = s.get(p, "queue", defaults::QUEUE, |v| {
        count(1, defaults::MAX_QUEUE)(v).map(|n| n as usize)
    });
    let service_name = s.get(p, "service_name", defaults::SERVICE_NAME.to_string(), |v| {
        let n = string(v)?;
        if n.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(n.to_string())
    });
    let mut headers = Vec::new();
    let mut header_sources = Vec::new();
    header_map(
        p,
        &s,
        env,
        Some(("content-type", "set by the exporter (application/json)")),
        &mut headers,
        &mut header_sources,
    );
    Some(Otlp {
        endpoint: endpoint?,
        batch,
        flush_interval,
        timeout,
        queue,
        service_name,
        headers,
        header_sources,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{load_str_with_env, render_effective};

    fn errors(text: &str) -> String {
        match load_str_with_env(text, &|_| None) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_are_off_with_no_exporter() {
        let c = load_str_with_env("", &|_| None).unwrap();
        assert!(!c.tracing.enabled);
        assert_eq!(c.tracing.sample_ratio, 1.0);
        assert!(c.tracing.otlp.is_none());
    }

    #[test]
    fn an_exporter_is_read_and_rendered_without_its_header_values() {
        let text = "tracing:\n  enabled: true\n  sample_ratio: 0.25\n  otlp:\n    endpoint: http://127.0.0.1:4318/v1/traces\n    batch: 10\n    flush_interval: 100ms\n    headers:\n      X-Api-Key: secret-value\n      authorization: \"${env:OTLP_TOKEN}\"\n";
        let c =
            load_str_with_env(text, &|n| (n == "OTLP_TOKEN").then(|| "Bearer t".into())).unwrap();
        let o = c.tracing.otlp.as_ref().unwrap();
        assert_eq!(c.tracing.sample_ratio, 0.25);
        assert_eq!(o.endpoint.port, 4318);
        assert_eq!(o.endpoint.path, "/v1/traces");
        assert_eq!(o.batch, 10);
        assert_eq!(o.flush_interval, std::time::Duration::from_millis(100));
        assert_eq!(o.service_name, "tollgate");
        assert_eq!(o.headers[0], ("x-api-key".into(), "secret-value".into()));
        assert_eq!(o.headers[1].1, "Bearer t");
        let r = render_effective(&c);
        assert!(
            !r.contains("secret-value") && !r.contains("Bearer t"),
            "{r}"
        );
        assert!(r.contains("${env:OTLP_TOKEN}"), "{r}");
        assert!(!format!("{o:?}").contains("secret-value"));
        // What is rendered reads back the same.
        let section = &r[r.find("\ntracing:").unwrap() + 1..];
        let again = load_str_with_env(&section.replace("\"<redacted>\"", "\"x\""), &|n| {
            (n == "OTLP_TOKEN").then(|| "Bearer t".into())
        })
        .unwrap();
        let a = again.tracing.otlp.unwrap();
        assert_eq!(a.endpoint, o.endpoint);
        assert_eq!(
            (a.batch, a.flush_interval, a.timeout),
            (o.batch, o.flush_interval, o.timeout)
        );
        assert_eq!(again.tracing.sample_ratio, 0.25);
    }

    #[test]
    fn problems_are_reported_with_their_path() {
        let e = errors("tracing:\n  sample_ratio: 2\n");
        assert!(
            e.contains("tracing.sample_ratio: expected a number from 0 to 1"),
            "{e}"
        );
        let e = errors("tracing:\n  otlp:\n    endpoint: http://127.0.0.1:4318/v1/traces\n");
        assert!(
            e.contains("tracing.otlp: spans are only made with tracing.enabled"),
            "{e}"
        );
        let e =
            errors("tracing:\n  enabled: true\n  otlp:\n    endpoint: https://c:4318/v1/traces\n");
        assert!(
            e.contains("tracing.otlp.endpoint: https is not supported"),
            "{e}"
        );
        let e = errors("tracing:\n  enabled: true\n  otlp: {}\n");
        assert!(
            e.contains("tracing.otlp.endpoint: missing (required)"),
            "{e}"
        );
        let e = errors(
            "tracing:\n  enabled: true\n  otlp:\n    endpoint: http://c:4318/v1/traces\n    headers: {content-type: x}\n    batch: 0\n",
        );
        assert!(
            e.contains("tracing.otlp.headers.content-type: set by the exporter"),
            "{e}"
        );
        assert!(e.contains("tracing.otlp.batch:"), "{e}");
        let e = errors("tracing:\n  enable: true\n");
        assert!(e.contains("tracing.enable: unknown key"), "{e}");
    }
}
