//! [`Worker`]: takes requests from the actor queues and runs them on the local runtime,
//! publishing their chunks.
//!
//! A worker joins the consumer group `loom-workers` of `loom:queue:{<type>}` for each actor
//! type it serves (`XGROUP CREATE … 0 MKSTREAM`), reads requests with `XREADGROUP`, runs each
//! through [`Runtime::run`] (which numbers chunks and writes the terminal one), publishes the
//! chunks with a [`Publisher`], and `XACK`s (then `XDEL`s) the request once the terminal
//! chunk is in Redis.
//!
//! - **Leases.** When an attempt starts, the run's lease key takes the attempt's owner token
//!   (`<worker>:<attempt>:<entry>`); the [`Publisher`] writes only while the lease holds it, so
//!   a worker that lost a run can never append to its stream. Every `lease_refresh` a
//!   heartbeat renews, for each run the worker holds, the lease (`PEXPIRE lease_ttl`, only
//!   while it still holds the attempt's token — else the run stops without writing), the
//!   stream's TTL, and the request's idle time in the group's pending list (`XCLAIM … JUSTID`
//!   to itself, only for runs whose lease was renewed, so a run is never stolen back). A long
//!   run on a healthy worker is therefore never idle long enough to be claimed by another
//!   worker. `XREADGROUP COUNT` bounds each queue, not the total, so a read may return more
//!   requests than there are free slots: the extra ones wait in the worker, are started first
//!   as slots free up, and the heartbeat renews their idle time too.
//! - **Crash recovery.** Every few hundred milliseconds the worker `XAUTOCLAIM`s requests idle
//!   for more than the visibility timeout — those of a dead worker — and runs them again as
//!   attempt `delivery count` (2, 3, …): it reads the stream's last `seq` (`XREVRANGE COUNT 1`)
//!   and continues from there, so the stream stays gapless and the new `start` carries
//!   `attempt`. A request whose stream already ended is only acknowledged. If the heartbeat
//!   finds that another worker took one of its runs, it stops that run without writing.
//! - **Cancel.** The worker subscribes to `loom:cancel` and checks `loom:cancel:{<id>}` before
//!   starting a run; a cancel cancels the run's token, so the actor stops at once and the
//!   runtime writes `error/cancelled`. Pub/sub delivers at most once, so the heartbeat also
//!   reads the cancel keys of the runs it holds.
//! - **Shutdown.** When the shutdown future resolves the worker stops taking requests, lets
//!   the runs it holds finish for up to `shutdown_grace`, then hands the rest back (their
//!   requests become claimable at once, and another worker continues their streams).
//! - **Redis loss.** Every loop logs, backs off and reconnects; the worker does not exit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use loom_core::{
    ActorError, Attempt, CancellationToken, ChunkType, ErrorCode, RunOptions, Runtime, StreamChunk,
};
use redis::Value;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::client::{unix_ms, Client};
use crate::codec::{
    entry_seq, is_terminal_entry, parse_entries, parse_read_reply, text, EntryId, RawEntry, Request,
};
use crate::error::Error;
use crate::keys::check_name;
use crate::publisher::Publisher;

/// How long one `XREADGROUP` blocks when the queues are empty. It also paces the sweep for
/// dead workers' requests, so it is short.
const READ_BLOCK: Duration = Duration::from_millis(500);

/// How many `XAUTOCLAIM` calls one sweep may make on a queue that yields nothing claimable.
const SCANS_PER_SWEEP: usize = 4;

/// What a worker serves and how much at once.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The actor types to serve; empty means every actor of the runtime's registry.
    pub actors: Vec<String>,
    /// How many runs at once (default 16).
    pub concurrency: usize,
    /// The worker's consumer name in the group; a random `worker-<uuid>` when `None`. Two
    /// live workers must not share a name.
    pub name: Option<String>,
    /// How long runs may go on after the shutdown signal before they are handed back
    /// (default 30 s).
    pub shutdown_grace: Duration,
    /// The attempt after which a request that keeps losing its worker ends with
    /// `error/worker_lost` instead of running again (default 3).
    pub max_attempts: u32,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            actors: Vec::new(),
            concurrency: 16,
            name: None,
            shutdown_grace: Duration::from_secs(30),
            max_attempts: 3,
        }
    }
}

