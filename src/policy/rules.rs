//! Native authorization rules (`servers[].rules`): compiled at config load (and reload) into
//! `Rules`, decided on the request path with no allocation and no lock.
//!
//! A request is decided per *item*: a tool (`tools/call`), a prompt (`prompts/get`), a resource
//! (`resources/read`, `…/subscribe`, `…/unsubscribe`) or another method (`completion/complete`,
//! `logging/setLevel`, `tasks/*`, …). Protocol plumbing (initialize, ping, notifications,
//! responses, `server/discover`, the list methods, whose *items* are filtered instead) is never
//! an item. Rules are read in order; the first whose target, identity and context conditions all
//! hold decides; when none does, the item is denied.
//!
//! What the client sees (`../shared/MCP-NOTES.md`):
//! - *Visible* items are those some rule could allow this principal (identity conditions hold;
//!   context conditions and scopes are assumed to), unless an earlier deny rule without context
//!   conditions takes them away. Lists show only visible items.
//! - A hidden item called anyway is unknown (-32602 `Unknown tool: X`): its existence is not
//!   revealed.
//! - A visible item denied in this context (source address, time of day, or a deny rule with
//!   such conditions) is a tool result with `isError` and a sentence the model can act on.
//! - A visible item whose allowing rule needs an OAuth scope the token lacks is 403
//!   `insufficient_scope` naming the scope (the client can ask for it).
//!
//! Cost: `Memo` keeps, per worker and item name, the indices of the rules whose *target* matches
//! it (computed once per name and config generation), so a decision walks only those; identity
//! and context conditions are comparisons of short lists. Tool annotations use the MCP defaults
//! when the tool does not say (`destructiveHint` and `openWorldHint` true, `readOnlyHint` and
//! `idempotentHint` false).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use crate::mcp::names::Filter;
use crate::mcp::Method;

use super::Principal;

/// Tool annotation flags (`Annotations::flags`).
pub mod ann {
    pub const READ_ONLY: u8 = 1;
    pub const DESTRUCTIVE: u8 = 2;
    pub const IDEMPOTENT: u8 = 4;
    pub const OPEN_WORLD: u8 = 8;
    /// The MCP defaults for a tool that does not annotate itself.
    pub const DEFAULT: u8 = DESTRUCTIVE | OPEN_WORLD;
    /// The hint names, as tools spell them.
    pub const NAMES: [(&str, u8); 4] = [
        ("readOnlyHint", READ_ONLY),
        ("destructiveHint", DESTRUCTIVE),
        ("idempotentHint", IDEMPOTENT),
        ("openWorldHint", OPEN_WORLD),
    ];

    /// The flags of a listed tool (its JSON text): each hint as the tool sets it (a boolean),
    /// else its default. A read-only tool is never destructive (the spec gives
    /// `destructiveHint` meaning only when `readOnlyHint` is false).
    pub fn of_tool(item: &str) -> u8 {
        use sonic_rs::JsonValueTrait;
        let mut flags = DEFAULT;
        for (name, bit) in NAMES {
            if let Ok(v) = sonic_rs::get(item, ["annotations", name]) {
                match v.as_bool() {
                    Some(true) => flags |= bit,
                    Some(false) => flags &= !bit,
                    None => {}
                }
            }
        }
        if flags & READ_ONLY != 0 {
            flags &= !DESTRUCTIVE;
        }
        flags
    }
}

/// What kind of item a rule targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ItemKind {
    Tool,
    Prompt,
    Resource,
    /// A method that names no tool, prompt or resource.
    Method,
}

/// One thing a request asks to do.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    pub kind: ItemKind,
    /// The exposed tool or prompt name, the resource URI, or the method's name.
    pub name: &'a str,
    pub method: Method,
    /// The upstream (index into the config's upstreams) the item belongs to, when known.
    pub upstream: Option<usize>,
    /// Tool annotation flags (`ann`), for tools.
    pub annotations: u8,
}

