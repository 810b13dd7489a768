//! Decision informed: per-core limiter state (`proxy::limit::Local`: a `RefCell` map per worker,
//! shares rebalanced by the exchange thread) versus one shared table of counters behind a lock.
//! Candidate: `Local::decide` on an existing key, allow path (a hash of the key parts, a map
//! lookup, the cap comparison, and the admission pushed on the exchange's lock-free queue), with
//! the real exchange thread running. Baseline: lock + lookup + GCRA arithmetic in a
//! `Mutex<HashMap<u64, u64>>` of 10k keys. Single-threaded, so the baseline's lock is never
//! contended here: a lower bound of its cost with one worker per core.
//! Also the loop guard's decision (`Local::decide_loop`: the same path, its window counted on
//! the exchange so it holds across workers), on calls with an open window and on a new call
//! each time.
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::policy::traffic::Gcra;
use tollgate::proxy::limit::{Exchange, Local};

fn limiter(c: &mut Criterion) {
    // A rate high enough that the bench never runs out of it.
    let cfg = tollgate::config::load_str(
        "traffic:\n  rules:\n    - {name: hot, key: [principal], rate: {limit: 1000000000, per: 1s}}\n",
    )
    .expect("config");
    let x = Exchange::new(1);
    x.install(&cfg.traffic);
    let local = Local::new(x.clone(), 0);
    let rule = &cfg.traffic.rules[0];
    let principal = [0x5Au8; 16];
    let key = local.key_of(&[&principal]);
    assert!(local.decide(&cfg.traffic, rule, key));
    c.bench_function("limit/per_core_hit_allow", |b| {
        b.iter(|| {
            let key = local.key_of(&[black_box(&principal)]);
            local.decide(&cfg.traffic, rule, key)
        })
    });
}

fn loop_guard(c: &mut Criterion) {
    // The largest max (a million a window): 1024 calls in turn never reach it in a bench run.
    let cfg = tollgate::config::load_str(
        "traffic:\n  rules:\n    - {name: loops, loop: {max: 1000000, window: 60s}}\n",
    )
    .expect("config");
    let x = Exchange::new(1);
    x.install(&cfg.traffic);
    let local = Local::new(x.clone(), 0);
    let g = cfg.traffic.rules[0].loop_guard.expect("loop guard");
    let principal = [0x5Au8; 16];
    let key = |n: u64| local.key_of(&[&principal, b"echo", &n.to_le_bytes()]);
    for n in 0..1024 {
        assert!(local.decide_loop(&cfg.traffic, &g, key(n)));
    }
    let mut n = 0u64;
    c.bench_function("limit/loop_guard_hit_allow", |b| {
        b.iter(|| {
            n = (n + 1) % 1024;
            local.decide_loop(&cfg.traffic, &g, key(black_box(n)))
        })
    });
    // Every call new (other arguments): an entry made each time, evicted past max_keys.
    let mut n = 1u64 << 40;
    c.bench_function("limit/loop_guard_new_call_allow", |b| {
        b.iter(|| {
            n += 1;
            local.decide_loop(&cfg.traffic, &g, key(black_box(n)))
        })
    });
}

fn baseline(c: &mut Criterion) {
    let gcra = Gcra::new(1_000_000_000, Duration::from_secs(1), 1_000_000_000);
    let table: Mutex<HashMap<u64, u64>> = Mutex::new((0..10_000u64).map(|k| (k, 0)).collect());
    let hasher = std::hash::RandomState::new();
    let principal = [0x5Au8; 16];
    let start = std::time::Instant::now();
    c.bench_function("limit/mutex_hashmap_allow", |b| {
        b.iter(|| {
            use std::hash::BuildHasher;
            let key = hasher.hash_one(black_box(&principal)) % 10_000;
            let now = start.elapsed().as_micros() as u64;
            let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
            let tat = t.entry(key).or_insert(0);
            let ok = gcra.available(*tat, now) > 0;
            if ok {
                *tat = gcra.admit(*tat, now);
            }
            ok
        })
    });
}

criterion_group!(benches, limiter, loop_guard, baseline);
criterion_main!(benches);
