//! Hot reload: re-read the config file, and if it is valid, build the new gateway beside the
//! running one, prepare it on every worker, then commit it on every worker. New requests use it
//! from the commit on; requests and streams in flight finish on the config they began with
//! (`state::Generation`); nothing is closed except idle upstream connections to targets that
//! changed. A config with problems is refused with every problem, and the running one stays.
//!
//! Triggered by SIGHUP (the signal thread) and `POST /admin/reload` (an admin thread): plain
//! threads, which may block on the workers' acknowledgements. One reload at a time.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge};

use crate::config::reload::{carry_over, summary};
use crate::observe::admin::HealthSlot;
use crate::observe::names;

use super::control::{Control, Prepared};
use super::state::Gateway;

/// How long a reload waits for every worker to acknowledge each phase.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Reloader {
    /// The config file the gateway was started with; `None`: built-in defaults.
    path: Option<PathBuf>,
    /// The running gateway; locked only to read or swap it, so a shutdown never waits behind a
    /// reload.
    current: Mutex<Arc<Gateway>>,
    /// Held for a whole reload: one at a time.
    running: Mutex<()>,
    health: Arc<HealthSlot>,
    ok: Counter,
    error: Counter,
    last_success: Gauge,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Reloader {
    /// For a gateway just started from `path` (its load time is the first success).
    pub fn new(path: Option<PathBuf>, gw: Arc<Gateway>, health: Arc<HealthSlot>) -> Self {
        let counter = |result: &'static str| {
            let c = metrics::counter!(names::CONFIG_RELOADS_TOTAL, "result" => result);
            c.absolute(0);
            c
        };
        let last_success = metrics::gauge!(names::CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS);
        last_success.set(unix_now());
        Reloader {
            path,
            current: Mutex::new(gw),
            running: Mutex::new(()),
            health,
            ok: counter("ok"),
            error: counter("error"),
            last_success,
        }
    }

    /// The running gateway.
    pub fn current(&self) -> Arc<Gateway> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the config file and installs it; `trigger` names what asked (for the log).
    /// `Ok`: what changed (one line). `Err`: every problem, one a line; the running config stays.
    pub fn reload(&self, trigger: &str) -> Result<String, String> {
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.current();
        let refused = |why: String| {
            self.error.increment(1);
            tracing::error!(trigger, problems = %why, "config reload refused: the running config stays");
            Err(why)
        };
        if cur.shutdown.load(std::sync::atomic::Ordering::Acquire) {
            return refused("the gateway is shutting down".into());
        }
        let Some(path) = &self.path else {
            return refused(
                "started on built-in defaults, with no config file to re-read: start with --config FILE to reload"
                    .into(),
            );
        };
        let mut config = match crate::config::load_file(path) {
            Ok(c) => c,
            Err(e) => return refused(e.to_string()),
        };
        let restart = carry_over(&cur.config, &mut config);
        let changes = summary(&cur.config, &config);
        let new = match cur.rebuild(config) {
            Ok(g) => g,
            Err(e) => return refused(format!("{e:#}")),
        };
        // A changed `audit:` opens its sinks now (a path that cannot be written refuses the
        // reload); the writer switches to them just before the commit, in order with the records.
        let audit = if new.config.audit != cur.config.audit && new.config.audit.enabled {
            match crate::observe::audit::Sinks::open(&new.config.audit) {
                Ok(s) => Some(s),
                Err(e) => return refused(format!("audit: {e:#}")),
            }
        } else {
            None
        };
        // Phase one: every worker holds the new gateway. A worker that cannot take it in time
        // aborts the reload for all.
        let prepared = cur
            .control
            .broadcast(Control::Prepare(Prepared(new.clone())), None)
            .wait(ACK_TIMEOUT);
        if let Err(e) = prepared {
            let _ = cur
                .control
                .broadcast(Control::Abort, None)
                .wait(ACK_TIMEOUT);
            return refused(format!("not every worker prepared the new config: {e}"));
        }
        if cur.shutdown.load(std::sync::atomic::Ordering::Acquire) {
            let _ = cur
                .control
                .broadcast(Control::Abort, None)
                .wait(ACK_TIMEOUT);
            return refused("the gateway began shutting down during the reload".into());
        }
        // The writer switches sinks before any worker formats a record under the new config (a
        // writer first started here is running when the first one arrives).
        if let Some(sinks) = audit {
            new.audit.swap(sinks);
        }
        // Phase two: every worker switches. Messages are queued in order, so a worker slower
        // than the timeout still switches when it gets to it; one whose queue refused the commit
        // never will, and the reload says so.
        let committed = cur
            .control
            .broadcast(Control::Commit, None)
            .wait(ACK_TIMEOUT);
        self.health.replace(new.health.clone());
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = new;
        if let Err(e) = committed {
            if e.undeliverable > 0 {
                return refused(format!(
                    "the new config was committed on some workers only ({e}): reload again"
                ));
            }
            tracing::warn!(trigger, error = %e, "not every worker confirmed the new config in time");
        }
        self.ok.increment(1);
        self.last_success.set(unix_now());
        let mut said = changes.clone();
        if !restart.is_empty() {
            let keys = restart.join(", ");
            tracing::warn!(trigger, keys = %keys, "changed keys that need a restart keep their running values");
            said.push_str(&format!(" (need a restart, kept: {keys})"));
        }
        tracing::info!(trigger, file = %path.display(), changes = %changes, "config reloaded");
        Ok(said)
    }
}
