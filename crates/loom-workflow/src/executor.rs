//! [`WorkflowExecutor`]: runs a [`Workflow`] as one stream.
//!
//! The workflow itself is an [`Actor`] run through the local [`Runtime`], so the runtime numbers its
//! chunks (one gapless `seq` across every step), writes `start` and exactly one terminal,
//! enforces the workflow's deadline and turns a dropped stream into cancellation. Each step is
//! started through the [`Invoker`] seam with the workflow's cancellation token as parent, so
//! cancelling the workflow reaches every running step, local or remote, and whatever they
//! run in turn (nested actors, in-flight LLM requests).
//!
//! The stream's shape is documented on [`WorkflowExecutor`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::Stream;
use loom_core::{
    Actor, ActorContext, ActorError, ActorStream, CancellationToken, ChunkStream, ErrorCode,
    ErrorInfo, Event, Forwarded, Invoker, Output, OutputKind, RunOptions, Runtime, Tag, Turns,
};
use serde_json::{json, Map, Value};
use tokio::time::Sleep;

use crate::reference;
use crate::workflow::{Action, ActorAction, Workflow, MAX_BACKOFF};
use loom_core::MAX_DURATION;

/// The deadline of a whole workflow when neither the definition nor the caller sets one:
/// longer than one step's default, since a workflow chains several long LLM steps.
pub const DEFAULT_WORKFLOW_TIMEOUT: Duration = Duration::from_secs(3600);

/// Runs workflows through an [`Invoker`]: the local [`Runtime`](loom_core::Runtime) or a
/// remote client. Cheap to clone.
///
/// # The stream a workflow run produces
///
/// `start` (its `data.actor` is the workflow's name), then for each action in order:
///
/// | chunk | when | shape |
/// |---|---|---|
/// | `action-start` | a step (or parallel group) starts | `progress` chunk, `event`, `step`; `progress.current`/`total` = steps finished / steps in all |
/// | forwarded | the step's own chunks | its `progress` chunks always, its `data` chunks (tokens, partial results) when `streaming: true`; tagged `step`, team members keep `actor` |
/// | `action-retry` | a retryable failure is retried, or a remote step is re-run by another worker (a second `start` in its stream) | `progress` chunk; everything the step forwarded since its `action-start` (or previous `action-retry`) is superseded |
/// | `action-complete` | a step (or group) succeeded | `data` chunk, `event`, `step`; `data` is the step's result (a group's: its steps' results by name) |
/// | `action-failed` | a `continue_on_error` step failed | `data` chunk `{"error": {code, message, retryable}}`; the step's output is `null` |
///
/// and finally `complete` with `{"steps": {name: output, …}}` (plus `"failed": {name: error}`
/// when `continue_on_error` steps failed), or `error` naming the failed step after its
/// running siblings were cancelled.
///
/// Markers that start something are `progress` chunks (DESIGN.md §3); markers that end a step
/// carry its result or error and are therefore `data` chunks. A chunk with `event` is always
/// a marker of this workflow: forwarded chunks lose any `event` of their own (a nested
/// workflow's markers become plain progress of the outer step).
#[derive(Clone)]
pub struct WorkflowExecutor {
    invoker: Arc<dyn Invoker>,
}

/// How a workflow's error names the step that failed: `step '<name>' failed: <its error>`.
const STEP_FAILED_PREFIX: &str = "step '";
const STEP_FAILED_INFIX: &str = "' failed: ";

/// The step a workflow's terminal error names as the one that failed (`None` when the
/// workflow failed otherwise: its deadline, a cancel), for a display that tells the failed
/// step from the siblings stopped with it.
pub fn failed_step(message: &str) -> Option<&str> {
    message
        .strip_prefix(STEP_FAILED_PREFIX)?
        .split_once(STEP_FAILED_INFIX)
        .map(|(name, _)| name)
}

impl std::fmt::Debug for WorkflowExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowExecutor").finish_non_exhaustive()
    }
}

impl WorkflowExecutor {
    /// An executor that starts every step through `invoker`.
    pub fn new(invoker: Arc<dyn Invoker>) -> Self {
        Self { invoker }
    }

