//! The fast path of chunk decoding: reads the common shape of a `chat.completion.chunk`
//! (at most one choice, a text delta, a finish reason, usage) straight from the JSON text,
//! skipping every other field without building it.
//!
//! Full deserialisation spent most of a token's time on fields nobody reads (`id`, `model`,
//! `system_fingerprint`, `logprobs`…). Anything this reader does not expect — tool calls,
//! several choices, an error, escaped keys, malformed JSON — makes it answer `None`, and the
//! caller decodes the event with serde instead, so the fast path can only be faster, never
//! different.

use std::borrow::Cow;

use crate::event::Usage;

/// What the fast path read from one chunk.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Skimmed<'a> {
    /// `choices[0].delta.content`.
    pub(crate) content: Option<Cow<'a, str>>,
    /// `choices[0].finish_reason`.
    pub(crate) finish_reason: Option<Cow<'a, str>>,
    /// `usage`, when not null.
    pub(crate) usage: Option<Usage>,
}

/// Reads `data` if it has the common shape; `None` sends it down the serde path.
pub(crate) fn skim(data: &str) -> Option<Skimmed<'_>> {
    let mut r = Reader { s: data, i: 0 };
    let mut out = Skimmed::default();
    r.ws();
    r.eat(b'{')?;
    r.members(|r, key| {
        match key {
            b"choices" => r.choices(&mut out),
            b"usage" => {
                let raw = r.raw_value()?;
                out.usage = serde_json::from_str::<Option<Usage>>(raw).ok()?;
                Some(())
            }
            // Errors, in whatever shape, are the serde path's business.
            b"error" | b"object" | b"message" => match r.peek()? {
                b'n' => r.literal(),
                b'"' if key == b"object" => {
                    let (value, _) = r.string()?;
                    (value != "error").then_some(())
                }
                _ => None,
            },
            _ => r.skip_value(),
        }
    })?;
    r.ws();
    (r.i == data.len()).then_some(out)
}

