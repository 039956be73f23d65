//! The workflows in `examples/workflows/` run offline: the batch one on loom-core's built-ins
//! alone, the others with a test `chat-agent` standing in for loom-ai's.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use loom_core::{ChunkType, Event, Extensions, Invoker, Registry, Runtime};
use loom_workflow::WorkflowExecutor;
use serde_json::json;
use support::*;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/workflows")
        .join(name)
}

#[tokio::test]
async fn batch_report_runs_on_the_builtins() {
    let runtime = Arc::new(Runtime::new(Registry::with_builtins(), Extensions::new()));
    let workflow = loom_workflow::load(example("batch-report.yaml"), &|t| runtime.knows(t))
        .unwrap_or_else(|e| panic!("{e}"));
    let executor = WorkflowExecutor::new(runtime);
    let chunks = collect(executor.stream(workflow, json!({ "count": 300 }))).await;
    let progress = chunks
        .iter()
        .filter(|c| c.step.as_deref() == Some("process") && c.event.is_none())
        .filter(|c| c.kind == ChunkType::Progress)
        .count();
    assert_eq!(progress, 3, "one progress chunk per batch of 100");
    let result = terminal(&chunks).data.as_ref().expect("complete");
    assert_eq!(result["steps"]["report"]["processed"], json!(300));
    assert_eq!(
        result["steps"]["report"]["summary"],
        json!("Processed 300 items in 3 batches.")
    );
}

#[tokio::test]
async fn research_pipeline_streams_the_later_steps() {
    let chunks = run_to_complete("research-pipeline.yaml").await;
    assert!(
        tokens_of(&chunks, "research").is_empty(),
        "research does not stream"
    );
    assert!(!tokens_of(&chunks, "analyse").is_empty());
    assert!(!tokens_of(&chunks, "write").is_empty());
    let steps = &terminal(&chunks).data.as_ref().expect("result")["steps"];
    assert_eq!(
        steps["research"]["text"],
        json!("Reply: List the key facts about streams.")
    );
}

#[tokio::test]
async fn team_review_runs_its_parallel_group() {
    let chunks = run_to_complete("team-review.yaml").await;
    for step in ["team-draft", "optimist", "sceptic", "edit"] {
        assert!(!tokens_of(&chunks, step).is_empty(), "{step} streams");
    }
    assert!(markers(&chunks).contains(&(Event::ActionComplete, "team".to_owned())));
    let steps = &terminal(&chunks).data.as_ref().expect("result")["steps"];
    assert!(steps["team-draft"]["members"]["writer"]["text"].is_string());
}

/// Runs an example on the test runtime with a `topic` input; it must complete.
async fn run_to_complete(name: &str) -> Vec<loom_core::StreamChunk> {
    let workflow =
        loom_workflow::load(example(name), &example_types).unwrap_or_else(|e| panic!("{e}"));
    let executor = WorkflowExecutor::new(runtime_with(vec![]));
    let chunks = collect(executor.stream(workflow, json!({ "topic": "streams" }))).await;
    assert_eq!(
        terminal(&chunks).kind,
        ChunkType::Complete,
        "{}",
        terminal(&chunks).to_json()
    );
    chunks
}
