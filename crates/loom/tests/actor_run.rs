//! `loom actor list|run`, run as a real subprocess: output, exit codes and Ctrl-C.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;

#[test]
fn actor_list_names_the_builtin_actors() {
    let out = run(&["actor", "list"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for name in ["echo", "batch", "team-demo"] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(name)),
            "{name} listed:\n{}",
            out.stdout
        );
    }
}

#[test]
fn without_stream_only_the_result_is_printed() {
    let out = run(&[
        "actor",
        "run",
        "echo",
        "--input",
        r#"{"a":1}"#,
        "--prompt",
        "hi",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let result: serde_json::Value =
        serde_json::from_str(&out.stdout).expect("stdout is the JSON result");
    assert_eq!(result, serde_json::json!({ "a": 1, "prompt": "hi" }));
    assert!(
        out.stderr.contains("✓ complete (2 chunks"),
        "{}",
        out.stderr
    );
}

#[test]
fn batch_stream_json_prints_gapless_seq_ending_in_one_complete() {
    let out = run(&[
        "actor",
        "run",
        "batch",
        "--stream",
        "--json",
        "--input",
        r#"{"count":450,"delay_ms":1}"#,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let chunks = chunks(&out.stdout);
    assert_contract(&chunks);
    assert_eq!(chunks.iter().filter(|c| c["type"] == "progress").count(), 5);
    assert_eq!(
        chunks.last().map(|c| c["data"]["processed"].clone()),
        Some(serde_json::json!(450))
    );
    assert!(
        out.stderr.is_empty(),
        "--json keeps stderr quiet: {}",
        out.stderr
    );
}

#[test]
fn json_without_stream_prints_only_the_terminal_chunk() {
    let out = run(&[
        "actor",
        "run",
        "batch",
        "--json",
        "--input",
        r#"{"count":10,"delay_ms":0}"#,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let chunks = chunks(&out.stdout);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0]["type"], "complete");
}

#[test]
fn an_unknown_actor_is_one_line_on_stderr_and_exit_2() {
    let out = run(&["actor", "run", "nope"]);
    assert_eq!(out.code, Some(2));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("loom: unknown actor type 'nope'"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    // A workflow that workers serve is no type of this process: it needs Redis.
    let out = run(&["actor", "run", "workflows/report"]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("add --redis"), "{}", out.stderr);
}

#[test]
fn bad_input_json_is_one_line_on_stderr_and_exit_2() {
    let out = run(&["actor", "run", "echo", "--input", "{bad"]);
    assert_eq!(out.code, Some(2));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("loom: --input is not valid JSON"),
        "{}",
        out.stderr
    );
}

/// Hostile `--input`: invalid UTF-8, deep nesting (60,000 levels in the argument, which holds
/// at most 128 KiB, and 100,000 from a file), a file that is not there; each one line on
/// stderr and exit 2, before anything runs.
#[test]
fn hostile_input_is_one_line_on_stderr_and_exit_2() {
    use std::os::unix::ffi::OsStrExt;
    let invalid = std::ffi::OsStr::from_bytes(b"{\"a\":\"\xFF\"}");
    let child = loom(&["actor", "run", "echo", "--input"])
        .arg(invalid)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loom starts");
    let out = finish(child);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("UTF-8"), "{}", out.stderr);

    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let deep = nested(60_000);
    let file = std::env::temp_dir().join(format!("loom-deep-{}.json", std::process::id()));
    std::fs::write(&file, nested(100_000)).unwrap();
    let at_file = format!("@{}", file.display());
    for input in [deep.as_str(), at_file.as_str(), "@/nonexistent/input.json"] {
        let out = run(&["actor", "run", "echo", "--input", input]);
        assert_eq!(out.code, Some(2), "{}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.starts_with("loom: --input"), "{}", out.stderr);
        assert!(out.stdout.is_empty());
    }
    let _ = std::fs::remove_file(file);
}

/// A 20 MB input (past what one argument may hold) from a file and from standard input reaches
/// the actor whole.
#[test]
fn a_huge_input_from_a_file_or_stdin_reaches_the_actor_whole() {
    use std::io::Write;
    let text = "x".repeat(20 * 1024 * 1024);
    let input = serde_json::json!({ "text": text }).to_string();
    let dir = std::env::temp_dir();
    let id = std::process::id();
    let file = dir.join(format!("loom-huge-{id}.json"));
    std::fs::write(&file, &input).unwrap();
    for (i, arg) in [format!("@{}", file.display()), "@-".to_owned()]
        .iter()
        .enumerate()
    {
        // Output to a file: a 20 MB result would fill a pipe nobody reads until exit.
        let output = dir.join(format!("loom-huge-{id}-{i}.out"));
        let mut child = loom(&["actor", "run", "echo", "--json", "--input", arg])
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .expect("loom starts");
        let mut stdin = child.stdin.take().unwrap();
        let sent = input.clone();
        let writer = std::thread::spawn(move || stdin.write_all(sent.as_bytes()));
        let out = finish(child);
        let _ = writer.join();
        assert_eq!(out.code, Some(0), "{arg}: {}", out.stderr);
        let printed = std::fs::read_to_string(&output).unwrap();
        let _ = std::fs::remove_file(&output);
        let last: serde_json::Value =
            serde_json::from_str(printed.lines().last().expect("a terminal line")).unwrap();
        assert_eq!(
            last["data"]["text"].as_str().map(str::len),
            Some(text.len()),
            "{arg}"
        );
    }
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_bad_duration_is_rejected_with_exit_2() {
    let out = run(&["actor", "run", "echo", "--timeout", "soon"]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("soon"), "{}", out.stderr);
}

#[test]
fn a_run_that_ends_in_an_error_chunk_exits_1() {
    let out = run(&["actor", "run", "batch", "--input", r#"{"batch_size":0}"#]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("error/bad_input"), "{}", out.stderr);
}

#[test]
fn a_run_past_its_timeout_ends_with_timeout_and_exit_1() {
    let out = run(&[
        "actor",
        "run",
        "batch",
        "--json",
        "--stream",
        "--timeout",
        "300ms",
        "--input",
        r#"{"delay_ms":10000}"#,
    ]);
    assert_eq!(out.code, Some(1));
    let chunks = chunks(&out.stdout);
    assert_contract(&chunks);
    assert_eq!(
        chunks.last().map(|c| c["error"]["code"].clone()),
        Some(serde_json::json!("timeout"))
    );
}

#[test]
fn ctrl_c_cancels_the_run_prints_the_cancelled_chunk_and_exits_130() {
    let (mut child, lines) = spawn_lines(&mut loom(&[
        "actor",
        "run",
        "batch",
        "--stream",
        "--json",
        "--input",
        r#"{"count":100000,"batch_size":10,"delay_ms":50}"#,
    ]));
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains(r#""type":"data""#)) {
        seen.push(lines.recv_timeout(LIMIT).expect("a data chunk in time"));
    }
    signal(child.id(), "INT");
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(130));
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        seen.push(line);
    }
    let chunks = chunks(&seen.join("\n"));
    assert_contract(&chunks);
    let last = chunks.last().expect("a terminal chunk");
    assert_eq!(last["error"]["code"], "cancelled", "{last}");
}

/// `loom actor run batch --stream --json` on `input`, read to its `start` chunk: the process
/// and the rest of its stdout.
fn batch_started(
    input: &str,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    let mut child = loom(&[
        "actor", "run", "batch", "--stream", "--json", "--input", input,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("loom starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("the start chunk");
    assert!(first.contains(r#""type":"start""#), "{first}");
    (child, stdout)
}

/// `loom … | less`, the pager not reading: a full pipe holds the run back, but Ctrl-C still
/// cancels it and `loom` exits 130 at once — it does not wait in `write` for a reader that
/// may never come.
#[test]
fn ctrl_c_is_heard_while_stdout_is_not_read() {
    // The run (and the signal handling, set up before it) has started.
    let (mut child, mut stdout) = batch_started(r#"{"count":1000000,"batch_size":1,"delay_ms":0}"#);
    // Then nothing is read. About 100 bytes a chunk, thousands a second: the pipe (64 KiB)
    // is full long before a second has passed, and `loom` waits on it.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "loom ended early"
    );
    signal(child.id(), "INT");
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(130));
    // What was written is the run's chunks in order (the last line may be cut off).
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("the rest of stdout");
    let lines: Vec<&str> = rest.lines().collect();
    assert!(lines.len() > 100, "{} lines", lines.len());
    let written = chunks(&lines[..lines.len() - 1].join("\n"));
    for (i, chunk) in written.iter().enumerate() {
        assert_eq!(chunk["seq"], i as u64 + 1, "{chunk}");
    }
}

/// A result `loom` could not write (a full disk) is not a success: exit 1, and why on stderr.
#[test]
fn a_result_stdout_cannot_take_is_exit_1_with_the_reason() {
    for json in [true, false] {
        let mut args = vec!["actor", "run", "echo", "--input", r#"{"a":1}"#];
        if json {
            args.push("--json");
        }
        let full = std::fs::File::create("/dev/full").expect("/dev/full");
        let child = loom(&args)
            .stdout(full)
            .stderr(Stdio::piped())
            .spawn()
            .expect("loom starts");
        let out = finish(child);
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        assert!(
            out.stderr.contains("cannot write the output to stdout"),
            "{}",
            out.stderr
        );
    }
}

/// `loom … | head -1`: once stdout's reader is gone the run is cancelled, not run to its end
/// unread, and `loom` exits 141 (128 + SIGPIPE), as a writer killed by SIGPIPE would.
#[test]
fn a_closed_stdout_cancels_the_run_and_exits_141() {
    let (child, stdout) = batch_started(r#"{"count":1000,"batch_size":1,"delay_ms":20}"#);
    drop(stdout);
    // Unread, the run would take 20 s.
    let started = std::time::Instant::now();
    let out = finish(child);
    assert_eq!(out.code, Some(141), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn team_demo_streams_attributed_tokens() {
    let out = run(&[
        "actor",
        "run",
        "team-demo",
        "--stream",
        "--input",
        r#"{"topic":"looms"}"#,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for member in ["[researcher]", "[analyst]", "[writer]"] {
        assert!(out.stdout.contains(member), "{member} in:\n{}", out.stdout);
    }
    assert!(out.stderr.contains("tokens"), "{}", out.stderr);
}

/// `--help` names where `--redis` comes from, never the URL itself: it may hold a password.
#[test]
fn help_never_prints_the_redis_url_from_the_environment() {
    let child = loom(&["--help"])
        .env("LOOM_REDIS_URL", "redis://loom:hunter2@db.example:6379")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("loom starts");
    let out = finish(child);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("LOOM_REDIS_URL"), "{}", out.stdout);
    assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
}

/// `--help` of what runs actors names the environment they read: the AI server's, and for
/// `serve` the API key, which no flag sets.
#[test]
fn help_names_the_environment_each_command_reads() {
    for (args, names) in [
        (
            &["actor", "run", "--help"][..],
            &["OPENAI_BASE_URL", "LOOM_AI_IDLE_TIMEOUT"][..],
        ),
        (
            &["workflow", "run", "--help"],
            &["OPENAI_API_KEY", "LOOM_MODEL"],
        ),
        (&["worker", "--help"], &["OPENAI_BASE_URL"]),
        (&["serve", "--help"], &["LOOM_API_KEY", "OPENAI_BASE_URL"]),
    ] {
        let out = run(args);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        for name in names {
            assert!(out.stdout.contains(name), "{args:?} {name}: {}", out.stdout);
        }
    }
}
