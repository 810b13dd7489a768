//! The per-core control channel: how anything (a worker, the admin or signal thread) tells every
//! worker something off the request path, and learns when each has applied it.
//!
//! One bounded crossbeam queue per worker, and beside it a wake socket (one end of a socketpair)
//! that the worker's control task awaits through monoio (`readable`, so the same code runs on
//! io_uring and on the legacy driver). A sender pushes the message, then writes one byte only if
//! no wake is pending already (an atomic flag), so a burst costs one wake. Sending never blocks:
//! when a worker's queue is full (or the worker is gone) the message is not delivered, and that
//! is counted (`tollgate_control_undeliverable_total{kind}`), logged at warn, and reported to
//! whoever waits for the acknowledgements. The request path never looks at the channel: only the
//! worker's control task does.
//!
//! Every delivery carries an [`Ack`]; the worker calls [`Ack::done`] once it has applied the
//! message. A [`Broadcast`] is the sender's handle on those acks: `wait` (a plain thread) or
//! `wait_async` (inside a worker's runtime, never blocking it) returns once every worker has
//! acknowledged, or says what is missing at the timeout. An ack dropped without `done` (a worker
//! that exits with messages queued) counts as refused, so nobody waits for it.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use super::state::Revocation;

/// A message to a worker. New kinds (a config swap as `ConfigSwap(Arc<…>)`, token-cache
/// invalidation, quota sync) are new variants plus a `Kind`; nothing else changes shape.
#[derive(Clone, Debug)]
pub enum Control {
    /// End a session on this worker (DELETE on another worker).
    Revoke(Revocation),
    /// Hot reload, phase one: hold this gateway ready (build what the worker needs for it); new
    /// requests still use the running one.
    Prepare(Prepared),
    /// Hot reload, phase two: new requests use the prepared gateway from now on.
    Commit,
    /// Hot reload abandoned: drop the prepared gateway.
    Abort,
    /// HTTP+SSE upstream streams: a message for a waiting request, attach/detach a GET stream,
    /// close a stream, a stream ended (`proxy::legacy`).
    Legacy(super::legacy::Msg),
    /// A message POSTed to a legacy HTTP+SSE stream this worker holds (the POST arrived on
    /// another worker, which answers the client once this one has queued it or refused it).
    LegacyPost(Arc<super::legacy_sse::HandedOver>),
    /// An issuer's signing keys as the key refresher fetched them (`policy::fetch`): installed
    /// for the issuer of that name in every config generation that has it.
    Keys(Arc<FetchedKeys>),
}

/// Keys fetched for one issuer, parsed once by the refresher thread.
#[derive(Debug)]
pub struct FetchedKeys {
    /// The issuer's name (`auth.issuers[].name`) and URL (a reload that changes the URL
    /// ignores keys fetched for the old one).
    pub name: String,
    pub issuer: String,
    /// Where they came from (`jwks_url`, or `None`: discovery): a config generation whose
    /// issuer of that name takes its keys from elsewhere ignores them.
    pub jwks_url: Option<String>,
    pub keys: Vec<crate::config::auth::IssuerKey>,
    /// SHA-256 of the fetched document: an unchanged key set is not installed again (installing
    /// clears the workers' token caches).
    pub digest: [u8; 32],
}

/// A gateway built by a reload, on its way to the workers.
#[derive(Clone)]
pub struct Prepared(pub Arc<super::state::Gateway>);

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prepared(..)")
    }
}

/// The kind of a message: the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Revoke,
    Prepare,
    Commit,
    Abort,
    Legacy,
    LegacyPost,
    Keys,
}

impl Kind {
    /// In discriminant order (`ALL[k as usize] == k`, checked by a test).
    pub const ALL: [Kind; 7] = [
        Kind::Revoke,
        Kind::Prepare,
        Kind::Commit,
        Kind::Abort,
        Kind::Legacy,
        Kind::LegacyPost,
        Kind::Keys,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Revoke => "revoke",
            Kind::Prepare => "prepare",
            Kind::Commit => "commit",
            Kind::Abort => "abort",
            Kind::Legacy => "legacy",
            Kind::LegacyPost => "legacy_post",
            Kind::Keys => "keys",
        }
    }
}

