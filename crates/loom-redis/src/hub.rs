//! [`Hub`]: the process's one stream reader. It passes each stream's entries, as raw
//! [`RawEntry`] batches, to that stream's [`Subscription`]; the reader (`reader.rs`) turns them
//! into chunks.
//!
//! A single task with its own connection issues one blocking
//! `XREAD … STREAMS k1 k2 … id1 id2 …` over every stream the process reads, and hands each
//! stream's entries to that stream's bounded channel. 10,000 streams cost one connection for
//! reading (plus the client's command connection for liveness checks), not 10,000. On a
//! cluster, which refuses an `XREAD` over keys of several slots, there is one such task per
//! bucket of runs (`keys.rs`), a *lane*, each on the node that owns its bucket: at most
//! [`BUCKETS`](crate::keys::BUCKETS) reading connections however many streams. When a
//! stream is added while the `XREAD` blocks, the hub wakes it with `CLIENT UNBLOCK` so the new
//! stream joins at once. A stream whose consumer is slow (its channel full) is left out of the
//! next `XREAD` until the consumer catches up, so it never holds up the others and the hub
//! never buffers more than [`SUB_BUFFER`] batches for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::codec::{parse_read_frame, EntryId, RawEntry};
use crate::conn::{redirect, Conn, Reach, Redirect, Topology};
use crate::error::Error;
use crate::wire::Wire;

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

/// How long a lane waits before reading again while its slot moves between nodes.
const MOVING_WAIT: Duration = Duration::from_millis(20);

/// How often a pending `CLIENT UNBLOCK` is repeated until the blocked `XREAD` returns (the
/// first one can arrive before the `XREAD` blocks).
const UNBLOCK_RETRY: Duration = Duration::from_millis(20);

/// The process's stream reader (see the module docs): one lane on a single server, one per
/// bucket on a cluster.
#[derive(Debug)]
pub(crate) struct Hub {
    lanes: Vec<Lane>,
}

/// One reading task's door: where streams join it, and how to wake it.
#[derive(Debug)]
struct Lane {
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
    /// The next batch of entries; `None` once the hub has stopped.
    pub(crate) async fn recv(&mut self) -> Option<Vec<RawEntry>> {
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
    /// Starts `lanes` hub tasks, reading with new connections to `topology`, sending
    /// `CLIENT UNBLOCK` on `commands`, and blocking each `XREAD` for at most `block`. They
    /// hold connections, not the client, so they stop once every client clone and every
    /// reader is gone. A lane connects only once it has a stream to read.
    pub(crate) fn start(topology: Topology, commands: Conn, lanes: usize, block: Duration) -> Self {
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (join, join_rx) = mpsc::channel(JOIN_BUFFER);
                let wake = Arc::new(Notify::new());
                let task = HubTask {
                    topology: topology.clone(),
                    commands: commands.clone(),
                    block,
                    join: join_rx,
                    wake: Arc::clone(&wake),
                    subs: Vec::new(),
                    reach: Reach::default(),
                };
                tokio::spawn(task.run());
                Lane { join, wake }
            })
            .collect();
        Self { lanes }
    }

    /// Starts reading stream `key` after entry `from`, on lane `lane` (see
    /// [`Client::lane`](crate::Client)).
    pub(crate) async fn subscribe(
        &self,
        key: String,
        lane: usize,
        from: EntryId,
    ) -> Result<Subscription, Error> {
        let lane = &self.lanes[lane % self.lanes.len()];
        let (tx, rx) = mpsc::channel(SUB_BUFFER);
        let paused = Arc::new(AtomicBool::new(false));
        let join = Join {
            key,
            from,
            tx,
            paused: Arc::clone(&paused),
        };
        lane.join
            .send(join)
            .await
            .map_err(|_| Error::ReaderStopped)?;
        Ok(Subscription {
            rx,
            paused,
            wake: Arc::clone(&lane.wake),
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
    topology: Topology,
    commands: Conn,
    /// On a cluster, where this lane's blocking read connects.
    reach: Reach,
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

    async fn run(mut self) {
        let mut conn: Option<Wire> = None;
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
            let mut wire = match conn.take() {
                Some(c) => c,
                None => match self.topology.blocking(self.block, &self.reach).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "stream reader cannot reach Redis; retrying");
                        self.reach.lost();
                        backoff.wait().await;
                        continue;
                    }
                },
            };
            let client_id = match wire.client_id().await {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(error = %e, "stream reader lost Redis; reconnecting");
                    backoff.wait().await;
                    continue;
                }
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
            let mut read = Box::pin(wire.query_frame(&cmd));
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
                        let done = self.commands.unblock(client_id, &round[0].0).await;
                        unblock_at = match done {
                            Ok(true) => None,
                            _ => Some(Instant::now() + UNBLOCK_RETRY),
                        };
                    }
                }
            };
            drop(read);
            match reply.map(parse_read_frame) {
                Ok(Ok(entries)) => {
                    backoff.reset();
                    // A reply under `COUNT` for every stream read them all to their end: the
                    // next `XREAD` will block, so sending it can wait until the readers have
                    // taken these entries. A full one means more is waiting, and the next read
                    // goes out first, to overlap with the readers' work.
                    let caught_up = entries.iter().all(|(_, e)| e.len() < READ_COUNT);
                    self.dispatch(entries);
                    if caught_up {
                        tokio::task::yield_now().await;
                    }
                    conn = Some(wire);
                }
                Ok(Err(why)) => {
                    tracing::error!(%why, "unreadable XREAD reply; reconnecting");
                    backoff.wait().await;
                }
                Err(e) => match redirect(&e) {
                    Redirect::MovedTo(node) => {
                        tracing::debug!(%node, "stream reader follows its slot");
                        self.reach.moved_to(node);
                    }
                    Redirect::Wait => {
                        tokio::time::sleep(MOVING_WAIT).await;
                        conn = Some(wire);
                    }
                    Redirect::Reconnect => {
                        tracing::warn!(error = %e, "stream reader lost Redis; reconnecting");
                        self.reach.lost();
                        backoff.wait().await;
                    }
                },
            }
        }
    }
}