    /// The invoker steps run through; `&|t| executor.invoker().knows(t)` is the `knows` to
    /// load definitions with.
    pub fn invoker(&self) -> &Arc<dyn Invoker> {
        &self.invoker
    }

    /// Runs `workflow` on `input` and returns its stream (its shape is described on [`WorkflowExecutor`]).
    /// Dropping the stream cancels every running step.
    ///
    /// Bad input ends the stream with `error/bad_input`; call
    /// [`Workflow::check_input`] first to reject it before anything starts.
    pub fn stream(&self, workflow: impl Into<Arc<Workflow>>, input: Value) -> ChunkStream {
        self.stream_with(workflow, input, RunOptions::default())
    }

    /// [`stream`](Self::stream) with run options: a run id, a parent cancellation token, a
    /// deadline, which can only bring the end sooner than the definition's own `timeout`
    /// (else [`DEFAULT_WORKFLOW_TIMEOUT`]).
    pub fn stream_with(
        &self,
        workflow: impl Into<Arc<Workflow>>,
        input: Value,
        mut options: RunOptions,
    ) -> ChunkStream {
        let workflow = workflow.into();
        options.timeout = options.timeout.or(Some(MAX_DURATION));
        Runtime::default().stream_actor(self.actor(workflow), input, options)
    }

    /// Runs `workflow` to its end and returns the `complete` chunk's data.
    pub async fn run(
        &self,
        workflow: impl Into<Arc<Workflow>>,
        input: Value,
    ) -> Result<Value, ActorError> {
        self.stream(workflow, input).result().await
    }

    /// `workflow` as an actor named after it, e.g. to register in a
    /// [`Registry`](loom_core::Registry) or serve over HTTP. It ends itself with
    /// `error/timeout` at its definition's `timeout` (else [`DEFAULT_WORKFLOW_TIMEOUT`]) after
    /// it starts, or sooner at its run's deadline; give its runs the deadline
    /// [`default_timeout`] says when the caller sets none.
    pub fn actor(&self, workflow: impl Into<Arc<Workflow>>) -> Arc<dyn Actor> {
        let workflow = workflow.into();
        let name = workflow.name.clone();
        self.actor_named(name, workflow)
    }

    /// `workflow` as the actor workers serve it under: `workflows/<name>` (a queue of its own,
    /// named so it cannot clash with an actor type), for `loom worker --workflows DIR`.
    pub fn worker_actor(&self, workflow: impl Into<Arc<Workflow>>) -> Arc<dyn Actor> {
        let workflow = workflow.into();
        let name = format!("{WORKFLOW_ACTOR_PREFIX}{}", workflow.name);
        self.actor_named(name, workflow)
    }

    fn actor_named(&self, name: String, workflow: Arc<Workflow>) -> Arc<dyn Actor> {
        Arc::new(WorkflowActor {
            name,
            workflow,
            invoker: Arc::clone(&self.invoker),
        })
    }
}

/// What the actor type of a workflow served by workers starts with
/// ([`WorkflowExecutor::worker_actor`]).
pub const WORKFLOW_ACTOR_PREFIX: &str = "workflows/";

struct WorkflowActor {
    name: String,
    workflow: Arc<Workflow>,
    invoker: Arc<dyn Invoker>,
}

impl Actor for WorkflowActor {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        self.workflow.description.as_deref().unwrap_or("a workflow")
    }

    fn streams(&self) -> bool {
        true
    }

    fn stream(self: Arc<Self>, input: Value, ctx: ActorContext) -> ActorStream {
        run_workflow(
            Arc::clone(&self.workflow),
            Arc::clone(&self.invoker),
            input,
            ctx,
        )
    }
}

/// The deadline to give a run of `actor_type` whose caller sets none, for callers that may not
/// have its definition: a workflow served by workers (`workflows/<name>`) ends itself at its
/// definition's `timeout`, so its run gets the longest deadline ([`MAX_DURATION`]); any
/// other actor type `None` (the runtime's default).
pub fn default_timeout(actor_type: &str) -> Option<Duration> {
    actor_type
        .starts_with(WORKFLOW_ACTOR_PREFIX)
        .then_some(MAX_DURATION)
}

