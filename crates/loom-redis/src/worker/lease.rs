//! Leases: the worker takes a run's lease when an attempt starts (with its first look at the
//! run's stream, `run.rs`), renews it
//! every `lease_refresh` while it holds it ([`heartbeat`]), and releases it when it hands a
//! run back at shutdown ([`hand_back`]).
//!
//! The heartbeat also keeps the requests of held and waiting runs fresh in the group's pending
//! list (claiming them to itself again, only for runs whose lease it renewed and only while
//! the request is still in its own pending list, checked in the same script: a request is
//! never stolen back), renews the streams' TTL, and reads their cancel keys (pub/sub delivers
//! at most once). A run whose lease holds another attempt's token (the attempt that took it
//! over) is stopped without writing; the lease alone decides, not the pending list.
//!
//! A worker may hold thousands of runs, and Redis serves nobody else while it runs one
//! command: the beat renews up to [`PER_CALL`] runs of a bucket per script call, reads its
//! pending list in pages and claims in slices of that size.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use loom_core::CancellationToken;
use redis::Value;

use crate::codec::{text, EntryId};
use crate::error::Error;
use crate::keys::bucket;
use crate::script::{self, Renewing};
use crate::worker::state::{HeldRun, Shared};

/// How many runs one renewal call renews, how many requests one `XCLAIM` names and how many
/// entries one `XPENDING` page returns: each call costs Redis well under a millisecond.
const PER_CALL: usize = 256;

/// Renews the leases, stream TTLs and pending idle times of the runs this worker holds, stops
/// runs that another worker took over, and says which actor types it serves (`served`) until
/// `stopping` (it takes no more requests), when it takes that back: a caller then learns at
/// once that nobody serves a type, instead of queueing a request nobody will take.
pub(crate) async fn heartbeat(
    shared: Arc<Shared>,
    served: Vec<String>,
    stopping: CancellationToken,
    stop: CancellationToken,
) {
    let every = shared.client.options().lease_refresh;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withdrawn = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = stopping.cancelled(), if !withdrawn => {
                withdraw(&shared, &served).await;
                withdrawn = true;
                continue;
            }
            _ = tick.tick() => {}
        }
        // At once, not one after the other: a node that does not answer the advertisement
        // must not delay the leases' renewal past their expiry.
        let beat = async {
            let advertise = async {
                if withdrawn {
                    return Ok(());
                }
                advertise(&shared, &served).await
            };
            let (advertised, refreshed) = tokio::join!(advertise, refresh(&shared));
            if let Err(e) = advertised {
                tracing::warn!(worker = %shared.name, error = %e, "could not advertise actor types");
            }
            if let Err(e) = refreshed {
                tracing::warn!(worker = %shared.name, error = %e, "could not refresh leases");
            }
        };
        // The stop comes once every run has ended: nothing is left to renew, and a worker
        // stopped while Redis does not answer stops without waiting out the beat's timeouts.
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = beat => {}
        }
    }
    if !withdrawn {
        withdraw(&shared, &served).await;
    }
}

/// Takes back this worker's marks of `served`, waiting at most [`WITHDRAW_WITHIN`]: a
/// failure only leaves them to lapse, and a worker stopping while Redis does not answer
/// stops all the same.
async fn withdraw(shared: &Shared, served: &[String]) {
    let key = shared.client.keys().actors();
    let mut conn = shared.client.conn();
    let shards = shared.client.options().queue_shards;
    let taken = script::withdraw(&mut conn, &key, (&shared.name, shards), served);
    match tokio::time::timeout(WITHDRAW_WITHIN, taken).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(worker = %shared.name, error = %e, "could not withdraw actor types; they lapse");
        }
        Err(_) => {
            tracing::debug!(worker = %shared.name, "withdrawing actor types timed out; they lapse")
        }
    }
}

