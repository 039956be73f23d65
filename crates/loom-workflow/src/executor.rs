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

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use loom_core::{
    Actor, ActorContext, ActorError, ActorStream, CancellationToken, ChunkStream, ChunkType,
    ErrorInfo, Event, Invoker, Output, RunOptions, Runtime, StreamChunk,
};
use serde_json::{json, Map, Value};
use tokio_stream::StreamMap;

use crate::reference;
use crate::workflow::{Action, ActorAction, Workflow, MAX_BACKOFF};

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
    /// deadline (default: the definition's `timeout`, else [`DEFAULT_WORKFLOW_TIMEOUT`]).
    pub fn stream_with(
        &self,
        workflow: impl Into<Arc<Workflow>>,
        input: Value,
        mut options: RunOptions,
    ) -> ChunkStream {
        let workflow = workflow.into();
        if options.timeout.is_none() {
            options.timeout = Some(workflow.timeout.unwrap_or(DEFAULT_WORKFLOW_TIMEOUT));
        }
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
    /// [`Registry`](loom_core::Registry) or serve over HTTP. Its run deadline is the caller's.
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

/// What a running step reports to the workflow.
enum StepEvent {
    /// A chunk to pass on: a forwarded chunk or an `action-retry` marker.
    Output(Output),
    /// The step ended (after its retries).
    Done {
        name: String,
        continue_on_error: bool,
        outcome: Result<Value, ErrorInfo>,
    },
}

fn run_workflow(
    workflow: Arc<Workflow>,
    invoker: Arc<dyn Invoker>,
    input: Value,
    ctx: ActorContext,
) -> ActorStream {
    Box::pin(async_stream::try_stream! {
        let input = workflow.check_input(input)?;
        let total = workflow.steps().count() as u64;
        let mut steps = Map::new();
        let mut failed = Map::new();
        let mut done = 0u64;
        for action in &workflow.actions {
            let (group, members) = match action {
                Action::Actor(step) => (None, std::slice::from_ref(step)),
                Action::Parallel(group) => (Some(group.name.as_str()), group.actions.as_slice()),
            };
            if let Some(group) = group {
                yield group_start_marker(group, members, done, total);
            }
            let mut running = Vec::with_capacity(members.len());
            for step in members {
                yield start_marker(step, done, total);
                let step_input = reference::resolve(&step.input, &input, &steps);
                running.push(run_step(
                    Arc::clone(&invoker),
                    step.clone(),
                    step_input,
                    ctx.cancellation_token().clone(),
                    done,
                    total,
                ));
            }
            // All of a group's steps are polled here, on the workflow's own task, so their
            // chunks interleave as they are produced. A `StreamMap` polls every pending step
            // on each wake, from a random one, without allocating per chunk: fair, and cheap
            // for groups of a few steps.
            let mut merged: StreamMap<usize, _> = running.into_iter().enumerate().collect();
            let mut results = Map::new();
            while let Some((_, event)) = merged.next().await {
                match event {
                    StepEvent::Output(output) => yield output,
                    StepEvent::Done { name, outcome: Ok(value), .. } => {
                        done += 1;
                        steps.insert(name.clone(), value.clone());
                        results.insert(name.clone(), value.clone());
                        yield complete_marker(&name, value);
                    }
                    StepEvent::Done { outcome: Err(_), .. } if ctx.is_cancelled() => {
                        // The workflow itself was cancelled: its steps fail with `cancelled`
                        // as a consequence, which is neither their fault nor worth a marker.
                        drop(merged);
                        Err(ActorError::cancelled())?;
                        return;
                    }
                    StepEvent::Done { name, continue_on_error: true, outcome: Err(info) } => {
                        done += 1;
                        steps.insert(name.clone(), Value::Null);
                        results.insert(name.clone(), Value::Null);
                        failed.insert(name.clone(), json!(info));
                        yield failed_marker(&name, &info);
                    }
                    StepEvent::Done { name, continue_on_error: false, outcome: Err(info) } => {
                        // Dropping the merged stream drops every sibling still running, which
                        // cancels it (its ChunkStream's token) before the workflow's error.
                        drop(merged);
                        let message = format!("step '{name}' failed: {}", info.message);
                        Err(ActorError::new(info.code, message).with_retryable(info.retryable))?;
                        return;
                    }
                }
            }
            if let Some(group) = group {
                yield complete_marker(group, Value::Object(results));
            }
        }
        let mut result = Map::new();
        result.insert("steps".to_owned(), Value::Object(steps));
        if !failed.is_empty() {
            result.insert("failed".to_owned(), Value::Object(failed));
        }
        yield Output::complete(Value::Object(result));
    })
}

/// Runs one step, with its retries, as a stream of forwarded chunks and retry markers ending
/// in [`StepEvent::Done`].
fn run_step(
    invoker: Arc<dyn Invoker>,
    step: ActorAction,
    input: Value,
    parent: CancellationToken,
    done: u64,
    total: u64,
) -> BoxStream<'static, StepEvent> {
    Box::pin(async_stream::stream! {
        let attempts = step.retries.saturating_add(1);
        let mut attempt = 1u32;
        // The tag of every forwarded chunk: one shared name, not a copy per chunk.
        let tag: Arc<str> = Arc::from(step.name.as_str());
        let outcome = loop {
            let options = RunOptions {
                timeout: step.timeout,
                parent: Some(parent.clone()),
                ..RunOptions::default()
            };
            let result = match invoker.stream(&step.actor_type, input.clone(), options).await {
                Err(err) => Err(ErrorInfo::from(&err)),
                Ok(mut chunks) => {
                    let mut result = Err(ErrorInfo::from(&ActorError::internal(
                        "the step's stream ended without a terminal chunk",
                    )));
                    let mut started = false;
                    while let Some(chunk) = chunks.next().await {
                        match chunk.kind {
                            // A second `start` is a remote run re-run on another worker after
                            // its first worker was lost (DESIGN.md §3): what the step forwarded
                            // so far is superseded, as after a retry of our own.
                            ChunkType::Start if started => {
                                let rerun = chunk.attempt.unwrap_or(2);
                                yield StepEvent::Output(rerun_marker(&step.name, rerun, done, total));
                            }
                            ChunkType::Start => started = true,
                            ChunkType::Progress => yield StepEvent::Output(forwarded(chunk, &tag)),
                            ChunkType::Data => {
                                if step.streaming {
                                    yield StepEvent::Output(forwarded(chunk, &tag));
                                }
                            }
                            ChunkType::Complete => {
                                result = Ok(chunk.data.unwrap_or(Value::Null));
                                break;
                            }
                            ChunkType::Error => {
                                result = Err(chunk.error_info());
                                break;
                            }
                        }
                    }
                    result
                }
            };
            match result {
                Err(info) if info.retryable && attempt < attempts && !parent.is_cancelled() => {
                    attempt += 1;
                    yield StepEvent::Output(retry_marker(&step.name, attempt, attempts, &info, done, total));
                    tokio::time::sleep(backoff(step.backoff, attempt - 1)).await;
                }
                other => break other,
            }
        };
        yield StepEvent::Done {
            name: step.name.clone(),
            continue_on_error: step.continue_on_error,
            outcome,
        };
    })
}

/// The wait after failed attempt `failed_attempt` (1-based): `first`, doubled per attempt,
/// capped at [`MAX_BACKOFF`].
fn backoff(first: Duration, failed_attempt: u32) -> Duration {
    let factor = 1u32 << failed_attempt.saturating_sub(1).min(16);
    first.saturating_mul(factor).min(MAX_BACKOFF)
}

/// A step's own chunk, passed on tagged with the step. Its `event`, if any, is dropped: only
/// this workflow's markers carry one.
fn forwarded(chunk: StreamChunk, step: &Arc<str>) -> Output {
    Output::from_chunk(chunk)
        .unwrap_or_else(|| Output::data(Value::Null))
        .with_step(Arc::clone(step))
        .without_event()
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
