//! SSE benchmarks of loom-server, each printed next to a bare axum SSE handler (`Sse` over a
//! stream of the same chunk JSON, same `id`/`event`/`data` frames) measured in the same run.
//!
//! - throughput: chunks/s one client reads from `POST /v1/actors/flood/stream` (an actor that
//!   yields tokens as fast as they are pulled), against the bare handler streaming the same
//!   pre-serialized chunks; interleaved rounds, best of 3 each;
//! - latency: actor yield → client per chunk at 1,000 chunks/s, p50/p99, both sides stamping
//!   the send time from one clock (client and servers share this process);
//! - idle: K concurrent idle SSE streams on one server (bare; loom direct streams, one run
//!   each; loom readers of one detached run): the server process's RSS delta per stream. Each
//!   server runs in its own subprocess (this binary, `--serve loom|bare`) so the clients'
//!   memory and sockets are not counted and the servers do not share an allocator.
//!
//! - soak (only when named): 10,000 concurrent SSE streams at 2 chunks/s each for 5 minutes
//!   against a loom-server subprocess: chunks/s, time to first chunk and per-chunk latency
//!   (p50/p99, wall-clock stamps), both processes' RSS after 5 s and near the end, errors;
//!   `-- soak quick` holds 1,000 streams for 20 s.
//!
//! `cargo bench -p loom-server --bench sse` (add `-- quick` for smaller counts, and
//! `throughput`, `dialects`, `latency`, `idle` or `soak` to run only those).

#[path = "../../loom-redis/benches/support/measure.rs"]
mod measure;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use axum::Router;
use futures::{Stream, StreamExt};
use loom_core::{actor_fn, try_stream, Extensions, Output, Registry, Runtime};
use loom_server::{LogLimits, ServerConfig, ServerState};
use measure::{p50_p99, percentile, report, rss_kib_of, Seen};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The wall clock in nanoseconds: the actors stamp their chunks with it and the client reads
/// it, in one process or in a server subprocess on the same machine.
fn stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `flood` (tokens as fast as pulled), `paced` (stamped data chunks, one per `every_us`) and
/// `idle` (nothing after its start chunk, ever).
fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(actor_fn("flood", |input: Value, _ctx| {
            let count = input["count"].as_u64().unwrap_or(0);
            try_stream! {
                for _ in 0..count {
                    yield Output::token("tok");
                }
                yield Output::complete(json!({ "count": count }));
            }
        }))
        .register(actor_fn("paced", |input: Value, _ctx| {
            let count = input["count"].as_u64().unwrap_or(0);
            let every = Duration::from_micros(input["every_us"].as_u64().unwrap_or(1000));
            try_stream! {
                let mut tick = tokio::time::interval(every);
                for _ in 0..count {
                    tick.tick().await;
                    yield Output::data(json!({ "t": stamp() }));
                }
                yield Output::complete(json!(null));
            }
        }))
        .register(actor_fn("idle", |_input: Value, _ctx| {
            try_stream! {
                std::future::pending::<()>().await;
                yield Output::complete(json!(null));
            }
        }));
    registry
}

/// Serves loom-server with `config` on `listener` until the process ends.
fn spawn_loom(listener: TcpListener, config: ServerConfig) {
    let runtime = Runtime::new(registry(), Extensions::new());
    let state = ServerState::new(runtime, Vec::new(), config);
    tokio::spawn(loom_server::serve(listener, state, std::future::pending()));
}

