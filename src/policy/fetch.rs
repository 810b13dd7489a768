//! Documents the identity phase needs from authorization servers (JWKS, OIDC / RFC 8414
//! discovery metadata), fetched by a background thread, never on the request path: a blocking
//! HTTP/1.1 GET over TCP or TLS (rustls, ring), bounded in time and size, that reports how long
//! the answer may be cached (`Cache-Control: max-age`, `Expires` is not read).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{HttpTarget, UpstreamTarget};
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{parse_response, Framing};

/// Largest document accepted (a JWKS with dozens of RSA keys is far below this).
pub const MAX_DOCUMENT: usize = 1024 * 1024;

/// How a fetch is bounded.
#[derive(Clone)]
pub struct Fetcher {
    /// Connect, and then each read and write.
    pub timeout: Duration,
    /// For https URLs (system roots unless configured otherwise).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A fetched document.
#[derive(Debug)]
pub struct Fetched {
    pub body: Vec<u8>,
    /// `Cache-Control: max-age` (none when absent; `no-store`/`no-cache` give zero).
    pub max_age: Option<Duration>,
}

/// Parses an `http(s)://host[:port]/path` URL.
pub fn url(s: &str) -> Result<HttpTarget, String> {
    match crate::config::parse_http_url(s)? {
        UpstreamTarget::Http(t) => Ok(t),
        UpstreamTarget::BuiltinDemo => Err(format!("{s:?} is not an http(s) URL")),
    }
}

impl Fetcher {
    /// GETs `target`, expecting 200 and a JSON body.
    pub fn get(&self, target: &HttpTarget) -> Result<Fetched, String> {
        let addrs: Vec<_> = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| format!("{}: cannot resolve: {e}", target.host))?
            .collect();
        let mut last = format!("{}: no address", target.host);
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(tcp) => return self.exchange(target, tcp),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    fn exchange(&self, target: &HttpTarget, tcp: TcpStream) -> Result<Fetched, String> {
        tcp.set_read_timeout(Some(self.timeout))
            .and_then(|()| tcp.set_write_timeout(Some(self.timeout)))
            .map_err(|e| e.to_string())?;
        let request = format!(
            "GET {} HTTP/1.1\r\nhost: {}\r\naccept: application/json\r\nuser-agent: tollgate\r\nconnection: close\r\n\r\n",
            target.path, target.authority
        );
        let raw = if target.tls {
            let cfg = self
                .tls
                .clone()
                .ok_or("https needs a TLS configuration".to_string())?;
            let name = crate::tls::server_name(&target.host)?;
            let conn = rustls::ClientConnection::new(cfg, name).map_err(|e| format!("TLS: {e}"))?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            s.write_all(request.as_bytes())
                .map_err(|e| format!("TLS: {e}"))?;
            read_all(&mut s)?
        } else {
            let mut s = tcp;
            s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
            read_all(&mut s)?
        };
        parse(&raw)
    }
}

/// Reads until the peer closes (the request said `connection: close`), at most the bound.
fn read_all(s: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_DOCUMENT + 64 * 1024 {
                    return Err(format!("document larger than {MAX_DOCUMENT} bytes"));
                }
            }
            // A TLS peer that closes without close_notify: what arrived is judged by its framing.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(out),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A whole response: 200, framed by length, chunks or the close.
fn parse(raw: &[u8]) -> Result<Fetched, String> {
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; 64];
    let head = parse_response(raw, &mut headers, 64 * 1024, false)
        .map_err(|e| e.reason.to_string())?
        .ok_or("the response ended inside its head")?;
    if head.status != 200 {
        return Err(format!("HTTP {}", head.status));
    }
    let max_age = max_age(raw, head.len);
    let rest = &raw[head.len..];
    let body = match head.framing {
        Framing::Length(n) => {
            let n = usize::try_from(n).map_err(|_| "length too large")?;
            if rest.len() < n {
                return Err("the response ended inside its body".into());
            }
            rest[..n].to_vec()
        }
        Framing::Chunked => {
            let mut d = ChunkedDecoder::new(8 * 1024);
            let mut body = Vec::new();
            d.feed(rest, |b| body.extend_from_slice(b))
                .map_err(|e| format!("bad chunked body: {e:?}"))?;
            if !d.is_done() {
                return Err("the response ended inside its body".into());
            }
            body
        }
        _ => rest.to_vec(),
    };
    if body.len() > MAX_DOCUMENT {
        return Err(format!("document larger than {MAX_DOCUMENT} bytes"));
    }
    Ok(Fetched { body, max_age })
}

