//! How the CLI shows a run: for people (spinner, progress bar, tokens, summary) or for
//! scripts (`--json`: JSON Lines, one `StreamChunk` per line on stdout).
//!
//! stdout carries results only — tokens, data, the final result, or JSON Lines. Everything
//! meant for a person (spinner, progress, summary, errors) goes to stderr; indicatif hides the
//! spinner when stderr is not a terminal. When stdout's reader goes away (`| head`), nothing
//! more is written to it and the run is stopped as if by `SIGPIPE` ([`stdout_error`]). When
//! stdout is not a terminal (a pipe, a file), what a chunk prints is handed to a thread of its
//! own ([`StdoutWriter`]): a reader that stops reading holds the run back, as it should, but
//! never the task that must hear a Ctrl-C.
//!
//! When stdout and stderr are the same terminal, nothing is written under indicatif's feet:
//! finished lines (a step's ✓, a member's sentence) go above the live area with
//! [`MultiProgress::suspend`], and an actor's own tokens are shown in a live line above the
//! spinner until their line is complete (or as wide as the terminal), then printed for good —
//! so the text and a live token count are both on screen all the run. Indicatif redraws its
//! area by moving the cursor up over the lines it drew; a line it does not know of (a raw
//! token mid-line, a finished bar left in the area) makes it erase lines it does not own.
//!
//! Text from the run (tokens, messages, names) is printed with the control characters a
//! terminal acts on taken out ([`printable`]): a model's output must not set the window title,
//! write the clipboard or erase what is on screen. `--json` escapes them as JSON does.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::mem;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use loom_core::{ChunkType, Event, StreamChunk};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// What to print, from the `--stream` and `--json` flags.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RenderMode {
    /// Print every chunk as it arrives, not only the result.
    pub(crate) stream: bool,
    /// JSON Lines on stdout instead of text.
    pub(crate) json: bool,
}

/// Prints one run's chunks as they arrive.
pub(crate) struct Renderer {
    mode: RenderMode,
    /// Holds the run's bar and one spinner line per running workflow step.
    multi: MultiProgress,
    bar: ProgressBar,
    /// Running workflow steps: their line and when they started.
    steps: Vec<(String, ProgressBar, Instant)>,
    started: Instant,
    chunks: u64,
    tokens: u64,
    /// Tokens of tagged chunks (team members, workflow steps), buffered per label until a
    /// sentence ends, so concurrent contributions print as readable attributed lines.
    pending: Vec<(String, String)>,
    /// Whether the last thing printed to stdout was an untagged token (a newline is owed).
    mid_line: bool,
    /// Untagged tokens on a terminal: the line being written, shown live.
    live: Option<LiveLine>,
    /// Whether stdout and stderr share a terminal (asked once, not per token).
    shared_terminal: bool,
    stdout: Stdout,
}

/// stdout as the renderer writes it: straight to a terminal (indicatif's redraws around the
/// text need it written when they happen), else into [`Output`] its caller hands to a
/// [`StdoutWriter`] — with the lines for stderr, so the two keep their order when they go to
/// one file (`> run.log 2>&1`).
struct Stdout {
    terminal: bool,
    pending: Output,
}

impl Stdout {
    fn write(&mut self, text: &str) {
        if stdout_error().is_some() {
            return;
        }
        if self.terminal {
            write_now(text);
        } else {
            self.pending.push(Piece::Out, text);
        }
    }
}

/// Output on its way to stdout and stderr, in the order it was made.
#[derive(Debug, Default)]
pub(crate) struct Output(Vec<(Piece, String)>);

/// Where a piece of [`Output`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Out,
    Err,
}

impl Output {
    fn push(&mut self, piece: Piece, text: &str) {
        match self.0.last_mut() {
            Some((last, pending)) if *last == piece => pending.push_str(text),
            _ => self.0.push((piece, text.to_owned())),
        }
    }

    /// Appends `later`.
    pub(crate) fn append(&mut self, later: Output) {
        for (piece, text) in later.0 {
            self.push(piece, &text);
        }
    }

