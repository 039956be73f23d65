//! SSE over a real socket: the exact frame bytes, resume from cursors, several readers,
//! 204/410 of the cursor table, keep-alive, and auth.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use loom_core::{actor_fn, try_stream, ActorError, Output, Registry};
use loom_server::{LogLimits, ServerConfig};
use serde_json::json;
use support::*;
use tokio::sync::Semaphore;

#[tokio::test]
async fn a_short_run_is_framed_byte_for_byte() {
    let server = TestServer::default_config().await;
    let response = server
        .post("/v1/actors/echo/stream", &json!({ "input": { "a": 1 } }))
        .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let id = headers["loom-run-id"].to_str().unwrap().to_owned();
    let body = within(response.text()).await.unwrap();
    let expected = format!(
        "id: 0\nevent: start\ndata: {{\"type\":\"start\",\"seq\":0,\"data\":{{\"run_id\":\"{id}\",\"actor\":\"echo\"}}}}\n\n\
         id: 1\nevent: complete\ndata: {{\"type\":\"complete\",\"seq\":1,\"data\":{{\"a\":1}}}}\n\n"
    );
    assert_eq!(body, expected);
}

#[tokio::test]
async fn resuming_at_any_point_loses_nothing_and_repeats_nothing() {
    let server = TestServer::default_config().await;
    let id = server
        .detached(json!({ "actor": "batch", "input": slow_batch(10, 5) }))
        .await;
    let path = format!("/v1/runs/{id}/stream");
    let all = seqs(&SseReader::new(server.get(&path).await).rest().await);
    let last = *all.last().unwrap();
    assert_eq!(all, (0..=last).collect::<Vec<_>>(), "gapless from 0");

    for cut in [0, 1, last / 2, last - 1] {
        // A reader that drops after `cut` and resumes from there, both ways.
        let resumed = seqs(&SseReader::new(server.resume(&path, cut).await).rest().await);
        assert_eq!(
            resumed,
            ((cut + 1)..=last).collect::<Vec<_>>(),
            "after {cut}"
        );
        let by_query = server.get(&format!("{path}?from={cut}")).await;
        let resumed = seqs(&SseReader::new(by_query).rest().await);
        assert_eq!(
            resumed,
            ((cut + 1)..=last).collect::<Vec<_>>(),
            "from={cut}"
        );
    }
    for at_or_past_the_end in [last, last + 5] {
        let response = server
            .get(&format!("{path}?from={at_or_past_the_end}"))
            .await;
        assert_eq!(response.status(), 204);
    }
    // A browser's `EventSource` opened on `?from=1` reconnects to the same URL with the last
    // id it saw: that id is where it goes on from, and past the end it is told to stop.
    let from_one = format!("{path}?from=1");
    let resumed = seqs(
        &SseReader::new(server.resume(&from_one, last - 1).await)
            .rest()
            .await,
    );
    assert_eq!(resumed, [last]);
    assert_eq!(server.resume(&from_one, last).await.status(), 204);
}

#[tokio::test]
async fn any_run_re_attaches_in_every_dialect_and_an_unknown_one_is_400() {
    let server = TestServer::default_config().await;
    let id = server
        .detached(json!({ "actor": "echo", "input": { "a": 1 } }))
        .await;
    let path = format!("/v1/runs/{id}/stream");
    for (format, ends_with) in [
        ("ag-ui", "RUN_FINISHED"),
        ("ai-sdk", "[DONE]"),
        ("openai-responses", "response.completed"),
    ] {
        let response = server.get(&format!("{path}?format={format}")).await;
        assert_eq!(response.status(), 200, "{format}");
        let ui_stream = response
            .headers()
            .get("x-vercel-ai-ui-message-stream")
            .cloned();
        assert_eq!(ui_stream.is_some(), format == "ai-sdk", "{format}");
        let body = within(response.text()).await.unwrap();
        assert!(body.contains(ends_with), "{format}: {body}");
        // The run has ended: after its last event there is nothing more (204, so a browser's
        // `EventSource` stops), and after the one before, just that last event.
        // Each event's number: its `id:`, or in Responses its `sequence_number`.
        let numbers = |body: &str| -> Vec<u64> {
            body.lines()
                .filter_map(|l| match l.strip_prefix("id: ") {
                    Some(id) => id.parse().ok(),
                    None => l
                        .strip_prefix("data: ")
                        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                        .and_then(|d| d["sequence_number"].as_u64()),
                })
                .collect()
        };
        let ids = numbers(&body);
        let last = *ids.last().expect("numbered events");
        assert_eq!(ids, (0..=last).collect::<Vec<_>>(), "{format}");
        let in_format = format!("{path}?format={format}");
        assert_eq!(
            server.resume(&in_format, last).await.status(),
            204,
            "{format}"
        );
        let tail = within(server.resume(&in_format, last - 1).await.text())
            .await
            .unwrap();
        assert_eq!(numbers(&tail), [last], "{format}: {tail}");
    }
    let response = server.get(&format!("{path}?format=nope")).await;
    assert_eq!(response.status(), 400);
    let body = within(response.text()).await.unwrap();
    assert!(body.contains("ai-sdk"), "{body}");
}

