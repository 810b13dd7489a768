//! What the gateway knows and holds per worker to translate between eras: which era each
//! upstream speaks (`upstreams[].era`, or learned by asking it `server/discover`: `era`), and, for
//! clients of the stateless revision reaching a session-era upstream, a pool of upstream
//! sessions the worker holds itself per upstream.
//!
//! A request takes a `Lease` on one held session for its whole exchange (relay included) and
//! gives it back on drop: one request at a time in a session, since the ids and progress tokens
//! in it are the clients' own and two clients' could be equal. An idle session is taken; else a
//! new one is opened (`initialize` declaring no client capabilities, then
//! `notifications/initialized`; one request opens each) while the worker holds fewer than
//! `limits.held_sessions_per_upstream`; else the request waits for one to come free, within the
//! upstream's `request_timeout`, then is refused naming that limit. A session is dropped when
//! the upstream answers 404 (it ended it: the caller opens another and sends the request again)
//! or once it is older than `HELD_MAX_AGE`. Since it declares no capabilities, a well-behaved
//! upstream sends no sampling, elicitation or roots requests in it: those cannot be translated
//! into the stateless revision (see ARCHITECTURE.md; `stateless::relay_held_stream` answers one
//! that comes anyway).
//!
//! Keyed by the upstream's stable id, so a reload that keeps the upstream keeps what was learned.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use sonic_rs::JsonValueTrait;

use crate::error::{Error, Kind};
use crate::mcp::session::UpstreamSession;
use crate::mcp::ProtocolVersion;
use crate::observe::names;

use super::federate::exchange;
use super::state::{Gateway, WorkerState};

mod era;

pub use era::{era, Era};

/// A held session older than this is replaced (upstreams expire idle sessions on their own).
const HELD_MAX_AGE: Duration = Duration::from_secs(1800);

/// A session the worker holds with a session-era upstream, and what its `initialize` said
/// (capabilities and instructions: what `server/discover` answers for it).
pub struct HeldSession {
    pub session: UpstreamSession,
    pub initialize: sonic_rs::Value,
    /// A request was sent in it and its reply not read to the end (`begin`/`complete`). A lease
    /// dropped then (the client went away, a timeout) does not give the session back: the
    /// upstream may still be running that request, and another client's request with the same
    /// id would meet it there; the session is left out of the pool instead.
    in_flight: std::cell::Cell<bool>,
}

impl HeldSession {
    /// A request is about to be sent in this session.
    pub fn begin(&self) {
        self.in_flight.set(true);
    }
    /// The reply to it has been read to its end.
    pub fn complete(&self) {
        self.in_flight.set(false);
    }
}

/// One place in an upstream's pool.
struct Slot {
    /// Names the slot while its session is being opened (not known yet).
    key: u64,
    state: SlotState,
}

enum SlotState {
    /// One request is opening its session.
    Opening,
    /// `busy`: a request holds it (a `Lease`).
    Ready {
        session: Rc<HeldSession>,
        opened: Instant,
        busy: bool,
    },
}

/// The held sessions of one worker with one upstream: at most
/// `limits.held_sessions_per_upstream` slots, and the requests waiting for one.
type Pool = Rc<RefCell<PoolState>>;

#[derive(Default)]
struct PoolState {
    slots: Vec<Slot>,
    /// Requests waiting for a session, first come first served: a ticket, and the waker of the
    /// request once it waits. Only the first may take a session that comes free (or open one),
    /// so a steady stream of new requests cannot starve one that waits.
    queue: VecDeque<(u64, Option<Waker>)>,
}

impl PoolState {
    /// Something came free (a session, or room for one): the first waiting request looks.
    fn wake_first(&self) {
        if let Some((_, Some(w))) = self.queue.front() {
            w.wake_by_ref();
        }
    }
}

/// A request's place in a pool's queue; leaving it (served, refused, or dropped with its
/// client) lets the next one look.
struct Ticket {
    pool: Pool,
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut p = self.pool.borrow_mut();
        if let Some(i) = p.queue.iter().position(|(t, _)| *t == self.id) {
            p.queue.remove(i);
            if i == 0 {
                p.wake_first();
            }
        }
    }
}

/// Waits until the request holding ticket `id` is woken (`PoolState::wake_first`).
struct Woken<'a> {
    pool: &'a Pool,
    id: u64,
    waiting: bool,
}

