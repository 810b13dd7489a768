//! The upstream half of the request path: ask the upstream's circuit breaker, send a request
//! (pooled connection, one retry when a reused connection turns out stale before any response
//! byte, `retries` of a failed connect), read the response head (`request_timeout`, or a
//! tool's `tool_timeouts`), and
//! relay the body to the client as it arrives (SSE event by event, never buffering a stream).

use std::time::{Duration, Instant};

use crate::error::{Error, Kind};
use crate::http::chunked::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use crate::http::head::{parse_response, Framing, ResponseHead};
use crate::http::pool::{connect, Idleness, UpstreamConn};
use crate::http::Conn;
use crate::jsonrpc::probe::ReplyCode;

use super::breaker::Admitted;
use super::client::Client;
use super::shutdown::LocalShutdown;
use super::state::{Gateway, WorkerState};

/// Initial read buffer of an upstream connection; it grows for large bodies while relaying.
const UPSTREAM_READ_BUFFER: usize = 8 * 1024;

/// Upstream response heads larger than this are refused.
const MAX_UPSTREAM_HEAD: usize = 64 * 1024;
const UPSTREAM_HEADERS: usize = 128;

enum HeadRead {
    Closed {
        got_bytes: bool,
        err: Option<std::io::Error>,
    },
    Timeout,
    Invalid(&'static str),
}

async fn read_response_head(
    conn: &mut UpstreamConn,
    deadline: Instant,
    timers: &LocalShutdown,
) -> Result<ResponseHead, HeadRead> {
    loop {
        if !conn.buffered().is_empty() {
            let mut headers = [const { std::mem::MaybeUninit::uninit() }; UPSTREAM_HEADERS];
            match parse_response(conn.buffered(), &mut headers, MAX_UPSTREAM_HEAD, false) {
                // Interim responses we may ignore: 100 Continue, 102 Processing, 103 Early Hints.
                Ok(Some(h)) if matches!(h.status, 100 | 102 | 103) => {
                    conn.consume(h.len);
                    continue;
                }
                // 101 Switching Protocols was never asked for (RFC 9110 §15.2.2); other 1xx are
                // unassigned. Relaying either would leave the client waiting for a final response.
                Ok(Some(h)) if (100..200).contains(&h.status) => {
                    return Err(HeadRead::Invalid(if h.status == 101 {
                        "101 Switching Protocols to a request that asked for no upgrade"
                    } else {
                        "unknown 1xx interim response"
                    }));
                }
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(e) => return Err(HeadRead::Invalid(e.reason)),
            }
        }
        // On timeout the read is cancelled and the connection dropped: nothing is reused.
        let read = monoio::select! {
            r = conn.fill(0) => r,
            _ = timers.deadline(deadline) => return Err(HeadRead::Timeout),
        };
        let got_bytes = !conn.buffered().is_empty();
        match read {
            Ok(0) => {
                return Err(HeadRead::Closed {
                    got_bytes,
                    err: None,
                })
            }
            Ok(_) => {}
            Err(e) => {
                return Err(HeadRead::Closed {
                    got_bytes,
                    err: Some(e),
                })
            }
        }
    }
}

/// A new connection to an upstream: TCP, then for `https://` the TLS handshake (SNI and
/// verification against `tls.server_name` or the URL's host), each within `connect_timeout`.
/// A TLS failure reads "TLS handshake failed: invalid peer certificate: UnknownIssuer" and the
/// like, and is logged.
async fn open(
    w: &WorkerState,
    up: &super::state::UpstreamRuntime,
    r: usize,
) -> std::io::Result<crate::tls::Stream> {
    let rep = &up.replicas[r];
    let tcp = connect(&rep.addrs, up.connect_timeout).await?;
    w.register_fixed(&tcp, true);
    let Some((config, name)) = &up.tls else {
        return Ok(crate::tls::Stream::Plain(tcp));
    };
    let name = rep.tls_name.as_ref().unwrap_or(name);
    crate::tls::connect(tcp, config.clone(), name.clone(), up.connect_timeout)
        .await
        .map_err(|e| {
            tracing::warn!(upstream = %up.name, replica = %rep.url, error = %e, "upstream TLS handshake failed");
            std::io::Error::new(e.kind(), format!("TLS handshake failed: {e}"))
        })
}

/// Sends `req` to upstream `u` and returns the connection positioned after the response head.
/// The request buffer is always handed back. `replica`: the replica a session is pinned to
/// (`UpstreamSession::replica`), 0 for any (`proxy::replicas`); the connection's `replica`
/// says which one answered.
pub async fn exchange(
    w: &WorkerState,
    gw: &Gateway,
    (u, replica): (usize, u64),
    req: Vec<u8>,
) -> (Result<(UpstreamConn, ResponseHead), Error>, Vec<u8>) {
    exchange_as(w, gw, (u, replica), req, None).await
}

/// `exchange` for a request made on behalf of `caller` (an upstream with `token_exchange`
/// credentials gets a token issued for it; without a caller such an upstream is refused).
pub async fn exchange_as(
    w: &WorkerState,
    gw: &Gateway,
    (u, replica): (usize, u64),
    req: Vec<u8>,
    caller: Option<super::credentials::Caller<'_>>,
) -> (Result<(UpstreamConn, ResponseHead), Error>, Vec<u8>) {
    let (res, req, _, _) =
        exchange_within(w, gw, (u, replica), req, caller, Terms::default()).await;
    (res, req)
}

/// How `exchange_within` treats one exchange beyond its target.
#[derive(Clone, Copy, Default)]
pub struct Terms<'a> {
    /// The wait for the response head (a tool's `tool_timeouts` entry) instead of the
    /// upstream's `request_timeout`.
    pub tool_timeout: Option<Duration>,
    /// Whether the request is idempotent: asked only when a new connection closed before any
    /// response byte.
    pub retry_safe: Option<&'a dyn Fn() -> bool>,
    /// The caller vets the reply (`vet_reply`) and then tells the breaker (`vetted`): a 2xx head
    /// is not yet a success, since its body may still be refused as unusable.
    pub vets: bool,
    /// The time the caller read just before the exchange (its latency's start): the pool's
    /// readiness check of the first connection taken goes by it (one clock read fewer per call).
    pub at: Option<Instant>,
}

