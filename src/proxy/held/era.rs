//! Which era an upstream speaks: configured (`upstreams[].era`), or learned by sending it a
//! `server/discover` of the stateless revision (one probe per worker and upstream at a time)
//! and kept for `ERA_TTL` in `Held::eras`. Only a JSON-RPC answer decides (`decided`).

use std::time::{Duration, Instant};

use sonic_rs::{JsonContainerTrait, JsonValueTrait};

use crate::config::UpstreamEra;
use crate::mcp::ProtocolVersion;

use super::super::federate::exchange;
use super::super::state::{Gateway, WorkerState};
use super::Held;

/// How long a learned era holds before the upstream is asked again.
const ERA_TTL: Duration = Duration::from_secs(300);
/// How often a request that waits for another one's era probe (the first for an upstream on
/// this worker) looks again; bounded by the upstream's request_timeout.
const PROBE_WAIT_STEP: Duration = Duration::from_millis(2);

/// The era an upstream speaks, as far as the gateway translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    Session,
    Stateless,
}

impl Held {
    /// The era of upstream `u` if it is configured or was learned recently.
    pub fn era_now(&self, gw: &Gateway, u: usize, now: Instant) -> Option<Era> {
        match gw.config.upstreams[u].era {
            UpstreamEra::Session => Some(Era::Session),
            UpstreamEra::Stateless => Some(Era::Stateless),
            UpstreamEra::Auto => self
                .eras
                .borrow()
                .get(&gw.upstreams[u].id)
                .filter(|(_, at)| now.saturating_duration_since(*at) < ERA_TTL)
                .map(|(e, _)| *e),
        }
    }
}

/// The era of upstream `u`: configured, learned, or learned now by sending it a
/// `server/discover` of the stateless revision (an upstream that answers it with a result naming
/// 2026-07-28 speaks it; a JSON-RPC answer that does not means sessions; see `decided`). The
/// probe is made for `caller` (an upstream with `token_exchange` answers nobody else); what it
/// learns is the upstream's, kept for every caller, so a reply that decides nothing (this
/// caller refused, no answer) is not kept, and this request goes as to a session-era upstream.
pub async fn era(w: &WorkerState, gw: &Gateway, u: usize, caller: exchange::Caller<'_>) -> Era {
    let now = w.shutdown.now();
    if let Some(e) = w.held.era_now(gw, u, now) {
        return e;
    }
    // One probe per worker and upstream at a time: the others use the era learned before
    // (it is being asked again), or, the first time, wait for the answer.
    let id = gw.upstreams[u].id;
    if !w.held.probing.borrow_mut().insert(id) {
        if let Some((e, _)) = w.held.eras.borrow().get(&id) {
            return *e;
        }
        let deadline = now + gw.upstreams[u].request_timeout;
        loop {
            monoio::time::sleep(PROBE_WAIT_STEP).await;
            let now = w.shutdown.now();
            if let Some(e) = w.held.era_now(gw, u, now) {
                return e;
            }
            // The probe learned nothing to keep (the upstream failed): as it decided.
            if !w.held.probing.borrow().contains(&id) || now >= deadline {
                return Era::Session;
            }
        }
    }
    struct Unprobe<'a>(&'a Held, u64);
    impl Drop for Unprobe<'_> {
        fn drop(&mut self) {
            self.0.probing.borrow_mut().remove(&self.1);
        }
    }
    let _probe = Unprobe(&w.held, id);
    let v = crate::mcp::modern::STATELESS_VERSIONS[0].as_str();
    let body = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":\"tollgate-era\",\"method\":\"server/discover\",\"params\":{{\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"{v}\",\"io.modelcontextprotocol/clientCapabilities\":{{}}}}}}}}"
    );
    let mut headers = Vec::new();
    crate::http::response::header(&mut headers, b"mcp-protocol-version", v.as_bytes());
    crate::http::response::header(&mut headers, b"mcp-method", b"server/discover");
    let req = exchange::post_request(gw, u, None, &headers, body.as_bytes());
    let era = match exchange::whole(w, gw, (u, 0), req, caller).await {
        Ok(reply) => match decided(&reply) {
            Some(era) => era,
            // Nothing decided (see `decided`): this request goes as to a session-era upstream,
            // and the next one asks again.
            None => return Era::Session,
        },
        // Unreachable: likewise.
        Err(_) => return Era::Session,
    };
    tracing::info!(upstream = %gw.upstreams[u].name, era = ?era, "learned the upstream's protocol era");
    w.held
        .eras
        .borrow_mut()
        .insert(gw.upstreams[u].id, (era, w.shutdown.now()));
    era
}

