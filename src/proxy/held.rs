//! What the gateway knows and holds per worker to translate between eras: which era each
//! upstream speaks (`upstreams[].era`, or learned by asking it `server/discover`), and, for
//! clients of the stateless revision reaching a session-era upstream, one upstream session the
//! worker holds itself per upstream.
//!
//! A held session is opened on first use (`initialize` declaring no client capabilities, then
//! `notifications/initialized`), shared by every stateless request of the worker to that
//! upstream, and dropped when the upstream answers 404 (its session ended: the request is sent
//! again on a new one) or when it is older than `HELD_MAX_AGE`. Only one request of a worker
//! opens it; the others wait for it. Since it declares no capabilities, a well-behaved upstream
//! sends no sampling, elicitation or roots requests on it: those cannot be translated into the
//! stateless revision's input-required results (see ARCHITECTURE.md).
//!
//! Keyed by the upstream's stable id, so a reload that keeps the upstream keeps what was learned.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use sonic_rs::{JsonContainerTrait, JsonValueTrait};

use crate::config::UpstreamEra;
use crate::error::{Error, Kind};
use crate::mcp::session::UpstreamSession;
use crate::mcp::ProtocolVersion;

use super::federate::exchange;
use super::state::{Gateway, WorkerState};

/// How long a learned era holds before the upstream is asked again.
const ERA_TTL: Duration = Duration::from_secs(300);
/// A held session older than this is replaced (upstreams expire idle sessions on their own).
const HELD_MAX_AGE: Duration = Duration::from_secs(1800);
/// How often a request waiting for another one's `initialize` looks again.
const WAIT_STEP: Duration = Duration::from_millis(2);

/// The era an upstream speaks, as far as the gateway translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    Session,
    Stateless,
}

/// A session the worker holds with a session-era upstream, and what its `initialize` said
/// (capabilities and instructions: what `server/discover` answers for it).
pub struct HeldSession {
    pub session: UpstreamSession,
    pub initialize: sonic_rs::Value,
}

enum Slot {
    Ready(Rc<HeldSession>, Instant),
    Opening,
}

/// Per worker: learned eras and held sessions, by upstream id.
#[derive(Default)]
pub struct Held {
    eras: RefCell<HashMap<u64, (Era, Instant)>>,
    sessions: RefCell<HashMap<u64, Slot>>,
    /// Held sessions with a request in flight (`turn`).
    busy: RefCell<std::collections::HashSet<u64>>,
}

/// A request's turn in a held session: while it lives no other request of the worker is in
/// that session (they wait in `turn`).
pub struct Turn<'a> {
    held: &'a Held,
    id: u64,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.held.busy.borrow_mut().remove(&self.id);
    }
}

/// Waits for the held session with upstream `u` to be free (within the upstream's request
/// timeout) and takes it: requests of different clients never meet in one upstream session
/// (their ids and progress tokens are the clients' own, and could be equal).
pub async fn turn<'a>(w: &'a WorkerState, gw: &Gateway, u: usize) -> Result<Turn<'a>, Error> {
    let id = gw.upstreams[u].id;
    let deadline = w.shutdown.now() + gw.upstreams[u].request_timeout;
    loop {
        if w.held.busy.borrow_mut().insert(id) {
            return Ok(Turn { held: &w.held, id });
        }
        if w.shutdown.now() >= deadline {
            return Err(Error::new(
                Kind::UpstreamTimeout,
                format!(
                    "upstream \"{}\": the gateway's session with it stayed busy past its \
                     request_timeout",
                    gw.upstreams[u].name
                ),
            ));
        }
        monoio::time::sleep(WAIT_STEP).await;
    }
}

impl Held {
    /// The era of upstream `u` if it is configured or was learned recently.
    pub fn era_now(&self, gw: &Gateway, u: usize, now: Instant) -> Option<Era> {
        match gw.config.upstreams[u].era {
            UpstreamEra::Session => Some(Era::Session),
            UpstreamEra::Stateless => Some(Era::Stateless),
            UpstreamEra::Auto => self
                .eras
                .borrow()
                .get(&gw.upstreams[u].id)
                .filter(|(_, at)| now.saturating_duration_since(*at) < ERA_TTL)
                .map(|(e, _)| *e),
        }
    }

    /// The worker's held session with upstream `u`, if one is open and young enough.
    pub fn session_now(&self, gw: &Gateway, u: usize, now: Instant) -> Option<Rc<HeldSession>> {
        match self.sessions.borrow().get(&gw.upstreams[u].id) {
            Some(Slot::Ready(s, at)) if now.saturating_duration_since(*at) < HELD_MAX_AGE => {
                Some(s.clone())
            }
            _ => None,
        }
    }

