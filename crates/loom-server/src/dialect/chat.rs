//! OpenAI Chat Completions: `POST /v1/chat/completions` (`model` = actor type or
//! `workflows/<name>`) and `GET /v1/models` (and `/v1/models/{id}`), so the official `openai` clients work against
//! `loom serve` unmodified.
//!
//! **Mapping** ([`ChatMapping`], pure): a token (`{"token": …}`) is a `content` delta; a
//! tool-call delta (`{"tool_call": …}`) a `tool_calls` delta; the terminal `complete` the
//! `finish_reason` (the result's, else `stop`, or `tool_calls` after tool calls) and, with
//! `stream_options.include_usage`, `"usage": null` on every chunk and a last chunk with the
//! result's `usage` (`null` when the upstream reported none — never zeros); the terminal
//! `error` an `{"error": …}` event in OpenAI's shape, which the clients raise (a run that
//! fails before any output is an error status instead: [`EarlyFailure::Status`]). A run that streamed no token (any other actor, a
//! workflow) answers with its result as text. Chat Completions has one text, so a change of
//! speaker (a team member, a workflow step) is marked in it: `[writer] `, after a blank line
//! when something was said before. Progress and other data have no place here and are left
//! out; a re-run's tokens (`attempt: 2`) follow the first attempt's in the text, after a
//! `[attempt 2] ` mark, and a workflow step's retry's after a `[<step> retry] ` mark: the text
//! already sent cannot be taken back.
//!
//! **Disconnect cancels the run** at once (no grace): a chat client that goes away does not
//! come back for the same completion.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use loom_core::{ActorError, ChunkType, ErrorInfo, Event, StreamChunk};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    conversation_input, null_as_false, openai_error_body, parse, passed_through, result_text,
    sampling, speaker, start_request, text_of, token, EarlyFailure, OpenAiError,
};
use crate::backend::Through;
use crate::error::ApiError;
use crate::extract::{LoomJson, TraceParent};
use crate::runlog::{LoggedChunk, RunTarget};
use crate::sse::{self, Overtaken, StreamGuards};
use crate::state::ServerState;
use crate::store::DisconnectPolicy;

/// The body of `POST /v1/chat/completions`: the sampling and output fields an actor that takes
/// messages reads go on to it (`chat-agent` sends them upstream); fields of OpenAI's API that
/// Loom has no use for ([`IGNORED`]: `store`, `metadata`, …) are ignored, and any other is
/// refused as OpenAI refuses it, so a misspelt `max_token` never runs without its limit.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    model: String,
    messages: Vec<Value>,
    #[serde(default, deserialize_with = "null_as_false")]
    stream: bool,
    stream_options: Option<StreamOptions>,
    temperature: Option<Value>,
    max_tokens: Option<Value>,
    max_completion_tokens: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    /// How many choices: Loom answers with one, so any other number is refused rather than
    /// answered with fewer than asked.
    n: Option<u64>,
    /// The rest: those of [`loom_ai::PASSED_THROUGH`] (`top_p`, `stop`, `response_format`, …)
    /// go on to the actor, which sends them upstream.
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// Fields of OpenAI's Chat Completions request that Loom accepts and does not act on: what they
/// ask for (a stored completion, log probabilities, audio…) is OpenAI's own.
const IGNORED: [&str; 11] = [
    "store",
    "metadata",
    "service_tier",
    "logprobs",
    "top_logprobs",
    "modalities",
    "audio",
    "prediction",
    "prompt_cache_key",
    "safety_identifier",
    "verbosity",
];

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default, deserialize_with = "null_as_false")]
    include_usage: bool,
}

/// What one chunk of a run says in Chat Completions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Delta {
    /// Text of the assistant message.
    Text(String),
    /// A tool-call delta, `{"index","id","name","arguments"}` as `chat-agent` streams it.
    ToolCall(Value),
    /// The end: the finish reason and the usage, if known.
    Finish {
        /// `stop`, `length`, `tool_calls`, …
        reason: String,
        /// The result's `usage`, or `None` when unknown.
        usage: Option<Value>,
    },
    /// The run ended with an error.
    Error(ErrorInfo),
}

