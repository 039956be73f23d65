//! Starting runs: the [`Engine`] holds the runtime, the loaded workflows and the
//! [`RunStore`], starts an actor's or a workflow's [`ChunkStream`] and spawns the task that
//! drives it into the run's [`RunLog`].
//!
//! The routes ask the engine for a [`Run`] and then only read its log; the drive task is the
//! log's one producer. A run is stopped through its own cancellation token (the parent of the
//! runtime's), so the runtime still writes the terminal `error/cancelled`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use loom_core::{
    new_run_id, ActorError, CancellationToken, ChunkStream, ErrorCode, RunOptions, Runtime,
    StreamChunk,
};
use loom_workflow::{Workflow, WorkflowExecutor};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::runlog::{LogBudget, RunLog, RunTarget};
use crate::store::{DisconnectPolicy, Run, RunStore};

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct StartRequest {
    /// The actor or workflow.
    pub target: RunTarget,
    /// Its input.
    pub input: Value,
    /// The run's deadline (default: the runtime's, or the workflow's).
    pub timeout: Option<Duration>,
    /// What the run does when its last reader goes away.
    pub policy: DisconnectPolicy,
    /// The caller's W3C trace context: the parent of the run's span.
    pub traceparent: Option<String>,
}

impl StartRequest {
    /// The run's span (`loom.run`), a child of the caller's trace context when it sent one.
    pub(crate) fn span(&self, run_id: Option<&str>) -> tracing::Span {
        let (kind, name) = match &self.target {
            RunTarget::Actor(a) => ("actor", a.as_str()),
            RunTarget::Workflow(w) => ("workflow", w.as_str()),
        };
        let span = tracing::info_span!("loom.run", run_id, kind, name);
        if let Some(traceparent) = &self.traceparent {
            loom_core::trace::set_remote_parent(&span, traceparent);
        }
        span
    }
}

/// The message of the `error/cancelled` chunk of a run the server's shutdown stopped.
const SHUTDOWN_MESSAGE: &str = "cancelled: the server is shutting down";

/// Starts runs and keeps them in the [`RunStore`].
#[derive(Debug)]
pub(crate) struct Engine {
    runtime: Runtime,
    executor: WorkflowExecutor,
    workflows: BTreeMap<String, Arc<Workflow>>,
    store: Arc<RunStore>,
    /// What every run's log keeps, and what they hold together.
    budget: Arc<LogBudget>,
    config: ServerConfig,
    metrics: Arc<Metrics>,
    /// Set by [`Engine::shutdown`]; read by each run's drive task to say why it was cancelled.
    shutting_down: Arc<AtomicBool>,
    /// One permit per run running (`max_runs`), held by its drive task.
    running: Arc<Semaphore>,
}

