//! [`Team`]: several actors working concurrently on one task, merged into one stream.
//!
//! Every member runs through the runtime (so each keeps the stream contract) and all members
//! are polled from the team's own stream, on one task. Each forwarded chunk is tagged with the
//! member's name in `actor`. The team ends with one terminal chunk: `complete` with every
//! member's result, or — as soon as one member fails — `error` naming it, after the other
//! members were cancelled.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio_stream::StreamMap;

use crate::actor::{Actor, ActorStream};
use crate::chunk::ChunkType;
use crate::context::ActorContext;
use crate::error::ActorError;
use crate::output::Output;
use crate::runtime::{drive, RunOptions};

/// A group of actors run concurrently on the same input.
pub struct Team {
    name: String,
    description: String,
    members: Vec<Arc<dyn Actor>>,
}

impl Team {
    /// An empty team registered as `name`.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            members: Vec::new(),
        }
    }

    /// Adds a member; its chunks are tagged with its [`name`](Actor::name).
    pub fn member(mut self, actor: impl Actor) -> Self {
        self.members.push(Arc::new(actor));
        self
    }
}

#[async_trait]
impl Actor for Team {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn streams(&self) -> bool {
        true
    }

    fn stream(self: Arc<Self>, input: Value, ctx: ActorContext) -> ActorStream {
        Box::pin(async_stream::try_stream! {
            let total = self.members.len() as u64;
            // A `StreamMap` polls the members in turn from a random one, without allocating
            // per chunk (`select_all` re-queues each member after every item).
            let mut merged = StreamMap::with_capacity(self.members.len());
            for (i, actor) in self.members.iter().enumerate() {
                let options = RunOptions {
                    run_id: Some(ctx.run_id().to_owned()),
                    parent: Some(ctx.cancellation_token().clone()),
                    ..RunOptions::default()
                };
                let chunks = drive(Arc::clone(actor), input.clone(), Arc::clone(ctx.extensions()), options, None);
                merged.insert(i, chunks);
            }
            let mut results = Map::new();
            while let Some((i, chunk)) = merged.next().await {
                let member = self.members[i].name();
                match chunk.kind {
                    ChunkType::Start => {}
                    ChunkType::Progress | ChunkType::Data => {
                        if let Some(output) = Output::from_chunk(chunk) {
                            yield output.with_actor(member);
                        }
                    }
                    ChunkType::Complete => {
                        results.insert(member.to_owned(), chunk.data.unwrap_or(Value::Null));
                        let message = format!("{member} finished");
                        yield Output::progress(results.len() as u64, Some(total), message)
                            .with_actor(member);
                    }
                    ChunkType::Error => {
                        // Dropping the merged stream drops (cancels) every other member.
                        drop(merged);
                        let info = chunk.error_info();
                        let err = ActorError::new(
                            info.code,
                            format!("team member '{member}' failed: {}", info.message),
                        );
                        Err(err.with_retryable(info.retryable))?;
                        return;
                    }
                }
            }
            let mut result = Map::new();
            result.insert("members".to_owned(), Value::Object(results));
            yield Output::complete(Value::Object(result));
        })
    }
}
