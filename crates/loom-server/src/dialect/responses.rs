//! OpenAI Responses: `POST /v1/responses` (with `stream` and `background`),
//! `GET /v1/responses/{id}` (also `?stream=true&starting_after=N` to resume) and
//! `POST /v1/responses/{id}/cancel`. The response id is `resp_<run id>`: it names the run, so
//! any server in front of the same runs can answer for it.
//!
//! **Mapping** ([`ResponsesMapping`], pure): the run's `start` opens the response
//! (`response.created`, `response.in_progress`); tokens become `output_text` deltas of a
//! `message` output item — one item per speaker (team member or workflow step, named in the
//! item's extra `name` field), opened at its first token; tool-call deltas become
//! `function_call` items with argument deltas; the terminal chunk closes every open item and
//! ends the response: `response.completed`, `response.incomplete` (the result's
//! `finish_reason` was `length`: `max_output_tokens`, or `content_filter`; the open items are
//! `incomplete` too), or `response.failed` (status `failed`,
//! or `cancelled` after a cancel, with the error's code). A run that streamed nothing answers
//! with its result as the text of one message. Usage is the result's, `null` when unknown.
//!
//! **Numbering.** `sequence_number` is an event's position in the sequence the mapping
//! generates from the run's `seq` 0, so a run always yields the same numbers; a resume with
//! `starting_after=N` regenerates the sequence and sends the events after N. Item ids are
//! `msg_<run id>_<n>` / `fc_<run id>_<n>` for the n-th item, the same on every replay.
//!
//! **Superseded output.** A re-run (`start` with `attempt` ≥ 2) closes the earlier attempt's
//! open items with status `incomplete`, and a workflow step's retry (`action-retry`) those of
//! that step; the new attempt's output goes into new items.
//!
//! **Disconnect.** A `background` response is a detached run: it goes on without readers
//! until it ends or is cancelled. Any other response is cancelled when its client goes away.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use loom_core::{ActorError, ChunkType, ErrorCode, ErrorInfo, Event, StreamChunk};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    chat_tools, conversation_input, null_as_false, parse, passed_through, result_text, sampling,
    serve_numbered, speaker, start_request, text_of, token, EarlyFailure, Numbered, NumberedEvents,
    OpenAiError,
};
use crate::backend::{RunRef, Through};
use crate::error::ApiError;
use crate::extract::{LoomJson, LoomPath, TraceParent};
use crate::runlog::{RunInfo, RunTarget};
use crate::state::ServerState;
use crate::store::DisconnectPolicy;

/// The prefix of a response id before its run id.
const ID_PREFIX: &str = "resp_";

/// The body of `POST /v1/responses`. As on `POST /v1/chat/completions`, the sampling and
/// output fields go on to an actor that takes messages (`text.format` as `response_format`,
/// `reasoning.effort` as `reasoning_effort`), fields of OpenAI's that Loom has no use for
/// ([`IGNORED`]) are ignored, those that ask for what OpenAI keeps ([`KEPT_BY_OPENAI`]) are
/// refused, and so is any other, as OpenAI refuses it.
#[derive(Debug, Deserialize)]
pub(crate) struct CreateResponse {
    model: String,
    input: Value,
    instructions: Option<String>,
    #[serde(default, deserialize_with = "null_as_false")]
    stream: bool,
    #[serde(default, deserialize_with = "null_as_false")]
    background: bool,
    temperature: Option<Value>,
    max_output_tokens: Option<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    /// The output's format (`text.format`).
    text: Option<Value>,
    /// The reasoning asked for (`reasoning.effort`).
    reasoning: Option<Value>,
    /// The rest: those of [`PASSED`] (`top_p`, …) go on to the actor.
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// Fields of OpenAI's Responses request that go on to the actor as they are (Chat Completions
/// has them under the same names).
const PASSED: [&str; 3] = ["top_p", "parallel_tool_calls", "user"];

/// Fields of OpenAI's Responses request that Loom accepts and does not act on: what they ask
/// for (a stored response, log probabilities, a truncation strategy, …) is OpenAI's own.
const IGNORED: [&str; 10] = [
    "store",
    "metadata",
    "service_tier",
    "include",
    "prompt_cache_key",
    "safety_identifier",
    "truncation",
    "top_logprobs",
    "stream_options",
    "max_tool_calls",
];

/// Fields of OpenAI's Responses request that continue what OpenAI keeps (a stored response or
/// conversation, a stored prompt): Loom keeps none, so they are refused rather than ignored —
/// the model would answer without the context the client counts on.
const KEPT_BY_OPENAI: [&str; 3] = ["previous_response_id", "conversation", "prompt"];

/// `text.format` as Chat Completions' `response_format`: a JSON schema or any JSON object;
/// plain text (the default) is none.
fn response_format(text: Option<&Value>) -> Option<Value> {
    let format = text?.get("format")?;
    match format["type"].as_str()? {
        "json_schema" => {
            let mut schema = format.as_object()?.clone();
            schema.remove("type");
            Some(json!({ "type": "json_schema", "json_schema": schema }))
        }
        "json_object" => Some(json!({ "type": "json_object" })),
        _ => None,
    }
}

/// The query of `GET /v1/responses/{id}`.
#[derive(Debug, Deserialize)]
pub(crate) struct RetrieveQuery {
    #[serde(default, deserialize_with = "null_as_false")]
    stream: bool,
    starting_after: Option<u64>,
}

/// What every response object of one run repeats.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    id: String,
    run_id: String,
    model: String,
    created_at: u64,
}

