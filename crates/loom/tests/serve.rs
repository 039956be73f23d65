//! `loom serve`: the real binary on a free port, driven with plain HTTP/1.1, stopped by SIGTERM.

#[path = "../../loom-redis/tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::process::Stdio;

use redis_server::RedisServer;
use support::*;

#[test]
fn serve_answers_healthz_streams_an_actor_as_sse_and_exits_0_on_sigterm() {
    let mut child = loom(&["serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loom serve starts");
    let rx = lines_of(child.stderr.take().expect("stderr is piped"));
    let banner = rx.recv_timeout(LIMIT).expect("the serving line");
    let addr = served_addr(&banner);

    let health = http(&addr, "GET", "/healthz", &[], "");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with(r#"{"status":"ok"}"#), "{health}");

    let stream = http(
        &addr,
        "POST",
        "/v1/actors/echo/stream",
        &[],
        r#"{"input":{"hello":"world"}}"#,
    );
    assert!(stream.starts_with("HTTP/1.1 200"), "{stream}");
    assert!(
        stream.contains("content-type: text/event-stream"),
        "{stream}"
    );
    assert!(stream.contains("loom-run-id: "), "{stream}");
    assert!(stream.contains("id: 0\nevent: start\n"), "{stream}");
    assert!(
        stream.contains("id: 1\nevent: complete\ndata: {\"type\":\"complete\",\"seq\":1,\"data\":{\"hello\":\"world\"}}\n\n"),
        "{stream}"
    );

    signal(child.id(), "TERM");
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(0));
    // The pipe closes at exit, which ends the reader thread and this loop.
    let mut rest = Vec::new();
    while let Ok(line) = rx.recv_timeout(LIMIT) {
        rest.push(line);
    }
    assert!(rest.iter().any(|l| l == "loom: server stopped"), "{rest:?}");
}

/// The JSON body of an HTTP response.
fn body(response: &str) -> serde_json::Value {
    let (_, body) = response.split_once("\r\n\r\n").expect("a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// A `loom worker` on `redis` (with `worker_args`) and a `loom serve --redis` in front of it,
/// each once it says it is ready; and the server's address.
fn worker_and_server(redis: &RedisServer, worker_args: &[&str]) -> (Process, Process, String) {
    let args = [&["worker", "--redis", redis.url()][..], worker_args].concat();
    let (worker, _) = start_ready(&args, &[], "loom: worker serving");
    let (server, banner) = start_ready(
        &["serve", "--redis", redis.url(), "--addr", "127.0.0.1:0"],
        &[],
        "loom: serving on",
    );
    let addr = served_addr(&banner);
    (worker, server, addr)
}

/// A server in front of workers that serve on another number of queue shards says so when
/// it starts: its health check answers `ok`, while every run it starts would be refused.
#[test]
fn serve_warns_when_the_live_workers_use_other_queue_shards() {
    let redis = RedisServer::start();
    let (_worker, _) = start_ready(
        &["worker", "--redis", redis.url(), "--actors", "echo"],
        &[],
        "loom: worker serving",
    );
    // Once a run went through, the worker has said what it serves.
    let ran = run(&["actor", "run", "echo", "--redis", redis.url()]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let (_server, warning) = start_ready(
        &[
            "serve",
            "--redis",
            redis.url(),
            "--addr",
            "127.0.0.1:0",
            "--queue-shards",
            "2",
        ],
        &[],
        "loom: warning",
    );
    assert!(
        warning.contains("echo with --queue-shards 1, this server uses 2"),
        "{warning}"
    );
}

const SLOW: &str = "name: slow\nactions:\n  - name: work\n    type: actor\n    actorType: batch\n    input: { count: 200, batch_size: 1, delay_ms: 50 }\n";

#[test]
fn serve_with_redis_queues_runs_to_a_worker_and_delete_stops_a_detached_workflow_there() {
    let redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("loom-serve-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("slow.yaml"), SLOW).expect("workflow file");
    let dir_arg = dir.to_str().expect("utf-8 path");
    let (mut worker, mut server, addr) = worker_and_server(&redis, &["--workflows", dir_arg]);
    // The worker advertises what it serves on its first heartbeat.
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let listed = body(&http(&addr, "GET", "/v1/workflows", &[], ""));
        if listed["workflows"][0]["name"] == "slow" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{listed}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let stream = http(
        &addr,
        "POST",
        "/v1/actors/echo/stream",
        &[],
        r#"{"input":{"x":1}}"#,
    );
    assert!(stream.contains("id: 0\nevent: start\n"), "{stream}");
    assert!(
        stream.contains(
            "event: complete\ndata: {\"type\":\"complete\",\"seq\":1,\"data\":{\"x\":1}}"
        ),
        "{stream}"
    );

    let created = http(&addr, "POST", "/v1/runs", &[], r#"{"workflow":"slow"}"#);
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let id = body(&created)["run_id"]
        .as_str()
        .expect("run_id")
        .to_owned();
    let status = body(&http(&addr, "GET", &format!("/v1/runs/{id}"), &[], ""));
    assert_eq!(status["workflow"], "slow", "{status}");
    let deleted = http(&addr, "DELETE", &format!("/v1/runs/{id}"), &[], "");
    assert!(deleted.starts_with("HTTP/1.1 202"), "{deleted}");
    let deadline = std::time::Instant::now() + LIMIT;
    let status = loop {
        let status = body(&http(&addr, "GET", &format!("/v1/runs/{id}"), &[], ""));
        if status["status"] != "running" {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status["status"], "cancelled", "{status}");
    // Its stream ends with the worker's terminal chunk, well before the 10 s it would take.
    let replay = http(&addr, "GET", &format!("/v1/runs/{id}/stream"), &[], "");
    assert!(replay.contains("\"code\":\"cancelled\""), "{replay}");

    terminate(&mut server.0);
    terminate(&mut worker.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// In front of workers, `SIGTERM` closes the server's streams and then waits out the
/// disconnect grace of the direct runs whose clients it had (10 s); a second `SIGTERM` stops
/// it at once, with exit 130.
#[test]
fn serve_with_redis_waits_out_the_disconnect_grace_at_shutdown_unless_signalled_twice() {
    use std::io::{Read, Write};

    let redis = RedisServer::start();
    let (worker, mut server, addr) = worker_and_server(&redis, &[]);
    let deadline = std::time::Instant::now() + LIMIT;
    while !http(&addr, "GET", "/v1/actors", &[], "").contains("\"batch\"") {
        assert!(std::time::Instant::now() < deadline, "no worker advertised");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A direct stream, held open and read up to its first chunk.
    let mut client = std::net::TcpStream::connect(&addr).expect("connect");
    client.set_read_timeout(Some(LIMIT)).unwrap();
    let body = r#"{"input":{"count":1000,"batch_size":1,"delay_ms":50}}"#;
    let request = format!(
        "POST /v1/actors/batch/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("event: start") {
        let n = client.read(&mut buf).expect("the stream's first bytes");
        assert!(n > 0, "{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }

    signal(server.0.id(), "TERM");
    // Its streams close (this one without a terminal chunk) ...
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("event: complete"), "{rest}");
    // ... and it waits out the grace of the run whose client it had.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server waits out the disconnect grace"
    );
    let second = std::time::Instant::now();
    signal(server.0.id(), "TERM");
    assert_eq!(wait(&mut server.0).code(), Some(130));
    assert!(second.elapsed() < std::time::Duration::from_secs(5));
    // Killed with its run, which nobody cancelled: a graceful stop would wait for it.
    drop(worker);
}

/// No secret reaches the logs, even with `RUST_LOG=trace`: not the API key (right or wrong),
/// not a token from `/v1/tokens` used as `?token=`, not the upstream LLM's key; and `/metrics`
/// shows neither them nor run ids.
#[test]
fn no_secret_reaches_the_logs_even_at_rust_log_trace() {
    const KEY: &str = "loomkey-Secret-2f9c7e1d";
    const LLM_KEY: &str = "sk-upstream-Secret-81b3a6";
    let llm = FakeOpenAi::start(
        vec![token_event("Hi"), finish_event(), "[DONE]".into()],
        false,
    );
    let mut child = loom(&["serve", "--addr", "127.0.0.1:0"])
        .env("LOOM_API_KEY", KEY)
        .env("OPENAI_API_KEY", LLM_KEY)
        .env("OPENAI_BASE_URL", &llm.base_url)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loom serve starts");
    let rx = lines_of(child.stderr.take().expect("stderr is piped"));
    let mut logs = Vec::new();
    let addr = loop {
        let line = rx.recv_timeout(LIMIT).expect("the serving line");
        if line.starts_with("loom: serving on") {
            break served_addr(&line);
        }
        logs.push(line);
    };
    let bearer = format!("Authorization: Bearer {KEY}");

    let run = http(
        &addr,
        "POST",
        "/v1/actors/chat-agent/run",
        &[&bearer],
        r#"{"input":{"prompt":"hi"}}"#,
    );
    assert!(run.starts_with("HTTP/1.1 200"), "{run}");
    let head = llm.requests.recv_timeout(LIMIT).expect("the LLM request");
    assert!(head.contains(LLM_KEY), "the upstream got its key: {head}");
    let run_id = run
        .lines()
        .find_map(|l| l.strip_prefix("loom-run-id: "))
        .expect("a run id")
        .to_owned();

    let wrong = http(&addr, "GET", "/v1/actors", &[&format!("{bearer}x")], "");
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let token = body(&http(&addr, "POST", "/v1/tokens", &[&bearer], ""))["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let stream = http(
        &addr,
        "GET",
        &format!("/v1/actors/echo/stream?token={token}"),
        &[],
        "",
    );
    assert!(stream.starts_with("HTTP/1.1 200"), "{stream}");
    let metrics = http(&addr, "GET", "/metrics", &[&bearer], "");
    assert!(metrics.contains("loom_"), "{metrics}");
    for secret in [KEY, LLM_KEY, token.as_str(), run_id.as_str()] {
        assert!(!metrics.contains(secret), "/metrics shows {secret}");
    }

    terminate(&mut child);
    while let Ok(line) = rx.recv_timeout(LIMIT) {
        logs.push(line);
    }
    // The logs are there (trace level, naming the run), and hold no secret.
    assert!(logs.iter().any(|l| l.contains(&run_id)), "{}", logs.len());
    for secret in [KEY, LLM_KEY, token.as_str()] {
        let leaks: Vec<&String> = logs.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "{secret} in the logs: {leaks:?}");
    }
    // stderr is a pipe here, as for a log file or a collector: plain text, no colour codes.
    let coloured: Vec<&String> = logs.iter().filter(|l| l.contains('\u{1b}')).collect();
    assert!(coloured.is_empty(), "{coloured:?}");
}

/// A graceful shutdown ends a WebSocket's run with its terminal chunk and closes the socket
/// with `1000` before the process exits: the socket left its HTTP connection when it
/// upgraded, and the server used to exit without waiting for it (close `1006`, no terminal).
#[test]
fn sigterm_ends_a_websockets_run_with_its_terminal_and_a_close_frame() {
    use tungstenite::Message;
    let (mut server, banner) =
        start_ready(&["serve", "--addr", "127.0.0.1:0"], &[], "loom: serving");
    let url = format!("ws://{}/v1/actors/batch/ws", served_addr(&banner));
    let (mut socket, _) = tungstenite::connect(url).expect("handshake");
    let start = r#"{"action":"start","input":{"count":100000,"batch_size":1,"delay_ms":20}}"#;
    socket.send(Message::text(start)).expect("send");
    let first = socket.read().expect("the start chunk");
    assert!(
        first
            .to_text()
            .unwrap_or_default()
            .contains(r#""type":"start""#),
        "{first:?}"
    );
    signal(server.0.id(), "TERM");
    let (mut last, mut close) = (None, None);
    while let Ok(message) = socket.read() {
        match message {
            Message::Text(text) => last = Some(text.to_string()),
            Message::Close(frame) => close = frame.map(|f| u16::from(f.code)),
            _ => {}
        }
    }
    let last = last.expect("chunks before the close");
    assert!(
        last.contains(r#""type":"error""#) && last.contains("cancelled"),
        "{last}"
    );
    assert_eq!(close, Some(1000), "a close frame after the terminal");
    assert_eq!(wait(&mut server.0).code(), Some(0));
}

/// A client that stopped reading its stream does not hold a graceful shutdown open: the
/// server stops waiting for it after `SHUTDOWN_DRAIN` (10 s) and exits 0.
#[test]
fn sigterm_does_not_wait_forever_for_a_client_that_stopped_reading() {
    use std::io::Write;
    let (mut server, banner) =
        start_ready(&["serve", "--addr", "127.0.0.1:0"], &[], "loom: serving");
    let body = r#"{"input":{"count":10000000,"batch_size":1,"delay_ms":0}}"#;
    let mut stalled = std::net::TcpStream::connect(served_addr(&banner)).expect("connect");
    write!(
        stalled,
        "POST /v1/actors/batch/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    // Long enough for the socket's buffers to fill: the stream's end cannot be sent now.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let stopped = std::time::Instant::now();
    signal(server.0.id(), "TERM");
    assert_eq!(wait(&mut server.0).code(), Some(0));
    assert!(
        stopped.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        stopped.elapsed()
    );
    drop(stalled);
}
