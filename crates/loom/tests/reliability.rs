//! Every stream ends, in order, with nothing lost, under load and faults: real `loom worker`
//! processes, a real `redis-server`, and one reader process (this test) following 50 runs.

#[path = "../../loom-redis/tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::time::Duration;

use futures::StreamExt;
use loom_core::{ChunkType, RunOptions, StreamChunk};
use redis_server::RedisServer;
use serde_json::json;
use support::*;

const FLOW: &str = "name: steps\nactions:\n  - name: first\n    type: actor\n    actorType: batch\n    input: { count: 10, batch_size: 1, delay_ms: 100 }\n  - name: second\n    type: actor\n    actorType: chat-agent\n    streaming: true\n    input: { prompt: \"the rest\" }\n";

fn worker(redis: &RedisServer, workflows: &str) -> Process {
    let (process, _) = start_ready(
        &[
            "worker",
            "--redis",
            redis.url(),
            "--concurrency",
            "50",
            "--workflows",
            workflows,
        ],
        &[],
        "loom: worker serving",
    );
    process
}

/// The contract of one remote stream: `seq` 0, 1, 2… with none twice or skipped, one terminal
/// chunk and it last; a re-run's `start` says its attempt.
fn check(chunks: &[StreamChunk]) {
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.seq, i as u64, "gapless, none twice: {chunks:?}");
    }
    assert_eq!(
        chunks.iter().filter(|c| c.is_terminal()).count(),
        1,
        "{chunks:?}"
    );
    assert!(chunks.last().is_some_and(StreamChunk::is_terminal));
    assert_eq!(chunks[0].kind, ChunkType::Start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mixed_streams_survive_a_worker_killed_mid_way() {
    let redis = RedisServer::start_own();
    let dir = std::env::temp_dir().join(format!("loom-reliability-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("steps.yaml"), FLOW).expect("workflow file");
    let dir_arg = dir.to_str().expect("utf-8 path").to_owned();
    let mut doomed = worker(&redis, &dir_arg);
    let _survivor = worker(&redis, &dir_arg);

    let client = loom_redis::Client::connect(redis.url())
        .await
        .expect("connect");
    let invoker = client.invoker();
    let mut streams = Vec::new();
    for i in 0..50 {
        let (actor, input) = match i % 3 {
            0 => (
                "batch",
                json!({ "count": 20, "batch_size": 1, "delay_ms": 100 }),
            ),
            1 => (
                "chat-agent",
                json!({ "prompt": format!("story number {i}") }),
            ),
            _ => ("workflows/steps", json!({})),
        };
        let stream = invoker
            .stream(
                actor,
                input,
                RunOptions {
                    timeout: Some(Duration::from_secs(60)),
                    ..RunOptions::default()
                },
            )
            .await
            .expect("queued");
        streams.push(tokio::spawn(stream.collect::<Vec<StreamChunk>>()));
    }
    // Mid-way: every run has started, none has ended.
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(doomed.0.id(), "KILL");
    let _ = doomed.0.wait();

    let mut rerun = 0;
    for stream in streams {
        let chunks = tokio::time::timeout(LIMIT, stream)
            .await
            .expect("every stream ends in time")
            .expect("the reader task");
        check(&chunks);
        let last = chunks.last().unwrap();
        assert_eq!(
            last.kind,
            ChunkType::Complete,
            "the re-run completes: {chunks:?}"
        );
        let attempts: Vec<u32> = chunks.iter().filter_map(|c| c.attempt).collect();
        if !attempts.is_empty() {
            assert_eq!(attempts, [2], "{chunks:?}");
            rerun += 1;
        }
    }
    assert!(rerun > 0, "the killed worker held runs, which were re-run");

    // In Redis too: each run's stream holds exactly one terminal entry.
    let mut conn = redis.plain();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("loom:stream:*")
        .query(&mut conn)
        .expect("KEYS");
    assert_eq!(keys.len(), 50);
    for key in keys {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .expect("XRANGE");
        let terminals = entries
            .iter()
            .filter(|(_, fields)| matches!(fields[0].1.as_str(), "complete" | "error"))
            .count();
        assert_eq!(terminals, 1, "{key}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
