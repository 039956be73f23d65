//! [`Client`]: one process's handle on a Loom Redis, shared by its invokers, readers and
//! workers, with the timing knobs ([`ClientOptions`]) every party must agree on. It is the
//! bottom layer: the connections and the options, which every layer above is given.
//!
//! A `Client` holds one multiplexed command connection ([`Conn`]: on one server a
//! `ConnectionManager`, reconnecting with backoff; on a cluster redis-rs's cluster connection)
//! and, once the first stream is read, the process's stream reader ([`Hub`], `hub.rs`) with
//! its own connection for the blocking `XREAD` (one per bucket on a cluster). Workers open
//! more connections of their own (blocking `XREADGROUP`, cancel subscription), and runs'
//! writers up to [`WRITER_CONNECTIONS`] (see [`Client::writer_wire`]).
//!
//! [`Client::connect`] finds out what the URL points at: a list of URLs is a cluster's nodes;
//! one URL is a cluster if that server answers `CLUSTER INFO`, else a single server.
//!
//! Reading streams ([`Client::tail`]) is added by `reader.rs` and starting runs
//! ([`Client::invoker`]) by `remote.rs`, the layers above.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use loom_core::{ActorError, ErrorInfo};
use redis::aio::ConnectionManagerConfig;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::conn::{list_nodes, slot, Conn, Masters, Reach, Topology};
use crate::error::Error;
use crate::hub::Hub;
use crate::keys::{bucket, check_name, CancelReason, Keys, BUCKETS, DEFAULT_PREFIX};
use crate::script::{self, RunKeys};
use crate::wire::{node_of, Reply, Wire, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

/// Timing and naming that workers and readers of one Redis must agree on.
///
/// The defaults keep `lease_ttl + visibility_timeout` at 13 s, so that with the reader's
/// check interval (`lease_refresh`) a reader ends with `error/worker_lost` within DESIGN.md's
/// 15 s of its worker's death. Tests shorten them.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The key prefix (default `loom:`).
    pub prefix: String,
    /// How long a worker's lease on a run lasts without a refresh (default 5 s). Short, so a
    /// dead worker is noticed soon; three refreshes fit in it, so one slow round trip does not
    /// lose it.
    pub lease_ttl: Duration,
    /// How often a worker refreshes its leases and the idle time of its pending requests
    /// (default 1.5 s).
    pub lease_refresh: Duration,
    /// How long a request may sit unrefreshed in a dead worker's pending list before another
    /// worker re-runs it, and how long a reader waits after a lease expired for a new attempt
    /// to start (default 8 s).
    pub visibility_timeout: Duration,
    /// How long a finished (or abandoned) chunk stream stays readable (default 3,600 s), and
    /// with it a run's record and its cancel mark. At least `pickup_timeout +
    /// visibility_timeout`: a request no worker took up in time is ended and marked cancelled,
    /// and the mark must outlast the request's wait, or a worker freed later would run it.
    pub stream_ttl: Duration,
    /// How long a request may wait in the queue for a worker before its reader gives up with
    /// `error/worker_lost` (default 30 s).
    pub pickup_timeout: Duration,
    /// How long after a run's deadline its reader waits for the worker's `error/timeout`
    /// before writing one itself (default 2 s).
    pub deadline_grace: Duration,
    /// How long a reader waits for an unreachable Redis to answer again — a restart, a
    /// cluster's failover — before it ends its stream with `error/upstream` (default 30 s: a
    /// failover takes the cluster's `cluster-node-timeout`, 15 s unless configured, and a few
    /// seconds more). When Redis answers again, the run's producer gets as long to show it is
    /// still there as a worker that just renewed its lease: a re-run of the request, whose
    /// worker lost its writes meanwhile, is read on, not ended `worker_lost`.
    pub outage_timeout: Duration,
    /// How long the reader's `XREAD` blocks when nothing arrives (default 2 s). New streams
    /// join at once regardless: the reader is woken with `CLIENT UNBLOCK`.
    pub read_block: Duration,
    /// How many queues each actor type has (default 1). More spread one type's requests over
    /// a cluster's nodes (see [`Keys::queue`]); callers and workers must agree, or requests
    /// wait in shards no worker reads.
    pub queue_shards: u16,
    /// The most requests one queue (one shard of an actor type's) may hold, waiting or
    /// running, before a new one is refused with [`Error::QueueFull`] (default `None`: no
    /// bound). Checked by whoever queues, atomically with the queueing: give every caller the
    /// same bound.
    pub max_queued: Option<u64>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            lease_ttl: Duration::from_secs(5),
            lease_refresh: Duration::from_millis(1500),
            visibility_timeout: Duration::from_secs(8),
            stream_ttl: Duration::from_secs(3600),
            pickup_timeout: Duration::from_secs(30),
            deadline_grace: Duration::from_secs(2),
            outage_timeout: Duration::from_secs(30),
            read_block: Duration::from_secs(2),
            queue_shards: 1,
            max_queued: None,
        }
    }
}

