//! `listen` and `admin`: the two listeners' addresses, connection limits and the hosts and
//! origins the gateway's listener accepts.

use std::net::SocketAddr;

use serde_yaml_ng::Value;

use super::extract::{self, count, describe, string, Problems, Section};
use super::tls::listen_tls;
use super::{defaults, formats, string_list, MS};
use crate::config::{Admin, HostRule, Listen, OriginRule};

/// `listen.address` / `admin.address`: an IP address with a port, or `localhost:PORT`
/// (= 127.0.0.1:PORT). Other names are not resolved: a listener binds what the file says.
pub(super) fn socket_addr(v: &Value) -> Result<SocketAddr, String> {
    let s = string(v).map_err(|_| {
        format!(
            "expected an address like 127.0.0.1:8080, [::1]:8080 or localhost:8080, got {}",
            describe(v)
        )
    })?;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if let Some((name, port)) = s.rsplit_once(':') {
        if name.eq_ignore_ascii_case("localhost") {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{s:?}: expected a port from 0 to 65535 after localhost:"))?;
            return Ok(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)));
        }
    }
    Err(
        if s.parse::<std::net::IpAddr>().is_ok() || s.eq_ignore_ascii_case("localhost") {
            format!("{s:?} has no port, e.g. {s}:8080")
        } else if s.contains(':')
            && s.rsplit_once(':').is_some_and(|(h, _)| {
                !h.is_empty() && formats::dns_name(&h.to_ascii_lowercase()).is_ok()
            })
        {
            format!(
            "{s:?}: host names other than localhost are not resolved for listen addresses; \
             write an IP address (127.0.0.1:<port>, [::1]:<port>, 0.0.0.0:<port>) or localhost:<port>"
        )
        } else {
            format!(
                "expected an address like 127.0.0.1:8080, [::1]:8080 or localhost:8080, got {s:?}"
            )
        },
    )
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

pub(super) fn listen(p: &mut Problems, top: &Section) -> Listen {
    let s = Section::open(
        p,
        "listen".into(),
        top.raw("listen"),
        &[
            "address",
            "backlog",
            "max_connections_per_worker",
            "allowed_hosts",
            "allowed_origins",
            "tls",
        ],
    );
    let addr = s.get(p, "address", defaults::LISTEN, socket_addr);
    let loopback = is_loopback(&addr);
    let hosts = string_list(p, &s, "allowed_hosts", formats::host_pattern).unwrap_or_default();
    let allowed_hosts = if hosts.iter().any(|h| h == "*") {
        HostRule::Any
    } else if !hosts.is_empty() {
        HostRule::List(hosts)
    } else if loopback {
        HostRule::Loopback
    } else {
        HostRule::Any
    };
    let origins = string_list(p, &s, "allowed_origins", formats::origin).unwrap_or_default();
    Listen {
        addr,
        backlog: s.get(p, "backlog", defaults::BACKLOG as u32, |v| {
            count(1, 65_535)(v).map(|n| n as u32)
        }),
        max_connections_per_worker: s.get(
            p,
            "max_connections_per_worker",
            defaults::MAX_CONNECTIONS_PER_WORKER as usize,
            |v| count(1, u32::MAX.into())(v).map(|n| n as usize),
        ),
        allowed_hosts,
        allowed_origins: OriginRule {
            loopback,
            list: origins,
        },
        tls: listen_tls(p, &s),
    }
}

pub(super) fn admin(p: &mut Problems, top: &Section) -> Admin {
    // `admin: null` disables the admin listener; an absent section takes the defaults.
    let disabled = matches!(top.raw("admin"), Some(Value::Null));
    let s = Section::open(
        p,
        "admin".into(),
        top.raw("admin"),
        &[
            "address",
            "upkeep_interval",
            "request_timeout",
            "max_connections",
        ],
    );
    let addr = match s.raw("address") {
        _ if disabled => None,
        None => Some(defaults::ADMIN),
        Some(Value::Null) => None,
        Some(v) => match socket_addr(v) {
            Ok(a) => Some(a),
            Err(e) => {
                p.add("admin.address", e);
                None
            }
        },
    };
    Admin {
        addr,
        upkeep_interval: s.get(
            p,
            "upkeep_interval",
            defaults::UPKEEP_INTERVAL,
            extract::duration(MS),
        ),
        request_timeout: s.get(
            p,
            "request_timeout",
            defaults::ADMIN_REQUEST_TIMEOUT,
            extract::duration(MS),
        ),
        max_connections: s.get(
            p,
            "max_connections",
            defaults::ADMIN_MAX_CONNECTIONS as usize,
            |v| count(1, defaults::MAX_ADMIN_CONNECTIONS)(v).map(|n| n as usize),
        ),
    }
}
