//! A tool loop through `chat-agent` against the fake OpenAI-compatible server: turn 1 offers
//! `tools` and gets tool-call deltas back, turn 2 carries the assistant's `tool_calls` and the
//! tool's result and gets the answer. Both requests are checked in the OpenAI wire shape.

mod support;

use loom_core::{ChunkType, StreamChunk};
use serde_json::{json, Value};
use support::wire::{self, frame, DONE};
use support::{chat_runtime, run_chat, FakeServer, Reply};

fn weather_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": false
            },
            "strict": true
        }
    })
}

/// Turn 1's reply as OpenAI streams a forced call: the role, `content` null and the call's
/// id and name in the first chunk, then the arguments in pieces, then the finish reason.
fn tool_call_reply() -> String {
    let first = r#"{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_Wx1","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null}"#;
    [
        frame(&wire::chunk(first, None)),
        frame(&wire::tool_chunk(0, None, None, "{\"city\":")),
        frame(&wire::tool_chunk(0, None, None, "\"Paris\"}")),
        frame(&wire::finish_chunk("tool_calls")),
        frame(&wire::usage_chunk(40, 9)),
        DONE.to_owned(),
    ]
    .concat()
}

#[tokio::test]
async fn a_two_turn_tool_loop_sends_tools_and_results_in_the_openai_shape() {
    let server = FakeServer::start(vec![
        Reply::sse(tool_call_reply()),
        Reply::sse(wire::openai_stream(
            &["It is", " 18 °C", " in Paris."],
            None,
        )),
    ])
    .await;
    let runtime = chat_runtime(server.service());
    let user = json!({"role": "user", "content": "What is the weather in Paris?"});

    // Turn 1: the model asks for the tool.
    let chunks = run_chat(
        &runtime,
        json!({
            "messages": [user],
            "tools": [weather_tool()],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
        }),
    )
    .await;
    let data: Vec<Value> = chunks
        .iter()
        .filter(|c| c.kind == ChunkType::Data)
        .filter_map(|c| c.data.clone())
        .collect();
    assert_eq!(
        data,
        [
            json!({"tool_call": {"index": 0, "id": "call_Wx1", "name": "get_weather", "arguments": ""}}),
            json!({"tool_call": {"index": 0, "id": null, "name": null, "arguments": "{\"city\":"}}),
            json!({"tool_call": {"index": 0, "id": null, "name": null, "arguments": "\"Paris\"}"}}),
        ]
    );
    let done = chunks.last().expect("terminal");
    assert_eq!(done.kind, ChunkType::Complete);
    let done = done.data.clone().expect("data");
    assert_eq!(done["text"], "");
    assert_eq!(done["finish_reason"], "tool_calls");
    assert_eq!(
        done["tool_calls"],
        json!([{"id": "call_Wx1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}])
    );
    let first = &server.requests()[0].body;
    assert_eq!(first["tools"], json!([weather_tool()]));
    assert_eq!(
        first["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    assert_eq!(first["messages"], json!([user]));
    assert_eq!(first["stream"], true);

    // Turn 2: the conversation carries the call and its result, as OpenAI takes them.
    let calls: Vec<Value> = done["tool_calls"]
        .as_array()
        .expect("tool_calls")
        .iter()
        .map(|call| {
            json!({
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]}
            })
        })
        .collect();
    let messages = json!([
        user,
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_Wx1", "content": "{\"temp_c\":18}"}
    ]);
    let chunks = run_chat(
        &runtime,
        json!({"messages": messages, "tools": [weather_tool()], "tool_choice": "auto"}),
    )
    .await;
    let tokens: Vec<&str> = chunks.iter().filter_map(StreamChunk::token).collect();
    assert_eq!(tokens, ["It is", " 18 °C", " in Paris."]);
    let done = chunks.last().expect("terminal");
    assert_eq!(done.kind, ChunkType::Complete);
    assert_eq!(
        done.data,
        Some(json!({"text": "It is 18 °C in Paris.", "finish_reason": "stop", "usage": null}))
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let second = &requests[1].body;
    assert_eq!(
        second["messages"],
        json!([
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": "call_Wx1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}
                }]
            },
            {"role": "tool", "content": "{\"temp_c\":18}", "tool_call_id": "call_Wx1"}
        ])
    );
    assert_eq!(second["tools"], json!([weather_tool()]));
    assert_eq!(second["tool_choice"], "auto");
}

#[tokio::test]
async fn without_tools_the_request_names_none() {
    let server = FakeServer::start(vec![Reply::sse(wire::openai_stream(&["a"], None))]).await;
    let chunks = run_chat(&chat_runtime(server.service()), json!({"prompt": "hi"})).await;
    assert_eq!(chunks.last().expect("terminal").kind, ChunkType::Complete);
    let body = server.requests()[0].body.clone();
    let object = body.as_object().expect("object");
    assert!(!object.contains_key("tools"), "{body}");
    assert!(!object.contains_key("tool_choice"), "{body}");
    assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
}

/// A server whose only call says `"index": 1`: the result holds that one call, not an empty
/// one made up for index 0 (which a client would send back, and OpenAI refuse).
#[tokio::test]
async fn a_skipped_tool_call_index_makes_no_empty_call() {
    let reply = [
        frame(&wire::tool_chunk(1, Some("call_A"), Some("lookup"), "{}")),
        frame(&wire::finish_chunk("tool_calls")),
        DONE.to_owned(),
    ]
    .concat();
    let server = FakeServer::start(vec![Reply::sse(reply)]).await;
    let runtime = chat_runtime(server.service());
    let chunks = run_chat(&runtime, json!({"prompt": "look it up"})).await;
    let done = chunks
        .last()
        .and_then(|c| c.data.clone())
        .expect("complete");
    assert_eq!(
        done["tool_calls"],
        json!([{"id": "call_A", "name": "lookup", "arguments": "{}"}]),
        "{done}"
    );
}