#[tokio::test]
async fn a_live_reader_dropped_midway_resumes_from_its_last_id() {
    let server = TestServer::default_config().await;
    let response = server
        .post(
            "/v1/actors/batch/stream",
            &json!({ "input": slow_batch(20, 10), "on_disconnect": "continue" }),
        )
        .await;
    let id = run_id_of(&response);
    let mut reader = SseReader::new(response);
    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(reader.next_chunk().await.unwrap());
    }
    drop(reader);
    let cut = seen.last().unwrap().id.unwrap();
    let resumed = server.resume(&format!("/v1/runs/{id}/stream"), cut).await;
    seen.extend(SseReader::new(resumed).rest().await);
    let seqs = seqs(&seen);
    let last = *seqs.last().unwrap();
    assert_eq!(seqs, (0..=last).collect::<Vec<_>>());
    assert_eq!(seen.last().unwrap().event.as_deref(), Some("complete"));
}

#[tokio::test]
async fn two_readers_see_the_same_chunks_in_the_same_order() {
    let server = TestServer::default_config().await;
    let id = server
        .detached(json!({ "actor": "batch", "input": slow_batch(10, 10) }))
        .await;
    let path = format!("/v1/runs/{id}/stream");
    let (a, b) = tokio::join!(
        async { SseReader::new(server.get(&path).await).rest().await },
        async { SseReader::new(server.get(&path).await).rest().await },
    );
    assert_eq!(a, b);
    assert_eq!(a.last().unwrap().event.as_deref(), Some("complete"));
}

