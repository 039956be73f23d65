//! Cancel crosses Redis: dropping a remote stream or calling `cancel()` stops the actor on
//! its worker, which writes `error/cancelled`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use loom_core::{ChunkType, ErrorCode, RunOptions};
use loom_redis::WorkerOptions;
use serde_json::json;
use support::*;

/// Reads chunks until `n` tokens arrived.
async fn read_tokens(chunks: &mut loom_core::ChunkStream, n: usize) {
    let mut tokens = 0;
    while tokens < n {
        let chunk = within(10, chunks.next()).await.expect("stream ended early");
        if chunk.token().is_some() {
            tokens += 1;
        }
    }
}

#[tokio::test]
async fn cancel_stops_the_actor_on_the_worker_and_the_stream_ends_cancelled() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let mut chunks = ticker(&client, 100000, 10).await;
    read_tokens(&mut chunks, 3).await;
    let asked = Instant::now();
    chunks.cancel();
    let rest = collect(10, chunks).await;
    let last = rest.last().unwrap();
    assert_eq!(last.kind, ChunkType::Error);
    assert_eq!(last.error.as_ref().unwrap().code, ErrorCode::Cancelled);
    let seen = probe
        .cancelled_at
        .lock()
        .unwrap()
        .expect("the actor saw the cancel");
    let delay = seen.duration_since(asked);
    eprintln!("cancel reached the actor after {delay:?}");
    // The target is 100 ms; this bound only catches a cancel that did not travel by pub/sub.
    assert!(delay < Duration::from_secs(1), "{delay:?}");
    worker.stop().await;
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_run() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let mut chunks = ticker(&client, 100000, 10).await;
    let run_id = chunks.run_id().to_owned();
    read_tokens(&mut chunks, 2).await;
    drop(chunks);

    // Another reader sees the worker's terminal `error/cancelled`.
    let rest = collect(10, client.tail(&run_id, None).await.unwrap()).await;
    assert_contract(&rest);
    let last = rest.last().unwrap();
    assert_eq!(last.error.as_ref().unwrap().code, ErrorCode::Cancelled);
    assert!(probe.cancelled_at.lock().unwrap().is_some());
    worker.stop().await;
}

#[tokio::test]
async fn a_run_cancelled_before_a_worker_takes_it_never_starts_its_actor() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());

    let invoker = client.invoker();
    let submitted = invoker
        .submit("ticker", json!({ "count": 5 }), &RunOptions::default())
        .await
        .unwrap();
    client.cancel(&submitted.run_id).await.unwrap();
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let chunks: Vec<_> = within(
        10,
        invoker
            .attach(&submitted.run_id, None)
            .await
            .unwrap()
            .collect::<Vec<_>>(),
    )
    .await;
    let chunks: Vec<_> = chunks.into_iter().map(|e| e.chunk).collect();
    assert_contract(&chunks);
    // Ended by the cancel itself, as no worker held it: the terminal alone.
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    assert_eq!(chunks[0].error.as_ref().unwrap().code, ErrorCode::Cancelled);
    assert_eq!(probe.starts.load(std::sync::atomic::Ordering::SeqCst), 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_cancel_whose_message_was_missed_still_stops_the_run() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let mut chunks = ticker(&client, 100000, 10).await;
    read_tokens(&mut chunks, 3).await;
    // The cancel key alone, as if its message was lost: pub/sub delivers at most once.
    let _: () = redis::cmd("SET")
        .arg(client.keys().cancel(chunks.run_id()))
        .arg("cancelled")
        .query(&mut server.plain())
        .unwrap();
    let rest = collect(10, chunks).await;
    let last = rest.last().unwrap();
    assert_eq!(last.kind, ChunkType::Error);
    assert_eq!(last.error.as_ref().unwrap().code, ErrorCode::Cancelled);
    assert!(probe.cancelled_at.lock().unwrap().is_some());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_dropped_while_it_is_being_queued_is_cancelled() {
    let server = RedisServer::start_own();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let run_id = loom_core::new_run_id();
    let options = RunOptions {
        run_id: Some(run_id.clone()),
        ..RunOptions::default()
    };
    // Redis holds the request unanswered; the caller gives up (a workflow cancelled just as
    // its step starts) while it is on its way.
    server.pause();
    let invoker = client.invoker();
    let starting = invoker.stream("ticker", json!({ "count": 50, "delay_ms": 50 }), options);
    let gave_up = tokio::time::timeout(Duration::from_millis(300), starting).await;
    assert!(
        gave_up.is_err(),
        "the request was answered while Redis was paused"
    );
    server.resume();
    // The request went in all the same: its run is cancelled, not run to its end.
    let chunks = within(20, async {
        loop {
            if let Ok(stream) = client.tail(&run_id, None).await {
                break collect(15, stream).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let last = chunks.last().expect("chunks");
    assert_eq!(
        last.error.as_ref().map(|e| e.code),
        Some(ErrorCode::Cancelled),
        "{chunks:?}"
    );
    worker.stop().await;
}
