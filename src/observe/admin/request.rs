//! One admin connection's request, all of it before its deadline: `/metrics`, `/healthz`,
//! `/readyz`, `POST /admin/reload`; every read and write bounded by the time left.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::Admin;

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "admin.request_timeout")
}

pub(super) fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// The time left until `deadline`, or a timeout error if there is none.
pub(super) fn left(deadline: Instant) -> std::io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err(timed_out())
    } else {
        Ok(d)
    }
}

/// One request on one connection, all of it before `deadline`. `Err` only for I/O errors
/// (a timeout is `TimedOut`/`WouldBlock`); the connection is closed either way.
pub(super) fn handle_one(
    mut s: TcpStream,
    deadline: Instant,
    admin: &Admin,
) -> std::io::Result<()> {
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 8192];
    let mut len = 0;
    let path = loop {
        s.set_read_timeout(Some(left(deadline)?))?;
        let n = match s.read(&mut buf[len..]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r?,
        };
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
                if path == "/admin/reload" {
                    return admin_reload(&mut s, deadline, admin, method);
                }
                if method != "GET" && method != "HEAD" {
                    return respond(&mut s, deadline, 405, "text/plain", b"method not allowed\n");
                }
                break (path, method == "HEAD");
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => return respond(&mut s, deadline, 400, "text/plain", b"bad request\n"),
        }
    };
    let (path, head_only) = path;
    let metrics;
    let not_ready;
    let (status, ctype, body): (u16, &str, &[u8]) = match path.as_str() {
        "/metrics" => {
            let mut text = admin.handle.render();
            admin.series.render(&mut text);
            admin.health.current().render_up(&mut text);
            metrics = text;
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.as_bytes(),
            )
        }
        "/healthz" => (200, "text/plain", b"ok\n"),
        "/readyz" => {
            let health = admin.health.current();
            not_ready = match health.not_ready(deadline) {
                None => Err(format!("ready\n{}", health.degraded())),
                Some(why) => Ok(why),
            };
            match &not_ready {
                Err(ready) => (200, "text/plain", ready.as_bytes()),
                Ok(why) => (503, "text/plain", why.as_bytes()),
            }
        }
        _ => (
            404,
            "text/plain",
            b"not found: try /metrics, /healthz or /readyz\n",
        ),
    };
    if head_only {
        // HEAD: the same head (Content-Length included), no body (RFC 9110 §9.3.2).
        let mut out = Vec::with_capacity(128);
        crate::http::response::simple(&mut out, status, ctype.as_bytes(), body, false);
        out.truncate(out.len() - body.len());
        return write_all_before(&mut s, deadline, &out);
    }
    respond(&mut s, deadline, status, ctype, body)
}

/// `POST /admin/reload`: re-reads the config file and installs it (what SIGHUP does). Only from a
/// loopback peer, whatever address the admin listener is bound to: a reload is an operator's
/// act on this host. 200 with the summary, 422 with every problem, 403/405/404 otherwise.
fn admin_reload(
    s: &mut TcpStream,
    deadline: Instant,
    admin: &Admin,
    method: &str,
) -> std::io::Result<()> {
    if method != "POST" {
        let mut out = Vec::with_capacity(128);
        let body = b"method not allowed: POST /admin/reload\n";
        crate::http::response::simple(&mut out, 405, b"text/plain", body, false);
        let end = out.len() - body.len() - 2;
        out.splice(end..end, b"allow: POST\r\n".iter().copied());
        return write_all_before(s, deadline, &out);
    }
    let Some(reload) = &admin.reload else {
        return respond(s, deadline, 404, "text/plain", b"reload is not available\n");
    };
    if !s.peer_addr().is_ok_and(|p| p.ip().is_loopback()) {
        return respond(
            s,
            deadline,
            403,
            "text/plain",
            b"reload is only accepted from this host (a loopback address)\n",
        );
    }
    match reload() {
        Ok(summary) => respond(
            s,
            deadline,
            200,
            "text/plain",
            format!("reloaded: {summary}\n").as_bytes(),
        ),
        Err(problems) => respond(
            s,
            deadline,
            422,
            "text/plain",
            format!("reload refused, the running config stays:\n{problems}\n").as_bytes(),
        ),
    }
}

/// Writes the whole response before `deadline` (the socket timeout is the time left before
/// each write, so a slow reader gets no more than the deadline in total).
pub(super) fn respond(
    s: &mut TcpStream,
    deadline: Instant,
    status: u16,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 128);
    crate::http::response::simple(&mut out, status, ctype.as_bytes(), body, false);
    write_all_before(s, deadline, &out)
}

fn write_all_before(s: &mut TcpStream, deadline: Instant, out: &[u8]) -> std::io::Result<()> {
    let mut rest = out;
    while !rest.is_empty() {
        s.set_write_timeout(Some(left(deadline)?))?;
        match s.write(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
