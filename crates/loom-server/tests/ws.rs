//! WebSocket `GET /v1/actors/{type}/ws`: start, chunks as text frames, cancel, close.

mod support;

use futures::{SinkExt, StreamExt};
use loom_server::ServerConfig;
use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(server: &TestServer, actor: &str) -> Socket {
    let url = format!("{}/v1/actors/{actor}/ws", server.base.replace("http", "ws"));
    within(tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake")
        .0
}

async fn send(socket: &mut Socket, message: Value) {
    within(socket.send(Message::text(message.to_string())))
        .await
        .expect("send");
}

/// The next text frame as JSON; `None` once the server closed.
async fn next_json(socket: &mut Socket) -> Option<Value> {
    loop {
        match within(socket.next()).await? {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).expect("JSON")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Starts a long `batch` run over a new socket; returns the socket and the run id.
async fn start_slow_batch(server: &TestServer) -> (Socket, String) {
    let mut socket = connect(server, "batch").await;
    let id = start_batch(&mut socket, 1000).await;
    (socket, id)
}

/// Starts a `batch` run of `batches` one every 20 ms on `socket`; returns its run id.
async fn start_batch(socket: &mut Socket, batches: u64) -> String {
    send(
        socket,
        json!({ "action": "start", "input": slow_batch(batches, 20) }),
    )
    .await;
    let start = next_json(socket).await.expect("start");
    start["data"]["run_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_run_streams_as_text_frames_then_the_server_closes() {
    let server = TestServer::default_config().await;
    let mut socket = connect(&server, "echo").await;
    send(
        &mut socket,
        json!({ "action": "start", "input": { "a": 1 } }),
    )
    .await;
    let start = next_json(&mut socket).await.expect("start");
    assert_eq!(start["type"], "start");
    let complete = next_json(&mut socket).await.expect("complete");
    assert_eq!(
        complete,
        json!({ "type": "complete", "seq": 1, "data": { "a": 1 } })
    );
    assert_eq!(
        close_code(&mut socket).await,
        Some(1000),
        "closed after the terminal"
    );
}

/// A `start`'s `timeout` is a duration as `POST /v1/runs` takes it: text, or a number of
/// seconds (a number was refused as "not a Loom message").
#[tokio::test]
async fn a_start_takes_its_timeout_as_text_or_a_number_of_seconds() {
    let server = TestServer::default_config().await;
    for timeout in [json!("200ms"), json!(0.2)] {
        let mut socket = connect(&server, "batch").await;
        let start = json!({ "action": "start", "input": slow_batch(100, 20), "timeout": timeout });
        send(&mut socket, start).await;
        let mut last = None;
        while let Some(frame) = next_json(&mut socket).await {
            last = Some(frame);
        }
        let last = last.expect("frames");
        assert_eq!(last["type"], "error", "{timeout}: {last}");
        assert_eq!(last["error"]["code"], "timeout", "{timeout}: {last}");
    }
}

/// The code of the close frame that ends the socket (skipping anything before it).
async fn close_code(socket: &mut Socket) -> Option<u16> {
    loop {
        match within(socket.next()).await? {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A client that starts a run and then reads nothing is dropped once the server's sends
/// have waited two keep-alive intervals, its stream is free again, and the metrics count it.
#[tokio::test]
async fn a_socket_that_stops_reading_is_dropped_and_gives_its_stream_back() {
    // 64 MB at once: more than loopback's buffers take (up to 32 MB received, 4 MB sent).
    let flood = loom_core::actor_fn("flood", |_, _| {
        loom_core::try_stream! {
            for _ in 0..1_000 {
                yield loom_core::Output::token("x".repeat(64 * 1024));
            }
            yield loom_core::Output::complete(Value::Null);
        }
    });
    let mut registry = loom_core::Registry::with_builtins();
    registry.register(flood);
    let config = ServerConfig {
        keep_alive: std::time::Duration::from_millis(100),
        max_streams: 1,
        // The log holds the whole run: the reader is never overtaken, only stuck.
        log_limits: loom_server::LogLimits {
            max_bytes: usize::MAX,
            max_total_bytes: usize::MAX,
            ..loom_server::LogLimits::default()
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(registry, config).await;
    let mut deaf = connect(&server, "flood").await;
    send(&mut deaf, json!({ "action": "start" })).await;
    let url = format!("{}/v1/actors/echo/ws", server.base.replace("http", "ws"));
    let began = std::time::Instant::now();
    let mut next = within(async {
        loop {
            match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((socket, _)) => return socket,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    eprintln!("second socket after {:?}", began.elapsed());
    send(&mut next, json!({ "action": "start", "input": { "b": 2 } })).await;
    let first = next_json(&mut next).await.expect("start");
    assert_eq!(first["type"], "start", "{first}");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("\nloom_slow_readers_dropped_total 1\n"),
        "{metrics}"
    );
    let sent = metrics
        .lines()
        .find_map(|l| l.strip_prefix("loom_chunks_sent_total "))
        .and_then(|n| n.parse::<u64>().ok())
        .expect("loom_chunks_sent_total");
    assert!(sent >= 2, "the frames the sockets took are counted: {sent}");
    drop(deaf);
}

#[tokio::test]
async fn cancel_ends_the_run_with_error_cancelled_on_the_socket() {
    let server = TestServer::default_config().await;
    let (mut socket, id) = start_slow_batch(&server).await;
    send(&mut socket, json!({ "action": "cancel" })).await;
    let mut last = None;
    while let Some(chunk) = next_json(&mut socket).await {
        last = Some(chunk);
    }
    let last = last.expect("chunks");
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["code"], "cancelled");
    assert_eq!(server.status(&id).await["status"], "cancelled");
}

#[tokio::test]
async fn a_cancel_with_other_fields_a_binary_frame_or_an_early_cancel_is_refused_not_acted_on() {
    let server = TestServer::default_config().await;
    let mut socket = connect(&server, "batch").await;
    send(&mut socket, json!({ "action": "cancel" })).await;
    let early = next_json(&mut socket).await.expect("an error frame");
    assert_eq!(early["error"]["code"], "bad_request", "{early}");
    assert!(
        early["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not started"),
        "{early}"
    );
    let id = start_batch(&mut socket, 30).await;
    // Meant for another run: refused, and this socket's run goes on.
    send(
        &mut socket,
        json!({ "action": "cancel", "run_id": "00000000-0000-0000-0000-000000000000" }),
    )
    .await;
    within(socket.send(Message::binary(b"{\"action\":\"cancel\"}".to_vec())))
        .await
        .expect("send");
    let mut errors = Vec::new();
    let mut last = None;
    while let Some(frame) = next_json(&mut socket).await {
        if frame.get("error").is_some() && frame.get("type").is_none() {
            errors.push(frame);
        } else {
            last = Some(frame);
        }
    }
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("run_id"),
        "{errors:?}"
    );
    assert!(
        errors[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("binary"),
        "{errors:?}"
    );
    let last = last.expect("chunks");
    assert_eq!(last["type"], "complete", "{last}");
    assert_eq!(server.status(&id).await["status"], "complete");
}

#[tokio::test]
async fn closing_the_socket_cancels_the_run() {
    let server = TestServer::start(loom_server::ServerConfig {
        disconnect_grace: std::time::Duration::from_secs(600),
        ..loom_server::ServerConfig::default()
    })
    .await;
    let (mut socket, id) = start_slow_batch(&server).await;
    within(socket.close(None)).await.expect("close");
    // The close handshake (RFC 6455 §5.5.1): the server answers with a close frame of its own
    // (after the chunks already on their way), rather than dropping the connection.
    assert!(answered_close(&mut socket).await);
    // The grace is 10 minutes: only the close frame can end it this soon.
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "cancelled");

    // The same before any run started.
    let mut idle = connect(&server, "batch").await;
    within(idle.close(None)).await.expect("close");
    assert!(answered_close(&mut idle).await);
}

/// Whether the server answered this client's close frame with one of its own.
async fn answered_close(socket: &mut Socket) -> bool {
    loop {
        match within(socket.next()).await {
            Some(Ok(Message::Close(_))) => return true,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return false,
        }
    }
}

#[tokio::test]
async fn a_bad_message_gets_an_error_frame_and_an_unknown_actor_is_404() {
    let server = TestServer::default_config().await;
    let mut socket = connect(&server, "echo").await;
    send(&mut socket, json!({ "action": "launch" })).await;
    let error = next_json(&mut socket).await.expect("an error frame");
    assert_eq!(error["error"]["code"], "bad_request");
    send(
        &mut socket,
        json!({ "action": "start", "input": { "bogus": 1 } }),
    )
    .await;
    assert_eq!(next_json(&mut socket).await.unwrap()["type"], "start");

    let url = format!("{}/v1/actors/nope/ws", server.base.replace("http", "ws"));
    let refused = within(tokio_tungstenite::connect_async(url)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404)
        }
        other => panic!("expected a 404 handshake, got {other:?}"),
    }
}

#[tokio::test]
async fn an_idle_socket_is_pinged_every_keep_alive_interval() {
    let server = TestServer::start(ServerConfig {
        keep_alive: std::time::Duration::from_millis(50),
        ..ServerConfig::default()
    })
    .await;
    let mut socket = connect(&server, "batch").await;
    // One batch a second: the socket is idle in between.
    send(
        &mut socket,
        json!({ "action": "start", "input": slow_batch(3, 1000) }),
    )
    .await;
    let mut pings = 0;
    while pings < 2 {
        match within(socket.next())
            .await
            .expect("a frame")
            .expect("no error")
        {
            Message::Ping(_) => pings += 1,
            Message::Close(_) => panic!("closed before two pings"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_socket_that_never_starts_a_run_is_closed_and_gives_its_stream_back() {
    let server = TestServer::start(ServerConfig {
        keep_alive: std::time::Duration::from_millis(100),
        max_streams: 1,
        ..ServerConfig::default()
    })
    .await;
    let mut silent = connect(&server, "batch").await;
    let error = next_json(&mut silent).await.expect("an error frame");
    assert_eq!(error["error"]["code"], "bad_request", "{error}");
    assert!(next_json(&mut silent).await.is_none(), "then the close");
    // The one stream the server allows is free again.
    let (_socket, id) = start_slow_batch(&server).await;
    assert!(!id.is_empty());
}

/// A message is held whole to be parsed, so it is bound like a request body: one over the
/// limit closes the socket before it is read, with `1009` (message too big).
#[tokio::test]
async fn a_message_over_the_body_limit_closes_the_socket() {
    let server = TestServer::start(ServerConfig {
        body_limit: 64 * 1024,
        ..ServerConfig::default()
    })
    .await;
    let mut socket = connect(&server, "echo").await;
    let big = json!({ "action": "start", "input": "x".repeat(128 * 1024) });
    let _ = within(socket.send(Message::text(big.to_string()))).await;
    assert_eq!(
        close_code(&mut socket).await,
        Some(1009),
        "closed, nothing run"
    );
}

/// An actor that never waits (here one that yields tokens as fast as it can) does not keep
/// its socket's task from running: a client that stops reading is still dropped, and its run
/// cancelled after the grace. Regression test for the run that went on for ever, its socket
/// starved on the thread of the loop that logs the run. The server has a runtime of its own,
/// so that starving it fails this test instead of hanging it.
#[tokio::test]
async fn a_socket_of_an_actor_that_never_waits_is_still_dropped_and_its_run_cancelled() {
    let spin = loom_core::actor_fn("spin", |_, _| {
        loom_core::try_stream! {
            for _ in 0..100_000_000u64 {
                yield loom_core::Output::token("x");
            }
            yield loom_core::Output::complete(Value::Null);
        }
    });
    let mut registry = loom_core::Registry::with_builtins();
    registry.register(spin);
    let config = ServerConfig {
        keep_alive: std::time::Duration::from_millis(100),
        disconnect_grace: std::time::Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.spawn(TestServer::start_with(registry, config));
    // Not waited for when the test ends: a starved thread would never let it go.
    let _runtime = Background(Some(runtime));
    let server = within(server).await.unwrap();
    let mut deaf = connect(&server, "spin").await;
    send(&mut deaf, json!({ "action": "start" })).await;
    let start = next_json(&mut deaf).await.expect("start");
    let id = start["data"]["run_id"].as_str().expect("run id").to_owned();
    // Reads nothing more, and keeps the socket open.
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "cancelled", "{status}");
    drop(deaf);
}

/// A runtime shut down in the background when dropped.
struct Background(Option<tokio::runtime::Runtime>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
