//! `traffic:` rendered: every rule as compiled.

use std::fmt::Write as _;

use super::matches::{render_identity, render_methods, render_upstreams};
use super::{list, q, render_duration};
use crate::config::*;

/// `traffic:`: every rule as compiled (names for indices, the time zone as written).
pub(super) fn render_traffic(o: &mut String, c: &Config) {
    use crate::policy::traffic::{part, LimitKind};
    let t = &c.traffic;
    let _ = writeln!(o, "traffic:");
    let _ = writeln!(o, "  time_zone: {}", q(&t.time_zone));
    let _ = writeln!(o, "  sync_interval: {}", render_duration(t.sync_interval));
    let _ = writeln!(o, "  max_keys: {}", t.max_keys);
    let _ = writeln!(o, "  max_global_keys: {}", t.max_global_keys);
    match &t.redis {
        None => {
            let _ = writeln!(o, "  redis: null");
        }
        Some(r) => {
            // The password of a URL is never shown.
            let url = match r.url.split_once('@') {
                Some((auth, host)) => match auth.rsplit_once(':') {
                    Some((user, _)) => format!("{user}:<redacted>@{host}"),
                    None => r.url.to_string(),
                },
                None => r.url.to_string(),
            };
            let _ = writeln!(o, "  redis:");
            let _ = writeln!(o, "    url: {}", q(&url));
            let _ = writeln!(o, "    sync_interval: {}", render_duration(r.sync_interval));
            let _ = writeln!(o, "    timeout: {}", render_duration(r.timeout));
            let _ = writeln!(o, "    on_failure: {}", r.on_failure.as_str());
            let _ = writeln!(o, "    key_prefix: {}", q(&r.key_prefix));
        }
    }
    if t.rules.is_empty() {
        let _ = writeln!(o, "  rules: []");
        return;
    }
    let _ = writeln!(o, "  rules:");
    for r in &t.rules {
        let _ = writeln!(o, "    - name: {}", q(&r.name));
        if let Some(s) = &r.servers {
            let paths: Vec<String> = s
                .iter()
                .map(|&i| q(c.servers.get(i).map_or("?", |s| s.path.as_str())))
                .collect();
            let _ = writeln!(o, "      servers: [{}]", paths.join(", "));
        }
        render_upstreams(o, "      ", c, &r.upstreams);
        if let Some(f) = &r.tools {
            let _ = writeln!(o, "      tools: {}", list(f.allow_globs()));
        }
        render_methods(o, "      ", &r.methods);
        let who = [&r.subjects, &r.clients, &r.tenants, &r.roles];
        render_identity(o, "      ", &who.map(|l| &l[..]));
        let key: Vec<&str> = part::NAMES
            .iter()
            .filter(|(_, b)| r.key & b != 0)
            .map(|(n, _)| *n)
            .collect();
        let _ = writeln!(o, "      key: [{}]", key.join(", "));
        if let Some(g) = r.loop_guard {
            let window = render_duration(g.window);
            let _ = writeln!(o, "      loop: {{max: {}, window: {window}}}", g.max);
            continue;
        }
        for l in &r.limits {
            match l.kind {
                LimitKind::Rate { limit, per, burst } => {
                    let _ = writeln!(
                        o,
                        "      rate: {{limit: {limit}, per: {}, burst: {burst}}}",
                        render_duration(per)
                    );
                }
                LimitKind::Concurrency { limit } => {
                    let _ = writeln!(o, "      concurrency: {limit}");
                }
                LimitKind::Quota { limit, window } => {
                    let _ = writeln!(
                        o,
                        "      quota: {{limit: {limit}, window: {}}}",
                        window.as_str()
                    );
                }
                LimitKind::Tokens { limit, window } => {
                    let costs: Vec<String> = r
                        .costs
                        .iter()
                        .map(|(g, n)| format!("{}: {n}", q(g)))
                        .collect();
                    let _ = writeln!(
                        o,
                        "      tokens: {{limit: {limit}, window: {}, costs: {{{}}}}}",
                        window.as_str(),
                        costs.join(", ")
                    );
                }
                // A loop guard is `r.loop_guard` (rendered above), never one of `limits`.
                LimitKind::Loop { .. } => {}
            }
        }
    }
}
