//! The CLI in distributed mode, with real subprocesses: `loom worker` and
//! `loom actor run … --redis` through a real `redis-server`, Ctrl-C cancelling on the worker,
//! a worker killed with SIGKILL mid-stream, `loom stream tail`, and hostile names.

mod support;

#[path = "../../loom-redis/tests/support/redis_server.rs"]
mod redis_server;

use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use serde_json::{json, Value};
use support::*;

/// A `loom worker` subprocess, killed on drop.
struct WorkerProcess(Child);

impl WorkerProcess {
    fn start(redis: &RedisServer) -> Self {
        Self::with(redis, &[])
    }

    /// One started with `more` arguments too (`--actors a,b`).
    fn with(redis: &RedisServer, more: &[&str]) -> Self {
        let mut args = vec!["--concurrency", "4"];
        args.extend_from_slice(more);
        Self::args(redis, &args)
    }

    /// `loom worker --redis URL <args>`, nothing else.
    fn args(redis: &RedisServer, args: &[&str]) -> Self {
        let mut all = vec!["worker", "--redis", redis.url()];
        all.extend_from_slice(args);
        let child = loom(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("loom worker starts");
        Self(child)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `loom actor run <args> --stream --json --redis URL` and returns it with its lines.
fn remote_run(redis: &RedisServer, args: &[&str]) -> (Child, Receiver<String>) {
    let mut all = vec!["actor", "run"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--stream", "--json", "--redis", redis.url()]);
    spawn_lines(&mut loom(&all))
}

/// Reads chunks until `until` holds for one, within [`LIMIT`].
fn read_until(lines: &Receiver<String>, seen: &mut Vec<Value>, until: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("the awaited chunk in time");
        let chunk: Value = serde_json::from_str(&line).expect("a JSON chunk");
        let done = until(&chunk);
        seen.push(chunk);
        if done {
            return;
        }
    }
}

/// Asserts that the last of `seen` is a `complete` chunk.
fn assert_ends_complete(seen: &[Value]) {
    assert_eq!(
        seen.last().map(|c| c["type"].clone()),
        Some(json!("complete")),
        "{seen:?}"
    );
}

/// `loom actor run echo --input {} --redis URL`'s arguments.
fn echo_args(redis: &RedisServer) -> [&str; 7] {
    [
        "actor",
        "run",
        "echo",
        "--input",
        "{}",
        "--redis",
        redis.url(),
    ]
}

/// `loom actor run echo --input {} --redis URL`, to its end.
fn run_echo(redis: &RedisServer) -> Output {
    run(&echo_args(redis))
}

fn is_terminal(chunk: &Value) -> bool {
    chunk["type"] == "complete" || chunk["type"] == "error"
}

const SLOW_BATCH: &str = r#"{"count":40,"batch_size":1,"delay_ms":150}"#;

#[test]
fn a_remote_run_streams_through_redis_and_can_be_replayed_with_stream_tail() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis);
    let out = run(&[
        "actor",
        "run",
        "batch",
        "--stream",
        "--json",
        "--input",
        r#"{"count":250,"delay_ms":1}"#,
        "--redis",
        redis.url(),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let chunks = chunks(&out.stdout);
    assert_contract(&chunks);
    assert_eq!(
        chunks.last().map(|c| c["data"]["processed"].clone()),
        Some(json!(250))
    );

    let run_id = chunks[0]["data"]["run_id"]
        .as_str()
        .expect("start names the run");
    let tail = run(&["stream", "tail", run_id, "--json", "--redis", redis.url()]);
    assert_eq!(tail.code, Some(0), "{}", tail.stderr);
    assert_eq!(
        support::chunks(&tail.stdout),
        chunks,
        "a replay gives the same chunks"
    );
    // From the run's end (`$`, or its terminal entry) nothing follows: the tail says how the
    // run ended and exits by it, not that the stream had no terminal chunk.
    let end = format!("{}-1", chunks.len() - 1);
    for from in ["$", end.as_str()] {
        let args = [
            "stream",
            "tail",
            run_id,
            "--from",
            from,
            "--redis",
            redis.url(),
        ];
        let tail = run(&args);
        assert_eq!(tail.code, Some(0), "{from}: {}", tail.stderr);
        assert!(tail.stdout.is_empty(), "{from}: {}", tail.stdout);
        assert!(
            tail.stderr.contains("already ended (complete)"),
            "{from}: {}",
            tail.stderr
        );
    }
    // Without `--json` a person is told the run's id, to follow it from elsewhere.
    let out = run_echo(&redis);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let told = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("loom: run "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the run's id on stderr");
    let tail = run(&["stream", "tail", told, "--json", "--redis", redis.url()]);
    assert_eq!(tail.code, Some(0), "{}", tail.stderr);
    assert_eq!(support::chunks(&tail.stdout)[0]["data"]["run_id"], told);
}

#[test]
fn ctrl_c_cancels_the_run_on_the_worker_and_exits_130() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis);
    let (mut child, lines) = remote_run(&redis, &["batch", "--input", SLOW_BATCH]);
    let mut seen = Vec::new();
    read_until(&lines, &mut seen, |c| c["type"] == "data");
    signal(child.id(), "INT");
    read_until(&lines, &mut seen, is_terminal);
    assert_eq!(wait(&mut child).code(), Some(130));
    assert_contract(&seen);
    assert_eq!(
        seen.last().map(|c| c["error"]["code"].clone()),
        Some(json!("cancelled"))
    );
    assert!(
        seen.len() < 40,
        "the run stopped early: {} chunks",
        seen.len()
    );
}

/// Starts a remote `batch` run of a minute and reads it to its first data chunk: returns the
/// caller and the run's id.
fn a_minute_long_run(redis: &RedisServer) -> (Child, String) {
    let minute = r#"{"count":400,"batch_size":1,"delay_ms":150}"#;
    let (child, lines) = remote_run(redis, &["batch", "--input", minute]);
    let mut seen = Vec::new();
    read_until(&lines, &mut seen, |c| c["type"] == "data");
    let run_id = seen[0]["data"]["run_id"]
        .as_str()
        .expect("the run id in the start chunk")
        .to_owned();
    (child, run_id)
}

/// Follows the run with `stream tail` to its terminal chunk: it must be `cancelled`, long
/// before its minute was up.
fn assert_ends_cancelled(redis: &RedisServer, run_id: &str) {
    let (mut tail, tail_lines) = spawn_lines(&mut loom(&[
        "stream",
        "tail",
        run_id,
        "--json",
        "--redis",
        redis.url(),
    ]));
    let mut rest = Vec::new();
    read_until(&tail_lines, &mut rest, is_terminal);
    let _ = wait(&mut tail);
    assert_contract(&rest);
    assert_eq!(
        rest.last().map(|c| c["error"]["code"].clone()),
        Some(json!("cancelled")),
        "{:?}",
        rest.last()
    );
    assert!(
        rest.len() < 200,
        "the run stopped early: {} chunks",
        rest.len()
    );
}

/// A run refused by a full queue (`--max-queued`) is not announced, and leaves nothing in
/// Redis: it used to print a run id to follow and leave a `cancelled` stream under it.
#[test]
fn a_run_refused_by_a_full_queue_exits_1_and_leaves_nothing_behind() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::with(&redis, &["--actors", "batch"]);
    let (mut running, _) = a_minute_long_run(&redis);
    let before = stream_count(&redis);
    let refused = run(&[
        "actor",
        "run",
        "batch",
        "--max-queued",
        "1",
        "--redis",
        redis.url(),
    ]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("is full") && !refused.stderr.contains("loom: run "),
        "{}",
        refused.stderr
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        stream_count(&redis),
        before,
        "no stream for the refused run"
    );
    let _ = running.kill();
    let _ = running.wait();
}

/// `--stream-ttl` (or `LOOM_STREAM_TTL`) sets how long a finished run stays in Redis: the
/// worker gives its stream that TTL as the run ends, the caller its record.
#[test]
fn stream_ttl_sets_how_long_a_finished_run_stays_in_redis() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::args(&redis, &["--stream-ttl", "90s"]);
    let out = run(&[
        "actor",
        "run",
        "echo",
        "--redis",
        redis.url(),
        "--stream",
        "--json",
        "--stream-ttl",
        "90s",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let start = chunks(&out.stdout).remove(0);
    let id = start["data"]["run_id"].as_str().expect("run id");
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    for kind in ["stream", "run"] {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("loom:{kind}:*{id}"))
            .query(&mut conn)
            .unwrap();
        assert_eq!(keys.len(), 1, "{kind}: {keys:?}");
        let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut conn).unwrap();
        assert!((1..=90).contains(&ttl), "{kind} kept {ttl} s");
    }
    let refused = run(&["--stream-ttl", "30s", "actor", "list"]);
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(refused.stderr.contains("at least 1m"), "{}", refused.stderr);
}

