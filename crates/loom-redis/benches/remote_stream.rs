//! Remote stream benchmarks, each printed next to its baseline from the same run, against a
//! `redis-server` this binary starts on a free loopback port (or `LOOM_TEST_REDIS_URL`).
//!
//! - throughput: chunks/s of one remote stream end to end (actor → worker → Redis → reader)
//!   against `redis-benchmark -P 16` XADD and a raw pipelined XADD loop (depth 16);
//! - latency: actor yield → reader per chunk at 1,000 chunks/s, p50/p99, next to one bare
//!   XADD round trip, and the floors a chunk's path is compared with: Redis's own hand-off
//!   of an `XADD` to a blocked `XREAD` (plain and fenced, on plain threads), the fenced one
//!   on tokio tasks with a channel to a consumer (the floor of any reader on an async
//!   runtime), and one loopback socket's hand-off to a thread blocked in `read` (no Redis at
//!   all: the floor of any reader that waits);
//! - scale: 10,000 concurrent remote streams read by one process: Redis connections it uses
//!   and its memory (RSS delta); the worker runs in a subprocess (this binary, `--worker`);
//! - soak: 10,000 concurrent remote streams at 2 chunks/s each for 5 minutes (20,000 chunks/s
//!   in all), worker in a subprocess: chunks/s, time to first chunk and per-chunk latency
//!   (p50/p99), both processes' RSS at start and end, Redis connections, errors. Only on
//!   request (`-- soak`); `-- soak quick` holds 1,000 streams for 20 s, `streams=N` holds N
//!   instead and `secs=S` holds them for S seconds.
//!
//! `cargo bench -p loom-redis --bench remote_stream` (add `-- quick` for a short run, and
//! `throughput`, `latency`, `scale` or `soak` to run only those). With `cluster` every figure
//! is taken on a 3-master Redis Cluster on loopback instead, its baselines too
//! (`redis-benchmark` on the node owning its key, XADD through redis-rs's cluster client), and the redis-server
//! CPU is the sum over the nodes. `profile` runs the throughput stream without its baselines,
//! for `perf record` (the baselines' own wake-ups would otherwise fill this process's profile).

#[path = "support/measure.rs"]
mod measure;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use loom_core::{
    async_trait, Actor, ActorContext, ActorStream, Extensions, Output, Registry, RunOptions,
    Runtime,
};
use loom_redis::{Client, ClientOptions, Worker, WorkerOptions};
use measure::{p50_p99, percentile, report, rss_kib_of, Seen};
use redis::aio::ConnectionLike;
use serde_json::{json, Value};
use support::{RedisCluster, RedisServer};

/// A plain or a cluster connection of the redis crate.
struct AnyConn(Box<dyn ConnectionLike + Send>);

impl ConnectionLike for AnyConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.0.req_packed_command(cmd)
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }
    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// Where the benchmarks run: one `redis-server`, or a cluster of three masters.
struct Target {
    url: String,
    ports: Vec<String>,
    cluster: bool,
    _server: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

impl Target {
    fn start(cluster: bool) -> Self {
        let port_of = |url: &str| {
            url.trim_end_matches('/')
                .rsplit(':')
                .next()
                .unwrap_or("6379")
                .to_owned()
        };
        if cluster {
            let nodes = RedisCluster::start_with(3, 0);
            Self {
                url: nodes.url(),
                ports: nodes.urls().split(',').map(port_of).collect(),
                cluster: true,
                _server: None,
                _cluster: Some(nodes),
            }
        } else {
            let server = RedisServer::start();
            Self {
                url: server.url().to_owned(),
                ports: vec![port_of(server.url())],
                cluster: false,
                _server: Some(server),
                _cluster: None,
            }
        }
    }

    fn url(&self) -> &str {
        &self.url
    }

    /// A plain connection to each node.
    async fn nodes(&self) -> Vec<redis::aio::MultiplexedConnection> {
        let mut conns = Vec::new();
        for port in &self.ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
            conns.push(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect"),
            );
        }
        conns
    }

    /// CPU time the redis-servers have used (user + system), from `INFO cpu`.
    async fn redis_cpu(&self) -> Duration {
        let mut total = Duration::ZERO;
        for mut conn in self.nodes().await {
            total += redis_cpu(&mut conn).await;
        }
        total
    }

    /// The connections to the redis-servers now: this (reading) process's and the worker
    /// subprocess `worker`'s, from `/proc`, and those named `loom-writer` (only the worker's
    /// writers), from `CLIENT LIST`.
    async fn connections(&self, worker: u32) -> Conns {
        let ports: Vec<u16> = self.ports.iter().filter_map(|p| p.parse().ok()).collect();
        // Counted before this process opens its own connections for `CLIENT LIST`.
        let (reader, worker) = (
            tcp_connections(std::process::id(), &ports),
            tcp_connections(worker, &ports),
        );
        let mut writers = 0;
        for mut conn in self.nodes().await {
            writers += writer_connections(&mut conn).await;
        }
        Conns {
            reader,
            worker,
            writers,
        }
    }

