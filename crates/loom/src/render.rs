//! How the CLI shows a run: for people (spinner, progress bar, tokens, summary) or for
//! scripts (`--json`: JSON Lines, one `StreamChunk` per line on stdout).
//!
//! stdout carries results only — tokens, data, the final result, or JSON Lines. Everything
//! meant for a person (spinner, progress, summary, errors) goes to stderr; indicatif hides the
//! spinner when stderr is not a terminal. A closed stdout pipe is not an error: writes to it
//! are dropped.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use loom_core::{ChunkType, Event, StreamChunk};
use serde_json::Value;

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
        }
    }

    /// Shows one chunk.
    pub(crate) fn chunk(&mut self, chunk: &StreamChunk) {
        self.chunks += 1;
        if self.mode.json {
            if self.mode.stream || chunk.is_terminal() {
                out(&format!("{}\n", chunk.to_json()));
            }
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
                    self.bar.set_message(format!("📝 {} tokens", self.tokens));
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

    /// A workflow marker: a spinner line per running step, then ✓/✗ and its duration.
    fn marker(&mut self, event: Event, step: &str, chunk: &StreamChunk) {
        self.flush_label(step);
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
                let message = chunk.progress.as_ref().and_then(|p| p.message.clone());
                let message = format!("↻ {step}: {}", message.unwrap_or_default());
                self.note(&message);
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
        line.set_style(
            ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        line.finish_with_message(text.clone());
        if !std::io::stderr().is_terminal() {
            eprintln!("{text}");
        }
    }

    /// A line for people, above the spinners.
    fn note(&self, text: &str) {
        if std::io::stderr().is_terminal() {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
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
            if !self.mid_line {
                // Raw tokens fill the terminal's current line, where a spinner would be drawn
                // over them: from the first token on, the summary line reports progress instead.
                self.multi.set_draw_target(ProgressDrawTarget::hidden());
            }
            out(token);
            self.mid_line = true;
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

    /// Prints a whole line on stdout, ending any line of tokens first.
    fn line(&mut self, text: &str) {
        let newline = if self.mid_line { "\n" } else { "" };
        self.bar.suspend(|| out(&format!("{newline}{text}\n")));
        self.mid_line = false;
    }

    /// Ends the run's display with its terminal chunk (or `None` if the stream ended without
    /// one) and prints the result and the summary.
    pub(crate) fn finish(mut self, terminal: Option<&StreamChunk>) {
        while !self.pending.is_empty() {
            self.flush(0);
        }
        while let Some((step, _, _)) = self.steps.last().cloned() {
            self.end_step(&step, "✗", None);
        }
        self.bar.finish_and_clear();
        if self.mode.json {
            return;
        }
        if self.mid_line {
            out("\n");
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
                    out(&format!(
                        "{}\n",
                        pretty(chunk.data.as_ref().unwrap_or(&Value::Null))
                    ));
                }
                eprintln!("✓ complete ({stats}, {secs:.2} s)");
            }
            Some(chunk) => {
                let (code, message) = chunk
                    .error
                    .as_ref()
                    .map_or(("internal", "no error details"), |e| {
                        (e.code.as_str(), e.message.as_str())
                    });
                eprintln!("✗ error/{code}: {message} ({stats}, {secs:.2} s)");
            }
            None => eprintln!("✗ the stream ended without a terminal chunk ({stats})"),
        }
    }
}

fn label(chunk: &StreamChunk) -> Option<String> {
    match (&chunk.step, &chunk.actor) {
        (Some(step), Some(actor)) => Some(format!("{step}/{actor}")),
        (Some(one), None) | (None, Some(one)) => Some(one.clone()),
        (None, None) => None,
    }
}

fn pretty(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

/// Writes to stdout and flushes, so tokens appear as they arrive; errors (a closed pipe) are
/// ignored on purpose.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
}

fn step_style() -> ProgressStyle {
    ProgressStyle::with_template("  {spinner:.cyan} {prefix:.bold} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner:.cyan} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({elapsed})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
    .progress_chars("=> ")
}