/// A workflow's own deadline, from its definition's `timeout` (else
/// [`DEFAULT_WORKFLOW_TIMEOUT`]): it holds wherever the workflow runs, since on a worker the
/// run's deadline is its caller's, who may not know the definition. Counted from the run's
/// first poll, inside the runtime.
///
/// The timer is polled only when the workflow has nothing ready (to be woken at the
/// deadline), and the clock read every [`DEADLINE_CHECK_EVERY`] items otherwise: polling it
/// per item cost a forwarded token about a third more. Kept inside [`WorkflowRun`], not
/// wrapped around it, so a forwarded token crosses no stream boundary more.
struct Deadline {
    timeout: Duration,
    /// Started at the first poll.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Items given since the clock was last read.
    given: u32,
}

/// How many items a workflow gives between two reads of the clock while it has items ready.
const DEADLINE_CHECK_EVERY: u32 = 64;

impl Deadline {
    /// Whether the deadline has passed, by the clock when it is its turn to be read (the
    /// timer starts at the first call).
    #[inline(always)]
    fn passed(&mut self) -> bool {
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        self.given += 1;
        if self.given < DEADLINE_CHECK_EVERY {
            return false;
        }
        self.given = 0;
        tokio::time::Instant::now() >= sleep.deadline()
    }

