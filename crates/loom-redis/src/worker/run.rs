//! Running one request ([`execute`]), from its queue entry to its acknowledgement: decode it,
//! look at its stream and cancel key (a stream that already ended is only acknowledged; a new
//! attempt continues after the last `seq`), take the lease for this attempt, hand the actor's
//! chunks to a [`Publisher`], and `XACK`/`XDEL` once the terminal chunk is in Redis. While it
//! runs, the run is in the worker's `active` map, which the heartbeat and the cancel listener
//! read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{stream, Stream, StreamExt};
use loom_core::{
    ActorError, Attempt, CancellationToken, ChunkStream, ChunkType, ErrorCode, RunOptions,
    StreamChunk,
};
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::codec::{EntryId, Request, Unreadable};
use crate::error::Error;
use crate::keys::{check_name, CancelReason};
use crate::publisher::Publisher;
use crate::script::{self, LastEntry};
use crate::worker::lease::hand_back_late;
use crate::worker::state::{Active, HeldRun, Shared, Work};

/// The chunks of a run that ends before its actor starts: `start` and `error`, or only the
/// `error` after an earlier attempt's output.
fn refused(request: &Request, seq: u64, attempt: u32, err: &ActorError) -> Vec<StreamChunk> {
    if seq > 0 {
        // An earlier attempt started the stream: the refusal ends it, with no `start` of an
        // attempt that never ran (readers take one for a new attempt superseding the output).
        return vec![StreamChunk::error(seq, err)];
    }
    let mut start = StreamChunk::new(ChunkType::Start, seq);
    start.data = Some(json!({ "run_id": request.run_id, "actor": request.actor }));
    start.attempt = (attempt > 1).then_some(attempt);
    vec![start, StreamChunk::error(seq + 1, err)]
}

/// The `seq` a new attempt starts at after its stream's `last` entry: `None` when that entry
/// has no readable `seq`, or one so large (a corrupted stream) that the attempt's own chunks
/// could not be numbered after it.
fn first_seq(last: Option<LastEntry>) -> Option<u64> {
    match last {
        None => Some(0),
        Some(LastEntry { seq, .. }) => seq.filter(|&s| s < u64::MAX / 2).map(|s| s + 1),
    }
}

/// Runs one request, from its entry to its acknowledgement.
pub(crate) async fn execute(shared: Arc<Shared>, work: Work, _slot: OwnedSemaphorePermit) {
    let Work {
        queue,
        entry,
        attempt,
    } = work;
    let (request, unreadable) = match Request::decode(&entry.fields) {
        Ok(request) => (request, None),
        Err(Unreadable {
            named: Some(request),
            why,
        }) => (*request, Some(why)),
        Err(Unreadable { named: None, why }) => {
            tracing::error!(queue = %queue, entry = %entry.id, %why, "dropping an unreadable request");
            acknowledge(&shared, &queue, entry.id).await;
            return;
        }
    };
    let span =
        tracing::info_span!("loom.run", run_id = %request.run_id, actor = %request.actor, attempt);
    if let Some(traceparent) = &request.traceparent {
        loom_core::trace::set_remote_parent(&span, traceparent);
    }
    let ran = run_request(&shared, &queue, entry.id, &request, unreadable, attempt)
        .instrument(span)
        .await;
    if let Err(e) = ran {
        // The request stays pending: once its idle time passes the visibility timeout a
        // worker (maybe this one) runs it again.
        tracing::warn!(run_id = %request.run_id, error = %e, "run interrupted; it will be retried");
        if e.is_unreachable() && attempt > 1 {
            // Redis (the run's node: a cluster's failover) failed this attempt, not a lost
            // worker: it does not count towards `max_attempts`, or a failover longer than a
            // few visibility timeouts would use them all up before the run could go on.
            let consumer = shared.name.as_str();
            let id = entry.id.to_string();
            let group = (shared.group(), consumer);
            let mut conn = shared.client.conn();
            let recounted = script::recount(&mut conn, &queue, group, &id, attempt - 1, None);
            if let Err(e) = recounted.await {
                tracing::debug!(run_id = %request.run_id, error = %e, "could not give the attempt back");
            }
        }
    }
}

