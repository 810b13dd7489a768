//! The series every request records into, kept per worker and merged at scrape time: latency
//! histograms and the counters of the request path (requests, upstream exchanges, tool calls,
//! authorization decisions). Each worker owns its `WorkerSeries` and is the only writer, so
//! recording is plain loads and stores on cache lines no other core writes: no atomic
//! read-modify-write (the `metrics` handles take two per increment), no allocation, no sample
//! buffer. The admin thread reads every worker's values (relaxed loads), adds them up and
//! renders Prometheus text, HELP and TYPE included; these families are not registered with the
//! exporter, so each is rendered once.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::names::{self, LATENCY_BUCKETS};
use super::Outcome;
use crate::mcp::Method;
use crate::policy::rules::Reason;

const N: usize = LATENCY_BUCKETS.len() + 1; // + the +Inf bucket

/// Upstream result labels for `tollgate_upstream_requests_total`, in `Keyed::counts` order.
pub const UPSTREAM_RESULTS: [&str; 5] = ["ok", "status", "unavailable", "timeout", "protocol"];

/// Counters per key: by `Outcome` (requests, tool calls) or by `UPSTREAM_RESULTS`.
const K: usize = 5;
const _: () = assert!(Outcome::ALL.len() == K && UPSTREAM_RESULTS.len() == K);

fn bump(a: &AtomicU64, by: u64) {
    // Single writer: a plain load and store is enough and avoids a locked instruction.
    a.store(a.load(Relaxed).wrapping_add(by), Relaxed);
}

/// One counter, written by one worker only.
#[derive(Default)]
pub struct Count(AtomicU64);

impl Count {
    /// Adds one. Must only be called by the owning worker.
    #[inline]
    pub fn incr(&self) {
        bump(&self.0, 1);
    }

    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

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

/// A key's counters (by outcome or result) and its latency histogram.
#[derive(Default)]
pub struct Keyed {
    pub counts: [Count; K],
    pub hist: Hist,
}

/// One worker's series.
pub struct WorkerSeries {
    /// `tollgate_requests_total{method,outcome}` and `tollgate_request_duration_seconds{method}`,
    /// indexed like `Method::ALL`, counted by `Outcome`.
    pub request: Vec<Keyed>,
    /// `tollgate_authz_decisions_total{decision,reason}`: `[allowed][Reason::index]`.
    pub authz: [Vec<Count>; 2],
    /// `tollgate_upstream_requests_total{upstream,result}` and
    /// `tollgate_upstream_duration_seconds{upstream}`, by upstream name. The worker holds the
    /// `Arc`s it records into (resolved when a config is installed), so the lock is taken only
    /// then and by the scrape; a reload adds names, and a removed upstream keeps its series.
    upstream: Mutex<Vec<(String, Arc<Keyed>)>>,
    /// `tollgate_tool_calls_total{server,tool,outcome}` and
    /// `tollgate_tool_duration_seconds{server,tool}`, by their rendered labels (as `upstream`).
    tools: Mutex<Vec<(String, Arc<Keyed>)>>,
}

impl Default for WorkerSeries {
    fn default() -> Self {
        WorkerSeries {
            request: Method::ALL.iter().map(|_| Keyed::default()).collect(),
            authz: std::array::from_fn(|_| Reason::ALL.iter().map(|_| Count::default()).collect()),
            upstream: Mutex::new(Vec::new()),
            tools: Mutex::new(Vec::new()),
        }
    }
}

impl WorkerSeries {
    /// The series of tool `tool` on endpoint `server` (made on first use).
    pub fn tool(&self, server: &str, tool: &str) -> Arc<Keyed> {
        let labels = format!(
            "server=\"{}\",tool=\"{}\"",
            escape_label(server),
            escape_label(tool)
        );
        let mut list = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, h)) = list.iter().find(|(n, _)| *n == labels) {
            return h.clone();
        }
        let h = Arc::new(Keyed::default());
        list.push((labels, h.clone()));
        h
    }

    /// The series of upstream `name` (made on first use).
    pub fn upstream(&self, name: &str) -> Arc<Keyed> {
        let mut list = self.upstream.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, h)) = list.iter().find(|(n, _)| n == name) {
            return h.clone();
        }
        let h = Arc::new(Keyed::default());
        list.push((name.to_string(), h.clone()));
        h
    }
}

