//! Task ids (2025-11-25 tasks) across a federated endpoint: an upstream's task id reaches the
//! client as a gateway task id (`IdMapper::tasks`: `"tgt~…"`, naming the upstream, bound to the
//! client session, HMAC-tagged, no table), and a gateway task id the client sends is restored to
//! the upstream's own. Pure: bytes in, bytes out; only task ids change, spliced in place.
//!
//! Where an upstream's task ids are, in what it sends the client: a response's
//! `result.task.taskId` (CreateTaskResult), `result.taskId` (tasks/get, tasks/cancel),
//! `result._meta["io.modelcontextprotocol/related-task"].taskId` (tasks/result);
//! `params.taskId` of `notifications/tasks/status`; and the related-task `_meta` of any
//! notification or server→client request. A server→client request's `params.taskId`
//! (`tasks/get` sent *to* the client) names a task the client owns: never rewritten.
//! (`tasks/list` items are rewritten where the list is aggregated.)

use std::ops::Range;

use crate::jsonrpc::{Message, MessageKind};
use crate::mcp::idmap::{IdError, IdMapper, WrapError};

/// The `_meta` key that ties a message to a task.
pub const RELATED_TASK: &str = "io.modelcontextprotocol/related-task";

/// The byte range of the JSON string at `path` in `msg`, if there is one there.
fn string_at(msg: &[u8], path: &[&str]) -> Option<Range<usize>> {
    use sonic_rs::JsonValueTrait;
    let v = sonic_rs::get(msg, path).ok()?;
    if !v.is_str() {
        return None;
    }
    let raw = v.as_raw_str().as_bytes();
    // The raw text lies in `msg` (sonic reads the input in place): its offset is found by
    // address, checked to be in bounds.
    let start = (raw.as_ptr() as usize).checked_sub(msg.as_ptr() as usize)?;
    let end = start.checked_add(raw.len())?;
    (end <= msg.len() && &msg[start..end] == raw).then_some(start..end)
}

/// The paths of upstream task ids in message `m` (see the module's documentation).
fn paths(m: &Message<'_>) -> &'static [&'static [&'static str]] {
    const RESPONSE: &[&[&str]] = &[
        &["result", "task", "taskId"],
        &["result", "taskId"],
        &["result", "_meta", RELATED_TASK, "taskId"],
    ];
    const STATUS: &[&[&str]] = &[
        &["params", "taskId"],
        &["params", "_meta", RELATED_TASK, "taskId"],
    ];
    const RELATED: &[&[&str]] = &[&["params", "_meta", RELATED_TASK, "taskId"]];
    match m.kind {
        MessageKind::Response => RESPONSE,
        MessageKind::Error => &[],
        MessageKind::Notification
            if m.method.as_ref().map(|s| &*s.value) == Some("notifications/tasks/status") =>
        {
            STATUS
        }
        MessageKind::Notification | MessageKind::Request => RELATED,
    }
}

/// The edits (ranges of `data`, new JSON text) that give the client gateway task ids in
/// message `m` of `data` from upstream `upstream`. Nothing when `data` names no `taskId`.
pub fn wrap_edits(
    data: &[u8],
    m: &Message<'_>,
    mapper: &IdMapper,
    session: &[u8; 16],
    upstream: u64,
) -> Result<Vec<(Range<usize>, String)>, WrapError> {
    let mut edits = Vec::new();
    let Some(msg) = data.get(m.span.clone()) else {
        return Ok(edits);
    };
    if memchr::memmem::find(msg, b"taskId").is_none() {
        return Ok(edits);
    }
    for path in paths(m) {
        if let Some(r) = string_at(msg, path) {
            let new = mapper.wrap(session, upstream, &msg[r.clone()])?;
            edits.push((m.span.start + r.start..m.span.start + r.end, new));
        }
    }
    Ok(edits)
}

/// A message from upstream `upstream` (one JSON-RPC message, not a batch) with its task ids
/// wrapped; `None` when there were none.
pub fn wrap_message(
    msg: &[u8],
    m: &Message<'_>,
    mapper: &IdMapper,
    session: &[u8; 16],
    upstream: u64,
) -> Result<Option<Vec<u8>>, WrapError> {
    let edits = wrap_edits(msg, m, mapper, session, upstream)?;
    if edits.is_empty() {
        return Ok(None);
    }
    let mut e: Vec<(Range<usize>, &[u8])> = edits
        .iter()
        .map(|(r, s)| (r.clone(), s.as_bytes()))
        .collect();
    Ok(Some(crate::mcp::relay::splice(msg, &mut e)))
}

/// Why a client's task id does not name a task it may reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskIdError {
    /// Not a task id this gateway issued (any other string).
    NotOurs,
    /// Shaped like one, but not issued to this session (forged, or from another session).
    Foreign,
}

impl From<IdError> for TaskIdError {
    fn from(e: IdError) -> Self {
        match e {
            IdError::NotOurs => TaskIdError::NotOurs,
            IdError::Forged => TaskIdError::Foreign,
        }
    }
}

/// The upstream (stable id) and its own task id (JSON string text) behind the gateway task id
/// `text` (JSON string text, as the scanner read it) in client session `session`.
pub fn open(
    mapper: &IdMapper,
    session: &[u8; 16],
    text: &[u8],
) -> Result<(u64, Vec<u8>), TaskIdError> {
    Ok(mapper.unwrap(session, text)?)
}