/// Runs requests from the Redis queues on a local [`Runtime`] (see the module docs).
///
/// ```no_run
/// # async fn demo() -> Result<(), loom_redis::Error> {
/// use loom_core::{Extensions, Registry, Runtime};
/// use loom_redis::{Client, Worker, WorkerOptions};
///
/// let client = Client::connect("redis://127.0.0.1:6379").await?;
/// let runtime = Runtime::new(Registry::with_builtins(), Extensions::new());
/// let worker = Worker::new(client, runtime, WorkerOptions::default());
/// worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: Client,
    runtime: Runtime,
    options: WorkerOptions,
    name: String,
    active: Mutex<HashMap<String, Active>>,
    /// Requests read but not yet started: `XREADGROUP COUNT` bounds each queue, not the
    /// total, so one read may return more than there are free slots. They are in this
    /// worker's pending list, so the heartbeat keeps them from looking abandoned.
    waiting: Mutex<VecDeque<Work>>,
}

/// A run the worker holds.
#[derive(Debug)]
struct Active {
    queue: String,
    entry: EntryId,
    /// The attempt's token in the run's lease key.
    owner: String,
    token: CancellationToken,
    discard: Arc<AtomicBool>,
}

impl Active {
    /// Stops the run without writing anything more to its stream.
    fn drop_run(&self) {
        self.discard.store(true, Ordering::Release);
        self.token.cancel();
    }
}

impl Shared {
    fn active(&self) -> MutexGuard<'_, HashMap<String, Active>> {
        // A panic while holding this lock leaves a plain map behind: keep using it.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn waiting(&self) -> MutexGuard<'_, VecDeque<Work>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn group(&self) -> &'static str {
        self.client.keys().group()
    }
}