/// Every worker's series, for the scrape.
#[derive(Clone)]
pub struct SeriesSet {
    pub workers: Vec<Arc<WorkerSeries>>,
}

impl SeriesSet {
    pub fn new(workers: usize) -> Self {
        SeriesSet {
            workers: (0..workers).map(|_| Arc::default()).collect(),
        }
    }

    /// Appends the families in Prometheus text format: every counter series the workers know
    /// (at zero too, as the exporter renders its own), histogram series with an observation.
    pub fn render(&self, out: &mut String) {
        let outcomes = Outcome::ALL.map(Outcome::as_str);
        let requests: Vec<(String, Merged)> = Method::ALL
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let ks: Vec<&Keyed> = self.workers.iter().map(|w| &w.request[i]).collect();
                (format!("method=\"{}\"", m.as_str()), sum_of(&ks))
            })
            .collect();
        counters(
            out,
            (
                names::REQUESTS_TOTAL,
                "MCP requests by JSON-RPC method and outcome.",
            ),
            &requests,
            ("outcome", &outcomes),
        );
        histograms(
            out,
            names::REQUEST_DURATION_SECONDS,
            "Time from a complete request head to the end of the response, by method.",
            &requests,
        );
        let upstreams = merged(
            &self.workers,
            |w| &w.upstream,
            |n| format!("upstream=\"{}\"", escape_label(n)),
        );
        counters(
            out,
            (
                names::UPSTREAM_REQUESTS_TOTAL,
                "Requests sent to each upstream, by result.",
            ),
            &upstreams,
            ("result", &UPSTREAM_RESULTS),
        );
        histograms(
            out,
            names::UPSTREAM_DURATION_SECONDS,
            "Time from sending to an upstream to its response head.",
            &upstreams,
        );
        let tools = merged(&self.workers, |w| &w.tools, str::to_string);
        counters(
            out,
            (
                names::TOOL_CALLS_TOTAL,
                "tools/call requests by endpoint, tool (its name when config names it, else \
                 other) and outcome.",
            ),
            &tools,
            ("outcome", &outcomes),
        );
        histograms(
            out,
            names::TOOL_DURATION_SECONDS,
            "Time from a complete tools/call request head to the end of the response, by endpoint and tool.",
            &tools,
        );
        let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let authz: Vec<(String, Vec<u64>)> = ["deny", "allow"]
            .iter()
            .enumerate()
            .map(|(allowed, d)| {
                let counts = (0..reasons.len())
                    .map(|r| self.workers.iter().map(|w| w.authz[allowed][r].get()).sum())
                    .collect();
                (format!("decision=\"{d}\""), counts)
            })
            .collect();
        let _ = writeln!(
            out,
            "# HELP {n} Authorization decisions, one per decided item (tool call, prompt, \
             resource, method; each batch message on its own), by decision (allow, deny) and \
             reason.\n# TYPE {n} counter",
            n = names::AUTHZ_DECISIONS_TOTAL
        );
        for (labels, counts) in &authz {
            for (reason, n) in reasons.iter().zip(counts) {
                let _ = writeln!(
                    out,
                    "{}{{{labels},reason=\"{reason}\"}} {n}",
                    names::AUTHZ_DECISIONS_TOTAL
                );
            }
        }
    }
}

/// A key's values summed over the workers: counts, histogram buckets, histogram sum (ns).
type Merged = ([u64; K], [u64; N], u64);

/// A keyed family's series merged over the workers (keys in order of first appearance), each
/// key rendered as its labels by `labels`.
fn merged(
    workers: &[Arc<WorkerSeries>],
    list: impl Fn(&WorkerSeries) -> &Mutex<Vec<(String, Arc<Keyed>)>>,
    labels: impl Fn(&str) -> String,
) -> Vec<(String, Merged)> {
    let lists: Vec<Vec<(String, Arc<Keyed>)>> = workers
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
            let ks: Vec<&Keyed> = lists
                .iter()
                .flatten()
                .filter(|(n, _)| n == name)
                .map(|(_, h)| &**h)
                .collect();
            (labels(name), sum_of(&ks))
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

/// Several workers' series of one key, added up.
fn sum_of(ks: &[&Keyed]) -> Merged {
    let mut counts = [0u64; K];
    let mut buckets = [0u64; N];
    let mut sum = 0u64;
    for k in ks {
        for (c, v) in counts.iter_mut().zip(&k.counts) {
            *c += v.get();
        }
        for (c, b) in buckets.iter_mut().zip(&k.hist.buckets) {
            *c += b.load(Relaxed);
        }
        sum += k.hist.sum_nanos.load(Relaxed);
    }
    (counts, buckets, sum)
}

/// One counter family whose series are keyed (labels rendered, e.g. `method="x"`) and then
/// split by one more label (its name and values, in the order of `Merged`'s counts).
fn counters(
    out: &mut String,
    (name, help): (&str, &str),
    series: &[(String, Merged)],
    (label, values): (&str, &[&str; K]),
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, (counts, _, _)) in series {
        for (v, n) in values.iter().zip(counts) {
            let _ = writeln!(out, "{name}{{{labels},{label}=\"{v}\"}} {n}");
        }
    }
}

