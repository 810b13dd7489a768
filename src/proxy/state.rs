//! What the request path reads: `Gateway` (immutable, shared by all workers, built once from
//! Config, see `build`) and `WorkerState` (owned by one worker: pool, metrics handles, revoked
//! sessions, and the task that applies its control messages).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::http::pool::Pool;
use crate::jsonrpc::ScanLimits;
use crate::mcp::session::SessionSealer;
use crate::observe::admin::Health;
use crate::observe::WorkerMetrics;

use super::control::{Broadcast, Bus, Control, WorkerInbox};
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
    /// Stable, name-derived id (`mcp::session::upstream_id`): what session tokens carry.
    pub id: u64,
    /// Changes whenever what a pooled connection is bound to changes (name, addresses, request
    /// head prefixes): a reload keeps an upstream's idle connections only while it is equal.
    pub pool_key: u64,
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
    /// `transport: sse`: the 2024-11-05 HTTP+SSE transport (`proxy::legacy`).
    pub legacy: bool,
    /// `credentials`: the gateway's own token for it (`proxy::credentials`).
    pub credentials: Option<Arc<crate::config::credentials::Credentials>>,
    /// `tool_timeouts`: (glob over its own tool names, timeout), first match wins.
    pub tool_timeouts: Vec<(String, Duration)>,
    /// `retries`: further connect attempts after a failed connect.
    pub retries: crate::config::Retries,
    /// `url` or `replicas`: at least one; requests are rendered for the first
    /// (`post_prefix`…), and `replicas::retarget` sends them to another (`proxy::replicas`).
    pub replicas: Vec<super::replicas::Replica>,
    /// Where its replicas' pool stacks begin in a worker's pool (one stack per replica).
    pub slot_base: usize,
}

impl UpstreamRuntime {
    /// The timeout of a `tools/call` of `tool` (the upstream's own name): the first
    /// `tool_timeouts` glob it matches; `None`: `request_timeout` applies.
    pub fn tool_timeout(&self, tool: &str) -> Option<Duration> {
        self.tool_timeouts
            .iter()
            .find(|(glob, _)| crate::mcp::names::glob_match(glob, tool))
            .map(|(_, d)| *d)
    }
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
        let post_prefix = prefix(
            "POST",
            "content-type: application/json\r\naccept: application/json, text/event-stream\r\n",
        );
        let pool_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&cfg.name, &addrs, &post_prefix).hash(&mut h);
            h.finish()
        };
        UpstreamRuntime {
            id: crate::mcp::session::upstream_id(&cfg.name),
            pool_key,
            name: cfg.name.clone(),
            addrs,
            post_prefix,
            get_prefix: prefix("GET", "accept: text/event-stream\r\n"),
            delete_prefix: prefix("DELETE", "content-length: 0\r\n"),
            connect_timeout: cfg.connect_timeout,
            request_timeout: cfg.request_timeout,
            idle_timeout: cfg.idle_timeout,
            max_idle: cfg.max_idle_per_worker,
            tls: cfg.tls.as_ref().map(|t| (t.client.clone(), t.name.clone())),
            legacy: cfg.transport == crate::config::Transport::Sse,
            credentials: cfg.credentials.as_deref().cloned().map(Arc::new),
            tool_timeouts: cfg.tool_timeouts.clone(),
            retries: cfg.retries,
            replicas: Vec::new(),
            slot_base: 0,
        }
    }
}

