//! Crash recovery: a dead worker's run is re-run by another worker as attempt 2, continuing
//! the stream gapless; with no worker left the reader gets `error/worker_lost`, never a hang;
//! a long run on a healthy worker is never taken from it; shutdown finishes or hands back.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use loom_core::{ChunkStream, ChunkType, ErrorCode, RunOptions};
use loom_redis::{ClientOptions, WorkerOptions};
use serde_json::json;
use support::*;

/// A lease long enough that the re-run (after the visibility timeout plus one sweep) always
/// starts before the reader would give up.
fn recovery_options() -> ClientOptions {
    ClientOptions {
        lease_ttl: Duration::from_secs(2),
        ..fast_options()
    }
}

async fn take(chunks: &mut ChunkStream, n: usize) -> Vec<loom_core::StreamChunk> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(within(10, chunks.next()).await.expect("stream ended early"));
    }
    out
}

fn starts(chunks: &[loom_core::StreamChunk]) -> Vec<&loom_core::StreamChunk> {
    chunks
        .iter()
        .filter(|c| c.kind == ChunkType::Start)
        .collect()
}

/// A long ticker run (counted by `probe`), read for three chunks, whose only worker is then
/// killed: the stream, the run id and the chunks read.
async fn a_run_whose_worker_died(
    client: &loom_redis::Client,
    probe: &Arc<Probe>,
) -> (ChunkStream, String, Vec<loom_core::StreamChunk>) {
    let worker = RunningWorker::spawn(client, runtime(probe), WorkerOptions::default());
    let mut chunks = ticker(client, 1000, 20).await;
    let run_id = chunks.run_id().to_owned();
    let seen = take(&mut chunks, 3).await;
    worker.kill().await;
    (chunks, run_id, seen)
}

/// Consumer `consumer` of the workers' group takes the next `count` requests of `queue`, as a
/// worker would (a live one, or one about to die).
fn take_as(plain: &mut redis::Connection, queue: &str, consumer: &str, count: usize) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(loom_redis::GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(queue)
        .arg(">")
        .query(plain)
        .unwrap();
}

#[tokio::test]
async fn a_dead_workers_run_is_rerun_by_another_as_attempt_2_gapless() {
    let server = RedisServer::start();
    let client = client(&server, recovery_options()).await;
    let probe = Arc::new(Probe::default());
    let first = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let mut chunks = ticker(&client, 30, 20).await;
    let mut seen = take(&mut chunks, 4).await;
    first.kill().await;
    let second = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    seen.extend(collect(20, chunks).await);

    assert_contract(&seen);
    let starts = starts(&seen);
    assert_eq!(starts.len(), 2, "{seen:?}");
    assert_eq!(starts[0].attempt, None);
    assert_eq!(starts[1].attempt, Some(2));
    assert_eq!(seen.last().unwrap().kind, ChunkType::Complete);
    assert_eq!(probe.starts.load(Ordering::SeqCst), 2);
    second.stop().await;
}

/// The only reader of a run whose worker died waits at a cursor ahead of the run's end: it
/// ends with nothing, and the verdict it writes follows the run's last entry. Regression
/// test for a verdict written at the cursor's seq, a gap every other reader then met.
#[tokio::test]
async fn a_reader_ahead_of_a_dead_workers_run_writes_its_verdict_after_the_runs_end() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let input = json!({ "count": 1000, "delay_ms": 20 });
    let submitted = client
        .invoker()
        .submit("ticker", input, &RunOptions::default())
        .await
        .unwrap();
    let run_id = submitted.run_id;
    let mut live = client.invoker().attach(&run_id, None).await.unwrap();
    for _ in 0..3 {
        within(10, futures::StreamExt::next(&mut live))
            .await
            .expect("a chunk");
    }
    drop(live);
    worker.kill().await;
    let ahead = loom_redis::EntryId::of_seq(500);
    let ahead = client.invoker().attach(&run_id, Some(ahead)).await.unwrap();
    let read = within(10, futures::StreamExt::collect::<Vec<_>>(ahead)).await;
    assert!(read.is_empty(), "{read:?}");
    let all = collect(10, client.tail(&run_id, None).await.unwrap()).await;
    assert_contract(&all);
    let last = all.last().unwrap();
    assert_eq!(
        last.error.as_ref().unwrap().code,
        ErrorCode::WorkerLost,
        "{last:?}"
    );
}

