//! The CLI on a real Redis Cluster (3 masters on loopback): every command through any node
//! (`worker`, `actor run`, `stream tail`, `workflow run`, `serve`), with sharded queues, and a
//! worker killed with SIGKILL mid-stream replaced by another.

mod support;

#[path = "../../loom-redis/tests/support/redis_cluster.rs"]
mod redis_cluster;
#[path = "../../loom-redis/tests/support/redis_server.rs"]
mod redis_server;

use std::process::Stdio;
use std::time::{Duration, Instant};

use redis_cluster::RedisCluster;
use serde_json::{json, Value};
use support::*;

/// The cluster's node URLs, one per node.
fn nodes(cluster: &RedisCluster) -> Vec<String> {
    cluster.urls().split(',').map(str::to_owned).collect()
}

/// A `loom worker` through `url` with `shards` queue shards, once it serves.
fn worker(url: &str, shards: &str, extra: &[&str]) -> Process {
    let mut args = vec![
        "worker",
        "--redis",
        url,
        "--queue-shards",
        shards,
        "--concurrency",
        "4",
    ];
    args.extend_from_slice(extra);
    start_ready(&args, &[], "loom: worker serving").0
}

fn is_terminal(chunk: &Value) -> bool {
    chunk["type"] == "complete" || chunk["type"] == "error"
}

