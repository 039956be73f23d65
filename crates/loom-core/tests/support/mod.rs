//! Test actors and helpers shared by loom-core's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use loom_core::{
    async_trait, Actor, ActorContext, ActorError, ActorStream, ChunkStream, ChunkType, Extensions,
    Output, Registry, RunOptions, Runtime, StreamChunk,
};
use serde_json::Value;
use tokio::sync::oneshot;

/// Every wait in a test is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(10);

/// A runtime with the built-in actors.
pub fn runtime() -> Runtime {
    Runtime::new(Registry::with_builtins(), Extensions::new())
}

/// Runs `actor` through the runtime.
pub fn stream_of(actor: impl Actor, options: RunOptions) -> ChunkStream {
    runtime().stream_actor(actor, Value::Null, options)
}

/// Reads the whole stream, failing the test if it takes longer than [`LIMIT`].
pub async fn collect(stream: ChunkStream) -> Vec<StreamChunk> {
    tokio::time::timeout(LIMIT, stream.collect::<Vec<_>>())
        .await
        .expect("the stream ended in time")
}

/// Reads the next chunk within [`LIMIT`].
pub async fn next(stream: &mut ChunkStream) -> StreamChunk {
    tokio::time::timeout(LIMIT, stream.next())
        .await
        .expect("a chunk in time")
        .expect("the stream has not ended")
}

/// Asserts the stream contract: `start` first, gapless `seq` from 0, exactly one terminal
/// chunk, and it is the last one.
pub fn assert_contract(chunks: &[StreamChunk]) {
    assert!(
        !chunks.is_empty(),
        "a stream has at least start and a terminal chunk"
    );
    assert_eq!(chunks[0].kind, ChunkType::Start, "the first chunk is start");
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.seq, i as u64, "seq is gapless from 0: {chunks:?}");
    }
    let terminals = chunks.iter().filter(|c| c.is_terminal()).count();
    assert_eq!(terminals, 1, "exactly one terminal chunk: {chunks:?}");
    assert!(
        chunks.last().is_some_and(StreamChunk::is_terminal),
        "the terminal chunk is last"
    );
}

/// Fires its channel when dropped: shows that an actor's future was dropped (cancelled).
pub struct DropSignal(pub Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Yields `data` chunks `before` times, then waits forever, holding a [`DropSignal`].
pub struct Hanger {
    pub name: &'static str,
    pub before: u64,
    pub dropped: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl Hanger {
    pub fn new(name: &'static str, before: u64) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let hanger = Self {
            name,
            before,
            dropped: std::sync::Mutex::new(Some(tx)),
        };
        (hanger, rx)
    }
}

#[async_trait]
impl Actor for Hanger {
    fn name(&self) -> &str {
        self.name
    }

    fn stream(self: Arc<Self>, _input: Value, _ctx: ActorContext) -> ActorStream {
        let signal = DropSignal(self.dropped.lock().expect("not poisoned").take());
        let before = self.before;
        Box::pin(async_stream::try_stream! {
            let _signal = signal;
            for i in 0..before {
                yield Output::data(i);
            }
            std::future::pending::<()>().await;
            yield Output::complete(Value::Null);
        })
    }
}

/// An actor made of a closure over its input and context, for one-off behaviours.
pub struct FnActor<F>(&'static str, F);

/// Builds an [`FnActor`]; the closure returns the actor's stream.
pub fn fn_actor<F, S>(name: &'static str, f: F) -> FnActor<F>
where
    F: Fn(Value, ActorContext) -> S + Send + Sync + 'static,
    S: futures::Stream<Item = Result<Output, ActorError>> + Send + 'static,
{
    FnActor(name, f)
}

#[async_trait]
impl<F, S> Actor for FnActor<F>
where
    F: Fn(Value, ActorContext) -> S + Send + Sync + 'static,
    S: futures::Stream<Item = Result<Output, ActorError>> + Send + 'static,
{
    fn name(&self) -> &str {
        self.0
    }

    fn stream(self: Arc<Self>, input: Value, ctx: ActorContext) -> ActorStream {
        Box::pin((self.1)(input, ctx))
    }
}

/// Shorthand for an `ActorError::failed`.
pub fn failed(message: &str) -> ActorError {
    ActorError::failed(message)
}