/// How long a stopping worker waits to take back its actor types.
const WITHDRAW_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Marks `served` as served by this worker for one more lease. The first tick of the
/// heartbeat comes at once, so a worker is known as soon as it starts.
async fn advertise(shared: &Shared, served: &[String]) -> Result<(), Error> {
    let lease_ms = shared.client.options().lease_ttl.as_millis() as u64;
    let key = shared.client.keys().actors();
    let mut conn = shared.client.conn();
    let shards = shared.client.options().queue_shards;
    script::advertise(&mut conn, &key, lease_ms, (&shared.name, shards), served).await
}

/// A request in a queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QueuedEntry {
    queue: String,
    entry: EntryId,
}

impl QueuedEntry {
    fn new(queue: &str, entry: EntryId) -> Self {
        Self {
            queue: queue.to_owned(),
            entry,
        }
    }
}

async fn refresh(shared: &Shared) -> Result<(), Error> {
    let held: Vec<HeldRun> = shared
        .active()
        .iter()
        .map(|(run_id, active)| HeldRun::of(run_id, active))
        .collect();
    let waiting: Vec<QueuedEntry> = shared
        .waiting()
        .iter()
        .map(|work| QueuedEntry::new(&work.queue, work.entry.id))
        .collect();
    if held.is_empty() && waiting.is_empty() {
        return Ok(());
    }
    let queues: HashSet<&str> = held
        .iter()
        .map(|run| run.queue.as_str())
        .chain(waiting.iter().map(|w| w.queue.as_str()))
        .collect();
    let mut mine: HashSet<QueuedEntry> = HashSet::new();
    // Queues whose pending list could not be read this beat (a shard's node failing over):
    // their requests count as still this worker's, so their runs' leases are renewed all the
    // same — the lease itself says whether a run is still this worker's — and nothing of
    // theirs is judged lost; only their claims wait for the next beat.
    let mut unread: HashSet<&str> = HashSet::new();
    // All queues at once: one that does not answer costs one timeout, not one per queue.
    // The leases are renewed meanwhile, not after: a queue whose node is failing over must
    // not hold up the renewal of runs on live nodes past their leases' expiry.
    // Each for at most a beat: a queue whose node is failing over must not hold the next
    // beat's renewals back either (its claims wait for a beat that reads it).
    let every = shared.client.options().lease_refresh;
    let pending = futures::future::join_all(queues.into_iter().map(|queue| {
        let mut conn = shared.client.conn();
        async move {
            let read = tokio::time::timeout(every, pending_of(shared, &mut conn, queue)).await;
            (
                queue,
                read.unwrap_or(Err(Error::UnexpectedReply(format!(
                    "no answer within {every:?}"
                )))),
            )
        }
    }));
    let refreshed: Vec<&HeldRun> = held.iter().collect();
    let (pending, renewals) = tokio::join!(pending, renew_all(shared, &refreshed));
    for (queue, entries) in pending {
        match entries {
            Ok(entries) => mine.extend(entries),
            Err(e) => {
                tracing::warn!(worker = %shared.name, queue, error = %e, "could not read the pending list; renewing its runs' leases regardless");
                unread.insert(queue);
            }
        }
    }
    let of_unread = held
        .iter()
        .map(|run| QueuedEntry::new(&run.queue, run.entry))
        .chain(waiting.iter().cloned())
        .filter(|entry| unread.contains(entry.queue.as_str()));
    mine.extend(of_unread);
    let mut claims: HashMap<&str, Vec<String>> = HashMap::new();
    // Every run's lease is renewed, whether or not its request is still in this worker's
    // pending list: the lease alone says whose the run is (an attempt that took the request
    // over takes the lease before it writes, and this run's renewal then fails). A request
    // gone from every pending list (its queue deleted, a failover that lost the entry) is no
    // reason to kill a healthy run; only requests still this worker's are claimed again.
    let lost: HashSet<&QueuedEntry> = waiting.iter().filter(|w| !mine.contains(w)).collect();
    if !lost.is_empty() {
        // Claimed by another worker while it waited here: that worker runs it.
        shared
            .waiting()
            .retain(|work| !lost.contains(&QueuedEntry::new(&work.queue, work.entry.id)));
    }
    for waiting in &waiting {
        if mine.contains(waiting) {
            claims
                .entry(waiting.queue.as_str())
                .or_default()
                .push(waiting.entry.to_string());
        }
    }
    {
        let active = shared.active();
        for (run, renewal) in refreshed.into_iter().zip(renewals) {
            // Not renewed this beat (Redis refused or did not answer): tried again next beat.
            let (Some(active), Some(renewal)) = (active.get(&run.run_id), renewal) else {
                continue;
            };
            if !renewal.renewed {
                // Another attempt holds the lease (or it lapsed): this writer is fenced off.
                tracing::warn!(run_id = %run.run_id, "the run's lease is no longer ours; stopping it");
                active.drop_run();
                continue;
            }
            if let Some(reason) = renewal.cancel {
                active.stop_for(reason);
            } else if active.caller_seen(
                renewal.caller_present,
                std::time::Instant::now(),
                shared.client.options().lease_ttl,
            ) {
                // Its caller is gone without a word (killed): cancelled as if it had said so.
                tracing::info!(run_id = %run.run_id, "the run's caller is gone; cancelling it");
                let client = shared.client.clone();
                let run_id = run.run_id.clone();
                tokio::spawn(async move {
                    if let Err(e) = client.cancel(&run_id).await {
                        tracing::warn!(run_id, error = %e, "could not cancel the run of a caller that is gone");
                    }
                });
            }
            // Only runs whose lease is still ours keep their request, and only while it is
            // in this worker's pending list: never steal it back.
            if mine.contains(&QueuedEntry::new(&run.queue, run.entry)) {
                claims
                    .entry(run.queue.as_str())
                    .or_default()
                    .push(run.entry.to_string());
            }
        }
    }
    claims.retain(|queue, _| !unread.contains(queue));
    // A worker handing its runs back gives their requests back itself (`hand_back`): a
    // claim from a beat begun before would reset what it gives back. The hand-back waits for
    // a beat's claims to be done before it gives back.
    let _claiming = shared.claiming.lock().await;
    if shared.is_closing() {
        return Ok(());
    }
    // At most a beat, likewise: claims not done in time are made by the next beat.
    tokio::time::timeout(every, claim_to_self(shared, claims, None))
        .await
        .unwrap_or_else(|_| {
            Err(Error::UnexpectedReply(format!(
                "claims not answered within {every:?}"
            )))
        })
}

