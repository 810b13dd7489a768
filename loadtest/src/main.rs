//! tollgate-load: an MCP load generator (sessions, tools/list, tools/call, JSON and SSE replies),
//! open- and closed-loop, with HDR percentiles and the CPU/RSS of the process under test;
//! `compare` runs one scenario against the upstream directly, the bare forwarder, nginx and tollgate.

mod auth;
mod compare;
mod gen;
mod http1;
mod procstat;
mod report;
mod scenario;

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::scenario::{Mode, Scenario};

#[derive(Parser)]
#[command(
    name = "tollgate-load",
    version,
    about = "MCP load generator and proxy comparison"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct Overrides {
    /// Override load.requests (upper bound on measured requests).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Override load.duration_secs (upper bound on the measured phase).
    #[arg(long)]
    pub duration: Option<f64>,
    #[arg(long)]
    pub connections: Option<usize>,
    #[arg(long)]
    pub sessions: Option<usize>,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Idle scenario: number of connections.
    #[arg(long)]
    pub idle_connections: Option<usize>,
    /// Skip initialize (stateless, 2026-07-28 era).
    #[arg(long)]
    pub stateless: bool,
    /// Open-loop pacing: precise (timerfd via io_uring, ns) or coarse (monoio's 1 ms timer).
    #[arg(long)]
    pub pacing: Option<scenario::Pacing>,
}

