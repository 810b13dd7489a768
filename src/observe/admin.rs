//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`.
//! Blocking and sequential on its own thread: it serves scrapes and probes, never client traffic.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

/// Readiness as the admin listener reports it.
#[derive(Default)]
pub struct Health {
    /// Every worker is accepting.
    pub ready: AtomicBool,
    /// Shutdown has begun: /readyz answers 503 so load balancers drain us.
    pub draining: AtomicBool,
}

/// Serves until `stop` is set (checked between connections; the listener has a short accept timeout).
pub fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    hists: super::hist::HistogramSet,
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
) {
    let _ = listener.set_nonblocking(false);
    for stream in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(s) = stream {
            let _ = handle_one(s, &handle, &hists, &health);
        }
    }
}

fn handle_one(
    mut s: TcpStream,
    handle: &PrometheusHandle,
    hists: &super::hist::HistogramSet,
    health: &Health,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 8192];
    let mut len = 0;
    let path = loop {
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("");
                let path = req
                    .path
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_string();
                if method != "GET" && method != "HEAD" {
                    return respond(&mut s, 405, "text/plain", b"method not allowed\n");
                }
                break path;
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => return respond(&mut s, 400, "text/plain", b"bad request\n"),
        }
    };
    match path.as_str() {
        "/metrics" => {
            let mut body = handle.render();
            hists.render(&mut body);
            respond(
                &mut s,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
            )
        }
        "/healthz" => respond(&mut s, 200, "text/plain", b"ok\n"),
        "/readyz" => {
            if health.ready.load(Ordering::Relaxed) && !health.draining.load(Ordering::Relaxed) {
                respond(&mut s, 200, "text/plain", b"ready\n")
            } else {
                respond(&mut s, 503, "text/plain", b"not ready\n")
            }
        }
        _ => respond(
            &mut s,
            404,
            "text/plain",
            b"not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

fn respond(s: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 128);
    crate::http::response::simple(&mut out, status, ctype.as_bytes(), body, false);
    s.write_all(&out)
}
