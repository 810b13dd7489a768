//! TLS: the listener's `ServerConfig` and each https upstream's `ClientConfig`, built from PEM
//! files when the config is loaded (so `tollgate check` reports every problem at its key), and
//! `stream`, the TLS transport over a monoio socket.
//!
//! rustls with the ring provider; TLS 1.2 and 1.3; ALPN `http/1.1` only. The configs live in
//! `Arc`s inside the loaded `Config` (`Listen::tls`, `Upstream::tls`), which the `Gateway` holds:
//! a reload loads a new `Config` (re-reading the PEM files) and swaps it in, so a renewed
//! certificate needs no change here. Key material is never printed: problems with a key file
//! name the file, not what it holds.

pub mod identity;
pub mod stream;

use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use identity::PeerIdentity;
pub use stream::{Stream, TlsStream};

/// The only application protocol either side offers.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// ring, the provider the gateway already uses for session ids (no aws-lc build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Client certificates on the listener (`listen.tls.client_auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No `client_ca_file`: no client certificate is asked for.
    Off,
    /// Asked for; a client without one is served (with no identity), a bad one is refused.
    Optional,
    /// A client without a certificate from the CA is refused in the handshake.
    Required,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Off => "off",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        }
    }
}

fn read_file(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// Every certificate in a PEM file, in order (a chain: leaf first).
pub fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{path}: no certificate in it (expected PEM \"-----BEGIN CERTIFICATE-----\")"
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1). Errors never quote the file.
pub fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{path}: no private key in it (expected PEM \"-----BEGIN PRIVATE KEY-----\", \
             RSA or EC PRIVATE KEY)"
        ),
        // Other PEM errors can quote the file's bytes: a key file's bytes are a secret.
        _ => format!("{path}: not a valid PEM private key file"),
    })
}

/// A root store from a PEM bundle of CA certificates.
pub fn read_roots(path: &str) -> Result<RootCertStore, String> {
    let certs = read_certs(path)?;
    let mut roots = RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        roots
            .add(c)
            .map_err(|e| format!("{path}: certificate {} is not a usable CA: {e}", i + 1))?;
    }
    Ok(roots)
}

/// The system's CA certificates (Debian: /etc/ssl/certs), read once per process.
pub fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(format!(
                    "no system CA certificates found{why}; set tls.ca_file"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// The listener's files, as `listen.tls` names them.
pub struct ServerFiles<'a> {
    pub cert_file: &'a str,
    pub key_file: &'a str,
    pub client_ca_file: Option<&'a str>,
    pub client_auth: ClientAuth,
}

/// Builds the listener's config. Problems come back with the key (under `listen.tls`) they
/// belong to, every one of them.
pub fn server_config(f: &ServerFiles) -> Result<Arc<ServerConfig>, Vec<(&'static str, String)>> {
    let mut problems = Vec::new();
    let certs = read_certs(f.cert_file)
        .map_err(|e| problems.push(("cert_file", e)))
        .ok();
    let key = read_key(f.key_file)
        .map_err(|e| problems.push(("key_file", e)))
        .ok();
    let verifier = match (f.client_ca_file, f.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::Off => match read_roots(ca) {
            Ok(roots) => {
                let b = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                );
                let b = if auth == ClientAuth::Optional {
                    b.allow_unauthenticated()
                } else {
                    b
                };
                match b.build() {
                    Ok(v) => Some(v),
                    Err(e) => {
                        problems.push(("client_ca_file", format!("{ca}: {e}")));
                        None
                    }
                }
            }
            Err(e) => {
                problems.push(("client_ca_file", e));
                None
            }
        },
        _ => None,
    };
    let (Some(certs), Some(key)) = (certs, key) else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let builder =
        match ServerConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS) {
            Ok(b) => b,
            Err(e) => return Err(vec![("cert_file", format!("TLS setup failed: {e}"))]),
        };
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
        let msg = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "{}: the key does not match the certificate in listen.tls.cert_file ({})",
                f.key_file, f.cert_file
            ),
            other => format!("{}: unusable private key: {other}", f.key_file),
        };
        vec![("key_file", msg)]
    })?;
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    // Stateless tickets (keys rotated by rustls every 6 h): resumption works across workers
    // without a shared session table.
    match rustls::crypto::ring::Ticketer::new() {
        Ok(t) => cfg.ticketer = t,
        Err(e) => return Err(vec![("cert_file", format!("TLS ticketer: {e}"))]),
    }
    Ok(Arc::new(cfg))
}