impl Head {
    /// A head for mapping tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self {
            id: "resp_r".into(),
            run_id: "r".into(),
            model: "m".into(),
            created_at: 1,
        }
    }

    /// The head of the run `info` describes.
    pub(crate) fn of(info: &RunInfo) -> Self {
        let model = match (&info.actor, &info.workflow) {
            (_, Some(workflow)) => format!("workflows/{workflow}"),
            (Some(actor), None) => actor.clone(),
            (None, None) => String::new(),
        };
        let created_at = humantime::parse_rfc3339(&info.created_at)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Self {
            id: format!("{ID_PREFIX}{}", info.run_id),
            run_id: info.run_id.clone(),
            model,
            created_at,
        }
    }
}

#[derive(Debug, Clone)]
enum Item {
    Message {
        id: String,
        name: Option<String>,
        text: String,
        status: &'static str,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        status: &'static str,
    },
}

impl Item {
    fn json(&self) -> Value {
        match self {
            Self::Message {
                id,
                name,
                text,
                status,
            } => {
                let content = if *status == "in_progress" {
                    json!([])
                } else {
                    json!([part(text)])
                };
                let mut item = json!({
                    "type": "message", "id": id, "status": status, "role": "assistant",
                    "content": content,
                });
                if let Some(name) = name {
                    item["name"] = json!(name);
                }
                item
            }
            Self::FunctionCall {
                id,
                call_id,
                name,
                arguments,
                status,
            } => json!({
                "type": "function_call", "id": id, "call_id": call_id, "name": name,
                "arguments": arguments, "status": status,
            }),
        }
    }
}

fn part(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [] })
}

/// The Responses view of one run, fed its chunks in order (see the module docs).
#[derive(Debug)]
pub(crate) struct ResponsesMapping {
    head: Head,
    items: Vec<Item>,
    /// Open message items by speaker (`None`: the run itself).
    messages: HashMap<Option<String>, usize>,
    /// Open function-call items by their speaker and the call's index.
    calls: HashMap<(Option<String>, u64), usize>,
    /// The workflow step each open item's output came from, when it came from one.
    steps: HashMap<usize, String>,
    opened: bool,
    /// The response's status, once it ended, with its error and usage.
    status: &'static str,
    error: Option<Value>,
    /// The run's failure (not a cancel), when it failed before any output item.
    failed_early: Option<ErrorInfo>,
    usage: Option<Value>,
    incomplete: Option<Value>,
}

impl ResponsesMapping {
    /// A mapping for the run `head` names.
    pub(crate) fn new(head: Head) -> Self {
        Self {
            head,
            items: Vec::new(),
            messages: HashMap::new(),
            calls: HashMap::new(),
            steps: HashMap::new(),
            opened: false,
            status: "queued",
            error: None,
            failed_early: None,
            usage: None,
            incomplete: None,
        }
    }

