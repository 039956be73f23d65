//! The consumer side: one multiplexed reader per process, and the per-stream logic that turns
//! its entries into a contract-keeping stream of chunks.
//!
//! **One reader, many streams.** [`Hub`] is a single task with its own connection that issues
//! one blocking `XREAD … STREAMS k1 k2 … id1 id2 …` over every stream the process reads, and
//! hands each stream's entries to that stream's bounded channel. 10,000 streams cost one
//! connection for reading (plus the client's command connection for liveness checks), not
//! 10,000. When a stream is added while the `XREAD` blocks, the hub wakes it with
//! `CLIENT UNBLOCK` so the new stream joins at once. A stream whose consumer is slow (its
//! channel full) is left out of the next `XREAD` until the consumer catches up, so it never
//! holds up the others and the hub never buffers more than [`SUB_BUFFER`] batches for it.
//!
//! **Per stream** ([`open`]): entries are decoded into the exact [`StreamChunk`]s; the stream
//! ends after the terminal chunk. An entry that cannot be decoded, or a `seq` that jumps, ends
//! it with `error/internal` naming the entry id (a duplicate `seq` from a retried write is
//! dropped). Liveness: while nothing arrives, the reader checks the run's lease every
//! `lease_refresh`; once the producer has been gone (no lease, no chunk) for longer than
//! the visibility timeout, it ends the run with `error/worker_lost`, written into the stream
//! by a script that also marks the run cancelled, so a late worker does not re-run it and
//! every other reader sees the same terminal. If Redis itself stays unreachable that long, the
//! stream ends with `error/upstream` — never a hang.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use loom_core::{
    ActorError, CancellationToken, ChunkStream, ChunkType, ErrorCode, ErrorInfo, StreamChunk,
};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::Value;
use tokio::sync::{mpsc, Notify};
use tokio::time::{Instant, MissedTickBehavior};

use crate::backoff::Backoff;
use crate::client::{Client, ClientOptions};
use crate::codec::{decode_chunk, parse_read_reply, EntryId, RawEntry};
use crate::error::Error;

/// Entries one `XREAD` fetches per stream at most: large enough that a fast stream moves in
/// few round trips, small enough that one reply stays well under a megabyte per stream.
const READ_COUNT: usize = 1024;

/// Batches (of up to [`READ_COUNT`] entries) buffered per stream between the hub and its
/// consumer. Two let the hub read the next batch while the consumer works on one; more would
/// only buffer what a slow consumer cannot take.
const SUB_BUFFER: usize = 2;

/// Streams waiting to join the hub: joining is cheap, the bound only keeps a burst of
/// thousands of new streams from queueing without limit.
const JOIN_BUFFER: usize = 1024;

/// How often a pending `CLIENT UNBLOCK` is repeated until the blocked `XREAD` returns (the
/// first one can arrive before the `XREAD` blocks).
const UNBLOCK_RETRY: Duration = Duration::from_millis(20);

/// One chunk as read from Redis, with the id of its entry.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    /// The Redis entry id; `None` for a chunk the reader made itself (an `error/upstream` when
    /// Redis stayed unreachable).
    pub id: Option<EntryId>,
    /// The chunk.
    pub chunk: StreamChunk,
}

/// The entries of one run's stream, in order, ending after the terminal chunk.
///
/// Dropping it only stops reading. [`into_chunk_stream`](Self::into_chunk_stream) gives the
/// [`ChunkStream`] the rest of Loom consumes.
pub struct EntryStream {
    run_id: Arc<str>,
    inner: BoxStream<'static, StreamEntry>,
}

impl EntryStream {
    /// The run (stream) id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The chunks alone, as a [`ChunkStream`] whose cancel token is `cancel`.
    pub fn into_chunk_stream(self, cancel: CancellationToken) -> ChunkStream {
        let run_id = Arc::clone(&self.run_id);
        ChunkStream::new(run_id, Box::pin(self.map(|entry| entry.chunk)), cancel)
    }
}

impl Stream for EntryStream {
    type Item = StreamEntry;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamEntry>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for EntryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryStream")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// How a reader decides that the producer of its stream is gone.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    lease_ttl: Duration,
    visibility: Duration,
    check_every: Duration,
    /// How long the producer counts as alive before any sign of it.
    initial_grace: Duration,
    /// When the run must have ended (its deadline plus grace), if known.
    deadline: Option<Instant>,
}

impl Watch {
    /// For following an existing stream.
    pub(crate) fn tail(options: &ClientOptions) -> Self {
        Self {
            lease_ttl: options.lease_ttl,
            visibility: options.visibility_timeout,
            check_every: options.lease_refresh,
            initial_grace: options.lease_ttl,
            deadline: None,
        }
    }

