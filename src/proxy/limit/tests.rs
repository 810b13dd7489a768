//! The limiter's unit tests: a worker's entries against the exchange's syncs, run by hand (no
//! sync thread), with and without `traffic.redis`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::traffic::CalWindow;

use super::exchange::{Chans, Def, Event, Update, What, REDIS_LOCAL, REDIS_NORMAL};
use super::sync::{allotment, sync_once, Book, DEFER};
use super::*;

/// An exchange that knows limit 7 of `kind`, with its queues, and no sync thread: the test
/// runs `sync_once` itself.
fn exchange_with(kind: LimitKind, workers: usize, max_keys: usize) -> Arc<Exchange> {
    let x = Exchange::new(workers);
    x.chans(max_keys, max_keys * workers);
    x.max_keys.store(max_keys * workers, Ordering::Relaxed);
    if let Ok(mut d) = x.defs.lock() {
        let mut m = HashMap::new();
        m.insert(
            7,
            Def {
                kind,
                rule: "r".into(),
            },
        );
        *d = Arc::new(m);
    }
    x.sync_us.store(20_000, Ordering::Relaxed);
    x
}

fn event(x: &Exchange, worker: u16, epoch: u32, what: What, level: u64, at: u64, end: i64) {
    x.chans
        .get()
        .unwrap()
        .events
        .try_send(Event {
            fp: 7,
            key: 1,
            worker,
            epoch,
            what,
            level,
            at_us: at,
            window_end: end,
            defer: 0,
        })
        .unwrap();
}

fn updates(x: &Exchange, worker: usize) -> Vec<Update> {
    x.chans.get().unwrap().updates[worker]
        .1
        .try_iter()
        .collect()
}

/// Fills the events queue (nothing more is taken until a sync drains it).
fn fill_events(x: &Exchange) -> &Chans {
    let ch = x.chans.get().unwrap();
    let filler = Event {
        fp: 0,
        key: 0,
        worker: 0,
        epoch: 0,
        what: What::Demand,
        level: 0,
        at_us: 0,
        window_end: 0,
        defer: 0,
    };
    while ch.events.try_send(filler).is_ok() {}
    ch
}

const WALL: i64 = 1_000_000;

#[test]
fn a_sync_moves_the_budget_to_the_core_that_uses_it_and_tells_only_the_cores_that_hold_it() {
    let kind = LimitKind::Rate {
        limit: 100,
        per: Duration::from_secs(3600),
        burst: 100,
    };
    let x = exchange_with(kind, 3, 100);
    let now = 1_000_000_000;
    for level in 1..=40 {
        event(&x, 0, 1, What::Use, level, now, 0);
    }
    // Worker 1 asks (its first share ran out elsewhere); worker 2 never used the key.
    event(&x, 1, 5, What::Demand, 0, now, 0);
    let mut book = Book::default();
    sync_once(&x, &mut book, now, WALL);
    let (u0, u1) = (updates(&x, 0), updates(&x, 1));
    assert_eq!((u0.len(), u1.len()), (1, 1));
    assert!(updates(&x, 2).is_empty(), "a worker without the key");
    // 60 left (the refill of one interval is far below one call), by demand 40 : 1.
    assert_eq!(u0[0].share + u1[0].share, 60);
    assert!(u0[0].share >= 58, "{:?}", u0[0]);
    assert_eq!((u0[0].seen, u0[0].epoch), (40, 1));
    assert_eq!((u1[0].seen, u1[0].epoch), (0, 5));
    // No demand: split evenly once, then nothing changes and nothing is sent.
    sync_once(&x, &mut book, now, WALL);
    assert_eq!(updates(&x, 1)[0].share, 30);
    assert_eq!(updates(&x, 0)[0].share, 30);
    sync_once(&x, &mut book, now, WALL);
    assert!(updates(&x, 0).is_empty() && updates(&x, 1).is_empty());
    // A level sent after lost events counts every call it carries.
    event(&x, 0, 1, What::Use, 45, now, 0);
    sync_once(&x, &mut book, now, WALL);
    assert_eq!(updates(&x, 0)[0].left, 55);
}

