//! The demo's 2026-07-28 path: a POST without a session whose `_meta` (or version header) names
//! the stateless revision. The same checks as the gateway (`mcp::modern`, so both read the
//! revision alike), then the same tools, resources and prompts as a session, each result stamped
//! with `resultType` (and the caching hints where the revision wants them). `server/discover`
//! names the demo; `subscriptions/listen` is acknowledged and kept warm (the demo's lists never
//! change); the methods the revision removed are 404, -32601.

use crate::mcp::modern::{self, Mirrored, Refuse, Route, Signals};
use crate::mcp::Method;

use super::*;

/// Members every stateless result starts with.
const STAMP: &[u8] = br#""resultType":"complete""#;
/// ... and results the revision lets clients cache (lists, reads, discover): the demo's never
/// change while it runs.
const STAMP_CACHEABLE: &[u8] = br#""resultType":"complete","ttlMs":300000,"cacheScope":"public""#;

/// `None`: a session-era request. `Some(Err)`: it speaks the stateless revision but fails its
/// first checks.
pub(super) fn route(req: &Req, msg: &Value) -> Option<Result<(), Refuse>> {
    let meta = msg.get("params").and_then(|p| p.get("_meta"));
    let signals = Signals {
        header_version: req.version_raw.as_deref(),
        meta_version: meta
            .and_then(|m| m.get("io.modelcontextprotocol/protocolVersion"))
            .and_then(Value::as_str),
        meta_capabilities: meta
            .and_then(|m| m.get("io.modelcontextprotocol/clientCapabilities"))
            .is_some_and(Value::is_object),
        has_session: false,
        request: msg.get("id").is_some() && msg.get("method").is_some(),
    };
    match modern::route(&signals) {
        Ok(Route::Session) => None,
        Ok(Route::Stateless(_)) => Some(Ok(())),
        Err(r) => Some(Err(r)),
    }
}

/// Methods the revision removed.
fn removed(m: Method) -> bool {
    matches!(
        m,
        Method::Initialize
            | Method::Ping
            | Method::LoggingSetLevel
            | Method::ResourcesSubscribe
            | Method::ResourcesUnsubscribe
    )
}

pub(super) async fn post(
    conn: &mut Conn<TcpStream>,
    shared: &Shared,
    bufs: &mut Bufs,
    req: &Req,
    msg: &Value,
    route: Result<(), Refuse>,
) -> io::Result<Next> {
    let ka = req.keep_alive;
    let msg_id = msg.get("id").filter(|v| v.is_string() || v.is_number());
    if let Err(r) = route {
        let (code, message, data) = match r {
            Refuse::HeaderMismatch(m) => (code::HEADER_MISMATCH, m, None),
            Refuse::MissingMeta(m) => (code::INVALID_PARAMS, m, None),
            Refuse::Unsupported { requested } => (
                code::UNSUPPORTED_VERSION,
                "Unsupported protocol version".to_string(),
                Some(serde_json::json!({
                    "supported": modern::STATELESS_VERSIONS.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
                    "requested": requested,
                })),
            ),
        };
        return error(conn, bufs, msg_id, 400, (code, message, data), ka).await;
    }
    let (id, method, params) = match handler::classify(msg) {
        Message::Request { id, method, params } => (id, method, params),
        Message::NoReply => {
            empty_response(&mut bufs.out, 202, ka);
            flush(conn, &mut bufs.out).await?;
            return Ok(next(ka));
        }
        Message::Invalid { id, reason } => {
            let m = format!("Invalid Request: {reason}");
            return reject_with_id(conn, bufs, Reject::InvalidRequest, id, Some(&m), ka).await;
        }
    };
    let m = Method::parse(method);
    let name = modern::name_source(m).map(|src| {
        let key = match src {
            modern::NameSource::Name => "name",
            modern::NameSource::Uri => "uri",
        };
        params
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
            .map(str::as_bytes)
    });
    let mirrored = Mirrored {
        header_method: req.mcp_method.as_deref(),
        header_name: req.mcp_name.as_deref(),
        method: method.as_bytes(),
        request: true,
        name,
    };
    let refused = match modern::check_mirrored(&mirrored) {
        Err(why) => Some((400, code::HEADER_MISMATCH, why)),
        Ok(()) if removed(m) => Some((
            404,
            code::METHOD_NOT_FOUND,
            format!("Method not found: {method} is not part of protocol version 2026-07-28"),
        )),
        Ok(()) => None,
    };
    if let Some((status, code, why)) = refused {
        return error(conn, bufs, Some(id), status, (code, why, None), ka).await;
    }
    let (reply, stamp) = match m {
        Method::ServerDiscover => (Reply::Result(discover()), STAMP_CACHEABLE),
        Method::SubscriptionsListen => return listen(conn, bufs, id, params).await,
        Method::ToolsList
        | Method::ResourcesList
        | Method::ResourcesTemplatesList
        | Method::PromptsList
        | Method::ResourcesRead => (
            stateless_errors(handler::dispatch(&shared.catalog, method, params)),
            STAMP_CACHEABLE,
        ),
        _ => match handler::dispatch(&shared.catalog, method, params) {
            // An unknown method is 404 on this wire.
            Reply::Error {
                code: code::METHOD_NOT_FOUND,
                message,
                ..
            } => {
                let why = message.into_owned();
                return error(
                    conn,
                    bufs,
                    Some(id),
                    404,
                    (code::METHOD_NOT_FOUND, why, None),
                    ka,
                )
                .await;
            }
            r => (stateless_errors(r), STAMP),
        },
    };
    answer(
        conn,
        shared,
        bufs,
        vec![(id, reply)],
        false,
        None,
        ka,
        stamp,
    )
    .await
}

