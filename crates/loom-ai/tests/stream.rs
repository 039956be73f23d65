//! `stream_completion` against a fake OpenAI-compatible server speaking the exact wire
//! format, on the cases where servers differ or streams get awkward.

mod support;

use std::time::Duration;

use loom_ai::{AiError, CompletionRequest, FinishReason, TokenEvent, ToolCallDelta, Usage};
use support::wire::{self, frame, DONE};
use support::{drain, drain_prompt, FakeServer, RawServer, Reply};

fn usage(prompt: u64, completion: u64) -> TokenEvent {
    TokenEvent::Usage(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
    })
}

#[tokio::test]
async fn an_openai_stream_yields_each_token_then_finish_then_usage() {
    let body = wire::openai_stream(&["Once", " upon", " a", " time", "."], Some((9, 5)));
    let server = FakeServer::start(vec![Reply::sse(body)]).await;
    let stream = server
        .service()
        .stream_completion(CompletionRequest::prompt("tell me"));
    let mut texts = Vec::new();
    let mut others = Vec::new();
    let mut stream = stream;
    while let Some(item) = support::within(futures::StreamExt::next(&mut stream)).await {
        match item.expect("no error") {
            TokenEvent::Text(t) => texts.push(t),
            other => others.push(other),
        }
    }
    // The role-only first chunk and the empty finish delta yield no text.
    assert_eq!(texts, ["Once", " upon", " a", " time", "."]);
    assert_eq!(
        others,
        [TokenEvent::Finish(FinishReason::Stop), usage(9, 5)]
    );
}

#[tokio::test]
async fn the_request_is_a_streaming_chat_completion_with_usage_asked_for() {
    let server = FakeServer::start(vec![Reply::sse(wire::openai_stream(&["ok"], None))]).await;
    let ai = loom_ai::AiService::new(server.config().with_api_key("sk-test-123")).expect("ai");
    let request = CompletionRequest::prompt("hello")
        .with_system("be brief")
        .with_model("llama3.2")
        .with_temperature(0.25)
        .with_max_tokens(42);
    let (text, _, error) = drain(ai.stream_completion(request)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "ok");
    let sent = &server.requests()[0];
    assert_eq!(sent.authorization.as_deref(), Some("Bearer sk-test-123"));
    let body = &sent.body;
    assert_eq!(body["model"], "llama3.2");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["temperature"], 0.25);
    assert_eq!(body["max_tokens"], 42);
    assert_eq!(
        body["messages"],
        serde_json::json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"}
        ])
    );
}

#[tokio::test]
async fn the_default_model_is_used_and_unset_options_are_not_sent() {
    let server = FakeServer::start(vec![Reply::sse(wire::openai_stream(&["ok"], None))]).await;
    let (_, _, error) = drain_prompt(server.service()).await;
    assert!(error.is_none());
    let body = &server.requests()[0].body;
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body.get("temperature").is_none());
    assert!(body.get("max_tokens").is_none());
    assert!(server.requests()[0].authorization.is_none());
}

#[tokio::test]
async fn no_usage_from_the_server_means_no_usage_event_not_zeros() {
    let server = FakeServer::start(vec![Reply::sse(wire::openai_stream(&["a", "b"], None))]).await;
    let (text, events, error) = drain_prompt(server.service()).await;
    assert!(error.is_none());
    assert_eq!(text, "ab");
    assert_eq!(events, [TokenEvent::Finish(FinishReason::Stop)]);
}

#[tokio::test]
async fn every_finish_reason_is_reported() {
    for (wire_reason, reason) in [
        ("stop", FinishReason::Stop),
        ("length", FinishReason::Length),
        ("tool_calls", FinishReason::ToolCalls),
        ("content_filter", FinishReason::ContentFilter),
        ("eos", FinishReason::Other("eos".into())),
    ] {
        let body = [
            frame(&wire::role_chunk()),
            frame(&wire::text_chunk("x")),
            frame(&wire::finish_chunk(wire_reason)),
            DONE.to_owned(),
        ]
        .concat();
        let server = FakeServer::start(vec![Reply::sse(body)]).await;
        let (_, events, error) = drain_prompt(server.service()).await;
        assert!(error.is_none());
        assert_eq!(events, [TokenEvent::Finish(reason)], "{wire_reason}");
    }
}

