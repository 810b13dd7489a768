//! Optional OPA Rego policies (`servers[].rego`), evaluated in-process by regorus: a
//! `RegoProgram` is compiled once per config generation (shared, read-only); each worker builds
//! its own `RegoPolicy` from it (a cloned engine, its own decision cache), so the request path
//! takes no lock. Pure decision code: no I/O, `now` comes in the input. Errors fail closed.

mod cache;

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use regorus::{Engine, Value};

use super::Principal;
use cache::DecisionCache;

/// The query evaluated when `servers[].rego.query` is not set.
pub const DEFAULT_QUERY: &str = "data.tollgate.decision";
/// Reason codes when the policy gives none, and the one for a failed evaluation.
pub const REASON_ALLOW: &str = "rego_allow";
pub const REASON_DENY: &str = "rego_deny";
pub const REASON_ERROR: &str = "rego_error";

/// What a policy decides on: one request (a JSON-RPC request on `server`) by one principal.
/// The document the policy reads as `input` is built from it (see ARCHITECTURE.md, "Rego input").
pub struct RegoInput<'a> {
    pub principal: &'a Principal,
    /// The endpoint path (`servers[].path`).
    pub server: &'a str,
    /// The upstream the request is routed to, when known.
    pub upstream: Option<&'a str>,
    /// `tools/call`, `tools/list`, `prompts/get`, `resources/read`, ...
    pub method: &'a str,
    /// The tool or prompt name, or the resource URI (`params.name` / `params.uri`).
    pub tool: Option<&'a str>,
    /// The top-level keys of `params.arguments` (never their values).
    pub argument_keys: &'a [&'a str],
    /// The tool's `annotations` object as JSON bytes, when known.
    pub annotations: Option<&'a [u8]>,
    /// Now, in Unix seconds.
    pub time_unix: u64,
    /// The client's address.
    pub source: Option<IpAddr>,
}

/// A policy's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegoDecision {
    pub allow: bool,
    /// The reason code (metrics label, access log, audit record): the policy's `reason`, else
    /// `rego_allow` / `rego_deny`; `rego_error` when the evaluation failed.
    pub reason: Box<str>,
    /// A sentence for the model when denied (the policy's `message`).
    pub message: Option<Box<str>>,
    /// The policy said the decision holds for every request with the same (principal, server,
    /// method, tool): it may be cached.
    pub cacheable: bool,
}

impl RegoDecision {
    /// The fail-closed decision for an evaluation that went wrong.
    pub fn error() -> Self {
        RegoDecision {
            allow: false,
            reason: REASON_ERROR.into(),
            message: None,
            cacheable: false,
        }
    }
}

/// Why a policy could not decide. Every one is a deny (`RegoDecision::error`, reason
/// `rego_error`), logged (rate-limited) and counted in `tollgate_rego_errors_total{kind}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegoError {
    /// The query's value is undefined for this input (no rule body matched, no default).
    Undefined,
    /// The query's value is not a bool or an object `{allow: bool, reason?, message?, cacheable?}`
    /// of those types, or its `reason` is not a usable reason code.
    WrongType(String),
    /// regorus reported an error while evaluating (a builtin failed, a conflict between rules).
    Runtime(String),
    /// The input could not be built (the tool's annotations are not a JSON object).
    Input(String),
}

impl RegoError {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RegoError::Undefined => "undefined",
            RegoError::WrongType(_) => "wrong_type",
            RegoError::Runtime(_) => "runtime",
            RegoError::Input(_) => "input",
        }
    }

    pub const KINDS: [&'static str; 4] = ["undefined", "wrong_type", "runtime", "input"];
}

impl fmt::Display for RegoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegoError::Undefined => f.write_str("the decision is undefined for this input"),
            RegoError::WrongType(why) => write!(f, "the decision has the wrong shape: {why}"),
            RegoError::Runtime(why) => write!(f, "evaluation failed: {why}"),
            RegoError::Input(why) => write!(f, "the input could not be built: {why}"),
        }
    }
}

impl std::error::Error for RegoError {}