impl std::future::Future for Woken<'_> {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.waiting {
            return Poll::Ready(());
        }
        self.waiting = true;
        let mut p = self.pool.borrow_mut();
        if let Some((_, w)) = p.queue.iter_mut().find(|(t, _)| *t == self.id) {
            *w = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Per worker: learned eras and held sessions, by upstream id.
#[derive(Default)]
pub struct Held {
    eras: RefCell<HashMap<u64, (Era, Instant)>>,
    /// Upstreams this worker is sending its era probe to now (one at a time per upstream).
    probing: RefCell<std::collections::HashSet<u64>>,
    pools: RefCell<HashMap<u64, Pool>>,
    next_key: Cell<u64>,
}

/// A request's use of one held session: while it lives no other request of the worker is in
/// that session (requests of different clients never meet in one upstream session: their ids
/// and progress tokens are the clients' own, and could be equal). Returned to the pool on drop.
pub struct Lease {
    pool: Pool,
    pub held: Rc<HeldSession>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // The slot may be gone (the session was forgotten): nothing to return then.
        let mut p = self.pool.borrow_mut();
        if self.held.in_flight.get() {
            // Its last request may still run upstream: not given to another request.
            let held = &self.held;
            p.slots.retain(|slot| {
                !matches!(&slot.state, SlotState::Ready { session, .. } if Rc::ptr_eq(session, held))
            });
            metrics::counter!(crate::observe::names::HELD_SESSIONS_ABANDONED_TOTAL).increment(1);
            p.wake_first();
            return;
        }
        for slot in p.slots.iter_mut() {
            if let SlotState::Ready { session, busy, .. } = &mut slot.state {
                if Rc::ptr_eq(session, &self.held) {
                    *busy = false;
                }
            }
        }
        p.wake_first();
    }
}

impl std::ops::Deref for Lease {
    type Target = HeldSession;
    fn deref(&self) -> &HeldSession {
        &self.held
    }
}

/// Takes an idle session of `pool` that is young enough; drops the idle ones that are not.
fn take_idle(pool: &mut Vec<Slot>, now: Instant) -> Option<Rc<HeldSession>> {
    pool.retain(|slot| match &slot.state {
        SlotState::Ready { opened, busy, .. } => {
            *busy || now.saturating_duration_since(*opened) < HELD_MAX_AGE
        }
        SlotState::Opening => true,
    });
    pool.iter_mut().find_map(|slot| match &mut slot.state {
        SlotState::Ready {
            session,
            busy: busy @ false,
            ..
        } => {
            *busy = true;
            Some(session.clone())
        }
        _ => None,
    })
}

impl Held {
    fn pool(&self, id: u64) -> Pool {
        self.pools.borrow_mut().entry(id).or_default().clone()
    }

    /// An idle held session with upstream `u`, young enough, taken now (no await); `None`:
    /// `lease` waits for one or opens one.
    pub fn try_lease(&self, gw: &Gateway, u: usize, now: Instant) -> Option<Lease> {
        let pool = self.pools.borrow().get(&gw.upstreams[u].id)?.clone();
        let held = {
            let mut p = pool.borrow_mut();
            if !p.queue.is_empty() {
                // Others wait: not ahead of them.
                return None;
            }
            take_idle(&mut p.slots, now)?
        };
        Some(Lease { pool, held })
    }

    /// Any open held session with upstream `u`, busy or not.
    fn any_now(&self, gw: &Gateway, u: usize, now: Instant) -> Option<Rc<HeldSession>> {
        let pools = self.pools.borrow();
        let pool = pools.get(&gw.upstreams[u].id)?.borrow();
        pool.slots.iter().find_map(|slot| match &slot.state {
            SlotState::Ready {
                session, opened, ..
            } if now.saturating_duration_since(*opened) < HELD_MAX_AGE => Some(session.clone()),
            _ => None,
        })
    }

    /// Forgets the held session `s` (its upstream ended it): its slot is free for a new one.
    pub fn forget(&self, gw: &Gateway, u: usize, s: &HeldSession) {
        // By identity: an upstream that issues no session id gives every held session the
        // same (none), and only this one ended.
        let Some(pool) = self.pools.borrow().get(&gw.upstreams[u].id).cloned() else {
            return;
        };
        let mut p = pool.borrow_mut();
        p.slots.retain(|slot| match &slot.state {
            SlotState::Ready { session, .. } => !std::ptr::eq(Rc::as_ptr(session), s),
            SlotState::Opening => true,
        });
        p.wake_first();
    }

