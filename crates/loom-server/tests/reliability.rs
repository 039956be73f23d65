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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_and_the_log_stays_bounded() {
    use std::io::{Read, Write};

    let server = TestServer::start(ServerConfig {
        log_limits: loom_server::LogLimits {
            max_chunks: 1_000,
            max_bytes: usize::MAX,
            ..loom_server::LogLimits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    // 20,000 items: 40,002 chunks, written as fast as the actor can, to a client that reads
    // only the response head.
    let body = json!({ "input": { "count": 20_000, "batch_size": 1, "delay_ms": 0 } }).to_string();
    let mut socket = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        socket,
        "POST /v1/actors/batch/stream HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = [0u8; 512];
    let n = socket.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("loom-run-id: "))
        .unwrap_or_else(|| panic!("{head}"))
        .trim()
        .to_owned();
    // The run does not wait for its reader: it completes while nothing is read.
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "complete");
    assert_eq!(status["last_seq"], 40_001);
    // The log kept only its bound: the start is gone (410), the end is there.
    let gone = server.get(&format!("/v1/runs/{id}/stream?from=0")).await;
    assert_eq!(gone.status(), 410);
    let kept = server
        .get(&format!("/v1/runs/{id}/stream?from=39990"))
        .await;
    assert_eq!(
        seqs(&SseReader::new(kept).rest().await),
        (39_991..=40_001).collect::<Vec<_>>()
    );
    // The client that never read is disconnected once it reads again: its place was dropped,
    // and it ends without a terminal chunk (a resume would get the 410).
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = socket.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(
        !text.contains("event: complete"),
        "no terminal for a dropped reader"
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("\nloom_slow_readers_dropped_total 1\n"),
        "{metrics}"
    );
}
