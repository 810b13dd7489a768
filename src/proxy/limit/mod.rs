//! Phase: limit (`traffic.rules`). Each worker decides from its own share of every limit (no
//! lock on the request path); the exchange thread collects what the workers admitted, keeps
//! the global truth (GCRA state, quota counts, calls in flight) and hands each worker that uses
//! a key a new share every `traffic.sync_interval`, in proportion to where the demand is. A
//! config without rules costs one branch (`check`). The arithmetic is `policy::traffic`.
//!
//! Here: which rules apply to a message and its key, the decision over a whole request
//! (`phase`: `check`, then `wait`), its refusal, and the calls it holds (`Held`). A worker's
//! side is `local`; what workers and the exchange thread share is `exchange`, and that thread
//! `sync`; the loop guard's count is `loops`, the Redis link `fleet`.

use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::error::Kind;
use crate::jsonrpc::MessageKind;
use crate::mcp::Method;
use crate::policy::rules::Item;
use crate::policy::traffic::{part, LimitKind, LimitRule, Traffic};

use super::context::Ctx;
use super::reject::Refusal;
use super::state::WorkerState;

mod exchange;
mod fleet;
mod local;
mod loops;
mod sync;
#[cfg(test)]
mod tests;

pub use exchange::{Exchange, KeyHasher};
pub use local::Local;

/// Microseconds on the monotonic clock (rates, concurrency, demand pacing): a wall clock
/// stepped by NTP or a resumed VM must not refill or freeze a GCRA. Offset so that "long ago"
/// (0) is more than a sync interval before the first call. Calendar quotas use `wall_ms`.
fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    (1 << 32)
        + crate::runtime::clock::now()
            .saturating_duration_since(base)
            .as_micros() as u64
}

/// Unix milliseconds: only calendar windows (which are wall time in `traffic.time_zone`).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A call in flight under a concurrency limit: released when dropped, that is when the
/// request's context goes, however the request ended (answered, refused later, client gone).
pub struct Held {
    local: Rc<Local>,
    fp: u64,
    key: u64,
    /// A token quota's entry, charged what the reply relayed (`charge_relayed`), not a slot.
    tokens: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.tokens {
            self.local.release(self.fp, self.key);
        }
    }
}

/// Phase: record (for token quotas). Charges the estimated tokens of the `bytes` of reply
/// relayed to the client for this request to every token quota that admitted it, once each.
/// Counted from what the relay wrote, so nothing is buffered to count it.
pub fn charge_relayed(ctx: &Ctx, bytes: u64) {
    let tokens = crate::observe::tokens::estimated_tokens(bytes);
    for h in ctx.held.iter().filter(|h| h.tokens) {
        h.local.charge(h.fp, h.key, tokens);
    }
}

/// What one message is, for matching and keying rules.
struct Facts<'a> {
    server: usize,
    upstream: Option<usize>,
    tool: Option<&'a str>,
    method: Method,
    /// `arguments_hash` of a `tools/call` (when a rule keys by arguments; else 0).
    arguments: u64,
}

fn matches(r: &LimitRule, f: &Facts<'_>, p: Option<&crate::policy::Principal>) -> bool {
    let any = |list: &[Box<str>], v: Option<&str>| {
        list.is_empty() || v.is_some_and(|v| list.iter().any(|x| &**x == v))
    };
    r.servers.as_ref().is_none_or(|s| s.contains(&f.server))
        && r.upstreams
            .as_ref()
            .is_none_or(|u| f.upstream.is_some_and(|x| u.contains(&x)))
        && r.tools
            .as_ref()
            .is_none_or(|t| f.method == Method::ToolsCall && f.tool.is_some_and(|n| t.allows(n)))
        && r.methods.as_ref().is_none_or(|m| m.contains(&f.method))
        && (r.loop_guard.is_none() || f.method == Method::ToolsCall)
        && any(&r.subjects, p.map(|p| &*p.subject))
        && any(&r.clients, p.and_then(|p| p.client.as_deref()))
        && any(&r.tenants, p.and_then(|p| p.tenant.as_deref()))
        && (r.roles.is_empty() || p.is_some_and(|p| p.roles.iter().any(|x| r.roles.contains(x))))
}

fn key_hash(
    x: &Exchange,
    gw: &super::state::Gateway,
    r: &LimitRule,
    f: &Facts<'_>,
    p: Option<&crate::policy::Principal>,
) -> u64 {
    let mut bytes = smallvec::SmallVec::new();
    key_bytes(&mut bytes, gw, r, f, p);
    let mut h = x.hasher.build_hasher();
    h.write(&bytes);
    h.finish()
}