    /// For a run just requested, which may wait up to `pickup_timeout` for a worker and must
    /// end by `deadline`.
    pub(crate) fn run(options: &ClientOptions, deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline + options.deadline_grace),
            ..Self::attach(options)
        }
    }

    /// For joining a run that may still be queued, whose deadline this reader does not know:
    /// the worker enforces it.
    pub(crate) fn attach(options: &ClientOptions) -> Self {
        Self {
            initial_grace: options
                .pickup_timeout
                .saturating_sub(options.visibility_timeout),
            ..Self::tail(options)
        }
    }
}

/// Opens a reader on run `run_id`'s stream, after entry `from`.
pub(crate) async fn open(
    client: Client,
    run_id: String,
    from: EntryId,
    watch: Watch,
) -> Result<EntryStream, Error> {
    let key = client.keys().stream(&run_id);
    let sub = client.hub().await.subscribe(key.clone(), from).await?;
    let run_id: Arc<str> = run_id.into();
    let inner = follow(client, Arc::clone(&run_id), key, from, watch, sub);
    Ok(EntryStream {
        run_id,
        inner: Box::pin(inner),
    })
}

/// A stream with nothing more to read.
pub(crate) fn ended(run_id: &str) -> EntryStream {
    EntryStream {
        run_id: run_id.into(),
        inner: Box::pin(futures::stream::empty()),
    }
}