impl Control {
    pub fn kind(&self) -> Kind {
        match self {
            Control::Revoke(_) => Kind::Revoke,
            Control::Prepare(_) => Kind::Prepare,
            Control::Commit => Kind::Commit,
            Control::Abort => Kind::Abort,
            Control::Legacy(_) => Kind::Legacy,
            Control::LegacyPost(_) => Kind::LegacyPost,
            Control::Keys(_) => Kind::Keys,
        }
    }
}

/// Messages one worker's queue holds before further ones are undeliverable.
pub const CAPACITY: usize = 16 * 1024;

/// What travels on a queue.
struct Envelope {
    msg: Control,
    ack: Ack,
}

/// The sending side: one outbox per worker. Shared (`Send + Sync`) by everything that sends.
pub struct Bus {
    outboxes: Vec<Outbox>,
    /// Undeliverable messages by kind (index in `Kind::ALL`): the exported counter and a copy
    /// the process can read.
    undeliverable: Vec<(metrics::Counter, AtomicU64)>,
    /// When an undeliverable message was last logged (ms since `started`): at most one warning a
    /// second, so a stuck worker under a burst of DELETEs does not flood the log (the counter
    /// still counts each).
    last_warn_ms: AtomicU64,
    started: Instant,
}

/// One worker's sending side: its queue, the "a wake is pending" flag it shares with the worker,
/// and the wake socket's sending end (held here only, so the worker sees EOF once the bus is
/// gone).
struct Outbox {
    tx: Sender<Envelope>,
    pending: Arc<AtomicBool>,
    wake_tx: UnixStream,
}

impl Outbox {
    fn notify(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            // Non-blocking: a full socket buffer already holds a wake.
            // SAFETY: send on a socket this struct owns, from a one-byte stack buffer.
            unsafe {
                libc::send(
                    self.wake_tx.as_raw_fd(),
                    b"!".as_ptr().cast(),
                    1,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                );
            }
        }
    }
}

/// One worker's receiving side, before its runtime runs: move it to the worker thread and call
/// [`Inbox::register`] there.
pub struct Inbox {
    queue: Queue,
    pending: Arc<AtomicBool>,
    wake_rx: UnixStream,
}

/// One worker's receiving side, registered with its runtime.
pub struct WorkerInbox {
    queue: Queue,
    pending: Arc<AtomicBool>,
    wake_rx: monoio::net::UnixStream,
}

/// A worker's queue; dropping it (the worker stopped) discards what is queued, which refuses
/// those messages' acks at once instead of when the last sender goes.
struct Queue {
    rx: Receiver<Envelope>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }
}

/// A message delivered to a worker, with the acknowledgement its sender may be waiting for.
pub struct Delivery {
    pub msg: Control,
    pub ack: Ack,
}