/// The bytes a key hashes: per part of `r.key`, its bit, its length and its text (the
/// arguments' hash as 8 bytes). One `write` of them all: SipHash hashes the byte stream, so
/// this is the hash the parts written one by one gave (a unit test holds it), in one call
/// instead of three per part. Written into `b` (returned, the buffer was copied out whole).
fn key_bytes(
    b: &mut smallvec::SmallVec<[u8; 128]>,
    gw: &super::state::Gateway,
    r: &LimitRule,
    f: &Facts<'_>,
    p: Option<&crate::policy::Principal>,
) {
    let mut text = |bit: u8, s: &[u8]| {
        b.push(bit);
        b.extend_from_slice(&s.len().to_ne_bytes());
        b.extend_from_slice(s);
    };
    if r.key & part::PRINCIPAL != 0 {
        text(part::PRINCIPAL, p.map_or(&[][..], |p| &p.id[..]));
    }
    if r.key & part::CLIENT != 0 {
        text(
            part::CLIENT,
            p.and_then(|p| p.client.as_deref()).unwrap_or("").as_bytes(),
        );
    }
    if r.key & part::TENANT != 0 {
        text(
            part::TENANT,
            p.and_then(|p| p.tenant.as_deref()).unwrap_or("").as_bytes(),
        );
    }
    if r.key & part::SERVER != 0 {
        text(part::SERVER, gw.config.servers[f.server].path.as_bytes());
    }
    if r.key & part::UPSTREAM != 0 {
        let name = f.upstream.map_or("", |u| gw.upstreams[u].name.as_str());
        text(part::UPSTREAM, name.as_bytes());
    }
    if r.key & part::TOOL != 0 {
        text(part::TOOL, f.tool.unwrap_or("").as_bytes());
    }
    if r.key & part::METHOD != 0 {
        text(part::METHOD, f.method.as_str().as_bytes());
    }
    if r.key & part::ARGUMENTS != 0 {
        b.push(part::ARGUMENTS);
        b.extend_from_slice(&f.arguments.to_ne_bytes());
    }
}

enum Judged {
    Admit,
    /// `wait`: this worker has had no share from the exchange for the entry yet; a moment's
    /// wait brings one.
    Over {
        retry_ms: u64,
        wait: bool,
    },
}

/// A refusal by one limit, before it is worded.
struct Over<'a> {
    rule: &'a LimitRule,
    /// `None`: the rule's loop guard (`loops`).
    kind: Option<LimitKind>,
    fp: u64,
    retry_ms: u64,
    tool: Option<&'a str>,
    method: Method,
}

impl Over<'_> {
    /// The refusal's kind (`data.kind`, the metric label): the limit's, or `loop`.
    fn label(&self) -> &'static str {
        match self.kind {
            Some(k) => k.label(),
            None => "loop",
        }
    }
}

/// Why `check` did not admit.
pub enum Stop {
    Refuse(Refusal),
    /// This worker's share ran out but the budget may not have: wait a moment (the exchange
    /// was asked for a larger share) and check again.
    Wait,
}

/// How long a request waits in all for a larger share before it is refused: three syncs, of
/// the exchange or (`traffic.redis`, for a new allotment) of Redis, whichever is slower, and
/// at most a second.
fn max_wait(ctx: &Ctx) -> Duration {
    wait_bound(&ctx.gw().config.traffic)
}

fn wait_bound(t: &Traffic) -> Duration {
    let redis = t.redis.as_ref().map_or(Duration::ZERO, |r| r.sync_interval);
    (t.sync_interval.max(redis) * 3).min(MAX_WAIT)
}

/// The longest a request waits for a larger share, whatever the sync intervals.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What authorization and routing made of one message, for the limit phase: refused (never
/// charged: a denied or hidden item costs the caller nothing, and a limit naming it must not
/// reveal it), or allowed and sent to an upstream (`None`: answered by the gateway or fanned
/// out, so rules naming `upstreams` do not match it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Refused,
    To(Option<usize>),
}

/// The routes of a request on an endpoint with one upstream: every message allowed (it has no
/// rules), sent to that upstream.
pub const PASS_THROUGH: &[Route] = &[];