/// The replica of upstream `u` that `conn` is open to, as a session records it: its id, also
/// when the upstream has one URL. A reload that adds replicas then keeps the session on the
/// server that knows its `Mcp-Session-Id`, and one that drops its replica answers 404 instead of
/// sending it to another (8 bytes more in the token).
pub fn replica_of(gw: &Gateway, u: usize, conn: &UpstreamConn) -> u64 {
    let up = &gw.upstreams[u];
    up.replicas.get(conn.replica as usize).map_or(0, |r| r.id)
}

/// The refusal of a request whose session's replica is gone from the config or down: like a
/// session whose upstream is gone, the client is told to initialize a new one (404).
#[cold]
fn replica_gone(up: &super::state::UpstreamRuntime, why: &str) -> Error {
    Error::new(
        Kind::SessionUnknown,
        format!(
            "this session's replica of upstream \"{}\" {why}: initialize a new one",
            up.name
        ),
    )
}

/// The refusal of a request to an upstream whose circuit is open.
#[cold]
fn circuit_open(up: &super::state::UpstreamRuntime, retry_ms: u64) -> Error {
    let retry = Duration::from_millis(retry_ms.max(1));
    let msg = format!(
        "upstream \"{}\" is failing: its circuit is open (upstreams[].circuit_breaker), retry in {} ms",
        up.name,
        retry.as_millis()
    );
    Error {
        data: Some(super::breaker::refusal_data(&up.name, retry)),
        ..Error::new(Kind::UpstreamCircuitOpen, msg)
    }
}

/// `exchange_as` on `terms`: the response head awaited for `tool_timeout` (a `tools/call` of a
/// tool with its own `tool_timeouts` entry) instead of the upstream's `request_timeout`.
///
/// The upstream's circuit breaker is asked first (an open circuit refuses at once) and told the
/// outcome: a response head is a success unless it is a 5xx; a connect failure, a head timeout,
/// a connection closed before any reply, or an unreadable head are failures. With `vets`, a 2xx
/// head is not counted here: the caller counts it once it has vetted the body (`vetted`). A connect that
/// fails is tried again `retries.attempts` times (nothing reached the upstream); a request that
/// was sent is never sent again, except on a pooled connection found closed before any
/// response byte (once, on a new connection: the upstream processed nothing on it), and when
/// `retry_safe` says the request is idempotent (asked only then): a new connection closed
/// before any response byte is tried again within `retries.attempts` too. Nothing is ever
/// retried once a response byte arrived.
///
/// An upstream with several replicas: a pinned request goes to its replica (gone from the
/// config or marked down by the health check: `Kind::SessionUnknown`, 404); any other to the
/// one `replicas::Local::pick` names, and on to the next when nothing reached the one tried (its
/// connect failed after `retries`, or its circuit is open). Each replica has its own breaker.
///
/// A plain function returning `exchange_replica`'s future, which starts the replica loop (boxed)
/// itself: every request's future then carries no wrapper state for replicas (every request
/// allocates its whole size, see `size_tests`). Nor for its result: a wrapper that dropped the flag
/// (an async block, `FutureExt::map`) copied the whole exchange's future once more per call,
/// so callers leave the flag out themselves.
pub fn exchange_within<'a, 'g: 'a>(
    w: &'a WorkerState,
    gw: &'g Gateway,
    (u, replica): (usize, u64),
    req: Vec<u8>,
    caller: Option<super::credentials::Caller<'a>>,
    terms: Terms<'a>,
) -> impl std::future::Future<Output = Attempt<'g>> + 'a {
    exchange_replica(w, gw, (u, replica), req, caller, terms)
}

/// What `exchange_replica` gives back: `Exchanged`, and whether the request reached nothing
/// (a failed connect or an open circuit: `exchange_across` then tries another replica).
pub type Attempt<'g> = (
    Result<(UpstreamConn, ResponseHead), Error>,
    Vec<u8>,
    bool,
    Admitted<'g>,
);

/// What `exchange_across` gives back (`exchange_within`'s `Attempt` without its flag): the
/// connection after the response head (or why not), the request buffer, and the half-open probe
/// slot of a 2xx left to the caller's vet (`Terms::vets`; held until `vetted` has told the
/// breaker, else nothing).
pub type Exchanged<'g> = (
    Result<(UpstreamConn, ResponseHead), Error>,
    Vec<u8>,
    Admitted<'g>,
);

/// `exchange_replica`'s `to` naming a replica by position (`exchange_across` chose it) rather
/// than a pinned id (`replica_id`s never have this bit) or 0 (choose). One word, not an enum:
/// it is part of every request's future.
const AT: u64 = 1 << 63;
/// With `AT`: the request already carries the upstream's credential (`exchange_across` added it
/// once, for whichever replica takes it).
const AUTHORIZED: u64 = 1 << 62;