impl ClientOptions {
    fn check(&self) -> Result<(), Error> {
        let bad = |msg: &str| Err(Error::InvalidOptions(msg.to_owned()));
        if self.lease_refresh.is_zero() || self.lease_refresh * 2 > self.lease_ttl {
            return bad("lease_refresh must be non-zero and at most half of lease_ttl");
        }
        if self.visibility_timeout < self.lease_refresh * 2 {
            return bad("visibility_timeout must be at least twice lease_refresh");
        }
        if self.stream_ttl < Duration::from_secs(1)
            || self.stream_ttl < self.pickup_timeout + self.visibility_timeout
        {
            return bad("stream_ttl must be at least 1 s and pickup_timeout + visibility_timeout");
        }
        if self.read_block < Duration::from_millis(10) {
            return bad("read_block must be at least 10 ms");
        }
        if self.queue_shards == 0 || self.queue_shards > 1024 {
            return bad("queue_shards must be between 1 and 1024");
        }
        if self.max_queued == Some(0) {
            return bad("max_queued must be at least 1");
        }
        Ok(())
    }
}

/// A process's connection to a Loom Redis. Cheap to clone; clones share connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), loom_redis::Error> {
/// let client = loom_redis::Client::connect("redis://127.0.0.1:6379").await?;
/// let mut chunks = client.tail("0b7c6f0e-8a1d-4c1e-9d55-3f1c2a7e9b10", None).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    topology: Topology,
    conn: Conn,
    keys: Keys,
    options: ClientOptions,
    hub: OnceCell<Hub>,
    /// The writers' shared connection, opened at the first batch that needs it (see
    /// [`Client::writers_conn`]).
    writers_conn: OnceCell<Conn>,
    /// Writers' connections between two batches (see [`Client::writer_wire`]).
    idle_writers: Mutex<Vec<WriterWire>>,
    /// One permit for each writer connection open, idle or busy: at most
    /// [`WRITER_CONNECTIONS`].
    writer_permits: Arc<Semaphore>,
    /// On a cluster, the master each slot's writers connect to (see [`Masters`]).
    masters: Mutex<Masters>,
    /// The tasks that send a remote stream's cancel when its caller cancels or drops it
    /// (see [`Client::flush_cancels`]).
    cancels: TaskTracker,
    /// Cancels of those tasks that failed since the last [`Client::flush_cancels`].
    cancels_failed: std::sync::atomic::AtomicUsize,
    /// The runs whose caller's presence this client renews (see [`Client::present`]).
    presence: std::sync::OnceLock<Presence>,
}

/// The runs a client reads as their caller, and the one task that renews all their
/// presence keys each [`lease_refresh`](ClientOptions::lease_refresh), not a task and a timer
/// per run (a process may read 10,000 runs). It stops with the client.
struct Presence {
    runs: Arc<Mutex<BTreeSet<String>>>,
    _stop: tokio_util::sync::DropGuard,
}

/// A run's caller's presence, renewed while this lives (see [`Client::present`]).
pub(crate) struct Present {
    runs: Arc<Mutex<BTreeSet<String>>>,
    run_id: String,
}

impl Drop for Present {
    fn drop(&mut self) {
        lock(&self.runs).remove(&self.run_id);
    }
}

/// The most connections a client's writers keep open: a batch takes one only while its reply
/// is outstanding, so what it bounds is the connections, however many runs write. A batch
/// that finds them all busy goes through the writers' shared connection.
pub const WRITER_CONNECTIONS: usize = 32;

/// A writer's own connection, holding its place among the client's [`WRITER_CONNECTIONS`]
/// until it is closed.
pub(crate) struct WriterWire {
    /// The connection.
    pub(crate) wire: Wire,
    _permit: OwnedSemaphorePermit,
}

/// The name a writer's own connection gives itself (`CLIENT SETNAME`), so that `CLIENT LIST`
/// tells an operator what it is.
const WRITER_NAME: &str = "loom-writer";

