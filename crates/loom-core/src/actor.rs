//! The [`Actor`] trait: the one interface every unit of work implements.
//!
//! An actor either returns one result from [`Actor::execute`] or yields a stream of
//! [`Output`]s from [`Actor::stream`]; the default `stream` wraps `execute`. Either way the
//! runtime turns what it produces into a [`ChunkStream`](crate::ChunkStream).

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::context::ActorContext;
use crate::error::ActorError;
use crate::output::Output;

/// What [`Actor::stream`] returns: outputs until a `complete`, or an error.
pub type ActorStream = BoxStream<'static, Result<Output, ActorError>>;

/// A unit of work that Loom can run locally, on a worker, in a team or as a workflow step.
///
/// The trait is object safe and is stored as `Arc<dyn Actor>`. Implement
/// [`execute`](Self::execute) for one-shot work, or [`stream`](Self::stream) (and return
/// `true` from [`streams`](Self::streams)) for work that reports as it goes.
///
/// ```
/// use std::sync::Arc;
/// use loom_core::{async_trait, Actor, ActorContext, ActorError, ActorStream, Output};
/// use serde_json::{json, Value};
///
/// struct Countdown;
///
/// #[async_trait]
/// impl Actor for Countdown {
///     fn name(&self) -> &str { "countdown" }
///     fn streams(&self) -> bool { true }
///     fn stream(self: Arc<Self>, _input: Value, _ctx: ActorContext) -> ActorStream {
///         Box::pin(async_stream::try_stream! {
///             for n in (1..=3).rev() {
///                 yield Output::data(json!({ "n": n }));
///             }
///             yield Output::complete(json!("liftoff"));
///         })
///     }
/// }
/// ```
#[async_trait]
pub trait Actor: Send + Sync + 'static {
    /// The type name the actor is registered under (`"echo"`, `"chat-agent"`).
    fn name(&self) -> &str;

    /// One line on what the actor does, for `loom actor list`.
    fn description(&self) -> &str {
        ""
    }

    /// Whether the actor streams partial output (rather than one result).
    fn streams(&self) -> bool {
        false
    }

    /// Runs the actor to one result.
    ///
    /// The default fails with `internal`, so an actor that implements neither this nor
    /// [`stream`](Self::stream) fails loudly instead of recursing.
    async fn execute(&self, input: Value, ctx: ActorContext) -> Result<Value, ActorError> {
        let _ = (input, ctx);
        Err(ActorError::internal(format!(
            "actor '{}' implements neither execute nor stream",
            self.name()
        )))
    }

    /// Runs the actor as a stream of outputs ending in `complete`.
    ///
    /// The default runs [`execute`](Self::execute) and yields its result. Dropping the
    /// returned stream cancels the work.
    fn stream(self: Arc<Self>, input: Value, ctx: ActorContext) -> ActorStream {
        Box::pin(async_stream::try_stream! {
            let result = self.execute(input, ctx).await?;
            yield Output::complete(result);
        })
    }
}

/// Reads an actor's JSON input as `T`, mapping serde's message to a `bad_input` error.
pub fn parse_input<T: DeserializeOwned>(input: Value) -> Result<T, ActorError> {
    serde_json::from_value(input).map_err(|e| ActorError::bad_input(format!("invalid input: {e}")))
}