impl Item<'_> {
    /// The item a request message is, or `None` for plumbing (always allowed).
    pub fn kind_of(method: Method) -> Option<ItemKind> {
        match method {
            Method::ToolsCall => Some(ItemKind::Tool),
            Method::PromptsGet => Some(ItemKind::Prompt),
            Method::ResourcesRead | Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => {
                Some(ItemKind::Resource)
            }
            Method::Initialize
            | Method::Ping
            | Method::ServerDiscover
            | Method::SubscriptionsListen
            | Method::ToolsList
            | Method::PromptsList
            | Method::ResourcesList
            | Method::ResourcesTemplatesList
            | Method::TasksList
            | Method::NotificationsInitialized
            | Method::NotificationsCancelled
            | Method::NotificationsProgress
            | Method::NotificationsRootsListChanged
            | Method::OtherNotification => None,
            _ => Some(ItemKind::Method),
        }
    }
}

/// A CIDR block (`10.0.0.0/8`, `::1/128`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: prefix length must be 0..={max}")),
            },
        };
        Ok(Cidr { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A daily window in UTC, minutes since midnight, `start..end` (wrapping past midnight when
/// `end <= start`), on the days of `days` (bit 0 = Monday).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u16,
    pub end: u16,
    pub days: u8,
}

impl Window {
    pub const ALL_DAYS: u8 = 0x7f;

    pub fn holds(&self, now_unix: u64) -> bool {
        let days = now_unix / 86_400;
        // 1970-01-01 was a Thursday (Monday = 0 → Thursday = 3).
        let weekday = ((days + 3) % 7) as u8;
        let minute = ((now_unix % 86_400) / 60) as u16;
        let in_time = if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        };
        // A window past midnight belongs to the day it started on.
        let day = if self.start >= self.end && minute < self.end {
            (weekday + 6) % 7
        } else {
            weekday
        };
        in_time && self.days & (1 << day) != 0
    }

    pub fn describe(&self) -> String {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        format!("{}-{} UTC", hm(self.start), hm(self.end))
    }
}

/// One rule, compiled.
#[derive(Debug)]
pub struct Rule {
    /// `rules[].name`, or `#<index>`: the reason a decision names.
    pub name: Box<str>,
    pub allow: bool,
    // Target: an absent list matches everything.
    pub upstreams: Option<Vec<usize>>,
    pub tools: Option<Filter>,
    pub prompts: Option<Filter>,
    pub resources: Option<Filter>,
    pub methods: Option<Vec<Method>>,
    /// Annotation flags that must be set (`.0`) and clear (`.1`).
    pub annotations: (u8, u8),
    // Identity: each non-empty list needs one match (scopes: all of them).
    pub subjects: Vec<Box<str>>,
    pub clients: Vec<Box<str>>,
    pub tenants: Vec<Box<str>>,
    pub roles: Vec<Box<str>>,
    pub scopes: Vec<Box<str>>,
    // Context: the item stays visible when these fail.
    pub sources: Vec<Cidr>,
    pub window: Option<Window>,
    /// `rules[].message`: what the model is told when this rule denies a visible item.
    pub message: Option<Box<str>>,
}

impl Rule {
    fn has_context(&self) -> bool {
        !self.sources.is_empty() || self.window.is_some()
    }

    /// Whether the rule's target names `item` (kind, name, method, upstream; annotations are
    /// `annotations_hold`).
    fn targets(&self, item: &Item<'_>) -> bool {
        self.names(item.kind, item.name, item.method) && self.targets_upstream(item.upstream)
    }

    /// The part of the target fixed by the item's kind, name and method (what `Memo` keeps).
    fn names(&self, kind: ItemKind, name: &str, method: Method) -> bool {
        let kinds_named =
            self.tools.is_some() || self.prompts.is_some() || self.resources.is_some();
        let named = |f: &Option<Filter>| match f {
            Some(f) => f.allows(name),
            None => !kinds_named,
        };
        let name_ok = match kind {
            ItemKind::Tool => named(&self.tools),
            ItemKind::Prompt => named(&self.prompts),
            ItemKind::Resource => named(&self.resources),
            ItemKind::Method => !kinds_named,
        };
        name_ok && self.methods.as_ref().is_none_or(|ms| ms.contains(&method))
    }

    fn targets_upstream(&self, u: Option<usize>) -> bool {
        match (&self.upstreams, u) {
            (None, _) => true,
            (Some(list), Some(u)) => list.contains(&u),
            (Some(_), None) => false,
        }
    }

    fn annotations_hold(&self, flags: u8) -> bool {
        let (set, clear) = self.annotations;
        flags & set == set && flags & clear == 0
    }

    fn identity_holds(&self, p: Option<&Principal>) -> bool {
        let any = |list: &[Box<str>], v: Option<&str>| {
            list.is_empty() || v.is_some_and(|v| list.iter().any(|x| &**x == v))
        };
        let Some(p) = p else {
            return self.subjects.is_empty()
                && self.clients.is_empty()
                && self.tenants.is_empty()
                && self.roles.is_empty()
                && self.scopes.is_empty();
        };
        any(&self.subjects, Some(&p.subject))
            && any(&self.clients, p.client.as_deref())
            && any(&self.tenants, p.tenant.as_deref())
            && (self.roles.is_empty() || self.roles.iter().any(|r| p.has_role(r)))
    }

    /// The first of the rule's scopes the principal lacks.
    fn missing_scope(&self, p: Option<&Principal>) -> Option<&str> {
        self.scopes
            .iter()
            .find(|s| !p.is_some_and(|p| p.has_scope(s)))
            .map(|s| &**s)
    }

    fn context_fails(&self, facts: &Facts<'_>) -> Option<ContextMiss> {
        if !self.sources.is_empty()
            && !facts
                .source
                .is_some_and(|ip| self.sources.iter().any(|c| c.contains(ip)))
        {
            return Some(ContextMiss::Source);
        }
        match &self.window {
            Some(w) if !w.holds(facts.now_unix) => Some(ContextMiss::Time),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ContextMiss {
    Source,
    Time,
}

/// What a decision knows beside the item.
pub struct Facts<'a> {
    pub principal: Option<&'a Principal>,
    pub source: Option<IpAddr>,
    pub now_unix: u64,
}

/// The reason code of a decision: `tollgate_authz_decisions_total{decision,reason}` and the
/// request context (and the audit record) carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Allowed or denied by a rule (the context names which).
    Rule,
    /// Allowed: the endpoint authenticates but has no rules (every principal may do everything).
    Authenticated,
    /// Allowed: the endpoint has neither authentication nor rules.
    Open,
    /// Denied: no rule allows this principal the item, so it is hidden.
    Hidden,
    /// Denied: an allowing rule's source addresses do not include the client's.
    Source,
    /// Denied: an allowing rule's time window is not now.
    Time,
    /// Denied: an allowing rule needs an OAuth scope the token lacks.
    InsufficientScope,
    /// Allowed or denied by the Rego policy.
    Rego,
    /// Denied: the Rego policy could not be evaluated.
    RegoError,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Rule,
        Reason::Authenticated,
        Reason::Open,
        Reason::Hidden,
        Reason::Source,
        Reason::Time,
        Reason::InsufficientScope,
        Reason::Rego,
        Reason::RegoError,
    ];

    pub fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rule => "rule",
            Reason::Authenticated => "authenticated",
            Reason::Open => "open",
            Reason::Hidden => "hidden",
            Reason::Source => "source",
            Reason::Time => "time",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::Rego => "rego",
            Reason::RegoError => "rego_error",
        }
    }
}

