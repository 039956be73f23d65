//! The public surface an actor author meets first: closure actors, the `stream`/`run` verb
//! pair, registering by value, and attempts that continue a stream.

mod support;

use std::sync::Arc;

use loom_core::{
    actor_fn, stream, try_stream, Actor, ActorError, Attempt, ChunkType, ErrorCode, Invoker,
    Output, Registry, RunOptions, Runtime,
};
use serde_json::{json, Value};
use support::*;

fn runtime_with(actor: impl Actor) -> Runtime {
    let mut registry = Registry::new();
    registry.register(actor);
    Runtime::new(registry, Default::default())
}

#[tokio::test]
async fn a_closure_actor_streams_what_its_generator_yields() {
    let countdown = actor_fn("countdown", |input: Value, _ctx| {
        try_stream! {
            let from = input["from"].as_u64().unwrap_or(3);
            for n in (1..=from).rev() {
                yield Output::progress(from + 1 - n, Some(from), "tick");
            }
            yield Output::complete(json!("liftoff"));
        }
    })
    .with_description("counts down");
    assert!(countdown.streams());
    assert_eq!(countdown.description(), "counts down");
    let runtime = runtime_with(countdown);
    let chunks = collect(
        runtime
            .stream("countdown", json!({ "from": 2 }), RunOptions::default())
            .expect("registered"),
    )
    .await;
    assert_contract(&chunks);
    let kinds: Vec<_> = chunks.iter().map(|c| c.kind).collect();
    use ChunkType::*;
    assert_eq!(kinds, [Start, Progress, Progress, Complete]);
    let progress = chunks[2].progress.as_ref().expect("progress");
    assert_eq!((progress.current, progress.total), (2, Some(2)));
    assert_eq!(progress.message.as_deref(), Some("tick"));
    assert_eq!(
        chunks[0].data.as_ref().expect("start data")["actor"],
        "countdown"
    );
}

#[tokio::test]
async fn the_question_mark_in_a_closure_actor_ends_the_run_with_that_error() {
    let strict = actor_fn("strict", |input: Value, _ctx| {
        try_stream! {
            let n: u32 = loom_core::parse_input(input)?;
            yield Output::complete(json!(n * 2));
        }
    });
    let runtime = runtime_with(strict);
    assert_eq!(
        runtime
            .run("strict", json!(21), RunOptions::default())
            .await
            .expect("ok"),
        json!(42)
    );
    let err = runtime
        .run("strict", json!("nope"), RunOptions::default())
        .await
        .expect_err("bad input");
    assert_eq!(err.code(), ErrorCode::BadInput);
    assert!(err.message().contains("invalid input"), "{err}");
}

#[tokio::test]
async fn a_closure_actor_that_ends_without_complete_gets_an_error_chunk() {
    let forgetful = actor_fn("forgetful", |_input, _ctx| {
        stream! {
            yield Ok::<_, ActorError>(Output::data(json!(1)));
        }
    });
    let chunks = collect(stream_of(forgetful, RunOptions::default())).await;
    assert_contract(&chunks);
    let last = chunks.last().expect("terminal");
    assert_eq!(last.error_info().code, ErrorCode::Internal);
}

#[tokio::test]
async fn run_is_stream_read_to_its_terminal_chunk_for_the_runtime_and_any_invoker() {
    let runtime = Runtime::new(Registry::with_builtins(), Default::default());
    let input = json!({ "hello": "world" });
    assert_eq!(
        runtime
            .run("echo", input.clone(), RunOptions::default())
            .await
            .expect("echo"),
        input
    );
    let invoker: Arc<dyn Invoker> = Arc::new(runtime);
    assert_eq!(
        invoker
            .run("echo", input.clone(), RunOptions::default())
            .await
            .expect("echo"),
        input
    );
    let err = invoker
        .run("batch", json!({ "batch_size": 0 }), RunOptions::default())
        .await
        .expect_err("bad input");
    assert_eq!(err.code(), ErrorCode::BadInput);
    let err = invoker
        .run("nope", Value::Null, RunOptions::default())
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), ErrorCode::NotFound);
}

#[tokio::test]
async fn registering_a_shared_actor_by_value_keeps_its_name_and_behaviour() {
    let echo: Arc<dyn Actor> = Arc::new(loom_core::builtin::Echo);
    let runtime = runtime_with(echo);
    assert_eq!(runtime.registry().names(), ["echo"]);
    assert_eq!(
        runtime
            .run("echo", json!(7), RunOptions::default())
            .await
            .expect("echo"),
        json!(7)
    );
}

#[tokio::test]
async fn a_first_attempt_starts_at_its_seq_and_carries_no_attempt_field() {
    let runtime = Runtime::new(Registry::with_builtins(), Default::default());
    let chunks = collect(
        runtime
            .stream_attempt("echo", json!(1), RunOptions::default(), Attempt::new(1, 0))
            .expect("echo"),
    )
    .await;
    assert_contract(&chunks);
    assert_eq!(chunks[0].attempt, None);
    assert!(!chunks[0].to_json().contains("attempt"));
}
