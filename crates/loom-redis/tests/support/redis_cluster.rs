//! A real Redis Cluster for tests: `redis-server` nodes in cluster mode on free loopback
//! ports, joined with `redis-cli --cluster create`, killed on drop. Needs Redis 7 or later
//! (`--cluster-port`) with `redis-server` and `redis-cli` on the `PATH`.
//!
//! Ports come from [`super::redis_server::free_port`], so a cluster node is never handed a port
//! a [`super::redis_server::RedisServer`] of the same process was handed; include this file
//! next to `redis_server.rs` (as siblings, under those names). Every node's cluster bus port
//! is allocated the same way and passed with `--cluster-port`, instead of Redis's default of
//! port + 10000 (which may be above 65535 or taken).
//!
//! Each cluster keeps its config files and node logs in a temporary directory of its own,
//! removed on drop; a node's log tail is quoted when a wait gives up. Every wait is bounded
//! and panics with what it last saw.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::redis_server::free_port;

/// How long a node may take to answer after it is spawned.
const NODE_START: Duration = Duration::from_secs(10);
/// How long `redis-cli --cluster create` may take.
const CREATE: Duration = Duration::from_secs(30);
/// How long the cluster may take to be whole after creation (all slots served, every replica
/// attached and in sync).
const SETTLE: Duration = Duration::from_secs(30);
/// How long a failover may take, from SIGKILL to a settled cluster.
const FAILOVER: Duration = Duration::from_secs(40);
/// Number of hash slots in a Redis Cluster.
const SLOTS: u16 = 16384;

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    /// The cluster bus port (`--cluster-port`).
    bus_port: u16,
    /// `None` once killed.
    child: Option<Child>,
}

/// A Redis Cluster on loopback: `masters` masters with `replicas` replicas each, every node
/// a `redis-server` child of this process, killed on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// Config files (`nodes-PORT.conf`) and logs (`node-PORT.log`); removed on drop.
    dir: PathBuf,
    masters: usize,
    /// `--cluster-node-timeout` in ms: about how long a failover takes to begin.
    node_timeout_ms: u64,
}

impl RedisCluster {
    /// 3 masters + 1 replica each (6 `redis-server` processes), cluster-node-timeout 1000 ms.
    pub fn start() -> Self {
        Self::start_with(3, 1)
    }

    /// `masters` masters (at least 3, as `redis-cli --cluster create` requires) with
    /// `replicas` replicas each. Returns once every node reports `cluster_state:ok`, sees every
    /// other node connected, and every replica is in sync with its master.
    pub fn start_with(masters: usize, replicas: usize) -> Self {
        Self::start_timed(masters, replicas, 1000)
    }

    /// 3 masters + 1 replica each whose failovers take longer: `--cluster-node-timeout
    /// node_timeout_ms` (a failover takes that and a few seconds more; at most 15 s, Redis's
    /// default, so that [`kill_master`](Self::kill_master) waits long enough).
    pub fn start_slow_to_fail_over(node_timeout_ms: u64) -> Self {
        assert!(
            node_timeout_ms <= 15_000,
            "kill_master waits 40 s for a failover"
        );
        Self::start_timed(3, 1, node_timeout_ms)
    }

    fn start_timed(masters: usize, replicas: usize, node_timeout_ms: u64) -> Self {
        assert!(
            masters >= 3,
            "a Redis Cluster needs at least 3 masters, not {masters}"
        );
        let mut cluster = Self {
            nodes: Vec::new(),
            dir: unique_dir(),
            masters,
            node_timeout_ms,
        };
        std::fs::create_dir_all(&cluster.dir).expect("create the cluster's temporary directory");
        // From here on a panic drops `cluster`, which kills whatever was started.
        for _ in 0..masters * (1 + replicas) {
            let node = cluster.spawn_node();
            cluster.nodes.push(node);
        }
        cluster.create(replicas);
        let started = Instant::now();
        cluster.wait_settled(SETTLE, "the new cluster to settle", started);
        cluster
    }

