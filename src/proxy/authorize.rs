//! Phase: authorize. Each item a request asks for (a tool call, a prompt, a resource, a method;
//! every message of a batch on its own) is decided here against the endpoint's rules
//! (`policy::rules`), and the decision, allow or deny, is kept with its reason in the request
//! context for the record phase (and the audit record). Lists are filtered with the same rules
//! (`visible`). Nothing here allocates on an allowed call but the decision's entry.

use std::cell::RefCell;
use std::net::IpAddr;

use smallvec::SmallVec;

use crate::error::Kind;
use crate::policy::rules::{Facts, Item, ItemKind, Reason, Verdict};
use crate::policy::PrincipalRef;

use super::reject::Refusal;
use super::state::{Gateway, WorkerState};

/// One decision, as the request context keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decided {
    pub allowed: bool,
    pub reason: Reason,
    /// The deciding rule (`servers[].rules[i]`), when a rule decided.
    pub rule: Option<u16>,
}

/// Who asks, for the decisions of one request.
#[derive(Default)]
pub struct Access {
    pub principal: Option<PrincipalRef>,
    pub source: Option<IpAddr>,
    /// What was decided, in order (moved into the request context when the request is done).
    pub decided: RefCell<SmallVec<[Decided; 1]>>,
}

impl Access {
    pub fn of(ctx: &super::context::Ctx) -> Self {
        Access {
            principal: ctx.principal.clone(),
            source: ctx.source,
            decided: RefCell::default(),
        }
    }
}

/// The verdict on `item` for `access` on `server`, not recorded.
pub fn verdict(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    access: &Access,
    item: &Item<'_>,
) -> Verdict {
    let Some(rules) = gw.config.servers[server].rules.as_deref() else {
        let reason = if access.principal.is_some() {
            Reason::Authenticated
        } else {
            Reason::Open
        };
        return Verdict::Allow { reason, rule: None };
    };
    let cand = w.rules_memo.candidates(gw.generation, server, rules, item);
    let facts = Facts {
        principal: access.principal.as_deref(),
        source: access.source,
        now_unix: super::unix_now(),
    };
    rules.decide(&cand, item, &facts)
}

/// Decides `item` and records the decision: `Ok` to go on, or the refusal that answers it
/// (hidden: unknown, as if it did not exist; denied: `Forbidden` with the sentence for the
/// model; a missing scope: 403 `insufficient_scope`).
pub fn check(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    access: &Access,
    item: &Item<'_>,
) -> Result<(), Refusal> {
    let v = verdict(w, gw, server, access, item);
    record(access, &v);
    refusal(gw, server, item, v)
}

/// Keeps `v` in the request's decisions.
pub fn record(access: &Access, v: &Verdict) {
    access.decided.borrow_mut().push(Decided {
        allowed: v.allowed(),
        reason: v.reason(),
        rule: v.rule(),
    });
}

/// What the client gets for verdict `v` on `item`.
pub fn refusal(gw: &Gateway, server: usize, item: &Item<'_>, v: Verdict) -> Result<(), Refusal> {
    match v {
        Verdict::Allow { .. } => Ok(()),
        Verdict::Hidden { .. } => Err(match item.kind {
            ItemKind::Tool => {
                Refusal::because(Kind::UnknownName, format!("Unknown tool: {}", item.name))
            }
            ItemKind::Prompt => {
                Refusal::because(Kind::UnknownName, format!("Unknown prompt: {}", item.name))
            }
            ItemKind::Resource => Refusal::because(
                Kind::UnknownName,
                format!("Unknown resource: {}", item.name),
            ),
            ItemKind::Method => Refusal::because(Kind::MethodNotFound, "Method not found"),
        }),
        Verdict::Denied { message, .. } => Err(Refusal::because(Kind::Forbidden, message)),
        Verdict::NeedsScope { scope, .. } => {
            let mut r = Refusal::because(
                Kind::InsufficientScope,
                format!("the access token lacks the scope {scope}"),
            );
            r.challenge = Some(crate::policy::challenge::insufficient_scope(
                gw, server, &scope,
            ));
            Err(r)
        }
    }
}

/// Whether `item` is listed for `access` (no rules: everything is).
pub fn visible(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    access: &Access,
    item: &Item<'_>,
) -> bool {
    let Some(rules) = gw.config.servers[server].rules.as_deref() else {
        return true;
    };
    let cand = w.rules_memo.candidates(gw.generation, server, rules, item);
    rules.visible(&cand, item, access.principal.as_deref())
}

/// An endpoint without rules (passed through to one upstream, or federated only for names and
/// filters): every item a request names is allowed, and recorded as such (`authenticated` when
/// the endpoint knows the caller, `open` when it does not). Endpoints with rules decide per item
/// on the federated path instead.
pub fn pass_through(ctx: &mut super::context::Ctx) {
    let Some(server) = ctx.server else { return };
    if ctx.gw().config.servers[server].rules.is_some() {
        return;
    }
    let reason = if ctx.principal.is_some() {
        Reason::Authenticated
    } else {
        Reason::Open
    };
    let n = ctx
        .messages
        .iter()
        .filter(|m| {
            m.kind == crate::jsonrpc::MessageKind::Request && Item::kind_of(m.method).is_some()
        })
        .count();
    for _ in 0..n {
        ctx.decisions.push(Decided {
            allowed: true,
            reason,
            rule: None,
        });
    }
}