impl Bus {
    /// A bus for `workers` workers with `capacity` messages per queue, and each worker's inbox
    /// (in worker order).
    pub fn new(workers: usize, capacity: usize) -> io::Result<(Bus, Vec<Inbox>)> {
        let mut outboxes = Vec::with_capacity(workers);
        let mut inboxes = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            let (wake_tx, wake_rx) = UnixStream::pair()?;
            wake_tx.set_nonblocking(true)?;
            wake_rx.set_nonblocking(true)?;
            let pending = Arc::new(AtomicBool::new(false));
            outboxes.push(Outbox {
                tx,
                pending: pending.clone(),
                wake_tx,
            });
            inboxes.push(Inbox {
                queue: Queue { rx },
                pending,
                wake_rx,
            });
        }
        // Registered at zero, so the series exist before anything goes wrong.
        let undeliverable = Kind::ALL
            .iter()
            .map(|k| {
                let c = metrics::counter!(
                    crate::observe::names::CONTROL_UNDELIVERABLE_TOTAL,
                    "kind" => k.as_str()
                );
                c.increment(0);
                (c, AtomicU64::new(0))
            })
            .collect();
        Ok((
            Bus {
                outboxes,
                undeliverable,
                last_warn_ms: AtomicU64::new(u64::MAX),
                started: Instant::now(),
            },
            inboxes,
        ))
    }

    pub fn workers(&self) -> usize {
        self.outboxes.len()
    }

    /// Messages of `kind` that could not be delivered so far.
    pub fn undeliverable(&self, kind: Kind) -> u64 {
        let i = kind as usize;
        self.undeliverable[i].1.load(Ordering::Relaxed)
    }

    /// Sends `msg` to every worker but `except` (a worker sending applies it itself). Never
    /// blocks; the handle says when every addressed worker has acknowledged.
    pub fn broadcast(&self, msg: Control, except: Option<usize>) -> Broadcast {
        let to = self.outboxes.len() - usize::from(except.is_some_and(|e| e < self.workers()));
        let state = Arc::new(AckState::new(to));
        for (i, out) in self.outboxes.iter().enumerate() {
            if Some(i) != except {
                self.deliver(i, out, msg.clone(), &state);
            }
        }
        Broadcast { state }
    }

    /// Sends `msg` to one worker.
    pub fn send(&self, worker: usize, msg: Control) -> Broadcast {
        let state = Arc::new(AckState::new(1));
        self.deliver(worker, &self.outboxes[worker], msg, &state);
        Broadcast { state }
    }

    fn deliver(&self, worker: usize, out: &Outbox, msg: Control, state: &Arc<AckState>) {
        let ack = Ack(Some(state.clone()));
        match out.tx.try_send(Envelope { msg, ack }) {
            Ok(()) => out.notify(),
            Err(e) => {
                let (why, env) = match e {
                    TrySendError::Full(env) => ("its queue is full", env),
                    TrySendError::Disconnected(env) => ("it has stopped", env),
                };
                let kind = env.msg.kind();
                env.ack.finish(Finish::Undeliverable);
                let i = kind as usize;
                self.undeliverable[i].0.increment(1);
                self.undeliverable[i].1.fetch_add(1, Ordering::Relaxed);
                let now = self.started.elapsed().as_millis() as u64;
                let last = self.last_warn_ms.load(Ordering::Relaxed);
                let due = last == u64::MAX || now.saturating_sub(last) >= 1000;
                if due
                    && self
                        .last_warn_ms
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        worker,
                        kind = kind.as_str(),
                        capacity = out.tx.capacity().unwrap_or(0),
                        undeliverable_so_far = self.undeliverable[i].1.load(Ordering::Relaxed),
                        "control message not delivered: {why} (logged at most once a second; \
                         tollgate_control_undeliverable_total counts each)"
                    );
                }
            }
        }
    }
}

impl Inbox {
    /// Registers the wake socket with the current thread's runtime (io_uring or legacy). Call it
    /// on the worker thread, inside its runtime.
    pub fn register(self) -> io::Result<WorkerInbox> {
        Ok(WorkerInbox {
            queue: self.queue,
            pending: self.pending,
            wake_rx: monoio::net::UnixStream::from_std(self.wake_rx)?,
        })
    }
}

impl WorkerInbox {
    /// The next message without waiting, if one is queued.
    pub fn try_recv(&self) -> Option<Delivery> {
        self.queue.rx.try_recv().ok().map(Envelope::open)
    }

    /// The next message; waits (without polling) until one arrives. `None` once every sender is
    /// gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            if let Ok(env) = self.queue.rx.try_recv() {
                return Some(env.open());
            }
            // Clear the flag, then look again: a sender that pushed before the clear is seen now,
            // one that pushes after it finds the flag clear and writes a wake byte.
            self.pending.store(false, Ordering::SeqCst);
            match self.queue.rx.try_recv() {
                Ok(env) => return Some(env.open()),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if self.wake_rx.readable(false).await.is_err() {
                // Not expected on a socketpair; fall back to a short sleep rather than spin.
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            drain_socket(self.wake_rx.as_raw_fd());
        }
    }
}

/// Reads everything queued on a non-blocking socket (wake bytes).
fn drain_socket(fd: i32) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: recv into a stack buffer of the length given.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < buf.len() as isize {
            return;
        }
    }
}

impl Envelope {
    fn open(self) -> Delivery {
        Delivery {
            msg: self.msg,
            ack: self.ack,
        }
    }
}

/// A worker's acknowledgement of one message. `done` once applied; dropping it unacknowledged
/// counts as refused (the waiter stops waiting for it).
pub struct Ack(Option<Arc<AckState>>);

#[derive(Clone, Copy)]
enum Finish {
    Done,
    Undeliverable,
    Dropped,
}

impl Ack {
    /// The message was applied.
    pub fn done(mut self) {
        if let Some(s) = self.0.take() {
            s.finish(Finish::Done);
        }
    }

