//! Server-sent events (the WHATWG `text/event-stream` format): an incremental decoder that can be
//! fed any split of a stream, and the encoder the demo server writes with.
//!
//! Decoding follows the HTML standard's "event stream interpretation": lines end in CR, LF or
//! CRLF (a CRLF split between two feeds is still one line end); one leading BOM is skipped; a
//! line starting with `:` is a comment (reported, so a caller can see keep-alives); `field:value`
//! drops one space after the colon, a line without a colon is a field with an empty value;
//! `data` lines are joined with `\n`; `event` sets the type; `id` sets the last event id, which
//! persists across events, and is ignored when it contains NUL; `retry` is reported when it is
//! ASCII digits only; unknown fields are ignored. A blank line dispatches the event, unless no
//! `data` line was seen (then only the type and data are reset). Bytes are not UTF-8 decoded:
//! the splits are only ever at ASCII bytes, so a multi-byte character is never cut, and data is
//! handed over as the stream's bytes.
//!
//! Bounded: the bytes held for one event (a line still incomplete, the data and type so far)
//! may not exceed `max_event_bytes`; a stream that needs more is an error, and the decoder stays
//! failed. Lines complete within one feed are read in place (never copied to be split); the data
//! of an event is copied once into a buffer the decoder reuses.

use std::ops::Range;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What a stream carries, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<'a> {
    /// A dispatched event.
    Event(Event<'a>),
    /// A comment line's text after the `:` (nothing stripped): keep-alives and the like.
    Comment(&'a [u8]),
    /// A valid `retry` field: the reconnection time the server asks for, in milliseconds.
    Retry(u64),
}

/// One dispatched event, borrowed from the decoder (valid until the next feed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event` field, empty when the event did not set one (its type is then `message`).
    pub event: &'a [u8],
    /// The `data` lines joined with `\n` (no trailing newline).
    pub data: &'a [u8],
    /// The last event id at dispatch (set by this or an earlier event); `None` if never set.
    pub id: Option<&'a [u8]>,
    /// Where `data` lies in the stream (byte offsets from its first byte, BOM included) when
    /// it came from exactly one `data` line, so a caller holding the stream can edit it in place.
    pub data_span: Option<Range<u64>>,
}

impl Event<'_> {
    /// The event's type: its `event` field, or `message`.
    pub fn kind(&self) -> &[u8] {
        if self.event.is_empty() {
            b"message"
        } else {
            self.event
        }
    }

    pub fn to_owned(&self) -> OwnedEvent {
        OwnedEvent {
            event: self.event.to_vec(),
            data: self.data.to_vec(),
            id: self.id.map(<[u8]>::to_vec),
        }
    }
}

/// An event that outlives the decoder (tests, load generator).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnedEvent {
    pub event: Vec<u8>,
    pub data: Vec<u8>,
    pub id: Option<Vec<u8>>,
}

/// Why a stream could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an event is larger than {max} bytes")]
    TooLarge { max: usize },
}

/// What `finish` does with an event whose closing blank line never came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEnd {
    /// The standard's rule: an incomplete event is not dispatched.
    Discard,
    /// Dispatch it anyway (and a last line without a line end counts): for callers that read a
    /// whole body and accept a stream that was cut right before its final blank line.
    Dispatch,
}

/// The incremental decoder. Feed it bytes as they arrive; it calls back with each item.
#[derive(Debug)]
pub struct Decoder {
    max_event_bytes: usize,
    /// Stream offset of the next byte fed.
    pos: u64,
    /// BOM bytes matched at the start of the stream so far; `None` once past the start.
    bom: Option<usize>,
    /// The last feed ended with CR: an LF first in the next one belongs to it.
    skip_lf: bool,
    /// An incomplete line carried between feeds, and its stream offset.
    line: Vec<u8>,
    line_start: u64,
    data: Vec<u8>,
    data_lines: usize,
    data_span: Option<Range<u64>>,
    event: Vec<u8>,
    last_id: Option<Vec<u8>>,
    failed: Option<SseError>,
}

impl Decoder {
    /// A decoder that refuses events larger than `max_event_bytes` (pending line + data + type).
    pub fn new(max_event_bytes: usize) -> Self {
        Decoder {
            max_event_bytes,
            pos: 0,
            bom: Some(0),
            skip_lf: false,
            line: Vec::new(),
            line_start: 0,
            data: Vec::new(),
            data_lines: 0,
            data_span: None,
            event: Vec::new(),
            last_id: None,
            failed: None,
        }
    }