/// The number of run streams in `redis`.
fn stream_count(redis: &RedisServer) -> usize {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("loom:stream:*")
        .query(&mut conn)
        .unwrap();
    keys.len()
}

/// A caller killed outright (SIGKILL: no chance to send a cancel) leaves no run going on its
/// worker: its presence lapses and the worker cancels the run within two leases (10 s),
/// where it would otherwise run its whole minute.
#[test]
fn a_caller_killed_outright_has_its_run_cancelled_on_the_worker() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis);
    let (mut child, run_id) = a_minute_long_run(&redis);
    signal(child.id(), "KILL");
    let _ = wait(&mut child);
    assert_ends_cancelled(&redis, &run_id);
}

/// Ctrl-C while Redis does not answer (a failover, a pause): the cancel cannot be sent, which
/// `loom` says as it exits 130; the run is still cancelled, by its worker, once Redis answers
/// again and the caller's presence is found gone — not run to its end.
#[test]
fn ctrl_c_while_redis_does_not_answer_still_cancels_the_run() {
    let redis = RedisServer::start_own();
    let _worker = WorkerProcess::start(&redis);
    let (mut child, run_id) = a_minute_long_run(&redis);
    redis.pause();
    signal(child.id(), "INT");
    let status = wait(&mut child);
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    redis.resume();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("the cancel did not reach Redis"),
        "{stderr}"
    );
    assert_ends_cancelled(&redis, &run_id);
}

