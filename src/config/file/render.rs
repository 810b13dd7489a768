//! `Config` → YAML text in the file's own format, every default filled in, secrets redacted.
//! Written by hand (not through serde) so the key order matches `config/tollgate.yaml` and the
//! output can carry comments. Strings are JSON-quoted, which YAML reads as double-quoted scalars.

use std::fmt::Write as _;

mod auth;
mod matches;
mod rules;
mod traffic;
mod upstreams;

use super::formats::{render_duration, render_size};
use crate::config::*;
use auth::render_auth;
use rules::render_rules;
use traffic::render_traffic;
use upstreams::{render_credentials, render_resilience};

fn q(s: &str) -> String {
    // serde_json cannot fail on a &str; the fallback keeps this free of unwrap.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// A flow list of quoted strings: `["a", "b"]`.
fn list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}

/// The effective configuration as YAML. The session key is shown as
/// `<redacted (from file|env|generated)>`, literal upstream header values as `<redacted>` and
/// `${env:NAME}` / `${file:PATH}` headers as those references (never what they read), so the
/// output is safe to print; put the real key back to load it again.
pub fn render_effective(c: &Config) -> String {
    let mut o = String::new();
    // `write!` to a String cannot fail; results are ignored on purpose.
    let _ = writeln!(
        o,
        "# tollgate effective configuration: every default filled in, secrets redacted."
    );
    let _ = writeln!(o, "workers: {}", c.workers);

    let l = &c.listen;
    let _ = writeln!(o, "listen:");
    let _ = writeln!(o, "  address: {}", q(&l.addr.to_string()));
    let _ = writeln!(o, "  backlog: {}", l.backlog);
    let _ = writeln!(
        o,
        "  max_connections_per_worker: {}",
        l.max_connections_per_worker
    );
    let hosts = match &l.allowed_hosts {
        HostRule::Any => "[\"*\"]".to_string(),
        HostRule::Loopback => {
            "[]  # loopback listener default: localhost, 127.0.0.1, [::1], any port".to_string()
        }
        HostRule::List(h) => list(h),
    };
    let _ = writeln!(o, "  allowed_hosts: {hosts}");
    let origins_note = if l.allowed_origins.loopback {
        "  # and loopback origins (loopback listener)"
    } else {
        ""
    };
    let _ = writeln!(
        o,
        "  allowed_origins: {}{origins_note}",
        list(&l.allowed_origins.list)
    );
    match &l.tls {
        None => {
            let _ = writeln!(o, "  tls: null  # plain HTTP");
        }
        Some(t) => {
            let _ = writeln!(o, "  tls:");
            let _ = writeln!(o, "    cert_file: {}", q(&t.cert_file));
            let _ = writeln!(o, "    key_file: {}", q(&t.key_file));
            if let Some(ca) = &t.client_ca_file {
                let _ = writeln!(o, "    client_ca_file: {}", q(ca));
                let _ = writeln!(o, "    client_auth: {}", t.client_auth.as_str());
            }
        }
    }

    let m = &c.limits;
    let _ = writeln!(o, "limits:");
    let _ = writeln!(
        o,
        "  max_header_bytes: {}",
        render_size(m.max_header_bytes as u64)
    );
    let _ = writeln!(
        o,
        "  max_request_line_bytes: {}",
        render_size(m.max_request_line_bytes as u64)
    );
    let _ = writeln!(o, "  max_headers: {}", m.max_headers);
    let _ = writeln!(
        o,
        "  max_body_bytes: {}",
        render_size(m.max_body_bytes as u64)
    );
    let _ = writeln!(
        o,
        "  header_read_timeout: {}",
        render_duration(m.header_read_timeout)
    );
    let _ = writeln!(
        o,
        "  body_read_timeout: {}",
        render_duration(m.body_read_timeout)
    );
    let _ = writeln!(o, "  idle_timeout: {}", render_duration(m.idle_timeout));
    let _ = writeln!(o, "  write_timeout: {}", render_duration(m.write_timeout));
    let _ = writeln!(
        o,
        "  tls_handshake_timeout: {}",
        render_duration(m.tls_handshake_timeout)
    );
    let _ = writeln!(o, "  max_json_depth: {}", m.max_json_depth);
    let _ = writeln!(o, "  max_batch_len: {}", m.max_batch_len);
    let _ = writeln!(o, "  max_batch_concurrency: {}", m.max_batch_concurrency);
    let _ = writeln!(o, "  max_legacy_streams: {}", m.max_legacy_streams);
    let _ = writeln!(
        o,
        "  legacy_buffered_messages: {}",
        m.legacy_buffered_messages
    );
    let _ = writeln!(
        o,
        "  legacy_sse_streams_per_worker: {}",
        m.legacy_sse_streams_per_worker
    );
    let _ = writeln!(
        o,
        "  legacy_sse_queued_messages: {}",
        m.legacy_sse_queued_messages
    );
    let _ = writeln!(
        o,
        "  legacy_sse_keepalive: {}",
        render_duration(m.legacy_sse_keepalive)
    );
    let _ = writeln!(
        o,
        "  listen_streams_per_worker: {}",
        m.listen_streams_per_worker
    );
    let _ = writeln!(
        o,
        "  listen_keepalive: {}",
        render_duration(m.listen_keepalive)
    );
    let _ = writeln!(
        o,
        "  held_sessions_per_upstream: {}",
        m.held_sessions_per_upstream
    );

    let _ = writeln!(o, "admin:");
    match c.admin.addr {
        Some(a) => {
            let _ = writeln!(o, "  address: {}", q(&a.to_string()));
        }
        None => {
            let _ = writeln!(o, "  address: null  # disabled");
        }
    }
    let _ = writeln!(
        o,
        "  upkeep_interval: {}",
        render_duration(c.admin.upkeep_interval)
    );
    let _ = writeln!(
        o,
        "  request_timeout: {}",
        render_duration(c.admin.request_timeout)
    );
    let _ = writeln!(o, "  max_connections: {}", c.admin.max_connections);

    let source = match c.session.key_source {
        KeySource::File => "file",
        KeySource::Env => "env",
        KeySource::Generated => "generated",
    };
    let _ = writeln!(o, "session:");
    let _ = writeln!(o, "  key: {}", q(&format!("<redacted (from {source})>")));
    // key_env is not kept in `Config`; the key above says where the key came from.
    let _ = writeln!(o, "  ttl: {}", render_duration(c.session.ttl));

    let _ = writeln!(o, "shutdown:");
    let _ = writeln!(
        o,
        "  drain_timeout: {}",
        render_duration(c.shutdown.drain_timeout)
    );

    let r = &c.runtime;
    let driver = match r.driver {
        Driver::Auto => "auto",
        Driver::IoUring => "io_uring",
        Driver::Legacy => "legacy",
    };
    let _ = writeln!(o, "runtime:");
    let _ = writeln!(o, "  driver: {driver}");
    let _ = writeln!(o, "  pin_workers: {}", r.pin_workers);
    let _ = writeln!(o, "  uring_entries: {}", r.uring_entries);
    let _ = writeln!(o, "  fixed_files: {}", r.fixed_files);

    let _ = writeln!(o, "log:");
    let _ = writeln!(o, "  level: {}", q(&c.log.level));
    let _ = writeln!(o, "  format: {}", if c.log.json { "json" } else { "text" });
    let _ = writeln!(o, "  access: {}", c.log.access.as_str());

    let _ = writeln!(o, "upstreams:");
    for u in &c.upstreams {
        let url = |t: &UpstreamTarget| match t {
            UpstreamTarget::BuiltinDemo => "builtin:demo".to_string(),
            UpstreamTarget::Http(h) => h.url(),
        };
        let _ = writeln!(o, "  - name: {}", q(&u.name));
        if let [one] = &u.replicas[..] {
            let _ = writeln!(o, "    url: {}", q(&url(one)));
        } else {
            let _ = writeln!(o, "    replicas:");
            for r in &u.replicas {
                let _ = writeln!(o, "      - {}", q(&url(r)));
            }
        }
        let _ = writeln!(o, "    transport: {}", u.transport.as_str());
        let _ = writeln!(
            o,
            "    connect_timeout: {}",
            render_duration(u.connect_timeout)
        );
        let _ = writeln!(
            o,
            "    request_timeout: {}",
            render_duration(u.request_timeout)
        );
        let _ = writeln!(o, "    idle_timeout: {}", render_duration(u.idle_timeout));
        let _ = writeln!(o, "    max_idle_per_worker: {}", u.max_idle_per_worker);
        let _ = writeln!(o, "    unhealthy_after: {}", u.unhealthy_after);
        render_resilience(&mut o, u);
        let _ = writeln!(o, "    era: {}", u.era.as_str());
        match &u.prefix {
            None => {
                let _ = writeln!(o, "    prefix: null  # its name");
            }
            Some(p) => {
                let _ = writeln!(o, "    prefix: {}", q(p));
            }
        }
        let _ = writeln!(o, "    separator: {}", q(&u.separator));
        if u.headers.is_empty() {
            let _ = writeln!(o, "    headers: {{}}");
        } else {
            let _ = writeln!(o, "    headers:");
            for (i, (name, _)) in u.headers.iter().enumerate() {
                // A reference is shown as written; the value it read is a secret, like a literal.
                let shown = match u.header_sources.get(i) {
                    Some(HeaderSource::Env(var)) => q(&format!("${{env:{var}}}")),
                    Some(HeaderSource::File(path)) => q(&format!("${{file:{path}}}")),
                    _ => "\"<redacted>\"".to_string(),
                };
                let _ = writeln!(o, "      {}: {shown}", q(name));
            }
        }
        render_credentials(&mut o, u.credentials.as_deref());
        if let Some(t) = &u.tls {
            let _ = writeln!(o, "    tls:");
            match &t.ca_file {
                Some(ca) => {
                    let _ = writeln!(o, "      ca_file: {}", q(ca));
                }
                None => {
                    let _ = writeln!(o, "      ca_file: null  # the system's CA certificates");
                }
            }
            let _ = writeln!(o, "      server_name: {}", q(&t.server_name));
        }
    }
    let _ = writeln!(o, "servers:");
    for s in &c.servers {
        let name = |su: &crate::config::ServerUpstream| {
            q(c.upstreams
                .get(su.upstream)
                .map_or("?", |u| u.name.as_str()))
        };
        let _ = writeln!(o, "  - path: {}", q(&s.path));
        if s.upstreams.len() == 1 {
            let _ = writeln!(o, "    upstream: {}", name(&s.upstreams[0]));
        } else {
            let names: Vec<String> = s.upstreams.iter().map(name).collect();
            let _ = writeln!(o, "    upstreams: [{}]", names.join(", "));
        }
        let prefix_names = match s.prefix_names {
            crate::config::PrefixNames::Auto => "auto",
            crate::config::PrefixNames::Always => "always",
        };
        let _ = writeln!(o, "    prefix_names: {prefix_names}");
        let _ = writeln!(o, "    max_name_length: {}", s.max_name_length);
        for (key, f) in [
            ("tools", &s.tools),
            ("prompts", &s.prompts),
            ("resources", &s.resources),
        ] {
            let list = |l: &[String]| l.iter().map(|g| q(g)).collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                o,
                "    {key}: {{allow: [{}], deny: [{}]}}",
                list(&f.allow),
                list(&f.deny)
            );
        }
        let _ = writeln!(o, "    list_page_size: {}", s.list_page_size);
        let _ = writeln!(
            o,
            "    list_refresh_interval: {}",
            render_duration(s.list_refresh_interval)
        );
        let _ = writeln!(o, "    legacy_sse: {}", s.legacy.is_some());
        let offer = if s.offer_stateless_always {
            "always"
        } else {
            "auto"
        };
        let _ = writeln!(o, "    offer_stateless: {offer}");
        match &s.auth {
            None => {
                let _ = writeln!(o, "    auth: null  # open: no authentication");
            }
            Some(a) => {
                let issuers: Vec<String> = a
                    .issuers
                    .iter()
                    .map(|&i| c.auth.issuers.get(i).map_or("?".into(), |is| q(&is.name)))
                    .collect();
                let _ = writeln!(o, "    auth:");
                let _ = writeln!(o, "      resource: {}", q(&a.resource));
                let _ = writeln!(o, "      issuers: [{}]", issuers.join(", "));
                let _ = writeln!(o, "      api_keys: {}", a.api_keys);
                let _ = writeln!(o, "      mtls: {}", a.mtls);
                let _ = writeln!(o, "      development: {}", a.development);
                let _ = writeln!(o, "      scopes: {}", list(&a.scopes));
                let _ = writeln!(o, "      scopes_supported: {}", list(&a.scopes_supported));
            }
        }
        render_rules(&mut o, c, s.rules.as_deref());
        match &s.rego {
            None => {
                let _ = writeln!(o, "    rego: null");
            }
            Some(r) => {
                let _ = writeln!(o, "    rego:");
                let _ = writeln!(o, "      policy: {}", list(&r.policy));
                let _ = writeln!(o, "      query: {}", q(&r.query));
                let _ = writeln!(o, "      cache_entries: {}", r.cache_entries);
                let _ = writeln!(o, "      cache_ttl: {}", render_duration(r.cache_ttl));
                let _ = writeln!(o, "      eval_timeout: {}", render_duration(r.eval_timeout));
            }
        }
    }
    render_auth(&mut o, &c.auth);
    render_traffic(&mut o, c);
    super::audit::render(&mut o, &c.audit);
    let tools = c
        .observe
        .tools
        .as_ref()
        .map_or(&[][..], |f| f.allow_globs());
    let tools: Vec<String> = tools.iter().map(|g| q(g)).collect();
    let _ = writeln!(o, "observe:");
    let _ = writeln!(o, "  tools: [{}]", tools.join(", "));
    let _ = writeln!(o, "  max_tool_series: {}", c.observe.max_tool_series);
    render_tracing(&mut o, &c.tracing);
    o
}

