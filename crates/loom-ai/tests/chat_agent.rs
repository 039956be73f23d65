//! The `chat-agent` actor through `loom_core::Runtime`: start, one data chunk per token,
//! complete with the text, the finish reason and the upstream usage (or null).

mod support;

use std::time::Duration;

use loom_ai::{AiConfig, AiService};
use loom_core::{ChunkType, ErrorCode, Extensions, Registry, Runtime, StreamChunk};
use serde_json::json;
use support::wire::{self, frame, DONE};
use support::{chat_runtime as runtime, run_chat as run, FakeServer, Reply};

#[tokio::test]
async fn tokens_stream_as_data_chunks_and_usage_is_null_when_the_server_sent_none() {
    let server = FakeServer::start(vec![Reply::sse(wire::openai_stream(
        &["Hel", "lo", "!"],
        None,
    ))])
    .await;
    let chunks = run(&runtime(server.service()), json!({"prompt": "hi"})).await;
    assert_eq!(chunks[0].kind, ChunkType::Start);
    let tokens: Vec<&str> = chunks.iter().filter_map(StreamChunk::token).collect();
    assert_eq!(tokens, ["Hel", "lo", "!"]);
    assert_eq!(chunks.len(), 5, "start, three tokens, complete");
    let done = chunks.last().expect("terminal");
    assert_eq!(done.kind, ChunkType::Complete);
    assert_eq!(
        done.data,
        Some(json!({"text": "Hello!", "finish_reason": "stop", "usage": null}))
    );
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.seq, i as u64);
    }
}