impl Worker {
    /// A worker running requests for `runtime`'s actors through `client`'s Redis.
    pub fn new(client: Client, runtime: Runtime, options: WorkerOptions) -> Self {
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| format!("worker-{}", uuid::Uuid::new_v4()));
        Self {
            shared: Arc::new(Shared {
                client,
                runtime,
                options,
                name,
                active: Mutex::new(HashMap::new()),
                waiting: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// The worker's consumer name in the group.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The actor types this worker serves (checked), with their queue keys.
    fn queues(&self) -> Result<Vec<(String, String)>, Error> {
        let shared = &self.shared;
        let registry = shared.runtime.registry();
        let actors = if shared.options.actors.is_empty() {
            registry.names()
        } else {
            shared.options.actors.clone()
        };
        let mut queues = Vec::new();
        for actor in actors {
            check_name("actor type", &actor)?;
            if !registry.contains(&actor) {
                return Err(Error::UnknownActor(actor));
            }
            let queue = shared.client.keys().queue(&actor);
            queues.push((actor, queue));
        }
        if queues.is_empty() {
            return Err(Error::InvalidOptions("no actor types to serve".to_owned()));
        }
        Ok(queues)
    }

    /// Serves requests until `shutdown` resolves, then finishes (or hands back) the runs it
    /// holds and returns.
    ///
    /// Fails at once on bad options (unknown actor, invalid name, zero concurrency); Redis
    /// failures while running are logged and retried, never returned.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let shared = Arc::clone(&self.shared);
        if shared.options.concurrency == 0 {
            return Err(Error::InvalidOptions(
                "concurrency must be at least 1".to_owned(),
            ));
        }
        check_name("worker name", &shared.name)?;
        let queues: Vec<String> = self.queues()?.into_iter().map(|(_, q)| q).collect();
        // Fused: once it has resolved it is never polled again (an `async fn` would panic).
        let shutdown = shutdown.fuse();
        tokio::pin!(shutdown);

        let stop = CancellationToken::new();
        // In a JoinSet, so they are aborted with the worker if its future is dropped.
        let mut background = JoinSet::new();
        background.spawn(listen_for_cancels(Arc::clone(&shared), stop.clone()));
        background.spawn(heartbeat(Arc::clone(&shared), stop.clone()));
        let mut runs = JoinSet::new();
        let slots = Arc::new(Semaphore::new(shared.options.concurrency));
        let mut fetcher = Fetcher {
            shared: Arc::clone(&shared),
            queues,
            conn: None,
            groups_ready: false,
            backoff: Backoff::default(),
            next_sweep: Instant::now(),
            cursors: HashMap::new(),
        };
        tracing::info!(worker = %shared.name, "worker started");
        loop {
            while runs.try_join_next().is_some() {}
            if slots.available_permits() == 0 {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = runs.join_next() => continue,
                }
            }
            let stopping = if shared.waiting().is_empty() {
                let (work, stopping) = fetcher
                    .fetch(slots.available_permits(), &mut shutdown)
                    .await;
                shared.waiting().extend(work);
                stopping
            } else {
                false
            };
            start_waiting(&shared, &slots, &mut runs);
            if stopping {
                break;
            }
        }

        tracing::info!(worker = %shared.name, running = runs.len(), "worker stopping");
        let grace = tokio::time::sleep(shared.options.shutdown_grace);
        tokio::pin!(grace);
        loop {
            // Requests already taken are ours to run: start them as slots free up.
            start_waiting(&shared, &slots, &mut runs);
            tokio::select! {
                next = runs.join_next() => if next.is_none() && shared.waiting().is_empty() { break },
                _ = &mut grace => {
                    hand_back(&shared).await;
                    while runs.join_next().await.is_some() {}
                    break;
                }
            }
        }
        stop.cancel();
        while background.join_next().await.is_some() {}
        tracing::info!(worker = %shared.name, "worker stopped");
        Ok(())
    }
}

/// Starts waiting requests while there are free slots.
fn start_waiting(shared: &Arc<Shared>, slots: &Arc<Semaphore>, runs: &mut JoinSet<()>) {
    loop {
        let Ok(permit) = Arc::clone(slots).try_acquire_owned() else {
            return;
        };
        let Some((queue, entry, attempt)) = shared.waiting().pop_front() else {
            return;
        };
        runs.spawn(execute(Arc::clone(shared), queue, entry, attempt, permit));
    }
}

/// Takes requests: new ones with `XREADGROUP`, dead workers' ones with `XAUTOCLAIM`.
struct Fetcher {
    shared: Arc<Shared>,
    queues: Vec<String>,
    /// The dedicated connection for the blocking read, and its client id (for unblocking).
    conn: Option<(redis::aio::MultiplexedConnection, i64)>,
    groups_ready: bool,
    backoff: Backoff,
    next_sweep: Instant,
    /// Per queue, where the next `XAUTOCLAIM` continues, so sweeps reach every pending entry
    /// however long the pending list is.
    cursors: HashMap<String, String>,
}

/// A request to run: its queue, its entry, its attempt number.
type Work = (String, RawEntry, u32);

impl Fetcher {
    /// Up to `free` requests; the flag says the shutdown signal arrived.
    async fn fetch<S: Future<Output = ()> + Unpin>(
        &mut self,
        free: usize,
        shutdown: &mut S,
    ) -> (Vec<Work>, bool) {
        match self.try_fetch(free, shutdown).await {
            Ok(taken) => {
                self.backoff.reset();
                taken
            }
            Err(e) => {
                tracing::warn!(worker = %self.shared.name, error = %e, "cannot take requests; retrying");
                self.conn = None;
                // Redis may have restarted empty: create the groups again (idempotent).
                self.groups_ready = false;
                tokio::select! {
                    _ = self.backoff.wait() => (Vec::new(), false),
                    _ = shutdown => (Vec::new(), true),
                }
            }
        }
    }

