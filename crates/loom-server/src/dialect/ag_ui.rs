//! AG-UI over SSE: `POST /v1/ag-ui/{agent}` takes a `RunAgentInput` and streams the run as
//! AG-UI events, in the order `@ag-ui/client` verifies (nothing open at `RUN_FINISHED`,
//! nothing after `RUN_ERROR`, a step name never active twice). `{agent}` is an actor type or
//! `workflows/<name>`.
//!
//! **Mapping** ([`AgUiMapping`], pure):
//! - the run's `start` → `RUN_STARTED` (`threadId` from the input, `runId` = Loom's run id);
//! - tokens → `TEXT_MESSAGE_START`/`CONTENT`/`END`, one message per speaker (a team member or a
//!   workflow step, in the message's `name`), opened at its first token;
//! - tool-call deltas → `TOOL_CALL_START`/`ARGS`/`END`, the calls a speaker makes together
//!   under one `parentMessageId` (its open text message, else one named for them), so the
//!   client keeps them as one assistant message; coming back as input, calls a client split
//!   into one message each are joined again;
//! - a workflow's `action-start` → `STEP_STARTED`, its `action-complete`/`action-failed` →
//!   `STEP_FINISHED` (after a `CUSTOM` `loom.step-failed` with the step's error when it
//!   failed); a team member's first chunk → `STEP_STARTED` named after it (`<step>/<member>`
//!   inside a workflow step, whose end finishes it);
//! - progress and any other data → `CUSTOM` (`loom.progress`, `loom.data`, with the chunk's
//!   `actor`/`step`);
//! - `complete` → every open message, tool call and step closed, then `RUN_FINISHED` with the
//!   result; `error` (also a cancel, a deadline, a lost worker) → every open message and tool
//!   call closed, then `RUN_ERROR` with the code.
//!
//! **Superseded output.** A re-run (`start` with `attempt` ≥ 2) and a workflow's
//! `action-retry` close the open messages and tool calls they supersede (tool calls are told
//! apart by speaker and index, and ids made here are never reused) and send `CUSTOM` `loom.superseded`
//! (`{"attempt"}` or `{"step"}`): what those messages said stays in the client's history,
//! and the new output comes in new messages.
//!
//! **Numbering and re-attach.** Every frame has `id: <n>`, its position in the event
//! sequence generated from the run's `seq` 0. A client re-attaches at
//! `GET /v1/runs/{id}/stream?format=ag-ui` with `Last-Event-ID` (and `thread_id`, which the
//! events repeat; the run id when absent) and gets the events after it.
//!
//! **Disconnect** is a direct stream's: the run is cancelled after the disconnect grace
//! unless a reader re-attaches.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::response::Response;
use loom_core::{ChunkType, Event, StreamChunk};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    chat_tools, conversation_input, serve_numbered, speaker, start_request, token, EarlyFailure,
    Numbered, NumberedEvents,
};
use crate::error::ApiError;
use crate::extract::{LoomJson, LoomPath, TraceParent};
use crate::runlog::RunTarget;
use crate::state::ServerState;
use crate::store::DisconnectPolicy;

/// The body of `POST /v1/ag-ui/{agent}`: AG-UI's `RunAgentInput` (fields Loom has no use for,
/// such as `state` and `context`, are ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunAgentInput {
    thread_id: String,
    #[serde(default)]
    messages: Vec<Value>,
    #[serde(default)]
    tools: Vec<Value>,
    forwarded_props: Option<Value>,
}

/// Who a chunk is from: its workflow step and its team member (either may be absent). A
/// member of one team step is not the same member of another, nor a step of its name.
type Who = (Option<String>, Option<String>);

fn who(chunk: &StreamChunk) -> Who {
    (
        chunk.step.as_deref().map(str::to_owned),
        chunk.actor.as_deref().map(str::to_owned),
    )
}

