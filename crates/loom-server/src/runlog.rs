//! The embedded run log: one run's chunks addressed by `seq`, bounded, plus the run's status.
//!
//! The task that drives a run [`push`](RunLog::push)es every chunk here; readers (SSE
//! responses, `/run`) hold only a cursor and a [`Reader`], so a producer never waits for a
//! reader and a slow reader costs nothing but its cursor. Past [`LogLimits`] the oldest chunks
//! are dropped; a reader whose cursor falls before the oldest kept chunk gets
//! [`CursorExpired`] (HTTP `410`), never a silent jump. [`crate::store`] keeps logs by run id.
//!
//! All of a server's logs share one [`LogBudget`]: while they hold more than
//! [`LogLimits::max_total_bytes`] together, finished logs give back what they hold first (the
//! oldest first, down to their terminal chunk), then a running log that writes trims itself to
//! its share (the total over the number of running logs). So 10,000 runs cost the server about
//! that budget, not 10,000 times a log's own bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::SystemTime;

use bytes::Bytes;
use loom_core::{ChunkType, ErrorCode, StreamChunk};
use serde::Serialize;
use tokio::sync::watch;

/// The most chunks one embedded log keeps; older ones are dropped (cursors before them: 410).
pub const DEFAULT_MAX_CHUNKS: usize = 10_000;

/// The most bytes of chunk JSON one embedded log keeps; older chunks are dropped past it.
pub const DEFAULT_MAX_BYTES: usize = 8 * 1024 * 1024;

/// The budget of all of a server's logs together (chunk JSON plus [`CHUNK_OVERHEAD`] each):
/// past it, finished logs give back their chunks and running ones trim to their share.
pub const DEFAULT_MAX_TOTAL_BYTES: usize = 128 * 1024 * 1024;

/// About what a kept chunk costs beyond its JSON: the shared record, the JSON buffer's spare
/// capacity and the queue's slot. Counted against the total budget only.
pub const CHUNK_OVERHEAD: usize = 128;

/// The most chunks a reader takes from the log at once, so one read never copies a whole log.
const READ_BATCH: usize = 256;

/// How much of a run one log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// The most chunks kept.
    pub max_chunks: usize,
    /// The most bytes of chunk JSON kept (the newest chunk is always kept).
    pub max_bytes: usize,
    /// The budget of all the server's logs together, counting [`CHUNK_OVERHEAD`] per chunk:
    /// past it, finished logs are trimmed to their terminal chunk (the oldest first), then a
    /// running log that writes trims itself to its share.
    pub max_total_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_chunks: DEFAULT_MAX_CHUNKS,
            max_bytes: DEFAULT_MAX_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
        }
    }
}

/// The limits every log of one server keeps to, and what they hold together.
#[derive(Debug)]
pub struct LogBudget {
    limits: LogLimits,
    /// Bytes held by every log, overhead included.
    used: AtomicUsize,
    /// Logs whose run has not ended.
    running: AtomicUsize,
    /// Finished logs in the order they finished: the first to give back their chunks.
    finished: Mutex<VecDeque<Weak<RunLog>>>,
    /// How many `finished` holds, read without its lock: every write asks whether there is
    /// anything to reclaim, and the answer is almost always no.
    waiting: AtomicUsize,
}

impl LogBudget {
    /// A budget for logs kept to `limits`.
    pub fn new(limits: LogLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            used: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            finished: Mutex::new(VecDeque::new()),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Bytes held by every log together, overhead included.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.used() > self.limits.max_total_bytes
    }

    /// Whether a running log holding `bytes` (overhead included) must drop its oldest chunk.
    fn over_share(&self, bytes: usize) -> bool {
        self.over()
            && bytes > self.limits.max_total_bytes / self.running.load(Ordering::Relaxed).max(1)
    }