/// One pre-serialized chunk: `seq`, `type` and its JSON.
type Prepared = (u64, &'static str, String);

/// The chunks `flood` sends for `count`, serialized as the run log serializes them.
fn flood_frames(count: u64) -> Arc<Vec<Prepared>> {
    let chunk = |output: Output, seq: u64| {
        let chunk = output.into_chunk(seq);
        serde_json::to_string(&chunk).unwrap_or_default()
    };
    let mut frames = Vec::with_capacity(count as usize + 2);
    frames.push((
        0,
        "start",
        r#"{"type":"start","seq":0,"data":{"run_id":"run_0123456789abcdef0123456789abcdef","actor":"flood"}}"#.to_owned(),
    ));
    for seq in 1..=count {
        frames.push((seq, "token", chunk(Output::token("tok"), seq)));
    }
    let last = count + 1;
    frames.push((
        last,
        "complete",
        chunk(Output::complete(json!({ "count": count })), last),
    ));
    Arc::new(frames)
}

fn event(seq: u64, kind: &str, json: &str) -> Result<Event, Infallible> {
    Ok(Event::default().id(seq.to_string()).event(kind).data(json))
}

/// The bare handler: `GET /flood` streams the pre-serialized frames, `GET /paced?count=` the
/// stamped chunks at 1,000/s, `GET /idle` a start chunk then nothing.
fn spawn_bare(listener: TcpListener, frames: Arc<Vec<Prepared>>) {
    async fn flood(
        State(frames): State<Arc<Vec<Prepared>>>,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let len = frames.len();
        Sse::new(futures::stream::iter(0..len).map(move |i| {
            let (seq, kind, json) = &frames[i];
            event(*seq, kind, json)
        }))
    }
    async fn paced(
        axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, u64>>,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let count = q.get("count").copied().unwrap_or(0);
        let tick = tokio::time::interval(Duration::from_millis(1));
        Sse::new(futures::stream::unfold(
            (tick, 0u64),
            move |(mut tick, seq)| async move {
                if seq >= count {
                    return None;
                }
                tick.tick().await;
                let chunk = Output::data(json!({ "t": stamp() })).into_chunk(seq);
                let json = serde_json::to_string(&chunk).unwrap_or_default();
                Some((event(seq, "data", &json), (tick, seq + 1)))
            },
        ))
    }
    async fn idle() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let start = r#"{"type":"start","seq":0,"data":{"run_id":"run_0123456789abcdef0123456789abcdef","actor":"idle"}}"#;
        Sse::new(
            futures::stream::once(async move { event(0, "start", start) })
                .chain(futures::stream::pending()),
        )
    }
    let app = Router::new()
        .route("/flood", get(flood))
        .route("/paced", get(paced))
        .route("/idle", get(idle))
        .with_state(frames);
    tokio::spawn(async move { axum::serve(listener, app).await });
}

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, base)
}

/// Reads `response`'s body to its end; the number of SSE frames (blank-line terminated).
async fn count_frames(response: reqwest::Response) -> u64 {
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let (mut frames, mut newline) = (0u64, false);
    while let Some(bytes) = body.next().await {
        for &b in bytes.expect("body").iter() {
            if b == b'\n' {
                if newline {
                    frames += 1;
                }
                newline = !newline;
            } else {
                newline = false;
            }
        }
    }
    frames
}

/// One SSE frame: its `id`, `event` and the stamp in its chunk's data (`paced`'s `t`).
struct Frame {
    id: Option<u64>,
    event: String,
    stamp: Option<u64>,
}

/// Reads `response`'s body to its end, calling `on_frame` with each frame and the time it
/// arrived.
async fn read_frames(response: reqwest::Response, mut on_frame: impl FnMut(Frame, u64)) {
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(Ok(bytes)) = body.next().await {
        let now = stamp();
        buf.extend_from_slice(&bytes);
        let mut from = 0;
        while let Some(end) = buf[from..].windows(2).position(|w| w == b"\n\n") {
            let text = String::from_utf8_lossy(&buf[from..from + end]);
            let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name));
            let frame = Frame {
                id: field("id: ").and_then(|v| v.parse().ok()),
                event: field("event: ").unwrap_or_default().to_owned(),
                stamp: field("data: ")
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                    .and_then(|chunk| chunk["data"]["t"].as_u64()),
            };
            on_frame(frame, now);
            from += end + 2;
        }
        buf.drain(..from);
    }
}

/// Reads `response`'s body to its end; each stamped chunk's delay from its stamp to now.
async fn delays(response: reqwest::Response) -> Vec<Duration> {
    let mut out = Vec::new();
    read_frames(response, |frame, now| {
        if let Some(t) = frame.stamp {
            out.push(Duration::from_nanos(now.saturating_sub(t)));
        }
    })
    .await;
    out.sort();
    out
}

