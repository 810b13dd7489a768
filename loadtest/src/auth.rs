//! Bearer tokens for auth scenarios: a static list (one per principal, reused: the gateway's cache hits)
//! or a fresh token per request (cold validation). Tokens come from a file or are minted here as HS256 JWTs.

use std::cell::Cell;

use base64::Engine;

use crate::scenario::{Auth, AuthMode};

pub struct AuthPlan {
    mode: AuthMode,
    tokens: Vec<String>,
    minter: Option<Minter>,
}

struct Minter {
    key: ring::hmac::Key,
    iss: String,
    aud: String,
    ttl: u64,
    scope: Option<String>,
}

thread_local! {
    static SEQ: Cell<u64> = const { Cell::new(0) };
}

impl AuthPlan {
    pub fn new(a: &Auth, sessions: usize) -> anyhow::Result<AuthPlan> {
        let minter = a.hs256.as_ref().map(|h| Minter {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, h.secret.as_bytes()),
            iss: h.iss.clone(),
            aud: h.aud.clone(),
            ttl: h.ttl_secs,
            scope: h.scope.clone(),
        });
        let mut tokens = Vec::new();
        if let Some(f) = &a.tokens_file {
            let text =
                std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("tokens_file {f}: {e}"))?;
            tokens = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if tokens.is_empty() {
                anyhow::bail!("tokens_file {f} has no tokens");
            }
        } else if let (Some(m), Some(h)) = (&minter, &a.hs256) {
            if a.mode == AuthMode::Static {
                let n = h.principals.max(1).min(sessions.max(1));
                tokens = (0..n)
                    .map(|i| m.mint(&format!("load-user-{i}"), i as u64))
                    .collect();
            }
        } else {
            anyhow::bail!("auth needs tokens_file or hs256");
        }
        Ok(AuthPlan {
            mode: a.mode,
            tokens,
            minter,
        })
    }

    /// The token for a request on session `g` (global session index).
    pub fn token(&self, g: usize) -> String {
        match (self.mode, &self.minter) {
            (AuthMode::PerRequest, Some(m)) if self.tokens.is_empty() => {
                let n = SEQ.with(|s| {
                    s.set(s.get() + 1);
                    s.get()
                });
                let tid = std::thread::current().id();
                m.mint(
                    &format!("load-user-{g}"),
                    n ^ (hash(&format!("{tid:?}")) << 32),
                )
            }
            (AuthMode::PerRequest, _) => {
                let n = SEQ.with(|s| {
                    s.set(s.get() + 1);
                    s.get()
                });
                self.tokens[(n as usize + g) % self.tokens.len()].clone()
            }
            (AuthMode::Static, _) => self.tokens[g % self.tokens.len()].clone(),
        }
    }
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

impl Minter {
    fn mint(&self, sub: &str, jti: u64) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let mut claims = serde_json::json!({
            "iss": self.iss, "aud": self.aud, "sub": sub,
            "iat": now, "exp": now + self.ttl, "jti": format!("{jti:x}"),
        });
        if let Some(s) = &self.scope {
            claims["scope"] = serde_json::Value::String(s.clone());
        }
        let payload = b64.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let sig = ring::hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", b64.encode(sig.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn hs256_verifies() {
        let m = Minter {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret"),
            iss: "i".into(),
            aud: "a".into(),
            ttl: 60,
            scope: None,
        };
        let t = m.mint("u", 1);
        let (input, sig) = t.rsplit_once('.').unwrap();
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        ring::hmac::verify(&m.key, input.as_bytes(), &sig).unwrap();
    }
}
