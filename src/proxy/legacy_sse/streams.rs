//! The legacy streams one worker holds: a slot table (reused slots get a new generation) and,
//! per stream, the messages POSTed to it and the messages waiting to be written to its client,
//! both bounded by `limits.legacy_sse_queued_messages`. Single-threaded (`Rc`, `RefCell`): a
//! POST that arrives on another worker reaches it as `Control::LegacyPost`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::task::{Poll, Waker};

use crate::mcp::legacy_id::StreamId;

/// Wakes the tasks of one stream (its writer, its dispatcher, its requests) when its state
/// changes. They wait for a condition, so a spurious wake costs one check.
#[derive(Default)]
pub struct Wake {
    waiters: RefCell<Vec<Waker>>,
}

impl Wake {
    pub fn notify(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    /// Returns once `ready()` holds (checked now and after every `notify`).
    pub async fn until(&self, mut ready: impl FnMut() -> bool) {
        std::future::poll_fn(|cx| {
            if ready() {
                return Poll::Ready(());
            }
            let mut ws = self.waiters.borrow_mut();
            if !ws.iter().any(|w| w.will_wake(cx.waker())) {
                ws.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// How a POSTed message is run on its stream's worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// `initialize`: run before anything posted after it (it opens the gateway session that
    /// every later message carries).
    Initialize,
    /// Notifications: run in the order they were posted, before what was posted after them
    /// (`notifications/initialized` must reach the upstream before the next request).
    Sequential,
    /// Requests and responses: at once, side by side (a tool call waiting for the client's
    /// answer to a sampling request must not hold that answer up).
    Concurrent,
}

/// Who sent a request the stream carries on: the address and verified client certificate the
/// request path judges it by (`sources` rules, the mTLS principal), as if it had come itself.
#[derive(Clone, Debug, Default)]
pub struct From {
    pub addr: Option<std::net::SocketAddr>,
    pub peer: Option<crate::tls::PeerIdentity>,
    /// The authenticated principal's id (endpoints with `auth`): a stream takes POSTs only from
    /// the principal that opened it.
    pub principal: Option<[u8; 16]>,
}

/// A message POSTed to a legacy stream, with the request headers the request path reads.
pub struct Posted {
    pub body: Vec<u8>,
    pub order: Order,
    /// Header lines (`name: value\r\n`) of the POST that the request path uses: Host, Origin,
    /// Authorization, trace context.
    pub headers: Vec<u8>,
    /// Who POSTed it.
    pub from: From,
}

/// Why a stream ended (the label of `tollgate_legacy_sse_streams_ended_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    ClientClosed,
    /// More than `limits.legacy_sse_queued_messages` messages waited for a client that did not
    /// read them.
    SlowReader,
    Shutdown,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::SlowReader => "slow_reader",
            End::Shutdown => "shutdown",
        }
    }
}

/// One legacy stream's state, shared by its writer (the `GET <path>/sse` request), its
/// dispatcher and the requests it runs.
pub struct LegacyStream {
    /// POSTed, not yet run.
    pub inbox: RefCell<VecDeque<Posted>>,
    /// JSON-RPC messages to write to the client as `event: message`.
    pub outbox: RefCell<VecDeque<Vec<u8>>>,
    /// The gateway session (`Mcp-Session-Id`) the stream's `initialize` opened.
    pub token: RefCell<Option<Vec<u8>>>,
    pub ended: Cell<Option<End>>,
    /// The session's server→client stream is being relayed (`server_stream`).
    pub server_stream_open: Cell<bool>,
    pub changed: Wake,
    /// Header lines of the `GET <path>/sse` (Host, Origin, …) for the requests the stream makes
    /// on its own (the session's GET stream and its DELETE).
    pub headers: Vec<u8>,
    /// Who opened the stream (for those requests).
    pub from: From,
    max_queued: usize,
}

impl LegacyStream {
    pub fn new(headers: Vec<u8>, from: From, max_queued: usize) -> Self {
        LegacyStream {
            from,
            inbox: RefCell::default(),
            outbox: RefCell::default(),
            token: RefCell::default(),
            ended: Cell::new(None),
            server_stream_open: Cell::new(false),
            changed: Wake::default(),
            headers,
            max_queued,
        }
    }

    /// Queues a message for the client. A client that has this many waiting already is not
    /// reading: its stream ends (memory stays bounded).
    pub fn send(&self, msg: &[u8]) {
        if self.ended.get().is_some() {
            return;
        }
        let mut out = self.outbox.borrow_mut();
        if out.len() >= self.max_queued {
            drop(out);
            self.end(End::SlowReader);
            return;
        }
        out.push_back(msg.to_vec());
        drop(out);
        self.changed.notify();
    }

    pub fn end(&self, why: End) {
        if self.ended.get().is_none() {
            self.ended.set(Some(why));
        }
        self.changed.notify();
    }

    pub fn is_ended(&self) -> bool {
        self.ended.get().is_some()
    }

    /// Waits until the stream has ended.
    pub async fn until_ended(&self) {
        self.changed.until(|| self.is_ended()).await
    }
}

/// What became of a POSTed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    /// Not applied (the worker did not get to it).
    Pending = 0,
    Queued = 1,
    /// No such stream here (ended, or never was).
    Unknown = 2,
    /// `limits.legacy_sse_queued_messages` are waiting already.
    Full = 3,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pending => "undelivered",
            Verdict::Queued => "queued",
            Verdict::Unknown => "unknown",
            Verdict::Full => "full",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Verdict::Queued,
            2 => Verdict::Unknown,
            3 => Verdict::Full,
            _ => Verdict::Pending,
        }
    }
}

