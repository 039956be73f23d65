//! Cancellation: dropping a token stream, or cancelling a `chat-agent` run, hangs up on the
//! server at once — the fake server sees the disconnect.

mod support;

use futures::StreamExt;
use loom_ai::{CompletionRequest, TokenEvent};
use loom_core::{ChunkType, ErrorCode, RunOptions};
use serde_json::json;
use support::wire::{self, frame};
use support::{within, FakeServer, Reply};

fn endless_reply() -> Reply {
    Reply::hold_open(vec![
        frame(&wire::role_chunk()),
        frame(&wire::text_chunk("one")),
        frame(&wire::text_chunk(" two")),
    ])
}

#[tokio::test]
async fn dropping_the_token_stream_aborts_the_http_request() {
    let server = FakeServer::start(vec![endless_reply()]).await;
    let mut stream = server
        .service()
        .stream_completion(CompletionRequest::prompt("x"));
    let first = within(stream.next()).await;
    assert!(matches!(first, Some(Ok(TokenEvent::Text(ref t))) if t == "one"));
    assert_eq!(server.hang_ups(), 0);
    drop(stream);
    within(server.hung_up()).await;
    assert_eq!(server.hang_ups(), 1);
}

#[tokio::test]
async fn cancelling_a_chat_agent_run_aborts_the_http_request() {
    let server = FakeServer::start(vec![endless_reply()]).await;
    let mut chunks = chat_agent_run(&server);
    assert_eq!(
        within(chunks.next()).await.expect("start").kind,
        ChunkType::Start
    );
    let token = within(chunks.next()).await.expect("token");
    assert_eq!(token.token(), Some("one"));
    chunks.cancel();
    // The run keeps its contract: tokens may still come, then exactly one error/cancelled.
    let mut last = None;
    while let Some(chunk) = within(chunks.next()).await {
        last = Some(chunk);
    }
    let last = last.expect("a terminal chunk");
    assert_eq!(last.kind, ChunkType::Error);
    assert_eq!(last.error.expect("error").code, ErrorCode::Cancelled);
    within(server.hung_up()).await;
    assert_eq!(server.hang_ups(), 1);
}

#[tokio::test]
async fn dropping_a_chat_agent_run_aborts_the_http_request() {
    let server = FakeServer::start(vec![endless_reply()]).await;
    let mut chunks = chat_agent_run(&server);
    within(chunks.next()).await.expect("start");
    within(chunks.next()).await.expect("token");
    drop(chunks);
    within(server.hung_up()).await;
}

/// Starts a `chat-agent` run against `server` through the local runtime.
fn chat_agent_run(server: &FakeServer) -> loom_core::ChunkStream {
    support::chat_runtime(server.service())
        .stream("chat-agent", json!({"prompt": "go"}), RunOptions::default())
        .expect("run")
}