/// The Chat Completions view of one run, fed its chunks in order (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct ChatMapping {
    speaker: Option<String>,
    said: bool,
    /// A mark (a re-run's, a retry's) was the last text: a speaker follows it on its line.
    marked: bool,
    called_tools: bool,
    /// Each tool call's `index` on the wire, by who called it, in which attempt (re-runs and
    /// retries count up) and at which index of its own: the official clients merge deltas by
    /// `index`, so two calls must never share one.
    calls: HashMap<(Option<String>, u32, u64), u64>,
    /// Re-runs and step retries so far.
    generation: u32,
}

impl ChatMapping {
    /// `call` with its `index` on the wire: a new one for each new call, and its `id` and
    /// `name` only on the call's first delta (the clients append what a delta repeats).
    fn renumber(&mut self, chunk: &StreamChunk, call: &Value) -> Value {
        let own = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let key = (speaker(chunk).map(str::to_owned), self.generation, own);
        let next = self.calls.len() as u64;
        let mut call = call.clone();
        match self.calls.entry(key) {
            std::collections::hash_map::Entry::Occupied(index) => {
                call["index"] = json!(*index.get());
                if let Some(fields) = call.as_object_mut() {
                    fields.remove("id");
                    fields.remove("name");
                }
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                call["index"] = json!(*slot.insert(next));
            }
        }
        call
    }

    /// What `chunk` adds.
    pub(crate) fn map(&mut self, chunk: &StreamChunk) -> Vec<Delta> {
        match chunk.kind {
            // A re-run: its calls are new ones, and its tokens follow after a mark.
            ChunkType::Start => {
                let Some(attempt) = chunk.attempt.filter(|&a| a > 1) else {
                    return Vec::new();
                };
                self.generation += 1;
                if !self.said {
                    return Vec::new();
                }
                self.speaker = None;
                self.marked = true;
                vec![Delta::Text(format!("\n\n[attempt {attempt}] "))]
            }
            ChunkType::Data => {
                if let Some(text) = token(chunk) {
                    let mut out = String::new();
                    if let Some(name) = speaker(chunk) {
                        if self.speaker.as_deref() != Some(name) {
                            if self.said && !self.marked {
                                out.push_str("\n\n");
                            }
                            out.push('[');
                            out.push_str(name);
                            out.push_str("] ");
                            self.speaker = Some(name.to_owned());
                        }
                    }
                    out.push_str(text);
                    self.said = true;
                    self.marked = false;
                    vec![Delta::Text(out)]
                } else if let Some(call) = chunk.data.as_ref().and_then(|d| d.get("tool_call")) {
                    self.called_tools = true;
                    vec![Delta::ToolCall(self.renumber(chunk, call))]
                } else {
                    Vec::new()
                }
            }
            // A step's retry: its new attempt's tokens follow after a mark, as a re-run's do.
            ChunkType::Progress if chunk.event == Some(Event::ActionRetry) => {
                self.generation += 1;
                if !self.said {
                    return Vec::new();
                }
                let step = chunk.step.as_deref().unwrap_or("step");
                let mark = format!("\n\n[{step} retry] ");
                // The step's own tokens follow the mark as they are; a team member's name
                // follows it on its line.
                self.speaker = chunk.step.as_deref().map(str::to_owned);
                self.marked = true;
                vec![Delta::Text(mark)]
            }
            ChunkType::Progress => Vec::new(),
            ChunkType::Complete => {
                let data = chunk.data.as_ref();
                let mut out = Vec::new();
                if !self.said && !self.called_tools {
                    let text = result_text(data);
                    if !text.is_empty() {
                        out.push(Delta::Text(text));
                    }
                }
                let reason = data
                    .and_then(|d| d.get("finish_reason"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| {
                        if self.called_tools {
                            "tool_calls"
                        } else {
                            "stop"
                        }
                        .to_owned()
                    });
                let usage = data
                    .and_then(|d| d.get("usage"))
                    .filter(|u| u.is_object())
                    .cloned();
                out.push(Delta::Finish { reason, usage });
                out
            }
            ChunkType::Error => vec![Delta::Error(chunk.error_info())],
        }
    }
}

/// `GET /v1/models`: every actor and workflow, as models.
pub(crate) async fn models(State(state): State<ServerState>) -> Result<Response, OpenAiError> {
    let data: Vec<Value> = model_ids(&state)
        .await?
        .iter()
        .map(|id| model_object(id))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })).into_response())
}