    /// Whether the deadline has passed, by its timer, which then wakes `cx` when it does:
    /// for a workflow that has nothing ready.
    fn passed_while_waiting(&mut self, cx: &mut Context<'_>) -> bool {
        self.sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

/// How a step ended (after its retries).
struct StepEnd {
    name: String,
    continue_on_error: bool,
    outcome: Result<Value, ErrorInfo>,
}

fn run_workflow(
    workflow: Arc<Workflow>,
    invoker: Arc<dyn Invoker>,
    input: Value,
    ctx: ActorContext,
) -> ActorStream {
    let input = match workflow.check_input(input) {
        Ok(input) => input,
        Err(err) => return Box::pin(futures::stream::iter([Err(err.into())])),
    };
    Box::pin(WorkflowRun {
        total: workflow.steps().count() as u64,
        deadline: Deadline {
            timeout: workflow.timeout.unwrap_or(DEFAULT_WORKFLOW_TIMEOUT),
            sleep: None,
            given: 0,
        },
        workflow,
        invoker,
        input,
        ctx,
        next: 0,
        done: 0,
        steps: Map::new(),
        failed: Map::new(),
        queued: VecDeque::new(),
        running: None,
        ended: false,
    })
}

/// A running workflow: its actions one after another, the chunks of each running step
/// forwarded as they come.
///
/// Written by hand rather than as a generator (as are [`StepRun`] and the team's stream in
/// `loom-core`): a forwarded output is written by its actor's poll into a slot of this
/// stream's `poll_next`, tagged there on the way (`Forwarded`), and copied once, into the
/// return; a generator's slot, or an item returned from layer to layer, copies it at each.
struct WorkflowRun {
    workflow: Arc<Workflow>,
    invoker: Arc<dyn Invoker>,
    /// The input, checked against the schema.
    input: Value,
    ctx: ActorContext,
    total: u64,
    /// The index of the next action to start.
    next: usize,
    /// Steps finished, for the markers' `progress.current`.
    done: u64,
    /// Every finished step's output, by name (what references resolve against).
    steps: Map<String, Value>,
    /// The errors of failed `continue_on_error` steps, by name.
    failed: Map<String, Value>,
    /// Markers to give before anything else, in order.
    queued: VecDeque<Output>,
    /// The action running now.
    running: Option<Running>,
    /// Whether the terminal output (or error) was given.
    ended: bool,
    /// The workflow's own deadline.
    deadline: Deadline,
}

/// The steps of one action (one step, or a parallel group's), polled here on the workflow's
/// own task, so a group's chunks interleave as they are produced.
struct Running {
    /// The parallel group's name; `None` for a single step.
    group: Option<String>,
    /// The steps still running, polled in turn (so every step of a group gets its turn
    /// however fast the others are).
    steps: Turns<StepRun>,
    /// The results of its finished steps, by name (a group's result).
    results: Map<String, Value>,
}

impl WorkflowRun {
    /// Starts the action at `self.next`: queues its markers and starts its steps.
    fn start_action(&mut self) {
        let workflow = Arc::clone(&self.workflow);
        let action = &workflow.actions[self.next];
        self.next += 1;
        let (group, members) = match action {
            Action::Actor(step) => (None, std::slice::from_ref(step)),
            Action::Parallel(group) => (Some(group.name.clone()), group.actions.as_slice()),
        };
        if let Some(group) = &group {
            let marker = group_start_marker(group, members, self.done, self.total);
            self.queued.push_back(marker);
        }
        let mut runs = Vec::with_capacity(members.len());
        for step in members {
            let marker = start_marker(step, self.done, self.total);
            self.queued.push_back(marker);
            let input = reference::resolve_within(&step.input, &self.input, &self.steps)
                .map_err(|why| ActorError::bad_input(format!("step '{}': {why}", step.name)));
            let parent = self.ctx.cancellation_token().clone();
            let invoker = Arc::clone(&self.invoker);
            let counts = (self.done, self.total);
            runs.push(StepRun::new(invoker, step.clone(), input, parent, counts));
        }
        self.running = Some(Running {
            group,
            steps: Turns::new(runs),
            results: Map::new(),
        });
    }

    /// Takes in a step's end: queues its marker, or fails the workflow.
    fn step_done(&mut self, end: StepEnd) -> Result<(), ActorError> {
        let StepEnd {
            name,
            continue_on_error,
            outcome,
        } = end;
        let Some(running) = &mut self.running else {
            return Ok(());
        };
        match outcome {
            Ok(value) => {
                self.done += 1;
                self.steps.insert(name.clone(), value.clone());
                running.results.insert(name.clone(), value.clone());
                self.queued.push_back(complete_marker(&name, value));
                Ok(())
            }
            // The workflow itself was cancelled: its steps fail with `cancelled` as a
            // consequence, which is neither their fault nor worth a marker.
            Err(_) if self.ctx.is_cancelled() => Err(ActorError::cancelled()),
            Err(info) if continue_on_error => {
                self.done += 1;
                self.steps.insert(name.clone(), Value::Null);
                running.results.insert(name.clone(), Value::Null);
                self.failed.insert(name.clone(), json!(info));
                self.queued.push_back(failed_marker(&name, &info));
                Ok(())
            }
            Err(info) => {
                let message = format!(
                    "{STEP_FAILED_PREFIX}{name}{STEP_FAILED_INFIX}{}",
                    info.message
                );
                Err(ActorError::new(info.code, message).with_retryable(info.retryable))
            }
        }
    }

    /// The workflow's result: `{"steps": …}`, plus `"failed": …` when steps failed.
    fn result(&mut self) -> Output {
        let mut result = Map::new();
        result.insert(
            "steps".to_owned(),
            Value::Object(std::mem::take(&mut self.steps)),
        );
        if !self.failed.is_empty() {
            let failed = std::mem::take(&mut self.failed);
            result.insert("failed".to_owned(), Value::Object(failed));
        }
        Output::complete(Value::Object(result))
    }
}

impl WorkflowRun {
    /// What comes when no step output is due: a queued marker, the end, or the next action
    /// started (`None`: poll the steps). Kept out of `poll_next`, so the path a forwarded
    /// output takes stays small.
    #[inline(never)]
    fn advance(&mut self) -> Option<Option<Result<Output, ActorError>>> {
        if let Some(marker) = self.queued.pop_front() {
            return Some(Some(Ok(marker)));
        }
        if self.ended {
            return Some(None);
        }
        if self.running.is_some() {
            return None;
        }
        if self.ctx.is_cancelled() {
            // Cancelled between steps: the next one is not started.
            self.ended = true;
            return Some(Some(Err(ActorError::cancelled())));
        }
        if self.next < self.workflow.actions.len() {
            self.start_action();
            return None;
        }
        self.ended = true;
        Some(Some(Ok(self.result())))
    }

    /// Ends the workflow on a failure: drops the running steps (which cancels every one still
    /// running, through its run's token) and the markers not given yet; its error comes next.
    fn fail(&mut self) {
        self.running = None;
        self.queued.clear();
        self.ended = true;
    }

    /// Takes in a step's end; on the workflow's failure, drops the running steps (which
    /// cancels every sibling still running, through its run's token) and returns the error.
    #[inline(never)]
    fn end_step(&mut self, end: StepEnd) -> Option<ActorError> {
        let err = self.step_done(end).err()?;
        self.fail();
        Some(err)
    }

    /// Every step of the running action ended: a group's own `action-complete` marker.
    #[inline(never)]
    fn end_action(&mut self) {
        if let Some(Running {
            group: Some(group),
            results,
            ..
        }) = self.running.take()
        {
            self.queued
                .push_back(complete_marker(&group, Value::Object(results)));
        }
    }
}

impl Stream for WorkflowRun {
    type Item = Result<Output, ActorError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended && this.queued.is_empty() {
            return Poll::Ready(None);
        }
        if this.deadline.passed() {
            return Poll::Ready(Some(Err(this.timed_out())));
        }
        match this.poll_actions(cx) {
            Poll::Pending if this.deadline.passed_while_waiting(cx) => {
                Poll::Ready(Some(Err(this.timed_out())))
            }
            polled => polled,
        }
    }
}

impl WorkflowRun {
    /// The workflow passed its own deadline: drops its running steps (which cancels them)
    /// and gives the error.
    #[inline(never)]
    fn timed_out(&mut self) -> ActorError {
        self.fail();
        ActorError::new(
            ErrorCode::Timeout,
            format!(
                "workflow '{}' passed its timeout ({})",
                self.workflow.name,
                humantime::format_duration(self.deadline.timeout)
            ),
        )
    }