/// A loom-server whose run logs hold `n` chunks and more, and its base URL. The log holds the
/// whole run: with the default bound (10,000 chunks) a producer that never waits overtakes the
/// one reader, which is then disconnected (by design).
async fn loom_holding(n: u64) -> String {
    let (listener, base) = bind().await;
    let config = ServerConfig {
        log_limits: LogLimits {
            max_chunks: n as usize + 16,
            max_bytes: usize::MAX,
            ..LogLimits::default()
        },
        ..ServerConfig::default()
    };
    spawn_loom(listener, config);
    base
}

async fn throughput(n: u64) {
    println!("## throughput: one SSE client, {n} token chunks");
    let loom = loom_holding(n).await;
    let (listener, bare) = bind().await;
    spawn_bare(listener, flood_frames(n));
    let http = reqwest::Client::new();
    let body = json!({ "input": { "count": n } }).to_string();
    // The two take turns, three rounds, best of each: a burst of load from elsewhere on the
    // machine then cannot favour one side.
    let (mut best_loom, mut best_bare) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        let start = Instant::now();
        let response = http.get(format!("{bare}/flood")).send().await.expect("GET");
        let got = count_frames(response).await;
        assert_eq!(got, n + 2, "bare: start, tokens, complete");
        best_bare = best_bare.max(got as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let response = http
            .post(format!("{loom}/v1/actors/flood/stream"))
            .body(body.clone())
            .send()
            .await
            .expect("POST");
        let got = count_frames(response).await;
        assert_eq!(got, n + 2, "loom: start, tokens, complete");
        best_loom = best_loom.max(got as f64 / start.elapsed().as_secs_f64());
    }
    println!("bare axum Sse handler (best of 3): {best_bare:>10.0} chunks/s");
    println!("loom-server (best of 3):           {best_loom:>10.0} chunks/s");
    println!(
        "ratio loom / bare: {:.2} (target >= 0.70)",
        best_loom / best_bare
    );
}

/// Tokens/s of the same run served in each client dialect, against Loom's own SSE.
async fn dialects(n: u64) {
    println!("## dialects: one client, {n} token chunks, tokens/s to the end of the body");
    let base = loom_holding(n).await;
    let input = json!({ "count": n }).to_string();
    let routes: [(&str, String, Value); 5] = [
        (
            "loom SSE",
            "/v1/actors/flood/stream".into(),
            json!({ "input": { "count": n } }),
        ),
        (
            "OpenAI chat",
            "/v1/chat/completions".into(),
            json!({ "model": "flood", "stream": true,
                    "messages": [{ "role": "user", "content": input }] }),
        ),
        (
            "OpenAI responses",
            "/v1/responses".into(),
            json!({ "model": "flood", "stream": true, "input": input }),
        ),
        (
            "AG-UI",
            "/v1/ag-ui/flood".into(),
            json!({ "threadId": "t", "runId": "r",
                    "messages": [{ "id": "u", "role": "user", "content": input }] }),
        ),
        (
            "AI SDK",
            "/v1/ai-sdk/flood".into(),
            json!({ "id": "bench", "messages": [{ "id": "u", "role": "user",
                    "parts": [{ "type": "text", "text": input }] }] }),
        ),
    ];
    let http = reqwest::Client::new();
    let mut best = [0.0f64; 5];
    // Rounds in turn, best of each: a burst of load from elsewhere favours no dialect.
    for _ in 0..3 {
        for (i, (_, path, body)) in routes.iter().enumerate() {
            let start = Instant::now();
            let response = http
                .post(format!("{base}{path}"))
                .body(body.to_string())
                .send()
                .await
                .expect("POST");
            let frames = count_frames(response).await;
            assert!(frames >= n, "{path}: {frames} frames");
            best[i] = best[i].max(n as f64 / start.elapsed().as_secs_f64());
        }
    }
    for (i, (name, _, _)) in routes.iter().enumerate() {
        println!(
            "{name:<17} {:>10.0} tokens/s   ratio to loom SSE: {:.2}",
            best[i],
            best[i] / best[0]
        );
    }
}

