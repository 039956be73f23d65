//! Server-Sent Events from a run log: the frames of DESIGN.md §3, byte for byte.
//!
//! Each chunk is `id: <seq>\nevent: <type>\ndata: <chunk json>\n\n`; an idle stream gets a
//! `: keep-alive\n\n` comment every keep-alive interval. The body is polled only when the
//! socket takes more, so a back-pressured stream gets no keep-alives and costs only its
//! [`Feed`]'s cursor. A reader whose cursor the log dropped is disconnected without a
//! terminal; its client resumes and gets `410 cursor_expired`. A chunk the log does not hold
//! (a verdict the server made when it lost Redis) has no `id:` line.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::OwnedSemaphorePermit;

use crate::backend::{Attachment, Feed};
use crate::metrics::Metrics;
use crate::runlog::LoggedChunk;
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

/// An SSE response streaming `feed`'s chunks of run `run_id` until the terminal chunk, each
/// batch rendered by `render`: Loom's own [`frames`], or a dialect's events.
pub(crate) fn response<F>(
    server: &ServerState,
    run_id: &str,
    feed: Feed,
    guards: StreamGuards,
    render: F,
) -> Response
where
    F: FnMut(&[Arc<LoggedChunk>]) -> Bytes + Send + 'static,
{
    let state = BodyState {
        feed,
        keep_alive: server.config().keep_alive,
        metrics: Arc::clone(server.metrics()),
        render,
        _guards: guards,
    };
    let body = futures::stream::unfold(state, |mut state| async move {
        let bytes = match tokio::time::timeout(state.keep_alive, state.feed.next()).await {
            Err(_idle) => Bytes::from_static(KEEP_ALIVE),
            Ok(Ok(Some(chunks))) => {
                state.metrics.chunks_sent(chunks.len());
                (state.render)(&chunks)
            }
            Ok(Ok(None)) => return None,
            Ok(Err(expired)) => {
                tracing::debug!(%expired, "reader fell behind the log: disconnecting it");
                state.metrics.slow_reader_dropped();
                return None;
            }
        };
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

struct BodyState<F> {
    feed: Feed,
    keep_alive: Duration,
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
