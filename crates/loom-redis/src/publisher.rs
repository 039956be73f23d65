//! [`Publisher`]: writes one run's chunks to its stream, one `XADD` per chunk, in batches.
//!
//! [`Publisher::publish`] reads the run's chunks and writes them **in the task that calls
//! it**: while one batch is on its way to Redis it keeps reading the run, and when the reply
//! comes it sends **whatever arrived meanwhile** as the next batch (up to [`MAX_PIPELINE`]).
//! A slow actor's chunk is alone and leaves at once; a fast actor's chunks pile up during one
//! round trip and leave together in the next, so it is not held to one round trip per chunk.
//! No task or channel stands between the actor and the write: each batch goes out on a
//! connection of the writer's own, taken from the client for that batch and given back when
//! it is answered, so a chunk on its way from an actor's `yield` to Redis wakes no other task
//! (docs/performance-history.md says what that saved). A client keeps at most
//! [`WRITER_CONNECTIONS`](crate::WRITER_CONNECTIONS) of them, however many runs it writes: a
//! batch that finds them all busy goes through the writers' shared (multiplexed) connection,
//! not the client's shared one, where a flood of writes would hold up the worker's heartbeat
//! and the readers. On a cluster a batch's connection goes to the master of the run's slot, as
//! the client knows it (`CLUSTER NODES`, then each `MOVED`; `conn.rs`'s `Masters`); when it
//! fails the run goes on through the writers' cluster connection, which follows failovers and
//! slot moves itself, and the client marks that master down and asks the cluster again.
//!
//! **Bounded memory.** `XADD` does not depend on readers, so a slow or vanished reader never
//! slows the writer; and at most [`PUBLISH_BUFFER`] chunks wait for the next batch, so when
//! Redis itself is slow the actor waits at its `yield` instead of the worker buffering without
//! limit. Streams are not capped with `MAXLEN`: a trimmed stream would leave a reader who
//! fell behind with a gap, and the stream's TTL already bounds what Redis keeps.
//!
//! **Fencing.** Each batch is one call of the write script (`script.rs`), which appends its chunks only while
//! the run's lease key holds this writer's owner token (the worker sets it when the attempt
//! starts, and renews it only while it still holds it) and the stream has no terminal chunk
//! yet. A writer whose run was taken over (another attempt's token in the lease), handed back
//! (no lease), or ended from outside (a reader's `worker_lost`/`timeout` terminal) writes
//! nothing more: it stops, and cancels its run; so does one whose `seq`s another attempt
//! wrote first. A batch retried after its reply was lost is recognised (the stream ends with
//! its last chunk, id and fields) and not written twice.
//!
//! The first batch also sets the stream's TTL, so an abandoned stream expires; the one with
//! the terminal chunk sets it again (DESIGN: default 3,600 s after the end) and deletes the
//! lease.

use std::future::{poll_fn, Future};
use std::mem;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;

use futures::Stream;
use loom_core::{ActorError, CancellationToken, ErrorCode, StreamChunk};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::Error;
use crate::keys::check_name;
use crate::script::{self, RunKeys, Written};

/// Chunks read ahead of the batch in flight: enough to fill one large batch while the
/// previous one is on its way, small enough (a few hundred KiB of tokens) to be the worker's
/// memory bound per run.
pub const PUBLISH_BUFFER: usize = 512;

/// The most `XADD`s in one batch (one call of the write script).
pub const MAX_PIPELINE: usize = PUBLISH_BUFFER;

/// Writes the chunks of one run to `loom:stream:{<bucket>}:<id>` (see the module docs).
pub struct Publisher {
    writer: Writer,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("stream", &self.writer.keys.stream)
            .field("owner", &self.writer.owner)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A writer for run `run_id`, on behalf of the attempt whose token `owner` the run's lease
    /// key (`loom:lease:{<bucket>}:<id>`) holds: chunks are written only while it holds
    /// `owner` and the stream has no terminal chunk (see the module docs). Nothing is sent
    /// before [`publish`](Self::publish).
    pub fn start(client: &Client, run_id: &str, owner: &str) -> Result<Self, Error> {
        Self::start_run(client, run_id, owner, None)
    }

    /// [`start`](Self::start), cancelling `run` when the writer finds it no longer owns it.
    pub(crate) fn start_run(
        client: &Client,
        run_id: &str,
        owner: &str,
        run: Option<CancellationToken>,
    ) -> Result<Self, Error> {
        check_name("run id", run_id)?;
        let options = client.options();
        let writer = Writer {
            client: client.clone(),
            shared: false,
            keys: RunKeys::new(client.keys(), run_id),
            owner: owner.to_owned(),
            run,
            ttl: options.stream_ttl.as_secs(),
            retry_for: options.visibility_timeout,
            discard: Arc::new(AtomicBool::new(false)),
            ended: Arc::new(AtomicBool::new(false)),
            first: true,
        };
        Ok(Self { writer })
    }

