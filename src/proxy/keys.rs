//! The issuers' signing keys fetched in the background (`policy::fetch`): one refresher thread
//! per config generation that has issuers with `jwks_url` or `discovery`, delivering each fetched
//! key set to every worker through the control channel (`Control::Keys`), where the worker's
//! `Authn` installs it. Nothing here runs on the request path but `ask`, a non-blocking
//! send.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::DecodingKey;

use crate::config::auth::IssuerKey;
use crate::config::Config;
use crate::policy::fetch::{self, Fetcher, KeySource, RefreshPolicy, Refresher};

use super::control::{Bus, Control, FetchedKeys};

/// The running refresher of one gateway generation; dropping it (the generation is gone) stops
/// the thread within a second.
pub struct KeyRefresh {
    refresher: Refresher,
    stop: Arc<AtomicBool>,
}

impl Drop for KeyRefresh {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl KeyRefresh {
    /// Starts fetching for `config`'s issuers that have a `jwks_url` or `discovery`; `None` when
    /// there are none.
    pub fn start(config: &Config, bus: Arc<Bus>) -> Option<KeyRefresh> {
        let sources: Vec<KeySource> = config
            .auth
            .issuers
            .iter()
            .enumerate()
            // An opaque-only issuer (introspection, no algorithms) has no keys to fetch.
            .filter(|(_, i)| (i.jwks_url.is_some() || i.discovery) && !i.algorithms.is_empty())
            .map(|(n, i)| KeySource {
                issuer: n,
                name: i.name.clone(),
                issuer_url: i.issuer.clone(),
                jwks_url: i.jwks_url.clone(),
            })
            .collect();
        if sources.is_empty() {
            return None;
        }
        let tls = match crate::tls::client_config(None) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no TLS roots: https key sets cannot be fetched");
                None
            }
        };
        let r = config.auth.key_refresh;
        let fetcher = Fetcher {
            timeout: r.timeout,
            tls,
        };
        let policy = RefreshPolicy {
            min: r.min_interval,
            default: r.default_interval,
            max: r.max_interval,
            retry: Duration::from_secs(1).min(r.min_interval),
            unknown_kid: r.unknown_kid_interval,
        };
        let deliver: fetch::Deliver = Box::new(move |src, doc| match keys_of(&doc, &src.name) {
            Ok(keys) => {
                let mut digest = [0u8; 32];
                digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &doc).as_ref());
                let k = FetchedKeys {
                    name: src.name.clone(),
                    issuer: src.issuer_url.clone(),
                    jwks_url: src.jwks_url.clone(),
                    keys,
                    digest,
                };
                bus.broadcast(Control::Keys(Arc::new(k)), None);
                true
            }
            Err(why) => {
                tracing::warn!(issuer = %src.name, error = %why, "fetched key set unusable; the last good keys stay in use");
                false
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        match fetch::spawn(sources, fetcher, policy, deliver, stop.clone()) {
            Ok((refresher, _thread)) => Some(KeyRefresh { refresher, stop }),
            Err(e) => {
                tracing::error!(error = %e, "the key refresher thread could not start");
                None
            }
        }
    }

    /// A token named a key the issuers of a server do not have (`why`): fetch their keys again
    /// (at most once per `RefreshPolicy::unknown_kid` per issuer; see `fetch::Ask`).
    pub fn ask(&self, issuers: &[usize], why: fetch::Ask) {
        for &i in issuers {
            self.refresher.ask(i, why);
        }
    }
}

/// The usable signature keys of a JWK set (encryption keys and keys of unknown types skipped).
pub fn keys_of(doc: &[u8], name: &str) -> Result<Vec<IssuerKey>, String> {
    let set: JwkSet = serde_json::from_slice(doc).map_err(|e| format!("not a JWK set: {e}"))?;
    let keys: Vec<IssuerKey> = set
        .keys
        .iter()
        .enumerate()
        .filter(|(_, k)| {
            !matches!(
                k.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            )
        })
        .filter_map(|(i, k)| {
            DecodingKey::from_jwk(k).ok().map(|key| IssuerKey {
                kid: k.common.key_id.clone(),
                key,
                from: format!("{name} JWKS #{i}"),
            })
        })
        .collect();
    if keys.is_empty() {
        return Err("no usable signature key".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetched_jwk_set_becomes_usable_keys() {
        let doc = br#"{"keys":[{"kty":"RSA","n":"tT-IiA0F5owEoUKRT4jNYRwc6rV8BlkbilY_5j666k_hv21gys-ZsFQX_ljP1YP0WgkGPuD_rfp9RBsM4ip2of6TkBfXLV1Nst_yWvq7l8adTZayYzOVvKIEPz9tTd1Fsiddma9DG4zKWjFAmlPOFqfONLBHHW2e-1RFe9Cu11vKo7xRvPxKixlf9DHULu2vrhMCDowSBaVchhS_-Igg4yjgiE-TXLEhahI5sBEgswG84E03JDGeIKarPJ_sHAjdU7xRG_jRyaBJDfnbNWh8FMrn6tPo1Gk1KrNvapg4T4GHJRkkgIG0BDEG9u2-eWtoZfS7qAabpeB5NcobyUT2fQ","e":"AQAB","kid":"rsa-1","alg":"RS256","use":"sig"},{"kty":"EC","x":"qj6N9VUWXBPDOyh48o-yNICeSBCFzK3oXrlg4A2eUTA","y":"3fVXmI83j7Xj48No8eDJN_J_vum1i9kMrrVI0igTrUU","crv":"P-256","kid":"ec-1","alg":"ES256","use":"sig"},{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"enc","use":"enc"}]}"#;
        let keys = keys_of(doc, "t").unwrap();
        assert_eq!(keys.len(), 2);
        let set = crate::policy::authn::KeySet::new(
            &[
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::ES256,
            ],
            &keys,
        );
        assert_eq!(set.len(), 2);
    }
}
