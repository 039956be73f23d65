//! The Vercel AI SDK's UI message stream (v1): `POST /v1/ai-sdk/{agent}` takes `useChat`'s
//! body (`{id, messages, trigger}`) and streams the run as UI message parts, so `useChat` with
//! `DefaultChatTransport` (and `readUIMessageStream`) work against `loom serve`;
//! `GET /v1/ai-sdk/{agent}/{chatId}/stream` resumes the chat's run that has not ended as a full
//! replay, or answers `204` when there is none (what the transport's `resume` expects).
//! `{agent}` is an actor type or `workflows/<name>`.
//!
//! **Mapping** ([`AiSdkMapping`], pure): `start` (the message id is `msg_<run id>`, or, when
//! the chat's last message is the assistant's — a tool's result sent back — that message's
//! id, so the run's parts go on in it) and `start-step`, the run being one model step; tokens
//! → `text-start`/`text-delta`/`text-end`, one text part per speaker (a team member or a
//! workflow step, named in the part's `providerMetadata.loom.speaker`); tool-call deltas →
//! `tool-input-start`/`tool-input-delta`, then `tool-input-available` with the parsed input
//! (dynamic tools), or `tool-input-error` when it does not parse; progress →
//! `data-loom-progress` with the speaker (or `run`) as its id, so a newer progress replaces
//! the part; a workflow step's markers → `data-loom-step` with the step as its id
//! (`running`, `done`, `failed`); any other data → `data-loom-data`; the terminal chunk
//! closes every open part, then `finish-step` and `finish` (the result's finish reason, the
//! result and usage in `messageMetadata`) or `error` (`code: message`); then `data: [DONE]`.
//! A run that streamed no text answers with its result as text.
//!
//! **Superseded output.** A re-run (`attempt` ≥ 2) or a step's retry closes the text parts it
//! supersedes, ends the tool calls it supersedes with `tool-input-error` (their input was cut
//! short: nothing to run), and sends `data-loom-superseded`; the new output comes in new parts.
//!
//! **Disconnect** is a direct stream's: a client that goes away (also `useChat`'s `stop`)
//! cancels the run after the disconnect grace unless it resumes.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use loom_core::{ActorError, ChunkType, Event, StreamChunk};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    conversation_input, parts_text, result_text, serve_numbered, speaker, start_request, token,
    EarlyFailure, Numbered, NumberedEvents,
};
use crate::error::ApiError;
use crate::extract::{LoomJson, LoomPath, TraceParent};
use crate::runlog::{RunStatus, RunTarget};
use crate::state::ServerState;
use crate::store::DisconnectPolicy;

/// The header that tells the AI SDK the body is a UI message stream.
const STREAM_HEADER: HeaderName = HeaderName::from_static("x-vercel-ai-ui-message-stream");

/// `useChat`'s request body (fields Loom has no use for are ignored).
#[derive(Debug, Deserialize)]
pub(crate) struct ChatBody {
    id: String,
    #[serde(default)]
    messages: Vec<Value>,
}

/// The AI SDK view of one run, fed its chunks in order (see the module docs).
#[derive(Debug)]
pub(crate) struct AiSdkMapping {
    run_id: String,
    /// The `start` part's `messageId`: `msg_<run id>`, or the assistant message a
    /// continuation adds to ([`continuing`](Self::continuing)).
    message_id: String,
    started: bool,
    /// Open text parts by speaker (`None`: the run itself): the part's id and its chunks'
    /// step; and how many were opened.
    texts: BTreeMap<Option<String>, (String, Option<String>)>,
    opened: usize,
    said: bool,
    /// Open tool inputs by speaker and the call's index, and how many were opened (ids made
    /// here are numbered, never reused by a re-run).
    calls: BTreeMap<(Option<String>, u64), ToolInput>,
    calls_opened: usize,
}

impl AiSdkMapping {
    /// A mapping for run `run_id`.
    pub(crate) fn new(run_id: impl Into<String>) -> Self {
        let run_id = run_id.into();
        Self {
            message_id: format!("msg_{run_id}"),
            run_id,
            started: false,
            texts: BTreeMap::new(),
            opened: 0,
            said: false,
            calls: BTreeMap::new(),
            calls_opened: 0,
        }
    }