/// The AG-UI view of one run, fed its chunks in order (see the module docs).
#[derive(Debug)]
pub(crate) struct AgUiMapping {
    thread_id: String,
    run_id: String,
    started: bool,
    /// Open text messages by who speaks ([`Who`]; `(None, None)`: the run itself), and how
    /// many were opened.
    messages: BTreeMap<Who, String>,
    opened: usize,
    /// Open tool calls by who makes them and the call's index; and how many were opened (ids
    /// made here are numbered, never reused by a re-run).
    calls: BTreeMap<(Who, u64), String>,
    calls_opened: usize,
    /// The message each speaker's tool calls go in (their `parentMessageId`), from its first
    /// open call on: its open text message's, or one named for its calls, so calls made
    /// together are one assistant message.
    parents: BTreeMap<Who, String>,
    /// Open steps — workflow steps, and team members (named `<step>/<member>` inside a
    /// workflow step) — each with the workflow step it is inside, which closes it.
    steps: BTreeMap<String, Option<String>>,
}

impl AgUiMapping {
    /// A mapping for run `run_id` of thread `thread_id`.
    pub(crate) fn new(thread_id: impl Into<String>, run_id: impl Into<String>) -> Self {
        Self {
            thread_id: thread_id.into(),
            run_id: run_id.into(),
            started: false,
            messages: BTreeMap::new(),
            opened: 0,
            calls: BTreeMap::new(),
            calls_opened: 0,
            parents: BTreeMap::new(),
            steps: BTreeMap::new(),
        }
    }

    /// The events `chunk` adds.
    pub(crate) fn map(&mut self, chunk: &StreamChunk) -> Vec<Value> {
        let mut events = Vec::new();
        if !self.started {
            self.started = true;
            events.push(json!({
                "type": "RUN_STARTED", "threadId": self.thread_id, "runId": self.run_id,
            }));
        }
        match (chunk.kind, chunk.event) {
            (ChunkType::Start, _) => {
                if let Some(attempt) = chunk.attempt.filter(|&a| a > 1) {
                    self.close_messages(&mut events);
                    self.close_calls(&mut events);
                    events.push(custom("loom.superseded", json!({ "attempt": attempt })));
                }
            }
            (_, Some(Event::ActionStart)) => {
                if let Some(step) = &chunk.step {
                    self.step_started(step.to_string(), None, &mut events);
                }
            }
            (_, Some(Event::ActionComplete | Event::ActionFailed)) => {
                if let Some(step) = &chunk.step {
                    self.close_messages_of(Some(step), &mut events);
                    // A step's calls end with it, not with the run.
                    self.close_calls_of(Some(step), &mut events);
                    if chunk.event == Some(Event::ActionFailed) {
                        // STEP_FINISHED carries no outcome: a failed step (`continue_on_error`)
                        // says why here.
                        let error = chunk.data.as_ref().and_then(|d| d.get("error")).cloned();
                        let value = json!({ "step": step, "error": error });
                        events.push(custom("loom.step-failed", value));
                    }
                    // Its team members' steps end with it, before it.
                    let inside: Vec<String> = self
                        .steps
                        .iter()
                        .filter(|(_, of)| of.as_deref() == Some(&**step))
                        .map(|(name, _)| name.clone())
                        .collect();
                    for name in inside {
                        self.steps.remove(&name);
                        events.push(json!({ "type": "STEP_FINISHED", "stepName": name }));
                    }
                    if self.steps.remove(&**step).is_some() {
                        events.push(json!({ "type": "STEP_FINISHED", "stepName": step }));
                    }
                }
            }
            (_, Some(Event::ActionRetry)) => {
                self.close_messages_of(chunk.step.as_deref(), &mut events);
                self.close_calls_of(chunk.step.as_deref(), &mut events);
                events.push(custom("loom.superseded", json!({ "step": chunk.step })));
            }
            (ChunkType::Data, None) => {
                self.member_started(chunk, &mut events);
                if let Some(text) = token(chunk) {
                    let id = self.message(chunk, &mut events);
                    if !text.is_empty() {
                        events.push(json!({
                            "type": "TEXT_MESSAGE_CONTENT", "messageId": id, "delta": text,
                        }));
                    }
                } else if let Some(call) = chunk.data.as_ref().and_then(|d| d.get("tool_call")) {
                    self.call(chunk, call, &mut events);
                } else {
                    events.push(custom("loom.data", tagged(chunk, chunk.data.clone())));
                }
            }
            (ChunkType::Progress, None) => {
                self.member_started(chunk, &mut events);
                let progress = chunk.progress.as_ref().map(|p| json!(p));
                events.push(custom("loom.progress", tagged(chunk, progress)));
            }
            (ChunkType::Complete, _) => {
                self.close_messages(&mut events);
                self.close_calls(&mut events);
                for step in std::mem::take(&mut self.steps).into_keys() {
                    events.push(json!({ "type": "STEP_FINISHED", "stepName": step }));
                }
                let mut finished = json!({
                    "type": "RUN_FINISHED", "threadId": self.thread_id, "runId": self.run_id,
                });
                if let Some(result) = chunk.data.as_ref().filter(|d| !d.is_null()) {
                    finished["result"] = result.clone();
                }
                events.push(finished);
            }
            (ChunkType::Error, _) => {
                // What was said stays said, as after a complete run: the open messages and
                // tool calls end before the error does.
                self.close_messages(&mut events);
                self.close_calls(&mut events);
                let info = chunk.error_info();
                events.push(json!({
                    "type": "RUN_ERROR", "message": info.message, "code": info.code.as_str(),
                }));
            }
            // Markers on other chunk types carry nothing more for AG-UI.
            (ChunkType::Data | ChunkType::Progress, Some(_)) => {}
        }
        events
    }

