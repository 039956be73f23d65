//! Shared test helpers: a real `redis-server` per test, fast timing, test actors, workers
//! that can be stopped or killed, and collecting streams with a timeout.

#![allow(dead_code, unreachable_pub, missing_docs)]

mod redis_cluster;
mod redis_server;

#[allow(unused_imports)]
pub use redis_cluster::RedisCluster;
pub use redis_server::RedisServer;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use loom_core::{
    async_trait, parse_input, Actor, ActorContext, ActorStream, ChunkType, Extensions, Output,
    Registry, Runtime, StreamChunk,
};
use loom_redis::{Client, ClientOptions, Worker, WorkerOptions};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Short timings so crash and liveness tests take seconds, with a prefix of their own.
pub fn fast_options() -> ClientOptions {
    ClientOptions {
        prefix: format!("t{}:", uuid::Uuid::new_v4().simple()),
        lease_ttl: Duration::from_millis(800),
        lease_refresh: Duration::from_millis(200),
        visibility_timeout: Duration::from_millis(1500),
        stream_ttl: Duration::from_secs(120),
        pickup_timeout: Duration::from_secs(6),
        deadline_grace: Duration::from_millis(500),
        outage_timeout: Duration::from_millis(2300),
        read_block: Duration::from_millis(500),
        queue_shards: 1,
        max_queued: None,
    }
}

pub async fn client(server: &RedisServer, options: ClientOptions) -> Client {
    within(10, Client::connect_with(server.url(), options))
        .await
        .expect("connect")
}

/// The ids of the runs in the run index, newest first.
pub async fn recent_run_ids(client: &Client) -> Vec<String> {
    let runs = client.recent_runs(10).await.expect("the run index");
    runs.into_iter().map(|r| r.run_id).collect()
}

/// Starts the `ticker` actor remotely: `count` tokens, one every `delay_ms`.
pub async fn ticker(client: &Client, count: u64, delay_ms: u64) -> loom_core::ChunkStream {
    let input = json!({ "count": count, "delay_ms": delay_ms });
    within(
        10,
        client.invoker().stream("ticker", input, Default::default()),
    )
    .await
    .expect("the request is queued")
}

/// Records what the `ticker` actor saw.
#[derive(Debug, Default)]
pub struct Probe {
    /// How many times a ticker run started.
    pub starts: AtomicU32,
    /// How many tokens tickers yielded, in all.
    pub yielded: AtomicU64,
    /// When a ticker saw its cancel.
    pub cancelled_at: Mutex<Option<Instant>>,
    /// When a ticker run was stopped before its end: it saw its cancel, or it was dropped.
    pub stopped_at: Mutex<Option<Instant>>,
}

/// Records in [`Probe::stopped_at`] when dropped before [`Running::done`].
struct Running(Option<Arc<Probe>>);

impl Running {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(probe) = &self.0 {
            *probe.stopped_at.lock().unwrap() = Some(Instant::now());
        }
    }
}

/// `ticker`: yields `count` tokens `t0 t1 …`, one every `delay_ms`, then completes.
#[derive(Debug, Clone)]
pub struct Ticker {
    pub probe: Arc<Probe>,
}

#[derive(Deserialize)]
struct TickerInput {
    count: u64,
    #[serde(default)]
    delay_ms: u64,
}

#[async_trait]
impl Actor for Ticker {
    fn name(&self) -> &str {
        "ticker"
    }

    fn streams(&self) -> bool {
        true
    }

    fn stream(self: Arc<Self>, input: Value, ctx: ActorContext) -> ActorStream {
        Box::pin(async_stream::try_stream! {
            let input: TickerInput = parse_input(input)?;
            self.probe.starts.fetch_add(1, Ordering::SeqCst);
            let running = Running(Some(Arc::clone(&self.probe)));
            for i in 0..input.count {
                if input.delay_ms > 0 {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(input.delay_ms)) => {}
                        _ = ctx.cancelled() => {
                            *self.probe.cancelled_at.lock().unwrap() = Some(Instant::now());
                            // Stay stuck: only the runtime's cancel may end this run.
                            std::future::pending::<()>().await;
                        }
                    }
                }
                self.probe.yielded.fetch_add(1, Ordering::SeqCst);
                yield Output::token(format!("t{i}"));
            }
            running.done();
            yield Output::complete(json!({ "ticks": input.count }));
        })
    }
}