/// How an item was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on; `rule` (an index into `Rules::rules`) when a rule allowed it.
    Allow { reason: Reason, rule: Option<u16> },
    /// Not visible to this principal: answer as if it did not exist.
    Hidden { rule: Option<u16> },
    /// Visible but not allowed here and now: tell the model why (`isError` for a tool).
    Denied {
        reason: Reason,
        rule: Option<u16>,
        message: String,
    },
    /// Allowed once the token has `scope` (403 `insufficient_scope`).
    NeedsScope { scope: Box<str>, rule: u16 },
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }

    pub fn reason(&self) -> Reason {
        match self {
            Verdict::Allow { reason, .. } | Verdict::Denied { reason, .. } => *reason,
            Verdict::Hidden { .. } => Reason::Hidden,
            Verdict::NeedsScope { .. } => Reason::InsufficientScope,
        }
    }

    pub fn rule(&self) -> Option<u16> {
        match self {
            Verdict::Allow { rule, .. }
            | Verdict::Hidden { rule }
            | Verdict::Denied { rule, .. } => *rule,
            Verdict::NeedsScope { rule, .. } => Some(*rule),
        }
    }
}

/// A server's rules, compiled.
#[derive(Debug, Default)]
pub struct Rules {
    pub rules: Vec<Rule>,
}