#[test]
fn quota_left_is_the_limit_less_the_window_count_and_concurrency_releases() {
    let x = exchange_with(
        LimitKind::Quota {
            limit: 10,
            window: CalWindow::Day,
        },
        1,
        100,
    );
    let now = 1_000_000_000_000;
    let end = WALL + 100;
    for level in 1..=4 {
        event(&x, 0, 3, What::Use, level, now, end);
    }
    let mut book = Book::default();
    sync_once(&x, &mut book, now, WALL);
    let u = updates(&x, 0);
    assert_eq!((u[0].left, u[0].share, u[0].seen), (6, 6, 4));
    // The window ended: the exchange drops the key.
    sync_once(&x, &mut book, now, end);
    assert!(book.keys.is_empty());

    let x = exchange_with(LimitKind::Concurrency { limit: 2 }, 1, 100);
    event(&x, 0, 1, What::Use, 1, now, 0);
    event(&x, 0, 1, What::Use, 2, now, 0);
    let mut book = Book::default();
    sync_once(&x, &mut book, now, WALL);
    assert_eq!(updates(&x, 0)[0].left, 0);
    // One release event lost: the next level (0) frees both slots.
    event(&x, 0, 1, What::Use, 0, now, 0);
    sync_once(&x, &mut book, now, WALL);
    assert_eq!(updates(&x, 0)[0].left, 2);
    // Idle everywhere: forgotten.
    sync_once(&x, &mut book, now, WALL);
    assert!(book.keys.is_empty());
    assert!(updates(&x, 0)[0].forget);
}

fn rate_config(max_keys: usize, limit: u64) -> crate::config::Config {
    crate::config::load_str(&format!(
        "traffic:\n  max_keys: {max_keys}\n  rules:\n    - {{name: r, key: [principal], rate: {{limit: {limit}, per: 1h}}}}\n"
    ))
    .unwrap()
}

/// An exchange for `cfg`'s limits with no sync thread.
fn installed(cfg: &crate::config::Config, workers: usize) -> Arc<Exchange> {
    let x = Exchange::new(workers);
    x.started.store(true, Ordering::Relaxed);
    x.install(&cfg.traffic);
    x
}

/// One worker on an installed exchange that has admitted ten calls of key 1 under the
/// first rule (not yet synced), and an empty book.
fn ten_calls_on_key_1(cfg: &crate::config::Config) -> (Arc<Exchange>, Rc<Local>, Book) {
    let rule = &cfg.traffic.rules[0];
    let x = installed(cfg, 1);
    let local = Local::new(x.clone(), 0);
    for _ in 0..10 {
        assert!(local.decide(&cfg.traffic, rule, 1));
    }
    (x, local, Book::default())
}

#[test]
fn a_full_map_evicts_the_oldest_idle_key() {
    let cfg = rate_config(2, 10);
    let local = Local::new(Exchange::new(1), 0);
    let rule = &cfg.traffic.rules[0];
    for k in 0..5 {
        assert!(local.decide(&cfg.traffic, rule, k));
    }
    assert_eq!(local.map.borrow().len(), 2);
    assert!(local.map.borrow().contains_key(&(rule.limits[0].fp, 4)));
}

#[test]
fn a_key_evicted_and_re_created_gets_no_second_first_share() {
    let cfg = rate_config(2, 10);
    let rule = &cfg.traffic.rules[0];
    let (x, local, mut book) = ten_calls_on_key_1(&cfg);
    assert!(
        !local.decide(&cfg.traffic, rule, 1),
        "the 11th of a burst of 10"
    );
    sync_once(&x, &mut book, now_us(), WALL);
    // Evicted by two other keys, then used again: the exchange knows it, so no fresh
    // burst; its share comes from the exchange, and the exchange says it is spent.
    for k in [2, 3] {
        assert!(local.decide(&cfg.traffic, rule, k));
    }
    assert!(!local.map.borrow().contains_key(&(rule.limits[0].fp, 1)));
    for i in 0..3 {
        assert!(!local.decide(&cfg.traffic, rule, 1), "{i}");
        sync_once(&x, &mut book, now_us(), WALL);
    }
    // A key the exchange never saw still starts with its first share.
    assert!(local.decide(&cfg.traffic, rule, 99));
}