    /// URL of the first live node: `redis://127.0.0.1:PORT/` (any node works for a cluster
    /// client). The first node until it is killed.
    pub fn url(&self) -> String {
        let port = self
            .live_ports()
            .next()
            .expect("the cluster has no live node");
        node_url(port)
    }

    /// Every live node's URL joined by commas (`redis://127.0.0.1:P1/,redis://127.0.0.1:P2/,...`);
    /// killed nodes are left out.
    pub fn urls(&self) -> String {
        self.live_ports()
            .map(node_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port of the master currently owning `key`'s hash slot, as the first live node
    /// sees it (`CLUSTER KEYSLOT` + `CLUSTER NODES`).
    pub fn master_of(&self, key: &str) -> u16 {
        let port = self
            .live_ports()
            .next()
            .expect("the cluster has no live node");
        let mut conn = self.node(port);
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .expect("CLUSTER KEYSLOT");
        let nodes = cluster_nodes(&mut conn).expect("CLUSTER NODES");
        nodes
            .iter()
            .find(|n| n.is_live_master() && n.owns(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| {
                panic!(
                    "no live master owns slot {slot} (key {key:?}) in the view of node \
                     {port}:\n{}",
                    render(&nodes)
                )
            })
    }

    /// SIGKILLs the master on `port` and waits (at most 40 s) until one of its replicas has
    /// taken over all its slots, every live node agrees on it and reports `cluster_state:ok`,
    /// and every remaining replica is in sync. Returns the new master's port.
    pub fn kill_master(&mut self, port: u16) -> u16 {
        let index = self
            .nodes
            .iter()
            .position(|n| n.port == port && n.child.is_some())
            .unwrap_or_else(|| panic!("no live node of the cluster on port {port}"));
        // What the cluster thinks before: the master's id, slots and live replicas.
        let observer = self
            .live_ports()
            .find(|p| *p != port)
            .expect("the cluster has no other live node");
        let before = cluster_nodes(&mut self.node(observer)).expect("CLUSTER NODES");
        let master = before
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("node {observer} does not know node {port}"))
            .clone();
        assert!(
            master.is_live_master() && !master.slots.is_empty(),
            "node {port} is not a master with slots:\n{}",
            render(&before)
        );
        let replicas: Vec<u16> = before
            .iter()
            .filter(|n| n.master_id == master.id && !n.flags_contain("fail"))
            .map(|n| n.port)
            .collect();
        assert!(
            !replicas.is_empty(),
            "master {port} has no live replica to fail over to:\n{}",
            render(&before)
        );
        let slot = master.slots[0].0;

        let started = Instant::now();
        let mut child = self.nodes[index].child.take().expect("a live node");
        let _ = child.kill();
        let _ = child.wait();

        let what = format!("a replica of master {port} ({replicas:?}) to take over its slots");
        let deadline = started + FAILOVER;
        let mut last;
        loop {
            last = self.new_owner(&master).and_then(|owner| {
                self.settled().map(|()| owner).map_err(|e| {
                    format!("slots taken over by {owner}, but the cluster is not settled: {e}")
                })
            });
            if let Ok(owner) = last {
                assert!(
                    replicas.contains(&owner),
                    "slot {slot} of killed master {port} went to {owner}, not to one of its \
                     replicas {replicas:?}"
                );
                return owner;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out after {:?} waiting for {what}: {}\n{}",
            started.elapsed(),
            last.err().unwrap_or_default(),
            self.log_tails()
        )
    }

    /// SIGKILLs node `port`, a master with no replica, and waits (at most the node timeout
    /// and 10 s) until another node reports `cluster_state:fail`: the cluster is down, its
    /// slots having no master.
    pub fn bring_down(&mut self, port: u16) {
        let index = self
            .nodes
            .iter()
            .position(|n| n.port == port && n.child.is_some())
            .unwrap_or_else(|| panic!("no live node of the cluster on port {port}"));
        let mut child = self.nodes[index].child.take().expect("a live node");
        let _ = child.kill();
        let _ = child.wait();
        let observer = self.live_ports().next().expect("another live node");
        let deadline = Instant::now() + Duration::from_millis(self.node_timeout_ms + 10_000);
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut self.node(observer))
                .unwrap_or_default();
            if info.lines().any(|l| l.trim() == "cluster_state:fail") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {observer} never reported the cluster down:\n{info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Moves `key`'s hash slot to another live master, as `redis-cli --cluster reshard` does:
    /// `SETSLOT … IMPORTING`/`MIGRATING`, `MIGRATE` of its keys (a few at a time, `pause`
    /// between, so clients meet `ASK` redirects meanwhile), then `SETSLOT … NODE` on every
    /// master (clients then meet `MOVED`). Returns `(from, to)` ports.
    pub fn move_slot_of(&self, key: &str, pause: Duration) -> (u16, u16) {
        let from = self.master_of(key);
        let view = cluster_nodes(&mut self.node(from)).expect("CLUSTER NODES");
        let masters: Vec<&NodeLine> = view.iter().filter(|n| n.is_live_master()).collect();
        let source = masters
            .iter()
            .find(|n| n.port == from)
            .expect("the key's master");
        let target = masters
            .iter()
            .find(|n| n.port != from)
            .expect("another master");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.node(from))
            .expect("CLUSTER KEYSLOT");
        let setslot = |port: u16, how: &str, id: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(how)
                .arg(id)
                .query::<()>(&mut self.node(port))
                .unwrap_or_else(|e| panic!("SETSLOT {slot} {how} on {port}: {e}"));
        };
        setslot(target.port, "IMPORTING", &source.id);
        setslot(from, "MIGRATING", &target.id);
        let mut source_conn = self.node(from);
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(2)
                .query(&mut source_conn)
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(target.port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query::<()>(&mut source_conn)
                .unwrap_or_else(|e| panic!("MIGRATE {keys:?}: {e}"));
            std::thread::sleep(pause);
        }
        setslot(target.port, "NODE", &target.id);
        setslot(from, "NODE", &target.id);
        for other in masters
            .iter()
            .filter(|n| n.port != from && n.port != target.port)
        {
            setslot(other.port, "NODE", &target.id);
        }
        (from, target.port)
    }

    /// A blocking connection to the node on `port` (plain, not a cluster connection: it
    /// answers MOVED for keys of other nodes), for checks. Connecting is bounded (5 s); reads
    /// are not.
    pub fn node(&self, port: u16) -> redis::Connection {
        redis::Client::open(node_url(port))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("connect to cluster node {port}: {e}"))
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }

    /// Spawns one node on fresh ports and waits until it answers as itself. Retries on other
    /// ports if it cannot bind (something took a port between allocation and bind).
    fn spawn_node(&self) -> Node {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let (port, bus_port) = (free_port(), free_port());
            match self.try_spawn_node(port, bus_port) {
                Ok(node) => return node,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "could not start a cluster node:\n{}",
            failures.join("\n---\n")
        )
    }

    fn try_spawn_node(&self, port: u16, bus_port: u16) -> Result<Node, String> {
        let dir = self.dir.to_str().expect("a UTF-8 temporary directory");
        let config = self.dir.join(format!("nodes-{port}.conf"));
        let log = self.log_path(port);
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &bus_port.to_string()])
            .args([
                "--cluster-config-file",
                config.to_str().expect("a UTF-8 path"),
            ])
            .args(["--cluster-node-timeout", &self.node_timeout_ms.to_string()])
            // A replica always tries to fail over, however long since it heard its master.
            .args(["--cluster-replica-validity-factor", "0"])
            // Replicas stay with the master they were given.
            .args(["--cluster-allow-replica-migration", "no"])
            .args(["--save", "", "--appendonly", "no"])
            // A replica's first full sync starts at once instead of after the default 5 s
            // wait for more replicas (which would make up most of the start-up time).
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--dir", dir])
            .args(["--logfile", log.to_str().expect("a UTF-8 path")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed to run these tests");
        let mut node = Node {
            port,
            bus_port,
            child: Some(child),
        };
        let pid = node.child.as_ref().map(Child::id);
        // Ready when the server on the port is this child, not another test's server that
        // took the port first.
        let deadline = Instant::now() + NODE_START;
        loop {
            if server_pid(port) == pid {
                return Ok(node);
            }
            let child = node.child.as_mut().expect("a child");
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                return Err(format!(
                    "redis-server on ports {port}/{bus_port} exited at start ({status}):\n{}",
                    tail(&log)
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                node.child = None;
                return Err(format!(
                    "redis-server on port {port} did not answer within {NODE_START:?}:\n{}",
                    tail(&log)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis-cli --cluster create`, bounded; panics with its output if it fails.
    fn create(&self, replicas: usize) {
        let output_path = self.dir.join("cluster-create.log");
        let output = File::create(&output_path).expect("create the redis-cli log");
        let mut child = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                output.try_clone().expect("clone a file handle"),
            ))
            .stderr(Stdio::from(output))
            .spawn()
            .expect("redis-cli must be installed to run these tests");
        let deadline = Instant::now() + CREATE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for redis-cli") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-cli --cluster create did not finish within {CREATE:?}; its output:\n{}",
                    std::fs::read_to_string(&output_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(&output_path).unwrap_or_default();
        // redis-cli may exit 0 after printing an error for some failures; both are fatal.
        assert!(
            status.success() && !text.contains("[ERR]"),
            "redis-cli --cluster create failed ({status}); its output:\n{text}\n{}",
            self.log_tails()
        );
    }

    /// Waits until [`Self::settled`]; panics with the last reason it was not.
    fn wait_settled(&self, within: Duration, what: &str, started: Instant) {
        let deadline = started + within;
        loop {
            let last = match self.settled() {
                Ok(()) => return,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {:?} waiting for {what}: {last}\n{}",
                    started.elapsed(),
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the cluster is whole, as every live node sees it: `cluster_state:ok`, all
    /// started nodes known, `masters` live masters owning all slots between them, every live
    /// node connected and not failed, every other live node a replica of a live master, and
    /// (on each replica) the replication link up and not syncing.
    fn settled(&self) -> Result<(), String> {
        let live: Vec<u16> = self.live_ports().collect();
        for &port in &live {
            let mut conn = redis::Client::open(node_url(port))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .map_err(|e| format!("node {port}: {e}"))?;
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut conn)
                .map_err(|e| format!("node {port}: CLUSTER INFO: {e}"))?;
            if field(&info, "cluster_state") != Some("ok") {
                return Err(format!(
                    "node {port} reports {:?}",
                    field(&info, "cluster_state")
                ));
            }
            let known = field(&info, "cluster_known_nodes");
            if known != Some(&self.nodes.len().to_string()) {
                return Err(format!(
                    "node {port} knows {known:?} nodes, not {}",
                    self.nodes.len()
                ));
            }
            let view = cluster_nodes(&mut conn).map_err(|e| format!("node {port}: {e}"))?;
            let problem = |what: &str| format!("node {port}: {what}:\n{}", render(&view));
            let masters: Vec<&NodeLine> = view.iter().filter(|n| n.is_live_master()).collect();
            if masters.len() != self.masters
                || masters
                    .iter()
                    .any(|m| m.slots.is_empty() || !live.contains(&m.port))
            {
                return Err(problem(&format!(
                    "not {} live masters with slots",
                    self.masters
                )));
            }
            let owned: u32 = masters
                .iter()
                .flat_map(|m| &m.slots)
                .map(|(a, b)| u32::from(b - a) + 1)
                .sum();
            if owned != u32::from(SLOTS) {
                return Err(problem(&format!("masters own {owned} slots")));
            }
            for &other in &live {
                let Some(n) = view.iter().find(|n| n.port == other) else {
                    return Err(problem(&format!("node {other} is unknown")));
                };
                if n.flags_contain("fail")
                    || n.flags_contain("fail?")
                    || n.flags_contain("handshake")
                    || n.link != "connected"
                {
                    return Err(problem(&format!(
                        "node {other} is not connected and healthy"
                    )));
                }
                if !n.is_live_master() && !masters.iter().any(|m| m.id == n.master_id) {
                    return Err(problem(&format!(
                        "node {other} is neither a master with slots nor a replica of one"
                    )));
                }
            }
            let me = view
                .iter()
                .find(|n| n.flags_contain("myself"))
                .ok_or_else(|| problem("no myself line"))?;
            if me.flags_contain("slave") {
                let replication: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut conn)
                    .map_err(|e| format!("node {port}: INFO replication: {e}"))?;
                if field(&replication, "master_link_status") != Some("up")
                    || field(&replication, "master_sync_in_progress") != Some("0")
                {
                    return Err(format!(
                        "replica {port} is not in sync with its master: link {:?}, syncing {:?}",
                        field(&replication, "master_link_status"),
                        field(&replication, "master_sync_in_progress")
                    ));
                }
            }
        }
        Ok(())
    }

    /// The port of the live master that every live node says owns all of `old`'s slots.
    fn new_owner(&self, old: &NodeLine) -> Result<u16, String> {
        let mut owner = None;
        for port in self.live_ports() {
            let mut conn = redis::Client::open(node_url(port))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .map_err(|e| format!("node {port}: {e}"))?;
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let view = cluster_nodes(&mut conn).map_err(|e| format!("node {port}: {e}"))?;
            for &(first, last) in &old.slots {
                for slot in [first, last] {
                    let holder = view
                        .iter()
                        .find(|n| n.is_live_master() && n.owns(slot))
                        .map(|n| n.port);
                    match (holder, owner) {
                        (Some(h), _) if h == old.port => {
                            return Err(format!("node {port} still has {h} owning slot {slot}"))
                        }
                        (None, _) => {
                            return Err(format!(
                                "node {port} sees no live master owning slot {slot}:\n{}",
                                render(&view)
                            ))
                        }
                        (Some(h), Some(o)) if h != o => {
                            return Err(format!("nodes disagree on slot {slot}: {h} or {o}"))
                        }
                        (Some(h), _) => owner = Some(h),
                    }
                }
            }
        }
        owner.ok_or_else(|| "no live node".to_owned())
    }

    fn log_path(&self, port: u16) -> PathBuf {
        self.dir.join(format!("node-{port}.log"))
    }

    /// The last lines of every node's log, for a panic message.
    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let state = if n.child.is_some() { "live" } else { "killed" };
                format!(
                    "--- node {} ({state}) log tail:\n{}",
                    n.port,
                    tail(&self.log_path(n.port))
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    /// The master's id for a replica, `-` for a master.
    master_id: String,
    link: String,
    /// Inclusive slot ranges (importing/migrating entries left out).
    slots: Vec<(u16, u16)>,
    line: String,
}

impl NodeLine {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        // `ip:port@cport[,hostname]`
        let address = fields[1].split('@').next()?;
        let port = address.rsplit(':').next()?.parse().ok()?;
        let slots = fields[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|a| (a, a)),
            })
            .collect();
        Some(Self {
            id: fields[0].to_owned(),
            port,
            flags: fields[2].split(',').map(str::to_owned).collect(),
            master_id: fields[3].to_owned(),
            link: fields[7].to_owned(),
            slots,
            line: line.to_owned(),
        })
    }

    fn flags_contain(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// A master not flagged failed (or possibly failed) that owns slots.
    fn is_live_master(&self) -> bool {
        self.flags_contain("master")
            && !self.flags_contain("fail")
            && !self.flags_contain("fail?")
            && !self.slots.is_empty()
    }

    fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

fn cluster_nodes(conn: &mut redis::Connection) -> Result<Vec<NodeLine>, String> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(conn)
        .map_err(|e| format!("CLUSTER NODES: {e}"))?;
    Ok(text.lines().filter_map(NodeLine::parse).collect())
}

fn render(view: &[NodeLine]) -> String {
    view.iter()
        .map(|n| n.line.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of `name` in an `INFO`-style `name:value` reply.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

fn node_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

/// The `process_id` of the server answering on `port`, if one answers.
fn server_pid(port: u16) -> Option<u32> {
    let mut conn = redis::Client::open(node_url(port))
        .ok()?
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
    field(&info, "process_id").and_then(|v| v.parse().ok())
}

/// A directory of this cluster's own under the system's temporary directory.
fn unique_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "loom-redis-cluster-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The last 20 lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
