//! Per-action failure handling: retries with backoff (each retry visible and superseding the
//! earlier partial output), timeouts, and `continue_on_error`.

mod support;

use std::sync::atomic::Ordering;

use loom_core::{ChunkType, ErrorCode, Event, RunOptions};
use loom_workflow::WorkflowExecutor;
use serde_json::json;
use support::*;

fn one_step(actor_type: &str, options: &str) -> String {
    format!(
        "name: w\nactions:\n  - name: step\n    actorType: {actor_type}\n    streaming: true\n{options}  - name: next\n    actorType: echo\n    input: {{ got: \"${{{{ steps.step.output }}}}\" }}\n"
    )
}

#[tokio::test]
async fn retryable_failures_are_retried_and_supersede_earlier_output() {
    let flaky = Flaky::new("flaky", 2, true);
    let runtime = runtime_with(vec![flaky.clone()]);
    let workflow = workflow(
        &runtime,
        &one_step("flaky", "    retries: 3\n    backoff: 1ms\n"),
    );
    let chunks = collect(WorkflowExecutor::new(runtime).stream(workflow, json!({}))).await;

    assert_eq!(flaky.attempts.load(Ordering::SeqCst), 3);
    let story = story(&chunks);
    assert_eq!(
        story,
        [
            "ActionStart",
            "partial 1",
            "ActionRetry",
            "partial 2",
            "ActionRetry",
            "partial 3",
            "ActionComplete"
        ]
    );
    let retry = chunks
        .iter()
        .find(|c| c.event == Some(Event::ActionRetry))
        .expect("a retry marker");
    assert_eq!(retry.kind, ChunkType::Progress);
    let message = retry
        .progress
        .as_ref()
        .and_then(|p| p.message.as_deref())
        .unwrap_or("");
    assert!(message.contains("attempt 2 of 4"), "{message}");
    assert!(
        message.contains("the output of attempt 1 is superseded"),
        "{message}"
    );
    assert!(message.contains("flaky attempt 1"), "{message}");
    let result = terminal(&chunks).data.as_ref().expect("complete");
    assert_eq!(result["steps"]["next"]["got"], json!({ "attempt": 3 }));
}

#[tokio::test]
async fn failures_that_are_not_retryable_are_not_retried() {
    let flaky = Flaky::new("flaky", 1, false);
    let runtime = runtime_with(vec![flaky.clone()]);
    let workflow = workflow(
        &runtime,
        &one_step("flaky", "    retries: 3\n    backoff: 1ms\n"),
    );
    let chunks = collect(WorkflowExecutor::new(runtime).stream(workflow, json!({}))).await;
    assert_eq!(flaky.attempts.load(Ordering::SeqCst), 1);
    assert!(!chunks.iter().any(|c| c.event == Some(Event::ActionRetry)));
    let error = terminal(&chunks).error.as_ref().expect("error");
    assert_eq!(error.code, ErrorCode::Upstream);
    assert_eq!(error.message, "step 'step' failed: flaky attempt 1");
}

#[tokio::test]
async fn the_workflow_fails_when_retries_run_out() {
    let flaky = Flaky::new("flaky", 5, true);
    let runtime = runtime_with(vec![flaky.clone()]);
    let workflow = workflow(
        &runtime,
        &one_step("flaky", "    retries: 1\n    backoff: 0ms\n"),
    );
    let chunks = collect(WorkflowExecutor::new(runtime).stream(workflow, json!({}))).await;
    assert_eq!(flaky.attempts.load(Ordering::SeqCst), 2);
    let retries = chunks
        .iter()
        .filter(|c| c.event == Some(Event::ActionRetry))
        .count();
    assert_eq!(retries, 1);
    let error = terminal(&chunks).error.as_ref().expect("error");
    assert_eq!(error.message, "step 'step' failed: flaky attempt 2");
}