    /// The run's error when it failed before any output: a request OpenAI's API would have
    /// refused with an error status, which is how the create route answers it.
    pub(crate) fn failed_early(&self) -> Option<ActorError> {
        self.failed_early.clone().map(ActorError::from)
    }

    /// The response object as things stand.
    pub(crate) fn response(&self) -> Value {
        let output: Vec<Value> = self.items.iter().map(Item::json).collect();
        let text: String = self
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Message { text, .. } => Some(text.as_str()),
                Item::FunctionCall { .. } => None,
            })
            .collect();
        json!({
            "id": self.head.id, "object": "response", "created_at": self.head.created_at,
            "status": self.status, "model": self.head.model, "output": output,
            "output_text": text, "error": self.error, "incomplete_details": self.incomplete,
            "usage": self.usage, "metadata": {}, "parallel_tool_calls": true, "tools": [],
            "tool_choice": "auto", "text": { "format": { "type": "text" } },
        })
    }

    /// The events `chunk` adds, without their `sequence_number`.
    pub(crate) fn map(&mut self, chunk: &StreamChunk) -> Vec<Value> {
        let mut events = Vec::new();
        if !self.opened {
            self.opened = true;
            self.status = "in_progress";
            let response = self.response();
            events.push(json!({ "type": "response.created", "response": response }));
            events.push(json!({ "type": "response.in_progress", "response": response }));
        }
        match chunk.kind {
            ChunkType::Start if chunk.attempt.is_some_and(|a| a > 1) => {
                self.close_all("incomplete", &mut events);
            }
            // A step's retry: what its failed attempt opened is closed, and the new attempt's
            // output goes into new items.
            ChunkType::Progress if chunk.event == Some(Event::ActionRetry) => {
                if let Some(step) = chunk.step.as_deref() {
                    self.close("incomplete", Some(step), &mut events);
                }
            }
            ChunkType::Start | ChunkType::Progress => {}
            ChunkType::Data => {
                if let Some(text) = token(chunk) {
                    let index = self.message(chunk, &mut events);
                    self.delta(index, text, &mut events);
                } else if let Some(call) = chunk.data.as_ref().and_then(|d| d.get("tool_call")) {
                    self.call_delta(chunk, call, &mut events);
                }
            }
            ChunkType::Complete => {
                let data = chunk.data.as_ref();
                if self.items.is_empty() {
                    let text = result_text(data);
                    let index = self.message(&StreamChunk::new(ChunkType::Data, 0), &mut events);
                    self.delta(index, &text, &mut events);
                }
                self.usage = data.and_then(|d| d.get("usage")).and_then(usage);
                // Cut short by the model's limit or its filter: the response and its open
                // items are `incomplete`, with the reason (OpenAI's two).
                let cut = match data.and_then(|d| d.get("finish_reason")) {
                    Some(Value::String(r)) if r == "length" => Some("max_output_tokens"),
                    Some(Value::String(r)) if r == "content_filter" => Some("content_filter"),
                    _ => None,
                };
                let kind = match cut {
                    Some(reason) => {
                        self.close_all("incomplete", &mut events);
                        self.status = "incomplete";
                        self.incomplete = Some(json!({ "reason": reason }));
                        "response.incomplete"
                    }
                    None => {
                        self.close_all("completed", &mut events);
                        self.status = "completed";
                        "response.completed"
                    }
                };
                events.push(json!({ "type": kind, "response": self.response() }));
            }
            ChunkType::Error => {
                self.close_all("incomplete", &mut events);
                let info = chunk.error_info();
                self.status = if info.code == ErrorCode::Cancelled {
                    "cancelled"
                } else {
                    "failed"
                };
                self.error = Some(json!({ "code": info.code.as_str(), "message": info.message }));
                if self.status == "failed" && self.items.is_empty() {
                    self.failed_early = Some(info);
                }
                events.push(json!({ "type": "response.failed", "response": self.response() }));
            }
        }
        events
    }

    /// The open message item of `chunk`'s speaker, opened now if needed.
    fn message(&mut self, chunk: &StreamChunk, events: &mut Vec<Value>) -> usize {
        let name = speaker(chunk).map(str::to_owned);
        if let Some(&index) = self.messages.get(&name) {
            return index;
        }
        let index = self.items.len();
        if let Some(step) = &chunk.step {
            self.steps.insert(index, step.to_string());
        }
        let id = format!("msg_{}_{index}", self.head.run_id);
        self.items.push(Item::Message {
            id: id.clone(),
            name: name.clone(),
            text: String::new(),
            status: "in_progress",
        });
        self.messages.insert(name, index);
        events.push(json!({
            "type": "response.output_item.added", "output_index": index,
            "item": self.items[index].json(),
        }));
        events.push(json!({
            "type": "response.content_part.added", "item_id": id, "output_index": index,
            "content_index": 0, "part": part(""),
        }));
        index
    }

    fn delta(&mut self, index: usize, delta: &str, events: &mut Vec<Value>) {
        if let Some(Item::Message { id, text, .. }) = self.items.get_mut(index) {
            text.push_str(delta);
            events.push(json!({
                "type": "response.output_text.delta", "item_id": id, "output_index": index,
                "content_index": 0, "delta": delta,
            }));
        }
    }

    fn call_delta(&mut self, chunk: &StreamChunk, call: &Value, events: &mut Vec<Value>) {
        let key = (
            speaker(chunk).map(str::to_owned),
            call.get("index").and_then(Value::as_u64).unwrap_or(0),
        );
        let delta = call.get("arguments").and_then(Value::as_str).unwrap_or("");
        let index = match self.calls.get(&key) {
            Some(&index) => index,
            None => {
                let index = self.items.len();
                if let Some(step) = &chunk.step {
                    self.steps.insert(index, step.to_string());
                }
                self.items.push(Item::FunctionCall {
                    id: format!("fc_{}_{index}", self.head.run_id),
                    // A call the provider gave no id still needs one of its own: clients
                    // tell calls apart by it.
                    call_id: call.get("id").and_then(Value::as_str).map_or_else(
                        || format!("call_{}_{index}", self.head.run_id),
                        str::to_owned,
                    ),
                    name: call
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    arguments: String::new(),
                    status: "in_progress",
                });
                self.calls.insert(key, index);
                events.push(json!({
                    "type": "response.output_item.added", "output_index": index,
                    "item": self.items[index].json(),
                }));
                index
            }
        };
        if let Some(Item::FunctionCall { id, arguments, .. }) = self.items.get_mut(index) {
            arguments.push_str(delta);
            events.push(json!({
                "type": "response.function_call_arguments.delta", "item_id": id,
                "output_index": index, "delta": delta,
            }));
        }
    }

    /// Closes every open item with `status`, in the order they were opened.
    fn close_all(&mut self, status: &'static str, events: &mut Vec<Value>) {
        self.close(status, None, events);
    }

    /// Closes with `status`, in the order they were opened, the open items of workflow step
    /// `step`, or every open item.
    fn close(&mut self, status: &'static str, step: Option<&str>, events: &mut Vec<Value>) {
        let of_step = |index: &usize| {
            step.is_none_or(|s| self.steps.get(index).map(String::as_str) == Some(s))
        };
        let mut open: Vec<usize> = self
            .messages
            .values()
            .chain(self.calls.values())
            .copied()
            .filter(of_step)
            .collect();
        self.messages.retain(|_, index| !open.contains(index));
        self.calls.retain(|_, index| !open.contains(index));
        for index in &open {
            self.steps.remove(index);
        }
        open.sort_unstable();
        for index in open {
            let Some(item) = self.items.get_mut(index) else {
                continue;
            };
            match item {
                Item::Message {
                    id,
                    text,
                    status: item_status,
                    ..
                } => {
                    *item_status = status;
                    events.push(json!({
                        "type": "response.output_text.done", "item_id": id, "output_index": index,
                        "content_index": 0, "text": text,
                    }));
                    events.push(json!({
                        "type": "response.content_part.done", "item_id": id,
                        "output_index": index, "content_index": 0, "part": part(text),
                    }));
                }
                Item::FunctionCall {
                    id,
                    arguments,
                    status: item_status,
                    ..
                } => {
                    *item_status = status;
                    events.push(json!({
                        "type": "response.function_call_arguments.done", "item_id": id,
                        "output_index": index, "arguments": arguments,
                    }));
                }
            }
            events.push(json!({
                "type": "response.output_item.done", "output_index": index,
                "item": self.items[index].json(),
            }));
        }
    }
}

