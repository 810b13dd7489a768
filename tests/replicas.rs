//! Upstream replicas: sessions spread over them and stay on theirs, the health check takes a
//! dead replica out and puts it back, a connect that fails moves an initialize on, and `check`
//! names what is wrong with a replica list.

mod harness;

use std::time::Duration;

use harness::{eventually, session, Demo, Gateway, Mcp};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn healthy(gw: &Gateway, upstream: &str, replica: &str) -> f64 {
    harness::metric_value(
        &gw.metrics(),
        &format!(
            "tollgate_upstream_replica_healthy{{upstream=\"{upstream}\",replica=\"{replica}\"}}"
        ),
    )
}

fn works(m: &mut Mcp) -> bool {
    let r = m.request("tools/list", json!({}));
    r.status == 200 && r.json()["result"]["tools"].is_array()
}

#[test]
fn sessions_spread_stay_on_their_replica_and_move_when_it_dies() {
    let a = Demo::start(&[]);
    let b = Demo::start(&[]);
    let a_addr = a.addr.to_string();
    let (a_url, b_url) = (a.url(), b.url());
    let gw = Gateway::builder()
        .yaml(&format!(
            "upstreams:\n  - name: pair\n    replicas: [\"{a_url}\", \"{b_url}\"]\n    \
             retries: {{attempts: 0}}\n    \
             health: {{interval: 100ms, timeout: 1s, unhealthy_after: 2, healthy_after: 2}}\n\
             servers:\n  - path: /mcp\n    upstream: pair\n"
        ))
        // One worker: its least-in-flight choice with nothing in flight takes them in turn.
        .workers(1)
        .start();
    let mut sessions = initialized(&gw, "/mcp", 4);
    // Each session keeps reaching the demo that opened it: another would answer 404.
    for _ in 0..5 {
        for (i, m) in sessions.iter_mut().enumerate() {
            assert!(works(m), "session {i} lost its replica");
        }
    }
    assert_eq!(healthy(&gw, "pair", &a_url), 1.0);
    assert_eq!(healthy(&gw, "pair", &b_url), 1.0);

    drop(a);
    assert!(
        eventually(Duration::from_secs(10), || healthy(&gw, "pair", &a_url)
            == 0.0),
        "{}",
        gw.metrics()
    );
    // Half the sessions were on the dead replica: 404, naming it; the others go on.
    let mut lost = 0;
    for m in &mut sessions {
        let r = m.request("tools/list", json!({}));
        if r.status == 404 {
            assert!(
                r.text().contains("initialize a new one") && r.text().contains("pair"),
                "{}",
                r.text()
            );
            lost += 1;
        } else {
            assert!(r.json()["result"]["tools"].is_array(), "{}", r.text());
        }
    }
    assert_eq!(lost, 2, "sessions were not spread over both replicas");
    // New sessions go to the live replica only, and work.
    for _ in 0..4 {
        let mut m = session(&gw);
        assert!(works(&mut m));
    }

    // Back on its address: healthy again after `healthy_after` passed probes, and it takes new
    // sessions again (two new sessions, one on each).
    let _a = Demo::start_on(&a_addr, &[]);
    assert!(
        eventually(Duration::from_secs(10), || healthy(&gw, "pair", &a_url)
            == 1.0),
        "{}",
        gw.metrics()
    );
    let metrics = gw.metrics();
    for result in ["passed", "failed"] {
        let line = format!(
            "tollgate_upstream_health_checks_total{{upstream=\"pair\",replica=\"{a_url}\",result=\"{result}\"}}"
        );
        assert!(
            harness::metric_value(&metrics, &line) > 0.0,
            "{line}\n{metrics}"
        );
    }
    let mut fresh: Vec<Mcp> = (0..2).map(|_| session(&gw)).collect();
    drop(b);
    assert!(eventually(Duration::from_secs(10), || healthy(
        &gw, "pair", &b_url
    ) == 0.0));
    let on_a = fresh.iter_mut().map(works).filter(|ok| *ok).count();
    assert_eq!(on_a, 1, "the recovered replica took no new session");
}