/// A run that has used up its attempts ends `error/worker_lost` right after the last
/// attempt's output, with no `start` of an attempt that never ran (which readers, and the
/// CLI, took for the run starting again).
#[tokio::test]
async fn a_run_past_its_attempts_ends_worker_lost_with_no_new_start() {
    let server = RedisServer::start();
    let client = client(&server, recovery_options()).await;
    let probe = Arc::new(Probe::default());
    let (chunks, _, mut seen) = a_run_whose_worker_died(&client, &probe).await;
    let one_attempt = WorkerOptions {
        max_attempts: 1,
        ..WorkerOptions::default()
    };
    let second = RunningWorker::spawn(&client, runtime(&probe), one_attempt);
    seen.extend(collect(20, chunks).await);
    assert_contract(&seen);
    assert_eq!(starts(&seen).len(), 1, "{seen:?}");
    let last = seen.last().unwrap();
    let error = last.error.as_ref().expect("an error chunk");
    assert_eq!(error.code, ErrorCode::WorkerLost, "{last:?}");
    assert!(
        error.message.contains("gave up after its one attempt"),
        "{last:?}"
    );
    assert_eq!(probe.starts.load(Ordering::SeqCst), 1, "not run again");
    second.stop().await;
}

/// A caller cancels a run whose worker has just died, its lease not yet lapsed (so the
/// cancel leaves the run to that worker): when the reader finds the worker lost, the run
/// ends `cancelled`, as asked, not `worker_lost`, and its record says so.
#[tokio::test]
async fn a_run_cancelled_after_its_worker_died_ends_cancelled_not_worker_lost() {
    let server = RedisServer::start();
    let client = client(&server, recovery_options()).await;
    let probe = Arc::new(Probe::default());
    let (chunks, run_id, mut seen) = a_run_whose_worker_died(&client, &probe).await;
    within(10, client.cancel(&run_id)).await.expect("cancel");
    seen.extend(collect(15, chunks).await);
    assert_contract(&seen);
    let last = seen.last().unwrap();
    assert_eq!(
        last.error.as_ref().unwrap().code,
        ErrorCode::Cancelled,
        "{last:?}"
    );
    let record = client.run_record(&run_id).await.unwrap().unwrap();
    assert_eq!(
        record
            .terminal()
            .and_then(|t| t.error.as_ref().map(|e| e.code)),
        Some(ErrorCode::Cancelled)
    );
    let mut plain = server.plain();
    let mark: Option<String> = redis::cmd("GET")
        .arg(client.keys().cancel(&run_id))
        .query(&mut plain)
        .unwrap();
    assert_eq!(mark.as_deref(), Some("cancelled"));
}

