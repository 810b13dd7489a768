use super::*;

#[test]
fn durations() {
    assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(duration("24h"), Ok(Duration::from_secs(86_400)));
    assert_eq!(duration("0s"), Ok(Duration::ZERO));
    for bad in [
        "", "10", "s", "10 s", "1.5s", "-1s", "10S", "10sec", "1d", "+5s",
    ] {
        assert!(duration(bad).is_err(), "{bad}");
    }
    assert!(duration("10").unwrap_err().contains("ambiguous"));
    assert!(duration("99999999999999999999h").is_err());
    assert!(duration("9999999999999999h")
        .unwrap_err()
        .contains("too large"));
    for d in ["250ms", "10s", "5m", "24h", "1500ms", "90s", "0s"] {
        let parsed = duration(d).unwrap();
        assert_eq!(duration(&render_duration(parsed)), Ok(parsed));
    }
    assert_eq!(render_duration(Duration::from_secs(120)), "2m");
    assert_eq!(render_duration(Duration::from_millis(1500)), "1500ms");
}

#[test]
fn sizes() {
    assert_eq!(size("16384"), Ok(16384));
    assert_eq!(size("0"), Ok(0));
    assert_eq!(size("100B"), Ok(100));
    assert_eq!(size("16KiB"), Ok(16384));
    assert_eq!(size("4MiB"), Ok(4 << 20));
    assert_eq!(size("1GiB"), Ok(1 << 30));
    for bad in ["", "lots", "4 MiB", "4mib", "MiB", "1.5MiB", "-1", "4TiB"] {
        assert!(size(bad).is_err(), "{bad}");
    }
    for ambiguous in ["4MB", "16KB", "1G", "16k"] {
        assert!(
            size(ambiguous).unwrap_err().contains("ambiguous"),
            "{ambiguous}"
        );
    }
    assert!(size("99999999999GiB").unwrap_err().contains("too large"));
    assert_eq!(render_size(4 << 20), "4MiB");
    assert_eq!(render_size(16384), "16KiB");
    assert_eq!(render_size(1000), "1000");
    assert_eq!(render_size(0), "0");
}

fn http(host: &str, port: u16, path: &str, authority: &str) -> UpstreamTarget {
    UpstreamTarget::Http(HttpTarget {
        host: host.into(),
        port,
        path: path.into(),
        authority: authority.into(),
        tls: false,
    })
}

#[test]
fn upstream_urls() {
    assert_eq!(
        upstream_url("builtin:demo"),
        Ok(UpstreamTarget::BuiltinDemo)
    );
    // No path is an error, not a silent `/`; an explicit `/` is fine.
    assert_eq!(
        upstream_url("http://127.0.0.1:9000").unwrap_err(),
        "URL has no path; give the upstream's MCP endpoint path, e.g. \
         http://127.0.0.1:9000/mcp (write http://127.0.0.1:9000/ if the endpoint really is /)"
    );
    assert!(upstream_url("http://example.com").is_err());
    assert!(upstream_url("HTTP://h?q").is_err());
    assert_eq!(
        upstream_url("http://example.com/"),
        Ok(http("example.com", 80, "/", "example.com"))
    );
    assert_eq!(
        upstream_url("http://h:80/mcp"),
        Ok(http("h", 80, "/mcp", "h"))
    );
    assert_eq!(
        upstream_url("http://127.0.0.1:3101/mcp?x=1&y=2"),
        Ok(http("127.0.0.1", 3101, "/mcp?x=1&y=2", "127.0.0.1:3101"))
    );
    assert_eq!(upstream_url("HTTP://h/?q"), Ok(http("h", 80, "/?q", "h")));
    assert_eq!(
        upstream_url("http://[::1]:8000/m"),
        Ok(http("::1", 8000, "/m", "[::1]:8000"))
    );
    assert_eq!(
        upstream_url("http://[::1]/m"),
        Ok(http("::1", 80, "/m", "[::1]"))
    );
    assert_eq!(
        upstream_url("http://Upstream.Local/"),
        Ok(http("Upstream.Local", 80, "/", "Upstream.Local"))
    );

    let err = |s: &str| upstream_url(s).unwrap_err();
    let https = |host: &str, port: u16, path: &str, authority: &str| {
        UpstreamTarget::Http(HttpTarget {
            host: host.into(),
            port,
            path: path.into(),
            authority: authority.into(),
            tls: true,
        })
    };
    assert_eq!(
        upstream_url("https://x/mcp"),
        Ok(https("x", 443, "/mcp", "x"))
    );
    assert_eq!(
        upstream_url("HTTPS://x:8443/mcp"),
        Ok(https("x", 8443, "/mcp", "x:8443"))
    );
    assert_eq!(
        upstream_url("https://x:80/mcp"),
        Ok(https("x", 80, "/mcp", "x:80"))
    );
    assert!(err("ftp://x/").contains("unsupported scheme \"ftp\""));
    assert!(err("builtin:other").contains("unknown builtin \"other\" (known: demo)"));
    assert!(err("example.com/mcp").contains("expected builtin:demo"));
    assert!(err("http://u:p@h/").contains("user info"));
    assert!(err("http://h/#frag").contains("fragment"));
    assert!(err("http://h:0/").contains("port"));
    assert!(err("http://h:65536/").contains("port"));
    assert!(err("http://h:/").contains("port"));
    assert!(err("http://h:+80/").contains("port"));
    assert!(err("http://::1/").contains("brackets"));
    assert!(err("http://[::1/").contains("unclosed"));
    assert!(err("http://[nope]/").contains("IPv6"));
    assert!(err("http:///mcp").contains("missing host"));
    assert!(err("http://h/a b").contains("visible ASCII"));
    assert!(err("http://bad_host/").contains("host name"));
}