#[test]
fn an_initialize_moves_on_when_a_replica_refuses_connections() {
    let demo = Demo::start(&[]);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/mcp", l.local_addr().unwrap())
    };
    let gw = Gateway::builder()
        .yaml(&format!(
            "upstreams:\n  - name: pair\n    replicas: [\"{dead}\", \"{}\"]\n    retries: {{attempts: 0}}\n    \
             circuit_breaker: {{consecutive_failures: 0}}\n    health: {{interval: 1h}}\n\
             servers:\n  - path: /mcp\n    upstream: pair\n",
            demo.url()
        ))
        .workers(1)
        .start();
    // The health check has not (yet) taken the dead one out: each initialize that picks it
    // fails to connect and is sent to the other replica instead.
    for i in 0..4 {
        let mut m = Mcp::new(gw.addr, "/mcp");
        let r = m.initialize("2025-06-18");
        assert_eq!(r.status, 200, "initialize {i}: {}", r.text());
        assert!(works(&mut m), "session {i}");
    }
}

#[test]
fn check_names_what_is_wrong_with_replicas() {
    let dir = std::env::temp_dir().join(format!("tollgate-replicas-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "url: \"http://127.0.0.1:1/mcp\"\n    replicas: [\"http://127.0.0.1:2/mcp\"]",
            "upstreams[0].replicas: write either url (one replica) or replicas, not both",
        ),
        (
            "replicas: [\"http://127.0.0.1:1/mcp\", \"http://127.0.0.1:1/mcp\"]",
            "upstreams[0].replicas[1]: duplicate replica (also replicas[0])",
        ),
        (
            "replicas: [\"http://127.0.0.1:1/mcp\", \"https://127.0.0.1:2/mcp\"]",
            "mixes http:// and https:// replicas",
        ),
        ("replicas: []", "upstreams[0].replicas: empty list"),
        (
            "replicas: [\"http://127.0.0.1:1/mcp\", \"builtin:demo\"]",
            "upstreams[0].replicas[1]: builtin:demo cannot be one of several replicas",
        ),
        (
            "replicas: [\"http://127.0.0.1:1/sse\", \"http://127.0.0.1:2/sse\"]\n    transport: sse",
            "replicas are not supported with transport: sse",
        ),
        (
            "url: \"http://127.0.0.1:1/mcp\"\n    health: {interval: 0s, unhealthy_after: 0, path: \"nope\"}",
            "upstreams[0].health.interval: must be at least 1ms",
        ),
    ];
    for (i, (upstream, want)) in cases.iter().enumerate() {
        let cfg = dir.join(format!("c{i}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "upstreams:\n  - name: up\n    {upstream}\nservers:\n  - path: /mcp\n    upstream: up\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {stderr}");
        assert!(
            stderr.contains(want),
            "case {i}: want {want:?} in\n{stderr}"
        );
    }
    // Every problem of the health section at once.
    let stderr = {
        let cfg = dir.join("c6.yaml");
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(
        stderr.contains("upstreams[0].health.unhealthy_after"),
        "{stderr}"
    );
    assert!(stderr.contains("upstreams[0].health.path"), "{stderr}");
    // A good list renders as written, with the health defaults.
    let cfg = dir.join("good.yaml");
    std::fs::write(
        &cfg,
        "upstreams:\n  - name: up\n    replicas: [\"http://127.0.0.1:1/mcp\", \"http://localhost:2/mcp\"]\n\
         servers:\n  - path: /mcp\n    upstream: up\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "    replicas:\n      - \"http://127.0.0.1:1/mcp\"\n      - \"http://localhost:2/mcp\"\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("    health:\n      interval: 5s\n"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The config of a gateway with upstream `pair` on replicas `urls` (in that order), served at
/// `/mcp`, and federated with the built-in demo at `/fed`.
fn pair_config(urls: &[String], extra: &str) -> String {
    let list = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "upstreams:\n  - name: pair\n    replicas: [{list}]\n    retries: {{attempts: 0}}\n{extra}  \
         - name: solo\n    url: builtin:demo\n\
         servers:\n  - path: /mcp\n    upstream: pair\n  - path: /fed\n    upstreams: [pair, solo]\n"
    )
}

#[test]
fn a_reload_that_reorders_replicas_keeps_sessions_on_theirs() {
    let a = Demo::start(&[]);
    let b = Demo::start(&[]);
    let urls = [a.url(), b.url()];
    let gw = Gateway::builder()
        .yaml(&pair_config(&urls, ""))
        .workers(1)
        .rust_log("info")
        .start();
    let mut sessions = initialized(&gw, "/mcp", 4);
    let base = std::fs::read_to_string(gw.config_path()).unwrap();
    let reordered = base.replace(
        &pair_config(&urls, ""),
        &pair_config(&[urls[1].clone(), urls[0].clone()], ""),
    );
    assert_ne!(base, reordered);
    gw.reload_with(&reordered);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .log
            .text()
            .contains("config reloaded")),
        "{}",
        gw.log.text()
    );
    for _ in 0..3 {
        for (i, m) in sessions.iter_mut().enumerate() {
            assert!(works(m), "session {i} lost its replica across the reload");
        }
    }
}

#[test]
fn federated_member_sessions_stay_on_their_replica() {
    let a = Demo::start(&[]);
    let b = Demo::start(&[]);
    let gw = Gateway::builder()
        .yaml(&pair_config(&[a.url(), b.url()], ""))
        .workers(1)
        .start();
    let mut sessions = initialized(&gw, "/fed", 4);
    for _ in 0..3 {
        for (i, m) in sessions.iter_mut().enumerate() {
            let r = m.call_tool("pair__echo", json!({"text": "hi"}));
            assert_eq!(r["result"]["content"][0]["text"], "hi", "session {i}: {r}");
        }
    }
    // Clients of the stateless revision reach it through sessions the gateway holds, each on
    // one replica.
    for i in 0..6 {
        let r = gw.stateless(
            "/mcp",
            "tools/call",
            Some("echo"),
            json!({"name": "echo", "arguments": {"text": "hi"}}),
            &[],
        );
        assert_eq!(r.status, 200, "{i}: {}", r.text());
    }
}

#[test]
fn a_reload_that_adds_replicas_keeps_sessions_on_the_one_they_began_on_and_one_that_drops_it_ends_them(
) {
    let a = Demo::start(&[]);
    let b = Demo::start(&[]);
    let one = pair_config(std::slice::from_ref(&a.url()), "");
    let gw = Gateway::builder()
        .yaml(&one)
        .workers(1)
        .rust_log("info")
        .start();
    let mut sessions = initialized(&gw, "/mcp", 4);
    let base = std::fs::read_to_string(gw.config_path()).unwrap();
    let reloaded = |n: usize| {
        eventually(Duration::from_secs(5), || {
            gw.log.text().matches("config reloaded").count() >= n
        })
    };
    // One URL → two replicas: the sessions stay on the first (the second does not know them).
    gw.reload_with(&base.replace(&one, &pair_config(&[a.url(), b.url()], "")));
    assert!(reloaded(1), "{}", gw.log.text());
    for _ in 0..3 {
        for (i, m) in sessions.iter_mut().enumerate() {
            assert!(works(m), "session {i} left its replica when one was added");
        }
    }
    // Its replica dropped: the session is gone (404, initialize again), not sent elsewhere.
    gw.reload_with(&base.replace(&one, &pair_config(std::slice::from_ref(&b.url()), "")));
    assert!(reloaded(2), "{}", gw.log.text());
    for (i, m) in sessions.iter_mut().enumerate() {
        let r = m.request("tools/list", json!({}));
        assert_eq!(r.status, 404, "session {i}: {}", r.text());
        // The gateway's answer, not the other replica's (it would say 404 too, not knowing it).
        assert!(
            r.text().contains("no longer configured"),
            "session {i}: {}",
            r.text()
        );
    }
    let mut fresh = session(&gw);
    assert!(works(&mut fresh));
}

fn in_flight(gw: &Gateway, replica: &str) -> f64 {
    harness::metric_value(
        &gw.metrics(),
        &format!("tollgate_upstream_replica_in_flight{{upstream=\"pair\",replica=\"{replica}\"}}"),
    )
}

/// Which demo a session is on: the one started with `--tools 1` lists one tool more.
fn tools_listed(m: &mut Mcp) -> usize {
    let r = m.request("tools/list", json!({}));
    r.json()["result"]["tools"].as_array().unwrap().len()
}

#[test]
fn an_open_event_stream_keeps_its_replica_busy_until_it_ends() {
    use std::io::{Read, Write};
    let a = Demo::start(&["--tools", "1"]);
    let b = Demo::start(&[]);
    let (a_url, b_url) = (a.url(), b.url());
    let gw = Gateway::builder()
        .yaml(&format!(
            "upstreams:\n  - name: pair\n    replicas: [\"{a_url}\", \"{b_url}\"]\n    \
             health: {{interval: 1h}}\n\
             servers:\n  - path: /mcp\n    upstream: pair\n"
        ))
        // One worker: the pick sees every request's count.
        .workers(1)
        .start();
    let mut first = session(&gw);
    let on_a = tools_listed(&mut first) == 7;
    let (busy, other) = if on_a {
        (&a_url, &b_url)
    } else {
        (&b_url, &a_url)
    };
    // The other demo's tool count.
    let quiet = if on_a { 6 } else { 7 };
    assert!(eventually(Duration::from_secs(5), || in_flight(&gw, busy) == 0.0));

    // A long progress stream in that session, read to its first event and then left open.
    let body = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{
        "name":"progress","arguments":{"steps":1000,"interval_ms":50},"_meta":{"progressToken":"p"}}})
    .to_string();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost:{}\r\n",
        gw.addr.port()
    );
    for (n, v) in first.headers() {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut stream = std::net::TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("notifications/progress") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("text/event-stream"));
    // Past its response head, the stream still counts on its replica.
    assert_eq!(in_flight(&gw, busy), 1.0, "{}", gw.metrics());
    assert_eq!(in_flight(&gw, other), 0.0, "{}", gw.metrics());

    // So every new session goes to the other replica (with nothing counted on either, they
    // would alternate).
    for i in 0..4 {
        let mut m = session(&gw);
        assert_eq!(
            tools_listed(&mut m),
            quiet,
            "session {i} went to the busy replica"
        );
    }

    // The client leaves mid-stream: the count comes back.
    drop(stream);
    assert!(
        eventually(Duration::from_secs(10), || in_flight(&gw, busy) == 0.0),
        "{}",
        gw.metrics()
    );
    // The last session's count ends with its response, which may be after its client read it.
    assert!(
        eventually(Duration::from_secs(10), || in_flight(&gw, other) == 0.0),
        "{}",
        gw.metrics()
    );
}

