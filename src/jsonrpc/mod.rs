//! TEMPORARY stand-in with the scanner's API (the real zero-copy scanner lands from its branch).
use std::borrow::Cow;
use std::ops::Range;

pub struct ScanLimits {
    pub max_depth: u32,
    pub max_batch_len: usize,
}
impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_depth: 64,
            max_batch_len: 100,
        }
    }
}
pub enum Body<'a> {
    Single(Message<'a>),
    Batch(Vec<Message<'a>>),
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Notification,
    Response,
    Error,
}
pub struct Message<'a> {
    pub kind: MessageKind,
    pub id: Option<Raw<'a>>,
    pub method: Option<Str<'a>>,
    pub name: Option<Str<'a>>,
    pub uri: Option<Str<'a>>,
    pub progress_token: Option<Raw<'a>>,
    pub meta_protocol_version: Option<Str<'a>>,
    pub protocol_version: Option<Str<'a>>,
    pub span: Range<usize>,
}
pub struct Raw<'a> {
    pub text: &'a [u8],
    pub start: usize,
}
pub struct Str<'a> {
    pub value: Cow<'a, str>,
    pub span: Range<usize>,
}
#[derive(Debug, Clone, PartialEq)]
pub enum ScanErrorKind {
    Syntax(&'static str),
    NotAMessage(&'static str),
}
#[derive(Debug, Clone, PartialEq)]
pub struct ScanError {
    pub kind: ScanErrorKind,
    pub offset: usize,
}
impl ScanError {
    pub fn is_parse_error(&self) -> bool {
        matches!(self.kind, ScanErrorKind::Syntax(_))
    }
}
impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} at byte {}", self.kind, self.offset)
    }
}
fn one(v: &serde_json::Value, body: &[u8]) -> Result<Message<'static>, ScanError> {
    let bad = |w| ScanError {
        kind: ScanErrorKind::NotAMessage(w),
        offset: 0,
    };
    let o = v.as_object().ok_or(bad("not an object"))?;
    let s = |x: Option<&serde_json::Value>| {
        x.and_then(|x| x.as_str()).map(|x| Str {
            value: Cow::Owned(x.to_string()),
            span: 0..0,
        })
    };
    let raw = |x: Option<&serde_json::Value>| {
        x.map(|x| Raw {
            text: Box::leak(x.to_string().into_bytes().into_boxed_slice()),
            start: 0,
        })
    };
    let params = o.get("params");
    let meta = params.and_then(|p| p.get("_meta"));
    let method = s(o.get("method"));
    let id = raw(o.get("id"));
    let kind = match (&method, &id) {
        (Some(_), Some(_)) => MessageKind::Request,
        (Some(_), None) => MessageKind::Notification,
        (None, Some(_)) if o.contains_key("result") => MessageKind::Response,
        (None, Some(_)) if o.contains_key("error") => MessageKind::Error,
        _ => return Err(bad("neither request nor response")),
    };
    Ok(Message {
        kind,
        id,
        name: s(params.and_then(|p| p.get("name"))),
        uri: s(params.and_then(|p| p.get("uri"))),
        progress_token: raw(meta.and_then(|m| m.get("progressToken"))),
        meta_protocol_version: s(
            meta.and_then(|m| m.get("io.modelcontextprotocol/protocolVersion"))
        ),
        protocol_version: s(params.and_then(|p| p.get("protocolVersion")))
            .or_else(|| s(o.get("result").and_then(|r| r.get("protocolVersion")))),
        method,
        span: 0..body.len(),
    })
}
pub fn scan<'a>(body: &'a [u8], _limits: &ScanLimits) -> Result<Body<'a>, ScanError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| ScanError {
        kind: ScanErrorKind::Syntax("invalid JSON"),
        offset: 0,
    })?;
    match &v {
        serde_json::Value::Array(a) => Ok(Body::Batch(
            a.iter().map(|m| one(m, body)).collect::<Result<_, _>>()?,
        )),
        _ => Ok(Body::Single(one(&v, body)?)),
    }
}
