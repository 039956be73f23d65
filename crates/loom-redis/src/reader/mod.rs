//! The consumer side: turns one run's stream into a contract-keeping [`EntryStream`] of
//! chunks, and adds [`Client::tail`] / [`Client::tail_entries`] to the client.
//!
//! Entries come from the process's one multiplexed reader (`hub.rs`); the rules — decode,
//! end on a `seq` that jumps or repeats, on the terminal chunk, or when the producer is gone —
//! are [`ReadState`]'s (`reader/state.rs`). This module is the task between the two: it feeds
//! the state machine batches and ticks, and does the Redis calls it asks for (the lease's
//! `PTTL`, and ending the run). A run ended here gets its `worker_lost`/`timeout` terminal from
//! a script that also sets the cancel key, so a late worker does not re-run it and every other
//! reader sees the same terminal.

mod state;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use loom_core::{CancellationToken, ChunkStream, ErrorCode, ErrorInfo};
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::Client;
use crate::codec::EntryId;
use crate::error::Error;
use crate::hub::Subscription;
use crate::keys::{check_name, CancelReason};
use crate::script;

pub use state::StreamEntry;
pub(crate) use state::Watch;
use state::{Ending, ReadState, Step};

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

impl Client {
    /// Replays and follows the stream `stream_id` (a run id) from just after entry `from`, or
    /// from its start when `from` is `None`; `Some("$")` follows only what is added from now.
    ///
    /// The stream ends after the terminal chunk; with `worker_lost` if the run's worker died
    /// and no other took it over; with `upstream` if Redis stays unreachable past the
    /// outage timeout ([`ClientOptions::outage_timeout`](crate::ClientOptions::outage_timeout)). Dropping it stops reading and does **not** cancel the run.
    /// Fails with [`Error::StreamNotFound`] if no such stream exists, and with
    /// [`Error::EntryIdPastEnd`] if `from` is past its last entry.
    pub async fn tail(&self, stream_id: &str, from: Option<&str>) -> Result<ChunkStream, Error> {
        let entries = self.tail_entries(stream_id, from).await?;
        Ok(entries.into_chunk_stream(CancellationToken::new()))
    }

    /// Like [`tail`](Self::tail), yielding each chunk with its Redis entry id (for SSE `id:`
    /// lines and resuming with `Last-Event-ID`).
    pub async fn tail_entries(
        &self,
        stream_id: &str,
        from: Option<&str>,
    ) -> Result<EntryStream, Error> {
        check_name("stream id", stream_id)?;
        let Some(last) = self.last_entry(stream_id).await? else {
            return Err(Error::StreamNotFound(stream_id.to_owned()));
        };
        let from = match from {
            None => EntryId::ZERO,
            Some("$") => last.id,
            Some(id) => id.parse()?,
        };
        if at_end(&last, from)? {
            return Ok(ended(stream_id));
        }
        let watch = Watch::tail(self.options());
        open(self.clone(), stream_id.to_owned(), from, watch).await
    }

    /// Whether run `run_id` has ended at or before entry `from`: a reader asking for the
    /// entries after it would get none ever. A `from` ahead of a live run's last entry is not:
    /// its reader waits for the run to get there.
    pub(crate) async fn ended_by(&self, run_id: &str, from: EntryId) -> Result<bool, Error> {
        let last = self.last_entry(run_id).await?;
        Ok(last.is_some_and(|last| last.terminal && from >= last.id))
    }

    /// The last entry of run `run_id`'s stream; `None` when it has none.
    async fn last_entry(&self, run_id: &str) -> Result<Option<script::LastEntry>, Error> {
        let keys = self.keys();
        let cancel = keys.cancel(run_id);
        let peek = script::peek(&mut self.conn(), &keys.stream(run_id), &cancel, None).await?;
        Ok(peek.last)
    }
}

/// Whether nothing will ever come after entry `from` of a stream whose last entry is `last`
/// (it is the terminal, or after it); [`Error::EntryIdPastEnd`] when no entry of the stream
/// has that id: a reader would wait for it past the terminal.
fn at_end(last: &script::LastEntry, from: EntryId) -> Result<bool, Error> {
    if from > last.id {
        return Err(Error::EntryIdPastEnd(from.to_string()));
    }
    Ok(from >= last.id && last.terminal)
}

