//! [`Hub`]: the process's one stream reader. It passes each stream's entries, as raw
//! [`RawEntry`] batches, to that stream's [`Subscription`]; the reader (`reader.rs`) turns them
//! into chunks.
//!
//! A single task with its own connection issues one blocking
//! `XREAD … STREAMS k1 k2 … id1 id2 …` over the streams the process reads (all of them, or
//! with many, their bells and the streams those named: **Bells** below), and hands each
//! stream's entries to that stream's bounded channel. 10,000 streams cost one connection for
//! reading (plus the client's command connection for liveness checks), not 10,000. On a
//! cluster, which refuses an `XREAD` over keys of several slots, there is one such task per
//! bucket of runs (`keys.rs`), a *lane*, each on the node that owns its bucket: at most
//! [`BUCKETS`](crate::keys::BUCKETS) reading connections however many streams. When a
//! stream is added while the `XREAD` blocks, the hub wakes it with `CLIENT UNBLOCK` so the new
//! stream joins at once. A stream whose consumer is slow (its channel full) is left out of the
//! next `XREAD` until the consumer catches up, so it never holds up the others and the hub
//! never buffers more than [`SUB_BUFFER`] batches for it. An `XREAD` that comes back empty
//! (timed out, or woken) says that none of the streams it named had more at that instant.
//!
//! **Bells.** An `XREAD` costs Redis work for every stream it names, each time (about 0.7 µs a
//! stream to look up, block on and unblock), so one over thousands of quiet streams, repeated
//! for every chunk that arrives, would cost Redis more than the chunks themselves. Every write
//! to a run's stream therefore also rings its bucket's bell ([`Keys::bell`]: an entry naming
//! the stream) if the bell exists, and a task reading more than [`BELLS_ABOVE`] streams keeps
//! the bells of its streams' buckets in existence (a TTL it renews) and blocks on them instead,
//! naming in each `XREAD` only the streams a bell named since (plus those that just joined, or
//! were left out while their reader was slow, or came back with a full `COUNT`). Such a
//! stream's chunk then takes two round trips, the bell's and the read's; below [`BELLS_BELOW`]
//! streams the task reads them all directly again. Whatever a bell may have missed (trimmed
//! past, written by something that does not ring), a read of every stream once per `block` (the
//! blocking timeout) finds. The bells' positions are read in the same `XREAD` as the streams,
//! so a write that is not in a stream's read rang after the bell's position that read returned.
//! When Redis refuses to keep a bell (out of memory, an ACL), the task reads every stream
//! directly for a while: bells save work, nothing depends on them.
//!
//! [`Keys::bell`]: crate::Keys::bell

use std::collections::{HashMap, HashSet};
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::codec::{parse_read_frame, EntryId, RawEntry};
use crate::conn::{redirect, Conn, Reach, Redirect, Topology};
use crate::error::Error;
use crate::script;
use crate::wire::Wire;

/// Entries one `XREAD` fetches per stream at most: large enough that a fast stream moves in
/// few round trips, small enough that one reply stays well under a megabyte per stream.
const READ_COUNT: usize = 1024;

/// Entries one `XREAD` fetches at most over all its streams, about 6 MiB of tokens: a round
/// naming many streams with a backlog each (replays from their start, a sweep) asks for fewer
/// per stream, down to [`MIN_READ_COUNT`] — the bound holds up to 4,096 streams a round, and
/// past that a reply asks for 16 entries a stream.
const READ_BUDGET: usize = 64 * 1024;

/// The fewest entries one `XREAD` fetches per stream.
const MIN_READ_COUNT: usize = 16;

/// The `COUNT` of an `XREAD` naming `streams` streams (see [`READ_BUDGET`]).
fn read_count(streams: usize) -> usize {
    (READ_BUDGET / streams.max(1)).clamp(MIN_READ_COUNT, READ_COUNT)
}

/// Batches (of up to [`READ_COUNT`] entries) buffered per stream between the hub and its
/// consumer. Two let the hub read the next batch while the consumer works on one; more would
/// only buffer what a slow consumer cannot take.
const SUB_BUFFER: usize = 2;

/// Streams waiting to join the hub: joining is cheap, the bound only keeps a burst of
/// thousands of new streams from queueing without limit.
const JOIN_BUFFER: usize = 1024;

/// A task reading more streams than this waits on their bells (see the module docs).
const BELLS_ABOVE: usize = 64;

/// A task waiting on bells reads its streams directly again once it reads fewer than this.
const BELLS_BELOW: usize = 32;

/// A bell a task waits on is kept alive for this many `block`s past its last renewal (one
/// per `block`): a task stalled that long finds its streams in its next full read.
const BELL_KEPT_FOR: u32 = 10;

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
    /// Its bucket's bell.
    bell: String,
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
        if self.paused.swap(false, Ordering::SeqCst) {
            // The hub left this stream out while its channel was full: ask it back in.
            self.wake.notify_one();
        }
        batch
    }
}