    /// A run that goes on with the chat's last message, assistant message `message_id` (a
    /// tool's result sent back, `sendAutomaticallyWhen`): its parts go to that message, as
    /// the AI SDK's own servers do, not to a new one holding a copy of it.
    pub(crate) fn continuing(mut self, message_id: Option<&str>) -> Self {
        if let Some(id) = message_id {
            self.message_id = id.to_owned();
        }
        self
    }

    /// The parts `chunk` adds (`[DONE]` as the string it is on the wire).
    pub(crate) fn map(&mut self, chunk: &StreamChunk) -> Vec<Value> {
        let mut parts = Vec::new();
        if !self.started {
            self.started = true;
            // One model step per run: the client splits a message's history at its steps
            // (what the model said before and after a tool's result).
            parts.push(json!({ "type": "start", "messageId": self.message_id }));
            parts.push(json!({ "type": "start-step" }));
        }
        match (chunk.kind, chunk.event) {
            (ChunkType::Start, _) => {
                if let Some(attempt) = chunk.attempt.filter(|&a| a > 1) {
                    self.close_texts(&mut parts);
                    let why = format!("superseded by attempt {attempt}");
                    self.end_calls(|_| true, Some(&why), &mut parts);
                    parts.push(data("superseded", None, json!({ "attempt": attempt })));
                }
            }
            (_, Some(marker)) => {
                let Some(step) = &chunk.step else {
                    return parts;
                };
                let status = match marker {
                    Event::ActionStart => "running",
                    Event::ActionComplete => "done",
                    Event::ActionFailed => "failed",
                    Event::ActionRetry => {
                        self.close_texts_of(step, &mut parts);
                        let why = format!("superseded by a retry of step {step}");
                        self.end_calls(|of| of == Some(&**step), Some(&why), &mut parts);
                        parts.push(data("superseded", None, json!({ "step": step })));
                        "retrying"
                    }
                    // A marker this version does not know says nothing to the client.
                    _ => return parts,
                };
                let mut value = json!({ "step": step, "status": status });
                // A step's parts end with it, not with the run: its calls are ready to run
                // once it completed, and were never made when it failed.
                let of_step = |of: Option<&str>| of == Some(&**step);
                match marker {
                    Event::ActionComplete => {
                        value["result"] = chunk.data.clone().unwrap_or(Value::Null);
                        self.close_texts_of(step, &mut parts);
                        self.end_calls(of_step, None, &mut parts);
                    }
                    Event::ActionFailed => {
                        let error = chunk.data.as_ref().and_then(|d| d.get("error"));
                        value["error"] = error.cloned().unwrap_or(Value::Null);
                        self.close_texts_of(step, &mut parts);
                        let why = format!("step {step} failed");
                        self.end_calls(of_step, Some(&why), &mut parts);
                    }
                    _ => {}
                }
                parts.push(data("step", Some(step), value));
            }
            (ChunkType::Data, None) => {
                if let Some(text) = token(chunk) {
                    let id = self.text(speaker(chunk), chunk.step.as_deref(), &mut parts);
                    parts.push(json!({ "type": "text-delta", "id": id, "delta": text }));
                } else if let Some(call) = chunk.data.as_ref().and_then(|d| d.get("tool_call")) {
                    self.call(chunk, call, &mut parts);
                } else {
                    let mut value = json!({ "data": chunk.data });
                    if let Some(name) = speaker(chunk) {
                        value["speaker"] = json!(name);
                    }
                    parts.push(data("data", None, value));
                }
            }
            (ChunkType::Progress, None) => {
                let id = speaker(chunk).unwrap_or("run");
                let mut value = json!(chunk.progress);
                if let Some(name) = speaker(chunk) {
                    value["speaker"] = json!(name);
                }
                parts.push(data("progress", Some(id), value));
            }
            (ChunkType::Complete, None) => {
                let result = chunk.data.as_ref();
                if !self.said && self.calls.is_empty() {
                    let text = result_text(result);
                    if !text.is_empty() {
                        let id = self.text(None, None, &mut parts);
                        parts.push(json!({ "type": "text-delta", "id": id, "delta": text }));
                    }
                }
                self.close_texts(&mut parts);
                let called = !self.calls.is_empty();
                self.end_calls(|_| true, None, &mut parts);
                let reason = match result
                    .and_then(|r| r.get("finish_reason"))
                    .and_then(Value::as_str)
                {
                    Some("length") => "length",
                    Some("content_filter") => "content-filter",
                    Some("tool_calls") => "tool-calls",
                    _ if called => "tool-calls",
                    _ => "stop",
                };
                let usage = result
                    .and_then(|r| r.get("usage"))
                    .cloned()
                    .unwrap_or(Value::Null);
                parts.push(json!({ "type": "finish-step" }));
                parts.push(json!({
                    "type": "finish", "finishReason": reason,
                    "messageMetadata": { "runId": self.run_id, "result": result, "usage": usage },
                }));
                parts.push(Value::String("[DONE]".into()));
            }
            (ChunkType::Error, None) => {
                self.close_texts(&mut parts);
                let info = chunk.error_info();
                // A tool input the run's end cut short is never left streaming.
                let why = format!("the run ended: {}", info.code.as_str());
                self.end_calls(|_| true, Some(&why), &mut parts);
                parts.push(json!({
                    "type": "error", "errorText": format!("{}: {}", info.code.as_str(), info.message),
                }));
                parts.push(Value::String("[DONE]".into()));
            }
        }
        parts
    }