    /// Writes the stdout pieces to stdout (until it fails) and the rest to stderr, in order.
    fn write(&self) {
        for (piece, text) in &self.0 {
            match piece {
                Piece::Out => write_now(text),
                Piece::Err => write_err(text),
            }
        }
    }

    /// Writes the lines for stderr now, and returns the rest: a stopped run's summary shows
    /// even while stdout's reader has stalled.
    pub(crate) fn stderr_now(self) -> Output {
        let (err, out): (Vec<_>, Vec<_>) = self.0.into_iter().partition(|(p, _)| *p == Piece::Err);
        for (_, text) in err {
            write_err(&text);
        }
        Output(out)
    }
}

/// The line of tokens being written, shown in the live area until it is complete.
struct LiveLine {
    bar: ProgressBar,
    text: String,
    /// The terminal's width: a longer line is broken (at a space when there is one).
    width: usize,
}

impl Renderer {
    pub(crate) fn new(mode: RenderMode) -> Self {
        let multi = if mode.json {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
        };
        let bar = multi.add(ProgressBar::new_spinner());
        if !mode.json {
            bar.set_style(spinner_style());
            bar.enable_steady_tick(Duration::from_millis(100));
            bar.set_message("Processing…");
        }
        Self {
            mode,
            multi,
            bar,
            steps: Vec::new(),
            started: Instant::now(),
            chunks: 0,
            tokens: 0,
            pending: Vec::new(),
            mid_line: false,
            live: None,
            shared_terminal: shares_a_terminal(),
            stdout: Stdout {
                terminal: std::io::stdout().is_terminal(),
                pending: Output::default(),
            },
        }
    }

    /// What the chunks shown so far print and is not written yet (nothing when stdout is a
    /// terminal: then everything is written at once).
    pub(crate) fn take_output(&mut self) -> Option<Output> {
        (!self.stdout.pending.0.is_empty()).then(|| mem::take(&mut self.stdout.pending))
    }

    /// Shows one chunk.
    pub(crate) fn chunk(&mut self, chunk: &StreamChunk) {
        self.chunks += 1;
        if self.mode.json {
            if self.mode.stream || chunk.is_terminal() {
                self.stdout.write(&format!("{}\n", chunk.to_json()));
            }
            return;
        }
        let chunk = &*printable(chunk);
        if let Some(attempt) = chunk
            .attempt
            .filter(|&a| a > 1 && chunk.kind == ChunkType::Start)
        {
            self.rerun(attempt);
            return;
        }
        if let (Some(event), Some(step)) = (chunk.event, &chunk.step) {
            self.marker(event, step, chunk);
            return;
        }
        let label = label(chunk);
        match chunk.kind {
            ChunkType::Progress => self.progress(chunk, label),
            ChunkType::Data => {
                if let Some(token) = chunk.token() {
                    self.tokens += 1;
                    if label.is_none() {
                        self.bar
                            .set_message(format!("📝 Generated {} tokens…", self.tokens));
                    }
                    if self.mode.stream {
                        self.token(token, label);
                    }
                } else if self.mode.stream {
                    let data = chunk.data.as_ref().map_or(Value::Null, Clone::clone);
                    let prefix = label.map(|l| format!("[{l}] ")).unwrap_or_default();
                    self.line(&format!("{prefix}{data}"));
                }
            }
            ChunkType::Start | ChunkType::Complete | ChunkType::Error => {}
        }
    }

    /// The run started again (its worker was lost): what was shown of the attempt before is
    /// superseded, and said so, never mixed into the new attempt's output silently.
    fn rerun(&mut self, attempt: u32) {
        self.pending.clear();
        if let Some(live) = self.live.take() {
            live.bar.finish_and_clear();
            self.multi.remove(&live.bar);
        }
        // The attempt before's running steps are superseded too: the new attempt starts its
        // own (they were left to be marked ✗ at the end, after the new attempt's ✓).
        for (_, line, _) in self.steps.drain(..) {
            line.finish_and_clear();
            self.multi.remove(&line);
        }
        if self.mid_line {
            self.stdout.write("\n");
            self.mid_line = false;
        }
        self.tokens = 0;
        let notice = format!(
            "↻ attempt {attempt}: the run started again on another worker; the output above is superseded"
        );
        // Said in the output itself when it goes to a file or a pipe, where the notice on
        // stderr is not next to it: the two attempts' text is never taken for one.
        if self.mode.stream && !self.stdout.terminal && !stdout_is_stderr() {
            self.stdout.write(&format!("{notice}\n"));
        }
        self.note(&notice);
    }