impl Engine {
    /// An engine running `runtime`'s actors and `workflows` (by their names).
    pub(crate) fn new(
        runtime: Runtime,
        workflows: Vec<Workflow>,
        config: ServerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let executor = WorkflowExecutor::new(Arc::new(runtime.clone()));
        let workflows = workflows
            .into_iter()
            .map(|w| (w.name.clone(), Arc::new(w)))
            .collect();
        Self {
            runtime,
            executor,
            workflows,
            store: Arc::new(RunStore::new()),
            budget: LogBudget::new(config.log_limits),
            running: Arc::new(Semaphore::new(config.max_runs)),
            config,
            metrics,
            shutting_down: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The runtime whose actors are served.
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The loaded workflows, by name.
    pub(crate) fn workflows(&self) -> impl Iterator<Item = &Workflow> {
        self.workflows.values().map(|w| &**w)
    }

    /// The runs.
    pub(crate) fn store(&self) -> &RunStore {
        &self.store
    }

    /// Starts a run and returns it once it is in the store; its chunks follow in its log.
    /// Unknown actor or workflow: `not_found`; a workflow input failing its schema:
    /// `bad_input`; shutting down: `unavailable`; `max_runs` running: `too_many_runs`.
    pub(crate) fn start(&self, request: StartRequest) -> Result<Arc<Run>, ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown);
        }
        let permit =
            Arc::clone(&self.running)
                .try_acquire_owned()
                .map_err(|_| ApiError::TooManyRuns {
                    limit: self.config.max_runs,
                })?;
        let run_id = new_run_id();
        let span = request.span(Some(&run_id));
        let cancel = CancellationToken::new();
        let options = RunOptions {
            run_id: Some(run_id.clone()),
            timeout: request.timeout,
            parent: Some(cancel.clone()),
        };
        let stream = match &request.target {
            // An unknown type is the runtime's `not_found`: a 404.
            RunTarget::Actor(actor) => self.runtime.stream(actor, request.input, options)?,
            RunTarget::Workflow(name) => {
                let workflow = self
                    .workflows
                    .get(name)
                    .ok_or_else(|| ApiError::NotFound(format!("unknown workflow '{name}'")))?;
                let input = workflow
                    .check_input(request.input)
                    .map_err(|e| ActorError::bad_input(e.to_string()))?;
                self.executor
                    .stream_with(Arc::clone(workflow), input, options)
            }
        };
        let log = Arc::new(RunLog::new(run_id.clone(), request.target, &self.budget));
        let run = Arc::new(Run::new(Arc::clone(&log), cancel, request.policy));
        self.store.insert(Arc::clone(&run));
        let driven = drive(
            stream,
            log,
            Arc::clone(&self.store),
            self.config.run_ttl,
            self.config.max_finished_runs,
            Arc::clone(&self.metrics),
            Arc::clone(&self.shutting_down),
        );
        tokio::spawn(
            async move {
                driven.await;
                drop(permit);
            }
            .instrument(span),
        );
        // A shutdown that began while this run started has not seen it: stop it here.
        if self.shutting_down.load(Ordering::SeqCst) {
            run.cancel();
        }
        tracing::debug!(run_id, "run started");
        Ok(run)
    }

    /// Stops starting runs and cancels every running one; their terminal chunks still land
    /// in their logs, so open streams end with them.
    pub(crate) fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for run in self.store.running() {
            run.cancel();
        }
    }
}

/// The run's one producer: every chunk into the log, then the log's expiry. A run cancelled
/// once the server is shutting down says so in its terminal chunk, rather than blaming a
/// client.
async fn drive(
    mut stream: ChunkStream,
    log: Arc<RunLog>,
    store: Arc<RunStore>,
    ttl: Duration,
    max_finished: usize,
    metrics: Arc<Metrics>,
    shutting_down: Arc<AtomicBool>,
) {
    let started = Instant::now();
    let mut last_seq = None;
    while let Some(mut chunk) = stream.next().await {
        // An actor that never waits would keep this loop, and the tasks it wakes (its
        // readers, queued on this thread), from ever giving the thread up: tokio's budget
        // makes it yield now and then.
        tokio::task::coop::consume_budget().await;
        if let Some(error) = chunk.error.as_mut() {
            if error.code == ErrorCode::Cancelled && shutting_down.load(Ordering::SeqCst) {
                error.message = SHUTDOWN_MESSAGE.to_owned();
            }
        }
        if last_seq.is_some_and(|seq| seq == 0) {
            metrics.first_chunk(started.elapsed());
        }
        last_seq = Some(chunk.seq);
        log.push(&chunk);
        if chunk.is_terminal() {
            let outcome = match &chunk.error {
                Some(error) => error.code.as_str(),
                None => "complete",
            };
            metrics.finished(outcome, started.elapsed());
            break;
        }
    }
    if !log.is_finished() {
        // The runtime always writes a terminal chunk; should a stream end without one, the
        // log still gets one, so no reader waits forever.
        let seq = last_seq.map_or(0, |s| s + 1);
        let err = ActorError::internal("the run ended without a terminal chunk");
        log.push(&StreamChunk::error(seq, &err));
    }
    store.expire_after(log.run_id().to_owned(), ttl, max_finished);
}
