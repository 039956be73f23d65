//! [`SseParser`]: a push-fed, pull-read Server-Sent Events parser, written for token streams;
//! the OpenAI client feeds it the response body and hands each event to the chunk decoder.
//!
//! Bytes go in as they come off the socket ([`SseParser::feed`]), whole events come out
//! ([`SseParser::next_event`]), borrowed from the parser's buffer. It follows the WHATWG
//! event-stream rules where they matter to an LLM client:
//!
//! - input is buffered as bytes and only complete lines are decoded, so a read may end at
//!   any byte, also inside a multi-byte UTF-8 character;
//! - lines end with `\n`, `\r\n` or a lone `\r`, also when the `\r` ends one read and the
//!   `\n` starts the next;
//! - a leading byte-order mark is dropped;
//! - `:` lines are comments (keep-alives); `event:` sets the event's type; `id:`, `retry:` and
//!   unknown fields are ignored; several `data:` lines join with `\n`; one space after the
//!   colon is dropped;
//! - a blank line dispatches the event, if it has any `data` field.
//!
//! It is fast because the common event (one `data:` line) is never copied out of the read
//! buffer: the event borrows it, `memchr` finds the line ends, and UTF-8 is checked once per
//! event. An event that grows past [`MAX_EVENT_BYTES`] is an error, so a server that never
//! sends a line break cannot make the client buffer without bound.

use std::fmt;
use std::ops::Range;

/// The largest event (or unfinished line) the parser buffers: far above any chunk an LLM
/// server sends (a few hundred bytes), far below what would hurt the process.
pub(crate) const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// The input broke a limit of the parser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SseError {
    /// An event or line grew past [`MAX_EVENT_BYTES`].
    #[error("a server-sent event is larger than {MAX_EVENT_BYTES} bytes")]
    EventTooLarge,
}

/// One dispatched event, borrowed from the parser until the next call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct SseEvent<'a> {
    /// The `event:` field, if the event had one.
    pub(crate) event: Option<&'a str>,
    /// The `data:` lines, joined with `\n` (invalid UTF-8 replaced by U+FFFD).
    pub(crate) data: &'a str,
}

impl fmt::Debug for SseEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseEvent")
            .field("event", &self.event)
            .field("data", &self.data)
            .finish()
    }
}

/// Where the current event's data is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Data {
    /// No `data` field yet.
    #[default]
    None,
    /// Exactly one `data` line, still in `buf` at this range (the fast path).
    Line(Range<usize>),
    /// Several lines, or one that had to leave `buf`, joined in `joined`.
    Joined,
}

