//! `workers`, `runtime`, `log`, `limits` and `shutdown`: numbers, sizes and durations.

use super::*;

#[test]
fn workers_auto_or_number() {
    assert_eq!(ok("workers: auto").workers, auto_workers());
    assert_eq!(ok("workers: 1").workers.get(), 1);
    assert_eq!(ok("workers: 1024").workers.get(), 1024);
    for bad in [
        "workers: 0",
        "workers: -1",
        "workers: 1025",
        "workers: \"4\"",
        "workers: Auto",
        "workers: 2.5",
        "workers: [1]",
    ] {
        let e = err(bad);
        assert!(
            e.starts_with("workers: expected auto or a number from 1 to 1024, got "),
            "{e}"
        );
    }
}

#[test]
fn driver_and_log_format() {
    assert_eq!(
        ok("runtime: {driver: legacy}").runtime.driver,
        Driver::Legacy
    );
    assert_eq!(ok("runtime: {driver: auto}").runtime.driver, Driver::Auto);
    assert_eq!(
        err("runtime: {driver: epoll}"),
        r#"runtime.driver: expected auto, io_uring or legacy, got "epoll""#
    );
    assert!(!ok("log: {format: text}").log.json);
    assert_eq!(
        err("log: {format: xml}"),
        r#"log.format: expected text or json, got "xml""#
    );
    assert!(err("log: {level: \"\"}").starts_with("log.level: must not be empty"));
    assert!(err("log: {level: \"info,a=notalevel\"}")
        .starts_with("log.level: not a log filter directive"));
    assert_eq!(
        err("runtime: {pin_workers: yes}"),
        r#"runtime.pin_workers: expected true or false, got "yes""#
    );
    assert!(err("runtime: {uring_entries: 65536}")
        .starts_with("runtime.uring_entries: expected a whole number from 1 to 32768"));
    assert!(err("runtime: {fixed_files: 2000000}")
        .starts_with("runtime.fixed_files: expected a whole number from 0 to 1048576"));
}

#[test]
fn sizes_and_durations_in_context() {
    assert_eq!(
        err("limits: {max_body_bytes: lots}"),
        r#"limits.max_body_bytes: expected a size like 4MiB or a whole number of bytes, got "lots""#
    );
    assert!(err("limits: {max_body_bytes: 4MB}").contains("ambiguous size unit"));
    assert!(err("limits: {max_body_bytes: -5}").contains("got -5"));
    assert_eq!(
        err("limits: {max_body_bytes: 0}"),
        "limits.max_body_bytes: must be at least 1 bytes, got 0"
    );
    assert_eq!(
        ok("limits: {max_header_bytes: \"32768\"}")
            .limits
            .max_header_bytes,
        32768
    );
    assert!(err("limits: {idle_timeout: 30}").contains("a bare number is ambiguous"));
    assert_eq!(
        err("limits: {write_timeout: 0s}"),
        "limits.write_timeout: must be at least 1ms, got 0s"
    );
    assert_eq!(
        err("session: {ttl: 500ms}"),
        "session.ttl: must be at least 1s, got 500ms"
    );
    assert!(err("limits: {header_read_timeout: [1s]}").contains("got a list"));
}

#[test]
fn the_request_line_limit_fits_inside_the_head_limit() {
    let line = |text: &str| ok(text).limits.max_request_line_bytes;
    // Unset: the default, or the head limit when that is smaller.
    assert_eq!(line("limits: {max_header_bytes: 64KiB}"), 8192);
    assert_eq!(line("limits: {max_header_bytes: 2KiB}"), 2048);
    assert_eq!(
        line("limits: {max_header_bytes: 2KiB, max_request_line_bytes: 2KiB}"),
        2048
    );
    assert_eq!(
        err("limits: {max_header_bytes: 2KiB, max_request_line_bytes: 4KiB}"),
        "limits.max_request_line_bytes: 4096 bytes is more than limits.max_header_bytes (2048), \
         which the request line is part of"
    );
    assert_eq!(
        err("limits: {max_request_line_bytes: 16}"),
        "limits.max_request_line_bytes: must be at least 32 bytes, got 16"
    );
}

#[test]
fn zero_is_refused_where_it_makes_no_sense() {
    let e = errs(
        "listen: {backlog: 0, max_connections_per_worker: 0}\n\
         limits: {max_headers: 0, max_json_depth: 0, max_batch_len: 0, max_header_bytes: 0, header_read_timeout: 0ms, body_read_timeout: 0s, idle_timeout: 0m}\n\
         admin: {upkeep_interval: 0s, request_timeout: 0s, max_connections: 0}\n\
         runtime: {uring_entries: 0}\n",
    );
    let paths: Vec<&str> = e.iter().filter_map(|l| l.split(':').next()).collect();
    assert_eq!(
        paths,
        vec![
            "listen.backlog",
            "listen.max_connections_per_worker",
            // File order, not the order the reader checks them in.
            "limits.max_headers",
            "limits.max_json_depth",
            "limits.max_batch_len",
            "limits.max_header_bytes",
            "limits.header_read_timeout",
            "limits.body_read_timeout",
            "limits.idle_timeout",
            "admin.upkeep_interval",
            "admin.request_timeout",
            "admin.max_connections",
            "runtime.uring_entries",
        ],
        "{e:#?}"
    );
    // Zero is meaningful here: no drain, no pooled connections.
    ok("shutdown: {drain_timeout: 0s}\nupstreams: [{name: d, url: \"builtin:demo\", max_idle_per_worker: 0}]\nservers: [{path: /mcp, upstream: d}]");
}