/// `exchange_within` for an upstream with several replicas.
async fn exchange_across<'g>(
    w: &WorkerState,
    gw: &'g Gateway,
    (u, replica): (usize, u64),
    mut req: Vec<u8>,
    caller: Option<super::credentials::Caller<'_>>,
    terms: Terms<'_>,
) -> Exchanged<'g> {
    let up = &gw.upstreams[u];
    let health = gw
        .health
        .upstreams
        .get(u)
        .map_or(&[][..], |h| &h.replicas[..]);
    // The replica the request's bytes are rendered for: the first, unless they come back from
    // an exchange (a resend) that retargeted them.
    let mut at = memchr::memchr(b' ', &req)
        .and_then(|sp| {
            up.replicas
                .iter()
                .position(|x| req[sp..].starts_with(&x.line))
        })
        .unwrap_or(0);
    if let Some(cr) = &up.credentials {
        let authorized = super::credentials::authorize(&w.tokens, &up.name, cr, caller, &mut req);
        if let Err(e) = authorized.await {
            return (Err(e), req, Admitted::NONE);
        }
    }
    let mut tried = 0u64;
    loop {
        let r = if replica != 0 {
            match up.replicas.iter().position(|x| x.id == replica) {
                None => {
                    return (
                        Err(replica_gone(up, "is no longer configured")),
                        req,
                        Admitted::NONE,
                    )
                }
                Some(r) if health.get(r).is_some_and(|h| !h.is_healthy()) => {
                    return (
                        Err(replica_gone(up, "is down (health check)")),
                        req,
                        Admitted::NONE,
                    )
                }
                Some(r) => r,
            }
        } else {
            match w.replicas.pick(up, health, tried) {
                Some(r) => r,
                // (Not reached: the loop goes on only while one is left.)
                None => {
                    let why = format!("upstream \"{}\": every replica was tried", up.name);
                    return (
                        Err(Error::new(Kind::UpstreamUnavailable, why)),
                        req,
                        Admitted::NONE,
                    );
                }
            }
        };
        if r != at {
            super::replicas::retarget(&mut req, &up.replicas[at], &up.replicas[r]);
            at = r;
        }
        let in_flight = w.replicas.begin(up, r);
        let (mut res, back, nothing_sent, probe) =
            exchange_replica(w, gw, (u, AT | AUTHORIZED | r as u64), req, caller, terms).await;
        // A response came: the replica stays busy with it until its body ends (the connection
        // goes back to the pool or is dropped, however the relay ended).
        if let Ok((conn, _)) = &mut res {
            conn.busy = Some(in_flight);
        }
        req = back;
        tried |= 1 << r;
        let others_left = (0..up.replicas.len()).any(|x| tried & (1 << x) == 0);
        if replica == 0 && nothing_sent && others_left {
            if let Err(e) = &res {
                tracing::debug!(upstream = %up.name, replica = %up.replicas[r].url, error = %e.reason, "trying another replica");
            }
            continue;
        }
        return (res, req, probe);
    }
}

