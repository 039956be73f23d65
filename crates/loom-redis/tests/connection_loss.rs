//! Redis going away: readers end with an error chunk instead of hanging, and workers keep
//! running and serve again once Redis is back.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
    let chunks = echo_once_back(&client).await;
    let chunks = collect(20, chunks).await;
    assert_completes(&chunks);
    worker.stop().await;
}

/// Redis unreachable for longer than a lease and the visibility timeout — as in a cluster's
/// failover on Redis's default timing, 15 s and more, which ended every reader `upstream`
/// while the run went on — but within the outage timeout: the reader waits it out and reads
/// the run to its end (re-run from its start when its worker lost its writes meanwhile).
#[tokio::test]
async fn a_reader_waits_out_a_redis_outage_shorter_than_its_outage_timeout() {
    let server = RedisServer::start_own();
    let options = loom_redis::ClientOptions {
        outage_timeout: Duration::from_secs(15),
        ..fast_options()
    };
    let client = client(&server, options).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let mut chunks = ticker(&client, 40, 50).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(within(10, chunks.next()).await.expect("a chunk"));
    }
    // Read on throughout, as a live consumer does.
    let rest = tokio::spawn(collect(40, chunks));
    server.pause();
    // Past the lease and the visibility timeout (2.3 s), and past the worker's retries.
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.resume();
    seen.extend(rest.await.expect("the reader"));
    let last = seen.last().unwrap();
    assert_eq!(last.kind, ChunkType::Complete, "{last:?}");
    assert_eq!(
        last_attempt_text(&seen),
        (0..40).map(|i| format!("t{i}")).collect::<String>()
    );
    for (i, chunk) in seen.iter().enumerate() {
        assert_eq!(chunk.seq, i as u64, "gapless, none twice: {seen:?}");
    }
    worker.stop().await;
}

/// A client idle through a Redis restart answers its next calls, the first too: its shared
/// connection learns the socket is gone only when a command fails on it, and the reads and
/// idempotent writes go once more on the new one (a server's first request after a restart
/// was a 503).
#[tokio::test]
async fn a_client_idle_through_a_redis_restart_answers_its_first_call() {
    let mut server = RedisServer::start_own();
    let client = client(&server, fast_options()).await;
    assert!(client.served_actors().await.expect("served").is_empty());
    for round in 0..3 {
        server.stop();
        server.restart();
        // Let the connection's reader see its socket close, as an idle server's does.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let calls = match round {
            0 => client.served_actors().await.map(drop),
            1 => client.recent_runs(10).await.map(drop),
            _ => client.cancel("no-such-run").await,
        };
        calls.unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}

