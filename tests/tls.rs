//! TLS end to end: the gateway's TLS listener (TLS 1.2 and 1.3, ALPN http/1.1, client
//! certificates) and https upstreams (CA file, server name, failures as upstream errors). The
//! CAs and certificates are made here with rcgen and written to a scratch directory; clients
//! are rustls's blocking client over std sockets. Listener cases run on io_uring and legacy.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{metric_value, read_until_closed, Driver, Gateway, GatewayBuilder, Http, Response};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A CA that can sign server and client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for a leaf.
    fn leaf(&self, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server(&self) -> (String, String) {
        let mut p = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.leaf(p)
    }

    fn client(&self, cn: &str) -> (String, String) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "Example Agents");
        p.subject_alt_names.push(SanType::URI(
            format!("spiffe://example.test/{cn}").try_into().unwrap(),
        ));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(p)
    }
}

/// Scratch files: the CAs, the gateway's certificate and key, client certificates.
struct Pki {
    dir: PathBuf,
    ca: Ca,
    other: Ca,
}

impl Pki {
    fn new() -> Pki {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tollgate-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki {
            dir,
            ca: Ca::new("tollgate test CA"),
            other: Ca::new("some other CA"),
        };
        pki.write("ca.pem", &pki.ca.pem);
        pki.write("other-ca.pem", &pki.other.pem);
        let (cert, key) = pki.ca.server();
        pki.write("server.pem", &cert);
        pki.write("server-key.pem", &key);
        pki
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `listen.tls` as a flow mapping; `client_ca` adds mTLS with that auth mode.
    fn listen_tls(&self, client_ca: Option<(&str, &str)>) -> String {
        let mut s = format!(
            "{{cert_file: {}, key_file: {}",
            self.path("server.pem"),
            self.path("server-key.pem")
        );
        if let Some((ca, auth)) = client_ca {
            s.push_str(&format!(
                ", client_ca_file: {}, client_auth: {auth}",
                self.path(ca)
            ));
        }
        s.push('}');
        s
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A client config trusting `ca_pem`, speaking `version`, with an optional client certificate.
fn client_config(
    ca_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
    client_cert: Option<&(String, String)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem) {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match client_cert {
        Some((cert, k)) => b.with_client_auth_cert(certs(cert), key(k)).unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// An MCP session over HTTP/1.1 over any stream (the harness's `Http`).
struct Client<S: Read + Write> {
    http: Http<S>,
    session: Option<String>,
    next_id: u64,
}

impl<S: Read + Write> Client<S> {
    fn new(s: S) -> Self {
        Client {
            http: Http::over(s, "localhost"),
            session: None,
            next_id: 1,
        }
    }

    /// The TLS stream under the HTTP client.
    fn stream(&mut self) -> &mut S {
        &mut self.http.stream
    }

    /// A POST to /mcp; `Err` when the connection refuses or closes (a handshake the server
    /// rejected shows here under TLS 1.3).
    fn post(&mut self, body: &[u8]) -> std::io::Result<Response> {
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("MCP-Protocol-Version", "2025-06-18"),
        ];
        let session = self.session.clone();
        if let Some(s) = &session {
            headers.push(("Mcp-Session-Id", s));
        }
        self.http
            .try_request("POST", "/mcp", &headers, body)
            .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
    }

    /// initialize + notifications/initialized.
    fn initialize(&mut self) -> std::io::Result<Response> {
        let r = self.post(
            br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"tls-test","version":"1"}}}"#,
        )?;
        self.session = r.header("mcp-session-id").map(str::to_string);
        if self.session.is_some() {
            let n = self.post(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)?;
            assert_eq!(n.status, 202);
        }
        Ok(r)
    }

    fn call(&mut self, tool: &str, args: serde_json::Value) -> std::io::Result<serde_json::Value> {
        let id = self.next_id;
        self.next_id += 1;
        let body = serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":tool,"arguments":args}});
        let r = self.post(body.to_string().as_bytes())?;
        assert_eq!(r.status, 200);
        Ok(r.json())
    }
}

/// A `progress` call (an SSE reply relayed as it arrives, chunked): its progress events and result.
fn progress_call<S: Read + Write>(c: &mut Client<S>) {
    let body = serde_json::json!({"jsonrpc":"2.0","id":77,"method":"tools/call","params":{
        "name":"progress","arguments":{"steps":3,"interval_ms":20},"_meta":{"progressToken":"p1"}}});
    let r = c.post(body.to_string().as_bytes()).unwrap();
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/event-stream")));
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(text.matches("notifications/progress").count(), 3, "{text}");
    assert!(
        text.contains("\"id\":77") && text.contains("\"result\""),
        "{text}"
    );
}

/// initialize, then echo a short and a large message on the same connection.
fn mcp_round_trip<S: Read + Write>(c: &mut Client<S>) {
    let init = c.initialize().expect("initialize");
    assert_eq!(init.status, 200);
    assert!(c.session.is_some());
    let r = c
        .call("echo", serde_json::json!({"text": "over TLS"}))
        .unwrap();
    assert_eq!(r["result"]["content"][0]["text"], "over TLS", "{r}");
    // Larger than a TLS record both ways: several records per request and per reply.
    let big = "x".repeat(100_000);
    let r = c
        .call("echo", serde_json::json!({"text": big.clone()}))
        .unwrap();
    assert_eq!(r["result"]["content"][0]["text"].as_str(), Some(&big[..]));
    progress_call(c);
}

/// A gateway on `driver` with a TLS listener (the test CA's server certificate) in front of the
/// built-in demo at /mcp.
fn tls_builder(pki: &Pki, driver: Driver, client_ca: Option<(&str, &str)>) -> GatewayBuilder {
    Gateway::builder()
        .driver(driver)
        .upstream("demo", "builtin:demo")
        .serve("/mcp", "demo")
        .listen("tls", &pki.listen_tls(client_ca))
}

fn tls_gateway(pki: &Pki, driver: Driver, client_ca: Option<(&str, &str)>) -> Gateway {
    tls_builder(pki, driver, client_ca)
        .yaml("log:\n  access: all\n")
        .rust_log("warn,tollgate=debug")
        .start()
}

const DRIVERS: [Driver; 2] = [Driver::IoUring, Driver::Legacy];

#[test]
fn tls_listener_serves_mcp_on_tls12_and_tls13() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let gw = tls_gateway(&pki, driver, None);
        for (version, name) in [
            (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
            (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        ] {
            let s = tls_connect(gw.addr, client_config(&pki.ca.pem, version, None))
                .unwrap_or_else(|e| panic!("{driver:?} {name:?}: {e}"));
            assert_eq!(s.conn.protocol_version(), Some(name));
            assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            let mut c = Client::new(s);
            mcp_round_trip(&mut c);
        }
        let m = gw.metrics();
        assert_eq!(
            metric_value(
                &m,
                "tollgate_tls_handshake_failures_total{reason=\"error\"}"
            ),
            0.0,
            "{m}"
        );
    }
}

#[test]
fn a_client_offering_only_another_protocol_is_refused() {
    let pki = Pki::new();
    let gw = tls_gateway(&pki, Driver::IoUring, None);
    let mut cfg = (*client_config(&pki.ca.pem, &rustls::version::TLS13, None)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    assert!(tls_connect(gw.addr, Arc::new(cfg)).is_err());
    // Offering no ALPN at all is fine (HTTP/1.1 is what the listener speaks).
    let mut cfg = (*client_config(&pki.ca.pem, &rustls::version::TLS13, None)).clone();
    cfg.alpn_protocols.clear();
    let mut c = Client::new(tls_connect(gw.addr, Arc::new(cfg)).unwrap());
    assert_eq!(c.initialize().unwrap().status, 200);
}

#[test]
fn plain_http_to_the_tls_port_is_closed_and_the_gateway_keeps_serving() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let gw = tls_builder(&pki, driver, None)
            .limit("tls_handshake_timeout", "500ms")
            .rust_log("info")
            .start();
        let mut plain = TcpStream::connect(gw.addr).unwrap();
        plain
            .write_all(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        let got = read_until_closed(&mut plain, Instant::now() + Duration::from_secs(10))
            .unwrap_or_else(|b| panic!("{driver:?}: still open after 10 s ({} bytes)", b.len()));
        assert!(
            !got.starts_with(b"HTTP/"),
            "an HTTP answer on a TLS port: {:?}",
            String::from_utf8_lossy(&got)
        );
        // A client that connects and says nothing is closed at tls_handshake_timeout.
        let mut silent = TcpStream::connect(gw.addr).unwrap();
        read_until_closed(&mut silent, Instant::now() + Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{driver:?}: silent connection still open after 10 s"));
        let mut c = Client::new(
            tls_connect(
                gw.addr,
                client_config(&pki.ca.pem, &rustls::version::TLS13, None),
            )
            .unwrap(),
        );
        mcp_round_trip(&mut c);
        // A failed handshake is counted after its connection was shut down: the client may
        // see the close first.
        let failed = |m: &str, reason: &str| {
            metric_value(
                m,
                &format!("tollgate_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
            )
        };
        let mut m = String::new();
        let counted = harness::eventually(Duration::from_secs(10), || {
            m = gw.metrics();
            failed(&m, "error") >= 1.0 && failed(&m, "timeout") >= 1.0
        });
        assert!(counted, "{driver:?}: {m}");
        assert!(harness::eventually(Duration::from_secs(5), || gw
            .log
            .text()
            .contains("TLS handshake failed")));
    }
}

/// Whether a TLS client gets an answer: the handshake and one initialize. In TLS 1.3 a refused
/// client certificate is only seen on the first read after the client's handshake ended.
fn served(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> bool {
    let Ok(s) = tls_connect(addr, cfg) else {
        return false;
    };
    let mut c = Client::new(s);
    matches!(c.initialize(), Ok(r) if r.status == 200)
}

#[test]
fn client_certificates_required() {
    let pki = Pki::new();
    let agent = pki.ca.client("agent-7");
    let stranger = pki.other.client("agent-7");
    for driver in DRIVERS {
        let gw = tls_gateway(&pki, driver, Some(("ca.pem", "required")));
        assert!(
            harness::eventually(Duration::from_secs(5), || gw
                .log
                .text()
                .contains("tls=on, client certificates required")),
            "the ready line says how the listener is secured: {}",
            gw.log.text()
        );
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            assert!(
                served(gw.addr, client_config(&pki.ca.pem, version, Some(&agent))),
                "{driver:?}: a certificate from the CA is served"
            );
            assert!(
                !served(gw.addr, client_config(&pki.ca.pem, version, None)),
                "{driver:?}: no certificate is refused"
            );
            assert!(
                !served(
                    gw.addr,
                    client_config(&pki.ca.pem, version, Some(&stranger))
                ),
                "{driver:?}: a certificate from another CA is refused"
            );
        }
        // The verified subject is in the request context: the access line names it.
        assert!(
            harness::eventually(Duration::from_secs(5), || gw
                .log
                .text()
                .contains("client_cert=\"O=Example Agents,CN=agent-7\"")),
            "{driver:?}: {}",
            gw.log.text()
        );
        // The verified identity reaches the connection (logged at debug with its subject).
        assert!(
            harness::eventually(Duration::from_secs(5), || {
                let log = gw.log.text();
                log.contains("subject=O=Example Agents,CN=agent-7")
                    && log.contains("URI:spiffe://example.test/agent-7")
            }),
            "{}",
            gw.log.text()
        );
        // The refused handshakes are counted after their connections were shut down: the
        // clients may see the close first.
        gw.await_metric(
            "tollgate_tls_handshake_failures_total{reason=\"error\"}",
            |n| n >= 2.0,
        );
    }
}

#[test]
fn client_certificates_optional() {
    let pki = Pki::new();
    let agent = pki.ca.client("agent-8");
    let stranger = pki.other.client("agent-8");
    let gw = tls_gateway(&pki, Driver::IoUring, Some(("ca.pem", "optional")));
    let v = &rustls::version::TLS13;
    assert!(served(gw.addr, client_config(&pki.ca.pem, v, None)));
    assert!(served(gw.addr, client_config(&pki.ca.pem, v, Some(&agent))));
    assert!(!served(
        gw.addr,
        client_config(&pki.ca.pem, v, Some(&stranger))
    ));
}

/// `auth.mtls`: the verified client certificate is the principal (here its SAN URI, mapped to
/// a role), the rules decide by that role, and a connection without a certificate is 401 on the
/// authenticated endpoint (the listener only asks for one).
#[test]
fn the_client_certificate_is_the_principal_the_rules_decide_by() {
    let pki = Pki::new();
    let agent = pki.ca.client("agent-8");
    let unmapped = pki.ca.client("agent-9");
    let gw = Gateway::builder()
        .upstream("demo", "builtin:demo")
        .listen("tls", &pki.listen_tls(Some(("ca.pem", "optional"))))
        .yaml(concat!(
            "auth:\n",
            "  mtls:\n",
            "    subject: san_uri\n",
            "    principals:\n",
            "      - {subject: \"spiffe://example.test/agent-8\", roles: [reader]}\n",
            "servers:\n",
            "  - path: /mcp\n",
            "    upstream: demo\n",
            "    auth: {resource: \"https://localhost/mcp\", mtls: true}\n",
            "    rules:\n",
            "      - {name: readers, effect: allow, roles: [reader], tools: [echo]}\n",
        ))
        .start();
    let v = &rustls::version::TLS13;
    let connect = |cert: Option<&(String, String)>| {
        Client::new(tls_connect(gw.addr, client_config(&pki.ca.pem, v, cert)).unwrap())
    };

    let mut c = connect(Some(&agent));
    assert_eq!(c.initialize().unwrap().status, 200);
    let r = c.call("echo", serde_json::json!({"text": "mine"})).unwrap();
    assert_eq!(r["result"]["content"][0]["text"], "mine", "{r}");
    let r = c.call("add", serde_json::json!({"a": 1, "b": 2})).unwrap();
    assert_eq!(r["error"]["message"], "Unknown tool: add", "{r}");

    // A certificate the config maps to no role: a principal without roles, so nothing to call.
    let mut c = connect(Some(&unmapped));
    assert_eq!(c.initialize().unwrap().status, 200);
    let r = c.call("echo", serde_json::json!({"text": "x"})).unwrap();
    assert_eq!(r["error"]["message"], "Unknown tool: echo", "{r}");

    // No certificate: not authenticated.
    let mut c = connect(None);
    let r = c.initialize().unwrap();
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Bearer resource_metadata=")));
}

/// A TLS gateway in front of the demo (the https upstream), and a plain gateway in front of it
/// with `tls` keys for that upstream.
fn through_https(pki: &Pki, driver: Driver, tls: &str) -> (Gateway, Gateway) {
    let front = tls_gateway(pki, driver, None);
    let url = format!("https://127.0.0.1:{}/mcp", front.addr.port());
    let gw = Gateway::builder()
        .driver(driver)
        .upstream_with("up", &url, &[("tls", tls)])
        .serve("/mcp", "up")
        .start();
    (front, gw)
}

#[test]
fn https_upstream_with_a_ca_file() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let (front, gw) = through_https(
            &pki,
            driver,
            &format!("{{ca_file: {}}}", pki.path("ca.pem")),
        );
        let mut c = Client::new(TcpStream::connect(gw.addr).unwrap());
        mcp_round_trip(&mut c);
        for i in 0..20 {
            let r = c
                .call("echo", serde_json::json!({"text": format!("m{i}")}))
                .unwrap();
            assert_eq!(r["result"]["content"][0]["text"], format!("m{i}"), "{r}");
        }
        // Pooled TLS connections are reused, session tickets and all: one client connection's
        // requests (on one worker) need one upstream connection, none discarded.
        let m = gw.metrics();
        for reason in ["closed", "unsolicited"] {
            let line = format!(
                "tollgate_upstream_pool_discards_total{{upstream=\"up\",reason=\"{reason}\"}}"
            );
            assert!(metric_value(&m, &line) <= 0.0, "{driver:?} {line}\n{m}");
        }
        let accepted = metric_value(&front.metrics(), "tollgate_connections_accepted_total");
        assert!(
            (1.0..=2.0).contains(&accepted),
            "{driver:?}: {accepted} upstream TLS connections for 24 sequential requests"
        );
        // server_name: the certificate is valid for localhost too.
        let (_front, gw) = through_https(
            &pki,
            driver,
            &format!(
                "{{ca_file: {}, server_name: localhost}}",
                pki.path("ca.pem")
            ),
        );
        let mut c = Client::new(TcpStream::connect(gw.addr).unwrap());
        assert_eq!(c.initialize().unwrap().status, 200);
    }
}

/// initialize through a gateway whose https upstream cannot be verified: the JSON-RPC error
/// names the upstream and why, and the gateway logs it.
fn upstream_tls_error(gw: &Gateway) -> String {
    let mut c = Client::new(TcpStream::connect(gw.addr).unwrap());
    let r = c.initialize().unwrap();
    assert_eq!(r.status, 200, "upstream errors are JSON-RPC errors");
    let j = r.json();
    assert_eq!(j["error"]["code"], -31001, "{j}");
    let msg = j["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with("upstream \"up\" is unavailable: TLS handshake failed: "),
        "{msg}"
    );
    assert!(
        harness::eventually(Duration::from_secs(5), || gw
            .log
            .text()
            .contains("upstream TLS handshake failed")),
        "{}",
        gw.log.text()
    );
    msg
}