#[tokio::test]
async fn tool_call_deltas_come_out_as_their_own_events() {
    let body = [
        frame(&wire::role_chunk()),
        frame(&wire::tool_chunk(
            0,
            Some("call_1"),
            Some("get_weather"),
            "",
        )),
        frame(&wire::tool_chunk(0, None, None, "{\"city\":")),
        frame(&wire::tool_chunk(0, None, None, "\"Paris\"}")),
        frame(&wire::finish_chunk("tool_calls")),
        DONE.to_owned(),
    ]
    .concat();
    let server = FakeServer::start(vec![Reply::sse(body)]).await;
    let ai = server.service();
    let (text, events, error) =
        drain(ai.stream_completion(CompletionRequest::prompt("weather?"))).await;
    assert!(error.is_none());
    assert_eq!(text, "");
    assert_eq!(
        events[0],
        TokenEvent::ToolCall(ToolCallDelta {
            index: 0,
            id: Some("call_1".into()),
            name: Some("get_weather".into()),
            arguments: String::new(),
        })
    );
    assert_eq!(events.len(), 4);
    let completion = ai
        .complete(CompletionRequest::prompt("weather?"))
        .await
        .expect("complete");
    assert_eq!(completion.tool_calls.len(), 1);
    assert_eq!(completion.tool_calls[0].name, "get_weather");
    assert_eq!(completion.tool_calls[0].arguments, "{\"city\":\"Paris\"}");
    assert_eq!(completion.finish_reason, Some(FinishReason::ToolCalls));
}

#[tokio::test]
async fn servers_differences_are_tolerated() {
    // No id/created/model, unknown fields, `choices: null`, empty deltas, usage on every
    // chunk (the last wins), finish_reason repeated (the first wins), keep-alive comments,
    // an `event:` line, CRLF line endings.
    let body = concat!(
        ": ping\r\n\r\n",
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":0,\"total_tokens\":3},\"x_groq\":{\"id\":\"req_1\"}}\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{}}]}\r\n\r\n",
        "event: message\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\",\"reasoning_content\":null},\"extra\":1}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\r\n\r\n",
        "data: {\"choices\":null}\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\r\n\r\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\r\n\r\n",
        "data: [DONE]\r\n\r\n",
    );
    let server = FakeServer::start(vec![Reply::sse(body)]).await;
    let (text, events, error) = drain_prompt(server.service()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "Hi");
    assert_eq!(
        events,
        [TokenEvent::Finish(FinishReason::Stop), usage(3, 2)]
    );
}

#[tokio::test]
async fn multi_line_data_is_one_chunk() {
    let body = "data: {\"choices\":[{\"delta\":\ndata: {\"content\":\"joined\"}}]}\n\n\
                data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    let server = FakeServer::start(vec![Reply::sse(body)]).await;
    let (text, _, error) = drain_prompt(server.service()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "joined");
}

#[tokio::test]
async fn events_split_across_reads_even_inside_a_character_arrive_intact() {
    let tokens = ["Zürich", " 東京", " 🚀", " done"];
    let body = wire::openai_stream(&tokens, Some((2, 4)));
    let bytes = body.as_bytes();
    // Cut inside every multi-byte character and inside "data:" and "\n\n".
    let mut cuts: Vec<usize> = body
        .char_indices()
        .filter(|(_, c)| c.len_utf8() > 1)
        .map(|(i, _)| i + 1)
        .collect();
    cuts.extend(body.match_indices("data:").map(|(i, _)| i + 3));
    cuts.extend(body.match_indices("\n\n").map(|(i, _)| i + 1));
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        pieces.push(bytes[start..cut].to_vec());
        start = cut;
    }
    pieces.push(bytes[start..].to_vec());
    let server = RawServer::start(pieces, Duration::from_millis(2)).await;
    let (text, events, error) = drain_prompt(server.service()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, tokens.concat());
    assert_eq!(
        events,
        [TokenEvent::Finish(FinishReason::Stop), usage(2, 4)]
    );
}

