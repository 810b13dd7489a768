//! Metrics: names in one catalog (`names`), handles resolved once per worker (`WorkerMetrics`),
//! the request path's counters and histograms in per-worker `series`, rendered by the admin
//! listener (`admin`). Recording never allocates or looks up by name.

pub mod access;
pub mod admin;
pub mod audit;
pub mod names;
pub mod otlp;
pub mod series;
pub mod tokens;
pub mod trace;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::Kind;
use crate::mcp::Method;

/// How a request ended, as seen by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Relayed from the upstream with a 2xx status.
    Ok,
    /// Refused by the gateway before reaching an upstream.
    Rejected,
    /// The upstream could not be reached, timed out or answered garbage.
    UpstreamError,
    /// The upstream answered with a non-2xx status (relayed as is).
    UpstreamStatus,
    /// Still in flight when the drain deadline of a shutdown passed: the gateway closed it.
    Cut,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Rejected,
        Outcome::UpstreamError,
        Outcome::UpstreamStatus,
        Outcome::Cut,
    ];
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamStatus => "upstream_status",
            Outcome::Cut => "cut",
        }
    }
}

/// Installs the global Prometheus recorder and describes every metric. Call once per process.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(names::LATENCY_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        names::TRACE_SPANS_EXPORTED_TOTAL,
        "Spans sent to the OTLP collector (tracing.otlp)."
    );
    describe_counter!(
        names::TRACE_SPANS_DROPPED_TOTAL,
        "Spans not exported, by reason: queue_full (tracing.otlp.queue) or export_failed."
    );
    describe_counter!(
        names::TRACE_EXPORT_ERRORS_TOTAL,
        "OTLP export POSTs that failed (unreachable, timed out, or not a 2xx answer)."
    );
    describe_counter!(
        names::UPSTREAM_POOL_DISCARDS_TOTAL,
        "Idle upstream connections dropped instead of reused: closed by the upstream, \
         unsolicited bytes from it (a stray response), or expired."
    );
    describe_counter!(
        names::UPSTREAM_TOKEN_REQUESTS_TOTAL,
        "Requests to upstreams' token endpoints (upstreams[].credentials), by upstream, grant \
         (client_credentials, token_exchange) and result (ok, error)."
    );
    describe_gauge!(names::CONNECTIONS_OPEN, "Client connections open now.");
    describe_gauge!(
        names::LEGACY_UPSTREAM_STREAMS_OPEN,
        "Event streams open to upstreams with transport: sse (one per client session)."
    );
    describe_counter!(
        names::LEGACY_UPSTREAM_HANDOFFS_TOTAL,
        "Messages from an HTTP+SSE upstream stream handed by its holding worker to the worker \
         whose request or GET stream waits for them."
    );
    describe_counter!(
        names::LEGACY_UPSTREAM_FAILURES_TOTAL,
        "HTTP+SSE upstream failures by step: connect, endpoint, post, timeout, ended, \
         unroutable, dropped, limit."
    );
    describe_gauge!(
        names::LEGACY_SSE_STREAMS_OPEN,
        "Legacy HTTP+SSE (2024-11-05) event streams open now."
    );
    describe_counter!(
        names::LEGACY_SSE_HANDOVERS_TOTAL,
        "Messages POSTed to a legacy HTTP+SSE stream held by another worker, handed to it over \
         the control channel, by result (queued, unknown, full, undelivered)."
    );
    describe_gauge!(
        names::LISTEN_STREAMS_OPEN,
        "2026-07-28 subscriptions/listen streams open now (merged or relayed from one upstream)."
    );
    describe_counter!(
        names::LISTEN_STREAMS_ENDED_TOTAL,
        "Merged subscriptions/listen streams ended, by reason (client_closed, shutdown, members_gone)."
    );
    describe_counter!(
        names::LISTEN_MEMBER_ENDS_TOTAL,
        "Upstream subscriptions/listen streams of a merged one that ended or could not be opened, \
         by upstream and reason (not_opened, ended, unusable)."
    );
    describe_counter!(
        names::LEGACY_SSE_STREAMS_ENDED_TOTAL,
        "Legacy HTTP+SSE event streams ended, by reason (client_closed, slow_reader, shutdown)."
    );
    describe_counter!(
        names::CONNECTIONS_ACCEPTED_TOTAL,
        "Client connections accepted."
    );
    describe_counter!(
        names::FIXED_FILE_MISSES_TOTAL,
        "Connections (side: client, upstream) that found no free slot in their worker ring's \
         table of registered files (runtime.fixed_files) and use a plain descriptor."
    );
    describe_counter!(
        names::TLS_HANDSHAKE_FAILURES_TOTAL,
        "Client connections to a TLS listener closed without a TLS session: the handshake \
         failed (a refused or missing client certificate, no common version, not TLS) or did \
         not finish within limits.tls_handshake_timeout."
    );
    describe_counter!(
        names::REJECTIONS_TOTAL,
        "Requests refused by the gateway, by reason; a refusal for a configured limit is \
         counted in tollgate_limit_rejections_total instead, never in both."
    );
    describe_counter!(
        names::LIMIT_REJECTIONS_TOTAL,
        "Requests or connections refused because a configured limit was hit, by limit; \
         not also counted in tollgate_rejections_total."
    );
    describe_counter!(
        names::SESSIONS_OPENED_TOTAL,
        "MCP sessions opened (initialize answered)."
    );
    describe_counter!(
        names::SESSIONS_CLOSED_TOTAL,
        "MCP sessions ended by DELETE."
    );
    describe_counter!(
        names::ADMIN_LIMIT_REJECTIONS_TOTAL,
        "Admin connections refused (max_connections) or cut off (request_timeout)."
    );
    describe_counter!(
        names::CONTROL_UNDELIVERABLE_TOTAL,
        "Control messages to workers (kind: revoke = a session ended by DELETE; prepare, commit, \
         abort = a hot reload) not delivered because the worker's queue was full or the worker \
         had stopped; each is also logged."
    );
    describe_counter!(
        names::CONFIG_RELOADS_TOTAL,
        "Hot reloads (SIGHUP or POST /admin/reload) by result: ok, or error (the config had \
         problems, or not every worker took it; the running config stayed)."
    );
    describe_gauge!(
        names::CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
        "Unix time the running config was loaded: at start, then at each successful reload."
    );
    describe_counter!(
        names::FEDERATION_UPSTREAM_FAILURES_TOTAL,
        "On endpoints with several upstreams: an upstream that failed its part of a request the \
         gateway answers for all of them (step: initialize, list, fanout); the others answered."
    );
    describe_counter!(
        names::FEDERATION_TABLE_REFRESHES_TOTAL,
        "On endpoints with several upstreams: a worker's routing table rebuilt from the \
         upstreams' lists, by list (tools, prompts, resources)."
    );
    describe_counter!(
        names::HELD_SESSION_WAITS_TOTAL,
        "Clients of 2026-07-28 reaching a session-era upstream: requests that found every \
         session the worker holds with it busy (limits.held_sessions_per_upstream) and waited."
    );
    describe_counter!(
        names::FEDERATION_TOOLS_DROPPED_TOTAL,
        "On endpoints with several upstreams: tools left out of lists and routing, by upstream \
         and reason (x_mcp_header: an invalid x-mcp-header annotation in the tool's schema)."
    );
    describe_counter!(
        names::HELD_SESSIONS_ABANDONED_TOTAL,
        "Sessions held for clients of 2026-07-28 with a session-era upstream, left out of the \
         pool because a request in them ended before its reply (client gone, timeout): the \
         upstream may still be running it."
    );
    describe_counter!(
        names::HELD_SERVER_REQUESTS_TOTAL,
        "Server-to-client requests a session-era upstream sent in a session held for clients of \
         2026-07-28: not relayed, answered by the gateway (ping) or refused, by method."
    );
    describe_counter!(
        names::REGO_ERRORS_TOTAL,
        "Rego policy evaluations that failed (undefined, wrong_type, runtime, input) and so \
         denied the request with reason rego_error, by server and kind."
    );
    describe_counter!(
        names::TRAFFIC_REJECTIONS_TOTAL,
        "Calls refused by a traffic rule (traffic.rules), by rule and kind (rate, concurrency, \
         quota); also counted in tollgate_rejections_total as throttled or tool_limited."
    );
    describe_counter!(
        names::TRAFFIC_EXCHANGE_DROPPED_TOTAL,
        "Usage messages between workers and the traffic exchange dropped because a queue was \
         full (sized from traffic.max_keys); a lost level is sent again later."
    );
    describe_counter!(
        names::TRAFFIC_QUOTA_USED_TOTAL,
        "Units counted by quota rules: calls (quota) or estimated tokens and costs (tokens)."
    );
    describe_gauge!(
        names::TRAFFIC_QUOTA_FULLEST_RATIO,
        "The fullest key of a quota rule: its fraction of the budget in the current window."
    );
    describe_gauge!(
        names::TRAFFIC_REDIS_UP,
        "1 while the last sync with traffic.redis succeeded, else 0."
    );
    describe_counter!(
        names::TRAFFIC_REDIS_SYNCS_TOTAL,
        "Syncs of the traffic exchange with traffic.redis, by result (ok, error)."
    );
    describe_counter!(
        names::TRAFFIC_KEYS_EVICTED_TOTAL,
        "Limiter keys a worker evicted (the oldest idle) to stay within traffic.max_keys, or \
         the exchange to stay within traffic.max_global_keys."
    );
    describe_counter!(
        names::AUTH_FAILURES_TOTAL,
        "Requests refused 401 (not authenticated), by reason (token_missing, expired, \
         wrong_audience, alg_not_allowed, unknown_kid, ...)."
    );
    describe_counter!(
        names::AUTH_TOKEN_CACHE_TOTAL,
        "Bearer tokens looked up in the per-worker verified-token cache, by result (hit: no \
         signature check; miss: verified in full). Added up once a second per worker."
    );
    describe_counter!(
        names::AUTH_INTROSPECTIONS_TOTAL,
        "Calls to an issuer's token introspection endpoint (RFC 7662) for opaque tokens, by \
         result (active, inactive, error); on error the request is refused 401 \
         introspection_failed."
    );
    describe_counter!(
        names::AUTH_KEY_REFRESHES_TOTAL,
        "Fetches of an issuer's signing keys (JWKS, after discovery when configured) by the \
         background refresher, by issuer and result; on error the last good keys stay in use."
    );
    describe_gauge!(names::WORKERS, "Worker threads by I/O driver.");
    describe_gauge!(
        names::BUILD_INFO,
        "Always 1; the version label is the running tollgate version."
    );
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_counter!(
        names::AUDIT_RECORDS_TOTAL,
        "Audit records written, by sink (file, stdout, http)."
    );
    describe_counter!(
        names::AUDIT_RECORDS_DROPPED_TOTAL,
        "Audit records lost, by reason (overflow: audit.buffer full with overflow: drop; \
         sink_failed: a sink could not write them; closed: the writer had stopped; \
         http_overflow: the HTTP sink's queue full, lost to that sink only)."
    );
    describe_counter!(
        names::AUDIT_SINK_ERRORS_TOTAL,
        "Failed audit writes, syncs, rotations and HTTP attempts, by sink."
    );
    describe_counter!(
        names::AUDIT_REPLIES_UNREAD_TOTAL,
        "Upstream replies the audit's probe did not read to their end, by reason (encoding, \
         max_decoded, corrupt): their records may lack error_code."
    );
    describe_gauge!(
        names::AUDIT_QUEUE_RECORDS,
        "Audit records waiting for the writer thread (at most audit.buffer)."
    );
    Ok(handle)
}