#[test]
fn the_eviction_clock_stays_bounded_through_evict_and_forget_cycles() {
    let cfg = rate_config(8, 1_000_000);
    let rule = &cfg.traffic.rules[0];
    let local = Local::new(Exchange::new(1), 0);
    let fp = rule.limits[0].fp;
    for round in 0..500u64 {
        for k in 0..20 {
            assert!(local.decide(&cfg.traffic, rule, round * 100 + k));
        }
        // The exchange forgets some (as it does for refilled rates).
        local
            .map
            .borrow_mut()
            .retain(|k, _| k.1 % 3 != 0 || k.0 != fp);
        let (clock, map) = (local.clock.borrow().len(), local.map.borrow().len());
        assert!(map <= 8);
        assert!(clock <= 2 * 8 + 64 + 1, "round {round}: clock {clock}");
    }
}

#[test]
fn the_exchange_evicts_its_longest_idle_keys_past_max_keys() {
    let kind = LimitKind::Quota {
        limit: 1000,
        window: CalWindow::Month,
    };
    let x = exchange_with(kind, 1, 10);
    let ch = x.chans.get().unwrap();
    let mut book = Book::default();
    let now = 1_000_000_000;
    // 30 keys, one sync apart, all in a window that has not ended.
    for key in 0..30u64 {
        ch.events
            .try_send(Event {
                fp: 7,
                key,
                worker: 0,
                epoch: 1,
                what: What::Use,
                level: 1,
                at_us: now,
                window_end: WALL + 1_000_000,
                defer: 0,
            })
            .unwrap();
        sync_once(&x, &mut book, now, WALL);
    }
    assert!(book.keys.len() <= 10, "{}", book.keys.len());
    // The most recent stay, and the evicted were told to the worker.
    assert!(book.keys.contains_key(&(7, 29)));
    assert!(!book.keys.contains_key(&(7, 0)));
    assert!(updates(&x, 0).iter().any(|u| u.forget && u.key == 0));
}

#[test]
fn a_release_the_full_queue_dropped_reaches_the_exchange_later() {
    let cfg = crate::config::load_str(
        "traffic:\n  rules:\n    - {name: c, tools: [slow], concurrency: 1}\n",
    )
    .unwrap();
    let rule = &cfg.traffic.rules[0];
    let fp = rule.limits[0].fp;
    let x = installed(&cfg, 1);
    let local = Local::new(x.clone(), 0);
    let mut book = Book::default();
    let now = now_us();
    let mut map = local.map.borrow_mut();
    assert!(matches!(
        local.judge(&mut map, &cfg.traffic, &rule.limits[0], 1, now, 0),
        Judged::Admit
    ));
    local.admitted(&mut map, (fp, 1), 1, now);
    drop(map);
    sync_once(&x, &mut book, now, WALL);
    assert_eq!(book.keys[&(fp, 1)].sides[0].level, 1);
    // The queue is full when the call ends: its release is not taken.
    let ch = fill_events(&x);
    local.release(fp, 1);
    assert!(local.map.borrow()[&(fp, 1)].dirty);
    sync_once(&x, &mut book, now, WALL);
    assert_eq!(book.keys[&(fp, 1)].sides[0].level, 1, "not yet");
    // The next flush on this worker (the tick's, here) sends the level again.
    while ch.events_rx.try_recv().is_ok() {}
    local.send_counted();
    sync_once(&x, &mut book, now, WALL);
    assert!(book
        .keys
        .get(&(fp, 1))
        .is_none_or(|g| g.sides[0].level == 0));
}

