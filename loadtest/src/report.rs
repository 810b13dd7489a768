//! Figures of one measured phase: what the table prints and what the final JSON line carries.

use serde::Serialize;

use crate::gen::{Errors, PhaseStats};
use crate::procstat::Snap;
use crate::scenario::Pacing;

/// ns → µs with one decimal.
fn lag_us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub target_rate: Option<f64>,
    pub completed: u64,
    pub errors_total: u64,
    pub errors: Errors,
    pub throttled: u64,
    pub progress_msgs: u64,
    pub wall_s: f64,
    pub rps: f64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// From the actual write (differs from the above only in the open loop).
    pub service_p50_us: u64,
    pub service_p99_us: u64,
    pub service_p999_us: u64,
    /// Open loop: (actual write − intended send time), every send: the pacer's wake-up lateness plus any wait
    /// for a free connection. Recorded in ns, reported in µs (0.1 µs).
    pub send_lag_p50_us: f64,
    pub send_lag_p99_us: f64,
    pub send_lag_p999_us: f64,
    pub send_lag_max_us: f64,
    /// Open loop: the send lag split. `pacer_lag_*`: after a connection had the slot (the pacer's wake-up
    /// lateness); `late_slots`: sends whose slot was already due when a connection took it (every
    /// connection busy with the target, or the generator off its CPU), `conn_wait_*` how late (over those).
    pub pacer_lag_p50_us: f64,
    pub pacer_lag_p99_us: f64,
    pub pacer_lag_max_us: f64,
    pub late_slots: u64,
    pub conn_wait_p50_us: f64,
    pub conn_wait_p99_us: f64,
    pub conn_wait_max_us: f64,
    /// Open loop: "precise" (timerfd through io_uring) or "coarse" (monoio's 1 ms timer);
    /// "coarse (fallback)" when precise was asked for and could not be had.
    pub pacing: Option<String>,
    /// CPU time (utime+stime) of the process under test during the phase, per completed request.
    pub cpu_us_per_req: Option<f64>,
    pub target_cpu_ms: Option<f64>,
    pub rss_kib: Option<u64>,
    /// VmHWM: peak RSS over the target's whole lifetime.
    pub peak_rss_kib: Option<u64>,
    pub mib_in_per_s: f64,
    pub last_error: Option<String>,
    /// Where CPU time went during the phase (scheduler evidence for the send lag).
    pub sched: SchedFigures,
    /// Set when the generator itself was short of CPU (it waited for one more than 15% of an open-loop
    /// phase): the from-intended latency then measures the harness's CPU as much as the target.
    pub harness_warning: Option<String>,
}

/// Scheduler figures of one phase, in ms. `gen_*`: the generator threads; `upstream_*`, `target_*`: every
/// thread of those processes; `cpu_busy_ms`/`cpu_softirq_ms`: per CPU from /proc/stat (10 ms ticks);
/// `others_ms`: busy time on each CPU not accounted for by the pinned processes (other tenants of the
/// machine, kernel threads) — compare fills it when pinning is on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SchedFigures {
    pub gen_run_ms: f64,
    pub gen_wait_ms: f64,
    pub gen_preempted: u64,
    pub upstream_run_ms: Option<f64>,
    pub upstream_wait_ms: Option<f64>,
    pub target_run_ms: Option<f64>,
    pub target_wait_ms: Option<f64>,
    pub cpu_busy_ms: Vec<f64>,
    pub cpu_softirq_ms: Vec<f64>,
    pub others_ms: Vec<f64>,
}