async fn latency(count: u64) {
    println!("## latency: actor yield -> SSE client, {count} chunks at 1,000 chunks/s");
    let (listener, loom) = bind().await;
    spawn_loom(listener, ServerConfig::default());
    let (listener, bare) = bind().await;
    spawn_bare(listener, Arc::new(Vec::new()));
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{bare}/paced?count={count}"))
        .send()
        .await
        .expect("GET");
    let bare = delays(response).await;
    let body = json!({ "input": { "count": count, "every_us": 1000 } }).to_string();
    let response = http
        .post(format!("{loom}/v1/actors/paced/stream"))
        .body(body)
        .send()
        .await
        .expect("POST");
    let loom = delays(response).await;
    assert_eq!(bare.len() as u64, count);
    assert_eq!(loom.len() as u64, count);
    println!("bare axum Sse handler: {}", p50_p99(&bare));
    println!("loom-server:           {}", p50_p99(&loom));
    let added = percentile(&loom, 0.5).as_secs_f64() - percentile(&bare, 0.5).as_secs_f64();
    println!("added p50: {:.3} ms (target <= 0.2 ms)", added * 1e3);
}

/// Opens one SSE stream with a hand-written request and reads until its first frame; the
/// connection, idle from then on. `None` when it could not be opened.
async fn open_idle(addr: &str, request: &[u8]) -> Option<TcpStream> {
    let mut socket = TcpStream::connect(addr).await.ok()?;
    socket.write_all(request).await.ok()?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let head = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        if !buf.starts_with(b"HTTP/1.1 200") {
            return None;
        }
        if buf[head + 4..].windows(2).any(|w| w == b"\n\n") {
            return Some(socket);
        }
    }
}

/// Starts this binary as a `kind` server; its pid and address.
fn start_server(kind: &str, streams: usize) -> (std::process::Child, String) {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .args(["--serve", kind, &streams.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server process");
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    (child, line.trim().to_owned())
}

/// The request that opens one idle stream on `addr`: a direct stream of `idle` (`loom`), a
/// reader of one shared detached `idle` run (`readers`), or the bare handler's `/idle`.
async fn idle_request(kind: &str, addr: &str) -> Vec<u8> {
    match kind {
        "loom" => b"POST /v1/actors/idle/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        "readers" => {
            let response = reqwest::Client::new()
                .post(format!("http://{addr}/v1/runs"))
                .body(json!({ "actor": "idle" }).to_string())
                .send()
                .await
                .expect("POST /v1/runs");
            assert_eq!(response.status(), 201);
            let body: Value = response.json().await.expect("json");
            let id = body["run_id"].as_str().expect("run_id");
            format!("GET /v1/runs/{id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
        }
        _ => b"GET /idle HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
    }
}

/// `k` idle streams on a `kind` server: (streams reached, server RSS delta in KiB).
async fn idle_streams(kind: &str, k: usize) -> (usize, u64) {
    let server = if kind == "bare" { "bare" } else { "loom" };
    let (mut child, addr) = start_server(server, k);
    let request = idle_request(kind, &addr).await;
    // Warm up: the first streams touch code and allocator pools every stream then shares.
    let warm = futures::future::join_all((0..16).map(|_| open_idle(&addr, &request))).await;
    // A figure over streams that never opened would say nothing: fail instead.
    assert!(
        warm.iter().any(Option::is_some),
        "{kind}: the server opened none of the warm-up streams"
    );
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib_of(child.id());
    let opened: Vec<TcpStream> = futures::stream::iter(0..k)
        .map(|_| open_idle(&addr, &request))
        .buffer_unordered(128)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib_of(child.id());
    let reached = opened.len();
    drop(opened);
    let _ = child.kill();
    let _ = child.wait();
    (reached, after.saturating_sub(before))
}

async fn idle(k: usize) {
    println!("## idle: {k} concurrent idle SSE streams on one server (server process RSS)");
    for (kind, name) in [
        ("bare", "bare axum Sse handler"),
        ("loom", "loom-server, one direct run each"),
        ("readers", "loom-server, readers of one run"),
    ] {
        let (reached, kib) = idle_streams(kind, k).await;
        let per = kib as f64 / reached.max(1) as f64;
        let target = if kind == "bare" {
            ""
        } else {
            " (target <= 16 KiB)"
        };
        println!(
            "{name}: {reached}/{k} streams open, RSS delta {kib} KiB, {per:.1} KiB per stream{target}"
        );
    }
}

/// `streams` concurrent SSE streams of `paced` at 2 chunks/s each for `secs` against a
/// loom-server subprocess (embedded mode), read by this process over loopback HTTP.
async fn soak(streams: usize, secs: u64) {
    let rate = 2;
    println!("## soak: {streams} SSE streams at {rate} chunks/s each for {secs} s");
    let (mut server, addr) = start_server("loom", streams);
    let count = secs * rate;
    let body = json!({ "input": { "count": count, "every_us": 1_000_000 / rate } }).to_string();
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/actors/paced/stream");
    // At most 16 streams being opened at once, as clients arriving over a second or two: with
    // 256 at once on this machine a tenth of them waited about 1 s for their response head
    // (p50 40 ms), a connection storm measured as time to first chunk.
    let opening = Arc::new(tokio::sync::Semaphore::new(16));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        let opening = Arc::clone(&opening);
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let Ok(permit) = opening.acquire_owned().await else {
                return seen;
            };
            let asked = Instant::now();
            let Ok(response) = http.post(url).body(body).send().await else {
                return seen;
            };
            drop(permit);
            let (mut expected, mut in_order) = (0, true);
            read_frames(response, |frame, now| {
                in_order &= frame.id == Some(expected);
                expected += 1;
                if let Some(t) = frame.stamp {
                    seen.data(asked.elapsed(), now.saturating_sub(t) / 1000);
                }
                seen.ok = in_order && frame.event == "complete";
            })
            .await;
            seen
        }));
    }
    let started = start.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (client_start, server_start) = (rss_kib_of(std::process::id()), rss_kib_of(server.id()));
    // Once more after a minute, when the logs have filled their shared budget.
    tokio::time::sleep(Duration::from_secs(secs.saturating_sub(10).min(55))).await;
    let server_minute = rss_kib_of(server.id());
    tokio::time::sleep(Duration::from_secs(secs.saturating_sub(65))).await;
    let (client_end, server_end) = (rss_kib_of(std::process::id()), rss_kib_of(server.id()));
    let mut seen = Vec::with_capacity(streams);
    for task in tasks {
        seen.push(task.await.unwrap_or_default());
    }
    let took = start.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    report(&seen, count, started, took);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "RSS: server {:.1} (5 s) -> {:.1} (60 s) -> {:.1} MiB (end), client {:.1} -> {:.1} MiB",
        mib(server_start),
        mib(server_minute),
        mib(server_end),
        mib(client_start),
        mib(client_end)
    );
}

