//! [`ReadState`]: the contract and liveness rules of one stream's reader, as a synchronous
//! state machine with no I/O, so each rule is tested without Redis.
//!
//! The reader's task (`reader/mod.rs`) feeds it what happens — a batch of entries from the
//! hub, a tick of the check interval, the lease's remaining time, the outcome of ending the
//! run — and does what each call returns: yield these entries, look at the lease, end the run
//! with a terminal chunk in Redis, yield a last error, or stop.
//!
//! **Contract.** Entries are decoded into the exact [`StreamChunk`]s; the stream ends after the
//! terminal chunk. An entry that cannot be decoded, or a `seq` that jumps or repeats, ends it
//! with `error/internal` naming the entry id. Loom writes each `seq` once, at its own entry id
//! (a retried write cannot land twice), so a repeat is another client's rewrite: dropping it
//! as a "duplicate" could hide text that differs from what was delivered.
//!
//! **Liveness.** While nothing arrives, the lease is checked every `lease_refresh`. Once the
//! producer has been gone (no lease, no chunk) for longer than the visibility timeout, or the
//! deadline passed, the run is ended with `worker_lost` or `timeout`. If Redis stays
//! unreachable for the outage timeout, the stream ends with `error/upstream` — never a hang;
//! when it answers again sooner, the producer counts as alive for one more lease from then
//! (nobody could renew one meanwhile), so a request re-run after the outage is read on.

use std::time::Duration;

use loom_core::{ActorError, ChunkType, ErrorCode, ErrorInfo, StreamChunk};
use tokio::time::Instant;

use crate::client::ClientOptions;
use crate::codec::{decode_chunk, EntryId, RawEntry};
use crate::keys::CancelReason;

/// One chunk as read from Redis, with the id of its entry.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    /// The Redis entry id; `None` for a chunk the reader made itself (its verdict on a gap, an
    /// undecodable entry or a lost worker, an `error/upstream` when Redis stayed unreachable).
    pub id: Option<EntryId>,
    /// The chunk.
    pub chunk: StreamChunk,
}

/// How a reader decides that the producer of its stream is gone.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    lease_ttl: Duration,
    visibility: Duration,
    check_every: Duration,
    /// How long Redis may stay unreachable.
    outage: Duration,
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
            outage: options.outage_timeout,
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

/// A batch of entries being delivered: [`ReadState::next_entry`] decodes them one at a time,
/// as the consumer takes them, so each chunk is made just before it is read and freed before
/// the next is made (made all at once, a batch's hundreds of small allocations overflowed the
/// allocator's per-thread cache, and cost about a tenth more CPU per chunk).
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The entries not decoded yet, in order.
    batch: std::vec::IntoIter<RawEntry>,
    /// Whether the stream ends with what was delivered.
    pub(crate) done: bool,
}

/// Why, and with what error, a reader ends a run whose producer is gone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ending {
    /// The cancel key's value, so a late worker does not run it.
    pub(crate) reason: CancelReason,
    /// The terminal chunk's error.
    pub(crate) error: ErrorInfo,
}

/// What the reader does next, after a tick or an answer from Redis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Nothing, until the next batch or tick.
    Wait,
    /// Read the lease's remaining time (`PTTL`) and pass it to [`ReadState::on_lease`].
    CheckLease,
    /// Write this ending into the stream and pass the outcome to [`ReadState::on_end_run`].
    EndRun(Ending),
    /// Yield this entry, and end the stream.
    Fail(StreamEntry),
    /// End the stream with nothing more: the run ended at or before the entry the reader was
    /// asked to read after, so nothing of it comes after that cursor.
    End,
}

/// The reader's view of one stream (see the module docs).
#[derive(Debug)]
pub(crate) struct ReadState {
    /// The stream's key, for error messages.
    key: String,
    watch: Watch,
    last_seq: Option<u64>,
    last_id: EntryId,
    /// The entry the reader was asked to read after.
    from: EntryId,
    /// Until when the producer counts as alive without a new sign of it.
    alive_until: Instant,
    /// When Redis last answered.
    redis_ok_at: Instant,
    /// Whether Redis failed the last lease check.
    unreachable: bool,
    /// When the reader wrote (or found) the terminal entry that has not come through yet.
    ended_at: Option<Instant>,
    /// When the last batch arrived that the checks have not yet taken into account.
    heard_at: Option<Instant>,
}

