//! What a reload may change, and how to say what it changed. Pure functions over two `Config`s;
//! the reload itself (build, prepare on every worker, commit) lives with the gateway.
//!
//! Keys bound to threads, sockets or the process (the worker count, the listener's address and
//! backlog, the runtime, the admin listener, the log subscriber) cannot change in a running
//! process: a reload keeps their running values and says so. A session key generated at start is
//! kept (a new random one would end every session); a configured key that changes rotates: the
//! new key seals, the old one still opens (see `SessionSealer::with_previous`).

use std::fmt::Write as _;

use super::{Config, KeySource};

/// Keeps in `new` the running values of the keys a reload cannot change, and a generated session
/// key; returns the keys that were changed in the file but need a restart.
pub fn carry_over(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($key:literal, $($field:tt)+) => {
            if format!("{:?}", old.$($field)+) != format!("{:?}", new.$($field)+) {
                kept.push($key);
                new.$($field)+ = old.$($field)+.clone();
            }
        };
    }
    keep!("workers", workers);
    keep!("listen.address", listen.addr);
    keep!("listen.backlog", listen.backlog);
    keep!("runtime.driver", runtime.driver);
    keep!("runtime.pin_workers", runtime.pin_workers);
    keep!("runtime.uring_entries", runtime.uring_entries);
    keep!("runtime.fixed_files", runtime.fixed_files);
    keep!("admin.address", admin.addr);
    keep!("admin.upkeep_interval", admin.upkeep_interval);
    keep!("admin.request_timeout", admin.request_timeout);
    keep!("admin.max_connections", admin.max_connections);
    keep!("log.level", log.level);
    keep!("log.format", log.json);
    if old.session.key_source == KeySource::Generated
        && new.session.key_source == KeySource::Generated
    {
        new.session.key = old.session.key;
    }
    kept
}

/// Whether the session key changed (the old one must keep opening tokens for one `session.ttl`).
pub fn key_rotated(old: &Config, new: &Config) -> bool {
    old.session.key != new.session.key
}

/// One line saying what a reload changes, by name: `upstreams +a -b ~c; servers +/x -/y ~/z`
/// (`~`: changed), or `no route changes`.
pub fn summary(old: &Config, new: &Config) -> String {
    let mut out = String::new();
    let mut part = |what: &str, old: Vec<(String, String)>, new: Vec<(String, String)>| {
        let mut items = Vec::new();
        for (n, v) in &new {
            match old.iter().find(|(o, _)| o == n) {
                None => items.push(format!("+{n}")),
                Some((_, ov)) if ov != v => items.push(format!("~{n}")),
                _ => {}
            }
        }
        for (o, _) in &old {
            if !new.iter().any(|(n, _)| n == o) {
                items.push(format!("-{o}"));
            }
        }
        if !items.is_empty() {
            if !out.is_empty() {
                out.push_str("; ");
            }
            let _ = write!(out, "{what} {}", items.join(" "));
        }
    };
    // `Debug` redacts header values; a hash of them (never printed) makes a changed credential
    // show as a changed upstream too.
    let upstreams = |c: &Config| {
        c.upstreams
            .iter()
            .map(|u| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                u.headers.hash(&mut h);
                (u.name.clone(), format!("{u:?} {:x}", h.finish()))
            })
            .collect::<Vec<_>>()
    };
    // A server is its path; it changes when its upstream (by name) does.
    let servers = |c: &Config| {
        c.servers
            .iter()
            .map(|s| (s.path.clone(), format!("{:?}", s.describe(&c.upstreams))))
            .collect::<Vec<_>>()
    };
    part("upstreams", upstreams(old), upstreams(new));
    part("servers", servers(old), servers(new));
    if out.is_empty() {
        out.push_str("no route changes");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Config {
        super::super::load_str(yaml).expect("valid config")
    }

    #[test]
    fn restart_only_keys_keep_their_running_values() {
        let old = load("workers: 2\nlisten:\n  address: 127.0.0.1:8080\n");
        let mut new = load(
            "workers: 4\nlisten:\n  address: 127.0.0.1:9999\n  max_connections_per_worker: 7\n",
        );
        let kept = carry_over(&old, &mut new);
        assert_eq!(kept, vec!["workers", "listen.address"]);
        assert_eq!(new.workers.get(), 2);
        assert_eq!(new.listen.addr, old.listen.addr);
        assert_eq!(
            new.listen.max_connections_per_worker, 7,
            "reloadable keys change"
        );
    }

    #[test]
    fn a_generated_session_key_survives_a_reload() {
        let old = load("");
        let mut new = load("");
        assert_eq!(old.session.key_source, KeySource::Generated);
        assert_ne!(old.session.key, new.session.key);
        carry_over(&old, &mut new);
        assert_eq!(old.session.key, new.session.key);
        assert!(!key_rotated(&old, &new));
    }

    #[test]
    fn the_summary_names_what_changed() {
        let old = load(
            "upstreams:\n  - name: a\n    url: http://127.0.0.1:1/mcp\n  - name: b\n    url: http://127.0.0.1:2/mcp\nservers:\n  - path: /mcp\n    upstream: a\n  - path: /b\n    upstream: b\n",
        );
        let new = load(
            "upstreams:\n  - name: c\n    url: http://127.0.0.1:3/mcp\n  - name: a\n    url: http://127.0.0.1:9/mcp\nservers:\n  - path: /mcp\n    upstream: a\n  - path: /c\n    upstream: c\n",
        );
        assert_eq!(summary(&old, &new), "upstreams +c ~a -b; servers +/c -/b");
        assert_eq!(summary(&old, &old), "no route changes");
        // A header value alone (a rotated credential) is a change too, and is not shown.
        let mut rotated = old.clone();
        rotated.upstreams[0].headers = vec![("x-api-key".into(), "s3cret-2".into())];
        let said = summary(&old, &rotated);
        assert_eq!(said, "upstreams ~a");
        assert!(!said.contains("s3cret"));
    }
}