    /// While over the budget, trims finished logs to their terminal chunk, the oldest first.
    fn reclaim(&self) {
        while self.over() && self.waiting.load(Ordering::Relaxed) > 0 {
            let oldest = {
                let mut queue = self.queue();
                let oldest = queue.pop_front();
                self.waiting.store(queue.len(), Ordering::Relaxed);
                oldest
            };
            if let Some(log) = oldest.and_then(|log| log.upgrade()) {
                log.keep_only_terminal();
            }
        }
    }

    /// Queues `log`, just finished, to give back its chunks when the budget is short.
    fn finished(&self, log: Weak<RunLog>) {
        let mut queue = self.queue();
        // Forgotten logs leave the queue here, so it holds at most the logs still kept.
        queue.retain(|log| log.strong_count() > 0);
        queue.push_back(log);
        self.waiting.store(queue.len(), Ordering::Relaxed);
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Weak<RunLog>>> {
        self.finished.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a run is: running, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// No terminal chunk yet.
    Running,
    /// Ended with `complete`.
    Complete,
    /// Ended with an `error` other than `cancelled`.
    Error,
    /// Ended with `error/cancelled`.
    Cancelled,
}

impl RunStatus {
    /// How a run ended with `terminal`, and its error code if any.
    pub fn of_terminal(terminal: &StreamChunk) -> (Self, Option<ErrorCode>) {
        let code = terminal.error.as_ref().map(|e| e.code);
        let status = match (terminal.kind, code) {
            (ChunkType::Complete, _) => Self::Complete,
            (_, Some(ErrorCode::Cancelled)) => Self::Cancelled,
            _ => Self::Error,
        };
        (status, code)
    }
}

/// What a run runs: an actor type or a workflow name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunTarget {
    /// An actor, by type.
    Actor(String),
    /// A loaded workflow, by name.
    Workflow(String),
}

impl RunTarget {
    /// What a name in an actor type's place names (DESIGN.md §3a): `workflows/<name>` is a
    /// workflow, anything else an actor type.
    pub fn named(name: &str) -> Self {
        match name.strip_prefix(loom_workflow::WORKFLOW_ACTOR_PREFIX) {
            Some(workflow) => Self::Workflow(workflow.to_owned()),
            None => Self::Actor(name.to_owned()),
        }
    }

    /// The actor type it runs as, [`named`](Self::named)'s inverse: a workflow is
    /// `workflows/<name>` (what workers serve and queues are named by).
    pub fn actor_type(&self) -> String {
        match self {
            Self::Actor(actor) => actor.clone(),
            Self::Workflow(name) => format!("{}{name}", loom_workflow::WORKFLOW_ACTOR_PREFIX),
        }
    }

    /// How messages name it: `actor type 'echo'`, `workflow 'report'`.
    pub fn describe(&self) -> String {
        match self {
            Self::Actor(actor) => format!("actor type '{actor}'"),
            Self::Workflow(name) => format!("workflow '{name}'"),
        }
    }
}

/// A run's status as `GET /v1/runs/{id}` shows it (DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunInfo {
    /// The run id.
    pub run_id: String,
    /// The actor type, when the run is an actor's.
    pub actor: Option<String>,
    /// The workflow name, when the run is a workflow's.
    pub workflow: Option<String>,
    /// Running, or how it ended.
    pub status: RunStatus,
    /// The terminal error's code, when it ended with one.
    pub error_code: Option<ErrorCode>,
    /// When the run started (RFC 3339, UTC).
    pub created_at: String,
    /// The `seq` of the last chunk written, if any.
    pub last_seq: Option<u64>,
}

/// One chunk as the log keeps it: its `seq`, type and JSON, serialized once for every reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedChunk {
    /// The chunk's `seq`.
    pub seq: u64,
    /// The chunk's type (the SSE `event:`).
    pub kind: ChunkType,
    /// The chunk's JSON (the SSE `data:`).
    pub json: Bytes,
    /// Whether the log holds it: a chunk the server made itself (a reader's verdict when it
    /// lost Redis) is sent without an `id:`, so a resume is never confused by it.
    pub in_log: bool,
}

