//! [`RemoteInvoker`]: runs actors on workers, through Redis, behind the same
//! [`Invoker`] seam the local runtime implements.
//!
//! `invoke` opens a reader on `loom:stream:{<bucket>}:<run id>` (from its start, so nothing can be
//! missed), `XADD`s the request to `loom:queue:{<type>}`, and returns a [`ChunkStream`] of the
//! worker's chunks with the worker's `seq` (no renumbering). Dropping that stream, or calling
//! [`ChunkStream::cancel`], sets `loom:cancel:{<bucket>}:<id>` and publishes the id: the worker stops the
//! actor and writes `error/cancelled`, which a stream that was only `cancel()`ed still yields.
//! The worker enforces the deadline (`error/timeout`); the reader writes `error/timeout` itself
//! if nothing terminal arrived by the deadline plus `deadline_grace`. The request carries the
//! current span's W3C `traceparent` ([`loom_core::trace`]), which the worker's run span takes
//! as its parent.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use loom_core::{
    new_run_id, ActorError, CancellationToken, ChunkStream, Invoker, RunOptions, DEFAULT_TIMEOUT,
};
use serde_json::Value;
use tokio::time::Instant;

use crate::client::{unix_ms, Client};
use crate::codec::{EntryId, Request};
use crate::error::Error;
use crate::keys::check_name;
use crate::reader::{self, EntryStream, Watch};
use crate::runs::RECENT_RUNS;
use crate::script;

/// Starts runs on remote workers (see the module docs).
///
/// ```no_run
/// # async fn demo() -> Result<(), loom_core::ActorError> {
/// use futures::StreamExt;
/// use loom_core::{Invoker, RunOptions};
///
/// let client = loom_redis::Client::connect("redis://127.0.0.1:6379").await?;
/// let invoker = client.invoker();
/// let input = serde_json::json!({ "count": 300, "batch_size": 100 });
/// let mut chunks = invoker.stream("batch", input, RunOptions::default()).await?;
/// while let Some(chunk) = chunks.next().await {
///     println!("{}", chunk.to_json());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RemoteInvoker {
    client: Client,
    actors: Option<Arc<HashSet<String>>>,
}

impl Client {
    /// An [`Invoker`] that runs actors on workers through this Redis.
    pub fn invoker(&self) -> RemoteInvoker {
        RemoteInvoker::new(self.clone())
    }
}

/// A request placed in a queue by [`RemoteInvoker::submit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The run id, which is also the stream id.
    pub run_id: String,
    /// The request's entry id in its queue.
    pub entry_id: EntryId,
}