pub struct UpstreamMetrics {
    /// The upstream's stable id (`mcp::session::upstream_id`).
    id: u64,
    /// Counted by `series::UPSTREAM_RESULTS`, with its latency histogram.
    series: Arc<series::Keyed>,
    /// Indexed by `http::pool::Discard`.
    discards: [Counter; 3],
}

impl UpstreamMetrics {
    fn new(id: u64, name: &str, series: &series::WorkerSeries) -> Self {
        let n = name.to_string();
        UpstreamMetrics {
            id,
            series: series.upstream(name),
            discards: crate::http::pool::Discard::ALL.map(|d| {
                metrics::counter!(names::UPSTREAM_POOL_DISCARDS_TOTAL, "upstream" => n.clone(), "reason" => d.as_str())
            }),
        }
    }
}

/// The label of the tools config does not name, and of those past `observe.max_tool_series`.
pub const OTHER_TOOL: &str = "other";

/// A worker's tool handles for one config generation, per endpoint: `other`, and by tool name
/// (`None`: counted as `other`; remembered so a name is judged once). At most
/// `2 * max_tool_series` names per endpoint are remembered: a client calling ever new names
/// costs a glob match each, never memory.
#[derive(Default)]
struct ToolCache {
    generation: u64,
    servers: Vec<ServerTools>,
}

