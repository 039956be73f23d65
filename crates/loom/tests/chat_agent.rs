//! `loom actor run chat-agent`: offline by default, any OpenAI-compatible server by
//! `OPENAI_BASE_URL`, and Ctrl-C stops the generation and the upstream request.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::*;

#[test]
fn with_no_configuration_chat_agent_streams_from_the_offline_provider() {
    let out = run(&["actor", "run", "chat-agent", "--stream", "--prompt", "hi"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("hi"),
        "the offline text quotes the prompt: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("offline provider"),
        "labelled offline: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("tokens/s"),
        "a summary with tokens/s: {}",
        out.stderr
    );
    // With `--json` stderr carries only an error that stops the command; the text itself
    // says it is the offline provider's.
    let json = run(&["actor", "run", "chat-agent", "--json", "--prompt", "hi"]);
    assert_eq!(json.code, Some(0), "{}", json.stderr);
    assert_eq!(json.stderr, "");
    assert!(json.stdout.contains("offline provider"), "{}", json.stdout);
}

#[test]
fn openai_base_url_streams_tokens_from_that_server() {
    let usage = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
        "choices": [], "usage": { "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5 }
    });
    let events = vec![
        token_event("Hello"),
        token_event(" world"),
        finish_event(),
        usage.to_string(),
        "[DONE]".into(),
    ];
    let server = FakeOpenAi::start(events, false);
    let child = chat_agent_json(&server, "hi");
    let out = finish(child);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("offline"), "{}", out.stderr);
    let chunks = chunks(&out.stdout);
    assert_contract(&chunks);
    let tokens: Vec<_> = chunks
        .iter()
        .filter_map(|c| c["data"]["token"].as_str())
        .collect();
    assert_eq!(tokens, ["Hello", " world"]);
    let last = chunks.last().expect("terminal");
    assert_eq!(last["data"]["text"], "Hello world");
    assert_eq!(last["data"]["finish_reason"], "stop");
    assert_eq!(last["data"]["usage"]["total_tokens"], 5);
}

#[test]
fn ctrl_c_stops_the_generation_aborts_the_upstream_request_and_exits_130() {
    let server = FakeOpenAi::start(vec![token_event("Once"), token_event(" upon")], true);
    let mut child = chat_agent_json(&server, "Write a story");
    let lines = lines(&mut child);
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|l: &&String| l.contains(r#""token""#))
        .count()
        < 2
    {
        seen.push(lines.recv_timeout(LIMIT).expect("two tokens in time"));
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
        Some(json!("cancelled"))
    );
    server
        .disconnected
        .recv_timeout(Duration::from_secs(5))
        .expect("the upstream request was aborted");
}

/// Starts `loom actor run chat-agent --stream --json --prompt <prompt>` against `server`.
fn chat_agent_json(server: &FakeOpenAi, prompt: &str) -> std::process::Child {
    loom(&[
        "actor",
        "run",
        "chat-agent",
        "--stream",
        "--json",
        "--prompt",
        prompt,
    ])
    .env("OPENAI_BASE_URL", &server.base_url)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("loom starts")
}

#[test]
fn control_characters_in_tokens_never_reach_the_terminal_but_json_keeps_them() {
    // A model (or a prompt injection) sets the window title, writes the clipboard, rings
    // the bell and returns the cursor to erase the line.
    let hostile = "\u{1b}]0;pwned\u{7}Hi\u{1b}]52;c;ZXZpbA==\u{7} there\r\u{1b}[2K\u{9b}31m!";
    let events = vec![token_event(hostile), finish_event(), "[DONE]".into()];
    let server = FakeOpenAi::start(events.clone(), false);
    let out = finish(
        loom(&["actor", "run", "chat-agent", "--stream", "--prompt", "hi"])
            .env("OPENAI_BASE_URL", &server.base_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("loom starts"),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "a control character got through: {text:?}"
        );
    }
    assert!(
        out.stdout.contains("Hi") && out.stdout.contains(" there"),
        "{:?}",
        out.stdout
    );
    // `--json` is for programs: the token as the model sent it, escaped as JSON escapes it.
    let server = FakeOpenAi::start(events, false);
    let out = finish(chat_agent_json(&server, "hi"));
    let chunks = chunks(&out.stdout);
    let token = chunks.iter().find_map(|c| c["data"]["token"].as_str());
    assert_eq!(token, Some(hostile));
}

/// `LOOM_AI_IDLE_TIMEOUT` sets how long a silent AI server is waited for (a model on a CPU
/// may think for minutes); one that is no duration is refused before anything runs.
#[test]
fn loom_ai_idle_timeout_bounds_a_silent_server_and_nonsense_is_exit_2() {
    use std::io::{Read, Write};
    // Answers the headers and one token, then says nothing more for the test's whole limit.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let base_url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let Ok((mut socket, _)) = listener.accept() else {
            return;
        };
        let mut buf = [0u8; 4096];
        let _ = socket.read(&mut buf);
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
        let _ = socket.write_all(format!("{head}data: {}\n\n", token_event("Hi")).as_bytes());
        std::thread::sleep(LIMIT);
    });
    let started = std::time::Instant::now();
    let out = finish(
        loom(&["actor", "run", "chat-agent", "--json", "--prompt", "hi"])
            .env("OPENAI_BASE_URL", &base_url)
            .env("LOOM_AI_IDLE_TIMEOUT", "1s")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("loom starts"),
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let chunks = chunks(&out.stdout);
    let last = chunks.last().expect("a terminal chunk");
    assert_eq!(last["type"], "error", "{last}");
    let message = last["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("for 1s"), "{last}");
    // Not the default minute.
    assert!(started.elapsed() < Duration::from_secs(30));

    let mut bad = loom(&["actor", "run", "chat-agent", "--prompt", "hi"]);
    bad.env("LOOM_AI_IDLE_TIMEOUT", "soon");
    let out = finish(
        bad.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("loom starts"),
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("LOOM_AI_IDLE_TIMEOUT"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "");
}
