//! What the worker's tasks share: the runs it holds ([`Active`]), the requests it took but has
//! not started ([`Work`]), and the handles every task needs ([`Shared`]). The fetcher fills
//! the waiting list, the runner moves requests into `active`, and the heartbeat, the cancel
//! listener and the hand-back read both.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use loom_core::{CancellationToken, Runtime};

use crate::client::Client;
use crate::codec::{EntryId, RawEntry};
use crate::keys::CancelReason;

/// The worker's state, shared by its tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) runtime: Runtime,
    /// The attempt after which a request ends with `error/worker_lost` instead of running.
    pub(crate) max_attempts: u32,
    /// What one run may write: chunks, and bytes of chunk data.
    pub(crate) max_run_chunks: u64,
    pub(crate) max_run_bytes: u64,
    /// The worker's consumer name in the group.
    pub(crate) name: String,
    /// The runs held, by run id.
    active: Mutex<HashMap<String, Active>>,
    /// Set (under the `active` lock) when the worker hands its runs back: a run that was
    /// still getting ready then does not join `active` but is handed back too.
    closing: AtomicBool,
    /// Requests read but not yet started: `XREADGROUP COUNT` bounds each queue, not the
    /// total, so one read may return more than there are free slots. They are in this
    /// worker's pending list, so the heartbeat keeps them from looking abandoned.
    waiting: Mutex<VecDeque<Work>>,
    /// Held by a heartbeat while it claims its requests again, and by the hand-back before it
    /// gives them back: a beat that began before the hand-back never resets what it gave.
    pub(crate) claiming: tokio::sync::Mutex<()>,
}

impl Shared {
    pub(crate) fn new(
        client: Client,
        runtime: Runtime,
        options: &super::WorkerOptions,
        name: String,
    ) -> Self {
        Self {
            client,
            runtime,
            max_attempts: options.max_attempts,
            max_run_chunks: options.max_run_chunks,
            max_run_bytes: options.max_run_bytes,
            name,
            active: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            waiting: Mutex::new(VecDeque::new()),
            claiming: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes every held run out of `active`, for good: from now on [`join`](Self::join)
    /// refuses.
    pub(crate) fn close(&self) -> Vec<(String, Active)> {
        let mut active = self.active();
        self.closing.store(true, Ordering::Release);
        active.drain().collect()
    }

    /// Whether the worker is handing its runs back ([`close`](Self::close) was called).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Adds a run to `active`, unless the worker is handing its runs back ([`close`]): then
    /// gives `run` back.
    ///
    /// [`close`]: Self::close
    pub(crate) fn join(&self, run_id: &str, run: Active) -> Result<(), Active> {
        let mut active = self.active();
        if self.closing.load(Ordering::Acquire) {
            return Err(run);
        }
        active.insert(run_id.to_owned(), run);
        Ok(())
    }

    pub(crate) fn active(&self) -> MutexGuard<'_, HashMap<String, Active>> {
        // A panic while holding this lock leaves a plain map behind: keep using it.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn waiting(&self) -> MutexGuard<'_, VecDeque<Work>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn group(&self) -> &'static str {
        self.client.keys().group()
    }
}

/// A request to run.
#[derive(Debug, Clone)]
pub(crate) struct Work {
    /// The queue it came from.
    pub(crate) queue: String,
    /// Its entry in that queue.
    pub(crate) entry: RawEntry,
    /// 1 for a new request, the delivery count for one claimed from a dead worker.
    pub(crate) attempt: u32,
}

/// A run the worker holds.
#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) queue: String,
    pub(crate) entry: EntryId,
    /// The attempt's token in the run's lease key.
    pub(crate) owner: String,
    pub(crate) token: CancellationToken,
    pub(crate) discard: Arc<AtomicBool>,
    /// Set once the run's stream has its terminal chunk (the publisher's `ended` flag).
    pub(crate) ended: Arc<AtomicBool>,
    /// Whether the run's caller keeps its presence key while it reads (the request's
    /// `caller`): the run is cancelled once that lapses.
    pub(crate) caller: bool,
    /// Since when the heartbeat has found the caller's presence missing, while Redis answered.
    pub(crate) caller_missing: Mutex<Option<Instant>>,
}

impl Active {
    /// Stops the run without writing anything more to its stream.
    pub(crate) fn drop_run(&self) {
        self.discard.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// The heartbeat found the caller's presence there (`present`) or not, at `now`. Whether
    /// the caller has now been missing for `patience`: gone, not merely late to renew its
    /// presence after Redis came back from an outage, when both renew in the same beat.
    pub(crate) fn caller_seen(&self, present: bool, now: Instant, patience: Duration) -> bool {
        let mut missing = self
            .caller_missing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if present {
            *missing = None;
            return false;
        }
        now.duration_since(*missing.get_or_insert(now)) >= patience
    }

    /// Stops the run for `reason` (its cancel key): a caller's cancel lets the runtime write
    /// `error/cancelled`; after a reader's `worker_lost`/`timeout`, which already wrote the
    /// terminal chunk, the run stops without writing.
    pub(crate) fn stop_for(&self, reason: CancelReason) {
        if reason.terminal_written() {
            self.ended.store(true, Ordering::Release);
            self.drop_run();
        } else {
            self.token.cancel();
        }
    }
}

/// A run held by this worker, as the heartbeat and the hand-back see it.
#[derive(Debug, Clone)]
pub(crate) struct HeldRun {
    pub(crate) run_id: String,
    pub(crate) queue: String,
    pub(crate) entry: EntryId,
    pub(crate) owner: String,
    pub(crate) caller: bool,
}

impl HeldRun {
    pub(crate) fn of(run_id: &str, active: &Active) -> Self {
        Self {
            run_id: run_id.to_owned(),
            queue: active.queue.clone(),
            entry: active.entry,
            owner: active.owner.clone(),
            caller: active.caller,
        }
    }
}
