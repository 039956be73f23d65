//! [`Fetcher`]: takes requests for the worker to run, and passes them on as [`Work`]: new ones
//! with a blocking `XREADGROUP` on a dedicated connection (woken with `CLIENT UNBLOCK` at
//! shutdown, so nothing it took is dropped), and those of dead workers with an `XAUTOCLAIM`
//! sweep that keeps a cursor per queue, so it reaches every pending entry however long the
//! pending list is. A claimed request runs as attempt `delivery count` (at least 2).
//!
//! On one server one `XREADGROUP` reads every queue. A cluster refuses a read over several
//! slots, so there each queue (shard) is read by its own blocking `XREADGROUP`, all at once,
//! each on its own connection: when the first returns the others are woken with
//! `CLIENT UNBLOCK`, and everything they took is run (what exceeds the free slots waits in
//! the worker's list, kept fresh by the heartbeat). Every shard gets its turn in each round,
//! so none starves.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use redis::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::codec::{parse_entries, parse_read_frame, text, EntryId, RawEntry};
use crate::conn::{redirect, Conn, Reach, Redirect};
use crate::error::Error;
use crate::script::{self, Consumers};
use crate::wire::Wire;
use crate::worker::state::{Shared, Work};

/// How long one `XREADGROUP` blocks when the queues are empty. It also paces the sweep for
/// dead workers' requests, so it is short.
const READ_BLOCK: Duration = Duration::from_millis(500);

/// How long a queue whose group could not be made is left out of the reads.
const GROUP_RETRY: Duration = Duration::from_secs(5);

/// How many `XAUTOCLAIM` calls that claim nothing one sweep may make on a queue.
const SCANS_PER_SWEEP: usize = 16;

/// The most requests one `XAUTOCLAIM` asks for. Redis looks at up to ten times as many
/// pending entries in that one command, serving nobody else meanwhile: a worker with
/// thousands of free slots scans a long pending list in several short calls, not one long one.
const CLAIMS_PER_SCAN: usize = 100;

/// One blocking read: its queues, where it connects on a cluster, and its connection once
/// open.
struct Lane {
    queues: Vec<String>,
    reach: Reach,
    conn: Option<Wire>,
}

impl Lane {
    fn new(queues: Vec<String>) -> Self {
        Self {
            queues,
            reach: Reach::default(),
            conn: None,
        }
    }
}

/// Takes requests: new ones with `XREADGROUP`, dead workers' ones with `XAUTOCLAIM`.
pub(crate) struct Fetcher {
    shared: Arc<Shared>,
    queues: Vec<String>,
    /// The blocking reads, each over some queues (all of them on one server, one each on a
    /// cluster).
    lanes: Vec<Lane>,
    /// The queues whose group exists, as far as this worker knows: those it reads.
    ready: HashSet<String>,
    /// When to try again to make the group of a queue that refused it.
    retry_at: HashMap<String, Instant>,
    /// Where the next look at the queues in turn starts ([`take_in_turn`](Self::take_in_turn)).
    turn: usize,
    backoff: Backoff,
    next_sweep: Instant,
    /// When to next delete the groups' dead consumers ([`prune_dead`](Self::prune_dead)).
    next_prune: Instant,
    /// Per queue, where the next `XAUTOCLAIM` continues, so sweeps reach every pending entry
    /// however long the pending list is.
    cursors: HashMap<String, String>,
}

impl Fetcher {
    pub(crate) fn new(shared: Arc<Shared>, queues: Vec<String>) -> Self {
        let lanes = if shared.client.is_cluster() {
            queues.iter().map(|q| Lane::new(vec![q.clone()])).collect()
        } else {
            vec![Lane::new(queues.clone())]
        };
        Self {
            shared,
            queues,
            lanes,
            ready: HashSet::new(),
            retry_at: HashMap::new(),
            turn: 0,
            backoff: Backoff::default(),
            next_sweep: Instant::now(),
            next_prune: Instant::now(),
            cursors: HashMap::new(),
        }
    }