#[tokio::test(start_paused = true)]
async fn the_backoff_waits_between_attempts() {
    let flaky = Flaky::new("flaky", 2, true);
    let runtime = runtime_with(vec![flaky.clone()]);
    let workflow = workflow(
        &runtime,
        &one_step("flaky", "    retries: 2\n    backoff: 3s\n"),
    );
    let started = tokio::time::Instant::now();
    let chunks = collect(WorkflowExecutor::new(runtime).stream(workflow, json!({}))).await;
    assert_eq!(terminal(&chunks).kind, ChunkType::Complete);
    // 3 s before the second attempt, 6 s before the third (the clock is paused and jumps).
    assert!(started.elapsed() >= std::time::Duration::from_secs(9));
}

#[tokio::test]
async fn a_step_past_its_timeout_fails_with_timeout_and_is_stopped() {
    let hang = Hang::new("hang");
    let runtime = runtime_with(vec![hang.clone()]);
    let workflow = workflow(&runtime, &one_step("hang", "    timeout: 50ms\n"));
    let chunks = collect(WorkflowExecutor::new(runtime).stream(workflow, json!({}))).await;
    let error = terminal(&chunks).error.as_ref().expect("error");
    assert_eq!(error.code, ErrorCode::Timeout);
    assert!(
        error.message.starts_with("step 'step' failed: "),
        "{}",
        error.message
    );
    assert_eq!(hang.starts.load(Ordering::SeqCst), 1);
    assert_eq!(
        hang.drops.load(Ordering::SeqCst),
        1,
        "the timed-out actor was stopped"
    );
}

/// A workflow's own `timeout` ends it wherever it runs: as a registered actor (how workers
/// serve it, with the caller's deadline, which may be longer) as much as through the executor;
/// a caller's shorter deadline comes first. Regression test for the definition's deadline that
/// a worker ignored.
#[tokio::test]
async fn a_workflows_own_timeout_ends_it_however_it_is_run_and_a_callers_shorter_one_first() {
    let hang = Hang::new("hang");
    let runtime = runtime_with(vec![hang.clone()]);
    let yaml = "name: w\ntimeout: 100ms\nactions:\n  - { name: step, actorType: hang }\n";
    let workflow = std::sync::Arc::new(workflow(&runtime, yaml));
    let executor = WorkflowExecutor::new(runtime.clone());
    let long = RunOptions {
        timeout: Some(std::time::Duration::from_secs(60)),
        ..RunOptions::default()
    };
    let as_actor = runtime.stream_actor(executor.worker_actor(workflow.clone()), json!({}), long);
    let ways = [
        collect(executor.stream(workflow.clone(), json!({}))).await,
        collect(as_actor).await,
    ];
    for chunks in ways {
        let error = terminal(&chunks).error.as_ref().expect("error");
        assert_eq!(error.code, ErrorCode::Timeout);
        assert_eq!(error.message, "workflow 'w' passed its timeout (100ms)");
    }
    assert_eq!(
        hang.drops.load(Ordering::SeqCst),
        2,
        "each step was stopped"
    );

    let short = RunOptions {
        timeout: Some(std::time::Duration::from_millis(20)),
        ..RunOptions::default()
    };
    let chunks = collect(executor.stream_with(workflow, json!({}), short)).await;
    let error = terminal(&chunks).error.as_ref().expect("error");
    assert_eq!(error.code, ErrorCode::Timeout);
    assert_eq!(error.message, "the run passed its deadline");
}