/// Phase: limit, after authorization and routing (`routes`: one per message of `ctx.messages`,
/// or `PASS_THROUGH`). Every rule that matches a message applies (a message must pass all of
/// them); a batch is counted message by message and refused whole when one of them is over a
/// limit. Admitted calls are counted (and those under a concurrency limit held in `ctx.held`)
/// only when every limit admitted them. `may_wait`: a share that ran out while the global
/// budget may have room answers `Stop::Wait` (else it refuses). `now`: `now_us` as of the
/// decision.
#[inline]
fn check(
    w: &WorkerState,
    ctx: &mut Ctx,
    may_wait: bool,
    routes: &[Route],
    now: u64,
) -> Result<(), Stop> {
    if ctx.gw().config.traffic.rules.is_empty() {
        return Ok(());
    }
    check_rules(w, ctx, may_wait, routes, now)
}

/// `check`, waiting for a larger share when that may help (`wait`): the whole phase. The wait
/// is boxed: it is rare, and every request's future would otherwise carry its state.
pub async fn phase(w: &WorkerState, ctx: &mut Ctx, routes: &[Route]) -> Result<(), Refusal> {
    // As of now, not of the request's start: a body read slowly would back-date the decision
    // (an idle rate's next call would conform earlier than it does).
    match check(w, ctx, true, routes, now_us()) {
        Ok(()) => Ok(()),
        Err(Stop::Refuse(r)) => Err(r),
        Err(Stop::Wait) => Box::pin(wait(w, ctx, routes)).await,
    }
}

fn check_rules(
    w: &WorkerState,
    ctx: &mut Ctx,
    may_wait: bool,
    routes: &[Route],
    now: u64,
) -> Result<(), Stop> {
    let gen = ctx.gen.clone();
    let gw = &*gen.gw;
    let traffic = &*gw.config.traffic;
    let Some(server) = ctx.server else {
        return Ok(());
    };
    let local = &w.traffic;
    let x = &*local.exchange;
    let mut map = local.map.borrow_mut();
    local.apply(&mut map, now);
    let principal = ctx.principal.clone();
    let p = principal.as_deref();
    let s = &gw.config.servers[server];
    let federated = s.federated();
    // (fingerprint, key, kind, units) of each admission (a loop guard's too), committed when
    // all passed.
    let mut pending: SmallVec<[(u64, u64, LimitKind, u64); 4]> = SmallVec::new();
    let mut over: Option<Over<'_>> = None;
    'messages: for (i, m) in ctx.messages.iter().enumerate() {
        if m.kind != MessageKind::Request || Item::kind_of(m.method).is_none() {
            continue;
        }
        let upstream = match routes.get(i) {
            Some(Route::Refused) => continue,
            Some(Route::To(u)) => *u,
            None if federated => None,
            None => Some(s.primary()),
        };
        let name = match m.method {
            Method::ToolsCall | Method::PromptsGet => m.name.as_ref().map(|n| n.as_str()),
            _ => None,
        };
        let facts = Facts {
            server,
            upstream,
            tool: if m.method == Method::ToolsCall {
                name
            } else {
                None
            },
            method: m.method,
            arguments: m.arguments_hash,
        };
        for r in &traffic.rules {
            if !matches(r, &facts, p) {
                continue;
            }
            let key = key_hash(x, gw, r, &facts, p);
            if let Some(g) = r.loop_guard {
                let already = pending.iter().filter(|q| q.0 == g.fp && q.1 == key).count() as u64;
                match local.judge_loop(&mut map, traffic, &g, key, now, already) {
                    Judged::Admit => pending.push((g.fp, key, g.kind(), 1)),
                    Judged::Over { retry_ms, wait } => {
                        if may_wait && wait {
                            return Err(Stop::Wait);
                        }
                        over = Some(Over {
                            rule: r,
                            kind: None,
                            fp: g.fp,
                            retry_ms,
                            tool: facts.tool,
                            method: m.method,
                        });
                        break 'messages;
                    }
                }
            }
            for l in &r.limits {
                let already = pending.iter().filter(|q| q.0 == l.fp && q.1 == key).count() as u64;
                let retry_ms = match local.judge(&mut map, traffic, l, key, now, already) {
                    Judged::Admit => {
                        pending.push((l.fp, key, l.kind, r.units(&l.kind, facts.tool)));
                        continue;
                    }
                    Judged::Over { retry_ms, wait } => {
                        if may_wait && wait {
                            return Err(Stop::Wait);
                        }
                        retry_ms
                    }
                };
                over = Some(Over {
                    rule: r,
                    kind: Some(l.kind),
                    fp: l.fp,
                    retry_ms,
                    tool: facts.tool,
                    method: m.method,
                });
                break 'messages;
            }
        }
    }
    if let Some(o) = over {
        drop(map);
        local
            .reject_counter(o.fp, &o.rule.name, o.label())
            .increment(1);
        tracing::debug!(
            rule = &*o.rule.name,
            kind = o.label(),
            key = key_names(o.rule.key),
            retry_ms = o.retry_ms,
            "traffic limit reached"
        );
        return Err(Stop::Refuse(refusal(&o)));
    }
    // By reference: moving the vector into the loop copied it whole.
    for &(fp, key, kind, units) in &pending {
        local.admitted(&mut map, (fp, key), units, now);
        let tokens = matches!(kind, LimitKind::Tokens { .. });
        if matches!(kind, LimitKind::Concurrency { .. })
            || tokens
                && !ctx
                    .held
                    .iter()
                    .any(|h| h.tokens && (h.fp, h.key) == (fp, key))
        {
            ctx.held.push(Held {
                local: local.clone(),
                fp,
                key,
                tokens,
            });
        }
    }
    Ok(())
}

