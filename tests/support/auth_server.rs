//! A real OAuth 2.1 / OpenID authorization server for integration tests: `tests/auth/as.mjs`
//! (npm oidc-provider, installed by scripts/install-tools.sh into `.tools/oidc`) run with Node 22
//! from `.tools/node`, on an ephemeral loopback port. Tests get real tokens from it: JWT access
//! tokens per resource indicator (RFC 8707) with `roles`/`tenant` claims, opaque tokens and their
//! introspection (RFC 7662), and token exchange (RFC 8693). See tests/auth/README.md.
//!
//! Include it with `#[path = "support/auth_server.rs"] mod auth_server;`. Self-contained (its own
//! small HTTP client), so it does not need the harness module.
//!
//! When `.tools/oidc` is missing `try_start` says why and returns `None` (the test returns early),
//! except under CI (`CI` set, as the test command runs), where a missing tool is a failure.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// How to start the server beyond the JWT resources.
#[derive(Clone, Debug, Default)]
pub struct AuthOptions<'a> {
    /// Resource indicators whose tokens are JWTs (the audience is the indicator itself).
    pub resources: &'a [&'a str],
    /// Resource indicators whose tokens are opaque (introspection only).
    pub opaque_resources: &'a [&'a str],
    /// `RS256` (default) or `ES256`: the JWT access tokens' signing algorithm.
    pub alg: Option<&'a str>,
    /// The user the code flow logs in: `alice` (roles [reader], default) or `bob` ([admin]).
    pub login_as: Option<&'a str>,
}

/// One running `as.mjs`; killed on drop (and it exits by itself when this process dies: its
/// stdin closes).
pub struct AuthServer {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    ready: Value,
    log: Arc<Mutex<Vec<u8>>>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tools() -> PathBuf {
    std::env::var_os("TOLLGATE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools"))
}

