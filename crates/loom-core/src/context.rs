//! [`ActorContext`]: what a running actor knows about its run.
//!
//! It carries the run id, the run's [`CancellationToken`] and a typed extension slot through
//! which services reach actors (the AI service of `loom-ai`, for one) without `loom-core`
//! depending on them.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Services shared by every run of a runtime, looked up by type.
#[derive(Clone, Default)]
pub struct Extensions {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Extensions {
    /// An empty set of extensions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `value`, replacing any earlier value of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.map.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The stored value of type `T`, if any.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|v| Arc::clone(v).downcast::<T>().ok())
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.map.len())
            .finish()
    }
}

/// The run an actor is part of: its id, its cancellation and its services.
///
/// Cheap to clone. [`child`](Self::child) gives team members and workflow steps a context
/// whose cancellation follows the parent's but can also be cancelled alone.
#[derive(Clone, Debug)]
pub struct ActorContext {
    run_id: Arc<str>,
    cancel: CancellationToken,
    extensions: Arc<Extensions>,
}

impl ActorContext {
    /// A context for the run `run_id`, cancelled through `cancel`.
    pub fn new(
        run_id: impl Into<Arc<str>>,
        cancel: CancellationToken,
        extensions: Arc<Extensions>,
    ) -> Self {
        Self {
            run_id: run_id.into(),
            cancel,
            extensions,
        }
    }

    /// A context with a fresh random run id, its own token and no extensions.
    pub fn detached() -> Self {
        Self::new(
            new_run_id(),
            CancellationToken::new(),
            Arc::new(Extensions::new()),
        )
    }

    /// The id of the run.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The run's cancellation token: pass `cancellation_token().child_token()` to spawned
    /// work and HTTP calls so they stop with the run.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the run is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// A context for nested work (a team member, a workflow step): cancelled when this one
    /// is, and cancellable alone without touching this one.
    pub fn child(&self) -> Self {
        Self {
            run_id: Arc::clone(&self.run_id),
            cancel: self.cancel.child_token(),
            extensions: Arc::clone(&self.extensions),
        }
    }

    /// The same run with another run id (a nested run that gets its own stream).
    pub fn with_run_id(mut self, run_id: impl Into<Arc<str>>) -> Self {
        self.run_id = run_id.into();
        self
    }

    /// The service of type `T` the runtime was configured with, e.g. the AI service.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.extensions.get::<T>()
    }

    /// All the services, to hand to nested runtimes.
    pub fn extensions(&self) -> &Arc<Extensions> {
        &self.extensions
    }
}

/// A new unguessable run id: a random (v4) UUID, 122 random bits.
pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
