//! `forwarding`: what one forwarding layer costs. 1,000,000 token chunks from one actor, run
//! directly through the runtime, through a team of that one member, and as the one
//! `streaming: true` step of a workflow, measured in the same process in interleaved rounds:
//! each path's median rate, the median of its per-round ratios to the direct run (target
//! ≥ 0.8) and the cost per chunk it adds.
//!
//! `cargo bench -p loom-workflow --bench forwarding` (`-- quick`: 200,000 chunks, 3 rounds;
//! `-- only direct|team|step` runs one path alone, e.g. under a profiler).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use loom_core::{
    actor_fn, try_stream, Extensions, Output, Registry, RunOptions, Runtime, StreamChunk, Team,
};
use loom_workflow::WorkflowExecutor;
use serde_json::{json, Value};

/// `tokens`: `count` token chunks as fast as they are pulled, then `complete`.
fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(actor_fn("tokens", |input: Value, _ctx| {
        let count = input["count"].as_u64().unwrap_or(0);
        try_stream! {
            for _ in 0..count {
                yield Output::token("tok");
            }
            yield Output::complete(json!({ "count": count }));
        }
    }));
    registry
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
    let quick = std::env::args().any(|a| a == "quick");
    let (count, rounds) = if quick { (200_000, 3) } else { (1_000_000, 9) };
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "only")
        .and_then(|i| args.get(i + 1))
        .map(|path| match path.as_str() {
            "direct" => 0,
            "team" => 1,
            _ => 2,
        });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let runtime = Runtime::new(registry(), Extensions::new());
    let input = json!({ "count": count });
    let member = runtime.registry().get("tokens").expect("registered");
    let team = Arc::new(Team::new("team", "one member").member(member));
    let yaml = "name: one-step\nactions:\n  - name: step\n    actorType: tokens\n    streaming: true\n    input: { count: COUNT }\n"
        .replace("COUNT", &count.to_string());
    let workflow = Arc::new(
        loom_workflow::parse(&yaml, "one-step.yaml", &|t| t == "tokens").expect("workflow"),
    );
    let executor = WorkflowExecutor::new(Arc::new(runtime.clone()));

    let direct = || {
        runtime
            .stream("tokens", input.clone(), RunOptions::default())
            .expect("run")
    };
    let teamed = || runtime.stream_actor(Arc::clone(&team), input.clone(), RunOptions::default());
    let stepped = || executor.stream(Arc::clone(&workflow), Value::Null);

    println!("## forwarding: {count} token chunks, median of {rounds} interleaved rounds");
    let mut times: [Vec<Duration>; 3] = Default::default();
    for round in 0..rounds {
        for k in 0..3 {
            // Rotate the order each round, so no side always runs on a warmer cache.
            let which = (k + round) % 3;
            if only.is_some_and(|only| only != which) {
                continue;
            }
            let t = Instant::now();
            let n = match which {
                0 => rt.block_on(drain(direct())),
                1 => rt.block_on(drain(teamed())),
                _ => rt.block_on(drain(stepped())),
            };
            times[which].push(t.elapsed());
            assert!(n >= count, "{n} chunks");
        }
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let secs = |times: &Vec<Duration>| times.iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
    if let Some(only) = only {
        let rate = count as f64 / median(secs(&times[only]));
        println!("{rate:.0} chunks/s");
        return;
    }
    let direct = median(secs(&times[0]));
    for (i, name) in ["direct (runtime)", "one team member", "one streaming step"]
        .iter()
        .enumerate()
    {
        let time = median(secs(&times[i]));
        let rate = count as f64 / time;
        // The ratio of each round (direct and this path run back to back), then their
        // median: a machine that slows down or speeds up between rounds moves both sides.
        let ratio = median(
            times[0]
                .iter()
                .zip(&times[i])
                .map(|(direct, path)| direct.as_secs_f64() / path.as_secs_f64())
                .collect(),
        );
        let added = (time - direct) * 1e9 / count as f64;
        let target = if i == 0 { "" } else { " (target >= 0.80)" };
        println!(
            "{name:<20} {rate:>12.0} chunks/s  ratio {ratio:.2}{target}  +{added:.0} ns/chunk"
        );
    }
}
