//! [`Client`]: one process's handle on a Loom Redis, shared by its invokers, readers and
//! workers, with the timing knobs ([`ClientOptions`]) every party must agree on.
//!
//! A `Client` holds one multiplexed command connection ([`ConnectionManager`], reconnecting
//! with backoff) and, once the first stream is read, the process's one stream reader with its
//! own connection for the blocking `XREAD` (see `reader.rs`). Workers open two more
//! connections of their own (blocking `XREADGROUP`, cancel subscription).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use loom_core::{ChunkStream, ErrorInfo};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;
use tokio::sync::OnceCell;

use crate::codec::EntryId;
use crate::error::Error;
use crate::keys::{check_name, Keys, DEFAULT_PREFIX};
use crate::reader::{self, EntryStream, Hub, Watch};
use crate::remote::RemoteInvoker;

/// How long one command may take before the connection counts as broken.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// How long a finished (or abandoned) chunk stream stays readable (default 3,600 s).
    pub stream_ttl: Duration,
    /// How long a request may wait in the queue for a worker before its reader gives up with
    /// `error/worker_lost` (default 30 s).
    pub pickup_timeout: Duration,
    /// How long after a run's deadline its reader waits for the worker's `error/timeout`
    /// before writing one itself (default 2 s).
    pub deadline_grace: Duration,
    /// How long the reader's `XREAD` blocks when nothing arrives (default 2 s). New streams
    /// join at once regardless: the reader is woken with `CLIENT UNBLOCK`.
    pub read_block: Duration,
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
            read_block: Duration::from_secs(2),
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
        if self.stream_ttl < Duration::from_secs(1) {
            return bad("stream_ttl must be at least 1 s");
        }
        if self.read_block < Duration::from_millis(10) {
            return bad("read_block must be at least 10 ms");
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
    redis: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
    options: ClientOptions,
    hub: OnceCell<Hub>,
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
    /// Connects to the Redis at `url` (`redis://host:port/db`, `rediss://…`) with the default
    /// options. A malformed URL is [`Error::InvalidOptions`] (`bad_input`); an unreachable
    /// server is [`Error::Redis`] (`upstream`).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects to the Redis at `url` with `options`.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Self, Error> {
        options.check()?;
        let keys = Keys::new(options.prefix.clone())?;
        let redis = redis::Client::open(url)
            .map_err(|e| Error::InvalidOptions(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(2));
        let conn = redis.get_connection_manager_with_config(config).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                redis,
                conn,
                keys,
                options,
                hub: OnceCell::new(),
            }),
        })
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The timing options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// An [`Invoker`](loom_core::Invoker) that runs actors on workers through this Redis.
    pub fn invoker(&self) -> RemoteInvoker {
        RemoteInvoker::new(self.clone())
    }

    /// Replays and follows the stream `stream_id` (a run id) from just after entry `from`, or
    /// from its start when `from` is `None`; `Some("$")` follows only what is added from now.
    ///
    /// The stream ends after the terminal chunk; with `worker_lost` if the run's worker died
    /// and no other took it over; with `upstream` if Redis stays unreachable past the lease
    /// plus visibility timeout. Dropping it stops reading and does **not** cancel the run.
    /// Fails with [`Error::StreamNotFound`] if no such stream exists, and with
    /// [`Error::EntryIdPastEnd`] if `from` is past its last entry.
    pub async fn tail(&self, stream_id: &str, from: Option<&str>) -> Result<ChunkStream, Error> {
        let entries = self.tail_entries(stream_id, from).await?;
        Ok(entries.into_chunk_stream(tokio_util::sync::CancellationToken::new()))
    }

    /// Like [`tail`](Self::tail), yielding each chunk with its Redis entry id (for SSE `id:`
    /// lines and resuming with `Last-Event-ID`).
    pub async fn tail_entries(
        &self,
        stream_id: &str,
        from: Option<&str>,
    ) -> Result<EntryStream, Error> {
        check_name("stream id", stream_id)?;
        let key = self.keys().stream(stream_id);
        let mut conn = self.conn();
        let last: redis::Value = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let last = crate::codec::parse_entries(last)
            .ok()
            .and_then(|mut v| v.pop());
        let Some(last) = last else {
            return Err(Error::StreamNotFound(stream_id.to_owned()));
        };
        let from = match from {
            None => EntryId::ZERO,
            Some("$") => last.id,
            Some(id) => id.parse()?,
        };
        if from > last.id {
            // No entry of this stream has that id: a reader could wait past the terminal.
            return Err(Error::EntryIdPastEnd(from.to_string()));
        }
        if from >= last.id && crate::codec::is_terminal_entry(&last.fields) {
            // Nothing will ever come after the terminal chunk.
            return Ok(reader::ended(stream_id));
        }
        let watch = Watch::tail(&self.inner.options);
        reader::open(self.clone(), stream_id.to_owned(), from, watch).await
    }

    /// Asks run `run_id` to stop: sets its cancel key and publishes the id, so the worker
    /// running it (or the one that picks it up) ends it with `error/cancelled`.
    pub async fn cancel(&self, run_id: &str) -> Result<(), Error> {
        check_name("run id", run_id)?;
        let keys = self.keys();
        let mut conn = self.conn();
        redis::pipe()
            .cmd("SET")
            .arg(keys.cancel(run_id))
            .arg("cancelled")
            .arg("EX")
            .arg(self.inner.options.stream_ttl.as_secs())
            .ignore()
            .cmd("PUBLISH")
            .arg(keys.cancel_channel())
            .arg(run_id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// A clone of the shared command connection.
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// A new dedicated connection for a blocking command that may take up to `block`.
    pub(crate) async fn dedicated(&self, block: Duration) -> Result<MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(block + RESPONSE_TIMEOUT));
        Ok(self
            .inner
            .redis
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// The underlying redis client, for pub/sub connections.
    pub(crate) fn redis(&self) -> &redis::Client {
        &self.inner.redis
    }

    /// The process's stream reader, started on first use.
    pub(crate) async fn hub(&self) -> &Hub {
        self.inner
            .hub
            .get_or_init(|| async { Hub::start(self.clone()) })
            .await
    }

    /// Ends run `run_id` from outside its worker: marks it with `reason` in its cancel key (so
    /// a late worker does not run it), publishes the id, and appends `error` as the terminal
    /// chunk unless the stream already has one. Returns the id of the stream's terminal
    /// entry (the one written here or the one already there).
    pub(crate) async fn end_run(
        &self,
        run_id: &str,
        reason: &str,
        error: &ErrorInfo,
    ) -> Result<EntryId, Error> {
        let keys = self.keys();
        let mut conn = self.conn();
        let error = serde_json::to_string(error).unwrap_or_else(|_| "null".to_owned());
        let id: String = END_RUN
            .key(keys.stream(run_id))
            .key(keys.cancel(run_id))
            .arg(self.inner.options.stream_ttl.as_secs())
            .arg(reason)
            .arg(error)
            .invoke_async(&mut conn)
            .await?;
        let published: Result<(), _> = redis::cmd("PUBLISH")
            .arg(keys.cancel_channel())
            .arg(run_id)
            .query_async(&mut conn)
            .await;
        if let Err(e) = published {
            // The terminal chunk and the cancel key are written: a worker still holding the
            // run finds the key when its cancel listener resubscribes or the run is claimed.
            tracing::warn!(run_id, error = %e, "could not publish the end of a run");
        }
        id.parse()
    }
}

/// See [`Client::end_run`]. Both keys carry the run's hash tag, so this works on a cluster.
static END_RUN: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[1])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local seq = 0
if #last > 0 then
  local f = last[1][2]
  local t, s
  for i = 1, #f, 2 do
    if f[i] == 'type' then t = f[i + 1] elseif f[i] == 'seq' then s = f[i + 1] end
  end
  if t == 'complete' or t == 'error' then return last[1][1] end
  local n = tonumber(s)
  if not n then return redis.error_reply('the last entry has no readable seq') end
  seq = n + 1
end
local id = redis.call('XADD', KEYS[1], '*', 'type', 'error', 'data', 'null', 'seq', seq, 'error', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return id
"#,
    )
});

/// Now, in Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