/// Waits (at most `max_wait`) for the exchange to bring this worker a larger share, then
/// decides for good. Only a request over its worker's share gets here. It looks again every
/// millisecond, or with `traffic.redis` every twentieth of a Redis sync (a new allotment comes
/// no sooner: many calls waiting for it must not cost a core a check each per millisecond).
pub async fn wait(w: &WorkerState, ctx: &mut Ctx, routes: &[Route]) -> Result<(), Refusal> {
    let until = std::time::Instant::now() + max_wait(ctx);
    let step = ctx
        .gw()
        .config
        .traffic
        .redis
        .as_ref()
        .map_or(Duration::ZERO, |r| r.sync_interval / 20)
        .max(Duration::from_millis(1));
    loop {
        monoio::time::sleep(step).await;
        let last = std::time::Instant::now() >= until;
        match check(w, ctx, !last, routes, now_us()) {
            Ok(()) => return Ok(()),
            Err(Stop::Refuse(r)) => return Err(r),
            Err(Stop::Wait) => {}
        }
    }
}

fn key_names(key: u8) -> &'static str {
    // The key's parts by name (never their values: a principal may be a token's subject).
    match key {
        0 => "global",
        k if k == part::PRINCIPAL => "principal",
        k if k == part::PRINCIPAL | part::TOOL => "principal+tool",
        k if k == part::TENANT => "tenant",
        k if k == part::CLIENT => "client",
        k if k == part::PRINCIPAL | part::TOOL | part::ARGUMENTS => "principal+tool+arguments",
        _ => "composite",
    }
}

fn refusal(o: &Over<'_>) -> Refusal {
    let secs = o.retry_ms.div_ceil(1000).max(1);
    let what = match o.kind {
        Some(LimitKind::Rate { .. }) => "Rate limit",
        Some(LimitKind::Concurrency { .. }) => "Concurrency limit",
        Some(LimitKind::Quota { .. }) => "Quota",
        Some(LimitKind::Tokens { .. }) => "Token quota",
        Some(LimitKind::Loop { .. }) | None => "Loop guard",
    };
    let data = format!(
        "{{\"retryAfterMs\":{},\"limit\":{},\"kind\":\"{}\"}}",
        o.retry_ms,
        serde_json::to_string(&*o.rule.name).unwrap_or_default(),
        o.label()
    )
    .into_bytes();
    let mut r = match (o.rule.loop_guard, o.rule.per_tool(), o.method, o.tool) {
        // A loop is stopped in band, whatever the rule names: the model reads why.
        (Some(g), _, _, tool) => Refusal::because(
            Kind::ToolLimited,
            format!(
                "You called {} with the same arguments {} times in {}; change the arguments or \
                 stop (traffic rule {}: the same call is refused for another {secs} s).",
                tool.unwrap_or("this tool"),
                g.max,
                crate::config::render_duration(g.window),
                o.rule.name
            ),
        ),
        (None, true, Method::ToolsCall, Some(tool)) => Refusal::because(
            Kind::ToolLimited,
            format!(
                "{what} reached for tool {tool} (traffic rule {}); retry after {secs} s.",
                o.rule.name
            ),
        ),
        (None, ..) => Refusal::because(
            Kind::Throttled,
            format!(
                "{what} reached (traffic rule {}); retry after {secs} s.",
                o.rule.name
            ),
        ),
    };
    r.data = Some(data);
    r.retry_after_secs = Some(u32::try_from(secs).unwrap_or(u32::MAX));
    r
}
