//! TEMPORARY stand-in with the sealed-session API (the real AEAD implementation lands from its branch).
use crate::mcp::ProtocolVersion;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionClaims {
    pub id: [u8; 16],
    pub server: u16,
    pub protocol_version: ProtocolVersion,
    pub issued_at: u64,
    pub expires_at: u64,
    pub upstreams: Vec<UpstreamSession>,
    pub principal: Option<Vec<u8>>,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSession {
    pub upstream: u16,
    pub session_id: Option<String>,
    pub protocol_version: ProtocolVersion,
}
#[derive(Clone)]
pub struct SessionSealer;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    Malformed,
    Tampered,
    Expired,
}
impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
impl SessionSealer {
    pub fn new(_key: &[u8; 32]) -> Self {
        SessionSealer
    }
    pub fn new_id() -> [u8; 16] {
        let mut b = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
        b
    }
    pub fn seal(&self, c: &SessionClaims) -> String {
        let up = &c.upstreams[0];
        format!(
            "tmp.{}.{}.{}.{}.{}",
            c.server,
            c.protocol_version as u8,
            c.expires_at,
            up.session_id.clone().unwrap_or_default(),
            c.id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }
    pub fn open(&self, token: &[u8], now: u64) -> Result<SessionClaims, SessionError> {
        let s = std::str::from_utf8(token).map_err(|_| SessionError::Malformed)?;
        let p: Vec<&str> = s.split('.').collect();
        if p.len() != 6 || p[0] != "tmp" {
            return Err(SessionError::Malformed);
        }
        let exp: u64 = p[3].parse().map_err(|_| SessionError::Malformed)?;
        if exp < now {
            return Err(SessionError::Expired);
        }
        let v = ProtocolVersion::from_u8(p[2].parse().map_err(|_| SessionError::Malformed)?)
            .ok_or(SessionError::Malformed)?;
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(
                p[5].get(i * 2..i * 2 + 2).ok_or(SessionError::Malformed)?,
                16,
            )
            .map_err(|_| SessionError::Malformed)?;
        }
        Ok(SessionClaims {
            id,
            server: p[1].parse().map_err(|_| SessionError::Malformed)?,
            protocol_version: v,
            issued_at: 0,
            expires_at: exp,
            upstreams: vec![UpstreamSession {
                upstream: 0,
                session_id: (!p[4].is_empty()).then(|| p[4].to_string()),
                protocol_version: v,
            }],
            principal: None,
        })
    }
}