/// `GET /v1/models/{id}` (the clients' `models.retrieve`): one of them, or a 404.
pub(crate) async fn model(
    State(state): State<ServerState>,
    Path(id): Path<String>,
) -> Result<Response, OpenAiError> {
    if !model_ids(&state).await?.contains(&id) {
        return Err(ApiError::NotFound(format!("no actor or workflow '{id}'")).into());
    }
    Ok(Json(model_object(&id)).into_response())
}

/// The ids of every actor and workflow: `<actor type>`, `workflows/<name>`.
async fn model_ids(state: &ServerState) -> Result<Vec<String>, ApiError> {
    let mut ids: Vec<String> = Vec::new();
    for actor in state.runs().actors().await? {
        ids.extend(actor["name"].as_str().map(str::to_owned));
    }
    for workflow in state.runs().workflows().await? {
        ids.extend(workflow["name"].as_str().map(|n| format!("workflows/{n}")));
    }
    Ok(ids)
}

fn model_object(id: &str) -> Value {
    json!({ "id": id, "object": "model", "created": 0, "owned_by": "loom" })
}

/// `POST /v1/chat/completions`.
pub(crate) async fn completions(
    State(state): State<ServerState>,
    TraceParent(traceparent): TraceParent,
    LoomJson(request): LoomJson<ChatRequest>,
) -> Result<Response, OpenAiError> {
    if let Some(n) = request.n.filter(|n| *n != 1) {
        return Err(ApiError::BadRequest(format!("n is {n}: Loom answers with one choice")).into());
    }
    let target = RunTarget::named(&request.model);
    let passed = passed_through(request.rest, loom_ai::PASSED_THROUGH, &IGNORED)?;
    // What the model would never see is refused, whichever actor answers.
    for parts in request
        .messages
        .iter()
        .filter_map(|m| m["content"].as_array())
    {
        text_of(parts)?;
    }
    let sampling = sampling(
        [
            ("temperature", request.temperature),
            (
                "max_tokens",
                request.max_tokens.or(request.max_completion_tokens),
            ),
            ("tools", request.tools),
            ("tool_choice", request.tool_choice),
        ]
        .into_iter()
        .chain(passed),
    );
    let takes_messages = state.runs().takes_messages(&target);
    let input = conversation_input(takes_messages, request.messages, sampling)?;
    let permit = if request.stream {
        Some(state.stream_permit()?)
    } else {
        None
    };
    let run = state
        .runs()
        .start(start_request(
            target,
            input,
            DisconnectPolicy::CancelAfter(Duration::ZERO),
            traceparent,
        ))
        .await?;
    let attachment = run.attach().await?;
    let head = Head {
        id: format!("chatcmpl-{}", run.id()),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: request.model,
    };
    if let Some(permit) = permit {
        let Some(feed) = run.open(None).await? else {
            return Err(ApiError::ShuttingDown.into());
        };
        let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
        let guards = StreamGuards {
            _attachment: attachment,
            _permit: permit,
        };
        let mut stream = ChatStream {
            head,
            include_usage,
            mapping: ChatMapping::default(),
            opened: false,
        };
        let opened = EarlyFailure::Status.open(feed).await?;
        return Ok(sse::response(
            &state,
            run.id(),
            opened,
            guards,
            Overtaken::Fail,
            move |chunks| stream.frames(chunks),
        ));
    }
    let _attachment = attachment;
    let mut mapping = ChatMapping::default();
    let mut text = String::new();
    let mut finish = None;
    let mut failed = None;
    run.read_through(None, |read| {
        let chunks = match read {
            Through::Chunks(chunks, _) => chunks,
            // Only the terminal follows: its result is the answer.
            Through::Gap => {
                (mapping, text) = (ChatMapping::default(), String::new());
                return ControlFlow::Continue(());
            }
        };
        for logged in chunks {
            let Some(chunk) = parse(logged) else {
                continue;
            };
            for delta in mapping.map(&chunk) {
                match delta {
                    Delta::Text(t) => text.push_str(&t),
                    // The complete chunk carries the whole calls.
                    Delta::ToolCall(_) => {}
                    Delta::Finish { reason, usage } => {
                        let calls = chunk
                            .data
                            .as_ref()
                            .and_then(|d| d.get("tool_calls"))
                            .cloned();
                        finish = Some((reason, usage, calls));
                    }
                    Delta::Error(info) => {
                        failed = Some(info);
                        return ControlFlow::Break(());
                    }
                }
            }
        }
        ControlFlow::Continue(())
    })
    .await?;
    if let Some(info) = failed {
        return Err(ApiError::Run(ActorError::from(info)).into());
    }
    let (reason, usage, calls) = finish.ok_or(ApiError::ShuttingDown)?;
    let mut message = json!({ "role": "assistant", "content": text });
    if let Some(Value::Array(calls)) = calls {
        let calls: Vec<Value> = calls
            .iter()
            .map(|c| {
                json!({
                    "id": c["id"], "type": "function",
                    "function": { "name": c["name"], "arguments": c["arguments"] },
                })
            })
            .collect();
        message["tool_calls"] = Value::Array(calls);
    }
    let body = json!({
        "id": head.id, "object": "chat.completion", "created": head.created, "model": head.model,
        "choices": [{ "index": 0, "message": message, "finish_reason": reason }],
        "usage": usage,
    });
    Ok(Json(body).into_response())
}