    fn step_started(&mut self, name: String, inside: Option<String>, events: &mut Vec<Value>) {
        if let std::collections::btree_map::Entry::Vacant(open) = self.steps.entry(name) {
            events.push(json!({ "type": "STEP_STARTED", "stepName": open.key() }));
            open.insert(inside);
        }
    }

    /// A team member's step, at its first chunk (in a workflow step, `<step>/<member>`: the
    /// member of another team step, or one named like a workflow step, is another step).
    fn member_started(&mut self, chunk: &StreamChunk, events: &mut Vec<Value>) {
        let Some(member) = &chunk.actor else { return };
        let name = match &chunk.step {
            Some(step) => format!("{step}/{member}"),
            None => member.to_string(),
        };
        self.step_started(name, chunk.step.as_deref().map(str::to_owned), events);
    }

    /// The open message of `chunk`'s speaker, started now if needed.
    fn message(&mut self, chunk: &StreamChunk, events: &mut Vec<Value>) -> String {
        let key = who(chunk);
        if let Some(id) = self.messages.get(&key) {
            return id.clone();
        }
        let id = format!("msg_{}_{}", self.run_id, self.opened);
        self.opened += 1;
        let mut start =
            json!({ "type": "TEXT_MESSAGE_START", "messageId": id, "role": "assistant" });
        if let Some(name) = speaker(chunk) {
            start["name"] = json!(name);
        }
        events.push(start);
        self.messages.insert(key, id.clone());
        id
    }

    /// A tool-call delta of `chunk`'s speaker: calls are told apart by speaker and index.
    fn call(&mut self, chunk: &StreamChunk, call: &Value, events: &mut Vec<Value>) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let key = (who(chunk), index);
        let id = match self.calls.get(&key) {
            Some(id) => id.clone(),
            None => {
                let id = call.get("id").and_then(Value::as_str).map_or_else(
                    || format!("call_{}_{}", self.run_id, self.calls_opened),
                    str::to_owned,
                );
                self.calls_opened += 1;
                let name = call.get("name").and_then(Value::as_str).unwrap_or("");
                let parent = match self.parents.get(&key.0) {
                    Some(parent) => parent.clone(),
                    None => {
                        let parent = self.messages.get(&key.0).cloned().unwrap_or_else(|| {
                            self.opened += 1;
                            format!("msg_{}_{}", self.run_id, self.opened - 1)
                        });
                        self.parents.insert(key.0.clone(), parent.clone());
                        parent
                    }
                };
                events.push(json!({
                    "type": "TOOL_CALL_START", "toolCallId": id, "toolCallName": name,
                    "parentMessageId": parent,
                }));
                self.calls.insert(key, id.clone());
                id
            }
        };
        if let Some(delta) = call.get("arguments").and_then(Value::as_str) {
            if !delta.is_empty() {
                events.push(json!({ "type": "TOOL_CALL_ARGS", "toolCallId": id, "delta": delta }));
            }
        }
    }

    /// Closes the open messages of workflow step `step` — its own and its team members' —
    /// or, for `None`, the run's own.
    fn close_messages_of(&mut self, step: Option<&str>, events: &mut Vec<Value>) {
        self.messages.retain(|(of, member), id| {
            let closing = match step {
                Some(step) => of.as_deref() == Some(step),
                None => of.is_none() && member.is_none(),
            };
            if closing {
                events.push(json!({ "type": "TEXT_MESSAGE_END", "messageId": id }));
            }
            !closing
        });
    }

    fn close_messages(&mut self, events: &mut Vec<Value>) {
        for id in std::mem::take(&mut self.messages).into_values() {
            events.push(json!({ "type": "TEXT_MESSAGE_END", "messageId": id }));
        }
    }

    fn close_calls(&mut self, events: &mut Vec<Value>) {
        for id in std::mem::take(&mut self.calls).into_values() {
            events.push(json!({ "type": "TOOL_CALL_END", "toolCallId": id }));
        }
        self.parents.clear();
    }

    /// Closes the open tool calls made inside workflow step `step` (by the step itself or a
    /// team member in it).
    fn close_calls_of(&mut self, step: Option<&str>, events: &mut Vec<Value>) {
        let Some(step) = step else { return };
        self.calls.retain(|((of, _), _), id| {
            let closing = of.as_deref() == Some(step);
            if closing {
                events.push(json!({ "type": "TOOL_CALL_END", "toolCallId": id }));
            }
            !closing
        });
        // A speaker with no call open any more: its next calls go in a message of their own.
        let calling: BTreeSet<&Who> = self.calls.keys().map(|(who, _)| who).collect();
        self.parents.retain(|who, _| calling.contains(who));
    }
}

