//! [`TokenEvent`]: what a token stream yields, and [`Completion`], what `complete()` returns.
//!
//! A stream yields text and tool-call deltas as they arrive, then at most one
//! [`TokenEvent::Finish`] and at most one [`TokenEvent::Usage`] (the last figures the server
//! sent). No usage event means the server reported none: usage is unknown, never zero.

use serde::{Deserialize, Serialize};

/// Token counts as the server reported them.
///
/// Read from a server's `usage` object, which must name `prompt_tokens` and
/// `completion_tokens` (`total_tokens` defaults to their sum): a partial object is not
/// zero-filled, it counts as no report at all, so usage is never a made-up 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ReportedUsage")]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Both together.
    pub total_tokens: u64,
}

/// A `usage` object as servers send it, before it is trusted.
#[derive(Deserialize)]
struct ReportedUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl TryFrom<ReportedUsage> for Usage {
    type Error = &'static str;

    fn try_from(reported: ReportedUsage) -> Result<Self, Self::Error> {
        match (reported.prompt_tokens, reported.completion_tokens) {
            (Some(prompt), Some(completion)) => Ok(Self {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: reported
                    .total_tokens
                    .unwrap_or(prompt.saturating_add(completion)),
            }),
            _ => Err("usage without prompt_tokens and completion_tokens"),
        }
    }
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
                // Like `id`, the name is whole in each delta that carries it: some servers
                // repeat it, and appending would double it.
                if let Some(name) = delta.name {
                    call.name = name;
                }
                call.arguments.push_str(&delta.arguments);
            }
            TokenEvent::Finish(reason) => self.finish_reason = Some(reason),
            TokenEvent::Usage(usage) => self.usage = Some(usage),
        }
    }
}
