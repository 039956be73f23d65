//! The reader's rules, one test per rule, driven with instants it makes up: no Redis, no waiting.

use crate::wire::Strings;
use loom_core::Output;
use serde_json::json;

use super::*;
use crate::codec::tests::fields_of;

const MS: Duration = Duration::from_millis(1);

fn options() -> ClientOptions {
    ClientOptions {
        lease_ttl: 800 * MS,
        lease_refresh: 200 * MS,
        visibility_timeout: 1500 * MS,
        pickup_timeout: 6000 * MS,
        deadline_grace: 500 * MS,
        outage_timeout: 2300 * MS,
        ..ClientOptions::default()
    }
}

fn id(n: u64) -> EntryId {
    EntryId { ms: n, seq: 0 }
}

fn raw(n: u64, chunk: &StreamChunk) -> RawEntry {
    RawEntry {
        id: id(n),
        fields: fields_of(chunk),
    }
}

fn token(seq: u64) -> StreamChunk {
    Output::token(format!("t{seq}")).into_chunk(seq)
}

fn tail(now: Instant) -> ReadState {
    ReadState::new("s".to_owned(), EntryId::ZERO, Watch::tail(&options()), now)
}

/// What a batch delivers, drained as the reader's stream drains it.
struct Delivered {
    entries: Vec<StreamEntry>,
    done: bool,
}

fn deliver(state: &mut ReadState, batch: Vec<RawEntry>, now: Instant) -> Delivered {
    let mut delivery = state.on_batch(batch, now);
    let mut entries = Vec::new();
    while let Some(entry) = state.next_entry(&mut delivery) {
        entries.push(entry);
    }
    Delivered {
        entries,
        done: delivery.done,
    }
}

fn seqs(delivery: &Delivered) -> Vec<u64> {
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
    let first = deliver(&mut state, batch, now);
    assert_eq!((seqs(&first), first.done), (vec![0, 1], false));
    let last = deliver(&mut state, vec![raw(3, &complete), raw(4, &token(3))], now);
    assert_eq!((seqs(&last), last.done), (vec![2], true));
    assert_eq!(last.entries[0].id, Some(id(3)));
}

#[test]
fn a_repeated_seq_ends_with_internal_and_so_does_a_gap() {
    let now = Instant::now();
    let mut state = tail(now);
    let batch = vec![raw(1, &token(0)), raw(2, &token(0)), raw(3, &token(1))];
    let delivery = deliver(&mut state, batch, now);
    assert_eq!((seqs(&delivery), delivery.done), (vec![0, 1], true));
    let info = delivery.entries[1].chunk.error.as_ref().expect("error");
    assert_eq!(delivery.entries[1].id, None);
    assert!(info.message.contains("seq repeats from 0 to 0"), "{info:?}");

    let mut state = tail(now);
    let batch = vec![raw(1, &token(0)), raw(3, &token(1))];
    let delivery = deliver(&mut state, batch, now);
    assert_eq!((seqs(&delivery), delivery.done), (vec![0, 1], false));

    let delivery = deliver(&mut state, vec![raw(4, &token(5))], now);
    assert!(delivery.done);
    let error = &delivery.entries[0];
    assert_eq!(
        error.id, None,
        "the reader's verdict is no entry of the stream"
    );
    assert_eq!(error.chunk.seq, 2);
    let info = error.chunk.error.as_ref().expect("error");
    assert_eq!(info.code, ErrorCode::Internal);
    assert!(info.message.contains("seq jumps from 1 to 5"), "{info:?}");
}

#[test]
fn an_entry_after_the_largest_seq_ends_with_internal() {
    let now = Instant::now();
    let mut state = tail(now);
    let batch = vec![raw(1, &token(u64::MAX)), raw(2, &token(0))];
    let delivery = deliver(&mut state, batch, now);
    assert_eq!(
        (seqs(&delivery), delivery.done),
        (vec![u64::MAX, u64::MAX], true)
    );
    let info = delivery.entries[1].chunk.error.as_ref().expect("error");
    assert!(info.message.contains("seq repeats"), "{info:?}");
}