/// A stream the hub reads, and how far.
struct Sub {
    key: String,
    bell: String,
    last: EntryId,
    /// While the task waits on bells: whether the next `XREAD` must name this stream (it
    /// joined, was left out, came back full, or its bell rang).
    dirty: bool,
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
                    bells: None,
                    swept: Instant::now(),
                    relearn: false,
                    bells_after: Instant::now(),
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
        bell: String,
        lane: usize,
        from: EntryId,
    ) -> Result<Subscription, Error> {
        let lane = &self.lanes[lane % self.lanes.len()];
        let (tx, rx) = mpsc::channel(SUB_BUFFER);
        let paused = Arc::new(AtomicBool::new(false));
        let join = Join {
            key,
            bell,
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

/// Whether `e` is Redis refusing a command (out of memory, an ACL, a key of another type)
/// rather than the connection failing or a cluster redirecting it.
fn refused(e: &Error) -> bool {
    use redis::ErrorKind;
    let Error::Redis(redis) = e else {
        return false;
    };
    matches!(redirect(e), Redirect::Reconnect)
        && matches!(redis.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

/// The stream a bell's entry names (its field `s`).
fn rung_stream(entry: &RawEntry) -> Option<Vec<u8>> {
    let mut fields = entry.fields.iter();
    while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
        if field == b"s" {
            return Some(value.to_vec());
        }
    }
    None
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
    /// While the task waits on bells: each bell's position (the last entry read).
    bells: Option<HashMap<String, EntryId>>,
    /// While the task waits on bells: when every stream was last read, and its bells renewed.
    swept: Instant,
    /// Streams joined or left since the bells were last kept.
    relearn: bool,
    /// Not before then does the task wait on bells (Redis refused to keep one).
    bells_after: Instant,
}

impl HubTask {
    fn add(&mut self, join: Join) {
        self.relearn = true;
        self.subs.push(Sub {
            key: join.key,
            bell: join.bell,
            last: join.from,
            dirty: true,
            tx: join.tx,
            paused: join.paused,
            in_round: false,
        });
    }

    /// Waits on bells above [`BELLS_ABOVE`] streams, reads directly below [`BELLS_BELOW`].
    fn choose_mode(&mut self) {
        let before = self.subs.len();
        self.subs.retain(|s| !s.tx.is_closed());
        self.relearn |= self.subs.len() != before;
        match &self.bells {
            None if self.subs.len() > BELLS_ABOVE && Instant::now() >= self.bells_after => {
                self.bells = Some(HashMap::new());
                self.relearn = true;
                // The first read on bells names every stream: nothing before it is missed.
                for sub in &mut self.subs {
                    sub.dirty = true;
                }
            }
            Some(_) if self.subs.len() < BELLS_BELOW => self.bells = None,
            _ => {}
        }
    }

    /// Marks the streams the next `XREAD` covers and returns `(key, from)` for each key,
    /// whether any stream has room for more (with bells, the `XREAD` then waits on them even
    /// when it names no stream), and whether this round reads every stream (with bells, once
    /// per `block`; then the bells are renewed too).
    fn plan_round(&mut self) -> (Vec<(String, EntryId)>, bool, bool) {
        let sweep = self.bells.is_none() || self.swept.elapsed() >= self.block;
        if sweep {
            self.swept = Instant::now();
        }
        let mut room = false;
        let mut from: HashMap<&str, EntryId> = HashMap::new();
        for sub in &mut self.subs {
            let mut open = sub.tx.capacity() > 0;
            if !open {
                // Paused first, then looked at again: a reader that took its batches in
                // between found the flag down and asked for nothing, so it is read now.
                // (`SeqCst` here and in the reader's swap: each side writes one thing and
                // reads the other's, which weaker orderings let both miss.)
                sub.paused.store(true, Ordering::SeqCst);
                open = sub.tx.capacity() > 0;
                if open {
                    sub.paused.store(false, Ordering::SeqCst);
                }
            }
            room |= open;
            sub.in_round = open && (sweep || sub.dirty);
            if sub.in_round {
                let at = from.entry(&sub.key).or_insert(sub.last);
                *at = (*at).min(sub.last);
            } else if !open {
                // Read again, from where it stopped, once its reader has room.
                sub.dirty = true;
            }
        }
        let round = from.into_iter().map(|(k, id)| (k.to_owned(), id)).collect();
        (round, room, sweep)
    }

    /// With bells: forgets those no stream rings any more, keeps alive each one its streams
    /// ring (when `renew`, in the rounds that read every stream; all in one call:
    /// [`script::keep_bells`]), and reads a new one from the entry that call adds (its
    /// streams are dirty: they joined since, or every stream is after a switch). Returns each
    /// bell with its position.
    async fn keep_bells(
        &mut self,
        wire: &mut Wire,
        renew: bool,
    ) -> Result<Vec<(String, EntryId)>, Error> {
        let Some(bells) = &mut self.bells else {
            return Ok(Vec::new());
        };
        if mem::take(&mut self.relearn) || renew {
            let rung: HashSet<&str> = self.subs.iter().map(|s| s.bell.as_str()).collect();
            bells.retain(|bell, _| rung.contains(bell.as_str()));
            let keep: Vec<&str> = rung
                .into_iter()
                .filter(|bell| renew || !bells.contains_key(*bell))
                .collect();
            let kept_for = self.block.saturating_mul(BELL_KEPT_FOR);
            let ttl = u64::try_from(kept_for.as_millis()).unwrap_or(u64::MAX);
            if !keep.is_empty() {
                match script::keep_bells(wire, &keep, ttl).await {
                    Ok(ids) => {
                        for (bell, at) in keep.into_iter().zip(ids) {
                            bells.entry(bell.to_owned()).or_insert(at);
                        }
                    }
                    Err(e) => {
                        self.relearn = true;
                        return Err(e);
                    }
                }
            }
        }
        Ok(bells.iter().map(|(k, at)| (k.clone(), *at)).collect())
    }

    fn dispatch(&mut self, mut reply: Vec<(String, Vec<RawEntry>)>, count: usize) {
        let mut rung = HashSet::new();
        if let Some(bells) = &mut self.bells {
            reply.retain(|(key, entries)| {
                let Some(at) = bells.get_mut(key) else {
                    return true;
                };
                if let Some(last) = entries.last() {
                    *at = last.id;
                }
                rung.extend(entries.iter().filter_map(rung_stream));
                false
            });
            for sub in &mut self.subs {
                // Read to its end as of this reply, unless it comes back full (below).
                if sub.in_round {
                    sub.dirty = false;
                }
            }
        }
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
            let full = entries.len() >= count;
            for i in readers {
                let sub = &mut self.subs[i];
                let fresh: Vec<RawEntry> = entries
                    .iter()
                    .filter(|e| e.id > sub.last)
                    .cloned()
                    .collect();
                deliver(sub, fresh);
                sub.dirty |= full;
            }
            let owner = &mut self.subs[owner];
            entries.retain(|e| e.id > owner.last);
            deliver(owner, entries);
            owner.dirty |= full;
        }
        if !rung.is_empty() {
            for sub in &mut self.subs {
                sub.dirty |= rung.contains(sub.key.as_bytes());
            }
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
            self.choose_mode();
            let (mut round, room, sweep) = self.plan_round();
            if round.is_empty() && !(room && self.bells.is_some()) {
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
                    // A node that takes the connection but does not answer (hung, or a dead
                    // master's address now held by something else): try the next one, or the
                    // lane would come back to it for ever.
                    tracing::warn!(error = %e, "stream reader lost Redis; reconnecting");
                    self.reach.lost();
                    backoff.wait().await;
                    continue;
                }
            };
            match self.keep_bells(&mut wire, sweep).await {
                Ok(bells) => round.extend(bells),
                Err(e) if refused(&e) => {
                    // Bells are a saving, not a need: read every stream for a while.
                    tracing::warn!(error = %e, "stream reader cannot keep its bells; reading every stream");
                    self.bells = None;
                    let pause = self.block.saturating_mul(BELL_KEPT_FOR);
                    self.bells_after = Instant::now()
                        .checked_add(pause)
                        .unwrap_or_else(Instant::now);
                    conn = Some(wire);
                    continue;
                }
                Err(e) => {
                    conn = self.recover(&e, wire, &mut backoff).await;
                    continue;
                }
            }
            let count = read_count(round.len());
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(count)
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
                    let caught_up = entries.iter().all(|(_, e)| e.len() < count);
                    self.dispatch(entries, count);
                    if caught_up {
                        tokio::task::yield_now().await;
                    }
                    conn = Some(wire);
                }
                Ok(Err(why)) => {
                    tracing::error!(%why, "unreadable XREAD reply; reconnecting");
                    backoff.wait().await;
                }
                Err(e) => conn = self.recover(&e, wire, &mut backoff).await,
            }
        }
    }

    /// After a command of the lane failed with `e`: follows its slot to another node, waits
    /// out a migration (keeping `wire`, returned), or forgets `wire` to reconnect.
    async fn recover(&mut self, e: &Error, wire: Wire, backoff: &mut Backoff) -> Option<Wire> {
        match redirect(e) {
            Redirect::MovedTo(node) => {
                tracing::debug!(%node, "stream reader follows its slot");
                self.reach.moved_to(node);
                None
            }
            Redirect::Wait => {
                tokio::time::sleep(MOVING_WAIT).await;
                Some(wire)
            }
            Redirect::Reconnect => {
                tracing::warn!(error = %e, "stream reader lost Redis; reconnecting");
                self.reach.lost();
                backoff.wait().await;
                None
            }
        }
    }
}