/// 2026-07-28 reports a missing resource as -32602 (with `data.uri`), not -32002.
fn stateless_errors(r: Reply<'_>) -> Reply<'_> {
    match r {
        Reply::Error {
            code: -32002,
            message,
            data,
        } => Reply::Error {
            code: code::INVALID_PARAMS,
            message,
            data,
        },
        r => r,
    }
}

/// `server/discover`: what `initialize` says, in the revision's shape (`resultType` and the
/// caching hints are stamped when rendered).
fn discover() -> Value {
    let (_, init) = handler::initialize(None);
    let mut caps = init["capabilities"].clone();
    if let Some(c) = caps.as_object_mut() {
        // Logging is driven per request (`_meta` logLevel) in this revision; the demo logs nothing.
        c.remove("logging");
    }
    serde_json::json!({
        "supportedVersions": modern::STATELESS_VERSIONS.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
        "capabilities": caps,
        "instructions": init["instructions"],
        "_meta": { "io.modelcontextprotocol/serverInfo": init["serverInfo"] },
    })
}

/// A JSON-RPC error with the revision's status.
async fn error(
    conn: &mut Conn<TcpStream>,
    bufs: &mut Bufs,
    id: Option<&Value>,
    status: u16,
    (code, message, data): (i32, String, Option<Value>),
    ka: bool,
) -> io::Result<Next> {
    let reply = Reply::Error {
        code,
        message: message.into(),
        data,
    };
    let id = id.unwrap_or(&NULL_ID);
    json_response(bufs, status, None, ka, |b| {
        handler::render_reply(b, id, &reply)
    });
    flush(conn, &mut bufs.out).await?;
    Ok(next(ka))
}

/// `subscriptions/listen`: the acknowledgement (the demo honours the list-changed kinds asked
/// for; its lists never change, so nothing follows), then keep-alive comments until the client
/// leaves. The connection is not reused after it.
async fn listen(
    conn: &mut Conn<TcpStream>,
    bufs: &mut Bufs,
    id: &Value,
    params: Option<&Value>,
) -> io::Result<Next> {
    let asked = params.and_then(|p| p.get("notifications"));
    let mut honoured = serde_json::Map::new();
    for k in [
        "toolsListChanged",
        "promptsListChanged",
        "resourcesListChanged",
    ] {
        if asked.and_then(|a| a.get(k)).and_then(Value::as_bool) == Some(true) {
            honoured.insert(k.into(), Value::Bool(true));
        }
    }
    let ack = serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": {
            "_meta": { "io.modelcontextprotocol/subscriptionId": id },
            "notifications": honoured,
        },
    });
    sse_head(&mut bufs.out, None, false);
    SseStream::new().event(bufs, |b| {
        let _ = serde_json::to_writer(&mut *b, &ack);
    });
    flush(conn, &mut bufs.out).await?;
    loop {
        match monoio::time::timeout(KEEP_ALIVE_EVERY, conn.io.read(vec![0u8; 512])).await {
            Ok((Ok(0), _)) | Ok((Err(_), _)) => return Ok(Next::Close),
            Ok((Ok(_), _)) => {}
            Err(_elapsed) => {
                bufs.scratch.clear();
                sse::write_comment(&mut bufs.scratch, b" keep-alive");
                bufs.scratch.push(b'\n');
                encode_chunk(&mut bufs.out, &bufs.scratch);
                flush(conn, &mut bufs.out).await?;
            }
        }
    }
}