    /// The open text part of `name` (whose chunks come from workflow step `step`), started
    /// now if needed.
    fn text(&mut self, name: Option<&str>, step: Option<&str>, parts: &mut Vec<Value>) -> String {
        self.said = true;
        let key = name.map(str::to_owned);
        if let Some((id, _)) = self.texts.get(&key) {
            return id.clone();
        }
        let id = format!("txt_{}_{}", self.run_id, self.opened);
        self.opened += 1;
        let mut start = json!({ "type": "text-start", "id": id });
        if let Some(name) = name {
            start["providerMetadata"] = json!({ "loom": { "speaker": name } });
        }
        parts.push(start);
        self.texts
            .insert(key, (id.clone(), step.map(str::to_owned)));
        id
    }

    /// A tool-call delta of `chunk`'s speaker: calls are told apart by speaker and index.
    fn call(&mut self, chunk: &StreamChunk, call: &Value, parts: &mut Vec<Value>) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let delta = call.get("arguments").and_then(Value::as_str).unwrap_or("");
        let (run_id, opened) = (&self.run_id, &mut self.calls_opened);
        let key = (speaker(chunk).map(str::to_owned), index);
        let entry = self.calls.entry(key).or_insert_with(|| {
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("call_{run_id}_{opened}"), str::to_owned);
            *opened += 1;
            let name = call
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            parts.push(json!({
                "type": "tool-input-start", "toolCallId": id, "toolName": name, "dynamic": true,
            }));
            ToolInput {
                id,
                name,
                input: String::new(),
                step: chunk.step.as_deref().map(str::to_owned),
            }
        });
        if !delta.is_empty() {
            entry.input.push_str(delta);
            parts.push(json!({
                "type": "tool-input-delta", "toolCallId": entry.id, "inputTextDelta": delta,
            }));
        }
    }

    /// Ends the open text parts of workflow step `step`: its own and its team members'.
    fn close_texts_of(&mut self, step: &str, parts: &mut Vec<Value>) {
        self.texts.retain(|name, (id, of)| {
            let closing = of.as_deref() == Some(step) || name.as_deref() == Some(step);
            if closing {
                parts.push(json!({ "type": "text-end", "id": id }));
            }
            !closing
        });
    }

    fn close_texts(&mut self, parts: &mut Vec<Value>) {
        for (_, (id, _)) in std::mem::take(&mut self.texts) {
            parts.push(json!({ "type": "text-end", "id": id }));
        }
    }

    /// Ends the open tool calls made inside a step `of` accepts (`None`: outside any step).
    /// `cut` says why their input was cut short (a re-run, a retry, a failure): each then ends
    /// with `tool-input-error`. Otherwise each ends with `tool-input-available` and its
    /// parsed input (none: `{}`), or `tool-input-error` when the model's input is not JSON
    /// (cut by its token limit, say).
    fn end_calls(
        &mut self,
        of: impl Fn(Option<&str>) -> bool,
        cut: Option<&str>,
        parts: &mut Vec<Value>,
    ) {
        self.calls.retain(|_, call| {
            if !of(call.step.as_deref()) {
                return true;
            }
            let text = match call.input.trim() {
                "" => "{}",
                _ => call.input.as_str(),
            };
            let input = match cut {
                Some(why) => Err(why.to_owned()),
                None => serde_json::from_str::<Value>(text)
                    .map_err(|e| format!("the model's tool input is not valid JSON: {e}")),
            };
            parts.push(match input {
                Ok(input) => json!({
                    "type": "tool-input-available", "toolCallId": call.id,
                    "toolName": call.name, "input": input, "dynamic": true,
                }),
                Err(why) => json!({
                    "type": "tool-input-error", "toolCallId": call.id, "toolName": call.name,
                    "input": call.input, "errorText": why, "dynamic": true,
                }),
            });
            false
        });
    }
}

