//! The whole file: every default, every key, and the rendering `tollgate check` prints.

use super::*;

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
        assert_eq!(c.runtime.fixed_files, 16_384);
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
  fixed_files: 64
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
    assert_eq!(c.runtime.fixed_files, 64);
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
