//! The remote path on a real Redis Cluster started on loopback (3 masters; 3 replicas for the
//! failover test): the core cases of the single-server suite — local and remote runs agree,
//! replay and two readers, cancel, a dead worker's run re-run, `worker_lost` — plus sharded
//! queues, the reader's bounded connections, and a master killed mid-stream.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use loom_core::{ChunkStream, ChunkType, ErrorCode, Extensions, Registry, RunOptions, Runtime};
use loom_redis::{Client, ClientOptions, WorkerOptions, BUCKETS};
use serde_json::json;
use support::*;

async fn connect(url: &str, options: ClientOptions) -> Client {
    let client = within(15, Client::connect_with(url, options))
        .await
        .expect("connect to the cluster");
    assert!(client.is_cluster(), "{url} was not taken for a cluster");
    client
}

/// The address of a TCP server that answers anything with an HTTP error, as a web server does.
async fn not_redis() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, answer).await;
        }
    });
    addr
}

/// A cluster of 3 masters without replicas, and a client through its first node.
async fn cluster(options: ClientOptions) -> (RedisCluster, Client) {
    let cluster = RedisCluster::start_with(3, 0);
    let client = connect(&cluster.url(), options).await;
    (cluster, client)
}

#[tokio::test]
async fn local_and_remote_runs_agree_and_runs_spread_over_the_masters() {
    let (cluster, client) = cluster(fast_options()).await;
    // A list of nodes is a cluster too.
    let listed = connect(&cluster.urls(), client.options().clone()).await;
    // A server outside cluster mode in a list is refused, not read from as a node; a bad
    // entry is named by its place (not quoted: it may hold a password).
    let single = RedisServer::start_own();
    // Nor are nodes of two clusters: a worker would serve one while its callers waited on
    // the other.
    let other = RedisCluster::start_with(3, 0);
    for (list, says) in [
        (
            format!("{},{}", single.url(), cluster.url()),
            "not in cluster mode",
        ),
        (
            format!("{},{}", other.url(), cluster.url()),
            "are nodes of different clusters",
        ),
        (format!("{},", cluster.url()), "entry 2 of 2"),
        (
            format!("redis://{},{}", not_redis().await, cluster.url()),
            "does not speak Redis",
        ),
    ] {
        let refused = within(15, Client::connect_with(&list, client.options().clone()))
            .await
            .expect_err("refused");
        assert!(
            matches!(refused, loom_redis::Error::InvalidOptions(_)),
            "{refused}"
        );
        assert!(refused.to_string().contains(says), "{refused}");
    }
    // A node that takes connections and never answers is left out of a list, not waited for
    // (the 3 s response timeout) by every command that meets it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let started = std::time::Instant::now();
    let with_silent = format!("redis://{},{}", silent_addr, cluster.url());
    let with_silent = connect(&with_silent, client.options().clone()).await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "connecting waited for the silent node: {:?}",
        started.elapsed()
    );
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let input = json!({ "count": 120, "batch_size": 40, "delay_ms": 0 });
    let local = Runtime::new(Registry::with_builtins(), Extensions::new());
    let mut masters = HashSet::new();
    for caller in [&client, &listed, &with_silent, &listed, &client, &listed] {
        let run_id = loom_core::new_run_id();
        let options = || RunOptions {
            run_id: Some(run_id.clone()),
            ..RunOptions::default()
        };
        let here = collect(30, local.stream("batch", input.clone(), options()).unwrap()).await;
        let remote = caller
            .invoker()
            .stream("batch", input.clone(), options())
            .await
            .unwrap();
        masters.insert(cluster.master_of(&client.keys().stream(&run_id)));
        let remote = collect(30, remote).await;
        assert_contract(&remote);
        assert_eq!(here, remote);
    }
    // Six runs' buckets, each on the master owning its slot: hardly ever all on one.
    for _ in 0..30 {
        let id = loom_core::new_run_id();
        masters.insert(cluster.master_of(&client.keys().stream(&id)));
    }
    assert_eq!(masters.len(), 3, "the buckets should reach every master");
    worker.stop().await;
    held.abort();
}

