//! Fuzzes the JSON-RPC scanner with arbitrary bytes: it must never panic, and whenever it accepts
//! a body, serde_json and sonic-rs must both parse it and agree with every field it read; when it
//! refuses, its "not JSON" verdict must match serde_json's (see `oracle::check_scan`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/jsonrpc/mod.rs"]
#[allow(dead_code)]
mod jsonrpc;

#[path = "../../tests/support/scanner_oracle.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = jsonrpc::scan(data, &jsonrpc::ScanLimits::default()) {
        // Rendering an error must not panic either.
        let _ = e.to_string();
    }
    if let Err(why) = oracle::check_scan(data) {
        panic!(
            "scanner disagrees with a full parser: {why}\ninput: {:?}",
            String::from_utf8_lossy(data)
        );
    }
});