#[test]
fn levels_deferred_while_plentiful_never_take_two_workers_past_the_limit() {
    // 1000 a day (a quota: a rate's next-interval refill would blur the bound); a 10 s
    // sync interval: after each worker's first flush, only the deferral bound sends.
    let cfg = crate::config::load_str(
        "traffic:\n  sync_interval: 10s\n  rules:\n    - {name: q, key: [principal], quota: {limit: 1000, window: day}}\n",
    )
    .unwrap();
    let rule = &cfg.traffic.rules[0];
    let fp = rule.limits[0].fp;
    let x = installed(&cfg, 2);
    let (w0, w1) = (Local::new(x.clone(), 0), Local::new(x.clone(), 1));
    let mut book = Book::default();
    let (mut admitted, mut deferred) = (0, false);
    for round in 0..120 {
        // Worker 0 is hot, worker 1 calls now and then.
        for _ in 0..20 {
            admitted += u64::from(w0.decide(&cfg.traffic, rule, 1));
        }
        for _ in 0..3 {
            admitted += u64::from(w1.decide(&cfg.traffic, rule, 1));
        }
        deferred |= w0
            .map
            .borrow()
            .get(&(fp, 1))
            .is_some_and(|e| e.defer == DEFER);
        sync_once(&x, &mut book, now_us(), WALL);
        assert!(
            admitted <= 1000,
            "past the limit in round {round}: {admitted}"
        );
    }
    assert!(deferred, "the budget was plentiful at first");
    assert!(admitted >= 990, "the budget went unused: {admitted}");
    assert_eq!(
        w0.map.borrow()[&(fp, 1)].defer,
        0,
        "every call told near the limit"
    );
    w0.send_counted();
    w1.send_counted();
    sync_once(&x, &mut book, now_us(), WALL);
    let g = &book.keys[&(fp, 1)];
    assert_eq!(
        g.sides[0].level + g.sides[1].level,
        admitted,
        "every call counted"
    );
}

#[test]
fn an_update_for_an_older_epoch_gives_no_deferral_or_reserve() {
    let cfg = crate::config::load_str(
        "traffic:\n  rules:\n    - {name: q, key: [principal], quota: {limit: 10000, window: day}}\n",
    )
    .unwrap();
    let rule = &cfg.traffic.rules[0];
    let fp = rule.limits[0].fp;
    let x = installed(&cfg, 1);
    let local = Local::new(x.clone(), 0);
    let mut book = Book::default();
    assert!(local.decide(&cfg.traffic, rule, 1));
    sync_once(&x, &mut book, now_us(), WALL);
    // Plenty left: the update lets the worker defer. Before it is applied the entry
    // starts a new epoch (as a rolled window or a re-created entry does).
    let mut map = local.map.borrow_mut();
    map.get_mut(&(fp, 1)).unwrap().epoch = local.epoch();
    local.apply(&mut map, 0);
    assert_eq!(map[&(fp, 1)].defer, 0, "the old epoch's deferral");
    drop(map);
    // The same update applied to its own epoch does defer.
    assert!(local.decide(&cfg.traffic, rule, 1));
    local.send_counted();
    sync_once(&x, &mut book, now_us(), WALL);
    let mut map = local.map.borrow_mut();
    local.apply(&mut map, 0);
    assert_eq!(map[&(fp, 1)].defer, DEFER);
}

#[test]
fn a_key_the_exchange_forgets_keeps_the_calls_it_had_not_seen() {
    let cfg = rate_config(100, 100);
    let rule = &cfg.traffic.rules[0];
    let fp = rule.limits[0].fp;
    let x = installed(&cfg, 1);
    let local = Local::new(x.clone(), 0);
    let mut book = Book::default();
    let now = now_us();
    // The first call's level goes at once; the exchange sees the key used.
    assert!(local.decide(&cfg.traffic, rule, 1));
    sync_once(&x, &mut book, now, WALL);
    // A second call, its level not taken by a full queue; two hours later the exchange
    // has seen the key idle and refilled: it drops it and tells the worker to forget it.
    fill_events(&x);
    assert!(local.decide(&cfg.traffic, rule, 1));
    assert!(local.map.borrow()[&(fp, 1)].dirty);
    let later = now + 7_200_000_000;
    sync_once(&x, &mut book, later, WALL);
    sync_once(&x, &mut book, later, WALL);
    assert!(!book.keys.contains_key(&(fp, 1)), "forgotten");
    // The worker keeps the unseen call as a new epoch's level; its flush brings the key
    // back with that one call.
    let mut map = local.map.borrow_mut();
    local.apply(&mut map, 0);
    assert_eq!(map[&(fp, 1)].level, 1);
    drop(map);
    local.send_counted();
    sync_once(&x, &mut book, later, WALL);
    assert_eq!(book.keys[&(fp, 1)].sides[0].level, 1);
    // The call counts in the rate: one emission interval (36 s) ahead of when it was sent.
    assert!(book.keys[&(fp, 1)].tat > now_us() + 30_000_000);
}

