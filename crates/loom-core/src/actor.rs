//! The [`Actor`] trait: the one interface every unit of work implements.
//!
//! An actor either returns one result from [`Actor::execute`] or yields a stream of
//! [`Output`]s from [`Actor::stream`]; the default `stream` wraps `execute`. Either way the
//! runtime turns what it produces into a [`ChunkStream`](crate::ChunkStream).
//!
//! [`actor_fn`] makes an actor of a closure, the shortest way to write one.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::Stream;
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
/// use loom_core::{async_trait, try_stream, Actor, ActorContext, ActorStream, Output};
/// use serde_json::{json, Value};
///
/// struct Countdown;
///
/// #[async_trait]
/// impl Actor for Countdown {
///     fn name(&self) -> &str { "countdown" }
///     fn streams(&self) -> bool { true }
///     fn stream(self: Arc<Self>, _input: Value, _ctx: ActorContext) -> ActorStream {
///         Box::pin(try_stream! {
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

    /// Whether the actor takes a conversation, `{"messages": [{"role", "content"}, …]}` in
    /// the OpenAI Chat Completions shape (as `chat-agent` does). Chat clients served by
    /// `loom-server` then hand it the whole conversation; other actors get the last user
    /// message's text.
    fn takes_messages(&self) -> bool {
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

/// A shared actor is an actor, so a registry, a team or a workflow can hold the same one
/// twice, or an `Arc<dyn Actor>` chosen at run time.
#[async_trait]
impl<A: Actor + ?Sized> Actor for Arc<A> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn description(&self) -> &str {
        (**self).description()
    }

    fn streams(&self) -> bool {
        (**self).streams()
    }

    fn takes_messages(&self) -> bool {
        (**self).takes_messages()
    }

    async fn execute(&self, input: Value, ctx: ActorContext) -> Result<Value, ActorError> {
        (**self).execute(input, ctx).await
    }

    fn stream(self: Arc<Self>, input: Value, ctx: ActorContext) -> ActorStream {
        Arc::clone(&*self).stream(input, ctx)
    }
}

/// Makes a streaming actor named `name` of a closure that returns the actor's stream for one
/// run — usually a [`try_stream!`](crate::try_stream) generator:
///
/// ```
/// use loom_core::{actor_fn, try_stream, Output, Registry};
/// use serde_json::json;
///
/// let countdown = actor_fn("countdown", |_input, _ctx| try_stream! {
///     for n in (1..=3).rev() {
///         yield Output::progress(4 - n, Some(3), format!("{n}…"));
///     }
///     yield Output::complete(json!("liftoff"));
/// });
/// let mut registry = Registry::new();
/// registry.register(countdown);
/// ```
///
/// Inside the generator, `?` on an [`ActorError`] ends the run with that error; dropping the
/// stream (the consumer went away, the run was cancelled) drops the generator at its `yield`.
pub fn actor_fn<F, S>(name: impl Into<String>, run: F) -> FnActor<F>
where
    F: Fn(Value, ActorContext) -> S + Send + Sync + 'static,
    S: Stream<Item = Result<Output, ActorError>> + Send + 'static,
{
    FnActor {
        name: name.into(),
        description: String::new(),
        run,
    }
}

/// A streaming actor made of a closure by [`actor_fn`].
pub struct FnActor<F> {
    name: String,
    description: String,
    run: F,
}

impl<F> FnActor<F> {
    /// Sets the one-line description shown by `loom actor list`.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }
}

impl<F> std::fmt::Debug for FnActor<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnActor")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<F, S> Actor for FnActor<F>
where
    F: Fn(Value, ActorContext) -> S + Send + Sync + 'static,
    S: Stream<Item = Result<Output, ActorError>> + Send + 'static,
{
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
        Box::pin((self.run)(input, ctx))
    }
}

/// Reads an actor's JSON input as `T`, mapping serde's message to a `bad_input` error.
pub fn parse_input<T: DeserializeOwned>(input: Value) -> Result<T, ActorError> {
    serde_json::from_value(input).map_err(|e| ActorError::bad_input(format!("invalid input: {e}")))
}