#[tokio::test]
async fn with_no_worker_left_the_reader_gets_worker_lost_and_a_late_worker_does_not_rerun() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let (chunks, run_id, mut seen) = a_run_whose_worker_died(&client, &probe).await;
    // Lease (0.8 s) plus visibility (1.5 s), plus checks: well inside 10 s.
    seen.extend(collect(10, chunks).await);
    assert_contract(&seen);
    let last = seen.last().unwrap();
    assert_eq!(last.error.as_ref().unwrap().code, ErrorCode::WorkerLost);
    assert!(
        last.error.as_ref().unwrap().message.contains("was lost"),
        "{last:?}"
    );

    let mut plain = server.plain();
    let mark: Option<String> = redis::cmd("GET")
        .arg(client.keys().cancel(&run_id))
        .query(&mut plain)
        .unwrap();
    assert_eq!(mark.as_deref(), Some("worker_lost"));
    // Every reader sees the same terminal: it was written into the stream.
    assert_eq!(
        collect(10, client.tail(&run_id, None).await.unwrap()).await,
        seen
    );

    // A worker arriving late acknowledges the request without running it again.
    let late = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let queue = client.keys().queue("ticker", 0);
    within(10, async {
        loop {
            let left: u64 = redis::cmd("XLEN").arg(&queue).query(&mut plain).unwrap();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(probe.starts.load(Ordering::SeqCst), 1);
    assert_eq!(
        entries(&mut plain, &client.keys().stream(&run_id)).len(),
        seen.len()
    );
    late.stop().await;
}

#[tokio::test]
async fn a_request_no_worker_picks_up_ends_with_worker_lost() {
    let server = RedisServer::start();
    let mut options = fast_options();
    options.pickup_timeout = Duration::from_secs(2);
    let client = client(&server, options).await;
    let chunks = client
        .invoker()
        .stream("ticker", json!({ "count": 1 }), RunOptions::default())
        .await
        .unwrap();
    let chunks = collect(10, chunks).await;
    assert_eq!(chunks.len(), 1);
    let error = chunks[0].error.as_ref().unwrap();
    assert_eq!(error.code, ErrorCode::WorkerLost);
    // Not "lost": none ever took it.
    assert!(
        error.message.contains("no worker took the run up"),
        "{error:?}"
    );
}

/// A run cancelled while its request waits in the queue ends at once with `error/cancelled`
/// (no worker would write it before taking the request up), and the worker that takes the
/// request up later leaves it.
#[tokio::test]
async fn a_run_cancelled_while_queued_ends_at_once_and_is_never_run() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let chunks = ticker(&client, 3, 0).await;
    let run_id = chunks.run_id().to_owned();
    let asked = std::time::Instant::now();
    chunks.cancel();
    let rest = collect(10, chunks).await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "not after the pickup timeout: {:?}",
        asked.elapsed()
    );
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].error.as_ref().unwrap().code, ErrorCode::Cancelled);

    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let again = ticker(&client, 2, 0).await;
    assert_completes(&collect(10, again).await);
    assert_eq!(
        probe.starts.load(Ordering::SeqCst),
        1,
        "only the second run ran"
    );
    assert_eq!(
        collect(10, client.tail(&run_id, None).await.unwrap()).await,
        rest
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_run_longer_than_the_visibility_timeout_completes_once() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    // Two workers: the idle one must not take the long run from the busy one.
    let a = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let b = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let chunks = ticker(&client, 40, 100).await;
    let chunks = collect(30, chunks).await; // 4 s: over twice the 1.5 s visibility timeout
    assert_contract(&chunks);
    assert_eq!(starts(&chunks).len(), 1);
    assert_eq!(chunks.len(), 42);
    assert_eq!(chunks.last().unwrap().kind, ChunkType::Complete);
    assert_eq!(probe.starts.load(Ordering::SeqCst), 1);
    a.stop().await;
    b.stop().await;
}