/// One replica's exchange (`exchange_within`); the flag says the request reached nothing (a
/// failed connect or an open circuit), so another replica may take it.
async fn exchange_replica<'g>(
    w: &WorkerState,
    gw: &'g Gateway,
    (u, to): (usize, u64),
    mut req: Vec<u8>,
    caller: Option<super::credentials::Caller<'_>>,
    terms: Terms<'_>,
) -> Attempt<'g> {
    let up = &gw.upstreams[u];
    let Terms {
        tool_timeout,
        retry_safe,
        vets,
        mut at,
    } = terms;
    let r = match to {
        _ if to & AT != 0 => (to & !(AT | AUTHORIZED)) as usize,
        // One replica: a session pinned to another URL (the upstream had several) is gone.
        _ if up.replicas.len() < 2 => {
            if to != 0 && up.replicas.first().is_some_and(|x| x.id != to) {
                return (
                    Err(replica_gone(up, "is no longer configured")),
                    req,
                    false,
                    Admitted::NONE,
                );
            }
            0
        }
        pin => {
            // Boxed: the replica loop is only for upstreams with several.
            let across = exchange_across(w, gw, (u, pin), req, caller, terms);
            let (res, req, probe) = Box::pin(across).await;
            return (res, req, false, probe);
        }
    };
    let breaker = breaker_of(gw, u, r);
    // Held to the end of the exchange (or handed to the caller's vet with a 2xx): a half-open
    // probe's slot comes back when it drops.
    let admitted = match breaker.map(|b| b.admit(&up.name)) {
        Some(Err(ms)) => return (Err(circuit_open(up, ms)), req, true, Admitted::NONE),
        Some(Ok(a)) => a,
        None => Admitted::NONE,
    };
    // `error_ratio` on: every outcome is counted in this worker's window (one per replica).
    let ratio = breaker.filter(|b| b.config().error_ratio > 0.0);
    let window = up.slot_base + r;
    let failed = |why: &str| {
        if let Some(b) = breaker {
            b.failed(&up.name, why);
        }
        if let Some(b) = ratio {
            w.count_exchange(b, window, up, true);
        }
    };
    if let Some(cr) = up
        .credentials
        .as_ref()
        .filter(|_| to & (AT | AUTHORIZED) != AT | AUTHORIZED)
    {
        // Boxed: a token fetch (an HTTP client, maybe TLS) is rare and large; inlined, its
        // state would be moved and allocated with every request's future.
        let authorized = Box::pin(super::credentials::authorize(
            &w.tokens, &up.name, cr, caller, &mut req,
        ));
        if let Err(e) = authorized.await {
            return (Err(e), req, false, Admitted::NONE);
        }
        // Time passed while the token came.
        at = None;
    }
    let mut retried = false;
    // Further attempts taken from `retries.attempts` (failed connects, idempotent resends).
    let mut attempts = 0u32;
    loop {
        // The retry always takes a fresh connection: another pooled one may be just as stale.
        let pooled = if retried {
            None
        } else {
            let now = at.take().unwrap_or_else(Instant::now);
            w.pool
                .borrow_mut()
                .take(gw.pool_slot(u, r), now, |why| w.pool_discarded(gw, u, why))
        };
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            // Boxed for the same reason: a new connection (a TLS handshake) is the rare case.
            None => match Box::pin(open(w, up, r)).await {
                Ok(s) => {
                    let mut c = Conn::new(s, UPSTREAM_READ_BUFFER);
                    c.replica = r as u32;
                    c
                }
                Err(e) if attempts < up.retries.attempts => {
                    // Nothing reached the upstream: try again after the backoff.
                    attempts += 1;
                    tracing::debug!(upstream = %up.name, error = %e, attempt = attempts, "upstream connect failed; retrying (upstreams[].retries)");
                    if !up.retries.backoff.is_zero() {
                        Box::pin(monoio::time::sleep(up.retries.backoff)).await;
                    }
                    continue;
                }
                Err(e) => {
                    gw.health.upstream_failed(u);
                    let msg = format!("upstream \"{}\" is unavailable: {e}", up.name);
                    failed(&msg);
                    return (
                        Err(Error::new(Kind::UpstreamUnavailable, msg)),
                        req,
                        true,
                        Admitted::NONE,
                    );
                }
            },
        };
        let (res, back) = conn.write_all(req).await;
        req = back;
        let timeout = tool_timeout.unwrap_or(up.request_timeout);
        let deadline = w.shutdown.now() + timeout;
        let outcome = match res {
            Err(e) => Err(HeadRead::Closed {
                got_bytes: false,
                err: Some(e),
            }),
            Ok(()) => std::pin::pin!(read_response_head(&mut conn, deadline, &w.shutdown)).await,
        };
        match outcome {
            Ok(head) => {
                gw.health.upstream_ok(u);
                if head.status >= 500 {
                    failed("a 5xx response");
                } else if vets && (200..300).contains(&head.status) {
                    // Not yet a success: its body may be unusable (`vetted` counts it). A
                    // half-open probe keeps its slot until then.
                    return (Ok((conn, head)), req, false, admitted);
                } else if let Some(b) = breaker {
                    b.succeeded(&up.name);
                    if ratio.is_some() {
                        w.count_exchange(b, window, up, false);
                    }
                }
                if head.status == 401 && up.credentials.is_some() {
                    w.tokens.rejected(&up.name, caller.map(|c| c.principal));
                }
                return (Ok((conn, head)), req, false, Admitted::NONE);
            }
            // A pooled connection the upstream closed while idle: nothing was processed, retry
            // once on a new connection.
            Err(HeadRead::Closed {
                got_bytes: false, ..
            }) if reused && !retried => {
                retried = true;
                continue;
            }
            // A new connection closed before any response byte: the upstream may have run the
            // request, so only an idempotent one is sent again.
            Err(HeadRead::Closed {
                got_bytes: false, ..
            }) if attempts < up.retries.attempts && retry_safe.is_some_and(|safe| safe()) => {
                attempts += 1;
                retried = true;
                tracing::debug!(upstream = %up.name, attempt = attempts, "upstream closed before replying to an idempotent request; retrying (upstreams[].retries)");
                if !up.retries.backoff.is_zero() {
                    Box::pin(monoio::time::sleep(up.retries.backoff)).await;
                }
                continue;
            }
            Err(HeadRead::Closed { err, .. }) => {
                let why = err.map_or("connection closed before a response".to_string(), |e| {
                    e.to_string()
                });
                let msg = format!("upstream \"{}\" is unavailable: {why}", up.name);
                failed(&msg);
                return (
                    Err(Error::new(Kind::UpstreamUnavailable, msg)),
                    req,
                    false,
                    Admitted::NONE,
                );
            }
            Err(HeadRead::Timeout) => {
                gw.health.upstream_failed(u);
                let key = if tool_timeout.is_some() {
                    "upstreams[].tool_timeouts"
                } else {
                    "upstreams[].request_timeout"
                };
                let msg = format!(
                    "upstream \"{}\" did not answer within {} ms ({key})",
                    up.name,
                    timeout.as_millis()
                );
                failed(&msg);
                return (
                    Err(Error::new(Kind::UpstreamTimeout, msg)),
                    req,
                    false,
                    Admitted::NONE,
                );
            }
            Err(HeadRead::Invalid(why)) => {
                let msg = format!("upstream \"{}\" sent an invalid response: {why}", up.name);
                failed(&msg);
                return (
                    Err(Error::new(Kind::UpstreamProtocol, msg)),
                    req,
                    false,
                    Admitted::NONE,
                );
            }
        }
    }
}

/// The circuit breaker of replica `r` of upstream `u` (the upstream's own with one URL).
#[inline]
fn breaker_of(gw: &Gateway, u: usize, r: usize) -> Option<&super::breaker::Breaker> {
    gw.health.upstreams.get(u).map(|h| match h.replicas.get(r) {
        Some(rh) => &rh.breaker,
        None => &h.breaker,
    })
}

