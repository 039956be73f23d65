//! `batch`: processes a list (or a generated dataset) in batches, reporting each one.
//!
//! Input: `{"items": [...]}` or `{"count": N}` for a generated dataset of the numbers
//! `1..=N` (default 1,000, at most 10,000,000), with `batch_size` (default 100, at most
//! 10,000) and `delay_ms` per batch (default
//! 100, standing in for real work). Each batch yields a `data` chunk with its results and a
//! `progress` chunk `current/total` ("Processed batch: 100 items"). Numbers are squared,
//! strings upper-cased, anything else passed through.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actor::{parse_input, Actor, ActorStream};
use crate::context::ActorContext;
use crate::error::ActorError;
use crate::output::Output;

/// The largest generated dataset, so a typo cannot ask for billions of items.
const MAX_COUNT: u64 = 10_000_000;

/// The largest batch: one batch is one `data` chunk, which a reader takes whole.
const MAX_BATCH_SIZE: usize = 10_000;

/// Processes items in batches, one `progress` and one `data` chunk per batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Batch;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchInput {
    items: Option<Vec<Value>>,
    count: Option<u64>,
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    #[serde(default = "default_delay_ms")]
    delay_ms: u64,
}

fn default_batch_size() -> usize {
    100
}

fn default_delay_ms() -> u64 {
    100
}

fn process(item: &Value) -> Value {
    match item {
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i
                .checked_mul(i)
                .map_or_else(|| json!((i as f64) * (i as f64)), Value::from),
            (None, Some(f)) => json!(f * f),
            _ => item.clone(),
        },
        Value::String(s) => Value::String(s.to_uppercase()),
        other => other.clone(),
    }
}

#[async_trait]
impl Actor for Batch {
    fn name(&self) -> &str {
        "batch"
    }

    fn description(&self) -> &str {
        "processes a list or a generated dataset in batches, reporting each batch"
    }

    fn streams(&self) -> bool {
        true
    }

    fn stream(self: Arc<Self>, input: Value, _ctx: ActorContext) -> ActorStream {
        Box::pin(async_stream::try_stream! {
            let input = if input.is_null() { json!({}) } else { input };
            let input: BatchInput = parse_input(input)?;
            let size = input.batch_size;
            if size == 0 || size > MAX_BATCH_SIZE {
                Err(ActorError::bad_input(format!("batch_size must be 1 to {MAX_BATCH_SIZE}")))?;
            }
            // A generated dataset is made a batch at a time, never held whole.
            let (items, len) = match (input.items, input.count) {
                (Some(_), Some(_)) => Err(ActorError::bad_input("give either items or count, not both"))?,
                (Some(items), None) => {
                    let len = items.len();
                    (Some(items), len)
                }
                (None, count) => {
                    let count = count.unwrap_or(1_000);
                    if count > MAX_COUNT {
                        Err(ActorError::bad_input(format!("count must be at most {MAX_COUNT}")))?;
                    }
                    (None, count as usize)
                }
            };
            let total = len.div_ceil(size) as u64;
            let delay = Duration::from_millis(input.delay_ms);
            for (index, start) in (0..len).step_by(size).enumerate() {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let end = (start + size).min(len);
                let results: Vec<Value> = match &items {
                    Some(items) => items[start..end].iter().map(process).collect(),
                    None => (start + 1..=end).map(|n| process(&Value::from(n))).collect(),
                };
                let current = index as u64 + 1;
                yield Output::data(json!({ "batch": current, "results": results }));
                let message = format!("Processed batch: {} items", end - start);
                yield Output::progress(current, Some(total), message);
            }
            yield Output::complete(json!({ "batches": total, "processed": len }));
        })
    }
}
