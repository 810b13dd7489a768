//! `listen` (addresses, allowed hosts and origins) and `admin`.

use super::*;

#[test]
fn host_and_origin_defaults_follow_the_listener() {
    let c = ok("listen: {address: \"0.0.0.0:8080\"}");
    assert_eq!(c.listen.allowed_hosts, HostRule::Any);
    assert!(!c.listen.allowed_origins.loopback);
    let c = ok("listen: {address: \"[::1]:8080\"}");
    assert_eq!(c.listen.allowed_hosts, HostRule::Loopback);
    assert!(c.listen.allowed_origins.loopback);
    let c = ok("listen: {address: \"[::ffff:127.0.0.1]:8080\"}");
    assert_eq!(c.listen.allowed_hosts, HostRule::Loopback);
    // An explicit list replaces the loopback default; `*` means any host.
    let c = ok("listen: {allowed_hosts: [gw.local]}");
    assert_eq!(
        c.listen.allowed_hosts,
        HostRule::List(vec!["gw.local".into()])
    );
    let c = ok("listen: {allowed_hosts: [\"*\"], allowed_origins: [\"*\"]}");
    assert_eq!(c.listen.allowed_hosts, HostRule::Any);
    assert_eq!(
        c.listen.allowed_origins,
        OriginRule {
            loopback: true,
            list: vec!["*".into()]
        }
    );
    let c = ok("listen: {allowed_hosts: []}");
    assert_eq!(c.listen.allowed_hosts, HostRule::Loopback);
}

#[test]
fn addresses() {
    assert!(err("listen: {address: \"127.0.0.1\"}").contains("has no port"));
    // localhost:PORT is 127.0.0.1:PORT, on both listeners; other names are not resolved.
    assert_eq!(
        ok("listen: {address: \"localhost:8080\"}").listen.addr,
        "127.0.0.1:8080".parse().unwrap()
    );
    assert_eq!(
        ok("admin: {address: \"LocalHost:9091\"}").admin.addr,
        Some("127.0.0.1:9091".parse().unwrap())
    );
    assert!(err("listen: {address: \"localhost\"}").contains("has no port"));
    assert!(err("listen: {address: \"localhost:http\"}").contains("expected a port"));
    assert_eq!(
        err("admin: {address: \"gateway.internal:9090\"}"),
        "admin.address: \"gateway.internal:9090\": host names other than localhost are not \
         resolved for listen addresses; write an IP address (127.0.0.1:<port>, [::1]:<port>, \
         0.0.0.0:<port>) or localhost:<port>"
    );
    assert!(err("listen: {address: 8080}").contains("expected an address like"));
    assert!(err("admin: {address: \"nope\"}").starts_with("admin.address: expected an address"));
}

#[test]
fn admin_can_be_disabled() {
    assert_eq!(ok("admin: null").admin.addr, None);
    assert_eq!(ok("admin: ~").admin.addr, None);
    let c = ok("admin: {address: null, upkeep_interval: 2s}");
    assert_eq!(c.admin.addr, None);
    assert_eq!(c.admin.upkeep_interval, Duration::from_secs(2));
    assert_eq!(
        ok("admin: {upkeep_interval: 2s}").admin.addr,
        Some(defaults::ADMIN)
    );
}

#[test]
fn host_and_origin_entries() {
    assert_eq!(
        err("listen: {allowed_hosts: [Example.COM]}"),
        r#"listen.allowed_hosts[0]: must be lower-case: write "example.com""#
    );
    assert!(err("listen: {allowed_hosts: [\"a.com:80\"]}").contains("port"));
    assert!(err("listen: {allowed_hosts: [a.com, a.com]}").contains("duplicate entry"));
    assert!(err("listen: {allowed_hosts: a.com}").contains("expected a list of strings"));
    assert!(err("listen: {allowed_origins: [\"https://a.com/\"]}")
        .starts_with("listen.allowed_origins[0]: an origin has no path"));
    assert!(err("listen: {allowed_origins: [a.com]}").contains("scheme://host[:port]"));
    assert!(err("listen: {allowed_origins: [5]}").contains("expected a string, got 5"));
}
