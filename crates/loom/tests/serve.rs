//! `loom serve`: the real binary on a free port, driven with plain HTTP/1.1, stopped by SIGTERM.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;

use support::*;

/// Sends one HTTP/1.1 request with `Connection: close` and returns the whole response.
fn http(addr: &str, method: &str, path: &str, body: &str) -> String {
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket.set_read_timeout(Some(LIMIT)).expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    socket.read_to_string(&mut response).expect("read");
    response
}

#[test]
fn serve_answers_healthz_streams_an_actor_as_sse_and_exits_0_on_sigterm() {
    let mut child = loom(&["serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loom serve starts");
    let rx = lines_of(child.stderr.take().expect("stderr is piped"));
    let banner = rx.recv_timeout(LIMIT).expect("the serving line");
    let addr = banner
        .strip_prefix("loom: serving on http://")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected banner: {banner}"))
        .to_owned();

    let health = http(&addr, "GET", "/healthz", "");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with(r#"{"status":"ok"}"#), "{health}");

    let stream = http(
        &addr,
        "POST",
        "/v1/actors/echo/stream",
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

#[test]
fn serve_with_redis_is_a_usage_error_for_now() {
    let out = run(&["serve", "--redis", "redis://127.0.0.1:1"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("not yet supported"), "{}", out.stderr);
}
