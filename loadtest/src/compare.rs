//! `compare`: one scenario, one upstream, four setups (direct, bare forwarder, nginx, tollgate), same load.
//! Closed loop first (saturation, CPU per request), then open loop at a fraction of the lowest saturation
//! (latency without coordinated omission). Owns every process it starts and stops them all on the way out.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::gen::{self, Phase};
use crate::procstat::{self, Sched, Snap};
use crate::report::{self, Summary};
use crate::scenario::{Mode, Pacing, Scenario};
use crate::Overrides;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    scenario: String,
    /// Setups to measure, comma-separated, in order.
    #[arg(long, default_value = "direct,bare,nginx,tollgate")]
    setups: String,
    /// tollgate binary (default: next to this binary).
    #[arg(long)]
    tollgate: Option<PathBuf>,
    /// bare-forwarder binary (default: next to this binary).
    #[arg(long)]
    bare_forwarder: Option<PathBuf>,
    /// Another tollgate binary, measured as setup `tollgate-base` (a before/after in one run).
    #[arg(long)]
    tollgate_base: Option<PathBuf>,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Do not pin processes to CPUs even if the scenario asks for it.
    #[arg(long)]
    no_pin: bool,
    /// Fixed open-loop rate instead of a fraction of the lowest saturation.
    #[arg(long)]
    rate: Option<f64>,
    /// Run the generator, the upstream and every proxy at this nice value (inherited; negative needs root),
    /// so that other tenants of a shared machine take less CPU from the measurement.
    #[arg(long, allow_hyphen_values = true)]
    nice: Option<i32>,
    /// Skip the open-loop phase.
    #[arg(long)]
    closed_only: bool,
    /// Where the results files go; "-" writes none.
    #[arg(long, default_value = "loadtest/results")]
    results_dir: String,
    /// Write each open-loop phase's 10 ms timeline (sends, late slots, max lag, service) as CSV here.
    #[arg(long)]
    timeline_dir: Option<PathBuf>,
    /// Appended to the results file names (`<date>-<commit>-<scenario>-<tag>`), e.g. the rate of the run.
    #[arg(long)]
    results_tag: Option<String>,
    #[command(flatten)]
    ov: Overrides,
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
    pid: i32,
}

