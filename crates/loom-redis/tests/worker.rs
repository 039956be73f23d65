//! Worker limits: a worker never holds more requests than it can run, and it stops cleanly
//! even when Redis is unreachable.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use loom_core::{ChunkType, RunOptions};
use loom_redis::{ClientOptions, WorkerOptions};
use serde_json::json;
use support::*;

#[tokio::test]
async fn a_worker_with_one_slot_serving_two_queues_runs_both_requests_as_attempt_1() {
    let server = RedisServer::start();
    // A visibility timeout far beyond the bound below: a request stranded in this worker's
    // pending list would only run again, as attempt 2, after it.
    let client = client(
        &server,
        ClientOptions {
            visibility_timeout: Duration::from_secs(8),
            pickup_timeout: Duration::from_secs(20),
            ..fast_options()
        },
    )
    .await;
    let invoker = client.invoker();
    // Both requests are queued before the worker's first read, so one read can return both.
    let ticks = invoker
        .stream(
            "ticker",
            json!({ "count": 5, "delay_ms": 100 }),
            RunOptions::default(),
        )
        .await
        .unwrap();
    let echo = invoker
        .stream("echo", json!({ "hello": 1 }), RunOptions::default())
        .await
        .unwrap();
    let worker = serving(&client, &["ticker", "echo"], 1);

    let (ticks, echo) = within(5, async {
        tokio::join!(collect(5, ticks), collect(5, echo))
    })
    .await;
    for chunks in [&ticks, &echo] {
        assert_contract(chunks);
        assert_completes(chunks);
        let starts: Vec<_> = chunks
            .iter()
            .filter(|c| c.kind == ChunkType::Start)
            .collect();
        assert_eq!(starts.len(), 1, "{chunks:?}");
        assert_eq!(starts[0].attempt, None, "{chunks:?}");
    }
    worker.stop().await;
}