/// One histogram family; each series is (its labels rendered, e.g. `method="x"`, values).
/// Series without an observation are left out.
fn histograms(out: &mut String, name: &str, help: &str, series: &[(String, Merged)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, (_, buckets, sum)) in series {
        let total: u64 = buckets.iter().sum();
        if total == 0 {
            continue;
        }
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(buckets) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", *sum as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_workers_into_cumulative_buckets() {
        let set = SeriesSet::new(2);
        let call = Method::ToolsCall.index();
        set.workers[0].request[call].hist.record(0.0002);
        set.workers[1].request[call].hist.record(0.0002);
        set.workers[1].request[call].hist.record(3.0);
        set.workers[0].upstream("demo").hist.record(100.0);
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
            !out.contains("tollgate_request_duration_seconds_count{method=\"ping\""),
            "histogram series without observations are left out"
        );
        assert!(out.contains(
            "tollgate_upstream_duration_seconds_bucket{upstream=\"demo\",le=\"+Inf\"} 1\n"
        ));
        assert!(out.contains("# TYPE tollgate_upstream_duration_seconds histogram"));
    }

    #[test]
    fn counters_add_up_over_workers_and_render_at_zero_too() {
        let set = SeriesSet::new(2);
        let call = Method::ToolsCall.index();
        set.workers[0].request[call].counts[Outcome::Ok as usize].incr();
        set.workers[1].request[call].counts[Outcome::Ok as usize].incr();
        set.workers[1].request[call].counts[Outcome::Rejected as usize].incr();
        let demo = set.workers[1].upstream("demo");
        demo.counts[0].incr();
        demo.counts[3].incr();
        set.workers[0].upstream("demo").counts[0].incr();
        set.workers[0].tool("/mcp", "echo").counts[Outcome::Ok as usize].incr();
        set.workers[1].authz[1][Reason::ALL[0].index()].incr();
        let mut out = String::new();
        set.render(&mut out);
        for line in [
            "# TYPE tollgate_requests_total counter\n",
            "tollgate_requests_total{method=\"tools/call\",outcome=\"ok\"} 2\n",
            "tollgate_requests_total{method=\"tools/call\",outcome=\"rejected\"} 1\n",
            "tollgate_requests_total{method=\"ping\",outcome=\"cut\"} 0\n",
            "tollgate_upstream_requests_total{upstream=\"demo\",result=\"ok\"} 2\n",
            "tollgate_upstream_requests_total{upstream=\"demo\",result=\"timeout\"} 1\n",
            "tollgate_upstream_requests_total{upstream=\"demo\",result=\"status\"} 0\n",
            "tollgate_tool_calls_total{server=\"/mcp\",tool=\"echo\",outcome=\"ok\"} 1\n",
            "tollgate_tool_calls_total{server=\"/mcp\",tool=\"echo\",outcome=\"cut\"} 0\n",
            "# TYPE tollgate_authz_decisions_total counter\n",
        ] {
            assert!(out.contains(line), "{line} in:\n{out}");
        }
        let allowed = format!(
            "tollgate_authz_decisions_total{{decision=\"allow\",reason=\"{}\"}} 1\n",
            Reason::ALL[0].as_str()
        );
        assert!(out.contains(&allowed), "{allowed} in:\n{out}");
        // Each family once.
        assert_eq!(out.matches("# TYPE tollgate_requests_total ").count(), 1);
        assert_eq!(
            out.matches("\ntollgate_upstream_requests_total{").count(),
            5
        );
    }
}
