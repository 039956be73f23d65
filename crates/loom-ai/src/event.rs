//! [`TokenEvent`]: what a token stream yields, and [`Completion`], what `complete()` returns.
//!
//! A stream yields text and tool-call deltas as they arrive, then at most one
//! [`TokenEvent::Finish`] and at most one [`TokenEvent::Usage`] (the last figures the server
//! sent). No usage event means the server reported none: usage is unknown, never zero.

use serde::{Deserialize, Serialize};

/// Token counts as the server reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Both together.
    #[serde(default)]
    pub total_tokens: u64,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinishReason {
    /// It finished its answer (or hit a stop sequence).
    Stop,
    /// It reached `max_tokens` or its context length.
    Length,
    /// It wants tools called.
    ToolCalls,
    /// The provider's content filter cut it off.
    ContentFilter,
    /// A reason this crate does not know, as the server spelled it.
    Other(String),
}

impl FinishReason {
    /// Parses the wire string (`"stop"`, `"length"`, `"tool_calls"`, `"content_filter"`;
    /// the legacy `"function_call"` counts as tool calls).
    pub fn parse(reason: &str) -> Self {
        match reason {
            "stop" => Self::Stop,
            "length" => Self::Length,
            "tool_calls" | "function_call" => Self::ToolCalls,
            "content_filter" => Self::ContentFilter,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
            Self::Other(other) => other,
        }
    }
}

/// A piece of a tool call, as streamed: the first piece of a call carries its `id` and
/// `name`, later pieces (same `index`) carry more of the JSON `arguments`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ToolCallDelta {
    /// Which tool call of the answer this piece belongs to.
    pub index: u32,
    /// The call's id, on its first piece.
    pub id: Option<String>,
    /// The function's name, on its first piece.
    pub name: Option<String>,
    /// The next piece of the arguments' JSON text (possibly empty).
    pub arguments: String,
}

/// One item of a token stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenEvent {
    /// The next piece of the answer's text (never empty).
    Text(String),
    /// The next piece of a tool call.
    ToolCall(ToolCallDelta),
    /// Why the model stopped; at most once per stream.
    Finish(FinishReason),
    /// The server's token counts; at most once per stream, after `Finish`.
    Usage(Usage),
}

/// A tool call put together from its deltas.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ToolCall {
    /// The call's id.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON text.
    pub arguments: String,
}

/// The most tool calls one answer may hold: the list is sized by the server's `index`, so
/// a bound keeps a bogus index from allocating gigabytes.
pub const MAX_TOOL_CALLS: usize = 128;

/// A whole answer, as [`AiService::complete`](crate::AiService::complete) returns it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Completion {
    /// The answer's text.
    pub text: String,
    /// Why the model stopped, if the server said.
    pub finish_reason: Option<FinishReason>,
    /// The server's token counts; `None` when it reported none.
    pub usage: Option<Usage>,
    /// Tool calls, in index order.
    pub tool_calls: Vec<ToolCall>,
}

impl Completion {
    /// Adds one event of a stream to the answer.
    pub fn push(&mut self, event: TokenEvent) {
        match event {
            TokenEvent::Text(text) => self.text.push_str(&text),
            TokenEvent::ToolCall(delta) => {
                let index = delta.index as usize;
                if index >= MAX_TOOL_CALLS {
                    return;
                }
                if self.tool_calls.len() <= index {
                    self.tool_calls.resize_with(index + 1, ToolCall::default);
                }
                let call = &mut self.tool_calls[index];
                if let Some(id) = delta.id {
                    call.id = id;
                }
                if let Some(name) = delta.name {
                    call.name.push_str(&name);
                }
                call.arguments.push_str(&delta.arguments);
            }
            TokenEvent::Finish(reason) => self.finish_reason = Some(reason),
            TokenEvent::Usage(usage) => self.usage = Some(usage),
        }
    }
}