    /// Up to `free` requests; the flag says the shutdown signal arrived.
    pub(crate) async fn fetch<S: Future<Output = ()> + Unpin>(
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
                for lane in &mut self.lanes {
                    lane.conn = None;
                    lane.reach.lost();
                }
                // Redis may have restarted empty: create the groups again (idempotent).
                self.ready.clear();
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
        // Each queue's group, made where it is missing. A queue whose group cannot be made (its
        // key overwritten with another type, its node failing over) is left out of the reads
        // and tried again a while later: one bad queue never stops the others.
        let now = Instant::now();
        let mut refused = None;
        for queue in &self.queues {
            if self.ready.contains(queue) || self.retry_at.get(queue).is_some_and(|at| now < *at) {
                continue;
            }
            let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(queue)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Err(e) if e.code() != Some("BUSYGROUP") => {
                    tracing::warn!(worker = %self.shared.name, queue, error = %e, "cannot read this queue; trying it again later");
                    self.retry_at.insert(queue.clone(), now + GROUP_RETRY);
                    refused = Some(e);
                }
                _ => {
                    self.retry_at.remove(queue);
                    self.ready.insert(queue.clone());
                }
            }
        }
        if self.ready.is_empty() {
            return Err(refused.map_or_else(
                || Error::UnexpectedReply("no queue can be read".to_owned()),
                Error::from,
            ));
        }
        if Instant::now() >= self.next_sweep {
            self.next_sweep = Instant::now() + sweep_every(&self.shared);
            let claimed = self.claim_abandoned(free).await;
            if !claimed.is_empty() {
                return Ok((claimed, false));
            }
        }
        if Instant::now() >= self.next_prune {
            self.next_prune = Instant::now() + self.shared.client.options().visibility_timeout;
            self.prune_dead().await;
        }
        // Fewer free slots than queues: a blocking read over them all could take one request
        // from each, which would then wait here while other workers are idle. So they are
        // looked at in turn without blocking, one request each, until `free` are taken; only
        // when none has any does the blocking read wait on them all (it then takes what
        // arrives first: more than `free` only if several queues are written at once).
        let readable: Vec<String> = self
            .queues
            .iter()
            .filter(|q| self.ready.contains(*q))
            .cloned()
            .collect();
        if free < readable.len() {
            let taken = self.take_in_turn(&mut conn, &readable, free).await;
            if !taken.is_empty() {
                return Ok((taken, false));
            }
        }
        // The lanes to read this round, each with its queues that can be read.
        let round: Vec<(usize, Vec<String>)> = self
            .lanes
            .iter()
            .enumerate()
            .map(|(at, lane)| {
                let queues = lane
                    .queues
                    .iter()
                    .filter(|q| self.ready.contains(*q))
                    .cloned();
                (at, queues.collect::<Vec<_>>())
            })
            .filter(|(_, queues)| !queues.is_empty())
            .collect();
        // Each lane's connection and client id (on the node of its queues), for unblocking.
        let mut ready = Vec::with_capacity(round.len());
        for (at, _) in &round {
            let lane = &mut self.lanes[*at];
            let mut wire = match lane.conn.take() {
                Some(c) => c,
                None => {
                    self.shared
                        .client
                        .dedicated(READ_BLOCK, &lane.reach)
                        .await?
                }
            };
            let id = wire.client_id().await?;
            ready.push((wire, id));
        }
        // `COUNT` bounds each queue, not the read: a share of the free slots per queue keeps
        // what one read takes near `free` (at most one more per queue), so requests do not
        // wait in this worker while others are idle.
        let count = free.div_ceil(self.queues.len().max(1)).max(1);
        let cmds: Vec<redis::Cmd> = round
            .iter()
            .map(|(_, queues)| {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP")
                    .arg(group)
                    .arg(&self.shared.name)
                    .arg("COUNT")
                    .arg(count)
                    .arg("BLOCK")
                    .arg(READ_BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(queues);
                for _ in queues {
                    cmd.arg(">");
                }
                cmd
            })
            .collect();
        let woken: Vec<(i64, &str)> = ready
            .iter()
            .zip(&round)
            .map(|((_, id), (_, queues))| (*id, queues[0].as_str()))
            .collect();
        // All reads at once; when the first returns (or the shutdown comes), the others are
        // woken: whatever a blocked read returns is ours to run, never dropped.
        let first = Notify::new();
        let reads = ready.iter_mut().zip(&cmds).map(|((wire, _), cmd)| {
            let first = &first;
            async move {
                let reply = wire.query_frame(cmd).await;
                first.notify_one();
                reply
            }
        });
        let wake = async {
            let stopping = tokio::select! {
                _ = first.notified() => false,
                _ = shutdown => true,
            };
            if woken.len() > 1 || stopping {
                for (id, key) in &woken {
                    let _ = conn.unblock(*id, key).await;
                }
            }
            stopping
        };
        let (replies, stopping) = tokio::join!(join_all(reads), wake);
        let mut work = Vec::new();
        let mut failed = None;
        for (((at, queues), reply), (wire, _)) in round.iter().zip(replies).zip(ready) {
            let lane = &mut self.lanes[*at];
            // A reply this lane cannot read fails the lane, not what the others took.
            match reply.and_then(|reply| parse_read_frame(reply).map_err(protocol_error)) {
                Ok(streams) => {
                    lane.conn = Some(wire);
                    work.extend(streams.into_iter().flat_map(|(queue, entries)| {
                        entries.into_iter().map(move |entry| Work {
                            queue: queue.clone(),
                            entry,
                            attempt: 1,
                        })
                    }));
                }
                Err(e) => match redirect(&e) {
                    // The queue's slot is on another node: read there next round, at once.
                    Redirect::MovedTo(node) => lane.reach.moved_to(node),
                    Redirect::Wait | Redirect::Reconnect => {
                        // Its groups are made again before it is read (a node that restarted
                        // empty, a queue key overwritten): a bad queue is then left out.
                        for queue in queues {
                            self.ready.remove(queue);
                        }
                        failed = Some(e);
                    }
                },
            }
        }
        match failed {
            // Redis is unreachable and the worker is stopping: nothing more was taken.
            Some(_) if stopping => Ok((work, true)),
            // What the other lanes took is kept; the failed lane reconnects next round.
            Some(e) if work.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!(worker = %self.shared.name, error = %e, "a queue read failed; reconnecting it");
                Ok((work, false))
            }
            None => Ok((work, stopping)),
        }
    }

    /// Up to `free` new requests from `queues` (more than `free` of them), one per queue,
    /// each read without blocking, starting one queue further each call so that none waits
    /// behind the others. A queue that fails is left to be made again next round; what was
    /// taken before is kept.
    async fn take_in_turn(&mut self, conn: &mut Conn, queues: &[String], free: usize) -> Vec<Work> {
        let group = self.shared.group();
        let start = self.turn;
        self.turn = self.turn.wrapping_add(1);
        let mut work = Vec::new();
        for k in 0..queues.len() {
            if work.len() >= free {
                break;
            }
            let queue = &queues[(start + k) % queues.len()];
            let reply: Result<Value, redis::RedisError> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(group)
                .arg(&self.shared.name)
                .arg("COUNT")
                .arg(1)
                .arg("STREAMS")
                .arg(queue)
                .arg(">")
                .query_async(conn)
                .await;
            match reply.map_err(Error::from).and_then(read_entries) {
                Ok(entries) => work.extend(entries.into_iter().map(|entry| Work {
                    queue: queue.clone(),
                    entry,
                    attempt: 1,
                })),
                Err(e) => {
                    tracing::warn!(worker = %self.shared.name, queue, error = %e, "a queue read failed; making its group again");
                    self.ready.remove(queue);
                }
            }
        }
        work
    }

    /// Claims up to `free` requests whose worker stopped refreshing them.
    async fn claim_abandoned(&mut self, free: usize) -> Vec<Work> {
        let mut conn = self.shared.client.conn();
        let mut work = Vec::new();
        for queue in self.queues.clone() {
            // What is claimed is ours (its idle time reset): a failure on a later queue must
            // not drop it, or it would wait unseen for another visibility timeout.
            if let Err(e) = self.claim_from(&mut conn, &queue, free, &mut work).await {
                tracing::warn!(worker = %self.shared.name, queue, error = %e, "cannot claim abandoned requests");
            }
        }
        work
    }

    /// Sends once each command a worker needs that an ACL may refuse — a script, and on every
    /// queue the group reads, claims and acknowledgements, each doing nothing — and fails on
    /// the first that Redis refuses for the user's permissions: such a worker would otherwise
    /// stay up serving nothing while callers wait. Other failures are left to the loops.
    pub(crate) async fn check_permissions(&self) -> Result<(), Error> {
        let mut conn = self.shared.client.conn();
        let group = self.shared.group();
        let name = &self.shared.name;
        let refused = |result: Result<(), Error>| match result {
            Err(e) if e.is_no_permission() => Err(e),
            _ => Ok(()),
        };
        let actors = self.shared.client.keys().actors();
        refused(script::live_workers(&mut conn, &actors).await.map(drop))?;
        for queue in &self.queues {
            let mut reads = redis::cmd("XREADGROUP");
            // This consumer's own pending requests (`0`), not new ones (`>`): nothing taken.
            reads.arg("GROUP").arg(group).arg(name).arg("COUNT").arg(1);
            reads.arg("STREAMS").arg(queue).arg("0");
            let mut claims = redis::cmd("XAUTOCLAIM");
            // Nothing has been idle that long.
            claims
                .arg(queue)
                .arg(group)
                .arg(name)
                .arg(i64::MAX)
                .arg("0-0");
            let mut acks = redis::cmd("XACK");
            acks.arg(queue).arg(group).arg("0-0");
            for cmd in [reads, claims, acks] {
                let sent = cmd.query_async::<Value>(&mut conn).await;
                refused(sent.map(drop).map_err(Error::from))?;
            }
        }
        Ok(())
    }

    /// Deletes this worker from each queue's group if nothing is pending under its name.
    pub(crate) async fn leave(&self) {
        let me = [self.shared.name.clone()];
        self.prune(0, Consumers::Only(&me)).await;
    }

    /// Deletes from each queue's group the consumers of workers that no longer advertise
    /// themselves (killed, or stopped holding requests that others have claimed since), idle
    /// for two visibility timeouts with nothing pending: they would stay there for good.
    async fn prune_dead(&self) {
        let mut conn = self.shared.client.conn();
        let actors = self.shared.client.keys().actors();
        let live = match script::live_workers(&mut conn, &actors).await {
            Ok(live) => live,
            Err(e) => {
                tracing::debug!(error = %e, "cannot tell the live workers");
                return;
            }
        };
        let idle = 2 * self.shared.client.options().visibility_timeout.as_millis() as u64;
        self.prune(idle, Consumers::Except(&live)).await;
    }

    /// Deletes the consumers `which` names from each queue's group, if idle for `idle_ms` with
    /// nothing pending ([`script::prune_consumers`]).
    async fn prune(&self, idle_ms: u64, which: Consumers<'_>) {
        let mut conn = self.shared.client.conn();
        let group = self.shared.group();
        for queue in &self.queues {
            match script::prune_consumers(&mut conn, queue, group, idle_ms, which).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(queue, deleted = n, "deleted idle consumers"),
                Err(e) => tracing::debug!(queue, error = %e, "cannot delete idle consumers"),
            }
        }
    }

    /// [`claim_abandoned`](Self::claim_abandoned) on one queue, adding to `work`: scans until
    /// `free` requests are claimed or the pending list is read round; a scan that claims
    /// nothing counts against SCANS_PER_SWEEP (each looks at up to ten times COUNT pending
    /// entries).
    async fn claim_from(
        &mut self,
        conn: &mut Conn,
        queue: &str,
        free: usize,
        work: &mut Vec<Work>,
    ) -> Result<(), Error> {
        let group = self.shared.group();
        let idle = self.shared.client.options().visibility_timeout.as_millis() as u64;
        let mut empty = 0;
        while work.len() < free && empty < SCANS_PER_SWEEP {
            let cursor = self.cursors.get(queue).map_or("0-0", String::as_str);
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(queue)
                .arg(group)
                .arg(&self.shared.name)
                .arg(idle)
                .arg(cursor)
                .arg("COUNT")
                .arg((free - work.len()).min(CLAIMS_PER_SCAN))
                .query_async(conn)
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
            self.claim_entries(conn, queue, entries, work).await;
            let wrapped = next == "0-0";
            self.cursors.insert(queue.to_owned(), next);
            if wrapped {
                break;
            }
            if !claimed {
                empty += 1;
            }
        }
        Ok(())
    }

    /// Turns claimed entries into work, with their attempt numbers (their delivery counts,
    /// looked up all at once: one round trip however many were claimed).
    async fn claim_entries(
        &self,
        conn: &mut Conn,
        queue: &str,
        entries: Vec<RawEntry>,
        work: &mut Vec<Work>,
    ) {
        let group = self.shared.group();
        let counts = join_all(entries.iter().map(|entry| {
            let mut conn = conn.clone();
            async move { delivery_count(&mut conn, queue, group, entry.id).await }
        }))
        .await;
        for (entry, count) in entries.into_iter().zip(counts) {
            // Already claimed: losing it over the lookup would strand it for another
            // visibility timeout. A claimed request is at least a second attempt.
            let attempt = count.unwrap_or_else(|e| {
                tracing::warn!(queue = %queue, entry = %entry.id, error = %e, "cannot read the delivery count; assuming attempt 2");
                2
            });
            tracing::info!(queue = %queue, entry = %entry.id, attempt, "re-running an abandoned request");
            work.push(Work {
                queue: queue.to_owned(),
                entry,
                attempt,
            });
        }
    }
}

/// The entries of a one-queue `XREADGROUP` reply (none when it is nil).
fn read_entries(reply: Value) -> Result<Vec<RawEntry>, Error> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        _ => return Err(protocol_error("a read reply is not an array".to_owned())),
    };
    let mut entries = Vec::new();
    for stream in streams {
        let Value::Array(mut pair) = stream else {
            return Err(protocol_error(
                "a read reply's stream is not a pair".to_owned(),
            ));
        };
        if pair.len() != 2 {
            return Err(protocol_error(
                "a read reply's stream is not a pair".to_owned(),
            ));
        }
        entries.extend(parse_entries(pair.swap_remove(1)).map_err(protocol_error)?);
    }
    Ok(entries)
}

/// How often to look for dead workers' requests: a fraction of the visibility timeout, so a
/// request is re-run soon after it becomes claimable.
fn sweep_every(shared: &Shared) -> Duration {
    (shared.client.options().visibility_timeout / 5)
        .clamp(Duration::from_millis(50), Duration::from_secs(2))
}

async fn delivery_count(
    conn: &mut Conn,
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
    Error::UnexpectedReply(why)
}
