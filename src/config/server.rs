//! An endpoint (`servers[]`, read by `file::servers`) as the program sees it: its path, the
//! upstreams behind it and how their names are exposed, what it exposes, its legacy paths,
//! authentication, rules and Rego policy.

use std::time::Duration;

use super::{ServerAuth, Upstream};

#[derive(Clone, Debug)]
pub struct Server {
    /// `servers[].path`: the MCP endpoint path, e.g. `/mcp`. Exact match (a trailing `/` is also accepted).
    pub path: String,
    /// Where it is in the file's `servers` list (servers are kept sorted by path), for
    /// messages that name its keys (`tollgate check --probe`); 0 for the built-in default.
    pub file_index: usize,
    /// `servers[].upstreams` (or the single `upstream`): the upstreams behind this endpoint, in
    /// listing order, each with how its names are exposed here. Never empty, no repeats.
    pub upstreams: Vec<ServerUpstream>,
    /// `servers[].prefix_names`: `auto` (default: prefix when more than one upstream) or `always`.
    pub prefix_names: PrefixNames,
    /// `servers[].max_name_length`, default 64 (16..=128): longest exposed tool or prompt name.
    pub max_name_length: usize,
    /// `servers[].tools`: which tools (by exposed name) this endpoint exposes.
    pub tools: NameFilter,
    /// `servers[].prompts`: which prompts (by exposed name).
    pub prompts: NameFilter,
    /// `servers[].resources`: which resources and templates (by URI / URI template).
    pub resources: NameFilter,
    /// `servers[].list_page_size`, default 100 (1..=10000): items per page of an aggregated list.
    pub list_page_size: usize,
    /// `servers[].list_refresh_interval`, default 5m: how old a worker's routing tables may get
    /// before the next call that needs them lists the upstreams again.
    pub list_refresh_interval: Duration,
    /// `servers[].legacy_sse`, default true: the legacy HTTP+SSE transport (2024-11-05) is
    /// offered to clients at `<path>/sse` (the event stream) and `<path>/messages` (the POSTs).
    pub legacy: Option<LegacyPaths>,
    /// `servers[].offer_stateless`, default `auto`: whether `server/discover` offers 2026-07-28
    /// to a client that asks for sampling, elicitation or roots while an upstream here is reached
    /// through held sessions (which cannot carry them). `auto`: not offered, so an "auto" client
    /// keeps them in a session of its own; `always` (true): offered, and that upstream's
    /// requests for them are answered -32601.
    pub offer_stateless_always: bool,
    /// `servers[].auth`: absent = open endpoint; present = every request must authenticate.
    pub auth: Option<ServerAuth>,
    /// `servers[].rules`, default none: the endpoint's authorization rules, compiled
    /// (`policy::rules`). Present (even empty), the endpoint is federated: lists are filtered
    /// and every call decided per caller.
    pub rules: Option<std::sync::Arc<crate::policy::rules::Rules>>,
    /// `servers[].rego`, default null (off): an OPA Rego policy every request here is decided by.
    pub rego: Option<RegoConfig>,
}

/// `servers[].rego`: the policy files, compiled when the config is loaded (and reloaded).
#[derive(Clone, Debug)]
pub struct RegoConfig {
    /// `policy`: the `.rego` files (one or more), as written (relative to the working directory).
    pub policy: Vec<String>,
    /// `query`, default `data.tollgate.decision`: the rule whose value is the decision.
    pub query: String,
    /// `cache_entries`, default 1024 (0..=1000000, 0 = off): cacheable decisions one worker keeps.
    pub cache_entries: usize,
    /// `cache_ttl`, default 60s (at least 1s): how long a cached decision holds (never past the
    /// principal's `expires_at`).
    pub cache_ttl: Duration,
    /// `eval_timeout`, default 10ms (1ms..=10s): one evaluation running longer is stopped and
    /// denies (`rego_error`): a runaway policy cannot hold a worker's core.
    pub eval_timeout: Duration,
    /// The compiled policy; each worker makes its `policy::rego::RegoPolicy` from it.
    pub program: std::sync::Arc<crate::policy::rego::RegoProgram>,
}

/// Where a server's legacy HTTP+SSE transport lives (`servers[].legacy_sse`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyPaths {
    /// `GET` opens the event stream: `<path>/sse` (`/sse` for the server at `/`).
    pub sse: String,
    /// Where the `endpoint` event tells the client to POST: `<path>/messages`.
    pub messages: String,
}

impl LegacyPaths {
    /// The legacy paths of the server at `path`.
    pub fn of(path: &str) -> Self {
        let base = path.trim_end_matches('/');
        LegacyPaths {
            sse: format!("{base}/sse"),
            messages: format!("{base}/messages"),
        }
    }
}

impl Server {
    /// The first upstream (the only one on a plain endpoint).
    pub fn primary(&self) -> usize {
        self.upstreams.first().map_or(0, |u| u.upstream)
    }

    /// `a` or `a+b+c` (upstream names, for summaries).
    pub fn upstream_names(&self, upstreams: &[Upstream]) -> String {
        self.upstreams
            .iter()
            .map(|su| upstreams.get(su.upstream).map_or("?", |u| u.name.as_str()))
            .collect::<Vec<_>>()
            .join("+")
    }

    /// Everything that decides what the endpoint serves, for reload's change summary.
    pub fn describe(&self, upstreams: &[Upstream]) -> String {
        format!(
            "{} {:?} {} {:?} {:?} {:?} {} {:?}",
            self.upstream_names(upstreams),
            self.prefix_names,
            self.max_name_length,
            (&self.tools.allow, &self.tools.deny),
            (&self.prompts.allow, &self.prompts.deny),
            (&self.resources.allow, &self.resources.deny),
            self.list_page_size,
            self.list_refresh_interval,
        )
    }

    /// Whether the gateway aggregates this endpoint (opens every upstream's session, merges
    /// lists, routes by name) instead of passing one upstream through untouched: more than one
    /// upstream, prefixed names, or a filter.
    pub fn federated(&self) -> bool {
        self.upstreams.len() > 1
            || self.prefix_names == PrefixNames::Always
            || self.rules.is_some()
            || self.rego.is_some()
            || !(self.tools.filter.is_all()
                && self.prompts.filter.is_all()
                && self.resources.filter.is_all())
    }
}

/// One upstream of a server.
#[derive(Clone, Debug)]
pub struct ServerUpstream {
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    /// How its tool and prompt names are exposed on this server.
    pub namer: crate::mcp::names::Namer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixNames {
    /// Prefix names when the server has more than one upstream.
    Auto,
    /// Prefix names even for a single upstream.
    Always,
}

/// An allow/deny list of globs (`servers[].tools` etc.), as written and compiled.
#[derive(Clone, Debug, Default)]
pub struct NameFilter {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub filter: crate::mcp::names::Filter,
}
