//! Client dialects (DESIGN.md §3a): every run served in the protocols existing clients
//! already speak, each a pure mapping of the run's chunks — no second execution path. A
//! dialect's request is turned into an ordinary [`StartRequest`] and its stream is the run's
//! [`Feed`](crate::backend::Feed) mapped chunk by chunk.
//!
//! This module holds what the dialects share: the target a model name names, the input a
//! conversation becomes, the speaker a chunk is attributed to, and OpenAI's error shape.
//!
//! | module | dialect |
//! |---|---|
//! | `chat` | OpenAI Chat Completions (`POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/models/{id}`) |
//! | `ag_ui` | AG-UI over SSE (`POST /v1/ag-ui/{agent}`) |
//! | `ai_sdk` | Vercel AI SDK UI message stream v1 (`POST /v1/ai-sdk/{agent}`, `GET /v1/ai-sdk/{agent}/{chatId}/stream`) |
//! | `responses` | OpenAI Responses (`POST /v1/responses`, `GET /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`) |

pub(crate) mod ag_ui;
pub(crate) mod ai_sdk;
pub(crate) mod chat;
#[cfg(test)]
mod properties;
pub(crate) mod responses;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use loom_core::{ActorError, ChunkType, StreamChunk};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::backend::{Feed, RunRef};
use crate::error::ApiError;
use crate::runlog::{LoggedChunk, RunStatus, RunTarget};
use crate::runs::StartRequest;
use crate::sse::{self, Overtaken, StreamGuards};
use crate::state::ServerState;
use crate::store::DisconnectPolicy;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// The input a conversation becomes (DESIGN.md §3a "Input"): an actor that takes messages gets
/// `{"messages": […]}` plus the dialect's sampling fields; any other gets the last user
/// message's text parsed as JSON when it is an object, else `{"prompt": text}`.
pub(crate) fn conversation_input(
    takes_messages: bool,
    messages: Vec<Value>,
    sampling: Map<String, Value>,
) -> Result<Value, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::BadRequest(
            "the conversation has no messages".into(),
        ));
    }
    if takes_messages {
        let mut input = sampling;
        input.insert("messages".into(), Value::Array(messages));
        return Ok(Value::Object(input));
    }
    let last = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .ok_or_else(|| ApiError::BadRequest("the conversation has no user message".into()))?;
    // Never an empty input the actor would run on anyway.
    let text = message_text(&last["content"]).ok_or_else(|| {
        ApiError::Run(ActorError::bad_input(
            "the last user message has no text: its `content` must be a string or a list of text parts",
        ))
    })?;
    Ok(match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({ "prompt": text }),
    })
}

/// The fields of an OpenAI request its dialect does not name (`rest`) that go on to the actor:
/// those of `passed` (of [`loom_ai::PASSED_THROUGH`]: `top_p`, `stop`, …) that are not
/// `null` (unset, as OpenAI reads it). Any other is refused as OpenAI refuses a field it does
/// not define, unless `ignored` lists it (OpenAI's own, which Loom accepts and does not act
/// on): so a misspelt `max_token` never runs without its limit.
pub(crate) fn passed_through(
    mut rest: Map<String, Value>,
    passed: &[&'static str],
    ignored: &[&str],
) -> Result<Vec<(&'static str, Option<Value>)>, ApiError> {
    let passed = passed
        .iter()
        .map(|name| (*name, rest.remove(*name).filter(|v| !v.is_null())))
        .collect();
    match rest.keys().find(|k| !ignored.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::BadRequest(format!(
            "Unrecognized request argument supplied: {unknown}"
        ))),
        None => Ok(passed),
    }
}

/// The sampling fields a dialect's request carried, by the names actors read.
pub(crate) fn sampling<'a>(
    fields: impl IntoIterator<Item = (&'a str, Option<Value>)>,
) -> Map<String, Value> {
    fields
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value?)))
        .collect()
}

/// A run started for a dialect's request: the deadline is the target's own.
pub(crate) fn start_request(
    target: RunTarget,
    input: Value,
    policy: DisconnectPolicy,
    traceparent: Option<String>,
) -> StartRequest {
    StartRequest {
        target,
        input,
        timeout: None,
        policy,
        traceparent,
    }
}

