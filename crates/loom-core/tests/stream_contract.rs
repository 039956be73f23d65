//! The stream contract: start, gapless seq, exactly one terminal chunk, whatever the actor does.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use loom_core::{
    async_trait, parse_input, Actor, ActorContext, ActorError, Attempt, ChunkStream, ChunkType,
    ErrorCode, Output, RunOptions, StreamChunk,
};
use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn streaming_actor_yields_start_gapless_seq_and_one_complete() {
    let input = json!({ "count": 250, "batch_size": 100, "delay_ms": 0 });
    let stream = runtime()
        .stream("batch", input, RunOptions::default())
        .expect("batch is built in");
    let chunks = collect(stream).await;
    assert_contract(&chunks);
    let progress: Vec<_> = chunks.iter().filter_map(|c| c.progress.clone()).collect();
    assert_eq!(progress.len(), 3);
    assert_eq!((progress[2].current, progress[2].total), (3, Some(3)));
    let last = chunks.last().expect("a terminal chunk");
    assert_eq!(last.kind, ChunkType::Complete);
    assert_eq!(last.data, Some(json!({ "batches": 3, "processed": 250 })));
    let first_batch = &chunks
        .iter()
        .find(|c| c.kind == ChunkType::Data)
        .expect("data")
        .data;
    assert_eq!(
        first_batch.as_ref().map(|d| d["results"][2].clone()),
        Some(json!(9))
    );
    let last_batch = chunks
        .iter()
        .rfind(|c| c.kind == ChunkType::Data)
        .and_then(|c| c.data.as_ref())
        .expect("data");
    let results = last_batch["results"].as_array().expect("results");
    assert_eq!((results.len(), &results[0]), (50, &json!(201 * 201)));
}

#[tokio::test]
async fn execute_only_actor_streams_start_then_one_complete() {
    let input = json!({ "hello": "world" });
    let stream = runtime()
        .stream("echo", input.clone(), RunOptions::default())
        .expect("echo");
    let chunks = collect(stream).await;
    assert_contract(&chunks);
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[1].kind, ChunkType::Complete);
    assert_eq!(chunks[1].data, Some(input));
}

#[tokio::test]
async fn unknown_actor_type_is_not_found() {
    let err = runtime()
        .stream("nope", Value::Null, RunOptions::default())
        .expect_err("unknown");
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(err.to_string().contains("nope"));
}

#[tokio::test]
async fn an_actor_error_ends_the_stream_with_one_error_chunk() {
    let actor = fn_actor("failing", |_, _| {
        async_stream::try_stream! {
            yield Output::data(1);
            Err(failed("disk full"))?;
            yield Output::data(2);
        }
    });
    let chunks = collect(stream_of(actor, RunOptions::default())).await;
    assert_contract(&chunks);
    assert_eq!(chunks.len(), 3, "start, data, error: {chunks:?}");
    let error = chunks[2].error.as_ref().expect("an error payload");
    assert_eq!(error.code, ErrorCode::ActorFailed);
    assert_eq!(error.message, "disk full");
}

#[tokio::test]
async fn a_panicking_actor_ends_with_an_internal_error_chunk() {
    let actor = fn_actor("panicking", |_, _| {
        async_stream::try_stream! {
            yield Output::data(1);
            if true {
                panic!("boom");
            }
            yield Output::complete(Value::Null);
        }
    });
    let chunks = collect(stream_of(actor, RunOptions::default())).await;
    assert_contract(&chunks);
    let error = chunks
        .last()
        .and_then(|c| c.error.clone())
        .expect("an error chunk");
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(error.message.contains("boom"), "{}", error.message);
}

