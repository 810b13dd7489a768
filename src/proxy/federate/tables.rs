//! The per-worker routing tables of federated endpoints (`Catalogs`): per worker and federated
//! server, one `NameTable` for tools, one for prompts and one `UriTable` for resources and
//! templates, each built from a full listing of the upstreams (through the session of the request
//! that needed it, for its caller) when first needed, when older than `list_refresh_interval`,
//! after an upstream announced `list_changed`, and when a name is missing from it (at most once a
//! second, so unknown names cannot make the gateway list the upstreams on every request). They are `Rc`s in
//! a `RefCell` owned by the worker: a lookup is a hash probe with no lock. Names are a pure
//! function of (upstream, original name), so a table built through one session routes every
//! session's calls; an upstream whose tools differ per session still decides for itself what it
//! runs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::mcp::cursor::ListKind;
use crate::mcp::names::{NameTable, UpstreamNames, UriTable};
use crate::mcp::session::SessionClaims;
use crate::observe::names;

use super::super::state::{Gateway, WorkerState};
use super::lists::{fetch_page, field, tool_usable};

/// Pages of one upstream a table refresh follows at most.
const REFRESH_PAGES: usize = 100;
/// A name missing from a table rebuilds it at most this often.
const MISS_REFRESH: Duration = Duration::from_secs(1);
/// How often a request polls for a first table another request is building.
const WAIT_FOR_BUILD: Duration = Duration::from_millis(5);
/// Rebuilds per second per server for a name a partial table lacks (see `rebuild_partial`).
const PARTIAL_REBUILDS: u32 = 10;

/// Which routing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableKind {
    Tools,
    Prompts,
    Resources,
}

impl TableKind {
    fn label(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
        }
    }
}

struct Built<T> {
    table: Rc<T>,
    at: Instant,
    stale: bool,
    /// Stable ids of the server's upstreams whose names are not in the table (the session that
    /// built it did not hold them, or they failed to list).
    missing: Vec<u64>,
    /// The protocol version of the session it was built through: upstreams may list other
    /// items to another revision (2026-07-28-only tools, say).
    version: crate::mcp::ProtocolVersion,
}

#[derive(Default)]
struct ServerTables {
    /// Rebuilds for a name a partial table lacks, this second: (second, count).
    partial_rebuilds: (u64, u32),
    /// Per table (tools, prompts, resources): a rebuild is in flight (one at a time: the
    /// others use the table there is), and when the last one began.
    building: [bool; 3],
    attempted: [Option<Instant>; 3],
    tools: Option<Built<NameTable>>,
    /// Annotation flags (`policy::rules::ann`) of the tools table's tools, by exposed name.
    tool_flags: Rc<Flags>,
    prompts: Option<Built<NameTable>>,
    resources: Option<Built<UriTable>>,
}

/// Tool annotation flags by exposed name (looked up per federated `tools/call`: foldhash with a
/// per-process random seed, as `NameTable`'s maps).
type Flags = HashMap<Box<str>, u8, foldhash::fast::RandomState>;

/// One worker's routing tables, by federated server (position in the config), for one config
/// generation (a reload starts over: the namers and filters may have changed).
#[derive(Default)]
pub struct Catalogs {
    inner: RefCell<(
        u64,
        HashMap<usize, ServerTables, foldhash::fast::RandomState>,
    )>,
}

impl TableKind {
    fn slot(self) -> usize {
        match self {
            Self::Tools => 0,
            Self::Prompts => 1,
            Self::Resources => 2,
        }
    }
}

/// A table rebuild in flight; dropping it (done, or the request went away) ends it.
struct Rebuilding<'a> {
    catalogs: &'a Catalogs,
    generation: u64,
    server: usize,
    slot: usize,
}

impl Drop for Rebuilding<'_> {
    fn drop(&mut self) {
        let mut inner = self.catalogs.inner.borrow_mut();
        if inner.0 == self.generation {
            if let Some(t) = inner.1.get_mut(&self.server) {
                t.building[self.slot] = false;
            }
        }
    }
}

