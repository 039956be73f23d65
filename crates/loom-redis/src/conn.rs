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

use std::time::{Duration, Instant};

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
    /// Node `node` (`host:port`).
    pub(crate) fn at(node: String) -> Self {
        Self {
            node: Some(node),
            attempts: 0,
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

/// One line of `CLUSTER NODES`: a node's address, and the slot ranges it serves when it is a
/// master not flagged as failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterNode {
    /// The node's `host:port`.
    pub(crate) address: String,
    /// Its slot ranges, first and last slot; empty for a replica or a failing master.
    pub(crate) slots: Vec<(u16, u16)>,
}

/// The cluster's nodes as the node `conn` reaches sees them (`CLUSTER NODES`).
pub(crate) async fn list_nodes(conn: &mut impl ConnectionLike) -> Result<Vec<ClusterNode>, Error> {
    let listing: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    Ok(cluster_nodes(&listing))
}

/// The nodes of a `CLUSTER NODES` listing, in its order; lines it cannot read are skipped.
/// A line is `<id> <host>:<port>@<bus port>[,<hostname>] <flags> <master id> <ping sent>
/// <pong received> <epoch> <link> <slot or range>…`; a slot being migrated (`[5->-<id>]`)
/// is left out.
pub(crate) fn cluster_nodes(listing: &str) -> Vec<ClusterNode> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let address = fields.nth(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return None;
            }
            let flags = fields.next()?;
            let serving = flags.split(',').any(|f| f == "master")
                && !flags.split(',').any(|f| f == "fail" || f == "fail?");
            let slots = fields
                .skip(5)
                .filter(|_| serving)
                .filter_map(|range| {
                    let (first, last) = range.split_once('-').unwrap_or((range, range));
                    Some((first.parse().ok()?, last.parse().ok()?))
                })
                .collect();
            Some(ClusterNode {
                address: address.to_owned(),
                slots,
            })
        })
        .collect()
}

/// How long a node a writer could not reach is left alone (its slots' writers go through
/// the cluster connection meanwhile), unless a `MOVED` names it first: long enough to ride
/// out a failover, short enough for a master that restarted in place to be used again soon.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// The least time between two `CLUSTER NODES` a failing writer asks for.
const RELEARN_EVERY: Duration = Duration::from_secs(1);

/// On a cluster, the master each slot's writers connect to (`Client::writer_wire`): learned
/// from `CLUSTER NODES` when the client connects, corrected by each `MOVED` a writer meets,
/// and learned again (at most once per [`RELEARN_EVERY`]) after a writer could not reach
/// its node or found the node it would use marked down. A node a writer could not reach is
/// not tried again for [`DOWN_FOR`]: during a failover one writer meets the dead master, not
/// every new run, and the other masters' slots are not forgotten.
#[derive(Debug, Default)]
pub(crate) struct Masters {
    /// `(first slot, last slot, "host:port")`; a `MOVED`'s single slot comes first.
    ranges: Vec<(u16, u16, String)>,
    /// The nodes a writer could not reach, and when.
    down: Vec<(String, Instant)>,
    /// A writer met a node down since the last listing.
    stale: bool,
    /// When the last listing was asked for.
    asked: Option<Instant>,
}

impl Masters {
    /// Takes the masters' slots from `nodes` (a `CLUSTER NODES` listing), in place of what
    /// was known.
    pub(crate) fn learn(&mut self, nodes: &[ClusterNode]) {
        self.ranges = nodes
            .iter()
            .flat_map(|n| n.slots.iter().map(|&(a, b)| (a, b, n.address.clone())))
            .collect();
    }

