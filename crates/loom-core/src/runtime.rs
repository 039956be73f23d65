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
use crate::output::{Output, OutputKind};
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
}

/// A later attempt at a run whose stream an earlier attempt began (a remote request re-run
/// after its worker died): see [`Runtime::stream_attempt`].
///
/// It is not a field of [`RunOptions`] so that an ordinary caller cannot start a stream
/// anywhere but at `seq` 0; only a transport that re-runs requests needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    number: u32,
    first_seq: u64,
}

impl Attempt {
    /// Attempt `number` (1 for the first), whose `start` chunk takes `first_seq`: the `seq`
    /// after the last chunk the attempts before it wrote.
    pub fn new(number: u32, first_seq: u64) -> Self {
        Self { number, first_seq }
    }

    /// The attempt number.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The `seq` of this attempt's `start` chunk.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }
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
    /// What [`hold`](ChunkStream::hold) keeps alive as long as the stream.
    _held: Option<Box<dyn std::any::Any + Send>>,
}

/// Where a [`ChunkStream`]'s chunks come from. A local run is driven inline (no box, no
/// dynamic call per chunk on the hot path); anything else is a boxed stream.
enum Source {
    Local(Drive),
    Other {
        chunks: BoxStream<'static, StreamChunk>,
        /// Whether [`ChunkStream::poll_forward`] has read a `start` chunk.
        started: bool,
        /// The attempt of a `start` chunk after the first, until
        /// [`ChunkStream::take_restart`] takes it.
        restarted: Option<u32>,
    },
}

impl ChunkStream {
    /// Wraps `inner`, the chunks of run `run_id`; `cancel` is what stops the run.
    pub fn new(
        run_id: impl Into<Arc<str>>,
        inner: BoxStream<'static, StreamChunk>,
        cancel: CancellationToken,
    ) -> Self {
        let source = Source::Other {
            chunks: inner,
            started: false,
            restarted: None,
        };
        Self::with_source(run_id.into(), source, cancel)
    }

    fn with_source(run_id: Arc<str>, inner: Source, cancel: CancellationToken) -> Self {
        Self {
            run_id,
            inner,
            _cancel_on_drop: cancel.clone().drop_guard(),
            cancel,
            _held: None,
        }
    }

    /// Keeps `guard` alive as long as the stream, and drops it with the stream: what a caller
    /// holds only while it reads a run (a worker's slot lent while a run waits for another).
    /// One guard: holding another drops the first.
    #[must_use]
    pub fn hold(mut self, guard: impl Send + 'static) -> Self {
        self._held = Some(Box::new(guard));
        self
    }

    /// The id of the run.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Asks the run to stop; the stream then ends with `error/cancelled`. Outputs the actor
    /// yielded before it saw the cancel may still come first: a run stops at its next await,
    /// or within 64 outputs of an actor that never awaits.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Reads the stream to its terminal chunk: the `complete` chunk's data, or its `error`
    /// as an [`ActorError`]. This is how every `run` (as opposed to `stream`) is built.
    pub async fn result(mut self) -> Result<Value, ActorError> {
        loop {
            let next = std::future::poll_fn(|cx| {
                let mut out = Poll::Pending;
                self.poll_forward(cx, &mut out);
                out
            });
            match next.await {
                Some(Ok(output)) => {
                    if let OutputKind::Complete(result) = output.kind {
                        return Ok(result);
                    }
                }
                Some(Err(err)) => return Err(err),
                None => {
                    return Err(ActorError::internal(
                        "the stream ended without a terminal chunk",
                    ))
                }
            }
        }
    }