    /// The workflow's own poll: its markers, and its running steps' chunks.
    #[inline(always)]
    fn poll_actions(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Output, ActorError>>> {
        let this = self;
        loop {
            let running = match &mut this.running {
                Some(running) if this.queued.is_empty() && !this.ended => running,
                _ => match this.advance() {
                    Some(item) => return Poll::Ready(item),
                    None => continue,
                },
            };
            // Written in place by each layer, not returned from one to the next (a copy).
            let mut polled = Poll::Pending;
            let turn = running.steps.poll(|step| {
                step.poll_output(cx, &mut polled);
                polled.is_ready()
            });
            if turn == Poll::Ready(false) {
                polled = Poll::Ready(None);
            }
            if !matches!(polled, Poll::Ready(None)) {
                return polled;
            }
            // A step ended (it is taken out, its end kept in it), or none is left.
            match running
                .steps
                .remove_last()
                .and_then(|mut step| step.end.take())
            {
                Some(end) => {
                    if let Some(err) = this.end_step(*end) {
                        return Poll::Ready(Some(Err(err)));
                    }
                }
                None => this.end_action(),
            }
        }
    }
}

/// One step, with its retries: its forwarded chunks and retry markers, then its
/// [`StepEnd`].
struct StepRun {
    invoker: Arc<dyn Invoker>,
    step: ActorAction,
    /// The tag of every forwarded chunk: one shared name, not a copy per chunk.
    tag: Tag,
    input: Value,
    /// The workflow's token: the parent of every attempt's.
    parent: CancellationToken,
    /// Steps finished and steps in all when it started, for its markers' `progress`.
    done: u64,
    total: u64,
    /// The attempt running now (1-based).
    attempt: u32,
    /// When the attempt running now started: whether its `timeout` was the step's own.
    started: tokio::time::Instant,
    state: StepState,
    /// How the step ended, once it did.
    end: Option<Box<StepEnd>>,
    /// The item read after a re-run's `start`, given after its marker (boxed: rare, and
    /// taking an unboxed one would copy a whole item on every poll).
    held: Option<Box<Option<Result<Output, ActorError>>>>,
}

enum StepState {
    /// The invoker is starting the attempt.
    Starting(BoxFuture<'static, Result<ChunkStream, ActorError>>),
    /// The attempt's run, read unnumbered ([`ChunkStream::poll_forward`]).
    Streaming(ChunkStream),
    /// Waiting before the next attempt.
    Backoff(Pin<Box<Sleep>>),
}

impl StepRun {
    /// The step, started on `input`; one whose input could not be made fails at once.
    fn new(
        invoker: Arc<dyn Invoker>,
        step: ActorAction,
        input: Result<Value, ActorError>,
        parent: CancellationToken,
        (done, total): (u64, u64),
    ) -> Self {
        let (starting, input) = match input {
            Ok(input) => (start(&invoker, &step, &input, &parent), input),
            Err(err) => {
                let failed: BoxFuture<'static, _> = Box::pin(std::future::ready(Err(err)));
                (failed, Value::Null)
            }
        };
        Self {
            invoker,
            tag: Tag::from(step.name.as_str()),
            step,
            input,
            parent,
            done,
            total,
            attempt: 1,
            started: tokio::time::Instant::now(),
            state: StepState::Starting(starting),
            end: None,
            held: None,
        }
    }

