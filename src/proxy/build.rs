//! Building the `Gateway` from a `Config`: resolving upstreams (starting the built-in demo where
//! configured), pre-rendering request prefixes and refusals, the session sealer, health, and the
//! control channel to the workers. `runtime` calls it once at start; hot reload will call it
//! again to prepare a new gateway.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{Config, KeySource, UpstreamTarget};
use crate::jsonrpc::ScanLimits;
use crate::mcp::session::SessionSealer;
use crate::observe::admin::{Health, UpstreamHealth};

use super::control::{self, Bus, Inbox};
use super::reject::Rejects;
use super::state::{Gateway, UpstreamRuntime};

impl Gateway {
    /// Builds the shared gateway for `config.workers` workers, and each worker's control inbox
    /// (in worker order: worker `i` registers `inboxes[i]` in its runtime). `shutdown` is the
    /// process-wide flag the workers watch.
    pub fn build(
        config: Config,
        shutdown: Arc<AtomicBool>,
    ) -> anyhow::Result<(Arc<Gateway>, Vec<Inbox>)> {
        let upstreams = upstream_runtimes(&config)?;
        let health = Arc::new(Health {
            upstreams: config
                .upstreams
                .iter()
                .zip(&upstreams)
                .enumerate()
                .map(|(i, (cfg, rt))| {
                    let endpoints = config
                        .servers
                        .iter()
                        .filter(|s| s.upstream == i)
                        .map(|s| s.path.clone())
                        .collect();
                    UpstreamHealth::new(
                        cfg.name.clone(),
                        rt.addrs.clone(),
                        cfg.connect_timeout,
                        cfg.unhealthy_after,
                        endpoints,
                    )
                })
                .collect(),
            ..Health::default()
        });
        let (bus, inboxes) = Bus::new(config.workers.get(), control::CAPACITY)
            .context("creating the workers' control channels")?;
        let gw = Gateway {
            sealer: SessionSealer::new(&config.session.key),
            rejects: Rejects::new(&config),
            scan_limits: ScanLimits {
                max_depth: config.limits.max_json_depth,
                max_batch_len: config.limits.max_batch_len,
            },
            upstreams,
            health,
            shutdown,
            control: bus,
            server_ids: Gateway::server_ids_of(&config),
            retired: Vec::new(),
            config,
        };
        if gw.config.session.key_source == KeySource::Generated {
            tracing::warn!("session.key not set: using a random key; sessions end on restart and are not valid on other instances");
        }
        Ok((Arc::new(gw), inboxes))
    }

    /// `path -> upstream` for each endpoint, comma-separated (the ready line).
    pub fn endpoints_summary(&self) -> String {
        let c = &self.config;
        c.servers
            .iter()
            .map(|s| format!("{} -> {}", s.path, c.upstreams[s.upstream].name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `name (target)` for each upstream, comma-separated (the ready line).
    pub fn upstreams_summary(&self) -> String {
        self.config
            .upstreams
            .iter()
            .map(|u| match &u.target {
                UpstreamTarget::BuiltinDemo => format!("{} (builtin:demo)", u.name),
                UpstreamTarget::Http(t) => format!("{} (http://{}{})", u.name, t.authority, t.path),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Resolves every upstream (starting the built-in demo where configured).
fn upstream_runtimes(config: &Config) -> anyhow::Result<Vec<UpstreamRuntime>> {
    let mut demo_addr: Option<SocketAddr> = None;
    config
        .upstreams
        .iter()
        .map(|u| match &u.target {
            UpstreamTarget::BuiltinDemo => {
                let addr = match demo_addr {
                    Some(a) => a,
                    None => {
                        let opts = crate::demo::DemoOptions {
                            workers: 1,
                            sse: false,
                            extra_tools: 0,
                        };
                        let a = crate::demo::spawn_with_driver(
                            "127.0.0.1:0".parse().expect("literal address"),
                            opts,
                            config.runtime.driver,
                        )
                        .context("starting the built-in demo upstream")?;
                        tracing::info!(upstream = %u.name, addr = %a, "built-in demo upstream started");
                        demo_addr = Some(a);
                        a
                    }
                };
                Ok(UpstreamRuntime::new(
                    u,
                    vec![addr],
                    &addr.to_string(),
                    "/mcp",
                ))
            }
            UpstreamTarget::Http(t) => {
                let addrs = t
                    .resolve()
                    .with_context(|| format!("upstreams: resolving {}", t.authority))?;
                anyhow::ensure!(
                    !addrs.is_empty(),
                    "upstreams: {} resolves to no address",
                    t.authority
                );
                Ok(UpstreamRuntime::new(u, addrs, &t.authority, &t.path))
            }
        })
        .collect()
}