/// A cursor older than the oldest chunk the log still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} needs chunks this log no longer holds (its oldest is seq {oldest})",
    cursor.map_or_else(
        || "reading from the run's start".to_owned(),
        |seq| format!("resuming after seq {seq}")
    )
)]
pub struct CursorExpired {
    /// The cursor asked for (`None`: from the start).
    pub cursor: Option<u64>,
    /// The oldest `seq` still held.
    pub oldest: u64,
}

/// What one read of the log gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Chunks after the cursor, in order.
    Chunks(Vec<Arc<LoggedChunk>>),
    /// Nothing yet: the run goes on.
    Pending,
    /// Nothing more: the cursor is at or past the terminal chunk.
    Finished,
}

/// One run's log and status. Shared as `Arc<RunLog>` by its producer and readers.
#[derive(Debug)]
pub struct RunLog {
    run_id: String,
    target: RunTarget,
    created_at: SystemTime,
    budget: Arc<LogBudget>,
    state: Mutex<LogState>,
    /// Bumped on every write; readers wait on it for more.
    written: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct LogState {
    chunks: VecDeque<Arc<LoggedChunk>>,
    /// Bytes of chunk JSON held.
    bytes: usize,
    /// The `seq` the first chunk written had (0 for a local run): a log that dropped nothing
    /// still holds it.
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    terminal: Option<Terminal>,
}

impl LogState {
    /// What the log holds against the budget: its JSON plus the overhead of each chunk.
    fn held(&self) -> usize {
        self.bytes + self.chunks.len() * CHUNK_OVERHEAD
    }