impl Rules {
    /// The indices of the rules whose target names an item of `kind` called `name` for
    /// `method` (upstream and annotations are judged per decision): what `Memo` keeps.
    fn candidates(&self, kind: ItemKind, name: &str, method: Method) -> Vec<u16> {
        (0..self.rules.len())
            .filter(|&i| self.rules[i].names(kind, name, method))
            .map(|i| i as u16)
            .collect()
    }

    /// Decides `item` with the rules `cand` (from `Memo::candidates`).
    pub fn decide(&self, cand: &[u16], item: &Item<'_>, facts: &Facts<'_>) -> Verdict {
        let p = facts.principal;
        let mut visible_by: Option<(u16, Option<ContextMiss>)> = None;
        let mut scope_needed: Option<(u16, &str)> = None;
        let mut hidden_by: Option<u16> = None;
        for &i in cand {
            let r = &self.rules[usize::from(i)];
            if !(r.targets(item) && r.annotations_hold(item.annotations) && r.identity_holds(p)) {
                continue;
            }
            let context = r.context_fails(facts);
            if r.allow {
                if let Some(scope) = r.missing_scope(p) {
                    scope_needed.get_or_insert((i, scope));
                    continue;
                }
                match context {
                    None => {
                        return Verdict::Allow {
                            reason: Reason::Rule,
                            rule: Some(i),
                        };
                    }
                    Some(miss) => {
                        visible_by.get_or_insert((i, Some(miss)));
                    }
                }
            } else {
                // A deny rule whose scopes the token lacks does not apply to it.
                if r.missing_scope(p).is_some() {
                    continue;
                }
                match context {
                    Some(_) => continue,
                    None if r.has_context() || visible_by.is_some() || scope_needed.is_some() => {
                        // Denied here and now; still visible (the item is allowed elsewhere,
                        // or this rule only applies in some context).
                        let visible = visible_by.is_some()
                            || scope_needed.is_some()
                            || self.visible_after(cand, i, item, p);
                        if !visible {
                            return Verdict::Hidden { rule: Some(i) };
                        }
                        return Verdict::Denied {
                            reason: Reason::Rule,
                            rule: Some(i),
                            message: deny_message(r, item),
                        };
                    }
                    None => {
                        hidden_by = Some(i);
                        break;
                    }
                }
            }
        }
        if let Some((rule, scope)) = scope_needed {
            if hidden_by.is_none() || visible_by.is_some() {
                return Verdict::NeedsScope {
                    scope: scope.into(),
                    rule,
                };
            }
        }
        match visible_by {
            Some((i, miss)) => {
                let r = &self.rules[usize::from(i)];
                let (reason, message) = match miss {
                    Some(ContextMiss::Time) => (
                        Reason::Time,
                        format!(
                            "{} {} may be used only {}; try again then.",
                            item_word(item),
                            item.name,
                            r.window.as_ref().map(Window::describe).unwrap_or_default()
                        ),
                    ),
                    _ => (
                        Reason::Source,
                        format!(
                            "{} {} may not be used from this network address; do not retry it from here.",
                            item_word(item),
                            item.name
                        ),
                    ),
                };
                Verdict::Denied {
                    reason,
                    rule: Some(i),
                    message,
                }
            }
            None => Verdict::Hidden { rule: hidden_by },
        }
    }