    /// Polls for the run's next item as a forwarder (a workflow step passing on its actor's
    /// chunks) wants it: an unnumbered output, without the `start` chunk (the forwarder's own
    /// run numbers what it passes on and writes its own `start`). A local run's outputs come
    /// straight from its actor, never made into chunks, which is what keeps a forwarding
    /// layer cheap. After each item, [`take_restart`](Self::take_restart) tells whether the
    /// run started again before it.
    ///
    /// The item is written into `out` (`Pending` when there is none yet), where the forwarder
    /// tags it before it passes it on: an item returned from layer to layer is copied at each
    /// (it is about a hundred bytes), which was most of what a forwarding layer cost.
    ///
    /// The last item is the `complete` output or the error that ended the run; then `None`.
    /// Use either this or the [`Stream`] of chunks on one `ChunkStream`, not both.
    #[inline]
    pub fn poll_forward(&mut self, cx: &mut Context<'_>, out: &mut Forwarded) {
        match &mut self.inner {
            Source::Local(drive) => {
                drive.start = None;
                drive.poll_output(cx, out)
            }
            Source::Other {
                chunks,
                started,
                restarted,
            } => loop {
                let Poll::Ready(chunk) = chunks.as_mut().poll_next(cx) else {
                    *out = Poll::Pending;
                    return;
                };
                let Some(chunk) = chunk else {
                    *out = Poll::Ready(None);
                    return;
                };
                match chunk.kind {
                    ChunkType::Start if *started => *restarted = Some(chunk.attempt.unwrap_or(2)),
                    ChunkType::Start => *started = true,
                    ChunkType::Error => {
                        *out = Poll::Ready(Some(Err(chunk.error_info().into())));
                        return;
                    }
                    ChunkType::Progress | ChunkType::Data | ChunkType::Complete => {
                        if let Some(output) = Output::from_chunk(chunk) {
                            *out = Poll::Ready(Some(Ok(output)));
                            return;
                        }
                    }
                }
            },
        }
    }

    /// Whether a `start` chunk after the first came before the item
    /// [`poll_forward`](Self::poll_forward) just gave: the run started again from scratch as
    /// this attempt (a remote run re-run after its worker was lost, DESIGN.md §3), so what
    /// came before is superseded. Taken once; never for a local run.
    #[inline]
    pub fn take_restart(&mut self) -> Option<u32> {
        match &mut self.inner {
            Source::Local(_) => None,
            Source::Other { restarted, .. } => restarted.take(),
        }
    }
}