/// A compiled policy: the files parsed and the engine prepared once, at config load (and
/// reload). Read-only and `Send + Sync` (regorus's `arc` feature); workers clone its engine.
pub struct RegoProgram {
    engine: Engine,
    query: String,
    cache_entries: usize,
    cache_ttl: Duration,
}

impl fmt::Debug for RegoProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegoProgram")
            .field("query", &self.query)
            .field("cache_entries", &self.cache_entries)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

/// A problem compiling a program, for the config loader to report at the right key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompileProblem {
    /// `policy[index]` (or `policy` when it is one string): unreadable or a syntax error.
    Policy { index: usize, problem: String },
    /// `query`: not a rule path, or no rule there.
    Query(String),
}

/// A policy source: its name in messages (the file path) and its text.
pub struct PolicySource {
    pub name: String,
    pub text: String,
}

impl RegoProgram {
    /// Parses `sources` and checks that `query` names a rule by evaluating it once on an input
    /// with every field empty (which also prepares the engine, so workers clone a ready one).
    pub fn compile(
        sources: &[PolicySource],
        query: &str,
        cache_entries: usize,
        cache_ttl: Duration,
    ) -> Result<RegoProgram, Vec<CompileProblem>> {
        let mut engine = Engine::new();
        let mut problems = Vec::new();
        for (index, s) in sources.iter().enumerate() {
            if let Err(e) = engine.add_policy(s.name.clone(), s.text.clone()) {
                problems.push(CompileProblem::Policy {
                    index,
                    problem: one_line(&e.to_string()),
                });
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        if !is_rule_path(query) {
            return Err(vec![CompileProblem::Query(format!(
                "expected a rule path like {DEFAULT_QUERY}, got {query:?}"
            ))]);
        }
        engine.set_input(empty_input());
        if let Err(e) = engine.eval_rule(query.to_string()) {
            return Err(vec![CompileProblem::Query(one_line(&e.to_string()))]);
        }
        Ok(RegoProgram {
            engine,
            query: query.to_string(),
            cache_entries,
            cache_ttl,
        })
    }
}

impl RegoProgram {
    /// Stops any one evaluation after `limit` (regorus checks its clock every few steps): the
    /// evaluation fails, which denies like any error (`rego_error`). Workers' engines are
    /// clones, so they carry it.
    pub fn with_eval_timeout(mut self, limit: Duration) -> RegoProgram {
        self.engine
            .set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
                limit,
                check_interval: std::num::NonZeroU32::new(32).expect("nonzero"),
            });
        self
    }
}

/// `data.a.b`: `data` then one or more dot-separated identifiers.
fn is_rule_path(q: &str) -> bool {
    let mut parts = q.split('.');
    parts.next() == Some("data")
        && q.len() > 5
        && parts.all(|p| {
            let mut c = p.chars();
            matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
                && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        })
}

