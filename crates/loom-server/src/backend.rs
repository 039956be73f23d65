//! One interface over where runs happen and where their logs live: in this process
//! ([`Engine`], the embedded default: in-memory logs) or on workers through Redis
//! ([`RemoteRuns`], `loom serve --redis`: the Redis chunk streams are the logs). The routes,
//! the SSE bodies and the WebSocket use only this module's types.

use std::ops::ControlFlow;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::remote::{RemoteAttachment, RemoteFeed, RemoteRun, RemoteRuns};
use crate::runlog::{CursorExpired, LoggedChunk, Read, Reader, RunInfo, RunTarget};
use crate::runs::{Engine, StartRequest};
use crate::store::{self, Run};

/// Where runs happen.
#[derive(Debug)]
pub(crate) enum Runs {
    /// In this process.
    Local(Engine),
    /// On workers, through Redis.
    Remote(RemoteRuns),
}

impl Runs {
    /// Starts a run (see [`Engine::start`] and [`RemoteRuns::start`] for its errors).
    pub(crate) async fn start(&self, request: StartRequest) -> Result<RunRef, ApiError> {
        match self {
            Self::Local(engine) => engine.start(request).map(RunRef::Local),
            Self::Remote(remote) => remote.start(request).await.map(RunRef::Remote),
        }
    }

    /// The run `id`, or `not_found`.
    pub(crate) async fn find(&self, id: &str) -> Result<RunRef, ApiError> {
        match self {
            Self::Local(engine) => engine
                .store()
                .get(id)
                .map(RunRef::Local)
                .ok_or_else(|| ApiError::NotFound(format!("unknown run '{id}'"))),
            Self::Remote(remote) => remote.find(id).await.map(RunRef::Remote),
        }
    }

    /// Names `run` `name` (a chat's latest run), replacing what the name stood for.
    pub(crate) async fn name_run(&self, name: &str, run: &RunRef) -> Result<(), ApiError> {
        match self {
            Self::Local(engine) => {
                engine.store().name_run(name, run.id());
                Ok(())
            }
            Self::Remote(remote) => remote.name_run(name, run.id()).await,
        }
    }

    /// The run named `name`, if any.
    pub(crate) async fn named(&self, name: &str) -> Result<Option<RunRef>, ApiError> {
        match self {
            Self::Local(engine) => Ok(engine.store().named(name).map(RunRef::Local)),
            Self::Remote(remote) => remote.named(name).await.map(|run| run.map(RunRef::Remote)),
        }
    }

    /// The recent runs, newest first.
    pub(crate) async fn recent(&self) -> Result<Vec<RunInfo>, ApiError> {
        match self {
            Self::Local(engine) => Ok(engine.store().recent()),
            Self::Remote(remote) => remote.recent().await,
        }
    }

    /// Whether `target` can be started: a registered actor type or a loaded workflow here; in
    /// distributed mode, one a live worker serves or this server describes.
    pub(crate) async fn knows(&self, target: &RunTarget) -> Result<bool, ApiError> {
        match (self, target) {
            (Self::Local(engine), RunTarget::Actor(actor)) => {
                Ok(engine.runtime().registry().contains(actor))
            }
            (Self::Local(engine), RunTarget::Workflow(name)) => {
                Ok(engine.workflows().any(|w| w.name == *name))
            }
            (Self::Remote(remote), target) => remote.knows(target).await,
        }
    }

    /// `Ok` when a run of `target` can be started now; otherwise the refusal starting it would
    /// get: `not_found` for a name this server cannot run, and in distributed mode
    /// `unavailable` (503, `Retry-After`) while no live worker serves a type this server
    /// describes, or `not_found` for workers on other queue shards (see `RemoteRuns::start`).
    /// The WebSocket upgrade asks it before its handshake.
    pub(crate) async fn check_startable(&self, target: &RunTarget) -> Result<(), ApiError> {
        match self {
            Self::Local(_) if self.knows(target).await? => Ok(()),
            Self::Local(_) => Err(ApiError::NotFound(format!("unknown {}", target.describe()))),
            Self::Remote(remote) => remote.check_served(target).await,
        }
    }