/// A POSTed message on its way to the worker holding its stream, and that worker's verdict.
pub struct HandedOver {
    pub id: StreamId,
    posted: Mutex<Option<Posted>>,
    verdict: AtomicU8,
}

impl std::fmt::Debug for HandedOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandedOver").field("id", &self.id).finish()
    }
}

impl HandedOver {
    pub fn new(id: StreamId, posted: Posted) -> Self {
        HandedOver {
            id,
            posted: Mutex::new(Some(posted)),
            verdict: AtomicU8::new(Verdict::Pending as u8),
        }
    }

    pub fn verdict(&self) -> Verdict {
        Verdict::from_u8(self.verdict.load(Ordering::Acquire))
    }
}

struct Slot {
    generation: u64,
    nonce: u64,
    stream: Option<Rc<LegacyStream>>,
}

/// The legacy streams of one worker.
#[derive(Default)]
pub struct Streams {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    open: Cell<usize>,
    /// Where the worker's in-process requests connect (`inner`).
    pub loopback: super::inner::Loopback,
}

impl Streams {
    /// Holds `stream` in a free slot; `None` when `limit` streams are open already.
    pub fn open(
        &self,
        worker: u16,
        limit: usize,
        nonce: u64,
        stream: Rc<LegacyStream>,
    ) -> Option<StreamId> {
        if self.open.get() >= limit {
            return None;
        }
        let mut slots = self.slots.borrow_mut();
        let slot = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(slots.len()).ok()?;
                slots.push(Slot {
                    generation: 0,
                    nonce: 0,
                    stream: None,
                });
                i
            }
        };
        let s = &mut slots[slot as usize];
        s.generation += 1;
        s.nonce = nonce;
        s.stream = Some(stream);
        self.open.set(self.open.get() + 1);
        Some(StreamId {
            worker,
            slot,
            generation: s.generation,
            nonce,
        })
    }

    /// Frees the stream's slot: its id names nothing from now on.
    pub fn close(&self, id: &StreamId) {
        if self.get(id).is_some() {
            self.slots.borrow_mut()[id.slot as usize].stream = None;
            self.free.borrow_mut().push(id.slot);
            self.open.set(self.open.get() - 1);
        }
    }

    /// The live stream `id` names (slot, generation and nonce all match), if any.
    pub fn get(&self, id: &StreamId) -> Option<Rc<LegacyStream>> {
        let slots = self.slots.borrow();
        let s = slots.get(id.slot as usize)?;
        if s.generation != id.generation || s.nonce != id.nonce {
            return None;
        }
        s.stream.clone()
    }

    pub fn open_count(&self) -> usize {
        self.open.get()
    }

    /// Queues a POSTed message on its stream.
    pub fn deliver(&self, id: &StreamId, posted: Posted) -> Verdict {
        let Some(s) = self.get(id).filter(|s| !s.is_ended()) else {
            return Verdict::Unknown;
        };
        if s.from.principal != posted.from.principal {
            // Another principal's stream is unknown to this one (its messages and replies
            // would mix into the stream's owner's).
            return Verdict::Unknown;
        }
        let mut inbox = s.inbox.borrow_mut();
        if inbox.len() >= s.max_queued {
            return Verdict::Full;
        }
        inbox.push_back(posted);
        drop(inbox);
        s.changed.notify();
        Verdict::Queued
    }

    /// Applies a message another worker handed over (`Control::LegacyPost`): queues it and
    /// records the verdict its sender reads once this worker acknowledges.
    pub fn deliver_handed_over(&self, h: &HandedOver) {
        let posted = h.posted.lock().unwrap_or_else(|p| p.into_inner()).take();
        let verdict = match posted {
            Some(p) => self.deliver(&h.id, p),
            None => Verdict::Unknown,
        };
        h.verdict.store(verdict as u8, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posted() -> Posted {
        Posted {
            body: b"{}".to_vec(),
            order: Order::Concurrent,
            headers: Vec::new(),
            from: From::default(),
        }
    }

    #[test]
    fn slots_are_bounded_and_a_reused_slot_refuses_the_old_id() {
        let streams = Streams::default();
        let s = || Rc::new(LegacyStream::new(Vec::new(), From::default(), 2));
        let a = streams.open(0, 2, 11, s()).expect("room");
        let b = streams.open(0, 2, 12, s()).expect("room");
        assert!(streams.open(0, 2, 13, s()).is_none(), "limit of 2");
        streams.close(&a);
        let c = streams.open(0, 2, 14, s()).expect("a slot was freed");
        assert_eq!(c.slot, a.slot);
        assert_ne!(c.generation, a.generation);
        assert_eq!(streams.deliver(&a, posted()), Verdict::Unknown);
        assert_eq!(streams.deliver(&c, posted()), Verdict::Queued);
        // Same slot and generation, another nonce (an id of an earlier process): unknown.
        let forged = StreamId { nonce: 99, ..b };
        assert_eq!(streams.deliver(&forged, posted()), Verdict::Unknown);
        assert_eq!(streams.deliver(&b, posted()), Verdict::Queued);
        assert_eq!(streams.deliver(&b, posted()), Verdict::Queued);
        assert_eq!(
            streams.deliver(&b, posted()),
            Verdict::Full,
            "2 queued at most"
        );
        assert_eq!(streams.open_count(), 2);
    }

    #[test]
    fn a_client_that_does_not_read_loses_its_stream() {
        let s = LegacyStream::new(Vec::new(), From::default(), 2);
        s.send(b"1");
        s.send(b"2");
        assert!(!s.is_ended());
        s.send(b"3");
        assert_eq!(s.ended.get(), Some(End::SlowReader));
        assert_eq!(s.outbox.borrow().len(), 2, "nothing grows past the bound");
    }

    #[test]
    fn a_handed_over_message_carries_its_verdict_back() {
        let streams = Streams::default();
        let id = streams
            .open(
                1,
                4,
                5,
                Rc::new(LegacyStream::new(Vec::new(), From::default(), 4)),
            )
            .expect("room");
        let h = HandedOver::new(id, posted());
        assert_eq!(h.verdict(), Verdict::Pending);
        streams.deliver_handed_over(&h);
        assert_eq!(h.verdict(), Verdict::Queued);
        streams.close(&id);
        let h = HandedOver::new(id, posted());
        streams.deliver_handed_over(&h);
        assert_eq!(h.verdict(), Verdict::Unknown);
    }
}