fn custom(name: &str, value: Value) -> Value {
    json!({ "type": "CUSTOM", "name": name, "value": value })
}

/// A chunk's payload with the speaker it is tagged with.
fn tagged(chunk: &StreamChunk, payload: Option<Value>) -> Value {
    let mut value = json!({ "data": payload });
    if let Some(actor) = &chunk.actor {
        value["actor"] = json!(actor);
    }
    if let Some(step) = &chunk.step {
        value["step"] = json!(step);
    }
    value
}

/// AG-UI's messages in Chat Completions' shape (the shape actors that take a conversation
/// read). `reasoning` and `activity` messages are the agent's own record, not conversation:
/// left out. A tool message's `error` is what the model is told the tool answered. Calls a
/// client keeps as assistant messages of one call each (as it does for a server that names no
/// `parentMessageId`) are one message again: a model answers calls made together with one
/// assistant message, and OpenAI refuses a conversation that splits it.
fn chat_messages(messages: Vec<Value>) -> Vec<Value> {
    let mut conversation: Vec<Value> = Vec::new();
    for message in messages
        .into_iter()
        .filter(|m| !matches!(m["role"].as_str(), Some("reasoning" | "activity")))
        .map(|m| {
            let role = match m["role"].as_str() {
                Some("developer") => "system",
                Some(role) => role,
                None => "user",
            };
            let content = match m.get("error").and_then(Value::as_str) {
                Some(error) if role == "tool" => json!(format!("error: {error}")),
                _ => m["content"].clone(),
            };
            let mut out = json!({ "role": role, "content": content });
            if let Some(Value::Array(calls)) = m.get("toolCalls") {
                out["tool_calls"] = Value::Array(calls.clone());
            }
            if let Some(id) = m.get("toolCallId") {
                out["tool_call_id"] = id.clone();
            }
            out
        })
    {
        let calls_only = message["role"] == "assistant"
            && (message["content"].is_null() || message["content"] == "");
        let previous = conversation
            .last_mut()
            .filter(|m| m["role"] == "assistant")
            .and_then(|m| m["tool_calls"].as_array_mut());
        match (calls_only, previous, message["tool_calls"].as_array()) {
            (true, Some(previous), Some(calls)) => previous.extend(calls.iter().cloned()),
            _ => conversation.push(message),
        }
    }
    conversation
}