/// A request whose idle time passed the visibility timeout while its attempt's worker was
/// alive — on a cluster, the queue's node failing over while the run's is fine: the worker
/// renews the lease but cannot reset the request's idle time — is not run again by the worker
/// that claims it: the live lease says the attempt goes on, and the request goes back to the
/// worker holding it, its delivery not counted.
#[tokio::test]
async fn a_request_claimed_while_its_attempt_holds_a_live_lease_goes_back_to_that_worker() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let queued = within(
        10,
        client.invoker().submit(
            "ticker",
            json!({ "count": 5, "delay_ms": 10 }),
            &RunOptions::default(),
        ),
    )
    .await
    .expect("queued");
    let queue = client.keys().queue("ticker", 0);
    let entry = queued.entry_id.to_string();
    let mut plain = server.plain();
    // "ghost" stands for the live worker: it took the request and renews the lease.
    let _: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&queue)
        .arg(loom_redis::GROUP)
        .arg(0)
        .arg("MKSTREAM")
        .query(&mut plain);
    take_as(&mut plain, &queue, "ghost", 1);
    // Its idle time far past the visibility timeout, as after a long failover.
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&queue)
        .arg(loom_redis::GROUP)
        .arg("ghost")
        .arg(0)
        .arg(&entry)
        .arg("IDLE")
        .arg(100_000)
        .arg("JUSTID")
        .query(&mut plain)
        .unwrap();
    let lease = client.keys().lease(&queued.run_id);
    let token = format!("ghost:1:{entry}");
    let renew = {
        let url = server.url().to_owned();
        let (lease, token) = (lease.clone(), token.clone());
        tokio::spawn(async move {
            let mut conn = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            loop {
                let _: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(&lease)
                    .arg(&token)
                    .arg("PX")
                    .arg(800)
                    .query_async(&mut conn)
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    // The worker's sweep claims the request (it looks abandoned), then hands it back.
    let pending = within(10, async {
        loop {
            let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(&queue)
                .arg(loom_redis::GROUP)
                .arg("-")
                .arg("+")
                .arg(10)
                .query(&mut server.plain())
                .unwrap();
            if pending
                .first()
                .is_some_and(|(_, _, idle, _)| *idle < 100_000)
            {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // A few more beats: nothing else happens to it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(probe.starts.load(Ordering::SeqCst), 0, "run again");
    let (_, consumer, _, deliveries) = &pending[0];
    assert_eq!(
        (consumer.as_str(), *deliveries),
        ("ghost", 1),
        "{pending:?}"
    );
    let held: Option<String> = redis::cmd("GET").arg(&lease).query(&mut plain).unwrap();
    assert_eq!(held.as_deref(), Some(token.as_str()));
    renew.abort();
    worker.stop().await;
}

#[tokio::test]
async fn a_queue_whose_pending_list_cannot_be_read_does_not_stop_its_runs_lease_renewals() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let mut chunks = ticker(&client, 30, 100).await;
    let mut seen = take(&mut chunks, 2).await;
    // The queue becomes unreadable while the run goes on (as when its shard's node fails
    // over): the heartbeat cannot read the pending list, and must renew the lease anyway.
    let queue = client.keys().queue("ticker", 0);
    let mut conn = redis::Client::open(server.url())
        .expect("url")
        .get_connection()
        .expect("connect");
    redis::pipe()
        .cmd("DEL")
        .arg(&queue)
        .cmd("SET")
        .arg(&queue)
        .arg("not a stream")
        .query::<()>(&mut conn)
        .expect("replace the queue");
    // 3 s to go: almost four lease lifetimes (0.8 s).
    seen.extend(collect(30, chunks).await);
    assert_contract(&seen);
    assert_eq!(starts(&seen).len(), 1, "{seen:?}");
    assert_eq!(seen.len(), 32);
    assert_eq!(seen.last().map(|c| c.kind), Some(ChunkType::Complete));
    worker.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_held_runs_or_hands_them_back() {
    let server = RedisServer::start();
    let client = client(&server, recovery_options()).await;
    let probe = Arc::new(Probe::default());

    // Finish: the run completes before the worker returns.
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let mut chunks = ticker(&client, 20, 20).await;
    let mut seen = take(&mut chunks, 2).await;
    worker.stop().await;
    seen.extend(collect(10, chunks).await);
    assert_contract(&seen);
    assert_eq!(starts(&seen).len(), 1);
    assert_eq!(seen.last().unwrap().kind, ChunkType::Complete);

    // Hand back: past the grace, another worker continues the stream as attempt 2.
    let options = WorkerOptions {
        shutdown_grace: Duration::from_millis(100),
        ..WorkerOptions::default()
    };
    let leaving = RunningWorker::spawn(&client, runtime(&probe), options);
    let mut chunks = ticker(&client, 30, 20).await;
    let mut seen = take(&mut chunks, 3).await;
    leaving.stop().await;
    let staying = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    seen.extend(collect(20, chunks).await);
    assert_contract(&seen);
    let starts = starts(&seen);
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[1].attempt, Some(2));
    assert_eq!(seen.last().unwrap().kind, ChunkType::Complete);
    staying.stop().await;
}

#[tokio::test]
async fn an_abandoned_request_behind_many_live_ones_is_still_recovered() {
    let server = RedisServer::start();
    let client = client(
        &server,
        ClientOptions {
            pickup_timeout: Duration::from_secs(30),
            ..fast_options()
        },
    )
    .await;
    let queue = client.keys().queue("echo", 0);
    let group = client.keys().group();
    let mut plain = server.plain();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&queue)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut plain)
        .unwrap();
    // Fifteen requests held by a live consumer (kept fresh below), ahead of the abandoned one
    // in the pending list: more than one scan of a one-slot worker looks at.
    let mut busy = Vec::new();
    for _ in 0..15 {
        let id: String = redis::cmd("XADD")
            .arg(&queue)
            .arg("*")
            .arg("x")
            .arg("1")
            .query(&mut plain)
            .unwrap();
        busy.push(id);
    }
    take_as(&mut plain, &queue, "busy", 15);
    let chunks = client
        .invoker()
        .stream("echo", json!({ "late": true }), RunOptions::default())
        .await
        .unwrap();
    // A consumer that takes the request and dies.
    take_as(&mut plain, &queue, "dead", 1);
    let keep_fresh = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let refresher = {
        let keep_fresh = Arc::clone(&keep_fresh);
        let mut conn = server.plain();
        let queue = queue.clone();
        std::thread::spawn(move || {
            while keep_fresh.load(Ordering::SeqCst) {
                let _: redis::Value = redis::cmd("XCLAIM")
                    .arg(&queue)
                    .arg(group)
                    .arg("busy")
                    .arg(0)
                    .arg(&busy)
                    .arg("JUSTID")
                    .query(&mut conn)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // Past the visibility timeout, only the dead consumer's request is claimable: wait until
    // Redis says so.
    let visibility = client.options().visibility_timeout.as_millis() as u64;
    within(10, async {
        loop {
            let idle: Vec<redis::Value> = redis::cmd("XPENDING")
                .arg(&queue)
                .arg(group)
                .arg("IDLE")
                .arg(visibility)
                .arg("-")
                .arg("+")
                .arg(10)
                .arg("dead")
                .query(&mut plain)
                .unwrap();
            if !idle.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(
        &client,
        runtime(&probe),
        WorkerOptions {
            actors: vec!["echo".to_owned()],
            concurrency: 1,
            ..WorkerOptions::default()
        },
    );
    let chunks = collect(10, chunks).await;
    keep_fresh.store(false, Ordering::SeqCst);
    refresher.join().unwrap();
    assert_contract(&chunks);
    assert_completes(&chunks);
    assert_eq!(chunks[0].attempt, Some(2), "{chunks:?}");
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_holding_more_runs_than_one_heartbeat_call_renews_keeps_every_one() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    // More runs than one renewal call, one XCLAIM or one XPENDING page takes: a page or a
    // slice left out would stop runs as taken over, and a claim left out lets the idle
    // worker below take them after the visibility timeout.
    let runs = 300;
    let busy = RunningWorker::with_concurrency(&client, &probe, runs);
    let streams = futures::future::join_all((0..runs).map(|_| ticker(&client, 40, 100))).await;
    within(30, async {
        while (probe.starts.load(Ordering::SeqCst) as usize) < runs {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let idle = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    // 4 s a run: over twice the 1.5 s visibility timeout.
    let seen =
        futures::future::join_all(streams.into_iter().map(|chunks| collect(60, chunks))).await;
    for chunks in &seen {
        assert_contract(chunks);
        assert_eq!(starts(chunks).len(), 1, "{chunks:?}");
        assert_eq!(chunks.len(), 42);
        assert_eq!(chunks.last().unwrap().kind, ChunkType::Complete);
    }
    assert_eq!(probe.starts.load(Ordering::SeqCst) as usize, runs);
    busy.stop().await;
    idle.stop().await;
}
