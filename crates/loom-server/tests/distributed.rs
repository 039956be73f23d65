//! Distributed mode: servers in front of a real `redis-server` and a worker. The servers run
//! nothing themselves; any of them serves, resumes and cancels any run.

#[path = "../../loom-redis/tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::sync::Arc;
use std::time::Duration;

use loom_core::{Extensions, Registry, Runtime};
use loom_redis::{Client, ClientOptions, Worker, WorkerOptions};
use loom_server::ServerConfig;
use loom_workflow::WorkflowExecutor;
use redis_server::RedisServer;
use serde_json::{json, Value};
use support::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Short timings, and a key prefix of the test's own (the Redis may be shared).
fn options(prefix: &str) -> ClientOptions {
    ClientOptions {
        prefix: prefix.to_owned(),
        lease_ttl: Duration::from_millis(800),
        lease_refresh: Duration::from_millis(200),
        visibility_timeout: Duration::from_millis(1500),
        pickup_timeout: Duration::from_secs(6),
        read_block: Duration::from_millis(500),
        queue_shards: 1,
        ..ClientOptions::default()
    }
}

/// A Redis, one worker serving the built-in actors and `workflows/report`, and a way to make
/// servers and clients on the same keys.
struct Cluster {
    redis: RedisServer,
    prefix: String,
    options: ClientOptions,
    stop: Option<oneshot::Sender<()>>,
    worker: Option<JoinHandle<()>>,
}

impl Cluster {
    async fn start() -> Self {
        let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
        let options = options(&prefix);
        Self::start_on(RedisServer::start(), prefix, options).await
    }

