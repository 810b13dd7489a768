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