/// Renews the leases and stream TTLs of `runs` and reads their cancel keys, [`PER_CALL`] runs
/// of one bucket (one slot on a cluster) per script call, the calls sent together. Returns
/// what it found for each run, in order; `None` for a run it could not renew this beat.
///
/// A call a cluster refuses for where its keys are (`TRYAGAIN`, `ASK`, `CROSSSLOT`: it is
/// moving the bucket's slot key by key) is tried again one run at a time, whose three keys are
/// split far less often than a call's hundreds. Any other failure (Redis down or slow) leaves
/// the call's runs for the next beat, logged once.
async fn renew_all(shared: &Shared, runs: &[&HeldRun]) -> Vec<Option<script::Renewal>> {
    let keys = shared.client.keys();
    let options = shared.client.options();
    let lease_ms = options.lease_ttl.as_millis() as u64;
    let ttl = options.stream_ttl.as_secs();
    let run_keys: Vec<[String; 4]> = runs
        .iter()
        .map(|run| {
            [
                keys.lease(&run.run_id),
                keys.stream(&run.run_id),
                keys.cancel(&run.run_id),
                keys.caller(&run.run_id),
            ]
        })
        .collect();
    // `direct`: on a connection straight to the master of the runs' bucket, as their writers
    // use, rather than the command connection, whose requests a cluster's failover holds up
    // while it learns the slots again (which let live masters' leases lapse). Through the
    // command connection when none is free, the master is not known or marked down, or a
    // `MOVED` came back; and when not `direct`: for one run at a time while its bucket's slot
    // is moving (the command connection follows `ASK`). A failure is not tried again at once
    // (a node not answering would cost two timeouts, and the next beat's lateness).
    let renew = |ats: &[usize], direct: bool| {
        let part: Vec<Renewing> = ats
            .iter()
            .map(|&at| {
                let [lease, stream, cancel, caller] = &run_keys[at];
                Renewing {
                    lease,
                    stream,
                    cancel,
                    owner: &runs[at].owner,
                    caller: runs[at].caller.then_some(caller.as_str()),
                }
            })
            .collect();
        async move {
            let client = &shared.client;
            let bucket_key = part.first().map_or("", |run| run.lease);
            if direct {
                if let Some(mut own) = client.writer_wire(bucket_key).await? {
                    let renewed = script::renew(&mut own.wire, &part, lease_ms, ttl).await;
                    if let Some(renewals) = client.settle_writer(bucket_key, own, renewed)? {
                        return Ok(renewals);
                    }
                }
            }
            script::renew(&mut client.conn(), &part, lease_ms, ttl).await
        }
    };
    let mut by_bucket: HashMap<usize, Vec<usize>> = HashMap::new();
    for (at, run) in runs.iter().enumerate() {
        by_bucket.entry(bucket(&run.run_id)).or_default().push(at);
    }
    // One run alone: what it found, or `None` (logged) when it failed too.
    let one = |at: usize| async move {
        match renew(&[at], false).await {
            Ok(mut renewal) => (at, renewal.pop()),
            Err(e) => {
                tracing::warn!(run_id = %runs[at].run_id, error = %e, "could not renew the run's lease this beat");
                (at, None)
            }
        }
    };
    let calls = by_bucket
        .values()
        .flat_map(|ats| ats.chunks(PER_CALL))
        .map(|ats| async move {
            match renew(ats, true).await {
                Ok(renewals) => ats.iter().copied().zip(renewals.into_iter().map(Some)).collect(),
                Err(e) if is_misplaced(&e) => {
                    tracing::debug!(error = %e, runs = ats.len(), "a renewal call's keys are split; renewing its runs one by one");
                    futures::future::join_all(ats.iter().map(|&at| one(at))).await
                }
                Err(e) => {
                    tracing::warn!(error = %e, runs = ats.len(), "could not renew these runs' leases this beat");
                    ats.iter().map(|&at| (at, None)).collect()
                }
            }
        });
    let mut found = vec![None; runs.len()];
    for (at, renewal) in futures::future::join_all(calls).await.into_iter().flatten() {
        found[at] = renewal;
    }
    found
}