/// `Cache-Control` of the head `raw[..head_len]`.
fn max_age(raw: &[u8], head_len: usize) -> Option<Duration> {
    let head = std::str::from_utf8(&raw[..head_len]).ok()?;
    let mut age = None;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("cache-control") {
            continue;
        }
        for d in value.split(',') {
            let d = d.trim().to_ascii_lowercase();
            if d == "no-store" || d == "no-cache" {
                return Some(Duration::ZERO);
            }
            if let Some(v) = d.strip_prefix("max-age=") {
                age = v
                    .trim_matches('"')
                    .parse::<u64>()
                    .ok()
                    .map(Duration::from_secs);
            }
        }
    }
    age
}

/// Where an issuer's metadata may be (RFC 8414 §3.1 first, then OpenID Connect Discovery's
/// `/.well-known/openid-configuration` appended to the issuer).
pub fn metadata_urls(issuer: &str) -> Vec<String> {
    let issuer = issuer.trim_end_matches('/');
    let after_scheme = issuer.find("://").map_or(0, |i| i + 3);
    let path_at = issuer[after_scheme..]
        .find('/')
        .map_or(issuer.len(), |i| after_scheme + i);
    let (origin, path) = issuer.split_at(path_at);
    vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{issuer}/.well-known/openid-configuration"),
    ]
}

/// What the identity phase reads of an issuer's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub jwks_uri: Option<String>,
    pub introspection_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
}

/// Fetches `issuer`'s metadata: the first candidate URL that answers with a document whose
/// `issuer` is exactly `issuer` (RFC 8414 §3.3: anything else is refused, or a server could
/// speak for another).
pub fn discover(f: &Fetcher, issuer: &str) -> Result<(Metadata, Option<Duration>), String> {
    let mut errors = Vec::new();
    for u in metadata_urls(issuer) {
        let target = url(&u)?;
        match f.get(&target) {
            Ok(doc) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&doc.body).map_err(|e| format!("{u}: not JSON: {e}"))?;
                if v["issuer"].as_str() != Some(issuer) {
                    return Err(format!(
                        "{u}: its issuer is {}, not {issuer:?}",
                        v["issuer"]
                    ));
                }
                let s = |k: &str| v[k].as_str().map(str::to_owned);
                let m = Metadata {
                    jwks_uri: s("jwks_uri"),
                    introspection_endpoint: s("introspection_endpoint"),
                    token_endpoint: s("token_endpoint"),
                };
                return Ok((m, doc.max_age));
            }
            Err(e) => errors.push(format!("{u}: {e}")),
        }
    }
    Err(errors.join("; "))
}

/// A URL an `https` issuer's metadata names (`member`: `jwks_uri`, `introspection_endpoint`)
/// must be `https` too: the metadata was fetched over TLS, and keys fetched in the clear could
/// be replaced on the way, a token and client secret sent in the clear read.
pub fn discovered_url_allowed(issuer: &str, member: &str, url: &str) -> Result<(), String> {
    let https = |u: &str| {
        u.get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
    };
    if https(issuer) && !https(url) {
        return Err(format!(
            "its metadata names {member} {url:?}, which is not https like the issuer"
        ));
    }
    Ok(())
}

/// Where an issuer's signing keys come from.
#[derive(Clone, Debug)]
pub struct KeySource {
    /// Index into `auth.issuers`.
    pub issuer: usize,
    /// The issuer's name (logs, metric label) and URL (`iss`, discovery).
    pub name: String,
    pub issuer_url: String,
    /// `jwks_url`, or found through discovery when `None`.
    pub jwks_url: Option<String>,
}

