//! # loom-redis: distributed streaming over Redis Streams
//!
//! When one process is not enough, Loom runs actors on workers and streams their chunks
//! through Redis; the caller still reads one [`ChunkStream`](loom_core::ChunkStream).
//!
//! - [`Client`] connects to Redis (from a URL) and carries the timing every party agrees on
//!   ([`ClientOptions`]: lease, visibility timeout, stream TTL). It also tails any stream
//!   from any entry id ([`Client::tail`]) and cancels runs ([`Client::cancel`]).
//! - [`RemoteInvoker`] implements [`loom_core::Invoker`]: it queues a request on
//!   `loom:queue:{<type>}` and returns the run's stream; dropping it cancels the run on its
//!   worker. The cancel is sent by a task of the client's: a program about to exit calls
//!   [`Client::flush_cancels`] last, or the runtime's shutdown may drop it and the run goes
//!   on to its deadline.
//! - [`Worker`] serves the queues with a local [`loom_core::Runtime`]: it runs requests,
//!   publishes their chunks with a [`Publisher`] (pipelined `XADD`s), keeps leases, re-runs
//!   dead workers' requests and honours cancels.
//! - The reader side is one multiplexed `XREAD` per process for all its streams (above a few
//!   dozen streams, on their buckets' bells and the streams they name); see [`EntryStream`].
//!
//! Keys, entry fields and semantics follow DESIGN.md §3–§4 ([`Keys`] has the table). A Redis
//! Cluster works as well as one server ([`Client::connect`] finds out which it is): a run's
//! keys share a bucket's hash tag, each bucket is read by one blocking `XREAD`, and queues can
//! be sharded ([`ClientOptions::queue_shards`]). Queues are unbounded unless callers set
//! [`ClientOptions::max_queued`]: a full queue refuses a request with [`Error::QueueFull`].
//!
//! ## Layout
//!
//! Each module uses only those listed before it, so each can be reviewed alone:
//!
//! - `error`, `backoff`, `keys` — the crate's [`Error`], reconnect waits, the key layout and
//!   the cancel key's reasons.
//! - `wire` — the blocking readers' own connection, reading RESP2 replies into shared bytes.
//! - `codec` — how chunks and requests look inside stream entries.
//! - `conn` — one connection type for a single server and a Redis Cluster, and which of the
//!   two a URL names.
//! - `script` — every Lua script (the fenced batch write, ending a run, peeking at a run,
//!   renewing and releasing a lease), each behind a typed function, all called through
//!   `redis::Script` (`EVALSHA`, reloaded on `NOSCRIPT`).
//! - `hub` — the process's multiplexed `XREAD` (one per bucket on a cluster), handing raw
//!   entries to each stream.
//! - `client` — [`Client`]: the connections and the [`ClientOptions`]; the bottom layer the
//!   others are given.
//! - `publisher` — [`Publisher`]: a run's chunks, batched into the write script.
//! - `reader` — [`EntryStream`] and [`Client::tail`]: `reader/state.rs` is the contract and
//!   liveness rules as a state machine without I/O; `reader/mod.rs` feeds it from the hub.
//! - `runs` — [`RunRecord`]s, the index of recent runs and the [`ReaderTally`] that servers
//!   in front of one Redis share.
//! - `remote` — [`RemoteInvoker`] and [`Client::invoker`]: queue a request (with its run's
//!   record), read its stream.
//! - `worker` — [`Worker`]: `fetch` (`XREADGROUP`, the `XAUTOCLAIM` sweep), `run` (one
//!   request), `lease` (take, heartbeat, hand back), `cancel` (the listener), over `state`.
//!
//! ```no_run
//! use futures::StreamExt;
//! use loom_core::{Extensions, Invoker, Registry, RunOptions, Runtime};
//! use loom_redis::{Client, Worker, WorkerOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("redis://127.0.0.1:6379").await?;
//!
//! // A worker (usually another process: `loom worker`).
//! let runtime = Runtime::new(Registry::with_builtins(), Extensions::new());
//! let worker = Worker::new(client.clone(), runtime, WorkerOptions::default());
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let worker = tokio::spawn(worker.run(async { let _ = stopped.await; }));
//!
//! // A caller.
//! let input = serde_json::json!({ "count": 300, "batch_size": 100, "delay_ms": 0 });
//! let mut chunks = client.invoker().stream("batch", input, RunOptions::default()).await?;
//! while let Some(chunk) = chunks.next().await {
//!     println!("{}", chunk.to_json());
//! }
//! let _ = stop.send(());
//! worker.await??;
//! # Ok(()) }
//! ```

mod backoff;
mod client;
mod codec;
mod conn;
mod error;
mod hub;
mod keys;
mod publisher;
mod reader;
mod remote;
mod runs;
mod script;
mod wire;
mod worker;

pub use client::{Client, ClientOptions, EXPLAIN_WITHIN, MIN_REDIS_VERSION, WRITER_CONNECTIONS};
pub use codec::EntryId;
pub use error::Error;
pub use keys::{validate_name, Keys, BELL_LEN, BUCKETS, DEFAULT_PREFIX, GROUP, MAX_NAME_LEN};
pub use publisher::{Publisher, MAX_PIPELINE, PUBLISH_BUFFER};
pub use reader::{EntryStream, StreamEntry};
pub use remote::{RemoteInvoker, Submitted};
pub use runs::{ReaderTally, RunRecord, RECENT_RUNS};
pub use worker::{
    SlotLoan, Slots, Worker, WorkerOptions, DEFAULT_MAX_RUN_BYTES, DEFAULT_MAX_RUN_CHUNKS,
};