#[test]
fn a_rate_refusal_says_when_the_next_call_conforms() {
    // 10 an hour, burst 10: one every 360 s.
    let cfg = rate_config(100, 10);
    let rule = &cfg.traffic.rules[0];
    let (x, local, mut book) = ten_calls_on_key_1(&cfg);
    sync_once(&x, &mut book, now_us(), WALL);
    let mut map = local.map.borrow_mut();
    local.apply(&mut map, 0);
    let now = now_us();
    match local.judge(&mut map, &cfg.traffic, &rule.limits[0], 1, now, 0) {
        Judged::Over { retry_ms, wait } => {
            assert!(!wait);
            assert!(
                (359_000..=360_000).contains(&retry_ms),
                "one emission interval, not more: {retry_ms}"
            );
        }
        Judged::Admit => panic!("the 11th call of a burst of 10"),
    }
}

/// A config with `rule` and a `traffic.redis` nobody answers on (`on_failure: local`):
/// the exchange goes on with its allotments, which the test sets as a Redis read would.
fn fleet_config(rule: &str) -> crate::config::Config {
    crate::config::load_str(&format!(
        "traffic:\n  rules:\n    - {rule}\n  redis:\n    url: \"redis://127.0.0.1:1/0\"\n    \
         timeout: 10ms\n    on_failure: local\n"
    ))
    .unwrap()
}

fn judged(local: &Local, cfg: &crate::config::Config) -> Judged {
    let mut map = local.map.borrow_mut();
    local.apply(&mut map, 0);
    let l = &cfg.traffic.rules[0].limits[0];
    local.judge(&mut map, &cfg.traffic, l, 1, now_us(), 0)
}

fn waits(j: Judged) -> bool {
    match j {
        Judged::Over { wait, .. } => wait,
        Judged::Admit => panic!("admitted"),
    }
}

/// One worker on an installed exchange for `cfg`, and a book that counts two live
/// instances (this one's allotment is half the fleet's budget).
fn one_of_two_instances(cfg: &crate::config::Config) -> (Arc<Exchange>, Rc<Local>, Book) {
    let x = installed(cfg, 1);
    let local = Local::new(x.clone(), 0);
    let book = Book {
        live: 2,
        ..Book::default()
    };
    (x, local, book)
}

/// A sync now, as if it had read Redis (nobody answers the test's URL).
fn sync_as_read(x: &Arc<Exchange>, book: &mut Book) {
    sync_once(x, book, now_us(), wall_ms() / 1000);
    x.redis_state.store(REDIS_NORMAL, Ordering::Relaxed);
}