/// Chat usage (`prompt_tokens`, …) as Responses names it; `None` when unknown.
fn usage(usage: &Value) -> Option<Value> {
    let tokens = |name: &str| usage.get(name).and_then(Value::as_u64);
    let (input, output) = (tokens("prompt_tokens")?, tokens("completion_tokens")?);
    Some(json!({
        "input_tokens": input, "output_tokens": output,
        "total_tokens": tokens("total_tokens").unwrap_or_else(|| input.saturating_add(output)),
    }))
}

/// The conversation a Responses `input` (and `instructions`) stands for, in Chat
/// Completions messages.
fn messages(instructions: Option<String>, input: Value) -> Result<Vec<Value>, ApiError> {
    let mut messages = Vec::new();
    if let Some(instructions) = instructions {
        messages.push(json!({ "role": "system", "content": instructions }));
    }
    match input {
        Value::String(text) => messages.push(json!({ "role": "user", "content": text })),
        Value::Array(items) => {
            for item in items {
                match item
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("message")
                {
                    "message" => {
                        let Some(role) = item["role"].as_str() else {
                            return Err(ApiError::BadRequest(
                                "an input message has no \"role\"".into(),
                            ));
                        };
                        let text = match &item["content"] {
                            Value::String(text) => text.clone(),
                            Value::Array(parts) => text_of(parts)?,
                            _ => {
                                return Err(ApiError::BadRequest(
                                    "an input message's \"content\" must be a string or a \
                                     list of parts"
                                        .into(),
                                ))
                            }
                        };
                        messages.push(json!({ "role": role, "content": text }));
                    }
                    "function_call" => {
                        let call = json!({
                            "id": item["call_id"], "type": "function",
                            "function": { "name": item["name"], "arguments": item["arguments"] },
                        });
                        // Calls made together are one assistant message, which their
                        // outputs then follow: the shape a model takes.
                        let last = messages
                            .last_mut()
                            .filter(|m| m["role"] == "assistant" && m["content"].is_null());
                        match last.and_then(|m| m["tool_calls"].as_array_mut()) {
                            Some(calls) => calls.push(call),
                            None => messages.push(json!({
                                "role": "assistant", "content": null, "tool_calls": [call],
                            })),
                        }
                    }
                    "function_call_output" => messages.push(json!({
                        "role": "tool", "tool_call_id": item["call_id"], "content": item["output"],
                    })),
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "input items of type '{other}' are not supported"
                        )))
                    }
                }
            }
        }
        _ => {
            return Err(ApiError::BadRequest(
                "\"input\" must be a string or a list of items".into(),
            ))
        }
    }
    Ok(messages)
}