impl Catalogs {
    /// Runs `f` on the tables of `server` for `gw`'s generation. A newer generation starts
    /// over; a request of an older one (still in flight after a reload) works on throwaway
    /// tables, so it cannot wipe the current generation's.
    fn with<R>(&self, gw: &Gateway, server: usize, f: impl FnOnce(&mut ServerTables) -> R) -> R {
        let mut inner = self.inner.borrow_mut();
        let generation = gw.generation;
        if generation > inner.0 {
            *inner = (generation, HashMap::default());
        }
        if generation < inner.0 {
            return f(&mut ServerTables::default());
        }
        f(inner.1.entry(server).or_default())
    }

    /// How long ago the last rebuild of this table began (`None`: never).
    fn since_attempt(
        &self,
        gw: &Gateway,
        server: usize,
        kind: TableKind,
        now: Instant,
    ) -> Option<Duration> {
        self.with(gw, server, |t| {
            t.attempted[kind.slot()].map(|a| now.saturating_duration_since(a))
        })
    }

    /// Starts a rebuild of this table unless one is in flight.
    fn begin_rebuild(
        &self,
        gw: &Gateway,
        server: usize,
        kind: TableKind,
        now: Instant,
    ) -> Option<Rebuilding<'_>> {
        let slot = kind.slot();
        let started = self.with(gw, server, |t| {
            if t.building[slot] {
                return false;
            }
            t.building[slot] = true;
            t.attempted[slot] = Some(now);
            true
        });
        // (An older generation works on throwaway tables: it always starts, and its guard
        // touches nothing when dropped.)
        started.then_some(Rebuilding {
            catalogs: self,
            generation: gw.generation,
            server,
            slot,
        })
    }

    /// Marks a server's table stale (an upstream announced `list_changed`).
    pub fn mark_stale(&self, gw: &Gateway, server: usize, kind: TableKind) {
        self.with(gw, server, |t| match kind {
            TableKind::Tools => t.tools.iter_mut().for_each(|b| b.stale = true),
            TableKind::Prompts => t.prompts.iter_mut().for_each(|b| b.stale = true),
            TableKind::Resources => t.resources.iter_mut().for_each(|b| b.stale = true),
        })
    }

    pub(super) fn names(
        &self,
        gw: &Gateway,
        server: usize,
        kind: TableKind,
    ) -> Option<(Rc<NameTable>, Instant, bool)> {
        self.with(gw, server, |t| {
            let b = match kind {
                TableKind::Tools => t.tools.as_ref(),
                _ => t.prompts.as_ref(),
            }?;
            Some((b.table.clone(), b.at, b.stale))
        })
    }

    /// Whether a name missing from a table should rebuild it now although the table is less
    /// than `MISS_REFRESH` old: the asking session holds an upstream the table was built
    /// without (it came back, or another session could not reach it), or speaks another
    /// protocol revision than the session it was built through. At most
    /// `PARTIAL_REBUILDS` a second per server, so calls to unknown names cannot make the
    /// gateway list the upstreams without bound.
    fn rebuild_partial(
        &self,
        gw: &Gateway,
        server: usize,
        kind: TableKind,
        claims: &SessionClaims,
        now_sec: u64,
    ) -> bool {
        self.with(gw, server, |t| {
            let (missing, version) = match kind {
                TableKind::Tools => t.tools.as_ref().map(|b| (&b.missing, b.version)),
                TableKind::Prompts => t.prompts.as_ref().map(|b| (&b.missing, b.version)),
                TableKind::Resources => t.resources.as_ref().map(|b| (&b.missing, b.version)),
            }
            .unzip();
            let held = missing.is_some_and(|m| {
                m.iter()
                    .any(|id| claims.upstreams.iter().any(|s| s.upstream == *id))
            });
            // Built through a session of another revision: the name may be one the upstreams
            // list only to this one.
            let other_revision = version.is_some_and(|v| v != claims.protocol_version);
            if !held && !other_revision {
                return false;
            }
            if t.partial_rebuilds.0 != now_sec {
                t.partial_rebuilds = (now_sec, 0);
            }
            if t.partial_rebuilds.1 >= PARTIAL_REBUILDS {
                return false;
            }
            t.partial_rebuilds.1 += 1;
            true
        })
    }

    fn uris(&self, gw: &Gateway, server: usize) -> Option<(Rc<UriTable>, Instant, bool)> {
        self.with(gw, server, |t| {
            let b = t.resources.as_ref()?;
            Some((b.table.clone(), b.at, b.stale))
        })
    }
}

