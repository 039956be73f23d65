//! [`ReadState`]: the contract and liveness rules of one stream's reader, as a synchronous
//! state machine with no I/O, so each rule is tested without Redis.
//!
//! The reader's task (`reader/mod.rs`) feeds it what happens — a batch of entries from the
//! hub, a tick of the check interval, the lease's remaining time, the outcome of ending the
//! run — and does what each call returns: yield these entries, look at the lease, end the run
//! with a terminal chunk in Redis, yield a last error, or stop.
//!
//! **Contract.** Entries are decoded into the exact [`StreamChunk`]s; the stream ends after the
//! terminal chunk. An entry that cannot be decoded, or a `seq` that jumps, ends it with
//! `error/internal` naming the entry id; a duplicate `seq` (a retried write that landed twice)
//! is dropped.
//!
//! **Liveness.** While nothing arrives, the lease is checked every `lease_refresh`. Once the
//! producer has been gone (no lease, no chunk) for longer than the visibility timeout, or the
//! deadline passed, the run is ended with `worker_lost` or `timeout`. If Redis stays
//! unreachable for the lease plus the visibility timeout, the stream ends with
//! `error/upstream` — never a hang.

use std::time::Duration;

use loom_core::{ActorError, ChunkType, ErrorCode, ErrorInfo, StreamChunk};
use tokio::time::Instant;

use crate::client::ClientOptions;
use crate::codec::{decode_chunk, EntryId, RawEntry};
use crate::keys::CancelReason;

/// One chunk as read from Redis, with the id of its entry.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    /// The Redis entry id; `None` for a chunk the reader made itself (an `error/upstream` when
    /// Redis stayed unreachable).
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

/// What to do with a batch of entries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Delivery {
    /// The entries to yield, in order.
    pub(crate) entries: Vec<StreamEntry>,
    /// Whether the stream ends after them.
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
    /// End the stream: its terminal chunk was already yielded.
    Done,
}