/// One endpoint's `other` handles and its tools' by name.
type ServerTools = (
    Option<Arc<series::Keyed>>,
    HashMap<Box<str>, Option<Arc<series::Keyed>>>,
);

/// The (endpoint, tool) labels the process has made, shared by the workers: taken only when a
/// worker meets a named tool for the first time, so `observe.max_tool_series` holds for the
/// process, not per worker.
static TOOL_SERIES: std::sync::Mutex<Vec<(Box<str>, Box<str>)>> = std::sync::Mutex::new(Vec::new());

fn admit_tool_series(server: &str, tool: &str, cap: usize) -> bool {
    let mut l = TOOL_SERIES.lock().unwrap_or_else(|e| e.into_inner());
    if l.iter().any(|(s, t)| &**s == server && &**t == tool) {
        return true;
    }
    if l.len() >= cap {
        return false;
    }
    l.push((server.into(), tool.into()));
    true
}

/// One `tools/call`, for `WorkerMetrics::tool_call`.
pub struct ToolCall<'a> {
    /// The config generation, and its endpoints: their count, this one's index and path.
    pub generation: u64,
    pub servers: usize,
    pub server: usize,
    pub path: &'a str,
    pub tool: &'a str,
    /// Whether config names any tool (`Config::names_tools`); `named` judges one.
    pub names_tools: bool,
    pub max_series: usize,
    pub outcome: Outcome,
    pub seconds: f64,
}

