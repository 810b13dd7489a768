//! `tracing`: W3C trace context and OTLP/HTTP span export, validated (`file::telemetry` reads
//! the keys). Read by `observe::trace` (per request) and `observe::otlp` (the exporter thread).

use std::time::Duration;

use super::{HeaderSource, HttpTarget};

pub mod defaults {
    use std::time::Duration;
    pub const SAMPLE_RATIO: f64 = 1.0;
    /// Spans per POST: a few hundred keep a request body well under a megabyte.
    pub const BATCH: usize = 512;
    pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
    pub const TIMEOUT: Duration = Duration::from_secs(10);
    /// Spans waiting for the exporter; past this, new spans are dropped (and counted).
    pub const QUEUE: usize = 4096;
    pub const SERVICE_NAME: &str = "tollgate";
    pub const MAX_BATCH: u64 = 65_536;
    pub const MAX_QUEUE: u64 = 1 << 20;
}

#[derive(Clone, Debug)]
pub struct Tracing {
    /// `tracing.enabled` (default false): the gateway takes part in the caller's trace (or starts
    /// one), opens its own span per request and propagates it upstream. Off: trace headers and
    /// `_meta` pass through untouched and no ids are recorded.
    pub enabled: bool,
    /// `tracing.sample_ratio` (0 to 1, default 1): the share of traces the gateway starts that
    /// are sampled. A caller's trace keeps the caller's sampled flag.
    pub sample_ratio: f64,
    /// `tracing.otlp` (default none): where sampled spans are exported.
    pub otlp: Option<Otlp>,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            enabled: false,
            sample_ratio: defaults::SAMPLE_RATIO,
            otlp: None,
        }
    }
}

/// `tracing.otlp`. `Debug` by hand: header values are credentials.
#[derive(Clone)]
pub struct Otlp {
    /// `endpoint`: `http://host[:port]/v1/traces` (required).
    pub endpoint: HttpTarget,
    /// `batch`: most spans per POST.
    pub batch: usize,
    /// `flush_interval`: a partial batch is sent after waiting this long.
    pub flush_interval: Duration,
    /// `timeout`: connect, write and answer of one POST.
    pub timeout: Duration,
    /// `queue`: spans waiting for the exporter before new ones are dropped.
    pub queue: usize,
    /// `service_name`: the resource's `service.name`.
    pub service_name: String,
    /// `headers`: sent with every POST (e.g. an API key), name lower-case.
    pub headers: Vec<(String, String)>,
    pub header_sources: Vec<HeaderSource>,
}

impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otlp")
            .field("endpoint", &self.endpoint)
            .field("batch", &self.batch)
            .field("flush_interval", &self.flush_interval)
            .field("timeout", &self.timeout)
            .field("queue", &self.queue)
            .field("service_name", &self.service_name)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}
