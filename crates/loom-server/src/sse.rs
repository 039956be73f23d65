//! Server-Sent Events from a run log: the frames of DESIGN.md §3, byte for byte.
//!
//! Each chunk is `id: <seq>\nevent: <type>\ndata: <chunk json>\n\n`; an idle stream gets a
//! `: keep-alive\n\n` comment every keep-alive interval. The body is polled only when the
//! socket takes more, so a back-pressured stream gets no keep-alives and costs only its
//! [`Feed`]'s cursor. The keep-alive counts from the last bytes written, so a run whose
//! chunks a dialect renders as nothing (progress, in the OpenAI dialects) still keeps its
//! connection alive. A reader whose cursor the log dropped is disconnected
//! ([`Overtaken`]): on Loom's own frames without a terminal — its client resumes and gets
//! `410 cursor_expired` — and in a dialect, whose official clients do not resume, after an
//! `error` that says the stream is incomplete. A chunk the log does not hold (a verdict the
//! server made when it lost Redis, or that one) has no `id:` line.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use loom_core::{ActorError, ErrorCode, StreamChunk};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::backend::{Attachment, Feed};
use crate::metrics::Metrics;
use crate::runlog::{CursorExpired, LoggedChunk};
use crate::state::ServerState;

/// The comment an idle stream gets (a line starting with `:` is ignored by clients).
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// The response header carrying the run id.
pub(crate) const RUN_ID_HEADER: HeaderName = HeaderName::from_static("loom-run-id");

/// What an open SSE stream holds on to until its client goes away.
#[derive(Debug)]
pub(crate) struct StreamGuards {
    /// Counts the stream as a reader of its run (see [`crate::backend::RunRef::attach`]).
    pub(crate) _attachment: Attachment,
    /// Its place under the concurrent-stream cap.
    pub(crate) _permit: OwnedSemaphorePermit,
}

/// What a stream cut short ends with: one whose reader fell behind the log (its cursor
/// dropped), or one a server in front of workers closed as it shut down (the run goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overtaken {
    /// Nothing: the client resumes from its cursor, through any server, and after a fall
    /// behind is told `410` (Loom's own frames).
    Leave,
    /// An `error` chunk the log does not hold, rendered as the dialect renders errors, so a
    /// client that cannot resume never takes a cut stream for a whole one.
    Fail,
}

