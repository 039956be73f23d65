//! Distributed mode (`loom serve --redis`): the server runs no work itself. Actor and
//! workflow runs are requests on the Redis queues (a workflow is the actor type
//! `workflows/<name>`, served by `loom worker --workflows DIR`), and a run's log is its Redis
//! chunk stream: no second copy. So every server in front of one Redis can serve, resume and
//! cancel every run, and a run whose worker dies is re-run by another.
//!
//! **Finding a cursor.** Workers write the chunk of `seq` N at the entry id `N-1`
//! ([`EntryId::of_seq`]), so "every chunk after `seq` N" is an `XREAD` after entry `N-1`:
//! Redis finds it in the stream's radix tree by id, without reading the stream from its
//! start. A run's status is its record plus its stream's last entry (`XREVRANGE … COUNT 1`).
//!
//! **Disconnect.** The readers of a run are counted in Redis by every server, each reader under
//! an id of its own, so a count sent again after a Redis blip counts once
//! ([`loom_redis::ReaderTally`]); a direct stream's record carries its disconnect grace. When
//! the last reader anywhere leaves, the server it left waits the grace and cancels the run
//! unless a reader joined meanwhile (on any server). A direct stream whose client leaves
//! before its first reader is counted (while the request is being queued) is cancelled the
//! same way, after the grace unless a reader joined (a chat's client may come back by the
//! chat's name). A server that dies holding readers leaves them counted: such a run then goes
//! on until it ends or reaches its deadline.
//!
//! **Shutdown** closes this server's streams without a terminal chunk: their runs go on on
//! the workers, and their clients resume through any server (a dialect's stream ends with its
//! error event instead, naming the run: its official clients do not resume). The server then waits out the
//! graces its readers' leaving started ([`RemoteRuns::drained`]), so that a direct run whose
//! client does not come back is still cancelled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures::stream::ReadyChunks;
use futures::{StreamExt, TryFutureExt};
use loom_core::{ActorError, CancellationToken, ChunkType, Registry, RunOptions, StreamChunk};
use loom_redis::{Client, EntryId, EntryStream, RemoteInvoker, RunRecord, StreamEntry};
use loom_workflow::{default_timeout, Workflow, WORKFLOW_ACTOR_PREFIX};
use serde_json::{json, Value};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::runlog::{LoggedChunk, RunInfo, RunStatus, RunTarget};
use crate::runs::StartRequest;
use crate::store::{DisconnectPolicy, MAX_RECENT_RUNS};

/// The most chunks handed to a stream at once.
const BATCH: usize = 256;

/// Runs on workers through one Redis.
#[derive(Debug)]
pub(crate) struct RemoteRuns {
    client: Client,
    invoker: RemoteInvoker,
    /// The server's own registry: descriptions of the actor types workers serve.
    registry: Registry,
    /// Workflow definitions the server was given: descriptions, input checks, deadlines.
    workflows: BTreeMap<String, Arc<Workflow>>,
    /// Cancelled at shutdown: every open stream of this server closes.
    closing: CancellationToken,
    shutting_down: AtomicBool,
    metrics: Arc<Metrics>,
    /// Runs queued here whose terminal chunk the watcher has not seen.
    active: Arc<AtomicUsize>,
    /// This server's readers and the graces their leaving started: waited for at shutdown.
    graces: TaskTracker,
}