/// The era a reply to the probe decides, if any. It is the upstream's for every caller, while
/// the probe is made with one caller's credential: only a JSON-RPC answer decides. Our id's
/// result (2xx) names 2026-07-28 or does not. A JSON-RPC error (for our id or another) means
/// sessions only when it is how a session-era server refuses the probe (`session_era_error`):
/// any other error (invalid params, an internal error, an application code) may be this
/// request's or this caller's, and decides nothing. Neither do 401/403 (this caller's
/// credential), 408/429/5xx (may pass), and a body that is no JSON-RPC answer (a proxy's or
/// framework's error page).
fn decided(reply: &exchange::Reply) -> Option<Era> {
    if reply.status >= 500 || matches!(reply.status, 401 | 403 | 408 | 429) {
        return None;
    }
    let code = |v: &sonic_rs::Value| v.get("error")?.get("code")?.as_i64();
    match exchange::find_response(reply, PROBE_ID) {
        Some((msg, crate::jsonrpc::MessageKind::Error)) => {
            let v: sonic_rs::Value = sonic_rs::from_slice(&msg).ok()?;
            session_era_error(reply.status, code(&v)?).then_some(Era::Session)
        }
        Some((msg, _)) if (200..300).contains(&reply.status) => {
            let v: sonic_rs::Value = sonic_rs::from_slice(&msg).ok()?;
            let result = v.get("result")?;
            Some(if names_stateless(result) {
                Era::Stateless
            } else {
                Era::Session
            })
        }
        Some(_) => None,
        // An error under another id (`null`, which the scanner refuses, or the Python SDK's
        // "server-error"): read whole (the probe is rare).
        None if !reply.sse => {
            let v: sonic_rs::Value = sonic_rs::from_slice(&reply.body).ok()?;
            let jsonrpc = v.get("jsonrpc").and_then(|j| j.as_str()) == Some("2.0");
            (jsonrpc && session_era_error(reply.status, code(&v)?)).then_some(Era::Session)
        }
        None => None,
    }
}

/// Whether a JSON-RPC error with `code` under HTTP `status` is how a session-era server refuses
/// a 2026-07-28 `server/discover` without a session: -32601 (it has no such method) or -32600
/// (an invalid request to it: the Python SDK's "Missing session ID", 400, and "Invalid or
/// expired session ID", 404), under any status; or the TypeScript SDK's session errors, -32000
/// with 400 ("Server not initialized", "Mcp-Session-Id header is required") and -32001 with 404
/// ("Session not found").
fn session_era_error(status: u16, code: i64) -> bool {
    matches!(
        (code, status),
        (-32601 | -32600, _) | (-32000, 400) | (-32001, 404)
    )
}

/// The id of the era probe (raw JSON).
const PROBE_ID: &[u8] = b"\"tollgate-era\"";

fn names_stateless(result: &sonic_rs::Value) -> bool {
    result
        .get("supportedVersions")
        .and_then(|v| v.as_array())
        .is_some_and(|a| {
            a.iter().any(|v| {
                v.as_str()
                    .and_then(ProtocolVersion::parse)
                    .is_some_and(|p| !p.is_legacy())
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> exchange::Reply {
        exchange::Reply {
            status,
            session_id: None,
            body: body.as_bytes().to_vec(),
            sse: false,
            replica: 0,
        }
    }

    /// Only a JSON-RPC answer decides an upstream's era for every caller: one caller's refusal,
    /// a transient failure or an error page decides nothing.
    #[test]
    fn only_a_json_rpc_answer_decides_the_era() {
        let ours = r#"{"jsonrpc":"2.0","id":"tollgate-era","#;
        let cases: &[(u16, String, Option<Era>)] = &[
            (
                200,
                format!(r#"{ours}"result":{{"supportedVersions":["2026-07-28"]}}}}"#),
                Some(Era::Stateless),
            ),
            (
                200,
                format!(r#"{ours}"result":{{"supportedVersions":["2025-06-18"]}}}}"#),
                Some(Era::Session),
            ),
            (
                200,
                format!(r#"{ours}"error":{{"code":-32601,"message":"Method not found"}}}}"#),
                Some(Era::Session),
            ),
            (
                400,
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"Bad Request: No valid session ID provided"}}"#.into(),
                Some(Era::Session),
            ),
            (
                404,
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#.into(),
                Some(Era::Session),
            ),
            (
                400,
                r#"{"jsonrpc":"2.0","id":"server-error","error":{"code":-32600,"message":"Bad Request: Missing session ID"}}"#.into(),
                Some(Era::Session),
            ),
            (403, r#"{"error":"forbidden"}"#.into(), None),
            (400, r#"{"jsonrpc":"2.0","error":"bad"}"#.into(), None),
            (
                403,
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"Forbidden"}}"#.into(),
                None,
            ),
            (401, String::new(), None),
            (400, "<html>Bad Request</html>".into(), None),
            (404, "Not Found".into(), None),
            (200, "not json".into(), None),
            (200, r#"{"jsonrpc":"2.0","id":"other","result":{}}"#.into(), None),
            (
                400,
                format!(r#"{ours}"result":{{"supportedVersions":["2026-07-28"]}}}}"#),
                None,
            ),
            (503, format!(r#"{ours}"error":{{"code":-32603,"message":"x"}}}}"#), None),
            // Errors that are this request's or this caller's, not the era's: nothing decided.
            (
                200,
                format!(r#"{ours}"error":{{"code":-32602,"message":"Invalid params"}}}}"#),
                None,
            ),
            (
                200,
                format!(r#"{ours}"error":{{"code":-32603,"message":"Internal error"}}}}"#),
                None,
            ),
            (
                200,
                format!(r#"{ours}"error":{{"code":-32000,"message":"quota exceeded"}}}}"#),
                None,
            ),
            (
                404,
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32002,"message":"Resource not found"}}"#.into(),
                None,
            ),
            (
                400,
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-31005,"message":"Throttled"}}"#.into(),
                None,
            ),
            (
                404,
                r#"{"jsonrpc":"2.0","id":"server-error","error":{"code":-32600,"message":"Not Found: Invalid or expired session ID"}}"#.into(),
                Some(Era::Session),
            ),
            (
                200,
                format!(r#"{ours}"error":{{"code":"x","message":"no number"}}}}"#),
                None,
            ),
            (429, String::new(), None),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                decided(&reply(*status, body)),
                *want,
                "HTTP {status} {body}"
            );
        }
    }
}