/// `--serve loom|bare K`: a server for the idle measurement; prints its address.
async fn serve_child(kind: &str, streams: usize) {
    let (listener, _) = bind().await;
    let addr = listener.local_addr().expect("addr").to_string();
    if kind == "loom" {
        let config = ServerConfig {
            max_streams: streams + 64,
            ..ServerConfig::default()
        };
        spawn_loom(listener, config);
    } else {
        spawn_bare(listener, Arc::new(Vec::new()));
    }
    println!("{addr}");
    std::future::pending::<()>().await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if args.get(1).map(String::as_str) == Some("--serve") {
        let kind = args.get(2).cloned().unwrap_or_default();
        let streams = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
        rt.block_on(serve_child(&kind, streams));
        return;
    }
    let quick = args.iter().any(|a| a == "quick");
    let only: Vec<&str> = ["throughput", "dialects", "latency", "idle", "soak"]
        .into_iter()
        .filter(|name| args.iter().any(|a| a == name))
        .collect();
    // The soak takes minutes: only when asked for.
    let wants = |name: &str| (only.is_empty() && name != "soak") || only.contains(&name);
    rt.block_on(async {
        if wants("throughput") {
            throughput(if quick { 20_000 } else { 200_000 }).await;
        }
        if wants("dialects") {
            dialects(if quick { 20_000 } else { 100_000 }).await;
        }
        if wants("latency") {
            latency(if quick { 500 } else { 2_000 }).await;
        }
        if wants("idle") {
            idle(if quick { 1_000 } else { 10_000 }).await;
        }
        if wants("soak") {
            if quick {
                soak(1_000, 20).await;
            } else {
                soak(10_000, 300).await;
            }
        }
    });
}
