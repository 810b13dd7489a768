//! `auth:` and `servers[].auth`, resolved: issuer indices, decoded keys, secret bytes. `Debug`
//! never shows a secret (the `jsonwebtoken` key types redact themselves; API keys are hashes).

use jsonwebtoken::{Algorithm, DecodingKey};

/// `auth`: who may call (the identity phase, `policy::authn`).
#[derive(Clone, Debug)]
pub struct Auth {
    /// `auth.issuers`: JWT issuers, referenced by index (`Source::Jwt { issuer }`).
    pub issuers: Vec<Issuer>,
    /// `auth.api_keys`: static keys, referenced by index (`Source::ApiKey { key }`).
    pub api_keys: Vec<ApiKey>,
    /// `auth.mtls`: the principal of a verified client certificate.
    pub mtls: Mtls,
    /// `auth.development`, default null: the loopback-only development principal.
    pub development: Option<Development>,
    /// `auth.token_cache_entries`, default 4096: verified tokens one worker remembers.
    pub token_cache_entries: usize,
    /// `auth.max_token_bytes`, default 8 KiB: a longer token or API key is refused (TooLarge).
    pub max_token_bytes: usize,
    /// `auth.key_refresh`: how issuers' keys from `jwks_url`/`discovery` are fetched.
    pub key_refresh: KeyRefresh,
}

/// `auth.key_refresh`: bounds on fetching key sets (`policy::fetch::RefreshPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRefresh {
    /// `min_interval`, default 60s: never fetched more often, whatever `Cache-Control` says.
    pub min_interval: std::time::Duration,
    /// `default_interval`, default 5m: when the answer carries no `max-age`.
    pub default_interval: std::time::Duration,
    /// `max_interval`, default 24h: never fetched less often.
    pub max_interval: std::time::Duration,
    /// `unknown_kid_interval`, default 30s: a token naming an unknown key asks for a refetch at
    /// most this often per issuer.
    pub unknown_kid_interval: std::time::Duration,
    /// `timeout`, default 5s: connect, and each read and write, of one fetch.
    pub timeout: std::time::Duration,
}