/// regorus's multi-line error (`--> file:3:1`, the source line, a caret, `error: …`) as one
/// line: `file:3:1: …`.
fn one_line(msg: &str) -> String {
    let loc = msg
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "))
        .map(str::trim);
    let what = msg
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("error: "))
        .map(str::trim);
    match (loc, what) {
        (Some(loc), Some(what)) => format!("{loc}: {what}"),
        _ => msg.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// The per-worker evaluator of one server's program: a clone of the prepared engine (made on
/// first use), a bounded decision cache, and the error counters. Not `Sync`: one worker owns it.
pub struct RegoPolicy {
    program: Arc<RegoProgram>,
    engine: OnceCell<RefCell<Engine>>,
    cache: RefCell<DecisionCache>,
    errors: [metrics::Counter; 4],
    /// Rate limit for error logs: the second the last one was written (`u64::MAX`: none yet),
    /// and how many were left out since.
    last_log: Cell<u64>,
    suppressed: Cell<u64>,
}

impl RegoPolicy {
    /// The evaluator of `program` for one worker; `server` (the endpoint path) labels its metrics.
    pub fn new(program: Arc<RegoProgram>, server: &str) -> Self {
        let errors = RegoError::KINDS.map(|kind| {
            metrics::counter!(crate::observe::names::REGO_ERRORS_TOTAL,
                "server" => server.to_owned(), "kind" => kind)
        });
        let cache = DecisionCache::new(program.cache_entries, program.cache_ttl);
        RegoPolicy {
            program,
            engine: OnceCell::new(),
            cache: RefCell::new(cache),
            errors,
            last_log: Cell::new(u64::MAX),
            suppressed: Cell::new(0),
        }
    }

    /// Decides on `input`: from the cache when an earlier decision for the same (principal,
    /// server, method, tool) said `cacheable: true` and has not expired, else by evaluating the
    /// policy. An error is logged (at most once a second per worker and server) and counted;
    /// the caller denies with `RegoDecision::error()` (or calls `decide`).
    pub fn evaluate(&self, input: &RegoInput) -> Result<RegoDecision, RegoError> {
        if let Some(d) = self.cache.borrow_mut().get(input) {
            return Ok(d);
        }
        match self.evaluate_uncached(input) {
            Ok(d) => {
                if d.cacheable {
                    self.cache.borrow_mut().insert(input, &d);
                }
                Ok(d)
            }
            Err(e) => {
                self.record_error(&e, input);
                Err(e)
            }
        }
    }

    /// The cached decision for `input`, if any. The key is the principal, server, method and
    /// tool (a cacheable decision must read nothing else), so a caller may ask before it builds
    /// the rest of the input.
    pub fn cached_decision(&self, input: &RegoInput) -> Option<RegoDecision> {
        self.cache.borrow_mut().get(input)
    }

    /// `evaluate`, with an error turned into the fail-closed deny (reason `rego_error`).
    pub fn decide(&self, input: &RegoInput) -> RegoDecision {
        self.evaluate(input)
            .unwrap_or_else(|_| RegoDecision::error())
    }

    /// Decisions in this worker's cache now (expired ones included until they are evicted).
    pub fn cached(&self) -> usize {
        self.cache.borrow().len()
    }

    fn evaluate_uncached(&self, input: &RegoInput) -> Result<RegoDecision, RegoError> {
        let doc = input_document(input)?;
        let engine = self
            .engine
            .get_or_init(|| RefCell::new(self.program.engine.clone()));
        let mut engine = engine.borrow_mut();
        engine.set_input(doc);
        let value = engine
            .eval_rule(self.program.query.clone())
            .map_err(|e| RegoError::Runtime(one_line(&e.to_string())))?;
        decision(&value)
    }

    fn record_error(&self, e: &RegoError, input: &RegoInput) {
        let i = RegoError::KINDS
            .iter()
            .position(|k| *k == e.kind())
            .unwrap_or(0);
        self.errors[i].increment(1);
        if self.last_log.get() == input.time_unix {
            self.suppressed.set(self.suppressed.get() + 1);
            return;
        }
        self.last_log.set(input.time_unix);
        let suppressed = self.suppressed.replace(0);
        tracing::warn!(
            server = input.server,
            method = input.method,
            tool = input.tool.unwrap_or(""),
            kind = e.kind(),
            suppressed,
            "rego policy failed, request denied (rego_error): {e}"
        );
    }
}

/// The decision document → `RegoDecision`.
fn decision(v: &Value) -> Result<RegoDecision, RegoError> {
    let default = |allow: bool| if allow { REASON_ALLOW } else { REASON_DENY };
    match v {
        Value::Undefined => Err(RegoError::Undefined),
        Value::Bool(allow) => Ok(RegoDecision {
            allow: *allow,
            reason: default(*allow).into(),
            message: None,
            cacheable: false,
        }),
        Value::Object(o) => {
            let field = |k: &str| o.get(&Value::from(k));
            let allow = match field("allow") {
                Some(Value::Bool(b)) => *b,
                Some(other) => return Err(wrong("allow", "a bool", other)),
                None => return Err(RegoError::WrongType("no \"allow\"".into())),
            };
            let reason: Box<str> = match field("reason") {
                None | Some(Value::Null) => default(allow).into(),
                Some(Value::String(s)) if is_reason_code(s) => (&**s).into(),
                Some(other) => {
                    return Err(wrong(
                        "reason",
                        "a reason code of 1 to 64 characters [A-Za-z0-9_.-]",
                        other,
                    ))
                }
            };
            let message = match field("message") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some((&**s).into()),
                Some(other) => return Err(wrong("message", "a string", other)),
            };
            let cacheable = match field("cacheable") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => return Err(wrong("cacheable", "a bool", other)),
            };
            Ok(RegoDecision {
                allow,
                reason,
                message,
                cacheable,
            })
        }
        other => Err(RegoError::WrongType(format!(
            "expected a bool or an object, got {}",
            describe(other)
        ))),
    }
}