#[tokio::test]
async fn the_upstream_usage_is_reported_as_sent() {
    let server =
        FakeServer::start(vec![Reply::sse(wire::openai_stream(&["a"], Some((12, 1))))]).await;
    let chunks = run(&runtime(server.service()), json!({"prompt": "hi"})).await;
    let done = chunks.last().expect("terminal").data.clone().expect("data");
    assert_eq!(
        done["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13})
    );
}

/// The official OpenAI clients may send a message's content as a list of parts: its text
/// parts reach the model as one text; a part of another kind (an image) is `bad_input`, never
/// dropped unseen.
#[tokio::test]
async fn content_as_a_list_of_text_parts_is_taken_and_an_image_part_is_refused() {
    let server = FakeServer::start(vec![Reply::sse(wire::openai_stream(&["a"], None))]).await;
    let parts = json!([{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]);
    let input = json!({"messages": [{"role": "user", "content": parts}]});
    let chunks = run(&runtime(server.service()), input).await;
    assert_eq!(chunks.last().expect("terminal").kind, ChunkType::Complete);
    assert_eq!(
        server.requests()[0].body["messages"][0]["content"],
        "Hello, world"
    );

    let image = json!([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]);
    let input = json!({"messages": [{"role": "user", "content": image}]});
    let chunks = run(&runtime(server.service()), input).await;
    let error = chunks
        .last()
        .and_then(|c| c.error.clone())
        .expect("an error");
    assert_eq!(error.code, loom_core::ErrorCode::BadInput);
    assert!(error.message.contains("image_url"), "{}", error.message);
    assert_eq!(
        server.requests().len(),
        1,
        "nothing sent for the refused one"
    );
}

#[tokio::test]
async fn messages_and_options_reach_the_server() {
    let server = FakeServer::start(vec![Reply::sse(wire::openai_stream(&["a"], None))]).await;
    let input = json!({
        "messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}],
        "prompt": "q2",
        "model": "qwen2.5",
        "system": "terse",
        "temperature": 0.5,
        "max_tokens": 7,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 4,
        "response_format": {"type": "json_object"}
    });
    let chunks = run(&runtime(server.service()), input).await;
    assert_eq!(chunks.last().expect("terminal").kind, ChunkType::Complete);
    let body = &server.requests()[0].body;
    assert_eq!(body["model"], "qwen2.5");
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["max_tokens"], 7);
    // The server's own fields go on as they are (they were dropped without a word).
    assert_eq!(body["top_p"], 0.9);
    assert_eq!(body["stop"], json!(["\n\n"]));
    assert_eq!(body["seed"], 4);
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
}

#[tokio::test]
async fn bad_input_ends_with_bad_input_and_sends_nothing() {
    let server = FakeServer::start(vec![Reply::sse(DONE)]).await;
    let runtime = runtime(server.service());
    for input in [
        json!({}),
        json!({"prompt": 42}),
        json!({"prompt": "  "}),
        json!({"messages": []}),
        json!({"messages": [{"role": "wizard", "content": "x"}]}),
        json!({"prompt": "x", "temperature": "hot"}),
        json!({"messages": [{"role": "user"}]}),
        json!({"messages": [{"role": "tool", "content": "18"}]}),
        json!({"messages": [{"role": "assistant", "content": null}]}),
        json!({"prompt": "x", "tool_choice": "sometimes"}),
        json!({"prompt": "x", "tools": [{"type": "function"}]}),
        // A misspelt field is refused, not run without the limit it meant.
        json!({"prompt": "x", "max_token": 5}),
        json!({"prompt": "x", "stream": false}),
    ] {
        let chunks = run(&runtime, input.clone()).await;
        let last = chunks.last().expect("terminal");
        assert_eq!(last.kind, ChunkType::Error, "{input}");
        assert_eq!(
            last.error.as_ref().expect("error").code,
            ErrorCode::BadInput,
            "{input}"
        );
    }
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn tool_call_deltas_are_data_chunks_of_their_own() {
    let body = [
        frame(&wire::role_chunk()),
        frame(&wire::tool_chunk(0, Some("call_9"), Some("lookup"), "")),
        frame(&wire::tool_chunk(0, None, None, "{}")),
        frame(&wire::finish_chunk("tool_calls")),
        DONE.to_owned(),
    ]
    .concat();
    let server = FakeServer::start(vec![Reply::sse(body)]).await;
    let chunks = run(&runtime(server.service()), json!({"prompt": "hi"})).await;
    assert_eq!(
        chunks[1].data,
        Some(json!({"tool_call": {"index": 0, "id": "call_9", "name": "lookup", "arguments": ""}}))
    );
    let done = chunks.last().expect("terminal").data.clone().expect("data");
    assert_eq!(done["finish_reason"], "tool_calls");
    assert_eq!(
        done["tool_calls"],
        json!([{"id": "call_9", "name": "lookup", "arguments": "{}"}])
    );
}

#[tokio::test]
async fn an_upstream_failure_after_tokens_ends_with_upstream_after_the_tokens() {
    let body = [
        frame(&wire::text_chunk("part")),
        frame(&wire::text_chunk("ial")),
    ]
    .concat();
    let server = FakeServer::start(vec![Reply::sse(body)]).await;
    let chunks = run(&runtime(server.service()), json!({"prompt": "hi"})).await;
    let tokens: Vec<&str> = chunks.iter().filter_map(StreamChunk::token).collect();
    assert_eq!(tokens, ["part", "ial"]);
    let last = chunks.last().expect("terminal");
    assert_eq!(last.kind, ChunkType::Error);
    assert_eq!(
        last.error.as_ref().expect("error").code,
        ErrorCode::Upstream
    );
}

#[tokio::test]
async fn an_http_error_ends_the_run_with_the_servers_message() {
    let server = FakeServer::start(vec![Reply::error(400, "max_tokens is too large")]).await;
    let chunks = run(&runtime(server.service()), json!({"prompt": "hi"})).await;
    let error = chunks
        .last()
        .expect("terminal")
        .error
        .clone()
        .expect("error");
    assert_eq!(error.code, ErrorCode::BadInput);
    assert!(error.message.contains("max_tokens is too large"));
}

#[tokio::test]
async fn the_offline_provider_runs_chat_agent_with_honest_usage() {
    let ai =
        AiService::new(AiConfig::offline().with_offline_token_delay(Duration::ZERO)).expect("ai");
    let chunks = run(&runtime(ai), json!({"prompt": "Write a story"})).await;
    let tokens = chunks.iter().filter_map(StreamChunk::token).count() as u64;
    let done = chunks.last().expect("terminal").data.clone().expect("data");
    assert_eq!(done["usage"]["completion_tokens"], tokens);
    assert!(done["text"]
        .as_str()
        .expect("text")
        .starts_with(chunks[1].token().expect("token")));
}

#[tokio::test]
async fn without_an_ai_service_in_the_extensions_the_run_fails_with_internal() {
    let mut registry = Registry::new();
    loom_ai::register(&mut registry);
    let runtime = Runtime::new(registry, Extensions::new());
    let chunks = run(&runtime, json!({"prompt": "hi"})).await;
    assert_eq!(chunks.len(), 2, "start, error: {chunks:?}");
    let error = chunks[1].error.clone().expect("error");
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(
        error.message.contains("AiService") && error.message.contains("Extensions"),
        "{}",
        error.message
    );
}

#[test]
fn chat_agent_is_registered_as_a_streaming_actor() {
    let mut registry = Registry::new();
    loom_ai::register(&mut registry);
    let actor = registry.get("chat-agent").expect("registered");
    assert!(actor.streams());
    assert!(!actor.description().is_empty());
}
