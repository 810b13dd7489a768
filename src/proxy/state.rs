//! What the request path reads: `Gateway` (immutable, shared by all workers, built once from
//! Config) and `WorkerState` (owned by one worker: pool, metrics handles, revoked sessions).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::config::Config;
use crate::http::pool::Pool;
use crate::jsonrpc::ScanLimits;
use crate::mcp::session::SessionSealer;
use crate::observe::admin::Health;
use crate::observe::WorkerMetrics;

use super::reject::Rejects;
use super::shutdown::LocalShutdown;

/// A session ended by DELETE on some worker; every worker refuses it from then on.
#[derive(Clone, Copy, Debug)]
pub struct Revocation {
    pub id: [u8; 16],
    pub expires_at: u64,
}

/// An upstream as the data path needs it: addresses and pre-rendered request-head prefixes.
pub struct UpstreamRuntime {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    /// `POST <path> HTTP/1.1`, Host, configured headers, content type and accept.
    pub post_prefix: Vec<u8>,
    pub get_prefix: Vec<u8>,
    pub delete_prefix: Vec<u8>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    /// `https://`: the client config and the name sent as SNI and verified.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl UpstreamRuntime {
    pub fn new(
        cfg: &crate::config::Upstream,
        addrs: Vec<SocketAddr>,
        authority: &str,
        path: &str,
    ) -> Self {
        let prefix = |method: &str, extra: &str| {
            let mut v = Vec::with_capacity(256);
            v.extend_from_slice(
                format!("{method} {path} HTTP/1.1\r\nhost: {authority}\r\n{extra}").as_bytes(),
            );
            for (n, val) in &cfg.headers {
                v.extend_from_slice(format!("{n}: {val}\r\n").as_bytes());
            }
            v
        };
        UpstreamRuntime {
            name: cfg.name.clone(),
            addrs,
            post_prefix: prefix(
                "POST",
                "content-type: application/json\r\naccept: application/json, text/event-stream\r\n",
            ),
            get_prefix: prefix("GET", "accept: text/event-stream\r\n"),
            delete_prefix: prefix("DELETE", "content-length: 0\r\n"),
            connect_timeout: cfg.connect_timeout,
            request_timeout: cfg.request_timeout,
            idle_timeout: cfg.idle_timeout,
            max_idle: cfg.max_idle_per_worker,
            tls: cfg.tls.as_ref().map(|t| (t.client.clone(), t.name.clone())),
        }
    }
}

/// Shared, immutable gateway state.
pub struct Gateway {
    pub config: Config,
    pub sealer: SessionSealer,
    pub upstreams: Vec<UpstreamRuntime>,
    pub rejects: Rejects,
    pub scan_limits: ScanLimits,
    pub health: Arc<Health>,
    /// Set once when shutdown begins; workers poll it.
    pub shutdown: Arc<AtomicBool>,
    /// One sender per worker, for session revocations.
    pub revocations: Vec<Sender<Revocation>>,
}

impl Gateway {
    /// Index of the server whose path matches (exactly, or with one trailing `/`).
    pub fn route(&self, path: &[u8]) -> Option<usize> {
        let path = match path {
            [rest @ .., b'/'] if rest.len() > 1 => rest,
            p => p,
        };
        self.config
            .servers
            .iter()
            .position(|s| s.path.as_bytes() == path)
    }
}

/// Opened session ids each worker remembers (~300 bytes each).
const SESSION_CACHE: usize = 16 * 1024;

/// Capacity of a new pooled write buffer.
const POOLED_BUFFER: usize = 16 * 1024;
/// Buffers that grew past this are not kept.
const MAX_POOLED_BUFFER: usize = 256 * 1024;
/// At most this many idle buffers per worker.
const MAX_POOLED_BUFFERS: usize = 1024;

/// Revoked session ids live at most this long past their expiry in the local set.
const MAX_REVOKED: usize = 1 << 20;