/// Flat function tools (`{"type":"function","name","description","parameters"}`, as Responses
/// and AG-UI send them) in Chat Completions' shape, which actors that take messages read.
pub(crate) fn chat_tools(tools: &[Value]) -> Value {
    let tools: Vec<Value> = tools
        .iter()
        .map(|tool| {
            json!({
                "type": "function",
                "function": {
                    "name": tool["name"], "description": tool["description"],
                    "parameters": tool["parameters"],
                },
            })
        })
        .collect();
    Value::Array(tools)
}

/// A message's text: a string, or the `text` of its parts; `None` for any other content, or
/// parts none of which has a text.
fn message_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => parts_text(parts.iter()),
        _ => None,
    }
}

/// The string `text`s of `parts`, joined; `None` when none has one (a message with nothing
/// to say).
pub(crate) fn parts_text<'a>(parts: impl Iterator<Item = &'a Value>) -> Option<String> {
    let texts: Vec<&str> = parts.filter_map(|p| p["text"].as_str()).collect();
    (!texts.is_empty()).then(|| texts.concat())
}

/// The text of an OpenAI message's content parts, joined; a part that is not text (an image,
/// a file, audio) is refused rather than dropped: the model would answer without it.
pub(crate) fn text_of(parts: &[Value]) -> Result<String, ApiError> {
    parts
        .iter()
        .map(
            |part| match (part["type"].as_str(), part["text"].as_str()) {
                (Some("text" | "input_text" | "output_text"), Some(text)) => Ok(text),
                (kind, _) => Err(ApiError::BadRequest(format!(
                    "content parts of type '{}' are not supported: only text",
                    kind.unwrap_or("(none)")
                ))),
            },
        )
        .collect()
}

/// A boolean field that may also be `null` (OpenAI's schemas allow it, and its Python client
/// sends `null` for a `None`): `null` is `false`.
pub(crate) fn null_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// Who said a chunk: the team member (`actor`) or workflow step (`step`) it is tagged with.
pub(crate) fn speaker(chunk: &StreamChunk) -> Option<&str> {
    chunk.actor.as_deref().or(chunk.step.as_deref())
}

/// The chunk a log entry holds (the log keeps its JSON).
pub(crate) fn parse(logged: &LoggedChunk) -> Option<StreamChunk> {
    serde_json::from_slice(&logged.json).ok()
}

/// A token's text, when the chunk is one (`{"token": "…"}`).
pub(crate) fn token(chunk: &StreamChunk) -> Option<&str> {
    chunk.data.as_ref()?.get("token")?.as_str()
}

/// A run's result as text, for dialects that show one: a string as is, a `{"text": …}`
/// result's text, anything else as compact JSON.
pub(crate) fn result_text(data: Option<&Value>) -> String {
    match data {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(value) => match value.get("text").and_then(Value::as_str) {
            Some(text) => text.to_owned(),
            None => value.to_string(),
        },
    }
}

/// A dialect whose events are numbered by their position in the sequence its mapping
/// generates from the run's `seq` 0 (DESIGN.md §3a "Numbering"), so a resume regenerates the
/// sequence and skips what its cursor covers. The events of a chunk the log does not hold (a
/// reader's verdict when it lost Redis) take no place in that sequence: a resume regenerates
/// the log's, and must not skip one of its events for them.
pub(crate) trait NumberedEvents: Send + 'static {
    /// The events `chunk` adds.
    fn map(&mut self, chunk: &StreamChunk) -> Vec<Value>;
    /// Writes event number `number` as an SSE frame; `logged` is false for an event of a chunk
    /// the log does not hold, whose `number` is then the last logged event's (a cursor taken
    /// from it resumes after that one), and whose frame carries no SSE `id:`.
    fn write(number: u64, logged: bool, event: Value, out: &mut Vec<u8>);
}

/// A dialect's events as SSE frames, after event number `after`.
pub(crate) struct Numbered<M> {
    mapping: M,
    next: u64,
    after: Option<u64>,
}

impl<M: NumberedEvents> Numbered<M> {
    /// The events of `mapping` after event number `after` (all of them when `None`).
    pub(crate) fn new(mapping: M, after: Option<u64>) -> Self {
        Self {
            mapping,
            next: 0,
            after,
        }
    }