/// Node 22 and the oidc-provider install, or the reason they are not usable.
fn node_and_oidc() -> Result<(PathBuf, PathBuf), String> {
    let node = tools().join("node/node_modules/.bin/node");
    let oidc = std::env::var_os("TOLLGATE_OIDC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools().join("oidc"));
    if !node.exists() {
        return Err(format!("{} missing", node.display()));
    }
    if !oidc
        .join("node_modules/oidc-provider/lib/index.js")
        .exists()
    {
        return Err(format!("oidc-provider not installed in {}", oidc.display()));
    }
    Ok((node, oidc))
}

impl AuthServer {
    /// Started with JWT tokens for `resources`; `None` (after saying why) when the tools are not
    /// installed and CI is not set.
    pub fn try_start(resources: &[&str]) -> Option<AuthServer> {
        AuthServer::try_start_with(&AuthOptions {
            resources,
            ..AuthOptions::default()
        })
    }

    pub fn try_start_with(opts: &AuthOptions) -> Option<AuthServer> {
        if !AuthServer::available() {
            return None;
        }
        let (node, oidc) = node_and_oidc().unwrap();
        Some(AuthServer::spawn(&node, &oidc, opts))
    }

    /// Whether Node 22 and oidc-provider are installed: `false` after saying why, a panic when
    /// CI is set (the test command installs them first, so missing there is a failure).
    pub fn available() -> bool {
        match node_and_oidc() {
            Ok(_) => true,
            Err(why) if std::env::var_os("CI").is_some() => panic!(
                "the test authorization server cannot run ({why}), and CI is set: \
                 scripts/install-tools.sh installs it"
            ),
            Err(why) => {
                eprintln!(
                    "\n*** SKIPPED: the test authorization server cannot run: {why} \
                     (run scripts/install-tools.sh) ***\n"
                );
                false
            }
        }
    }

    /// `try_start`, panicking when the tools are missing.
    pub fn start(resources: &[&str]) -> AuthServer {
        let (node, oidc) = node_and_oidc().unwrap_or_else(|why| panic!("{why}"));
        AuthServer::spawn(
            &node,
            &oidc,
            &AuthOptions {
                resources,
                ..AuthOptions::default()
            },
        )
    }

    fn spawn(node: &PathBuf, oidc: &PathBuf, opts: &AuthOptions) -> AuthServer {
        let mut cmd = Command::new(node);
        cmd.arg(repo().join("tests/auth/as.mjs"))
            .env("TOLLGATE_OIDC_DIR", oidc)
            .args(["--alg", opts.alg.unwrap_or("RS256")])
            .args(["--login-as", opts.login_as.unwrap_or("alice")]);
        for r in opts.resources {
            cmd.args(["--resource", r]);
        }
        for r in opts.opaque_resources {
            cmd.args(["--opaque-resource", r]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node tests/auth/as.mjs");
        let stdin = child.stdin.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        // The ready line: as.mjs prints it once its port is bound and its discovery answers.
        let mut stdout = child.stdout.take().unwrap();
        let line = read_line(&mut stdout);
        let ready: Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(_) => {
                let status = child.wait().ok();
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "as.mjs exited before ready ({status:?}): {}",
                    String::from_utf8_lossy(&log.lock().unwrap())
                );
            }
        };
        AuthServer {
            child,
            stdin,
            stdout,
            ready,
            log,
        }
    }

    /// Everything the ready line said (endpoints, clients with secrets and roles, users, kids).
    pub fn ready(&self) -> &Value {
        &self.ready
    }

    fn field(&self, name: &str) -> &str {
        self.ready[name].as_str().unwrap()
    }

    /// `http://127.0.0.1:PORT` (no trailing slash): the `iss` of every token.
    pub fn issuer(&self) -> &str {
        self.field("issuer")
    }

    pub fn jwks_uri(&self) -> &str {
        self.field("jwks_uri")
    }

    pub fn token_endpoint(&self) -> &str {
        self.field("token_endpoint")
    }

    pub fn introspection_endpoint(&self) -> &str {
        self.field("introspection_endpoint")
    }

    /// The OpenID discovery document's URL (RFC 8414's well-known name is served too).
    pub fn discovery_url(&self) -> &str {
        self.field("discovery")
    }

    /// The key id tokens signed with `alg` (`RS256`, `ES256`) carry.
    pub fn kid(&self, alg: &str) -> &str {
        self.ready["kids"][alg].as_str().unwrap()
    }

    /// The secret of a machine client: `reader-bot`, `admin-bot`, `opaque-bot`, `gateway`.
    pub fn client_secret(&self, client: &str) -> &str {
        self.ready["clients"][client]["client_secret"]
            .as_str()
            .unwrap_or_else(|| panic!("no client {client}"))
    }

    /// What the server wrote to stderr so far (its errors; for assertion messages).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    /// A POST of `form` to `url`, authenticated as `client` (HTTP Basic): status and JSON body.
    pub fn post_form(&self, url: &str, client: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let body = form
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_encode(client),
            form_encode(self.client_secret(client))
        ));
        let (status, bytes) = http(
            "POST",
            url,
            &[
                ("Authorization", &format!("Basic {basic}")),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Accept", "application/json"),
            ],
            body.as_bytes(),
        );
        let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("{url}: {e}: {}", String::from_utf8_lossy(&bytes));
        });
        (status, v)
    }

    /// The client-credentials token response (status, JSON) for `resource`; `scope` "" = none.
    pub fn token_response(&self, client: &str, resource: &str, scope: &str) -> (u16, Value) {
        self.post_form(
            self.token_endpoint(),
            client,
            &[
                ("grant_type", "client_credentials"),
                ("resource", resource),
                ("scope", scope),
            ],
        )
    }

    /// A real access token for `client` and `resource` (a JWT signed with the server's key,
    /// unless the resource is opaque or the client is `opaque-bot`); `scope` "" = none.
    pub fn client_credentials(&self, client: &str, resource: &str, scope: &str) -> String {
        let (status, v) = self.token_response(client, resource, scope);
        assert_eq!(status, 200, "token request: {v}\n{}", self.log());
        v["access_token"].as_str().unwrap().to_string()
    }

    /// An opaque token (from `opaque-bot`, roles [reader]) for `resource`.
    pub fn opaque_token(&self, resource: &str, scope: &str) -> String {
        self.client_credentials("opaque-bot", resource, scope)
    }

    /// RFC 7662 introspection of `token`, authenticated as the `gateway` client.
    pub fn introspect(&self, token: &str) -> Value {
        let (status, v) = self.post_form(
            self.introspection_endpoint(),
            "gateway",
            &[("token", token)],
        );
        assert_eq!(status, 200, "introspection: {v}\n{}", self.log());
        v
    }

    /// RFC 8693 exchange of `subject_token` by `client` for a token for `resource`: status and
    /// the whole response (`access_token`, `issued_token_type`, ...). Only `gateway` may.
    pub fn exchange_as(&self, client: &str, subject_token: &str, resource: &str) -> (u16, Value) {
        self.post_form(
            self.token_endpoint(),
            client,
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", subject_token),
                ("subject_token_type", ACCESS_TOKEN_TYPE),
                ("resource", resource),
            ],
        )
    }

    /// `exchange_as("gateway", ...)`, asserting success: the new access token.
    pub fn exchange(&self, subject_token: &str, resource: &str) -> String {
        let (status, v) = self.exchange_as("gateway", subject_token, resource);
        assert_eq!(status, 200, "token exchange: {v}\n{}", self.log());
        v["access_token"].as_str().unwrap().to_string()
    }

    /// A user's access token through the authorization code flow with PKCE, as an MCP client
    /// gets one: registers a public client (RFC 7591), follows the authorization URL (with
    /// `resource` and `scope`) through the server's automatic login of `--login-as` (`alice`
    /// unless `AuthOptions::login_as`) and consent, and redeems the code. `scope` "" = none.
    pub fn user_token(&self, resource: &str, scope: &str) -> String {
        const REDIRECT: &str = "http://127.0.0.1:47001/callback";
        let reg = serde_json::json!({
            "client_name": "auth_server.rs",
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "application_type": "native",
            "scope": scope,
        });
        let (status, _, body) = http_full(
            "POST",
            self.ready["registration_endpoint"].as_str().unwrap(),
            &[("Content-Type", "application/json")],
            reg.to_string().as_bytes(),
        );
        assert_eq!(
            status,
            201,
            "registration: {}",
            String::from_utf8_lossy(&body)
        );
        let client: Value = serde_json::from_slice(&body).unwrap();
        let client_id = client["client_id"].as_str().unwrap();

        let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut random = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).unwrap();
        let verifier = b64.encode(random);
        let challenge = b64.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ));
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", "s1"),
            ("resource", resource),
        ];
        if !scope.is_empty() {
            params.push(("scope", scope));
        }
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect();
        let mut url = format!(
            "{}?{}",
            self.ready["authorization_endpoint"].as_str().unwrap(),
            query.join("&")
        );
        // The "browser": follow redirects, carrying the cookies the server sets, until it sends
        // us back to the redirect URI.
        let mut cookies: Vec<(String, String)> = Vec::new();
        let code = 'follow: {
            for _ in 0..10 {
                let jar = cookies
                    .iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let headers: Vec<(&str, &str)> = if jar.is_empty() {
                    vec![]
                } else {
                    vec![("Cookie", jar.as_str())]
                };
                let (status, fields, body) = http_full("GET", &url, &headers, b"");
                for (name, value) in &fields {
                    if name.eq_ignore_ascii_case("set-cookie") {
                        let pair = value.split(';').next().unwrap();
                        if let Some((n, v)) = pair.split_once('=') {
                            cookies.retain(|(have, _)| have != n);
                            cookies.push((n.to_string(), v.to_string()));
                        }
                    }
                }
                let location = fields
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("location"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| {
                        panic!(
                            "authorization stopped at {url} ({status}): {}\n{}",
                            String::from_utf8_lossy(&body),
                            self.log()
                        )
                    });
                if let Some(query) = location.strip_prefix(&format!("{REDIRECT}?")) {
                    let got: Vec<(&str, &str)> = query
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .collect();
                    let code = got.iter().find(|(k, _)| *k == "code");
                    assert!(
                        code.is_some() && got.contains(&("state", "s1")),
                        "redirected back without a code: {location}"
                    );
                    break 'follow code.unwrap().1.to_string();
                }
                url = if location.starts_with('/') {
                    format!("{}{location}", self.issuer())
                } else {
                    location
                };
            }
            panic!("no redirect back within 10 hops (last {url})");
        };
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
            ("client_id", client_id),
            ("resource", resource),
        ];
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let (status, _, body) = http_full(
            "POST",
            self.token_endpoint(),
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "code redemption: {v}\n{}", self.log());
        v["access_token"].as_str().unwrap().to_string()
    }

    /// Key rotation: the server publishes a second generation of keys beside the first and
    /// signs with it from now on (once; a second call panics). Returns the new kids
    /// (`{"RS256": …, "ES256": …}`), which `kid()` reports from then on. A resource server that
    /// cached the old JWKS meets an unknown `kid` on the next token.
    pub fn rotate_keys(&mut self) -> Value {
        self.stdin.write_all(b"rotate\n").unwrap();
        self.stdin.flush().unwrap();
        let line = read_line(&mut self.stdout);
        let v: Value = serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("rotate: {e}: {}", String::from_utf8_lossy(&line)));
        assert_eq!(v["rotated"], true, "rotate: {v}");
        self.ready["kids"] = v["kids"].clone();
        v["kids"].clone()
    }

    /// The published key set.
    pub fn jwks(&self) -> Value {
        let (status, body) = http("GET", self.jwks_uri(), &[], b"");
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line from the server's stdout, read a byte at a time (no buffer to hold back the next).
fn read_line(stdout: &mut ChildStdout) -> Vec<u8> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    line
}

/// Header and claims of a JWT, NOT verified.
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut next = || {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts.next().expect("a JWT has three parts"))
            .expect("base64url");
        serde_json::from_slice::<Value>(&b).expect("JSON")
    };
    let header = next();
    let claims = next();
    (header, claims)
}

/// application/x-www-form-urlencoded, byte by byte.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One HTTP/1.1 request on its own connection (`Connection: close`): status and body.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    let (status, _, body) = http_full(method, url, headers, body);
    (status, body)
}

/// `http`, with the response's header lines (name, value) too.
pub fn http_full(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(authority).unwrap_or_else(|e| panic!("{url}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{url}: no response head"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut payload = raw[split + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        payload = dechunk(&payload);
    }
    let fields = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, fields, payload)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