/// A tool call's input as it streams in.
#[derive(Debug)]
struct ToolInput {
    id: String,
    name: String,
    /// The argument text so far.
    input: String,
    /// The workflow step its chunks came from.
    step: Option<String>,
}

/// A `data-loom-<name>` part; parts with the same `id` replace each other on the client.
fn data(name: &str, id: Option<&str>, value: Value) -> Value {
    let mut part = json!({ "type": format!("data-loom-{name}"), "data": value });
    if let Some(id) = id {
        part["id"] = json!(id);
    }
    part
}

impl NumberedEvents for AiSdkMapping {
    fn map(&mut self, chunk: &StreamChunk) -> Vec<Value> {
        AiSdkMapping::map(self, chunk)
    }

    fn write(number: u64, logged: bool, part: Value, out: &mut Vec<u8>) {
        let text = match part {
            Value::String(done) => done,
            part => part.to_string(),
        };
        if logged {
            out.extend_from_slice(format!("id: {number}\n").as_bytes());
        }
        out.extend_from_slice(format!("data: {text}\n\n").as_bytes());
    }
}

/// `useChat`'s UI messages in Chat Completions' shape: each message's text parts, joined;
/// an assistant message's tool parts (`dynamic-tool`, `tool-<name>`) that have a result
/// become its `tool_calls` and a `tool` message with that result each, split where a new
/// step starts (`step-start`), as the model saw them. A call with no result yet is left out
/// (a model refuses a call that is not answered). A message with neither `parts` nor a
/// text `content` is a 400, and a `file` part, or a user message with no text part, a 422 (no
/// model input here takes files): never an empty prompt the model answers anyway.
fn chat_messages(messages: &[Value]) -> Result<Vec<Value>, ApiError> {
    // Only text parts: a reasoning part has a `text` too.
    let text_of = |parts: &[Value]| parts_text(parts.iter().filter(|p| p["type"] == "text"));
    let mut out = Vec::new();
    for m in messages {
        let Some(parts) = m.get("parts").and_then(Value::as_array) else {
            let Some(content) = m["content"].as_str() else {
                return Err(ApiError::BadRequest(
                    "a message needs `parts` (a list) or a text `content`".into(),
                ));
            };
            out.push(json!({ "role": m["role"], "content": content }));
            continue;
        };
        if parts.iter().any(|p| p["type"] == "file") {
            return Err(ApiError::Run(ActorError::bad_input(
                "file parts are not supported: send text",
            )));
        }
        if m["role"] != "assistant" {
            let Some(text) = text_of(parts) else {
                return Err(ApiError::Run(ActorError::bad_input(
                    "a user or system message needs a text part with a string `text`",
                )));
            };
            out.push(json!({ "role": m["role"], "content": text }));
            continue;
        }
        let mut step = Step::default();
        for part in parts {
            let kind = part["type"].as_str().unwrap_or("");
            let tool = match kind {
                "step-start" => {
                    step.flush(&mut out);
                    continue;
                }
                "text" => {
                    step.text.push_str(part["text"].as_str().unwrap_or(""));
                    continue;
                }
                "dynamic-tool" => part["toolName"].as_str().unwrap_or(""),
                _ => match kind.strip_prefix("tool-") {
                    Some(name) => name,
                    None => continue,
                },
            };
            let result = match part["state"].as_str() {
                Some("output-available") => match &part["output"] {
                    Value::String(text) => text.clone(),
                    output => output.to_string(),
                },
                Some("output-error") => part["errorText"].as_str().unwrap_or("").to_owned(),
                _ => continue,
            };
            let arguments = match &part["input"] {
                Value::String(text) => text.clone(),
                input => input.to_string(),
            };
            let id = &part["toolCallId"];
            step.calls.push(json!({
                "id": id, "type": "function",
                "function": { "name": tool, "arguments": arguments },
            }));
            step.results
                .push(json!({ "role": "tool", "tool_call_id": id, "content": result }));
        }
        step.flush(&mut out);
    }
    Ok(out)
}