impl Stream for ChunkStream {
    type Item = StreamChunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamChunk>> {
        match &mut self.inner {
            Source::Local(drive) => Pin::new(drive).poll_next(cx),
            Source::Other { chunks, .. } => chunks.as_mut().poll_next(cx),
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
///
/// Like every runner in Loom, it has the verb pair of the crate docs: [`stream`](Self::stream)
/// for the chunks, [`run`](Self::run) for the result.
#[async_trait]
pub trait Invoker: Send + Sync {
    /// Starts `actor_type` on `input` and returns its chunks.
    async fn stream(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<ChunkStream, ActorError>;

    /// Runs `actor_type` on `input` to its end and returns the `complete` chunk's data.
    async fn run(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<Value, ActorError> {
        self.stream(actor_type, input, options)
            .await?
            .result()
            .await
    }

    /// Whether `actor_type` can be invoked here (checked before any work starts).
    fn knows(&self, actor_type: &str) -> bool;
}

/// Runs actors in this process.
///
/// `Runtime::default()` has no actors and no services: enough to run an actor that is not
/// registered with [`stream_actor`](Self::stream_actor).
#[derive(Clone, Debug, Default)]
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

    /// A runtime with this one's services and the actors of `registry` (e.g. this one's
    /// registry plus actors that run their steps on this runtime).
    pub fn with_registry(&self, registry: Registry) -> Self {
        Self {
            registry: Arc::new(registry),
            extensions: Arc::clone(&self.extensions),
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

    /// Starts the actor registered as `actor_type` and returns its chunks; `not_found` if
    /// there is none.
    pub fn stream(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<ChunkStream, ActorError> {
        let actor = self.actor(actor_type)?;
        Ok(drive(
            actor,
            input,
            Arc::clone(&self.extensions),
            options,
            None,
        ))
    }

    /// Runs the actor registered as `actor_type` to its end and returns the `complete`
    /// chunk's data.
    pub async fn run(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<Value, ActorError> {
        self.stream(actor_type, input, options)?.result().await
    }

    /// Starts `actor`, registered or not, and returns its chunks.
    pub fn stream_actor(
        &self,
        actor: impl Actor,
        input: Value,
        options: RunOptions,
    ) -> ChunkStream {
        drive(
            Arc::new(actor),
            input,
            Arc::clone(&self.extensions),
            options,
            None,
        )
    }

    /// Starts `attempt` of a run whose stream an earlier attempt began: the `start` chunk
    /// takes `attempt.first_seq()` and, from the second attempt on, carries `"attempt": n`
    /// (DESIGN.md §3: it tells a consumer to discard the attempt before). Only a transport
    /// that re-runs requests (the `loom-redis` worker) needs this; everyone else calls
    /// [`stream`](Self::stream).
    pub fn stream_attempt(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
        attempt: Attempt,
    ) -> Result<ChunkStream, ActorError> {
        let actor = self.actor(actor_type)?;
        let extensions = Arc::clone(&self.extensions);
        Ok(drive(actor, input, extensions, options, Some(attempt)))
    }

    fn actor(&self, actor_type: &str) -> Result<Arc<dyn Actor>, ActorError> {
        self.registry
            .get(actor_type)
            .ok_or_else(|| ActorError::not_found(format!("unknown actor type '{actor_type}'")))
    }
}

#[async_trait]
impl Invoker for Runtime {
    async fn stream(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<ChunkStream, ActorError> {
        Runtime::stream(self, actor_type, input, options)
    }

    fn knows(&self, actor_type: &str) -> bool {
        self.registry.contains(actor_type)
    }
}

/// Runs `actor` on `input` and returns the contract-keeping stream of its chunks; `attempt`
/// continues a stream an earlier attempt began.
pub(crate) fn drive(
    actor: Arc<dyn Actor>,
    input: Value,
    extensions: Arc<Extensions>,
    options: RunOptions,
    attempt: Option<Attempt>,
) -> ChunkStream {
    let run_id: Arc<str> = options.run_id.unwrap_or_else(new_run_id).into();
    let token = match &options.parent {
        Some(parent) => parent.child_token(),
        None => CancellationToken::new(),
    };
    let ctx = ActorContext::new(Arc::clone(&run_id), token.clone(), extensions);
    let first_seq = attempt.map_or(0, |a| a.first_seq);
    let mut start = StreamChunk::new(ChunkType::Start, first_seq);
    start.data = Some(json!({ "run_id": &*run_id, "actor": actor.name() }));
    start.attempt = attempt.map(|a| a.number).filter(|&n| n > 1);
    let deadline = deadline_after(options.timeout.unwrap_or(DEFAULT_TIMEOUT));
    let drive = Drive {
        start: Some(Box::new(start)),
        actor: Some(open(actor, input, ctx)),
        seq: first_seq + 1,
        token: token.clone(),
        cancelled: None,
        deadline,
        sleep: None,
        since_check: 0,
    };
    ChunkStream::with_source(run_id, Source::Local(drive), token)
}

/// The deadline `timeout` from now; one too far to be represented (a timeout of centuries)
/// is a deadline thirty years away, which no run reaches.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
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

    /// The actor's next output, unnumbered, into `out`: its outputs, then the one that ends
    /// the run — its `complete` output, or the error of whatever else ended it (a failure, a
    /// panic, no result, the deadline, cancellation) — then `None`. The actor's stream is
    /// dropped before the ending is given, so nothing the actor does can come after it.
    ///
    /// The item is written by the actor's own poll where the forwarder reads it, and only
    /// replaced when the run ends there ([`ChunkStream::poll_forward`]).
    #[inline(always)]
    fn poll_output(&mut self, cx: &mut Context<'_>, out: &mut Forwarded) {
        let Some(actor) = self.actor.as_mut() else {
            *out = Poll::Ready(None);
            return;
        };
        poll_actor(actor, cx, out);
        let err = match &*out {
            Poll::Ready(Some(Ok(output))) if !output.is_complete() => match self.periodic_stop() {
                None => return,
                Some(err) => Some(err),
            },
            // An ending that was ready at once after a cancel (a completion, or a failure the
            // cancel itself caused) does not overwrite it.
            Poll::Ready(Some(_)) if self.token.is_cancelled() => Some(ActorError::cancelled()),
            Poll::Ready(Some(_)) => None,
            Poll::Ready(None) => Some(no_result()),
            Poll::Pending => match self.stop_while_pending(cx) {
                None => return,
                Some(err) => Some(err),
            },
        };
        if let Some(err) = err {
            *out = Poll::Ready(Some(Err(err)));
        }
        self.end();
    }

    /// Whether the run must stop while its actor waits: cancelled, or past its deadline.
    /// Registers the waker with both, so either wakes the run.
    fn stop_while_pending(&mut self, cx: &mut Context<'_>) -> Option<ActorError> {
        let token = &self.token;
        let cancelled = self
            .cancelled
            .get_or_insert_with(|| Box::pin(token.clone().cancelled_owned()));
        if cancelled.as_mut().poll(cx).is_ready() {
            return Some(ActorError::cancelled());
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_pending() {
            return None;
        }
        Some(self.timeout_error())
    }

    /// Drops the actor's stream, so nothing it does can come after the run's end.
    fn end(&mut self) {
        self.actor = None;
        self.cancelled = None;
        self.sleep = None;
    }
}

impl Stream for Drive {
    type Item = StreamChunk;

    #[inline]
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamChunk>> {
        let this = self.get_mut();
        if let Some(start) = this.start.take() {
            return Poll::Ready(Some(*start));
        }
        let Some(actor) = this.actor.as_mut() else {
            return Poll::Ready(None);
        };
        // The same steps as `poll_output`, written out: numbering the output right where it
        // arrives keeps the plain run's path free of the moves a shared helper costs here.
        let mut polled = Poll::Pending;
        poll_actor(actor, cx, &mut polled);
        let outcome = match polled {
            Poll::Ready(Some(Ok(output))) if !output.is_complete() => match this.periodic_stop() {
                None => {
                    let chunk = output.into_chunk(this.seq);
                    this.seq += 1;
                    return Poll::Ready(Some(chunk));
                }
                Some(err) => Err(err),
            },
            // An ending that was ready at once after a cancel (a completion, or a failure the
            // cancel itself caused) does not overwrite it.
            Poll::Ready(Some(_)) if this.token.is_cancelled() => Err(ActorError::cancelled()),
            Poll::Ready(Some(outcome)) => outcome,
            Poll::Ready(None) => Err(no_result()),
            Poll::Pending => match this.stop_while_pending(cx) {
                None => return Poll::Pending,
                Some(err) => Err(err),
            },
        };
        this.end();
        let chunk = match outcome {
            Ok(output) => output.into_chunk(this.seq),
            Err(err) => StreamChunk::error(this.seq, &err),
        };
        this.seq += 1;
        Poll::Ready(Some(chunk))
    }
}

/// The actor's stream for one run; a panic while it is made (in
/// [`stream`](Actor::stream) itself, before its first poll) is a stream of that one error, as a
/// panic in a poll is ([`poll_actor`]).
pub(crate) fn open(actor: Arc<dyn Actor>, input: Value, ctx: ActorContext) -> ActorStream {
    catch_unwind(AssertUnwindSafe(|| actor.stream(input, ctx))).unwrap_or_else(|panic| {
        let error = panicked(panic.as_ref());
        Box::pin(futures::stream::once(async move { Err(error) }))
    })
}

/// The error of an actor that panicked with `payload`.
fn panicked(payload: &(dyn Any + Send)) -> ActorError {
    ActorError::internal(format!("the actor panicked: {}", panic_message(payload)))
}

/// Polls an actor's stream for its next item into `out`, turning a panic into an error.
/// `Ready(None)` breaks the contract too (an end without a `complete` output): see
/// [`no_result`]. The item is written where the caller keeps it, not returned out of the
/// panic guard (a copy).
#[inline(always)]
pub(crate) fn poll_actor(actor: &mut ActorStream, cx: &mut Context<'_>, out: &mut Forwarded) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| *out = actor.as_mut().poll_next(cx))) {
        *out = Poll::Ready(Some(Err(panicked(panic.as_ref()))));
    }
}

/// What a forwarder polls a run for ([`ChunkStream::poll_forward`]): its next unnumbered
/// output or the error that ended it, `Ready(None)` after that, or `Pending`.
pub type Forwarded = Poll<Option<Result<Output, ActorError>>>;

/// The error of an actor whose stream ended without a `complete` output.
pub(crate) fn no_result() -> ActorError {
    ActorError::internal("the actor's stream ended without a complete output")
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