/// Shared, immutable gateway state.
pub struct Gateway {
    pub config: Config,
    /// The background fetcher of this generation's issuers' keys (none without `jwks_url` or
    /// `discovery`); stops when the generation is dropped.
    pub keys: Option<super::keys::KeyRefresh>,
    /// The OTLP span exporter of this generation (`tracing.otlp`); its thread flushes and ends
    /// when the generation is dropped.
    pub spans: Option<crate::observe::otlp::Exporter>,
    /// The active health check of this generation's upstream replicas (none without replicas);
    /// stops when the generation is dropped.
    pub checker: Option<super::replicas::Checker>,
    pub sealer: SessionSealer,
    pub upstreams: Vec<UpstreamRuntime>,
    pub rejects: Rejects,
    pub scan_limits: ScanLimits,
    pub health: Arc<Health>,
    /// Set once when shutdown begins; workers poll it.
    pub shutdown: Arc<AtomicBool>,
    /// The control channel to every worker (session revocations, config swaps); shared by every
    /// generation of the gateway.
    pub control: Arc<Bus>,
    /// Where the built-in demo upstream runs, once started (a reload reuses it).
    pub demo: Option<SocketAddr>,
    /// Stable id of each server (`mcp::session::server_id` of its path), by config position.
    pub server_ids: Vec<u64>,
    /// Upstreams earlier configs had and this one does not (id, name): to name them to clients
    /// whose sessions they held.
    pub retired: Vec<(u64, String)>,
    /// Distinct for every gateway built in this process (caches keyed by config generation use
    /// it; an address could be reused once a generation is freed).
    pub generation: u64,
    /// `Config::names_tools`: some tool gets a metric label of its own (`observe::ToolCall`).
    pub names_tools: bool,
    /// Seals and opens the `nextCursor`s of aggregated lists (federated endpoints).
    pub cursors: crate::mcp::cursor::CursorSealer,
    /// Wraps the ids of server→client requests relayed on federated endpoints.
    pub idmap: crate::mcp::idmap::IdMapper,
    /// Wraps upstream task ids (federated endpoints): `tgt~…`, bound to session and upstream.
    pub taskids: crate::mcp::idmap::IdMapper,
    /// Seals and opens the ids of legacy HTTP+SSE streams (`super::legacy_sse`).
    pub legacy_ids: crate::mcp::legacy_id::StreamIds,
    /// The cross-core exchange of the traffic limits (`super::limit`); one per process, shared
    /// by every generation, so a reload keeps the counters of unchanged rules.
    pub traffic: Arc<super::limit::Exchange>,
    /// The audit pipeline (`observe::audit::Hub`): one per process, shared by every generation
    /// (a reload swaps its sinks), so no record is lost across reloads.
    pub audit: Arc<crate::observe::audit::Hub>,
    /// Server, upstream and rule names as audit records write them (escaped once).
    pub audit_names: super::audit_record::Names,
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

    /// The server whose legacy HTTP+SSE path this is (`servers[].legacy_sse`): looked up only
    /// when `route` found no server, so the Streamable HTTP path pays nothing for it.
    pub fn route_legacy(&self, path: &[u8]) -> Option<(usize, super::legacy_sse::Route)> {
        self.config.servers.iter().enumerate().find_map(|(i, s)| {
            let l = s.legacy.as_ref()?;
            if l.sse.as_bytes() == path {
                Some((i, super::legacy_sse::Route::Sse))
            } else if l.messages.as_bytes() == path {
                Some((i, super::legacy_sse::Route::Messages))
            } else {
                None
            }
        })
    }

    /// Stable ids of the servers of `config`, by position (what `server_ids` holds).
    pub fn server_ids_of(config: &Config) -> Vec<u64> {
        config
            .servers
            .iter()
            .map(|s| crate::mcp::session::server_id(&s.path))
            .collect()
    }

    /// The name of the upstream with stable id `id`: a configured one, one an earlier config had
    /// (a reload removed it), or the id in hex.
    pub fn upstream_name(&self, id: u64) -> String {
        self.upstreams
            .iter()
            .find(|u| u.id == id)
            .map(|u| u.name.as_str())
            .or_else(|| {
                self.retired
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map(|(_, n)| n.as_str())
            })
            .map_or_else(|| format!("{id:016x}"), |n| format!("\"{n}\""))
    }

    /// Where the idle connections to replica `r` of upstream `u` live in a worker's pool.
    pub fn pool_slot(&self, u: usize, r: usize) -> crate::http::pool::Slot {
        let up = &self.upstreams[u];
        crate::http::pool::Slot {
            index: up.slot_base + r,
            key: up.replicas.get(r).map_or(up.pool_key, |x| x.pool_key),
        }
    }

