//! `loom workflow run|validate` on the shipped examples and on bad definitions.

mod support;

use std::time::Duration;

use support::*;

fn example(name: &str) -> String {
    format!(
        "{}/../../examples/workflows/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn every_example_validates() {
    for name in [
        "research-pipeline.yaml",
        "batch-report.yaml",
        "team-review.yaml",
    ] {
        let out = run(&["workflow", "validate", &example(name)]);
        assert_eq!(out.code, Some(0), "{name}: {}", out.stderr);
        assert!(out.stdout.contains(": ok"), "{}", out.stdout);
    }
}

#[test]
fn every_example_runs_offline_with_step_markers_and_one_gapless_stream() {
    for name in [
        "research-pipeline.yaml",
        "batch-report.yaml",
        "team-review.yaml",
    ] {
        let out = run(&["workflow", "run", &example(name), "--stream", "--json"]);
        assert_eq!(out.code, Some(0), "{name}: {}", out.stderr);
        let chunks = chunks(&out.stdout);
        assert_contract(&chunks);
        let starts = chunks
            .iter()
            .filter(|c| c["event"] == "action-start")
            .count();
        let completes = chunks
            .iter()
            .filter(|c| c["event"] == "action-complete")
            .count();
        assert!(
            starts >= 2 && starts == completes,
            "{name}: {starts} starts, {completes} completes"
        );
        assert_eq!(
            chunks.last().map(|c| c["type"].clone()),
            Some(serde_json::json!("complete"))
        );
    }
}

/// stdout and stderr into one file (`> run.log 2>&1`): each step's lines come before its ✓,
/// as on a terminal, though stdout is written by a thread of its own there.
#[test]
fn stdout_and_stderr_in_one_file_keep_their_order() {
    let path = std::env::temp_dir().join(format!("loom-both-{}.log", std::process::id()));
    let file = std::fs::File::create(&path).expect("a log file");
    let child = loom(&[
        "workflow",
        "run",
        &example("research-pipeline.yaml"),
        "--stream",
    ])
    .stdout(file.try_clone().expect("the file again"))
    .stderr(file)
    .spawn()
    .expect("loom starts");
    let out = finish(child);
    assert_eq!(out.code, Some(0));
    let log = std::fs::read_to_string(&path).expect("the log");
    let _ = std::fs::remove_file(&path);
    let lines: Vec<&str> = log.lines().collect();
    for step in ["analyse", "write"] {
        let said = lines
            .iter()
            .rposition(|l| l.starts_with(&format!("[{step}] ")))
            .unwrap_or_else(|| panic!("{step} said nothing: {log}"));
        let done = lines
            .iter()
            .position(|l| l.starts_with(&format!("✓ {step} (")))
            .unwrap_or_else(|| panic!("{step} has no ✓: {log}"));
        assert!(said < done, "{step}'s ✓ before its text: {log}");
    }
    assert!(
        lines.last().is_some_and(|l| l.starts_with("✓ complete")),
        "{log}"
    );
}

#[test]
fn a_bad_definition_is_rejected_with_the_file_and_action_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("loom-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "name: bad\nactions:\n  - name: first\n    type: actor\n    actorType: no-such-actor\n",
    )
    .expect("write");
    let file = file.display().to_string();
    for command in ["validate", "run"] {
        let out = run(&["workflow", command, &file]);
        assert_eq!(out.code, Some(2), "{command}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        for part in ["bad.yaml", "first", "no-such-actor"] {
            assert!(out.stderr.contains(part), "{part} in: {}", out.stderr);
        }
    }
}

#[test]
fn ctrl_c_cancels_the_whole_workflow_and_exits_130() {
    let (mut child, lines) = spawn_lines(&mut loom(&[
        "workflow",
        "run",
        &example("research-pipeline.yaml"),
        "--stream",
        "--json",
    ]));
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains(r#""token""#)) {
        seen.push(lines.recv_timeout(LIMIT).expect("a token in time"));
    }
    signal(child.id(), "INT");
    assert_eq!(wait(&mut child).code(), Some(130));
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        seen.push(line);
    }
    let chunks = chunks(&seen.join("\n"));
    assert_contract(&chunks);
    assert_eq!(
        chunks.last().map(|c| c["error"]["code"].clone()),
        Some(serde_json::json!("cancelled"))
    );
}

/// A team step that times out mid-sentence and is retried: each attempt's unfinished lines
/// are shown before the retry's note, never glued to the next attempt's words.
#[test]
fn a_retried_team_steps_unfinished_lines_are_not_glued_to_the_next_attempt() {
    let dir = std::env::temp_dir().join(format!("loom-cli-retry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("retry.yaml");
    // Each member says one sentence of about 14 words, 60-90 ms apart: none ends in 400 ms.
    std::fs::write(
        &file,
        "name: retry\nactions:\n  - { name: draft, type: actor, actorType: team-demo, \
         streaming: true, timeout: 400ms, retries: 1, backoff: 10ms, input: { topic: x } }\n",
    )
    .expect("write");
    let out = run(&["workflow", "run", &file.display().to_string(), "--stream"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("↻ draft retrying"), "{}", out.stderr);
    // The step's own timeout is named as such, not as the run's (the workflow's) deadline.
    assert!(
        out.stderr.contains("the step passed its timeout (400ms)"),
        "{}",
        out.stderr
    );
    let analyst: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("[draft/analyst]"))
        .collect();
    assert_eq!(analyst.len(), 2, "one line per attempt: {}", out.stdout);
    for line in analyst {
        assert_eq!(
            line.matches("The sources agree").count(),
            1,
            "{}",
            out.stdout
        );
    }
}

/// A parallel group whose step fails: that step is shown failed, its siblings stopped with it
/// (they were shown failed too, before it, and which one failed was to be read from the
/// summary).
#[test]
fn a_failed_parallel_step_is_told_from_the_siblings_stopped_with_it() {
    let dir = std::env::temp_dir().join(format!("loom-cli-parallel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("par.yaml");
    std::fs::write(
        &file,
        "name: par\nactions:\n  - name: group\n    type: parallel\n    actions:\n      \
         - { name: slow, type: actor, actorType: batch, input: { count: 50, delay_ms: 100 } }\n      \
         - { name: broken, type: actor, actorType: batch, input: { count: x } }\n",
    )
    .expect("write");
    let out = run(&["workflow", "run", &file.display().to_string(), "--stream"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let line = |start: &str| {
        out.stderr
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("a line starting {start:?}: {}", out.stderr))
            .to_owned()
    };
    assert!(
        line("■ slow").contains("stopped as 'broken' failed"),
        "{}",
        out.stderr
    );
    assert!(!line("✗ broken").contains("stopped"), "{}", out.stderr);
    assert!(
        line("✗ error/bad_input").contains("step 'broken' failed"),
        "{}",
        out.stderr
    );
}
