//! The OpenAI streaming wire format, byte for byte: `chat.completion.chunk` objects as the
//! OpenAI API sends them (field order included), framed as `data: {json}\n\n`, with the
//! usage-only last chunk and `data: [DONE]`. Shared by the tests and the benchmark.

#![allow(dead_code, unreachable_pub)]

/// A JSON string literal.
pub fn js(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// One `chat.completion.chunk` with a single choice.
pub fn chunk(delta: &str, finish_reason: Option<&str>) -> String {
    let finish = finish_reason.map_or("null".to_owned(), js);
    format!(
        r#"{{"id":"chatcmpl-AYcXqU5bnzVZJkeZQWvLc3r7bFJ4e","object":"chat.completion.chunk","created":1732810000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_0705bf87c0","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}],"usage":null}}"#
    )
}

/// The first chunk: the role and an empty content, no text.
pub fn role_chunk() -> String {
    chunk(r#"{"role":"assistant","content":"","refusal":null}"#, None)
}

/// A chunk carrying one text delta.
pub fn text_chunk(text: &str) -> String {
    chunk(&format!(r#"{{"content":{}}}"#, js(text)), None)
}

/// The chunk carrying the finish reason, with an empty delta.
pub fn finish_chunk(reason: &str) -> String {
    chunk("{}", Some(reason))
}

/// The usage-only last chunk (`stream_options.include_usage`): empty `choices`.
pub fn usage_chunk(prompt: u64, completion: u64) -> String {
    format!(
        r#"{{"id":"chatcmpl-AYcXqU5bnzVZJkeZQWvLc3r7bFJ4e","object":"chat.completion.chunk","created":1732810000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_0705bf87c0","choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{total},"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}}}"#,
        total = prompt + completion
    )
}

/// A tool-call delta chunk.
pub fn tool_chunk(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> String {
    let mut call = format!(r#"{{"index":{index}"#);
    if let Some(id) = id {
        call.push_str(&format!(r#","id":{},"type":"function""#, js(id)));
    }
    call.push_str(r#","function":{"#);
    if let Some(name) = name {
        call.push_str(&format!(r#""name":{},"#, js(name)));
    }
    call.push_str(&format!(r#""arguments":{}}}}}"#, js(arguments)));
    chunk(&format!(r#"{{"tool_calls":[{call}]}}"#), None)
}

/// One SSE event per JSON text, `data: {json}\n\n`.
pub fn frame(json: &str) -> String {
    format!("data: {json}\n\n")
}

/// The end of the stream.
pub const DONE: &str = "data: [DONE]\n\n";

/// A whole stream as OpenAI sends it: role chunk, one chunk per token, finish chunk,
/// usage-only chunk (when `usage` is given), `[DONE]`.
pub fn openai_stream(tokens: &[&str], usage: Option<(u64, u64)>) -> String {
    let mut out = frame(&role_chunk());
    for token in tokens {
        out.push_str(&frame(&text_chunk(token)));
    }
    out.push_str(&frame(&finish_chunk("stop")));
    if let Some((prompt, completion)) = usage {
        out.push_str(&frame(&usage_chunk(prompt, completion)));
    }
    out.push_str(DONE);
    out
}

/// `n` deterministic, word-like tokens (a recorded stream's shape: mostly short words with a
/// leading space, some punctuation, newlines and non-ASCII text).
pub fn recorded_tokens(n: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        " the", " stream", " of", " tokens", " arrives", " one", " by", " one", ",", " and",
        " each", " carries", " only", " its", " delta", ".", "\n\n", " Über", " naïve", " café",
        " 東京", " 🚀", " latency", " matters", " when", " users", " watch", "\"", " quoted", "\"",
        " text", ":",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            WORDS[(state % WORDS.len() as u64) as usize].to_owned()
        })
        .collect()
}