    /// A workflow marker: a spinner line per running step, then ✓/✗ and its duration.
    fn marker(&mut self, event: Event, step: &str, chunk: &StreamChunk) {
        self.flush_step(step);
        match event {
            Event::ActionStart => {
                let line = self
                    .multi
                    .insert_before(&self.bar, ProgressBar::new_spinner());
                line.set_style(step_style());
                line.set_prefix(step.to_owned());
                let message = chunk.progress.as_ref().and_then(|p| p.message.clone());
                line.set_message(message.unwrap_or_default());
                line.enable_steady_tick(Duration::from_millis(100));
                self.steps.push((step.to_owned(), line, Instant::now()));
            }
            Event::ActionRetry => {
                // The marker's message names its step already ("draft retrying: …").
                let message = chunk.progress.as_ref().and_then(|p| p.message.clone());
                self.note(&format!("↻ {}", message.as_deref().unwrap_or(step)));
            }
            Event::ActionComplete => self.end_step(step, "✓", None),
            _ => {
                let error = chunk
                    .data
                    .as_ref()
                    .and_then(|d| d["error"]["message"].as_str());
                self.end_step(step, "✗", error.map(str::to_owned));
            }
        }
    }

    /// Ends a step's line with a mark and its duration (a plain line on stderr without a
    /// terminal, where the spinners are hidden).
    fn end_step(&mut self, step: &str, mark: &str, error: Option<String>) {
        let Some(index) = self.steps.iter().position(|(s, _, _)| s == step) else {
            return;
        };
        let (_, line, started) = self.steps.remove(index);
        let detail = error.map(|e| format!(": {e}")).unwrap_or_default();
        let text = format!(
            "{mark} {step} ({:.2} s){detail}",
            started.elapsed().as_secs_f64()
        );
        // Out of the live area, then printed above it for good: a finished bar left in the
        // area would be counted wrongly when the area is redrawn.
        line.finish_and_clear();
        self.multi.remove(&line);
        self.note(&text);
    }

    /// A line for people on stderr, above the live area (or, when stdout is not a terminal,
    /// after what was printed on stdout before it).
    fn note(&mut self, text: &str) {
        if self.stdout.terminal {
            self.multi.suspend(|| say!("{text}"));
        } else {
            self.stdout.pending.push(Piece::Err, &format!("{text}\n"));
        }
    }

    fn progress(&mut self, chunk: &StreamChunk, label: Option<String>) {
        let Some(progress) = &chunk.progress else {
            return;
        };
        if let Some(label) = &label {
            self.flush_label(label);
        }
        let prefix = label.map(|l| format!("[{l}] ")).unwrap_or_default();
        let message = progress.message.clone().unwrap_or_default();
        if let Some(total) = progress
            .total
            .filter(|_| chunk.actor.is_none() && chunk.step.is_none())
        {
            if self.bar.length().is_none() {
                self.bar.set_style(bar_style());
            }
            self.bar.set_length(total);
            self.bar.set_position(progress.current);
        }
        self.bar.set_message(format!("{prefix}{message}"));
        if self.mode.stream && chunk.event.is_some() {
            self.line(&format!("{prefix}{}", message));
        }
    }

