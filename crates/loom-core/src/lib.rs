//! # loom-core: actors that stream
//!
//! Loom runs *actors* and lets any caller consume their work as a live, ordered, cancellable
//! stream of [`StreamChunk`]s: `start`, `progress`, `data`, then exactly one `complete` or
//! `error`, numbered by a gapless `seq`.
//!
//! - [`Actor`] is what you implement: [`Actor::execute`] for one result, or [`Actor::stream`]
//!   yielding [`Output`]s. [`actor_fn`] makes one of a closure and a [`try_stream!`]
//!   generator. Actors live as `Arc<dyn Actor>` in a [`Registry`].
//! - [`Runtime`] runs them locally and returns a [`ChunkStream`]; it alone numbers chunks and
//!   writes the terminal one, also on error, panic, deadline or cancel. Dropping the stream
//!   cancels the actor.
//! - [`Invoker`] starts a run by actor type wherever it runs: the local [`Runtime`], or a
//!   remote client such as `loom-redis`'s `RemoteInvoker`.
//!
//! ## One verb pair
//!
//! Everything that runs work — an actor, the [`Runtime`], an [`Invoker`], a remote invoker, a
//! workflow executor — has the same two verbs: **`stream(…)`** starts the work and returns a
//! [`ChunkStream`] of every chunk; **`run(…)`** (for an actor itself: [`Actor::execute`])
//! waits for the end and returns the result as a `serde_json::Value`, or the run's error as an
//! [`ActorError`]. `run` is always `stream` read to its terminal chunk
//! ([`ChunkStream::result`]).
//! - [`ActorContext`] gives an actor its run id, its cancellation token and services.
//! - [`Team`] runs several actors concurrently and merges their chunks, tagged with `actor`.
//!
//! ```
//! use futures::StreamExt;
//! use loom_core::{ChunkType, Extensions, Registry, RunOptions, Runtime};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), loom_core::ActorError> {
//! let runtime = Runtime::new(Registry::with_builtins(), Extensions::new());
//! let input = json!({ "count": 300, "batch_size": 100, "delay_ms": 0 });
//! let mut chunks = runtime.stream("batch", input, RunOptions::default())?;
//! while let Some(chunk) = chunks.next().await {
//!     println!("{}", chunk.to_json());
//!     if chunk.kind == ChunkType::Complete {
//!         assert_eq!(chunk.data.unwrap()["processed"], 300);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod builtin;

mod actor;
mod chunk;
mod context;
mod duration;
mod error;
mod output;
mod registry;
mod runtime;
mod team;
pub mod trace;
mod turns;

pub use actor::{actor_fn, parse_input, Actor, ActorStream, FnActor};
pub use async_stream::{stream, try_stream};
pub use async_trait::async_trait;
pub use chunk::{ChunkType, ErrorInfo, Event, Progress, StreamChunk, Tag};
pub use context::{new_run_id, ActorContext, Extensions};
pub use duration::{parse_duration, parse_timeout, DurationError, MAX_DURATION};
pub use error::{ActorError, ErrorCode};
pub use output::{Output, OutputKind};
pub use registry::Registry;
pub use runtime::{Attempt, ChunkStream, Forwarded, Invoker, RunOptions, Runtime, DEFAULT_TIMEOUT};
pub use team::Team;
pub use tokio_util::sync::CancellationToken;
pub use turns::Turns;

/// The README's library example, compiled and run as a doc-test so it cannot go stale.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
