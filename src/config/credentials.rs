//! `upstreams[].credentials`: how the gateway obtains its own bearer token for an upstream
//! (OAuth2 client credentials, RFC 6749 §4.4, or token exchange on behalf of the caller,
//! RFC 8693). Parsed in `config::file::credentials`; used by `proxy::credentials`.

use std::time::Duration;

use super::{HeaderSource, HttpTarget};

/// Which grant obtains the upstream's token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// `client_credentials`: one token per upstream (per worker), the gateway's own.
    ClientCredentials,
    /// `token_exchange`: one token per (caller, upstream), issued for the caller's token.
    TokenExchange,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::TokenExchange => "token_exchange",
        }
    }
}

/// One upstream's `credentials` block. `Debug` is by hand: the secret must not reach a log line.
#[derive(Clone)]
pub struct Credentials {
    pub grant: Grant,
    /// `token_url` as written (shown by `tollgate check`) and parsed.
    pub token_url: String,
    pub token_target: HttpTarget,
    /// `ca_file`: CA certificates for an https `token_url`; `None` = the system's roots.
    pub ca_file: Option<String>,
    /// The TLS client config and name for an https `token_url`.
    pub tls: Option<(
        std::sync::Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub client_id: String,
    /// Resolved secret (`${env:}`/`${file:}` already read) and where it came from.
    pub client_secret: String,
    pub client_secret_source: HeaderSource,
    pub scope: Option<String>,
    /// RFC 8707 resource indicator; `None` in the file = the upstream's URL (filled at load).
    pub resource: Option<String>,
    pub resource_set: bool,
    pub audience: Option<String>,
    /// `refresh_before`, default 60s: a token this close to expiry is fetched anew.
    pub refresh_before: Duration,
    /// `token_exchange.actor`, default false: also send the gateway's client-credentials token
    /// (from the same token endpoint and client) as `actor_token`.
    pub actor: bool,
    /// `token_exchange.cache_entries`, default 4096: this upstream's exchanged tokens kept per
    /// worker (one a caller).
    pub cache_entries: usize,
    /// `connect_timeout`, default 2s; `request_timeout`, default 10s (to the whole response).
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// `max_response_bytes`, default 64KiB: a longer token response is an error.
    pub max_response_bytes: usize,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("grant", &self.grant)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .field("resource", &self.resource)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

pub mod defaults {
    use std::time::Duration;
    pub const REFRESH_BEFORE: Duration = Duration::from_secs(60);
    pub const CACHE_ENTRIES: usize = 4096;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
}