/// How often keys are fetched.
#[derive(Clone, Copy, Debug)]
pub struct RefreshPolicy {
    /// Never more often than this, whatever the cache headers say (also the floor for
    /// `max-age=0`).
    pub min: Duration,
    /// When the answer has no `max-age`.
    pub default: Duration,
    /// Never less often than this.
    pub max: Duration,
    /// After a failure, the first retry (doubling up to `default`).
    pub retry: Duration,
    /// A token with an unknown `kid` asks for a refetch at most this often per issuer.
    pub unknown_kid: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            min: Duration::from_secs(60),
            default: Duration::from_secs(300),
            max: Duration::from_secs(24 * 3600),
            retry: Duration::from_secs(5),
            unknown_kid: Duration::from_secs(30),
        }
    }
}

/// What a fetch round delivers: an issuer's JWKS document (raw JSON), fetched and parsed as
/// JSON. On failure nothing is delivered: workers keep the last good keys. Returns whether the
/// document held keys the workers can use (and was sent to them).
pub type Deliver = Box<dyn Fn(&KeySource, Arc<[u8]>) -> bool + Send>;

/// Why a worker asks for an issuer's keys again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// A token names a `kid` the worker's keys lack: the issuer may have rotated its keys.
    UnknownKid,
    /// The worker has no keys of the issuer at all.
    NoKeys,
}

/// Handle of the key refresher thread: ask for a refetch when a token names an unknown `kid`.
#[derive(Clone)]
pub struct Refresher {
    ask: crossbeam_channel::Sender<(usize, Ask)>,
}

impl Refresher {
    /// Asks (never blocks; a full queue drops the ask) for issuer `issuer`'s keys again.
    pub fn ask(&self, issuer: usize, why: Ask) {
        let _ = self.ask.try_send((issuer, why));
    }
}

