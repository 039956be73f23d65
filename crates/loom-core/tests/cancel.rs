//! Cancellation: dropping a stream or calling `cancel()` stops the actor.

mod support;

use std::time::Duration;

use futures::StreamExt;
use loom_core::{ChunkType, ErrorCode, Output, RunOptions};
use serde_json::Value;
use support::*;
use tokio::sync::oneshot;

#[tokio::test]
async fn dropping_the_stream_cancels_the_actor() {
    let (hanger, dropped) = Hanger::new("hanger", 2);
    let mut stream = stream_of(hanger, RunOptions::default());
    assert_eq!(next(&mut stream).await.kind, ChunkType::Start);
    assert_eq!(next(&mut stream).await.kind, ChunkType::Data);
    drop(stream);
    tokio::time::timeout(LIMIT, dropped)
        .await
        .expect("in time")
        .expect("the actor was dropped");
}

#[tokio::test]
async fn dropping_the_stream_fires_the_token_that_spawned_work_holds() {
    let (tx, rx) = oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let actor = fn_actor("spawner", move |_, ctx| {
        let tx = tx.lock().expect("not poisoned").take();
        async_stream::try_stream! {
            let token = ctx.cancellation_token().child_token();
            tokio::spawn(async move {
                token.cancelled().await;
                if let Some(tx) = tx {
                    let _ = tx.send(());
                }
            });
            yield Output::data(1);
            std::future::pending::<()>().await;
            yield Output::complete(Value::Null);
        }
    });
    let mut stream = stream_of(actor, RunOptions::default());
    next(&mut stream).await;
    next(&mut stream).await;
    drop(stream);
    tokio::time::timeout(LIMIT, rx)
        .await
        .expect("in time")
        .expect("the spawned work saw the cancel");
}

#[tokio::test]
async fn cancel_ends_the_stream_with_cancelled_and_stops_the_actor() {
    let (hanger, dropped) = Hanger::new("hanger", 1);
    let mut stream = stream_of(hanger, RunOptions::default());
    next(&mut stream).await;
    next(&mut stream).await;
    stream.cancel();
    let rest: Vec<_> = tokio::time::timeout(LIMIT, (&mut stream).collect::<Vec<_>>())
        .await
        .expect("in time");
    assert_eq!(rest.len(), 1, "one terminal chunk: {rest:?}");
    assert_eq!(rest[0].seq, 2);
    assert_eq!(
        rest[0].error.as_ref().map(|e| e.code),
        Some(ErrorCode::Cancelled)
    );
    tokio::time::timeout(LIMIT, dropped)
        .await
        .expect("in time")
        .expect("the actor was dropped");
}

#[tokio::test]
async fn a_completion_ready_at_once_after_a_cancel_does_not_overwrite_it() {
    // An actor that never waits: its outputs and its completion are all ready when polled.
    let actor = fn_actor("eager", |_, _| {
        async_stream::try_stream! {
            yield Output::data(1);
            yield Output::complete(Value::Null);
        }
    });
    let mut stream = stream_of(actor, RunOptions::default());
    assert_eq!(next(&mut stream).await.kind, ChunkType::Start);
    assert_eq!(next(&mut stream).await.kind, ChunkType::Data);
    stream.cancel();
    let rest: Vec<_> = tokio::time::timeout(LIMIT, (&mut stream).collect::<Vec<_>>())
        .await
        .expect("in time");
    assert_eq!(rest.len(), 1, "one terminal chunk: {rest:?}");
    assert_eq!(
        rest[0].error.as_ref().map(|e| e.code),
        Some(ErrorCode::Cancelled),
        "{rest:?}"
    );
}

/// An actor that fails because it was cancelled (its own `select!` on the token, or an
/// HTTP call aborted with it, mapped to an error): the run still ends `cancelled`.
#[tokio::test]
async fn a_failure_the_cancel_caused_does_not_overwrite_it() {
    let actor = fn_actor("aborting", |_, ctx: loom_core::ActorContext| {
        async_stream::try_stream! {
            yield Output::data(1);
            ctx.cancellation_token().cancelled().await;
            Err(failed("aborted"))?;
            yield Output::complete(Value::Null);
        }
    });
    let mut stream = stream_of(actor, RunOptions::default());
    assert_eq!(next(&mut stream).await.kind, ChunkType::Start);
    assert_eq!(next(&mut stream).await.kind, ChunkType::Data);
    stream.cancel();
    let rest: Vec<_> = tokio::time::timeout(LIMIT, (&mut stream).collect::<Vec<_>>())
        .await
        .expect("in time");
    assert_eq!(rest.len(), 1, "one terminal chunk: {rest:?}");
    assert_eq!(
        rest[0].error.as_ref().map(|e| e.code),
        Some(ErrorCode::Cancelled),
        "{rest:?}"
    );
}

#[tokio::test]
async fn cancelling_the_parent_token_cancels_the_run() {
    let parent = loom_core::CancellationToken::new();
    let (hanger, _dropped) = Hanger::new("hanger", 0);
    let options = RunOptions {
        parent: Some(parent.clone()),
        ..RunOptions::default()
    };
    let mut stream = stream_of(hanger, options);
    next(&mut stream).await;
    parent.cancel();
    let last = next(&mut stream).await;
    assert_eq!(last.error.map(|e| e.code), Some(ErrorCode::Cancelled));
}

#[tokio::test]
async fn a_cancelled_busy_actor_stops_within_a_bounded_number_of_chunks() {
    let actor = fn_actor("busy", |_, _| {
        async_stream::try_stream! {
            loop {
                yield Output::data(0);
            }
        }
    });
    let mut stream = stream_of(
        actor,
        RunOptions {
            timeout: Some(Duration::from_secs(60)),
            ..RunOptions::default()
        },
    );
    next(&mut stream).await;
    next(&mut stream).await;
    stream.cancel();
    // The runtime checks a never-awaiting actor's token every 64 chunks.
    let rest: Vec<_> = tokio::time::timeout(LIMIT, (&mut stream).collect::<Vec<_>>())
        .await
        .expect("in time");
    assert!(
        rest.len() <= 65,
        "stopped within 64 chunks, got {}",
        rest.len()
    );
    let last = rest.last().and_then(|c| c.error.as_ref()).map(|e| e.code);
    assert_eq!(last, Some(ErrorCode::Cancelled));
}
