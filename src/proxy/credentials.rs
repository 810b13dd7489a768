//! The gateway's own bearer tokens for upstreams with `credentials` (OAuth2 client credentials,
//! RFC 6749 §4.4; token exchange on behalf of the caller, RFC 8693), per worker.
//!
//! `upstream::exchange` calls `authorize` for such an upstream only (one `Option` check for the
//! others): it makes sure a token is at hand (fetching it on first use, single-flight per worker
//! and upstream; refreshing `refresh_before` its expiry; keeping the last token while the token
//! endpoint fails, until it expires) and adds `authorization: Bearer …` to the request head.
//! A 401 from the upstream drops the token (`rejected`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use crate::config::credentials::{Credentials, Grant};
use crate::error::{Error, Kind};
use crate::http::client::{self, Token};

/// Who the request is for: the caller's principal id and the raw bearer token it presented.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub principal: [u8; 16],
    pub token: &'a str,
}

/// A `Caller` that owns its token (an `Rc`, no copy of the text): for work on a request's
/// behalf that also needs the request's context mutably.
#[derive(Clone)]
pub struct OwnedCaller {
    pub principal: [u8; 16],
    pub token: std::rc::Rc<str>,
}

impl OwnedCaller {
    pub fn caller(&self) -> Caller<'_> {
        Caller {
            principal: self.principal,
            token: &self.token,
        }
    }
}

/// Exchanged tokens of one upstream, by principal id.
type Exchanged = HashMap<[u8; 16], (Arc<Credentials>, Token)>;

#[derive(Default)]
struct Slot {
    /// The config these tokens were fetched under (a reload that changes it starts afresh).
    cfg: Option<Arc<Credentials>>,
    token: Option<Token>,
    fetching: bool,
    waiters: Vec<Waker>,
    last_error: Option<String>,
}

/// Per worker: the client-credentials token per upstream name, exchanged tokens per upstream
/// name and principal id (looked up by `&str` and id: a cached token costs no allocation).
#[derive(Default)]
pub struct Tokens {
    own: RefCell<HashMap<String, Slot>>,
    exchanged: RefCell<HashMap<String, Exchanged>>,
}

fn usable(t: &Token, now: Instant) -> bool {
    t.expires_at.is_none_or(|e| now < e)
}

fn fresh(t: &Token, c: &Credentials, now: Instant) -> bool {
    t.expires_at.is_none_or(|e| now + c.refresh_before < e)
}

fn count(upstream: &str, grant: Grant, ok: bool) {
    metrics::counter!(
        crate::observe::names::UPSTREAM_TOKEN_REQUESTS_TOTAL,
        "upstream" => upstream.to_string(),
        "grant" => grant.as_str(),
        "result" => if ok { "ok" } else { "error" }
    )
    .increment(1);
}

fn refused(upstream: &str, why: &str) -> Error {
    Error::new(
        Kind::UpstreamCredentials,
        format!("no credentials for upstream \"{upstream}\": {why}"),
    )
}

/// Ends a fetch however the fetching future ends (completed or dropped): wakes the waiters.
struct Fetching<'a> {
    tokens: &'a Tokens,
    name: &'a str,
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.tokens.own.borrow_mut().get_mut(self.name) {
            s.fetching = false;
            for w in s.waiters.drain(..) {
                w.wake();
            }
        }
    }
}

impl Tokens {
    /// The gateway's own (client credentials) token for upstream `name`.
    pub async fn own(&self, name: &str, c: &Arc<Credentials>) -> Result<std::rc::Rc<str>, Error> {
        let now = Instant::now();
        let must_wait = {
            let mut own = self.own.borrow_mut();
            let s = own.entry(name.to_string()).or_default();
            if !s.cfg.as_ref().is_some_and(|x| Arc::ptr_eq(x, c)) {
                *s = Slot {
                    cfg: Some(c.clone()),
                    waiters: std::mem::take(&mut s.waiters),
                    fetching: s.fetching,
                    ..Slot::default()
                };
            }
            match &s.token {
                Some(t) if fresh(t, c, now) => return Ok(t.access_token.clone()),
                // Refreshing: meanwhile the current token serves.
                Some(t) if s.fetching && usable(t, now) => return Ok(t.access_token.clone()),
                _ => {}
            }
            if s.fetching {
                true
            } else {
                s.fetching = true;
                false
            }
        };
        if must_wait {
            std::future::poll_fn(|cx| {
                let mut own = self.own.borrow_mut();
                match own.get_mut(name) {
                    Some(s) if s.fetching => {
                        s.waiters.push(cx.waker().clone());
                        std::task::Poll::Pending
                    }
                    _ => std::task::Poll::Ready(()),
                }
            })
            .await;
            let own = self.own.borrow();
            let s = own.get(name);
            return match s.and_then(|s| s.token.as_ref()) {
                Some(t) if usable(t, Instant::now()) => Ok(t.access_token.clone()),
                _ => Err(refused(
                    name,
                    s.and_then(|s| s.last_error.as_deref())
                        .unwrap_or("the token request did not complete"),
                )),
            };
        }
        let _guard = Fetching { tokens: self, name };
        let body = client::form(&[
            ("grant_type", Some("client_credentials")),
            ("scope", c.scope.as_deref()),
            ("resource", c.resource.as_deref()),
            ("audience", c.audience.as_deref()),
        ]);
        let got = client::request_token(c, &body).await;
        count(name, Grant::ClientCredentials, got.is_ok());
        let mut own = self.own.borrow_mut();
        let s = own.entry(name.to_string()).or_default();
        match got {
            Ok(t) => {
                let out = t.access_token.clone();
                s.token = Some(t);
                s.last_error = None;
                Ok(out)
            }
            Err(e) => {
                tracing::warn!(upstream = %name, error = %e, "upstream token request failed");
                s.last_error = Some(e.clone());
                match &s.token {
                    Some(t) if usable(t, Instant::now()) => Ok(t.access_token.clone()),
                    _ => Err(refused(name, &e)),
                }
            }
        }
    }

