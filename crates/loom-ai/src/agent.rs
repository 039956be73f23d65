//! The `chat-agent` actor: an LLM's answer as a Loom stream.
//!
//! It reads its JSON input into a [`CompletionRequest`], asks the [`AiService`] found in the
//! runtime's extensions, and yields the answer's deltas as chunks, then the whole answer.

use std::sync::Arc;

use futures::StreamExt;
use loom_core::{async_trait, parse_input, Actor, ActorContext, ActorError, ActorStream, Output};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::event::{Completion, TokenEvent};
use crate::request::{CompletionRequest, Message, PASSED_THROUGH};
use crate::service::AiService;
use crate::tools::{Tool, ToolChoice};

/// The actor's type name.
pub const CHAT_AGENT: &str = "chat-agent";

/// The `chat-agent` actor: an LLM's answer as a Loom stream.
///
/// Input: `{"prompt": "…"}` or `{"messages": [{"role": "user", "content": "…"}, …]}` (both:
/// the prompt follows the messages), with optional `model`, `system`, `temperature`,
/// `max_tokens`, `tools` and `tool_choice`, and the fields of [`PASSED_THROUGH`] (`top_p`,
/// `stop`, `seed`, `response_format`, …), in the OpenAI Chat Completions shape; any other field
/// is `bad_input`. For a
/// tool loop, `messages` carries the assistant's `tool_calls` (with `content` null) and a
/// `{"role":"tool","tool_call_id":…,"content":…}` message per result, also as OpenAI takes
/// them. Output, after the runtime's `start`:
///
/// ```json
/// {"type":"data","seq":1,"data":{"token":"Once"}}
/// {"type":"data","seq":2,"data":{"token":" upon"}}
/// {"type":"data","seq":3,"data":{"tool_call":{"index":0,"id":"call_1","name":"f","arguments":"{\"a"}}}
/// {"type":"complete","seq":9,"data":{"text":"Once upon…","finish_reason":"stop","usage":null}}
/// ```
///
/// `usage` is the upstream's figures, or `null` when it sent none — never zeros; the complete
/// chunk has `tool_calls` (`[{"id","name","arguments"}]`) when the model called tools.
///
/// The service is the [`AiService`] in the runtime's [`Extensions`](loom_core::Extensions);
/// without one the run fails with `internal`. The actor spawns nothing: the HTTP request
/// lives inside its stream, so when the runtime drops the stream (cancel, deadline, consumer
/// gone) the request is aborted with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatAgent;

#[derive(Deserialize)]
struct Input {
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    model: Option<String>,
    system: Option<String>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    #[serde(default)]
    tools: Vec<Tool>,
    tool_choice: Option<ToolChoice>,
    /// The [`PASSED_THROUGH`] fields; any other is refused (a misspelt `max_token` would
    /// otherwise be run without its limit).
    #[serde(flatten)]
    options: Map<String, Value>,
}

impl Input {
    fn into_request(self) -> Result<CompletionRequest, ActorError> {
        if let Some(unknown) = self
            .options
            .keys()
            .find(|k| !PASSED_THROUGH.contains(&k.as_str()))
        {
            return Err(ActorError::bad_input(format!(
                "unknown field \"{unknown}\" (chat-agent takes prompt, messages, model, system, \
                 temperature, max_tokens, tools, tool_choice, {})",
                PASSED_THROUGH.join(", ")
            )));
        }
        let mut messages = self.messages.unwrap_or_default();
        if let Some(prompt) = self.prompt {
            if prompt.trim().is_empty() {
                return Err(ActorError::bad_input("\"prompt\" is empty"));
            }
            messages.push(Message::user(prompt));
        }
        if let Some(problem) = messages.iter().find_map(Message::problem) {
            return Err(ActorError::bad_input(problem));
        }
        if messages.is_empty() {
            return Err(ActorError::bad_input(
                "expected {\"prompt\": \"…\"} or a non-empty \"messages\" list",
            ));
        }
        if self.max_tokens == Some(0) {
            return Err(ActorError::bad_input("\"max_tokens\" must be at least 1"));
        }
        Ok(CompletionRequest {
            messages,
            system: self.system,
            model: self.model,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            tools: self.tools,
            tool_choice: self.tool_choice,
            options: self.options,
        })
    }
}

/// The request `input` asks for, or `bad_input`.
fn chat_request(input: Value) -> Result<CompletionRequest, ActorError> {
    parse_input::<Input>(input)?.into_request()
}

#[async_trait]
impl Actor for ChatAgent {
    fn name(&self) -> &str {
        CHAT_AGENT
    }

    fn description(&self) -> &str {
        "streams an LLM's answer token by token (OpenAI-compatible server, or offline)"
    }

    fn streams(&self) -> bool {
        true
    }

    fn takes_messages(&self) -> bool {
        true
    }

    fn stream(self: Arc<Self>, input: Value, ctx: ActorContext) -> ActorStream {
        Box::pin(async_stream::try_stream! {
            let request = chat_request(input)?;
            let service = ctx.get::<AiService>().ok_or_else(|| {
                ActorError::internal(
                    "chat-agent needs an AiService: insert one into the runtime's Extensions",
                )
            })?;
            // Also stop on the token, not only when the runtime drops us, so the request
            // ends even where this stream is polled by something that checks it late.
            let mut tokens = std::pin::pin!(service
                .stream_completion(request)
                .take_until(ctx.cancellation_token().clone().cancelled_owned()));
            let mut completion = Completion::default();
            while let Some(event) = tokens.next().await {
                match event? {
                    TokenEvent::Text(text) => {
                        completion.text.push_str(&text);
                        yield Output::token(text);
                    }
                    TokenEvent::ToolCall(delta) => {
                        yield Output::data(json!({ "tool_call": &delta }));
                        completion.push(TokenEvent::ToolCall(delta));
                    }
                    other => completion.push(other),
                }
            }
            if ctx.is_cancelled() {
                Err(ActorError::cancelled())?;
            }
            let mut result = json!({
                "text": completion.text,
                "finish_reason": completion.finish_reason.as_ref().map(|r| r.as_str()),
                "usage": completion.usage,
            });
            // A place the server's `index` skipped holds no call: none is made up for it (a
            // call without an id would be refused when sent back).
            completion
                .tool_calls
                .retain(|call| !(call.id.is_empty() && call.name.is_empty()));
            if !completion.tool_calls.is_empty() {
                result["tool_calls"] = json!(completion.tool_calls);
            }
            yield Output::complete(result);
        })
    }
}
