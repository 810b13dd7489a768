//! Traffic limits across instances through Redis (issue 11, `traffic.redis`): a real
//! `redis-server` (Debian's package; scripts/install-tools.sh) on a free port, two tollgate
//! processes sharing one quota, and Redis stopped mid-run and started again under
//! `on_failure: closed` and `local`.

mod harness;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::traffic::{demo_gateway, echo, ok};
use harness::{eventually, free_port, metric_value, session, Gateway, Mcp};

/// A redis-server on 127.0.0.1:`port` without persistence, killed when dropped.
struct Redis {
    port: u16,
    child: Child,
}

fn redis_server() -> Option<&'static str> {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("redis-server");
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "redis-server not installed, and CI is set: scripts/install-tools.sh installs it \
             (apt-get install redis-server)"
        );
    }
    eprintln!("\n*** SKIPPED: redis-server not installed (apt-get install redis-server) ***\n");
    None
}

impl Redis {
    fn start(port: u16) -> Option<Redis> {
        let bin = redis_server()?;
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let r = Redis { port, child };
        assert!(
            eventually(Duration::from_secs(10), || r.ask("PING") == "+PONG"),
            "redis-server did not answer on port {port}"
        );
        Some(r)
    }

    /// One inline command, its first reply line (empty when Redis does not answer).
    fn ask(&self, cmd: &str) -> String {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(format!("{cmd}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
    }

    /// The sum of every counter under `prefix`.
    fn total(&self, prefix: &str) -> u64 {
        let keys = self.ask(&format!("KEYS {prefix}*"));
        keys.lines()
            .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
            .map(|k| {
                let v = self.ask(&format!("GET {k}"));
                v.lines()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway(rule: &str, port: u16, on_failure: &str, prefix: &str) -> Gateway {
    demo_gateway(
        1,
        &format!(
            "traffic:\n  rules:\n    - {rule}\n  redis:\n    url: \"redis://127.0.0.1:{port}/0\"\n    \
             sync_interval: 20ms\n    timeout: 200ms\n    on_failure: {on_failure}\n    key_prefix: \"{prefix}\"\n"
        ),
    )
}

fn syncs(gw: &Gateway) -> f64 {
    metric_value(
        &gw.metrics(),
        "tollgate_traffic_redis_syncs_total{result=\"ok\"}",
    )
}

fn up(gw: &Gateway) -> f64 {
    metric_value(&gw.metrics(), "tollgate_traffic_redis_up")
}

/// Waits until every one of `gws` counts `gws.len()` live instances.
fn see_each_other(gws: &[&Gateway]) {
    let n = gws.len() as f64;
    assert!(
        eventually(Duration::from_secs(10), || gws.iter().all(
            |g| metric_value(&g.metrics(), "tollgate_traffic_redis_instances") == n
        )),
        "the instances did not see each other"
    );
}

/// Waits until `gw` has synced with Redis twice more (so what it counted before is there).
fn synced(gw: &Gateway) {
    let base = syncs(gw);
    assert!(
        eventually(Duration::from_secs(10), || syncs(gw) >= base + 2.0),
        "no sync with Redis"
    );
}

/// How many times a call refused after waiting for a new allotment is made again: a loaded
/// machine may stall an instance's Redis sync past the wait; the fleet's budget is not spent.
const WAIT_RETRIES: usize = 50;

/// One call, made again while it is refused because its wait for a new allotment timed out
/// (`retryAfterMs` of about one sync) rather than because the budget is spent (`retryAfterMs`
/// up to the end of the quota's day, more than a second): whether it was admitted.
fn call(m: &mut Mcp) -> bool {
    for _ in 0..WAIT_RETRIES {
        let r = echo(m);
        if ok(&r) {
            return true;
        }
        let v = r.json();
        assert_eq!(v["error"]["data"]["kind"], "quota", "{v}");
        let retry_ms = v["error"]["data"]["retryAfterMs"]
            .as_u64()
            .expect("retryAfterMs");
        if retry_ms > 1000 {
            return false;
        }
    }
    panic!("refused {WAIT_RETRIES} times after waiting for an allotment, never as spent");
}

fn calls_until_refused(m: &mut Mcp, most: usize) -> usize {
    let mut admitted = 0;
    while call(m) {
        admitted += 1;
        assert!(admitted <= most, "admitted more than {most}");
    }
    admitted
}

#[test]
fn two_instances_share_one_quota_through_redis() {
    const LIMIT: usize = 20;
    let Some(redis) = Redis::start(free_port()) else {
        return;
    };
    let rule = format!("{{name: q, quota: {{limit: {LIMIT}, window: day}}}}");
    let a = gateway(&rule, redis.port, "closed", "share:");
    let b = gateway(&rule, redis.port, "closed", "share:");
    see_each_other(&[&a, &b]);
    let (mut ma, mut mb) = (session(&a), session(&b));
    // A's allotment is half of what is left (10, then 5): its 11th call waits for the next
    // Redis read instead of being refused.
    for i in 0..15 {
        assert!(call(&mut ma), "call {i} on A");
    }
    synced(&a);
    assert_eq!(redis.total("share:"), 15);
    // B's first share of the key comes from its exchange, with A's 15 read from Redis.
    let on_b = calls_until_refused(&mut mb, LIMIT);
    synced(&b);
    synced(&a);
    let on_a = calls_until_refused(&mut ma, LIMIT);
    println!("redis, sequential: A 15 + {on_a}, B {on_b} of {LIMIT}");
    assert_eq!(15 + on_a + on_b, LIMIT, "A {on_a} more, B {on_b}");
    assert_eq!(redis.total("share:"), LIMIT as u64);

    // Hammered at once on a fresh quota (two connections per instance): each instance admits
    // at most its allotment, ceil(left / instances) of what it last read left, before its next
    // read; what the others counted but had not sent when it read is the over-admission, at
    // most (instances - 1) * ceil(LIMIT / instances) (README); measured and printed.
    // A larger budget is drained over several Redis syncs: what the others admit in one sync
    // interval bounds the over-admission too.
    for (instances, limit) in [(2, LIMIT), (3, LIMIT), (2, 10 * LIMIT)] {
        let admitted = hammer(&redis, instances, limit);
        println!(
            "redis, {instances} instances hammering one quota of {limit}: admitted {admitted}, \
             over-admission {}",
            admitted as i64 - limit as i64
        );
        assert!(admitted >= limit, "starved: {admitted}");
        assert!(
            admitted <= limit + (instances - 1) * limit.div_ceil(instances),
            "{instances} instances, over the documented bound: {admitted}"
        );
    }
}

/// Starts `instances` gateways on a fresh quota of `limit`, waits until they see each other,
/// then calls on two connections per instance until each is refused; the calls admitted (also
/// what Redis counted).
fn hammer(redis: &Redis, instances: usize, limit: usize) -> usize {
    let prefix = format!("hot{instances}x{limit}:");
    let rule = format!("{{name: hot, quota: {{limit: {limit}, window: day}}}}");
    let gws: Vec<Gateway> = (0..instances)
        .map(|_| gateway(&rule, redis.port, "closed", &prefix))
        .collect();
    see_each_other(&gws.iter().collect::<Vec<_>>());
    let threads: Vec<_> = (0..2 * instances)
        .map(|i| {
            let addr = gws[i % instances].addr;
            std::thread::spawn(move || {
                let mut m = Mcp::new(addr, "/mcp");
                m.initialize("2025-06-18");
                calls_until_refused(&mut m, instances * limit)
            })
        })
        .collect();
    let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        eventually(Duration::from_secs(10), || redis.total(&prefix)
            == admitted as u64),
        "Redis counted {} of the {admitted} admitted",
        redis.total(&prefix)
    );
    admitted
}

#[test]
fn redis_down_closed_refuses_local_keeps_counting_and_sync_resumes() {
    let port = free_port();
    let Some(redis) = Redis::start(port) else {
        return;
    };
    let rule = "{name: q, quota: {limit: 1000, window: day}}";
    let closed = gateway(rule, port, "closed", "closed:");
    let local = gateway(rule, port, "local", "local:");
    let (mut mc, mut ml) = (session(&closed), session(&local));
    assert!(ok(&echo(&mut mc)));
    assert!(ok(&echo(&mut ml)));
    synced(&closed);
    synced(&local);
    assert_eq!(up(&closed), 1.0);

    drop(redis);
    assert!(eventually(Duration::from_secs(10), || up(&closed) == 0.0
        && up(&local) == 0.0));
    // Closed: every call under the quota is refused while Redis is down.
    let r = echo(&mut mc);
    assert!(!ok(&r), "{}", r.text());
    assert_eq!(r.json()["error"]["data"]["kind"], "quota");
    // Local: still limited by its own count, so still admitted here.
    for i in 0..5 {
        assert!(ok(&echo(&mut ml)), "local call {i} while Redis is down");
    }

    // Redis back (empty: no persistence): both sync again, and what `local` counted while it
    // was down reaches it.
    let redis = Redis::start(port).expect("redis-server again");
    assert!(eventually(Duration::from_secs(10), || up(&closed) == 1.0
        && up(&local) == 1.0));
    assert!(ok(&echo(&mut mc)), "closed admits again once Redis answers");
    assert!(
        eventually(Duration::from_secs(10), || redis.total("local:") >= 5),
        "the calls counted while Redis was down: {}",
        redis.total("local:")
    );
}

#[test]
fn a_key_used_on_one_of_two_instances_gets_the_whole_budget() {
    // The budget is split among the instances that use the key, not all the live ones: A's
    // allotment is all that is left, 20 then 19, not half of it. Redis is then stopped: under
    // `on_failure: local` A goes on with its allotment as last read, so it admits exactly the
    // rest of the budget (half of it, had B counted) with no read to wait for.
    const LIMIT: usize = 20;
    let Some(redis) = Redis::start(free_port()) else {
        return;
    };
    let rule = format!("{{name: q, quota: {{limit: {LIMIT}, window: day}}}}");
    let a = gateway(&rule, redis.port, "local", "alone:");
    let b = gateway(&rule, redis.port, "local", "alone:");
    see_each_other(&[&a, &b]);
    let mut ma = session(&a);
    assert!(call(&mut ma), "the first call on A");
    synced(&a);
    assert_eq!(redis.total("alone:"), 1);
    drop(redis);
    assert!(eventually(Duration::from_secs(10), || up(&a) == 0.0));
    let more = calls_until_refused(&mut ma, LIMIT);
    println!("redis, a key used on one instance of two: 1 + {more} of {LIMIT}");
    assert_eq!(1 + more, LIMIT);
    drop(b);
}

#[test]
fn an_instance_shut_down_cleanly_leaves_the_fleet_at_once() {
    let Some(redis) = Redis::start(free_port()) else {
        return;
    };
    let rule = "{name: q, quota: {limit: 100, window: day}}";
    let a = gateway(rule, redis.port, "closed", "leave:");
    let mut b = gateway(rule, redis.port, "closed", "leave:");
    see_each_other(&[&a, &b]);
    let mut mb = session(&b);
    assert!(call(&mut mb));
    b.sigterm();
    assert!(
        b.wait_exit(Duration::from_secs(10)).is_some(),
        "B did not exit"
    );
    // B removed itself (its last heartbeat is not 2 s old yet: nobody pruned it) and sent its
    // call.
    assert_eq!(redis.ask("ZCARD leave:instances"), ":1");
    assert_eq!(redis.total("leave:"), 1);
    drop(a);
}

#[test]
fn a_command_redis_refuses_is_warned_of_once() {
    let Some(redis) = Redis::start(free_port()) else {
        return;
    };
    // An ACL without ZCARD (every sync sends it): every sync fails, one warning says why.
    assert_eq!(redis.ask("ACL SETUSER default -zcard"), "+OK");
    let gw = gateway(
        "{name: q, quota: {limit: 10, window: day}}",
        redis.port,
        "closed",
        "acl:",
    );
    let errors = || {
        metric_value(
            &gw.metrics(),
            "tollgate_traffic_redis_syncs_total{result=\"error\"}",
        )
    };
    assert!(
        eventually(Duration::from_secs(10), || errors() >= 5.0),
        "the syncs did not fail"
    );
    let log = gw.log.text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Redis refused a command"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("WARN") && warned[0].to_lowercase().contains("noperm"),
        "{}",
        warned[0]
    );
}

/// Loop guards stay per instance with `traffic.redis` (README "loop guard": a window opens on
/// an instance's own clock): a loop spread over two instances of a fleet gets `max` calls on
/// each, and none of them is written to Redis.
#[test]
fn loop_guards_stay_per_instance() {
    let Some(redis) = Redis::start(free_port()) else {
        return;
    };
    let rule = "{name: loops, loop: {max: 3, window: 60s}}";
    let a = gateway(rule, redis.port, "closed", "loops:");
    let b = gateway(rule, redis.port, "closed", "loops:");
    see_each_other(&[&a, &b]);
    for gw in [&a, &b] {
        let mut m = session(gw);
        for i in 0..3 {
            assert!(ok(&echo(&mut m)), "call {i}");
        }
        let v = echo(&mut m).json();
        assert_eq!(
            v["result"]["_meta"]["tollgate/refusal"]["kind"], "loop",
            "{v}"
        );
    }
    synced(&a);
    synced(&b);
    assert_eq!(redis.total("loops:"), 0);
}