/// `tracing:`: header values are shown as written references or redacted, like upstreams'.
fn render_tracing(o: &mut String, t: &crate::config::telemetry::Tracing) {
    let _ = writeln!(o, "tracing:");
    let _ = writeln!(o, "  enabled: {}", t.enabled);
    let _ = writeln!(o, "  sample_ratio: {}", t.sample_ratio);
    let Some(x) = &t.otlp else {
        let _ = writeln!(o, "  otlp: null");
        return;
    };
    let e = &x.endpoint;
    let host = if e.host.contains(':') {
        format!("[{}]", e.host)
    } else {
        e.host.clone()
    };
    let _ = writeln!(o, "  otlp:");
    let url = format!("http://{host}:{}{}", e.port, e.path);
    let _ = writeln!(o, "    endpoint: {}", q(&url));
    let _ = writeln!(o, "    batch: {}", x.batch);
    let _ = writeln!(
        o,
        "    flush_interval: {}",
        render_duration(x.flush_interval)
    );
    let _ = writeln!(o, "    timeout: {}", render_duration(x.timeout));
    let _ = writeln!(o, "    queue: {}", x.queue);
    let _ = writeln!(o, "    service_name: {}", q(&x.service_name));
    if x.headers.is_empty() {
        let _ = writeln!(o, "    headers: {{}}");
    } else {
        let _ = writeln!(o, "    headers:");
        for (i, (name, _)) in x.headers.iter().enumerate() {
            let shown = match x.header_sources.get(i) {
                Some(HeaderSource::Env(var)) => q(&format!("${{env:{var}}}")),
                Some(HeaderSource::File(path)) => q(&format!("${{file:{path}}}")),
                _ => "\"<redacted>\"".to_string(),
            };
            let _ = writeln!(o, "      {}: {shown}", q(name));
        }
    }
}