    /// Whether `target` takes a conversation (an actor whose
    /// [`takes_messages`](loom_core::Actor::takes_messages) says so; in distributed mode, as
    /// this server's registry knows it).
    pub(crate) fn takes_messages(&self, target: &RunTarget) -> bool {
        let RunTarget::Actor(actor) = target else {
            return false;
        };
        let registry = match self {
            Self::Local(engine) => engine.runtime().registry(),
            Self::Remote(remote) => remote.registry(),
        };
        registry.get(actor).is_some_and(|a| a.takes_messages())
    }

    /// `GET /v1/actors`' list.
    pub(crate) async fn actors(&self) -> Result<Vec<Value>, ApiError> {
        match self {
            Self::Local(engine) => Ok(engine
                .runtime()
                .registry()
                .iter()
                .map(|a| json!({ "name": a.name(), "description": a.description(), "streams": a.streams() }))
                .collect()),
            Self::Remote(remote) => remote.actors().await,
        }
    }

    /// `GET /v1/workflows`' list.
    pub(crate) async fn workflows(&self) -> Result<Vec<Value>, ApiError> {
        match self {
            Self::Local(engine) => Ok(engine.workflows().map(workflow_json).collect()),
            Self::Remote(remote) => remote.workflows().await,
        }
    }

    /// How many runs this server started have not ended.
    pub(crate) fn active_runs(&self) -> usize {
        match self {
            Self::Local(engine) => engine.store().running().len(),
            Self::Remote(remote) => remote.active_runs(),
        }
    }

    /// Starts the graceful shutdown: embedded runs are cancelled (their readers get the
    /// terminal `error/cancelled`); remote runs go on and this server's streams close.
    pub(crate) fn shutdown(&self) {
        match self {
            Self::Local(engine) => engine.shutdown(),
            Self::Remote(remote) => remote.shutdown(),
        }
    }

    /// After [`shutdown`](Self::shutdown): in distributed mode, waits out the disconnect graces
    /// this server's readers started when they left (embedded runs are cancelled already).
    pub(crate) async fn drained(&self) {
        if let Self::Remote(remote) = self {
            remote.drained().await;
        }
    }
}

/// A workflow as `GET /v1/workflows` lists it.
pub(crate) fn workflow_json(workflow: &loom_workflow::Workflow) -> Value {
    let steps: Vec<&str> = workflow.steps().map(|s| s.name.as_str()).collect();
    json!({ "name": workflow.name, "description": workflow.description, "steps": steps })
}

/// One run, wherever it happens.
#[derive(Debug, Clone)]
pub(crate) enum RunRef {
    /// In this process.
    Local(Arc<Run>),
    /// On a worker.
    Remote(RemoteRun),
}

impl RunRef {
    /// The run id.
    pub(crate) fn id(&self) -> &str {
        match self {
            Self::Local(run) => run.log().run_id(),
            Self::Remote(run) => run.id(),
        }
    }

    /// Counts a reader until the guard drops: when a direct stream's last reader has been
    /// gone for the disconnect grace, its run is cancelled.
    pub(crate) async fn attach(&self) -> Result<Attachment, ApiError> {
        Ok(match self {
            Self::Local(run) => Attachment::Local(run.attach()),
            Self::Remote(run) => Attachment::Remote(run.attach().await?),
        })
    }

    /// A feed of the chunks after `cursor` (from the start when `None`), or `None` when the
    /// cursor is at or past the terminal chunk (`204`); `410` when the log no longer holds
    /// the cursor.
    pub(crate) async fn open(&self, cursor: Option<u64>) -> Result<Option<Feed>, ApiError> {
        match self {
            Self::Local(run) => {
                if run.log().read(cursor)? == Read::Finished {
                    return Ok(None);
                }
                Ok(Some(Feed::Local(run.log().reader(cursor))))
            }
            Self::Remote(run) => Ok(run.open(cursor).await?.map(Feed::Remote)),
        }
    }