impl Default for KeyRefresh {
    fn default() -> Self {
        KeyRefresh {
            min_interval: std::time::Duration::from_secs(60),
            default_interval: std::time::Duration::from_secs(300),
            max_interval: std::time::Duration::from_secs(24 * 3600),
            unknown_kid_interval: std::time::Duration::from_secs(30),
            timeout: std::time::Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Issuer {
    /// `name`: `[A-Za-z0-9_.-]{1,64}`, unique; what `servers[].auth.issuers` names.
    pub name: String,
    /// `issuer`: the exact `iss` value.
    pub issuer: String,
    /// `algorithms`: pinned; never `none`; each one some configured key can verify (unless keys
    /// come from `jwks_url`/`discovery`).
    pub algorithms: Vec<Algorithm>,
    /// `secret` as written (`${env:NAME}`, `${file:PATH}` or `<redacted>` for a literal): for
    /// `render`; the bytes are in `keys`.
    pub secret_ref: Option<String>,
    /// `keys`: the files as written.
    pub key_files: Vec<String>,
    /// The decoded keys (secret first, then each file's), the initial key set of the issuer.
    pub keys: Vec<IssuerKey>,
    /// `jwks_url`: kept, not fetched yet (no fetcher in this version).
    pub jwks_url: Option<String>,
    /// `discovery`: kept, not used yet.
    pub discovery: bool,
    /// `audience`: null = each server's `resource`; a list overrides.
    pub audience: Option<Vec<String>>,
    /// `leeway`, default 30s: allowed clock skew for `exp`, `nbf` and `iat`.
    pub leeway: std::time::Duration,
    pub claims: ClaimPaths,
    /// `introspection`, default null: opaque tokens are asked about at the issuer's RFC 7662
    /// endpoint; null = they are refused.
    pub introspection: Option<std::sync::Arc<Introspection>>,
}

/// `auth.issuers[].introspection`: how opaque access tokens are checked (RFC 7662). `Debug` is by
/// hand: the secret must not reach a log line.
#[derive(Clone)]
pub struct Introspection {
    /// `endpoint` as written; `None` = the `introspection_endpoint` of the issuer's metadata
    /// (needs `discovery: true`), discovered by each worker on first use.
    pub endpoint: Option<String>,
    pub target: Option<super::HttpTarget>,
    /// The TLS client config (system roots) for an https endpoint or issuer.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub client_id: String,
    /// Resolved secret and where it came from.
    pub client_secret: String,
    pub client_secret_source: super::HeaderSource,
    /// `max_cache`, default 60s: an active answer is trusted at most this long (never past
    /// `exp` + leeway).
    pub max_cache: std::time::Duration,
    /// `negative_cache`, default 5s: an inactive answer is remembered this long; zero = off.
    pub negative_cache: std::time::Duration,
    /// `timeout`, default 3s: the whole call (connect, request, answer).
    pub timeout: std::time::Duration,
    /// `max_response_bytes`, default 64KiB: a longer answer is an error.
    pub max_response_bytes: usize,
}

impl std::fmt::Debug for Introspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("max_cache", &self.max_cache)
            .field("negative_cache", &self.negative_cache)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

pub mod introspection_defaults {
    use std::time::Duration;
    pub const MAX_CACHE: Duration = Duration::from_secs(60);
    pub const NEGATIVE_CACHE: Duration = Duration::from_secs(5);
    pub const TIMEOUT: Duration = Duration::from_secs(3);
    pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
}

/// One verification key of an issuer.
#[derive(Clone, Debug)]
pub struct IssuerKey {
    /// The JWK's `kid`; `None` for a secret or a PEM key.
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// Where it came from (`secret` or the file), for messages.
    pub from: String,
}

/// Where claims are read (dotted paths into the claims object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPaths {
    /// Default `sub`.
    pub subject: ClaimPath,
    /// Default `client_id`.
    pub client: Option<ClaimPath>,
    /// Default null.
    pub tenant: Option<ClaimPath>,
    /// Default `roles`.
    pub roles: Option<ClaimPath>,
    /// Default `scope`.
    pub scopes: Option<ClaimPath>,
}

/// `realm_access.roles` → `["realm_access", "roles"]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPath(pub Vec<String>);

impl ClaimPath {
    pub fn parse(s: &str) -> Self {
        ClaimPath(s.split('.').map(str::to_string).collect())
    }
    pub fn dotted(&self) -> String {
        self.0.join(".")
    }
}

#[derive(Clone, Debug)]
pub struct ApiKey {
    /// `name`: the principal's subject.
    pub name: String,
    /// `sha256`: the key's SHA-256 (never the key).
    pub sha256: [u8; 32],
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub tenant: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Mtls {
    /// `auth.mtls.subject`, default `subject`: which part of the certificate is the subject.
    pub subject: MtlsSubject,
    /// `auth.mtls.principals`: roles and tenant per certificate subject.
    pub principals: Vec<MtlsPrincipal>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsSubject {
    SanUri,
    SanDns,
    SanEmail,
    Cn,
    /// The subject as an RFC 4514 string.
    Subject,
}

impl MtlsSubject {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsSubject::SanUri => "san_uri",
            MtlsSubject::SanDns => "san_dns",
            MtlsSubject::SanEmail => "san_email",
            MtlsSubject::Cn => "cn",
            MtlsSubject::Subject => "subject",
        }
    }
}

#[derive(Clone, Debug)]
pub struct MtlsPrincipal {
    pub subject: String,
    pub roles: Vec<String>,
    pub tenant: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Development {
    /// Default `dev`.
    pub subject: String,
    pub roles: Vec<String>,
}

/// `servers[].auth`: present = every request to the endpoint must authenticate.
#[derive(Clone, Debug)]
pub struct ServerAuth {
    /// `resource`: the RFC 8707 canonical URI of the endpoint, the default audience.
    pub resource: String,
    /// `issuers`: indices into `Auth::issuers`; default all.
    pub issuers: Vec<usize>,
    /// `api_keys`, default true when `auth.api_keys` is not empty.
    pub api_keys: bool,
    /// `mtls`, default false.
    pub mtls: bool,
    /// `development`, default false; only on a loopback listener.
    pub development: bool,
    /// `scopes`: required on every request (403 insufficient_scope).
    pub scopes: Vec<String>,
    /// `scopes_supported`: for the protected resource metadata; default `scopes`.
    pub scopes_supported: Vec<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            issuers: Vec::new(),
            api_keys: Vec::new(),
            mtls: Mtls {
                subject: MtlsSubject::Subject,
                principals: Vec::new(),
            },
            development: None,
            token_cache_entries: DEFAULT_TOKEN_CACHE_ENTRIES,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            key_refresh: KeyRefresh::default(),
        }
    }
}

pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 4096;
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
pub const DEFAULT_LEEWAY: std::time::Duration = std::time::Duration::from_secs(30);