#[test]
fn https_upstream_failures_are_upstream_errors() {
    let pki = Pki::new();
    for driver in DRIVERS {
        // Trusting another CA: the upstream's certificate is not verified.
        let (_front, gw) = through_https(
            &pki,
            driver,
            &format!("{{ca_file: {}}}", pki.path("other-ca.pem")),
        );
        let msg = upstream_tls_error(&gw);
        assert!(msg.contains("UnknownIssuer"), "{msg}");
        // The right CA, the wrong name.
        let (_front, gw) = through_https(
            &pki,
            driver,
            &format!(
                "{{ca_file: {}, server_name: wrong.example}}",
                pki.path("ca.pem")
            ),
        );
        let msg = upstream_tls_error(&gw);
        assert!(
            msg.contains("not valid for name \"wrong.example\""),
            "{msg}"
        );
    }
    // No ca_file: the system's roots, which do not know the test CA.
    if std::path::Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        let (_front, gw) = through_https(&pki, Driver::IoUring, "{}");
        let msg = upstream_tls_error(&gw);
        assert!(msg.contains("UnknownIssuer"), "{msg}");
    }
}

#[test]
fn an_idle_tls_connection_is_closed_with_close_notify() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let gw = tls_builder(&pki, driver, None)
            .limit("idle_timeout", "300ms")
            .start();
        let mut c = Client::new(
            tls_connect(
                gw.addr,
                client_config(&pki.ca.pem, &rustls::version::TLS13, None),
            )
            .unwrap(),
        );
        assert_eq!(c.initialize().unwrap().status, 200);
        // The gateway closes the idle connection: a clean TLS end (close_notify, read as 0),
        // not a bare TCP close (rustls: UnexpectedEof).
        let mut b = [0u8; 64];
        match c.stream().read(&mut b) {
            Ok(0) => {}
            other => panic!("{driver:?}: expected close_notify, got {other:?}"),
        }
    }
}