/// `POST /v1/responses`.
pub(crate) async fn create(
    State(state): State<ServerState>,
    TraceParent(traceparent): TraceParent,
    LoomJson(request): LoomJson<CreateResponse>,
) -> Result<Response, OpenAiError> {
    let given = |field: &str| request.rest.get(field).is_some_and(|v| !v.is_null());
    if let Some(kept) = KEPT_BY_OPENAI.into_iter().find(|k| given(k)) {
        return Err(ApiError::BadRequest(format!(
            "{kept}: Loom keeps no conversations or stored prompts; send the whole conversation \
             as input"
        ))
        .into());
    }
    let mut rest = request.rest;
    for unset in KEPT_BY_OPENAI {
        rest.remove(unset);
    }
    let target = RunTarget::named(&request.model);
    let passed = passed_through(rest, &PASSED, &IGNORED)?;
    let sampling = sampling(
        [
            ("temperature", request.temperature),
            ("max_tokens", request.max_output_tokens),
            ("tools", request.tools.as_deref().map(chat_tools)),
            ("tool_choice", request.tool_choice),
            ("response_format", response_format(request.text.as_ref())),
            (
                "reasoning_effort",
                request
                    .reasoning
                    .and_then(|r| r.get("effort").cloned())
                    .filter(|effort| !effort.is_null()),
            ),
        ]
        .into_iter()
        .chain(passed),
    );
    let takes_messages = state.runs().takes_messages(&target);
    let conversation = messages(request.instructions, request.input)?;
    let input = conversation_input(takes_messages, conversation, sampling)?;
    let permit = if request.stream {
        Some(state.stream_permit()?)
    } else {
        None
    };
    let policy = if request.background {
        DisconnectPolicy::Continue
    } else {
        DisconnectPolicy::CancelAfter(Duration::ZERO)
    };
    let run = state
        .runs()
        .start(start_request(target, input, policy, traceparent))
        .await?;
    let head = Head::of(&run.info().await?);
    if let Some(permit) = permit {
        let events = Numbered::new(ResponsesMapping::new(head), None);
        let early = EarlyFailure::Status;
        return Ok(serve_numbered(&state, &run, permit, events, early).await?);
    }
    if request.background {
        let mapping = ResponsesMapping::new(head);
        return Ok(Json(mapping.response()).into_response());
    }
    let _attachment = run.attach().await?;
    let mapping = replay(&run, head, None).await?;
    if let Some(error) = mapping.failed_early() {
        return Err(ApiError::Run(error).into());
    }
    Ok(Json(mapping.response()).into_response())
}

