//! Tool calling in the OpenAI Chat Completions shape: the [`Tool`]s a request offers, the
//! [`ToolChoice`], and the wire form of the tool calls an assistant [`Message`](crate::Message)
//! carries back. [`CompletionRequest`](crate::CompletionRequest) holds them; the OpenAI client
//! serialises them as they are.
//!
//! The public types are flat (a [`ToolCall`] is `id`, `name`, `arguments`, as chat-agent
//! reports it); the nested OpenAI shapes (`{"type":"function","function":{…}}`) live only in
//! the private wire structs here, which both serialise and deserialise, so chat-agent's input
//! takes exactly what the OpenAI API takes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::event::ToolCall;

/// A function the model may call, sent as
/// `{"type":"function","function":{"name","description","parameters","strict"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ToolWire", into = "ToolWire")]
pub struct Tool {
    /// The function's name.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// Its arguments, as a JSON Schema object.
    pub parameters: Option<Value>,
    /// Whether the model must follow the schema exactly (OpenAI's structured outputs).
    pub strict: Option<bool>,
}

impl Tool {
    /// A function named `name` taking arguments described by the JSON Schema `parameters`.
    pub fn function(name: impl Into<String>, parameters: Value) -> Self {
        Self {
            name: name.into(),
            description: None,
            parameters: Some(parameters),
            strict: None,
        }
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
}

/// Whether and which tool the model must call: `"none"`, `"auto"`, `"required"`, or
/// `{"type":"function","function":{"name":…}}` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ToolChoiceWire", into = "ToolChoiceWire")]
#[non_exhaustive]
pub enum ToolChoice {
    /// Answer in text, call no tool.
    None,
    /// The model decides (the server's default when tools are given).
    Auto,
    /// Call at least one tool.
    Required,
    /// Call this function.
    Function(String),
}

/// The only `type` OpenAI's tools have.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FunctionType {
    Function,
}

#[derive(Serialize, Deserialize)]
struct ToolWire {
    #[serde(rename = "type")]
    kind: FunctionType,
    function: FunctionSpec,
}

#[derive(Serialize, Deserialize)]
struct FunctionSpec {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

impl From<ToolWire> for Tool {
    fn from(wire: ToolWire) -> Self {
        let FunctionSpec {
            name,
            description,
            parameters,
            strict,
        } = wire.function;
        Self {
            name,
            description,
            parameters,
            strict,
        }
    }
}

impl From<Tool> for ToolWire {
    fn from(tool: Tool) -> Self {
        Self {
            kind: FunctionType::Function,
            function: FunctionSpec {
                name: tool.name,
                description: tool.description,
                parameters: tool.parameters,
                strict: tool.strict,
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a tool_choice: \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}"
)]
enum ToolChoiceWire {
    Mode(Mode),
    Function {
        #[serde(rename = "type")]
        kind: FunctionType,
        function: FunctionName,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    None,
    Auto,
    Required,
}

#[derive(Serialize, Deserialize)]
struct FunctionName {
    name: String,
}

impl From<ToolChoiceWire> for ToolChoice {
    fn from(wire: ToolChoiceWire) -> Self {
        match wire {
            ToolChoiceWire::Mode(Mode::None) => Self::None,
            ToolChoiceWire::Mode(Mode::Auto) => Self::Auto,
            ToolChoiceWire::Mode(Mode::Required) => Self::Required,
            ToolChoiceWire::Function { function, .. } => Self::Function(function.name),
        }
    }
}

impl From<ToolChoice> for ToolChoiceWire {
    fn from(choice: ToolChoice) -> Self {
        match choice {
            ToolChoice::None => Self::Mode(Mode::None),
            ToolChoice::Auto => Self::Mode(Mode::Auto),
            ToolChoice::Required => Self::Mode(Mode::Required),
            ToolChoice::Function(name) => Self::Function {
                kind: FunctionType::Function,
                function: FunctionName { name },
            },
        }
    }
}

/// One call of an assistant message:
/// `{"id":…,"type":"function","function":{"name":…,"arguments":…}}`.
#[derive(Serialize, Deserialize)]
struct CallWire<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(rename = "type")]
    kind: FunctionType,
    #[serde(borrow)]
    function: CallFunction<'a>,
}

#[derive(Serialize, Deserialize)]
struct CallFunction<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    arguments: std::borrow::Cow<'a, str>,
}

/// `serde(with)` for [`Message::tool_calls`](crate::Message::tool_calls): the flat
/// [`ToolCall`]s in OpenAI's nested shape.
pub(crate) mod message_calls {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(calls: &[ToolCall], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(calls.iter().map(|call| CallWire {
            id: call.id.as_str().into(),
            kind: FunctionType::Function,
            function: CallFunction {
                name: call.name.as_str().into(),
                arguments: call.arguments.as_str().into(),
            },
        }))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ToolCall>, D::Error> {
        let calls = Option::<Vec<CallWire<'de>>>::deserialize(d)?;
        Ok(calls
            .into_iter()
            .flatten()
            .map(|call| ToolCall {
                id: call.id.into_owned(),
                name: call.function.name.into_owned(),
                arguments: call.function.arguments.into_owned(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_tool_choice_has_the_openai_shape_both_ways() {
        for (choice, wire) in [
            (ToolChoice::None, json!("none")),
            (ToolChoice::Auto, json!("auto")),
            (ToolChoice::Required, json!("required")),
            (
                ToolChoice::Function("f".into()),
                json!({"type": "function", "function": {"name": "f"}}),
            ),
        ] {
            assert_eq!(serde_json::to_value(&choice).ok(), Some(wire.clone()));
            assert_eq!(
                serde_json::from_value::<ToolChoice>(wire).ok(),
                Some(choice)
            );
        }
        // Anything else is refused with the shapes it may take, not an internal type's name.
        let refused = serde_json::from_value::<ToolChoice>(json!("sometimes"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("\"none\", \"auto\", \"required\""),
            "{refused}"
        );
    }

    #[test]
    fn a_tool_sends_only_the_fields_it_has() {
        let tool = Tool::function("f", json!({"type": "object"})).with_description("does f");
        let wire = json!({
            "type": "function",
            "function": {"name": "f", "description": "does f", "parameters": {"type": "object"}}
        });
        assert_eq!(serde_json::to_value(&tool).ok(), Some(wire.clone()));
        assert_eq!(serde_json::from_value::<Tool>(wire).ok(), Some(tool));
        assert!(serde_json::from_value::<Tool>(json!({"type": "retrieval"})).is_err());
    }
}
