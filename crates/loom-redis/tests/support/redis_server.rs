//! A real `redis-server` for tests: started on a free loopback port and killed on drop, or
//! the server named by `LOOM_TEST_REDIS_URL`. Shared by the tests of `loom-redis` and `loom`.
//!
//! Tests that stop, freeze or restart the server use [`RedisServer::start_own`], which always
//! starts one of its own: they must never run against (or skip on) a shared server.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A `redis-server` on a free loopback port, killed on drop; or the server named by
/// `LOOM_TEST_REDIS_URL`, left alone.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    url: String,
    /// `redis-server` arguments beyond port and bind (default: no persistence).
    args: Vec<String>,
}

impl RedisServer {
    /// The server named by `LOOM_TEST_REDIS_URL`, or else one of its own.
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("LOOM_TEST_REDIS_URL") {
            return Self {
                child: None,
                port: 0,
                url,
                args: Vec::new(),
            };
        }
        Self::start_own()
    }

    /// A `redis-server` of its own started with `args` (e.g. persistence settings) instead of
    /// the default `--save "" --appendonly no`; a restart keeps them.
    pub fn start_own_with(args: &[&str]) -> Self {
        Self::spawned(args.iter().map(|a| (*a).to_owned()).collect())
    }

    /// A `redis-server` of its own on a free port, whatever `LOOM_TEST_REDIS_URL` says: for
    /// tests that stop, freeze or restart it.
    pub fn start_own() -> Self {
        Self::spawned(
            ["--save", "", "--appendonly", "no"]
                .iter()
                .map(|a| (*a).to_owned())
                .collect(),
        )
    }

    fn spawned(args: Vec<String>) -> Self {
        let port = free_port();
        let mut server = Self {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}/"),
            args,
        };
        server.spawn();
        server
    }

    /// Whether this guard owns its server (and so may stop it).
    pub fn is_own(&self) -> bool {
        self.port != 0
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed to run these tests");
        let pid = child.id();
        self.child = Some(child);
        // Ready when the server on the port is this child: a test must never share another
        // test's server because both were handed the same port.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.server_pid() != Some(pid) {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "redis-server exited at start: {exited:?}");
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `process_id` of the server answering on the port, if one answers.
    fn server_pid(&self) -> Option<u32> {
        let mut conn = redis::Client::open(self.url.as_str())
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Kills the server (to test connection loss); a shared server is left alone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, as when
    /// Redis is unreachable over the network.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        assert!(self.is_own(), "only a server of its own can be paused");
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} failed");
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        assert!(self.is_own(), "only a server of its own can be restarted");
        self.stop();
        self.spawn();
    }

    /// Whether a client of this server is blocked in `command` (e.g. `"xreadgroup"`: a worker
    /// waiting for requests), as `CLIENT LIST` shows it.
    pub fn has_client_blocked_in(&self, command: &str) -> bool {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut self.plain())
            .expect("CLIENT LIST");
        let wanted = format!("cmd={command}");
        list.lines().any(|client| {
            let fields: Vec<&str> = client.split(' ').collect();
            fields.contains(&wanted.as_str())
                && fields
                    .iter()
                    .any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('b')))
        })
    }

    /// A plain synchronous connection, as another program would use.
    pub fn plain(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to the test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port no other test of this process was handed.
pub fn free_port() -> u16 {
    static HANDED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local addr").port();
        if !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
}