/// A tool's annotation flags as the worker's tools table of `server` knows them (the MCP
/// defaults for a tool it does not know, and for prompts).
pub(in crate::proxy) fn annotations(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    kind: TableKind,
    name: &str,
) -> u8 {
    use crate::policy::rules::ann;
    if kind != TableKind::Tools {
        return 0;
    }
    w.catalogs.with(gw, server, |t| {
        t.tool_flags.get(name).copied().unwrap_or(ann::DEFAULT)
    })
}

/// The upstream's own name of a tool exposed as `exposed` on federated endpoint `server`, as
/// the worker's table has it (stale or not: a name only picks a timeout), if it routes to `u`.
pub(in crate::proxy) fn own_tool_timeout(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    u: usize,
    exposed: &str,
) -> Option<std::time::Duration> {
    let (t, _, _) = w.catalogs.names(gw, server, TableKind::Tools)?;
    let (member, original) = t.resolve(exposed)?;
    (gw.config.servers[server].upstreams.get(member)?.upstream == u)
        .then(|| gw.upstreams[u].tool_timeout(original))
        .flatten()
}

/// The tools or prompts table of `server` if it is fresh: the request path's synchronous lookup
/// (no await, no clock read beyond the worker's coarse one).
pub(in crate::proxy) fn fresh_names(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    kind: TableKind,
) -> Option<Rc<NameTable>> {
    let interval = gw.config.servers[server].list_refresh_interval;
    let (t, at, stale) = w.catalogs.names(gw, server, kind)?;
    if stale || w.shutdown.now().saturating_duration_since(at) >= interval {
        return None;
    }
    Some(t)
}

/// What a request that needs a table does: use the one there is, or rebuild it.
enum Turn<'a, T> {
    Use(Rc<T>),
    Build(Rebuilding<'a>),
}

/// The one decision `names_for` and `uris_for` share. The current table is used when it is
/// fresh (not stale, younger than `list_refresh_interval`) and the lookup hits; a miss uses it
/// too while the last rebuild began less than `MISS_REFRESH` ago, unless the asking session
/// holds an upstream the table was built without (`rebuild_partial`). Otherwise this request
/// rebuilds it, unless another request of the worker already is: then the table there is is
/// used, or, when there is none yet, the first one is waited for.
async fn turn<'a, T>(
    w: &'a WorkerState,
    gw: &Gateway,
    server: usize,
    kind: TableKind,
    claims: &SessionClaims,
    current: impl Fn() -> Option<(Rc<T>, Instant, bool)>,
    hit: impl Fn(&T) -> bool,
) -> Turn<'a, T> {
    let interval = gw.config.servers[server].list_refresh_interval;
    let now = w.shutdown.now();
    if let Some((t, at, stale)) = current() {
        let fresh = !stale && now.saturating_duration_since(at) < interval;
        let recent = w
            .catalogs
            .since_attempt(gw, server, kind, now)
            .is_some_and(|d| d < MISS_REFRESH);
        if fresh
            && (hit(&t)
                || recent
                    && !w.catalogs.rebuild_partial(
                        gw,
                        server,
                        kind,
                        claims,
                        super::super::unix_now(),
                    ))
        {
            return Turn::Use(t);
        }
    }
    loop {
        if let Some(r) = w.catalogs.begin_rebuild(gw, server, kind, now) {
            return Turn::Build(r);
        }
        if let Some((t, _, _)) = current() {
            return Turn::Use(t);
        }
        monoio::time::sleep(WAIT_FOR_BUILD).await;
    }
}

