//! `session`: the key sessions are sealed with (from the file, the environment, or generated)
//! and their lifetime.

use std::time::Duration;

use serde_yaml_ng::Value;

use super::extract::{self, string, Problems, Section};
use super::{defaults, formats, DEFAULT_KEY_ENV};
use crate::config::{KeySource, Session};

pub(super) fn session(
    p: &mut Problems,
    top: &Section,
    env: &dyn Fn(&str) -> Option<String>,
) -> Session {
    let s = Section::open(
        p,
        "session".into(),
        top.raw("session"),
        &["key", "key_env", "ttl"],
    );
    let ttl = s.get(
        p,
        "ttl",
        defaults::SESSION_TTL,
        extract::duration(Duration::from_secs(1)),
    );
    let key_env = s.get(p, "key_env", DEFAULT_KEY_ENV.to_string(), |v| {
        let name = string(v)?;
        formats::env_name(name)?;
        Ok(name.to_string())
    });
    let file_key = s.value("key").map(|(path, v)| {
        let parsed = match v {
            Value::String(k) => formats::hex_key(k),
            // Never describe the value: it is meant to be a secret.
            _ => Err("expected 64 hex characters in quotes".to_string()),
        };
        parsed.map_err(|e| p.add(&path, e)).ok()
    });
    let (key, key_source) = match file_key {
        Some(Some(k)) => (Some(k), KeySource::File),
        Some(None) => (None, KeySource::File),
        None => match env(&key_env) {
            Some(v) => match formats::hex_key(&v) {
                Ok(k) => (Some(k), KeySource::Env),
                Err(e) => {
                    p.add(
                        "session.key_env",
                        format!("environment variable {key_env}: {e}"),
                    );
                    (None, KeySource::Env)
                }
            },
            None => {
                let mut k = [0u8; 32];
                match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k) {
                    Ok(()) => (Some(k), KeySource::Generated),
                    Err(_) => {
                        p.add(
                            "session.key",
                            "not set, and the system random generator failed to make one",
                        );
                        (None, KeySource::Generated)
                    }
                }
            }
        },
    };
    Session {
        // Without a valid key there is a recorded problem, so this zero key is never used.
        key: key.unwrap_or([0; 32]),
        key_source,
        ttl,
    }
}
