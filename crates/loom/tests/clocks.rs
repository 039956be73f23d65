//! No decision depends on two machines' clocks agreeing: workers whose clocks are 10 minutes
//! ahead or behind (Debian's `faketime` around the real `loom worker`) run requests with their
//! full time budget, end them at their deadline, and are advertised to `loom serve --redis`.

#[path = "../../loom-redis/tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use serde_json::Value;
use support::*;

/// `loom worker --redis URL` under `faketime -f <offset>`, ready once it says it serves; in a
/// process group of its own, which [`Process`] kills whole, even when it never got ready.
fn skewed_worker(redis: &RedisServer, offset: &str) -> Process {
    let mut command = Command::new("faketime");
    command
        .args([
            "-f",
            offset,
            env!("CARGO_BIN_EXE_loom"),
            "worker",
            "--redis",
            redis.url(),
        ])
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("LOOM_REDIS_URL")
        .stdin(Stdio::null())
        .process_group(0);
    spawn_ready(command, "loom: worker serving").0
}

/// The chunks of `loom actor run batch` through Redis with `input` and `--timeout`, and how long
/// it took.
fn run_batch(redis: &RedisServer, input: &str, timeout: &str) -> (Vec<Value>, Duration) {
    let started = Instant::now();
    let out = run(&[
        "actor",
        "run",
        "batch",
        "--input",
        input,
        "--timeout",
        timeout,
        "--stream",
        "--json",
        "--redis",
        redis.url(),
    ]);
    (chunks(&out.stdout), started.elapsed())
}

#[test]
fn workers_ten_minutes_ahead_or_behind_keep_deadlines_and_are_advertised() {
    for offset in ["+10m", "-10m"] {
        let redis = RedisServer::start_own();
        let _worker = skewed_worker(&redis, offset);

        // A 1 s run with a 5 s budget completes: the budget is not spent by the skew.
        let (chunks, _) = run_batch(
            &redis,
            r#"{"count":10,"batch_size":1,"delay_ms":100}"#,
            "5s",
        );
        assert_contract(&chunks);
        assert_eq!(
            chunks.last().unwrap()["type"],
            "complete",
            "{offset}: {chunks:?}"
        );

        // A 10 s run with a 1 s budget ends with error/timeout near its deadline, not never.
        let (chunks, took) = run_batch(
            &redis,
            r#"{"count":100,"batch_size":1,"delay_ms":100}"#,
            "1s",
        );
        let last = chunks.last().unwrap();
        assert_eq!(last["error"]["code"], "timeout", "{offset}: {chunks:?}");
        assert!(took < Duration::from_secs(8), "{offset}: took {took:?}");

        // The worker's advertisement is dated by Redis's clock: a server sees it.
        let (mut server, banner) = start_ready(
            &["serve", "--redis", redis.url(), "--addr", "127.0.0.1:0"],
            &[],
            "loom: serving on",
        );
        let addr = served_addr(&banner);
        let response = http(
            &addr,
            "POST",
            "/v1/actors/echo/run",
            &[],
            r#"{"input":{"a":1}}"#,
        );
        assert!(response.starts_with("HTTP/1.1 200"), "{offset}: {response}");
        terminate(&mut server.0);
    }
}
