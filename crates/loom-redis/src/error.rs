//! [`Error`]: what can go wrong talking to Redis, before a run's stream exists.
//!
//! Once a run has a stream, failures travel as `error` chunks (a [`StreamChunk`] with an
//! [`ErrorCode`]), never as Rust errors. This type covers the calls around it: connecting,
//! validating names and ids, enqueueing a request. [`Error::code`] maps each case to the wire
//! code, so the CLI can exit 2 on bad input and the server can pick a status.
//!
//! [`StreamChunk`]: loom_core::StreamChunk

use loom_core::{ActorError, ErrorCode};

/// A failure of a `loom-redis` call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An actor type name, run id or stream id that must not become part of a Redis key.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// What the name was meant to be (`"actor type"`, `"stream id"`, `"key prefix"`).
        what: &'static str,
        /// The rejected name, shortened to at most 64 characters.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A Redis stream entry id that is not `<ms>` or `<ms>-<seq>` (or `$` where allowed).
    #[error(
        "invalid entry id {0:?}: expected `<seq>-1`, the entry of the chunk of that seq (e.g. \
         12-1; reading starts after it; a bare 12 means 12-0, so it starts at seq 12)"
    )]
    InvalidEntryId(String),
    /// An entry id to read after that is past the stream's last entry.
    #[error("entry id {0:?} is past the stream's last entry")]
    EntryIdPastEnd(String),
    /// Options that do not fit together (e.g. a lease refreshed less often than it expires).
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The worker was asked to serve an actor type its runtime does not have.
    #[error("unknown actor type '{0}'")]
    UnknownActor(String),
    /// No stream with that id exists (it never did, or it expired).
    #[error("no stream with id '{0}'")]
    StreamNotFound(String),
    /// Redis answered with a reply this crate cannot read (a server that speaks another
    /// protocol version, or a script's reply it does not know).
    #[error("unexpected reply from Redis: {0}")]
    UnexpectedReply(String),
    /// The actor type's queue holds [`ClientOptions::max_queued`](crate::ClientOptions::max_queued)
    /// requests already (waiting or running): the request was not queued.
    #[error("the queue of actor type '{actor}' is full (it holds {limit}, waiting or running); try again later")]
    QueueFull {
        /// The actor type.
        actor: String,
        /// The bound it reached.
        limit: u64,
    },
    /// The process's stream reader task is gone, so no stream can be read.
    #[error("the stream reader stopped")]
    ReaderStopped,
    /// A Redis Cluster that is down: a node reports `cluster_state:fail` (a master and its
    /// replicas cannot be reached, so some slots have no node to serve them) while commands
    /// wait for it. Found by [`Client::explain`](crate::Client::explain).
    #[error(
        "the Redis cluster is down: node {node} reports cluster_state:fail (a master is \
         unreachable: a failover to its replica may be under way; with none, the cluster stays \
         down until it is back; `redis-cli -h <host> -p <port> cluster nodes` shows which)"
    )]
    ClusterDown {
        /// The node that said so, `host:port`.
        node: String,
    },
    /// Redis refused or failed a command, or could not be reached. One refused because
    /// Redis is out of memory says so first (see [`Error::is_out_of_memory`]).
    #[error("{why}redis: {0}", why = if out_of_memory(.0) { OUT_OF_MEMORY } else { "" })]
    Redis(#[from] redis::RedisError),
}

/// How an [`Error::Redis`] that is Redis out of memory opens: its own words (`OOM command not
/// allowed…`) say what, not what to do.
const OUT_OF_MEMORY: &str = "Redis is out of memory (its maxmemory reached, with the \
                             noeviction policy: free memory or raise maxmemory): ";

/// Whether `e` is Redis's `OOM` error reply, alone or to one command of a pipeline.
fn out_of_memory(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM")
        || e.clone()
            .into_server_errors()
            .is_some_and(|refused| refused.iter().any(|(_, e)| e.code() == "OOM"))
}

impl Error {
    /// Whether Redis refused a write because it is out of memory (`maxmemory` reached under
    /// the `noeviction` policy): an `OOM` error reply, to a command or within a pipeline.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Self::Redis(e) if out_of_memory(e))
    }

    /// Whether Redis could not be reached or answered late, or a cluster was moving the slot
    /// (a connection refused or dropped, a timeout, `CLUSTERDOWN`, `TRYAGAIN`): not a refusal
    /// of the command itself.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::ClusterDown { .. })
            || matches!(self, Self::Redis(e) if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error())
    }

    /// Whether Redis refused the command for the user's permissions (an ACL): a `NOPERM`
    /// error reply, which asking again will not change.
    pub fn is_no_permission(&self) -> bool {
        matches!(self, Self::Redis(e) if e.code() == Some("NOPERM"))
    }

    /// The wire error code this failure stands for: `bad_input` for invalid names, ids and
    /// options, `not_found` for unknown actors and streams, `upstream` for Redis failures
    /// (and readers stopped by them) and a full queue.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidName { .. }
            | Self::InvalidEntryId(_)
            | Self::EntryIdPastEnd(_)
            | Self::InvalidOptions(_) => ErrorCode::BadInput,
            Self::UnknownActor(_) | Self::StreamNotFound(_) => ErrorCode::NotFound,
            Self::QueueFull { .. }
            | Self::UnexpectedReply(_)
            | Self::ReaderStopped
            | Self::ClusterDown { .. }
            | Self::Redis(_) => ErrorCode::Upstream,
        }
    }

    /// Whether the caller's input was at fault (the CLI exits 2 for these).
    pub fn is_bad_input(&self) -> bool {
        self.code() == ErrorCode::BadInput
    }

    pub(crate) fn invalid_name(what: &'static str, name: &str, reason: &'static str) -> Self {
        let name = if name.chars().count() > 64 {
            let mut short: String = name.chars().take(61).collect();
            short.push_str("...");
            short
        } else {
            name.to_owned()
        };
        Self::InvalidName { what, name, reason }
    }
}

impl From<Error> for ActorError {
    fn from(err: Error) -> Self {
        let code = err.code();
        let message = err.to_string();
        ActorError::new(code, message).with_source(err)
    }
}
