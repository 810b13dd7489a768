//! The parts of an `upstreams[]` entry rendered apart: credentials (secrets as references or
//! redacted), tool timeouts, retries, circuit breaker and health check.

use std::fmt::Write as _;

use super::{q, render_duration};
use crate::config::*;

/// `upstreams[].credentials`: the secret as its reference (`${env:…}`/`${file:…}`) or redacted.
pub(super) fn render_credentials(
    o: &mut String,
    c: Option<&crate::config::credentials::Credentials>,
) {
    use crate::config::credentials::Grant;
    let Some(c) = c else {
        let _ = writeln!(o, "    credentials: null");
        return;
    };
    let _ = writeln!(o, "    credentials:");
    let _ = writeln!(o, "      {}:", c.grant.as_str());
    let _ = writeln!(o, "        token_url: {}", q(&c.token_url));
    let _ = writeln!(o, "        client_id: {}", q(&c.client_id));
    let shown = match &c.client_secret_source {
        HeaderSource::Env(var) => q(&format!("${{env:{var}}}")),
        HeaderSource::File(path) => q(&format!("${{file:{path}}}")),
        HeaderSource::Literal => "\"<redacted>\"".to_string(),
    };
    let _ = writeln!(o, "        client_secret: {shown}");
    let opt = |v: &Option<String>| v.as_deref().map_or("null".to_string(), q);
    let _ = writeln!(o, "        scope: {}", opt(&c.scope));
    if c.resource_set {
        let _ = writeln!(o, "        resource: {}", opt(&c.resource));
    } else {
        let _ = writeln!(
            o,
            "        resource: {}  # the upstream's url",
            opt(&c.resource)
        );
    }
    let _ = writeln!(o, "        audience: {}", opt(&c.audience));
    let _ = writeln!(
        o,
        "        refresh_before: {}",
        render_duration(c.refresh_before)
    );
    let _ = writeln!(o, "        ca_file: {}", opt(&c.ca_file));
    let _ = writeln!(
        o,
        "        connect_timeout: {}",
        render_duration(c.connect_timeout)
    );
    let _ = writeln!(
        o,
        "        request_timeout: {}",
        render_duration(c.request_timeout)
    );
    let _ = writeln!(o, "        max_response_bytes: {}", c.max_response_bytes);
    if c.grant == Grant::TokenExchange {
        let _ = writeln!(o, "        actor: {}", c.actor);
        let _ = writeln!(o, "        cache_entries: {}", c.cache_entries);
    }
}

/// `tool_timeouts`, `retries` and `circuit_breaker` of one upstream.
pub(super) fn render_resilience(o: &mut String, u: &crate::config::Upstream) {
    if u.tool_timeouts.is_empty() {
        let _ = writeln!(o, "    tool_timeouts: {{}}");
    } else {
        let _ = writeln!(o, "    tool_timeouts:");
        for (glob, d) in &u.tool_timeouts {
            let _ = writeln!(o, "      {}: {}", q(glob), render_duration(*d));
        }
    }
    let _ = writeln!(o, "    retries:");
    let _ = writeln!(o, "      attempts: {}", u.retries.attempts);
    let _ = writeln!(o, "      backoff: {}", render_duration(u.retries.backoff));
    let cb = &u.circuit_breaker;
    let _ = writeln!(o, "    circuit_breaker:");
    let _ = writeln!(o, "      consecutive_failures: {}", cb.consecutive_failures);
    let _ = writeln!(o, "      error_ratio: {}", cb.error_ratio);
    let _ = writeln!(o, "      min_requests: {}", cb.min_requests);
    let _ = writeln!(o, "      window: {}", render_duration(cb.window));
    let _ = writeln!(o, "      open_for: {}", render_duration(cb.open_for));
    let _ = writeln!(o, "      half_open_probes: {}", cb.half_open_probes);
    let h = &u.health;
    let _ = writeln!(o, "    health:");
    let _ = writeln!(o, "      interval: {}", render_duration(h.interval));
    let _ = writeln!(o, "      timeout: {}", render_duration(h.timeout));
    let _ = writeln!(o, "      unhealthy_after: {}", h.unhealthy_after);
    let _ = writeln!(o, "      healthy_after: {}", h.healthy_after);
    match &h.path {
        None => {
            let _ = writeln!(o, "      path: null  # the replica's URL path");
        }
        Some(p) => {
            let _ = writeln!(o, "      path: {}", q(p));
        }
    }
}