/// Tells the breaker of the replica `conn` is open to the outcome of a 2xx reply that an
/// exchange on `Terms::vets` left to the caller: a success, or a failure when `vet_reply` found
/// it unusable (`unusable`: why). Replies relayed as they arrive (event streams, chunked or
/// large bodies) were judged by their head and first bytes only, so they count as a success
/// here, as soon as they are vetted. `probe`: the exchange's half-open probe slot, given back
/// once the outcome is told (so no other probe goes out before it is known).
#[inline]
pub fn vetted(
    w: &WorkerState,
    gw: &Gateway,
    (u, conn): (usize, &UpstreamConn),
    unusable: Option<&str>,
    probe: Admitted<'_>,
) {
    let r = conn.replica as usize;
    let Some(b) = breaker_of(gw, u, r) else {
        return;
    };
    let up = &gw.upstreams[u];
    match unusable {
        None => b.succeeded(&up.name),
        Some(why) => b.failed(&up.name, why),
    }
    if b.config().error_ratio > 0.0 {
        w.count_exchange(b, up.slot_base + r, up, unusable.is_some());
    }
    drop(probe);
}

/// Replies up to this size are read whole and checked before any byte reaches the client.
pub const MAX_VETTED_REPLY: usize = 64 * 1024;

/// What scanning an upstream reply may ask of it: deeper than requests may be (results nest).
const REPLY_SCAN_LIMITS: crate::jsonrpc::ScanLimits = crate::jsonrpc::ScanLimits {
    max_depth: 120,
    max_batch_len: 10_000,
};

/// The verdict on an upstream reply, decided before anything is written to the client.
pub enum Vetted {
    /// Relay it as it arrives (its head is still at the start of the connection's buffer).
    /// `bare_result`: a small JSON reply read whole and scanned here was one response whose
    /// result has no `resultType`; the offset of that result's `{` in the body (what a client of
    /// 2026-07-28 gets stamped in, without scanning it again).
    /// `code`: what the audit record says of its JSON-RPC error, when it was read whole here.
    Relay {
        bare_result: Option<usize>,
        code: ReplyCode,
    },
    /// A non-2xx JSON-RPC reply, read whole: relay `head` (a copy of the head's bytes) + `body`.
    Whole { head: Vec<u8>, body: Vec<u8> },
    /// Nothing a client could parse: answer with a JSON-RPC error naming the upstream.
    /// `reusable`: the reply was read to its end and the connection can go back to the pool.
    Unusable {
        kind: Kind,
        why: String,
        reusable: bool,
    },
}

fn unusable(why: String, reusable: bool) -> Vetted {
    Vetted::Unusable {
        kind: Kind::UpstreamProtocol,
        why,
        reusable,
    }
}

fn content_type<'a>(head: &ResponseHead, buf: &'a [u8]) -> &'a [u8] {
    head.content_type.clone().map_or(&b""[..], |r| &buf[r])
}

/// The reply's content coding (`Content-Encoding`): several headers, or several codings, are
/// `Other`. Looked up off the hot path only (a probe set up, a body the vet could not read).
pub fn content_coding(head: &ResponseHead, buf: &[u8]) -> crate::jsonrpc::probe::Coding {
    use crate::jsonrpc::probe::Coding;
    let mut found = Coding::Identity;
    for h in &head.relay {
        let name = buf.get(h.name()).unwrap_or_default();
        if name.eq_ignore_ascii_case(b"content-encoding") {
            let value = buf.get(h.value()).unwrap_or_default();
            found = match (found, Coding::of(value)) {
                (Coding::Identity, c) => c,
                (_, Coding::Identity) => found,
                _ => Coding::Other,
            };
        }
    }
    found
}

/// A 2xx body the vet cannot read because it is compressed is relayed as the upstream
/// labelled it (the client decodes it; the audit's probe may), unchecked, like a streamed body.
fn compressed(head: &ResponseHead, buf: &[u8]) -> bool {
    content_coding(head, buf) != crate::jsonrpc::probe::Coding::Identity
}

fn describe(head: &ResponseHead, buf: &[u8]) -> String {
    let ct = content_type(head, buf);
    let ct = if ct.is_empty() {
        "no Content-Type".to_string()
    } else {
        String::from_utf8_lossy(&ct[..ct.len().min(64)]).into_owned()
    };
    format!("HTTP {} ({ct})", head.status)
}

/// What a scan of a reply body says about relaying it.
enum ReplyScan {
    /// Relayable; the offset of a result without `resultType` (one response), if any, and the
    /// error code of a response to the request (`ReplyCode::Read`: what the audit record says,
    /// with no probe over the relayed bytes).
    Ok(Option<usize>, ReplyCode),
    /// A JSON-RPC response to another id than the request's.
    OtherId(String),
    Bad(String),
}

/// Scans a whole reply body. Replies are held to JSON, not to the request scanner's refusals of
/// what parsers read differently (lone surrogates, numbers past 1e308, duplicate keys, depth):
/// the gateway decides nothing on a reply's contents, and clients parse those. Such a reply is
/// relayed without its id being checked.
fn scan_reply(body: &[u8], expect_id: Option<&[u8]>) -> ReplyScan {
    use crate::jsonrpc::ScanErrorKind;
    let mut m = crate::jsonrpc::Message::empty();
    match crate::jsonrpc::scan_into(body, &REPLY_SCAN_LIMITS, &mut m) {
        Ok(None) => {
            use crate::jsonrpc::MessageKind;
            match (expect_id, &m.id) {
                // `null`: the upstream could not read the id (JSON-RPC 2.0 §5).
                (Some(want), Some(got))
                    if got.text != b"null" && !crate::jsonrpc::same_id(want, got.text) =>
                {
                    return ReplyScan::OtherId(
                        String::from_utf8_lossy(&got.text[..got.text.len().min(64)]).into_owned(),
                    );
                }
                _ => {}
            }
            let code = match m.kind {
                _ if expect_id.is_none() => ReplyCode::Unread,
                MessageKind::Response => ReplyCode::Read(None),
                MessageKind::Error => ReplyCode::Read(
                    m.error_code
                        .and_then(|c| std::str::from_utf8(c.text).ok()?.parse().ok()),
                ),
                _ => ReplyCode::Unread,
            };
            let bare = (m.kind == MessageKind::Response && !m.result_type)
                .then_some(m.result_open)
                .flatten();
            ReplyScan::Ok(bare, code)
        }
        Ok(Some(_batch)) => ReplyScan::Ok(None, ReplyCode::Unread),
        Err(e) => match e.kind {
            ScanErrorKind::LoneSurrogate
            | ScanErrorKind::NumberOutOfRange
            | ScanErrorKind::DuplicateKey(_)
            | ScanErrorKind::TooDeep => ReplyScan::Ok(None, ReplyCode::Unread),
            _ => ReplyScan::Bad(e.to_string()),
        },
    }
}