/// One step of an assistant UI message: its text, the calls it made and their results.
#[derive(Default)]
struct Step {
    text: String,
    calls: Vec<Value>,
    results: Vec<Value>,
}

impl Step {
    /// The step as an assistant message and its tool messages, if it said or did anything.
    fn flush(&mut self, out: &mut Vec<Value>) {
        let Self {
            text,
            calls,
            results,
        } = std::mem::take(self);
        if text.is_empty() && calls.is_empty() {
            return;
        }
        let mut message = json!({ "role": "assistant", "content": text });
        if !calls.is_empty() {
            if text.is_empty() {
                message["content"] = Value::Null;
            }
            message["tool_calls"] = Value::Array(calls);
        }
        out.push(message);
        out.extend(results);
    }
}

/// `POST /v1/ai-sdk/{agent}`: a new run for the chat, streamed as UI message parts.
pub(crate) async fn send(
    State(state): State<ServerState>,
    LoomPath(agent): LoomPath,
    TraceParent(traceparent): TraceParent,
    LoomJson(body): LoomJson<ChatBody>,
) -> Result<Response, ApiError> {
    let target = RunTarget::named(&agent);
    let takes_messages = state.runs().takes_messages(&target);
    let input = conversation_input(takes_messages, chat_messages(&body.messages)?, Map::new())?;
    let chat = chat_name(&body.id)?;
    let continued = body
        .messages
        .last()
        .filter(|m| m["role"] == "assistant")
        .and_then(|m| m["id"].as_str());
    let permit = state.stream_permit()?;
    let run = state
        .runs()
        .start(start_request(
            target,
            input,
            DisconnectPolicy::CancelAfter(state.config().disconnect_grace),
            traceparent,
        ))
        .await?;
    state.runs().name_run(&chat, &run).await?;
    let mapping = AiSdkMapping::new(run.id()).continuing(continued);
    let events = Numbered::new(mapping, None);
    Ok(with_header(
        serve_numbered(&state, &run, permit, events, EarlyFailure::InStream).await?,
    ))
}