/// Handles one worker records into, resolved once when the worker starts.
pub struct WorkerMetrics {
    /// The request path's counters and latency histograms, which this worker alone writes
    /// (merged at scrape time, see `series`).
    series: Arc<series::WorkerSeries>,
    /// By position in the running config; each knows its upstream's id, so a request begun on
    /// a config a reload replaced still records under its own upstream (`install_upstreams`).
    upstreams: RefCell<Vec<UpstreamMetrics>>,
    rejections: Vec<Counter>,
    limits: Vec<Option<Counter>>,
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    /// By side: client, upstream.
    pub fixed_file_misses: [Counter; 2],
    /// Indexed by `tls::HandshakeFailure` (timeout, error).
    pub tls_handshake_failures: [Counter; 2],
    pub sessions_opened: Counter,
    pub sessions_closed: Counter,
    /// By `policy::AuthFailure` (position in `AuthFailure::ALL`).
    auth_failures: Vec<Counter>,
    /// `tollgate_auth_token_cache_total{result}`: hit, miss.
    token_cache: [Counter; 2],
    /// By `proxy::introspect::Outcome` (position in `Outcome::ALL`).
    introspections: [Counter; crate::proxy::introspect::Outcome::ALL.len()],
    /// Per-tool series, resolved when a tool is first called (`tool_call`).
    tools: RefCell<ToolCache>,
}

