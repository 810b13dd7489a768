//! The only code that knows about threads: one monoio runtime per worker, pinned to a core,
//! each with its own SO_REUSEPORT listener; the admin thread; signals; the drain on shutdown.
//! Workers share only the immutable `Gateway` and talk through its control channel. Building the
//! gateway is `proxy::build`'s business; this module only runs threads.

pub mod clock;
pub mod driver;
pub mod listen;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::config::Config;
use crate::observe::admin::HealthSlot;
use crate::proxy::control::Inbox;
use crate::proxy::reload::Reloader;
use crate::proxy::state::{Gateway, WorkerState};

/// What each worker thread takes at start: its listener and its control inbox.
type WorkerInit = (std::net::TcpListener, Inbox);

/// Options from the command line that are not part of the config file.
#[derive(Default)]
pub struct RunOptions {
    /// Written (atomically) once every worker accepts: `{"listen":…,"admin":…,"pid":…}`.
    pub ready_file: Option<PathBuf>,
    /// The config file the gateway runs (re-read by a reload); `None`: built-in defaults.
    pub config_path: Option<PathBuf>,
}

/// Tunes glibc malloc for the request path: each request boxes its ~6 KB state machine, and by
/// default freeing it lets the arena trim its top and the next request grow it again (a page
/// fault per request). A high trim threshold keeps the top; memory is still reused, not leaked.
pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before worker threads start.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TOP_PAD, 1 << 20);
    }
}