/// A queue at `max_queued` refuses the next request, keeping nothing of it (no record, no
/// entry in the run index); a request cancelled while it waits gives its place back at once,
/// and once a worker has run the queued ones, requests are taken again.
#[tokio::test]
async fn a_full_queue_refuses_a_request_and_keeps_nothing_of_it() {
    let server = RedisServer::start();
    let client = client(
        &server,
        ClientOptions {
            max_queued: Some(2),
            ..fast_options()
        },
    )
    .await;
    let invoker = client.invoker();
    let options = RunOptions::default();
    let mut queued = Vec::new();
    for n in 0..2 {
        let submitted = invoker.submit("echo", json!({ "n": n }), &options).await;
        queued.push(submitted.expect("room in the queue").run_id);
    }
    let refused = invoker
        .submit("echo", json!({ "n": 2 }), &options)
        .await
        .expect_err("the queue is full");
    assert!(
        matches!(&refused, loom_redis::Error::QueueFull { actor, limit: 2 } if actor == "echo"),
        "{refused:?}"
    );
    assert_eq!(refused.code(), loom_core::ErrorCode::Upstream);
    // Nor does a caller that would have read the run: nothing of it is cancelled, so nothing
    // of it is written (it left a `cancelled` stream and a cancel key for an hour).
    let id = loom_core::new_run_id();
    let streamed = invoker
        .stream(
            "echo",
            json!({ "n": 2 }),
            RunOptions {
                run_id: Some(id.clone()),
                ..RunOptions::default()
            },
        )
        .await
        .expect_err("the queue is full");
    assert!(
        matches!(&streamed, loom_redis::Error::QueueFull { .. }),
        "{streamed:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{id}*"))
        .query(&mut conn)
        .unwrap();
    assert!(left.is_empty(), "keys of a refused run: {left:?}");
    let listed = recent_run_ids(&client).await;
    assert_eq!(
        listed.len(),
        2,
        "only the queued runs are known: {listed:?}"
    );
    assert!(queued.iter().all(|id| listed.contains(id)), "{listed:?}");
    // Another actor type's queue is not this one.
    invoker
        .submit("ticker", json!({ "count": 1 }), &options)
        .await
        .expect("its own queue has room");
    // A request cancelled while it waits gives its place back at once.
    let cancelled = queued.pop().expect("two queued");
    client.cancel(&cancelled).await.unwrap();
    let again = invoker.submit("echo", json!({ "n": 4 }), &options).await;
    queued.push(again.expect("the cancelled request's place").run_id);

    let worker = serving(&client, &["echo", "ticker"], 2);
    for id in &queued {
        let entries = within(10, invoker.attach(id, None)).await.unwrap();
        let chunks = collect(10, entries.map(|e| e.chunk)).await;
        assert_completes(&chunks);
    }
    // The finished requests left the queue: there is room again.
    within(10, async {
        loop {
            match invoker.submit("echo", json!({ "n": 3 }), &options).await {
                Ok(_) => break,
                Err(loom_redis::Error::QueueFull { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_stopped_while_redis_is_unreachable_returns_without_panicking() {
    // Its own server, whatever LOOM_TEST_REDIS_URL says: this test freezes it.
    let server = RedisServer::start_own();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    // Wait for its blocking read of the (empty) queues.
    wait_until_blocked_in(&server, "xreadgroup").await;
    server.pause();
    // Redis frozen for a while (not a synchronisation): the worker must not exit over it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(worker.is_running());
    // The signal arrives during the blocked read; unblocking and the read itself fail.
    within(20, worker.stop()).await;
    server.resume();
}

/// A worker says which actor types it serves for one lease at a time; one that stops takes its
/// own word back at once (another's stands), and one that dies lets it lapse.
#[tokio::test]
async fn a_worker_advertises_the_actor_types_it_serves_and_takes_them_back_when_it_stops() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    assert!(client.served_actors().await.unwrap().is_empty());
    let concurrency = WorkerOptions::default().concurrency;
    let first = serving(&client, &["echo"], concurrency);
    let second = serving(&client, &["echo", "ticker"], concurrency);
    let served = || async {
        client
            .served_actors()
            .await
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>()
    };
    within(5, async {
        while served().await != ["echo", "ticker"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Stopped: its `ticker` is gone at once, the other worker's `echo` stands.
    second.stop().await;
    assert_eq!(served().await, ["echo"]);
    // Killed: nothing takes its word back, and it lapses after one lease (800 ms here).
    first.kill().await;
    assert_eq!(served().await, ["echo"]);
    within(5, async {
        while !served().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A caller counts only the workers that read the queues it writes to: with another number of
/// queue shards its requests would wait in queues nobody reads, and it can say why.
#[tokio::test]
async fn a_type_served_on_another_number_of_queue_shards_is_not_served_to_this_caller() {
    let server = RedisServer::start();
    let options = fast_options();
    let four = ClientOptions {
        queue_shards: 4,
        ..options.clone()
    };
    let one = client(&server, options).await;
    let four = client(&server, four).await;
    let worker = serving(&one, &["echo"], 1);
    within(5, async {
        while !one.served_actors().await.unwrap().contains("echo") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(four.served_actors().await.unwrap().is_empty());
    let shards: Vec<u16> = four
        .queue_shards_served("echo")
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(shards, [1]);
    assert!(four.queue_shards_served("ticker").await.unwrap().is_empty());
    worker.stop().await;
    assert!(one.served_actors().await.unwrap().is_empty(), "withdrawn");
}

#[tokio::test]
async fn a_run_past_its_cap_of_chunks_or_bytes_ends_with_a_clear_error() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    for (max_run_chunks, max_run_bytes) in [(50, u64::MAX), (u64::MAX, 1_000)] {
        let probe = Arc::new(Probe::default());
        let worker = RunningWorker::spawn(
            &client,
            runtime(&probe),
            WorkerOptions {
                max_run_chunks,
                max_run_bytes,
                ..WorkerOptions::default()
            },
        );
        let chunks = collect(10, ticker(&client, 100_000, 0).await).await;
        assert_contract(&chunks);
        let last = chunks.last().unwrap();
        let error = last.error.as_ref().expect("an error chunk");
        assert_eq!(error.code, loom_core::ErrorCode::ActorFailed, "{last:?}");
        assert!(error.message.contains("cap"), "{}", error.message);
        assert!(chunks.len() < 200, "stopped at the cap: {}", chunks.len());
        if max_run_chunks == 50 {
            assert_eq!(
                last.seq, 50,
                "the error takes the place of the chunk that did not fit"
            );
        }
        worker.stop().await;
    }
    // A result past the byte cap is refused like any chunk: the run's terminal is the cap's
    // error, not the 5 kB `complete`.
    let probe = Arc::new(Probe::default());
    let capped = WorkerOptions {
        max_run_bytes: 1_000,
        ..WorkerOptions::default()
    };
    let worker = RunningWorker::spawn(&client, runtime(&probe), capped);
    let input = json!({ "text": "x".repeat(5_000) });
    let chunks = within(
        10,
        client.invoker().stream("echo", input, Default::default()),
    )
    .await
    .expect("the request is queued");
    let chunks = collect(10, chunks).await;
    assert_contract(&chunks);
    let last = chunks.last().unwrap();
    let error = last.error.as_ref().expect("an error chunk, not the result");
    assert!(error.message.contains("cap"), "{}", error.message);
    worker.stop().await;
    // A cap no run could keep is refused at start.
    for (max_run_chunks, max_run_bytes) in [(1, u64::MAX), (u64::MAX, 0)] {
        let options = WorkerOptions {
            max_run_chunks,
            max_run_bytes,
            ..WorkerOptions::default()
        };
        let worker = loom_redis::Worker::new(client.clone(), runtime(&probe), options);
        let refused = within(5, worker.run(std::future::pending())).await;
        assert!(
            matches!(refused, Err(loom_redis::Error::InvalidOptions(_))),
            "{refused:?}"
        );
    }
}

/// The connections named `loom-writer` that `server` has now.
fn writer_connections(server: &RedisServer) -> usize {
    let mut conn = server.plain();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    list.lines()
        .filter(|l| l.contains(" name=loom-writer "))
        .count()
}

#[tokio::test]
async fn a_worker_running_more_runs_than_writer_connections_keeps_within_them_and_loses_nothing() {
    let server = RedisServer::start_own();
    // Leases far longer than the test: it is about connections, and with the fast ones a
    // machine busy with other tests (64 runs writing flat out, a debug build) can delay a
    // heartbeat past its lease, and the run is taken over.
    let options = ClientOptions {
        lease_ttl: Duration::from_secs(10),
        lease_refresh: Duration::from_secs(1),
        visibility_timeout: Duration::from_secs(20),
        pickup_timeout: Duration::from_secs(30),
        ..fast_options()
    };
    let client = client(&server, options).await;
    let probe = Arc::new(Probe::default());
    let runs = 2 * loom_redis::WRITER_CONNECTIONS;
    let worker = RunningWorker::with_concurrency(&client, &probe, runs);
    // Every run writes as fast as Redis answers, so nearly all of them have a batch in
    // flight at any time: one connection per run would open about `runs` of them.
    let streams = futures::future::join_all((0..runs).map(|_| ticker(&client, 2_000, 0))).await;
    let reading = tokio::spawn(futures::future::join_all(
        streams.into_iter().map(|chunks| collect(60, chunks)),
    ));
    let mut most = 0;
    while !reading.is_finished() {
        most = most.max(writer_connections(&server));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for chunks in reading.await.unwrap() {
        assert_completes(&chunks);
        assert_contract(&chunks);
    }
    assert!(most > 0, "the runs wrote on writer connections");
    assert!(
        most <= loom_redis::WRITER_CONNECTIONS,
        "{most} writer connections open at once"
    );
    assert!(writer_connections(&server) <= loom_redis::WRITER_CONNECTIONS);
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_takes_about_as_many_requests_as_it_has_free_slots_whatever_its_queues() {
    let server = RedisServer::start();
    // Two free slots over two queues, and one over two: fewer slots than queues.
    for concurrency in [2, 1] {
        let client = client(&server, fast_options()).await;
        let invoker = client.invoker();
        // Four slow requests in each of two queues, before the worker's first read.
        let mut streams = Vec::new();
        for actor in ["ticker", "batch"] {
            for _ in 0..4 {
                let input = match actor {
                    "ticker" => json!({ "count": 30, "delay_ms": 100 }),
                    _ => json!({ "count": 30, "batch_size": 1, "delay_ms": 100 }),
                };
                streams.push(
                    invoker
                        .stream(actor, input, RunOptions::default())
                        .await
                        .unwrap(),
                );
            }
        }
        let worker = serving(&client, &["ticker", "batch"], concurrency);
        tokio::time::sleep(Duration::from_millis(800)).await;
        // Taken by this worker: its runs, and none held back from other workers.
        let mut conn = server.plain();
        let taken: i64 = ["ticker", "batch"]
            .iter()
            .map(|actor| {
                let (count, ..): (i64, redis::Value, redis::Value, redis::Value) =
                    redis::cmd("XPENDING")
                        .arg(client.keys().queue(actor, 0))
                        .arg(loom_redis::GROUP)
                        .query(&mut conn)
                        .unwrap();
                count
            })
            .sum();
        assert_eq!(
            taken, concurrency as i64,
            "requests taken with {concurrency} free slots"
        );
        drop(streams);
        worker.stop().await;
    }
}

/// With one free slot over two queues, requests in either are served, one at a time, none
/// waiting behind an empty queue.
#[tokio::test]
async fn one_free_slot_serves_every_queue_in_turn() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let worker = serving(&client, &["ticker", "echo"], 1);
    let invoker = client.invoker();
    for round in 0..3 {
        let echo = invoker
            .stream("echo", json!({ "round": round }), RunOptions::default())
            .await
            .unwrap();
        let ticks = ticker(&client, 2, 10).await;
        let (echo, ticks) = within(5, async {
            tokio::join!(collect(5, echo), collect(10, ticks))
        })
        .await;
        assert_completes(&echo);
        assert_completes(&ticks);
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_run_a_reader_ended_from_outside_is_acknowledged_at_once() {
    let server = RedisServer::start();
    // A visibility timeout far beyond the bound below: only the worker's own acknowledgement
    // can empty the pending list in time.
    let client = client(
        &server,
        ClientOptions {
            visibility_timeout: Duration::from_secs(20),
            pickup_timeout: Duration::from_secs(30),
            ..fast_options()
        },
    )
    .await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::with_concurrency(&client, &probe, 1);
    let mut ticks = client
        .invoker()
        .stream(
            "ticker",
            json!({ "count": 200, "delay_ms": 50 }),
            RunOptions::default(),
        )
        .await
        .unwrap();
    let run_id = ticks.run_id().to_owned();
    let mut seen = 0;
    while seen < 3 {
        within(5, ticks.next()).await.expect("a chunk");
        seen += 1;
    }
    // What a reader does when it gives the worker up: the terminal, then the cancel key.
    let mut conn = server.plain();
    let key = client.keys().stream(&run_id);
    let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(&key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let next: u64 = last[0].0.split('-').next().unwrap().parse::<u64>().unwrap() + 1;
    let error = r#"{"code":"worker_lost","message":"gone","retryable":false}"#;
    let _: redis::Value = redis::pipe()
        .cmd("XADD")
        .arg(&key)
        .arg(format!("{next}-1"))
        .arg("type")
        .arg("error")
        .arg("data")
        .arg("null")
        .arg("seq")
        .arg(next)
        .arg("error")
        .arg(error)
        .cmd("SET")
        .arg(client.keys().cancel(&run_id))
        .arg("worker_lost")
        .query(&mut conn)
        .unwrap();
    let queue = client.keys().queue("ticker", 0);
    within(5, async {
        loop {
            let (count, ..): (i64, redis::Value, redis::Value, redis::Value) =
                redis::cmd("XPENDING")
                    .arg(&queue)
                    .arg(loom_redis::GROUP)
                    .query(&mut server.plain())
                    .unwrap();
            if count == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    worker.stop().await;
}

/// A run whose request vanished from the queue's pending list while it ran (the queue key
/// deleted, and its group made again empty; a failover that lost the entry) goes on to its
/// end: its lease, not the pending list, says whose it is.
#[tokio::test]
async fn a_run_whose_queue_was_deleted_under_it_goes_on_to_its_end() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let mut stream = ticker(&client, 20, 100).await;
    let first = within(5, stream.next()).await.expect("start");
    assert_eq!(first.kind, ChunkType::Start);
    let queue = client.keys().queue("ticker", 0);
    let deleted: i64 = redis::cmd("DEL")
        .arg(&queue)
        .query(&mut server.plain())
        .unwrap();
    assert_eq!(deleted, 1);
    let mut chunks = vec![first];
    chunks.extend(within(10, collect(40, stream)).await);
    assert_contract(&chunks);
    assert_completes(&chunks);
    worker.stop().await;
}

/// One queue that cannot be read (its key overwritten with a string) is left out of the
/// worker's reads; the others go on being served.
#[tokio::test]
async fn a_queue_that_cannot_be_read_does_not_stop_the_others() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let worker = serving(
        &client,
        &["ticker", "echo"],
        WorkerOptions::default().concurrency,
    );
    // Served first, then its queue key is overwritten while the worker reads it.
    let first = ticker(&client, 2, 10).await;
    assert_completes(&within(5, collect(10, first)).await);
    let _: () = redis::cmd("SET")
        .arg(client.keys().queue("echo", 0))
        .arg("not a stream")
        .query(&mut server.plain())
        .unwrap();
    for _ in 0..3 {
        let chunks = within(5, collect(10, ticker(&client, 2, 10).await)).await;
        assert_contract(&chunks);
        assert_completes(&chunks);
    }
    worker.stop().await;
}

/// A worker that stops leaves its queue's consumer group; a killed one stays in it until
/// another worker finds it idle for two visibility timeouts (3 s here) with nothing pending.
/// Regression test for the groups that kept the name of every worker that ever read them.
#[tokio::test]
async fn workers_that_are_gone_leave_the_queues_consumer_group() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let queue = client.keys().queue("echo", 0);
    let group = client.keys().group();
    let mut conn = server.plain();
    let mut consumers = || -> Vec<String> {
        let rows: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&queue)
            .arg(group)
            .query(&mut conn)
            .unwrap();
        rows.iter()
            .map(|row| redis::from_redis_value(row["name"].clone()).unwrap())
            .collect()
    };
    let echo = || async {
        let chunks = client
            .invoker()
            .stream("echo", json!({}), RunOptions::default())
            .await
            .unwrap();
        assert_completes(&collect(10, chunks).await);
    };

    let stopped = serving(&client, &["echo"], 1);
    echo().await;
    assert_eq!(consumers().len(), 1);
    stopped.stop().await;
    assert_eq!(consumers(), Vec::<String>::new(), "a stopped worker leaves");

    let killed = serving(&client, &["echo"], 1);
    echo().await;
    let dead = consumers();
    assert_eq!(dead.len(), 1);
    killed.kill().await;
    let live = serving(&client, &["echo"], 1);
    echo().await;
    assert_eq!(consumers().len(), 2, "{:?}", consumers());
    within(10, async {
        while consumers().contains(&dead[0]) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(
        consumers().len(),
        1,
        "the live worker stays: {:?}",
        consumers()
    );
    live.stop().await;
}

/// A worker serving only `actors`, running at most `concurrency` runs at once.
fn serving(client: &loom_redis::Client, actors: &[&str], concurrency: usize) -> RunningWorker {
    let options = WorkerOptions {
        actors: actors.iter().map(|a| (*a).to_owned()).collect(),
        concurrency,
        ..WorkerOptions::default()
    };
    RunningWorker::spawn(client, runtime(&Arc::new(Probe::default())), options)
}
