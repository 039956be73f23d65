//! [`Worker`]: takes requests from the actor queues and runs them on the local runtime,
//! publishing their chunks.
//!
//! A worker joins the consumer group `loom-workers` of `loom:queue:{<type>}` for each actor
//! type it serves (`XGROUP CREATE … 0 MKSTREAM`), reads requests with `XREADGROUP`, runs each
//! through [`Runtime::stream_attempt`] (which numbers chunks and writes the terminal one),
//! publishes the chunks with a [`Publisher`](crate::Publisher), and `XACK`s (then `XDEL`s)
//! the request once the terminal chunk is in Redis.
//!
//! - **Leases.** When an attempt starts, the run's lease key takes the attempt's owner token
//!   (`<worker>:<attempt>:<entry>`); the publisher writes only while the lease holds it,
//!   so a worker that lost a run can never append to its stream. Every `lease_refresh` a
//!   heartbeat renews, for each run the worker holds, the lease (`PEXPIRE lease_ttl`, only
//!   while it still holds the attempt's token — else the run stops without writing), the
//!   stream's TTL, and the request's idle time in the group's pending list (claimed to itself
//!   again, only for runs whose lease was renewed and only while the request is still its
//!   own, in one script: a run is never stolen back). A long
//!   run on a healthy worker is therefore never idle long enough to be claimed by another
//!   worker. `XREADGROUP COUNT` bounds each queue, not the total, so each queue is asked for
//!   its share of the free slots; with fewer free slots than queues they are read in turn
//!   without blocking, one request each, before a blocking read waits on them all. A read may
//!   still return a few more requests than there are free slots (at most one more per queue,
//!   or several queues written while it blocked): the extra ones wait in the worker, are
//!   started first as slots free up, and the heartbeat renews their idle time too.
//! - **Crash recovery.** Every few hundred milliseconds the worker `XAUTOCLAIM`s requests idle
//!   for more than the visibility timeout — those of a dead worker — and runs them again as
//!   attempt `delivery count` (2, 3, …): it reads the stream's last `seq` (one script reads the last
//!   entry and the cancel key) and continues from there, so the stream stays gapless and the new `start` carries
//!   `attempt`. A request whose stream already ended is only acknowledged. If the heartbeat
//!   finds that another worker took one of its runs, it stops that run without writing.
//!   Every visibility timeout it also deletes from the queues' groups each consumer of a worker
//!   that no longer advertises itself, idle for two visibility timeouts with nothing pending
//!   (it would otherwise stay in `XINFO CONSUMERS` for good); a worker that stops deletes its
//!   own.
//! - **Cancel.** The worker subscribes to `loom:cancel` and checks `loom:cancel:{<bucket>}:<id>` before
//!   starting a run; a cancel cancels the run's token, so the actor stops at once and the
//!   runtime writes `error/cancelled`. Pub/sub delivers at most once, so the heartbeat also
//!   reads the cancel keys of the runs it holds.
//! - **Shutdown.** When the shutdown future resolves the worker stops taking requests (but
//!   into the slots its runs lend while they wait for runs they called, `slots.rs`: those runs
//!   may be waiting for this worker alone), lets
//!   the runs it holds finish for up to `shutdown_grace`, then hands the rest back (their
//!   requests become claimable at once, and another worker continues their streams). It then
//!   leaves the queues' groups, if nothing is pending under its name.
//! - **Redis loss.** Every loop logs, backs off and reconnects; the worker does not exit.
//!
//! One file per concern: `fetch.rs` takes requests (`XREADGROUP`, the `XAUTOCLAIM` sweep),
//! `run.rs` runs one request from its entry to its acknowledgement, `lease.rs` takes, renews
//! and releases leases (the heartbeat, the hand-back), `cancel.rs` listens for cancels, and
//! `slots.rs` the run slots a waiting run lends, `state.rs` holds what they share. This file ties them together in [`Worker::run`].

mod cancel;
mod fetch;
mod lease;
mod run;
mod slots;
mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use loom_core::{CancellationToken, Runtime};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::Client;
use crate::error::Error;
use crate::keys::check_name;
use crate::worker::cancel::listen_for_cancels;
use crate::worker::fetch::Fetcher;
use crate::worker::lease::{hand_back, heartbeat};
use crate::worker::run::execute;
use crate::worker::state::Shared;

pub use slots::{SlotLoan, Slots};

