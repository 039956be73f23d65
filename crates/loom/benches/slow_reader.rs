//! A reader that stops reading while its actor writes 1,000,000 chunks: the worker's and the
//! server's memory stay bounded. Real processes: `redis-server`, `loom worker`, `loom serve
//! --redis`, and a raw HTTP client that reads the first frames, then nothing for 30 s, then the
//! rest. Prints each process's RSS (from `/proc`) over time and what the client got.
//!
//! `cargo bench -p loom --bench slow_reader` (about a minute).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `batch` writes a progress and a data chunk per item: 499,999 items are 1,000,000 chunks
/// with `start` and `complete`.
const ITEMS: u64 = 499_999;
const STALL: Duration = Duration::from_secs(30);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `loom <args>` and waits for its stderr line starting with `ready`.
fn loom(args: &[&str], ready: &str) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loom starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let line = loop {
        let line = lines.next().expect("a line").expect("utf-8");
        if line.starts_with(ready) {
            break line;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), line)
}

fn main() {
    let port = free_port();
    let redis = Killed(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let url = format!("redis://127.0.0.1:{port}/");
    std::thread::sleep(Duration::from_millis(300));
    let (worker, _) = loom(&["worker", "--redis", &url], "loom: worker serving");
    let (server, banner) = loom(
        &["serve", "--redis", &url, "--addr", "127.0.0.1:0"],
        "loom: serving on",
    );
    let addr = banner
        .strip_prefix("loom: serving on http://")
        .and_then(|r| r.split_whitespace().next())
        .expect("address")
        .to_owned();
    std::thread::sleep(Duration::from_secs(2)); // the worker's first advertisement

    let body = format!(r#"{{"input":{{"count":{ITEMS},"batch_size":1,"delay_ms":0}}}}"#);
    let mut socket = TcpStream::connect(&addr).expect("connect");
    write!(
        socket,
        "POST /v1/actors/batch/stream HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut first = [0u8; 4096];
    let got = socket.read(&mut first).expect("the first frames");
    let pids = [
        ("worker", worker.0.id()),
        ("server", server.0.id()),
        ("redis", redis.0.id()),
    ];
    println!(
        "## a reader stalled {} s while its actor writes {} chunks",
        STALL.as_secs(),
        2 * ITEMS + 2
    );
    println!(
        "first read: {got} bytes; then nothing read for {} s",
        STALL.as_secs()
    );
    let start = Instant::now();
    let mut peak = [0.0f64; 3];
    let mut at_start = [0.0f64; 3];
    for (i, (_, pid)) in pids.iter().enumerate() {
        at_start[i] = rss_mib(*pid);
    }
    while start.elapsed() < STALL {
        std::thread::sleep(Duration::from_secs(1));
        let now: Vec<f64> = pids.iter().map(|(_, pid)| rss_mib(*pid)).collect();
        for i in 0..3 {
            peak[i] = peak[i].max(now[i]);
        }
        println!(
            "t={:>2}s  worker {:>6.1} MiB  server {:>6.1} MiB  redis {:>6.1} MiB",
            start.elapsed().as_secs(),
            now[0],
            now[1],
            now[2]
        );
    }
    // Now read the rest: the server dropped nothing it had not said (frames or a clean end).
    let mut rest = Vec::new();
    socket
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let _ = socket.read_to_end(&mut rest);
    let frames = rest.windows(2).filter(|w| w == b"\n\n").count();
    let tail = String::from_utf8_lossy(&rest[rest.len().saturating_sub(300)..]).to_string();
    for (i, (name, _)) in pids.iter().enumerate() {
        println!(
            "{name:<7} RSS at stall start {:>6.1} MiB, peak {:>6.1} MiB",
            at_start[i], peak[i]
        );
    }
    println!("after the stall the client read {frames} more frames; the body ends with: {tail:?}");
}