/// Opens a reader on run `run_id`'s stream, after entry `from`.
pub(crate) async fn open(
    client: Client,
    run_id: String,
    from: EntryId,
    watch: Watch,
) -> Result<EntryStream, Error> {
    let key = client.keys().stream(&run_id);
    let lane = client.lane(&run_id);
    let sub = client
        .hub()
        .await
        .subscribe(key.clone(), client.keys().bell(&run_id), lane, from)
        .await?;
    let run_id: Arc<str> = run_id.into();
    let state = ReadState::new(key, from, watch, Instant::now());
    let inner = follow(client, Arc::clone(&run_id), state, sub);
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

/// The reader's task: feeds `state` what the hub and the clock bring, and does what it asks.
fn follow(
    client: Client,
    run_id: Arc<str>,
    mut state: ReadState,
    mut sub: Subscription,
) -> impl Stream<Item = StreamEntry> + Send + 'static {
    async_stream::stream! {
        let mut conn = client.conn();
        let lease = client.keys().lease(&run_id);
        let every = state.check_every();
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                batch = sub.recv() => {
                    let Some(batch) = batch else {
                        yield state.on_closed();
                        return;
                    };
                    let mut delivery = state.on_batch(batch, Instant::now());
                    while let Some(entry) = state.next_entry(&mut delivery) {
                        yield entry;
                    }
                    if delivery.done {
                        return;
                    }
                }
                _ = tick.tick() => {
                    let mut now = Instant::now();
                    let mut step = state.on_tick(now);
                    if step == Step::CheckLease {
                        let pttl = redis::cmd("PTTL").arg(&lease).query_async::<i64>(&mut conn).await;
                        // No lease, and nothing read past a cursor ahead of the run: a run that
                        // ended before the cursor ends this reader now, not after the
                        // visibility timeout it gives a worker that may still come.
                        if let (Ok(..0), Some(from)) = (&pttl, state.waiting_at_cursor()) {
                            if client.ended_by(&run_id, from).await.unwrap_or(false) {
                                return;
                            }
                        }
                        // Judged when Redis answered (or failed to): a lease check that
                        // waited out an outage must not be taken as made before it.
                        now = Instant::now();
                        let pttl = match pttl {
                            Ok(ms) => Ok(ms),
                            // About to give up on Redis: why it does not answer, when it can
                            // be told (a cluster that is down, named as such).
                            Err(e) if state.outage_over(now) => {
                                Err(client.explain(e.into()).await.to_string())
                            }
                            Err(e) => Err(e.to_string()),
                        };
                        step = state.on_lease(now, pttl);
                    }
                    if let Step::EndRun(mut ending) = step {
                        // After what this reader was given; nothing, when it read nothing past
                        // its cursor (a cursor ahead of a live run's end is no `seq` of the run).
                        let least = match state.waiting_at_cursor() {
                            Some(_) => 0,
                            None => state.next_seq(),
                        };
                        let terminal = match end_run(&client, &run_id, &ending, least).await {
                            Ok(Some(id)) => Some(id),
                            // A new attempt took the run since the lease was looked at.
                            Ok(None) => {
                                state.on_held(now);
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!(run_id = %run_id, error = %e, "could not write the terminal chunk");
                                if e.is_out_of_memory() && ending.reason == CancelReason::WorkerLost {
                                    // The log cannot take a verdict: this reader's own names
                                    // the cause of the producer going quiet (a deadline that
                                    // passed stays `timeout`).
                                    ending.error = ErrorInfo {
                                        code: ErrorCode::Upstream,
                                        message: format!("this run's writes were refused: {e}"),
                                        retryable: true,
                                    };
                                }
                                None
                            }
                        };
                        step = state.on_end_run(now, ending, terminal);
                    }
                    match step {
                        Step::Wait => {}
                        Step::Fail(entry) => {
                            yield entry;
                            return;
                        }
                        Step::End => return,
                        // Answered above.
                        Step::CheckLease | Step::EndRun(_) => {}
                    }
                }
            }
        }
    }
}

/// Ends run `run_id` from outside its worker unless the stream already has its terminal
/// chunk: marks it with the ending's reason in its cancel key (so a late worker does not run
/// it), publishes the id, and appends the ending's error as the terminal chunk. Returns the id
/// of the stream's terminal entry (the one written here or the one already there); `None`
/// for a `worker_lost` that a new attempt's lease stopped (see [`script::end_run`]). The
/// terminal's `seq` is at least `next_seq`, the one after what this reader was given.
async fn end_run(
    client: &Client,
    run_id: &str,
    ending: &Ending,
    next_seq: u64,
) -> Result<Option<EntryId>, Error> {
    let keys = client.keys();
    let mut conn = client.conn();
    let error = serde_json::to_string(&ending.error).unwrap_or_else(|_| "null".to_owned());
    let id = script::end_run(
        &mut conn,
        &script::RunKeys::new(keys, run_id),
        client.options().stream_ttl.as_secs(),
        ending.reason,
        &error,
        next_seq,
    )
    .await?;
    if id.is_none() {
        return Ok(None);
    }
    let published: Result<(), _> = redis::cmd("PUBLISH")
        .arg(keys.cancel_channel())
        .arg(run_id)
        .query_async(&mut conn)
        .await;
    if let Err(e) = published {
        // The terminal chunk and the cancel key are written: a worker still holding the
        // run finds the key when its cancel listener resubscribes or the run is claimed.
        tracing::warn!(run_id, error = %e, "could not publish the end of a run");
    }
    Ok(id)
}