/// A client message toward upstream `upstream` with the gateway task id in its related-task
/// `_meta` (`params._meta` or `result._meta`) restored; `None` when it has none of ours. A
/// gateway task id of another upstream or session is an error.
pub fn restore_related(
    msg: &[u8],
    mapper: &IdMapper,
    session: &[u8; 16],
    upstream: u64,
) -> Result<Option<Vec<u8>>, TaskIdError> {
    if memchr::memmem::find(msg, b"taskId").is_none() {
        return Ok(None);
    }
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    for top in ["params", "result"] {
        if let Some(r) = string_at(msg, &[top, "_meta", RELATED_TASK, "taskId"]) {
            match mapper.unwrap(session, &msg[r.clone()]) {
                Ok((u, original)) if u == upstream => edits.push((r, original)),
                Ok(_) => return Err(TaskIdError::Foreign),
                Err(IdError::NotOurs) => {}
                Err(IdError::Forged) => return Err(TaskIdError::Foreign),
            }
        }
    }
    if edits.is_empty() {
        return Ok(None);
    }
    let mut e: Vec<(Range<usize>, &[u8])> = edits
        .iter()
        .map(|(r, s)| (r.clone(), s.as_slice()))
        .collect();
    Ok(Some(crate::mcp::relay::splice(msg, &mut e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::{scan, Body, ScanLimits};

    const S: [u8; 16] = [7; 16];

    fn wrapped(msg: &str) -> String {
        let mapper = IdMapper::tasks(&[1; 32]);
        let Ok(Body::Single(m)) = scan(msg.as_bytes(), &ScanLimits::default()) else {
            panic!("not a message: {msg}");
        };
        let out = wrap_message(msg.as_bytes(), &m, &mapper, &S, 5).unwrap();
        String::from_utf8(out.unwrap_or_else(|| msg.as_bytes().to_vec())).unwrap()
    }

    fn task_id_of(v: &serde_json::Value) -> (u64, Vec<u8>) {
        let mapper = IdMapper::tasks(&[1; 32]);
        let text = serde_json::to_vec(v).unwrap();
        open(&mapper, &S, &text).unwrap()
    }

    #[test]
    fn upstream_task_ids_are_wrapped_where_the_spec_puts_them() {
        let created = wrapped(
            r#"{"jsonrpc":"2.0","id":1.50,"result":{"task":{"taskId":"t-1","status":"working"}}}"#,
        );
        assert!(
            created.starts_with(r#"{"jsonrpc":"2.0","id":1.50,"#),
            "{created}"
        );
        let v: serde_json::Value = serde_json::from_str(&created).unwrap();
        assert_eq!(
            task_id_of(&v["result"]["task"]["taskId"]),
            (5, br#""t-1""#.to_vec())
        );

        let got =
            wrapped(r#"{"jsonrpc":"2.0","id":2,"result":{"taskId":"t-1","status":"completed"}}"#);
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(task_id_of(&v["result"]["taskId"]).1, br#""t-1""#.to_vec());

        let result = wrapped(
            r#"{"jsonrpc":"2.0","id":3,"result":{"content":[],"_meta":{"io.modelcontextprotocol/related-task":{"taskId":"t-1"}}}}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&result).unwrap();
        let related = &v["result"]["_meta"][RELATED_TASK]["taskId"];
        assert_eq!(task_id_of(related).1, br#""t-1""#.to_vec());

        let status = wrapped(
            r#"{"jsonrpc":"2.0","method":"notifications/tasks/status","params":{"taskId":"t-1","status":"working"}}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(task_id_of(&v["params"]["taskId"]).1, br#""t-1""#.to_vec());
    }

    #[test]
    fn a_task_the_client_owns_is_left_alone() {
        // tasks/get sent to the client: the task is the client's own.
        let poll = r#"{"jsonrpc":"2.0","id":"tg~x","method":"tasks/get","params":{"taskId":"client-task"}}"#;
        assert_eq!(wrapped(poll), poll);
        // An elicitation for an upstream task: its related-task names the upstream's task.
        let ask = wrapped(
            r#"{"jsonrpc":"2.0","id":4,"method":"elicitation/create","params":{"message":"?","_meta":{"io.modelcontextprotocol/related-task":{"taskId":"t-9"}}}}"#,
        );
        assert!(ask.contains("tgt~"), "{ask}");
        let plain = r#"{"jsonrpc":"2.0","id":5,"result":{"content":[]}}"#;
        assert_eq!(wrapped(plain), plain);
    }

    #[test]
    fn related_task_ids_are_restored_only_for_their_upstream_and_session() {
        let mapper = IdMapper::tasks(&[1; 32]);
        let t = mapper.wrap(&S, 5, br#""t-1""#).unwrap();
        let answer = format!(
            r#"{{"jsonrpc":"2.0","id":"tg~a","result":{{"action":"accept","_meta":{{"{RELATED_TASK}":{{"taskId":{t}}}}}}}}}"#
        );
        let back = restore_related(answer.as_bytes(), &mapper, &S, 5)
            .unwrap()
            .unwrap();
        assert!(String::from_utf8(back)
            .unwrap()
            .contains(r#""taskId":"t-1""#));
        assert_eq!(
            restore_related(answer.as_bytes(), &mapper, &S, 6),
            Err(TaskIdError::Foreign)
        );
        assert_eq!(
            restore_related(answer.as_bytes(), &mapper, &[8; 16], 5),
            Err(TaskIdError::Foreign)
        );
        assert_eq!(open(&mapper, &S, br#""t-1""#), Err(TaskIdError::NotOurs));
    }
}
