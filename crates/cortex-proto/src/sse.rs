//! Server-Sent Events (SSE) codec.
//!
//! Cortex streams tool progress and notifications as `text/event-stream`.
//! This module holds both halves of that wire format:
//!
//! * [`encode`], [`encode_into`] and [`comment`] write events and keep-alive
//!   comments in a form every conforming client decodes back to the same
//!   event, and refuse ([`SseError::InvalidField`]) to write an `id` or
//!   `event` that would decode as something else.
//! * [`Decoder`] is an incremental parser that follows the WHATWG HTML
//!   "event stream interpretation" rules exactly.
//!
//! # Why a full implementation
//!
//! The seed Python client kept only the first `data:` line of each event and
//! ignored `id:`, `event:`, `retry:` and CR / CRLF line ends. That loses
//! multi-line payloads, breaks resumption (`Last-Event-ID`) and misparses
//! streams from servers that end lines with CRLF. This decoder implements the
//! standard instead:
//!
//! * one leading UTF-8 BOM is skipped, only at the very start of the stream,
//!   even when it is split across chunks;
//! * lines end with LF, CR or CRLF, and a CR ending one chunk followed by an
//!   LF starting the next is a single line end;
//! * lines starting with `:` are comments; a line without a colon is a field
//!   with an empty value; one space after the colon is removed;
//! * `data` appends the value and a LF to the data buffer, `event` sets the
//!   event type, `id` sets the last event ID unless the value contains NUL,
//!   `retry` is honoured only when it consists of ASCII digits, and unknown
//!   fields are ignored;
//! * a blank line dispatches the event, unless the data buffer is empty (then
//!   the block is dropped, but an `id` it carried is kept), and the last event
//!   ID carries over to later events that do not set one;
//! * an incomplete event at end of stream is discarded ([`Decoder::finish`]);
//! * invalid UTF-8 is decoded lossily (U+FFFD), as the standard requires.
//!
//! Input may be fed in chunks split anywhere, including inside a UTF-8
//! sequence; each byte is examined once, so decoding is linear in the input.
//! Memory is bounded by the line and event limits of [`Decoder::with_limits`].
//!
//! ```
//! use cortex_proto::sse::{Decoder, Event, encode};
//!
//! # fn main() -> Result<(), cortex_proto::sse::SseError> {
//! let wire = encode(&Event::message("a\nb").with_id("7"))?;
//! assert_eq!(wire, "id: 7\ndata: a\ndata: b\n\n");
//! let mut decoder = Decoder::new();
//! let events = decoder.feed(wire.as_bytes())?;
//! assert_eq!(events, vec![Event::message("a\nb").with_id("7")]);
//! # Ok(())
//! # }
//! ```

use bytes::BytesMut;

/// The UTF-8 byte order mark, skipped once at the start of a stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Default bound on one line, in bytes, used by [`Decoder::new`] (1 MiB).
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;

/// Default bound on the data of one event, in bytes, used by [`Decoder::new`]
/// (8 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// One SSE event as dispatched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// `id:` of this event, or the last id seen on the stream (WHATWG
    /// last-event-ID buffer carries over); `None` if never set.
    ///
    /// An `id` line with an empty value resets the ID to `Some("")`, which
    /// per the standard means "send no `Last-Event-ID` on reconnection".
    pub id: Option<String>,
    /// `event:` type; `None` means the default type "message".
    ///
    /// The decoder never yields `Some("")`: an empty `event:` value means the
    /// default type. The encoder omits an empty type for the same reason.
    pub event: Option<String>,
    /// The data, lines joined with '\n' (no trailing newline).
    pub data: String,
    /// `retry:` in milliseconds if this event block carried one (only ASCII
    /// digits are valid per spec).
    pub retry: Option<u64>,
}

impl Event {
    /// A default-typed ("message") event with the given data and no id,
    /// type or retry.
    pub fn message(data: impl Into<String>) -> Self {
        Self {
            data: data.into(),
            ..Self::default()
        }
    }

    /// Sets the `id` of the event.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the `event` type of the event.
    #[must_use]
    pub fn with_event(mut self, ev: impl Into<String>) -> Self {
        self.event = Some(ev.into());
        self
    }

    /// Sets the `retry` (reconnection time) advice, in milliseconds.
    #[must_use]
    pub fn with_retry(mut self, ms: u64) -> Self {
        self.retry = Some(ms);
        self
    }

    /// The effective event type: the `event` field, or `"message"` when it is
    /// unset or empty.
    pub fn event_type(&self) -> &str {
        match self.event.as_deref() {
            Some(ev) if !ev.is_empty() => ev,
            _ => "message",
        }
    }