    /// The last event id seen so far (what a client would send as `Last-Event-ID`).
    pub fn last_event_id(&self) -> Option<&[u8]> {
        self.last_id.as_deref()
    }

    /// Bytes of the stream fed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Decodes `input`, the next bytes of the stream (any split), calling `on` for each item.
    pub fn feed(&mut self, input: &[u8], mut on: impl FnMut(Item<'_>)) -> Result<(), SseError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut input = input;
        if let Some(matched) = self.bom {
            let n = (BOM.len() - matched).min(input.len());
            if input[..n] == BOM[matched..matched + n] {
                input = &input[n..];
                self.pos += n as u64;
                if matched + n < BOM.len() {
                    self.bom = Some(matched + n);
                    return Ok(());
                }
                self.bom = None;
                self.line_start = self.pos;
            } else {
                // Not a BOM after all: the bytes held back are the stream's first bytes.
                self.bom = None;
                if matched > 0 {
                    self.pos = 0;
                    self.run(&BOM[..matched], &mut on)?;
                }
            }
        }
        self.run(input, &mut on)
    }

    /// Ends the stream: a last line without a line end is a line only with `AtEnd::Dispatch`,
    /// which also dispatches an event whose blank line never came.
    pub fn finish(&mut self, at_end: AtEnd, mut on: impl FnMut(Item<'_>)) -> Result<(), SseError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if at_end == AtEnd::Dispatch {
            if let Some(matched) = self.bom.take() {
                if matched > 0 && matched < BOM.len() {
                    self.pos = 0;
                    self.run(&BOM[..matched], &mut on)?;
                }
            }
            if !self.line.is_empty() {
                let line = std::mem::take(&mut self.line);
                let r = self.process_line(&line, self.line_start, &mut on);
                self.line = line;
                self.line.clear();
                r?;
            }
            self.dispatch(&mut on);
        }
        self.line.clear();
        self.reset_event();
        Ok(())
    }

    fn run(&mut self, input: &[u8], on: &mut impl FnMut(Item<'_>)) -> Result<(), SseError> {
        let mut rest = input;
        if self.skip_lf && !rest.is_empty() {
            self.skip_lf = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
                self.pos += 1;
                self.line_start = self.pos;
            }
        }
        while let Some(i) = memchr::memchr2(b'\r', b'\n', rest) {
            let end_len = if rest[i] == b'\r' {
                if i + 1 == rest.len() {
                    self.skip_lf = true;
                    1
                } else if rest[i + 1] == b'\n' {
                    2
                } else {
                    1
                }
            } else {
                1
            };
            if self.line.is_empty() {
                self.process_line(&rest[..i], self.line_start, on)?;
            } else {
                self.hold(&rest[..i])?;
                let line = std::mem::take(&mut self.line);
                let r = self.process_line(&line, self.line_start, on);
                self.line = line;
                self.line.clear();
                r?;
            }
            self.pos += (i + end_len) as u64;
            self.line_start = self.pos;
            rest = &rest[i + end_len..];
        }
        self.hold(rest)?;
        self.pos += rest.len() as u64;
        Ok(())
    }

    /// Keeps an incomplete line's bytes for the next feed, within the bound.
    fn hold(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.check(bytes.len() + self.line.len())?;
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn check(&mut self, more: usize) -> Result<(), SseError> {
        if self.data.len() + self.event.len() + more > self.max_event_bytes {
            let e = SseError::TooLarge {
                max: self.max_event_bytes,
            };
            self.failed = Some(e);
            return Err(e);
        }
        Ok(())
    }

    /// One complete line, starting at stream offset `at`.
    fn process_line(
        &mut self,
        line: &[u8],
        at: u64,
        on: &mut impl FnMut(Item<'_>),
    ) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(on);
            return Ok(());
        }
        if line[0] == b':' {
            on(Item::Comment(&line[1..]));
            return Ok(());
        }
        let (field, value, value_at) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                match v.first() {
                    Some(b' ') => (&line[..c], &v[1..], c + 2),
                    _ => (&line[..c], v, c + 1),
                }
            }
            None => (line, &b""[..], line.len()),
        };
        match field {
            b"data" => {
                let sep = usize::from(self.data_lines > 0);
                self.check(value.len() + sep)?;
                if sep == 1 {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.data_lines += 1;
                let start = at + value_at as u64;
                self.data_span = Some(start..start + value.len() as u64);
            }
            b"event" => {
                self.check(value.len().saturating_sub(self.event.len()))?;
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"id" if memchr::memchr(0, value).is_none() => {
                let id = self.last_id.get_or_insert_with(Vec::new);
                id.clear();
                id.extend_from_slice(value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // All digits: only overflow can fail, and a time that long is ignored.
                if let Ok(ms) = std::str::from_utf8(value).unwrap_or("").parse::<u64>() {
                    on(Item::Retry(ms));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, on: &mut impl FnMut(Item<'_>)) {
        if self.data_lines > 0 {
            on(Item::Event(Event {
                event: &self.event,
                data: &self.data,
                id: self.last_id.as_deref(),
                data_span: if self.data_lines == 1 {
                    self.data_span.clone()
                } else {
                    None
                },
            }));
        }
        self.reset_event();
    }

    fn reset_event(&mut self) {
        self.data.clear();
        self.event.clear();
        self.data_lines = 0;
        self.data_span = None;
    }
}

/// Decodes a whole stream into owned events (a test or a tool that holds the body).
pub fn decode_all(
    stream: &[u8],
    max_event_bytes: usize,
    at_end: AtEnd,
) -> Result<Vec<OwnedEvent>, SseError> {
    let mut out = Vec::new();
    let mut d = Decoder::new(max_event_bytes);
    let mut push = |item: Item<'_>| {
        if let Item::Event(e) = item {
            out.push(e.to_owned());
        }
    };
    d.feed(stream, &mut push)?;
    d.finish(at_end, &mut push)?;
    Ok(out)
}

/// The fields of an event to write besides its data.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields<'a> {
    pub id: Option<&'a [u8]>,
    pub event: Option<&'a [u8]>,
    pub retry: Option<u64>,
}

/// Appends one event to `out`: its fields, then `data` as one `data:` line per line of it (CR,
/// LF and CRLF all end a line, as a decoder reads them), then the blank line.
///
/// Panics if `id` or `event` contain CR or LF, or `id` a NUL (they would change the stream's
/// meaning); they are the writer's own values, never a client's.
pub fn write_event(out: &mut Vec<u8>, fields: &Fields<'_>, data: &[u8]) {
    write_event_with(out, fields, |o| o.extend_from_slice(data));
}

/// Like `write_event`, with the data rendered in place by `render` (no intermediate buffer when
/// it writes no line breaks, e.g. compact JSON).
pub fn write_event_with(out: &mut Vec<u8>, fields: &Fields<'_>, render: impl FnOnce(&mut Vec<u8>)) {
    let bad = |v: &[u8]| memchr::memchr2(b'\r', b'\n', v).is_some();
    if let Some(id) = fields.id {
        assert!(
            !bad(id) && !id.contains(&0),
            "an SSE id cannot hold CR, LF or NUL"
        );
        field(out, b"id", id);
    }
    if let Some(ev) = fields.event {
        assert!(!bad(ev), "an SSE event type cannot hold CR or LF");
        field(out, b"event", ev);
    }
    if let Some(ms) = fields.retry {
        field(out, b"retry", ms.to_string().as_bytes());
    }
    out.extend_from_slice(b"data: ");
    let start = out.len();
    render(out);
    if bad(&out[start..]) {
        let data = out.split_off(start);
        let mut lines = data.as_slice();
        loop {
            match memchr::memchr2(b'\r', b'\n', lines) {
                Some(i) => {
                    out.extend_from_slice(&lines[..i]);
                    out.extend_from_slice(b"\ndata: ");
                    let skip = if lines[i] == b'\r' && lines.get(i + 1) == Some(&b'\n') {
                        2
                    } else {
                        1
                    };
                    lines = &lines[i + skip..];
                }
                None => {
                    out.extend_from_slice(lines);
                    break;
                }
            }
        }
    }
    out.extend_from_slice(b"\n\n");
}

/// Appends a comment line (`:text`, then a line end): a keep-alive. `text` must hold no CR/LF.
pub fn write_comment(out: &mut Vec<u8>, text: &[u8]) {
    assert!(
        memchr::memchr2(b'\r', b'\n', text).is_none(),
        "an SSE comment is one line"
    );
    out.push(b':');
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// Appends a `retry` field on its own, closed by a blank line: the client takes the reconnection
/// time and, with no `data`, dispatches nothing. For relaying a `retry` that came without an event.
pub fn write_retry(out: &mut Vec<u8>, ms: u64) {
    field(out, b"retry", ms.to_string().as_bytes());
    out.push(b'\n');
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests;