/// An SSE response streaming `first` (chunks already read from `feed`), then `feed`'s chunks
/// of run `run_id` until the terminal chunk, each batch rendered by `render`: Loom's own
/// [`frames`], or a dialect's events.
pub(crate) fn response<F>(
    server: &ServerState,
    run_id: &str,
    (first, feed): (Vec<Arc<LoggedChunk>>, Feed),
    guards: StreamGuards,
    overtaken: Overtaken,
    render: F,
) -> Response
where
    F: FnMut(&[Arc<LoggedChunk>]) -> Bytes + Send + 'static,
{
    let state = BodyState {
        run_id: run_id.to_owned(),
        first,
        last: None,
        feed,
        keep_alive: server.config().keep_alive,
        written: Instant::now(),
        overtaken: Some(overtaken),
        metrics: Arc::clone(server.metrics()),
        render,
        _guards: guards,
    };
    let body = futures::stream::unfold(state, |mut state| async move {
        let overtaken = state.overtaken?;
        if !state.first.is_empty() {
            let first = std::mem::take(&mut state.first);
            state.last = first.last().map(|c| (c.seq, c.kind.is_terminal()));
            state.metrics.chunks_sent(first.len());
            let bytes = (state.render)(&first);
            if !bytes.is_empty() {
                state.written = Instant::now();
                return Some((Ok(bytes), state));
            }
        }
        let bytes = loop {
            let quiet = state.keep_alive.saturating_sub(state.written.elapsed());
            match tokio::time::timeout(quiet, state.feed.next()).await {
                Err(_idle) => break Bytes::from_static(KEEP_ALIVE),
                Ok(Ok(Some(chunks))) => {
                    if let Some(c) = chunks.last() {
                        state.last = Some((c.seq, c.kind.is_terminal()));
                    }
                    state.metrics.chunks_sent(chunks.len());
                    let bytes = (state.render)(&chunks);
                    if !bytes.is_empty() {
                        break bytes;
                    }
                }
                // The end of the run, or a server in front of workers shutting down.
                Ok(Ok(None)) => {
                    let ended = state.last.is_some_and(|(_, terminal)| terminal);
                    if ended || overtaken == Overtaken::Leave {
                        return None;
                    }
                    state.overtaken = None;
                    let seq = state.last.map_or(0, |(seq, _)| seq + 1);
                    break (state.render)(&[shutting_down(seq, &state.run_id)]);
                }
                Ok(Err(expired)) => {
                    tracing::debug!(%expired, "reader fell behind the log: disconnecting it");
                    state.metrics.slow_reader_dropped();
                    if overtaken == Overtaken::Leave {
                        return None;
                    }
                    state.overtaken = None;
                    break (state.render)(&[fell_behind(expired)]);
                }
            }
        };
        state.written = Instant::now();
        Some((Ok::<_, Infallible>(bytes), state))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    if let Ok(id) = HeaderValue::from_str(run_id) {
        headers.insert(RUN_ID_HEADER, id);
    }
    response
}

/// The `error` a [`Overtaken::Fail`] stream ends with when it fell behind the log.
fn fell_behind(expired: CursorExpired) -> Arc<LoggedChunk> {
    let seq = expired.cursor.map_or(0, |c| c + 1);
    let error = ActorError::internal(format!(
        "this stream fell behind the run's log, which dropped chunks {seq} to {} before they \
         were sent: what was sent is incomplete (the run goes on; fetch its result)",
        expired.oldest.saturating_sub(1)
    ));
    not_logged(seq, &error)
}

/// The `error` a [`Overtaken::Fail`] stream ends with when the server in front of the run's
/// worker shuts down: the run goes on, another server can hand it on.
fn shutting_down(seq: u64, run_id: &str) -> Arc<LoggedChunk> {
    let error = ActorError::new(
        ErrorCode::Upstream,
        format!(
            "the server is shutting down: this stream ends incomplete; run {run_id} goes on on \
             its worker (rejoin it through another server at GET /v1/runs/{run_id}/stream, \
             before the disconnect grace cancels a run started by a streaming request)"
        ),
    );
    not_logged(seq, &error)
}

/// `error` as a chunk of `seq` the log does not hold.
fn not_logged(seq: u64, error: &ActorError) -> Arc<LoggedChunk> {
    let chunk = StreamChunk::error(seq, error);
    Arc::new(LoggedChunk {
        seq,
        kind: chunk.kind,
        json: chunk.to_json().into(),
        in_log: false,
    })
}

struct BodyState<F> {
    run_id: String,
    /// Chunks read before the response started, sent first.
    first: Vec<Arc<LoggedChunk>>,
    /// The `seq` of the last chunk rendered, and whether it was the terminal one.
    last: Option<(u64, bool)>,
    feed: Feed,
    keep_alive: Duration,
    /// When bytes were last written: the keep-alive is due a `keep_alive` after.
    written: Instant,
    /// `None` once the stream said it was cut short: it ends.
    overtaken: Option<Overtaken>,
    metrics: Arc<Metrics>,
    render: F,
    _guards: StreamGuards,
}

/// Loom's own SSE frames of `chunks` (DESIGN.md §3), in one buffer.
pub(crate) fn frames(chunks: &[Arc<LoggedChunk>]) -> Bytes {
    let size: usize = chunks.iter().map(|c| c.json.len() + 48).sum();
    let mut out = BytesMut::with_capacity(size);
    for chunk in chunks {
        if chunk.in_log {
            out.put_slice(b"id: ");
            out.put_slice(chunk.seq.to_string().as_bytes());
            out.put_slice(b"\n");
        }
        out.put_slice(b"event: ");
        out.put_slice(chunk.kind.as_str().as_bytes());
        out.put_slice(b"\ndata: ");
        out.put_slice(&chunk.json);
        out.put_slice(b"\n\n");
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use loom_core::ChunkType;

    use super::*;

    #[test]
    fn a_frame_is_id_event_data_with_lf_endings() {
        let chunk = Arc::new(LoggedChunk {
            seq: 7,
            kind: ChunkType::Data,
            json: Bytes::from_static(br#"{"type":"data","seq":7,"data":1}"#),
            in_log: true,
        });
        assert_eq!(
            &frames(&[chunk])[..],
            b"id: 7\nevent: data\ndata: {\"type\":\"data\",\"seq\":7,\"data\":1}\n\n"
        );
    }
}