    fn token(&mut self, token: &str, label: Option<String>) {
        let Some(label) = label else {
            if self.live.is_none() && self.shared_terminal {
                let bar = self
                    .multi
                    .insert_before(&self.bar, ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                let width = usize::from(console::Term::stdout().size().1).max(20);
                self.live = Some(LiveLine {
                    bar,
                    text: String::new(),
                    width,
                });
            }
            match &mut self.live {
                Some(live) => {
                    live.text.push_str(token);
                    for line in live.complete_lines() {
                        self.multi
                            .suspend(|| self.stdout.write(&format!("{line}\n")));
                    }
                    live.bar.set_message(live.text.clone());
                }
                None => {
                    self.stdout.write(token);
                    self.mid_line = true;
                }
            }
            return;
        };
        let index = match self.pending.iter().position(|(l, _)| *l == label) {
            Some(index) => index,
            None => {
                self.pending.push((label, String::new()));
                self.pending.len() - 1
            }
        };
        let (label, text) = &mut self.pending[index];
        text.push_str(token);
        let tail: String = text
            .chars()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        self.bar.set_message(format!("[{label}] …{tail}"));
        if token.trim_end().ends_with(['.', '!', '?', '\n']) || token.ends_with('\n') {
            self.flush(index);
        }
    }

    /// Prints the buffered tokens of one label as a line.
    fn flush(&mut self, index: usize) {
        let (label, text) = self.pending.remove(index);
        if !text.trim().is_empty() {
            self.line(&format!("[{label}] {}", text.trim()));
        }
    }

    fn flush_label(&mut self, label: &str) {
        if let Some(index) = self.pending.iter().position(|(l, _)| l == label) {
            self.flush(index);
        }
    }

    /// Prints the buffered tokens of a step and of its team members (`step/member`), so a
    /// step's marker — its end, or a retry whose tokens start again — follows them and the
    /// next attempt's tokens are never appended to the last one's.
    fn flush_step(&mut self, step: &str) {
        let of_step = |label: &str| {
            label
                .strip_prefix(step)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        while let Some(index) = self.pending.iter().position(|(l, _)| of_step(l)) {
            self.flush(index);
        }
    }

    /// Prints a whole line on stdout, ending any line of tokens first.
    fn line(&mut self, text: &str) {
        let newline = if self.mid_line { "\n" } else { "" };
        self.multi
            .suspend(|| self.stdout.write(&format!("{newline}{text}\n")));
        self.mid_line = false;
    }

    /// Ends the run's display with its terminal chunk (or `None` if the stream ended without
    /// one) and prints the result and the summary; returns what is still to be written to
    /// stdout ([`take_output`](Self::take_output)). `left`: the reader stopped reading
    /// before the end (`stream tail` stopped, or its stdout closed), so the steps still open
    /// did not fail, and the run may well go on.
    pub(crate) fn finish(mut self, terminal: Option<&StreamChunk>, left: bool) -> Option<Output> {
        let terminal = terminal.map(printable);
        let terminal = terminal.as_deref();
        while !self.pending.is_empty() {
            self.flush(0);
        }
        // The steps still open: the one a workflow's error names failed, the others were
        // stopped with it (or are still going, for a reader that left).
        let failed = terminal
            .and_then(|t| t.error.as_ref())
            .and_then(|e| loom_workflow::failed_step(&e.message));
        let open_mark = match (left && terminal.is_none(), failed) {
            (true, _) => "…",
            (false, Some(_)) => "■",
            (false, None) => "✗",
        };
        let open: Vec<String> = self.steps.iter().map(|(step, _, _)| step.clone()).collect();
        for step in open.iter().filter(|step| Some(step.as_str()) != failed) {
            let stopped = failed.map(|f| format!("stopped as '{f}' failed"));
            self.end_step(step, open_mark, stopped);
        }
        if let Some(failed) = failed {
            self.end_step(failed, "✗", None);
        }
        if let Some(live) = self.live.take() {
            live.bar.finish_and_clear();
            self.multi.remove(&live.bar);
            if !live.text.is_empty() {
                self.multi
                    .suspend(|| self.stdout.write(&format!("{}\n", live.text)));
            }
        }
        self.bar.finish_and_clear();
        if self.mode.json {
            return self.take_output();
        }
        if self.mid_line {
            self.stdout.write("\n");
        }
        let secs = self.started.elapsed().as_secs_f64();
        let mut stats = format!("{} chunks", self.chunks);
        if self.tokens > 0 {
            let rate = self.tokens as f64 / secs.max(1e-9);
            stats.push_str(&format!(", {} tokens, {rate:.1} tokens/s", self.tokens));
        }
        match terminal {
            Some(chunk) if chunk.kind == ChunkType::Complete => {
                let printed_tokens = self.mode.stream && self.tokens > 0;
                if !printed_tokens {
                    self.stdout.write(&format!(
                        "{}\n",
                        pretty(chunk.data.as_ref().unwrap_or(&Value::Null))
                    ));
                }
                self.note(&format!("✓ complete ({stats}, {secs:.2} s)"));
            }
            Some(chunk) => {
                let (code, message) = chunk
                    .error
                    .as_ref()
                    .map_or(("internal", "no error details"), |e| {
                        (e.code.as_str(), e.message.as_str())
                    });
                self.note(&format!("✗ error/{code}: {message} ({stats}, {secs:.2} s)"));
            }
            None if left => self.note(&format!("■ stopped reading before the run's end ({stats})")),
            None => self.note(&format!(
                "✗ the stream ended without a terminal chunk ({stats})"
            )),
        }
        self.take_output()
    }
}

/// Whether a terminal would act on `c` rather than show it: a control character other than a
/// newline or a tab (escape, carriage return, bell, backspace, delete, the C1 range).
fn acted_on(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// `text` as a terminal shows it and nothing more: each character it would act on becomes
/// U+FFFD, except a carriage return, which is dropped (a `\r\n` line end stays a line end).
fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acted_on) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .filter(|&c| c != '\r')
            .map(|c| if acted_on(c) { '\u{FFFD}' } else { c })
            .collect(),
    )
}