    /// Parses the data as JSON.
    ///
    /// # Errors
    ///
    /// Returns the [`serde_json::Error`] when the data is not valid JSON for
    /// `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.data)
    }
}

/// Errors of the SSE encoder and decoder.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SseError {
    /// The decoder met a line longer than its line limit.
    #[error("SSE line longer than {limit} bytes")]
    LineTooLong {
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// The data of one event grew beyond the decoder's event limit.
    #[error("SSE event data larger than {limit} bytes")]
    EventTooLarge {
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// The encoder was asked to write a field value that would not decode to
    /// the same value (a line break in `id` or `event`, or NUL in `id`).
    #[error("SSE field `{field}` cannot contain a line break")]
    InvalidField {
        /// The offending field: `"id"` or `"event"`.
        field: &'static str,
    },
}

/// Encodes one event in wire form, ending with the blank line.
///
/// Fields are written in the order `id`, `event`, `retry`, `data`. Multi-line
/// data becomes several `data:` lines (split on `\n`, `\r\n` and `\r`, so a
/// decoder yields the data with every line end normalised to `\n`); empty
/// data is written as a single `data:` line so that the event is still
/// dispatched. An empty `event` is omitted, since it decodes as the default
/// type anyway.
///
/// # Errors
///
/// [`SseError::InvalidField`] when `id` contains CR, LF or NUL, or `event`
/// contains CR or LF: such values cannot be represented.
pub fn encode(event: &Event) -> Result<String, SseError> {
    validate(event)?;
    let mut out = String::with_capacity(encoded_len_hint(event));
    write_event(event, |s| out.push_str(s));
    Ok(out)
}

/// Appends one event in wire form to `out`, with the same rules as
/// [`encode`].
///
/// # Errors
///
/// As [`encode`]; nothing is appended to `out` on error.
pub fn encode_into(event: &Event, out: &mut BytesMut) -> Result<(), SseError> {
    validate(event)?;
    out.reserve(encoded_len_hint(event));
    write_event(event, |s| out.extend_from_slice(s.as_bytes()));
    Ok(())
}

/// A comment block such as `": keep-alive\n\n"`, ignored by decoders and
/// useful as a keep-alive.
///
/// Each line of `text` (split on `\n`, `\r\n` and `\r`) becomes its own
/// comment line, so the text cannot inject fields. The block ends with a
/// blank line, which is a no-op between events.
pub fn comment(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for_each_line(text, |line| {
        out.push(':');
        if !line.is_empty() {
            out.push(' ');
            out.push_str(line);
        }
        out.push('\n');
    });
    out.push('\n');
    out
}

/// Rejects field values that would not round-trip.
fn validate(event: &Event) -> Result<(), SseError> {
    let id_bad = event
        .id
        .as_deref()
        .is_some_and(|id| id.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)));
    if id_bad {
        return Err(SseError::InvalidField { field: "id" });
    }
    let event_bad = event
        .event
        .as_deref()
        .is_some_and(|ev| ev.bytes().any(|b| matches!(b, b'\r' | b'\n')));
    if event_bad {
        return Err(SseError::InvalidField { field: "event" });
    }
    Ok(())
}

/// A capacity estimate for the encoded event (exact for single-line data).
fn encoded_len_hint(event: &Event) -> usize {
    event.id.as_ref().map_or(0, |id| id.len() + 5)
        + event.event.as_ref().map_or(0, |ev| ev.len() + 8)
        + event.retry.map_or(0, |_| 28)
        + event.data.len()
        + 8
}

/// Writes a validated event through `push`.
fn write_event(event: &Event, mut push: impl FnMut(&str)) {
    let mut field = |name: &str, value: &str| {
        push(name);
        if value.is_empty() {
            push(":\n");
        } else {
            push(": ");
            push(value);
            push("\n");
        }
    };
    if let Some(id) = &event.id {
        field("id", id);
    }
    if let Some(ev) = event.event.as_deref().filter(|ev| !ev.is_empty()) {
        field("event", ev);
    }
    if let Some(ms) = event.retry {
        field("retry", &ms.to_string());
    }
    for_each_line(&event.data, |line| field("data", line));
    push("\n");
}

