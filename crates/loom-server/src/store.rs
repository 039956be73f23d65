//! The runs a server knows: each run's log, its cancel handle and who is reading it.
//!
//! [`crate::runs`] inserts a [`Run`] when it starts one; the routes find runs here by id, list
//! the recent ones and cancel them. A finished run is removed a TTL after its terminal chunk
//! ([`RunStore::expire_after`]), or earlier when more finished runs than the configured bound
//! are kept (the oldest first), so memory is bounded by the running runs plus that many logs;
//! the index of recent runs is bounded too. One task forgets the runs whose TTL is over (the
//! TTL is the same for every run, so they are due in the order they finished), and only while
//! some are due: not a sleeping task per run.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use loom_core::CancellationToken;

use crate::runlog::{RunInfo, RunLog};

/// How many recent runs `GET /v1/runs` can list; older ones are still served by id until
/// their TTL.
pub const MAX_RECENT_RUNS: usize = 1_000;

/// What a run does when its last reader goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DisconnectPolicy {
    /// Keep running (detached runs, `"on_disconnect":"continue"`).
    Continue,
    /// Cancel after this grace period unless a reader attaches meanwhile (direct streams).
    CancelAfter(Duration),
}

/// One run the server started: its log and how to stop it.
#[derive(Debug)]
pub(crate) struct Run {
    log: Arc<RunLog>,
    cancel: CancellationToken,
    policy: DisconnectPolicy,
    readers: AtomicUsize,
    /// Counts attachments, so a grace timer sees whether anyone came back meanwhile.
    attachments: AtomicU64,
}

impl Run {
    /// A run writing to `log`, stopped by `cancel`.
    pub(crate) fn new(
        log: Arc<RunLog>,
        cancel: CancellationToken,
        policy: DisconnectPolicy,
    ) -> Self {
        Self {
            log,
            cancel,
            policy,
            readers: AtomicUsize::new(0),
            attachments: AtomicU64::new(0),
        }
    }

    /// The run's log.
    pub(crate) fn log(&self) -> &Arc<RunLog> {
        &self.log
    }

    /// Asks the run to stop; its terminal `error/cancelled` still lands in the log. Idempotent,
    /// and a no-op once the run has ended.
    pub(crate) fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Registers a reader until the returned guard drops. When the last reader of a run with
    /// [`DisconnectPolicy::CancelAfter`] goes away, the run is cancelled after the grace
    /// period unless another reader attached meanwhile.
    pub(crate) fn attach(self: &Arc<Self>) -> Attachment {
        self.readers.fetch_add(1, Ordering::SeqCst);
        self.attachments.fetch_add(1, Ordering::SeqCst);
        Attachment {
            run: Arc::clone(self),
        }
    }
}

/// A reader of a run, counted while it lives: see [`Run::attach`].
#[derive(Debug)]
pub(crate) struct Attachment {
    run: Arc<Run>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let run = &self.run;
        let left = run.readers.fetch_sub(1, Ordering::SeqCst) - 1;
        let DisconnectPolicy::CancelAfter(grace) = run.policy else {
            return;
        };
        if left > 0 || run.log.is_finished() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime left to wait on: the server is gone, so nobody can come back.
            run.cancel();
            return;
        };
        let seen = run.attachments.load(Ordering::SeqCst);
        let run = Arc::clone(run);
        handle.spawn(async move {
            tokio::time::sleep(grace).await;
            if run.readers.load(Ordering::SeqCst) == 0
                && run.attachments.load(Ordering::SeqCst) == seen
            {
                tracing::debug!(run_id = run.log.run_id(), "client gone: cancelling the run");
                run.cancel();
            }
        });
    }
}

/// Every run the server knows, by id, and the index of recent ones.
#[derive(Debug, Default)]
pub(crate) struct RunStore {
    state: Mutex<StoreState>,
}

