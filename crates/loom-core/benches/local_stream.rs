//! `local_stream`: chunks/s of 1,000,000 `data` chunks through `Actor::stream` + the runtime,
//! next to a bare `async-stream` generator yielding the same chunks, measured in the same run.
//!
//! Run with `cargo bench -p loom-core --bench local_stream`. Criterion reports both; the
//! closing lines print both rates (medians of 15 interleaved rounds) and the median of the
//! rounds' ratios (target ≥ 0.8).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use futures::{Stream, StreamExt};
use loom_core::{
    async_trait, Actor, ActorContext, ActorStream, ChunkType, Extensions, Output, RunOptions,
    Runtime, StreamChunk,
};
use serde_json::Value;

const CHUNKS: u64 = 1_000_000;

/// Yields `CHUNKS` data chunks as fast as it can.
struct Firehose;

#[async_trait]
impl Actor for Firehose {
    fn name(&self) -> &str {
        "firehose"
    }

    fn streams(&self) -> bool {
        true
    }

    fn stream(self: Arc<Self>, _input: Value, _ctx: ActorContext) -> ActorStream {
        Box::pin(async_stream::try_stream! {
            for i in 0..CHUNKS {
                yield Output::data(Value::from(i));
            }
            yield Output::complete(Value::Null);
        })
    }
}

/// The baseline: the same chunks from a bare generator, no runtime around it.
fn bare() -> impl Stream<Item = StreamChunk> {
    async_stream::stream! {
        for i in 0..CHUNKS {
            yield StreamChunk { data: Some(Value::from(i)), ..StreamChunk::new(ChunkType::Data, i + 1) };
        }
    }
}

fn through_runtime(runtime: &Runtime) -> impl Stream<Item = StreamChunk> {
    runtime.stream_actor(Firehose, Value::Null, RunOptions::default())
}

async fn drain(stream: impl Stream<Item = StreamChunk>) -> u64 {
    let mut stream = std::pin::pin!(stream);
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        black_box(&chunk);
        n += 1;
    }
    n
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let runtime = Runtime::new(Default::default(), Extensions::new());

    let mut criterion = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = criterion.benchmark_group("local_stream");
    group.throughput(Throughput::Elements(CHUNKS));
    group.bench_function("bare_async_stream", |b| {
        b.to_async(&rt).iter(|| drain(bare()))
    });
    group.bench_function("actor_stream_runtime", |b| {
        b.to_async(&rt).iter(|| drain(through_runtime(&runtime)))
    });
    group.finish();
    criterion.final_summary();

    // The ratio, from interleaved rounds in this same process: the median of each, with the
    // order swapped every round so neither side always runs on a warmer cache.
    let (mut bare_times, mut loom_times) = (Vec::new(), Vec::new());
    for round in 0..15 {
        let mut time_bare = || {
            let t = Instant::now();
            rt.block_on(drain(bare()));
            bare_times.push(t.elapsed());
        };
        let mut time_loom = || {
            let t = Instant::now();
            rt.block_on(drain(through_runtime(&runtime)));
            loom_times.push(t.elapsed());
        };
        if round % 2 == 0 {
            time_bare();
            time_loom();
        } else {
            time_loom();
            time_bare();
        }
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let secs = |times: &[Duration]| times.iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
    let rate = |secs: f64| CHUNKS as f64 / secs;
    println!(
        "bare async-stream generator: {:>12.0} chunks/s",
        rate(median(secs(&bare_times)))
    );
    println!(
        "Actor::stream + runtime:     {:>12.0} chunks/s",
        rate(median(secs(&loom_times)))
    );
    // The ratio of each round (both sides run back to back), then their median: a machine
    // that speeds up or slows down between rounds moves both sides of a round's ratio.
    let ratios = bare_times
        .iter()
        .zip(&loom_times)
        .map(|(bare, loom)| bare.as_secs_f64() / loom.as_secs_f64())
        .collect();
    println!(
        "ratio (runtime / bare):      {:>12.2} (median of the rounds' ratios; target >= 0.80)",
        median(ratios)
    );
}