    /// Forgets the held session `s` (its upstream ended it), unless it was replaced already.
    pub fn forget(&self, gw: &Gateway, u: usize, s: &UpstreamSession) {
        let id = gw.upstreams[u].id;
        let mut m = self.sessions.borrow_mut();
        if matches!(m.get(&id), Some(Slot::Ready(cur, _)) if cur.session.session_id == s.session_id)
        {
            m.remove(&id);
        }
    }
}

/// The era of upstream `u`: configured, learned, or learned now by sending it a
/// `server/discover` of the stateless revision (an upstream that answers it with a result naming
/// 2026-07-28 speaks it; anything else, including no answer, means sessions).
pub async fn era(w: &WorkerState, gw: &Gateway, u: usize) -> Era {
    let now = w.shutdown.now();
    if let Some(e) = w.held.era_now(gw, u, now) {
        return e;
    }
    let v = crate::mcp::modern::STATELESS_VERSIONS[0].as_str();
    let body = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":\"tollgate-era\",\"method\":\"server/discover\",\"params\":{{\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"{v}\",\"io.modelcontextprotocol/clientCapabilities\":{{}}}}}}}}"
    );
    let mut headers = Vec::new();
    crate::http::response::header(&mut headers, b"mcp-protocol-version", v.as_bytes());
    crate::http::response::header(&mut headers, b"mcp-method", b"server/discover");
    let req = exchange::post_request(gw, u, None, &headers, body.as_bytes());
    let era = match exchange::whole(w, gw, u, req).await {
        Ok(reply) => match exchange::result_of(gw, u, &reply, b"\"tollgate-era\"") {
            Ok(r) if names_stateless(&r) => Era::Stateless,
            // A server error, or one that may pass (401, 408, 429): decide nothing for long
            // (the next request asks again).
            _ if reply.status >= 500 || matches!(reply.status, 401 | 408 | 429) => {
                return Era::Session
            }
            _ => Era::Session,
        },
        // Unreachable: likewise.
        Err(_) => return Era::Session,
    };
    tracing::info!(upstream = %gw.upstreams[u].name, era = ?era, "learned the upstream's protocol era");
    w.held
        .eras
        .borrow_mut()
        .insert(gw.upstreams[u].id, (era, w.shutdown.now()));
    era
}

fn names_stateless(result: &sonic_rs::Value) -> bool {
    result
        .get("supportedVersions")
        .and_then(|v| v.as_array())
        .is_some_and(|a| {
            a.iter().any(|v| {
                v.as_str()
                    .and_then(ProtocolVersion::parse)
                    .is_some_and(|p| !p.is_legacy())
            })
        })
}

/// The worker's held session with upstream `u`, opened now if there is none (one opening per
/// worker and upstream at a time; the others wait for it, within the upstream's request timeout).
pub async fn session(w: &WorkerState, gw: &Gateway, u: usize) -> Result<Rc<HeldSession>, Error> {
    let id = gw.upstreams[u].id;
    let deadline = w.shutdown.now() + gw.upstreams[u].request_timeout;
    loop {
        let now = w.shutdown.now();
        if let Some(s) = w.held.session_now(gw, u, now) {
            return Ok(s);
        }
        let opening = matches!(w.held.sessions.borrow().get(&id), Some(Slot::Opening));
        if !opening {
            break;
        }
        if now >= deadline {
            return Err(Error::new(
                Kind::UpstreamTimeout,
                format!(
                    "upstream \"{}\": the gateway's session with it did not open in time",
                    gw.upstreams[u].name
                ),
            ));
        }
        monoio::time::sleep(WAIT_STEP).await;
    }
    w.held.sessions.borrow_mut().insert(id, Slot::Opening);
    // If this request is dropped mid-open (its client went away), the slot must not stay
    // `Opening`, or every later request would wait for an open nobody is doing.
    struct Unclaim<'a>(&'a Held, u64, bool);
    impl Drop for Unclaim<'_> {
        fn drop(&mut self) {
            if !self.2 {
                let mut m = self.0.sessions.borrow_mut();
                if matches!(m.get(&self.1), Some(Slot::Opening)) {
                    m.remove(&self.1);
                }
            }
        }
    }
    let mut claim = Unclaim(&w.held, id, false);
    let opened = open(w, gw, u).await;
    claim.2 = true;
    let mut m = w.held.sessions.borrow_mut();
    match opened {
        Ok(s) => {
            let s = Rc::new(s);
            m.insert(id, Slot::Ready(s.clone(), w.shutdown.now()));
            Ok(s)
        }
        Err(e) => {
            m.remove(&id);
            Err(e)
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
    let reply = exchange::whole(w, gw, u, req)
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
    };
    let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let req = exchange::post_request(gw, u, Some(&session), &[], note);
    let reply = exchange::whole(w, gw, u, req)
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
    })
}
