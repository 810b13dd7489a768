//! What a 401 or 403 says in `WWW-Authenticate` (RFC 6750 §3, RFC 9728 §5.1), and where an
//! endpoint's Protected Resource Metadata lives (RFC 9728 §3.1): the client follows
//! `resource_metadata` to find the authorization server.

use crate::proxy::state::Gateway;

/// The resource URI of `server`: what tokens must name as their audience (RFC 8707); its
/// `auth.resource`, or where it is served when it does not authenticate.
pub fn resource(gw: &Gateway, server: usize) -> String {
    let s = &gw.config.servers[server];
    if let Some(a) = &s.auth {
        return a.resource.clone();
    }
    let scheme = if gw.config.listen.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}{}", gw.config.listen.addr, s.path)
}

/// The metadata URL of resource `resource`: `/.well-known/oauth-protected-resource` inserted
/// between its origin and its path (a path of `/` adds nothing).
pub fn metadata_url(resource: &str) -> String {
    let after_scheme = resource.find("://").map_or(0, |i| i + 3);
    let path_at = resource[after_scheme..]
        .find('/')
        .map_or(resource.len(), |i| after_scheme + i);
    let (origin, path) = resource.split_at(path_at);
    let path = path.trim_end_matches('/');
    format!("{origin}/.well-known/oauth-protected-resource{path}")
}

/// Appends `, key="value"` (quotes and backslashes escaped, RFC 9110 quoted-string).
fn param(out: &mut String, key: &str, value: &str) {
    if !out.ends_with(' ') {
        out.push_str(", ");
    }
    out.push_str(key);
    out.push_str("=\"");
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The challenge of a 401: `error` (`invalid_token`) and its description when a credential was
/// presented and failed, nothing when none was; always `resource_metadata`, and `scope` when
/// the endpoint requires scopes.
pub fn unauthorized(resource: &str, scopes: &[String], error: Option<&str>) -> String {
    let mut out = String::from("Bearer ");
    if let Some(description) = error {
        param(&mut out, "error", "invalid_token");
        param(&mut out, "error_description", description);
    }
    param(&mut out, "resource_metadata", &metadata_url(resource));
    if !scopes.is_empty() {
        param(&mut out, "scope", &scopes.join(" "));
    }
    out
}

/// The challenge of a 403 for a missing scope.
pub fn insufficient_scope(gw: &Gateway, server: usize, scope: &str) -> String {
    let resource = resource(gw, server);
    let mut out = String::from("Bearer ");
    param(&mut out, "error", "insufficient_scope");
    param(&mut out, "scope", scope);
    param(&mut out, "resource_metadata", &metadata_url(&resource));
    param(
        &mut out,
        "error_description",
        &format!("the access token lacks the scope {scope}"),
    );
    out
}

/// The path part of `metadata_url(resource)`: where this gateway serves the document.
pub fn metadata_path(resource: &str) -> String {
    let url = metadata_url(resource);
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..]
        .find('/')
        .map_or_else(|| "/".to_string(), |i| url[after_scheme + i..].to_string())
}

/// The Protected Resource Metadata document (RFC 9728 §2) of a resource: where to get tokens
/// for it, which scopes it knows, and that tokens go in the Authorization header only.
pub fn metadata_document(
    resource: &str,
    authorization_servers: &[String],
    scopes_supported: &[String],
) -> Vec<u8> {
    let mut doc = serde_json::json!({
        "resource": resource,
        "authorization_servers": authorization_servers,
        "bearer_methods_supported": ["header"],
    });
    if !scopes_supported.is_empty() {
        doc["scopes_supported"] = serde_json::json!(scopes_supported);
    }
    serde_json::to_vec(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_follow_rfc_9728() {
        assert_eq!(
            metadata_url("http://127.0.0.1:8080/mcp"),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("https://api.example/"),
            "https://api.example/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            metadata_url("https://api.example"),
            "https://api.example/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn metadata_is_served_where_its_url_points() {
        assert_eq!(
            metadata_path("http://127.0.0.1:8080/mcp"),
            "/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_path("https://api.example/"),
            "/.well-known/oauth-protected-resource"
        );
        let doc: serde_json::Value = serde_json::from_slice(&metadata_document(
            "http://h/mcp",
            &["https://issuer.example".into()],
            &[],
        ))
        .unwrap();
        assert_eq!(doc["resource"], "http://h/mcp");
        assert_eq!(doc["authorization_servers"][0], "https://issuer.example");
        assert!(doc.get("scopes_supported").is_none());
    }

    #[test]
    fn challenges_quote_their_values() {
        assert_eq!(
            unauthorized("http://h/mcp", &[], None),
            r#"Bearer resource_metadata="http://h/.well-known/oauth-protected-resource/mcp""#
        );
        assert_eq!(
            unauthorized(
                "http://h/mcp",
                &["a".into(), "b".into()],
                Some("the token has \"expired\"")
            ),
            r#"Bearer error="invalid_token", error_description="the token has \"expired\"", resource_metadata="http://h/.well-known/oauth-protected-resource/mcp", scope="a b""#
        );
    }
}
