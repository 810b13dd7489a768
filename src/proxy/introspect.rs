//! Opaque access tokens asked about at the issuer's introspection endpoint (RFC 7662), on the
//! worker: a POST of `token=…&token_type_hint=access_token` with client_secret_basic through
//! `http::client`, bounded by the issuer's `introspection.timeout` (discovery of the endpoint
//! included), failing closed (401 `introspection_failed`). The answer is judged and cached by
//! `policy::authn` (`Authn::introspected`); this file only does the I/O.
//!
//! Single flight per (worker, endpoint, token): a request whose token is being introspected
//! already joins that call and answers from its outcome (a principal, a refusal, or a failure,
//! which stays uncached for later requests); only when the leader's future is dropped (its
//! client went away) does a waiter take the lead. An endpoint left `null` is found in the
//! issuer's metadata (RFC 8414, then OpenID Connect discovery, whose `issuer` must be the issuer)
//! once per worker and config generation; a failed discovery is remembered for `negative_cache`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use crate::config::auth::Introspection;
use crate::config::{Config, HttpTarget};
use crate::http::client;
use crate::policy::authn::Authn;
use crate::policy::{AuthFailure, Principal};

/// (server, token) being introspected → its flight.
type InFlight = RefCell<HashMap<(u32, Box<[u8]>), Rc<RefCell<Slot>>>>;

/// One call to the endpoint as its waiters see it.
#[derive(Default)]
struct Slot {
    waiters: Vec<Waker>,
    /// Set once the flight ended: `Some` when the leader finished with an outcome, `None` when its
    /// future was dropped before (a waiter then takes the lead).
    ended: Option<Option<Result<Rc<Principal>, AuthFailure>>>,
}

/// One worker's introspection state for one config generation.
#[derive(Default)]
pub struct Introspector {
    /// Per `auth.issuers[i]`: its introspection endpoint found through discovery.
    discovered: RefCell<HashMap<usize, Rc<(String, HttpTarget)>>>,
    /// Per `auth.issuers[i]`: why its discovery failed, remembered until the instant given
    /// (`negative_cache` after the failure), so opaque tokens do not each ask again.
    undiscovered: RefCell<HashMap<usize, (std::time::Instant, String)>>,
    /// The system-roots TLS config for an https endpoint of an issuer whose config has none
    /// (an http issuer whose metadata names an https endpoint), built once per worker.
    system_tls: RefCell<Option<Arc<rustls::ClientConfig>>>,
    inflight: InFlight,
}

/// What one call to the endpoint came to (`tollgate_auth_introspections_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Active,
    Inactive,
    /// Active, but refused by the gateway's own checks (`iss`, `aud`, `exp`, `nbf`, claims).
    Refused,
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Active,
        Outcome::Inactive,
        Outcome::Refused,
        Outcome::Error,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Active => "active",
            Outcome::Inactive => "inactive",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }
}

/// Ends a flight however its future ends: with the leader's outcome (`finish`), or with none
/// when it is dropped; either way the flight leaves the map and its waiters are woken.
struct Flight<'a> {
    map: &'a InFlight,
    key: (u32, Box<[u8]>),
    slot: Rc<RefCell<Slot>>,
    outcome: Option<Result<Rc<Principal>, AuthFailure>>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.map.borrow_mut().remove(&self.key);
        let waiters = {
            let mut slot = self.slot.borrow_mut();
            slot.ended = Some(self.outcome.take());
            std::mem::take(&mut slot.waiters)
        };
        for w in waiters {
            w.wake();
        }
    }
}