/// State owned by one worker.
pub struct WorkerState {
    pub gw: Arc<Gateway>,
    pub index: usize,
    pub pool: RefCell<Pool>,
    pub metrics: WorkerMetrics,
    pub connections: Cell<usize>,
    pub shutdown: LocalShutdown,
    /// Write buffers lent to connections for the length of one request, so an idle
    /// connection holds none and a busy one never allocates.
    buffers: RefCell<Vec<Vec<u8>>>,
    /// Session ids this worker has opened (bounded).
    pub sessions: RefCell<super::session_cache::SessionCache>,
    revoked: RefCell<HashMap<[u8; 16], u64>>,
    revoke_rx: Receiver<Revocation>,
}

impl WorkerState {
    pub fn new(
        gw: Arc<Gateway>,
        index: usize,
        revoke_rx: Receiver<Revocation>,
        hists: Arc<crate::observe::hist::WorkerHistograms>,
    ) -> Self {
        let names: Vec<String> = gw.upstreams.iter().map(|u| u.name.clone()).collect();
        WorkerState {
            pool: RefCell::new(Pool::new(gw.upstreams.len())),
            metrics: WorkerMetrics::new(&names, hists),
            connections: Cell::new(0),
            shutdown: LocalShutdown::default(),
            buffers: RefCell::new(Vec::new()),
            sessions: RefCell::new(super::session_cache::SessionCache::new(SESSION_CACHE)),
            revoked: RefCell::new(HashMap::new()),
            revoke_rx,
            gw,
            index,
        }
    }

    /// A cleared buffer from the pool (or a new one).
    pub fn take_buffer(&self) -> Vec<u8> {
        self.buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(POOLED_BUFFER))
    }

    /// Returns a buffer to the pool; huge ones (a large body went through) are freed instead.
    pub fn give_buffer(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > MAX_POOLED_BUFFER {
            return;
        }
        let mut pool = self.buffers.borrow_mut();
        if pool.len() < MAX_POOLED_BUFFERS {
            buf.clear();
            pool.push(buf);
        }
    }

    /// Gives an upstream connection back to the pool after a complete response with `head`
    /// (which says whether the upstream keeps it open, and for how long).
    pub fn pool_put(
        &self,
        u: usize,
        conn: crate::http::pool::UpstreamConn,
        head: &crate::http::head::ResponseHead,
    ) {
        if !head.keep_alive {
            return;
        }
        let up = &self.gw.upstreams[u];
        let now = self.shutdown.now();
        if let Some(expires) =
            crate::http::pool::expiry(now, up.idle_timeout, head.keep_alive_timeout)
        {
            let put = self.pool.borrow_mut().put(u, conn, up.max_idle, expires);
            if let Err(why) = put {
                self.pool_discarded(u, why);
            }
        }
    }

    /// Counts (and, for a stray response, logs) a pooled connection dropped instead of reused.
    pub fn pool_discarded(&self, u: usize, why: crate::http::pool::Discard) {
        self.metrics.pool_discard(u, why);
        if why == crate::http::pool::Discard::Unsolicited {
            tracing::warn!(
                upstream = %self.gw.upstreams[u].name,
                "idle upstream connection had unsolicited bytes (a stray response?): dropped"
            );
        }
    }

    /// Ends a session on every worker of this process.
    pub fn revoke(&self, r: Revocation) {
        self.revoked.borrow_mut().insert(r.id, r.expires_at);
        for (i, tx) in self.gw.revocations.iter().enumerate() {
            if i != self.index {
                let _ = tx.try_send(r);
            }
        }
    }

    /// Whether a session id was ended by DELETE (on any worker of this process).
    pub fn is_revoked(&self, id: &[u8; 16], now_unix: u64) -> bool {
        let mut set = self.revoked.borrow_mut();
        for r in self.revoke_rx.try_iter() {
            set.insert(r.id, r.expires_at);
        }
        if set.len() > MAX_REVOKED {
            set.retain(|_, exp| *exp >= now_unix);
        }
        set.contains_key(id)
    }

    /// Drops revocations of sessions that have expired anyway (called from a timer).
    pub fn sweep(&self, now_unix: u64) {
        let mut set = self.revoked.borrow_mut();
        for r in self.revoke_rx.try_iter() {
            set.insert(r.id, r.expires_at);
        }
        set.retain(|_, exp| *exp >= now_unix);
    }
}