    /// The upstream whose replica's pool stack is at `index` (`pool_slot`).
    pub fn slot_upstream(&self, index: usize) -> usize {
        self.upstreams
            .iter()
            .rposition(|up| up.slot_base <= index)
            .unwrap_or(0)
    }

    fn upstream_labels(&self) -> Vec<(u64, &str)> {
        self.upstreams
            .iter()
            .map(|u| (u.id, u.name.as_str()))
            .collect()
    }

    fn pool_keys(&self) -> Vec<u64> {
        self.upstreams
            .iter()
            .flat_map(|u| u.replicas.iter().map(|r| r.pool_key))
            .collect()
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

/// The config a worker runs, as installed: a request takes the current one when it begins and
/// keeps it to its end, so a reload never changes a request (or a stream) in flight.
pub struct Generation {
    pub gw: Arc<Gateway>,
    /// This worker's authentication for this config (its keys, its verified-token cache).
    pub authn: crate::policy::authn::Authn,
    /// This worker's introspection calls for this config (single flight, discovered endpoints).
    pub introspect: super::introspect::Introspector,
}

impl Generation {
    /// The worker's generation of `gw`, with the issuers' keys fetched so far (`fetched`).
    pub fn new<'a>(
        gw: Arc<Gateway>,
        fetched: impl IntoIterator<Item = &'a Arc<super::control::FetchedKeys>>,
    ) -> Self {
        let authn = crate::policy::authn::Authn::new(&gw.config);
        let g = Generation {
            gw,
            authn,
            introspect: Default::default(),
        };
        for k in fetched {
            g.install_fetched(k);
        }
        g
    }

    /// Installs keys the refresher fetched for the issuer of that name and URL, if this
    /// generation has it and takes its keys from the same place (its `jwks_url`, or discovery):
    /// a reload that changed where an issuer's keys come from never gets the old ones. Keys the
    /// config names itself (`keys`, `secret`) stay beside the fetched ones.
    pub fn install_fetched(&self, k: &super::control::FetchedKeys) {
        let issuers = &self.gw.config.auth.issuers;
        let Some(i) = issuers.iter().position(|i| {
            i.name == k.name
                && i.issuer == k.issuer
                && i.jwks_url == k.jwks_url
                && (i.jwks_url.is_some() || i.discovery)
        }) else {
            return;
        };
        let mut keys = issuers[i].keys.clone();
        keys.extend(k.keys.iter().cloned());
        let set = crate::policy::authn::KeySet::new(&issuers[i].algorithms, &keys);
        self.authn.install_keys(i, Rc::new(set));
    }
}

/// State owned by one worker.
pub struct WorkerState {
    generation: RefCell<Rc<Generation>>,
    /// A reload's gateway between its prepare and commit messages.
    prepared: RefCell<Option<Arc<Gateway>>>,
    pub index: usize,
    pub pool: RefCell<Pool>,
    pub metrics: WorkerMetrics,
    /// This worker's access log buffer (written by the record phase, flushed on the tick).
    pub access: crate::observe::access::AccessWriter,
    pub connections: Cell<usize>,
    /// This worker's ring has a table of registered files (`runtime.fixed_files`).
    fixed_files: bool,
    pub shutdown: LocalShutdown,
    /// Fired when the drain deadline passes with requests still in flight: each (audit on) is
    /// cut there and still recorded (`proxy::request`).
    pub cut: LocalShutdown,
    /// Write buffers lent to connections for the length of one request, so an idle
    /// connection holds none and a busy one never allocates.
    buffers: RefCell<Vec<Vec<u8>>>,
    /// Request heads, parsed in place into one of these and handed down by pointer (returned
    /// by value, a head was copied three times on its way into the request's future). Boxes
    /// kept whole: a box is what a connection holds for the length of its request.
    #[allow(clippy::vec_box)]
    heads: RefCell<Vec<Box<crate::http::head::RequestHead>>>,
    /// Session ids this worker has opened (bounded).
    pub sessions: RefCell<super::session_cache::SessionCache>,
    revoked: RefCell<HashMap<[u8; 16], u64>>,
    /// Routing tables of federated endpoints (built from the upstreams' lists).
    pub catalogs: super::federate::Catalogs,
    /// Per upstream index: this worker's `circuit_breaker.error_ratio` window (`breaker`).
    pub error_windows: RefCell<Vec<super::breaker::ErrorWindow>>,
    /// Per item name, the authorization rules whose target names it (`policy::rules::Memo`).
    pub rules_memo: crate::policy::rules::Memo,
    /// Per config generation, each server's Rego evaluator on this worker (`servers[].rego`).
    pub rego: RefCell<(u64, Vec<Option<Rc<crate::policy::rego::RegoPolicy>>>)>,
    /// The latest keys the refresher fetched, by issuer name (a new generation starts with them).
    fetched_keys: RefCell<HashMap<String, Arc<super::control::FetchedKeys>>>,
    /// Upstream eras learned and upstream sessions held for stateless clients (`proxy::held`).
    pub held: super::held::Held,
    /// HTTP+SSE upstream streams this worker holds and the mailboxes its requests wait on.
    pub legacy: super::legacy::Hub,
    pub legacy_metrics: super::legacy::Metrics,
    /// The legacy HTTP+SSE streams this worker holds.
    pub legacy_sse: super::legacy_sse::Streams,
    /// `subscriptions/listen` streams open on this worker (`limits.listen_streams_per_worker`).
    pub listens: Cell<usize>,
    /// Numbers the gateway's own listen requests to members (their ids).
    pub listen_serial: Cell<u64>,
    /// Tokens for upstreams with `credentials` (`proxy::credentials`).
    pub tokens: super::credentials::Tokens,
    /// Requests in flight per upstream replica on this worker (`proxy::replicas`).
    pub replicas: super::replicas::Local,
    /// This worker's shares of the traffic limits and loop guards (`proxy::limit`), kept
    /// across reloads.
    pub traffic: Rc<super::limit::Local>,
    /// This worker's audit records not yet handed to the writer (`observe::audit::Batch`).
    pub audit: crate::observe::audit::Batch,
}

impl WorkerState {
    pub fn new(
        gw: Arc<Gateway>,
        index: usize,
        series: Arc<crate::observe::series::WorkerSeries>,
    ) -> Self {
        let replicas = super::replicas::Local::default();
        replicas.register(&gw.upstreams, &gw.health);
        WorkerState {
            pool: RefCell::new(Pool::new(gw.pool_keys())),
            metrics: WorkerMetrics::new(&gw.upstream_labels(), series),
            access: crate::observe::access::AccessWriter::new(gw.config.log.json),
            connections: Cell::new(0),
            fixed_files: monoio::fixed_files_registered() > 0,
            shutdown: LocalShutdown::default(),
            cut: LocalShutdown::default(),
            buffers: RefCell::new(Vec::new()),
            heads: RefCell::new(Vec::new()),
            sessions: RefCell::new(super::session_cache::SessionCache::new(SESSION_CACHE)),
            revoked: RefCell::new(HashMap::new()),
            catalogs: Default::default(),
            error_windows: Default::default(),
            rules_memo: Default::default(),
            fetched_keys: Default::default(),
            rego: RefCell::new((u64::MAX, Vec::new())),
            held: Default::default(),
            legacy: Default::default(),
            legacy_metrics: Default::default(),
            legacy_sse: Default::default(),
            listens: Cell::new(0),
            listen_serial: Cell::new(0),
            tokens: Default::default(),
            replicas,
            traffic: super::limit::Local::new(gw.traffic.clone(), index),
            audit: Default::default(),
            generation: RefCell::new(Rc::new(Generation::new(gw, []))),
            prepared: RefCell::new(None),
            index,
        }
    }