#[derive(Debug, Default)]
struct StoreState {
    runs: HashMap<String, Arc<Run>>,
    /// Run ids, newest first, at most [`MAX_RECENT_RUNS`].
    recent: VecDeque<String>,
    /// Finished run ids and when each is forgotten, in the order they finished.
    finished: VecDeque<(String, Instant)>,
    /// Whether the task that forgets runs whose TTL is over is running.
    sweeping: bool,
    /// Run names (a chat's latest run) and the run each stands for; a name goes with its run.
    names: HashMap<String, String>,
}

impl RunStore {
    /// An empty store.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds `run` under its run id.
    pub(crate) fn insert(&self, run: Arc<Run>) {
        let id = run.log.run_id().to_owned();
        let mut state = self.lock();
        state.recent.push_front(id.clone());
        state.recent.truncate(MAX_RECENT_RUNS);
        state.runs.insert(id, run);
    }

    /// The run `id`, if known and not expired.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Run>> {
        self.lock().runs.get(id).cloned()
    }

    /// Names run `id` `name`, replacing what the name stood for.
    pub(crate) fn name_run(&self, name: &str, id: &str) {
        self.lock().names.insert(name.to_owned(), id.to_owned());
    }

    /// The run named `name`, if it is still kept.
    pub(crate) fn named(&self, name: &str) -> Option<Arc<Run>> {
        let state = self.lock();
        state
            .names
            .get(name)
            .and_then(|id| state.runs.get(id))
            .cloned()
    }

    /// The recent runs' status, newest first.
    pub(crate) fn recent(&self) -> Vec<RunInfo> {
        let state = self.lock();
        let mut recent: Vec<RunInfo> = state
            .recent
            .iter()
            .filter_map(|id| state.runs.get(id))
            .map(|run| run.log.info())
            .collect();
        // Runs started at once join the index in whichever order their requests got here,
        // not always that of their creation times (to the millisecond).
        recent.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        recent
    }

    /// Every run that has not ended.
    pub(crate) fn running(&self) -> Vec<Arc<Run>> {
        let state = self.lock();
        state
            .runs
            .values()
            .filter(|run| !run.log.is_finished())
            .cloned()
            .collect()
    }

    /// Forgets run `id` `ttl` from now (called once its terminal chunk is in); past
    /// `max_finished` finished runs, forgets the one that finished first at once.
    pub(crate) fn expire_after(self: &Arc<Self>, id: String, ttl: Duration, max_finished: usize) {
        let mut state = self.lock();
        // A TTL past what the clock can add is kept for a century (as good as forever).
        let now = Instant::now();
        let at = now
            .checked_add(ttl)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
            .unwrap_or(now);
        state.finished.push_back((id, at));
        while state.finished.len() > max_finished {
            if let Some((oldest, _)) = state.finished.pop_front() {
                state.forget(&oldest);
            }
        }
        if !state.sweeping {
            state.sweeping = true;
            tokio::spawn(Arc::clone(self).sweep());
        }
    }

    /// Forgets each finished run when its TTL is over, until none is left to forget.
    async fn sweep(self: Arc<Self>) {
        loop {
            let next = {
                let mut state = self.lock();
                let now = Instant::now();
                while state.finished.front().is_some_and(|(_, at)| *at <= now) {
                    if let Some((id, _)) = state.finished.pop_front() {
                        state.forget(&id);
                    }
                }
                match state.finished.front() {
                    Some(&(_, at)) => at,
                    None => {
                        state.sweeping = false;
                        return;
                    }
                }
            };
            tokio::time::sleep_until(next).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, StoreState> {
        // The map stays consistent across a panic elsewhere; use it as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StoreState {
    fn forget(&mut self, id: &str) {
        self.runs.remove(id);
        self.recent.retain(|r| r != id);
        self.names.retain(|_, run| run != id);
    }
}

#[cfg(test)]
mod tests {
    use loom_core::{ActorError, StreamChunk};

    use super::*;
    use crate::runlog::{LogBudget, LogLimits, RunTarget};

    fn run(id: &str, policy: DisconnectPolicy) -> (Arc<Run>, CancellationToken) {
        let log = Arc::new(RunLog::new(
            id,
            RunTarget::Actor("echo".into()),
            &LogBudget::new(LogLimits::default()),
        ));
        let token = CancellationToken::new();
        (Arc::new(Run::new(log, token.clone(), policy)), token)
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_reader_leaving_cancels_after_the_grace_unless_one_comes_back() {
        let grace = Duration::from_secs(10);
        let (run, token) = run("a", DisconnectPolicy::CancelAfter(grace));
        drop(run.attach());
        let back = run.attach();
        tokio::time::sleep(grace * 2).await;
        assert!(!token.is_cancelled(), "a reader came back within the grace");
        drop(back);
        tokio::time::sleep(grace / 2).await;
        assert!(!token.is_cancelled(), "still within the grace");
        tokio::time::sleep(grace).await;
        assert!(token.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_continue_run_and_a_finished_run_are_not_cancelled_by_leaving() {
        let (kept, kept_token) = run("a", DisconnectPolicy::Continue);
        drop(kept.attach());
        let (done, done_token) = run("b", DisconnectPolicy::CancelAfter(Duration::from_secs(1)));
        done.log
            .push(&StreamChunk::error(0, &ActorError::failed("x")));
        drop(done.attach());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!kept_token.is_cancelled());
        assert!(!done_token.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn runs_are_listed_newest_first_and_forgotten_after_their_ttl() {
        let store = Arc::new(RunStore::new());
        for id in ["a", "b", "c"] {
            store.insert(run(id, DisconnectPolicy::Continue).0);
        }
        let ids: Vec<_> = store.recent().into_iter().map(|r| r.run_id).collect();
        assert_eq!(ids, ["c", "b", "a"]);
        store.expire_after("b".into(), Duration::from_secs(60), 10);
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(store.get("b").is_none());
        let ids: Vec<_> = store.recent().into_iter().map(|r| r.run_id).collect();
        assert_eq!(ids, ["c", "a"]);
    }

    /// Runs started at once may reach the store in another order than they were created in:
    /// the list is by creation time all the same.
    #[tokio::test]
    async fn runs_are_listed_by_creation_time_whatever_order_they_were_stored_in() {
        let store = Arc::new(RunStore::new());
        let older = run("older", DisconnectPolicy::Continue).0;
        std::thread::sleep(Duration::from_millis(5));
        let newer = run("newer", DisconnectPolicy::Continue).0;
        store.insert(newer);
        store.insert(older);
        let ids: Vec<_> = store.recent().into_iter().map(|r| r.run_id).collect();
        assert_eq!(ids, ["newer", "older"]);
    }

    #[tokio::test(start_paused = true)]
    async fn each_finished_run_is_forgotten_at_its_own_ttl_and_the_sweeper_comes_back() {
        let store = Arc::new(RunStore::new());
        for id in ["a", "b", "c"] {
            store.insert(run(id, DisconnectPolicy::Continue).0);
        }
        let ttl = Duration::from_secs(60);
        store.expire_after("a".into(), ttl, 10);
        tokio::time::sleep(Duration::from_secs(30)).await;
        store.expire_after("b".into(), ttl, 10);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(store.get("a").is_none(), "a's TTL is over");
        assert!(store.get("b").is_some(), "b's is not");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(store.get("b").is_none());
        assert!(!store.lock().sweeping, "nothing left to forget");
        // A run finishing after the store had nothing to forget is forgotten too.
        store.expire_after("c".into(), ttl, 10);
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(store.get("c").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_bound_the_run_that_finished_first_is_forgotten_at_once() {
        let store = Arc::new(RunStore::new());
        for id in ["a", "b", "c"] {
            store.insert(run(id, DisconnectPolicy::Continue).0);
        }
        let ttl = Duration::from_secs(3600);
        store.expire_after("b".into(), ttl, 2);
        store.expire_after("a".into(), ttl, 2);
        assert!(store.get("b").is_some());
        store.expire_after("c".into(), ttl, 2);
        assert!(store.get("b").is_none(), "b finished first");
        assert!(store.get("a").is_some() && store.get("c").is_some());
    }
}
