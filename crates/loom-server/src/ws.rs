//! WebSocket `GET /v1/actors/{type}/ws`: one run per socket, chunks as JSON text frames.
//!
//! The client sends `{"action":"start","input":…,"timeout":"30s"}`, then may send
//! `{"action":"cancel"}` (the run ends `error/cancelled`, which is sent before the socket
//! closes). A close frame from the client cancels the run at once; a connection that just
//! drops is a direct stream's disconnect (cancelled after the grace unless a reader rejoins at
//! `GET /v1/runs/{id}/stream`). The server pings an idle socket every keep-alive interval.
//! A message the server cannot take gets a `{"error":{"code","message"}}` text frame. A socket
//! holds one of the server's streams from its upgrade, so one that sends no `start` within two
//! keep-alive intervals gets an error frame and is closed: a client gone silent cannot keep
//! it.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
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

/// What a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Start {
        input: Option<Value>,
        timeout: Option<String>,
    },
    Cancel,
}

/// The upgrade: unknown actor → 404 and a full stream cap → 429 before the handshake.
pub(crate) async fn actor_ws(
    State(state): State<ServerState>,
    LoomPath(actor): LoomPath,
    TraceParent(traceparent): TraceParent,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !state.runs().knows(&actor).await? {
        return Err(ApiError::NotFound(format!("unknown actor type '{actor}'")));
    }
    let permit = state.stream_permit()?;
    Ok(upgrade.on_upgrade(move |socket| session(socket, state, actor, traceparent, permit)))
}

fn error_frame(err: &ApiError) -> Message {
    let body = json!({ "error": { "code": err.code(), "message": err.to_string() } });
    Message::Text(body.to_string().into())
}

async fn session(
    mut socket: WebSocket,
    state: ServerState,
    actor: String,
    traceparent: Option<String>,
    _permit: OwnedSemaphorePermit,
) {
    let wait = state.config().keep_alive.saturating_mul(2);
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let (input, timeout) = loop {
        let message = tokio::select! {
            message = socket.recv() => message,
            () = &mut deadline => {
                let err = ApiError::BadRequest(format!("no start message within {wait:?}"));
                let _ = socket.send(error_frame(&err)).await;
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        };
        match message {
            Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                Ok(ClientMessage::Start { input, timeout }) => break (input, timeout),
                Ok(ClientMessage::Cancel) => continue,
                Err(e) => {
                    let err = ApiError::BadRequest(format!("not a Loom message: {e}"));
                    let _ = socket.send(error_frame(&err)).await;
                }
            },
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            Some(Ok(_)) => {}
        }
    };
    let (run, _attachment, mut feed) = match open(&state, actor, input, timeout, traceparent).await
    {
        Ok(opened) => opened,
        Err(err) => {
            let _ = socket.send(error_frame(&err)).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    let keep_alive = state.config().keep_alive;
    loop {
        tokio::select! {
            batch = feed.next() => match batch {
                Ok(Some(chunks)) => {
                    for chunk in chunks {
                        let Ok(text) = String::from_utf8(chunk.json.to_vec()) else { return };
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                }
                // The terminal chunk is sent: a normal close. An overtaken reader is closed
                // too (it rejoins with a cursor at `GET /v1/runs/{id}/stream`).
                Ok(None) | Err(_) => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                    Ok(ClientMessage::Cancel) => {
                        if let Err(err) = run.cancel().await {
                            let _ = socket.send(error_frame(&err)).await;
                        }
                    }
                    Ok(ClientMessage::Start { .. }) => {
                        let err = ApiError::BadRequest("this socket's run has started".into());
                        let _ = socket.send(error_frame(&err)).await;
                    }
                    Err(e) => {
                        let err = ApiError::BadRequest(format!("not a Loom message: {e}"));
                        let _ = socket.send(error_frame(&err)).await;
                    }
                },
                Some(Ok(Message::Close(_))) => {
                    if let Err(err) = run.cancel().await {
                        tracing::warn!(run_id = run.id(), error = %err, "could not cancel on close");
                    }
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            _ = tokio::time::sleep(keep_alive) => {
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
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
            target: RunTarget::Actor(actor),
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