pub fn runtime(probe: &Arc<Probe>) -> Runtime {
    let mut registry = Registry::with_builtins();
    registry.register(Arc::new(Ticker {
        probe: Arc::clone(probe),
    }));
    Runtime::new(registry, Extensions::new())
}

/// A worker running in a task: stop it gracefully, or kill it (abort, never acks).
pub struct RunningWorker {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), loom_redis::Error>>,
}

impl RunningWorker {
    pub fn spawn(client: &Client, runtime: Runtime, options: WorkerOptions) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let worker = Worker::new(client.clone(), runtime, options);
        let task = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// A worker of the test actors ([`runtime`]) with room for `concurrency` runs at once.
    pub fn with_concurrency(client: &Client, probe: &Arc<Probe>, concurrency: usize) -> Self {
        let options = WorkerOptions {
            concurrency,
            ..WorkerOptions::default()
        };
        Self::spawn(client, runtime(probe), options)
    }

    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Graceful shutdown; waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within(30, &mut self.task)
            .await
            .expect("worker task")
            .expect("worker run");
    }

    /// Dies like a killed process: no cleanup, no acks.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Submits a 30-token `ticker` run and reads it with two readers at once: one attached before
/// its stream exists, one tailing once it does. Asserts they read the same 32 chunks, keeping
/// the contract, and that a replay after the 10th entry gives exactly the rest, with their
/// ids. Returns the run id, the first reader's entries and the second's chunks.
pub async fn read_twice(
    client: &Client,
) -> (String, Vec<loom_redis::StreamEntry>, Vec<StreamChunk>) {
    let invoker = client.invoker();
    let input = json!({ "count": 30, "delay_ms": 5 });
    let run_id = invoker
        .submit("ticker", input, &Default::default())
        .await
        .expect("the request is queued")
        .run_id;
    let first = invoker.attach(&run_id, None).await.expect("attach");
    let first = tokio::spawn(async move { within(30, first.collect::<Vec<_>>()).await });
    within(10, async {
        while client.tail(&run_id, None).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let second = collect(30, client.tail(&run_id, None).await.expect("tail")).await;
    let first = first.await.expect("the first reader");
    assert_eq!(first.len(), 32);
    assert_eq!(
        first.iter().map(|e| e.chunk.clone()).collect::<Vec<_>>(),
        second
    );
    assert_contract(&second);
    let from = first[9].id.map(|id| id.to_string());
    let rest = client
        .tail_entries(&run_id, from.as_deref())
        .await
        .expect("replay");
    let rest: Vec<_> = within(10, rest.collect::<Vec<_>>()).await;
    assert_eq!(rest, first[10..]);
    (run_id, first, second)
}

/// Awaits `fut` for at most `secs` seconds; a hang fails the test.
pub async fn within<F: std::future::IntoFuture>(secs: u64, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs} s"))
}

/// Every chunk of `stream` until it ends (at most `secs` seconds).
pub async fn collect<S: Stream<Item = StreamChunk> + Unpin>(
    secs: u64,
    stream: S,
) -> Vec<StreamChunk> {
    within(secs, stream.collect::<Vec<_>>()).await
}

/// Asserts that `chunks` end with `complete`.
pub fn assert_completes(chunks: &[StreamChunk]) {
    assert_eq!(
        chunks.last().unwrap().kind,
        ChunkType::Complete,
        "{chunks:?}"
    );
}

/// Asserts the stream contract: start first, gapless seq from the first, one terminal last.
pub fn assert_contract(chunks: &[StreamChunk]) {
    assert!(!chunks.is_empty(), "no chunks");
    let first = chunks[0].seq;
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.seq, first + i as u64, "gap at {i}: {chunks:?}");
        assert_eq!(
            chunk.is_terminal(),
            i == chunks.len() - 1,
            "terminal placement: {chunks:?}"
        );
    }
}

/// Waits until some client of `server` is blocked in `command` (e.g. `xreadgroup`), as
/// `CLIENT LIST` shows it (`flags` with `b`).
pub async fn wait_until_blocked_in(server: &RedisServer, command: &str) {
    within(10, async {
        while !server.has_client_blocked_in(command) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The entries of a stream key, read with a plain client.
pub fn entries(conn: &mut redis::Connection, key: &str) -> Vec<(String, Vec<(String, String)>)> {
    let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE");
    reply
}