impl ReadState {
    /// A reader of stream `key` after entry `from`, starting at `now`.
    pub(crate) fn new(key: String, from: EntryId, watch: Watch, now: Instant) -> Self {
        Self {
            key,
            alive_until: now + watch.initial_grace,
            watch,
            // A cursor at a Loom entry (`<seq>-1`) says which `seq` comes next: a resumed
            // reader notices a gap right after its cursor as one that stayed would.
            last_seq: (from.seq == 1).then_some(from.ms),
            last_id: from,
            from,
            redis_ok_at: now,
            unreachable: false,
            ended_at: None,
            heard_at: None,
        }
    }

    /// How often [`on_tick`](Self::on_tick) is to be called.
    pub(crate) fn check_every(&self) -> Duration {
        self.watch.check_every
    }

    /// The `seq` this reader expects next.
    pub(crate) fn next_seq(&self) -> u64 {
        self.last_seq.map_or(0, |s| s.saturating_add(1))
    }

    /// The reader's own verdict, `error` chunk `seq`: it is in no entry of the stream (so it
    /// has no id, and a consumer resuming by id never takes it for one, or skips an entry for
    /// it).
    fn error_entry(&self, seq: u64, err: &ActorError) -> StreamEntry {
        StreamEntry {
            id: None,
            chunk: StreamChunk::error(seq, err),
        }
    }

    /// Entries arrived from the hub at `now`.
    pub(crate) fn on_batch(&mut self, batch: Vec<RawEntry>, now: Instant) -> Delivery {
        self.heard_at = Some(now);
        Delivery {
            batch: batch.into_iter(),
            done: false,
        }
    }

    /// The next entry of `delivery` to yield: its chunk decoded and checked (an entry that
    /// cannot be decoded, or whose `seq` is not the next, is an `error/internal` that ends the
    /// stream, as the terminal chunk does); `None` when the batch is spent or the stream ended.
    pub(crate) fn next_entry(&mut self, delivery: &mut Delivery) -> Option<StreamEntry> {
        if delivery.done {
            return None;
        }
        let entry = delivery.batch.next()?;
        self.last_id = entry.id;
        let chunk = match decode_chunk(&entry.fields) {
            Ok(chunk) => chunk,
            Err(why) => {
                let err = ActorError::internal(format!(
                    "undecodable entry {} in stream {}: {why}",
                    entry.id, self.key
                ));
                delivery.done = true;
                return Some(self.error_entry(self.next_seq(), &err));
            }
        };
        if let Some(prev) = self.last_seq {
            if Some(chunk.seq) != prev.checked_add(1) {
                let how = if chunk.seq <= prev {
                    "repeats"
                } else {
                    "jumps"
                };
                let err = ActorError::internal(format!(
                    "entry {} in stream {}: seq {how} from {prev} to {}",
                    entry.id, self.key, chunk.seq
                ));
                delivery.done = true;
                return Some(self.error_entry(self.next_seq(), &err));
            }
        }
        self.last_seq = Some(chunk.seq);
        delivery.done = chunk.is_terminal();
        Some(StreamEntry {
            id: Some(entry.id),
            chunk,
        })
    }

    /// The hub stopped: the last entry to yield.
    pub(crate) fn on_closed(&self) -> StreamEntry {
        let err = ActorError::internal("the stream reader stopped");
        self.error_entry(self.next_seq(), &err)
    }

    /// The check interval ticked at `now`.
    pub(crate) fn on_tick(&mut self, now: Instant) -> Step {
        match self.heard_at.take() {
            Some(at) => {
                self.redis_ok_at = now;
                // A chunk proves a worker holds the run: from here on only its lease counts,
                // not the grace a queued request gets for its pickup. The lease counts from
                // when the chunk arrived, not from this check.
                self.alive_until = at + self.watch.lease_ttl;
                // Entries still arriving: the terminal is on its way.
                if let Some(ended) = &mut self.ended_at {
                    *ended = (*ended).max(at);
                }
                if now >= self.alive_until + self.watch.visibility {
                    // The chunk is old news (this tick came late: the consumer did not poll
                    // for a while). Only the lease can tell whether the worker is still there.
                    return Step::CheckLease;
                }
                self.decide(now)
            }
            None => Step::CheckLease,
        }
    }