#[test]
fn every_command_works_through_any_node_of_a_cluster() {
    let cluster = RedisCluster::start_with(3, 0);
    let nodes = nodes(&cluster);
    let list = cluster.urls();
    let dir = std::env::temp_dir().join(format!("loom-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = format!(
        "{}/../../examples/workflows/batch-report.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::copy(&file, dir.join("batch-report.yaml")).expect("workflow copy");
    let dir_arg = dir.to_str().expect("utf-8 path");
    let mut worker = worker(&nodes[0], "4", &["--workflows", dir_arg]);

    // `actor run` through another node, the queue sharded four ways.
    let out = run(&[
        "actor",
        "run",
        "batch",
        "--stream",
        "--json",
        "--input",
        r#"{"count":250,"delay_ms":1}"#,
        "--redis",
        &nodes[1],
        "--queue-shards",
        "4",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let chunks = chunks(&out.stdout);
    assert_contract(&chunks);
    assert_eq!(chunks.last().unwrap()["data"]["processed"], json!(250));

    // `stream tail` through the third node replays it.
    let run_id = chunks[0]["data"]["run_id"].as_str().expect("run id");
    let tail = run(&["stream", "tail", run_id, "--json", "--redis", &nodes[2]]);
    assert_eq!(tail.code, Some(0), "{}", tail.stderr);
    assert_eq!(support::chunks(&tail.stdout), chunks);

    // `workflow run` through the list of every node, from the environment.
    let mut command = loom(&[
        "workflow",
        "run",
        &file,
        "--stream",
        "--json",
        "--input",
        r#"{"count":300}"#,
    ]);
    command
        .env("LOOM_REDIS_URL", &list)
        .env("LOOM_QUEUE_SHARDS", "4")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let flow = finish(command.spawn().expect("loom starts"));
    assert_eq!(flow.code, Some(0), "{}", flow.stderr);
    let flow = support::chunks(&flow.stdout);
    assert_contract(&flow);
    assert_eq!(
        flow.last().unwrap()["data"]["steps"]["report"]["processed"],
        json!(300)
    );

    // `serve` through a node: a streamed run, then a detached workflow run and its replay.
    let (mut server, banner) = start_ready(
        &[
            "serve",
            "--redis",
            &nodes[2],
            "--queue-shards",
            "4",
            "--addr",
            "127.0.0.1:0",
        ],
        &[],
        "loom: serving on",
    );
    let addr = served_addr(&banner);
    let stream = http(
        &addr,
        "POST",
        "/v1/actors/echo/stream",
        &[],
        r#"{"input":{"x":1}}"#,
    );
    assert!(
        stream.contains(r#"data: {"type":"complete","seq":1,"data":{"x":1}}"#),
        "{stream}"
    );
    let deadline = Instant::now() + LIMIT;
    let created = loop {
        // The worker advertises its workflows on its first heartbeat.
        let created = http(
            &addr,
            "POST",
            "/v1/runs",
            &[],
            r#"{"workflow":"batch-report","input":{"count":50}}"#,
        );
        if created.starts_with("HTTP/1.1 201") || Instant::now() > deadline {
            break created;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let body = created.split("\r\n\r\n").nth(1).unwrap_or_default();
    let id = serde_json::from_str::<Value>(body).expect("a JSON body")["run_id"]
        .as_str()
        .expect("run_id")
        .to_owned();
    let replay = http(&addr, "GET", &format!("/v1/runs/{id}/stream"), &[], "");
    assert!(replay.contains("event: complete"), "{replay}");

    terminate(&mut server.0);
    terminate(&mut worker.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_worker_killed_mid_stream_on_a_cluster_is_replaced_and_seq_stays_gapless() {
    let cluster = RedisCluster::start_with(3, 0);
    let nodes = nodes(&cluster);
    let mut first = worker(&nodes[0], "1", &[]);
    let (mut child, lines) = spawn_lines(&mut loom(&[
        "actor",
        "run",
        "batch",
        "--input",
        r#"{"count":40,"batch_size":1,"delay_ms":150}"#,
        "--stream",
        "--json",
        "--redis",
        &nodes[1],
    ]));
    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + LIMIT;
    let next = || -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("a chunk in time");
        serde_json::from_str(&line).expect("a JSON chunk")
    };
    loop {
        let chunk = next();
        let third = chunk["type"] == "progress" && chunk["progress"]["current"] == 3;
        seen.push(chunk);
        if third {
            break;
        }
    }
    signal(first.0.id(), "KILL");
    let _ = first.0.wait();
    let _second = worker(&nodes[2], "1", &[]);
    loop {
        let chunk = next();
        let done = is_terminal(&chunk);
        seen.push(chunk);
        if done {
            break;
        }
    }
    assert_eq!(wait(&mut child).code(), Some(0));
    assert_contract(&seen);
    assert!(
        seen.iter()
            .any(|c| c["type"] == "start" && c["attempt"] == 2),
        "the second attempt's start carries attempt 2"
    );
    assert_eq!(seen.last().unwrap()["type"], "complete");
}

/// A command started while a master is down (its failover under way) waits for the cluster,
/// as a reader of a run does, rather than failing at its first command's timeout: here the
/// master holding `loom:actors`, which every run reads first.
#[test]
fn a_run_started_during_a_failover_waits_for_the_cluster() {
    // A failover longer than a command's timeout (3 s): the node timeout is 5 s.
    let mut cluster = RedisCluster::start_slow_to_fail_over(5_000);
    let port = cluster.master_of("loom:actors");
    let url = nodes(&cluster)
        .into_iter()
        .find(|u| !u.ends_with(&format!(":{port}")))
        .expect("another node");
    let _worker = worker(&url, "1", &[]);
    let failing_over = std::thread::spawn(move || {
        cluster.kill_master(port);
        cluster
    });
    // The failover takes the node timeout and an election: the run starts inside it.
    std::thread::sleep(Duration::from_millis(200));
    let out = run(&[
        "actor",
        "run",
        "echo",
        "--input",
        r#"{"a":1}"#,
        "--json",
        "--redis",
        &url,
    ]);
    let _cluster = failing_over.join().expect("the failover");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let last: Value =
        serde_json::from_str(out.stdout.lines().last().expect("a chunk")).expect("a JSON chunk");
    assert_eq!(last["type"], "complete", "{last}");
    assert_eq!(last["data"], json!({ "a": 1 }));
}

/// A cluster that is down (a master with no replica gone: its slots have no node) is named as
/// such, not left at "timed out": while a command waits for it, and in a server's `503`s.
#[test]
fn a_command_on_a_cluster_that_is_down_says_so() {
    let mut cluster = RedisCluster::start_with(3, 0);
    let port = cluster.master_of("loom:actors");
    cluster.bring_down(port);
    let mut child = loom(&[
        "actor",
        "run",
        "echo",
        "--input",
        "{}",
        "--redis",
        &cluster.url(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("loom starts");
    let lines = lines_of(child.stderr.take().expect("stderr is piped"));
    let line = lines.recv_timeout(Duration::from_secs(20));
    signal(child.id(), "KILL");
    wait(&mut child);
    let line = line.expect("a notice on stderr while the command waits");
    assert!(
        line.contains("the Redis cluster is down") && line.contains("cluster_state:fail"),
        "{line}"
    );

    let args = ["serve", "--redis", &cluster.url(), "--addr", "127.0.0.1:0"];
    let (_server, banner) = start_ready(&args, &[], "loom: serving");
    let body = r#"{"input":{}}"#;
    let headers = ["Content-Type: application/json"];
    let response = http(
        &served_addr(&banner),
        "POST",
        "/v1/actors/echo/run",
        &headers,
        body,
    );
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("the Redis cluster is down"), "{response}");
    // It passes (a failover, a master back): clients are told to try again.
    assert!(
        response.to_ascii_lowercase().contains("retry-after: 1"),
        "{response}"
    );
    // Not only starting a run: every request that reads Redis names it.
    let response = http(&served_addr(&banner), "GET", "/v1/runs", &[], "");
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("the Redis cluster is down"), "{response}");
}