/// What every chunk object of one completion repeats.
#[derive(Debug)]
struct Head {
    id: String,
    created: u64,
    model: String,
}

/// A streaming completion: the mapping, rendered as `chat.completion.chunk` events.
struct ChatStream {
    head: Head,
    include_usage: bool,
    mapping: ChatMapping,
    opened: bool,
}

impl ChatStream {
    /// A chunk of the stream; with `include_usage`, with `"usage": null` as OpenAI's are
    /// until the last.
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut chunk = json!({
            "id": self.head.id, "object": "chat.completion.chunk", "created": self.head.created,
            "model": self.head.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn frames(&mut self, chunks: &[Arc<LoggedChunk>]) -> Bytes {
        let mut events: Vec<Value> = Vec::new();
        let mut done = false;
        if !self.opened {
            self.opened = true;
            events.push(self.chunk(json!({ "role": "assistant", "content": "" }), None));
        }
        for logged in chunks {
            let Some(chunk) = parse(logged) else { continue };
            for delta in self.mapping.map(&chunk) {
                match delta {
                    Delta::Text(text) => events.push(self.chunk(json!({ "content": text }), None)),
                    Delta::ToolCall(call) => {
                        let mut function = Map::new();
                        if let Some(name) = call.get("name").filter(|n| n.is_string()) {
                            function.insert("name".into(), name.clone());
                        }
                        function.insert(
                            "arguments".into(),
                            call.get("arguments").cloned().unwrap_or(json!("")),
                        );
                        let mut tool_call = json!({
                            "index": call.get("index").cloned().unwrap_or(json!(0)),
                            "type": "function",
                            "function": function,
                        });
                        if let Some(id) = call.get("id").filter(|i| i.is_string()) {
                            tool_call["id"] = id.clone();
                        }
                        events.push(self.chunk(json!({ "tool_calls": [tool_call] }), None));
                    }
                    Delta::Finish { reason, usage } => {
                        events.push(self.chunk(json!({}), Some(&reason)));
                        if self.include_usage {
                            let mut last = self.chunk(json!({}), None);
                            last["choices"] = json!([]);
                            last["usage"] = usage.unwrap_or(Value::Null);
                            events.push(last);
                        }
                        done = true;
                    }
                    Delta::Error(info) => {
                        let status = ApiError::Run(ActorError::from(info.clone())).status();
                        events.push(openai_error_body(status, info.code.as_str(), &info.message));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for event in events {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(event.to_string().as_bytes());
            out.extend_from_slice(b"\n\n");
        }
        if done {
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use loom_core::ErrorCode;

    use super::*;
    use crate::dialect::fixtures::{complete, data, logged, marker, step_token};

    fn map_all(chunks: &[StreamChunk]) -> Vec<Delta> {
        let mut mapping = ChatMapping::default();
        chunks.iter().flat_map(|c| mapping.map(c)).collect()
    }

    #[test]
    fn tokens_are_content_and_the_result_gives_finish_reason_and_usage() {
        let usage = json!({ "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5 });
        let deltas = map_all(&[
            StreamChunk::new(ChunkType::Start, 0),
            data(1, json!({ "token": "Hel" }), None),
            data(2, json!({ "token": "lo" }), None),
            complete(
                3,
                json!({ "text": "Hello", "finish_reason": "length", "usage": usage }),
            ),
        ]);
        assert_eq!(
            deltas,
            [
                Delta::Text("Hel".into()),
                Delta::Text("lo".into()),
                Delta::Finish {
                    reason: "length".into(),
                    usage: Some(usage)
                },
            ]
        );
    }

    #[test]
    fn a_team_marks_each_change_of_speaker_in_the_text() {
        let deltas = map_all(&[
            data(1, json!({ "token": "Draft" }), Some("writer")),
            data(2, json!({ "token": " one" }), Some("writer")),
            data(3, json!({ "token": "Fine" }), Some("critic")),
            complete(4, json!({ "contributions": 2 })),
        ]);
        let text: String = deltas
            .iter()
            .filter_map(|d| match d {
                Delta::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "[writer] Draft one\n\n[critic] Fine");
        assert_eq!(
            deltas.last(),
            Some(&Delta::Finish {
                reason: "stop".into(),
                usage: None
            })
        );
    }

    #[test]
    fn a_run_without_tokens_answers_with_its_result_and_progress_is_left_out() {
        let mut progress = StreamChunk::new(ChunkType::Progress, 1);
        progress.data = Some(json!({ "message": "batch 1" }));
        let deltas = map_all(&[progress, complete(2, json!({ "processed": 3 }))]);
        assert_eq!(deltas[0], Delta::Text(r#"{"processed":3}"#.into()));
        assert_eq!(deltas.len(), 2);
    }

    #[test]
    fn tool_calls_pass_through_and_finish_with_tool_calls() {
        let call = json!({ "index": 0, "id": "call_1", "name": "f", "arguments": "{}" });
        let deltas = map_all(&[
            data(1, json!({ "tool_call": call }), None),
            complete(2, json!({ "text": "", "usage": null, "tool_calls": [] })),
        ]);
        assert_eq!(deltas[0], Delta::ToolCall(call));
        assert_eq!(
            deltas[1],
            Delta::Finish {
                reason: "tool_calls".into(),
                usage: None
            }
        );
    }

    /// The clients merge tool-call deltas by `index`: calls of two members, or of a run and
    /// its re-run, each get their own, and a call's `id` and `name` are sent once however
    /// often its deltas repeat them.
    #[test]
    fn every_tool_call_gets_its_own_index_and_names_itself_once() {
        let call = |id: &str, args: &str| json!({ "tool_call": { "index": 0, "id": id, "name": "f", "arguments": args } });
        let mut rerun = StreamChunk::new(ChunkType::Start, 4);
        rerun.attempt = Some(2);
        let deltas = map_all(&[
            data(1, call("a", "{\"x\":"), Some("alpha")),
            data(2, call("b", "{}"), Some("beta")),
            data(3, call("a", "1}"), Some("alpha")),
            rerun,
            data(5, call("c", "{}"), Some("alpha")),
        ]);
        let calls: Vec<&Value> = deltas
            .iter()
            .filter_map(|d| match d {
                Delta::ToolCall(call) => Some(call),
                _ => None,
            })
            .collect();
        let indexes: Vec<u64> = calls.iter().filter_map(|c| c["index"].as_u64()).collect();
        assert_eq!(indexes, [0, 1, 0, 2]);
        assert_eq!(calls[2].get("id"), None, "{}", calls[2]);
        assert_eq!(calls[2].get("name"), None, "{}", calls[2]);
        assert_eq!(calls[2]["arguments"], "1}");
        assert_eq!(calls[3]["id"], "c");
    }

    #[test]
    fn an_error_or_a_cancel_ends_with_the_error_and_a_rerun_is_marked() {
        let mut rerun = StreamChunk::new(ChunkType::Start, 2);
        rerun.attempt = Some(2);
        let deltas = map_all(&[
            data(1, json!({ "token": "Once" }), None),
            rerun,
            data(3, json!({ "token": "Once" }), None),
            StreamChunk::error(4, &ActorError::cancelled()),
        ]);
        assert_eq!(deltas[1], Delta::Text("\n\n[attempt 2] ".into()));
        match deltas.last() {
            Some(Delta::Error(info)) => assert_eq!(info.code, ErrorCode::Cancelled),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_workflow_steps_retry_is_marked_in_the_text() {
        let deltas = map_all(&[
            step_token(1, "Half", "a"),
            marker(2, ChunkType::Progress, Event::ActionRetry, "a"),
            step_token(3, "Whole", "a"),
            marker(4, ChunkType::Progress, Event::ActionRetry, "a"),
            data(5, json!({ "token": "Again" }), Some("member")),
        ]);
        assert_eq!(
            deltas,
            [
                Delta::Text("[a] Half".into()),
                Delta::Text("\n\n[a retry] ".into()),
                Delta::Text("Whole".into()),
                Delta::Text("\n\n[a retry] ".into()),
                Delta::Text("[member] Again".into()),
            ]
        );
    }

    #[test]
    fn a_stream_is_chat_completion_chunks_then_usage_then_done() {
        let mut stream = ChatStream {
            head: Head {
                id: "chatcmpl-r".into(),
                created: 1,
                model: "chat-agent".into(),
            },
            include_usage: true,
            mapping: ChatMapping::default(),
            opened: false,
        };
        let logged = |chunk: StreamChunk| logged(&chunk);
        let bytes = stream.frames(&[
            logged(StreamChunk::new(ChunkType::Start, 0)),
            logged(data(1, json!({ "token": "Hi" }), None)),
            logged(complete(2, json!({ "text": "Hi", "usage": null }))),
        ]);
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let events: Vec<&str> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap())
            .collect();
        assert_eq!(events.len(), 5, "{text}");
        let first: Value = serde_json::from_str(events[0]).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let token: Value = serde_json::from_str(events[1]).unwrap();
        assert_eq!(token["choices"][0]["delta"]["content"], "Hi");
        // With include_usage, every chunk has a usage field, null until the last.
        assert!(token.as_object().unwrap().contains_key("usage"), "{token}");
        assert_eq!(token["usage"], Value::Null);
        let finish: Value = serde_json::from_str(events[2]).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage: Value = serde_json::from_str(events[3]).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            Value::Null,
            "unknown usage is null, never zeros"
        );
        assert_eq!(events[4], "[DONE]");
    }
}
