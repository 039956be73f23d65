//! Cancellation: dropping the workflow stream (or cancelling it) stops every running step,
//! and the cancel reaches steps through the invoker seam, as it must for remote steps.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use loom_core::{
    async_trait, ActorError, CancellationToken, ChunkStream, ChunkType, ErrorCode, Event, Invoker,
    RunOptions, Runtime,
};
use loom_workflow::WorkflowExecutor;
use serde_json::{json, Value};
use support::*;

const TWO_RUNNING: &str = r#"
name: w
actions:
  - name: both
    type: parallel
    actions:
      - { name: left, actorType: left, streaming: true }
      - { name: right, actorType: right, streaming: true }
"#;

/// Reads until both steps have forwarded a token, so both are known to be running.
async fn until_both_run(chunks: &mut ChunkStream) -> Vec<loom_core::StreamChunk> {
    let mut log = Vec::new();
    let mut seen = (false, false);
    while seen != (true, true) {
        let chunk = next(chunks).await;
        if chunk.token().is_some() {
            match chunk.step.as_deref() {
                Some("left") => seen.0 = true,
                Some("right") => seen.1 = true,
                _ => {}
            }
        }
        log.push(chunk);
    }
    log
}

#[tokio::test]
async fn dropping_the_workflow_stream_stops_every_running_step() {
    let (left, mut l) = controlled("left");
    let (right, mut r) = controlled("right");
    let runtime = runtime_with(vec![left, right]);
    let workflow = workflow(&runtime, TWO_RUNNING);
    let mut chunks = WorkflowExecutor::new(runtime).stream(workflow, json!({}));
    l.send(Cmd::Token("l"));
    r.send(Cmd::Token("r"));
    until_both_run(&mut chunks).await;
    drop(chunks);
    l.wait_dropped().await;
    r.wait_dropped().await;
}

#[tokio::test]
async fn cancel_ends_the_stream_with_cancelled_and_stops_the_steps() {
    let (left, mut l) = controlled("left");
    let (right, mut r) = controlled("right");
    let runtime = runtime_with(vec![left, right]);
    let workflow = workflow(&runtime, TWO_RUNNING);
    let mut chunks = WorkflowExecutor::new(runtime).stream(workflow, json!({}));
    l.send(Cmd::Token("l"));
    r.send(Cmd::Token("r"));
    let mut log = until_both_run(&mut chunks).await;
    chunks.cancel();
    log.extend(until_terminal(&mut chunks).await);
    assert_contract(&log);
    let error = terminal(&log).error.as_ref().expect("an error");
    assert_eq!(error.code, ErrorCode::Cancelled);
    assert_eq!(error.message, "cancelled by client", "not blamed on a step");
    assert!(!log.iter().any(|c| c.event == Some(Event::ActionFailed)));
    l.wait_dropped().await;
    r.wait_dropped().await;
}

#[tokio::test]
async fn a_workflow_cancelled_between_steps_starts_no_further_step() {
    let (first, first_control) = controlled("first");
    let (second, _second_control) = controlled("second");
    let runtime = runtime_with(vec![first, second]);
    let workflow = workflow(
        &runtime,
        r#"
name: w
actions:
  - { name: a, actorType: first }
  - { name: b, actorType: second }
"#,
    );
    let mut chunks = WorkflowExecutor::new(runtime).stream(workflow, json!({}));
    first_control.send(Cmd::Complete(json!("done")));
    let mut log = Vec::new();
    while !log
        .iter()
        .any(|c: &loom_core::StreamChunk| c.event == Some(Event::ActionComplete))
    {
        log.push(next(&mut chunks).await);
    }
    chunks.cancel();
    log.extend(until_terminal(&mut chunks).await);
    assert_contract(&log);
    assert_eq!(
        error_code(terminal(&log)),
        Some(ErrorCode::Cancelled),
        "{log:?}"
    );
    assert_eq!(
        markers(&log),
        [
            (Event::ActionStart, "a".to_owned()),
            (Event::ActionComplete, "a".to_owned())
        ],
        "step b must not start"
    );
}

/// An invoker in front of a local runtime that records the parent token of every run: a
/// remote invoker can only stop a step through that token.
struct Recording {
    runtime: Arc<Runtime>,
    parents: Mutex<Vec<Option<CancellationToken>>>,
}

#[async_trait]
impl Invoker for Recording {
    async fn stream(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<ChunkStream, ActorError> {
        if let Ok(mut parents) = self.parents.lock() {
            parents.push(options.parent.clone());
        }
        self.runtime.stream(actor_type, input, options)
    }

    fn knows(&self, actor_type: &str) -> bool {
        self.runtime.knows(actor_type)
    }
}

#[tokio::test]
async fn steps_get_the_workflow_token_as_parent_so_cancel_reaches_remote_steps() {
    let (left, l) = controlled("left");
    let (right, r) = controlled("right");
    let invoker = Arc::new(Recording {
        runtime: runtime_with(vec![left, right]),
        parents: Mutex::new(Vec::new()),
    });
    let workflow =
        loom_workflow::parse(TWO_RUNNING, "w.yaml", &|t| invoker.knows(t)).expect("loads");
    let mut chunks = WorkflowExecutor::new(invoker.clone()).stream(workflow, json!({}));
    l.send(Cmd::Token("l"));
    r.send(Cmd::Token("r"));
    until_both_run(&mut chunks).await;
    let parents: Vec<CancellationToken> = invoker
        .parents
        .lock()
        .map(|p| p.iter().flatten().cloned().collect())
        .unwrap_or_default();
    assert_eq!(parents.len(), 2, "every step gets a parent token");
    assert!(parents.iter().all(|t| !t.is_cancelled()));
    chunks.cancel();
    assert!(parents.iter().all(CancellationToken::is_cancelled));
}

#[tokio::test(start_paused = true)]
async fn cancelling_during_a_backoff_ends_the_workflow_with_no_further_attempt() {
    let flaky = Flaky::new("flaky", 5, true);
    let runtime = runtime_with(vec![flaky.clone()]);
    let workflow = workflow(
        &runtime,
        "name: w\nactions:\n  - name: step\n    actorType: flaky\n    retries: 3\n    backoff: 1h\n",
    );
    let mut chunks = WorkflowExecutor::new(runtime).stream(workflow, json!({}));
    loop {
        let chunk = next(&mut chunks).await;
        assert_ne!(chunk.kind, ChunkType::Complete);
        if chunk.event == Some(Event::ActionRetry) {
            break;
        }
    }
    // The workflow now waits out an hour of backoff; a cancel must end it at once, with no
    // second attempt (the paused clock would otherwise jump the hour and run it).
    chunks.cancel();
    let last = next(&mut chunks).await;
    assert_eq!(
        last.error.map(|e| e.code),
        Some(loom_core::ErrorCode::Cancelled)
    );
    assert_eq!(flaky.attempts.load(Ordering::SeqCst), 1);
}