/// Calls `f` on each line of `text`, splitting on `\n`, `\r\n` and `\r`.
/// Always calls `f` at least once (with `""` for empty text), and a trailing
/// line end yields a final empty line.
fn for_each_line(text: &str, mut f: impl FnMut(&str)) {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                f(&text[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                f(&text[start..i]);
                i += if bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    f(&text[start..]);
}

/// Incremental SSE decoder.
///
/// Feed arbitrary byte chunks with [`feed`](Self::feed) (split anywhere,
/// including inside a UTF-8 sequence or between CR and LF) and get the
/// complete events; call [`finish`](Self::finish) at end of stream.
///
/// # Limits and poisoning
///
/// A line longer than the line limit makes [`feed`](Self::feed) return
/// [`SseError::LineTooLong`] (as soon as the buffered part of the line
/// exceeds it, so an endless line is never buffered without bound), and an
/// event whose data would exceed the event limit makes it return
/// [`SseError::EventTooLarge`]. The limits apply whatever the chunking, so
/// the outcome does not depend on how the stream was split.
///
/// After an error the decoder is *poisoned*: the stream is no longer in a
/// known state, events completed earlier in the failing chunk are not
/// returned, and every later [`feed`](Self::feed) returns the same error
/// until [`finish`](Self::finish) resets the decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Limit on one line, excluding its line end.
    max_line_bytes: usize,
    /// Limit on the dispatched data of one event.
    max_event_bytes: usize,
    /// `Some(n)` while still checking for a BOM at stream start, with `n`
    /// BOM bytes matched (and held back) so far; `None` once decided.
    bom_matched: Option<usize>,
    /// The bytes of the current, unterminated line.
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF starting the next chunk
    /// belongs to the same line end.
    pending_cr: bool,
    /// The data buffer: each `data` value followed by LF.
    data: String,
    /// The event type buffer.
    event_type: String,
    /// The last event ID buffer, as set by `id` fields.
    id_buffer: Option<String>,
    /// The last event ID string, updated from the buffer on each blank line.
    last_event_id: Option<String>,
    /// `retry` seen in the current block.
    block_retry: Option<u64>,
    /// The latest `retry` seen on the stream.
    retry: Option<u64>,
    /// A field line was seen since the last blank line.
    block_dirty: bool,
    /// The error that poisoned the decoder, if any.
    poisoned: Option<SseError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the default limits: lines of at most
    /// [`DEFAULT_MAX_LINE_BYTES`] (1 MiB) and event data of at most
    /// [`DEFAULT_MAX_EVENT_BYTES`] (8 MiB).
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_EVENT_BYTES)
    }

    /// A decoder with explicit limits.
    ///
    /// `max_line_bytes` bounds each line (field name, colon and value,
    /// without the line end). `max_event_bytes` bounds the data of one event
    /// as dispatched (the `data` values joined with `\n`, after lossy UTF-8
    /// decoding).
    pub fn with_limits(max_line_bytes: usize, max_event_bytes: usize) -> Self {
        Self {
            max_line_bytes,
            max_event_bytes,
            bom_matched: Some(0),
            line: Vec::new(),
            pending_cr: false,
            data: String::new(),
            event_type: String::new(),
            id_buffer: None,
            last_event_id: None,
            block_retry: None,
            retry: None,
            block_dirty: false,
            poisoned: None,
        }
    }

    /// Decodes the next chunk of the stream and returns the events it
    /// completed, in order.
    ///
    /// # Errors
    ///
    /// [`SseError::LineTooLong`] or [`SseError::EventTooLarge`] when a limit
    /// is exceeded; the decoder is then poisoned (see the type's docs) and
    /// returns the same error on every later call.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        let mut events = Vec::new();
        match self.feed_inner(chunk, &mut events) {
            Ok(()) => Ok(events),
            Err(err) => {
                self.poisoned = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Ends the stream.
    ///
    /// Per the standard an incomplete trailing event (no final blank line) is
    /// discarded; this returns `true` if anything was discarded that way (an
    /// unterminated line, or field lines not followed by a blank line).
    ///
    /// The decoder is then reset for a new stream (for instance after a
    /// reconnection): a BOM is again skipped at its start, and a poisoned
    /// decoder is usable again. [`last_event_id`](Self::last_event_id) and
    /// [`retry`](Self::retry) are kept, and the last event ID keeps carrying
    /// over to events of the new stream that set none.
    pub fn finish(&mut self) -> bool {
        let discarded =
            !self.line.is_empty() || self.block_dirty || self.bom_matched.is_some_and(|n| n > 0);
        self.bom_matched = Some(0);
        self.line.clear();
        self.pending_cr = false;
        self.data.clear();
        self.event_type.clear();
        self.id_buffer.clone_from(&self.last_event_id);
        self.block_retry = None;
        self.block_dirty = false;
        self.poisoned = None;
        discarded
    }

    /// The last event ID as of the last complete block (what a client sends
    /// as `Last-Event-ID` when reconnecting); `None` if never set. An `id`
    /// in an unfinished block is not reported until its blank line.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// The latest reconnection time advice (`retry:`), in milliseconds.
    ///
    /// Applied as soon as the field is read, as the standard says, even if
    /// its block is never dispatched.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// [`feed`](Self::feed) without the poisoning bookkeeping.
    fn feed_inner(&mut self, chunk: &[u8], events: &mut Vec<Event>) -> Result<(), SseError> {
        let mut input = self.skip_bom(chunk);
        if input.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.pending_cr) && input.first() == Some(&b'\n') {
            input = &input[1..];
        }
        while let Some(pos) = input.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (content, rest) = input.split_at(pos);
            let mut rest = rest.get(1..).unwrap_or_default();
            if input[pos] == b'\r' {
                match rest.split_first() {
                    Some((b'\n', after)) => rest = after,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            if self.line.is_empty() {
                self.check_line_len(content.len())?;
                self.process_line(content, events)?;
            } else {
                self.check_line_len(self.line.len() + content.len())?;
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(content);
                let result = self.process_line(&line, events);
                line.clear();
                self.line = line;
                result?;
            }
            input = rest;
        }
        if !input.is_empty() {
            self.check_line_len(self.line.len() + input.len())?;
            self.line.extend_from_slice(input);
        }
        Ok(())
    }

    /// Consumes a BOM (or the part of it seen so far) at the start of the
    /// stream and returns the rest of `input`.
    fn skip_bom<'a>(&mut self, mut input: &'a [u8]) -> &'a [u8] {
        while let Some(matched) = self.bom_matched {
            let Some((&byte, rest)) = input.split_first() else {
                break;
            };
            if byte == BOM[matched] {
                input = rest;
                self.bom_matched = (matched + 1 < BOM.len()).then_some(matched + 1);
            } else {
                // Not a BOM after all: the held-back bytes are line content
                // (they are neither CR nor LF).
                self.line.extend_from_slice(&BOM[..matched]);
                self.bom_matched = None;
            }
        }
        input
    }

    /// Fails when a line of `len` bytes exceeds the line limit.
    fn check_line_len(&self, len: usize) -> Result<(), SseError> {
        if len > self.max_line_bytes {
            Err(SseError::LineTooLong {
                limit: self.max_line_bytes,
            })
        } else {
            Ok(())
        }
    }

    /// Interprets one complete line (without its line end).
    fn process_line(&mut self, line: &[u8], events: &mut Vec<Event>) -> Result<(), SseError> {
        if line.is_empty() {
            if let Some(event) = self.dispatch() {
                events.push(event);
            }
            return Ok(());
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return Ok(()), // comment
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        self.block_dirty = true;
        match name {
            b"data" => {
                let value = String::from_utf8_lossy(value);
                // The dispatched data is the buffer plus this value (the
                // buffer's LFs join lines; the final one is stripped).
                if self.data.len() + value.len() > self.max_event_bytes {
                    return Err(SseError::EventTooLarge {
                        limit: self.max_event_bytes,
                    });
                }
                self.data.push_str(&value);
                self.data.push('\n');
            }
            b"event" => {
                self.event_type.clear();
                self.event_type.push_str(&String::from_utf8_lossy(value));
            }
            // An id containing NUL is ignored as a whole.
            b"id" if !value.contains(&0) => {
                self.id_buffer = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" => {
                if let Some(ms) = parse_retry(value) {
                    self.retry = Some(ms);
                    self.block_retry = Some(ms);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Handles a blank line: the WHATWG "dispatch the event" steps.
    fn dispatch(&mut self) -> Option<Event> {
        self.last_event_id.clone_from(&self.id_buffer);
        self.block_dirty = false;
        let retry = self.block_retry.take();
        if self.data.is_empty() {
            self.event_type.clear();
            return None;
        }
        // Every `data` line ended with LF; strip the last one.
        self.data.pop();
        let data = std::mem::take(&mut self.data);
        let event_type = std::mem::take(&mut self.event_type);
        Some(Event {
            id: self.last_event_id.clone(),
            event: (!event_type.is_empty()).then_some(event_type),
            data,
            retry,
        })
    }
}

/// Parses a `retry` value: non-empty, ASCII digits only. Values that do not
/// fit in a `u64` are ignored like other invalid values.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}