/// `POST /v1/ag-ui/{agent}`.
pub(crate) async fn run(
    State(state): State<ServerState>,
    LoomPath(agent): LoomPath,
    TraceParent(traceparent): TraceParent,
    LoomJson(request): LoomJson<RunAgentInput>,
) -> Result<Response, ApiError> {
    let target = RunTarget::named(&agent);
    let input = match request
        .forwarded_props
        .as_ref()
        .and_then(|p| p.get("input"))
    {
        Some(input) => input.clone(),
        None => {
            let mut sampling = Map::new();
            if !request.tools.is_empty() {
                sampling.insert("tools".into(), chat_tools(&request.tools));
            }
            let takes_messages = state.runs().takes_messages(&target);
            conversation_input(takes_messages, chat_messages(request.messages), sampling)?
        }
    };
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
    let mapping = AgUiMapping::new(request.thread_id, run.id());
    let events = Numbered::new(mapping, None);
    serve_numbered(&state, &run, permit, events, EarlyFailure::InStream).await
}

impl NumberedEvents for AgUiMapping {
    fn map(&mut self, chunk: &StreamChunk) -> Vec<Value> {
        AgUiMapping::map(self, chunk)
    }

    fn write(number: u64, logged: bool, event: Value, out: &mut Vec<u8>) {
        if logged {
            out.extend_from_slice(format!("id: {number}\n").as_bytes());
        }
        out.extend_from_slice(format!("data: {event}\n\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use loom_core::ActorError;

    use super::*;
    use crate::dialect::fixtures::{self, marker};

    fn data(seq: u64, value: Value) -> StreamChunk {
        fixtures::data(seq, value, None)
    }

    fn by(mut chunk: StreamChunk, actor: Option<&str>, step: Option<&str>) -> StreamChunk {
        chunk.actor = actor.map(Into::into);
        chunk.step = step.map(Into::into);
        chunk
    }

    fn complete(seq: u64) -> StreamChunk {
        fixtures::complete(seq, json!({ "ok": true }))
    }

    /// The `delta`s of the `kind` events whose `key` is `id`, joined: a message's text, a
    /// call's arguments.
    fn joined(events: &[Value], kind: &str, key: &str, id: &str) -> String {
        events
            .iter()
            .filter(|e| e["type"] == kind && e[key] == id)
            .map(|e| e["delta"].as_str().unwrap())
            .collect()
    }

    /// The events of `chunks`, checked against the order rules `@ag-ui/client` enforces.
    fn events(chunks: &[StreamChunk]) -> Vec<Value> {
        let mut mapping = AgUiMapping::new("t", "r");
        let events: Vec<Value> = chunks.iter().flat_map(|c| mapping.map(c)).collect();
        let (mut messages, mut steps, mut calls) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        assert_eq!(events[0]["type"], "RUN_STARTED");
        for (i, event) in events.iter().enumerate() {
            let id = |key: &str| event[key].as_str().unwrap().to_owned();
            match event["type"].as_str().unwrap() {
                "TEXT_MESSAGE_START" => assert!(messages.insert(id("messageId")), "{events:?}"),
                "TEXT_MESSAGE_CONTENT" => assert!(messages.contains(&id("messageId"))),
                "TEXT_MESSAGE_END" => assert!(messages.remove(&id("messageId"))),
                "STEP_STARTED" => assert!(steps.insert(id("stepName")), "{events:?}"),
                "STEP_FINISHED" => assert!(steps.remove(&id("stepName")), "{events:?}"),
                "TOOL_CALL_START" => assert!(calls.insert(id("toolCallId"))),
                "TOOL_CALL_ARGS" => assert!(calls.contains(&id("toolCallId"))),
                "TOOL_CALL_END" => assert!(calls.remove(&id("toolCallId"))),
                "RUN_FINISHED" => {
                    assert!(messages.is_empty() && steps.is_empty() && calls.is_empty());
                    assert_eq!(i, events.len() - 1);
                }
                "RUN_ERROR" => assert_eq!(i, events.len() - 1),
                _ => {}
            }
        }
        events
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    fn call_of(seq: u64, step: &str, arguments: &str) -> StreamChunk {
        let call = json!({ "tool_call": { "index": 0, "name": "f", "arguments": arguments } });
        by(data(seq, call), None, Some(step))
    }

    #[test]
    fn reasoning_and_activity_are_left_out_and_a_tool_error_is_its_answer() {
        let messages = chat_messages(vec![
            json!({ "id": "1", "role": "user", "content": "weather?" }),
            json!({ "id": "2", "role": "reasoning", "content": "thinking" }),
            json!({ "id": "3", "role": "activity", "activityType": "x", "content": {} }),
            json!({ "id": "4", "role": "tool", "toolCallId": "c1", "content": "", "error": "failed" }),
        ]);
        assert_eq!(
            messages,
            vec![
                json!({ "role": "user", "content": "weather?" }),
                json!({ "role": "tool", "content": "error: failed", "tool_call_id": "c1" }),
            ]
        );
    }

    /// A failed step says why before it finishes.
    #[test]
    fn a_failed_step_says_why() {
        use crate::dialect::fixtures::marker;
        let mut failed = marker(2, ChunkType::Progress, Event::ActionFailed, "bad");
        failed.data = Some(json!({ "error": { "code": "upstream", "message": "broke" } }));
        let mut mapping = AgUiMapping::new("t", "r");
        let events: Vec<Value> = [
            StreamChunk::new(ChunkType::Start, 0),
            marker(1, ChunkType::Progress, Event::ActionStart, "bad"),
            failed,
        ]
        .iter()
        .flat_map(|c| mapping.map(c))
        .collect();
        let said = events
            .iter()
            .position(|e| e["name"] == "loom.step-failed")
            .expect("the failure told");
        assert_eq!(events[said]["value"]["error"]["message"], "broke");
        assert_eq!(events[said + 1]["type"], "STEP_FINISHED", "{events:#?}");
    }

    /// A tool call made inside a workflow step ends with the step, not with the run.
    #[test]
    fn a_steps_tool_calls_end_with_the_step() {
        use crate::dialect::fixtures::marker;
        let mut call = StreamChunk::new(ChunkType::Data, 1);
        call.data = Some(
            json!({ "tool_call": { "index": 0, "id": "c1", "name": "f", "arguments": "{}" } }),
        );
        call.step = Some("first".into());
        let mut mapping = AgUiMapping::new("t", "r");
        let events: Vec<Value> = [
            StreamChunk::new(ChunkType::Start, 0),
            marker(1, ChunkType::Progress, Event::ActionStart, "first"),
            call,
            marker(3, ChunkType::Progress, Event::ActionComplete, "first"),
        ]
        .iter()
        .flat_map(|c| mapping.map(c))
        .collect();
        let at = |kind: &str| events.iter().position(|e| e["type"] == kind).expect(kind);
        assert!(at("TOOL_CALL_END") < at("STEP_FINISHED"), "{events:#?}");
    }

    #[test]
    fn a_steps_retry_ends_its_own_tool_calls_and_calls_are_told_apart_by_step() {
        let events = events(&[
            marker(0, ChunkType::Progress, Event::ActionStart, "a"),
            marker(1, ChunkType::Progress, Event::ActionStart, "b"),
            call_of(2, "a", "{\"x\":"),
            call_of(3, "b", "{\"y\":2}"),
            marker(4, ChunkType::Progress, Event::ActionRetry, "a"),
            call_of(5, "a", "{\"x\":1}"),
            complete(6),
        ]);
        let started: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == "TOOL_CALL_START")
            .map(|e| e["toolCallId"].as_str().unwrap())
            .collect();
        assert_eq!(started.len(), 3, "{events:#?}");
        let unique: BTreeSet<_> = started.iter().collect();
        assert_eq!(unique.len(), 3, "a retry's call gets a new id: {started:?}");
        // The retry ends step a's call, not step b's.
        let retry = events
            .iter()
            .position(|e| e["name"] == "loom.superseded")
            .unwrap();
        assert_eq!(events[retry - 1]["type"], "TOOL_CALL_END");
        assert_eq!(events[retry - 1]["toolCallId"], started[0]);
        let args_of = |id: &str| joined(&events, "TOOL_CALL_ARGS", "toolCallId", id);
        assert_eq!(args_of(started[1]), "{\"y\":2}");
        assert_eq!(args_of(started[2]), "{\"x\":1}");
    }

    /// A team running as a workflow step speaks through its members: a retry of the step
    /// ends their messages too, and the new attempt's words start new ones.
    #[test]
    fn a_steps_retry_ends_its_team_members_messages() {
        let said = |seq, text: &str| {
            by(
                data(seq, json!({ "token": text })),
                Some("writer"),
                Some("draft"),
            )
        };
        let events = events(&[
            marker(0, ChunkType::Progress, Event::ActionStart, "draft"),
            said(1, "Old"),
            marker(2, ChunkType::Progress, Event::ActionRetry, "draft"),
            said(3, "New"),
            complete(4),
        ]);
        let messages: Vec<String> = events
            .iter()
            .filter(|e| e["type"] == "TEXT_MESSAGE_START")
            .map(|e| e["messageId"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(messages.len(), 2, "{events:#?}");
        let text_of = |id: &str| joined(&events, "TEXT_MESSAGE_CONTENT", "messageId", id);
        assert_eq!(
            (text_of(&messages[0]), text_of(&messages[1])),
            ("Old".into(), "New".into())
        );
    }

    /// Calls made together name one parent message, so the client keeps them as one
    /// assistant message; calls a client split into one message each are one message again
    /// on the way to the model (OpenAI refuses two assistant messages between calls and
    /// their results).
    #[test]
    fn calls_made_together_are_one_assistant_message_both_ways() {
        let call = |seq, index, id: &str| {
            let call = json!({ "tool_call": { "index": index, "id": id, "name": "f", "arguments": "{}" } });
            data(seq, call)
        };
        // Text between the calls does not split them either.
        let events = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            call(1, 0, "call_1"),
            data(2, json!({ "token": "and" })),
            call(3, 1, "call_2"),
            complete(4),
        ]);
        let parents: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "TOOL_CALL_START")
            .map(|e| &e["parentMessageId"])
            .collect();
        assert_eq!(parents.len(), 2, "{events:#?}");
        assert!(
            parents[0].is_string() && parents[0] == parents[1],
            "{parents:?}"
        );

        let one_call = |id: &str| json!([{ "id": id, "type": "function", "function": { "name": "f", "arguments": "{}" } }]);
        let messages = chat_messages(vec![
            json!({ "id": "u", "role": "user", "content": "weather and time?" }),
            json!({ "id": "call_1", "role": "assistant", "toolCalls": one_call("call_1") }),
            json!({ "id": "call_2", "role": "assistant", "toolCalls": one_call("call_2") }),
            json!({ "id": "t1", "role": "tool", "toolCallId": "call_1", "content": "sunny" }),
            json!({ "id": "t2", "role": "tool", "toolCallId": "call_2", "content": "noon" }),
        ]);
        fixtures::assert_calls_in_one_message(&messages, &["call_1", "call_2"]);
    }

    /// A team member's step inside a workflow step is `<step>/<member>` and ends with that
    /// step: a second team step's members get steps of their own, and a step named like a
    /// member is another step.
    #[test]
    fn team_members_steps_end_with_the_workflow_step_they_are_in() {
        let said = |seq, member: &str, step: &str| {
            by(data(seq, json!({ "token": "x" })), Some(member), Some(step))
        };
        let events = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            marker(1, ChunkType::Progress, Event::ActionStart, "first"),
            said(2, "writer", "first"),
            marker(3, ChunkType::Data, Event::ActionComplete, "first"),
            marker(4, ChunkType::Progress, Event::ActionStart, "writer"),
            said(5, "writer", "writer"),
            marker(6, ChunkType::Data, Event::ActionComplete, "writer"),
            complete(7),
        ]);
        let steps: Vec<String> = events
            .iter()
            .filter(|e| e["type"] == "STEP_STARTED" || e["type"] == "STEP_FINISHED")
            .map(|e| {
                format!(
                    "{}:{}",
                    e["type"].as_str().unwrap(),
                    e["stepName"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            steps,
            [
                "STEP_STARTED:first",
                "STEP_STARTED:first/writer",
                "STEP_FINISHED:first/writer",
                "STEP_FINISHED:first",
                "STEP_STARTED:writer",
                "STEP_STARTED:writer/writer",
                "STEP_FINISHED:writer/writer",
                "STEP_FINISHED:writer",
            ]
        );
    }

    /// A step and a team member of another step, of the same name, speaking at once (a
    /// parallel group) have a message each.
    #[test]
    fn a_step_and_a_member_of_its_name_have_their_own_messages() {
        let events = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            marker(1, ChunkType::Progress, Event::ActionStart, "writer"),
            marker(2, ChunkType::Progress, Event::ActionStart, "draft"),
            by(data(3, json!({ "token": "A" })), None, Some("writer")),
            by(
                data(4, json!({ "token": "B" })),
                Some("writer"),
                Some("draft"),
            ),
            by(data(5, json!({ "token": "C" })), None, Some("writer")),
            marker(6, ChunkType::Data, Event::ActionComplete, "writer"),
            marker(7, ChunkType::Data, Event::ActionComplete, "draft"),
            complete(8),
        ]);
        let started: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == "TEXT_MESSAGE_START")
            .map(|e| e["messageId"].as_str().unwrap())
            .collect();
        assert_eq!(started.len(), 2, "{events:#?}");
        let text_of = |id: &str| joined(&events, "TEXT_MESSAGE_CONTENT", "messageId", id);
        assert_eq!(
            (text_of(started[0]), text_of(started[1])),
            ("AC".into(), "B".into())
        );
    }

