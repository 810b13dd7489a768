//! One member's listen stream being read: its body framing (length, chunked, until close)
//! and its messages (SSE events or NDJSON lines), queued for judging.

use std::collections::VecDeque;

use crate::http::chunked::ChunkedDecoder;
use crate::http::head::Framing;
use crate::http::pool::{Idleness, UpstreamConn};
use crate::http::sse;
use crate::observe::names;

use super::super::super::state::Gateway;
use super::filter::Filter;
use super::MAX_MESSAGE_BYTES;

/// One member's listen stream being read.
pub(super) struct Member {
    pub(super) u: usize,
    pub(super) conn: UpstreamConn,
    pub(super) framing: Framing,
    /// Bytes left of a Content-Length body.
    pub(super) left: u64,
    pub(super) chunks: ChunkedDecoder,
    /// `None`: NDJSON (one message a line).
    pub(super) sse: Option<sse::Decoder>,
    pub(super) line: Vec<u8>,
    /// The gateway's id for this listen.
    pub(super) id: String,
    /// What it was asked for, then (after its ack) what it honours of that.
    pub(super) filter: Filter,
    pub(super) acked: bool,
    /// Messages decoded, not yet judged.
    pub(super) msgs: VecDeque<Vec<u8>>,
    /// The body ended (or could not be read).
    pub(super) done: bool,
    /// Why it ended, for the log and metric.
    pub(super) ended: Option<&'static str>,
    /// It ended its subscription itself (its final result): an orderly end.
    pub(super) finished: bool,
}

impl Member {
    /// Decodes what is buffered into messages.
    pub(super) fn take(&mut self) -> Result<(), String> {
        let buf = self.conn.buffered();
        let mut payload = Vec::new();
        let used = match self.framing {
            Framing::Length(_) => {
                let n = self.left.min(buf.len() as u64) as usize;
                payload.extend_from_slice(&buf[..n]);
                self.left -= n as u64;
                if self.left == 0 {
                    self.done = true;
                }
                n
            }
            Framing::Chunked => {
                let n = self
                    .chunks
                    .feed(buf, |d| payload.extend_from_slice(d))
                    .map_err(|e| format!("malformed chunked stream: {e}"))?;
                if self.chunks.is_done() {
                    self.done = true;
                }
                n
            }
            Framing::UntilClose => {
                payload.extend_from_slice(buf);
                buf.len()
            }
            Framing::None => {
                self.done = true;
                0
            }
        };
        self.conn.consume(used);
        self.decode(&payload)?;
        if self.done {
            self.finish()?;
        }
        Ok(())
    }

    fn decode(&mut self, payload: &[u8]) -> Result<(), String> {
        let msgs = &mut self.msgs;
        match &mut self.sse {
            Some(d) => d
                .feed(payload, |item| {
                    if let sse::Item::Event(e) = item {
                        if !e.data.is_empty() {
                            msgs.push_back(e.data.to_vec());
                        }
                    }
                })
                .map_err(|e| format!("unusable event stream: {e}")),
            None => {
                let mut rest = payload;
                while let Some(i) = memchr::memchr(b'\n', rest) {
                    self.line.extend_from_slice(&rest[..i]);
                    let line = std::mem::take(&mut self.line);
                    if !line.trim_ascii().is_empty() {
                        msgs.push_back(line);
                    }
                    rest = &rest[i + 1..];
                }
                self.line.extend_from_slice(rest);
                if self.line.len() > MAX_MESSAGE_BYTES {
                    return Err(format!("a line is larger than {MAX_MESSAGE_BYTES} bytes"));
                }
                Ok(())
            }
        }
    }

    /// The body ended: what is left of the last message.
    fn finish(&mut self) -> Result<(), String> {
        let msgs = &mut self.msgs;
        match &mut self.sse {
            Some(d) => d
                .finish(sse::AtEnd::Dispatch, |item| {
                    if let sse::Item::Event(e) = item {
                        if !e.data.is_empty() {
                            msgs.push_back(e.data.to_vec());
                        }
                    }
                })
                .map_err(|e| format!("unusable event stream: {e}")),
            None => {
                let line = std::mem::take(&mut self.line);
                if !line.trim_ascii().is_empty() {
                    msgs.push_back(line);
                }
                Ok(())
            }
        }
    }

    /// Reads more; marks the member done at the end of its body or on an error.
    pub(super) async fn read(&mut self) {
        match self.conn.fill(0).await {
            Ok(0) | Err(_) => {
                if self.framing != Framing::UntilClose {
                    self.ended.get_or_insert("closed");
                }
                self.done = true;
                let _ = self.finish();
            }
            Ok(_) => {}
        }
    }

    /// Whether its socket woke with nothing to read (a TLS record without data): wait on.
    pub(super) fn spurious(&mut self) -> bool {
        self.conn.io.is_tls()
            && self.conn.buffered().is_empty()
            && self.conn.io.peer_state() == Idleness::Silent
    }
}

pub(super) fn count_member_end(gw: &Gateway, u: usize, reason: &'static str) {
    let name = gw.upstreams[u].name.clone();
    metrics::counter!(names::LISTEN_MEMBER_ENDS_TOTAL, "upstream" => name, "reason" => reason)
        .increment(1);
}