    /// Stops writing: whatever is read and not yet sent is dropped, and nothing more is
    /// written (used when another worker took the run over, or it is handed back). Also set
    /// by the writer itself when it finds it was fenced off.
    pub fn discard(&self) {
        self.writer.discard.store(true, Ordering::Release);
    }

    /// A handle that does what [`discard`](Self::discard) does, for another task.
    pub(crate) fn discard_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.writer.discard)
    }

    /// Set once the stream has its terminal chunk, this writer's or one written from outside
    /// (a reader's `worker_lost`/`timeout`): the run is done, whatever else happens to the
    /// writer after.
    pub(crate) fn ended_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.writer.ended)
    }

    /// Writes `chunks` in batches until the terminal chunk is written (what follows it is not
    /// read), `chunks` ends, or the writer stops: discarded, or fenced off (see the module
    /// docs), which is `Ok` too. Fails when Redis failed past the retry window (the
    /// visibility timeout, after which another worker may run the request again).
    pub async fn publish(self, chunks: impl Stream<Item = StreamChunk>) -> Result<(), Error> {
        let mut chunks = pin!(chunks);
        let mut idle = Some(self.writer);
        let mut flight: Option<Flight> = None;
        let mut next = Vec::with_capacity(PUBLISH_BUFFER);
        let mut spare = Vec::with_capacity(PUBLISH_BUFFER);
        // The run ended or its terminal chunk was read: nothing more to read.
        let mut read_all = false;
        poll_fn(|cx| loop {
            while !read_all && next.len() < PUBLISH_BUFFER {
                match chunks.as_mut().poll_next(cx) {
                    Poll::Ready(Some(chunk)) => {
                        read_all = chunk.is_terminal();
                        next.push(chunk);
                    }
                    Poll::Ready(None) => read_all = true,
                    Poll::Pending => break,
                }
            }
            if let Some(in_flight) = &mut flight {
                let (writer, mut batch, sent) = ready!(in_flight.as_mut().poll(cx));
                flight = None;
                if sent? == Sent::Done {
                    return Poll::Ready(Ok(()));
                }
                batch.clear();
                spare = batch;
                idle = Some(writer);
            }
            // No batch in flight: the writer is idle.
            let Some(writer) = idle.take() else {
                return Poll::Ready(Ok(()));
            };
            if writer.discard.load(Ordering::Acquire) || (next.is_empty() && read_all) {
                return Poll::Ready(Ok(()));
            }
            if next.is_empty() {
                idle = Some(writer);
                return Poll::Pending;
            }
            let batch = mem::replace(&mut next, mem::take(&mut spare));
            flight = Some(Box::pin(writer.write(batch)));
        })
        .await
    }
}

/// One batch on its way: gives back the writer and the batch's buffer with the outcome.
type Flight = Pin<Box<dyn Future<Output = (Writer, Vec<StreamChunk>, Result<Sent, Error>)> + Send>>;

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Written; more may follow.
    More,
    /// The terminal chunk was written, or the writer stopped (fenced off, discarded).
    Done,
}

struct Writer {
    client: Client,
    /// On a cluster, whether the writer goes through the cluster connection: its own one
    /// failed (see [`write_once`](Writer::write_once)).
    shared: bool,
    keys: RunKeys,
    /// The attempt token the lease must hold for a batch to be written.
    owner: String,
    /// Cancelled when the writer is fenced off.
    run: Option<CancellationToken>,
    ttl: u64,
    /// How long a failing batch is retried: after the visibility timeout another worker
    /// may run the request again, so writing later would only interleave two attempts.
    retry_for: Duration,
    discard: Arc<AtomicBool>,
    /// Set once the terminal chunk is written.
    ended: Arc<AtomicBool>,
    /// No batch was written yet (the first one sets the stream's TTL).
    first: bool,
}

