//! `upstreams` and `servers`: validation, header values, federation, prefixes, HTTP+SSE.

use super::*;

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