/// An https upstream's config: roots from `ca_file` or the system, ALPN http/1.1, TLS 1.2 and 1.3.
/// Session resumption stays on (rustls's default cache): a new upstream connection after the
/// pool ran dry resumes instead of a full handshake. The session tickets a TLS 1.3 server sends
/// after the handshake are read before a pooled connection is reused (`TlsStream::settle`).
pub fn client_config(ca_file: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    let roots = match ca_file {
        Some(path) => Arc::new(read_roots(path)?),
        None => system_roots()?,
    };
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(cfg))
}

/// `tls.server_name` / the URL's host as the name to send (SNI) and verify.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is not a DNS name or IP address"))
}

/// A handshake given up on may still have a read in flight (io_uring) holding the socket: shut it
/// down so it closes at once, as `http::Conn` does when dropped.
fn shut_down(tls: &TlsStream) {
    // SAFETY: shutdown on the socket this stream owns; it is closed right after.
    unsafe {
        libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(tls.tcp()), libc::SHUT_RDWR);
    }
}

/// Why an accepted connection got no TLS session (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    Timeout,
    Error,
}

/// The server side of an accepted connection: the handshake within `timeout` (on the worker's
/// coarse clock), then the verified client certificate's identity, if any.
pub async fn accept(
    tcp: monoio::net::TcpStream,
    config: Arc<ServerConfig>,
    timers: &crate::proxy::shutdown::LocalShutdown,
    timeout: Duration,
) -> Result<Stream, (HandshakeFailure, String)> {
    let conn = rustls::ServerConnection::new(config)
        .map_err(|e| (HandshakeFailure::Error, e.to_string()))?;
    let mut tls = Box::new(TlsStream::new(tcp, rustls::Connection::Server(conn)));
    let deadline = timers.now() + timeout;
    let done = monoio::select! {
        r = tls.handshake() => Some(r),
        _ = timers.deadline(deadline) => None,
    };
    if !matches!(done, Some(Ok(()))) {
        shut_down(&tls);
    }
    match done {
        None => Err((
            HandshakeFailure::Timeout,
            format!(
                "no TLS handshake within {} ms (limits.tls_handshake_timeout)",
                timeout.as_millis()
            ),
        )),
        Some(Err(e)) => Err((HandshakeFailure::Error, e.to_string())),
        Some(Ok(())) => {
            let peer = tls
                .connection()
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| PeerIdentity::from_der(leaf))
                .map(Rc::new);
            tls.set_peer(peer);
            Ok(Stream::Tls(tls))
        }
    }
}

/// What an accepted connection is served over: the TCP stream itself on a plain listener; on a
/// TLS listener the stream after a handshake within `limits.tls_handshake_timeout` (`None`:
/// the handshake failed or timed out, which is counted and logged, and the socket is closed).
/// The handshake is boxed so a plain connection's task does not carry its size.
pub async fn serving(
    w: &crate::proxy::state::WorkerState,
    tcp: monoio::net::TcpStream,
) -> Option<Stream> {
    // The running config's listener settings: a reload may have changed the certificate.
    let gw = w.gw();
    let Some(tls) = &gw.config.listen.tls else {
        return Some(Stream::Plain(tcp));
    };
    let _ = tcp.set_nodelay(true);
    let timeout = gw.config.limits.tls_handshake_timeout;
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    match Box::pin(accept(tcp, tls.server.clone(), &w.shutdown, timeout)).await {
        Ok(s) => {
            if let Some(id) = s.peer() {
                tracing::debug!(
                    worker = w.index,
                    peer,
                    subject = %id.subject,
                    sans = %id.sans.join(","),
                    "client certificate verified"
                );
            }
            Some(s)
        }
        Err((why, error)) => {
            w.metrics.tls_handshake_failures[why as usize].increment(1);
            tracing::info!(worker = w.index, peer, error = %error, "TLS handshake failed");
            None
        }
    }
}

/// The client side of a new upstream connection: SNI and verification against `name`,
/// within `timeout`. Errors are rustls's words ("invalid peer certificate: UnknownIssuer").
pub async fn connect(
    tcp: monoio::net::TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    timeout: Duration,
) -> std::io::Result<Stream> {
    let conn = rustls::ClientConnection::new(config, name)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut tls = Box::new(TlsStream::new(tcp, rustls::Connection::Client(conn)));
    let done = monoio::time::timeout(timeout, tls.handshake()).await;
    if !matches!(done, Ok(Ok(()))) {
        shut_down(&tls);
    }
    match done {
        Ok(Ok(())) => Ok(Stream::Tls(tls)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "TLS handshake not done within {} ms (upstreams[].connect_timeout)",
                timeout.as_millis()
            ),
        )),
    }
}
