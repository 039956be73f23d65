//! The workflow stream: markers, forwarded chunks (streaming vs not), references resolved
//! at run time, the final result and one gapless `seq`.

mod support;

use loom_core::{ChunkType, ErrorCode, Event};
use loom_workflow::WorkflowExecutor;
use serde_json::json;
use support::*;

const PIPELINE: &str = r#"
name: pipeline
input:
  required: [topic]
  properties: { topic: { type: string } }
actions:
  - name: research
    actorType: chat-agent
    streaming: false
    input: { prompt: "research ${{ input.topic }}" }
  - name: crunch
    actorType: batch
    streaming: STREAMING
    input: { count: 6, batch_size: 2, delay_ms: 0 }
  - name: write
    actorType: chat-agent
    streaming: true
    input: { prompt: "write ${{ steps.research.output.text }}" }
  - name: report
    actorType: echo
    input:
      processed: "${{ steps.crunch.output.processed }}"
      line: "${{ steps.crunch.output.batches }} batches about ${{ input.topic }}"
"#;

async fn run_pipeline(streaming: bool) -> Vec<loom_core::StreamChunk> {
    let runtime = runtime_with(vec![]);
    let yaml = PIPELINE.replace("STREAMING", &streaming.to_string());
    let workflow = workflow(&runtime, &yaml);
    let executor = WorkflowExecutor::new(runtime);
    collect(executor.stream(workflow, json!({ "topic": "rust" }))).await
}

#[tokio::test]
async fn markers_frame_every_step_and_the_result_holds_every_output() {
    let chunks = run_pipeline(true).await;
    assert_eq!(
        chunks[0].data.as_ref().map(|d| &d["actor"]),
        Some(&json!("pipeline"))
    );
    let expected: Vec<(Event, String)> = ["research", "crunch", "write", "report"]
        .iter()
        .flat_map(|s| {
            [
                (Event::ActionStart, s.to_string()),
                (Event::ActionComplete, s.to_string()),
            ]
        })
        .collect();
    assert_eq!(markers(&chunks), expected);
    for chunk in chunks
        .iter()
        .filter(|c| c.event == Some(Event::ActionStart))
    {
        assert_eq!(chunk.kind, ChunkType::Progress, "{}", chunk.to_json());
        assert_eq!(chunk.progress.as_ref().and_then(|p| p.total), Some(4));
    }
    let completes: Vec<_> = chunks
        .iter()
        .filter(|c| c.event == Some(Event::ActionComplete))
        .collect();
    assert!(completes.iter().all(|c| c.kind == ChunkType::Data));
    assert_eq!(
        completes[1].data,
        Some(json!({ "batches": 3, "processed": 6 }))
    );

    let result = terminal(&chunks);
    assert_eq!(result.kind, ChunkType::Complete);
    let steps = &result.data.as_ref().expect("result")["steps"];
    assert_eq!(steps["research"]["text"], "Reply: research rust");
    assert_eq!(steps["write"]["text"], "Reply: write Reply: research rust");
    // An exact reference keeps its type; an embedded one is stringified.
    assert_eq!(steps["report"]["processed"], json!(6));
    assert_eq!(steps["report"]["line"], json!("3 batches about rust"));
}

#[tokio::test]
async fn a_streaming_step_forwards_its_tokens_tagged_with_the_step() {
    let chunks = run_pipeline(true).await;
    assert_eq!(
        tokens_of(&chunks, "write").concat(),
        "Reply: write Reply: research rust"
    );
    // The non-streaming step's tokens stay inside it.
    assert!(tokens_of(&chunks, "research").is_empty());
    // Forwarded chunks sit between the step's own markers.
    let start = chunks
        .iter()
        .position(|c| c.event == Some(Event::ActionStart) && c.step.as_deref() == Some("write"))
        .expect("write starts");
    let end = chunks
        .iter()
        .position(|c| c.event == Some(Event::ActionComplete) && c.step.as_deref() == Some("write"))
        .expect("write completes");
    let inside: Vec<_> = chunks
        .iter()
        .filter(|c| c.step.as_deref() == Some("write") && c.event.is_none())
        .map(|c| c.seq as usize)
        .collect();
    assert!(!inside.is_empty() && inside.iter().all(|&s| s > start && s < end));
}