/// Whether a cluster refused a command for where its keys are, while their slot moves.
fn is_misplaced(e: &Error) -> bool {
    matches!(e, Error::Redis(e) if matches!(e.code(), Some("TRYAGAIN" | "ASK" | "CROSSSLOT")))
}

/// Claims `entries` of each queue for this worker again, which resets their idle time, or
/// sets it to `idle` ms: each only if it is still in this worker's pending list at that very
/// moment ([`script::claim_mine`]), so a request another worker claimed since this one looked
/// is never taken back. [`PER_CALL`] entries per call, all sent at once: the queues may live
/// on different nodes of a cluster.
async fn claim_to_self(
    shared: &Shared,
    entries: HashMap<&str, Vec<String>>,
    idle: Option<u64>,
) -> Result<(), Error> {
    let claims = entries.iter().flat_map(|(queue, ids)| {
        ids.chunks(PER_CALL).map(move |ids| {
            let mut conn = shared.client.conn();
            async move {
                script::claim_mine(&mut conn, queue, shared.group(), &shared.name, idle, ids).await
            }
        })
    });
    futures::future::try_join_all(claims).await?;
    Ok(())
}

/// The entries of `queue` in this worker's pending list, read [`PER_CALL`] at a time.
async fn pending_of(
    shared: &Shared,
    conn: &mut crate::conn::Conn,
    queue: &str,
) -> Result<Vec<QueuedEntry>, Error> {
    let mut mine = Vec::new();
    let mut from = "-".to_owned();
    loop {
        let page: Value = redis::cmd("XPENDING")
            .arg(queue)
            .arg(shared.group())
            .arg(&from)
            .arg("+")
            .arg(PER_CALL)
            .arg(&shared.name)
            .query_async(conn)
            .await?;
        let Value::Array(items) = page else {
            return Err(Error::UnexpectedReply(format!(
                "XPENDING answered {page:?}"
            )));
        };
        let full = items.len() == PER_CALL;
        let mut last = None;
        for item in items {
            let Value::Array(fields) = item else { continue };
            let id: Option<EntryId> = fields.first().and_then(text).and_then(|s| s.parse().ok());
            if let Some(id) = id {
                mine.push(QueuedEntry::new(queue, id));
                last = Some(id);
            }
        }
        match last {
            // The next page starts after the last entry of this one.
            Some(last) if full => from = format!("({last}"),
            _ => return Ok(mine),
        }
    }
}