impl WorkerMetrics {
    /// `upstreams`: (stable id, name) of each upstream, in config order.
    pub fn new(upstreams: &[(u64, &str)], series: Arc<series::WorkerSeries>) -> Self {
        let upstreams = RefCell::new(
            upstreams
                .iter()
                .map(|(id, name)| UpstreamMetrics::new(*id, name, &series))
                .collect(),
        );
        // Limit kinds get no `rejections_total` series: they are counted only as limits.
        let rejections = Kind::ALL
            .iter()
            .map(|k| {
                if k.is_limit() {
                    Counter::noop()
                } else {
                    metrics::counter!(names::REJECTIONS_TOTAL, "reason" => k.as_str())
                }
            })
            .collect();
        let limits = Kind::ALL
            .iter()
            .map(|k| {
                k.is_limit().then(
                    || metrics::counter!(names::LIMIT_REJECTIONS_TOTAL, "limit" => k.as_str()),
                )
            })
            .collect();
        WorkerMetrics {
            series,
            upstreams,
            rejections,
            limits,
            connections_open: metrics::gauge!(names::CONNECTIONS_OPEN),
            connections_accepted: metrics::counter!(names::CONNECTIONS_ACCEPTED_TOTAL),
            fixed_file_misses: ["client", "upstream"]
                .map(|s| metrics::counter!(names::FIXED_FILE_MISSES_TOTAL, "side" => s)),
            tls_handshake_failures: ["timeout", "error"]
                .map(|r| metrics::counter!(names::TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => r)),
            sessions_opened: metrics::counter!(names::SESSIONS_OPENED_TOTAL),
            sessions_closed: metrics::counter!(names::SESSIONS_CLOSED_TOTAL),
            auth_failures: crate::policy::AuthFailure::ALL
                .iter()
                .map(|f| metrics::counter!(names::AUTH_FAILURES_TOTAL, "reason" => f.reason()))
                .collect(),
            token_cache: ["hit", "miss"]
                .map(|r| metrics::counter!(names::AUTH_TOKEN_CACHE_TOTAL, "result" => r)),
            introspections: crate::proxy::introspect::Outcome::ALL.map(
                |o| metrics::counter!(names::AUTH_INTROSPECTIONS_TOTAL, "result" => o.as_str()),
            ),
            tools: RefCell::default(),
        }
    }

    /// One `tools/call`: counted, and its duration recorded, under its tool's label. A name is
    /// hashed only when config names tools; handles are made once per worker, generation and
    /// name (nothing allocated after that).
    pub fn tool_call(&self, c: ToolCall<'_>, named: impl FnOnce(&str) -> bool) {
        let mut cache = self.tools.borrow_mut();
        if cache.generation != c.generation || cache.servers.len() != c.servers {
            *cache = ToolCache {
                generation: c.generation,
                servers: (0..c.servers).map(|_| Default::default()).collect(),
            };
        }
        let Some((other, by_name)) = cache.servers.get_mut(c.server) else {
            return;
        };
        let own = if c.names_tools {
            match by_name.get(c.tool) {
                Some(h) => h.clone(),
                None => {
                    let h = (named(c.tool) && admit_tool_series(c.path, c.tool, c.max_series))
                        .then(|| self.series.tool(c.path, c.tool));
                    if by_name.len() < c.max_series.saturating_mul(2) {
                        by_name.insert(c.tool.into(), h.clone());
                    }
                    h
                }
            }
        } else {
            None
        };
        let h = match own {
            Some(h) => h,
            None => other
                .get_or_insert_with(|| self.series.tool(c.path, OTHER_TOOL))
                .clone(),
        };
        h.counts[c.outcome as usize].incr();
        h.hist.record(c.seconds);
    }

    #[inline]
    pub fn request(&self, method: Method, outcome: Outcome, seconds: f64) {
        let r = &self.series.request[method.index()];
        r.counts[outcome as usize].incr();
        r.hist.record(seconds);
    }