fn checks(gw: &Gateway, replica: &str, result: &str) -> f64 {
    harness::metric_value(
        &gw.metrics(),
        &format!(
            "tollgate_upstream_health_checks_total{{upstream=\"pair\",replica=\"{replica}\",result=\"{result}\"}}"
        ),
    )
}

#[test]
fn a_stalled_replica_does_not_hold_up_the_other_replicas_probes() {
    // Accepts connections (the kernel does) and never answers: each probe of it waits out
    // the whole timeout.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_url = format!("http://{}/mcp", stalled.local_addr().unwrap());
    let demo = Demo::start(&[]);
    let gw = Gateway::builder()
        .yaml(&format!(
            "upstreams:\n  - name: pair\n    replicas: [\"{stalled_url}\", \"{}\"]\n    \
             health: {{interval: 20ms, timeout: 30s}}\n\
             servers:\n  - path: /mcp\n    upstream: pair\n",
            demo.url()
        ))
        .start();
    // The stalled replica's first probe is still under way (it ends only after 30 s), yet the
    // other replica is probed again and again meanwhile.
    assert!(
        eventually(Duration::from_secs(20), || checks(
            &gw,
            &demo.url(),
            "passed"
        ) >= 5.0),
        "{}",
        gw.metrics()
    );
    assert_eq!(checks(&gw, &stalled_url, "failed"), 0.0, "{}", gw.metrics());
    assert_eq!(checks(&gw, &stalled_url, "passed"), 0.0);
    drop(stalled);
}

/// `n` sessions initialized on `path`, each on a connection of its own.
fn initialized(gw: &Gateway, path: &str, n: usize) -> Vec<Mcp> {
    (0..n)
        .map(|_| {
            let mut m = Mcp::new(gw.addr, path);
            m.initialize("2025-06-18");
            m
        })
        .collect()
}