#[tokio::test]
async fn a_stream_replays_and_serves_two_readers_and_many_streams_share_few_connections() {
    let (cluster, client) = cluster(fast_options()).await;
    let probe = Arc::new(Probe::default());
    // Room for all 200 streams below at once: a request left queued behind 3-second runs for
    // longer than the pickup timeout (6 s here) would rightly end `worker_lost`.
    let worker = RunningWorker::with_concurrency(&client, &probe, 256);
    read_twice(&client).await;

    // 200 live streams over every bucket: the reader blocks in at most one XREAD per bucket.
    let before = blocked_xreads(&cluster);
    let mut streams = Vec::new();
    for _ in 0..200 {
        streams.push(ticker(&client, 1, 3000).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = blocked_xreads(&cluster) - before;
    assert!(
        (1..=BUCKETS).contains(&during),
        "{during} blocked XREADs for 200 streams"
    );
    for stream in streams {
        let chunks = collect(30, stream).await;
        assert_completes(&chunks);
    }
    worker.stop().await;
}

/// How many clients of all the cluster's nodes are blocked in `XREAD` now.
fn blocked_xreads(cluster: &RedisCluster) -> usize {
    cluster
        .urls()
        .split(',')
        .map(|url| {
            let port = url
                .trim_end_matches('/')
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("a node URL with a port");
            clients(cluster, port)
                .iter()
                .filter(|l| l.contains(" cmd=xread ") && l.contains(" flags=b "))
                .count()
        })
        .sum()
}

/// Asserts that a writer connection of Loom's own (not the cluster connection) wrote on node
/// `port`.
fn assert_a_writer_of_its_own_wrote_on(cluster: &RedisCluster, port: u16) {
    let writers = clients(cluster, port);
    assert!(
        writers
            .iter()
            .any(|l| l.contains(" name=loom-writer ") && l.contains(" cmd=evalsha ")),
        "no writer connection of its own wrote on node {port}: {writers:#?}"
    );
}

/// The clients of node `port`, a `CLIENT LIST` line each.
fn clients(cluster: &RedisCluster, port: u16) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut cluster.node(port))
        .expect("CLIENT LIST");
    list.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn cancel_reaches_the_worker_whatever_node_it_listens_on() {
    let (cluster, client) = cluster(fast_options()).await;
    // The worker connects through another node than the caller.
    let urls = cluster.urls();
    let last = urls.split(',').next_back().unwrap().to_owned();
    let worker_client = connect(&last, client.options().clone()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&worker_client, runtime(&probe), WorkerOptions::default());

    for _ in 0..3 {
        let mut chunks = ticker(&client, 1000, 20).await;
        let mut seen = Vec::new();
        while seen.len() < 4 {
            seen.push(within(10, chunks.next()).await.unwrap());
        }
        chunks.cancel();
        seen.extend(collect(10, chunks).await);
        assert_contract(&seen);
        let last = seen.last().unwrap();
        assert_eq!(last.error.as_ref().unwrap().code, ErrorCode::Cancelled);
    }
    assert!(probe.cancelled_at.lock().unwrap().is_some());
    worker.stop().await;
}

#[tokio::test]
async fn a_dead_workers_run_is_rerun_and_with_no_worker_left_the_reader_gets_worker_lost() {
    let (_cluster, client) = cluster(fast_options()).await;
    let probe = Arc::new(Probe::default());
    let first = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let mut chunks = ticker(&client, 30, 20).await;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(within(10, chunks.next()).await.unwrap());
    }
    first.kill().await;
    let second = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    seen.extend(collect(20, chunks).await);
    assert_contract(&seen);
    let attempts: Vec<_> = seen
        .iter()
        .filter(|c| c.kind == ChunkType::Start)
        .map(|c| c.attempt)
        .collect();
    assert_eq!(attempts, [None, Some(2)], "{seen:?}");
    assert_eq!(seen.last().unwrap().kind, ChunkType::Complete);

    let mut chunks = ticker(&client, 1000, 20).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(within(10, chunks.next()).await.unwrap());
    }
    second.kill().await;
    seen.extend(collect(15, chunks).await);
    assert_contract(&seen);
    let last = seen.last().unwrap();
    assert_eq!(last.error.as_ref().unwrap().code, ErrorCode::WorkerLost);
}