    async fn start_on(redis: RedisServer, prefix: String, options: ClientOptions) -> Self {
        let mut cluster = Self {
            redis,
            prefix,
            options,
            stop: None,
            worker: None,
        };
        let client = cluster.client().await;
        let local = Arc::new(Runtime::new(Registry::with_builtins(), Extensions::new()));
        let mut registry = Registry::with_builtins();
        registry.register(WorkflowExecutor::new(local.clone()).worker_actor(workflow()));
        let runtime = local.with_registry(registry);
        let worker = Worker::new(client.clone(), runtime, WorkerOptions::default());
        let (stop, stopped) = oneshot::channel::<()>();
        cluster.stop = Some(stop);
        cluster.worker = Some(tokio::spawn(async move {
            worker
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("the worker stops cleanly");
        }));
        within(async {
            while !client
                .served_actors()
                .await
                .expect("served")
                .contains("workflows/report")
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        cluster
    }

    async fn client(&self) -> Client {
        within(Client::connect_with(self.redis.url(), self.options.clone()))
            .await
            .expect("connect")
    }

    /// A new server (its own Redis connections, as another process would have).
    async fn server(&self, config: ServerConfig) -> TestServer {
        TestServer::distributed(self.client().await, config).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(worker) = &self.worker {
            worker.abort();
        }
    }
}

fn texts(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f.event.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn actors_workflows_run_and_stream_go_through_the_worker() {
    let cluster = Cluster::start().await;
    let server = cluster.server(ServerConfig::default()).await;

    let actors: Value = server.get("/v1/actors").await.json().await.unwrap();
    let names: Vec<&str> = actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"echo") && names.contains(&"batch"),
        "{actors}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("workflows/")),
        "{actors}"
    );
    let workflows: Value = server.get("/v1/workflows").await.json().await.unwrap();
    assert_eq!(workflows["workflows"][0]["name"], "report", "{workflows}");
    assert_eq!(
        workflows["workflows"][0]["steps"],
        json!(["process", "summary"])
    );

    let ran = server
        .post("/v1/actors/echo/run", &json!({ "input": { "hi": 1 } }))
        .await;
    assert_eq!(ran.status(), 200);
    assert!(ran.headers().contains_key("loom-run-id"));
    assert_eq!(ran.json::<Value>().await.unwrap(), json!({ "hi": 1 }));

    let response = server
        .post(
            "/v1/workflows/report/stream",
            &json!({ "input": { "count": 3 } }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let frames = SseReader::new(response).rest().await;
    let last = frames.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("complete"), "{frames:?}");
    let result = &last.data.as_ref().unwrap()["data"];
    assert_eq!(result["steps"]["summary"]["processed"], 3, "{result}");
    assert_eq!(seqs(&frames), (0..frames.len() as u64).collect::<Vec<_>>());

    // Checked before anything is queued: no worker serves it, the input fails the schema.
    let unknown = server.post("/v1/actors/nobody/stream", &json!({})).await;
    assert_eq!(unknown.status(), 404);
    let bad = server
        .post(
            "/v1/workflows/report/stream",
            &json!({ "input": { "count": "x" } }),
        )
        .await;
    assert_eq!(bad.status(), 422);

    // The server watched the two runs it queued to their ends.
    let metrics = within(async {
        loop {
            let text = server.get("/metrics").await.text().await.unwrap();
            if text.contains("loom_runs_finished_total{outcome=\"complete\"} 2\n") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(metrics.contains("\nloom_active_runs 0\n"), "{metrics}");
    assert!(
        metrics.contains("\nloom_time_to_first_chunk_seconds_count 2\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_run_started_on_one_server_is_joined_resumed_and_cancelled_through_another() {
    let cluster = Cluster::start().await;
    let a = cluster.server(ServerConfig::default()).await;
    let b = cluster.server(ServerConfig::default()).await;
    let id = a
        .detached(json!({ "actor": "batch", "input": slow_batch(500, 20) }))
        .await;

    let status = b.status(&id).await;
    assert_eq!(status["actor"], "batch");
    assert_eq!(status["status"], "running");
    let listed: Value = b.get("/v1/runs").await.json().await.unwrap();
    assert_eq!(listed["runs"][0]["run_id"], id.as_str(), "{listed}");

    // Join on b, read a few chunks, drop the connection, resume after the last one seen.
    let mut first = SseReader::new(b.get(&format!("/v1/runs/{id}/stream")).await);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(first.next_chunk().await.expect("a chunk"));
    }
    drop(first);
    let last_seen = seen.last().unwrap().id.unwrap();
    let resumed = within(
        b.http
            .get(b.url(&format!("/v1/runs/{id}/stream")))
            .header("Last-Event-ID", last_seen.to_string())
            .send(),
    )
    .await
    .unwrap();
    let mut resumed = SseReader::new(resumed);
    let next = resumed.next_chunk().await.expect("the next chunk");
    assert_eq!(next.id, Some(last_seen + 1));

    // Cancel through b; a reader on a sees the worker's terminal `error/cancelled`.
    let mut on_a = SseReader::new(
        a.get(&format!("/v1/runs/{id}/stream?from={last_seen}"))
            .await,
    );
    let cancelled = b.delete(&format!("/v1/runs/{id}")).await;
    assert_eq!(cancelled.status(), 202);
    // The answer waited for the worker's terminal chunk.
    let answer: Value = cancelled.json().await.unwrap();
    assert_eq!(answer["status"], "cancelled", "{answer}");
    let rest = on_a.rest().await;
    let end = rest.last().unwrap();
    assert_eq!(end.event.as_deref(), Some("error"), "{:?}", texts(&rest));
    assert_eq!(end.data.as_ref().unwrap()["error"]["code"], "cancelled");
    assert_eq!(
        seqs(&rest),
        ((last_seen + 1)..=end.id.unwrap()).collect::<Vec<_>>()
    );
    let status = a.finished(&id).await;
    assert_eq!(status["status"], "cancelled");
    assert_eq!(status["error_code"], "cancelled");
    // Idempotent, and a cursor at the terminal is 204.
    assert_eq!(b.delete(&format!("/v1/runs/{id}")).await.status(), 202);
    let at_end = a
        .get(&format!("/v1/runs/{id}/stream?from={}", end.id.unwrap()))
        .await;
    assert_eq!(at_end.status(), 204);
    assert_eq!(a.get("/v1/runs/no-such-run/stream").await.status(), 404);
    assert_eq!(a.get("/v1/runs/bad:id").await.status(), 404);
}

#[tokio::test]
async fn a_direct_stream_rejoined_on_another_server_survives_its_client_and_then_ends_by_the_grace()
{
    let cluster = Cluster::start().await;
    let config = ServerConfig {
        disconnect_grace: Duration::from_millis(400),
        ..ServerConfig::default()
    };
    let a = cluster.server(config.clone()).await;
    let b = cluster.server(config).await;
    let response = a
        .post(
            "/v1/actors/batch/stream",
            &json!({ "input": slow_batch(500, 20) }),
        )
        .await;
    let id = run_id_of(&response);
    let mut direct = SseReader::new(response);
    let seen = direct.next_chunk().await.unwrap().id.unwrap();
    drop(direct);
    // Back within the grace, on the other server.
    let mut rejoined = SseReader::new(b.get(&format!("/v1/runs/{id}/stream?from={seen}")).await);
    rejoined.next_chunk().await.expect("a chunk");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(a.status(&id).await["status"], "running");
    drop(rejoined);
    let status = a.finished(&id).await;
    assert_eq!(status["status"], "cancelled");
}

/// A queue at `max_queued` (`--max-queued`) refuses a new run with `429 queue_full` and
/// `Retry-After`; the running one goes on.
#[tokio::test]
async fn past_max_queued_a_run_is_429_queue_full() {
    let cluster = Cluster::start().await;
    let bounded = ClientOptions {
        max_queued: Some(1),
        ..options(&cluster.prefix)
    };
    let client = within(Client::connect_with(cluster.redis.url(), bounded))
        .await
        .expect("connect");
    let server = TestServer::distributed(client, ServerConfig::default()).await;
    let running = server
        .detached(json!({ "actor": "batch", "input": slow_batch(40, 20) }))
        .await;
    let refused = server
        .post(
            "/v1/actors/batch/stream",
            &json!({ "input": slow_batch(1, 1) }),
        )
        .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let (status, code, message) = error_of(refused).await;
    assert_eq!((status, code.as_str()), (429, "queue_full"), "{message}");
    assert!(message.contains("'batch'"), "{message}");
    assert_eq!(server.finished(&running).await["status"], "complete");
}

/// A server whose `--queue-shards` differs from the workers' would queue runs no worker
/// reads: it refuses them, saying so.
#[tokio::test]
async fn a_server_on_other_queue_shards_than_the_workers_says_so() {
    let cluster = Cluster::start().await;
    let four = ClientOptions {
        queue_shards: 4,
        ..options(&cluster.prefix)
    };
    let client = within(Client::connect_with(cluster.redis.url(), four))
        .await
        .expect("connect");
    let server = TestServer::distributed(client, ServerConfig::default()).await;
    let refused = server
        .post("/v1/actors/echo/run", &json!({ "input": {} }))
        .await;
    let (status, code, message) = error_of(refused).await;
    assert_eq!((status, code.as_str()), (404, "not_found"), "{message}");
    assert!(
        message.contains("live workers serve it with --queue-shards 1, this server uses 4"),
        "{message}"
    );
    // The WebSocket upgrade is refused the same way, before its handshake.
    let url = format!("{}/v1/actors/echo/ws", server.base.replace("http", "ws"));
    match within(tokio_tungstenite::connect_async(url)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(
                body.contains("--queue-shards 1, this server uses 4"),
                "{body}"
            );
        }
        other => panic!("expected a 404 handshake, got {other:?}"),
    }
}

/// With no worker serving it, an actor type the server describes is a passing shortage (a
/// worker starting, or advertising again after a Redis restart): `503` with `Retry-After`,
/// not `404`, which stays for a name nobody knows. Nothing is queued either way.
#[tokio::test]
async fn an_actor_no_worker_serves_yet_is_503_and_an_unknown_one_404() {
    let redis = RedisServer::start();
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let client = within(Client::connect_with(redis.url(), options(&prefix)))
        .await
        .expect("connect");
    let server = TestServer::distributed(client.clone(), ServerConfig::default()).await;

    let response = server
        .post("/v1/actors/echo/run", &json!({ "input": {} }))
        .await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"), "{message}");
    assert!(
        message.contains("no live worker serves actor type 'echo'"),
        "{message}"
    );
    let url = format!("{}/v1/actors/echo/ws", server.base.replace("http", "ws"));
    match within(tokio_tungstenite::connect_async(url)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["retry-after"], "1");
        }
        other => panic!("expected a 503 handshake, got {other:?}"),
    }
    let (status, code, message) = error_of(
        server
            .post("/v1/actors/nobody/stream", &json!({ "input": {} }))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "not_found"), "{message}");
    // Nothing was queued for either.
    assert!(within(client.recent_runs(10))
        .await
        .expect("runs")
        .is_empty());
}

/// A stream the server ended itself — its reader's own verdict after Redis stayed
/// unreachable past the outage timeout — is not its client leaving: the run is not cancelled
/// after the disconnect grace ("cancelled by client") but goes on, to be rejoined.
#[tokio::test]
async fn a_stream_ended_by_a_redis_outage_starts_no_disconnect_grace() {
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let options = ClientOptions {
        outage_timeout: Duration::from_millis(1500),
        ..options(&prefix)
    };
    let cluster = Cluster::start_on(RedisServer::start_own(), prefix, options).await;
    let server = cluster
        .server(ServerConfig {
            disconnect_grace: Duration::from_millis(500),
            ..ServerConfig::default()
        })
        .await;
    let response = server
        .post(
            "/v1/actors/batch/stream",
            &json!({ "input": slow_batch(60, 100) }),
        )
        .await;
    let id = run_id_of(&response);
    let mut reader = SseReader::new(response);
    within(reader.next_chunk()).await.expect("a first chunk");
    cluster.redis.pause();
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.redis.resume();
    let frames = within(reader.rest()).await;
    let last = frames
        .last()
        .and_then(|f| f.data.clone())
        .expect("a last chunk");
    assert_eq!(last["error"]["code"], "upstream", "{last}");
    // Past the grace, the run goes on to its end: nobody cancelled it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "complete", "{status}");
}

#[tokio::test]
async fn a_server_that_shuts_down_closes_its_streams_without_a_terminal_and_the_run_goes_on() {
    let cluster = Cluster::start().await;
    let mut a = cluster.server(ServerConfig::default()).await;
    let b = cluster.server(ServerConfig::default()).await;
    let id = a
        .detached(json!({ "actor": "batch", "input": slow_batch(40, 20) }))
        .await;
    let mut reader = SseReader::new(a.get(&format!("/v1/runs/{id}/stream")).await);
    reader.next_chunk().await.expect("a chunk");
    // A dialect's official clients cannot resume: its stream ends with its error event, so
    // that a cut stream is never taken for a whole one.
    let mut ag_ui = SseReader::new(a.get(&format!("/v1/runs/{id}/stream?format=ag-ui")).await);
    within(ag_ui.next_frame()).await.expect("RUN_STARTED");
    a.shut_down().await;
    let rest = reader.rest().await;
    assert!(
        rest.iter()
            .all(|f| !matches!(f.event.as_deref(), Some("complete" | "error"))),
        "{:?}",
        texts(&rest)
    );
    let events = within(ag_ui.rest()).await;
    let last = events
        .last()
        .and_then(|f| f.data.clone())
        .expect("a last event");
    assert_eq!(last["type"], "RUN_ERROR", "{last}");
    let message = last["message"].as_str().unwrap_or_default();
    assert!(message.contains("the server is shutting down"), "{last}");
    assert!(message.contains(&format!("/v1/runs/{id}/stream")), "{last}");
    let status = b.finished(&id).await;
    assert_eq!(status["status"], "complete", "{status}");
}

/// A server shutting down closes its direct streams, then waits out their disconnect grace: a
/// run whose client resumed through another server goes on, one whose client never came back
/// is cancelled. Regression test for the run that went on to its end once the server it was
/// streamed from had shut down (the grace's timer died with it).
#[tokio::test]
async fn a_server_that_shuts_down_still_cancels_a_direct_run_whose_client_does_not_come_back() {
    let cluster = Cluster::start().await;
    let config = ServerConfig {
        disconnect_grace: Duration::from_millis(600),
        ..ServerConfig::default()
    };
    let mut a = cluster.server(config.clone()).await;
    let b = cluster.server(config).await;
    let mut readers = Vec::new();
    for _ in 0..2 {
        let body = json!({ "input": slow_batch(1000, 20) });
        let response = a.post("/v1/actors/batch/stream", &body).await;
        let id = run_id_of(&response);
        let mut reader = SseReader::new(response);
        let seen = reader.next_chunk().await.unwrap().id.unwrap();
        readers.push((id, seen, reader));
    }
    let (gone, _, gone_reader) = readers.remove(0);
    let (back, seen, mut back_reader) = readers.remove(0);
    let started = std::time::Instant::now();
    let ((), mut resumed) = tokio::join!(a.shut_down(), async {
        // Its client comes back through the other server as soon as the stream closes.
        back_reader.rest().await;
        SseReader::new(b.get(&format!("/v1/runs/{back}/stream?from={seen}")).await)
    });
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the shutdown waited out the grace: {:?}",
        started.elapsed()
    );
    drop(gone_reader);
    assert_eq!(b.finished(&gone).await["status"], "cancelled");
    resumed.next_chunk().await.expect("the resumed run goes on");
    assert_eq!(b.status(&back).await["status"], "running");
}

#[tokio::test]
async fn chat_completions_run_on_the_workers_too() {
    let cluster = Cluster::start().await;
    let server = cluster.server(ServerConfig::default()).await;
    let ask = |model: &str, content: &str, stream: bool| {
        json!({
            "model": model,
            "messages": [{ "role": "user", "content": content }],
            "stream": stream,
        })
    };
    let completion: Value = server
        .post(
            "/v1/chat/completions",
            &ask("workflows/report", r#"{"count": 3}"#, false),
        )
        .await
        .json()
        .await
        .unwrap();
    let content = completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    let result: Value = serde_json::from_str(content).unwrap();
    assert_eq!(result["steps"]["summary"]["processed"], 3, "{completion}");

    let response = server
        .post(
            "/v1/chat/completions",
            &ask("echo", r#"{"said": "hi"}"#, true),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains(r#""content":"{\"said\":\"hi\"}""#), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");

    let missing = server
        .post("/v1/chat/completions", &ask("nobody", "x", false))
        .await;
    assert_eq!(missing.status(), 404);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["type"], "not_found_error");
    assert_eq!(error["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_background_response_started_on_one_server_is_cancelled_and_resumed_through_another() {
    let cluster = Cluster::start().await;
    let a = cluster.server(ServerConfig::default()).await;
    let b = cluster.server(ServerConfig::default()).await;
    let created: Value = a
        .post(
            "/v1/responses",
            &json!({ "model": "team-demo", "input": "Loom", "background": true }),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("resp_"), "{created}");
    let mut events = SseReader::new(
        b.get(&format!("/v1/responses/{id}?stream=true&starting_after=1"))
            .await,
    );
    let first = events.next_frame().await.expect("an event");
    assert_eq!(first.data.as_ref().unwrap()["sequence_number"], 2);
    let cancelled: Value = b
        .post(&format!("/v1/responses/{id}/cancel"), &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let rest = events.rest().await;
    let last = rest.last().unwrap().data.as_ref().unwrap();
    assert_eq!(last["type"], "response.failed");
    assert_eq!(last["response"]["status"], "cancelled");
}

#[tokio::test]
async fn ag_ui_and_ai_sdk_streams_run_on_the_workers_and_a_chat_resumes_on_another_server() {
    let cluster = Cluster::start().await;
    let a = cluster.server(ServerConfig::default()).await;
    let b = cluster.server(ServerConfig::default()).await;
    let ag_ui = a
        .post(
            "/v1/ag-ui/workflows/report",
            &json!({
                "threadId": "t", "runId": "r",
                "messages": [{ "id": "u", "role": "user", "content": "{\"count\": 3}" }],
            }),
        )
        .await;
    let events = SseReader::new(ag_ui).rest().await;
    let types: Vec<&str> = events
        .iter()
        .map(|f| f.data.as_ref().unwrap()["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"RUN_STARTED"));
    assert_eq!(types.last(), Some(&"RUN_FINISHED"));
    assert_eq!(types.iter().filter(|t| **t == "STEP_STARTED").count(), 2);

    let chat = json!({
        "id": "chat-9", "trigger": "submit-message",
        "messages": [{ "id": "u", "role": "user", "parts": [{ "type": "text", "text": "Loom" }] }],
    });
    let sent = a.post("/v1/ai-sdk/team-demo", &chat).await;
    assert_eq!(sent.headers()["x-vercel-ai-ui-message-stream"], "v1");
    let mut first = SseReader::new(sent);
    first.next_frame().await.expect("a part");
    // The chat's run is found through Redis by the other server, and replayed from its start.
    let resumed = b.get("/v1/ai-sdk/team-demo/chat-9/stream").await;
    assert_eq!(resumed.status(), 200);
    // Another agent's path finds nothing of its own to resume; an unknown agent is 404.
    assert_eq!(b.get("/v1/ai-sdk/echo/chat-9/stream").await.status(), 204);
    assert_eq!(b.get("/v1/ai-sdk/nope/chat-9/stream").await.status(), 404);
    let mut replay = SseReader::new(resumed);
    let start = replay.next_frame().await.expect("the start part");
    assert_eq!(start.data.as_ref().unwrap()["type"], "start");
    let rest = replay.rest().await;
    assert_eq!(rest.last().unwrap().data, Some(json!("[DONE]")));
    drop(first);
    let done = b.get("/v1/ai-sdk/team-demo/chat-9/stream").await;
    assert_eq!(done.status(), 204);
    assert_eq!(
        b.get("/v1/ai-sdk/team-demo/other-chat/stream")
            .await
            .status(),
        204
    );
}

#[tokio::test]
async fn an_entry_loom_cannot_decode_ends_the_read_without_an_id_and_the_run_shows_it() {
    let cluster = Cluster::start().await;
    let server = cluster.server(ServerConfig::default()).await;
    let id = server
        .detached(json!({ "actor": "batch", "input": slow_batch(200, 50) }))
        .await;
    let mut reader = SseReader::new(server.get(&format!("/v1/runs/{id}/stream")).await);
    let first = reader.next_chunk().await.expect("a chunk");
    assert!(first.id.is_some());
    // Another client writes an entry Loom cannot read, far ahead of the run's own.
    let client = cluster.client().await;
    let mut conn = cluster.redis.plain();
    let _: String = redis::cmd("XADD")
        .arg(client.keys().stream(&id))
        .arg("999999-1")
        .arg("type")
        .arg("data")
        .query(&mut conn)
        .unwrap();
    let rest = reader.rest().await;
    let last = rest.last().expect("a last frame");
    assert_eq!(last.event.as_deref(), Some("error"), "{:?}", texts(&rest));
    assert_eq!(last.data.as_ref().unwrap()["error"]["code"], "internal");
    assert_eq!(
        last.id, None,
        "the verdict is in no entry: a resume must not take it for one"
    );
    // The run's status, and the list of runs, say so rather than failing.
    let status = server.status(&id).await;
    assert_eq!(status["status"], "error", "{status}");
    assert_eq!(status["error_code"], "internal", "{status}");
    let listed = server.get("/v1/runs").await;
    assert_eq!(listed.status(), 200);
}