#[test]
fn server_paths() {
    for ok in ["/", "/mcp", "/demo/mcp", "/a-b_c.d~e/%20", "/v1:x"] {
        assert_eq!(server_path(ok), Ok(()), "{ok}");
    }
    for bad in [
        "mcp",
        "",
        "/mcp?x",
        "/mcp#x",
        "/mcp/",
        "//mcp",
        "/a//b",
        "/a/./b",
        "/a/..",
        "/m cp",
        "/.well-known/x",
        "/é",
    ] {
        assert!(server_path(bad).is_err(), "{bad}");
    }
}

#[test]
fn host_patterns() {
    for ok in [
        "*",
        "localhost",
        "example.com",
        "*.example.com",
        "127.0.0.1",
        "[::1]",
        "a-b.c",
    ] {
        assert_eq!(host_pattern(ok), Ok(()), "{ok}");
    }
    assert!(host_pattern("Example.com")
        .unwrap_err()
        .contains("lower-case"));
    assert!(host_pattern("example.com:8080")
        .unwrap_err()
        .contains("port"));
    assert!(host_pattern("[::1]:80").is_err());
    for bad in [
        "",
        "a..b",
        "-a.com",
        "a*.com",
        "*.",
        "**",
        "exa mple.com",
        "foo.*",
    ] {
        assert!(host_pattern(bad).is_err(), "{bad}");
    }
}

#[test]
fn origins() {
    for ok in [
        "*",
        "https://app.example.com",
        "http://localhost:6274",
        "http://[::1]:80",
        "vscode-webview://abc",
    ] {
        assert_eq!(origin(ok), Ok(()), "{ok}");
    }
    assert!(origin("https://app.example.com/")
        .unwrap_err()
        .contains("no path"));
    assert!(origin("HTTPS://x").unwrap_err().contains("lower-case"));
    for bad in [
        "app.example.com",
        "https://",
        "https://x:0",
        "https://x:99999",
        "https://u@x",
        "1http://x",
        "https://*.x.com",
    ] {
        assert!(origin(bad).is_err(), "{bad}");
    }
}

#[test]
fn names_headers_keys() {
    assert_eq!(upstream_name("demo_1.a-B"), Ok(()));
    assert!(upstream_name("").is_err());
    assert!(upstream_name(&"a".repeat(65)).is_err());
    assert!(upstream_name("a b").is_err());
    assert_eq!(header_name("Authorization"), Ok("authorization".into()));
    assert!(header_name("bad header").is_err());
    assert!(header_name("Host")
        .unwrap_err()
        .contains("set by the gateway"));
    assert!(header_name("Mcp-Session-Id").is_err());
    assert_eq!(header_value("Bearer abc def"), Ok(()));
    use WrittenHeader::*;
    assert_eq!(header_reference("${env:MY_KEY}"), Ok(Env("MY_KEY".into())));
    assert_eq!(
        header_reference("${file:/run/secrets/k}"),
        Ok(File("/run/secrets/k".into()))
    );
    assert_eq!(header_reference("Bearer x"), Ok(Literal("Bearer x".into())));
    assert_eq!(header_reference("a$${b}$"), Ok(Literal("a${b}$".into())));
    assert_eq!(
        header_reference("$${env:X}"),
        Ok(Literal("${env:X}".into()))
    );
    assert_eq!(header_reference("$$${x"), Ok(Literal("$${x".into())));
    assert_eq!(
        header_reference("${MY_API_KEY}").unwrap_err(),
        "${MY_API_KEY} is not expanded; write ${env:MY_API_KEY} to read the environment \
         variable MY_API_KEY (or $${MY_API_KEY} to send the text ${MY_API_KEY} as it is)"
    );
    for bad in [
        "Bearer ${env:X}",
        "${env:X}x",
        "${",
        "x${y}",
        "${file:}",
        "${env:1X}",
    ] {
        assert!(header_reference(bad).is_err(), "{bad}");
    }
    assert!(header_reference("Bearer ${env:X}")
        .unwrap_err()
        .contains("write $${ for a literal ${"));
    assert!(header_value("a\r\nb").is_err());
    assert!(header_value(" a").is_err());
    let k = "00".repeat(31) + "aF";
    let key = hex_key(&k).unwrap();
    assert_eq!(key[31], 0xAF);
    assert!(hex_key("abc").unwrap_err().contains("got 3 characters"));
    let bad = "zz".repeat(32);
    let e = hex_key(&bad).unwrap_err();
    assert!(!e.contains("zz"), "never echo key material: {e}");
    assert_eq!(env_name("TOLLGATE_SESSION_KEY"), Ok(()));
    assert!(env_name("1X").is_err());
    assert!(env_name("").is_err());
    assert_eq!(edit_distance("adress", "address"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
}