    /// The frames `chunks` add.
    pub(crate) fn frames(&mut self, chunks: &[Arc<LoggedChunk>]) -> Bytes {
        let mut out = Vec::new();
        for logged in chunks {
            let Some(chunk) = parse(logged) else { continue };
            for event in self.mapping.map(&chunk) {
                if !logged.in_log {
                    M::write(self.next.saturating_sub(1), false, event, &mut out);
                    continue;
                }
                let number = self.next;
                self.next += 1;
                if self.after.is_none_or(|after| number > after) {
                    M::write(number, true, event, &mut out);
                }
            }
        }
        Bytes::from(out)
    }
}

/// The run's events in a numbered dialect, as an SSE response, counted as a reader of it.
/// `permit` is the stream's place under the cap, taken before the run was started.
pub(crate) async fn serve_numbered<M: NumberedEvents>(
    state: &ServerState,
    run: &RunRef,
    permit: OwnedSemaphorePermit,
    mut events: Numbered<M>,
    early: EarlyFailure,
) -> Result<Response, ApiError> {
    let guards = StreamGuards {
        _attachment: run.attach().await?,
        _permit: permit,
    };
    let Some(feed) = run.open(None).await? else {
        return Err(ApiError::ShuttingDown);
    };
    let opened = early.open(feed).await?;
    Ok(sse::response(
        state,
        run.id(),
        opened,
        guards,
        Overtaken::Fail,
        move |chunks| events.frames(chunks),
    ))
}

/// How a dialect's stream tells of a run that failed before it gave anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EarlyFailure {
    /// In the stream, as every later failure (AG-UI's `RUN_ERROR`, the AI SDK's `error`, a
    /// rejoined stream whose head was sent long ago).
    InStream,
    /// As an HTTP error status before the stream starts, as OpenAI's API answers a request it
    /// cannot serve, so its clients raise their status errors (and retry what may pass)
    /// rather than a bare stream error: the response's head waits for the run's first
    /// output.
    Status,
}

impl EarlyFailure {
    /// The chunks to send first and the feed to go on with; with [`Status`](Self::Status),
    /// read until the run's first chunk after `start` — a failure there is the error.
    pub(crate) async fn open(
        self,
        mut feed: Feed,
    ) -> Result<(Vec<Arc<LoggedChunk>>, Feed), ApiError> {
        let mut first = Vec::new();
        if self == Self::InStream {
            return Ok((first, feed));
        }
        loop {
            let Some(chunks) = feed.next().await? else {
                return Ok((first, feed));
            };
            first.extend(chunks);
            let Some(output) = first.iter().find(|c| c.kind != ChunkType::Start) else {
                continue;
            };
            if output.kind == ChunkType::Error {
                if let Some(chunk) = parse(output) {
                    return Err(ApiError::Run(ActorError::from(chunk.error_info())));
                }
            }
            return Ok((first, feed));
        }
    }
}

/// `GET /v1/runs/{id}/stream?format=…`: any run re-attached in a dialect, after event number
/// `after` (the dialect's own numbering), with the cursor table's rule for a finished run:
/// at or past its last event, `204` (a browser's `EventSource` then stops reconnecting).
pub(crate) async fn rejoin(
    state: &ServerState,
    run: &RunRef,
    format: &str,
    after: Option<u64>,
    thread_id: Option<String>,
) -> Result<Response, ApiError> {
    match format {
        "ag-ui" => {
            let thread = thread_id.unwrap_or_else(|| run.id().to_owned());
            let mapping = || ag_ui::AgUiMapping::new(thread.clone(), run.id());
            serve_rejoined(state, run, mapping, after).await
        }
        "ai-sdk" => {
            let mapping = || ai_sdk::AiSdkMapping::new(run.id());
            let response = serve_rejoined(state, run, mapping, after).await?;
            Ok(ai_sdk::with_header(response))
        }
        "openai-responses" => {
            let head = responses::Head::of(&run.info().await?);
            let mapping = || responses::ResponsesMapping::new(head.clone());
            serve_rejoined(state, run, mapping, after).await
        }
        other => Err(ApiError::BadRequest(format!(
            "unknown format '{other}': expected ag-ui, ai-sdk or openai-responses"
        ))),
    }
}