#[test]
fn with_redis_an_instance_admits_its_allotment_then_waits_while_the_fleet_has_more() {
    let cfg = fleet_config("{name: q, quota: {limit: 10, window: day}}");
    let rule = &cfg.traffic.rules[0];
    let fp = rule.limits[0].fp;
    // Two live instances: this one may admit ceil(10 / 2) until its next Redis read.
    let (x, local, mut book) = one_of_two_instances(&cfg);
    let sync = |book: &mut Book| sync_as_read(&x, book);
    assert!(waits(judged(&local, &cfg)), "no first share with Redis");
    sync(&mut book);
    for i in 0..5 {
        assert!(local.decide(&cfg.traffic, rule, 1), "call {i}");
    }
    // Its allotment is spent, the fleet's budget is not: wait for the next read.
    assert!(waits(judged(&local, &cfg)));
    sync(&mut book);
    assert_eq!(book.keys[&(fp, 1)].allot, 0);
    assert!(waits(judged(&local, &cfg)));
    // A read: the other instance used 2, so 3 are left, 2 of them here.
    let g = book.keys.get_mut(&(fp, 1)).unwrap();
    (g.others, g.allot) = (2, allotment(3, 2));
    sync(&mut book);
    for i in 0..2 {
        assert!(
            local.decide(&cfg.traffic, rule, 1),
            "call {i} of the new allotment"
        );
    }
    assert!(waits(judged(&local, &cfg)));
    // The fleet's budget is spent: refused at once, until the window ends.
    book.keys.get_mut(&(fp, 1)).unwrap().others = 3;
    sync(&mut book);
    match judged(&local, &cfg) {
        Judged::Over { wait, retry_ms } => {
            assert!(!wait);
            assert!(retry_ms > 1000, "until the window's end: {retry_ms}");
        }
        Judged::Admit => panic!("over the fleet's budget"),
    }
}

#[test]
fn with_redis_down_under_local_a_spent_allotment_is_refused_at_once() {
    // Redis unreachable (`on_failure: local`), two instances as last read: 5 here, then
    // refused without waiting for a read that is not coming, to retry in a second.
    let cfg = fleet_config("{name: q, quota: {limit: 10, window: day}}");
    let rule = &cfg.traffic.rules[0];
    let (x, local, mut book) = one_of_two_instances(&cfg);
    let _ = judged(&local, &cfg);
    sync_once(&x, &mut book, now_us(), wall_ms() / 1000);
    assert_eq!(x.redis_state.load(Ordering::Relaxed), REDIS_LOCAL);
    for i in 0..5 {
        assert!(local.decide(&cfg.traffic, rule, 1), "call {i}");
    }
    sync_once(&x, &mut book, now_us(), wall_ms() / 1000);
    match judged(&local, &cfg) {
        Judged::Over { wait, retry_ms } => {
            assert!(!wait, "no read is coming");
            assert_eq!(retry_ms, 1000);
        }
        Judged::Admit => panic!("over the allotment"),
    }
}

#[test]
fn with_redis_a_worker_out_of_share_waits_while_the_fleet_has_more() {
    // Two workers share an allotment of 5 (two live instances, a quota of 10): worker 0
    // spends its share while worker 1 holds the rest; the fleet has more: it waits.
    let cfg = fleet_config("{name: q, quota: {limit: 10, window: day}}");
    let rule = &cfg.traffic.rules[0];
    let x = installed(&cfg, 2);
    let (w0, w1) = (Local::new(x.clone(), 0), Local::new(x.clone(), 1));
    let mut book = Book {
        live: 2,
        ..Book::default()
    };
    let _ = judged(&w0, &cfg);
    let _ = judged(&w1, &cfg);
    sync_as_read(&x, &mut book);
    let mut admitted = 0;
    while w0.decide(&cfg.traffic, rule, 1) {
        admitted += 1;
    }
    assert!(
        admitted < 5,
        "worker 1 holds part of the allotment: {admitted}"
    );
    assert!(waits(judged(&w0, &cfg)), "the fleet has more");
}

#[test]
fn a_wait_for_a_larger_share_lasts_at_most_a_second() {
    let cfg = crate::config::load_str(
        "traffic:\n  rules:\n    - {name: q, quota: {limit: 10, window: day}}\n  redis:\n    \
         url: \"redis://127.0.0.1:1/0\"\n    sync_interval: 10s\n",
    )
    .unwrap();
    assert_eq!(wait_bound(&cfg.traffic), Duration::from_secs(1));
    let cfg = fleet_config("{name: q, quota: {limit: 10, window: day}}");
    assert_eq!(wait_bound(&cfg.traffic), Duration::from_millis(300));
}