/// Locks `mutex`; a panic elsewhere while it was held leaves what it guards whole here (each
/// change is one insert, push, removal or clear), so a poisoned lock is taken as it is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("keys", &self.inner.keys)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port/db`) with the
    /// default options, and checks that the server answers this user. A server in cluster
    /// mode is used as a cluster; so is a comma-separated list of node URLs
    /// (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`), of which any live one will do (a
    /// comma inside a password is written `%2C`). A
    /// malformed URL, or a `rediss://` one (this build has no TLS), is
    /// [`Error::InvalidOptions`] (`bad_input`); an unreachable server or a refused user is
    /// [`Error::Redis`] (`upstream`).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects to the Redis at `url` with `options`.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Self, Error> {
        options.check()?;
        let keys = Keys::new(options.prefix.clone())?;
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        let nodes = urls
            .iter()
            .enumerate()
            .map(|(i, u)| {
                // The URL itself is not quoted: it may hold a password.
                let which = match urls.len() {
                    1 => String::new(),
                    n => format!(" (entry {} of {n} in the list)", i + 1),
                };
                let invalid =
                    |why: String| Error::InvalidOptions(format!("invalid Redis URL{which}: {why}"));
                if u.is_empty() {
                    return Err(invalid("it is empty".into()));
                }
                // The redis crate's schemes; its own error for another says only that the URL
                // did not parse.
                let schemes = [
                    "redis://",
                    "rediss://",
                    "unix://",
                    "redis+unix://",
                    "valkey://",
                    "valkeys://",
                    "valkey+unix://",
                ];
                let scheme_of =
                    |url: &str| url.get(..url.find("://")? + 3).map(str::to_ascii_lowercase);
                if !scheme_of(u).is_some_and(|scheme| schemes.contains(&scheme.as_str())) {
                    return Err(invalid("it must start with redis:// or unix://".into()));
                }
                redis::Client::open(*u).map_err(|e| invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (topology, conn, masters) = match <[redis::Client; 1]>::try_from(nodes) {
            Ok([redis]) => {
                let info = redis.get_connection_info();
                let mut conn = managed(&redis).await.map_err(|e| not_redis(info, e))?;
                // A server that wants a password answers commands, not the connection, with
                // NOAUTH.
                redis::cmd("PING")
                    .exec_async(&mut conn)
                    .await
                    .map_err(|e| not_redis(info, e.into()))?;
                check_version(&mut conn).await?;
                // A server without cluster support refuses `CLUSTER INFO`; an ACL user may
                // too (it is not among the dangerous commands, `INFO` is).
                let cluster: Result<String, _> = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await;
                if cluster.is_ok() {
                    connect_cluster(vec![redis]).await?
                } else {
                    (
                        Topology::Single(redis),
                        Conn::Managed(conn),
                        Masters::default(),
                    )
                }
            }
            Err(nodes) => connect_cluster(answering(nodes).await?).await?,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                topology,
                conn,
                keys,
                options,
                hub: OnceCell::new(),
                writers_conn: OnceCell::new(),
                idle_writers: Mutex::new(Vec::new()),
                writer_permits: Arc::new(Semaphore::new(WRITER_CONNECTIONS)),
                masters: Mutex::new(masters),
                cancels: TaskTracker::new(),
                cancels_failed: std::sync::atomic::AtomicUsize::new(0),
                presence: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Waits, at most `within`, until the cancel of every remote stream this client's
    /// callers cancelled or dropped has reached Redis. A process about to exit calls it
    /// last: the cancels are sent by tasks of their own, which a runtime shutting down would
    /// abort. Returns how many did not reach Redis (it could not be reached, or not in time):
    /// their runs' workers cancel them once they find their caller gone (its presence lapses).
    pub async fn flush_cancels(&self, within: Duration) -> usize {
        let cancels = &self.inner.cancels;
        cancels.close();
        let left = match tokio::time::timeout(within, cancels.wait()).await {
            Ok(()) => 0,
            Err(_) => cancels.len(),
        };
        cancels.reopen();
        left + self
            .inner
            .cancels_failed
            .swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a cancel that could not be sent (see [`flush_cancels`](Self::flush_cancels)).
    pub(crate) fn cancel_failed(&self) {
        self.inner
            .cancels_failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Renews the presence of run `run_id`'s caller (`Keys::caller`, set when it was queued)
    /// until the returned guard is dropped: its worker cancels it once the presence lapses.
    pub(crate) fn present(&self, run_id: &str) -> Present {
        let presence = self.inner.presence.get_or_init(|| {
            let runs = Arc::new(Mutex::new(BTreeSet::new()));
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn(renew_presence(
                self.conn(),
                self.keys().clone(),
                self.options().clone(),
                Arc::clone(&runs),
                stop.clone(),
            ));
            Presence {
                runs,
                _stop: stop.drop_guard(),
            }
        });
        lock(&presence.runs).insert(run_id.to_owned());
        Present {
            runs: Arc::clone(&presence.runs),
            run_id: run_id.to_owned(),
        }
    }

    /// Runs `cancel` (a stream's cancel forwarding) as one of the tasks
    /// [`flush_cancels`](Self::flush_cancels) waits for.
    pub(crate) fn spawn_cancel(&self, cancel: impl Future<Output = ()> + Send + 'static) {
        self.inner.cancels.spawn(cancel);
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The timing options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The actor types some live worker serves on this client's queues: every worker says
    /// which it serves, and on how many queue shards, on each heartbeat, and a type counts for
    /// one lease (`lease_ttl`) after the last worker said so. A server checks an actor type
    /// against this before queueing a request no worker would take.
    pub async fn served_actors(&self) -> Result<BTreeSet<String>, Error> {
        let shards = self.inner.options.queue_shards;
        let served = self.served().await?;
        Ok(served
            .into_iter()
            .filter_map(|(actor, by)| by.contains(&shards).then_some(actor))
            .collect())
    }

    /// The numbers of queue shards ([`ClientOptions::queue_shards`]) that live workers serve
    /// `actor` on: empty when none serves it; without this client's own, its requests would
    /// wait in queues no worker reads (the caller and the workers disagree on the number).
    pub async fn queue_shards_served(&self, actor: &str) -> Result<BTreeSet<u16>, Error> {
        let mut served = self.served().await?;
        Ok(served.remove(actor).unwrap_or_default())
    }

    /// Each actor type live workers serve, with the numbers of queue shards they serve it on
    /// (see [`queue_shards_served`](Self::queue_shards_served)).
    pub async fn served(&self) -> Result<BTreeMap<String, BTreeSet<u16>>, Error> {
        let key = self.keys().actors();
        self.retried(|| async { script::served(&mut self.conn(), &key).await })
            .await
    }

    /// Runs `op` — a read, or a write that may land twice — once more when it failed on a
    /// dropped connection. After a Redis restart or a failover the shared connection learns
    /// that its socket is gone only when a command fails on it, and reconnects for the next:
    /// without this, the first request of a server idle through the restart failed.
    pub(crate) async fn retried<T, F: Future<Output = Result<T, Error>>>(
        &self,
        op: impl Fn() -> F,
    ) -> Result<T, Error> {
        match op().await {
            Err(Error::Redis(e)) if e.is_connection_dropped() => {
                tracing::debug!(error = %e, "the connection to Redis had dropped; once more");
                op().await
            }
            result => result,
        }
    }

    /// Asks run `run_id` to stop: a run no worker holds (its request still queued, or between
    /// two attempts) gets its `error/cancelled` terminal here at once — no worker would write
    /// it before one took the request up, and the one that does then leaves it; a run a
    /// worker holds gets its cancel key set and the id published, and that worker ends it
    /// with `error/cancelled`. Nothing is written after a terminal chunk. With
    /// [`ClientOptions::max_queued`], a request cancelled while it waits also leaves its
    /// queue at once, giving its place back.
    pub async fn cancel(&self, run_id: &str) -> Result<(), Error> {
        check_name("run id", run_id)?;
        let keys = self.keys();
        let mut conn = self.conn();
        let ttl = self.inner.options.stream_ttl.as_secs();
        let error = ErrorInfo::from(&ActorError::cancelled());
        let error = serde_json::to_string(&error).unwrap_or_else(|_| "null".to_owned());
        let run = RunKeys::new(keys, run_id);
        // Safe twice: a second try finds the terminal the first one wrote.
        let ended = self
            .retried(|| async {
                let reason = CancelReason::Cancelled;
                script::end_run(&mut self.conn(), &run, ttl, reason, &error, 0).await
            })
            .await?;
        // A bounded queue gives a request cancelled while it waits its place back at once,
        // rather than when a worker reaches it and leaves it.
        if let (Some(_), Some(limit)) = (ended, self.inner.options.max_queued) {
            let actor: Option<String> = redis::cmd("HGET")
                .arg(keys.run(run_id))
                .arg("actor")
                .query_async(&mut conn)
                .await?;
            if let Some(actor) = actor.filter(|a| check_name("actor type", a).is_ok()) {
                let queue = keys.queue_for(&actor, run_id, self.inner.options.queue_shards);
                script::dequeue(&mut conn, &queue, run_id, limit).await?;
            }
        }
        // Not one pipeline: a cluster routes `PUBLISH` by its channel, as if it were a key of
        // another slot (and broadcasts it to every node). The key first, so a worker that
        // hears the message finds it.
        redis::cmd("SET")
            .arg(keys.cancel(run_id))
            .arg(CancelReason::Cancelled.as_str())
            .arg("EX")
            .arg(self.inner.options.stream_ttl.as_secs())
            .exec_async(&mut conn)
            .await?;
        redis::cmd("PUBLISH")
            .arg(keys.cancel_channel())
            .arg(run_id)
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    /// `err`, or [`Error::ClusterDown`] when `err` is Redis not answering (see
    /// [`Error::is_unreachable`]) on a cluster that reports itself down: on a cluster, commands
    /// to slots no node serves are retried until they time out, which alone says nothing of
    /// why. Asks the cluster's nodes in turn, each on a connection of its own, until one
    /// answers `CLUSTER INFO`, for at most [`EXPLAIN_WITHIN`] in all; for a message to a
    /// user, after a command failed.
    pub async fn explain(&self, err: Error) -> Error {
        let Topology::Cluster(nodes) = &self.inner.topology else {
            return err;
        };
        if !err.is_unreachable() || matches!(err, Error::ClusterDown { .. }) {
            return err;
        }
        let down = async {
            for node in nodes {
                let info = node.get_connection_info();
                let Some(Ok(Reply::Text(text))) = ask_cluster(info, "INFO").await else {
                    continue;
                };
                let down = String::from_utf8_lossy(&text)
                    .lines()
                    .any(|line| line.trim() == "cluster_state:fail");
                return down.then(|| node_of(info));
            }
            None
        };
        match tokio::time::timeout(EXPLAIN_WITHIN, down).await {
            Ok(Some(node)) => Error::ClusterDown { node },
            _ => err,
        }
    }

    /// Whether this client talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.conn.is_cluster()
    }

    /// A connection of a writer's own (`publisher.rs`) for one batch of the stream `key`, so
    /// that the batch goes to Redis from the run's own task rather than through the shared
    /// connection's task (or on a cluster, the cluster connection's and its node's). On a
    /// cluster it reaches the master of `key`'s slot as far as the client knows ([`Masters`]:
    /// from `CLUSTER NODES`, corrected by [`writer_moved`]); `None` while no live master of
    /// the slot is known.
    ///
    /// An idle one if there is one; else a new one, named `loom-writer` where the server
    /// allows it, while fewer than [`WRITER_CONNECTIONS`] are open (when they all are and one
    /// is idle but reaches another node, that one is closed for it). `None` when they are all
    /// busy: the batch goes through the writers' shared connection.
    ///
    /// [`writer_moved`]: Self::writer_moved
    pub(crate) async fn writer_wire(&self, key: &str) -> Result<Option<WriterWire>, Error> {
        // On one server every idle connection will do; on a cluster, one to the slot's node.
        let info = match &self.inner.topology {
            Topology::Single(_) => None,
            Topology::Cluster(_) => {
                let Some(node) = self.writer_node(slot(key)).await else {
                    return Ok(None);
                };
                Some(self.inner.topology.info(&Reach::at(node))?)
            }
        };
        let node = info.as_ref().map(node_of);
        let permit = {
            let mut idle = lock(&self.inner.idle_writers);
            let fits = |w: &WriterWire| node.as_deref().is_none_or(|n| w.wire.node() == n);
            if let Some(at) = idle.iter().rposition(fits) {
                return Ok(Some(idle.swap_remove(at)));
            }
            let permits = &self.inner.writer_permits;
            if permits.available_permits() == 0 && !idle.is_empty() {
                // Closing the longest idle one gives its permit back at once.
                idle.remove(0);
            }
            let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
                return Ok(None);
            };
            permit
        };
        let info = match info {
            Some(info) => info,
            None => self.inner.topology.info(&Reach::default())?,
        };
        let wire = match named_writer(&info).await {
            Ok(wire) => wire,
            Err(e) => {
                self.drop_idle_writers(Some(&node_of(&info)));
                return Err(e);
            }
        };
        Ok(Some(WriterWire {
            wire,
            _permit: permit,
        }))
    }

    /// On a cluster, the master to write `slot`'s keys on, asking the cluster again when
    /// [`Masters`] says so; `None` while no live one is known.
    async fn writer_node(&self, slot: u16) -> Option<String> {
        if lock(&self.inner.masters).relearn_now() {
            // Bounded: during a failover the command connection may be held up, and a writer
            // (or a lease renewal) on a live master must not wait for it.
            let listed = tokio::time::timeout(RELEARN_WITHIN, list_nodes(&mut self.conn())).await;
            match listed {
                Ok(Ok(listing)) => lock(&self.inner.masters).learn(&listing),
                Ok(Err(e)) => tracing::debug!(error = %e, "CLUSTER NODES failed"),
                Err(_) => tracing::debug!("CLUSTER NODES not answered in time"),
            }
        }
        lock(&self.inner.masters).node(slot)
    }

    /// A cluster's `MOVED` sent a writer of stream `key` to `node`: its slot's writers go
    /// there from now on.
    pub(crate) fn writer_moved(&self, key: &str, node: String) {
        lock(&self.inner.masters).moved(slot(key), node);
    }

    /// A writer's connection to `node` failed (or could not be made): the idle ones opened in
    /// its time may have failed too (Redis restarted, a node failed over), so the next writer
    /// connects anew — on one server all of them, on a cluster those to `node`, which is also
    /// marked down (see [`Masters`]).
    pub(crate) fn drop_idle_writers(&self, node: Option<&str>) {
        let mut idle = lock(&self.inner.idle_writers);
        match node.filter(|_| self.is_cluster()) {
            Some(node) => {
                idle.retain(|w| w.wire.node() != node);
                lock(&self.inner.masters).down(node);
            }
            None => idle.clear(),
        }
    }

    /// Takes back a writer's connection with no reply outstanding, for the next batch.
    fn idle_writer(&self, wire: WriterWire) {
        lock(&self.inner.idle_writers).push(wire);
    }

    /// Settles writer connection `own` after one command on it for `key` ended with
    /// `result`: answered, it goes back among the idle ones (`Some`); a cluster's `MOVED`
    /// (a whole reply: nothing is left outstanding) sends the slot's writers to the node it
    /// names and it goes back too (`None`: try elsewhere); a failed connection is closed, and
    /// on a cluster its node marked down. Only an answered connection is reused: one dropped
    /// halfway (its future dropped) or failed never is, with a reply still to come.
    pub(crate) fn settle_writer<T>(
        &self,
        key: &str,
        own: WriterWire,
        result: Result<T, Error>,
    ) -> Result<Option<T>, Error> {
        match result {
            Ok(value) => {
                self.idle_writer(own);
                Ok(Some(value))
            }
            Err(e) => match crate::conn::redirect(&e) {
                crate::conn::Redirect::MovedTo(node) if self.is_cluster() => {
                    self.writer_moved(key, node);
                    self.idle_writer(own);
                    Ok(None)
                }
                _ => {
                    // The connection failed, not the command (an `ASK`, out of memory…): the
                    // node may be down.
                    if matches!(&e, Error::Redis(r) if r.is_io_error()) {
                        self.drop_idle_writers(Some(own.wire.node()));
                    }
                    Err(e)
                }
            },
        }
    }

    /// A clone of the shared command connection.
    pub(crate) fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }

    /// A clone of the writers' shared connection, for batches that find every writer
    /// connection busy, and on a cluster for writers whose own connection failed: a
    /// multiplexed connection like the shared one, but another, so that a flood of writes
    /// never holds up the commands on the shared one (a worker's heartbeat, which must renew
    /// its leases in time, and the readers').
    pub(crate) async fn writers_conn(&self) -> Result<Conn, Error> {
        let conn = self
            .inner
            .writers_conn
            .get_or_try_init(|| async {
                Ok::<_, Error>(match &self.inner.topology {
                    Topology::Single(redis) => Conn::Managed(managed(redis).await?),
                    Topology::Cluster(nodes) => {
                        Conn::Cluster(Topology::cluster(nodes, RESPONSE_TIMEOUT).await?)
                    }
                })
            })
            .await?;
        Ok(conn.clone())
    }

    /// A new dedicated connection for a blocking command that may take up to `block`, on a
    /// cluster where `reach` points.
    pub(crate) async fn dedicated(&self, block: Duration, reach: &Reach) -> Result<Wire, Error> {
        self.inner.topology.blocking(block, reach).await
    }

    /// The server to subscribe to on attempt `attempt` (0, 1, …): on a cluster, which
    /// broadcasts every `PUBLISH` to all its nodes, each attempt tries the next node.
    pub(crate) fn pubsub_node(&self, attempt: usize) -> redis::Client {
        let nodes = self.inner.topology.pubsub_nodes();
        nodes[attempt % nodes.len()].clone()
    }

    /// The hub lane that reads run `run_id`'s stream: all of them share lane 0 on one server;
    /// on a cluster each bucket has its own lane (its own blocking `XREAD`).
    pub(crate) fn lane(&self, run_id: &str) -> usize {
        if self.is_cluster() {
            bucket(run_id)
        } else {
            0
        }
    }

    /// The process's stream reader, started on first use.
    pub(crate) async fn hub(&self) -> &Hub {
        self.inner
            .hub
            .get_or_init(|| async {
                let lanes = if self.is_cluster() { BUCKETS } else { 1 };
                Hub::start(
                    self.inner.topology.clone(),
                    self.conn(),
                    lanes,
                    self.inner.options.read_block,
                )
            })
            .await
    }
}

/// The longest a writer waits for the cluster's listing of its masters before it goes on with
/// what it knew.
const RELEARN_WITHIN: Duration = Duration::from_millis(500);

/// The oldest Redis Loom runs on: `XAUTOCLAIM` and `ZRANGE … BYSCORE` came in 6.2.
pub const MIN_REDIS_VERSION: (u32, u32) = (6, 2);

/// Refuses a server older than [`MIN_REDIS_VERSION`], whose refusals of newer commands would
/// otherwise come up only mid-run. The version is `HELLO 2`'s (the protocol stays RESP2;
/// `HELLO` came in 6.0 and is no dangerous command, which an ACL user may lack, as `INFO` is).
async fn check_version(conn: &mut redis::aio::ConnectionManager) -> Result<(), Error> {
    let (major, minor) = MIN_REDIS_VERSION;
    let too_old = |version: &str| {
        Error::InvalidOptions(format!(
            "Redis {major}.{minor} or later is needed; this server is {version}"
        ))
    };
    let hello: Result<redis::Value, _> = redis::cmd("HELLO").arg(2).query_async(conn).await;
    let fields = match hello {
        Ok(redis::Value::Array(fields)) => fields,
        Ok(redis::Value::Map(pairs)) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        Ok(_) => return Ok(()),
        Err(e) if e.code() == Some("ERR") && e.to_string().contains("unknown command") => {
            return Err(too_old("older than 6.0"));
        }
        // Refused or failed for another reason: the commands themselves will tell.
        Err(_) => return Ok(()),
    };
    let version = fields
        .chunks(2)
        .find(|pair| {
            redis::from_redis_value::<String>(pair[0].clone()).is_ok_and(|k| k == "version")
        })
        .and_then(|pair| pair.get(1).cloned())
        .and_then(|v| redis::from_redis_value::<String>(v).ok());
    let Some(version) = version else {
        return Ok(());
    };
    if is_older(&version, MIN_REDIS_VERSION) {
        return Err(too_old(&version));
    }
    Ok(())
}

/// Whether `version` (`major.minor.patch`, as Redis gives it) is older than `min`; one that
/// does not read as a version is taken for a new one.
fn is_older(version: &str, min: (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) < min,
        _ => false,
    }
}

/// A single server's shared connection: multiplexed, reconnecting with backoff.
async fn managed(redis: &redis::Client) -> Result<redis::aio::ConnectionManager, Error> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    Ok(redis.get_connection_manager_with_config(config).await?)
}

/// A new writer connection to where `info` points, named [`WRITER_NAME`].
async fn named_writer(info: &redis::ConnectionInfo) -> Result<Wire, Error> {
    let mut wire = Wire::connect(info, Duration::ZERO).await?;
    // Only a label: an ACL that refuses it does not stop the writer. A connection that
    // failed or timed out on it is not used: its reply may still be on the way, and the
    // batch would read it for its own.
    let mut name = redis::cmd("CLIENT");
    name.arg("SETNAME").arg(WRITER_NAME);
    match wire.query(&name).await {
        Ok(_) => {}
        Err(Error::Redis(e)) if !e.is_io_error() => {
            tracing::debug!(error = %e, "a writer connection could not name itself");
        }
        Err(e) => return Err(e),
    }
    Ok(wire)
}

/// Connects to the cluster that `nodes` belong to, and learns all its nodes (for pub/sub,
/// which must survive the loss of the node it was given) and its masters' slots (for the
/// writers).
async fn connect_cluster(
    mut nodes: Vec<redis::Client>,
) -> Result<(Topology, Conn, Masters), Error> {
    let mut conn = Topology::cluster(&nodes, RESPONSE_TIMEOUT).await?;
    let listing = list_nodes(&mut conn).await?;
    let mut masters = Masters::default();
    masters.learn(&listing);
    let base = nodes[0].get_connection_info().clone();
    for node in &listing {
        let Some((host, port)) = node.address.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        let addr = redis::ConnectionAddr::Tcp(host.to_owned(), port);
        if nodes
            .iter()
            .any(|n| n.get_connection_info().addr() == &addr)
        {
            continue;
        }
        nodes.push(redis::Client::open(base.clone().set_addr(addr))?);
    }
    Ok((Topology::Cluster(nodes), Conn::Cluster(conn), masters))
}

/// How long, once one node of a list of URLs has answered, the others have to answer too.
const ANSWER_GRACE: Duration = Duration::from_millis(250);

/// Of the nodes a list of URLs names, those that answer, to connect through: a node down or
/// silent (a host that takes connections and never answers) would slow every command that
/// meets it, and the cluster's own listing names its live nodes anyway. All of them are
/// asked at once; once one has answered, the others have [`ANSWER_GRACE`] more. When none
/// answers, all are kept, for the cluster client to say why. A node that answers but is not
/// a cluster node is refused ([`probe`]).
async fn answering(nodes: Vec<redis::Client>) -> Result<Vec<redis::Client>, Error> {
    let mut probes: futures::stream::FuturesUnordered<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| async move { (i, probe(node).await) })
        .collect();
    // The nodes that answered, each with its view of its cluster when it gave one.
    let mut answered: Vec<(usize, Option<Membership>)> = Vec::new();
    let mut until = None;
    loop {
        let next = match until {
            None => probes.next().await,
            Some(at) => tokio::time::timeout_at(at, probes.next())
                .await
                .unwrap_or_default(),
        };
        let Some((i, answer)) = next else { break };
        if let Answer::Answered(membership) = answer? {
            answered.push((i, membership));
            until.get_or_insert_with(|| tokio::time::Instant::now() + ANSWER_GRACE);
        }
    }
    drop(probes);
    if answered.is_empty() {
        return Ok(nodes);
    }
    // Nodes of two clusters: a worker would serve one and its callers wait on the other. Two
    // nodes neither of which knows the other are of different clusters (one that knows the
    // other is enough: a node just added may not have heard of everyone yet).
    let views: Vec<(usize, &Membership)> = answered
        .iter()
        .filter_map(|(i, view)| Some((*i, view.as_ref()?)))
        .collect();
    for (a, (i, one)) in views.iter().enumerate() {
        for (j, other) in &views[a + 1..] {
            if !one.known.contains(&other.me) && !other.known.contains(&one.me) {
                let name = |k: usize| node_of(nodes[k].get_connection_info());
                return Err(Error::InvalidOptions(format!(
                    "{} and {} are nodes of different clusters: a list of Redis URLs must name \
                     nodes of one cluster",
                    name(*i),
                    name(*j)
                )));
            }
        }
    }
    Ok(nodes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| answered.iter().any(|(answering, _)| answering == i))
        .map(|(_, node)| node)
        .collect())
}

