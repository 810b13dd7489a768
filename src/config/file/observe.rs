//! `observe:`: which tools get a label of their own in the per-tool metrics, and how many such
//! labels the process makes at most (`observe::WorkerMetrics::tool_call`).

use super::extract::{count, Problems, Section};
use crate::config::Observe;
use crate::mcp::names::Filter;

pub const DEFAULT_MAX_TOOL_SERIES: u64 = 100;

pub(super) fn observe(p: &mut Problems, top: &Section) -> Observe {
    let s = Section::open(
        p,
        "observe".into(),
        top.raw("observe"),
        &["tools", "max_tool_series"],
    );
    // `[]` (the default): only tools a rule names get their own label.
    let tools = super::string_list(p, &s, "tools", |_| Ok(()))
        .filter(|l| !l.is_empty())
        .and_then(|list| match Filter::new(&list, &[] as &[&str]) {
            Ok(f) => Some(f),
            Err(e) => {
                p.add(&format!("observe.tools[{}]", e.index), e.reason);
                None
            }
        });
    let max_tool_series = s.get(
        p,
        "max_tool_series",
        DEFAULT_MAX_TOOL_SERIES as usize,
        |v| count(0, 10_000)(v).map(|n| n as usize),
    );
    Observe {
        tools,
        max_tool_series,
    }
}
