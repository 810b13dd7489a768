use super::*;

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

#[test]
fn empty_file_runs_the_demo_with_every_default() {
    for text in ["", "{}", "# only a comment\n", "---\n"] {
        let c = ok(text);
        assert_eq!(c.workers, auto_workers());
        assert_eq!(c.listen.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.listen.backlog, 1024);
        assert_eq!(c.listen.max_connections_per_worker, 10_000);
        assert_eq!(c.listen.allowed_hosts, HostRule::Loopback);
        assert_eq!(
            c.listen.allowed_origins,
            OriginRule {
                loopback: true,
                list: vec![]
            }
        );
        assert_eq!(c.limits.max_header_bytes, 16_384);
        assert_eq!(c.limits.max_request_line_bytes, 8192);
        assert_eq!(c.limits.max_headers, 64);
        assert_eq!(c.limits.max_body_bytes, 4 << 20);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.body_read_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.write_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.max_json_depth, 64);
        assert_eq!(c.limits.max_batch_len, 100);
        assert_eq!(
            c.admin.addr.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9090")
        );
        assert_eq!(c.admin.upkeep_interval, Duration::from_secs(5));
        assert_eq!(c.admin.request_timeout, Duration::from_secs(5));
        assert_eq!(c.admin.max_connections, 64);
        assert_eq!(c.session.key_source, KeySource::Generated);
        assert_ne!(c.session.key, [0; 32]);
        assert_eq!(c.session.ttl, Duration::from_secs(86_400));
        assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.runtime.driver, Driver::Auto);
        assert!(c.runtime.pin_workers);
        assert_eq!(c.runtime.uring_entries, 1024);
        assert_eq!(c.log.level, "info");
        assert!(!c.log.json);
        assert_eq!(c.upstreams.len(), 1);
        let u = &c.upstreams[0];
        assert_eq!(
            (u.name.as_str(), &u.target),
            ("demo", &UpstreamTarget::BuiltinDemo)
        );
        assert_eq!(u.connect_timeout, Duration::from_secs(2));
        assert_eq!(u.request_timeout, Duration::from_secs(60));
        assert_eq!(u.idle_timeout, Duration::from_secs(4));
        assert_eq!(u.max_idle_per_worker, 256);
        assert_eq!(u.unhealthy_after, 3);
        assert!(u.headers.is_empty());
        assert_eq!(c.servers.len(), 1);
        assert_eq!(
            (c.servers[0].path.as_str(), c.servers[0].primary()),
            ("/mcp", 0)
        );
    }
}

#[test]
fn generated_keys_differ() {
    assert_ne!(ok("").session.key, ok("").session.key);
}

#[test]
fn empty_sections_take_defaults() {
    let c = ok("listen:\nlimits:\nsession:\nruntime:\nlog:\nshutdown:\n");
    assert_eq!(c.listen.addr, defaults::LISTEN);
    assert_eq!(c.admin.addr, Some(defaults::ADMIN));
}

#[test]
fn every_key_is_read() {
    let text = format!(
        r#"
workers: 3
listen:
  address: "0.0.0.0:7000"
  backlog: 10
  max_connections_per_worker: 5
  allowed_hosts: [gw.example.com, "*.internal.example"]
  allowed_origins: ["https://app.example.com", "http://localhost:6274"]
limits:
  max_header_bytes: 8KiB
  max_request_line_bytes: 2KiB
  max_headers: 32
  max_body_bytes: 1048576
  header_read_timeout: 250ms
  body_read_timeout: 1m
  idle_timeout: 2h
  write_timeout: 5s
  max_json_depth: 16
  max_batch_len: 5
admin:
  address: "[::1]:9999"
  upkeep_interval: 1s
  request_timeout: 750ms
  max_connections: 3
session:
  key: "{KEY_HEX}"
  ttl: 1h
shutdown:
  drain_timeout: 0s
runtime:
  driver: io_uring
  pin_workers: false
  uring_entries: 256
log:
  level: "info,tollgate=debug"
  format: json
upstreams:
  - name: b
    url: http://10.0.0.2:3101/mcp?tenant=1
    connect_timeout: 1s
    request_timeout: 2m
    idle_timeout: 10s
    max_idle_per_worker: 0
    unhealthy_after: 5
    headers:
      Authorization: "Bearer t0k3n"
      X-Tenant: "a b"
  - name: a
    url: builtin:demo
servers:
  - path: /z
    upstream: a
  - path: /b/mcp
    upstream: b
"#
    );
    let c = ok(&text);
    assert_eq!(c.workers.get(), 3);
    assert_eq!(c.listen.addr.to_string(), "0.0.0.0:7000");
    assert_eq!(c.listen.backlog, 10);
    assert_eq!(c.listen.max_connections_per_worker, 5);
    assert_eq!(
        c.listen.allowed_hosts,
        HostRule::List(vec!["gw.example.com".into(), "*.internal.example".into()])
    );
    assert_eq!(
        c.listen.allowed_origins,
        OriginRule {
            loopback: false,
            list: vec![
                "https://app.example.com".into(),
                "http://localhost:6274".into()
            ]
        }
    );
    assert_eq!(c.limits.max_header_bytes, 8192);
    assert_eq!(c.limits.max_request_line_bytes, 2048);
    assert_eq!(c.limits.max_headers, 32);
    assert_eq!(c.limits.max_body_bytes, 1 << 20);
    assert_eq!(c.limits.header_read_timeout, Duration::from_millis(250));
    assert_eq!(c.limits.body_read_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(7200));
    assert_eq!(c.limits.write_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.max_json_depth, 16);
    assert_eq!(c.limits.max_batch_len, 5);
    assert_eq!(
        c.admin.addr.map(|a| a.to_string()).as_deref(),
        Some("[::1]:9999")
    );
    assert_eq!(c.admin.upkeep_interval, Duration::from_secs(1));
    assert_eq!(c.admin.request_timeout, Duration::from_millis(750));
    assert_eq!(c.admin.max_connections, 3);
    assert_eq!(c.session.key_source, KeySource::File);
    assert_eq!(c.session.key[1], 1);
    assert_eq!(c.session.key[31], 0x1f);
    assert_eq!(c.session.ttl, Duration::from_secs(3600));
    assert_eq!(c.shutdown.drain_timeout, Duration::ZERO);
    assert_eq!(c.runtime.driver, Driver::IoUring);
    assert!(!c.runtime.pin_workers);
    assert_eq!(c.runtime.uring_entries, 256);
    assert_eq!(c.log.level, "info,tollgate=debug");
    assert!(c.log.json);
    let b = &c.upstreams[0];
    assert_eq!(b.name, "b");
    assert_eq!(
        b.target,
        UpstreamTarget::Http(HttpTarget {
            host: "10.0.0.2".into(),
            port: 3101,
            path: "/mcp?tenant=1".into(),
            authority: "10.0.0.2:3101".into(),
            tls: false,
        })
    );
    assert_eq!(b.connect_timeout, Duration::from_secs(1));
    assert_eq!(b.request_timeout, Duration::from_secs(120));
    assert_eq!(b.idle_timeout, Duration::from_secs(10));
    assert_eq!(b.max_idle_per_worker, 0);
    assert_eq!(b.unhealthy_after, 5);
    assert_eq!(
        b.headers,
        vec![
            ("authorization".to_string(), "Bearer t0k3n".to_string()),
            ("x-tenant".to_string(), "a b".to_string())
        ]
    );
    // Servers sorted by path; indices point into `upstreams` as written.
    let routes: Vec<(&str, usize)> = c
        .servers
        .iter()
        .map(|s| (s.path.as_str(), s.primary()))
        .collect();
    assert_eq!(routes, vec![("/b/mcp", 0), ("/z", 1)]);
}