/// `err` from the first exchange with the server at `info`; a reply that is no RESP at all
/// means the URL names something else (a web server, another protocol): bad input, said so, as
/// [`probe`] says it of a node in a list.
fn not_redis(info: &redis::ConnectionInfo, err: Error) -> Error {
    match err {
        Error::Redis(e) if e.kind() == redis::ErrorKind::Parse => Error::InvalidOptions(format!(
            "{} does not speak Redis (its answer is no Redis reply)",
            node_of(info)
        )),
        other => other,
    }
}

/// What a node of a list of URLs answered `CLUSTER NODES` with: nothing (down, silent), or
/// its view of its cluster (`None` when it would not say: an error reply, such as an ACL's
/// `NOPERM`, is an answer all the same).
enum Answer {
    Silent,
    Answered(Option<Membership>),
}

/// A cluster node's view of its cluster: its own id and every node id it knows.
struct Membership {
    me: String,
    known: HashSet<String>,
}

impl Membership {
    /// From `CLUSTER NODES`' text: a line a node, its id first, its flags third (`myself`).
    fn of(text: &[u8]) -> Option<Self> {
        let mut me = None;
        let mut known = HashSet::new();
        for line in std::str::from_utf8(text).ok()?.lines() {
            let fields: Vec<&str> = line.split_whitespace().take(3).collect();
            let [id, _, flags] = fields[..] else { continue };
            if flags.split(',').any(|f| f == "myself") {
                me = Some(id.to_owned());
            }
            known.insert(id.to_owned());
        }
        Some(Self { me: me?, known })
    }
}