    async fn try_fetch<S: Future<Output = ()> + Unpin>(
        &mut self,
        free: usize,
        shutdown: &mut S,
    ) -> Result<(Vec<Work>, bool), Error> {
        let group = self.shared.group();
        let mut conn = self.shared.client.conn();
        if !self.groups_ready {
            for queue in &self.queues {
                let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(queue)
                    .arg(group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await;
                match created {
                    Err(e) if e.code() != Some("BUSYGROUP") => return Err(e.into()),
                    _ => {}
                }
            }
            self.groups_ready = true;
        }
        if Instant::now() >= self.next_sweep {
            self.next_sweep = Instant::now() + sweep_every(&self.shared);
            let claimed = self.claim_abandoned(free).await?;
            if !claimed.is_empty() {
                return Ok((claimed, false));
            }
        }
        let (read_conn, client_id) = match self.conn.take() {
            Some(c) => c,
            None => {
                let mut c = self.shared.client.dedicated(READ_BLOCK).await?;
                let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut c).await?;
                (c, id)
            }
        };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(&self.shared.name)
            .arg("COUNT")
            .arg(free)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.queues);
        for _ in &self.queues {
            cmd.arg(">");
        }
        let mut c = read_conn.clone();
        let read = async move { cmd.query_async::<Value>(&mut c).await };
        tokio::pin!(read);
        let mut stopping = false;
        let reply = tokio::select! {
            reply = &mut read => reply,
            _ = shutdown => {
                stopping = true;
                // Whatever the blocked read returns is ours to run: wake it rather than drop it.
                let _: Result<i64, _> = redis::cmd("CLIENT").arg("UNBLOCK").arg(client_id)
                    .query_async(&mut conn).await;
                match read.await {
                    Ok(reply) => Ok(reply),
                    // Redis is unreachable: nothing was taken, and the worker is stopping.
                    Err(_) => return Ok((Vec::new(), true)),
                }
            }
        }?;
        self.conn = Some((read_conn, client_id));
        let streams = parse_read_reply(reply).map_err(protocol_error)?;
        let work = streams
            .into_iter()
            .flat_map(|(queue, entries)| entries.into_iter().map(move |e| (queue.clone(), e, 1)))
            .collect();
        Ok((work, stopping))
    }

    /// Claims up to `free` requests whose worker stopped refreshing them.
    async fn claim_abandoned(&mut self, free: usize) -> Result<Vec<Work>, Error> {
        let group = self.shared.group();
        let idle = self.shared.client.options().visibility_timeout.as_millis() as u64;
        let mut conn = self.shared.client.conn();
        let mut work = Vec::new();
        for queue in &self.queues {
            // A few scans per sweep: each looks at up to ten times COUNT pending entries.
            for _ in 0..SCANS_PER_SWEEP {
                if work.len() >= free {
                    break;
                }
                let cursor = self.cursors.get(queue).map_or("0-0", String::as_str);
                let reply: Value = redis::cmd("XAUTOCLAIM")
                    .arg(queue)
                    .arg(group)
                    .arg(&self.shared.name)
                    .arg(idle)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(free - work.len())
                    .query_async(&mut conn)
                    .await?;
                let Value::Array(mut parts) = reply else {
                    return Err(protocol_error(
                        "XAUTOCLAIM reply is not an array".to_owned(),
                    ));
                };
                if parts.len() < 2 {
                    return Err(protocol_error("XAUTOCLAIM reply is too short".to_owned()));
                }
                let next = text(&parts[0]).unwrap_or("0-0").to_owned();
                let entries = parse_entries(parts.swap_remove(1)).map_err(protocol_error)?;
                let claimed = !entries.is_empty();
                self.claim_entries(&mut conn, queue, entries, &mut work)
                    .await;
                let wrapped = next == "0-0";
                self.cursors.insert(queue.clone(), next);
                if claimed || wrapped {
                    break;
                }
            }
        }
        Ok(work)
    }

    /// Turns claimed entries into work, with their attempt numbers.
    async fn claim_entries(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        queue: &str,
        entries: Vec<RawEntry>,
        work: &mut Vec<Work>,
    ) {
        let group = self.shared.group();
        for entry in entries {
            // Already claimed: losing it over the lookup would strand it for another
            // visibility timeout. A claimed request is at least a second attempt.
            let attempt = delivery_count(conn, queue, group, entry.id)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(queue = %queue, entry = %entry.id, error = %e, "cannot read the delivery count; assuming attempt 2");
                    2
                });
            tracing::info!(queue = %queue, entry = %entry.id, attempt, "re-running an abandoned request");
            work.push((queue.to_owned(), entry, attempt));
        }
    }
}

/// How often to look for dead workers' requests: a fraction of the visibility timeout, so a
/// request is re-run soon after it becomes claimable.
fn sweep_every(shared: &Shared) -> Duration {
    (shared.client.options().visibility_timeout / 5)
        .clamp(Duration::from_millis(50), Duration::from_secs(2))
}

async fn delivery_count(
    conn: &mut redis::aio::ConnectionManager,
    queue: &str,
    group: &str,
    entry: EntryId,
) -> Result<u32, Error> {
    let id = entry.to_string();
    let reply: Value = redis::cmd("XPENDING")
        .arg(queue)
        .arg(group)
        .arg(&id)
        .arg(&id)
        .arg(1)
        .query_async(conn)
        .await?;
    let count = match reply {
        Value::Array(items) => match items.into_iter().next() {
            Some(Value::Array(fields)) => match fields.get(3) {
                Some(Value::Int(n)) => u32::try_from(*n).ok(),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    Ok(count.unwrap_or(2).max(2))
}

fn protocol_error(why: String) -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply",
        why,
    )))
}