/// `GET /v1/responses/{id}`: the response as it stands, or with `stream=true` its events
/// (after `starting_after`).
pub(crate) async fn retrieve(
    State(state): State<ServerState>,
    LoomPath(id): LoomPath,
    query: Result<Query<RetrieveQuery>, QueryRejection>,
) -> Result<Response, OpenAiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let run = find(&state, &id).await?;
    let info = run.info().await?;
    let head = Head::of(&info);
    if query.stream {
        let permit = state.stream_permit()?;
        let events = Numbered::new(ResponsesMapping::new(head), query.starting_after);
        return Ok(serve_numbered(&state, &run, permit, events, EarlyFailure::InStream).await?);
    }
    let mapping = replay(&run, head, Some(info.last_seq)).await?;
    Ok(Json(mapping.response()).into_response())
}

/// `POST /v1/responses/{id}/cancel`: cancels the run (idempotent) and answers with the
/// response once it has ended.
pub(crate) async fn cancel(
    State(state): State<ServerState>,
    LoomPath(id): LoomPath,
) -> Result<Response, OpenAiError> {
    let run = find(&state, &id).await?;
    run.cancel().await?;
    let head = Head::of(&run.info().await?);
    let mapping = replay(&run, head, None).await?;
    Ok(Json(mapping.response()).into_response())
}

async fn find(state: &ServerState, id: &str) -> Result<RunRef, ApiError> {
    let run_id = id
        .strip_prefix(ID_PREFIX)
        .ok_or_else(|| ApiError::NotFound(format!("unknown response '{id}'")))?;
    state.runs().find(run_id).await
}

/// The mapping fed the run's chunks from `seq` 0: up to `until` (the last `seq` written, for a
/// snapshot that does not wait; `Some(None)`: nothing written yet), or to the terminal chunk.
/// Where the log dropped chunks before they were read, the mapping starts again with the
/// terminal chunk ([`RunRef::read_through`]).
async fn replay(
    run: &RunRef,
    head: Head,
    until: Option<Option<u64>>,
) -> Result<ResponsesMapping, ApiError> {
    let mut mapping = ResponsesMapping::new(head.clone());
    if until == Some(None) {
        return Ok(mapping);
    }
    let snapshot_of = until.flatten();
    run.read_through(None, |read| {
        let (chunks, reached) = match read {
            Through::Chunks(chunks, reached) => (chunks, reached),
            // Only the terminal follows: its result is the answer.
            Through::Gap => {
                mapping = ResponsesMapping::new(head.clone());
                return ControlFlow::Continue(());
            }
        };
        for logged in chunks {
            let Some(chunk) = parse(logged) else {
                continue;
            };
            mapping.map(&chunk);
            if snapshot_of.is_some_and(|last| chunk.seq >= last) {
                return ControlFlow::Break(());
            }
        }
        // A snapshot stops where the run was when asked, also past a gap that left nothing
        // but the terminal to map (a running run's snapshot then shows no output yet).
        if snapshot_of.is_some_and(|last| reached >= last) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })
    .await?;
    Ok(mapping)
}