    /// One authorization decision.
    #[inline]
    pub fn authz(&self, allowed: bool, reason: crate::policy::rules::Reason) {
        self.series.authz[usize::from(allowed)][reason.index()].incr();
    }

    /// Token cache lookups since the last call (`policy::authn::Authn::unpublished`).
    pub fn token_cache(&self, (hits, misses): (u64, u64)) {
        self.token_cache[0].increment(hits);
        self.token_cache[1].increment(misses);
    }

    /// One call to an introspection endpoint, by what it came to.
    pub fn introspection(&self, o: crate::proxy::introspect::Outcome) {
        let i = crate::proxy::introspect::Outcome::ALL
            .iter()
            .position(|x| *x == o)
            .unwrap_or(0);
        self.introspections[i].increment(1);
    }

    /// A request refused 401, by why.
    pub fn auth_failure(&self, f: crate::policy::AuthFailure) {
        let i = crate::policy::AuthFailure::ALL
            .iter()
            .position(|x| *x == f)
            .unwrap_or(0);
        self.auth_failures[i].increment(1);
    }

    /// A refusal by the gateway, counted exactly once (whether or not a method is known): a
    /// configured limit in `tollgate_limit_rejections_total{limit}`, any other reason in
    /// `tollgate_rejections_total{reason}`. The two families never overlap.
    #[inline]
    pub fn rejected(&self, kind: Kind) {
        let i = kind.index();
        match &self.limits[i] {
            Some(c) => c.increment(1),
            None => self.rejections[i].increment(1),
        }
    }

    /// Handles for a newly installed config's upstreams (`(id, name)` in its order): kept for
    /// upstreams that stay, made for new ones.
    pub fn install_upstreams(&self, upstreams: &[(u64, &str)]) {
        let mut old = std::mem::take(&mut *self.upstreams.borrow_mut());
        let new = upstreams
            .iter()
            .map(|(id, name)| match old.iter().position(|m| m.id == *id) {
                Some(i) => old.swap_remove(i),
                None => UpstreamMetrics::new(*id, name, &self.series),
            })
            .collect();
        *self.upstreams.borrow_mut() = new;
    }

    /// Runs `f` with the handles of upstream `id` (at `index` unless a reload moved it).
    #[inline]
    fn with_upstream(&self, index: usize, id: u64, f: impl FnOnce(&UpstreamMetrics)) {
        let list = self.upstreams.borrow();
        match list.get(index) {
            Some(m) if m.id == id => f(m),
            _ => {
                if let Some(m) = list.iter().find(|m| m.id == id) {
                    f(m)
                }
            }
        }
    }

    /// A pooled upstream connection dropped instead of reused.
    pub fn pool_discard(&self, index: usize, id: u64, why: crate::http::pool::Discard) {
        self.with_upstream(index, id, |u| u.discards[why as usize].increment(1));
    }

    /// An upstream exchange: `Ok(status)` or the error kind.
    #[inline]
    pub fn upstream(&self, index: usize, id: u64, result: Result<u16, Kind>, seconds: f64) {
        self.with_upstream(index, id, |u| Self::record_upstream(u, result, seconds));
    }

    fn record_upstream(u: &UpstreamMetrics, result: Result<u16, Kind>, seconds: f64) {
        let slot = match result {
            // Refused by the open circuit: nothing was sent, so no exchange to count (the
            // refusal is in tollgate_rejections_total{reason="upstream_circuit_open"}).
            Err(Kind::UpstreamCircuitOpen) => return,
            Ok(s) if (200..300).contains(&s) => 0,
            Ok(_) => 1,
            Err(Kind::UpstreamTimeout) => 3,
            Err(Kind::UpstreamProtocol) => 4,
            Err(_) => 2,
        };
        u.series.counts[slot].incr();
        if result.is_ok() {
            u.series.hist.record(seconds);
        }
    }
}