/// `chunk` with its text that reaches the terminal (token, progress and error messages, a
/// failed step's message, speaker names) [`clean`]ed; the chunk itself when there is nothing
/// to clean, as for nearly every chunk.
fn printable(chunk: &StreamChunk) -> Cow<'_, StreamChunk> {
    let dirty = |text: Option<&str>| text.is_some_and(|t| t.chars().any(acted_on));
    let step_error = |c: &StreamChunk| {
        c.data
            .as_ref()
            .and_then(|d| d.get("error")?.get("message")?.as_str().map(str::to_owned))
    };
    let needs = dirty(chunk.token())
        || dirty(chunk.progress.as_ref().and_then(|p| p.message.as_deref()))
        || dirty(chunk.error.as_ref().map(|e| e.message.as_str()))
        || dirty(chunk.actor.as_deref())
        || dirty(chunk.step.as_deref())
        || dirty(step_error(chunk).as_deref());
    if !needs {
        return Cow::Borrowed(chunk);
    }
    let mut chunk = chunk.clone();
    if let Some(token) = chunk.token().map(|t| clean(t).into_owned()) {
        if let Some(data) = chunk.data.as_mut() {
            data["token"] = Value::String(token);
        }
    }
    if let Some(message) = step_error(&chunk) {
        if let Some(data) = chunk.data.as_mut() {
            data["error"]["message"] = Value::String(clean(&message).into_owned());
        }
    }
    if let Some(message) = chunk.progress.as_mut().and_then(|p| p.message.as_mut()) {
        *message = clean(message).into_owned();
    }
    if let Some(error) = chunk.error.as_mut() {
        error.message = clean(&error.message).into_owned();
    }
    chunk.actor = chunk.actor.map(|a| clean(&a).as_ref().into());
    chunk.step = chunk.step.map(|s| clean(&s).as_ref().into());
    Cow::Owned(chunk)
}