/// The tools or prompts table of `server` for routing `name`: the current one if it is fresh
/// and knows the name, else rebuilt through `claims` (a miss at most once a second).
pub(super) async fn names_for(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    claims: &SessionClaims,
    at: (&[u8], super::exchange::Caller<'_>),
    kind: TableKind,
    name: &str,
) -> Rc<NameTable> {
    let current = || w.catalogs.names(gw, server, kind);
    let hit = |t: &NameTable| t.resolve(name).is_some();
    let _rebuilding = match turn(w, gw, server, kind, claims, current, hit).await {
        Turn::Use(t) => return t,
        Turn::Build(r) => r,
    };
    let list = if kind == TableKind::Tools {
        ListKind::Tools
    } else {
        ListKind::Prompts
    };
    let s = &gw.config.servers[server];
    let fetched = fetch_all(w, gw, server, claims, at, list, "name").await;
    let missing = missing_of(gw, server, &fetched);
    let fetched: Vec<Vec<(String, u8)>> =
        fetched.into_iter().map(Option::unwrap_or_default).collect();
    let names: Vec<Vec<String>> = fetched
        .iter()
        .map(|l| l.iter().map(|(n, _)| n.clone()).collect())
        .collect();
    let parts: Vec<UpstreamNames<'_, String>> = s
        .upstreams
        .iter()
        .zip(&names)
        .map(|(m, names)| UpstreamNames {
            namer: &m.namer,
            names,
        })
        .collect();
    let filter = if kind == TableKind::Tools {
        &s.tools.filter
    } else {
        &s.prompts.filter
    };
    let (table, problems) = NameTable::build(&parts, filter);
    for p in &problems {
        tracing::warn!(server = %s.path, problem = %p, "federated {} table", kind.label());
    }
    metrics::counter!(names::FEDERATION_TABLE_REFRESHES_TOTAL, "list" => kind.label()).increment(1);
    // Each tool's annotation flags by exposed name, for rules that target annotations.
    let flags: Flags = if kind == TableKind::Tools {
        fetched
            .iter()
            .enumerate()
            .flat_map(|(m, l)| {
                let table = &table;
                l.iter().filter_map(move |(n, f)| {
                    table.exposed(m, n).map(|e| (Box::<str>::from(e), *f))
                })
            })
            .collect()
    } else {
        Flags::default()
    };
    let table = Rc::new(table);
    let built = Built {
        table: table.clone(),
        at: w.shutdown.now(),
        stale: false,
        missing,
        version: claims.protocol_version,
    };
    w.catalogs.with(gw, server, |t| match kind {
        TableKind::Tools => {
            t.tools = Some(built);
            t.tool_flags = Rc::new(flags);
        }
        _ => t.prompts = Some(built),
    });
    table
}

/// The resources table of `server` for routing `uri` (same rules as `names_for`).
pub(super) async fn uris_for(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    claims: &SessionClaims,
    at: (&[u8], super::exchange::Caller<'_>),
    uri: &str,
) -> Rc<UriTable> {
    let current = || w.catalogs.uris(gw, server);
    let hit = |t: &UriTable| t.route(uri).is_some();
    let kind = TableKind::Resources;
    let _rebuilding = match turn(w, gw, server, kind, claims, current, hit).await {
        Turn::Use(t) => return t,
        Turn::Build(r) => r,
    };
    let s = &gw.config.servers[server];
    let resources = fetch_all(w, gw, server, claims, at, ListKind::Resources, "uri").await;
    let mut missing = missing_of(gw, server, &resources);
    let resources: Vec<Vec<String>> = resources
        .into_iter()
        .map(|l| l.unwrap_or_default().into_iter().map(|(u, _)| u).collect())
        .collect();
    let templates = fetch_all(
        w,
        gw,
        server,
        claims,
        at,
        ListKind::ResourceTemplates,
        "uriTemplate",
    )
    .await;
    for id in missing_of(gw, server, &templates) {
        if !missing.contains(&id) {
            missing.push(id);
        }
    }
    let templates: Vec<Vec<String>> = templates
        .into_iter()
        .map(|l| l.unwrap_or_default().into_iter().map(|(t, _)| t).collect())
        .collect();
    let r: Vec<&[String]> = resources.iter().map(Vec::as_slice).collect();
    let tpl: Vec<&[String]> = templates.iter().map(Vec::as_slice).collect();
    let (table, problems) = UriTable::build(&r, &tpl, &s.resources.filter);
    for p in &problems {
        tracing::warn!(server = %s.path, problem = %p, "federated resources table");
    }
    metrics::counter!(names::FEDERATION_TABLE_REFRESHES_TOTAL, "list" => "resources").increment(1);
    let table = Rc::new(table);
    let built = Built {
        table: table.clone(),
        at: w.shutdown.now(),
        stale: false,
        missing,
        version: claims.protocol_version,
    };
    w.catalogs.with(gw, server, |t| t.resources = Some(built));
    table
}

/// The resources table as it stands, rebuilt first when absent, stale or expired (not on a
/// miss: a list shows new URIs and marks the table stale instead).
pub(super) async fn current_uris(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    claims: &SessionClaims,
    at: (&[u8], super::exchange::Caller<'_>),
) -> Rc<UriTable> {
    let interval = gw.config.servers[server].list_refresh_interval;
    match w.catalogs.uris(gw, server) {
        Some((t, at, false)) if w.shutdown.now().saturating_duration_since(at) < interval => t,
        // A URI no upstream lists never routes, and the table is not older than a second, so
        // this rebuilds it.
        _ => {
            w.catalogs.mark_stale(gw, server, TableKind::Resources);
            uris_for(w, gw, server, claims, at, "").await
        }
    }
}

/// The string `field` (`name`, `uri`, `uriTemplate`) of every item of `list` from every upstream
/// of the server, by member position (an upstream the session does not hold, or that failed,
/// lists nothing). Upstreams are listed at once.
async fn fetch_all(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    claims: &SessionClaims,
    at: (&[u8], super::exchange::Caller<'_>),
    list: ListKind,
    key: &str,
) -> Vec<Option<Vec<(String, u8)>>> {
    let s = &gw.config.servers[server];
    let calls = s.upstreams.iter().map(|m| async move {
        let u = m.upstream;
        let session = super::super::upstream_session(gw, Some(claims), u)?;
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..REFRESH_PAGES {
            match fetch_page(w, gw, u, session, at, list, cursor.as_deref()).await {
                Ok(page) => {
                    items.extend(
                        page.items()
                            .filter(|i| list != ListKind::Tools || tool_usable(gw, u, i))
                            .filter_map(|i| {
                                let flags = if list == ListKind::Tools {
                                    crate::policy::rules::ann::of_tool(i)
                                } else {
                                    0
                                };
                                field(i, key).map(|f| (f, flags))
                            }),
                    );
                    match page.next {
                        Some(n) => cursor = Some(n),
                        None => break,
                    }
                }
                Err(why) => {
                    failed(gw, u, &why);
                    return None;
                }
            }
        }
        Some(items)
    });
    futures_util::future::join_all(calls).await
}

/// Stable ids of the members a listing has nothing from.
fn missing_of<T>(gw: &Gateway, server: usize, fetched: &[Option<T>]) -> Vec<u64> {
    gw.config.servers[server]
        .upstreams
        .iter()
        .zip(fetched)
        .filter(|(_, f)| f.is_none())
        .map(|(m, _)| gw.upstreams[m.upstream].id)
        .collect()
}

pub(super) fn failed(gw: &Gateway, u: usize, why: &str) {
    let name = &gw.upstreams[u].name;
    tracing::warn!(upstream = %name, error = %why, "federated list: upstream skipped");
    metrics::counter!(names::FEDERATION_UPSTREAM_FAILURES_TOTAL, "upstream" => name.clone(), "step" => "list").increment(1);
}