#[tokio::test]
async fn sharded_queues_spread_one_type_over_the_nodes_and_every_shard_is_served() {
    let options = ClientOptions {
        queue_shards: 6,
        ..fast_options()
    };
    let (cluster, client) = cluster(options).await;
    let keys = client.keys();
    let shards: HashSet<u16> = (0..6)
        .map(|k| cluster.master_of(&keys.queue("ticker", k)))
        .collect();
    assert!(shards.len() >= 2, "six shards on one master");

    let probe = Arc::new(Probe::default());
    let workers: Vec<_> = (0..2)
        .map(|_| RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default()))
        .collect();
    let mut runs = Vec::new();
    for _ in 0..48 {
        runs.push(ticker(&client, 3, 1).await);
    }
    let mut used = HashSet::new();
    for run in runs {
        used.insert(keys.queue_for("ticker", run.run_id(), 6));
        let chunks = collect(30, run).await;
        assert_contract(&chunks);
        assert_eq!(chunks.last().unwrap().kind, ChunkType::Complete);
    }
    assert!(used.len() >= 4, "48 runs used only {} shards", used.len());
    assert_eq!(probe.starts.load(Ordering::SeqCst), 48);
    for worker in workers {
        worker.stop().await;
    }
}

/// `count` run ids whose keys share one bucket (so one slot).
fn ids_in_one_bucket(client: &Client, count: usize) -> Vec<String> {
    let first = loom_core::new_run_id();
    let mut ids = vec![first.clone()];
    while ids.len() < count {
        ids.push(id_in_bucket_of(client, &first));
    }
    ids
}

/// The hash tag of run `id`'s keys (its bucket's).
fn bucket_tag(client: &Client, id: &str) -> String {
    let stream = client.keys().stream(id);
    stream.split('}').next().unwrap_or_default().to_owned()
}