    /// The config new requests run on.
    pub fn current(&self) -> Rc<Generation> {
        self.generation.borrow().clone()
    }

    /// The gateway new requests run on (`current().gw`).
    pub fn gw(&self) -> Arc<Gateway> {
        self.generation.borrow().gw.clone()
    }

    /// Makes `gw` the config of every request that begins from now on. Requests in flight keep
    /// theirs; idle upstream connections are kept for targets that did not change, and metric
    /// handles for upstreams that stay. Returns how many idle connections were closed.
    pub fn install(&self, gw: Arc<Gateway>) -> usize {
        if gw.config.session.key != self.gw().config.session.key {
            // Opened tokens were checked against the old keys: a key the new config dropped must
            // not keep opening them from this cache.
            self.sessions.borrow_mut().clear();
        }
        let closed = self.pool.borrow_mut().rekey(gw.pool_keys());
        let ended = self
            .legacy
            .close_unless(|id| gw.upstreams.iter().any(|u| u.id == id && u.legacy));
        if ended > 0 {
            tracing::info!(
                worker = self.index,
                streams = ended,
                "HTTP+SSE upstream streams closed: their upstream left the config or changed transport"
            );
        }
        self.metrics.install_upstreams(&gw.upstream_labels());
        self.replicas.register(&gw.upstreams, &gw.health);
        let fetched: Vec<_> = self.fetched_keys.borrow().values().cloned().collect();
        // The old generation's lookups are counted before it goes (requests still on it count
        // in their own authn, which nothing reads after this).
        self.publish_token_cache();
        *self.generation.borrow_mut() = Rc::new(Generation::new(gw, &fetched));
        closed
    }