/// The type and error code of the last entry of every chunk stream in `redis`.
fn stream_ends(redis: &RedisServer) -> Vec<(String, String)> {
    let mut conn = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("loom:stream:*")
        .query(&mut conn)
        .expect("KEYS");
    keys.iter()
        .map(|key| {
            let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query(&mut conn)
                .expect("XREVRANGE");
            let fields = last.into_iter().next().map(|(_, f)| f).unwrap_or_default();
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (field("type"), field("error"))
        })
        .collect()
}

#[test]
fn a_signal_stops_a_workflow_and_its_steps_running_on_workers() {
    let redis = RedisServer::start_own();
    let _worker = WorkerProcess::start(&redis);
    let dir = std::env::temp_dir().join(format!("loom-remote-wf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("slow.yaml");
    let yaml = format!(
        "name: slow\nactions:\n  - name: s\n    actorType: batch\n    input: {SLOW_BATCH}\n"
    );
    std::fs::write(&file, yaml).expect("workflow file");
    for (signal_name, code) in [("INT", 130), ("TERM", 143)] {
        let (mut child, lines) = spawn_lines(&mut loom(&[
            "workflow",
            "run",
            file.to_str().expect("path"),
            "--stream",
            "--json",
            "--redis",
            redis.url(),
        ]));
        let mut seen = Vec::new();
        read_until(&lines, &mut seen, |c| {
            c["step"] == "s" && c["type"] == "progress" && c["event"].is_null()
        });
        signal(child.id(), signal_name);
        assert_eq!(wait(&mut child).code(), Some(code), "{signal_name}");
        // The step's run on the worker ends cancelled too, not at its own end.
        let deadline = Instant::now() + LIMIT;
        loop {
            let ends = stream_ends(&redis);
            let running = ends
                .iter()
                .filter(|(kind, _)| kind != "error" && kind != "complete")
                .count();
            if running == 0 {
                assert!(
                    ends.iter()
                        .all(|(kind, error)| kind == "error" && error.contains("cancelled")),
                    "{signal_name}: {ends:?}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{signal_name}: still running: {ends:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrl_c_stops_stream_tail_at_once_and_leaves_the_run_going() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis);
    let (mut owner, owner_lines) = remote_run(&redis, &["batch", "--input", SLOW_BATCH]);
    let mut seen = Vec::new();
    read_until(&owner_lines, &mut seen, |c| c["type"] == "start");
    let run_id = seen[0]["data"]["run_id"]
        .as_str()
        .expect("start names the run");
    let (mut tail, tail_lines) = spawn_lines(&mut loom(&[
        "stream",
        "tail",
        run_id,
        "--json",
        "--redis",
        redis.url(),
    ]));
    let mut tailed = Vec::new();
    read_until(&tail_lines, &mut tailed, |c| c["type"] == "progress");
    let signalled = Instant::now();
    signal(tail.id(), "INT");
    assert_eq!(wait(&mut tail).code(), Some(130));
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "stream tail took {:?} to stop",
        signalled.elapsed()
    );
    // The run was the other caller's: it goes on to its end.
    read_until(&owner_lines, &mut seen, is_terminal);
    assert_eq!(wait(&mut owner).code(), Some(0));
    assert_ends_complete(&seen);
}

#[test]
fn a_worker_killed_mid_stream_is_replaced_by_another_and_seq_stays_gapless() {
    let redis = RedisServer::start();
    let mut first = WorkerProcess::start(&redis);
    let (mut child, lines) = remote_run(&redis, &["batch", "--input", SLOW_BATCH]);
    let mut seen = Vec::new();
    read_until(&lines, &mut seen, |c| {
        c["type"] == "progress" && c["progress"]["current"] == 3
    });
    signal(first.0.id(), "KILL");
    let _ = first.0.wait();
    let _second = WorkerProcess::start(&redis);
    read_until(&lines, &mut seen, is_terminal);
    assert_eq!(wait(&mut child).code(), Some(0));
    assert_contract(&seen);
    let restart = seen
        .iter()
        .find(|c| c["type"] == "start" && c["attempt"] == 2);
    assert!(
        restart.is_some(),
        "the second attempt's start carries attempt 2"
    );
    assert_ends_complete(&seen);
    // For a person, the re-run is said, not mixed silently into the first attempt's output.
    let id = seen[0]["data"]["run_id"].as_str().expect("a run id");
    let out = run(&["stream", "tail", id, "--redis", redis.url()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("attempt 2") && out.stderr.contains("superseded"),
        "{}",
        out.stderr
    );
    // And in the output itself, which goes to a file or a pipe apart from stderr: the two
    // attempts' output is never taken for one.
    let (before, after) = out
        .stdout
        .split_once("↻ attempt 2")
        .unwrap_or_else(|| panic!("the re-run said in stdout: {}", out.stdout));
    assert!(
        !before.is_empty() && after.contains("superseded"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_worker_killed_with_no_other_left_ends_the_reader_with_worker_lost() {
    let redis = RedisServer::start();
    let only = WorkerProcess::start(&redis);
    let (mut child, lines) = remote_run(&redis, &["batch", "--input", SLOW_BATCH]);
    let mut seen = Vec::new();
    read_until(&lines, &mut seen, |c| c["type"] == "data");
    signal(only.0.id(), "KILL");
    let killed = Instant::now();
    read_until(&lines, &mut seen, is_terminal);
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "worker_lost within lease + visibility timeout"
    );
    assert_eq!(wait(&mut child).code(), Some(1));
    assert_contract(&seen);
    assert_eq!(
        seen.last().map(|c| c["error"]["code"].clone()),
        Some(json!("worker_lost"))
    );
}

#[test]
fn sigterm_stops_a_worker_cleanly() {
    let redis = RedisServer::start();
    let mut worker = WorkerProcess::start(&redis);
    // Once it waits in XREADGROUP it has joined its queues: a stop now has runs' state to
    // settle (its signal handlers are installed before it even says it is serving).
    let deadline = Instant::now() + LIMIT;
    while !redis.has_client_blocked_in("xreadgroup") {
        assert!(Instant::now() < deadline, "the worker joins its queues");
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate(&mut worker.0);
}

/// A worker stopped while it runs something says what it waits for, and a second signal
/// hands the run back at once instead of after the 30 s grace: another worker runs it again.
#[test]
fn a_second_signal_hands_a_stopping_workers_runs_back_at_once() {
    let redis = RedisServer::start();
    let mut first = loom(&["worker", "--redis", redis.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loom worker starts");
    let said = lines_of(first.stderr.take().expect("stderr is piped"));
    let serving = said.recv_timeout(LIMIT).expect("the worker's banner");
    assert!(serving.contains("worker serving"), "{serving}");
    let (mut caller, lines) = remote_run(
        &redis,
        &[
            "batch",
            "--input",
            r#"{"count":60,"batch_size":1,"delay_ms":100}"#,
        ],
    );
    let mut seen = Vec::new();
    read_until(&lines, &mut seen, |c| c["type"] == "progress");
    signal(first.id(), "TERM");
    let stopping = said.recv_timeout(LIMIT).expect("a word on stopping");
    assert!(
        stopping.contains("stopping") && stopping.contains("hand them back now"),
        "{stopping}"
    );
    let _second = WorkerProcess::start(&redis);
    let asked = Instant::now();
    signal(first.id(), "INT");
    assert_eq!(wait(&mut first).code(), Some(0));
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "handed back at once, not after the grace: {:?}",
        asked.elapsed()
    );
    read_until(&lines, &mut seen, is_terminal);
    assert_eq!(wait(&mut caller).code(), Some(0));
    assert_contract(&seen);
    let attempts: Vec<_> = seen
        .iter()
        .filter(|c| c["type"] == "start")
        .map(|c| c["attempt"].clone())
        .collect();
    assert_eq!(attempts, [Value::Null, json!(2)], "{seen:?}");
    assert_ends_complete(&seen);
}

/// A worker whose stderr nobody reads any more (the pipe closed: `2>&1 | head`, a supervisor
/// gone) still stops cleanly: what it says on stopping is lost, not a panic (exit 101).
#[test]
fn a_worker_whose_stderr_is_closed_still_stops_cleanly() {
    let redis = RedisServer::start();
    // The reader of its stderr stops at the first line after the banner.
    let (mut worker, _) = start_ready(
        &["worker", "--redis", redis.url()],
        &[],
        "loom: worker serving",
    );
    terminate(&mut worker.0);
}

#[test]
fn bad_input_is_exit_2_at_once_even_with_redis_down() {
    let down = "redis://127.0.0.1:1";
    let with_redis_down = |args: &[&str], env: (&str, &str)| {
        let child = loom(args)
            .env("LOOM_REDIS_URL", down)
            .env(env.0, env.1)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("loom starts");
        finish(child)
    };
    let none = ("LOOM_TEST_UNUSED", "");
    let out = with_redis_down(&["actor", "run", "echo", "--input", "{bad"], none);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--input"), "{}", out.stderr);
    let out = with_redis_down(&["workflow", "run", "no-such-file.yaml"], none);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    // Checking a workflow, or listing the actors, needs no Redis at all.
    let example = format!(
        "{}/../../examples/workflows/research-pipeline.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = with_redis_down(&["workflow", "validate", &example], none);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = with_redis_down(&["actor", "list"], none);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("echo"), "{}", out.stdout);
    // What a worker, a server or a tail is given is checked before Redis is tried too.
    let workflows = std::env::temp_dir().join(format!("loom-bad-wf-{}", std::process::id()));
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(workflows.join("bad.yaml"), "name: bad v2\nactions: []\n").unwrap();
    let workflows = workflows.display().to_string();
    for (args, says) in [
        (&["worker", "--actors", "a b"][..], "a b"),
        (&["worker", "--workflows", &workflows][..], "bad.yaml"),
        (
            &["serve", "--workflows", &workflows, "--addr", "127.0.0.1:0"][..],
            "bad.yaml",
        ),
        (&["stream", "tail", "a b"][..], "a b"),
        (
            &["actor", "run", "echo", "--timeout", "0"][..],
            "more than zero",
        ),
        // Read through its limit, not to the end of a file that has none.
        (
            &["actor", "run", "echo", "--input", "@/dev/zero"][..],
            "more than 64 MiB",
        ),
    ] {
        let out = with_redis_down(args, none);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("Redis"), "{args:?}: {}", out.stderr);
    }
    // Good input and Redis down: exit 1, naming the address tried and not its password.
    let out = loom(&["actor", "run", "echo", "--input", "{}"])
        .env("LOOM_REDIS_URL", "redis://:hunter2@127.0.0.1:1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(finish)
        .expect("loom starts");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot connect to Redis at redis://…@127.0.0.1:1"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    let out = with_redis_down(&["actor", "list"], ("OPENAI_BASE_URL", "not a url"));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid AI service configuration"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_run_no_live_worker_serves_is_refused_with_exit_2_after_the_pickup_timeout() {
    // Its own server: the streams counted at the end are this test's alone.
    let redis = RedisServer::start_own();
    // A worker that serves another actor type only: `echo` still has nobody.
    let _worker = WorkerProcess::with(&redis, &["--actors", "batch"]);
    let started = Instant::now();
    let out = run(&[
        "actor",
        "run",
        "echo",
        "--input",
        r#"{"a":1}"#,
        "--redis",
        redis.url(),
    ]);
    let took = started.elapsed();
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("waiting up to 30s"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("no live worker serves actor type 'echo'"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    // It waited for a worker (one started at the same time would have been in time).
    assert!(took >= Duration::from_secs(29), "{took:?}");
    // Nothing was queued for nobody: no run streams.
    assert!(stream_ends(&redis).is_empty());
}

/// A signal while the caller still waits for a worker ends it with 128 + the signal's number,
/// as a signal during its run does, and leaves nothing queued: it used to die of the signal
/// itself, which a supervisor's `waitpid` sees as no exit code at all.
#[test]
fn a_signal_while_waiting_for_a_worker_exits_with_its_code_and_queues_nothing() {
    let redis = RedisServer::start_own();
    for (name, code) in [("INT", 130), ("TERM", 143)] {
        let caller = loom(&echo_args(&redis));
        let (mut caller, _) = spawn_ready(caller, "loom: no live worker serves 'echo' yet");
        let started = Instant::now();
        signal(caller.0.id(), name);
        assert_eq!(wait(&mut caller.0).code(), Some(code), "SIG{name}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(queues(&redis, "*").is_empty());
}

/// The queue keys (`loom:queue:<pattern>`) in `redis`.
fn queues(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let mut conn = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("connect");
    redis::cmd("KEYS")
        .arg(format!("loom:queue:{pattern}"))
        .query(&mut conn)
        .expect("KEYS")
}

/// A caller whose `--queue-shards` differs from the workers' is told so at once: its
/// requests would wait in queues no worker reads.
#[test]
fn a_caller_with_other_queue_shards_than_the_workers_is_told_so() {
    let redis = RedisServer::start_own();
    let _worker = WorkerProcess::with(&redis, &["--actors", "echo"]);
    // A caller on the workers' number runs: the worker is serving.
    let out = run_echo(&redis);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // One on another number is refused at once, exit 2: a setting to change, not a worker
    // still starting (it waited the 30 s pickup timeout first).
    let started = Instant::now();
    let out = run(&[
        "actor",
        "run",
        "echo",
        "--input",
        "{}",
        "--queue-shards",
        "4",
        "--redis",
        redis.url(),
    ]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("live workers serve it with --queue-shards 1, this caller uses 4"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refused at once, not after the pickup timeout: {:?}",
        started.elapsed()
    );
}

#[test]
fn hostile_names_and_unknown_streams_are_rejected_with_exit_2() {
    let redis = RedisServer::start();
    for name in ["a b", "x*", "{tag}", "a:b", &"n".repeat(129)] {
        let out = run(&["actor", "run", name, "--redis", redis.url()]);
        assert_eq!(out.code, Some(2), "{name}: {}", out.stderr);
        let out = run(&["stream", "tail", name, "--redis", redis.url()]);
        assert_eq!(out.code, Some(2), "{name}: {}", out.stderr);
    }
    let out = run(&[
        "stream",
        "tail",
        "6f1c3a52-0000-4000-8000-000000000000",
        "--redis",
        redis.url(),
    ]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    // Saying which ids have a stream: a workflow run's own id has none.
    assert!(out.stderr.contains("a workflow run by"), "{}", out.stderr);
    let out = run(&["stream", "tail", "x", "--redis", "not a url"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    // A bad entry id is bad usage, told before Redis is asked (nothing listens on port 1).
    let out = run(&[
        "stream",
        "tail",
        "x",
        "--from",
        "xyz",
        "--redis",
        "redis://127.0.0.1:1",
    ]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("a bare 12 means"), "{}", out.stderr);
    let out = run(&["worker"]);
    assert_eq!(out.code, Some(2), "a worker needs --redis: {}", out.stderr);
}

#[test]
fn a_workflow_runs_its_actions_on_workers_with_the_same_stream() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis);
    let file = format!(
        "{}/../../examples/workflows/batch-report.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let input = r#"{"count":300}"#;
    let remote = run(&[
        "workflow",
        "run",
        &file,
        "--stream",
        "--json",
        "--input",
        input,
        "--redis",
        redis.url(),
    ]);
    assert_eq!(remote.code, Some(0), "{}", remote.stderr);
    let local = run(&[
        "workflow", "run", &file, "--stream", "--json", "--input", input,
    ]);
    assert_eq!(local.code, Some(0), "{}", local.stderr);
    let (remote, local) = (chunks(&remote.stdout), chunks(&local.stdout));
    assert_contract(&remote);
    // The same definition gives the same stream, but for the run ids in start chunks.
    let shape = |chunks: &[Value]| -> Vec<Value> {
        chunks
            .iter()
            .skip(1)
            .map(|c| json!([c["type"], c["step"], c["event"], c["progress"], c["data"]]))
            .collect()
    };
    assert_eq!(shape(&remote), shape(&local));
    assert_eq!(
        remote
            .last()
            .map(|c| c["data"]["steps"]["report"]["processed"].clone()),
        Some(json!(300))
    );
}

/// A workflow that runs one actor type in several steps runs through Redis: the check that a
/// live worker serves each type the workflow needs once counted a type and then lost it, and
/// refused the run after the pickup timeout (exit 2, "no live worker serves 'echo'").
#[test]
fn a_workflow_running_one_actor_type_in_several_steps_runs_on_workers() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis);
    let dir = calling_batch_report(
        "twice",
        "echo-twice",
        "  - { name: first, actorType: echo, input: { n: 1 } }\n\
         \x20 - { name: second, actorType: echo, input: { n: \"${{ steps.first.output.n }}\" } }\n",
    );
    let file = dir.join("echo-twice.yaml");
    let started = Instant::now();
    let out = run(&[
        "workflow",
        "run",
        file.to_str().unwrap(),
        "--json",
        "--redis",
        redis.url(),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let last = chunks(&out.stdout).pop().unwrap();
    assert_eq!(last["data"]["steps"]["second"]["n"], json!(1), "{last}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// Through Redis a workflow a worker serves (`--workflows`) is an actor type like any other:
/// `actor run workflows/<name>` runs it, and so does a workflow step naming it, though this
/// process does not have the workflow; without Redis the type is unknown, exit 2.
#[test]
fn a_workflow_served_by_a_worker_runs_as_an_actor_type_and_as_a_step() {
    let redis = RedisServer::start();
    let examples = format!("{}/../../examples/workflows", env!("CARGO_MANIFEST_DIR"));
    let _worker = WorkerProcess::with(&redis, &["--workflows", &examples]);
    let input = r#"{"count":200}"#;
    let direct = run(&[
        "actor",
        "run",
        "workflows/batch-report",
        "--json",
        "--input",
        input,
        "--redis",
        redis.url(),
    ]);
    assert_eq!(direct.code, Some(0), "{}", direct.stderr);
    let result = chunks(&direct.stdout).pop().expect("the terminal chunk");
    assert_eq!(result["data"]["steps"]["report"]["processed"], 200);

    let dir = std::env::temp_dir().join(format!("loom-nested-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let nested = dir.join("nested.yaml");
    std::fs::write(
        &nested,
        "name: nested\nactions:\n  - name: inner\n    actorType: workflows/batch-report\n    input: { count: 200 }\n",
    )
    .unwrap();
    let nested = nested.display().to_string();
    let stepped = run(&["workflow", "run", &nested, "--json", "--redis", redis.url()]);
    assert_eq!(stepped.code, Some(0), "{}", stepped.stderr);
    let result = chunks(&stepped.stdout).pop().expect("the terminal chunk");
    assert_eq!(
        result["data"]["steps"]["inner"]["steps"]["report"]["processed"],
        200
    );
    let local = run(&["workflow", "run", &nested]);
    assert_eq!(local.code, Some(2), "{}", local.stderr);
    assert!(
        local.stderr.contains("workflows/batch-report"),
        "{}",
        local.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);

    // A name no workflow can have is refused at once, not waited for as a worker to come.
    for bad in ["workflows/../x", "workflows/", "workflows/batch-report/x"] {
        let refused = run(&["actor", "run", bad, "--redis", redis.url()]);
        assert_eq!(refused.code, Some(2), "{}", refused.stderr);
        assert!(
            refused.stderr.contains("unknown actor type"),
            "{bad}: {}",
            refused.stderr
        );
    }
}

/// A fresh directory of workflows for a worker's `--workflows`: the example `batch-report`, and
/// `name`, whose `actions` are `actions` (YAML list items).
fn calling_batch_report(tag: &str, name: &str, actions: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("loom-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let examples = format!("{}/../../examples/workflows", env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        format!("{examples}/batch-report.yaml"),
        dir.join("batch-report.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{name}.yaml")),
        format!("name: {name}\nactions:\n{actions}"),
    )
    .unwrap();
    dir
}

/// A worker serves a workflow whose step is another workflow (`workflows/<name>`): that step
/// is queued like any caller's run, to whichever worker serves it — this one too, with a
/// single slot, which the caller lends while it waits (it used to hold it, and the run it
/// called waited for the pickup timeout, then ended `worker_lost`). Workflows that call each
/// other in a loop are refused when the worker starts (exit 2).
#[test]
fn a_worker_serves_a_workflow_that_calls_another_and_refuses_a_loop() {
    let redis = RedisServer::start();
    let dir = calling_batch_report(
        "calls",
        "outer",
        "  - name: inner\n    actorType: workflows/batch-report\n    input: { count: 200 }\n",
    );
    let served = dir.display().to_string();
    let _worker = WorkerProcess::args(&redis, &["--concurrency", "1", "--workflows", &served]);
    // Two callers at once: the second waits for the slot, then lends it in turn.
    let callers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn({
                let url = redis.url().to_owned();
                move || run(&["actor", "run", "workflows/outer", "--json", "--redis", &url])
            })
        })
        .collect();
    for caller in callers {
        let out = caller.join().expect("caller");
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let result = chunks(&out.stdout).pop().expect("the terminal chunk");
        assert_eq!(
            result["data"]["steps"]["inner"]["steps"]["report"]["processed"], 200,
            "{result}"
        );
    }

    let looped = dir.join("loop");
    std::fs::create_dir_all(&looped).unwrap();
    for (name, calls) in [("a", "b"), ("b", "a")] {
        std::fs::write(
            looped.join(format!("{name}.yaml")),
            format!("name: {name}\nactions:\n  - name: step\n    actorType: workflows/{calls}\n"),
        )
        .unwrap();
    }
    let refused = run(&[
        "worker",
        "--redis",
        redis.url(),
        "--workflows",
        &looped.display().to_string(),
    ]);
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(refused.stderr.contains("a → b → a"), "{}", refused.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A served workflow whose step calls a workflow no live worker serves ends that step
/// `not_found`, naming it and how to serve it, after the pickup timeout (a worker started
/// meanwhile would be in time), as a caller's run is refused — and nothing is queued for
/// nobody. It used to queue the request and end the step `worker_lost` (retryable: a step
/// with `retries` waited the pickup timeout again each time).
#[test]
fn a_served_workflow_calling_a_workflow_nobody_serves_fails_not_found_and_queues_nothing() {
    let redis = RedisServer::start_own();
    let dir = calling_batch_report(
        "unserved",
        "calls-missing",
        "  - { name: first, actorType: echo }\n  - { name: missing, actorType: workflows/zzz }\n",
    );
    let served = dir.display().to_string();
    let _worker = WorkerProcess::args(&redis, &["--workflows", &served]);
    let started = Instant::now();
    let out = run(&[
        "actor",
        "run",
        "workflows/calls-missing",
        "--json",
        "--redis",
        redis.url(),
    ]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let error = chunks(&out.stdout).pop().expect("the terminal chunk")["error"].clone();
    assert_eq!(error["code"], "not_found", "{error}");
    assert_eq!(error["retryable"], false, "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("step 'missing'"), "{message}");
    assert!(
        message.contains("no live worker serves actor type 'workflows/zzz'"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "{:?}",
        started.elapsed()
    );
    let queued = queues(&redis, "*zzz*");
    assert!(queued.is_empty(), "{queued:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A worker stopping (SIGTERM) with no other worker left still finishes a workflow that calls
/// another after the signal: the slot the caller lends while it waits takes that call's request
/// (a stopping worker took none, so the call waited out the 30 s grace and ended `worker_lost`).
#[test]
fn a_stopping_worker_alone_finishes_a_workflow_that_calls_another_after_the_signal() {
    let redis = RedisServer::start();
    // The signal comes while the first step runs in the workflow's own slot: no slot is lent
    // yet, and the worker must learn of the one the call lends.
    let dir = calling_batch_report(
        "stop-calls",
        "twice",
        "  - name: first\n    actorType: batch\n    input: { count: 10, batch_size: 1, delay_ms: 100 }\n  - name: second\n    actorType: workflows/batch-report\n    input: { count: 200 }\n",
    );
    let served = dir.display().to_string();
    let mut worker = WorkerProcess::args(&redis, &["--workflows", &served]);
    let (mut caller, lines) = remote_run(&redis, &["workflows/twice"]);
    let mut seen = Vec::new();
    read_until(&lines, &mut seen, |c| {
        c["step"] == "first" && c["event"] == "action-start"
    });
    signal(worker.0.id(), "TERM");
    read_until(&lines, &mut seen, is_terminal);
    assert_eq!(wait(&mut caller).code(), Some(0), "{seen:?}");
    assert_ends_complete(&seen);
    assert_eq!(
        seen.last().unwrap()["data"]["steps"]["second"]["steps"]["report"]["processed"],
        200
    );
    assert_eq!(wait(&mut worker.0).code(), Some(0), "the worker exits 0");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A workflow's own `timeout:` ends it on the worker that serves it, whoever runs it and
/// whatever deadline they give: regression test for `actor run workflows/<name>`, which
/// does not have the definition and ran the workflow to its end (or to ten minutes).
#[test]
fn a_workflow_served_by_a_worker_ends_at_its_own_timeout_run_by_name_or_from_its_file() {
    let redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("loom-deadline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("slow.yaml");
    std::fs::write(
        &file,
        "name: slow\ntimeout: 1s\nactions:\n  - name: work\n    actorType: batch\n    input: { count: 100, batch_size: 1, delay_ms: 50 }\n",
    )
    .unwrap();
    let dir_arg = dir.display().to_string();
    let _worker = WorkerProcess::with(&redis, &["--workflows", &dir_arg]);
    let file = file.display().to_string();
    for args in [
        vec!["actor", "run", "workflows/slow", "--timeout", "1h"],
        vec!["actor", "run", "workflows/slow"],
        vec!["workflow", "run", &file],
    ] {
        let started = std::time::Instant::now();
        let out = run(&[&args[..], &["--json", "--redis", redis.url()]].concat());
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        let end = chunks(&out.stdout).pop().expect("the terminal chunk");
        assert_eq!(end["error"]["code"], "timeout", "{args:?}: {end}");
        assert_eq!(
            end["error"]["message"], "workflow 'slow' passed its timeout (1s)",
            "{args:?}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(4),
            "{args:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A workflow run re-run after its worker was lost: the step the first attempt was running is
/// superseded with the rest of its output, not marked `✗` after the new attempt's `✓`.
#[test]
fn a_rerun_workflows_superseded_step_is_not_reported_failed() {
    let redis = RedisServer::start();
    let id = "rerun-0123456789";
    let mut conn = redis.plain();
    let stream = loom_redis::Keys::default().stream(id);
    let start = json!({ "run_id": id, "actor": "wf" }).to_string();
    let entries: Vec<Vec<String>> = [
        vec!["start", &start, "0"],
        vec![
            "progress",
            "null",
            "1",
            "step",
            "\"work\"",
            "event",
            "\"action-start\"",
        ],
        vec!["start", &start, "2", "attempt", "2"],
        vec![
            "progress",
            "null",
            "3",
            "step",
            "\"work\"",
            "event",
            "\"action-start\"",
        ],
        vec![
            "data",
            "{}",
            "4",
            "step",
            "\"work\"",
            "event",
            "\"action-complete\"",
        ],
        vec!["complete", "{}", "5"],
    ]
    .iter()
    .map(|e| e.iter().map(|s| s.to_string()).collect())
    .collect();
    for (seq, entry) in entries.iter().enumerate() {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg(format!("{seq}-1"));
        cmd.arg("type").arg(&entry[0]).arg("data").arg(&entry[1]);
        cmd.arg("seq").arg(&entry[2]);
        for pair in entry[3..].chunks(2) {
            cmd.arg(&pair[0]).arg(&pair[1]);
        }
        let _: String = cmd.query(&mut conn).expect("XADD");
    }
    let out = run(&["stream", "tail", id, "--redis", redis.url()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("↻ attempt 2"), "{}", out.stderr);
    assert!(out.stderr.contains("✓ work"), "{}", out.stderr);
    assert!(!out.stderr.contains("✗ work"), "{}", out.stderr);
}

/// The Ctrl-C grace period is counted from the Ctrl-C, not from the last chunk: a stream
/// that keeps going after the cancel (here a `tail`, whose producer does not stop) does not
/// keep the CLI alive.
#[test]
fn after_ctrl_c_chunks_that_keep_coming_do_not_extend_the_grace_period() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let redis = RedisServer::start();
    let id = "grace-0123456789";
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let stop = Arc::clone(&stop);
        let mut conn = redis.plain();
        std::thread::spawn(move || {
            let keys = loom_redis::Keys::default();
            let (stream, lease) = (keys.stream(id), keys.lease(id));
            let start = json!({ "run_id": id, "actor": "producer" }).to_string();
            let _: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg(&["type", "start", "data", &start, "seq", "0"])
                .query(&mut conn)
                .expect("XADD start");
            let mut seq = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let _: () = redis::cmd("SET")
                    .arg(&lease)
                    .arg("producer")
                    .arg("PX")
                    .arg(3000)
                    .query(&mut conn)
                    .expect("SET lease");
                let _: String = redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg(&["type", "data", "data", r#"{"token":"x"}"#, "seq"])
                    .arg(seq)
                    .query(&mut conn)
                    .expect("XADD data");
                seq += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut child = loom(&["stream", "tail", id, "--json", "--redis", redis.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("loom starts");
    let lines = lines(&mut child);
    let mut seen = Vec::new();
    read_until(&lines, &mut seen, |c| c["type"] == "data");
    signal(child.id(), "INT");
    let interrupted = Instant::now();
    let code = wait(&mut child).code();
    let took = interrupted.elapsed();
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("the producer ends");
    assert_eq!(code, Some(130));
    // The grace period is 5 s; chunks kept coming every 100 ms all along.
    assert!(
        took < Duration::from_secs(9),
        "loom gave up {took:?} after Ctrl-C"
    );
    assert!(
        seen.len() > 1,
        "chunks were read before the Ctrl-C: {seen:?}"
    );
}
