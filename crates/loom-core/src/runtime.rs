//! The local runtime: turns an actor's [`Output`]s into a [`ChunkStream`] that keeps the
//! stream contract.
//!
//! This module is the only place that numbers chunks and the only place that writes a
//! terminal chunk. Whatever the actor does — completes, returns an error, panics, ends
//! without a result, overruns its deadline or is cancelled — the consumer sees `start`,
//! then gapless `seq`s, then exactly one `complete` or `error`.
//!
//! There is no task or channel between the actor and its consumer: the consumer's poll drives
//! the actor's generator directly, so a consumer that stops pulling is the backpressure and
//! dropping the stream drops (cancels) the actor.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{Future, Stream};
use serde_json::{json, Value};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};

use crate::actor::{Actor, ActorStream};
use crate::chunk::{ChunkType, StreamChunk};
use crate::context::{new_run_id, ActorContext, Extensions};
use crate::error::{ActorError, ErrorCode};
use crate::output::Output;
use crate::registry::Registry;

/// The deadline of a run when none is given: long enough for a long LLM generation, short
/// enough that a stuck run does not live forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How many outputs an actor may yield back to back between two checks of its deadline and
/// cancellation. A generator that never awaits never returns `Pending`, so the timer and the
/// cancellation waker alone could not stop it; but reading the clock and the token's mutex on
/// every chunk would cost more than the rest of the hot path. An actor that awaits is stopped
/// at its next await instead.
const CHECK_EVERY: u32 = 64;

/// Knobs for one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The run id; a new random one when `None`.
    pub run_id: Option<String>,
    /// The deadline, from the start of the run; [`DEFAULT_TIMEOUT`] when `None`.
    pub timeout: Option<Duration>,
    /// A token the run's own token is a child of, so cancelling it cancels the run.
    pub parent: Option<CancellationToken>,
    /// The `seq` of the `start` chunk (a re-run of a remote request continues its stream).
    pub first_seq: u64,
    /// The attempt number written on the `start` chunk when set (remote re-runs).
    pub attempt: Option<u32>,
}

/// What a consumer reads: the chunks of one run, local or remote.
///
/// Dropping a `ChunkStream` cancels its run. [`cancel`](Self::cancel) asks the run to stop
/// and keeps the stream readable, so the consumer still gets the terminal `error/cancelled`.
pub struct ChunkStream {
    run_id: Arc<str>,
    inner: Source,
    cancel: CancellationToken,
    _cancel_on_drop: DropGuard,
}

/// Where a [`ChunkStream`]'s chunks come from. A local run is driven inline (no box, no
/// dynamic call per chunk on the hot path); anything else is a boxed stream.
enum Source {
    Local(Drive),
    Other(BoxStream<'static, StreamChunk>),
}

impl ChunkStream {
    /// Wraps `inner`, the chunks of run `run_id`; `cancel` is what stops the run.
    pub fn new(
        run_id: impl Into<Arc<str>>,
        inner: BoxStream<'static, StreamChunk>,
        cancel: CancellationToken,
    ) -> Self {
        Self::with_source(run_id.into(), Source::Other(inner), cancel)
    }

    fn with_source(run_id: Arc<str>, inner: Source, cancel: CancellationToken) -> Self {
        Self {
            run_id,
            inner,
            _cancel_on_drop: cancel.clone().drop_guard(),
            cancel,
        }
    }

    /// The id of the run.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Asks the run to stop; the stream then ends with `error/cancelled`.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The run's cancellation token.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }
}

impl Stream for ChunkStream {
    type Item = StreamChunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamChunk>> {
        match &mut self.inner {
            Source::Local(drive) => Pin::new(drive).poll_next(cx),
            Source::Other(stream) => stream.as_mut().poll_next(cx),
        }
    }
}

impl std::fmt::Debug for ChunkStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStream")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// Starts a run by actor type name: the seam that the local [`Runtime`] and remote clients
/// (`loom-redis`) both implement, so teams, workflows and the CLI do not care where a run
/// happens.
#[async_trait]
pub trait Invoker: Send + Sync {
    /// Starts `actor_type` on `input` and returns its chunks.
    async fn invoke(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<ChunkStream, ActorError>;

    /// Whether `actor_type` can be invoked here (checked before any work starts).
    fn knows(&self, actor_type: &str) -> bool;
}

/// Runs actors in this process.
#[derive(Clone, Debug)]
pub struct Runtime {
    registry: Arc<Registry>,
    extensions: Arc<Extensions>,
}

impl Runtime {
    /// A runtime for the actors of `registry`, with the services of `extensions`.
    pub fn new(registry: Registry, extensions: Extensions) -> Self {
        Self {
            registry: Arc::new(registry),
            extensions: Arc::new(extensions),
        }
    }

    /// The registered actors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The services actors reach through [`ActorContext::get`].
    pub fn extensions(&self) -> &Arc<Extensions> {
        &self.extensions
    }