impl Writer {
    /// Writes `batch` (cut after its terminal chunk, if any).
    async fn write(
        mut self,
        mut batch: Vec<StreamChunk>,
    ) -> (Self, Vec<StreamChunk>, Result<Sent, Error>) {
        let terminal = batch.iter().position(StreamChunk::is_terminal);
        if let Some(at) = terminal {
            batch.truncate(at + 1);
        }
        let ttl = if self.first || terminal.is_some() {
            self.ttl
        } else {
            0
        };
        let why = match self.send(&batch, ttl, terminal.is_some()).await {
            // Discarded while a failing batch was being retried: nothing was written.
            Ok(None) => return (self, batch, Ok(Sent::Done)),
            Ok(Some(Written::Yes)) => None,
            Ok(Some(Written::NotOwner)) => Some("the lease is not ours"),
            Ok(Some(Written::Ended)) => {
                // Ended from outside: the run is done all the same.
                self.ended.store(true, Ordering::Release);
                Some("the stream already has its terminal chunk")
            }
            Err(e) if e.is_out_of_memory() => {
                let ended = self.end_out_of_memory(&batch, &e).await;
                return (self, batch, if ended { Ok(Sent::Done) } else { Err(e) });
            }
            Err(e) => return (self, batch, Err(e)),
        };
        if let Some(why) = why {
            tracing::warn!(stream = %self.keys.stream, owner = %self.owner, why, "writer fenced off; stopping the run");
            self.discard.store(true, Ordering::Release);
            if let Some(run) = &self.run {
                run.cancel();
            }
            return (self, batch, Ok(Sent::Done));
        }
        self.first = false;
        let sent = if terminal.is_some() {
            self.ended.store(true, Ordering::Release);
            Sent::Done
        } else {
            Sent::More
        };
        (self, batch, Ok(sent))
    }

    /// Redis refused `batch` for want of memory for the whole retry window, and a re-run would
    /// be refused too: ends the run with an `error/upstream` chunk naming the cause, in place
    /// of the batch. Redis weighs each command with its arguments, so that one small entry
    /// often fits where a batch of large chunks did not; whether it went in. When it did not,
    /// the worker releases the run and its readers end it with their own verdict.
    async fn end_out_of_memory(&mut self, batch: &[StreamChunk], refused: &Error) -> bool {
        let Some(first) = batch.first() else {
            return false;
        };
        let err = ActorError::new(
            ErrorCode::Upstream,
            format!("this run's chunks were refused: {refused}"),
        );
        let verdict = [StreamChunk::error(first.seq, &err)];
        match self.write_once(&verdict, self.ttl, true).await {
            Ok(Written::Yes) => {
                tracing::error!(stream = %self.keys.stream, error = %refused, "Redis is out of memory; the run ends with an error");
                self.ended.store(true, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// Writes one batch, retrying Redis failures for `retry_for`; `None` when the writer was
    /// discarded meanwhile (the batch is then left unwritten).
    async fn send(
        &mut self,
        batch: &[StreamChunk],
        ttl: u64,
        terminal: bool,
    ) -> Result<Option<Written>, Error> {
        let start = Instant::now();
        let mut backoff = Backoff::default();
        loop {
            match self.write_once(batch, ttl, terminal).await {
                Err(Error::Redis(e)) if start.elapsed() < self.retry_for => {
                    tracing::warn!(stream = %self.keys.stream, error = %e, "XADD failed; retrying");
                    backoff.wait().await;
                    if self.discard.load(Ordering::Acquire) {
                        return Ok(None);
                    }
                }
                written => return written.map(Some),
            }
        }
    }

    /// One try of [`send`](Self::send), on a connection of the writer's own (see
    /// [`write_own`](Self::write_own)) until that fails on a cluster; then, and for a try a
    /// `MOVED` sent elsewhere or that found every writer connection busy, through the
    /// writers' shared connection (on a cluster a cluster connection, which follows slot
    /// moves and failovers itself).
    async fn write_once(
        &mut self,
        batch: &[StreamChunk],
        ttl: u64,
        terminal: bool,
    ) -> Result<Written, Error> {
        if !self.shared {
            match self.write_own(batch, ttl, terminal).await {
                Ok(Some(written)) => return Ok(written),
                Ok(None) => {}
                Err(e) => {
                    if !self.client.is_cluster() {
                        return Err(e);
                    }
                    tracing::debug!(stream = %self.keys.stream, error = %e, "the run's writer goes on through the cluster connection");
                    self.shared = true;
                }
            }
        }
        let mut conn = self.client.writers_conn().await?;
        script::write_batch(&mut conn, &self.keys, &self.owner, ttl, terminal, batch).await
    }

    /// One try on a writer connection taken from the client for this batch and given back
    /// once answered; `None` when none was free, or a cluster's `MOVED` sent the try to
    /// another node (where the next batches go). Only an answered connection goes back: a
    /// try dropped halfway (the run stopped) or failed closes its connection, so none is ever
    /// reused with a reply still to come.
    async fn write_own(
        &mut self,
        batch: &[StreamChunk],
        ttl: u64,
        terminal: bool,
    ) -> Result<Option<Written>, Error> {
        let stream = &self.keys.stream;
        let Some(mut own) = self.client.writer_wire(stream).await? else {
            return Ok(None);
        };
        let written =
            script::write_batch(&mut own.wire, &self.keys, &self.owner, ttl, terminal, batch).await;
        self.client.settle_writer(stream, own, written)
    }
}
