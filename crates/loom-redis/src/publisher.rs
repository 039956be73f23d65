//! [`Publisher`]: writes one run's chunks to its stream, one `XADD` per chunk, pipelined.
//!
//! The run hands chunks to a bounded channel; a writer task takes **whatever is queued** (up
//! to [`MAX_PIPELINE`]) and sends it as one pipeline. A slow actor's chunk is alone in the
//! channel and leaves at once; a fast actor's chunks pile up during one round trip and leave
//! together in the next, so it is not held to one round trip per chunk.
//!
//! **Bounded memory.** `XADD` does not depend on readers, so a slow or vanished reader never
//! slows the writer; and the channel holds at most [`PUBLISH_BUFFER`] chunks, so when Redis
//! itself is slow the actor waits at its `yield` instead of the worker buffering without
//! limit. Streams are not capped with `MAXLEN`: a trimmed stream would leave a reader who
//! fell behind with a gap, and the stream's TTL already bounds what Redis keeps.
//!
//! **Fencing.** Each batch is one call of the write script (`script.rs`), which appends its chunks only while
//! the run's lease key holds this writer's owner token (the worker sets it when the attempt
//! starts, and renews it only while it still holds it) and the stream has no terminal chunk
//! yet. A writer whose run was taken over (another attempt's token in the lease), handed back
//! (no lease), or ended from outside (a reader's `worker_lost`/`timeout` terminal) writes
//! nothing more: it stops, and cancels its run. A batch retried after its reply was lost is
//! recognised by its `seq` and not written twice.
//!
//! The first batch also sets the stream's TTL, so an abandoned stream expires; the one with
//! the terminal chunk sets it again (DESIGN: default 3,600 s after the end) and deletes the
//! lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loom_core::{CancellationToken, StreamChunk};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::client::Client;
use crate::conn::Conn;
use crate::error::Error;
use crate::keys::check_name;
use crate::script::{self, Written};

/// Chunks buffered between a run and its writer: enough to fill one large pipeline while the
/// previous one is in flight, small enough (a few hundred KiB of tokens) to be the worker's
/// memory bound per run.
pub const PUBLISH_BUFFER: usize = 512;

/// The most `XADD`s in one pipeline.
pub const MAX_PIPELINE: usize = 512;

/// Writes the chunks of one run to `loom:stream:{<bucket>}:<id>` (see the module docs).
#[derive(Debug)]
pub struct Publisher {
    tx: mpsc::Sender<StreamChunk>,
    discard: Arc<AtomicBool>,
    task: JoinHandle<Result<(), Error>>,
}

impl Publisher {
    /// Starts the writer for run `run_id`, on behalf of the attempt whose token `owner` the
    /// run's lease key (`loom:lease:{<bucket>}:<id>`) holds: chunks are written only while it holds
    /// `owner` and the stream has no terminal chunk (see the module docs).
    pub fn start(client: &Client, run_id: &str, owner: &str) -> Result<Self, Error> {
        Self::start_run(client, run_id, owner, None)
    }

    /// [`start`](Self::start), cancelling `run` when the writer finds it no longer owns it.
    pub(crate) fn start_run(
        client: &Client,
        run_id: &str,
        owner: &str,
        run: Option<CancellationToken>,
    ) -> Result<Self, Error> {
        check_name("run id", run_id)?;
        let (tx, rx) = mpsc::channel(PUBLISH_BUFFER);
        let discard = Arc::new(AtomicBool::new(false));
        let options = client.options();
        let writer = Writer {
            conn: client.conn(),
            stream: client.keys().stream(run_id),
            lease: client.keys().lease(run_id),
            owner: owner.to_owned(),
            run,
            ttl: options.stream_ttl.as_secs(),
            retry_for: options.visibility_timeout,
            discard: Arc::clone(&discard),
        };
        let task = tokio::spawn(writer.run(rx));
        Ok(Self { tx, discard, task })
    }

    /// Queues `chunk`; waits while [`PUBLISH_BUFFER`] chunks are already queued. Fails when
    /// the writer has stopped (Redis failed past the retry window, or the run was discarded);
    /// [`finish`](Self::finish) then says why.
    pub async fn send(&self, chunk: StreamChunk) -> Result<(), Error> {
        self.tx.send(chunk).await.map_err(|_| Error::WriterStopped)
    }

    /// Stops writing: whatever is queued and not yet sent is dropped, and nothing more is
    /// written (used when another worker took the run over, or it is handed back). Also set
    /// by the writer itself when it finds it was fenced off.
    pub fn discard(&self) {
        self.discard.store(true, Ordering::Release);
    }

    /// A handle that does what [`discard`](Self::discard) does, for another task.
    pub(crate) fn discard_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.discard)
    }

    /// Waits until everything queued is written (or discarded).
    pub async fn finish(self) -> Result<(), Error> {
        drop(self.tx);
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(Error::WriterPanicked(e.to_string())),
        }
    }
}

struct Writer {
    conn: Conn,
    stream: String,
    lease: String,
    /// The attempt token the lease must hold for a batch to be written.
    owner: String,
    /// Cancelled when the writer is fenced off.
    run: Option<CancellationToken>,
    ttl: u64,
    /// How long a failing pipeline is retried: after the visibility timeout another worker
    /// may run the request again, so writing later would only interleave two attempts.
    retry_for: Duration,
    discard: Arc<AtomicBool>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<StreamChunk>) -> Result<(), Error> {
        let mut batch = Vec::with_capacity(MAX_PIPELINE);
        let mut first = true;
        loop {
            if rx.recv_many(&mut batch, MAX_PIPELINE).await == 0 {
                return Ok(());
            }
            if self.discard.load(Ordering::Acquire) {
                return Ok(());
            }
            let terminal = batch.iter().position(StreamChunk::is_terminal);
            if let Some(at) = terminal {
                batch.truncate(at + 1);
            }
            let ttl = if first || terminal.is_some() {
                self.ttl
            } else {
                0
            };
            let why = match self.send(&batch, ttl, terminal.is_some()).await? {
                Written::Yes => None,
                Written::NotOwner => Some("the lease is not ours"),
                Written::Ended => Some("the stream already has its terminal chunk"),
            };
            if let Some(why) = why {
                tracing::warn!(stream = %self.stream, owner = %self.owner, why, "writer fenced off; stopping the run");
                self.discard.store(true, Ordering::Release);
                if let Some(run) = &self.run {
                    run.cancel();
                }
                return Ok(());
            }
            first = false;
            if terminal.is_some() {
                return Ok(());
            }
            batch.clear();
        }
    }

    /// Writes one batch, retrying Redis failures for `retry_for`.
    async fn send(
        &mut self,
        batch: &[StreamChunk],
        ttl: u64,
        terminal: bool,
    ) -> Result<Written, Error> {
        let start = Instant::now();
        let mut backoff = Backoff::default();
        loop {
            let written = script::write_batch(
                &mut self.conn,
                &self.stream,
                &self.lease,
                &self.owner,
                ttl,
                terminal,
                batch,
            )
            .await;
            match written {
                Err(Error::Redis(e)) if start.elapsed() < self.retry_for => {
                    tracing::warn!(stream = %self.stream, error = %e, "XADD failed; retrying");
                    backoff.wait().await;
                    if self.discard.load(Ordering::Acquire) {
                        return Ok(Written::Yes);
                    }
                }
                written => return written,
            }
        }
    }
}