/// Reads and drops a refused reply's body when it is small, so the connection can be reused
/// (an upstream answering 429 or 503 should not cost a new connection per request).
async fn drain(up: &mut UpstreamConn, head: &ResponseHead, timeout: Duration) -> bool {
    if !head.keep_alive || head.framing == Framing::UntilClose {
        return false;
    }
    up.consume(head.len);
    let mut sink = Vec::new();
    read_full_body(up, head, MAX_VETTED_REPLY, timeout, &mut sink)
        .await
        .is_ok()
}

/// Decides whether an upstream reply can reach the client as it is: a JSON reply must be a
/// JSON-RPC message (small ones are read whole and scanned in place, larger ones must at least
/// start like one), an event stream or a 2xx without a body passes, a 202 passes whatever it
/// carries (it acknowledges a notification or response), and a non-2xx reply passes only as a
/// well-formed JSON-RPC message (an ended session's 404, say). Everything else (an HTML error
/// page, a text 500, a 200 that is not JSON) becomes a JSON-RPC error the client can read.
///
/// `expect_id` is the request's id (a single request): a small JSON reply that answers another id
/// means the connection is out of step (a stray response from an earlier exchange), and is refused
/// rather than handed to this client.
pub async fn vet_reply(
    w: &WorkerState,
    up: &mut UpstreamConn,
    head: &ResponseHead,
    timeout: Duration,
    expect_id: Option<&[u8]>,
) -> Vetted {
    let deadline = w.shutdown.now() + timeout;
    let buf = up.buffered();
    let ct = content_type(head, buf);
    if (200..300).contains(&head.status) {
        if head.status == 202
            || head.framing == Framing::None
            || head.framing == Framing::Length(0)
            || head.is_sse(buf)
        {
            return Vetted::Relay {
                bare_result: None,
                code: ReplyCode::Unread,
            };
        }
        // No Content-Type at all is judged by the body.
        if !ct.is_empty() && !super::checks::is_json_content_type(ct) {
            let why = format!(
                "answered {}: not JSON or an event stream",
                describe(head, buf)
            );
            // Boxed (rare): inlined, its reads and timer would be in every call's future.
            let reusable = Box::pin(drain(up, head, timeout)).await;
            return unusable(why, reusable);
        }
        if let Framing::Length(n) = head.framing {
            if n as usize <= MAX_VETTED_REPLY {
                let need = head.len + n as usize;
                while up.buffered().len() < need {
                    let want = need - up.buffered().len();
                    let read = monoio::select! {
                        r = up.fill(want) => r,
                        _ = w.shutdown.deadline(deadline) => {
                            return Vetted::Unusable {
                                kind: Kind::UpstreamTimeout,
                                why: format!(
                                    "did not send its whole reply within {} ms (upstreams[].request_timeout, or the tool's tool_timeouts)",
                                    timeout.as_millis()
                                ),
                                reusable: false,
                            };
                        }
                    };
                    if !matches!(read, Ok(n) if n > 0) {
                        return unusable("closed the connection mid-reply".into(), false);
                    }
                }
                let body = &up.buffered()[head.len..need];
                return match scan_reply(body, expect_id) {
                    ReplyScan::Ok(bare_result, code) => Vetted::Relay { bare_result, code },
                    // Out of step: its next bytes cannot be trusted either.
                    ReplyScan::OtherId(id) => unusable(
                        format!("answered with the response to another request (id {id})"),
                        false,
                    ),
                    ReplyScan::Bad(_) if compressed(head, up.buffered()) => Vetted::Relay {
                        bare_result: None,
                        code: ReplyCode::Unread,
                    },
                    ReplyScan::Bad(e) => {
                        let why = format!(
                            "answered {} with a body that is not a JSON-RPC message: {e}",
                            describe(head, up.buffered())
                        );
                        up.consume(need);
                        unusable(why, head.keep_alive)
                    }
                };
            }
        }
        // A large or streamed JSON body is relayed as it arrives; one whose first bytes are
        // here must at least start as JSON (chunked bodies are not decoded for this).
        if head.framing == Framing::Chunked {
            return Vetted::Relay {
                bare_result: None,
                code: ReplyCode::Unread,
            };
        }
        let buf = up.buffered();
        let first = buf[head.len..].iter().find(|b| !b.is_ascii_whitespace());
        return match first {
            Some(b'{' | b'[') | None => Vetted::Relay {
                bare_result: None,
                code: ReplyCode::Unread,
            },
            Some(_) if compressed(head, buf) => Vetted::Relay {
                bare_result: None,
                code: ReplyCode::Unread,
            },
            Some(_) => unusable(
                format!(
                    "answered {} with a body that is not JSON",
                    describe(head, buf)
                ),
                false,
            ),
        };
    }
    // Not 2xx: relayed only as a well-formed JSON-RPC message, read whole.
    let buf = up.buffered();
    let what = describe(head, buf);
    if !super::checks::is_json_content_type(ct) {
        let reusable = Box::pin(drain(up, head, timeout)).await;
        return unusable(format!("answered {what}"), reusable);
    }
    let head_bytes = buf[..head.len].to_vec();
    up.consume(head.len);
    let mut body = Vec::new();
    let timeout = deadline.saturating_duration_since(w.shutdown.now());
    let read = Box::pin(read_full_body(
        up,
        head,
        MAX_VETTED_REPLY,
        timeout,
        &mut body,
    ))
    .await;
    if let Err(why) = read {
        return unusable(format!("answered {what}: {why}"), false);
    }
    match scan_reply(&body, expect_id) {
        ReplyScan::Ok(..) => Vetted::Whole {
            head: head_bytes,
            body,
        },
        ReplyScan::OtherId(id) => unusable(
            format!("answered {what} to another request (id {id})"),
            false,
        ),
        ReplyScan::Bad(_) => unusable(
            format!("answered {what}, not a JSON-RPC message"),
            head.keep_alive,
        ),
    }
}