/// Raises the open-file limit to its hard maximum: each connection costs a descriptor.
pub fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit on a stack struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Runs the gateway until SIGTERM/SIGINT, then drains and returns.
pub fn run(config: Config, opts: RunOptions) -> anyhow::Result<()> {
    raise_nofile_limit();
    tune_allocator();
    let handle = crate::observe::install()?;
    let workers = config.workers.get();
    let shutdown = Arc::new(AtomicBool::new(false));
    let (gw, inboxes) = Gateway::build(config, shutdown.clone())?;
    // The audit sinks open before anything is served: a file that cannot be written fails the start.
    gw.audit.start(&gw.config.audit).context("audit")?;
    let health = Arc::new(HealthSlot::new(gw.health.clone()));
    let reloader = Arc::new(Reloader::new(
        opts.config_path.clone(),
        gw.clone(),
        health.clone(),
    ));
    let config = &gw.config;

    // Bind everything before starting anything, so a taken port fails the start loudly.
    let listeners = listen::bind_group(config.listen.addr, workers, config.listen.backlog)?;
    let listen_addr = listeners[0].local_addr()?;
    let admin_listener = match config.admin.addr {
        Some(a) => {
            Some(std::net::TcpListener::bind(a).with_context(|| format!("admin.address {a}"))?)
        }
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;

    // The request path's counters and histograms: one set per worker, merged when /metrics is
    // scraped.
    let series = crate::observe::series::SeriesSet::new(workers);
    // The request path's clock calibrates here, before any request.
    clock::init();

    // Admin thread and histogram upkeep.
    let admin_stop = Arc::new(AtomicBool::new(false));
    let mut admin_thread = None;
    if let Some(l) = admin_listener {
        let admin = crate::observe::admin::Admin {
            handle: handle.clone(),
            series: series.clone(),
            health: health.clone(),
            reload: Some({
                let r = reloader.clone();
                Arc::new(move || r.reload("POST /admin/reload"))
            }),
            request_timeout: gw.config.admin.request_timeout,
            max_connections: gw.config.admin.max_connections,
        };
        let st = admin_stop.clone();
        admin_thread = Some(
            std::thread::Builder::new()
                .name("admin".into())
                .spawn(move || crate::observe::admin::serve(l, admin, st))?,
        );
        let (h, st, every) = (
            handle.clone(),
            admin_stop.clone(),
            gw.config.admin.upkeep_interval,
        );
        std::thread::Builder::new()
            .name("upkeep".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    std::thread::sleep(every);
                    h.run_upkeep();
                }
            })?;
    }

    // Workers.
    let started = Arc::new(AtomicUsize::new(0));
    let slots: Arc<std::sync::Mutex<Vec<Option<WorkerInit>>>> = Arc::new(std::sync::Mutex::new(
        listeners.into_iter().zip(inboxes).map(Some).collect(),
    ));
    let rt = &gw.config.runtime;
    // The slots each worker ring gets, decided once for all of them.
    let fixed = match driver::fixed_files_for_kernel(rt.fixed_files) {
        (0, Some(why)) => {
            tracing::info!(fixed_files = rt.fixed_files, "runtime.fixed_files {why}");
            0
        }
        (n, Some(why)) => {
            tracing::warn!(fixed_files = rt.fixed_files, "runtime.fixed_files: {why}");
            n
        }
        (n, None) => n,
    };
    let handles = {
        let (gw, started, slots) = (gw.clone(), started.clone(), slots.clone());
        let per_worker = series.workers.clone();
        driver::spawn_runtimes(
            "worker",
            workers,
            rt.driver,
            rt.uring_entries,
            fixed,
            rt.pin_workers,
            move |i, kind| {
                let gw = gw.clone();
                let started = started.clone();
                let taken = slots.lock().ok().and_then(|mut s| s[i].take());
                let my_series = per_worker[i].clone();
                async move {
                    let Some((listener, inbox)) = taken else {
                        return;
                    };
                    metrics::gauge!(crate::observe::names::WORKERS, "driver" => kind.as_str())
                        .increment(1.0);
                    if kind == driver::DriverKind::IoUring
                        && fixed > 0
                        && monoio::fixed_files_registered() == 0
                    {
                        tracing::warn!(
                            worker = i,
                            fixed_files = fixed,
                            "io_uring refused a table of registered files (runtime.fixed_files): \
                             connections use plain descriptors"
                        );
                    }
                    let state = WorkerState::new(gw, i, my_series);
                    worker_main(Rc::new(state), listener, inbox, started).await;
                }
            },
        )?
    };

    // Wait until every worker accepts, then announce readiness.
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.load(Ordering::Acquire) < workers {
        anyhow::ensure!(
            Instant::now() < deadline,
            "workers did not start within 10s"
        );
        anyhow::ensure!(
            !handles.iter().any(|h| h.is_finished()),
            "a worker exited during start-up"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    health.set_ready();
    {
        let (endpoints, upstreams) = (gw.endpoints_summary(), gw.upstreams_summary());
        let c = &gw.config;
        let admin = admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
        // "off", "on", or "on, client certificates required|optional".
        let tls = c.listen.tls.as_ref().map_or_else(
            || "off".to_string(),
            |t| match t.client_auth {
                crate::tls::ClientAuth::Off => "on".to_string(),
                a => format!("on, client certificates {}", a.as_str()),
            },
        );
        tracing::info!(listen = %listen_addr, tls = %tls, admin = %admin, workers, endpoints = %endpoints, upstreams = %upstreams, "tollgate ready");
    }
    if let Some(path) = &opts.ready_file {
        write_ready_file(path, listen_addr, Some(admin_addr))?;
    }

    // Wait for a signal. SIGHUP reloads the config file (here, on this thread: a reload may block
    // on the workers' acknowledgements, which a worker thread must never do).
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    let mut sig = None;
    for s in signals.forever() {
        if s == signal_hook::consts::SIGHUP {
            // On a thread of its own, so a SIGTERM right after is not kept waiting behind it
            // (reloads take turns inside the reloader). The outcome is logged and counted there.
            let r = reloader.clone();
            let spawned = std::thread::Builder::new()
                .name("reload".into())
                .spawn(move || {
                    let _ = r.reload("SIGHUP");
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a reload thread: SIGHUP ignored");
            }
            continue;
        }
        sig = Some(s);
        break;
    }
    let signal = match sig {
        Some(signal_hook::consts::SIGTERM) => "SIGTERM",
        Some(signal_hook::consts::SIGINT) => "SIGINT",
        _ => "other",
    };
    // The drain follows the running config (a reload may have changed it).
    let gw = reloader.current();
    tracing::info!(
        signal,
        drain_timeout_ms = gw.config.shutdown.drain_timeout.as_millis() as u64,
        "shutting down"
    );
    health.set_draining();
    shutdown.store(true, Ordering::Release);
    let deadline = Instant::now() + gw.config.shutdown.drain_timeout + Duration::from_millis(500);
    while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if handles.iter().any(|h| !h.is_finished()) {
        tracing::warn!("drain timeout reached with requests in flight; exiting");
    }
    // Every worker that finished has handed its audit records over: write, flush, fsync.
    gw.audit.close();
    // `traffic.redis`: the last counts go out and this instance leaves the fleet's split.
    gw.traffic.leave(Duration::from_secs(1));
    // The spans of the drain too: the exporter sends what it holds (at most a few seconds).
    if let Some(x) = &gw.spans {
        x.close(Duration::from_secs(5));
    }
    // The admin listener answers (/readyz: 503) through the drain, then closes: its accept loop
    // sees the flag within 50 ms. Admin connections still open end with the process.
    admin_stop.store(true, Ordering::Release);
    if let Some(t) = admin_thread {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// Writes `{"listen":…,"admin":…,"pid":…}` atomically (temp file + rename), so a reader never
/// sees a partial file. `admin: None` omits the key (processes without an admin listener).
pub fn write_ready_file(
    path: &std::path::Path,
    listen: SocketAddr,
    admin: Option<Option<SocketAddr>>,
) -> anyhow::Result<()> {
    let admin = match admin {
        None => String::new(),
        Some(None) => ",\"admin\":null".to_string(),
        Some(Some(a)) => format!(",\"admin\":\"{a}\""),
    };
    let text = format!(
        "{{\"listen\":\"{listen}\"{admin},\"pid\":{}}}\n",
        std::process::id()
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// How long a worker waits, after cutting its requests at the drain deadline, for them to be
/// recorded (they end at their next poll; the rest of the 500 ms `run` allows is margin).
const CUT_GRACE: Duration = Duration::from_millis(200);

/// One worker: accept loop, shutdown watcher, per-worker timers; then the drain.
async fn worker_main(
    w: Rc<WorkerState>,
    listener: std::net::TcpListener,
    inbox: Inbox,
    started: Arc<AtomicUsize>,
) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = w.index, error = %e, "cannot register listener");
            return;
        }
    };
    // Control messages (revocations from other workers): one task awaiting its inbox.
    match inbox.register() {
        Ok(inbox) => {
            monoio::spawn(w.clone().run_control(inbox));
        }
        Err(e) => {
            tracing::error!(worker = w.index, error = %e, "cannot register the control channel");
            return;
        }
    }
    // Watcher: the only place that polls the process-wide flag; also sweeps per-worker state.
    {
        let w = w.clone();
        monoio::spawn(async move {
            let mut ticks = 0u64;
            while !w.gw().shutdown.load(Ordering::Acquire) {
                monoio::time::sleep(Duration::from_millis(50)).await;
                w.shutdown.tick(Instant::now());
                w.access.flush();
                w.flush_audit();
                w.traffic.send_counted();
                ticks += 1;
                // Every second: idle upstream connections that expired or were closed by the
                // upstream go (upstreams close idle connections after a few seconds).
                if ticks % 20 == 0 {
                    // The pool is ordered like the current config (`install` re-keys it).
                    let gw = w.gw();
                    w.pool.borrow_mut().sweep(Instant::now(), |i, why| {
                        w.pool_discarded(&gw, gw.slot_upstream(i), why)
                    });
                    w.publish_token_cache();
                }
                if ticks % 200 == 0 {
                    w.sweep(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()),
                    );
                }
            }
            w.shutdown.fire();
        });
    }
    started.fetch_add(1, Ordering::AcqRel);
    loop {
        let accepted = monoio::select! {
            a = listener.accept() => a,
            _ = w.shutdown.wait() => break,
        };
        let stream = match accepted {
            Ok((s, _peer)) => s,
            Err(e) => {
                tracing::warn!(worker = w.index, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        w.metrics.connections_accepted.increment(1);
        // Read per connection: a reload may change the limit.
        let max_conns = w.gw().config.listen.max_connections_per_worker;
        if w.connections.get() >= max_conns {
            let w = w.clone();
            monoio::spawn(async move { refuse_connection(&w, stream).await });
            continue;
        }
        // Counted here, before the task first runs: the accept loop may take a whole burst of
        // queued connections without yielding, and each must see the ones before it.
        w.connections.set(w.connections.get() + 1);
        w.metrics.connections_open.increment(1.0);
        let w = w.clone();
        monoio::spawn(async move {
            if let Some(stream) = crate::tls::serving(&w, stream).await {
                crate::proxy::serve(w.clone(), stream).await;
            }
            w.connections.set(w.connections.get() - 1);
            w.metrics.connections_open.decrement(1.0);
        });
    }
    drop(listener);
    // Drain: in-flight requests finish; idle connections closed when the signal fired.
    let deadline = Instant::now() + w.gw().config.shutdown.drain_timeout;
    while w.connections.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
        w.access.flush();
        w.flush_audit();
    }
    if w.connections.get() > 0 {
        // Requests still in flight (with audit on) are cut now and recorded as cut: they get
        // a moment to run their record phase, well within the 500 ms `run` allows past the
        // deadline before it closes the audit log.
        w.cut.fire();
        let cut_by = Instant::now() + CUT_GRACE;
        while w.connections.get() > 0 && Instant::now() < cut_by {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    w.access.flush();
    w.flush_audit();
    w.traffic.send_counted();
}

/// Over `listen.max_connections_per_worker`: a plain listener answers 503 and closes; a TLS
/// listener closes (a TLS client could not read a plaintext answer).
async fn refuse_connection(w: &WorkerState, stream: monoio::net::TcpStream) {
    use monoio::io::AsyncWriteRentExt;
    w.metrics.rejected(crate::error::Kind::TooManyConnections);
    // A TLS listener's clients expect a handshake, not a plaintext 503: just close.
    if w.gw().config.listen.tls.is_some() {
        return;
    }
    let mut out = Vec::new();
    w.gw()
        .rejects
        .render_bare(&mut out, crate::error::Kind::TooManyConnections);
    let mut stream = stream;
    let _ = monoio::time::timeout(Duration::from_secs(1), stream.write_all(out)).await;
    // A write still in flight (a client that does not read) would hold the socket open: end it.
    // SAFETY: shutdown on the socket this task owns; it is closed right after.
    unsafe {
        libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&stream), libc::SHUT_RDWR);
    }
}