    /// Runs the actor registered as `actor_type`; `not_found` if there is none.
    pub fn run(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<ChunkStream, ActorError> {
        let actor = self
            .registry
            .get(actor_type)
            .ok_or_else(|| ActorError::not_found(format!("unknown actor type '{actor_type}'")))?;
        Ok(self.run_actor(actor, input, options))
    }

    /// Runs `actor` (registered or not).
    pub fn run_actor(
        &self,
        actor: Arc<dyn Actor>,
        input: Value,
        options: RunOptions,
    ) -> ChunkStream {
        run_actor(actor, input, Arc::clone(&self.extensions), options)
    }
}

#[async_trait]
impl Invoker for Runtime {
    async fn invoke(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<ChunkStream, ActorError> {
        self.run(actor_type, input, options)
    }

    fn knows(&self, actor_type: &str) -> bool {
        self.registry.contains(actor_type)
    }
}

/// Runs `actor` on `input` and returns the contract-keeping stream of its chunks.
pub fn run_actor(
    actor: Arc<dyn Actor>,
    input: Value,
    extensions: Arc<Extensions>,
    options: RunOptions,
) -> ChunkStream {
    let run_id: Arc<str> = options.run_id.unwrap_or_else(new_run_id).into();
    let token = match &options.parent {
        Some(parent) => parent.child_token(),
        None => CancellationToken::new(),
    };
    let ctx = ActorContext::new(Arc::clone(&run_id), token.clone(), extensions);
    let mut start = StreamChunk::new(ChunkType::Start, options.first_seq);
    start.data = Some(json!({ "run_id": &*run_id, "actor": actor.name() }));
    start.attempt = options.attempt;
    let deadline = Instant::now() + options.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let drive = Drive {
        start: Some(Box::new(start)),
        actor: Some(actor.stream(input, ctx)),
        seq: options.first_seq + 1,
        token: token.clone(),
        cancelled: None,
        deadline,
        sleep: None,
        since_check: 0,
    };
    ChunkStream::with_source(run_id, Source::Local(drive), token)
}

/// The state machine between an actor's stream and its consumer.
struct Drive {
    /// The `start` chunk, until it is taken by the first poll (boxed: it is used once, and
    /// keeping it inline would make every local `ChunkStream` three times larger).
    start: Option<Box<StreamChunk>>,
    /// The actor's stream; `None` once the terminal chunk was written.
    actor: Option<ActorStream>,
    /// The `seq` of the next chunk.
    seq: u64,
    token: CancellationToken,
    /// Created on the first `Pending`, so a busy actor never pays for waker registration.
    cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    deadline: Instant,
    /// Created on the first `Pending`, like `cancelled`.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Outputs since the last [`Drive::periodic_stop`] check.
    since_check: u32,
}

impl Drive {
    /// Ends the run: drops the actor's stream *before* numbering the terminal chunk, so
    /// nothing the actor does can come after it.
    fn finish(&mut self, outcome: Result<Output, ActorError>) -> StreamChunk {
        self.actor = None;
        self.cancelled = None;
        self.sleep = None;
        let seq = self.seq;
        match outcome {
            Ok(output) => output.into_chunk(seq),
            Err(err) => StreamChunk::error(seq, &err),
        }
    }

    fn timeout_error(&self) -> ActorError {
        ActorError::new(ErrorCode::Timeout, "the run passed its deadline")
    }

    /// The cheap, periodic check for an actor that keeps yielding without awaiting.
    fn periodic_stop(&mut self) -> Option<ActorError> {
        self.since_check += 1;
        if self.since_check < CHECK_EVERY {
            return None;
        }
        self.since_check = 0;
        if self.token.is_cancelled() {
            Some(ActorError::cancelled())
        } else if Instant::now() >= self.deadline {
            Some(self.timeout_error())
        } else {
            None
        }
    }
}

impl Stream for Drive {
    type Item = StreamChunk;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamChunk>> {
        let this = self.get_mut();
        if let Some(start) = this.start.take() {
            return Poll::Ready(Some(*start));
        }
        let Some(actor) = this.actor.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = catch_unwind(AssertUnwindSafe(|| actor.as_mut().poll_next(cx)));
        let outcome = match polled {
            Ok(Poll::Ready(Some(Ok(output)))) => {
                if output.is_complete() {
                    Ok(output)
                } else if let Some(err) = this.periodic_stop() {
                    Err(err)
                } else {
                    let chunk = output.into_chunk(this.seq);
                    this.seq += 1;
                    return Poll::Ready(Some(chunk));
                }
            }
            Ok(Poll::Ready(Some(Err(err)))) => Err(err),
            Ok(Poll::Ready(None)) => Err(ActorError::internal(
                "the actor's stream ended without a complete output",
            )),
            Err(panic) => Err(ActorError::internal(format!(
                "the actor panicked: {}",
                panic_message(panic.as_ref())
            ))),
            Ok(Poll::Pending) => {
                let token = &this.token;
                let cancelled = this
                    .cancelled
                    .get_or_insert_with(|| Box::pin(token.clone().cancelled_owned()));
                if cancelled.as_mut().poll(cx).is_ready() {
                    Err(ActorError::cancelled())
                } else {
                    let deadline = this.deadline;
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        Err(this.timeout_error())
                    } else {
                        return Poll::Pending;
                    }
                }
            }
        };
        Poll::Ready(Some(this.finish(outcome)))
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}
