//! One trace from client to LLM: a `traceparent` sent to `loom serve --redis` reaches the
//! upstream chat completion request made by a `loom worker`, through the Redis request, and
//! both processes export their spans of that trace over OTLP/HTTP when configured.

#[path = "../../loom-redis/tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use support::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver: answers every request 200 and passes on its path and body.
fn collector() -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            if let Some(request) = read_request(&mut socket) {
                let _ = socket.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                if tx.send(request).is_err() {
                    return;
                }
            }
        }
    });
    (url, rx)
}

/// One HTTP request's path and body.
fn read_request(socket: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    socket.set_read_timeout(Some(LIMIT)).ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = socket.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]).to_string();
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            })
            .unwrap_or(0);
        if data.len() >= end + 4 + length {
            let path = head
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            return Some((path, data[end + 4..end + 4 + length].to_vec()));
        }
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn a_traceparent_reaches_the_llm_call_through_redis_and_both_processes_export_the_trace() {
    let redis = RedisServer::start();
    let (otlp, spans) = collector();
    let llm = FakeOpenAi::start(
        vec![token_event("Hi"), finish_event(), "[DONE]".into()],
        false,
    );
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OPENAI_BASE_URL", llm.base_url.as_str()),
    ];
    let (mut worker, _) = start_ready(
        &["worker", "--redis", redis.url()],
        &env,
        "loom: worker serving",
    );
    let (mut server, banner) = start_ready(
        &["serve", "--redis", redis.url(), "--addr", "127.0.0.1:0"],
        &env,
        "loom: serving on",
    );
    let addr = served_addr(&banner);

    // Wait for the worker to advertise chat-agent, then run it with the client's trace.
    let deadline = Instant::now() + LIMIT;
    let traceparent = format!("traceparent: 00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let response = loop {
        let response = http(
            &addr,
            "POST",
            "/v1/actors/chat-agent/run",
            &[&traceparent],
            r#"{"input":{"prompt":"hi"}}"#,
        );
        if !response.starts_with("HTTP/1.1 404") {
            break response;
        }
        assert!(Instant::now() < deadline, "{response}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let head = llm.requests.recv_timeout(LIMIT).expect("the LLM request");
    let traceparent = head
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("no traceparent upstream: {head}"));
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], TRACE_ID, "the client's trace goes on");
    assert_ne!(parts[2], CLIENT_SPAN, "as a child span of the worker's");

    // Stopping flushes the exporters; each process sends its spans of the trace.
    terminate(&mut server.0);
    terminate(&mut worker.0);
    let trace_id = hex_bytes(TRACE_ID);
    let mut exports = 0;
    while let Ok((path, body)) = spans.recv_timeout(Duration::from_secs(2)) {
        assert_eq!(path, "/v1/traces");
        if body
            .windows(trace_id.len())
            .any(|w| w == trace_id.as_slice())
            && body.windows(8).any(|w| w == b"loom.run")
        {
            exports += 1;
        }
    }
    assert!(
        exports >= 2,
        "the server's and the worker's spans: {exports}"
    );
}
