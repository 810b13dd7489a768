//! `upstreams[].credentials`.

use super::*;

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
