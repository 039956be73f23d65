//! What a person sees: the real binary under a pseudo-terminal of a given size, its output
//! fed to a terminal emulator (`vt100`), and assertions on the final screen.
//!
//! These catch what piped-output tests cannot: lines the progress display erases or leaves
//! frozen when stdout and stderr share a terminal.

mod support;

use std::io::Read;
use std::sync::mpsc;
use std::time::Instant;

use portable_pty::{native_pty_system, CommandBuilder, PtySize};
use support::LIMIT;

/// A finished run under a terminal: its exit code, every byte it wrote, the final screen.
struct Screen {
    code: u32,
    raw: String,
    contents: String,
}

/// Runs `loom args` under a `cols`×`rows` pseudo-terminal (stdout and stderr both on it),
/// bounded by [`LIMIT`].
fn run_in_terminal(args: &[&str], cols: u16, rows: u16) -> Screen {
    let pair = native_pty_system()
        .openpty(PtySize {
            rows,
            cols,
            pixel_width: 0,
            pixel_height: 0,
        })
        .expect("a pseudo-terminal");
    let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_loom"));
    cmd.args(args);
    cmd.cwd(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    cmd.env("TERM", "xterm-256color");
    for var in [
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "LOOM_MODEL",
        "LOOM_AI_IDLE_TIMEOUT",
        "LOOM_REDIS_URL",
        "NO_COLOR",
    ] {
        cmd.env_remove(var);
    }
    let mut child = pair.slave.spawn_command(cmd).expect("loom starts");
    // Only the child holds the terminal now, so the reader sees its end when the child exits.
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().expect("a reader");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        // Linux answers EIO once the child side is closed: that is the end of the output.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(bytes);
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loom did not exit within {LIMIT:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let bytes = rx.recv_timeout(LIMIT).expect("the output ends");
    drop(pair.master);
    let size = |n: u16| std::num::NonZeroU16::new(n).expect("a terminal is not empty");
    let mut parser = vt100::Parser::new(size(rows), size(cols), 0);
    parser.process(&bytes);
    Screen {
        code: status.exit_code(),
        raw: String::from_utf8_lossy(&bytes).into_owned(),
        contents: parser.screen().contents(),
    }
}

#[test]
fn chat_agent_shows_its_text_and_a_live_token_count_and_leaves_no_frozen_line() {
    let screen = run_in_terminal(
        &["actor", "run", "chat-agent", "--stream", "--prompt", "hi"],
        120,
        30,
    );
    assert_eq!(screen.code, 0, "{}", screen.contents);
    assert!(
        screen.contents.contains("You said: \"hi\""),
        "the generated text is on screen:\n{}",
        screen.contents
    );
    assert!(
        screen.raw.contains("Generated"),
        "a live token count was drawn during the run:\n{}",
        screen.raw
    );
    assert!(
        !screen.contents.contains('📝'),
        "no token-count line is left on screen:\n{}",
        screen.contents
    );
    let summary = screen
        .contents
        .lines()
        .find(|l| l.starts_with("✓ complete ("))
        .unwrap_or_else(|| panic!("a summary line:\n{}", screen.contents));
    assert!(summary.contains("tokens/s"), "{summary}");
    // Every line of text is whole: none is cut by a spinner drawn over it.
    let text: Vec<&str> = screen
        .contents
        .lines()
        .filter(|l| !l.starts_with("loom:") && !l.starts_with('✓') && !l.is_empty())
        .collect();
    assert!(!text.is_empty());
    for line in text {
        assert!(
            !line.contains(['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏']),
            "a spinner frame is left in the text: {line:?}"
        );
    }
}

#[test]
fn a_parallel_workflow_shows_the_check_mark_of_the_group_and_of_each_step() {
    let screen = run_in_terminal(
        &[
            "workflow",
            "run",
            "examples/workflows/team-review.yaml",
            "--stream",
        ],
        120,
        40,
    );
    assert_eq!(screen.code, 0, "{}", screen.contents);
    for step in ["team", "team-draft", "optimist", "sceptic", "edit"] {
        let mark = format!("✓ {step} (");
        assert!(
            screen.contents.lines().any(|l| l.starts_with(&mark)),
            "{mark}… is on screen:\n{}",
            screen.contents
        );
    }
    // The steps' own lines printed before the marks are still there, not erased by redraws.
    for label in ["[team-draft/writer]", "[optimist]", "[sceptic]", "[edit]"] {
        assert!(
            screen.contents.contains(label),
            "{label} lines are on screen:\n{}",
            screen.contents
        );
    }
    assert!(screen.contents.contains("✓ complete ("));
}