/// A step that streams without ever waiting is cut at the workflow's own deadline too (its
/// clock is read as the tokens go by, not only when the step waits). The run has a runtime of
/// its own, left behind unwaited, so that one never cut fails this test instead of hanging it.
#[test]
fn a_workflow_whose_step_never_waits_ends_at_its_own_timeout() {
    let spin = loom_core::actor_fn("spin", |_, _| {
        loom_core::try_stream! {
            for _ in 0..u64::MAX {
                yield loom_core::Output::token("x");
            }
        }
    });
    let runtime = runtime_with(vec![std::sync::Arc::new(spin)]);
    let yaml =
        "name: w\ntimeout: 100ms\nactions:\n  - { name: step, actorType: spin, streaming: true }\n";
    let workflow = workflow(&runtime, yaml);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (done, ended) = std::sync::mpsc::channel();
    tokio.spawn(async move {
        let stream = WorkflowExecutor::new(runtime).stream(workflow, json!({}));
        let _ = done.send(collect(stream).await);
    });
    let chunks = ended.recv_timeout(std::time::Duration::from_secs(10));
    tokio.shutdown_background();
    let chunks = chunks.expect("cut at the deadline");
    let error = terminal(&chunks).error.as_ref().expect("error");
    assert_eq!(error.message, "workflow 'w' passed its timeout (100ms)");
}

#[tokio::test]
async fn a_timeout_is_retried_when_retries_are_set() {
    let hang = Hang::new("hang");
    let runtime = runtime_with(vec![hang.clone()]);
    let workflow = workflow(
        &runtime,
        &one_step(
            "hang",
            "    timeout: 20ms\n    retries: 2\n    backoff: 0\n",
        ),
    );
    let chunks = collect(WorkflowExecutor::new(runtime).stream(workflow, json!({}))).await;
    assert_eq!(hang.starts.load(Ordering::SeqCst), 3);
    assert_eq!(hang.drops.load(Ordering::SeqCst), 3);
    assert_eq!(
        chunks
            .iter()
            .filter(|c| c.event == Some(Event::ActionRetry))
            .count(),
        2
    );
    assert_eq!(error_code(terminal(&chunks)), Some(ErrorCode::Timeout));
}

#[tokio::test]
async fn continue_on_error_records_the_failure_and_goes_on() {
    let flaky = Flaky::new("flaky", 1, false);
    let runtime = runtime_with(vec![flaky]);
    let workflow = workflow(
        &runtime,
        &one_step("flaky", "    continue_on_error: true\n"),
    );
    let chunks = collect(WorkflowExecutor::new(runtime).stream(workflow, json!({}))).await;
    let failed = chunks
        .iter()
        .find(|c| c.event == Some(Event::ActionFailed))
        .expect("an action-failed marker");
    assert_eq!(failed.step.as_deref(), Some("step"));
    assert_eq!(failed.kind, ChunkType::Data);
    assert_eq!(
        failed.data,
        Some(
            json!({ "error": { "code": "upstream", "message": "flaky attempt 1", "retryable": false } })
        )
    );
    let done = terminal(&chunks);
    assert_eq!(done.kind, ChunkType::Complete);
    let result = done.data.as_ref().expect("result");
    assert_eq!(result["steps"]["step"], json!(null));
    assert_eq!(result["steps"]["next"]["got"], json!(null));
    assert_eq!(result["failed"]["step"]["code"], json!("upstream"));
}

#[tokio::test]
async fn an_unknown_actor_at_run_time_fails_the_step() {
    // The runtime that loads the definition knows `flaky`; the one that runs it does not.
    let loader = runtime_with(vec![Flaky::new("flaky", 0, false)]);
    let workflow = workflow(&loader, &one_step("flaky", ""));
    let runtime = runtime_with(vec![]);
    let chunks = collect(WorkflowExecutor::new(runtime).stream(workflow, json!({}))).await;
    assert_eq!(error_code(terminal(&chunks)), Some(ErrorCode::NotFound));
}

