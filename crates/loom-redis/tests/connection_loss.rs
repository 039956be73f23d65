//! Redis going away: readers end with an error chunk instead of hanging, and workers keep
//! running and serve again once Redis is back.

mod support;

use std::sync::Arc;

use futures::StreamExt;
use loom_core::{ChunkType, ErrorCode, RunOptions};
use loom_redis::WorkerOptions;
use serde_json::json;
use support::*;

#[tokio::test]
async fn readers_end_with_an_error_and_workers_survive_until_redis_returns() {
    // Its own server, whatever LOOM_TEST_REDIS_URL says: this test stops and restarts it.
    let mut server = RedisServer::start_own();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let mut chunks = ticker(&client, 100000, 10).await;
    for _ in 0..3 {
        within(10, chunks.next()).await.unwrap();
    }
    server.stop();
    // Lease plus visibility (2.3 s) after the last contact, plus reconnect attempts.
    let rest = collect(20, chunks).await;
    let last = rest.last().expect("a terminal chunk");
    assert_eq!(last.kind, ChunkType::Error);
    assert_eq!(
        last.error.as_ref().unwrap().code,
        ErrorCode::Upstream,
        "{last:?}"
    );
    assert!(
        worker.is_running(),
        "the worker must not exit when Redis goes away"
    );

    server.restart();
    // The same client and worker serve a new run once Redis is back.
    let chunks = within(20, async {
        loop {
            match client
                .invoker()
                .stream("echo", json!({"back": true}), RunOptions::default())
                .await
            {
                Ok(chunks) => break chunks,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    let chunks = collect(20, chunks).await;
    assert_eq!(
        chunks.last().unwrap().kind,
        ChunkType::Complete,
        "{chunks:?}"
    );
    worker.stop().await;
}