/// A GET stream over TLS ends when its client leaves, even when the client says goodbye with
/// close_notify first (bytes on the socket that are not a request).
#[test]
fn a_get_stream_over_tls_ends_when_its_client_leaves() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let gw = tls_gateway(&pki, driver, None);
        let cfg = client_config(&pki.ca.pem, &rustls::version::TLS13, None);
        let mut c = Client::new(tls_connect(gw.addr, cfg.clone()).unwrap());
        assert_eq!(c.initialize().unwrap().status, 200);
        let sid = c.session.clone().unwrap();
        drop(c);
        let mut s = tls_connect(gw.addr, cfg).unwrap();
        s.write_all(
            format!(
                "GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\
                 Mcp-Session-Id: {sid}\r\nMCP-Protocol-Version: 2025-06-18\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let mut got = Vec::new();
        let mut tmp = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = s.read(&mut tmp).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&tmp[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        let open = |gw: &Gateway| metric_value(&gw.metrics(), "tollgate_connections_open");
        assert_eq!(open(&gw), 1.0);
        // close_notify, then the TCP close.
        s.conn.send_close_notify();
        s.conn.complete_io(&mut s.sock).unwrap();
        drop(s);
        assert!(
            harness::eventually(Duration::from_secs(5), || open(&gw) == 0.0),
            "{driver:?}: the relay did not notice its TLS client left"
        );
    }
}

#[test]
fn a_reload_swaps_the_listener_certificate_and_keeps_connections() {
    let pki = Pki::new();
    let gw = tls_builder(&pki, Driver::IoUring, None)
        .rust_log("info")
        .start();
    let old_ca = client_config(&pki.ca.pem, &rustls::version::TLS13, None);
    let new_ca = client_config(&pki.other.pem, &rustls::version::TLS13, None);
    let mut before = Client::new(tls_connect(gw.addr, old_ca.clone()).unwrap());
    assert_eq!(before.initialize().unwrap().status, 200);
    assert!(tls_connect(gw.addr, new_ca.clone()).is_err());

    // Same file names, a certificate from another CA: a reload reads them again.
    let (cert, key) = pki.other.server();
    pki.write("server.pem", &cert);
    pki.write("server-key.pem", &key);
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    gw.reload_with(&text);
    assert!(
        harness::eventually(Duration::from_secs(10), || gw
            .log
            .text()
            .contains("config reloaded")),
        "{}",
        gw.log.text()
    );
    assert!(
        served(gw.addr, new_ca),
        "new connections get the new certificate"
    );
    assert!(
        tls_connect(gw.addr, old_ca).is_err(),
        "and no longer the old one"
    );
    // A connection made before the reload keeps working.
    assert_eq!(before.initialize().unwrap().status, 200);
}

#[test]
fn readiness_verifies_an_https_upstreams_certificate() {
    let pki = Pki::new();
    // The gateway trusts another CA: every exchange fails its handshake.
    let (_front, gw) = through_https(
        &pki,
        Driver::IoUring,
        &format!("{{ca_file: {}}}", pki.path("other-ca.pem")),
    );
    let ready = |gw: &Gateway| {
        let mut h = Http::connect(gw.admin.unwrap());
        h.request("GET", "/readyz", &[], b"")
    };
    assert_eq!(ready(&gw).status, 200, "ready before any failure");
    for _ in 0..3 {
        upstream_tls_error(&gw);
    }
    // Known-down after `unhealthy_after` (3) failures; the probe's TCP connect succeeds, but its
    // TLS handshake does not: still not ready.
    let r = ready(&gw);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("upstream \"up\" is down"), "{}", r.text());
}
