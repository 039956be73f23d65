//! [`Conn`]: one connection type for a single Redis server and for a Redis Cluster, so every
//! command above is written once; and [`Topology`], which of the two a URL names.
//!
//! On a cluster, redis-rs's [`ClusterConnection`] routes each command to the node owning its
//! keys' slot and follows `MOVED`/`ASK` redirects, topology changes and failovers. What it
//! cannot do is a command over keys of several slots: Loom never sends one (one run's keys
//! share a bucket's hash tag, see `keys.rs`, and multi-slot work is split into one pipeline
//! per slot, sent concurrently). `CLIENT UNBLOCK`, addressed to a connection rather than to
//! keys, goes to the node of the blocked read's keys: [`Conn::query_at`].
//!
//! A blocking read (the hub's `XREAD`, the worker's `XREADGROUP`) holds its connection for as
//! long as it blocks, so each has one of its own ([`Wire`], `wire.rs`): on a cluster to the one
//! node that owns the read's slot ([`Topology::blocking`]), found by following the `MOVED`
//! its first read gets from any node — not a cluster connection, which would open one per
//! node. Its reader follows later `MOVED`s the same way ([`redirect`]).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ConnectionInfo, FromRedisValue, Pipeline, RedisFuture, Value};

use crate::error::Error;
use crate::wire::{Wire, CONNECT_TIMEOUT};

/// A command connection: one server's (reconnecting) or a cluster's. Cheap to clone; clones
/// share the connection.
#[derive(Clone)]
pub(crate) enum Conn {
    /// A single server's shared command connection, reconnecting with backoff.
    Managed(ConnectionManager),
    /// A cluster: one connection per node, commands routed by slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Runs `cmd` on the node that serves `key`: on one server, simply runs it; on a cluster,
    /// routes it to the master owning `key`'s slot (for `CLIENT UNBLOCK`, which names no key
    /// but must reach the node of a blocking read).
    pub(crate) async fn query_at<T: FromRedisValue>(
        &mut self,
        cmd: Cmd,
        key: &str,
    ) -> Result<T, Error> {
        let value = match self {
            Self::Cluster(c) => {
                let route = Route::new(slot(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                c.route_command(cmd, routing).await?
            }
            other => cmd.query_async(other).await?,
        };
        redis::from_redis_value(value).map_err(|e| Error::UnexpectedReply(e.to_string()))
    }

    /// Sends `CLIENT UNBLOCK <id>` to the node that serves `key`; `Ok(true)` once a blocked
    /// command was woken.
    pub(crate) async fn unblock(&mut self, id: i64, key: &str) -> Result<bool, Error> {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(id);
        let woken: i64 = self.query_at(cmd, key).await?;
        Ok(woken == 1)
    }

    /// Whether this is a cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// Where a blocking reader connects next, on a cluster: the node a `MOVED` named (`host:port`),
/// or while none is known the `attempts`-th of the known nodes — any node answers with the
/// `MOVED` that names the right one, and each failure moves on to the next node in case this
/// one is down. On one server it is not used.
#[derive(Debug, Default)]
pub(crate) struct Reach {
    node: Option<String>,
    attempts: usize,
}

impl Reach {
    /// `node` when one is known, else the `guess`-th of the known nodes.
    pub(crate) fn new(node: Option<String>, guess: usize) -> Self {
        Self {
            node,
            attempts: guess,
        }
    }

    /// A `MOVED` named `node`: connect there next.
    pub(crate) fn moved_to(&mut self, node: String) {
        self.node = Some(node);
    }

    /// The connection failed: next time, try the next known node.
    pub(crate) fn lost(&mut self) {
        self.node = None;
        self.attempts += 1;
    }
}

/// What a blocking reader does after its read failed with `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Redirect {
    /// The slot lives on node `host:port` now: connect there and read again at once.
    MovedTo(String),
    /// The slot is moving (`ASK`, `TRYAGAIN`) or the cluster is electing (`CLUSTERDOWN`): read
    /// again on the same connection after a short wait.
    Wait,
    /// Anything else: the connection is suspect; reconnect after a backoff.
    Reconnect,
}

/// How a blocking reader answers a failed read (see [`Redirect`]).
pub(crate) fn redirect(error: &Error) -> Redirect {
    use redis::{ErrorKind, ServerErrorKind};
    let Error::Redis(error) = error else {
        return Redirect::Reconnect;
    };
    match error.kind() {
        ErrorKind::Server(ServerErrorKind::Moved) => match error.redirect_node() {
            Some((at, _)) => Redirect::MovedTo(at.to_owned()),
            None => Redirect::Reconnect,
        },
        ErrorKind::Server(
            ServerErrorKind::Ask | ServerErrorKind::TryAgain | ServerErrorKind::ClusterDown,
        ) => Redirect::Wait,
        _ => Redirect::Reconnect,
    }
}

/// Redis Cluster's slot of `key`: CRC16-CCITT (XMODEM) of its hash tag (the text between
/// the first `{` and the next `}`, when not empty) or else of the whole key, modulo 16,384.
pub(crate) fn slot(key: &str) -> u16 {
    let tagged = key
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(tag, _)| tag)
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    let crc = tagged.bytes().fold(0u16, |mut crc, byte| {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    });
    crc % 16384
}

/// What a Redis URL (or a comma-separated list of node URLs) points at.
#[derive(Clone)]
pub(crate) enum Topology {
    /// One server.
    Single(redis::Client),
    /// A cluster, reached through any of its nodes (all of them, as found when connecting,
    /// so pub/sub can move to another when one is lost).
    Cluster(Vec<redis::Client>),
}

impl Topology {
    /// A cluster connection through `nodes`, whose commands may each take up to
    /// `response_timeout`.
    pub(crate) async fn cluster(
        nodes: &[redis::Client],
        response_timeout: Duration,
    ) -> Result<ClusterConnection, Error> {
        let client = ClusterClient::builder(nodes.iter().map(|n| n.get_connection_info().clone()))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response_timeout)
            .build()?;
        Ok(client.get_async_connection().await?)
    }

    /// A new connection for one blocking reader, whose commands may each block for `block`:
    /// to the server, or on a cluster to where `reach` points (see [`Reach`]).
    pub(crate) async fn blocking(&self, block: Duration, reach: &Reach) -> Result<Wire, Error> {
        Wire::connect(&self.info(reach)?, block).await
    }

    /// How to connect to the server, or on a cluster to where `reach` points.
    pub(crate) fn info(&self, reach: &Reach) -> Result<ConnectionInfo, Error> {
        Ok(match (self, &reach.node) {
            (Self::Single(client), _) => client.get_connection_info().clone(),
            (Self::Cluster(nodes), None) => nodes[reach.attempts % nodes.len()]
                .get_connection_info()
                .clone(),
            (Self::Cluster(nodes), Some(at)) => {
                let (host, port) = at
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| Error::UnexpectedReply(format!("a node address {at:?}")))?;
                let addr = redis::ConnectionAddr::Tcp(host, port);
                nodes[0].get_connection_info().clone().set_addr(addr)
            }
        })
    }

    /// The servers to subscribe to, in the order to try them.
    pub(crate) fn pubsub_nodes(&self) -> &[redis::Client] {
        match self {
            Self::Single(client) => std::slice::from_ref(client),
            Self::Cluster(nodes) => nodes,
        }
    }
}
