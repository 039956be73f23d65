//! Test helpers: a fake OpenAI-compatible server (axum, on loopback) that replays scripted
//! replies and records what it was sent and whether a client hung up, and a raw TCP server
//! that writes a response in chosen byte pieces.

#![allow(dead_code, unreachable_pub)]

pub mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use loom_ai::{AiConfig, AiService, RetryPolicy};
use loom_core::{Extensions, Registry, RunOptions, Runtime, StreamChunk};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("the test waited too long")
}

/// A runtime with `chat-agent` registered and `ai` in its extensions.
pub fn chat_runtime(ai: AiService) -> Runtime {
    let mut extensions = Extensions::new();
    extensions.insert(ai);
    let mut registry = Registry::new();
    loom_ai::register(&mut registry);
    Runtime::new(registry, extensions)
}

/// Every chunk of one `chat-agent` run of `input`.
pub async fn run_chat(runtime: &Runtime, input: Value) -> Vec<StreamChunk> {
    use futures::StreamExt;
    let chunks = runtime
        .stream("chat-agent", input, RunOptions::default())
        .expect("run");
    within(chunks.collect::<Vec<_>>()).await
}

/// What the fake server answers to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// `200 text/event-stream`, writing `pieces` one by one with `pause` between them; with
    /// `hold_open`, then a keep-alive comment every 20 ms until the client hangs up.
    Sse {
        pieces: Vec<String>,
        pause: Duration,
        hold_open: bool,
    },
    /// An error status with a body and extra headers.
    Status {
        status: u16,
        body: String,
        headers: Vec<(&'static str, String)>,
    },
    /// Accepts the request and never answers.
    Silence,
}

impl Reply {
    /// The whole SSE body at once.
    pub fn sse(body: impl Into<String>) -> Self {
        Self::Sse {
            pieces: vec![body.into()],
            pause: Duration::ZERO,
            hold_open: false,
        }
    }

    /// The SSE body in pieces, `pause` apart.
    pub fn pieces(pieces: Vec<String>, pause: Duration) -> Self {
        Self::Sse {
            pieces,
            pause,
            hold_open: false,
        }
    }

    /// The pieces, then keep-alives until the client hangs up.
    pub fn hold_open(pieces: Vec<String>) -> Self {
        Self::Sse {
            pieces,
            pause: Duration::from_millis(5),
            hold_open: true,
        }
    }

    /// An OpenAI-style error: `{"error":{"message":…,"type":…,"code":…}}`.
    pub fn error(status: u16, message: &str) -> Self {
        Self::Status {
            status,
            body: format!(
                r#"{{"error":{{"message":{},"type":"invalid_request_error","param":null,"code":null}}}}"#,
                wire::js(message)
            ),
            headers: Vec::new(),
        }
    }

    /// Adds a response header to a [`Reply::Status`].
    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        if let Self::Status { headers, .. } = &mut self {
            headers.push((name, value.to_owned()));
        }
        self
    }
}

/// A request the fake server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The JSON body.
    pub body: Value,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// When it arrived.
    pub at: tokio::time::Instant,
}

#[derive(Clone)]
struct Shared {
    replies: Arc<Vec<Reply>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    hung_up: Arc<Notify>,
    hang_ups: Arc<AtomicUsize>,
}