/// An `echo` run, queued as soon as Redis answers again.
async fn echo_once_back(client: &loom_redis::Client) -> loom_core::ChunkStream {
    within(20, async {
        loop {
            match client
                .invoker()
                .stream("echo", json!({"back": true}), RunOptions::default())
                .await
            {
                Ok(chunks) => break chunks,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
}

/// The text of a stream's last attempt: its tokens after the last `start` chunk.
fn last_attempt_text(chunks: &[loom_core::StreamChunk]) -> String {
    let from = chunks
        .iter()
        .rposition(|c| c.kind == ChunkType::Start)
        .map_or(0, |i| i + 1);
    chunks[from..]
        .iter()
        .filter_map(|c| c.data.as_ref()?.get("token")?.as_str())
        .collect()
}

/// Also the regression test of a bug this test found: after Redis came back, the worker's cancel
/// sweep (run when it resubscribes) could not yet read the held runs' cancel keys and cancelled
/// them, so a healthy run ended `error/cancelled` (5 failures in 6 runs on a loaded machine).
#[tokio::test]
async fn a_redis_restarted_mid_stream_with_aof_loses_nothing_and_the_stream_completes() {
    let dir = std::env::temp_dir().join(format!("loom-aof-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_str().unwrap().to_owned();
    let mut server = RedisServer::start_own_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--dir",
        &dir_arg,
    ]);
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let mut chunks = ticker(&client, 40, 50).await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(within(10, chunks.next()).await.unwrap());
    }
    server.restart();
    seen.extend(collect(30, chunks).await);
    let last = seen.last().unwrap();
    assert_eq!(last.kind, ChunkType::Complete, "{seen:?}");
    for (i, chunk) in seen.iter().enumerate() {
        assert_eq!(chunk.seq, i as u64, "gapless, none twice");
    }
    // Content, not only seq: what the reader got is the whole text, once.
    let expected: String = (0..40).map(|i| format!("t{i}")).collect();
    assert_eq!(last_attempt_text(&seen), expected);
    assert!(worker.is_running());
    worker.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_redis_frozen_longer_than_the_lease_ends_every_stream_and_no_process_dies() {
    let server = RedisServer::start_own();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let mut chunks = ticker(&client, 40, 50).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(within(10, chunks.next()).await.unwrap());
    }
    server.pause();
    // Three leases (800 ms each) without Redis.
    tokio::time::sleep(Duration::from_millis(2400)).await;
    server.resume();
    seen.extend(collect(30, chunks).await);
    let last = seen.last().unwrap();
    match last.kind {
        ChunkType::Complete => {
            let expected: String = (0..40).map(|i| format!("t{i}")).collect();
            assert_eq!(last_attempt_text(&seen), expected, "{seen:?}");
        }
        ChunkType::Error => {
            let code = last.error.as_ref().unwrap().code;
            assert!(
                matches!(code, ErrorCode::Upstream | ErrorCode::WorkerLost),
                "a clear error: {last:?}"
            );
        }
        _ => panic!("the stream ends with a terminal chunk: {seen:?}"),
    }
    for (i, chunk) in seen.iter().enumerate() {
        assert_eq!(chunk.seq, i as u64, "gapless, none twice: {seen:?}");
    }
    assert!(worker.is_running());
    // And it serves again.
    let again = collect(20, ticker(&client, 3, 0).await).await;
    assert_eq!(again.last().unwrap().kind, ChunkType::Complete, "{again:?}");
    worker.stop().await;
}

/// The worker's writes are refused, its own error chunk in their place too (Redis is full),
/// so it abandons the run (a re-run would be refused too) and releases its lease. When the reader's verdict cannot be written either, it yields its own:
/// `error/upstream` naming Redis's out-of-memory refusal. The few bytes the released lease
/// frees can let the verdict in, and then it is the logged `error/worker_lost`: which of the
/// two depends on Redis's memory to the byte. Regression test for the run that was re-run
/// into a full Redis until the attempt cap ("gave up after 3 attempts").
#[tokio::test]
async fn a_redis_out_of_memory_ends_the_reader_with_a_clear_error_and_the_worker_serves_again() {
    let server = RedisServer::start_own_with(&[
        "--maxmemory",
        "4mb",
        "--maxmemory-policy",
        "noeviction",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    // About 60 bytes of Redis per token: far more than 4 MB.
    let chunks = collect(30, ticker(&client, 1_000_000, 0).await).await;
    let last = chunks.last().unwrap();
    assert_eq!(last.kind, ChunkType::Error, "{last:?}");
    let error = last.error.as_ref().unwrap();
    match error.code {
        ErrorCode::Upstream => {
            assert!(error.message.contains("Redis is out of memory"), "{last:?}")
        }
        ErrorCode::WorkerLost => assert!(!error.message.contains("attempts"), "{last:?}"),
        _ => panic!("not a clear verdict: {last:?}"),
    }
    assert_eq!(
        probe.starts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "not re-run"
    );
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.seq, i as u64, "gapless until the end");
    }
    assert!(worker.is_running(), "the worker survives");
    // A request queued while Redis is full (to the byte: no room at all) is refused, saying
    // why, not in Redis's words alone (a pipeline's failure).
    let mut plain = server.plain();
    let maxmemory = |bytes: &str| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET").arg("maxmemory").arg(bytes);
        cmd
    };
    let _: () = maxmemory("1").query(&mut plain).unwrap();
    let refused = client
        .invoker()
        .submit("ticker", json!({ "count": 1 }), &RunOptions::default())
        .await
        .expect_err("no room for the request");
    assert!(refused.is_out_of_memory(), "{refused}");
    assert!(
        refused.to_string().starts_with("Redis is out of memory"),
        "{refused}"
    );
    let _: () = maxmemory("4mb").query(&mut plain).unwrap();
    // Memory frees (the full stream goes): the worker serves runs again.
    let _: () = redis::cmd("FLUSHALL").query(&mut plain).unwrap();
    let again = collect(30, ticker(&client, 3, 0).await).await;
    assert_eq!(again.last().unwrap().kind, ChunkType::Complete, "{again:?}");
    worker.stop().await;
}

/// Redis weighs a command with its arguments: near `maxmemory`, a batch of large chunks is
/// refused where a small entry still fits. The worker then ends the run itself with an
/// `error/upstream` chunk naming the cause, written to the stream (a replay reads it too),
/// instead of releasing it to a reader's `worker_lost` ("no worker took the run up").
#[tokio::test]
async fn a_chunk_too_large_for_redis_memory_ends_its_run_with_the_workers_own_error() {
    let server = RedisServer::start_own_with(&["--save", "", "--appendonly", "no"]);
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let first = collect(30, ticker(&client, 3, 0).await).await;
    assert_completes(&first);
    // 200 kB of room, and chunks of about 110 kB (10,000 results of the batch actor).
    let mut plain = server.plain();
    let info: String = redis::cmd("INFO").arg("memory").query(&mut plain).unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 200_000)
        .query(&mut plain)
        .unwrap();
    let input = json!({ "count": 100_000, "batch_size": 10_000, "delay_ms": 0 });
    let run_id = client
        .invoker()
        .submit("batch", input, &Default::default())
        .await
        .expect("the request is queued")
        .run_id;
    let attached = client
        .invoker()
        .attach(&run_id, None)
        .await
        .expect("attach");
    let entries = within(30, attached.collect::<Vec<_>>()).await;
    let chunks: Vec<_> = entries.into_iter().map(|e| e.chunk).collect();
    let last = chunks.last().unwrap();
    let error = last.error.as_ref().expect("an error chunk");
    assert_eq!(error.code, ErrorCode::Upstream, "{last:?}");
    assert!(error.message.contains("Redis is out of memory"), "{last:?}");
    assert_contract(&chunks);
    // The worker's own chunk, in the stream: a replay ends with it too.
    let replay = collect(10, client.tail(&run_id, None).await.expect("replay")).await;
    assert_eq!(replay, chunks);
    assert!(worker.is_running(), "the worker survives");
    worker.stop().await;
}

#[tokio::test]
async fn runs_after_a_redis_restart_are_written_at_once_although_idle_writer_connections_died() {
    let mut server = RedisServer::start_own();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    // Three runs at once leave writer connections idle in the worker's client.
    let runs = futures::future::join_all((0..3).map(|_| ticker(&client, 3, 0))).await;
    for chunks in runs {
        let chunks = collect(10, chunks).await;
        assert_completes(&chunks);
    }

    server.stop();
    server.restart();
    let chunks = echo_once_back(&client).await;
    // One failed write on a dead connection, then a new one: the run ends on its first
    // attempt, well before a lease could lapse and have it run again.
    let chunks = collect(5, chunks).await;
    assert_completes(&chunks);
    assert!(chunks.iter().all(|c| c.attempt.is_none()), "{chunks:?}");
    worker.stop().await;
}

#[tokio::test]
async fn a_run_waits_at_its_yield_while_redis_does_not_answer_and_goes_on_after() {
    let server = RedisServer::start_own();
    // A lease that outlasts the freeze: this test is about the writer's memory, not about
    // a run taken over.
    let options = loom_redis::ClientOptions {
        lease_ttl: Duration::from_secs(10),
        lease_refresh: Duration::from_secs(1),
        visibility_timeout: Duration::from_secs(20),
        ..fast_options()
    };
    let client = client(&server, options).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    // A token as fast as it is pulled, far more than the run may hold.
    let mut chunks = ticker(&client, 10_000_000, 0).await;
    within(10, chunks.next()).await.expect("start");
    server.pause();
    let settle = Duration::from_millis(500);
    tokio::time::sleep(settle).await;
    let held = probe.yielded.load(Ordering::SeqCst);
    tokio::time::sleep(settle).await;
    assert_eq!(
        probe.yielded.load(Ordering::SeqCst),
        held,
        "the actor must wait at its yield while its batch gets no reply"
    );
    server.resume();
    // It goes on from where it waited: the next chunks come, numbered without a gap.
    let mut expected = 1;
    within(20, async {
        while expected < 5_000 {
            let chunk = chunks.next().await.expect("the run goes on");
            assert_eq!(chunk.seq, expected, "{chunk:?}");
            assert_eq!(chunk.kind, ChunkType::Data, "{chunk:?}");
            expected += 1;
        }
    })
    .await;
    assert!(
        probe.yielded.load(Ordering::SeqCst) > held,
        "the actor runs again"
    );
    drop(chunks);
    worker.stop().await;
}

/// Redis restarted without persistence mid-run loses the run's stream, lease and all: the
/// live reader ends right after the last chunk it had with an `upstream` error saying so, and
/// that error is in the stream, where a reader resuming after the chunk before it finds it
/// (it found a stream ending before its cursor: nothing at all).
#[tokio::test]
async fn a_stream_lost_in_a_restart_ends_after_what_its_reader_had() {
    let mut server = RedisServer::start_own();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let mut live = ticker(&client, 100000, 20).await;
    let run_id = live.run_id().to_owned();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(within(10, live.next()).await.expect("a chunk"));
    }
    server.restart();
    seen.extend(collect(30, live).await);
    for (i, chunk) in seen.iter().enumerate() {
        assert_eq!(chunk.seq, i as u64, "gapless, none twice: {seen:?}");
    }
    let last = seen.last().expect("chunks");
    let lost = |chunk: &loom_core::StreamChunk| {
        let err = chunk.error.as_ref().expect("an error chunk");
        assert_eq!(err.code, ErrorCode::Upstream, "{chunk:?}");
        assert!(
            err.message.contains("Redis lost this run's stream"),
            "{chunk:?}"
        );
    };
    lost(last);

    let resumed = client
        .invoker()
        .attach(&run_id, Some(loom_redis::EntryId::of_seq(last.seq - 1)))
        .await
        .expect("attach");
    let rest: Vec<_> = within(10, resumed.collect::<Vec<_>>()).await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].chunk.seq, last.seq);
    lost(&rest[0].chunk);
    worker.stop().await;
}
