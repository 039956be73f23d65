//! Test helpers: a real server on a loopback port, and an SSE reader over reqwest's byte
//! stream. Every wait is bounded by [`WAIT`].
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use loom_core::{Extensions, Registry, Runtime};
use loom_server::{serve, ServerConfig, ServerState};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A workflow over the built-in actors: a slow batch step, then an echo.
pub const WORKFLOW: &str = r#"
name: report
description: batches then a summary
input:
  properties:
    count: { type: integer, default: 20 }
  additionalProperties: false
actions:
  - name: process
    type: actor
    actorType: batch
    input:
      count: "${{ input.count }}"
      batch_size: 10
      delay_ms: 1
  - name: summary
    type: actor
    actorType: echo
    input:
      processed: "${{ steps.process.output.processed }}"
"#;

/// [`WORKFLOW`], parsed against the built-in actors.
pub fn workflow() -> loom_workflow::Workflow {
    let builtins = Registry::with_builtins();
    loom_workflow::parse(WORKFLOW, "report.yaml", &|t| builtins.contains(t))
        .expect("the test workflow parses")
}

/// Awaits `future` for at most [`WAIT`].
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("timed out waiting")
}

/// An error answer's status, `code` and `message`.
pub async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = within(response.json()).await.expect("an error body");
    let code = body["error"]["code"].as_str().expect("code").to_owned();
    let message = body["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    (status, code, message)
}

/// A server on 127.0.0.1:0 with the built-in actors and [`WORKFLOW`].
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client for it.
    pub http: reqwest::Client,
    /// The state it serves.
    pub state: ServerState,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a server with `config` and the built-in actors.
    pub async fn start(config: ServerConfig) -> Self {
        Self::start_with(Registry::with_builtins(), config).await
    }

    /// Starts a server with `config` and the actors of `registry`.
    pub async fn start_with(registry: Registry, config: ServerConfig) -> Self {
        let runtime = Runtime::new(registry, Extensions::new());
        let state = ServerState::new(runtime, vec![workflow()], config);
        Self::serve(state).await
    }

    /// Starts a server in front of the workers of `client`'s Redis, knowing the built-in
    /// actors and [`WORKFLOW`].
    pub async fn distributed(client: loom_redis::Client, config: ServerConfig) -> Self {
        let state =
            ServerState::distributed(client, Registry::with_builtins(), vec![workflow()], config);
        Self::serve(state).await
    }

    async fn serve(state: ServerState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Self {
            base,
            http: reqwest::Client::new(),
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A server with the default configuration.
    pub async fn default_config() -> Self {
        Self::start(ServerConfig::default()).await
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        within(self.http.get(self.url(path)).send())
            .await
            .expect("GET")
    }

    /// `GET path` with `Last-Event-ID: last_seen`, as a reader resuming.
    pub async fn resume(&self, path: &str, last_seen: impl ToString) -> reqwest::Response {
        let request = self
            .http
            .get(self.url(path))
            .header("last-event-id", last_seen.to_string());
        within(request.send()).await.expect("GET")
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        within(self.http.post(self.url(path)).body(body.to_string()).send())
            .await
            .expect("POST")
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        within(self.http.delete(self.url(path)).send())
            .await
            .expect("DELETE")
    }

    /// `POST /v1/runs` and the new run's id.
    pub async fn detached(&self, body: Value) -> String {
        let response = self.post("/v1/runs", &body).await;
        assert_eq!(response.status(), 201);
        let body: Value = within(response.json()).await.expect("json");
        body["run_id"].as_str().expect("run_id").to_owned()
    }

    /// `GET /v1/runs/{id}`'s body.
    pub async fn status(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(response.status(), 200);
        within(response.json()).await.expect("json")
    }

    /// Polls the run's status until it is no longer `running`; returns the final status.
    pub async fn finished(&self, id: &str) -> Value {
        within(async {
            loop {
                let status = self.status(id).await;
                if status["status"] != "running" {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Triggers the graceful shutdown and waits for `serve` to return.
    pub async fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            within(task)
                .await
                .expect("serve task")
                .expect("serve returns Ok");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One SSE frame: a chunk (`id`, `event`, `data`) or a comment.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// `id:`.
    pub id: Option<u64>,
    /// `event:`.
    pub event: Option<String>,
    /// `data:` parsed as JSON (a string when it is not JSON, e.g. `[DONE]`).
    pub data: Option<Value>,
    /// The comment text, for a `:` line.
    pub comment: Option<String>,
}

/// Reads SSE frames from a response body.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl SseReader {
    /// Reads `response`'s body.
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buf: Vec::new(),
        }
    }

    /// The next frame, comments included; `None` at the end of the body.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        within(async {
            loop {
                if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                    return Some(parse(&frame[..end]));
                }
                match self.body.next().await {
                    Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
    }

    /// The next chunk frame, skipping comments.
    pub async fn next_chunk(&mut self) -> Option<Frame> {
        loop {
            let frame = self.next_frame().await?;
            if frame.comment.is_none() {
                return Some(frame);
            }
        }
    }

    /// Every chunk frame to the end of the body.
    pub async fn rest(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_chunk().await {
            frames.push(frame);
        }
        frames
    }
}

fn parse(text: &[u8]) -> Frame {
    let text = std::str::from_utf8(text).expect("utf-8 frame");
    let mut frame = Frame {
        id: None,
        event: None,
        data: None,
        comment: None,
    };
    for line in text.split('\n') {
        if let Some(c) = line.strip_prefix(':') {
            frame.comment = Some(c.to_owned());
        } else if let Some(id) = line.strip_prefix("id: ") {
            frame.id = Some(id.parse().expect("numeric id"));
        } else if let Some(event) = line.strip_prefix("event: ") {
            frame.event = Some(event.to_owned());
        } else if let Some(data) = line.strip_prefix("data: ") {
            // JSON, or a plain marker such as the dialects' `[DONE]` (kept as a string).
            frame.data =
                Some(serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned())));
        } else {
            panic!("unexpected SSE line {line:?}");
        }
    }
    frame
}

/// The `seq`s of `frames`, checking each frame's `id` is its chunk's `seq`.
pub fn seqs(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| {
            let seq = f
                .data
                .as_ref()
                .and_then(|d| d["seq"].as_u64())
                .expect("seq");
            assert_eq!(f.id, Some(seq));
            seq
        })
        .collect()
}

/// A slow batch input: `batches` batches `delay_ms` apart.
pub fn slow_batch(batches: u64, delay_ms: u64) -> Value {
    serde_json::json!({ "count": batches, "batch_size": 1, "delay_ms": delay_ms })
}

/// The run id a response names in its `Loom-Run-Id` header.
pub fn run_id_of(response: &reqwest::Response) -> String {
    response.headers()["loom-run-id"]
        .to_str()
        .expect("a text run id")
        .to_owned()
}