/// Starts the thread that fetches every source's keys now, then again as their cache lifetime
/// says (`policy`), and whenever a worker meets an unknown `kid` (rate-limited per issuer).
/// Stops when `stop` is set (checked every second).
pub fn spawn(
    sources: Vec<KeySource>,
    fetcher: Fetcher,
    policy: RefreshPolicy,
    deliver: Deliver,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<(Refresher, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::bounded::<(usize, Ask)>(64);
    let handle = std::thread::Builder::new()
        .name("tollgate-keys".into())
        .spawn(move || run(sources, fetcher, policy, deliver, stop, rx))?;
    Ok((Refresher { ask: tx }, handle))
}

struct State {
    due: std::time::Instant,
    last_attempt: Option<std::time::Instant>,
    /// When an unknown kid last made it fetch (the rate limit counts only those).
    last_asked: Option<std::time::Instant>,
    /// When a worker without keys last made it fetch (before any were delivered).
    last_no_keys: Option<std::time::Instant>,
    /// A fetch delivered usable keys: the workers have them, or they are on their way.
    delivered: bool,
    failures: u32,
    /// Found by discovery (kept when a later discovery fails).
    jwks_url: Option<String>,
}

fn run(
    sources: Vec<KeySource>,
    fetcher: Fetcher,
    policy: RefreshPolicy,
    deliver: Deliver,
    stop: Arc<std::sync::atomic::AtomicBool>,
    asks: crossbeam_channel::Receiver<(usize, Ask)>,
) {
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    let now = Instant::now();
    let mut states: Vec<State> = sources
        .iter()
        .map(|s| State {
            due: now,
            last_attempt: None,
            last_asked: None,
            last_no_keys: None,
            delivered: false,
            failures: 0,
            jwks_url: s.jwks_url.clone(),
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for (src, st) in sources.iter().zip(states.iter_mut()) {
            if st.due <= now {
                refresh(src, st, &fetcher, &policy, &deliver);
            }
        }
        let next = states.iter().map(|s| s.due).min();
        let wait = next
            .map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_secs(1));
        if let Ok((issuer, why)) = asks.recv_timeout(wait) {
            let Some(i) = sources.iter().position(|s| s.issuer == issuer) else {
                continue;
            };
            asked(&mut states[i], why, &policy, Instant::now());
        }
    }
}

/// A worker's ask: makes the issuer's fetch due now unless one made for the same kind of ask
/// ran less than `policy.unknown_kid` ago. A worker with no keys at all within that interval
/// after usable ones were delivered is answered already (they are on their way to it: the asks
/// of requests that came before the first keys, on a slow start); later, it missed them and
/// its ask fetches again (once an interval); before any were delivered its ask only cuts the
/// retry backoff short. No-keys asks never spend the unknown kids' interval, which a rotation
/// right after would otherwise wait out. Whether it fetches now.
fn asked(st: &mut State, why: Ask, policy: &RefreshPolicy, now: std::time::Instant) -> bool {
    let last = match why {
        Ask::NoKeys => &mut st.last_no_keys,
        Ask::UnknownKid => &mut st.last_asked,
    };
    if last.is_some_and(|t| now.saturating_duration_since(t) < policy.unknown_kid) {
        return false;
    }
    *last = Some(now);
    st.due = now;
    true
}

/// One fetch of `src`'s keys (discovering the JWKS URL first when needed).
fn refresh(
    src: &KeySource,
    st: &mut State,
    fetcher: &Fetcher,
    policy: &RefreshPolicy,
    deliver: &Deliver,
) {
    use std::time::Instant;
    st.last_attempt = Some(Instant::now());
    let result = (|| -> Result<Option<Duration>, String> {
        if src.jwks_url.is_none() {
            // Discovery runs on every refresh, so a moved `jwks_uri` is followed; when it fails
            // but an earlier one succeeded, the URL found then is used (the keys may still be
            // reachable while the metadata document is not).
            match discover(fetcher, &src.issuer_url).and_then(|(m, _)| {
                let u = m.jwks_uri.ok_or("its metadata has no jwks_uri")?;
                discovered_url_allowed(&src.issuer_url, "jwks_uri", &u)?;
                Ok(u)
            }) {
                Ok(u) => st.jwks_url = Some(u),
                Err(why) if st.jwks_url.is_some() => {
                    tracing::warn!(issuer = %src.name, error = %why, "discovery failed; fetching keys from the JWKS URL found before");
                }
                Err(why) => return Err(why),
            }
        }
        let u = st.jwks_url.clone().ok_or("no JWKS URL")?;
        let doc = fetcher.get(&url(&u)?)?;
        let v: serde_json::Value =
            serde_json::from_slice(&doc.body).map_err(|e| format!("{u}: not JSON: {e}"))?;
        if !v["keys"].is_array() {
            return Err(format!("{u}: not a JWK set (no \"keys\" list)"));
        }
        if deliver(src, doc.body.into()) {
            st.delivered = true;
            // Asks of workers without keys within the interval from now are answered by this
            // delivery; one later means a worker missed it (its control queue was full).
            st.last_no_keys = Some(Instant::now());
        }
        Ok(doc.max_age)
    })();
    let label = match &result {
        Ok(_) => "ok",
        Err(_) => "error",
    };
    metrics::counter!(crate::observe::names::AUTH_KEY_REFRESHES_TOTAL, "issuer" => src.name.clone(), "result" => label).increment(1);
    match result {
        Ok(max_age) => {
            st.failures = 0;
            let every = max_age
                .unwrap_or(policy.default)
                .clamp(policy.min, policy.max);
            st.due = Instant::now() + every;
            tracing::debug!(issuer = %src.name, next_in_secs = every.as_secs(), "signing keys fetched");
        }
        Err(why) => {
            st.failures = st.failures.saturating_add(1);
            let backoff = policy
                .retry
                .saturating_mul(1 << st.failures.min(10).saturating_sub(1))
                .min(policy.default);
            st.due = Instant::now() + backoff;
            tracing::warn!(issuer = %src.name, error = %why, retry_in_secs = backoff.as_secs(), "signing keys could not be fetched; the last good keys stay in use");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves each canned response once, in order, on 127.0.0.1.
    fn serve(responses: Vec<String>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for r in responses {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(r.as_bytes());
            }
        });
        format!("http://{addr}")
    }

    fn fetcher() -> Fetcher {
        Fetcher {
            timeout: Duration::from_secs(5),
            tls: None,
        }
    }

    #[test]
    fn a_document_comes_with_its_cache_lifetime() {
        let base = serve(vec![
            "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=300\r\nContent-Length: 11\r\n\r\n{\"keys\":[]}".into(),
            "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n".into(),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
        ]);
        let t = url(&format!("{base}/jwks")).unwrap();
        let a = fetcher().get(&t).unwrap();
        assert_eq!(a.body, b"{\"keys\":[]}");
        assert_eq!(a.max_age, Some(Duration::from_secs(300)));
        let b = fetcher().get(&t).unwrap();
        assert_eq!(b.body, b"{\"a\":1}");
        assert_eq!(b.max_age, Some(Duration::ZERO));
        assert_eq!(fetcher().get(&t).unwrap_err(), "HTTP 404");
    }

    /// An issuer on 127.0.0.1 whose metadata names its `/jwks`: `metadata(n)` says whether the
    /// n-th metadata request (from 0) is answered (else 503); each JWKS answer names a new key
    /// `k1`, `k2`, … with `max-age=3600`.
    fn scripted_issuer(metadata: fn(usize) -> bool) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://{}", l.local_addr().unwrap());
        let meta = format!("{{\"issuer\":\"{issuer}\",\"jwks_uri\":\"{issuer}/jwks\"}}");
        std::thread::spawn(move || {
            let (mut metadata_asked, mut keys_served) = (0, 0);
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let body = if req.starts_with("GET /jwks") {
                    keys_served += 1;
                    format!("{{\"keys\":[{{\"kid\":\"k{keys_served}\"}}]}}")
                } else if req.starts_with("GET /.well-known/oauth-authorization-server") && {
                    metadata_asked += 1;
                    metadata(metadata_asked - 1)
                } {
                    meta.clone()
                } else {
                    let _ = s.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                    );
                    continue;
                };
                let _ = write!(s, "HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            }
        });
        issuer
    }

    /// Runs the refresher for `issuer` (found through discovery, as `auth.issuers[3]`), with no
    /// rate limit on unknown-kid asks; the documents it delivers arrive on the receiver.
    fn refresher_of(
        issuer: &str,
    ) -> (
        Refresher,
        std::sync::mpsc::Receiver<(usize, String)>,
        impl FnOnce(),
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let policy = RefreshPolicy {
            unknown_kid: Duration::ZERO,
            ..RefreshPolicy::default()
        };
        let src = KeySource {
            issuer: 3,
            name: "test".into(),
            issuer_url: issuer.to_string(),
            jwks_url: None,
        };
        let deliver: Deliver = Box::new(move |s, doc| {
            tx.send((s.issuer, String::from_utf8_lossy(&doc).to_string()))
                .is_ok()
        });
        let (refresher, handle) =
            spawn(vec![src], fetcher(), policy, deliver, stop.clone()).unwrap();
        let end = move || {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            handle.join().unwrap();
        };
        (refresher, rx, end)
    }

    #[test]
    fn the_refresher_delivers_keys_found_through_discovery_and_refetches_on_an_unknown_kid() {
        let (refresher, rx, end) = refresher_of(&scripted_issuer(|_| true));
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first, (3, "{\"keys\":[{\"kid\":\"k1\"}]}".to_string()));
        // max-age=3600: nothing more until a token names a kid the keys lack.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        refresher.ask(3, Ask::UnknownKid);
        let second = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(second.1, "{\"keys\":[{\"kid\":\"k2\"}]}");
        end();
    }

    #[test]
    fn asks_from_workers_without_keys_leave_the_interval_to_a_rotation() {
        use std::time::Instant;
        let policy = RefreshPolicy {
            unknown_kid: Duration::from_secs(30),
            ..RefreshPolicy::default()
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let later = t0 + s(300);
        let mut st = State {
            due: later,
            last_attempt: None,
            last_asked: None,
            last_no_keys: None,
            delivered: false,
            failures: 0,
            jwks_url: None,
        };
        // No keys delivered yet (the first fetch failed): a worker without keys makes it fetch
        // now rather than after the backoff, once per interval.
        assert!(asked(&mut st, Ask::NoKeys, &policy, t0));
        assert_eq!(st.due, t0);
        assert!(!asked(&mut st, Ask::NoKeys, &policy, t0 + s(1)));
        assert_eq!(st.last_asked, None);
        // Keys delivered: the asks of requests that came before they reached the workers fetch
        // nothing and leave the interval alone...
        st.delivered = true;
        st.last_no_keys = Some(t0 + s(2));
        st.due = later;
        assert!(!asked(&mut st, Ask::NoKeys, &policy, t0 + s(2)));
        assert_eq!((st.due, st.last_asked), (later, None));
        // ...so a rotation right after is fetched at once, and the next unknown kid within the
        // interval is not.
        assert!(asked(&mut st, Ask::UnknownKid, &policy, t0 + s(3)));
        assert_eq!(st.due, t0 + s(3));
        st.due = later;
        assert!(!asked(&mut st, Ask::UnknownKid, &policy, t0 + s(32)));
        assert!(!asked(&mut st, Ask::NoKeys, &policy, t0 + s(31)));
        assert_eq!(st.due, later);
        assert!(asked(&mut st, Ask::UnknownKid, &policy, t0 + s(33)));
        // A worker still without keys an interval after the delivery missed it (its control
        // queue was full): its ask fetches again, once an interval.
        st.due = later;
        assert!(asked(&mut st, Ask::NoKeys, &policy, t0 + s(33)));
        assert_eq!(st.due, t0 + s(33));
        assert!(!asked(&mut st, Ask::NoKeys, &policy, t0 + s(40)));
    }

    #[test]
    fn keys_come_from_the_known_jwks_url_when_discovery_fails_later() {
        // The metadata document is gone after its first answer.
        let (refresher, rx, end) = refresher_of(&scripted_issuer(|n| n == 0));
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first.1, "{\"keys\":[{\"kid\":\"k1\"}]}");
        refresher.ask(3, Ask::UnknownKid);
        let second = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(second.1, "{\"keys\":[{\"kid\":\"k2\"}]}");
        end();
    }

    #[test]
    fn an_https_issuer_keys_come_over_https_only() {
        let allowed = |i, u| discovered_url_allowed(i, "jwks_uri", u);
        assert!(allowed("https://as.example", "https://keys.example/jwks").is_ok());
        assert!(allowed("HTTPS://as.example", "https://as.example/jwks").is_ok());
        assert!(allowed("https://as.example", "http://as.example/jwks").is_err());
        // A plain-HTTP issuer (loopback tests, internal networks) may name either.
        assert!(allowed("http://127.0.0.1:9", "http://127.0.0.1:9/jwks").is_ok());
    }

    #[test]
    fn discovery_tries_rfc_8414_then_openid_and_checks_the_issuer() {
        assert_eq!(
            metadata_urls("https://as.example/tenant1"),
            [
                "https://as.example/.well-known/oauth-authorization-server/tenant1",
                "https://as.example/tenant1/.well-known/openid-configuration"
            ]
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://{}", l.local_addr().unwrap());
        let doc = format!(
            "{{\"issuer\":\"{issuer}\",\"jwks_uri\":\"{issuer}/jwks\",\"token_endpoint\":\"{issuer}/token\"}}"
        );
        let responses = vec![
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{doc}",
                doc.len()
            ),
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{doc}",
                doc.len()
            ),
        ];
        std::thread::spawn(move || {
            for r in responses {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(r.as_bytes());
            }
        });
        let (m, _) = discover(&fetcher(), &issuer).unwrap();
        assert_eq!(m.jwks_uri, Some(format!("{issuer}/jwks")));
        assert_eq!(m.token_endpoint, Some(format!("{issuer}/token")));
        // Another issuer's document is refused (the same server answers for a look-alike).
        let err = discover(&fetcher(), &format!("{issuer}/other")).unwrap_err();
        assert!(err.contains("not"), "{err}");
    }
}
