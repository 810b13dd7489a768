//! Metrics: names in one catalog (`names`), handles resolved once per worker (`WorkerMetrics`),
//! rendered by the admin listener (`admin`). Recording never allocates or looks up by name.

pub mod admin;
pub mod hist;
pub mod names;

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
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Rejected,
        Outcome::UpstreamError,
        Outcome::UpstreamStatus,
    ];
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamStatus => "upstream_status",
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
        names::REQUESTS_TOTAL,
        "MCP requests by JSON-RPC method and outcome."
    );
    describe_counter!(
        names::UPSTREAM_REQUESTS_TOTAL,
        "Requests sent to each upstream, by result."
    );
    describe_counter!(
        names::UPSTREAM_POOL_DISCARDS_TOTAL,
        "Idle upstream connections dropped instead of reused: closed by the upstream, \
         unsolicited bytes from it (a stray response), or expired."
    );
    describe_gauge!(names::CONNECTIONS_OPEN, "Client connections open now.");
    describe_counter!(
        names::CONNECTIONS_ACCEPTED_TOTAL,
        "Client connections accepted."
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
    describe_gauge!(names::WORKERS, "Worker threads by I/O driver.");
    describe_gauge!(
        names::BUILD_INFO,
        "Always 1; the version label is the running tollgate version."
    );
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// Upstream result labels for `tollgate_upstream_requests_total`.
const UPSTREAM_RESULTS: [&str; 5] = ["ok", "status", "unavailable", "timeout", "protocol"];

pub struct UpstreamMetrics {
    results: [Counter; 5],
    /// Indexed by `http::pool::Discard`.
    discards: [Counter; 3],
}

/// Handles one worker records into, resolved once when the worker starts.
pub struct WorkerMetrics {
    requests: Vec<[Counter; 4]>,
    /// Latency histograms this worker alone writes (merged at scrape time, see `hist`).
    hists: Arc<hist::WorkerHistograms>,
    upstreams: Vec<UpstreamMetrics>,
    rejections: Vec<Counter>,
    limits: Vec<Option<Counter>>,
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    /// Indexed by `tls::HandshakeFailure` (timeout, error).
    pub tls_handshake_failures: [Counter; 2],
    pub sessions_opened: Counter,
    pub sessions_closed: Counter,
}

impl WorkerMetrics {
    pub fn new(upstream_names: &[String], hists: Arc<hist::WorkerHistograms>) -> Self {
        let requests = Method::ALL
            .iter()
            .map(|m| {
                Outcome::ALL.map(|o| metrics::counter!(names::REQUESTS_TOTAL, "method" => m.as_str(), "outcome" => o.as_str()))
            })
            .collect();
        let upstreams = upstream_names
            .iter()
            .map(|u| UpstreamMetrics {
                results: UPSTREAM_RESULTS
                    .map(|r| metrics::counter!(names::UPSTREAM_REQUESTS_TOTAL, "upstream" => u.clone(), "result" => r)),
                discards: crate::http::pool::Discard::ALL.map(|d| {
                    metrics::counter!(names::UPSTREAM_POOL_DISCARDS_TOTAL, "upstream" => u.clone(), "reason" => d.as_str())
                }),
            })
            .collect();
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
            requests,
            hists,
            upstreams,
            rejections,
            limits,
            connections_open: metrics::gauge!(names::CONNECTIONS_OPEN),
            connections_accepted: metrics::counter!(names::CONNECTIONS_ACCEPTED_TOTAL),
            tls_handshake_failures: ["timeout", "error"]
                .map(|r| metrics::counter!(names::TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => r)),
            sessions_opened: metrics::counter!(names::SESSIONS_OPENED_TOTAL),
            sessions_closed: metrics::counter!(names::SESSIONS_CLOSED_TOTAL),
        }
    }

    #[inline]
    pub fn request(&self, method: Method, outcome: Outcome, seconds: f64) {
        let i = method.index();
        self.requests[i][outcome as usize].increment(1);
        self.hists.request[i].record(seconds);
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

    /// A pooled upstream connection dropped instead of reused.
    pub fn pool_discard(&self, upstream: usize, why: crate::http::pool::Discard) {
        if let Some(u) = self.upstreams.get(upstream) {
            u.discards[why as usize].increment(1);
        }
    }

    /// An upstream exchange: `Ok(status)` or the error kind.
    #[inline]
    pub fn upstream(&self, upstream: usize, result: Result<u16, Kind>, seconds: f64) {
        let Some(u) = self.upstreams.get(upstream) else {
            return;
        };
        let slot = match result {
            Ok(s) if (200..300).contains(&s) => 0,
            Ok(_) => 1,
            Err(Kind::UpstreamTimeout) => 3,
            Err(Kind::UpstreamProtocol) => 4,
            Err(_) => 2,
        };
        u.results[slot].increment(1);
        if result.is_ok() {
            self.hists.upstream[upstream].record(seconds);
        }
    }
}
