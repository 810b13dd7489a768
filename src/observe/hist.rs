//! Latency histograms recorded per worker and merged at scrape time.
//! Each worker owns its `WorkerHistograms` and is the only writer, so recording is a bucket
//! search and three relaxed load+store pairs on cache lines no other core writes: no atomic
//! read-modify-write, no allocation, no sample buffer. The admin thread reads every worker's
//! counters (relaxed loads), adds them up and renders Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::names::LATENCY_BUCKETS;

const N: usize = LATENCY_BUCKETS.len() + 1; // + the +Inf bucket

/// One histogram, written by one worker only.
pub struct Hist {
    buckets: [AtomicU64; N],
    sum_nanos: AtomicU64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

fn bump(a: &AtomicU64, by: u64) {
    // Single writer: a plain load and store is enough and avoids a locked instruction.
    a.store(a.load(Relaxed).wrapping_add(by), Relaxed);
}

impl Hist {
    /// Records one observation in seconds. Must only be called by the owning worker.
    #[inline]
    pub fn record(&self, seconds: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(N - 1);
        bump(&self.buckets[i], 1);
        bump(&self.sum_nanos, (seconds * 1e9) as u64);
    }
}

/// Per-worker histograms: one per label value of each family.
pub struct WorkerHistograms {
    /// `tollgate_request_duration_seconds{method}`, indexed like `Method::ALL`.
    pub request: Vec<Hist>,
    /// `tollgate_upstream_duration_seconds{upstream}`, by upstream name. The worker holds the
    /// `Arc`s it records into (resolved when a config is installed), so the lock is taken only
    /// then and by the scrape; a reload adds names, and a removed upstream keeps its series.
    upstream: Mutex<Vec<(String, Arc<Hist>)>>,
    /// `tollgate_tool_duration_seconds{server,tool}`, by their rendered labels (as `upstream`).
    tools: Mutex<Vec<(String, Arc<Hist>)>>,
}

impl WorkerHistograms {
    pub fn new(methods: usize) -> Self {
        WorkerHistograms {
            request: (0..methods).map(|_| Hist::default()).collect(),
            upstream: Mutex::new(Vec::new()),
            tools: Mutex::new(Vec::new()),
        }
    }

    /// The histogram of tool `tool` on endpoint `server` (made on first use).
    pub fn tool(&self, server: &str, tool: &str) -> Arc<Hist> {
        let labels = format!(
            "server=\"{}\",tool=\"{}\"",
            escape_label(server),
            escape_label(tool)
        );
        let mut list = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, h)) = list.iter().find(|(n, _)| *n == labels) {
            return h.clone();
        }
        let h = Arc::new(Hist::default());
        list.push((labels, h.clone()));
        h
    }

    /// The histogram of upstream `name` (made on first use).
    pub fn upstream(&self, name: &str) -> Arc<Hist> {
        let mut list = self.upstream.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, h)) = list.iter().find(|(n, _)| n == name) {
            return h.clone();
        }
        let h = Arc::new(Hist::default());
        list.push((name.to_string(), h.clone()));
        h
    }
}

/// Every worker's histograms, for the scrape.
#[derive(Clone)]
pub struct HistogramSet {
    pub workers: Vec<Arc<WorkerHistograms>>,
    pub methods: Vec<&'static str>,
}

impl HistogramSet {
    pub fn new(workers: usize, methods: Vec<&'static str>) -> Self {
        let per = |_| Arc::new(WorkerHistograms::new(methods.len()));
        HistogramSet {
            workers: (0..workers).map(per).collect(),
            methods,
        }
    }