fn wrong(key: &str, expected: &str, got: &Value) -> RegoError {
    RegoError::WrongType(format!(
        "\"{key}\" must be {expected}, got {}",
        describe(got)
    ))
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        let mut end = 60;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

/// A reason code is a metric label: short, and from a small alphabet.
fn is_reason_code(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn obj(fields: Vec<(&str, Value)>) -> Value {
    Value::from(
        fields
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn opt_str(s: Option<&str>) -> Value {
    s.map_or(Value::Null, Value::from)
}

fn strings(list: &[Box<str>]) -> Value {
    Value::from(list.iter().map(|s| Value::from(&**s)).collect::<Vec<_>>())
}

/// Lower-case hex of the principal's 16-byte id.
fn hex(id: &[u8; 16]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(32);
    for b in id {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The `input` document (its shape is documented in ARCHITECTURE.md under src/policy/).
fn input_document(i: &RegoInput) -> Result<Value, RegoError> {
    let p = i.principal;
    let principal = obj(vec![
        ("id", Value::from(hex(&p.id))),
        ("source", Value::from(p.source.as_str())),
        ("subject", Value::from(&*p.subject)),
        ("client", opt_str(p.client.as_deref())),
        ("tenant", opt_str(p.tenant.as_deref())),
        ("roles", strings(&p.roles)),
        ("scopes", strings(&p.scopes)),
        ("expires_at", p.expires_at.map_or(Value::Null, Value::from)),
    ]);
    let annotations = match i.annotations {
        None => Value::Null,
        Some(bytes) => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| RegoError::Input("annotations are not UTF-8".into()))?;
            let v = Value::from_json_str(text).map_err(|e| {
                RegoError::Input(format!("annotations: {}", one_line(&e.to_string())))
            })?;
            if !matches!(v, Value::Object(_)) {
                return Err(RegoError::Input("annotations are not a JSON object".into()));
            }
            v
        }
    };
    let is_resource = i.method.starts_with("resources/");
    Ok(obj(vec![
        ("principal", principal),
        ("server", Value::from(i.server)),
        ("upstream", opt_str(i.upstream)),
        ("method", Value::from(i.method)),
        ("tool", opt_str(i.tool)),
        ("name", opt_str(i.tool.filter(|_| !is_resource))),
        ("uri", opt_str(i.tool.filter(|_| is_resource))),
        (
            "arguments",
            Value::from(
                i.argument_keys
                    .iter()
                    .map(|k| Value::from(*k))
                    .collect::<Vec<_>>(),
            ),
        ),
        ("annotations", annotations),
        ("time", Value::from(i.time_unix)),
        (
            "source",
            i.source.map_or(Value::Null, |a| Value::from(a.to_string())),
        ),
    ]))
}

/// The input with every field empty: what `compile` evaluates the query on once.
fn empty_input() -> Value {
    let principal = Principal::anonymous();
    let input = RegoInput {
        principal: &principal,
        server: "",
        upstream: None,
        method: "",
        tool: None,
        argument_keys: &[],
        annotations: None,
        time_unix: 0,
        source: None,
    };
    input_document(&input).unwrap_or_else(|_| Value::new_object())
}

#[cfg(test)]
mod tests;