/// An actor that panics in `stream()` itself, before it has made its stream (reading its
/// input, say), alone and as a team's member: the run ends with an `error` chunk all the same.
#[tokio::test]
async fn an_actor_that_panics_while_making_its_stream_ends_with_an_internal_error_chunk() {
    fn hasty() -> impl Actor {
        fn_actor("hasty", |input: Value, _| {
            let n = input["n"].as_u64().expect("an input with n");
            async_stream::try_stream! {
                yield Output::complete(json!(n));
            }
        })
    }
    let alone = collect(stream_of(hasty(), RunOptions::default())).await;
    let team = collect(stream_of(
        loom_core::Team::new("t", "").member(hasty()),
        RunOptions::default(),
    ))
    .await;
    for (chunks, prefix) in [(alone, ""), (team, "team member 'hasty' failed: ")] {
        assert_contract(&chunks);
        let error = chunks
            .last()
            .and_then(|c| c.error.clone())
            .expect("an error chunk");
        assert_eq!(error.code, ErrorCode::Internal);
        assert!(
            error.message.starts_with(prefix)
                && error
                    .message
                    .contains("the actor panicked: an input with n"),
            "{}",
            error.message
        );
    }
}

#[tokio::test]
async fn a_stream_that_ends_without_complete_ends_with_an_error() {
    let actor = fn_actor("forgetful", |_, _| {
        async_stream::try_stream! {
            yield Output::data(1);
        }
    });
    let chunks = collect(stream_of(actor, RunOptions::default())).await;
    assert_contract(&chunks);
    assert_eq!(chunks.last().map(|c| c.kind), Some(ChunkType::Error));
}

#[tokio::test]
async fn nothing_comes_after_complete() {
    let actor = fn_actor("chatty", |_, _| {
        async_stream::try_stream! {
            yield Output::complete(1);
            yield Output::data("after the end");
            yield Output::complete(2);
        }
    });
    let mut stream = stream_of(actor, RunOptions::default());
    let chunks: Vec<_> = (&mut stream).collect().await;
    assert_contract(&chunks);
    assert_eq!(chunks[1].data, Some(json!(1)));
    assert!(stream.next().await.is_none(), "the stream stays ended");
}

#[tokio::test(start_paused = true)]
async fn a_run_past_its_deadline_ends_with_timeout() {
    let (hanger, dropped) = Hanger::new("slow", 1);
    let options = RunOptions {
        timeout: Some(Duration::from_secs(5)),
        ..RunOptions::default()
    };
    let chunks = collect(stream_of(hanger, options)).await;
    assert_contract(&chunks);
    let error = chunks
        .last()
        .and_then(|c| c.error.clone())
        .expect("an error chunk");
    assert_eq!(error.code, ErrorCode::Timeout);
    assert!(error.retryable);
    tokio::time::timeout(LIMIT, dropped)
        .await
        .expect("in time")
        .expect("the actor was dropped");
}

#[tokio::test]
async fn a_timeout_too_long_to_represent_is_no_deadline() {
    let actor = fn_actor("patient", |_, _| {
        async_stream::try_stream! {
            // Pending once, so the run arms its deadline's timer.
            tokio::time::sleep(Duration::from_millis(1)).await;
            yield Output::complete(json!("done"));
        }
    });
    let options = RunOptions {
        timeout: Some(Duration::MAX),
        ..RunOptions::default()
    };
    let chunks = tokio::time::timeout(LIMIT, collect(stream_of(actor, options)))
        .await
        .expect("in time");
    assert_contract(&chunks);
    assert_eq!(chunks.last().map(|c| c.kind), Some(ChunkType::Complete));
}

#[tokio::test]
async fn a_busy_actor_that_never_awaits_is_stopped_at_its_deadline() {
    let actor = fn_actor("busy", |_, _| {
        async_stream::try_stream! {
            loop {
                yield Output::data(0);
            }
        }
    });
    let options = RunOptions {
        timeout: Some(Duration::from_millis(50)),
        ..RunOptions::default()
    };
    let chunks = collect(stream_of(actor, options)).await;
    assert_contract(&chunks);
    assert_eq!(
        chunks.last().and_then(|c| c.error.as_ref()).map(|e| e.code),
        Some(ErrorCode::Timeout)
    );
}

#[tokio::test]
async fn start_chunk_names_run_and_actor_and_a_later_attempt_continues_the_seq() {
    let options = RunOptions {
        run_id: Some("run-1".into()),
        ..RunOptions::default()
    };
    let stream = runtime()
        .stream_attempt("echo", json!(1), options, Attempt::new(2, 7))
        .expect("echo");
    assert_eq!(stream.run_id(), "run-1");
    let chunks = collect(stream).await;
    assert_eq!(
        chunks[0].data,
        Some(json!({ "run_id": "run-1", "actor": "echo" }))
    );
    assert_eq!(chunks[0].attempt, Some(2));
    assert_eq!((chunks[0].seq, chunks[1].seq), (7, 8));
}

