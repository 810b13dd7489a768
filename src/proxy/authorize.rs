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
    /// The message decided: its index in the request's messages (`Ctx::messages`). Decisions
    /// are kept in the order they were made, which in a batch is not message order.
    pub msg: u16,
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
    /// The caller's own bearer token, kept only where a member exchanges it (`Ctx::credential`):
    /// every request the gateway makes to a member for this request is made on its behalf.
    pub credential: Option<std::rc::Rc<str>>,
    /// What was decided, in order (moved into the request context when the request is done).
    pub decided: RefCell<SmallVec<[Decided; 1]>>,
}

impl Access {
    pub fn of(ctx: &super::context::Ctx) -> Self {
        Access {
            principal: ctx.principal.clone(),
            source: ctx.source,
            credential: ctx.credential.clone(),
            decided: RefCell::default(),
        }
    }

    /// Who the gateway's requests to members are made for (`Ctx::caller`).
    pub fn caller(&self) -> Option<super::credentials::Caller<'_>> {
        Some(super::credentials::Caller {
            principal: self.principal.as_ref()?.id,
            token: self.credential.as_deref()?,
        })
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
        now_unix: w.shutdown.unix_now(),
    };
    rules.decide(&cand, item, &facts)
}

/// Keeps `v`, the decision on message `msg`, in the request's decisions.
pub fn record(access: &Access, v: &Verdict, msg: u16) {
    access.decided.borrow_mut().push(Decided {
        msg,
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

/// The Rego policy's verdict on `item` (after the rules allowed it), when the server has one:
/// `body` is the request message (its `params.arguments` keys go into the input). A deny is
/// `Denied` (a tool result with the policy's message, or a sentence of ours); an evaluation
/// error denies too (`rego_error`).
pub fn rego_verdict(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    access: &Access,
    item: &Item<'_>,
    body: &[u8],
) -> Option<Verdict> {
    let s = &gw.config.servers[server];
    let rego = s.rego.as_ref()?;
    let policy = {
        let mut slot = w.rego.borrow_mut();
        if slot.0 != gw.generation {
            *slot = (gw.generation, vec![None; gw.config.servers.len()]);
        }
        slot.1[server]
            .get_or_insert_with(|| {
                std::rc::Rc::new(crate::policy::rego::RegoPolicy::new(
                    rego.program.clone(),
                    &s.path,
                ))
            })
            .clone()
    };
    let anonymous;
    let principal = match access.principal.as_deref() {
        Some(p) => p,
        None => {
            anonymous = crate::policy::Principal::anonymous();
            &anonymous
        }
    };
    let mut input = crate::policy::rego::RegoInput {
        principal,
        server: &s.path,
        upstream: item.upstream.map(|u| gw.upstreams[u].name.as_str()),
        method: item.method.as_str(),
        tool: Some(item.name),
        argument_keys: &[],
        annotations: None,
        time_unix: w.shutdown.unix_now(),
        source: access.source,
    };
    // A cached decision is found by who, where and what alone: the body is scanned for the
    // argument keys, and the annotations written out, only when the policy has to run.
    let (scanned, keys, annotations);
    let d = match policy.cached_decision(&input) {
        Some(d) => d,
        None => {
            scanned = match crate::jsonrpc::scan(body, &gw.scan_limits) {
                Ok(crate::jsonrpc::Body::Single(m)) => m
                    .argument_keys()
                    .collect::<Vec<std::borrow::Cow<'_, str>>>(),
                _ => Vec::new(),
            };
            keys = scanned.iter().map(|k| k.as_ref()).collect::<Vec<&str>>();
            annotations = (item.kind == ItemKind::Tool).then(|| annotations_json(item.annotations));
            input.argument_keys = &keys;
            input.annotations = annotations.as_deref();
            policy.decide(&input)
        }
    };
    let reason = if &*d.reason == "rego_error" {
        Reason::RegoError
    } else {
        Reason::Rego
    };
    Some(if d.allow {
        Verdict::Allow { reason, rule: None }
    } else {
        let message = d.message.map(String::from).unwrap_or_else(|| {
            format!(
                "{} is not allowed for you by this endpoint's policy ({}); do not retry it.",
                item.name, d.reason
            )
        });
        Verdict::Denied {
            reason,
            rule: None,
            message,
        }
    })
}

/// A tool's annotations as a JSON object, from its flags (the MCP defaults filled in).
fn annotations_json(flags: u8) -> Vec<u8> {
    use crate::policy::rules::ann;
    let mut o = serde_json::Map::new();
    for (name, bit) in ann::NAMES {
        o.insert(name.into(), serde_json::Value::Bool(flags & bit != 0));
    }
    serde_json::to_vec(&o).unwrap_or_default()
}

/// Decides `item` (the rules, then the Rego policy when they allowed it) and records the
/// decision: `Ok` to go on, or the refusal that answers it (hidden: unknown, as if it did not
/// exist; denied: `Forbidden` with the sentence for the model; a missing scope: 403
/// `insufficient_scope`). `msg` is the index of the message that names `item`.
pub fn check_all(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    access: &Access,
    (item, msg): (&Item<'_>, u16),
    body: &[u8],
) -> Result<(), Refusal> {
    let v = verdict(w, gw, server, access, item);
    let v = match v {
        Verdict::Allow { .. } => rego_verdict(w, gw, server, access, item, body).unwrap_or(v),
        other => other,
    };
    record(access, &v, msg);
    refusal(gw, server, item, v)
}

/// Whether `item` may be used by `access` here and now: the rules, then the Rego policy, allow
/// it (not recorded). What a completion's reference and a resource update on a listen stream
/// are held to: not merely visible, but usable.
pub fn usable(
    w: &WorkerState,
    gw: &Gateway,
    server: usize,
    access: &Access,
    item: &Item<'_>,
) -> bool {
    verdict(w, gw, server, access, item).allowed()
        && rego_verdict(w, gw, server, access, item, b"").is_none_or(|v| v.allowed())
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
/// the endpoint knows the caller, `open` when it does not). A federated endpoint decides (and
/// records) per item on the federated path instead, rules or not: recording here too would count
/// each decision twice.
pub fn pass_through(ctx: &mut super::context::Ctx) {
    let Some(server) = ctx.server else { return };
    let s = &ctx.gw().config.servers[server];
    if s.rules.is_some() || s.federated() {
        return;
    }
    let reason = if ctx.principal.is_some() {
        Reason::Authenticated
    } else {
        Reason::Open
    };
    let decided: SmallVec<[Decided; 1]> = ctx
        .messages
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            m.kind == crate::jsonrpc::MessageKind::Request && Item::kind_of(m.method).is_some()
        })
        .map(|(i, _)| Decided {
            msg: msg_index(i),
            allowed: true,
            reason,
            rule: None,
        })
        .collect();
    ctx.decisions.extend(decided);
}

/// Message index `i` as a decision keeps it (a batch is far shorter than `u16::MAX`; a longer
/// one saturates, and its later messages show no decision in the audit log).
pub fn msg_index(i: usize) -> u16 {
    u16::try_from(i).unwrap_or(u16::MAX)
}