/// Reads a whole response body into `into` (bounded by `max`). Used where the gateway must see
/// the complete reply (initialize), never for tool results.
pub async fn read_full_body(
    conn: &mut UpstreamConn,
    head: &ResponseHead,
    max: usize,
    timeout: Duration,
    into: &mut Vec<u8>,
) -> Result<(), &'static str> {
    let deadline = Instant::now() + timeout;
    let mut dec = ChunkedDecoder::new(MAX_UPSTREAM_HEAD);
    let mut left = match head.framing {
        Framing::None => return Ok(()),
        Framing::Length(n) if n as usize > max => return Err("response body too large"),
        Framing::Length(n) => n as usize,
        _ => usize::MAX,
    };
    loop {
        let buf = conn.buffered();
        let used = match head.framing {
            Framing::Length(_) => {
                let take = left.min(buf.len());
                into.extend_from_slice(&buf[..take]);
                left -= take;
                take
            }
            Framing::Chunked => dec
                .feed(buf, |d| into.extend_from_slice(d))
                .map_err(|_| "malformed chunked body")?,
            _ => {
                into.extend_from_slice(buf);
                buf.len()
            }
        };
        conn.consume(used);
        if into.len() > max {
            return Err("response body too large");
        }
        if left == 0 || dec.is_done() {
            return Ok(());
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(wait, conn.fill(left.min(1 << 20))).await {
            Ok(Ok(0)) if head.framing == Framing::UntilClose => return Ok(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Err("upstream closed the connection mid-body"),
            Ok(Ok(_)) => {}
            Err(_) => return Err("upstream body timed out"),
        }
    }
}

/// How the body goes to the client.
#[derive(Clone, Copy)]
pub struct RelayMode<'a> {
    /// The client speaks HTTP/1.0: no chunked encoding, close-delimited.
    pub http10: bool,
    /// Per-read timeout on the upstream; `None` for event streams, which may idle. Event streams
    /// also watch the client, so one that went away ends the relay at once.
    pub read_timeout: Option<Duration>,
    /// Ends the stream when the worker shuts down (GET streams: not an in-flight request).
    pub end_on: Option<&'a LocalShutdown>,
    /// When the client goes away mid-body, the upstream body is still read to its end (and
    /// dropped) within this long: the call is still running upstream, and what it holds (a
    /// concurrency slot, `limit::Held`) is let go only when it ends. `None`: stop at once.
    pub finish_within: Option<Duration>,
}

enum StreamEvent {
    UpstreamReadable,
    ClientGone,
    Shutdown,
}

