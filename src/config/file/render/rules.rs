//! `servers[].rules` rendered as compiled.

use std::fmt::Write as _;

use super::matches::{render_identity, render_methods, render_upstreams};
use super::{list, q};
use crate::config::*;

/// `servers[].rules`, as compiled (names, upstream names, methods, windows).
pub(super) fn render_rules(
    o: &mut String,
    c: &Config,
    rules: Option<&crate::policy::rules::Rules>,
) {
    let Some(rules) = rules else {
        let _ = writeln!(o, "    rules: null");
        return;
    };
    if rules.rules.is_empty() {
        let _ = writeln!(o, "    rules: []");
        return;
    }
    let _ = writeln!(o, "    rules:");
    for r in &rules.rules {
        let effect = if r.allow { "allow" } else { "deny" };
        if r.name.starts_with('#') {
            // An unnamed rule (named by its position when it decides).
            let _ = writeln!(o, "      - effect: {effect}");
        } else {
            let _ = writeln!(o, "      - name: {}", q(&r.name));
            let _ = writeln!(o, "        effect: {effect}");
        }
        render_upstreams(o, "        ", c, &r.upstreams);
        for (key, f) in [
            ("tools", &r.tools),
            ("prompts", &r.prompts),
            ("resources", &r.resources),
        ] {
            if let Some(f) = f {
                let _ = writeln!(o, "        {key}: {}", list(f.allow_globs()));
            }
        }
        render_methods(o, "        ", &r.methods);
        if r.annotations != (0, 0) {
            let hints: Vec<String> = crate::policy::rules::ann::NAMES
                .iter()
                .filter_map(|&(n, bit)| {
                    if r.annotations.0 & bit != 0 {
                        Some(format!("{n}: true"))
                    } else if r.annotations.1 & bit != 0 {
                        Some(format!("{n}: false"))
                    } else {
                        None
                    }
                })
                .collect();
            let _ = writeln!(o, "        annotations: {{{}}}", hints.join(", "));
        }
        let who = [&r.subjects, &r.clients, &r.tenants, &r.roles, &r.scopes];
        render_identity(o, "        ", &who.map(|l| &l[..]));
        if !r.sources.is_empty() {
            let cidrs: Vec<String> = r
                .sources
                .iter()
                .map(|c| q(&format!("{}/{}", c.addr, c.len)))
                .collect();
            let _ = writeln!(o, "        sources: [{}]", cidrs.join(", "));
        }
        if let Some(w) = &r.window {
            let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
            let _ = writeln!(o, "        hours: \"{}-{}\"", hm(w.start), hm(w.end));
            let days: Vec<&str> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .iter()
                .enumerate()
                .filter(|(i, _)| w.days & (1 << i) != 0)
                .map(|(_, d)| *d)
                .collect();
            let _ = writeln!(o, "        days: [{}]", days.join(", "));
        }
        if let Some(m) = &r.message {
            let _ = writeln!(o, "        message: {}", q(m));
        }
    }
}