async fn run_request(
    shared: &Arc<Shared>,
    queue: &str,
    entry: EntryId,
    request: &Request,
    unreadable: Option<String>,
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
    let owner = format!("{}:{attempt}:{entry}", shared.name);
    // The lease is taken first, and the stream looked at after: from here on only this
    // attempt writes, so the `seq` it continues from is final. (Looked at before, an earlier
    // attempt still writing could take those `seq`s first.) Before the run joins `active`:
    // the heartbeat stops a run whose lease is not its own.
    let lease = keys.lease(run_id);
    let take = script::Take {
        lease: &lease,
        owner: &owner,
        lease_ms: client.options().lease_ttl.as_millis() as u64,
        rerun: attempt > 1,
    };
    let peek = script::peek(
        &mut client.conn(),
        &keys.stream(run_id),
        &keys.cancel(run_id),
        Some(take),
    )
    .await?;
    if let Some(holder) = peek.held_by {
        // Its attempt's worker is alive (it renews the lease) and only failed to keep the
        // request's idle time down (the queue's node was failing over): the request goes back
        // to it, with this delivery not counted, and the run goes on there.
        let worker = holder.rsplitn(3, ':').nth(2).unwrap_or_default();
        tracing::info!(run_id, holder = %holder, "a live attempt holds the run; handing its request back");
        if check_name("worker name", worker).is_ok() {
            let id = entry.to_string();
            let group = (shared.group(), shared.name.as_str());
            let mut conn = client.conn();
            script::recount(&mut conn, queue, group, &id, attempt - 1, Some(worker)).await?;
        }
        return Ok(());
    }
    if peek.last.is_some_and(|last| last.terminal) {
        // A worker died between writing the terminal chunk and acknowledging.
        acknowledge(shared, queue, entry).await;
        return Ok(());
    }
    let Some(seq) = first_seq(peek.last) else {
        let id = peek
            .last
            .map(|last| last.id.to_string())
            .unwrap_or_default();
        tracing::error!(run_id, entry = %id, "stream's last entry has no seq a new attempt can follow; not running");
        acknowledge(shared, queue, entry).await;
        return Ok(());
    };
    // The request's age by Redis's clock alone: its queue entry id is Redis's time when it was
    // queued, `now_ms` Redis's time now. No decision depends on this machine's clock.
    let age_ms = peek.now_ms.saturating_sub(entry.ms);
    let remaining = Duration::from_millis(request.timeout_ms.saturating_sub(age_ms));
    let unreadable =
        unreadable.map(|why| ActorError::bad_input(format!("unreadable request: {why}")));
    let refusal = match peek.cancel {
        Some(CancelReason::Cancelled) => Some(ActorError::cancelled()),
        // Its reader already ended it (worker_lost, timeout) and wrote the terminal chunk.
        Some(CancelReason::WorkerLost | CancelReason::Timeout | CancelReason::Other) => {
            acknowledge(shared, queue, entry).await;
            return Ok(());
        }
        // Its names are valid but the rest is not (written by another client): its reader
        // gets the reason now rather than a pickup timeout.
        None if unreadable.is_some() => unreadable,
        None if attempt > shared.max_attempts => Some(ActorError::new(
            ErrorCode::WorkerLost,
            match attempt - 1 {
                1 => "gave up after its one attempt lost its worker".to_owned(),
                n => format!("gave up after {n} attempts lost their worker"),
            },
        )),
        None if remaining.is_zero() => Some(ActorError::new(
            ErrorCode::Timeout,
            "the run passed its deadline before it started",
        )),
        None if !shared.runtime.registry().contains(&request.actor) => Some(ActorError::not_found(
            format!("unknown actor type '{}'", request.actor),
        )),
        // A request in one actor type's queue naming another (written by another client) is
        // not run: a worker runs only what it serves, from the queue it serves it on.
        None if !keys.is_queue_of(queue, &request.actor) => Some(ActorError::not_found(format!(
            "a request for actor type '{}' in the queue of another",
            request.actor
        ))),
        None => None,
    };
    let token = CancellationToken::new();
    let publisher = Publisher::start_run(client, run_id, &owner, Some(token.clone()))?;
    if let Some(err) = refusal {
        let (discard, ended) = (publisher.discard_flag(), publisher.ended_flag());
        publisher
            .publish(stream::iter(refused(request, seq, attempt, &err)))
            .await?;
        // Fenced off before the refusal was written (another attempt holds the run): not
        // this attempt's request to acknowledge.
        if discard.load(Ordering::Acquire) && !ended.load(Ordering::Acquire) {
            return Ok(());
        }
        acknowledge(shared, queue, entry).await;
        return Ok(());
    }

    let discard = publisher.discard_flag();
    let ended = publisher.ended_flag();
    let joined = shared.join(
        run_id,
        Active {
            queue: queue.to_owned(),
            entry,
            owner: owner.clone(),
            token: token.clone(),
            discard: Arc::clone(&discard),
            ended: Arc::clone(&ended),
            caller: request.caller,
            caller_missing: std::sync::Mutex::new(None),
        },
    );
    if let Err(run) = joined {
        // The worker is handing its runs back: this one, not started yet, goes back too.
        hand_back_late(shared, HeldRun::of(run_id, &run)).await;
        return Ok(());
    }
    let held = Held {
        shared,
        run_id,
        owner: &owner,
    };
    let result = drive(shared, request, seq, attempt, remaining, token, publisher).await;
    drop(held);
    match result {
        // Not when the run was taken over or handed back meanwhile: that request is no longer
        // this attempt's to acknowledge.
        Err(e) if e.is_out_of_memory() && !discard.load(Ordering::Acquire) => {
            // Redis refused the run's writes for the whole retry window, and the error chunk
            // the publisher put in their place too: a re-run would be refused as well, so the
            // run ends here. Releasing the lease tells its readers the producer is gone; each
            // then ends with its own verdict naming the cause.
            tracing::error!(run_id, error = %e, "Redis is out of memory; the run is abandoned");
            if let Err(e) = script::release(&mut client.conn(), &keys.lease(run_id), &owner).await {
                tracing::warn!(run_id, error = %e, "could not release the lease");
            }
            acknowledge(shared, queue, entry).await;
            return Ok(());
        }
        result => result?,
    }
    if discard.load(Ordering::Acquire) && !ended.load(Ordering::Acquire) {
        // Taken over by another worker or handed back: not ours to acknowledge. A run whose
        // stream has its terminal chunk is done even so, and acknowledged: its own terminal
        // (the heartbeat that found its lease gone — the terminal batch deletes it — just
        // before the run left `active` stops it), or one written from outside (a reader's
        // `worker_lost`/`timeout`), which a claim after the visibility timeout would only
        // acknowledge, a timeout later.
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
    /// This attempt's lease token.
    owner: &'a str,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut active = self.shared.active();
        // Only this attempt's record: the same run may since be held by another attempt,
        // for another entry or (claimed again meanwhile) the same one.
        if active
            .get(self.run_id)
            .is_some_and(|a| a.owner == self.owner)
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
    remaining: Duration,
    token: CancellationToken,
    publisher: Publisher,
) -> Result<(), Error> {
    let mut conn = shared.client.conn();
    // The cancel may have been set between the check in `run_request` and joining `active`.
    let reason: Option<String> = redis::cmd("GET")
        .arg(shared.client.keys().cancel(&request.run_id))
        .query_async(&mut conn)
        .await?;
    match reason.as_deref().map(CancelReason::parse) {
        None => {}
        // The caller's cancel: the runtime writes `start` and `error/cancelled`.
        Some(CancelReason::Cancelled) => token.cancel(),
        // A reader ended the run (worker_lost, timeout) and wrote its terminal chunk: write
        // nothing after it.
        Some(CancelReason::WorkerLost | CancelReason::Timeout | CancelReason::Other) => {
            return Ok(())
        }
    }
    let options = RunOptions {
        run_id: Some(request.run_id.clone()),
        timeout: Some(remaining),
        parent: Some(token),
    };
    let attempt_of = Attempt::new(attempt, seq);
    match shared
        .runtime
        .stream_attempt(&request.actor, request.input.clone(), options, attempt_of)
    {
        Ok(chunks) => publisher.publish(capped(chunks, shared)).await,
        Err(err) => {
            publisher
                .publish(stream::iter(refused(request, seq, attempt, &err)))
                .await
        }
    }
}

/// `chunks` up to the caps on what a run may write: past them the actor stops (its stream is
/// no longer read) and the run ends with an error in the place of the chunk that did not fit
/// — a `complete` too (a result too large is refused like any chunk), not the run's own
/// `error`, which carries no data and says more than the cap's.
fn capped(chunks: ChunkStream, shared: &Shared) -> impl Stream<Item = StreamChunk> {
    let (max_chunks, max_bytes) = (shared.max_run_chunks, shared.max_run_bytes);
    let (mut count, mut bytes) = (0u64, 0u64);
    chunks.map(move |chunk| {
        count += 1;
        bytes += data_size(&chunk);
        if (count > max_chunks || bytes > max_bytes) && chunk.kind != ChunkType::Error {
            let err = ActorError::new(
                ErrorCode::ActorFailed,
                format!(
                    "the run's output passed the cap of {max_chunks} chunks or {max_bytes} bytes a run may write"
                ),
            );
            return StreamChunk::error(chunk.seq, &err);
        }
        chunk
    })
}

/// About how many bytes of data `chunk` adds to Redis: a token's text is counted without
/// serializing it again (the hot path); other payloads are serialized to be measured.
fn data_size(chunk: &StreamChunk) -> u64 {
    let Some(data) = &chunk.data else {
        return 0;
    };
    let size = match data.get("token").and_then(|t| t.as_str()) {
        Some(token) if data.as_object().is_some_and(|o| o.len() == 1) => token.len() + 12,
        _ => serde_json::to_vec(data).map_or(0, |v| v.len()),
    };
    size as u64
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn last(seq: Option<u64>) -> Option<LastEntry> {
        Some(LastEntry {
            id: EntryId { ms: 1, seq: 0 },
            terminal: false,
            seq,
        })
    }

    #[test]
    fn a_new_attempt_follows_its_streams_last_seq_when_it_can() {
        assert_eq!(first_seq(None), Some(0));
        assert_eq!(first_seq(last(Some(4))), Some(5));
        assert_eq!(first_seq(last(None)), None, "no readable seq");
        assert_eq!(first_seq(last(Some(u64::MAX))), None, "no room after it");
    }
}
