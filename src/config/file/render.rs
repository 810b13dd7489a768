//! `Config` → YAML text in the file's own format, every default filled in, secrets redacted.
//! Written by hand (not through serde) so the key order matches `config/tollgate.yaml` and the
//! output can carry comments. Strings are JSON-quoted, which YAML reads as double-quoted scalars.

use std::fmt::Write as _;

use super::formats::{render_duration, render_size};
use crate::config::*;

fn q(s: &str) -> String {
    // serde_json cannot fail on a &str; the fallback keeps this free of unwrap.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
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

/// `traffic:`: every rule as compiled (names for indices, the time zone as written).
fn render_traffic(o: &mut String, c: &Config) {
    use crate::policy::traffic::{part, LimitKind};
    let t = &c.traffic;
    let _ = writeln!(o, "traffic:");
    let _ = writeln!(o, "  time_zone: {}", q(&t.time_zone));
    let _ = writeln!(o, "  sync_interval: {}", render_duration(t.sync_interval));
    let _ = writeln!(o, "  max_keys: {}", t.max_keys);
    let _ = writeln!(o, "  max_global_keys: {}", t.max_global_keys);
    match &t.redis {
        None => {
            let _ = writeln!(o, "  redis: null");
        }
        Some(r) => {
            // The password of a URL is never shown.
            let url = match r.url.split_once('@') {
                Some((auth, host)) => match auth.rsplit_once(':') {
                    Some((user, _)) => format!("{user}:<redacted>@{host}"),
                    None => r.url.to_string(),
                },
                None => r.url.to_string(),
            };
            let _ = writeln!(o, "  redis:");
            let _ = writeln!(o, "    url: {}", q(&url));
            let _ = writeln!(o, "    sync_interval: {}", render_duration(r.sync_interval));
            let _ = writeln!(o, "    timeout: {}", render_duration(r.timeout));
            let _ = writeln!(o, "    on_failure: {}", r.on_failure.as_str());
            let _ = writeln!(o, "    key_prefix: {}", q(&r.key_prefix));
        }
    }
    if t.rules.is_empty() {
        let _ = writeln!(o, "  rules: []");
        return;
    }
    let _ = writeln!(o, "  rules:");
    let words = |l: &[Box<str>]| l.iter().map(|g| q(g)).collect::<Vec<_>>().join(", ");
    for r in &t.rules {
        let _ = writeln!(o, "    - name: {}", q(&r.name));
        if let Some(s) = &r.servers {
            let paths: Vec<String> = s
                .iter()
                .map(|&i| q(c.servers.get(i).map_or("?", |s| s.path.as_str())))
                .collect();
            let _ = writeln!(o, "      servers: [{}]", paths.join(", "));
        }
        if let Some(us) = &r.upstreams {
            let names: Vec<String> = us
                .iter()
                .map(|&u| q(c.upstreams.get(u).map_or("?", |u| u.name.as_str())))
                .collect();
            let _ = writeln!(o, "      upstreams: [{}]", names.join(", "));
        }
        if let Some(f) = &r.tools {
            let _ = writeln!(o, "      tools: [{}]", words(f.allow_globs()));
        }
        if let Some(ms) = &r.methods {
            let names: Vec<String> = ms.iter().map(|m| q(m.as_str())).collect();
            let _ = writeln!(o, "      methods: [{}]", names.join(", "));
        }
        for (key, l) in [
            ("subjects", &r.subjects),
            ("clients", &r.clients),
            ("tenants", &r.tenants),
            ("roles", &r.roles),
        ] {
            if !l.is_empty() {
                let _ = writeln!(o, "      {key}: [{}]", words(l));
            }
        }
        let key: Vec<&str> = part::NAMES
            .iter()
            .filter(|(_, b)| r.key & b != 0)
            .map(|(n, _)| *n)
            .collect();
        let _ = writeln!(o, "      key: [{}]", key.join(", "));
        if let Some(g) = r.loop_guard {
            let window = render_duration(g.window);
            let _ = writeln!(o, "      loop: {{max: {}, window: {window}}}", g.max);
            continue;
        }
        for l in &r.limits {
            match l.kind {
                LimitKind::Rate { limit, per, burst } => {
                    let _ = writeln!(
                        o,
                        "      rate: {{limit: {limit}, per: {}, burst: {burst}}}",
                        render_duration(per)
                    );
                }
                LimitKind::Concurrency { limit } => {
                    let _ = writeln!(o, "      concurrency: {limit}");
                }
                LimitKind::Quota { limit, window } => {
                    let _ = writeln!(
                        o,
                        "      quota: {{limit: {limit}, window: {}}}",
                        window.as_str()
                    );
                }
                LimitKind::Tokens { limit, window } => {
                    let costs: Vec<String> = r
                        .costs
                        .iter()
                        .map(|(g, n)| format!("{}: {n}", q(g)))
                        .collect();
                    let _ = writeln!(
                        o,
                        "      tokens: {{limit: {limit}, window: {}, costs: {{{}}}}}",
                        window.as_str(),
                        costs.join(", ")
                    );
                }
            }
        }
    }
}

/// `auth:`. Secrets are shown as where they come from (`${env:NAME}`, `${file:PATH}`) or
/// `<redacted>`; API keys only by their hash (which is what the file holds).
fn render_auth(o: &mut String, a: &crate::config::Auth) {
    let _ = writeln!(o, "auth:");
    if a.issuers.is_empty() {
        let _ = writeln!(o, "  issuers: []");
    } else {
        let _ = writeln!(o, "  issuers:");
    }
    for i in &a.issuers {
        let algs: Vec<String> = i.algorithms.iter().map(|x| format!("{x:?}")).collect();
        let _ = writeln!(o, "    - name: {}", q(&i.name));
        let _ = writeln!(o, "      issuer: {}", q(&i.issuer));
        let _ = writeln!(o, "      algorithms: [{}]", algs.join(", "));
        match &i.secret_ref {
            Some(s) => {
                let _ = writeln!(o, "      secret: {}", q(s));
            }
            None => {
                let _ = writeln!(o, "      secret: null");
            }
        }
        let _ = writeln!(o, "      keys: {}", list(&i.key_files));
        match &i.jwks_url {
            Some(u) => {
                let _ = writeln!(o, "      jwks_url: {}", q(u));
            }
            None => {
                let _ = writeln!(o, "      jwks_url: null");
            }
        }
        let _ = writeln!(o, "      discovery: {}", i.discovery);
        match &i.audience {
            Some(a) => {
                let _ = writeln!(o, "      audience: {}", list(a));
            }
            None => {
                let _ = writeln!(o, "      audience: null  # each server's resource");
            }
        }
        let _ = writeln!(o, "      leeway: {}", render_duration(i.leeway));
        let path = |p: &Option<crate::config::auth::ClaimPath>| {
            p.as_ref().map_or("null".to_string(), |p| q(&p.dotted()))
        };
        let _ = writeln!(
            o,
            "      claims: {{subject: {}, client: {}, tenant: {}, roles: {}, scopes: {}}}",
            q(&i.claims.subject.dotted()),
            path(&i.claims.client),
            path(&i.claims.tenant),
            path(&i.claims.roles),
            path(&i.claims.scopes)
        );
        render_introspection(o, i.introspection.as_deref());
    }
    if a.api_keys.is_empty() {
        let _ = writeln!(o, "  api_keys: []");
    } else {
        let _ = writeln!(o, "  api_keys:");
    }
    for k in &a.api_keys {
        let hex: String = k.sha256.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(o, "    - name: {}", q(&k.name));
        let _ = writeln!(o, "      sha256: {}", q(&hex));
        let _ = writeln!(o, "      roles: {}", list(&k.roles));
        let _ = writeln!(o, "      scopes: {}", list(&k.scopes));
        let tenant = k.tenant.as_deref().map_or("null".to_string(), q);
        let _ = writeln!(o, "      tenant: {tenant}");
    }
    let _ = writeln!(o, "  mtls:");
    let _ = writeln!(o, "    subject: {}", a.mtls.subject.as_str());
    if a.mtls.principals.is_empty() {
        let _ = writeln!(o, "    principals: []");
    } else {
        let _ = writeln!(o, "    principals:");
    }
    for p in &a.mtls.principals {
        let tenant = p.tenant.as_deref().map_or("null".to_string(), q);
        let _ = writeln!(
            o,
            "      - {{subject: {}, roles: {}, tenant: {tenant}}}",
            q(&p.subject),
            list(&p.roles)
        );
    }
    match &a.development {
        None => {
            let _ = writeln!(o, "  development: null  # off");
        }
        Some(d) => {
            let _ = writeln!(o, "  development:");
            let _ = writeln!(o, "    subject: {}", q(&d.subject));
            let _ = writeln!(o, "    roles: {}", list(&d.roles));
        }
    }
    let _ = writeln!(o, "  token_cache_entries: {}", a.token_cache_entries);
    let _ = writeln!(
        o,
        "  max_token_bytes: {}",
        render_size(a.max_token_bytes as u64)
    );
    let k = &a.key_refresh;
    let _ = writeln!(o, "  key_refresh:");
    let _ = writeln!(o, "    min_interval: {}", render_duration(k.min_interval));
    let _ = writeln!(
        o,
        "    default_interval: {}",
        render_duration(k.default_interval)
    );
    let _ = writeln!(o, "    max_interval: {}", render_duration(k.max_interval));
    let _ = writeln!(
        o,
        "    unknown_kid_interval: {}",
        render_duration(k.unknown_kid_interval)
    );
    let _ = writeln!(o, "    timeout: {}", render_duration(k.timeout));
}

/// `servers[].rules`, as compiled (names, upstream names, methods, windows).
fn render_rules(o: &mut String, c: &Config, rules: Option<&crate::policy::rules::Rules>) {
    let Some(rules) = rules else {
        let _ = writeln!(o, "    rules: null");
        return;
    };
    if rules.rules.is_empty() {
        let _ = writeln!(o, "    rules: []");
        return;
    }
    let _ = writeln!(o, "    rules:");
    let list = |l: &[Box<str>]| l.iter().map(|g| q(g)).collect::<Vec<_>>().join(", ");
    for r in &rules.rules {
        let effect = if r.allow { "allow" } else { "deny" };
        if r.name.starts_with('#') {
            // An unnamed rule (named by its position when it decides).
            let _ = writeln!(o, "      - effect: {effect}");
        } else {
            let _ = writeln!(o, "      - name: {}", q(&r.name));
            let _ = writeln!(o, "        effect: {effect}");
        }
        if let Some(us) = &r.upstreams {
            let names: Vec<String> = us
                .iter()
                .map(|&u| q(c.upstreams.get(u).map_or("?", |u| u.name.as_str())))
                .collect();
            let _ = writeln!(o, "        upstreams: [{}]", names.join(", "));
        }
        for (key, f) in [
            ("tools", &r.tools),
            ("prompts", &r.prompts),
            ("resources", &r.resources),
        ] {
            if let Some(f) = f {
                let _ = writeln!(o, "        {key}: [{}]", list(f.allow_globs()));
            }
        }
        if let Some(ms) = &r.methods {
            let names: Vec<String> = ms.iter().map(|m| q(m.as_str())).collect();
            let _ = writeln!(o, "        methods: [{}]", names.join(", "));
        }
        if r.annotations != (0, 0) {
            let hints: Vec<String> = crate::policy::rules::ann::NAMES
                .iter()
                .filter_map(|&(n, bit)| {
                    if r.annotations.0 & bit != 0 {
                        Some(format!("{n}: true"))
                    } else if r.annotations.1 & bit != 0 {
                        Some(format!("{n}: false"))
                    } else {
                        None
                    }
                })
                .collect();
            let _ = writeln!(o, "        annotations: {{{}}}", hints.join(", "));
        }
        for (key, l) in [
            ("subjects", &r.subjects),
            ("clients", &r.clients),
            ("tenants", &r.tenants),
            ("roles", &r.roles),
            ("scopes", &r.scopes),
        ] {
            if !l.is_empty() {
                let _ = writeln!(o, "        {key}: [{}]", list(l));
            }
        }
        if !r.sources.is_empty() {
            let cidrs: Vec<String> = r
                .sources
                .iter()
                .map(|c| q(&format!("{}/{}", c.addr, c.len)))
                .collect();
            let _ = writeln!(o, "        sources: [{}]", cidrs.join(", "));
        }
        if let Some(w) = &r.window {
            let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
            let _ = writeln!(o, "        hours: \"{}-{}\"", hm(w.start), hm(w.end));
            let days: Vec<&str> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .iter()
                .enumerate()
                .filter(|(i, _)| w.days & (1 << i) != 0)
                .map(|(_, d)| *d)
                .collect();
            let _ = writeln!(o, "        days: [{}]", days.join(", "));
        }
        if let Some(m) = &r.message {
            let _ = writeln!(o, "        message: {}", q(m));
        }
    }
}

/// `auth.issuers[].introspection`: the secret as its reference or redacted.
fn render_introspection(o: &mut String, i: Option<&crate::config::auth::Introspection>) {
    let Some(i) = i else {
        let _ = writeln!(o, "      introspection: null");
        return;
    };
    let _ = writeln!(o, "      introspection:");
    match &i.endpoint {
        Some(e) => {
            let _ = writeln!(o, "        endpoint: {}", q(e));
        }
        None => {
            let _ = writeln!(
                o,
                "        endpoint: null  # the issuer's metadata's introspection_endpoint"
            );
        }
    }
    let _ = writeln!(o, "        client_id: {}", q(&i.client_id));
    let shown = match &i.client_secret_source {
        HeaderSource::Env(var) => q(&format!("${{env:{var}}}")),
        HeaderSource::File(path) => q(&format!("${{file:{path}}}")),
        HeaderSource::Literal => "\"<redacted>\"".to_string(),
    };
    let _ = writeln!(o, "        client_secret: {shown}");
    let _ = writeln!(o, "        max_cache: {}", render_duration(i.max_cache));
    let _ = writeln!(
        o,
        "        negative_cache: {}",
        render_duration(i.negative_cache)
    );
    let _ = writeln!(o, "        timeout: {}", render_duration(i.timeout));
    let _ = writeln!(o, "        max_response_bytes: {}", i.max_response_bytes);
}

/// `upstreams[].credentials`: the secret as its reference (`${env:…}`/`${file:…}`) or redacted.
fn render_credentials(o: &mut String, c: Option<&crate::config::credentials::Credentials>) {
    use crate::config::credentials::Grant;
    let Some(c) = c else {
        let _ = writeln!(o, "    credentials: null");
        return;
    };
    let _ = writeln!(o, "    credentials:");
    let _ = writeln!(o, "      {}:", c.grant.as_str());
    let _ = writeln!(o, "        token_url: {}", q(&c.token_url));
    let _ = writeln!(o, "        client_id: {}", q(&c.client_id));
    let shown = match &c.client_secret_source {
        HeaderSource::Env(var) => q(&format!("${{env:{var}}}")),
        HeaderSource::File(path) => q(&format!("${{file:{path}}}")),
        HeaderSource::Literal => "\"<redacted>\"".to_string(),
    };
    let _ = writeln!(o, "        client_secret: {shown}");
    let opt = |v: &Option<String>| v.as_deref().map_or("null".to_string(), q);
    let _ = writeln!(o, "        scope: {}", opt(&c.scope));
    if c.resource_set {
        let _ = writeln!(o, "        resource: {}", opt(&c.resource));
    } else {
        let _ = writeln!(
            o,
            "        resource: {}  # the upstream's url",
            opt(&c.resource)
        );
    }
    let _ = writeln!(o, "        audience: {}", opt(&c.audience));
    let _ = writeln!(
        o,
        "        refresh_before: {}",
        render_duration(c.refresh_before)
    );
    let _ = writeln!(o, "        ca_file: {}", opt(&c.ca_file));
    let _ = writeln!(
        o,
        "        connect_timeout: {}",
        render_duration(c.connect_timeout)
    );
    let _ = writeln!(
        o,
        "        request_timeout: {}",
        render_duration(c.request_timeout)
    );
    let _ = writeln!(o, "        max_response_bytes: {}", c.max_response_bytes);
    if c.grant == Grant::TokenExchange {
        let _ = writeln!(o, "        actor: {}", c.actor);
        let _ = writeln!(o, "        cache_entries: {}", c.cache_entries);
    }
}

/// `tool_timeouts`, `retries` and `circuit_breaker` of one upstream.
fn render_resilience(o: &mut String, u: &crate::config::Upstream) {
    if u.tool_timeouts.is_empty() {
        let _ = writeln!(o, "    tool_timeouts: {{}}");
    } else {
        let _ = writeln!(o, "    tool_timeouts:");
        for (glob, d) in &u.tool_timeouts {
            let _ = writeln!(o, "      {}: {}", q(glob), render_duration(*d));
        }
    }
    let _ = writeln!(o, "    retries:");
    let _ = writeln!(o, "      attempts: {}", u.retries.attempts);
    let _ = writeln!(o, "      backoff: {}", render_duration(u.retries.backoff));
    let cb = &u.circuit_breaker;
    let _ = writeln!(o, "    circuit_breaker:");
    let _ = writeln!(o, "      consecutive_failures: {}", cb.consecutive_failures);
    let _ = writeln!(o, "      error_ratio: {}", cb.error_ratio);
    let _ = writeln!(o, "      min_requests: {}", cb.min_requests);
    let _ = writeln!(o, "      window: {}", render_duration(cb.window));
    let _ = writeln!(o, "      open_for: {}", render_duration(cb.open_for));
    let _ = writeln!(o, "      half_open_probes: {}", cb.half_open_probes);
    let h = &u.health;
    let _ = writeln!(o, "    health:");
    let _ = writeln!(o, "      interval: {}", render_duration(h.interval));
    let _ = writeln!(o, "      timeout: {}", render_duration(h.timeout));
    let _ = writeln!(o, "      unhealthy_after: {}", h.unhealthy_after);
    let _ = writeln!(o, "      healthy_after: {}", h.healthy_after);
    match &h.path {
        None => {
            let _ = writeln!(o, "      path: null  # the replica's URL path");
        }
        Some(p) => {
            let _ = writeln!(o, "      path: {}", q(p));
        }
    }
}