#[test]
fn host_and_origin_defaults_follow_the_listener() {
    let c = ok("listen: {address: \"0.0.0.0:8080\"}");
    assert_eq!(c.listen.allowed_hosts, HostRule::Any);
    assert!(!c.listen.allowed_origins.loopback);
    let c = ok("listen: {address: \"[::1]:8080\"}");
    assert_eq!(c.listen.allowed_hosts, HostRule::Loopback);
    assert!(c.listen.allowed_origins.loopback);
    let c = ok("listen: {address: \"[::ffff:127.0.0.1]:8080\"}");
    assert_eq!(c.listen.allowed_hosts, HostRule::Loopback);
    // An explicit list replaces the loopback default; `*` means any host.
    let c = ok("listen: {allowed_hosts: [gw.local]}");
    assert_eq!(
        c.listen.allowed_hosts,
        HostRule::List(vec!["gw.local".into()])
    );
    let c = ok("listen: {allowed_hosts: [\"*\"], allowed_origins: [\"*\"]}");
    assert_eq!(c.listen.allowed_hosts, HostRule::Any);
    assert_eq!(
        c.listen.allowed_origins,
        OriginRule {
            loopback: true,
            list: vec!["*".into()]
        }
    );
    let c = ok("listen: {allowed_hosts: []}");
    assert_eq!(c.listen.allowed_hosts, HostRule::Loopback);
}

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

#[test]
fn addresses() {
    assert!(err("listen: {address: \"127.0.0.1\"}").contains("has no port"));
    // localhost:PORT is 127.0.0.1:PORT, on both listeners; other names are not resolved.
    assert_eq!(
        ok("listen: {address: \"localhost:8080\"}").listen.addr,
        "127.0.0.1:8080".parse().unwrap()
    );
    assert_eq!(
        ok("admin: {address: \"LocalHost:9091\"}").admin.addr,
        Some("127.0.0.1:9091".parse().unwrap())
    );
    assert!(err("listen: {address: \"localhost\"}").contains("has no port"));
    assert!(err("listen: {address: \"localhost:http\"}").contains("expected a port"));
    assert_eq!(
        err("admin: {address: \"gateway.internal:9090\"}"),
        "admin.address: \"gateway.internal:9090\": host names other than localhost are not \
         resolved for listen addresses; write an IP address (127.0.0.1:<port>, [::1]:<port>, \
         0.0.0.0:<port>) or localhost:<port>"
    );
    assert!(err("listen: {address: 8080}").contains("expected an address like"));
    assert!(err("admin: {address: \"nope\"}").starts_with("admin.address: expected an address"));
}

#[test]
fn admin_can_be_disabled() {
    assert_eq!(ok("admin: null").admin.addr, None);
    assert_eq!(ok("admin: ~").admin.addr, None);
    let c = ok("admin: {address: null, upkeep_interval: 2s}");
    assert_eq!(c.admin.addr, None);
    assert_eq!(c.admin.upkeep_interval, Duration::from_secs(2));
    assert_eq!(
        ok("admin: {upkeep_interval: 2s}").admin.addr,
        Some(defaults::ADMIN)
    );
}

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
fn upstream_validation() {
    let base = |up: &str| format!("upstreams:\n  - {up}\nservers: [{{path: /mcp, upstream: a}}]");
    assert_eq!(
        err(&base(
            "{name: a, url: \"http://x/mcp\", tls: {ca_file: /x.pem}}"
        )),
        "upstreams[0].tls: applies to https:// URLs only"
    );
    assert_eq!(
        err(&base("{url: \"builtin:demo\"}")).lines().next(),
        Some("upstreams[0].name: missing (required)")
    );
    assert_eq!(
        err(&base("{name: a}")),
        "upstreams[0].url: missing (required)"
    );
    // A URL without a path is not silently `/`: it asks for the MCP endpoint path.
    assert!(err(&base("{name: a, url: \"http://127.0.0.1:9000\"}")).starts_with(
        "upstreams[0].url: URL has no path; give the upstream's MCP endpoint path, e.g. http://127.0.0.1:9000/mcp"
    ));
    ok(&base("{name: a, url: \"http://127.0.0.1:9000/\"}"));
    assert!(
        err(&base("{name: a, url: 5}")).starts_with("upstreams[0].url: expected a string, got 5")
    );
    assert!(err(&base(
        "{name: a, url: \"builtin:demo\", headers: {Host: x}}"
    ))
    .starts_with("upstreams[0].headers.Host: \"host\" is set by the gateway"));
    assert!(
        err(&base("{name: a, url: \"builtin:demo\", headers: {x-n: 5}}"))
            .contains("put it in quotes")
    );
    assert!(err(&base(
        "{name: a, url: \"builtin:demo\", headers: {X-A: \"1\", x-a: \"2\"}}"
    ))
    .contains("duplicate header \"x-a\""));
    assert!(err(&base("{name: a, url: \"builtin:demo\", headers: [x]}"))
        .contains("expected a mapping of header names"));
    let e = err(&base(
        "{name: a, url: \"builtin:demo\", headers: {x-secret: \"s3cr3t\\nmore\"}}",
    ));
    assert!(!e.contains("s3cr3t"), "header values are never echoed: {e}");
    assert!(err(&base("a")).starts_with("upstreams[0]: expected a mapping"));
    let e = errs("upstreams:\n  - {name: \"bad name\", url: \"builtin:demo\"}\nservers: [{path: /mcp, upstream: \"bad name\"}]");
    assert!(
        e[0].starts_with("upstreams[0].name: \"bad name\" contains ' '"),
        "{e:#?}"
    );
}

#[test]
fn duplicate_upstream_names_and_server_paths() {
    let e = errs(
        "upstreams:\n  - {name: a, url: \"builtin:demo\"}\n  - {name: a, url: \"http://h/\"}\n\
         servers:\n  - {path: /mcp, upstream: a}\n  - {path: /mcp, upstream: a}\n",
    );
    assert_eq!(
        e,
        vec![
            r#"upstreams[1].name: duplicate upstream name "a" (also upstreams[0])"#.to_string(),
            r#"servers[1].path: duplicate path "/mcp" (also servers[0])"#.to_string(),
        ]
    );
}

#[test]
fn server_validation() {
    let with = |srv: &str| {
        format!("upstreams: [{{name: demo, url: \"builtin:demo\"}}]\nservers:\n  - {srv}")
    };
    assert_eq!(
        err(&with("{path: /mcp, upstream: dmeo}")),
        r#"servers[0].upstream: no upstream named "dmeo" (known: demo)"#
    );
    assert!(err(&with("{path: mcp, upstream: demo}"))
        .starts_with("servers[0].path: must start with '/'"));
    assert!(err(&with("{path: \"/mcp?x=1\", upstream: demo}"))
        .starts_with("servers[0].path: must not contain '?' or '#'"));
    assert!(err(&with("{path: /mcp/, upstream: demo}")).contains("trailing '/'"));
    assert_eq!(
        err(&with("{upstream: demo}")),
        "servers[0].path: missing (required)"
    );
    assert_eq!(
        err(&with("{path: /x}")),
        "servers[0].upstream: missing (required): name one upstream, or several with `upstreams: [a, b]`"
    );
    assert!(err(&with("~")).starts_with("servers[0]: expected a mapping"));
}

#[test]
fn upstreams_and_servers_go_together() {
    assert_eq!(
        errs("upstreams: []\nservers: [{path: /mcp, upstream: demo}]"),
        vec![
            "upstreams: empty list: servers need at least one upstream".to_string(),
            r#"servers[0].upstream: no upstream named "demo" (no upstreams are defined)"#
                .to_string(),
        ]
    );
    // A missing section is not in the file: its problem comes after those of the keys that are.
    let e = errs("servers: [{path: /mcp, upstream: demo}]");
    assert!(
        e.last()
            .is_some_and(|l| l.starts_with("upstreams: missing")),
        "{e:#?}"
    );
    assert!(err("upstreams: [{name: a, url: \"builtin:demo\"}]").starts_with("servers: missing"));
    assert!(
        err("upstreams: [{name: a, url: \"builtin:demo\"}]\nservers: []")
            .starts_with("servers: empty list")
    );
    assert_eq!(
        errs("upstreams: {a: 1}\nservers: [{path: /mcp, upstream: a}]"),
        vec![
            "upstreams: expected a list of upstreams, got a mapping".to_string(),
            r#"servers[0].upstream: no upstream named "a" (no upstreams are defined)"#.to_string(),
        ]
    );
}

