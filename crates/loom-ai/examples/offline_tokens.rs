//! Streams an answer token by token from the offline provider (no server, no key), printing
//! each token as it arrives and the usage at the end.
//!
//! Run with `cargo run -p loom-ai --example offline_tokens -- "Write a long story"`.

use std::io::Write;

use futures::StreamExt;
use loom_ai::{AiService, CompletionRequest, TokenEvent};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), loom_ai::AiError> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Write a story".into());
    let ai = AiService::offline();
    let mut tokens = ai.stream_completion(CompletionRequest::prompt(prompt));
    let mut stdout = std::io::stdout();
    while let Some(event) = tokens.next().await {
        match event? {
            TokenEvent::Text(text) => {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
            TokenEvent::Finish(reason) => eprintln!("\n[finish: {}]", reason.as_str()),
            TokenEvent::Usage(usage) => eprintln!("[usage: {usage:?}]"),
            other => eprintln!("\n[{other:?}]"),
        }
    }
    Ok(())
}
