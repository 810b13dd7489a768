//! One message of a member stream judged: relayed (re-tagged with the client's subscription
//! id), the member's acknowledgement, its end, or dropped. Pure: no I/O.

use serde_json::{json, Value};

use super::super::tables::TableKind;
use super::filter::Filter;
use super::SUBSCRIPTION_ID;

/// What to do with one message of a member stream.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// Relay this (re-tagged) message.
    Relay(Vec<u8>),
    /// The member's acknowledgement: what it honours.
    Ack(Filter),
    /// The member's final result (or an error) to its listen: its stream is over.
    End,
    Drop,
}

/// Judges one message from a member stream (`member_id`: the gateway's id for that listen;
/// `exposed`: whether the endpoint exposes a resource URI, so an update for a sub-resource it
/// hides is dropped). Also returns the list whose change it announces, if any (the routing
/// tables go stale).
pub(super) fn judge(
    msg: &[u8],
    client_id: &Value,
    (filter, exposed): (&Filter, &dyn Fn(&str) -> bool),
    member_id: &str,
) -> (Verdict, Option<TableKind>) {
    let Ok(mut v) = serde_json::from_slice::<Value>(msg) else {
        return (Verdict::Drop, None);
    };
    let Some(o) = v.as_object() else {
        return (Verdict::Drop, None);
    };
    let Some(method) = o.get("method").and_then(Value::as_str) else {
        // A response: the member's own listen ending (a result or an error), or a stray one.
        let ours = o.get("id").and_then(Value::as_str) == Some(member_id);
        return (if ours { Verdict::End } else { Verdict::Drop }, None);
    };
    if o.contains_key("id") {
        // A request: nothing on a listen stream may ask the client anything.
        return (Verdict::Drop, None);
    }
    let (wanted, changed) = match method {
        "notifications/subscriptions/acknowledged" => {
            let honoured = o
                .get("params")
                .and_then(|p| p.get("notifications"))
                .map(Filter::from_json)
                .unwrap_or_default();
            return (Verdict::Ack(honoured), None);
        }
        "notifications/tools/list_changed" => (filter.tools, Some(TableKind::Tools)),
        "notifications/prompts/list_changed" => (filter.prompts, Some(TableKind::Prompts)),
        "notifications/resources/list_changed" => (filter.resources, Some(TableKind::Resources)),
        "notifications/resources/updated" => {
            let uri = o
                .get("params")
                .and_then(|p| p.get("uri"))
                .and_then(Value::as_str);
            (uri.is_some_and(|u| filter.wants_uri(u) && exposed(u)), None)
        }
        // Progress and log messages never go on a listen stream; anything else was not asked.
        _ => (false, None),
    };
    if !wanted {
        return (Verdict::Drop, changed);
    }
    // Re-tagged with the client's subscription id (the member's was its own listen's).
    if !v.get("params").is_some_and(Value::is_object) {
        v["params"] = json!({});
    }
    let params = &mut v["params"];
    if !params.get("_meta").is_some_and(Value::is_object) {
        params["_meta"] = json!({});
    }
    params["_meta"][SUBSCRIPTION_ID] = client_id.clone();
    match serde_json::to_vec(&v) {
        Ok(b) => (Verdict::Relay(b), changed),
        Err(_) => (Verdict::Drop, changed),
    }
}
