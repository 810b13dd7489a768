use super::*;
use crate::config::Driver;
use crate::runtime::driver::block_on;

fn revoke(n: u8) -> Control {
    Control::Revoke(Revocation {
        id: [n; 16],
        expires_at: u64::from(n),
    })
}

fn id(msg: &Control) -> u8 {
    match msg {
        Control::Revoke(r) => r.id[0],
        other => panic!("only revocations in these tests: {other:?}"),
    }
}

/// Runs `f` on a fresh runtime of `driver` on this thread.
fn on_runtime<F: std::future::Future>(driver: Driver, f: impl FnOnce() -> F) -> F::Output {
    block_on(driver, 256, 0, |_, _| {}, |_| f())
}

#[test]
fn messages_arrive_in_order_and_acks_settle_the_broadcast() {
    let (bus, inboxes) = Bus::new(1, 8).unwrap();
    let inbox = inboxes.into_iter().next().unwrap();
    let sent: Vec<Broadcast> = (1..=3).map(|n| bus.broadcast(revoke(n), None)).collect();
    assert_eq!(
        sent[0].outcome(),
        Err(NotAcked {
            pending: 1,
            undeliverable: 0,
            dropped: 0
        })
    );
    on_runtime(Driver::Legacy, || async move {
        let mut inbox = inbox.register().unwrap();
        for (n, b) in (1..=3).zip(&sent) {
            let d = inbox.recv().await.unwrap();
            assert_eq!(id(&d.msg), n);
            assert!(!b.is_settled());
            d.ack.done();
            assert_eq!(b.outcome(), Ok(()));
        }
        assert!(inbox.try_recv().is_none());
    });
}

#[test]
fn a_full_queue_is_counted_and_reported_never_silently_dropped() {
    let (bus, _inboxes) = Bus::new(2, 2).unwrap();
    let first = bus.broadcast(revoke(1), None);
    bus.broadcast(revoke(2), None);
    let third = bus.broadcast(revoke(3), None);
    assert_eq!(bus.undeliverable(Kind::Revoke), 2, "one per worker");
    assert_eq!(
        third.outcome(),
        Err(NotAcked {
            pending: 0,
            undeliverable: 2,
            dropped: 0
        })
    );
    assert!(third.is_settled(), "nothing left to wait for");
    assert_eq!(third.wait(Duration::from_secs(5)), third.outcome());
    assert_eq!(first.outcome().unwrap_err().pending, 2);
}

#[test]
fn wait_times_out_and_says_what_is_missing() {
    let (bus, _inboxes) = Bus::new(2, 4).unwrap();
    let b = bus.broadcast(revoke(1), None);
    let t0 = Instant::now();
    let r = b.wait(Duration::from_millis(50));
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert_eq!(
        r,
        Err(NotAcked {
            pending: 2,
            undeliverable: 0,
            dropped: 0
        })
    );
}

#[test]
fn a_stopped_worker_is_undeliverable_and_an_unacked_delivery_refused() {
    let (bus, mut inboxes) = Bus::new(2, 4).unwrap();
    drop(inboxes.pop()); // worker 1 stopped
    let b = bus.broadcast(revoke(1), None);
    assert_eq!(b.outcome().unwrap_err().undeliverable, 1);
    // Worker 0's queue still holds the message; dropping it (the worker exits) refuses it.
    drop(inboxes.pop());
    assert_eq!(
        b.wait(Duration::from_secs(5)),
        Err(NotAcked {
            pending: 0,
            undeliverable: 1,
            dropped: 1
        })
    );
}

#[test]
fn a_broadcast_skips_its_sender() {
    let (bus, inboxes) = Bus::new(3, 4).unwrap();
    let b = bus.broadcast(revoke(7), Some(1));
    assert_eq!(b.outcome().unwrap_err().pending, 2);
    let got: Vec<usize> = inboxes.iter().map(|i| i.queue.rx.len()).collect();
    assert_eq!(got, [1, 0, 1]);
}

/// Two worker threads, each on its own monoio runtime (one legacy, one io_uring when the kernel
/// allows), await their inboxes; a plain thread and a third runtime broadcast and wait for acks.
#[test]
fn worker_runtimes_apply_in_order_and_acknowledge() {
    const N: u8 = 100;
    let (bus, inboxes) = Bus::new(2, 16).unwrap();
    let bus = Arc::new(bus);
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(vec![Vec::new(); 2]));
    let workers: Vec<_> = inboxes
        .into_iter()
        .zip([Driver::Legacy, Driver::Auto])
        .enumerate()
        .map(|(i, (inbox, driver))| {
            let seen = seen.clone();
            std::thread::spawn(move || {
                on_runtime(driver, || async move {
                    let mut inbox = inbox.register().unwrap();
                    while let Some(d) = inbox.recv().await {
                        seen.lock().unwrap()[i].push(id(&d.msg));
                        d.ack.done();
                    }
                })
            })
        })
        .collect();
    // A plain thread (the admin or signal thread) waits, blocking.
    for n in 0..N {
        let b = bus.broadcast(revoke(n), None);
        assert_eq!(b.wait(Duration::from_secs(10)), Ok(()), "message {n}");
    }
    // A burst without waiting in between is delivered in order too (one wake may cover many).
    let burst: Vec<Broadcast> = (0..10)
        .map(|n| bus.broadcast(revoke(N + n), None))
        .collect();
    for b in &burst {
        assert_eq!(b.wait(Duration::from_secs(10)), Ok(()));
    }
    // A worker-side sender waits without blocking its runtime.
    let b2 = bus.clone();
    std::thread::spawn(move || {
        on_runtime(Driver::Legacy, || async move {
            let mut b = b2.broadcast(revoke(200), None);
            assert_eq!(b.wait_async(Duration::from_secs(10)).await, Ok(()));
            let mut b = b2.broadcast(revoke(201), None);
            assert_eq!(b.wait_async(Duration::from_secs(10)).await, Ok(()));
        })
    })
    .join()
    .unwrap();
    let want: Vec<u8> = (0..N + 10).chain([200, 201]).collect();
    for got in seen.lock().unwrap().iter() {
        assert_eq!(got, &want);
    }
    // With the bus gone, each worker's control task ends.
    drop(bus);
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn wait_async_times_out_without_blocking_its_runtime() {
    let (bus, _inboxes) = Bus::new(1, 4).unwrap();
    on_runtime(Driver::Auto, || async move {
        let mut b = bus.broadcast(revoke(1), None);
        let ticker = monoio::spawn(async {
            // Runs while the wait is pending: the runtime is not blocked.
            monoio::time::sleep(Duration::from_millis(10)).await;
            true
        });
        let r = b.wait_async(Duration::from_millis(100)).await;
        assert_eq!(r.unwrap_err().pending, 1);
        assert!(ticker.await);
    });
}

#[test]
fn kinds_are_listed_in_discriminant_order() {
    for (i, k) in Kind::ALL.iter().enumerate() {
        assert_eq!(*k as usize, i, "{k:?}");
    }
}
