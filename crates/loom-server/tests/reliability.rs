//! The run log under churn: a thousand random disconnects and resumes across fifty runs lose
//! and repeat nothing, and a server shut down with a hundred open streams ends each with its
//! run's terminal chunk.

mod support;

use std::time::Duration;

use futures::future::join_all;
use loom_server::ServerConfig;
use serde_json::json;
use support::*;

/// A small xorshift generator: the test's randomness, seeded per reader so a failure repeats.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_random_disconnects_and_resumes_lose_and_repeat_nothing() {
    let server = TestServer::default_config().await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        // 200 batches 10 ms apart: about 2 s of chunks per run.
        ids.push(
            server
                .detached(json!({ "actor": "batch", "input": slow_batch(200, 10) }))
                .await,
        );
    }
    let readers = ids.iter().enumerate().map(|(i, id)| {
        let server = &server;
        async move {
            let mut random = Random(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
            let mut seen: Vec<u64> = Vec::new();
            let mut cycles = 0u32;
            loop {
                let mut request = server
                    .http
                    .get(server.url(&format!("/v1/runs/{id}/stream")));
                if let Some(last) = seen.last() {
                    request = request.header("Last-Event-ID", last.to_string());
                }
                let response = within(request.send()).await.expect("GET");
                if response.status() == 204 {
                    break;
                }
                assert_eq!(response.status(), 200);
                let mut reader = SseReader::new(response);
                // Read a few chunks, then drop the connection mid-stream.
                let take = 1 + random.below(12);
                let mut ended = false;
                for _ in 0..take {
                    let Some(frame) = reader.next_chunk().await else {
                        break;
                    };
                    seen.push(frame.id.expect("every chunk has an id"));
                    if matches!(frame.event.as_deref(), Some("complete" | "error")) {
                        ended = true;
                        break;
                    }
                }
                cycles += 1;
                if ended {
                    break;
                }
            }
            let expected: Vec<u64> = (0..seen.len() as u64).collect();
            assert_eq!(seen, expected, "run {id}: nothing lost, nothing twice");
            cycles
        }
    });
    let cycles: u32 = within(join_all(readers)).await.into_iter().sum();
    assert!(cycles >= 1000, "{cycles} disconnect/resume cycles");
    for id in &ids {
        assert_eq!(server.status(id).await["status"], "complete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_with_a_hundred_open_streams_ends_each_with_its_terminal_chunk() {
    let mut server = TestServer::start(ServerConfig {
        keep_alive: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await;
    let mut readers = Vec::new();
    for _ in 0..100 {
        let response = server
            .post(
                "/v1/actors/batch/stream",
                &json!({ "input": slow_batch(10_000, 50) }),
            )
            .await;
        assert_eq!(response.status(), 200);
        let mut reader = SseReader::new(response);
        reader.next_chunk().await.expect("the start chunk");
        readers.push(reader);
    }
    let (_, ends) = tokio::join!(server.shut_down(), async {
        join_all(readers.iter_mut().map(|r| r.rest())).await
    });
    for frames in ends {
        let last = frames.last().expect("a terminal chunk");
        assert_eq!(last.event.as_deref(), Some("error"));
        assert_eq!(last.data.as_ref().unwrap()["error"]["code"], "cancelled");
    }
}