impl NumberedEvents for ResponsesMapping {
    fn map(&mut self, chunk: &StreamChunk) -> Vec<Value> {
        ResponsesMapping::map(self, chunk)
    }

    fn write(number: u64, _logged: bool, mut event: Value, out: &mut Vec<u8>) {
        event["sequence_number"] = json!(number);
        let kind = event["type"].as_str().unwrap_or_default().to_owned();
        out.extend_from_slice(format!("event: {kind}\ndata: {event}\n\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use loom_core::ActorError;

    use crate::runlog::LoggedChunk;

    use super::*;
    use crate::dialect::fixtures::{complete, data, logged, marker, step_token, token};

    fn head() -> Head {
        Head {
            id: "resp_r".into(),
            run_id: "r".into(),
            model: "team-demo".into(),
            created_at: 1,
        }
    }

    fn events(chunks: &[StreamChunk]) -> (Vec<Value>, ResponsesMapping) {
        let mut mapping = ResponsesMapping::new(head());
        let events = chunks.iter().flat_map(|c| mapping.map(c)).collect();
        (events, mapping)
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    #[test]
    fn tokens_are_one_message_item_between_created_and_completed() {
        let usage = json!({ "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5 });
        let (events, mapping) = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            token(1, "Hel", None),
            token(2, "lo", None),
            complete(3, json!({ "text": "Hello", "usage": usage })),
        ]);
        assert_eq!(
            types(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let done = &events[9]["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["usage"]["total_tokens"], 5);
        assert_eq!(mapping.response()["output_text"], "Hello");
    }

    /// The usual tool loop sends back the calls made together, then their outputs: the calls
    /// are one assistant message, which the outputs follow (the shape a model takes).
    #[test]
    fn calls_made_together_are_one_assistant_message() {
        let call = |id: &str| json!({ "type": "function_call", "call_id": id, "name": "f", "arguments": "{}" });
        let output =
            |id: &str| json!({ "type": "function_call_output", "call_id": id, "output": "ok" });
        let input = json!([
            { "role": "user", "content": "go" },
            call("c1"), call("c2"), output("c1"), output("c2"),
        ]);
        let messages = messages(None, input).unwrap();
        crate::dialect::fixtures::assert_calls_in_one_message(&messages, &["c1", "c2"]);
    }

    /// Clients tell function calls apart by `call_id`: a call the provider gave no id gets
    /// one of its own, never an empty one shared with the next.
    #[test]
    fn calls_without_a_provider_id_get_call_ids_of_their_own() {
        let call =
            |index: u64| json!({ "tool_call": { "index": index, "name": "f", "arguments": "{}" } });
        let (_, mapping) = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            data(1, call(0), None),
            data(2, call(1), None),
            complete(3, json!({ "text": "" })),
        ]);
        let output = mapping.response()["output"].clone();
        let ids: Vec<&str> = output
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["call_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 2, "{output}");
        assert!(
            ids.iter().all(|id| !id.is_empty()) && ids[0] != ids[1],
            "{ids:?}"
        );
    }

    #[test]
    fn a_workflow_steps_retry_closes_its_items_and_leaves_the_other_steps_open() {
        let (events, mapping) = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            step_token(1, "Half", "a"),
            step_token(2, "B", "b"),
            marker(3, ChunkType::Progress, Event::ActionRetry, "a"),
            step_token(4, "Whole", "a"),
            step_token(5, "b", "b"),
            complete(6, json!({ "text": "" })),
        ]);
        let done: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "response.output_item.done")
            .collect();
        // The failed attempt's item closes at the retry, before anything after it.
        assert_eq!(done[0]["item"]["name"], "a");
        assert_eq!(done[0]["item"]["status"], "incomplete");
        assert_eq!(done[0]["item"]["content"][0]["text"], "Half");
        let output = mapping.response()["output"].clone();
        let items: Vec<(&str, &str, &str)> = output
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap(),
                    i["status"].as_str().unwrap(),
                    i["content"][0]["text"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            items,
            [
                ("a", "incomplete", "Half"),
                ("b", "completed", "Bb"),
                ("a", "completed", "Whole")
            ]
        );
    }

    #[test]
    fn usage_counts_at_the_limit_of_u64_do_not_overflow() {
        let max = u64::MAX;
        let given = usage(&json!({ "prompt_tokens": max, "completion_tokens": 1 }));
        assert_eq!(given.expect("usage")["total_tokens"], max);
        let total = json!({ "prompt_tokens": max, "completion_tokens": 1, "total_tokens": 7 });
        assert_eq!(usage(&total).expect("usage")["total_tokens"], 7);
    }

    #[test]
    fn each_team_member_gets_its_own_named_item() {
        let (events, mapping) = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            token(1, "A", Some("researcher")),
            token(2, "B", Some("writer")),
            token(3, "C", Some("researcher")),
            complete(4, json!({})),
        ]);
        let output = &mapping.response()["output"];
        assert_eq!(output[0]["name"], "researcher");
        assert_eq!(output[0]["content"][0]["text"], "AC");
        assert_eq!(output[1]["name"], "writer");
        assert_eq!(output[1]["content"][0]["text"], "B");
        assert_eq!(events.last().unwrap()["response"]["usage"], Value::Null);
    }

    #[test]
    fn a_cancel_fails_the_response_as_cancelled_and_closes_open_items() {
        let (events, _) = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            token(1, "Once", None),
            StreamChunk::error(2, &ActorError::cancelled()),
        ]);
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.failed");
        assert_eq!(last["response"]["status"], "cancelled");
        assert_eq!(last["response"]["error"]["code"], "cancelled");
        assert_eq!(last["response"]["output"][0]["status"], "incomplete");
    }

    #[test]
    fn a_rerun_starts_new_items_and_length_is_incomplete() {
        let mut rerun = StreamChunk::new(ChunkType::Start, 2);
        rerun.attempt = Some(2);
        let (events, mapping) = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            token(1, "Once", None),
            rerun,
            token(3, "Twice", None),
            complete(4, json!({ "finish_reason": "length" })),
        ]);
        let response = mapping.response();
        assert_eq!(response["output"][0]["status"], "incomplete");
        // Cut by the limit: the last message is incomplete too.
        assert_eq!(response["output"][1]["status"], "incomplete");
        assert_eq!(response["output"][1]["content"][0]["text"], "Twice");
        assert_eq!(events.last().unwrap()["type"], "response.incomplete");
        assert_eq!(
            response["incomplete_details"]["reason"],
            "max_output_tokens"
        );
    }

    #[test]
    fn a_filtered_answer_is_incomplete_for_content_filter() {
        let (events, mapping) = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            token(1, "Half", None),
            complete(2, json!({ "finish_reason": "content_filter" })),
        ]);
        let response = mapping.response();
        assert_eq!(response["status"], "incomplete");
        assert_eq!(response["incomplete_details"]["reason"], "content_filter");
        assert_eq!(response["output"][0]["status"], "incomplete");
        assert_eq!(events.last().unwrap()["type"], "response.incomplete");
    }

    #[test]
    fn a_run_that_streamed_nothing_answers_with_its_result_and_numbers_repeat() {
        let chunks = [
            StreamChunk::new(ChunkType::Start, 0),
            complete(1, json!({ "processed": 3 })),
        ];
        let logged: Vec<Arc<LoggedChunk>> = chunks.iter().map(logged).collect();
        let render = |after| {
            let mut stream = Numbered::new(ResponsesMapping::new(head()), after);
            String::from_utf8(stream.frames(&logged).to_vec()).unwrap()
        };
        let all = render(None);
        assert!(all.contains(r#""delta":"{\"processed\":3}""#), "{all}");
        assert!(all.starts_with("event: response.created\ndata: "), "{all}");
        // A resume after event 5 is the tail of the same numbered sequence.
        let tail = render(Some(5));
        let from_six = &all[all
            .find("\"sequence_number\":6")
            .map(|i| all[..i].rfind("event: ").unwrap())
            .unwrap()..];
        assert_eq!(tail, from_six);
    }
}