    /// `forget`, by the upstream session (none if it is not a held session).
    pub fn forget_session(&self, gw: &Gateway, u: usize, s: &UpstreamSession) {
        let Some(pool) = self.pools.borrow().get(&gw.upstreams[u].id).cloned() else {
            return;
        };
        let mut p = pool.borrow_mut();
        p.slots.retain(|slot| match &slot.state {
            SlotState::Ready { session, .. } => session.session.session_id != s.session_id,
            SlotState::Opening => true,
        });
        p.wake_first();
    }
}

/// A held session with upstream `u` for one request: an idle one; else one opened now if the
/// worker holds fewer than `limits.held_sessions_per_upstream` (each opening has its own slot,
/// opened by one request); else the first to come free, waited for within the upstream's
/// request timeout. Past it the request is refused naming the limit (logged here, counted by
/// the record phase as a limit).
pub async fn lease(w: &WorkerState, gw: &Gateway, u: usize) -> Result<Lease, Error> {
    let up = &gw.upstreams[u];
    let cap = gw.config.limits.held_sessions_per_upstream;
    let pool = w.held.pool(up.id);
    // The precise clock: the coarse one may lag the timer that wakes a request at the deadline.
    let deadline = Instant::now() + up.request_timeout;
    let mut ticket: Option<Ticket> = None;
    let key = loop {
        let now = Instant::now();
        {
            let mut p = pool.borrow_mut();
            let first = match &ticket {
                None => p.queue.is_empty(),
                Some(t) => p.queue.front().is_some_and(|(id, _)| *id == t.id),
            };
            if first {
                if let Some(held) = take_idle(&mut p.slots, now) {
                    drop(p);
                    // Leaving the queue lets the next request look (another may be idle).
                    drop(ticket);
                    return Ok(Lease { pool, held });
                }
                if p.slots.len() < cap {
                    let key = w.held.next_key.get();
                    w.held.next_key.set(key + 1);
                    p.slots.push(Slot {
                        key,
                        state: SlotState::Opening,
                    });
                    drop(p);
                    drop(ticket);
                    break key;
                }
            }
            if ticket.is_none() {
                let id = w.held.next_key.get();
                w.held.next_key.set(id + 1);
                p.queue.push_back((id, None));
                ticket = Some(Ticket {
                    pool: pool.clone(),
                    id,
                });
                metrics::counter!(names::HELD_SESSION_WAITS_TOTAL, "upstream" => up.name.clone())
                    .increment(1);
            }
        }
        if now >= deadline {
            let opening = pool
                .borrow()
                .slots
                .iter()
                .all(|s| matches!(s.state, SlotState::Opening));
            if opening {
                return Err(Error::new(
                    Kind::UpstreamTimeout,
                    format!(
                        "upstream \"{}\": the gateway's session with it did not open in time",
                        up.name
                    ),
                ));
            }
            tracing::warn!(upstream = %up.name, worker = w.index, limit = cap, "held sessions all busy past the upstream's request_timeout: request refused");
            return Err(Error::new(
                Kind::HeldSessions,
                format!(
                    "upstream \"{}\": every session the gateway holds with it stayed busy past \
                     its request_timeout (limits.held_sessions_per_upstream = {cap})",
                    up.name
                ),
            ));
        }
        let id = ticket.as_ref().map_or(0, |t| t.id);
        let woken = Woken {
            pool: &pool,
            id,
            waiting: false,
        };
        let _ = monoio::time::timeout(deadline.saturating_duration_since(now), woken).await;
    };
    // If this request is dropped mid-open (its client went away), its slot must not stay
    // `Opening`: the pool would count a session nobody is opening.
    struct Unclaim<'a>(&'a Pool, u64, bool);
    impl Drop for Unclaim<'_> {
        fn drop(&mut self) {
            if !self.2 {
                let mut p = self.0.borrow_mut();
                p.slots.retain(|s| s.key != self.1);
                p.wake_first();
            }
        }
    }
    let mut claim = Unclaim(&pool, key, false);
    let opened = open(w, gw, u).await;
    claim.2 = true;
    drop(claim);
    let mut p = pool.borrow_mut();
    match opened {
        Ok(s) => {
            let held = Rc::new(s);
            if let Some(slot) = p.slots.iter_mut().find(|s| s.key == key) {
                slot.state = SlotState::Ready {
                    session: held.clone(),
                    opened: w.shutdown.now(),
                    busy: true,
                };
            }
            drop(p);
            Ok(Lease { pool, held })
        }
        Err(e) => {
            p.slots.retain(|s| s.key != key);
            p.wake_first();
            Err(e)
        }
    }
}