#[test]
fn with_redis_an_instance_that_never_read_redis_gives_no_budget() {
    // Redis never answered: how many instances share the budget is unknown, so no
    // allotment, and none refills (a rate's) however long it waits.
    for rule in [
        "{name: q, quota: {limit: 10, window: day}}",
        "{name: r, rate: {limit: 10, per: 1s}}",
    ] {
        let cfg = fleet_config(rule);
        let fp = cfg.traffic.rules[0].limits[0].fp;
        let x = installed(&cfg, 1);
        let local = Local::new(x.clone(), 0);
        let mut book = Book::default();
        let t0 = now_us();
        assert!(matches!(judged(&local, &cfg), Judged::Over { .. }));
        sync_once(&x, &mut book, t0, wall_ms() / 1000);
        assert_eq!(book.keys[&(fp, 1)].allot, 0, "{rule}");
        // Ten seconds on, still in use.
        let g = book.keys.get_mut(&(fp, 1)).unwrap();
        g.active = true;
        sync_once(&x, &mut book, t0 + 10_000_000, wall_ms() / 1000);
        assert_eq!(book.live, 0, "{rule}");
        assert_eq!(book.keys[&(fp, 1)].allot, 0, "{rule}");
        assert!(
            matches!(judged(&local, &cfg), Judged::Over { .. }),
            "{rule}"
        );
    }
}

#[test]
fn instance_counts_rise_at_once_and_fall_only_after_liveness() {
    let mut s = fleet::Sticky::default();
    let hold = 2_000_000;
    assert_eq!(s.read(3, 1_000, hold), 3);
    // A lower reading (an outage pruned the set, a skewed clock) holds for `hold`.
    assert_eq!(s.read(1, 2_000, hold), 3);
    assert_eq!(s.read(2, 1_000_000, hold), 3);
    assert_eq!(s.read(1, 2_001_999, hold), 3);
    // Then the highest of the lower readings counts.
    assert_eq!(s.read(1, 2_002_000, hold), 2);
    // A higher reading counts at once and ends a fall under way.
    assert_eq!(s.read(1, 2_003_000, hold), 2);
    assert_eq!(s.read(4, 2_004_000, hold), 4);
    assert_eq!(s.read(4, 9_000_000, hold), 4);
}

#[test]
fn with_redis_a_rate_allotment_refills_at_the_instance_part_of_the_rate() {
    // 10 an hour (one per 360 s), burst 10; two live instances: 5 each, and one more
    // per 720 s here.
    let cfg = fleet_config("{name: r, key: [principal], rate: {limit: 10, per: 1h}}");
    let rule = &cfg.traffic.rules[0];
    let fp = rule.limits[0].fp;
    let (x, local, mut book) = one_of_two_instances(&cfg);
    let t0 = now_us();
    assert!(waits(judged(&local, &cfg)));
    sync_once(&x, &mut book, t0, WALL);
    for i in 0..5 {
        assert!(local.decide(&cfg.traffic, rule, 1), "call {i}");
    }
    local.send_counted();
    sync_once(&x, &mut book, t0, WALL);
    // As if that sync had read Redis (nobody answers the test's URL).
    x.redis_state.store(REDIS_NORMAL, Ordering::Relaxed);
    assert!(waits(judged(&local, &cfg)), "the fleet has 5 more");
    sync_once(&x, &mut book, t0 + 719_000_000, WALL);
    assert_eq!(book.keys[&(fp, 1)].allot, 0, "not yet");
    sync_once(&x, &mut book, t0 + 720_000_000, WALL);
    assert_eq!(book.keys[&(fp, 1)].allot, 1);
    assert!(local.decide(&cfg.traffic, rule, 1));
    local.send_counted();
    // Idle for days: the allotment refills up to this instance's part of the burst.
    sync_once(&x, &mut book, t0 + 400_000_000_000, WALL);
    assert_eq!(book.keys[&(fp, 1)].allot, 5);
}