impl LiveLine {
    /// Takes the lines of `text` that are complete: up to a newline, or as wide as the
    /// terminal (broken after the last space that fits, else at the width).
    fn complete_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            if let Some(end) = self.text.find('\n') {
                let rest = self.text.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.text, rest);
                line.pop();
                lines.push(line);
            } else if console::measure_text_width(&self.text) >= self.width {
                let fits: usize = self
                    .text
                    .char_indices()
                    .nth(self.width - 1)
                    .map_or(self.text.len(), |(i, _)| i);
                let cut = self.text[..fits].rfind(' ').map_or(fits, |i| i + 1);
                let rest = self.text.split_off(cut);
                let line = std::mem::replace(&mut self.text, rest);
                lines.push(line.trim_end().to_owned());
            } else {
                return lines;
            }
        }
    }
}

/// Whether stdout and stderr are both a terminal (the same one, for all a program can tell):
/// then tokens on stdout and the live area on stderr share the screen.
fn shares_a_terminal() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// Whether stdout and stderr are one file (`> run.log 2>&1`): then what is said on stderr is
/// next to the output already.
fn stdout_is_stderr() -> bool {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let identity = |fd: std::os::fd::BorrowedFd<'_>| {
            let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
            let meta = file.metadata().ok()?;
            Some((meta.dev(), meta.ino()))
        };
        let out = identity(std::io::stdout().as_fd());
        out.is_some() && out == identity(std::io::stderr().as_fd())
    }
    #[cfg(not(unix))]
    {
        false
    }
}

fn label(chunk: &StreamChunk) -> Option<String> {
    match (&chunk.step, &chunk.actor) {
        (Some(step), Some(actor)) => Some(format!("{step}/{actor}")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_string()),
        (None, None) => None,
    }
}

fn pretty(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

/// The first failed write to stdout: its reader went away (`| head`), or it takes no more
/// (a full disk). Nothing more is written after it.
static STDOUT_ERROR: OnceLock<std::io::Error> = OnceLock::new();

/// Why stdout takes no more output, once a write to it failed; the run being followed is then
/// stopped as by a `SIGPIPE` ([`crate::follow`]).
pub(crate) fn stdout_error() -> Option<&'static std::io::Error> {
    STDOUT_ERROR.get()
}

/// Writes to stdout and flushes, so tokens appear as they arrive; a failed write is kept
/// ([`stdout_error`]).
fn write_now(text: &str) {
    if stdout_error().is_some() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        let _ = STDOUT_ERROR.set(e);
    }
}

/// Writes to stderr; a failure there has nowhere to be told.
fn write_err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The thread that writes a run's output when stdout is not a terminal, so the task that
/// follows the run waits for a stalled reader without blocking in `write` — where it could not
/// hear a signal.
pub(crate) struct StdoutWriter {
    tx: mpsc::Sender<Output>,
    done: oneshot::Receiver<()>,
}

impl StdoutWriter {
    /// Starts the thread.
    pub(crate) fn start() -> Self {
        // Each piece is a chunk's output: a few of them in flight keep the thread busy while
        // the reader keeps up, and bound what waits when it does not.
        let (tx, mut rx) = mpsc::channel::<Output>(4);
        let (finished, done) = oneshot::channel();
        std::thread::spawn(move || {
            while let Some(output) = rx.blocking_recv() {
                output.write();
            }
            let _ = finished.send(());
        });
        Self { tx, done }
    }

    /// Room for one more piece, once the thread has taken the ones before (cancel-safe).
    pub(crate) async fn reserve(&self) -> Option<mpsc::Permit<'_, Output>> {
        self.tx.reserve().await.ok()
    }

    /// Writes `rest`, then waits until everything handed over is written (or stdout failed).
    pub(crate) async fn finish(self, rest: Option<Output>) {
        if let (Some(text), Some(permit)) = (rest, self.tx.reserve().await.ok()) {
            permit.send(text);
        }
        drop(self.tx);
        let _ = self.done.await;
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {wide_msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
}

fn step_style() -> ProgressStyle {
    ProgressStyle::with_template("  {spinner:.cyan} {prefix:.bold} {wide_msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner:.cyan} [{bar:30.cyan/blue}] {pos}/{len} {wide_msg} ({elapsed})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
    .progress_chars("=> ")
}