#[tokio::test]
async fn a_cr_at_the_end_of_one_read_and_lf_at_the_start_of_the_next_is_one_line_end() {
    // Were the "\n" opening a read taken for a blank line, the half JSON before it would be
    // dispatched alone and fail to decode.
    let pieces = vec![
        b"data: {\"choices\":[{\"delta\":\r".to_vec(),
        b"\ndata: {\"content\":\"a\"}}]}\r\n\r".to_vec(),
        format!("\ndata: {}\r\r", wire::finish_chunk("stop")).into_bytes(),
        b"data: [DONE]\r".to_vec(),
        b"\n\r\n".to_vec(),
    ];
    let server = RawServer::start(pieces, Duration::from_millis(5)).await;
    let (text, events, error) = drain_prompt(server.service()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "a");
    assert_eq!(events, [TokenEvent::Finish(FinishReason::Stop)]);
}

#[tokio::test]
async fn an_error_object_inside_the_stream_ends_it_with_the_servers_message() {
    let body = [
        frame(&wire::role_chunk()),
        frame(&wire::text_chunk("partial")),
        frame(r#"{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}"#),
        frame(&wire::text_chunk("never")),
    ]
    .concat();
    let server = FakeServer::start(vec![Reply::sse(body)]).await;
    let (text, _, error) = drain_prompt(server.service()).await;
    assert_eq!(text, "partial");
    let error = error.expect("an error");
    assert!(matches!(error, AiError::Stream { .. }), "{error:?}");
    assert!(error.to_string().contains("The server had an error"));
    assert_eq!(error.code(), loom_core::ErrorCode::Upstream);
}

#[tokio::test]
async fn an_error_event_inside_the_stream_ends_it() {
    let body = [
        frame(&wire::text_chunk("partial")),
        "event: error\ndata: {\"message\":\"model overloaded\"}\n\n".to_owned(),
    ]
    .concat();
    let server = FakeServer::start(vec![Reply::sse(body)]).await;
    let (text, _, error) = drain_prompt(server.service()).await;
    assert_eq!(text, "partial");
    assert!(error
        .expect("error")
        .to_string()
        .contains("model overloaded"));
}

#[tokio::test]
async fn a_connection_that_ends_without_done_or_finish_is_an_upstream_error_after_the_tokens() {
    let body = [
        frame(&wire::role_chunk()),
        frame(&wire::text_chunk("cut")),
        frame(&wire::text_chunk(" off")),
        "data: {\"choices\":[{\"delta\":{\"content\":\" mid".to_owned(),
    ]
    .concat();
    let server = RawServer::start(vec![body.into_bytes()], Duration::ZERO).await;
    let (text, _, error) = drain_prompt(server.service()).await;
    assert_eq!(text, "cut off");
    let error = error.expect("an error");
    assert!(matches!(error, AiError::Interrupted { .. }), "{error:?}");
    assert_eq!(error.code(), loom_core::ErrorCode::Upstream);
}

#[tokio::test]
async fn a_connection_that_ends_after_finish_but_without_done_is_complete() {
    let body = [
        frame(&wire::text_chunk("all")),
        frame(&wire::finish_chunk("stop")),
        frame(&wire::usage_chunk(1, 1)),
    ]
    .concat();
    let server = RawServer::start(vec![body.into_bytes()], Duration::ZERO).await;
    let (text, events, error) = drain_prompt(server.service()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "all");
    assert_eq!(
        events,
        [TokenEvent::Finish(FinishReason::Stop), usage(1, 1)]
    );
}

/// A chunked body cut after the finish reason (no terminating chunk, no `[DONE]`, the usage
/// event half sent): the text is whole, so the answer is complete, without the usage.
#[tokio::test]
async fn a_chunked_body_cut_after_the_finish_reason_is_complete() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        // The whole request (head and body) is read first: closing with some of it unread
        // would reset the connection instead of ending it.
        let mut request = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = socket.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    break;
                }
            }
        }
        let events = [
            frame(&wire::text_chunk("all")),
            frame(&wire::finish_chunk("stop")),
            "data: {\"choices\":[],\"usa".to_owned(),
        ]
        .concat();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
             transfer-encoding: chunked\r\n\r\n{:x}\r\n{events}\r\n",
            events.len()
        );
        let _ = socket.write_all(response.as_bytes()).await;
        // Closed without the last chunk (`0\r\n\r\n`): the body is cut.
    });
    let service = loom_ai::AiService::new(
        loom_ai::AiConfig::openai_compatible(format!("http://{addr}/v1"))
            .with_retry(loom_ai::RetryPolicy::none()),
    )
    .expect("service");
    let (text, events, error) = drain_prompt(service).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "all");
    assert_eq!(events, [TokenEvent::Finish(FinishReason::Stop)]);
}