/// What a worker serves and how much at once.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The actor types to serve; empty means every actor of the runtime's registry.
    pub actors: Vec<String>,
    /// How many runs at once (default 16). Runs write their batches on connections of the
    /// writers' own (named `loom-writer`; on a cluster, to the master of the run's slot),
    /// each taken for one batch: however many runs, a worker opens at most
    /// [`WRITER_CONNECTIONS`](crate::WRITER_CONNECTIONS) of them besides its few shared ones.
    pub concurrency: usize,
    /// The worker's consumer name in the group; a random `worker-<uuid>` when `None`. Two
    /// live workers must not share a name.
    pub name: Option<String>,
    /// How long runs may go on after the shutdown signal before they are handed back
    /// (default 30 s).
    pub shutdown_grace: Duration,
    /// Once the worker is stopping, cancelling this cuts [`shutdown_grace`] short: the runs
    /// still going are handed back at once (the CLI's second Ctrl-C). `None`: the grace is
    /// waited out.
    ///
    /// [`shutdown_grace`]: Self::shutdown_grace
    pub hand_back_now: Option<CancellationToken>,
    /// The attempt after which a request that keeps losing its worker ends with
    /// `error/worker_lost` instead of running again (default 3).
    pub max_attempts: u32,
    /// The most chunks one run may write, its terminal one included (default
    /// [`DEFAULT_MAX_RUN_CHUNKS`]; at least 2); past it the run is stopped and ends with
    /// `error/actor_failed` saying so, in the place of the chunk that did not fit (an `error`
    /// chunk of the run's own is kept).
    pub max_run_chunks: u64,
    /// The most bytes of chunk data one run may write, its result included (default
    /// [`DEFAULT_MAX_RUN_BYTES`]; at least 1), likewise.
    pub max_run_bytes: u64,
}

/// The most chunks one run may write to Redis by default.
pub const DEFAULT_MAX_RUN_CHUNKS: u64 = 1_000_000;

/// The most bytes of chunk data one run may write to Redis by default (256 MiB).
pub const DEFAULT_MAX_RUN_BYTES: u64 = 256 * 1024 * 1024;

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            actors: Vec::new(),
            concurrency: 16,
            name: None,
            shutdown_grace: Duration::from_secs(30),
            hand_back_now: None,
            max_attempts: 3,
            max_run_chunks: DEFAULT_MAX_RUN_CHUNKS,
            max_run_bytes: DEFAULT_MAX_RUN_BYTES,
        }
    }
}

/// Runs requests from the Redis queues on a local [`Runtime`] (see the module docs).
///
/// ```no_run
/// # async fn demo() -> Result<(), loom_redis::Error> {
/// use loom_core::{Extensions, Registry, Runtime};
/// use loom_redis::{Client, Worker, WorkerOptions};
///
/// let client = Client::connect("redis://127.0.0.1:6379").await?;
/// let runtime = Runtime::new(Registry::with_builtins(), Extensions::new());
/// let worker = Worker::new(client, runtime, WorkerOptions::default());
/// worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Shared>,
    options: WorkerOptions,
    slots: Slots,
}