/// The events of `mapping()` after `after`, or `204` when the run has ended and `after` is at
/// or past its last event.
async fn serve_rejoined<M: NumberedEvents>(
    state: &ServerState,
    run: &RunRef,
    mapping: impl Fn() -> M,
    after: Option<u64>,
) -> Result<Response, ApiError> {
    if let Some(after) = after {
        if let Some(count) = events_of_ended(run, mapping()).await? {
            if after.saturating_add(1) >= count {
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
        }
    }
    let permit = state.stream_permit()?;
    let events = Numbered::new(mapping(), after);
    serve_numbered(state, run, permit, events, EarlyFailure::InStream).await
}

/// How many events `mapping` makes of the whole run, once it has ended; `None` while it runs.
async fn events_of_ended<M: NumberedEvents>(
    run: &RunRef,
    mut mapping: M,
) -> Result<Option<u64>, ApiError> {
    if run.info().await?.status == RunStatus::Running {
        return Ok(None);
    }
    let Some(mut feed) = run.open(None).await? else {
        return Ok(Some(0));
    };
    let mut count = 0u64;
    while let Some(chunks) = feed.next().await? {
        for chunk in chunks.iter().filter_map(|logged| parse(logged)) {
            count += mapping.map(&chunk).len() as u64;
        }
    }
    Ok(Some(count))
}

/// Whether the route at `path` answers errors in OpenAI's shape.
pub(crate) fn speaks_openai(path: &str) -> bool {
    ["/v1/chat/", "/v1/models", "/v1/responses"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// An [`ApiError`] in OpenAI's error shape: `{"error":{"message","type","param","code"}}`
/// with the same status and Loom's `code`.
#[derive(Debug)]
pub(crate) struct OpenAiError(pub(crate) ApiError);

impl From<ApiError> for OpenAiError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

/// OpenAI's `error` object for a failure with `code` and `message` at `status`.
pub(crate) fn openai_error_body(status: StatusCode, code: &str, message: &str) -> Value {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let body = openai_error_body(status, self.0.code(), &self.0.message());
        // The official SDKs send a request again on 408, 409, 429 and any 5xx unless told
        // not to: a run that failed for good, or was cancelled, must not start again.
        let retry = self.0.is_retryable();
        let mut response = self.0.into_response();
        *response.body_mut() = Json(body).into_response().into_body();
        response.headers_mut().insert(
            "x-should-retry",
            HeaderValue::from_static(if retry { "true" } else { "false" }),
        );
        response
    }
}

/// Chunks and log entries for the dialects' mapping tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::sync::Arc;

    use loom_core::{ChunkType, Event, StreamChunk};
    use serde_json::{json, Value};

    use crate::runlog::LoggedChunk;

    /// Asserts a conversation in Chat Completions' shape is a user message, one assistant
    /// message holding the tool calls `ids` in order, and their results.
    pub(crate) fn assert_calls_in_one_message(messages: &[Value], ids: &[&str]) {
        let roles: Vec<&str> = messages
            .iter()
            .map(|m| m["role"].as_str().unwrap_or_default())
            .collect();
        let mut expected = vec!["user", "assistant"];
        expected.extend(ids.iter().map(|_| "tool"));
        assert_eq!(roles, expected, "{messages:#?}");
        let called: Vec<&str> = messages[1]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["id"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(called, ids, "{messages:#?}");
    }

    /// A `data` chunk, said by `actor` when given.
    pub(crate) fn data(seq: u64, data: Value, actor: Option<&str>) -> StreamChunk {
        let mut chunk = StreamChunk::new(ChunkType::Data, seq);
        chunk.data = Some(data);
        chunk.actor = actor.map(Into::into);
        chunk
    }

    /// A token, said by `actor` when given.
    pub(crate) fn token(seq: u64, text: &str, actor: Option<&str>) -> StreamChunk {
        data(seq, json!({ "token": text }), actor)
    }

    /// A token of workflow step `step`.
    pub(crate) fn step_token(seq: u64, text: &str, step: &str) -> StreamChunk {
        let mut chunk = token(seq, text, None);
        chunk.step = Some(step.into());
        chunk
    }

    /// A workflow marker of step `step`.
    pub(crate) fn marker(seq: u64, kind: ChunkType, event: Event, step: &str) -> StreamChunk {
        let mut chunk = StreamChunk::new(kind, seq);
        chunk.event = Some(event);
        chunk.step = Some(step.into());
        chunk
    }

    /// The terminal `complete` chunk with `data`.
    pub(crate) fn complete(seq: u64, data: Value) -> StreamChunk {
        let mut chunk = StreamChunk::new(ChunkType::Complete, seq);
        chunk.data = Some(data);
        chunk
    }

    /// `chunk` as the run log keeps it.
    pub(crate) fn logged(chunk: &StreamChunk) -> Arc<LoggedChunk> {
        Arc::new(LoggedChunk {
            seq: chunk.seq,
            kind: chunk.kind,
            json: chunk.to_json().into(),
            in_log: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_the_log_does_not_hold_takes_no_number_and_its_frames_no_id() {
        let mut logged = fixtures::logged(&fixtures::token(1, "Hi", None));
        let mut events = Numbered::new(ag_ui::AgUiMapping::new("t", "r"), None);
        let first = String::from_utf8(events.frames(&[logged]).to_vec()).unwrap();
        // RUN_STARTED, TEXT_MESSAGE_START, TEXT_MESSAGE_CONTENT: numbers 0, 1, 2.
        assert!(
            first.contains("id: 2\n") && !first.contains("id: 3\n"),
            "{first}"
        );
        let verdict = StreamChunk::error(2, &loom_core::ActorError::internal("Redis is gone"));
        logged = fixtures::logged(&verdict);
        Arc::get_mut(&mut logged).unwrap().in_log = false;
        let last = String::from_utf8(events.frames(&[logged]).to_vec()).unwrap();
        assert!(last.contains("RUN_ERROR"), "{last}");
        assert!(!last.contains("id:"), "{last}");
        assert_eq!(events.next, 3, "the verdict took no number");
    }

    #[test]
    fn a_chat_actor_gets_the_conversation_and_others_the_last_user_text() {
        let messages = vec![
            json!({ "role": "system", "content": "be brief" }),
            json!({ "role": "user", "content": "first" }),
            json!({ "role": "assistant", "content": "ok" }),
            json!({ "role": "user", "content": [{ "type": "text", "text": "{\"count\": 3}" }] }),
        ];
        let mut sampling = Map::new();
        sampling.insert("temperature".into(), json!(0.2));
        let chat = conversation_input(true, messages.clone(), sampling.clone()).unwrap();
        assert_eq!(chat, json!({ "temperature": 0.2, "messages": messages }));
        let other = conversation_input(false, messages.clone(), sampling).unwrap();
        assert_eq!(other, json!({ "count": 3 }));
        let prompt = conversation_input(
            false,
            vec![json!({ "role": "user", "content": "hi" })],
            Map::new(),
        )
        .unwrap();
        assert_eq!(prompt, json!({ "prompt": "hi" }));
        assert!(conversation_input(false, vec![], Map::new()).is_err());
        // A last user message without text is refused, not run as an empty prompt.
        for content in [
            json!(5),
            json!(null),
            json!({ "a": 1 }),
            json!([]),
            json!([{ "type": "text", "text": 5 }]),
        ] {
            let message = json!({ "role": "user", "content": content });
            let refused = conversation_input(false, vec![message], Map::new()).unwrap_err();
            assert_eq!(
                (refused.status().as_u16(), refused.code()),
                (422, "bad_input"),
                "{content}"
            );
        }
    }

    #[test]
    fn a_null_boolean_is_false() {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default, deserialize_with = "null_as_false")]
            stream: bool,
        }
        let stream = |body: &str| serde_json::from_str::<Body>(body).map(|b| b.stream);
        assert!(!stream(r#"{"stream": null}"#).unwrap());
        assert!(!stream("{}").unwrap());
        assert!(stream(r#"{"stream": true}"#).unwrap());
        assert!(stream(r#"{"stream": 1}"#).is_err());
    }
}