/// Any open held session with upstream `u`, busy or not, else one opened now: what its
/// `initialize` said (`server/discover`), and the session a federated stateless request's
/// per-request session names for the upstream (its lists; a routed request takes a lease).
pub async fn any_session(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
) -> Result<Rc<HeldSession>, Error> {
    if let Some(s) = w.held.any_now(gw, u, w.shutdown.now()) {
        return Ok(s);
    }
    let lease = lease(w, gw, u).await?;
    Ok(lease.held.clone())
}

/// Answers, in held session `held`, a server→client request (`id`: its JSON text) its upstream
/// sent in a reply stream to a stateless client: that client cannot be asked (the revision has
/// no requests on a response stream, and the held session is shared). `ping` gets its empty
/// result; anything else (sampling, elicitation, roots: the session declared none of them)
/// the "method not found" error a session-era client without that capability answers, which
/// the SDKs' servers take as the feature being absent. Logged and counted.
pub async fn refuse_server_request(
    w: &WorkerState,
    gw: &Gateway,
    u: usize,
    held: &HeldSession,
    id: &[u8],
    method: &str,
) {
    let up = &gw.upstreams[u];
    let label = match method {
        "ping" => "ping",
        "sampling/createMessage" => "sampling",
        "elicitation/create" => "elicitation",
        "roots/list" => "roots",
        _ => "other",
    };
    metrics::counter!(names::HELD_SERVER_REQUESTS_TOTAL, "method" => label).increment(1);
    if id.is_empty() {
        return;
    }
    let mut body = Vec::with_capacity(160 + id.len());
    body.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    body.extend_from_slice(id);
    if label == "ping" {
        body.extend_from_slice(b",\"result\":{}}");
    } else {
        tracing::warn!(upstream = %up.name, method = %method, "server-to-client request in a held session: not relayed to the stateless client, refused upstream");
        body.extend_from_slice(
            b",\"error\":{\"code\":-32601,\"message\":\"Method not found: the client is reached \
              through a gateway session that declared no client capabilities\"}}",
        );
    }
    let req = exchange::post_request(gw, u, Some(&held.session), &[], &body);
    match exchange::whole(w, gw, (u, held.session.replica), req, None).await {
        Ok(r) if (200..300).contains(&r.status) => {}
        Ok(r) => {
            tracing::warn!(upstream = %up.name, status = r.status, "held session: the answer to a server-to-client request was not accepted")
        }
        Err(e) => {
            tracing::warn!(upstream = %up.name, error = %e.reason, "held session: the answer to a server-to-client request was not delivered")
        }
    }
}

/// `initialize` (no client capabilities) and `notifications/initialized`.
async fn open(w: &WorkerState, gw: &Gateway, u: usize) -> Result<HeldSession, Error> {
    let up = &gw.upstreams[u];
    let fail = |why: String| {
        Error::new(
            Kind::UpstreamUnavailable,
            format!(
                "upstream \"{}\": the gateway could not open its session: {why}",
                up.name
            ),
        )
    };
    let body = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":\"tollgate-held\",\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"{}\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"tollgate\",\"version\":\"{}\"}}}}}}",
        ProtocolVersion::LATEST_LEGACY.as_str(),
        env!("CARGO_PKG_VERSION")
    );
    let req = exchange::post_request(gw, u, None, &[], body.as_bytes());
    let reply = exchange::whole(w, gw, (u, 0), req, None)
        .await
        .map_err(|e| fail(e.reason))?;
    let result = exchange::result_of(gw, u, &reply, b"\"tollgate-held\"").map_err(fail)?;
    let version = result
        .get("protocolVersion")
        .and_then(|v| v.as_str())
        .and_then(ProtocolVersion::parse)
        .filter(|v| v.is_legacy())
        .ok_or_else(|| {
            fail("its initialize result names no session-era protocol version".into())
        })?;
    let session = UpstreamSession {
        upstream: up.id,
        session_id: reply
            .session_id
            .filter(|s| UpstreamSession::is_valid_session_id(s.as_bytes())),
        protocol_version: version,
        // A held session stays on the replica that opened it.
        replica: reply.replica,
    };
    let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let req = exchange::post_request(gw, u, Some(&session), &[], note);
    let reply = exchange::whole(w, gw, (u, session.replica), req, None)
        .await
        .map_err(|e| fail(e.reason))?;
    if !(200..300).contains(&reply.status) {
        return Err(fail(format!(
            "it answered notifications/initialized with HTTP {}",
            reply.status
        )));
    }
    tracing::info!(upstream = %up.name, worker = w.index, version = version.as_str(), "opened a held upstream session");
    Ok(HeldSession {
        session,
        initialize: result,
        in_flight: std::cell::Cell::new(false),
    })
}