impl Summary {
    pub fn new(
        mode: &'static str,
        target_rate: Option<f64>,
        pacing: Pacing,
        s: &PhaseStats,
        before: Option<Snap>,
        after: Option<Snap>,
    ) -> Summary {
        let h = &s.hist;
        let wall = s.wall.as_secs_f64().max(1e-9);
        let cpu = match (before, after) {
            (Some(b), Some(a)) => Some(crate::procstat::cpu_us_between(&b, &a)),
            _ => None,
        };
        // Throttled replies are answered requests: they are counted in `completed`.
        let done = s.completed;
        Summary {
            mode,
            target_rate,
            completed: s.completed,
            errors_total: s.errors.total(),
            errors: s.errors.clone(),
            throttled: s.throttled,
            progress_msgs: s.progress_msgs,
            wall_s: wall,
            rps: s.completed as f64 / wall,
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            service_p50_us: s.service.value_at_quantile(0.50),
            service_p99_us: s.service.value_at_quantile(0.99),
            service_p999_us: s.service.value_at_quantile(0.999),
            send_lag_p50_us: lag_us(s.send_lag.value_at_quantile(0.50)),
            send_lag_p99_us: lag_us(s.send_lag.value_at_quantile(0.99)),
            send_lag_p999_us: lag_us(s.send_lag.value_at_quantile(0.999)),
            send_lag_max_us: lag_us(s.send_lag.max()),
            pacer_lag_p50_us: lag_us(s.pacer_lag.value_at_quantile(0.50)),
            pacer_lag_p99_us: lag_us(s.pacer_lag.value_at_quantile(0.99)),
            pacer_lag_max_us: lag_us(s.pacer_lag.max()),
            late_slots: s.late_slots,
            conn_wait_p50_us: lag_us(s.conn_wait.value_at_quantile(0.50)),
            conn_wait_p99_us: lag_us(s.conn_wait.value_at_quantile(0.99)),
            conn_wait_max_us: lag_us(s.conn_wait.max()),
            pacing: (mode == "open").then(|| match (pacing, s.coarse_fallback) {
                (Pacing::Precise, false) => "precise".to_string(),
                (Pacing::Precise, true) => "coarse (fallback)".to_string(),
                (Pacing::Coarse, _) => "coarse".to_string(),
            }),
            cpu_us_per_req: cpu.filter(|_| done > 0).map(|c| c / done as f64),
            target_cpu_ms: cpu.map(|c| c / 1000.0),
            rss_kib: after.map(|a| a.rss_kib),
            peak_rss_kib: after.map(|a| a.hwm_kib),
            mib_in_per_s: s.bytes_in as f64 / wall / (1024.0 * 1024.0),
            last_error: s.last_error.clone(),
            harness_warning: {
                let waited = s.gen_sched.wait_ns as f64 / 1e9;
                (mode == "open" && waited > 0.15 * wall).then(|| {
                    format!(
                        "the generator waited {:.0}% of the phase for its CPU (shared with the upstream when pinned on 2 CPUs): these latencies include the harness's own CPU contention",
                        100.0 * waited / wall
                    )
                })
            },
            sched: SchedFigures {
                gen_run_ms: s.gen_sched.run_ns as f64 / 1e6,
                gen_wait_ms: s.gen_sched.wait_ns as f64 / 1e6,
                gen_preempted: s.gen_sched.involuntary,
                ..SchedFigures::default()
            },
        }
    }
}

pub fn table_header() -> String {
    format!(
        "{:<10} {:<6} {:>9} {:>6} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9}",
        "setup", "mode", "completed", "errors", "rps", "p50_us", "p90_us", "p99_us", "p99.9_us", "max_us", "svc_p99", "lag_p50", "lag_p99", "lag_max", "cpu_us/req", "rss_kib", "hwm_kib"
    )
}

pub fn table_row(name: &str, s: &Summary) -> String {
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    format!(
        "{:<10} {:<6} {:>9} {:>6} {:>10.0} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8.1} {:>8.1} {:>8.0} {:>10} {:>9} {:>9}",
        name,
        s.mode,
        s.completed,
        s.errors_total,
        s.rps,
        s.p50_us,
        s.p90_us,
        s.p99_us,
        s.p999_us,
        s.max_us,
        s.service_p99_us,
        s.send_lag_p50_us,
        s.send_lag_p99_us,
        s.send_lag_max_us,
        s.cpu_us_per_req.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into()),
        opt(s.rss_kib),
        opt(s.peak_rss_kib),
    )
}

pub fn error_line(name: &str, s: &Summary) -> Option<String> {
    if s.errors_total == 0 {
        return None;
    }
    let e = &s.errors;
    Some(format!(
        "  {name}: errors connect={} timeout={} io={} http_status={} jsonrpc={} tool_error={} mismatch={}; last: {}",
        e.connect,
        e.timeout,
        e.io,
        e.http_status,
        e.jsonrpc,
        e.tool_error,
        e.mismatch,
        s.last_error.as_deref().unwrap_or("-")
    ))
}

/// Open loop: the send lag split into the pacer's lateness and waiting for a free connection.
pub fn lag_line(s: &Summary) -> Option<String> {
    s.pacing.as_ref()?;
    let warn = s
        .harness_warning
        .as_ref()
        .map(|w| format!("\n           WARNING: {w}"))
        .unwrap_or_default();
    Some(format!(
        "           send lag µs: p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.0}; pacer p50 {:.1} p99 {:.1} max {:.0}; slots taken late {} ({:.2}%), by p50 {:.0} p99 {:.0} max {:.0}{warn}",
        s.send_lag_p50_us,
        s.send_lag_p99_us,
        s.send_lag_p999_us,
        s.send_lag_max_us,
        s.pacer_lag_p50_us,
        s.pacer_lag_p99_us,
        s.pacer_lag_max_us,
        s.late_slots,
        100.0 * s.late_slots as f64 / (s.completed + s.errors_total).max(1) as f64,
        s.conn_wait_p50_us,
        s.conn_wait_p99_us,
        s.conn_wait_max_us,
    ))
}

/// One line of scheduler evidence per phase.
pub fn sched_line(f: &SchedFigures) -> String {
    let o = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
    let v = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    format!(
        "           sched ms: generator ran {:.0}, waited {:.0} for a CPU ({} preemptions); upstream ran {}, waited {}; target ran {}, waited {}; per CPU busy {} softirq {} others {}",
        f.gen_run_ms,
        f.gen_wait_ms,
        f.gen_preempted,
        o(f.upstream_run_ms),
        o(f.upstream_wait_ms),
        o(f.target_run_ms),
        o(f.target_wait_ms),
        v(&f.cpu_busy_ms),
        v(&f.cpu_softirq_ms),
        if f.others_ms.is_empty() { "-".into() } else { v(&f.others_ms) },
    )
}
