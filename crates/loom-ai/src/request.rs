//! [`CompletionRequest`]: what to ask the model, with per-call overrides of the service's
//! defaults. The OpenAI client serialises it into a `chat/completions` body; the offline
//! provider reads its text.
//!
//! A [`Message`] serialises to, and deserialises from, the OpenAI Chat Completions message
//! shape, tool calls and tool results included, so a tool loop's conversation passes through
//! unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::ToolCall;
use crate::tools::{message_calls, Tool, ToolChoice};

/// Who wrote a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Role {
    /// Instructions for the model.
    System,
    /// Newer OpenAI models' name for system instructions.
    Developer,
    /// The person talking to the model.
    User,
    /// The model's earlier answers.
    Assistant,
    /// The result of a tool call, answering the assistant message that asked for it.
    Tool,
}

/// One message of a chat, in the OpenAI shape: `{"role","content"}`, plus `tool_calls` on
/// an assistant message that called tools and `tool_call_id` on a `tool` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What it says; `None` (sent as `null`) for an assistant message that only called tools.
    /// Read from a string, or from a list of content parts whose `text` parts are joined
    /// (the shape the official OpenAI clients also send); a part of another kind (an image)
    /// is refused, never dropped unseen.
    #[serde(default, deserialize_with = "text_or_parts")]
    pub content: Option<String>,
    /// The tools an assistant message called.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "message_calls")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Who, of several participants of one role, wrote it (OpenAI's `name`): sent on as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A message's `content`: a string, `null`, or a list of content parts.
fn text_or_parts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "a message's `content`: a string, or a list of text parts"
    )]
    enum Content {
        Text(String),
        Parts(Vec<Part>),
    }
    #[derive(Deserialize)]
    struct Part {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        text: Option<String>,
    }
    Ok(match Option::<Content>::deserialize(d)? {
        None => None,
        Some(Content::Text(text)) => Some(text),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(serde::de::Error::custom(format!(
                            "content parts of type '{kind}' are not supported: only text"
                        )))
                    }
                }
            }
            Some(text)
        }
    })
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(content.into()),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// An `assistant` message that called tools and said nothing.
    pub fn assistant_tool_calls(calls: Vec<ToolCall>) -> Self {
        Self {
            role: Role::Assistant,
            content: None,
            tool_calls: calls,
            tool_call_id: None,
            name: None,
        }
    }

    /// A `tool` message: the result of the call `tool_call_id`.
    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(tool_call_id.into()),
            ..Self::new(Role::Tool, content)
        }
    }

    /// Why the message could not be sent, if it is malformed: a message without text must be
    /// an assistant's tool calls, and a `tool` message must name the call it answers.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        match self.role {
            Role::Tool if self.tool_call_id.is_none() => {
                Some("a \"tool\" message needs a \"tool_call_id\"")
            }
            Role::Assistant if self.content.is_none() && self.tool_calls.is_empty() => {
                Some("an \"assistant\" message needs \"content\" or \"tool_calls\"")
            }
            Role::Assistant => None,
            _ if self.content.is_none() => Some("a message needs \"content\""),
            _ => None,
        }
    }
}

/// A chat completion request. Anything left `None` takes the service's default (the model)
/// or the server's (temperature, max tokens).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompletionRequest {
    /// The conversation so far, oldest first.
    pub messages: Vec<Message>,
    /// A system prompt sent before `messages`.
    pub system: Option<String>,
    /// The model, overriding the service's default.
    pub model: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// The most tokens to generate.
    pub max_tokens: Option<u32>,
    /// The functions the model may call; none sends no `tools`.
    pub tools: Vec<Tool>,
    /// Whether and which tool the model must call, overriding the server's default.
    pub tool_choice: Option<ToolChoice>,
    /// The other Chat Completions fields to send as they are: only those named in
    /// [`PASSED_THROUGH`] (`top_p`, `stop`, `seed`, `response_format`, …), whose shape the
    /// server checks.
    pub options: Map<String, Value>,
}

/// The Chat Completions request fields a [`CompletionRequest`] carries to the server as they
/// are, in [`options`](CompletionRequest::options): sampling and output controls whose shape
/// only the server knows. Fields Loom sets itself (`model`, `messages`, `stream`, …) are not
/// among them.
pub const PASSED_THROUGH: &[&str] = &[
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "response_format",
    "parallel_tool_calls",
    "reasoning_effort",
    "user",
];

impl CompletionRequest {
    /// One user message.
    pub fn prompt(text: impl Into<String>) -> Self {
        Self::messages(vec![Message::user(text)])
    }

    /// A whole conversation.
    pub fn messages(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }

    /// Sets the system prompt.
    pub fn with_system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// Sets the model.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Sets the temperature.
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets the most tokens to generate.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Offers `tools` to the model.
    pub fn with_tools(mut self, tools: Vec<Tool>) -> Self {
        self.tools = tools;
        self
    }

    /// Sets the tool choice.
    pub fn with_tool_choice(mut self, tool_choice: ToolChoice) -> Self {
        self.tool_choice = Some(tool_choice);
        self
    }

    /// Sets field `name` of [`PASSED_THROUGH`] to `value`; another name is refused
    /// ([`AiError::BadRequest`](crate::AiError::BadRequest)).
    pub fn with_option(mut self, name: &str, value: Value) -> Result<Self, crate::AiError> {
        if !PASSED_THROUGH.contains(&name) {
            return Err(crate::AiError::BadRequest(format!(
                "\"{name}\" is not a field Loom sends on (those are: {})",
                PASSED_THROUGH.join(", ")
            )));
        }
        self.options.insert(name.to_owned(), value);
        Ok(self)
    }

    /// The text of the last user message (what the offline provider answers).
    pub fn last_user_text(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .and_then(|m| m.content.as_deref())
            .unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_constructors_build_the_messages_of_a_tool_loop() {
        let call = ToolCall {
            id: "call_1".into(),
            name: "f".into(),
            arguments: "{}".into(),
        };
        let calls = Message::assistant_tool_calls(vec![call]);
        let wire = json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
        });
        assert_eq!(serde_json::to_value(&calls).ok(), Some(wire.clone()));
        assert_eq!(serde_json::from_value::<Message>(wire).ok(), Some(calls));
        assert_eq!(
            serde_json::to_value(Message::tool_result("call_1", "42")).ok(),
            Some(json!({"role": "tool", "content": "42", "tool_call_id": "call_1"}))
        );
        // A participant's `name` is kept both ways (it was dropped).
        let named = json!({"role": "user", "content": "hi", "name": "bob"});
        let message = serde_json::from_value::<Message>(named.clone()).ok();
        assert_eq!(
            message.as_ref().and_then(|m| m.name.as_deref()),
            Some("bob")
        );
        assert_eq!(
            message.and_then(|m| serde_json::to_value(m).ok()),
            Some(named)
        );
    }
}
