//! `listen.tls` and `upstreams[].tls`, with certificates made for the test.

use super::*;

/// A scratch directory with a CA, a server certificate it signed (for localhost), its key, an
/// unrelated key, and a file that is not PEM.
fn tls_files() -> Scratch {
    let dir = Scratch::new("cfg-tls");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("other-key.pem"), other.serialize_pem()).unwrap();
    std::fs::write(dir.join("junk.pem"), "not a pem file\n").unwrap();
    dir
}

#[test]
fn listen_tls_loads_and_renders_paths_only() {
    let d = tls_files();
    let f = |name: &str| d.join(name).display().to_string();
    let text = format!(
        "listen:\n  tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n    client_auth: optional\n",
        f("cert.pem"),
        f("key.pem"),
        f("ca.pem")
    );
    let c = ok(&text);
    let t = c.listen.tls.as_ref().expect("tls on");
    assert_eq!(t.client_auth, crate::tls::ClientAuth::Optional);
    assert_eq!(t.server.alpn_protocols, vec![b"http/1.1".to_vec()]);
    let shown = render_effective(&c);
    assert!(
        shown.contains(&format!("key_file: \"{}\"", f("key.pem"))),
        "{shown}"
    );
    let key_text = std::fs::read_to_string(d.join("key.pem")).unwrap();
    let key_line = key_text.lines().nth(1).unwrap();
    assert!(!shown.contains(key_line), "key material printed");
    // What `check` prints loads again to the same config.
    assert_eq!(render_effective(&ok(&loadable(&shown))), shown);
    // client_ca_file alone means required.
    let c = ok(&format!(
        "listen: {{tls: {{cert_file: {}, key_file: {}, client_ca_file: {}}}}}",
        f("cert.pem"),
        f("key.pem"),
        f("ca.pem")
    ));
    assert_eq!(
        c.listen.tls.unwrap().client_auth,
        crate::tls::ClientAuth::Required
    );
    assert!(ok("listen: {tls: null}").listen.tls.is_none());
    assert_eq!(ok("").limits.tls_handshake_timeout, Duration::from_secs(10));
    assert_eq!(
        ok("limits: {tls_handshake_timeout: 2s}")
            .limits
            .tls_handshake_timeout,
        Duration::from_secs(2)
    );
}

#[test]
fn listen_tls_problems_are_at_their_keys() {
    let d = tls_files();
    let f = |name: &str| d.join(name).display().to_string();
    let tls = |cert: &str, key: &str, extra: &str| {
        format!("listen:\n  tls:\n    cert_file: {cert}\n    key_file: {key}\n{extra}")
    };
    let e = errs(&tls("/nonexistent/c.pem", &f("junk.pem"), ""));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("listen.tls.cert_file: cannot read /nonexistent/c.pem:"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("listen.tls.key_file: ") && e[1].contains("no private key in it"),
        "{e:#?}"
    );
    let e = err(&tls(&f("junk.pem"), &f("key.pem"), ""));
    assert!(
        e.starts_with("listen.tls.cert_file: ") && e.contains("no certificate in it"),
        "{e}"
    );
    let e = err(&tls(&f("cert.pem"), &f("other-key.pem"), ""));
    assert!(
        e.starts_with("listen.tls.key_file: ") && e.contains("does not match the certificate"),
        "{e}"
    );
    let e = err(&tls(
        &f("cert.pem"),
        &f("key.pem"),
        "    client_auth: required\n",
    ));
    assert!(
        e.starts_with("listen.tls.client_auth: needs listen.tls.client_ca_file"),
        "{e}"
    );
    let e = err(&tls(
        &f("cert.pem"),
        &f("key.pem"),
        &format!("    client_ca_file: {}\n", f("junk.pem")),
    ));
    assert!(e.starts_with("listen.tls.client_ca_file: "), "{e}");
    let e = err(&tls(
        &f("cert.pem"),
        &f("key.pem"),
        &format!(
            "    client_ca_file: {}\n    client_auth: maybe\n",
            f("ca.pem")
        ),
    ));
    assert!(
        e.starts_with("listen.tls.client_auth: expected required or optional"),
        "{e}"
    );
    assert_eq!(
        err("listen: {tls: {key_file: /k.pem}}"),
        "listen.tls.cert_file: missing (required)"
    );
    assert!(errs("listen: {tls: {cert_file: a, key_file: b, cert: c}}")
        .contains(&"listen.tls.cert: unknown key".to_string()));
    // A key file's problems never quote it.
    std::fs::write(
        d.join("broken-key.pem"),
        "-----BEGIN PRIVATE KEY-----\nSECRETSECRET!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = err(&tls(&f("cert.pem"), &f("broken-key.pem"), ""));
    assert!(e.starts_with("listen.tls.key_file: "), "{e}");
    assert!(!e.contains("SECRET"), "{e}");
}

#[test]
fn https_upstreams() {
    let d = tls_files();
    let ca = d.join("ca.pem").display().to_string();
    let base = |up: &str| format!("upstreams:\n  - {up}\nservers: [{{path: /mcp, upstream: a}}]");
    let c = ok(&base(&format!(
        "{{name: a, url: \"https://localhost:8443/mcp\", tls: {{ca_file: {ca}}}}}"
    )));
    let t = c.upstreams[0].tls.as_ref().expect("tls");
    assert_eq!(t.server_name, "localhost");
    assert!(!t.server_name_set);
    assert_eq!(t.client.alpn_protocols, vec![b"http/1.1".to_vec()]);
    let shown = render_effective(&c);
    assert!(
        shown.contains("url: \"https://localhost:8443/mcp\""),
        "{shown}"
    );
    assert_eq!(render_effective(&ok(&loadable(&shown))), shown);
    let c = ok(&base(&format!(
        "{{name: a, url: \"https://127.0.0.1/mcp\", tls: {{ca_file: {ca}, server_name: gw.internal}}}}"
    )));
    let t = c.upstreams[0].tls.as_ref().unwrap();
    assert_eq!(
        (t.server_name.as_str(), t.server_name_set),
        ("gw.internal", true)
    );
    assert!(err(&base(
        "{name: a, url: \"https://x/mcp\", tls: {ca_file: /x.pem, server_name: \"not a name\"}}"
    ))
    .starts_with("upstreams[0].tls.server_name: \"not a name\" is not a DNS name"));
    assert!(err(&base(&format!(
        "{{name: a, url: \"https://x/mcp\", tls: {{ca_file: {}}}}}",
        d.join("junk.pem").display()
    )))
    .starts_with("upstreams[0].tls.ca_file: "));
    assert!(err(&base(
        "{name: a, url: \"https://x/mcp\", tls: {cafile: /x}}"
    ))
    .contains("upstreams[0].tls.cafile: unknown key (did you mean \"ca_file\"?)"));
}
