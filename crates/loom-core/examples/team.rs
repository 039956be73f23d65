//! A team of two streaming actors, merged into one attributed stream.
//!
//! Run with `cargo run -p loom-core --example team`. Each line is one `StreamChunk` as JSON;
//! the members' tokens interleave, each tagged with its `actor`, and the team ends with one
//! `complete` holding every member's result.

use std::time::Duration;

use futures::StreamExt;
use loom_core::builtin::ScriptedAgent;
use loom_core::{Extensions, Registry, RunOptions, Runtime, Team};
use serde_json::json;

#[tokio::main]
async fn main() {
    let team = Team::new("pair", "a planner and a critic")
        .member(ScriptedAgent::new(
            "planner",
            "First outline {topic}, then draft it.",
            Duration::from_millis(40),
        ))
        .member(ScriptedAgent::new(
            "critic",
            "Check every claim about {topic} twice.",
            Duration::from_millis(55),
        ));
    let runtime = Runtime::new(Registry::new(), Extensions::new());
    let input = json!({ "topic": "streaming" });
    let mut chunks = runtime.stream_actor(team, input, RunOptions::default());
    while let Some(chunk) = chunks.next().await {
        println!("{}", chunk.to_json());
    }
}