/// Starts `ticker` remotely as run `run_id`.
async fn ticker_as(client: &Client, run_id: &str, count: u64, delay_ms: u64) -> ChunkStream {
    let options = RunOptions {
        run_id: Some(run_id.to_owned()),
        ..RunOptions::default()
    };
    let input = json!({ "count": count, "delay_ms": delay_ms });
    within(10, client.invoker().stream("ticker", input, options))
        .await
        .expect("the request is queued")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_follow_their_bucket_when_its_slot_moves_to_another_master() {
    let (cluster, client) = cluster(fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    // Four runs in one bucket, and a fifth for after: read and written while its slot moves.
    let ids = ids_in_one_bucket(&client, 5);
    let mut readers = Vec::new();
    for id in &ids[..4] {
        let run = ticker_as(&client, id, 60, 40).await;
        readers.push(tokio::spawn(collect(60, run)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let key = client.keys().stream(&ids[0]);
    // Keys move a few at a time with pauses: clients meet ASK, TRYAGAIN, then MOVED.
    let (from, to) =
        tokio::task::block_in_place(|| cluster.move_slot_of(&key, Duration::from_millis(100)));
    assert_ne!(from, to);
    assert_eq!(cluster.master_of(&key), to);
    for reader in readers {
        let chunks = reader.await.expect("a reader never hangs");
        assert_contract(&chunks);
        // A run whose lease or request could not be renewed while its keys were split
        // between the nodes may have been run again (a second `start`, `seq` going on).
        assert_completes(&chunks);
    }
    // A new run in the moved bucket runs on its new master, and its writer writes there on a
    // connection of its own (its first batch may go through the cluster connection, after
    // the `MOVED` that names the new master).
    let chunks = collect(30, ticker_as(&client, &ids[4], 3, 1).await).await;
    assert_eq!(chunks.last().unwrap().kind, ChunkType::Complete);
    assert_a_writer_of_its_own_wrote_on(&cluster, to);
    worker.stop().await;
}

#[tokio::test]
async fn a_master_killed_mid_stream_never_leaves_a_reader_hanging_or_repeats_a_seq() {
    let mut cluster = RedisCluster::start();
    // Leases long enough to outlast a failover (about 3 s here).
    let options = ClientOptions {
        lease_ttl: Duration::from_secs(5),
        lease_refresh: Duration::from_millis(1000),
        visibility_timeout: Duration::from_secs(6),
        ..fast_options()
    };
    let client = connect(&cluster.url(), options).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let mut runs = Vec::new();
    for _ in 0..12 {
        runs.push(ticker(&client, 80, 50).await);
    }
    let victim = cluster.master_of(&client.keys().stream(runs[0].run_id()));
    let on_victim = runs
        .iter()
        .filter(|r| cluster.master_of(&client.keys().stream(r.run_id())) == victim)
        .count();
    let readers: Vec<_> = runs
        .into_iter()
        .map(|run| tokio::spawn(collect(90, run)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let promoted = cluster.kill_master(victim);
    assert_ne!(promoted, victim);

    let mut completed = 0;
    let mut replayed_whole = 0;
    for reader in readers {
        let chunks = reader.await.expect("a reader never hangs");
        assert_contract(&chunks);
        // A later reader sees the same stream, unless the failover lost entries the old
        // master had acknowledged: then its replay stops at the hole with a clear error,
        // never skipping a seq.
        let run_id = match &chunks[0].data {
            Some(data) => data["run_id"].as_str().unwrap().to_owned(),
            None => panic!("no start: {chunks:?}"),
        };
        let replay = collect(30, client.tail(&run_id, Some("0")).await.unwrap()).await;
        assert_contract(&replay);
        if replay == chunks {
            replayed_whole += 1;
        } else {
            let at = replay.len() - 1;
            assert_eq!(replay[..at], chunks[..at]);
            assert_eq!(replay[at].error.as_ref().unwrap().code, ErrorCode::Internal);
        }
        let last = chunks.last().unwrap();
        match last.kind {
            ChunkType::Complete => completed += 1,
            ChunkType::Error => {
                let error = last.error.as_ref().unwrap();
                assert!(!error.message.is_empty(), "{error:?}");
            }
            other => panic!("ended with {other:?}"),
        }
    }
    eprintln!(
        "failover: {completed} of 12 streams completed, {replayed_whole} replayed whole, \
         {on_victim} were on the killed master"
    );
    // Runs whose bucket was elsewhere never noticed.
    assert!(completed >= 12 - on_victim, "{completed} completed");
    worker.stop().await;
}

/// A reader whose run's master goes down for good (no replica: the cluster is down) ends with
/// an `upstream` error that says the cluster is down, not only that a read timed out.
#[tokio::test]
async fn a_reader_cut_off_by_a_cluster_that_is_down_is_told_so() {
    let mut cluster = RedisCluster::start_with(3, 0);
    let client = connect(&cluster.url(), fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let mut run = ticker(&client, 400, 50).await;
    let first = within(10, run.next()).await.expect("the start chunk");
    let victim = cluster.master_of(&client.keys().stream(run.run_id()));
    cluster.bring_down(victim);
    let mut chunks = vec![first];
    chunks.extend(collect(60, run).await);
    let last = chunks.last().expect("a terminal chunk");
    let error = last.error.as_ref().expect("an error chunk");
    assert_eq!(error.code, ErrorCode::Upstream, "{error:?}");
    assert!(
        error.message.contains("the Redis cluster is down"),
        "{error:?}"
    );
    worker.stop().await;
}

/// The master of a queue — and of the workers' advertisement and the run index — fails over
/// while runs whose keys are on live masters are in flight: those runs go on where they are.
/// Regression test for every run in flight being re-run from its start: the heartbeat renewed
/// the leases only after reading the queue's pending list, which waited out the dead node,
/// on the command connection, which the failover held up meanwhile, and the leases lapsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_master_failing_over_leaves_the_runs_on_live_masters_alone() {
    // A failover of a few seconds (`cluster-node-timeout` 2 s), against Loom's default timings.
    let mut cluster = RedisCluster::start_slow_to_fail_over(2000);
    // A prefix that puts the queue, the advertisement and the run index on one master.
    let mut prefix;
    let victim = loop {
        prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
        let keys = loom_redis::Keys::new(prefix.clone()).expect("prefix");
        let queue = cluster.master_of(&keys.queue("ticker", 0));
        if cluster.master_of(&keys.actors()) == queue && cluster.master_of(&keys.runs()) == queue {
            break queue;
        }
    };
    let options = ClientOptions {
        prefix,
        ..ClientOptions::default()
    };
    let client = connect(&cluster.url(), options).await;
    let probe = Arc::new(Probe::default());
    let workers: Vec<_> = (0..2)
        .map(|_| RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default()))
        .collect();
    let mut runs = Vec::new();
    while runs.len() < 8 {
        let id = loom_core::new_run_id();
        if cluster.master_of(&client.keys().stream(&id)) != victim {
            runs.push(ticker_as(&client, &id, 200, 50).await);
        }
    }
    let readers: Vec<_> = runs
        .into_iter()
        .map(|run| tokio::spawn(collect(90, run)))
        .collect();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    tokio::task::block_in_place(|| cluster.kill_master(victim));
    for reader in readers {
        let chunks = reader.await.expect("a reader never hangs");
        assert_contract(&chunks);
        assert_completes(&chunks);
        let starts = chunks.iter().filter(|c| c.kind == ChunkType::Start).count();
        assert_eq!(
            starts, 1,
            "a run on a live master was run again: {chunks:?}"
        );
    }
    assert_eq!(probe.starts.load(Ordering::SeqCst), 8, "none run twice");
    for worker in workers {
        worker.stop().await;
    }
}

/// A failover that takes longer than a lease and the visibility timeout — as one on Redis's
/// default `cluster-node-timeout` (15 s) does against the default leases — ended every reader
/// of the dead master's runs `upstream` while the runs went on. Readers now wait out the outage
/// (`outage_timeout`) and read each run to its end, re-run on the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_wait_out_a_failover_longer_than_a_lease_and_read_the_runs_to_their_end() {
    // Redis's default failover (`cluster-node-timeout` 15 s: 16 s and more) against Loom's
    // default timings: 13 s of lease and visibility timeout (which a re-run also has, once
    // Redis answers again, to start writing), 30 s of outage.
    let mut cluster = RedisCluster::start_slow_to_fail_over(15_000);
    let defaults = ClientOptions::default();
    let options = ClientOptions {
        lease_ttl: defaults.lease_ttl,
        lease_refresh: defaults.lease_refresh,
        visibility_timeout: defaults.visibility_timeout,
        outage_timeout: defaults.outage_timeout,
        ..fast_options()
    };
    let client = connect(&cluster.url(), options).await;
    let probe = Arc::new(Probe::default());
    // The default attempt cap (3): attempts that meet the dead master end on Redis's failure,
    // not a lost worker's, and do not count (they used it up before).
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let mut runs = Vec::new();
    for _ in 0..6 {
        runs.push(ticker(&client, 200, 50).await);
    }
    let victim = cluster.master_of(&client.keys().stream(runs[0].run_id()));
    let readers: Vec<_> = runs
        .into_iter()
        .map(|run| tokio::spawn(collect(90, run)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let promoted = tokio::task::block_in_place(|| cluster.kill_master(victim));
    assert_ne!(promoted, victim);
    for reader in readers {
        let chunks = reader.await.expect("a reader never hangs");
        assert_contract(&chunks);
        assert_completes(&chunks);
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_read_for_many_streams_is_read_on_its_bell_and_misses_nothing() {
    let (cluster, client) = cluster(fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::with_concurrency(&client, &probe, 80);
    // More streams in one bucket than its lane names in an `XREAD`: it waits on the bucket's
    // bell, on the master that owns the bucket.
    let ids = ids_in_one_bucket(&client, 70);
    let mut readers = Vec::new();
    // Each long enough (2 s) to be still running when the last one starts, on a loaded
    // machine too: with fewer open at once, the lane names them all and no bell is needed.
    for id in &ids {
        let run = ticker_as(&client, id, 40, 50).await;
        readers.push(tokio::spawn(collect(60, run)));
    }
    for reader in readers {
        let chunks = reader.await.expect("a reader never hangs");
        assert_completes(&chunks);
        assert_contract(&chunks);
    }
    // Every batch rang the bell, which lives with the bucket's keys.
    let bell = client.keys().bell(&ids[0]);
    let rung: usize = redis::cmd("XLEN")
        .arg(&bell)
        .query(&mut cluster.node(cluster.master_of(&bell)))
        .unwrap();
    assert!(rung >= ids.len(), "{bell} has {rung} entries");
    assert_eq!(
        cluster.master_of(&bell),
        cluster.master_of(&client.keys().stream(&ids[0]))
    );
    worker.stop().await;
}

/// A run id in each bucket, in bucket order of first appearance.
fn one_id_per_bucket(client: &Client) -> Vec<String> {
    let mut tags = HashSet::new();
    let mut ids = Vec::new();
    while ids.len() < BUCKETS {
        let id = loom_core::new_run_id();
        if tags.insert(bucket_tag(client, &id)) {
            ids.push(id);
        }
    }
    ids
}

/// Listens on `port` (a dead node's) and counts the connections that name themselves as
/// Loom's writers, until the returned flag is set.
fn count_writers_on(port: u16) -> (Arc<AtomicUsize>, Arc<AtomicBool>) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("the dead node's port");
    listener.set_nonblocking(true).expect("nonblocking");
    let (writers, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (count, stopped) = (Arc::clone(&writers), Arc::clone(&stop));
    std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            let Ok((mut socket, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let _ = socket.set_nonblocking(false);
            let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
            let mut seen = Vec::new();
            let mut buf = [0u8; 512];
            while let Ok(n @ 1..) = std::io::Read::read(&mut socket, &mut buf) {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(11).any(|w| w == b"loom-writer") {
                    count.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            // Dropped unanswered: to the writer, the node is down.
        }
    });
    (writers, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_one_writer_meets_the_dead_master_and_new_runs_write_on_the_new_one() {
    let mut cluster = RedisCluster::start();
    let client = connect(&cluster.url(), fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let ids = one_id_per_bucket(&client);
    // Writers have written to every bucket's master before it fails.
    for id in &ids {
        assert_completes(&collect(30, ticker_as(&client, id, 2, 1).await).await);
    }
    let victim = cluster.master_of(&client.keys().stream(&ids[0]));
    let promoted = tokio::task::block_in_place(|| cluster.kill_master(victim));
    let (dead_tried, stop) = count_writers_on(victim);

    // Runs in every bucket, one after another: the first writer of the dead master's slots
    // finds it down and the client asks the cluster again; none after it tries there.
    for _ in 0..2 {
        for bucket_of in &ids {
            let id = id_in_bucket_of(&client, bucket_of);
            assert_completes(&collect(30, ticker_as(&client, &id, 2, 1).await).await);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let tried = dead_tried.load(Ordering::Relaxed);
    assert!(
        tried <= 1,
        "{tried} writer connections went to the dead master on {victim}"
    );
    assert_a_writer_of_its_own_wrote_on(&cluster, promoted);
    worker.stop().await;
}

/// A new run id in the bucket of run `other`.
fn id_in_bucket_of(client: &Client, other: &str) -> String {
    let tag = bucket_tag(client, other);
    loop {
        let id = loom_core::new_run_id();
        if bucket_tag(client, &id) == tag {
            return id;
        }
    }
}
