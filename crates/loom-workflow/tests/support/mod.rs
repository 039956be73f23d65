//! Shared test helpers: test actors that the test drives step by step, drop guards that show
//! an actor stopped, and stream-contract checks.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use loom_core::{
    async_trait, Actor, ActorContext, ActorError, ActorStream, ChunkStream, ChunkType, ErrorCode,
    Event, Extensions, Output, Registry, Runtime, StreamChunk,
};
use loom_workflow::Workflow;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

/// Every wait in these tests is bounded by this, so a hang fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// The actor types the examples use; `chat-agent` comes from loom-ai in the CLI.
pub fn example_types(actor_type: &str) -> bool {
    matches!(actor_type, "echo" | "batch" | "team-demo" | "chat-agent")
}

/// A runtime with loom-core's built-ins, a test `chat-agent`, and `extra`.
pub fn runtime_with(extra: Vec<Arc<dyn Actor>>) -> Arc<Runtime> {
    let mut registry = Registry::with_builtins();
    registry.register(Arc::new(TestChat));
    for actor in extra {
        registry.register(actor);
    }
    Arc::new(Runtime::new(registry, Extensions::new()))
}

/// Parses a YAML workflow named `test.yaml` against the runtime's actor types.
pub fn workflow(runtime: &Runtime, yaml: &str) -> Workflow {
    use loom_core::Invoker;
    loom_workflow::parse(yaml, "test.yaml", &|t| runtime.knows(t))
        .unwrap_or_else(|e| panic!("workflow should load: {e}"))
}

/// The next chunk, failing the test if none comes within [`WAIT`].
pub async fn next(chunks: &mut ChunkStream) -> StreamChunk {
    tokio::time::timeout(WAIT, chunks.next())
        .await
        .expect("timed out waiting for a chunk")
        .expect("the stream ended early")
}

/// Reads chunks until the terminal one (inclusive), within [`WAIT`].
pub async fn until_terminal(chunks: &mut ChunkStream) -> Vec<StreamChunk> {
    let mut out = Vec::new();
    loop {
        let chunk = next(chunks).await;
        let terminal = chunk.is_terminal();
        out.push(chunk);
        if terminal {
            return out;
        }
    }
}

/// Every chunk of the stream, checking it ends after the terminal chunk.
pub async fn collect(mut chunks: ChunkStream) -> Vec<StreamChunk> {
    let out = until_terminal(&mut chunks).await;
    let after = tokio::time::timeout(WAIT, chunks.next())
        .await
        .expect("timed out waiting for the end of the stream");
    assert!(after.is_none(), "a chunk after the terminal: {after:?}");
    assert_contract(&out);
    out
}

/// One gapless `seq` from 0, `start` first, exactly one terminal chunk, last.
pub fn assert_contract(chunks: &[StreamChunk]) {
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.seq, i as u64, "seq gap at {i}: {}", chunk.to_json());
    }
    assert_eq!(chunks.first().map(|c| c.kind), Some(ChunkType::Start));
    let terminals = chunks.iter().filter(|c| c.is_terminal()).count();
    assert_eq!(terminals, 1, "exactly one terminal chunk");
    assert!(chunks.last().is_some_and(StreamChunk::is_terminal));
}

/// The markers of the stream as `(event, step)`.
pub fn markers(chunks: &[StreamChunk]) -> Vec<(Event, String)> {
    chunks
        .iter()
        .filter_map(|c| Some((c.event?, c.step.as_deref()?.to_owned())))
        .collect()
}

/// The tokens forwarded for `step`, in order.
pub fn tokens_of(chunks: &[StreamChunk], step: &str) -> Vec<String> {
    chunks
        .iter()
        .filter(|c| c.step.as_deref() == Some(step) && c.event.is_none())
        .filter_map(|c| c.token().map(str::to_owned))
        .collect()
}

pub fn terminal(chunks: &[StreamChunk]) -> &StreamChunk {
    chunks.last().expect("no chunks")
}

pub fn error_code(chunk: &StreamChunk) -> Option<ErrorCode> {
    chunk.error.as_ref().map(|e| e.code)
}

