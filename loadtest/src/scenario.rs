//! Scenario files (`loadtest/scenarios/*.yaml`): the only serde types of the harness.
//! Format documented in loadtest/README.md; unknown keys are rejected so typos do not silently change a run.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Set when the gateway feature this scenario needs has not landed ("issue N: …"). `compare` refuses it.
    #[serde(default)]
    pub requires: Option<String>,
    /// Default target for `run` (overridden by --url).
    #[serde(default)]
    pub url: Option<String>,
    /// Extra request headers sent on every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sessions opened with `initialize` before the measured phase (spread over the connections).
    #[serde(default = "one")]
    pub sessions: usize,
    /// Keep-alive HTTP/1.1 connections.
    #[serde(default = "one")]
    pub connections: usize,
    /// Generator threads (each one monoio runtime).
    #[serde(default = "one")]
    pub threads: usize,
    /// Skip initialize / notifications/initialized (the 2026-07-28 stateless era).
    #[serde(default)]
    pub stateless: bool,
    #[serde(default = "default_version")]
    pub protocol_version: String,
    #[serde(default)]
    pub mix: Vec<MixEntry>,
    #[serde(default)]
    pub load: Load,
    #[serde(default)]
    pub idle: Option<Idle>,
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Extra arguments for `tollgate demo-upstream` (e.g. ["--tools", "1000"]).
    #[serde(default)]
    pub upstream_args: Vec<String>,
    /// YAML appended to the generated tollgate config (features that exist today).
    #[serde(default)]
    pub gateway_config_extra: String,
    /// compare: pin generator+upstream on CPU 0 and the proxy on CPU 1.
    #[serde(default = "yes")]
    pub pin: bool,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixEntry {
    #[serde(default = "one_u32")]
    pub weight: u32,
    pub method: String,
    #[serde(default)]
    pub params: Option<serde_json::Value>,
    /// Add `_meta.progressToken` (unique per request) to params.
    #[serde(default)]
    pub progress_token: bool,
    /// Pad `params.arguments.<pad_field>` with this many 'x' so the body reaches a realistic size.
    #[serde(default)]
    pub pad_bytes: usize,
    #[serde(default = "default_pad_field")]
    pub pad_field: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Open,
    Closed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    #[serde(default = "closed")]
    pub mode: Mode,
    /// Open loop: requests per second (all connections together).
    #[serde(default)]
    pub rate: Option<f64>,
    /// compare: open-loop phase at this fraction of the lowest saturation throughput measured.
    #[serde(default = "half")]
    pub rate_fraction_of_saturation: f64,
    /// Upper bound on measured requests.
    #[serde(default = "default_requests")]
    pub requests: u64,
    /// Upper bound on the measured phase.
    #[serde(default = "default_duration")]
    pub duration_secs: f64,
    #[serde(default = "default_warmup")]
    pub warmup_requests: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Open loop: how a send waits for its slot (`precise`: a nanosecond timerfd read through io_uring;
    /// `coarse`: monoio's 1 ms timer, the harness before the precise pacer).
    #[serde(default = "precise")]
    pub pacing: Pacing,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pacing {
    Precise,
    Coarse,
}

impl std::str::FromStr for Pacing {
    type Err = String;
    fn from_str(s: &str) -> Result<Pacing, String> {
        match s {
            "precise" => Ok(Pacing::Precise),
            "coarse" => Ok(Pacing::Coarse),
            _ => Err(format!("pacing {s:?}: expected precise or coarse")),
        }
    }
}

impl Default for Load {
    fn default() -> Self {
        serde_yaml_ng::from_str("{}").expect("defaults")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Idle {
    pub connections: usize,
    #[serde(default = "default_hold")]
    pub hold_secs: f64,
    /// Send one request on each connection before it goes idle (so the target has served it once).
    #[serde(default = "yes")]
    pub warm_request: bool,
    #[serde(default = "default_connect_window")]
    pub connect_window: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// static: a fixed list of tokens, one per session, reused (JWT cache hit);
    /// per_request: a fresh token on every request (cold validation).
    #[serde(default = "default_auth_mode")]
    pub mode: AuthMode,
    /// Tokens file, one token per line.
    #[serde(default)]
    pub tokens_file: Option<String>,
    /// Or mint HS256 JWTs in the generator.
    #[serde(default)]
    pub hs256: Option<Hs256>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    Static,
    PerRequest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hs256 {
    pub secret: String,
    pub iss: String,
    pub aud: String,
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    #[serde(default)]
    pub scope: Option<String>,
    /// Number of distinct principals for `static` mode.
    #[serde(default = "default_principals")]
    pub principals: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Minimum `notifications/progress` messages per SSE reply (0 = not checked).
    #[serde(default)]
    pub progress_min: u32,
    /// JSON-RPC errors with a code outside -32768..-32000 are counted as "throttled", not as errors.
    #[serde(default)]
    pub throttle_ok: bool,
}

fn one() -> usize {
    1
}
fn one_u32() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn closed() -> Mode {
    Mode::Closed
}
fn precise() -> Pacing {
    Pacing::Precise
}
fn half() -> f64 {
    0.5
}
fn default_version() -> String {
    "2025-06-18".into()
}
fn default_pad_field() -> String {
    "text".into()
}
fn default_requests() -> u64 {
    20_000
}
fn default_duration() -> f64 {
    10.0
}
fn default_warmup() -> u64 {
    200
}
fn default_timeout() -> u64 {
    5_000
}
fn default_hold() -> f64 {
    3.0
}
fn default_connect_window() -> usize {
    64
}
fn default_auth_mode() -> AuthMode {
    AuthMode::Static
}
fn default_ttl() -> u64 {
    3600
}
fn default_principals() -> usize {
    16
}

impl Scenario {
    pub fn load(path: &str) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        let s: Scenario =
            serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        s.validate().map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut errs = vec![];
        if self.connections == 0 || self.threads == 0 {
            errs.push("connections and threads must be >= 1".to_string());
        }
        if self.threads > self.connections {
            errs.push("threads must be <= connections".into());
        }
        if self.idle.is_none() && self.mix.is_empty() {
            errs.push("mix is empty".into());
        }
        if self.mix.iter().all(|m| m.weight == 0) && !self.mix.is_empty() {
            errs.push("all mix weights are 0".into());
        }
        if self.load.mode == Mode::Open && self.load.rate.is_none() {
            errs.push("load.mode open needs load.rate (compare derives it from saturation)".into());
        }
        if self.load.duration_secs.is_nan()
            || self.load.duration_secs <= 0.0
            || self.load.requests == 0
        {
            errs.push(
                "load.requests and load.duration_secs must be > 0 (every run is bounded)".into(),
            );
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_defaults_to_precise_and_parses() {
        assert_eq!(Load::default().pacing, Pacing::Precise);
        let l: Load = serde_yaml_ng::from_str("pacing: coarse").expect("yaml");
        assert_eq!(l.pacing, Pacing::Coarse);
        assert_eq!("precise".parse::<Pacing>(), Ok(Pacing::Precise));
        assert!("spin".parse::<Pacing>().is_err());
    }
}