struct Neither;

#[async_trait]
impl Actor for Neither {
    fn name(&self) -> &str {
        "neither"
    }
}

#[tokio::test]
async fn an_actor_that_implements_neither_method_fails_loudly() {
    let chunks = collect(stream_of(Neither, RunOptions::default())).await;
    assert_contract(&chunks);
    let error = chunks
        .last()
        .and_then(|c| c.error.clone())
        .expect("an error chunk");
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(error.message.contains("neither"));
}

#[test]
fn parse_input_maps_serde_errors_to_bad_input() {
    #[derive(serde::Deserialize, Debug)]
    struct Input {
        #[allow(dead_code)]
        prompt: String,
    }
    let err = parse_input::<Input>(json!({ "prompt": 3 })).expect_err("a number is no prompt");
    assert_eq!(err.code(), ErrorCode::BadInput);
    assert!(err.message().contains("invalid type"), "{}", err.message());
}

#[tokio::test]
async fn bad_batch_input_ends_with_bad_input() {
    // A batch is one `data` chunk: one of a million items would be a chunk of megabytes.
    for input in [json!({ "batch_size": 0 }), json!({ "batch_size": 10_001 })] {
        let stream = runtime()
            .stream("batch", input.clone(), RunOptions::default())
            .expect("batch");
        let chunks = collect(stream).await;
        assert_contract(&chunks);
        assert_eq!(
            chunks.last().and_then(|c| c.error.as_ref()).map(|e| e.code),
            Some(ErrorCode::BadInput),
            "{input}"
        );
    }
}

#[test]
fn chunks_serialise_to_the_wire_format_and_back() {
    let lines = [
        r#"{"type":"start","seq":0,"data":{"run_id":"r","actor":"a"}}"#,
        r#"{"type":"progress","seq":3,"progress":{"current":3,"total":10,"message":"batch 3"},"actor":"researcher"}"#,
        r#"{"type":"data","seq":4,"data":{"token":" upon"}}"#,
        r#"{"type":"complete","seq":9,"data":{"text":"Once upon a time.","usage":null}}"#,
        r#"{"type":"error","seq":9,"error":{"code":"worker_lost","message":"gone","retryable":true}}"#,
        r#"{"type":"progress","seq":2,"progress":{"current":1},"step":"research","event":"action-start"}"#,
        r#"{"type":"start","seq":5,"attempt":2}"#,
    ];
    for line in lines {
        let chunk: StreamChunk = serde_json::from_str(line).expect("valid chunk JSON");
        assert_eq!(chunk.to_json(), line, "round trip keeps the exact JSON");
    }
    let token: StreamChunk = serde_json::from_str(lines[2]).expect("valid");
    assert_eq!(token.token(), Some(" upon"));
}

#[test]
fn error_codes_are_snake_case_on_the_wire() {
    let codes = [
        (ErrorCode::Cancelled, "cancelled"),
        (ErrorCode::Timeout, "timeout"),
        (ErrorCode::ActorFailed, "actor_failed"),
        (ErrorCode::WorkerLost, "worker_lost"),
        (ErrorCode::BadInput, "bad_input"),
        (ErrorCode::NotFound, "not_found"),
        (ErrorCode::Upstream, "upstream"),
        (ErrorCode::Internal, "internal"),
    ];
    for (code, wire) in codes {
        assert_eq!(serde_json::to_value(code).expect("serialises"), json!(wire));
        assert_eq!(code.as_str(), wire);
    }
    assert!(ErrorCode::Upstream.is_retryable());
    assert!(!ErrorCode::BadInput.is_retryable());
}

#[test]
fn actors_are_object_safe_and_streams_are_send_static() {
    fn send_static<T: Send + 'static>() {}
    send_static::<ChunkStream>();
    send_static::<Arc<dyn Actor>>();
    let _: Arc<dyn Actor> = Arc::new(Neither);
    let _ = ActorContext::detached;
    let _: fn(ActorError) -> ErrorCode = |e| e.code();
}