    /// The lease's `PTTL` in ms (negative: no lease), or why Redis did not answer.
    pub(crate) fn on_lease(&mut self, now: Instant, pttl: Result<i64, String>) -> Step {
        match pttl {
            Ok(ms) => {
                self.redis_ok_at = now;
                if std::mem::take(&mut self.unreachable) {
                    // Back after an outage, in which no worker could renew its lease or
                    // write: its end (or a re-run's start) is judged from now on.
                    self.alive_until = self.alive_until.max(now + self.watch.lease_ttl);
                }
                if ms > 0 {
                    let until = now + Duration::from_millis(ms.unsigned_abs());
                    self.alive_until = self.alive_until.max(until);
                }
                self.decide(now)
            }
            Err(why) => {
                self.unreachable = true;
                if self.outage_over(now) {
                    let err = ActorError::new(
                        ErrorCode::Upstream,
                        format!(
                            "lost the connection to Redis while reading stream {}: {why}",
                            self.key
                        ),
                    );
                    return Step::Fail(self.error_entry(self.next_seq(), &err));
                }
                Step::Wait
            }
        }
    }

    /// Whether the run must be ended now that Redis answered.
    fn decide(&mut self, now: Instant) -> Step {
        if let Some(at) = self.ended_at {
            // The terminal was written (or found) but has not come through.
            if now.duration_since(at) >= self.watch.visibility {
                let err = ActorError::internal(format!(
                    "the terminal entry of stream {} did not arrive",
                    self.key
                ));
                return Step::Fail(self.error_entry(self.next_seq(), &err));
            }
            return Step::Wait;
        }
        if self.watch.deadline.is_some_and(|d| now >= d) {
            Step::EndRun(Ending {
                reason: CancelReason::Timeout,
                error: ErrorInfo {
                    code: ErrorCode::Timeout,
                    message: "the run passed its deadline".to_owned(),
                    retryable: true,
                },
            })
        } else if now >= self.alive_until + self.watch.visibility {
            // Nothing in the stream at all: no worker ever started the run (none served its
            // type on these queues, or none had room), which "lost" would misname.
            let message = if self.from == EntryId::ZERO && self.last_seq.is_none() {
                "no worker took the run up: every worker serving its type was busy (each of its \
                 slots holding a run), none serves it on the same queue shards, or Redis lost \
                 the request"
            } else {
                "the run's worker was lost and no other worker took it over"
            };
            Step::EndRun(Ending {
                reason: CancelReason::WorkerLost,
                error: ErrorInfo {
                    code: ErrorCode::WorkerLost,
                    message: message.to_owned(),
                    retryable: true,
                },
            })
        } else {
            Step::Wait
        }
    }

    /// Whether Redis has not answered for the whole outage timeout: the next failed lease
    /// check ends the run.
    pub(crate) fn outage_over(&self, now: Instant) -> bool {
        now.duration_since(self.redis_ok_at) >= self.watch.outage
    }

    /// The cursor the reader was asked to read after, while nothing past it was read.
    pub(crate) fn waiting_at_cursor(&self) -> Option<EntryId> {
        (self.last_id == self.from && self.from != EntryId::ZERO).then_some(self.from)
    }

    /// The run turned out to be held again when the reader went to end it `worker_lost`: a
    /// new attempt took its lease since the reader looked. Its lease counts from now.
    pub(crate) fn on_held(&mut self, now: Instant) {
        self.redis_ok_at = now;
        self.alive_until = self.alive_until.max(now + self.watch.lease_ttl);
    }

    /// The outcome of writing `ending` at `now`: the id of the stream's terminal entry, or
    /// `None` when Redis failed (the reader then yields the ending itself).
    pub(crate) fn on_end_run(
        &mut self,
        now: Instant,
        ending: Ending,
        terminal: Option<EntryId>,
    ) -> Step {
        match terminal {
            // Nothing was read past the cursor, and the run ended before it or at it: a cursor
            // ahead of a live run's end waits for the run to reach it, and it never did.
            Some(id) if id <= self.last_id && self.last_id == self.from => Step::End,
            // The stream's terminal is at or before what this reader already read, which
            // yielded no terminal: the stream Redis has now lost entries this reader saw (a
            // failover, a flush). Never a silent end.
            // Lost by the infrastructure, not a bug of Loom's: `upstream`.
            Some(id) if id <= self.last_id => {
                let err = ActorError::new(
                    ErrorCode::Upstream,
                    format!(
                        "stream {} ends at entry {id}, before entry {} this reader already \
                         read: Redis lost entries (a restart without persistence, a flush, a \
                         failover)",
                        self.key, self.last_id
                    ),
                );
                Step::Fail(self.error_entry(self.next_seq(), &err))
            }
            Some(_) => {
                self.ended_at = Some(now);
                Step::Wait
            }
            None => Step::Fail(StreamEntry {
                id: None,
                chunk: StreamChunk {
                    error: Some(Box::new(ending.error)),
                    ..StreamChunk::new(ChunkType::Error, self.next_seq())
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests;
