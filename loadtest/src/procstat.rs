//! What the harness reads about the process under test from /proc: CPU time and memory.
//! VmHWM is the peak RSS over the whole process lifetime, not over one phase; VmRSS is current.

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Snap {
    /// utime + stime, in microseconds (one clock tick, usually 10 ms: ~0.4 % of a 200k-request
    /// phase).
    pub cpu_us: u64,
    /// The process's CPU clock (`clock_getcpuclockid`: every thread's time on a CPU, exited
    /// threads included), in nanoseconds, where the kernel lets us read it.
    pub cpu_ns: Option<u64>,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn snap(pid: i32) -> Option<Snap> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that closes comm: state is field 3; utime 14 and stime 15.
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Snap {
        cpu_us: (utime + stime) * 1_000_000 / tck,
        cpu_ns: process_cpu_ns(pid),
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    })
}

fn process_cpu_ns(pid: i32) -> Option<u64> {
    let mut id: libc::clockid_t = 0;
    // SAFETY: plain libc calls writing into locals.
    if unsafe { libc::clock_getcpuclockid(pid, &mut id) } != 0 {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// CPU time between two snapshots, in µs: the CPU clock's nanoseconds when both have it, else
/// clock ticks (one source for both ends).
pub fn cpu_us_between(before: &Snap, after: &Snap) -> f64 {
    match (before.cpu_ns, after.cpu_ns) {
        (Some(b), Some(a)) => a.saturating_sub(b) as f64 / 1000.0,
        _ => after.cpu_us.saturating_sub(before.cpu_us) as f64,
    }
}

/// Raise RLIMIT_NOFILE to the hard limit (children inherit it). Returns the new soft limit.
pub fn raise_nofile() -> u64 {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}

/// Pin the calling thread (and threads/processes it creates later) to one CPU.
pub fn pin_self(cpu: usize) -> std::io::Result<()> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn ncpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Scheduler figures of a thread or a whole process (/proc/…/schedstat, status): where its time went.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Sched {
    /// Time on a CPU (ns).
    pub run_ns: u64,
    /// Time runnable but waiting for a CPU (ns): what other tasks on its CPU cost it.
    pub wait_ns: u64,
    /// Times it was switched out while still runnable (preempted).
    pub involuntary: u64,
}

impl Sched {
    pub fn since(self, before: Sched) -> Sched {
        Sched {
            run_ns: self.run_ns.saturating_sub(before.run_ns),
            wait_ns: self.wait_ns.saturating_sub(before.wait_ns),
            involuntary: self.involuntary.saturating_sub(before.involuntary),
        }
    }
    pub fn add(&mut self, o: Sched) {
        self.run_ns += o.run_ns;
        self.wait_ns += o.wait_ns;
        self.involuntary += o.involuntary;
    }
}

fn sched_dir(dir: &str) -> Option<Sched> {
    let ss = std::fs::read_to_string(format!("{dir}/schedstat")).ok()?;
    let mut f = ss.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
    let run_ns = f.next()?;
    let wait_ns = f.next()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let involuntary = status
        .lines()
        .find(|l| l.starts_with("nonvoluntary_ctxt_switches:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Sched {
        run_ns,
        wait_ns,
        involuntary,
    })
}

/// The calling thread.
pub fn sched_thread() -> Option<Sched> {
    sched_dir("/proc/thread-self")
}

/// Every thread of `pid`, summed.
pub fn sched_pid(pid: i32) -> Option<Sched> {
    let mut sum = Sched::default();
    let mut any = false;
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        if let Some(s) = sched_dir(&e.path().to_string_lossy()) {
            sum.add(s);
            any = true;
        }
    }
    any.then_some(sum)
}

/// Per-CPU time from /proc/stat, in µs (clock-tick resolution): busy (everything but idle and iowait)
/// and the part of it spent in softirq (on loopback, TCP receive work done on the sender's CPU).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuTime {
    pub busy_us: u64,
    pub softirq_us: u64,
}

pub fn cpu_times() -> Vec<CpuTime> {
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = Vec::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("cpu") else {
            continue;
        };
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal
        let g = |i: usize| v.get(i).copied().unwrap_or(0);
        let busy = g(0) + g(1) + g(2) + g(5) + g(6) + g(7);
        out.push(CpuTime {
            busy_us: busy * 1_000_000 / tck,
            softirq_us: g(6) * 1_000_000 / tck,
        });
    }
    out
}
