//! One worker's legacy tables: the upstream streams it holds (the one session table the gateway
//! has, bounded by `limits.max_legacy_streams`) and the mailboxes its requests and GET streams
//! wait on. Plain data behind `RefCell`s; wakes are `Waker`s of the worker's own tasks.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::future::poll_fn;
use std::task::{Poll, Waker};

use crate::mcp::legacy::Tag;

/// Which upstream stream: (holder worker, stream slot, slot nonce).
pub type StreamRef = (u16, u32, u32);

/// A slab whose entries are named by (slot, nonce): a freed slot gets a new nonce, so an old
/// name never reaches a new entry.
pub struct Slots<T> {
    entries: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    live: usize,
    next_nonce: u32,
}

impl<T> Slots<T> {
    /// `first_nonce`: random per process, so a token from before a restart names no entry.
    pub fn new(first_nonce: u32) -> Self {
        Slots {
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_nonce: first_nonce,
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn insert(&mut self, v: T) -> (u32, u32) {
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        self.live += 1;
        match self.free.pop() {
            Some(s) => {
                self.entries[s as usize] = (nonce, Some(v));
                (s, nonce)
            }
            None => {
                self.entries.push((nonce, Some(v)));
                ((self.entries.len() - 1) as u32, nonce)
            }
        }
    }

    pub fn get_mut(&mut self, slot: u32, nonce: u32) -> Option<&mut T> {
        match self.entries.get_mut(slot as usize) {
            Some((n, Some(v))) if *n == nonce => Some(v),
            _ => None,
        }
    }

    pub fn remove(&mut self, slot: u32, nonce: u32) -> Option<T> {
        match self.entries.get_mut(slot as usize) {
            Some((n, v @ Some(_))) if *n == nonce => {
                self.live -= 1;
                self.free.push(slot);
                v.take()
            }
            _ => None,
        }
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().filter_map(|(_, v)| v.as_mut())
    }
}

/// An upstream stream this worker holds.
pub struct StreamSlot {
    /// The client session's random id: only that session's requests use this stream.
    pub owner: [u8; 16],
    /// The upstream's stable id.
    pub upstream: u64,
    /// The client's GET stream (a mailbox on some worker), when one is attached.
    pub get: Option<Tag>,
    /// Server→client messages waiting for a GET stream (bounded).
    pub buffered: VecDeque<Vec<u8>>,
    /// DELETE, or the session ended: the holder task stops reading and closes the stream.
    pub closing: bool,
    pub waker: Option<Waker>,
}

/// What a mailbox yields.
pub enum Mail {
    Message(Vec<u8>),
    /// The upstream stream ended (or was closed): nothing more will come.
    Ended,
}

/// Where a request (or a GET stream) waits for the messages the holder routes to it.
pub struct Mailbox {
    pub stream: StreamRef,
    queue: VecDeque<Vec<u8>>,
    ended: bool,
    waker: Option<Waker>,
}

/// Most messages a mailbox keeps before dropping (a request's progress notifications, a GET
/// stream's backlog while its client is slow); the holder never waits on a mailbox.
const MAILBOX_CAPACITY: usize = 1024;

/// Streams of other workers this worker heard ended (bounded; a set that fills starts over,
/// the holder's own answer, 404 from the upstream, stays the authority).
const MAX_ENDED: usize = 16 * 1024;

pub struct Hub {
    pub streams: RefCell<Slots<StreamSlot>>,
    pub boxes: RefCell<Slots<Mailbox>>,
    ended: RefCell<HashSet<StreamRef>>,
}

impl Hub {
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        Hub {
            streams: RefCell::new(Slots::new(u32::from_be_bytes([
                seed[0], seed[1], seed[2], seed[3],
            ]))),
            boxes: RefCell::new(Slots::new(u32::from_be_bytes([
                seed[4], seed[5], seed[6], seed[7],
            ]))),
            ended: RefCell::new(HashSet::new()),
        }
    }

    /// A new mailbox for messages of `stream`; its tag names it to the holder.
    pub fn open_box(&self, worker: u16, stream: StreamRef) -> Tag {
        let (slot, nonce) = self.boxes.borrow_mut().insert(Mailbox {
            stream,
            queue: VecDeque::new(),
            ended: false,
            waker: None,
        });
        Tag {
            worker,
            slot,
            nonce,
        }
    }

    pub fn close_box(&self, tag: Tag) {
        self.boxes.borrow_mut().remove(tag.slot, tag.nonce);
    }

    /// Puts a message in a mailbox of this worker. `false`: no such mailbox (it timed out or
    /// its client left) or it is full.
    pub fn deliver(&self, tag: Tag, msg: Vec<u8>) -> bool {
        let mut boxes = self.boxes.borrow_mut();
        let Some(b) = boxes.get_mut(tag.slot, tag.nonce) else {
            return false;
        };
        if b.queue.len() >= MAILBOX_CAPACITY {
            return false;
        }
        b.queue.push_back(msg);
        if let Some(w) = b.waker.take() {
            w.wake();
        }
        true
    }

    /// The next message of a mailbox (`Ended` also when the mailbox is gone).
    pub async fn recv(&self, tag: Tag) -> Mail {
        poll_fn(|cx| {
            let mut boxes = self.boxes.borrow_mut();
            let Some(b) = boxes.get_mut(tag.slot, tag.nonce) else {
                return Poll::Ready(Mail::Ended);
            };
            if let Some(m) = b.queue.pop_front() {
                return Poll::Ready(Mail::Message(m));
            }
            if b.ended {
                return Poll::Ready(Mail::Ended);
            }
            b.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// A stream ended: its mailboxes here are told, and it is remembered as ended.
    pub fn stream_ended(&self, stream: StreamRef) {
        for b in self.boxes.borrow_mut().iter_mut() {
            if b.stream == stream {
                b.ended = true;
                if let Some(w) = b.waker.take() {
                    w.wake();
                }
            }
        }
        let mut ended = self.ended.borrow_mut();
        if ended.len() >= MAX_ENDED {
            ended.clear();
        }
        ended.insert(stream);
    }

    /// Ends one mailbox here (a GET stream attached to a stream that is gone).
    pub fn end_box(&self, tag: Tag) {
        if let Some(b) = self.boxes.borrow_mut().get_mut(tag.slot, tag.nonce) {
            b.ended = true;
            if let Some(w) = b.waker.take() {
                w.wake();
            }
        }
    }

    pub fn is_ended(&self, stream: StreamRef) -> bool {
        self.ended.borrow().contains(&stream)
    }

    /// Whether this worker holds `slot` (with `nonce`) for the session `owner`.
    pub fn holds(&self, slot: u32, nonce: u32, owner: &[u8; 16]) -> bool {
        self.streams
            .borrow_mut()
            .get_mut(slot, nonce)
            .is_some_and(|s| s.owner == *owner && !s.closing)
    }

    /// Whether this worker holds `slot` (with `nonce`), whichever session it is for.
    pub fn holds_any(&self, slot: u32, nonce: u32) -> bool {
        self.streams
            .borrow_mut()
            .get_mut(slot, nonce)
            .is_some_and(|s| !s.closing)
    }

    /// Asks the holder task of a stream here to close it (DELETE).
    pub fn close_stream(&self, slot: u32, nonce: u32, owner: &[u8; 16]) {
        if let Some(s) = self.streams.borrow_mut().get_mut(slot, nonce) {
            if s.owner == *owner {
                s.closing = true;
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Closes every stream here whose upstream `keep` refuses (a reload took the upstream away
    /// or changed its transport: its sessions are 404 now, nobody can use the stream).
    /// Returns how many.
    pub fn close_unless(&self, keep: impl Fn(u64) -> bool) -> usize {
        let mut n = 0;
        for s in self.streams.borrow_mut().iter_mut() {
            if !s.closing && !keep(s.upstream) {
                s.closing = true;
                n += 1;
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
        }
        n
    }

    /// Attaches a client's GET stream to a stream here; returns what was buffered for it and the
    /// GET stream it replaces (a client that opens another one: the older one ends).
    pub fn attach(
        &self,
        slot: u32,
        nonce: u32,
        owner: &[u8; 16],
        target: Tag,
    ) -> Option<(Vec<Vec<u8>>, Option<Tag>)> {
        let mut streams = self.streams.borrow_mut();
        let s = streams.get_mut(slot, nonce).filter(|s| s.owner == *owner)?;
        let old = s.get.replace(target).filter(|t| *t != target);
        Some((s.buffered.drain(..).collect(), old))
    }

    pub fn detach(&self, slot: u32, nonce: u32, target: Tag) {
        if let Some(s) = self.streams.borrow_mut().get_mut(slot, nonce) {
            if s.get == Some(target) {
                s.get = None;
            }
        }
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_slot_never_answers_to_its_old_name() {
        let mut s = Slots::new(u32::MAX);
        let (a, na) = s.insert("a");
        assert_eq!(s.remove(a, na), Some("a"));
        let (b, nb) = s.insert("b");
        assert_eq!(a, b, "the slot is reused");
        assert_ne!(na, nb, "with another nonce");
        assert!(s.get_mut(a, na).is_none());
        assert_eq!(s.get_mut(b, nb).copied(), Some("b"));
        assert_eq!(s.remove(a, na), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn mailboxes_take_messages_until_their_stream_ends() {
        let hub = Hub::new();
        let stream = (0, 1, 2);
        let tag = hub.open_box(0, stream);
        assert!(hub.deliver(tag, b"one".to_vec()));
        let forged = Tag {
            nonce: tag.nonce.wrapping_add(1),
            ..tag
        };
        assert!(!hub.deliver(forged, b"x".to_vec()), "unknown nonce");
        hub.stream_ended(stream);
        assert!(hub.is_ended(stream));
        let got = futures_util::FutureExt::now_or_never(hub.recv(tag));
        assert!(matches!(got, Some(Mail::Message(m)) if m == b"one"));
        let got = futures_util::FutureExt::now_or_never(hub.recv(tag));
        assert!(matches!(got, Some(Mail::Ended)));
        hub.close_box(tag);
        assert!(!hub.deliver(tag, b"late".to_vec()));
    }
}
