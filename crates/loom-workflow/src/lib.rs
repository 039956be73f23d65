//! # loom-workflow: workflows that stream
//!
//! A workflow is a named list of actions written in YAML or JSON. Each action runs an actor
//! (locally or on a worker: the same definition runs either way) or a parallel group of
//! them; an action's input may reference the workflow input and earlier steps' outputs with
//! `${{ … }}`. Running a workflow gives one [`ChunkStream`](loom_core::ChunkStream) that shows
//! every step as it happens.
//!
//! - [`load`] / [`parse`] read a definition into a [`Workflow`] and reject every bad one
//!   before any work starts, with a [`WorkflowError`] naming the file, the action, the line
//!   and the [`Problem`]; [`validate`] re-checks a [`Workflow`] against a set of actor types.
//! - [`parse_duration`] reads a duration (`500ms`, `30s`, `1h`, `1.5`) the way workflow files
//!   and the CLI write it.
//! - [`WorkflowExecutor`] runs a [`Workflow`] through any [`Invoker`](loom_core::Invoker) (the
//!   local [`Runtime`](loom_core::Runtime) or a remote client) and returns its stream: step
//!   markers, the steps' forwarded chunks tagged with `step`, then one terminal chunk.
//!
//! The definition syntax and the stream's markers are documented in the crate's README.
//!
//! ```
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use loom_core::{ChunkType, Extensions, Invoker, Registry, Runtime};
//! use loom_workflow::WorkflowExecutor;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Arc::new(Runtime::new(Registry::with_builtins(), Extensions::new()));
//! let yaml = r#"
//! name: squares
//! input:
//!   required: [count]
//!   properties: { count: { type: integer } }
//! actions:
//!   - name: square
//!     actorType: batch
//!     input: { count: "${{ input.count }}", batch_size: 2, delay_ms: 0 }
//!   - name: report
//!     actorType: echo
//!     input: { processed: "${{ steps.square.output.processed }}" }
//! "#;
//! let workflow = loom_workflow::parse(yaml, "squares.yaml", &|t| runtime.knows(t))?;
//! let executor = WorkflowExecutor::new(runtime);
//! let mut chunks = executor.stream(workflow, json!({ "count": 5 }));
//! while let Some(chunk) = chunks.next().await {
//!     if chunk.kind == ChunkType::Complete {
//!         let data = chunk.data.unwrap_or_default();
//!         assert_eq!(data["steps"]["report"]["processed"], 5);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod error;
mod executor;
mod load;
mod reference;
mod schema;
mod validate;
mod workflow;

pub use error::{Problem, WorkflowError};
pub use executor::{
    default_timeout, failed_step, WorkflowExecutor, DEFAULT_WORKFLOW_TIMEOUT, WORKFLOW_ACTOR_PREFIX,
};
pub use load::{load, parse, MAX_DEFINITION_BYTES};
/// Loom's one duration syntax, from `loom-core`, which workflow files' `timeout:` and
/// `backoff:` take.
pub use loom_core::{parse_duration, parse_timeout, DurationError, MAX_DURATION};
pub use reference::{MAX_STEP_INPUT_BYTES, MAX_STEP_INPUT_DEPTH};
pub use schema::{InputSchema, JsonType, PropertySchema};
pub use validate::{is_workflow_name, validate, MAX_WORKFLOW_NAME_LEN};
pub use workflow::{Action, ActorAction, ParallelGroup, Workflow, DEFAULT_BACKOFF, MAX_BACKOFF};