    /// A plain blocking socket to the node that holds `key` (on a cluster, the one that
    /// answers for it rather than with a `MOVED`), and a buffered reader of its replies.
    fn raw_socket(&self, key: &str) -> (TcpStream, BufReader<TcpStream>) {
        for port in &self.ports {
            let socket = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect");
            socket.set_nodelay(true).expect("nodelay");
            let mut replies = BufReader::new(socket.try_clone().expect("clone"));
            let holds = raw_query(&socket, &mut replies, redis::cmd("EXISTS").arg(key));
            if matches!(holds, redis::Value::Int(_)) {
                return (socket, replies);
            }
        }
        panic!("no node answers for {key}")
    }

    /// A command connection of the redis crate's own: plain, or its cluster client.
    async fn with_conn<T, F: std::future::Future<Output = T>>(
        &self,
        run: impl FnOnce(AnyConn) -> F,
    ) -> T {
        if self.cluster {
            let client = redis::cluster::ClusterClient::new(vec![self.url.as_str()]).expect("url");
            run(AnyConn(Box::new(
                client.get_async_connection().await.expect("connect"),
            )))
            .await
        } else {
            let client = redis::Client::open(self.url.as_str()).expect("url");
            run(AnyConn(Box::new(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect"),
            )))
            .await
        }
    }
}

/// Now, in nanoseconds since the Unix epoch: the clock an actor stamps its chunks with and the
/// reader compares them to, also when the worker is another process on the same machine.
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `flood`: yields `count` tokens as fast as it is pulled, then completes.
struct Flood;

#[async_trait]
impl Actor for Flood {
    fn name(&self) -> &str {
        "flood"
    }
    fn streams(&self) -> bool {
        true
    }
    fn stream(self: Arc<Self>, input: Value, _ctx: ActorContext) -> ActorStream {
        let count = input["count"].as_u64().unwrap_or(0);
        Box::pin(async_stream::try_stream! {
            for _ in 0..count {
                yield Output::token("tok");
            }
            yield Output::complete(json!({ "count": count }));
        })
    }
}

/// `paced`: yields `count` chunks, one per `every_us`, each stamped with its yield time.
struct Paced;

#[async_trait]
impl Actor for Paced {
    fn name(&self) -> &str {
        "paced"
    }
    fn streams(&self) -> bool {
        true
    }
    fn stream(self: Arc<Self>, input: Value, _ctx: ActorContext) -> ActorStream {
        let count = input["count"].as_u64().unwrap_or(0);
        let every = Duration::from_micros(input["every_us"].as_u64().unwrap_or(1000));
        Box::pin(async_stream::try_stream! {
            let mut tick = tokio::time::interval(every);
            for _ in 0..count {
                tick.tick().await;
                yield Output::data(json!({ "t": wall_ns() }));
            }
            yield Output::complete(json!(null));
        })
    }
}

/// `hold`: yields one token, waits `ms`, completes — an idle live stream.
struct Hold;

#[async_trait]
impl Actor for Hold {
    fn name(&self) -> &str {
        "hold"
    }
    fn streams(&self) -> bool {
        true
    }
    fn stream(self: Arc<Self>, input: Value, _ctx: ActorContext) -> ActorStream {
        let ms = input["ms"].as_u64().unwrap_or(1000);
        Box::pin(async_stream::try_stream! {
            yield Output::token("hi");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            yield Output::complete(json!(null));
        })
    }
}

fn runtime() -> Runtime {
    let mut registry = Registry::new();
    registry
        .register(Arc::new(Flood))
        .register(Arc::new(Paced))
        .register(Arc::new(Hold));
    Runtime::new(registry, Extensions::new())
}

fn options(prefix: &str) -> ClientOptions {
    ClientOptions {
        prefix: prefix.to_owned(),
        ..ClientOptions::default()
    }
}