    /// The end of an attempt: a retry (its marker) when the failure allows one, else `None`
    /// with the step's end kept in `end`.
    fn ended(&mut self, outcome: Result<Value, ErrorInfo>) -> Option<Result<Output, ActorError>> {
        let attempts = self.step.retries.saturating_add(1);
        // An attempt that ran the whole `timeout` its step gave it and ended `timeout` ran out
        // of that (the workflow's own deadline cancels it instead; a called workflow's inner
        // deadlines come sooner): say whose, as "the run" alone reads as the workflow.
        let outcome = outcome.map_err(|mut info| {
            let timeout = self.step.timeout.filter(|t| self.started.elapsed() >= *t);
            if let (ErrorCode::Timeout, Some(timeout)) = (info.code, timeout) {
                info.message = format!(
                    "the step passed its timeout ({})",
                    humantime::format_duration(timeout)
                );
            }
            info
        });
        match outcome {
            Err(info)
                if info.retryable && self.attempt < attempts && !self.parent.is_cancelled() =>
            {
                self.attempt += 1;
                let wait = backoff(self.step.backoff, self.attempt - 1);
                self.state = StepState::Backoff(Box::pin(tokio::time::sleep(wait)));
                let marker = retry_marker(
                    &self.step.name,
                    self.attempt,
                    attempts,
                    &info,
                    self.done,
                    self.total,
                );
                Some(Ok(marker))
            }
            outcome => {
                self.end = Some(Box::new(StepEnd {
                    name: self.step.name.clone(),
                    continue_on_error: self.step.continue_on_error,
                    outcome,
                }));
                None
            }
        }
    }