impl RemoteInvoker {
    /// An invoker that sends requests through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            actors: None,
        }
    }

    /// Limits [`knows`](Invoker::knows) to these actor types. Without a list, every valid
    /// name counts as known: whether a worker serves it is only known when one picks it up.
    pub fn with_actors<I, S>(mut self, actors: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.actors = Some(Arc::new(actors.into_iter().map(Into::into).collect()));
        self
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Queues a run of `actor_type` on `input` without reading it: a detached run, which goes
    /// on whoever reads it, until it ends or [`Client::cancel`] stops it. Read it with
    /// [`Client::tail`] or [`attach`](Self::attach).
    pub async fn submit(
        &self,
        actor_type: &str,
        input: Value,
        options: &RunOptions,
    ) -> Result<Submitted, Error> {
        let request = self.request(actor_type, input, options)?;
        self.enqueue(&request).await
    }

    /// Reads the run `run_id` after entry `from` (from its start when `None`), waiting for a
    /// worker to pick it up if it is still queued, for at most the `pickup_timeout`. Unlike
    /// [`Client::tail`], the stream need not exist yet. Dropping the result does not cancel.
    /// A `from` at or past the terminal gives an empty stream; one ahead of a live run's
    /// last entry waits for the run to get there, and ends with nothing if it ends before.
    pub async fn attach(&self, run_id: &str, from: Option<EntryId>) -> Result<EntryStream, Error> {
        check_name("run id", run_id)?;
        if let Some(from) = from {
            if self.client.ended_by(run_id, from).await? {
                return Ok(reader::ended(run_id));
            }
        }
        let options = self.client.options();
        // No deadline here: a detached run may rightly go on for longer than any default,
        // and its worker enforces the deadline it was given.
        let watch = Watch::attach(options);
        reader::open(
            self.client.clone(),
            run_id.to_owned(),
            from.unwrap_or(EntryId::ZERO),
            watch,
        )
        .await
    }

    /// Starts a run and returns its chunks; like [`Invoker::stream`] with this crate's error.
    /// Dropping the stream cancels the run; so does this process ending without a word (killed
    /// outright): while the stream lives it renews its presence every
    /// [`lease_refresh`](crate::ClientOptions::lease_refresh) for a
    /// [`lease_ttl`](crate::ClientOptions::lease_ttl), and the worker cancels the run once its
    /// heartbeats have found it lapsed for another `lease_ttl` (not merely late after a Redis
    /// outage).
    pub async fn stream(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<ChunkStream, Error> {
        let mut request = self.request(actor_type, input, &options)?;
        // This caller reads the run it starts: a worker cancels it once the caller's presence
        // lapses (the process killed, with no chance to cancel).
        request.caller = true;
        let timeout = Duration::from_millis(request.timeout_ms);
        let watch = Watch::run(self.client.options(), Instant::now() + timeout);
        // Reading starts before the request exists, from the stream's start: nothing is missed.
        let entries = reader::open(
            self.client.clone(),
            request.run_id.clone(),
            EntryId::ZERO,
            watch,
        )
        .await?;
        let token = match &options.parent {
            Some(parent) => parent.child_token(),
            None => CancellationToken::new(),
        };
        let (queued, done) = (CancellationToken::new(), CancellationToken::new());
        self.client.spawn_cancel(forward_cancel(
            self.client.clone(),
            request.run_id.clone(),
            token.clone(),
            queued.clone(),
            done.clone(),
        ));
        // Dropped while the request is being queued (a workflow cancelled as its step starts)
        // or failing to queue it, this cancels the run, which may be queued already — unless
        // the queue refused it: then nothing of it is in Redis, and a cancel would write some.
        let queueing = token.clone().drop_guard();
        match self.enqueue(&request).await {
            Ok(_) => {
                queueing.disarm();
                queued.cancel();
            }
            Err(refused @ Error::QueueFull { .. }) => {
                queueing.disarm();
                done.cancel();
                return Err(refused);
            }
            Err(err) => return Err(err),
        }
        let chunks = entries.map(move |entry| {
            // Only a terminal from the stream ends the run; one the reader made itself (Redis
            // out of reach, a verdict it could not write) does not, and dropping the stream
            // must still cancel the run.
            if entry.chunk.is_terminal() && entry.id.is_some() {
                done.cancel();
            }
            entry.chunk
        });
        Ok(ChunkStream::new(request.run_id, Box::pin(chunks), token))
    }

    fn request(
        &self,
        actor_type: &str,
        input: Value,
        options: &RunOptions,
    ) -> Result<Request, Error> {
        check_name("actor type", actor_type)?;
        let run_id = options.run_id.clone().unwrap_or_else(new_run_id);
        check_name("run id", &run_id)?;
        let timeout = options.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let timeout_ms = timeout.as_millis().min(u128::from(u64::MAX / 2)) as u64;
        Ok(Request {
            run_id,
            actor: actor_type.to_owned(),
            input,
            timeout_ms,
            traceparent: loom_core::trace::current_traceparent(),
            caller: false,
        })
    }

    /// Queues `request` and writes its run's record and index entry (`runs.rs`): the record
    /// and the queue's entry in one round trip (two pipelines sent at once, one per slot, as
    /// a cluster requires), then, once the queue took it, the index entry. Nothing reads the
    /// record or the index to decide anything, so a failure between them loses nothing. A
    /// queue at [`max_queued`](crate::ClientOptions::max_queued) refuses the request
    /// ([`Error::QueueFull`]).
    async fn enqueue(&self, request: &Request) -> Result<Submitted, Error> {
        let keys = self.client.keys();
        let options = self.client.options();
        let record = keys.run(&request.run_id);
        // The record lives as long as the run's stream can: its deadline, then the TTL — at
        // most a century, which Redis's `EXPIRE` takes (a deadline of "forever" it refuses).
        let record_ttl = (request.timeout_ms / 1000)
            .saturating_add(options.pickup_timeout.as_secs())
            .saturating_add(options.stream_ttl.as_secs())
            .min(100 * 365 * 24 * 3600);
        // For people (the run index and status); no decision reads it.
        let created_ms = unix_ms();
        let queue = keys.queue_for(&request.actor, &request.run_id, options.queue_shards);
        let limit = options.max_queued.unwrap_or(0);
        let mut recorded = redis::pipe();
        recorded
            .cmd("HSET")
            .arg(&record)
            .arg("actor")
            .arg(&request.actor)
            .arg("created_ms")
            .arg(created_ms)
            .ignore()
            .cmd("EXPIRE")
            .arg(&record)
            .arg(record_ttl)
            .ignore();
        // The caller's presence, from the start (a worker first looks at it a lease refresh
        // after it took the run up). A command of its own: a pipeline's keys stay one key's.
        let present = request.caller.then(|| {
            let mut set = redis::cmd("SET");
            set.arg(keys.caller(&request.run_id))
                .arg(1)
                .arg("PX")
                .arg(options.lease_ttl.as_millis() as u64);
            set
        });
        let mut indexed = redis::pipe();
        indexed
            .cmd("ZADD")
            .arg(keys.runs())
            .arg(created_ms)
            .arg(&request.run_id)
            .ignore()
            .cmd("ZREMRANGEBYRANK")
            .arg(keys.runs())
            .arg(0)
            .arg(-(RECENT_RUNS as i64) - 1)
            .ignore();
        let (mut a, mut b, mut c) = (self.client.conn(), self.client.conn(), self.client.conn());
        let ((), id, ()) = tokio::try_join!(
            async { Ok(recorded.query_async::<()>(&mut a).await?) },
            script::enqueue(&mut b, &queue, limit, request),
            async {
                match &present {
                    Some(set) => Ok(set.exec_async(&mut c).await?),
                    None => Ok::<(), Error>(()),
                }
            },
        )?;
        let Some(id) = id else {
            // Refused: the record, which only the run's id finds, is taken back, and so is
            // the caller's presence (one bucket: one slot) — as well as Redis lets it: the
            // refusal is the answer (what stays expires).
            let mut taken_back = redis::cmd("DEL");
            taken_back.arg(&record);
            if present.is_some() {
                taken_back.arg(keys.caller(&request.run_id));
            }
            if let Err(e) = taken_back.exec_async(&mut a).await {
                tracing::debug!(error = %e, "could not take a refused run's keys back");
            }
            return Err(Error::QueueFull {
                actor: request.actor.clone(),
                limit,
            });
        };
        // The index keeps the newest entries only: a run joins it once it is queued, so a
        // refused one neither shows in it nor pushes a real one out.
        indexed.query_async::<()>(&mut a).await?;
        Ok(Submitted {
            run_id: request.run_id.clone(),
            entry_id: id.parse()?,
        })
    }
}

/// Sends the cancel to the worker when the caller cancels (or drops) a stream that has not
/// ended yet; meanwhile the client renews the caller's presence (`Keys::caller`), which
/// tells the worker the caller is still there.
///
/// The renewing starts once the request is `queued` (the request itself sets the presence
/// first): a request the queue refused leaves no presence behind, which a renewal landing
/// after the refusal took it back would set again.
async fn forward_cancel(
    client: Client,
    run_id: String,
    token: CancellationToken,
    queued: CancellationToken,
    done: CancellationToken,
) {
    let present = async {
        queued.cancelled().await;
        let _present = client.present(&run_id);
        std::future::pending::<()>().await;
    };
    tokio::select! {
        biased;
        _ = done.cancelled() => {}
        _ = token.cancelled() => {
            if let Err(e) = client.cancel(&run_id).await {
                tracing::warn!(run_id, error = %e, "could not send the cancel");
                client.cancel_failed();
            }
        }
        () = present => {}
    }
}

#[async_trait]
impl Invoker for RemoteInvoker {
    async fn stream(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<ChunkStream, ActorError> {
        Ok(RemoteInvoker::stream(self, actor_type, input, options).await?)
    }

    fn knows(&self, actor_type: &str) -> bool {
        check_name("actor type", actor_type).is_ok()
            && self
                .actors
                .as_ref()
                .is_none_or(|actors| actors.contains(actor_type))
    }
}