/// A fake OpenAI-compatible server on `127.0.0.1:0`: the n-th request gets the n-th reply
/// (the last one repeats).
pub struct FakeServer {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(replies: Vec<Reply>) -> Self {
        assert!(!replies.is_empty());
        let shared = Shared {
            replies: Arc::new(replies),
            requests: Arc::default(),
            hung_up: Arc::default(),
            hang_ups: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A service pointed at this server, with fast retries.
    pub fn service(&self) -> AiService {
        AiService::new(self.config()).expect("service")
    }

    /// The config of [`service`](Self::service).
    pub fn config(&self) -> AiConfig {
        AiConfig::openai_compatible(self.base_url())
            .with_model("gpt-4o-mini")
            .with_retry(RetryPolicy {
                max_retries: 3,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(200),
            })
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("lock").clone()
    }

    /// Resolves when a client hung up before a streamed reply was finished.
    pub async fn hung_up(&self) {
        self.shared.hung_up.notified().await
    }

    /// How many clients hung up before their reply was finished.
    pub fn hang_ups(&self) -> usize {
        self.shared.hang_ups.load(Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Notes a hang-up when a streamed body is dropped before its end.
struct HangUpGuard {
    shared: Shared,
    finished: bool,
}

impl Drop for HangUpGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.hang_ups.fetch_add(1, Ordering::SeqCst);
            self.shared.hung_up.notify_one();
        }
    }
}

async fn handle(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let reply = {
        let mut requests = shared.requests.lock().expect("lock");
        requests.push(Recorded {
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            at: tokio::time::Instant::now(),
        });
        let n = requests.len() - 1;
        shared.replies[n.min(shared.replies.len() - 1)].clone()
    };
    match reply {
        Reply::Status {
            status,
            body,
            headers,
        } => {
            let mut response = Response::builder()
                .status(StatusCode::from_u16(status).expect("status"))
                .header("content-type", "application/json");
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response.body(Body::from(body)).expect("response")
        }
        Reply::Silence => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::Sse {
            pieces,
            pause,
            hold_open,
        } => {
            let stream = async_stream::stream! {
                let mut guard = HangUpGuard { shared, finished: false };
                for (i, piece) in pieces.into_iter().enumerate() {
                    if i > 0 && !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    yield Ok::<_, Infallible>(Bytes::from(piece));
                }
                if hold_open {
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        yield Ok(Bytes::from_static(b": keep-alive\n\n"));
                    }
                }
                guard.finished = true;
            };
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(stream))
                .expect("response")
        }
    }
}

/// A raw HTTP/1.1 server that answers every connection with `200 text/event-stream` and then
/// the given byte pieces, each written and flushed on its own with a pause between, so the
/// client's reads end where the test chose; then it closes the connection.
pub struct RawServer {
    pub addr: SocketAddr,
    written: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawServer {
    pub async fn start(pieces: Vec<Vec<u8>>, pause: Duration) -> Self {
        Self::start_with(move || pieces.clone().into_iter(), pause).await
    }

    /// Like [`RawServer::start`], with the pieces made by `pieces` for each connection, so a
    /// test can send more than it could hold (a 100 MB line) or never stop.
    pub async fn start_with<F, I>(pieces: F, pause: Duration) -> Self
    where
        F: Fn() -> I + Send + Sync + 'static,
        I: Iterator<Item = Vec<u8>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pieces = Arc::new(pieces);
        let written = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&written);
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let pieces = pieces();
                let written = Arc::clone(&counter);
                tokio::spawn(async move {
                    let _ = socket.set_nodelay(true);
                    if read_request(&mut socket).await.is_none() {
                        return;
                    }
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                                cache-control: no-cache\r\nconnection: close\r\n\r\n";
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for piece in pieces {
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                        if socket.write_all(&piece).await.is_err() || socket.flush().await.is_err()
                        {
                            return;
                        }
                        written.fetch_add(piece.len(), Ordering::SeqCst);
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            addr,
            written,
            task,
        }
    }

    /// How many body bytes the client has taken so far, over every connection.
    pub fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A service pointed at this server, without retries.
    pub fn service(&self) -> AiService {
        AiService::new(AiConfig::openai_compatible(self.base_url()).with_retry(RetryPolicy::none()))
            .expect("service")
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head and `content-length` body).
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
}

/// [`drain`]s a completion of the prompt `"x"` from `service`.
pub async fn drain_prompt(
    service: AiService,
) -> (String, Vec<loom_ai::TokenEvent>, Option<loom_ai::AiError>) {
    drain(service.stream_completion(loom_ai::CompletionRequest::prompt("x"))).await
}

/// Reads a token stream to its end: the text, the other events, and the error if it ended
/// with one.
pub async fn drain(
    mut stream: loom_ai::TokenStream,
) -> (String, Vec<loom_ai::TokenEvent>, Option<loom_ai::AiError>) {
    use futures::StreamExt;
    let mut text = String::new();
    let mut events = Vec::new();
    while let Some(item) = within(stream.next()).await {
        match item {
            Ok(loom_ai::TokenEvent::Text(t)) => text.push_str(&t),
            Ok(other) => events.push(other),
            Err(e) => return (text, events, Some(e)),
        }
    }
    (text, events, None)
}