/// Signals when dropped: proof that an actor's stream was dropped (the actor stopped).
pub struct DropGuard(Option<oneshot::Sender<()>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// What a test tells a [`Controlled`] actor to do next.
pub enum Cmd {
    Token(&'static str),
    Progress(u64),
    Complete(Value),
    Fail(ActorError),
}

/// An actor that does exactly what the test sends it, when the test sends it. Runs once.
pub struct Controlled {
    name: String,
    commands: Mutex<Option<mpsc::UnboundedReceiver<Cmd>>>,
    dropped: Mutex<Option<oneshot::Sender<()>>>,
}

/// The test's side of a [`Controlled`] actor.
pub struct Control {
    pub commands: mpsc::UnboundedSender<Cmd>,
    /// Resolves when the actor's stream is dropped.
    pub dropped: oneshot::Receiver<()>,
}

impl Control {
    pub fn send(&self, cmd: Cmd) {
        self.commands.send(cmd).expect("the actor is gone");
    }

    /// Waits (bounded) until the actor's stream was dropped.
    pub async fn wait_dropped(&mut self) {
        tokio::time::timeout(WAIT, &mut self.dropped)
            .await
            .expect("timed out waiting for the actor to stop")
            .expect("the guard was lost");
    }
}

pub fn controlled(name: &str) -> (Arc<dyn Actor>, Control) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (drop_tx, drop_rx) = oneshot::channel();
    let actor = Controlled {
        name: name.to_owned(),
        commands: Mutex::new(Some(rx)),
        dropped: Mutex::new(Some(drop_tx)),
    };
    (
        Arc::new(actor),
        Control {
            commands: tx,
            dropped: drop_rx,
        },
    )
}

#[async_trait]
impl Actor for Controlled {
    fn name(&self) -> &str {
        &self.name
    }

    fn streams(&self) -> bool {
        true
    }

    fn stream(self: Arc<Self>, _input: Value, _ctx: ActorContext) -> ActorStream {
        let commands = self.commands.lock().ok().and_then(|mut c| c.take());
        let guard = DropGuard(self.dropped.lock().ok().and_then(|mut d| d.take()));
        Box::pin(async_stream::try_stream! {
            let _guard = guard;
            let Some(mut commands) = commands else {
                Err(ActorError::internal("a controlled actor runs once"))?;
                return;
            };
            while let Some(cmd) = commands.recv().await {
                match cmd {
                    Cmd::Token(t) => yield Output::token(t),
                    Cmd::Progress(n) => yield Output::progress(n, None, format!("step {n}")),
                    Cmd::Complete(v) => yield Output::complete(v),
                    Cmd::Fail(e) => Err(e)?,
                }
            }
            std::future::pending::<()>().await;
        })
    }
}

/// Emits a token, then fails `failures` times (with the given retryability) before it
/// succeeds with `{"attempt": n}`.
pub struct Flaky {
    pub name: String,
    pub failures: AtomicU32,
    pub retryable: bool,
    pub attempts: AtomicU32,
}

impl Flaky {
    pub fn new(name: &str, failures: u32, retryable: bool) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            failures: AtomicU32::new(failures),
            retryable,
            attempts: AtomicU32::new(0),
        })
    }
}

#[async_trait]
impl Actor for Flaky {
    fn name(&self) -> &str {
        &self.name
    }

    fn stream(self: Arc<Self>, _input: Value, _ctx: ActorContext) -> ActorStream {
        Box::pin(async_stream::try_stream! {
            let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
            yield Output::token(format!("partial {attempt}"));
            let failing = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                Err(ActorError::new(ErrorCode::Upstream, format!("flaky attempt {attempt}"))
                    .with_retryable(self.retryable))?;
            }
            yield Output::complete(json!({ "attempt": attempt }));
        })
    }
}

/// Never finishes; counts its starts and its drops.
pub struct Hang {
    pub name: String,
    pub starts: AtomicU32,
    pub drops: Arc<AtomicU32>,
}

impl Hang {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            starts: AtomicU32::new(0),
            drops: Arc::new(AtomicU32::new(0)),
        })
    }
}

struct CountOnDrop(Arc<AtomicU32>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Actor for Hang {
    fn name(&self) -> &str {
        &self.name
    }

    fn stream(self: Arc<Self>, _input: Value, _ctx: ActorContext) -> ActorStream {
        self.starts.fetch_add(1, Ordering::SeqCst);
        let guard = CountOnDrop(Arc::clone(&self.drops));
        Box::pin(async_stream::try_stream! {
            let _guard = guard;
            std::future::pending::<()>().await;
            yield Output::complete(Value::Null);
        })
    }
}

/// A stand-in for loom-ai's `chat-agent`: streams the words of a reply to its prompt as
/// tokens, then completes with `{text, finish_reason, usage}` like the real one.
pub struct TestChat;

#[async_trait]
impl Actor for TestChat {
    fn name(&self) -> &str {
        "chat-agent"
    }

    fn streams(&self) -> bool {
        true
    }

    fn stream(self: Arc<Self>, input: Value, _ctx: ActorContext) -> ActorStream {
        Box::pin(async_stream::try_stream! {
            let prompt = input
                .get("prompt")
                .and_then(Value::as_str)
                .ok_or_else(|| ActorError::bad_input("\"prompt\" is required"))?
                .to_owned();
            let words: Vec<&str> = prompt.split_whitespace().take(6).collect();
            let text = format!("Reply: {}", words.join(" "));
            for (i, word) in text.split(' ').enumerate() {
                tokio::task::yield_now().await;
                yield Output::token(if i == 0 { word.to_owned() } else { format!(" {word}") });
            }
            yield Output::complete(json!({ "text": text, "finish_reason": "stop", "usage": null }));
        })
    }
}
