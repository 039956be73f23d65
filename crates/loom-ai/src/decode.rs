//! [`ChunkDecoder`]: turns the SSE events of a `chat/completions` stream into
//! [`TokenEvent`]s.
//!
//! It reads only the fields it needs (`choices[].delta.content`, `.tool_calls`,
//! `.finish_reason`, `usage`, `error`), borrowing strings from the event where it can, and
//! tolerates what OpenAI-compatible servers differ on: unknown fields, missing `id`/`created`,
//! `choices` absent or `null`, `usage` on every chunk (the last figures win), a
//! `finish_reason` repeated on later chunks (the first wins), empty and role-only deltas.

use std::borrow::Cow;
use std::collections::VecDeque;

use serde::Deserialize;

use crate::error::AiError;
use crate::event::{FinishReason, TokenEvent, ToolCallDelta, Usage};
use crate::sse::SseEvent;

fn lenient_usage<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Usage>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value.and_then(|v| serde_json::from_value(v).ok()))
}

/// How much of an undecodable event an error quotes.
const QUOTE_BYTES: usize = 200;

/// The most of a server's own error message that is kept.
const MESSAGE_BYTES: usize = 2048;

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
    /// A `usage` the server got wrong (partial, `null` counts) is no report, not a failed
    /// answer: the tokens already streamed stand and usage stays unknown.
    #[serde(default, deserialize_with = "lenient_usage")]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    /// vLLM's older in-stream error shape: `{"object":"error","message":…}`.
    #[serde(default, borrow)]
    object: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    /// Which answer it is: Loom asks for one (`n` is never sent), so any other is a server's
    /// stray and is skipped rather than mixed into the text.
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallWire<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallWire<'a> {
    /// Left out, or `null`, by some servers (Ollama, some proxies): see
    /// [`ChunkDecoder::call_index`].
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<FunctionWire<'a>>,
}

#[derive(Deserialize)]
struct FunctionWire<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "arguments")]
    arguments: Option<Cow<'a, str>>,
}

/// A tool call's arguments: the string of JSON OpenAI sends, or the JSON itself (Ollama's
/// native shape, some proxies), kept as its compact text.
fn arguments<'de: 'a, 'a, D>(deserializer: D) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire<'a> {
        Text(#[serde(borrow)] Cow<'a, str>),
        Json(serde_json::Value),
    }
    Ok(match Option::<Wire<'a>>::deserialize(deserializer)? {
        None => None,
        Some(Wire::Text(text)) => Some(text),
        Some(Wire::Json(value)) => Some(Cow::Owned(value.to_string())),
    })
}

/// The state of one stream's decoding.
#[derive(Debug, Default)]
pub(crate) struct ChunkDecoder {
    finished: bool,
    done: bool,
    usage: Option<Usage>,
    /// The last tool call a delta was for: its index, and its id once one came.
    last_call: Option<(u32, Option<String>)>,
}

impl ChunkDecoder {
    /// Whether the answer is whole: `data: [DONE]` arrived, or the finish reason and the
    /// usage (asked for with `include_usage`, sent after the last choice) both did, after
    /// which only `[DONE]` can follow.
    pub(crate) fn is_answered(&self) -> bool {
        self.done || (self.finished && self.usage.is_some())
    }