impl Worker {
    /// A worker running requests for `runtime`'s actors through `client`'s Redis.
    pub fn new(client: Client, runtime: Runtime, options: WorkerOptions) -> Self {
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| format!("worker-{}", uuid::Uuid::new_v4()));
        Self {
            shared: Arc::new(Shared::new(client, runtime, &options, name)),
            slots: Slots::new(options.concurrency),
            options,
        }
    }

    /// The worker's run slots: a run that calls another run through Redis and waits for it
    /// lends its slot meanwhile ([`Slots::lend`]), so that runs calling runs on the same
    /// workers never hold every slot while the runs they called wait for one.
    pub fn slots(&self) -> Slots {
        self.slots.clone()
    }

    /// The worker's consumer name in the group.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The actor types this worker serves (checked).
    fn served(&self) -> Result<Vec<String>, Error> {
        let registry = self.shared.runtime.registry();
        let actors = if self.options.actors.is_empty() {
            registry.names()
        } else {
            self.options.actors.clone()
        };
        for actor in &actors {
            check_name("actor type", actor)?;
            if !registry.contains(actor) {
                return Err(Error::UnknownActor(actor.clone()));
            }
        }
        if actors.is_empty() {
            return Err(Error::InvalidOptions("no actor types to serve".to_owned()));
        }
        Ok(actors)
    }

    /// Serves requests until `shutdown` resolves, then finishes (or hands back) the runs it
    /// holds and returns.
    ///
    /// Fails at once on bad options (unknown actor, invalid name, zero concurrency, a cap on
    /// runs' output that no run could keep) and when
    /// Redis refuses a command it needs for the user's permissions (an ACL; the error is
    /// [`Error::is_no_permission`]); Redis failures while running are logged and retried,
    /// never returned.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let shared = Arc::clone(&self.shared);
        if self.options.concurrency == 0 {
            return Err(Error::InvalidOptions(
                "concurrency must be at least 1".to_owned(),
            ));
        }
        // A run writes at least its `start` and its terminal chunk.
        if self.options.max_run_chunks < 2 || self.options.max_run_bytes == 0 {
            return Err(Error::InvalidOptions(
                "max_run_chunks must be at least 2 (a start and a terminal chunk) and max_run_bytes at least 1".to_owned(),
            ));
        }
        check_name("worker name", &shared.name)?;
        let served = self.served()?;
        let shards = shared.client.options().queue_shards;
        let queues = served
            .iter()
            .flat_map(|a| (0..shards).map(|k| shared.client.keys().queue(a, k)))
            .collect();
        // Fused: once it has resolved it is never polled again (an `async fn` would panic).
        let shutdown = shutdown.fuse();
        tokio::pin!(shutdown);

        let mut fetcher = Fetcher::new(Arc::clone(&shared), queues);
        fetcher.check_permissions().await?;

        let stop = CancellationToken::new();
        let stopping = CancellationToken::new();
        // In a JoinSet, so they are aborted with the worker if its future is dropped.
        let mut background = JoinSet::new();
        background.spawn(listen_for_cancels(Arc::clone(&shared), stop.clone()));
        let beat = heartbeat(Arc::clone(&shared), served, stopping.clone(), stop.clone());
        background.spawn(beat);
        let mut runs = JoinSet::new();
        let slots = Arc::clone(self.slots.semaphore());
        tracing::info!(worker = %shared.name, "worker started");
        loop {
            while runs.try_join_next().is_some() {}
            self.slots.take_back();
            if slots.available_permits() == 0 {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = runs.join_next() => continue,
                    // A slot lent, or one a run gave back.
                    _ = slots.acquire() => continue,
                }
            }
            let stopping = if shared.waiting().is_empty() {
                let (work, stopping) = fetcher
                    .fetch(slots.available_permits(), &mut shutdown)
                    .await;
                shared.waiting().extend(work);
                stopping
            } else {
                false
            };
            start_waiting(&shared, &slots, &mut runs);
            // After what was read is started: a loan that ended during the read does not keep
            // a request it fetched from starting.
            self.slots.take_back();
            if stopping {
                break;
            }
        }

        tracing::info!(worker = %shared.name, running = runs.len(), "worker stopping");
        stopping.cancel();
        let now = self.options.hand_back_now.clone().unwrap_or_default();
        let grace_ends = tokio::time::Instant::now() + self.options.shutdown_grace;
        let grace = || async {
            tokio::select! {
                () = tokio::time::sleep_until(grace_ends) => {}
                () = now.cancelled() => {}
            }
        };
        let mut hand_back_due = Box::pin(grace());
        loop {
            let finishing = !now.is_cancelled() && tokio::time::Instant::now() < grace_ends;
            // Requests already taken are ours to run: start them as slots free up — not once
            // they are to be handed back.
            if finishing {
                start_waiting(&shared, &slots, &mut runs);
            }
            self.slots.take_back();
            let waiting = !shared.waiting().is_empty();
            // A run waiting for a run it called lent its slot, and that run may wait in a queue
            // for this worker alone (the others stopping too, or none): the slots lent still
            // take requests — no more than are lent — in reads that the grace's end or a second
            // signal cuts short, so what ends meanwhile is seen soon.
            let lent = self.slots.lent().min(slots.available_permits());
            if !waiting && finishing && lent > 0 {
                let mut stop_reading = Box::pin(grace());
                let (work, _) = fetcher.fetch(lent, &mut stop_reading).await;
                shared.waiting().extend(work);
                while runs.try_join_next().is_some() {}
                if runs.is_empty() && shared.waiting().is_empty() {
                    break;
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = &mut hand_back_due => {
                    hand_back(&shared).await;
                    while runs.join_next().await.is_some() {}
                    break;
                }
                next = runs.join_next() => if next.is_none() && !waiting { break },
                // A slot lent to a run waiting for one of those taken.
                _ = slots.acquire(), if waiting => {}
                // A run called another, and lent its slot to take that call.
                () = self.slots.lent_one() => {}
            }
        }
        stop.cancel();
        while background.join_next().await.is_some() {}
        // Out of the group, unless it handed requests back: they stay pending under its name
        // until others claim them, and a later sweep deletes it then.
        fetcher.leave().await;
        tracing::info!(worker = %shared.name, "worker stopped");
        Ok(())
    }
}

/// Starts waiting requests while there are free slots.
fn start_waiting(shared: &Arc<Shared>, slots: &Arc<Semaphore>, runs: &mut JoinSet<()>) {
    loop {
        let Ok(permit) = Arc::clone(slots).try_acquire_owned() else {
            return;
        };
        let Some(work) = shared.waiting().pop_front() else {
            return;
        };
        runs.spawn(execute(Arc::clone(shared), work, permit));
    }
}
