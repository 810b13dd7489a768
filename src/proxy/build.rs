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
use crate::mcp::session::{upstream_id, SessionSealer};
use crate::observe::admin::{Health, ProbeTls, UpstreamHealth};

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
        let (bus, inboxes) = Bus::new(config.workers.get(), control::CAPACITY)
            .context("creating the workers' control channels")?;
        if config.session.key_source == KeySource::Generated {
            tracing::warn!("session.key not set: using a random key; sessions end on restart and are not valid on other instances");
        }
        let sealer = SessionSealer::new(&config.session.key);
        let bus = Arc::new(bus);
        let traffic = super::limit::Exchange::new(config.workers.get());
        // Its writer starts with `runtime::run` (`check --probe` builds a gateway too).
        let audit = Arc::new(crate::observe::audit::Hub::new());
        let mut gw = Gateway::assemble(
            config,
            (shutdown, bus.clone(), traffic, audit),
            None,
            sealer,
            (Vec::new(), None),
        )?;
        gw.keys = super::keys::KeyRefresh::start(&gw.config, bus);
        Ok((Arc::new(gw), inboxes))
    }

    /// Builds the gateway of a reloaded `config` beside this one: the same shutdown flag,
    /// control channel and built-in demo; a changed session key rotates (the old one still opens
    /// tokens); upstreams this config drops are remembered by name for the clients whose
    /// sessions they held. `config` has been through `config::reload::carry_over`.
    pub fn rebuild(&self, config: Config) -> anyhow::Result<Arc<Gateway>> {
        let sealer = if crate::config::reload::key_rotated(&self.config, &config) {
            SessionSealer::new(&config.session.key).with_previous(&[self.config.session.key])
        } else {
            self.sealer.clone()
        };
        let mut retired = self.retired.clone();
        retired.retain(|(id, _)| !config.upstreams.iter().any(|u| upstream_id(&u.name) == *id));
        for u in &self.upstreams {
            if !config.upstreams.iter().any(|n| n.name == u.name)
                && !retired.iter().any(|(id, _)| *id == u.id)
            {
                retired.push((u.id, u.name.clone()));
            }
        }
        let rotated = crate::config::reload::key_rotated(&self.config, &config);
        let mut gw = Gateway::assemble(
            config,
            (
                self.shutdown.clone(),
                self.control.clone(),
                self.traffic.clone(),
                self.audit.clone(),
            ),
            self.demo,
            sealer,
            (retired, Some(&self.health)),
        )?;
        gw.keys = super::keys::KeyRefresh::start(&gw.config, self.control.clone());
        if rotated {
            // Cursors handed out under the old key stay readable, like session tokens.
            gw.cursors = crate::mcp::cursor::CursorSealer::new(&gw.config.session.key)
                .with_previous(&[self.config.session.key]);
            gw.idmap = crate::mcp::idmap::IdMapper::new(&gw.config.session.key)
                .with_previous(&[self.config.session.key]);
            gw.taskids = crate::mcp::idmap::IdMapper::tasks(&gw.config.session.key)
                .with_previous(&[self.config.session.key]);
            gw.legacy_ids = crate::mcp::legacy_id::StreamIds::new(&gw.config.session.key)
                .with_previous(&[self.config.session.key]);
        }
        Ok(Arc::new(gw))
    }

    fn assemble(
        config: Config,
        (shutdown, control, traffic, audit): (
            Arc<AtomicBool>,
            Arc<Bus>,
            Arc<super::limit::Exchange>,
            Arc<crate::observe::audit::Hub>,
        ),
        demo: Option<SocketAddr>,
        sealer: SessionSealer,
        (retired, prev): (Vec<(u64, String)>, Option<&Health>),
    ) -> anyhow::Result<Gateway> {
        let (upstreams, demo) = upstream_runtimes(&config, demo)?;
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
                        .filter(|s| s.upstreams.iter().any(|su| su.upstream == i))
                        .map(|s| s.path.clone())
                        .collect();
                    // Ready while any replica answers: the probe tries each one's addresses.
                    let addrs = rt.replicas.iter().flat_map(|r| r.addrs.clone()).collect();
                    UpstreamHealth::new(
                        cfg.name.clone(),
                        addrs,
                        cfg.connect_timeout,
                        cfg.unhealthy_after,
                        endpoints,
                    )
                    .with_tls(rt.tls.as_ref().map(|(config, name)| ProbeTls {
                        config: config.clone(),
                        name: name.clone(),
                    }))
                    .with_breaker(cfg.circuit_breaker)
                    .with_replicas(if rt.replicas.len() > 1 {
                        rt.replicas
                            .iter()
                            .map(|r| super::replicas::ReplicaHealth::new(r, cfg.circuit_breaker))
                            .collect()
                    } else {
                        Vec::new()
                    })
                })
                .collect(),
            endpoints: config
                .servers
                .iter()
                .map(|s| {
                    let ups = s.upstreams.iter().map(|su| su.upstream).collect();
                    (s.path.clone(), ups)
                })
                .collect(),
            ..Health::default()
        });
        if let Some(prev) = prev {
            health.carry_replicas_from(prev);
        }
        let checker = super::replicas::Checker::start(&config, &upstreams, &health);
        let audit_names =
            super::audit_record::Names::of(&config, upstreams.iter().map(|u| u.name.as_str()));
        Ok(Gateway {
            keys: None,
            spans: config
                .tracing
                .otlp
                .as_ref()
                .and_then(crate::observe::otlp::Exporter::start),
            checker,
            sealer,
            rejects: Rejects::new(&config),
            scan_limits: ScanLimits {
                max_depth: config.limits.max_json_depth,
                max_batch_len: config.limits.max_batch_len,
            },
            upstreams,
            health,
            shutdown,
            control,
            demo,
            server_ids: Gateway::server_ids_of(&config),
            retired,
            generation: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            names_tools: config.names_tools(),
            cursors: crate::mcp::cursor::CursorSealer::new(&config.session.key),
            idmap: crate::mcp::idmap::IdMapper::new(&config.session.key),
            taskids: crate::mcp::idmap::IdMapper::tasks(&config.session.key),
            legacy_ids: crate::mcp::legacy_id::StreamIds::new(&config.session.key),
            traffic: {
                traffic.install(&config.traffic);
                traffic
            },
            audit,
            audit_names,
            config,
        })
    }

    /// `path -> upstream` for each endpoint, comma-separated (the ready line).
    pub fn endpoints_summary(&self) -> String {
        let c = &self.config;
        c.servers
            .iter()
            .map(|s| format!("{} -> {}", s.path, s.upstream_names(&c.upstreams)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `name (target)` for each upstream, comma-separated (the ready line).
    pub fn upstreams_summary(&self) -> String {
        self.config
            .upstreams
            .iter()
            .map(|u| {
                let urls: Vec<String> = u
                    .replicas
                    .iter()
                    .map(|t| match t {
                        UpstreamTarget::BuiltinDemo => "builtin:demo".to_string(),
                        UpstreamTarget::Http(t) => {
                            let scheme = if t.tls { "https" } else { "http" };
                            format!("{scheme}://{}{}", t.authority, t.path)
                        }
                    })
                    .collect();
                format!("{} ({})", u.name, urls.join(" | "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Resolves every upstream, starting the built-in demo where configured unless `demo` says
/// where it already runs; returns the demo's address too.
fn upstream_runtimes(
    config: &Config,
    demo: Option<SocketAddr>,
) -> anyhow::Result<(Vec<UpstreamRuntime>, Option<SocketAddr>)> {
    let mut demo_addr: Option<SocketAddr> = demo;
    let ups = config
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
                let mut rt = UpstreamRuntime::new(u, addrs, &t.authority, &t.path);
                rt.replicas = replicas(u, &rt)?;
                Ok(rt)
            }
        })
        .collect::<anyhow::Result<Vec<UpstreamRuntime>>>()?;
    let mut ups = ups;
    let mut base = 0;
    for (rt, cfg) in ups.iter_mut().zip(&config.upstreams) {
        if rt.replicas.is_empty() {
            // The built-in demo: its one replica is where it runs.
            let addr = rt.addrs.clone();
            let authority = addr.first().map(|a| a.to_string()).unwrap_or_default();
            let url = format!("http://{authority}/mcp");
            rt.replicas = vec![super::replicas::Replica::new(
                url,
                addr,
                (&authority, "/mcp"),
                None,
                cfg.health.path.as_deref(),
                rt.pool_key,
            )];
        }
        rt.slot_base = base;
        base += rt.replicas.len();
    }
    Ok((ups, demo_addr))
}

/// The replicas of an http(s) upstream, each resolved (the first is where `rt` points).
fn replicas(
    cfg: &crate::config::Upstream,
    rt: &UpstreamRuntime,
) -> anyhow::Result<Vec<super::replicas::Replica>> {
    cfg.replicas
        .iter()
        .filter_map(|t| match t {
            UpstreamTarget::Http(h) => Some(h),
            UpstreamTarget::BuiltinDemo => None,
        })
        .enumerate()
        .map(|(i, h)| {
            let addrs = if i == 0 {
                rt.addrs.clone()
            } else {
                let a = h
                    .resolve()
                    .with_context(|| format!("upstreams: resolving {}", h.authority))?;
                anyhow::ensure!(
                    !a.is_empty(),
                    "upstreams: {} resolves to no address",
                    h.authority
                );
                a
            };
            let tls_name = match &cfg.tls {
                None => None,
                Some(t) if t.server_name_set => Some(t.name.clone()),
                Some(t) => Some(
                    crate::tls::server_name(&h.host)
                        .map_err(|e| anyhow::anyhow!("upstreams: {}: {e}", h.url()))
                        .unwrap_or_else(|_| t.name.clone()),
                ),
            };
            Ok(super::replicas::Replica::new(
                h.url(),
                addrs,
                (&h.authority, &h.path),
                tls_name,
                cfg.health.path.as_deref(),
                rt.pool_key,
            ))
        })
        .collect()
}
