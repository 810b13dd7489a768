//! Binding the worker listeners: one SO_REUSEPORT socket per worker on the same address.
//! A probe bind without SO_REUSEPORT first makes a port held by another process fail loudly
//! instead of silently joining its reuseport group.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

fn socket_for(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Binds `n` listeners on `addr` (port 0: one ephemeral port shared by all).
pub fn bind_group(addr: SocketAddr, n: usize, backlog: u32) -> anyhow::Result<Vec<TcpListener>> {
    let mut addr = addr;
    if addr.port() != 0 {
        let probe = socket_for(addr)?;
        probe.bind(&addr.into()).with_context(|| {
            format!(
                "listen.address {addr} is already in use by another process (or cannot be bound)"
            )
        })?;
        drop(probe);
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let s = socket_for(addr)?;
        s.set_reuse_port(true)?;
        s.bind(&addr.into())
            .with_context(|| format!("binding listen.address {addr} (worker {i})"))?;
        s.listen(backlog.min(i32::MAX as u32) as i32)?;
        s.set_nonblocking(true)?;
        let l: TcpListener = s.into();
        if addr.port() == 0 {
            addr = l.local_addr()?;
        }
        out.push(l);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_port_is_shared_by_the_group() {
        let ls = bind_group("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
    }

    #[test]
    fn a_port_held_elsewhere_fails_loudly() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let err = bind_group(addr, 2, 16).unwrap_err();
        assert!(format!("{err:#}").contains("already in use"), "{err:#}");
        // Even another tollgate's reuseport group is not joined.
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 1, 16).unwrap();
        let err = bind_group(group[0].local_addr().unwrap(), 1, 16).unwrap_err();
        assert!(format!("{err:#}").contains("already in use"), "{err:#}");
    }
}