    fn finish(mut self, how: Finish) {
        if let Some(s) = self.0.take() {
            s.finish(how);
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.finish(Finish::Dropped);
        }
    }
}

struct AckState {
    remaining: AtomicUsize,
    undeliverable: AtomicUsize,
    dropped: AtomicUsize,
    /// Held while a waiter checks `remaining` and by the last ack when it signals: no lost wake.
    /// Holds the sending end of an async waiter's wake socket.
    waiter: Mutex<Option<UnixStream>>,
    cond: Condvar,
}

impl AckState {
    fn new(n: usize) -> Self {
        AckState {
            remaining: AtomicUsize::new(n),
            undeliverable: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            waiter: Mutex::new(None),
            cond: Condvar::new(),
        }
    }

    fn finish(&self, how: Finish) {
        match how {
            Finish::Done => {}
            Finish::Undeliverable => {
                self.undeliverable.fetch_add(1, Ordering::Relaxed);
            }
            Finish::Dropped => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let waiter = self.waiter.lock().unwrap_or_else(|p| p.into_inner());
            self.cond.notify_all();
            if let Some(s) = waiter.as_ref() {
                // SAFETY: send on a socket the waiter slot owns, from a one-byte buffer.
                unsafe {
                    libc::send(
                        s.as_raw_fd(),
                        b"!".as_ptr().cast(),
                        1,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    );
                }
            }
        }
    }

    fn result(&self) -> Result<(), NotAcked> {
        let e = NotAcked {
            pending: self.remaining.load(Ordering::Acquire),
            undeliverable: self.undeliverable.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        };
        if e.pending + e.undeliverable + e.dropped == 0 {
            Ok(())
        } else {
            Err(e)
        }
    }
}

/// Workers that did not acknowledge a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{pending} worker(s) did not answer in time, {undeliverable} could not be reached, {dropped} dropped it")]
pub struct NotAcked {
    /// Still queued or being applied at the timeout.
    pub pending: usize,
    /// Never queued (queue full, worker gone): counted and logged when sent.
    pub undeliverable: usize,
    /// Dequeued or discarded without an acknowledgement (a worker that stopped).
    pub dropped: usize,
}

/// A sender's handle on the acknowledgements of one message.
pub struct Broadcast {
    state: Arc<AckState>,
}

impl Broadcast {
    /// Whether every worker has answered (acknowledged, or known not to).
    pub fn is_settled(&self) -> bool {
        self.state.remaining.load(Ordering::Acquire) == 0
    }

    /// The outcome so far: `Ok` once every worker acknowledged.
    pub fn outcome(&self) -> Result<(), NotAcked> {
        self.state.result()
    }

    /// Blocks until every worker has answered or `timeout` passed. For plain threads (admin,
    /// signals): a worker thread must use `wait_async`, or it would stall its own runtime.
    pub fn wait(&self, timeout: Duration) -> Result<(), NotAcked> {
        let deadline = Instant::now() + timeout;
        let mut g = self.state.waiter.lock().unwrap_or_else(|p| p.into_inner());
        while self.state.remaining.load(Ordering::Acquire) != 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = self
                .state
                .cond
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(g);
        self.state.result()
    }

    /// Waits, inside a monoio runtime, until every worker has answered or `timeout` passed,
    /// without blocking the thread (the last ack wakes it through a socket, on either driver).
    /// `&mut`: one async waiter at a time (the wake slot holds one socket).
    pub async fn wait_async(&mut self, timeout: Duration) -> Result<(), NotAcked> {
        if self.is_settled() {
            return self.state.result();
        }
        let woken = (|| -> io::Result<monoio::net::UnixStream> {
            let (tx, rx) = UnixStream::pair()?;
            rx.set_nonblocking(true)?;
            let mut slot = self.state.waiter.lock().unwrap_or_else(|p| p.into_inner());
            *slot = Some(tx);
            monoio::net::UnixStream::from_std(rx)
        })();
        match woken {
            // Settled between the check and the slot being filled: the last ack saw the slot
            // empty under the lock, and `is_settled` below sees it.
            Ok(rx) if !self.is_settled() => {
                let _ = monoio::time::timeout(timeout, rx.readable(false)).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait for control acknowledgements");
            }
        }
        *self.state.waiter.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.state.result()
    }
}

#[cfg(test)]
mod tests;