/// This process's resident memory.
fn rss_kib() -> u64 {
    rss_kib_of(std::process::id())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU time this process has used (user + system), from `/proc/self/stat` (Linux, 100 ticks/s).
fn own_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time `redis-server` has used (user + system), from `INFO cpu`.
async fn redis_cpu(conn: &mut redis::aio::MultiplexedConnection) -> Duration {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .unwrap_or_default();
    let secs: f64 = info
        .lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum();
    Duration::from_secs_f64(secs)
}

/// Connections to Redis: the reading process's, the worker's, and of the worker's those of
/// its own writers.
#[derive(Debug, Default, Clone, Copy)]
struct Conns {
    reader: usize,
    worker: usize,
    writers: usize,
}

impl Conns {
    fn report(self) {
        println!(
            "Redis connections: the reading process {}; the worker {}, of them {} its writers' own",
            self.reader, self.worker, self.writers
        );
    }
}

/// The connections named `loom-writer` a server has.
async fn writer_connections(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap_or_default();
    list.lines()
        .filter(|l| l.contains(" name=loom-writer "))
        .count()
}

/// Established TCP connections of process `pid` to any of `ports`: its sockets (`/proc/<pid>/fd`)
/// looked up in `/proc/<pid>/net/tcp` and `tcp6`.
fn tcp_connections(pid: u32, ports: &[u16]) -> usize {
    let sockets: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .map(|line| {
                    line.split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .filter(|cols| {
            // sl, local address, remote address (hex ip:port), state (01: established), …, inode
            let port = cols
                .get(2)
                .and_then(|remote| remote.rsplit_once(':'))
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
            cols.get(3).map(String::as_str) == Some("01")
                && port.is_some_and(|p| ports.contains(&p))
                && cols.get(9).is_some_and(|inode| sockets.contains(inode))
        })
        .count()
}

/// `redis-benchmark -c 1 -P 16` XADD against the node owning its key (on a cluster the others
/// answer `MOVED`, and `--cluster` does not route custom commands), in requests per second, if
/// the tool is installed.
fn redis_benchmark(target: &Target, n: u64) -> Option<f64> {
    target
        .ports
        .iter()
        .find_map(|port| redis_benchmark_on(port, n))
}

fn redis_benchmark_on(port: &str, n: u64) -> Option<f64> {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            port,
            "-c",
            "1",
            "-P",
            "16",
            "-n",
            &n.to_string(),
            "-q",
        ])
        .args([
            "XADD",
            "bench:rb",
            "*",
            "type",
            "data",
            "data",
            "{\"token\":\"tok\"}",
            "seq",
            "1",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "XADD bench:rb * …: 226757.36 requests per second, p50=…"
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("requests per second"))?;
    let before = line.split("requests per second").next()?;
    before
        .rsplit(':')
        .next()?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// `XADD <key> * type data data {"token":"tok"} seq <seq>`: a token chunk's entry, as the
/// baselines write it.
fn token_xadd(key: &str, seq: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key)
        .arg("*")
        .arg("type")
        .arg("data")
        .arg("data")
        .arg("{\"token\":\"tok\"}")
        .arg("seq")
        .arg(seq);
    cmd
}

/// Raw pipelined XADD with the redis crate, depth 16, in XADDs per second.
async fn raw_pipelined_xadd(mut conn: AnyConn, n: u64) -> f64 {
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < n {
        let mut pipe = redis::pipe();
        for _ in 0..16 {
            pipe.add_command(token_xadd("bench:raw", seq)).ignore();
            seq += 1;
        }
        pipe.query_async::<()>(&mut conn).await.expect("xadd");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// `baselines: false` (`-- profile`) runs the remote stream alone, for a profiler: the
/// baselines run in this process too and would fill its profile with their own wake-ups.
async fn throughput(server: &Target, n: u64, baselines: bool) {
    println!("## throughput: one remote stream, {n} token chunks");
    let prefix = "bench-tp:";
    let worker_client = Client::connect_with(server.url(), options(prefix))
        .await
        .expect("connect");
    let reader = Client::connect_with(server.url(), options(prefix))
        .await
        .expect("connect");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(worker_client, runtime(), WorkerOptions::default());
    let worker = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    // Baselines and the stream take turns, three rounds, best of each: a burst of load from
    // elsewhere on the machine then cannot favour one side.
    let mut best = 0.0f64;
    let mut rb: Option<f64> = None;
    let mut raw = 0.0f64;
    let (mut loom_cpu, mut server_cpu, mut actor_cpu) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..3 {
        if baselines {
            if let Some(r) = redis_benchmark(server, n) {
                rb = Some(rb.map_or(r, |b: f64| b.max(r)));
            }
            raw = raw.max(server.with_conn(|c| raw_pipelined_xadd(c, n)).await);
        }
        actor_cpu += actor_alone(n).await;
        let (cpu_at, server_at) = (own_cpu(), server.redis_cpu().await);
        let start = Instant::now();
        let mut chunks = reader
            .invoker()
            .stream("flood", json!({ "count": n }), RunOptions::default())
            .await
            .expect("invoke");
        let mut got = 0u64;
        while let Some(chunk) = chunks.next().await {
            got += 1;
            if chunk.is_terminal() {
                assert_eq!(chunk.kind, loom_core::ChunkType::Complete, "{chunk:?}");
            }
        }
        assert_eq!(got, n + 2);
        best = best.max(got as f64 / start.elapsed().as_secs_f64());
        loom_cpu += own_cpu().saturating_sub(cpu_at);
        server_cpu += server.redis_cpu().await.saturating_sub(server_at);
    }
    let per_chunk = |cpu: Duration| cpu.as_secs_f64() * 1e6 / (3 * n) as f64;
    let _ = stop.send(());
    let _ = worker.await;

    // The two halves alone: publishing (no reader) and replaying a finished stream.
    let run_id = loom_core::new_run_id();
    // The publisher writes while the run's lease holds its owner token, as a worker's does.
    let lease = reader.keys().lease(&run_id);
    server
        .with_conn(|mut c| async move {
            redis::cmd("SET")
                .arg(lease)
                .arg("bench")
                .arg("PX")
                .arg(600_000)
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .expect("lease");
    let publisher = loom_redis::Publisher::start(&reader, &run_id, "bench").expect("publisher");
    let start = Instant::now();
    let chunks = (0..=n).map(|seq| {
        if seq == n {
            Output::complete(json!(null)).into_chunk(seq)
        } else {
            Output::token("tok").into_chunk(seq)
        }
    });
    publisher
        .publish(futures::stream::iter(chunks))
        .await
        .expect("publish");
    let publish = (n + 1) as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let replayed = reader
        .tail(&run_id, None)
        .await
        .expect("tail")
        .count()
        .await;
    let replay = replayed as f64 / start.elapsed().as_secs_f64();
    println!("publish only (Publisher, no reader):  {publish:>10.0} chunks/s");
    println!("replay only (tail of a finished stream): {replay:>10.0} chunks/s");
    match rb {
        Some(rb) => println!("redis-benchmark -c 1 -P 16 XADD (best of 3): {rb:>10.0} /s"),
        None => println!("redis-benchmark: not installed"),
    }
    println!("raw pipelined XADD (depth 16, best of 3): {raw:>10.0} /s");
    println!("remote stream end to end (best of 3): {best:>10.0} chunks/s");
    if let Some(rb) = rb {
        println!(
            "ratio to redis-benchmark -P 16:  {:.2} (target >= 1.0)",
            best / rb
        );
    }
    println!("ratio to raw pipelined XADD:     {:.2}", best / raw);
    let transport = per_chunk(loom_cpu.saturating_sub(actor_cpu));
    println!(
        "CPU per chunk end to end: Loom process {:.2} us, of it the actor run in-process {:.2} us",
        per_chunk(loom_cpu),
        per_chunk(actor_cpu)
    );
    println!(
        "CPU per chunk, Loom's writer + reader {transport:.2} us (the process less the actor), \
         redis-server {:.2} us: ratio {:.2} (target <= 0.5)",
        per_chunk(server_cpu),
        transport / per_chunk(server_cpu)
    );
}

/// The CPU this process spends running the `flood` actor for `n` tokens in-process and
/// reading its stream there: what the remote stream's process spends on the actor itself,
/// not on carrying its chunks (the writer and the reader). Counted over four times the chunks
/// and scaled back, as `own_cpu` counts in 10 ms ticks.
async fn actor_alone(n: u64) -> Duration {
    const TIMES: u64 = 4;
    let at = own_cpu();
    let mut chunks = runtime()
        .stream(
            "flood",
            json!({ "count": n * TIMES }),
            RunOptions::default(),
        )
        .expect("flood");
    let mut got = 0u64;
    while chunks.next().await.is_some() {
        got += 1;
    }
    assert_eq!(got, n * TIMES + 2);
    own_cpu().saturating_sub(at) / TIMES as u32
}

/// How many rounds the latency bench splits its chunks into: each round runs the stream and
/// then each baseline, so the machine's drift over the seconds a run takes moves both sides of
/// a round's ratio.
const LATENCY_ROUNDS: u64 = 5;

async fn latency(server: &Target, count: u64) {
    println!(
        "## latency: actor yield -> reader, {count} chunks at 1,000 chunks/s, \
         in {LATENCY_ROUNDS} interleaved rounds"
    );
    let prefix = "bench-lat:";
    let worker_client = Client::connect_with(server.url(), options(prefix))
        .await
        .expect("connect");
    let reader = Client::connect_with(server.url(), options(prefix))
        .await
        .expect("connect");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(worker_client, runtime(), WorkerOptions::default());
    let worker = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let per_round = count / LATENCY_ROUNDS;
    // Per kind: the stream, the bare round trip back to back (the target's baseline), the
    // same at the stream's pace (one a millisecond, where every process and thread on the
    // way has gone idle between two chunks and must be woken, as for the stream's chunks),
    // a bare `XADD` read by a blocked `XREAD`, plain and fenced, the fenced one again on tokio
    // tasks, and a loopback socket with no Redis.
    let mut all: [Vec<Duration>; 7] = Default::default();
    let mut round_ratios = Vec::new();
    for _ in 0..LATENCY_ROUNDS {
        let round = [
            stream_latency(&reader, per_round).await,
            bare_round_trip(server, per_round, None).await,
            bare_round_trip(server, per_round, Some(Duration::from_millis(1))).await,
            tokio::task::block_in_place(|| bare_handoff(server, per_round, false)),
            tokio::task::block_in_place(|| bare_handoff(server, per_round, true)),
            runtime_handoff(server, per_round).await,
            tokio::task::spawn_blocking(move || socket_handoff(per_round))
                .await
                .expect("socket hand-off"),
        ];
        let p50 = |sorted: &[Duration]| percentile(sorted, 0.5).as_secs_f64();
        round_ratios.push(p50(&round[0]) / p50(&round[1]).max(1e-9));
        for (all, round) in all.iter_mut().zip(round) {
            all.extend(round);
        }
    }
    let _ = stop.send(());
    let _ = worker.await;
    for sorted in &mut all {
        sorted.sort();
    }
    let [lat, rtt, paced, handoff, fenced, runtime, socket] = &all;
    round_ratios.sort_by(f64::total_cmp);
    let ratio = |to: &[Duration], p: f64| {
        percentile(lat, p).as_secs_f64() / percentile(to, p).as_secs_f64().max(1e-9)
    };
    // The other baselines: the floors a chunk's path is compared with.
    let floors = [
        ("bare XADD round trip at 1,000/s", paced),
        ("bare XADD -> blocked XREAD at 1,000/s", handoff),
        (
            "bare fenced XADD (GET + XADD script) -> blocked XREAD at 1,000/s",
            fenced,
        ),
        (
            "bare fenced XADD -> blocked XREAD -> a consumer, tokio tasks on plain sockets, at \
             1,000/s",
            runtime,
        ),
        (
            "loopback socket -> a thread blocked in read at 1,000/s (no Redis)",
            socket,
        ),
    ];
    println!("yield -> reader:     {}", p50_p99(lat));
    println!("bare XADD round trip: {}", p50_p99(rtt));
    for (name, sorted) in floors {
        println!("{name}: {}", p50_p99(sorted));
    }
    println!(
        "ratio to the bare round trip: p50 {:.2} (median of the rounds' ratios {}; target <= 1.5), \
         p99 {:.2} (all rounds; target <= 3)",
        round_ratios[round_ratios.len() / 2],
        round_ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" "),
        ratio(rtt, 0.99)
    );
    for (name, sorted) in floors {
        println!(
            "ratio to the {name}: p50 {:.2}, p99 {:.2}",
            ratio(sorted, 0.5),
            ratio(sorted, 0.99)
        );
    }
    // Where the target stands against the floors: a floor above 1.5 × the round trip is one
    // no reader that waits idle between chunks can go under, whatever it does; the one on
    // tokio tasks, one no reader on an async runtime can.
    let floor_ratio = |sorted: &[Duration]| {
        percentile(sorted, 0.5).as_secs_f64() / percentile(rtt, 0.5).as_secs_f64().max(1e-9)
    };
    println!(
        "the floors ÷ the bare round trip, p50: Redis's hand-off {:.2}, fenced {:.2}, fenced on \
         tokio {:.2}, a loopback socket's {:.2} (the target asks a chunk for <= 1.5)",
        floor_ratio(handoff),
        floor_ratio(fenced),
        floor_ratio(runtime),
        floor_ratio(socket)
    );
}

/// How long each of `count` chunks of a remote `paced` run (one a millisecond) took from the
/// actor's `yield` to `reader`, sorted.
async fn stream_latency(reader: &Client, count: u64) -> Vec<Duration> {
    let mut chunks = reader
        .invoker()
        .stream(
            "paced",
            json!({ "count": count, "every_us": 1000 }),
            RunOptions::default(),
        )
        .await
        .expect("invoke");
    let mut lat = Vec::with_capacity(count as usize);
    while let Some(chunk) = chunks.next().await {
        let now = wall_ns();
        if let Some(t) = chunk.data.as_ref().and_then(|d| d["t"].as_u64()) {
            lat.push(Duration::from_nanos(now.saturating_sub(t)));
        }
    }
    lat.sort();
    lat
}

/// The floor of any reader that waits, Redis or not: `count` timestamps written one per
/// millisecond to a loopback TCP connection (`TCP_NODELAY`) and how long each took to reach
/// another thread blocked in `read` on its other end, sorted. Plain threads and blocking
/// sockets: no runtime, no parsing, nothing but the kernel waking an idle thread.
fn socket_handoff(count: u64) -> Vec<Duration> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut writer =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut reader, _) = listener.accept().expect("accept");
    writer.set_nodelay(true).expect("nodelay");
    let origin = Instant::now();
    let read = std::thread::spawn(move || {
        let mut lat = Vec::with_capacity(count as usize);
        let mut stamp = [0u8; 8];
        for _ in 0..count {
            reader.read_exact(&mut stamp).expect("read");
            let sent = Duration::from_nanos(u64::from_le_bytes(stamp));
            lat.push(origin.elapsed().saturating_sub(sent));
        }
        lat
    });
    for _ in 0..count {
        std::thread::sleep(Duration::from_millis(1));
        let now = origin.elapsed().as_nanos() as u64;
        writer.write_all(&now.to_le_bytes()).expect("write");
    }
    let mut lat = read.join().expect("reader thread");
    lat.sort();
    lat
}

/// `count` bare `XADD` round trips, back to back or one per `every`, sorted.
async fn bare_round_trip(server: &Target, count: u64, every: Option<Duration>) -> Vec<Duration> {
    server
        .with_conn(move |mut conn| async move {
            let mut tick = every.map(tokio::time::interval);
            let mut rtt = Vec::with_capacity(count as usize);
            for seq in 0..count {
                if let Some(tick) = &mut tick {
                    tick.tick().await;
                }
                let start = Instant::now();
                token_xadd("bench:rtt", seq)
                    .query_async::<()>(&mut conn)
                    .await
                    .expect("xadd");
                rtt.push(start.elapsed());
            }
            rtt.sort();
            rtt
        })
        .await
}

/// One command on a plain socket (see [`Target::raw_socket`]) and its reply.
fn raw_query(
    mut socket: &TcpStream,
    replies: &mut BufReader<TcpStream>,
    cmd: &redis::Cmd,
) -> redis::Value {
    socket.write_all(&cmd.get_packed_command()).expect("send");
    redis::Parser::new().parse_value(replies).expect("reply")
}

/// A plain socket (see [`Target::raw_socket`]) to the node of `key`, a stream emptied for a
/// floor's run (its reader reads from the start, so only that run's entries), and `lease`
/// holding the owner token its fenced writes check.
fn fresh_stream(server: &Target, key: &str, lease: &str) -> (TcpStream, BufReader<TcpStream>) {
    let (socket, mut replies) = server.raw_socket(key);
    raw_query(&socket, &mut replies, redis::cmd("DEL").arg(key));
    raw_query(
        &socket,
        &mut replies,
        redis::cmd("SET").arg(lease).arg("owner"),
    );
    (socket, replies)
}

/// The floor of any reader that waits on a blocking `XREAD`: `count` bare `XADD`s, one per
/// millisecond, each stamped with its send time, and how long each took to reach another
/// connection's blocked `XREAD`, sorted: the time its reply's first bytes reached the
/// reading thread. Plain threads on plain sockets, as [`socket_handoff`] is: a client
/// library's code on the way, cold after a millisecond idle, makes the figure larger, and
/// that cost is the client's, not Redis's (docs/performance-history.md, "A twelfth machine").
/// `fenced`: each `XADD` is made by a script that first checks a lease key, as a fenced write
/// must be (Loom's write script does that, and numbers the entry), so the figure is the floor
/// of a fenced stream.
fn bare_handoff(server: &Target, count: u64, fenced: bool) -> Vec<Duration> {
    // One hash tag: the script's two keys share a cluster slot.
    let (key, lease) = ("{bench:handoff}:stream", "{bench:handoff}:lease");
    let (reader, mut replies) = fresh_stream(server, key, lease);
    let read = std::thread::spawn(move || {
        let mut took = Vec::with_capacity(count as usize);
        let mut last = "0-0".to_owned();
        while (took.len() as u64) < count {
            (&reader).write_all(&xread_after(key, &last)).expect("send");
            replies.fill_buf().expect("read");
            let now = wall_ns();
            let reply = redis::Parser::new()
                .parse_value(&mut replies)
                .expect("reply");
            let reply: redis::streams::StreamReadReply =
                redis::from_redis_value(reply).expect("xread");
            for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                let sent: u64 = entry.get("t").unwrap_or(0);
                took.push(Duration::from_nanos(now.saturating_sub(sent)));
                last = entry.id;
            }
        }
        took.sort();
        took
    });
    let (writer, mut acks) = server.raw_socket(key);
    for _ in 0..count {
        std::thread::sleep(Duration::from_millis(1));
        let sent = wall_ns();
        let reply = if fenced {
            raw_query(
                &writer,
                &mut acks,
                redis::cmd("EVAL")
                    .arg(FENCED_XADD)
                    .arg(2)
                    .arg(key)
                    .arg(lease)
                    .arg("owner")
                    .arg(sent),
            )
        } else {
            raw_query(
                &writer,
                &mut acks,
                redis::cmd("XADD").arg(key).arg("*").arg("t").arg(sent),
            )
        };
        let written = matches!(&reply, redis::Value::BulkString(b) if !fenced || b == b"ok");
        assert!(written, "{reply:?}");
    }
    read.join().expect("reader thread")
}

/// A floor's blocking read of `key`'s entries after `last`, packed.
fn xread_after(key: &str, last: &str) -> Vec<u8> {
    redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(1000)
        .arg("STREAMS")
        .arg(key)
        .arg(last)
        .get_packed_command()
}

/// The script [`bare_handoff`] writes each fenced `XADD` with.
const FENCED_XADD: &str = "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'fenced' end \
                           redis.call('XADD', KEYS[1], '*', 't', ARGV[2]) return 'ok'";

/// [`bare_handoff`]'s fenced hand-off on this tokio runtime instead of plain threads, with the
/// hops a remote stream's chunk makes and nothing else: a task writing each `EVAL` on a socket
/// of its own, paced by the runtime's timer (as an actor is); a task blocked in `XREAD` on
/// another, which hands each entry's stamp through a channel to a consumer task (as the hub
/// hands a reader its entries); stamped when the consumer takes it. No client library, no
/// chunk, no parsing past the stamp: the floor of any reader on an async runtime, so what a
/// Loom chunk takes above it is Loom's own.
async fn runtime_handoff(server: &Target, count: u64) -> Vec<Duration> {
    use tokio::io::AsyncWriteExt;
    let (key, lease) = ("{bench:rt-handoff}:stream", "{bench:rt-handoff}:lease");
    let (reader, _) = fresh_stream(server, key, lease);
    let (writer, _) = server.raw_socket(key);
    let async_socket = |socket: TcpStream| {
        socket.set_nonblocking(true).expect("non-blocking");
        tokio::net::TcpStream::from_std(socket).expect("tokio socket")
    };
    let (mut reader, mut writer) = (async_socket(reader), async_socket(writer));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(16);
    let read = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(4096);
        let mut last = "0-0".to_owned();
        loop {
            reader
                .write_all(&xread_after(key, &last))
                .await
                .expect("send");
            // The key, then each entry's id, `t` and stamp.
            let texts = async_reply(&mut reader, &mut buf).await;
            for entry in texts.get(1..).unwrap_or_default().chunks_exact(3) {
                let sent = std::str::from_utf8(&entry[2])
                    .ok()
                    .and_then(|t| t.parse().ok());
                if tx.send(sent.unwrap_or(0)).await.is_err() {
                    return;
                }
                last = String::from_utf8_lossy(&entry[0]).into_owned();
            }
        }
    });
    let consume = tokio::spawn(async move {
        let mut took = Vec::with_capacity(count as usize);
        while (took.len() as u64) < count {
            let Some(sent) = rx.recv().await else { break };
            took.push(Duration::from_nanos(wall_ns().saturating_sub(sent)));
        }
        took.sort();
        took
    });
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut buf = Vec::with_capacity(64);
    for _ in 0..count {
        tick.tick().await;
        let sent = wall_ns();
        let write = redis::cmd("EVAL")
            .arg(FENCED_XADD)
            .arg(2)
            .arg(key)
            .arg(lease)
            .arg("owner")
            .arg(sent)
            .get_packed_command();
        writer.write_all(&write).await.expect("send");
        let reply = async_reply(&mut writer, &mut buf).await;
        assert_eq!(reply, [b"ok"], "the fenced write");
    }
    let took = consume.await.expect("consumer");
    read.abort();
    took
}