impl RemoteRuns {
    /// Runs queued through `client`; `registry` and `workflows` describe what workers serve.
    pub(crate) fn new(
        client: Client,
        registry: Registry,
        workflows: Vec<Workflow>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            invoker: client.invoker(),
            client,
            registry,
            workflows: workflows
                .into_iter()
                .map(|w| (w.name.clone(), Arc::new(w)))
                .collect(),
            closing: CancellationToken::new(),
            shutting_down: AtomicBool::new(false),
            metrics,
            active: Arc::default(),
            graces: TaskTracker::new(),
        }
    }

    /// The server's own registry, which describes the actor types workers serve.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs queued here that have not ended.
    pub(crate) fn active_runs(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Follows run `run_id`, queued here, to its end for `/metrics`: time to its first chunk
    /// after `start`, its duration and outcome. One more reader of the run's stream, on the
    /// process's shared `XREAD`.
    fn watch(&self, run_id: String) {
        let invoker = self.invoker.clone();
        let metrics = Arc::clone(&self.metrics);
        let active = Arc::clone(&self.active);
        let closing = self.closing.clone();
        active.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let started = Instant::now();
            let watched = async {
                let mut entries = invoker.attach(&run_id, None).await?;
                let mut after_start = false;
                while let Some(entry) = entries.next().await {
                    let chunk = entry.chunk;
                    if after_start {
                        metrics.first_chunk(started.elapsed());
                    }
                    // A re-run's `start` counts as a start too.
                    after_start = chunk.kind == ChunkType::Start;
                    if chunk.is_terminal() {
                        let outcome = chunk.error.as_ref().map_or("complete", |e| e.code.as_str());
                        metrics.finished(outcome, started.elapsed());
                        break;
                    }
                }
                Ok::<_, loom_redis::Error>(())
            };
            tokio::select! {
                _ = closing.cancelled() => {}
                result = watched => {
                    if let Err(e) = result {
                        tracing::debug!(run_id, error = %e, "could not watch the run");
                    }
                }
            }
            active.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Queues a run. An actor type (or workflow) no live worker serves is refused at once
    /// ([`check_served`](Self::check_served)); a workflow input failing the definition this
    /// server has is `bad_input`.
    pub(crate) async fn start(&self, request: StartRequest) -> Result<RemoteRun, ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown);
        }
        let span = request.span(None);
        let (actor_type, input, timeout) = match &request.target {
            RunTarget::Actor(actor) => (actor.clone(), request.input, request.timeout),
            RunTarget::Workflow(name) => {
                let mut input = request.input;
                if let Some(workflow) = self.workflows.get(name) {
                    input = workflow
                        .check_input(input)
                        .map_err(|e| ActorError::bad_input(e.to_string()))?;
                }
                // The workflow ends itself at its definition's deadline, on its worker: the
                // run's deadline is the caller's, else long enough for any definition.
                let actor_type = request.target.actor_type();
                let timeout = request.timeout.or(default_timeout(&actor_type));
                (actor_type, input, timeout)
            }
        };
        // Only a served type is queued: nothing else becomes a key.
        self.check_served(&request.target).await?;
        let mut options = RunOptions {
            timeout,
            ..RunOptions::default()
        };
        // From here until a reader is counted, a direct run is cancelled if this is dropped
        // (its client left); a failure to queue it cancels it too, in case it was queued.
        let unclaimed = match request.policy {
            DisconnectPolicy::CancelAfter(grace) => {
                let id = loom_core::new_run_id();
                options.run_id = Some(id.clone());
                Some(Arc::new(Unclaimed {
                    client: self.client.clone(),
                    id,
                    grace,
                    claimed: AtomicBool::new(false),
                    held: self.graces.token(),
                }))
            }
            DisconnectPolicy::Continue => None,
        };
        // Queued inside the run's span: the request carries its trace context to the worker.
        let submitted = self
            .invoker
            .submit(&actor_type, input, &options)
            .instrument(span)
            .or_else(|e| failed(&self.client, e))
            .await?;
        self.watch(submitted.run_id.clone());
        let run = RemoteRun {
            unclaimed,
            ..self.run(submitted.run_id)
        };
        if let DisconnectPolicy::CancelAfter(grace) = request.policy {
            let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
            self.client
                .set_disconnect_grace(&run.id, grace_ms)
                .or_else(|e| failed(&self.client, e))
                .await?;
        }
        Ok(run)
    }

    /// The run `id`, if Redis knows it.
    pub(crate) async fn find(&self, id: &str) -> Result<RemoteRun, ApiError> {
        record(&self.client, id).await?;
        Ok(self.run(id.to_owned()))
    }

    fn run(&self, id: String) -> RemoteRun {
        RemoteRun {
            id,
            client: self.client.clone(),
            invoker: self.invoker.clone(),
            closing: self.closing.clone(),
            unclaimed: None,
            graces: self.graces.clone(),
            ended_by_redis: Arc::default(),
        }
    }

    /// Names run `id` `name` for as long as a finished run stays readable.
    pub(crate) async fn name_run(&self, name: &str, id: &str) -> Result<(), ApiError> {
        let ttl = self.client.options().stream_ttl;
        self.client
            .name_run(name, id, ttl)
            .or_else(|e| failed(&self.client, e))
            .await
    }

    /// The run named `name`, if the name and the run are still known.
    pub(crate) async fn named(&self, name: &str) -> Result<Option<RemoteRun>, ApiError> {
        let Some(id) = self
            .client
            .named_run(name)
            .or_else(|e| failed(&self.client, e))
            .await?
        else {
            return Ok(None);
        };
        match self.find(&id).await {
            Ok(run) => Ok(Some(run)),
            Err(ApiError::NotFound(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// The recent runs of every server, newest first.
    pub(crate) async fn recent(&self) -> Result<Vec<RunInfo>, ApiError> {
        let records = self
            .client
            .recent_runs(MAX_RECENT_RUNS)
            .or_else(|e| failed(&self.client, e))
            .await?;
        Ok(records.iter().map(info).collect())
    }

    /// Whether `target` names something that can run: a type a live worker serves, or one
    /// this server describes (its registry's actors, its workflows), which may be served
    /// again soon (workers starting, or advertising again after a Redis restart).
    pub(crate) async fn knows(&self, target: &RunTarget) -> Result<bool, ApiError> {
        Ok(self.describes(target) || self.served().await?.contains(&target.actor_type()))
    }

    /// Whether this server's own registry or workflows describe `target`.
    fn describes(&self, target: &RunTarget) -> bool {
        match target {
            RunTarget::Actor(actor) => self.registry.contains(actor),
            RunTarget::Workflow(name) => self.workflows.contains_key(name),
        }
    }

    /// `Ok` when a live worker serves `actor_type` (`target`'s queue). Otherwise one this
    /// server describes is `unavailable` (503, `Retry-After`): the service is short of workers
    /// for now. A type nobody describes is `not_found`, and so is one that workers serve on
    /// another number of queue shards, with the setting to change.
    pub(crate) async fn check_served(&self, target: &RunTarget) -> Result<(), ApiError> {
        // The queue-shard counts live workers serve the type on: one look decides both
        // whether it is served on this server's queues and, if not, why.
        let shards = self
            .client
            .queue_shards_served(&target.actor_type())
            .or_else(|e| failed(&self.client, e))
            .await?;
        if shards.contains(&self.client.options().queue_shards) {
            return Ok(());
        }
        let what = target.describe();
        // A setting to change, not a shortage that passes: not to be retried.
        if let Some(theirs) = shards.first() {
            return Err(ApiError::NotFound(format!(
                "no worker serves {what} on this server's queues: live workers serve it with \
                 --queue-shards {theirs}, this server uses {}",
                self.client.options().queue_shards
            )));
        }
        if self.describes(target) {
            return Err(ApiError::NoWorker(format!(
                "no live worker serves {what} right now (start one with `loom worker`)"
            )));
        }
        Err(ApiError::NotFound(format!("no worker serves {what}")))
    }

    async fn served(&self) -> Result<BTreeSet<String>, ApiError> {
        self.client
            .served_actors()
            .or_else(|e| failed(&self.client, e))
            .await
    }

    /// `GET /v1/actors`: the actor types live workers serve, described by this server's
    /// registry where it has them.
    pub(crate) async fn actors(&self) -> Result<Vec<Value>, ApiError> {
        let served = self.served().await?;
        Ok(served
            .iter()
            .filter(|name| !name.starts_with(WORKFLOW_ACTOR_PREFIX))
            .map(|name| match self.registry.get(name) {
                Some(a) => {
                    json!({ "name": name, "description": a.description(), "streams": a.streams() })
                }
                None => json!({ "name": name, "description": null, "streams": null }),
            })
            .collect())
    }

    /// `GET /v1/workflows`: the workflows live workers serve, with their steps where this
    /// server has their definitions.
    pub(crate) async fn workflows(&self) -> Result<Vec<Value>, ApiError> {
        let served = self.served().await?;
        Ok(served
            .iter()
            .filter_map(|name| name.strip_prefix(WORKFLOW_ACTOR_PREFIX))
            .map(|name| match self.workflows.get(name) {
                Some(w) => crate::backend::workflow_json(w),
                None => json!({ "name": name, "description": null, "steps": null }),
            })
            .collect())
    }

    /// Stops starting runs and closes this server's streams (their runs go on).
    pub(crate) fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.closing.cancel();
        self.graces.close();
    }

    /// After [`shutdown`](Self::shutdown): once this server's readers are gone, waits out the
    /// disconnect graces their leaving started, so that a direct run whose client resumes
    /// through no other server is still cancelled. How many graces were pending is logged.
    pub(crate) async fn drained(&self) {
        let pending = self.graces.len();
        if pending > 0 {
            tracing::info!(
                pending,
                "waiting out the disconnect grace of runs whose clients left"
            );
        }
        self.graces.wait().await;
    }
}

/// One run on the workers.
#[derive(Debug, Clone)]
pub(crate) struct RemoteRun {
    id: String,
    client: Client,
    invoker: RemoteInvoker,
    closing: CancellationToken,
    /// A direct run's guard until its first reader is counted.
    unclaimed: Option<Arc<Unclaimed>>,
    graces: TaskTracker,
    /// Set when a feed of this run ended with its reader's own verdict (Redis unreachable
    /// past the outage timeout, entries lost): the server, not the client, ended that stream,
    /// so its reader's leaving starts no disconnect grace.
    ended_by_redis: Arc<AtomicBool>,
}

impl RemoteRun {
    /// The run id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Counts a reader of the run until the returned guard drops (see the module docs).
    pub(crate) async fn attach(&self) -> Result<RemoteAttachment, ApiError> {
        let reader = loom_core::new_run_id();
        // A join whose reply was lost may have counted: the guard takes it back either way.
        let attachment = RemoteAttachment {
            client: self.client.clone(),
            id: self.id.clone(),
            reader,
            held: self.graces.token(),
            ended_by_redis: Arc::clone(&self.ended_by_redis),
        };
        self.client
            .reader_joined(&self.id, &attachment.reader)
            .or_else(|e| failed(&self.client, e))
            .await?;
        if let Some(unclaimed) = &self.unclaimed {
            unclaimed.claimed.store(true, Ordering::SeqCst);
        }
        Ok(attachment)
    }

    /// A feed of the run's chunks after `cursor`, or `None` when the cursor is at or past
    /// the terminal chunk (`204`).
    pub(crate) async fn open(&self, cursor: Option<u64>) -> Result<Option<RemoteFeed>, ApiError> {
        let record = record(&self.client, &self.id).await?;
        if let (Some(terminal), Some(cursor)) = (record.terminal(), cursor) {
            if cursor >= terminal.seq {
                return Ok(None);
            }
        }
        let entries = self
            .invoker
            .attach(&self.id, cursor.map(EntryId::of_seq))
            .or_else(|e| failed(&self.client, e))
            .await?;
        Ok(Some(RemoteFeed {
            entries: entries.ready_chunks(BATCH),
            closing: self.closing.clone(),
            ended_by_redis: Arc::clone(&self.ended_by_redis),
        }))
    }

    /// The run's status now.
    pub(crate) async fn info(&self) -> Result<RunInfo, ApiError> {
        Ok(info(&record(&self.client, &self.id).await?))
    }

    /// Cancels the run on its worker (idempotent).
    pub(crate) async fn cancel(&self) -> Result<(), ApiError> {
        self.client
            .cancel(&self.id)
            .or_else(|e| failed(&self.client, e))
            .await
    }
}

/// The record of run `id`; `not_found` when Redis has none (or `id` is no valid name).
async fn record(client: &Client, id: &str) -> Result<RunRecord, ApiError> {
    let not_found = || ApiError::NotFound(format!("unknown run '{id}'"));
    if loom_redis::validate_name(id).is_err() {
        return Err(not_found());
    }
    client
        .run_record(id)
        .or_else(|e| failed(client, e))
        .await?
        .ok_or_else(not_found)
}

/// A reader of a remote run, counted in Redis while it lives.
#[derive(Debug)]
pub(crate) struct RemoteAttachment {
    client: Client,
    id: String,
    /// This reader's id among the run's readers.
    reader: String,
    /// Holds the server's shutdown until this reader is gone; the grace its leaving starts
    /// runs on its tracker (see [`RemoteRuns::drained`]).
    held: TaskTrackerToken,
    /// See [`RemoteRun`]'s field.
    ended_by_redis: Arc<AtomicBool>,
}

impl Drop for RemoteAttachment {
    fn drop(&mut self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let id = std::mem::take(&mut self.id);
        let reader = std::mem::take(&mut self.reader);
        let grace = !self.ended_by_redis.load(Ordering::SeqCst);
        self.held.task_tracker().spawn_on(
            async move {
                if let Err(e) = left(&client, &id, &reader, grace).await {
                    tracing::warn!(run_id = %id, error = %e, "could not count a reader gone");
                }
            },
            &handle,
        );
    }
}

/// A direct run queued for a client that may leave before its first reader is counted:
/// dropped unclaimed (the client left, or queueing failed), it cancels the run after the
/// grace unless a reader joined meanwhile.
#[derive(Debug)]
struct Unclaimed {
    client: Client,
    id: String,
    grace: Duration,
    /// Set once a reader of the run is counted: from then on the readers' tally decides.
    claimed: AtomicBool,
    /// Holds the server's shutdown until this is dropped; its grace runs on its tracker (see
    /// [`RemoteRuns::drained`]).
    held: TaskTrackerToken,
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if self.claimed.load(Ordering::SeqCst) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let id = std::mem::take(&mut self.id);
        let grace = self.grace;
        self.held.task_tracker().spawn_on(async move {
            tokio::time::sleep(grace).await;
            let joined = client.readers(&id).await.is_ok_and(|now| now.joins > 0);
            if joined {
                return;
            }
            tracing::debug!(run_id = %id, "client gone before it was counted: cancelling the run");
            if let Err(e) = client.cancel(&id).await {
                tracing::warn!(run_id = %id, error = %e, "could not cancel a run whose client left");
            }
        }, &handle);
    }
}

/// A reader of run `id` left: if it was the last one anywhere, the run has a disconnect grace
/// and `grace` (its client left, the server did not end its stream), cancel it after the
/// grace unless someone joined meanwhile.
async fn left(
    client: &Client,
    id: &str,
    reader: &str,
    grace: bool,
) -> Result<(), loom_redis::Error> {
    // A reader still counted would keep the run from ever being cancelled: over a Redis blip,
    // try again (leaving twice is safe).
    let mut wait = Duration::from_millis(100);
    let tally = loop {
        match client.reader_left(id, reader).await {
            Ok(tally) => break tally,
            Err(e) if wait <= Duration::from_secs(2) => {
                tracing::debug!(run_id = id, error = %e, "counting a reader gone; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => return Err(e),
        }
    };
    let Some(grace_ms) = tally.grace_ms.filter(|_| grace && tally.readers <= 0) else {
        return Ok(());
    };
    tokio::time::sleep(Duration::from_millis(grace_ms)).await;
    let now = client.readers(id).await?;
    if now.readers > 0 || now.joins != tally.joins {
        return Ok(());
    }
    let ended = client
        .run_record(id)
        .await?
        .is_some_and(|r| r.terminal().is_some());
    if !ended {
        tracing::debug!(run_id = id, "client gone: cancelling the run");
        client.cancel(id).await?;
    }
    Ok(())
}

/// A run's chunks from its Redis stream, in batches, until the terminal chunk or shutdown.
pub(crate) struct RemoteFeed {
    entries: ReadyChunks<EntryStream>,
    closing: CancellationToken,
    /// See [`RemoteRun`]'s field.
    ended_by_redis: Arc<AtomicBool>,
}

impl std::fmt::Debug for RemoteFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFeed").finish_non_exhaustive()
    }
}

impl RemoteFeed {
    /// The next chunks; `None` after the terminal chunk, or when the server shuts down.
    pub(crate) async fn next(&mut self) -> Option<Vec<Arc<LoggedChunk>>> {
        tokio::select! {
            biased;
            _ = self.closing.cancelled() => None,
            batch = self.entries.next() => batch.map(|entries| {
                // A terminal in no entry is the reader's own verdict.
                if entries.iter().any(|e| e.id.is_none() && e.chunk.is_terminal()) {
                    self.ended_by_redis.store(true, Ordering::SeqCst);
                }
                entries.into_iter().map(logged).collect()
            }),
        }
    }
}

fn logged(entry: StreamEntry) -> Arc<LoggedChunk> {
    Arc::new(LoggedChunk {
        seq: entry.chunk.seq,
        kind: entry.chunk.kind,
        json: entry.chunk.to_json().into(),
        in_log: entry.id.is_some(),
    })
}

/// A record as `GET /v1/runs/{id}` shows it.
fn info(record: &RunRecord) -> RunInfo {
    let (actor, workflow) = match record.actor.as_deref().map(RunTarget::named) {
        Some(RunTarget::Actor(actor)) => (Some(actor), None),
        Some(RunTarget::Workflow(name)) => (None, Some(name)),
        None => (None, None),
    };
    let terminal: Option<&StreamChunk> = record.terminal();
    let (status, error_code) = match terminal {
        None => (RunStatus::Running, None),
        Some(chunk) => RunStatus::of_terminal(chunk),
    };
    let created_at = record.created_ms.and_then(rfc3339_millis);
    RunInfo {
        run_id: record.run_id.clone(),
        actor,
        workflow,
        status,
        error_code,
        created_at: created_at.unwrap_or_default(),
        last_seq: record.last.as_ref().map(|c| c.seq),
    }
}

/// A Redis failure before a stream starts: `503 unavailable` (a cluster that is down named:
/// its commands only time out, see [`Client::explain`]), `429 queue_full`, or the client's
/// own mistake.
async fn failed<T>(client: &Client, err: loom_redis::Error) -> Result<T, ApiError> {
    let err = client.explain(err).await;
    Err(if err.is_bad_input() {
        ApiError::BadRequest(err.to_string())
    } else if matches!(err, loom_redis::Error::QueueFull { .. }) {
        ApiError::QueueFull(err.to_string())
    } else {
        ApiError::Unavailable(err.to_string())
    })
}

/// `ms` since the Unix epoch as RFC 3339 with milliseconds; `None` past what RFC 3339 can
/// write (the year 9999), which only a corrupted record holds.
fn rfc3339_millis(ms: u64) -> Option<String> {
    /// 9999-12-31T23:59:59.999Z.
    const LATEST: u64 = 253_402_300_799_999;
    (ms <= LATEST).then(|| {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    })
}

#[cfg(test)]
#[path = "../../loom-redis/tests/support/redis_server.rs"]
mod redis_server;

#[cfg(test)]
mod tests {
    use super::*;
    use loom_core::{Extensions, Runtime};
    use loom_redis::{ClientOptions, Worker, WorkerOptions};

    /// A Redis of the test's own, a worker on `runtime` and the server side of remote runs.
    struct Harness {
        redis: redis_server::RedisServer,
        client: Client,
        runs: RemoteRuns,
        stop: tokio::sync::oneshot::Sender<()>,
        worker: tokio::task::JoinHandle<Result<(), loom_redis::Error>>,
    }

    impl Harness {
        async fn start(runtime: Runtime) -> Self {
            let redis = redis_server::RedisServer::start();
            let options = ClientOptions {
                prefix: format!("t{}:", uuid::Uuid::new_v4().simple()),
                ..ClientOptions::default()
            };
            let client = Client::connect_with(redis.url(), options).await.unwrap();
            let worker = Worker::new(client.clone(), runtime, WorkerOptions::default());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let worker = tokio::spawn(worker.run(async {
                let _ = stopped.await;
            }));
            let runs = RemoteRuns::new(
                client.clone(),
                Registry::with_builtins(),
                Vec::new(),
                Arc::default(),
            );
            Self {
                redis,
                client,
                runs,
                stop,
                worker,
            }
        }

        async fn stop(self) {
            let _ = self.stop.send(());
            let _ = self.worker.await;
        }
    }

    /// A direct run whose client leaves while it is being queued (the handler's future is
    /// dropped before a reader is counted) is cancelled; a detached one goes on.
    #[tokio::test]
    async fn a_direct_run_whose_client_leaves_before_it_is_counted_is_cancelled() {
        let harness =
            Harness::start(Runtime::new(Registry::with_builtins(), Extensions::new())).await;
        let (client, runs) = (&harness.client, &harness.runs);
        let start = |policy| {
            runs.start(StartRequest {
                target: RunTarget::Actor("batch".to_owned()),
                input: json!({ "count": 20, "batch_size": 1, "delay_ms": 50 }),
                timeout: None,
                policy,
                traceparent: None,
            })
        };
        let ends = tokio::time::timeout(Duration::from_secs(20), async {
            while !client.served_actors().await.unwrap().contains("batch") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // No reader is ever counted: only the client leaving early can cancel it.
            let left = start(DisconnectPolicy::CancelAfter(Duration::from_millis(100)))
                .await
                .unwrap();
            let kept = start(DisconnectPolicy::Continue).await.unwrap();
            let ids = [left.id().to_owned(), kept.id().to_owned()];
            drop((left, kept));
            let mut ends = Vec::new();
            for id in ids {
                let mut feed = runs
                    .find(&id)
                    .await
                    .unwrap()
                    .open(None)
                    .await
                    .unwrap()
                    .unwrap();
                let mut last = None;
                while let Some(chunks) = feed.next().await {
                    last = chunks.last().cloned();
                }
                let last = last.expect("a chunk");
                ends.push(serde_json::from_slice::<StreamChunk>(&last.json).unwrap());
            }
            ends
        })
        .await
        .expect("both runs end");
        let cancelled = ends[0].error.as_ref().map(|e| e.code);
        assert_eq!(
            cancelled,
            Some(loom_core::ErrorCode::Cancelled),
            "{:?}",
            ends[0]
        );
        assert_eq!(ends[1].kind, ChunkType::Complete, "{:?}", ends[1]);
        harness.stop().await;
    }

    /// A server that does not have a workflow's definition gives its run the longest deadline
    /// (the workflow ends itself at its own), not one step's (ten minutes): the record lives
    /// that long.
    #[tokio::test]
    async fn a_workflow_run_queued_without_its_definition_gets_a_workflows_deadline() {
        let builtins = Registry::with_builtins();
        let workflow = loom_workflow::parse(
            "name: w\nactions:\n  - { name: a, type: actor, actorType: echo }\n",
            "w.yaml",
            &|t| builtins.contains(t),
        )
        .unwrap();
        let local = Arc::new(Runtime::new(Registry::with_builtins(), Extensions::new()));
        let mut registry = Registry::with_builtins();
        registry
            .register(loom_workflow::WorkflowExecutor::new(local.clone()).worker_actor(workflow));
        let harness = Harness::start(local.with_registry(registry)).await;
        let (client, runs) = (&harness.client, &harness.runs);
        let ttl = tokio::time::timeout(Duration::from_secs(20), async {
            while !client
                .served_actors()
                .await
                .unwrap()
                .contains("workflows/w")
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let run = runs
                .start(StartRequest {
                    target: RunTarget::Workflow("w".to_owned()),
                    input: json!({}),
                    timeout: None,
                    policy: DisconnectPolicy::Continue,
                    traceparent: None,
                })
                .await
                .unwrap();
            let mut conn = redis::Client::open(harness.redis.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            redis::cmd("TTL")
                .arg(client.keys().run(run.id()))
                .query_async::<u64>(&mut conn)
                .await
                .unwrap()
        })
        .await
        .expect("queued");
        let options = client.options();
        let after = options.pickup_timeout + options.stream_ttl;
        assert!(
            ttl + 60 >= (loom_workflow::MAX_DURATION + after).as_secs(),
            "the record lives {ttl} s"
        );
        harness.stop().await;
    }

    #[test]
    fn creation_times_print_up_to_the_year_9999_and_not_past_it() {
        assert_eq!(
            rfc3339_millis(0).as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
        let latest = rfc3339_millis(253_402_300_799_999);
        assert_eq!(latest.as_deref(), Some("9999-12-31T23:59:59.999Z"));
        assert_eq!(rfc3339_millis(253_402_300_800_000), None);
        assert_eq!(rfc3339_millis(u64::MAX), None);
    }
}