/// Steps that each take the output before them, wrapped once (a chain) or twice (doubling at
/// every step): the step whose input would pass the depth or size bound fails with
/// `bad_input` before its input is made, and the run ends with that error — no stack overflow,
/// no memory without end.
#[tokio::test]
async fn a_step_input_past_the_depth_or_size_bound_fails_the_step() {
    let runtime = runtime_with(vec![]);
    let chain = |steps: usize, wrap: &str, leaf: &str| {
        let mut yaml = format!(
            "name: w\nactions:\n  - name: s0\n    actorType: echo\n    input: {{ v: {leaf} }}\n"
        );
        for i in 1..steps {
            let before = format!("\"${{{{ steps.s{}.output }}}}\"", i - 1);
            let input = wrap.replace("PREV", &before);
            yaml.push_str(&format!(
                "  - name: s{i}\n    actorType: echo\n    input: {input}\n"
            ));
        }
        yaml
    };
    // The doubling chain starts from 64 KiB, so it passes 16 MiB within a few steps.
    let cases = [
        (chain(110, "{ x: PREV }", "lol"), "nest 101 levels"),
        (
            chain(40, "{ a: PREV, b: PREV }", &"x".repeat(64 << 10)),
            "MiB",
        ),
    ];
    for (yaml, says) in cases {
        let workflow = workflow(&runtime, &yaml);
        let executor = WorkflowExecutor::new(runtime.clone());
        let chunks = collect(executor.stream(workflow, json!({}))).await;
        assert_contract(&chunks);
        let end = terminal(&chunks);
        assert_eq!(error_code(end), Some(ErrorCode::BadInput), "{end:?}");
        let message = &end.error.as_ref().expect("an error").message;
        assert!(message.contains(says), "{message}");
    }
}

/// An invoker whose runs look like a remote run re-run after its worker died: a token, a
/// second `start` with `attempt: 2`, another token, `complete`.
struct RerunInvoker;

#[loom_core::async_trait]
impl loom_core::Invoker for RerunInvoker {
    async fn stream(
        &self,
        _actor_type: &str,
        _input: serde_json::Value,
        _options: loom_core::RunOptions,
    ) -> Result<loom_core::ChunkStream, loom_core::ActorError> {
        use loom_core::StreamChunk;
        let token = |seq, text: &str| StreamChunk {
            data: Some(json!({ "token": text })),
            ..StreamChunk::new(ChunkType::Data, seq)
        };
        let chunks = vec![
            StreamChunk::new(ChunkType::Start, 0),
            token(1, "lost"),
            StreamChunk {
                attempt: Some(2),
                ..StreamChunk::new(ChunkType::Start, 2)
            },
            token(3, "kept"),
            StreamChunk {
                data: Some(json!("done")),
                ..StreamChunk::new(ChunkType::Complete, 4)
            },
        ];
        Ok(loom_core::ChunkStream::new(
            "remote",
            Box::pin(futures::stream::iter(chunks)),
            loom_core::CancellationToken::new(),
        ))
    }

    fn knows(&self, _actor_type: &str) -> bool {
        true
    }
}

#[tokio::test]
async fn a_remote_re_run_marks_the_earlier_output_superseded() {
    let workflow = loom_workflow::parse(&one_step("remote", ""), "w.yaml", &|_| true)
        .unwrap_or_else(|e| panic!("{e}"));
    let executor = WorkflowExecutor::new(std::sync::Arc::new(RerunInvoker));
    let chunks = collect(executor.stream(workflow, json!({}))).await;
    let story = story(&chunks);
    assert_eq!(
        story,
        [
            "ActionStart",
            "lost",
            "ActionRetry",
            "kept",
            "ActionComplete"
        ]
    );
    let retry = chunks
        .iter()
        .find(|c| c.event == Some(Event::ActionRetry))
        .and_then(|c| c.progress.as_ref()?.message.clone())
        .unwrap_or_default();
    assert!(retry.contains("re-run by another worker"), "{retry}");
    assert!(retry.contains("superseded"), "{retry}");
}

/// What the step named `step` showed: its markers (by name) and its tokens, in order.
fn story(chunks: &[loom_core::StreamChunk]) -> Vec<String> {
    chunks
        .iter()
        .filter(|c| c.step.as_deref() == Some("step"))
        .map(|c| match (c.event, c.token()) {
            (Some(e), _) => format!("{e:?}"),
            (None, Some(t)) => t.to_owned(),
            _ => "?".to_owned(),
        })
        .collect()
}