#[tokio::test]
async fn a_cursor_the_log_no_longer_holds_is_410() {
    let server = TestServer::start(ServerConfig {
        log_limits: LogLimits {
            max_chunks: 4,
            max_bytes: usize::MAX,
            ..LogLimits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let id = server
        .detached(json!({ "actor": "batch", "input": slow_batch(10, 0) }))
        .await;
    let status = server.finished(&id).await;
    let last = status["last_seq"].as_u64().unwrap();
    let path = format!("/v1/runs/{id}/stream");
    for expired in [path.clone(), format!("{path}?from=0")] {
        let response = server.get(&expired).await;
        assert_eq!(response.status(), 410);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "cursor_expired");
    }
    let kept = server.get(&format!("{path}?from={}", last - 4)).await;
    let frames = SseReader::new(kept).rest().await;
    assert_eq!(seqs(&frames), ((last - 3)..=last).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_idle_stream_gets_keep_alive_comments() {
    let server = TestServer::start(ServerConfig {
        keep_alive: Duration::from_millis(50),
        ..ServerConfig::default()
    })
    .await;
    // One batch that takes far longer than the keep-alive interval.
    let response = server
        .post(
            "/v1/actors/batch/stream",
            &json!({ "input": slow_batch(1, 5_000) }),
        )
        .await;
    let mut body = response.bytes_stream();
    let mut seen = Vec::new();
    within(async {
        while !seen.windows(15).any(|w| w == b"\n\n: keep-alive\n") {
            let bytes = body.next().await.expect("more body").expect("bytes");
            seen.extend_from_slice(&bytes);
        }
    })
    .await;
    assert!(seen.starts_with(b"id: 0\nevent: start\n"));
    assert!(seen.ends_with(b": keep-alive\n\n"));
}

#[tokio::test]
async fn an_event_source_reconnecting_to_the_actor_route_never_reruns_it() {
    let server = TestServer::default_config().await;
    let response = server
        .get("/v1/actors/echo/stream?input=%7B%22q%22%3A2%7D&on_disconnect=continue")
        .await;
    assert_eq!(response.status(), 200);
    let frames = SseReader::new(response).rest().await;
    assert_eq!(
        frames.last().unwrap().data.as_ref().unwrap()["data"],
        json!({ "q": 2 })
    );

    let before: serde_json::Value = server.get("/v1/runs").await.json().await.unwrap();
    let reconnect = server
        .resume("/v1/actors/echo/stream?input=%7B%22q%22%3A2%7D", 1)
        .await;
    assert_eq!(reconnect.status(), 204);
    let after: serde_json::Value = server.get("/v1/runs").await.json().await.unwrap();
    assert_eq!(before["runs"].as_array().unwrap().len(), 1);
    assert_eq!(after, before, "no second run started");
}

#[tokio::test]
async fn with_an_api_key_every_route_but_healthz_and_the_console_needs_the_bearer_token() {
    let server = TestServer::start(ServerConfig {
        api_key: Some("s3cret".into()),
        ..ServerConfig::default()
    })
    .await;
    assert_eq!(server.get("/healthz").await.status(), 200);
    // The console's static files: the page asks for the key itself.
    for (path, kind, contains) in [
        ("/", "text/html", "<title>Loom console</title>"),
        ("/console.js", "text/javascript", "from \"/loom-client.js\""),
        ("/console.css", "text/css", "prefers-color-scheme: dark"),
        ("/loom-client.js", "text/javascript", "export class Loom"),
    ] {
        let response = server.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert!(response.text().await.unwrap().contains(contains), "{path}");
    }
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Bearer s3cre"),
        Some("Basic s3cret"),
        Some("Bearers3cret"),
    ] {
        let mut request = server.http.get(server.url("/v1/actors"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = within(request.send()).await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        // RFC 9110 §11.6.1: a 401 names the scheme it wants.
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let right = server
        .http
        .post(server.url("/v1/actors/echo/stream"))
        .header("authorization", "Bearer s3cret")
        .send();
    let response = within(right).await.unwrap();
    assert_eq!(response.status(), 200);
    let frames = SseReader::new(response).rest().await;
    assert_eq!(frames.last().unwrap().event.as_deref(), Some("complete"));
    let unauthorized_stream = server.post("/v1/actors/echo/stream", &json!({})).await;
    assert_eq!(unauthorized_stream.status(), 401);
    // The scheme's name is case-insensitive (RFC 9110 §11.1), and more spaces may follow it.
    for auth in ["bearer s3cret", "BEARER s3cret", "Bearer  s3cret"] {
        let request = server.http.get(server.url("/v1/actors"));
        let response = within(request.header("authorization", auth).send()).await;
        assert_eq!(response.unwrap().status(), 200, "{auth}");
    }
}

/// A server whose log keeps 100 chunks, with an actor `flood` that writes one token, waits
/// for the gate, then writes ~45 MB of tokens without pause: far more than loopback socket
/// buffers hold, so a reader that stops reading meanwhile is overtaken by the log's bound.
async fn flood_server() -> (TestServer, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let flood = {
        let gate = Arc::clone(&gate);
        actor_fn("flood", move |_input, _ctx| {
            let gate = Arc::clone(&gate);
            try_stream! {
                yield Output::token("first");
                let _open = gate.acquire_owned().await.map_err(|_| ActorError::internal("gate"))?;
                for _ in 1..100_000u64 {
                    yield Output::token("x".repeat(400));
                }
                yield Output::complete(json!(null));
            }
        })
    };
    let mut registry = Registry::with_builtins();
    registry.register(flood);
    let config = ServerConfig {
        log_limits: LogLimits {
            max_chunks: 100,
            max_bytes: usize::MAX,
            ..LogLimits::default()
        },
        ..ServerConfig::default()
    };
    (TestServer::start_with(registry, config).await, gate)
}

#[tokio::test]
async fn a_reader_overtaken_by_the_log_bound_is_disconnected_and_its_resume_is_410() {
    let (server, gate) = flood_server().await;
    let response = server.post("/v1/actors/flood/stream", &json!({})).await;
    let id = run_id_of(&response);
    let mut reader = SseReader::new(response);
    let mut frames = vec![reader.next_chunk().await.expect("start")];
    frames.push(reader.next_chunk().await.expect("the first data chunk"));
    gate.add_permits(1);
    // Stop reading until the run is over: the producer never waits for this reader.
    assert_eq!(server.finished(&id).await["status"], "complete");
    while let Some(frame) = reader.next_chunk().await {
        frames.push(frame);
    }
    let seqs = seqs(&frames);
    let last = *seqs.last().unwrap();
    assert_eq!(seqs, (0..=last).collect::<Vec<_>>(), "no jump");
    assert_ne!(frames.last().unwrap().event.as_deref(), Some("complete"));
    let resume = server
        .get(&format!("/v1/runs/{id}/stream?from={last}"))
        .await;
    assert_eq!(resume.status(), 410);
}

#[tokio::test]
async fn a_short_lived_token_from_post_tokens_authorizes_query_string_clients() {
    let server = TestServer::start(ServerConfig {
        api_key: Some("s3cret".into()),
        ..ServerConfig::default()
    })
    .await;
    assert_eq!(server.post("/v1/tokens", &json!({})).await.status(), 401);
    let issued = server
        .http
        .post(server.url("/v1/tokens"))
        .header("authorization", "Bearer s3cret")
        .send();
    let response = within(issued).await.unwrap();
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["expires_in"], 300);
    let token = body["token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()));

    // What a browser EventSource does: everything in the URL.
    let url = format!("/v1/actors/echo/stream?input=%7B%22k%22%3A1%7D&token={token}");
    let response = server.get(&url).await;
    assert_eq!(response.status(), 200);
    let id = run_id_of(&response);
    let frames = SseReader::new(response).rest().await;
    assert_eq!(
        frames.last().unwrap().data.as_ref().unwrap()["data"],
        json!({ "k": 1 })
    );
    let rejoin = server
        .get(&format!("/v1/runs/{id}/stream?from=0&token={token}"))
        .await;
    assert_eq!(SseReader::new(rejoin).rest().await.len(), 1);

    let wrong = server.get(&format!("/v1/runs/{id}?token={token}x")).await;
    assert_eq!(wrong.status(), 401);
    // A token is for what cannot send a header, which only reads: it neither starts nor
    // cancels runs, nor makes itself a successor.
    for (path, body) in [
        (format!("/v1/tokens?token={token}"), json!({})),
        (
            format!("/v1/runs?token={token}"),
            json!({ "actor": "echo" }),
        ),
    ] {
        assert_eq!(server.post(&path, &body).await.status(), 401, "{path}");
    }
    let delete = server.delete(&format!("/v1/runs/{id}?token={token}")).await;
    assert_eq!(delete.status(), 401);

    // Another server with the same key (behind one load balancer, or this one restarted)
    // takes the token; one with another key does not.
    for (key, status) in [("s3cret", 200), ("other", 401)] {
        let other = TestServer::start(ServerConfig {
            api_key: Some(key.into()),
            ..ServerConfig::default()
        })
        .await;
        let url = format!("/v1/actors/echo/stream?input=%7B%7D&token={token}");
        assert_eq!(other.get(&url).await.status(), status, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_answers_with_the_result_even_when_the_log_dropped_chunks_before_it_read_them() {
    let server = TestServer::start(ServerConfig {
        log_limits: LogLimits {
            max_chunks: 2,
            max_bytes: usize::MAX,
            ..LogLimits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    // Thousands of chunks at once: the log keeps two, so `/run`'s reader falls behind it.
    for _ in 0..5 {
        let response = server
            .post(
                "/v1/actors/batch/run",
                &json!({ "input": { "count": 5000, "batch_size": 1, "delay_ms": 0 } }),
            )
            .await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["processed"], 5000, "{body}");
    }
}

/// A finished response whose log kept only its last chunks (the log's bound) is still
/// retrieved and cancelled, whole: its text then comes from the terminal chunk's result, never
/// from what is left of its tokens, and never a `410` for a cursor the client never sent.
#[tokio::test]
async fn a_response_whose_log_dropped_its_start_is_retrieved_from_its_result() {
    let words = actor_fn("words", |_, _| {
        try_stream! {
            for _ in 0..200 {
                yield Output::token("w ");
            }
            yield Output::complete(json!({ "text": "two hundred words" }));
        }
    });
    let mut registry = Registry::with_builtins();
    registry.register(words);
    let config = ServerConfig {
        log_limits: LogLimits {
            max_chunks: 20,
            ..LogLimits::default()
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(registry, config).await;
    let created: serde_json::Value = server
        .post(
            "/v1/responses",
            &json!({ "model": "words", "input": "go", "background": true }),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("an id").to_owned();
    let run_id = id.strip_prefix("resp_").expect("resp_ id");
    assert_eq!(server.finished(run_id).await["status"], "complete");
    for response in [
        server.get(&format!("/v1/responses/{id}")).await,
        server
            .post(&format!("/v1/responses/{id}/cancel"), &json!({}))
            .await,
    ] {
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "completed", "{body}");
        assert_eq!(
            body["output"][0]["content"][0]["text"], "two hundred words",
            "{body}"
        );
    }
}

/// A chat stream whose run sends only what the dialect renders as nothing (progress) still
/// gets its keep-alives: they count from the last bytes written, not the last chunk.
#[tokio::test]
async fn a_dialect_stream_of_chunks_it_does_not_render_still_gets_keep_alives() {
    let ticker = actor_fn("ticker", |_, _| {
        try_stream! {
            for n in 1..=20u64 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                yield Output::progress(n, Some(20), "tick");
            }
            yield Output::complete(json!({ "text": "done" }));
        }
    });
    let mut registry = Registry::with_builtins();
    registry.register(ticker);
    let config = ServerConfig {
        keep_alive: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(registry, config).await;
    let response = server
        .post(
            "/v1/chat/completions",
            &json!({ "model": "ticker", "stream": true, "messages": [{ "role": "user", "content": "go" }] }),
        )
        .await;
    let body = within(response.bytes()).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(": keep-alive\n\n"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

/// A chat stream overtaken by the log's bound — the OpenAI SDKs cannot resume — ends with an
/// error saying so, never as if the answer were whole.
#[tokio::test]
async fn a_chat_stream_overtaken_by_the_log_bound_ends_with_an_error() {
    let (server, gate) = flood_server().await;
    let response = server
        .post(
            "/v1/chat/completions",
            &json!({ "model": "flood", "stream": true, "messages": [{ "role": "user", "content": "go" }] }),
        )
        .await;
    let id = run_id_of(&response);
    let mut reader = SseReader::new(response);
    let first = reader.next_chunk().await.expect("the role chunk");
    assert!(first.data.is_some());
    gate.add_permits(1);
    // It runs on past this reader (to its end, or until the reader's falling behind has
    // cancelled it): the reader is overtaken either way.
    let status = server.finished(&id).await;
    let ended = status["status"].as_str();
    assert!(matches!(ended, Some("complete" | "cancelled")), "{status}");
    let mut last = None;
    while let Some(frame) = reader.next_chunk().await {
        last = frame.data;
    }
    let last = last.expect("frames after the gate");
    let message = last["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("fell behind"), "{last}");
}

/// A cursor ahead of a running run's last chunk waits for the run to get there; one the run
/// never gets to ends the stream with nothing once the run ends.
#[tokio::test]
async fn a_cursor_ahead_of_a_running_run_waits_for_it() {
    let server = TestServer::default_config().await;
    let id = server
        .detached(json!({ "actor": "batch", "input": slow_batch(5, 300) }))
        .await;
    let ahead = server.get(&format!("/v1/runs/{id}/stream?from=3")).await;
    let beyond = server.get(&format!("/v1/runs/{id}/stream?from=500")).await;
    assert_eq!(
        (ahead.status().as_u16(), beyond.status().as_u16()),
        (200, 200)
    );
    let frames = SseReader::new(ahead).rest().await;
    assert_eq!(frames.first().and_then(|f| f.id), Some(4), "{frames:?}");
    assert_eq!(frames.last().unwrap().event.as_deref(), Some("complete"));
    assert!(SseReader::new(beyond).rest().await.is_empty());
}
