//! The TLS keys of the file: `listen.tls` and `upstreams[].tls`. The PEM files are read and the
//! rustls configs built here, so `tollgate check` reports a missing file, a PEM without a
//! certificate or key, a key that does not match or an unusable CA at its key.

use super::*;

/// A file path: a non-empty string.
fn file_path(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    if s.trim().is_empty() {
        return Err("must not be empty (a path to a PEM file)".into());
    }
    Ok(s.to_string())
}

/// `listen.tls`: absent or null = plain HTTP. The files are read and the rustls config built
/// here, so a missing file, a PEM without a certificate, a key that does not match or a bad CA
/// is a problem at its key like any other.
pub(super) fn listen_tls(p: &mut Problems, listen: &Section) -> Option<ListenTls> {
    let (path, v) = listen.value("tls")?;
    let s = Section::open(
        p,
        path.clone(),
        Some(v),
        &["cert_file", "key_file", "client_ca_file", "client_auth"],
    );
    if !matches!(v, Value::Mapping(_)) {
        return None;
    }
    let cert_file = s.required(p, "cert_file", file_path);
    let key_file = s.required(p, "key_file", file_path);
    let client_ca_file = s
        .value("client_ca_file")
        .and_then(|(at, v)| file_path(v).map_err(|e| p.add(&at, e)).ok());
    let client_auth = match s.value("client_auth") {
        None if client_ca_file.is_some() => crate::tls::ClientAuth::Required,
        None => crate::tls::ClientAuth::Off,
        Some((at, v)) => match string(v) {
            Ok(_) if s.value("client_ca_file").is_none() => {
                p.add(
                    &at,
                    format!("needs {path}.client_ca_file (the CA client certificates chain to)"),
                );
                crate::tls::ClientAuth::Off
            }
            Ok("required") => crate::tls::ClientAuth::Required,
            Ok("optional") => crate::tls::ClientAuth::Optional,
            Ok(other) => {
                p.add(&at, format!("expected required or optional, got {other:?}"));
                crate::tls::ClientAuth::Required
            }
            Err(e) => {
                p.add(&at, e);
                crate::tls::ClientAuth::Required
            }
        },
    };
    let (cert_file, key_file) = (cert_file?, key_file?);
    if s.value("client_ca_file").is_some() && client_ca_file.is_none() {
        return None;
    }
    let files = crate::tls::ServerFiles {
        cert_file: &cert_file,
        key_file: &key_file,
        client_ca_file: client_ca_file.as_deref(),
        client_auth,
    };
    match crate::tls::server_config(&files) {
        Ok(server) => Some(ListenTls {
            cert_file,
            key_file,
            client_ca_file,
            client_auth,
            server,
        }),
        Err(problems) => {
            for (key, problem) in problems {
                p.add(&extract::child(&path, key), problem);
            }
            None
        }
    }
}

/// `upstreams[].tls` (https URLs only): `ca_file` (default: the system's roots) and
/// `server_name` (default: the URL's host). The roots are read and the client config built here.
pub(super) fn upstream_tls(
    p: &mut Problems,
    s: &Section,
    target: &UpstreamTarget,
) -> Option<UpstreamTls> {
    let written = s.value("tls");
    let host = match target {
        UpstreamTarget::Http(h) if h.tls => h.host.clone(),
        _ => {
            if let Some((at, _)) = written {
                p.add(&at, "applies to https:// URLs only");
            }
            return None;
        }
    };
    let path = extract::child(&s.path, "tls");
    let t = Section::open(
        p,
        path.clone(),
        written.map(|(_, v)| v),
        &["ca_file", "server_name"],
    );
    let ca_at = extract::child(&path, "ca_file");
    let ca_file = match t.value("ca_file") {
        None => None,
        Some((_, v)) => match file_path(v) {
            Ok(f) => Some(f),
            Err(e) => {
                p.add(&ca_at, e);
                return None;
            }
        },
    };
    let server_name_set = t.value("server_name").is_some();
    let server_name = t.get(p, "server_name", host, |v| Ok(string(v)?.to_string()));
    let name = match crate::tls::server_name(&server_name) {
        Ok(n) => n,
        Err(e) => {
            let at = if server_name_set {
                extract::child(&path, "server_name")
            } else {
                extract::child(&s.path, "url")
            };
            p.add(&at, e);
            return None;
        }
    };
    match crate::tls::client_config(ca_file.as_deref()) {
        Ok(client) => Some(UpstreamTls {
            ca_file,
            server_name,
            server_name_set,
            name,
            client,
        }),
        Err(e) => {
            // Without a ca_file the roots are the system's: the problem belongs to the URL.
            let at = if t.value("ca_file").is_some() {
                ca_at
            } else {
                path
            };
            p.add(&at, e);
            None
        }
    }
}
