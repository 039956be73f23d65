//! What the `remote_stream` (loom-redis) and `sse` (loom-server) benches share: percentiles,
//! a process's resident memory, and the soak's per-stream record and report.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

/// The `p` percentile of `sorted` (0.5: the median); zero when there is none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len().max(1) - 1) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// `p50 <ms>  p99 <ms>` of `sorted`.
pub fn p50_p99(sorted: &[Duration]) -> String {
    format!(
        "p50 {}  p99 {}",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.99))
    )
}

/// `d` in milliseconds, for a report.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// A process's resident memory, from `/proc/<pid>/status`.
pub fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What one soak stream saw.
#[derive(Default)]
pub struct Seen {
    /// From asking for the stream to its first data chunk.
    pub first: Option<Duration>,
    /// Data chunks received.
    pub chunks: u64,
    /// Every 5th chunk's latency, in microseconds.
    pub latencies: Vec<u32>,
    /// Whether it ended with `complete`, every `seq` in order.
    pub ok: bool,
    /// What ended it otherwise, when known: an `error` chunk's code, a gap or a repeat.
    pub failed: Option<String>,
}

impl Seen {
    /// Counts one data chunk that arrived `since_asked` after the stream was asked for and
    /// `latency_us` after it was sent.
    pub fn data(&mut self, since_asked: Duration, latency_us: u64) {
        self.chunks += 1;
        self.first.get_or_insert(since_asked);
        if self.chunks.is_multiple_of(5) {
            self.latencies
                .push(latency_us.min(u64::from(u32::MAX)) as u32);
        }
    }
}

/// Prints the soak's figures: chunks/s, time to first chunk and per-chunk latency (p50/p99),
/// and errors (a stream not complete, short, gapped or repeated, of `count` chunks each).
pub fn report(seen: &[Seen], count: u64, started: Duration, took: Duration) {
    let chunks: u64 = seen.iter().map(|s| s.chunks).sum();
    let errors = seen.iter().filter(|s| !s.ok || s.chunks != count).count();
    let mut firsts: Vec<Duration> = seen.iter().filter_map(|s| s.first).collect();
    firsts.sort();
    let mut latencies: Vec<Duration> = seen
        .iter()
        .flat_map(|s| {
            s.latencies
                .iter()
                .map(|&us| Duration::from_micros(us.into()))
        })
        .collect();
    latencies.sort();
    println!(
        "streams started in {:.1} s; all ended after {:.1} s",
        started.as_secs_f64(),
        took.as_secs_f64()
    );
    println!(
        "chunks: {chunks} ({:.0} chunks/s over the run)",
        chunks as f64 / took.as_secs_f64()
    );
    println!("time to first chunk {}", p50_p99(&firsts));
    println!("per-chunk latency {}", p50_p99(&latencies));
    println!("errors (a stream not complete, short, gapped or repeated): {errors}");
    let mut why = std::collections::BTreeMap::new();
    for s in seen.iter().filter(|s| !s.ok || s.chunks != count) {
        let what = s.failed.as_deref().unwrap_or("short or unfinished");
        *why.entry(what).or_insert(0) += 1;
    }
    if !why.is_empty() {
        println!("errors by what ended them: {why:?}");
    }
}