/// The next reply on `socket`, read into `buf` (which keeps what follows it), as its strings
/// in order, whatever arrays hold them: RESP read by hand, as a floor should (the redis
/// crate's parser, cold once a millisecond, would add its own microseconds).
async fn async_reply(socket: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    loop {
        let mut texts = Vec::new();
        if let Some(used) = resp_texts(buf, &mut texts) {
            buf.drain(..used);
            return texts;
        }
        assert!(buf.len() < 1 << 20, "an unreadable reply");
        if socket.read_buf(buf).await.expect("read") == 0 {
            panic!("the server closed the connection");
        }
    }
}

/// The length of the RESP2 frame at the start of `buf`, its strings pushed to `texts`; `None`
/// while it is incomplete.
fn resp_texts(buf: &[u8], texts: &mut Vec<Vec<u8>>) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..line_end]).expect("a RESP line");
    let mut at = line_end + 2;
    match buf.first() {
        Some(b'*') => {
            for _ in 0..line.parse::<i64>().expect("an array length").max(0) {
                at += resp_texts(&buf[at..], texts)?;
            }
        }
        Some(b'$') => {
            if let Ok(len) = usize::try_from(line.parse::<i64>().expect("a string length")) {
                texts.push(buf.get(at..at + len)?.to_vec());
                at += len + 2;
                if buf.len() < at {
                    return None;
                }
            }
        }
        Some(b'-') => panic!("Redis answered an error: {line}"),
        _ => texts.push(line.as_bytes().to_vec()),
    }
    Some(at)
}