/// The `start` and `error` chunks of a run that ends before its actor starts.
fn refused(request: &Request, seq: u64, attempt: u32, err: &ActorError) -> [StreamChunk; 2] {
    let mut start = StreamChunk::new(ChunkType::Start, seq);
    start.data = Some(json!({ "run_id": request.run_id, "actor": request.actor }));
    start.attempt = (attempt > 1).then_some(attempt);
    [start, StreamChunk::error(seq + 1, err)]
}

/// Runs one request, from its entry to its acknowledgement.
async fn execute(
    shared: Arc<Shared>,
    queue: String,
    entry: RawEntry,
    attempt: u32,
    _slot: OwnedSemaphorePermit,
) {
    let request = match Request::decode(&entry.fields) {
        Ok(request) => request,
        Err(why) => {
            tracing::error!(queue = %queue, entry = %entry.id, %why, "dropping an unreadable request");
            acknowledge(&shared, &queue, entry.id).await;
            return;
        }
    };
    if let Err(e) = run_request(&shared, &queue, entry.id, &request, attempt).await {
        // The request stays pending: once its idle time passes the visibility timeout a
        // worker (maybe this one) runs it again.
        tracing::warn!(run_id = %request.run_id, error = %e, "run interrupted; it will be retried");
    }
}

async fn run_request(
    shared: &Arc<Shared>,
    queue: &str,
    entry: EntryId,
    request: &Request,
    attempt: u32,
) -> Result<(), Error> {
    let client = &shared.client;
    let keys = client.keys();
    let run_id = request.run_id.as_str();
    if shared
        .active()
        .get(run_id)
        .is_some_and(|a| a.entry == entry && a.queue == queue)
    {
        // This worker's own sweep claimed a request it is still running (its refreshes failed
        // for a while): that run goes on and acknowledges the request when it ends.
        return Ok(());
    }
    let mut conn = client.conn();
    let (cancel, last): (Option<String>, Value) = redis::pipe()
        .cmd("GET")
        .arg(keys.cancel(run_id))
        .cmd("XREVRANGE")
        .arg(keys.stream(run_id))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    let last = parse_entries(last).map_err(protocol_error)?.pop();
    if last.as_ref().is_some_and(|l| is_terminal_entry(&l.fields)) {
        // A worker died between writing the terminal chunk and acknowledging.
        acknowledge(shared, queue, entry).await;
        return Ok(());
    }
    let seq = match &last {
        None => 0,
        Some(last) => match entry_seq(&last.fields) {
            Some(seq) => seq + 1,
            None => {
                tracing::error!(run_id, entry = %last.id, "stream's last entry has no seq; not running");
                acknowledge(shared, queue, entry).await;
                return Ok(());
            }
        },
    };
    let refusal = match cancel.as_deref() {
        Some("cancelled") => Some(ActorError::cancelled()),
        // Its reader already ended it (worker_lost, timeout) and wrote the terminal chunk.
        Some(_) => {
            acknowledge(shared, queue, entry).await;
            return Ok(());
        }
        None if attempt > shared.options.max_attempts => Some(ActorError::new(
            ErrorCode::WorkerLost,
            format!("gave up after {} attempts lost their worker", attempt - 1),
        )),
        None if unix_ms() >= request.deadline_ms => Some(ActorError::new(
            ErrorCode::Timeout,
            "the run passed its deadline before it started",
        )),
        None if !shared.runtime.registry().contains(&request.actor) => Some(ActorError::not_found(
            format!("unknown actor type '{}'", request.actor),
        )),
        None => None,
    };
    let owner = format!("{}:{attempt}:{entry}", shared.name);
    let token = CancellationToken::new();
    let publisher = Publisher::start_run(client, run_id, &owner, Some(token.clone()))?;
    // Before the run joins `active`: the heartbeat stops a run whose lease is not its own.
    take_lease(shared, run_id, &owner).await?;
    if let Some(err) = refusal {
        for chunk in refused(request, seq, attempt, &err) {
            publisher.send(chunk).await?;
        }
        publisher.finish().await?;
        acknowledge(shared, queue, entry).await;
        return Ok(());
    }

    let discard = publisher.discard_flag();
    shared.active().insert(
        run_id.to_owned(),
        Active {
            queue: queue.to_owned(),
            entry,
            owner: owner.clone(),
            token: token.clone(),
            discard: Arc::clone(&discard),
        },
    );
    let held = Held {
        shared,
        run_id,
        entry,
    };
    let result = drive(shared, request, seq, attempt, token, publisher).await;
    drop(held);
    result?;
    if discard.load(Ordering::Acquire) {
        // Taken over by another worker, handed back, or ended from outside: not ours to
        // acknowledge (whoever claims it next finds the terminal chunk and only acks).
        return Ok(());
    }
    acknowledge(shared, queue, entry).await;
    Ok(())
}