    /// Reads the run from `cursor` to its terminal chunk, handing `each` its chunks in order,
    /// for a reader that wants the run's outcome rather than every chunk (`/run`, a
    /// non-streaming dialect answer). An embedded log that outgrew its bound may have dropped
    /// chunks before they were read (the log always keeps the terminal): `each` is then
    /// told of the [`Gap`](Through::Gap) and handed only the terminal chunk after it (whose
    /// result is the whole answer), never a text with a hole in it. `each` breaks to stop
    /// early.
    pub(crate) async fn read_through(
        &self,
        mut cursor: Option<u64>,
        mut each: impl FnMut(Through<'_>) -> ControlFlow<()>,
    ) -> Result<(), ApiError> {
        let mut whole = true;
        'read: loop {
            let mut feed = match self.open(cursor).await {
                Ok(Some(feed)) => feed,
                Ok(None) => return Ok(()),
                Err(ApiError::CursorExpired(expired)) => {
                    cursor = Some(expired.oldest.saturating_sub(1));
                    whole = false;
                    if each(Through::Gap).is_break() {
                        return Ok(());
                    }
                    continue 'read;
                }
                Err(e) => return Err(e),
            };
            loop {
                match feed.next().await {
                    Ok(Some(mut chunks)) => {
                        cursor = chunks.last().map(|c| c.seq).or(cursor);
                        if !whole {
                            chunks.retain(|c| c.kind.is_terminal());
                        }
                        let reached = cursor.unwrap_or(0);
                        if each(Through::Chunks(&chunks, reached)).is_break() {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(expired) => {
                        cursor = Some(expired.oldest.saturating_sub(1));
                        whole = false;
                        if each(Through::Gap).is_break() {
                            return Ok(());
                        }
                        continue 'read;
                    }
                }
            }
        }
    }

    /// The run's status.
    pub(crate) async fn info(&self) -> Result<RunInfo, ApiError> {
        match self {
            Self::Local(run) => Ok(run.log().info()),
            Self::Remote(run) => run.info().await,
        }
    }

    /// Asks the run to stop (idempotent); its terminal `error/cancelled` reaches every reader.
    pub(crate) async fn cancel(&self) -> Result<(), ApiError> {
        match self {
            Self::Local(run) => {
                run.cancel();
                Ok(())
            }
            Self::Remote(run) => run.cancel().await,
        }
    }
}

/// What [`RunRef::read_through`] hands its reader.
pub(crate) enum Through<'a> {
    /// The next chunks, in order, and the `seq` reading has reached (that of the last chunk
    /// read, also when a gap left only the terminal to hand on).
    Chunks(&'a [Arc<LoggedChunk>], u64),
    /// Chunks were dropped before they were read: what was handed before is not the whole
    /// run, and only the terminal chunk follows.
    Gap,
}

/// A reader of a run, counted while it lives.
#[derive(Debug)]
#[expect(dead_code, reason = "held only for its Drop")]
pub(crate) enum Attachment {
    /// Of a run in this process.
    Local(store::Attachment),
    /// Of a run on a worker, counted in Redis.
    Remote(RemoteAttachment),
}

/// A run's chunks for one reader, in order.
#[derive(Debug)]
pub(crate) enum Feed {
    /// From an embedded log.
    Local(Reader),
    /// From a Redis chunk stream.
    Remote(RemoteFeed),
}

impl Feed {
    /// The next chunks; `Ok(None)` after the terminal chunk (or, for a remote run, when the
    /// server shuts down); [`CursorExpired`] when an embedded log dropped the reader's place.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<Arc<LoggedChunk>>>, CursorExpired> {
        match self {
            Self::Local(reader) => reader.next().await,
            Self::Remote(feed) => Ok(feed.next().await),
        }
    }
}