#[tokio::test]
async fn a_non_streaming_step_forwards_only_its_progress() {
    let quiet = run_pipeline(false).await;
    let crunch: Vec<_> = quiet
        .iter()
        .filter(|c| c.step.as_deref() == Some("crunch") && c.event.is_none())
        .collect();
    assert_eq!(crunch.len(), 3, "one progress chunk per batch");
    assert!(crunch.iter().all(|c| c.kind == ChunkType::Progress));
    assert_eq!(
        crunch[2]
            .progress
            .as_ref()
            .and_then(|p| p.message.as_deref()),
        Some("Processed batch: 2 items")
    );

    let loud = run_pipeline(true).await;
    let data: Vec<_> = loud
        .iter()
        .filter(|c| c.step.as_deref() == Some("crunch") && c.event.is_none())
        .filter(|c| c.kind == ChunkType::Data)
        .collect();
    assert_eq!(data.len(), 3, "one data chunk per batch when streaming");
    assert_eq!(
        data[0].data.as_ref().map(|d| &d["results"]),
        Some(&json!([1, 4]))
    );
}

#[tokio::test]
async fn team_members_keep_their_actor_tag_under_the_step() {
    let runtime = runtime_with(vec![]);
    let workflow = workflow(
        &runtime,
        "name: w\nactions:\n  - name: team\n    actorType: team-demo\n    streaming: true\n    input: { topic: tests }\n",
    );
    let chunks = collect(WorkflowExecutor::new(runtime).stream(workflow, json!({}))).await;
    let mut members: Vec<&str> = chunks
        .iter()
        .filter(|c| c.step.as_deref() == Some("team") && c.token().is_some())
        .filter_map(|c| c.actor.as_deref())
        .collect();
    members.sort_unstable();
    members.dedup();
    assert_eq!(members, ["analyst", "researcher", "writer"]);
}

#[tokio::test]
async fn bad_workflow_input_ends_the_stream_with_bad_input() {
    let runtime = runtime_with(vec![]);
    let yaml = PIPELINE.replace("STREAMING", "true");
    let workflow = workflow(&runtime, &yaml);
    let chunks =
        collect(WorkflowExecutor::new(runtime).stream(workflow, json!({ "topic": 3 }))).await;
    assert_eq!(chunks.len(), 2, "start, then the error: no step ran");
    let error = terminal(&chunks).error.as_ref().expect("error");
    assert_eq!(error.code, ErrorCode::BadInput);
    assert!(
        error.message.contains("`topic` must be of type string"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_failing_step_ends_the_workflow_with_an_error_naming_it() {
    let runtime = runtime_with(vec![]);
    let workflow = workflow(
        &runtime,
        "name: w\nactions:\n  - name: ok\n    actorType: echo\n  - name: broken\n    actorType: batch\n    input: { batch_size: 0 }\n  - name: never\n    actorType: echo\n",
    );
    let chunks = collect(WorkflowExecutor::new(runtime).stream(workflow, json!(null))).await;
    let error = terminal(&chunks).error.as_ref().expect("error");
    assert_eq!(error.code, ErrorCode::BadInput);
    assert!(
        error.message.starts_with("step 'broken' failed: "),
        "{}",
        error.message
    );
    assert!(!markers(&chunks).iter().any(|(_, s)| s == "never"));
}

#[tokio::test]
async fn run_returns_the_result() {
    let runtime = runtime_with(vec![]);
    let workflow = workflow(
        &runtime,
        "name: w\nactions:\n  - name: a\n    actorType: echo\n    input: { v: \"${{ input }}\" }\n",
    );
    let executor = WorkflowExecutor::new(runtime);
    let result = tokio::time::timeout(WAIT, executor.run(workflow, json!({ "x": 1 })))
        .await
        .expect("in time")
        .expect("completes");
    assert_eq!(result, json!({ "steps": { "a": { "v": { "x": 1 } } } }));
}