/// The reader's view of one stream (see the module docs).
#[derive(Debug)]
pub(crate) struct ReadState {
    /// The stream's key, for error messages.
    key: String,
    watch: Watch,
    last_seq: Option<u64>,
    last_id: EntryId,
    /// Until when the producer counts as alive without a new sign of it.
    alive_until: Instant,
    /// When Redis last answered.
    redis_ok_at: Instant,
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
            last_seq: None,
            last_id: from,
            redis_ok_at: now,
            ended_at: None,
            heard_at: None,
        }
    }

    /// How often [`on_tick`](Self::on_tick) is to be called.
    pub(crate) fn check_every(&self) -> Duration {
        self.watch.check_every
    }

    fn next_seq(&self) -> u64 {
        self.last_seq.map_or(0, |s| s + 1)
    }

    fn error_entry(&self, id: Option<EntryId>, seq: u64, err: &ActorError) -> StreamEntry {
        StreamEntry {
            id,
            chunk: StreamChunk::error(seq, err),
        }
    }

    /// Entries arrived from the hub at `now`.
    pub(crate) fn on_batch(&mut self, batch: Vec<RawEntry>, now: Instant) -> Delivery {
        self.heard_at = Some(now);
        let mut entries = Vec::with_capacity(batch.len());
        for entry in batch {
            self.last_id = entry.id;
            let chunk = match decode_chunk(&entry.fields) {
                Ok(chunk) => chunk,
                Err(why) => {
                    let err = ActorError::internal(format!(
                        "undecodable entry {} in stream {}: {why}",
                        entry.id, self.key
                    ));
                    entries.push(self.error_entry(Some(entry.id), self.next_seq(), &err));
                    return Delivery {
                        entries,
                        done: true,
                    };
                }
            };
            if let Some(prev) = self.last_seq {
                if chunk.seq <= prev {
                    // A retried write landed twice: the first copy was delivered.
                    continue;
                }
                if chunk.seq != prev + 1 {
                    let err = ActorError::internal(format!(
                        "entry {} in stream {}: seq jumps from {prev} to {}",
                        entry.id, self.key, chunk.seq
                    ));
                    entries.push(self.error_entry(Some(entry.id), prev + 1, &err));
                    return Delivery {
                        entries,
                        done: true,
                    };
                }
            }
            self.last_seq = Some(chunk.seq);
            let terminal = chunk.is_terminal();
            entries.push(StreamEntry {
                id: Some(entry.id),
                chunk,
            });
            if terminal {
                return Delivery {
                    entries,
                    done: true,
                };
            }
        }
        Delivery {
            entries,
            done: false,
        }
    }

    /// The hub stopped: the last entry to yield.
    pub(crate) fn on_closed(&self) -> StreamEntry {
        let err = ActorError::internal("the stream reader stopped");
        self.error_entry(None, self.next_seq(), &err)
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
                if ms > 0 {
                    let until = now + Duration::from_millis(ms.unsigned_abs());
                    self.alive_until = self.alive_until.max(until);
                }
                self.decide(now)
            }
            Err(why) => {
                if now.duration_since(self.redis_ok_at)
                    >= self.watch.lease_ttl + self.watch.visibility
                {
                    let err = ActorError::new(
                        ErrorCode::Upstream,
                        format!(
                            "lost the connection to Redis while reading stream {}: {why}",
                            self.key
                        ),
                    );
                    return Step::Fail(self.error_entry(None, self.next_seq(), &err));
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
                return Step::Fail(self.error_entry(None, self.next_seq(), &err));
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
            Step::EndRun(Ending {
                reason: CancelReason::WorkerLost,
                error: ErrorInfo {
                    code: ErrorCode::WorkerLost,
                    message: "the run's worker was lost and no other worker took it over"
                        .to_owned(),
                    retryable: true,
                },
            })
        } else {
            Step::Wait
        }
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
            // The terminal is one this reader already yielded.
            Some(id) if id <= self.last_id => Step::Done,
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
mod tests {
    use loom_core::Output;
    use redis::Value;
    use serde_json::json;

    use super::*;
    use crate::codec::write_chunk_fields;

    const MS: Duration = Duration::from_millis(1);

    fn options() -> ClientOptions {
        ClientOptions {
            lease_ttl: 800 * MS,
            lease_refresh: 200 * MS,
            visibility_timeout: 1500 * MS,
            pickup_timeout: 6000 * MS,
            deadline_grace: 500 * MS,
            ..ClientOptions::default()
        }
    }

    fn id(n: u64) -> EntryId {
        EntryId { ms: n, seq: 0 }
    }

    fn raw(n: u64, chunk: &StreamChunk) -> RawEntry {
        let mut args: Vec<Vec<u8>> = Vec::new();
        write_chunk_fields(&mut args, chunk);
        RawEntry {
            id: id(n),
            fields: args.into_iter().map(Value::BulkString).collect(),
        }
    }

    fn token(seq: u64) -> StreamChunk {
        Output::token(format!("t{seq}")).into_chunk(seq)
    }

    fn tail(now: Instant) -> ReadState {
        ReadState::new("s".to_owned(), EntryId::ZERO, Watch::tail(&options()), now)
    }

    fn seqs(delivery: &Delivery) -> Vec<u64> {
        delivery.entries.iter().map(|e| e.chunk.seq).collect()
    }

    fn error_of(step: &Step) -> (u64, ErrorCode, String) {
        let Step::Fail(entry) = step else {
            panic!("expected a failure, got {step:?}")
        };
        let error = entry.chunk.error.as_ref().expect("an error chunk");
        (entry.chunk.seq, error.code, error.message.clone())
    }

    #[test]
    fn entries_pass_in_order_and_the_stream_ends_after_the_terminal() {
        let now = Instant::now();
        let mut state = tail(now);
        let complete = Output::complete(json!(null)).into_chunk(2);
        let batch = vec![raw(1, &token(0)), raw(2, &token(1))];
        let first = state.on_batch(batch, now);
        assert_eq!((seqs(&first), first.done), (vec![0, 1], false));
        let last = state.on_batch(vec![raw(3, &complete), raw(4, &token(3))], now);
        assert_eq!((seqs(&last), last.done), (vec![2], true));
        assert_eq!(last.entries[0].id, Some(id(3)));
    }

    #[test]
    fn a_duplicate_seq_is_dropped_and_a_gap_ends_with_internal() {
        let now = Instant::now();
        let mut state = tail(now);
        let batch = vec![raw(1, &token(0)), raw(2, &token(0)), raw(3, &token(1))];
        let delivery = state.on_batch(batch, now);
        assert_eq!((seqs(&delivery), delivery.done), (vec![0, 1], false));

        let delivery = state.on_batch(vec![raw(4, &token(5))], now);
        assert!(delivery.done);
        let error = &delivery.entries[0];
        assert_eq!(error.id, Some(id(4)));
        assert_eq!(error.chunk.seq, 2);
        let info = error.chunk.error.as_ref().expect("error");
        assert_eq!(info.code, ErrorCode::Internal);
        assert!(info.message.contains("seq jumps from 1 to 5"), "{info:?}");
    }

    #[test]
    fn an_undecodable_entry_ends_with_internal_naming_it() {
        let now = Instant::now();
        let mut state = tail(now);
        let bad = RawEntry {
            id: id(7),
            fields: vec![Value::BulkString(b"type".to_vec())],
        };
        let delivery = state.on_batch(vec![raw(1, &token(0)), bad], now);
        assert!(delivery.done);
        assert_eq!(seqs(&delivery), vec![0, 1]);
        let info = delivery.entries[1].chunk.error.as_ref().expect("error");
        assert_eq!(info.code, ErrorCode::Internal);
        assert!(info.message.contains("undecodable entry 7-0"), "{info:?}");
    }

    #[test]
    fn a_producer_gone_past_lease_and_visibility_is_worker_lost() {
        let start = Instant::now();
        let mut state = tail(start);
        state.on_batch(vec![raw(1, &token(0))], start);
        // The chunk counts as a sign of life from when it arrived: nothing to do yet.
        assert_eq!(state.on_tick(start + 200 * MS), Step::Wait);
        // From then on, the lease is asked; none is held.
        let at = start + 2000 * MS;
        assert_eq!(state.on_tick(at), Step::CheckLease);
        assert_eq!(state.on_lease(at, Ok(-2)), Step::Wait);
        let at = start + 2300 * MS;
        assert_eq!(state.on_tick(at), Step::CheckLease);
        let Step::EndRun(ending) = state.on_lease(at, Ok(-2)) else {
            panic!("expected the run to end")
        };
        assert_eq!(ending.reason, CancelReason::WorkerLost);
        assert_eq!(ending.error.code, ErrorCode::WorkerLost);
    }

    #[test]
    fn a_held_lease_keeps_the_run_alive() {
        let start = Instant::now();
        let mut state = tail(start);
        let at = start + 2000 * MS;
        assert_eq!(state.on_lease(at, Ok(800)), Step::Wait);
        // Alive until 2.8 s, lost from 4.3 s.
        assert_eq!(state.on_lease(start + 4200 * MS, Ok(-2)), Step::Wait);
        assert!(matches!(
            state.on_lease(start + 4300 * MS, Ok(-2)),
            Step::EndRun(_)
        ));
    }

    #[test]
    fn a_queued_run_gets_its_pickup_time_and_its_deadline_ends_it_with_timeout() {
        let start = Instant::now();
        let options = options();
        // Pickup: alive for pickup - visibility, then lost after the visibility timeout.
        let mut queued = ReadState::new(
            "s".to_owned(),
            EntryId::ZERO,
            Watch::attach(&options),
            start,
        );
        assert_eq!(queued.on_lease(start + 5900 * MS, Ok(-2)), Step::Wait);
        assert!(matches!(
            queued.on_lease(start + 6000 * MS, Ok(-2)),
            Step::EndRun(Ending {
                reason: CancelReason::WorkerLost,
                ..
            })
        ));

        let watch = Watch::run(&options, start + 1000 * MS);
        let mut run = ReadState::new("s".to_owned(), EntryId::ZERO, watch, start);
        assert_eq!(run.on_lease(start + 1400 * MS, Ok(500)), Step::Wait);
        let Step::EndRun(ending) = run.on_lease(start + 1500 * MS, Ok(500)) else {
            panic!("expected a timeout")
        };
        assert_eq!(ending.reason, CancelReason::Timeout);
        assert_eq!(ending.error.code, ErrorCode::Timeout);
    }

    #[test]
    fn redis_unreachable_past_lease_and_visibility_ends_with_upstream() {
        let start = Instant::now();
        let mut state = tail(start);
        state.on_batch(vec![raw(1, &token(0))], start);
        assert_eq!(
            state.on_lease(start + 2200 * MS, Err("down".into())),
            Step::Wait
        );
        let (seq, code, message) = error_of(&state.on_lease(start + 2300 * MS, Err("down".into())));
        assert_eq!((seq, code), (1, ErrorCode::Upstream));
        assert!(message.contains("down"), "{message}");
    }

    #[test]
    fn the_written_ending_is_awaited_then_reported_missing() {
        let start = Instant::now();
        let mut state = tail(start);
        state.on_batch(vec![raw(5, &token(0))], start);
        let Step::EndRun(ending) = state.on_lease(start + 3000 * MS, Ok(-2)) else {
            panic!("expected the run to end")
        };
        // The terminal was already yielded: nothing more.
        assert_eq!(
            state.on_end_run(start + 3000 * MS, ending.clone(), Some(id(5))),
            Step::Done
        );
        // A new terminal: it arrives through the hub, or after the visibility timeout the
        // reader says it did not.
        assert_eq!(
            state.on_end_run(start + 3000 * MS, ending.clone(), Some(id(6))),
            Step::Wait
        );
        assert_eq!(state.on_lease(start + 4400 * MS, Ok(-2)), Step::Wait);
        let (seq, code, message) = error_of(&state.on_lease(start + 4500 * MS, Ok(-2)));
        assert_eq!((seq, code), (1, ErrorCode::Internal));
        assert!(message.contains("did not arrive"), "{message}");

        // Redis failed the write: the reader yields the ending itself.
        let (seq, code, _) = error_of(&state.on_end_run(start, ending, None));
        assert_eq!((seq, code), (1, ErrorCode::WorkerLost));
    }

    #[test]
    fn a_stopped_hub_ends_with_internal() {
        let now = Instant::now();
        let mut state = tail(now);
        state.on_batch(vec![raw(1, &token(0))], now);
        let entry = state.on_closed();
        assert_eq!(entry.chunk.seq, 1);
        assert_eq!(
            entry.chunk.error.as_ref().map(|e| e.code),
            Some(ErrorCode::Internal)
        );
    }
}