    /// Whether some allow rule after `from` could show `item` to `p` (a deny rule with context
    /// conditions does not hide what a later rule allows).
    fn visible_after(
        &self,
        cand: &[u16],
        from: u16,
        item: &Item<'_>,
        p: Option<&Principal>,
    ) -> bool {
        cand.iter().filter(|&&i| i > from).any(|&i| {
            let r = &self.rules[usize::from(i)];
            r.allow
                && r.targets(item)
                && r.annotations_hold(item.annotations)
                && r.identity_holds(p)
        })
    }

    /// Whether `item` is shown to `p` in lists: the first rule whose target and identity hold
    /// (deny rules with context conditions, which deny only in some context, skipped) allows it.
    pub fn visible(&self, cand: &[u16], item: &Item<'_>, p: Option<&Principal>) -> bool {
        for &i in cand {
            let r = &self.rules[usize::from(i)];
            if !(r.targets(item) && r.annotations_hold(item.annotations) && r.identity_holds(p)) {
                continue;
            }
            if r.allow {
                return true;
            }
            if !r.has_context() && r.missing_scope(p).is_none() {
                return false;
            }
        }
        false
    }
}

fn item_word(item: &Item<'_>) -> &'static str {
    match item.kind {
        ItemKind::Tool => "The tool",
        ItemKind::Prompt => "The prompt",
        ItemKind::Resource => "The resource",
        ItemKind::Method => "The method",
    }
}

fn deny_message(r: &Rule, item: &Item<'_>) -> String {
    match &r.message {
        Some(m) => m.to_string(),
        None => format!(
            "{} {} is not allowed for you here (rule {}); do not retry it.",
            item_word(item),
            item.name,
            r.name
        ),
    }
}

/// Per worker: for each (server, item kind, method, name), the rules whose target names it.
/// Bounded: past `MEMO_ENTRIES` names a server's memo starts over.
#[derive(Default)]
pub struct Memo {
    inner: RefCell<(u64, MemoMap)>,
}

const MEMO_ENTRIES: usize = 4096;

/// (server, item kind, method) → item name → candidate rule indices. The outer key is a few
/// small values of ours (a fast hasher); names come from requests (SipHash).
type MemoMap =
    HashMap<(usize, ItemKind, Method), HashMap<Box<str>, Rc<[u16]>>, foldhash::fast::RandomState>;

impl Memo {
    /// The candidate rules of `item` on `server` for config generation `generation`.
    pub fn candidates(
        &self,
        generation: u64,
        server: usize,
        rules: &Rules,
        item: &Item<'_>,
    ) -> Rc<[u16]> {
        let mut inner = self.inner.borrow_mut();
        if inner.0 != generation {
            *inner = (generation, HashMap::default());
        }
        let names = inner.1.entry((server, item.kind, item.method)).or_default();
        if let Some(c) = names.get(item.name) {
            return c.clone();
        }
        if names.len() >= MEMO_ENTRIES {
            names.clear();
        }
        let c: Rc<[u16]> = rules.candidates(item.kind, item.name, item.method).into();
        names.insert(item.name.into(), c.clone());
        c
    }
}

#[cfg(test)]
mod tests;