    #[test]
    fn tokens_are_one_text_message_and_the_result_is_in_run_finished() {
        let events = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            data(1, json!({ "token": "Hel" })),
            data(2, json!({ "token": "lo" })),
            complete(3),
        ]);
        assert_eq!(
            types(&events),
            [
                "RUN_STARTED",
                "TEXT_MESSAGE_START",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_END",
                "RUN_FINISHED"
            ]
        );
        assert_eq!(events[5]["result"], json!({ "ok": true }));
        assert_eq!(events[5]["threadId"], "t");
    }

    #[test]
    fn team_members_are_steps_with_named_messages() {
        let events = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            by(data(1, json!({ "token": "A" })), Some("researcher"), None),
            by(data(2, json!({ "token": "B" })), Some("writer"), None),
            by(data(3, json!({ "token": "C" })), Some("researcher"), None),
            complete(4),
        ]);
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == "TEXT_MESSAGE_START")
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["researcher", "writer"]);
        assert_eq!(
            events
                .iter()
                .filter(|e| e["type"] == "STEP_STARTED")
                .count(),
            2
        );
    }

    #[test]
    fn parallel_workflow_steps_open_and_close_on_their_markers_and_retries_are_flagged() {
        let events = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            marker(1, ChunkType::Progress, Event::ActionStart, "a"),
            marker(2, ChunkType::Progress, Event::ActionStart, "b"),
            by(data(3, json!({ "token": "x" })), None, Some("a")),
            marker(4, ChunkType::Progress, Event::ActionRetry, "a"),
            by(data(5, json!({ "token": "y" })), None, Some("a")),
            marker(6, ChunkType::Data, Event::ActionComplete, "b"),
            marker(7, ChunkType::Data, Event::ActionComplete, "a"),
            complete(8),
        ]);
        let steps: Vec<String> = events
            .iter()
            .filter(|e| e["type"].as_str().unwrap().starts_with("STEP_"))
            .map(|e| format!("{}:{}", e["type"], e["stepName"]))
            .collect();
        assert_eq!(
            steps,
            [
                "\"STEP_STARTED\":\"a\"",
                "\"STEP_STARTED\":\"b\"",
                "\"STEP_FINISHED\":\"b\"",
                "\"STEP_FINISHED\":\"a\""
            ]
        );
        assert!(events
            .iter()
            .any(|e| e["name"] == "loom.superseded" && e["value"]["step"] == "a"));
        assert_eq!(
            events
                .iter()
                .filter(|e| e["type"] == "TEXT_MESSAGE_START")
                .count(),
            2
        );
    }

    #[test]
    fn an_error_or_a_cancel_closes_what_is_open_then_ends_with_run_error() {
        let call = json!({ "index": 0, "id": "call_1", "name": "f", "arguments": "{}" });
        let events = events(&[
            StreamChunk::new(ChunkType::Start, 0),
            data(1, json!({ "tool_call": call })),
            data(2, json!({ "token": "t" })),
            StreamChunk::error(3, &ActorError::cancelled()),
        ]);
        assert_eq!(
            types(&events),
            [
                "RUN_STARTED",
                "TOOL_CALL_START",
                "TOOL_CALL_ARGS",
                "TEXT_MESSAGE_START",
                "TEXT_MESSAGE_CONTENT",
                "TEXT_MESSAGE_END",
                "TOOL_CALL_END",
                "RUN_ERROR"
            ]
        );
        assert_eq!(events[7]["code"], "cancelled");
    }
}