async fn scale(server: &Target, streams: usize) {
    println!("## scale: {streams} concurrent remote streams read by one process");
    let prefix = "bench-scale:";
    let mut worker = worker_process(server, prefix, streams).await;
    let before_rss = rss_kib();

    let reader = Client::connect_with(server.url(), options(prefix))
        .await
        .expect("connect");
    let invoker = reader.invoker();
    let start = Instant::now();
    let mut live = Vec::with_capacity(streams);
    for _ in 0..streams {
        let chunks = invoker
            .stream("hold", json!({ "ms": 8000 }), RunOptions::default())
            .await
            .expect("invoke");
        live.push(chunks);
    }
    // Every stream live: its start and first token arrived.
    let firsts = futures::future::join_all(live.iter_mut().map(|c| async move {
        let a = c.next().await;
        let b = c.next().await;
        a.is_some() && b.is_some()
    }))
    .await;
    assert!(firsts.iter().all(|ok| *ok));
    let ready = start.elapsed();
    let conns = server.connections(worker.id()).await;
    let rss = rss_kib().saturating_sub(before_rss);
    let ends = futures::future::join_all(live.into_iter().map(|mut c| async move {
        let mut last = None;
        while let Some(chunk) = c.next().await {
            last = Some(chunk);
        }
        last.is_some_and(|l| l.kind == loom_core::ChunkType::Complete)
    }))
    .await;
    let completed = ends.iter().filter(|ok| **ok).count();
    let _ = worker.kill();
    let _ = worker.wait();
    println!(
        "all {streams} streams live after {:.2} s",
        ready.as_secs_f64()
    );
    conns.report();
    println!(
        "reading process RSS delta: {} KiB ({:.1} KiB per stream)",
        rss,
        rss as f64 / streams as f64
    );
    println!("completed: {completed}/{streams}");
}