    /// Appends the families in Prometheus text format (series with at least one observation).
    pub fn render(&self, out: &mut String) {
        let requests = self
            .methods
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let hs: Vec<&Hist> = self.workers.iter().map(|w| &w.request[i]).collect();
                (format!("method=\"{m}\""), sum_of(&hs))
            })
            .collect::<Vec<_>>();
        family(
            out,
            super::names::REQUEST_DURATION_SECONDS,
            "Time from a complete request head to the end of the response, by method.",
            &requests,
        );
        let upstreams = merged(
            &self.workers,
            |w| &w.upstream,
            |n| format!("upstream=\"{}\"", escape_label(n)),
        );
        family(
            out,
            super::names::UPSTREAM_DURATION_SECONDS,
            "Time from sending to an upstream to its response head.",
            &upstreams,
        );
        let tools = merged(&self.workers, |w| &w.tools, str::to_string);
        family(
            out,
            super::names::TOOL_DURATION_SECONDS,
            "Time from a complete tools/call request head to the end of the response, by endpoint and tool.",
            &tools,
        );
    }
}

/// A keyed family's series merged over the workers (keys in order of first appearance), each
/// key rendered as its labels by `labels`.
fn merged(
    workers: &[Arc<WorkerHistograms>],
    list: impl Fn(&WorkerHistograms) -> &Mutex<Vec<(String, Arc<Hist>)>>,
    labels: impl Fn(&str) -> String,
) -> Vec<(String, ([u64; N], u64))> {
    let lists: Vec<Vec<(String, Arc<Hist>)>> = workers
        .iter()
        .map(|w| list(w).lock().unwrap_or_else(|e| e.into_inner()).clone())
        .collect();
    let mut names: Vec<&str> = Vec::new();
    for (n, _) in lists.iter().flatten() {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    names
        .iter()
        .map(|name| {
            let hs: Vec<&Hist> = lists
                .iter()
                .flatten()
                .filter(|(n, _)| n == name)
                .map(|(_, h)| &**h)
                .collect();
            (labels(name), sum_of(&hs))
        })
        .collect()
}

/// A label value as Prometheus text writes it (`\`, `"` and newlines escaped).
fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Bucket counts and the sum (nanoseconds) of several workers' histograms of one series.
fn sum_of(hs: &[&Hist]) -> ([u64; N], u64) {
    let mut counts = [0u64; N];
    let mut sum = 0u64;
    for h in hs {
        for (c, b) in counts.iter_mut().zip(&h.buckets) {
            *c += b.load(Relaxed);
        }
        sum += h.sum_nanos.load(Relaxed);
    }
    (counts, sum)
}

/// One histogram family; each series is (its labels rendered, e.g. `method="x"`, counts).
fn family(out: &mut String, name: &str, help: &str, series: &[(String, ([u64; N], u64))]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    {
        for (labels, (counts, sum)) in series {
            let (counts, sum) = (*counts, *sum);
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(&counts) {
                cumulative += count;
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum as f64 / 1e9);
            let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_workers_into_cumulative_buckets() {
        let set = HistogramSet::new(2, vec!["tools/call", "ping"]);
        set.workers[0].request[0].record(0.0002);
        set.workers[1].request[0].record(0.0002);
        set.workers[1].request[0].record(3.0);
        set.workers[0].upstream("demo").record(100.0);
        set.workers[1].upstream("other");
        let mut out = String::new();
        set.render(&mut out);
        assert!(out.contains(
            "tollgate_request_duration_seconds_bucket{method=\"tools/call\",le=\"0.0001\"} 0\n"
        ));
        assert!(out.contains(
            "tollgate_request_duration_seconds_bucket{method=\"tools/call\",le=\"0.00025\"} 2\n"
        ));
        assert!(out.contains(
            "tollgate_request_duration_seconds_bucket{method=\"tools/call\",le=\"2.5\"} 2\n"
        ));
        assert!(out.contains(
            "tollgate_request_duration_seconds_bucket{method=\"tools/call\",le=\"5\"} 3\n"
        ));
        assert!(out.contains("tollgate_request_duration_seconds_count{method=\"tools/call\"} 3\n"));
        assert!(
            out.contains("tollgate_request_duration_seconds_sum{method=\"tools/call\"} 3.0004\n")
        );
        assert!(
            !out.contains("method=\"ping\""),
            "series without observations are left out"
        );
        assert!(out.contains(
            "tollgate_upstream_duration_seconds_bucket{upstream=\"demo\",le=\"+Inf\"} 1\n"
        ));
        assert!(out.contains("# TYPE tollgate_upstream_duration_seconds histogram"));
    }
}