    /// A cleared buffer from the pool (or a new one).
    /// Hands this worker's audit records to the writer (on the tick, in the drain and at exit).
    pub fn flush_audit(&self) {
        if self.audit.is_empty() {
            return;
        }
        let gw = self.gw();
        self.audit.flush(&gw.audit, &gw.config.audit);
    }

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

    /// A head to parse into (its previous contents are overwritten whole).
    pub fn take_head(&self) -> Box<crate::http::head::RequestHead> {
        self.heads.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a head to the pool (one per connection in a request at most is ever out).
    pub fn give_head(&self, head: Box<crate::http::head::RequestHead>) {
        let mut pool = self.heads.borrow_mut();
        if pool.len() < MAX_POOLED_BUFFERS {
            pool.push(head);
        }
    }

    /// Gives an upstream connection back to the pool after a complete response with `head`
    /// (which says whether the upstream keeps it open, and for how long).
    pub fn pool_put(
        &self,
        gw: &Gateway,
        u: usize,
        conn: crate::http::pool::UpstreamConn,
        head: &crate::http::head::ResponseHead,
        at: Instant,
    ) {
        if !head.keep_alive {
            return;
        }
        let up = &gw.upstreams[u];
        let now = self.shutdown.now();
        if let Some(expires) =
            crate::http::pool::expiry(now, up.idle_timeout, head.keep_alive_timeout)
        {
            let slot = gw.pool_slot(u, conn.replica as usize);
            // The put is trusted as a readiness check for a short window (`pool` module doc)
            // from `at`, which is never after it: an earlier one only shortens the trust.
            let put = self
                .pool
                .borrow_mut()
                .put(slot, conn, up.max_idle, expires, at);
            if let Err(why) = put {
                self.pool_discarded(gw, u, why);
            }
        }
    }

    /// Counts one exchange with upstream `u` in this worker's error-ratio window of breaker `b`.
    #[cold]
    pub fn count_exchange(
        &self,
        b: &super::breaker::Breaker,
        window: usize,
        up: &UpstreamRuntime,
        failed: bool,
    ) {
        // One window per breaker: per replica, at its pool slot position.
        let mut ws = self.error_windows.borrow_mut();
        if ws.len() <= window {
            ws.resize(window + 1, Default::default());
        }
        // The window's owner (checked by `count`): the upstream, or its replica.
        let id = match up.replicas.get(window - up.slot_base) {
            Some(rep) if up.replicas.len() > 1 => rep.id ^ up.id,
            _ => up.id,
        };
        ws[window].count(b, id, &up.name, failed, self.shutdown.now());
    }

    /// Registers a connection's socket in the worker ring's table of files
    /// (`runtime.fixed_files`): its receives and sends then name it by its slot. A client
    /// connection registers once it stays open after its first request, an upstream one when
    /// it opens (the pool keeps it). A socket that finds no free slot works as before, counted
    /// by `side` (client, upstream).
    pub fn register_fixed(&self, s: &monoio::net::TcpStream, upstream: bool) {
        if self.fixed_files && !s.register_fixed() {
            self.metrics.fixed_file_misses[usize::from(upstream)].increment(1);
        }
    }

    /// Counts (and, for a stray response, logs) a pooled connection dropped instead of reused.
    pub fn pool_discarded(&self, gw: &Gateway, u: usize, why: crate::http::pool::Discard) {
        let up = &gw.upstreams[u];
        self.metrics.pool_discard(u, up.id, why);
        if why == crate::http::pool::Discard::Unsolicited {
            tracing::warn!(
                upstream = %up.name,
                "idle upstream connection had unsolicited bytes (a stray response?): dropped"
            );
        }
    }

    /// Ends a session on every worker of this process: here at once, on the others through the
    /// control channel (the handle says when they have applied it).
    pub fn revoke(&self, r: Revocation) -> Broadcast {
        self.revoked.borrow_mut().insert(r.id, r.expires_at);
        self.gw()
            .control
            .broadcast(Control::Revoke(r), Some(self.index))
    }

    /// Whether a session id was ended by DELETE (here, or on another worker whose revocation this
    /// worker has applied). Reads only the local set: the channel is the control task's.
    pub fn is_revoked(&self, id: &[u8; 16], now_unix: u64) -> bool {
        let mut set = self.revoked.borrow_mut();
        if set.len() > MAX_REVOKED {
            set.retain(|_, exp| *exp >= now_unix);
        }
        set.contains_key(id)
    }

    /// Adds the verified-token cache's hits and misses since the last call to the metrics
    /// (called from the worker's one-second timer, and before a new config is installed).
    pub fn publish_token_cache(&self) {
        let gen = self.generation.borrow().clone();
        self.metrics.token_cache(gen.authn.unpublished());
    }

    /// Drops revocations of sessions that have expired anyway (called from a timer).
    pub fn sweep(&self, now_unix: u64) {
        self.revoked.borrow_mut().retain(|_, exp| *exp >= now_unix);
    }

    /// Applies one control message to this worker.
    pub fn apply(&self, msg: Control) {
        match msg {
            Control::Revoke(r) => {
                self.revoked.borrow_mut().insert(r.id, r.expires_at);
            }
            Control::Prepare(p) => {
                // Records formatted under the old config go to its sinks: they reach the
                // writer before the reload switches sinks (after every worker prepared).
                self.flush_audit();
                *self.prepared.borrow_mut() = Some(p.0);
            }
            Control::Commit => {
                if let Some(gw) = self.prepared.borrow_mut().take() {
                    let closed = self.install(gw);
                    tracing::debug!(
                        worker = self.index,
                        closed,
                        "worker runs the reloaded config"
                    );
                }
            }
            Control::Abort => {
                self.prepared.borrow_mut().take();
            }
            Control::Legacy(m) => super::legacy::apply(self, m),
            Control::LegacyPost(p) => self.legacy_sse.deliver_handed_over(&p),
            Control::Keys(k) => {
                let same = self
                    .fetched_keys
                    .borrow()
                    .get(&k.name)
                    .is_some_and(|old| old.digest == k.digest && old.jwks_url == k.jwks_url);
                if same {
                    // An unchanged key set (a scheduled refetch, or one an unknown kid asked
                    // for): the token caches stay.
                    return;
                }
                let gen = self.current();
                gen.install_fetched(&k);
                // A reload prepared now gets them too when it commits (`Generation::new`).
                self.fetched_keys
                    .borrow_mut()
                    .insert(k.name.clone(), k.clone());
            }
        }
    }

    /// The worker's control task: awaits each message, applies it, acknowledges it. Ends when
    /// the gateway's bus is gone (or with the runtime).
    pub async fn run_control(self: std::rc::Rc<Self>, mut inbox: WorkerInbox) {
        while let Some(d) = inbox.recv().await {
            self.apply(d.msg);
            d.ack.done();
        }
    }
}