/// Takes a run out of `active` when dropped, so a panic or an early return in `drive` does
/// not leave the heartbeat renewing its lease forever.
struct Held<'a> {
    shared: &'a Shared,
    run_id: &'a str,
    entry: EntryId,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut active = self.shared.active();
        // Only this request's record: the same run may since be held for another entry.
        if active
            .get(self.run_id)
            .is_some_and(|a| a.entry == self.entry)
        {
            active.remove(self.run_id);
        }
    }
}

/// Runs the actor and publishes its chunks until the terminal one is written.
async fn drive(
    shared: &Arc<Shared>,
    request: &Request,
    seq: u64,
    attempt: u32,
    token: CancellationToken,
    publisher: Publisher,
) -> Result<(), Error> {
    let mut conn = shared.client.conn();
    // The cancel may have been set between the check in `run_request` and joining `active`.
    let reason: Option<String> = redis::cmd("GET")
        .arg(shared.client.keys().cancel(&request.run_id))
        .query_async(&mut conn)
        .await?;
    match reason.as_deref() {
        None => {}
        // The caller's cancel: the runtime writes `start` and `error/cancelled`.
        Some("cancelled") => token.cancel(),
        // A reader ended the run (worker_lost, timeout) and wrote its terminal chunk: write
        // nothing after it.
        Some(_) => return Ok(()),
    }
    let remaining = request.deadline_ms.saturating_sub(unix_ms());
    let options = RunOptions {
        run_id: Some(request.run_id.clone()),
        timeout: Some(Duration::from_millis(remaining)),
        parent: Some(token),
    };
    let attempt_of = Attempt::new(attempt, seq);
    match shared
        .runtime
        .stream_attempt(&request.actor, request.input.clone(), options, attempt_of)
    {
        Ok(mut chunks) => {
            while let Some(chunk) = chunks.next().await {
                if publisher.send(chunk).await.is_err() {
                    break;
                }
            }
        }
        Err(err) => {
            for chunk in refused(request, seq, attempt, &err) {
                publisher.send(chunk).await?;
            }
        }
    }
    publisher.finish().await
}

/// Makes `owner` the run's lease holder: from here on only its publisher can write, and a
/// writer of an attempt before it is fenced off.
async fn take_lease(shared: &Shared, run_id: &str, owner: &str) -> Result<(), Error> {
    let lease_ms = shared.client.options().lease_ttl.as_millis() as u64;
    redis::cmd("SET")
        .arg(shared.client.keys().lease(run_id))
        .arg(owner)
        .arg("PX")
        .arg(lease_ms)
        .query_async::<()>(&mut shared.client.conn())
        .await?;
    Ok(())
}

/// `EVAL RENEW 1 <lease> <owner> <ms>`: renews the lease only while it holds `owner`; 1 when
/// renewed, 0 when another attempt took it (or it expired, or the run ended).
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// `EVAL RELEASE 1 <lease> <owner>`: deletes the lease only while it holds `owner`.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Marks a request done and removes it from its queue.
async fn acknowledge(shared: &Shared, queue: &str, entry: EntryId) {
    let id = entry.to_string();
    let mut conn = shared.client.conn();
    let done: Result<(), _> = redis::pipe()
        .cmd("XACK")
        .arg(queue)
        .arg(shared.group())
        .arg(&id)
        .ignore()
        .cmd("XDEL")
        .arg(queue)
        .arg(&id)
        .ignore()
        .query_async(&mut conn)
        .await;
    if let Err(e) = done {
        // Left pending: whoever claims it next finds the terminal chunk and only acks.
        tracing::warn!(queue, entry = %id, error = %e, "could not acknowledge a request");
    }
}