    fn drop_oldest(&mut self, budget: &LogBudget) {
        if let Some(old) = self.chunks.pop_front() {
            self.bytes -= old.json.len();
            budget
                .used
                .fetch_sub(old.json.len() + CHUNK_OVERHEAD, Ordering::Relaxed);
        }
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        let state = self.lock();
        let (held, running) = (state.held(), state.terminal.is_none());
        drop(state);
        self.budget.used.fetch_sub(held, Ordering::Relaxed);
        if running {
            self.budget.running.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Terminal {
    seq: u64,
    status: RunStatus,
    code: Option<ErrorCode>,
}

impl RunLog {
    /// An empty log for run `run_id` of `target`, kept within `budget`.
    pub fn new(run_id: impl Into<String>, target: RunTarget, budget: &Arc<LogBudget>) -> Self {
        budget.running.fetch_add(1, Ordering::Relaxed);
        Self {
            run_id: run_id.into(),
            target,
            created_at: SystemTime::now(),
            budget: Arc::clone(budget),
            state: Mutex::new(LogState::default()),
            written: watch::Sender::new(0),
        }
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Appends `chunk`, dropping the oldest chunks past the limits. Anything after the
    /// terminal chunk is ignored: a late completion never overwrites `cancelled`.
    pub fn push(self: &Arc<Self>, chunk: &StreamChunk) {
        let budget = &self.budget;
        let finished = {
            let mut state = self.lock();
            if state.terminal.is_some() {
                return;
            }
            let logged = Arc::new(LoggedChunk {
                seq: chunk.seq,
                kind: chunk.kind,
                json: Bytes::from(chunk.to_json()),
                in_log: true,
            });
            state.first_seq.get_or_insert(chunk.seq);
            state.last_seq = Some(chunk.seq);
            state.bytes += logged.json.len();
            budget
                .used
                .fetch_add(logged.json.len() + CHUNK_OVERHEAD, Ordering::Relaxed);
            state.chunks.push_back(logged);
            if chunk.is_terminal() {
                let (status, code) = RunStatus::of_terminal(chunk);
                state.terminal = Some(Terminal {
                    seq: chunk.seq,
                    status,
                    code,
                });
                budget.running.fetch_sub(1, Ordering::Relaxed);
            }
            let limits = &budget.limits;
            let running = state.terminal.is_none();
            while state.chunks.len() > limits.max_chunks
                || (state.chunks.len() > 1
                    && (state.bytes > limits.max_bytes
                        || (running && budget.over_share(state.held()))))
            {
                state.drop_oldest(budget);
            }
            !running
        };
        self.written.send_modify(|n| *n += 1);
        if finished {
            budget.finished(Arc::downgrade(self));
        }
        // Outside this log's lock: reclaiming locks finished logs, one at a time.
        budget.reclaim();
    }

    /// Drops every chunk but the terminal one (a finished log giving back its memory):
    /// cursors before it get [`CursorExpired`], the end and the status stay.
    fn keep_only_terminal(&self) {
        let mut state = self.lock();
        while state.chunks.len() > 1 {
            state.drop_oldest(&self.budget);
        }
    }

    /// Whether the terminal chunk is in.
    pub fn is_finished(&self) -> bool {
        self.lock().terminal.is_some()
    }

    /// The run's status now.
    pub fn info(&self) -> RunInfo {
        let state = self.lock();
        let (actor, workflow) = match &self.target {
            RunTarget::Actor(a) => (Some(a.clone()), None),
            RunTarget::Workflow(w) => (None, Some(w.clone())),
        };
        RunInfo {
            run_id: self.run_id.clone(),
            actor,
            workflow,
            status: state.terminal.map_or(RunStatus::Running, |t| t.status),
            error_code: state.terminal.and_then(|t| t.code),
            created_at: humantime::format_rfc3339_millis(self.created_at).to_string(),
            last_seq: state.last_seq,
        }
    }

    /// The chunks with `seq > after` (every chunk when `after` is `None`), up to a batch.
    pub fn read(&self, after: Option<u64>) -> Result<Read, CursorExpired> {
        let state = self.lock();
        if let (Some(terminal), Some(after)) = (state.terminal, after) {
            if after >= terminal.seq {
                return Ok(Read::Finished);
            }
        }
        let Some(oldest) = state.chunks.front().map(|c| c.seq) else {
            return Ok(Read::Pending);
        };
        // The first seq wanted: the one after the cursor, or the run's first.
        let wanted = match after {
            // No chunk comes after the last `seq` there can be.
            Some(after) => after.saturating_add(1),
            None => state.first_seq.unwrap_or(oldest),
        };
        if wanted < oldest {
            return Err(CursorExpired {
                cursor: after,
                oldest,
            });
        }
        // `seq`s in one log are gapless, so the wanted chunk's place is an offset.
        let skip = usize::try_from(wanted - oldest).unwrap_or(usize::MAX);
        let chunks: Vec<_> = state
            .chunks
            .iter()
            .skip(skip)
            .take(READ_BATCH)
            .cloned()
            .collect();
        Ok(if chunks.is_empty() {
            Read::Pending
        } else {
            Read::Chunks(chunks)
        })
    }

    /// A reader from after `cursor` (from the start when `None`).
    pub fn reader(self: &Arc<Self>, cursor: Option<u64>) -> Reader {
        Reader {
            log: Arc::clone(self),
            cursor,
            written: self.written.subscribe(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock cannot leave the state half-written in a way that
        // matters more than losing the run, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cursor into one log that waits for more.
#[derive(Debug)]
pub struct Reader {
    log: Arc<RunLog>,
    cursor: Option<u64>,
    written: watch::Receiver<u64>,
}

impl Reader {
    /// The next chunks after the cursor, waiting while there are none; `Ok(None)` once the
    /// terminal chunk has been read (or the cursor was at or past it).
    pub async fn next(&mut self) -> Result<Option<Vec<Arc<LoggedChunk>>>, CursorExpired> {
        loop {
            // Marking the version seen before reading means a write after the read wakes us.
            self.written.borrow_and_update();
            match self.log.read(self.cursor)? {
                Read::Chunks(chunks) => {
                    self.cursor = chunks.last().map(|c| c.seq).or(self.cursor);
                    return Ok(Some(chunks));
                }
                Read::Finished => return Ok(None),
                Read::Pending => {
                    // The sender lives in the log this reader holds, so it is never closed.
                    let _ = self.written.changed().await;
                }
            }
        }
    }

    /// The `seq` of the last chunk read, if any.
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use loom_core::ActorError;

    use super::*;

    #[test]
    fn workflows_are_named_with_their_prefix() {
        assert_eq!(
            RunTarget::named("workflows/report"),
            RunTarget::Workflow("report".into())
        );
        assert_eq!(
            RunTarget::named("chat-agent"),
            RunTarget::Actor("chat-agent".into())
        );
    }

    fn log(limits: LogLimits) -> Arc<RunLog> {
        Arc::new(RunLog::new(
            "r1",
            RunTarget::Actor("echo".into()),
            &LogBudget::new(limits),
        ))
    }

    fn data(seq: u64) -> StreamChunk {
        let mut chunk = StreamChunk::new(ChunkType::Data, seq);
        chunk.data = Some(serde_json::json!({ "n": seq }));
        chunk
    }

    fn seqs(read: Read) -> Vec<u64> {
        match read {
            Read::Chunks(c) => c.iter().map(|c| c.seq).collect(),
            other => panic!("expected chunks, got {other:?}"),
        }
    }

    #[test]
    fn a_cursor_at_the_largest_seq_waits_for_the_end_of_a_running_run() {
        let log = log(LogLimits::default());
        log.push(&data(0));
        assert_eq!(log.read(Some(u64::MAX)), Ok(Read::Pending));
    }

    #[test]
    fn reads_are_exclusive_of_the_cursor_and_stop_at_the_terminal() {
        let log = log(LogLimits::default());
        assert_eq!(log.read(None), Ok(Read::Pending));
        for seq in 0..3 {
            log.push(&data(seq));
        }
        assert_eq!(seqs(log.read(None).unwrap()), [0, 1, 2]);
        assert_eq!(seqs(log.read(Some(0)).unwrap()), [1, 2]);
        assert_eq!(log.read(Some(2)), Ok(Read::Pending));
        log.push(&StreamChunk::new(ChunkType::Complete, 3));
        assert_eq!(seqs(log.read(Some(2)).unwrap()), [3]);
        assert_eq!(log.read(Some(3)), Ok(Read::Finished));
        assert_eq!(log.read(Some(99)), Ok(Read::Finished));
        assert_eq!(log.read(Some(u64::MAX)), Ok(Read::Finished));
        assert_eq!(log.info().status, RunStatus::Complete);
        assert_eq!(log.info().last_seq, Some(3));
    }

    #[test]
    fn past_the_chunk_bound_the_oldest_are_dropped_and_their_cursors_expire() {
        let log = log(LogLimits {
            max_chunks: 3,
            max_bytes: usize::MAX,
            ..LogLimits::default()
        });
        for seq in 0..5 {
            log.push(&data(seq));
        }
        assert_eq!(seqs(log.read(Some(1)).unwrap()), [2, 3, 4]);
        let expired = CursorExpired {
            cursor: Some(0),
            oldest: 2,
        };
        assert_eq!(log.read(Some(0)), Err(expired));
        assert!(log.read(None).is_err(), "seq 0 is gone: no silent jump");
    }

    #[test]
    fn past_the_byte_bound_the_oldest_are_dropped_but_the_newest_is_kept() {
        let one = data(0).to_json().len();
        let log = log(LogLimits {
            max_chunks: 100,
            max_bytes: one * 2,
            ..LogLimits::default()
        });
        for seq in 0..4 {
            log.push(&data(seq));
        }
        assert_eq!(seqs(log.read(Some(1)).unwrap()), [2, 3]);
        let tiny = self::log(LogLimits {
            max_chunks: 100,
            max_bytes: 1,
            ..LogLimits::default()
        });
        tiny.push(&data(0));
        assert_eq!(seqs(tiny.read(None).unwrap()), [0]);
    }

    #[test]
    fn logs_sharing_a_budget_trim_finished_ones_first_then_to_their_share() {
        // Seqs of three digits, so every chunk costs the same.
        let one = data(100).to_json().len() + CHUNK_OVERHEAD;
        let budget = LogBudget::new(LogLimits {
            max_total_bytes: one * 10,
            ..LogLimits::default()
        });
        let new = |id: &str| Arc::new(RunLog::new(id, RunTarget::Actor("echo".into()), &budget));
        let (a, b) = (new("a"), new("b"));
        for seq in 100..106 {
            a.push(&data(seq));
        }
        // Within the total: a keeps all 6.
        assert_eq!(budget.used(), one * 6);
        for seq in 100..120 {
            b.push(&data(seq));
        }
        // Past the total, b (the writer) trims to its share of 5; a is not written to.
        assert_eq!(
            seqs(b.read(Some(114)).expect("read")),
            (115..120).collect::<Vec<_>>()
        );
        assert!(b.read(Some(113)).is_err(), "a trimmed cursor expires");
        assert_eq!(budget.used(), one * 11);
        a.push(&data(106));
        assert_eq!(
            seqs(a.read(Some(101)).expect("read")),
            (102..107).collect::<Vec<_>>()
        );
        assert!(a.read(Some(100)).is_err());
        assert_eq!(budget.used(), one * 10);
        // a finishes past the budget: a finished log is the first to give back its chunks
        // (all but its terminal one), and b, the one running log, may now use it all.
        let mut end = data(107);
        end.kind = ChunkType::Complete;
        let last = end.to_json().len() + CHUNK_OVERHEAD;
        a.push(&end);
        assert_eq!(budget.used(), one * 5 + last);
        assert_eq!(seqs(a.read(Some(106)).expect("read")), vec![107]);
        assert!(
            a.read(Some(105)).is_err(),
            "a keeps only its terminal chunk"
        );
        assert_eq!(a.info().status, RunStatus::Complete);
        for seq in 120..125 {
            b.push(&data(seq));
        }
        assert_eq!(
            seqs(b.read(Some(114)).expect("read")),
            (115..125).collect::<Vec<_>>()
        );
        assert_eq!(budget.used(), one * 10 + last);
        drop(b);
        assert_eq!(budget.used(), last);
    }

    #[test]
    fn a_late_completion_never_overwrites_cancelled() {
        let log = log(LogLimits::default());
        log.push(&StreamChunk::error(0, &ActorError::cancelled()));
        log.push(&StreamChunk::new(ChunkType::Complete, 1));
        let info = log.info();
        assert_eq!(info.status, RunStatus::Cancelled);
        assert_eq!(info.error_code, Some(ErrorCode::Cancelled));
        assert_eq!(info.last_seq, Some(0));
    }

    #[tokio::test]
    async fn a_reader_waits_for_more_and_ends_after_the_terminal() {
        let log = log(LogLimits::default());
        let mut reader = log.reader(None);
        let producer = {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                for seq in 0..50 {
                    log.push(&data(seq));
                    tokio::task::yield_now().await;
                }
                log.push(&StreamChunk::new(ChunkType::Complete, 50));
            })
        };
        let mut seen = Vec::new();
        let read_all = async {
            while let Some(chunks) = reader.next().await.unwrap() {
                seen.extend(chunks.iter().map(|c| c.seq));
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read_all)
            .await
            .expect("the reader ends after the terminal");
        producer.await.unwrap();
        assert_eq!(seen, (0..=50).collect::<Vec<_>>());
        assert_eq!(reader.cursor(), Some(50));
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_the_bound_gets_cursor_expired() {
        let log = log(LogLimits {
            max_chunks: 2,
            max_bytes: usize::MAX,
            ..LogLimits::default()
        });
        let mut reader = log.reader(None);
        for seq in 0..5 {
            log.push(&data(seq));
        }
        let err = reader.next().await.unwrap_err();
        assert_eq!(err.oldest, 3);
    }
}