/// After the finish reason and the usage nothing but `[DONE]` can come: a server that keeps
/// the connection open without sending it is not waited for (it sends keep-alives here, so
/// no idle timeout would ever end the wait).
#[tokio::test]
async fn a_stream_with_finish_and_usage_ends_without_waiting_for_done() {
    let server = FakeServer::start(vec![Reply::hold_open(vec![
        frame(&wire::text_chunk("all")),
        frame(&wire::finish_chunk("stop")),
        frame(&wire::usage_chunk(2, 1)),
    ])])
    .await;
    let (text, events, error) = drain_prompt(server.service()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "all");
    assert_eq!(
        events,
        [TokenEvent::Finish(FinishReason::Stop), usage(2, 1)]
    );
}

#[tokio::test]
async fn a_body_that_is_not_sse_json_is_a_decode_error() {
    let server = FakeServer::start(vec![Reply::sse("data: <html>oops</html>\n\n")]).await;
    let (_, _, error) = drain_prompt(server.service()).await;
    let error = error.expect("error");
    assert!(matches!(error, AiError::Decode { .. }), "{error:?}");
    assert!(error.to_string().contains("<html>"));
}

#[tokio::test]
async fn an_empty_request_is_refused_before_sending() {
    let server = FakeServer::start(vec![Reply::sse(DONE)]).await;
    let (_, _, error) = drain(
        server
            .service()
            .stream_completion(CompletionRequest::messages(Vec::new())),
    )
    .await;
    let error = error.expect("error");
    assert_eq!(error.code(), loom_core::ErrorCode::BadInput);
    assert!(server.requests().is_empty());
}

#[test]
fn the_token_stream_is_send_and_static() {
    fn assert_send_static<T: Send + 'static>(_: &T) {}
    let ai = loom_ai::AiService::offline();
    let stream = ai.stream_completion(CompletionRequest::prompt("x"));
    assert_send_static(&stream);
    assert_send_static(&ai);
}

#[tokio::test]
async fn a_partial_usage_is_unknown_not_zero_and_a_missing_total_is_the_sum() {
    let finish = wire::finish_chunk("stop");
    let cases = [
        (r#"{"prompt_tokens":3}"#, None),
        (r#"{"prompt_tokens":3,"completion_tokens":null}"#, None),
        (r#"{}"#, None),
        (
            r#"{"prompt_tokens":3,"completion_tokens":2}"#,
            Some(usage(3, 2)),
        ),
    ];
    for (reported, expected) in cases {
        let body = format!(
            "data: {}\n\ndata: {finish}\n\ndata: {{\"choices\":[],\"usage\":{reported}}}\n\ndata: [DONE]\n\n",
            wire::text_chunk("ok")
        );
        let server = FakeServer::start(vec![Reply::sse(body)]).await;
        let (text, events, error) = drain_prompt(server.service()).await;
        assert!(error.is_none(), "{reported}: {error:?}");
        assert_eq!(text, "ok");
        let mut want = vec![TokenEvent::Finish(FinishReason::Stop)];
        want.extend(expected);
        assert_eq!(events, want, "{reported}");
    }
}