fn follow(
    client: Client,
    run_id: Arc<str>,
    key: String,
    from: EntryId,
    watch: Watch,
    mut sub: Subscription,
) -> impl Stream<Item = StreamEntry> + Send + 'static {
    async_stream::stream! {
        let mut conn = client.conn();
        let lease = client.keys().lease(&run_id);
        let mut last_seq: Option<u64> = None;
        let mut last_id = from;
        let start = Instant::now();
        let mut alive_until = start + watch.initial_grace;
        let mut redis_ok_at = start;
        let mut ended_at: Option<Instant> = None;
        // When the last batch arrived that the checks have not yet taken into account.
        let mut heard_at: Option<Instant> = None;
        let mut tick = tokio::time::interval_at(start + watch.check_every, watch.check_every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let next_seq = |last: Option<u64>| last.map_or(0, |s| s + 1);
        loop {
            tokio::select! {
                biased;
                batch = sub.recv() => {
                    let Some(batch) = batch else {
                        let err = ActorError::internal("the stream reader stopped");
                        yield StreamEntry { id: None, chunk: StreamChunk::error(next_seq(last_seq), &err) };
                        return;
                    };
                    heard_at = Some(Instant::now());
                    for entry in batch {
                        last_id = entry.id;
                        let chunk = match decode_chunk(&entry.fields) {
                            Ok(chunk) => chunk,
                            Err(why) => {
                                let err = ActorError::internal(format!(
                                    "undecodable entry {} in stream {key}: {why}", entry.id
                                ));
                                yield StreamEntry { id: Some(entry.id), chunk: StreamChunk::error(next_seq(last_seq), &err) };
                                return;
                            }
                        };
                        if let Some(prev) = last_seq {
                            if chunk.seq <= prev {
                                // A retried write landed twice: the first copy was delivered.
                                continue;
                            }
                            if chunk.seq != prev + 1 {
                                let err = ActorError::internal(format!(
                                    "entry {} in stream {key}: seq jumps from {prev} to {}", entry.id, chunk.seq
                                ));
                                yield StreamEntry { id: Some(entry.id), chunk: StreamChunk::error(prev + 1, &err) };
                                return;
                            }
                        }
                        last_seq = Some(chunk.seq);
                        let terminal = chunk.is_terminal();
                        yield StreamEntry { id: Some(entry.id), chunk };
                        if terminal {
                            return;
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if let Some(at) = heard_at.take() {
                        redis_ok_at = now;
                        // A chunk proves a worker holds the run: from here on only its lease
                        // counts, not the grace a queued request gets for its pickup. The lease
                        // counts from when the chunk arrived, not from this check.
                        alive_until = at + watch.lease_ttl;
                    } else {
                        let pttl: Result<i64, _> = redis::cmd("PTTL").arg(&lease).query_async(&mut conn).await;
                        match pttl {
                            Ok(ms) => {
                                redis_ok_at = now;
                                if ms > 0 {
                                    alive_until = alive_until.max(now + Duration::from_millis(ms as u64));
                                }
                            }
                            Err(e) => {
                                if now.duration_since(redis_ok_at) >= watch.lease_ttl + watch.visibility {
                                    let err = ActorError::new(ErrorCode::Upstream, format!(
                                        "lost the connection to Redis while reading stream {key}: {e}"
                                    ));
                                    yield StreamEntry { id: None, chunk: StreamChunk::error(next_seq(last_seq), &err) };
                                    return;
                                }
                                continue;
                            }
                        }
                    }
                    if let Some(at) = ended_at {
                        // The terminal was written (or found) but has not come through.
                        if now.duration_since(at) >= watch.visibility {
                            let err = ActorError::internal(format!("the terminal entry of stream {key} did not arrive"));
                            yield StreamEntry { id: None, chunk: StreamChunk::error(next_seq(last_seq), &err) };
                            return;
                        }
                        continue;
                    }
                    let ending = if watch.deadline.is_some_and(|d| now >= d) {
                        Some(("timeout", ErrorInfo {
                            code: ErrorCode::Timeout,
                            message: "the run passed its deadline".to_owned(),
                            retryable: true,
                        }))
                    } else if now >= alive_until + watch.visibility {
                        Some(("worker_lost", ErrorInfo {
                            code: ErrorCode::WorkerLost,
                            message: "the run's worker was lost and no other worker took it over".to_owned(),
                            retryable: true,
                        }))
                    } else {
                        None
                    };
                    let Some((reason, info)) = ending else { continue };
                    match client.end_run(&run_id, reason, &info).await {
                        Ok(terminal) if terminal <= last_id => return,
                        Ok(_) => ended_at = Some(now),
                        Err(e) => {
                            tracing::warn!(run_id = %run_id, error = %e, "could not write the terminal chunk");
                            let chunk = StreamChunk {
                                error: Some(Box::new(info)),
                                ..StreamChunk::new(ChunkType::Error, next_seq(last_seq))
                            };
                            yield StreamEntry { id: None, chunk };
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// The process's one stream reader (see the module docs).
#[derive(Debug)]
pub(crate) struct Hub {
    join: mpsc::Sender<Join>,
    wake: Arc<Notify>,
}

/// A stream joining the hub.
struct Join {
    key: String,
    from: EntryId,
    tx: mpsc::Sender<Vec<RawEntry>>,
    paused: Arc<AtomicBool>,
}

/// What a reader holds: its stream's entries as the hub delivers them.
pub(crate) struct Subscription {
    rx: mpsc::Receiver<Vec<RawEntry>>,
    paused: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

impl Subscription {
    async fn recv(&mut self) -> Option<Vec<RawEntry>> {
        let batch = self.rx.recv().await;
        if self.paused.swap(false, Ordering::AcqRel) {
            // The hub left this stream out while its channel was full: ask it back in.
            self.wake.notify_one();
        }
        batch
    }
}

/// A stream the hub reads, and how far.
struct Sub {
    key: String,
    last: EntryId,
    tx: mpsc::Sender<Vec<RawEntry>>,
    paused: Arc<AtomicBool>,
    /// Whether the `XREAD` in flight covers this stream from `last`.
    in_round: bool,
}

impl Hub {
    /// Starts the hub task. It holds the connections, not the [`Client`], so it stops once
    /// every client clone and every reader is gone.
    pub(crate) fn start(client: Client) -> Self {
        let (join, join_rx) = mpsc::channel(JOIN_BUFFER);
        let wake = Arc::new(Notify::new());
        let task = HubTask {
            redis: client.redis().clone(),
            commands: client.conn(),
            block: client.options().read_block,
            join: join_rx,
            wake: Arc::clone(&wake),
            subs: Vec::new(),
        };
        tokio::spawn(task.run());
        Self { join, wake }
    }

    /// Starts reading stream `key` after entry `from`.
    pub(crate) async fn subscribe(
        &self,
        key: String,
        from: EntryId,
    ) -> Result<Subscription, Error> {
        let (tx, rx) = mpsc::channel(SUB_BUFFER);
        let paused = Arc::new(AtomicBool::new(false));
        let join = Join {
            key,
            from,
            tx,
            paused: Arc::clone(&paused),
        };
        self.join.send(join).await.map_err(|_| {
            Error::Redis(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the stream reader stopped",
            )))
        })?;
        Ok(Subscription {
            rx,
            paused,
            wake: Arc::clone(&self.wake),
        })
    }
}

fn deliver(sub: &mut Sub, entries: Vec<RawEntry>) {
    if let Some(last) = entries.last() {
        sub.last = last.id;
        // Cannot be full: only the hub sends, and it checked for room.
        let _ = sub.tx.try_send(entries);
    }
}

struct HubTask {
    redis: redis::Client,
    commands: ConnectionManager,
    block: Duration,
    join: mpsc::Receiver<Join>,
    wake: Arc<Notify>,
    subs: Vec<Sub>,
}

impl HubTask {
    fn add(&mut self, join: Join) {
        self.subs.push(Sub {
            key: join.key,
            last: join.from,
            tx: join.tx,
            paused: join.paused,
            in_round: false,
        });
    }

    /// Marks the streams the next `XREAD` covers and returns `(key, from)` for each key.
    fn plan_round(&mut self) -> Vec<(String, EntryId)> {
        self.subs.retain(|s| !s.tx.is_closed());
        let mut from: HashMap<&str, EntryId> = HashMap::new();
        for sub in &mut self.subs {
            sub.in_round = sub.tx.capacity() > 0;
            if sub.in_round {
                let at = from.entry(&sub.key).or_insert(sub.last);
                *at = (*at).min(sub.last);
            } else {
                sub.paused.store(true, Ordering::Release);
            }
        }
        from.into_iter().map(|(k, id)| (k.to_owned(), id)).collect()
    }

    fn dispatch(&mut self, reply: Vec<(String, Vec<RawEntry>)>) {
        // The readers of each key in the reply, found in one pass over the readers.
        let mut readers: Vec<Vec<usize>> = vec![Vec::new(); reply.len()];
        {
            let position: HashMap<&str, usize> = reply
                .iter()
                .enumerate()
                .map(|(i, (key, _))| (key.as_str(), i))
                .collect();
            for (i, sub) in self.subs.iter().enumerate() {
                if !sub.in_round {
                    continue;
                }
                if let Some(&at) = position.get(sub.key.as_str()) {
                    readers[at].push(i);
                }
            }
        }
        for ((_, mut entries), mut readers) in reply.into_iter().zip(readers) {
            // The last reader takes the entries, the others (rare) get copies.
            let Some(owner) = readers.pop() else { continue };
            for i in readers {
                let sub = &mut self.subs[i];
                let fresh: Vec<RawEntry> = entries
                    .iter()
                    .filter(|e| e.id > sub.last)
                    .cloned()
                    .collect();
                deliver(sub, fresh);
            }
            let owner = &mut self.subs[owner];
            entries.retain(|e| e.id > owner.last);
            deliver(owner, entries);
        }
    }

    async fn connect(&self) -> Result<(MultiplexedConnection, i64), redis::RedisError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(self.block + Duration::from_secs(3)));
        let mut conn = self
            .redis
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await?;
        Ok((conn, id))
    }

    async fn run(mut self) {
        let mut conn: Option<(MultiplexedConnection, i64)> = None;
        let mut backoff = Backoff::default();
        let mut joining_closed = false;
        loop {
            while let Ok(join) = self.join.try_recv() {
                self.add(join);
            }
            let round = self.plan_round();
            if round.is_empty() {
                if joining_closed && self.subs.is_empty() {
                    return;
                }
                tokio::select! {
                    join = self.join.recv(), if !joining_closed => match join {
                        Some(join) => self.add(join),
                        None => joining_closed = true,
                    },
                    _ = self.wake.notified() => {}
                    // Pick up readers that went away while every stream was paused.
                    _ = tokio::time::sleep(self.block) => {}
                }
                continue;
            }
            let (read_conn, client_id) = match conn.take() {
                Some(c) => c,
                None => match self.connect().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "stream reader cannot reach Redis; retrying");
                        backoff.wait().await;
                        continue;
                    }
                },
            };
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(self.block.as_millis() as u64)
                .arg("STREAMS");
            for (key, _) in &round {
                cmd.arg(key);
            }
            for (_, from) in &round {
                cmd.arg(from.to_string());
            }
            let mut c = read_conn.clone();
            let mut read = Box::pin(async move { cmd.query_async::<Value>(&mut c).await });
            let mut unblock_at: Option<Instant> = None;
            let reply = loop {
                let unblock_sleep = async {
                    match unblock_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    reply = &mut read => break reply,
                    join = self.join.recv(), if !joining_closed => {
                        match join {
                            Some(join) => self.add(join),
                            None => joining_closed = true,
                        }
                        unblock_at.get_or_insert_with(Instant::now);
                    }
                    _ = self.wake.notified() => {
                        unblock_at.get_or_insert_with(Instant::now);
                    }
                    _ = unblock_sleep => {
                        let done: Result<i64, _> = redis::cmd("CLIENT")
                            .arg("UNBLOCK")
                            .arg(client_id)
                            .query_async(&mut self.commands)
                            .await;
                        unblock_at = match done {
                            Ok(1) => None,
                            _ => Some(Instant::now() + UNBLOCK_RETRY),
                        };
                    }
                }
            };
            match reply.map(parse_read_reply) {
                Ok(Ok(entries)) => {
                    backoff.reset();
                    self.dispatch(entries);
                    conn = Some((read_conn, client_id));
                }
                Ok(Err(why)) => {
                    tracing::error!(%why, "unreadable XREAD reply; reconnecting");
                    backoff.wait().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stream reader lost Redis; reconnecting");
                    backoff.wait().await;
                }
            }
        }
    }
}