impl Overrides {
    pub fn apply(&self, s: &mut Scenario) {
        if let Some(v) = self.requests {
            s.load.requests = v;
        }
        if let Some(v) = self.duration {
            s.load.duration_secs = v;
        }
        if let Some(v) = self.connections {
            s.connections = v;
            s.threads = s.threads.min(v);
        }
        if let Some(v) = self.sessions {
            s.sessions = v;
        }
        if let Some(v) = self.threads {
            s.threads = v;
        }
        if let Some(v) = self.warmup {
            s.load.warmup_requests = v;
        }
        if let (Some(v), Some(i)) = (self.idle_connections, s.idle.as_mut()) {
            i.connections = v;
        }
        if self.stateless {
            s.stateless = true;
        }
        if let Some(p) = self.pacing {
            s.load.pacing = p;
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario against one URL (your own deployment, or anything speaking MCP over HTTP).
    Run {
        #[arg(long)]
        scenario: String,
        /// Target URL, e.g. http://127.0.0.1:8080/mcp (default: the scenario's `url`).
        #[arg(long)]
        url: Option<String>,
        /// Extra header, "Name: value"; repeatable.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// open (constant rate, latency from the intended send time) or closed (back-to-back).
        #[arg(long)]
        mode: Option<String>,
        /// Open-loop rate, requests/second.
        #[arg(long)]
        rate: Option<f64>,
        /// Process under test: CPU per request and RSS are read from /proc/PID.
        #[arg(long)]
        target_pid: Option<i32>,
        /// For an https:// URL: the CA certificate(s) (PEM) to verify the target against.
        #[arg(long)]
        tls_ca: Option<String>,
        #[command(flatten)]
        ov: Overrides,
    },
    /// Same scenario, same upstream: direct, bare forwarder, nginx, tollgate. Writes loadtest/results/.
    Compare(compare::Args),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Run {
            scenario,
            url,
            headers,
            mode,
            rate,
            target_pid,
            tls_ca,
            ov,
        } => {
            if let Some(ca) = tls_ca {
                let _ = gen::TLS_CA.set(ca);
            }
            match run_cmd(&scenario, url, &headers, mode, rate, target_pid, &ov) {
                Ok(ok) => {
                    if ok {
                        0
                    } else {
                        1
                    }
                }
                Err(e) => {
                    eprintln!("tollgate-load: {e:#}");
                    2
                }
            }
        }
        Cmd::Compare(a) => compare::main(a),
    };
    std::process::exit(code);
}

pub fn parse_headers(h: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    h.iter()
        .map(|s| {
            let (k, v) = s
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("header {s:?} is not \"Name: value\""))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Returns Ok(true) when every request completed without error.
fn run_cmd(
    path: &str,
    url: Option<String>,
    headers: &[String],
    mode: Option<String>,
    rate: Option<f64>,
    target_pid: Option<i32>,
    ov: &Overrides,
) -> anyhow::Result<bool> {
    let mut s = Scenario::load(path)?;
    ov.apply(&mut s);
    match mode.as_deref() {
        Some("open") => s.load.mode = Mode::Open,
        Some("closed") => s.load.mode = Mode::Closed,
        Some(m) => anyhow::bail!("--mode {m}: expected open or closed"),
        None => {}
    }
    if let Some(r) = rate {
        s.load.rate = Some(r);
        if mode.is_none() {
            s.load.mode = Mode::Open;
        }
    }
    s.validate().map_err(|e| anyhow::anyhow!(e))?;
    let url = url
        .or(s.url.clone())
        .ok_or_else(|| anyhow::anyhow!("no --url and no `url` in the scenario"))?;
    let nofile = procstat::raise_nofile();
    let plan = Arc::new(gen::Plan::new(&s, &url, &parse_headers(headers)?)?);
    eprintln!(
        "tollgate-load: scenario {} → {url}; {} connections, {} sessions{}, {} thread(s); RLIMIT_NOFILE {nofile}",
        s.name,
        s.connections,
        if s.stateless { 0 } else { s.sessions },
        if s.stateless { " (stateless)" } else { "" },
        s.threads
    );
    let snap = |pid: Option<i32>| pid.and_then(procstat::snap);
    if let Some(idle) = s.idle.clone() {
        let r = measure_idle(plan, &idle, target_pid);
        println!("{}", serde_json::to_string(&r)?);
        return Ok(r.errors_total == 0);
    }
    let phase = gen::Phase {
        mode: s.load.mode,
        rate: s.load.rate,
        requests: s.load.requests,
        duration: Duration::from_secs_f64(s.load.duration_secs),
        warmup: s.load.warmup_requests,
    };
    let before = std::sync::Mutex::new(None);
    let after = std::sync::Mutex::new(None);
    let hook = |start: bool| {
        let v = snap(target_pid);
        if start {
            *before.lock().expect("lock") = v;
        } else {
            *after.lock().expect("lock") = v;
        }
    };
    let st = gen::run_phase(plan, phase, &hook);
    let mode_s = if s.load.mode == Mode::Open {
        "open"
    } else {
        "closed"
    };
    let sum = report::Summary::new(
        mode_s,
        s.load.rate,
        s.load.pacing,
        &st,
        *before.lock().expect("lock"),
        *after.lock().expect("lock"),
    );
    println!("{}", report::table_header());
    println!("{}", report::table_row("target", &sum));
    if let Some(l) = report::lag_line(&sum) {
        println!("{l}");
    }
    println!("{}", report::sched_line(&sum.sched));
    if let Some(l) = report::error_line("target", &sum) {
        println!("{l}");
    }
    if s.expect.progress_min > 0 {
        println!("progress notifications received: {}", sum.progress_msgs);
    }
    let json = serde_json::json!({"scenario": s.name, "url": url, "target_pid": target_pid, "summary": sum});
    println!("{json}");
    Ok(sum.errors_total == 0 && sum.completed > 0)
}

#[derive(serde::Serialize, Clone, Debug)]
pub struct IdleResult {
    pub connections_requested: usize,
    pub connections_open: usize,
    pub errors_total: u64,
    pub errors: gen::Errors,
    pub rss_before_kib: Option<u64>,
    pub rss_with_conns_kib: Option<u64>,
    pub rss_per_conn_bytes: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    pub last_error: Option<String>,
}

pub fn measure_idle(plan: Arc<gen::Plan>, idle: &scenario::Idle, pid: Option<i32>) -> IdleResult {
    let before = pid.and_then(procstat::snap);
    let with = std::sync::Mutex::new(None);
    let hook = |open: bool| {
        if open {
            // Let the target finish its own bookkeeping for the last connections.
            std::thread::sleep(Duration::from_millis(300));
            *with.lock().expect("lock") = pid.and_then(procstat::snap);
        }
    };
    let st = gen::run_idle(
        plan,
        idle.connections,
        idle.warm_request,
        idle.connect_window.max(1),
        Duration::from_secs_f64(idle.hold_secs),
        &hook,
    );
    let with = *with.lock().expect("lock");
    let per = match (before, with) {
        (Some(b), Some(w)) if st.opened > 0 => {
            Some((w.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / st.opened as f64)
        }
        _ => None,
    };
    let r = IdleResult {
        connections_requested: idle.connections,
        connections_open: st.opened,
        errors_total: st.errors.total(),
        errors: st.errors.clone(),
        rss_before_kib: before.map(|b| b.rss_kib),
        rss_with_conns_kib: with.map(|w| w.rss_kib),
        rss_per_conn_bytes: per,
        peak_rss_kib: with.map(|w| w.hwm_kib),
        last_error: st.last_error,
    };
    eprintln!(
        "idle: {}/{} connections open; target RSS {} → {} KiB; {} bytes per idle connection; errors {}",
        r.connections_open,
        r.connections_requested,
        r.rss_before_kib.map(|v| v.to_string()).unwrap_or("-".into()),
        r.rss_with_conns_kib.map(|v| v.to_string()).unwrap_or("-".into()),
        r.rss_per_conn_bytes.map(|v| format!("{v:.0}")).unwrap_or("-".into()),
        r.errors_total
    );
    r
}
