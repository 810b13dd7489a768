//! How problems are reported: unknown keys, YAML syntax, merge keys, file order.

use super::*;

#[test]
fn unknown_keys_are_errors_with_hints() {
    assert_eq!(
        err("listen:\n  adress: 1.2.3.4:5"),
        r#"listen.adress: unknown key (did you mean "address"?)"#
    );
    assert_eq!(err("colour: blue"), "colour: unknown key");
    assert_eq!(
        err("upstream: []"),
        r#"upstream: unknown key (did you mean "upstreams"?)"#
    );
    assert_eq!(
        err("upstreams: [{name: a, url: \"builtin:demo\", timeout: 1s}]\nservers: [{path: /m, upstream: a}]"),
        "upstreams[0].timeout: unknown key"
    );
    assert_eq!(err("servers: [{path: /m, upstream: a, extra: 1}]\nupstreams: [{name: a, url: \"builtin:demo\"}]"), "servers[0].extra: unknown key");
    assert_eq!(err("1: x"), "1: unknown key (keys must be strings)");
    assert_eq!(
        err("listen: [a]"),
        "listen: expected a mapping of keys, got a list"
    );
    assert_eq!(
        err("- a\n- b"),
        "(top level): expected a mapping of keys, got a list"
    );
}

#[test]
fn yaml_syntax_errors_have_line_and_column() {
    let e = err("listen:\n  address: \"127.0.0.1:8080\n  backlog: 5\n");
    assert!(e.starts_with("line "), "{e}");
    assert!(e.contains("column"), "{e}");
    let e = err("a: 1\n b: 2\n");
    assert!(e.starts_with("line 2, column"), "{e}");
    let e = err("listen: {address: \"127.0.0.1:1\"}\nlisten: {}\n");
    assert!(e.contains("duplicate"), "{e}");
    let e = err("workers: !custom 3");
    assert!(e.contains("tagged"), "{e}");
}

#[test]
fn merge_keys_work() {
    // Anchors are allowed anywhere a value is; merge keys (<<) are applied before validation.
    let c = ok(r#"
upstreams:
  - &base {name: a, url: "builtin:demo", connect_timeout: 1s}
  - <<: *base
    name: b
servers: [{path: /a, upstream: a}, {path: /b, upstream: b}]
"#);
    assert_eq!(c.upstreams[1].name, "b");
    assert_eq!(c.upstreams[1].connect_timeout, Duration::from_secs(1));
}

#[test]
fn many_problems_are_reported_together_in_file_order() {
    let text = r#"
workers: many
listen:
  adress: "127.0.0.1:8080"
  backlog: -3
limits:
  max_body_bytes: lots
  idle_timeout: 60
session:
  key: "abc"
runtime: {driver: uring}
upstreams:
  - name: demo
    url: builtin:demo
  - name: mine
    url: https://example.com/mcp
    tls: {ca_file: /nonexistent/ca.pem}
servers:
  - path: mcp
    upstream: dmeo
"#;
    let e = errs(text);
    assert_eq!(
        e,
        vec![
            r#"workers: expected auto or a number from 1 to 1024, got "many""#,
            r#"listen.adress: unknown key (did you mean "address"?)"#,
            "listen.backlog: expected a whole number from 1 to 65535, got -3",
            r#"limits.max_body_bytes: expected a size like 4MiB or a whole number of bytes, got "lots""#,
            "limits.idle_timeout: expected a duration with a unit like 250ms, 10s, 5m or 24h, got 60 (a bare number is ambiguous)",
            "session.key: expected 64 hex characters (32 bytes, e.g. from `openssl rand -hex 32`), got 3 characters",
            r#"runtime.driver: expected auto, io_uring or legacy, got "uring""#,
            "upstreams[1].tls.ca_file: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)",
            r#"servers[0].path: must start with '/', got "mcp""#,
            r#"servers[0].upstream: no upstream named "dmeo" (known: demo, mine)"#,
        ]
    );
    let shown = ConfigErrors(e).to_string();
    assert_eq!(shown.lines().count(), 10);
}

#[test]
fn problems_follow_the_file_not_the_order_sections_are_read_in() {
    // Sections, keys and list items in an order unlike the reader's: the problems follow the file.
    let text = r#"
servers:
  - upstream: nope
    path: mcp
upstreams:
  - url: "http://h"
    headers: {x.b: "${X}", Host: h}
  - name: ok
    url: "builtin:demo"
    bogus: 1
limits:
  idle_timeout: 60
  max_body_bytes: lots
workers: many
session: {ttl: 1, key: 5}
listen: {address: "nowhere"}
"#;
    assert_eq!(
        errs(text),
        vec![
            // (servers[0].upstream is not reported: upstreams[0] has no usable name.)
            r#"servers[0].path: must start with '/', got "mcp""#,
            "upstreams[0].url: URL has no path; give the upstream's MCP endpoint path, e.g. http://h/mcp (write http://h/ if the endpoint really is /)",
            "upstreams[0].headers.x.b: ${X} is not expanded; write ${env:X} to read the environment variable X (or $${X} to send the text ${X} as it is)",
            r#"upstreams[0].headers.Host: "host" is set by the gateway and cannot be configured"#,
            // A missing key sorts after the keys its mapping has.
            "upstreams[0].name: missing (required)",
            "upstreams[1].bogus: unknown key",
            "limits.idle_timeout: expected a duration with a unit like 250ms, 10s, 5m or 24h, got 60 (a bare number is ambiguous)",
            r#"limits.max_body_bytes: expected a size like 4MiB or a whole number of bytes, got "lots""#,
            r#"workers: expected auto or a number from 1 to 1024, got "many""#,
            "session.ttl: expected a duration with a unit like 250ms, 10s, 5m or 24h, got 1 (a bare number is ambiguous)",
            "session.key: expected 64 hex characters in quotes",
            r#"listen.address: expected an address like 127.0.0.1:8080, [::1]:8080 or localhost:8080, got "nowhere""#,
        ]
    );
}