/// `key_hash` writes a key's parts in one `write`; keys stay what the parts written one by one
/// (bit, length, text) made, which Redis names them by across a fleet's versions. That rests on
/// SipHash hashing the byte stream however it is split: held here, past the inline buffer too.
#[test]
fn a_key_hashes_alike_in_one_write_and_part_by_part() {
    use std::hash::{BuildHasher, Hasher};
    let x = Exchange::new(1);
    let long = "p".repeat(300);
    let sets: [&[(u8, &str)]; 4] = [
        &[],
        &[(part::PRINCIPAL, "alice")],
        &[
            (part::PRINCIPAL, ""),
            (part::TOOL, "echo"),
            (part::METHOD, "tools/call"),
        ],
        &[(part::TENANT, &long), (part::UPSTREAM, "demo")],
    ];
    for parts in sets {
        let mut by_part = x.hasher.build_hasher();
        let mut bytes = Vec::new();
        for (bit, s) in parts {
            by_part.write_u8(*bit);
            by_part.write_usize(s.len());
            by_part.write(s.as_bytes());
            bytes.push(*bit);
            bytes.extend_from_slice(&s.len().to_ne_bytes());
            bytes.extend_from_slice(s.as_bytes());
        }
        by_part.write_u8(part::ARGUMENTS);
        by_part.write_u64(0x0123_4567_89ab_cdef);
        bytes.push(part::ARGUMENTS);
        bytes.extend_from_slice(&0x0123_4567_89ab_cdef_u64.to_ne_bytes());
        let mut whole = x.hasher.build_hasher();
        whole.write(&bytes);
        assert_eq!(by_part.finish(), whole.finish(), "{parts:?}");
    }
}

/// `key_hash` writes a key's parts in one `write`; keys must stay what writing the parts one
/// by one (bit, length, text; the arguments' hash as a `u64`) made, since Redis names a fleet's
/// keys by them across its versions. Checked on `key_hash` itself, for every part, past
/// SipHash's inline buffer too.
#[test]
fn a_key_hashes_as_its_parts_written_one_by_one() {
    use std::sync::atomic::AtomicBool;
    let config = crate::config::load_str(
        r#"
upstreams:
  - {name: up, url: "builtin:demo"}
servers:
  - {path: /mcp, upstream: up}
traffic:
  rules:
    - {name: everyone, rate: {limit: 5, per: 1s}}
    - {name: principal, key: [principal], rate: {limit: 5, per: 1s}}
    - {name: who, key: [client, tenant], rate: {limit: 5, per: 1s}}
    - {name: what, key: [server, upstream, tool, method, arguments], rate: {limit: 5, per: 1s}}
"#,
    )
    .expect("config");
    let (gw, _inboxes) =
        crate::proxy::state::Gateway::build(config, Arc::new(AtomicBool::new(false)))
            .expect("gateway");
    let x = Exchange::new(1);
    let mut p = crate::policy::Principal::anonymous();
    p.id = [7; 16];
    p.client = Some("cli".into());
    p.tenant = Some("t".repeat(300).into());
    let facts = Facts {
        server: 0,
        upstream: Some(0),
        tool: Some("echo"),
        method: Method::ToolsCall,
        arguments: 0x0123_4567_89ab_cdef,
    };
    let texts: [(u8, &[u8]); 7] = [
        (part::PRINCIPAL, &p.id),
        (part::CLIENT, b"cli"),
        (part::TENANT, p.tenant.as_deref().unwrap_or("").as_bytes()),
        (part::SERVER, b"/mcp"),
        (part::UPSTREAM, b"up"),
        (part::TOOL, b"echo"),
        (part::METHOD, b"tools/call"),
    ];
    let rules = &gw.config.traffic.rules;
    assert_eq!(rules.len(), 4);
    for r in rules.iter() {
        let mut by_part = x.hasher.build_hasher();
        for (bit, text) in texts {
            if r.key & bit != 0 {
                by_part.write_u8(bit);
                by_part.write_usize(text.len());
                by_part.write(text);
            }
        }
        if r.key & part::ARGUMENTS != 0 {
            by_part.write_u8(part::ARGUMENTS);
            by_part.write_u64(facts.arguments);
        }
        assert_eq!(
            key_hash(&x, &gw, r, &facts, Some(&p)),
            by_part.finish(),
            "rule {}",
            r.name
        );
    }
}