async fn soak(server: &Target, streams: usize, secs: u64) {
    let rate = 2;
    println!("## soak: {streams} remote streams at {rate} chunks/s each for {secs} s");
    let prefix = "bench-soak:";
    let mut worker = worker_process(server, prefix, streams).await;
    let worker_pid = worker.id();
    let reader = Client::connect_with(server.url(), options(prefix))
        .await
        .expect("connect");
    let invoker = reader.invoker();
    let count = secs * rate;
    let input = json!({ "count": count, "every_us": 1_000_000 / rate });
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for _ in 0..streams {
        let asked = Instant::now();
        let options = RunOptions {
            timeout: Some(Duration::from_secs(secs * 3 + 60)),
            ..RunOptions::default()
        };
        let mut chunks = invoker
            .stream("paced", input.clone(), options)
            .await
            .expect("invoke");
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut expected = 0;
            while let Some(chunk) = chunks.next().await {
                if chunk.seq != expected {
                    seen.failed = Some("a gap or a repeat".to_owned());
                    return seen; // a gap or a repeat: not ok
                }
                expected += 1;
                match chunk.kind {
                    loom_core::ChunkType::Data => {
                        let t = chunk
                            .data
                            .as_ref()
                            .and_then(|d| d["t"].as_u64())
                            .unwrap_or(0);
                        seen.data(asked.elapsed(), wall_ns().saturating_sub(t) / 1000);
                    }
                    loom_core::ChunkType::Complete => seen.ok = true,
                    loom_core::ChunkType::Error => {
                        seen.failed = chunk.error.as_ref().map(|e| format!("{:?}", e.code));
                    }
                    _ => {}
                }
            }
            seen
        }));
    }
    let started = start.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (reader_start, worker_start) = (mib(rss_kib()), mib(rss_kib_of(worker_pid)));
    let conns = server.connections(worker_pid).await;
    // RSS after a minute, and again near the end, while the streams are still live.
    tokio::time::sleep(Duration::from_secs(secs.saturating_sub(10).min(55))).await;
    let (reader_minute, worker_minute) = (mib(rss_kib()), mib(rss_kib_of(worker_pid)));
    tokio::time::sleep(Duration::from_secs(secs.saturating_sub(65))).await;
    let (reader_end, worker_end) = (mib(rss_kib()), mib(rss_kib_of(worker_pid)));
    let mut seen = Vec::with_capacity(streams);
    for task in tasks {
        seen.push(task.await.unwrap_or_default());
    }
    let took = start.elapsed();
    let _ = worker.kill();
    let _ = worker.wait();
    report(&seen, count, started, took);
    println!(
        "RSS (5 s -> 60 s -> end): reader {reader_start:.1} -> {reader_minute:.1} -> {reader_end:.1} MiB, worker {worker_start:.1} -> {worker_minute:.1} -> {worker_end:.1} MiB"
    );
    conns.report();
}

