//! Prometheus metrics for `GET /metrics`: counters and histograms the drive task
//! ([`crate::runs`]) or, in distributed mode, the watcher of each run this server queued
//! ([`crate::remote`]) and the SSE bodies ([`crate::sse`]) update, rendered in the text
//! exposition format with the gauges the routes read at scrape time.
//!
//! Hand-rolled on atomics: a handful of series does not need a metrics library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket bounds, in seconds: from a token's latency to a long workflow.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The server's counters and histograms.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    chunks_sent: AtomicU64,
    resumes: AtomicU64,
    slow_readers_dropped: AtomicU64,
    /// Finished runs by outcome: `complete` or the error's code.
    outcomes: Mutex<BTreeMap<&'static str, u64>>,
    first_chunk: Histogram,
    run_duration: Histogram,
}

/// The gauges read at scrape time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gauges {
    /// Runs this server started that have not ended (in distributed mode: queued here).
    pub(crate) active_runs: usize,
    pub(crate) open_streams: usize,
}

impl Metrics {
    /// `n` chunks written to SSE or WebSocket clients.
    pub(crate) fn chunks_sent(&self, n: usize) {
        self.chunks_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A reader joined a run from a cursor.
    pub(crate) fn resumed(&self) {
        self.resumes.fetch_add(1, Ordering::Relaxed);
    }

    /// A reader that fell behind was disconnected: overtaken by the log bound, or (WebSocket)
    /// taking no frame for twice the keep-alive interval.
    pub(crate) fn slow_reader_dropped(&self) {
        self.slow_readers_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A run's first chunk after `start` came `after` its start.
    pub(crate) fn first_chunk(&self, after: Duration) {
        self.first_chunk.observe(after);
    }

    /// A run ended with `outcome` (`complete` or an error code) after `took`.
    pub(crate) fn finished(&self, outcome: &'static str, took: Duration) {
        self.run_duration.observe(took);
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        *outcomes.entry(outcome).or_default() += 1;
    }

    /// The exposition text.
    pub(crate) fn render(&self, gauges: Gauges) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "loom_active_runs",
            "gauge",
            "Runs this server started that have not ended.",
            gauges.active_runs as u64,
        );
        metric(
            "loom_open_streams",
            "gauge",
            "SSE streams open.",
            gauges.open_streams as u64,
        );
        metric(
            "loom_chunks_sent_total",
            "counter",
            "Chunks written to SSE and WebSocket clients.",
            self.chunks_sent.load(Ordering::Relaxed),
        );
        metric(
            "loom_resumes_total",
            "counter",
            "Readers that joined a run from a cursor.",
            self.resumes.load(Ordering::Relaxed),
        );
        metric(
            "loom_slow_readers_dropped_total",
            "counter",
            "Readers disconnected for falling behind: overtaken by the log bound, or taking no \
             WebSocket frame for twice the keep-alive interval.",
            self.slow_readers_dropped.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP loom_runs_finished_total Runs ended, by outcome (complete or the error code).\n\
             # TYPE loom_runs_finished_total counter"
        );
        let outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        for (outcome, n) in outcomes.iter() {
            let _ = writeln!(out, "loom_runs_finished_total{{outcome=\"{outcome}\"}} {n}");
        }
        self.first_chunk.render(
            &mut out,
            "loom_time_to_first_chunk_seconds",
            "From a run's start to its first chunk after start.",
        );
        self.run_duration.render(
            &mut out,
            "loom_run_duration_seconds",
            "From a run's start to its terminal chunk.",
        );
        out
    }
}

/// A cumulative histogram over [`BUCKETS`].
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            let n = bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_outcomes_are_labelled() {
        let metrics = Metrics::default();
        metrics.finished("complete", Duration::from_millis(30));
        metrics.finished("cancelled", Duration::from_secs(2));
        let text = metrics.render(Gauges {
            active_runs: 1,
            open_streams: 2,
        });
        assert!(text.contains("\nloom_open_streams 2\n"), "{text}");
        assert!(text.contains("loom_runs_finished_total{outcome=\"cancelled\"} 1\n"));
        assert!(text.contains("loom_run_duration_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("loom_run_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("loom_run_duration_seconds_bucket{le=\"2.5\"} 2\n"));
        assert!(text.contains("loom_run_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("loom_run_duration_seconds_count 2\n"));
    }
}