    /// The step's next item, into `out` (`Pending` on entry, and left so while the step has
    /// nothing): a forwarded output or a marker; `None` when the step ended, its end then in
    /// `end`. A forwarded output is re-tagged where its run wrote it.
    #[inline]
    fn poll_output(&mut self, cx: &mut Context<'_>, out: &mut Forwarded) {
        let this = self;
        loop {
            match &mut this.state {
                StepState::Starting(starting) => {
                    let Poll::Ready(started) = starting.as_mut().poll(cx) else {
                        return;
                    };
                    match started {
                        Ok(chunks) => this.state = StepState::Streaming(chunks),
                        Err(err) => {
                            *out = Poll::Ready(this.ended(Err(ErrorInfo::from(&err))));
                            return;
                        }
                    }
                }
                StepState::Streaming(chunks) => {
                    match this.held.take() {
                        Some(item) => *out = Poll::Ready(*item),
                        None => chunks.poll_forward(cx, out),
                    }
                    if out.is_pending() {
                        return;
                    }
                    // A remote run re-run on another worker after its first worker was lost
                    // (DESIGN.md §3): what the step forwarded so far is superseded, as after
                    // a retry of our own. The item read after the new `start` comes next.
                    if let Some(rerun) = chunks.take_restart() {
                        if let Poll::Ready(item) = std::mem::replace(out, Poll::Pending) {
                            this.held = Some(Box::new(item));
                        }
                        let marker = rerun_marker(&this.step.name, rerun, this.done, this.total);
                        *out = Poll::Ready(Some(Ok(marker)));
                        return;
                    }
                    if let Poll::Ready(Some(Ok(output))) = out {
                        if !output.is_complete() {
                            if !this.step.streaming && matches!(output.kind, OutputKind::Data(_)) {
                                *out = Poll::Pending;
                                continue;
                            }
                            output.forward_from_step(&this.tag);
                            return;
                        }
                    }
                    let Poll::Ready(item) = std::mem::replace(out, Poll::Pending) else {
                        return;
                    };
                    let outcome = match item {
                        Some(Ok(output)) => match output.kind {
                            OutputKind::Complete(result) => Ok(result),
                            // Not reached: every other output was passed on or skipped above.
                            OutputKind::Progress(_) | OutputKind::Data(_) => continue,
                        },
                        Some(Err(err)) => Err(ErrorInfo::from(&err)),
                        None => Err(ErrorInfo::from(&ActorError::internal(
                            "the step's stream ended without a terminal chunk",
                        ))),
                    };
                    *out = Poll::Ready(this.ended(outcome));
                    return;
                }
                StepState::Backoff(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return;
                    }
                    let starting = start(&this.invoker, &this.step, &this.input, &this.parent);
                    this.started = tokio::time::Instant::now();
                    this.state = StepState::Starting(starting);
                }
            }
        }
    }
}

/// Starts an attempt of `step` through the invoker, as a child of the workflow's token.
fn start(
    invoker: &Arc<dyn Invoker>,
    step: &ActorAction,
    input: &Value,
    parent: &CancellationToken,
) -> BoxFuture<'static, Result<ChunkStream, ActorError>> {
    let invoker = Arc::clone(invoker);
    let actor_type = step.actor_type.clone();
    let input = input.clone();
    let options = RunOptions {
        timeout: step.timeout.or_else(|| default_timeout(&step.actor_type)),
        parent: Some(parent.clone()),
        ..RunOptions::default()
    };
    Box::pin(async move { invoker.stream(&actor_type, input, options).await })
}

/// The wait after failed attempt `failed_attempt` (1-based): `first`, doubled per attempt,
/// capped at [`MAX_BACKOFF`].
fn backoff(first: Duration, failed_attempt: u32) -> Duration {
    let factor = 1u32 << failed_attempt.saturating_sub(1).min(16);
    first.saturating_mul(factor).min(MAX_BACKOFF)
}

fn start_marker(step: &ActorAction, done: u64, total: u64) -> Output {
    let message = format!("{} started ({})", step.name, step.actor_type);
    Output::progress(done, Some(total), message)
        .with_event(Event::ActionStart)
        .with_step(step.name.as_str())
}

fn group_start_marker(group: &str, members: &[ActorAction], done: u64, total: u64) -> Output {
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let message = format!("{group} started: {} in parallel", names.join(", "));
    Output::progress(done, Some(total), message)
        .with_event(Event::ActionStart)
        .with_step(group)
}

fn retry_marker(
    step: &str,
    attempt: u32,
    attempts: u32,
    info: &ErrorInfo,
    done: u64,
    total: u64,
) -> Output {
    let message = format!(
        "{step} retrying: attempt {attempt} of {attempts} after {}: {}; the output of attempt {} is superseded",
        info.code,
        info.message,
        attempt - 1
    );
    Output::progress(done, Some(total), message)
        .with_event(Event::ActionRetry)
        .with_step(step)
}

fn rerun_marker(step: &str, rerun: u32, done: u64, total: u64) -> Output {
    let message = format!(
        "{step} re-run by another worker (run attempt {rerun}); the output of run attempt {} is superseded",
        rerun.saturating_sub(1)
    );
    Output::progress(done, Some(total), message)
        .with_event(Event::ActionRetry)
        .with_step(step)
}

fn complete_marker(step: &str, result: Value) -> Output {
    Output::data(result)
        .with_event(Event::ActionComplete)
        .with_step(step)
}

fn failed_marker(step: &str, info: &ErrorInfo) -> Output {
    Output::data(json!({ "error": info }))
        .with_event(Event::ActionFailed)
        .with_step(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let first = Duration::from_millis(500);
        assert_eq!(backoff(first, 1), Duration::from_millis(500));
        assert_eq!(backoff(first, 2), Duration::from_secs(1));
        assert_eq!(backoff(first, 3), Duration::from_secs(2));
        assert_eq!(backoff(first, 40), MAX_BACKOFF);
    }
}
