//! Every JSON route and every error status of DESIGN.md §3, over a real socket.

mod support;

use loom_server::ServerConfig;
use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn healthz_and_the_lists_of_actors_and_workflows() {
    let server = TestServer::default_config().await;
    let health: Value = server.get("/healthz").await.json().await.unwrap();
    assert_eq!(health, json!({ "status": "ok" }));

    let actors: Value = server.get("/v1/actors").await.json().await.unwrap();
    let batch = actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "batch")
        .expect("batch is listed");
    assert_eq!(batch["streams"], true);

    let workflows: Value = server.get("/v1/workflows").await.json().await.unwrap();
    assert_eq!(workflows["workflows"][0]["name"], "report");
    assert_eq!(
        workflows["workflows"][0]["steps"],
        json!(["process", "summary"])
    );
}

#[tokio::test]
async fn run_returns_the_result_and_the_actors_bad_input_is_422() {
    let server = TestServer::default_config().await;
    let response = server
        .post("/v1/actors/echo/run", &json!({ "input": { "x": [1, 2] } }))
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("loom-run-id"));
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "x": [1, 2] })
    );

    let response = server
        .post("/v1/actors/batch/run", &json!({ "input": { "bogus": 1 } }))
        .await;
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (422, "bad_input"));
}

/// A run stopped on purpose is no server fault: `/run` answers 409 `cancelled`. The OpenAI
/// routes tell the official SDKs, which send again on 409 and any 5xx, whether a failure may
/// pass (`x-should-retry`): a cancelled or refused run must not start again.
#[tokio::test]
async fn a_cancelled_run_is_409_and_openai_clients_are_told_what_not_to_retry() {
    let server = TestServer::default_config().await;
    let slow = json!({ "input": slow_batch(500, 20) });
    let run = server.post("/v1/actors/batch/run", &slow);
    let cancel = async {
        let id = within(async {
            loop {
                let runs: Value = server.get("/v1/runs").await.json().await.unwrap();
                if let Some(id) = runs["runs"][0]["run_id"].as_str() {
                    return id.to_owned();
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(server.delete(&format!("/v1/runs/{id}")).await.status(), 202);
    };
    let (response, ()) = tokio::join!(run, cancel);
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (409, "cancelled"));

    let refused = server
        .post(
            "/v1/chat/completions",
            &json!({ "model": "batch", "messages": [{ "role": "user", "content": "{\"bogus\": 1}" }] }),
        )
        .await;
    assert_eq!(refused.status(), 422);
    assert_eq!(refused.headers()["x-should-retry"], "false");
    let unknown = server
        .post(
            "/v1/chat/completions",
            &json!({ "model": "nobody", "messages": [{ "role": "user", "content": "hi" }] }),
        )
        .await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.headers()["x-should-retry"], "false");
}

#[tokio::test]
async fn bodies_are_json_whatever_their_content_type_and_empty_is_an_empty_envelope() {
    let server = TestServer::default_config().await;
    let form = server
        .http
        .post(server.url("/v1/actors/echo/run"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"input":{"a":1}}"#)
        .send();
    let response = within(form).await.unwrap();
    assert_eq!(response.json::<Value>().await.unwrap(), json!({ "a": 1 }));

    let empty = server.http.post(server.url("/v1/actors/echo/run")).send();
    let response = within(empty).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({}));
}

/// Regression tests for what the body-decoding property test found: a float lost its last
/// digit (serde_json parsed without `float_roundtrip`), and an explicit `null` input became
/// `{}`.
#[tokio::test]
async fn a_float_and_a_null_input_reach_the_actor_exactly() {
    let server = TestServer::default_config().await;
    for input in ["6.869164705784519e+297", "0.30000000000000004", "null"] {
        let request = server
            .http
            .post(server.url("/v1/actors/echo/run"))
            .body(format!(r#"{{"input":{input}}}"#))
            .send();
        let response = within(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert_eq!(text, input);
    }
}

#[tokio::test]
async fn an_unknown_envelope_field_or_bad_json_or_bad_timeout_is_400() {
    let server = TestServer::default_config().await;
    // A raw input posted without the envelope is caught, not run.
    let response = server
        .post("/v1/actors/echo/run", &json!({ "prompt": "hi" }))
        .await;
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));
    assert!(message.contains("prompt"), "{message}");
    // So is one that is an array, which serde would take as the envelope's fields in order.
    for (path, body) in [
        (
            "/v1/actors/echo/run",
            json!([{ "a": 1 }, "continue", "30s"]),
        ),
        ("/v1/runs", json!(["echo", null, { "a": 1 }, null])),
    ] {
        let (status, code, message) = error_of(server.post(path, &body).await).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{path}");
        assert!(message.contains("JSON object"), "{path}: {message}");
    }

    let not_json = server
        .http
        .post(server.url("/v1/actors/echo/stream"))
        .body("{nope")
        .send();
    let (status, code, _) = error_of(within(not_json).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));

    let response = server
        .post("/v1/actors/echo/stream", &json!({ "timeout": "soon" }))
        .await;
    assert_eq!(error_of(response).await.0, 400);

    let response = server.get("/v1/actors/echo/stream?input=%7Bnope").await;
    assert_eq!(error_of(response).await.0, 400);

    let response = server
        .post(
            "/v1/runs",
            &json!({ "actor": "echo", "workflow": "report" }),
        )
        .await;
    assert_eq!(error_of(response).await.0, 400);
}

#[tokio::test]
async fn unknown_actors_workflows_and_runs_are_404() {
    let server = TestServer::default_config().await;
    for response in [
        server.post("/v1/actors/nope/run", &json!({})).await,
        server.post("/v1/actors/nope/stream", &json!({})).await,
        server.post("/v1/workflows/nope/stream", &json!({})).await,
        server.post("/v1/runs", &json!({ "actor": "nope" })).await,
        server.get("/v1/runs/nope").await,
        server.get("/v1/runs/nope/stream").await,
        server.delete("/v1/runs/nope").await,
    ] {
        let (status, code, _) = error_of(response).await;
        assert_eq!((status, code.as_str()), (404, "not_found"));
    }
}

#[tokio::test]
async fn a_method_a_route_does_not_take_is_405_with_a_json_body() {
    let server = TestServer::default_config().await;
    for (method, path) in [
        (reqwest::Method::PUT, "/v1/runs/x"),
        (reqwest::Method::DELETE, "/v1/actors"),
        (reqwest::Method::GET, "/v1/actors/echo/run"),
    ] {
        let response = within(server.http.request(method.clone(), server.url(path)).send())
            .await
            .expect("a response");
        let (status, code, _) = error_of(response).await;
        assert_eq!(
            (status, code.as_str()),
            (405, "method_not_allowed"),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn an_openai_route_rejects_a_bad_body_or_query_in_openais_error_shape() {
    let server = TestServer::default_config().await;
    for path in ["/v1/chat/completions", "/v1/responses"] {
        let response = within(server.http.post(server.url(path)).body("{bad").send())
            .await
            .expect("a response");
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = within(response.json()).await.expect("an error body");
        assert_eq!(
            body["error"]["type"], "invalid_request_error",
            "{path}: {body}"
        );
        assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    // What Loom cannot honour is refused, not ignored: more than one choice, a conversation
    // kept on the server, no conversation at all.
    let user = json!([{ "role": "user", "content": "hi" }]);
    for (path, body, says) in [
        (
            "/v1/chat/completions",
            json!({ "model": "echo", "n": 2, "messages": user }),
            "one choice",
        ),
        (
            "/v1/chat/completions",
            json!({ "model": "chat-agent", "messages": [] }),
            "no messages",
        ),
        // A misspelt field would run without what it asked for (here, a limit).
        (
            "/v1/chat/completions",
            json!({ "model": "echo", "max_token": 5, "messages": user }),
            "Unrecognized request argument supplied: max_token",
        ),
        (
            "/v1/responses",
            json!({ "model": "echo", "input": "hi", "previous_response_id": "resp_x" }),
            "previous_response_id",
        ),
        (
            "/v1/responses",
            json!({ "model": "chat-agent", "input": [] }),
            "no messages",
        ),
        (
            "/v1/responses",
            json!({ "model": "echo", "input": "hi", "max_output_token": 5 }),
            "Unrecognized request argument supplied: max_output_token",
        ),
        (
            "/v1/responses",
            json!({ "model": "echo", "input": "hi", "conversation": "conv_1" }),
            "conversation",
        ),
        // A Chat Completions field Responses does not define.
        (
            "/v1/responses",
            json!({ "model": "echo", "input": "hi", "seed": 7 }),
            "Unrecognized request argument supplied: seed",
        ),
        // What the model would never see is refused, not dropped, whichever actor answers.
        (
            "/v1/chat/completions",
            json!({ "model": "echo", "messages": [{ "role": "user", "content": [
                { "type": "text", "text": "{}" },
                { "type": "image_url", "image_url": { "url": "https://example.com/cat.png" } },
            ] }] }),
            "content parts of type 'image_url' are not supported",
        ),
        (
            "/v1/responses",
            json!({ "model": "chat-agent", "input": [{ "role": "user", "content": [
                { "type": "input_text", "text": "what is this?" },
                { "type": "input_image", "image_url": "https://example.com/cat.png" },
            ] }] }),
            "content parts of type 'input_image' are not supported",
        ),
        (
            "/v1/responses",
            json!({ "model": "echo", "input": [{ "content": "hi" }] }),
            "no \"role\"",
        ),
    ] {
        let response = server.post(path, &body).await;
        assert_eq!(response.status(), 400, "{path} {body}");
        let error: Value = within(response.json()).await.expect("an error body");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{path} {body}: {error}");
    }
    // One of OpenAI's own fields that Loom has no use for is accepted.
    let one = json!({ "model": "echo", "n": 1, "store": false, "messages": user });
    assert_eq!(
        server.post("/v1/chat/completions", &one).await.status(),
        200
    );
    let one = json!({ "model": "echo", "input": "hi", "store": false, "truncation": "auto" });
    assert_eq!(server.post("/v1/responses", &one).await.status(), 200);
    // A field a client sends as `null` is unset, as OpenAI reads it.
    let unset =
        json!({ "model": "echo", "input": "hi", "previous_response_id": null, "top_p": null });
    assert_eq!(server.post("/v1/responses", &unset).await.status(), 200);
    // A query it cannot read too.
    let response = server.get("/v1/responses/resp_x?starting_after=x").await;
    assert_eq!(response.status(), 400);
    let body: Value = within(response.json()).await.expect("an error body");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    // A path parameter that is not UTF-8 once decoded.
    let response = server.get("/v1/responses/%FF").await;
    assert_eq!(response.status(), 400);
    let body: Value = within(response.json()).await.expect("an error body");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
}

#[tokio::test]
async fn a_path_parameter_that_is_not_utf8_is_a_400_in_loom_error_shape() {
    let server = TestServer::default_config().await;
    for path in [
        "/v1/runs/%FF",
        "/v1/runs/%FF/stream",
        "/v1/actors/%C3%28/stream",
    ] {
        let response = if path.starts_with("/v1/actors") {
            server.post(path, &serde_json::json!({})).await
        } else {
            server.get(path).await
        };
        let (status, code, _) = error_of(response).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{path}");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let server = TestServer::start(ServerConfig {
        body_limit: 1024,
        ..ServerConfig::default()
    })
    .await;
    let big = json!({ "input": { "text": "x".repeat(2048) } });
    let (status, code, _) = error_of(server.post("/v1/actors/echo/run", &big).await).await;
    assert_eq!((status, code.as_str()), (413, "too_large"));
    let small = json!({ "input": { "text": "x" } });
    assert_eq!(
        server.post("/v1/actors/echo/run", &small).await.status(),
        200
    );
}

#[tokio::test]
async fn a_workflow_input_failing_its_schema_is_422() {
    let server = TestServer::default_config().await;
    let response = server
        .post(
            "/v1/workflows/report/stream",
            &json!({ "input": { "count": "many" } }),
        )
        .await;
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (422, "bad_input"));
}

/// `workflows/<name>` goes wherever an actor type goes (DESIGN.md §3a) and is the workflow
/// itself, its input checked before it runs: on the actor routes and `POST /v1/runs` as in
/// the dialects.
#[tokio::test]
async fn a_workflow_named_as_an_actor_type_is_that_workflow() {
    let server = TestServer::default_config().await;
    let id = server
        .detached(json!({ "actor": "workflows/report", "input": { "count": 3 } }))
        .await;
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "complete", "{status}");
    assert_eq!(status["workflow"], "report");
    let ran = server
        .post(
            "/v1/actors/workflows%2Freport/run",
            &json!({ "input": { "count": 3 } }),
        )
        .await;
    assert_eq!(ran.status(), 200);
    for (path, body) in [
        (
            "/v1/runs",
            json!({ "actor": "workflows/report", "input": { "count": "many" } }),
        ),
        (
            "/v1/actors/workflows%2Freport/stream",
            json!({ "input": { "count": "many" } }),
        ),
    ] {
        let (status, code, _) = error_of(server.post(path, &body).await).await;
        assert_eq!((status, code.as_str()), (422, "bad_input"), "{path}");
    }
    let url = format!(
        "{}/v1/actors/workflows%2Freport/ws",
        server.base.replace("http", "ws")
    );
    assert!(within(tokio_tungstenite::connect_async(url)).await.is_ok());
}

#[tokio::test]
async fn detached_runs_are_created_listed_newest_first_and_show_their_status() {
    let server = TestServer::default_config().await;
    let response = server
        .post("/v1/runs", &json!({ "actor": "echo", "input": { "n": 1 } }))
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let first = body["run_id"].as_str().unwrap().to_owned();
    assert_eq!(body["stream_url"], format!("/v1/runs/{first}/stream"));
    let second = server
        .detached(json!({ "workflow": "report", "input": { "count": 3 } }))
        .await;

    let status = server.finished(&second).await;
    assert_eq!(status["status"], "complete");
    assert_eq!(status["workflow"], "report");
    assert_eq!(status["actor"], Value::Null);
    assert_eq!(status["error_code"], Value::Null);
    assert!(status["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(status["last_seq"].as_u64().unwrap() > 2);

    let status = server.finished(&first).await;
    assert_eq!(status["actor"], "echo");
    assert_eq!(status["last_seq"], 1);

    let runs: Value = server.get("/v1/runs").await.json().await.unwrap();
    let ids: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
}

#[tokio::test]
async fn delete_cancels_a_run_with_a_terminal_in_its_log_and_is_idempotent() {
    let server = TestServer::default_config().await;
    let id = server
        .detached(json!({ "actor": "batch", "input": slow_batch(1000, 50) }))
        .await;
    for _ in 0..2 {
        let response = server.delete(&format!("/v1/runs/{id}")).await;
        assert_eq!(response.status(), 202);
        // The answer comes once the run has ended, with how it ended.
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "cancelled", "{answer}");
    }
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "cancelled");
    assert_eq!(status["error_code"], "cancelled");

    let response = server.get(&format!("/v1/runs/{id}/stream")).await;
    let frames = SseReader::new(response).rest().await;
    let last = frames.last().expect("the log has the run");
    assert_eq!(last.event.as_deref(), Some("error"));
    assert_eq!(last.data.as_ref().unwrap()["error"]["code"], "cancelled");
    assert_eq!(server.delete(&format!("/v1/runs/{id}")).await.status(), 202);
}

#[tokio::test]
async fn past_the_stream_cap_a_stream_is_429_with_retry_after() {
    let server = TestServer::start(ServerConfig {
        max_streams: 1,
        ..ServerConfig::default()
    })
    .await;
    let input = json!({ "input": slow_batch(1000, 50) });
    let open = server.post("/v1/actors/batch/stream", &input).await;
    assert_eq!(open.status(), 200);
    let mut reader = SseReader::new(open);
    reader.next_chunk().await.expect("the first stream is open");

    let response = server.post("/v1/actors/batch/stream", &input).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (429, "too_many_streams"));
}

#[tokio::test]
async fn the_envelopes_timeout_is_the_runs_deadline() {
    let server = TestServer::default_config().await;
    // As text with a unit, or as a JSON number of seconds.
    for timeout in [json!("100ms"), json!(0.1)] {
        let body = json!({ "input": slow_batch(1000, 20), "timeout": timeout });
        let (status, code, _) = error_of(server.post("/v1/actors/batch/run", &body).await).await;
        assert_eq!((status, code.as_str()), (504, "timeout"), "{timeout}");
    }
    let body = json!({ "actor": "batch", "input": slow_batch(1000, 20), "timeout": 0.1 });
    let id = server.detached(body).await;
    let run = server.finished(&id).await;
    assert_eq!(run["error_code"], "timeout", "{run}");
    // Anything else is named for what it should be.
    let body = json!({ "timeout": true });
    let (status, _, message) = error_of(server.post("/v1/actors/echo/run", &body).await).await;
    assert_eq!(status, 400);
    assert!(message.contains("a number of seconds"), "{message}");
}

#[tokio::test]
async fn metrics_count_chunks_resumes_and_outcomes() {
    let server = TestServer::default_config().await;
    let response = server.post("/v1/actors/echo/stream", &json!({})).await;
    let id = run_id_of(&response);
    assert_eq!(SseReader::new(response).rest().await.len(), 2);
    let resumed = server.get(&format!("/v1/runs/{id}/stream?from=0")).await;
    assert_eq!(SseReader::new(resumed).rest().await.len(), 1);
    let cancelled = server
        .detached(json!({ "actor": "batch", "input": slow_batch(1000, 50) }))
        .await;
    server.delete(&format!("/v1/runs/{cancelled}")).await;
    server.finished(&cancelled).await;

    // A stream's place under the cap is freed when the server drops the finished body, which
    // may come just after the client read its end.
    let text = within(async {
        loop {
            let response = server.get("/metrics").await;
            assert!(response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"));
            let text = response.text().await.unwrap();
            if text.lines().any(|l| l == "loom_open_streams 0") {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    for line in [
        "loom_active_runs 0",
        "loom_chunks_sent_total 3",
        "loom_resumes_total 1",
        "loom_slow_readers_dropped_total 0",
        "loom_runs_finished_total{outcome=\"cancelled\"} 1",
        "loom_runs_finished_total{outcome=\"complete\"} 1",
        "loom_run_duration_seconds_count 2",
        "loom_time_to_first_chunk_seconds_count 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
}

#[tokio::test]
async fn cors_is_off_by_default_and_answers_only_the_configured_origins() {
    let preflight = |server: &TestServer, origin: &str| {
        server
            .http
            .request(
                reqwest::Method::OPTIONS,
                server.url("/v1/actors/echo/stream"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            // What the openai SDK sends from a browser, besides the usual ones.
            .header(
                "access-control-request-headers",
                "authorization,content-type,traceparent,x-stainless-os",
            )
            .send()
    };
    let off = TestServer::default_config().await;
    let response = within(preflight(&off, "https://app.example"))
        .await
        .unwrap();
    assert!(!response
        .headers()
        .contains_key("access-control-allow-origin"));

    let on = TestServer::start(ServerConfig {
        cors_origins: vec!["https://app.example".into()],
        ..ServerConfig::default()
    })
    .await;
    let response = within(preflight(&on, "https://app.example")).await.unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = response.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(
        allowed.contains("traceparent") && allowed.contains("x-stainless-os"),
        "{allowed}"
    );
    let other = within(preflight(&on, "https://evil.example"))
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    let stream = on
        .http
        .post(on.url("/v1/actors/echo/stream"))
        .header("origin", "https://app.example")
        .send();
    let response = within(stream).await.unwrap();
    assert_eq!(
        response.headers()["access-control-expose-headers"],
        "loom-run-id,retry-after"
    );
}

#[tokio::test]
async fn once_shutting_down_new_runs_are_503_unavailable_and_running_ones_end_cancelled() {
    let server = TestServer::default_config().await;
    let id = server
        .detached(json!({ "actor": "batch", "input": slow_batch(1000, 20) }))
        .await;
    // The shutdown as `serve` begins it, with the listener still answering.
    server.state.shutdown();
    let refused = server
        .post("/v1/actors/echo/stream", &json!({ "input": {} }))
        .await;
    let (status, code, _) = error_of(refused).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    let (status, code, _) =
        error_of(server.post("/v1/runs", &json!({ "actor": "echo" })).await).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    let ended = server.finished(&id).await;
    assert_eq!(ended["status"], "cancelled");
}

#[tokio::test]
async fn hostile_bodies_are_400_and_the_server_goes_on() {
    let server = TestServer::default_config().await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let invalid_utf8: &[u8] = b"{\"input\": \"\xff\xfe\"}";
    let bodies: Vec<Vec<u8>> = vec![
        format!(r#"{{"input": {deep}}}"#).into_bytes(),
        invalid_utf8.to_vec(),
        br#"{"input": {"a": 1"#.to_vec(),
    ];
    for body in bodies {
        let response = within(
            server
                .http
                .post(server.url("/v1/actors/echo/stream"))
                .body(body)
                .send(),
        )
        .await
        .unwrap();
        let (status, code, _) = error_of(response).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"));
    }
    // Names that try to escape the key prefix are unknown actors, runs and workflows.
    for name in ["..", "a:b", "%2A", "%7Bx%7D", "a%20b", &"n".repeat(10_000)] {
        for path in [
            format!("/v1/actors/{name}/run"),
            format!("/v1/workflows/{name}/stream"),
        ] {
            let (status, code, _) = error_of(server.post(&path, &json!({})).await).await;
            assert_eq!((status, code.as_str()), (404, "not_found"), "{path}");
        }
        let (status, _, _) = error_of(server.get(&format!("/v1/runs/{name}")).await).await;
        assert_eq!(status, 404, "{name}");
    }
    assert_eq!(server.get("/healthz").await.status(), 200);
}

/// A page of another site cannot make a browser use the server: what a browser says it sends
/// for another site (`Sec-Fetch-Site`, or an `Origin` not the server's own) is `403` unless
/// `--cors-origin` lets that origin in, WebSocket handshakes too; and a server on loopback
/// answers only to loopback host names (DNS rebinding). Clients that are not browsers, and the
/// server's own pages, are not concerned.
#[tokio::test]
async fn pages_of_other_sites_and_foreign_host_names_are_refused() {
    let server = TestServer::default_config().await;
    let own = server.base.clone();
    let port = own.rsplit(':').next().unwrap().to_owned();
    let post = |headers: Vec<(&'static str, String)>| {
        let mut request = server
            .http
            .post(server.url("/v1/actors/echo/run"))
            .json(&json!({ "input": 1 }));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let cases = [
        (vec![], 200),
        (vec![("sec-fetch-site", "same-origin".to_owned())], 200),
        (vec![("sec-fetch-site", "none".to_owned())], 200),
        (vec![("origin", own.clone())], 200),
        (vec![("sec-fetch-site", "cross-site".to_owned())], 403),
        (
            vec![
                ("sec-fetch-site", "same-site".to_owned()),
                ("origin", "http://localhost:3000".to_owned()),
            ],
            403,
        ),
        (vec![("origin", "https://evil.example".to_owned())], 403),
        (vec![("host", format!("attacker.example:{port}"))], 403),
        (vec![("host", format!("localhost:{port}"))], 200),
    ];
    for (headers, status) in cases {
        let response = within(post(headers.clone())).await.unwrap();
        assert_eq!(response.status(), status, "{headers:?}");
        if status == 403 {
            let (_, code, _) = error_of(response).await;
            assert_eq!(code, "forbidden", "{headers:?}");
        }
    }
    // The page's origin let in, and a proxy's host name.
    let open = TestServer::start(ServerConfig {
        cors_origins: vec!["https://app.example".into()],
        allowed_hosts: vec!["loom.example".into()],
        ..ServerConfig::default()
    })
    .await;
    for host in ["loom.example", "loom.example:443", "app.example"] {
        let proxied = open
            .http
            .get(open.url("/healthz"))
            .header("host", host)
            .send();
        assert_eq!(within(proxied).await.unwrap().status(), 200, "{host}");
    }
    let allowed = open
        .http
        .post(open.url("/v1/actors/echo/run"))
        .header("sec-fetch-site", "cross-site")
        .header("origin", "https://app.example")
        .json(&json!({ "input": 1 }))
        .send();
    assert_eq!(within(allowed).await.unwrap().status(), 200);
    // A WebSocket, which CORS does not cover.
    let url = format!("{}/v1/actors/echo/ws", server.base.replace("http", "ws"));
    let mut handshake =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        )
        .unwrap();
    handshake
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let refused = within(tokio_tungstenite::connect_async(handshake)).await;
    assert!(refused.is_err(), "the handshake is refused");
    // The console cannot be framed by another page.
    let page = server.get("/").await;
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    // Two Host headers: refused outright, not judged by the first one.
    let mut raw = tokio::net::TcpStream::connect(own.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n\
         Connection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut raw, request.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    within(tokio::io::AsyncReadExt::read_to_string(
        &mut raw,
        &mut answer,
    ))
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("more than one Host header"), "{answer}");
}

/// A client that opens a connection and never finishes its request's headers, or never
/// sends a byte, loses the connection after the header timeout; a whole request on the next
/// connection is served.
#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let server = TestServer::start(ServerConfig {
        header_timeout: std::time::Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    // Half a request, and nothing at all.
    for sent in [&b"GET /healthz HTTP/1.1\r\nHost: 127"[..], b""] {
        let mut raw = tokio::net::TcpStream::connect(&address).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut raw, sent)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        // Closed by the server: the read ends (a reset is an end too), well before `within`'s
        // bound.
        let _ = within(tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut rest)).await;
        assert!(started.elapsed() >= std::time::Duration::from_millis(250));
        assert!(
            !String::from_utf8_lossy(&rest).contains("200 OK"),
            "{rest:?}"
        );
    }
    assert_eq!(server.get("/healthz").await.status(), 200);
}

/// A body that stops arriving is answered `408 request_timeout` after the header timeout, and
/// does not hold a shutdown: regression test for the half-sent body that kept `SIGTERM`
/// waiting for ever.
#[tokio::test]
async fn a_body_that_stops_arriving_is_408_and_does_not_hold_a_shutdown() {
    let mut server = TestServer::start(ServerConfig {
        header_timeout: std::time::Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut raw = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head =
        "POST /v1/actors/echo/run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n";
    let partial = format!("{head}{{\"input\":");
    tokio::io::AsyncWriteExt::write_all(&mut raw, partial.as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let read = within(tokio::io::AsyncReadExt::read(&mut raw, &mut answer)).await;
    let answer = String::from_utf8_lossy(&answer[..read.unwrap()]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // A body declared past the limit is 413 at once, not a wait for bytes it cannot take.
    let mut raw = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head =
        "POST /v1/actors/echo/run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000000\r\n\r\n{";
    tokio::io::AsyncWriteExt::write_all(&mut raw, head.as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let started = std::time::Instant::now();
    let read = within(tokio::io::AsyncReadExt::read(&mut raw, &mut answer)).await;
    let answer = String::from_utf8_lossy(&answer[..read.unwrap()]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(300),
        "before the timeout"
    );

    // Half a body again, then the shutdown: it ends within the timeout.
    let mut raw = tokio::net::TcpStream::connect(&address).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, partial.as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    server.shut_down().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

/// Runs running at once are capped like streams: past `max_runs` a new one is `429
/// too_many_runs` with `Retry-After`, and a run that ends gives its place back.
#[tokio::test]
async fn past_the_run_cap_a_run_is_429_until_one_ends() {
    let server = TestServer::start(ServerConfig {
        max_runs: 1,
        ..ServerConfig::default()
    })
    .await;
    let id = server
        .detached(json!({ "actor": "batch", "input": slow_batch(1000, 20) }))
        .await;
    let refused = server.post("/v1/runs", &json!({ "actor": "echo" })).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let (status, code, _) = error_of(refused).await;
    assert_eq!((status, code.as_str()), (429, "too_many_runs"));
    assert_eq!(server.delete(&format!("/v1/runs/{id}")).await.status(), 202);
    assert_eq!(server.finished(&id).await["status"], "cancelled");
    within(async {
        while server
            .post("/v1/runs", &json!({ "actor": "echo" }))
            .await
            .status()
            != 201
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A `HEAD` of the `EventSource` route (what link checkers and prefetchers send) starts no
/// run: `405`, where the `GET` it would otherwise be answered as starts one.
#[tokio::test]
async fn a_head_of_the_event_source_route_starts_no_run() {
    let server = TestServer::default_config().await;
    let head = server
        .http
        .head(server.url("/v1/actors/echo/stream?input=%7B%7D"))
        .send();
    let response = within(head).await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET,POST");
    let runs: Value = within(server.get("/v1/runs").await.json()).await.unwrap();
    assert_eq!(runs, json!({ "runs": [] }), "no run started");
}