/// A worker subprocess (this binary, `--worker`) with `concurrency` slots, given a second to
/// start.
async fn worker_process(server: &Target, prefix: &str, concurrency: usize) -> std::process::Child {
    let exe = std::env::current_exe().expect("own path");
    let worker = Command::new(exe)
        .args(["--worker", server.url(), prefix, &concurrency.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the worker process");
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker
}

async fn run_worker(url: &str, prefix: &str, concurrency: usize) {
    let client = Client::connect_with(url, options(prefix))
        .await
        .expect("connect");
    let options = WorkerOptions {
        concurrency,
        ..WorkerOptions::default()
    };
    let _ = Worker::new(client, runtime(), options)
        .run(std::future::pending())
        .await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if args.get(1).map(String::as_str) == Some("--worker") {
        let concurrency = args.get(4).and_then(|c| c.parse().ok()).unwrap_or(16);
        rt.block_on(run_worker(&args[2], &args[3], concurrency));
        return;
    }
    let quick = args.iter().any(|a| a == "quick");
    let server = Target::start(args.iter().any(|a| a == "cluster"));
    if server.cluster {
        println!("# on a Redis Cluster of 3 masters");
    }
    let only: Vec<&str> = ["throughput", "latency", "scale", "soak"]
        .into_iter()
        .filter(|name| args.iter().any(|a| a == name))
        .collect();
    // The soak takes minutes: only when asked for.
    let wants = move |name: &str| (only.is_empty() && name != "soak") || only.contains(&name);
    // The bench runs as a task of the runtime, as a server's request handler does: the future
    // `block_on` runs is on the calling thread, outside the runtime's workers, and each wake
    // of it (each chunk a reader takes) would cross threads.
    let body = async move {
        if wants("throughput") {
            let baselines = !args.iter().any(|a| a == "profile");
            throughput(&server, if quick { 50_000 } else { 200_000 }, baselines).await;
        }
        if wants("latency") {
            latency(&server, if quick { 500 } else { 3000 }).await;
        }
        if wants("scale") {
            scale(&server, if quick { 1000 } else { 10_000 }).await;
        }
        if wants("soak") {
            let given = |name: &str| {
                args.iter()
                    .find_map(|a| a.strip_prefix(name)?.parse::<usize>().ok())
            };
            let (streams, secs) = if quick { (1000, 20) } else { (10_000, 300) };
            let streams = given("streams=").unwrap_or(streams);
            soak(&server, streams, given("secs=").map_or(secs, |s| s as u64)).await;
        }
    };
    rt.block_on(rt.spawn(body)).expect("bench task");
}
