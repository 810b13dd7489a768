//! `tracing`: trace context and OTLP/HTTP span export (`config::telemetry`).

use std::time::Duration;

use serde_yaml_ng::Value;

use super::extract::{self, boolean, count, describe, string, Problems, Section};
use super::{formats, header_value};
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
    if let Some((hpath, hv)) = s.value("headers") {
        match hv {
            Value::Mapping(m) => {
                for (k, val) in m {
                    let kname = match k {
                        Value::String(k) => k.clone(),
                        other => describe(other),
                    };
                    let at = extract::child(&hpath, &kname);
                    let name = match k {
                        Value::String(k) => formats::header_name(k),
                        _ => Err("header names must be strings".to_string()),
                    };
                    let value = match val {
                        Value::String(s) => header_value(s, env),
                        _ => Err("expected a string value (put it in quotes)".to_string()),
                    };
                    match (name, value) {
                        (Ok(n), _) if n == "content-type" => {
                            p.add(&at, "set by the exporter (application/json)")
                        }
                        (Ok(n), Ok(_)) if headers.iter().any(|(h, _)| *h == n) => p.add(
                            &at,
                            format!("duplicate header {n:?} (names are case-insensitive)"),
                        ),
                        (Ok(n), Ok((val, source))) => {
                            headers.push((n, val));
                            header_sources.push(source);
                        }
                        (Err(e), _) | (_, Err(e)) => p.add(&at, e),
                    }
                }
            }
            other => p.add(
                &hpath,
                format!(
                    "expected a mapping of header names to values, got {}",
                    describe(other)
                ),
            ),
        }
    }
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
