//! The shipped config files load, and say what their comments promise.

use std::path::{Path, PathBuf};

use tollgate::config::{load_file, Config, KeySource, UpstreamTarget};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn load(path: &Path) -> Config {
    load_file(path).unwrap_or_else(|e| panic!("{} does not load:\n{e}", path.display()))
}

/// The upstream served at `path`.
fn served_at<'c>(c: &'c Config, path: &str) -> &'c tollgate::config::Upstream {
    let server = c
        .servers
        .iter()
        .find(|s| s.path == path)
        .unwrap_or_else(|| panic!("nothing served at {path}"));
    &c.upstreams[server.primary()]
}

fn assert_standard_addresses(c: &Config) {
    assert_eq!(c.listen.addr.to_string(), "127.0.0.1:8080");
    assert_eq!(
        c.admin.addr.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9090")
    );
}

#[test]
fn default_config_serves_the_demo_at_mcp() {
    let c = load(&repo("config/tollgate.yaml"));
    assert_standard_addresses(&c);
    let demo = served_at(&c, "/mcp");
    assert_eq!(demo.name, "demo");
    assert_eq!(demo.target, UpstreamTarget::BuiltinDemo);
    assert_eq!(c.servers.len(), 1);
    if std::env::var_os("TOLLGATE_SESSION_KEY").is_none() {
        assert_eq!(c.session.key_source, KeySource::Generated);
    }
}

#[test]
fn default_config_is_the_empty_config_spelled_out() {
    // Every key in the default file is at its default: the effective configs agree (apart from
    // the generated key, which is redacted in both).
    let file = load(&repo("config/tollgate.yaml"));
    let empty = tollgate::config::load_str("").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        tollgate::config::render_effective(&file),
        tollgate::config::render_effective(&empty)
    );
}

#[test]
fn every_example_loads() {
    let dir = repo("config/examples");
    let mut seen = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    entries.sort();
    for path in entries {
        // The auth examples read their secret from the environment, limits.yaml its audit file.
        let text = std::fs::read_to_string(&path).unwrap();
        let env = |k: &str| match k {
            "TOLLGATE_JWT_SECRET" => Some("an-example-secret-of-32-bytes-or-more".to_string()),
            // limits.yaml writes its audit records where this names (opened only by `run`).
            "TOLLGATE_AUDIT_FILE" => Some("/tmp/tollgate-example-audit.jsonl".to_string()),
            _ => std::env::var(k).ok(),
        };
        let c = tollgate::config::load_str_with_env(&text, &env)
            .unwrap_or_else(|e| panic!("{} does not load:\n{e}", path.display()));
        assert_standard_addresses(&c);
        assert!(!c.servers.is_empty(), "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 1, "no examples found in {}", dir.display());
}

#[test]
fn own_upstream_example_puts_the_users_server_at_mcp_and_the_demo_beside_it() {
    let c = load(&repo("config/examples/own-upstream.yaml"));
    let mine = served_at(&c, "/mcp");
    match &mine.target {
        UpstreamTarget::Http(t) => {
            assert_eq!(
                (t.host.as_str(), t.port, t.path.as_str()),
                ("127.0.0.1", 3101, "/mcp")
            );
            assert_eq!(t.authority, "127.0.0.1:3101");
        }
        other => panic!("expected an HTTP upstream at /mcp, got {other:?}"),
    }
    assert_eq!(
        served_at(&c, "/demo/mcp").target,
        UpstreamTarget::BuiltinDemo
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// A fresh empty directory to run the binary in.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

#[test]
fn check_takes_the_same_default_as_run_and_says_which_file_it_read() {
    // No --config and no config/tollgate.yaml here: built-in defaults, and it says so.
    let empty = scratch("check-defaults");
    let out = std::process::Command::new(BIN)
        .arg("check")
        .current_dir(&empty)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("built-in defaults") && stderr.contains("config/tollgate.yaml"),
        "{stderr}"
    );
    let defaults = tollgate::config::render_effective(
        &tollgate::config::load_str("").unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(stdout, defaults);

    // In the repository: config/tollgate.yaml, named.
    let out = std::process::Command::new(BIN)
        .arg("check")
        .current_dir(repo(""))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("config: config/tollgate.yaml"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("upstreams:"));

    // --config has a help text on both commands.
    for cmd in ["run", "check"] {
        let out = std::process::Command::new(BIN)
            .args([cmd, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("--config") && help.contains("default: config/tollgate.yaml"),
            "{cmd}: {help}"
        );
    }
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn run_logs_which_config_file_it_loaded() {
    // The default file in the working directory, on a port that is taken so the run ends at once.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let dir = scratch("run-default");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("config/tollgate.yaml"),
        format!("listen:\n  address: \"{addr}\"\nadmin: null\n"),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .arg("run")
        .current_dir(&dir)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("config: config/tollgate.yaml"), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rego_example_policy_decides_as_its_comments_say() {
    use tollgate::policy::rego::{RegoInput, RegoPolicy};
    use tollgate::policy::{Principal, Source};

    // Policy paths are relative to the working directory: the repository root, as the
    // example's comment says (cargo runs tests there).
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let c = load(&repo("config/examples/rego.yaml"));
    let server = c.servers.iter().find(|s| s.path == "/mcp").unwrap();
    let rego = server.rego.as_ref().expect("the example has a policy");
    assert_eq!(rego.cache_ttl, std::time::Duration::from_secs(30));
    let policy = RegoPolicy::new(rego.program.clone(), &server.path);

    let who = |roles: &[&str], id: u8| Principal {
        source: Source::ApiKey { key: 0 },
        subject: format!("p{id}").into(),
        client: None,
        tenant: None,
        roles: roles.iter().map(|r| Box::from(*r)).collect(),
        scopes: Box::new([]),
        expires_at: None,
        id: [id; 16],
    };
    let (reader, admin, nobody) = (who(&["reader"], 1), who(&["admin"], 2), who(&[], 3));
    let decide = |p: &Principal, method: &str, tool: Option<&str>, annotations: Option<&[u8]>| {
        policy.decide(&RegoInput {
            principal: p,
            server: "/mcp",
            upstream: Some("demo"),
            method,
            tool,
            argument_keys: &["message"],
            annotations,
            time_unix: 1_800_000_000,
            source: None,
        })
    };
    let destructive: Option<&[u8]> = Some(br#"{"destructiveHint": true}"#);
    let read_only: Option<&[u8]> = Some(br#"{"readOnlyHint": true}"#);

    let d = decide(&reader, "tools/call", Some("echo"), read_only);
    assert_eq!((d.allow, &*d.reason), (true, "reader_echo"));
    let d = decide(&reader, "tools/call", Some("add"), read_only);
    assert_eq!((d.allow, &*d.reason), (false, "not_allowed"));
    assert!(d.message.is_some());
    let d = decide(&reader, "tools/call", Some("echo"), destructive);
    assert_eq!((d.allow, &*d.reason), (false, "destructive_needs_admin"));
    let d = decide(&admin, "tools/call", Some("echo"), destructive);
    assert_eq!((d.allow, &*d.reason, d.cacheable), (true, "admin", true));
    let d = decide(&nobody, "tools/list", None, None);
    assert_eq!((d.allow, &*d.reason), (true, "rego_allow"));
    let d = decide(&nobody, "tools/call", Some("echo"), None);
    assert!(!d.allow);
}
