//! Runs the real `loom` binary as a subprocess, with every wait bounded.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Every wait on a subprocess is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(60);

/// A `loom` command with a clean environment (no AI or Redis configuration leaks in).
pub fn loom(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loom"));
    cmd.args(args)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("LOOM_MODEL")
        .env_remove("LOOM_REDIS_URL")
        .stdin(Stdio::null());
    cmd
}

/// What a finished run printed.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `loom args` to completion (bounded by [`LIMIT`]).
pub fn run(args: &[&str]) -> Output {
    let child = loom(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loom starts");
    finish(child)
}

/// Waits (bounded) for `child` and collects its output.
pub fn finish(mut child: Child) -> Output {
    let status = wait(&mut child);
    let out = child.wait_with_output().expect("output");
    Output {
        code: status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits for `child` to exit, killing it and failing the test after [`LIMIT`].
pub fn wait(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loom did not exit within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Streams a child's stdout lines through a channel, so a test can wait for one with a limit.
pub fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Sends a signal (`INT`, `TERM`, `KILL`) to a process.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Parses JSON Lines output into chunks.
pub fn chunks(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Asserts gapless seq from 0 and exactly one terminal chunk, last.
pub fn assert_contract(chunks: &[serde_json::Value]) {
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk["seq"], i as u64, "gapless seq: {chunks:?}");
    }
    let terminal = |c: &serde_json::Value| c["type"] == "complete" || c["type"] == "error";
    assert_eq!(
        chunks.iter().filter(|c| terminal(c)).count(),
        1,
        "one terminal chunk"
    );
    assert!(
        chunks.last().is_some_and(terminal),
        "the terminal chunk is last"
    );
}