impl Introspector {
    /// The principal of opaque `token` on `cfg.servers[server]`, asked of `auth.issuers[issuer]`
    /// (what `Authn::authenticate` said). `count` records each call's outcome.
    #[allow(clippy::too_many_arguments)]
    pub async fn principal(
        &self,
        authn: &Authn,
        cfg: &Config,
        server: usize,
        issuer: usize,
        token: &[u8],
        now: impl Fn() -> u64,
        count: impl Fn(Outcome),
    ) -> Result<Rc<Principal>, AuthFailure> {
        let Some(is) = cfg.auth.issuers.get(issuer) else {
            return Err(AuthFailure::IntrospectionFailed);
        };
        let Some(conf) = is.introspection.as_deref() else {
            return Err(AuthFailure::IntrospectionFailed);
        };
        let key = (server as u32, Box::<[u8]>::from(token));
        let mut waited = false;
        let slot = loop {
            // A flight whose leader went away left no outcome: the cache may still have one.
            if waited {
                if let Some(r) = authn.cached(server, token, now()) {
                    return r;
                }
            }
            let joined = {
                let mut map = self.inflight.borrow_mut();
                match map.get(&key) {
                    Some(slot) => slot.clone(),
                    None => {
                        let slot = Rc::new(RefCell::new(Slot::default()));
                        map.insert(key.clone(), slot.clone());
                        break slot;
                    }
                }
            };
            let mut registered = false;
            let ended = std::future::poll_fn(|cx| {
                let mut slot = joined.borrow_mut();
                if let Some(ended) = &slot.ended {
                    return Poll::Ready(ended.clone());
                }
                // Each waiter once; a later poll only if its waker changed.
                if !registered || !slot.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    slot.waiters.push(cx.waker().clone());
                    registered = true;
                }
                Poll::Pending
            })
            .await;
            if let Some(outcome) = ended {
                return outcome;
            }
            waited = true;
        };
        let mut flight = Flight {
            map: &self.inflight,
            key,
            slot,
            outcome: None,
        };
        let answer =
            match monoio::time::timeout(conf.timeout, self.ask(cfg, issuer, conf, token)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no answer within {} ms (introspection.timeout)",
                    conf.timeout.as_millis()
                )),
            };
        let result = match &answer {
            Ok((status, body)) => {
                let r = authn.introspected(
                    cfg,
                    server,
                    issuer,
                    token,
                    Ok((*status, body.as_slice())),
                    now(),
                );
                if matches!(r, Err(AuthFailure::IntrospectionFailed)) {
                    let why = if *status == 200 {
                        "the answer is not a JSON object".to_string()
                    } else {
                        format!("HTTP {status}")
                    };
                    tracing::warn!(issuer = %is.name, error = %why, "token introspection failed; the request is refused");
                }
                r
            }
            Err(why) => {
                tracing::warn!(issuer = %is.name, error = %why, "token introspection failed; the request is refused");
                authn.introspected(cfg, server, issuer, token, Err(()), now())
            }
        };
        count(match result {
            Err(AuthFailure::IntrospectionFailed) => Outcome::Error,
            Err(AuthFailure::Inactive) => Outcome::Inactive,
            Err(_) => Outcome::Refused,
            Ok(_) => Outcome::Active,
        });
        flight.outcome = Some(result.clone());
        result
    }

    /// One call: the endpoint (discovered if need be), then the POST.
    async fn ask(
        &self,
        cfg: &Config,
        issuer: usize,
        conf: &Introspection,
        token: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        let found;
        let (url, target) = match (&conf.endpoint, &conf.target) {
            (Some(u), Some(t)) => (u.as_str(), t),
            _ => {
                found = self.discover(cfg, issuer, conf).await?;
                (found.0.as_str(), &found.1)
            }
        };
        let token = std::str::from_utf8(token).map_err(|_| "the token is not text".to_string())?;
        let body = client::form(&[
            ("token", Some(token)),
            ("token_type_hint", Some("access_token")),
        ]);
        let tls = self.tls_for(conf, target)?;
        client::call(
            target,
            tls.as_ref().map(|(c, n)| (c, n)),
            conf.timeout,
            Some(&client::basic_auth(&conf.client_id, &conf.client_secret)),
            Some(&body),
            conf.max_response_bytes,
        )
        .await
        .map_err(|e| format!("{url}: {e}"))
    }

    /// The issuer's `introspection_endpoint` from its metadata (cached per worker; a failure
    /// for `negative_cache`).
    async fn discover(
        &self,
        cfg: &Config,
        issuer: usize,
        conf: &Introspection,
    ) -> Result<Rc<(String, HttpTarget)>, String> {
        if let Some(d) = self.discovered.borrow().get(&issuer) {
            return Ok(d.clone());
        }
        if let Some((until, why)) = self.undiscovered.borrow().get(&issuer) {
            if std::time::Instant::now() < *until {
                return Err(format!(
                    "{why} (discovery failed less than negative_cache ago)"
                ));
            }
        }
        let found = self.discover_now(cfg, issuer, conf).await;
        match &found {
            Ok(d) => {
                self.discovered.borrow_mut().insert(issuer, d.clone());
                self.undiscovered.borrow_mut().remove(&issuer);
            }
            Err(why) if !conf.negative_cache.is_zero() => {
                let until = std::time::Instant::now() + conf.negative_cache;
                self.undiscovered
                    .borrow_mut()
                    .insert(issuer, (until, why.clone()));
            }
            Err(_) => {}
        }
        found
    }

    /// The metadata URLs in turn: the first that answers a JSON document decides.
    async fn discover_now(
        &self,
        cfg: &Config,
        issuer: usize,
        conf: &Introspection,
    ) -> Result<Rc<(String, HttpTarget)>, String> {
        let iss = &cfg.auth.issuers[issuer].issuer;
        let mut errors = Vec::new();
        for u in crate::policy::fetch::metadata_urls(iss) {
            let target = crate::policy::fetch::url(&u)?;
            let tls = self.tls_for(conf, &target)?;
            let got = client::call(
                &target,
                tls.as_ref().map(|(c, n)| (c, n)),
                conf.timeout,
                None,
                None,
                crate::policy::fetch::MAX_DOCUMENT,
            )
            .await;
            let doc = match got {
                Ok((200, doc)) => doc,
                Ok((status, _)) => {
                    errors.push(format!("{u}: HTTP {status}"));
                    continue;
                }
                Err(e) => {
                    errors.push(format!("{u}: {e}"));
                    continue;
                }
            };
            // A 200 that is not JSON (a login page, say) is not this issuer's metadata.
            let v: serde_json::Value = match serde_json::from_slice(&doc) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(format!("{u}: not JSON: {e}"));
                    continue;
                }
            };
            if v["issuer"].as_str() != Some(iss.as_str()) {
                return Err(format!("{u}: its issuer is {}, not {iss:?}", v["issuer"]));
            }
            let endpoint = v["introspection_endpoint"]
                .as_str()
                .ok_or_else(|| format!("{u}: the metadata has no introspection_endpoint"))?;
            crate::policy::fetch::discovered_url_allowed(iss, "introspection_endpoint", endpoint)
                .map_err(|e| format!("{u}: {e}"))?;
            let t = crate::policy::fetch::url(endpoint)?;
            return Ok(Rc::new((endpoint.to_string(), t)));
        }
        Err(errors.join("; "))
    }

    /// The TLS config and name for an https `target`: the issuer's (built at config load), else
    /// the worker's system-roots one (built on first use).
    #[allow(clippy::type_complexity)]
    fn tls_for(
        &self,
        conf: &Introspection,
        target: &HttpTarget,
    ) -> Result<
        Option<(
            Arc<rustls::ClientConfig>,
            rustls::pki_types::ServerName<'static>,
        )>,
        String,
    > {
        if !target.tls {
            return Ok(None);
        }
        let cfg = match &conf.tls {
            Some(c) => c.clone(),
            None => {
                let mut built = self.system_tls.borrow_mut();
                match &*built {
                    Some(c) => c.clone(),
                    None => built.insert(crate::tls::client_config(None)?).clone(),
                }
            }
        };
        Ok(Some((cfg, crate::tls::server_name(&target.host)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// The demo at /o behind one issuer `corp` (`issuer`: its fields besides the name) that
    /// introspects with `introspection` (the block's fields).
    fn issuer_config(issuer: &str, introspection: &str) -> Config {
        let yaml = format!(
            "upstreams: [{{name: d, url: \"builtin:demo\"}}]\n\
             servers: [{{path: /o, upstream: d, auth: {{resource: \"https://o.example/mcp\"}}}}]\n\
             auth: {{issuers: [{{name: corp, {issuer}, introspection: {{{introspection}}}}}]}}\n"
        );
        crate::config::load_str_with_env(&yaml, &|_| None).unwrap()
    }

    fn legacy_runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
    }

    fn unix_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Three requests with one token on one worker against an endpoint that answers `status`
    /// and `body` to every call, holding its first answer until two requests wait for it (or
    /// the test gives up waiting). Returns the three results, how many waited, how many calls
    /// the endpoint saw, and what the caches then say of the token.
    #[allow(clippy::type_complexity)]
    fn three_with_one_token(
        status: &'static str,
        body: String,
    ) -> (
        Vec<Result<Rc<Principal>, AuthFailure>>,
        usize,
        usize,
        Option<Result<Rc<Principal>, AuthFailure>>,
    ) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.ends_with(b"token_type_hint=access_token") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                // Held until the test says both others wait (or gives up waiting).
                let _ = go_rx.recv();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let cfg = issuer_config(
            "issuer: \"https://corp\"",
            &format!("endpoint: \"http://{addr}/i\", client_id: c, client_secret: s, timeout: 30s"),
        );
        let authn = Authn::new(&cfg);
        let intro = Introspector::default();
        let mut rt = legacy_runtime();
        let (a, b, c, waiting) = rt.block_on(async {
            let one = || intro.principal(&authn, &cfg, 0, 0, b"tok-1", unix_now, |_| {});
            let release = async {
                // Bounded, so a broken single flight fails the asserts instead of hanging.
                let mut waiting = 0;
                for _ in 0..2000 {
                    waiting = intro
                        .inflight
                        .borrow()
                        .values()
                        .next()
                        .map_or(0, |s| s.borrow().waiters.len());
                    if waiting == 2 {
                        break;
                    }
                    monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                let _ = go_tx.send(());
                drop(go_tx);
                waiting
            };
            monoio::join!(one(), one(), one(), release)
        });
        assert!(intro.inflight.borrow().is_empty());
        let cached = authn.cached(0, b"tok-1", unix_now());
        (vec![a, b, c], waiting, calls.load(Ordering::SeqCst), cached)
    }

    /// The first asks, the two others wait for its answer, and all three are admitted.
    #[test]
    fn concurrent_requests_with_one_token_share_one_call() {
        let body = format!(
            "{{\"active\":true,\"aud\":\"https://o.example/mcp\",\"sub\":\"s\",\"exp\":{}}}",
            unix_now() + 600
        );
        let (results, waiting, calls, cached) = three_with_one_token("200 OK", body);
        assert_eq!(waiting, 2, "two requests waited for the first one's call");
        assert_eq!(calls, 1);
        for p in results {
            assert_eq!(&*p.unwrap().subject, "s");
        }
        assert!(cached.is_some());
    }

    /// A failing endpoint: the two waiters answer from the leader's failure (one call, not
    /// three in a row each bounded by the timeout), and the failure is not cached.
    #[test]
    fn concurrent_requests_with_one_token_share_one_failure() {
        let (results, waiting, calls, cached) =
            three_with_one_token("503 Service Unavailable", "{}".to_string());
        assert_eq!(waiting, 2, "two requests waited for the first one's call");
        assert_eq!(
            calls, 1,
            "the waiters did not call the failing endpoint again"
        );
        for r in results {
            assert_eq!(r.unwrap_err(), AuthFailure::IntrospectionFailed);
        }
        assert!(
            cached.is_none(),
            "a failure is not cached for later requests"
        );
    }

    /// An https issuer whose metadata names an http introspection endpoint: the token and the
    /// client secret would go in the clear, so the endpoint is never called; the request is
    /// refused as an introspection failure (logged, counted as `error`).
    #[test]
    fn an_https_issuer_introspection_endpoint_must_be_https() {
        // The introspection endpoint, which would admit the token if it were asked.
        let endpoint = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint_addr = endpoint.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        std::thread::spawn(move || {
            for s in endpoint.incoming() {
                let Ok(mut s) = s else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut chunk = [0u8; 4096];
                let _ = s.read(&mut chunk);
                let body = format!(
                    "{{\"active\":true,\"aud\":\"https://o.example/mcp\",\"sub\":\"s\",\"exp\":{}}}",
                    unix_now() + 600
                );
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        // The issuer, over TLS with a certificate made here, serving its metadata at any path.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("https://{}", l.local_addr().unwrap());
        let server = Arc::new(
            rustls::ServerConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
                )
                .unwrap(),
        );
        let metadata = format!(
            "{{\"issuer\":\"{issuer}\",\"introspection_endpoint\":\"http://{endpoint_addr}/i\"}}"
        );
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(tcp) = s else { return };
                let conn = rustls::ServerConnection::new(server.clone()).unwrap();
                let mut s = rustls::StreamOwned::new(conn, tcp);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{metadata}",
                    metadata.len()
                );
                let _ = s.flush();
                s.conn.send_close_notify();
                let _ = s.conn.complete_io(&mut s.sock);
            }
        });
        let mut cfg = issuer_config(
            &format!("issuer: \"{issuer}\", discovery: true"),
            "client_id: c, client_secret: s, timeout: 30s",
        );
        // Trust the certificate made above instead of the system roots.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let is = &mut cfg.auth.issuers[0];
        let mut conf = (**is.introspection.as_ref().unwrap()).clone();
        conf.tls = Some(Arc::new(tls));
        is.introspection = Some(Arc::new(conf));
        let authn = Authn::new(&cfg);
        let intro = Introspector::default();
        let outcomes = RefCell::new(Vec::new());
        let mut rt = legacy_runtime();
        let r = rt.block_on(
            intro.principal(&authn, &cfg, 0, 0, b"tok-1", unix_now, |o| {
                outcomes.borrow_mut().push(o)
            }),
        );
        assert_eq!(r.unwrap_err(), AuthFailure::IntrospectionFailed);
        assert_eq!(*outcomes.borrow(), [Outcome::Error]);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "the http endpoint was never called"
        );
    }

    /// A plain-HTTP server on loopback answering each request with `answer(path)` (status line
    /// and body); counts requests.
    fn http_server(
        answer: impl Fn(&str, std::net::SocketAddr) -> (&'static str, String) + Send + 'static,
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf);
                let path = text.split(' ').nth(1).unwrap_or("").to_string();
                let (status, body) = answer(&path, addr);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (addr, calls)
    }

    /// An issuer at `issuer` with discovery and `negative_cache`, its endpoint left to discovery.
    fn discovering(issuer: &str, negative_cache: &str) -> Config {
        issuer_config(
            &format!("issuer: \"{issuer}\", discovery: true"),
            &format!(
                "client_id: c, client_secret: s, timeout: 30s, negative_cache: {negative_cache}"
            ),
        )
    }

    fn principal_of(
        intro: &Introspector,
        cfg: &Config,
        token: &[u8],
    ) -> Result<Rc<Principal>, AuthFailure> {
        let authn = Authn::new(cfg);
        let mut rt = legacy_runtime();
        rt.block_on(intro.principal(&authn, cfg, 0, 0, token, unix_now, |_| {}))
    }

    /// A 200 that is not JSON at the RFC 8414 URL (a login page, say) is not the end of
    /// discovery: the OpenID Connect URL is asked next.
    #[test]
    fn discovery_goes_on_past_a_metadata_url_that_answers_no_json() {
        let (addr, _) = http_server(|path, addr| {
            match path {
            "/.well-known/oauth-authorization-server" => ("200 OK", "<html>login</html>".into()),
            "/.well-known/openid-configuration" => (
                "200 OK",
                format!(
                    "{{\"issuer\":\"http://{addr}\",\"introspection_endpoint\":\"http://{addr}/i\"}}"
                ),
            ),
            "/i" => (
                "200 OK",
                format!(
                    "{{\"active\":true,\"aud\":\"https://o.example/mcp\",\"sub\":\"s\",\"exp\":{}}}",
                    unix_now() + 600
                ),
            ),
            _ => ("404 Not Found", String::new()),
        }
        });
        let cfg = discovering(&format!("http://{addr}"), "5s");
        let p = principal_of(&Introspector::default(), &cfg, b"tok-1").unwrap();
        assert_eq!(&*p.subject, "s");
    }

    /// A failed discovery is remembered for negative_cache: the next opaque token does not ask
    /// the metadata URLs again.
    #[test]
    fn a_failed_discovery_is_remembered_for_negative_cache() {
        let (addr, calls) = http_server(|_, _| ("404 Not Found", String::new()));
        let cfg = discovering(&format!("http://{addr}"), "1h");
        let intro = Introspector::default();
        for token in [&b"tok-1"[..], b"tok-2"] {
            assert_eq!(
                principal_of(&intro, &cfg, token).unwrap_err(),
                AuthFailure::IntrospectionFailed
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "both metadata URLs, once");
        // negative_cache 0s: not remembered.
        let cfg = discovering(&format!("http://{addr}"), "0s");
        let intro = Introspector::default();
        for token in [&b"tok-1"[..], b"tok-2"] {
            assert!(principal_of(&intro, &cfg, token).is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }

    /// An https endpoint of an issuer without a TLS config of its own (an http issuer) gets the
    /// worker's system-roots config, built once.
    #[test]
    fn the_system_roots_tls_config_is_built_once_per_worker() {
        let cfg = discovering("http://127.0.0.1:9", "5s");
        let conf = cfg.auth.issuers[0].introspection.as_deref().unwrap();
        assert!(conf.tls.is_none());
        let target = crate::policy::fetch::url("https://as.example/introspect").unwrap();
        let intro = Introspector::default();
        let (a, _) = intro.tls_for(conf, &target).unwrap().unwrap();
        let (b, _) = intro.tls_for(conf, &target).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let plain = crate::policy::fetch::url("http://as.example/introspect").unwrap();
        assert!(intro.tls_for(conf, &plain).unwrap().is_none());
    }

    /// A leader whose future is dropped (its client went away) hands the lead on: the request
    /// that waited for it makes the call itself and is answered.
    #[test]
    fn a_dropped_leader_hands_the_lead_to_a_waiter() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.ends_with(b"token_type_hint=access_token") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if n == 0 {
                    // The first call is never answered (its caller goes away).
                    held.push(s);
                    continue;
                }
                let body = format!(
                    "{{\"active\":true,\"aud\":\"https://o.example/mcp\",\"sub\":\"s\",\"exp\":{}}}",
                    unix_now() + 600
                );
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let cfg = issuer_config(
            "issuer: \"https://corp\"",
            &format!("endpoint: \"http://{addr}/i\", client_id: c, client_secret: s, timeout: 30s"),
        );
        let authn = Authn::new(&cfg);
        let intro = Introspector::default();
        let mut rt = legacy_runtime();
        let (leader, waiter) = rt.block_on(async {
            let one = || intro.principal(&authn, &cfg, 0, 0, b"tok-1", unix_now, |_| {});
            // The leader goes away once the other request waits for it (or the test gives up).
            let went_away = async {
                for _ in 0..2000 {
                    let waiting = intro
                        .inflight
                        .borrow()
                        .values()
                        .next()
                        .map_or(0, |s| s.borrow().waiters.len());
                    if waiting == 1 {
                        break;
                    }
                    monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            };
            let leader = async {
                monoio::select! {
                    r = one() => Some(r),
                    _ = went_away => None,
                }
            };
            monoio::join!(leader, one())
        });
        assert!(leader.is_none(), "the leader went away before its answer");
        assert_eq!(&*waiter.unwrap().subject, "s");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(intro.inflight.borrow().is_empty());
    }
}