    /// The master to write `slot`'s keys on, or `None` when no live one is known (the
    /// writer then goes through the cluster connection).
    pub(crate) fn node(&mut self, slot: u16) -> Option<String> {
        let found = self
            .ranges
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot));
        let Some((_, _, node)) = found else {
            // Its master was failing when last listed: ask again (at most once a second).
            self.stale = true;
            return None;
        };
        self.down.retain(|(_, at)| at.elapsed() < DOWN_FOR);
        if self.down.iter().any(|(down, _)| down == node) {
            self.stale = true;
            return None;
        }
        Some(node.clone())
    }

    /// Whether to ask for a new listing now: a writer met a node down or a slot with no live
    /// master, and the last listing is older than [`RELEARN_EVERY`]. Counts as asked.
    pub(crate) fn relearn_now(&mut self) -> bool {
        let due = self.stale && self.asked.is_none_or(|at| at.elapsed() >= RELEARN_EVERY);
        if due {
            self.stale = false;
            self.asked = Some(Instant::now());
        }
        due
    }

    /// A `MOVED` named `node` for `slot`.
    pub(crate) fn moved(&mut self, slot: u16, node: String) {
        self.down.retain(|(down, _)| *down != node);
        self.ranges.retain(|&(a, b, _)| (a, b) != (slot, slot));
        self.ranges.insert(0, (slot, slot, node));
    }

    /// A writer could not reach `node`.
    pub(crate) fn down(&mut self, node: &str) {
        self.down.retain(|(down, _)| down != node);
        self.down.push((node.to_owned(), Instant::now()));
        self.stale = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
07c3 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\n\
67ed 127.0.0.1:7002@17002,node-b master - 0 1426238316232 2 connected 5461-10922 [10923->-292f]\n\
292f 127.0.0.1:7003@17003 master,fail - 0 1426238318243 3 disconnected 10923-16383\n\
6ec2 127.0.0.1:7004@17004 slave 07c3 0 1426238317741 1 connected\n\
bad line\n";

    #[test]
    fn a_listing_gives_every_node_and_the_slots_of_live_masters_only() {
        let nodes = cluster_nodes(LISTING);
        let addresses: Vec<_> = nodes.iter().map(|n| n.address.as_str()).collect();
        assert_eq!(
            addresses,
            [
                "127.0.0.1:7001",
                "127.0.0.1:7002",
                "127.0.0.1:7003",
                "127.0.0.1:7004"
            ]
        );
        assert_eq!(nodes[0].slots, [(0, 5460)]);
        // A slot being migrated is not the node's yet.
        assert_eq!(nodes[1].slots, [(5461, 10922)]);
        // A failing master and a replica serve no slot.
        assert!(nodes[2].slots.is_empty() && nodes[3].slots.is_empty());
    }

    #[test]
    fn writers_avoid_a_node_down_until_a_moved_or_a_new_listing_names_a_live_one() {
        let mut masters = Masters::default();
        masters.learn(&cluster_nodes(LISTING));
        assert_eq!(masters.node(100).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(masters.node(6000).as_deref(), Some("127.0.0.1:7002"));
        assert!(!masters.relearn_now(), "nothing failed yet");
        // The failing master's slots have no node: the cluster connection writes them, and
        // the client asks again who serves them.
        assert_eq!(masters.node(12000), None);
        assert!(masters.relearn_now());
        masters.learn(&cluster_nodes(LISTING));

        masters.down("127.0.0.1:7001");
        assert_eq!(masters.node(100), None);
        // The other master's slots are not forgotten.
        assert_eq!(masters.node(6000).as_deref(), Some("127.0.0.1:7002"));
        assert!(!masters.relearn_now(), "at most one listing a second");
        masters.learn(&cluster_nodes(
            "6ec2 127.0.0.1:7004@17004 master - 0 0 4 connected 0-5460",
        ));
        assert_eq!(masters.node(100).as_deref(), Some("127.0.0.1:7004"));

        masters.down("127.0.0.1:7004");
        masters.moved(100, "127.0.0.1:7004".to_owned());
        assert_eq!(masters.node(100).as_deref(), Some("127.0.0.1:7004"));
        masters.moved(100, "127.0.0.1:7002".to_owned());
        assert_eq!(masters.node(100).as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(masters.node(101).as_deref(), Some("127.0.0.1:7004"));
    }
}
