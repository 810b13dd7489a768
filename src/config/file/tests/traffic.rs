//! `traffic` rules and `traffic.redis`.

use super::*;

#[test]
fn traffic_rules_load_render_and_load_again_with_the_same_fingerprints() {
    let text = "upstreams:\n  - {name: demo, url: builtin:demo}\nservers:\n  - {path: /mcp, upstream: demo}\n\
        traffic:\n  time_zone: Europe/Berlin\n  sync_interval: 5ms\n  max_keys: 10\n  rules:\n\
        \x20   - {name: a, servers: [/mcp], tools: [\"echo*\"], key: [principal, tool], rate: {limit: 5, per: 60s}, concurrency: 2}\n\
        \x20   - {name: b, upstreams: [demo], roles: [admin], methods: [tools/call], quota: {limit: 100, window: month}}\n";
    let c = ok(text);
    let t = &c.traffic;
    assert_eq!((&*t.time_zone, t.max_keys), ("Europe/Berlin", 10));
    assert_eq!(t.rules.len(), 2);
    assert_eq!(t.rules[0].limits.len(), 2);
    assert!(t.rules[0].per_tool() && !t.rules[1].per_tool());
    let shown = render_effective(&c);
    assert!(
        shown.contains("rate: {limit: 5, per: 1m, burst: 5}"),
        "{shown}"
    );
    assert!(shown.contains("key: [principal, tool]"), "{shown}");
    let again = ok(&loadable(&shown));
    assert_eq!(render_effective(&again), shown);
    // Same definitions, same fingerprints (a reload keeps their state); a change makes new ones.
    let fps = |c: &Config| -> Vec<u64> {
        c.traffic
            .rules
            .iter()
            .flat_map(|r| r.limits.iter().map(|l| l.fp))
            .collect()
    };
    assert_eq!(fps(&again), fps(&c));
    let changed = ok(&text.replace("limit: 100,", "limit: 101,"));
    assert_eq!(fps(&changed)[..2], fps(&c)[..2]);
    assert_ne!(fps(&changed)[2], fps(&c)[2]);
}

#[test]
fn traffic_rule_problems_are_reported_at_their_keys() {
    let e = errs(
        "traffic:\n  time_zone: Mars/Olympus\n  rules:\n    - {name: x}\n    - {name: x, servers: [/nope], key: [user], rate: {limit: 0, per: 1s}, quota: {limit: 5, window: week}}\n    - {name: t, tokens: {limit: 5, window: day, costs: [a]}}\n    - {name: u, tokens: {window: day, costs: {\"a*\": -1}}}\n",
    );
    let all = e.join("\n");
    for want in [
        "traffic.time_zone:",
        "traffic.rules[0]: a rule needs rate, concurrency, quota or tokens (or several), or loop",
        "traffic.rules[1].name: duplicate rule name",
        "traffic.rules[1].servers[0]: no server with path \"/nope\"",
        "traffic.rules[1].key[0]:",
        "traffic.rules[1].rate.limit:",
        "traffic.rules[1].quota.window:",
        "traffic.rules[2].tokens.costs: expected a mapping of tool glob to units",
        "traffic.rules[3].tokens.limit:",
        "traffic.rules[3].tokens.costs.a*:",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn a_loop_rule_keys_by_principal_tool_and_arguments_and_renders_as_written() {
    use crate::policy::traffic::part;
    let text = "upstreams:\n  - {name: demo, url: builtin:demo}\nservers:\n  - {path: /mcp, upstream: demo}\n\
        traffic:\n  rules:\n    - {name: loops, tools: [\"*\"], loop: {max: 5, window: 60s}}\n";
    let c = ok(text);
    let r = &c.traffic.rules[0];
    assert!(c.traffic.hashes_arguments);
    assert_eq!(r.key, part::PRINCIPAL | part::TOOL | part::ARGUMENTS);
    // Its own count (`proxy::limit::loops`), not one of the limiter's.
    assert!(r.limits.is_empty());
    let g = r.loop_guard.expect("the loop guard");
    assert_eq!((g.max, g.window), (5, std::time::Duration::from_secs(60)));
    assert_ne!(g.fp, 0, "sealed");
    let shown = render_effective(&c);
    assert!(shown.contains("loop: {max: 5, window: 1m}"), "{shown}");
    assert!(
        shown.contains("key: [principal, tool, arguments]"),
        "{shown}"
    );
    let again = ok(&loadable(&shown));
    assert_eq!(render_effective(&again), shown);
    assert_eq!(again.traffic.rules[0].loop_guard, r.loop_guard);
    // Without a rule keyed by arguments nothing is hashed.
    assert!(
        !ok("traffic:\n  rules:\n    - {name: r, rate: {limit: 1, per: 1s}}\n")
            .traffic
            .hashes_arguments
    );
    let e = errs(
        "traffic:\n  rules:\n    - {name: a, loop: {max: 0, window: 0s}}\n    - {name: b, rate: {limit: 1, per: 1s}, loop: {max: 2, window: 1m}}\n    - {name: c, loop: {max: 2}}\n",
    )
    .join("\n");
    for want in [
        "traffic.rules[0].loop.max:",
        "traffic.rules[0].loop.window:",
        "traffic.rules[1]: loop counts calls by their arguments",
        "traffic.rules[2].loop.window:",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn traffic_redis_is_parsed_checked_and_rendered_without_its_password() {
    let c = ok("traffic:\n  redis:\n    url: \"redis://app:s3cret@10.0.0.5:6379/2\"\n    on_failure: closed\n");
    let r = c.traffic.redis.as_ref().expect("redis");
    assert_eq!(r.on_failure, crate::policy::traffic::OnFailure::Closed);
    assert_eq!(
        r.sync_interval,
        crate::config::file::traffic::DEFAULT_REDIS_SYNC_INTERVAL
    );
    assert_eq!(&*r.key_prefix, "tollgate:");
    let shown = super::render::render_effective(&c);
    assert!(
        shown.contains("redis://app:<redacted>@10.0.0.5:6379/2"),
        "{shown}"
    );
    assert!(!shown.contains("s3cret"));
    assert!(ok("traffic:\n  redis: null\n").traffic.redis.is_none());
    let e =
        errs("traffic:\n  redis:\n    url: \"http://x\"\n    on_failure: maybe\n    timeout: 0s\n")
            .join("\n");
    for want in [
        "traffic.redis.url: expected redis://",
        "traffic.redis.on_failure: expected open, closed or local",
        "traffic.redis.timeout:",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}