/// Waits on an event stream without lending a buffer: the upstream's next bytes, the client
/// going away, or shutdown. Readiness polls cancel cleanly, unlike a read that owns a buffer.
async fn stream_wait(
    c: &mut Client,
    up: &mut UpstreamConn,
    end_on: Option<&LocalShutdown>,
    watch_client: &mut bool,
) -> StreamEvent {
    let shutdown = async {
        match end_on {
            Some(s) => {
                s.wait().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let upstream_readable = if !*watch_client {
            monoio::select! {
                _ = up.io.readable() => true,
                _ = &mut shutdown => return StreamEvent::Shutdown,
            }
        } else {
            monoio::select! {
                _ = up.io.readable() => true,
                _ = &mut shutdown => return StreamEvent::Shutdown,
                _ = c.conn.io.readable() => false,
            }
        };
        if upstream_readable {
            // A TLS upstream's readable socket may carry only a record with no data in it (a
            // session ticket, a key update): take such records in without blocking and wait on,
            // rather than start a read that would watch neither the client nor shutdown.
            if up.io.is_tls() && up.buffered().is_empty() && up.io.peer_state() == Idleness::Silent
            {
                continue;
            }
            return StreamEvent::UpstreamReadable;
        }
        // No read is in flight on the client: a TLS client's records are taken into rustls here
        // (its close_notify is a close, a pipelined request stays buffered for the next read).
        match c.conn.io.peer_state() {
            Idleness::Closed => return StreamEvent::ClientGone,
            // The client sent more (pipelining): it is still there; stop watching it.
            Idleness::Unsolicited => *watch_client = false,
            Idleness::Silent => {}
        }
    }
}

/// Why a relay stopped early. The client connection must be closed either way.
#[derive(Debug)]
pub enum RelayError {
    Client,
    Upstream(&'static str),
    /// A stream ended because the worker is shutting down.
    Shutdown,
}

/// Relays the body of `head` (its head already consumed from `up`), after whatever `c.out`
/// holds (the client's response head). Returns whether `up` can go back to the pool.
pub async fn relay_body(
    c: &mut Client,
    up: &mut UpstreamConn,
    head: &ResponseHead,
    mode: RelayMode<'_>,
    mut probe: Option<&mut crate::jsonrpc::probe::ReplyProbe>,
    mut watch: Option<&mut crate::mcp::relay::watch::Watch>,
) -> Result<bool, RelayError> {
    let mut watch_client = true;
    let mut dec = ChunkedDecoder::new(MAX_UPSTREAM_HEAD);
    let mut left = match head.framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    if head.framing == Framing::None || left == 0 {
        c.flush().await.map_err(|_| RelayError::Client)?;
        return Ok(head.keep_alive);
    }
    loop {
        let buf = up.buffered();
        // The body as the client reads it, to the probe (audit: the reply's JSON-RPC errors)
        // and the watch (the debug trail of server→client requests).
        let mut probed = |d: &[u8]| {
            if let Some(p) = probe.as_deref_mut() {
                p.feed(d);
            }
            if let Some(w) = watch.as_deref_mut() {
                w.feed(d);
            }
        };
        let used = match head.framing {
            Framing::Length(_) => {
                let take = (left.min(buf.len() as u64)) as usize;
                c.out.extend_from_slice(&buf[..take]);
                probed(&buf[..take]);
                left -= take as u64;
                take
            }
            Framing::Chunked if mode.http10 => dec
                .feed(buf, |d| {
                    c.out.extend_from_slice(d);
                    probed(d);
                })
                .map_err(|_| RelayError::Upstream("malformed chunked body"))?,
            Framing::Chunked => {
                let k = dec
                    .feed(buf, &mut probed)
                    .map_err(|_| RelayError::Upstream("malformed chunked body"))?;
                c.out.extend_from_slice(&buf[..k]);
                k
            }
            _ => {
                if mode.http10 {
                    c.out.extend_from_slice(buf);
                } else {
                    encode_chunk(&mut c.out, buf);
                }
                probed(buf);
                buf.len()
            }
        };
        up.consume(used);
        let finished = left == 0 || dec.is_done();
        if c.flush().await.is_err() {
            if finished {
                return Err(RelayError::Client);
            }
            return after_client_left(c, up, head, (&mut dec, left), mode).await;
        }
        if finished {
            return Ok(head.keep_alive);
        }
        let want = if left == u64::MAX {
            0
        } else {
            left.min(1 << 20) as usize
        };
        let read = match mode.read_timeout {
            // Boxed: a body that needs a second read is large or slow, and monoio's timer is
            // 640 bytes (128-aligned) that every call's future would carry.
            Some(t) => match Box::pin(monoio::time::timeout(t, up.fill(want))).await {
                Ok(r) => r,
                Err(_) => return Err(RelayError::Upstream("upstream body timed out")),
            },
            None => match stream_wait(c, &mut *up, mode.end_on, &mut watch_client).await {
                StreamEvent::UpstreamReadable => up.fill(want).await,
                StreamEvent::ClientGone => {
                    return after_client_left(c, up, head, (&mut dec, left), mode).await
                }
                StreamEvent::Shutdown => {
                    if !mode.http10 && head.framing != Framing::Length(left) {
                        c.out.extend_from_slice(LAST_CHUNK);
                        let _ = c.flush().await;
                    }
                    return Err(RelayError::Shutdown);
                }
            },
        };
        match read {
            Ok(0) if head.framing == Framing::UntilClose => {
                if !mode.http10 {
                    c.out.extend_from_slice(LAST_CHUNK);
                    c.flush().await.map_err(|_| RelayError::Client)?;
                }
                return Ok(false);
            }
            Ok(0) | Err(_) => {
                return Err(RelayError::Upstream(
                    "upstream closed the connection mid-body",
                ))
            }
            Ok(_) => {}
        }
    }
}

/// The client went away mid-body: the relay stops. With `finish_within`, the rest of the
/// upstream body is read first (and dropped) until it ends or that long has passed, so what the
/// call holds is let go when the upstream is done with it. Boxed: a rare path, kept out of every
/// request's future.
async fn after_client_left(
    c: &mut Client,
    up: &mut UpstreamConn,
    head: &ResponseHead,
    (dec, left): (&mut ChunkedDecoder, u64),
    mode: RelayMode<'_>,
) -> Result<bool, RelayError> {
    let Some(within) = mode.finish_within else {
        return Err(RelayError::Client);
    };
    c.out.clear();
    tracing::info!(
        within_ms = within.as_millis() as u64,
        "client left mid-reply: the upstream reply is read to its end, its call's limits held until then"
    );
    Box::pin(drain_body(up, head, dec, left, Instant::now() + within)).await;
    Err(RelayError::Client)
}

/// Reads and drops the rest of `head`'s body (`left` bytes of a length, or what `dec` has not
/// seen of a chunked one, or until close) until it ends, fails, or `until`.
async fn drain_body(
    up: &mut UpstreamConn,
    head: &ResponseHead,
    dec: &mut ChunkedDecoder,
    mut left: u64,
    until: Instant,
) {
    loop {
        let buf = up.buffered();
        let used = match head.framing {
            Framing::Length(_) => {
                let take = left.min(buf.len() as u64);
                left -= take;
                take as usize
            }
            Framing::Chunked => match dec.feed(buf, |_| {}) {
                Ok(k) => k,
                Err(_) => return,
            },
            _ => buf.len(),
        };
        up.consume(used);
        if left == 0 || dec.is_done() {
            return;
        }
        let want = if left == u64::MAX {
            0
        } else {
            left.min(1 << 20) as usize
        };
        let wait = until.saturating_duration_since(Instant::now());
        match monoio::time::timeout(wait, up.fill(want)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}