#[test]
fn host_and_origin_entries() {
    assert_eq!(
        err("listen: {allowed_hosts: [Example.COM]}"),
        r#"listen.allowed_hosts[0]: must be lower-case: write "example.com""#
    );
    assert!(err("listen: {allowed_hosts: [\"a.com:80\"]}").contains("port"));
    assert!(err("listen: {allowed_hosts: [a.com, a.com]}").contains("duplicate entry"));
    assert!(err("listen: {allowed_hosts: a.com}").contains("expected a list of strings"));
    assert!(err("listen: {allowed_origins: [\"https://a.com/\"]}")
        .starts_with("listen.allowed_origins[0]: an origin has no path"));
    assert!(err("listen: {allowed_origins: [a.com]}").contains("scheme://host[:port]"));
    assert!(err("listen: {allowed_origins: [5]}").contains("expected a string, got 5"));
}

#[test]
fn session_key_from_file_env_or_generated() {
    let env = |want: &'static str, value: &'static str| {
        move |name: &str| (name == want).then(|| value.to_string())
    };
    let upper = KEY_HEX.to_uppercase();
    let c = load_str_with_env(&format!("session: {{key: \"{upper}\"}}"), &no_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.session.key_source, c.session.key[10]),
        (KeySource::File, 10)
    );

    let c = load_str_with_env("", &env("TOLLGATE_SESSION_KEY", KEY_HEX))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.session.key_source, c.session.key[31]),
        (KeySource::Env, 0x1f)
    );

    let c = load_str_with_env("session: {key_env: MY_KEY}", &env("MY_KEY", KEY_HEX))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.session.key_source, KeySource::Env);
    // The default variable is not consulted when another is named.
    let c = load_str_with_env(
        "session: {key_env: MY_KEY}",
        &env("TOLLGATE_SESSION_KEY", KEY_HEX),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.session.key_source, KeySource::Generated);

    // The file wins over the environment.
    let other = "ff".repeat(32);
    let c = load_str_with_env(
        &format!("session: {{key: \"{other}\"}}"),
        &env("TOLLGATE_SESSION_KEY", KEY_HEX),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.session.key_source, c.session.key[0]),
        (KeySource::File, 0xff)
    );

    let e = load_str_with_env("", &env("TOLLGATE_SESSION_KEY", "s3cret-but-short"))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert!(e.0[0].starts_with("session.key_env: environment variable TOLLGATE_SESSION_KEY: expected 64 hex characters"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");

    let bad = "g".repeat(64);
    let e = err(&format!("session: {{key: \"{bad}\"}}"));
    assert!(
        e.starts_with("session.key: expected 64 hex characters"),
        "{e}"
    );
    assert!(!e.contains("ggg"), "{e}");
    assert!(err("session: {key: 12345}")
        .starts_with("session.key: expected 64 hex characters in quotes"));
    assert!(err("session: {key_env: \"1BAD\"}")
        .starts_with("session.key_env: \"1BAD\" is not an environment variable name"));
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

#[test]
fn render_shows_every_default_redacts_secrets_and_loads_back() {
    let text = format!(
        "session: {{key: \"{KEY_HEX}\"}}\nupstreams:\n  - {{name: mine, url: \"http://[::1]:3101/mcp?a=1\", headers: {{Authorization: \"Bearer sekrit\"}}}}\n  - {{name: demo, url: \"builtin:demo\"}}\nservers: [{{path: /mcp, upstream: mine}}, {{path: /demo/mcp, upstream: demo}}]\nadmin: null\n"
    );
    let c = ok(&text);
    let r = render_effective(&c);
    assert!(r.contains("key: \"<redacted (from file)>\""), "{r}");
    assert!(!r.contains(KEY_HEX) && !r.contains("sekrit"), "{r}");
    assert!(r.contains("max_body_bytes: 4MiB"), "{r}");
    assert!(r.contains("ttl: 24h"), "{r}");
    assert!(r.contains("address: null"), "{r}");
    assert!(r.contains("url: \"http://[::1]:3101/mcp?a=1\""), "{r}");
    assert!(r.contains("\"authorization\": \"<redacted>\""), "{r}");
    assert!(ok("").session.key_source == KeySource::Generated);
    assert!(render_effective(&ok("")).contains("<redacted (from generated)>"));

    // Put the key and header back: the rendered file loads to the same rendering.
    let again = r
        .replace("\"<redacted (from file)>\"", &format!("\"{KEY_HEX}\""))
        .replace("\"<redacted>\"", "\"Bearer sekrit\"");
    let c2 = ok(&again);
    assert_eq!(render_effective(&c2), r);
    assert_eq!(c2.session.key, c.session.key);
    assert_eq!(c2.upstreams[0].headers, c.upstreams[0].headers);
    assert_eq!(c2.upstreams[0].target, c.upstreams[0].target);

    // The defaults render and load back too (loopback listener rule spelled out).
    let d = render_effective(&ok(""));
    let d2 = d.replace("\"<redacted (from generated)>\"", &format!("\"{KEY_HEX}\""));
    let back = ok(&d2);
    assert_eq!(back.servers.len(), 1);
    assert_eq!(back.listen.addr, defaults::LISTEN);
}

#[test]
fn header_values_read_the_environment_or_a_file_and_never_show_what_they_read() {
    let up = |headers: &str| {
        format!(
            "upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9000/mcp\"\n    headers: {headers}\nservers: [{{path: /mcp, upstream: a}}]\n"
        )
    };
    let env = |name: &str| match name {
        "MY_API_KEY" => Some("k-sekrit-123".to_string()),
        "BAD" => Some("a\r\nInjected: 1".to_string()),
        _ => None,
    };
    let load_env = |text: &str| load_str_with_env(text, &env).map_err(|e| e.0);

    // ${env:NAME} reads the variable; the running program sees the value.
    let c = load_env(&up("{x-api-key: \"${env:MY_API_KEY}\"}")).unwrap();
    assert_eq!(
        c.upstreams[0].headers,
        vec![("x-api-key".to_string(), "k-sekrit-123".to_string())]
    );
    assert_eq!(
        c.upstreams[0].header_sources,
        vec![HeaderSource::Env("MY_API_KEY".into())]
    );
    // `tollgate check` shows the reference, not the secret; the rendering loads back.
    let r = render_effective(&c);
    assert!(r.contains("\"x-api-key\": \"${env:MY_API_KEY}\""), "{r}");
    assert!(!r.contains("k-sekrit-123"), "{r}");
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("k-sekrit-123") && debug.contains("<redacted>"),
        "{debug}"
    );
    let back = load_env(&r.replace("<redacted (from generated)>", KEY_HEX)).unwrap();
    assert_eq!(back.upstreams[0].headers, c.upstreams[0].headers);

    // ${file:/path} reads the file, one trailing newline trimmed.
    let dir = std::env::temp_dir().join(format!("tollgate-cfg-headers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("key");
    std::fs::write(&secret, "Bearer from-a-file\r\n").unwrap();
    let bad = dir.join("bad");
    std::fs::write(&bad, "line1\nline2-sekrit\n").unwrap();
    let c = load_env(&up(&format!(
        "{{Authorization: \"${{file:{}}}\"}}",
        secret.display()
    )))
    .unwrap();
    assert_eq!(c.upstreams[0].headers[0].1, "Bearer from-a-file");
    let r = render_effective(&c);
    assert!(
        r.contains(&format!("${{file:{}}}", secret.display())),
        "{r}"
    );
    assert!(!r.contains("from-a-file"), "{r}");

    // $${ is a literal ${.
    let c = load_env(&up("{x-template: \"$${literally}\"}")).unwrap();
    assert_eq!(c.upstreams[0].headers[0].1, "${literally}");
    assert_eq!(c.upstreams[0].header_sources, vec![HeaderSource::Literal]);

    // What used to be sent literally is now an error that says how to write it.
    assert_eq!(
        load_env(&up("{x-api-key: \"${MY_API_KEY}\"}")).unwrap_err(),
        vec![
            "upstreams[0].headers.x-api-key: ${MY_API_KEY} is not expanded; write \
              ${env:MY_API_KEY} to read the environment variable MY_API_KEY (or \
              $${MY_API_KEY} to send the text ${MY_API_KEY} as it is)"
        ]
    );
    assert!(
        load_env(&up("{x-api-key: \"Bearer ${env:MY_API_KEY}\"}")).unwrap_err()[0].starts_with(
            "upstreams[0].headers.x-api-key: \"${\" is only allowed as the whole value"
        )
    );

    // Missing variables and unreadable files fail the load, naming the key; values never shown.
    let missing = dir.join("missing");
    let e = load_env(&up(&format!(
        "{{x-api-key: \"${{env:NOT_SET}}\", x-b: \"${{env:BAD}}\", x-c: \"${{file:{}}}\", x-d: \"${{file:{}}}\"}}",
        missing.display(),
        bad.display()
    )))
    .unwrap_err();
    assert_eq!(e.len(), 4, "{e:#?}");
    assert_eq!(
        e[0],
        "upstreams[0].headers.x-api-key: environment variable NOT_SET is not set"
    );
    assert!(
        e[1].starts_with(
            "upstreams[0].headers.x-b: environment variable BAD: header value must be"
        ),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with(&format!(
            "upstreams[0].headers.x-c: cannot read file {}: ",
            missing.display()
        )),
        "{}",
        e[2]
    );
    assert!(
        e[3].starts_with(&format!(
            "upstreams[0].headers.x-d: file {}: header value must be",
            bad.display()
        )),
        "{}",
        e[3]
    );
    let all = e.join("\n");
    assert!(
        !all.contains("Injected") && !all.contains("sekrit"),
        "{all}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scratch directory with a CA, a server certificate it signed (for localhost), its key, an
/// unrelated key, and a file that is not PEM.
fn tls_files() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tollgate-cfg-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("other-key.pem"), other.serialize_pem()).unwrap();
    std::fs::write(dir.join("junk.pem"), "not a pem file\n").unwrap();
    dir
}

/// `render_effective`'s output without the redacted (generated) session key line.
fn loadable(shown: &str) -> String {
    shown
        .lines()
        .filter(|l| !l.trim_start().starts_with("key: \"<redacted"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn listen_tls_loads_and_renders_paths_only() {
    let d = tls_files();
    let f = |name: &str| d.join(name).display().to_string();
    let text = format!(
        "listen:\n  tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n    client_auth: optional\n",
        f("cert.pem"),
        f("key.pem"),
        f("ca.pem")
    );
    let c = ok(&text);
    let t = c.listen.tls.as_ref().expect("tls on");
    assert_eq!(t.client_auth, crate::tls::ClientAuth::Optional);
    assert_eq!(t.server.alpn_protocols, vec![b"http/1.1".to_vec()]);
    let shown = render_effective(&c);
    assert!(
        shown.contains(&format!("key_file: \"{}\"", f("key.pem"))),
        "{shown}"
    );
    let key_text = std::fs::read_to_string(d.join("key.pem")).unwrap();
    let key_line = key_text.lines().nth(1).unwrap();
    assert!(!shown.contains(key_line), "key material printed");
    // What `check` prints loads again to the same config.
    assert_eq!(render_effective(&ok(&loadable(&shown))), shown);
    // client_ca_file alone means required.
    let c = ok(&format!(
        "listen: {{tls: {{cert_file: {}, key_file: {}, client_ca_file: {}}}}}",
        f("cert.pem"),
        f("key.pem"),
        f("ca.pem")
    ));
    assert_eq!(
        c.listen.tls.unwrap().client_auth,
        crate::tls::ClientAuth::Required
    );
    assert!(ok("listen: {tls: null}").listen.tls.is_none());
    assert_eq!(ok("").limits.tls_handshake_timeout, Duration::from_secs(10));
    assert_eq!(
        ok("limits: {tls_handshake_timeout: 2s}")
            .limits
            .tls_handshake_timeout,
        Duration::from_secs(2)
    );
}

#[test]
fn listen_tls_problems_are_at_their_keys() {
    let d = tls_files();
    let f = |name: &str| d.join(name).display().to_string();
    let tls = |cert: &str, key: &str, extra: &str| {
        format!("listen:\n  tls:\n    cert_file: {cert}\n    key_file: {key}\n{extra}")
    };
    let e = errs(&tls("/nonexistent/c.pem", &f("junk.pem"), ""));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("listen.tls.cert_file: cannot read /nonexistent/c.pem:"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("listen.tls.key_file: ") && e[1].contains("no private key in it"),
        "{e:#?}"
    );
    let e = err(&tls(&f("junk.pem"), &f("key.pem"), ""));
    assert!(
        e.starts_with("listen.tls.cert_file: ") && e.contains("no certificate in it"),
        "{e}"
    );
    let e = err(&tls(&f("cert.pem"), &f("other-key.pem"), ""));
    assert!(
        e.starts_with("listen.tls.key_file: ") && e.contains("does not match the certificate"),
        "{e}"
    );
    let e = err(&tls(
        &f("cert.pem"),
        &f("key.pem"),
        "    client_auth: required\n",
    ));
    assert!(
        e.starts_with("listen.tls.client_auth: needs listen.tls.client_ca_file"),
        "{e}"
    );
    let e = err(&tls(
        &f("cert.pem"),
        &f("key.pem"),
        &format!("    client_ca_file: {}\n", f("junk.pem")),
    ));
    assert!(e.starts_with("listen.tls.client_ca_file: "), "{e}");
    let e = err(&tls(
        &f("cert.pem"),
        &f("key.pem"),
        &format!(
            "    client_ca_file: {}\n    client_auth: maybe\n",
            f("ca.pem")
        ),
    ));
    assert!(
        e.starts_with("listen.tls.client_auth: expected required or optional"),
        "{e}"
    );
    assert_eq!(
        err("listen: {tls: {key_file: /k.pem}}"),
        "listen.tls.cert_file: missing (required)"
    );
    assert!(errs("listen: {tls: {cert_file: a, key_file: b, cert: c}}")
        .contains(&"listen.tls.cert: unknown key".to_string()));
    // A key file's problems never quote it.
    std::fs::write(
        d.join("broken-key.pem"),
        "-----BEGIN PRIVATE KEY-----\nSECRETSECRET!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = err(&tls(&f("cert.pem"), &f("broken-key.pem"), ""));
    assert!(e.starts_with("listen.tls.key_file: "), "{e}");
    assert!(!e.contains("SECRET"), "{e}");
}

#[test]
fn https_upstreams() {
    let d = tls_files();
    let ca = d.join("ca.pem").display().to_string();
    let base = |up: &str| format!("upstreams:\n  - {up}\nservers: [{{path: /mcp, upstream: a}}]");
    let c = ok(&base(&format!(
        "{{name: a, url: \"https://localhost:8443/mcp\", tls: {{ca_file: {ca}}}}}"
    )));
    let t = c.upstreams[0].tls.as_ref().expect("tls");
    assert_eq!(t.server_name, "localhost");
    assert!(!t.server_name_set);
    assert_eq!(t.client.alpn_protocols, vec![b"http/1.1".to_vec()]);
    let shown = render_effective(&c);
    assert!(
        shown.contains("url: \"https://localhost:8443/mcp\""),
        "{shown}"
    );
    assert_eq!(render_effective(&ok(&loadable(&shown))), shown);
    let c = ok(&base(&format!(
        "{{name: a, url: \"https://127.0.0.1/mcp\", tls: {{ca_file: {ca}, server_name: gw.internal}}}}"
    )));
    let t = c.upstreams[0].tls.as_ref().unwrap();
    assert_eq!(
        (t.server_name.as_str(), t.server_name_set),
        ("gw.internal", true)
    );
    assert!(err(&base(
        "{name: a, url: \"https://x/mcp\", tls: {ca_file: /x.pem, server_name: \"not a name\"}}"
    ))
    .starts_with("upstreams[0].tls.server_name: \"not a name\" is not a DNS name"));
    assert!(err(&base(&format!(
        "{{name: a, url: \"https://x/mcp\", tls: {{ca_file: {}}}}}",
        d.join("junk.pem").display()
    )))
    .starts_with("upstreams[0].tls.ca_file: "));
    assert!(err(&base(
        "{name: a, url: \"https://x/mcp\", tls: {cafile: /x}}"
    ))
    .contains("upstreams[0].tls.cafile: unknown key (did you mean \"ca_file\"?)"));
}

/// `servers[].upstreams`: several upstreams behind one endpoint, their prefixes and filters.
#[test]
fn federated_servers() {
    let base = "upstreams:\n  - {name: notes, url: \"http://127.0.0.1:1/mcp\"}\n  - {name: weather, url: \"http://127.0.0.1:2/mcp\"}\n  - {name: bare, url: \"http://127.0.0.1:3/mcp\", prefix: \"\"}\n";
    let c = load_str(&format!(
        "{base}servers:\n  - {{path: /mcp, upstreams: [notes, weather], tools: {{deny: [\"weather__*\"]}}, list_page_size: 7}}\n  - {{path: /one, upstream: notes}}\n  - {{path: /all, upstreams: [bare, notes]}}\n"
    ))
    .unwrap();
    let s = c.servers.iter().find(|s| s.path == "/mcp").unwrap();
    assert_eq!(s.upstreams.len(), 2);
    assert!(s.federated());
    assert_eq!(s.upstreams[0].namer.prefix(), Some("notes"));
    assert_eq!(s.upstreams[1].namer.prefix(), Some("weather"));
    assert!(!s.tools.filter.allows("weather__now"));
    assert!(s.tools.filter.allows("notes__add"));
    assert_eq!(s.list_page_size, 7);
    let one = c.servers.iter().find(|s| s.path == "/one").unwrap();
    assert!(!one.federated(), "one upstream, no filter: passed through");
    assert_eq!(one.upstreams[0].namer.prefix(), None);
    let all = c.servers.iter().find(|s| s.path == "/all").unwrap();
    assert_eq!(
        all.upstreams[0].namer.prefix(),
        None,
        "prefix \"\" = unprefixed"
    );
    assert_eq!(all.upstreams[1].namer.prefix(), Some("notes"));
    assert_eq!(all.upstream_names(&c.upstreams), "bare+notes");

    // prefix_names: always prefixes a single upstream too.
    let c = load_str(&format!(
        "{base}servers: [{{path: /mcp, upstream: weather, prefix_names: always}}]"
    ))
    .unwrap();
    assert_eq!(c.servers[0].upstreams[0].namer.prefix(), Some("weather"));
    assert!(c.servers[0].federated());

    let e = |servers: &str| err(&format!("{base}servers: [{servers}]"));
    assert_eq!(
        e("{path: /mcp, upstream: notes, upstreams: [weather]}"),
        "servers[0].upstreams: give either `upstream` (one) or `upstreams` (a list), not both"
    );
    assert_eq!(
        e("{path: /mcp, upstreams: [notes, notes]}"),
        "servers[0].upstreams[1]: upstream \"notes\" is listed twice"
    );
    assert_eq!(
        e("{path: /mcp, upstreams: []}"),
        "servers[0].upstreams: empty list: name at least one upstream"
    );
    assert_eq!(
        e("{path: /mcp, upstreams: [notes, nope]}"),
        "servers[0].upstreams[1]: no upstream named \"nope\" (known: notes, weather, bare)"
    );
    assert_eq!(
        e("{path: /mcp, upstreams: notes}"),
        "servers[0].upstreams: expected a list of upstream names, got \"notes\""
    );
    assert_eq!(
        e("{path: /mcp, upstream: notes, prefix_names: never}"),
        "servers[0].prefix_names: expected auto or always, got \"never\""
    );
    assert_eq!(
        e("{path: /mcp, upstream: notes, max_name_length: 8}"),
        "servers[0].max_name_length: expected a whole number from 16 to 128, got 8"
    );
    assert_eq!(
        e("{path: /mcp, upstream: notes, tools: {allow: [\"\"]}}"),
        "servers[0].tools.allow[0]: empty glob (matches nothing; `*` matches everything)"
    );
    assert_eq!(
        e("{path: /mcp, upstream: notes, tools: {only: [a]}}"),
        "servers[0].tools.only: unknown key"
    );
}

/// Prefixes and separators are checked where they are written, and again per server (its
/// maximum name length, and two upstreams with the same prefix).
#[test]
fn upstream_prefixes() {
    let up = |extra: &str| {
        format!(
            "upstreams:\n  - {{name: a, url: \"builtin:demo\"{extra}}}\n  - {{name: b, url: \"http://127.0.0.1:2/mcp\"}}\nservers: [{{path: /mcp, upstreams: [a, b]}}]"
        )
    };
    assert_eq!(
        err(&up(", prefix: \"a b\"")),
        "upstreams[0].prefix: prefix has characters outside [A-Za-z0-9_.-]"
    );
    assert_eq!(
        err(&up(", separator: \".\"")),
        "upstreams[0].separator: separator must be 1 or more characters of [A-Za-z0-9_-]"
    );
    assert!(err(&up(", prefix: x__y"))
        .starts_with("upstreams[0].prefix: prefix contains the separator"));
    assert_eq!(
        err(&up(", prefix: b")),
        "servers[0].upstreams[1]: upstreams \"a\" and \"b\" expose names with the same prefix \"b\": set a different `prefix` on one of them"
    );
    let long = "p".repeat(40);
    let text = format!(
        "upstreams:\n  - {{name: a, url: \"builtin:demo\", prefix: {long}}}\n  - {{name: b, url: \"http://127.0.0.1:2/mcp\"}}\nservers: [{{path: /mcp, upstreams: [a, b], max_name_length: 32}}]"
    );
    assert_eq!(
        err(&text),
        "servers[0].upstreams[0]: upstream \"a\": its names cannot be exposed here: prefix and separator leave no room for the name in a shortened name"
    );
}

/// `upstreams[].transport`: `sse` reaches a 2024-11-05 HTTP+SSE upstream (alone behind an
/// endpoint or as a federated member); anything else is refused with what is allowed.
#[test]
fn legacy_sse_transport() {
    let base = "upstreams:\n  - {name: old, url: \"http://127.0.0.1:1/sse\", transport: sse}\n  - {name: new, url: \"http://127.0.0.1:2/mcp\"}\n";
    let c = ok(&format!("{base}servers: [{{path: /old, upstream: old}}]"));
    assert_eq!(c.upstreams[0].transport, Transport::Sse);
    assert_eq!(c.upstreams[1].transport, Transport::StreamableHttp);
    assert_eq!(c.limits.max_legacy_streams, 1024);
    assert_eq!(c.limits.legacy_buffered_messages, 64);
    let fed = ok(&format!(
        "{base}servers: [{{path: /fed, upstreams: [old, new]}}]"
    ));
    assert!(fed.servers[0].federated());
    assert!(err(
        "upstreams: [{name: a, url: \"http://127.0.0.1:1/mcp\", transport: websocket}]\nservers: [{path: /a, upstream: a}]"
    )
    .contains("unknown transport \"websocket\""));
    assert!(err(
        "upstreams: [{name: a, url: \"builtin:demo\", transport: sse}]\nservers: [{path: /a, upstream: a}]"
    )
    .contains("built-in demo"));
    let c = ok("limits: {max_legacy_streams: 3, legacy_buffered_messages: 0}");
    assert_eq!(c.limits.max_legacy_streams, 3);
    assert_eq!(c.limits.legacy_buffered_messages, 0);
}

#[test]
fn legacy_sse_paths_are_derived_and_collisions_refused() {
    let c = ok("upstreams: [{name: a, url: 'http://127.0.0.1:1/mcp'}]\n\
         servers: [{path: /mcp, upstream: a}, {path: /b, upstream: a, legacy_sse: false}]\n");
    let l = c.servers[1].legacy.as_ref().expect("on by default");
    assert_eq!(
        (l.sse.as_str(), l.messages.as_str()),
        ("/mcp/sse", "/mcp/messages")
    );
    assert!(c.servers[0].legacy.is_none());
    let e = errs(
        "upstreams: [{name: a, url: 'http://127.0.0.1:1/mcp'}]\n\
         servers: [{path: /x, upstream: a}, {path: /x/sse, upstream: a, legacy_sse: false}]\n",
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("servers[0].legacy_sse:") && l.contains("\"/x/sse\"")),
        "{e:?}"
    );
}

// ---- auth ----

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn with_auth(auth: &str, server_auth: &str) -> String {
    format!(
        "upstreams: [{{name: d, url: \"builtin:demo\"}}]\n\
         servers: [{{path: /mcp, upstream: d, auth: {server_auth}}}]\n\
         auth: {auth}\n"
    )
}

fn hs_issuer(extra: &str) -> String {
    format!("{{issuers: [{{name: example, issuer: \"https://issuer.example\", algorithms: [HS256], secret: \"{SECRET}\"{extra}}}]}}")
}

#[test]
fn auth_defaults_are_off_and_servers_are_open() {
    let c = ok("");
    assert!(c.auth.issuers.is_empty() && c.auth.api_keys.is_empty());
    assert!(c.auth.development.is_none());
    assert_eq!(c.auth.token_cache_entries, 4096);
    assert_eq!(c.auth.max_token_bytes, 8192);
    assert!(c.servers.iter().all(|s| s.auth.is_none()));
}

#[test]
fn an_issuer_loads_with_its_secret_and_the_server_gets_its_resource() {
    let c = ok(&with_auth(&hs_issuer(""), "{}"));
    let i = &c.auth.issuers[0];
    assert_eq!(i.issuer, "https://issuer.example");
    assert_eq!(i.keys.len(), 1);
    assert_eq!(i.leeway, std::time::Duration::from_secs(30));
    assert_eq!(i.claims.subject.dotted(), "sub");
    let a = c.servers[0].auth.as_ref().unwrap();
    assert_eq!(a.resource, "http://127.0.0.1:8080/mcp");
    assert_eq!(a.issuers, vec![0]);
    assert!(!a.api_keys, "no API keys configured");
    // The secret is never shown: not in Debug, not in the effective config.
    assert!(!format!("{c:?}").contains(SECRET));
    let shown = render_effective(&c);
    assert!(!shown.contains(SECRET));
    assert!(shown.contains("secret: \"<redacted>\""), "{shown}");
    // The effective config loads again (with the secret put back) to the same thing.
    let reloadable: String = shown
        .lines()
        .filter(|l| !l.contains("<redacted (from"))
        .map(|l| format!("{}\n", l.replace("<redacted>", SECRET)))
        .collect();
    let again = ok(&reloadable);
    assert_eq!(render_effective(&again), shown);
}

#[test]
fn a_secret_from_the_environment_is_named_not_shown() {
    let text = with_auth(
        "{issuers: [{name: e, issuer: \"https://i\", algorithms: [HS512], secret: \"${env:JWT_SECRET}\"}]}",
        "{}",
    );
    let c = load_str_with_env(&text, &|n| (n == "JWT_SECRET").then(|| SECRET.to_string())).unwrap();
    assert!(render_effective(&c).contains("secret: \"${env:JWT_SECRET}\""));
    assert_eq!(
        err(&text),
        "auth.issuers[0].secret: environment variable JWT_SECRET is not set"
    );
}

#[test]
fn issuer_problems_are_reported_at_their_keys() {
    let e = err(&with_auth(
        &hs_issuer("").replace("[HS256]", "[none]"),
        "{}",
    ));
    assert!(
        e.starts_with("auth.issuers[0].algorithms[0]: `none`"),
        "{e}"
    );
    let e = err(&with_auth(
        &hs_issuer("").replace("[HS256]", "[HS256, RS256]"),
        "{}",
    ));
    assert!(
        e.starts_with("auth.issuers[0].algorithms[1]: RS256 needs an RSA key"),
        "{e}"
    );
    let e = err(&with_auth(&hs_issuer("").replace(SECRET, "short"), "{}"));
    assert!(
        e.contains("at least 32 bytes") && !e.contains("short"),
        "{e}"
    );
    let e = err(&with_auth(&hs_issuer(", keys: [/nonexistent/k.pem]"), "{}"));
    assert!(
        e.starts_with("auth.issuers[0].keys[0]: cannot read /nonexistent/k.pem"),
        "{e}"
    );
    let e = err(&with_auth(&hs_issuer(", algorithm: [HS256]"), "{}"));
    assert!(
        e.contains("unknown key (did you mean \"algorithms\"?)"),
        "{e}"
    );
    let e = err(&with_auth(
        "{issuers: [{name: x, issuer: \"https://i\", algorithms: [RS256]}]}",
        "{}",
    ));
    assert!(e.starts_with("auth.issuers[0]: no keys"), "{e}");
    // With jwks_url the keys come from the background fetcher: none needed at load.
    let c = ok(&with_auth(
        "{issuers: [{name: x, issuer: \"https://i\", algorithms: [RS256], jwks_url: \"https://i/jwks\"}]}",
        "{}",
    ));
    assert!(render_effective(&c).contains("jwks_url: \"https://i/jwks\""));
}

#[test]
fn key_files_pem_and_jwks_load_and_private_keys_are_refused() {
    let dir = std::env::temp_dir().join(format!("tollgate-auth-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("rsa.pub.pem");
    std::fs::write(&pem, crate::policy::jwt_ring::test_keys::RSA_PUBLIC_PEM).unwrap();
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec = dir.join("ec.pub.pem");
    std::fs::write(&ec, kp.public_key_pem()).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        r#"{"keys":[{"kty":"oct","kid":"k1","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#,
    )
    .unwrap();
    let text = with_auth(
        &format!(
            "{{issuers: [{{name: x, issuer: \"https://i\", algorithms: [RS256, ES256, HS256], keys: [{}, {}, {}]}}]}}",
            pem.display(),
            ec.display(),
            jwks.display()
        ),
        "{}",
    );
    let c = ok(&text);
    let keys = &c.auth.issuers[0].keys;
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[2].kid.as_deref(), Some("k1"));
    let private = dir.join("rsa.key.pem");
    std::fs::write(
        &private,
        crate::policy::jwt_ring::test_keys::RSA_PRIVATE_PEM,
    )
    .unwrap();
    let e = err(&with_auth(
        &format!(
            "{{issuers: [{{name: x, issuer: \"https://i\", algorithms: [RS256], keys: [{}]}}]}}",
            private.display()
        ),
        "{}",
    ));
    assert!(e.contains("is a private key"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn server_auth_names_issuers_and_says_did_you_mean() {
    let e = err(&with_auth(&hs_issuer(""), "{issuers: [exampel]}"));
    assert_eq!(
        e,
        "servers[0].auth.issuers[0]: no issuer named \"exampel\" in auth.issuers (did you mean \"example\"?)"
    );
    let e = err(&with_auth("{}", "{}"));
    assert!(
        e.starts_with("servers[0].auth: no way to authenticate"),
        "{e}"
    );
}

#[test]
fn development_needs_the_principal_and_a_loopback_listener() {
    let e = err(&with_auth("{}", "{development: true}"));
    assert!(
        e.starts_with("servers[0].auth.development: true, but auth.development is not set"),
        "{e}"
    );
    let c = ok(&with_auth(
        "{development: {subject: me, roles: [admin]}}",
        "{development: true}",
    ));
    assert_eq!(c.auth.development.as_ref().unwrap().subject, "me");
    let e = err(&format!(
        "listen: {{address: \"0.0.0.0:8080\"}}\n{}",
        with_auth("{development: {roles: [admin]}}", "{development: true}")
    ));
    assert!(
        e.starts_with("servers[0].auth.development: true is only allowed on a loopback listener"),
        "{e}"
    );
}

#[test]
fn api_keys_are_hashes_and_turn_on_by_default() {
    let hash = "a".repeat(64);
    let c = ok(&with_auth(
        &format!("{{api_keys: [{{name: ci-bot, sha256: \"{hash}\", roles: [admin]}}]}}"),
        "{}",
    ));
    assert!(c.servers[0].auth.as_ref().unwrap().api_keys);
    assert_eq!(c.auth.api_keys[0].sha256, [0xaa; 32]);
    let e = errs(&with_auth(
        "{api_keys: [{name: k, sha256: \"my-secret-key\"}]}",
        "{}",
    ));
    assert!(
        e.iter()
            .any(|e| e.starts_with("auth.api_keys[0].sha256: expected the key's SHA-256")),
        "{e:?}"
    );
    assert!(!e.iter().any(|e| e.contains("my-secret")), "{e:?}");
    let e = err("auth: {max_token_bytes: 2MiB}");
    assert!(e.starts_with("auth.max_token_bytes: at most 1MiB"), "{e}");
}

#[test]
fn upstream_credentials_parse_check_and_render_without_the_secret() {
    let base = |creds: &str| {
        format!(
            "upstreams:\n  - {{name: a, url: \"http://notes.internal/mcp\", credentials: {creds}}}\nservers: [{{path: /mcp, upstream: a}}]"
        )
    };
    let env = |n: &str| (n == "SECRET").then(|| "hunter2".to_string());
    let c = load_str_with_env(
        &base("{client_credentials: {token_url: \"http://as.example:9000/token\", client_id: tg, client_secret: \"${env:SECRET}\", scope: \"a b\", refresh_before: 30s}}"),
        &env,
    )
    .map_err(|e| e.0)
    .expect("loads");
    let cr = c.upstreams[0].credentials.as_deref().expect("credentials");
    assert_eq!(
        cr.grant,
        crate::config::credentials::Grant::ClientCredentials
    );
    assert_eq!(cr.client_secret, "hunter2");
    assert_eq!(cr.token_target.port, 9000);
    assert_eq!(cr.token_target.path, "/token");
    assert_eq!(cr.scope.as_deref(), Some("a b"));
    assert_eq!(cr.resource.as_deref(), Some("http://notes.internal/mcp"));
    assert_eq!(cr.refresh_before, Duration::from_secs(30));
    let shown = render_effective(&c);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("client_secret: \"${env:SECRET}\""),
        "{shown}"
    );
    assert!(!format!("{cr:?}").contains("hunter2"));

    let literal = ok(&base("{token_exchange: {token_url: \"http://as/t\", client_id: tg, client_secret: lit, actor: true, cache_entries: 3}}"));
    let t = literal.upstreams[0]
        .credentials
        .as_deref()
        .expect("credentials");
    assert_eq!(t.grant, crate::config::credentials::Grant::TokenExchange);
    assert!(t.actor);
    assert_eq!(t.cache_entries, 3);
    assert!(!render_effective(&literal).contains("lit\""));

    assert_eq!(
        err(&base("{client_credentials: {token_url: \"http://as/t\", client_id: x, client_secret: s}, token_exchange: {token_url: \"http://as/t\", client_id: x, client_secret: s}}")),
        "upstreams[0].credentials: set one of client_credentials or token_exchange, not both"
    );
    assert_eq!(
        err(&base(
            "{client_credentials: {client_id: x, client_secret: s}}"
        )),
        "upstreams[0].credentials.client_credentials.token_url: missing (required)"
    );
    assert_eq!(
        err(&base("{client_credentials: {token_url: \"http://as/t\", client_id: x, client_secret: \"${env:NOPE}\"}}")),
        "upstreams[0].credentials.client_credentials.client_secret: environment variable NOPE is not set"
    );
    assert_eq!(
        err(&base("{client_credentials: {token_url: \"http://as/t\", client_id: x, client_secret: s, actor: true}}")),
        "upstreams[0].credentials.client_credentials.actor: unknown key"
    );
    assert_eq!(
        err(&base("{client_credentials: {token_url: \"http://as/t\", client_id: x, client_secret: s, ca_file: /x.pem}}")),
        "upstreams[0].credentials.client_credentials.ca_file: applies to https:// token URLs only"
    );
    assert_eq!(
        err(&base("{}")),
        "upstreams[0].credentials: expected client_credentials or token_exchange (or credentials: null)"
    );
    assert!(ok(&base("null")).upstreams[0].credentials.is_none());
}

#[test]
fn an_introspecting_issuer_may_be_opaque_only_and_its_secret_is_never_shown() {
    let text = with_auth(
        &format!(
            "{{issuers: [{{name: corp, issuer: \"https://as.example\", introspection: \
             {{endpoint: \"https://as.example/introspect\", client_id: tollgate, \
             client_secret: \"{SECRET}\", max_cache: 10s, negative_cache: 0s}}}}]}}"
        ),
        "{}",
    );
    let c = ok(&text);
    let i = &c.auth.issuers[0];
    assert!(i.algorithms.is_empty() && i.keys.is_empty());
    let x = i.introspection.as_deref().expect("introspection");
    assert_eq!(x.endpoint.as_deref(), Some("https://as.example/introspect"));
    assert_eq!(x.max_cache, std::time::Duration::from_secs(10));
    assert_eq!(x.negative_cache, std::time::Duration::ZERO);
    assert_eq!(x.timeout, std::time::Duration::from_secs(3));
    assert!(x.tls.is_some(), "an https endpoint gets a TLS config");
    assert!(!format!("{c:?}").contains(SECRET));
    let shown = render_effective(&c);
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("client_secret: \"<redacted>\""), "{shown}");
    // The rendering loads back to the same thing (the secret put back).
    let again = ok(&loadable(&shown).replace("<redacted>", SECRET));
    assert_eq!(loadable(&render_effective(&again)), loadable(&shown));
    // Defaults: a minute's trust, five seconds of memory for an inactive token.
    let c = ok(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\", discovery: true, introspection: \
         {client_id: t, client_secret: s}}]}",
        "{}",
    ));
    let x = c.auth.issuers[0].introspection.as_deref().unwrap();
    assert_eq!(x.endpoint, None, "from discovery");
    assert_eq!(x.max_cache, std::time::Duration::from_secs(60));
    assert_eq!(x.negative_cache, std::time::Duration::from_secs(5));
}

#[test]
fn introspection_problems_are_reported_at_their_keys() {
    // No endpoint and no discovery to find it.
    let e = err(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\", introspection: {client_id: t, client_secret: s}}]}",
        "{}",
    ));
    assert!(
        e.starts_with("auth.issuers[0].introspection.endpoint:") && e.contains("discovery"),
        "{e}"
    );
    let e = err(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\", introspection: {endpoint: \"ftp://x\", client_id: t, client_secret: s}}]}",
        "{}",
    ));
    assert!(
        e.starts_with("auth.issuers[0].introspection.endpoint:"),
        "{e}"
    );
    let e = err(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\", introspection: {endpoint: \"http://as/i\", client_secret: s}}]}",
        "{}",
    ));
    assert!(
        e.starts_with("auth.issuers[0].introspection.client_id:"),
        "{e}"
    );
    let e = err(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\", introspection: {endpoint: \"http://as/i\", client_id: t, client_secret: s, max_cache: 0s}}]}",
        "{}",
    ));
    assert!(
        e.starts_with("auth.issuers[0].introspection.max_cache:"),
        "{e}"
    );
    let e = err(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\", introspection: {endpoint: \"http://as/i\", client_id: t, client_secret: s, ttl: 1s}}]}",
        "{}",
    ));
    assert!(e.starts_with("auth.issuers[0].introspection.ttl:"), "{e}");
    // Without introspection, algorithms stay required.
    let e = err(&with_auth(
        "{issuers: [{name: corp, issuer: \"http://as\"}]}",
        "{}",
    ));
    assert!(e.starts_with("auth.issuers[0].algorithms:"), "{e}");
    // Two introspecting issuers on one endpoint: an opaque token would not say which to ask.
    let two = "{issuers: [\
        {name: a, issuer: \"http://a\", introspection: {endpoint: \"http://a/i\", client_id: t, client_secret: s}},\
        {name: b, issuer: \"http://b\", introspection: {endpoint: \"http://b/i\", client_id: t, client_secret: s}}]}";
    let e = err(&with_auth(two, "{}"));
    assert!(
        e.starts_with("servers[0].auth.issuers:") && e.contains("a, b"),
        "{e}"
    );
    ok(&with_auth(two, "{issuers: [b]}"));
}

#[test]
fn traffic_rules_load_render_and_load_again_with_the_same_fingerprints() {
    let text = "upstreams:\n  - {name: demo, url: builtin:demo}\nservers:\n  - {path: /mcp, upstream: demo}\n\
        traffic:\n  time_zone: Europe/Berlin\n  sync_interval: 5ms\n  max_keys: 10\n  rules:\n\
        \x20   - {name: a, servers: [/mcp], tools: [\"echo*\"], key: [principal, tool], rate: {limit: 5, per: 60s}, concurrency: 2}\n\
        \x20   - {name: b, upstreams: [demo], roles: [admin], methods: [tools/call], quota: {limit: 100, window: month}}\n";
    let c = ok(text);
    let t = &c.traffic;
    assert_eq!((&*t.time_zone, t.max_keys), ("Europe/Berlin", 10));
    assert_eq!(t.rules.len(), 2);
    assert_eq!(t.rules[0].limits.len(), 2);
    assert!(t.rules[0].per_tool() && !t.rules[1].per_tool());
    let shown = render_effective(&c);
    assert!(
        shown.contains("rate: {limit: 5, per: 1m, burst: 5}"),
        "{shown}"
    );
    assert!(shown.contains("key: [principal, tool]"), "{shown}");
    let again = ok(&loadable(&shown));
    assert_eq!(render_effective(&again), shown);
    // Same definitions, same fingerprints (a reload keeps their state); a change makes new ones.
    let fps = |c: &Config| -> Vec<u64> {
        c.traffic
            .rules
            .iter()
            .flat_map(|r| r.limits.iter().map(|l| l.fp))
            .collect()
    };
    assert_eq!(fps(&again), fps(&c));
    let changed = ok(&text.replace("limit: 100,", "limit: 101,"));
    assert_eq!(fps(&changed)[..2], fps(&c)[..2]);
    assert_ne!(fps(&changed)[2], fps(&c)[2]);
}

#[test]
fn traffic_rule_problems_are_reported_at_their_keys() {
    let e = errs(
        "traffic:\n  time_zone: Mars/Olympus\n  rules:\n    - {name: x}\n    - {name: x, servers: [/nope], key: [user], rate: {limit: 0, per: 1s}, quota: {limit: 5, window: week}}\n    - {name: t, tokens: {limit: 5, window: day, costs: [a]}}\n    - {name: u, tokens: {window: day, costs: {\"a*\": -1}}}\n",
    );
    let all = e.join("\n");
    for want in [
        "traffic.time_zone:",
        "traffic.rules[0]: a rule needs rate, concurrency, quota or tokens (or several), or loop",
        "traffic.rules[1].name: duplicate rule name",
        "traffic.rules[1].servers[0]: no server with path \"/nope\"",
        "traffic.rules[1].key[0]:",
        "traffic.rules[1].rate.limit:",
        "traffic.rules[1].quota.window:",
        "traffic.rules[2].tokens.costs: expected a mapping of tool glob to units",
        "traffic.rules[3].tokens.limit:",
        "traffic.rules[3].tokens.costs.a*:",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn a_loop_rule_keys_by_principal_tool_and_arguments_and_renders_as_written() {
    use crate::policy::traffic::part;
    let text = "upstreams:\n  - {name: demo, url: builtin:demo}\nservers:\n  - {path: /mcp, upstream: demo}\n\
        traffic:\n  rules:\n    - {name: loops, tools: [\"*\"], loop: {max: 5, window: 60s}}\n";
    let c = ok(text);
    let r = &c.traffic.rules[0];
    assert!(c.traffic.hashes_arguments);
    assert_eq!(r.key, part::PRINCIPAL | part::TOOL | part::ARGUMENTS);
    // Its own count (`proxy::loop_guard`), not one of the limiter's.
    assert!(r.limits.is_empty());
    let g = r.loop_guard.expect("the loop guard");
    assert_eq!((g.max, g.window), (5, std::time::Duration::from_secs(60)));
    assert_ne!(g.fp, 0, "sealed");
    let shown = render_effective(&c);
    assert!(shown.contains("loop: {max: 5, window: 1m}"), "{shown}");
    assert!(
        shown.contains("key: [principal, tool, arguments]"),
        "{shown}"
    );
    let again = ok(&loadable(&shown));
    assert_eq!(render_effective(&again), shown);
    assert_eq!(again.traffic.rules[0].loop_guard, r.loop_guard);
    // Without a rule keyed by arguments nothing is hashed.
    assert!(
        !ok("traffic:\n  rules:\n    - {name: r, rate: {limit: 1, per: 1s}}\n")
            .traffic
            .hashes_arguments
    );
    let e = errs(
        "traffic:\n  rules:\n    - {name: a, loop: {max: 0, window: 0s}}\n    - {name: b, rate: {limit: 1, per: 1s}, loop: {max: 2, window: 1m}}\n    - {name: c, loop: {max: 2}}\n",
    )
    .join("\n");
    for want in [
        "traffic.rules[0].loop.max:",
        "traffic.rules[0].loop.window:",
        "traffic.rules[1]: loop counts calls by their arguments",
        "traffic.rules[2].loop.window:",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn traffic_redis_is_parsed_checked_and_rendered_without_its_password() {
    let c = ok("traffic:\n  redis:\n    url: \"redis://app:s3cret@10.0.0.5:6379/2\"\n    on_failure: closed\n");
    let r = c.traffic.redis.as_ref().expect("redis");
    assert_eq!(r.on_failure, crate::policy::traffic::OnFailure::Closed);
    assert_eq!(r.sync_interval, super::traffic::DEFAULT_REDIS_SYNC_INTERVAL);
    assert_eq!(&*r.key_prefix, "tollgate:");
    let shown = super::render::render_effective(&c);
    assert!(
        shown.contains("redis://app:<redacted>@10.0.0.5:6379/2"),
        "{shown}"
    );
    assert!(!shown.contains("s3cret"));
    assert!(ok("traffic:\n  redis: null\n").traffic.redis.is_none());
    let e =
        errs("traffic:\n  redis:\n    url: \"http://x\"\n    on_failure: maybe\n    timeout: 0s\n")
            .join("\n");
    for want in [
        "traffic.redis.url: expected redis://",
        "traffic.redis.on_failure: expected open, closed or local",
        "traffic.redis.timeout:",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}