/// Stops the runs still going after the shutdown grace and makes their requests (and those
/// not started yet) claimable at once, so another worker continues their streams.
pub(crate) async fn hand_back(shared: &Shared) {
    // Taken out of `active` first, so the heartbeat does not refresh them again.
    let held: Vec<HeldRun> = shared
        .close()
        .into_iter()
        .map(|(run_id, active)| {
            active.drop_run();
            HeldRun::of(&run_id, &active)
        })
        .collect();
    let unstarted: Vec<QueuedEntry> = shared
        .waiting()
        .drain(..)
        .map(|work| QueuedEntry::new(&work.queue, work.entry.id))
        .collect();
    for waiting in &unstarted {
        tracing::info!(queue = %waiting.queue, entry = %waiting.entry, "handing a request back unstarted");
    }
    // After any beat's claims: none of them lands after what is given back here.
    let _claiming = shared.claiming.lock().await;
    give_back(shared, &held, &unstarted).await;
}

/// Hands one run back that was getting ready when the worker handed back the others.
pub(crate) async fn hand_back_late(shared: &Shared, run: HeldRun) {
    give_back(shared, &[run], &[]).await;
}

/// Makes the requests of `held` and `unstarted` claimable by any worker at once (their idle
/// time set to the visibility timeout) and releases `held`'s leases.
async fn give_back(shared: &Shared, held: &[HeldRun], unstarted: &[QueuedEntry]) {
    let visibility = shared.client.options().visibility_timeout.as_millis() as u64;
    for run in held {
        tracing::info!(run_id = %run.run_id, "handing the run back");
    }
    let requests = held
        .iter()
        .map(|run| (&run.queue, run.entry))
        .chain(unstarted.iter().map(|w| (&w.queue, w.entry)));
    let mut claims: HashMap<&str, Vec<String>> = HashMap::new();
    for (queue, entry) in requests {
        claims.entry(queue).or_default().push(entry.to_string());
    }
    if let Err(e) = claim_to_self(shared, claims, Some(visibility)).await {
        tracing::warn!(error = %e, "could not hand runs back; they will be re-run after the visibility timeout");
    }
    // Releasing the lease fences off this worker's writer even if it is still flushing; a
    // lease another attempt took meanwhile is left alone.
    let released = futures::future::join_all(held.iter().map(|run| {
        let mut conn = shared.client.conn();
        let lease = shared.client.keys().lease(&run.run_id);
        async move { script::release(&mut conn, &lease, &run.owner).await }
    }))
    .await;
    if let Some(Err(e)) = released.into_iter().find(Result::is_err) {
        tracing::warn!(error = %e, "could not release a lease; it expires on its own");
    }
}
