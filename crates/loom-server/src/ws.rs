//! WebSocket `GET /v1/actors/{type}/ws`: one run per socket, chunks as JSON text frames.
//!
//! The client sends `{"action":"start","input":…,"timeout":"30s"}`, then may send
//! `{"action":"cancel"}` (the run ends `error/cancelled`, which is sent before the socket
//! closes). A close frame from the client cancels the run at once; a connection that just
//! drops is a direct stream's disconnect (cancelled after the grace unless a reader rejoins at
//! `GET /v1/runs/{id}/stream`). The server pings an idle socket every keep-alive interval.
//! A message the server cannot take gets a `{"error":{"code","message"}}` text frame; one
//! over the body limit closes the socket. A socket
//! holds one of the server's streams from its upgrade, so one that sends no `start` within two
//! keep-alive intervals gets an error frame and is closed, and one that takes no frame for as
//! long (it stopped reading) is dropped: a client gone silent cannot keep it.
//!
//! The close frame says why: `1000` after the terminal chunk, `1001` when a server in front
//! of workers shuts down (the run goes on: rejoin it elsewhere), `1008` for a request the
//! server refuses (an error frame comes first), `1011` for a failure of the server's, and
//! `4000` when the reader fell behind the run's log (it rejoins with a cursor at
//! `GET /v1/runs/{id}/stream`).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

use crate::backend::{Attachment, Feed, RunRef};
use crate::error::ApiError;
use crate::extract::{input_or_empty, parse_timeout, LoomPath, TraceParent};
use crate::runlog::RunTarget;
use crate::runs::StartRequest;
use crate::state::ServerState;
use crate::store::DisconnectPolicy;

/// What a client sends. `Cancel` is a struct variant, not a unit one: serde lets a unit
/// variant of a tagged enum through with any other fields, and `{"action":"cancel",
/// "run_id":…}` must be refused, not cancel this socket's run.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Start {
        input: Option<Value>,
        /// As `POST /v1/runs` takes it: `"30s"`, or a number of seconds.
        #[serde(default, deserialize_with = "crate::extract::duration_text")]
        timeout: Option<String>,
    },
    Cancel {},
}

/// What a client's frame asks: `None` for the control frames (pings, pongs), which need no
/// answer; an error for a text frame that is not a [`ClientMessage`] and for a binary frame.
fn read(message: &Message) -> Option<Result<ClientMessage, ApiError>> {
    match message {
        Message::Text(text) => Some(
            serde_json::from_str(text.as_str())
                .map_err(|e| ApiError::BadRequest(format!("not a Loom message: {e}"))),
        ),
        Message::Binary(_) => Some(Err(ApiError::BadRequest(
            "a binary frame: Loom's messages are JSON text frames".into(),
        ))),
        _ => None,
    }
}

/// The upgrade: what a `POST` starting the run would be refused for (an unknown actor → 404,
/// no live worker serving it → 503) and a full stream cap → 429, before the handshake.
pub(crate) async fn actor_ws(
    State(state): State<ServerState>,
    LoomPath(actor): LoomPath,
    TraceParent(traceparent): TraceParent,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    state
        .runs()
        .check_startable(&RunTarget::named(&actor))
        .await?;
    let permit = state.stream_permit()?;
    // A message is held whole to be parsed: it is bound like a request body.
    let limit = state.config().body_limit;
    let upgrade = upgrade.max_message_size(limit).max_frame_size(limit);
    Ok(upgrade.on_upgrade(move |socket| session(socket, state, actor, traceparent, permit)))
}

fn error_frame(err: &ApiError) -> Message {
    let body = json!({ "error": { "code": err.code(), "message": err.to_string() } });
    Message::Text(body.to_string().into())
}

/// The close code of a socket that ends with `err`.
fn close_code(err: &ApiError) -> u16 {
    if err.status().is_server_error() {
        close_code::ERROR
    } else {
        close_code::POLICY
    }
}

/// The close code of a reader that fell behind the run's log.
const FELL_BEHIND: u16 = 4000;

/// A socket whose sends give up when the client takes no frame for `patience`.
struct Socket {
    socket: WebSocket,
    patience: Duration,
}

/// What became of a frame given to [`Socket::offer`].
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// The client's connection took it.
    Taken,
    /// The connection is gone.
    Gone,
    /// The client took no frame for the socket's patience: it stopped reading.
    Stalled,
}

impl Socket {
    /// Sends `message`, waiting at most the socket's patience for the client to take it.
    async fn offer(&mut self, message: Message) -> Sent {
        match tokio::time::timeout(self.patience, self.socket.send(message)).await {
            Ok(Ok(())) => Sent::Taken,
            Ok(Err(_)) => Sent::Gone,
            Err(_) => Sent::Stalled,
        }
    }

    /// Sends `message`; `false` when the client is gone or stopped reading.
    async fn send(&mut self, message: Message) -> bool {
        self.offer(message).await == Sent::Taken
    }

    /// Sends `err` as an error frame (see the module docs).
    async fn error(&mut self, err: &ApiError) -> bool {
        self.send(error_frame(err)).await
    }

    /// Answers the client's close frame (RFC 6455 §5.5.1: the close handshake): the reply
    /// the socket queued when the frame came is sent before the connection goes.
    async fn closed_by_client(&mut self) {
        let _ =
            tokio::time::timeout(self.patience, futures::SinkExt::close(&mut self.socket)).await;
    }