/// Asks a node of a list of URLs `CLUSTER NODES`. A node that answers but is not in cluster
/// mode, or not Redis at all, is [`Error::InvalidOptions`]: taken for a node of the cluster, a
/// server outside cluster mode would be read from, and as it answers every key it does not
/// hold with nothing (never `MOVED`), its readers would wait for chunks written elsewhere.
async fn probe(node: &redis::Client) -> Result<Answer, Error> {
    let info = node.get_connection_info();
    let Some(answer) = ask_cluster(info, "NODES").await else {
        return Ok(Answer::Silent);
    };
    let refused = |what: &str| {
        Err(Error::InvalidOptions(format!(
            "{} {what}: a list of Redis URLs must name nodes of one cluster (give a single \
             server's URL alone)",
            node_of(info)
        )))
    };
    match answer {
        Ok(Reply::Text(text)) => Ok(Answer::Answered(Membership::of(&text))),
        Ok(_) => Ok(Answer::Answered(None)),
        Err(Error::Redis(e)) if e.to_string().contains("cluster support disabled") => {
            refused("is not in cluster mode")
        }
        Err(Error::UnexpectedReply(_)) => {
            refused("does not speak Redis (its answer is no Redis reply)")
        }
        Err(Error::Redis(e)) if !(e.is_io_error() || e.is_timeout()) => Ok(Answer::Answered(None)),
        Err(_) => Ok(Answer::Silent),
    }
}

