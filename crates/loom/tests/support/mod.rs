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
        .env_remove("LOOM_AI_IDLE_TIMEOUT")
        .env_remove("LOOM_REDIS_URL")
        .stdin(Stdio::null());
    cmd
}

/// A subprocess killed on drop; one that leads a process group of its own (a wrapper such as
/// `faketime` running `loom` as its child, which killing the wrapper alone leaves running) is
/// killed with its whole group.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let pid = self.0.id();
        if leads_own_group(pid) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether process `pid` leads its own process group (`/proc/<pid>/stat`: the group id,
/// third after the command name, is its own id).
fn leads_own_group(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after_name) = stat.rsplit_once(')')?;
            Some(after_name.split_whitespace().nth(2)? == pid.to_string())
        })
        .unwrap_or(false)
}

/// Starts `loom <args>` with `env` set and waits for its stderr line starting with `ready`;
/// returns the process and that line.
pub fn start_ready(args: &[&str], env: &[(&str, &str)], ready: &str) -> (Process, String) {
    let mut command = loom(args);
    for (name, value) in env {
        command.env(name, value);
    }
    spawn_ready(command, ready)
}

/// Spawns `command` (a `loom` process, maybe behind a wrapper) and waits for its stderr line
/// starting with `ready`; returns the process and that line.
pub fn spawn_ready(mut command: Command, ready: &str) -> (Process, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the process starts");
    let rx = lines_of(child.stderr.take().expect("stderr is piped"));
    let process = Process(child);
    loop {
        let line = rx.recv_timeout(LIMIT).expect("the ready line in time");
        if line.starts_with(ready) {
            return (process, line);
        }
    }
}

/// The address in `loom serve`'s `loom: serving on http://ADDR …` line.
pub fn served_addr(banner: &str) -> String {
    banner
        .strip_prefix("loom: serving on http://")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected banner: {banner}"))
        .to_owned()
}

/// Sends one HTTP/1.1 request with `Connection: close` and the extra `headers` (`Name: value`)
/// and returns the whole response.
pub fn http(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> String {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(addr).expect("connect");
    socket.set_read_timeout(Some(LIMIT)).expect("timeout");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    socket.read_to_string(&mut response).expect("read");
    response
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

/// Spawns `command` with its stdout and stderr piped, and streams its stdout's lines.
pub fn spawn_lines(command: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loom starts");
    let lines = lines(&mut child);
    (child, lines)
}

/// Streams a child's stdout lines through a channel, so a test can wait for one with a limit.
pub fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    lines_of(child.stdout.take().expect("stdout is piped"))
}

/// Streams the lines of `pipe` (a child's stdout or stderr) through a channel.
pub fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
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

/// Stops `child` with SIGTERM and asserts it exits cleanly (code 0).
pub fn terminate(child: &mut Child) {
    signal(child.id(), "TERM");
    assert_eq!(wait(child).code(), Some(0));
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

/// A one-connection OpenAI-compatible server on loopback that answers a streaming chat
/// completion with `events` (each sent as `data: …` and flushed), then, if `hold` is set,
/// keeps the connection open until the client goes away. The receiver gets `()` when the
/// client disconnected; `requests` gets the request's head (request line and headers).
pub struct FakeOpenAi {
    pub base_url: String,
    pub disconnected: mpsc::Receiver<()>,
    pub requests: mpsc::Receiver<String>,
}

impl FakeOpenAi {
    pub fn start(events: Vec<String>, hold: bool) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let base_url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::channel();
        let (head_tx, requests) = mpsc::channel();
        std::thread::spawn(move || {
            let Ok((mut socket, _)) = listener.accept() else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the headers and the JSON body (the client sends Content-Length).
            loop {
                let Ok(n) = socket.read(&mut buf) else { return };
                if n == 0 {
                    return;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        let _ = head_tx.send(text[..end].to_owned());
                        break;
                    }
                }
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
            if socket.write_all(head.as_bytes()).is_err() {
                return;
            }
            for event in events {
                if socket
                    .write_all(format!("data: {event}\n\n").as_bytes())
                    .is_err()
                {
                    let _ = tx.send(());
                    return;
                }
                let _ = socket.flush();
            }
            if hold {
                // Keep-alive comments until a write fails or a read sees the close.
                socket
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .ok();
                let deadline = Instant::now() + LIMIT;
                while Instant::now() < deadline {
                    match socket.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                    if socket.write_all(b": keep-alive\n\n").is_err() {
                        break;
                    }
                }
                let _ = tx.send(());
            }
        });
        Self {
            base_url,
            disconnected: rx,
            requests,
        }
    }
}

/// One `chat.completion.chunk` carrying a content delta, as OpenAI sends it.
pub fn token_event(text: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
        "choices": [{ "index": 0, "delta": { "content": text }, "finish_reason": null }]
    })
    .to_string()
}

/// The `chat.completion.chunk` that ends a completion with `finish_reason: "stop"`.
pub fn finish_event() -> String {
    serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
        "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }]
    })
    .to_string()
}