    /// Closes with `code` and `reason`.
    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = self.send(Message::Close(Some(frame))).await;
    }

    /// Reading a message failed: closes with why, if the socket still takes a frame — `1009`
    /// for a message over the limit (the run, if any, is then cancelled after the disconnect
    /// grace, as for a client gone), `1002` for anything else.
    async fn broken(&mut self, err: &axum::Error) {
        let why = err.to_string();
        // tungstenite's own words for a message or frame over the limit.
        let code = if why.contains("too long") || why.contains("too big") {
            close_code::SIZE
        } else {
            close_code::PROTOCOL
        };
        // A close frame's reason holds at most 123 bytes.
        let mut end = why.len().min(123);
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        let frame = CloseFrame {
            code,
            reason: why[..end].to_owned().into(),
        };
        let _ = self.send(Message::Close(Some(frame))).await;
    }
}

async fn session(
    socket: WebSocket,
    state: ServerState,
    actor: String,
    traceparent: Option<String>,
    _permit: OwnedSemaphorePermit,
) {
    let wait = state.config().keep_alive.saturating_mul(2);
    let mut socket = Socket {
        socket,
        patience: wait,
    };
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let (input, timeout) = loop {
        let message = tokio::select! {
            // A message that is there wins over the deadline, however late this task runs.
            biased;
            message = socket.socket.recv() => message,
            () = &mut deadline => {
                let err = ApiError::BadRequest(format!("no start message within {wait:?}"));
                socket.error(&err).await;
                socket.close(close_code::POLICY, "no start message").await;
                return;
            }
        };
        let refused = match message {
            Some(Ok(Message::Close(_))) => return socket.closed_by_client().await,
            None => return,
            Some(Err(err)) => return socket.broken(&err).await,
            Some(Ok(message)) => match read(&message) {
                Some(Ok(ClientMessage::Start { input, timeout })) => break (input, timeout),
                Some(Ok(ClientMessage::Cancel {})) => Some(ApiError::BadRequest(
                    "no run to cancel: this socket's run has not started".into(),
                )),
                Some(Err(err)) => Some(err),
                None => None,
            },
        };
        if let Some(err) = refused {
            if !socket.error(&err).await {
                return;
            }
        }
    };
    let (run, _attachment, mut feed) = match open(&state, actor, input, timeout, traceparent).await
    {
        Ok(opened) => opened,
        Err(err) => {
            socket.error(&err).await;
            socket
                .close(close_code(&err), "the run could not start")
                .await;
            return;
        }
    };
    let keep_alive = state.config().keep_alive;
    let mut ended = false;
    loop {
        tokio::select! {
            batch = feed.next() => match batch {
                Ok(Some(chunks)) => {
                    for chunk in chunks {
                        ended = chunk.kind.is_terminal();
                        let Ok(text) = String::from_utf8(chunk.json.to_vec()) else { return };
                        match socket.offer(Message::Text(text.into())).await {
                            Sent::Taken => state.metrics().chunks_sent(1),
                            Sent::Gone => return,
                            // It cannot take a close frame either: the connection just goes.
                            Sent::Stalled => return state.metrics().slow_reader_dropped(),
                        }
                    }
                }
                Ok(None) if ended => {
                    socket.close(close_code::NORMAL, "the run ended").await;
                    return;
                }
                // No terminal: the server is shutting down, the run goes on on its worker.
                Ok(None) => {
                    socket.close(close_code::AWAY, "the server is going away: rejoin the run").await;
                    return;
                }
                Err(_) => {
                    state.metrics().slow_reader_dropped();
                    socket.close(FELL_BEHIND, "fell behind the run's log: rejoin with a cursor").await;
                    return;
                }
            },
            message = socket.socket.recv() => match message {
                Some(Ok(Message::Close(_))) => {
                    if let Err(err) = run.cancel().await {
                        tracing::warn!(run_id = run.id(), error = %err, "could not cancel on close");
                    }
                    socket.closed_by_client().await;
                    return;
                }
                Some(Ok(message)) => {
                    let refused = match read(&message) {
                        Some(Ok(ClientMessage::Cancel {})) => run.cancel().await.err(),
                        Some(Ok(ClientMessage::Start { .. })) => {
                            Some(ApiError::BadRequest("this socket's run has started".into()))
                        }
                        Some(Err(err)) => Some(err),
                        None => None,
                    };
                    if let Some(err) = refused {
                        if !socket.error(&err).await {
                            return;
                        }
                    }
                }
                Some(Err(err)) => return socket.broken(&err).await,
                None => return,
            },
            _ = tokio::time::sleep(keep_alive) => match socket.offer(Message::Ping(Bytes::new())).await {
                Sent::Taken => {}
                Sent::Gone => return,
                Sent::Stalled => return state.metrics().slow_reader_dropped(),
            },
        }
    }
}

/// Starts the socket's run and opens it from its first chunk.
async fn open(
    state: &ServerState,
    actor: String,
    input: Option<Value>,
    timeout: Option<String>,
    traceparent: Option<String>,
) -> Result<(RunRef, Attachment, Feed), ApiError> {
    let run = state
        .runs()
        .start(StartRequest {
            target: RunTarget::named(&actor),
            input: input_or_empty(input),
            timeout: parse_timeout(timeout.as_deref())?,
            policy: DisconnectPolicy::CancelAfter(state.config().disconnect_grace),
            traceparent,
        })
        .await?;
    let attachment = run.attach().await?;
    let feed = run
        .open(None)
        .await?
        .ok_or_else(|| ApiError::BadRequest("the run has no chunks to send".into()))?;
    Ok((run, attachment, feed))
}