/// The answer of the node at `info` to `CLUSTER <what>`, on a connection of its own (the
/// cluster connection's commands may be the ones waiting); `None` when it cannot be reached.
async fn ask_cluster(info: &redis::ConnectionInfo, what: &str) -> Option<Result<Reply, Error>> {
    let mut wire = Wire::connect(info, Duration::ZERO).await.ok()?;
    Some(wire.query(redis::cmd("CLUSTER").arg(what)).await)
}

/// The longest [`Client::explain`] asks a cluster's nodes whether it is down: on top of the
/// failed command's own wait, before its error is given as it was.
pub const EXPLAIN_WITHIN: Duration = Duration::from_secs(2);

/// Now, in Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Presence renewals a client has in flight at once.
const PRESENCE_IN_FLIGHT: usize = 256;

/// The task of [`Presence`]: every `lease_refresh`, sets the presence key of each run in
/// `runs` for a `lease_ttl`, until `stop`. One command a key, many in flight (the connection
/// pipelines them): a pipeline of several runs' keys would be sent again whole to the node a
/// slot is migrating to when one of its keys has moved, writing the others there too.
async fn renew_presence(
    conn: Conn,
    keys: Keys,
    options: ClientOptions,
    runs: Arc<Mutex<BTreeSet<String>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let ttl = options.lease_ttl.as_millis() as u64;
    let mut beat = tokio::time::interval(options.lease_refresh);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = beat.tick() => {}
        }
        let present: Vec<String> = lock(&runs).iter().map(|id| keys.caller(id)).collect();
        let sets = present.into_iter().map(|key| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("PX")
                    .arg(ttl)
                    .exec_async(&mut conn)
                    .await
            }
        });
        let failed = futures::stream::iter(sets)
            .buffer_unordered(PRESENCE_IN_FLIGHT)
            .filter(|sent| std::future::ready(sent.is_err()))
            .count()
            .await;
        if failed > 0 {
            tracing::debug!(failed, "could not renew some callers' presence this beat");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_6_2_are_older_and_unreadable_ones_are_not() {
        for old in ["6.0.16", "6.1.0", "5.0.14", "2.8.24"] {
            assert!(is_older(old, MIN_REDIS_VERSION), "{old}");
        }
        for new in [
            "6.2.0",
            "6.2.14",
            "7.0.15",
            "7.4.2",
            "10.0.0",
            "255.255.255",
            "unstable",
        ] {
            assert!(!is_older(new, MIN_REDIS_VERSION), "{new}");
        }
    }
}
