//! The upstream families of `/metrics` (up, circuit breakers, replicas), written at scrape
//! time from `Health`: the workers' lock-free state is read, nothing is recorded per request.

use std::sync::atomic::Ordering;

use super::super::names;
use super::Health;

impl Health {
    /// `tollgate_upstream_up{upstream}`: 1 unless the upstream is known-down (its failure count
    /// reached `unhealthy_after`), written at scrape time.
    pub fn render_up(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP {} 1 unless the upstream is known-down (upstreams[].unhealthy_after consecutive \
             connect failures or timeouts, no success since).\n# TYPE {} gauge",
            names::UPSTREAM_UP,
            names::UPSTREAM_UP
        );
        for h in &self.upstreams {
            let up = if h.is_down() { 0 } else { 1 };
            let _ = writeln!(
                out,
                "{}{{upstream=\"{}\"}} {up}",
                names::UPSTREAM_UP,
                h.name
            );
        }
        self.render_circuits(out);
        self.render_replicas(out);
    }

    /// `tollgate_upstream_replica_healthy{upstream,replica}`,
    /// `tollgate_upstream_replica_circuit_state{upstream,replica}` and
    /// `tollgate_upstream_health_checks_total{upstream,replica,result}` and
    /// `tollgate_upstream_replica_in_flight{upstream,replica}` of upstreams with several
    /// replicas, written at scrape time.
    fn render_replicas(&self, out: &mut String) {
        use std::fmt::Write as _;
        let families = [
            (
                names::UPSTREAM_REPLICA_HEALTHY,
                "gauge",
                "1 while the replica passes its health check (upstreams[].health).",
            ),
            (
                names::UPSTREAM_REPLICA_CIRCUIT_STATE,
                "gauge",
                "The replica's circuit breaker: 0 closed, 1 open, 2 half-open.",
            ),
            (
                names::UPSTREAM_HEALTH_CHECKS_TOTAL,
                "counter",
                "Health check probes of upstream replicas, by result.",
            ),
            (
                names::UPSTREAM_REPLICA_IN_FLIGHT,
                "gauge",
                "Requests in flight to the replica on every worker, from its pick to the end of its response (event streams included).",
            ),
        ];
        for (i, (n, kind, help)) in families.iter().enumerate() {
            let _ = writeln!(out, "# HELP {n} {help}\n# TYPE {n} {kind}");
            for h in &self.upstreams {
                for r in &h.replicas {
                    let labels = format!("upstream=\"{}\",replica=\"{}\"", h.name, r.url);
                    let _ = match i {
                        0 => writeln!(out, "{n}{{{labels}}} {}", u8::from(r.is_healthy())),
                        1 => writeln!(out, "{n}{{{labels}}} {}", r.breaker.state()),
                        3 => writeln!(out, "{n}{{{labels}}} {}", r.in_flight()),
                        _ => writeln!(
                            out,
                            "{n}{{{labels},result=\"passed\"}} {}\n{n}{{{labels},result=\"failed\"}} {}",
                            r.passed.load(Ordering::Relaxed),
                            r.failed.load(Ordering::Relaxed)
                        ),
                    };
                }
            }
        }
    }

    /// `tollgate_upstream_circuit_state{upstream}` and
    /// `tollgate_upstream_circuit_transitions_total{upstream,to}`, written at scrape time from
    /// the breakers (upstreams without one: state 0, no transitions).
    fn render_circuits(&self, out: &mut String) {
        use crate::proxy::breaker::STATE_NAMES;
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP {n} The upstream's circuit breaker: 0 closed, 1 open, 2 half-open.\n# TYPE {n} gauge",
            n = names::UPSTREAM_CIRCUIT_STATE
        );
        for h in &self.upstreams {
            let _ = writeln!(
                out,
                "{}{{upstream=\"{}\"}} {}",
                names::UPSTREAM_CIRCUIT_STATE,
                h.name,
                h.breaker.state()
            );
        }
        let _ = writeln!(
            out,
            "# HELP {n} Circuit breaker state changes, by upstream and the state entered.\n# TYPE {n} counter",
            n = names::UPSTREAM_CIRCUIT_TRANSITIONS_TOTAL
        );
        for h in &self.upstreams {
            for (to, label) in STATE_NAMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{}{{upstream=\"{}\",to=\"{label}\"}} {}",
                    names::UPSTREAM_CIRCUIT_TRANSITIONS_TOTAL,
                    h.name,
                    h.breaker.transitions(to as u8)
                );
            }
        }
    }
}