/// `GET /v1/ai-sdk/{agent}/{chatId}/stream`: the chat's run of that agent that has not ended,
/// replayed in full; `204` when there is none; `404` for an agent the server does not know.
/// (The agent may be `workflows/<name>`: the path is one wildcard, read from its end.)
pub(crate) async fn resume(
    State(state): State<ServerState>,
    LoomPath(path): LoomPath,
) -> Result<Response, ApiError> {
    let (agent, chat) = path
        .strip_suffix("/stream")
        .and_then(|rest| rest.rsplit_once('/'))
        .ok_or_else(|| ApiError::NotFound("expected /v1/ai-sdk/{agent}/{chatId}/stream".into()))?;
    let target = RunTarget::named(agent);
    if !state.runs().knows(&target).await? {
        return Err(ApiError::NotFound(format!("unknown agent '{agent}'")));
    }
    let Some(run) = state.runs().named(&chat_name(chat)?).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let info = run.info().await?;
    // The chat id names the chat's latest run, whatever its agent: another agent's is not
    // this one's to resume.
    let runs_agent = match &target {
        RunTarget::Actor(actor) => info.actor.as_ref() == Some(actor),
        RunTarget::Workflow(name) => info.workflow.as_ref() == Some(name),
    };
    if !runs_agent || info.status != RunStatus::Running {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let permit = state.stream_permit()?;
    let events = Numbered::new(AiSdkMapping::new(run.id()), None);
    Ok(with_header(
        serve_numbered(&state, &run, permit, events, EarlyFailure::InStream).await?,
    ))
}

/// The name a chat's latest run goes by; a chat id that cannot be one is a 400, and so is one
/// with a `/`, which the resume route's path could not carry.
fn chat_name(chat: &str) -> Result<String, ApiError> {
    if chat.contains('/') {
        return Err(ApiError::BadRequest(
            "invalid chat id: it may not hold '/' (the resume route could not name it)".into(),
        ));
    }
    let name = format!("ai-sdk-chat-{chat}");
    loom_redis::validate_name(&name)
        .map_err(|e| ApiError::BadRequest(format!("invalid chat id: {e}")))?;
    Ok(name)
}

/// The UI message stream's response header on `response`.
pub(crate) fn with_header(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(STREAM_HEADER, HeaderValue::from_static("v1"));
    response
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::dialect::fixtures::data;

    fn parts(chunks: &[StreamChunk]) -> Vec<Value> {
        let mut mapping = AiSdkMapping::new("r");
        chunks.iter().flat_map(|c| mapping.map(c)).collect()
    }

    fn types(parts: &[Value]) -> Vec<String> {
        parts
            .iter()
            .map(|p| {
                p["type"]
                    .as_str()
                    .unwrap_or_else(|| p.as_str().unwrap())
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn tokens_are_a_text_part_then_finish_and_done() {
        let mut complete = StreamChunk::new(ChunkType::Complete, 3);
        complete.data = Some(json!({ "text": "Hi!", "finish_reason": "length", "usage": null }));
        let parts = parts(&[
            StreamChunk::new(ChunkType::Start, 0),
            data(1, json!({ "token": "Hi" }), None),
            data(2, json!({ "token": "!" }), None),
            complete,
        ]);
        assert_eq!(
            types(&parts),
            [
                "start",
                "start-step",
                "text-start",
                "text-delta",
                "text-delta",
                "text-end",
                "finish-step",
                "finish",
                "[DONE]"
            ]
        );
        assert_eq!(parts[0]["messageId"], "msg_r");
        assert_eq!(parts[7]["finishReason"], "length");
        assert_eq!(parts[7]["messageMetadata"]["usage"], Value::Null);
    }

    /// A chat whose last message is the assistant's (a tool's result sent back) goes on in
    /// that message: its id, not a new one, so the client adds to it rather than copying it.
    #[test]
    fn a_continuation_goes_on_in_the_assistant_message() {
        let mut mapping = AiSdkMapping::new("r").continuing(Some("msg_earlier"));
        let parts = mapping.map(&StreamChunk::new(ChunkType::Start, 0));
        assert_eq!(parts[0]["messageId"], "msg_earlier");
        assert_eq!(parts[1]["type"], "start-step");
    }

    #[test]
    fn members_get_named_parts_and_progress_replaces_by_id() {
        let mut progress = StreamChunk::new(ChunkType::Progress, 3);
        progress.progress = Some(Box::new(loom_core::Progress {
            current: 1,
            total: Some(3),
            message: Some("researcher finished".into()),
        }));
        progress.actor = Some("researcher".into());
        let parts = parts(&[
            data(1, json!({ "token": "A" }), Some("researcher")),
            data(2, json!({ "token": "B" }), Some("writer")),
            progress,
        ]);
        assert_eq!(
            parts[2]["providerMetadata"]["loom"]["speaker"],
            "researcher"
        );
        assert_eq!(parts[4]["providerMetadata"]["loom"]["speaker"], "writer");
        let last = parts.last().unwrap();
        assert_eq!(last["type"], "data-loom-progress");
        assert_eq!(last["id"], "researcher");
        assert_eq!(last["data"]["speaker"], "researcher");
    }

    #[test]
    fn a_rerun_ends_the_superseded_tool_call_and_the_new_one_has_only_its_own_input() {
        let call = |seq, arguments: &str| {
            data(
                seq,
                json!({ "tool_call": { "index": 0, "name": "f", "arguments": arguments } }),
                None,
            )
        };
        let mut rerun = StreamChunk::new(ChunkType::Start, 2);
        rerun.attempt = Some(2);
        let parts = parts(&[
            StreamChunk::new(ChunkType::Start, 0),
            call(1, "{\"city\":\"Par"),
            rerun,
            call(3, "{\"city\":\"Rome\"}"),
            crate::dialect::fixtures::complete(4, json!({ "finish_reason": "tool_calls" })),
        ]);
        let of =
            |kind: &str| -> Vec<&Value> { parts.iter().filter(|p| p["type"] == kind).collect() };
        let (started, ended, available) = (
            of("tool-input-start"),
            of("tool-input-error"),
            of("tool-input-available"),
        );
        assert_eq!(
            (started.len(), ended.len(), available.len()),
            (2, 1, 1),
            "{parts:#?}"
        );
        assert_ne!(started[0]["toolCallId"], started[1]["toolCallId"]);
        assert_eq!(ended[0]["toolCallId"], started[0]["toolCallId"]);
        assert_eq!(ended[0]["errorText"], "superseded by attempt 2");
        assert_eq!(available[0]["toolCallId"], started[1]["toolCallId"]);
        assert_eq!(available[0]["input"], json!({ "city": "Rome" }));
        assert_eq!(parts[parts.len() - 2]["finishReason"], "tool-calls");
    }

    #[test]
    fn a_tool_input_that_is_not_json_is_an_input_error_and_none_is_an_empty_object() {
        let call = |seq, index: u64, name: &str, arguments: &str| {
            data(
                seq,
                json!({ "tool_call": { "index": index, "name": name, "arguments": arguments } }),
                None,
            )
        };
        let parts = parts(&[
            StreamChunk::new(ChunkType::Start, 0),
            call(1, 0, "f", "{\"city\": \"Par"),
            call(2, 1, "g", ""),
            crate::dialect::fixtures::complete(3, json!({ "finish_reason": "length" })),
        ]);
        let error = parts
            .iter()
            .find(|p| p["type"] == "tool-input-error")
            .expect("an input error");
        assert_eq!(error["toolName"], "f");
        assert_eq!(error["input"], "{\"city\": \"Par");
        assert!(error["errorText"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"));
        let available: Vec<&Value> = parts
            .iter()
            .filter(|p| p["type"] == "tool-input-available")
            .collect();
        assert_eq!(available.len(), 1, "{parts:#?}");
        assert_eq!(available[0]["toolName"], "g");
        assert_eq!(available[0]["input"], json!({}));
    }

    /// A team running as a workflow step speaks through its members: a retry of the step
    /// ends their text parts too. A run's error ends the tool inputs it cut short.
    #[test]
    fn a_steps_retry_ends_its_members_texts_and_an_error_its_tool_inputs() {
        let mut said = data(1, json!({ "token": "Old" }), Some("writer"));
        said.step = Some("draft".into());
        let mut again = data(3, json!({ "token": "New" }), Some("writer"));
        again.step = Some("draft".into());
        let call =
            json!({ "tool_call": { "index": 0, "id": "c1", "name": "f", "arguments": "{" } });
        let parts = parts(&[
            StreamChunk::new(ChunkType::Start, 0),
            said,
            crate::dialect::fixtures::marker(2, ChunkType::Progress, Event::ActionRetry, "draft"),
            again,
            data(4, call, None),
            StreamChunk::error(5, &ActorError::cancelled()),
        ]);
        let texts: Vec<&Value> = parts.iter().filter(|p| p["type"] == "text-start").collect();
        assert_eq!(texts.len(), 2, "{parts:#?}");
        let first_end = parts
            .iter()
            .position(|p| p["type"] == "text-end" && p["id"] == texts[0]["id"])
            .expect("the first text ends");
        let second_start = parts.iter().position(|p| p == texts[1]).unwrap();
        assert!(first_end < second_start, "{parts:#?}");
        let input_error = parts
            .iter()
            .position(|p| p["type"] == "tool-input-error" && p["toolCallId"] == "c1")
            .expect("the cut call ends");
        let error = parts.iter().position(|p| p["type"] == "error").unwrap();
        assert!(input_error < error, "{parts:#?}");
    }

    /// A tool call made inside a workflow step is ready once the step completes, not at the
    /// run's end; a failed step's text ends with it, its error told, its call never made.
    #[test]
    fn a_steps_calls_and_texts_end_with_the_step() {
        use crate::dialect::fixtures::marker;
        let mut call = data(
            1,
            json!({ "tool_call": { "index": 0, "id": "c1", "name": "f", "arguments": "{}" } }),
            None,
        );
        call.step = Some("first".into());
        let mut said = data(3, json!({ "token": "Half" }), None);
        said.step = Some("second".into());
        let mut failed = marker(4, ChunkType::Progress, Event::ActionFailed, "second");
        failed.data = Some(json!({ "error": { "code": "upstream", "message": "broke" } }));
        let parts = parts(&[
            StreamChunk::new(ChunkType::Start, 0),
            call,
            marker(2, ChunkType::Progress, Event::ActionComplete, "first"),
            said,
            failed,
        ]);
        let at = |kind: &str| parts.iter().position(|p| p["type"] == kind).expect(kind);
        let step_done = parts
            .iter()
            .position(|p| p["type"] == "data-loom-step" && p["data"]["status"] == "done")
            .expect("the first step's end");
        assert!(at("tool-input-available") < step_done, "{parts:#?}");
        let step_failed = parts
            .iter()
            .position(|p| p["type"] == "data-loom-step" && p["data"]["status"] == "failed")
            .expect("the second step's failure");
        assert!(at("text-end") < step_failed, "{parts:#?}");
        assert_eq!(parts[step_failed]["data"]["error"]["message"], "broke");
    }

    #[test]
    fn a_chat_id_with_a_slash_is_refused() {
        assert_eq!(chat_name("a/b").unwrap_err().status(), 400);
        assert_eq!(chat_name("chat-1").unwrap(), "ai-sdk-chat-chat-1");
    }

    #[test]
    fn a_message_without_text_or_with_a_file_is_refused() {
        for bad in [
            json!([{ "role": "user" }]),
            json!([{ "role": "user", "parts": "x" }]),
        ] {
            let refused = chat_messages(bad.as_array().unwrap()).unwrap_err();
            assert_eq!(refused.status(), 400, "{bad}");
        }
        let file = json!([{ "role": "user", "parts": [
            { "type": "file", "mediaType": "image/png", "url": "data:," },
        ]}]);
        let refused = chat_messages(file.as_array().unwrap()).unwrap_err();
        assert_eq!(refused.code(), "bad_input");
        assert_eq!(refused.status(), 422);
        for parts in [
            json!([]),
            json!([{ "type": "text" }]),
            json!([{ "type": "text", "text": 5 }]),
            json!([{ "type": "step-start" }]),
        ] {
            let bad = json!([{ "role": "user", "parts": parts }]);
            let refused = chat_messages(bad.as_array().unwrap()).unwrap_err();
            assert_eq!(
                (refused.status().as_u16(), refused.code()),
                (422, "bad_input"),
                "{parts}"
            );
        }
    }

    /// `useChat` sends the tool calls it answered back inside the assistant message: each
    /// step becomes an assistant message with its calls, followed by their results, so the
    /// model sees what it asked and what it got; a call not answered yet is left out.
    #[test]
    fn tool_parts_come_back_as_calls_and_results() {
        let ui = json!([
            { "role": "user", "parts": [{ "type": "text", "text": "weather?" }] },
            { "role": "assistant", "parts": [
                { "type": "step-start" },
                { "type": "text", "text": "Let me check." },
                { "type": "dynamic-tool", "toolName": "weather", "toolCallId": "c1",
                  "state": "output-available", "input": { "city": "Paris" }, "output": { "c": 21 } },
                { "type": "tool-clock", "toolCallId": "c2", "state": "input-available", "input": {} },
                { "type": "step-start" },
                { "type": "text", "text": "It is 21." },
            ]},
        ]);
        let messages = chat_messages(ui.as_array().unwrap()).unwrap();
        assert_eq!(
            messages,
            vec![
                json!({ "role": "user", "content": "weather?" }),
                json!({ "role": "assistant", "content": "Let me check.", "tool_calls": [{
                    "id": "c1", "type": "function",
                    "function": { "name": "weather", "arguments": "{\"city\":\"Paris\"}" },
                }]}),
                json!({ "role": "tool", "tool_call_id": "c1", "content": "{\"c\":21}" }),
                json!({ "role": "assistant", "content": "It is 21." }),
            ]
        );
    }

    #[test]
    fn a_rerun_closes_the_superseded_text_and_an_error_ends_the_stream() {
        let mut rerun = StreamChunk::new(ChunkType::Start, 2);
        rerun.attempt = Some(2);
        let parts = parts(&[
            StreamChunk::new(ChunkType::Start, 0),
            data(1, json!({ "token": "Once" }), None),
            rerun,
            data(3, json!({ "token": "Once" }), None),
            StreamChunk::error(4, &ActorError::cancelled()),
        ]);
        assert_eq!(
            types(&parts),
            [
                "start",
                "start-step",
                "text-start",
                "text-delta",
                "text-end",
                "data-loom-superseded",
                "text-start",
                "text-delta",
                "text-end",
                "error",
                "[DONE]"
            ]
        );
        assert_ne!(parts[2]["id"], parts[6]["id"], "new output, new part");
        assert!(parts[2]["id"].is_string());
        assert!(parts[9]["errorText"]
            .as_str()
            .unwrap()
            .starts_with("cancelled: "));
    }
}
