//! What a rule matches on, rendered alike for `servers[].rules` and `traffic.rules` (only the
//! indent differs): upstreams by name, methods, and the identity lists.

use std::fmt::Write as _;

use super::{list, q};
use crate::config::*;
use crate::mcp::Method;

/// `upstreams: [..]` by name (indices in the compiled rule; `?` for one the config lacks).
pub(super) fn render_upstreams(o: &mut String, indent: &str, c: &Config, us: &Option<Vec<usize>>) {
    if let Some(us) = us {
        let names: Vec<String> = us
            .iter()
            .map(|&u| q(c.upstreams.get(u).map_or("?", |u| u.name.as_str())))
            .collect();
        let _ = writeln!(o, "{indent}upstreams: [{}]", names.join(", "));
    }
}

/// `methods: [..]`, when the rule names any.
pub(super) fn render_methods(o: &mut String, indent: &str, ms: &Option<Vec<Method>>) {
    if let Some(ms) = ms {
        let names: Vec<&str> = ms.iter().map(|m| m.as_str()).collect();
        let _ = writeln!(o, "{indent}methods: {}", list(&names));
    }
}

/// The identity lists in the order both kinds of rule write them (traffic rules have no `scopes`).
const IDENTITY: [&str; 5] = ["subjects", "clients", "tenants", "roles", "scopes"];

/// The identity lists, given in `IDENTITY`'s order: one `key: [..]` line each that is not empty.
pub(super) fn render_identity(o: &mut String, indent: &str, lists: &[&[Box<str>]]) {
    for (key, l) in IDENTITY.iter().zip(lists) {
        if !l.is_empty() {
            let _ = writeln!(o, "{indent}{key}: {}", list(l));
        }
    }
}