    /// Whether a finish reason arrived: the text is whole, though the usage may not be.
    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    /// Decodes one event, appending the token events it carries to `out`.
    pub(crate) fn decode(
        &mut self,
        event: &SseEvent<'_>,
        out: &mut VecDeque<TokenEvent>,
    ) -> Result<(), AiError> {
        let data = event.data.trim_ascii();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if event.event == Some("error") {
            return Err(AiError::Stream {
                message: error_message(data),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        let chunk: Chunk<'_> = serde_json::from_str(data).map_err(|e| AiError::Decode {
            message: format!("{e} in event {:?}", quote(data)),
        })?;
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            return Err(AiError::Stream {
                message: value_message(&error),
            });
        }
        if chunk.object.as_deref() == Some("error") {
            return Err(AiError::Stream {
                message: chunk
                    .message
                    .map(Cow::into_owned)
                    .unwrap_or_else(|| quote(data).to_owned()),
            });
        }
        for choice in chunk.choices.into_iter().flatten() {
            if choice.index.is_some_and(|i| i != 0) {
                continue;
            }
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.push_back(TokenEvent::Text(text.into_owned()));
                }
                for call in delta.tool_calls.into_iter().flatten() {
                    let (name, arguments) = match call.function {
                        Some(f) => (f.name, f.arguments),
                        None => (None, None),
                    };
                    let index = self.call_index(call.index, call.id.as_deref());
                    out.push_back(TokenEvent::ToolCall(ToolCallDelta {
                        index,
                        id: call.id.map(Cow::into_owned),
                        name: name.map(Cow::into_owned),
                        arguments: arguments.map(Cow::into_owned).unwrap_or_default(),
                    }));
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish(&reason, out);
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        Ok(())
    }

    /// The index of the tool call a delta is for. Servers that leave `index` out (or send
    /// `null`) still give each call's first delta its `id`: a new id starts the next call,
    /// a delta without one continues the last.
    fn call_index(&mut self, index: Option<u32>, id: Option<&str>) -> u32 {
        let last = self.last_call.take();
        let index = match (index, &last) {
            (Some(index), _) => index,
            (None, None) => 0,
            (None, Some((at, last_id))) => match id {
                Some(id) if last_id.as_deref() != Some(id) => at.saturating_add(1),
                _ => *at,
            },
        };
        let id = match (id, last) {
            (Some(id), _) => Some(id.to_owned()),
            (None, Some((at, last_id))) if at == index => last_id,
            (None, _) => None,
        };
        self.last_call = Some((index, id));
        index
    }

    /// Reports the first finish reason; servers that repeat it are not believed twice.
    fn finish(&mut self, reason: &str, out: &mut VecDeque<TokenEvent>) {
        if !self.finished {
            self.finished = true;
            out.push_back(TokenEvent::Finish(FinishReason::parse(reason)));
        }
    }

    /// Ends the stream: appends the usage, if the server sent any.
    ///
    /// A stream is complete when it sent `data: [DONE]`, or at least a `finish_reason`
    /// (some servers close without `[DONE]`). Otherwise it was cut off, and the end is an
    /// [`AiError::Interrupted`], after whatever tokens did arrive.
    pub(crate) fn end(&mut self, out: &mut VecDeque<TokenEvent>) -> Result<(), AiError> {
        if !self.done && !self.finished {
            return Err(AiError::Interrupted {
                message: "the server closed the stream before it was complete \
                          (no finish_reason, no [DONE])"
                    .to_owned(),
            });
        }
        if let Some(usage) = self.usage.take() {
            out.push_back(TokenEvent::Usage(usage));
        }
        Ok(())
    }
}

/// The message of an error event's data: an OpenAI error object, a bare string, or the text.
pub(crate) fn error_message(data: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(data) {
        Ok(value) => value_message(value.get("error").unwrap_or(&value)),
        Err(_) => html_title(data).unwrap_or_else(|| quote(data).to_owned()),
    }
}

/// The `<title>` of an HTML page (a proxy's or a web server's error page), which says in a
/// line what its markup says in a screenful; `None` for anything else.
fn html_title(text: &str) -> Option<String> {
    let head = quote(text).trim_start().to_ascii_lowercase();
    if !(head.starts_with("<!doctype html") || head.starts_with("<html")) {
        return None;
    }
    let start = head.find("<title>")? + "<title>".len();
    let end = start + head[start..].find("</title>")?;
    // Lowercasing ASCII keeps every byte offset, so the title is cut from the original.
    let title = quote(text).trim_start()[start..end].trim();
    Some(format!("{title} (an HTML page)"))
}

/// The message in `{"message": …}`, a string, or the JSON text; at most [`MESSAGE_BYTES`]
/// of it, since it ends up in the run's `error` chunk.
fn value_message(value: &serde_json::Value) -> String {
    if let Some(message) = value.get("message").and_then(|m| m.as_str()) {
        return cut(message, MESSAGE_BYTES).to_owned();
    }
    match value.as_str() {
        Some(text) => cut(text, MESSAGE_BYTES).to_owned(),
        None => cut(&value.to_string(), MESSAGE_BYTES).to_owned(),
    }
}

/// At most [`QUOTE_BYTES`] of `text`, cut at a character boundary.
pub(crate) fn quote(text: &str) -> &str {
    cut(text, QUOTE_BYTES)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(data: &str) -> Vec<TokenEvent> {
        let mut out = VecDeque::new();
        let event = SseEvent { event: None, data };
        ChunkDecoder::default()
            .decode(&event, &mut out)
            .expect("decodes");
        out.into()
    }

    #[test]
    fn reads_an_openai_text_chunk_with_escapes() {
        let data = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"Hi \"you\"\n"},"logprobs":null,"finish_reason":null}],"usage":null}"#;
        assert_eq!(decode(data), [TokenEvent::Text("Hi \"you\"\n".into())]);
    }

    #[test]
    fn reads_the_finish_past_nested_fields_it_does_not_need() {
        let data = r#" {"choices":[{"delta":{},"finish_reason":"stop","logprobs":{"content":[{"t":[1,2.5e3,-1]}]}}], "usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"x":{"y":true}}} "#;
        assert_eq!(decode(data), [TokenEvent::Finish(FinishReason::Stop)]);
    }

    #[test]
    fn every_kind_of_text_comes_out_as_sent() {
        for text in [
            "plain",
            "\n\n",
            "\"q\"",
            "back\\slash",
            "東京 🚀",
            "tab\t",
            "\u{1}",
        ] {
            let data = serde_json::json!({
                "id": "x", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]
            })
            .to_string();
            assert_eq!(decode(&data), [TokenEvent::Text(text.into())], "{data}");
        }
    }

    #[test]
    fn tool_calls_without_an_index_are_told_apart_by_their_ids() {
        let deltas = [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":null,"id":"c1","type":"function","function":{"name":"weather","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":null,"function":{"arguments":"{\"city\":\"Paris\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"c2","type":"function","function":{"name":"weather","arguments":"{\"city\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"\"Tokyo\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"c2","function":{"arguments":""}}]}}]}"#,
        ];
        let mut decoder = ChunkDecoder::default();
        let mut completion = crate::event::Completion::default();
        for data in deltas {
            let mut out = VecDeque::new();
            let event = SseEvent { event: None, data };
            decoder.decode(&event, &mut out).expect("decodes");
            out.into_iter().for_each(|e| completion.push(e));
        }
        let calls: Vec<_> = completion
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("c1", "weather", r#"{"city":"Paris"}"#),
                ("c2", "weather", r#"{"city":"Tokyo"}"#)
            ]
        );
        // With indexes, they are what counts.
        let data = r#"{"choices":[{"delta":{"tool_calls":[{"index":3,"id":"x","function":{"arguments":"{}"}}]}}]}"#;
        let [TokenEvent::ToolCall(delta)] = &decode(data)[..] else {
            panic!("one tool call delta")
        };
        assert_eq!(delta.index, 3);
    }

    #[test]
    fn tool_call_arguments_sent_as_json_are_taken_as_their_text() {
        let data = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"weather","arguments":{"city":"Paris"}}}]}}]}"#;
        let events = decode(data);
        let [TokenEvent::ToolCall(call)] = events.as_slice() else {
            panic!("one tool call: {events:?}");
        };
        assert_eq!(call.arguments, r#"{"city":"Paris"}"#);
    }

    #[test]
    fn a_choice_other_than_the_first_is_skipped() {
        let data = r#"{"choices":[{"index":1,"delta":{"content":"[1]"},"finish_reason":"stop"},{"index":0,"delta":{"content":"Hello"}}]}"#;
        assert_eq!(decode(data), [TokenEvent::Text("Hello".into())]);
    }

    #[test]
    fn nulls_and_missing_fields_are_no_events() {
        for data in [
            r#"{"choices":null,"error":null}"#,
            r#"{}"#,
            r#"{"choices":[{"delta":{"content":""}}]}"#,
        ] {
            assert_eq!(decode(data), [], "{data}");
        }
        let data = r#"{"choices":[{"delta":null,"finish_reason":"length"}]}"#;
        assert_eq!(decode(data), [TokenEvent::Finish(FinishReason::Length)]);
    }
}