/// An incremental Server-Sent Events parser; see the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// Bytes read and not yet consumed, from `pos` on.
    buf: Vec<u8>,
    /// The start of the first line not yet parsed.
    pos: usize,
    /// Where in `buf` the search for the next line end resumes (past `pos` when a line is
    /// unfinished), so a long line arriving in small reads is scanned once, not once a read.
    scan: usize,
    /// The last line ended with a `\r` at the very end of the input seen so far: a `\n` first
    /// in the next read belongs to it.
    skip_lf: bool,
    /// Whether the byte-order-mark check at the start of the stream is done.
    bom_checked: bool,
    data: Data,
    joined: Vec<u8>,
    event: String,
    /// The previous call returned an event, whose state is cleared on the next call.
    dispatched: bool,
    /// Holds the lossily decoded data of an event that was not valid UTF-8.
    lossy: String,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        self.reset_dispatched();
        self.compact();
        self.buf.extend_from_slice(bytes);
        if self.buf.len() - self.pos + self.joined.len() > MAX_EVENT_BYTES {
            return Err(SseError::EventTooLarge);
        }
        Ok(())
    }

    /// The next complete event in the bytes fed so far, or `None` until more are fed.
    pub(crate) fn next_event(&mut self) -> Option<SseEvent<'_>> {
        self.reset_dispatched();
        if !self.bom_checked {
            if self.buf.len() - self.pos < 3 && b"\xEF\xBB\xBF".starts_with(&self.buf[self.pos..]) {
                return None; // could still be a BOM
            }
            self.bom_checked = true;
            if self.buf[self.pos..].starts_with(b"\xEF\xBB\xBF") {
                self.pos += 3;
            }
        }
        loop {
            if self.skip_lf && self.pos < self.buf.len() {
                self.skip_lf = false;
                if self.buf[self.pos] == b'\n' {
                    self.pos += 1;
                }
            }
            let from = self.scan.max(self.pos);
            let Some(offset) = memchr::memchr2(b'\n', b'\r', &self.buf[from..]) else {
                self.scan = self.buf.len();
                return None;
            };
            let start = self.pos;
            let end = from + offset;
            self.pos = end + 1;
            if self.buf[end] == b'\r' {
                match self.buf.get(end + 1) {
                    Some(b'\n') => self.pos += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            self.scan = self.pos;
            if start == end {
                if self.data == Data::None {
                    self.event.clear();
                    continue;
                }
                return Some(self.dispatch());
            }
            self.line(start..end);
        }
    }

    /// Ends the stream: returns the event whose `data` lines were complete but whose closing
    /// blank line never came, if any. An unfinished last line is dropped, as the standard
    /// says (it may be cut off mid-way).
    pub(crate) fn finish(&mut self) -> Option<SseEvent<'_>> {
        self.reset_dispatched();
        if self.data == Data::None {
            return None;
        }
        Some(self.dispatch())
    }

    /// Parses one complete, non-empty line (without its line end).
    fn line(&mut self, range: Range<usize>) {
        let line = &self.buf[range.clone()];
        if line[0] == b':' {
            return; // a comment, such as a keep-alive
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value_start = if line.get(colon + 1) == Some(&b' ') {
                    colon + 2
                } else {
                    colon + 1
                };
                (&line[..colon], range.start + value_start..range.end)
            }
            None => (line, range.end..range.end),
        };
        match field {
            b"data" => match &self.data {
                Data::None => self.data = Data::Line(value),
                Data::Line(first) => {
                    self.joined.clear();
                    self.joined.extend_from_slice(&self.buf[first.clone()]);
                    self.joined.push(b'\n');
                    self.joined.extend_from_slice(&self.buf[value]);
                    self.data = Data::Joined;
                }
                Data::Joined => {
                    self.joined.push(b'\n');
                    self.joined.extend_from_slice(&self.buf[value]);
                }
            },
            b"event" => {
                self.event.clear();
                self.event
                    .push_str(&String::from_utf8_lossy(&self.buf[value]));
            }
            _ => {} // id, retry and unknown fields mean nothing to a token stream
        }
    }

    fn dispatch(&mut self) -> SseEvent<'_> {
        self.dispatched = true;
        let bytes = match &self.data {
            Data::Line(range) => &self.buf[range.clone()],
            _ => &self.joined[..],
        };
        let data = match std::str::from_utf8(bytes) {
            Ok(data) => data,
            Err(_) => {
                self.lossy = String::from_utf8_lossy(bytes).into_owned();
                &self.lossy
            }
        };
        SseEvent {
            event: (!self.event.is_empty()).then_some(self.event.as_str()),
            data,
        }
    }

    /// Clears the event returned by the previous call.
    fn reset_dispatched(&mut self) {
        if self.dispatched {
            self.dispatched = false;
            self.data = Data::None;
            self.joined.clear();
            self.event.clear();
        }
    }

    /// Drops consumed bytes from the front of the buffer. A pending one-line `data` field
    /// moves to `joined` first, as its range is about to go stale.
    fn compact(&mut self) {
        if self.pos == 0 {
            return;
        }
        if let Data::Line(range) = &self.data {
            self.joined.clear();
            self.joined.extend_from_slice(&self.buf[range.clone()]);
            self.data = Data::Joined;
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
        } else {
            self.buf.drain(..self.pos);
        }
        self.scan = self.scan.saturating_sub(self.pos);
        self.pos = 0;
    }
}

#[cfg(test)]
mod tests;