impl Drop for Proc {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("compare: {} did not stop on SIGTERM; killing", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &str, mut cmd: Command, cpu: Option<usize>, log: &Path) -> anyhow::Result<Proc> {
    let out = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    if let Some(cpu) = cpu {
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let pid = child.id() as i32;
    Ok(Proc {
        name: name.into(),
        child,
        pid,
    })
}

/// Wait for a ready file (`{"listen": "...", "pid": N}`), or for the process to exit.
fn wait_ready(
    p: &mut Proc,
    file: &Path,
    timeout: Duration,
    log: &Path,
) -> anyhow::Result<serde_json::Value> {
    let t = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                return Ok(v);
            }
        }
        if let Ok(Some(st)) = p.child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            anyhow::bail!("{} exited ({st}) before it was ready:\n{tail}", p.name);
        }
        if t.elapsed() > timeout {
            anyhow::bail!("{} not ready after {:?}", p.name, timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_port(addr: &str, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Setup {
    name: String,
    url: String,
    pid: i32,
    _procs: Vec<Proc>,
    note: String,
    closed: Option<Summary>,
    open: Option<Summary>,
    idle: Option<crate::IdleResult>,
    upstream_cpu_us_per_req: Option<f64>,
    failure: Option<String>,
}

pub fn main(a: Args) -> i32 {
    match run(a) {
        Ok(ok) => {
            if ok {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("compare: {e:#}");
            2
        }
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn run(a: Args) -> anyhow::Result<bool> {
    let mut s = Scenario::load(&a.scenario)?;
    if let Some(req) = &s.requires {
        eprintln!(
            "compare: scenario {} requires a gateway feature that has not landed: {req}.\n\
             compare refuses it until the gateway config supports it; `tollgate-load run --scenario {} --url …` \
             still drives any deployment that has the feature.",
            s.name, a.scenario
        );
        return Ok(false);
    }
    a.ov.apply(&mut s);
    s.validate().map_err(|e| anyhow::anyhow!(e))?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    // Other tenants of the machine show here: measurements on a busy box are noisier.
    let loadavg_start = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let tollgate = a
        .tollgate
        .clone()
        .unwrap_or_else(|| exe_dir.join("tollgate"));
    let bare = a
        .bare_forwarder
        .clone()
        .unwrap_or_else(|| exe_dir.join("bare-forwarder"));
    let nofile = procstat::raise_nofile();
    let tmp = std::env::temp_dir().join(format!("tollgate-load-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;

    // CPU placement: generator + upstream on CPU 0, the proxy under test on CPU 1.
    let ncpu = procstat::ncpus();
    let pin = s.pin && !a.no_pin && ncpu >= 2;
    let (gen_cpu, proxy_cpu) = if pin {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    if pin {
        procstat::pin_self(0)?;
        println!("pinning: generator + upstream on CPU 0, proxy under test on CPU 1 (sched_setaffinity); {ncpu} CPUs");
    } else {
        println!(
            "pinning: off ({ncpu} CPUs, scenario pin={}, --no-pin={})",
            s.pin, a.no_pin
        );
    }
    println!("RLIMIT_NOFILE raised to {nofile}");
    if let Some(n) = a.nice {
        // Per thread on Linux: this thread's value is inherited by the generator threads and, through
        // fork and exec, by the upstream and the proxies, all started from here.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } != 0 {
            anyhow::bail!("--nice {n}: {}", std::io::Error::last_os_error());
        }
        println!("nice: {n} (generator, upstream and proxies)");
    }

    // Upstream: the built-in demo MCP server, as its own process.
    let up_ready = tmp.join("upstream.ready");
    let up_log = tmp.join("upstream.log");
    let mut c = Command::new(&tollgate);
    c.args(["demo-upstream", "--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&up_ready);
    c.args(["--workers", "1"]).args(&s.upstream_args);
    let mut p = spawn("demo-upstream", c, gen_cpu, &up_log)?;
    let v = wait_ready(&mut p, &up_ready, Duration::from_secs(10), &up_log)?;
    let up_note = format!("tollgate demo-upstream {}", s.upstream_args.join(" "));
    let (up_proc, up_v) = (p, v);
    let up_addr = up_v["listen"].as_str().unwrap_or_default().to_string();
    let up_pid = up_v["pid"]
        .as_i64()
        .map(|p| p as i32)
        .unwrap_or(up_proc.pid);
    println!("upstream: {up_note} at {up_addr} (pid {up_pid})");

    // Start every setup first; idle ones cost nothing, and the open-loop rate needs all saturations.
    let mut setups: Vec<Setup> = Vec::new();
    for name in a.setups.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let bin = match (name, &a.tollgate_base) {
            ("tollgate-base", Some(base)) => base.clone(),
            _ => tollgate.clone(),
        };
        let r = if name == "tollgate-base" && a.tollgate_base.is_none() {
            Err(anyhow::anyhow!(
                "tollgate-base needs --tollgate-base <binary>"
            ))
        } else {
            start_setup(
                name, &tmp, &up_addr, up_pid, &s, &bin, &bare, &a.nginx, proxy_cpu,
            )
        };
        match r {
            Ok(st) => {
                println!(
                    "setup {:<9} {} (pid {}) {}",
                    st.name, st.url, st.pid, st.note
                );
                setups.push(st);
            }
            Err(e) => {
                println!("setup {name:<9} NOT RUN: {e:#}");
                setups.push(Setup {
                    name: name.into(),
                    url: String::new(),
                    pid: 0,
                    _procs: vec![],
                    note: String::new(),
                    closed: None,
                    open: None,
                    idle: None,
                    upstream_cpu_us_per_req: None,
                    failure: Some(format!("{e:#}")),
                });
            }
        }
    }

    let headers: Vec<(String, String)> = vec![];
    // Setup tollgate-stateless measures the same scenario sent as 2026-07-28 requests; so do
    // tollgate-held and tollgate-held1 (through held sessions with the upstream, declared
    // session-era: the pool of 4 by default, or one session).
    let stateless = {
        let mut st = s.clone();
        st.stateless = true;
        st
    };
    let scenario_for = |st: &Setup| {
        if matches!(
            st.name.as_str(),
            "tollgate-stateless" | "tollgate-held" | "tollgate-held1"
        ) {
            &stateless
        } else {
            &s
        }
    };
    if let Some(idle) = s.idle.clone() {
        for st in setups.iter_mut().filter(|x| x.failure.is_none()) {
            println!("--- {}: {} idle connections", st.name, idle.connections);
            let plan = Arc::new(gen::Plan::new(&s, &st.url, &headers)?);
            st.idle = Some(crate::measure_idle(plan, &idle, Some(st.pid)));
        }
    } else {
        let base = Phase {
            mode: Mode::Closed,
            rate: None,
            requests: s.load.requests,
            duration: Duration::from_secs_f64(s.load.duration_secs),
            warmup: s.load.warmup_requests,
        };
        for st in setups.iter_mut().filter(|x| x.failure.is_none()) {
            println!(
                "--- {}: closed loop, {} connections, ≤{} requests, ≤{}s",
                st.name, s.connections, base.requests, s.load.duration_secs
            );
            let (sum, up_cpu) = measure(
                scenario_for(st),
                &st.url,
                &headers,
                base,
                st.pid,
                up_pid,
                pin,
            )?;
            st.upstream_cpu_us_per_req = up_cpu;
            st.closed = Some(sum);
        }
        if !a.closed_only {
            let min_sat = setups
                .iter()
                .filter_map(|x| x.closed.as_ref())
                .filter(|c| c.completed > 0)
                .map(|c| c.rps)
                .fold(f64::INFINITY, f64::min);
            let rate = a
                .rate
                .or(s.load.rate.filter(|_| s.load.mode == Mode::Open))
                .unwrap_or(min_sat * s.load.rate_fraction_of_saturation);
            if rate.is_finite() && rate > 0.0 {
                let open = Phase {
                    mode: Mode::Open,
                    rate: Some(rate),
                    ..base
                };
                for st in setups.iter_mut().filter(|x| x.failure.is_none()) {
                    println!("--- {}: open loop at {rate:.0} req/s", st.name);
                    let tl = a
                        .timeline_dir
                        .as_ref()
                        .map(|d| d.join(format!("{}-open.csv", st.name)));
                    let (sum, _) = measure_tl(
                        scenario_for(st),
                        &st.url,
                        &headers,
                        open,
                        st.pid,
                        up_pid,
                        pin,
                        tl,
                    )?;
                    st.open = Some(sum);
                }
            }
        }
    }
    drop(up_proc);

    // Report.
    let machine = serde_json::json!({
        "nproc": ncpu,
        "loadavg_at_start": loadavg_start,
        "kernel": sh("uname", &["-r"]),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
            .unwrap_or_default(),
    });
    let commit = {
        let c = sh("git", &["rev-parse", "--short", "HEAD"]);
        let dirty = !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        if c.is_empty() {
            "nocommit".to_string()
        } else if dirty {
            format!("{c}-dirty")
        } else {
            c
        }
    };
    let date = sh("date", &["-u", "+%Y-%m-%d"]);
    let time = sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);

    println!();
    println!(
        "scenario {} — upstream: {up_note}; pinning {}",
        s.name,
        if pin { "on" } else { "off" }
    );
    let mut md = String::new();
    md.push_str(&format!("# {} — {time}\n\n", s.name));
    md.push_str(&format!("- commit: `{commit}`\n- machine: {} CPUs, kernel {}, {}; /proc/loadavg at start: {loadavg_start}\n- command: `{command}`\n- upstream: {up_note}\n- pinning: {}\n- open-loop pacing: {}\n- nice: {}\n\n",
        ncpu, machine["kernel"].as_str().unwrap_or(""), machine["cpu"].as_str().unwrap_or(""),
        if pin { "generator + upstream on CPU 0, proxy on CPU 1" } else { "off" },
        match s.load.pacing {
            Pacing::Precise => "precise (a timerfd per connection, read through io_uring: ns resolution)",
            Pacing::Coarse => "coarse (monoio's 1 ms timer)",
        },
        a.nice.map(|n| n.to_string()).unwrap_or_else(|| "unchanged".into())));
    let bare_c = setups
        .iter()
        .find(|x| x.name == "bare")
        .and_then(|x| x.closed.clone());
    let bare_o = setups
        .iter()
        .find(|x| x.name == "bare")
        .and_then(|x| x.open.clone());
    let mut all_ok = true;
    let mut json_setups = serde_json::Map::new();
    if s.idle.is_some() {
        md.push_str("| setup | connections open | RSS before KiB | RSS with conns KiB | bytes / idle conn | errors |\n|---|---|---|---|---|---|\n");
        for st in &setups {
            if let Some(f) = &st.failure {
                all_ok = false;
                println!("{:<10} NOT RUN: {f}", st.name);
                md.push_str(&format!(
                    "| {} | not run: {} | | | | |\n",
                    st.name,
                    f.lines().next().unwrap_or("")
                ));
                json_setups.insert(st.name.clone(), serde_json::json!({"not_run": f}));
                continue;
            }
            let i = st.idle.as_ref().expect("measured");
            all_ok &= i.errors_total == 0;
            let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or("-".into());
            let line = format!(
                "| {} | {}/{} | {} | {} | {} | {} |",
                st.name,
                i.connections_open,
                i.connections_requested,
                opt(i.rss_before_kib),
                opt(i.rss_with_conns_kib),
                i.rss_per_conn_bytes
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or("-".into()),
                i.errors_total
            );
            println!("{line}");
            md.push_str(&line);
            md.push('\n');
            json_setups.insert(st.name.clone(), serde_json::to_value(i)?);
        }
    } else {
        println!("{}", report::table_header());
        md.push_str("| setup | mode | completed | errors | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | service p50 µs | service p99 µs | service p99.9 µs | send lag p50 / p99 / max µs | CPU µs/req (target) | RSS KiB | peak RSS KiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for st in &setups {
            if let Some(f) = &st.failure {
                all_ok = false;
                println!(
                    "{:<10} NOT RUN: {}",
                    st.name,
                    f.lines().next().unwrap_or("")
                );
                md.push_str(&format!(
                    "| {} | not run: {} |||||||||||| \n",
                    st.name,
                    f.lines().next().unwrap_or("").replace('|', "/")
                ));
                json_setups.insert(st.name.clone(), serde_json::json!({"not_run": f}));
                continue;
            }
            let mut j = serde_json::Map::new();
            for (label, sum) in [("closed", &st.closed), ("open", &st.open)] {
                let Some(sum) = sum else { continue };
                all_ok &= sum.errors_total == 0 && sum.completed > 0;
                println!("{}", report::table_row(&st.name, sum));
                if let Some(l) = report::error_line(&st.name, sum) {
                    println!("{l}");
                }
                md.push_str(&format!(
                    "| {} | {}{} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    st.name, label, sum.target_rate.map(|r| format!(" @{r:.0}/s")).unwrap_or_default(), sum.completed, sum.errors_total, sum.rps,
                    sum.p50_us, sum.p90_us, sum.p99_us, sum.p999_us, sum.max_us, sum.service_p50_us, sum.service_p99_us, sum.service_p999_us,
                    if label == "open" { format!("{:.1} / {:.1} / {:.0}", sum.send_lag_p50_us, sum.send_lag_p99_us, sum.send_lag_max_us) } else { "-".into() },
                    sum.cpu_us_per_req.map(|c| format!("{c:.1}")).unwrap_or("-".into()),
                    sum.rss_kib.map(|v| v.to_string()).unwrap_or("-".into()), sum.peak_rss_kib.map(|v| v.to_string()).unwrap_or("-".into())
                ));
                j.insert(label.into(), serde_json::to_value(sum)?);
            }
            // Flat headline figures: throughput and CPU from the closed loop, latency from the open loop.
            let c = st.closed.as_ref();
            let o = st.open.as_ref().or(c);
            j.insert("rps".into(), serde_json::json!(c.map(|c| c.rps)));
            j.insert("p50_us".into(), serde_json::json!(o.map(|o| o.p50_us)));
            j.insert("p99_us".into(), serde_json::json!(o.map(|o| o.p99_us)));
            j.insert("p999_us".into(), serde_json::json!(o.map(|o| o.p999_us)));
            j.insert(
                "errors".into(),
                serde_json::json!(
                    c.map(|c| c.errors_total).unwrap_or(0)
                        + st.open.as_ref().map(|o| o.errors_total).unwrap_or(0)
                ),
            );
            j.insert(
                "cpu_us_per_req".into(),
                serde_json::json!(c.and_then(|c| c.cpu_us_per_req)),
            );
            j.insert(
                "peak_rss_kib".into(),
                serde_json::json!(o.and_then(|o| o.peak_rss_kib)),
            );
            j.insert(
                "upstream_cpu_us_per_req".into(),
                serde_json::json!(st.upstream_cpu_us_per_req),
            );
            if let (Some(bc), Some(c)) = (&bare_c, c) {
                let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
                    (Some(x), Some(y)) if y > 0.0 => Some(x / y),
                    _ => None,
                };
                j.insert(
                    "cpu_ratio_to_bare".into(),
                    serde_json::json!(ratio(c.cpu_us_per_req, bc.cpu_us_per_req)),
                );
                j.insert(
                    "rps_ratio_to_bare".into(),
                    serde_json::json!(ratio(Some(c.rps), Some(bc.rps))),
                );
            }
            if let (Some(bo), Some(o)) = (&bare_o, st.open.as_ref()) {
                let added = [
                    ("added_p99_us_over_bare", o.p99_us, bo.p99_us),
                    (
                        "added_service_p99_us_over_bare",
                        o.service_p99_us,
                        bo.service_p99_us,
                    ),
                    ("added_p50_us_over_bare", o.p50_us, bo.p50_us),
                    ("added_p999_us_over_bare", o.p999_us, bo.p999_us),
                ];
                for (key, ours, bare) in added {
                    j.insert(key.into(), serde_json::json!(ours as i64 - bare as i64));
                }
            }
            json_setups.insert(st.name.clone(), serde_json::Value::Object(j));
        }
        md.push_str("\nSend lag (open loop: pacer lateness vs slots no connection could take in time) and where CPU time went, per phase:\n\n");
        for st in setups.iter().filter(|x| x.failure.is_none()) {
            for (label, sum) in [("closed", &st.closed), ("open", &st.open)] {
                let Some(sum) = sum else { continue };
                if let Some(l) = report::lag_line(sum) {
                    md.push_str(&format!(
                        "- {} {label}: {}\n",
                        st.name,
                        l.trim().replace("\n           ", " ")
                    ));
                }
                md.push_str(&format!(
                    "- {} {label}: {}\n",
                    st.name,
                    report::sched_line(&sum.sched).trim()
                ));
            }
        }
        // Ratios.
        println!();
        md.push_str("\n| setup | CPU/req ÷ bare | req/s ÷ bare | added p50 / p99 / p99.9 over bare µs (open loop, from the intended send time) | added p99 over bare (open loop, from intended send time; from the actual write) |\n|---|---|---|---|---|\n");
        for (name, v) in &json_setups {
            if v.get("not_run").is_some() {
                continue;
            }
            let f = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_f64())
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or("-".into())
            };
            let added = match (
                v.get("added_p99_us_over_bare").and_then(|x| x.as_i64()),
                v.get("added_service_p99_us_over_bare")
                    .and_then(|x| x.as_i64()),
            ) {
                (Some(a), Some(s)) => format!("{a} µs (service time: {s} µs)"),
                _ => "-".into(),
            };
            let i = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_i64())
                    .map(|x| x.to_string())
                    .unwrap_or("-".into())
            };
            let added3 = format!(
                "{} / {} / {}",
                i("added_p50_us_over_bare"),
                i("added_p99_us_over_bare"),
                i("added_p999_us_over_bare")
            );
            println!(
                "{name:<10} cpu/req ÷ bare {:>6}   rps ÷ bare {:>6}   added p50/p99/p99.9 over bare {added3} µs; p99 {added}",
                f("cpu_ratio_to_bare"),
                f("rps_ratio_to_bare")
            );
            md.push_str(&format!(
                "| {name} | {} | {} | {added3} | {added} |\n",
                f("cpu_ratio_to_bare"),
                f("rps_ratio_to_bare")
            ));
        }
    }
    md.push_str("\nCPU µs/req: time on a CPU of every thread of the process under test (upstream for `direct`, the proxy otherwise) over the phase ÷ completed requests, from the process's CPU clock (`clock_getcpuclockid`, nanoseconds, exited threads included; utime+stime at clock-tick resolution where it cannot be read). Peak RSS is VmHWM (process lifetime).\n");
    let out = serde_json::json!({
        "scenario": s.name, "date": time, "commit": commit, "machine": machine, "command": command,
        "upstream": up_note, "pinned": pin, "pacing": s.load.pacing, "nice": a.nice, "connections": s.connections, "sessions": s.sessions,
        "setups": json_setups,
    });
    if a.results_dir != "-" {
        std::fs::create_dir_all(&a.results_dir)?;
        let tag = a
            .results_tag
            .as_deref()
            .map(|t| format!("-{t}"))
            .unwrap_or_default();
        let stem = format!("{}/{date}-{commit}-{}{tag}", a.results_dir, s.name);
        std::fs::write(
            format!("{stem}.json"),
            serde_json::to_string_pretty(&out)? + "\n",
        )?;
        std::fs::write(format!("{stem}.md"), &md)?;
        println!("results: {stem}.json, {stem}.md");
    }
    let _ = std::fs::remove_dir_all(&tmp);
    drop(setups);
    println!("{out}");
    Ok(all_ok)
}

#[allow(clippy::too_many_arguments)]
fn start_setup(
    name: &str,
    tmp: &Path,
    up_addr: &str,
    up_pid: i32,
    s: &Scenario,
    tollgate: &Path,
    bare: &Path,
    nginx: &Path,
    cpu: Option<usize>,
) -> anyhow::Result<Setup> {
    let mk = |url: String, pid: i32, procs: Vec<Proc>, note: String| Setup {
        name: name.into(),
        url,
        pid,
        _procs: procs,
        note,
        closed: None,
        open: None,
        idle: None,
        upstream_cpu_us_per_req: None,
        failure: None,
    };
    match name {
        "direct" => Ok(mk(
            format!("http://{up_addr}/mcp"),
            up_pid,
            vec![],
            "(the upstream itself)".into(),
        )),
        "bare" => {
            let ready = tmp.join("bare.ready");
            let log = tmp.join("bare.log");
            let mut c = Command::new(bare);
            c.args([
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                up_addr,
                "--ready-file",
            ])
            .arg(&ready);
            let mut p = spawn("bare-forwarder", c, cpu, &log)?;
            let v = wait_ready(&mut p, &ready, Duration::from_secs(10), &log)?;
            let pid = p.pid;
            Ok(mk(
                format!("http://{}/mcp", v["listen"].as_str().unwrap_or("")),
                pid,
                vec![p],
                format!("driver {}", v["driver"]),
            ))
        }
        "nginx" => {
            if !nginx.exists() {
                anyhow::bail!(
                    "{} not found (apt-get install nginx-light)",
                    nginx.display()
                );
            }
            let dir = tmp.join("nginx");
            std::fs::create_dir_all(dir.join("tmp"))?;
            let port = free_port()?;
            let conf = format!(
                r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 20000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  upstream demo {{ server {up}; keepalive 64; keepalive_requests 100000000; keepalive_timeout 300s; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://demo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
}}
"#,
                d = dir.display(),
                up = up_addr
            );
            std::fs::write(dir.join("nginx.conf"), conf)?;
            let log = tmp.join("nginx.log");
            let mut c = Command::new(nginx);
            c.arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-e")
                .arg(dir.join("error.log"));
            let mut p = spawn("nginx", c, cpu, &log)?;
            let addr = format!("127.0.0.1:{port}");
            if !wait_port(&addr, Duration::from_secs(10)) {
                let _ = p.child.try_wait();
                let err = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                anyhow::bail!("nginx did not listen on {addr}: {err}");
            }
            let pid = p.pid;
            Ok(mk(
                format!("http://{addr}/mcp"),
                pid,
                vec![p],
                format!(
                    "nginx {} worker_processes 1, master_process off",
                    sh(nginx.to_str().unwrap_or("nginx"), &["-v"])
                ),
            ))
        }
        "tollgate" | "tollgate-base" | "tollgate-tls" | "tollgate-fed3" | "tollgate-stateless"
        | "tollgate-held" | "tollgate-held1" => {
            if !tollgate.exists() {
                anyhow::bail!(
                    "{} not found (cargo build --release --bin tollgate)",
                    tollgate.display()
                );
            }
            let base = format!(
                "workers: 1\nlisten:\n  address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nupstreams:\n  - name: demo\n    url: \"http://{up_addr}/mcp\"\nservers:\n  - path: /mcp\n    upstream: demo\n"
            );
            let mut text = merge_yaml(&base, &s.gateway_config_extra)?;
            // Held sessions: the upstream declared session-era, so 2026-07-28 requests go through
            // the sessions each worker holds with it (`limits.held_sessions_per_upstream`).
            if name.starts_with("tollgate-held") {
                let mut held = format!(
                    "upstreams:\n  - name: demo\n    url: \"http://{up_addr}/mcp\"\n    era: session\n"
                );
                if name == "tollgate-held1" {
                    held.push_str("limits:\n  held_sessions_per_upstream: 1\n");
                }
                text = merge_yaml(&text, &held)?;
            }
            // Federation: the measured upstream (unprefixed, so the scenario's names are
            // unchanged) and two more demo upstreams (same arguments; names prefixed) behind one
            // endpoint.
            let mut procs = Vec::new();
            if name == "tollgate-fed3" {
                let mut ups = format!("upstreams:\n  - name: demo\n    url: \"http://{up_addr}/mcp\"\n    prefix: \"\"\n");
                for extra in ["fed_b", "fed_c"] {
                    let ready = tmp.join(format!("{extra}.ready"));
                    let log = tmp.join(format!("{extra}.log"));
                    let mut c = Command::new(tollgate);
                    c.args(["demo-upstream", "--listen", "127.0.0.1:0", "--ready-file"])
                        .arg(&ready)
                        .args(["--workers", "1"])
                        .args(&s.upstream_args);
                    let mut p = spawn(extra, c, None, &log)?;
                    let v = wait_ready(&mut p, &ready, Duration::from_secs(10), &log)?;
                    let addr = v["listen"].as_str().unwrap_or_default();
                    ups.push_str(&format!(
                        "  - name: {extra}\n    url: \"http://{addr}/mcp\"\n"
                    ));
                    procs.push(p);
                }
                ups.push_str("servers:\n  - path: /mcp\n    upstreams: [demo, fed_b, fed_c]\n");
                text = merge_yaml(&text, &ups)?;
            }
            // TLS on the listener (plain upstream): a throwaway CA and certificate for it.
            let tls = name == "tollgate-tls";
            if tls {
                let (cert, key, ca) = make_cert(&tmp.join("tls"))?;
                let _ = crate::gen::TLS_CA.set(ca);
                text = merge_yaml(
                    &text,
                    &format!("listen:\n  tls:\n    cert_file: {cert}\n    key_file: {key}\n"),
                )?;
            }
            let cfg = tmp.join(format!("{name}.yaml"));
            std::fs::write(&cfg, &text)?;
            let ready = tmp.join(format!("{name}.ready"));
            let log = tmp.join(format!("{name}.log"));
            let mut c = Command::new(tollgate);
            c.arg("run")
                .arg("--config")
                .arg(&cfg)
                .arg("--ready-file")
                .arg(&ready);
            let mut p = spawn("tollgate", c, cpu, &log)?;
            let v = wait_ready(&mut p, &ready, Duration::from_secs(15), &log)?;
            let pid = v["pid"].as_i64().map(|x| x as i32).unwrap_or(p.pid);
            let scheme = if tls { "https" } else { "http" };
            procs.insert(0, p);
            Ok(mk(
                format!("{scheme}://{}/mcp", v["listen"].as_str().unwrap_or("")),
                pid,
                procs,
                if name == "tollgate-fed3" {
                    "workers: 1, one endpoint over three demo upstreams (the measured one unprefixed)"
                        .into()
                } else if tls {
                    "workers: 1, TLS listener (ECDSA P-256, keep-alive: one handshake per connection)"
                        .into()
                } else if name == "tollgate-held" {
                    "workers: 1, 2026-07-28 requests to a session-era upstream through held sessions (pool of 4)"
                        .into()
                } else if name == "tollgate-held1" {
                    "workers: 1, 2026-07-28 requests to a session-era upstream through one held session"
                        .into()
                } else if name == "tollgate-stateless" {
                    "workers: 1, the scenario sent as 2026-07-28 stateless requests (no session; _meta and Mcp-* headers)"
                        .into()
                } else {
                    "workers: 1".into()
                },
            ))
        }
        other => {
            anyhow::bail!(
                "unknown setup {other} (direct, bare, nginx, tollgate, tollgate-base, tollgate-tls, tollgate-fed3, tollgate-stateless, tollgate-held, tollgate-held1)"
            )
        }
    }
}

/// A CA and a certificate it signed for 127.0.0.1/localhost (ECDSA P-256), made with the
/// `openssl` command in `dir`: (cert, key, CA) paths.
fn make_cert(dir: &Path) -> anyhow::Result<(String, String, String)> {
    std::fs::create_dir_all(dir)?;
    let p = |n: &str| dir.join(n).display().to_string();
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )?;
    let steps: [Vec<String>; 3] = [
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=tollgate-load CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &p("key.pem"),
            "-out",
            &p("req.csr"),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "x509",
            "-req",
            "-in",
            &p("req.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("ext.cnf"),
            "-out",
            &p("cert.pem"),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .map_err(|e| anyhow::anyhow!("openssl (needed for tollgate-tls): {e}"))?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((p("cert.pem"), p("key.pem"), p("ca.pem")))
}

fn measure(
    s: &Scenario,
    url: &str,
    headers: &[(String, String)],
    phase: Phase,
    pid: i32,
    up_pid: i32,
    pinned: bool,
) -> anyhow::Result<(Summary, Option<f64>)> {
    measure_tl(s, url, headers, phase, pid, up_pid, pinned, None)
}

#[allow(clippy::too_many_arguments)]
fn measure_tl(
    s: &Scenario,
    url: &str,
    headers: &[(String, String)],
    phase: Phase,
    pid: i32,
    up_pid: i32,
    pinned: bool,
    timeline: Option<PathBuf>,
) -> anyhow::Result<(Summary, Option<f64>)> {
    let plan = Arc::new(gen::Plan::new(s, url, headers)?);
    let snaps: Mutex<[(Option<Snap>, Option<Snap>); 2]> = Mutex::new([(None, None), (None, None)]);
    type SchedSnap = (Option<Sched>, Option<Sched>, Vec<procstat::CpuTime>);
    let scheds: Mutex<[Option<SchedSnap>; 2]> = Mutex::new([None, None]);
    let hook = |start: bool| {
        let t = procstat::snap(pid);
        let u = procstat::snap(up_pid);
        let sc = (
            procstat::sched_pid(pid),
            procstat::sched_pid(up_pid),
            procstat::cpu_times(),
        );
        let mut g = snaps.lock().expect("lock");
        if start {
            g[0].0 = t;
            g[1].0 = u;
        } else {
            g[0].1 = t;
            g[1].1 = u;
        }
        scheds.lock().expect("lock")[usize::from(!start)] = Some(sc);
    };
    let st = gen::run_phase(plan, phase, &hook);
    if let Some(path) = timeline {
        let mut csv =
            String::from("t_ms,sends,late_slots,max_send_lag_us,max_service_us,mean_service_us\n");
        for (i, b) in st.timeline.iter().enumerate() {
            csv.push_str(&format!(
                "{},{},{},{},{},{}\n",
                i as u128 * gen::TIMELINE_BUCKET.as_millis(),
                b[0],
                b[1],
                b[2],
                b[3],
                b[4] / b[0].max(1)
            ));
        }
        std::fs::write(&path, csv)?;
    }
    let g = snaps.lock().expect("lock");
    let mode = if phase.mode == Mode::Open {
        "open"
    } else {
        "closed"
    };
    let mut sum = Summary::new(mode, phase.rate, s.load.pacing, &st, g[0].0, g[0].1);
    if let [Some(b), Some(a)] = &*scheds.lock().expect("lock") {
        fill_sched(&mut sum.sched, b, a, pid == up_pid, pinned);
    }
    let up = match (g[1].0, g[1].1) {
        (Some(b), Some(a)) if st.completed > 0 => {
            Some(procstat::cpu_us_between(&b, &a) / st.completed as f64)
        }
        _ => None,
    };
    println!("{}", report::table_row("", &sum));
    if let Some(l) = report::error_line("", &sum) {
        println!("{l}");
    }
    if let Some(l) = report::lag_line(&sum) {
        println!("{l}");
    }
    println!("{}", report::sched_line(&sum.sched));
    Ok((sum, up))
}

/// The generated tollgate config with the scenario's `gateway_config_extra` merged in (maps merge key by key,
/// anything else replaces), so a scenario can change e.g. `listen.max_connections_per_worker`.
fn merge_yaml(base: &str, extra: &str) -> anyhow::Result<String> {
    use serde_yaml_ng::Value;
    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Mapping(a), Value::Mapping(b)) => {
                for (k, v) in b {
                    match a.get_mut(&k) {
                        Some(slot) => merge(slot, v),
                        None => {
                            a.insert(k, v);
                        }
                    }
                }
            }
            (slot, v) => *slot = v,
        }
    }
    let mut doc: Value = serde_yaml_ng::from_str(base)?;
    let extra: Value =
        serde_yaml_ng::from_str(extra).map_err(|e| anyhow::anyhow!("gateway_config_extra: {e}"))?;
    if !extra.is_null() {
        merge(&mut doc, extra);
    }
    Ok(serde_yaml_ng::to_string(&doc)?)
}

/// Scheduler figures of a phase from the snapshots before (`b`) and after (`a`): the target's and the
/// upstream's run and wait time, busy and softirq time per CPU, and (pinned) the busy time on each CPU that
/// none of the pinned processes accounts for: generator + upstream on CPU 0, the proxy on CPU 1.
fn fill_sched(
    f: &mut report::SchedFigures,
    b: &(Option<Sched>, Option<Sched>, Vec<procstat::CpuTime>),
    a: &(Option<Sched>, Option<Sched>, Vec<procstat::CpuTime>),
    direct: bool,
    pinned: bool,
) {
    let ms = |ns: u64| ns as f64 / 1e6;
    let target = match (a.0, b.0) {
        (Some(a), Some(b)) => Some(a.since(b)),
        _ => None,
    };
    let up = match (a.1, b.1) {
        (Some(a), Some(b)) => Some(a.since(b)),
        _ => None,
    };
    f.target_run_ms = target.map(|t| ms(t.run_ns));
    f.target_wait_ms = target.map(|t| ms(t.wait_ns));
    f.upstream_run_ms = up.map(|t| ms(t.run_ns));
    f.upstream_wait_ms = up.map(|t| ms(t.wait_ns));
    let cpus: Vec<(f64, f64)> =
        a.2.iter()
            .zip(&b.2)
            .map(|(a, b)| {
                (
                    a.busy_us.saturating_sub(b.busy_us) as f64 / 1e3,
                    a.softirq_us.saturating_sub(b.softirq_us) as f64 / 1e3,
                )
            })
            .collect();
    f.cpu_busy_ms = cpus.iter().map(|c| c.0).collect();
    f.cpu_softirq_ms = cpus.iter().map(|c| c.1).collect();
    if pinned && cpus.len() >= 2 {
        let up_run = f.upstream_run_ms.unwrap_or(0.0);
        let proxy_run = if direct {
            0.0
        } else {
            f.target_run_ms.unwrap_or(0.0)
        };
        f.others_ms = vec![
            (cpus[0].0 - cpus[0].1 - f.gen_run_ms - up_run).max(0.0),
            (cpus[1].0 - cpus[1].1 - proxy_run).max(0.0),
        ];
    }
}
