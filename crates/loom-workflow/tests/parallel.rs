//! Parallel groups: their steps run at the same time, their chunks interleave (each tagged),
//! and a failing step cancels its running siblings before the workflow's error.

mod support;

use loom_core::{ActorError, ChunkType, ErrorCode, Event};
use loom_workflow::WorkflowExecutor;
use serde_json::json;
use support::*;

const GROUP: &str = r#"
name: w
actions:
  - name: first
    actorType: echo
    input: { n: 1 }
  - name: both
    type: parallel
    actions:
      - { name: left, actorType: left, streaming: true }
      - { name: right, actorType: right, streaming: true }
  - name: after
    actorType: echo
    input: { l: "${{ steps.left.output }}", r: "${{ steps.right.output.side }}" }
"#;

/// Reads chunks until the next forwarded one, checking it is `token` from `step`.
async fn expect_token(
    chunks: &mut loom_core::ChunkStream,
    log: &mut Vec<loom_core::StreamChunk>,
    step: &str,
    token: &str,
) {
    loop {
        let chunk = next(chunks).await;
        log.push(chunk.clone());
        if chunk.event.is_some() || chunk.kind == ChunkType::Start {
            continue;
        }
        assert_eq!(chunk.step.as_deref(), Some(step), "{}", chunk.to_json());
        assert_eq!(chunk.token(), Some(token), "{}", chunk.to_json());
        return;
    }
}

#[tokio::test]
async fn parallel_steps_interleave_their_chunks() {
    let (left, l) = controlled("left");
    let (right, r) = controlled("right");
    let runtime = runtime_with(vec![left, right]);
    let workflow = workflow(&runtime, GROUP);
    let mut chunks = WorkflowExecutor::new(runtime).stream(workflow, json!({}));
    let mut log = Vec::new();

    // Each token exists only after the test asks for it, so left-right-left-right proves
    // both steps are running at once and their chunks reach the stream as they happen.
    l.send(Cmd::Token("l1"));
    expect_token(&mut chunks, &mut log, "left", "l1").await;
    r.send(Cmd::Token("r1"));
    expect_token(&mut chunks, &mut log, "right", "r1").await;
    l.send(Cmd::Token("l2"));
    expect_token(&mut chunks, &mut log, "left", "l2").await;
    r.send(Cmd::Token("r2"));
    expect_token(&mut chunks, &mut log, "right", "r2").await;
    r.send(Cmd::Complete(json!({ "side": "right" })));
    l.send(Cmd::Complete(json!("left done")));
    log.extend(until_terminal(&mut chunks).await);
    assert_contract(&log);
    let mut seen = log;

    let result = seen.pop().expect("terminal");
    assert_eq!(result.kind, ChunkType::Complete, "{}", result.to_json());
    let steps = &result.data.expect("result")["steps"];
    assert_eq!(steps["after"], json!({ "l": "left done", "r": "right" }));
    assert_eq!(steps["left"], json!("left done"));
    let group_complete = seen
        .iter()
        .find(|c| c.event == Some(Event::ActionComplete) && c.step.as_deref() == Some("both"))
        .expect("the group completes");
    assert_eq!(
        group_complete.data,
        Some(json!({ "left": "left done", "right": { "side": "right" } }))
    );
}

#[tokio::test]
async fn busy_parallel_steps_take_turns() {
    // Neither step ever waits: polling the steps from the same one each time would forward
    // all of one step's tokens before the other's.
    let busy = |name: &'static str| -> std::sync::Arc<dyn loom_core::Actor> {
        std::sync::Arc::new(loom_core::actor_fn(name, move |_, _| {
            loom_core::try_stream! {
                for _ in 0..50 {
                    yield loom_core::Output::token(name);
                }
                yield loom_core::Output::complete(json!(name));
            }
        }))
    };
    let runtime = runtime_with(vec![busy("left"), busy("right")]);
    let yaml = "name: busy\nactions:\n  - name: both\n    type: parallel\n    actions:\n      - { name: l, actorType: left, streaming: true }\n      - { name: r, actorType: right, streaming: true }\n";
    let workflow = workflow(&runtime, yaml);
    let chunks = collect(WorkflowExecutor::new(runtime).stream(workflow, json!({}))).await;
    assert_contract(&chunks);
    // Each step's tokens carry its step's name ("l" says "left", "r" says "right").
    let said: Vec<(&str, &str)> = chunks
        .iter()
        .filter_map(|c| Some((c.step.as_deref()?, c.token()?)))
        .collect();
    assert_eq!(said.len(), 100, "every token is forwarded, tagged");
    assert!(
        said.iter().all(|(step, token)| token.starts_with(step)),
        "{said:?}"
    );
    assert!(
        said.windows(2).all(|two| two[0].0 != two[1].0),
        "steps alternate: {said:?}"
    );
}

#[tokio::test]
async fn a_group_frames_its_steps_with_markers_in_one_gapless_stream() {
    let (left, l) = controlled("left");
    let (right, r) = controlled("right");
    let runtime = runtime_with(vec![left, right]);
    let workflow = workflow(&runtime, GROUP);
    let stream = WorkflowExecutor::new(runtime).stream(workflow, json!({}));
    l.send(Cmd::Token("a"));
    l.send(Cmd::Complete(json!(1)));
    r.send(Cmd::Progress(1));
    r.send(Cmd::Complete(json!(2)));
    let chunks = collect(stream).await;
    let m = markers(&chunks);
    let position = |event, step: &str| {
        m.iter()
            .position(|(e, s)| *e == event && s == step)
            .unwrap_or_else(|| panic!("{event:?} {step} in {m:?}"))
    };
    assert!(position(Event::ActionComplete, "first") < position(Event::ActionStart, "both"));
    assert!(position(Event::ActionStart, "both") < position(Event::ActionStart, "left"));
    assert!(position(Event::ActionStart, "both") < position(Event::ActionStart, "right"));
    assert!(position(Event::ActionComplete, "left") < position(Event::ActionComplete, "both"));
    assert!(position(Event::ActionComplete, "right") < position(Event::ActionComplete, "both"));
    assert!(position(Event::ActionComplete, "both") < position(Event::ActionStart, "after"));
    let progress = chunks
        .iter()
        .find(|c| c.step.as_deref() == Some("right") && c.event.is_none())
        .expect("right's progress is forwarded");
    assert_eq!(progress.kind, ChunkType::Progress);
}

#[tokio::test]
async fn a_failing_step_cancels_its_running_siblings_first() {
    let (left, mut l) = controlled("left");
    let (right, r) = controlled("right");
    let runtime = runtime_with(vec![left, right]);
    let workflow = workflow(&runtime, GROUP);
    let mut chunks = WorkflowExecutor::new(runtime).stream(workflow, json!({}));
    let mut log = Vec::new();

    l.send(Cmd::Token("working"));
    expect_token(&mut chunks, &mut log, "left", "working").await;
    r.send(Cmd::Fail(ActorError::failed("right broke")));
    let rest = until_terminal(&mut chunks).await;
    log.extend(rest.iter().cloned());
    assert_contract(&log);
    // The sibling was dropped before the error chunk was written.
    assert!(
        l.dropped.try_recv().is_ok(),
        "left must be stopped before the error"
    );
    let error = rest
        .last()
        .and_then(|c| c.error.as_ref())
        .expect("an error");
    assert_eq!(error.code, ErrorCode::ActorFailed);
    assert_eq!(error.message, "step 'right' failed: right broke");
    assert!(!rest.iter().any(|c| c.step.as_deref() == Some("after")));
}
