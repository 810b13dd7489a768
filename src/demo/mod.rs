//! The built-in demo MCP server (`url: builtin:demo`): a real Streamable HTTP server for the
//! legacy session revisions, used as the default upstream, by tests and by load tests.
//! `catalog` is what it offers, `handler` decides answers (no I/O), `session` is the shared
//! session set, `server` speaks HTTP on monoio. It must never be a load test's bottleneck.

mod catalog;
mod handler;
mod server;
mod session;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::config::Driver;
use crate::runtime::driver::spawn_runtimes;

pub use server::{MAX_BODY, MAX_HEAD};

/// How the demo server runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Worker threads, each with its own monoio runtime (0 is taken as 1).
    pub workers: usize,
    /// Answer every request as an SSE stream instead of JSON.
    pub sse: bool,
    /// Pad `tools/list` with this many synthetic tools `tool_0000`.. (each behaves like `echo`).
    pub extra_tools: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            workers: 1,
            sse: false,
            extra_tools: 0,
        }
    }
}

/// Binds `addr` (port 0 allowed), starts the server threads, returns the bound address; threads
/// run until process exit.
///
/// One listening socket is shared by every worker (each registers its own duplicate of the fd
/// with its runtime), so the bound port is known before any thread starts and no other socket
/// can join the port the way `SO_REUSEPORT` would allow.
pub fn spawn(addr: SocketAddr, opts: DemoOptions) -> std::io::Result<SocketAddr> {
    spawn_with_driver(addr, opts, Driver::Auto)
}

/// `spawn` on a chosen I/O driver (the gateway's `runtime.driver`; tests cover both).
pub fn spawn_with_driver(
    addr: SocketAddr,
    opts: DemoOptions,
    driver: Driver,
) -> std::io::Result<SocketAddr> {
    let workers = opts.workers.max(1);
    let listener = listen(addr)?;
    let local = listener.local_addr()?;
    let mut copies = Vec::with_capacity(workers);
    for _ in 1..workers {
        copies.push(Mutex::new(Some(listener.try_clone()?)));
    }
    copies.insert(0, Mutex::new(Some(listener)));
    let listeners = Arc::new(copies);
    let shared = Arc::new(server::Shared {
        catalog: catalog::Catalog::new(opts.extra_tools),
        sessions: session::Sessions::new(),
        sse: opts.sse,
        loopback: local.ip().is_loopback(),
    });
    let make = move |i: usize, _kind| {
        let listener = listeners
            .get(i)
            .and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take());
        let shared = shared.clone();
        async move {
            if let Some(listener) = listener {
                server::run(listener, shared).await;
            }
        }
    };
    spawn_runtimes("tollgate-demo", workers, driver, 1024, 0, false, make)?;
    tracing::info!(%local, workers, sse = opts.sse, extra_tools = opts.extra_tools, "demo MCP server listening");
    Ok(local)
}

fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // The epoll driver needs a non-blocking fd; io_uring does not mind.
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // Load tests open thousands of connections at once.
    socket.listen(4096)?;
    Ok(socket.into())
}
