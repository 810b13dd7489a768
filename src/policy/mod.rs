//! Identity and authorization: who the caller is (`authn`: JWT, introspected opaque tokens, API
//! keys, the mTLS client certificate, a loopback development principal) and what it may do
//! (`authz`: rules compiled per config generation, optional Rego). No I/O on the request path:
//! keys arrive from a background fetcher through the per-core control channel, and each worker
//! keeps its own verified-token cache.
//!
//! The types here are what the proxy's phases see: a `Principal` in the request context, an
//! `AuthFailure` (401, with a reason code) or a `Decision` with its reason code.

pub mod authn;
pub mod challenge;
pub mod fetch;
pub mod jwt_ring;
pub mod rego;
pub mod rules;
pub mod traffic;

use std::rc::Rc;

/// Where a principal's identity came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A JWT access token verified with the keys of `auth.issuers[issuer]`.
    Jwt { issuer: u16 },
    /// An opaque token the issuer's introspection endpoint (RFC 7662) said is active.
    Introspection { issuer: u16 },
    /// `auth.api_keys[key]`.
    ApiKey { key: u16 },
    /// The verified client certificate of an mTLS listener.
    Mtls,
    /// `auth.development`: the loopback-only development principal.
    Development,
    /// Nobody in particular: an endpoint without `auth` (what a Rego policy sees there).
    Anonymous,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Jwt { .. } => "jwt",
            Source::Introspection { .. } => "introspection",
            Source::ApiKey { .. } => "api_key",
            Source::Mtls => "mtls",
            Source::Development => "development",
            Source::Anonymous => "anonymous",
        }
    }
}

/// Who is calling: what every later phase (authorization, limits, audit) reads.
#[derive(Clone, Debug)]
pub struct Principal {
    pub source: Source,
    /// The subject (`sub` or the configured claim; the API key's name; the certificate's subject).
    pub subject: Box<str>,
    /// The OAuth client (`client_id`/`azp` or the configured claim), when known.
    pub client: Option<Box<str>>,
    /// The tenant (configured claim), when known.
    pub tenant: Option<Box<str>>,
    pub roles: Box<[Box<str>]>,
    /// OAuth scopes granted (from `scope` as a space-separated string or `scp` as a list).
    pub scopes: Box<[Box<str>]>,
    /// Unix seconds when this identity stops being valid (the token's `exp`); `None`: never.
    pub expires_at: Option<u64>,
    /// A stable id of this principal across its tokens: SHA-256 over (source kind, issuer URL or
    /// key name, subject), first 16 bytes. Sessions are bound to it; it survives reloads.
    pub id: [u8; 16],
}

impl Principal {
    /// Nobody in particular (`Source::Anonymous`): what a policy sees on an open endpoint.
    pub fn anonymous() -> Principal {
        Principal {
            source: Source::Anonymous,
            subject: "anonymous".into(),
            client: None,
            tenant: None,
            roles: Box::new([]),
            scopes: Box::new([]),
            expires_at: None,
            id: [0; 16],
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| &**r == role)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }
}

/// A shared principal (the token cache hands out clones of the `Rc`).
pub type PrincipalRef = Rc<Principal>;

/// Why a request could not be authenticated: always a 401 with `WWW-Authenticate`, counted in
/// `tollgate_auth_failures_total{reason}` under `reason()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No credential at all.
    Missing,
    /// A token in the request's query string (`access_token=`): refused, never used (RFC 6750 §2.3
    /// is not supported: query strings end up in logs).
    InQuery,
    /// Longer than `auth.max_token_bytes`.
    TooLarge,
    /// Not a token: not `Bearer <token68>`, not three base64url parts, a header or claims that are
    /// not JSON objects.
    Malformed,
    /// `alg` is `none`, or not one of the algorithms pinned for the issuer, or not one the key
    /// supports (HS256 over an RSA public key).
    AlgorithmNotAllowed,
    /// No key of the issuer has the token's `kid` (after a rate-limited refetch).
    UnknownKey,
    BadSignature,
    /// `iss` missing or not an issuer this endpoint accepts.
    WrongIssuer,
    /// `aud` missing or not this endpoint's resource URI.
    WrongAudience,
    /// `exp` missing or in the past (beyond the leeway).
    Expired,
    /// `nbf` in the future (beyond the leeway).
    NotYetValid,
    /// A claim the config reads (subject, roles, …) is missing or of the wrong type.
    BadClaims,
    /// Introspection said the token is not active.
    Inactive,
    /// The introspection endpoint could not be asked (fails closed).
    IntrospectionFailed,
    /// An API key that is not configured.
    UnknownApiKey,
    /// The issuer's keys have never been fetched (fails closed).
    KeysUnavailable,
}

impl AuthFailure {
    /// The reason code (metric label, access log, audit record).
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "token_missing",
            AuthFailure::InQuery => "token_in_query",
            AuthFailure::TooLarge => "token_too_large",
            AuthFailure::Malformed => "token_malformed",
            AuthFailure::AlgorithmNotAllowed => "alg_not_allowed",
            AuthFailure::UnknownKey => "unknown_kid",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::WrongIssuer => "wrong_issuer",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::BadClaims => "bad_claims",
            AuthFailure::Inactive => "token_inactive",
            AuthFailure::IntrospectionFailed => "introspection_failed",
            AuthFailure::UnknownApiKey => "unknown_api_key",
            AuthFailure::KeysUnavailable => "keys_unavailable",
        }
    }

    /// Every reason, for pre-registering the metric's series.
    pub const ALL: [AuthFailure; 16] = [
        AuthFailure::Missing,
        AuthFailure::InQuery,
        AuthFailure::TooLarge,
        AuthFailure::Malformed,
        AuthFailure::AlgorithmNotAllowed,
        AuthFailure::UnknownKey,
        AuthFailure::BadSignature,
        AuthFailure::WrongIssuer,
        AuthFailure::WrongAudience,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::BadClaims,
        AuthFailure::Inactive,
        AuthFailure::IntrospectionFailed,
        AuthFailure::UnknownApiKey,
        AuthFailure::KeysUnavailable,
    ];

    /// What the 401's `WWW-Authenticate` says in `error_description` (RFC 6750 §3): a short
    /// sentence that names the problem, never the token. `Missing` sends no `error` at all.
    pub fn description(self) -> &'static str {
        match self {
            AuthFailure::Missing => "",
            AuthFailure::InQuery => {
                "tokens in the query string are not accepted; send an Authorization header"
            }
            AuthFailure::TooLarge => "the token is longer than auth.max_token_bytes",
            AuthFailure::Malformed => "the token is malformed",
            AuthFailure::AlgorithmNotAllowed => {
                "the token's signing algorithm is not allowed for its issuer"
            }
            AuthFailure::UnknownKey => "the token's signing key (kid) is unknown",
            AuthFailure::BadSignature => "the token's signature is invalid",
            AuthFailure::WrongIssuer => "the token's issuer is not accepted here",
            AuthFailure::WrongAudience => "the token's audience is not this resource",
            AuthFailure::Expired => "the token has expired",
            AuthFailure::NotYetValid => "the token is not valid yet",
            AuthFailure::BadClaims => "the token lacks a claim this resource reads",
            AuthFailure::Inactive => "the token is not active",
            AuthFailure::IntrospectionFailed => "the token could not be introspected",
            AuthFailure::UnknownApiKey => "the API key is not valid",
            AuthFailure::KeysUnavailable => "the issuer's keys are not available",
        }
    }
}