#[test]
fn an_undecodable_entry_ends_with_internal_naming_it() {
    let now = Instant::now();
    let mut state = tail(now);
    let bad = RawEntry {
        id: id(7),
        fields: Strings::encode([&b"type"[..]]),
    };
    let delivery = deliver(&mut state, vec![raw(1, &token(0)), bad], now);
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
    deliver(&mut state, vec![raw(1, &token(0))], start);
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
fn a_chunk_read_long_before_a_late_tick_does_not_end_the_run_without_asking_the_lease() {
    let start = Instant::now();
    let mut state = tail(start);
    deliver(&mut state, vec![raw(1, &token(0))], start);
    // The consumer did not poll for longer than lease and visibility together: the tick
    // that comes then asks the lease rather than take the old chunk's time for the last sign.
    let late = start + 3000 * MS;
    assert_eq!(state.on_tick(late), Step::CheckLease);
    assert_eq!(state.on_lease(late, Ok(800)), Step::Wait);
    // Alive until 3.8 s by that lease; without one after it, lost from 5.3 s as before.
    assert_eq!(state.on_lease(start + 5200 * MS, Ok(-2)), Step::Wait);
    assert!(matches!(
        state.on_lease(start + 5300 * MS, Ok(-2)),
        Step::EndRun(_)
    ));
}

#[test]
fn entries_still_arriving_keep_a_found_terminal_awaited() {
    let start = Instant::now();
    let mut state = tail(start);
    deliver(&mut state, vec![raw(1, &token(0))], start);
    let Step::EndRun(ending) = state.on_lease(start + 3000 * MS, Ok(-2)) else {
        panic!("expected the run to end")
    };
    assert_eq!(
        state.on_end_run(start + 3000 * MS, ending, Some(id(9))),
        Step::Wait
    );
    // A slow replay: entries keep coming towards the terminal, past the visibility timeout
    // counted from when the terminal was found.
    deliver(&mut state, vec![raw(2, &token(1))], start + 4400 * MS);
    assert_eq!(state.on_tick(start + 4600 * MS), Step::Wait);
    // Once they stop, the visibility timeout runs from the last of them.
    let (_, code, message) = error_of(&state.on_lease(start + 5900 * MS, Ok(-2)));
    assert_eq!(code, ErrorCode::Internal);
    assert!(message.contains("did not arrive"), "{message}");
}

#[test]
fn a_gap_right_after_a_resumed_reader_cursor_ends_with_internal() {
    let now = Instant::now();
    let mut state = ReadState::new(
        "s".to_owned(),
        EntryId::of_seq(5),
        Watch::tail(&options()),
        now,
    );
    let delivery = deliver(&mut state, vec![raw(8, &token(7))], now);
    assert_eq!((seqs(&delivery), delivery.done), (vec![6], true));
    let info = delivery.entries[0].chunk.error.as_ref().expect("error");
    assert!(info.message.contains("seq jumps from 5 to 7"), "{info:?}");
    // The seq that follows the cursor passes.
    let mut state = ReadState::new(
        "s".to_owned(),
        EntryId::of_seq(5),
        Watch::tail(&options()),
        now,
    );
    let delivery = deliver(&mut state, vec![raw(7, &token(6))], now);
    assert_eq!((seqs(&delivery), delivery.done), (vec![6], false));
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
fn redis_unreachable_past_the_outage_timeout_ends_with_upstream() {
    let start = Instant::now();
    let mut state = tail(start);
    deliver(&mut state, vec![raw(1, &token(0))], start);
    assert_eq!(
        state.on_lease(start + 2200 * MS, Err("down".into())),
        Step::Wait
    );
    let (seq, code, message) = error_of(&state.on_lease(start + 2300 * MS, Err("down".into())));
    assert_eq!((seq, code), (1, ErrorCode::Upstream));
    assert!(message.contains("down"), "{message}");
}

#[test]
fn redis_back_after_an_outage_gives_the_producer_a_lease_from_then() {
    let start = Instant::now();
    let options = ClientOptions {
        outage_timeout: 20_000 * MS,
        ..options()
    };
    let mut state = ReadState::new("s".to_owned(), EntryId::ZERO, Watch::tail(&options), start);
    deliver(&mut state, vec![raw(1, &token(0))], start);
    // Down for longer than a lease and the visibility timeout (a cluster's failover), not
    // for the outage timeout: the reader waits.
    for at in [1_000, 5_000, 19_900] {
        assert_eq!(
            state.on_lease(start + at * MS, Err("down".into())),
            Step::Wait
        );
    }
    // Back, the lease lapsed meanwhile: a lease and the visibility timeout from now for
    // the worker, or a re-run, to write again.
    let back = start + 19_950 * MS;
    assert_eq!(state.on_lease(back, Ok(-2)), Step::Wait);
    assert_eq!(state.on_lease(back + 2_200 * MS, Ok(-2)), Step::Wait);
    let Step::EndRun(ending) = state.on_lease(back + 2_300 * MS, Ok(-2)) else {
        panic!("expected the run to end")
    };
    assert_eq!(ending.reason, CancelReason::WorkerLost);
}

#[test]
fn the_written_ending_is_awaited_then_reported_missing() {
    let start = Instant::now();
    let mut state = tail(start);
    deliver(&mut state, vec![raw(5, &token(0))], start);
    let Step::EndRun(ending) = state.on_lease(start + 3000 * MS, Ok(-2)) else {
        panic!("expected the run to end")
    };
    // A terminal at or before what was read (which held none): Redis lost entries, and
    // the reader says so rather than end in silence.
    let (seq, code, message) =
        error_of(&state.on_end_run(start + 3000 * MS, ending.clone(), Some(id(5))));
    // Redis's loss, not a bug of Loom's.
    assert_eq!((seq, code), (1, ErrorCode::Upstream));
    assert!(message.contains("lost entries"), "{message}");
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
    deliver(&mut state, vec![raw(1, &token(0))], now);
    let entry = state.on_closed();
    assert_eq!(entry.chunk.seq, 1);
    assert_eq!(
        entry.chunk.error.as_ref().map(|e| e.code),
        Some(ErrorCode::Internal)
    );
}
