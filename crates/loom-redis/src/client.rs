//! [`Client`]: one process's handle on a Loom Redis, shared by its invokers, readers and
//! workers, with the timing knobs ([`ClientOptions`]) every party must agree on. It is the
//! bottom layer: the connections and the options, which every layer above is given.
//!
//! A `Client` holds one multiplexed command connection ([`ConnectionManager`], reconnecting
//! with backoff) and, once the first stream is read, the process's one stream reader
//! ([`Hub`], `hub.rs`) with its own connection for the blocking `XREAD`. Workers open two
//! more connections of their own (blocking `XREADGROUP`, cancel subscription).
//!
//! Reading streams ([`Client::tail`]) is added by `reader.rs` and starting runs
//! ([`Client::invoker`]) by `remote.rs`, the layers above.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;
use tokio::sync::OnceCell;

use crate::error::Error;
use crate::hub::Hub;
use crate::keys::{check_name, CancelReason, Keys, DEFAULT_PREFIX};
use crate::script;

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
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port/db`) with the
    /// default options, and checks that the server answers this user. A malformed URL, or a
    /// `rediss://` one (this build has no TLS), is [`Error::InvalidOptions`] (`bad_input`); an
    /// unreachable server or a refused user is [`Error::Redis`] (`upstream`).
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
        let mut conn = redis.get_connection_manager_with_config(config).await?;
        // A server that wants a password answers commands, not the connection, with NOAUTH.
        redis::cmd("PING").exec_async(&mut conn).await?;
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

    /// The actor types some live worker serves: every worker says which it serves on each
    /// heartbeat, and a type counts for one lease (`lease_ttl`) after the last worker said so.
    /// A server checks an actor type against this before queueing a request no worker would
    /// take.
    pub async fn served_actors(&self) -> Result<BTreeSet<String>, Error> {
        let actors = script::served(&mut self.conn(), &self.keys().actors()).await?;
        Ok(actors.into_iter().collect())
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
            .arg(CancelReason::Cancelled.as_str())
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
            .get_or_init(|| async {
                Hub::start(
                    self.inner.redis.clone(),
                    self.conn(),
                    self.inner.options.read_block,
                )
            })
            .await
    }
}

/// Now, in Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