/// Renews the leases, stream TTLs and pending idle times of the runs this worker holds, and
/// stops runs that another worker took over.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.client.options().lease_refresh;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = refresh(&shared).await {
            tracing::warn!(worker = %shared.name, error = %e, "could not refresh leases");
        }
    }
}

async fn refresh(shared: &Shared) -> Result<(), Error> {
    let held: Vec<(String, String, EntryId, String)> = shared
        .active()
        .iter()
        .map(|(run, a)| (run.clone(), a.queue.clone(), a.entry, a.owner.clone()))
        .collect();
    let waiting: Vec<(String, EntryId)> = shared
        .waiting()
        .iter()
        .map(|(queue, entry, _)| (queue.clone(), entry.id))
        .collect();
    if held.is_empty() && waiting.is_empty() {
        return Ok(());
    }
    let keys = shared.client.keys();
    let options = shared.client.options();
    let mut conn = shared.client.conn();
    let queues: HashSet<&str> = held
        .iter()
        .map(|(_, q, _, _)| q.as_str())
        .chain(waiting.iter().map(|(q, _)| q.as_str()))
        .collect();
    let mut mine: HashSet<(String, EntryId)> = HashSet::new();
    for queue in queues {
        let pending: Value = redis::cmd("XPENDING")
            .arg(queue)
            .arg(shared.group())
            .arg("-")
            .arg("+")
            .arg(100_000)
            .arg(&shared.name)
            .query_async(&mut conn)
            .await?;
        if let Value::Array(items) = pending {
            for item in items {
                if let Value::Array(fields) = item {
                    if let Some(id) = fields.first().and_then(text).and_then(|s| s.parse().ok()) {
                        mine.insert((queue.to_owned(), id));
                    }
                }
            }
        }
    }
    let mut pipe = redis::pipe();
    let mut claims: HashMap<&str, Vec<String>> = HashMap::new();
    // The runs refreshed, in the order of their replies.
    let mut refreshed: Vec<(&str, &str, EntryId)> = Vec::new();
    for (run_id, queue, entry, owner) in &held {
        if !mine.contains(&(queue.clone(), *entry)) {
            tracing::warn!(run_id, "another worker took this run over; stopping it");
            if let Some(active) = shared.active().get(run_id) {
                active.drop_run();
            }
            continue;
        }
        pipe.cmd("EVAL")
            .arg(RENEW)
            .arg(1)
            .arg(keys.lease(run_id))
            .arg(owner)
            .arg(options.lease_ttl.as_millis() as u64);
        pipe.cmd("EXPIRE")
            .arg(keys.stream(run_id))
            .arg(options.stream_ttl.as_secs())
            .ignore();
        // A cancel whose message was missed (pub/sub is at most once) is still in its key.
        pipe.cmd("GET").arg(keys.cancel(run_id));
        refreshed.push((run_id, queue, *entry));
    }
    let lost: HashSet<&(String, EntryId)> = waiting.iter().filter(|w| !mine.contains(w)).collect();
    if !lost.is_empty() {
        // Claimed by another worker while it waited here: that worker runs it.
        shared
            .waiting()
            .retain(|(queue, entry, _)| !lost.contains(&(queue.clone(), entry.id)));
    }
    for (queue, entry) in &waiting {
        if mine.contains(&(queue.clone(), *entry)) {
            claims
                .entry(queue.as_str())
                .or_default()
                .push(entry.to_string());
        }
    }
    if !refreshed.is_empty() {
        let replies: Vec<(i64, Option<String>)> = pipe.query_async(&mut conn).await?;
        let active = shared.active();
        for ((run_id, queue, entry), (renewed, reason)) in refreshed.into_iter().zip(replies) {
            let Some(run) = active.get(run_id) else {
                continue;
            };
            if renewed != 1 {
                // Another attempt holds the lease (or it lapsed): this writer is fenced off.
                tracing::warn!(run_id, "the run's lease is no longer ours; stopping it");
                run.drop_run();
                continue;
            }
            if let Some(reason) = reason {
                stop_for(run, &reason);
            }
            // Only runs whose lease is still ours keep their request: never steal it back.
            claims.entry(queue).or_default().push(entry.to_string());
        }
    }
    if claims.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (queue, ids) in claims {
        pipe.cmd("XCLAIM")
            .arg(queue)
            .arg(shared.group())
            .arg(&shared.name)
            .arg(0)
            .arg(ids)
            .arg("JUSTID")
            .ignore();
    }
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}