struct Reader<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// The members of an object whose `{` was eaten, through its `}`: `f` reads each value.
    fn members(&mut self, mut f: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            let (key, escaped) = self.string()?;
            if escaped {
                return None;
            }
            self.eat(b':')?;
            self.ws();
            f(self, key.as_bytes())?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string at the cursor: its raw text between the quotes, and whether it has escapes.
    fn string(&mut self) -> Option<(&'a str, bool)> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let bytes = self.bytes();
        let mut at = start;
        let mut escaped = false;
        loop {
            // Keys and most tokens are a few bytes long, where a plain loop beats SIMD
            // set-up; a long string switches to memchr.
            let end = bytes.len().min(at + 32);
            let near = bytes[at.min(end)..end]
                .iter()
                .position(|&b| b == b'"' || b == b'\\');
            at = match near {
                Some(found) => at + found,
                None if end == bytes.len() => return None,
                None => end + memchr::memchr2(b'"', b'\\', bytes.get(end..)?)?,
            };
            if bytes[at] == b'\\' {
                escaped = true;
                at += 2;
                continue;
            }
            self.i = at + 1;
            return Some((self.s.get(start..at)?, escaped));
        }
    }

    /// A string or `null` at the cursor, unescaped.
    fn text(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.peek()? == b'n' {
            self.literal()?;
            return Some(None);
        }
        let start = self.i;
        let (raw, escaped) = self.string()?;
        if !escaped {
            return Some(Some(Cow::Borrowed(raw)));
        }
        let quoted = self.s.get(start..self.i)?;
        serde_json::from_str::<String>(quoted)
            .ok()
            .map(|s| Some(Cow::Owned(s)))
    }

    /// `null`, `true`, `false` or a number.
    fn literal(&mut self) -> Option<()> {
        let start = self.i;
        while let Some(b) = self.peek() {
            if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.i += 1;
        }
        let word = &self.bytes()[start..self.i];
        let number = word
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
        (matches!(word, b"null" | b"true" | b"false") || (number && !word.is_empty())).then_some(())
    }

    /// Skips any value.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                self.i += 1;
                self.members(|r, _| r.skip_value())
            }
            b'[' => {
                self.i += 1;
                self.elements(|r| r.skip_value())
            }
            _ => self.literal(),
        }
    }

    /// The elements of an array whose `[` was eaten, through its `]`.
    fn elements(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            f(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The text of any value at the cursor.
    fn raw_value(&mut self) -> Option<&'a str> {
        let start = self.i;
        self.skip_value()?;
        self.s.get(start..self.i)
    }

    /// `choices`: `null` or an array of at most one choice.
    fn choices(&mut self, out: &mut Skimmed<'a>) -> Option<()> {
        if self.peek()? == b'n' {
            return self.literal();
        }
        self.eat(b'[')?;
        let mut seen = 0;
        self.elements(|r| {
            seen += 1;
            if seen > 1 {
                return None;
            }
            r.eat(b'{')?;
            r.members(|r, key| match key {
                b"delta" => {
                    if r.peek()? == b'n' {
                        return r.literal();
                    }
                    r.eat(b'{')?;
                    r.members(|r, key| match key {
                        b"content" => {
                            out.content = r.text()?;
                            Some(())
                        }
                        b"tool_calls" | b"function_call" => match r.peek()? {
                            b'n' => r.literal(),
                            _ => None,
                        },
                        _ => r.skip_value(),
                    })
                }
                b"finish_reason" => {
                    out.finish_reason = r.text()?;
                    Some(())
                }
                _ => r.skip_value(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_openai_text_chunk() {
        let data = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"Hi \"you\"\n"},"logprobs":null,"finish_reason":null}],"usage":null}"#;
        let got = skim(data).expect("fast path");
        assert_eq!(got.content.as_deref(), Some("Hi \"you\"\n"));
        assert_eq!(got.finish_reason, None);
        assert_eq!(got.usage, None);
    }

    #[test]
    fn reads_finish_and_usage() {
        let data = r#" {"choices":[{"delta":{},"finish_reason":"stop","logprobs":{"content":[{"t":[1,2.5e3,-1]}]}}], "usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"x":{"y":true}}} "#;
        let got = skim(data).expect("fast path");
        assert_eq!(got.finish_reason.as_deref(), Some("stop"));
        assert_eq!(got.usage.map(|u| u.total_tokens), Some(5));
    }

    #[test]
    fn agrees_with_serde_on_every_kind_of_text() {
        for text in [
            "plain",
            "\n\n",
            "\"q\"",
            "back\\slash",
            "東京 🚀",
            "tab\t",
            "\u{1}",
            "",
        ] {
            let data = serde_json::json!({
                "id": "x", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]
            })
            .to_string();
            let got = skim(&data).expect("fast path");
            assert_eq!(got.content.as_deref(), Some(text), "{data}");
        }
    }

    #[test]
    fn leaves_the_unusual_to_serde() {
        for data in [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#,
            r#"{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]}"#,
            r#"{"error":{"message":"x"}}"#,
            r#"{"object":"error","message":"x"}"#,
            r#"{"choices":[{"delta":{"content":"a"}}]} trailing"#,
            r#"{"choices":[{"delta":{"content":"a"}}]"#,
            r#"{"choices":[{"delta":{"content":"a}}]}"#,
            r#"{"ch\u006fices":[]}"#,
            r#"{"choices":[{"delta":{"content":nul}}]}"#,
            r#"[1]"#,
            "{\"a\":\"x\\",
            r#"{"a":"a string longer than thirty-two bytes without its closing quote"#,
        ] {
            assert_eq!(skim(data), None, "{data}");
        }
    }

    #[test]
    fn tolerates_nulls_and_missing_fields() {
        assert_eq!(
            skim(r#"{"choices":null,"error":null}"#),
            Some(Skimmed::default())
        );
        assert_eq!(skim(r#"{}"#), Some(Skimmed::default()));
        let got = skim(r#"{"choices":[{"delta":null,"finish_reason":"length"}]}"#);
        assert_eq!(got.and_then(|s| s.finish_reason).as_deref(), Some("length"));
    }
}