    /// A token for upstream `name` on behalf of `caller` (RFC 8693), cached until it expires.
    pub async fn exchanged(
        &self,
        name: &str,
        c: &Arc<Credentials>,
        caller: Option<Caller<'_>>,
    ) -> Result<std::rc::Rc<str>, Error> {
        let Some(caller) = caller else {
            return Err(refused(
                name,
                "token_exchange needs the caller's own token, and this request has none (an endpoint without auth, or a request the gateway makes itself)",
            ));
        };
        let key = caller.principal;
        let now = Instant::now();
        if let Some((cfg, t)) = self.exchanged.borrow().get(name).and_then(|m| m.get(&key)) {
            if Arc::ptr_eq(cfg, c) && fresh(t, c, now) {
                return Ok(t.access_token.clone());
            }
        }
        let actor = if c.actor {
            Some(Box::pin(self.own(name, c)).await?)
        } else {
            None
        };
        let body = client::form(&[
            (
                "grant_type",
                Some("urn:ietf:params:oauth:grant-type:token-exchange"),
            ),
            ("subject_token", Some(caller.token)),
            (
                "subject_token_type",
                Some("urn:ietf:params:oauth:token-type:access_token"),
            ),
            (
                "requested_token_type",
                Some("urn:ietf:params:oauth:token-type:access_token"),
            ),
            ("actor_token", actor.as_deref()),
            (
                "actor_token_type",
                actor
                    .as_ref()
                    .map(|_| "urn:ietf:params:oauth:token-type:access_token"),
            ),
            ("resource", c.resource.as_deref()),
            ("audience", c.audience.as_deref()),
            ("scope", c.scope.as_deref()),
        ]);
        let got = client::request_token(c, &body).await;
        count(name, Grant::TokenExchange, got.is_ok());
        let t = got.map_err(|e| {
            tracing::warn!(upstream = %name, error = %e, "upstream token exchange failed");
            refused(name, &e)
        })?;
        let out = t.access_token.clone();
        let mut all = self.exchanged.borrow_mut();
        if !all.contains_key(name) {
            all.insert(name.to_string(), HashMap::new());
        }
        let Some(map) = all.get_mut(name) else {
            return Ok(out);
        };
        // `cache_entries` bounds this upstream's tokens (one per caller).
        if map.len() >= c.cache_entries && !map.contains_key(&key) {
            let now = Instant::now();
            map.retain(|_, (_, t)| usable(t, now));
            if map.len() >= c.cache_entries {
                // Still full: the entry closest to expiry goes.
                if let Some(k) = map
                    .iter()
                    .min_by_key(|(_, (_, t))| t.expires_at)
                    .map(|(k, _)| *k)
                {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, (c.clone(), t));
        Ok(out)
    }

    /// The upstream answered 401 to a request with our token: forget it (the next request
    /// fetches anew).
    pub fn rejected(&self, name: &str, caller: Option<[u8; 16]>) {
        if let Some(s) = self.own.borrow_mut().get_mut(name) {
            s.token = None;
        }
        if let Some(p) = caller {
            if let Some(m) = self.exchanged.borrow_mut().get_mut(name) {
                m.remove(&p);
            }
        }
    }

    /// Exchanged tokens held (for tests and the cache bound).
    pub fn exchanged_len(&self) -> usize {
        self.exchanged.borrow().values().map(HashMap::len).sum()
    }
}

/// Adds `authorization: Bearer <token>` for upstream `name` to the request head in `req` (at the
/// end of its head, before the blank line).
pub async fn authorize(
    tokens: &Tokens,
    name: &str,
    c: &Arc<Credentials>,
    caller: Option<Caller<'_>>,
    req: &mut Vec<u8>,
) -> Result<(), Error> {
    let token = match c.grant {
        Grant::ClientCredentials => tokens.own(name, c).await?,
        Grant::TokenExchange => tokens.exchanged(name, c, caller).await?,
    };
    insert_bearer(req, &token);
    Ok(())
}

/// Inserts the header line after the request head's last header.
pub fn insert_bearer(req: &mut Vec<u8>, token: &str) {
    let Some(end) = memchr::memmem::find(req, b"\r\n\r\n") else {
        return;
    };
    let line = format!("authorization: Bearer {token}\r\n");
    req.splice(end + 2..end + 2, line.into_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_goes_at_the_end_of_the_head() {
        let mut r = b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        insert_bearer(&mut r, "tok");
        assert_eq!(
            r,
            b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nauthorization: Bearer tok\r\n\r\n{}"
        );
    }

    /// A token endpoint on a thread: answers `x-<n>` to each request; returns the bodies seen.
    fn endpoint() -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let bodies = seen.clone();
        std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let Ok(mut s) = s else { return };
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                // Head, then Content-Length bytes of body.
                let body = loop {
                    let Ok(k) = s.read(&mut tmp) else { break None };
                    if k == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&tmp[..k]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(at) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= at + 4 + len {
                            break Some(text[at + 4..at + 4 + len].to_string());
                        }
                    }
                };
                let Some(body) = body else { continue };
                bodies.lock().unwrap().push(body);
                let json = format!(
                    "{{\"access_token\":\"x-{}\",\"token_type\":\"Bearer\",\"expires_in\":3600,\"issued_token_type\":\"urn:ietf:params:oauth:token-type:access_token\"}}",
                    n + 1
                );
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                        json.len()
                    )
                    .as_bytes(),
                );
            }
        });
        (addr, seen)
    }

    fn exchange_config(addr: std::net::SocketAddr, cache_entries: usize) -> Arc<Credentials> {
        use crate::config::credentials::defaults;
        Arc::new(Credentials {
            grant: Grant::TokenExchange,
            token_url: format!("http://{addr}/token"),
            token_target: crate::config::HttpTarget {
                host: addr.ip().to_string(),
                port: addr.port(),
                path: "/token".into(),
                authority: addr.to_string(),
                tls: false,
            },
            ca_file: None,
            tls: None,
            client_id: "tg".into(),
            client_secret: "s".into(),
            client_secret_source: crate::config::HeaderSource::Literal,
            scope: Some("notes:read".into()),
            resource: Some("https://notes/mcp".into()),
            resource_set: true,
            audience: None,
            refresh_before: defaults::REFRESH_BEFORE,
            actor: false,
            cache_entries,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            request_timeout: defaults::REQUEST_TIMEOUT,
            max_response_bytes: defaults::MAX_RESPONSE_BYTES,
        })
    }

    #[test]
    fn token_exchange_sends_the_callers_token_and_caches_per_principal() {
        let (addr, seen) = endpoint();
        let c = exchange_config(addr, 2);
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let tokens = Tokens::default();
            let a = Caller {
                principal: [1; 16],
                token: "caller A/token",
            };
            let b = Caller {
                principal: [2; 16],
                token: "caller-B",
            };
            let t1 = tokens.exchanged("notes", &c, Some(a)).await.unwrap();
            let t2 = tokens.exchanged("notes", &c, Some(a)).await.unwrap();
            assert_eq!(
                (&*t1, &*t2),
                ("x-1", "x-1"),
                "cached for the same principal"
            );
            let t3 = tokens.exchanged("notes", &c, Some(b)).await.unwrap();
            assert_eq!(&*t3, "x-2", "another principal gets its own");
            // No caller: refused, nothing asked of the token endpoint.
            let e = tokens.exchanged("notes", &c, None).await.unwrap_err();
            assert_eq!(e.kind, Kind::UpstreamCredentials);
            assert!(e.reason.contains("upstream \"notes\""), "{}", e.reason);
            // A 401 forgets A's token; the cache is bounded (2 here).
            tokens.rejected("notes", Some([1; 16]));
            assert_eq!(
                &*tokens.exchanged("notes", &c, Some(a)).await.unwrap(),
                "x-3"
            );
            let third = Caller {
                principal: [3; 16],
                token: "caller-C",
            };
            tokens.exchanged("notes", &c, Some(third)).await.unwrap();
            assert_eq!(tokens.exchanged_len(), 2);
            // The bound is per upstream: another upstream's tokens take none of its room.
            tokens.exchanged("wiki", &c, Some(third)).await.unwrap();
            assert_eq!(tokens.exchanged_len(), 3);
        });
        let bodies = seen.lock().unwrap().clone();
        assert_eq!(bodies.len(), 5);
        assert_eq!(
            bodies[0],
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
             &subject_token=caller+A%2Ftoken\
             &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
             &requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
             &resource=https%3A%2F%2Fnotes%2Fmcp&scope=notes%3Aread"
        );
        assert!(bodies[1].contains("subject_token=caller-B&"));
    }
}