/// Stops a run whose cancel key holds `reason`: a caller's cancel lets the runtime write
/// `error/cancelled`; a reader's `worker_lost`/`timeout` already wrote the terminal chunk, so
/// the run stops without writing.
fn stop_for(run: &Active, reason: &str) {
    if reason == "cancelled" {
        run.token.cancel();
    } else {
        run.drop_run();
    }
}

/// Cancels runs whose id is published on the cancel channel.
async fn listen_for_cancels(shared: Arc<Shared>, stop: CancellationToken) {
    let channel = shared.client.keys().cancel_channel();
    let mut backoff = Backoff::default();
    loop {
        let subscribed = async {
            let mut pubsub = shared.client.redis().get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return,
            p = subscribed => p,
        };
        let pubsub = match pubsub {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(worker = %shared.name, error = %e, "cannot subscribe to cancels; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = backoff.wait() => continue,
                }
            }
        };
        backoff.reset();
        // Cancels published while we were not subscribed are still in the cancel keys.
        let held: Vec<String> = shared.active().keys().cloned().collect();
        for run_id in held {
            cancel_run(&shared, &run_id).await;
        }
        let mut messages = pubsub.into_on_message();
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                m = messages.next() => m,
            };
            let Some(message) = message else { break };
            let Ok(run_id) = message.get_payload::<String>() else {
                continue;
            };
            if shared.active().contains_key(&run_id) {
                cancel_run(&shared, &run_id).await;
            }
        }
        tracing::warn!(worker = %shared.name, "cancel subscription lost; resubscribing");
    }
}

/// Stops run `run_id` if its cancel key says so (see [`stop_for`]).
async fn cancel_run(shared: &Shared, run_id: &str) {
    let mut conn = shared.client.conn();
    let reason: Result<Option<String>, _> = redis::cmd("GET")
        .arg(shared.client.keys().cancel(run_id))
        .query_async(&mut conn)
        .await;
    let active = shared.active();
    let Some(run) = active.get(run_id) else {
        return;
    };
    match reason {
        Ok(Some(reason)) => stop_for(run, &reason),
        Ok(None) => {}
        // The message said cancel; without the reason, stopping is the safe side.
        Err(_) => run.token.cancel(),
    }
}

/// Stops the runs still going after the shutdown grace and makes their requests (and those
/// not started yet) claimable at once, so another worker continues their streams.
async fn hand_back(shared: &Shared) {
    // Taken out of `active` first, so the heartbeat does not refresh them again.
    let mut held: Vec<(String, String, EntryId, String)> = shared
        .active()
        .drain()
        .map(|(run, a)| {
            a.drop_run();
            (run, a.queue, a.entry, a.owner)
        })
        .collect();
    held.extend(
        shared
            .waiting()
            .drain(..)
            .map(|(queue, entry, _)| (String::new(), queue, entry.id, String::new())),
    );
    let visibility = shared.client.options().visibility_timeout.as_millis() as u64;
    let mut pipe = redis::pipe();
    for (run_id, queue, entry, owner) in &held {
        if run_id.is_empty() {
            tracing::info!(queue = %queue, entry = %entry, "handing a request back unstarted");
        } else {
            tracing::info!(run_id, "handing the run back");
        }
        pipe.cmd("XCLAIM")
            .arg(queue)
            .arg(shared.group())
            .arg(&shared.name)
            .arg(0)
            .arg(entry.to_string())
            .arg("IDLE")
            .arg(visibility)
            .arg("JUSTID")
            .ignore();
        if !run_id.is_empty() {
            // Releasing the lease fences off this worker's writer even if it is still
            // flushing; a lease another attempt took meanwhile is left alone.
            pipe.cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(shared.client.keys().lease(run_id))
                .arg(owner)
                .ignore();
        }
    }
    let mut conn = shared.client.conn();
    if let Err(e) = pipe.query_async::<()>(&mut conn).await {
        tracing::warn!(error = %e, "could not hand runs back; they will be re-run after the visibility timeout");
    }
}
