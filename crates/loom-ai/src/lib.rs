//! # loom-ai: LLM tokens as a stream
//!
//! The AI service of Loom: it streams a chat completion token by token from any
//! OpenAI-compatible server (OpenAI, Ollama, vLLM, llama.cpp's server, LiteLLM), or from a
//! built-in offline provider when none is configured, and runs it as the `chat-agent` actor.
//!
//! - [`AiService`] is the handle: [`stream_completion`](AiService::stream_completion) gives a
//!   [`TokenStream`] of [`TokenEvent`]s (text and tool-call deltas, then the finish reason and
//!   the usage), [`complete`](AiService::complete) the whole [`Completion`]. It is configured
//!   by an [`AiConfig`], usually [`AiService::from_env`] (`OPENAI_BASE_URL`, `OPENAI_API_KEY`,
//!   `LOOM_MODEL`, `LOOM_AI_IDLE_TIMEOUT`; neither of the first two set means offline).
//! - A [`CompletionRequest`] may offer [`Tool`]s (with a [`ToolChoice`]); the answer's tool
//!   calls go back in the conversation as [`Message::assistant_tool_calls`] followed by one
//!   [`Message::tool_result`] per call, all in the OpenAI Chat Completions shape.
//! - Underneath, a hand-written Server-Sent Events parser takes any split of the bytes, every
//!   line ending, comments and multi-line data.
//! - [`AiError`] says what failed and maps to Loom's wire [`ErrorCode`](loom_core::ErrorCode)
//!   through [`AiError::code`]; the API key never appears in it, nor in any `Debug`.
//! - [`ChatAgent`] is the `chat-agent` actor; [`register`] adds it to a
//!   [`Registry`](loom_core::Registry). It finds the service in the runtime's
//!   [`Extensions`](loom_core::Extensions) (a missing one fails the run with `internal`).
//!
//! Failures before the first token (429, 5xx, connection errors) are retried with capped
//! backoff, honouring `Retry-After` (a server silent for the whole idle timeout is not asked
//! again: that would multiply the wait); after the first token they end the stream with an error
//! and the tokens already yielded stand. Dropping a [`TokenStream`] (or cancelling the run)
//! closes the HTTP connection at once.
//!
//! ```
//! use std::time::Duration;
//! use futures::StreamExt;
//! use loom_ai::{AiConfig, AiService};
//! use loom_core::{ChunkType, Extensions, Registry, RunOptions, Runtime};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ai = AiService::new(AiConfig::offline().with_offline_token_delay(Duration::ZERO))?;
//! assert!(ai.is_offline());
//! let mut extensions = Extensions::new();
//! extensions.insert(ai);
//! let mut registry = Registry::new();
//! loom_ai::register(&mut registry);
//!
//! let runtime = Runtime::new(registry, extensions);
//! let mut chunks = runtime.stream("chat-agent", json!({ "prompt": "hi" }), RunOptions::default())?;
//! let mut tokens = 0;
//! while let Some(chunk) = chunks.next().await {
//!     match chunk.kind {
//!         ChunkType::Data => tokens += 1,
//!         ChunkType::Complete => {
//!             let data = chunk.data.unwrap_or_default();
//!             assert_eq!(data["finish_reason"], "stop");
//!             assert_eq!(data["usage"]["completion_tokens"], tokens);
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod agent;
mod config;
mod decode;
mod error;
mod event;
mod offline;
mod openai;
mod request;
mod service;
mod sse;
mod stream;
mod tools;

use std::sync::Arc;

pub use agent::{ChatAgent, CHAT_AGENT};
pub use config::{
    AiConfig, ApiKey, Endpoint, RetryPolicy, DEFAULT_BASE_URL, DEFAULT_MODEL, OFFLINE_MODEL,
};
pub use error::AiError;
pub use event::{
    Completion, FinishReason, TokenEvent, ToolCall, ToolCallDelta, Usage, MAX_TOOL_CALLS,
};
pub use request::{CompletionRequest, Message, Role, PASSED_THROUGH};
pub use service::AiService;
pub use stream::TokenStream;
pub use tools::{Tool, ToolChoice};

/// Registers the actors of this crate (`chat-agent`) in `registry`.
pub fn register(registry: &mut loom_core::Registry) {
    registry.register(Arc::new(ChatAgent));
}
