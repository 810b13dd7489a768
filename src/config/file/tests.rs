//! The file reader's tests, one file per config section (`tests/`), and the helpers they share.

use super::*;

mod auth;
mod credentials;
mod limits;
mod listen;
mod problems;
mod session;
mod tls;
mod traffic;
mod upstreams;
mod whole_file;

/// A fresh scratch directory for one test (`tollgate-<name>-<pid>-<n>` in the temp dir),
/// removed with what it holds when dropped. Shared with the section modules' own tests (`rego`).
pub(super) struct Scratch(std::path::PathBuf);

impl Scratch {
    pub(super) fn new(name: &str) -> Scratch {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tollgate-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Config, Vec<String>> {
    load_str_with_env(text, &no_env).map_err(|e| e.0)
}

fn ok(text: &str) -> Config {
    match load(text) {
        Ok(c) => c,
        Err(e) => panic!("expected {text:?} to load, got:\n{}", e.join("\n")),
    }
}

/// The problems for `text`, which must not load.
fn errs(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected {text:?} to be refused"),
        Err(e) => e,
    }
}

/// Exactly one problem, returned.
fn err(text: &str) -> String {
    let e = errs(text);
    assert_eq!(e.len(), 1, "expected one problem for {text:?}, got {e:#?}");
    e.into_iter().next().unwrap_or_default()
}

/// `render_effective`'s output without the redacted (generated) session key line.
fn loadable(shown: &str) -> String {
    shown
        .lines()
        .filter(|l| !l.trim_start().starts_with("key: \"<redacted"))
        .map(|l| format!("{l}\n"))
        .collect()
}
